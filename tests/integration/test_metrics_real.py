"""
The metrics endpoint of a real gateway (as C{twistd netguard} builds it) on real loopback
sockets: one authenticated echo session and one connection refused by admission control move
the counters, and a real HTTP client (L{twisted.web.client.Agent}) reads them back in a text
exposition that the strict test parser accepts. Scrapes taken while relays run (to the
built-in echo, and to a real redis-server this test starts) show the bytes relayed so far,
per service, with the set-up time histogram, build information and process metrics.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

import netguard
from netguard.client.protocol import Credentials, NGPClientProtocol
from netguard.ops.metrics import CONTENT_TYPE, MAX_BODY_BYTES, MAX_CONNECTIONS, MetricsService
from netguard.ops.metrics_connections import DeadlineConnection
from tests.integration.test_gateway_e2e import Collector, RawClient
from tests.integration.util import (
    RunningGateway,
    free_port,
    need_peer,
    peer_unavailable,
    redis_server_argv,
    stop_process,
)
from tests.test_metrics import parse_exposition


class MetricsEndpointTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        # One connection per source: with the echo session open, the next one is refused.
        self.gateway = RunningGateway(
            self,
            "[admission]\nper_source_max = 1\n"
            '[ops]\ncontrol_socket = ""\nmetrics_listen = "tcp:0:interface=127.0.0.1"\n',
            {"listen": ["tcp:0:interface=127.0.0.1"]},
        )
        self.service = self.gateway.service
        self.metrics_address = self.service.metrics.port.getHost()

    @inlineCallbacks
    def scrape(self, path=b"/metrics", method=b"GET"):
        """
        One HTTP request to the metrics listener; returns (response, body).
        """
        url = b"http://127.0.0.1:%d%s" % (self.metrics_address.port, path)
        response = yield Agent(reactor).request(method, url, Headers({b"user-agent": [b"t"]}))
        body = yield readBody(response)
        return response, body

    @inlineCallbacks
    def metrics(self):
        response, body = yield self.scrape()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [CONTENT_TYPE])
        return parse_exposition(body.decode("utf-8"))

    def test_listens_on_loopback_only(self):
        """
        The listener is bound to 127.0.0.1 on a real port.
        """
        self.assertEqual(self.metrics_address.host, "127.0.0.1")
        self.assertNotEqual(self.metrics_address.port, 0)

    @inlineCallbacks
    def test_counters_move_with_a_session_and_a_refusal(self):
        """
        A session and a refusal move their counters; the bytes of the open session are
        counted while it is still open, and stay the same once it closes.
        """
        before = yield self.metrics()
        self.assertEqual(before[("netguard_connections_total", ())], 0)
        self.assertEqual(before[("netguard_auth_ok_total", ())], 0)
        self.assertEqual(before[("netguard_active", ())], 0)

        # One authenticated echo session, held open.
        payload = b"metrics" * 1000
        client = Collector(self.gateway.credentials, "echo", expected=len(payload))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.gateway.port())
        yield connectProtocol(endpoint, client)
        yield client.opened
        client.transport.write(payload)
        received = yield client.done
        self.assertEqual(received, payload)

        # A second connection from the same source is refused (per_source_max = 1).
        refused = RawClient()
        yield connectProtocol(endpoint, refused)
        said = yield refused.closed
        self.assertTrue(said.startswith(b"ERR BUSY"), said)

        during = yield self.metrics()
        self.assertEqual(during[("netguard_connections_total", ())], 1)
        self.assertEqual(during[("netguard_bytes_up_total", ())], len(payload))
        self.assertEqual(during[("netguard_bytes_down_total", ())], len(payload))
        self.assertEqual(during[("netguard_auth_ok_total", ())], 1)
        self.assertEqual(during[("netguard_active", ())], 1)
        self.assertEqual(during[("netguard_admission_relays", ())], 1)
        reason = (("reason", "per-source-cap"),)
        self.assertEqual(during[("netguard_refused_total", reason)], 1)
        self.assertEqual(
            sum(v for (n, _), v in during.items() if n == "netguard_refused_total"), 1
        )

        # Closing adds nothing more: the live bytes were counted already.
        client.transport.loseConnection()
        yield self.gateway.idle()
        after = yield self.metrics()
        self.assertEqual(after[("netguard_active", ())], 0)
        self.assertEqual(after[("netguard_bytes_up_total", ())], len(payload))
        self.assertEqual(after[("netguard_bytes_down_total", ())], len(payload))
        self.assertEqual(after[("netguard_auth_fail_total", ())], 0)
        self.assertGreater(after[("netguard_uptime_seconds", ())], 0)

    @inlineCallbacks
    def test_other_paths_404(self):
        """
        Another path is 404 and shows no metric.
        """
        response, body = yield self.scrape(b"/")
        self.assertEqual(response.code, 404)
        self.assertNotIn(b"netguard_", body)

    @inlineCallbacks
    def test_post_405(self):
        """
        POST is 405 and names the allowed methods.
        """
        response, _ = yield self.scrape(method=b"POST")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])

    @inlineCallbacks
    def test_stopped_with_the_gateway(self):
        """
        Stopping the gateway closes the metrics listener.
        """
        yield self.service.stopService()  # the fixture's cleanup stopping again is harmless
        self.assertIsNone(self.service.metrics.port)
        with self.assertRaises(ConnectionRefusedError):
            yield self.scrape()


class StreamClient(NGPClientProtocol):
    """
    The real client on one service: collects what the service sends; L{until} waits for a
    number of bytes in all.
    """

    def __init__(self, credentials: Credentials, service: str) -> None:
        super().__init__(credentials, service, clock=reactor)
        self.received = bytearray()
        self.ended: Deferred[None] = Deferred()
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def until(self, size: int) -> Deferred[None]:
        """
        Fire once C{size} bytes have arrived in all.
        """
        waiter: Deferred[None] = Deferred()
        self._waiting.append((size, waiter))
        self.service_data(b"")
        return waiter

    def service_data(self, data: bytes) -> None:
        self.received += data
        for size, waiter in list(self._waiting):
            if len(self.received) >= size:
                self._waiting.remove((size, waiter))
                waiter.callback(None)

    def service_closed(self, reason: Any) -> None:
        for _, waiter in self._waiting:
            waiter.errback(AssertionError(f"closed after {len(self.received)} bytes"))
        self._waiting = []
        if not self.ended.called:
            self.ended.callback(None)


def _value(values: dict[Any, float], name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


class LiveRelayMetricsTests(unittest.TestCase):
    """
    A real gateway with its metrics endpoint, scraped by a real HTTP client while real
    relays run: to the built-in echo over TCP, and to a real redis-server.
    """

    timeout = 120

    def setUp(self) -> None:
        self.redis_port: int | None = None

    def start_gateway(self, services: list[str] | None = None) -> None:
        self.gateway = RunningGateway(
            self,
            '[ops]\ncontrol_socket = ""\nmetrics_listen = "tcp:0:interface=127.0.0.1"\n',
            {"listen": ["tcp:0:interface=127.0.0.1"], "services": services or []},
        )
        self.metrics_port = self.gateway.service.metrics.port.getHost().port

    def start_redis(self) -> int:
        """
        A redis-server this test starts (and stops, by PID); its port once it answers PING.
        """
        program = need_peer("/usr/bin/redis-server", "redis-server")
        port = free_port()
        log = open(os.path.join(self.mktemp() + ".log"), "wb")
        proc = subprocess.Popen(
            redis_server_argv(program, port), stdout=log, stderr=subprocess.STDOUT
        )
        self.addCleanup(stop_process, proc, log)
        for _ in range(200):  # at most about 10 s
            if proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as probe:
                    probe.sendall(b"*1\r\n$4\r\nPING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        return port
            except OSError:
                pass
            time.sleep(0.05)
        peer_unavailable("redis-server did not start")

    @inlineCallbacks
    def metrics(self) -> Any:
        url = b"http://127.0.0.1:%d/metrics" % self.metrics_port
        response = yield Agent(reactor).request(b"GET", url)
        self.assertEqual(response.code, 200)
        body = yield readBody(response)
        return parse_exposition(body.decode("utf-8"))

    @inlineCallbacks
    def connect(self, service: str) -> Any:
        client = StreamClient(self.gateway.credentials, service)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.gateway.port())
        yield connectProtocol(endpoint, client)
        yield client.opened
        return client

    @inlineCallbacks
    def test_echo_bytes_visible_while_relaying(self) -> Any:
        """
        During one echo relay of 768 KiB sent in three parts, each scrape shows at least the
        bytes that have crossed so far both ways (the client got them back) before the
        session closes; after the close the counters equal the bytes relayed, and no scrape
        is below the one before. The service label, the live relay gauge, the set-up time
        histogram (one observation per session) and the build and process metrics are there.
        """
        self.start_gateway()
        before = yield self.metrics()
        self.assertEqual(_value(before, "netguard_service_relays", service="echo"), 0)
        setup_count = before[("netguard_session_setup_seconds_count", ())]
        part = 256 * 1024
        payload = random.Random(7).randbytes(3 * part)
        client = yield self.connect("echo")
        scrapes = [before]
        for index in range(3):
            client.transport.write(payload[index * part : (index + 1) * part])
            yield client.until((index + 1) * part)
            during = yield self.metrics()
            crossed = (index + 1) * part
            self.assertGreaterEqual(during[("netguard_bytes_up_total", ())], crossed)
            self.assertGreaterEqual(during[("netguard_bytes_down_total", ())], crossed)
            self.assertGreaterEqual(
                _value(during, "netguard_service_bytes_down_total", service="echo"), crossed
            )
            self.assertEqual(_value(during, "netguard_service_relays", service="echo"), 1)
            self.assertEqual(during[("netguard_active", ())], 1)
            scrapes.append(during)
        self.assertEqual(
            scrapes[-1][("netguard_session_setup_seconds_count", ())], setup_count + 1
        )
        self.assertEqual(bytes(client.received), payload)
        client.transport.loseConnection()
        yield client.ended
        yield self.gateway.idle()
        after = yield self.metrics()
        scrapes.append(after)
        self.assertEqual(after[("netguard_bytes_up_total", ())], len(payload))
        self.assertEqual(after[("netguard_bytes_down_total", ())], len(payload))
        self.assertEqual(_value(after, "netguard_service_relays", service="echo"), 0)
        self.assertEqual(_value(after, "netguard_service_sessions_total", service="echo"), 1)
        for earlier, later in zip(scrapes, scrapes[1:], strict=False):
            for name in ("netguard_bytes_up_total", "netguard_bytes_down_total"):
                self.assertGreaterEqual(later[(name, ())], earlier[(name, ())], name)

        # A second session: one more observation, one more session for echo.
        second = yield self.connect("echo")
        second.transport.write(b"ping")
        yield second.until(4)
        second.transport.loseConnection()
        yield second.ended
        yield self.gateway.idle()
        last = yield self.metrics()
        self.assertEqual(last[("netguard_session_setup_seconds_count", ())], setup_count + 2)
        self.assertEqual(
            last[("netguard_session_setup_seconds_bucket", (("le", "+Inf"),))], setup_count + 2
        )
        self.assertEqual(_value(last, "netguard_service_sessions_total", service="echo"), 2)
        labelled = {dict(labels).get("service") for _, labels in last} - {None}
        self.assertEqual(labelled, {"echo"})

        # The build and the process (this test process runs the gateway).
        [build] = [dict(labels) for name, labels in last if name == "netguard_build_info"]
        self.assertEqual(build["version"], netguard.__version__)
        self.assertEqual(set(build), {"version", "python", "twisted", "openssl"})
        open_fds = last[("process_open_fds", ())]
        self.assertGreater(open_fds, 0)
        self.assertLessEqual(open_fds, last[("process_max_fds", ())])
        self.assertGreater(last[("process_resident_memory_bytes", ())], 0)
        self.assertGreaterEqual(
            last[("process_virtual_memory_bytes", ())], last[("process_resident_memory_bytes", ())]
        )
        self.assertGreater(last[("process_cpu_seconds_total", ())], 0)
        self.assertLess(last[("process_start_time_seconds", ())], time.time() + 1)

    @inlineCallbacks
    def test_redis_bytes_visible_while_relaying(self) -> Any:
        """
        Through a real redis-server: after a 512 KiB SET is answered, and again after its
        GET, a scrape shows at least the bytes that crossed each way, under
        C{service="redis"}, while the session is still open; after the close the
        per-service counters equal what the client sent and received.
        """
        port = self.start_redis()
        self.start_gateway([f"redis=tcp:host=127.0.0.1:port={port}"])
        value = random.Random(3).randbytes(512 * 1024)
        set_command = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n" % (len(value), value)
        get_command = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        get_reply = b"$%d\r\n%s\r\n" % (len(value), value)
        client = yield self.connect("redis")

        client.transport.write(set_command)
        yield client.until(len(b"+OK\r\n"))
        during = yield self.metrics()
        self.assertGreaterEqual(
            _value(during, "netguard_service_bytes_up_total", service="redis"), len(set_command)
        )
        self.assertGreaterEqual(
            _value(during, "netguard_service_bytes_down_total", service="redis"), 5
        )
        self.assertEqual(_value(during, "netguard_service_relays", service="redis"), 1)

        client.transport.write(get_command)
        yield client.until(5 + len(get_reply))
        self.assertEqual(bytes(client.received), b"+OK\r\n" + get_reply)
        later = yield self.metrics()
        self.assertGreaterEqual(
            _value(later, "netguard_service_bytes_down_total", service="redis"),
            5 + len(get_reply),
        )
        self.assertGreaterEqual(later[("netguard_bytes_down_total", ())], 5 + len(get_reply))

        client.transport.loseConnection()
        yield client.ended
        yield self.gateway.idle()
        after = yield self.metrics()
        up = len(set_command) + len(get_command)
        self.assertEqual(_value(after, "netguard_service_bytes_up_total", service="redis"), up)
        self.assertEqual(
            _value(after, "netguard_service_bytes_down_total", service="redis"),
            5 + len(get_reply),
        )
        self.assertEqual(_value(after, "netguard_service_relays", service="redis"), 0)
        self.assertEqual(_value(after, "netguard_service_sessions_total", service="redis"), 1)
        self.assertEqual(after[("netguard_session_setup_seconds_count", ())], 1)


class HostileDripper(Protocol):
    """
    A hostile client: sends half a request, then one byte at a time when told, never the
    end of its headers.
    """

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-A: ")

    def drip(self) -> None:
        self.transport.write(b"a")

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class MetricsDripperTests(unittest.TestCase):
    """
    A real scrape over loopback succeeds while hostile drippers hold every slot of the
    metrics listener.
    """

    timeout = 60

    def setUp(self) -> None:
        self.service = MetricsService(
            reactor, "tcp:0:interface=127.0.0.1", lambda: {"connections": 7}
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.port = self.service.port.getHost().port

    @inlineCallbacks
    def test_scrape_succeeds_while_drippers_hold_the_cap(self) -> Any:
        """
        MAX_CONNECTIONS hostile drippers connect (and are all accepted), drip a byte each;
        a real HTTP client then gets 200 with the figures, and the oldest dripper is the
        one cut to make room.
        """
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        drippers = []
        for _ in range(MAX_CONNECTIONS):
            dripper = yield connectProtocol(endpoint, HostileDripper())
            drippers.append(dripper)
        for _ in range(2000):
            if len(self.service.factory.protocols) == MAX_CONNECTIONS:
                break
            yield deferLater(reactor, 0.005, lambda: None)
        self.assertEqual(len(self.service.factory.protocols), MAX_CONNECTIONS)
        for dripper in drippers:
            dripper.drip()
        url = b"http://127.0.0.1:%d/metrics" % (self.port,)
        response = yield Agent(reactor).request(b"GET", url)
        body = yield readBody(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(parse_exposition(body.decode())[("netguard_connections_total", ())], 7)
        yield drippers[0].lost
        for dripper in drippers:
            dripper.transport.abortConnection()
        for _ in range(2000):
            if not self.service.factory.protocols:
                break
            yield deferLater(reactor, 0.005, lambda: None)


class HostilePipeliner(Protocol):
    """
    A hostile client: sends many complete requests in one write and never reads.
    """

    requests = 3000

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # never read an answer
        self.transport.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * self.requests)


class CountingConnection(DeadlineConnection):
    """
    The metrics listener's connection wrapper, counting the bytes handed to the socket.
    """

    written = 0

    def write(self, data: bytes) -> None:
        type(self).written += len(data)
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)


class MetricsPipeliningTests(unittest.TestCase):
    """
    Over real loopback sockets, a hostile client pipelining thousands of scrapes on one
    connection without reading gets one answer: the gateway buffers at most one answer per
    connection, and the connection ends.
    """

    timeout = 60

    def setUp(self) -> None:
        self.renders = 0
        self.service = MetricsService(reactor, "tcp:0:interface=127.0.0.1", self.source)
        self.service.factory.protocol = type("Counting", (CountingConnection,), {})
        self.service.factory.deadline = 1.0  # the unread answer is cut sooner
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.port = self.service.port.getHost().port

    def source(self) -> dict[str, Any]:
        self.renders += 1
        return {"connections": 7}

    @inlineCallbacks
    def test_pipelined_scrapes_get_one_answer(self) -> Any:
        """
        Six hostile pipeliners each send 3000 requests in one write and never read: one
        answer each is rendered and written (at most the response cap, 1 MiB, plus
        headers), and the gateway ends every connection (closed after the answer, or cut at
        the deadline if it does not drain).
        """
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        clients = []
        for _ in range(6):
            client = yield connectProtocol(endpoint, HostilePipeliner())
            clients.append(client)
            self.addCleanup(client.transport.abortConnection)
        for _ in range(4000):  # hang guard only: ends as soon as the server side is done
            if self.renders == 6 and not self.service.factory.protocols:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(self.service.factory.protocols, {})
        self.assertEqual(self.renders, 6)
        written = self.service.factory.protocol.written
        self.assertLessEqual(written, 6 * (MAX_BODY_BYTES + 4096))
        self.assertGreater(written, 0)

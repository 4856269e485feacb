# -*- test-case-name: tests.integration.test_proxy_v2_real -*-
"""
C{send_proxy = "v2"} end to end: the real gateway (in-process, real reactor), the real NGP/1
client from its own source address (127.0.0.7), from a unix socket or from ::1, on a plain
connection or on the streams of a multiplexed session, and three receivers of the PROXY v2
header the gateway sends its backends:
  - a real HAProxy (Debian, 2.6) frontend with C{bind ... accept-proxy} in front of an echo
    backend, logging C{%ci:%cp} and C{%[fc_pp_unique_id]} (stopped by PID);
  - Twisted's own C{haproxy:} server endpoint (L{twisted.protocols.haproxy});
  - a test receiver that keeps the raw bytes, for the user TLV (HAProxy 2.6 cannot log a
    custom TLV) and the exact order: the header, then the client's bytes.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import struct
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
    serverFromString,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.outbound.proxy_v2 import (
    LOCAL,
    PROXY,
    TCP4,
    UNSPEC,
    ProxyOrigin,
    header_for,
)
from netguard.relay_splice import KernelSplice
from tests.integration.test_mux_gateway import Collector as StreamCollector
from tests.integration.test_mux_gateway import MuxLogin, has
from tests.integration.util import (
    EchoClient,
    RunningGateway,
    clients_aborted_at_cleanup,
    connect_from,
    log_events,
    start_haproxy,
    wait_for,
)
from tests.test_proxy_v2 import parse

#: The bound on any one wait (a hang guard; nothing asserts on speed).
WAIT = 30.0

#: The address the TCP clients connect from.
CLIENT_HOST = "127.0.0.7"

#: HAProxy: a frontend that takes the PROXY header from the gateway (C{accept-proxy}) and
#: logs, once each connection ends, the client address and the unique id the header named.
HAPROXY_CONFIG = """\
global
    maxconn 64
    log stdout format raw local0

defaults
    mode tcp
    log global
    timeout connect 10s
    timeout client 60s
    timeout server 60s

frontend from_gateway
    bind 127.0.0.1:{front} accept-proxy
    log-format "pp %ci:%cp %[fc_pp_unique_id] end"
    default_backend echo

backend echo
    server echo 127.0.0.1:{echo}
"""


class Echo(Protocol):
    """Sends back every byte."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class RecordingEcho(Echo):
    """
    An echo that records the peer address its transport names when the first bytes come
    (Twisted's C{haproxy:} wrapper reports the connection before it has read the header).
    """

    recorded = False

    def dataReceived(self, data: bytes) -> None:
        if not self.recorded:
            self.recorded = True
            self.factory.peers.append(self.transport.getPeer())
        super().dataReceived(data)


class RawReceiver(Protocol):
    """
    The test receiver: keeps every byte as it came, and sends back what follows the PROXY v2
    header (its length read from the header's bytes 15 and 16).
    """

    def __init__(self) -> None:
        self.data = b""
        self.header_size: int | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.header_size is None and len(self.data) >= 16:
            self.header_size = 16 + struct.unpack("!H", self.data[14:16])[0]
            self.factory.received.append(self)
            data = self.data[self.header_size :]
        elif self.header_size is None:
            return
        if data:
            self.transport.write(data)


class Collector(Protocol):
    """
    A raw client: keeps what comes back and closes once C{expected} bytes came; C{closed}
    fires with them when the connection ends (by either side).
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.data = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.expected:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(self.data)


class BehindProxyClient(EchoClient):
    """
    A client that reaches the gateway's C{haproxy:} listener as a load balancer would pass
    it on: its first bytes are a PROXY v1 header naming another client (L{HEADER_SOURCE}).
    """

    def connectionMade(self) -> None:
        self.transport.write(
            f"PROXY TCP4 {HEADER_SOURCE[0]} 127.0.0.1 {HEADER_SOURCE[1]} 7700\r\n".encode()
        )
        super().connectionMade()


#: The client address the PROXY header in front of the gateway names.
HEADER_SOURCE = ("192.0.2.9", 4444)


class SendProxyV2RealTests(unittest.TestCase):
    """
    The header reaches real parsers intact: HAProxy and Twisted read the client's address
    and HAProxy the unique id; the raw bytes hold the user TLV; the relayed bytes follow.
    """

    timeout = 90

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ng-pv2-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.events = log_events(self)
        echo_port = self.listen(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), Factory.forProtocol(Echo)
        )
        self.front = start_haproxy(
            self, self.dir, lambda front: HAPROXY_CONFIG.format(front=front, echo=echo_port), WAIT
        )
        twisted_factory = Factory.forProtocol(RecordingEcho)
        twisted_factory.peers = []  # type: ignore[attr-defined]
        self.twisted_peers: list[Any] = twisted_factory.peers  # type: ignore[attr-defined]
        twisted_port = self.listen(
            serverFromString(reactor, "haproxy:tcp:0:interface=127.0.0.1"), twisted_factory
        )
        raw_factory = Factory.forProtocol(RawReceiver)
        raw_factory.received = []  # type: ignore[attr-defined]
        self.raw: list[RawReceiver] = raw_factory.received  # type: ignore[attr-defined]
        raw_port = self.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), raw_factory)
        config = "".join(
            f'[services.{name}]\nbackend = "tcp:host=127.0.0.1:port={port}"\n'
            f'users = ["*"]\nsend_proxy = "v2"\n'
            for name, port in (
                ("hap", self.front),
                ("twisted", twisted_port),
                ("raw", raw_port),
            )
        )
        self.gateway = RunningGateway(
            self,
            config + '[overload]\nmax_lag = "off"\n',
            {
                "listen": [
                    "tcp:0:interface=127.0.0.1",
                    "unix:{dir}/ng.sock",
                    "tcp6:0:interface=\\:\\:1",
                    "haproxy:tcp:0:interface=127.0.0.1",
                ]
            },
            prefix="ng-pv2gw-",
        )
        self.legs: list[Any] = []
        factory = self.gateway.factory
        opener = factory.open_backend

        def recording(service: Any, origin: Any = None) -> Deferred[Any]:
            return opener(service, origin).addCallback(self._keep_leg)

        factory.open_backend = recording
        self.clients = clients_aborted_at_cleanup(self, self.gateway)

    def _keep_leg(self, leg: Any) -> Any:
        self.legs.append(leg)
        return leg

    def listen(self, endpoint: Any, factory: Any) -> int:
        """Listen on C{endpoint} (stopped at cleanup); return the port."""
        port = self.successResultOf(endpoint.listen(factory))
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @inlineCallbacks
    def exchange(
        self,
        service: str,
        payload: bytes,
        unix: bool = False,
        ipv6: bool = False,
        behind_proxy: bool = False,
    ) -> Any:
        """
        Log in (from 127.0.0.7, over the gateway's unix socket, or from ::1 to its IPv6
        listener), open C{service}, send C{payload}, wait for it to come back, close; return
        it and the client's own address.
        """
        kind = BehindProxyClient if behind_proxy else EchoClient
        client = kind(self.gateway.credentials, len(payload), service)
        self.clients.append(client)
        endpoint: Any
        if behind_proxy:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.gateway.port(3), timeout=WAIT)
            connecting = connectProtocol(endpoint, client)
        elif unix:
            path = os.path.join(self.gateway.dir, "ng.sock")
            connecting = connectProtocol(UNIXClientEndpoint(reactor, path), client)
        elif ipv6:
            endpoint = TCP6ClientEndpoint(reactor, "::1", self.gateway.port(2), timeout=WAIT)
            connecting = connectProtocol(endpoint, client)
        else:
            connecting = connect_from(CLIENT_HOST, self.gateway.port(), client, WAIT)
        yield connecting
        received, own = yield client.exchange(payload, WAIT)
        return received, own

    def conn_id(self, service: str) -> str:
        [opened] = [
            e
            for e in self.events
            if e.get("event") == "session.open" and e.get("service") == service
        ]
        return str(opened["conn_id"])

    def haproxy_lines(self) -> list[str]:
        lines: list[str] = []
        for path in sorted(glob.glob(os.path.join(self.dir, "haproxy-*.log"))):
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines += [line.strip() for line in handle if line.startswith("pp ")]
        return lines

    # -- the tests ---------------------------------------------------------------------------

    @inlineCallbacks
    def test_haproxy_logs_the_client_and_the_unique_id(self) -> Any:
        """
        Through a real HAProxy with C{accept-proxy}: 256 KiB of random bytes come back
        intact, and HAProxy logs the client's own address and port (127.0.0.7, not the
        gateway's 127.0.0.1) and the gateway's connection id from the header.
        """
        payload = os.urandom(256 * 1024)
        received, own = yield self.exchange("hap", payload)
        self.assertEqual(received, payload)
        expected = f"pp {CLIENT_HOST}:{own.port} {self.conn_id('hap')} end"
        yield wait_for(lambda: expected in self.haproxy_lines(), timeout=WAIT)

    @inlineCallbacks
    def test_haproxy_logs_each_stream_of_a_multiplexed_session(self) -> Any:
        """
        Two streams of one multiplexed session (C{MUX yamux/1}) to the same service: each
        backend connection gets its own header, and HAProxy logs the client's address with
        each stream's id, C{<conn_id>/<stream_id>}; each stream's bytes come back intact.
        """
        client = yield connect_from(
            CLIENT_HOST, self.gateway.port(), MuxLogin(self.gateway.credentials), WAIT
        )
        self.clients.append(client)
        yield client.opened.addTimeout(WAIT, reactor)
        own = client.transport.getHost()
        payloads = [os.urandom(32 * 1024), os.urandom(32 * 1024)]
        streams = []
        for payload in payloads:
            collector = StreamCollector()
            stream = client.mux.open_stream(collector)
            stream.write(b"OPEN hap\r\n" + payload)
            streams.append((stream.stream_id, collector))
        preamble = len(b"OK OPEN hap\r\n")
        for (_, collector), payload in zip(streams, payloads, strict=True):
            yield collector.wait(has(preamble + len(payload))).addTimeout(WAIT, reactor)
            self.assertEqual(bytes(collector.data), b"OK OPEN hap\r\n" + payload)
        [started] = [e for e in self.events if e.get("event") == "mux.start"]
        conn_id = started["conn_id"]
        client.close()
        expected = {f"pp {CLIENT_HOST}:{own.port} {conn_id}/{sid} end" for sid, _ in streams}
        yield wait_for(lambda: expected <= set(self.haproxy_lines()), timeout=WAIT)

    @inlineCallbacks
    def test_haproxy_logs_an_ipv6_client(self) -> Any:
        """
        A client of the gateway's IPv6 listener: the header is TCP over IPv6 and HAProxy
        logs C{::1} with the client's port and the connection's id; the bytes come back.
        """
        payload = os.urandom(4096)
        received, own = yield self.exchange("hap", payload, ipv6=True)
        self.assertEqual(received, payload)
        expected = f"pp ::1:{own.port} {self.conn_id('hap')} end"
        yield wait_for(lambda: expected in self.haproxy_lines(), timeout=WAIT)

    @inlineCallbacks
    def test_haproxy_accepts_a_unix_client_as_local(self) -> Any:
        """
        A client on the gateway's unix socket has no address: the header is LOCAL, which
        HAProxy accepts (it refuses PROXY with UNSPEC), keeping the connection's own
        address, the gateway's 127.0.0.1; the bytes come back intact.
        """
        payload = os.urandom(4096)
        received, _ = yield self.exchange("hap", payload, unix=True)
        self.assertEqual(received, payload)
        yield wait_for(
            lambda: any(line.startswith("pp 127.0.0.1:") for line in self.haproxy_lines()),
            timeout=WAIT,
        )

    @inlineCallbacks
    def test_haproxy_verifies_the_crc32c(self) -> Any:
        """
        HAProxy 2.6 checks C{PP2_TYPE_CRC32C}: netguard's header is accepted (the bytes
        after it come back), the same header with one bit of its checksum flipped (a
        corrupted header, sent by the test) is refused: nothing comes back.
        """
        header = header_for(
            ProxyOrigin(
                IPv4Address("TCP", "192.0.2.7", 5000),
                IPv4Address("TCP", "127.0.0.1", 7700),
                "alice",
                "crc-check",
            )
        )
        intact = yield self.send_raw(header + b"intact")
        self.assertEqual(intact, b"intact")
        corrupted = bytearray(header)
        corrupted[-1] ^= 0x01
        refused = yield self.send_raw(bytes(corrupted) + b"intact")
        self.assertEqual(refused, b"")

    @inlineCallbacks
    def send_raw(self, data: bytes) -> Any:
        """
        Send C{data} straight to HAProxy's front port; return what came back: the six
        bytes of C{b"intact"}, or what had come when HAProxy closed the connection.
        """
        client = Collector(len(b"intact"))
        self.clients.append(client)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.front, timeout=WAIT)
        yield connectProtocol(endpoint, client)
        client.transport.write(data)
        received = yield client.closed.addTimeout(WAIT, reactor)
        return received

    @inlineCallbacks
    def test_twisted_haproxy_endpoint_reads_the_client(self) -> Any:
        """
        Twisted's own C{haproxy:} server endpoint, a second real parser, reads the client's
        address and port from the header; the bytes come back intact.
        """
        payload = os.urandom(64 * 1024)
        received, own = yield self.exchange("twisted", payload)
        self.assertEqual(received, payload)
        [peer] = self.twisted_peers
        self.assertEqual((peer.host, peer.port), (CLIENT_HOST, own.port))

    @inlineCallbacks
    def test_raw_bytes_hold_the_user_and_come_first(self) -> Any:
        """
        The test receiver gets exactly the header, then the client's bytes: PROXY over
        TCP/IPv4 from 127.0.0.7 to the gateway's port, the unique id, the user in TLV 0xE0,
        a CRC32c that checks; the relay (in the kernel) counted only the client's bytes.
        """
        payload = os.urandom(128 * 1024)
        received, own = yield self.exchange("raw", payload)
        self.assertEqual(received, payload)
        [raw] = self.raw
        assert raw.header_size is not None
        header, rest = raw.data[: raw.header_size], raw.data[raw.header_size :]
        self.assertEqual(rest, payload)
        parsed = parse(header)
        self.assertEqual((parsed["command"], parsed["family"]), (PROXY, TCP4))
        self.assertEqual(
            parsed["addresses"],
            socket.inet_aton(CLIENT_HOST)
            + socket.inet_aton("127.0.0.1")
            + struct.pack("!HH", own.port, self.gateway.port()),
        )
        user = self.gateway.credentials.username.encode()
        self.assertEqual(parsed["tlvs"][:2], [(0x05, self.conn_id("raw").encode()), (0xE0, user)])
        self.assertTrue(parsed["crc_ok"])
        [leg] = self.legs
        if hasattr(os, "splice"):
            self.assertIsInstance(leg.splice, KernelSplice)
        yield wait_for(lambda: leg.done.called, timeout=WAIT)
        closed = [e for e in self.events if e.get("event") == "conn.close"]
        self.assertEqual([e["bytes_up"] for e in closed], [len(payload)])

    @inlineCallbacks
    def test_client_behind_a_proxy_is_named_as_its_header_said(self) -> Any:
        """
        A client that came through a C{haproxy:} listener is sent on as the address its own
        PROXY header named (192.0.2.9:4444, to 127.0.0.1:7700), not the connection's.
        """
        payload = b"y" * 100
        received, _ = yield self.exchange("raw", payload, behind_proxy=True)
        self.assertEqual(received, payload)
        [raw] = self.raw
        parsed = parse(raw.data[: raw.header_size])
        self.assertEqual(
            parsed["addresses"],
            socket.inet_aton(HEADER_SOURCE[0])
            + socket.inet_aton("127.0.0.1")
            + struct.pack("!HH", HEADER_SOURCE[1], 7700),
        )

    @inlineCallbacks
    def test_raw_bytes_of_a_unix_client(self) -> Any:
        """
        For a unix-socket client the test receiver gets LOCAL with no address, and still
        the unique id and the user.
        """
        payload = b"x" * 100
        received, _ = yield self.exchange("raw", payload, unix=True)
        self.assertEqual(received, payload)
        [raw] = self.raw
        parsed = parse(raw.data[: raw.header_size])
        self.assertEqual((parsed["command"], parsed["family"]), (LOCAL, UNSPEC))
        self.assertEqual([kind for kind, _ in parsed["tlvs"]], [0x05, 0xE0, 0x03])
        self.assertTrue(parsed["crc_ok"])

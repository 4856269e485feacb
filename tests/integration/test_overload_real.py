# -*- test-case-name: tests.integration.test_overload_real -*-
"""
Load shedding in a running gateway, on its real overload signals (seed tip 5): the gateway is
built as C{twistd netguard} builds it and runs in this process, so the process's own memory
and the reactor's own lag are what its L{netguard.ops.overload.OverloadMonitor} measures.

  - memory: the test allocates real ballast until the resident set passes C{max_rss_mb}; a
    new client over a real socket is answered C{ERR BUSY overload-memory}, a relay opened
    before keeps every byte flowing, and once the ballast is freed new clients are served;
  - lag: the test blocks the reactor (as a slow call or a saturating flood would); the next
    sample sees the late timer, a client connecting then is refused C{overload-lag}, the
    signal clears on the following sample, and the relay in flight loses nothing.

Nothing here asserts on speed: the thresholds are relative to what was measured at the start
(memory) or far above a sample's normal lateness (lag), and every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from netguard.client.endpoint import NGPClientEndpoint
from netguard.ops.overload import read_rss_bytes
from tests.integration.util import RunningGateway, wait_for

MIB = 2**20
#: How far above the measured resident set the memory threshold sits, and the ballast that
#: passes it (four times over, so other allocations in this process cannot blur the result).
HEADROOM = 64 * MIB
BALLAST = 256 * MIB


class HeldEcho(Protocol):
    """
    An authenticated relay to the built-in echo service, kept open across the overload.
    """

    def __init__(self) -> None:
        self.received = b""
        self.expected = 0
        self.waiting: Deferred[bytes] | None = None
        self.closed: Deferred[None] = Deferred()

    def send(self, payload: bytes) -> Deferred[bytes]:
        self.expected += len(payload)
        self.waiting = Deferred()
        self.transport.write(payload)
        return self.waiting

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.waiting is not None and len(self.received) >= self.expected:
            waiting, self.waiting = self.waiting, None
            waiting.callback(self.received)

    def connectionLost(self, reason: object) -> None:
        self.closed.callback(None)


def read_until_closed(sock: socket.socket) -> bytes:
    """
    Everything a raw client socket receives until the gateway closes it (in a thread).
    """
    sock.settimeout(10)
    data = b""
    with sock:
        while len(data) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


class OverloadGatewayTests(unittest.TestCase):
    timeout = 60

    def start_gateway(self, overload: str) -> None:
        running = RunningGateway(
            self,
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            "[limits]\n"
            "greeting_delay = 0.05\n"
            f"[overload]\n{overload}",
        )
        self.gateway = running
        self.port = running.port()
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == name]

    @inlineCallbacks
    def open_relay(self):
        held = HeldEcho()
        gateway = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        endpoint = NGPClientEndpoint(reactor, gateway, self.gateway.credentials, "echo")
        yield connectProtocol(endpoint, held)
        first = os.urandom(50_000)
        echoed = yield held.send(first)
        self.assertEqual(echoed, first)
        return held

    @inlineCallbacks
    def close_relays(self, *held: HeldEcho):
        for relay in held:
            relay.transport.loseConnection()
            yield relay.closed
        yield self.gateway.idle()

    def raw_connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    @inlineCallbacks
    def test_memory_overload_sheds_new_connections_and_keeps_relays(self):
        limit = read_rss_bytes() + HEADROOM
        self.start_gateway(f"max_rss_mb = {limit / MIB:.1f}\ninterval = 0.1\nmax_lag = 5.0\n")
        monitor = self.gateway.service.overload_monitor
        held = yield self.open_relay()

        ballast = b"\x01" * BALLAST  # every page written: resident, not just reserved
        yield wait_for(lambda: monitor.reason == "overload-memory", timeout=20)
        self.assertGreater(monitor.last_rss, limit)
        answer = yield deferToThread(read_until_closed, self.raw_connect())
        self.assertTrue(answer.startswith(b"ERR BUSY overload-memory"), answer)
        self.assertNotIn(b"NETGUARD/1", answer)
        during = os.urandom(200_000)
        echoed = yield held.send(during)  # the relay admitted before is not touched
        self.assertTrue(echoed.endswith(during))

        del ballast
        yield wait_for(lambda: monitor.reason is None, timeout=20)
        again = yield self.open_relay()  # served again once memory is back under the limit
        yield self.close_relays(again, held)

        figures = self.gateway.factory.stats.snapshot()
        self.assertEqual(figures["refused.overload-memory"], 1)
        [on] = self.named("overload.on")
        self.assertEqual(on["reason"], "overload-memory")
        self.assertEqual([e["previous"] for e in self.named("overload.off")], ["overload-memory"])
        [reject] = self.named("conn.reject")
        self.assertEqual(reject["reason"], "overload-memory")

    @inlineCallbacks
    def test_event_loop_lag_sheds_while_it_lasts(self):
        self.start_gateway("max_lag = 0.3\ninterval = 0.1\n")
        monitor = self.gateway.service.overload_monitor
        held = yield self.open_relay()
        refused: list[socket.socket] = []

        def on_overload(event: dict) -> None:
            # Connect at once, from inside the sample that raised the signal: the reactor
            # accepts it before the next sample can clear the signal again.
            if event.get("event") == "overload.on" and not refused:
                refused.append(self.raw_connect())

        globalLogPublisher.addObserver(on_overload)
        self.addCleanup(globalLogPublisher.removeObserver, on_overload)
        blocked = Deferred()
        reactor.callLater(0, lambda: (time.sleep(0.8), blocked.callback(None)))
        yield blocked
        yield wait_for(lambda: bool(refused), timeout=10)
        answer = yield deferToThread(read_until_closed, refused[0])
        self.assertTrue(answer.startswith(b"ERR BUSY overload-lag"), answer)
        yield wait_for(lambda: monitor.reason is None, timeout=10)

        during = os.urandom(200_000)
        echoed = yield held.send(during)
        self.assertTrue(echoed.endswith(during))
        again = yield self.open_relay()
        yield self.close_relays(again, held)

        # The block is the one certain cause; a busy test machine may add a late sample.
        lagged = [e for e in self.named("overload.on") if e["reason"] == "overload-lag"]
        self.assertTrue(lagged and max(e["lag"] for e in lagged) > 0.3, lagged)
        self.assertGreaterEqual(self.gateway.factory.stats.snapshot()["refused.overload-lag"], 1)

# -*- test-case-name: tests.integration.test_refusals_real -*-
"""
Refusals in a running gateway over real loopback sockets: what a refused client gets, that
nothing of the gateway waits on a refused peer (not even one that never reads), and that a
flood of refusals is logged in aggregate (L{netguard.refusal_log}).

The gateway is built as C{twistd netguard} builds it and runs in this process; the clients
are raw sockets bound to several loopback source addresses (127.0.0.2 and up), each its own
source key. The refusal log's interval is driven by a L{twisted.internet.task.Clock} the
test advances, so the counts cannot depend on how fast the machine is; every wait is bounded.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from typing import Any

from twisted.internet import reactor, tcp
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from netguard.admitting import _Refusal
from tests.integration.util import RunningGateway, log_events, wait_for

#: The loopback addresses the clients connect from: three sources.
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")

#: Connections per source in the flood.
PER_SOURCE = 10

#: C{tcpi_state} of a socket whose peer has closed its side (RFC 793 CLOSE-WAIT).
TCP_CLOSE_WAIT = 8


def refused_answers(port: int, sources: tuple[str, ...], count: int) -> list[bytes]:
    """
    Connect C{count} times from each of C{sources} (in turn) and read each connection until
    the gateway closes it (in a thread).

    @return: what each connection received.
    """
    answers = []
    for _ in range(count):
        for source in sources:
            with socket.create_connection(
                ("127.0.0.1", port), timeout=10, source_address=(source, 0)
            ) as sock:
                data = b""
                while len(data) < 4096:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                answers.append(data)
    return answers


def tcp_state(sock: socket.socket) -> int:
    """
    The kernel's TCP state of C{sock} (the first byte of C{TCP_INFO}), read without reading
    anything from the socket.
    """
    return struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]


class _CountingClock:
    """
    The reactor's time, with every C{callLater} recorded (the timers a refusal starts).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[float, Any]] = []

    def seconds(self) -> float:
        return float(reactor.seconds())

    def callLater(self, delay: float, callable: Any, *args: object) -> Any:
        self.calls.append((delay, callable))
        return reactor.callLater(delay, callable, *args)


class RefusalWatch:
    """
    A test of a real gateway's refusals: its port, its log, and its refusal log on a clock
    of the test's own (the intervals end when the test says).
    """

    gateway: RunningGateway

    def watch_refusals(self) -> None:
        """
        Record the started gateway's port and log, and give its refusal log the test's clock.
        """
        self.port = self.gateway.port()
        self.events = log_events(self)
        self.log_clock = Clock()
        self.gateway.factory.refusal_log.clock = self.log_clock

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]


class RefusalsRealTests(RefusalWatch, unittest.TestCase):
    """
    A gateway that refuses every client (C{admission.deny} covers the loopback network).
    """

    timeout = 60

    def start_gateway(self, admission: str = "") -> None:
        self.gateway = RunningGateway(
            self,
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            f'[admission]\ndeny = ["127.0.0.0/8"]\n{admission}',
        )
        self.watch_refusals()

    @inlineCallbacks
    def test_flood_from_a_few_sources_is_logged_in_aggregate(self):
        """
        Ten refused connections from each of three sources in one interval: every client
        gets its C{ERR BUSY denied} line, the counters count all thirty, the log has three
        C{conn.reject} lines per source, and when the interval ends one
        C{conn.reject.summary} per source with the other seven.
        """
        self.start_gateway()
        answers = yield deferToThread(refused_answers, self.port, SOURCES, PER_SOURCE)
        self.assertEqual(answers, [b"ERR BUSY denied\r\n"] * len(SOURCES) * PER_SOURCE)
        figures = self.gateway.factory.stats.snapshot()
        self.assertEqual(figures["refused.denied"], len(SOURCES) * PER_SOURCE)
        lines = Counter(e["peer"].rsplit(":", 1)[0] for e in self.named("conn.reject"))
        self.assertEqual(lines, dict.fromkeys(SOURCES, 3))
        self.assertEqual(self.named("conn.reject.summary"), [])

        self.log_clock.advance(10.0)
        summaries = {
            e["source"]: (e["reason"], e["of"], e["count"], e["logged"])
            for e in self.named("conn.reject.summary")
        }
        self.assertEqual(
            summaries,
            {f"{s}/32": ("denied", "conn.reject", PER_SOURCE - 3, 3) for s in SOURCES},
        )
        self.assertEqual(len(self.named("conn.reject.summary")), len(SOURCES))

    @inlineCallbacks
    def test_shutdown_logs_the_pending_summary(self):
        """
        Refusals only counted when the gateway stops are summarised as its listeners close,
        and the refusal log leaves no timer behind.
        """
        self.start_gateway('reject_mode = "close"\n')
        answers = yield deferToThread(refused_answers, self.port, SOURCES[:1], 5)
        self.assertEqual(answers, [b""] * 5)  # silent mode: closed without a word
        self.assertEqual(len(self.named("conn.reject")), 3)
        self.assertEqual(len(self.log_clock.getDelayedCalls()), 1)
        yield self.gateway.service.stopService()
        [summary] = self.named("conn.reject.summary")
        self.assertEqual((summary["source"], summary["count"]), ("127.0.0.2/32", 2))
        self.assertEqual(self.log_clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_refusals_start_no_timer(self):
        """
        Refusing a connection starts no timer: twenty refusals, and the factory's clock was
        not asked for a single C{callLater}.
        """
        self.start_gateway()
        counting = _CountingClock()
        self.gateway.factory.admitting.clock = counting
        answers = yield deferToThread(refused_answers, self.port, SOURCES[:2], 10)
        self.assertEqual(answers, [b"ERR BUSY denied\r\n"] * 20)
        self.assertEqual(counting.calls, [])

    @inlineCallbacks
    def test_hostile_peer_that_never_reads_holds_nothing(self):
        """
        A hostile peer that connects and never reads: the gateway closes its side at once
        (the peer's socket reaches CLOSE-WAIT while the line still waits unread in it), keeps
        no reader, writer or timer for it, and the line is there when the peer finally reads.
        """
        self.start_gateway()
        hostile = socket.create_connection(
            ("127.0.0.1", self.port), timeout=10, source_address=(SOURCES[0], 0)
        )
        self.addCleanup(hostile.close)
        yield wait_for(lambda: tcp_state(hostile) == TCP_CLOSE_WAIT, timeout=20)
        self.assertEqual(len(self.named("conn.reject")), 1)
        connections = [
            d for d in reactor.getReaders() + reactor.getWriters() if isinstance(d, tcp.Server)
        ]
        self.assertEqual(connections, [])
        timers = [
            c
            for c in reactor.getDelayedCalls()
            if isinstance(getattr(c.func, "__self__", None), tcp.Server)
        ]
        self.assertEqual(timers, [])
        hostile.settimeout(10)
        self.assertEqual(hostile.recv(4096), b"ERR BUSY denied\r\n")
        self.assertEqual(hostile.recv(4096), b"")

    @inlineCallbacks
    def test_hostile_peer_that_talks_first_gets_the_line(self):
        """
        A hostile peer that writes before the gateway has accepted it (as a returning client
        sends C{RESUME} at once) still receives its refusal line, then the end of the
        connection.
        """
        self.start_gateway()

        def talk_first() -> bytes:
            with socket.create_connection(
                ("127.0.0.1", self.port), timeout=10, source_address=(SOURCES[1], 0)
            ) as sock:
                sock.sendall(b"RESUME " + b"A" * 100 + b"\r\n")
                data = b""
                while len(data) < 4096:
                    try:
                        chunk = sock.recv(4096)
                    except ConnectionResetError:
                        break
                    if not chunk:
                        break
                    data += chunk
                return data

        answer = yield deferToThread(talk_first)
        self.assertEqual(answer, b"ERR BUSY denied\r\n")


class DirectRefusalTests(unittest.TestCase):
    """
    The refusal protocol on Twisted's own TCP transport over a real loopback connection (the
    reactor a L{MemoryReactor}, which never runs: whatever happens, happens at once).
    """

    def setUp(self) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        self.client = socket.create_connection(listener.getsockname(), timeout=10)
        self.addCleanup(self.client.close)
        self.accepted, peer = listener.accept()
        self.addCleanup(self.accepted.close)
        self.reactor = MemoryReactor()
        self.clock = Clock()
        self.refusal = _Refusal(b"ERR BUSY rate", self.clock, 30.0)
        self.transport = tcp.Server(self.accepted, self.refusal, peer, None, 1, self.reactor)

    def test_line_sent_and_closed_before_the_reactor_turns(self):
        """
        The line is in the peer's socket, and the connection closed, when C{makeConnection}
        returns: nothing is left registered with the reactor and no timer runs.
        """
        self.assertEqual(self.reactor.getReaders(), [self.transport])
        self.refusal.makeConnection(self.transport)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.accepted.fileno(), -1)
        self.assertEqual(self.reactor.getReaders() + self.reactor.getWriters(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.client.recv(4096), b"ERR BUSY rate\r\n")
        self.assertEqual(self.client.recv(4096), b"")

    def test_peer_gone_is_closed_without_the_line(self):
        """
        A hostile peer that resets the connection before it is answered: the failed send
        raises nothing, and the connection is closed all the same.
        """
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client.close()
        self.refusal.makeConnection(self.transport)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.accepted.fileno(), -1)
        self.assertEqual(self.reactor.getReaders() + self.reactor.getWriters(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

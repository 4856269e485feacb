"""
Tests for L{netguard.shared.link}: a link is up only once Redis answered (AUTH, PING) within
the connect bound; a command waits at most the bound (one tick before it still waits, at it
gives up) and a late reply keeps the connection, a reply still missing after the grace drops
it; nothing waits while the link is down; reconnection backs off with jitter and only a
connection that answered a real command and held for L{STABLE} seconds resets the backoff;
attempts log nothing of their own. Time is a L{task.Clock}; the endpoint is a test double
handing out L{StringTransport}s (or Twisted's TCP endpoint on a L{MemoryReactorClock}).
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.trial import unittest

from netguard.shared.link import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    CONNECT_TIMEOUT,
    GRACE,
    STABLE,
    RedisLink,
    Unavailable,
)
from netguard.shared.resp import RespProtocol, encode_command


class EndpointDouble:
    """
    A client endpoint test double: each C{connect} is a pending L{Deferred} the test fires
    with L{accept} (a protocol on a L{StringTransport}) or L{refuse}.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[Any, Deferred[Any]]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        attempt: Deferred[Any] = Deferred()
        self.attempts.append((factory, attempt))
        return attempt

    def accept(self) -> tuple[RespProtocol, StringTransport]:
        factory, attempt = self.attempts[-1]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        attempt.callback(protocol)
        return protocol, transport

    def refuse(self) -> None:
        self.attempts[-1][1].errback(ConnectionRefusedError())


def abort_loses(protocol: RespProtocol, transport: StringTransport) -> None:
    """
    Make the transport's abortConnection lose the connection, as a real one does.
    """

    def abort() -> None:
        transport.disconnecting = True
        protocol.connectionLost(None)

    transport.abortConnection = abort  # type: ignore[method-assign]


class LinkTests(unittest.TestCase):
    """
    L{RedisLink}.
    """

    def make(
        self, password: bytes | None = None
    ) -> tuple[RedisLink, EndpointDouble, Clock, list[str]]:
        clock = Clock()
        endpoint = EndpointDouble()
        events: list[str] = []
        self.reasons: list[str] = []

        def down(_: RedisLink, reason: str) -> None:
            events.append("down")
            self.reasons.append(reason)

        link = RedisLink(
            clock,
            endpoint,  # type: ignore[arg-type]
            timeout=0.05,
            password=password,
            on_up=lambda _: events.append("up"),
            on_down=down,
            random=random.Random(1),
        )
        link.start()
        return link, endpoint, clock, events

    def up(
        self, link: RedisLink, endpoint: EndpointDouble
    ) -> tuple[RespProtocol, StringTransport]:
        protocol, transport = endpoint.accept()
        abort_loses(protocol, transport)
        protocol.dataReceived(b"+PONG\r\n")
        self.assertTrue(link.up)
        transport.clear()
        return protocol, transport

    def test_up_after_ping(self) -> None:
        """
        Connected is not up: the link is up once PING was answered.
        """
        link, endpoint, _, events = self.make()
        protocol, transport = endpoint.accept()
        self.assertEqual(transport.value(), encode_command("PING"))
        self.assertFalse(link.up)
        protocol.dataReceived(b"+PONG\r\n")
        self.assertTrue(link.up)
        self.assertEqual(events, ["up"])

    def test_auth_then_ping(self) -> None:
        """
        With a password, AUTH goes first; a refused AUTH is a failed attempt (down, retried).
        """
        link, endpoint, clock, events = self.make(password=b"s3cret")
        protocol, transport = endpoint.accept()
        abort_loses(protocol, transport)
        self.assertEqual(transport.value(), encode_command("AUTH", b"s3cret"))
        protocol.dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
        self.assertFalse(link.up)
        self.assertEqual(events, ["down"])
        self.assertTrue(transport.disconnecting)

    def test_silent_server_not_up(self) -> None:
        """
        A server that accepts and never answers PING is a failed attempt after
        L{CONNECT_TIMEOUT} (not before), and the link is never up.
        """
        link, endpoint, clock, events = self.make()
        protocol, transport = endpoint.accept()
        abort_loses(protocol, transport)
        clock.advance(CONNECT_TIMEOUT - 0.001)
        self.assertEqual(events, [])
        clock.advance(0.001)
        self.assertEqual(events, ["down"])
        self.assertEqual(self.reasons, [f"no answer within {CONNECT_TIMEOUT}s"])
        self.assertFalse(link.up)
        self.assertTrue(transport.disconnecting)

    def test_connect_cut_by_the_deadline_named_as_such(self) -> None:
        """
        A connection attempt that never completes (a SYN dropped) is cancelled at
        L{CONNECT_TIMEOUT} and reported as no answer within that bound, not as the
        C{CancelledError} the cancellation raises; a refused one keeps its own reason.
        """
        link, endpoint, clock, events = self.make()
        clock.advance(CONNECT_TIMEOUT)
        self.assertEqual(self.reasons, [f"no answer within {CONNECT_TIMEOUT}s"])
        [retry] = clock.getDelayedCalls()
        clock.advance(retry.getTime() - clock.seconds())
        endpoint.refuse()
        self.assertEqual(len(self.reasons), 2)
        self.assertIn("refused", self.reasons[1])

    def test_call_bound(self) -> None:
        """
        A command not answered waits exactly the bound: one tick before it, still waiting;
        at it, L{Unavailable} and a timeout counted, the connection kept (the caller alone
        gives up).
        """
        link, endpoint, clock, events = self.make()
        protocol, transport = self.up(link, endpoint)
        waiting = link.call("SET", "k", "1", "NX")
        clock.advance(0.049)
        self.assertNoResult(waiting)
        clock.advance(0.001)
        self.failureResultOf(waiting, Unavailable)
        self.assertEqual(link.timeouts, 1)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(events, ["up"])
        self.assertTrue(link.up)

    def test_late_reply_after_stall(self) -> None:
        """
        An event loop that stalled past the bound runs the timer before it reads the reply
        that came in time: the caller fails at the bound, the reply is then read and
        dropped, the connection is kept (no down, nothing left scheduled), and the next
        command gets its own reply.
        """
        link, endpoint, clock, events = self.make()
        protocol, transport = self.up(link, endpoint)
        waiting = link.call("PING")
        clock.advance(0.08)  # the stall: the timer runs first
        self.failureResultOf(waiting, Unavailable)
        protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual((link.timeouts, link.late), (1, 1))
        self.assertTrue(link.up)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(events, ["up"])
        self.assertEqual(clock.getDelayedCalls(), [])
        following = link.call("INCRBY", "k", 1)
        protocol.dataReceived(b":7\r\n")
        self.assertEqual(self.successResultOf(following), 7)
        clock.advance(GRACE * 2)
        self.assertEqual(events, ["up"])

    def test_missing_reply_drops_after_grace(self) -> None:
        """
        A reply still missing L{GRACE} seconds after its command drops the connection (the
        link goes down and reconnects); one tick before, the connection is kept.
        """
        link, endpoint, clock, events = self.make()
        protocol, transport = self.up(link, endpoint)
        waiting = link.call("SET", "k", "1", "NX")
        clock.advance(GRACE - 0.001)
        self.failureResultOf(waiting, Unavailable)
        self.assertEqual(events, ["up"])
        self.assertFalse(transport.disconnecting)
        clock.advance(0.001)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(events, ["up", "down"])
        self.assertFalse(link.up)
        self.assertEqual((link.timeouts, link.late), (1, 0))
        self.failureResultOf(link.call("PING"), Unavailable)
        clock.advance(BACKOFF_FIRST * 2)
        self.assertEqual(len(endpoint.attempts), 2)

    def test_call_answered(self) -> None:
        """
        A command answered within the bound gets its reply, and its timer is cancelled.
        """
        link, endpoint, clock, _ = self.make()
        protocol, transport = self.up(link, endpoint)
        waiting = link.call("INCRBY", "k", 1)
        protocol.dataReceived(b":1\r\n")
        self.assertEqual(self.successResultOf(waiting), 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_down_fails_at_once(self) -> None:
        """
        While the link is down a command fails at once, sending nothing.
        """
        link, endpoint, _, _ = self.make()
        self.failureResultOf(link.call("PING"), Unavailable)
        endpoint.refuse()
        self.failureResultOf(link.call("PING"), Unavailable)

    def test_backoff(self) -> None:
        """
        Failed attempts are retried after delays that double from L{BACKOFF_FIRST} to at
        most L{BACKOFF_MAX}, each within +-50% jitter; being up again does not reset them,
        a real answer (L{RedisLink.answered}) does.
        """
        link, endpoint, clock, _ = self.make()
        delays = []
        for _ in range(10):
            endpoint.refuse()
            [call] = clock.getDelayedCalls()
            delays.append(call.getTime() - clock.seconds())
            clock.advance(call.getTime() - clock.seconds())
        nominal = [min(BACKOFF_MAX, BACKOFF_FIRST * 2**n) for n in range(10)]
        for delay, expected in zip(delays, nominal, strict=True):
            self.assertTrue(0.5 * expected <= delay <= 1.5 * expected, (delay, expected))

    def next_delay(self, clock: Clock) -> float:
        [call] = clock.getDelayedCalls()
        return float(call.getTime() - clock.seconds())

    def lose_after(
        self, link: RedisLink, endpoint: EndpointDouble, clock: Clock, held: float, answer: bool
    ) -> float:
        """
        Connect (the pending attempt), answer a real command if C{answer}, stay up C{held}
        seconds, lose the connection; return the delay of the next attempt.
        """
        protocol, transport = self.up(link, endpoint)
        if answer:
            link.answered()
        clock.advance(held)
        protocol.connectionLost(None)
        return self.next_delay(clock)

    def test_flapping_redis_keeps_backing_off(self) -> None:
        """
        A Redis that answers (connect, PING, a real command) and drops the connection a
        second later, over and over, is retried after delays that keep doubling to
        L{BACKOFF_MAX}: answering is not enough to reset the backoff.
        """
        link, endpoint, clock, events = self.make()
        delays = []
        for _ in range(8):
            delays.append(self.lose_after(link, endpoint, clock, 1.0, answer=True))
            clock.advance(delays[-1])
        nominal = [min(BACKOFF_MAX, BACKOFF_FIRST * 2**n) for n in range(8)]
        for delay, expected in zip(delays, nominal, strict=True):
            self.assertTrue(0.5 * expected <= delay <= 1.5 * expected, (delay, expected))

    def test_backoff_reset_after_a_connection_held(self) -> None:
        """
        After the delay has grown, a connection that answered a real command and stayed up
        L{STABLE} seconds resets it: the next attempt comes after about L{BACKOFF_FIRST}.
        One held a tick less does not; one held longer without a real answer (a Redis that
        answers PING only) does not either.
        """
        link, endpoint, clock, events = self.make()
        for _ in range(3):
            endpoint.refuse()
            clock.advance(self.next_delay(clock))
        # Any delay drawn after a reset is at most 1.5 * BACKOFF_FIRST; after 4 and 5
        # failures in a row the least one drawn is 0.5 * 2 s and 0.5 * 4 s.
        reset = 1.5 * BACKOFF_FIRST
        delay = self.lose_after(link, endpoint, clock, STABLE - 0.001, answer=True)
        self.assertGreater(delay, reset)
        clock.advance(delay)
        delay = self.lose_after(link, endpoint, clock, STABLE * 3, answer=False)
        self.assertGreater(delay, reset)
        clock.advance(delay)
        delay = self.lose_after(link, endpoint, clock, STABLE, answer=True)
        self.assertLessEqual(delay, reset)

    def test_attempts_log_nothing_of_their_own(self) -> None:
        """
        Each attempt's factory is quiet: Twisted starting and stopping it (once per
        attempt, through its endpoint) logs no "Starting factory" / "Stopping factory";
        shown with Twisted's own TCP endpoint on a L{MemoryReactorClock}.
        """
        reactor = MemoryReactorClock()
        link = RedisLink(reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", 6379), timeout=0.05)
        link.start()
        self.addCleanup(link.stop)
        [(_, _, factory, _, _)] = reactor.tcpClients
        with capturedLogs() as events:
            factory.doStart()
            factory.doStop()
        self.assertEqual(list(events), [])

    def test_stop(self) -> None:
        """
        L{RedisLink.stop} drops the connection and makes no more attempts.
        """
        link, endpoint, clock, _ = self.make()
        protocol, transport = self.up(link, endpoint)
        link.stop()
        self.assertTrue(transport.disconnecting)
        self.assertFalse(link.up)
        clock.advance(BACKOFF_MAX * 2)
        self.assertEqual(len(endpoint.attempts), 1)

"""
Tests for what an idle L{netguard.relay_splice.KernelSplice} holds: its idle timeout is a place
in the clock's shared L{netguard.relay.IdleSweep} (no timer of its own), and taking over its
transports' events allocates no bound method until a flow has to wait for a target.

Real loopback sockets as in L{tests.test_relay_splice} (whose harness this reuses); timers run
on a L{task.Clock}; waits for the reactor are bounded by a step count (hang guards only).
"""

from __future__ import annotations

import socket
import types
from collections.abc import Generator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from netguard.relay import A, B, RelayResult
from netguard.relay_flow import _Flow
from netguard.relay_splice import KernelSplice
from tests.test_relay_splice import IDLE, SKIP, _Harness, _payload

#: How many relays share one clock in the tests below.
MANY = 50


def _flow_hooks(transport: Any) -> list[object]:
    """
    What of a kernel relay is stored in C{transport}'s instance dict: flows themselves, and
    bound methods of flows (each one an allocation per relay).
    """
    return [
        value
        for value in vars(transport).values()
        if isinstance(value, _Flow)
        or (isinstance(value, types.MethodType) and isinstance(value.__self__, _Flow))
    ]


def _bound_methods(transport: Any) -> list[types.MethodType]:
    """
    The bound methods of a kernel relay's flows stored in C{transport}'s instance dict.
    """
    return [value for value in _flow_hooks(transport) if isinstance(value, types.MethodType)]


class _Shared:
    """
    C{count} idle kernel relays on real socket pairs, all on one L{Clock}.
    """

    def __init__(self, test: unittest.TestCase, count: int, clock: Clock) -> None:
        self.pairs = [_Harness(test, family=socket.AF_UNIX, start=False) for _ in range(count)]
        self.relays: list[KernelSplice] = []
        self.results: list[RelayResult] = []
        for pair in self.pairs:
            relay = KernelSplice(pair.a, pair.b, clock=clock, pool=pair.pool, idle_timeout=IDLE)
            # The harness's own (never started) relay is replaced as the sides' listener.
            pair.proto_a.relay = pair.proto_b.relay = relay
            relay.done.addCallback(self.results.append)
            pair.relay.done.callback(None)  # so that its cleanup does not wait for it
            relay.start()
            self.relays.append(relay)
        test.addCleanup(self.cleanup)

    def cleanup(self) -> None:
        for relay in self.relays:
            if relay.ended_by is None:
                relay.abort("test over")


class KernelSpliceIdleSweepTests(unittest.TestCase):
    """
    An idle kernel relay holds no timer: the relays of a clock share one L{IdleSweep}.
    """

    skip = SKIP

    def test_one_timer_for_many_relays(self) -> None:
        """
        Fifty idle kernel relays on one clock hold one timer between them (the sweep's), not
        one each; when the last one ends, none is left.
        """
        clock = Clock()
        shared = _Shared(self, MANY, clock)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        for relay in shared.relays:
            relay.abort("test over")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_idle_bound_and_one_step_past(self) -> None:
        """
        A relay started at an instant that is not on the sweep's 1 s steps is not ended
        before C{idle_timeout} has passed (an instant before it, it runs), and is ended
        (C{ended_by="idle"}) within 1 s after it.
        """
        clock = Clock()
        clock.advance(0.25)
        shared = _Shared(self, 3, clock)
        clock.advance(IDLE - 0.001)
        self.assertEqual([relay.ended_by for relay in shared.relays], [None] * 3)
        clock.advance(1.0)
        self.assertEqual([relay.ended_by for relay in shared.relays], ["idle"] * 3)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_activity_moves_the_deadline(self) -> None:
        """
        A relay that moved a byte just before its deadline is kept for another
        C{idle_timeout} from that byte, by the same single timer, while an idle one beside
        it is ended.
        """
        clock = Clock()
        shared = _Shared(self, 2, clock)
        busy, idle = shared.relays
        clock.advance(IDLE - 0.5)
        busy.last = clock.seconds()  # what a moved chunk stores
        clock.advance(1.0)
        self.assertEqual((busy.ended_by, idle.ended_by), (None, "idle"))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(IDLE - 1.001)  # an instant before the busy one's new deadline
        self.assertIsNone(busy.ended_by)
        clock.advance(1.0)
        self.assertEqual(busy.ended_by, "idle")


class KernelSpliceHookTests(unittest.TestCase):
    """
    Taking over the transports' read and write events allocates nothing per idle relay, and
    the takeover is undone when the relay ends.
    """

    skip = SKIP

    def test_idle_relay_stores_no_bound_method(self) -> None:
        """
        A started relay with nothing to write is its sources' C{doRead} itself (each flow
        for its source) and leaves their C{doWrite} to Twisted: no bound method of a flow
        is stored in either transport.
        """
        clock = Clock()
        shared = _Shared(self, 1, clock)
        pair, relay = shared.pairs[0], shared.relays[0]
        self.assertIs(pair.a.doRead, relay._ab)
        self.assertIs(pair.b.doRead, relay._ba)
        self.assertEqual((_bound_methods(pair.a), _bound_methods(pair.b)), ([], []))

    @inlineCallbacks
    def test_write_hook_when_waiting_and_given_back(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """
        A flow whose target stops taking bytes becomes that target's C{doWrite}, and gives it
        back once the target has taken everything; once the relay has ended (both sides
        closed, what was in flight delivered), neither transport holds anything of the relay.
        """
        harness = _Harness(self)
        harness.peer_b.reading = False
        payload = _payload(4 << 20, 21)
        harness.peer_a.outgoing += payload
        yield harness.until(lambda: harness.relay._ab.paused)
        write_hook = harness.b.doWrite
        self.assertIsInstance(write_hook, types.MethodType)
        self.assertIs(write_hook.__self__, harness.relay._ab)
        harness.peer_b.reading = True
        yield harness.until(lambda: len(harness.peer_b.received) == len(payload))
        yield harness.until(lambda: _bound_methods(harness.b) == [])  # given back, drained
        harness.peer_a.shut_after_send = True
        yield harness.until(lambda: harness.peer_b.eof)
        self.assertEqual(bytes(harness.peer_b.received), payload)
        harness.peer_b.shut_after_send = True
        yield harness.until(lambda: bool(harness.results))
        self.assertEqual((_flow_hooks(harness.a), _flow_hooks(harness.b)), ([], []))
        self.assertEqual(harness.results[0].ended_by, A)

    @inlineCallbacks
    def test_bytes_before_the_relay_hook_the_writer(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """
        Bytes left in Twisted's buffer of a side when the relay starts make the flow toward
        it that side's C{doWrite}, so the relay learns when they are written (and reads the
        other side again): they arrive first, then what is relayed after them.
        """
        harness = _Harness(self, start=False)
        harness.b.write(b"early ")
        harness.start()
        self.assertIs(harness.b.doWrite.__self__, harness.relay._ab)
        harness.peer_a.outgoing += b"late"
        yield harness.until(lambda: bytes(harness.peer_b.received) == b"early late")
        self.assertEqual(_bound_methods(harness.b), [])  # given back once written
        self.assertEqual(harness.relay.counts, {A: 4, B: 0})

"""
Tests for L{netguard.relay.Splice} and the two backend legs built on it
(L{netguard.outbound.backends.EchoLeg}, L{netguard.outbound.backends.EndpointLeg}).

Everything runs on fakes and a L{task.Clock}: L{FakeTransport} (a L{StringTransport} that
records pause/resume/half-close/close/abort), and L{QueueTransport}, Twisted's own
L{abstract.FileDescriptor} write queue over a fake socket whose draining the test controls, for
the cases where Twisted's real buffer semantics matter (high-water mark, when a half-close is
performed, producers paused and resumed by the transport itself).
"""

from __future__ import annotations

import random
import sys
from typing import Any

from twisted.internet import abstract
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from netguard.config import ServiceConfig
from netguard.outbound.backends import EchoLeg, EndpointLeg, open_backend
from netguard.relay import IDLE_GRANULARITY, A, B, IdleSweep, RelayResult, Splice

WRITE_TIMEOUT = 30.0
IDLE_TIMEOUT = 600.0


class FakeTransport(StringTransport):
    """
    A L{StringTransport} that records what the relay does to it. Writing after our own
    half-close is a relay bug and raises.

    @ivar events: C{"pause"}, C{"resume"}, C{"lose-write"}, C{"lose"}, C{"abort"} in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.write_closed = False
        self.aborted = False
        self.no_delay: bool | None = None

    @property
    def reading(self) -> bool:
        """Whether reading is on (not paused)."""
        return self.producerState == "producing"

    def write(self, data: bytes) -> None:
        if self.write_closed:
            raise AssertionError("write after loseWriteConnection")
        super().write(data)

    def pauseProducing(self) -> None:
        self.events.append("pause")
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.events.append("resume")
        super().resumeProducing()

    def loseWriteConnection(self) -> None:
        self.events.append("lose-write")
        self.write_closed = True

    def loseConnection(self) -> None:
        self.events.append("lose")
        super().loseConnection()

    def abortConnection(self) -> None:
        self.events.append("abort")
        self.aborted = True
        super().abortConnection()

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class NoHalfCloseTransport(FakeTransport):
    """
    A transport that cannot half-close (no C{loseWriteConnection} at all).
    """

    def __getattribute__(self, name: str) -> Any:
        if name == "loseWriteConnection":
            raise AttributeError(name)
        return super().__getattribute__(name)


class NoDelayRefusedTransport(FakeTransport):
    """
    A transport whose socket refuses TCP_NODELAY (an AF_UNIX socket behind a wrapper).
    """

    def setTcpNoDelay(self, enabled: bool) -> None:
        raise OSError(95, "Operation not supported")


@implementer(IPushProducer)
class _Membrane:
    """
    What TLS does: register its own producer on the transport, wrapping the caller's.
    """

    def __init__(self, producer: Any) -> None:
        self.producer = producer

    def pauseProducing(self) -> None:
        self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        self.producer.resumeProducing()

    def stopProducing(self) -> None:
        self.producer.stopProducing()


class WrappingTransport(FakeTransport):
    """
    A transport whose C{producer} attribute is a wrapper of the registered producer (as with
    L{twisted.protocols.tls.TLSMemoryBIOProtocol}).
    """

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        super().registerProducer(_Membrane(producer), streaming)


class FakeTLSTransport(FakeTransport, TLSMemoryBIOProtocol):
    """
    A L{FakeTransport} that is a L{TLSMemoryBIOProtocol} as far as C{isinstance} goes (its
    own methods are the fake's).
    """


class QueueTransport(abstract.FileDescriptor):
    """
    Twisted's own write queue (L{abstract.FileDescriptor}: producer paused above C{bufferSize},
    resumed when the queue drains, close and half-close performed after the drain) over a fake
    socket that takes only what L{drain} lets through.
    """

    def __init__(self) -> None:
        self.fake_reactor = MemoryReactor()
        super().__init__(self.fake_reactor)
        self.connected = 1
        self.sent = bytearray()
        self.write_closed = False
        self.closed = False
        self.aborted = False
        self._capacity = 0
        self.startReading()

    @property
    def reading(self) -> bool:
        """Whether reading is on (not paused)."""
        return self in self.fake_reactor.readers

    def queued(self) -> int:
        """Bytes in the user-space write queue."""
        return len(self.dataBuffer) - self.offset + self._tempDataLen

    def writeSomeData(self, data: Any) -> int:
        taken = min(len(data), self._capacity)
        self._capacity -= taken
        self.sent += bytes(data[:taken])
        return taken

    def _closeWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        self.stopReading()
        self.stopWriting()

    def drain(self, size: int | None = None) -> None:
        """
        Let the peer take C{size} bytes (all if L{None}), then run write passes as the
        reactor would while the socket is writable (at most a few).
        """
        self._capacity = sys.maxsize if size is None else size
        for _ in range(4):
            if self not in self.fake_reactor.writers:
                break
            if self.doWrite() is not None:
                self.closed = True
                break
            if self._capacity == 0:
                break


class SpliceTestCase(unittest.TestCase):
    """
    A started splice between two L{FakeTransport}s on a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.a = FakeTransport()
        self.b = FakeTransport()
        self.splice = self.make_splice(self.a, self.b)

    def make_splice(self, a: Any, b: Any) -> Splice:
        splice = Splice(
            a, b, clock=self.clock, idle_timeout=IDLE_TIMEOUT, write_timeout=WRITE_TIMEOUT
        )
        self.results: list[RelayResult] = []
        splice.done.addCallback(self.results.append)
        splice.start()
        return splice

    def lose_both(self) -> None:
        """Both transports report their connection lost (as real ones do after a close)."""
        self.splice.lost(A)
        self.splice.lost(B)

    def assert_finished(self, ended_by: str) -> RelayResult:
        """
        C{done} fired exactly once, with C{ended_by}, and no timer is left in the clock.
        """
        self.assertEqual(len(self.results), 1)
        self.assertEqual(self.results[0].ended_by, ended_by)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        return self.results[0]


class StartTests(SpliceTestCase):
    def test_valves_provide_push_producer(self) -> None:
        verifyObject(IPushProducer, self.a.producer)
        verifyObject(IPushProducer, self.b.producer)

    def test_a_streaming_valve_registered_on_each_side(self) -> None:
        self.assertIsNotNone(self.a.producer)
        self.assertIsNotNone(self.b.producer)
        self.assertIsNot(self.a.producer, self.b.producer)
        self.assertTrue(self.a.streaming)
        self.assertTrue(self.b.streaming)

    def test_tcp_nodelay_set_on_both_sides(self) -> None:
        self.assertTrue(self.a.no_delay)
        self.assertTrue(self.b.no_delay)

    def test_tcp_nodelay_refused_is_ignored(self) -> None:
        splice = self.make_splice(NoDelayRefusedTransport(), FakeTransport())
        self.assertIsNotNone(splice.transports[A].producer)

    def test_only_the_idle_timer_runs(self) -> None:
        calls = self.clock.getDelayedCalls()
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0].getTime(), IDLE_TIMEOUT)


class RelayBytesTests(SpliceTestCase):
    def test_bytes_a_to_b_in_order_and_counted(self) -> None:
        for chunk in (b"one ", b"\x00\xff", b"", b"three"):
            self.splice.data_from(A, chunk)
        self.assertEqual(self.b.value(), b"one \x00\xffthree")
        self.assertEqual(self.a.value(), b"")
        self.assertEqual(self.splice.counts, {A: 11, B: 0})

    def test_bytes_b_to_a_in_order_and_counted(self) -> None:
        self.splice.data_from(B, b"+PONG\r\n")
        self.splice.data_from(B, b"more")
        self.assertEqual(self.a.value(), b"+PONG\r\nmore")
        self.assertEqual(self.b.value(), b"")
        self.assertEqual(self.splice.counts, {A: 0, B: 11})

    def test_both_directions_interleaved_in_random_chunks(self) -> None:
        rng = random.Random(7)
        up, down = rng.randbytes(50_000), rng.randbytes(70_000)
        offsets = {A: 0, B: 0}
        payload = {A: up, B: down}
        while offsets[A] < len(up) or offsets[B] < len(down):
            side = rng.choice((A, B))
            step = rng.randint(1, 3000)
            start = offsets[side]
            self.splice.data_from(side, payload[side][start : start + step])
            offsets[side] = min(start + step, len(payload[side]))
        self.assertEqual(self.b.value(), up)
        self.assertEqual(self.a.value(), down)
        self.lose_both()
        result = self.assert_finished(A)
        self.assertEqual((result.bytes_a_to_b, result.bytes_b_to_a), (50_000, 70_000))


class BackpressureTests(SpliceTestCase):
    def test_full_queue_on_a_pauses_reading_b(self) -> None:
        self.a.producer.pauseProducing()
        self.assertFalse(self.b.reading)
        self.assertTrue(self.a.reading)

    def test_drained_queue_on_a_resumes_reading_b(self) -> None:
        self.a.producer.pauseProducing()
        self.a.producer.resumeProducing()
        self.assertTrue(self.b.reading)
        self.assertEqual(self.b.events, ["pause", "resume"])

    def test_full_queue_on_b_pauses_reading_a(self) -> None:
        self.b.producer.pauseProducing()
        self.assertFalse(self.a.reading)
        self.assertTrue(self.b.reading)

    def test_drained_queue_on_b_resumes_reading_a(self) -> None:
        self.b.producer.pauseProducing()
        self.b.producer.resumeProducing()
        self.assertTrue(self.a.reading)

    def test_resume_without_pause_does_nothing(self) -> None:
        self.a.producer.resumeProducing()
        self.assertEqual(self.b.events, [])

    def test_twisted_queue_above_high_water_mark_pauses_the_other_side(self) -> None:
        b = QueueTransport()
        self.a = FakeTransport()
        self.splice = self.make_splice(self.a, b)
        self.splice.data_from(A, b"x" * b.bufferSize)
        self.assertTrue(self.a.reading)  # at the mark, not above it
        self.splice.data_from(A, b"y")
        self.assertFalse(self.a.reading)
        b.drain(1000)
        self.assertFalse(self.a.reading)  # still queued
        b.drain()
        self.assertTrue(self.a.reading)
        self.assertEqual(bytes(b.sent), b"x" * b.bufferSize + b"y")

    def test_pause_reasserted_after_an_outside_resume(self) -> None:
        # A session or tunnel that resumes its transport after handing it over must not
        # defeat backpressure for more than one read.
        b = QueueTransport()
        self.a = FakeTransport()
        self.splice = self.make_splice(self.a, b)
        self.splice.data_from(A, b"x" * (b.bufferSize + 1))
        self.assertFalse(self.a.reading)
        self.a.resumeProducing()  # someone who does not know about the splice
        self.splice.data_from(A, b"one more read")
        self.assertFalse(self.a.reading)
        b.drain()
        self.assertTrue(self.a.reading)

    def test_resume_reading_held_while_the_other_queue_is_full(self) -> None:
        self.a.pauseProducing()  # e.g. paused while the backend was connecting
        self.b.producer.pauseProducing()
        self.splice.resume_reading(A)
        self.assertFalse(self.a.reading)
        self.b.producer.resumeProducing()
        self.assertTrue(self.a.reading)

    def test_resume_reading_when_free(self) -> None:
        self.a.pauseProducing()
        self.splice.resume_reading(A)
        self.assertTrue(self.a.reading)

    def test_resume_reading_not_after_eof(self) -> None:
        self.a.pauseProducing()
        self.splice.eof_from(A)
        self.splice.resume_reading(A)
        self.assertFalse(self.a.reading)


class StallTests(SpliceTestCase):
    def test_stall_longer_than_write_timeout_aborts_both(self) -> None:
        self.a.producer.pauseProducing()
        self.clock.advance(WRITE_TIMEOUT - 0.1)
        self.assertFalse(self.a.aborted or self.b.aborted)
        self.clock.advance(0.1)
        self.assertTrue(self.a.aborted)
        self.assertTrue(self.b.aborted)
        self.lose_both()
        self.assert_finished("stalled-a")

    def test_stall_of_b(self) -> None:
        self.b.producer.pauseProducing()
        self.clock.advance(WRITE_TIMEOUT)
        self.assertTrue(self.a.aborted and self.b.aborted)
        self.lose_both()
        self.assert_finished("stalled-b")

    def test_repeated_pause_calls_do_not_extend_or_restart_the_stall(self) -> None:
        self.a.producer.pauseProducing()
        self.clock.advance(WRITE_TIMEOUT / 2)
        self.a.producer.pauseProducing()  # Twisted calls it again on each write while full
        self.clock.advance(WRITE_TIMEOUT / 2)
        self.assertTrue(self.a.aborted)

    def test_stall_shorter_than_write_timeout_is_forgiven(self) -> None:
        self.a.producer.pauseProducing()
        self.clock.advance(WRITE_TIMEOUT - 1)
        self.a.producer.resumeProducing()
        self.clock.advance(WRITE_TIMEOUT * 2)
        self.assertFalse(self.a.aborted or self.b.aborted)


class IdleTests(SpliceTestCase):
    def test_idle_timeout_aborts_both(self) -> None:
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(self.a.aborted)
        self.clock.advance(1)
        self.assertTrue(self.a.aborted and self.b.aborted)
        self.lose_both()
        self.assert_finished("idle")

    def test_idle_reset_by_traffic_a_to_b(self) -> None:
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.splice.data_from(A, b"x")
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(self.a.aborted)
        self.clock.advance(1)
        self.assertTrue(self.a.aborted)

    def test_idle_reset_by_traffic_b_to_a(self) -> None:
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.splice.data_from(B, b"x")
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(self.b.aborted)
        self.clock.advance(1)
        self.assertTrue(self.b.aborted)


class IdleSweepTests(unittest.TestCase):
    """
    The idle timeout of relays sharing one clock: one timer for all of them, never before
    the bound, at most L{IDLE_GRANULARITY} after it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.results: list[RelayResult] = []

    def start(self, idle_timeout: float = 10.0) -> tuple[Splice, FakeTransport, FakeTransport]:
        a, b = FakeTransport(), FakeTransport()
        splice = Splice(a, b, clock=self.clock, idle_timeout=idle_timeout, write_timeout=5.0)
        splice.done.addCallback(self.results.append)
        splice.start()
        return splice, a, b

    def test_granularity_is_one_second(self) -> None:
        """
        The documented granularity: a relay may outlive its idle bound by at most 1 s.
        """
        self.assertEqual(IDLE_GRANULARITY, 1.0)
        self.assertEqual(IdleSweep.for_clock(self.clock).granularity, 1.0)

    def test_unaligned_deadline_not_before_the_bound(self) -> None:
        """
        A relay started between two steps of the sweep is not ended one instant before
        C{idle_timeout} has passed, and is ended within the granularity after it.
        """
        self.clock.advance(0.25)
        splice, a, b = self.start(idle_timeout=10.0)
        self.clock.advance(10.0 - 1e-6)  # just before the bound (t = 10.25 - 1e-6)
        self.assertFalse(a.aborted or b.aborted)
        self.clock.advance(1e-6)  # exactly the bound: the next step of the sweep is due later
        self.assertFalse(a.aborted)
        self.clock.advance(IDLE_GRANULARITY)  # one step past it
        self.assertTrue(a.aborted and b.aborted)
        splice.lost(A)
        splice.lost(B)
        self.assertEqual(self.results[0].ended_by, "idle")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aligned_deadline_at_the_bound(self) -> None:
        """
        A deadline on a step of the sweep ends the relay exactly at the bound, not before.
        """
        splice, a, _ = self.start(idle_timeout=10.0)
        self.clock.advance(9.999)
        self.assertFalse(a.aborted)
        self.clock.advance(0.001)
        self.assertTrue(a.aborted)

    def test_activity_just_before_a_step_moves_the_deadline(self) -> None:
        """
        A byte relayed just before the sweep looks at the relay counts: the relay is kept
        until C{idle_timeout} after that byte, then ended within the granularity.
        """
        splice, a, _ = self.start(idle_timeout=10.0)
        self.clock.advance(9.5)
        splice.data_from(A, b"x")  # deadline 19.5
        self.clock.advance(0.5)  # the step at 10 finds it active
        self.assertFalse(a.aborted)
        self.clock.advance(9.5 - 1e-6)
        self.assertFalse(a.aborted)
        self.clock.advance(1e-6 + IDLE_GRANULARITY)
        self.assertTrue(a.aborted)

    def test_one_timer_for_many_relays(self) -> None:
        """
        Fifty relays of one clock hold one timer between them (none of their own), and no
        timer is left once they are all gone.
        """
        splices = []
        for i in range(50):
            self.clock.advance(0.1)
            splices.append(self.start(idle_timeout=10.0 + i)[0])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        for splice in splices:
            splice.lost(A)
            splice.lost(B)
        self.assertEqual(len(self.results), 50)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_each_relay_ends_at_its_own_bound(self) -> None:
        """
        Relays with different idle timeouts and starts on one sweep each end no earlier
        than their bound and at most one step after it; an active one is kept.
        """
        started = []
        for i in range(20):
            self.clock.advance(0.3)
            splice, a, _ = self.start(idle_timeout=5.0 + i % 7)
            started.append((self.clock.seconds() + 5.0 + i % 7, a))
        keeper, kept, _ = self.start(idle_timeout=5.0)
        for _ in range(int(40 / 0.05)):
            self.clock.advance(0.05)
            keeper.data_from(B, b"k")
            now = self.clock.seconds()
            for deadline, a in started:
                if now < deadline - 1e-9:
                    self.assertFalse(a.aborted, (now, deadline))
                elif now >= deadline + IDLE_GRANULARITY:
                    self.assertTrue(a.aborted, (now, deadline))
        self.assertFalse(kept.aborted)

    def test_expiry_that_ends_the_last_relay_leaves_no_timer(self) -> None:
        """
        A relay ended by the sweep whose transports report their loss at once leaves no
        timer behind (the sweep stops with its last relay).
        """
        splice, a, b = self.start(idle_timeout=3.0)
        splice.done.addCallback(lambda _: None)
        a.abortConnection = lambda: splice.lost(A)  # type: ignore[method-assign]
        b.abortConnection = lambda: splice.lost(B)  # type: ignore[method-assign]
        self.clock.advance(3.0)
        self.assertEqual(self.results[0].ended_by, "idle")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bucket_keys_bounded_under_churn(self) -> None:
        """
        Relays that start and end at 2,000 different instants, each before its deadline,
        leave the sweep's queue of steps bounded (no key per relay ever seen).
        """
        sweep = IdleSweep.for_clock(self.clock)
        holder, _, _ = self.start(idle_timeout=100000.0)
        for _ in range(2000):
            self.clock.advance(1.0)
            splice, _, _ = self.start(idle_timeout=3600.0)
            splice.lost(A)
            splice.lost(B)
        self.assertLessEqual(len(sweep._keys), 2 * len(sweep._buckets) + 16)
        self.assertEqual(len(sweep), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        holder.abort("shutdown")


class HalfCloseTests(SpliceTestCase):
    def test_half_close_from_a_reaches_b(self) -> None:
        self.splice.data_from(A, b"request")
        self.splice.eof_from(A)
        self.assertTrue(self.b.write_closed)
        self.assertFalse(self.a.write_closed)
        self.assertFalse(self.a.disconnecting or self.b.disconnecting)

    def test_after_half_close_from_a_the_reply_still_flows(self) -> None:
        self.splice.eof_from(A)
        self.splice.data_from(B, b"reply after EOF")
        self.assertEqual(self.a.value(), b"reply after EOF")

    def test_half_close_from_b_reaches_a(self) -> None:
        self.splice.eof_from(B)
        self.assertTrue(self.a.write_closed)
        self.assertFalse(self.b.write_closed)

    def test_second_eof_from_the_same_side_is_ignored(self) -> None:
        self.splice.eof_from(A)
        self.splice.eof_from(A)
        self.assertEqual(self.b.events.count("lose-write"), 1)
        self.assertFalse(self.a.disconnecting)

    def test_both_half_closes_close_both(self) -> None:
        self.splice.eof_from(A)
        self.splice.data_from(B, b"last words")
        self.splice.eof_from(B)
        self.assertTrue(self.a.disconnecting)
        self.assertTrue(self.b.disconnecting)
        self.assertIsNone(self.a.producer)  # else Twisted would hold the close back
        self.assertIsNone(self.b.producer)
        self.assertFalse(self.a.aborted or self.b.aborted)
        self.lose_both()
        result = self.assert_finished(A)  # A ended its sending first
        self.assertEqual(result.bytes_b_to_a, 10)

    def test_both_half_closes_but_a_peer_never_reads_aborted_after_write_timeout(self) -> None:
        self.splice.eof_from(B)
        self.splice.eof_from(A)
        self.splice.lost(B)
        self.clock.advance(WRITE_TIMEOUT - 0.1)
        self.assertFalse(self.a.aborted)
        self.clock.advance(0.1)
        self.assertTrue(self.a.aborted)
        self.splice.lost(A)
        self.assert_finished(B)

    def test_both_half_closes_and_neither_goes_aborted_after_write_timeout(self) -> None:
        self.splice.eof_from(A)
        self.splice.eof_from(B)
        self.clock.advance(WRITE_TIMEOUT)
        self.assertTrue(self.a.aborted and self.b.aborted)
        self.lose_both()
        self.assert_finished(A)

    def test_half_close_on_a_transport_that_cannot_half_close_closes_both(self) -> None:
        self.b = NoHalfCloseTransport()
        self.a = FakeTransport()
        self.splice = self.make_splice(self.a, self.b)
        self.splice.eof_from(A)
        self.assertTrue(self.a.disconnecting and self.b.disconnecting)

    def test_half_close_towards_tls_sends_close_notify_not_a_tcp_half_close(self) -> None:
        # loseWriteConnection on Twisted's TLS is the TCP one underneath: it would cut the TLS
        # stream. loseConnection sends close_notify and still delivers the peer's data.
        self.b = FakeTLSTransport()
        self.a = FakeTransport()
        self.splice = self.make_splice(self.a, self.b)
        self.splice.eof_from(A)
        self.assertFalse(self.b.write_closed)
        self.assertTrue(self.b.disconnecting)
        self.assertIsNone(self.b.producer)  # else TLS would hold its close_notify back
        self.splice.data_from(B, b"the reply")
        self.assertEqual(self.a.value(), b"the reply")
        self.assertFalse(self.a.disconnecting)

    def test_half_close_waits_for_a_full_queue_to_drain(self) -> None:
        # Twisted performs a pending half-close only when the queue drains with no paused
        # producer registered: the splice must take its valve off first.
        b = QueueTransport()
        self.a = FakeTransport()
        self.splice = self.make_splice(self.a, b)
        payload = b"z" * (b.bufferSize + 10)
        self.splice.data_from(A, payload)
        self.splice.eof_from(A)
        self.assertFalse(b.write_closed)  # not before the bytes
        b.drain()
        self.assertEqual(bytes(b.sent), payload)
        self.assertTrue(b.write_closed)
        self.assertIsNone(b.producer)

    def test_half_close_with_a_short_queue_performed_after_it(self) -> None:
        b = QueueTransport()
        self.a = FakeTransport()
        self.splice = self.make_splice(self.a, b)
        self.splice.data_from(A, b"short")
        self.splice.eof_from(A)
        b.drain()
        self.assertEqual(bytes(b.sent), b"short")
        self.assertTrue(b.write_closed)

    def test_stall_after_half_close_still_bounded(self) -> None:
        b = QueueTransport()
        self.a = FakeTransport()
        self.splice = self.make_splice(self.a, b)
        self.splice.data_from(A, b"z" * (b.bufferSize + 10))
        self.splice.eof_from(A)
        self.clock.advance(WRITE_TIMEOUT)
        self.assertTrue(self.a.aborted)


class LostTests(SpliceTestCase):
    def test_lost_a_closes_b_after_its_queue(self) -> None:
        self.splice.data_from(A, b"flush me")
        self.splice.lost(A)
        self.assertTrue(self.b.disconnecting)
        self.assertFalse(self.b.aborted)
        self.assertIsNone(self.b.producer)  # else Twisted would hold the close back
        self.assertEqual(self.results, [])
        self.splice.lost(B)
        result = self.assert_finished(A)
        self.assertEqual(result.bytes_a_to_b, 8)

    def test_lost_b_closes_a(self) -> None:
        self.splice.lost(B)
        self.assertTrue(self.a.disconnecting)
        self.splice.lost(A)
        self.assert_finished(B)

    def test_lost_a_and_b_never_goes_aborted_after_write_timeout(self) -> None:
        self.splice.lost(A)
        self.clock.advance(WRITE_TIMEOUT - 0.1)
        self.assertFalse(self.b.aborted)
        self.clock.advance(0.1)
        self.assertTrue(self.b.aborted)
        self.splice.lost(B)
        self.assert_finished(A)

    def test_lost_a_while_b_stalled_keeps_ended_by_and_grace(self) -> None:
        self.b.producer.pauseProducing()
        self.clock.advance(20)
        self.splice.lost(A)
        self.clock.advance(WRITE_TIMEOUT - 1)  # the old stall timer would have fired here
        self.assertFalse(self.b.aborted)
        self.clock.advance(1)
        self.assertTrue(self.b.aborted)
        self.splice.lost(B)
        self.assert_finished(A)

    def test_idle_timer_stops_once_a_side_is_gone(self) -> None:
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.splice.lost(A)
        self.clock.advance(1)
        self.assertFalse(self.b.aborted)
        self.clock.advance(WRITE_TIMEOUT)
        self.splice.lost(B)
        self.assert_finished(A)

    def test_bytes_for_a_gone_side_are_dropped_and_not_counted(self) -> None:
        self.splice.lost(A)
        self.splice.data_from(B, b"nobody to hear")
        self.assertEqual(self.a.value(), b"")
        self.splice.lost(B)
        self.assertEqual(self.assert_finished(A).bytes_b_to_a, 0)

    def test_close_unregisters_a_wrapped_producer(self) -> None:
        # TLS registers its own wrapper: the splice must not rely on transport.producer.
        self.b = WrappingTransport()
        self.a = FakeTransport()
        self.splice = self.make_splice(self.a, self.b)
        self.splice.lost(A)
        self.assertIsNone(self.b.producer)
        self.assertTrue(self.b.disconnecting)

    def test_no_grace_timer_after_a_synchronous_finish(self) -> None:
        """
        A transport whose close reports its loss at once (Twisted's own does, once
        half-closed) finishes the relay inside its wind-down: no grace timer is left
        behind in the clock.
        """
        self.b.loseConnection = lambda: self.splice.lost(B)  # type: ignore[method-assign]
        self.splice.lost(A)
        self.assert_finished(A)

    def test_eof_after_lost_is_ignored(self) -> None:
        self.splice.lost(A)
        self.splice.eof_from(A)
        self.splice.eof_from(B)
        self.assertFalse(self.b.write_closed)


class DoneTests(SpliceTestCase):
    def test_done_fires_exactly_once(self) -> None:
        self.splice.lost(A)
        self.splice.lost(B)
        self.splice.lost(A)
        self.splice.lost(B)
        self.splice.abort("late")
        self.splice.eof_from(A)
        self.assert_finished(A)

    def test_result_has_counts_and_duration(self) -> None:
        self.clock.advance(2)
        self.splice.data_from(A, b"abc")
        self.splice.data_from(B, b"defgh")
        self.clock.advance(3.5)
        self.lose_both()
        self.assertEqual(
            self.assert_finished(A),
            RelayResult(bytes_a_to_b=3, bytes_b_to_a=5, duration=5.5, ended_by=A),
        )

    def test_abort_records_its_reason(self) -> None:
        self.splice.abort("shutdown")
        self.assertTrue(self.a.aborted and self.b.aborted)
        self.lose_both()
        self.assert_finished("shutdown")

    def test_abort_after_a_side_ended_keeps_that_side(self) -> None:
        self.splice.lost(B)
        self.splice.abort("shutdown")
        self.assertTrue(self.a.aborted)
        self.splice.lost(A)
        self.assert_finished(B)

    def test_nothing_relayed_after_abort(self) -> None:
        self.splice.abort("shutdown")
        self.splice.data_from(A, b"late")
        self.assertEqual(self.b.value(), b"")


class SpliceMemoryTests(SpliceTestCase):
    """
    What an idle relay holds: one splice and two valves, all in slots (no per-side dicts,
    no instance dicts), and only the idle timer; the per-side views still read right.
    """

    def test_splice_and_valves_have_no_instance_dict(self) -> None:
        """
        Neither the splice nor its valves carry an instance C{__dict__} (each would be a
        per-connection dict of its own).
        """
        self.assertFalse(hasattr(self.splice, "__dict__"))
        for valve in (self.a.producer, self.b.producer):
            self.assertFalse(hasattr(valve, "__dict__"))

    def test_no_dict_held_per_side(self) -> None:
        """
        No container is held by the splice or its valves: per-side state is plain
        attributes (the views below are built when read).
        """
        held = [self.splice, self.a.producer, self.b.producer]
        for obj in held:
            for name in type(obj).__slots__:
                value = getattr(obj, name, None)
                self.assertFalse(isinstance(value, (dict, list, set)), f"{type(obj)}.{name}")

    def test_per_side_views(self) -> None:
        """
        C{counts}, C{eof}, C{gone} and C{transports} read each side's state as dicts keyed
        by side, and C{count} reads one side.
        """
        self.splice.data_from(A, b"abc")
        self.splice.data_from(B, b"de")
        self.splice.eof_from(B)
        self.assertEqual(self.splice.counts, {A: 3, B: 2})
        self.assertEqual(self.splice.count(A), 3)
        self.assertEqual(self.splice.count(B), 2)
        self.assertEqual(self.splice.eof, {A: False, B: True})
        self.assertEqual(self.splice.gone, {A: False, B: False})
        self.assertEqual(self.splice.transports, {A: self.a, B: self.b})
        self.splice.lost(A)
        self.assertEqual(self.splice.gone, {A: True, B: False})

    def test_given_done_is_fired(self) -> None:
        """
        A L{Deferred} given to the splice is the one it fires (no second one chained).
        """
        done: Deferred[RelayResult] = Deferred()
        splice = Splice(FakeTransport(), FakeTransport(), clock=self.clock, done=done)
        self.assertIs(splice.done, done)
        splice.start()
        splice.lost(A)
        splice.lost(B)
        self.assertEqual(self.successResultOf(done).ended_by, A)


class EchoLegTests(unittest.TestCase):
    """
    The built-in echo backend: a splice whose two sides are the client transport.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeTransport()
        self.leg = EchoLeg(self.clock, WRITE_TIMEOUT, IDLE_TIMEOUT)
        self.results: list[RelayResult] = []
        self.leg.done.addCallback(self.results.append)
        self.leg.attach(self.client)

    def test_bytes_come_back_in_order_and_are_counted_both_ways(self) -> None:
        for chunk in (b"\x00abc", b"\r\n", b"\xffdef"):
            self.leg.write(chunk)
        self.assertEqual(self.client.value(), b"\x00abc\r\n\xffdef")
        self.leg.close()
        self.assertEqual(self.results[0].bytes_a_to_b, 10)
        self.assertEqual(self.results[0].bytes_b_to_a, 10)

    def test_client_not_reading_pauses_reading_the_client(self) -> None:
        self.client.producer.pauseProducing()
        self.assertFalse(self.client.reading)
        self.client.producer.resumeProducing()
        self.assertTrue(self.client.reading)

    def test_client_not_reading_for_write_timeout_is_aborted(self) -> None:
        self.client.producer.pauseProducing()
        self.clock.advance(WRITE_TIMEOUT)
        self.assertTrue(self.client.aborted)
        self.leg.close()
        self.assertEqual(self.results[0].ended_by, "stalled-a")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_half_close_is_echoed_then_the_client_closed(self) -> None:
        self.leg.write(b"last")
        self.leg.half_close()
        self.assertEqual(self.client.value(), b"last")
        self.assertTrue(self.client.write_closed)
        self.assertTrue(self.client.disconnecting)
        self.assertIsNone(self.client.producer)
        self.leg.close()  # the client connection goes
        self.assertEqual(self.results[0].ended_by, A)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_fires_done_once(self) -> None:
        self.leg.close()
        self.leg.close()
        self.assertEqual(len(self.results), 1)
        self.assertEqual(self.results[0].ended_by, A)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idle(self) -> None:
        self.clock.advance(IDLE_TIMEOUT)
        self.assertTrue(self.client.aborted)
        self.leg.close()
        self.assertEqual(self.results[0].ended_by, "idle")

    def test_splice_fires_the_legs_own_deferred(self) -> None:
        """
        The echo leg hands its own C{done} to its splice: one L{Deferred} per relay, not
        two chained.
        """
        assert self.leg.splice is not None
        self.assertIs(self.leg.splice.done, self.leg.done)

    def test_leg_and_mirror_have_no_instance_dict(self) -> None:
        """
        The echo leg and its mirror transport hold their few attributes in slots.
        """
        assert self.leg.splice is not None
        self.assertFalse(hasattr(self.leg, "__dict__"))
        self.assertFalse(hasattr(self.leg.splice.transports[B], "__dict__"))


class EndpointLegTests(unittest.TestCase):
    """
    A backend leg connected (on a L{MemoryReactorClock}) through L{open_backend}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        service = ServiceConfig(
            "svc",
            "tcp:host=127.0.0.1:port=6379",
            ("*",),
            connect_timeout=5.0,
            idle_timeout=IDLE_TIMEOUT,
        )
        opening = open_backend(self.reactor, service, write_timeout=WRITE_TIMEOUT)
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        self.backend = FakeTransport()
        self.protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.protocol.makeConnection(self.backend)
        self.leg = self.successResultOf(opening)
        self.assertIsInstance(self.leg, EndpointLeg)
        self.results: list[RelayResult] = []
        self.leg.done.addCallback(self.results.append)
        self.client = FakeTransport()

    def test_relays_both_ways_after_attach(self) -> None:
        self.leg.attach(self.client)
        self.leg.write(b"*1\r\n$4\r\nPING\r\n")
        self.protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual(self.backend.value(), b"*1\r\n$4\r\nPING\r\n")
        self.assertEqual(self.client.value(), b"+PONG\r\n")

    def test_bytes_before_attach_kept_with_reading_paused(self) -> None:
        self.protocol.dataReceived(b"banner\r\n")
        self.assertFalse(self.backend.reading)
        self.assertEqual(self.client.value(), b"")
        self.leg.attach(self.client)
        self.protocol.dataReceived(b"after")
        self.assertEqual(self.client.value(), b"banner\r\nafter")
        self.assertTrue(self.backend.reading)

    def test_bytes_before_attach_delivered_before_later_ones_in_order(self) -> None:
        self.protocol.dataReceived(b"1")
        self.protocol.dataReceived(b"2")  # a wrapper may deliver more than one chunk
        self.leg.attach(self.client)
        self.protocol.dataReceived(b"3")
        self.assertEqual(self.client.value(), b"123")
        self.leg.close()
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.results[0].bytes_b_to_a, 3)

    def test_bytes_before_attach_that_fill_the_client_queue_keep_the_backend_paused(
        self,
    ) -> None:
        client = QueueTransport()
        client.write(b"OK OPEN svc\r\n")  # the session's reply, not yet flushed
        self.protocol.dataReceived(b"d" * client.bufferSize)
        self.leg.attach(client)
        self.assertFalse(self.backend.reading)
        client.drain()
        self.assertTrue(self.backend.reading)
        self.assertEqual(bytes(client.sent), b"OK OPEN svc\r\n" + b"d" * client.bufferSize)

    def test_backend_eof_before_attach_passed_on(self) -> None:
        self.protocol.dataReceived(b"bye")
        self.protocol.readConnectionLost()
        self.leg.attach(self.client)
        self.assertEqual(self.client.value(), b"bye")
        self.assertTrue(self.client.write_closed)
        self.assertFalse(self.client.disconnecting)  # the client may still send

    def test_backend_lost_before_attach(self) -> None:
        self.protocol.dataReceived(b"-ERR max clients\r\n")
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.leg.attach(self.client)
        self.assertEqual(self.client.value(), b"-ERR max clients\r\n")
        self.assertTrue(self.client.disconnecting)
        self.leg.close()
        self.assertEqual(self.results[0].ended_by, B)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_backend_eof_after_attach_half_closes_the_client(self) -> None:
        self.leg.attach(self.client)
        self.protocol.readConnectionLost()
        self.assertTrue(self.client.write_closed)

    def test_client_half_close_reaches_the_backend(self) -> None:
        self.leg.attach(self.client)
        self.leg.half_close()
        self.assertTrue(self.backend.write_closed)

    def test_client_gone_closes_the_backend(self) -> None:
        self.leg.attach(self.client)
        self.leg.close()
        self.assertTrue(self.backend.disconnecting)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.results[0].ended_by, A)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_close_before_attach_drops_the_backend(self) -> None:
        self.leg.close()
        self.assertTrue(self.backend.disconnecting)

    def test_backend_tcp_nodelay(self) -> None:
        self.leg.attach(self.client)
        self.assertTrue(self.backend.no_delay)

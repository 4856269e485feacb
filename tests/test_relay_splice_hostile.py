"""
Tests for L{netguard.relay_splice} with peers and neighbours that misbehave: TCP urgent data,
a side closed without the relay being told (its descriptor number reused), a reader that
stops taking bytes before its pipe is full, a close that reports its loss at once, a reset
with a full pipe, pipes refused now and then. Real
loopback sockets, timers on a L{task.Clock}, as in L{tests.test_relay_splice}.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard import relay_flow
from netguard.relay import A, B
from netguard.relay_splice import CHUNK, PipePool
from tests.test_relay_splice import SKIP, WRITE, _Harness, _payload


class KernelSpliceUrgentDataTests(unittest.TestCase):
    """
    TCP urgent data (C{MSG_OOB}): C{splice} stops at the urgent mark; the relay skips the
    urgent byte as the ordinary relay's C{recv} does and moves on, without a busy loop.
    """

    skip = SKIP

    @inlineCallbacks
    def check_urgent(self, side: str) -> Generator[Deferred[Any], Any, None]:
        calls: list[int] = []

        def counting(*args: Any, **kwargs: Any) -> int:
            calls.append(1)
            return os.splice(*args, **kwargs)

        # The direction stays in splice mode whatever the size of a read.
        self.patch(relay_flow, "SMALL", 0)
        harness = _Harness(self, splice=counting, start=False)
        harness.relay._ab.small = harness.relay._ba.small = False
        harness.start()
        sender, receiver = (
            (harness.peer_a, harness.peer_b) if side == A else (harness.peer_b, harness.peer_a)
        )
        sender.outgoing += b"abc"
        yield harness.until(lambda: len(receiver.received) == 3)
        self.assertTrue(harness.relay.spliced)
        sender.sock.send(b"!", socket.MSG_OOB)
        sender.outgoing += b"def"
        yield harness.until(lambda: len(receiver.received) == 6, steps=4000)
        self.assertEqual(bytes(receiver.received), b"abcdef")
        spliced = len(calls)
        yield harness.settle(400)
        self.assertLessEqual(len(calls) - spliced, 2, "the reactor keeps splicing")
        sender.outgoing += b"ghi"
        yield harness.until(lambda: len(receiver.received) == 9)
        self.assertEqual(bytes(receiver.received), b"abcdefghi")
        self.assertEqual(harness.results, [])

    def test_urgent_byte_from_a(self) -> Any:
        """
        A's peer sends C{abc}, an urgent byte, C{def}, C{ghi}: B gets C{abcdefghi}, in
        order (the urgent byte skipped, as L{Splice} skips it), and once everything has
        arrived the reactor makes no more than two splice calls in 400 turns (no busy
        loop at the mark).
        """
        return self.check_urgent(A)

    def test_urgent_byte_from_b(self) -> Any:
        """
        The same from B's peer to A: urgent data from the backend's side is skipped alike.
        """
        return self.check_urgent(B)


class KernelSpliceStaleDescriptorTests(unittest.TestCase):
    """
    A side whose connection is gone without the relay being told: its descriptor number may
    belong to another socket by then, and the relay never writes to it.
    """

    skip = SKIP

    @inlineCallbacks
    def check_reuse(self, small: bool) -> Generator[Deferred[Any], Any, None]:
        harness = _Harness(self, start=False)
        harness.relay._ba.small = small
        harness.start()
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        fd_a = harness.a.fileno()
        victim, victim_peer = socket.socketpair()
        self.addCleanup(victim.close)
        self.addCleanup(victim_peer.close)
        taken: list[int] = []

        def hostile_connection_lost(reason: Failure | None = None) -> None:
            # A's socket is closed by now: an unrelated socket takes its number, and the
            # protocol fails before telling the relay.
            taken.append(os.dup2(victim.fileno(), fd_a))
            raise RuntimeError("hostile: teardown fails before telling the relay")

        harness.proto_a.connectionLost = hostile_connection_lost  # type: ignore[method-assign]
        harness.a.abortConnection()
        yield harness.until(lambda: bool(taken))
        self.addCleanup(os.close, fd_a)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        harness.peer_b.outgoing += b"SECRET-FROM-B" * 100
        yield harness.until(lambda: not harness.peer_b.outgoing)
        yield harness.settle()
        victim_peer.setblocking(False)
        self.assertRaises(BlockingIOError, victim_peer.recv, 4096)
        yield harness.until(lambda: bool(harness.results))
        self.assertEqual(harness.results[0].ended_by, A)
        self.assertIn("relay.unreported_close", [event.get("event") for event in events])

    def test_reused_descriptor_short_reads(self) -> Any:
        """
        A's socket is closed, its protocol fails before telling the relay, and A's
        descriptor number is taken by an unrelated socket: B's next bytes (short reads)
        never reach that socket; the relay ends as if A were lost (C{ended_by="a"}) and
        logs C{relay.unreported_close}.
        """
        return self.check_reuse(small=True)

    def test_reused_descriptor_splice(self) -> Any:
        """
        The same with B's direction splicing through a pipe.
        """
        return self.check_reuse(small=False)


class KernelSpliceStallTests(unittest.TestCase):
    """
    The stalled-reader clock runs whenever bytes wait in a pipe for a target that does not
    take them, full pipe or not.
    """

    skip = SKIP

    @inlineCallbacks
    def partly_full(self) -> Generator[Deferred[Any], Any, _Harness]:
        """
        A relay whose A-to-B pipe holds some bytes (less than a pipe full, reading A not
        paused) that B does not take: a unix socket with the smallest send buffer takes
        one write (at most 64 KiB from a pipe) and then none until its peer reads.
        """
        self.patch(relay_flow, "SMALL", 0)  # the direction stays in splice mode
        harness = _Harness(self, family=socket.AF_UNIX, start=False)
        harness.b.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        harness.relay._ab.small = False
        harness.start()
        harness.peer_b.reading = False
        harness.peer_a.outgoing += _payload(224 << 10, 15)
        yield harness.until(lambda: not harness.peer_a.outgoing)
        yield harness.settle()
        self.assertGreater(harness.relay.in_flight[A], 0)
        self.assertLess(harness.relay.in_flight[A], CHUNK)
        self.assertFalse(harness.relay._ab.paused)
        return harness

    @inlineCallbacks
    def test_partly_full_pipe_stalls(self) -> Generator[Deferred[Any], Any, None]:
        """
        B takes none of the bytes waiting in a partly full pipe: it is a stalled reader
        after C{write_timeout} (C{ended_by="stalled-b"}), not one tick before, and the pipe
        is given back.
        """
        harness = yield self.partly_full()
        harness.clock.advance(WRITE - 0.001)
        self.assertEqual(harness.results, [])
        harness.clock.advance(0.001)
        yield harness.until(lambda: bool(harness.results))
        self.assertEqual(harness.results[0].ended_by, "stalled-b")
        self.assertEqual(harness.pool.in_use, 0)

    @inlineCallbacks
    def test_reader_taking_bytes_is_not_stalled(self) -> Generator[Deferred[Any], Any, None]:
        """
        B takes some of the waiting bytes within each C{write_timeout}: it is not cut off;
        once it takes none for a whole C{write_timeout}, it is.
        """
        harness = yield self.partly_full()
        for _ in range(2):
            harness.clock.advance(WRITE - 1)
            waiting = harness.relay.in_flight[A]
            harness.peer_b.reading = True
            harness.peer_b.pump()
            harness.peer_b.reading = False
            yield harness.until(lambda w=waiting: harness.relay.in_flight[A] < w)
            harness.clock.advance(1)
            self.assertEqual(harness.results, [])
        self.assertGreater(harness.relay.in_flight[A], 0)
        harness.clock.advance(WRITE)
        yield harness.until(lambda: bool(harness.results))
        self.assertEqual(harness.results[0].ended_by, "stalled-b")


class KernelSpliceTimerTests(unittest.TestCase):
    """
    A finished relay leaves no timer behind.
    """

    skip = SKIP

    @inlineCallbacks
    def test_no_grace_timer_after_a_synchronous_finish(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """
        A half-closes (B's writing is closed), then A's connection is lost: closing B, now
        half-closed, reports its loss at once, so the relay finishes inside its own
        wind-down; no grace timer is left in the clock.
        """
        harness = _Harness(self)
        harness.peer_a.outgoing += b"last words"
        harness.peer_a.shut_after_send = True
        yield harness.until(lambda: harness.peer_b.eof)
        harness.a.abortConnection()
        yield harness.until(lambda: bool(harness.results))
        self.assertEqual(harness.results[0].ended_by, A)
        self.assertEqual(harness.clock.getDelayedCalls(), [])


class KernelSpliceResetTests(unittest.TestCase):
    """
    A peer that resets its connection while its pipe is full.
    """

    skip = SKIP

    @inlineCallbacks
    def test_reader_resets_with_full_pipe(self) -> Generator[Deferred[Any], Any, None]:
        """
        B's peer stops reading until A's pipe is full, then resets its connection: the
        relay ends (C{ended_by="b"}), the pipe with its bytes is closed, not pooled, and
        neither socket is watched any more.
        """
        harness = _Harness(self)
        harness.peer_b.reading = False
        harness.peer_a.outgoing += _payload(8 << 20, 17)
        yield harness.until(lambda: harness.relay._ab.paused)
        self.assertGreater(harness.relay.in_flight[A], 0)
        harness.peer_b.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        harness.peer_b.sock.close()
        harness.peer_b.sock = socket.socket()  # closed again by the cleanup
        yield harness.until(lambda: bool(harness.results))
        self.assertEqual(harness.results[0].ended_by, B)
        self.assertEqual((harness.pool.in_use, harness.pool.idle), (0, 0))
        self.assertNotIn(harness.a, reactor.getReaders())
        self.assertNotIn(harness.b, reactor.getWriters())

    @inlineCallbacks
    def test_forced_close_with_full_pipes(self) -> Generator[Deferred[Any], Any, None]:
        """
        Both pipes full (neither peer reads) when the client's connection is aborted, as
        the drain's force and a second stop signal do: the relay ends (C{ended_by="a"}),
        B is cut after the grace period, both pipes are closed, and neither socket is
        watched any more.
        """
        harness = _Harness(self, start=False)
        harness.relay._ab.small = harness.relay._ba.small = False
        harness.start()
        harness.peer_a.reading = harness.peer_b.reading = False
        harness.peer_a.outgoing += _payload(8 << 20, 19)
        harness.peer_b.outgoing += _payload(8 << 20, 20)
        yield harness.until(lambda: harness.relay._ab.paused and harness.relay._ba.paused)
        harness.a.abortConnection()
        yield harness.until(lambda: harness.relay.gone[A])
        self.assertEqual(harness.results, [])
        harness.clock.advance(WRITE)
        yield harness.until(lambda: bool(harness.results))
        self.assertEqual(harness.results[0].ended_by, A)
        self.assertEqual((harness.pool.in_use, harness.pool.idle), (0, 0))
        for transport in (harness.a, harness.b):
            self.assertNotIn(transport, reactor.getReaders())
            self.assertNotIn(transport, reactor.getWriters())
        self.assertEqual(harness.clock.getDelayedCalls(), [])


class KernelSplicePipeRefusedTests(unittest.TestCase):
    """
    A pool that refuses every other pipe (descriptors running out now and then).
    """

    skip = SKIP

    @inlineCallbacks
    def test_order_kept_when_pipes_come_and_go(self) -> Generator[Deferred[Any], Any, None]:
        """
        Every other pipe asked for is refused (C{EMFILE}): the reads without a pipe go
        through user space, the others through the kernel, and 8 MiB arrive unchanged and
        in order.
        """

        class HostileFlakyPool(PipePool):
            """Refuses every other pipe asked for, as a process short of descriptors."""

            __slots__ = ("asked",)

            def take(self) -> tuple[int, int]:
                self.asked = getattr(self, "asked", 0) + 1
                if self.asked % 2:
                    raise OSError(errno.EMFILE, "Too many open files")
                return PipePool.take(self)

        harness = _Harness(self, pool=HostileFlakyPool(), start=False)
        harness.relay._ab.small = False
        harness.start()
        payload = _payload(8 << 20, 18)
        harness.peer_a.outgoing += payload
        yield harness.until(lambda: len(harness.peer_b.received) == len(payload))
        self.assertEqual(bytes(harness.peer_b.received), payload)
        self.assertNotEqual(harness.proto_a.user_space, [])
        self.assertTrue(harness.relay.spliced)

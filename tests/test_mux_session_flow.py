"""
Flow control of L{netguard.mux.session.MuxSession}: receive and send windows, the memory
budget, held bytes, round-robin fairness and the receive-credit invariant, against a
hand-driven peer on a L{StringTransport} (hostile peers named as such); time is a
L{task.Clock}.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from netguard.mux.frames import INITIAL_WINDOW, MAX_UINT32, Flag, Violation
from netguard.mux.limits import MuxLimits
from netguard.mux.stream import MuxStream, SessionLost
from tests.mux_fakes import (
    ACK,
    DATA,
    FIN,
    PING,
    RST,
    SYN,
    WINDOW,
    Harness,
    SessionEndedMixin,
    Source,
    data,
    frame,
    kinds,
)


class ReceiveWindowTests(SessionEndedMixin, unittest.TestCase):
    """
    The receive window: a hostile peer that sends past it, and credit given back.
    """

    def test_data_exactly_the_window(self) -> None:
        """
        A SYN data frame of exactly 256 KiB (the initial window) is accepted and held for a
        protocol that paused reading.
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        harness.accepted[0].pauseProducing()
        harness.feed(data(1, b"a" * INITIAL_WINDOW))
        self.assertEqual(harness.ends, [])
        self.assertEqual(harness.accepted[0].buffered, INITIAL_WINDOW)
        self.assertEqual(harness.accepted[0].recv_window, 0)

    def test_hostile_one_byte_past_the_window(self) -> None:
        """
        A hostile peer's one byte past a used-up window ends the session (window-exceeded,
        go-away protocol error); the stream's protocol sees the session lost.
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        harness.accepted[0].pauseProducing()
        harness.feed(data(1, b"a" * (INITIAL_WINDOW - 1)))
        harness.sent()
        harness.feed(data(1, b"bc"))
        self.assert_ended(harness, Violation.WINDOW_EXCEEDED)
        reason = harness.protocols[1].reason
        assert reason is not None
        reason.trap(SessionLost)

    def test_hostile_oversized_syn_refused_from_header(self) -> None:
        """
        A hostile SYN data frame announcing 256 KiB + 1 ends the session from its header
        alone: no payload byte has arrived, none is waited for or held, and no stream opens
        (the rust-yamux CVE-2026-32314 shape).
        """
        harness = Harness()
        harness.feed(frame(DATA, SYN, 1, INITIAL_WINDOW + 1))
        self.assert_ended(harness, Violation.WINDOW_EXCEEDED)
        self.assertEqual(harness.accepted, [])

    def test_hostile_huge_length_on_unknown_stream(self) -> None:
        """
        A data header with a 4 GiB length for a stream that has ended is refused from its
        header too (the largest window any stream can have bounds it).
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN | RST, 1, 0))
        harness.feed(frame(DATA, 0, 1, MAX_UINT32))
        self.assert_ended(harness, Violation.WINDOW_EXCEEDED)

    def test_credit_given_back_after_half_a_window(self) -> None:
        """
        Delivered data is credited back by one window update once half a window (128 KiB)
        is owed, not before (window growth off: C{max_window} 256 KiB).
        """
        harness = Harness(limits=MuxLimits(keepalive_interval=None, max_window=INITIAL_WINDOW))
        harness.feed(frame(WINDOW, SYN, 1, 0))
        harness.accepted[0].accept()
        harness.sent()
        harness.feed(data(1, b"a" * (INITIAL_WINDOW // 2 - 1)))
        self.assertEqual(kinds(harness.sent()), [])
        harness.feed(data(1, b"b"))
        self.assertEqual(kinds(harness.sent()), [(WINDOW, Flag(0), 1, INITIAL_WINDOW // 2)])
        self.assertEqual(harness.accepted[0].recv_window, INITIAL_WINDOW)

    def test_no_credit_before_accept(self) -> None:
        """
        Credit owed on a stream the application has not accepted is not sent (every frame
        on the peer's stream must follow our ACK); accepting sends the ACK, then the credit.
        """
        harness = Harness()
        harness.feed(data(1, b"a" * 200_000, SYN))
        self.assertEqual(kinds(harness.sent()), [])
        harness.accepted[0].accept()
        self.assertEqual(
            kinds(harness.sent()), [(WINDOW, ACK, 1, 0), (WINDOW, Flag(0), 1, 200_000)]
        )

    def test_paused_reading_withholds_credit(self) -> None:
        """
        While the protocol has paused reading, data is held and no credit goes back; on
        resume the held data is delivered in order and the window is given back.
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        stream = harness.accepted[0]
        stream.accept()
        stream.pauseProducing()
        harness.sent()
        harness.feed(data(1, b"a" * 100_000), data(1, b"b" * 100_000))
        self.assertEqual(kinds(harness.sent()), [])
        self.assertEqual(harness.protocols[1].received, b"")
        stream.resumeProducing()
        self.assertEqual(harness.protocols[1].received, b"a" * 100_000 + b"b" * 100_000)
        self.assertEqual(kinds(harness.sent()), [(WINDOW, Flag(0), 1, 200_000)])

    def test_eof_waits_for_held_data(self) -> None:
        """
        A FIN that arrives while data is held reaches the protocol after that data.
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        stream = harness.accepted[0]
        stream.pauseProducing()
        harness.feed(data(1, b"last", FIN))
        self.assertFalse(harness.protocols[1].eof)
        stream.resumeProducing()
        self.assertEqual(harness.protocols[1].received, b"last")
        self.assertTrue(harness.protocols[1].eof)

    def busy_and_paused(self, budget: int) -> tuple[Harness, MuxStream]:
        """
        A session with a memory budget of C{budget} and two accepted streams from the peer:
        1, reading, and 3, whose reading is paused (returned).
        """
        limits = MuxLimits(
            keepalive_interval=None, memory_budget=budget, max_window=INITIAL_WINDOW
        )
        harness = Harness(limits=limits)
        harness.feed(*(frame(WINDOW, SYN, sid, 0) for sid in (1, 3)))
        busy, paused = harness.accepted
        busy.accept()
        paused.accept()
        paused.pauseProducing()
        harness.sent()
        return harness, paused

    def test_memory_budget_withholds_updates(self) -> None:
        """
        With a budget of 100,000 bytes held: while a paused stream holds exactly the budget,
        another stream's owed credit is withheld; when the paused stream resumes (held bytes
        drain), the withheld update goes out.
        """
        budget = 100_000
        harness, paused = self.busy_and_paused(budget)
        harness.feed(data(3, b"h" * budget))
        self.assertEqual(harness.session.held, budget)
        harness.feed(data(1, b"a" * 200_000))
        self.assertEqual(kinds(harness.sent()), [])
        self.assertEqual(harness.session.credit, 2 * INITIAL_WINDOW - 200_000)
        paused.resumeProducing()
        self.assertEqual(harness.session.held, 0)
        self.assertEqual(kinds(harness.sent()), [(WINDOW, Flag(0), 1, 200_000)])
        self.assertEqual(harness.session.credit, 2 * INITIAL_WINDOW - budget)

    def test_memory_budget_one_below_grants(self) -> None:
        """
        One byte below the budget held, owed credit still goes out (the bound is reached at
        the budget, not before).
        """
        budget = 100_000
        harness, paused = self.busy_and_paused(budget)
        harness.feed(data(3, b"h" * (budget - 1)), data(1, b"a" * 200_000))
        self.assertEqual(kinds(harness.sent()), [(WINDOW, Flag(0), 1, 200_000)])

    def test_idle_streams_do_not_use_the_budget(self) -> None:
        """
        Under the default limits, more idle streams than C{memory_budget / 256 KiB} (65 of
        them, their windows granted and unused) leave a busy stream's transfer going: every
        half window it consumes is given back (its window growing as it keeps reading), for
        sixteen half windows, and it never runs out of window.
        """
        harness = Harness()
        idle = harness.session.limits.memory_budget // INITIAL_WINDOW + 1
        harness.feed(*(frame(WINDOW, SYN, 2 * n + 1, 0) for n in range(idle + 1)))
        for stream in harness.accepted:
            stream.accept()
        harness.sent()
        busy = 2 * idle + 1
        window = INITIAL_WINDOW
        total = 0
        for _ in range(16):
            chunk = b"z" * (INITIAL_WINDOW // 2)
            self.assertGreaterEqual(window, len(chunk))
            harness.feed(data(busy, chunk))
            window -= len(chunk)
            total += len(chunk)
            for header, _ in harness.sent():
                if header.type is WINDOW and header.stream_id == busy:
                    window += header.length
        self.assertEqual(total, 8 * INITIAL_WINDOW)
        self.assertGreaterEqual(window, INITIAL_WINDOW)
        self.assertEqual(harness.session.credit, idle * INITIAL_WINDOW + window)


class WindowGrowthTests(SessionEndedMixin, unittest.TestCase):
    """
    The receive window of a stream that keeps reading grows, bounded per stream
    (C{max_window}) and per session (C{window_budget}).
    """

    def reading(self, harness: Harness, sid: int) -> MuxStream:
        harness.feed(frame(WINDOW, SYN, sid, 0))
        stream = harness.accepted[-1]
        stream.accept()
        harness.sent()
        return stream

    def consume(self, harness: Harness, sid: int, size: int) -> list[int]:
        """
        Feed C{size} bytes on C{sid} in frames of at most 64 KiB.

        @return: the window updates sent for it.
        """
        while size:
            part = min(size, 65536)
            harness.feed(data(sid, b"g" * part))
            size -= part
        return [h.length for h, _ in harness.sent() if h.type is WINDOW and h.stream_id == sid]

    def test_window_doubles_up_to_max_window(self) -> None:
        """
        A stream that keeps reading has its window doubled at each update, from 256 KiB to
        C{max_window} (1 MiB here) exactly, and no further: the first update gives back the
        128 KiB consumed plus 256 KiB, the next 256 KiB plus 512 KiB, then only what was
        consumed.
        """
        limits = MuxLimits(keepalive_interval=None, max_window=1024 * 1024)
        harness = Harness(limits=limits)
        stream = self.reading(harness, 1)
        half = INITIAL_WINDOW // 2
        self.assertEqual(self.consume(harness, 1, half), [half + INITIAL_WINDOW])
        self.assertEqual((stream.window, stream.recv_window), (2 * INITIAL_WINDOW,) * 2)
        self.assertEqual(self.consume(harness, 1, 2 * half), [2 * half + 2 * INITIAL_WINDOW])
        self.assertEqual(stream.window, 4 * INITIAL_WINDOW)
        self.assertEqual(self.consume(harness, 1, 4 * half), [4 * half])
        self.assertEqual((stream.window, stream.recv_window), (limits.max_window,) * 2)
        self.assertEqual(harness.session.credit, limits.max_window)

    def test_hostile_one_byte_past_a_grown_window(self) -> None:
        """
        A grown window is the bound like the initial one: the peer may send exactly 1 MiB
        after the window reached it, and one byte more ends the session.
        """
        harness = Harness(limits=MuxLimits(keepalive_interval=None, max_window=1024 * 1024))
        stream = self.reading(harness, 1)
        self.consume(harness, 1, INITIAL_WINDOW // 2 + INITIAL_WINDOW)
        self.assertEqual(stream.recv_window, 1024 * 1024)
        stream.pauseProducing()
        self.consume(harness, 1, 1024 * 1024)
        self.assertEqual((stream.recv_window, stream.buffered), (0, 1024 * 1024))
        self.assertIsNone(harness.session.ended)
        harness.feed(data(1, b"x"))
        self.assert_ended(harness, Violation.WINDOW_EXCEEDED)

    def test_session_budget_bounds_growth(self) -> None:
        """
        With C{window_budget} 256 KiB, a first stream's growth takes the whole budget; a
        second stream then gets back only what it consumed (its window stays 256 KiB) until
        the first ends and returns its growth.
        """
        limits = MuxLimits(keepalive_interval=None, window_budget=INITIAL_WINDOW)
        harness = Harness(limits=limits)
        first = self.reading(harness, 1)
        second = self.reading(harness, 3)
        half = INITIAL_WINDOW // 2
        self.assertEqual(self.consume(harness, 1, half), [half + INITIAL_WINDOW])
        self.assertEqual(self.consume(harness, 3, half), [half])
        self.assertEqual(second.window, INITIAL_WINDOW)
        self.assertEqual(harness.session._receive.grown, INITIAL_WINDOW)
        first.abortConnection()
        self.assertEqual(harness.session._receive.grown, 0)
        self.assertEqual(self.consume(harness, 3, half), [half + INITIAL_WINDOW])
        self.assertEqual(second.window, 2 * INITIAL_WINDOW)

    def test_a_stream_that_held_data_does_not_grow(self) -> None:
        """
        A stream whose reading was paused gets back, on resuming, only what it consumed:
        its window does not grow (its reader, not the window, is what is slow).
        """
        harness = Harness()
        stream = self.reading(harness, 1)
        stream.pauseProducing()
        self.assertEqual(self.consume(harness, 1, INITIAL_WINDOW), [])
        stream.resumeProducing()
        self.assertEqual(
            [h.length for h, _ in harness.sent() if h.type is WINDOW], [INITIAL_WINDOW]
        )
        self.assertEqual(stream.window, INITIAL_WINDOW)

    def test_growth_off(self) -> None:
        """
        With C{max_window} 256 KiB no window grows; a C{max_window} below 256 KiB or a
        negative C{window_budget} is refused.
        """
        harness = Harness(limits=MuxLimits(keepalive_interval=None, max_window=INITIAL_WINDOW))
        stream = self.reading(harness, 1)
        self.assertEqual(self.consume(harness, 1, INITIAL_WINDOW), [INITIAL_WINDOW // 2] * 2)
        self.assertEqual(stream.window, INITIAL_WINDOW)
        self.assertRaises(ValueError, MuxLimits, max_window=INITIAL_WINDOW - 1)
        self.assertRaises(ValueError, MuxLimits, window_budget=-1)


class SendWindowTests(SessionEndedMixin, unittest.TestCase):
    """
    The send window: never sent past, and a hostile peer that overflows it.
    """

    def test_never_reading_peer_stalls_only_its_stream(self) -> None:
        """
        A hostile peer that never returns credit gets exactly one window (256 KiB) on the
        stream it does not read; the producer behind that stream is paused with at most a
        high-water mark queued, and another stream's bytes still go out.
        """
        harness = Harness(client=True)
        bulk, _ = harness.open()
        chatty, _ = harness.open()
        harness.feed(frame(WINDOW, ACK, 1, 0), frame(WINDOW, ACK, 3, 0))
        source = Source(bulk, 16 * 1024, 10 * 1024 * 1024)
        bulk.registerProducer(source, True)
        source.run()
        chatty.write(b"ping")
        sent = harness.sent()
        on_bulk = sum(len(p) for h, p in sent if h.stream_id == 1)
        self.assertEqual(on_bulk, INITIAL_WINDOW)
        self.assertEqual([p for h, p in sent if h.stream_id == 3 and h.type is DATA], [b"ping"])
        self.assertTrue(source.paused)
        self.assertLessEqual(bulk.queued, harness.session.limits.stream_high_water + 16 * 1024)
        harness.feed(frame(WINDOW, 0, 1, 1000))
        self.assertEqual(sum(len(p) for h, p in harness.sent()), 1000)

    def test_window_update_to_the_bound(self) -> None:
        """
        A window update that brings the send window to exactly 2**32 - 1 is accepted.
        """
        harness = Harness(client=True)
        stream, _ = harness.open()
        harness.feed(frame(WINDOW, ACK, 1, MAX_UINT32 - INITIAL_WINDOW))
        self.assertEqual(stream.send_window, MAX_UINT32)
        self.assertEqual(harness.ends, [])

    def test_hostile_window_update_overflow(self) -> None:
        """
        A hostile window update one past 2**32 - 1 ends the session (window-overflow).
        """
        harness = Harness(client=True)
        harness.open()
        harness.feed(frame(WINDOW, ACK, 1, MAX_UINT32 - INITIAL_WINDOW))
        harness.feed(frame(WINDOW, 0, 1, 1))
        self.assert_ended(harness, Violation.WINDOW_OVERFLOW)


class FairnessTests(unittest.TestCase):
    """
    Round-robin output between busy streams, and a transport that pauses the session.
    """

    def test_two_busy_streams_take_turns(self) -> None:
        """
        Two streams with a window's worth (256 KiB) queued each go out one frame
        (C{max_frame}, 64 KiB) per stream per turn: the frames alternate.
        """
        harness = Harness(client=True)
        first, _ = harness.open()
        second, _ = harness.open()
        harness.feed(frame(WINDOW, ACK, 1, 0), frame(WINDOW, ACK, 3, 0))
        harness.sent()
        harness.session.pauseProducing()
        first.write(b"a" * 4 * 65536)
        second.write(b"b" * 4 * 65536)
        self.assertEqual(harness.transport.value(), b"")
        harness.session.resumeProducing()
        sent = [(h.stream_id, h.length) for h, _ in harness.sent()]
        self.assertEqual(sent, [(1, 65536), (3, 65536)] * 4)

    def test_paused_transport_holds_output(self) -> None:
        """
        While the transport has paused the session nothing is written, and a stream's
        producer is paused at its high-water mark; on resume the queue goes out and the
        producer is resumed.
        """
        harness = Harness(client=True)
        stream, _ = harness.open()
        harness.feed(frame(WINDOW, ACK, 1, 0))
        harness.sent()
        harness.session.pauseProducing()
        source = Source(stream, 8192, 200_000)
        stream.registerProducer(source, True)
        source.run()
        self.assertEqual(harness.transport.value(), b"")
        self.assertTrue(source.paused)
        self.assertEqual(stream.queued, harness.session.limits.stream_high_water)
        harness.session.resumeProducing()
        self.assertEqual(source.left, 0)
        self.assertEqual(sum(len(p) for _, p in harness.sent()), 200_000)

    def test_hostile_peer_not_reading_control_backlog(self) -> None:
        """
        A hostile peer that stops reading (the transport paused us) and keeps sending pings:
        the answers are held up to the backlog bound, and one more ends the session with
        the transport aborted (peer-not-reading).
        """
        limits = MuxLimits(keepalive_interval=None, max_control_backlog=10, ping_burst=100)
        harness = Harness(limits=limits)
        harness.session.pauseProducing()
        harness.feed(*(frame(PING, SYN, 0, n) for n in range(10)))
        self.assertEqual(harness.ends, [])
        self.assertEqual(harness.transport.value(), b"")
        harness.feed(frame(PING, SYN, 0, 10))
        self.assertEqual([e.violation for e in harness.ends], [Violation.PEER_NOT_READING])
        self.assertTrue(harness.transport.disconnected)


class TinyFrameTests(unittest.TestCase):
    """
    Bytes held for a paused stream cost about their size, however small the frames.
    """

    def test_hostile_tiny_frames_held_as_one_buffer(self) -> None:
        """
        A hostile peer fills a paused stream with 10,000 frames of 2 bytes: the 20,000
        bytes held are kept in one buffer of about that size, not one object per frame
        (which cost about 20 times the payload).
        """
        import sys

        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        stream = harness.accepted[0]
        stream.accept()
        stream.pauseProducing()
        harness.feed(data(1, b"yy") * 10_000)
        self.assertEqual(stream.buffered, 20_000)
        buffer: Any = stream.buffer
        size = sys.getsizeof(buffer)
        if not isinstance(buffer, bytearray):
            size += sum(sys.getsizeof(part) for part in buffer)
        self.assertLessEqual(size, 20_000 * 9 // 8 + 1024)
        stream.resumeProducing()
        self.assertEqual(harness.protocols[1].received, b"yy" * 10_000)
        self.assertEqual(stream.buffered, 0)


class LesserBoundTests(unittest.TestCase):
    """
    Framing large writes, and credit for streams whose reading is closed.
    """

    def test_large_write_framed_from_an_offset(self) -> None:
        """
        A 1 MiB write goes out whole and in order, each frame cut at an offset into the
        one object written (never re-sliced into a new head per frame).
        """
        harness = Harness(client=True)
        stream, _ = harness.open()
        harness.feed(frame(WINDOW, ACK, 1, 0))
        payload = bytes(range(256)) * 4096
        stream.write(payload)
        assert stream.queue is not None
        self.assertTrue(stream.queue[0] is payload, "the write was re-sliced")
        self.assertEqual(stream.queue_offset, INITIAL_WINDOW)
        harness.feed(frame(WINDOW, 0, 1, len(payload) - INITIAL_WINDOW))
        sent = b"".join(p for h, p in harness.sent() if h.type is DATA)
        self.assertTrue(sent == payload, "framed bytes differ")
        self.assertEqual((stream.queue, stream.queued, stream.queue_offset), (None, 0, 0))

    def test_read_closed_stream_gets_no_credit(self) -> None:
        """
        After L{MuxStream.loseConnection} (our reading closed, data dropped), the peer's
        data earns no window update, whatever it sends within its window.
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        stream = harness.accepted[0]
        stream.accept()
        stream.loseConnection()
        harness.sent()
        harness.feed(data(1, b"d" * 200_000))
        self.assertEqual(kinds(harness.sent()), [])
        self.assertEqual(stream.recv_window, INITIAL_WINDOW - 200_000)


class CreditPropertyTests(unittest.TestCase):
    """
    The receive-credit accounting, under arbitrary interleavings of peer frames and
    application calls.
    """

    @settings(max_examples=300, deadline=None)
    @given(
        steps=st.lists(
            st.tuples(
                st.integers(0, 99),
                st.sampled_from([1, 3, 5, 7]),
                st.integers(1, 150_000),
                st.integers(0, 19),
            ),
            max_size=60,
        )
    )
    def test_credit_is_the_sum_of_streams(self, steps: list[tuple[int, int, int, int]]) -> None:
        """
        After every step, the session's credit equals the sum of its live streams' credit,
        the bytes it holds the sum of theirs, every stream's credit stays within its window,
        every window within 256 KiB..C{max_window}, and the windows' growth is their sum
        above 256 KiB, within C{window_budget}.
        """
        methods = [
            "accept",
            "pauseProducing",
            "resumeProducing",
            "loseConnection",
            "abortConnection",
            "release",
            "loseWriteConnection",
            "write",
        ]
        limits = MuxLimits(
            keepalive_interval=None,
            memory_budget=INITIAL_WINDOW,
            max_window=4 * INITIAL_WINDOW,
            window_budget=5 * INITIAL_WINDOW,
            empty_frame_burst=10**6,
            ping_burst=10**6,
        )
        harness = Harness(limits=limits)
        for op, sid, size, pick in steps:
            found = harness.session.stream(sid)
            if op < 15:
                harness.feed(data(sid, b"o" * min(size, 5000), SYN | (FIN if pick < 2 else 0)))
            elif op < 50:
                room = found.recv_window if found is not None and not found.reset else 0
                if room:
                    harness.feed(data(sid, b"d" * min(room, size), FIN if pick == 0 else 0))
            elif op < 55:
                harness.feed(frame(WINDOW, RST, sid, 0))
            elif found is not None:
                method = methods[pick % len(methods)]
                if method == "write":
                    found.write(b"w" * min(size, 70_000))
                else:
                    getattr(found, method)()
            harness.sent()
            if harness.session.ended is not None:
                break
            live = [s for s in harness.session._streams.values() if not s.lost]
            self.assertEqual(harness.session.credit, sum(s.outstanding for s in live))
            self.assertEqual(harness.session.held, sum(s.buffered for s in live))
            grown = harness.session._receive.grown
            self.assertEqual(grown, sum(s.window - INITIAL_WINDOW for s in live))
            self.assertLessEqual(grown, limits.window_budget)
            for stream in live:
                self.assertTrue(INITIAL_WINDOW <= stream.window <= limits.max_window)
                self.assertTrue(0 <= stream.recv_window <= stream.window)
                self.assertTrue(0 <= stream.outstanding <= stream.window)


def grown_stream(harness: Harness, sid: int, target: int) -> MuxStream:
    """
    Open peer stream C{sid}, read it until its window reaches C{target}.

    @return: the stream, its window (and the peer's credit) at C{target} or just past it.
    """
    harness.feed(frame(WINDOW, SYN, sid, 0))
    stream = harness.accepted[-1]
    stream.accept()
    while stream.window < target:
        harness.feed(data(sid, b"g" * min(stream.recv_window, 65536)))
    harness.sent()
    return stream


def send_in_frames(harness: Harness, sid: int, size: int, frame_size: int = 65536) -> None:
    """
    Feed C{size} bytes on C{sid} in frames of at most C{frame_size}.
    """
    while size and not harness.ends:
        part = min(size, frame_size)
        harness.feed(data(sid, b"y" * part))
        size -= part


class ResetInFlightTests(unittest.TestCase):
    """
    Data the peer sent within a grown window before our RST reached it is its right: it
    is dropped, without ending the session for its size or counting it as a flood.
    """

    def test_in_flight_frame_above_initial_window_after_our_reset(self) -> None:
        """
        We reset a stream whose window grew to 1 MiB; the peer (as hashicorp/yamux does,
        one frame per write up to the window) had sent a 512 KiB frame, then the other
        512 KiB: both are dropped and the session goes on.
        """
        harness = Harness(limits=MuxLimits(keepalive_interval=None))
        stream = grown_stream(harness, 1, 1024 * 1024)
        self.assertEqual(stream.recv_window, 1024 * 1024)
        stream.abortConnection()
        harness.feed(data(1, b"x" * (512 * 1024)), data(1, b"x" * (512 * 1024)))
        self.assertEqual(harness.ends, [])
        self.assertEqual(harness.session.input_held, 0)

    def test_in_flight_frame_cut_across_reads_after_our_reset(self) -> None:
        """
        The 512 KiB frame's first part is read before we reset the stream, the rest after
        (the header is checked again against the ended stream): dropped, session goes on.
        """
        harness = Harness(limits=MuxLimits(keepalive_interval=None))
        stream = grown_stream(harness, 1, 1024 * 1024)
        wire = data(1, b"x" * (512 * 1024))
        harness.feed(wire[:100000])
        stream.abortConnection()
        harness.feed(wire[100000:])
        self.assertEqual(harness.ends, [])
        self.assertEqual(harness.session.input_held, 0)

    def test_four_grown_streams_reset_with_windows_in_flight(self) -> None:
        """
        Four streams grown to 4 MiB are reset by us while their whole windows are in flight
        in 64 KiB frames (16 MiB dropped, far past the empty-frame burst): nothing ends.
        """
        harness = Harness(limits=MuxLimits(keepalive_interval=None))
        streams = [grown_stream(harness, sid, 4 * 1024 * 1024) for sid in (1, 3, 5, 7)]
        in_flight = {stream.stream_id: stream.recv_window for stream in streams}
        self.assertEqual(set(in_flight.values()), {4 * 1024 * 1024})
        for stream in streams:
            stream.abortConnection()
        for sid, size in in_flight.items():
            send_in_frames(harness, sid, size)
        self.assertEqual(harness.ends, [])

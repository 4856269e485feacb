"""
Hostile peers of L{netguard.mux.session.MuxSession}: opening floods and the stream cap,
malformed frames and frames for unknown or closed streams, and floods of frames that change
nothing; each ends the session with a named violation or is dropped where it is a normal
race.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from netguard.mux import frames
from netguard.mux.frames import HEADER_SIZE as HEADER
from netguard.mux.frames import INITIAL_WINDOW, FrameType, Violation
from netguard.mux.limits import MuxLimits
from netguard.mux.outcome import OpenRefused
from netguard.mux.stream import SessionLost, StreamReset
from tests.mux_fakes import (
    ACK,
    DATA,
    FIN,
    GO_AWAY,
    PING,
    RST,
    SYN,
    WINDOW,
    Harness,
    SessionEndedMixin,
    data,
    frame,
    kinds,
)


class OpeningFloodTests(SessionEndedMixin, unittest.TestCase):
    """
    A hostile peer that opens streams too fast, too many, or resets them at once.
    """

    def test_stream_cap_bound_and_one_past(self) -> None:
        """
        With a cap of 4, four openings are accepted and the fifth is reset (counted as
        refused); the session goes on, and once a stream ends a new one is accepted.
        """
        harness = Harness(limits=MuxLimits(keepalive_interval=None, max_streams=4))
        harness.feed(*(frame(WINDOW, SYN, sid, 0) for sid in (1, 3, 5, 7)))
        self.assertEqual(harness.session.open_streams, 4)
        harness.sent()
        harness.feed(frame(WINDOW, SYN, 9, 0))
        self.assertEqual(kinds(harness.sent()), [(WINDOW, RST, 9, 0)])
        self.assertEqual(harness.session.streams_refused, 1)
        self.assertEqual(len(harness.accepted), 4)
        harness.accepted[0].abortConnection()
        harness.feed(frame(WINDOW, SYN, 11, 0))
        self.assertEqual(len(harness.accepted), 5)
        self.assertEqual(harness.ends, [])

    def test_our_openings_capped(self) -> None:
        """
        This end cannot open past the cap either: L{OpenRefused} with C{stream-limit}.
        """
        harness = Harness(client=True, limits=MuxLimits(keepalive_interval=None, max_streams=1))
        harness.open()
        error = self.assertRaises(OpenRefused, harness.open)
        self.assertEqual(error.reason, "stream-limit")

    def test_open_rate_bound_and_one_past(self) -> None:
        """
        With a burst of 5 openings at 1 per second, five openings at once pass, a sixth one
        second later passes (refilled), and a seventh at the same instant ends the session
        (open-rate).
        """
        limits = MuxLimits(keepalive_interval=None, open_burst=5, open_rate=1.0)
        harness = Harness(limits=limits)
        harness.feed(*(frame(WINDOW, SYN, sid, 0) for sid in (1, 3, 5, 7, 9)))
        harness.clock.advance(1.0)
        harness.feed(frame(WINDOW, SYN, 11, 0))
        self.assertEqual((len(harness.accepted), harness.ends), (6, []))
        harness.sent()
        harness.feed(frame(WINDOW, SYN, 13, 0))
        self.assert_ended(harness, Violation.OPEN_RATE)

    def test_rapid_reset_streams_count_until_released(self) -> None:
        """
        A hostile peer that opens and resets at once: each reset stream still counts against
        the cap (its protocol is told, but the stream is held) until the application releases
        it; a SYN past the cap meanwhile is refused.
        """
        harness = Harness(limits=MuxLimits(keepalive_interval=None, max_streams=2))
        harness.feed(frame(WINDOW, SYN, 1, 0), frame(WINDOW, RST, 1, 0))
        harness.feed(frame(WINDOW, SYN, 3, 0), frame(WINDOW, RST, 3, 0))
        self.assertEqual(harness.session.open_streams, 2)
        self.assertEqual(harness.session.early_resets, 2)
        reason = harness.protocols[1].reason
        assert reason is not None
        reason.trap(StreamReset)
        harness.sent()
        harness.feed(frame(WINDOW, SYN, 5, 0))
        self.assertEqual(kinds(harness.sent()), [(WINDOW, RST, 5, 0)])
        harness.accepted[0].release()
        harness.accepted[1].abortConnection()
        self.assertEqual(harness.session.open_streams, 0)
        self.assertEqual(kinds(harness.sent()), [])
        harness.feed(frame(WINDOW, SYN, 7, 0))
        self.assertEqual(harness.session.open_streams, 1)

    def test_rapid_reset_rate_bound_and_one_past(self) -> None:
        """
        With a burst of 3 early resets, three pass and the fourth ends the session
        (rapid-reset).
        """
        limits = MuxLimits(keepalive_interval=None, early_reset_burst=3, early_reset_rate=0.1)
        harness = Harness(limits=limits)
        for sid in (1, 3, 5):
            harness.feed(frame(WINDOW, SYN, sid, 0), frame(WINDOW, RST, sid, 0))
            harness.accepted[-1].release()
        self.assertEqual(harness.ends, [])
        harness.sent()
        harness.feed(frame(WINDOW, SYN, 7, 0), frame(WINDOW, RST, 7, 0))
        self.assert_ended(harness, Violation.RAPID_RESET)

    def test_reset_after_accept_is_not_early(self) -> None:
        """
        A reset of a stream the application accepted is an ordinary end: not counted as
        early, and the stream stops counting at once.
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        harness.accepted[0].write(b"OK\r\n")
        harness.feed(frame(WINDOW, RST, 1, 0))
        self.assertEqual((harness.session.early_resets, harness.session.open_streams), (0, 0))

    def test_refused_by_application(self) -> None:
        """
        A stream the accept callback refuses (returns None) is reset and does not count.
        """
        harness = Harness()
        harness.refuse = True
        harness.feed(data(1, b"OPEN x\r\n", SYN))
        self.assertEqual(kinds(harness.sent()), [(WINDOW, RST, 1, 0)])
        self.assertEqual(harness.session.open_streams, 0)


class MalformedFrameTests(SessionEndedMixin, unittest.TestCase):
    """
    A hostile peer's malformed frames and frames for streams that do not exist: each ends
    the session with a protocol error and a named reason, or is dropped where it is a
    normal race.
    """

    def test_hostile_bad_version(self) -> None:
        """
        Version 1 ends the session (bad-version); an open stream sees the session lost.
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        harness.sent()
        harness.feed(b"\x01" + frame(PING, SYN, 0, 0)[1:])
        self.assert_ended(harness, Violation.BAD_VERSION)
        reason = harness.protocols[1].reason
        assert reason is not None
        reason.trap(SessionLost)

    def test_hostile_unknown_type(self) -> None:
        """
        Type 4 ends the session (unknown-type).
        """
        harness = Harness()
        harness.feed(b"\x00\x04" + frame(PING, SYN, 0, 0)[2:])
        self.assert_ended(harness, Violation.UNKNOWN_TYPE)

    def test_hostile_syn_of_our_parity(self) -> None:
        """
        A client's SYN for an even (server) id ends the session (bad-stream-id).
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 2, 0))
        self.assert_ended(harness, Violation.BAD_STREAM_ID)

    def test_hostile_duplicate_syn(self) -> None:
        """
        A SYN for a stream still open ends the session (duplicate-syn).
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        harness.sent()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        self.assert_ended(harness, Violation.DUPLICATE_SYN)

    def test_hostile_frame_for_never_opened_peer_stream(self) -> None:
        """
        Data for a peer stream id above any the peer opened ends the session
        (unknown-stream).
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        harness.sent()
        harness.feed(data(3, b"x"))
        self.assert_ended(harness, Violation.UNKNOWN_STREAM)

    def test_hostile_frame_for_never_opened_own_stream(self) -> None:
        """
        A window update for one of our ids we never opened ends the session.
        """
        harness = Harness()
        harness.feed(frame(WINDOW, 0, 2, 10))
        self.assert_ended(harness, Violation.UNKNOWN_STREAM)

    def test_frame_for_closed_stream_dropped(self) -> None:
        """
        Data and a window update for a stream that has ended (a normal race) are dropped and
        the session goes on.
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        harness.accepted[0].abortConnection()
        harness.sent()
        harness.feed(data(1, b"in flight"), frame(WINDOW, 0, 1, 100))
        self.assertEqual((harness.ends, kinds(harness.sent())), ([], []))

    def test_hostile_data_after_fin(self) -> None:
        """
        Data after the peer's own FIN ends the session (data-after-fin).
        """
        harness = Harness()
        harness.feed(data(1, b"a", SYN | FIN))
        harness.sent()
        harness.feed(data(1, b"b"))
        self.assert_ended(harness, Violation.DATA_AFTER_FIN)

    def test_hostile_data_before_ack(self) -> None:
        """
        Data on a stream we opened, before the peer's ACK, ends the session
        (frame-before-ack).
        """
        harness = Harness(client=True)
        harness.open()
        harness.sent()
        harness.feed(data(1, b"early"))
        self.assert_ended(harness, Violation.FRAME_BEFORE_ACK)

    def test_hostile_empty_frame_flood(self) -> None:
        """
        Frames that carry nothing pass up to the burst; one more ends the session
        (empty-frame-flood).
        """
        limits = MuxLimits(keepalive_interval=None, empty_frame_burst=3, empty_frame_rate=0.1)
        harness = Harness(limits=limits)
        harness.feed(frame(WINDOW, SYN, 1, 0))
        harness.feed(*(frame(DATA, 0, 1, 0) for _ in range(3)))
        self.assertEqual(harness.ends, [])
        harness.sent()
        harness.feed(frame(WINDOW, 0, 1, 0))
        self.assert_ended(harness, Violation.EMPTY_FRAME_FLOOD)

    def test_hostile_repeated_ack_flood(self) -> None:
        """
        ACKs repeated on a stream already acknowledged change nothing and count as empty
        frames: past the burst they end the session.
        """
        limits = MuxLimits(keepalive_interval=None, empty_frame_burst=2, empty_frame_rate=0.1)
        harness = Harness(client=True, limits=limits)
        harness.open()
        harness.feed(frame(WINDOW, ACK, 1, 0))
        harness.feed(frame(WINDOW, ACK, 1, 0), frame(WINDOW, ACK, 1, 0))
        self.assertEqual(harness.ends, [])
        harness.sent()
        harness.feed(frame(WINDOW, ACK, 1, 0))
        self.assert_ended(harness, Violation.EMPTY_FRAME_FLOOD)

    @settings(max_examples=300, deadline=None)
    @given(
        junk=st.lists(
            st.one_of(
                st.binary(max_size=40),
                st.builds(
                    frames.encode,
                    st.sampled_from(list(FrameType)),
                    st.sampled_from([0, 1, 2, 4, 8, 5, 6, 12]),
                    st.integers(0, 9),
                    st.integers(0, 70000),
                ),
            ),
            max_size=30,
        )
    )
    def test_hostile_arbitrary_input(self, junk: list[bytes]) -> None:
        """
        Arbitrary bytes and headers from a hostile peer never raise out of the session: it
        goes on or ends once with a named violation, and the bytes it holds stay within one
        frame plus the input.
        """
        harness = Harness()
        for chunk in junk:
            harness.feed(chunk)
        self.assertLessEqual(len(harness.ends), 1)
        for end in harness.ends:
            self.assertIsInstance(end.violation, Violation)
        self.assertLessEqual(harness.session.input_held, 12 + INITIAL_WINDOW + 40)

    def test_frames_split_across_reads(self) -> None:
        """
        Frames that arrive one byte per read are handled as if whole.
        """
        harness = Harness()
        wire = data(1, b"OPEN echo\r\n", SYN) + data(1, b"more", FIN)
        for index in range(len(wire)):
            harness.feed(wire[index : index + 1])
        self.assertEqual(harness.protocols[1].received, b"OPEN echo\r\nmore")
        self.assertTrue(harness.protocols[1].eof)

    @settings(max_examples=200, deadline=None)
    @given(cuts=st.lists(st.integers(0, 140_000), max_size=12))
    def test_frames_cut_anywhere(self, cuts: list[int]) -> None:
        """
        Frames of two streams, payloads from 0 to 64 KiB and a ping among them, cut into
        reads at arbitrary points (inside headers, inside payloads, on frame boundaries), are
        handled as if whole: the same bytes reach each stream, the ping is answered, and
        nothing is left in the input buffer.
        """
        harness = Harness()
        big = bytes(range(256)) * 256
        wire = (
            data(1, b"OPEN a\r\n", SYN)
            + data(3, b"", SYN)
            + data(1, big)
            + frame(FrameType.PING, SYN, 0, 7)
            + data(3, big[:1000], FIN)
            + data(1, big[5:70], FIN)
        )
        points = sorted({0, len(wire), *(cut % (len(wire) + 1) for cut in cuts)})
        for start, stop in zip(points[:-1], points[1:], strict=True):
            harness.feed(wire[start:stop])
        self.assertEqual(harness.protocols[1].received, b"OPEN a\r\n" + big + big[5:70])
        self.assertEqual(harness.protocols[3].received, big[:1000])
        self.assertTrue(harness.protocols[1].eof and harness.protocols[3].eof)
        self.assertIn((FrameType.PING, 7), [(h.type, h.length) for h, _ in harness.sent()])
        self.assertEqual((harness.ends, harness.session.input_held), ([], 0))

    def test_hostile_oversized_frame_with_its_header_split(self) -> None:
        """
        A data frame one byte longer than the window, its header cut across two reads,
        ends the session when the header is whole, before any payload is held.
        """
        harness = Harness()
        header = frame(FrameType.DATA, SYN, 1, INITIAL_WINDOW + 1)
        harness.feed(header[:5])
        self.assertEqual(harness.ends, [])
        harness.feed(header[5:] + b"x" * 1000)
        self.assertEqual([end.violation for end in harness.ends], [Violation.WINDOW_EXCEEDED])
        self.assertEqual(harness.session.input_held, 0)

    def test_nothing_after_the_end(self) -> None:
        """
        Bytes after the session ended are ignored, and the end is reported once.
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 2, 0))
        harness.feed(frame(WINDOW, SYN, 1, 0), b"\xff" * 30)
        self.assertEqual(len(harness.ends), 1)
        self.assertEqual(harness.accepted, [])


class NoEffectFloodTests(unittest.TestCase):
    """
    Frames that change nothing (repeated go-away, RST or data for a stream that has ended)
    take a token from the empty-frame bucket; a late window update does not.
    """

    limits = MuxLimits(keepalive_interval=None, empty_frame_burst=10, empty_frame_rate=1.0)

    def reset_stream(self) -> Harness:
        """
        A session whose peer stream 1 was reset by us, the credit the peer held on it then
        (its window less the byte sent) used up, so what follows is past any right.
        """
        harness = Harness(limits=self.limits)
        harness.feed(data(1, b"x", SYN))
        harness.accepted[0].abortConnection()
        harness.feed(data(1, b"c" * (INITIAL_WINDOW - 1)))
        self.assertEqual(harness.ends, [])
        harness.sent()
        return harness

    def test_hostile_go_away_flood_bound_and_one_past(self) -> None:
        """
        A hostile peer repeats its normal go-away: the first changes state, the next ten
        (the burst) are tolerated, one more ends the session (empty-frame-flood).
        """
        harness = Harness(limits=self.limits)
        harness.feed(frame(GO_AWAY, 0, 0, 0) * 11)
        self.assertEqual(harness.ends, [])
        harness.feed(frame(GO_AWAY, 0, 0, 0))
        self.assertEqual([e.violation for e in harness.ends], [Violation.EMPTY_FRAME_FLOOD])

    def test_hostile_reset_flood_on_ended_stream(self) -> None:
        """
        RSTs for a stream that has ended: ten are tolerated, the eleventh ends the session.
        """
        harness = self.reset_stream()
        harness.feed(frame(WINDOW, RST, 1, 0) * 5, frame(DATA, RST, 1, 0) * 5)
        self.assertEqual(harness.ends, [])
        harness.feed(frame(WINDOW, RST, 1, 0))
        self.assertEqual([e.violation for e in harness.ends], [Violation.EMPTY_FRAME_FLOOD])

    def test_hostile_dropped_data_charged_by_size(self) -> None:
        """
        Dropped data takes a token per frame plus one per whole C{max_frame} (16 KiB): a
        frame of 16,383 bytes takes one, a frame of 9 x 16 KiB - 1 nine, the burst of ten
        exactly; one byte more takes an eleventh and ends the session.
        """
        harness = self.reset_stream()
        harness.feed(data(1, b"q" * 16383), data(1, b"q" * (9 * 16384 - 1)))
        self.assertEqual(harness.ends, [])
        harness = self.reset_stream()
        harness.feed(data(1, b"q" * 16383), data(1, b"q" * 9 * 16384))
        self.assertEqual([e.violation for e in harness.ends], [Violation.EMPTY_FRAME_FLOOD])

    def test_hostile_data_flood_on_reset_stream(self) -> None:
        """
        Data frames for a stream we reset (dropped): ten are tolerated as in-flight races,
        the eleventh ends the session.
        """
        harness = self.reset_stream()
        harness.feed(data(1, b"q" * 1000) * 10)
        self.assertEqual(harness.ends, [])
        harness.feed(data(1, b"q"))
        self.assertEqual([e.violation for e in harness.ends], [Violation.EMPTY_FRAME_FLOOD])

    def test_late_window_updates_after_close_not_counted(self) -> None:
        """
        Window updates for a stream closed cleanly (the peer read our last data after both
        FINs) are a normal race: fifty of them, past the burst, end nothing.
        """
        harness = Harness(limits=self.limits)
        harness.feed(data(1, b"x", SYN | FIN))
        harness.accepted[0].write(b"answer")
        harness.accepted[0].loseWriteConnection()
        self.assertEqual(harness.session.open_streams, 0)
        harness.feed(frame(WINDOW, 0, 1, 6) * 50)
        self.assertEqual(harness.ends, [])


class DeadCreditTests(SessionEndedMixin, unittest.TestCase):
    """
    After we reset a stream, the peer may send what its credit allowed then, and no more;
    the streams remembered are bounded.
    """

    def reset_grown(self, harness: Harness, sid: int) -> None:
        """
        Grow peer stream C{sid}'s window to 1 MiB (the peer's credit), then reset it.
        """
        harness.feed(frame(WINDOW, SYN, sid, 0))
        stream = harness.accepted[-1]
        stream.accept()
        while stream.window < 1024 * 1024:
            harness.feed(data(sid, b"g" * min(stream.recv_window, 65536)))
        self.assertEqual(stream.recv_window, 1024 * 1024)
        stream.abortConnection()
        harness.sent()

    def test_hostile_one_frame_one_past_the_credit(self) -> None:
        """
        A hostile peer sends one frame of 1 MiB + 1 after our reset of a stream it held
        1 MiB of credit on: the header alone ends the session (window-exceeded).
        """
        harness = Harness(limits=MuxLimits(keepalive_interval=None))
        self.reset_grown(harness, 1)
        harness.feed(data(1, b"x" * (1024 * 1024 + 1))[:HEADER])
        self.assert_ended(harness, Violation.WINDOW_EXCEEDED)

    def test_hostile_big_frame_once_the_credit_is_spent(self) -> None:
        """
        The peer spends its 1 MiB exactly; the credit is then gone, and a frame above
        256 KiB on that stream ends the session (window-exceeded).
        """
        harness = Harness(limits=MuxLimits(keepalive_interval=None))
        self.reset_grown(harness, 1)
        harness.feed(data(1, b"x" * (768 * 1024)), data(1, b"x" * (256 * 1024)))
        self.assertEqual(harness.ends, [])
        harness.feed(data(1, b"x" * (INITIAL_WINDOW + 1))[:HEADER])
        self.assert_ended(harness, Violation.WINDOW_EXCEEDED)

    def test_hostile_data_past_the_credit_counts_as_flood(self) -> None:
        """
        Within its 1 MiB the peer's dropped data takes no token; the bytes past it do:
        with a burst of ten, 1 MiB + 10 x 16 KiB - 1 (a frame across the edge, ten
        tokens for the bytes past it) is tolerated, one frame more ends the session
        (empty-frame-flood).
        """
        limits = MuxLimits(keepalive_interval=None, empty_frame_burst=10, empty_frame_rate=1.0)
        harness = Harness(limits=limits)
        self.reset_grown(harness, 1)
        harness.feed(data(1, b"x" * (1024 * 1024 - 100)))
        harness.feed(data(1, b"x" * (100 + 10 * 16384 - 1)))
        self.assertEqual(harness.ends, [])
        harness.feed(data(1, b"x"))
        self.assertEqual([e.violation for e in harness.ends], [Violation.EMPTY_FRAME_FLOOD])

    def test_peer_reset_forgets_the_credit(self) -> None:
        """
        When the peer resets the stream itself it will send nothing more: its credit is
        forgotten, and a frame above 256 KiB then ends the session.
        """
        harness = Harness(limits=MuxLimits(keepalive_interval=None))
        harness.feed(frame(WINDOW, SYN, 1, 0))
        stream = harness.accepted[-1]
        stream.accept()
        while stream.window < 1024 * 1024:
            harness.feed(data(1, b"g" * min(stream.recv_window, 65536)))
        harness.feed(frame(WINDOW, RST, 1, 0))
        self.assertEqual(len(harness.session._dead), 0)
        harness.feed(data(1, b"x" * (INITIAL_WINDOW + 1))[:HEADER])
        self.assert_ended(harness, Violation.WINDOW_EXCEEDED)

    def test_credits_remembered_bounded_by_max_streams(self) -> None:
        """
        A hostile peer has us reset stream after stream (100, with C{max_streams} 4): at
        most four credits are remembered, the newest; the oldest stream's is forgotten, so
        a frame above 256 KiB on it ends the session.
        """
        limits = MuxLimits(keepalive_interval=None, max_streams=4)
        harness = Harness(limits=limits)
        for sid in range(1, 201, 2):
            harness.feed(frame(WINDOW, SYN, sid, 0))
            harness.accepted[-1].abortConnection()
            self.assertLessEqual(len(harness.session._dead), 4)
        harness.sent()
        self.assertEqual(harness.ends, [])
        dead = harness.session._dead
        self.assertEqual([dead.allowed(sid) for sid in (193, 195, 197, 199)], [INITIAL_WINDOW] * 4)
        self.assertEqual(dead.allowed(1), 0)
        harness.feed(data(1, b"x" * INITIAL_WINDOW))
        self.assertEqual(harness.ends, [])

"""
How a L{netguard.mux.session.MuxSession} and its streams end, on a L{task.Clock}: pings and
keepalive, go-away, the idle, open and close deadlines, the drain that writes the last
stream's data, and the linger abort of a connection that does not close.
"""

from __future__ import annotations

from twisted.trial import unittest

from netguard.mux.frames import INITIAL_WINDOW, Flag, GoAwayCode, Violation
from netguard.mux.limits import MuxLimits
from netguard.mux.outcome import OpenRefused
from netguard.mux.stream import SessionLost, StreamState, StreamTimeout
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


class PingTests(SessionEndedMixin, unittest.TestCase):
    """
    Pings answered, a flood of them, and our keepalive.
    """

    def test_ping_answered(self) -> None:
        """
        A ping is answered with an ACK carrying the same opaque value.
        """
        harness = Harness()
        harness.feed(frame(PING, SYN, 0, 0xABCDEF))
        self.assertEqual(kinds(harness.sent()), [(PING, ACK, 0, 0xABCDEF)])

    def test_hostile_ping_flood_bound_and_one_past(self) -> None:
        """
        With a burst of 3 pings, three are answered, a fourth at the same instant ends the
        session (ping-flood); after the refill time one more would pass.
        """
        limits = MuxLimits(keepalive_interval=None, ping_burst=3, ping_rate=1.0)
        harness = Harness(limits=limits)
        harness.feed(*(frame(PING, SYN, 0, n) for n in range(3)))
        harness.clock.advance(1.0)
        harness.feed(frame(PING, SYN, 0, 3))
        self.assertEqual(len(harness.sent()), 4)
        harness.feed(frame(PING, SYN, 0, 4))
        self.assert_ended(harness, Violation.PING_FLOOD)

    def test_keepalive_answered(self) -> None:
        """
        Every keepalive interval a ping goes out; answered in time, the session goes on.
        """
        limits = MuxLimits(keepalive_interval=30.0, keepalive_timeout=10.0)
        harness = Harness(limits=limits)
        harness.clock.advance(30.0)
        [(header, _)] = harness.sent()
        self.assertEqual((header.type, header.flags), (PING, SYN))
        harness.clock.advance(9.0)
        harness.feed(frame(PING, ACK, 0, header.length))
        harness.clock.advance(21.0)
        self.assertEqual(kinds(harness.sent())[0][:2], (PING, SYN))
        self.assertEqual(harness.ends, [])

    def test_keepalive_timeout(self) -> None:
        """
        A ping not answered within the timeout ends the session (keepalive-timeout, recorded
        as internal error) and aborts the transport at once, with nothing more written (a
        peer that does not answer may not read either); an answer with another opaque value
        does not count.
        """
        limits = MuxLimits(keepalive_interval=30.0, keepalive_timeout=10.0)
        harness = Harness(limits=limits)
        harness.clock.advance(30.0)
        [(header, _)] = harness.sent()
        harness.feed(frame(PING, ACK, 0, header.length + 1))
        harness.clock.advance(9.999)
        self.assertEqual(harness.ends, [])
        harness.clock.advance(0.001)
        self.assertEqual(
            [(e.violation, e.code) for e in harness.ends],
            [(Violation.KEEPALIVE_TIMEOUT, GoAwayCode.INTERNAL_ERROR)],
        )
        self.assertEqual(harness.transport.value(), b"")
        self.assertTrue(harness.transport.disconnected)
        self.assertEqual(harness.clock.getDelayedCalls(), [])


class GoAwayTests(SessionEndedMixin, unittest.TestCase):
    """
    Go-away sent and received.
    """

    def test_local_go_away_lets_open_streams_finish(self) -> None:
        """
        After our go-away, a new peer stream is reset and we open none, while an open
        stream goes on; when it ends, the session ends (local-go-away) and closes.
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        stream = harness.accepted[0]
        harness.session.go_away()
        harness.feed(frame(WINDOW, SYN, 3, 0), data(1, b"still"))
        self.assertEqual(harness.protocols[1].received, b"still")
        self.assertIn((WINDOW, RST, 3, 0), kinds(harness.sent()))
        self.assertEqual(self.assertRaises(OpenRefused, harness.open).reason, "go-away")
        stream.loseConnection()
        self.assertEqual(harness.ends, [])
        harness.feed(frame(WINDOW, FIN, 1, 0))
        self.assertEqual([e.violation for e in harness.ends], [Violation.LOCAL_GO_AWAY])
        self.assertTrue(harness.transport.disconnecting)

    def test_local_go_away_end_records_the_code_sent(self) -> None:
        """
        The session's end after our go-away carries the code that go-away sent: a
        protocol-error go-away (as the gateway sends past a client's refusal bound) ends as
        code 1, a normal one as code 0.
        """
        for code in (GoAwayCode.PROTOCOL_ERROR, GoAwayCode.NORMAL):
            harness = Harness()
            harness.feed(frame(WINDOW, SYN, 1, 0))
            stream = harness.accepted[0]
            harness.session.go_away(code)
            self.assertIn((GO_AWAY, Flag(0), 0, code), kinds(harness.sent()))
            stream.loseConnection()
            harness.feed(frame(WINDOW, FIN, 1, 0))
            self.assertEqual(
                [(e.violation, e.code) for e in harness.ends], [(Violation.LOCAL_GO_AWAY, code)]
            )

    def test_remote_go_away_normal(self) -> None:
        """
        The peer's normal go-away stops our new streams but not the open ones.
        """
        harness = Harness(client=True)
        stream, protocol = harness.open()
        harness.feed(frame(WINDOW, ACK, 1, 0), frame(GO_AWAY, 0, 0, GoAwayCode.NORMAL))
        self.assertIs(harness.session.remote_go_away, GoAwayCode.NORMAL)
        self.assertEqual(self.assertRaises(OpenRefused, harness.open).reason, "go-away")
        harness.feed(data(1, b"data"))
        self.assertEqual(protocol.received, b"data")
        self.assertEqual(harness.ends, [])

    def test_remote_go_away_error(self) -> None:
        """
        The peer's go-away with an error code ends the session (remote-go-away, by the
        peer); its streams see the session lost.
        """
        harness = Harness(client=True)
        _, protocol = harness.open()
        harness.feed(frame(GO_AWAY, 0, 0, GoAwayCode.PROTOCOL_ERROR))
        [end] = harness.ends
        self.assertEqual(
            (end.violation, end.code, end.by_peer), (Violation.REMOTE_GO_AWAY, 1, True)
        )
        assert protocol.reason is not None
        protocol.reason.trap(SessionLost)
        self.assertTrue(harness.transport.disconnecting)

    def test_connection_lost(self) -> None:
        """
        A lost transport ends every stream with the session lost, and the session reports
        it once.
        """
        harness = Harness(client=True)
        _, protocol = harness.open()
        harness.session.connection_lost()
        harness.session.connection_lost()
        self.assertEqual([e.violation for e in harness.ends], [Violation.CONNECTION_LOST])
        assert protocol.reason is not None
        protocol.reason.trap(SessionLost)
        self.assertRaises(OpenRefused, harness.open)


class TimerTests(SessionEndedMixin, unittest.TestCase):
    """
    Deadlines on the injected clock: idle session, stream open and close.
    """

    def test_idle_session(self) -> None:
        """
        A session with no stream for the idle timeout ends with a normal go-away (idle); a
        stream open meanwhile stops the countdown.
        """
        limits = MuxLimits(keepalive_interval=None, idle_timeout=60.0)
        harness = Harness(limits=limits)
        harness.clock.advance(59.0)
        harness.feed(frame(WINDOW, SYN, 1, 0))
        harness.clock.advance(120.0)
        self.assertEqual(harness.ends, [])
        harness.accepted[0].abortConnection()
        harness.clock.advance(59.999)
        self.assertEqual(harness.ends, [])
        harness.clock.advance(0.001)
        self.assert_ended(harness, Violation.IDLE, GoAwayCode.NORMAL)

    def test_open_timeout(self) -> None:
        """
        A stream we opened that the peer never ACKs is reset at the open timeout, not
        before; its protocol sees L{StreamTimeout}.
        """
        limits = MuxLimits(keepalive_interval=None, open_timeout=75.0)
        harness = Harness(client=True, limits=limits)
        stream, protocol = harness.open()
        harness.sent()
        harness.clock.advance(74.999)
        self.assertIsNone(protocol.reason)
        harness.clock.advance(0.001)
        self.assertEqual(kinds(harness.sent()), [(WINDOW, RST, 1, 0)])
        assert protocol.reason is not None
        protocol.reason.trap(StreamTimeout)
        self.assertEqual(harness.session.open_streams, 0)

    def test_close_timeout(self) -> None:
        """
        After our FIN, a peer that never sends its own gets the stream reset at the close
        timeout.
        """
        limits = MuxLimits(keepalive_interval=None, close_timeout=300.0)
        harness = Harness(limits=limits)
        harness.feed(frame(WINDOW, SYN, 1, 0))
        harness.accepted[0].loseWriteConnection()
        harness.sent()
        harness.clock.advance(299.0)
        self.assertEqual(kinds(harness.sent()), [])
        harness.clock.advance(1.0)
        self.assertEqual(kinds(harness.sent()), [(WINDOW, RST, 1, 0)])
        reason = harness.protocols[1].reason
        assert reason is not None
        reason.trap(StreamTimeout)


class DrainTests(unittest.TestCase):
    """
    A graceful end (our go-away, then the last stream's close) hands the transport
    everything the streams framed before the connection is closed.
    """

    def test_drain_delivers_last_data_and_fin(self) -> None:
        """
        After our go-away, the last stream answers and half-closes (the peer had sent SYN,
        data and FIN): its ACK, data and FIN all reach the transport before it is closed,
        and the session ends (local-go-away).
        """
        harness = Harness()
        harness.feed(data(1, b"OPEN x\n", SYN | FIN))
        stream = harness.accepted[0]
        harness.session.go_away()
        self.assertEqual(kinds(harness.sent()), [(GO_AWAY, Flag(0), 0, GoAwayCode.NORMAL)])
        stream.write(b"Z" * 5000)
        stream.loseWriteConnection()
        sent = harness.sent()
        self.assertEqual(
            kinds(sent), [(WINDOW, ACK, 1, 0), (DATA, Flag(0), 1, 5000), (WINDOW, FIN, 1, 0)]
        )
        self.assertEqual(sent[1][1], b"Z" * 5000)
        self.assertEqual([e.violation for e in harness.ends], [Violation.LOCAL_GO_AWAY])
        self.assertTrue(harness.transport.disconnecting)
        self.assertEqual(harness.session.bytes_out, 12 + 12 + 12 + 5000 + 12)

    def test_drain_delivers_data_queued_for_window(self) -> None:
        """
        The last stream's 40,000 bytes and FIN wait for the peer's window; when the window
        update comes after our go-away, all of it and the FIN are written before the close.
        """
        harness = Harness()
        harness.feed(data(1, b"OPEN x\n", SYN))
        stream = harness.accepted[0]
        stream.write(b"A" * INITIAL_WINDOW)
        stream.write(b"B" * 40_000)
        stream.loseWriteConnection()
        harness.sent()
        harness.feed(data(1, b"", FIN))
        harness.session.go_away()
        harness.sent()
        harness.feed(frame(WINDOW, 0, 1, 100_000))
        sent = harness.sent()
        self.assertEqual(b"".join(p for _, p in sent), b"B" * 40_000)
        self.assertEqual(kinds(sent)[-1][:3], (DATA, FIN, 1))
        self.assertEqual([e.violation for e in harness.ends], [Violation.LOCAL_GO_AWAY])

    def test_go_away_while_paused_is_written(self) -> None:
        """
        A go-away with no stream open while the transport has paused the session is still
        written (after the control frames held) before the close.
        """
        harness = Harness()
        harness.session.pauseProducing()
        harness.feed(frame(PING, SYN, 0, 7))
        harness.session.go_away()
        self.assertEqual(
            kinds(harness.sent()),
            [(PING, ACK, 0, 7), (GO_AWAY, Flag(0), 0, GoAwayCode.NORMAL)],
        )
        self.assertEqual([e.violation for e in harness.ends], [Violation.LOCAL_GO_AWAY])
        self.assertTrue(harness.transport.disconnecting)


class LingerTests(unittest.TestCase):
    """
    A session that has ended never keeps its connection: a transport that has not closed
    (the peer does not read) is aborted after C{linger_timeout}.
    """

    def test_hostile_peer_not_reading_aborted_after_linger(self) -> None:
        """
        A hostile peer that stopped reading commits a violation: the session ends with
        go-away 1 and a close; the transport, never closed, is aborted at C{linger_timeout}
        after the end and not an instant before.
        """
        limits = MuxLimits(keepalive_interval=None, linger_timeout=30.0)
        harness = Harness(limits=limits)
        harness.session.pauseProducing()
        harness.feed(b"\x07" * 12)
        self.assertEqual([e.violation for e in harness.ends], [Violation.BAD_VERSION])
        self.assertTrue(harness.transport.disconnecting)
        harness.clock.advance(29.999)
        self.assertFalse(harness.transport.disconnected)
        harness.clock.advance(0.001)
        self.assertTrue(harness.transport.disconnected)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_connection_closed_in_time_cancels_linger(self) -> None:
        """
        When the transport closes within the linger time, the abort deadline is cancelled:
        no timer is left.
        """
        harness = Harness()
        harness.session.go_away()
        self.assertEqual(len(harness.clock.getDelayedCalls()), 1)
        harness.session.connection_lost()
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        self.assertFalse(harness.transport.disconnected)

    def test_linger_and_timers_must_be_positive(self) -> None:
        """
        C{linger_timeout}, C{keepalive_interval} and C{idle_timeout} refuse 0 and negative
        values (0 would re-arm a timer every reactor turn); None turns the last two off.
        """
        for name in ("linger_timeout", "keepalive_interval", "idle_timeout"):
            for bad in (0, 0.0, -1.0):
                self.assertRaises(ValueError, MuxLimits, **{name: bad})
            MuxLimits(**{name: 0.001})
        MuxLimits(keepalive_interval=None, idle_timeout=None)


class CloseDeadlineTests(unittest.TestCase):
    """
    After we ask for our FIN, a silent peer gets the stream reset at C{close_timeout}
    whatever the order of events; a peer still sending is not cut off.
    """

    limits = MuxLimits(keepalive_interval=None, close_timeout=300.0, open_timeout=75.0)

    def test_fin_before_ack_then_silent_peer(self) -> None:
        """
        We open a stream, write and close it before the peer's ACK; the peer ACKs and never
        sends its FIN: the stream is reset C{close_timeout} after the ACK, not before, and
        no longer counted.
        """
        harness = Harness(client=True, limits=self.limits)
        stream, protocol = harness.open()
        stream.write(b"OPEN x\r\nGET\r\n")
        stream.loseConnection()
        harness.clock.advance(10.0)
        harness.feed(frame(WINDOW, ACK, 1, 0))
        harness.sent()
        harness.clock.advance(299.999)
        self.assertEqual((kinds(harness.sent()), protocol.reason), ([], None))
        harness.clock.advance(0.001)
        self.assertEqual(kinds(harness.sent()), [(WINDOW, RST, 1, 0)])
        assert protocol.reason is not None
        protocol.reason.trap(StreamTimeout)
        self.assertEqual(harness.session.open_streams, 0)

    def test_fin_waiting_for_window_then_silent_peer(self) -> None:
        """
        Our FIN waits behind data the peer's window does not let out, and the peer stays
        silent: the stream is reset at C{close_timeout} after we asked for the FIN.
        """
        harness = Harness(limits=self.limits)
        harness.feed(frame(WINDOW, SYN, 1, 0))
        stream = harness.accepted[0]
        stream.write(b"w" * (INITIAL_WINDOW + 1))
        stream.loseWriteConnection()
        self.assertEqual(stream.state, StreamState.ESTABLISHED)
        harness.sent()
        harness.clock.advance(299.999)
        self.assertEqual(kinds(harness.sent()), [])
        harness.clock.advance(0.001)
        self.assertEqual(kinds(harness.sent()), [(WINDOW, RST, 1, 0)])
        self.assertEqual(harness.session.open_streams, 0)

    def test_peer_still_uploading_is_not_cut_off(self) -> None:
        """
        After our half-close the peer goes on sending, a frame every 200 s for 1,000 s: the
        stream lives; once it falls silent, the reset comes C{close_timeout} after its last
        frame, not an instant before.
        """
        harness = Harness(limits=self.limits)
        harness.feed(frame(WINDOW, SYN, 1, 0))
        stream = harness.accepted[0]
        stream.loseWriteConnection()
        for _ in range(5):
            harness.clock.advance(200.0)
            harness.feed(data(1, b"upload"))
        harness.sent()
        self.assertEqual(harness.protocols[1].received, b"upload" * 5)
        harness.clock.advance(299.999)
        self.assertEqual(kinds(harness.sent()), [])
        harness.clock.advance(0.001)
        self.assertEqual(kinds(harness.sent()), [(WINDOW, RST, 1, 0)])

    def test_both_fins_with_data_held_leave_no_deadline(self) -> None:
        """
        The peer's FIN arrives while ours waits for window and our protocol has paused
        reading with data held; once our FIN goes out, the peer has done its part: no
        deadline runs (the stream waits for our protocol, not for the peer).
        """
        harness = Harness(limits=self.limits)
        harness.feed(frame(WINDOW, SYN, 1, 0))
        stream = harness.accepted[0]
        stream.pauseProducing()
        stream.write(b"w" * (INITIAL_WINDOW + 1))
        stream.loseWriteConnection()
        harness.feed(data(1, b"held", FIN))
        harness.feed(frame(WINDOW, 0, 1, 1))
        self.assertEqual(stream.state, StreamState.CLOSED)
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        stream.resumeProducing()
        self.assertEqual(harness.protocols[1].received, b"held")
        self.assertEqual(harness.session.open_streams, 0)

    def test_peer_fin_ends_the_deadline(self) -> None:
        """
        After both FINs the stream is closed and no timer is left.
        """
        harness = Harness(limits=self.limits)
        harness.feed(frame(WINDOW, SYN, 1, 0))
        harness.accepted[0].loseWriteConnection()
        harness.feed(frame(WINDOW, FIN, 1, 0))
        self.assertEqual(harness.session.open_streams, 0)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

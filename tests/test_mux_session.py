"""
Tests for L{netguard.mux.session.MuxSession} and L{netguard.mux.stream.MuxStream}: one
session against a hand-driven peer on a L{StringTransport} (hostile peers named as such),
and two real sessions talking through L{iosim.connectedServerAndClient}; time is a
L{task.Clock}.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from netguard.mux import frames
from netguard.mux.frames import (
    INITIAL_WINDOW,
    MAX_UINT32,
    Flag,
    FrameType,
    GoAwayCode,
    Header,
    Violation,
)
from netguard.mux.limits import MuxLimits
from netguard.mux.outcome import OpenRefused, SessionEnd
from netguard.mux.protocol import MuxProtocol
from netguard.mux.session import MuxSession
from netguard.mux.stream import (
    MuxStream,
    SessionLost,
    StreamReset,
    StreamState,
    StreamTimeout,
)
from netguard.relay import A, B, Splice

DATA, WINDOW, PING, GO_AWAY = (
    FrameType.DATA,
    FrameType.WINDOW_UPDATE,
    FrameType.PING,
    FrameType.GO_AWAY,
)
SYN, ACK, FIN, RST = Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST


def frame(kind: FrameType, flags: Flag | int, stream_id: int, length: int) -> bytes:
    """
    A header, as a hand-driven peer writes it.
    """
    return frames.encode(kind, flags, stream_id, length)


def data(stream_id: int, payload: bytes, flags: Flag | int = 0) -> bytes:
    """
    A data frame with C{payload}.
    """
    return frame(DATA, flags, stream_id, len(payload)) + payload


def parse(wire: bytes) -> list[tuple[Header, bytes]]:
    """
    Every frame in C{wire}, with its payload.
    """
    result = []
    offset = 0
    while offset < len(wire):
        header = frames.decode(wire, offset)
        size = header.length if header.type is DATA else 0
        payload = wire[offset + 12 : offset + 12 + size]
        result.append((header, payload))
        offset += 12 + size
    return result


class Recorder:
    """
    A stream protocol that records what it is told.
    """

    def __init__(self, half_close: bool = True) -> None:
        self.transport: MuxStream | None = None
        self.received = bytearray()
        self.eof = False
        self.reason: Failure | None = None
        if half_close:
            self.readConnectionLost = self._read_lost

    def makeConnection(self, transport: MuxStream) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def _read_lost(self) -> None:
        self.eof = True

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason


class Echo(Recorder):
    """
    A stream protocol that echoes and half-closes back on the peer's FIN.
    """

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        assert self.transport is not None
        self.transport.write(data)

    def _read_lost(self) -> None:
        super()._read_lost()
        assert self.transport is not None
        self.transport.loseWriteConnection()


@implementer(IPushProducer)
class Source:
    """
    A push producer that writes C{chunk} to a stream each time it is asked to produce,
    until paused, at most C{total} bytes.
    """

    def __init__(self, stream: MuxStream, chunk: int, total: int) -> None:
        self.stream = stream
        self.chunk = chunk
        self.left = total
        self.paused = False
        self.stopped = False
        self.pauses = 0

    def run(self) -> None:
        """
        Write until paused or done (bounded by C{total}).
        """
        while not self.paused and self.left > 0:
            size = min(self.chunk, self.left)
            self.left -= size
            self.stream.write(b"x" * size)

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.run()

    def stopProducing(self) -> None:
        self.stopped = True


class Harness:
    """
    One session on a L{StringTransport}, driven by hand as its peer.
    """

    def __init__(
        self,
        *,
        client: bool = False,
        limits: MuxLimits | None = None,
        protocol: type[Recorder] = Recorder,
    ) -> None:
        self.clock = Clock()
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 7700),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        )
        self.accepted: list[MuxStream] = []
        self.protocols: dict[int, Recorder] = {}
        self.ends: list[SessionEnd] = []
        self.refuse = False
        self.protocol_class = protocol
        self.session = MuxSession(
            self.transport,
            client=client,
            clock=self.clock,
            accept=self._accept,
            limits=limits if limits is not None else MuxLimits(keepalive_interval=None),
            on_end=self.ends.append,
        )

    def _accept(self, stream: MuxStream) -> Recorder | None:
        if self.refuse:
            return None
        self.accepted.append(stream)
        protocol = self.protocols[stream.stream_id] = self.protocol_class()
        return protocol

    def feed(self, *chunks: bytes) -> None:
        """
        The peer sends C{chunks}, in one read.
        """
        self.session.data_received(b"".join(chunks))

    def sent(self) -> list[tuple[Header, bytes]]:
        """
        Frames the session wrote since the last call.
        """
        wire = self.transport.value()
        self.transport.clear()
        return parse(wire)

    def open(self, protocol: Recorder | None = None) -> tuple[MuxStream, Recorder]:
        """
        Open a stream from the session's side.
        """
        protocol = protocol if protocol is not None else Recorder()
        return self.session.open_stream(protocol), protocol


def kinds(sent: list[tuple[Header, bytes]]) -> list[tuple[FrameType, Flag, int, int]]:
    """
    The headers of C{sent} as plain tuples.
    """
    return [(h.type, h.flags, h.stream_id, h.length) for h, _ in sent]


class SessionEndedMixin:
    """
    Assertions about how a session ended.
    """

    def assert_ended(
        self, harness: Harness, violation: Violation, code: GoAwayCode = GoAwayCode.PROTOCOL_ERROR
    ) -> None:
        """
        The session ended for C{violation}, sent go-away C{code} as its last frame, and
        closed its transport.
        """
        case: Any = self
        case.assertEqual([end.violation for end in harness.ends], [violation])
        sent = harness.sent()
        case.assertEqual(kinds(sent)[-1:], [(GO_AWAY, Flag(0), 0, code)])
        case.assertTrue(harness.transport.disconnecting)
        case.assertEqual(harness.session.open_streams, 0)


class RoundTripTests(unittest.TestCase):
    """
    Streams between two real sessions, over iosim.
    """

    def connect(self, limits: MuxLimits | None = None) -> tuple[MuxSession, MuxSession, Any]:
        """
        A client and a server session connected through iosim; the server echoes.
        """
        self.clock = Clock()
        self.server_streams: list[Echo] = []

        def accept(stream: MuxStream) -> Echo:
            echo = Echo()
            self.server_streams.append(echo)
            return echo

        client, server, pump = iosim.connectedServerAndClient(
            lambda: MuxProtocol(client=False, clock=self.clock, accept=accept, limits=limits),
            lambda: MuxProtocol(
                client=True, clock=self.clock, accept=lambda s: None, limits=limits
            ),
            clock=self.clock,
        )
        assert client.session is not None and server.session is not None
        return client.session, server.session, pump

    def test_echo_and_half_close(self) -> None:
        """
        Bytes written on a stream come back in order; our FIN reaches the server's protocol
        as a half-close, its FIN ends the stream cleanly on both ends, and the stream no
        longer counts.
        """
        client, server, pump = self.connect()
        protocol = Recorder()
        stream = client.open_stream(protocol)
        stream.write(b"hello ")
        stream.writeSequence([b"world", b""])
        pump.flush()
        self.assertEqual(bytes(protocol.received), b"hello world")
        stream.loseWriteConnection()
        pump.flush()
        self.assertTrue(self.server_streams[0].eof)
        self.assertTrue(protocol.eof)
        assert protocol.reason is not None
        protocol.reason.trap(ConnectionDone)
        self.assertEqual((client.open_streams, server.open_streams), (0, 0))
        self.assertEqual((stream.bytes_out, stream.bytes_in), (11, 11))
        self.assertEqual(stream.state, StreamState.CLOSED)

    def test_interleaved_streams(self) -> None:
        """
        Writes on several streams, interleaved, each come back on their own stream in order.
        """
        client, server, pump = self.connect()
        pairs = [self._open(client) for _ in range(3)]
        for round_ in range(5):
            for index, (stream, _) in enumerate(pairs):
                stream.write(f"{index}:{round_};".encode())
        pump.flush()
        for index, (_, protocol) in enumerate(pairs):
            expected = "".join(f"{index}:{r};" for r in range(5)).encode()
            self.assertEqual(bytes(protocol.received), expected)

    def _open(self, session: MuxSession) -> tuple[MuxStream, Recorder]:
        protocol = Recorder()
        return session.open_stream(protocol), protocol

    def test_bulk_beside_chatty_stream(self) -> None:
        """
        A 2 MiB transfer (eight windows, so window updates are needed) and a chatty stream
        on the same session both complete, every byte in order.
        """
        client, server, pump = self.connect()
        bulk, bulk_protocol = self._open(client)
        chatty, chatty_protocol = self._open(client)
        source = Source(bulk, 64 * 1024, 2 * 1024 * 1024)
        bulk.registerProducer(source, True)
        source.run()
        for index in range(200):
            chatty.write(b"%d\n" % index)
            pump.pump()
        pump.flush()
        self.assertEqual(len(bulk_protocol.received), 2 * 1024 * 1024)
        self.assertEqual(chatty_protocol.received, b"".join(b"%d\n" % i for i in range(200)))
        self.assertGreater(source.pauses, 0)

    def test_server_half_closes_first(self) -> None:
        """
        The server's FIN reaches the client as a half-close while the client can still
        send; the client's FIN then ends the stream.
        """
        client, server, pump = self.connect()
        stream, protocol = self._open(client)
        pump.flush()
        server_stream = self.server_streams[0].transport
        assert server_stream is not None
        server_stream.write(b"bye")
        server_stream.loseWriteConnection()
        pump.flush()
        self.assertTrue(protocol.eof)
        self.assertEqual(stream.state, StreamState.REMOTE_CLOSE)
        stream.write(b"late")
        pump.flush()
        self.assertEqual(self.server_streams[0].received, b"late")
        stream.loseWriteConnection()
        pump.flush()
        assert protocol.reason is not None
        protocol.reason.trap(ConnectionDone)

    def test_abort_resets_the_peer(self) -> None:
        """
        abortConnection sends RST: our protocol sees ConnectionAborted, the peer's sees
        StreamReset, neither stream counts any more, and the session goes on.
        """
        client, server, pump = self.connect()
        stream, protocol = self._open(client)
        stream.write(b"x")
        pump.flush()
        stream.abortConnection()
        pump.flush()
        assert protocol.reason is not None and self.server_streams[0].reason is not None
        protocol.reason.trap(ConnectionAborted)
        self.server_streams[0].reason.trap(StreamReset)
        self.assertEqual((client.open_streams, server.open_streams), (0, 0))
        other, other_protocol = self._open(client)
        other.write(b"still")
        pump.flush()
        self.assertEqual(other_protocol.received, b"still")

    def test_stream_as_transport(self) -> None:
        """
        A stream provides ITransport, IConsumer and IPushProducer, and reports the session
        transport's addresses.
        """
        client, server, pump = self.connect()
        stream, _ = self._open(client)
        for interface in (ITransport, IConsumer, IPushProducer):
            self.assertTrue(verifyObject(interface, stream))
        self.assertEqual(stream.getPeer(), client.transport.getPeer())
        self.assertEqual(stream.getHost(), client.transport.getHost())


class OutOfOrderOpeningTests(unittest.TestCase):
    """
    Stream openings whose ids do not arrive in order, as hashicorp/yamux sends them.
    """

    def test_syns_out_of_order_accepted(self) -> None:
        """
        SYNs for streams 5, 1, 3 (in that order) all open streams and are answered.
        """
        harness = Harness()
        harness.feed(*(data(sid, b"OPEN echo\r\n", SYN) for sid in (5, 1, 3)))
        self.assertEqual([s.stream_id for s in harness.accepted], [5, 1, 3])
        for stream in harness.accepted:
            stream.write(b"OK\r\n")
        sent = kinds(harness.sent())
        self.assertEqual(
            sorted(k for k in sent if k[1] == ACK), [(WINDOW, ACK, sid, 0) for sid in (1, 3, 5)]
        )
        self.assertEqual(harness.protocols[1].received, b"OPEN echo\r\n")


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
        is owed, not before.
        """
        harness = Harness()
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

    def test_memory_budget_withholds_updates(self) -> None:
        """
        With a budget of 100,000 bytes held: while a paused stream holds exactly the budget,
        another stream's owed credit is withheld; when the paused stream resumes (held bytes
        drain), the withheld update goes out.
        """
        budget = 100_000
        harness = Harness(limits=MuxLimits(keepalive_interval=None, memory_budget=budget))
        harness.feed(*(frame(WINDOW, SYN, sid, 0) for sid in (1, 3)))
        busy, paused = harness.accepted
        busy.accept()
        paused.accept()
        paused.pauseProducing()
        harness.sent()
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
        harness = Harness(limits=MuxLimits(keepalive_interval=None, memory_budget=budget))
        harness.feed(*(frame(WINDOW, SYN, sid, 0) for sid in (1, 3)))
        busy, paused = harness.accepted
        busy.accept()
        paused.accept()
        paused.pauseProducing()
        harness.sent()
        harness.feed(data(3, b"h" * (budget - 1)), data(1, b"a" * 200_000))
        self.assertEqual(kinds(harness.sent()), [(WINDOW, Flag(0), 1, 200_000)])

    def test_idle_streams_do_not_use_the_budget(self) -> None:
        """
        Under the default limits, more idle streams than C{memory_budget / 256 KiB} (65 of
        them, their windows granted and unused) leave a busy stream's transfer going: every
        half window it consumes is given back, for eight windows.
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
        self.assertEqual((total, window), (8 * INITIAL_WINDOW, INITIAL_WINDOW))
        self.assertEqual(harness.session.credit, (idle + 1) * INITIAL_WINDOW)


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
        Two streams with 64 KiB queued each go out one frame (16 KiB) per stream per turn:
        the frames alternate.
        """
        harness = Harness(client=True)
        first, _ = harness.open()
        second, _ = harness.open()
        harness.feed(frame(WINDOW, ACK, 1, 0), frame(WINDOW, ACK, 3, 0))
        harness.sent()
        harness.session.pauseProducing()
        first.write(b"a" * 65536)
        second.write(b"b" * 65536)
        self.assertEqual(harness.transport.value(), b"")
        harness.session.resumeProducing()
        sent = [(h.stream_id, h.length) for h, _ in harness.sent()]
        self.assertEqual(sent, [(1, 16384), (3, 16384)] * 4)

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
        self.assertLessEqual(len(harness.session._inbuf), 12 + INITIAL_WINDOW + 40)

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

    def test_nothing_after_the_end(self) -> None:
        """
        Bytes after the session ended are ignored, and the end is reported once.
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 2, 0))
        harness.feed(frame(WINDOW, SYN, 1, 0), b"\xff" * 30)
        self.assertEqual(len(harness.ends), 1)
        self.assertEqual(harness.accepted, [])


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


class StreamInterfaceTests(unittest.TestCase):
    """
    The stream as its protocol's transport: half-close, counters, write after close.
    """

    def test_protocol_without_half_close(self) -> None:
        """
        A protocol without C{readConnectionLost} gets the stream closed on the peer's FIN,
        as Twisted does for protocols that are not half-closeable.
        """
        harness = Harness(protocol=lambda: Recorder(half_close=False))  # type: ignore[arg-type]
        harness.feed(data(1, b"x", SYN | FIN))
        self.assertIn((WINDOW, FIN, 1, 0), kinds(harness.sent()))
        reason = harness.protocols[1].reason
        assert reason is not None
        reason.trap(ConnectionDone)
        self.assertEqual(harness.session.open_streams, 0)

    def test_write_after_close_ignored(self) -> None:
        """
        Writes after loseWriteConnection are ignored, as on a Twisted transport.
        """
        harness = Harness(client=True)
        stream, _ = harness.open()
        stream.write(b"a")
        stream.loseWriteConnection()
        stream.write(b"b")
        payloads = [p for h, p in harness.sent() if h.type is DATA]
        self.assertEqual(payloads, [b"a"])

    def test_counters(self) -> None:
        """
        Payload bytes are counted per stream each way, and wire bytes per session.
        """
        harness = Harness()
        wire = data(1, b"OPEN echo\r\n", SYN)
        harness.feed(wire)
        harness.accepted[0].write(b"OK OPEN echo\r\n")
        out = harness.transport.value()
        stream = harness.accepted[0]
        self.assertEqual((stream.bytes_in, stream.bytes_out), (11, 14))
        self.assertEqual((harness.session.bytes_in, harness.session.bytes_out), (23, len(out)))


class Raiser(Recorder):
    """
    A stream protocol with a bug: it raises on data.
    """

    def dataReceived(self, data: bytes) -> None:
        raise ZeroDivisionError("application bug")


class CloseOnData(Recorder):
    """
    A stream protocol that closes its stream on the first data it gets.
    """

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        assert self.transport is not None
        self.transport.loseConnection()


class ApplicationTests(unittest.TestCase):
    """
    What the session does when the application misbehaves or closes in a callback.
    """

    def test_protocol_exception_resets_only_its_stream(self) -> None:
        """
        A protocol that raises gets its own stream reset (logged), while the session and
        other streams go on.
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        harness.protocol_class = Raiser
        harness.feed(frame(WINDOW, SYN, 3, 0))
        harness.sent()
        harness.feed(data(3, b"boom"), data(1, b"fine"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIn((WINDOW, RST, 3, 0), kinds(harness.sent()))
        self.assertEqual(harness.protocols[1].received, b"fine")
        self.assertEqual(harness.ends, [])
        self.assertEqual(harness.session.open_streams, 1)

    def test_accept_exception_resets_the_stream(self) -> None:
        """
        An accept callback that raises gets that stream reset (logged); the session goes on.
        """
        harness = Harness()

        def broken(stream: MuxStream) -> None:
            raise KeyError("bug")

        harness.session._accept = broken
        harness.feed(frame(WINDOW, SYN, 1, 0))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual(kinds(harness.sent()), [(WINDOW, RST, 1, 0)])
        self.assertEqual((harness.ends, harness.session.open_streams), ([], 0))

    def test_credit_consistent_when_closing_while_draining(self) -> None:
        """
        A protocol that closes its stream while held data is being delivered leaves the
        session's credit equal to the sum of its streams' credit (nothing counted twice).
        """
        harness = Harness(protocol=CloseOnData)
        harness.feed(frame(WINDOW, SYN, 1, 0), frame(WINDOW, SYN, 3, 0))
        first, second = harness.accepted
        first.pauseProducing()
        second.pauseProducing()
        harness.feed(data(1, b"a" * 1000), data(1, b"b" * 1000), data(3, b"c" * 500))
        self.assertEqual(harness.session.credit, 2 * INITIAL_WINDOW)
        first.resumeProducing()
        self.assertEqual(harness.protocols[1].received, b"a" * 1000 + b"b" * 1000)
        streams = [first, second]
        self.assertEqual(harness.session.credit, sum(s.outstanding for s in streams))
        harness.feed(frame(WINDOW, FIN, 1, 0))
        self.assertEqual(harness.session.credit, second.outstanding)


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


class NoEffectFloodTests(unittest.TestCase):
    """
    Frames that change nothing (repeated go-away, RST or data for a stream that has ended)
    take a token from the empty-frame bucket; a late window update does not.
    """

    limits = MuxLimits(keepalive_interval=None, empty_frame_burst=10, empty_frame_rate=1.0)

    def reset_stream(self) -> Harness:
        """
        A session whose peer stream 1 was reset by us.
        """
        harness = Harness(limits=self.limits)
        harness.feed(data(1, b"x", SYN))
        harness.accepted[0].abortConnection()
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


class BrokenProducer:
    """
    A push producer with a bug: each of its methods named in C{broken} raises.
    """

    def __init__(self, *broken: str) -> None:
        self.broken = broken

    def _maybe_raise(self, name: str) -> None:
        if name in self.broken:
            raise ZeroDivisionError(name)

    def pauseProducing(self) -> None:
        self._maybe_raise("pause")

    def resumeProducing(self) -> None:
        self._maybe_raise("resume")

    def stopProducing(self) -> None:
        self._maybe_raise("stop")


class BrokenMaker(Recorder):
    """
    A stream protocol whose C{makeConnection} raises.
    """

    def makeConnection(self, transport: MuxStream) -> None:
        super().makeConnection(transport)
        raise ZeroDivisionError("makeConnection")


class ApplicationCallbackTests(unittest.TestCase):
    """
    Every call into the application (producer, protocol, owner) that raises is logged and
    costs at most its own stream: nothing escapes L{MuxSession.data_received} or a write.
    """

    def two_streams(self) -> tuple[Harness, MuxStream, MuxStream]:
        """
        A session with two accepted peer streams, 1 and 3.
        """
        harness = Harness()
        harness.feed(data(1, b"x", SYN), data(3, b"y", SYN))
        first, second = harness.accepted
        first.accept()
        second.accept()
        harness.sent()
        return harness, first, second

    def test_producer_stop_raises_on_peer_reset(self) -> None:
        """
        A producer whose C{stopProducing} raises, on a stream the peer resets: nothing
        escapes, the protocol is told, the stream is no longer counted, the rest of the
        read is handled once.
        """
        harness, first, _ = self.two_streams()
        first.registerProducer(BrokenProducer("stop"), True)
        harness.feed(frame(WINDOW, RST, 1, 0), data(3, b"after"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        reason = harness.protocols[1].reason
        assert reason is not None
        reason.trap(StreamReset)
        self.assertIsNone(harness.session.stream(1))
        self.assertEqual(harness.protocols[3].received, b"yafter")
        self.assertEqual(harness.ends, [])

    def test_producer_pause_raises_on_write(self) -> None:
        """
        A producer whose C{pauseProducing} raises when its stream passes the high-water
        mark: the write returns, the stream is reset, the other stream goes on.
        """
        harness, first, second = self.two_streams()
        first.registerProducer(BrokenProducer("pause"), True)
        harness.session.pauseProducing()
        first.write(b"z" * harness.session.limits.stream_high_water)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(first.lost)
        harness.session.resumeProducing()
        self.assertIn((WINDOW, RST, 1, 0), kinds(harness.sent()))
        second.write(b"ok")
        self.assertEqual([p for h, p in harness.sent() if h.stream_id == 3], [b"ok"])

    def test_producer_resume_raises_in_pump(self) -> None:
        """
        A producer whose C{resumeProducing} raises when its queue empties (a window update
        arrives in L{MuxSession.data_received}): nothing escapes, its stream is reset.
        """
        harness, first, _ = self.two_streams()
        first.registerProducer(BrokenProducer("resume"), True)
        first.write(b"z" * (INITIAL_WINDOW + 1000))
        self.assertTrue(first.producer_paused)
        harness.sent()
        harness.feed(frame(WINDOW, 0, 1, 1000))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIn((WINDOW, RST, 1, 0), kinds(harness.sent()))
        self.assertEqual(harness.ends, [])

    def test_make_connection_raises_on_open(self) -> None:
        """
        A protocol whose C{makeConnection} raises, given to L{MuxSession.open_stream}: the
        call returns the stream, reset right after its SYN, and not counted.
        """
        harness = Harness(client=True)
        stream, _ = harness.open(BrokenMaker())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(kinds(harness.sent()), [(WINDOW, SYN, 1, 0), (WINDOW, RST, 1, 0)])
        self.assertTrue(stream.lost)
        self.assertEqual(harness.session.open_streams, 0)

    def test_make_connection_raises_on_accept(self) -> None:
        """
        A protocol whose C{makeConnection} raises, for a stream the peer opens: that stream
        is reset, the session goes on.
        """
        harness = Harness(protocol=BrokenMaker)
        harness.feed(frame(WINDOW, SYN, 1, 0))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(kinds(harness.sent()), [(WINDOW, RST, 1, 0)])
        self.assertEqual((harness.ends, harness.session.open_streams), ([], 0))

    def test_on_end_raises(self) -> None:
        """
        An owner whose C{on_end} raises: logged, nothing escapes, the transport is closed.
        """
        harness = Harness()

        def broken(end: SessionEnd) -> None:
            raise ZeroDivisionError("on_end")

        harness.session._on_end = broken
        harness.feed(b"\x07" * 12)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(harness.transport.disconnecting)


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
        the bytes it holds the sum of theirs, and every stream's window and credit stay
        within 0..256 KiB.
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
            for stream in live:
                self.assertTrue(0 <= stream.recv_window <= INITIAL_WINDOW)
                self.assertTrue(0 <= stream.outstanding <= INITIAL_WINDOW)


class Backend(StringTransport):
    """
    A backend transport for a splice: records half-close and pause.
    """

    def __init__(self) -> None:
        super().__init__()
        self.write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class SpliceSide(Recorder):
    """
    A stream protocol that hands its events to side A of a splice.
    """

    splice: Splice | None = None

    def dataReceived(self, data: bytes) -> None:
        assert self.splice is not None
        self.splice.data_from(A, data)

    def _read_lost(self) -> None:
        assert self.splice is not None
        self.splice.eof_from(A)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if self.splice is not None:
            self.splice.lost(A)


class RelayTransportTests(unittest.TestCase):
    """
    A stream as side A of L{netguard.relay.Splice}, a backend transport as side B.
    """

    def splice(self) -> tuple[Harness, MuxStream, Backend, Splice]:
        """
        A stream the peer opened, spliced to a backend.
        """
        harness = Harness(protocol=SpliceSide)
        harness.feed(frame(WINDOW, SYN, 1, 0))
        stream = harness.accepted[0]
        backend = Backend()
        splice = Splice(stream, backend, clock=harness.clock)
        protocol = harness.protocols[1]
        assert isinstance(protocol, SpliceSide)
        protocol.splice = splice
        splice.start()
        harness.sent()
        return harness, stream, backend, splice

    def test_bytes_and_half_close_both_ways(self) -> None:
        """
        Bytes go both ways; the peer's FIN half-closes the backend, the backend's EOF sends
        our FIN, and the relay ends cleanly.
        """
        harness, stream, backend, splice = self.splice()
        harness.feed(data(1, b"GET"))
        self.assertEqual(backend.value(), b"GET")
        splice.data_from(B, b"VALUE")
        self.assertEqual([p for h, p in harness.sent() if h.type is DATA], [b"VALUE"])
        harness.feed(frame(WINDOW, FIN, 1, 0))
        self.assertTrue(backend.write_closed)
        splice.eof_from(B)
        self.assertIn((WINDOW, FIN, 1, 0), kinds(harness.sent()))
        splice.lost(B)
        self.assertEqual(harness.session.open_streams, 0)
        self.assertEqual(splice.ended_by, "a")

    def test_window_exhausted_pauses_the_backend(self) -> None:
        """
        A peer that never returns credit: after one window and a high-water mark queued, the
        splice pauses the backend's reading; credit from the peer resumes it.
        """
        harness, stream, backend, splice = self.splice()
        chunk = b"x" * 16384
        sent = 0
        for _ in range(100):
            if backend.producerState == "paused":
                break
            splice.data_from(B, chunk)
            sent += len(chunk)
        self.assertEqual(backend.producerState, "paused")
        self.assertLessEqual(sent, INITIAL_WINDOW + harness.session.limits.stream_high_water)
        harness.feed(frame(WINDOW, 0, 1, INITIAL_WINDOW))
        self.assertEqual(backend.producerState, "producing")


class LoopbackTests(unittest.TestCase):
    """
    Sessions over real loopback TCP connections, with Twisted's own transports (their
    buffers and producer calls), against our own session and a hostile raw peer.
    """

    def listen(self, accept: Any, limits: MuxLimits | None = None) -> Any:
        """
        A server session factory on an ephemeral loopback port; cleaned up after the test.
        The protocols it builds are kept in C{self.servers}.
        """
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory

        self.servers: list[MuxProtocol] = []

        def build() -> MuxProtocol:
            protocol = MuxProtocol(
                client=False,
                clock=reactor,  # type: ignore[arg-type]
                accept=accept,
                limits=limits,
            )
            self.servers.append(protocol)
            return protocol

        factory = Factory.forProtocol(build)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return port

    async def wait_for(self, condition: Any, what: str) -> None:
        """
        Let the reactor run until C{condition()} holds; a generous hang guard, never a timing
        assertion.
        """
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        for _ in range(3000):
            if condition():
                return
            await deferLater(reactor, 0.01)  # type: ignore[arg-type]
        self.fail(f"gave up waiting for {what}")

    async def test_echo_eight_mebibytes(self) -> None:
        """
        8 MiB through one stream to an echoing server and back (32 windows each way, window
        updates and the transports' backpressure in play) arrive whole and in order, and the
        stream ends cleanly on both sides.
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        port = self.listen(lambda stream: Echo())
        client = MuxProtocol(client=True, clock=reactor, accept=lambda s: None)  # type: ignore[arg-type]
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await connectProtocol(endpoint, client)
        self.addCleanup(lambda: client.transport and client.transport.loseConnection())
        assert client.session is not None
        payload = bytes(range(256)) * (8 * 4096)
        protocol = Recorder()
        stream = client.session.open_stream(protocol)
        stream.write(payload)
        stream.loseWriteConnection()
        await self.wait_for(lambda: protocol.reason is not None, "the stream to end")
        self.assertTrue(bytes(protocol.received) == payload, "echoed bytes differ")
        assert protocol.reason is not None
        protocol.reason.trap(ConnectionDone)
        self.assertEqual(client.session.open_streams, 0)

    async def test_hostile_peer_not_reading_bounds_our_buffer(self) -> None:
        """
        A hostile raw peer opens a stream, grants it the largest window and never reads its
        socket: once the kernel's buffers are full, Twisted's transport pauses the session,
        the stream's queue reaches its high-water mark and its producer is paused; the bytes
        held in our process stay within the transport's buffer, one batch and one
        high-water mark. The transport's buffer is measured after every write the session
        makes (where it peaks), not sampled.
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol

        sources: list[Source] = []
        sessions: list[MuxStream] = []
        highest = [0]
        writes = [0]

        def buffered(tcp: Any) -> int:
            return len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen  # type: ignore[no-any-return]

        def observe(tcp: Any) -> None:
            original = tcp.writeSequence

            def write_sequence(data: list[bytes]) -> None:
                original(data)
                writes[0] += 1
                highest[0] = max(highest[0], buffered(tcp))

            tcp.writeSequence = write_sequence

        class Flood(Recorder):
            def makeConnection(self, transport: MuxStream) -> None:
                super().makeConnection(transport)
                observe(transport._session.transport)
                sessions.append(transport)
                source = Source(transport, 16384, 64 * 1024 * 1024)
                sources.append(source)
                transport.registerProducer(source, True)
                transport.accept()
                reactor.callLater(0, source.run)  # type: ignore[attr-defined]

        port = self.listen(lambda stream: Flood())
        hostile = Protocol()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await connectProtocol(endpoint, hostile)
        self.addCleanup(hostile.transport.abortConnection)  # type: ignore[union-attr]
        hostile.transport.write(  # type: ignore[union-attr]
            frame(WINDOW, SYN, 1, MAX_UINT32 - INITIAL_WINDOW)
        )
        hostile.transport.pauseProducing()  # type: ignore[union-attr]
        await self.wait_for(lambda: bool(sessions), "the stream")
        stream = sessions[0]
        session = stream._session
        transport: Any = session.transport
        bound = transport.bufferSize + 64 * 1024 + 16 * 1024 + 12
        await self.wait_for(
            lambda: session._paused and sources[0].paused, "the session and producer paused"
        )
        self.assertGreater(writes[0], 0)
        self.assertLessEqual(highest[0], bound)
        self.assertLessEqual(stream.queued, session.limits.stream_high_water + 16384)
        self.assertGreater(session.bytes_out, INITIAL_WINDOW)

    async def test_hostile_peer_not_reading_cannot_keep_an_ended_session(self) -> None:
        """
        A hostile raw peer makes the session fill its socket and stops reading, then sends
        a broken header: the session ends (go-away 1, close), and since the close cannot
        complete, the connection is aborted at C{linger_timeout}; no timer is left.
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol

        sources: list[Source] = []

        class Flood(Recorder):
            def makeConnection(self, transport: MuxStream) -> None:
                super().makeConnection(transport)
                source = Source(transport, 16384, 64 * 1024 * 1024)
                sources.append(source)
                transport.registerProducer(source, True)
                transport.accept()
                reactor.callLater(0, source.run)  # type: ignore[attr-defined]

        limits = MuxLimits(keepalive_interval=None, linger_timeout=0.2)
        port = self.listen(lambda stream: Flood(), limits)
        hostile = Protocol()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await connectProtocol(endpoint, hostile)
        self.addCleanup(hostile.transport.abortConnection)  # type: ignore[union-attr]
        hostile.transport.write(  # type: ignore[union-attr]
            frame(WINDOW, SYN, 1, MAX_UINT32 - INITIAL_WINDOW)
        )
        hostile.transport.pauseProducing()  # type: ignore[union-attr]
        await self.wait_for(lambda: bool(sources) and sources[0].paused, "the flood to stall")
        server = self.servers[0]
        session = server.session
        assert session is not None
        await self.wait_for(lambda: session._paused, "the session paused")
        hostile.transport.write(b"\x07" * 12)  # type: ignore[union-attr]
        await self.wait_for(lambda: session.ended is not None, "the violation")
        assert session.ended is not None
        self.assertEqual(session.ended.violation, Violation.BAD_VERSION)
        transport: Any = server.transport
        await self.wait_for(lambda: transport.disconnected, "the connection to be aborted")
        self.assertIsNone(session._linger)

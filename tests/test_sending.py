# -*- test-case-name: tests.test_sending -*-
"""
Tests for L{netguard.sending.write_now} and the L{Splice}'s direct writes to a plain socket:
what the kernel takes is sent at once, without a writable event; the rest waits in
Twisted's buffer behind nothing, in order, with Twisted's own backpressure and error
reporting. The sockets are real (TCP on 127.0.0.1); the reactor is a L{MemoryReactorClock},
so nothing is written unless the code under test writes it.
"""

from __future__ import annotations

import socket
import struct

from twisted.internet import main, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard import sending
from netguard.framing import GuardedLineReceiver
from netguard.mux import frames
from netguard.mux.frames import Flag, FrameType
from netguard.mux.limits import MuxLimits
from netguard.mux.session import _TURN_CHUNKS, MuxSession
from netguard.mux.stream import MuxStream
from netguard.relay import A, B, Splice
from netguard.sending import has_user_data, plain_socket, write_now, write_sequence_now
from tests.mux_fakes import Recorder, parse
from tests.test_relay import FakeTransport

#: Socket buffers small enough for one write to fill them, and large enough (well above
#: the loopback's MSS) that reading the peer reopens the window at once.
SNDBUF = 64 * 1024
RCVBUF = 256 * 1024


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """
    Two connected TCP sockets on 127.0.0.1.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        mine = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    return mine, peer


def read_all(peer: socket.socket) -> bytes:
    """
    Everything readable on C{peer} now, without blocking.
    """
    out = []
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        out.append(chunk)
    return b"".join(out)


class PlainSocketCase(unittest.TestCase):
    """
    A connected L{tcp.Connection} over one end of a TCP connection on 127.0.0.1, the other
    end kept as C{self.peer}.
    """

    def make_connection(self) -> tcp.Connection:
        mine, peer = tcp_pair()
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        peer.setblocking(False)
        self.addCleanup(mine.close)
        self.addCleanup(peer.close)
        self.reactor = MemoryReactorClock()
        transport = tcp.Connection(mine, Protocol(), self.reactor)
        transport.connected = 1
        self.peer = peer
        return transport


class WriteNowTests(PlainSocketCase):
    def test_sent_at_once(self) -> None:
        """
        With nothing in Twisted's buffer, the bytes are on the socket when C{write_now}
        returns: nothing is buffered and no writable event is asked for.
        """
        transport = self.make_connection()
        self.assertTrue(plain_socket(transport))
        write_now(transport, b"PING\r\n")
        self.assertEqual(read_all(self.peer), b"PING\r\n")
        self.assertFalse(has_user_data(transport))
        self.assertEqual(self.reactor.getWriters(), [])

    def test_rest_buffered_in_order(self) -> None:
        """
        What the kernel does not take waits in Twisted's buffer and the transport asks for
        a writable event; a later write goes behind it, never past it: the peer reads every
        byte once, in order.
        """
        transport = self.make_connection()
        first = bytes(range(256)) * 16384  # 4 MiB: more than the two buffers hold
        second = b"second"
        write_now(transport, first)
        self.assertTrue(has_user_data(transport))
        self.assertEqual(self.reactor.getWriters(), [transport])
        write_now(transport, second)
        received = [read_all(self.peer)]
        self.assertNotIn(second, received[0])
        for _ in range(100_000):
            if not has_user_data(transport):
                break
            transport.doWrite()
            received.append(read_all(self.peer))
        self.assertFalse(has_user_data(transport))
        received.append(read_all(self.peer))
        self.assertEqual(b"".join(received), first + second)

    def test_after_half_close_left_to_twisted(self) -> None:
        """
        Once a half-close is pending, bytes are not sent around Twisted's buffer: the write
        is Twisted's own (queued ahead of the FIN as C{write} does).
        """
        transport = self.make_connection()
        transport.loseWriteConnection()
        write_now(transport, b"late")
        self.assertEqual(read_all(self.peer), b"")
        self.assertTrue(has_user_data(transport))

    def test_not_connected_dropped(self) -> None:
        """
        A transport that is no longer connected takes nothing, as its C{write} does.
        """
        transport = self.make_connection()
        transport.connected = 0
        write_now(transport, b"gone")
        self.assertEqual(read_all(self.peer), b"")
        self.assertFalse(has_user_data(transport))

    def test_not_after_abort(self) -> None:
        """
        After C{abortConnection} (which keeps C{connected} set until the loss is reported)
        nothing more reaches the peer, as with C{write}.
        """
        transport = self.make_connection()
        transport.abortConnection()
        self.assertTrue(transport.connected)
        write_now(transport, b"after the abort")
        self.assertEqual(read_all(self.peer), b"")
        self.assertFalse(plain_socket(transport))

    def test_close_pending_left_to_twisted(self) -> None:
        """
        With a C{loseConnection} pending, bytes go through Twisted's buffer, as C{write}
        would queue them before the close.
        """
        transport = self.make_connection()
        transport.loseConnection()
        write_now(transport, b"late")
        self.assertEqual(read_all(self.peer), b"")
        self.assertFalse(plain_socket(transport))

    def test_tls_started_left_to_twisted(self) -> None:
        """
        A transport that has started TLS since it was judged plain is written through its
        own C{write} (the TLS layer), never to the socket in the clear.
        """
        transport = self.make_connection()
        written: list[bytes] = []
        transport.write = written.append  # type: ignore[method-assign]
        transport.TLS = True
        write_now(transport, b"secret")
        self.assertEqual(read_all(self.peer), b"")
        self.assertEqual(written, [b"secret"])
        self.assertFalse(plain_socket(transport))

    def test_queued_descriptors_left_to_twisted(self) -> None:
        """
        Descriptors queued on a unix transport go with the next bytes Twisted writes, so
        bytes are not sent around them.
        """
        transport = self.make_connection()
        transport._sendmsgQueue = [object()]  # type: ignore[attr-defined]
        write_now(transport, b"with the descriptor")
        self.assertEqual(read_all(self.peer), b"")
        self.assertTrue(has_user_data(transport))

    def test_only_bytes(self) -> None:
        """
        Anything but C{bytes} is the transport's C{write}'s to judge (it refuses it), never
        half-sent.
        """
        transport = self.make_connection()
        with self.assertRaises(TypeError):
            write_now(transport, bytearray(b"not bytes"))  # type: ignore[arg-type]
        self.assertEqual(read_all(self.peer), b"")

    def test_rest_behind_partly_written_buffer(self) -> None:
        """
        Bytes left in Twisted's main buffer after a partial C{doWrite} (the temporary buffer
        empty) still hold later writes back.
        """
        transport = self.make_connection()
        transport.write(bytes(range(256)) * 16384)
        transport.doWrite()
        self.assertFalse(transport._tempDataBuffer)
        self.assertTrue(has_user_data(transport))
        write_now(transport, b"after")
        received = [read_all(self.peer)]
        self.assertNotIn(b"after", received[0])

    def test_send_error_reported_by_the_transport(self) -> None:
        """
        An error from C{send} (the peer is gone) is left to the transport: the bytes go to
        its buffer and its next C{doWrite} reports the connection lost, as with C{write}.
        """
        transport = self.make_connection()
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.peer.close()  # a reset, which the loopback delivers at once
        write_now(transport, b"into the void")
        self.assertTrue(has_user_data(transport))
        self.assertIs(transport.doWrite(), main.CONNECTION_LOST)


class SpliceDirectTests(PlainSocketCase):
    def make_splice(self, target: tcp.Connection) -> tuple[Splice, FakeTransport]:
        source = FakeTransport()
        splice = Splice(source, target, clock=Clock(), idle_timeout=60.0, write_timeout=5.0)
        splice.start()
        return splice, source

    def test_relayed_bytes_sent_at_once(self) -> None:
        """
        Bytes a splice relays to a plain socket are on that socket when C{data_from}
        returns, and counted.
        """
        target = self.make_connection()
        splice, _ = self.make_splice(target)
        splice.data_from(A, b"GET key\r\n")
        self.assertEqual(read_all(self.peer), b"GET key\r\n")
        self.assertEqual(splice.counts, {A: 9, B: 0})
        self.assertEqual(self.reactor.getWriters(), [])

    def test_backpressure_when_the_kernel_is_full(self) -> None:
        """
        A relayed write the kernel does not take whole fills Twisted's buffer past its mark:
        the splice's valve pauses the source, as with an ordinary write.
        """
        target = self.make_connection()
        splice, source = self.make_splice(target)
        splice.data_from(A, b"x" * (4 << 20))
        self.assertTrue(has_user_data(target))
        self.assertEqual(source.producerState, "paused")


class LineReplyTests(PlainSocketCase):
    def test_reply_sent_at_once(self) -> None:
        """
        A line protocol's reply on a plain socket is on the socket when C{sendLine}
        returns, with no writable event asked for.
        """
        transport = self.make_connection()
        receiver = GuardedLineReceiver(clock=Clock())
        receiver.transport = transport
        receiver.sendLine(b"OK OPEN redis")
        self.assertEqual(read_all(self.peer), b"OK OPEN redis\r\n")
        self.assertEqual(self.reactor.getWriters(), [])

    def test_reply_behind_queued_bytes(self) -> None:
        """
        A reply never overtakes bytes already queued for the transport.
        """
        transport = self.make_connection()
        receiver = GuardedLineReceiver(clock=Clock())
        receiver.transport = transport
        transport.write(b"queued\r\n")
        receiver.sendLine(b"after")
        self.assertEqual(read_all(self.peer), b"")
        transport.doWrite()
        self.assertEqual(read_all(self.peer), b"queued\r\nafter\r\n")


class WriteSequenceNowTests(PlainSocketCase):
    def test_sent_at_once_in_order(self) -> None:
        """
        A header and a payload reach the socket, in order, when C{write_sequence_now}
        returns: nothing is buffered and no writable event is asked for.
        """
        transport = self.make_connection()
        write_sequence_now(transport, [b"HEADER", b"payload" * 1000, b"!"])
        self.assertEqual(read_all(self.peer), b"HEADER" + b"payload" * 1000 + b"!")
        self.assertFalse(has_user_data(transport))
        self.assertEqual(self.reactor.getWriters(), [])

    def test_rest_buffered_in_order(self) -> None:
        """
        What the kernel does not take, cut anywhere in the sequence, waits in Twisted's
        buffer; every byte reaches the peer once, in order.
        """
        transport = self.make_connection()
        chunks = [bytes([n]) * (256 * 1024 + n) for n in range(16)]
        write_sequence_now(transport, chunks)
        self.assertTrue(has_user_data(transport))
        received = [read_all(self.peer)]
        for _ in range(100_000):
            if not has_user_data(transport):
                break
            transport.doWrite()
            received.append(read_all(self.peer))
        received.append(read_all(self.peer))
        self.assertEqual(b"".join(received), b"".join(chunks))

    def test_behind_queued_bytes(self) -> None:
        """
        A sequence never overtakes bytes already queued for the transport.
        """
        transport = self.make_connection()
        transport.write(b"queued ")
        write_sequence_now(transport, [b"after"])
        self.assertEqual(read_all(self.peer), b"")
        transport.doWrite()
        self.assertEqual(read_all(self.peer), b"queued after")

    def test_other_transports_use_their_own(self) -> None:
        """
        A transport that is not Twisted's plain socket transport gets its own
        C{writeSequence}.
        """
        transport = FakeTransport()
        write_sequence_now(transport, [b"a", b"b"])
        self.assertEqual(transport.value(), b"ab")

    def test_not_after_abort(self) -> None:
        """
        An aborted connection is sent nothing more.
        """
        transport = self.make_connection()
        transport.abortConnection()
        write_sequence_now(transport, [b"after", b" the abort"])
        self.assertEqual(read_all(self.peer), b"")


class SessionFlushTests(PlainSocketCase):
    """
    A multiplexed session over a plain socket: a data frame of bulk is sent at once; small
    frames wait for the end of the reactor turn (a zero-delay call on the session's clock)
    and then leave in one C{send}; a serving end's leave as soon as C{_TURN_CHUNKS} chunks
    wait.
    """

    def make_session(self, *, client: bool = True) -> MuxSession:
        transport = self.make_connection()
        self.transport = transport
        self.clock = Clock()
        return MuxSession(
            transport,
            client=client,
            clock=self.clock,
            accept=lambda stream: None,
            limits=MuxLimits(keepalive_interval=None),
        )

    def turn_calls(self, clock: Clock) -> list[object]:
        """
        The zero-delay calls pending on C{clock}: the end of the turn (a stream's opening
        deadline is the only other call these sessions make).
        """
        return [call for call in clock.getDelayedCalls() if call.getTime() == clock.seconds()]

    def open(self, session: MuxSession) -> MuxStream:
        """
        Open a stream and end the turn, so that its opening is on the wire.
        """
        stream = session.open_stream(Recorder())
        self.clock.advance(0)
        self.opening = read_all(self.peer)
        return stream

    def test_bulk_frame_sent_at_once(self) -> None:
        """
        A 64 KiB write on a stream is on the socket, framed, when the write returns.
        """
        session = self.make_session()
        stream = self.open(session)
        payload = bytes(range(256)) * 256
        stream.write(payload)
        frames = parse(self.opening + read_all(self.peer))
        self.assertEqual(b"".join(body for _, body in frames), payload)
        self.assertFalse(has_user_data(self.transport))

    def test_small_frames_wait_for_the_turn(self) -> None:
        """
        Small writes wait for the end of the turn, then leave in order in one C{send},
        straight from the session (no writable event, nothing left in Twisted's buffer).
        """
        session = self.make_session()
        stream = session.open_stream(Recorder())
        stream.write(b"GET key\r\n")
        stream.write(b"GET other\r\n")
        self.assertEqual(read_all(self.peer), b"")
        self.assertEqual(len(self.turn_calls(self.clock)), 1)
        self.clock.advance(0)
        frames = parse(read_all(self.peer))
        self.assertEqual(
            [(header.flags, body) for header, body in frames],
            [(Flag.SYN, b""), (0, b"GET key\r\n"), (0, b"GET other\r\n")],
        )
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertFalse(has_user_data(self.transport))
        self.assertEqual(self.turn_calls(self.clock), [])

    def test_busy_turn_of_the_server_sends_early(self) -> None:
        """
        A serving end's frames leave once C{_TURN_CHUNKS} chunks wait (a data frame is two,
        a ping or a FIN one), not one chunk before; what the turn frames after that leaves at
        its end.
        """
        session = self.make_session(client=False)
        streams = [self.open(session) for _ in range(3)]
        pairs = _TURN_CHUNKS // 2
        for n in range(pairs - 1):
            streams[n % 3].write(b"%d" % n)
        session.ping()
        self.assertEqual(read_all(self.peer), b"")  # one chunk short of the bound
        streams[2].loseWriteConnection()
        first = parse(read_all(self.peer))
        self.assertEqual(len(first), pairs + 1)
        self.assertEqual(first[-2][0].type, FrameType.PING)
        self.assertEqual(first[-1][0].flags, Flag.FIN)
        streams[1].write(b"after")
        self.assertEqual(read_all(self.peer), b"")
        self.clock.advance(0)
        self.assertEqual([body for _, body in parse(read_all(self.peer))], [b"after"])

    def test_busy_turn_of_the_client_waits_for_its_end(self) -> None:
        """
        A client's frames of a busy turn all wait for its end (below C{_SEND_AT_ONCE}
        bytes), then leave together in order.
        """
        session = self.make_session()
        stream = self.open(session)
        for n in range(_TURN_CHUNKS * 2):
            stream.write(b"%d" % n)
        self.assertEqual(read_all(self.peer), b"")
        self.clock.advance(0)
        self.assertEqual(
            [body for _, body in parse(read_all(self.peer))],
            [b"%d" % n for n in range(_TURN_CHUNKS * 2)],
        )

    def test_paused_session_holds_the_turn(self) -> None:
        """
        While the transport has paused the session, the end of the turn sends nothing; the
        frames leave when it resumes.
        """
        session = self.make_session()
        stream = self.open(session)
        stream.write(b"held")
        session.pauseProducing()
        self.clock.advance(0)
        self.assertEqual(read_all(self.peer), b"")
        session.resumeProducing()
        self.clock.advance(0)
        self.assertEqual([body for _, body in parse(read_all(self.peer))], [b"held"])

    def test_end_sends_what_waits_and_cancels_the_turn(self) -> None:
        """
        A session that ends with frames waiting for the turn writes them before its
        go-away, and leaves no call for the turn behind.
        """
        session = self.make_session()
        session.ping()
        session.go_away()
        self.assertIsNotNone(session.ended)
        self.assertEqual(self.turn_calls(self.clock), [])
        self.transport.doWrite()
        frames = parse(read_all(self.peer))
        self.assertEqual(
            [header.type for header, _ in frames], [FrameType.PING, FrameType.GO_AWAY]
        )

    def test_owner_ending_an_open_connection_sends_what_waits(self) -> None:
        """
        An owner that ends the session itself while the connection is open (an orderly
        close: go-away, then C{connection_lost}, then closing the transport) still delivers
        what the turn framed: the stream's data, then the go-away.
        """
        session = self.make_session()
        stream = self.open(session)
        stream.write(b"last request")
        session.go_away()
        session.connection_lost(None)
        self.transport.loseConnection()
        self.transport.doWrite()
        frames = parse(read_all(self.peer))
        self.assertEqual(
            [(header.type, body) for header, body in frames],
            [(FrameType.DATA, b"last request"), (FrameType.GO_AWAY, b"")],
        )
        self.assertEqual(self.turn_calls(self.clock), [])

    def test_frames_after_a_real_loss_are_not_counted(self) -> None:
        """
        When the connection is really gone, what waited is dropped, not counted as sent.
        """
        session = self.make_session()
        stream = self.open(session)
        sent = session.bytes_out
        stream.write(b"never sent")
        self.transport.connectionLost(Failure(main.CONNECTION_LOST))
        session.connection_lost(None)
        self.assertEqual(session.bytes_out, sent)

    def test_other_transports_get_each_batch_at_once(self) -> None:
        """
        A transport that is not a plain socket (TLS, a wrapper, a test's) gets every batch
        as it is framed, with no call on the clock.
        """
        transport = StringTransport()
        clock = Clock()
        session = MuxSession(
            transport,
            client=True,
            clock=clock,
            accept=lambda stream: None,
            limits=MuxLimits(keepalive_interval=None),
        )
        session.open_stream(Recorder()).write(b"now")
        self.assertEqual(self.turn_calls(clock), [])
        self.assertEqual([body for _, body in parse(transport.value())], [b"", b"now"])


class _TakesSome:
    """
    A hostile socket stand-in whose C{sendmsg} takes exactly C{n} bytes.
    """

    def __init__(self, n: int) -> None:
        self.n = n

    def sendmsg(self, chunks: list[bytes]) -> int:
        return self.n


class WriteSequenceCutTests(PlainSocketCase):
    def test_every_cut_leaves_exactly_the_rest(self) -> None:
        """
        Whatever the socket takes (nothing, all, a cut inside any chunk or on a boundary,
        empty chunks included), exactly the bytes not taken are queued, in order.
        """
        chunks = [b"ab", b"", b"cde", b"f", b""]
        whole = b"".join(chunks)
        for n in range(len(whole) + 1):
            transport = self.make_connection()
            transport.socket = _TakesSome(n)  # type: ignore[assignment]
            queued: list[bytes] = []
            transport.writeSequence = queued.extend  # type: ignore[method-assign]
            write_sequence_now(transport, list(chunks))
            self.assertEqual(b"".join(queued), whole[n:], n)

    def test_many_chunks_left_to_twisted(self) -> None:
        """
        More chunks than L{sending.MAX_CHUNKS_AT_ONCE} (many small frames) go through
        Twisted's buffer, which joins them for one send.
        """
        transport = self.make_connection()
        chunks = [b"x"] * (sending.MAX_CHUNKS_AT_ONCE + 1)
        write_sequence_now(transport, chunks)
        self.assertEqual(read_all(self.peer), b"")
        self.assertTrue(has_user_data(transport))


class SessionBackpressureTests(PlainSocketCase):
    def test_peer_not_reading_pauses_the_session(self) -> None:
        """
        A session sending bulk at once to a peer that does not read is still paused by its
        transport, with Twisted's buffer bounded by its high-water mark plus one batch,
        however much window the peer grants.
        """
        transport = self.make_connection()
        session = MuxSession(
            transport,
            client=True,
            clock=Clock(),
            accept=lambda stream: None,
            limits=MuxLimits(keepalive_interval=None),
        )
        transport.registerProducer(session, True)
        stream = session.open_stream(Recorder())
        transport.doWrite()
        most = 0
        for turn in range(200):
            flags = Flag.ACK if turn == 0 else 0
            session.data_received(
                frames.encode(FrameType.WINDOW_UPDATE, flags, stream.stream_id, 64 * 1024)
            )
            stream.write(b"x" * 65536)
            most = max(most, transport._tempDataLen + len(transport.dataBuffer) - transport.offset)
        self.assertEqual(transport.producerPaused, True)
        self.assertLessEqual(most, transport.bufferSize + 2 * 65536)

# -*- test-case-name: tests.test_mux_session -*-
"""
One stream of a multiplexed session, seen by its protocol as a half-closeable transport.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IConsumer, IPushProducer, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netguard.mux.frames import INITIAL_WINDOW

if TYPE_CHECKING:
    from netguard.mux.session import MuxSession
    from netguard.relay import DelayedCall

_log = Logger()


class StreamReset(ConnectionLost):
    """
    The peer reset the stream (RST).
    """


class StreamTimeout(ConnectionLost):
    """
    The peer did not answer our SYN, or our FIN, in time; the stream was reset.
    """


class SessionLost(ConnectionLost):
    """
    The session carrying the stream ended (go-away, violation or connection lost).
    """


class StreamProtocol(Protocol):
    """
    What a stream calls on its protocol (the part of L{twisted.internet.interfaces.IProtocol}
    a stream needs). If the protocol also has C{readConnectionLost}, the peer's FIN calls it
    (half-close); otherwise the stream is closed on the peer's FIN, as Twisted does for
    protocols that are not half-closeable.
    """

    def makeConnection(self, transport: MuxStream) -> None: ...

    def dataReceived(self, data: bytes) -> None: ...

    def connectionLost(self, reason: Failure) -> None: ...


class PushProducer(Protocol):
    """
    A streaming producer (L{twisted.internet.interfaces.IPushProducer}).
    """

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


class StreamState(enum.Enum):
    """
    The states of the spec, as seen from this end, derived from four facts the session keeps
    per stream (acknowledged, our FIN, their FIN, reset)::

        SYN_SENT      --their ACK-->                      ESTABLISHED
        SYN_RECEIVED  --accept(), first write or FIN-->   ESTABLISHED (we send the ACK)
        ESTABLISHED   --our FIN-->   LOCAL_CLOSE   --their FIN-->  CLOSED
        ESTABLISHED   --their FIN--> REMOTE_CLOSE  --our FIN-->    CLOSED
        any           --RST either way, open or close timeout-->  RESET

    Either FIN may come before the ACK (data and FIN may ride on the SYN); the state then
    shows the FIN. No frame but RST is accepted on C{SYN_SENT} without the ACK until our FIN
    has gone out; after it, the peer's first frame counts as its ACK (hashicorp/yamux never
    acknowledges a stream whose FIN reached it before it sent anything). We send nothing but
    RST on C{SYN_RECEIVED} before our ACK.
    """

    SYN_SENT = "syn-sent"
    SYN_RECEIVED = "syn-received"
    ESTABLISHED = "established"
    LOCAL_CLOSE = "local-close"
    REMOTE_CLOSE = "remote-close"
    CLOSED = "closed"
    RESET = "reset"


@implementer(ITransport, IConsumer, IPushProducer)
class MuxStream:
    """
    A stream: a transport for its protocol, and the per-stream state of the session
    (windows, queues, half-closes).

    Writes are queued and framed by the session in round-robin turns, as the peer's window
    allows; a registered producer is paused while more than the session's
    C{stream_high_water} bytes are queued. L{pauseProducing} stops delivering data and,
    with it, the window updates that let the peer send more.

    @ivar stream_id: the stream's id.
    @ivar bytes_in: payload bytes received.
    @ivar bytes_out: payload bytes framed for sending.
    @ivar protocol: the stream's protocol, once attached.
    """

    __slots__ = (
        "_session",
        "stream_id",
        "outbound",
        "protocol",
        "bytes_in",
        "bytes_out",
        "acked",
        "local_fin",
        "remote_fin",
        "reset",
        "released",
        "send_window",
        "queue",
        "queue_offset",
        "queued",
        "fin_pending",
        "in_ready",
        "producer",
        "producer_paused",
        "recv_window",
        "window",
        "buffer",
        "buffered",
        "reading_paused",
        "eof_pending",
        "read_closed",
        "lost",
        "timer",
        "heard",
        "__weakref__",
    )

    def __init__(self, session: MuxSession, stream_id: int, *, outbound: bool) -> None:
        """
        @param session: the session carrying the stream.
        @param stream_id: its id.
        @param outbound: whether this end opened it.
        """
        self._session = session
        self.stream_id = stream_id
        self.outbound = outbound
        self.protocol: StreamProtocol | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        # wire state
        self.acked = False
        self.local_fin = False
        self.remote_fin = False
        self.reset = False
        self.released = True
        # send side
        self.send_window = INITIAL_WINDOW
        self.queue: deque[bytes] | None = None
        self.queue_offset = 0
        self.queued = 0
        self.fin_pending = False
        self.in_ready = False
        self.producer: PushProducer | None = None
        self.producer_paused = False
        # receive side
        self.recv_window = INITIAL_WINDOW
        self.window = INITIAL_WINDOW
        self.buffer: bytearray | None = None
        self.buffered = 0
        self.reading_paused = False
        self.eof_pending = False
        self.read_closed = False
        self.lost = False
        self.timer: DelayedCall | None = None
        self.heard = 0.0

    @property
    def state(self) -> StreamState:
        """
        @return: the stream's state.
        """
        if self.reset:
            return StreamState.RESET
        if self.local_fin and self.remote_fin:
            return StreamState.CLOSED
        if self.local_fin:
            return StreamState.LOCAL_CLOSE
        if self.remote_fin:
            return StreamState.REMOTE_CLOSE
        if self.acked:
            return StreamState.ESTABLISHED
        return StreamState.SYN_SENT if self.outbound else StreamState.SYN_RECEIVED

    @property
    def outstanding(self) -> int:
        """
        @return: receive credit this stream holds: bytes the peer may still send plus bytes
            held for a paused protocol.
        """
        return self.recv_window + self.buffered

    def attach(self, protocol: StreamProtocol) -> None:
        """
        Connect C{protocol} to this stream (calls its C{makeConnection}; if that raises, the
        stream is reset).
        """
        self.protocol = protocol
        self._guarded(protocol.makeConnection, self)

    # ITransport

    def write(self, data: bytes) -> None:
        """
        Queue C{data} for the peer. Ignored once the write side is closed.
        """
        if data:
            self._session._stream_write(self, [data if type(data) is bytes else bytes(data)])

    def writeSequence(self, data: list[bytes]) -> None:  # type: ignore[override]
        """
        Queue each of C{data} for the peer.
        """
        chunks = [bytes(chunk) for chunk in data if chunk]
        if chunks:
            self._session._stream_write(self, chunks)

    def loseWriteConnection(self) -> None:
        """
        Half-close: send FIN once the queued bytes are framed.
        """
        self._session._stream_fin(self)

    def loseConnection(self) -> None:
        """
        Close: send FIN once the queued bytes are framed and stop delivering data; the stream
        ends when the peer's FIN arrives (or after the session's close timeout, with a
        reset). Also releases a stream the peer reset before it was accepted.
        """
        self._session._stream_close_read(self)
        self._session._stream_fin(self)
        self._session._stream_release(self)

    def abortConnection(self) -> None:
        """
        Reset the stream (RST) at once, dropping queued bytes.
        """
        self._session._stream_reset(self, Failure(ConnectionAborted()))
        self._session._stream_release(self)

    def release(self) -> None:
        """
        The application is done with a stream the peer reset before it was accepted: from now
        on it no longer counts against the session's stream cap.
        """
        self._session._stream_release(self)

    def accept(self) -> None:
        """
        Accept a stream the peer opened (ACK). The first write or FIN accepts it too.
        """
        self._session._stream_accept(self)

    def getPeer(self) -> IAddress:
        """
        @return: the peer address of the session's transport.
        """
        return self._session.transport.getPeer()

    def getHost(self) -> IAddress:
        """
        @return: the host address of the session's transport.
        """
        return self._session.transport.getHost()

    # IConsumer

    def registerProducer(self, producer: PushProducer, streaming: bool) -> None:
        """
        Register a push producer: paused while too many bytes are queued for the peer.
        """
        if self.producer is not None:
            raise RuntimeError("a producer is already registered")
        self.producer = producer
        self.producer_paused = False
        if self.queued >= self._session.limits.stream_high_water:
            self.pause_producer()

    def unregisterProducer(self) -> None:
        """
        Forget the producer.
        """
        self.producer = None
        self.producer_paused = False

    # IPushProducer: our receive side

    def pauseProducing(self) -> None:
        """
        Stop delivering data; the peer gets no more window for this stream meanwhile.
        """
        self.reading_paused = True

    def resumeProducing(self) -> None:
        """
        Deliver what was held, then data as it comes, and give the window back.
        """
        if self.reading_paused:
            self.reading_paused = False
            self._session._stream_resume_reading(self)

    def stopProducing(self) -> None:
        """
        The consumer is gone: close the stream.
        """
        self.loseConnection()

    # events from the session

    def deliver(self, data: bytes) -> None:
        """
        Hand C{data} to the protocol, or hold it while reading is paused.
        """
        self.bytes_in += len(data)
        if self.read_closed:
            return
        if self.reading_paused or self.buffer:
            # One growing buffer, not one object per frame: what is held costs its bytes
            # (plus the bytearray's slack), however small the peer's frames.
            if self.buffer is None:
                self.buffer = bytearray(data)
            else:
                self.buffer += data
            self.buffered += len(data)
            self._session._held(len(data))
        elif self.protocol is not None:
            self._guarded(self.protocol.dataReceived, data)

    def deliver_eof(self) -> None:
        """
        Tell the protocol the peer half-closed (after any held data).
        """
        if self.reading_paused or self.buffer:
            self.eof_pending = True
            return
        self.eof_pending = False
        if self.read_closed or self.protocol is None or self.lost:
            return
        half_close = getattr(self.protocol, "readConnectionLost", None)
        if half_close is not None:
            self._guarded(half_close)
        else:
            self.loseConnection()

    def drain_buffer(self) -> int:
        """
        Deliver held data while reading is not paused.

        @return: bytes delivered.
        """
        delivered = 0
        while self.buffer and not self.reading_paused and not self.lost:
            data = bytes(self.buffer)
            self.buffer = None
            self.buffered -= len(data)
            self._session._held(-len(data))
            delivered += len(data)
            if self.protocol is not None and not self.read_closed:
                self._guarded(self.protocol.dataReceived, data)
        if not self.buffer and self.eof_pending and not self.reading_paused:
            self.deliver_eof()
        return delivered

    def take(self, room: int) -> bytes:
        """
        Take up to C{room} bytes from the front of the send queue; a write larger than a
        frame is cut at an offset into it, never copied whole again per frame.

        @return: the bytes taken (empty if nothing is queued).
        """
        queue = self.queue
        if queue is None:
            return b""
        parts: list[bytes] = []
        taken = 0
        offset = self.queue_offset
        while queue and taken < room:
            head = queue[0]
            want = room - taken
            left = len(head) - offset
            if left <= want:
                queue.popleft()
                parts.append(head[offset:] if offset else head)
                taken += left
                offset = 0
            else:
                parts.append(head[offset : offset + want])
                offset += want
                taken += want
        self.queue_offset = offset
        self.queued -= taken
        if not queue:
            self.queue = None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def writable(self) -> None:
        """
        The queue is empty again: resume a paused producer.
        """
        if self.producer is not None and self.producer_paused and not self.lost:
            self.producer_paused = False
            self._guarded(self.producer.resumeProducing)

    def pause_producer(self) -> None:
        """
        Too much is queued: pause the registered producer.
        """
        if self.producer is not None and not self.producer_paused and not self.lost:
            self.producer_paused = True
            self._guarded(self.producer.pauseProducing)

    def end(self, reason: Failure) -> None:
        """
        The stream is over: tell the protocol once.
        """
        if self.lost:
            return
        self.lost = True
        self.buffer = None
        self.queue = None
        self.queue_offset = 0
        self.queued = 0
        producer, self.producer = self.producer, None
        if producer is not None:
            self._guarded(producer.stopProducing)
        if self.protocol is not None:
            self._guarded(self.protocol.connectionLost, reason)

    # the deadline of its opening or its close

    def arm_close(self) -> None:
        """
        Start the close deadline of a stream whose FIN we asked for (sent or waiting for
        window), unless the peer has sent its own or our opening still waits for its ACK
        (the ACK starts it).
        """
        if self.timer is not None or self.remote_fin or self.reset or self.lost:
            return
        if self.outbound and not self.acked:
            return
        clock = self._session._clock
        self.heard = clock.seconds()
        self.timer = clock.callLater(self._session.limits.close_timeout, self._close_expired)

    def _close_expired(self) -> None:
        """
        The close deadline came: reset the stream, unless the peer sent a frame on it since
        the deadline was set (then wait C{close_timeout} from that frame).
        """
        clock = self._session._clock
        left = self.heard + self._session.limits.close_timeout - clock.seconds()
        if left > 0:
            self.timer = clock.callLater(left, self._close_expired)
            return
        self.timed_out()

    def timed_out(self) -> None:
        """
        The opening was not answered, or the close not completed, in time: reset.
        """
        self.timer = None
        self._session._stream_reset(self, Failure(StreamTimeout()))

    def stop_timer(self) -> None:
        """
        Cancel the opening's or the close's deadline, if one runs.
        """
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _guarded(self, method: Callable[..., object], *args: object) -> None:
        """
        Call the application (its protocol or producer); if that raises (a bug in the
        application, not the peer), log it and reset this stream only, never the session.
        """
        try:
            method(*args)
        except Exception:
            _log.failure(
                "stream {stream_id}: application raised",
                event="mux.stream.error",
                stream_id=self.stream_id,
            )
            self.abortConnection()


#: The failure a cleanly closed stream's protocol gets.
def closed_cleanly() -> Failure:
    """
    @return: the failure for a stream closed by FIN both ways.
    """
    return Failure(ConnectionDone())

# -*- test-case-name: tests.test_mux_session -*-
"""
One end of a yamux session, sans-I/O: bytes in through L{MuxSession.data_received}, frames
out through the transport it is given, time from an injected clock.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netguard.mux import frames
from netguard.mux.credit import DeadCredit, ReceiveCredit
from netguard.mux.frames import (
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_UINT32,
    Flag,
    FrameError,
    FrameType,
    GoAwayCode,
    Violation,
    pack_header,
)
from netguard.mux.limits import MuxLimits, TokenBucket
from netguard.mux.noeffect import NoEffectFrames, has_effect
from netguard.mux.outcome import OpenRefused, SessionEnd, SessionTransport
from netguard.mux.reader import FrameReader
from netguard.mux.stream import (
    MuxStream,
    SessionLost,
    StreamProtocol,
    StreamReset,
    closed_cleanly,
)
from netguard.relay import DelayedCall, ReactorTime
from netguard.sending import plain_socket, write_now, write_sequence_now

__all__ = ["MuxSession", "OpenRefused", "SessionEnd", "SessionTransport"]

_log = Logger()

#: The flags as plain ints, for the per-frame path (IntFlag operations cost more).
_SYN, _ACK, _FIN, _RST = int(Flag.SYN), int(Flag.ACK), int(Flag.FIN), int(Flag.RST)

#: Bytes framed per batch before the batch is handed to the transport (so a transport that
#: pauses us on a full buffer does so within about this much).
_BATCH = 64 * 1024

#: A flush at least this large (a data frame of bulk) is sent at once where the connection
#: is a plain socket with nothing waiting (L{write_sequence_now}: no copy of the payload into
#: Twisted's buffer). Smaller ones wait for the end of the reactor turn, where the turn's
#: frames of every stream leave in one C{send}; on the serving end, only until
#: L{_TURN_CHUNKS} chunks wait: the client then starts on the first answers of a busy turn
#: while the server frames the rest (C{docs/multiplexing.md} section 8.6).
_SEND_AT_ONCE = 32 * 1024

#: Chunks (a data frame is two, a header and its payload) that make a serving end's frames
#: leave before the turn ends.
_TURN_CHUNKS = 16


@implementer(IPushProducer)
class MuxSession:
    """
    One end of a multiplexed session.

    The owner feeds received bytes to L{data_received}, calls L{connection_lost} when the
    transport is gone, and registers the session as the transport's streaming producer so
    that L{pauseProducing} stops its output when the transport's buffer is full (control
    frames are then held, up to C{max_control_backlog}). Streams the peer opens are offered
    to C{accept}; streams this end opens come from L{open_stream}.

    Outgoing data is framed in round-robin turns of at most C{max_frame} bytes per stream.
    Received data is delivered at once unless the stream's reading is paused; window
    updates give credit back as data is delivered, at most 256 KiB per stream, and are
    withheld while the bytes held for paused streams reach C{memory_budget}.

    @ivar transport: the transport the frames go to.
    @ivar client: whether this end is the client (opens odd ids).
    @ivar limits: the bounds.
    @ivar bytes_in: bytes received on the transport.
    @ivar bytes_out: bytes handed to the transport.
    @ivar streams_refused: peer openings reset for the stream cap or a go-away.
    @ivar early_resets: streams the peer reset before they were accepted.
    @ivar ended: how the session ended, once it has.
    @ivar remote_go_away: the code of the peer's go-away, once received.
    """

    def __init__(
        self,
        transport: SessionTransport,
        *,
        client: bool,
        clock: ReactorTime,
        accept: Callable[[MuxStream], StreamProtocol | None],
        limits: MuxLimits | None = None,
        on_end: Callable[[SessionEnd], None] | None = None,
    ) -> None:
        """
        @param transport: where frames go.
        @param client: whether this end is the client.
        @param clock: the reactor, or a L{twisted.internet.task.Clock}.
        @param accept: called with each stream the peer opens; returns its protocol, or
            None to reset it.
        @param limits: the bounds (defaults: L{MuxLimits}()).
        @param on_end: called once when the session ends.
        """
        self.transport = transport
        self.client = client
        self.limits = limits = limits if limits is not None else MuxLimits()
        self._clock = clock
        self._accept = accept
        self._on_end = on_end
        now = clock.seconds()
        self._open_bucket = TokenBucket(limits.open_rate, limits.open_burst, now)
        self._reset_bucket = TokenBucket(limits.early_reset_rate, limits.early_reset_burst, now)
        self._ping_bucket = TokenBucket(limits.ping_rate, limits.ping_burst, now)
        self._streams: dict[int, MuxStream] = {}
        self._next_id = 1 if client else 2
        self._peer_max = 0
        self._reader = FrameReader(self)
        self._out: list[bytes] = []
        self._out_size = 0
        #: Whether small frames wait for the end of the turn (a plain socket) rather than
        #: going to the transport as they are framed (TLS, a wrapper, a test's transport).
        self._by_turn = plain_socket(transport)
        self._turn_chunks = _TURN_CHUNKS if not client else sys.maxsize
        self._turn: DelayedCall | None = None
        self._ready: deque[MuxStream] = deque()
        self._receive = ReceiveCredit(
            limits.memory_budget, self._send_update, limits.max_window, limits.window_budget
        )
        self._dead = DeadCredit(limits.max_streams)
        self._no_effect = NoEffectFrames(limits, clock, now, self._dead)
        self._paused = False
        self._pumping = False
        #: The go-away code we sent, once we have.
        self._local_go_away: GoAwayCode | None = None
        self.remote_go_away: GoAwayCode | None = None
        self.ended: SessionEnd | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.streams_refused = 0
        self.early_resets = 0
        self._ping_id = 0
        self._ping_outstanding: int | None = None
        self._keepalive: DelayedCall | None = None
        self._ping_deadline: DelayedCall | None = None
        self._idle: DelayedCall | None = None
        self._linger: DelayedCall | None = None
        if limits.keepalive_interval is not None:
            self._keepalive = clock.callLater(limits.keepalive_interval, self._send_keepalive)
        self._check_idle()

    # the owner's side

    @property
    def open_streams(self) -> int:
        """
        @return: streams counted against the cap (open, or reset but not yet released).
        """
        return len(self._streams)

    @property
    def input_held(self) -> int:
        """
        @return: bytes of a partial frame kept for the next read.
        """
        return self._reader.held

    @property
    def credit(self) -> int:
        """
        @return: receive credit across the session (see L{MuxStream.outstanding}).
        """
        return self._receive.credit

    @property
    def held(self) -> int:
        """
        @return: bytes received and held for streams whose reading is paused (what
            C{memory_budget} bounds).
        """
        return self._receive.held

    def stream(self, stream_id: int) -> MuxStream | None:
        """
        @return: the stream with that id, if it is still counted.
        """
        return self._streams.get(stream_id)

    def open_stream(self, protocol: StreamProtocol) -> MuxStream:
        """
        Open a stream (SYN) and connect C{protocol} to it; data written at once follows the
        SYN without waiting for the ACK.

        @return: the stream.
        @raise OpenRefused: if the session has ended, either side sent go-away, the stream
            cap is reached or the ids are used up.
        """
        if self.ended is not None:
            raise OpenRefused("session-ended")
        if self._local_go_away is not None or self.remote_go_away is not None:
            raise OpenRefused("go-away")
        if len(self._streams) >= self.limits.max_streams:
            raise OpenRefused("stream-limit")
        if self._next_id > MAX_UINT32:
            raise OpenRefused("ids-exhausted")
        stream_id = self._next_id
        self._next_id += 2
        stream = self._add_stream(stream_id, outbound=True)
        self._control(frames.encode(FrameType.WINDOW_UPDATE, Flag.SYN, stream_id, 0))
        stream.timer = self._clock.callLater(self.limits.open_timeout, stream.timed_out)
        stream.attach(protocol)
        self._flush()
        return stream

    def go_away(self, code: GoAwayCode = GoAwayCode.NORMAL) -> None:
        """
        Send go-away: the peer's new streams are reset from now on, ours are refused, open
        streams go on; the session ends (L{Violation.LOCAL_GO_AWAY}) when the last is gone,
        after what its streams wrote (their last data and FIN) is handed to the transport.
        """
        if self.ended is not None or self._local_go_away is not None:
            return
        self._local_go_away = code
        self._control(frames.encode(FrameType.GO_AWAY, 0, 0, code))
        self._flush()
        self._check_drained()

    def ping(self) -> None:
        """
        Send a keepalive ping now; the session ends if it is not answered within
        C{keepalive_timeout}.
        """
        if self.ended is not None or self._ping_outstanding is not None:
            return
        self._ping_id = (self._ping_id + 1) & MAX_UINT32
        self._ping_outstanding = self._ping_id
        self._control(frames.encode(FrameType.PING, Flag.SYN, 0, self._ping_id))
        self._ping_deadline = self._clock.callLater(
            self.limits.keepalive_timeout, self._ping_expired
        )
        self._flush()

    def connection_lost(self, reason: Failure | None = None) -> None:
        """
        The transport is gone: every stream ends with L{SessionLost}. An owner may say so
        while the connection is still open (an orderly close, the peer's half-close) and
        close it next: frames waiting for the end of the turn are handed to it first, as if
        they had gone to its buffer when framed.
        """
        self._cancel(self._linger)
        self._linger = None
        if (
            self._out
            and self.ended is None
            and not self._paused
            and not getattr(self.transport, "disconnected", False)
        ):
            self._send()
        self._end(SessionEnd(Violation.CONNECTION_LOST, GoAwayCode.NORMAL, True), send=False)

    # IPushProducer: our output

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: frame nothing more until L{resumeProducing}.
        """
        self._paused = True

    def resumeProducing(self) -> None:
        """
        The transport has room again: send what was held, then go on framing.
        """
        if not self._paused:
            return
        self._paused = False
        self._flush()
        self._pump()

    def stopProducing(self) -> None:
        """
        The transport is gone.
        """
        self.connection_lost()

    # input

    def data_received(self, data: bytes) -> None:
        """
        Handle every whole frame in C{data} and what was left before (L{FrameReader}). A
        data frame longer than its stream's receive window ends the session from its header
        alone, before any of its payload is held.
        """
        if self.ended is not None:
            return
        if type(data) is not bytes:
            data = bytes(data)
        self.bytes_in += len(data)
        try:
            self._reader.feed(data)
        except FrameError as error:
            self._fail(error.violation, error.detail)
            return
        if self.ended is None:
            self._flush()
            self._pump()

    def _check_length(self, header: frames.Header) -> None:
        stream = self._streams.get(header.stream_id)
        if header.flags & _SYN:
            window = INITIAL_WINDOW
        elif stream is None or stream.reset:
            window = self._no_effect.dead_window(header.stream_id)
        else:
            window = stream.recv_window
        if header.length > window:
            raise FrameError(
                Violation.WINDOW_EXCEEDED,
                f"stream {header.stream_id}: {header.length} bytes, window {window}",
            )

    def _handle(self, header: frames.Header, payload: bytes) -> None:
        kind = header.type
        if kind is FrameType.PING:
            if not self._ping_bucket.take(self._clock.seconds()):
                raise FrameError(Violation.PING_FLOOD)
            if header.flags & _SYN:
                self._control(frames.encode(FrameType.PING, Flag.ACK, 0, header.length))
            elif header.length == self._ping_outstanding:
                self._ping_outstanding = None
                self._cancel(self._ping_deadline)
                self._ping_deadline = None
            return
        if kind is FrameType.GO_AWAY:
            code = GoAwayCode(header.length)
            if code is GoAwayCode.NORMAL and self.remote_go_away is not None:
                self._no_effect.count()
            self.remote_go_away = code
            if code is not GoAwayCode.NORMAL:
                self._end(SessionEnd(Violation.REMOTE_GO_AWAY, code, True), send=False)
            return
        flags = header.flags
        stream_id = header.stream_id
        if flags & _SYN:
            stream = self._peer_syn(stream_id, flags)
            if stream is None:
                return
        else:
            found = self._streams.get(stream_id)
            if found is None:
                self._unknown_stream(stream_id)
                self._no_effect.drop(header)
                return
            stream = found
            if stream.reset or stream.lost:
                self._no_effect.drop(header)
                return
            if not header.length and not has_effect(stream, flags):
                self._no_effect.count()
            if stream.timer is not None:
                stream.heard = self._clock.seconds()
        if stream.reset or stream.lost:
            return
        if stream.outbound and not stream.acked:
            # hashicorp/yamux sends its ACK only from SYN_RECEIVED: when our FIN reached it
            # first (data and FIN right behind the SYN), it never sends one, and its first
            # frame on the stream stands for it. Before our FIN has gone out, a frame
            # without ACK is a protocol error.
            if flags & _ACK or (stream.local_fin and not flags & _RST):
                stream.acked = True
                stream.stop_timer()
                if stream.local_fin or stream.fin_pending:
                    stream.arm_close()
            elif not flags & _RST:
                raise FrameError(Violation.FRAME_BEFORE_ACK, f"stream {stream_id}")
        if flags & _RST:
            if not stream.outbound and not stream.acked:
                self.early_resets += 1
                stream.released = False
                if not self._reset_bucket.take(self._clock.seconds()):
                    raise FrameError(Violation.RAPID_RESET)
            self._stream_dead(stream, StreamReset())
            self._dead.forget(stream_id)
            return
        if kind is FrameType.WINDOW_UPDATE:
            if stream.send_window + header.length > MAX_UINT32:
                raise FrameError(Violation.WINDOW_OVERFLOW, f"stream {stream_id}")
            stream.send_window += header.length
            if header.length:
                self._schedule(stream)
        elif payload:
            if stream.remote_fin:
                raise FrameError(Violation.DATA_AFTER_FIN, f"stream {stream_id}")
            stream.recv_window -= len(payload)
            self._receive.received(len(payload))
            stream.deliver(payload)
            if not stream.lost:
                self._receive.grant(stream, grow=True)
        if flags & _FIN and not stream.remote_fin and not stream.lost:
            stream.remote_fin = True
            if not stream.fin_pending:
                # The peer has done its part; what remains (delivering held data) is ours.
                stream.stop_timer()
            stream.deliver_eof()
            self._maybe_closed(stream)

    def _peer_syn(self, stream_id: int, flags: int) -> MuxStream | None:
        if not frames.is_peer_stream(stream_id, self.client):
            raise FrameError(Violation.BAD_STREAM_ID, f"SYN for our stream {stream_id}")
        if stream_id in self._streams:
            raise FrameError(Violation.DUPLICATE_SYN, f"stream {stream_id}")
        if not self._open_bucket.take(self._clock.seconds()):
            raise FrameError(Violation.OPEN_RATE)
        # Ids need not arrive in order: hashicorp/yamux sends the SYNs of concurrent
        # openings in whatever order its goroutines run.
        self._peer_max = max(self._peer_max, stream_id)
        if flags & _RST:
            return None
        if self._local_go_away is not None or len(self._streams) >= self.limits.max_streams:
            self.streams_refused += 1
            self._control(frames.encode(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0))
            return None
        stream = self._add_stream(stream_id, outbound=False)
        try:
            protocol = self._accept(stream)
        except Exception:
            _log.failure(
                "stream {stream_id}: accept raised",
                event="mux.stream.error",
                stream_id=stream_id,
            )
            protocol = None
        if protocol is None:
            self._stream_reset(stream, None)
            return None
        stream.attach(protocol)
        return stream

    def _unknown_stream(self, stream_id: int) -> None:
        if frames.is_peer_stream(stream_id, self.client):
            never_opened = stream_id > self._peer_max
        else:
            never_opened = stream_id >= self._next_id
        if never_opened:
            raise FrameError(Violation.UNKNOWN_STREAM, f"stream {stream_id}")
        # A frame for a stream that has ended: a normal race (its data was in flight), dropped.

    # streams

    def _add_stream(self, stream_id: int, *, outbound: bool) -> MuxStream:
        stream = MuxStream(self, stream_id, outbound=outbound)
        self._streams[stream_id] = stream
        self._dead.forget(stream_id)
        self._receive.opened(stream)
        self._check_idle()
        return stream

    def _stream_write(self, stream: MuxStream, chunks: list[bytes]) -> None:
        if stream.local_fin or stream.fin_pending or stream.reset or stream.lost:
            return
        if not stream.acked:
            self._stream_accept(stream)
        if (
            stream.queue is None
            and len(chunks) == 1
            and not self._ready
            and not self._paused
            and not self._pumping
            and self.ended is None
        ):
            # Nothing waits before it and it fits one frame and the window: framed at once,
            # as the round-robin turn would frame it.
            chunk = chunks[0]
            size = len(chunk)
            if size <= stream.send_window and size <= self.limits.max_frame:
                stream.send_window -= size
                stream.bytes_out += size
                out = self._out
                out.append(pack_header(0, 0, 0, stream.stream_id, size))
                out.append(chunk)
                self._out_size += HEADER_SIZE + size
                self._flush()
                return
        queue = stream.queue
        if queue is None:
            queue = stream.queue = deque()
        for chunk in chunks:
            queue.append(chunk)
            stream.queued += len(chunk)
        if stream.queued >= self.limits.stream_high_water:
            stream.pause_producer()
        self._schedule(stream)
        self._pump()

    def _stream_fin(self, stream: MuxStream) -> None:
        if stream.local_fin or stream.fin_pending or stream.reset or stream.lost:
            return
        self._stream_accept(stream)
        stream.fin_pending = True
        stream.arm_close()
        self._schedule(stream)
        self._pump()

    def _stream_accept(self, stream: MuxStream) -> None:
        if stream.outbound or stream.acked or stream.reset or stream.lost:
            return
        stream.acked = True
        self._control(frames.encode(FrameType.WINDOW_UPDATE, Flag.ACK, stream.stream_id, 0))
        self._receive.grant(stream)
        self._flush()

    def _stream_reset(self, stream: MuxStream, reason: Failure | None) -> None:
        if stream.reset or stream.lost or self.ended is not None:
            return
        self._control(frames.encode(FrameType.WINDOW_UPDATE, Flag.RST, stream.stream_id, 0))
        self._stream_dead(stream, reason.value if reason is not None else StreamReset())
        self._flush()

    def _held(self, delta: int) -> None:
        self._receive.hold(delta)

    def _send_update(self, stream_id: int, delta: int) -> None:
        self._control(frames.encode(FrameType.WINDOW_UPDATE, 0, stream_id, delta))

    def _stream_close_read(self, stream: MuxStream) -> None:
        stream.read_closed = True
        stream.eof_pending = False
        self._receive.drop_held(stream)
        stream.buffered = 0
        stream.buffer = None
        self._flush()

    def _stream_release(self, stream: MuxStream) -> None:
        if not stream.released:
            stream.released = True
            self._forget(stream)

    def _stream_resume_reading(self, stream: MuxStream) -> None:
        stream.drain_buffer()
        if not stream.lost:
            self._receive.grant(stream)
            self._maybe_closed(stream)
        self._receive.regrant()
        self._flush()

    def _schedule(self, stream: MuxStream) -> None:
        if stream.in_ready or stream.lost or stream.reset or stream.local_fin:
            return
        if (stream.queued and stream.send_window > 0) or (
            stream.fin_pending and not stream.queued
        ):
            stream.in_ready = True
            self._ready.append(stream)

    def _pump(self) -> None:
        """
        Frame queued data in round-robin turns, one frame per busy stream per turn, handing
        the transport a batch every C{_BATCH} bytes, until nothing can be sent or the
        transport pauses us.
        """
        if self._pumping or self._paused or self.ended is not None:
            return
        self._pumping = True
        limit = self.limits.max_frame
        drained: list[MuxStream] = []
        try:
            while self._ready and not self._paused and self.ended is None:
                stream = self._ready.popleft()
                stream.in_ready = False
                if stream.lost or stream.reset:
                    continue
                chunk = stream.take(min(limit, stream.send_window))
                last = stream.fin_pending and not stream.queued
                if chunk:
                    stream.send_window -= len(chunk)
                    stream.bytes_out += len(chunk)
                    header = pack_header(0, 0, _FIN if last else 0, stream.stream_id, len(chunk))
                    self._emit(header)
                    self._emit(chunk)
                elif last:
                    fin = frames.encode(FrameType.WINDOW_UPDATE, Flag.FIN, stream.stream_id, 0)
                    self._emit(fin)
                if last:
                    stream.fin_pending = False
                    stream.local_fin = True
                    self._local_fin_sent(stream)
                else:
                    self._schedule(stream)
                if not stream.queued:
                    drained.append(stream)
                if self._out_size >= _BATCH:
                    self._flush()
        finally:
            self._pumping = False
        self._flush()
        for stream in drained:
            if not stream.queued:
                stream.writable()

    def _local_fin_sent(self, stream: MuxStream) -> None:
        if stream.remote_fin:
            # Both FINs are out: what remains (delivering held data) is ours, not the peer's.
            stream.stop_timer()
            self._maybe_closed(stream)
        else:
            stream.arm_close()

    def _maybe_closed(self, stream: MuxStream) -> None:
        if stream.local_fin and stream.remote_fin and not stream.eof_pending and not stream.buffer:
            stream.stop_timer()
            self._stream_dead(stream, closed_cleanly().value)

    def _stream_dead(self, stream: MuxStream, reason: BaseException) -> None:
        """
        The stream is over on the wire: stop its timers, return its credit (remembering
        what the peer may still send), tell its protocol, and stop counting it unless it
        waits for the application's release.
        """
        if stream.reset or stream.lost:
            return
        if not (stream.local_fin and stream.remote_fin):
            stream.reset = True
        if not stream.remote_fin:
            self._dead.remember(stream.stream_id, stream.recv_window)
        stream.stop_timer()
        self._receive.ended(stream)
        stream.recv_window = 0
        stream.buffered = 0
        stream.end(Failure(reason))
        self._forget(stream)

    def _forget(self, stream: MuxStream) -> None:
        if not (stream.lost and stream.released):
            return
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            self._check_idle()
            self._check_drained()

    # output

    def _emit(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)

    def _control(self, frame: bytes) -> None:
        """
        Queue a control frame; while the transport is paused at most C{max_control_backlog}
        are held, and one more means the peer is not reading.
        """
        self._emit(frame)
        if self._paused and len(self._out) > self.limits.max_control_backlog:
            self._fail(Violation.PEER_NOT_READING, f"{len(self._out)} frames held", abort=True)

    def _flush(self) -> None:
        if self._paused or not self._out or self.ended is not None:
            return
        if self._by_turn and self._out_size < _SEND_AT_ONCE and len(self._out) < self._turn_chunks:
            if self._turn is None:
                self._turn = self._clock.callLater(0, self._turn_ended)
            return
        self._send()

    def _turn_ended(self) -> None:
        self._turn = None
        if self._out and not self._paused and self.ended is None:
            self._send()

    def _send(self) -> None:
        out, self._out = self._out, []
        size, self._out_size = self._out_size, 0
        self.bytes_out += size
        if size >= _SEND_AT_ONCE:
            write_sequence_now(self.transport, out)
        elif self._by_turn:
            write_now(self.transport, b"".join(out))
        else:
            self.transport.writeSequence(out)

    # timers and the end

    def _send_keepalive(self) -> None:
        interval = self.limits.keepalive_interval
        assert interval is not None
        self._keepalive = self._clock.callLater(interval, self._send_keepalive)
        self.ping()

    def _ping_expired(self) -> None:
        self._ping_deadline = None
        self._fail(Violation.KEEPALIVE_TIMEOUT, f"ping {self._ping_outstanding}", abort=True)

    def _check_idle(self) -> None:
        timeout = self.limits.idle_timeout
        if timeout is None or self.ended is not None:
            return
        if self._streams:
            self._cancel(self._idle)
            self._idle = None
        elif self._idle is None or not self._idle.active():
            self._idle = self._clock.callLater(timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle = None
        self._end(SessionEnd(Violation.IDLE, GoAwayCode.NORMAL, False), send=True)

    def _check_drained(self) -> None:
        code = self._local_go_away
        if code is not None and not self._streams and self.ended is None:
            self._end(SessionEnd(Violation.LOCAL_GO_AWAY, code, False), send=False)

    def _fail(self, violation: Violation, detail: str = "", *, abort: bool = False) -> None:
        """
        End the session for a violation: go-away 1 (protocol error) and close; or, with
        C{abort} (the peer stopped reading or answering), abort the transport at once with
        nothing more sent (the end is recorded with code 2, internal error).
        """
        code = GoAwayCode.INTERNAL_ERROR if abort else GoAwayCode.PROTOCOL_ERROR
        self._end(SessionEnd(violation, code, False, detail), send=True, abort=abort)

    def _end(self, end: SessionEnd, *, send: bool, abort: bool = False) -> None:
        """
        End the session once. Unless the transport is gone or aborted, everything framed so
        far (held control frames, the last data and FIN of a drained stream) is written,
        then the go-away if C{send}, then the transport is closed, and aborted if it has
        not closed within C{linger_timeout} (a peer that does not read cannot keep it).
        """
        if self.ended is not None:
            return
        lost = end.violation is Violation.CONNECTION_LOST
        out, self._out = self._out, []
        if send and not abort and not lost:
            # Past any held frames: the go-away is the last thing the peer reads from us.
            out.append(frames.encode(FrameType.GO_AWAY, 0, 0, end.code))
            self._out_size += HEADER_SIZE
        self.ended = end
        if out and not abort and not lost:
            # Written even while the transport has paused us: what was framed is bounded
            # (held control frames, one batch), and the linger deadline bounds its delivery.
            self.bytes_out += self._out_size
            self.transport.writeSequence(out)
        self._out_size = 0
        self._ready.clear()
        self._receive.clear()
        self._reader.clear()
        for timer in (self._keepalive, self._ping_deadline, self._idle, self._turn):
            self._cancel(timer)
        reason = SessionLost(end.violation.value)
        for stream in list(self._streams.values()):
            stream.stop_timer()
            stream.reset = stream.reset or not (stream.local_fin and stream.remote_fin)
            stream.end(Failure(reason))
        self._streams.clear()
        if not lost:
            if abort:
                self.transport.abortConnection()
            else:
                self.transport.loseConnection()
                self._linger = self._clock.callLater(
                    self.limits.linger_timeout, self._linger_expired
                )
        if self._on_end is not None:
            try:
                self._on_end(end)
            except Exception:
                _log.failure("session end: on_end raised", event="mux.session.error")

    def _linger_expired(self) -> None:
        """
        The transport has not closed within C{linger_timeout} of the end: abort it.
        """
        self._linger = None
        self.transport.abortConnection()

    @staticmethod
    def _cancel(timer: DelayedCall | None) -> None:
        if timer is not None and timer.active():
            timer.cancel()

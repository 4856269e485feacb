"""
A minimal sans-I/O yamux session (hashicorp/yamux spec.md), written only to measure the framing
in bench/mux_candidates.py: 12-byte headers, SYN/ACK/FIN/RST, per-stream windows with window
updates, ping and go-away. Not product code: no keepalive timer, no stream idle timeout.

Bounds it keeps whatever the peer sends: a data frame longer than the stream's receive window
(refused from its header, before the payload is buffered), a frame for a stream id above any
opened, a SYN for a stream still open or of the wrong parity, a non-zero version or an unknown
type is a protocol error (go-away 1, session over); a SYN beyond C{max_streams} is reset; the send
window never grows past 2**32 - 1.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

HEADER = struct.Struct(">BBHII")
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
#: The window every stream starts with (the spec's 256 KiB).
INITIAL_WINDOW = 256 * 1024
GO_AWAY_NORMAL, GO_AWAY_PROTOCOL, GO_AWAY_INTERNAL = 0, 1, 2


class YamuxHandler(Protocol):
    """
    What a session tells its owner.
    """

    def stream_opened(self, sid: int) -> None:
        """A peer opened stream C{sid} (a SYN arrived); the owner accepts or resets it."""

    def stream_acked(self, sid: int) -> None:
        """The peer accepted our stream C{sid}."""

    def stream_data(self, sid: int, data: bytes) -> None:
        """Bytes for stream C{sid}."""

    def stream_fin(self, sid: int) -> None:
        """The peer half-closed stream C{sid}."""

    def stream_reset(self, sid: int) -> None:
        """The peer reset stream C{sid}."""

    def stream_writable(self, sid: int) -> None:
        """Every byte queued on C{sid} has been framed (its window had room)."""

    def session_ended(self, code: int) -> None:
        """Go-away received or sent with C{code}; no frame is accepted after it."""


class _Stream:
    """
    Per-stream state.
    """

    __slots__ = ("recv_window", "send_window", "queue", "local_fin", "remote_fin", "fin_queued")

    def __init__(self, window: int) -> None:
        self.recv_window = window
        self.send_window = INITIAL_WINDOW
        self.queue: list[bytes] = []
        self.local_fin = False
        self.remote_fin = False
        self.fin_queued = False


class YamuxSession:
    """
    One end of a yamux session: feed it bytes with L{data_received}; it hands frames to
    C{send} and events to C{handler}.
    """

    def __init__(
        self,
        client: bool,
        send: Callable[[bytes], None],
        handler: YamuxHandler,
        *,
        window: int = INITIAL_WINDOW,
        max_streams: int = 8192,
        max_frame: int = 16384,
    ) -> None:
        """
        @param client: whether this end opens odd-numbered streams.
        @param send: where frames go.
        @param handler: where events go.
        @param window: receive window per stream (announced with SYN/ACK when above 256 KiB).
        @param max_streams: the most streams open at once.
        @param max_frame: the largest data payload this end frames.
        """
        self._send = send
        self._handler = handler
        self._window = window
        self._max_streams = max_streams
        self._max_frame = max_frame
        self._next_id = 1 if client else 2
        self._peer_parity = 0 if client else 1
        self._peer_max = 0
        self._streams: dict[int, _Stream] = {}
        self._buffer = bytearray()
        self._ended = False

    @property
    def open_streams(self) -> int:
        """
        @return: streams not yet closed both ways.
        """
        return len(self._streams)

    def _frame(self, kind: int, flags: int, sid: int, length: int, payload: bytes = b"") -> None:
        self._send(HEADER.pack(0, kind, flags, sid, length) + payload)

    def open_stream(self, first: bytes = b"") -> int:
        """
        Open a stream (SYN), optionally with its first bytes.

        @return: the stream id.
        """
        sid = self._next_id
        self._next_id += 2
        stream = self._streams[sid] = _Stream(self._window)
        grant = self._window - INITIAL_WINDOW
        if first and grant == 0:
            self._write_now(sid, stream, SYN, first)
        else:
            self._frame(WINDOW_UPDATE, SYN, sid, grant)
            if first:
                self.write(sid, first)
        return sid

    def accept(self, sid: int, first: bytes = b"") -> None:
        """
        Accept stream C{sid} the peer opened (ACK), optionally with its first bytes.
        """
        stream = self._streams.get(sid)
        grant = self._window - INITIAL_WINDOW
        if stream is not None and first and grant == 0 and len(first) <= stream.send_window:
            self._write_now(sid, stream, ACK, first)
            return
        self._frame(WINDOW_UPDATE, ACK, sid, grant)
        if first:
            self.write(sid, first)

    def reset(self, sid: int) -> None:
        """
        Reset stream C{sid} (RST) and forget it.
        """
        if self._streams.pop(sid, None) is not None or sid % 2 == self._peer_parity:
            self._frame(WINDOW_UPDATE, RST, sid, 0)

    def write(self, sid: int, data: bytes) -> None:
        """
        Queue C{data} on stream C{sid}; it is framed as the stream's send window allows.
        """
        stream = self._streams.get(sid)
        if stream is None or stream.local_fin or stream.fin_queued:
            return
        stream.queue.append(data)
        self._flush(sid, stream)

    def queued(self, sid: int) -> int:
        """
        @return: bytes queued on C{sid} and not yet framed.
        """
        stream = self._streams.get(sid)
        return 0 if stream is None else sum(map(len, stream.queue))

    def end(self, sid: int) -> None:
        """
        Half-close stream C{sid} (FIN) once its queued bytes are framed.
        """
        stream = self._streams.get(sid)
        if stream is None or stream.local_fin:
            return
        stream.fin_queued = True
        self._flush(sid, stream)

    def ping(self, opaque: int) -> None:
        """
        Send a ping (the peer echoes C{opaque}).
        """
        self._frame(PING, SYN, 0, opaque)

    def go_away(self, code: int = GO_AWAY_NORMAL) -> None:
        """
        End the session with C{code}.
        """
        if not self._ended:
            self._ended = True
            self._frame(GO_AWAY, 0, 0, code)
            self._handler.session_ended(code)

    def _write_now(self, sid: int, stream: _Stream, flags: int, data: bytes) -> None:
        stream.send_window -= len(data)
        self._frame(DATA, flags, sid, len(data), data)

    def _flush(self, sid: int, stream: _Stream, notify: bool = False) -> None:
        queue = stream.queue
        while queue and stream.send_window > 0:
            head = queue[0]
            room = min(stream.send_window, self._max_frame)
            if len(head) <= room:
                queue.pop(0)
                chunk = head
            else:
                chunk, queue[0] = head[:room], head[room:]
            last = stream.fin_queued and not queue
            self._write_now(sid, stream, FIN if last else 0, chunk)
            if last:
                self._local_fin(sid, stream)
                return
        if not queue:
            if stream.fin_queued and not stream.local_fin:
                self._frame(WINDOW_UPDATE, FIN, sid, 0)
                self._local_fin(sid, stream)
            elif notify and not stream.local_fin:
                self._handler.stream_writable(sid)

    def _local_fin(self, sid: int, stream: _Stream) -> None:
        stream.local_fin = True
        if stream.remote_fin:
            del self._streams[sid]

    def data_received(self, data: bytes) -> None:
        """
        Parse every whole frame in C{data} (and what was left before).
        """
        if self._ended:
            return
        buf = self._buffer
        buf += data
        offset = 0
        size = len(buf)
        unpack = HEADER.unpack_from
        while size - offset >= 12:
            version, kind, flags, sid, length = unpack(buf, offset)
            if version != 0 or kind > GO_AWAY:
                self.go_away(GO_AWAY_PROTOCOL)
                return
            if kind == DATA:
                if size - offset - 12 < length:
                    stream = self._streams.get(sid)
                    window = stream.recv_window if stream is not None else self._window
                    if length > window:
                        self.go_away(GO_AWAY_PROTOCOL)
                        return
                    break
                payload = bytes(buf[offset + 12 : offset + 12 + length])
                offset += 12 + length
                if not self._on_stream_frame(kind, flags, sid, length, payload):
                    return
            else:
                offset += 12
                if kind == PING:
                    if flags & SYN:
                        self._frame(PING, ACK, 0, length)
                elif kind == GO_AWAY:
                    self._ended = True
                    self._handler.session_ended(length)
                    return
                elif not self._on_stream_frame(kind, flags, sid, length, b""):
                    return
        del buf[:offset]

    def _on_stream_frame(
        self, kind: int, flags: int, sid: int, length: int, payload: bytes
    ) -> bool:
        handler = self._handler
        stream = self._streams.get(sid)
        if flags & SYN:
            # A SYN for a stream still open, of our parity or for id 0 is an error. Ids need not
            # arrive in order: hashicorp/yamux's concurrent OpenStream calls send their SYNs
            # in whatever order the goroutines run.
            if stream is not None or sid == 0 or sid % 2 != self._peer_parity:
                self.go_away(GO_AWAY_PROTOCOL)
                return False
            self._peer_max = max(self._peer_max, sid)
            if len(self._streams) >= self._max_streams:
                self._frame(WINDOW_UPDATE, RST, sid, 0)
                return True
            stream = self._streams[sid] = _Stream(self._window)
            handler.stream_opened(sid)
        elif stream is None:
            # A frame for a stream already closed or reset: dropped (RST races are normal).
            # One for a stream never opened, by either side, ends the session.
            ours = sid % 2 != self._peer_parity
            if sid == 0 or (sid >= self._next_id if ours else sid > self._peer_max):
                self.go_away(GO_AWAY_PROTOCOL)
                return False
            return True
        if flags & RST:
            del self._streams[sid]
            handler.stream_reset(sid)
            return True
        if flags & ACK:
            handler.stream_acked(sid)
        if kind == WINDOW_UPDATE:
            if stream.send_window + length > 0xFFFFFFFF:
                self.go_away(GO_AWAY_PROTOCOL)
                return False
            stream.send_window += length
            if length and (stream.queue or stream.fin_queued):
                self._flush(sid, stream, notify=True)
        elif length:
            if length > stream.recv_window or stream.remote_fin:
                self.go_away(GO_AWAY_PROTOCOL)
                return False
            stream.recv_window -= length
            handler.stream_data(sid, payload)
            # The owner consumes at once here: give the window back once half is used (not
            # on the peer's last frame: it sends no more, and the stream may close now).
            if (
                stream.recv_window <= self._window // 2
                and not flags & FIN
                and sid in self._streams
            ):
                grant = self._window - stream.recv_window
                stream.recv_window = self._window
                self._frame(WINDOW_UPDATE, 0, sid, grant)
        if flags & FIN and sid in self._streams:
            stream.remote_fin = True
            if stream.local_fin:
                del self._streams[sid]
            handler.stream_fin(sid)
        return True


def interop_smoke(port: int, streams: int = 100, bulk: int = 8 * 1024 * 1024) -> str:
    """
    Drive a yamux echo server (such as hashicorp/yamux's, see docs/multiplexing.md) on
    127.0.0.1:C{port} over one blocking socket: C{streams} streams of 1 KiB each and one of
    C{bulk} bytes (far past the 256 KiB window, so the peer's window updates are needed), each
    half-closed by us; every byte must come back in order, then the peer's FIN.

    @return: a one-line summary.
    @raise AssertionError: on any difference.
    """
    import os
    import socket

    class Collect:
        def __init__(self) -> None:
            self.got: dict[int, bytearray] = {}
            self.fins: set[int] = set()
            self.events: list[str] = []

        def stream_opened(self, sid: int) -> None:
            self.events.append(f"unexpected open {sid}")

        def stream_acked(self, sid: int) -> None:
            pass

        def stream_data(self, sid: int, data: bytes) -> None:
            self.got.setdefault(sid, bytearray()).extend(data)

        def stream_fin(self, sid: int) -> None:
            self.fins.add(sid)

        def stream_reset(self, sid: int) -> None:
            self.events.append(f"reset {sid}")

        def stream_writable(self, sid: int) -> None:
            pass

        def session_ended(self, code: int) -> None:
            self.events.append(f"go-away {code}")

    out: list[bytes] = []
    handler = Collect()
    session = YamuxSession(True, out.append, handler)
    sent: dict[int, bytes] = {}
    for _ in range(streams):
        payload = os.urandom(1024)
        sid = session.open_stream(payload)
        session.end(sid)
        sent[sid] = payload
    big = os.urandom(bulk)
    sid = session.open_stream()
    session.write(sid, big)
    session.end(sid)
    sent[sid] = big
    with socket.create_connection(("127.0.0.1", port), timeout=30.0) as sock:
        for _ in range(100_000):
            if out:
                sock.sendall(b"".join(out))
                out.clear()
            if len(handler.fins) == len(sent) or handler.events:
                break
            data = sock.recv(262144)
            if not data:
                break
            session.data_received(data)
        problems = list(handler.events)
        session.go_away()
        sock.sendall(b"".join(out))
    assert not problems, problems
    assert handler.fins == set(sent), f"{len(handler.fins)} of {len(sent)} streams ended"
    for sid, payload in sent.items():
        assert bytes(handler.got.get(sid, b"")) == payload, f"stream {sid} differs"
    return f"{len(sent)} streams echoed ({sum(map(len, sent.values()))} bytes), all half-closed"


if __name__ == "__main__":
    import sys

    print(interop_smoke(int(sys.argv[1])))

"""
The framings bench/mux_candidates.py compares, both ends of each over Twisted: plain TCP (one
connection per stream), HTTP/2 via h2 (extended CONNECT, RFC 8441, naming the service in
C{:path}), yamux (bench/mux_yamux_min.py, service named in-band on the first line) and SSH
connection-layer channels (RFC 4254) through Twisted Conch's SSHConnection over a bare packet
framing. Every framing gets the same write coalescing (L{Out}), window and frame size.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

#: Receive window per stream and largest data frame, the same for every candidate.
WINDOW = 256 * 1024
#: C{MUX_BENCH_FRAME} in the environment (set by the parent's C{--frame}) changes the frame size.
FRAME = int(os.environ.get("MUX_BENCH_FRAME", "16384"))

# -- output coalescing, the same for every framing ------------------------------------------


class Out:
    """
    Bytes a framing produces, written to the transport once per read (or once per reactor turn
    when produced outside a read): each candidate gets the same write coalescing.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.chunks: list[bytes] = []
        self.transport: Any = None
        self.reading = False
        self.pending: Any = None
        self.paused = False
        self.on_resume: Callable[[], None] = lambda: None

    def attach(self, transport: Any) -> None:
        """Write to C{transport}, set TCP_NODELAY, and follow its backpressure."""
        self.transport = transport
        transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)

    def write(self, data: bytes) -> None:
        """Queue C{data}; written at the end of the current read or on the next turn."""
        self.chunks.append(data)
        if not self.reading and self.pending is None:
            self.pending = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Write everything queued in one C{writeSequence}."""
        self.pending = None
        if self.chunks and self.transport is not None:
            chunks, self.chunks = self.chunks, []
            self.transport.writeSequence(chunks)

    def read(self, process: Callable[[bytes], None], data: bytes) -> None:
        """Run C{process(data)}, then flush what it produced."""
        self.reading = True
        try:
            process(data)
        finally:
            self.reading = False
        self.flush()

    def pauseProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.paused = False
        self.on_resume()

    def stopProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.paused = True


# -- the server side of each candidate -------------------------------------------------------


class ServiceLogic:
    """
    The two services every candidate offers: C{echo} returns every byte and half-closes after
    the client does; C{sink} counts bytes and answers the count (8 bytes) at the client's EOF.
    """

    def __init__(self, service: bytes) -> None:
        self.echo = service == b"echo"
        self.count = 0

    def data(self, data: bytes, write: Callable[[bytes], None]) -> None:
        """Bytes from the client; C{write} sends bytes back on the same stream."""
        if self.echo:
            write(data)
        else:
            self.count += len(data)

    def eof(self, write: Callable[[bytes], None]) -> None:
        """The client's half-close; C{write} may still send the answer."""
        if not self.echo:
            write(struct.pack(">Q", self.count))


def tcp_server(reactor: Any, port: int, sink_port: int) -> None:
    """Listen on C{port} (echo) and C{sink_port} (sink), one TCP connection per stream."""
    from twisted.internet import protocol
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from zope.interface import implementer

    @implementer(IHalfCloseableProtocol)
    class Plain(protocol.Protocol):
        service = b"echo"

        def connectionMade(self) -> None:  # noqa: N802
            self.transport.setTcpNoDelay(True)
            self.logic = ServiceLogic(self.service)

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.logic.data(data, self.transport.write)

        def readConnectionLost(self) -> None:  # noqa: N802
            self.logic.eof(self.transport.write)
            self.transport.loseConnection()

        def writeConnectionLost(self) -> None:  # noqa: N802
            pass

    class Sink(Plain):
        service = b"sink"

    for cls, p in ((Plain, port), (Sink, sink_port)):
        reactor.listenTCP(
            p, protocol.Factory.forProtocol(cls), backlog=1024, interface="127.0.0.1"
        )


def h2_server(reactor: Any, port: int) -> None:
    """Listen on C{port}: HTTP/2, each stream an extended CONNECT naming its service."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings
    from twisted.internet import protocol

    class H2Server(protocol.Protocol):
        def connectionMade(self) -> None:  # noqa: N802
            self.out = Out(reactor)
            self.out.attach(self.transport)
            self.out.on_resume = self._drain_all
            cfg = h2.config.H2Configuration(client_side=False, header_encoding=None)
            self.conn = h2.connection.H2Connection(cfg)
            self.conn.initiate_connection()
            # Applied by h2 when the peer acknowledges them (frame size, header list size).
            self.conn.update_settings(
                {
                    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 8192,
                    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                    h2.settings.SettingCodes.MAX_FRAME_SIZE: FRAME,
                    h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
                    h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 4096,
                }
            )
            self.conn.increment_flow_control_window(64 * 1024 * 1024)
            self.streams: dict[int, ServiceLogic] = {}
            self.queues: dict[int, list[bytes]] = {}
            self._emit()

        def _emit(self) -> None:
            data = self.conn.data_to_send()
            if data:
                self.out.write(data)

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.out.read(self._process, data)

        def _process(self, data: bytes) -> None:
            conn = self.conn
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = dict(event.headers)
                    sid = event.stream_id
                    path = headers.get(b":path", b"/")
                    if headers.get(b":protocol") != b"netguard" or path not in (
                        b"/echo",
                        b"/sink",
                    ):
                        conn.send_headers(sid, [(b":status", b"404")], end_stream=True)
                        continue
                    self.streams[sid] = ServiceLogic(path[1:])
                    conn.send_headers(sid, [(b":status", b"200")])
                elif isinstance(event, h2.events.DataReceived):
                    sid = event.stream_id
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                    logic = self.streams.get(sid)
                    if logic is not None:
                        logic.data(event.data, lambda d, s=sid: self._send(s, d))
                elif isinstance(event, h2.events.StreamEnded):
                    sid = event.stream_id
                    logic = self.streams.pop(sid, None)
                    if logic is not None:
                        logic.eof(lambda d, s=sid: self._send(s, d))
                        self._send(sid, None)
                elif isinstance(event, h2.events.StreamReset):
                    self.streams.pop(event.stream_id, None)
                    self.queues.pop(event.stream_id, None)
                elif isinstance(event, h2.events.WindowUpdated):
                    if event.stream_id:
                        self._drain(event.stream_id)
                    else:
                        self._drain_all()
            self._emit()

        def _send(self, sid: int, data: bytes | None) -> None:
            self.queues.setdefault(sid, []).append(data)  # type: ignore[arg-type]
            self._drain(sid)

        def _drain(self, sid: int) -> None:
            queue = self.queues.get(sid)
            conn = self.conn
            while queue:
                head = queue[0]
                if head is None:
                    conn.end_stream(sid)
                    del self.queues[sid]
                    return
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if room <= 0:
                    return
                if len(head) <= room:
                    queue.pop(0)
                    conn.send_data(sid, head)
                else:
                    conn.send_data(sid, head[:room])
                    queue[0] = head[room:]
            if queue is not None and not queue:
                del self.queues[sid]

        def _drain_all(self) -> None:
            for sid in list(self.queues):
                self._drain(sid)
            self._emit()

    reactor.listenTCP(port, protocol.Factory.forProtocol(H2Server), interface="127.0.0.1")


def yamux_server(reactor: Any, port: int) -> None:
    """Listen on C{port}: yamux, each stream naming its service on its first line."""
    from mux_yamux_min import YamuxSession
    from twisted.internet import protocol

    class YamuxServer(protocol.Protocol):
        def connectionMade(self) -> None:  # noqa: N802
            self.out = Out(reactor)
            self.out.attach(self.transport)
            self.session = YamuxSession(
                False, self.out.write, self, window=WINDOW, max_frame=FRAME
            )
            # Per stream: None until the service line arrives, then its logic.
            self.streams: dict[int, ServiceLogic | None] = {}
            self.lines: dict[int, bytes] = {}

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.out.read(self.session.data_received, data)

        def stream_opened(self, sid: int) -> None:
            self.streams[sid] = None
            self.lines[sid] = b""

        def stream_acked(self, sid: int) -> None:
            pass

        def stream_data(self, sid: int, data: bytes) -> None:
            logic = self.streams.get(sid)
            if logic is None:
                # The service is named in-band: yamux has no headers and RST has no reason.
                line = self.lines[sid] + data
                end = line.find(b"\n")
                if end < 0:
                    if len(line) > 64:
                        self.session.reset(sid)
                        self._forget(sid)
                    else:
                        self.lines[sid] = line
                    return
                del self.lines[sid]
                service, rest = line[:end], line[end + 1 :]
                if service not in (b"echo", b"sink"):
                    self.session.write(sid, b"ERR NO_SUCH_SERVICE\n")
                    self.session.end(sid)
                    self.streams.pop(sid, None)
                    return
                logic = self.streams[sid] = ServiceLogic(service)
                self.session.accept(sid, b"OK\n")
                data = rest
                if not data:
                    return
            logic.data(data, lambda d: self.session.write(sid, d))

        def stream_fin(self, sid: int) -> None:
            logic = self.streams.pop(sid, None)
            if logic is not None:
                logic.eof(lambda d: self.session.write(sid, d))
            self.session.end(sid)

        def stream_reset(self, sid: int) -> None:
            self._forget(sid)

        def _forget(self, sid: int) -> None:
            self.streams.pop(sid, None)
            self.lines.pop(sid, None)

        def stream_writable(self, sid: int) -> None:
            pass

        def session_ended(self, code: int) -> None:
            self.transport.loseConnection()

    reactor.listenTCP(port, protocol.Factory.forProtocol(YamuxServer), interface="127.0.0.1")


#: SSH message numbers the framing recognises (RFC 4254 connection layer only).
SSH_CHANNEL_TYPE = b"netguard-stream@netguard"


class PacketTransport:
    """
    What Twisted Conch's L{SSHConnection} needs of an SSH transport, over a bare framing of
    (uint32 length, byte message number, payload) on an already-authenticated stream.
    """

    def __init__(self, out: Out, tcp: Any) -> None:
        self.out = out
        self.transport = tcp

    def sendPacket(self, message: int, payload: bytes) -> None:  # noqa: N802 - Conch's name
        """Frame one packet."""
        self.out.write(struct.pack(">IB", len(payload) + 1, message) + payload)

    def sendUnimplemented(self) -> None:  # noqa: N802 - Conch's name
        self.transport.loseConnection()

    def loseConnection(self) -> None:  # noqa: N802 - Conch's name
        self.transport.loseConnection()

    def getPeer(self) -> Any:  # noqa: N802
        return self.transport.getPeer()

    def getHost(self) -> Any:  # noqa: N802
        return self.transport.getHost()

    def logPrefix(self) -> str:  # noqa: N802
        return "mux"


#: Largest SSH packet the framing accepts (RFC 4253 asks for at least 35000).
SSH_MAX_PACKET = max(35000, FRAME + 64)


def ssh_packets(buffer: bytearray, data: bytes, deliver: Callable[[int, bytes], None]) -> bool:
    """
    Append C{data} to C{buffer} and hand every whole packet to C{deliver}.

    @return: C{False} on an oversized or empty packet (the session must end).
    """
    buffer += data
    offset = 0
    size = len(buffer)
    while size - offset >= 5:
        (length,) = struct.unpack_from(">I", buffer, offset)
        if length < 1 or length > SSH_MAX_PACKET:
            return False
        if size - offset - 4 < length:
            break
        message = buffer[offset + 4]
        payload = bytes(buffer[offset + 5 : offset + 4 + length])
        offset += 4 + length
        deliver(message, payload)
    del buffer[:offset]
    return True


def ssh_server(reactor: Any, port: int) -> None:
    """Listen on C{port}: SSH channels through Conch, the service in CHANNEL_OPEN."""
    from twisted.conch.ssh import channel, common, connection
    from twisted.internet import protocol

    class ServiceChannel(channel.SSHChannel):
        name = SSH_CHANNEL_TYPE

        def __init__(self, service: bytes, *a: Any, **kw: Any) -> None:
            super().__init__(*a, localWindow=WINDOW, localMaxPacket=FRAME, **kw)
            self.logic = ServiceLogic(service)

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.logic.data(data, self.write)

        def eofReceived(self) -> None:  # noqa: N802
            self.logic.eof(self.write)
            self.conn.sendEOF(self)
            self.loseConnection()

        def closed(self) -> None:
            pass

    class Connection(connection.SSHConnection):
        def getChannel(self, kind: bytes, window: int, max_packet: int, data: bytes) -> Any:  # noqa: N802
            from twisted.conch import error

            service, _ = common.getNS(data)
            if kind != SSH_CHANNEL_TYPE:
                raise error.ConchError("unknown channel", connection.OPEN_UNKNOWN_CHANNEL_TYPE)
            if service not in (b"echo", b"sink"):
                raise error.ConchError("NO_SUCH_SERVICE", connection.OPEN_CONNECT_FAILED)
            chan = ServiceChannel(service, remoteWindow=window, remoteMaxPacket=max_packet)
            chan.conn = self
            return chan

    class SSHServer(protocol.Protocol):
        def connectionMade(self) -> None:  # noqa: N802
            self.out = Out(reactor)
            self.out.attach(self.transport)
            self.conn = Connection()
            self.conn.transport = PacketTransport(self.out, self.transport)
            self.conn.serviceStarted()
            self.buffer = bytearray()

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.out.read(self._process, data)

        def _process(self, data: bytes) -> None:
            if not ssh_packets(self.buffer, data, self.conn.packetReceived):
                self.transport.loseConnection()

        def connectionLost(self, reason: Any) -> None:  # noqa: N802
            self.conn.serviceStopped()

    reactor.listenTCP(port, protocol.Factory.forProtocol(SSHServer), interface="127.0.0.1")


# -- the client side: one stream API over every candidate -------------------------------------


class App:
    """
    What a stream tells the test driving it.
    """

    def on_open(self) -> None:
        """The stream is accepted."""

    def on_data(self, data: bytes) -> None:
        """Bytes arrived on the stream."""

    def on_end(self) -> None:
        """The stream is over (both directions closed)."""

    def on_refused(self, why: str) -> None:
        """The stream was refused or reset."""

    def on_writable(self) -> None:
        """The stream has room again after L{Stream.ready} was false."""


class Stream:
    """
    A client stream: C{write}, C{end} (half-close) and C{ready} (room to write more now).
    """

    def write(self, data: bytes) -> None:
        """Queue bytes on the stream."""

    def end(self) -> None:
        """Half-close the stream."""

    def ready(self) -> bool:
        """Whether a write now would be framed at once (window and transport both free)."""
        return True


def tcp_client(reactor: Any, port: int, sink_port: int) -> Any:
    """Fire with an opener that makes one TCP connection per stream."""
    from twisted.internet import defer, protocol
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from zope.interface import implementer

    @implementer(IHalfCloseableProtocol)
    class Conn(protocol.Protocol, Stream):
        def __init__(self, app: App) -> None:
            self.app = app
            self.paused = False

        def connectionMade(self) -> None:  # noqa: N802
            self.transport.setTcpNoDelay(True)
            self.transport.registerProducer(self, True)
            self.app.on_open()

        def pauseProducing(self) -> None:  # noqa: N802
            self.paused = True

        def resumeProducing(self) -> None:  # noqa: N802
            self.paused = False
            self.app.on_writable()

        def stopProducing(self) -> None:  # noqa: N802
            self.paused = True

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.app.on_data(data)

        def readConnectionLost(self) -> None:  # noqa: N802
            self.transport.loseConnection()

        def writeConnectionLost(self) -> None:  # noqa: N802
            pass

        def connectionLost(self, reason: Any) -> None:  # noqa: N802
            self.app.on_end()

        def write(self, data: bytes) -> None:
            self.transport.write(data)

        def end(self) -> None:
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()

        def ready(self) -> bool:
            return not self.paused

    class Opener:
        def open(self, service: bytes, app: App) -> Stream:
            conn = Conn(app)
            target = port if service == b"echo" else sink_port
            creator = protocol.ClientCreator(reactor, lambda: conn)
            d = creator.connectTCP("127.0.0.1", target)
            d.addErrback(lambda f: app.on_refused(str(f.value)))
            return conn

    return defer.succeed(Opener())


def h2_client(reactor: Any, port: int, sink_port: int) -> Any:
    """Fire with an HTTP/2 session (once the server allows extended CONNECT)."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings
    from twisted.internet import defer, protocol

    ready: defer.Deferred[Any] = defer.Deferred()

    class H2Stream(Stream):
        def __init__(self, proto: H2Client, sid: int) -> None:
            self.proto = proto
            self.sid = sid
            self.queue: list[bytes | None] = []

        def write(self, data: bytes) -> None:
            self.queue.append(data)
            self.proto.drain(self)

        def end(self) -> None:
            self.queue.append(None)
            self.proto.drain(self)

        def ready(self) -> bool:
            return not self.queue and not self.proto.out.paused

    class H2Client(protocol.Protocol):
        def connectionMade(self) -> None:  # noqa: N802
            self.out = Out(reactor)
            self.out.attach(self.transport)
            self.out.on_resume = self._resume
            cfg = h2.config.H2Configuration(client_side=True, header_encoding=None)
            self.conn = h2.connection.H2Connection(cfg)
            self.conn.initiate_connection()
            self.conn.update_settings(
                {
                    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                    h2.settings.SettingCodes.MAX_FRAME_SIZE: FRAME,
                    h2.settings.SettingCodes.ENABLE_PUSH: 0,
                }
            )
            self.conn.increment_flow_control_window(64 * 1024 * 1024)
            self.apps: dict[int, tuple[App, H2Stream]] = {}
            self.pending: list[H2Stream] = []
            self.started = False
            self._emit()

        def _emit(self) -> None:
            data = self.conn.data_to_send()
            if data:
                self.out.write(data)

        def open(self, service: bytes, app: App) -> Stream:
            sid = self.conn.get_next_available_stream_id()
            headers = [
                (b":method", b"CONNECT"),
                (b":protocol", b"netguard"),
                (b":scheme", b"https"),
                (b":path", b"/" + service),
                (b":authority", b"gateway"),
            ]
            self.conn.send_headers(sid, headers)
            stream = H2Stream(self, sid)
            self.apps[sid] = (app, stream)
            self._emit()
            return stream

        def drain(self, stream: H2Stream) -> None:
            conn, sid, queue = self.conn, stream.sid, stream.queue
            while queue:
                head = queue[0]
                if head is None:
                    conn.end_stream(sid)
                    queue.pop(0)
                    break
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if room <= 0:
                    break
                if len(head) <= room:
                    queue.pop(0)
                    conn.send_data(sid, head)
                else:
                    conn.send_data(sid, head[:room])
                    queue[0] = head[room:]
            self._emit()

        def _resume(self) -> None:
            for app, stream in list(self.apps.values()):
                if stream.ready():
                    app.on_writable()

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.out.read(self._process, data)

        def _process(self, data: bytes) -> None:
            conn = self.conn
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    entry = self.apps.get(event.stream_id)
                    status = dict(event.headers).get(b":status")
                    if entry is not None:
                        if status == b"200":
                            entry[0].on_open()
                        else:
                            del self.apps[event.stream_id]
                            entry[0].on_refused(f"status {status!r}")
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    entry = self.apps.get(event.stream_id)
                    if entry is not None and event.data:
                        entry[0].on_data(event.data)
                elif isinstance(event, h2.events.StreamEnded):
                    entry = self.apps.pop(event.stream_id, None)
                    if entry is not None:
                        entry[0].on_end()
                elif isinstance(event, h2.events.StreamReset):
                    entry = self.apps.pop(event.stream_id, None)
                    if entry is not None:
                        entry[0].on_refused(f"reset {event.error_code}")
                elif isinstance(event, h2.events.WindowUpdated):
                    for app, stream in list(self.apps.values()):
                        if event.stream_id in (0, stream.sid) and stream.queue:
                            self.drain(stream)
                            if stream.ready():
                                app.on_writable()
                elif (
                    isinstance(event, h2.events.RemoteSettingsChanged)
                    and not self.started
                    and conn.remote_settings.enable_connect_protocol
                ):
                    self.started = True
                    ready.callback(self)
            self._emit()

    protocol.ClientCreator(reactor, H2Client).connectTCP("127.0.0.1", port)
    return ready


def yamux_client(reactor: Any, port: int, sink_port: int) -> Any:
    """Fire with a yamux session."""
    from mux_yamux_min import YamuxSession
    from twisted.internet import protocol

    class YStream(Stream):
        def __init__(self, proto: YamuxClient, app: App) -> None:
            self.proto = proto
            self.app = app
            self.sid = 0
            self.opened = False
            self.line = b""

        def write(self, data: bytes) -> None:
            self.proto.session.write(self.sid, data)

        def end(self) -> None:
            self.proto.session.end(self.sid)

        def ready(self) -> bool:
            return not self.proto.out.paused and self.proto.session.queued(self.sid) == 0

    class YamuxClient(protocol.Protocol):
        def connectionMade(self) -> None:  # noqa: N802
            self.out = Out(reactor)
            self.out.attach(self.transport)
            self.out.on_resume = self._resume
            self.session = YamuxSession(True, self.out.write, self, window=WINDOW, max_frame=FRAME)
            self.streams: dict[int, YStream] = {}

        def open(self, service: bytes, app: App) -> Stream:
            stream = YStream(self, app)
            stream.sid = self.session.open_stream(service + b"\n")
            self.streams[stream.sid] = stream
            return stream

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.out.read(self.session.data_received, data)

        def _resume(self) -> None:
            for stream in list(self.streams.values()):
                if stream.opened and stream.ready():
                    stream.app.on_writable()

        def stream_opened(self, sid: int) -> None:
            self.session.reset(sid)

        def stream_acked(self, sid: int) -> None:
            pass

        def stream_data(self, sid: int, data: bytes) -> None:
            stream = self.streams.get(sid)
            if stream is None:
                return
            if not stream.opened:
                line = stream.line + data
                end = line.find(b"\n")
                if end < 0:
                    stream.line = line
                    return
                if line[:end] != b"OK":
                    del self.streams[sid]
                    stream.app.on_refused(line[:end].decode("ascii", "replace"))
                    return
                stream.opened = True
                stream.app.on_open()
                data = line[end + 1 :]
                if not data:
                    return
            stream.app.on_data(data)

        def stream_fin(self, sid: int) -> None:
            stream = self.streams.pop(sid, None)
            if stream is not None:
                stream.app.on_end()

        def stream_reset(self, sid: int) -> None:
            stream = self.streams.pop(sid, None)
            if stream is not None:
                stream.app.on_refused("reset")

        def stream_writable(self, sid: int) -> None:
            stream = self.streams.get(sid)
            if stream is not None and stream.opened and not self.out.paused:
                stream.app.on_writable()

        def session_ended(self, code: int) -> None:
            self.transport.loseConnection()

    d = protocol.ClientCreator(reactor, YamuxClient).connectTCP("127.0.0.1", port)
    return d


def ssh_client(reactor: Any, port: int, sink_port: int) -> Any:
    """Fire with an SSH connection-layer session."""
    from twisted.conch.ssh import channel, common, connection
    from twisted.internet import protocol

    class ClientChannel(channel.SSHChannel, Stream):
        name = SSH_CHANNEL_TYPE

        def __init__(self, app: App, **kw: Any) -> None:
            super().__init__(localWindow=WINDOW, localMaxPacket=FRAME, **kw)
            self.app = app
            self.eof_pending = False

        def channelOpen(self, specific: bytes) -> None:  # noqa: N802
            self.app.on_open()

        def openFailed(self, reason: Any) -> None:  # noqa: N802
            self.app.on_refused(str(reason))

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.app.on_data(data)

        def eofReceived(self) -> None:  # noqa: N802
            pass

        def closed(self) -> None:
            self.app.on_end()

        def addWindowBytes(self, data: int) -> None:  # noqa: N802
            # Conch calls startWriting before it flushes its buffer, and its sendEOF does not
            # wait for buffered bytes: both are handled here, once the buffer is out.
            super().addWindowBytes(data)
            if not self.buf:
                if self.eof_pending:
                    self.eof_pending = False
                    self.conn.sendEOF(self)
                elif self.ready():
                    self.app.on_writable()

        def end(self) -> None:
            if self.buf:
                self.eof_pending = True
            else:
                self.conn.sendEOF(self)

        def ready(self) -> bool:
            return self.areWriting and not self.buf and not self.conn.transport.out.paused

    class SSHClient(protocol.Protocol):
        def connectionMade(self) -> None:  # noqa: N802
            self.out = Out(reactor)
            self.out.attach(self.transport)
            self.out.on_resume = self._resume
            self.conn = connection.SSHConnection()
            self.conn.transport = PacketTransport(self.out, self.transport)
            self.conn.serviceStarted()
            self.buffer = bytearray()

        def open(self, service: bytes, app: App) -> Stream:
            chan = ClientChannel(app, conn=self.conn)
            self.conn.openChannel(chan, common.NS(service))
            return chan

        def _resume(self) -> None:
            for chan in list(self.conn.channels.values()):
                if isinstance(chan, ClientChannel) and chan.ready():
                    chan.app.on_writable()

        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            self.out.read(self._process, data)

        def _process(self, data: bytes) -> None:
            if not ssh_packets(self.buffer, data, self.conn.packetReceived):
                self.transport.loseConnection()

    return protocol.ClientCreator(reactor, SSHClient).connectTCP("127.0.0.1", port)

"""
Interoperability with the reference yamux implementation, hashicorp/yamux (Go), over real
loopback sockets.

The peer is C{tests/integration/yamux_peer/main.go}, built once per test run from Debian's
C{golang-go} and C{golang-github-hashicorp-yamux-dev} in GOPATH mode, offline. It prints one
line per outcome (see its doc comment), which the tests read.

Three levels: netguard's L{MuxSession} (through L{MuxProtocol}) in the client role against
the Go server, and in the server role against the Go client, each with an 8 MiB stream
(32 windows, so window updates flow both ways), concurrent streams, half-close, RST from
each side, pings both ways and go-away from each side; and the real gateway, logged in with
netguard's own SCRAM client, then the socket handed to the Go client, which opens streams to
the echo service as C{docs/protocol.md} section 5.1 says.

The Go peer pings every 100 ms, above the gateway's bound on a peer's pings (5 per second,
burst 20: C{MuxLimits.ping_rate}); the session-level tests raise that bound, and the gateway
test uses a 250 ms interval. hashicorp/yamux's default is 30 s.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.auth.scram import SCRAM_SHA_256, ClientExchange, decode_wire, encode_wire
from netguard.client.protocol import Credentials
from netguard.mux import frames
from netguard.mux.frames import HEADER_SIZE, Flag, FrameType, GoAwayCode, Violation
from netguard.mux.limits import MuxLimits
from netguard.mux.outcome import OpenRefused, SessionEnd
from netguard.mux.protocol import MuxProtocol
from netguard.mux.stream import MuxStream, StreamReset
from tests.integration.test_mux_gateway import Collector, has
from tests.integration.util import RunningGateway, need_peer, peer_unavailable, wait_for

#: The Go peer's source.
PEER_SOURCE = os.path.join(os.path.dirname(__file__), "yamux_peer", "main.go")
#: Where Debian's golang-github-hashicorp-yamux-dev puts the library (GOPATH layout).
GOPATH = "/usr/share/gocode"
YAMUX_SOURCE = os.path.join(GOPATH, "src", "github.com", "hashicorp", "yamux")

#: The built peer, or why it could not be built (built once per test run).
_built: dict[str, str] = {}


def peer_binary() -> str:
    """
    The Go peer, built on first use into a temporary directory removed at exit: offline
    (GOPATH mode from the Debian packages, no module proxy), with a private build cache.

    @return: the executable's path.
    @raise unittest.SkipTest: when Go or the yamux source is missing, or the build fails,
        outside CI.
    @raise tests.integration.util.PeerUnavailable: the same, in CI.
    """
    if "path" in _built:
        return _built["path"]
    if "error" in _built:
        peer_unavailable(_built["error"])
    go = need_peer("go", "golang-go")
    if not os.path.isfile(os.path.join(YAMUX_SOURCE, "session.go")):
        _built["error"] = (
            f"hashicorp/yamux is not installed in {YAMUX_SOURCE} (Debian package "
            "golang-github-hashicorp-yamux-dev; scripts/setup-test-env installs it)"
        )
        peer_unavailable(_built["error"])
    directory = tempfile.mkdtemp(prefix="ng-yamux-")
    atexit.register(shutil.rmtree, directory, True)
    binary = os.path.join(directory, "yamux_peer")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": directory,
        "GO111MODULE": "off",
        "GOPATH": GOPATH,
        "GOCACHE": os.path.join(directory, "cache"),
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
    }
    result = subprocess.run(
        [go, "build", "-o", binary, PEER_SOURCE],
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        _built["error"] = f"the Go yamux peer did not build: {result.stderr.decode()[-2000:]}"
        peer_unavailable(_built["error"])
    _built["path"] = binary
    return binary


class GoPeer(ProcessProtocol):
    """
    The Go peer running under the reactor: its result lines, and a Deferred per awaited line.

    @ivar lines: the lines it printed so far.
    @ivar ended: fires with its exit status once it has exited.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stderr = bytearray()
        self.ended: Deferred[int] = Deferred()
        self._partial = b""
        self._waiters: list[tuple[Callable[[str], bool], Deferred[str]]] = []

    def outReceived(self, data: bytes) -> None:
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            for entry in list(self._waiters):
                if entry[0](line):
                    self._waiters.remove(entry)
                    entry[1].callback(line)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data[: max(0, 65536 - len(self.stderr))]

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        for _, waiter in self._waiters:
            waiter.errback(AssertionError(f"the Go peer exited ({code}): {self.lines}"))
        self._waiters = []
        self.ended.callback(code)

    def line(self, prefix: str) -> Deferred[str]:
        """
        @return: fires with the first line that starts with C{prefix}, printed or to come.
        """
        for line in self.lines:
            if line.startswith(prefix):
                return _fired(line)
        waiter: Deferred[str] = Deferred()
        if self.ended.called:
            waiter.errback(AssertionError(f"the Go peer has exited: {self.lines}"))
        else:
            self._waiters.append((lambda line: line.startswith(prefix), waiter))
        return waiter

    def starting(self, prefix: str) -> list[str]:
        """
        @return: the lines printed so far that start with C{prefix}.
        """
        return [line for line in self.lines if line.startswith(prefix)]


def _fired(value: str) -> Deferred[str]:
    done: Deferred[str] = Deferred()
    done.callback(value)
    return done


def start_peer(case: unittest.TestCase, *args: str, fd: int | None = None) -> GoPeer:
    """
    Start the Go peer with C{args}; killed by its PID at C{case}'s cleanup if still running.

    @param fd: a socket handed to it as its file descriptor 3.
    """
    binary = peer_binary()
    peer = GoPeer()
    child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
    if fd is not None:
        child_fds[3] = fd
    process = reactor.spawnProcess(  # type: ignore[attr-defined]
        peer, binary, [binary, "-deadline", "100s", *args], env={}, childFDs=child_fds
    )

    def stop() -> Any:
        if not peer.ended.called:
            process.signalProcess("KILL")
        return peer.ended

    case.addCleanup(stop)
    return peer


class FrameTap:
    """
    Counts the frames in one direction of a session, for assertions on what crossed the
    wire (pings, window updates, resets, go-aways); payloads are skipped, not kept.
    """

    def __init__(self) -> None:
        self.counts: Counter[tuple[FrameType, int]] = Counter()
        self.window_updates = 0
        self.go_aways: list[int] = []
        self.resets: list[int] = []
        self._buffer = bytearray()
        self._skip = 0

    def feed(self, data: bytes) -> None:
        if self._skip:
            taken = min(self._skip, len(data))
            self._skip -= taken
            data = data[taken:]
        self._buffer += data
        while len(self._buffer) >= HEADER_SIZE:
            header = frames.decode(self._buffer)
            del self._buffer[:HEADER_SIZE]
            self.counts[header.type, header.flags] += 1
            if header.type is FrameType.WINDOW_UPDATE and header.length:
                self.window_updates += 1
            if header.type is FrameType.GO_AWAY:
                self.go_aways.append(header.length)
            if header.flags & Flag.RST:
                self.resets.append(header.stream_id)
            if header.type is FrameType.DATA:
                taken = min(header.length, len(self._buffer))
                del self._buffer[:taken]
                self._skip = header.length - taken

    def pings(self, flag: Flag) -> int:
        """
        @return: ping frames with C{flag} (SYN: a ping; ACK: an answer).
        """
        return self.counts[FrameType.PING, int(flag)]


class _TappedSocket:
    """
    The session's socket with every byte it sends fed to a L{FrameTap}: what Twisted's
    buffered writes send and what the session sends straight to the socket alike.
    """

    def __init__(self, socket: Any, tap: FrameTap) -> None:
        self._socket = socket
        self._tap = tap

    def send(self, data: bytes, *flags: int) -> int:
        sent: int = self._socket.send(data, *flags)
        self._tap.feed(bytes(data[:sent]))
        return sent

    def sendmsg(self, buffers: list[bytes], *args: Any) -> int:
        sent: int = self._socket.sendmsg(buffers, *args)
        self._tap.feed(b"".join(buffers)[:sent])
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)


class TappedMux(MuxProtocol):
    """
    netguard's L{MuxProtocol} with both directions counted by a L{FrameTap}, and its end and
    connection loss recorded.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.ends: list[SessionEnd] = []
        self.sent = FrameTap()
        self.received = FrameTap()
        self.closed: Deferred[None] = Deferred()
        super().__init__(on_end=self.ends.append, **kwargs)

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.socket = _TappedSocket(transport.socket, self.sent)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.received.feed(data)
        super().dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self.closed.callback(None)


class Echo:
    """
    netguard's side of a stream the Go peer opened: echoes what arrives, honouring
    half-close (the peer's FIN is answered with ours after the rest), with backpressure (the
    stream pauses its own reading while its send queue is full). A stream whose first bytes
    are C{RESET\\n} is reset (RST) instead.
    """

    def __init__(self) -> None:
        self.transport: MuxStream | None = None
        self.received = 0
        self.eof = False
        self.lost: Failure | None = None

    def makeConnection(self, transport: MuxStream) -> None:
        self.transport = transport
        transport.registerProducer(transport, True)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if self.received == 0 and data.startswith(b"RESET\n"):
            self.received += len(data)
            self.transport.abortConnection()
            return
        self.received += len(data)
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.eof = True
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason


class Sender:
    """
    Writes C{count} copies of C{block} to a stream as its flow control allows, then FIN.
    """

    def __init__(self, transport: MuxStream, block: bytes, count: int) -> None:
        self.transport = transport
        self.block = block
        self.left = count
        self.paused = False
        transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self.left and not self.paused:
            self.left -= 1
            self.transport.write(self.block)
        if not self.left and self.transport.producer is self:
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()

    def stopProducing(self) -> None:
        self.left = 0


#: The session-level tests answer the Go peer's 100 ms pings and ping it every 100 ms.
SESSION_LIMITS = MuxLimits(keepalive_interval=0.1, ping_rate=100.0, ping_burst=100)

#: 8 MiB for the bulk stream: 32 initial windows.
BULK_BLOCK = bytes(range(256)) * 256
BULK_COUNT = 128


def payload(index: int, size: int) -> bytes:
    """
    The bytes the Go peer's stream C{index} of C{size} bytes writes (its C{pattern}).
    """
    return bytes((i * 7 + index * 13 + i // 251) & 0xFF for i in range(size))


class NetguardClientTests(unittest.TestCase):
    """
    netguard's session in the client role against hashicorp/yamux's server, which accepts
    and echoes every stream.
    """

    timeout = 120

    @inlineCallbacks
    def connect(self, *go_args: str) -> Any:
        """
        Start the Go server with C{go_args} and connect netguard's client session to it.
        """
        self.peer = start_peer(self, "-role", "server", "-listen", "127.0.0.1:0", *go_args)
        listening = yield self.peer.line("LISTEN ")
        port = int(listening.split()[1])
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        self.mux = yield connectProtocol(
            endpoint,
            TappedMux(
                client=True, clock=reactor, accept=lambda stream: None, limits=SESSION_LIMITS
            ),
        )
        self.addCleanup(self._close)
        return self.mux

    def _close(self) -> Any:
        if self.mux.transport.connected:
            self.mux.transport.loseConnection()
        return self.mux.closed

    def open(self, first: bytes = b"") -> Collector:
        collector = Collector()
        stream = self.mux.session.open_stream(collector)
        if first:
            stream.write(first)
        return collector

    @inlineCallbacks
    def test_streams_large_and_small_echoed_with_half_close(self) -> Any:
        """
        8 MiB through one stream and seven small streams at once, each half-closed by us
        (FIN behind its data): hashicorp/yamux echoes every byte in order and answers each
        FIN with its own after the rest; window updates crossed both ways, hashicorp sent
        into our grown windows (fewer updates from us), and the Go side
        reports each stream ended by our FIN (C{ECHO <id> <bytes> eof}).
        """
        yield self.connect()
        session = self.mux.session
        bulk = self.open()
        assert bulk.transport is not None
        Sender(bulk.transport, BULK_BLOCK, BULK_COUNT)
        small = []
        for index in range(7):
            data = payload(index, 1000 * index + 1)
            collector = self.open(data)
            assert collector.transport is not None
            collector.transport.loseWriteConnection()
            small.append((collector, data))
        size = len(BULK_BLOCK) * BULK_COUNT
        for collector, data in small:
            yield collector.wait(lambda c: c.eof)
            self.assertEqual(bytes(collector.data), data, self.peer.lines)
        yield bulk.wait(lambda c: c.eof)
        self.assertEqual(len(bulk.data), size)
        self.assertEqual(bytes(bulk.data), BULK_BLOCK * BULK_COUNT)
        ids = [c.transport.stream_id for c, _ in small if c.transport is not None]
        for stream_id, (_, data) in zip(ids, small, strict=True):
            line = yield self.peer.line(f"ECHO {stream_id} ")
            self.assertEqual(line, f"ECHO {stream_id} {len(data)} eof")
        line = yield self.peer.line(f"ECHO {bulk.transport.stream_id} ")
        self.assertEqual(line, f"ECHO {bulk.transport.stream_id} {size} eof")
        yield wait_for(lambda: session.open_streams == 0)
        # 8 MiB each way: hashicorp's 256 KiB windows take at least 31 updates. Ours grow
        # (doubling from 256 KiB up to 4 MiB while our reader keeps up): fewer than 31
        # updates credited the 8 MiB hashicorp sent, so it used the larger ones.
        self.assertGreaterEqual(self.mux.received.window_updates, 31)
        self.assertLess(self.mux.sent.window_updates, 31)
        self.assertIsNone(session.ended)
        self.assertEqual(self.mux.received.resets, [])

    @inlineCallbacks
    def test_pings_both_ways(self) -> Any:
        """
        Each end's keepalive pings are answered by the other: netguard answers
        hashicorp/yamux's pings (its keepalive would end the session otherwise) and the Go
        side answers ours, with the session still up.
        """
        yield self.connect()
        yield wait_for(
            lambda: self.mux.received.pings(Flag.ACK) >= 3 and self.mux.sent.pings(Flag.ACK) >= 3,
            timeout=30,
        )
        self.assertIsNone(self.mux.session.ended)
        self.assertEqual(self.peer.starting("SESSION"), [])
        echo = self.open(b"still here")
        yield echo.wait(has(10))
        self.assertEqual(bytes(echo.data), b"still here")

    @inlineCallbacks
    def test_reset_by_netguard(self) -> Any:
        """
        Our RST on a stream in mid-echo reaches the Go side as a reset (C{ECHO <id> 5
        reset}); a stream beside it goes on.
        """
        yield self.connect()
        doomed = self.open(b"hello")
        other = self.open(b"first")
        yield doomed.wait(has(5))
        yield other.wait(has(5))
        assert doomed.transport is not None and other.transport is not None
        doomed.transport.abortConnection()
        line = yield self.peer.line(f"ECHO {doomed.transport.stream_id} ")
        self.assertEqual(line, f"ECHO {doomed.transport.stream_id} 5 reset")
        other.transport.write(b"second")
        other.transport.loseWriteConnection()
        yield other.wait(lambda c: c.eof)
        self.assertEqual(bytes(other.data), b"firstsecond")
        self.assertIn(doomed.transport.stream_id, self.mux.sent.resets)

    @inlineCallbacks
    def test_reset_by_go(self) -> Any:
        """
        hashicorp/yamux resets a stream past its accept backlog (here 1, and the Go side
        accepts none): our second opening ends with L{StreamReset}, the first is still
        waiting for its answer and the session goes on.
        """
        yield self.connect("-accept=false", "-backlog", "1")
        first = self.open(b"queued")
        second = self.open(b"refused")
        yield second.wait(lambda c: c.lost is not None)
        assert second.lost is not None and second.transport is not None
        self.assertIsInstance(second.lost.value, StreamReset)
        self.assertEqual(self.mux.received.resets, [second.transport.stream_id])
        self.assertIsNone(first.lost)
        self.assertIsNone(self.mux.session.ended)

    @inlineCallbacks
    def test_go_away_by_netguard(self) -> Any:
        """
        Our go-away while a stream is open: that stream still finishes (its last bytes, FIN
        both ways), then the session ends (local go-away), the connection closes and the Go
        side sees its session end.
        """
        yield self.connect()
        live = self.open(b"before")
        yield live.wait(has(6))
        self.mux.session.go_away()
        self.assertRaises(OpenRefused, self.mux.session.open_stream, Collector())
        assert live.transport is not None
        live.transport.write(b" after")
        live.transport.loseWriteConnection()
        yield live.wait(lambda c: c.eof)
        self.assertEqual(bytes(live.data), b"before after")
        yield self.mux.closed
        self.assertEqual([end.violation for end in self.mux.ends], [Violation.LOCAL_GO_AWAY])
        self.assertEqual(self.mux.sent.go_aways, [GoAwayCode.NORMAL])
        code = yield self.peer.ended
        self.assertEqual(code, 0)
        self.assertIn("SESSION end closed", self.peer.lines)


class NetguardServerTests(unittest.TestCase):
    """
    netguard's session in the server role (it accepts and echoes) against hashicorp/yamux's
    client, which opens the streams.
    """

    timeout = 120

    def setUp(self) -> None:
        peer_binary()
        self.muxes: list[TappedMux] = []
        self.echoes: list[Echo] = []

        def build() -> TappedMux:
            mux = TappedMux(client=False, clock=reactor, accept=self.accept, limits=SESSION_LIMITS)
            self.muxes.append(mux)
            return mux

        self.port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, Factory.forProtocol(build), interface="127.0.0.1"
        )
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self._close)

    def accept(self, stream: MuxStream) -> Echo:
        echo = Echo()
        self.echoes.append(echo)
        return echo

    def _close(self) -> Any:
        for mux in self.muxes:
            if mux.transport.connected:
                mux.transport.abortConnection()
        return wait_for(lambda: all(mux.closed.called for mux in self.muxes))

    def start(self, *args: str) -> GoPeer:
        address = f"127.0.0.1:{self.port.getHost().port}"
        return start_peer(self, "-role", "client", "-connect", address, *args)

    @inlineCallbacks
    def test_go_streams_echoed_by_netguard(self) -> Any:
        """
        The Go client opens eight streams at once, one of 8 MiB (32 windows), and each gets
        its bytes back from our echo, then our FIN after its own; its explicit ping is
        answered, and window updates crossed both ways.
        """
        sizes = [8 * 1024 * 1024, 0, 1, 100, 1000, 65536, 262144, 300000]
        peer = self.start("-streams", ",".join(str(size) for size in sizes))
        done = yield peer.line("DONE ")
        self.assertEqual(done, f"DONE ok={len(sizes)} fail=0", peer.lines)
        for index, size in enumerate(sizes):
            [line] = peer.starting(f"STREAM {index} ")
            self.assertTrue(line.endswith(f" ok {size}"), line)
        self.assertIn("PING ok", peer.lines)
        closed = yield peer.line("STREAMS ")
        self.assertEqual(closed, "STREAMS open=0")
        [mux] = self.muxes
        assert mux.session is not None
        yield wait_for(lambda: mux.session is not None and mux.session.open_streams == 0)
        self.assertEqual(sorted(echo.received for echo in self.echoes), sorted(sizes))
        self.assertTrue(all(echo.eof for echo in self.echoes))
        self.assertGreaterEqual(mux.sent.window_updates, 31)
        self.assertGreaterEqual(mux.received.window_updates, 31)
        self.assertGreaterEqual(mux.received.pings(Flag.SYN), 1)
        self.assertIsNone(mux.session.ended)

    @inlineCallbacks
    def test_reset_by_netguard_on_a_go_stream(self) -> Any:
        """
        We reset (RST) a stream the Go client opened; its read fails with yamux's
        connection reset while its other streams are echoed.
        """
        peer = self.start("-streams", "reset,1000,5000")
        done = yield peer.line("DONE ")
        self.assertEqual(done, "DONE ok=3 fail=0", peer.lines)
        [line] = peer.starting("STREAM 0 ")
        self.assertTrue(line.endswith(" reset"), line)
        stream_id = int(line.split()[2])
        [mux] = self.muxes
        self.assertEqual(mux.sent.resets, [stream_id])

    @inlineCallbacks
    def test_reset_by_go_of_our_streams(self) -> Any:
        """
        Streams opened by our server end (even ids) past the Go client's accept backlog
        (1, accepting none) are reset by it: the second ends with L{StreamReset}, the first
        is still waiting; our server-opened ids are the ones yamux expects.
        """
        peer = self.start("-accept=false", "-backlog", "1")
        yield wait_for(lambda: bool(self.muxes) and self.muxes[0].session is not None)
        [mux] = self.muxes
        assert mux.session is not None
        first, second = Collector(), Collector()
        one = mux.session.open_stream(first)  # type: ignore[arg-type]
        two = mux.session.open_stream(second)  # type: ignore[arg-type]
        self.assertEqual((one.stream_id, two.stream_id), (2, 4))
        yield second.wait(lambda c: c.lost is not None)
        assert second.lost is not None
        self.assertIsInstance(second.lost.value, StreamReset)
        self.assertEqual(mux.received.resets, [4])
        self.assertIsNone(first.lost)
        self.assertEqual(peer.starting("SESSION"), [])

    @inlineCallbacks
    def test_go_away_by_go(self) -> Any:
        """
        The Go client's go-away (normal) after its streams: our session records it and
        refuses our own new streams, but goes on; our own go-away then ends it (no stream
        open) and the Go side sees the session end.
        """
        peer = self.start("-streams", "1000,2000", "-goaway")
        yield peer.line("GOAWAY sent")
        self.assertIn("DONE ok=2 fail=0", peer.lines)
        [mux] = self.muxes
        session = mux.session
        assert session is not None
        yield wait_for(lambda: session.remote_go_away is not None)
        self.assertIs(session.remote_go_away, GoAwayCode.NORMAL)
        self.assertIsNone(session.ended)
        self.assertRaises(OpenRefused, session.open_stream, Collector())
        yield wait_for(lambda: session.open_streams == 0)
        session.go_away()
        yield mux.closed
        self.assertEqual([end.violation for end in mux.ends], [Violation.LOCAL_GO_AWAY])
        code = yield peer.ended
        self.assertEqual(code, 0)
        self.assertIn("SESSION end closed", peer.lines)


def login_for_mux(port: int, credentials: Credentials) -> tuple[socket.socket, bytes]:
    """
    Log in to the gateway on 127.0.0.1:C{port} with netguard's own SCRAM client
    (L{ClientExchange}), blocking (run it in a thread: the gateway runs on the reactor),
    and upgrade with C{MUX yamux/1}.

    @return: the connected socket, positioned right after the C{OK MUX} line, and that line.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    reader = sock.makefile("rb", buffering=0)

    def reply() -> bytes:
        line = bytearray()
        while not line.endswith(b"\r\n"):  # one byte at a time: nothing past the line is read
            byte = reader.read(1)
            if not byte or len(line) > 4096:
                raise AssertionError(f"no reply line from the gateway: {bytes(line)!r}")
            line += byte
        return bytes(line[:-2])

    greeting = reply()
    assert b"MUX=yamux/1" in greeting, greeting
    exchange = ClientExchange(credentials.username, credentials.password, SCRAM_SHA_256)
    sock.sendall(b"AUTH SCRAM-SHA-256 " + encode_wire(exchange.first()) + b"\r\n")
    verb, _, token = reply().partition(b" ")
    assert verb == b"CONT", verb
    sock.sendall(b"CONT " + encode_wire(exchange.final(decode_wire(token))) + b"\r\n")
    verb, _, token = reply().partition(b" ")
    assert verb == b"OK", verb
    exchange.verify(decode_wire(token))
    sock.sendall(b"MUX yamux/1\r\n")
    answer = reply()
    reader.close()
    sock.settimeout(None)
    return sock, answer


class GatewayTests(unittest.TestCase):
    """
    hashicorp/yamux's client against the real gateway, on a connection logged in by
    netguard's own SCRAM client and then handed to the Go process (its file descriptor 3).
    """

    timeout = 120

    @inlineCallbacks
    def test_go_client_streams_through_the_gateway(self) -> Any:
        """
        After C{OK MUX yamux/1}, the Go client opens six streams at once on the same
        connection: five send C{OPEN echo} and their bytes (one of 1 MiB) and get
        C{OK OPEN echo} and every byte back, then the gateway's FIN after theirs; one names
        an unknown service and gets C{ERR NO_SUCH_SERVICE} and FIN while the others go on.
        The Go side's pings (every 250 ms, and one explicit) are answered.
        """
        peer_binary()
        gateway = RunningGateway(
            self,
            "[mux]\nkeepalive_interval = 1\n",
            overrides={"listen": ["tcp:0:interface=127.0.0.1"]},
        )
        sock, answer = yield deferToThread(login_for_mux, gateway.port(), gateway.credentials)
        self.assertTrue(answer.startswith(b"OK MUX yamux/1 STREAMS="), answer)
        try:
            peer = start_peer(
                self,
                "-role", "client", "-fd", "3", "-keepalive", "250ms",
                "-open", "echo", "-streams", "1048576,0,10,1000,65536,refuse:nope",
                "-stay=false",
                fd=sock.fileno(),
            )  # fmt: skip
        finally:
            sock.close()  # the Go process holds the connection now
        done = yield peer.line("DONE ")
        self.assertEqual(done, "DONE ok=6 fail=0", peer.lines)
        for index, size in enumerate([1048576, 0, 10, 1000, 65536]):
            [line] = peer.starting(f"STREAM {index} ")
            self.assertTrue(line.endswith(f" ok {size}"), line)
        [refused] = peer.starting("STREAM 5 ")
        self.assertIn(" refused ERR NO_SUCH_SERVICE ", refused)
        self.assertIn("PING ok", peer.lines)
        closed = yield peer.line("STREAMS ")
        self.assertEqual(closed, "STREAMS open=0")
        code = yield peer.ended
        self.assertEqual(code, 0)
        yield gateway.idle()
        stats = gateway.factory.stats.snapshot()
        self.assertEqual(stats["connections"], 1)
        self.assertEqual(stats["streams"], 5)  # streams that relayed; not the refused one
        self.assertEqual(stats["streams_active"], 0)

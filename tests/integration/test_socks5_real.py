"""
Integration tests for L{netguard.outbound.socks5} against real SOCKS5 servers on loopback.

Each test starts its own peers: microsocks and Dante (C{danted}) as subprocesses on free
127.0.0.1 ports, a Twisted echo server on 127.0.0.1 and ::1 as the target, and Twisted servers
playing hostile proxies (garbage, silence, an endless stream). Payloads are random, written in
random chunk sizes, and compared by SHA-256 on both sides.

Dante's username method checks system accounts (passwd/PAM); the tests do not create system
users, so against Dante they prove the failure paths of username/password (wrong credentials,
no acceptable method), and microsocks proves the successful authenticated round trip.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import subprocess
import time
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.client.protocol import NGPClientProtocol, NGPError
from netguard.log import format_text
from netguard.outbound.socks5 import (
    AuthenticationFailed,
    ConnectionNotAllowed,
    ConnectionRefused,
    NoAcceptableMethods,
    SOCKS5ClientEndpoint,
    SOCKSConnectionClosed,
    SOCKSProtocolError,
    SOCKSTimeout,
)
from tests.integration.util import RunningGateway, peer_unavailable, stop_process

MICROSOCKS = "/usr/bin/microsocks"
DANTED = "/usr/sbin/danted"
#: How long a freshly started proxy may take to accept connections.
LISTEN_DEADLINE = 5.0
PAYLOAD_SIZE = 512 * 1024


def free_port(host: str = "127.0.0.1") -> int:
    """
    @return: a TCP port that was free on C{host} a moment ago (bound to port 0, then closed).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(proc: subprocess.Popen[bytes], port: int, log_path: str) -> None:
    """
    Poll until C{127.0.0.1:port} accepts a connection, for at most L{LISTEN_DEADLINE}.

    @raise RuntimeError: if the process exits or the deadline passes (with its log).
    """
    deadline = time.monotonic() + LISTEN_DEADLINE
    for _ in range(int(LISTEN_DEADLINE / 0.02) + 1):
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
    with open(log_path, "rb") as f:
        log = f.read()[-2000:].decode("utf-8", "replace")
    raise RuntimeError(f"proxy on port {port} did not start (exit {proc.poll()}):\n{log}")


def random_chunks(rng: random.Random, size: int) -> list[bytes]:
    """
    @return: C{size} random bytes, cut into chunks of random sizes (1 byte to 64 KiB).
    """
    data = rng.randbytes(size)
    chunks, offset = [], 0
    while offset < size:
        step = rng.choice((1, 7, 512, 1400, 4096, 16384, 65536, rng.randint(1, 65536)))
        chunks.append(data[offset : offset + step])
        offset += step
    return chunks


class EchoProtocol(Protocol):
    """
    Echoes every byte, and reports the count and SHA-256 of what it received when closed.
    """

    factory: EchoFactory

    def connectionMade(self) -> None:
        self.hasher = hashlib.sha256()
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.hasher.update(data)
        self.count += len(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.closed.put((self.count, self.hasher.hexdigest()))


class EchoFactory(Factory):
    """
    Builds L{EchoProtocol}s; each closed connection's result is put in C{closed}.
    """

    protocol = EchoProtocol

    def __init__(self) -> None:
        self.closed: defer.DeferredQueue[tuple[int, str]] = defer.DeferredQueue()


class IntegrityClient(Protocol):
    """
    Writes a payload in the given chunks, reads the echo back, closes once all came back.
    C{done} fires with C{(count, sha256 hex)} of what was received.
    """

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.total = sum(len(c) for c in chunks)
        self.hasher = hashlib.sha256()
        self.count = 0
        self.done: Deferred[tuple[int, str]] = Deferred()

    def connectionMade(self) -> None:
        for chunk in self.chunks:
            self.transport.write(chunk)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.hasher.update(data)
        self.count += len(data)
        if self.count >= self.total:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback((self.count, self.hasher.hexdigest()))


class QuietFactory(Factory):
    """
    A factory that builds one given protocol and logs nothing itself, so that any "Starting
    factory" line a test sees comes from the code under test.
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        self._protocol.factory = self
        return self._protocol


def factory_lines(events: list[dict[str, Any]]) -> list[str]:
    """
    @return: the rendered events that are Twisted's "Starting factory" / "Stopping factory".
    """
    lines = [formatEvent(event) or "" for event in events]
    return [line for line in lines if "Starting factory" in line or "Stopping factory" in line]


class _RealPeersTestCase(unittest.TestCase):
    """
    Shared set-up: a temp dir, an echo target on 127.0.0.1 and ::1 (same port), and helpers
    to start proxies and check round trips.
    """

    timeout = 60

    def setUp(self) -> None:
        self.tmpdir = os.path.abspath(self.mktemp())
        os.makedirs(self.tmpdir)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.echo = EchoFactory()
        self.echo_port, self.echo_has_ipv6 = self._listen_echo()
        self.rng_seed = int.from_bytes(os.urandom(4), "big")
        self.rng = random.Random(self.rng_seed)

    def _listen_echo(self) -> tuple[int, bool]:
        """
        Listen on 127.0.0.1 and, with the same port, on ::1 (so that C{localhost} works
        whichever address the proxy resolves it to).
        """
        for _ in range(20):
            port4 = reactor.listenTCP(0, self.echo, interface="127.0.0.1")  # type: ignore[attr-defined]
            self.addCleanup(port4.stopListening)
            number = port4.getHost().port
            try:
                port6 = reactor.listenTCP(number, self.echo, interface="::1")  # type: ignore[attr-defined]
            except CannotListenError:
                continue
            self.addCleanup(port6.stopListening)
            return number, True
        return number, False

    def start_proxy(self, make_argv: Callable[[int], list[str]], name: str) -> int:
        """
        Start a proxy on a free port (retrying if the port was taken meanwhile), stopped by
        PID in a cleanup.

        @param make_argv: builds the command line for a port.
        @return: the port it listens on.
        """
        last_error: Exception | None = None
        for attempt in range(3):
            port = free_port()
            log_path = os.path.join(self.tmpdir, f"{name}-{attempt}.log")
            log = open(log_path, "wb")  # noqa: SIM115 - closed in the cleanup
            proc = subprocess.Popen(
                make_argv(port), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
            self.addCleanup(stop_process, proc, log)
            try:
                wait_listening(proc, port, log_path)
            except RuntimeError as exc:
                last_error = exc
                continue
            return port
        raise AssertionError(str(last_error))

    def socks(self, proxy_port: int, host: str, port: int, **kwargs: Any) -> SOCKS5ClientEndpoint:
        """
        @return: an endpoint to C{host:port} through the proxy on C{127.0.0.1:proxy_port}.
        """
        kwargs.setdefault("timeout", 10.0)
        return SOCKS5ClientEndpoint(
            TCP4ClientEndpoint(reactor, "127.0.0.1", proxy_port),
            host,
            port,
            reactor=reactor,
            **kwargs,
        )

    @defer.inlineCallbacks
    def round_trip(self, endpoint: Any) -> Generator[Deferred[Any], Any, str]:
        """
        Send a random payload in random chunks through C{endpoint} to the echo server and
        check, by SHA-256, what came back.

        @return: the payload's SHA-256, for the caller to match with what the server got.
        """
        chunks = random_chunks(self.rng, PAYLOAD_SIZE)
        expected = hashlib.sha256(b"".join(chunks)).hexdigest()
        client = IntegrityClient(chunks)
        proto = yield endpoint.connect(Factory.forProtocol(lambda: client))
        self.assertIs(proto, client)
        transport: Any = proto.transport
        self.assertEqual(transport.socks_target.port, self.echo_port)
        self.assertNotEqual(transport.getPeer().port, self.echo_port)  # the proxy's address
        received = yield client.done
        note = f"seed {self.rng_seed}, {len(chunks)} chunks"
        self.assertEqual(received, (PAYLOAD_SIZE, expected), "target -> client, " + note)
        return expected

    @defer.inlineCallbacks
    def assert_round_trip(self, endpoint: Any) -> Generator[Deferred[Any], Any, None]:
        """
        One L{round_trip}, and check by SHA-256 what the echo server received.
        """
        expected = yield self.round_trip(endpoint)
        at_server = yield self.echo.closed.get()
        self.assertEqual(at_server, (PAYLOAD_SIZE, expected), f"seed {self.rng_seed}")

    @defer.inlineCallbacks
    def assert_fails(
        self, endpoint: Any, exception: type[Exception]
    ) -> Generator[Deferred[Any], Any, Exception]:
        """
        Connect and expect a failure of type C{exception}.

        @return: the exception.
        """
        client = IntegrityClient([b"x"])
        try:
            yield endpoint.connect(Factory.forProtocol(lambda: client))
        except exception as exc:
            return exc
        self.fail(f"connected, expected {exception.__name__}")

    def _require(self, path: str) -> None:
        if not os.access(path, os.X_OK):
            peer_unavailable(
                f"{path} is not installed (Debian package "
                f"{'microsocks' if 'micro' in path else 'dante-server'}; .ci/run installs it)"
            )


class MicrosocksNoAuthTests(_RealPeersTestCase):
    """
    microsocks without authentication.
    """

    def setUp(self) -> None:
        super().setUp()
        self._require(MICROSOCKS)
        self.proxy_port = self.start_proxy(
            lambda port: [MICROSOCKS, "-i", "127.0.0.1", "-p", str(port)], "microsocks"
        )

    def test_ipv4_literal(self) -> Deferred[None]:
        return self.assert_round_trip(self.socks(self.proxy_port, "127.0.0.1", self.echo_port))

    def test_localhost_resolved_by_proxy(self) -> Deferred[None]:
        return self.assert_round_trip(self.socks(self.proxy_port, "localhost", self.echo_port))

    def test_ipv6_literal(self) -> Deferred[None]:
        if not self.echo_has_ipv6:
            raise unittest.SkipTest("no ::1 on this machine")
        return self.assert_round_trip(self.socks(self.proxy_port, "::1", self.echo_port))

    def test_endpoint_string(self) -> Deferred[None]:
        endpoint = clientFromString(
            reactor,
            f"socks5:host=127.0.0.1:port={self.echo_port}:proxy_host=127.0.0.1"
            f":proxy_port={self.proxy_port}:timeout=10",
        )
        self.assertIsInstance(endpoint, SOCKS5ClientEndpoint)
        return self.assert_round_trip(endpoint)

    @defer.inlineCallbacks
    def test_nothing_listening_is_connection_refused(self) -> Generator[Deferred[Any], Any, None]:
        exc = yield self.assert_fails(
            self.socks(self.proxy_port, "127.0.0.1", free_port()), ConnectionRefused
        )
        self.assertEqual(exc.code, 5)

    @defer.inlineCallbacks
    def test_connection_logs_no_factory_lines(self) -> Generator[Deferred[Any], Any, None]:
        """
        A whole connection through microsocks, from connect to the echo server's close, logs
        no "Starting factory" / "Stopping factory" line (the application's factory is quiet,
        so any such line would be the SOCKS5 endpoint's).
        """
        del self.events[:]
        client = IntegrityClient([b"ping" * 1000])
        endpoint = self.socks(self.proxy_port, "127.0.0.1", self.echo_port)
        yield endpoint.connect(QuietFactory(client))
        count, _ = yield client.done
        self.assertEqual(count, 4000)
        yield self.echo.closed.get()  # the target saw the close: our side is long done
        self.assertEqual(factory_lines(self.events), [])

    @defer.inlineCallbacks
    def test_two_connections_at_once(self) -> Generator[Deferred[Any], Any, None]:
        endpoint = self.socks(self.proxy_port, "127.0.0.1", self.echo_port)
        sent = yield defer.gatherResults([self.round_trip(endpoint), self.round_trip(endpoint)])
        at_server = [(yield self.echo.closed.get()), (yield self.echo.closed.get())]
        self.assertEqual(sorted(at_server), sorted((PAYLOAD_SIZE, h) for h in sent))


class MicrosocksAuthTests(_RealPeersTestCase):
    """
    microsocks with RFC 1929 username/password.
    """

    def setUp(self) -> None:
        super().setUp()
        self._require(MICROSOCKS)
        self.user, self.password = "netguard", "pw-" + os.urandom(6).hex()
        self.proxy_port = self.start_proxy(
            lambda port: [
                MICROSOCKS,
                "-i",
                "127.0.0.1",
                "-p",
                str(port),
                "-u",
                self.user,
                "-P",
                self.password,
            ],
            "microsocks-auth",
        )

    def test_authenticated_round_trip(self) -> Deferred[None]:
        return self.assert_round_trip(
            self.socks(
                self.proxy_port,
                "localhost",
                self.echo_port,
                username=self.user,
                password=self.password,
            )
        )

    def test_password_file_endpoint_string(self) -> Deferred[None]:
        path = os.path.join(self.tmpdir, "socks-password")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, self.password.encode("utf-8") + b"\n")
        os.close(fd)
        endpoint = clientFromString(
            reactor,
            f"socks5:host=127.0.0.1:port={self.echo_port}:proxy_host=127.0.0.1"
            f":proxy_port={self.proxy_port}:user={self.user}:password_file={path}",
        )
        return self.assert_round_trip(endpoint)

    @defer.inlineCallbacks
    def test_wrong_password(self) -> Generator[Deferred[Any], Any, None]:
        endpoint = self.socks(
            self.proxy_port, "127.0.0.1", self.echo_port, username=self.user, password="wrong"
        )
        exc = yield self.assert_fails(endpoint, AuthenticationFailed)
        self.assertNotIn("wrong", str(exc))

    @defer.inlineCallbacks
    def test_no_credentials_offered(self) -> Generator[Deferred[Any], Any, None]:
        yield self.assert_fails(
            self.socks(self.proxy_port, "127.0.0.1", self.echo_port), NoAcceptableMethods
        )


def dante_config(
    port: int, method: str, blocked_port: int | None = None, as_root: bool = os.geteuid() == 0
) -> str:
    """
    @return: a danted.conf for a loopback-only Dante on C{port} with socksmethod C{method}.
    """
    lines = [
        "logoutput: stderr",
        f"internal: 127.0.0.1 port = {port}",
        "external: lo",
        "clientmethod: none",
        f"socksmethod: {method}",
    ]
    if as_root:
        lines += ["user.privileged: root", "user.unprivileged: nobody"]
    lines.append("client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }")
    if blocked_port is not None:
        lines.append(f"socks block {{ from: 127.0.0.0/8 to: 127.0.0.1/32 port = {blocked_port} }}")
    lines += [
        "socks pass { from: 127.0.0.0/8 to: 127.0.0.0/8 }",
        "socks pass { from: 127.0.0.0/8 to: ::1/128 }",
    ]
    return "\n".join(lines) + "\n"


class _DanteTestCase(_RealPeersTestCase):
    """
    Starts Dante with a generated configuration.
    """

    method = "none"

    def setUp(self) -> None:
        super().setUp()
        self._require(DANTED)
        self.blocked_port = free_port()

        def argv(port: int) -> list[str]:
            conf = os.path.join(self.tmpdir, f"danted-{port}.conf")
            with open(conf, "w") as f:
                f.write(dante_config(port, self.method, self.blocked_port))
            return [DANTED, "-f", conf, "-p", os.path.join(self.tmpdir, f"danted-{port}.pid")]

        self.proxy_port = self.start_proxy(argv, "danted")


class DanteNoAuthTests(_DanteTestCase):
    """
    Dante with socksmethod none.
    """

    def test_ipv4_literal(self) -> Deferred[None]:
        return self.assert_round_trip(self.socks(self.proxy_port, "127.0.0.1", self.echo_port))

    def test_localhost_resolved_by_proxy(self) -> Deferred[None]:
        return self.assert_round_trip(self.socks(self.proxy_port, "localhost", self.echo_port))

    def test_ipv6_literal(self) -> Deferred[None]:
        if not self.echo_has_ipv6:
            raise unittest.SkipTest("no ::1 on this machine")
        return self.assert_round_trip(self.socks(self.proxy_port, "::1", self.echo_port))

    @defer.inlineCallbacks
    def test_nothing_listening_is_connection_refused(self) -> Generator[Deferred[Any], Any, None]:
        exc = yield self.assert_fails(
            self.socks(self.proxy_port, "127.0.0.1", free_port()), ConnectionRefused
        )
        self.assertEqual(exc.code, 5)

    @defer.inlineCallbacks
    def test_ruleset_block_is_connection_not_allowed(self) -> Generator[Deferred[Any], Any, None]:
        exc = yield self.assert_fails(
            self.socks(self.proxy_port, "127.0.0.1", self.blocked_port), ConnectionNotAllowed
        )
        self.assertEqual(exc.code, 2)


class DanteUsernameTests(_DanteTestCase):
    """
    Dante with socksmethod username (system accounts): the failure paths.
    """

    method = "username"

    @defer.inlineCallbacks
    def test_wrong_credentials(self) -> Generator[Deferred[Any], Any, None]:
        endpoint = self.socks(
            self.proxy_port,
            "127.0.0.1",
            self.echo_port,
            username="netguard-no-such-user",
            password="not-a-password",
        )
        exc = yield self.assert_fails(endpoint, AuthenticationFailed)
        self.assertNotIn("not-a-password", str(exc))

    @defer.inlineCallbacks
    def test_no_credentials_offered(self) -> Generator[Deferred[Any], Any, None]:
        yield self.assert_fails(
            self.socks(self.proxy_port, "127.0.0.1", self.echo_port), NoAcceptableMethods
        )


# ---------------------------------------------------------------------------------------------
# Hostile proxies, played by Twisted servers in the test process


class GarbageServer(Protocol):
    """
    Answers like an HTTP server.
    """

    def connectionMade(self) -> None:
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")  # type: ignore[union-attr]


class SilentServer(Protocol):
    """
    Accepts, reads, never answers; reports when the client goes away.
    """

    lost: Deferred[None]

    def connectionMade(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


class EndlessServer(Protocol):
    """
    Streams the same chunk forever, as fast as the connection takes it (a push producer), and
    reports how much it wrote when the client goes away.
    """

    chunk = b"x"
    lost: Deferred[int]

    def connectionMade(self) -> None:
        self.sent = 0
        self.paused = False
        self.call: Any = None
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._pump()

    def _pump(self) -> None:
        self.call = None
        if self.paused or not self.connected:
            return
        self.transport.write(self.chunk)  # type: ignore[union-attr]
        self.sent += len(self.chunk)
        self.call = reactor.callLater(0, self._pump)  # type: ignore[attr-defined]

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.call is None:
            self._pump()

    def stopProducing(self) -> None:
        self.paused = True

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.paused = True
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.lost.callback(self.sent)


class BogusBoundServer(Protocol):
    """
    A hostile proxy: accepts no-auth, then answers CONNECT with a success reply (REP 0) whose
    BND.ADDR is 255 binary bytes (ATYP 3), followed at once by 64 KiB of junk. C{lost} fires
    when the client has gone.
    """

    junk = b"JUNK" * 16384
    lost: Deferred[None]

    def connectionMade(self) -> None:
        self.buffer = b""
        self.replied = False

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        transport: Any = self.transport
        if len(self.buffer) >= 3 and not self.replied:
            self.buffer = self.buffer[3:]
            self.replied = True
            transport.write(b"\x05\x00")
        if self.replied and len(self.buffer) >= 7:
            self.buffer = b""
            transport.write(b"\x05\x00\x00\x03\xff" + bytes(range(255)) + b"\x00\x50" + self.junk)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


class RecordingClient(NGPClientProtocol):
    """
    The real NGP/1 client, recording every byte the service sends.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.service_bytes = b""

    def service_data(self, data: bytes) -> None:
        self.service_bytes += data


class HostileProxyTests(_RealPeersTestCase):
    """
    Proxies that misbehave: we fail cleanly, in bounded time and memory, and hang up.
    """

    def serve(self, build: Callable[[], Protocol]) -> int:
        """
        Listen on 127.0.0.1 with protocols from C{build}.

        @return: the port.
        """
        port = reactor.listenTCP(0, Factory.forProtocol(build), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @defer.inlineCallbacks
    def test_garbage(self) -> Generator[Deferred[Any], Any, None]:
        port = self.serve(GarbageServer)
        exc = yield self.assert_fails(self.socks(port, "example.com", 80), SOCKSProtocolError)
        self.assertIn("HTTP/1.1 400 Bad Request\\r\\n", exc.excerpt)
        self.assertNotIn("\r", str(exc))

    @defer.inlineCallbacks
    def test_silence_times_out(self) -> Generator[Deferred[Any], Any, None]:
        servers: list[SilentServer] = []

        def build() -> SilentServer:
            server = SilentServer()
            server.lost = Deferred()
            servers.append(server)
            return server

        port = self.serve(build)
        exc = yield self.assert_fails(
            self.socks(port, "example.com", 80, timeout=0.5), SOCKSTimeout
        )
        self.assertEqual(exc.phase, "method selection reply")
        yield servers[0].lost  # we hung up
        self.assertEqual(servers[0].received, b"\x05\x01\x00")

    @defer.inlineCallbacks
    def test_closes_at_once(self) -> Generator[Deferred[Any], Any, None]:
        class Closer(Protocol):
            def connectionMade(self) -> None:
                self.transport.loseConnection()  # type: ignore[union-attr]

        port = self.serve(Closer)
        yield self.assert_fails(self.socks(port, "example.com", 80), SOCKSConnectionClosed)

    @defer.inlineCallbacks
    def _endless(self, chunk: bytes, reason: str) -> Generator[Deferred[Any], Any, None]:
        servers: list[EndlessServer] = []

        def build() -> EndlessServer:
            server = EndlessServer()
            server.chunk = chunk
            server.lost = Deferred()
            servers.append(server)
            return server

        port = self.serve(build)
        exc = yield self.assert_fails(self.socks(port, "example.com", 80), SOCKSProtocolError)
        self.assertIn(reason, exc.reason)
        self.assertLessEqual(len(str(exc)), 400)
        yield servers[0].lost  # we hung up on the stream

    def test_endless_chargen_stream(self) -> Deferred[None]:
        line = bytes(range(0x21, 0x7F)) + b"\r\n"
        return self._endless(line * 650, "version 33")

    def test_endless_plausible_stream(self) -> Deferred[None]:
        """
        C{05 00} forever: a fine method reply, then a CONNECT reply with RSV 5.
        """
        return self._endless(b"\x05\x00" * 32768, "reserved byte 5")

    def serve_bogus_bound(self) -> tuple[int, list[BogusBoundServer]]:
        """
        Listen with L{BogusBoundServer}s.

        @return: the port, and the list the servers are added to.
        """
        servers: list[BogusBoundServer] = []

        def build() -> BogusBoundServer:
            server = BogusBoundServer()
            server.lost = Deferred()
            servers.append(server)
            return server

        return self.serve(build), servers

    @defer.inlineCallbacks
    def test_bogus_bound_address_then_junk(self) -> Generator[Deferred[Any], Any, None]:
        """
        A success reply with a 255-byte binary BND.ADDR, then 64 KiB of junk: the endpoint
        fails with L{SOCKSProtocolError} in the CONNECT reply phase, the application protocol
        never connects nor receives a byte, and we hang up.
        """
        port, servers = self.serve_bogus_bound()
        client = IntegrityClient([b"x"])
        endpoint = self.socks(port, "example.com", 80)
        exc = yield self.assertFailure(endpoint.connect(QuietFactory(client)), SOCKSProtocolError)
        self.assertEqual(exc.phase, "CONNECT reply")
        self.assertIn("255-byte bound name", exc.reason)
        self.assertEqual(client.count, 0)
        self.assertIsNone(client.transport)
        yield servers[0].lost

    @defer.inlineCallbacks
    def test_gateway_answers_backend_unavailable_and_relays_no_junk(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """
        Through the real gateway: a service whose SOCKS5 proxy sends the bogus success reply
        and junk. The client gets C{ERR BACKEND_UNAVAILABLE}, never C{OK OPEN}, and not one
        byte of the junk; the gateway logs the cause once, naming the phase, with the proxy's
        bytes escaped once.
        """
        port, servers = self.serve_bogus_bound()
        gateway = RunningGateway(
            self,
            "[services.viasocks]\n"
            'backend = "tcp:host=127.0.0.1:port=6379"\n'
            f'socks5 = "tcp:host=127.0.0.1:port={port}"\n'
            'users = ["*"]\n',
            overrides={"listen": ["tcp:0:interface=127.0.0.1"]},
        )
        client = RecordingClient(gateway.credentials, "viasocks", clock=reactor)
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", gateway.port()).connect(
            QuietFactory(client)
        )
        error = yield self.assertFailure(client.opened, NGPError)
        self.assertEqual(error.code, "BACKEND_UNAVAILABLE")
        self.assertEqual(client.service_bytes, b"")
        yield servers[0].lost
        yield gateway.idle()

        [failed] = [e for e in self.events if e.get("event") == "socks5.failed"]
        self.assertEqual(failed["phase"], "CONNECT reply")
        [backend] = [e for e in self.events if e.get("event") == "session.backend_failed"]
        self.assertEqual(backend["error_type"], "SOCKSProtocolError")
        line = format_text(backend)
        assert line is not None
        self.assertIn("received: \\x05\\0\\0\\x03\\xff\\0\\x01\\x02", line)
        self.assertNotIn("\\\\", line)
        self.assertNotIn("JUNK", line)

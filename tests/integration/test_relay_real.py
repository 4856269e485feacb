"""
The relay and the backends end to end: the real gateway service (as C{twistd netguard} builds
it) on loopback, the real NGP/1 client, and real backends started by the tests as separate
processes: redis-server, microsocks (with and without RFC 1929 authentication), and small
Python servers (L{PEER_SCRIPT}) that echo, stream, push or answer only after EOF.

What is proven here:
  - bytes are relayed unchanged both ways (redis round trips of 1 MiB binary values; random
    data in random chunk sizes checked by SHA-256, one direction and both at once);
  - backpressure keeps the gateway's memory bounded: a backend pushing 256 MiB to a client that
    reads slowly never makes the gateway queue more than a fixed cap for that client;
  - half-close is passed through: a client that half-closes still gets the whole reply;
  - backend failures (refused, connect timeout, SOCKS5 failure, SOCKS5 authentication failure)
    are answered with C{ERR BACKEND_UNAVAILABLE} and logged with the precise cause;
  - SOCKS5 outbound through a real proxy, by the service's C{socks5} key and by a C{socks5:}
    backend string with a user and a password file;
  - C{NOT_AUTHORIZED}, and C{SERVICES} listing only what the user may open.

Every wait is bounded; every process is stopped by its PID in a cleanup; every port comes from
binding port 0.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, DeferredQueue, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from netguard.auth.scram import SCRAM_SHA_256, ClientExchange, decode_wire, encode_wire
from netguard.client.protocol import Credentials, NGPClientProtocol, NGPError
from netguard.config import load_config
from netguard.gateway.protocol import SessionState
from netguard.service import make_service
from tests.integration.util import free_port, peer_unavailable, redis_server_argv, stop_process

REDIS_SERVER = "/usr/bin/redis-server"
MICROSOCKS = "/usr/bin/microsocks"

#: How long a peer process may take to start listening.
START_DEADLINE = 10.0
#: The bound on any single wait in these tests (a hang fails the test, it never blocks it).
WAIT = 30.0

#: The gateway-side queue for one client must stay under this while a backend pushes
#: 256 MiB to a slow reader. The relay's own bound is one high-water mark (64 KiB) plus one
#: read (64 KiB); 4 MiB leaves room for any transport detail while still catching a queue
#: that follows the backend instead of the client.
QUEUE_CAP = 4 * 1024 * 1024
#: What the pushing backend sends in the backpressure test.
PUSH_SIZE = 256 * 1024 * 1024
#: The slow reader takes at most this many bytes per tick...
READ_BUDGET = 1024 * 1024
#: ...and ticks this often (so it reads at most ~50 MB/s, far below what the gateway relays).
READ_TICK = 0.02

#: The peer servers, run as separate processes: C{python -c PEER_SCRIPT MODE ARGS...}. Each
#: listens on 127.0.0.1 port 0, prints C{PORT <n>}, and serves every connection in a thread:
#:   echo                    send back every byte; after EOF, half-close
#:   sinksource SEED SIZE    send SIZE bytes from random.Random(SEED) in random chunks while
#:                           reading everything; after the client's EOF send
#:                           "<count> <sha256 hex>\n" of what was read, then half-close
#:   push SIZE SEED          send SIZE bytes (a 1 MiB block from random.Random(SEED), repeated)
#:                           as fast as possible, then half-close
#:   replyaftereof           read until EOF, then send "<count> <sha256 hex>\n" followed by
#:                           the bytes read, reversed, then half-close
PEER_SCRIPT = r"""
import hashlib, random, socket, sys, threading

mode, args = sys.argv[1], sys.argv[2:]


def read_all(conn, keep=None):
    digest, count = hashlib.sha256(), 0
    while True:
        data = conn.recv(262144)
        if not data:
            return count, digest.hexdigest()
        digest.update(data)
        count += len(data)
        if keep is not None:
            keep.append(data)


def echo(conn):
    while True:
        data = conn.recv(262144)
        if not data:
            break
        conn.sendall(data)


def sinksource(conn):
    seed, size = int(args[0]), int(args[1])
    payload = memoryview(random.Random(seed).randbytes(size))
    result = {}
    reader = threading.Thread(target=lambda: result.update(r=read_all(conn)))
    reader.start()
    rng, offset = random.Random(seed + 1), 0
    while offset < size:
        step = rng.randint(1, 65536)
        conn.sendall(payload[offset : offset + step])
        offset += step
    reader.join()
    count, hexdigest = result["r"]
    conn.sendall(f"{count} {hexdigest}\n".encode())


def push(conn):
    size, block = int(args[0]), random.Random(int(args[1])).randbytes(1 << 20)
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        conn.sendall(piece)
        sent += len(piece)


def replyaftereof(conn):
    chunks = []
    count, hexdigest = read_all(conn, chunks)
    conn.sendall(f"{count} {hexdigest}\n".encode() + b"".join(chunks)[::-1])


HANDLERS = {"echo": echo, "sinksource": sinksource, "push": push, "replyaftereof": replyaftereof}


def serve(conn):
    try:
        HANDLERS[mode](conn)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # wait for the other side to finish too
    except OSError:
        pass
    finally:
        conn.close()


server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(64)
print("PORT", server.getsockname()[1], flush=True)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def redis_ping(port: int) -> bool:
    """
    @return: whether a redis on C{port} answers PING (one bounded attempt).
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def accepts(port: int) -> bool:
    """
    @return: whether something accepts TCP connections on C{port} (one bounded attempt).
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def resp(*words: bytes) -> bytes:
    """
    @return: a Redis (RESP) command.
    """
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        out.append(b"$%d\r\n%s\r\n" % (len(word), word))
    return b"".join(out)


def random_chunks(rng: random.Random, data: bytes) -> list[bytes]:
    """
    @return: C{data} cut into chunks of random sizes, from 1 byte to 64 KiB.
    """
    chunks, offset = [], 0
    while offset < len(data):
        step = rng.choice((1, 3, 100, 1400, 4096, 16384, 65536, rng.randint(1, 65536)))
        chunks.append(data[offset : offset + step])
        offset += step
    return chunks


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def later(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> Any:
    """
    Poll the reactor until C{predicate()} holds, for at most C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        yield later(0.01)


@implementer(IPullProducer)
class ChunkSender:
    """
    Writes chunks to a transport one at a time, each when the previous one has been taken
    (a pull producer), so sending is paced by the connection while the client reads.
    C{done} fires when the last chunk is written; with C{half_close}, the write side is then
    closed.
    """

    def __init__(self, transport: Any, chunks: list[bytes], half_close: bool = False):
        self.transport = transport
        self.chunks = chunks
        self.index = 0
        self.half_close = half_close
        self.done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        self.transport.registerProducer(self, False)
        return self.done

    def resumeProducing(self) -> None:
        if self.index < len(self.chunks):
            self.transport.write(self.chunks[self.index])
            self.index += 1
            return
        self.transport.unregisterProducer()
        if self.half_close:
            self.transport.loseWriteConnection()
        if not self.done.called:
            self.done.callback(None)

    def stopProducing(self) -> None:
        if not self.done.called:
            self.done.errback(Failure(ConnectionError("connection lost while sending")))


class ServiceClient(NGPClientProtocol):
    """
    The real NGP/1 client; keeps (or only hashes) what the service sends, and lets a test
    wait for a condition on it.
    """

    def __init__(self, credentials: Credentials, service: str, keep: bool = True):
        super().__init__(credentials, service, clock=reactor)
        self.keep = keep
        self.data = bytearray()
        self.count = 0
        self.hasher = hashlib.sha256()
        self.closed: Deferred[None] = Deferred()
        self._waiters: list[tuple[Callable[[ServiceClient], bool], Deferred[None]]] = []

    def service_data(self, data: bytes) -> None:
        self.count += len(data)
        self.hasher.update(data)
        if self.keep:
            self.data += data
        self._check()

    def wait_for(self, predicate: Callable[[ServiceClient], bool], what: str) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once C{predicate(self)} holds, or fails when the
            connection closes first or after L{WAIT} seconds.
        """
        waiter: Deferred[None] = Deferred()
        self._waiters.append((predicate, waiter))
        self._check()

        def describe(failure: Failure) -> Failure:
            failure.trap(Exception)
            raise AssertionError(f"{what}: not reached ({self.count} bytes received): {failure}")

        return waiter.addTimeout(WAIT, reactor).addErrback(describe)

    def wait_closed(self, timeout: float = WAIT) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires when the connection is closed, or fails after
            C{timeout} seconds.
        """
        closed: Deferred[None] = Deferred()

        def fire(result: Any) -> Any:
            if not closed.called:
                closed.callback(None)
            return result

        self.closed.addBoth(fire)
        return closed.addTimeout(timeout, reactor)

    def _check(self) -> None:
        for entry in list(self._waiters):
            predicate, waiter = entry
            if predicate(self):
                self._waiters.remove(entry)
                waiter.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        for _predicate, waiter in self._waiters:
            if not waiter.called:
                waiter.errback(Failure(ConnectionError("connection closed")))
        self._waiters = []
        if not self.closed.called:
            self.closed.callback(None)


class SlowReader(ServiceClient):
    """
    A client that reads slowly: at most L{READ_BUDGET} bytes per L{READ_TICK}, reading paused
    in between (so the gateway must queue or stop reading the backend).
    """

    def __init__(self, credentials: Credentials, service: str):
        super().__init__(credentials, service, keep=False)
        self.allowance = 0
        self.ticker = LoopingCall(self._tick)

    def service_opened(self) -> None:
        self.transport.pauseProducing()
        self.ticker.start(READ_TICK)

    def _tick(self) -> None:
        self.allowance = READ_BUDGET
        self.transport.resumeProducing()

    def service_data(self, data: bytes) -> None:
        super().service_data(data)
        self.allowance -= len(data)
        if self.allowance <= 0:
            self.transport.pauseProducing()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.ticker.running:
            self.ticker.stop()
        super().connectionLost(reason)


class LineClient(LineOnlyReceiver):
    """
    A line-phase client for the C{SERVICES} and C{NOT_AUTHORIZED} checks: every line from the
    gateway goes to a queue.
    """

    delimiter = b"\r\n"

    def __init__(self) -> None:
        self.lines: DeferredQueue[bytes] = DeferredQueue()
        self.closed: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.lines.put(line)

    def next_line(self) -> Deferred[bytes]:
        return self.lines.get().addTimeout(WAIT, reactor)

    @inlineCallbacks
    def command(self, line: bytes) -> Any:
        self.sendLine(line)
        reply = yield self.next_line()
        return reply

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)


class SilentServer(Protocol):
    """
    Accepts and never says a word (a proxy that hangs).
    """


class RelayRealTestCase(unittest.TestCase):
    """
    A temp state directory, a log observer, and helpers to start peers and the gateway.
    """

    timeout = 120

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="ngr-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.legs: list[Any] = []
        self.clients: list[Any] = []
        self.seed = int.from_bytes(os.urandom(4), "big")
        self.rng = random.Random(self.seed)

    # -- peers ---------------------------------------------------------------------------

    def require(self, path: str, package: str) -> None:
        if not os.access(path, os.X_OK):
            peer_unavailable(
                f"{path} is not installed (Debian package {package}; .ci/run installs it)"
            )

    def spawn(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        """
        Start a process whose output goes to a log file; stopped by PID in a cleanup.
        """
        log = open(os.path.join(self.tmp, f"{name}.log"), "wb")  # noqa: SIM115 - closed in the cleanup
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.addCleanup(stop_process, proc, log)
        return proc

    def log_of(self, name: str) -> str:
        with open(os.path.join(self.tmp, f"{name}.log"), "rb") as handle:
            return handle.read()[-2000:].decode("utf-8", "replace")

    def start_peer(self, mode: str, *args: object) -> int:
        """
        Start a L{PEER_SCRIPT} server; return the port it listens on.
        """
        name = f"peer-{mode}-{len(self.clients)}-{time.monotonic_ns()}"
        proc = self.spawn([sys.executable, "-c", PEER_SCRIPT, mode, *map(str, args)], name)
        path = os.path.join(self.tmp, f"{name}.log")
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline and proc.poll() is None:
            with open(path, "rb") as handle:
                match = re.search(rb"PORT (\d+)\n", handle.read())
            if match:
                return int(match.group(1))
            time.sleep(0.02)
        raise AssertionError(f"peer {mode} did not start: {self.log_of(name)}")

    def start_redis(self) -> int:
        """
        Start redis-server (no persistence) on a free port; return the port once it answers
        PING.
        """
        self.require(REDIS_SERVER, "redis-server")
        for attempt in range(3):
            port = free_port()
            name = f"redis-{attempt}"
            proc = self.spawn(redis_server_argv(REDIS_SERVER, port), name)
            deadline = time.monotonic() + START_DEADLINE
            while time.monotonic() < deadline and proc.poll() is None:
                if redis_ping(port):
                    return port
                time.sleep(0.05)
        raise AssertionError(f"redis-server did not start: {self.log_of(name)}")

    def start_microsocks(self, *extra: str) -> int:
        """
        Start microsocks on a free port; return the port once it accepts connections.
        """
        self.require(MICROSOCKS, "microsocks")
        for attempt in range(3):
            port = free_port()
            name = f"microsocks-{attempt}-{time.monotonic_ns()}"
            proc = self.spawn([MICROSOCKS, "-i", "127.0.0.1", "-p", str(port), *extra], name)
            deadline = time.monotonic() + START_DEADLINE
            while time.monotonic() < deadline and proc.poll() is None:
                if accepts(port):
                    return port
                time.sleep(0.02)
        raise AssertionError(f"microsocks did not start: {self.log_of(name)}")

    # -- the gateway ---------------------------------------------------------------------

    def start_gateway(self, services: list[str] | None = None, config: str = "") -> None:
        """
        Start the real gateway service in-process on 127.0.0.1 port 0.

        @param services: C{NAME=ENDPOINT} overrides (open to every user).
        @param config: the text of a TOML configuration file, if any.
        """
        path = None
        if config:
            path = os.path.join(self.tmp, "netguard.toml")
            with open(path, "w") as handle:
                handle.write(config)
        loaded = load_config(
            path,
            {
                "state_dir": self.tmp,
                "listen": ["tcp:0:interface=127.0.0.1"],
                "services": list(services or []),
            },
        )
        terminal = io.StringIO()
        self.gateway = make_service(loaded, reactor, terminal=terminal)
        factory = self.gateway.factory
        opener = factory.open_backend

        def recording(service: Any, origin: Any = None) -> Deferred[Any]:
            opening = opener(service, origin)

            def record(leg: Any) -> Any:
                self.legs.append(leg)
                return leg

            return opening.addCallback(record)

        factory.open_backend = recording  # type: ignore[method-assign]
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        self.addCleanup(self.wait_all_closed)
        self.port = self.gateway.ports[0].getHost().port
        shown = terminal.getvalue()
        self.user = re.search(r"user:\s+(\S+)", shown).group(1)  # type: ignore[union-attr]
        self.password = re.search(r"password:\s+(\S+)", shown).group(1)  # type: ignore[union-attr]

    @inlineCallbacks
    def wait_all_closed(self) -> Any:
        """
        Close what the test left open, then wait until every client connection and every
        relay (client and backend connections both) has ended.
        """
        for client in self.clients:
            if not client.closed.called:
                client.transport.abortConnection()
        yield DeferredList([c.closed for c in self.clients]).addTimeout(WAIT, reactor)
        attached = [leg.done for leg in self.legs if leg.splice is not None]
        yield DeferredList(attached).addTimeout(WAIT, reactor)
        yield wait_until(lambda: not self.gateway.factory.sessions, "sessions to end")

    def endpoint(self) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)

    @inlineCallbacks
    def connect(self, service: str, client_class: type[ServiceClient] = ServiceClient) -> Any:
        """
        Connect the real client to the gateway and ask for C{service} (not yet waiting).
        """
        client = client_class(Credentials(self.user, self.password), service)
        yield connectProtocol(self.endpoint(), client)
        self.clients.append(client)
        return client

    @inlineCallbacks
    def open(self, service: str, client_class: type[ServiceClient] = ServiceClient) -> Any:
        """
        Connect and open C{service}; return the client once raw mode starts.
        """
        client = yield self.connect(service, client_class)
        yield client.opened.addTimeout(WAIT, reactor)
        return client

    @inlineCallbacks
    def assert_open_refused(self, service: str, code: str) -> Any:
        """
        Opening C{service} is refused with C{code}.

        @return: the seconds from the connection to the refusal.
        """
        started = time.monotonic()
        client = yield self.connect(service)
        error = yield self.assertFailure(client.opened.addTimeout(WAIT, reactor), NGPError)
        elapsed = time.monotonic() - started
        self.assertEqual(error.code, code, str(error))
        return elapsed

    def logged(self, name: str) -> list[dict[str, Any]]:
        """
        @return: the gateway events named C{name}.
        """
        return [e for e in self.events if e.get("event") == name]

    def relaying_session(self) -> Any:
        sessions = [s for s in self.gateway.factory.sessions if s.state is SessionState.RELAYING]
        self.assertEqual(len(sessions), 1)
        return sessions[0]

    def note(self) -> str:
        return f"(random seed {self.seed})"


class RedisTests(RelayRealTestCase):
    """
    redis-server as a backend.
    """

    def setUp(self) -> None:
        super().setUp()
        self.redis_port = self.start_redis()
        self.start_gateway([f"redis=tcp:host=127.0.0.1:port={self.redis_port}"])

    @inlineCallbacks
    def test_ping(self) -> Any:
        client = yield self.open("redis")
        client.transport.write(b"*1\r\n$4\r\nPING\r\n")
        yield client.wait_for(lambda c: c.data.endswith(b"\r\n"), "PONG")
        self.assertEqual(bytes(client.data), b"+PONG\r\n")

    @inlineCallbacks
    def test_set_get_of_one_mib_binary_value(self) -> Any:
        value = self.rng.randbytes(1 << 20) + b"\r\n\x00$*\r\n"
        client = yield self.open("redis")
        for chunk in random_chunks(self.rng, resp(b"SET", b"ng:blob", value)):
            client.transport.write(chunk)
        yield client.wait_for(lambda c: c.data.endswith(b"\r\n"), "SET reply")
        self.assertEqual(bytes(client.data), b"+OK\r\n")
        client.data.clear()
        client.transport.write(resp(b"GET", b"ng:blob"))
        expected = b"$%d\r\n" % len(value) + value + b"\r\n"
        yield client.wait_for(lambda c: len(c.data) >= len(expected), "GET reply")
        self.assertEqual(sha(bytes(client.data)), sha(expected), self.note())
        self.assertEqual(len(client.data), len(expected))

    @inlineCallbacks
    def test_pipelined_commands_behind_open(self) -> Any:
        # Raw bytes right behind OPEN are held while the backend connects, then delivered
        # first, in order.
        client = ServiceClient(Credentials(self.user, self.password), "redis")
        opened = client.opened

        def pipelined(_: Any) -> None:
            client.transport.write(resp(b"SET", b"ng:k", b"v1") + resp(b"GET", b"ng:k"))

        original = client._on_auth_ok

        def on_auth_ok(line: bytes) -> None:
            original(line)  # sends OPEN
            pipelined(None)

        client._on_auth_ok = on_auth_ok  # type: ignore[method-assign]
        yield connectProtocol(self.endpoint(), client)
        self.clients.append(client)
        yield opened.addTimeout(WAIT, reactor)
        yield client.wait_for(lambda c: bytes(c.data).count(b"\r\n") >= 3, "replies")
        self.assertEqual(bytes(client.data), b"+OK\r\n$2\r\nv1\r\n")


class IntegrityTests(RelayRealTestCase):
    """
    Random data, random chunk sizes, SHA-256 compared, against separate backend processes.
    """

    SIZE = 8 * 1024 * 1024

    @inlineCallbacks
    def test_echo_backend_8_mib_in_random_chunks_while_reading(self) -> Any:
        port = self.start_peer("echo")
        self.start_gateway([f"echo2=tcp:host=127.0.0.1:port={port}"])
        payload = self.rng.randbytes(self.SIZE)
        client = yield self.open("echo2", ServiceClient)
        client.keep = False
        sending = ChunkSender(client.transport, random_chunks(self.rng, payload)).start()
        yield client.wait_for(lambda c: c.count >= self.SIZE, "the echo of 8 MiB")
        yield sending
        self.assertEqual(client.count, self.SIZE)
        self.assertEqual(client.hasher.hexdigest(), sha(payload), self.note())
        client.transport.loseConnection()
        yield client.wait_closed()
        # The relay's accounting, as the close event reports it.
        yield wait_until(lambda: self.logged("conn.close"), "the close event")
        close = self.logged("conn.close")[0]
        self.assertEqual((close["bytes_up"], close["bytes_down"]), (self.SIZE, self.SIZE))
        self.assertEqual(close["closed_by"], "client")

    @inlineCallbacks
    def test_sink_and_source_both_directions_at_once(self) -> Any:
        backend_seed = self.rng.randrange(1 << 30)
        port = self.start_peer("sinksource", backend_seed, self.SIZE)
        self.start_gateway([f"both=tcp:host=127.0.0.1:port={port}"])
        ours = self.rng.randbytes(self.SIZE)
        theirs = random.Random(backend_seed).randbytes(self.SIZE)
        client = yield self.open("both")
        sender = ChunkSender(client.transport, random_chunks(self.rng, ours), half_close=True)
        yield sender.start().addTimeout(WAIT, reactor)
        yield client.wait_closed()
        received = bytes(client.data)
        self.assertEqual(
            sha(received[: self.SIZE]), sha(theirs), "backend -> client " + self.note()
        )
        trailer = received[self.SIZE :]
        self.assertEqual(
            trailer, f"{self.SIZE} {sha(ours)}\n".encode(), "client -> backend " + self.note()
        )


class BackpressureTests(RelayRealTestCase):
    """
    A backend pushing 256 MiB to a slow reader: the gateway's queue for that client stays
    under L{QUEUE_CAP}, and every byte arrives.

    The in-process gateway shares its event loop with the test's client and sampler, so on a
    loaded machine its event-loop-lag shedding would refuse the test's own client
    (C{ERR BUSY overload-lag}); this is about backpressure, not shedding, so that signal is
    off here (shedding has its own tests). The time bounds are hang guards only.
    """

    timeout = 600

    #: The gateway's configuration: no event-loop-lag shedding.
    CONFIG = '[overload]\nmax_lag = "off"\n'

    @inlineCallbacks
    def test_push_256_mib_to_a_slow_reader(self) -> Any:
        """
        While a backend pushes 256 MiB to a client that reads at most 1 MiB per 20 ms, the
        gateway's queue towards that client never reaches L{QUEUE_CAP} (it stops reading the
        backend instead), and all 256 MiB arrive intact.
        """
        block_seed = self.rng.randrange(1 << 30)
        port = self.start_peer("push", PUSH_SIZE, block_seed)
        self.start_gateway([f"push=tcp:host=127.0.0.1:port={port}"], config=self.CONFIG)
        block = random.Random(block_seed).randbytes(1 << 20)
        expected = hashlib.sha256()
        for _ in range(PUSH_SIZE // len(block)):
            expected.update(block)

        samples: list[int] = []
        backend_samples: list[int] = []

        def queued(transport: Any) -> int:
            return len(transport.dataBuffer) + transport._tempDataLen

        def sample() -> None:
            for session in self.gateway.factory.sessions:
                if session.state is SessionState.RELAYING:
                    samples.append(queued(session.transport))
                    leg = session._leg
                    if leg is not None and leg.protocol is not None:
                        backend_samples.append(queued(leg.protocol.transport))

        sampler = LoopingCall(sample)
        sampler.start(0.01)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        started = time.monotonic()
        client = yield self.open("push", SlowReader)
        yield client.wait_closed(timeout=540)
        elapsed = time.monotonic() - started
        sampler.stop()
        self.assertEqual(client.count, PUSH_SIZE)
        self.assertEqual(client.hasher.hexdigest(), expected.hexdigest())
        self.assertGreater(len(samples), 10)
        peak = max(samples)
        # Figures for the report (never asserted on speed).
        sys.stderr.write(
            f"\n[backpressure] {PUSH_SIZE >> 20} MiB in {elapsed:.1f}s, {len(samples)} samples,"
            f" max queued to client {peak} bytes, max queued to backend"
            f" {max(backend_samples, default=0)} bytes\n"
        )
        self.assertLess(peak, QUEUE_CAP)


class NeverReader(ServiceClient):
    """
    A client that stops reading as soon as the service is open.
    """

    def service_opened(self) -> None:
        self.transport.pauseProducing()


class TimeBoundTests(RelayRealTestCase):
    """
    The relay's time bounds on real sockets: a client that stops reading is cut off after
    C{write_timeout}; a silent relay is closed after the service's C{idle_timeout}.
    """

    @inlineCallbacks
    def test_client_that_stops_reading_is_cut_off(self) -> Any:
        port = self.start_peer("push", 1 << 30, 1)
        self.start_gateway(
            config=(
                "[limits]\nwrite_timeout = 1\n"
                "[services.push]\n"
                f'backend = "tcp:host=127.0.0.1:port={port}"\n'
                'users = ["*"]\n'
            )
        )
        client = yield self.open("push", NeverReader)
        yield wait_until(lambda: self.logged("conn.close"), "the close event")
        close = self.logged("conn.close")[0]
        self.assertEqual(close["closed_by"], "client-stalled")
        self.assertIn("the client stopped reading for write_timeout", formatEvent(close))
        # A client that does not read does not notice the reset until it reads again.
        client.transport.resumeProducing()
        yield client.wait_closed()
        self.assertLess(client.count, 1 << 30)

    @inlineCallbacks
    def test_silent_relay_closed_after_idle_timeout(self) -> Any:
        port = self.start_peer("echo")
        self.start_gateway(
            config=(
                "[services.quiet]\n"
                f'backend = "tcp:host=127.0.0.1:port={port}"\n'
                'users = ["*"]\n'
                "idle_timeout = 1\n"
            )
        )
        client = yield self.open("quiet")
        client.transport.write(b"ping")
        yield client.wait_for(lambda c: c.data == b"ping", "the echo")
        yield client.wait_closed()
        yield wait_until(lambda: self.logged("conn.close"), "the close event")
        close = self.logged("conn.close")[0]
        self.assertEqual(close["closed_by"], "idle")
        self.assertEqual((close["bytes_up"], close["bytes_down"]), (4, 4))


class HalfCloseTests(RelayRealTestCase):
    @inlineCallbacks
    def test_client_half_close_then_full_reply_after_eof(self) -> Any:
        port = self.start_peer("replyaftereof")
        self.start_gateway([f"rae=tcp:host=127.0.0.1:port={port}"])
        request = self.rng.randbytes(1 << 20)
        client = yield self.open("rae")
        sender = ChunkSender(client.transport, random_chunks(self.rng, request), half_close=True)
        yield sender.start().addTimeout(WAIT, reactor)
        yield client.wait_closed()
        header = f"{len(request)} {sha(request)}\n".encode()
        self.assertEqual(bytes(client.data[: len(header)]), header, self.note())
        self.assertEqual(sha(bytes(client.data[len(header) :])), sha(request[::-1]), self.note())

    @inlineCallbacks
    def test_echo_through_socat_with_half_close(self) -> Any:
        socat = "/usr/bin/socat"
        self.require(socat, "socat")
        port = free_port()
        self.spawn(
            [socat, f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "EXEC:cat"], "socat"
        )
        yield wait_until(lambda: accepts(port), "socat to listen", START_DEADLINE)
        self.start_gateway([f"cat=tcp:host=127.0.0.1:port={port}"])
        payload = self.rng.randbytes(1 << 20)
        client = yield self.open("cat")
        sender = ChunkSender(client.transport, random_chunks(self.rng, payload), half_close=True)
        yield sender.start().addTimeout(WAIT, reactor)
        yield client.wait_closed()
        self.assertEqual(sha(bytes(client.data)), sha(payload), self.note())


class BackendFailureTests(RelayRealTestCase):
    """
    Backend failures are answered with BACKEND_UNAVAILABLE, never hung, and logged with the
    precise cause.
    """

    def backend_failed(self) -> dict[str, Any]:
        events = self.logged("session.backend_failed")
        self.assertEqual(len(events), 1, events)
        return events[0]

    @inlineCallbacks
    def test_refused(self) -> Any:
        port = free_port()  # nothing listens there
        self.start_gateway([f"down=tcp:host=127.0.0.1:port={port}"])
        yield self.assert_open_refused("down", "BACKEND_UNAVAILABLE")
        event = self.backend_failed()
        self.assertEqual(event["error_type"], "ConnectionRefusedError")
        self.assertIn("refused", event["cause"])
        self.assertEqual(event["service"], "down")

    def hanging_listener(self) -> int:
        """
        A listening socket with backlog 0 that never accepts, its queue filled so that
        further SYNs go unanswered.

        @return: its port.
        @raise unittest.SkipTest: never; if the kernel still completes connections, the
            caller falls back to a silent SOCKS5 proxy.
        """
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        for _ in range(3):
            filler = socket.socket()
            self.addCleanup(filler.close)
            filler.settimeout(0.3)
            try:
                filler.connect(("127.0.0.1", port))
            except OSError:
                return port  # this SYN hung: the queue is full
        return 0

    @inlineCallbacks
    def test_connect_timeout(self) -> Any:
        port = self.hanging_listener()
        if port:
            backend = f'backend = "tcp:host=127.0.0.1:port={port}"'
        else:
            # The kernel completed every connection: use a proxy that accepts and is silent.
            silent = reactor.listenTCP(  # type: ignore[attr-defined]
                0, Factory.forProtocol(SilentServer), interface="127.0.0.1"
            )
            self.addCleanup(silent.stopListening)
            backend = (
                f'backend = "tcp:host=127.0.0.1:port=9"\n'
                f'socks5 = "tcp:host=127.0.0.1:port={silent.getHost().port}"'
            )
        self.start_gateway(
            config=f'[services.slow]\n{backend}\nusers = ["*"]\nconnect_timeout = 1.0\n'
        )
        elapsed = yield self.assert_open_refused("slow", "BACKEND_UNAVAILABLE")
        event = self.backend_failed()
        if event["error_type"] == "BackendConnectTimeout":
            self.assertIn("no connection within 1s", event["cause"])
        else:  # through the silent proxy
            self.assertEqual(event["error_type"], "SOCKSTimeout")
        sys.stderr.write(f"\n[connect timeout] refused after {elapsed:.2f}s (bound 1s)\n")

    @inlineCallbacks
    def test_socks5_target_refused(self) -> Any:
        proxy = self.start_microsocks()
        closed_port = free_port()
        self.start_gateway(
            config=(
                "[services.viasocks]\n"
                f'backend = "tcp:host=127.0.0.1:port={closed_port}"\n'
                f'socks5 = "tcp:host=127.0.0.1:port={proxy}"\n'
                'users = ["*"]\n'
            )
        )
        yield self.assert_open_refused("viasocks", "BACKEND_UNAVAILABLE")
        event = self.backend_failed()
        self.assertIn("SOCKS5", event["cause"])
        self.assertTrue(event["error_type"].endswith(("Refused", "Failure", "Unreachable")))

    @inlineCallbacks
    def test_socks5_proxy_down(self) -> Any:
        self.start_gateway(
            config=(
                "[services.viasocks]\n"
                'backend = "tcp:host=127.0.0.1:port=6379"\n'
                f'socks5 = "tcp:host=127.0.0.1:port={free_port()}"\n'
                'users = ["*"]\n'
            )
        )
        yield self.assert_open_refused("viasocks", "BACKEND_UNAVAILABLE")
        self.assertEqual(self.backend_failed()["error_type"], "ConnectionRefusedError")

    @inlineCallbacks
    def test_socks5_wrong_password(self) -> Any:
        proxy = self.start_microsocks("-u", "nguser", "-P", "right-password")
        password_file = os.path.join(self.tmp, "socks-password")
        with open(password_file, "w") as handle:
            handle.write("wrong-password\n")
        os.chmod(password_file, 0o600)
        self.start_gateway(
            config=(
                "[services.authsocks]\n"
                f'backend = "socks5:host=127.0.0.1:port=6379:proxy_host=127.0.0.1'
                f':proxy_port={proxy}:user=nguser:password_file={password_file}"\n'
                'users = ["*"]\n'
            )
        )
        yield self.assert_open_refused("authsocks", "BACKEND_UNAVAILABLE")
        event = self.backend_failed()
        self.assertEqual(event["error_type"], "AuthenticationFailed")
        self.assertNotIn("wrong-password", repr(self.events))

    @inlineCallbacks
    def test_client_told_nothing_of_the_cause(self) -> Any:
        port = free_port()
        self.start_gateway([f"down=tcp:host=127.0.0.1:port={port}"])
        client = yield self.connect("down")
        error = yield self.assertFailure(client.opened.addTimeout(WAIT, reactor), NGPError)
        self.assertNotIn(str(port), error.text)
        self.assertNotIn("refused", error.text.lower())
        yield client.wait_closed()


class SOCKS5OutboundTests(RelayRealTestCase):
    """
    Backends reached through a real SOCKS5 proxy (microsocks).
    """

    @inlineCallbacks
    def test_redis_through_the_services_socks5_proxy(self) -> Any:
        redis_port = self.start_redis()
        proxy = self.start_microsocks()
        self.start_gateway(
            config=(
                "[services.redis]\n"
                f'backend = "tcp:host=127.0.0.1:port={redis_port}"\n'
                f'socks5 = "tcp:host=127.0.0.1:port={proxy}"\n'
                'users = ["*"]\n'
            )
        )
        value = self.rng.randbytes(256 * 1024)
        client = yield self.open("redis")
        client.transport.write(
            resp(b"PING") + resp(b"SET", b"ng:s", value) + resp(b"GET", b"ng:s")
        )
        expected = b"+PONG\r\n+OK\r\n" + b"$%d\r\n" % len(value) + value + b"\r\n"
        yield client.wait_for(lambda c: len(c.data) >= len(expected), "redis replies")
        self.assertEqual(sha(bytes(client.data)), sha(expected), self.note())
        # The connection really went through the proxy.
        backend_peer = self.relaying_session()._leg.protocol.transport.getPeer()
        self.assertEqual(backend_peer.port, proxy)

    @inlineCallbacks
    def test_echo_backend_through_socks5_in_random_chunks(self) -> Any:
        # (No half-close here: microsocks closes both directions on the first EOF.)
        port = self.start_peer("echo")
        proxy = self.start_microsocks()
        self.start_gateway(
            config=(
                "[services.echo2]\n"
                f'backend = "tcp:host=127.0.0.1:port={port}"\n'
                f'socks5 = "tcp:host=127.0.0.1:port={proxy}"\n'
                'users = ["*"]\n'
            )
        )
        payload = self.rng.randbytes(2 * 1024 * 1024)
        client = yield self.open("echo2")
        sending = ChunkSender(client.transport, random_chunks(self.rng, payload)).start()
        yield client.wait_for(lambda c: c.count >= len(payload), "the echo")
        yield sending
        self.assertEqual(client.count, len(payload))
        self.assertEqual(sha(bytes(client.data)), sha(payload), self.note())

    @inlineCallbacks
    def test_socks5_backend_string_with_user_and_password_file(self) -> Any:
        redis_port = self.start_redis()
        proxy = self.start_microsocks("-u", "nguser", "-P", "s3cret-pw")
        password_file = os.path.join(self.tmp, "socks-password")
        with open(password_file, "w") as handle:
            handle.write("s3cret-pw\n")
        os.chmod(password_file, 0o600)
        self.start_gateway(
            config=(
                "[services.redis]\n"
                f'backend = "socks5:host=127.0.0.1:port={redis_port}:proxy_host=127.0.0.1'
                f':proxy_port={proxy}:user=nguser:password_file={password_file}"\n'
                'users = ["*"]\n'
            )
        )
        client = yield self.open("redis")
        client.transport.write(resp(b"PING"))
        yield client.wait_for(lambda c: c.data.endswith(b"\r\n"), "PONG")
        self.assertEqual(bytes(client.data), b"+PONG\r\n")
        self.assertNotIn("s3cret-pw", repr(self.events))


class AuthorizationTests(RelayRealTestCase):
    """
    NOT_AUTHORIZED, and SERVICES listing only what the user may open.
    """

    def setUp(self) -> None:
        super().setUp()
        self.start_gateway(
            config=(
                "[services.echo]\n"
                'backend = "builtin:echo"\n'
                'users = ["*"]\n'
                "[services.secret]\n"
                'backend = "builtin:echo"\n'
                'users = ["someoneelse"]\n'
                "[services.open2]\n"
                'backend = "builtin:echo"\n'
                'users = ["*"]\n'
            )
        )

    @inlineCallbacks
    def line_session(self) -> Any:
        client = LineClient()
        yield connectProtocol(self.endpoint(), client)
        self.addCleanup(lambda: client.closed)
        self.addCleanup(client.transport.loseConnection)
        greeting = yield client.next_line()
        self.assertTrue(greeting.startswith(b"NETGUARD/1 "), greeting)
        return client

    @inlineCallbacks
    def authenticate(self, client: LineClient) -> Any:
        exchange = ClientExchange(self.user, self.password, SCRAM_SHA_256, None)
        reply = yield client.command(b"AUTH SCRAM-SHA-256 " + encode_wire(exchange.first()))
        verb, _, token = reply.partition(b" ")
        self.assertEqual(verb, b"CONT", reply)
        reply = yield client.command(b"CONT " + encode_wire(exchange.final(decode_wire(token))))
        verb, _, token = reply.partition(b" ")
        self.assertEqual(verb, b"OK", reply)
        exchange.verify(decode_wire(token))

    @inlineCallbacks
    def test_services_lists_only_what_the_user_may_open(self) -> Any:
        client = yield self.line_session()
        yield self.authenticate(client)
        reply = yield client.command(b"SERVICES")
        self.assertEqual(reply, b"OK SERVICES echo open2")

    @inlineCallbacks
    def test_services_before_authentication_tells_nothing(self) -> Any:
        client = yield self.line_session()
        reply = yield client.command(b"SERVICES")
        self.assertTrue(reply.startswith(b"ERR AUTH_REQUIRED"), reply)

    @inlineCallbacks
    def test_open_a_service_of_someone_else_is_not_authorized(self) -> Any:
        client = yield self.line_session()
        yield self.authenticate(client)
        reply = yield client.command(b"OPEN secret")
        self.assertTrue(reply.startswith(b"ERR NOT_AUTHORIZED"), reply)
        # The session goes on.
        reply = yield client.command(b"PING")
        self.assertEqual(reply, b"PONG")
        reply = yield client.command(b"OPEN echo")
        self.assertEqual(reply, b"OK OPEN echo")
        self.assertEqual(len(self.logged("session.denied")), 1)

    def test_real_client_gets_not_authorized(self) -> Any:
        return self.assert_open_refused("secret", "NOT_AUTHORIZED")

    def test_unknown_service(self) -> Any:
        return self.assert_open_refused("nosuch", "NO_SUCH_SERVICE")


def make_certificates(directory: str) -> tuple[str, str]:
    """
    Write a CA and a server certificate for 127.0.0.1 (IP SAN) signed by it.

    @return: the directory holding only the CA certificate (a C{trustRoots} directory), and
        the server's PEM file (certificate and key).
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))

    def build(subject: str, issuer: str, key: Any, signer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0])
            .not_valid_after(valid[1])
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("netguard test CA", "netguard test CA", ca_key, ca_key, True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = build("127.0.0.1", "netguard test CA", server_key, ca_key, False)
    roots = os.path.join(directory, "roots")
    os.makedirs(roots)
    with open(os.path.join(roots, "ca.pem"), "wb") as handle:
        handle.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_pem = os.path.join(directory, "server.pem")
    with open(server_pem, "wb") as handle:
        handle.write(server_cert.public_bytes(serialization.Encoding.PEM))
        handle.write(
            server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.chmod(server_pem, 0o600)
    return roots, server_pem


class TLSBackendTests(RelayRealTestCase):
    """
    A TLS backend (socat with OPENSSL-LISTEN, echoing through cat): verified against the
    configured trust roots; a certificate that does not verify is BACKEND_UNAVAILABLE.
    """

    def setUp(self) -> None:
        super().setUp()
        socat = "/usr/bin/socat"
        self.require(socat, "socat")
        self.roots, server_pem = make_certificates(self.tmp)
        self.tls_port = free_port()
        self.spawn(
            [
                socat,
                f"OPENSSL-LISTEN:{self.tls_port},bind=127.0.0.1,reuseaddr,fork,"
                f"cert={server_pem},verify=0",
                "EXEC:cat",
            ],
            "socat-tls",
        )
        deadline = time.monotonic() + START_DEADLINE
        while not accepts(self.tls_port):
            if time.monotonic() > deadline:
                raise AssertionError(f"socat did not start: {self.log_of('socat-tls')}")
            time.sleep(0.02)

    def tls_service(self, name: str, extra: str = "", limits: str = "") -> str:
        return (
            (f"[limits]\n{limits}\n" if limits else "")
            + f"[services.{name}]\n"
            + f'backend = "tls:host=127.0.0.1:port={self.tls_port}{extra}"\n'
            + 'users = ["*"]\n'
        )

    def record_backend_close(self) -> list[Failure]:
        """
        @return: a list that receives the reason of the backend connection's end.
        """
        reasons: list[Failure] = []
        backend = self.legs[0].protocol
        original = backend.connectionLost

        def record(reason: Failure | None = None) -> None:
            reasons.append(reason)  # type: ignore[arg-type]
            original(reason)

        backend.connectionLost = record
        return reasons

    @inlineCallbacks
    def test_verified_tls_backend_round_trip_and_clean_close(self) -> Any:
        self.start_gateway(
            config=self.tls_service(
                "tlsecho", f":trustRoots={self.roots}", limits="write_timeout = 20"
            )
        )
        payload = self.rng.randbytes(1 << 20)
        client = yield self.open("tlsecho")
        backend_reasons = self.record_backend_close()
        sending = ChunkSender(client.transport, random_chunks(self.rng, payload)).start()
        yield client.wait_for(lambda c: c.count >= len(payload), "the TLS echo")
        yield sending
        self.assertEqual(sha(bytes(client.data)), sha(payload), self.note())
        started = time.monotonic()
        client.transport.loseConnection()
        yield wait_until(lambda: backend_reasons, "the backend connection to close")
        # Closed cleanly by us (close_notify, then FIN), not aborted when write_timeout ran
        # out (which TLS reports as ConnectionLost).
        self.assertTrue(backend_reasons[0].check(ConnectionDone), backend_reasons[0])
        sys.stderr.write(
            f"\n[tls close] backend connection closed {time.monotonic() - started:.2f}s"
            f" after the client left ({backend_reasons[0].value!r})\n"
        )

    @inlineCallbacks
    def test_client_reset_closes_the_tls_backend_cleanly(self) -> Any:
        # The client vanishes (no EOF): the backend gets close_notify and FIN, rather than
        # being held open until write_timeout and then aborted.
        self.start_gateway(
            config=self.tls_service(
                "tlsecho", f":trustRoots={self.roots}", limits="write_timeout = 20"
            )
        )
        client = yield self.open("tlsecho")
        backend_reasons = self.record_backend_close()
        client.transport.write(b"hello")
        yield client.wait_for(lambda c: c.data == b"hello", "the TLS echo")
        client.transport.abortConnection()
        yield wait_until(lambda: backend_reasons, "the backend connection to close")
        self.assertTrue(backend_reasons[0].check(ConnectionDone), backend_reasons[0])

    @inlineCallbacks
    def test_client_half_close_over_tls_still_gets_the_whole_echo(self) -> Any:
        # The half-close becomes a TLS close_notify; socat closes cat's input, cat finishes,
        # and what it still sends arrives before the backend's own close_notify.
        self.start_gateway(config=self.tls_service("tlsecho", f":trustRoots={self.roots}"))
        payload = self.rng.randbytes(256 * 1024)
        client = yield self.open("tlsecho")
        sender = ChunkSender(client.transport, random_chunks(self.rng, payload), half_close=True)
        yield sender.start().addTimeout(WAIT, reactor)
        yield client.wait_closed()
        self.assertEqual(client.count, len(payload))
        self.assertEqual(sha(bytes(client.data)), sha(payload), self.note())

    @inlineCallbacks
    def test_certificate_not_trusted_is_backend_unavailable(self) -> Any:
        self.start_gateway(config=self.tls_service("untrusted"))
        yield self.assert_open_refused("untrusted", "BACKEND_UNAVAILABLE")
        event = self.logged("session.backend_failed")[0]
        self.assertIn("certificate verify failed", event["cause"])

    @inlineCallbacks
    def test_wrong_host_name_is_backend_unavailable(self) -> Any:
        self.start_gateway(
            config=(
                "[services.wronghost]\n"
                f'backend = "tls:host=localhost:port={self.tls_port}:trustRoots={self.roots}"\n'
                'users = ["*"]\n'
            )
        )
        yield self.assert_open_refused("wronghost", "BACKEND_UNAVAILABLE")
        event = self.logged("session.backend_failed")[0]
        self.assertEqual(event["error_type"], "VerificationError", event)

    def socks5_tls_service(self, name: str, roots: str) -> str:
        """
        A C{tls:} backend trusting C{roots}, reached through a real microsocks as the
        service's C{socks5} key.
        """
        proxy = self.start_microsocks()
        return (
            self.tls_service(name, f":trustRoots={roots}")
            + f'socks5 = "tcp:host=127.0.0.1:port={proxy}"\n'
        )

    @inlineCallbacks
    def test_through_the_socks5_key_the_backends_trust_roots_apply(self) -> Any:
        """
        Through the service's SOCKS5 proxy a C{tls:} backend is verified against its own
        C{trustRoots=} (the test CA), as without the proxy, and the echo comes back whole.
        """
        self.start_gateway(config=self.socks5_tls_service("viasocks", self.roots))
        payload = self.rng.randbytes(64 * 1024)
        client = yield self.open("viasocks")
        client.transport.write(payload)
        yield client.wait_for(lambda c: c.count >= len(payload), "the TLS echo via SOCKS5")
        self.assertEqual(sha(bytes(client.data)), sha(payload), self.note())
        client.transport.loseConnection()
        yield client.wait_closed()

    @inlineCallbacks
    def test_through_the_socks5_key_another_cas_certificate_is_refused(self) -> Any:
        """
        The other side: the backend's certificate is from a CA that the backend string's
        C{trustRoots=} does not name; through the proxy it is refused as without it.
        """
        other_roots, _ = make_certificates(os.path.join(self.tmp, "other-ca"))
        self.start_gateway(config=self.socks5_tls_service("viasocks", other_roots))
        yield self.assert_open_refused("viasocks", "BACKEND_UNAVAILABLE")
        event = self.logged("session.backend_failed")[0]
        self.assertIn("certificate verify failed", event["cause"])

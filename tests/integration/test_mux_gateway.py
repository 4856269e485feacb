"""
End to end over real loopback sockets: the real gateway (L{RunningGateway}), a client that
logs in with netguard's own L{NGPClientProtocol}, upgrades with C{MUX yamux/1} and runs the
core's L{MuxSession} in the client role; streams to the built-in echo service and to a real
redis-server.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.client.endpoint import wrap_tls
from netguard.client.protocol import ClientState, Credentials, NGPClientProtocol
from netguard.mux.limits import MuxLimits
from netguard.mux.session import MuxSession
from netguard.mux.stream import MuxStream
from tests import tls_certs
from tests.integration.test_tunnel_real import REDIS_SERVER, start_redis
from tests.integration.util import RunningGateway, peer_unavailable, wait_for

#: What the bulk stream carries in the slow-reader test.
BULK_SIZE = 256 * 1024 * 1024
#: How long that reader pauses after every chunk. A chunk is at most one window (256 KiB),
#: so the transfer takes at least 1,024 pauses however fast the machine: the chatty stream's
#: round trips have that long to finish first.
READ_PAUSE = 0.01


class MuxLogin(NGPClientProtocol):
    """
    netguard's client for the login; then C{MUX yamux/1} instead of C{OPEN}, and a client
    L{MuxSession} over the connection. L{opened} fires once C{OK MUX} has arrived.
    """

    mux: MuxSession | None = None
    reply: bytes = b""

    def __init__(self, credentials: Credentials) -> None:
        super().__init__(credentials, "mux", clock=reactor)

    def sendLine(self, line: bytes) -> None:
        if line == b"OPEN mux":
            line = b"MUX yamux/1"
        super().sendLine(line)

    def lineReceived(self, line: bytes) -> None:
        if self.state is ClientState.AWAIT_OPEN_OK and line.startswith(b"OK MUX yamux/1 "):
            self.reply = line
            self._cancel_open_timer()
            self.state = ClientState.OPEN
            self.setRawMode()
            self.setTimeout(None)
            self.mux = MuxSession(
                self.transport,
                client=True,
                clock=reactor,
                accept=lambda stream: None,
                limits=MuxLimits(keepalive_interval=None),
            )
            self.transport.registerProducer(self.mux, True)
            self.opened.callback(None)
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if self.mux is not None:
            self.mux.data_received(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.mux is not None:
            self.mux.connection_lost(reason)
        super().connectionLost(reason)

    def service_closed(self, reason: Failure) -> None:
        """The connection ended (the streams have been told)."""

    def close(self) -> None:
        """
        Close the connection: first stop being its producer, since Twisted's TLS transport
        holds its close while a producer is registered.
        """
        self.transport.unregisterProducer()
        self.transport.loseConnection()


class Collector:
    """
    A client stream's protocol: collects what arrives; L{wait} fires when a condition holds.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.lost: Failure | None = None
        self.transport: MuxStream | None = None
        self._waiters: list[tuple[Callable[[Collector], bool], Deferred[None]]] = []

    def makeConnection(self, transport: MuxStream) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self._check()

    def readConnectionLost(self) -> None:
        self.eof = True
        self._check()

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason
        self._check()

    def wait(self, condition: Callable[[Collector], bool]) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._waiters.append((condition, waiter))
        self._check()
        return waiter

    def _check(self) -> None:
        for entry in list(self._waiters):
            condition, waiter = entry
            if condition(self) or self.lost is not None:
                self._waiters.remove(entry)
                waiter.callback(None)


def has(n: int) -> Callable[[Collector], bool]:
    return lambda c: len(c.data) >= n


class MuxGatewayTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> Any:
        if not REDIS_SERVER:
            peer_unavailable("redis-server not installed (Debian: redis-server)")
        self.dir = tempfile.mkdtemp(prefix="ngm-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        redis_port = start_redis(self, self.dir)
        self.gateway = RunningGateway(
            self,
            "[mux]\nopen_rate = 2500\nopen_burst = 64\n",
            overrides={
                "listen": ["tcp:0:interface=127.0.0.1"],
                "services": [f"redis=tcp:host=127.0.0.1:port={redis_port}"],
            },
        )
        return self._login()

    @inlineCallbacks
    def _login(self) -> Any:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.gateway.port())
        self.client = yield connectProtocol(endpoint, MuxLogin(self.gateway.credentials))
        yield self.client.opened
        self.addCleanup(self._close)

    def _close(self) -> Any:
        self.client.close()
        return self.gateway.idle()

    def open(self, first: bytes) -> Collector:
        collector = Collector()
        assert self.client.mux is not None
        stream = self.client.mux.open_stream(collector)  # type: ignore[arg-type]
        stream.write(first)
        return collector

    @inlineCallbacks
    def test_concurrent_streams_to_echo_and_redis(self) -> Any:
        """
        Several streams at once over one connection, to the echo service and to a real
        redis-server, each answered C{OK OPEN} and relaying its own bytes; the upgrade's
        answer announces the configured C{[mux]} opening bounds (C{OPENRATE=2500/64}).
        """
        self.assertEqual(
            self.client.reply, b"OK MUX yamux/1 STREAMS=256 WINDOW=262144 OPENRATE=2500/64"
        )
        echoes = [self.open(b"OPEN echo\r\n" + b"%d" % i * 100) for i in range(8)]
        redis = [self.open(b"OPEN redis\r\nPING\r\n") for _ in range(4)]
        for i, echo in enumerate(echoes):
            expected = b"OK OPEN echo\r\n" + b"%d" % i * 100
            yield echo.wait(has(len(expected)))
            self.assertEqual(bytes(echo.data), expected)
        for one in redis:
            yield one.wait(has(len(b"OK OPEN redis\r\n+PONG\r\n")))
            self.assertEqual(bytes(one.data), b"OK OPEN redis\r\n+PONG\r\n")
        stats = self.gateway.factory.stats.snapshot()
        self.assertEqual(stats["streams"], 12)
        self.assertEqual(stats["connections"], 1)

    @inlineCallbacks
    def test_refused_stream_beside_a_live_one(self) -> Any:
        """
        A stream to an unknown service is answered C{ERR NO_SUCH_SERVICE} and FIN while a
        redis stream beside it keeps working.
        """
        live = self.open(b"OPEN redis\r\nSET k v\r\n")
        yield live.wait(has(len(b"OK OPEN redis\r\n+OK\r\n")))
        bad = self.open(b"OPEN nope\r\n")
        yield bad.wait(lambda c: c.eof)
        self.assertTrue(bytes(bad.data).startswith(b"ERR NO_SUCH_SERVICE "))
        assert live.transport is not None and bad.transport is not None
        bad.transport.loseConnection()
        live.transport.write(b"GET k\r\n")
        yield live.wait(has(len(b"OK OPEN redis\r\n+OK\r\n$1\r\nv\r\n")))
        self.assertEqual(bytes(live.data), b"OK OPEN redis\r\n+OK\r\n$1\r\nv\r\n")

    @inlineCallbacks
    def test_half_close_per_stream(self) -> Any:
        """
        A FIN on one echo stream comes back as FIN after the echoed bytes; the other stream
        keeps relaying afterwards.
        """
        one = self.open(b"OPEN echo\r\nlast words")
        two = self.open(b"OPEN echo\r\n")
        assert one.transport is not None and two.transport is not None
        one.transport.loseWriteConnection()
        yield one.wait(lambda c: c.eof)
        self.assertEqual(bytes(one.data), b"OK OPEN echo\r\nlast words")
        two.transport.write(b"still")
        yield two.wait(has(len(b"OK OPEN echo\r\nstill")))
        self.assertFalse(two.eof)
        one.transport.loseConnection()
        yield wait_for(lambda: self.gateway.factory.stats.snapshot()["streams_active"] == 1)

    @inlineCallbacks
    def test_large_transfer_beside_a_chatty_stream(self) -> Any:
        """
        256 MiB through one echo stream whose reader is slow (it pauses reading for
        L{READ_PAUSE} after every chunk) while another stream does 50 request/response round
        trips with redis: the round trips all finish while the bulk transfer is still under
        way (a slow stream does not hold up the others), every byte of the bulk comes back
        in order (its hash), and on every chunk the reader gets, the gateway's side of the
        bulk stream holds at most its receive window of bytes received (the advertised
        C{WINDOW=}, grown while the stream kept reading, never past C{max_window}) and has at
        most one high-water mark plus one write (itself at most the advertised window)
        queued for sending, and the client's side holds at most its window for its paused
        reader, whatever the speed of the machine.
        """
        window = int(dict(w.split(b"=") for w in self.client.reply.split()[3:])[b"WINDOW"])
        mux = self.client.mux
        assert mux is not None
        gateway_mux = gateway_session(self.gateway)
        high_water = gateway_mux.limits.stream_high_water
        samples: list[tuple[int, int, int]] = []
        reader = SlowReader(b"OK OPEN echo\r\n")
        bulk = mux.open_stream(reader)  # type: ignore[arg-type]
        bulk.write(b"OPEN echo\r\n")

        def sample() -> None:
            far = gateway_mux.stream(bulk.stream_id)
            if far is not None:
                self.assertLessEqual(far.buffered, far.window)
                self.assertLessEqual(bulk.buffered, bulk.window)
                samples.append((far.buffered, far.queued, bulk.buffered))

        reader.on_chunk = sample
        writer = _Writer(bulk, numbered_blocks(BULK_SIZE))
        bulk.registerProducer(writer, True)
        writer.resumeProducing()
        chatty = self.open(b"OPEN redis\r\n")
        assert chatty.transport is not None
        yield reader.wait(lambda r: r.received > 0)  # type: ignore[attr-defined]
        expected = b"OK OPEN redis\r\n"
        for _ in range(50):
            chatty.transport.write(b"PING\r\n")
            expected += b"+PONG\r\n"
            yield chatty.wait(has(len(expected)))
        self.assertEqual(bytes(chatty.data), expected)
        self.assertLess(reader.received, BULK_SIZE, "the chatty stream waited for the bulk")
        yield reader.wait(lambda r: r.eof)
        self.assertTrue(reader.eof, reader.lost)
        self.assertEqual(reader.received, BULK_SIZE)
        self.assertEqual(reader.hasher.hexdigest(), writer.hasher.hexdigest())
        held, queued, ours = (max(column) for column in zip(*samples, strict=True))
        self.assertLessEqual(held, gateway_mux.limits.max_window)
        self.assertLessEqual(queued, high_water + window)
        self.assertLessEqual(ours, mux.limits.max_window)
        # Backpressure reached the gateway's receive side and the writer: the bounds above
        # held under pressure, not on an idle stream.
        self.assertGreater(writer.pauses, 0)
        self.assertGreater(held, 0)
        self.assertGreater(ours, 0)

    test_large_transfer_beside_a_chatty_stream.timeout = 600  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_drain_refuses_new_streams_and_lets_live_ones_finish(self) -> Any:
        """
        The gateway's graceful stop (as on SIGTERM): a new stream is answered
        C{ERR SHUTTING_DOWN}, a live redis stream keeps working, and once it ends the
        gateway sends go-away, closes the connection and the stop completes.
        """
        live = self.open(b"OPEN redis\r\nPING\r\n")
        yield live.wait(has(len(b"OK OPEN redis\r\n+PONG\r\n")))
        stopping = self.gateway.service.stopService()
        new = self.open(b"OPEN redis\r\n")
        yield new.wait(lambda c: c.eof)
        self.assertTrue(bytes(new.data).startswith(b"ERR SHUTTING_DOWN "), bytes(new.data))
        assert live.transport is not None and new.transport is not None
        new.transport.loseConnection()
        live.transport.write(b"PING\r\n")
        yield live.wait(has(len(b"OK OPEN redis\r\n+PONG\r\n+PONG\r\n")))
        self.assertFalse(stopping.called)
        live.transport.loseConnection()
        yield stopping
        mux = self.client.mux
        assert mux is not None
        yield wait_for(lambda: mux.ended is not None)
        self.assertIsNotNone(mux.remote_go_away)
        self.assertEqual(self.gateway.service.drainer.forced, 0)


class _Writer:
    """
    Writes C{blocks} to a stream as its flow control allows (a push producer registered on
    the stream), then half-closes it; counts its pauses and hashes what it wrote.
    """

    def __init__(self, transport: MuxStream, blocks: Iterator[bytes]) -> None:
        self.transport = transport
        self.blocks = blocks
        self.paused = False
        self.done = False
        self.pauses = 0
        self.hasher = hashlib.sha256()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and not self.done:
            block = next(self.blocks, None)
            if block is None:
                self.done = True
                self.transport.unregisterProducer()
                self.transport.loseWriteConnection()
                return
            self.hasher.update(block)
            self.transport.write(block)

    def stopProducing(self) -> None:
        self.done = True


def numbered_blocks(size: int, block_size: int = 64 * 1024) -> Iterator[bytes]:
    """
    C{size} bytes (a multiple of C{block_size}) in blocks of random bytes, each starting
    with its own number, so that a lost, repeated or reordered block changes the hash.
    """
    body = random.Random(size).randbytes(block_size - 8)
    for number in range(size // block_size):
        yield number.to_bytes(8, "big") + body


class SlowReader(Collector):
    """
    A client stream's protocol that reads slowly: after every chunk it pauses reading (the
    stream holds what arrives and withholds the window updates meanwhile) and resumes
    L{READ_PAUSE} later. It checks and drops the C{OK OPEN} answer, hashes the rest, and
    keeps none of it.

    @ivar on_chunk: called after each chunk is counted, and before each resume (when the
        most is held).
    """

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer
        self.received = 0
        self.hasher = hashlib.sha256()
        self.on_chunk: Callable[[], None] = lambda: None
        self._resume: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        if len(self.data) < len(self.answer):
            take = len(self.answer) - len(self.data)
            self.data += data[:take]
            data = data[take:]
            if not self.answer.startswith(self.data):
                raise AssertionError(f"unexpected answer {bytes(self.data)!r}")
        self.received += len(data)
        self.hasher.update(data)
        self.on_chunk()
        if self._resume is None and self.transport is not None:
            self.transport.pauseProducing()
            self._resume = reactor.callLater(READ_PAUSE, self._read_again)
        self._check()

    def _read_again(self) -> None:
        self._resume = None
        self.on_chunk()
        if self.transport is not None:
            self.transport.resumeProducing()

    def connectionLost(self, reason: Failure) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        super().connectionLost(reason)


def gateway_session(gateway: RunningGateway) -> MuxSession:
    """
    @return: the gateway's side of the one multiplexed session it serves.
    """
    (connection,) = gateway.factory.sessions
    session: MuxSession = connection._gate.session
    return session


def tls_gateway(test: unittest.TestCase) -> tuple[RunningGateway, Any]:
    """
    A real gateway with a plain listener on 127.0.0.2 and a C{[[tls_listen]]} on 127.0.0.1
    (a fresh certificate for C{localhost}), and a verified TLS client endpoint to the latter.

    @return: the gateway and the client endpoint.
    """
    directory = tempfile.mkdtemp(prefix="ngmt-", dir="/tmp")
    test.addCleanup(shutil.rmtree, directory, True)
    cert, key = tls_certs.make_leaf("localhost", extra_names=("127.0.0.1",))
    cert_file, key_file = tls_certs.write_identity(directory, "gateway", cert, key)
    gateway = RunningGateway(
        test,
        'listen = ["tcp:0:interface=127.0.0.2"]\n'
        "[[tls_listen]]\n"
        'endpoint = "tcp:0:interface=127.0.0.1"\n'
        f'cert_file = "{cert_file}"\n'
        f'key_file = "{key_file}"\n',
    )
    plain = TCP4ClientEndpoint(reactor, "127.0.0.1", gateway.port(1))
    endpoint = wrap_tls(
        reactor, plain, {"tls": "1", "ca_file": cert_file}, default_hostname="localhost"
    )
    return gateway, endpoint


class MuxOverTLSTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def test_streams_over_a_tls_listener(self) -> Any:
        """
        Over a TLS listener (login with channel binding), C{MUX yamux/1} carries streams
        that relay to echo, with half-close per stream, through Twisted's TLS transport.
        """
        gateway, endpoint = tls_gateway(self)
        client = yield connectProtocol(endpoint, MuxLogin(gateway.credentials))
        yield client.opened
        assert client.mux is not None
        streams = []
        for i in range(4):
            collector = Collector()
            stream = client.mux.open_stream(collector)  # type: ignore[arg-type]
            stream.write(b"OPEN echo\r\n" + b"%d" % i * 1000)
            stream.loseWriteConnection()
            streams.append(collector)
        for i, collector in enumerate(streams):
            yield collector.wait(lambda c: c.eof)
            self.assertEqual(bytes(collector.data), b"OK OPEN echo\r\n" + b"%d" % i * 1000)
        client.close()
        yield gateway.idle()

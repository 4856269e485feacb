"""
Tests for L{netguard.relay_splice}: the kernel-side relay on real loopback sockets.

This is operating-system I/O (C{splice}, pipes, socket buffers), so the sockets are real: each
test connects two loopback TCP pairs, hands one end of each to the running reactor as
Twisted's own transports (the relay's sides A and B) and plays the two peers on the other
ends with non-blocking sockets. Timers run on a L{task.Clock}; waits for the reactor are
bounded by a step count (a hang guard, never an assertion on time).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import struct
import sys
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from netguard.relay import A, B, RelayResult, Splice
from netguard.relay_splice import (
    CHUNK,
    SMALL_READ,
    KernelSplice,
    PipePool,
)

IDLE = 100.0
WRITE = 10.0

SKIP: str | None = None
if getattr(os, "splice", None) is None or not sys.platform.startswith("linux"):
    SKIP = "os.splice is not available (Linux, Python 3.10+)"


@implementer(IHalfCloseableProtocol)
class _SideProtocol(Protocol):
    """
    A relay side as the gateway's protocols are: it reports its events to the relay.
    """

    def __init__(self, side: str) -> None:
        self.side = side
        self.relay: Any = None
        self.user_space: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.user_space.append(data)
        if self.relay is not None:
            self.relay.data_from(self.side, data)

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.eof_from(self.side)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.relay is not None:
            self.relay.lost(self.side)


class _Peer:
    """
    The far end of one side: a non-blocking socket that sends what it is given and reads
    (when allowed) everything that arrives.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.outgoing = bytearray()
        self.received = bytearray()
        self.reading = True
        self.eof = False
        self.reset = False
        self.shut_after_send = False
        self.shut = False

    def pump(self) -> None:
        while self.outgoing:
            try:
                sent = self.sock.send(self.outgoing[:CHUNK])
            except BlockingIOError:
                break
            except OSError:
                self.reset = True
                break
            del self.outgoing[:sent]
        if not self.outgoing and self.shut_after_send and not self.shut:
            self.shut = True
            self.sock.shutdown(socket.SHUT_WR)
        while self.reading and not self.eof:
            try:
                data = self.sock.recv(CHUNK)
            except BlockingIOError:
                break
            except OSError:
                self.reset = True
                break
            if not data:
                self.eof = True
                break
            self.received += data

    def close(self) -> None:
        self.sock.close()


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


def _adopt(sock: socket.socket, family: socket.AddressFamily, side: str) -> _SideProtocol:
    protocol = _SideProtocol(side)
    reactor.adoptStreamConnection(  # type: ignore[attr-defined]
        sock.fileno(), family, Factory.forProtocol(lambda: protocol)
    )
    sock.close()  # the reactor holds its own duplicate
    return protocol


#: Each harness socket's send and receive buffer (the kernel doubles it).
_SOCKET_BUFFER = 128 * 1024


class _Harness:
    """
    Two relayed sides on real sockets, their peers, a L{KernelSplice} between them.
    """

    def __init__(
        self,
        test: unittest.TestCase,
        family: socket.AddressFamily = socket.AF_INET,
        splice: Callable[..., int] | None = None,
        pool: PipePool | None = None,
        start: bool = True,
    ) -> None:
        if family == socket.AF_INET:
            peer_a, local_a = _tcp_pair()
            local_b, peer_b = _tcp_pair()
        else:
            peer_a, local_a = socket.socketpair()
            local_b, peer_b = socket.socketpair()
        for sock in (peer_a, local_a, local_b, peer_b):
            # Fixed buffers (no autotuning): the kernel may otherwise grow a loopback pair's
            # buffers past the few MiB a test sends to a peer that does not read, and the
            # back-pressure it waits for would depend on the machine's memory and load.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        self.peer_a, self.peer_b = _Peer(peer_a), _Peer(peer_b)
        self.proto_a = _adopt(local_a, family, A)
        self.proto_b = _adopt(local_b, family, B)
        self.a, self.b = self.proto_a.transport, self.proto_b.transport
        self.clock = Clock()
        self.pool = pool if pool is not None else PipePool()
        self.fell_back: list[Splice] = []
        self.relay = KernelSplice(
            self.a,
            self.b,
            clock=self.clock,
            pool=self.pool,
            idle_timeout=IDLE,
            write_timeout=WRITE,
            splice=splice,
            owner=self,
        )
        self.results: list[RelayResult] = []
        self.relay.done.addCallback(self.results.append)
        self.proto_a.relay = self.proto_b.relay = self.relay
        test.addCleanup(self.cleanup)
        if start:
            self.start()

    def start(self) -> None:
        self.relay.start()
        self.relay.resume_reading(A)
        self.relay.resume_reading(B)

    @property
    def splice(self) -> Any:
        """
        As the relay's owner: the relay that carries on (L{KernelSplice.owner}).
        """
        return self.fell_back[-1] if self.fell_back else self.relay

    @splice.setter
    def splice(self, splice: Any) -> None:
        if isinstance(splice, Splice):
            self._fall_back(splice)

    def _fall_back(self, splice: Splice) -> None:
        self.fell_back.append(splice)
        self.proto_a.relay = self.proto_b.relay = splice

    def pump(self) -> None:
        self.peer_a.pump()
        self.peer_b.pump()

    @inlineCallbacks
    def until(
        self, check: Callable[[], bool], steps: int = 20000
    ) -> Generator[Deferred[Any], Any, None]:
        """
        Run the reactor (and the peers) until C{check()} holds; the step count is a hang
        guard only.
        """
        for _ in range(steps):
            self.pump()
            if check():
                return
            yield deferLater(reactor, 0.0005, lambda: None)
        raise AssertionError("hang guard: condition never held")

    @inlineCallbacks
    def settle(self, steps: int = 200) -> Generator[Deferred[Any], Any, None]:
        """
        Run the reactor and the peers for a few rounds with nothing expected.
        """
        for _ in range(steps):
            self.pump()
            yield deferLater(reactor, 0, lambda: None)

    @inlineCallbacks
    def cleanup(self) -> Generator[Deferred[Any], Any, None]:
        if not self.results:
            self.relay.abort("test over")
        self.peer_a.close()
        self.peer_b.close()
        yield self.until(lambda: bool(self.results) or bool(self.fell_back), steps=4000)


def _buffered(transport: Any) -> int:
    """
    Bytes waiting in Twisted's own write buffer of C{transport}.
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


class KernelSpliceIntegrityTests(unittest.TestCase):
    """
    Bytes go through the kernel both ways, each once and in order.
    """

    skip = SKIP

    @inlineCallbacks
    def test_both_ways_large_payloads(self) -> Generator[Deferred[Any], Any, None]:
        """
        4 MiB each way at once arrive unchanged (SHA-256), none through user space, and the
        counts are the bytes read from each side.
        """
        harness = _Harness(self)
        up, down = _payload(4 << 20, 1), _payload(4 << 20, 2)
        harness.peer_a.outgoing += up
        harness.peer_b.outgoing += down
        yield harness.until(
            lambda: (
                len(harness.peer_b.received) == len(up)
                and len(harness.peer_a.received) == len(down)
            )
        )
        self.assertEqual(
            hashlib.sha256(harness.peer_b.received).digest(), hashlib.sha256(up).digest()
        )
        self.assertEqual(
            hashlib.sha256(harness.peer_a.received).digest(), hashlib.sha256(down).digest()
        )
        self.assertEqual(harness.proto_a.user_space + harness.proto_b.user_space, [])
        self.assertEqual(harness.relay.counts, {A: len(up), B: len(down)})
        self.assertEqual(harness.pool.relays, 1)

    @inlineCallbacks
    def test_unix_sockets(self) -> Generator[Deferred[Any], Any, None]:
        """
        Unix stream sockets are relayed in the kernel too.
        """
        harness = _Harness(self, family=socket.AF_UNIX)
        up = _payload(1 << 20, 3)
        harness.peer_a.outgoing += up
        yield harness.until(lambda: len(harness.peer_b.received) == len(up))
        self.assertEqual(bytes(harness.peer_b.received), up)
        self.assertEqual(harness.proto_a.user_space, [])

    @inlineCallbacks
    def test_bytes_read_before_the_relay_go_first(self) -> Generator[Deferred[Any], Any, None]:
        """
        What Twisted's buffer held for a side when the relay started, and bytes read in user
        space before it (handed to C{data_from}), reach that side before any spliced byte.
        """
        harness = _Harness(self, start=False)
        harness.a.write(b"OK OPEN svc\r\n")
        harness.relay.start()
        harness.relay.data_from(B, b"banner\r\n")
        harness.relay.data_from(A, b"pending ")
        harness.relay.resume_reading(A)
        harness.relay.resume_reading(B)
        harness.peer_a.outgoing += b"later"
        harness.peer_b.outgoing += b"reply"
        yield harness.until(
            lambda: len(harness.peer_b.received) == 13 and len(harness.peer_a.received) == 26
        )
        self.assertEqual(bytes(harness.peer_a.received), b"OK OPEN svc\r\nbanner\r\nreply")
        self.assertEqual(bytes(harness.peer_b.received), b"pending later")
        self.assertEqual(harness.relay.counts, {A: 13, B: 13})

    @inlineCallbacks
    def test_idle_relay_holds_no_pipe(self) -> Generator[Deferred[Any], Any, None]:
        """
        Once what was read has been written, the pipe goes back to the pool: an idle relay
        holds no descriptor of its own.
        """
        harness = _Harness(self)
        harness.peer_a.outgoing += _payload(256 << 10, 4)
        yield harness.until(lambda: len(harness.peer_b.received) == 256 << 10)
        self.assertEqual(harness.pool.in_use, 0)
        self.assertLessEqual(harness.pool.idle, 1)
        self.assertEqual(harness.relay.in_flight, {A: 0, B: 0})

    @inlineCallbacks
    def test_short_messages_need_no_pipe(self) -> Generator[Deferred[Any], Any, None]:
        """
        Request/response traffic (short reads) goes through the pool's one buffer: 500
        exchanges arrive in order and no pipe is ever made.
        """
        harness = _Harness(self)
        for number in range(500):
            request, reply = b"GET %d\r\n" % number, b"VALUE %d\r\n" % number
            harness.peer_a.outgoing += request
            yield harness.until(lambda r=request: harness.peer_b.received.endswith(r))
            harness.peer_b.outgoing += reply
            yield harness.until(lambda r=reply: harness.peer_a.received.endswith(r))
        self.assertEqual(harness.peer_b.received.count(b"GET"), 500)
        self.assertEqual((harness.pool.in_use, harness.pool.idle), (0, 0))
        self.assertEqual(harness.proto_a.user_space + harness.proto_b.user_space, [])

    @inlineCallbacks
    def test_bulk_switches_to_splice(self) -> Generator[Deferred[Any], Any, None]:
        """
        A read that fills the buffer switches its direction to splice (a pipe is used);
        bytes stay in order across the switch.
        """
        harness = _Harness(self)
        harness.peer_a.outgoing += b"hello "
        yield harness.until(lambda: len(harness.peer_b.received) == 6)
        payload = _payload(8 << 20, 13)
        harness.peer_a.outgoing += payload
        yield harness.until(lambda: len(harness.peer_b.received) == 6 + len(payload))
        self.assertEqual(bytes(harness.peer_b.received), b"hello " + payload)
        self.assertEqual(harness.pool.in_use, 0)
        self.assertEqual(harness.pool.idle, 1)

    def test_idle_relay_memory(self) -> None:
        """
        An idle kernel relay costs at most 512 bytes more than an ordinary L{Splice} between
        the same transports (both measured with tracemalloc over 100 relays: the relay, its
        two flows and its place in the idle sweep), and holds no descriptor.

        Measured in a fresh interpreter that shares the transports' late instance names at
        start, as the gateway does (L{netguard.shared_keys.share_transport_keys}): in
        this process, after thousands of transports, CPython no longer shares new instance
        names, so any name set on a transport would cost a whole instance dict here that it
        does not cost in the gateway.
        """
        import json
        import subprocess

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
        )
        code = "from tests.test_relay_splice import idle_relay_bytes; idle_relay_bytes()"
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
        )
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        kernel, ordinary = figures["kernel"], figures["ordinary"]
        self.assertEqual(figures["pipes"], 0)
        self.assertLessEqual(
            kernel, ordinary + 512, f"kernel {kernel:.0f} B, ordinary {ordinary:.0f} B"
        )


def idle_relay_bytes() -> None:
    """
    Print, as JSON, the bytes tracemalloc sees per idle relay over 100 relays between
    AF_UNIX socket pairs, kernel and ordinary, and the pipes they hold: run by
    L{KernelSpliceIntegrityTests.test_idle_relay_memory} in a fresh interpreter.
    """
    import json
    import tracemalloc

    from twisted.internet import unix

    from netguard.shared_keys import share_transport_keys

    share_transport_keys((unix.Server, unix.Client))
    cleanups: list[Callable[[], object]] = []

    class _Cleanups:
        def addCleanup(self, f: Callable[..., object], *args: object) -> None:
            cleanups.append(lambda: f(*args))

    pipes = 0

    def per_relay(kernel: bool) -> float:
        nonlocal pipes
        pairs = [
            _Harness(_Cleanups(), family=socket.AF_UNIX, start=False)  # type: ignore[arg-type]
            for _ in range(100)
        ]
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        relays: list[Any] = []
        for pair in pairs:
            if kernel:
                relay: Any = KernelSplice(pair.a, pair.b, clock=pair.clock, pool=pair.pool)
            else:
                relay = Splice(pair.a, pair.b, clock=pair.clock)
            relay.start()
            relays.append(relay)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        for pair, relay in zip(pairs, relays, strict=True):
            pipes += pair.pool.in_use + pair.pool.idle
            if kernel:
                pipes += (relay._ab.pipe is not None) + (relay._ba.pipe is not None)
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        for relay in relays:
            relay.abort("test over")
        return grown / len(pairs)

    kernel, ordinary = per_relay(True), per_relay(False)
    print(json.dumps({"kernel": kernel, "ordinary": ordinary, "pipes": pipes}))


class KernelSpliceBackpressureTests(unittest.TestCase):
    """
    A reader that does not read holds at most one pipe of the other side's bytes.
    """

    skip = SKIP

    @inlineCallbacks
    def test_slow_reader_bounded(self) -> Generator[Deferred[Any], Any, None]:
        """
        B stops reading while A sends 64 MiB: the relay holds at most one pipe (C{CHUNK}
        bytes) for it and stops reading A (not one more byte is read from A however long
        the reactor runs); once B reads again everything arrives in order.
        """
        harness = _Harness(self)
        payload = _payload(64 << 20, 5)
        harness.peer_b.reading = False
        harness.peer_a.outgoing += payload
        yield harness.until(lambda: harness.relay._ab.paused)
        yield harness.settle()
        read = harness.relay.counts[A]
        yield harness.settle()
        self.assertTrue(harness.relay._ab.paused)
        self.assertEqual(harness.relay.counts[A], read)
        self.assertLessEqual(harness.relay.in_flight[A], CHUNK)
        self.assertLessEqual(_buffered(harness.b), SMALL_READ)
        self.assertLessEqual(harness.relay.in_flight[A] + _buffered(harness.b), CHUNK)
        self.assertNotIn(harness.a, reactor.getReaders())
        harness.peer_b.reading = True
        yield harness.until(lambda: len(harness.peer_b.received) == len(payload))
        self.assertEqual(
            hashlib.sha256(harness.peer_b.received).digest(), hashlib.sha256(payload).digest()
        )
        self.assertFalse(harness.relay._ab.paused)
        self.assertEqual(harness.results, [])

    @inlineCallbacks
    def test_never_asks_for_more_than_the_bound(self) -> Generator[Deferred[Any], Any, None]:
        """
        Every splice into a pipe asks for at most what keeps the pipe within C{CHUNK}: with
        a reader that does not read, the bytes in flight reach the bound and never pass it,
        whatever the kernel's pipe would take.
        """
        seen: list[int] = []
        flows: list[Any] = []

        def recording(source: int, target: int, count: int, flags: int = 0) -> int:
            moved = os.splice(source, target, count, flags=flags)
            for flow in flows:
                if flow.pipe is not None and target == flow.pipe[1]:
                    self.assertLessEqual(flow.queued + count, CHUNK)
                    seen.append(flow.queued + moved)
            return moved

        harness = _Harness(self, splice=recording)
        flows.extend((harness.relay._ab, harness.relay._ba))
        harness.relay._ab.small = False
        harness.peer_b.reading = False
        harness.peer_a.outgoing += _payload(32 << 20, 14)
        yield harness.until(lambda: harness.relay._ab.paused)
        yield harness.settle()
        self.assertLessEqual(max(seen), CHUNK)
        self.assertGreater(max(seen), CHUNK // 2)

    @inlineCallbacks
    def test_stalled_reader_aborted(self) -> Generator[Deferred[Any], Any, None]:
        """
        A side that leaves its pipe full for C{write_timeout} is a stalled reader: both sides
        are aborted, C{ended_by="stalled-b"}; one tick earlier nothing happens.
        """
        harness = _Harness(self)
        harness.peer_b.reading = False
        harness.peer_a.outgoing += _payload(32 << 20, 6)
        yield harness.until(lambda: harness.relay._ab.paused)
        harness.clock.advance(WRITE - 0.001)
        self.assertEqual(harness.results, [])
        harness.clock.advance(0.001)
        yield harness.until(lambda: bool(harness.results))
        self.assertEqual(harness.results[0].ended_by, "stalled-b")
        self.assertEqual(harness.pool.in_use, 0)

    @inlineCallbacks
    def test_draining_reader_is_not_stalled(self) -> Generator[Deferred[Any], Any, None]:
        """
        The stalled-reader clock stops when the reader has taken the pipe's bytes: a reader
        that pauses for less than C{write_timeout} each time is never cut off.
        """
        harness = _Harness(self)
        harness.peer_b.reading = False
        harness.peer_a.outgoing += _payload(64 << 20, 7)
        for _ in range(3):
            yield harness.until(lambda: harness.relay._ab.paused)
            harness.clock.advance(WRITE - 1)
            harness.peer_b.reading = True
            yield harness.until(lambda: not harness.relay._ab.paused)
            harness.peer_b.reading = False
        harness.clock.advance(WRITE - 1)
        self.assertEqual(harness.results, [])


class KernelSpliceHalfCloseTests(unittest.TestCase):
    """
    EOF is passed on per direction, once the pipe is empty.
    """

    skip = SKIP

    @inlineCallbacks
    def test_half_close_a_then_b(self) -> Generator[Deferred[Any], Any, None]:
        """
        A half-closes: B gets every byte then EOF, and B can still answer A; when B closes
        too, the relay ends with C{ended_by="a"} (A sent EOF first).
        """
        harness = _Harness(self)
        harness.peer_a.outgoing += b"request"
        harness.peer_a.shut_after_send = True
        yield harness.until(lambda: harness.peer_b.eof)
        self.assertEqual(bytes(harness.peer_b.received), b"request")
        harness.peer_b.outgoing += b"answer"
        harness.peer_b.shut_after_send = True
        yield harness.until(lambda: harness.peer_a.eof and bool(harness.results))
        self.assertEqual(bytes(harness.peer_a.received), b"answer")
        self.assertEqual(harness.results[0].ended_by, A)
        self.assertEqual(
            (harness.results[0].bytes_a_to_b, harness.results[0].bytes_b_to_a), (7, 6)
        )

    @inlineCallbacks
    def test_half_close_b_then_a(self) -> Generator[Deferred[Any], Any, None]:
        """
        B half-closes: A gets every byte then EOF, A can still send to B.
        """
        harness = _Harness(self)
        harness.peer_b.outgoing += b"greeting"
        harness.peer_b.shut_after_send = True
        yield harness.until(lambda: harness.peer_a.eof)
        harness.peer_a.outgoing += b"late"
        harness.peer_a.shut_after_send = True
        yield harness.until(lambda: harness.peer_b.eof and bool(harness.results))
        self.assertEqual(bytes(harness.peer_a.received), b"greeting")
        self.assertEqual(bytes(harness.peer_b.received), b"late")
        self.assertEqual(harness.results[0].ended_by, B)

    @inlineCallbacks
    def test_eof_with_pipe_not_empty(self) -> Generator[Deferred[Any], Any, None]:
        """
        A sends 16 MiB and EOF while B does not read: the EOF waits behind the bytes in the
        pipe; once B reads, it gets all of them and then EOF.
        """
        harness = _Harness(self)
        payload = _payload(16 << 20, 8)
        harness.peer_b.reading = False
        harness.peer_a.outgoing += payload
        harness.peer_a.shut_after_send = True
        yield harness.until(lambda: harness.relay._ab.paused)
        self.assertFalse(harness.peer_b.eof)
        harness.peer_b.reading = True
        yield harness.until(lambda: harness.peer_b.eof)
        self.assertEqual(
            hashlib.sha256(harness.peer_b.received).digest(), hashlib.sha256(payload).digest()
        )

    @inlineCallbacks
    def test_lost_side_bytes_still_delivered(self) -> Generator[Deferred[Any], Any, None]:
        """
        A's connection is lost while the pipe holds its bytes for a slow B: every byte read
        from A still reaches B, in order, then B is closed.
        """
        harness = _Harness(self)
        payload = _payload(64 << 20, 9)
        harness.peer_b.reading = False
        harness.peer_a.outgoing += payload
        yield harness.until(lambda: harness.relay._ab.paused)
        self.assertGreater(harness.relay.in_flight[A], 0)
        harness.a.loseConnection()
        yield harness.until(lambda: harness.relay.gone[A])
        harness.peer_b.reading = True
        yield harness.until(lambda: harness.peer_b.eof)
        read = harness.results[0].bytes_a_to_b
        self.assertEqual(len(harness.peer_b.received), read)
        self.assertEqual(bytes(harness.peer_b.received), payload[:read])
        self.assertEqual(harness.results[0].ended_by, A)


class KernelSpliceEndingTests(unittest.TestCase):
    """
    Resets, aborts and time bounds end the relay with the same C{ended_by} as L{Splice}.
    """

    skip = SKIP

    @inlineCallbacks
    def test_peer_reset(self) -> Generator[Deferred[Any], Any, None]:
        """
        B's peer resets its connection: the relay ends, C{ended_by="b"}, A is closed, no pipe
        is left lent.
        """
        harness = _Harness(self)
        harness.peer_a.outgoing += b"x" * 1000
        yield harness.until(lambda: len(harness.peer_b.received) == 1000)
        harness.peer_b.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        harness.peer_b.sock.close()
        harness.peer_b.sock = socket.socket()  # closed again by the cleanup
        harness.peer_b.reading = False
        yield harness.until(lambda: bool(harness.results) and harness.peer_a.eof)
        self.assertEqual(harness.results[0].ended_by, B)
        self.assertEqual(harness.pool.in_use, 0)

    @inlineCallbacks
    def test_abort(self) -> Generator[Deferred[Any], Any, None]:
        """
        C{abort(reason)} drops what is in flight and closes both sides at once; the reason is
        C{ended_by}.
        """
        harness = _Harness(self)
        harness.peer_b.reading = False
        harness.peer_a.outgoing += _payload(8 << 20, 10)
        yield harness.until(lambda: harness.relay._ab.paused)
        harness.relay.abort("drain")
        harness.peer_b.reading = True
        yield harness.until(lambda: bool(harness.results) and harness.peer_b.eof)
        self.assertEqual(harness.results[0].ended_by, "drain")
        self.assertEqual(harness.pool.in_use, 0)

    @inlineCallbacks
    def test_idle_timeout(self) -> Generator[Deferred[Any], Any, None]:
        """
        No byte either way for C{idle_timeout} ends the relay (C{"idle"}); a byte before that
        moves the deadline.
        """
        harness = _Harness(self)
        harness.clock.advance(IDLE - 1)
        harness.peer_a.outgoing += b"ping"
        yield harness.until(lambda: len(harness.peer_b.received) == 4)
        harness.clock.advance(IDLE - 1)
        self.assertEqual(harness.results, [])
        harness.clock.advance(1)
        yield harness.until(lambda: bool(harness.results))
        self.assertEqual(harness.results[0].ended_by, "idle")

    @inlineCallbacks
    def test_grace_period(self) -> Generator[Deferred[Any], Any, None]:
        """
        Once A is gone, B gets C{write_timeout} to take what is in flight for it, then is
        aborted (C{ended_by="a"}).
        """
        harness = _Harness(self)
        harness.peer_b.reading = False
        harness.peer_a.outgoing += _payload(8 << 20, 11)
        yield harness.until(lambda: harness.relay._ab.paused)
        harness.a.loseConnection()
        yield harness.until(lambda: harness.relay.gone[A])
        self.assertEqual(harness.results, [])
        harness.clock.advance(WRITE)
        yield harness.until(lambda: bool(harness.results))
        self.assertEqual(harness.results[0].ended_by, A)


class KernelSpliceFallBackTests(unittest.TestCase):
    """
    A kernel that cannot splice these sockets: the relay goes on as an ordinary L{Splice}.
    """

    skip = SKIP

    @inlineCallbacks
    def test_einval_on_first_use(self) -> Generator[Deferred[Any], Any, None]:
        """
        The first C{splice} fails with C{EINVAL}: an ordinary L{Splice} takes over with the
        counts so far, and bytes still arrive both ways, unchanged and in order.
        """

        def refuse(*args: object, **kwargs: object) -> int:
            raise OSError(errno.EINVAL, "Invalid argument")

        harness = _Harness(self, splice=refuse, start=False)
        harness.relay.start()
        harness.relay._ab.small = harness.relay._ba.small = False  # bulk: splice at once
        harness.relay.data_from(A, b"early ")
        harness.relay.resume_reading(A)
        harness.relay.resume_reading(B)
        harness.peer_a.outgoing += b"up"
        harness.peer_b.outgoing += b"down"
        yield harness.until(
            lambda: len(harness.peer_b.received) == 8 and len(harness.peer_a.received) == 4
        )
        self.assertEqual(len(harness.fell_back), 1)
        self.assertEqual(harness.pool.fallbacks, 1)
        self.assertEqual(bytes(harness.peer_b.received), b"early up")
        self.assertEqual(bytes(harness.peer_a.received), b"down")
        harness.peer_a.shut_after_send = harness.peer_b.shut_after_send = True
        yield harness.until(lambda: bool(harness.results))
        self.assertEqual(
            (harness.results[0].bytes_a_to_b, harness.results[0].bytes_b_to_a), (8, 4)
        )

    @inlineCallbacks
    def test_no_pipe_reads_in_user_space(self) -> Generator[Deferred[Any], Any, None]:
        """
        When no pipe can be made (descriptor limit), reads go through user space, in order,
        and the relay carries on.
        """

        class NoPipes(PipePool):
            __slots__ = ()

            def take(self) -> tuple[int, int]:
                raise OSError(errno.EMFILE, "Too many open files")

        harness = _Harness(self, pool=NoPipes())
        payload = _payload(1 << 20, 12)
        harness.peer_a.outgoing += payload
        yield harness.until(lambda: len(harness.peer_b.received) == len(payload))
        self.assertEqual(bytes(harness.peer_b.received), payload)
        self.assertNotEqual(harness.proto_a.user_space, [])

    @inlineCallbacks
    def test_counts_go_on_across_fall_back(self) -> Generator[Deferred[Any], Any, None]:
        """
        The L{Splice} that takes over counts on from the bytes the kernel relay already
        read: its live counts (what the gateway's live byte meter reads) never go below
        what was counted before the fall-back.
        """

        def refuse(*args: object, **kwargs: object) -> int:
            raise OSError(errno.EINVAL, "Invalid argument")

        harness = _Harness(self, splice=refuse, start=False)
        harness.relay.start()
        harness.relay._ab.small = harness.relay._ba.small = False
        harness.relay.data_from(A, b"early ")
        before = harness.relay.counts
        harness.relay.resume_reading(A)
        harness.relay.resume_reading(B)
        harness.peer_a.outgoing += b"up"
        yield harness.until(lambda: bool(harness.fell_back))
        self.assertGreaterEqual(harness.fell_back[0].counts[A], before[A])
        yield harness.until(lambda: len(harness.peer_b.received) == 8)
        self.assertEqual(harness.fell_back[0].counts, {A: 8, B: 0})

    @inlineCallbacks
    def test_unsupported_after_splicing_ends_the_relay(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """
        C{EINVAL} from C{splice} once bytes already went through the kernel (too late to
        hand over): the relay ends at once with C{ended_by="splice-error"}, logged as
        C{relay.splice_error}, both sides closed, no pipe left lent.
        """
        calls: list[int] = []

        def fails_later(*args: Any, **kwargs: Any) -> int:
            calls.append(1)
            if len(calls) > 2:
                raise OSError(errno.EINVAL, "Invalid argument")
            return os.splice(*args, **kwargs)

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        harness = _Harness(self, splice=fails_later, start=False)
        harness.relay._ab.small = False
        harness.start()
        harness.peer_a.outgoing += _payload(4 << 20, 16)
        yield harness.until(lambda: bool(harness.results) and harness.peer_b.eof)
        self.assertEqual(harness.results[0].ended_by, "splice-error")
        self.assertEqual(harness.fell_back, [])
        self.assertEqual(harness.pool.in_use, 0)
        logged = [event for event in events if event.get("event") == "relay.splice_error"]
        self.assertEqual(len(logged), 1)
        self.assertEqual(logged[0]["errno"], errno.EINVAL)

# -*- test-case-name: tests.test_relay_splice -*-
"""
A kernel-side relay for two plain sockets on Linux: L{KernelSplice} moves a bulk stream with
C{os.splice} through a pipe, as HAProxy's splice mode does, and short reads with one
C{recv_into} and one C{send}, with the interface and the guarantees of
L{netguard.relay.Splice}. L{kernel_relay_possible} says when it applies, L{PipePool} lends
the pipes. What an operator sees of it: C{docs/operating.md} section 5.4; the figures:
C{docs/performance.md}, "Bulk and request/response".
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import weakref
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import main, tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport

from netguard.relay import A, B, DelayedCall, ReactorTime, RelayResult, Splice

#: The most bytes one direction holds in flight: its pipe is made this large (a Linux pipe
#: holds 64 KiB unless told otherwise; where the kernel refuses, as past the per-user pipe
#: quota, the smaller pipe just fills sooner). Four times the default: a quarter of the
#: splice calls and event-loop wake-ups per byte.
CHUNK = 262144

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

#: Reads shorter than this are request/response traffic: moved with one C{recv_into} into the
#: pool's buffer and one C{send}, cheaper than two C{splice} calls for a few bytes. A read
#: that fills the buffer switches the direction to C{splice}, a splice shorter than
#: L{SMALL} switches it back (HAProxy's C{splice-auto} decides alike).
SMALL_READ = 65536
SMALL = 16384

#: How many full reads one readable event may move before the reactor serves the others (a
#: bulk stream saves the event loop's round trips; a short read ends the burst at once).
_BURST = 4

#: Errors that mean this kernel cannot splice these descriptors at all (first use only).
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})

SpliceCall = Callable[..., int]


def _system_splice() -> SpliceCall | None:
    splice = getattr(os, "splice", None)
    if splice is None or not sys.platform.startswith("linux"):
        return None
    return splice  # type: ignore[no-any-return]


def _close_pipes(pipes: list[tuple[int, int]]) -> None:
    while pipes:
        read_end, write_end = pipes.pop()
        os.close(read_end)
        os.close(write_end)


class PipePool:
    """
    The pipes kernel relays borrow while bytes are in flight, and a bounded number of idle
    ones kept for the next borrower (an idle relay holds none).

    @ivar max_idle: how many empty pipes are kept open for reuse.
    @ivar in_use: pipes lent out now.
    @ivar relays: kernel relays started with this pool.
    @ivar fallbacks: kernel relays that found the kernel could not splice and went on as
        an ordinary L{Splice}.
    """

    __slots__ = (
        "_idle",
        "_finalizer",
        "max_idle",
        "in_use",
        "relays",
        "fallbacks",
        "buffer",
        "view",
        "__weakref__",
    )

    def __init__(self, max_idle: int = 64):
        """
        @param max_idle: how many empty pipes are kept open for reuse.
        """
        self.max_idle = max_idle
        self.in_use = 0
        self.relays = 0
        self.fallbacks = 0
        #: The one buffer every relay of this pool reads short messages into (the reactor
        #: runs one read at a time, and each is sent on before the next).
        self.buffer = bytearray(SMALL_READ)
        self.view = memoryview(self.buffer)
        self._idle: list[tuple[int, int]] = []
        self._finalizer = weakref.finalize(self, _close_pipes, self._idle)

    @property
    def idle(self) -> int:
        """
        How many empty pipes are kept open now.
        """
        return len(self._idle)

    def take(self) -> tuple[int, int]:
        """
        Lend a pipe (non-blocking, close-on-exec).

        @return: its read and write ends.
        @raise OSError: when no pipe can be made (descriptor limit).
        """
        if self._idle:
            pipe = self._idle.pop()
        else:
            pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                fcntl.fcntl(pipe[1], _F_SETPIPE_SZ, CHUNK)
            except OSError:
                pass  # over the pipe quota: a smaller pipe, which fills sooner
        self.in_use += 1
        return pipe

    def give_back(self, pipe: tuple[int, int], empty: bool) -> None:
        """
        Return a lent pipe: kept for reuse when it is C{empty} and the pool has room,
        closed otherwise (bytes left in it are dropped).
        """
        self.in_use -= 1
        if empty and len(self._idle) < self.max_idle:
            self._idle.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        """
        Close the idle pipes.
        """
        _close_pipes(self._idle)


def _plain_socket(transport: object) -> bool:
    return (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and not ISSLTransport.providedBy(transport)
        and getattr(transport, "socket", None) is not None
        and not transport.disconnecting
    )


def kernel_relay_possible(a: object, b: object, splice: SpliceCall | None = None) -> bool:
    """
    Whether a L{KernelSplice} can relay between C{a} and C{b}: both are Twisted's own plain
    TCP or unix socket transports (not TLS, not a wrapper around one), on Linux with
    C{os.splice}.

    @param splice: the splice call to be used (by default C{os.splice}, where there is one).
    """
    if splice is None:
        splice = _system_splice()
    return splice is not None and _plain_socket(a) and _plain_socket(b)


def _has_user_data(transport: Any) -> bool:
    """
    Whether Twisted's own write buffer of C{transport} holds bytes (written before the
    kernel relay started, or read in user space for want of a pipe).
    """
    return bool(transport._tempDataLen or len(transport.dataBuffer) > transport.offset)


class _Flow:
    """
    One direction of a L{KernelSplice}: bytes read from C{source} go through one pipe to
    C{target}. Its L{readable} is the source transport's C{doRead}, its L{writable} the
    target transport's C{doWrite}, so the reactor keeps watching each socket once, through
    its own transport.
    """

    __slots__ = (
        "relay",
        "side",
        "source",
        "target",
        "source_fd",
        "target_fd",
        "pipe",
        "queued",
        "count",
        "eof",
        "paused",
        "half_close_pending",
        "stall",
        "writing",
        "small",
    )

    def __init__(self, relay: KernelSplice, side: str, source: Any, target: Any):
        self.relay = relay
        self.side = side
        self.source = source
        self.target = target
        self.source_fd: int = source.fileno()
        self.target_fd: int = target.fileno()
        self.pipe: tuple[int, int] | None = None
        self.queued = 0
        self.count = 0
        self.eof = False
        self.paused = False
        self.half_close_pending = False
        self.stall: DelayedCall | None = None
        self.writing = False
        self.small = True

    # -- reactor events --------------------------------------------------------------------

    def readable(self) -> object:
        """
        The source socket is readable: move what it holds into the pipe, then on to the
        target as far as it takes it.

        @return: what C{doRead} returns: L{None}, or why the source connection ended
            (C{CONNECTION_DONE} for its EOF, which Twisted hands to the protocol's
            C{readConnectionLost} as usual; C{CONNECTION_LOST} for an error).
        """
        relay = self.relay
        if self.paused or self.eof or relay.closing:
            self.source.stopReading()
            return None
        for _ in range(_BURST):
            if self.small and not self.queued:
                return self._copy()
            if self.pipe is None:
                try:
                    self.pipe = relay.pool.take()
                except OSError:
                    # No descriptor for a pipe: this read goes through user space (the
                    # source's own doRead, its protocol, L{KernelSplice.data_from}); bounded
                    # the same way.
                    return type(self.source).doRead(self.source)
            room = CHUNK - self.queued
            if room <= 0:
                self.pause()
                return None
            try:
                moved = relay.splice_call(self.source_fd, self.pipe[1], room, flags=_FLAGS)
            except BlockingIOError:
                if self.queued:
                    self.pause()  # the pipe is full: its target is not taking bytes
                else:
                    self._release()
                return None
            except InterruptedError:
                return None
            except OSError as error:
                if error.errno in _UNSUPPORTED and relay.may_fall_back():
                    return relay.fall_back(self)
                return main.CONNECTION_LOST
            if moved == 0:
                if not self.queued:
                    self._release()
                return main.CONNECTION_DONE
            relay.spliced = True
            if moved < SMALL:
                self.small = True
            self.queued += moved
            self.count += moved
            relay.last = relay.clock.seconds()
            self.flush(from_target=False)
            if self.queued >= CHUNK:
                self.pause()
                return None
            if moved < room or self.queued or self.paused or relay.closing:
                return None  # the source had no more, or the target is not taking it all
        return None

    def _copy(self) -> object:
        """
        Move one short read through the pool's buffer: C{recv_into}, then C{send} as much
        as the target takes; the rest goes to Twisted's buffer of the target, ahead of
        anything later, and the source is not read until it has been written.
        """
        relay = self.relay
        view = relay.pool.view
        try:
            size = self.source.socket.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return main.CONNECTION_LOST
        if size == 0:
            return main.CONNECTION_DONE
        self.count += size
        relay.last = relay.clock.seconds()
        if size == len(view):
            self.small = False  # a bulk stream: splice from now on
        target = self.target
        if relay.gone_side(target):
            return None
        sent = 0
        if not _has_user_data(target):
            try:
                sent = target.socket.send(view[:size])
            except OSError:
                sent = 0  # full, or an error that the target's own events will report
        if sent < size:
            target.write(bytes(view[sent:size]))
            self.pause()
        return None

    def writable(self) -> object:
        """
        The target socket is writable: first what Twisted's own buffer holds for it (and
        Twisted's pending close or half-close once that is empty), then the pipe.

        @return: what C{doWrite} returns.
        """
        target = self.target
        if not self.queued or _has_user_data(target):
            why = type(target).doWrite(target)
            if why or _has_user_data(target):
                return why
            if not self.queued:
                self.drained()
                return None
        return self.flush(from_target=True)

    # -- moving bytes ----------------------------------------------------------------------

    def flush(self, from_target: bool) -> object:
        """
        Move what the pipe holds to the target, as far as it takes it; wait for the target
        to be writable for the rest.

        @param from_target: whether this runs in the target's own C{doWrite} (which can
            report an error of the target; elsewhere the target's C{doWrite} is asked to).
        """
        target = self.target
        if self.relay.gone_side(target):
            self.drop()
            return None
        if _has_user_data(target):
            self.writing = True
            target.startWriting()
            return None
        assert self.pipe is not None
        while self.queued:
            try:
                moved = self.relay.splice_call(
                    self.pipe[0], self.target_fd, self.queued, flags=_FLAGS
                )
            except BlockingIOError:
                self.writing = True
                target.startWriting()
                return None
            except InterruptedError:
                continue
            except OSError:
                if from_target:
                    return main.CONNECTION_LOST
                self.writing = True
                target.startWriting()
                return None
            if moved <= 0:
                self.writing = True
                target.startWriting()
                return None
            self.queued -= moved
        if self.writing and not (target.disconnecting or target._writeDisconnecting):
            self.writing = False
            target.stopWriting()
        self.drained()
        return None

    def pause(self) -> None:
        """
        The target holds what it can: stop reading the source until it has taken it all,
        and start the target's stalled-reader clock.
        """
        self.source.stopReading()
        if self.paused:
            return
        self.paused = True
        relay = self.relay
        if self.stall is None and not relay.closing:
            self.stall = relay.clock.callLater(
                relay.write_timeout, relay.stalled, self, B if self.side == A else A
            )

    def drained(self) -> None:
        """
        Everything read from the source has reached the target (pipe and Twisted's buffer
        empty): give the pipe back, then resume reading, or perform the half-close or close
        that waited for this.
        """
        self._release()
        self.cancel_stall()
        relay = self.relay
        if relay.closing:
            if not relay.gone_side(self.target):
                self.target.loseConnection()
            return
        if self.half_close_pending:
            self.half_close_pending = False
            self.target.loseWriteConnection()
        if self.paused:
            self.paused = False
            if not (self.eof or relay.gone_side(self.source)):
                self.source.startReading()

    def cancel_stall(self) -> None:
        """
        Cancel the stalled-reader timer, if any.
        """
        if self.stall is not None:
            if self.stall.active():
                self.stall.cancel()
            self.stall = None

    def _release(self) -> None:
        if self.pipe is not None:
            self.relay.pool.give_back(self.pipe, not self.queued)
            self.pipe = None
            self.queued = 0

    def drop(self) -> None:
        """
        The relay is over for this direction: drop what the pipe holds.
        """
        self.cancel_stall()
        self._release()

    def uninstall(self) -> None:
        """
        Give the read and write events back to the transports (unless Twisted replaced them
        itself, as C{abortConnection} does).
        """
        if getattr(vars(self.source).get("doRead"), "__self__", None) is self:
            del self.source.doRead
        if getattr(vars(self.target).get("doWrite"), "__self__", None) is self:
            del self.target.doWrite


_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


class KernelSplice:
    """
    Relay bytes between two plain sockets, C{a} and C{b}, inside the kernel: each direction
    is a L{_Flow} that splices from its source socket into a pipe and from the pipe into its
    target socket, in order, once each, without a copy through Python. A short read
    (request/response traffic, below L{SMALL_READ}) is moved with one C{recv_into} into the
    pool's shared buffer and one C{send} instead; what the target does not take at once
    waits in Twisted's buffer of the target, and the source is not read until it has gone.

    It keeps every promise of L{Splice}, and has its interface (C{start}, C{data_from},
    C{eof_from}, C{lost}, C{abort}, C{resume_reading}, C{counts}, C{done}):
      - backpressure: a direction whose target does not take what the pipe holds stops
        reading its source, so at most one pipe (L{CHUNK}, 256 KiB) or one short read per
        direction is in flight, plus what Twisted's buffer held when the relay started;
      - half-close: a source's EOF is passed on (C{loseWriteConnection}) once the pipe is
        empty; EOF both ways, or one side lost, closes what remains once flushed, and
        aborts it after C{write_timeout} (the grace period);
      - C{idle_timeout} (C{ended_by="idle"}) and C{write_timeout} for a side that leaves its
        pipe full (C{"stalled-a"}, C{"stalled-b"});
      - C{counts} are the bytes read from each side; the L{RelayResult} means what
        L{Splice}'s does.

    The sockets stay their transports' own: the flows take over their C{doRead} and
    C{doWrite} (the reactor keeps one registration per socket), and reading and writing are
    switched with the transports' C{startReading}, C{stopReading}, C{startWriting},
    C{stopWriting}. EOF and connection loss reach the protocols as usual, which report them
    here through the leg (L{eof_from}, L{lost}). An idle relay holds no pipe: a flow borrows
    one from the L{PipePool} when a read brings bytes and gives it back once it is empty.

    Bytes read in user space before the relay started (by the line receiver, or the backend's
    first bytes) are handed to L{data_from}, which writes them to Twisted's buffer of the
    other side; a flow sends that buffer first and the pipe after it.

    If the first C{splice} fails with C{EINVAL} (a kernel that cannot splice these sockets),
    the relay goes on as an ordinary L{Splice}, handed to C{on_fall_back}.

    @ivar done: fires once with a L{RelayResult} when both sides are gone.
    @ivar ended_by: see L{RelayResult.ended_by}; L{None} while the relay runs.
    @ivar closing: whether the relay is closing both sides (nothing more is read).
    """

    __slots__ = (
        "_ab",
        "_ba",
        "clock",
        "idle_timeout",
        "write_timeout",
        "pool",
        "splice_call",
        "done",
        "ended_by",
        "closing",
        "spliced",
        "last",
        "on_fall_back",
        "_gone_a",
        "_gone_b",
        "_first_eof",
        "_idle",
        "_grace",
        "_started",
    )

    def __init__(
        self,
        a: Any,
        b: Any,
        *,
        clock: ReactorTime,
        pool: PipePool,
        idle_timeout: float = 3600.0,
        write_timeout: float = 30.0,
        done: Deferred[RelayResult] | None = None,
        splice: SpliceCall | None = None,
        on_fall_back: Callable[[Splice], None] | None = None,
    ):
        """
        @param a: side A's transport (a plain socket transport: L{kernel_relay_possible}).
        @param b: side B's transport.
        @param clock: the L{IReactorTime} for every timer.
        @param pool: where the pipes come from.
        @param idle_timeout: seconds without a byte either way before the relay is aborted.
        @param write_timeout: seconds a side may leave its pipe full; also the time left to
            the remaining side to flush once the relay is closing.
        @param done: the L{Deferred} to fire with the result (a new one by default).
        @param splice: the splice call (C{os.splice} by default).
        @param on_fall_back: told of the L{Splice} that carries on when the kernel cannot
            splice these sockets.
        """
        call = splice if splice is not None else _system_splice()
        if call is None:
            raise RuntimeError("os.splice is not available")
        self.splice_call = call
        self.clock = clock
        self.pool = pool
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.done: Deferred[RelayResult] = done if done is not None else Deferred()
        self.on_fall_back = on_fall_back
        self.ended_by: str | None = None
        self.closing = False
        self.spliced = False
        self.last = 0.0
        self._gone_a = False
        self._gone_b = False
        self._first_eof: str | None = None
        self._idle: DelayedCall | None = None
        self._grace: DelayedCall | None = None
        self._started = 0.0
        self._ab = _Flow(self, A, a, b)
        self._ba = _Flow(self, B, b, a)

    # -- the Splice interface ----------------------------------------------------------------

    @property
    def counts(self) -> dict[str, int]:
        """
        Bytes read per side so far (C{{"a": n, "b": m}}).
        """
        return {A: self._ab.count, B: self._ba.count}

    @property
    def eof(self) -> dict[str, bool]:
        """
        Per side, whether it has sent EOF.
        """
        return {A: self._ab.eof, B: self._ba.eof}

    @property
    def gone(self) -> dict[str, bool]:
        """
        Per side, whether its connection is lost.
        """
        return {A: self._gone_a, B: self._gone_b}

    @property
    def in_flight(self) -> dict[str, int]:
        """
        Bytes read from each side and held in its pipe now.
        """
        return {A: self._ab.queued, B: self._ba.queued}

    def start(self) -> None:
        """
        Set TCP_NODELAY where the sockets allow it, take over their read and write events
        and start the idle timer.
        """
        self._started = self.last = self.clock.seconds()
        self.pool.relays += 1
        for flow in (self._ab, self._ba):
            try:
                flow.source.setTcpNoDelay(True)
            except OSError:
                pass  # a unix socket
            # The flows take over the socket's events in Twisted's own way (as
            # abortConnection does): the reactor calls the transport's doRead and doWrite.
            flow.source.doRead = flow.readable
            flow.source.doWrite = self._flow(_other(flow.side)).writable
            if _has_user_data(flow.target):
                flow.target.startWriting()
        self._idle = self.clock.callLater(self.idle_timeout, self._idle_check)

    def data_from(self, side: str, data: bytes) -> None:
        """
        Bytes of side C{side} read in user space (before the relay started, or for want of
        a pipe): written to Twisted's buffer of the other side, ahead of anything spliced
        later. While that buffer holds bytes, the side is not read.
        """
        flow = self._flow(side)
        if self.closing or self.gone_side(flow.target):
            return
        flow.count += len(data)
        self.last = self.clock.seconds()
        flow.target.write(data)
        if _has_user_data(flow.target):
            flow.pause()

    def resume_reading(self, side: str) -> None:
        """
        Read side C{side} again after someone else paused it, unless backpressure holds it
        or it has nothing more to give.
        """
        flow = self._flow(side)
        if flow.paused or flow.eof or self.closing or self.gone_side(flow.source):
            return
        flow.source.startReading()

    def eof_from(self, side: str) -> None:
        """
        Side C{side} will send no more: pass the half-close on once its pipe is empty; when
        both sides have sent EOF, close both.
        """
        flow = self._flow(side)
        if flow.eof or self.gone_side(flow.source):
            return
        flow.eof = True
        flow.source.stopReading()
        if self._first_eof is None:
            self._first_eof = side
        if self.gone_side(flow.target) or self.closing:
            return
        if self._flow(_other(side)).eof:
            self._wind_down()
        elif flow.queued or _has_user_data(flow.target):
            flow.half_close_pending = True
            flow.target.startWriting()
        else:
            flow.target.loseWriteConnection()

    def lost(self, side: str) -> None:
        """
        Side C{side}'s connection is gone: what its pipe holds still goes to the other side,
        which is then closed (aborted after C{write_timeout}).
        """
        if self._gone_a if side == A else self._gone_b:
            return
        if side == A:
            self._gone_a = True
        else:
            self._gone_b = True
        self._flow(_other(side)).drop()  # bytes for the lost side
        if self.ended_by is None:
            self.ended_by = self._first_eof or side
        if self._gone_a and self._gone_b:
            self._finish()
        else:
            self._wind_down()

    def abort(self, reason: str) -> None:
        """
        End the relay at once, dropping what is in flight both ways.
        """
        if self.ended_by is None:
            self.ended_by = reason
        self.closing = True
        self._cancel_timers()
        for flow in (self._ab, self._ba):
            flow.drop()
            if not self.gone_side(flow.source):
                flow.source.abortConnection()

    # -- for the flows -------------------------------------------------------------------------

    def gone_side(self, transport: object) -> bool:
        """
        Whether C{transport}'s connection is lost.
        """
        return self._gone_a if transport is self._ab.source else self._gone_b

    def stalled(self, flow: _Flow, target_side: str) -> None:
        """
        C{flow}'s target left its pipe full for C{write_timeout}: a stalled reader.
        """
        flow.stall = None
        self.abort(f"stalled-{target_side}")

    def may_fall_back(self) -> bool:
        """
        Whether the relay can still become an ordinary L{Splice}: nothing spliced yet, no
        EOF or loss seen.
        """
        return not (
            self.spliced
            or self.closing
            or self._gone_a
            or self._gone_b
            or self._first_eof is not None
        )

    def fall_back(self, flow: _Flow) -> object:
        """
        The kernel cannot splice these sockets: carry on as an ordinary L{Splice} (told to
        C{on_fall_back}), starting with the read that found it out. Its result counts the
        bytes read before it too (its live C{counts} do not).
        """
        self.pool.fallbacks += 1
        self._cancel_timers()
        self.closing = True
        for each in (self._ab, self._ba):
            each.drop()
            each.uninstall()
        a, b = self._ab.source, self._ba.source
        splice = Splice(
            a,
            b,
            clock=self.clock,
            idle_timeout=self.idle_timeout,
            write_timeout=self.write_timeout,
        )
        before_a, before_b = self._ab.count, self._ba.count

        def with_bytes_before(result: RelayResult) -> RelayResult:
            return attrs.evolve(
                result,
                bytes_a_to_b=result.bytes_a_to_b + before_a,
                bytes_b_to_a=result.bytes_b_to_a + before_b,
            )

        splice.done.addCallback(with_bytes_before).chainDeferred(self.done)
        if self.on_fall_back is not None:
            self.on_fall_back(splice)
        splice.start()
        splice.resume_reading(A)
        splice.resume_reading(B)
        return type(flow.source).doRead(flow.source)

    # -- internals -------------------------------------------------------------------------

    def _flow(self, side: str) -> _Flow:
        return self._ab if side == A else self._ba

    def _wind_down(self) -> None:
        """
        Close every side still there once what is in flight to it is written; abort what is
        left after C{write_timeout}.
        """
        self.closing = True
        self._cancel_timers()
        for flow in (self._ab, self._ba):
            if not self.gone_side(flow.source):
                flow.source.stopReading()
            if self.gone_side(flow.target):
                continue
            if flow.queued or flow.half_close_pending:
                flow.half_close_pending = False
                flow.target.startWriting()  # closed by L{_Flow.drained} once flushed
            else:
                flow.drop()
                flow.target.loseConnection()
        if self._grace is None:
            self._grace = self.clock.callLater(self.write_timeout, self._grace_expired)

    def _cancel_timers(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        self._ab.cancel_stall()
        self._ba.cancel_stall()

    def _idle_check(self) -> None:
        self._idle = None
        remaining = self.last + self.idle_timeout - self.clock.seconds()
        if remaining > 0:
            self._idle = self.clock.callLater(remaining, self._idle_check)
        else:
            self.abort("idle")

    def _grace_expired(self) -> None:
        self._grace = None
        for flow in (self._ab, self._ba):
            flow.drop()
            if not self.gone_side(flow.source):
                flow.source.abortConnection()

    def _finish(self) -> None:
        self.closing = True
        self._cancel_timers()
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        for flow in (self._ab, self._ba):
            flow.drop()
            flow.uninstall()
        if not self.done.called:
            self.done.callback(
                RelayResult(
                    bytes_a_to_b=self._ab.count,
                    bytes_b_to_a=self._ba.count,
                    duration=self.clock.seconds() - self._started,
                    ended_by=self.ended_by or A,
                )
            )


def _other(side: str) -> str:
    return B if side == A else A

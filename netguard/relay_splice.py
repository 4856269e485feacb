# -*- test-case-name: tests.test_relay_splice -*-
"""
A kernel-side relay for two plain sockets on Linux: L{KernelSplice} moves a bulk stream with
C{os.splice} through a pipe, as HAProxy's splice mode does, and short reads with one
C{recv_into} and one C{send}, with the interface and the guarantees of
L{netguard.relay.Splice}. L{netguard.relay_pipes} says when it applies and lends the
pipes. What an operator sees of it: C{docs/operating.md} section 5.4; the figures:
C{docs/performance.md}, "Bulk and request/response".
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import main
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from netguard.relay import A, B, DelayedCall, IdleSweep, ReactorTime, RelayResult, Splice
from netguard.relay_pipes import CHUNK, PipePool, SpliceCall, system_splice
from netguard.relay_pipes import SMALL_READ as SMALL_READ
from netguard.relay_pipes import kernel_relay_possible as kernel_relay_possible

#: A splice shorter than this switches its direction back to short reads (one C{recv_into}
#: into the pool's buffer, L{SMALL_READ} bytes, and one C{send}: cheaper than two C{splice}
#: calls for a few bytes); a short read that fills the buffer switches it to C{splice}
#: (HAProxy's C{splice-auto} decides alike).
SMALL = 16384

#: How many full reads one readable event may move before the reactor serves the others (a
#: bulk stream saves the event loop's round trips; a short read ends the burst at once).
_BURST = 4

#: Errors that mean this kernel cannot splice these descriptors at all.
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


def _has_user_data(transport: Any) -> bool:
    """
    Whether Twisted's own write buffer of C{transport} holds bytes (written before the
    kernel relay started, or read in user space for want of a pipe).
    """
    return bool(transport._tempDataLen or len(transport.dataBuffer) > transport.offset)


class _Flow:
    """
    One direction of a L{KernelSplice}: bytes read from C{source} go through one pipe to
    C{target}. The flow itself is the source transport's C{doRead} (calling it is
    L{readable}: no bound method is made per relay), and its L{writable} becomes the target
    transport's C{doWrite} while the flow waits for the target (L{hook_writes}: bytes in its
    pipe or in Twisted's buffer of the target, its source paused) and until everything has
    been written (L{drained}); otherwise Twisted's own C{doWrite} serves the target, so an
    idle relay allocates nothing for its hooks. The reactor keeps watching each socket once,
    through its own transport. Descriptors are asked of the transports at each call, never
    kept: a transport whose connection is gone answers -1, never a number reused by another
    socket.
    """

    __slots__ = (
        "relay",
        "side",
        "source",
        "target",
        "pipe",
        "queued",
        "count",
        "eof",
        "paused",
        "paused_at",
        "took",
        "half_close_pending",
        "stall",
        "writing",
        "small",
        "hooked",
    )

    def __init__(self, relay: KernelSplice, side: str, source: Any, target: Any):
        self.relay = relay
        self.side = side
        self.source = source
        self.target = target
        self.pipe: tuple[int, int] | None = None
        self.queued = 0
        self.count = 0
        self.eof = False
        self.paused = False
        self.paused_at = 0.0
        self.took = False
        self.half_close_pending = False
        self.stall: DelayedCall | None = None
        self.writing = False
        self.small = True
        self.hooked = False

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
        for burst in range(_BURST):
            if self.small and not self.queued:
                return self._copy()
            if self.pipe is None:
                try:
                    self.pipe = relay.pool.take()
                except OSError:
                    # No pipe to be had (the pool's bound, descriptor limits): this read
                    # goes through user space, bounded the same way.
                    return self._read_in_user_space()
            room = CHUNK - self.queued
            if room <= 0:
                self.pause()
                return None
            try:
                moved = relay.splice_call(self.source.fileno(), self.pipe[1], room, flags=_FLAGS)
            except BlockingIOError:
                if self.queued:
                    self.pause()  # the pipe is full: its target is not taking bytes
                    return None
                self._release()
                if burst == 0:
                    # Readable, yet nothing to splice: the next byte is TCP urgent data
                    # (splice stops at the urgent mark). One read in user space, like the
                    # ordinary relay's recv, skips the urgent byte and moves what follows.
                    return self._read_in_user_space()
                return None
            except InterruptedError:
                return None
            except OSError as error:
                if error.errno not in _UNSUPPORTED:
                    return main.CONNECTION_LOST
                if relay.may_fall_back():
                    return relay.fall_back(self)
                relay.splice_failed(self, error)
                return None
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

    #: The flow is its source transport's C{doRead}.
    __call__ = readable

    def want_writes(self) -> None:
        """
        Install L{writable} as the target transport's C{doWrite} (once), so that the
        target's write events reach this flow; then ask for them.
        """
        self.hook_writes()
        self.target.startWriting()

    def hook_writes(self) -> None:
        """
        Make L{writable} the target transport's C{doWrite} (once), before anything the flow
        writes or waits for there: Twisted's own C{doWrite} would write its buffer but never
        tell the flow it drained.
        """
        if not self.hooked:
            self.hooked = True
            self.target.doWrite = self.writable

    def unhook_writes(self) -> None:
        """
        Give the target's C{doWrite} back to Twisted (unless Twisted replaced it itself, as
        C{abortConnection} does): nothing of this flow waits for the target any more.
        """
        if self.hooked:
            self.hooked = False
            target = self.target
            if getattr(target.doWrite, "__self__", None) is self:
                del target.doWrite

    def _read_in_user_space(self) -> object:
        """
        One read of the source by its own transport: its protocol hands the bytes to
        L{KernelSplice.data_from}, which queues them in Twisted's buffer of the target.
        """
        return type(self.source).doRead(self.source)

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
        if size == len(view):
            self.small = False  # a bulk stream: splice from now on
        target = self.target
        if relay.gone_side(target):
            return None  # bytes for a side that is gone: dropped, not counted
        if target.fileno() < 0:
            relay.unreported_loss(target)
            return None
        self.count += size
        relay.last = relay.clock.seconds()
        sent = 0
        if not _has_user_data(target):
            try:
                sent = target.socket.send(view[:size])
            except OSError:
                sent = 0  # full, or an error that the target's own events will report
        if sent < size:
            self.hook_writes()
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
        relay = self.relay
        if relay.gone_side(target):
            self.drop()
            return None
        target_fd = target.fileno()
        if target_fd < 0:
            relay.unreported_loss(target)
            return None
        if _has_user_data(target):
            self.wait_for_target()
            return None
        assert self.pipe is not None
        while self.queued:
            try:
                moved = relay.splice_call(self.pipe[0], target_fd, self.queued, flags=_FLAGS)
            except BlockingIOError:
                self.wait_for_target()
                return None
            except InterruptedError:
                continue
            except OSError as error:
                if error.errno in _UNSUPPORTED:
                    relay.splice_failed(self, error)
                    return None
                if from_target:
                    return main.CONNECTION_LOST
                self.writing = True
                self.want_writes()
                return None
            if moved <= 0:
                self.wait_for_target()
                return None
            self.queued -= moved
            self.took = True
        if self.writing and not (target.disconnecting or target._writeDisconnecting):
            self.writing = False
            target.stopWriting()
        self.drained()
        return None

    def wait_for_target(self) -> None:
        """
        Bytes wait for the target, which takes no more now: ask for its write events, and
        start its stalled-reader clock unless it runs already.
        """
        self.writing = True
        self.want_writes()
        relay = self.relay
        if self.stall is None and not relay.closing:
            self.took = False
            self.stall = relay.clock.callLater(relay.write_timeout, self.stall_check)

    def pause(self) -> None:
        """
        The target holds what it can: stop reading the source until it has taken it all,
        and start the target's stalled-reader clock (unless it runs already).
        """
        self.source.stopReading()
        self.hook_writes()
        if self.paused:
            return
        self.paused = True
        relay = self.relay
        self.paused_at = relay.clock.seconds()
        if self.stall is None and not relay.closing:
            self.stall = relay.clock.callLater(relay.write_timeout, self.stall_check)

    def stall_check(self) -> None:
        """
        The stalled-reader clock ran out: a target that left bytes waiting and took none of
        them for C{write_timeout}, or, while its source is paused, has not taken them all
        within C{write_timeout} of the pause (as L{Splice} measures a full write queue), is
        a stalled reader; one that is still taking bytes gets another C{write_timeout}.
        """
        self.stall = None
        relay = self.relay
        if relay.closing or not (self.queued or _has_user_data(self.target)):
            return
        now = relay.clock.seconds()
        if self.paused:
            left = self.paused_at + relay.write_timeout - now
            if left > 0:
                self.stall = relay.clock.callLater(left, self.stall_check)
                return
        elif self.took:
            self.took = False
            self.stall = relay.clock.callLater(relay.write_timeout, self.stall_check)
            return
        relay.stalled(self, _other(self.side))

    def drained(self) -> None:
        """
        Everything read from the source has reached the target (pipe and Twisted's buffer
        empty): give the pipe back and the target's C{doWrite} to Twisted, then resume
        reading, or perform the half-close or close that waited for this (Twisted's own
        C{doWrite} completes those).
        """
        self._release()
        self.cancel_stall()
        self.unhook_writes()
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
        source = self.source
        if source.doRead is self:
            del source.doRead
        self.unhook_writes()


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
      - C{idle_timeout} (C{ended_by="idle"}, no earlier than C{idle_timeout} after the last
        byte and at most L{netguard.relay.IDLE_GRANULARITY} after it: the relays of a clock
        share one L{IdleSweep}, so an idle relay holds no timer) and C{write_timeout} for a
        stalled reader
        (C{"stalled-a"}, C{"stalled-b"}): a side that leaves bytes waiting in its pipe and
        takes none of them for that long, or does not empty the pipe within that long
        once it is full (the other side's reading paused);
      - C{counts} are the bytes read from each side; the L{RelayResult} means what
        L{Splice}'s does.

    The sockets stay their transports' own: the flows take over their C{doRead}, and their
    C{doWrite} while bytes wait for them (the reactor keeps one registration per socket; an
    idle relay stores no bound method in either transport), and reading and writing are
    switched with the transports' C{startReading}, C{stopReading}, C{startWriting},
    C{stopWriting}. EOF and connection loss reach the protocols as usual, which report them
    here through the leg (L{eof_from}, L{lost}). An idle relay holds no pipe: a flow borrows
    one from the L{PipePool} when a read brings bytes and gives it back once it is empty.

    Bytes read in user space before the relay started (by the line receiver, or the backend's
    first bytes) are handed to L{data_from}, which writes them to Twisted's buffer of the
    other side; a flow sends that buffer first and the pipe after it.

    If the first C{splice} fails with C{EINVAL} (a kernel that cannot splice these sockets),
    the relay goes on as an ordinary L{Splice}, handed to C{on_fall_back}. Should such an
    error come later, once bytes went through the kernel, the relay ends at once
    (C{ended_by="splice-error"}, logged C{relay.splice_error}). TCP urgent data: C{splice}
    stops at the urgent mark, so a readable socket with nothing to splice is read once in
    user space, which skips the urgent byte as the ordinary relay's C{recv} does.

    Descriptors: an idle relay holds none of its own; a direction with bytes in flight holds
    one pipe (two descriptors), so a relay holds at most six with its two sockets. When the
    pool lends no pipe (L{PipePool}'s bounds, or the kernel's), the direction reads in user
    space instead. C{splice} into a socket whose peer is gone raises C{SIGPIPE}: the kernel
    relay runs only where the process ignores it (L{kernel_relay_possible}).

    @ivar done: fires once with a L{RelayResult} when both sides are gone.
    @ivar ended_by: see L{RelayResult.ended_by}; L{None} while the relay runs.
    @ivar closing: whether the relay is closing both sides (nothing more is read).
    """

    log = Logger()

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
        "_sweep",
        "idle_key",
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
        idle_sweep: IdleSweep | None = None,
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
        @param idle_sweep: the L{IdleSweep} that times C{idle_timeout}; by default the one
            shared by every relay of C{clock}.
        """
        call = splice if splice is not None else system_splice()
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
        self._sweep = IdleSweep.for_clock(clock) if idle_sweep is None else idle_sweep
        self.idle_key: int | None = None
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
        Set TCP_NODELAY where the sockets allow it, take over their read events (and their
        write events as the flows need them) and start watching for idleness in the clock's
        L{IdleSweep}.
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
            # The flow is the source's doRead; it becomes the target's doWrite when it first
            # needs the target's write events.
            flow.source.doRead = flow
            if _has_user_data(flow.target):
                flow.want_writes()
        self._sweep.add(self)

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
        flow.hook_writes()
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
            flow.want_writes()
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

    def unreported_loss(self, transport: Any) -> None:
        """
        C{transport}'s connection is gone (its descriptor is closed) and nobody told the
        relay: treat it as lost now, so that nothing is ever written to a descriptor number
        another socket may have taken since.
        """
        side = A if transport is self._ab.source else B
        self.log.warn(
            "relay side {side} closed without being reported to the relay",
            event="relay.unreported_close",
            side=side,
        )
        self.lost(side)

    def splice_failed(self, flow: _Flow, error: OSError) -> None:
        """
        C{splice} failed with an error that means it cannot splice these sockets, after it
        already had (too late to hand over to an ordinary L{Splice}): end the relay at once
        (C{ended_by="splice-error"}) and say so.
        """
        self.log.error(
            "kernel relay: splice from side {side} failed: {error}",
            event="relay.splice_error",
            side=flow.side,
            errno=error.errno,
            error=os.strerror(error.errno or 0),
        )
        self.abort("splice-error")

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
        C{on_fall_back}), starting with the read that found it out. It fires L{done}, and its
        counts, live and final, go on from this relay's.
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
            done=self.done,
            idle_sweep=self._sweep,
        )
        # It counts on from the bytes this relay read: the live counts never go down.
        splice._a.count, splice._b.count = self._ab.count, self._ba.count
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
                flow.want_writes()  # closed by L{_Flow.drained} once flushed
            else:
                flow.drop()
                flow.target.loseConnection()
        if self._grace is None and not (self._gone_a and self._gone_b):
            # (closing a half-closed socket reports its loss at once: the relay may have
            # finished in the loop above)
            self._grace = self.clock.callLater(self.write_timeout, self._grace_expired)

    def _cancel_timers(self) -> None:
        self._sweep.remove(self)
        self._ab.cancel_stall()
        self._ba.cancel_stall()

    def idle_deadline(self) -> float:
        """
        @return: when the relay has been idle for C{idle_timeout} (L{IdleWatched}).
        """
        return self.last + self.idle_timeout

    def idle_expired(self) -> None:
        """
        No byte either way for C{idle_timeout}: end the relay (L{IdleWatched}).
        """
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

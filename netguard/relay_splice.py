# -*- test-case-name: tests.test_relay_splice -*-
"""
A kernel-side relay for two plain sockets on Linux: L{KernelSplice} moves a bulk stream with
C{os.splice} through a pipe, as HAProxy's splice mode does, and short reads with one
C{recv_into} and one C{send}, with the interface and the guarantees of
L{netguard.relay.Splice}. L{netguard.relay_pipes} says when it applies and lends the
pipes; L{netguard.relay_flow} moves the bytes of each direction. What an operator sees of
it: C{docs/operating.md} section 5.4; the figures: C{docs/performance.md}, "Bulk and
request/response".
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from netguard.relay import (
    A,
    B,
    DelayedCall,
    IdleSweep,
    ReactorTime,
    RelayResult,
    Splice,
)
from netguard.relay_flow import _Flow, other
from netguard.relay_pipes import CHUNK as CHUNK
from netguard.relay_pipes import SMALL_READ as SMALL_READ
from netguard.relay_pipes import PipePool, SpliceCall, relay_transport, system_splice
from netguard.relay_pipes import kernel_relay_possible as kernel_relay_possible
from netguard.sending import has_user_data


class _SpliceOwner(Protocol):
    """
    What holds a relay and is told of the L{Splice} that carries on after a fall-back.
    """

    splice: Splice | KernelSplice | None


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
    the relay goes on as an ordinary L{Splice}, handed to its C{owner}. Should such an
    error come later, once bytes went through the kernel, the relay ends at once
    (C{ended_by="splice-error"}, logged C{relay.splice_error}). TCP urgent data: C{splice}
    stops at the urgent mark, so a readable socket with nothing to splice is read once in
    user space, which skips the urgent byte as the ordinary relay's C{recv} does.

    Descriptors: an idle relay holds none of its own; a direction with bytes in flight holds
    one pipe (two descriptors), so a relay holds at most six with its two sockets. When the
    pool lends no pipe (L{PipePool}'s bounds, or the kernel's), the direction reads in user
    space instead. C{splice} into a socket whose peer is gone raises C{SIGPIPE}: the kernel
    relay runs only where the process ignores it (L{kernel_relay_possible}).

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
        "_done",
        "ended_by",
        "closing",
        "spliced",
        "last",
        "owner",
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
        owner: _SpliceOwner | None = None,
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
        @param done: the L{Deferred} to fire with the result (by default one made when
            L{done} is first asked for).
        @param splice: the splice call (C{os.splice} by default).
        @param owner: whose C{splice} becomes the L{Splice} that carries on when the kernel
            cannot splice these sockets (a backend leg): no bound method is kept for the
            relay's life.
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
        # The result's Deferred once made; the result itself if the relay ended first.
        self._done: Deferred[RelayResult] | RelayResult | None = done
        self.owner = owner
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
        # The sockets themselves: a haproxy: wrapper that only passes bytes through is
        # stepped over (its protocol still hears of data, EOF and loss from the socket).
        a, b = relay_transport(a), relay_transport(b)
        self._ab = _Flow(self, A, a, b)
        self._ba = _Flow(self, B, b, a)

    # -- the Splice interface ----------------------------------------------------------------

    @property
    def done(self) -> Deferred[RelayResult]:
        """
        Fires once with a L{RelayResult} when both sides are gone. Made when first asked
        for (already fired if the relay has ended), so an idle relay that nobody waits on
        holds no L{Deferred}.
        """
        done = self._done
        if not isinstance(done, Deferred):
            made: Deferred[RelayResult] = Deferred()
            self._done = made
            if done is not None:
                made.callback(done)
            return made
        return done

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
            if has_user_data(flow.target):
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
        if has_user_data(flow.target):
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
        if self._flow(other(side)).eof:
            self._wind_down()
        elif flow.queued or has_user_data(flow.target):
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
        self._flow(other(side)).drop()  # bytes for the lost side
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
        the C{owner}), starting with the read that found it out. It fires L{done}, and its
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
        if self.owner is not None:
            self.owner.splice = splice
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
        done = self._done
        if isinstance(done, RelayResult) or (done is not None and done.called):
            return
        result = RelayResult(
            bytes_a_to_b=self._ab.count,
            bytes_b_to_a=self._ba.count,
            duration=self.clock.seconds() - self._started,
            ended_by=self.ended_by or A,
        )
        if done is None:
            self._done = result  # for whoever asks for done later
        else:
            done.callback(result)

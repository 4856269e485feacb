# -*- test-case-name: tests.test_relay -*-
"""
A two-way byte relay between two connected transports, with backpressure, half-close,
accounting and time bounds; shared by the gateway (client <-> backend) and the tunnel
(local program <-> gateway).

L{Splice} explains the mechanism; what an operator sees of it: C{docs/operating.md}
section 5.4, and C{docs/tls.md} for half-close over TLS.
"""

from __future__ import annotations

import heapq
import math
import weakref
from collections.abc import Callable
from typing import ClassVar, Protocol, cast

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from netguard.sending import plain_socket, write_now

#: The two sides of a splice. In the gateway, C{A} is the client and C{B} the backend.
A, B = "a", "b"


class DelayedCall(Protocol):
    """
    The part of L{twisted.internet.interfaces.IDelayedCall} netguard's timers use.
    """

    def active(self) -> bool: ...

    def cancel(self) -> None: ...

    def reset(self, secondsFromNow: float) -> None: ...


class ReactorTime(Protocol):
    """
    The part of L{twisted.internet.interfaces.IReactorTime} netguard's timers use: the
    reactor, or a L{twisted.internet.task.Clock} in tests.
    """

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> DelayedCall: ...


class RelayTransport(Protocol):
    """
    What a splice uses of each side's transport (an L{ITCPTransport} or TLS transport, say).
    C{loseWriteConnection} and C{setTcpNoDelay} are used when the transport has them.
    """

    def write(self, data: bytes) -> None: ...

    def registerProducer(self, producer: object, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...


class HalfCloseableTransport(RelayTransport, Protocol):
    """
    A L{RelayTransport} that can close its write direction alone.
    """

    def loseWriteConnection(self) -> None: ...


#: How late, at most, an idle relay is ended after its C{idle_timeout} (seconds): the relays
#: of one clock share one timer, which checks them in steps of this size.
IDLE_GRANULARITY = 1.0


class IdleWatched(Protocol):
    """
    What L{IdleSweep} needs of a relay.

    @ivar idle_key: the sweep's bucket holding the relay (L{None} when not watched); set by
        the sweep only.
    """

    idle_key: int | None

    def idle_deadline(self) -> float:
        """
        @return: when the relay is idle for too long (clock seconds), from its last activity.
        """

    def idle_expired(self) -> None:
        """
        The deadline has passed without activity (the sweep has already forgotten the relay).
        """


class IdleSweep:
    """
    The idle timeouts of many relays on one clock with one timer, instead of one
    L{DelayedCall} per relay (about 400 bytes each, and a heap operation per reset).

    A relay records its own last activity (a float store per chunk, no timer touched); the
    sweep keeps relays in buckets of L{IDLE_GRANULARITY} seconds by deadline and wakes at the
    earliest bucket. There, a relay whose deadline has passed is told so; one that was active
    since moves to the bucket of its new deadline. So a relay is ended no earlier than its
    deadline and at most C{granularity} seconds after it (when the reactor is on time), and
    the work is one check per relay per C{idle_timeout} of activity, whatever the traffic.

    One sweep serves every relay of a clock (L{for_clock}); with no relay watched it holds no
    timer.
    """

    __slots__ = (
        "clock",
        "granularity",
        "_buckets",
        "_keys",
        "_timer",
        "_timer_key",
        "_sweeping",
        "__weakref__",
    )

    #: One sweep per clock, forgotten with the clock.
    _by_clock: ClassVar[weakref.WeakKeyDictionary[object, IdleSweep]] = weakref.WeakKeyDictionary()

    def __init__(self, clock: ReactorTime, granularity: float = IDLE_GRANULARITY):
        """
        @param clock: the clock of every relay it watches.
        @param granularity: the width of a bucket (seconds): how late a relay may be ended.
        """
        self.clock = clock
        self.granularity = granularity
        self._buckets: dict[int, set[IdleWatched]] = {}
        self._keys: list[int] = []  # a heap of bucket keys; may hold keys of emptied buckets
        self._timer: DelayedCall | None = None
        self._timer_key = 0
        self._sweeping = False

    @classmethod
    def for_clock(cls, clock: ReactorTime) -> IdleSweep:
        """
        @return: the sweep shared by every relay of C{clock} (a new one for a clock that
            cannot be weakly referenced).
        """
        try:
            sweep = cls._by_clock.get(clock)
        except TypeError:
            return cls(clock)
        if sweep is None:
            sweep = cls._by_clock[clock] = cls(clock)
        return sweep

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def add(self, relay: IdleWatched) -> None:
        """
        Watch C{relay} until L{remove} or its expiry.
        """
        self._place(relay, math.ceil(relay.idle_deadline() / self.granularity))

    def remove(self, relay: IdleWatched) -> None:
        """
        Stop watching C{relay} (nothing happens if it is not watched).
        """
        key = relay.idle_key
        if key is None:
            return
        relay.idle_key = None
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.discard(relay)
            if not bucket:
                del self._buckets[key]
                if not self._sweeping and len(self._keys) > 2 * len(self._buckets) + 16:
                    self._keys = list(self._buckets)
                    heapq.heapify(self._keys)
        if not self._buckets and self._timer is not None and not self._sweeping:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
            self._keys.clear()

    def _place(self, relay: IdleWatched, key: int) -> None:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            heapq.heappush(self._keys, key)
        bucket.add(relay)
        relay.idle_key = key
        if self._sweeping:
            return  # the sweep arms its timer when it is done
        if self._timer is None:
            self._arm(key)
        elif key < self._timer_key:
            self._timer.reset(max(0.0, key * self.granularity - self.clock.seconds()))
            self._timer_key = key

    def _arm(self, key: int) -> None:
        self._timer_key = key
        delay = max(0.0, key * self.granularity - self.clock.seconds())
        self._timer = self.clock.callLater(delay, self._sweep)

    def _sweep(self) -> None:
        """
        The earliest bucket is due: end the relays whose deadline has passed, move the others
        to the bucket of their new deadline, and wake again for the next bucket.
        """
        self._timer = None
        now = self.clock.seconds()
        due = max(self._timer_key, math.floor(now / self.granularity))
        keys = self._keys
        self._sweeping = True
        try:
            while keys and keys[0] <= due:
                key = heapq.heappop(keys)
                for relay in list(self._buckets.pop(key, ())):
                    if relay.idle_key != key:
                        continue  # no longer watched (ended by a relay expired before it)
                    relay.idle_key = None
                    deadline = relay.idle_deadline()
                    if deadline <= now:
                        relay.idle_expired()
                    else:
                        self._place(relay, max(math.ceil(deadline / self.granularity), due + 1))
        finally:
            self._sweeping = False
        while keys and keys[0] not in self._buckets:
            heapq.heappop(keys)
        if keys:
            self._arm(keys[0])
        else:
            keys.clear()


def send_at_once(transport: object) -> None:
    """
    Set TCP_NODELAY on C{transport} where it has it: Nagle's algorithm plus delayed ACKs
    holds relayed request/response traffic (or a multiplexed session's small frames) up to
    40 ms per exchange; every byte should go as soon as it is read. A transport without TCP
    (AF_UNIX, possibly under a TLS wrapper) is left as it is.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass  # not a TCP socket after all


@attrs.frozen
class RelayResult:
    """
    What a finished relay did.

    @ivar bytes_a_to_b: bytes read from side A and written to side B.
    @ivar bytes_b_to_a: bytes read from side B and written to side A.
    @ivar duration: seconds from L{Splice.start} to the end.
    @ivar ended_by: what ended it: C{"a"} or C{"b"} (that side ended its sending first, by
        EOF or by closing), C{"idle"}, C{"stalled-a"} or C{"stalled-b"} (that side stopped
        reading), or a reason given to L{Splice.abort}.
    """

    bytes_a_to_b: int
    bytes_b_to_a: int
    duration: float
    ended_by: str


@implementer(IPushProducer)
class _Valve:
    """
    One side of a splice: its transport, what it has done (bytes read, EOF, gone), and the
    producer registered on its transport, which pauses reading on the other side while this
    side's write queue is full and reports a stall that lasts too long.

    Plain slots, no per-side dicts: an idle relay holds two of these and one L{Splice}.

    @ivar side: L{A} or L{B}.
    @ivar transport: this side's transport.
    @ivar other: the other side's valve.
    @ivar count: bytes read from this side so far.
    @ivar eof: whether this side has sent EOF.
    @ivar gone: whether this side's connection is lost.
    @ivar paused: whether this side's transport last said its queue is full.
    @ivar registered: whether this valve is registered on the transport.
    @ivar half_close_pending: whether a half-close waits for this side's queue to drain.
    @ivar direct: whether bytes for this side are sent at once (L{write_now}: a plain socket).
    """

    __slots__ = (
        "splice",
        "side",
        "transport",
        "other",
        "count",
        "eof",
        "gone",
        "paused",
        "registered",
        "half_close_pending",
        "direct",
        "_stall",
    )

    def __init__(self, splice: Splice, side: str, transport: RelayTransport):
        self.splice = splice
        self.side = side
        self.transport = transport
        self.other: _Valve = self
        self.count = 0
        self.eof = False
        self.gone = False
        self.paused = False
        self.registered = False
        self.half_close_pending = False
        self.direct = False
        self._stall: DelayedCall | None = None

    def pauseProducing(self) -> None:
        """
        This side's queue is above its high-water mark: stop reading the other side. Called
        again on each write while the queue stays full; the pause is re-asserted each time,
        the stall timer started only once.
        """
        splice = self.splice
        source = self.other
        if not (source.gone or source.eof or splice.closing):
            source.transport.pauseProducing()
        if self.paused:
            return
        self.paused = True
        if not splice.closing:
            self._stall = splice.clock.callLater(splice.write_timeout, splice._stalled, self)

    def resumeProducing(self) -> None:
        """
        This side's queue has drained: read the other side again (or perform the half-close
        that was waiting for the drain).
        """
        if not self.paused:
            return
        self.paused = False
        self.cancel()
        self.splice._drained(self)

    def stopProducing(self) -> None:
        """
        The transport is gone.
        """
        self.cancel()

    def cancel(self) -> None:
        """
        Cancel the stall timer, if any.
        """
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None


class Splice:
    """
    Relay bytes between transports C{a} and C{b}, in the order they were read, once each:
    nothing is buffered here.

    The splice does not own either protocol: the two protocols call L{data_from},
    L{eof_from} and L{lost} as their own events arrive, and the splice writes to the other
    transport. Backpressure is Twisted's producer/consumer protocol, crosswise: each
    transport has, as its streaming producer, a L{_Valve} that pauses reading on the other
    side while this side's write queue is above its high-water mark. So the bytes queued in
    our process per direction stay within one high-water mark plus one read, whatever the two
    peers do, and a 256 MiB download to a slow reader costs no more memory than a 64 KiB one.

    The pause is re-asserted each time the transport reports its queue still full (Twisted's
    transports do so on every write above the mark), so code that resumes a transport
    without knowing about the splice (a session handing its connection over, say) lets
    through at most one more read before backpressure holds again. Code that wants reading
    resumed on a side should call L{resume_reading}, which respects backpressure.

    Half-close: when one side sends EOF, the other side's write direction is closed once
    what is queued for it has been written (C{loseWriteConnection}; on Twisted's own TLS
    transport, which has no half-close, C{loseConnection}: close_notify, after which the peer
    may still send until its own close_notify). Twisted's transports do not perform a
    pending half-close while a paused streaming producer is registered, so the splice waits
    for that side's queue to drain (its valve resumed), unregisters the valve and then
    half-closes.

    Bounds:
      - C{idle_timeout}: no byte either way for that long ends the relay
        (C{ended_by="idle"}), within L{IDLE_GRANULARITY} after the bound (the relays of a
        clock share one L{IdleSweep});
      - C{write_timeout}: a side that leaves its write queue full (its peer stopped reading)
        for that long is a stalled reader: both sides are aborted (C{ended_by="stalled-a"}
        or C{"stalled-b"});
      - once one side is gone, or both have sent EOF, what remains gets C{write_timeout} to
        take what is queued for it, then is aborted.

    Memory: an idle relay holds this object, its two L{_Valve}s (slots only) and its place
    in the clock's L{IdleSweep} (no timer of its own); the stall and grace timers exist only
    while they run.

    @ivar done: fires once with a L{RelayResult} when both sides are gone.
    @ivar ended_by: see L{RelayResult.ended_by}; L{None} while the relay runs.
    @ivar closing: whether the relay is closing both sides (nothing more is relayed).
    """

    __slots__ = (
        "clock",
        "idle_timeout",
        "write_timeout",
        "done",
        "ended_by",
        "closing",
        "_a",
        "_b",
        "_first_eof",
        "_sweep",
        "_last",
        "idle_key",
        "_grace",
        "_started",
    )

    def __init__(
        self,
        a: RelayTransport,
        b: RelayTransport,
        *,
        clock: ReactorTime,
        idle_timeout: float = 3600.0,
        write_timeout: float = 30.0,
        done: Deferred[RelayResult] | None = None,
        idle_sweep: IdleSweep | None = None,
    ):
        """
        @param a: side A's transport.
        @param b: side B's transport.
        @param clock: the L{IReactorTime} for every timer.
        @param idle_timeout: seconds without a byte either way before the relay is aborted.
        @param write_timeout: seconds a side may leave its write queue full; also the time
            left to the remaining side to flush once the relay is closing.
        @param done: the L{Deferred} to fire as L{done} (one the caller already hands out,
            so that it need not be chained to a new one); a new one by default.
        @param idle_sweep: the L{IdleSweep} that times C{idle_timeout}; by default the one
            shared by every relay of C{clock}.
        """
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.done: Deferred[RelayResult] = Deferred() if done is None else done
        self.ended_by: str | None = None
        self.closing = False
        self._a = _Valve(self, A, a)
        self._b = _Valve(self, B, b)
        self._a.other, self._b.other = self._b, self._a
        self._first_eof: str | None = None
        self._sweep = IdleSweep.for_clock(clock) if idle_sweep is None else idle_sweep
        self._last = 0.0
        self.idle_key: int | None = None
        self._grace: DelayedCall | None = None
        self._started = 0.0

    @property
    def transports(self) -> dict[str, RelayTransport]:
        """
        Each side's transport (a new dict on each read).
        """
        return {A: self._a.transport, B: self._b.transport}

    @property
    def counts(self) -> dict[str, int]:
        """
        Bytes read per side so far (C{{"a": n, "b": m}}; a new dict on each read).
        """
        return {A: self._a.count, B: self._b.count}

    @property
    def eof(self) -> dict[str, bool]:
        """
        Per side, whether it has sent EOF (a new dict on each read).
        """
        return {A: self._a.eof, B: self._b.eof}

    @property
    def gone(self) -> dict[str, bool]:
        """
        Per side, whether its connection is lost (a new dict on each read).
        """
        return {A: self._a.gone, B: self._b.gone}

    def count(self, side: str) -> int:
        """
        @param side: L{A} or L{B}.
        @return: the bytes read from C{side} so far.
        """
        return self._side(side).count

    def _side(self, side: str) -> _Valve:
        return self._a if side == A else self._b

    def start(self) -> None:
        """
        Set TCP_NODELAY where the transports allow it, wire backpressure both ways and start
        the idle timer.
        """
        self._started = self.clock.seconds()
        for valve in (self._a, self._b):
            transport = valve.transport
            send_at_once(transport)
            valve.direct = plain_socket(transport)
            transport.registerProducer(valve, True)
            valve.registered = True
        self._last = self._started
        self._sweep.add(self)

    def data_from(self, side: str, data: bytes) -> None:
        """
        Side C{side} read C{data}: write it to the other side.

        @param side: L{A} or L{B}.
        @param data: the bytes read.
        """
        source = self._a if side == A else self._b
        target = source.other
        if target.gone or self.closing:
            return
        source.count += len(data)
        self._last = self.clock.seconds()
        if target.direct:
            write_now(target.transport, data)
        else:
            target.transport.write(data)

    def resume_reading(self, side: str) -> None:
        """
        Read side C{side} again after someone else paused it (e.g. while connecting), unless
        backpressure holds it (the other side's queue is full) or it has nothing more to give.

        @param side: L{A} or L{B}.
        """
        source = self._side(side)
        if source.other.paused or source.eof or source.gone:
            return
        if self.closing:
            return
        source.transport.resumeProducing()

    def eof_from(self, side: str) -> None:
        """
        Side C{side} will send no more (TCP half-close): pass the half-close on once what is
        queued for the other side is written; when both sides have sent EOF, close both.

        @param side: L{A} or L{B}.
        """
        source = self._side(side)
        if source.eof or source.gone:
            return
        source.eof = True
        if self._first_eof is None:
            self._first_eof = side
        target = source.other
        if target.gone or self.closing:
            return
        if target.eof:
            self._close_both()
            return
        if getattr(target.transport, "loseWriteConnection", None) is None:
            self._close_both()
            return
        if target.paused:
            # Twisted would not half-close while its paused producer is registered: wait for
            # the queue to drain (L{_drained}).
            target.half_close_pending = True
        else:
            self._half_close(target)

    def lost(self, side: str) -> None:
        """
        Side C{side}'s connection is gone: let the other side flush what is queued for it,
        then close it (abort after C{write_timeout}).

        @param side: L{A} or L{B}.
        """
        source = self._side(side)
        if source.gone:
            return
        source.gone = True
        source.registered = False  # a lost transport drops its producer itself
        if self.ended_by is None:
            self.ended_by = self._first_eof or side
        if source.other.gone:
            self._finish()
            return
        self._wind_down()

    def abort(self, reason: str) -> None:
        """
        End the relay at once, dropping what is queued both ways.

        @param reason: recorded as C{ended_by} unless something ended the relay already.
        """
        if self.ended_by is None:
            self.ended_by = reason
        self.closing = True
        self._cancel_timers()
        for valve in (self._a, self._b):
            if not valve.gone:
                valve.transport.abortConnection()

    # -- internals -----------------------------------------------------------------------

    def _unregister(self, valve: _Valve) -> None:
        """
        Take C{valve} off its transport (so that a close or half-close it was asked for is
        not held back by a paused producer).
        """
        if valve.registered:
            valve.registered = False
            valve.cancel()
            valve.transport.unregisterProducer()

    def _half_close(self, valve: _Valve) -> None:
        valve.half_close_pending = False
        self._unregister(valve)
        transport = valve.transport
        if isinstance(transport, TLSMemoryBIOProtocol):
            # Twisted's TLS has no half-close, and its loseWriteConnection is the TCP one
            # underneath, which cuts the TLS stream mid-session (the peer answers with an
            # alert). Its loseConnection sends close_notify and still delivers what the peer
            # sends until the peer's own close_notify: the TLS form of a half-close.
            transport.loseConnection()
        else:
            cast(HalfCloseableTransport, transport).loseWriteConnection()

    def _drained(self, valve: _Valve) -> None:
        """
        C{valve}'s side has drained its write queue.
        """
        source = valve.other
        if self.closing or valve.gone:
            return
        if valve.half_close_pending:
            self._half_close(valve)
        elif not (source.eof or source.gone):
            source.transport.resumeProducing()

    def _close_both(self) -> None:
        """
        Both sides sent EOF: close both once flushed.
        """
        self._wind_down()

    def _wind_down(self) -> None:
        """
        Close every side that is still there once what is queued for it is written; abort
        what is left after C{write_timeout}.
        """
        self.closing = True
        self._cancel_timers()
        for valve in (self._a, self._b):
            if not valve.gone:
                self._unregister(valve)
                valve.transport.loseConnection()
        if self._grace is None and not (self._a.gone and self._b.gone):
            # (a transport may report its loss at once: the relay may have finished above)
            self._grace = self.clock.callLater(self.write_timeout, self._grace_expired)

    def _cancel_timers(self) -> None:
        self._sweep.remove(self)
        self._a.cancel()
        self._b.cancel()

    def idle_deadline(self) -> float:
        """
        @return: when the relay has been idle for C{idle_timeout} (L{IdleWatched}).
        """
        return self._last + self.idle_timeout

    def idle_expired(self) -> None:
        """
        No byte either way for C{idle_timeout}: end the relay (L{IdleWatched}).
        """
        self.abort("idle")

    def _stalled(self, valve: _Valve) -> None:
        valve._stall = None
        self.abort(f"stalled-{valve.side}")

    def _grace_expired(self) -> None:
        self._grace = None
        for valve in (self._a, self._b):
            if not valve.gone:
                valve.transport.abortConnection()

    def _finish(self) -> None:
        self.closing = True
        self._cancel_timers()
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        if not self.done.called:
            self.done.callback(
                RelayResult(
                    bytes_a_to_b=self._a.count,
                    bytes_b_to_a=self._b.count,
                    duration=self.clock.seconds() - self._started,
                    ended_by=self.ended_by or A,
                )
            )

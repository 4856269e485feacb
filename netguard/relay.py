# -*- test-case-name: tests.test_relay -*-
"""
A two-way byte relay between two connected transports, with backpressure, half-close,
accounting and time bounds. Shared by the gateway (client <-> backend) and the tunnel
(local program <-> gateway).

L{Splice} does not own either protocol: the two protocols call L{Splice.data_from},
L{Splice.eof_from} and L{Splice.lost} as their own events arrive, and the splice writes to the
other transport. Backpressure is Twisted's producer/consumer protocol, crosswise: each
transport has, as its streaming producer, a L{_Valve} that pauses reading on the other side
while this side's write queue is above its high-water mark. So the bytes queued in our
process per direction stay within one high-water mark plus one read, whatever the two peers
do, and a 256 MiB download to a slow reader costs no more memory than a 64 KiB one.

Bounds:
  - C{idle_timeout}: no byte either way for that long ends the relay;
  - C{write_timeout}: a side that leaves its write queue full (its peer stopped reading) for
    that long is a stalled reader: both sides are aborted;
  - after one side is gone the other gets C{write_timeout} to take what is queued for it.

Bytes are written in the order they were read, once each: nothing is buffered here.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

A, B = "a", "b"


def _other(side: str) -> str:
    return B if side == A else A


@attrs.frozen
class RelayResult:
    """
    What a finished relay did.

    @ivar bytes_a_to_b: bytes read from side A and written to side B.
    @ivar bytes_b_to_a: bytes read from side B and written to side A.
    @ivar duration: seconds from L{Splice.start} to the end.
    @ivar ended_by: what ended it: C{"a"} or C{"b"} (that side closed first), C{"idle"},
        C{"stalled-a"} or C{"stalled-b"} (that side stopped reading).
    """

    bytes_a_to_b: int
    bytes_b_to_a: int
    duration: float
    ended_by: str


@implementer(IPushProducer)
class _Valve:
    """
    The producer registered on one side's transport: it pauses reading on the other side
    while this side's write queue is full, and reports a stall that lasts too long.
    """

    def __init__(self, splice: Splice, side: str):
        self.splice = splice
        self.side = side
        self.paused = False
        self._stall: Any = None

    def pauseProducing(self) -> None:
        if self.paused:
            return
        self.paused = True
        self.splice.transports[_other(self.side)].pauseProducing()
        self._stall = self.splice.clock.callLater(
            self.splice.write_timeout, self.splice._stalled, self.side
        )

    def resumeProducing(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self.cancel()
        if not self.splice.eof[_other(self.side)]:
            self.splice.transports[_other(self.side)].resumeProducing()

    def stopProducing(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None


class Splice:
    """
    Relay bytes between transports C{a} and C{b}; see the module docstring.

    @ivar done: fires once with a L{RelayResult} when both sides are gone.
    @ivar counts: bytes read per side so far (C{{"a": n, "b": m}}).
    """

    def __init__(
        self,
        a: Any,
        b: Any,
        *,
        clock: Any,
        idle_timeout: float = 3600.0,
        write_timeout: float = 30.0,
    ):
        self.transports = {A: a, B: b}
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.counts = {A: 0, B: 0}
        self.eof = {A: False, B: False}
        self.gone = {A: False, B: False}
        self.done: Deferred[RelayResult] = Deferred()
        self.ended_by: str | None = None
        self._valves = {A: _Valve(self, A), B: _Valve(self, B)}
        self._idle: Any = None
        self._grace: Any = None
        self._started = 0.0

    def start(self) -> None:
        """
        Wire backpressure both ways and start the idle timer.
        """
        self._started = self.clock.seconds()
        for side in (A, B):
            transport = self.transports[side]
            # Nagle's algorithm plus delayed ACKs stalls relayed request/response traffic
            # by up to 40 ms per exchange: relay every byte as soon as it is read.
            set_no_delay = getattr(transport, "setTcpNoDelay", None)
            if set_no_delay is not None:
                try:
                    set_no_delay(True)
                except OSError:
                    pass  # not a TCP socket after all (e.g. AF_UNIX under a TLS wrapper)
            transport.registerProducer(self._valves[side], True)
        self._idle = self.clock.callLater(self.idle_timeout, self._idle_expired)

    def data_from(self, side: str, data: bytes) -> None:
        """
        Side C{side} read C{data}: write it to the other side.
        """
        if self.gone[_other(side)]:
            return
        self.counts[side] += len(data)
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.idle_timeout)
        self.transports[_other(side)].write(data)

    def eof_from(self, side: str) -> None:
        """
        Side C{side} will send no more (TCP half-close): pass the half-close on.
        """
        if self.eof[side]:
            return
        self.eof[side] = True
        other = self.transports[_other(side)]
        if self.eof[_other(side)]:
            self._close_both(side)
            return
        lose_write = getattr(other, "loseWriteConnection", None)
        if lose_write is None:
            self._close_both(side)
        else:
            lose_write()

    def lost(self, side: str) -> None:
        """
        Side C{side}'s connection is gone: let the other side flush what is queued for it,
        then close it (abort after C{write_timeout}).
        """
        if self.gone[side]:
            return
        self.gone[side] = True
        self._valves[side].cancel()
        if self.ended_by is None:
            self.ended_by = side
        other = _other(side)
        if self.gone[other]:
            self._finish()
            return
        transport = self.transports[other]
        if getattr(transport, "producer", None) is self._valves[other]:
            transport.unregisterProducer()
        transport.loseConnection()
        self._grace = self.clock.callLater(self.write_timeout, self._abort, other)

    def abort(self, reason: str) -> None:
        """
        End the relay at once, dropping what is queued both ways.

        @param reason: recorded as C{ended_by} unless something ended the relay already.
        """
        if self.ended_by is None:
            self.ended_by = reason
        for side in (A, B):
            if not self.gone[side]:
                self.transports[side].abortConnection()

    # -- internals -----------------------------------------------------------------------

    def _close_both(self, first: str) -> None:
        if self.ended_by is None:
            self.ended_by = first
        for side in (A, B):
            if not self.gone[side]:
                transport = self.transports[side]
                if getattr(transport, "producer", None) is self._valves[side]:
                    transport.unregisterProducer()
                transport.loseConnection()

    def _idle_expired(self) -> None:
        self._idle = None
        self.ended_by = "idle"
        self.abort("idle")

    def _stalled(self, side: str) -> None:
        self.ended_by = f"stalled-{side}"
        self.abort(self.ended_by)

    def _abort(self, side: str) -> None:
        self._grace = None
        if not self.gone[side]:
            self.transports[side].abortConnection()

    def _finish(self) -> None:
        for timer in (self._idle, self._grace):
            if timer is not None and timer.active():
                timer.cancel()
        self._idle = self._grace = None
        for valve in self._valves.values():
            valve.cancel()
        if not self.done.called:
            self.done.callback(
                RelayResult(
                    bytes_a_to_b=self.counts[A],
                    bytes_b_to_a=self.counts[B],
                    duration=self.clock.seconds() - self._started,
                    ended_by=self.ended_by or "a",
                )
            )

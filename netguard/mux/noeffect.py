# -*- test-case-name: tests.test_mux_session_hostile -*-
"""
A session's accounting of frames that change nothing: empty frames, repeated flags and
go-aways, and frames for streams that have ended. Each takes a token of C{empty_frame_rate},
so a peer cannot keep a session busy for free; data the peer may still send on a stream we
reset (L{DeadCredit}) is its right and is dropped without a token.

Kept apart from L{netguard.mux.session} so the flood rule reads in one place (see
C{docs/multiplexing.md} section 7, "Pings and empty frames").
"""

from __future__ import annotations

from netguard.mux import frames
from netguard.mux.credit import DeadCredit
from netguard.mux.frames import INITIAL_WINDOW, Flag, FrameError, FrameType, Violation
from netguard.mux.limits import MuxLimits, TokenBucket
from netguard.mux.stream import MuxStream
from netguard.relay import ReactorTime

__all__ = ["NoEffectFrames", "has_effect"]

#: The flags as plain ints, for the per-frame path (IntFlag operations cost more).
_ACK, _FIN, _RST = int(Flag.ACK), int(Flag.FIN), int(Flag.RST)

#: Dropped data (for a stream that has ended) takes one more token of C{empty_frame_rate}
#: per this many bytes.
_DROP_UNIT = 16 * 1024


def has_effect(stream: MuxStream, flags: int) -> bool:
    """
    Whether a frame without payload or window, on a live stream, changes anything: an
    RST, the first ACK of a stream we opened, the first FIN.
    """
    if flags & _RST:
        return True
    if flags & _ACK and stream.outbound and not stream.acked:
        return True
    return bool(flags & _FIN) and not stream.remote_fin


class NoEffectFrames:
    """
    The C{empty_frame_rate} bucket of one session, and what it lets through for streams
    that have ended.

    @ivar dead: the credit the peer still holds on streams we reset.
    """

    __slots__ = ("dead", "_bucket", "_clock")

    def __init__(
        self, limits: MuxLimits, clock: ReactorTime, now: float, dead: DeadCredit
    ) -> None:
        """
        @param limits: the session's bounds (C{empty_frame_rate}, C{empty_frame_burst}).
        @param clock: the session's clock.
        @param now: the session's start, when the bucket is full.
        @param dead: the session's dead credit, which L{drop} spends.
        """
        self._clock = clock
        self._bucket = TokenBucket(limits.empty_frame_rate, limits.empty_frame_burst, now)
        self.dead = dead

    def dead_window(self, stream_id: int) -> int:
        """
        @return: the longest data frame allowed on a stream that has ended (or was never
            seen): 256 KiB, or the credit the peer still holds on it if more.
        """
        return max(INITIAL_WINDOW, self.dead.allowed(stream_id))

    def count(self, kind: FrameType = FrameType.DATA, length: int = 0) -> None:
        """
        Count a frame that changes nothing (an empty frame, a repeated flag or go-away, an
        RST or data for a stream that has ended) against C{empty_frame_rate}; dropped data
        takes one more token per 16 KiB. A window update for a stream that has
        ended is a normal race (the peer read our last data after our FIN closed the
        stream) and is not counted.

        @raise FrameError: one past an empty bucket.
        """
        if kind is FrameType.WINDOW_UPDATE and length:
            return
        count = 1 + (length // _DROP_UNIT if kind is FrameType.DATA else 0)
        if not self._bucket.take(self._clock.seconds(), count):
            raise FrameError(Violation.EMPTY_FRAME_FLOOD)

    def drop(self, header: frames.Header) -> None:
        """
        Drop a frame for a stream that has ended. Data within the credit the peer held
        when we reset the stream (L{DeadCredit}) was its right and is not counted; what is
        beyond it counts as L{count}.

        @raise FrameError: one past an empty bucket.
        """
        length = header.length
        if header.type is FrameType.DATA and length:
            length = self.dead.spend(header.stream_id, length)
            if not length:
                return
        if header.flags & (_FIN | _RST):
            self.dead.forget(header.stream_id)
        self.count(header.type, length)

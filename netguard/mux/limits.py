# -*- test-case-name: tests.test_mux_session -*-
"""
The bounds of a multiplexed session, and the token bucket that enforces its rates.
"""

from __future__ import annotations

from typing import Any

import attrs

from netguard.mux.frames import INITIAL_WINDOW, MAX_UINT32


def positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """
    An attrs validator: the value must be above zero.
    """
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def _positive_or_none(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        positive(instance, attribute, value)


@attrs.frozen
class MuxLimits:
    """
    Every bound of a L{netguard.mux.session.MuxSession}, with its default.

    @ivar max_streams: streams open at once (either side's); a peer's SYN past it is reset.
        A stream the peer opened counts until the application releases it, not until the
        peer resets it.
    @ivar open_rate: stream openings per second the peer may sustain (token bucket).
    @ivar open_burst: openings the peer may make at once; one past an empty bucket ends
        the session (C{open-rate}).
    @ivar early_reset_rate: per second, resets of streams the application has not yet
        accepted (rapid reset).
    @ivar early_reset_burst: such resets at once; one past an empty bucket ends the
        session (C{rapid-reset}).
    @ivar ping_rate: pings per second the peer may send (each answered).
    @ivar ping_burst: pings at once; one past an empty bucket ends the session.
    @ivar empty_frame_rate: per second, frames that carry nothing (no payload, no window, no
        flag).
    @ivar empty_frame_burst: such frames at once.
    @ivar memory_budget: bytes held for streams whose reading is paused, across the session,
        at which window updates are withheld (sent again once held bytes drain below it).
        Credit granted but unused (an idle stream's window) does not count. A window granted
        cannot be withdrawn, so the bytes the peer can make us hold are bounded by the
        windows, whatever this budget: at most C{max_window} per stream and
        C{max_streams * 256 KiB + window_budget} per session; the budget stops windows
        being granted again while much is held.
    @ivar max_window: the largest receive window of one stream. Every stream starts with
        the spec's 256 KiB; a stream whose protocol keeps reading (nothing held when its
        credit is given back) has its window doubled at each window update, up to this,
        as long as C{window_budget} allows. C{256 KiB} turns growth off.
    @ivar window_budget: the receive window grown past 256 KiB, summed over a session's
        streams, that the session may give; a stream's growth is returned to it when the
        stream ends.
    @ivar max_frame: the largest data payload this end sends in one frame (the unit of
        round-robin fairness).
    @ivar stream_high_water: bytes queued on one stream for sending past which its producer
        is paused; resumed when the queue is empty.
    @ivar max_control_backlog: control frames (window updates, ping answers, resets) held
        while the transport is paused; one more ends the session (C{peer-not-reading}).
    @ivar keepalive_interval: seconds between our pings; None for none.
    @ivar keepalive_timeout: seconds a ping may go unanswered before the session ends.
    @ivar idle_timeout: seconds with no stream open before the session ends with a normal
        go-away (C{idle}); None for never.
    @ivar open_timeout: seconds a stream we opened may wait for the peer's ACK before it is
        reset.
    @ivar close_timeout: seconds the peer may stay silent on a stream after we asked for our
        FIN (sent, or waiting for window) before the stream is reset; each frame the peer
        sends on the stream starts the wait again, and its own FIN ends it.
    @ivar linger_timeout: seconds the transport may take, after a session ends gracefully
        (go-away sent, connection closing), to deliver what was written before it is
        aborted (a peer that stopped reading cannot keep the connection).
    """

    max_streams: int = attrs.field(default=256, validator=positive)
    open_rate: float = attrs.field(default=1000.0, validator=positive)
    open_burst: int = attrs.field(default=512, validator=positive)
    early_reset_rate: float = attrs.field(default=10.0, validator=positive)
    early_reset_burst: int = attrs.field(default=100, validator=positive)
    ping_rate: float = attrs.field(default=5.0, validator=positive)
    ping_burst: int = attrs.field(default=20, validator=positive)
    empty_frame_rate: float = attrs.field(default=100.0, validator=positive)
    empty_frame_burst: int = attrs.field(default=1000, validator=positive)
    memory_budget: int = attrs.field(default=16 * 1024 * 1024, validator=positive)
    max_window: int = attrs.field(default=4 * 1024 * 1024)
    window_budget: int = attrs.field(default=16 * 1024 * 1024)
    max_frame: int = attrs.field(default=64 * 1024, validator=positive)
    stream_high_water: int = attrs.field(default=64 * 1024, validator=positive)
    max_control_backlog: int = attrs.field(default=1024, validator=positive)
    keepalive_interval: float | None = attrs.field(default=30.0, validator=_positive_or_none)
    keepalive_timeout: float = attrs.field(default=10.0, validator=positive)
    idle_timeout: float | None = attrs.field(default=None, validator=_positive_or_none)
    open_timeout: float = attrs.field(default=75.0, validator=positive)
    close_timeout: float = attrs.field(default=300.0, validator=positive)
    linger_timeout: float = attrs.field(default=30.0, validator=positive)

    @max_window.validator
    def _window_in_range(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not INITIAL_WINDOW <= value <= MAX_UINT32:
            raise ValueError(f"max_window must be within {INITIAL_WINDOW}..{MAX_UINT32}")

    @window_budget.validator
    def _budget_not_negative(self, attribute: attrs.Attribute[int], value: int) -> None:
        if value < 0:
            raise ValueError(f"window_budget must not be negative, not {value!r}")

    @max_frame.validator
    def _frame_fits(self, attribute: attrs.Attribute[int], value: int) -> None:
        if value > INITIAL_WINDOW:
            raise ValueError(f"max_frame must be at most {INITIAL_WINDOW}")


class TokenBucket:
    """
    A token bucket on an injected clock: C{burst} tokens, refilled at C{rate} per second.
    """

    __slots__ = ("_rate", "_burst", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        """
        @param rate: tokens added per second.
        @param burst: the most tokens held (the bucket starts full).
        @param now: the clock's time now.
        """
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float, count: int = 1) -> bool:
        """
        Take C{count} tokens.

        @param now: the clock's time now.
        @param count: tokens to take (at least 1).
        @return: False if the bucket held fewer (nothing taken).
        """
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        if self._tokens < count:
            return False
        self._tokens -= count
        return True

# -*- test-case-name: tests.test_gateway_streams -*-
"""
The bounds of the streams of multiplexed sessions (C{[mux]} in the configuration).
"""

from __future__ import annotations

import attrs

from netguard.mux.limits import MuxLimits, positive


def open_rate_text(rate: float) -> str:
    """
    @param rate: stream openings per second.
    @return: the rate as C{OPENRATE=} states it: a whole number without a fraction
        (C{"1000"}), otherwise the shortest decimal that reads back as C{rate} (C{"2.5"});
        never an exponent for the configurable range.
    """
    return str(int(rate)) if float(rate).is_integer() else repr(float(rate))


#: The framing's own fields: the C{[mux]} keys that set one of them default to its default.
_FRAMING = attrs.fields(MuxLimits)


@attrs.frozen
class StreamSettings:
    """
    The bounds of the streams of multiplexed sessions, besides the framing's own
    (L{MuxLimits}).

    @ivar max_streams: streams open at once in one session; a SYN past it is reset.
    @ivar max_per_user: streams of one user open at once across every session; the one past
        it is refused C{ERR BUSY stream-cap-user}.
    @ivar max_per_service: streams of one service open at once across every session; the one
        past it is refused C{ERR BUSY stream-cap-service}.
    @ivar open_timeout: seconds from a stream's SYN to its complete C{OPEN} line; past it the
        stream is refused C{ERR TIMEOUT open deadline}.
    @ivar keepalive_interval: seconds between the gateway's pings on a session.
    @ivar keepalive_timeout: seconds a ping may go unanswered before the session ends.
    @ivar open_rate: stream openings per second one session may sustain; a client opening
        faster (past C{open_burst} at once) ends its session (C{open-rate}). Announced in
        C{OK MUX} (C{OPENRATE=}) so that clients pace themselves below it.
    @ivar open_burst: stream openings one session may make at once.
    """

    max_streams: int = attrs.field(default=_FRAMING.max_streams.default, validator=positive)
    max_per_user: int = attrs.field(default=1024, validator=positive)
    max_per_service: int = attrs.field(default=4096, validator=positive)
    open_timeout: float = attrs.field(default=10.0, validator=positive)
    keepalive_interval: float = attrs.field(
        default=_FRAMING.keepalive_interval.default, validator=positive
    )
    keepalive_timeout: float = attrs.field(
        default=_FRAMING.keepalive_timeout.default, validator=positive
    )
    open_rate: float = attrs.field(default=_FRAMING.open_rate.default, validator=positive)
    open_burst: int = attrs.field(default=_FRAMING.open_burst.default, validator=positive)

    def mux_limits(self, idle_timeout: float | None) -> MuxLimits:
        """
        @param idle_timeout: seconds a session with no stream open may live.
        @return: the framing's bounds for a session.
        """
        return MuxLimits(
            max_streams=self.max_streams,
            open_rate=self.open_rate,
            open_burst=self.open_burst,
            keepalive_interval=self.keepalive_interval,
            keepalive_timeout=self.keepalive_timeout,
            idle_timeout=idle_timeout,
        )

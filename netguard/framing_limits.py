# -*- test-case-name: tests.test_framing_limits -*-
"""
L{FramingLimits}: every bound of L{netguard.framing.GuardedLineReceiver}, one frozen value,
each field checked when the value is built.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import attrs

__all__ = ["DEFAULT_MAX_ERRORS", "FramingLimits"]

#: Error replies that keep the connection allowed on one connection, by default.
DEFAULT_MAX_ERRORS = 10


def _count(low: int, optional: bool = False) -> Any:
    """
    A validator: an C{int} (never a C{bool}) of at least C{low}, or L{None} if C{optional}.
    """

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            none = " or None" if optional else ""
            raise ValueError(
                f"FramingLimits.{attribute.name} must be an integer of at least {low}{none}, "
                f"got {value!r}"
            )

    return check


def _seconds(positive: bool, optional: bool = False) -> Any:
    """
    A validator: a finite number of seconds (an C{int} or C{float}, never a C{bool}), above
    zero if C{positive}, else zero or more; or L{None} if C{optional}.
    """

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (isinstance(value, float) and not math.isfinite(value))
            or value < 0
            or value > sys.float_info.max
            or (positive and value == 0)
        ):
            bound = "greater than 0" if positive else "of 0 or more"
            none = " or None" if optional else ""
            raise ValueError(
                f"FramingLimits.{attribute.name} must be a finite number of seconds {bound}"
                f"{none}, got {value!r}"
            )

    return check


@attrs.frozen
class FramingLimits:
    """
    Every bound L{GuardedLineReceiver<netguard.framing.GuardedLineReceiver>} enforces. Times
    are in seconds.

    Each field is checked when the value is built (L{attrs.evolve} included): a count is an
    C{int}, a time a finite C{int} or C{float}; anything else raises L{ValueError} naming the
    field. These are the framing's own sanity bounds; the gateway's configuration keys have
    narrower ranges of their own (C{netguard check-config --defaults}).

    @ivar max_line_length: longest accepted line, without its terminator (1 or more).
    @ivar max_lines_before_auth: lines accepted before
        L{GuardedLineReceiver.end_handshake<netguard.framing.GuardedLineReceiver.end_handshake>}
        (0 or more).
    @ivar max_bytes_before_auth: bytes accepted before C{end_handshake}, in line mode and in
        raw mode alike (0 or more).
    @ivar greeting_delay: silence we keep before greeting; a client that talks during it is an
        early talker. C{0} greets at once (and then cannot detect early talkers).
    @ivar handshake_timeout: time from connection to the end of the handshake (C{0}: none at
        all, as a timeout scaled down under stress may become).
    @ivar idle_timeout: longest silence from the peer (C{0} as for C{handshake_timeout}).
    @ivar write_timeout: longest time the peer may leave our output queue full, and the
        longest a final error line may wait to be read; above 0.
    @ivar max_lines_after_auth: lines accepted after the handshake while still in line mode;
        L{None}: no bound.
    @ivar max_bytes_after_auth: bytes of lines (terminators included) accepted after the
        handshake while still in line mode; L{None}: no bound.
    @ivar max_errors: error replies that keep the connection (C{refuse(close=False)}) sent
        on one connection; the next one closes it. L{None}: no bound.
    @ivar open_timeout: time from the end of the handshake to raw mode (in NGP/1: from login
        to C{OPEN}); L{None}: no bound.
    """

    max_line_length: int = attrs.field(default=1024, validator=_count(1))
    max_lines_before_auth: int = attrs.field(default=16, validator=_count(0))
    max_bytes_before_auth: int = attrs.field(default=8192, validator=_count(0))
    greeting_delay: float = attrs.field(default=0.1, validator=_seconds(positive=False))
    handshake_timeout: float = attrs.field(default=30.0, validator=_seconds(positive=False))
    idle_timeout: float = attrs.field(default=120.0, validator=_seconds(positive=False))
    write_timeout: float = attrs.field(default=30.0, validator=_seconds(positive=True))
    max_lines_after_auth: int | None = attrs.field(default=None, validator=_count(0, True))
    max_bytes_after_auth: int | None = attrs.field(default=None, validator=_count(0, True))
    max_errors: int | None = attrs.field(
        default=DEFAULT_MAX_ERRORS, validator=_count(0, optional=True)
    )
    open_timeout: float | None = attrs.field(
        default=None, validator=_seconds(positive=False, optional=True)
    )

"""
Tests for L{netguard.framing_limits}: every field of L{FramingLimits} is checked when the
value is built, at its boundary and one past it.
"""

from __future__ import annotations

import math
import sys

import attrs
from twisted.trial import unittest

from netguard.client.protocol import CLIENT_LIMITS
from netguard.config import GATEWAY_LIMITS, ConfigError, load_config
from netguard.framing import FramingLimits as ReExported
from netguard.framing_limits import FramingLimits
from netguard.ops.control import CONTROL_LIMITS

_COUNTS = ("max_line_length", "max_lines_before_auth", "max_bytes_before_auth")
_OPTIONAL_COUNTS = ("max_lines_after_auth", "max_bytes_after_auth", "max_errors")
_TIMES = ("greeting_delay", "handshake_timeout", "idle_timeout")


class FramingLimitsValidationTests(unittest.TestCase):
    """
    A L{FramingLimits} that could never work (a negative count, a time that is negative,
    not finite, or zero where zero means nothing) is refused with a L{ValueError} naming its
    field, instead of failing later inside the reactor.
    """

    def assertRefused(self, **field: object) -> None:
        """
        Building a L{FramingLimits} with C{field} raises L{ValueError} naming the field,
        and so does L{attrs.evolve} of a valid one.
        """
        [(name, value)] = field.items()
        for build in (
            lambda: FramingLimits(**field),
            lambda: attrs.evolve(GATEWAY_LIMITS, **field),
        ):
            error = self.assertRaises(ValueError, build)
            self.assertIn(f"FramingLimits.{name} must be", str(error))
            self.assertIn(f"got {value!r}", str(error))

    def test_defaults_and_shipped_limits_are_valid(self) -> None:
        """
        The defaults and every limits value netguard ships build as before, and the framing
        module still exports the same class.
        """
        self.assertIs(ReExported, FramingLimits)
        for limits in (FramingLimits(), GATEWAY_LIMITS, CLIENT_LIMITS, CONTROL_LIMITS):
            self.assertEqual(attrs.evolve(limits), limits)

    def test_negative_write_timeout_refused(self) -> None:
        """
        A negative C{write_timeout}, which the reactor's C{callLater} would reject with an
        assertion when the peer first stopped reading, is refused when built.
        """
        self.assertRefused(write_timeout=-1.0)

    def test_write_timeout_zero_refused_and_just_above_accepted(self) -> None:
        """
        C{write_timeout} 0 (every final error line aborted before it can be read) is refused;
        the smallest positive time is accepted.
        """
        self.assertRefused(write_timeout=0)
        self.assertRefused(write_timeout=0.0)
        tiny = math.ulp(0.0)
        self.assertEqual(FramingLimits(write_timeout=tiny).write_timeout, tiny)

    def test_times_not_finite_refused(self) -> None:
        """
        NaN and infinity are refused for every time, the optional C{open_timeout} included.
        """
        for name in (*_TIMES, "write_timeout", "open_timeout"):
            for value in (math.nan, math.inf, -math.inf):
                self.assertRefused(**{name: value})

    def test_huge_integer_times_refused(self) -> None:
        """
        An integer too large for a float (one past the largest, C{2**1024}, or C{10**400})
        is refused for every time with the field-naming C{ValueError}, not an
        C{OverflowError}; the largest integer a float holds is accepted as given.
        """
        biggest = int(sys.float_info.max)
        for name in (*_TIMES, "write_timeout", "open_timeout"):
            for value in (2**1024, 10**400, 10**309):
                self.assertRefused(**{name: value})
            self.assertEqual(getattr(FramingLimits(**{name: biggest}), name), biggest)

    def test_times_zero_accepted_and_below_refused(self) -> None:
        """
        The times that may be zero (no greeting delay; a handshake, idle or open timeout
        scaled down to nothing under stress) accept 0 and refuse the next value below it.
        """
        for name in (*_TIMES, "open_timeout"):
            self.assertEqual(getattr(FramingLimits(**{name: 0}), name), 0)
            self.assertRefused(**{name: -math.ulp(0.0)})

    def test_open_timeout_none_accepted(self) -> None:
        """
        L{None} (no bound) stays allowed for C{open_timeout}, and only there among the times.
        """
        self.assertIsNone(FramingLimits(open_timeout=None).open_timeout)
        for name in (*_TIMES, "write_timeout"):
            self.assertRefused(**{name: None})

    def test_counts_at_their_lower_bound_and_one_below(self) -> None:
        """
        C{max_line_length} accepts 1 and refuses 0; every other count accepts 0 and refuses
        -1; the optional counts accept L{None}.
        """
        self.assertEqual(FramingLimits(max_line_length=1).max_line_length, 1)
        self.assertRefused(max_line_length=0)
        for name in (*_COUNTS[1:], *_OPTIONAL_COUNTS):
            self.assertEqual(getattr(FramingLimits(**{name: 0}), name), 0)
            self.assertRefused(**{name: -1})
        for name in _OPTIONAL_COUNTS:
            self.assertIsNone(getattr(FramingLimits(**{name: None}), name))

    def test_wrong_types_refused(self) -> None:
        """
        A count that is not an C{int} (a float, a string, a C{bool}) and a time that is not
        a number (a string, a C{bool}) are refused.
        """
        for name in (*_COUNTS, *_OPTIONAL_COUNTS):
            for value in (16.0, "16", True):
                self.assertRefused(**{name: value})
        for name in _COUNTS:
            self.assertRefused(**{name: None})
        for name in (*_TIMES, "write_timeout", "open_timeout"):
            for value in ("1", True):
                self.assertRefused(**{name: value})

    def test_int_times_accepted_as_given(self) -> None:
        """
        A time given as an C{int} is accepted and kept as given (C{handshake_timeout=30}, as
        the client's limits say).
        """
        limits = FramingLimits(handshake_timeout=30, write_timeout=1)
        self.assertEqual((limits.handshake_timeout, limits.write_timeout), (30, 1))

    def test_configuration_errors_unchanged(self) -> None:
        """
        The gateway's configuration keeps its own narrower ranges and messages: a negative
        C{limits.write_timeout} in a file is a L{ConfigError} naming the file and key, not
        this module's L{ValueError}.
        """
        path = self.mktemp()
        with open(path, "w") as config:
            config.write("[limits]\nwrite_timeout = -1\n")
        error = self.assertRaises(
            ConfigError,
            load_config,
            path,
            None,
            environ={"XDG_STATE_HOME": "/xdg", "HOME": "/home/u"},
            euid=1000,
        )
        self.assertEqual(error.key, "limits.write_timeout")
        self.assertIn("a number of seconds from 1 to 3600", error.message)

# -*- test-case-name: tests.test_metrics -*-
"""
The Prometheus text exposition format (version 0.0.4) netguard writes: a metric's families
and samples, names reduced to the allowed characters, label values and help texts escaped,
values written as the format wants them. C{docs/metrics.md}.
"""

from __future__ import annotations

import math
import re
from typing import Final

import attrs

#: Every metric name starts with this.
PREFIX: Final = "netguard_"

#: The longest metric name (before the prefix and suffix), in characters.
MAX_NAME_CHARS: Final = 100

_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")


@attrs.frozen
class Sample:
    """
    One line of the exposition: a value, with its labels.

    @ivar labels: (name, value) pairs, values unescaped.
    @ivar suffix: added to the family's name (C{_bucket}, C{_sum}, C{_count} of a
        histogram), else empty.
    """

    value: int | float | bool
    labels: tuple[tuple[str, str], ...] = ()
    suffix: str = ""


@attrs.frozen
class Family:
    """
    One metric: its full name, type (C{"counter"}, C{"gauge"} or C{"histogram"}), help text
    and samples.
    """

    name: str
    kind: str
    help: str
    samples: tuple[Sample, ...]


def escape_label_value(value: str) -> str:
    """
    Escape a label value as the text format requires: backslash, double quote and line feed
    become C{\\\\}, C{\\"} and C{\\n}.

    @param value: the raw value.
    @return: the text to put between the double quotes.
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """
    Escape a C{# HELP} text as the text format requires: backslash and line feed.

    @param text: the raw help text.
    @return: the escaped text.
    """
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def metric_name(name: str, suffix: str = "") -> str:
    """
    The metric name of a figure: C{netguard_} then the figure's name reduced to
    C{[a-zA-Z0-9_]} (at most L{MAX_NAME_CHARS} characters), then C{suffix}.

    @param name: the figure's name, e.g. C{"auth_ok"}.
    @param suffix: C{"_total"} for a counter, C{""} for a gauge.
    @return: a valid metric name, e.g. C{"netguard_auth_ok_total"}.
    """
    return PREFIX + (_NOT_NAME.sub("_", name[:MAX_NAME_CHARS]) or "_") + suffix


def format_value(value: int | float | bool) -> str:
    """
    A sample value as the text format writes it: integers exactly, booleans as 1 or 0,
    floats in Python's shortest form, C{NaN}, C{+Inf} and C{-Inf}.

    @param value: a number.
    @return: its text.
    """
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def family_text(family: Family) -> str:
    """
    The C{# HELP}, C{# TYPE} and sample lines of one family.
    """
    lines = [
        f"# HELP {family.name} {escape_help(family.help)}",
        f"# TYPE {family.name} {family.kind}",
    ]
    for sample in family.samples:
        labels = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in sample.labels)
        shown = f"{{{labels}}}" if labels else ""
        lines.append(f"{family.name}{sample.suffix}{shown} {format_value(sample.value)}")
    return "\n".join(lines) + "\n"

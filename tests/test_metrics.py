"""
Tests for L{netguard.ops.metrics}: the text exposition (names, types, labels and their
escaping, bounds), checked by a small strict parser of the format; the HTTP resource on
Twisted fakes (paths, methods, headers, request bounds, no access log); the listener service
(loopback only, once, stopped); and the C{ops.metrics_listen} configuration key.
"""

from __future__ import annotations

import math
import os
import re
import time
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from netguard.admission import REASONS, Admission, AdmissionPolicy
from netguard.auth.users import UserStore
from netguard.config import ConfigError, ServiceConfig, describe, describe_defaults, load_config
from netguard.gateway.factory import GatewayFactory
from netguard.ops.exposition import escape_help, escape_label_value, format_value, metric_name
from netguard.ops.metrics import (
    CONTENT_TYPE,
    MAX_BODY_BYTES,
    MAX_LABEL_CHARS,
    MAX_REQUEST_BODY_BYTES,
    MAX_SERIES,
    MetricsListenFailed,
    MetricsResource,
    MetricsService,
    build_info,
    is_loopback,
    metrics_factory,
    render_metrics,
)
from netguard.ops.metrics_connections import REQUEST_DEADLINE
from netguard.ops.process_metrics import process_figures
from netguard.service import GatewayService
from netguard.stats import SETUP_BUCKETS, Stats

# -- a strict parser of the text format (version 0.0.4), used here and by the integration test

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(
    rf"(?P<name>{_NAME})(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)?\}})? "
    r"(?P<value>[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|Inf|NaN))"
)
_ONE_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_HELP = re.compile(rf"# HELP (?P<name>{_NAME}) (?P<text>(?:[^\\\n]|\\[\\n])*)")
_TYPE = re.compile(rf"# TYPE (?P<name>{_NAME}) (?P<kind>counter|gauge|histogram)")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

Series = tuple[str, tuple[tuple[str, str], ...]]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def _family_of(name: str, types: dict[str, str]) -> tuple[str, str]:
    """
    The family a sample name belongs to, and its suffix (histograms: C{_bucket}, ...).
    """
    if name in types and types[name] != "histogram":
        return name, ""
    for suffix in _HISTOGRAM_SUFFIXES:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and types.get(base) == "histogram":
            return base, suffix
    raise ValueError(f"{name} has no TYPE before it")


def _check_histograms(values: dict[Series, float], types: dict[str, str]) -> None:
    """
    Each histogram series: C{le} bounds unique and increasing, cumulative counts that never
    go down, a C{+Inf} bucket equal to C{_count}, and a C{_sum}.
    """
    for family in (name for name, kind in types.items() if kind == "histogram"):
        buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        for (name, labels), value in values.items():
            if name == family + "_bucket":
                rest = tuple(label for label in labels if label[0] != "le")
                buckets.setdefault(rest, []).append((float(dict(labels)["le"]), value))
        for rest, pairs in buckets.items():
            bounds = [bound for bound, _ in pairs]
            if len(set(bounds)) != len(bounds):
                raise ValueError(f"{family}: repeated le bound")
            ordered = sorted(pairs)
            if [count for _, count in ordered] != sorted(count for _, count in ordered):
                raise ValueError(f"{family}: bucket counts go down")
            if ordered[-1][0] != math.inf:
                raise ValueError(f"{family}: no +Inf bucket")
            if values.get((family + "_count", rest)) != ordered[-1][1]:
                raise ValueError(f"{family}: +Inf bucket differs from _count")
            if (family + "_sum", rest) not in values:
                raise ValueError(f"{family}: no _sum")


def parse_exposition(text: str) -> dict[Series, float]:
    """
    Parse the Prometheus text format (version 0.0.4) strictly: every line is C{# HELP},
    C{# TYPE}, another comment, or C{name{labels} value}; a sample's family has a C{# TYPE}
    before it, its samples are together (no other family in between), and each family has
    at most one HELP and one TYPE line, both before its samples; a counter's name ends in
    C{_total} and its value is not negative; a label name appears once per sample; a
    histogram has only C{_bucket} (with a numeric C{le}), C{_sum} and C{_count} samples,
    its buckets increase with C{le} and end with C{+Inf} equal to C{_count}; no series
    appears twice; the text ends with a newline.

    @return: the value of each (name, sorted unescaped labels) series.
    @raise ValueError: on the first line or family that breaks a rule.
    """
    if not text.endswith("\n"):
        raise ValueError("the exposition must end with a newline")
    types: dict[str, str] = {}
    helps: set[str] = set()
    done: set[str] = set()  # families whose samples are behind us
    current: str | None = None
    values: dict[Series, float] = {}
    for number, line in enumerate(text[:-1].split("\n"), 1):
        if line.startswith("# HELP "):
            match = _HELP.fullmatch(line)
            if match is None or match["name"] in helps or match["name"] in done:
                raise ValueError(f"line {number}: bad, repeated or late HELP {line!r}")
            helps.add(match["name"])
            continue
        if line.startswith("# TYPE "):
            match = _TYPE.fullmatch(line)
            if match is None or match["name"] in types or match["name"] in done:
                raise ValueError(f"line {number}: bad or repeated TYPE {line!r}")
            types[match["name"]] = match["kind"]
            continue
        if line.startswith("#"):
            continue
        match = _SAMPLE.fullmatch(line)
        if match is None:
            raise ValueError(f"line {number}: not a sample {line!r}")
        name = match["name"]
        try:
            family, suffix = _family_of(name, types)
        except ValueError as error:
            raise ValueError(f"line {number}: {error}") from None
        if family != current:
            if family in done:
                raise ValueError(f"line {number}: samples of {family} are not together")
            if current is not None:
                done.add(current)
            current = family
        pairs = [(k, _unescape(v)) for k, v in _ONE_LABEL.findall(match["labels"] or "")]
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError(f"line {number}: repeated label name {line!r}")
        labels = tuple(sorted(pairs))
        value = float(match["value"])
        if types[family] == "counter":
            if not name.endswith("_total"):
                raise ValueError(f"line {number}: counter {name} does not end in _total")
            if not value >= 0:
                raise ValueError(f"line {number}: counter {name} is negative or NaN")
        if types[family] == "histogram" and (suffix == "_bucket") != ("le" in dict(labels)):
            raise ValueError(f"line {number}: le belongs on _bucket samples only {line!r}")
        if suffix == "_bucket":
            float(dict(labels)["le"])  # raises ValueError unless a number or +Inf
        if (name, labels) in values:
            raise ValueError(f"line {number}: repeated series {line!r}")
        values[(name, labels)] = value
    _check_histograms(values, types)
    return values


def figures_for(**extra: Any) -> dict[str, Any]:
    """
    Figures shaped like C{GatewayService.figures()}, from a real L{Stats} and L{Admission}.
    """
    stats = Stats()
    figures: dict[str, Any] = dict(stats.snapshot())
    figures["uptime"] = 1.5
    figures["admission"] = Admission(AdmissionPolicy(), Clock()).snapshot()
    figures["draining"] = False
    figures.update(extra)
    return figures


def parsed(figures: dict[str, Any]) -> dict[Series, float]:
    return parse_exposition(render_metrics(figures).decode("utf-8"))


class ParserSelfTests(unittest.TestCase):
    """
    The test parser itself refuses what the format forbids (so its approval means something).
    """

    def test_sample_without_type(self) -> None:
        self.assertRaises(ValueError, parse_exposition, "x_total 1\n")

    def test_counter_without_total(self) -> None:
        self.assertRaises(ValueError, parse_exposition, "# TYPE x counter\nx 1\n")

    def test_unescaped_quote_in_label(self) -> None:
        self.assertRaises(ValueError, parse_exposition, '# TYPE x gauge\nx{a="b"c"} 1\n')

    def test_repeated_series(self) -> None:
        self.assertRaises(ValueError, parse_exposition, "# TYPE x gauge\nx 1\nx 2\n")

    def test_missing_final_newline(self) -> None:
        self.assertRaises(ValueError, parse_exposition, "# TYPE x gauge\nx 1")

    def test_accepts_escaped_label(self) -> None:
        text = '# TYPE x gauge\nx{a="q\\"b\\\\n\\n"} 1\n'
        self.assertEqual(parse_exposition(text), {("x", (("a", 'q"b\\n\n'),)): 1.0})

    HISTOGRAM = (
        "# TYPE h histogram\n"
        'h_bucket{le="0.1"} 1\n'
        'h_bucket{le="1.0"} 3\n'
        'h_bucket{le="+Inf"} 4\n'
        "h_sum 2.5\n"
        "h_count 4\n"
    )

    def test_accepts_histogram(self) -> None:
        """
        A well-formed histogram parses, with its C{le} labels kept as text.
        """
        values = parse_exposition(self.HISTOGRAM)
        self.assertEqual(values[("h_bucket", (("le", "+Inf"),))], 4)
        self.assertEqual(values[("h_count", ())], 4)

    def test_histogram_buckets_going_down(self) -> None:
        """
        Cumulative bucket counts must not decrease as C{le} grows.
        """
        text = self.HISTOGRAM.replace('le="1.0"} 3', 'le="1.0"} 0')
        self.assertRaises(ValueError, parse_exposition, text)

    def test_histogram_without_inf(self) -> None:
        """
        A histogram must have a C{+Inf} bucket.
        """
        text = self.HISTOGRAM.replace('h_bucket{le="+Inf"} 4\n', "")
        self.assertRaises(ValueError, parse_exposition, text)

    def test_histogram_inf_differs_from_count(self) -> None:
        """
        The C{+Inf} bucket must equal C{_count}.
        """
        self.assertRaises(
            ValueError, parse_exposition, self.HISTOGRAM.replace("h_count 4", "h_count 5")
        )

    def test_histogram_without_sum(self) -> None:
        """
        A histogram must have a C{_sum}.
        """
        self.assertRaises(ValueError, parse_exposition, self.HISTOGRAM.replace("h_sum 2.5\n", ""))

    def test_histogram_bare_name_or_bad_le(self) -> None:
        """
        A histogram has no sample under its bare name, and C{le} is a number.
        """
        self.assertRaises(ValueError, parse_exposition, self.HISTOGRAM + "h 1\n")
        text = self.HISTOGRAM.replace('le="0.1"', 'le="small"')
        self.assertRaises(ValueError, parse_exposition, text)
        self.assertRaises(
            ValueError, parse_exposition, self.HISTOGRAM.replace("h_sum", 'h_sum{le="1"}')
        )

    def test_families_not_together(self) -> None:
        """
        A family's samples must not be split by another family's.
        """
        text = '# TYPE x gauge\n# TYPE y gauge\nx 1\ny 1\nx{a="b"} 2\n'
        self.assertRaises(ValueError, parse_exposition, text)

    def test_late_or_repeated_help(self) -> None:
        """
        At most one HELP per family, before its samples.
        """
        self.assertRaises(
            ValueError,
            parse_exposition,
            "# TYPE x gauge\nx 1\n# TYPE y gauge\ny 1\n# HELP x late\n",
        )
        self.assertRaises(
            ValueError, parse_exposition, "# HELP x a\n# HELP x b\n# TYPE x gauge\nx 1\n"
        )

    def test_repeated_label_name(self) -> None:
        """
        A label name appears once per sample.
        """
        self.assertRaises(ValueError, parse_exposition, '# TYPE x gauge\nx{a="1",a="2"} 1\n')

    def test_negative_counter(self) -> None:
        """
        A counter is never negative.
        """
        self.assertRaises(ValueError, parse_exposition, "# TYPE x_total counter\nx_total -1\n")


# -- rendering --------------------------------------------------------------------------------


class RenderCounterTests(unittest.TestCase):
    """
    Stats counters become C{netguard_<name>_total} counters.
    """

    def test_known_counters_present_at_zero(self) -> None:
        values = parsed(figures_for())
        for name in ("connections", "auth_ok", "auth_fail", "bytes_up", "bytes_down"):
            self.assertEqual(values[(f"netguard_{name}_total", ())], 0.0, name)

    def test_counter_values(self) -> None:
        values = parsed(figures_for(connections=7, auth_ok=5, auth_fail=2, bytes_up=10**12))
        self.assertEqual(values[("netguard_connections_total", ())], 7)
        self.assertEqual(values[("netguard_auth_ok_total", ())], 5)
        self.assertEqual(values[("netguard_auth_fail_total", ())], 2)
        self.assertEqual(values[("netguard_bytes_up_total", ())], 10**12)

    def test_large_integer_written_exactly(self) -> None:
        text = render_metrics(figures_for(bytes_down=2**63 + 1)).decode()
        self.assertIn(f"netguard_bytes_down_total {2**63 + 1}\n", text)

    def test_help_and_type_lines(self) -> None:
        text = render_metrics(figures_for()).decode()
        self.assertIn("# TYPE netguard_connections_total counter\n", text)
        self.assertIn("# HELP netguard_auth_fail_total Failed authentications.\n", text)


class RenderRefusedTests(unittest.TestCase):
    """
    C{refused.<reason>} counters become one labelled family.
    """

    def test_reason_label(self) -> None:
        values = parsed(figures_for(**{"refused": 3, "refused.rate": 2, "refused.denied": 1}))
        self.assertEqual(values[("netguard_refused_total", (("reason", "rate"),))], 2)
        self.assertEqual(values[("netguard_refused_total", (("reason", "denied"),))], 1)

    def test_unlabelled_sum_not_repeated(self) -> None:
        """
        The plain C{refused} sum would double every C{sum()} over the family.
        """
        values = parsed(figures_for(**{"refused": 3, "refused.rate": 3}))
        self.assertNotIn(("netguard_refused_total", ()), values)
        self.assertNotIn(("netguard_refused", ()), values)

    def test_every_known_reason_present_at_zero(self) -> None:
        values = parsed(figures_for())
        for reason in REASONS:
            self.assertEqual(values[("netguard_refused_total", (("reason", reason),))], 0)

    def test_unknown_reason_kept(self) -> None:
        values = parsed(figures_for(**{"refused.brand-new": 4}))
        self.assertEqual(values[("netguard_refused_total", (("reason", "brand-new"),))], 4)

    def test_type_is_counter(self) -> None:
        self.assertIn(
            "# TYPE netguard_refused_total counter\n", render_metrics(figures_for()).decode()
        )


class LabelEscapingTests(unittest.TestCase):
    """
    Label values are escaped as the format requires; nothing a reason holds can add a line.
    """

    def render_reason(self, reason: str) -> str:
        return render_metrics({f"refused.{reason}": 1}).decode()

    def test_backslash(self) -> None:
        self.assertIn('{reason="a\\\\b"} 1\n', self.render_reason("a\\b"))

    def test_double_quote(self) -> None:
        self.assertIn('{reason="a\\"b"} 1\n', self.render_reason('a"b'))

    def test_line_feed(self) -> None:
        text = self.render_reason("a\nnetguard_auth_ok_total 999")
        self.assertIn('{reason="a\\nnetguard_auth_ok_total 999"} 1\n', text)
        self.assertNotIn("\nnetguard_auth_ok_total 999", text)

    def test_escape_function(self) -> None:
        self.assertEqual(escape_label_value('\\"\n'), '\\\\\\"\\n')

    def test_long_value_truncated(self) -> None:
        values = parsed({"refused." + "x" * 1000: 1})
        self.assertIn(("netguard_refused_total", (("reason", "x" * MAX_LABEL_CHARS),)), values)

    @settings(max_examples=200, deadline=None)
    @given(st.text(min_size=1, max_size=MAX_LABEL_CHARS))
    def test_any_reason_round_trips(self, reason: str) -> None:
        values = parsed({f"refused.{reason}": 5})
        self.assertEqual(values[("netguard_refused_total", (("reason", reason),))], 5)


class RenderGaugeTests(unittest.TestCase):
    """
    Gauges keep their name, without a suffix.
    """

    def test_active(self) -> None:
        values = parsed(figures_for(active=4))
        self.assertEqual(values[("netguard_active", ())], 4)

    def test_uptime_in_seconds(self) -> None:
        values = parsed(figures_for(uptime=12.25))
        self.assertEqual(values[("netguard_uptime_seconds", ())], 12.25)

    def test_draining_as_zero_or_one(self) -> None:
        self.assertEqual(parsed(figures_for(draining=True))[("netguard_draining", ())], 1)
        self.assertEqual(parsed(figures_for(draining=False))[("netguard_draining", ())], 0)

    def test_admission_gauges(self) -> None:
        values = parsed(figures_for())
        for name in (
            "unauthenticated",
            "relays",
            "lane",
            "probation",
            "connections",
            "active_sources",
            "tracked_sources",
            "penalised_sources",
            "blocked_sources",
            "stress",
        ):
            self.assertIn((f"netguard_admission_{name}", ()), values, name)

    def test_gauge_types(self) -> None:
        text = render_metrics(figures_for()).decode()
        self.assertIn("# TYPE netguard_active gauge\n", text)
        self.assertIn("# TYPE netguard_admission_relays gauge\n", text)
        self.assertNotIn("netguard_active_total", text)

    def test_no_overload(self) -> None:
        values = parsed(figures_for())
        for reason in ("overload-load", "overload-lag", "overload-memory"):
            self.assertEqual(values[("netguard_admission_overload", (("reason", reason),))], 0)

    def test_overload_in_force(self) -> None:
        admission = figures_for()["admission"]
        values = parsed(figures_for(admission=dict(admission, overload="overload-lag")))
        self.assertEqual(values[("netguard_admission_overload", (("reason", "overload-lag"),))], 1)
        self.assertEqual(
            values[("netguard_admission_overload", (("reason", "overload-load"),))], 0
        )

    def test_unknown_overload_reason_added(self) -> None:
        admission = figures_for()["admission"]
        values = parsed(figures_for(admission=dict(admission, overload="overload-disk")))
        self.assertEqual(
            values[("netguard_admission_overload", (("reason", "overload-disk"),))], 1
        )

    def test_admission_not_a_mapping_is_skipped(self) -> None:
        values = parsed(figures_for(admission="broken"))
        self.assertNotIn(("netguard_admission_relays", ()), values)


class RenderOtherFiguresTests(unittest.TestCase):
    """
    Figures this module does not know are exposed by type, with safe names.
    """

    def test_unknown_integer_is_a_counter(self) -> None:
        text = render_metrics({"tls_handshakes": 3}).decode()
        self.assertIn("# TYPE netguard_tls_handshakes_total counter\n", text)
        self.assertIn("netguard_tls_handshakes_total 3\n", text)

    def test_unknown_float_is_a_gauge(self) -> None:
        values = parsed({"lag": 0.25})
        self.assertEqual(values[("netguard_lag", ())], 0.25)

    def test_unknown_boolean_is_a_gauge(self) -> None:
        values = parsed({"maintenance": True})
        self.assertEqual(values[("netguard_maintenance", ())], 1)

    def test_text_and_tables_skipped(self) -> None:
        values = parsed({"version": "1.0", "nested": {"a": 1}, "nothing": None})
        self.assertFalse([name for name, _ in values if "version" in name or "nested" in name])

    def test_name_reduced_to_safe_characters(self) -> None:
        values = parsed({"peer.checks-ok\n# TYPE": 2})
        self.assertIn(("netguard_peer_checks_ok___TYPE_total", ()), values)

    def test_name_colliding_with_a_known_one_skipped(self) -> None:
        values = parsed(figures_for(uptime_seconds=99.0))
        self.assertEqual(values[("netguard_uptime_seconds", ())], 1.5)

    def test_metric_name(self) -> None:
        self.assertEqual(metric_name("auth_ok", "_total"), "netguard_auth_ok_total")
        self.assertEqual(metric_name(""), "netguard__")


class BoundsTests(unittest.TestCase):
    """
    The response is bounded in samples and bytes, whatever the figures hold.
    """

    def test_many_figures_bounded_in_series(self) -> None:
        figures = figures_for(**{f"c{i:05d}": i for i in range(MAX_SERIES + 100)})
        values = parsed(figures)
        self.assertLessEqual(len(values), MAX_SERIES)
        self.assertTrue(
            render_metrics(figures).endswith(b"# netguard: output truncated (bounded)\n")
        )

    def test_many_long_names_bounded_in_bytes(self) -> None:
        figures = {f"{i:04d}" + "n" * 500: i for i in range(MAX_SERIES - 100)}
        body = render_metrics(figures)
        self.assertLessEqual(len(body), MAX_BODY_BYTES)
        self.assertTrue(body.endswith(b"# netguard: output truncated (bounded)\n"))
        parse_exposition(body.decode())

    def test_known_families_come_first(self) -> None:
        values = parsed(figures_for(**{f"c{i:05d}": i for i in range(MAX_SERIES + 100)}))
        self.assertIn(("netguard_connections_total", ()), values)
        self.assertIn(("netguard_admission_stress", ()), values)

    def test_counter_that_is_nan_or_negative_is_left_out(self) -> None:
        """
        A counter figure that is NaN or negative is not exposed (a counter never goes down);
        zero, the boundary, is; an unknown negative integer becomes a gauge.
        """
        for bad in (float("nan"), -1, -0.5):
            figures = figures_for()
            figures.update({"auth_ok": bad, "refused.rate": bad, "surprise": -3})
            body = render_metrics(figures).decode("utf-8")
            values = parse_exposition(body)
            self.assertNotIn(("netguard_auth_ok_total", ()), values, bad)
            # A known reason keeps its place in the family, at zero.
            self.assertEqual(values[("netguard_refused_total", (("reason", "rate"),))], 0, bad)
            self.assertIn("# TYPE netguard_surprise gauge", body)
        figures = figures_for()
        figures["auth_ok"] = 0
        self.assertEqual(
            parse_exposition(render_metrics(figures).decode())[("netguard_auth_ok_total", ())], 0
        )

    def test_typical_figures_not_truncated(self) -> None:
        self.assertNotIn(b"truncated", render_metrics(figures_for()))

    @settings(max_examples=200, deadline=None)
    @given(
        st.dictionaries(
            st.text(max_size=40),
            st.one_of(
                st.integers(min_value=-(2**70), max_value=2**70),
                st.floats(allow_nan=True, allow_infinity=True),
                st.booleans(),
                st.text(max_size=5),
                st.none(),
            ),
            max_size=40,
        )
    )
    def test_any_figures_parse(self, figures: dict[str, Any]) -> None:
        body = render_metrics(figures)
        self.assertLessEqual(len(body), MAX_BODY_BYTES)
        parse_exposition(body.decode("utf-8"))


class FormatTests(unittest.TestCase):
    """
    Values and help texts as the format writes them.
    """

    def test_integer(self) -> None:
        self.assertEqual(format_value(42), "42")

    def test_booleans(self) -> None:
        self.assertEqual((format_value(True), format_value(False)), ("1", "0"))

    def test_float(self) -> None:
        self.assertEqual(format_value(0.1), "0.1")

    def test_nan(self) -> None:
        self.assertEqual(format_value(float("nan")), "NaN")

    def test_infinities(self) -> None:
        self.assertEqual(format_value(float("inf")), "+Inf")
        self.assertEqual(format_value(float("-inf")), "-Inf")

    def test_help_escaping(self) -> None:
        self.assertEqual(escape_help("a\\b\nc"), "a\\\\b\\nc")

    def test_ends_with_newline_and_is_utf8(self) -> None:
        body = render_metrics(figures_for(**{"refused.é": 1}))
        self.assertTrue(body.endswith(b"\n"))
        self.assertIn('reason="é"', body.decode("utf-8"))


# -- HTTP ---------------------------------------------------------------------------------------


class HTTPHarness(unittest.TestCase):
    """
    Drive the metrics factory over a L{StringTransport}.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.figures = figures_for(connections=3)
        self.factory = metrics_factory(lambda: self.figures, self.clock, max_connections=2)
        self.factory.doStart()
        self.addCleanup(self.factory.doStop)

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        return protocol, transport

    def request(self, raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        protocol, transport = self.connect()
        protocol.dataReceived(raw)
        return self.response(transport.value())

    @staticmethod
    def response(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, body

    def get(self, path: bytes = b"/metrics", method: bytes = b"GET") -> Any:
        return self.request(method + b" " + path + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")


class ResourceTests(HTTPHarness):
    """
    C{GET /metrics} answers the exposition; everything else is refused.
    """

    def test_get_metrics(self) -> None:
        status, headers, body = self.get()
        self.assertEqual(status, 200)
        self.assertEqual(parse_exposition(body.decode())[("netguard_connections_total", ())], 3)

    def test_content_type(self) -> None:
        _, headers, _ = self.get()
        self.assertEqual(headers[b"content-type"], CONTENT_TYPE)
        self.assertTrue(CONTENT_TYPE.startswith(b"text/plain; version=0.0.4"))

    def test_content_length_matches(self) -> None:
        _, headers, body = self.get()
        self.assertEqual(int(headers[b"content-length"]), len(body))

    def test_figures_read_per_request(self) -> None:
        self.get()
        self.figures = figures_for(connections=9)
        _, _, body = self.get()
        self.assertEqual(parse_exposition(body.decode())[("netguard_connections_total", ())], 9)

    def test_query_string_ignored(self) -> None:
        status, _, _ = self.get(b"/metrics?name[]=x")
        self.assertEqual(status, 200)

    def test_no_twisted_version_in_server_header(self) -> None:
        _, headers, _ = self.get()
        self.assertEqual(headers[b"server"], b"netguard")

    def test_not_cached(self) -> None:
        _, headers, _ = self.get()
        self.assertEqual(headers[b"cache-control"], b"no-store")

    def test_root_is_404(self) -> None:
        status, headers, body = self.get(b"/")
        self.assertEqual(status, 404)
        self.assertEqual(headers[b"content-type"], b"text/plain; charset=utf-8")
        self.assertNotIn(b"netguard_", body)

    def test_other_path_is_404(self) -> None:
        self.assertEqual(self.get(b"/status")[0], 404)

    def test_trailing_slash_is_404(self) -> None:
        self.assertEqual(self.get(b"/metrics/")[0], 404)

    def test_child_path_is_404(self) -> None:
        self.assertEqual(self.get(b"/metrics/x")[0], 404)

    def test_prefix_lookalike_is_404(self) -> None:
        self.assertEqual(self.get(b"/metricsx")[0], 404)

    def test_post_is_405(self) -> None:
        status, headers, body = self.request(
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
        )
        self.assertEqual(status, 405)
        self.assertEqual(headers[b"allow"], b"GET, HEAD")
        self.assertNotIn(b"netguard_", body)

    def test_put_is_405(self) -> None:
        self.assertEqual(self.get(method=b"PUT")[0], 405)

    def test_delete_is_405(self) -> None:
        self.assertEqual(self.get(method=b"DELETE")[0], 405)

    def test_head_has_headers_and_no_body(self) -> None:
        status, headers, body = self.get(method=b"HEAD")
        self.assertEqual(status, 200)
        self.assertEqual(headers[b"content-type"], CONTENT_TYPE)
        self.assertEqual(body, b"")

    def test_failing_source_is_500_and_logged(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def broken() -> dict[str, Any]:
            raise ZeroDivisionError("boom")

        self.factory = metrics_factory(broken, self.clock)
        status, _, body = self.get()
        self.assertEqual(status, 500)
        self.assertEqual(body, b"internal error\n")
        self.assertEqual([e.get("event") for e in events if "log_failure" in e], ["metrics.error"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_no_access_log(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.get()
        self.get(b"/nope")
        self.assertEqual(events, [])


class RequestBoundsTests(HTTPHarness):
    """
    Request bodies, connection counts and idle connections are bounded.
    """

    def test_declared_oversized_body_cuts_at_once(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
            + b"Content-Length: %d\r\n\r\n" % (MAX_REQUEST_BODY_BYTES + 1)
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_chunked_oversized_body_cut(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 1024
        for _ in range(MAX_REQUEST_BODY_BYTES // len(chunk) + 2):
            if transport.disconnecting:
                break
            protocol.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_small_body_accepted_and_dropped(self) -> None:
        status, _, _ = self.request(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        )
        self.assertEqual(status, 200)

    def test_closed_connection_frees_a_slot(self) -> None:
        first, _ = self.connect()
        self.connect()
        first.connectionLost(None)
        self.assertIsNotNone(self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))

    def test_idle_connection_closed(self) -> None:
        _, transport = self.connect()
        self.clock.advance(REQUEST_DEADLINE)
        self.assertTrue(transport.disconnecting)

    def test_no_timer_for_access_log(self) -> None:
        """
        A plain L{Site} updates an access-log timestamp every second, forever; ours does not.
        """
        self.assertEqual(self.clock.getDelayedCalls(), [])


# -- the listener -----------------------------------------------------------------------------


class FakePort:
    """
    A listening port that records C{stopListening}.
    """

    def __init__(self, address: Any) -> None:
        self.address = address
        self.stopped = 0

    def getHost(self) -> Any:
        return self.address

    def stopListening(self) -> Any:
        self.stopped += 1
        return succeed(None)


class HonestMemoryReactor(MemoryReactorClock):
    """
    A memory reactor whose ports report the interface they were asked for (the stock one
    reports 0.0.0.0 for every IPv4 port).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakePort] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        self.tcpServers.append((port, factory, backlog, interface))
        kind = IPv6Address if ":" in interface else IPv4Address
        fake = FakePort(kind("TCP", interface or "0.0.0.0", port or 50123))
        self.ports.append(fake)
        return fake


class BusyMemoryReactor(MemoryReactorClock):
    """
    A memory reactor (with a clock) on which every TCP port is in use.
    """

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class MetricsServiceTests(unittest.TestCase):
    """
    The listener opens once, on loopback only, and closes when stopped.
    """

    def service(self, description: str = "tcp:9108:interface=127.0.0.1", reactor: Any = None):
        self.reactor = reactor if reactor is not None else HonestMemoryReactor()
        return MetricsService(self.reactor, description, figures_for)

    def test_listens_on_the_given_interface(self) -> None:
        service = self.service()
        service.startService()
        self.assertEqual(self.reactor.tcpServers[0][0], 9108)
        self.assertEqual(self.reactor.tcpServers[0][3], "127.0.0.1")
        self.assertIs(service.port, self.reactor.ports[0])

    def test_ipv6_loopback(self) -> None:
        service = self.service("tcp6:9108:interface=\\:\\:1")
        service.startService()
        self.assertEqual(self.reactor.tcpServers[0][3], "::1")

    def test_privileged_start_then_start_listens_once(self) -> None:
        service = self.service()
        service.privilegedStartService()
        service.startService()
        self.assertEqual(len(self.reactor.tcpServers), 1)

    def test_stop_closes_the_port(self) -> None:
        service = self.service()
        service.startService()
        port = service.port
        service.stopService()
        self.assertEqual(port.stopped, 1)
        self.assertIsNone(service.port)

    def test_stop_before_start(self) -> None:
        self.assertIsNone(self.service().stopService())

    def test_bound_to_all_interfaces_is_closed_and_refused(self) -> None:
        """
        Even if a description slipped past the configuration, a port that is not bound to a
        loopback address is closed before the reactor can serve anything on it.
        """
        service = self.service("tcp:9108")
        error = self.assertRaises(MetricsListenFailed, service.startService)
        self.assertIn("not on a loopback address", str(error))
        self.assertEqual(self.reactor.ports[0].stopped, 1)
        self.assertIsNone(service.port)

    def test_bound_to_another_interface_refused(self) -> None:
        service = self.service("tcp:9108:interface=192.0.2.1")
        self.assertRaises(MetricsListenFailed, service.startService)
        self.assertEqual(self.reactor.ports[0].stopped, 1)

    def test_listen_failure_names_the_endpoint(self) -> None:
        reactor = RaisingMemoryReactor(listenException=CannotListenError("127.0.0.1", 9108, "x"))
        service = self.service(reactor=reactor)
        error = self.assertRaises(MetricsListenFailed, service.startService)
        self.assertIn("tcp:9108:interface=127.0.0.1", str(error))

    def test_unparseable_description_refused(self) -> None:
        service = self.service("nonsense-type:1")
        self.assertRaises(MetricsListenFailed, service.startService)


class IsLoopbackTests(unittest.TestCase):
    """
    L{is_loopback} on the addresses a port can report.
    """

    def test_ipv4_loopback(self) -> None:
        self.assertTrue(is_loopback(IPv4Address("TCP", "127.0.0.1", 1)))

    def test_other_127_address(self) -> None:
        self.assertTrue(is_loopback(IPv4Address("TCP", "127.8.9.10", 1)))

    def test_ipv6_loopback(self) -> None:
        self.assertTrue(is_loopback(IPv6Address("TCP", "::1", 1)))

    def test_ipv4_mapped_loopback(self) -> None:
        self.assertTrue(is_loopback(IPv6Address("TCP", "::ffff:127.0.0.1", 1)))

    def test_ipv4_any(self) -> None:
        self.assertFalse(is_loopback(IPv4Address("TCP", "0.0.0.0", 1)))

    def test_ipv6_any(self) -> None:
        self.assertFalse(is_loopback(IPv6Address("TCP", "::", 1)))

    def test_public_address(self) -> None:
        self.assertFalse(is_loopback(IPv4Address("TCP", "192.0.2.1", 1)))

    def test_unix_socket(self) -> None:
        self.assertFalse(is_loopback(UNIXAddress(b"/tmp/x.sock")))

    def test_nothing(self) -> None:
        self.assertFalse(is_loopback(None))


# -- configuration (ops.metrics_listen) ---------------------------------------------------------

#: A user environment, as in tests.test_config.
ENV = {"XDG_STATE_HOME": "/xdg", "HOME": "/home/u"}


class MetricsConfigTests(unittest.TestCase):
    """
    C{ops.metrics_listen}: off by default, loopback TCP only, shown by both describe texts.
    """

    def load(self, ops: str) -> Any:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "netguard.toml")
        with open(path, "w") as handle:
            handle.write("[ops]\n" + ops + "\n")
        return load_config(path, environ=ENV, euid=1000)

    def refused(self, value: str) -> ConfigError:
        error = self.assertRaises(ConfigError, self.load, f"metrics_listen = {value}")
        self.assertEqual(error.key, "ops.metrics_listen")
        return error

    def test_off_by_default(self) -> None:
        self.assertEqual(load_config(None, environ=ENV, euid=1000).ops.metrics_listen, "")

    def test_empty_is_off(self) -> None:
        self.assertEqual(self.load('metrics_listen = ""').ops.metrics_listen, "")

    def test_ipv4_loopback_accepted(self) -> None:
        config = self.load('metrics_listen = "tcp:9108:interface=127.0.0.1"')
        self.assertEqual(config.ops.metrics_listen, "tcp:9108:interface=127.0.0.1")

    def test_other_127_address_accepted(self) -> None:
        config = self.load('metrics_listen = "tcp:9108:interface=127.0.0.2"')
        self.assertEqual(config.ops.metrics_listen, "tcp:9108:interface=127.0.0.2")

    def test_port_zero_accepted(self) -> None:
        config = self.load('metrics_listen = "tcp:0:interface=127.0.0.1"')
        self.assertEqual(config.ops.metrics_listen, "tcp:0:interface=127.0.0.1")

    def test_ipv6_loopback_accepted(self) -> None:
        config = self.load('metrics_listen = "tcp6:9108:interface=\\\\:\\\\:1"')
        self.assertEqual(config.ops.metrics_listen, "tcp6:9108:interface=\\:\\:1")

    def test_keyword_form_accepted(self) -> None:
        config = self.load('metrics_listen = "tcp:port=9108:interface=127.0.0.1"')
        self.assertTrue(config.ops.metrics_listen.startswith("tcp:"))

    def test_no_interface_refused(self) -> None:
        error = self.refused('"tcp:9108"')
        self.assertIn("loopback only", error.message)
        self.assertIn("all IPv4 interfaces", error.message)

    def test_ipv4_any_refused(self) -> None:
        self.refused('"tcp:9108:interface=0.0.0.0"')

    def test_ipv6_any_refused(self) -> None:
        self.refused('"tcp6:9108:interface=\\\\:\\\\:"')

    def test_tcp6_without_interface_refused(self) -> None:
        self.refused('"tcp6:9108"')

    def test_public_interface_refused(self) -> None:
        self.refused('"tcp:9108:interface=192.0.2.1"')

    def test_unix_socket_refused(self) -> None:
        self.refused('"unix:/tmp/metrics.sock"')

    def test_systemd_refused(self) -> None:
        self.refused('"systemd:domain=INET:index=0"')

    def test_haproxy_wrapped_loopback_refused(self) -> None:
        self.refused('"haproxy:tcp:9108:interface=127.0.0.1"')

    def test_ssl_refused(self) -> None:
        self.refused('"ssl:9108:interface=127.0.0.1:privateKey=k.pem:certKey=c.pem"')

    def test_bad_port_refused(self) -> None:
        self.refused('"tcp:99999:interface=127.0.0.1"')

    def test_bad_interface_refused(self) -> None:
        self.refused('"tcp:9108:interface=localhost"')

    def test_not_a_string_refused(self) -> None:
        self.refused("9108")

    def test_unknown_type_refused(self) -> None:
        self.refused('"nonsense:9108"')

    def test_describe_shows_default(self) -> None:
        text = describe(load_config(None, environ=ENV, euid=1000))
        self.assertIn('\nops.metrics_listen = ""  # default\n', text)

    def test_describe_shows_value(self) -> None:
        text = describe(self.load('metrics_listen = "tcp:9108:interface=127.0.0.1"'))
        self.assertIn('\nops.metrics_listen = "tcp:9108:interface=127.0.0.1"  # set in file', text)

    def test_describe_defaults_documents_it(self) -> None:
        lines = describe_defaults().splitlines()
        index = lines.index('ops.metrics_listen = ""')
        self.assertIn("loopback", lines[index + 1])
        self.assertTrue(lines[index + 1].strip().startswith("# allowed: "))
        self.assertTrue(lines[index + 2].strip().startswith("# defends against: "))


class GatewayWiringTests(unittest.TestCase):
    """
    L{GatewayService} gets a metrics child service only when C{ops.metrics_listen} is set,
    and a metrics listener that cannot open ends the start with one line.
    """

    def gateway(self, metrics: str, reactor: Any) -> GatewayService:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "netguard.toml")
        with open(path, "w") as handle:
            handle.write(f'[ops]\ncontrol_socket = ""\nmetrics_listen = "{metrics}"\n')
        config = load_config(path, environ=ENV, euid=1000)
        factory = GatewayFactory(config, UserStore.from_records([]), reactor, Stats())
        return GatewayService(factory, [])

    def test_off_means_no_child(self) -> None:
        service = self.gateway("", MemoryReactorClock())
        self.assertIsNone(service.metrics)
        self.assertFalse([child for child in service if isinstance(child, MetricsService)])

    def test_child_serves_the_gateway_figures(self) -> None:
        reactor = HonestMemoryReactor()
        service = self.gateway("tcp:0:interface=127.0.0.1", reactor)
        self.assertIn(service.metrics, list(service))
        service.privilegedStartService()
        self.assertEqual(reactor.tcpServers[0][3], "127.0.0.1")
        site = reactor.tcpServers[0][1].wrappedFactory
        self.assertEqual(site.resource.source, service.metrics_figures)

    def test_listen_failure_ends_the_start_with_one_line(self) -> None:
        service = self.gateway("tcp:9108:interface=127.0.0.1", BusyMemoryReactor())
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertTrue(str(error).startswith("netguard: cannot listen on metrics endpoint"))


# -- live bytes, per-service figures, set-up time, build info, process ------------------------


class FakeRelay:
    """
    A live relay's byte counts, moved by hand.
    """

    def __init__(self) -> None:
        self.up = 0
        self.down = 0

    def meter(self) -> tuple[int, int]:
        return self.up, self.down


def stats_figures(stats: Stats) -> dict[str, Any]:
    """
    Figures shaped like C{GatewayService.metrics_figures()}, from C{stats}.
    """
    return figures_for(
        **stats.snapshot(),
        services=stats.services_snapshot(),
        session_setup=stats.setup_seconds.snapshot(),
    )


class LiveBytesRenderTests(unittest.TestCase):
    """
    The byte counters move while a relay is live, and never go down when it closes.
    """

    def test_scrape_during_relay_shows_bytes_so_far(self) -> None:
        """
        Two scrapes during one relay show the bytes it has carried so far each time.
        """
        stats = Stats()
        stats.set_services(["echo"])
        relay = FakeRelay()
        stats.relay_started("s1", "echo", 0.01, relay.meter)
        relay.up, relay.down = 65536, 1000
        first = parsed(stats_figures(stats))
        self.assertEqual(first[("netguard_bytes_up_total", ())], 65536)
        self.assertEqual(first[("netguard_bytes_down_total", ())], 1000)
        relay.up, relay.down = 131072, 65536
        second = parsed(stats_figures(stats))
        self.assertEqual(second[("netguard_bytes_up_total", ())], 131072)
        self.assertEqual(second[("netguard_bytes_down_total", ())], 65536)
        service = (("service", "echo"),)
        self.assertEqual(second[("netguard_service_bytes_up_total", service)], 131072)
        self.assertEqual(second[("netguard_service_bytes_down_total", service)], 65536)

    def test_counters_never_go_down(self) -> None:
        """
        Across many relays starting, moving and closing, no counter of any scrape is below
        the same counter of the scrape before.
        """
        stats = Stats()
        stats.set_services(["echo", "redis"])
        relays: dict[str, FakeRelay] = {}
        previous: dict[Series, float] = {}
        for step in range(60):
            key = f"s{step % 7}"
            if key in relays and step % 3 == 0:
                relay = relays.pop(key)
                name = "echo" if int(key[1:]) % 2 else "redis"
                stats.session_closed(key, name, relay.up, relay.down)
            elif key not in relays:
                relays[key] = FakeRelay()
                name = "echo" if int(key[1:]) % 2 else "redis"
                stats.relay_started(key, name, step / 100, relays[key].meter)
            for relay in relays.values():
                relay.up += step * 11
                relay.down += step * 5
            values = parsed(stats_figures(stats))
            for series, value in values.items():
                if series[0].endswith(("_total", "_bucket", "_count", "_sum")):
                    self.assertGreaterEqual(value, previous.get(series, 0), (step, series))
            previous = values


class ServiceLabelTests(unittest.TestCase):
    """
    Per-service families with a C{service} label, bounded by the configured names.
    """

    def test_families_and_values(self) -> None:
        """
        Sessions opened, bytes each way, open failures by reason, live relays per service.
        """
        stats = Stats()
        stats.set_services(["echo", "redis"])
        relay = FakeRelay()
        stats.relay_started("s1", "redis", 0.01, relay.meter)
        relay.up, relay.down = 10, 20
        stats.open_failed("redis", "backend")
        stats.open_failed("echo", "not-authorized")
        values = parsed(stats_figures(stats))
        redis, echo = (("service", "redis"),), (("service", "echo"),)
        self.assertEqual(values[("netguard_service_sessions_total", redis)], 1)
        self.assertEqual(values[("netguard_service_sessions_total", echo)], 0)
        self.assertEqual(values[("netguard_service_bytes_up_total", redis)], 10)
        self.assertEqual(values[("netguard_service_bytes_down_total", redis)], 20)
        self.assertEqual(values[("netguard_service_relays", redis)], 1)
        self.assertEqual(values[("netguard_service_relays", echo)], 0)
        failures = "netguard_service_open_failures_total"
        self.assertEqual(values[(failures, (("reason", "backend"), ("service", "redis")))], 1)
        self.assertEqual(
            values[(failures, (("reason", "not-authorized"), ("service", "echo")))], 1
        )
        self.assertEqual(values[(failures, (("reason", "peer-checks"), ("service", "echo")))], 0)

    def test_label_values_are_the_configured_names(self) -> None:
        """
        Every C{service} label value is a configured name, however many others are reported.
        """
        stats = Stats()
        stats.set_services(["echo"])
        for i in range(100):
            stats.open_failed(f"client-{i}", "backend")
        labelled = {
            dict(labels)["service"]
            for _, labels in parsed(stats_figures(stats))
            if labels
            if "service" in dict(labels)
        }
        self.assertEqual(labelled, {"echo"})

    def test_label_value_escaped(self) -> None:
        """
        A service label value is escaped as the format asks and round-trips.
        """
        name = 'we"ird\\name\nnetguard_auth_ok_total 999'
        stats = Stats()
        stats.set_services([name])
        text = render_metrics(stats_figures(stats)).decode()
        self.assertNotIn("\nnetguard_auth_ok_total 999", text)
        values = parse_exposition(text)
        self.assertEqual(values[("netguard_service_sessions_total", (("service", name),))], 0)

    def test_most_services_fit(self) -> None:
        """
        The largest configuration allowed (1024 services) renders whole, not truncated.
        """
        stats = Stats()
        stats.set_services([f"service-{i:04d}" for i in range(1024)])
        body = render_metrics(stats_figures(stats))
        self.assertNotIn(b"truncated", body)
        values = parse_exposition(body.decode())
        self.assertEqual(values[("netguard_service_relays", (("service", "service-1023"),))], 0)

    def test_malformed_services_figure(self) -> None:
        """
        Keys that are not text, entries that are not tables and reasons that are not text
        are skipped; the rest renders and parses.
        """
        services = {
            "echo": {"sessions": 2, "open_failures": {1: 5, "backend": 1, "odd": 3}},
            7: {"sessions": 1},
            "bad": "not a table",
        }
        values = parsed(figures_for(services=services))
        self.assertEqual(values[("netguard_service_sessions_total", (("service", "echo"),))], 2)
        failures = "netguard_service_open_failures_total"
        self.assertEqual(values[(failures, (("reason", "odd"), ("service", "echo")))], 3)
        labelled = {dict(labels).get("service") for _, labels in values} - {None}
        self.assertEqual(labelled, {"echo"})

    def test_services_not_a_mapping_skipped(self) -> None:
        """
        A malformed C{services} figure renders nothing for it and breaks nothing.
        """
        values = parsed(figures_for(services=["echo"]))
        self.assertNotIn("netguard_service_relays", {name for name, _ in values})


class SetupHistogramRenderTests(unittest.TestCase):
    """
    C{netguard_session_setup_seconds}, a standard cumulative histogram.
    """

    def test_buckets_sum_count(self) -> None:
        """
        Observations land in the cumulative buckets, C{+Inf} and C{_count} are the number of
        observations and C{_sum} their sum.
        """
        stats = Stats()
        for seconds in (0.0005, 0.003, 0.003, 0.3, 100.0):
            stats.relay_started(object(), "echo", seconds, FakeRelay().meter)
        values = parsed(stats_figures(stats))
        bucket = "netguard_session_setup_seconds_bucket"
        self.assertEqual(values[(bucket, (("le", "0.001"),))], 1)
        self.assertEqual(values[(bucket, (("le", "0.005"),))], 3)
        self.assertEqual(values[(bucket, (("le", "0.25"),))], 3)
        self.assertEqual(values[(bucket, (("le", "0.5"),))], 4)
        self.assertEqual(values[(bucket, (("le", "30.0"),))], 4)
        self.assertEqual(values[(bucket, (("le", "+Inf"),))], 5)
        self.assertEqual(values[("netguard_session_setup_seconds_count", ())], 5)
        self.assertAlmostEqual(values[("netguard_session_setup_seconds_sum", ())], 100.3065)

    def test_every_bucket_listed(self) -> None:
        """
        Every fixed bucket is present, in order, even with no observation.
        """
        text = render_metrics(figures_for()).decode()
        self.assertIn("# TYPE netguard_session_setup_seconds histogram\n", text)
        les = re.findall(r'netguard_session_setup_seconds_bucket\{le="([^"]+)"\}', text)
        self.assertEqual(les, [format_value(bound) for bound in SETUP_BUCKETS] + ["+Inf"])


class BuildInfoTests(unittest.TestCase):
    """
    C{netguard_build_info}: the versions this process runs, as labels of a constant 1.
    """

    def test_labels(self) -> None:
        """
        netguard, Python, Twisted and pyOpenSSL's OpenSSL versions, value 1.
        """
        import platform

        from OpenSSL.SSL import OPENSSL_VERSION, OpenSSL_version

        import netguard
        import twisted

        values = parsed(figures_for())
        [(labels, value)] = [
            (dict(labels), value)
            for (name, labels), value in values.items()
            if name == "netguard_build_info"
        ]
        self.assertEqual(value, 1)
        self.assertEqual(
            labels,
            {
                "version": netguard.__version__,
                "python": platform.python_version(),
                "twisted": twisted.__version__,
                "openssl": OpenSSL_version(OPENSSL_VERSION).decode(),
            },
        )
        self.assertEqual(dict(build_info()), labels)


class ProcessFiguresTests(unittest.TestCase):
    """
    L{process_figures} reads the standard process collector's figures; what it cannot read
    it leaves out.
    """

    def fake_proc(self, stat: bytes, btime: bytes = b"btime 1700000000\n", fds: int = 3) -> str:
        root = self.mktemp()
        os.makedirs(os.path.join(root, "self", "fd"))
        for fd in range(fds):
            open(os.path.join(root, "self", "fd", str(fd)), "w").close()
        with open(os.path.join(root, "self", "stat"), "wb") as handle:
            handle.write(stat)
        with open(os.path.join(root, "stat"), "wb") as handle:
            handle.write(b"cpu  1 2 3\n" + btime + b"processes 9\n")
        return root

    # pid (comm) state ppid ... field 22 starttime, 23 vsize, 24 rss (pages)
    STAT = (
        b"4242 (twistd (x) y) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 500 "
        + b"123456789 1000 rest of fields\n"
    )

    def test_reads_fake_proc(self) -> None:
        """
        Open descriptors, virtual and resident memory and the start time come from C{/proc}
        (a command name with spaces and parentheses does not shift the fields).
        """
        figures = process_figures(self.fake_proc(self.STAT))
        self.assertEqual(figures["open_fds"], 3)
        self.assertEqual(figures["virtual_memory_bytes"], 123456789)
        self.assertEqual(figures["resident_memory_bytes"], 1000 * os.sysconf("SC_PAGE_SIZE"))
        self.assertEqual(
            figures["start_time_seconds"], 1700000000 + 500 / os.sysconf("SC_CLK_TCK")
        )
        self.assertGreaterEqual(figures["cpu_seconds_total"], 0)

    def test_no_proc(self) -> None:
        """
        Without C{/proc} (not Linux) only what the portable calls give is there.
        """
        figures = process_figures(self.mktemp())
        self.assertLessEqual(set(figures), {"cpu_seconds_total", "max_fds"})
        self.assertIn("cpu_seconds_total", figures)

    def test_malformed_stat_left_out(self) -> None:
        """
        A C{stat} that does not parse gives no memory or start time, and no error.
        """
        figures = process_figures(self.fake_proc(b"4242 (x) S 1 2\n"))
        self.assertNotIn("resident_memory_bytes", figures)
        self.assertNotIn("start_time_seconds", figures)
        self.assertEqual(figures["open_fds"], 3)

    def test_no_btime_no_start_time(self) -> None:
        """
        Without C{btime} the start time is left out, the memory figures stay.
        """
        figures = process_figures(self.fake_proc(self.STAT, btime=b""))
        self.assertNotIn("start_time_seconds", figures)
        self.assertEqual(figures["virtual_memory_bytes"], 123456789)

    def test_rendered_under_standard_names(self) -> None:
        """
        The figures become C{process_*} families: CPU as a counter, the rest as gauges;
        missing ones are left out.
        """
        text = render_metrics(figures_for(process={"cpu_seconds_total": 1.5, "open_fds": 7}))
        values = parse_exposition(text.decode())
        self.assertEqual(values[("process_cpu_seconds_total", ())], 1.5)
        self.assertEqual(values[("process_open_fds", ())], 7)
        self.assertNotIn(("process_resident_memory_bytes", ()), values)
        self.assertIn(b"# TYPE process_open_fds gauge\n", text)

    def test_real_process(self) -> None:
        """
        On this machine (Linux) every process figure is there and plausible.
        """
        if not os.path.isdir("/proc/self/fd"):
            raise unittest.SkipTest("no /proc")
        figures = process_figures()
        self.assertGreater(figures["open_fds"], 0)
        self.assertGreater(figures["resident_memory_bytes"], 0)
        self.assertGreaterEqual(figures["virtual_memory_bytes"], figures["resident_memory_bytes"])
        self.assertLessEqual(figures["start_time_seconds"], time.time() + 1)

    def test_resource_adds_process_figures(self) -> None:
        """
        Each scrape of the resource reads the process figures and renders them.
        """
        calls: list[int] = []

        def process() -> dict[str, float]:
            calls.append(1)
            return {"open_fds": 11.0}

        resource = MetricsResource(lambda: figures_for(), process)
        request = DummyRequest([b"metrics"])
        request.path = b"/metrics"
        body = resource.render(request)
        self.assertEqual(parse_exposition(body.decode())[("process_open_fds", ())], 11)
        self.assertEqual(len(calls), 1)


class GatewayMetricsTests(unittest.TestCase):
    """
    The real gateway session and factory on Twisted fakes (a fake clock, a string
    transport, the built-in echo backend) feed the new figures.
    """

    def setUp(self) -> None:
        from tests.test_gateway_protocol import Session

        self.Session = Session

    def session(self, services: dict[str, Any] | None = None) -> Any:
        s = self.Session(self)
        if services is not None:
            config = attrs.evolve(s.factory.config, services=services)
            s.factory.apply_config(config, s.factory.users)
        return s

    def scrape(self, factory: GatewayFactory) -> dict[Series, float]:
        service = GatewayService(factory, [])
        return parse_exposition(render_metrics(service.metrics_figures()).decode())

    def test_live_echo_bytes_before_close(self) -> None:
        """
        While an echo relay runs, a scrape shows the bytes relayed both ways; after the
        close the counters are the same (not counted twice, not gone down).
        """
        s = self.session()
        s.login()
        self.assertEqual(s.send(b"OPEN echo"), [b"OK OPEN echo"])
        s.proto.dataReceived(b"x" * 5000)
        during = self.scrape(s.factory)
        self.assertEqual(during[("netguard_bytes_up_total", ())], 5000)
        self.assertEqual(during[("netguard_bytes_down_total", ())], 5000)
        echo = (("service", "echo"),)
        self.assertEqual(during[("netguard_service_bytes_down_total", echo)], 5000)
        self.assertEqual(during[("netguard_service_relays", echo)], 1)
        s.proto.connectionLost(None)
        after = self.scrape(s.factory)
        self.assertEqual(after[("netguard_bytes_up_total", ())], 5000)
        self.assertEqual(after[("netguard_bytes_down_total", ())], 5000)
        self.assertEqual(after[("netguard_service_relays", echo)], 0)
        self.assertEqual(after[("netguard_service_sessions_total", echo)], 1)

    def test_setup_time_from_accept_to_open(self) -> None:
        """
        The histogram records the fake clock's time from accept (greeting delay included)
        to C{OK OPEN}: 0.1 s of greeting delay plus 0.2 s lands in the 0.5 s bucket, not
        in the 0.25 s one.
        """
        s = self.session()
        s.login()
        s.clock.advance(0.2)
        self.assertEqual(s.send(b"OPEN echo"), [b"OK OPEN echo"])
        values = self.scrape(s.factory)
        bucket = "netguard_session_setup_seconds_bucket"
        self.assertEqual(values[(bucket, (("le", "0.25"),))], 0)
        self.assertEqual(values[(bucket, (("le", "0.5"),))], 1)
        self.assertEqual(values[("netguard_session_setup_seconds_count", ())], 1)
        self.assertAlmostEqual(values[("netguard_session_setup_seconds_sum", ())], 0.3)

    def test_streams_not_observed(self) -> None:
        """
        The set-up histogram counts relays started by C{OPEN} on a connection only: three
        streams of a multiplexed session (and its login) add nothing, one plain C{OPEN}
        adds one observation, while C{netguard_streams_total} counts the streams.
        """
        from tests.test_gateway_streams import Mux

        m = Mux(self)
        self.assertTrue(m.upgrade().startswith(b"OK MUX "))
        for _ in range(3):
            m.open(b"OPEN echo\r\n")
        values = self.scrape(m.factory)
        self.assertEqual(values[("netguard_streams_total", ())], 3)
        self.assertEqual(values[("netguard_session_setup_seconds_count", ())], 0)
        s = self.session()
        s.login()
        s.factory.stats = m.factory.stats  # one set of figures for both connections
        self.assertEqual(s.send(b"OPEN echo"), [b"OK OPEN echo"])
        values = self.scrape(m.factory)
        self.assertEqual(values[("netguard_session_setup_seconds_count", ())], 1)
        self.assertEqual(values[("netguard_streams_total", ())], 3)

    def test_no_relay_no_observation(self) -> None:
        """
        A session that logs in but opens nothing adds no set-up time.
        """
        s = self.session()
        s.login()
        s.proto.connectionLost(None)
        self.assertEqual(self.scrape(s.factory)[("netguard_session_setup_seconds_count", ())], 0)

    def test_open_failures(self) -> None:
        """
        A backend that cannot be reached and a service the user may not open are counted
        per service and reason; an unknown name the client sends becomes no label.
        """
        s = self.session(
            {
                "down": ServiceConfig("down", "tcp:host=127.0.0.1:port=1", users=("*",)),
                "admin": ServiceConfig("admin", "builtin:echo", users=("root",)),
            }
        )
        s.login()
        self.assertTrue(s.send(b"OPEN admin")[0].startswith(b"ERR NOT_AUTHORIZED"))
        self.assertTrue(s.send(b"OPEN nosuch")[0].startswith(b"ERR NO_SUCH_SERVICE"))
        self.assertTrue(s.send(b"OPEN down")[0].startswith(b"ERR BACKEND_UNAVAILABLE"))
        values = self.scrape(s.factory)
        failures = "netguard_service_open_failures_total"
        self.assertEqual(values[(failures, (("reason", "backend"), ("service", "down")))], 1)
        self.assertEqual(
            values[(failures, (("reason", "not-authorized"), ("service", "admin")))], 1
        )
        labelled = {dict(labels).get("service") for _, labels in values} - {None}
        self.assertEqual(labelled, {"down", "admin"})

    def test_reload_bounds_label_values(self) -> None:
        """
        After a reload the label values are the new configuration's services.
        """
        s = self.session({"a": ServiceConfig("a", "builtin:echo", users=("*",))})
        values = self.scrape(s.factory)
        self.assertIn(("netguard_service_sessions_total", (("service", "a"),)), values)
        self.assertNotIn(("netguard_service_sessions_total", (("service", "echo"),)), values)

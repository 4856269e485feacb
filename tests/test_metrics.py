"""
Tests for L{netguard.ops.metrics}: the text exposition (names, types, labels and their
escaping, bounds), checked by a small strict parser of the format; the HTTP resource on
Twisted fakes (paths, methods, headers, request bounds, no access log); the listener service
(loopback only, once, stopped); and the C{ops.metrics_listen} configuration key.
"""

from __future__ import annotations

import os
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from netguard.admission import REASONS, Admission, AdmissionPolicy
from netguard.auth.users import UserStore
from netguard.config import ConfigError, describe, describe_defaults, load_config
from netguard.gateway.factory import GatewayFactory
from netguard.ops.metrics import (
    CONTENT_TYPE,
    MAX_BODY_BYTES,
    MAX_LABEL_CHARS,
    MAX_REQUEST_BODY_BYTES,
    MAX_SERIES,
    REQUEST_TIMEOUT,
    MetricsListenFailed,
    MetricsService,
    escape_help,
    escape_label_value,
    format_value,
    is_loopback,
    metric_name,
    metrics_factory,
    render_metrics,
)
from netguard.service import GatewayService
from netguard.stats import Stats

# -- a strict parser of the text format (version 0.0.4), used here and by the integration test

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(
    rf"(?P<name>{_NAME})(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)?\}})? "
    r"(?P<value>[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|Inf|NaN))"
)
_ONE_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_HELP = re.compile(rf"# HELP (?P<name>{_NAME}) (?P<text>(?:[^\\\n]|\\[\\n])*)")
_TYPE = re.compile(rf"# TYPE (?P<name>{_NAME}) (?P<kind>counter|gauge)")

Series = tuple[str, tuple[tuple[str, str], ...]]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def parse_exposition(text: str) -> dict[Series, float]:
    """
    Parse the Prometheus text format strictly: every line is C{# HELP}, C{# TYPE}, another
    comment, or C{name{labels} value}; a sample's family has a C{# TYPE} before it; a
    counter's name ends in C{_total}; no series appears twice; the text ends with a newline.

    @return: the value of each (name, sorted unescaped labels) series.
    @raise ValueError: on the first line that breaks a rule.
    """
    if not text.endswith("\n"):
        raise ValueError("the exposition must end with a newline")
    types: dict[str, str] = {}
    values: dict[Series, float] = {}
    for number, line in enumerate(text[:-1].split("\n"), 1):
        if line.startswith("# HELP "):
            if not _HELP.fullmatch(line):
                raise ValueError(f"line {number}: bad HELP {line!r}")
            continue
        if line.startswith("# TYPE "):
            match = _TYPE.fullmatch(line)
            if match is None or match["name"] in types:
                raise ValueError(f"line {number}: bad or repeated TYPE {line!r}")
            types[match["name"]] = match["kind"]
            continue
        if line.startswith("#"):
            continue
        match = _SAMPLE.fullmatch(line)
        if match is None:
            raise ValueError(f"line {number}: not a sample {line!r}")
        name = match["name"]
        if name not in types:
            raise ValueError(f"line {number}: {name} has no TYPE before it")
        if types[name] == "counter" and not name.endswith("_total"):
            raise ValueError(f"line {number}: counter {name} does not end in _total")
        labels = tuple(
            sorted((k, _unescape(v)) for k, v in _ONE_LABEL.findall(match["labels"] or ""))
        )
        if (name, labels) in values:
            raise ValueError(f"line {number}: repeated series {line!r}")
        values[(name, labels)] = float(match["value"])
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
        figures = figures_for(**{f"c{i:05d}": i for i in range(5000)})
        values = parsed(figures)
        self.assertLessEqual(len(values), MAX_SERIES)
        self.assertIn(b"# netguard: output truncated", render_metrics(figures))

    def test_many_long_names_bounded_in_bytes(self) -> None:
        figures = {f"{i:04d}" + "n" * 500: i for i in range(600)}
        body = render_metrics(figures)
        self.assertLessEqual(len(body), MAX_BODY_BYTES)
        parse_exposition(body.decode())

    def test_known_families_come_first(self) -> None:
        values = parsed(figures_for(**{f"c{i:05d}": i for i in range(5000)}))
        self.assertIn(("netguard_connections_total", ()), values)
        self.assertIn(("netguard_admission_stress", ()), values)

    def test_typical_figures_not_truncated(self) -> None:
        self.assertNotIn(b"truncated", render_metrics(figures_for()))

    @settings(max_examples=200, deadline=None)
    @given(
        st.dictionaries(
            st.text(max_size=40),
            st.one_of(
                st.integers(min_value=0, max_value=2**70),
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

    def test_connections_beyond_the_cap_refused(self) -> None:
        self.connect()
        self.connect()
        self.assertIsNone(self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))

    def test_closed_connection_frees_a_slot(self) -> None:
        first, _ = self.connect()
        self.connect()
        first.connectionLost(None)
        self.assertIsNotNone(self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))

    def test_idle_connection_closed(self) -> None:
        _, transport = self.connect()
        self.clock.advance(REQUEST_TIMEOUT + 1)
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
        self.assertEqual(site.resource.source, service.figures)

    def test_listen_failure_ends_the_start_with_one_line(self) -> None:
        service = self.gateway("tcp:9108:interface=127.0.0.1", BusyMemoryReactor())
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertTrue(str(error).startswith("netguard: cannot listen on metrics endpoint"))

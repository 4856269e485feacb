# -*- test-case-name: tests.test_metrics -*-
"""
The optional Prometheus endpoint: the gateway's counters and gauges in the text exposition
format (version 0.0.4), served by C{twisted.web} on a loopback-only listener
(C{ops.metrics_listen}, off by default).

L{render_metrics} turns the gateway's figures into text; L{MetricsService} serves it on
C{GET /metrics}, with every request bounded and no access log. The listener, the HTTP
answers, the bounds and every metric: C{docs/metrics.md}.
"""

from __future__ import annotations

import io
import platform
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

import netguard
from netguard.addresses import peer_ip
from netguard.admission import OVERLOAD_LAG, OVERLOAD_LOAD, OVERLOAD_MEMORY, REASONS
from netguard.ops.exposition import (
    MAX_NAME_CHARS,
    Family,
    Sample,
    family_text,
    format_value,
    metric_name,
)
from netguard.ops.metrics_connections import (
    BoundedDeadlineFactory,
    DeadlineConnection,
)
from netguard.ops.process_metrics import PROCESS_METRICS, process_figures
from netguard.stats import OPEN_FAILURE_REASONS, SETUP_BUCKETS, HistogramSnapshot

#: The C{Content-Type} of the text exposition format, version 0.0.4.
CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"

#: The only path served.
METRICS_PATH: Final = b"/metrics"

#: The most samples one response carries (room for the per-service families of the most
#: services a configuration may have, 1024, at 7 samples each).
MAX_SERIES: Final = 8192

#: The largest response body; families that would not fit are left out (whole).
MAX_BODY_BYTES: Final = 1 << 20

#: The longest label value, in characters.
MAX_LABEL_CHARS: Final = 128

#: The most open-failure reasons listed per service (the known ones and any others given).
MAX_OPEN_FAILURE_REASONS: Final = 16

#: The largest request body read (and discarded) before the connection is cut.
MAX_REQUEST_BODY_BYTES: Final = 4096

#: Simultaneous connections to the metrics listener; a newcomer past it replaces the one
#: that has waited longest for a request (L{BoundedDeadlineFactory}).
MAX_CONNECTIONS: Final = 8

#: The counters of L{netguard.stats.Stats} and their help texts, in output order.
COUNTERS: Final[tuple[tuple[str, str], ...]] = (
    ("connections", "Connections admitted and served as sessions."),
    ("auth_ok", "Successful authentications."),
    ("auth_fail", "Failed authentications."),
    ("bytes_up", "Bytes relayed from clients to backends (live relays included)."),
    ("bytes_down", "Bytes relayed from backends to clients (live relays included)."),
    ("streams_accepted", "Streams clients opened in multiplexed sessions (SYNs accepted)."),
    ("streams", "Streams of multiplexed sessions that started relaying (OK OPEN)."),
    ("streams_refused", "Streams of multiplexed sessions answered ERR, every code."),
)

#: The per-service counters (keys of a C{services} entry) and their help texts.
SERVICE_COUNTERS: Final[tuple[tuple[str, str], ...]] = (
    ("sessions", "Relays started (OK OPEN), per service."),
    ("bytes_up", "Bytes relayed from clients to the backend, per service (live included)."),
    ("bytes_down", "Bytes relayed from the backend to clients, per service (live included)."),
)

#: The gauges of the admission snapshot and their help texts, in output order.
ADMISSION_GAUGES: Final[tuple[tuple[str, str], ...]] = (
    ("unauthenticated", "Connections still in the line phase (before authentication)."),
    ("relays", "Authenticated connections (the relay pool)."),
    ("lane", "Returning clients (a valid ticket) in the line phase: the lane pool."),
    ("probation", "Connections on probation: admitted only to present a ticket."),
    ("connections", "Live connections of every pool (line phase, lane, relays)."),
    ("active_sources", "Source keys with at least one live connection."),
    ("tracked_sources", "Source keys in the rate table."),
    ("penalised_sources", "Source keys in the penalty table."),
    ("blocked_sources", "Source keys blocked by a penalty now."),
    ("stress", "Admission stress, from 0 (idle) to 1 (line-phase pool full)."),
)

#: The overload reasons, always listed in the C{netguard_admission_overload} state set.
OVERLOAD_REASONS: Final = (OVERLOAD_LOAD, OVERLOAD_LAG, OVERLOAD_MEMORY)

#: Top-level figures rendered by a rule of their own (or deliberately not at all).
_HANDLED: Final = frozenset(
    {name for name, _ in COUNTERS}
    | {"refused", "active", "streams_active", "uptime", "draining", "admission"}
    | {"services", "session_setup", "process"}
)

_REFUSED_PREFIX: Final = "refused."
_STREAM_REFUSED_PREFIX: Final = "streams_refused."
_TRUNCATED: Final = "# netguard: output truncated (bounded)\n"

log = Logger()


class MetricsListenFailed(Exception):
    """
    The metrics listener could not open, or opened on an address that is not loopback.
    """


def _number(value: object) -> int | float | bool | None:
    """
    C{value} if it is a number (or a boolean), else L{None}.
    """
    return value if isinstance(value, bool | int | float) else None


def _count(value: object) -> int | float | bool | None:
    """
    C{value} if it can be a counter's value (a number, not negative, not NaN), else L{None}:
    the series is left out rather than exposed as a counter that goes down.
    """
    number = _number(value)
    return number if number is not None and number >= 0 else None


def _refused_family(figures: Mapping[str, Any]) -> Family:
    """
    C{netguard_refused_total{reason="..."}}: every known reason, plus any other seen.
    """
    counts: dict[str, int | float | bool] = dict.fromkeys(sorted(REASONS), 0)
    seen = sorted(
        key for key in figures if isinstance(key, str) and key.startswith(_REFUSED_PREFIX)
    )
    for key in seen[:MAX_SERIES]:
        value = _count(figures[key])
        if value is not None:
            counts[key[len(_REFUSED_PREFIX) :][:MAX_LABEL_CHARS]] = value
    return Family(
        metric_name("refused", "_total"),
        "counter",
        "Connections refused by admission control, by reason.",
        tuple(Sample(value, (("reason", reason),)) for reason, value in counts.items()),
    )


def _stream_refusals_family(figures: Mapping[str, Any]) -> Family:
    """
    C{netguard_stream_refusals_total{code="..."}}: the streams answered C{ERR}, by code (the
    codes are netguard's own, so the series are bounded by L{netguard.errors.ErrorCode}).
    """
    samples = []
    seen = sorted(
        key for key in figures if isinstance(key, str) and key.startswith(_STREAM_REFUSED_PREFIX)
    )
    for key in seen[:MAX_SERIES]:
        value = _count(figures[key])
        if value is not None:
            code = key[len(_STREAM_REFUSED_PREFIX) :][:MAX_LABEL_CHARS].upper()
            samples.append(Sample(value, (("code", code),)))
    return Family(
        metric_name("stream_refusals", "_total"),
        "counter",
        "Streams of multiplexed sessions answered ERR, by code.",
        tuple(samples),
    )


def _admission_families(snapshot: object) -> list[Family]:
    """
    The gauges of the admission snapshot, and the overload state set.
    """
    if not isinstance(snapshot, Mapping):
        return []
    families = []
    for name, text in ADMISSION_GAUGES:
        value = _number(snapshot.get(name))
        if value is not None:
            families.append(
                Family(metric_name("admission_" + name), "gauge", text, (Sample(value),))
            )
    current = snapshot.get("overload")
    reasons = list(OVERLOAD_REASONS)
    if isinstance(current, str) and current not in reasons:
        reasons.append(current[:MAX_LABEL_CHARS])
        current = current[:MAX_LABEL_CHARS]
    families.append(
        Family(
            metric_name("admission_overload"),
            "gauge",
            "1 for the overload reason in force (every new connection is refused), else 0.",
            tuple(Sample(reason == current, (("reason", reason),)) for reason in reasons),
        )
    )
    return families


def _other_families(figures: Mapping[str, Any], taken: set[str]) -> list[Family]:
    """
    Figures this module does not know: integers as counters, floats and booleans as gauges.
    """
    families = []
    names = sorted(
        key
        for key in figures
        if isinstance(key, str)
        and key not in _HANDLED
        and not key.startswith((_REFUSED_PREFIX, _STREAM_REFUSED_PREFIX))
    )
    for key in names[:MAX_SERIES]:
        value = _number(figures[key])
        if value is None:
            continue
        counter = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        name = metric_name(key, "_total" if counter else "")
        if name in taken:
            continue
        taken.add(name)
        families.append(
            Family(
                name,
                "counter" if counter else "gauge",
                f"netguard figure {key[:MAX_NAME_CHARS]}",
                (Sample(value),),
            )
        )
    return families


def metric_families(figures: Mapping[str, Any]) -> list[Family]:
    """
    The metric families for C{figures}, in output order (each listed in C{docs/metrics.md}).

    A figure this module does not know is still exposed, so a new counter needs no change
    here: a top-level integer is taken for a counter (L{netguard.stats.Stats} holds only
    counters, apart from C{active}), a float for a gauge, a boolean for a 0/1 gauge; other
    values are skipped.

    @param figures: what C{GatewayService.metrics_figures()} returns: the
        L{netguard.stats.Stats} snapshot plus C{uptime}, C{draining}, C{admission} (the
        admission snapshot), C{services} (L{netguard.stats.Stats.services_snapshot}) and
        C{session_setup} (a L{HistogramSnapshot}); and C{process} (L{process_figures}).
    @return: the families; the known ones always, the others when their value is a number.
    """
    families = [
        Family(metric_name(name, "_total"), "counter", text, (Sample(value),))
        for name, text in COUNTERS
        if (value := _count(figures.get(name, 0))) is not None
    ]
    families.append(_refused_family(figures))
    families.append(_stream_refusals_family(figures))
    gauges = (
        ("active", "active", "Live sessions."),
        ("streams_active", "streams_active", "Live relaying streams of multiplexed sessions."),
        ("uptime_seconds", "uptime", "Seconds since the gateway started."),
        ("draining", "draining", "1 while a graceful shutdown drains the sessions, else 0."),
    )
    for name, key, text in gauges:
        value = _number(figures.get(key))
        if value is not None:
            families.append(Family(metric_name(name), "gauge", text, (Sample(value),)))
    families += _admission_families(figures.get("admission"))
    families.append(_build_family())
    families.append(_setup_family(figures.get("session_setup")))
    families += _process_families(figures.get("process"))
    families += _service_families(figures.get("services"))
    families += _other_families(figures, {family.name for family in families})
    return families


@cache
def build_info() -> tuple[tuple[str, str], ...]:
    """
    The versions this process runs: netguard, Python, Twisted and the OpenSSL that
    pyOpenSSL (and so every TLS connection of netguard) uses.

    @return: the labels of C{netguard_build_info}, in output order.
    """
    import twisted

    try:
        from OpenSSL.SSL import OPENSSL_VERSION, OpenSSL_version

        openssl = OpenSSL_version(OPENSSL_VERSION).decode("ascii", "replace")
    except Exception:  # noqa: BLE001 - no pyOpenSSL: say so rather than fail a scrape
        openssl = "unknown"
    return (
        ("version", str(netguard.__version__)),
        ("python", platform.python_version()),
        ("twisted", str(twisted.__version__)),
        ("openssl", openssl[:MAX_LABEL_CHARS]),
    )


def _build_family() -> Family:
    return Family(
        metric_name("build_info"),
        "gauge",
        "Always 1; the labels name the versions of netguard, Python, Twisted and OpenSSL.",
        (Sample(1, build_info()),),
    )


def _setup_family(snapshot: object) -> Family:
    """
    C{netguard_session_setup_seconds}: cumulative buckets, C{+Inf}, sum and count (empty
    with the standard buckets when the figures have none).
    """
    if not isinstance(snapshot, HistogramSnapshot):
        snapshot = HistogramSnapshot(tuple((bound, 0) for bound in SETUP_BUCKETS), 0, 0.0)
    samples = [
        Sample(count, (("le", format_value(float(bound))),), "_bucket")
        for bound, count in snapshot.buckets
    ]
    samples += [
        Sample(snapshot.count, (("le", "+Inf"),), "_bucket"),
        Sample(snapshot.total, (), "_sum"),
        Sample(snapshot.count, (), "_count"),
    ]
    return Family(
        metric_name("session_setup_seconds"),
        "histogram",
        "Seconds from accepting a connection to its relay starting (OK OPEN).",
        tuple(samples),
    )


def _service_families(services: object) -> list[Family]:
    """
    The per-service families, one sample per service (and per reason for open failures).
    """
    if not isinstance(services, Mapping):
        return []
    names = sorted(name for name in services if isinstance(name, str))[:MAX_SERIES]
    entries = [
        (name[:MAX_LABEL_CHARS], services[name])
        for name in names
        if isinstance(services[name], Mapping)
    ]

    def samples(key: str) -> tuple[Sample, ...]:
        return tuple(
            Sample(value, (("service", name),))
            for name, figures in entries
            if (value := _count(figures.get(key, 0))) is not None
        )

    families = [
        Family(metric_name("service_" + key, "_total"), "counter", text, samples(key))
        for key, text in SERVICE_COUNTERS
    ]
    failures = []
    for name, figures in entries:
        by_reason = figures.get("open_failures")
        by_reason = by_reason if isinstance(by_reason, Mapping) else {}
        reasons = {*OPEN_FAILURE_REASONS, *(r for r in by_reason if isinstance(r, str))}
        for reason in sorted(reasons)[:MAX_OPEN_FAILURE_REASONS]:
            value = _count(by_reason.get(reason, 0))
            if value is not None:
                failures.append(
                    Sample(value, (("service", name), ("reason", reason[:MAX_LABEL_CHARS])))
                )
    families.append(
        Family(
            metric_name("service_open_failures", "_total"),
            "counter",
            "OPENs of a configured service that did not start a relay, by service and reason.",
            tuple(failures),
        )
    )
    families.append(
        Family(
            metric_name("service_relays"), "gauge", "Live relays, per service.", samples("relays")
        )
    )
    return families


def _process_families(figures: object) -> list[Family]:
    """
    The C{process_*} families for what L{process_figures} could read.
    """
    if not isinstance(figures, Mapping):
        return []
    families = []
    for name, kind, text in PROCESS_METRICS:
        value = _number(figures.get(name))
        if value is not None:
            families.append(Family("process_" + name, kind, text, (Sample(value),)))
    return families


def render_metrics(figures: Mapping[str, Any]) -> bytes:
    """
    The Prometheus text exposition (version 0.0.4) of C{figures}.

    At most L{MAX_SERIES} samples and L{MAX_BODY_BYTES} bytes: a family that would pass
    either bound is left out whole, with every family after it, and a comment line says so.

    @param figures: see L{metric_families}.
    @return: UTF-8 text, one line per C{# HELP}, C{# TYPE} and sample, ending with a newline.
    """
    parts: list[bytes] = []
    size = len(_TRUNCATED)
    series = 0
    for family in metric_families(figures):
        data = family_text(family).encode("utf-8")
        series += len(family.samples)
        size += len(data)
        if series > MAX_SERIES or size > MAX_BODY_BYTES:
            parts.append(_TRUNCATED.encode("ascii"))
            break
        parts.append(data)
    return b"".join(parts)


class MetricsResource(Resource):
    """
    The whole metrics web site: C{GET /metrics} renders the figures, everything else is
    refused with a short plain-text answer.
    """

    isLeaf = True

    def __init__(
        self,
        source: Callable[[], Mapping[str, Any]],
        process: Callable[[], Mapping[str, float]] = process_figures,
    ) -> None:
        """
        @param source: returns the current figures (C{GatewayService.metrics_figures}).
        @param process: returns the process's figures (L{process_figures}), added to the
            figures as C{process} at each scrape.
        """
        super().__init__()
        self.source = source
        self.process = process

    def render(self, request: Any) -> bytes:
        """
        Answer one request.

        @param request: the L{twisted.web.server.Request}.
        @return: the body.
        """
        request.setHeader(b"server", b"netguard")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if request.path != METRICS_PATH:
            return _plain(request, 404, b"not found; the metrics are at /metrics\n")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _plain(request, 405, b"method not allowed; use GET\n")
        try:
            figures = dict(self.source())
            figures["process"] = self.process()
            body = render_metrics(figures)
        except Exception:  # noqa: BLE001 - one bad scrape must not take the endpoint down
            log.failure("metrics rendering failed", Failure(), event="metrics.error")
            return _plain(request, 500, b"internal error\n")
        request.setHeader(b"content-type", CONTENT_TYPE)
        return body


def _plain(request: Any, code: int, text: bytes) -> bytes:
    """
    Set a status code and a plain-text content type; return C{text}.
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return text


class MetricsRequest(Request):
    """
    A request whose body (a scrape has none) is counted and dropped, never kept in memory
    or spooled to a temporary file; past L{MAX_REQUEST_BODY_BYTES} the connection is cut.
    """

    _body_bytes = 0

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        Tell the connection a complete request arrived (its deadline stops) and when the
        answer is done (the next request's deadline starts), then answer.
        """
        connection = getattr(self.channel, "transport", None)
        if isinstance(connection, DeadlineConnection):
            connection.request_received()
            self.notifyFinish().addBoth(lambda _: connection.answer_done())
        super().requestReceived(command, path, version)

    def gotLength(self, length: int | None) -> None:
        """
        Refuse at once a declared body longer than the bound; keep none of it either way.
        """
        self.content = io.BytesIO()  # type: ignore[assignment]  # Twisted declares None
        if length is not None and length > MAX_REQUEST_BODY_BYTES:
            self._cut()

    def handleContentChunk(self, data: bytes) -> None:
        """
        Count the body's bytes and drop them; cut the connection past the bound.
        """
        self._body_bytes += len(data)
        if self._body_bytes > MAX_REQUEST_BODY_BYTES:
            self._cut()

    def _cut(self) -> None:
        """
        Drop the connection now, without answering.
        """
        transport: Any = self.channel.transport
        if transport is not None:
            transport.abortConnection()


class OneRequestChannel(HTTPChannel):
    """
    An HTTP/1.1 connection that carries one request: every answer says C{Connection: close}
    and the connection closes once it is written, so requests pipelined behind the first
    are never read or answered. At most one answer is buffered per connection, however
    many requests a client sends without reading.
    """

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        """
        Never keep the connection: say so in the answer's headers.

        @param request: the request just received.
        @param version: its HTTP version.
        @return: C{False}.
        """
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        return False


class MetricsSite(Site):
    """
    A L{Site} of L{OneRequestChannel}s, without an access log (and without its
    once-a-second timestamp timer).
    """

    noisy = False
    protocol = OneRequestChannel  # type: ignore[assignment]  # plain HTTP/1.1, no HTTP/2

    def startFactory(self) -> None:
        """
        Start without opening an access log.
        """

    def log(self, request: Any) -> None:
        """
        Log nothing: a scrape every few seconds is not an event.
        """


def metrics_factory(
    source: Callable[[], Mapping[str, Any]],
    reactor: Any,
    max_connections: int = MAX_CONNECTIONS,
) -> BoundedDeadlineFactory:
    """
    The protocol factory of the metrics listener.

    @param source: returns the current figures.
    @param reactor: the reactor (request deadlines).
    @param max_connections: simultaneous connections served.
    @return: a factory serving L{MetricsResource} over HTTP/1.1, each request within
        L{netguard.ops.metrics_connections.REQUEST_DEADLINE} seconds.
    """
    site = MetricsSite(
        MetricsResource(source),
        requestFactory=MetricsRequest,
        timeout=None,
        reactor=reactor,
    )
    site.displayTracebacks = False
    return BoundedDeadlineFactory(site, max_connections, reactor)


def is_loopback(address: object) -> bool:
    """
    Whether a listening port's address is a loopback IP address (C{127.0.0.0/8}, C{::1},
    or an IPv4-mapped loopback address).

    @param address: what C{IListeningPort.getHost()} returned.
    @return: C{False} for anything else, including unix sockets and all-interfaces binds.
    """
    ip = peer_ip(getattr(address, "host", None))
    return ip is not None and ip.is_loopback


class MetricsService(Service):
    """
    The metrics listener as a child service: listens when started (before privileges are
    dropped, like the gateway's own listeners), stops listening when stopped.

    @ivar port: the listening port while running, else L{None}.
    """

    def __init__(
        self,
        reactor: Any,
        description: str,
        source: Callable[[], Mapping[str, Any]],
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """
        @param reactor: the reactor to listen with.
        @param description: a server endpoint string on a loopback interface (checked by
            the configuration, and again once bound).
        @param source: returns the current figures.
        @param max_connections: simultaneous connections served.
        """
        self.reactor = reactor
        self.description = description
        self.factory = metrics_factory(source, reactor, max_connections)
        self.port: Any = None

    def privilegedStartService(self) -> None:
        """
        Listen before C{twistd} drops privileges (C{--uid}).
        """
        self.listen()
        super().privilegedStartService()

    def startService(self) -> None:
        """
        Listen (unless already done with privileges) and run.
        """
        self.listen()
        super().startService()

    def listen(self) -> None:
        """
        Open the metrics listener (once).

        @raise MetricsListenFailed: it cannot open, did not open at once, or its bound
            address is not loopback (then it is closed again before anything is served).
        """
        if self.port is not None:
            return
        results: list[Any] = []
        failures: list[Failure] = []
        try:
            listening = serverFromString(self.reactor, self.description).listen(self.factory)
        except Exception as error:  # noqa: BLE001 - parsers raise anything
            raise MetricsListenFailed(
                f"cannot listen on metrics endpoint {self.description}: {error}"
            ) from None
        listening.addCallbacks(results.append, failures.append)
        if failures:
            raise MetricsListenFailed(
                f"cannot listen on metrics endpoint {self.description}: {failures[0].value}"
            )
        if not results:
            listening.cancel()
            listening.addErrback(lambda _: None)
            raise MetricsListenFailed(f"metrics endpoint {self.description} did not listen")
        port = results[0]
        if not is_loopback(port.getHost()):
            port.stopListening()
            raise MetricsListenFailed(
                f"metrics endpoint {self.description} is not on a loopback address; refused"
            )
        self.port = port
        log.info(
            "metrics on http://{listener}/metrics",
            event="metrics.listen",
            listener=_host_port(port.getHost()),
        )

    def stopService(self) -> Deferred[None] | None:
        """
        Stop listening.
        """
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        return maybeDeferred(port.stopListening)


def _host_port(address: Any) -> str:
    """
    C{host:port}, with brackets around an IPv6 host.
    """
    host = str(address.host)
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"

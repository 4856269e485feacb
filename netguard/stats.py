# -*- test-case-name: tests.test_stats -*-
"""
Cumulative counters and live gauges of one gateway process (L{Stats}), read by the
heartbeat, C{netguard ctl status} and the metrics endpoint; how they appear there:
C{docs/metrics.md}.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

#: The upper bounds (seconds) of the set-up time histogram's buckets, C{+Inf} implied. They
#: span a local login (a few ms: SCRAM costs the client about 1 ms at 4096 iterations) to a
#: slow remote one near the default handshake deadline, roughly three buckets a decade.
SETUP_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

#: Why an C{OPEN} of a configured service did not start a relay (C{open_failed} reasons).
OPEN_BACKEND: Final = "backend"
OPEN_NOT_AUTHORIZED: Final = "not-authorized"
OPEN_PEER_CHECKS: Final = "peer-checks"
OPEN_FAILURE_REASONS: Final = (OPEN_BACKEND, OPEN_NOT_AUTHORIZED, OPEN_PEER_CHECKS)

#: A meter: the bytes a live relay has carried so far, (client to backend, backend to client).
Meter = Callable[[], tuple[int, int]]


class Histogram:
    """
    A cumulative histogram with fixed bucket bounds, as Prometheus exposes one.

    @ivar bounds: the upper bounds, increasing, without C{+Inf}.
    @ivar count: observations so far.
    @ivar total: their sum.
    """

    def __init__(self, bounds: Iterable[float]) -> None:
        """
        @param bounds: finite upper bounds, strictly increasing.
        @raise ValueError: if they are not.
        """
        self.bounds = tuple(float(bound) for bound in bounds)
        if any(not math.isfinite(b) for b in self.bounds) or any(
            a >= b for a, b in zip(self.bounds, self.bounds[1:], strict=False)
        ):
            raise ValueError("histogram bounds must be finite and strictly increasing")
        self._counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        """
        Count one observation. A negative or non-finite value (a clock that stepped back)
        counts as 0, so that the sum never goes down.
        """
        if not math.isfinite(value) or value < 0:
            value = 0.0
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def snapshot(self) -> HistogramSnapshot:
        """
        The cumulative counts: for each bound, the observations less than or equal to it.
        """
        cumulative = []
        running = 0
        for bucket in self._counts[:-1]:
            running += bucket
            cumulative.append(running)
        return HistogramSnapshot(
            tuple(zip(self.bounds, cumulative, strict=True)), self.count, self.total
        )


@attrs.frozen
class HistogramSnapshot:
    """
    A histogram at one moment.

    @ivar buckets: (upper bound, observations <= bound), increasing; C{+Inf} is L{count}.
    @ivar count: every observation.
    @ivar total: their sum.
    """

    buckets: tuple[tuple[float, int], ...]
    count: int
    total: float


@attrs.define
class _Live:
    """
    One relay in progress: its service and its meter.
    """

    service: str
    meter: Meter


class Stats:
    """
    Counters that only grow (connections, refusals by code, authentications, bytes), the
    number of live sessions, per-service figures and the set-up time histogram.

    Besides the plain counters (L{count}), it follows the relays themselves:

      - B{live bytes}: a relay that starts (L{relay_started}) registers a I{meter}, a
        callable giving the bytes relayed so far each way; a snapshot adds what the live
        meters read to the C{bytes_up}/C{bytes_down} counters of the sessions that have
        closed. The relay's hot path pays nothing: meters are read only when someone asks.
        When the session closes (L{session_closed}), its final counts are added to the
        counters in the same step as its meter is dropped, so the sums never go down (a
        meter must only grow, and its last reading must not exceed the final counts);
      - B{per service}: sessions opened, bytes each way, open failures by reason, live
        relays, keyed by the service's name as configured (L{set_services}): names a client
        sends never become keys, and names no longer configured are forgotten once their
        last relay has closed, so the number of keys stays bounded by the configuration;
      - B{set-up time}: from accept to the relay starting (C{OK OPEN}), in a L{Histogram}
        with the fixed buckets L{SETUP_BUCKETS}.
    """

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.active = 0
        self.streams_active = 0
        self.setup_seconds = Histogram(SETUP_BUCKETS)
        self._live: dict[Any, _Live] = {}
        self._services: dict[str, Counter[str]] = {}
        self._configured: frozenset[str] | None = None

    def count(self, name: str, amount: int = 1) -> None:
        """
        Add C{amount} to counter C{name}.
        """
        self.counters[name] += amount

    # -- relays ---------------------------------------------------------------------------

    def set_services(self, names: Iterable[str]) -> None:
        """
        The services configured now (at start and on each reload): each has its figures,
        and a name no longer configured is forgotten once it has no live relay.
        """
        self._configured = frozenset(names)
        for name in self._configured:
            self._services.setdefault(name, Counter())
        for name in list(self._services):
            self._prune(name)

    def relay_started(self, key: Any, service: str, setup: float, meter: Meter) -> None:
        """
        A session's relay started (C{OK OPEN} was sent).

        @param key: the session (anything hashable, unique while it lives).
        @param service: the configured name of the service opened.
        @param setup: seconds from accept to now.
        @param meter: reads the bytes relayed so far; only grows.
        """
        self._live[key] = _Live(service, meter)
        self._service(service)["sessions"] += 1
        self.setup_seconds.observe(setup)

    def stream_started(self, key: Any, service: str, meter: Meter) -> None:
        """
        A stream of a multiplexed session started relaying (C{OK OPEN} was sent on it):
        counted as a stream (C{streams}, per service C{streams}), not as a session; its
        bytes are read from C{meter} while it lives, and its end is L{session_closed} then
        L{stream_ended}.

        @param key: the stream (anything hashable, unique while it lives).
        @param service: the configured name of the service opened.
        @param meter: reads the bytes relayed so far; only grows.
        """
        self._live[key] = _Live(service, meter)
        self._service(service)["streams"] += 1
        self.counters["streams"] += 1
        self.streams_active += 1

    def stream_ended(self) -> None:
        """
        A stream counted by L{stream_started} has ended (after its L{session_closed}).
        """
        self.streams_active -= 1

    def session_closed(self, key: Any, service: str | None, up: int, down: int) -> None:
        """
        A session ended with its final byte counts: add them to the counters and drop its
        meter, in one step.

        @param key: as given to L{relay_started} (a session that never relayed is fine).
        @param service: the service it opened, or L{None}.
        @param up: bytes from the client for the backend.
        @param down: bytes from the backend for the client.
        """
        live = self._live.pop(key, None)
        self.count("bytes_up", up)
        self.count("bytes_down", down)
        name = live.service if live is not None else service
        if name is not None and (live is not None or name in self._services):
            counters = self._service(name)
            counters["bytes_up"] += up
            counters["bytes_down"] += down
            self._prune(name)

    def open_failed(self, service: str, reason: str) -> None:
        """
        An C{OPEN} of configured service C{service} did not start a relay.

        @param reason: one of L{OPEN_FAILURE_REASONS}.
        """
        if self._configured is None or service in self._configured:
            self._service(service)[f"open_failures.{reason}"] += 1

    def live_bytes(self) -> tuple[int, int]:
        """
        The bytes the live relays have carried so far, (up, down).
        """
        up = down = 0
        for live in self._live.values():
            live_up, live_down = live.meter()
            up += live_up
            down += live_down
        return up, down

    # -- reading ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, int]:
        """
        A copy of every counter, the bytes of live relays included, plus the C{active} gauge.
        """
        figures = dict(self.counters)
        if self._live:
            up, down = self.live_bytes()
            figures["bytes_up"] = figures.get("bytes_up", 0) + up
            figures["bytes_down"] = figures.get("bytes_down", 0) + down
        figures["active"] = self.active
        if "streams" in self.counters:
            figures["streams_active"] = self.streams_active
        return figures

    def services_snapshot(self) -> dict[str, dict[str, Any]]:
        """
        Per service (sorted by name): C{sessions}, C{bytes_up} and C{bytes_down} (live
        relays included), C{relays} (live now) and C{open_failures} (by reason, every
        reason present).
        """
        result: dict[str, dict[str, Any]] = {}
        for name in sorted(self._services):
            counters = self._services[name]
            result[name] = {
                "sessions": counters["sessions"],
                "bytes_up": counters["bytes_up"],
                "bytes_down": counters["bytes_down"],
                "relays": 0,
                **({"streams": counters["streams"]} if counters["streams"] else {}),
                "open_failures": {
                    reason: counters[f"open_failures.{reason}"]
                    for reason in sorted({*OPEN_FAILURE_REASONS, *_reasons(counters)})
                },
            }
        for live in self._live.values():
            figures = result.get(live.service)
            if figures is None:
                continue
            up, down = live.meter()
            figures["bytes_up"] += up
            figures["bytes_down"] += down
            figures["relays"] += 1
        return result

    # -- internals --------------------------------------------------------------------------

    def _service(self, name: str) -> Counter[str]:
        counters = self._services.get(name)
        if counters is None:
            counters = self._services[name] = Counter()
        return counters

    def _prune(self, name: str) -> None:
        """
        Forget C{name} if it is no longer configured and has no live relay.
        """
        if self._configured is None or name in self._configured:
            return
        if any(live.service == name for live in self._live.values()):
            return
        self._services.pop(name, None)


def _reasons(counters: Counter[str]) -> list[str]:
    prefix = "open_failures."
    return [key[len(prefix) :] for key in counters if key.startswith(prefix)]

# -*- test-case-name: tests.test_overload -*-
"""
Overload signals for load shedding: system load average, event-loop lag and process memory.

L{OverloadSettings} holds the thresholds (C{[overload]} in C{docs/operating.md}).
L{OverloadMonitor} samples the signals on a L{LoopingCall} and tells L{netguard.admission}
to put new connections on probation (C{overload-load}, C{overload-lag}, C{overload-memory}:
only a returning client's valid ticket gets one in) while one is over its threshold, much as
xinetd's C{max_load} refuses them for the load average. Each signal clears only
once it is back under its threshold by a margin (hysteresis), so the gate does not flap.

Event-loop lag is how late the sampling tick itself runs: a reactor busy with a flood (or
blocked by a slow call) fires its timers late, which is the most direct measure of "too busy to
serve anyone well". It needs no system interface and works everywhere.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from netguard.admission import OVERLOAD_LAG, OVERLOAD_LOAD, OVERLOAD_MEMORY, TimeSource

#: Default event-loop lag threshold, seconds.
DEFAULT_MAX_LAG = 0.5

#: Bytes in a MiB (C{max_rss_mb} is configured in MiB, the probe reads bytes).
MIB = 2**20


def _positive_or_none(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be positive or None, not {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@attrs.frozen(kw_only=True)
class OverloadSettings:
    """
    When the gateway sheds load (C{[overload]}): while one threshold is exceeded, new
    connections go on probation and, unless they present a valid returning-client ticket in
    time, are refused with C{ERR BUSY overload-*}; the lane and established sessions are
    never touched. L{None} turns a signal off.

    @ivar max_load: one-minute load average (like xinetd's C{max_load}); off by default
        because it depends on the machine (L{recommended_max_load} gives twice the CPU
        count, a sensible start).
    @ivar max_lag: event-loop lag in seconds: how late a timer fires (default 0.5).
    @ivar max_rss_mb: resident memory of the process, in MiB; off by default.
    @ivar interval: seconds between two measurements (default 1).
    """

    max_load: float | None = attrs.field(default=None, validator=_positive_or_none)
    max_lag: float | None = attrs.field(default=DEFAULT_MAX_LAG, validator=_positive_or_none)
    max_rss_mb: float | None = attrs.field(default=None, validator=_positive_or_none)
    interval: float = attrs.field(default=1.0, validator=_positive)

    @property
    def max_rss(self) -> int | None:
        """
        C{max_rss_mb} in bytes, or L{None} when off.
        """
        return None if self.max_rss_mb is None else int(self.max_rss_mb * MIB)


def read_loadavg() -> float:
    """
    The system's one-minute load average (C{os.getloadavg}).

    @return: the load average.
    @raise OSError: where the platform cannot tell.
    """
    return float(os.getloadavg()[0])


def recommended_max_load(cpus: int | None = None) -> float:
    """
    A sensible C{max_load}: twice the number of CPUs. Load is machine-dependent (a run queue
    of 8 is busy on 2 CPUs and idle on 32), so the monitor's default is off; this is the value
    the documentation recommends.

    @param cpus: the CPU count; by default C{os.cpu_count()} (1 if unknown).
    @return: the recommended threshold.
    """
    count = cpus if cpus is not None else (os.cpu_count() or 1)
    return 2.0 * count


def read_rss_bytes(statm: str = "/proc/self/statm") -> int:
    """
    This process's resident set size in bytes.

    On Linux the second field of C{/proc/self/statm} (resident pages) times the page size: the
    current RSS, cheap to read. Elsewhere C{resource.getrusage} gives only the I{peak} RSS
    (C{ru_maxrss}: KiB on Linux, bytes on macOS), which never goes down: a memory threshold then
    stays tripped once reached, erring on the safe side.

    @param statm: the statm file (a parameter for tests).
    @return: bytes.
    """
    try:
        with open(statm, "rb") as handle:
            fields = handle.read(256).split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class Scheduler(TimeSource, Protocol):
    """
    The part of C{IReactorTime} the monitor needs: a reactor, or a
    L{twisted.internet.task.Clock} in tests.
    """

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """
        Call C{callable} after C{delay} seconds.
        """
        ...


class OverloadSink(Protocol):
    """
    What the monitor drives: L{netguard.admission.Admission} provides it.
    """

    def set_overload(self, reason: str | None) -> None:
        """
        Start (a reason) or stop (L{None}) shedding new connections.
        """


class OverloadMonitor:
    """
    Samples load, lag and memory every C{interval} and sets or clears the admission overload.

    A signal turns on when its reading exceeds its threshold and off when the reading is at or
    below C{threshold * (1 - hysteresis)}. While several are on, the reason reported is the
    first in the order load, lag, memory. A probe that fails counts as not overloaded (a
    broken probe must not lock every client out) and is logged.

    @ivar settings: the thresholds and interval it was given; C{max_load}, C{max_lag},
        C{max_rss} (in bytes) and C{interval} are read from them.
    @ivar last_load: the last load reading, or L{None}.
    @ivar last_lag: the last lag reading in seconds (always measured, even with no threshold).
    @ivar last_rss: the last RSS reading in bytes, or L{None}.
    @ivar reason: the overload reason this monitor set, or L{None}.
    """

    log = Logger()

    def __init__(
        self,
        clock: Scheduler,
        admission: OverloadSink,
        settings: OverloadSettings = OverloadSettings(),
        *,
        hysteresis: float = 0.1,
        load_probe: Callable[[], float] = read_loadavg,
        rss_probe: Callable[[], int] = read_rss_bytes,
    ) -> None:
        """
        @param clock: the reactor (a L{twisted.internet.task.Clock} in tests).
        @param admission: what to tell.
        @param settings: the thresholds and the interval (by default only the event-loop
            lag, 0.5 s, sampled every second).
        @param hysteresis: the fraction under a threshold a reading must fall to clear.
        @param load_probe: returns the load average.
        @param rss_probe: returns the RSS in bytes.
        @raise ValueError: for a hysteresis outside [0, 1).
        """
        if not 0.0 <= hysteresis < 1.0:
            raise ValueError(f"hysteresis must be within [0, 1), not {hysteresis!r}")
        # Typed loosely: LoopingCall wants an IReactorTime, which mypy cannot match.
        self.clock: Any = clock
        self.admission = admission
        self.settings = settings
        self.max_load = settings.max_load
        self.max_lag = settings.max_lag
        self.max_rss = settings.max_rss
        self.interval = float(settings.interval)
        self.hysteresis = hysteresis
        self.load_probe = load_probe
        self.rss_probe = rss_probe
        self.last_load: float | None = None
        self.last_lag = 0.0
        self.last_rss: int | None = None
        self.reason: str | None = None
        self._on: dict[str, bool] = {
            OVERLOAD_LOAD: False,
            OVERLOAD_LAG: False,
            OVERLOAD_MEMORY: False,
        }
        self._expected = 0.0
        self._call: LoopingCall | None = None

    @property
    def running(self) -> bool:
        """
        Whether the monitor is sampling.
        """
        return self._call is not None and self._call.running

    def start(self) -> None:
        """
        Start sampling; the first sample is taken one interval from now. Idempotent.
        """
        if self.running:
            return
        call = LoopingCall(self._tick)
        call.clock = self.clock
        self._call = call
        self._expected = self.clock.seconds() + self.interval
        call.start(self.interval, now=False).addErrback(
            lambda failure: self.log.failure(
                "overload monitor stopped", failure, event="overload.monitor_error"
            )
        )

    def stop(self) -> None:
        """
        Stop sampling and lift any overload this monitor set. Idempotent.
        """
        if self._call is not None and self._call.running:
            self._call.stop()
        self._call = None
        for name in self._on:
            self._on[name] = False
        self._publish()

    def _next_expected(self, now: float) -> float:
        """
        When the L{LoopingCall} will schedule the next tick: the next interval boundary counted
        from its start (it skips boundaries missed while the reactor was busy).
        """
        start = self._call.starttime if self._call is not None else None
        if start is None:
            return now + self.interval
        until = self.interval - ((now - start) % self.interval)
        if now + until == now:
            until = self.interval
        return now + until

    def _probe(self, name: str, probe: Callable[[], Any]) -> Any:
        try:
            return probe()
        except Exception as error:
            self.log.warn(
                "overload probe {probe} failed: {error}",
                event="overload.probe_error",
                probe=name,
                error=repr(error),
            )
            return None

    def _judge(self, reason: str, value: float | None, limit: float | None) -> None:
        if limit is None or value is None:
            self._on[reason] = False
        elif self._on[reason]:
            self._on[reason] = value > limit * (1.0 - self.hysteresis)
        else:
            self._on[reason] = value > limit

    def _tick(self) -> None:
        """
        Take one sample of each signal and update the admission gate.
        """
        now = self.clock.seconds()
        self.last_lag = max(0.0, now - self._expected)
        self._expected = self._next_expected(now)
        if self.max_load is not None:
            load = self._probe("load", self.load_probe)
            self.last_load = None if load is None else float(load)
        if self.max_rss is not None:
            rss = self._probe("rss", self.rss_probe)
            self.last_rss = None if rss is None else int(rss)
        self._judge(OVERLOAD_LOAD, self.last_load, self.max_load)
        self._judge(OVERLOAD_LAG, self.last_lag, self.max_lag)
        self._judge(OVERLOAD_MEMORY, self.last_rss, self.max_rss)
        self._publish()

    def _publish(self) -> None:
        reason = next((name for name, on in self._on.items() if on), None)
        if reason == self.reason:
            return
        previous, self.reason = self.reason, reason
        self.admission.set_overload(reason)
        if reason is None:
            self.log.info(
                "overload over (was {previous})", event="overload.off", previous=previous
            )
        else:
            self.log.warn(
                "overload: {reason} (load {load}, lag {lag:.3f}s, rss {rss}); "
                "new connections on probation",
                event="overload.on",
                reason=reason,
                load=self.last_load,
                lag=self.last_lag,
                rss=self.last_rss,
            )

    def snapshot(self) -> dict[str, Any]:
        """
        The last readings and the reason in force, for the heartbeat.

        @return: C{load}, C{lag}, C{rss}, C{overload}.
        """
        return {
            "load": self.last_load,
            "lag": self.last_lag,
            "rss": self.last_rss,
            "overload": self.reason,
        }

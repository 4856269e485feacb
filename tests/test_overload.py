"""
Tests for L{netguard.ops.overload}: the probes, and L{OverloadMonitor} driven by
L{task.Clock} with fake probes (lag is made by jumping the clock).
"""

from __future__ import annotations

import os
import random

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial import unittest

from netguard.admission import (
    OVERLOAD_LAG,
    OVERLOAD_LOAD,
    OVERLOAD_MEMORY,
    Admission,
    AdmissionPolicy,
    Refusal,
)
from netguard.ops.overload import (
    DEFAULT_MAX_LAG,
    MIB,
    OverloadMonitor,
    OverloadSettings,
    read_loadavg,
    read_rss_bytes,
    recommended_max_load,
)


class ProbeTests(unittest.TestCase):
    def test_loadavg(self) -> None:
        self.assertGreaterEqual(read_loadavg(), 0.0)

    def test_rss_is_plausible(self) -> None:
        rss = read_rss_bytes()
        self.assertGreater(rss, 1 << 20)
        self.assertLess(rss, 1 << 40)

    def test_rss_from_statm(self) -> None:
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("1000 250 30 4 0 100 0\n")
        self.assertEqual(read_rss_bytes(path), 250 * os.sysconf("SC_PAGE_SIZE"))

    def test_rss_fallback_when_statm_missing(self) -> None:
        self.assertGreater(read_rss_bytes(self.mktemp()), 0)

    def test_rss_fallback_when_statm_garbage(self) -> None:
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("nonsense\n")
        self.assertGreater(read_rss_bytes(path), 0)

    def test_recommended_max_load(self) -> None:
        self.assertEqual(recommended_max_load(4), 8.0)
        self.assertGreaterEqual(recommended_max_load(), 2.0)


class FakeProbe:
    """
    Returns the value it is set to, and counts calls.
    """

    def __init__(self, value: float) -> None:
        self.value = value
        self.calls = 0
        self.error: Exception | None = None

    def __call__(self) -> float:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.value


class MonitorTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(500.0)
        self.admission = Admission(AdmissionPolicy(), self.clock, random.Random(0))
        self.load = FakeProbe(0.5)
        self.rss = FakeProbe(100)

    def monitor(self, **kwargs: object) -> OverloadMonitor:
        monitor = OverloadMonitor(
            self.clock,
            self.admission,
            OverloadSettings(**kwargs),  # type: ignore[arg-type]
            load_probe=self.load,
            rss_probe=self.rss,  # type: ignore[arg-type]
        )
        monitor.start()
        self.addCleanup(monitor.stop)
        return monitor

    def test_defaults(self) -> None:
        monitor = OverloadMonitor(self.clock, self.admission)
        self.assertEqual(
            (monitor.max_load, monitor.max_lag, monitor.max_rss, monitor.interval),
            (None, DEFAULT_MAX_LAG, None, 1.0),
        )
        self.assertEqual(DEFAULT_MAX_LAG, 0.5)

    def test_settings_in_mib_monitor_in_bytes(self) -> None:
        """
        The monitor takes its L{OverloadSettings} as configured and reads memory in bytes.
        """
        settings = OverloadSettings(max_load=4.0, max_lag=None, max_rss_mb=512, interval=2.0)
        monitor = OverloadMonitor(self.clock, self.admission, settings)
        self.assertIs(monitor.settings, settings)
        self.assertEqual(
            (monitor.max_load, monitor.max_lag, monitor.max_rss, monitor.interval),
            (4.0, None, 512 * MIB, 2.0),
        )

    def test_no_lag_on_time(self) -> None:
        monitor = self.monitor()
        for _ in range(5):
            self.clock.advance(1.0)
            self.assertEqual(monitor.last_lag, 0.0)
        self.assertIsNone(self.admission.overload)

    def test_lag_from_clock_jump(self) -> None:
        monitor = self.monitor()
        self.clock.advance(1.0)
        self.clock.advance(3.25)  # the tick due 1 s later runs 2.25 s late
        self.assertAlmostEqual(monitor.last_lag, 2.25)
        self.assertEqual(self.admission.overload, OVERLOAD_LAG)
        self.assertEqual(self.admission.admit("192.0.2.1"), Refusal(OVERLOAD_LAG))

    def test_lag_realigns_after_late_tick(self) -> None:
        monitor = self.monitor()
        self.clock.advance(2.5)  # due at +1, runs at +2.5; next due at +3
        self.assertAlmostEqual(monitor.last_lag, 1.5)
        self.clock.advance(0.5)
        self.assertAlmostEqual(monitor.last_lag, 0.0)
        self.assertIsNone(self.admission.overload)

    def test_small_lag_under_threshold(self) -> None:
        monitor = self.monitor()
        self.clock.advance(1.4)
        self.assertAlmostEqual(monitor.last_lag, 0.4)
        self.assertIsNone(self.admission.overload)

    def test_lag_hysteresis(self) -> None:
        monitor = self.monitor(max_lag=1.0)
        self.clock.advance(2.5)  # lag 1.5: on; next due at +3
        self.assertEqual(monitor.reason, OVERLOAD_LAG)
        self.clock.advance(0.95)  # due at +3, runs at +3.45: lag 0.45 < 0.9: off
        self.assertIsNone(monitor.reason)
        self.clock.advance(0.55)  # due at +4, on time
        self.clock.advance(1.95)  # due at +5, lag 0.95: in the band, but it was off
        self.assertAlmostEqual(monitor.last_lag, 0.95)
        self.assertIsNone(monitor.reason)  # turning on needs more than 1.0

    def test_lag_stays_on_within_hysteresis_band(self) -> None:
        monitor = self.monitor(max_lag=1.0)
        self.clock.advance(2.5)  # lag 1.5: on
        self.clock.advance(1.45)  # due at +3, runs at +3.95: lag 0.95 > 0.9: stays on
        self.assertAlmostEqual(monitor.last_lag, 0.95)
        self.assertEqual(monitor.reason, OVERLOAD_LAG)
        self.clock.advance(0.05)  # due at +4, on time
        self.assertIsNone(monitor.reason)
        self.assertIsNone(self.admission.overload)

    def test_lag_off(self) -> None:
        monitor = self.monitor(max_lag=None)
        self.clock.advance(100.0)
        self.assertGreater(monitor.last_lag, 50.0)  # still measured
        self.assertIsNone(self.admission.overload)

    def test_load(self) -> None:
        monitor = self.monitor(max_load=4.0)
        self.clock.advance(1.0)
        self.assertEqual(monitor.last_load, 0.5)
        self.assertIsNone(self.admission.overload)
        self.load.value = 4.5
        self.clock.advance(1.0)
        self.assertEqual(self.admission.overload, OVERLOAD_LOAD)
        self.load.value = 3.8  # under 4.0 but over 3.6: stays on
        self.clock.advance(1.0)
        self.assertEqual(self.admission.overload, OVERLOAD_LOAD)
        self.load.value = 3.5
        self.clock.advance(1.0)
        self.assertIsNone(self.admission.overload)

    def test_load_not_probed_when_off(self) -> None:
        self.monitor()
        self.clock.advance(5.0)
        self.assertEqual((self.load.calls, self.rss.calls), (0, 0))

    def test_memory(self) -> None:
        monitor = self.monitor(max_rss_mb=1000 / MIB)
        self.rss.value = 1001
        self.clock.advance(1.0)
        self.assertEqual(monitor.last_rss, 1001)
        self.assertEqual(self.admission.admit("192.0.2.1"), Refusal(OVERLOAD_MEMORY))
        self.rss.value = 899
        self.clock.advance(1.0)
        self.assertIsNone(self.admission.overload)

    def test_reason_order(self) -> None:
        monitor = self.monitor(max_load=1.0, max_rss_mb=10 / MIB)
        self.load.value = 2.0
        self.rss.value = 20
        self.clock.advance(1.0)
        self.assertEqual(monitor.reason, OVERLOAD_LOAD)
        self.clock.advance(2.5)  # lag 1.5 as well: load still comes first
        self.assertEqual(monitor.last_lag, 1.5)
        self.assertEqual(monitor.reason, OVERLOAD_LOAD)
        self.load.value = 0.0
        self.clock.advance(0.5)  # on time: load and lag off, memory still on
        self.assertEqual(monitor.reason, OVERLOAD_MEMORY)

    def test_failing_probe_fails_open_and_logs(self) -> None:
        monitor = self.monitor(max_load=1.0)
        self.load.value = 5.0
        self.clock.advance(1.0)
        self.assertEqual(monitor.reason, OVERLOAD_LOAD)
        self.load.error = OSError("no loadavg here")
        with capturedLogs() as events:
            self.clock.advance(1.0)
        self.assertIsNone(monitor.reason)
        self.assertIsNone(monitor.last_load)
        self.assertTrue(monitor.running)
        self.assertIn("overload.probe_error", [e.get("event") for e in events])

    def test_changes_logged_once(self) -> None:
        self.monitor(max_load=1.0)
        self.load.value = 5.0
        with capturedLogs() as events:
            for _ in range(3):
                self.clock.advance(1.0)
            self.load.value = 0.0
            self.clock.advance(1.0)
        names = [e.get("event") for e in events]
        self.assertEqual(names.count("overload.on"), 1)
        self.assertEqual(names.count("overload.off"), 1)

    def test_stop_clears_and_stops(self) -> None:
        monitor = self.monitor(max_load=1.0)
        self.load.value = 5.0
        self.clock.advance(1.0)
        self.assertEqual(self.admission.overload, OVERLOAD_LOAD)
        monitor.stop()
        self.assertFalse(monitor.running)
        self.assertIsNone(self.admission.overload)
        calls = self.load.calls
        self.clock.advance(10.0)
        self.assertEqual(self.load.calls, calls)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        monitor.stop()  # idempotent

    def test_start_idempotent(self) -> None:
        monitor = self.monitor(max_load=1.0)
        monitor.start()
        self.clock.advance(1.0)
        self.assertEqual(self.load.calls, 1)

    def test_restart_measures_from_restart(self) -> None:
        monitor = self.monitor()
        monitor.stop()
        self.clock.advance(50.0)
        monitor.start()
        self.clock.advance(1.0)
        self.assertEqual(monitor.last_lag, 0.0)

    def test_interval(self) -> None:
        monitor = self.monitor(max_load=1.0, interval=5.0)
        self.clock.advance(4.9)
        self.assertEqual(self.load.calls, 0)
        self.clock.advance(0.1)
        self.assertEqual(self.load.calls, 1)
        self.assertEqual(monitor.last_lag, 0.0)

    def test_snapshot(self) -> None:
        monitor = self.monitor(max_load=1.0)
        self.clock.advance(1.0)
        self.assertEqual(
            monitor.snapshot(), {"load": 0.5, "lag": 0.0, "rss": None, "overload": None}
        )

    def test_bad_interval(self) -> None:
        self.assertRaises(ValueError, OverloadSettings, interval=0)

    def test_bad_threshold(self) -> None:
        self.assertRaises(ValueError, OverloadSettings, max_lag=0)

    def test_bad_hysteresis(self) -> None:
        self.assertRaises(ValueError, OverloadMonitor, self.clock, self.admission, hysteresis=1.0)

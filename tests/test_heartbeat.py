"""
Tests for L{netguard.ops.heartbeat}: beats on a L{Clock} with a captured log, switching, and a
real SIGUSR1 delivered to this process while the real reactor runs.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from netguard.ops.heartbeat import (
    MAX_FIELDS,
    Heartbeat,
    flatten_figures,
    install_sigusr1,
)


def capture(case: unittest.TestCase) -> list[dict[str, Any]]:
    """
    Every event published during the test.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == name]


FIGURES = {
    "active": 3,
    "connections": 41,
    "refusals": {"BUSY": 2, "EARLY_TALKER": 5},
    "auth_ok": 30,
    "auth_fail": 4,
    "bytes_up": 1000,
    "bytes_down": 250000,
    "overload": "normal",
}


class FlattenTests(unittest.TestCase):
    def test_nested_mapping_flattened_with_underscores(self):
        flat = flatten_figures(FIGURES)
        self.assertEqual(flat["refusals_BUSY"], 2)
        self.assertEqual(flat["refusals_EARLY_TALKER"], 5)
        self.assertNotIn("refusals", flat)
        self.assertEqual(flat["bytes_down"], 250000)
        self.assertEqual(flat["overload"], "normal")

    def test_reserved_logger_keys_renamed(self):
        flat = flatten_figures({"log_format": 1, "event": 2, "format": 3})
        self.assertEqual(flat, {"stat_log_format": 1, "stat_event": 2, "stat_format": 3})

    def test_key_characters_reduced_to_identifier(self):
        flat = flatten_figures({"a b{c}": 1, "1st": 2})
        self.assertEqual(flat, {"a_b_c_": 1, "stat_1st": 2})

    def test_text_values_escaped(self):
        flat = flatten_figures({"overload": "bad\r\nheartbeat forged\x1b[2J"})
        self.assertEqual(flat["overload"], "bad\\r\\nheartbeat forged\\x1b[2J")

    def test_non_finite_float_rendered_as_text(self):
        self.assertEqual(flatten_figures({"lag": float("inf")}), {"lag": "inf"})

    def test_depth_bounded(self):
        deep: dict[str, Any] = {"x": 1}
        for _ in range(10):
            deep = {"d": deep}
        flat = flatten_figures(deep)
        self.assertEqual(len(flat), 1)
        self.assertIsInstance(next(iter(flat.values())), str)

    def test_field_count_bounded(self):
        flat = flatten_figures({f"k{i}": i for i in range(MAX_FIELDS * 3)})
        self.assertEqual(len(flat), MAX_FIELDS)


class HeartbeatTests(unittest.TestCase):
    def setUp(self):
        self.events = capture(self)
        self.clock = Clock()
        self.clock.advance(1000)
        self.figures = dict(FIGURES)

    def make(self, enabled=False, interval=60.0, start=True):
        beat = Heartbeat(self.clock, lambda: self.figures, interval=interval, enabled=enabled)
        if start:
            beat.startService()
            self.addCleanup(beat.stopService)
        return beat

    def test_disabled_by_default_logs_nothing(self):
        beat = self.make()
        self.clock.advance(3600)
        self.assertFalse(beat.enabled)
        self.assertEqual(named(self.events, "heartbeat"), [])

    def test_enabled_by_config_beats_at_start_and_every_interval(self):
        self.make(enabled=True, interval=10)
        self.assertEqual(len(named(self.events, "heartbeat")), 1)
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertEqual(len(named(self.events, "heartbeat")), 3)

    def test_not_beating_before_service_starts(self):
        beat = self.make(enabled=True, start=False)
        self.clock.advance(600)
        self.assertEqual(named(self.events, "heartbeat"), [])
        self.assertEqual(beat.beats, 0)

    def test_beat_is_one_event_with_flattened_figures(self):
        self.make(enabled=True)
        (event,) = named(self.events, "heartbeat")
        self.assertEqual(event["active"], 3)
        self.assertEqual(event["connections"], 41)
        self.assertEqual(event["refusals_BUSY"], 2)
        self.assertEqual(event["refusals_EARLY_TALKER"], 5)
        self.assertEqual(event["auth_ok"], 30)
        self.assertEqual(event["auth_fail"], 4)
        self.assertEqual(event["bytes_up"], 1000)
        self.assertEqual(event["bytes_down"], 250000)
        self.assertEqual(event["overload"], "normal")
        self.assertEqual(event["log_level"].name, "info")

    def test_beat_text_lists_every_figure(self):
        self.make(enabled=True)
        (event,) = named(self.events, "heartbeat")
        text = formatEvent(event)
        self.assertTrue(text.startswith("heartbeat "))
        self.assertIn("active=3", text)
        self.assertIn("refusals_BUSY=2", text)
        self.assertIn("uptime=0", text)

    def test_figures_are_cumulative_reads_of_the_source(self):
        self.make(enabled=True, interval=5)
        self.figures["connections"] = 50
        self.clock.advance(5)
        first, second = named(self.events, "heartbeat")
        self.assertEqual((first["connections"], second["connections"]), (41, 50))

    def test_uptime_counted_from_creation(self):
        beat = self.make(start=False, interval=30)
        self.clock.advance(90)
        beat.startService()
        self.addCleanup(beat.stopService)
        beat.enable()
        (event,) = named(self.events, "heartbeat")
        self.assertEqual(event["uptime"], 90)

    def test_uptime_from_source_kept(self):
        self.figures["uptime"] = 12.5
        self.make(enabled=True)
        (event,) = named(self.events, "heartbeat")
        self.assertEqual(event["uptime"], 12.5)

    def test_enable_logs_on_with_switcher_and_beats(self):
        beat = self.make()
        self.assertTrue(beat.enable(by="control"))
        (on,) = named(self.events, "heartbeat.on")
        self.assertEqual((on["by"], on["state"]), ("control", "on"))
        self.assertEqual(len(named(self.events, "heartbeat")), 1)

    def test_disable_logs_off_and_stops_beats(self):
        beat = self.make(enabled=True, interval=10)
        self.assertFalse(beat.disable(by="control"))
        self.clock.advance(100)
        (off,) = named(self.events, "heartbeat.off")
        self.assertEqual(off["by"], "control")
        self.assertEqual(len(named(self.events, "heartbeat")), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_toggle_alternates(self):
        beat = self.make()
        self.assertTrue(beat.toggle())
        self.assertFalse(beat.toggle())
        self.assertEqual(
            [e["event"] for e in self.events if e.get("event", "").startswith("heartbeat.")],
            ["heartbeat.on", "heartbeat.off"],
        )
        self.assertEqual(named(self.events, "heartbeat.on")[0]["by"], "signal")

    def test_switching_to_current_state_logs_nothing(self):
        beat = self.make(enabled=True)
        beat.enable(by="control")
        self.assertEqual(named(self.events, "heartbeat.on"), [])

    def test_unknown_switcher_refused(self):
        beat = self.make()
        self.assertRaises(ValueError, beat.enable, by="peer")
        self.assertFalse(beat.enabled)

    def test_bad_interval_refused(self):
        for bad in (0, -1, float("nan"), float("inf")):
            self.assertRaises(ValueError, Heartbeat, self.clock, dict, interval=bad)

    def test_stop_service_stops_beats_and_keeps_state(self):
        beat = self.make(enabled=True, interval=10, start=False)
        beat.startService()
        beat.stopService()
        self.clock.advance(100)
        self.assertTrue(beat.enabled)
        self.assertEqual(len(named(self.events, "heartbeat")), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failing_source_switches_heartbeat_off_and_logs(self):
        def broken():
            raise RuntimeError("boom")

        beat = Heartbeat(self.clock, broken, enabled=True)
        beat.startService()
        self.addCleanup(beat.stopService)
        self.assertFalse(beat.enabled)
        (error,) = named(self.events, "heartbeat.error")
        self.assertIn("boom", str(error["log_failure"].value))
        self.flushLoggedErrors(RuntimeError)
        self.clock.advance(600)
        self.assertEqual(named(self.events, "heartbeat"), [])


class SignalTests(unittest.TestCase):
    def setUp(self):
        self.events = capture(self)

    def test_install_replaces_and_uninstall_restores(self):
        calls = []

        def mine(signum, frame):
            calls.append(signum)

        before = signal.signal(signal.SIGUSR1, mine)
        self.addCleanup(signal.signal, signal.SIGUSR1, before)
        beat = Heartbeat(Clock(), dict)
        uninstall = install_sigusr1(reactor, beat)
        self.assertIsNot(signal.getsignal(signal.SIGUSR1), mine)
        (warning,) = named(self.events, "heartbeat.sigusr1_replaced")
        self.assertIn("mine", warning["handler"])
        uninstall()
        self.assertIs(signal.getsignal(signal.SIGUSR1), mine)
        uninstall()
        self.assertIs(signal.getsignal(signal.SIGUSR1), mine)

    def test_default_handler_restored_without_warning(self):
        before = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        self.addCleanup(signal.signal, signal.SIGUSR1, before)
        uninstall = install_sigusr1(reactor, Heartbeat(Clock(), dict))
        uninstall()
        self.assertEqual(signal.getsignal(signal.SIGUSR1), signal.SIG_DFL)
        self.assertEqual(named(self.events, "heartbeat.sigusr1_replaced"), [])

    @inlineCallbacks
    def test_real_sigusr1_toggles_heartbeat(self):
        """
        Deliver SIGUSR1 to this process with the real reactor running: the heartbeat goes on
        (and beats), then off again, each switch logged with C{by="signal"}.
        """
        beat = Heartbeat(reactor, lambda: {"active": 0}, interval=3600.0)
        beat.startService()
        self.addCleanup(beat.stopService)
        uninstall = install_sigusr1(reactor, beat)
        self.addCleanup(uninstall)

        for wanted in (True, False):
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(500):
                if beat.enabled is wanted:
                    break
                yield deferLater(reactor, 0.01, lambda: None)
            self.assertIs(beat.enabled, wanted)

        switches = [e for e in self.events if e.get("event") in ("heartbeat.on", "heartbeat.off")]
        self.assertEqual([e["event"] for e in switches], ["heartbeat.on", "heartbeat.off"])
        self.assertEqual({e["by"] for e in switches}, {"signal"})
        self.assertEqual(len(named(self.events, "heartbeat")), 1)

"""
Tests for L{netguard.stats}.
"""

from __future__ import annotations

from twisted.trial import unittest

from netguard.stats import Stats


class StatsTests(unittest.TestCase):
    def test_counters_grow(self):
        stats = Stats()
        stats.count("connections")
        stats.count("bytes_up", 10)
        stats.count("bytes_up", 5)
        self.assertEqual(stats.snapshot(), {"connections": 1, "bytes_up": 15, "active": 0})

    def test_snapshot_is_a_copy(self):
        stats = Stats()
        snapshot = stats.snapshot()
        snapshot["connections"] = 99
        self.assertNotIn("connections", stats.snapshot())

    def test_active_gauge(self):
        stats = Stats()
        stats.active = 3
        self.assertEqual(stats.snapshot()["active"], 3)

"""
Tests for L{netguard.stats}: counters, live relay bytes, per-service figures and the set-up
time histogram.
"""

from __future__ import annotations

import math

from twisted.trial import unittest

from netguard.stats import SETUP_BUCKETS, Histogram, Stats


class StatsTests(unittest.TestCase):
    """
    Plain counters and the C{active} gauge.
    """

    def test_counters_grow(self):
        """
        C{count} adds to a counter; the snapshot lists the counters seen and C{active}.
        """
        stats = Stats()
        stats.count("connections")
        stats.count("bytes_up", 10)
        stats.count("bytes_up", 5)
        self.assertEqual(stats.snapshot(), {"connections": 1, "bytes_up": 15, "active": 0})

    def test_snapshot_is_a_copy(self):
        """
        Changing a snapshot changes nothing in the stats.
        """
        stats = Stats()
        snapshot = stats.snapshot()
        snapshot["connections"] = 99
        self.assertNotIn("connections", stats.snapshot())

    def test_active_gauge(self):
        """
        C{active} is in the snapshot.
        """
        stats = Stats()
        stats.active = 3
        self.assertEqual(stats.snapshot()["active"], 3)


class FakeRelay:
    """
    A relay's live byte counts, moved by hand; its meter is what L{Stats} reads.
    """

    def __init__(self) -> None:
        self.up = 0
        self.down = 0
        self.reads = 0

    def meter(self) -> tuple[int, int]:
        self.reads += 1
        return self.up, self.down


class LiveBytesTests(unittest.TestCase):
    """
    The byte counters include the bytes of live relays, and never go down when one closes.
    """

    def test_live_relay_counted_before_it_closes(self):
        """
        A snapshot during a relay shows the bytes it has carried so far (they used to
        appear only once the session closed).
        """
        stats = Stats()
        relay = FakeRelay()
        stats.relay_started("s1", "echo", 0.01, relay.meter)
        relay.up, relay.down = 1000, 400
        self.assertEqual(stats.snapshot()["bytes_up"], 1000)
        self.assertEqual(stats.snapshot()["bytes_down"], 400)
        relay.up, relay.down = 5000, 4999
        self.assertEqual(stats.snapshot()["bytes_up"], 5000)
        self.assertEqual(stats.snapshot()["bytes_down"], 4999)

    def test_closed_plus_live(self):
        """
        Closed sessions' totals and live relays' counts are summed.
        """
        stats = Stats()
        stats.session_closed("old", "echo", 7, 9)
        relay = FakeRelay()
        relay.up, relay.down = 3, 4
        stats.relay_started("new", "echo", 0.01, relay.meter)
        figures = stats.snapshot()
        self.assertEqual((figures["bytes_up"], figures["bytes_down"]), (10, 13))

    def test_monotonic_across_close(self):
        """
        From the last live reading to the close (final counts = last reading, or more), the
        counters and the per-service counters never go down, and the meter is dropped.
        """
        stats = Stats()
        stats.set_services(["echo"])
        relay = FakeRelay()
        stats.relay_started("s1", "echo", 0.01, relay.meter)
        relay.up, relay.down = 100, 80
        during = stats.snapshot()
        during_service = stats.services_snapshot()["echo"]
        stats.session_closed("s1", "echo", 100, 80)
        after = stats.snapshot()
        after_service = stats.services_snapshot()["echo"]
        for key in ("bytes_up", "bytes_down"):
            self.assertEqual(after[key], during[key], key)
            self.assertEqual(after_service[key], during_service[key], key)
        reads = relay.reads
        stats.snapshot()
        stats.services_snapshot()
        self.assertEqual(relay.reads, reads, "the closed relay's meter is still read")
        self.assertEqual(after_service["relays"], 0)

    def test_meters_read_only_when_asked(self):
        """
        Nothing reads a live relay until a snapshot is taken (no cost on the relay path).
        """
        stats = Stats()
        relay = FakeRelay()
        stats.relay_started("s1", "echo", 0.01, relay.meter)
        stats.count("connections")
        self.assertEqual(relay.reads, 0)
        stats.snapshot()
        self.assertEqual(relay.reads, 1)

    def test_session_without_relay(self):
        """
        A session that never relayed (its OPEN failed) still adds what it read.
        """
        stats = Stats()
        stats.session_closed("s1", None, 12, 0)
        self.assertEqual(stats.snapshot()["bytes_up"], 12)
        self.assertEqual(stats.snapshot()["bytes_down"], 0)

    def test_no_live_relay_no_new_keys(self):
        """
        Without live relays the snapshot is the counters as they are.
        """
        stats = Stats()
        stats.count("connections")
        self.assertEqual(stats.snapshot(), {"connections": 1, "active": 0})


class PerServiceTests(unittest.TestCase):
    """
    Per-service figures, keyed only by configured names.
    """

    def test_figures_per_service(self):
        """
        Sessions, bytes each way (live included), live relays and open failures by reason.
        """
        stats = Stats()
        stats.set_services(["echo", "redis"])
        relay = FakeRelay()
        stats.relay_started("s1", "redis", 0.01, relay.meter)
        relay.up, relay.down = 30, 70
        stats.relay_started("s2", "echo", 0.01, FakeRelay().meter)
        stats.session_closed("s2", "echo", 5, 5)
        stats.open_failed("redis", "backend")
        services = stats.services_snapshot()
        self.assertEqual(list(services), ["echo", "redis"])
        self.assertEqual(
            services["redis"],
            {
                "sessions": 1,
                "bytes_up": 30,
                "bytes_down": 70,
                "relays": 1,
                "open_failures": {"backend": 1, "not-authorized": 0, "peer-checks": 0},
            },
        )
        self.assertEqual(services["echo"]["sessions"], 1)
        self.assertEqual(services["echo"]["relays"], 0)
        self.assertEqual((services["echo"]["bytes_up"], services["echo"]["bytes_down"]), (5, 5))

    def test_configured_services_present_at_zero(self):
        """
        Every configured service has its figures before its first session.
        """
        stats = Stats()
        stats.set_services(["a", "b"])
        self.assertEqual(set(stats.services_snapshot()), {"a", "b"})
        self.assertEqual(stats.services_snapshot()["a"]["sessions"], 0)

    def test_unconfigured_name_never_a_key(self):
        """
        An open failure for a name that is not configured adds no key.
        """
        stats = Stats()
        stats.set_services(["echo"])
        stats.open_failed("client-chosen", "backend")
        stats.session_closed("s1", "client-chosen", 1, 1)
        self.assertEqual(list(stats.services_snapshot()), ["echo"])
        self.assertEqual(stats.snapshot()["bytes_up"], 1)

    def test_removed_service_kept_while_live_then_forgotten(self):
        """
        A service removed by a reload keeps its figures while a relay of it runs, and is
        forgotten when that relay closes; the totals keep its bytes.
        """
        stats = Stats()
        stats.set_services(["echo", "old"])
        relay = FakeRelay()
        stats.relay_started("s1", "old", 0.01, relay.meter)
        stats.set_services(["echo"])
        relay.up = 4
        self.assertEqual(stats.services_snapshot()["old"]["bytes_up"], 4)
        stats.session_closed("s1", "old", 4, 0)
        self.assertEqual(list(stats.services_snapshot()), ["echo"])
        self.assertEqual(stats.snapshot()["bytes_up"], 4)

    def test_removed_service_without_relay_forgotten_at_reload(self):
        """
        The number of keys is bounded by the configuration: a reload drops idle old names.
        """
        stats = Stats()
        stats.set_services([f"s{i}" for i in range(10)])
        stats.set_services(["echo"])
        self.assertEqual(list(stats.services_snapshot()), ["echo"])


class HistogramTests(unittest.TestCase):
    """
    The set-up time histogram: cumulative buckets with C{le} (less or equal) bounds.
    """

    def test_boundary_value_in_its_bucket(self):
        """
        A value exactly on a bound counts in that bound's bucket; one just above does not.
        """
        histogram = Histogram([0.1, 0.25, 1.0])
        histogram.observe(0.25)
        histogram.observe(math.nextafter(0.25, 1.0))
        snapshot = histogram.snapshot()
        self.assertEqual(snapshot.buckets, ((0.1, 0), (0.25, 1), (1.0, 2)))
        self.assertEqual(snapshot.count, 2)

    def test_above_every_bound_only_in_inf(self):
        """
        A value above the last bound is counted (C{+Inf} is L{count}) but in no bucket.
        """
        histogram = Histogram([1.0])
        histogram.observe(100.0)
        snapshot = histogram.snapshot()
        self.assertEqual(snapshot.buckets, ((1.0, 0),))
        self.assertEqual((snapshot.count, snapshot.total), (1, 100.0))

    def test_negative_and_nan_count_as_zero(self):
        """
        A clock that stepped back gives a negative duration: counted as 0, so the sum
        never goes down.
        """
        histogram = Histogram([0.001])
        histogram.observe(-5.0)
        histogram.observe(float("nan"))
        snapshot = histogram.snapshot()
        self.assertEqual(snapshot.buckets, ((0.001, 2),))
        self.assertEqual(snapshot.total, 0.0)

    def test_bad_bounds_refused(self):
        """
        Bounds must be finite and strictly increasing.
        """
        self.assertRaises(ValueError, Histogram, [1.0, 1.0])
        self.assertRaises(ValueError, Histogram, [2.0, 1.0])
        self.assertRaises(ValueError, Histogram, [1.0, math.inf])

    def test_relay_started_observes_setup(self):
        """
        Each relay start adds its set-up time to L{Stats.setup_seconds}.
        """
        stats = Stats()
        stats.relay_started("s1", "echo", 0.3, FakeRelay().meter)
        stats.relay_started("s2", "echo", 0.004, FakeRelay().meter)
        snapshot = stats.setup_seconds.snapshot()
        self.assertEqual(snapshot.count, 2)
        self.assertEqual(dict(snapshot.buckets)[0.005], 1)
        self.assertEqual(dict(snapshot.buckets)[0.5], 2)
        self.assertEqual(tuple(bound for bound, _ in snapshot.buckets), SETUP_BUCKETS)

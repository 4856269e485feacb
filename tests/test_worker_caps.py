"""
Tests for the C{[mux]} caps over every session divided between the workers of one host
(L{netguard.workers.budget.worker_streams}, L{netguard.worker.worker_config}).
"""

from __future__ import annotations

import attrs
from twisted.trial import unittest

from netguard.config import Config
from netguard.gateway.stream_settings import StreamSettings
from netguard.worker import worker_config
from netguard.workers.budget import STREAM_CAPS, worker_streams


def make_config(workers: int, **mux: int) -> Config:
    """
    A configuration of C{workers} workers with C{mux} bounds.
    """
    config = Config(state_dir="/nonexistent", users_file="/nonexistent/users", listen=())
    return attrs.evolve(config, workers=workers, mux=StreamSettings(**mux))


class StreamCapsTests(unittest.TestCase):
    """
    C{max_per_user} and C{max_per_service} are divided as C{per_source_max} is.
    """

    def test_divided_rounded_up(self) -> None:
        """
        Each of N workers gets C{ceil(cap / N)}: 2 per user over 2 workers is 1 each (the
        two workers together allow 2, not 4); 5 over 2 is 3; 4096 per service over 3 is
        1366.
        """
        self.assertEqual(worker_streams(StreamSettings(max_per_user=2), 2).max_per_user, 1)
        self.assertEqual(worker_streams(StreamSettings(max_per_user=5), 2).max_per_user, 3)
        self.assertEqual(worker_streams(StreamSettings(), 3).max_per_service, 1366)

    def test_together_at_most_n_minus_one_above(self) -> None:
        """
        For every cap from 1 to 40 and 1 to 8 workers, the workers' shares add up to at
        least the cap and at most N - 1 above it, and each share is at least 1.
        """
        for count in range(1, 9):
            for cap in range(1, 41):
                settings = worker_streams(
                    StreamSettings(max_per_user=cap, max_per_service=cap), count
                )
                for name in STREAM_CAPS:
                    share = getattr(settings, name)
                    self.assertGreaterEqual(share, 1)
                    self.assertGreaterEqual(share * count, cap)
                    self.assertLessEqual(share * count, cap + count - 1)

    def test_cap_smaller_than_workers_is_one_each(self) -> None:
        """
        A cap of 1 over 4 workers is 1 in each (never 0, which would refuse every stream):
        at most 4 together, N - 1 above the cap.
        """
        settings = worker_streams(StreamSettings(max_per_user=1, max_per_service=1), 4)
        self.assertEqual((settings.max_per_user, settings.max_per_service), (1, 1))

    def test_other_bounds_unchanged(self) -> None:
        """
        The bounds of one session (it lives in one worker) stay as configured; one worker
        gets the settings unchanged.
        """
        configured = StreamSettings(max_streams=7, open_burst=3, max_per_user=10)
        mine = worker_streams(configured, 2)
        self.assertEqual(attrs.evolve(mine, max_per_user=10, max_per_service=4096), configured)
        self.assertIs(worker_streams(configured, 1), configured)

    def test_worker_config_divides_stream_caps(self) -> None:
        """
        The configuration a worker runs with (and reloads to) has its share of the stream
        caps beside its share of the admission budget.
        """
        config = make_config(2, max_per_user=2, max_per_service=5)
        mine = worker_config(config, 1, 2)
        self.assertEqual((mine.mux.max_per_user, mine.mux.max_per_service), (1, 3))
        self.assertEqual(worker_config(make_config(1, max_per_user=2), 0, 1).mux.max_per_user, 2)

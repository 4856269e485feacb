"""
Tests for L{netguard.refusal_log}: which refusals are logged one by one, and the summaries
of the rest.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial import unittest

from netguard.refusal_log import INDIVIDUAL, INTERVAL, MAX_KEYS, MAX_LOGGED, OTHER, RefusalLog


class RefusalLogTests(unittest.TestCase):
    """
    Per (source, reason, event): the first L{INDIVIDUAL} of an interval are logged one by one,
    the rest counted and summarised when the interval ends.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.refusals = RefusalLog(Logger(observer=self.events.append), self.clock)

    def note(self, times: int, source: str = "192.0.2.7/32", reason: str = "rate") -> list[bool]:
        return [self.refusals.note(source, reason) for _ in range(times)]

    def summaries(self) -> list[tuple[str, str, str, int, int, float]]:
        return [
            (e["source"], e["reason"], e["of"], e["count"], e["logged"], e["seconds"])
            for e in self.events
            if e.get("event") == "conn.reject.summary"
        ]

    def test_defaults(self) -> None:
        """
        The shipped bounds: 3 one by one per 10 s interval, 1,024 keys, 1,024 lines one by
        one per interval.
        """
        self.assertEqual((INDIVIDUAL, INTERVAL, MAX_KEYS, MAX_LOGGED), (3, 10.0, 1024, 1024))
        self.assertEqual(
            (self.refusals.individual, self.refusals.interval, self.refusals.max_keys),
            (3, 10.0, 1024),
        )

    def test_first_three_logged_one_by_one_the_fourth_counted(self) -> None:
        """
        The third refusal of a source and reason is still logged; the fourth is only counted.
        """
        self.assertEqual(self.note(4), [True, True, True, False])
        self.assertEqual(self.refusals.pending, 1)

    def test_no_timer_while_nothing_is_counted(self) -> None:
        """
        Refusals that are all logged one by one leave no timer and no summary behind.
        """
        self.note(3)
        self.note(3, source="192.0.2.8/32")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(INTERVAL * 3)
        self.assertEqual(self.summaries(), [])

    def test_summary_at_the_end_of_the_interval(self) -> None:
        """
        The first refusal counted arms one timer for the end of the interval (which started
        with the first refusal); it logs one summary with the count of those left out.
        """
        self.note(2)
        self.clock.advance(4.0)
        self.note(8)
        [timer] = self.clock.getDelayedCalls()
        self.assertEqual(timer.getTime(), INTERVAL)
        self.clock.advance(5.9)
        self.assertEqual(self.summaries(), [])
        self.clock.advance(0.1)
        self.assertEqual(self.summaries(), [("192.0.2.7/32", "rate", "conn.reject", 7, 3, 10.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.refusals.pending, 0)

    def test_summary_text(self) -> None:
        """
        The summary's text names the count, the source and the reason.
        """
        from twisted.logger import formatEvent

        self.note(5)
        self.clock.advance(INTERVAL)
        [event] = [e for e in self.events if e.get("event") == "conn.reject.summary"]
        self.assertEqual(
            formatEvent(event), "2 more refusals (conn.reject) of 192.0.2.7/32 in 10.0 s: rate"
        )

    def test_one_summary_per_source_reason_and_event(self) -> None:
        """
        Sources, reasons and the events the refusals are logged as are counted apart; a key
        with nothing left out gets no summary.
        """
        self.note(5)
        self.note(4, reason="per-source-cap")
        self.note(6, source="192.0.2.8/32")
        self.note(2, source="192.0.2.9/32")
        self.assertEqual(
            [self.refusals.note("192.0.2.7/32", "expired", "ticket.refused") for _ in range(4)],
            [True, True, True, False],
        )
        self.clock.advance(INTERVAL)
        self.assertEqual(
            sorted(self.summaries()),
            [
                ("192.0.2.7/32", "expired", "ticket.refused", 1, 3, 10.0),
                ("192.0.2.7/32", "per-source-cap", "conn.reject", 1, 3, 10.0),
                ("192.0.2.7/32", "rate", "conn.reject", 2, 3, 10.0),
                ("192.0.2.8/32", "rate", "conn.reject", 3, 3, 10.0),
            ],
        )

    def test_next_interval_starts_afresh(self) -> None:
        """
        After a summary, a source's next refusals are logged one by one again.
        """
        self.note(5)
        self.clock.advance(INTERVAL)
        self.assertEqual(self.note(4), [True, True, True, False])

    def test_quiet_interval_ends_without_a_timer(self) -> None:
        """
        Without a timer, an interval still ends on time: a refusal just before its end is
        the third of that interval (logged), one at its end the first of a new interval
        (logged, where a fourth would have been counted).
        """
        self.note(2)
        self.clock.advance(INTERVAL - 0.001)
        self.assertEqual(self.note(1), [True])
        self.clock.advance(0.001)
        self.assertEqual(self.note(3), [True, True, True])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.summaries(), [])

    def test_clock_going_back_starts_a_new_interval(self) -> None:
        """
        A wall clock set back does not stretch an interval for ever: the next refusal after
        the jump starts a new one.
        """
        clock: Any = self.clock
        clock.rightNow = 1000.0
        self.note(3)
        clock.rightNow = 500.0
        self.assertEqual(self.note(1), [True])

    def test_keys_beyond_the_bound_count_as_other(self) -> None:
        """
        With C{max_keys} keys tracked, a refusal with a new key is counted under the source
        C{other} and never logged one by one; the keys already tracked keep their own.
        """
        self.refusals.max_keys = 2
        self.note(1, source="192.0.2.1/32")
        self.note(1, source="192.0.2.2/32")
        self.assertEqual(self.note(2, source="192.0.2.3/32"), [False, False])
        self.assertEqual(self.note(2, source="192.0.2.4/32", reason="denied"), [False, False])
        self.assertEqual(self.note(1, source="192.0.2.1/32"), [True])
        self.clock.advance(INTERVAL)
        self.assertEqual(
            sorted(self.summaries()),
            [
                (OTHER, "denied", "conn.reject", 2, 0, 10.0),
                (OTHER, "rate", "conn.reject", 2, 0, 10.0),
            ],
        )

    def test_flood_from_many_sources_is_bounded(self) -> None:
        """
        A flood from 5,000 sources, two refusals each, gives C{max_logged} lines one by one,
        holds at most C{max_keys} keys, and the summaries count every other refusal: the
        sources tracked past the global cap one each, the rest under L{OTHER}.
        """
        logged = sum(
            self.refusals.note(f"10.0.{i // 256}.{i % 256}/32", "rate")
            for i in range(5000)
            for _ in range(2)
        )
        self.assertEqual(logged, MAX_LOGGED)
        self.assertEqual(len(self.refusals._table), MAX_KEYS)
        self.clock.advance(INTERVAL)
        summaries = self.summaries()
        self.assertEqual(logged + sum(s[3] for s in summaries), 10000)
        self.assertEqual(len(summaries), MAX_KEYS - MAX_LOGGED // 2 + 1)
        self.assertIn((OTHER, "rate", "conn.reject", 10000 - 2 * MAX_KEYS, 0, 10.0), summaries)

    def test_global_cap_across_sources_and_events(self) -> None:
        """
        At most C{max_logged} refusals are logged one by one per interval, all sources and
        events together: the one at the cap is logged, the one past it counted in its own
        source's summary; the next interval logs again.
        """
        refusals = RefusalLog(Logger(observer=self.events.append), self.clock, max_logged=4)
        told = [
            refusals.note(source, "early-talker", event)
            for source in ("192.0.2.1/32", "192.0.2.2/32")
            for event in ("proto.early_talker", "proto.refuse", "conn.close")
        ]
        self.assertEqual(told, [True, True, True, True, False, False])
        self.clock.advance(INTERVAL)
        self.assertEqual(
            sorted(self.summaries()),
            [
                ("192.0.2.2/32", "early-talker", "conn.close", 1, 0, 10.0),
                ("192.0.2.2/32", "early-talker", "proto.refuse", 1, 0, 10.0),
            ],
        )
        self.assertTrue(refusals.note("192.0.2.3/32", "early-talker", "proto.refuse"))

    def test_flush_logs_what_is_pending_and_cancels_the_timer(self) -> None:
        """
        A flush (at shutdown) logs the summaries so far at once and leaves no timer.
        """
        self.note(6)
        self.clock.advance(2.5)
        self.refusals.flush()
        self.assertEqual(self.summaries(), [("192.0.2.7/32", "rate", "conn.reject", 3, 3, 2.5)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.refusals.pending, 0)

    def test_flush_with_nothing_pending_logs_nothing(self) -> None:
        """
        A flush with nothing counted, or twice, logs nothing.
        """
        self.refusals.flush()
        self.note(2)
        self.refusals.flush()
        self.refusals.flush()
        self.assertEqual(self.events, [])

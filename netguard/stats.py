# -*- test-case-name: tests.test_stats -*-
"""
Cumulative counters and live gauges of one gateway process, read by the heartbeat and status.
"""

from __future__ import annotations

from collections import Counter


class Stats:
    """
    Counters that only grow (connections, refusals by code, authentications, bytes) and the
    number of live sessions.
    """

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.active = 0

    def count(self, name: str, amount: int = 1) -> None:
        """
        Add C{amount} to counter C{name}.
        """
        self.counters[name] += amount

    def snapshot(self) -> dict[str, int]:
        """
        A copy of every counter, plus the C{active} gauge.
        """
        figures = dict(self.counters)
        figures["active"] = self.active
        return figures

# -*- test-case-name: tests.test_admission -*-
"""
The penalty table of admission: points per source key that decay with time and, past a
threshold, block the source for a time that doubles on repetition (as sshd's
C{PerSourcePenalties}). Bounded, least recently offending forgotten first.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import attrs
from twisted.logger import Logger

from netguard.admission.policy import AdmissionPolicy
from netguard.refusal_log import RefusalLog


@attrs.define
class Penalty:
    """
    The penalty state of one source key.

    @ivar points: points at C{stamp}; they decay linearly after it.
    @ivar stamp: when C{points} was last updated.
    @ivar blocked_until: the end of the current block (in the past when not blocked).
    @ivar offences: offences recorded since this entry was created.
    """

    points: float
    stamp: float
    blocked_until: float
    offences: int


class PenaltyTable:
    """
    Penalties by source key, least recently offending first, at most C{max_tracked_sources}.

    @ivar entries: the table itself (source key -> L{Penalty}).
    @ivar refusal_log: the aggregated log C{admission.block} goes through (the first few
        per source and offence kind in an interval, then summarised), or L{None} to log
        every block.
    """

    log = Logger()

    def __init__(self, policy: AdmissionPolicy) -> None:
        self.policy = policy
        self.entries: OrderedDict[str, Penalty] = OrderedDict()
        self.refusal_log: RefusalLog | None = None
        # Points beyond this give penalty_max already; capping them bounds how long a
        # source stays remembered however often it offends.
        self._max_points = float(
            policy.penalty_threshold
            + max(0, math.ceil(math.log2(policy.penalty_max / policy.penalty_base)))
        )

    def decayed(self, penalty: Penalty, now: float) -> float:
        """
        A penalty's points now.
        """
        elapsed = max(0.0, now - penalty.stamp)
        return max(0.0, penalty.points - elapsed / self.policy.penalty_decay)

    def spent(self, penalty: Penalty, now: float) -> bool:
        """
        Whether a penalty carries no information any more (no block, no points).
        """
        return penalty.blocked_until <= now and self.decayed(penalty, now) <= 0.0

    def has_points(self, key: str, now: float) -> bool:
        """
        Whether a source has a bad record now: penalty points above 0.
        """
        penalty = self.entries.get(key)
        return penalty is not None and self.decayed(penalty, now) > 0.0

    def add(self, key: str, points: int, kind: str, now: float) -> float | None:
        """
        Add an offence's points to a source (see L{netguard.admission.Admission.offence}).

        @return: the seconds the source is now blocked for, or L{None}.
        """
        policy = self.policy
        entries = self.entries
        penalty = entries.get(key)
        if penalty is None:
            if len(entries) >= policy.max_tracked_sources:
                entries.popitem(last=False)
            penalty = Penalty(0.0, now, now, 0)
            entries[key] = penalty
        else:
            entries.move_to_end(key)
        penalty.points = min(self._max_points, self.decayed(penalty, now) + points)
        penalty.stamp = now
        penalty.offences += 1
        # Points decay continuously, so N offences in quick succession add up to a little
        # under N: the threshold is reached once the points pass threshold - 1, that is
        # when C{penalty_threshold} offences fall within about C{penalty_decay} seconds.
        if penalty.points > policy.penalty_threshold - 1:
            steps = max(0, math.ceil(penalty.points - 1e-9) - policy.penalty_threshold)
            duration = min(policy.penalty_max, policy.penalty_base * 2.0**steps)
            refusal_log = self.refusal_log
            if now + duration > penalty.blocked_until and (
                refusal_log is None or refusal_log.note(key, kind, "admission.block")
            ):
                self.log.info(
                    "blocking {source} for {seconds:.0f}s after {offences} offences",
                    event="admission.block",
                    source=key,
                    seconds=round(duration, 1),
                    offences=penalty.offences,
                    kind=kind,
                    extended=penalty.blocked_until > now,
                )
            if now + duration > penalty.blocked_until:
                penalty.blocked_until = now + duration
        if penalty.blocked_until > now:
            return penalty.blocked_until - now
        return None

    def listing(self, now: float) -> list[tuple[str, float, int]]:
        """
        The live entries, spent ones pruned first (a full scan, bounded by the table).

        @return: C{(source key, seconds of block left, offences)}, longest block first.
        """
        entries = self.entries
        for key in [k for k, p in entries.items() if self.spent(p, now)]:
            del entries[key]
        rows = [
            (key, max(0.0, penalty.blocked_until - now), penalty.offences)
            for key, penalty in entries.items()
        ]
        rows.sort(key=lambda row: (-row[1], row[0]))
        return rows

    def prune(self, now: float, steps: int) -> None:
        """
        Drop up to C{steps} spent entries at the old end of the table.
        """
        entries = self.entries
        for _ in range(steps):
            if not entries:
                break
            key = next(iter(entries))
            if not self.spent(entries[key], now):
                break
            del entries[key]

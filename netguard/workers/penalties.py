# -*- test-case-name: tests.test_workers -*-
"""
Penalties that follow a source from one worker to the others: a worker's L{SharedAdmission}
reports every block its own offences cause, and applies the blocks the supervisor relays
from the other workers (silently: the worker that blocked logged it). A block learnt from
Redis is passed to the supervisor to keep, never relayed or published again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from netguard.admission import Admission, AdmissionPolicy
from netguard.admission.penalties import Penalty

log = Logger()

#: Called with (source key, seconds blocked, penalty points) when a local offence blocks.
BlockReport = Callable[[str, float, float], Any]


class SharedAdmission(Admission):
    """
    L{Admission} whose blocks are shared with the other workers of the host.

    @ivar report: told of each block (new or extended) that an offence here caused.
    """

    def __init__(
        self, policy: AdmissionPolicy, clock: Any, report: BlockReport, **kwargs: Any
    ) -> None:
        super().__init__(policy, clock, **kwargs)
        self.report = report
        #: Told of each block learnt from Redis (L{apply_learnt}), or L{None}.
        self.learnt: BlockReport | None = None

    def offence(self, address: object, kind: str) -> float | None:
        """
        Record an offence as L{Admission.offence} does; if it starts or extends a block,
        report the block (source key, seconds, points) to the other workers.
        """
        key = self.source_key(address)
        before = self._block_end(key)
        blocked = super().offence(address, kind)
        if blocked is not None:
            penalty = self._penalty_table.entries.get(key)
            if penalty is not None and penalty.blocked_until > before:
                try:
                    self.report(key, blocked, penalty.points)
                except Exception:  # noqa: BLE001 - the block here stands; sharing is best effort
                    log.failure("reporting a block failed", event="worker.share_failed")
        return blocked

    def _block_end(self, key: str) -> float:
        penalty = self._penalty_table.entries.get(key)
        return penalty.blocked_until if penalty is not None else float("-inf")

    def apply_block(self, key: str, seconds: float, points: float) -> None:
        """
        Block C{key} for C{seconds} from now (a longer block in force is kept) with at
        least C{points} penalty points, as another worker did: the next offence here then
        escalates as it would there. Bounded like every penalty entry
        (C{max_tracked_sources}, least recently offending forgotten first).

        @param key: a source key as L{Admission.source_key} gives it.
        @param seconds: the block's length, above 0 and finite (others are ignored); at
            most C{penalty_max} is applied.
        @param points: the penalty points the blocking worker holds, finite and at least 0
            (others are ignored); at most the points that give C{penalty_max} are kept.
        """
        if not (math.isfinite(seconds) and seconds > 0):
            return
        if not (math.isfinite(points) and points >= 0):
            return
        seconds = min(float(seconds), self.policy.penalty_max)
        now = self.clock.seconds()
        table = self._penalty_table
        points = min(float(points), table._max_points)
        entries = table.entries
        penalty = entries.get(key)
        if penalty is None:
            if len(entries) >= self.policy.max_tracked_sources:
                entries.popitem(last=False)
            penalty = Penalty(0.0, now, now, 0)
            entries[key] = penalty
        else:
            entries.move_to_end(key)
        penalty.points = max(table.decayed(penalty, now), float(points))
        penalty.stamp = now
        penalty.blocked_until = max(penalty.blocked_until, now + float(seconds))

    def apply_learnt(self, key: str, seconds: float, points: float) -> None:
        """
        Apply a block learnt from another process through Redis (as L{apply_block}) and
        tell L{learnt} (a worker's supervisor keeps it for a worker that starts later).
        Never reported as this worker's own: it is neither published again nor relayed.
        """
        self.apply_block(key, seconds, points)
        if self.learnt is not None:
            try:
                self.learnt(key, seconds, points)
            except Exception:  # noqa: BLE001 - the block here stands; keeping it is best effort
                log.failure("passing on a learnt block failed", event="worker.share_failed")

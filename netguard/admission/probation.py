# -*- test-case-name: tests.test_admission_probation -*-
"""
The probation pool: connections let in only on probation, in admission order, bounded, with
one timer for the whole pool (the oldest entry's deadline), never one per connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from netguard.admission.eviction import Slot


class Scheduler(Protocol):
    """
    The part of L{twisted.internet.interfaces.IReactorTime} admission needs: a reactor, or a
    L{twisted.internet.task.Clock} in tests.
    """

    def seconds(self) -> float:
        """
        The current time in seconds.
        """
        ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """
        Call C{callable(*args, **kw)} in C{delay} seconds; the result has C{cancel()}.
        """
        ...


class ProbationPool:
    """
    Connections on probation, oldest first. Deadlines are in admission order (one timeout
    for all), so a single delayed call, armed for the oldest entry, serves the pool: when it
    fires it ends every entry that is due and re-arms for the next. Removing an entry never
    touches the timer unless the pool becomes empty (then it is cancelled, so an idle pool
    leaves nothing scheduled); a timer that fires early only re-arms.

    @ivar timeout: seconds a connection may stay on probation.
    @ivar limit: most connections on probation at once.
    """

    def __init__(
        self,
        clock: Scheduler,
        timeout: float,
        limit: int,
        expire: Callable[[list[Slot]], None],
    ) -> None:
        """
        @param clock: the scheduler of the pool's one timer.
        @param timeout: seconds on probation.
        @param limit: the pool's bound.
        @param expire: called with the entries whose probation has ended, already removed
            from the pool, oldest first.
        """
        self.clock = clock
        self.timeout = timeout
        self.limit = limit
        self._expire = expire
        self._entries: dict[Slot, None] = {}
        self._timer: Any = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, slot: object) -> bool:
        return slot in self._entries

    def add(self, slot: Slot, now: float) -> Slot | None:
        """
        Put a connection on probation until C{now + timeout}.

        @return: the oldest entry, removed to make room when the pool was full, else L{None}.
        """
        shed: Slot | None = None
        if len(self._entries) >= self.limit:
            shed = next(iter(self._entries))
            del self._entries[shed]
        slot.deadline = now + self.timeout
        self._entries[slot] = None
        if self._timer is None:
            self._arm(now)
        return shed

    def remove(self, slot: Slot) -> bool:
        """
        Take a connection off probation (it ended, or entered the lane).

        @return: whether it was on probation.
        """
        if self._entries.pop(slot, 0) is not None:
            return False
        if not self._entries and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return True

    def _arm(self, now: float) -> None:
        first = next(iter(self._entries))
        self._timer = self.clock.callLater(max(0.0, first.deadline - now), self._due)

    def _due(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        entries = self._entries
        ended: list[Slot] = []
        while entries:
            first = next(iter(entries))
            if first.deadline > now:
                break
            del entries[first]
            ended.append(first)
        if entries:
            self._arm(now)
        if ended:
            self._expire(ended)

    @property
    def pending_timers(self) -> int:
        """
        How many delayed calls the pool holds (0 or 1).
        """
        return 0 if self._timer is None else 1

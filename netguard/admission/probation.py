# -*- test-case-name: tests.test_admission_eviction -*-
"""
The probation pool: connections let in only on probation, in admission order, bounded and
shed by source share, with one timer for the whole pool (the oldest entry's deadline), never
one per connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from netguard.admission.eviction import CountIndex, Slot, Source
from netguard.clocks import Scheduler


class ProbationPool:
    """
    Connections on probation, in admission order, bounded, shed by source share.

    Deadlines are in admission order (one timeout for all), so a single delayed call, armed
    for the oldest entry, serves the pool: when it fires it ends every entry that is due and
    re-arms for the next. Removing an entry never touches the timer unless the pool becomes
    empty (then it is cancelled, so an idle pool leaves nothing scheduled); a timer that
    fires early only re-arms.

    When the pool is full a newcomer still gets in, and one entry goes to make room: the
    oldest entry of the source holding the most probation slots (counting the newcomer), the
    first to reach that count among equals. A flood, from one source or many, therefore
    sheds its own connections before it can shed those of a source holding fewer: a
    returning client's one connection keeps its full timeout to present its ticket while
    any source holds more. Each source's entries are kept in order and the sources are
    indexed by count (L{CountIndex}), so adding, shedding and removing cost O(1), with no
    scan of the pool.

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
        # Every entry, oldest (earliest deadline) first: the timer's order.
        self._entries: dict[Slot, None] = {}
        # source -> its entries, oldest first (only sources with entries).
        self._by_source: dict[Source, dict[Slot, None]] = {}
        # sources by how many entries they hold.
        self._counts = CountIndex()
        self._timer: Any = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, slot: object) -> bool:
        return slot in self._entries

    def held(self, source: Source) -> int:
        """
        How many connections of C{source} are on probation.
        """
        members = self._by_source.get(source)
        return 0 if members is None else len(members)

    def add(self, slot: Slot, now: float) -> Slot | None:
        """
        Put a connection on probation until C{now + timeout}.

        @return: the entry removed to make room when the pool was full (the oldest of the
            source holding the most, never C{slot} itself), else L{None}.
        """
        slot.deadline = now + self.timeout
        self._entries[slot] = None
        source = slot.source
        members = self._by_source.get(source)
        if members is None:
            members = self._by_source[source] = {}
        else:
            self._counts.remove(source, len(members))
        members[slot] = None
        self._counts.add(source, len(members))
        shed: Slot | None = None
        if len(self._entries) > self.limit:
            largest = self._counts.largest()  # never None: the pool holds slot at least
            if largest is not None:
                shed = next(iter(self._by_source[largest]))
                del self._entries[shed]
                self._forget(shed)
        if self._timer is None:
            self._arm(now)
        return shed

    def _forget(self, slot: Slot) -> None:
        """
        Take an entry out of its source's order and the count index (not out of
        C{_entries}).
        """
        source = slot.source
        members = self._by_source[source]
        count = len(members)
        del members[slot]
        self._counts.remove(source, count)
        if members:
            self._counts.add(source, count - 1)
        else:
            del self._by_source[source]

    def remove(self, slot: Slot) -> bool:
        """
        Take a connection off probation (it ended, or entered the lane).

        @return: whether it was on probation.
        """
        if self._entries.pop(slot, 0) is not None:
            return False
        self._forget(slot)
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
            self._forget(first)
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

    def sources(self) -> int:
        """
        How many sources have connections on probation.
        """
        return len(self._by_source)

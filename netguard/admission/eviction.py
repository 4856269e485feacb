# -*- test-case-name: tests.test_admission_eviction -*-
"""
The per-connection record of admission (L{Slot}), the per-source record (L{Source}), and the
index that picks an eviction victim without scanning the pool (L{EvictionIndex}).

The ranking and its fairness rule: C{docs/operating.md} section 8.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Final

from netguard.admission.policy import Refusal

#: L{Slot.pool} values: which pool a live connection is counted in.
UNAUTH: Final = 0
RELAY: Final = 1
LANE: Final = 2
PROBATION: Final = 3
#: A slot that no longer counts anywhere (released, evicted, or refused at probation's end).
GONE: Final = 4


class Source:
    """
    What admission knows of one source key while it has live connections.

    @ivar key: the source key.
    @ivar live: live connections of this source in every pool (probation included); the
        per-source cap is checked against it.
    @ivar unauth: connections of this source in the unauthenticated pool (not the lane, not
        probation): the count eviction ranks sources by.
    @ivar bad: whether the source had penalty points when last looked at (refreshed lazily).
    @ivar fresh: its evictable connections that have made no progress, oldest first.
    @ivar used: its evictable connections that have made progress, least recently useful first.
    """

    __slots__ = ("key", "live", "unauth", "bad", "fresh", "used")

    def __init__(self, key: str, bad: bool) -> None:
        self.key = key
        self.live = 0
        self.unauth = 0
        self.bad = bad
        self.fresh: dict[Slot, None] = {}
        self.used: dict[Slot, None] = {}


class Slot:
    """
    Admission's record of one admitted connection (one per connection, so slotted).

    @ivar source: its L{Source}.
    @ivar pool: L{UNAUTH}, L{LANE}, L{PROBATION}, L{RELAY} or L{GONE}.
    @ivar progressed: whether the connection has made useful progress.
    @ivar probation: the refusal it stands for while on probation, else L{None}.
    @ivar deadline: when its probation ends (meaningful on probation only).
    @ivar on_evict: called with the reason when admission ends the connection (eviction,
        end of probation); a connection in the unauthenticated pool is evictable only while
        this is set.
    @ivar ident: the identity the address-keyed calls find it by, or L{None}.
    @ivar user: in the lane, the user its ticket was issued to (counted against
        C{lane_per_user}), else L{None}.
    """

    __slots__ = (
        "source",
        "pool",
        "progressed",
        "probation",
        "deadline",
        "on_evict",
        "ident",
        "user",
    )

    def __init__(self, source: Source, pool: int, ident: Hashable | None = None) -> None:
        self.source = source
        self.pool = pool
        self.progressed = False
        self.probation: Refusal | None = None
        self.deadline = 0.0
        self.on_evict: Callable[[str], object] | None = None
        self.ident = ident
        self.user: str | None = None


class CountIndex:
    """
    Sources grouped by a count (their unauthenticated slots for eviction, their probation
    slots for the probation pool), with the largest count at hand: a bucket per count (an
    insertion-ordered dict used as a set) and the highest count that may be non-empty.
    Adding, removing and moving a source cost O(1); finding the largest scans down over
    empty buckets, which costs no more in total than the rises of C{top} before it.
    """

    __slots__ = ("buckets", "top")

    def __init__(self) -> None:
        self.buckets: dict[int, dict[Source, None]] = {}
        self.top = 0

    def add(self, source: Source, count: int) -> None:
        bucket = self.buckets.get(count)
        if bucket is None:
            bucket = self.buckets[count] = {}
        bucket[source] = None
        if count > self.top:
            self.top = count

    def remove(self, source: Source, count: int) -> None:
        bucket = self.buckets.get(count)
        if bucket is None:
            return
        bucket.pop(source, None)
        if not bucket:
            del self.buckets[count]

    def largest(self) -> Source | None:
        """
        @return: a source of the largest count (the first to reach it among equals).
        """
        buckets = self.buckets
        while self.top > 0:
            bucket = buckets.get(self.top)
            if bucket:
                return next(iter(bucket))
            self.top -= 1
        return None

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self.buckets.values())


class EvictionIndex:
    """
    The evictable connections of the unauthenticated pool, ranked for eviction: (1) no
    progress before progress; (2) a source with a bad record before a clean one; (3) the
    source holding the most unauthenticated slots; (4) the oldest "last useful" time.

    Four L{CountIndex} groups (progressed or not, bad or clean) hold the sources that have
    evictable connections of that kind; each source keeps its own connections in order.
    """

    def __init__(self) -> None:
        # groups[progressed][bad]
        self._groups = ((CountIndex(), CountIndex()), (CountIndex(), CountIndex()))

    def _group(self, source: Source, progressed: bool) -> CountIndex:
        return self._groups[progressed][source.bad]

    def track(self, slot: Slot) -> None:
        """
        Make an unauthenticated connection evictable (idempotent).
        """
        source = slot.source
        members = source.used if slot.progressed else source.fresh
        if slot in members:
            return
        members[slot] = None
        if len(members) == 1:
            self._group(source, slot.progressed).add(source, source.unauth)

    def untrack(self, slot: Slot) -> None:
        """
        Stop considering a connection for eviction (idempotent).
        """
        source = slot.source
        members = source.used if slot.progressed else source.fresh
        if members.pop(slot, 0) is None and not members:
            self._group(source, slot.progressed).remove(source, source.unauth)

    def touch(self, slot: Slot) -> None:
        """
        The connection made useful progress: it ranks after those that have made none, and
        after those of its source whose last progress is older. Call on tracked and
        untracked connections alike (an untracked one only records the progress).
        """
        source = slot.source
        tracked = slot in (source.used if slot.progressed else source.fresh)
        if tracked:
            self.untrack(slot)
        slot.progressed = True
        if tracked:
            self.track(slot)

    def recount(self, source: Source, old: int) -> None:
        """
        A source's unauthenticated count changed from C{old} to C{source.unauth}.
        """
        for progressed, members in ((False, source.fresh), (True, source.used)):
            if members:
                group = self._group(source, progressed)
                group.remove(source, old)
                group.add(source, source.unauth)

    def set_bad(self, source: Source, bad: bool) -> None:
        """
        Record a change of a source's record.
        """
        if source.bad == bad:
            return
        for progressed, members in ((False, source.fresh), (True, source.used)):
            if members:
                self._group(source, progressed).remove(source, source.unauth)
        source.bad = bad
        for progressed, members in ((False, source.fresh), (True, source.used)):
            if members:
                self._group(source, progressed).add(source, source.unauth)

    def victim(self, held: int, bad: bool, still_bad: Callable[[Source], bool]) -> Slot | None:
        """
        The highest-ranked connection a newcomer may evict, if any.

        A victim's source must hold more unauthenticated slots than the newcomer's does
        (C{held}), or have a bad record while the newcomer's source has none: a source can
        never evict its own connections, a single-source flood cannot churn others out, and
        the shares of a full pool converge to fairness. A newcomer whose source has a bad
        record never evicts a connection of a clean source, whatever the shares: sources
        that misbehaved cannot churn out first-time clients that did not.

        Within each group eligibility only grows with the count, so looking at the largest
        source of each group, in rank order, finds the best eligible victim.

        @param held: the newcomer's source's unauthenticated slots.
        @param bad: whether the newcomer's source has a bad record.
        @param still_bad: tells whether a source flagged bad still has penalty points; a
            source whose points have decayed is moved to the clean groups on the way.
        @return: the victim (still tracked), or L{None}.
        """
        records = (True,) if bad else (True, False)
        for progressed in (False, True):
            for record in records:
                group = self._groups[progressed][record]
                source = group.largest()
                while record and source is not None and not still_bad(source):
                    self.set_bad(source, False)
                    source = group.largest()
                if source is None:
                    continue
                if source.unauth > held or (record and not bad):
                    members = source.used if progressed else source.fresh
                    return next(iter(members))
        return None

    def sizes(self) -> tuple[int, int, int, int]:
        """
        How many sources each group holds (fresh bad, fresh clean, used bad, used clean).
        """
        (fresh_clean, fresh_bad), (used_clean, used_bad) = self._groups
        return (len(fresh_bad), len(fresh_clean), len(used_bad), len(used_clean))

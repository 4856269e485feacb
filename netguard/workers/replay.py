# -*- test-case-name: tests.test_workers_replay -*-
"""
What the supervisor remembers of the workers' shared state, so that a worker started later
(a restart after a crash, a kill or an out-of-memory exit) begins with it before it accepts
a connection: the blocks in force (L{BlockBook}) and the spent returning-client tickets
(L{SpentBook}).

Both are bounded: the blocks by C{[admission] max_tracked_sources}, the spent ids by
C{[tickets] max_spent} (the bounds of the workers' own tables). Expired entries are dropped;
when a table is full, the entry that expires first goes (which may be the one being added).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Final, Generic, TypeVar

from netguard.ops.control import matching_sources

K = TypeVar("K", str, bytes)

#: The most bytes of entries one replay message carries in each of its two lists (an AMP
#: value holds at most 65,535; see L{netguard.workers.commands.Replay}).
BATCH_BYTES: Final = 60_000


class ExpiringTable(Generic[K]):
    """
    Entries that each expire at a time of their own, at most C{limit} of them: the earliest
    expiry is found with a heap (stale heap items, left by an entry whose expiry changed,
    are skipped and, past twice the table's size, swept).

    @ivar entries: key to C{(expiry, value)}.
    """

    def __init__(self) -> None:
        self.entries: dict[K, tuple[float, Any]] = {}
        self._heap: list[tuple[float, K]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.entries

    def get(self, key: K) -> tuple[float, Any] | None:
        """
        @return: C{(expiry, value)} of C{key}, or L{None}.
        """
        return self.entries.get(key)

    def purge(self, now: float) -> None:
        """
        Drop every entry whose expiry is at or before C{now}.
        """
        while self._heap and self._heap[0][0] <= now:
            self._drop_first()

    def put(self, key: K, expiry: float, value: Any, now: float, limit: int) -> bool:
        """
        Set C{key}'s expiry and value. When this would make more than C{limit} entries, the
        expired ones go first, then the ones expiring first (the new one, if it expires no
        later than every other).

        @return: whether C{key} is in the table afterwards.
        """
        if expiry <= now:
            self.entries.pop(key, None)
            return False
        if key not in self.entries and len(self.entries) >= limit:
            self.purge(now)
        self.entries[key] = (expiry, value)
        heapq.heappush(self._heap, (expiry, key))
        while len(self.entries) > max(0, limit):
            self._drop_first()
        if len(self._heap) > 2 * len(self.entries) + 64:
            self._heap = [(expiry, key) for key, (expiry, _) in self.entries.items()]
            heapq.heapify(self._heap)
        return key in self.entries

    def pop(self, key: K) -> bool:
        """
        Forget C{key} (its heap item is skipped later).

        @return: whether it was there.
        """
        return self.entries.pop(key, None) is not None

    def clear(self) -> int:
        """
        Forget everything.

        @return: how many entries there were.
        """
        count = len(self.entries)
        self.entries.clear()
        self._heap.clear()
        return count

    def live(self, now: float) -> Iterator[tuple[K, float, Any]]:
        """
        The entries not expired at C{now} (the expired ones are dropped first), as
        C{(key, expiry, value)}, soonest expiry first.
        """
        self.purge(now)
        rows = sorted((expiry, key) for key, (expiry, _) in self.entries.items())
        for expiry, key in rows:
            yield key, expiry, self.entries[key][1]

    def _drop_first(self) -> None:
        """
        Drop the entry that expires first (skipping stale heap items).
        """
        while self._heap:
            expiry, key = heapq.heappop(self._heap)
            held = self.entries.get(key)
            if held is not None and held[0] == expiry:
                del self.entries[key]
                return


class BlockBook:
    """
    The blocks in force on the host: per source key, when its block ends and the penalty
    points behind it (as of when they were last set), merged as a worker merges an
    L{netguard.workers.commands.ApplyBlock}: the later end, the higher points.
    """

    def __init__(self) -> None:
        self.table: ExpiringTable[str] = ExpiringTable()

    def __len__(self) -> int:
        return len(self.table)

    def record(
        self, source: str, seconds: float, points: float, now: float, decay: float, limit: int
    ) -> bool:
        """
        Note a block of C{source} for C{seconds} from C{now} with C{points}.

        @param decay: seconds per penalty point forgotten (C{penalty_decay}).
        @param limit: the most sources kept (C{max_tracked_sources}).
        @return: whether the source is kept (it is not when the table is full of blocks
            that all end later).
        """
        until = now + seconds
        held = self.table.get(source)
        if held is not None:
            end, (old_points, stamp) = held
            until = max(until, end)
            points = max(points, _decayed(old_points, now - stamp, decay))
        return self.table.put(source, until, (points, now), now, limit)

    def forget(self, source: str | None) -> int:
        """
        Forget the blocks C{ctl penalties clear} names: every one (L{None}), or those of
        the keys the listing filter shows for an address, network or named key
        (L{matching_sources}); other text forgets nothing.

        @return: how many were forgotten.
        """
        if source is None:
            return self.table.clear()
        keys = matching_sources(list(self.table.entries), source)
        for key in keys:
            self.table.pop(key)
        return len(keys)

    def current(self, source: str, now: float, decay: float) -> tuple[float, float] | None:
        """
        C{source}'s block as a worker applies it at C{now}: C{(seconds left, points
        decayed to now)}, or L{None} when it is not kept or has ended.
        """
        held = self.table.get(source)
        if held is None or held[0] <= now:
            return None
        until, (points, stamp) = held
        return until - now, _decayed(points, now - stamp, decay)

    def in_force(self, now: float, decay: float) -> list[tuple[str, float, float]]:
        """
        The blocks still in force at C{now}, as a worker applies them: C{(source, seconds
        left, points decayed to now)}, soonest end first.
        """
        return [
            (source, until - now, _decayed(points, now - stamp, decay))
            for source, until, (points, stamp) in self.table.live(now)
        ]


class SpentBook:
    """
    The ids of the returning-client tickets spent on the host, each until its ticket
    expires, with its user (a worker bounds each user's share of its own table).
    """

    def __init__(self) -> None:
        self.table: ExpiringTable[bytes] = ExpiringTable()

    def __len__(self) -> int:
        return len(self.table)

    def record(self, ticket_id: bytes, expires: float, user: str, now: float, limit: int) -> bool:
        """
        Note a spent ticket (kept until C{expires}; one already noted stays as it is).

        @param limit: the most ids kept (C{max_spent}).
        @return: whether it is kept.
        """
        if ticket_id in self.table:
            return True
        return self.table.put(ticket_id, expires, user, now, limit)

    def in_force(self, now: float) -> list[tuple[bytes, float, str]]:
        """
        The spent ids whose tickets have not expired at C{now}: C{(id, expiry, user)}.
        """
        return list(self.table.live(now))


class ReplayCursor:
    """
    The state a starting worker is sent, one batch at a time (L{next_batch}): the keys of
    the blocks and the spent tickets kept when the worker became ready (copied without
    sorting). An entry's figures are read when its batch is built (the seconds left then;
    one cleared, dropped or ended since is left out); each batch holds at most
    L{BATCH_BYTES} of blocks and as much of spent tickets, as AMP encodes them.
    """

    def __init__(self, blocks: BlockBook, spent: SpentBook, now: float) -> None:
        blocks.table.purge(now)
        spent.table.purge(now)
        self._book = blocks
        self._spent_book = spent
        # Keys only, in table order: a copy in one pass, no sort (the tables may be large).
        self._blocks: deque[str] = deque(blocks.table.entries)
        self._spent: deque[bytes] = deque(spent.table.entries)

    def __len__(self) -> int:
        """
        How many entries are left to send.
        """
        return len(self._blocks) + len(self._spent)

    def next_batch(
        self, now: float, decay: float, penalty_max: float
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        """
        The next batch: C{(blocks, spent)} as L{netguard.workers.commands.Replay} takes
        them, a block at most C{penalty_max} long; L{None} once everything was sent. An
        entry too large for a batch on its own is left out.
        """
        if not self._blocks and not self._spent:
            return None

        def block(source: str) -> dict[str, Any] | None:
            held = self._book.current(source, now, decay)
            if held is None:
                return None
            return {"source": source, "seconds": min(held[0], penalty_max), "points": held[1]}

        def ticket(ticket_id: bytes) -> dict[str, Any] | None:
            held = self._spent_book.table.get(ticket_id)
            if held is None or held[0] <= now:
                return None
            return {"ticket_id": ticket_id, "expires": held[0], "user": held[1]}

        return _fill(self._blocks, block), _fill(self._spent, ticket)


def _fill(
    keys: deque[Any], entry_of: Callable[[Any], dict[str, Any] | None]
) -> list[dict[str, Any]]:
    """
    Take keys from the front of C{keys} into one list of entries of at most L{BATCH_BYTES}
    as AMP encodes them: a key whose entry is gone (L{None}) is dropped, one whose entry is
    too large for a batch on its own is left out.
    """
    batch: list[dict[str, Any]] = []
    size = 0
    while keys:
        entry = entry_of(keys[0])
        if entry is None:
            keys.popleft()
            continue
        cost = _encoded_size(entry)
        if size + cost > BATCH_BYTES and batch:
            break
        keys.popleft()
        if cost <= BATCH_BYTES:
            batch.append(entry)
            size += cost
    return batch


def _encoded_size(entry: dict[str, Any]) -> int:
    """
    The bytes C{entry} takes in an AMP list: per field its name and value, each with a
    2-byte length, and the 2-byte end of the box (floats as C{str}, text as UTF-8).
    """
    size = 2
    for name, value in entry.items():
        if isinstance(value, bytes):
            data = value
        else:
            data = str(value).encode("utf-8")
        size += 4 + len(name) + len(data)
    return size


def _decayed(points: float, elapsed: float, decay: float) -> float:
    """
    Penalty points after C{elapsed} seconds, one point forgotten every C{decay} seconds (as
    L{netguard.admission.penalties.PenaltyTable.decayed}).
    """
    return max(0.0, points - max(0.0, elapsed) / decay)

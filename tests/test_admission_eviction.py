"""
Tests for eviction and probation in L{netguard.admission}: the eviction order (each rank),
the fairness rule, the probation pool's bounds and single timer, targeted random early drop,
the bookkeeping under random operations, and memory under a flood from 100,000 sources.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from netguard.admission import (
    EVICTED,
    GLOBAL_CAP,
    LANE_CAP_USER,
    OVERLOAD_LAG,
    RANDOM_EARLY_DROP,
    UNAUTH_CAP,
    Admission,
    Refusal,
    Slot,
)
from netguard.admission.eviction import GONE, LANE, PROBATION, RELAY, UNAUTH
from tests.test_admission import LOOSE, nth_v4
from tests.test_admission import make as make_admission


def make(seed: int = 1, **knobs: Any) -> tuple[Admission, Clock]:
    """
    L{tests.test_admission.make} with the rules a test is not about (L{LOOSE}) off.
    """
    return make_admission(seed, **{**LOOSE, **knobs})


class Held:
    """
    One connection as a test holds it: its slot and the reasons admission ended it with.
    """

    def __init__(self, admission: Admission, address: object) -> None:
        result = admission.enter(address)
        assert isinstance(result, Slot), result
        self.slot = result
        self.ends: list[str] = []
        admission.set_evict_handler(result, self.ends.append)

    @property
    def evicted(self) -> bool:
        return self.ends == [EVICTED]


def full_pool(size: int, **knobs: Any) -> tuple[Admission, Clock]:
    return make(max_unauthenticated=size, red_soft=size, **knobs)


class EvictionOrderTests(unittest.TestCase):
    """
    Each rank of the eviction order, the others held equal.
    """

    def test_rank1_no_progress_before_progress(self) -> None:
        """
        A connection that made progress is kept over a younger one that made none.
        """
        admission, clock = full_pool(2)
        older = Held(admission, nth_v4(0))
        admission.progress(older.slot)
        clock.advance(1)
        younger = Held(admission, nth_v4(1))
        Held(admission, nth_v4(2))
        self.assertEqual((older.ends, younger.ends), ([], [EVICTED]))

    def test_rank1_progressed_evicted_when_none_is_fresh(self) -> None:
        """
        When every candidate made progress, a progressed one is evicted.
        """
        admission, _ = full_pool(2)
        first, second = Held(admission, nth_v4(0)), Held(admission, nth_v4(1))
        admission.progress(first.slot)
        admission.progress(second.slot)
        Held(admission, nth_v4(2))
        self.assertEqual((first.ends, second.ends), ([EVICTED], []))

    def test_rank2_bad_record_first(self) -> None:
        """
        Between two fresh connections of sources holding one slot each, the one whose
        source has penalty points (below any block) goes first, though it is younger.
        """
        admission, _ = full_pool(2)
        clean = Held(admission, nth_v4(0))
        bad = Held(admission, nth_v4(1))
        self.assertIsNone(admission.offence(nth_v4(1), "auth_failure"))
        Held(admission, nth_v4(2))
        self.assertEqual((clean.ends, bad.ends), ([], [EVICTED]))

    def test_rank2_record_fades(self) -> None:
        """
        A record whose points have decayed is clean again: the oldest goes first.
        """
        admission, clock = full_pool(2)
        older = Held(admission, nth_v4(0))
        faded = Held(admission, nth_v4(1))
        admission.offence(nth_v4(1), "auth_failure")
        clock.advance(601)
        Held(admission, nth_v4(2))
        self.assertEqual((older.ends, faded.ends), ([EVICTED], []))

    def test_rank3_source_holding_most(self) -> None:
        """
        The source holding the most unauthenticated slots loses one, though another
        source's connection is older.
        """
        admission, _ = full_pool(4)
        lone = Held(admission, nth_v4(0))
        crowd = [Held(admission, nth_v4(1, port)) for port in range(3)]
        Held(admission, nth_v4(2))
        self.assertEqual(lone.ends, [])
        self.assertEqual([c.ends for c in crowd], [[EVICTED], [], []])

    def test_rank4_oldest_last_useful(self) -> None:
        """
        Within a source, among progressed connections, the one useful longest ago goes
        first: progress refreshes a connection's place.
        """
        admission, clock = full_pool(3)
        conns = [Held(admission, nth_v4(0, port)) for port in range(3)]
        for conn in conns:
            admission.progress(conn.slot)
            clock.advance(1)
        admission.progress(conns[0].slot)
        Held(admission, nth_v4(1))
        self.assertEqual([c.ends for c in conns], [[], [EVICTED], []])

    def test_rank4_oldest_fresh(self) -> None:
        """
        Within a source, among connections without progress, the oldest goes first.
        """
        admission, clock = full_pool(3)
        conns = []
        for port in range(3):
            conns.append(Held(admission, nth_v4(0, port)))
            clock.advance(1)
        Held(admission, nth_v4(1))
        self.assertEqual([c.ends for c in conns], [[EVICTED], [], []])

    def test_ranks_combine(self) -> None:
        """
        Progress outranks record, record outranks count: a progressed connection of a bad
        source holding many slots is kept while a fresh clean connection can go.
        """
        admission, _ = full_pool(4)
        crowd = [Held(admission, nth_v4(0, port)) for port in range(3)]
        for conn in crowd:
            admission.progress(conn.slot)
        admission.offence(nth_v4(0), "auth_failure")
        fresh = Held(admission, nth_v4(1))
        Held(admission, nth_v4(2))
        self.assertEqual(fresh.ends, [EVICTED])
        self.assertTrue(all(c.ends == [] for c in crowd))


class FairnessTests(unittest.TestCase):
    def test_single_source_flood_cannot_evict_others(self) -> None:
        """
        A source holding a slot cannot evict a source holding as many: its flood goes on
        probation (C{unauth-cap}) and nobody else is touched.
        """
        admission, _ = full_pool(4)
        others = [Held(admission, nth_v4(n)) for n in range(1, 4)]
        Held(admission, nth_v4(0))
        for port in range(1, 200):
            flood = Held(admission, nth_v4(0, port))
            self.assertEqual(flood.slot.probation, Refusal(UNAUTH_CAP))
        self.assertTrue(all(o.ends == [] for o in others))
        self.assertEqual(admission.counters[EVICTED], 0)

    def test_source_never_evicts_itself(self) -> None:
        """
        A pool held by one source: its newcomer goes on probation.
        """
        admission, _ = full_pool(3)
        mine = [Held(admission, nth_v4(0, port)) for port in range(3)]
        self.assertEqual(Held(admission, nth_v4(0, 9)).slot.probation, Refusal(UNAUTH_CAP))
        self.assertTrue(all(m.ends == [] for m in mine))

    def test_fresh_source_evicts_from_the_biggest(self) -> None:
        """
        A source with no slot evicts from the source holding the most.
        """
        admission, _ = full_pool(4)
        small = Held(admission, nth_v4(1))
        big = [Held(admission, nth_v4(0, port)) for port in range(3)]
        newcomer = Held(admission, nth_v4(2))
        self.assertIsNone(newcomer.slot.probation)
        self.assertEqual(small.ends, [])
        self.assertEqual(sum(1 for b in big if b.evicted), 1)

    def test_at_the_global_cap_a_fresh_source_still_evicts(self) -> None:
        """
        With every pool full (the global cap reached, as with the default cap only then),
        a fresh source takes the place of a connection of the biggest source instead of
        being refused C{global-cap}; a newcomer of that biggest source is refused
        C{global-cap} at once (no victim it may take, no probation past the cap).
        """
        admission, _ = full_pool(3, max_connections=4, max_relays=1)
        relay = Held(admission, nth_v4(9))
        self.assertIsNone(admission.promote(relay.slot))
        big = [Held(admission, nth_v4(0, port)) for port in range(3)]
        self.assertEqual(admission.snapshot()["connections"], 4)
        newcomer = Held(admission, nth_v4(1))
        self.assertIsNone(newcomer.slot.probation)
        self.assertEqual(sum(1 for b in big if b.evicted), 1)
        self.assertEqual(admission.snapshot()["connections"], 4)
        self.assertEqual(admission.enter(nth_v4(0, 99)), Refusal(GLOBAL_CAP))
        self.assertEqual(relay.ends, [])

    def test_shares_converge(self) -> None:
        """
        A source keeps evicting from a bigger one only while that one holds more: with a
        pool of 6 held by one source, another ends with 3 of them and no more.
        """
        admission, _ = full_pool(6)
        for port in range(6):
            Held(admission, nth_v4(0, port))
        admitted = 0
        for port in range(20):
            if Held(admission, nth_v4(1, port)).slot.probation is None:
                admitted += 1
        self.assertEqual(admitted, 3)
        sources = admission._sources
        self.assertEqual((sources["10.0.0.0/32"].unauth, sources["10.0.0.1/32"].unauth), (3, 3))

    def test_clean_newcomer_evicts_bad_source_of_equal_share(self) -> None:
        """
        A bad record loses to a clean newcomer even when the shares are equal; a bad
        newcomer cannot evict a bad (or clean) source of equal share.
        """
        admission, _ = full_pool(3)
        bad = Held(admission, nth_v4(0))
        other_bad = Held(admission, nth_v4(1))
        clean = Held(admission, nth_v4(2))
        admission.offence(nth_v4(0), "auth_failure")
        admission.offence(nth_v4(1), "auth_failure")
        self.assertEqual(Held(admission, nth_v4(1, 2)).slot.probation, Refusal(UNAUTH_CAP))
        self.assertEqual((bad.ends, other_bad.ends, clean.ends), ([], [], []))
        newcomer = Held(admission, nth_v4(2, 2))
        self.assertIsNone(newcomer.slot.probation)
        self.assertEqual((bad.ends, other_bad.ends, clean.ends), ([EVICTED], [], []))


class ProbationPoolTests(unittest.TestCase):
    def pressed(self, **knobs: Any) -> tuple[Admission, Clock]:
        """
        An admission whose every newcomer goes on probation (overload).
        """
        admission, clock = make(**knobs)
        admission.set_overload(OVERLOAD_LAG)
        return admission, clock

    def test_bound_exact_and_one_past_fifo(self) -> None:
        """
        C{max_probation} connections wait; the next one makes one go, ended with its own
        reason and counted; among sources of equal share (one each) the oldest goes first;
        the pool stays at its bound.
        """
        admission, _ = self.pressed(max_probation=3)
        held = [Held(admission, nth_v4(n)) for n in range(3)]
        self.assertEqual([h.ends for h in held], [[], [], []])
        self.assertEqual(admission.snapshot()["probation"], 3)
        held.append(Held(admission, nth_v4(3)))
        self.assertEqual([h.ends for h in held], [[OVERLOAD_LAG], [], [], []])
        held.append(Held(admission, nth_v4(4)))
        self.assertEqual([h.ends for h in held], [[OVERLOAD_LAG], [OVERLOAD_LAG], [], [], []])
        self.assertEqual(admission.snapshot()["probation"], 3)
        self.assertEqual(admission.counters[OVERLOAD_LAG], 2)

    def test_flood_source_sheds_itself_not_a_single_slot_source(self) -> None:
        """
        The pool full (exactly C{max_probation}: nothing shed) with a returning client's one
        connection, the oldest, and a flood source's others: one past the bound sheds the
        flood source's oldest, not the oldest entry overall, and so on for every further
        flood connection, while the single-slot source keeps its full timeout.
        """
        admission, clock = self.pressed(max_probation=4)
        client = Held(admission, nth_v4(0))
        flood = [Held(admission, nth_v4(1, port)) for port in range(3)]
        self.assertEqual([h.ends for h in [client, *flood]], [[], [], [], []])
        flood.append(Held(admission, nth_v4(1, 3)))
        self.assertEqual([h.ends for h in [client, *flood]], [[], [OVERLOAD_LAG], [], [], []])
        flood.extend(Held(admission, nth_v4(1, port)) for port in range(4, 40))
        self.assertEqual(client.ends, [])
        self.assertEqual(admission.snapshot()["probation"], 4)
        self.assertEqual(admission.counters[OVERLOAD_LAG], 37)
        clock.advance(0.999)
        self.assertEqual(client.ends, [])
        self.assertIsNone(admission.enter_lane(client.slot))

    def test_sheds_from_the_source_holding_most(self) -> None:
        """
        With several sources on probation, the one holding the most loses its oldest
        connection; once shares are equal, the source that reached that share first; a
        newcomer from the source holding the most sheds its own source's oldest.
        """
        admission, _ = self.pressed(max_probation=5)
        a = [Held(admission, nth_v4(0, port)) for port in range(2)]
        b = [Held(admission, nth_v4(1, port)) for port in range(3)]
        Held(admission, nth_v4(2))
        self.assertEqual([h.ends for h in a + b], [[], [], [OVERLOAD_LAG], [], []])
        Held(admission, nth_v4(3))
        self.assertEqual([h.ends for h in a + b], [[OVERLOAD_LAG], [], [OVERLOAD_LAG], [], []])
        # a, b, 2, 3 hold 1, 2, 1, 1: a newcomer of b makes b hold 3, and b sheds.
        b.append(Held(admission, nth_v4(1, 9)))
        self.assertEqual([h.ends for h in b], [[OVERLOAD_LAG], [OVERLOAD_LAG], [], []])
        self.assertEqual(admission.snapshot()["probation"], 5)

    def test_many_source_flood_cannot_shed_a_returning_client(self) -> None:
        """
        254 sources each opening 10 connections a second keep a 512-place pool full; a
        returning client's one connection arriving in the middle keeps its place for its
        whole second (each flood source holds two), still with one timer for the pool, and
        enters the lane at the last moment.
        """
        admission, clock = self.pressed(max_probation=512, probation_timeout=1.0)
        client: Held | None = None
        for step in range(15):
            for source in range(1, 255):
                Held(admission, nth_v4(source, step))
            if step == 5:
                client = Held(admission, nth_v4(10_000))
            self.assertEqual(admission.snapshot()["probation"], min(512, 254 * (step + 1)))
            self.assertEqual(len(clock.getDelayedCalls()), 1)
            clock.advance(0.1 if step != 14 else 0.0)
        assert client is not None
        self.assertEqual(client.ends, [])
        self.assertGreater(client.slot.deadline, clock.seconds())
        self.assertIsNone(admission.enter_lane(client.slot))
        self.assertLessEqual(admission._probation.sources(), 255)

    def test_one_timer_for_a_thousand(self) -> None:
        """
        1,000 connections on probation hold exactly one delayed call; when it fires every
        due entry ends and nothing is left scheduled.
        """
        admission, clock = self.pressed(max_probation=1000)
        held = [Held(admission, nth_v4(n)) for n in range(1000)]
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(1.0)
        self.assertTrue(all(h.ends == [OVERLOAD_LAG] for h in held))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(admission.snapshot()["probation"], 0)
        self.assertEqual(admission._sources, {})
        self.assertEqual(admission._probation.sources(), 0)

    def test_each_ends_at_its_own_deadline(self) -> None:
        """
        The one timer re-arms for the next entry: each connection gets its full timeout.
        """
        admission, clock = self.pressed(probation_timeout=1.0)
        first = Held(admission, nth_v4(0))
        clock.advance(0.5)
        second = Held(admission, nth_v4(1))
        clock.advance(0.5)
        self.assertEqual((first.ends, second.ends), ([OVERLOAD_LAG], []))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0.499)
        self.assertEqual(second.ends, [])
        clock.advance(0.001)
        self.assertEqual(second.ends, [OVERLOAD_LAG])

    def test_released_head_keeps_the_timer_until_empty(self) -> None:
        """
        Releasing the oldest leaves one timer (which then re-arms for the next);
        releasing the last cancels it.
        """
        admission, clock = self.pressed()
        first = Held(admission, nth_v4(0))
        clock.advance(0.5)
        second = Held(admission, nth_v4(1))
        admission.release(first.slot)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0.5)
        self.assertEqual(second.ends, [])
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        admission.release(second.slot)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_probation_counts_against_the_source(self) -> None:
        """
        Connections on probation count towards their source's cap, so one source cannot
        fill the probation pool beyond C{per_source_max}.
        """
        admission, _ = make(per_source_max=2, per_source_burst=100)
        admission.set_overload(OVERLOAD_LAG)
        Held(admission, nth_v4(0, 1))
        Held(admission, nth_v4(0, 2))
        self.assertEqual(admission.enter(nth_v4(0, 3)).reason, "per-source-cap")  # type: ignore[union-attr]

    def test_probation_outside_the_global_cap(self) -> None:
        """
        Probation does not count towards the global cap, so a flood churning through
        probation never makes the global cap refuse a newcomer.
        """
        admission, _ = self.pressed(max_connections=2, max_probation=5)
        for n in range(50):
            Held(admission, nth_v4(n))
        self.assertIsInstance(admission.enter(nth_v4(99)), Slot)


class TargetedRedTests(unittest.TestCase):
    KNOBS: dict[str, Any] = {"max_unauthenticated": 1000, "red_soft": 1, "red_hard": 2}

    def test_fresh_clean_sources_never_dropped(self) -> None:
        """
        With the drop probability at 1, 500 connections from fresh clean sources are all
        admitted.
        """
        admission, _ = make(**self.KNOBS)
        Held(admission, nth_v4(0))
        Held(admission, nth_v4(1))
        self.assertEqual(admission.drop_probability(2), 1.0)
        for n in range(2, 502):
            self.assertIsNone(Held(admission, nth_v4(n)).slot.probation)
        self.assertEqual(admission.counters[RANDOM_EARLY_DROP], 0)

    def test_source_holding_a_slot_is_dropped_to_probation(self) -> None:
        """
        A source that already holds an unauthenticated slot meets random early drop; the
        dropped connection goes on probation, not refused.
        """
        admission, _ = make(**self.KNOBS)
        Held(admission, nth_v4(0))
        Held(admission, nth_v4(1))
        dropped = Held(admission, nth_v4(0, 2))
        self.assertEqual(dropped.slot.probation, Refusal(RANDOM_EARLY_DROP))

    def test_bad_source_is_dropped(self) -> None:
        """
        A source with penalty points meets random early drop on its first connection.
        """
        admission, _ = make(**self.KNOBS)
        Held(admission, nth_v4(0))
        Held(admission, nth_v4(1))
        admission.offence(nth_v4(7), "auth_failure")
        self.assertEqual(Held(admission, nth_v4(7)).slot.probation, Refusal(RANDOM_EARLY_DROP))

    def test_without_probation_it_is_a_refusal(self) -> None:
        """
        For a caller that cannot hold probation, the targeted drop refuses as before.
        """
        admission, _ = make(**self.KNOBS)
        self.assertIsNone(admission.admit(nth_v4(0)))
        self.assertIsNone(admission.admit(nth_v4(1)))
        self.assertEqual(admission.admit(nth_v4(0, 3)), Refusal(RANDOM_EARLY_DROP))
        self.assertIsNone(admission.admit(nth_v4(5)))


def check_consistent(admission: Admission, model: dict[Slot, int]) -> None:
    """
    Every count admission keeps agrees with the slots' pools, and the eviction index
    holds exactly the evictable connections, each source in the right bucket.
    """
    live = {slot: pool for slot, pool in model.items() if pool != GONE}
    for slot, pool in model.items():
        assert slot.pool == pool, (slot.pool, pool)
    counts = {pool: sum(1 for p in live.values() if p == pool) for pool in (UNAUTH, LANE, RELAY)}
    snap = admission.snapshot()
    assert snap["unauthenticated"] == counts[UNAUTH]
    assert snap["lane"] == counts[LANE]
    assert snap["relays"] == counts[RELAY]
    assert snap["probation"] == sum(1 for p in live.values() if p == PROBATION)
    policy = admission.policy
    assert counts[UNAUTH] <= policy.max_unauthenticated
    assert counts[LANE] <= policy.lane_max
    assert counts[RELAY] <= policy.max_relays
    assert snap["probation"] <= policy.max_probation
    by_source: dict[str, list[Slot]] = {}
    for slot in live:
        by_source.setdefault(slot.source.key, []).append(slot)
    assert set(by_source) == set(admission._sources)
    groups = admission._evictions._groups
    for key, slots in by_source.items():
        source = admission._sources[key]
        assert all(slot.source is source for slot in slots)
        assert source.live == len(slots)
        assert source.unauth == sum(1 for s in slots if s.pool == UNAUTH)
        evictable = {s for s in slots if s.pool == UNAUTH and s.on_evict is not None}
        assert set(source.fresh) == {s for s in evictable if not s.progressed}
        assert set(source.used) == {s for s in evictable if s.progressed}
        for progressed, members in ((False, source.fresh), (True, source.used)):
            for record in (False, True):
                buckets = groups[progressed][record].buckets
                inside = [count for count, bucket in buckets.items() if source in bucket]
                expected = [source.unauth] if members and source.bad == record else []
                assert inside == expected, (key, progressed, record, inside, expected)
    for progressed in (0, 1):
        for record in (0, 1):
            for bucket in groups[progressed][record].buckets.values():
                assert bucket, "empty buckets are dropped"
                assert all(admission._sources.get(s.key) is s for s in bucket)
    pool = admission._probation
    assert len(pool) == snap["probation"]
    on_probation = Counter(slot.source for slot, p in live.items() if p == PROBATION)
    assert {source: pool.held(source) for source in on_probation} == dict(on_probation)
    assert pool.sources() == len(on_probation)
    assert {
        source: count for count, bucket in pool._counts.buckets.items() for source in bucket
    } == dict(on_probation)
    assert all(bucket for bucket in pool._counts.buckets.values())
    lane_users = Counter(slot.user for slot, p in live.items() if p == LANE and slot.user)
    assert admission._lane_users == dict(lane_users), (admission._lane_users, lane_users)
    assert all(count <= policy.lane_per_user for count in lane_users.values())
    assert all(slot.user is None for slot, p in model.items() if p != LANE)
    timers = admission._probation.pending_timers
    assert timers == 1 if snap["probation"] else timers == 0, (timers, snap["probation"])


class BookkeepingTests(unittest.TestCase):
    def test_random_operations_never_leak_a_slot(self) -> None:
        """
        Thousands of random operations (connect with or without an eviction handler,
        handlers set and cleared later, lane with or without a user, login, progress,
        offences, overload on and off, time passing, release) keep every count equal to a
        model built from the slots' own states and the handlers' calls: the pools, the
        eviction index, the probation pool's per-source index, each user's lane count
        (never past C{lane_per_user}, refused exactly at it); a full probation pool always
        sheds the oldest connection of a source holding the most; at the end, releasing
        everything leaves nothing counted or scheduled.
        """
        reasons: set[str] = set()
        self.tally: Counter[str] = Counter()
        for seed in range(12):
            reasons |= self._scenario(seed)
        # The operations reached every way a connection can be ended by admission, shed a
        # full probation pool and met the per-user lane cap.
        self.assertEqual(reasons, {EVICTED, UNAUTH_CAP, RANDOM_EARLY_DROP, OVERLOAD_LAG})
        self.assertGreater(self.tally["shed"], 10)
        self.assertGreater(self.tally["lane-cap-user"], 10)

    def _scenario(self, seed: int) -> set[str]:
        draw = random.Random(seed)
        admission, clock = make(
            seed=seed,
            max_connections=14,
            max_unauthenticated=6,
            red_soft=3,
            red_hard=6,
            max_relays=4,
            lane_max=3,
            lane_per_user=1,
            max_probation=4,
            per_source_max=5,
            per_source_burst=10_000,
        )
        model: dict[Slot, int] = {}
        ended: list[tuple[Slot, str]] = []

        def handler(slot: Slot) -> Any:
            def on_evict(reason: str) -> None:
                ended.append((slot, reason))
                model[slot] = GONE

            return on_evict

        for _ in range(3000):
            op = draw.randrange(10)
            live = [slot for slot, pool in model.items() if pool != GONE]
            if op <= 2:
                source = draw.randrange(12)
                waiting = [slot for slot in live if model[slot] == PROBATION]
                held = Counter(slot.source.key for slot in waiting)
                mark = len(ended)
                result = admission.enter(nth_v4(source, draw.randrange(1000)))
                if isinstance(result, Slot) and result.probation is not None:
                    held[result.source.key] += 1
                for slot, _ in ended[mark:]:
                    if slot in waiting:
                        # Shed to make room: the oldest of a source holding the most.
                        self.tally["shed"] += 1
                        assert held[slot.source.key] == max(held.values()), held
                        assert all(
                            other.deadline >= slot.deadline
                            for other in waiting
                            if other.source is slot.source
                        )
                if isinstance(result, Slot):
                    model[result] = PROBATION if result.probation is not None else UNAUTH
                    # A slot on probation must have a handler (or nobody could close it).
                    if result.probation is not None or draw.random() < 0.8:
                        admission.set_evict_handler(result, handler(result))
            elif op == 3 and live:
                slot = draw.choice(live)
                user = draw.choice(["alice", "bob", None])
                refusal = admission.enter_lane(slot, user)
                if refusal is None:
                    model[slot] = RELAY if model[slot] == RELAY else LANE
                elif refusal.reason == LANE_CAP_USER:
                    self.tally["lane-cap-user"] += 1
                    at_cap = sum(1 for s, p in model.items() if p == LANE and s.user == user)
                    assert at_cap == admission.policy.lane_per_user
            elif op == 4 and live:
                slot = draw.choice(live)
                if admission.promote(slot) is None:
                    model[slot] = RELAY
            elif op == 5 and live:
                admission.progress(draw.choice(live))
            elif op == 6 and live:
                slot = draw.choice(live)
                admission.release(slot)
                model[slot] = GONE
            elif op == 7:
                admission.offence(nth_v4(draw.randrange(6)), "auth_failure")
            elif op == 8:
                admission.set_overload(draw.choice([None, None, OVERLOAD_LAG]))
            elif op == 9 and live and draw.random() < 0.3:
                # The owner clears or sets the handler (a slot on probation keeps one).
                slot = draw.choice(live)
                if slot.on_evict is not None and model[slot] != PROBATION:
                    admission.set_evict_handler(slot, None)
                else:
                    admission.set_evict_handler(slot, handler(slot))
            else:
                clock.advance(draw.choice([0.1, 0.5, 1.0, 30.0]))
            check_consistent(admission, model)
        for slot, _ in ended:
            self.assertEqual(slot.pool, GONE)
        self.assertEqual(len({id(slot) for slot, _ in ended}), len(ended))
        self.assertTrue(any(pool in (LANE, RELAY) for pool in model.values()))
        for slot in list(model):
            admission.release(slot)
            model[slot] = GONE
        check_consistent(admission, model)
        snap = admission.snapshot()
        self.assertEqual((snap["connections"], snap["probation"]), (0, 0))
        self.assertEqual(admission._sources, {})
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(admission._evictions.sizes(), (0, 0, 0, 0))
        return {reason for _, reason in ended}


class FloodMemoryTests(unittest.TestCase):
    SOURCES = 100_000

    def test_memory_bounded_under_a_100k_source_flood(self) -> None:
        """
        100,000 sources, each connecting once with an eviction handler and never leaving:
        the pools stay at their caps, the source records at most the live connections,
        the probation pool at its bound with one timer, and the eviction index holds only
        sources with live connections.
        """
        admission, clock = make(max_tracked_sources=1000)
        policy = admission.policy
        ends = 0

        def on_evict(reason: str) -> None:
            nonlocal ends
            ends += 1

        for n in range(self.SOURCES):
            result = admission.enter(nth_v4(n))
            assert isinstance(result, Slot)
            admission.set_evict_handler(result, on_evict)
            if n % 10_000 == 0:
                clock.advance(0.1)
        snap = admission.snapshot()
        self.assertEqual(snap["unauthenticated"], policy.max_unauthenticated)
        self.assertLessEqual(snap["probation"], policy.max_probation)
        self.assertLessEqual(
            len(admission._sources), policy.max_unauthenticated + policy.max_probation
        )
        self.assertLessEqual(sum(admission._evictions.sizes()), policy.max_unauthenticated)
        self.assertLessEqual(len(admission._buckets), 1000)
        self.assertLessEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(len(admission._live), 0)
        self.assertEqual(ends + snap["unauthenticated"] + snap["probation"], self.SOURCES)


class BadNewcomerTests(unittest.TestCase):
    def test_bad_newcomer_never_evicts_a_clean_source(self) -> None:
        """
        A source with a bad record and no slot cannot evict a clean source's connection,
        though that source holds more slots; it goes on probation.
        """
        admission, _ = full_pool(2)
        clean = [Held(admission, nth_v4(0, port)) for port in range(2)]
        admission.offence(nth_v4(9), "auth_failure")
        self.assertEqual(Held(admission, nth_v4(9)).slot.probation, Refusal(UNAUTH_CAP))
        self.assertTrue(all(c.ends == [] for c in clean))

    def test_bad_newcomer_evicts_a_bigger_bad_source(self) -> None:
        """
        A bad newcomer may still evict from a bad source holding more slots than its own.
        """
        admission, _ = full_pool(3)
        clean = Held(admission, nth_v4(1))
        bad = [Held(admission, nth_v4(0, port)) for port in range(2)]
        admission.offence(nth_v4(0), "auth_failure")
        admission.offence(nth_v4(9), "auth_failure")
        self.assertIsNone(Held(admission, nth_v4(9)).slot.probation)
        self.assertEqual(clean.ends, [])
        self.assertEqual([b.ends for b in bad], [[EVICTED], []])

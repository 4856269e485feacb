"""
Tests for the per-connection admission API of L{netguard.admission}: slots, probation, the
returning-client lane, progress and eviction handlers, on L{task.Clock} with seeded draws.
"""

from __future__ import annotations

from twisted.trial import unittest

from netguard.admission import (
    EVICTED,
    GLOBAL_CAP,
    LANE_CAP,
    LANE_CAP_USER,
    OFFENCE_KINDS,
    OVERLOAD_LAG,
    OVERLOAD_LOAD,
    OVERLOAD_MEMORY,
    PENALISED,
    PER_SOURCE_CAP,
    PRESSURE_REASONS,
    RANDOM_EARLY_DROP,
    RATE,
    REASONS,
    RELAY_CAP,
    UNAUTH_CAP,
    Admission,
    AdmissionPolicy,
    Refusal,
    Slot,
    allowed_values,
)
from tests.test_admission import LOOSE, UNIX, make, nth_v4, v4


def enter(admission: Admission, address: object) -> Slot:
    """
    Enter a connection that must get a slot (possibly on probation).
    """
    result = admission.enter(address)
    assert isinstance(result, Slot), result
    return result


class Ends:
    """
    An eviction handler that records the reasons it is called with.
    """

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


def evictable(admission: Admission, address: object) -> tuple[Slot, Ends]:
    slot = enter(admission, address)
    ends = Ends()
    admission.set_evict_handler(slot, ends)
    return slot, ends


class VocabularyTests(unittest.TestCase):
    def test_new_reasons_and_offence(self) -> None:
        """
        C{evicted} and C{lane-cap} are reasons; C{bad_ticket} is an offence kind worth
        C{bad_ticket_points}; the pressure reasons are exactly the five the design names.
        """
        self.assertTrue({EVICTED, LANE_CAP} <= REASONS)
        self.assertEqual((EVICTED, LANE_CAP), ("evicted", "lane-cap"))
        self.assertIn("bad_ticket", OFFENCE_KINDS)
        self.assertEqual(AdmissionPolicy(bad_ticket_points=5).points_for("bad_ticket"), 5)
        self.assertEqual(
            PRESSURE_REASONS,
            {UNAUTH_CAP, RANDOM_EARLY_DROP, OVERLOAD_LAG, OVERLOAD_LOAD, OVERLOAD_MEMORY},
        )

    def test_new_knobs_validated(self) -> None:
        """
        The lane and probation knobs must be positive; their allowed values are described.
        """
        for name in ("lane_max", "max_probation", "probation_timeout"):
            with self.assertRaises(ValueError):
                AdmissionPolicy(**{name: 0})
        with self.assertRaises(ValueError):
            AdmissionPolicy(bad_ticket_points=-1)
        self.assertEqual(allowed_values("lane_max"), "an integer from 1 to 2147483647")
        self.assertEqual(allowed_values("probation_timeout"), "a number above 0")
        self.assertEqual(allowed_values("bad_ticket_points"), "an integer from 0 to 2147483647")


class BadTicketPointsTests(unittest.TestCase):
    def test_one_bad_ticket_never_blocks_alone(self) -> None:
        """
        At the defaults (2 points, threshold 3) one bad ticket leaves the source unblocked,
        with a bad record; a second one within the decay time blocks it (about 4 points:
        twice C{penalty_base}); an early talk alone still blocks at once.
        """
        admission, clock = make(**LOOSE)
        self.assertIsNone(admission.offence(nth_v4(0), "bad_ticket"))
        self.assertIsInstance(admission.enter(nth_v4(0)), Slot)
        self.assertEqual(admission.penalties(), [("10.0.0.0/32", 0.0, 1)])
        clock.advance(60.0)
        self.assertEqual(admission.offence(nth_v4(0), "bad_ticket"), 20.0)
        self.assertEqual(admission.enter(nth_v4(0, 2)), Refusal(PENALISED, 20.0))
        self.assertEqual(admission.offence(nth_v4(1), "early_talker"), 10.0)


class ProbationTests(unittest.TestCase):
    def test_full_pool_without_victim_puts_on_probation(self) -> None:
        """
        A full unauthenticated pool with nothing evictable lets a newcomer in on probation
        (C{unauth-cap}): it takes no unauthenticated slot and is not refused yet.
        """
        admission, _ = make(max_unauthenticated=2, red_soft=2, **LOOSE)
        enter(admission, nth_v4(0))
        enter(admission, nth_v4(1))
        slot = enter(admission, nth_v4(2))
        self.assertEqual(slot.probation, Refusal(UNAUTH_CAP))
        snap = admission.snapshot()
        self.assertEqual((snap["unauthenticated"], snap["probation"]), (2, 1))
        self.assertEqual(admission.counters[UNAUTH_CAP], 0)

    def test_without_probation_the_pressure_refuses(self) -> None:
        """
        A caller that cannot hold a connection on probation gets the refusal it stands for.
        """
        admission, _ = make(max_unauthenticated=1, red_soft=1, **LOOSE)
        enter(admission, nth_v4(0))
        self.assertEqual(admission.enter(nth_v4(1), probation=False), Refusal(UNAUTH_CAP))
        self.assertEqual(admission.admit(nth_v4(2)), Refusal(UNAUTH_CAP))
        self.assertEqual(admission.snapshot()["probation"], 0)

    def test_probation_ends_after_the_timeout(self) -> None:
        """
        At C{probation_timeout} the handler is called with the probation reason, the
        connection no longer counts anywhere, and the refusal is counted; not before.
        """
        admission, clock = make(max_unauthenticated=1, red_soft=1, probation_timeout=1.0, **LOOSE)
        enter(admission, nth_v4(0))
        slot, ends = evictable(admission, nth_v4(1))
        clock.advance(0.999)
        self.assertEqual(ends.reasons, [])
        clock.advance(0.001)
        self.assertEqual(ends.reasons, [UNAUTH_CAP])
        self.assertEqual(admission.snapshot()["probation"], 0)
        self.assertEqual(admission.counters[UNAUTH_CAP], 1)
        self.assertNotIn(slot.source.key, admission._sources)
        admission.release(slot)  # the owner's later release changes nothing
        self.assertEqual(admission.snapshot()["unauthenticated"], 1)

    def test_lane_ends_probation(self) -> None:
        """
        A connection on probation that enters the lane is no longer on probation: its
        timer does nothing to it, and it counts in the lane.
        """
        admission, clock = make(max_unauthenticated=1, red_soft=1, **LOOSE)
        enter(admission, nth_v4(0))
        slot, ends = evictable(admission, nth_v4(1))
        self.assertIsNone(admission.enter_lane(slot))
        self.assertIsNone(slot.probation)
        clock.advance(5)
        self.assertEqual(ends.reasons, [])
        snap = admission.snapshot()
        self.assertEqual((snap["lane"], snap["probation"], snap["connections"]), (1, 0, 2))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_promote_on_probation_is_refused(self) -> None:
        """
        A connection on probation cannot have logged in: promoting it returns its
        probation refusal and moves nothing.
        """
        admission, _ = make(max_unauthenticated=1, red_soft=1, **LOOSE)
        enter(admission, nth_v4(0))
        slot = enter(admission, nth_v4(1))
        self.assertEqual(admission.promote(slot), Refusal(UNAUTH_CAP))
        self.assertEqual(admission.snapshot()["relays"], 0)


class LaneTests(unittest.TestCase):
    def test_lane_moves_out_of_the_unauthenticated_pool(self) -> None:
        """
        Entering the lane frees the unauthenticated slot; logging in moves the connection
        from the lane to the relay pool; releasing a relay frees it.
        """
        admission, _ = make(**LOOSE)
        slot = enter(admission, nth_v4(0))
        self.assertIsNone(admission.enter_lane(slot))
        snap = admission.snapshot()
        self.assertEqual((snap["unauthenticated"], snap["lane"]), (0, 1))
        self.assertIsNone(admission.promote(slot))
        snap = admission.snapshot()
        self.assertEqual((snap["lane"], snap["relays"]), (0, 1))
        admission.release(slot)
        self.assertEqual(admission.snapshot()["connections"], 0)

    def test_lane_cap_exact_and_one_past(self) -> None:
        """
        C{lane_max} connections enter the lane; the next is refused C{lane-cap} and stays
        where it was; a lane connection that ends makes room.
        """
        admission, _ = make(lane_max=3, **LOOSE)
        slots = [enter(admission, nth_v4(n)) for n in range(4)]
        for slot in slots[:3]:
            self.assertIsNone(admission.enter_lane(slot))
        self.assertEqual(admission.enter_lane(slots[3]), Refusal(LANE_CAP))
        self.assertEqual(admission.counters[LANE_CAP], 1)
        snap = admission.snapshot()
        self.assertEqual((snap["lane"], snap["unauthenticated"]), (3, 1))
        admission.release(slots[0])
        self.assertIsNone(admission.enter_lane(slots[3]))

    def test_lane_from_probation_meets_the_global_cap(self) -> None:
        """
        Probation is outside the global cap; entering the lane from it is not: at the cap
        the move is refused C{global-cap} and the connection stays on probation.
        """
        admission, _ = make(max_connections=3, max_unauthenticated=3, red_soft=3, **LOOSE)
        enter(admission, nth_v4(0))
        enter(admission, nth_v4(1))
        admission.set_overload(OVERLOAD_LAG)
        slot = enter(admission, nth_v4(2))
        self.assertEqual(slot.probation, Refusal(OVERLOAD_LAG))
        admission.set_overload(None)
        enter(admission, nth_v4(3))
        self.assertEqual(admission.snapshot()["connections"], 3)
        self.assertEqual(admission.enter_lane(slot), Refusal(GLOBAL_CAP))
        self.assertEqual(slot.probation, Refusal(OVERLOAD_LAG))
        self.assertEqual(admission.snapshot()["probation"], 1)

    def test_lane_relay_cap(self) -> None:
        """
        A lane connection logging in meets the relay cap like any other.
        """
        admission, _ = make(max_relays=1, **LOOSE)
        first, second = enter(admission, nth_v4(0)), enter(admission, nth_v4(1))
        admission.enter_lane(second)
        self.assertIsNone(admission.promote(first))
        self.assertEqual(admission.promote(second), Refusal(RELAY_CAP))
        self.assertEqual(admission.snapshot()["lane"], 1)


class LanePerUserTests(unittest.TestCase):
    def test_default_is_sixteen(self) -> None:
        """
        C{lane_per_user} defaults to 16, must be positive, and C{lane-cap-user} is a reason.
        """
        self.assertEqual(AdmissionPolicy().lane_per_user, 16)
        with self.assertRaises(ValueError):
            AdmissionPolicy(lane_per_user=0)
        self.assertEqual(allowed_values("lane_per_user"), "an integer from 1 to 2147483647")
        self.assertIn(LANE_CAP_USER, REASONS)
        self.assertEqual(LANE_CAP_USER, "lane-cap-user")

    def test_exact_bound_and_one_past_changes_nothing(self) -> None:
        """
        C{lane_per_user} connections of one user enter the lane; the next of that user is
        refused C{lane-cap-user}, counted, and stays exactly where it was (unauthenticated,
        or on probation with its deadline), while another user, and a ticket with no user,
        still enter.
        """
        admission, clock = make(lane_per_user=2, **LOOSE)
        slots = [enter(admission, nth_v4(n)) for n in range(3)]
        for slot in slots[:2]:
            self.assertIsNone(admission.enter_lane(slot, "alice"))
        self.assertEqual(admission.enter_lane(slots[2], "alice"), Refusal(LANE_CAP_USER))
        self.assertEqual(admission.counters[LANE_CAP_USER], 1)
        snap = admission.snapshot()
        self.assertEqual((snap["lane"], snap["unauthenticated"]), (2, 1))
        self.assertIsNone(slots[2].user)
        admission.set_overload(OVERLOAD_LAG)
        held = enter(admission, nth_v4(3))
        deadline = held.deadline
        self.assertEqual(admission.enter_lane(held, "alice"), Refusal(LANE_CAP_USER))
        self.assertEqual((held.probation, held.deadline), (Refusal(OVERLOAD_LAG), deadline))
        self.assertEqual(admission.snapshot()["probation"], 1)
        admission.set_overload(None)
        self.assertIsNone(admission.enter_lane(slots[2], "bob"))
        self.assertIsNone(admission.enter_lane(enter(admission, nth_v4(4))))
        self.assertEqual(admission.snapshot()["lane"], 4)

    def test_released_on_promotion_and_on_release(self) -> None:
        """
        A user's lane count falls when one of its lane connections logs in (moves to the
        relay pool) or closes, so the next connection of that user enters; one that stays
        in the lane because the relay pool is full keeps counting.
        """
        admission, _ = make(lane_per_user=1, max_relays=1, **LOOSE)
        first, second, third = (enter(admission, nth_v4(n)) for n in range(3))
        self.assertIsNone(admission.enter_lane(first, "alice"))
        self.assertEqual(admission.enter_lane(second, "alice"), Refusal(LANE_CAP_USER))
        self.assertIsNone(admission.promote(first))
        self.assertIsNone(admission.enter_lane(second, "alice"))
        self.assertEqual(admission.promote(second), Refusal(RELAY_CAP))
        self.assertEqual(admission.enter_lane(third, "alice"), Refusal(LANE_CAP_USER))
        admission.release(second)
        self.assertIsNone(admission.enter_lane(third, "alice"))
        admission.release(third)
        admission.release(third)
        fourth = enter(admission, nth_v4(3))
        self.assertIsNone(admission.enter_lane(fourth, "alice"))
        self.assertEqual(admission.snapshot()["lane"], 1)


class OverloadProbationTests(unittest.TestCase):
    def test_overload_puts_newcomers_on_probation(self) -> None:
        """
        Each overload reason puts a new connection on probation with that reason.
        """
        for reason in (OVERLOAD_LAG, OVERLOAD_LOAD, OVERLOAD_MEMORY):
            admission, _ = make()
            admission.set_overload(reason)
            self.assertEqual(enter(admission, nth_v4(0)).probation, Refusal(reason))

    def test_overload_never_touches_the_lane_or_relays(self) -> None:
        """
        Under overload a connection already admitted still enters the lane and logs in,
        and lane connections and relays are never ended by it.
        """
        admission, clock = make(**LOOSE)
        lane, lane_ends = evictable(admission, nth_v4(0))
        relay, relay_ends = evictable(admission, nth_v4(1))
        later, _ = evictable(admission, nth_v4(2))
        admission.set_overload(OVERLOAD_LAG)
        self.assertIsNone(admission.enter_lane(lane))
        self.assertIsNone(admission.promote(relay))
        self.assertIsNone(admission.enter_lane(later))
        self.assertIsNone(admission.promote(lane))
        for n in range(3, 600):
            enter(admission, nth_v4(n))
        clock.advance(10)
        self.assertEqual((lane_ends.reasons, relay_ends.reasons), ([], []))
        snap = admission.snapshot()
        self.assertEqual((snap["relays"], snap["lane"]), (2, 1))

    def test_source_rules_stay_immediate_under_overload(self) -> None:
        """
        A ticket cannot override source-targeted refusals: under overload they still
        refuse at once (no probation).
        """
        admission, _ = make(per_source_max=1, per_source_burst=100)
        enter(admission, v4("192.0.2.1", 1))
        admission.offence(v4("203.0.113.5"), "early_talker")
        admission.set_overload(OVERLOAD_LAG)
        self.assertEqual(admission.enter(v4("192.0.2.1", 2)), Refusal(PER_SOURCE_CAP))
        self.assertEqual(admission.enter(v4("203.0.113.5")).reason, PENALISED)  # type: ignore[union-attr]
        slow, _ = make(per_source_burst=1, per_source_rate=0.1)
        slow.set_overload(OVERLOAD_LAG)
        enter(slow, v4("192.0.2.1", 1))
        self.assertEqual(slow.enter(v4("192.0.2.1", 2)).reason, RATE)  # type: ignore[union-attr]


class EvictionBasicsTests(unittest.TestCase):
    def test_newcomer_evicts_and_handler_is_told(self) -> None:
        """
        A full pool: a fresh source evicts an evictable connection of a source holding a
        slot; the victim's handler is called with C{evicted}, after which the victim holds
        nothing and the newcomer holds a real slot.
        """
        admission, _ = make(max_unauthenticated=2, red_soft=2, **LOOSE)
        victim, ends = evictable(admission, nth_v4(0))
        enter(admission, nth_v4(1))
        newcomer = enter(admission, nth_v4(2))
        self.assertIsNone(newcomer.probation)
        self.assertEqual(ends.reasons, [EVICTED])
        snap = admission.snapshot()
        self.assertEqual((snap["unauthenticated"], snap["evictions"]), (2, 1))
        self.assertEqual(admission.counters[EVICTED], 1)
        self.assertEqual(admission.promote(victim), Refusal(EVICTED))
        self.assertEqual(admission.enter_lane(victim), Refusal(EVICTED))
        admission.release(victim)
        self.assertEqual(admission.snapshot()["unauthenticated"], 2)

    def test_no_handler_no_eviction(self) -> None:
        """
        Only a connection with a handler can be evicted; removing the handler makes it
        safe again.
        """
        admission, _ = make(max_unauthenticated=1, red_soft=1, **LOOSE)
        slot, ends = evictable(admission, nth_v4(0))
        admission.set_evict_handler(slot, None)
        self.assertEqual(enter(admission, nth_v4(1)).probation, Refusal(UNAUTH_CAP))
        self.assertEqual(ends.reasons, [])

    def test_failing_handler_is_logged_and_does_not_stop_admission(self) -> None:
        """
        A handler that raises is logged; the newcomer is admitted all the same.
        """
        admission, _ = make(max_unauthenticated=1, red_soft=1, **LOOSE)
        slot = enter(admission, nth_v4(0))

        def broken(reason: str) -> None:
            raise RuntimeError("boom")

        admission.set_evict_handler(slot, broken)
        newcomer = enter(admission, nth_v4(1))
        self.assertIsNone(newcomer.probation)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_lane_and_relays_are_never_evicted(self) -> None:
        """
        Connections in the lane or the relay pool are not candidates.
        """
        admission, _ = make(max_unauthenticated=2, red_soft=2, **LOOSE)
        lane, lane_ends = evictable(admission, nth_v4(0))
        admission.enter_lane(lane)
        relay, relay_ends = evictable(admission, nth_v4(1))
        admission.promote(relay)
        enter(admission, nth_v4(2))
        enter(admission, nth_v4(3))
        self.assertEqual(enter(admission, nth_v4(4)).probation, Refusal(UNAUTH_CAP))
        self.assertEqual((lane_ends.reasons, relay_ends.reasons), ([], []))

    def test_unix_peers_share_one_source(self) -> None:
        """
        Unix-socket peers are one source for the pool rules: a second unix connection
        cannot evict the first.
        """
        admission, _ = make(max_unauthenticated=1, red_soft=1)
        _, ends = evictable(admission, UNIX)
        self.assertEqual(enter(admission, UNIX).probation, Refusal(UNAUTH_CAP))
        self.assertEqual(ends.reasons, [])

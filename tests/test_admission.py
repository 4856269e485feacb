"""
Tests for L{netguard.admission}: every admission rule with L{task.Clock} and a seeded random
source, the bounds on its tables, and a property test of its bookkeeping.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial import unittest

from netguard.admission import (
    DENIED,
    GLOBAL_CAP,
    NOT_ALLOWED,
    OFFENCE_KINDS,
    OVERLOAD_LAG,
    OVERLOAD_LOAD,
    PENALISED,
    PER_SOURCE_CAP,
    RANDOM_EARLY_DROP,
    RATE,
    REASONS,
    RELAY_CAP,
    UNAUTH_CAP,
    UNIX_SOURCE,
    UNKNOWN_SOURCE,
    Admission,
    AdmissionPolicy,
    Refusal,
    Slot,
)
from netguard.config import load_config


def v4(host: str, port: int = 40000) -> IPv4Address:
    return IPv4Address("TCP", host, port)


def v6(host: str, port: int = 40000) -> IPv6Address:
    return IPv6Address("TCP", host, port)


def nth_v4(n: int, port: int = 40000) -> IPv4Address:
    """
    The C{n}th distinct address of 10.0.0.0/8, so each is its own /32 source.
    """
    return v4(f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}", port)


UNIX = UNIXAddress(None)


def make(seed: int = 1, **knobs: Any) -> tuple[Admission, Clock]:
    clock = Clock()
    clock.advance(1000.0)
    return Admission(AdmissionPolicy(**knobs), clock, random.Random(seed)), clock


#: Knobs that switch off the rules a test is not about.
LOOSE: dict[str, Any] = {
    "per_source_max": 10_000,
    "per_source_rate": 1e9,
    "per_source_burst": 10_000,
}


class PolicyTests(unittest.TestCase):
    def test_defaults(self) -> None:
        policy = AdmissionPolicy()
        self.assertEqual(
            (policy.max_connections, policy.max_unauthenticated, policy.max_relays),
            (1280, 256, 768),
        )
        self.assertEqual((policy.per_source_max, policy.per_source_rate), (32, 10.0))
        self.assertEqual(policy.per_source_burst, 20)
        self.assertEqual((policy.ipv4_prefix, policy.ipv6_prefix), (32, 64))
        self.assertEqual((policy.red_soft, policy.red_hard, policy.red_rate), (128, 256, 0.3))
        self.assertEqual(
            (policy.penalty_base, policy.penalty_max, policy.penalty_decay), (10, 3600, 600)
        )
        self.assertEqual(policy.penalty_threshold, 3)
        self.assertEqual([policy.points_for(k) for k in OFFENCE_KINDS], [1, 3, 1, 1, 2])
        self.assertEqual(policy.bad_ticket_points, 2)
        self.assertEqual((policy.lane_max, policy.max_probation), (256, 512))
        self.assertEqual(policy.lane_per_user, 16)
        self.assertEqual(policy.probation_timeout, 1.0)
        self.assertEqual((policy.never_penalise, policy.deny, policy.allow), ((), (), ()))
        self.assertEqual(policy.max_tracked_sources, 65536)
        self.assertEqual(policy.reject_mode, "reply")

    def test_penalty_times_bounded_at_a_year_and_a_millisecond(self) -> None:
        """
        C{penalty_base} and C{penalty_max} are accepted from a millisecond to a year, both
        bounds included, and refused one step past either (a huge C{penalty_max} made
        every block time infinite and the gateway fail at its start); a block at the
        bounds is a finite time.
        """
        year = 365 * 24 * 3600.0
        admission, _ = make(penalty_base=0.001, penalty_max=year, penalty_decay=1e9)
        for _ in range(80):
            admission.offence(v4("198.51.100.1"), "auth_failure")
        [(_, remaining, _)] = admission.penalties()
        self.assertEqual(remaining, year)
        for knobs in (
            {"penalty_max": year * 1.0001},
            {"penalty_max": 1e308, "penalty_base": 0.5},
            {"penalty_base": 0.0009},
            {"penalty_max": float("inf")},
        ):
            with self.assertRaises(ValueError, msg=repr(knobs)):
                AdmissionPolicy(**knobs)

    def test_huge_integer_times_refused_naming_the_field(self) -> None:
        """
        An integer too large for a float, given to a time or rate field, is a
        C{ValueError} naming that field (not an C{OverflowError}); the largest integer a
        float holds is judged by the field's range as any other number.
        """
        biggest = int(sys.float_info.max)
        for name in ("penalty_max", "penalty_base", "penalty_decay", "per_source_rate"):
            for value in (10**400, -(10**400), 2**1024):
                with self.assertRaises(ValueError, msg=(name, value)) as raised:
                    AdmissionPolicy(**{name: value})
                self.assertIn(name, str(raised.exception))
        with self.assertRaises(ValueError) as raised:
            AdmissionPolicy(penalty_max=biggest)
        self.assertIn("penalty_max must be within", str(raised.exception))
        self.assertEqual(AdmissionPolicy(penalty_decay=biggest).penalty_decay, float(biggest))

    def test_max_connections_follows_the_pools(self) -> None:
        """
        Unset, C{max_connections} is the sum of the three pool caps it covers
        (C{max_unauthenticated + lane_max + max_relays}), whichever of them is set; set, it is
        kept as given, also below that sum, and also through C{attrs.evolve}.
        """
        self.assertEqual(AdmissionPolicy().max_connections, 256 + 256 + 768)
        policy = AdmissionPolicy(max_unauthenticated=10, lane_max=5, max_relays=20)
        self.assertEqual(policy.max_connections, 35)
        self.assertEqual(AdmissionPolicy(lane_max=1).max_connections, 256 + 1 + 768)
        self.assertEqual(AdmissionPolicy(max_connections=7).max_connections, 7)
        self.assertEqual(attrs.evolve(policy, max_relays=1).max_connections, 35)
        self.assertRaises(ValueError, AdmissionPolicy, max_connections=0)

    def test_max_connections_from_a_configuration_file(self) -> None:
        """
        A configuration that sets only the pool caps gets their sum as the global cap; one
        that sets C{max_connections} gets that number.
        """
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("[admission]\nmax_unauthenticated = 100\nmax_relays = 50\n")
        self.assertEqual(load_config(path).admission.max_connections, 100 + 256 + 50)
        with open(path, "w") as handle:
            handle.write("[admission]\nmax_relays = 50\nmax_connections = 300\n")
        self.assertEqual(load_config(path).admission.max_connections, 300)

    def test_red_limits_follow_max_unauthenticated(self) -> None:
        policy = AdmissionPolicy(max_unauthenticated=10)
        self.assertEqual((policy.red_soft, policy.red_hard), (5, 10))

    def test_red_soft_above_hard(self) -> None:
        self.assertRaises(ValueError, AdmissionPolicy, red_soft=20, red_hard=10)

    def test_red_rate_outside_unit_interval(self) -> None:
        self.assertRaises(ValueError, AdmissionPolicy, red_rate=1.5)

    def test_ipv4_prefix_too_long(self) -> None:
        self.assertRaises(ValueError, AdmissionPolicy, ipv4_prefix=33)

    def test_ipv6_prefix_negative(self) -> None:
        self.assertRaises(ValueError, AdmissionPolicy, ipv6_prefix=-1)

    def test_zero_cap(self) -> None:
        self.assertRaises(ValueError, AdmissionPolicy, max_connections=0)

    def test_negative_rate(self) -> None:
        self.assertRaises(ValueError, AdmissionPolicy, per_source_rate=-1)

    def test_penalty_base_above_max(self) -> None:
        self.assertRaises(ValueError, AdmissionPolicy, penalty_base=100, penalty_max=10)

    def test_bad_cidr(self) -> None:
        self.assertRaises(ValueError, AdmissionPolicy, deny=("10.0.0.0/33",))

    def test_cidr_with_host_bits(self) -> None:
        self.assertRaises(ValueError, AdmissionPolicy, allow=("10.1.2.3/8",))

    def test_cidr_not_an_address(self) -> None:
        self.assertRaises(ValueError, AdmissionPolicy, never_penalise=("localhost",))

    def test_single_cidr_string_and_list(self) -> None:
        policy = AdmissionPolicy(deny="192.0.2.0/24", allow=["10.0.0.0/8", "::1"])
        self.assertEqual(policy.deny, ("192.0.2.0/24",))
        self.assertEqual(policy.allow, ("10.0.0.0/8", "::1"))

    def test_unknown_reject_mode(self) -> None:
        self.assertRaises(ValueError, AdmissionPolicy, reject_mode="drop")

    def test_unknown_offence_kind(self) -> None:
        self.assertRaises(ValueError, AdmissionPolicy().points_for, "rudeness")


class SourceKeyTests(unittest.TestCase):
    def test_ipv4_by_address(self) -> None:
        admission, _ = make()
        self.assertEqual(admission.source_key(v4("192.0.2.7")), "192.0.2.7/32")

    def test_ipv4_configurable_prefix(self) -> None:
        admission, _ = make(ipv4_prefix=24)
        self.assertEqual(admission.source_key(v4("192.0.2.7")), "192.0.2.0/24")
        self.assertEqual(
            admission.source_key(v4("192.0.2.200")), admission.source_key("192.0.2.1")
        )

    def test_ipv6_by_64(self) -> None:
        admission, _ = make()
        key = admission.source_key(v6("2001:db8:1:2:aaaa::1"))
        self.assertEqual(key, "2001:db8:1:2::/64")
        self.assertEqual(admission.source_key(v6("2001:db8:1:2:ffff:ffff:ffff:ffff")), key)
        self.assertNotEqual(admission.source_key(v6("2001:db8:1:3::1")), key)

    def test_ipv6_configurable_prefix(self) -> None:
        admission, _ = make(ipv6_prefix=48)
        self.assertEqual(admission.source_key(v6("2001:db8:1:2::1")), "2001:db8:1::/48")
        admission, _ = make(ipv6_prefix=128)
        self.assertEqual(admission.source_key(v6("2001:db8::1")), "2001:db8::1/128")

    def test_ipv4_mapped_is_ipv4(self) -> None:
        admission, _ = make()
        self.assertEqual(admission.source_key(v6("::ffff:192.0.2.7")), "192.0.2.7/32")

    def test_ipv6_zone_dropped(self) -> None:
        admission, _ = make()
        self.assertEqual(admission.source_key(v6("fe80::1%lo")), "fe80::/64")

    def test_host_string(self) -> None:
        admission, _ = make()
        self.assertEqual(admission.source_key("198.51.100.1"), "198.51.100.1/32")

    def test_unix(self) -> None:
        admission, _ = make()
        self.assertEqual(admission.source_key(UNIXAddress(b"/tmp/sock")), UNIX_SOURCE)

    def test_not_an_address(self) -> None:
        admission, _ = make()
        self.assertEqual(admission.source_key("not-an-ip"), UNKNOWN_SOURCE)
        self.assertEqual(admission.source_key(v4("")), UNKNOWN_SOURCE)


class CapTests(unittest.TestCase):
    def test_default_global_cap_never_bites_before_the_pools(self) -> None:
        """
        With the default caps, a full relay pool (768) and a full lane (256) leave the whole
        unauthenticated pool (256) to newcomers, none refused C{global-cap}. Only then, all
        three pools full, is the global cap (1280) reached: the next newcomer is refused
        C{global-cap}; one relay fewer, and it is a pressure case again (C{unauth-cap}, on
        probation).
        """
        admission, _ = make(**LOOSE)
        n = 0

        def newcomer() -> Slot:
            nonlocal n
            n += 1
            result = admission.enter(nth_v4(n))
            assert isinstance(result, Slot), result
            return result

        relays = []
        for _ in range(768):
            relays.append(newcomer())
            self.assertIsNone(admission.promote(relays[-1]))
        for _ in range(256):
            self.assertIsNone(admission.enter_lane(newcomer()))
        for _ in range(256):
            self.assertIsNone(newcomer().probation)
        self.assertEqual(admission.snapshot()["connections"], 1280)
        self.assertEqual(admission.counters[GLOBAL_CAP], 0)
        self.assertEqual(admission.enter(nth_v4(99_999)), Refusal(GLOBAL_CAP))
        admission.release(relays[0])
        self.assertEqual(newcomer().probation, Refusal(UNAUTH_CAP))

    def test_explicit_global_cap_exact_and_one_past(self) -> None:
        """
        An explicit C{max_connections} below the pools' sum is kept: exactly that many
        connections in the three pools, and the next is refused C{global-cap}.
        """
        admission, _ = make(max_connections=5, max_unauthenticated=3, lane_max=2, **LOOSE)
        slots = [admission.enter(nth_v4(n)) for n in range(3)]
        for slot in slots[:2]:
            assert isinstance(slot, Slot)
            self.assertIsNone(admission.enter_lane(slot))
        for n in range(3, 5):
            self.assertIsInstance(admission.enter(nth_v4(n)), Slot)
        self.assertEqual(admission.snapshot()["connections"], 5)
        self.assertEqual(admission.enter(nth_v4(5)), Refusal(GLOBAL_CAP))

    def test_global_cap(self) -> None:
        admission, _ = make(max_connections=3, **LOOSE)
        for n in range(3):
            self.assertIsNone(admission.admit(nth_v4(n)))
        self.assertEqual(admission.admit(nth_v4(9)), Refusal(GLOBAL_CAP))
        admission.released(nth_v4(0), authenticated=False)
        self.assertIsNone(admission.admit(nth_v4(9)))

    def test_global_cap_counts_relays(self) -> None:
        admission, _ = make(max_connections=2, **LOOSE)
        admission.admit(nth_v4(0))
        admission.authenticated(nth_v4(0))
        admission.admit(nth_v4(1))
        self.assertEqual(admission.admit(nth_v4(2)), Refusal(GLOBAL_CAP))

    def test_unauthenticated_cap(self) -> None:
        admission, _ = make(max_unauthenticated=4, red_soft=4, **LOOSE)
        for n in range(4):
            self.assertIsNone(admission.admit(nth_v4(n)))
        self.assertEqual(admission.admit(nth_v4(5)), Refusal(UNAUTH_CAP))

    def test_authentication_frees_an_unauthenticated_slot(self) -> None:
        admission, _ = make(max_unauthenticated=2, red_soft=2, **LOOSE)
        admission.admit(nth_v4(0))
        admission.admit(nth_v4(1))
        self.assertIsNone(admission.authenticated(nth_v4(0)))
        self.assertIsNone(admission.admit(nth_v4(2)))

    def test_relay_cap(self) -> None:
        admission, _ = make(max_relays=2, **LOOSE)
        for n in range(3):
            admission.admit(nth_v4(n))
        self.assertIsNone(admission.authenticated(nth_v4(0)))
        self.assertIsNone(admission.authenticated(nth_v4(1)))
        self.assertEqual(admission.authenticated(nth_v4(2)), Refusal(RELAY_CAP))
        self.assertEqual(admission.snapshot()["unauthenticated"], 1)
        self.assertEqual(admission.snapshot()["relays"], 2)
        admission.released(nth_v4(2), authenticated=False)
        self.assertEqual(admission.snapshot()["connections"], 2)

    def test_authenticated_users_not_starved_by_unauthenticated_flood(self) -> None:
        """
        A flood fills the line-phase pool; a user who was admitted before it and
        authenticates afterwards still moves to the relay pool, and relays keep running.
        """
        admission, _ = make(
            max_unauthenticated=50, red_soft=50, max_relays=10, max_connections=60, **LOOSE
        )
        user = v4("198.51.100.9")
        self.assertIsNone(admission.admit(user))
        flood = 0
        while admission.admit(nth_v4(flood)) is None:
            flood += 1
        self.assertEqual(admission.snapshot()["unauthenticated"], 50)
        self.assertEqual(admission.admit(nth_v4(10_000)).reason, UNAUTH_CAP)  # type: ignore[union-attr]
        self.assertIsNone(admission.authenticated(user))
        self.assertEqual(admission.snapshot()["relays"], 1)
        # The moved user's line-phase slot went to the pool, not to the user's relay.
        self.assertEqual(admission.snapshot()["unauthenticated"], 49)

    def test_authentication_not_blocked_by_global_cap(self) -> None:
        """
        Moving to the relay pool takes no new slot, so a full global count does not stop it.
        """
        admission, _ = make(max_connections=10, max_unauthenticated=10, red_soft=10, **LOOSE)
        user = v4("198.51.100.9")
        admission.admit(user)
        for n in range(9):
            admission.admit(nth_v4(n))
        self.assertEqual(admission.admit(nth_v4(99)), Refusal(GLOBAL_CAP))
        self.assertIsNone(admission.authenticated(user))
        self.assertEqual(admission.snapshot()["relays"], 1)

    def test_relay_pool_full_does_not_block_new_connections(self) -> None:
        admission, _ = make(
            max_unauthenticated=5, red_soft=5, max_relays=3, max_connections=8, **LOOSE
        )
        for n in range(3):
            admission.admit(nth_v4(n))
            admission.authenticated(nth_v4(n))
        for n in range(3, 8):
            self.assertIsNone(admission.admit(nth_v4(n)))

    def test_authenticated_unknown_is_harmless(self) -> None:
        admission, _ = make()
        self.assertIsNone(admission.authenticated(v4("192.0.2.1")))
        self.assertEqual(admission.snapshot()["relays"], 0)

    def test_authenticated_twice_counts_once(self) -> None:
        admission, _ = make()
        admission.admit(v4("192.0.2.1"))
        admission.authenticated(v4("192.0.2.1"))
        admission.authenticated(v4("192.0.2.1"))
        self.assertEqual(admission.snapshot()["relays"], 1)

    def test_released_unknown_is_harmless(self) -> None:
        admission, _ = make()
        admission.admit(v4("192.0.2.1", 1))
        admission.released(v4("192.0.2.1", 2), authenticated=False)
        admission.released(v4("203.0.113.1"), authenticated=True)
        admission.released(UNIX, authenticated=False)
        admission.released("garbage", authenticated=False)
        snap = admission.snapshot()
        self.assertEqual((snap["unauthenticated"], snap["relays"]), (1, 0))

    def test_released_twice_is_harmless(self) -> None:
        admission, _ = make()
        admission.admit(v4("192.0.2.1", 1))
        admission.admit(v4("192.0.2.1", 2))
        admission.released(v4("192.0.2.1", 1), authenticated=False)
        admission.released(v4("192.0.2.1", 1), authenticated=False)
        self.assertEqual(admission.snapshot()["unauthenticated"], 1)
        self.assertEqual(admission.snapshot()["active_sources"], 1)

    def test_released_with_wrong_pool_label(self) -> None:
        admission, _ = make()
        admission.admit(v4("192.0.2.1"))
        admission.released(v4("192.0.2.1"), authenticated=True)
        snap = admission.snapshot()
        self.assertEqual(
            (snap["unauthenticated"], snap["relays"], snap["active_sources"]), (0, 0, 0)
        )

    def test_host_strings_count_per_connection(self) -> None:
        admission, _ = make()
        admission.admit("192.0.2.1")
        admission.admit("192.0.2.1")
        admission.authenticated("192.0.2.1")
        admission.released("192.0.2.1", authenticated=True)
        admission.released("192.0.2.1", authenticated=False)
        snap = admission.snapshot()
        self.assertEqual(
            (snap["unauthenticated"], snap["relays"], snap["active_sources"]), (0, 0, 0)
        )


class PerSourceTests(unittest.TestCase):
    def test_per_source_cap(self) -> None:
        admission, _ = make(per_source_max=3, per_source_burst=100)
        for port in range(3):
            self.assertIsNone(admission.admit(v4("192.0.2.1", port)))
        self.assertEqual(admission.admit(v4("192.0.2.1", 9)), Refusal(PER_SOURCE_CAP))
        self.assertIsNone(admission.admit(v4("192.0.2.2", 9)))

    def test_connections_from_one_source_share_its_key(self) -> None:
        """
        Every live connection of a source holds the same key string (one per source, not
        a copy per connection).
        """
        admission, _ = make(per_source_burst=100)
        first, second = v4("192.0.2.1", 1), v4("192.0.2.1", 2)
        admission.admit(first)
        admission.admit(second)
        [one], [other] = admission._live[first], admission._live[second]
        self.assertEqual(one.source.key, "192.0.2.1/32")
        self.assertIs(one.source, other.source)
        self.assertIs(one.source.key, other.source.key)

    def test_per_source_cap_counts_relays(self) -> None:
        admission, _ = make(per_source_max=2, per_source_burst=100)
        admission.admit(v4("192.0.2.1", 1))
        admission.authenticated(v4("192.0.2.1", 1))
        admission.admit(v4("192.0.2.1", 2))
        self.assertEqual(admission.admit(v4("192.0.2.1", 3)), Refusal(PER_SOURCE_CAP))

    def test_per_source_cap_released(self) -> None:
        admission, _ = make(per_source_max=1)
        admission.admit(v4("192.0.2.1", 1))
        admission.released(v4("192.0.2.1", 1), authenticated=False)
        self.assertIsNone(admission.admit(v4("192.0.2.1", 2)))

    def test_ipv6_64_is_one_source(self) -> None:
        admission, _ = make(per_source_max=2, per_source_burst=100)
        self.assertIsNone(admission.admit(v6("2001:db8:0:1::1")))
        self.assertIsNone(admission.admit(v6("2001:db8:0:1::2")))
        self.assertEqual(admission.admit(v6("2001:db8:0:1:ffff::3")), Refusal(PER_SOURCE_CAP))
        self.assertIsNone(admission.admit(v6("2001:db8:0:2::1")))

    def test_ipv4_32_are_separate_sources(self) -> None:
        admission, _ = make(per_source_max=1)
        self.assertIsNone(admission.admit(v4("192.0.2.1")))
        self.assertIsNone(admission.admit(v4("192.0.2.2")))

    def test_ipv4_configured_prefix_groups(self) -> None:
        admission, _ = make(per_source_max=1, ipv4_prefix=24)
        self.assertIsNone(admission.admit(v4("192.0.2.1")))
        self.assertEqual(admission.admit(v4("192.0.2.2")), Refusal(PER_SOURCE_CAP))
        self.assertIsNone(admission.admit(v4("192.0.3.2")))

    def test_ipv4_mapped_shares_ipv4_limits(self) -> None:
        admission, _ = make(per_source_max=1)
        self.assertIsNone(admission.admit(v4("192.0.2.1")))
        self.assertEqual(admission.admit(v6("::ffff:192.0.2.1")), Refusal(PER_SOURCE_CAP))

    def test_token_bucket_burst_then_rate(self) -> None:
        admission, clock = make(per_source_rate=10.0, per_source_burst=5, per_source_max=100)
        for port in range(5):
            self.assertIsNone(admission.admit(v4("192.0.2.1", port)))
        refusal = admission.admit(v4("192.0.2.1", 99))
        assert refusal is not None
        self.assertEqual(refusal.reason, RATE)
        self.assertAlmostEqual(refusal.retry_after, 0.1)  # type: ignore[arg-type]
        clock.advance(0.05)
        self.assertEqual(admission.admit(v4("192.0.2.1", 99)).reason, RATE)  # type: ignore[union-attr]
        clock.advance(0.06)
        self.assertIsNone(admission.admit(v4("192.0.2.1", 99)))
        self.assertEqual(admission.admit(v4("192.0.2.1", 100)).reason, RATE)  # type: ignore[union-attr]

    def test_token_bucket_refill_capped_at_burst(self) -> None:
        admission, clock = make(per_source_rate=10.0, per_source_burst=5, per_source_max=100)
        admission.admit(v4("192.0.2.1", 0))
        clock.advance(3600)
        admitted = sum(admission.admit(v4("192.0.2.1", p)) is None for p in range(1, 20))
        self.assertEqual(admitted, 5)

    def test_rate_is_per_source(self) -> None:
        admission, _ = make(per_source_burst=1)
        self.assertIsNone(admission.admit(v4("192.0.2.1", 1)))
        self.assertEqual(admission.admit(v4("192.0.2.1", 2)).reason, RATE)  # type: ignore[union-attr]
        self.assertIsNone(admission.admit(v4("192.0.2.2", 1)))


class AddressListTests(unittest.TestCase):
    def test_deny(self) -> None:
        admission, _ = make(deny=("192.0.2.0/24", "2001:db8::/32"))
        self.assertEqual(admission.admit(v4("192.0.2.77")), Refusal(DENIED))
        self.assertEqual(admission.admit(v6("2001:db8::5")), Refusal(DENIED))
        self.assertEqual(admission.admit(v6("::ffff:192.0.2.5")), Refusal(DENIED))
        self.assertIsNone(admission.admit(v4("192.0.3.1")))

    def test_deny_before_anything(self) -> None:
        admission, _ = make(deny=("192.0.2.0/24",), max_connections=1)
        admission.set_overload(OVERLOAD_LAG)
        self.assertEqual(admission.admit(v4("192.0.2.77")), Refusal(DENIED))

    def test_allow_narrows(self) -> None:
        admission, _ = make(allow=("198.51.100.0/24",))
        self.assertEqual(admission.admit(v4("192.0.2.1")), Refusal(NOT_ALLOWED))
        self.assertEqual(admission.admit(v6("2001:db8::1")), Refusal(NOT_ALLOWED))
        self.assertEqual(admission.admit("not-an-ip"), Refusal(NOT_ALLOWED))
        self.assertIsNone(admission.admit(v4("198.51.100.1")))

    def test_allow_never_grants(self) -> None:
        """
        An allowed address still meets every cap, rate and penalty.
        """
        admission, _ = make(allow=("198.51.100.0/24",), per_source_max=1, max_connections=2)
        self.assertIsNone(admission.admit(v4("198.51.100.1", 1)))
        self.assertEqual(admission.admit(v4("198.51.100.1", 2)).reason, PER_SOURCE_CAP)  # type: ignore[union-attr]
        self.assertIsNone(admission.admit(v4("198.51.100.2", 1)))
        self.assertEqual(admission.admit(v4("198.51.100.3", 1)).reason, GLOBAL_CAP)  # type: ignore[union-attr]
        admission.released(v4("198.51.100.2", 1), authenticated=False)
        admission.offence(v4("198.51.100.4"), "early_talker")
        self.assertEqual(admission.admit(v4("198.51.100.4")).reason, PENALISED)  # type: ignore[union-attr]

    def test_deny_wins_over_allow(self) -> None:
        admission, _ = make(allow=("192.0.2.0/24",), deny=("192.0.2.66/32",))
        self.assertEqual(admission.admit(v4("192.0.2.66")), Refusal(DENIED))

    def test_no_method_grants_by_address(self) -> None:
        """
        Loopback gets no privilege by default: it meets the same per-source rules.
        """
        admission, _ = make(per_source_max=1)
        self.assertIsNone(admission.admit(v4("127.0.0.1", 1)))
        self.assertEqual(admission.admit(v4("127.0.0.1", 2)).reason, PER_SOURCE_CAP)  # type: ignore[union-attr]
        admission.offence(v4("127.0.0.1"), "early_talker")
        admission.released(v4("127.0.0.1", 1), authenticated=False)
        self.assertEqual(admission.admit(v4("127.0.0.1", 3)).reason, PENALISED)  # type: ignore[union-attr]


class UnixTests(unittest.TestCase):
    def test_unix_ignores_per_source_rules(self) -> None:
        admission, _ = make(
            per_source_max=1, per_source_burst=1, allow=("192.0.2.0/24",), deny=("0.0.0.0/0",)
        )
        for _ in range(5):
            self.assertIsNone(admission.admit(UNIX))
        self.assertIsNone(admission.offence(UNIX, "early_talker"))
        self.assertIsNone(admission.admit(UNIX))
        self.assertEqual(admission.penalties(), [])

    def test_unix_meets_global_caps(self) -> None:
        admission, _ = make(max_connections=2, max_relays=1)
        admission.admit(UNIX)
        admission.admit(UNIX)
        self.assertEqual(admission.admit(UNIX), Refusal(GLOBAL_CAP))
        self.assertIsNone(admission.authenticated(UNIX))
        self.assertEqual(admission.authenticated(UNIX), Refusal(RELAY_CAP))
        admission.released(UNIX, authenticated=True)
        admission.released(UNIX, authenticated=False)
        self.assertEqual(admission.snapshot()["connections"], 0)

    def test_unix_meets_unauthenticated_cap(self) -> None:
        admission, _ = make(max_unauthenticated=1)
        admission.admit(UNIX)
        self.assertEqual(admission.admit(UNIX), Refusal(UNAUTH_CAP))

    def test_unix_meets_overload(self) -> None:
        admission, _ = make()
        admission.set_overload(OVERLOAD_LOAD)
        self.assertEqual(admission.admit(UNIX), Refusal(OVERLOAD_LOAD))


class PenaltyTests(unittest.TestCase):
    PEER = v4("203.0.113.5")

    def test_below_threshold_no_block(self) -> None:
        admission, _ = make()
        self.assertIsNone(admission.offence(self.PEER, "auth_failure"))
        self.assertIsNone(admission.offence(self.PEER, "auth_failure"))
        self.assertIsNone(admission.admit(self.PEER))

    def test_threshold_blocks_for_base(self) -> None:
        admission, clock = make()
        admission.offence(self.PEER, "auth_failure")
        admission.offence(self.PEER, "timeout")
        self.assertAlmostEqual(admission.offence(self.PEER, "format_error"), 10.0)  # type: ignore[arg-type]
        refusal = admission.admit(self.PEER)
        assert refusal is not None
        self.assertEqual(refusal.reason, PENALISED)
        self.assertAlmostEqual(refusal.retry_after, 10.0)  # type: ignore[arg-type]
        clock.advance(9.9)
        self.assertEqual(admission.admit(self.PEER).reason, PENALISED)  # type: ignore[union-attr]
        clock.advance(0.2)
        self.assertIsNone(admission.admit(self.PEER))

    def test_block_is_per_source(self) -> None:
        admission, _ = make()
        admission.offence(self.PEER, "early_talker")
        self.assertIsNone(admission.admit(v4("203.0.113.6")))

    def test_ipv6_64_shares_penalty(self) -> None:
        admission, _ = make()
        admission.offence(v6("2001:db8:5:5::1"), "early_talker")
        self.assertEqual(admission.admit(v6("2001:db8:5:5::beef")).reason, PENALISED)  # type: ignore[union-attr]

    def test_early_talker_blocks_at_once(self) -> None:
        admission, _ = make()
        self.assertAlmostEqual(admission.offence(self.PEER, "early_talker"), 10.0)  # type: ignore[arg-type]

    def test_repeat_offences_grow(self) -> None:
        admission, _ = make(penalty_decay=1e9)
        durations = [admission.offence(self.PEER, "auth_failure") for _ in range(6)]
        self.assertEqual(durations[:2], [None, None])
        for got, want in zip(durations[2:], [10.0, 20.0, 40.0, 80.0], strict=True):
            self.assertAlmostEqual(got, want)  # type: ignore[arg-type]

    def test_growth_after_block_expired(self) -> None:
        admission, clock = make()
        for _ in range(3):
            admission.offence(self.PEER, "auth_failure")
        clock.advance(10.0)
        self.assertIsNone(admission.admit(self.PEER))
        blocked = admission.offence(self.PEER, "auth_failure")
        # 4 points less the decay of 10 s (10/600 of a point) count as the fourth offence.
        self.assertEqual(blocked, 20.0)

    def test_offences_spread_over_time_still_block(self) -> None:
        # Found by a review: with continuous decay, three failed logins a few seconds apart
        # added up to 2.99 points and never reached a threshold of 3.
        admission, clock = make()
        self.assertIsNone(admission.offence(self.PEER, "auth_failure"))
        clock.advance(5)
        self.assertIsNone(admission.offence(self.PEER, "auth_failure"))
        clock.advance(5)
        self.assertEqual(admission.offence(self.PEER, "auth_failure"), 10.0)
        self.assertIsNotNone(admission.admit(self.PEER))

    def test_block_capped_at_max(self) -> None:
        admission, _ = make(penalty_max=100.0, penalty_decay=1e9)
        for _ in range(50):
            blocked = admission.offence(self.PEER, "early_talker")
        self.assertEqual(blocked, 100.0)

    def test_points_capped_so_the_source_is_forgotten(self) -> None:
        """
        A million offences are remembered no longer than enough to reach penalty_max.
        """
        admission, clock = make()
        for _ in range(1000):
            admission.offence(self.PEER, "early_talker")
        # cap = threshold 3 + ceil(log2(3600 / 10)) = 12 points, gone after 12 * 600 s.
        clock.advance(12 * 600 + 1)
        self.assertEqual(admission.penalties(), [])
        self.assertIsNone(admission.offence(self.PEER, "auth_failure"))

    def test_decay(self) -> None:
        admission, clock = make()
        admission.offence(self.PEER, "auth_failure")
        admission.offence(self.PEER, "auth_failure")
        clock.advance(600 * 2)
        self.assertIsNone(admission.offence(self.PEER, "auth_failure"))
        self.assertIsNone(admission.offence(self.PEER, "auth_failure"))
        self.assertIsNotNone(admission.offence(self.PEER, "auth_failure"))

    def test_partial_decay(self) -> None:
        admission, clock = make()
        admission.offence(self.PEER, "auth_failure")
        admission.offence(self.PEER, "auth_failure")
        clock.advance(300)  # half a point forgotten: 1.5 left, +1 = 2.5: three within 600 s
        self.assertEqual(admission.offence(self.PEER, "auth_failure"), 10.0)
        clock.advance(900)  # 2.5 - 1.5 = 1.0 left, +1 = 2.0: not more than 2, no new block
        self.assertIsNone(admission.offence(self.PEER, "auth_failure"))

    def test_running_longer_block_is_kept(self) -> None:
        admission, clock = make(penalty_decay=1e9)
        for _ in range(5):
            admission.offence(self.PEER, "auth_failure")  # 40 s
        clock.advance(1000)
        admission.clear_penalties()
        admission.offence(self.PEER, "early_talker")  # 10 s
        self.assertEqual(admission.penalties(), [("203.0.113.5/32", 10.0, 1)])

    def test_offence_during_block_extends(self) -> None:
        admission, clock = make(penalty_decay=1e9)
        admission.offence(self.PEER, "early_talker")  # 3 points, 10 s
        clock.advance(5)
        self.assertAlmostEqual(admission.offence(self.PEER, "auth_failure"), 20.0, places=5)  # type: ignore[arg-type]

    def test_never_penalise(self) -> None:
        admission, _ = make(never_penalise=("127.0.0.0/8", "2001:db8::/32"))
        for _ in range(10):
            self.assertIsNone(admission.offence(v4("127.0.0.1"), "early_talker"))
            self.assertIsNone(admission.offence(v6("2001:db8::1"), "early_talker"))
            self.assertIsNone(admission.offence(v6("::ffff:127.0.0.9"), "early_talker"))
        self.assertIsNone(admission.admit(v4("127.0.0.1")))
        self.assertEqual(admission.penalties(), [])
        self.assertIsNotNone(admission.offence(v4("128.0.0.1"), "early_talker"))

    def test_never_penalise_not_blocked_by_a_neighbours_offences(self) -> None:
        """
        A C{never_penalise} host whose source key (an IPv4 /24 here, an IPv6 /64) a
        neighbour got blocked is not blocked itself: new connections are admitted and
        L{Admission.blocked_for} says not blocked, while the neighbour is refused.
        """
        admission, _ = make(ipv4_prefix=24, never_penalise=("10.0.0.5/32", "2001:db8::5/128"))
        for neighbour in (v4("10.0.0.99"), v6("2001:db8::99")):
            for _ in range(3):
                admission.offence(neighbour, "early_talker")
            self.assertIsNotNone(admission.blocked_for(neighbour))
            self.assertEqual(admission.admit(neighbour).reason, PENALISED)  # type: ignore[union-attr]
        for exempt in (v4("10.0.0.5"), v6("2001:db8::5")):
            self.assertIsNone(admission.blocked_for(exempt))
            self.assertIsNone(admission.admit(exempt))

    def test_slot_blocked_reads_the_slots_key(self) -> None:
        """
        L{Admission.slot_blocked}: an admitted connection's source is blocked once its key
        is (by its own or a neighbour's offences), not before, not after the block ends, and
        never for a C{never_penalise} host under a neighbour's block.
        """
        admission, clock = make(ipv4_prefix=24, never_penalise=("10.0.0.5/32",))
        peer, exempt = v4("10.0.0.7"), v4("10.0.0.5")
        slot = admission.enter(peer)
        exempt_slot = admission.enter(exempt)
        assert isinstance(slot, Slot) and isinstance(exempt_slot, Slot)
        self.assertFalse(admission.slot_blocked(slot, peer))
        for _ in range(3):
            admission.offence(v4("10.0.0.99"), "early_talker")  # a block on 10.0.0.0/24
        self.assertTrue(admission.slot_blocked(slot, peer))
        self.assertFalse(admission.slot_blocked(exempt_slot, exempt))
        clock.advance(admission.blocked_for(peer) or 0.0)
        self.assertFalse(admission.slot_blocked(slot, peer))

    def test_never_penalise_does_not_exempt_from_caps(self) -> None:
        admission, _ = make(never_penalise=("127.0.0.0/8",), per_source_max=1)
        admission.admit(v4("127.0.0.1", 1))
        self.assertEqual(admission.admit(v4("127.0.0.1", 2)).reason, PER_SOURCE_CAP)  # type: ignore[union-attr]

    def test_unknown_kind(self) -> None:
        admission, _ = make()
        self.assertRaises(ValueError, admission.offence, self.PEER, "rudeness")

    def test_penalties_listing(self) -> None:
        admission, clock = make()
        admission.offence(v4("192.0.2.1"), "auth_failure")
        admission.offence(v4("192.0.2.2"), "early_talker")
        clock.advance(4)
        self.assertEqual(
            admission.penalties(), [("192.0.2.2/32", 6.0, 1), ("192.0.2.1/32", 0.0, 1)]
        )

    def test_clear_all(self) -> None:
        admission, _ = make()
        admission.offence(v4("192.0.2.1"), "early_talker")
        admission.offence(v4("192.0.2.2"), "early_talker")
        self.assertEqual(admission.clear_penalties(), 2)
        self.assertIsNone(admission.admit(v4("192.0.2.1")))
        self.assertEqual(admission.penalties(), [])

    def test_clear_one_by_key(self) -> None:
        admission, _ = make()
        admission.offence(v4("192.0.2.1"), "early_talker")
        admission.offence(v4("192.0.2.2"), "early_talker")
        self.assertEqual(admission.clear_penalties("192.0.2.1/32"), 1)
        self.assertIsNone(admission.admit(v4("192.0.2.1")))
        self.assertEqual(admission.admit(v4("192.0.2.2")).reason, PENALISED)  # type: ignore[union-attr]

    def test_clear_one_by_address(self) -> None:
        admission, _ = make()
        admission.offence(v6("2001:db8:1:1::5"), "early_talker")
        self.assertEqual(admission.clear_penalties("2001:db8:1:1::77"), 1)
        self.assertEqual(admission.clear_penalties("2001:db8:1:1::77"), 0)
        self.assertIsNone(admission.admit(v6("2001:db8:1:1::5")))

    def test_clear_network_clears_exactly_the_keys_listed_for_it(self) -> None:
        """
        C{penalties clear 10.1.2.0/31} removes every key inside the network (10.1.2.0 and
        10.1.2.1) and nothing else: not 10.1.2.2 one past its end, nor the C{unknown} key
        that the text of a network is not.
        """
        admission, _ = make()
        for last in (0, 1, 2):
            admission.offence(v4(f"10.1.2.{last}"), "early_talker")
        admission.offence(object(), "early_talker")
        self.assertEqual(admission.clear_penalties("10.1.2.0/31"), 2)
        self.assertEqual(
            sorted(key for key, *_ in admission.penalties()), ["10.1.2.2/32", "unknown"]
        )
        self.assertEqual(admission.clear_penalties("10.9.0.0/16"), 0)

    def test_clear_network_holding_a_prefix_key(self) -> None:
        """
        With C{ipv6_prefix} 64, C{penalties clear} of a /80 inside a penalised /64 clears
        that /64 key (the listing filter shows it for the /80), and of a /48 every /64 in it.
        """
        admission, _ = make()
        admission.offence(v6("2001:db8:1:1::5"), "early_talker")
        admission.offence(v6("2001:db8:1:2::5"), "early_talker")
        admission.offence(v6("2001:db8:2:1::5"), "early_talker")
        self.assertEqual(admission.clear_penalties("2001:db8:1:1:0:1::/96"), 1)
        self.assertEqual(admission.clear_penalties("2001:db8:1::/48"), 1)
        self.assertEqual([key for key, *_ in admission.penalties()], ["2001:db8:2:1::/64"])

    def test_clear_named_or_bad_text_never_falls_back_to_unknown(self) -> None:
        """
        C{penalties clear unix} with no C{unix} entry, or text that is no address, network
        or named key, clears nothing (the C{unknown} entry stays); C{unknown} clears it.
        """
        admission, _ = make()
        admission.offence(object(), "early_talker")
        admission.offence(v4("192.0.2.1"), "early_talker")
        self.assertEqual(admission.clear_penalties("unix"), 0)
        self.assertEqual(admission.clear_penalties("not-an-address"), 0)
        self.assertEqual(admission.clear_penalties("192.0.2.0/33"), 0)
        self.assertEqual(len(admission.penalties()), 2)
        self.assertEqual(admission.clear_penalties("unknown"), 1)
        self.assertEqual([key for key, *_ in admission.penalties()], ["192.0.2.1/32"])

    def test_block_and_each_extension_logged(self) -> None:
        admission, _ = make(penalty_decay=1e9)
        with capturedLogs() as events:
            for _ in range(5):
                admission.offence(self.PEER, "auth_failure")
        blocks = [e for e in events if e.get("event") == "admission.block"]
        self.assertEqual([b["seconds"] for b in blocks], [10.0, 20.0, 40.0])
        self.assertEqual([b["extended"] for b in blocks], [False, True, True])
        self.assertEqual(blocks[0]["source"], "203.0.113.5/32")


class RandomEarlyDropTests(unittest.TestCase):
    KNOBS: dict[str, Any] = {
        "max_unauthenticated": 100,
        "red_soft": 50,
        "red_hard": 100,
        "red_rate": 0.3,
    }

    def test_probability_curve(self) -> None:
        admission, _ = make(**self.KNOBS)
        self.assertEqual(admission.drop_probability(0), 0.0)
        self.assertEqual(admission.drop_probability(49), 0.0)
        self.assertAlmostEqual(admission.drop_probability(50), 0.3)
        self.assertAlmostEqual(admission.drop_probability(75), 0.65)
        self.assertAlmostEqual(admission.drop_probability(99), 0.3 + 0.7 * 49 / 50)
        self.assertEqual(admission.drop_probability(100), 1.0)

    def test_soft_equals_hard(self) -> None:
        admission, _ = make(max_unauthenticated=10, red_soft=10, red_hard=10)
        self.assertEqual(admission.drop_probability(9), 0.0)
        self.assertEqual(admission.drop_probability(10), 1.0)

    def assertNear(self, observed: float, expected: float) -> None:
        """
        Generous bounds: with 10,000 draws the standard error is at most 0.005, so 0.03 is
        six of them (and the draws are seeded, so the outcome never varies between runs).
        """
        self.assertLess(abs(observed - expected), 0.03, f"{observed} vs {expected}")

    def _observed_drop_rate(self, held: int, draws: int = 10_000) -> float:
        admission, _ = make(seed=held, **self.KNOBS)
        for _ in range(10 * held):
            if admission.snapshot()["unauthenticated"] == held:
                break
            admission.admit(UNIX)
        self.assertEqual(admission.snapshot()["unauthenticated"], held)
        dropped = 0
        admission.counters.clear()
        for _ in range(draws):
            refusal = admission.admit(UNIX)
            if refusal is None:
                admission.released(UNIX, authenticated=False)
            else:
                self.assertEqual(refusal.reason, RANDOM_EARLY_DROP)
                dropped += 1
        self.assertEqual(admission.counters[RANDOM_EARLY_DROP], dropped)
        return dropped / draws

    def test_no_drop_below_soft(self) -> None:
        self.assertEqual(self._observed_drop_rate(49), 0.0)

    def test_drop_rate_at_soft(self) -> None:
        self.assertNear(self._observed_drop_rate(50), 0.30)

    def test_drop_rate_midway(self) -> None:
        self.assertNear(self._observed_drop_rate(75), 0.65)

    def test_drop_rate_near_hard(self) -> None:
        self.assertNear(self._observed_drop_rate(95), 0.3 + 0.7 * 45 / 50)

    def test_red_hard_below_cap_drops_all(self) -> None:
        admission, _ = make(max_unauthenticated=100, red_soft=10, red_hard=20)
        admitted = 0
        for _ in range(1000):
            if admission.admit(UNIX) is None:
                admitted += 1
        self.assertEqual(admission.snapshot()["unauthenticated"], admitted)
        self.assertLessEqual(admitted, 20)
        self.assertEqual(admission.counters[RANDOM_EARLY_DROP], 1000 - admitted)

    def test_seeded_draws_are_deterministic(self) -> None:
        def run() -> list[bool]:
            admission, _ = make(seed=7, **self.KNOBS)
            return [admission.admit(UNIX) is None for _ in range(100)]

        self.assertEqual(run(), run())


class OverloadTests(unittest.TestCase):
    def test_overload_refuses_new_connections(self) -> None:
        admission, _ = make()
        admission.set_overload(OVERLOAD_LAG)
        self.assertEqual(admission.admit(v4("192.0.2.1")), Refusal(OVERLOAD_LAG))
        self.assertEqual(admission.overload, OVERLOAD_LAG)
        admission.set_overload(None)
        self.assertIsNone(admission.admit(v4("192.0.2.1")))

    def test_overload_applies_source_rules_first(self) -> None:
        """
        Under overload the source-targeted rules still refuse at once (before the
        connection could be put on probation), so they see every attempt: a blocked source
        is refused C{penalised}, not C{overload-load}.
        """
        admission, _ = make()
        admission.offence(v4("203.0.113.5"), "early_talker")
        admission.set_overload(OVERLOAD_LOAD)
        self.assertEqual(admission.admit(v4("203.0.113.5")).reason, PENALISED)  # type: ignore[union-attr]
        self.assertEqual(admission.admit(v4("192.0.2.1")), Refusal(OVERLOAD_LOAD))
        self.assertEqual(admission.snapshot()["tracked_sources"], 1)

    def test_overload_lets_admitted_users_authenticate(self) -> None:
        admission, _ = make()
        admission.admit(v4("192.0.2.1"))
        admission.set_overload(OVERLOAD_LOAD)
        self.assertIsNone(admission.authenticated(v4("192.0.2.1")))
        self.assertEqual(admission.snapshot()["relays"], 1)


class StressTests(unittest.TestCase):
    def test_idle(self) -> None:
        admission, _ = make()
        self.assertEqual(admission.stress(), 0.0)
        self.assertEqual(admission.scaled_timeout(60.0), 60.0)

    def test_half_full(self) -> None:
        admission, _ = make(max_unauthenticated=10)
        for _ in range(5):
            admission.admit(UNIX)
        self.assertEqual(admission.stress(), 0.5)
        self.assertAlmostEqual(admission.scaled_timeout(60.0), 60.0 * 0.625)

    def test_full(self) -> None:
        admission, _ = make(max_unauthenticated=4, red_soft=4)
        for _ in range(4):
            admission.admit(UNIX)
        self.assertEqual(admission.stress(), 1.0)
        self.assertAlmostEqual(admission.scaled_timeout(60.0), 15.0)

    def test_relays_do_not_stress(self) -> None:
        admission, _ = make(max_unauthenticated=4)
        for _ in range(2):
            admission.admit(UNIX)
            admission.authenticated(UNIX)
        self.assertEqual(admission.stress(), 0.0)

    def test_overload_is_full_stress(self) -> None:
        admission, _ = make()
        admission.set_overload(OVERLOAD_LAG)
        self.assertEqual(admission.stress(), 1.0)
        self.assertAlmostEqual(admission.scaled_timeout(20.0), 5.0)

    def test_configured_floor(self) -> None:
        admission, _ = make(stress_timeout_floor=0.5)
        admission.set_overload(OVERLOAD_LAG)
        self.assertAlmostEqual(admission.scaled_timeout(20.0), 10.0)


class ReportingTests(unittest.TestCase):
    def test_counters_by_reason(self) -> None:
        admission, _ = make(per_source_max=1, deny=("192.0.2.0/24",))
        admission.admit(v4("192.0.2.1"))
        admission.admit(v4("192.0.2.2"))
        admission.admit(v4("198.51.100.1", 1))
        admission.admit(v4("198.51.100.1", 2))
        admission.set_overload(OVERLOAD_LAG)
        admission.admit(v4("198.51.100.2"))
        self.assertEqual(dict(admission.counters), {DENIED: 2, PER_SOURCE_CAP: 1, OVERLOAD_LAG: 1})
        self.assertTrue(set(admission.counters) <= REASONS)

    def test_snapshot(self) -> None:
        admission, _ = make()
        admission.admit(v4("192.0.2.1"))
        admission.admit(v4("192.0.2.2"))
        admission.authenticated(v4("192.0.2.2"))
        admission.offence(v4("203.0.113.1"), "early_talker")
        admission.offence(v4("203.0.113.2"), "auth_failure")
        self.assertEqual(
            admission.snapshot(),
            {
                "unauthenticated": 1,
                "lane": 0,
                "relays": 1,
                "connections": 2,
                "probation": 0,
                "evictions": 0,
                "active_sources": 2,
                "tracked_sources": 2,
                "penalised_sources": 2,
                "blocked_sources": 1,
                "stress": 1 / 256,
                "overload": None,
            },
        )

    def test_reply_line(self) -> None:
        admission, _ = make()
        self.assertEqual(admission.reply_line(Refusal(UNAUTH_CAP)), b"ERR BUSY unauth-cap")

    def test_close_mode(self) -> None:
        admission, _ = make(reject_mode="close")
        self.assertIsNone(admission.reply_line(Refusal(UNAUTH_CAP)))


class BoundTests(unittest.TestCase):
    """
    A flood from many addresses cannot grow memory without limit.
    """

    SOURCES = 100_000

    def test_rate_table_bounded_with_100k_sources(self) -> None:
        admission, _ = make(max_tracked_sources=1000)
        for n in range(self.SOURCES):
            address = nth_v4(n)
            self.assertIsNone(admission.admit(address))
            admission.released(address, authenticated=False)
        self.assertLessEqual(len(admission._buckets), 1000)
        self.assertEqual(len(admission._live), 0)
        self.assertEqual(len(admission._sources), 0)

    def test_default_bound_with_100k_ipv6_sources(self) -> None:
        admission, _ = make()
        for n in range(self.SOURCES):
            admission.admit(v6(f"2001:db8:{n >> 16:x}:{n & 0xFFFF:x}::1"))
        self.assertLessEqual(len(admission._buckets), 65536)
        # Live tables are bounded by the connection caps, whatever was attempted.
        self.assertLessEqual(len(admission._live), 256)
        self.assertLessEqual(len(admission._sources), 256)

    def test_penalty_table_bounded_with_100k_sources(self) -> None:
        admission, _ = make(max_tracked_sources=1000)
        for n in range(self.SOURCES):
            admission.offence(nth_v4(n), "early_talker")
        self.assertLessEqual(len(admission._penalties), 1000)
        self.assertLessEqual(len(admission.penalties()), 1000)

    def test_rate_churn_cannot_evict_penalties(self) -> None:
        admission, _ = make(max_tracked_sources=100)
        admission.offence(v4("203.0.113.5"), "early_talker")
        for n in range(10_000):
            admission.admit(nth_v4(n))
            admission.released(nth_v4(n), authenticated=False)
        self.assertEqual(admission.admit(v4("203.0.113.5")).reason, PENALISED)  # type: ignore[union-attr]

    def test_idle_buckets_pruned_lazily(self) -> None:
        admission, clock = make()
        for n in range(1000):
            admission.admit(nth_v4(n))
            admission.released(nth_v4(n), authenticated=False)
        self.assertEqual(len(admission._buckets), 1000)
        clock.advance(10)  # every bucket has refilled: they carry no information
        for port in range(1000):
            admission.admit(v4("192.0.2.1", port))
            admission.released(v4("192.0.2.1", port), authenticated=False)
            clock.advance(0.1)
        self.assertEqual(len(admission._buckets), 1)

    def test_spent_penalties_pruned_lazily(self) -> None:
        admission, clock = make()
        for n in range(1000):
            admission.offence(nth_v4(n), "auth_failure")
        clock.advance(601)
        for n in range(600):
            admission.admit(v4("192.0.2.1", n))
        self.assertEqual(len(admission._penalties), 0)

    def test_eviction_forgets_oldest_bucket(self) -> None:
        admission, _ = make(max_tracked_sources=2, per_source_burst=1)
        admission.admit(v4("192.0.2.1", 1))
        admission.admit(v4("192.0.2.2", 1))
        admission.admit(v4("192.0.2.3", 1))  # evicts 192.0.2.1's empty bucket
        self.assertIsNone(admission.admit(v4("192.0.2.1", 2)))
        self.assertEqual(admission.admit(v4("192.0.2.3", 2)).reason, RATE)  # type: ignore[union-attr]


_PEERS = [
    v4("192.0.2.1", 1),
    v4("192.0.2.1", 2),
    v4("192.0.2.2", 1),
    v6("2001:db8::1", 1),
    v6("2001:db8::2", 1),
    v6("::ffff:192.0.2.1", 3),
    UNIX,
    "192.0.2.3",
    "garbage",
]

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["admit", "auth", "release", "release-auth", "offence", "tick"]),
        st.integers(0, len(_PEERS) - 1),
        st.sampled_from(OFFENCE_KINDS),
    ),
    max_size=120,
)


class PropertyTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(ops=_OPS, seed=st.integers(0, 2**16))
    def test_gauges_consistent(self, ops: list[tuple[str, int, str]], seed: int) -> None:
        admission, clock = make(
            seed=seed,
            max_connections=6,
            max_unauthenticated=5,
            max_relays=3,
            red_soft=3,
            per_source_max=3,
            per_source_burst=4,
            max_tracked_sources=3,
        )
        model: list[list[Any]] = []  # [peer, authenticated]
        for op, index, kind in ops:
            peer = _PEERS[index]
            if op == "admit":
                if admission.admit(peer) is None:
                    model.append([peer, False])
            elif op == "auth":
                if admission.authenticated(peer) is None:
                    for conn in model:
                        if conn[0] == peer and not conn[1]:
                            conn[1] = True
                            break
            elif op in ("release", "release-auth"):
                wanted = op == "release-auth"
                admission.released(peer, authenticated=wanted)
                matches = [c for c in model if c[0] == peer]
                chosen = [c for c in matches if c[1] == wanted] or matches
                if chosen:
                    model.remove(chosen[0])
            elif op == "offence":
                admission.offence(peer, kind)
            else:
                clock.advance(index * 3.0)
            snap = admission.snapshot()
            unauth = sum(1 for c in model if not c[1])
            relays = sum(1 for c in model if c[1])
            self.assertEqual((snap["unauthenticated"], snap["relays"]), (unauth, relays))
            self.assertGreaterEqual(unauth, 0)
            self.assertLessEqual(unauth, 5)
            self.assertLessEqual(relays, 3)
            self.assertLessEqual(unauth + relays, 6)
            sources = admission._sources
            self.assertEqual(sum(source.live for source in sources.values()), len(model))
            self.assertEqual(sum(source.unauth for source in sources.values()), unauth)
            self.assertTrue(all(source.live > 0 for source in sources.values()))
            self.assertTrue(
                all(source.live <= 3 for key, source in sources.items() if key != UNIX_SOURCE)
            )
            self.assertLessEqual(len(admission._buckets), 3)
            self.assertLessEqual(len(admission._penalties), 3)
            self.assertLessEqual(snap["blocked_sources"], snap["penalised_sources"])
            self.assertTrue(0.0 <= admission.stress() <= 1.0)


class ZeroPointOffenceTests(unittest.TestCase):
    def test_zero_point_kind_never_evicts_a_block(self):
        admission = Admission(AdmissionPolicy(timeout_points=0, max_tracked_sources=1), Clock())
        self.assertIsNotNone(admission.offence("192.0.2.1", "early_talker"))
        self.assertIsNone(admission.offence("192.0.2.2", "timeout"))
        self.assertEqual([p[0] for p in admission.penalties()], ["192.0.2.1/32"])
        self.assertEqual(admission.admit("192.0.2.1").reason, "penalised")

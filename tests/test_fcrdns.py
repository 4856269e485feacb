"""
Tests for L{netguard.peer.fcrdns}, with a fake resolver returning canned
L{twisted.names.dns} records and a L{task.Clock}.
"""

from __future__ import annotations

import io
import ipaddress
from typing import Any

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    fail,
    gatherResults,
    inlineCallbacks,
    succeed,
)
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import capturedLogs, globalLogPublisher
from twisted.names import client, dns
from twisted.names import error as names_error
from twisted.trial import unittest

from netguard.log import safe_text_observer
from netguard.peer.fcrdns import (
    MAX_CNAME_HOPS,
    MAX_REISSUES,
    FCrDNSCache,
    FCrDNSResult,
    SharingResolver,
    confirm_hostname,
    follow_answers,
    is_valid_hostname,
    make_resolver,
    normalize_address,
    retry_schedule,
    reverse_name,
    system_nameservers,
)
from netguard.quiet_udp import is_quiet_udp_port_line

HANG = object()


def ptr(owner: str, target: bytes | str, ttl: int = 300) -> dns.RRHeader:
    target_b = target.encode("ascii") if isinstance(target, str) else target
    return dns.RRHeader(owner, dns.PTR, dns.IN, ttl, dns.Record_PTR(target_b, ttl))


def a(owner: str, address: str, ttl: int = 300) -> dns.RRHeader:
    return dns.RRHeader(owner, dns.A, dns.IN, ttl, dns.Record_A(address, ttl))


def aaaa(owner: str, address: str, ttl: int = 300) -> dns.RRHeader:
    return dns.RRHeader(owner, dns.AAAA, dns.IN, ttl, dns.Record_AAAA(address, ttl))


def cname(owner: str, target: str, ttl: int = 300) -> dns.RRHeader:
    return dns.RRHeader(owner, dns.CNAME, dns.IN, ttl, dns.Record_CNAME(target, ttl))


class FakeResolver:
    """
    An L{IResolver} test double: answers come from a table keyed by (type, name); absent
    keys are NXDOMAIN; L{HANG} does not answer (it records its cancellation; the test may
    fire the last hanging lookup of a name from C{hanging}).
    """

    def __init__(self) -> None:
        self.table: dict[tuple[int, str], Any] = {}
        self.calls: list[tuple[int, str, Any]] = []
        self.cancelled: list[str] = []
        self.hanging: dict[str, Deferred[Any]] = {}

    def add(self, qtype: int, name: str, value: Any) -> None:
        self.table[(qtype, name)] = value

    def _lookup(self, qtype: int, name: str, timeout: Any) -> Deferred[Any]:
        self.calls.append((qtype, name, timeout))
        value = self.table.get((qtype, name))
        if value is None:
            return fail(names_error.DNSNameError(name))
        if value is HANG:
            self.hanging[name] = Deferred(lambda d: self.cancelled.append(name))
            return self.hanging[name]
        if isinstance(value, Exception):
            return fail(value)
        return succeed((value, [], []))

    def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._lookup(dns.PTR, name, timeout)

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._lookup(dns.A, name, timeout)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._lookup(dns.AAAA, name, timeout)

    def names(self, qtype: int) -> list[str]:
        return [name for t, name, _ in self.calls if t == qtype]


PTR1 = "1.0.0.127.in-addr.arpa"


class FCrDNSTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.resolver = FakeResolver()

    def check(self, address: str = "127.0.0.1", **kw: Any) -> Deferred[FCrDNSResult]:
        kw.setdefault("resolver", self.resolver)
        return confirm_hostname(self.clock, address, **kw)

    def result(self, address: str = "127.0.0.1", **kw: Any) -> FCrDNSResult:
        result: FCrDNSResult = self.successResultOf(self.check(address, **kw))
        return result


class ConfirmedTests(FCrDNSTestCase):
    def test_ipv4_confirmed(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "Good.Test")])
        self.resolver.add(dns.A, "good.test", [a("good.test", "127.0.0.1")])
        result = self.result()
        self.assertEqual(result, FCrDNSResult(True, "good.test", "confirmed", ("good.test",), 0))
        self.assertEqual(self.resolver.names(dns.A), ["good.test"])
        self.assertEqual(self.resolver.names(dns.AAAA), [])

    def test_ipv4_mapped_ipv6_checked_as_ipv4(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "good.test")])
        self.resolver.add(dns.A, "good.test", [a("good.test", "127.0.0.1")])
        result = self.result("::ffff:127.0.0.1")
        self.assertTrue(result.confirmed)
        self.assertEqual(self.resolver.names(dns.PTR), [PTR1])

    def test_ipv6_confirmed_with_aaaa(self) -> None:
        name = reverse_name(ipaddress.IPv6Address("2001:db8::1"))
        self.resolver.add(dns.PTR, name, [ptr(name, "six.test")])
        self.resolver.add(dns.AAAA, "six.test", [aaaa("six.test", "2001:db8:0:0::1")])
        result = self.result("2001:DB8::1")
        self.assertEqual((result.confirmed, result.name), (True, "six.test"))
        self.assertEqual(self.resolver.names(dns.PTR), [name])
        self.assertEqual(self.resolver.names(dns.A), [])

    def test_ipv6_zone_is_ignored(self) -> None:
        name = reverse_name(ipaddress.IPv6Address("fe80::1"))
        self.resolver.add(dns.PTR, name, [ptr(name, "link.test")])
        self.resolver.add(dns.AAAA, "link.test", [aaaa("link.test", "fe80::1")])
        self.assertTrue(self.result("fe80::1%eth0").confirmed)

    def test_one_of_several_names_confirms(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "other.test"), ptr(PTR1, "good.test")])
        self.resolver.add(dns.A, "other.test", [a("other.test", "10.0.0.1")])
        self.resolver.add(dns.A, "good.test", [a("good.test", "127.0.0.1")])
        result = self.result()
        self.assertEqual(result.name, "good.test")
        self.assertEqual(result.names_tried, ("other.test", "good.test"))

    def test_duplicate_ptr_names_looked_up_once(self) -> None:
        self.resolver.add(
            dns.PTR,
            PTR1,
            [ptr(PTR1, "good.test"), ptr(PTR1, "GOOD.test."), ptr(PTR1, "good.test")],
        )
        self.resolver.add(dns.A, "good.test", [a("good.test", "127.0.0.1")])
        result = self.result()
        self.assertTrue(result.confirmed)
        self.assertEqual(self.resolver.names(dns.A), ["good.test"])
        self.assertEqual(result.names_skipped, 0)

    def test_forward_cname_chain_followed(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "alias.test")])
        self.resolver.add(
            dns.A,
            "alias.test",
            [
                cname("alias.test", "mid.test"),
                cname("mid.test", "real.test"),
                a("real.test", "127.0.0.1"),
            ],
        )
        self.assertEqual(self.result().name, "alias.test")

    def test_cname_chain_at_bound_followed(self) -> None:
        chain = [cname(f"c{i}.test", f"c{i + 1}.test") for i in range(MAX_CNAME_HOPS)]
        chain.append(a(f"c{MAX_CNAME_HOPS}.test", "127.0.0.1"))
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "c0.test")])
        self.resolver.add(dns.A, "c0.test", chain)
        self.assertTrue(self.result().confirmed)

    def test_classless_ptr_cname_followed(self) -> None:
        # RFC 2317 delegation: the PTR lives under a CNAME in the reverse tree.
        self.resolver.add(
            dns.PTR,
            PTR1,
            [
                cname(PTR1, "1.0/25.0.0.127.in-addr.arpa"),
                ptr("1.0/25.0.0.127.in-addr.arpa", "g.test"),
            ],
        )
        self.resolver.add(dns.A, "g.test", [a("g.test", "127.0.0.1")])
        self.assertTrue(self.result().confirmed)


class UnconfirmedTests(FCrDNSTestCase):
    def test_nxdomain_is_no_ptr(self) -> None:
        result = self.result()
        self.assertEqual(result, FCrDNSResult(False, None, "no-ptr"))
        self.assertEqual(self.resolver.names(dns.A), [])

    def test_empty_answer_is_no_ptr(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [])
        self.assertEqual(self.result().reason, "no-ptr")

    def test_ptr_for_another_owner_is_ignored(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr("9.9.9.9.in-addr.arpa", "good.test")])
        self.resolver.add(dns.A, "good.test", [a("good.test", "127.0.0.1")])
        self.assertEqual(self.result().reason, "no-ptr")

    def test_spoofed_ptr_is_mismatch(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "bank.example")])
        self.resolver.add(dns.A, "bank.example", [a("bank.example", "192.0.2.7")])
        result = self.result()
        self.assertEqual(result, FCrDNSResult(False, None, "mismatch", ("bank.example",), 0))

    def test_forward_nxdomain_is_mismatch(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "gone.test")])
        self.assertEqual(self.result().reason, "mismatch")

    def test_forward_record_for_another_owner_is_ignored(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "x.test")])
        self.resolver.add(dns.A, "x.test", [a("y.test", "127.0.0.1")])
        self.assertEqual(self.result().reason, "mismatch")

    def test_ipv6_client_not_confirmed_by_a_record(self) -> None:
        name = reverse_name(ipaddress.IPv6Address("::1"))
        self.resolver.add(dns.PTR, name, [ptr(name, "six.test")])
        self.resolver.add(dns.AAAA, "six.test", [a("six.test", "127.0.0.1")])
        self.assertEqual(self.result("::1").reason, "mismatch")

    def test_cname_loop_ends(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "loop.test")])
        self.resolver.add(
            dns.A, "loop.test", [cname("loop.test", "b.test"), cname("b.test", "loop.test")]
        )
        self.assertEqual(self.result().reason, "mismatch")

    def test_cname_chain_longer_than_bound_not_followed(self) -> None:
        chain = [cname(f"c{i}.test", f"c{i + 1}.test") for i in range(MAX_CNAME_HOPS + 1)]
        chain.append(a(f"c{MAX_CNAME_HOPS + 1}.test", "127.0.0.1"))
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "c0.test")])
        self.resolver.add(dns.A, "c0.test", chain)
        self.assertEqual(self.result().reason, "mismatch")

    def test_bad_address(self) -> None:
        self.assertEqual(self.result("not-an-ip").reason, "bad-address")
        self.assertEqual(self.resolver.calls, [])


class TooManyNamesTests(FCrDNSTestCase):
    def many(self, count: int) -> list[str]:
        names = [f"n{i}.test" for i in range(count)]
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, n) for n in names])
        return names

    def test_only_max_names_looked_up(self) -> None:
        names = self.many(10)
        result = self.result(max_names=4)
        self.assertEqual(self.resolver.names(dns.A), names[:4])
        self.assertEqual(result.names_tried, tuple(names[:4]))
        self.assertEqual((result.reason, result.names_skipped), ("too-many-names", 6))

    def test_match_within_bound_confirms_and_notes_skipped(self) -> None:
        self.many(10)
        self.resolver.add(dns.A, "n2.test", [a("n2.test", "127.0.0.1")])
        result = self.result(max_names=4)
        self.assertEqual(
            (result.confirmed, result.name, result.names_skipped), (True, "n2.test", 6)
        )

    def test_match_beyond_bound_not_used(self) -> None:
        self.many(10)
        self.resolver.add(dns.A, "n7.test", [a("n7.test", "127.0.0.1")])
        result = self.result(max_names=4)
        self.assertFalse(result.confirmed)
        self.assertNotIn("n7.test", self.resolver.names(dns.A))

    def test_thousands_of_names_bounded(self) -> None:
        self.many(5000)
        result = self.result(max_names=4)
        self.assertEqual(len(self.resolver.names(dns.A)), 4)
        self.assertEqual(result.names_skipped, 4996)


class BadNameTests(FCrDNSTestCase):
    def test_illegal_characters_not_looked_up(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, b"bad_na me!.test")])
        result = self.result()
        self.assertEqual(result.reason, "bad-name")
        self.assertEqual(result.names_tried, ("bad_na me!.test",))
        self.assertEqual(self.resolver.names(dns.A), [])

    def test_control_bytes_escaped_in_names_tried(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, b"evil\nFAKE LOG\x1b[2J.test")])
        result = self.result()
        self.assertEqual(result.reason, "bad-name")
        self.assertEqual(result.names_tried, ("evil\\nFAKE LOG\\x1b[2J.test",))

    def test_bad_names_skipped_good_name_confirms(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, b"x;rm -rf.test"), ptr(PTR1, "good.test")])
        self.resolver.add(dns.A, "good.test", [a("good.test", "127.0.0.1")])
        result = self.result()
        self.assertEqual(result.name, "good.test")
        self.assertEqual(self.resolver.names(dns.A), ["good.test"])

    def test_bad_and_mismatching_names_is_mismatch(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, b"_x.test"), ptr(PTR1, "other.test")])
        self.assertEqual(self.result().reason, "mismatch")


class HostnameSyntaxTests(unittest.TestCase):
    def test_simple_names(self) -> None:
        for name in (b"a", b"good.test", b"x-1.Example.COM", b"a.b.c.d.e", b"host.test."):
            self.assertTrue(is_valid_hostname(name), name)

    def test_underscore(self) -> None:
        self.assertFalse(is_valid_hostname(b"_dmarc.test"))

    def test_space(self) -> None:
        self.assertFalse(is_valid_hostname(b"a b.test"))

    def test_nul(self) -> None:
        self.assertFalse(is_valid_hostname(b"good.test\x00.evil"))

    def test_newline(self) -> None:
        self.assertFalse(is_valid_hostname(b"good.test\n"))

    def test_non_ascii(self) -> None:
        self.assertFalse(is_valid_hostname("bücher.test".encode()))

    def test_leading_hyphen(self) -> None:
        self.assertFalse(is_valid_hostname(b"-a.test"))

    def test_trailing_hyphen(self) -> None:
        self.assertFalse(is_valid_hostname(b"a-.test"))

    def test_empty_label(self) -> None:
        self.assertFalse(is_valid_hostname(b"a..test"))

    def test_empty_name(self) -> None:
        self.assertFalse(is_valid_hostname(b""))

    def test_only_dot(self) -> None:
        self.assertFalse(is_valid_hostname(b"."))

    def test_two_trailing_dots(self) -> None:
        self.assertFalse(is_valid_hostname(b"a.test.."))

    def test_label_of_63_ok(self) -> None:
        self.assertTrue(is_valid_hostname(b"a" * 63 + b".test"))

    def test_label_of_64_rejected(self) -> None:
        self.assertFalse(is_valid_hostname(b"a" * 64 + b".test"))

    def test_total_253_ok(self) -> None:
        name = b".".join([b"a" * 63] * 3 + [b"b" * 61])
        self.assertEqual(len(name), 253)
        self.assertTrue(is_valid_hostname(name))

    def test_total_254_rejected(self) -> None:
        name = b".".join([b"a" * 63] * 3 + [b"b" * 62])
        self.assertFalse(is_valid_hostname(name))

    def test_dotted_quad_rejected(self) -> None:
        self.assertFalse(is_valid_hostname(b"10.0.0.1"))

    def test_numeric_inner_labels_ok(self) -> None:
        self.assertTrue(is_valid_hostname(b"10-0-0-1.1.test"))


class FailureTests(FCrDNSTestCase):
    def test_ptr_servfail(self) -> None:
        self.resolver.add(dns.PTR, PTR1, names_error.DNSServerError("x"))
        self.assertEqual(self.result().reason, "server-failure")

    def test_ptr_refused(self) -> None:
        self.resolver.add(dns.PTR, PTR1, names_error.DNSQueryRefusedError("x"))
        self.assertEqual(self.result().reason, "server-failure")

    def test_ptr_other_error(self) -> None:
        self.resolver.add(dns.PTR, PTR1, OSError("no servers"))
        self.assertEqual(self.result().reason, "server-failure")

    def test_forward_servfail(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "x.test")])
        self.resolver.add(dns.A, "x.test", names_error.DNSServerError("x"))
        self.assertEqual(self.result().reason, "server-failure")

    def test_resolver_raising_synchronously(self) -> None:
        class Raising(FakeResolver):
            def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]:
                raise RuntimeError("boom")

        self.assertEqual(self.result(resolver=Raising()).reason, "server-failure")

    def test_resolver_timeout_error(self) -> None:
        self.resolver.add(dns.PTR, PTR1, TimeoutError("x"))
        self.assertEqual(self.result().reason, "timeout")

    def test_forward_timeout_beats_mismatch(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "x.test"), ptr(PTR1, "y.test")])
        self.resolver.add(dns.A, "x.test", names_error.DNSQueryTimeoutError(1))
        self.resolver.add(dns.A, "y.test", [a("y.test", "10.0.0.1")])
        self.assertEqual(self.result().reason, "timeout")


class TimeoutTests(FCrDNSTestCase):
    def test_ptr_never_answers(self) -> None:
        self.resolver.add(dns.PTR, PTR1, HANG)
        d = self.check(timeout=3.0)
        self.assertNoResult(d)
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d).reason, "timeout")
        self.assertEqual(self.resolver.cancelled, [PTR1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_forward_never_answers(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "slow.test"), ptr(PTR1, "no.test")])
        self.resolver.add(dns.A, "slow.test", HANG)
        d = self.check(timeout=2.0)
        self.clock.advance(2.0)
        result = self.successResultOf(d)
        self.assertEqual(result.reason, "timeout")
        self.assertEqual(result.names_tried, ("slow.test", "no.test"))
        self.assertEqual(self.resolver.cancelled, ["slow.test"])

    def test_lookup_timeouts_fit_in_budget(self) -> None:
        self.resolver.add(dns.PTR, PTR1, HANG)
        self.check(timeout=4.0)
        schedule = self.resolver.calls[0][2]
        self.assertLessEqual(sum(schedule), 4.0)
        self.assertEqual(len(schedule), 2)

    def test_timer_cancelled_on_answer(self) -> None:
        self.result()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_caller_cancel(self) -> None:
        cache = FCrDNSCache(self.clock)
        self.resolver.add(dns.PTR, PTR1, HANG)
        d = self.check(cache=cache)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.resolver.cancelled, [PTR1])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(cache), 0)

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, self.check, timeout=0)
        self.assertRaises(ValueError, self.check, max_names=0)


class UnansweredResolver(client.Resolver):
    """
    Twisted's own DNS client, with its sharing of identical concurrent queries, talking to a
    DNS server that never answers: each query sent ends as the real one would, with
    L{names_error.DNSQueryTimeoutError} once the sum of its attempt timeouts has passed on
    the clock, unless the test ends it first with L{fail_query}.
    """

    def __init__(self, clock: task.Clock) -> None:
        super().__init__(servers=[("127.0.0.1", 53)], reactor=clock)
        self.clock = clock
        self.sent: list[bytes] = []
        self.cancelled: list[bytes] = []
        self.queries: list[tuple[Deferred[Any], Any]] = []

    def queryUDP(self, queries: list[dns.Query], timeout: Any = None) -> Deferred[Any]:  # noqa: N802
        name = queries[0].name.name
        self.sent.append(name)
        expiry: Any = None

        def cancel(_d: Deferred[Any]) -> None:
            self.cancelled.append(name)
            if expiry.active():
                expiry.cancel()

        d: Deferred[Any] = Deferred(cancel)
        expiry = self.clock.callLater(
            sum(timeout), lambda: d.errback(names_error.DNSQueryTimeoutError(0))
        )
        self.queries.append((d, expiry))
        return d

    def fail_query(self, index: int, error: Exception) -> None:
        d, expiry = self.queries[index]
        expiry.cancel()
        d.errback(error)


PTR1_BYTES = PTR1.encode("ascii")


class SharedLookupCancellationTests(unittest.TestCase):
    """
    Concurrent checks of one address through one shared resolver and cache: a check that is
    cancelled (its client went away) never ends, nor answers, anyone else's check.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.server = UnansweredResolver(self.clock)
        self.sharing = SharingResolver(self.server)
        self.cache = FCrDNSCache(self.clock, negative_ttl=30)

    def check(self, resolver: Any = None) -> Deferred[FCrDNSResult]:
        return confirm_hostname(
            self.clock,
            "127.0.0.1",
            resolver=self.sharing if resolver is None else resolver,
            timeout=5.0,
            cache=self.cache,
        )

    def test_cancelled_check_leaves_concurrent_check_to_its_own_timeout(self) -> None:
        """
        Cancelling one of two concurrent checks sharing a query that is never answered
        leaves the other waiting (the query is not cancelled, nothing is cached); it ends as
        C{timeout} when the unanswered query times out (4.5 s, within its 5 s bound), not
        as C{server-failure} at once.
        """
        first = self.check()
        second = self.check()
        self.assertEqual(self.server.sent, [PTR1_BYTES])
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertNoResult(second)
        self.assertEqual(self.server.cancelled, [])
        self.assertEqual(len(self.cache), 0)
        self.clock.advance(4.4)
        self.assertNoResult(second)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(second), FCrDNSResult(False, None, "timeout"))
        self.assertEqual(self.cache.get("127.0.0.1"), FCrDNSResult(False, None, "timeout"))
        self.assertEqual(self.server.sent, [PTR1_BYTES])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancellation_through_plain_client_resolver_is_asked_again(self) -> None:
        """
        Without a L{SharingResolver}, Twisted's client shares the query itself and hands the
        first caller's cancellation to the second: the second check takes it for what it
        is (not an answer), asks again and ends as C{timeout} when its own query times out.
        """
        first = self.check(self.server)
        second = self.check(self.server)
        self.assertEqual(self.server.sent, [PTR1_BYTES])
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertNoResult(second)
        self.assertEqual(self.server.sent, [PTR1_BYTES, PTR1_BYTES])
        self.assertEqual(len(self.cache), 0)
        self.clock.advance(4.4)
        self.assertNoResult(second)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(second).reason, "timeout")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_check_started_after_a_cancellation_gets_no_answer_from_it(self) -> None:
        """
        A lone check that is cancelled leaves nothing cached: a check started 0.5 s later
        sends its own query and ends at its own bound.
        """
        first = self.check()
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(self.server.cancelled, [PTR1_BYTES])
        self.clock.advance(0.5)
        self.assertEqual(len(self.cache), 0)
        later = self.check()
        self.assertNoResult(later)
        self.assertEqual(self.server.sent, [PTR1_BYTES, PTR1_BYTES])
        self.clock.advance(4.4)
        self.assertNoResult(later)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(later).reason, "timeout")

    def test_check_joining_after_a_concurrent_cancellation_waits_for_dns(self) -> None:
        """
        Two concurrent checks, one cancelled; a third check 0.5 s later finds nothing cached
        and joins the query still under way; both end when that query really times out.
        """
        first = self.check()
        second = self.check()
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.clock.advance(0.5)
        self.assertEqual(len(self.cache), 0)
        later = self.check()
        self.assertNoResult(second)
        self.assertNoResult(later)
        self.assertEqual(self.server.sent, [PTR1_BYTES])
        self.clock.advance(3.9)
        self.assertNoResult(later)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(second).reason, "timeout")
        self.assertEqual(self.successResultOf(later).reason, "timeout")

    def test_real_server_failure_is_shared_and_cached(self) -> None:
        """
        A real SERVFAIL still reaches every check sharing the query and is cached for the
        negative TTL: a third check gets it without a query.
        """
        first = self.check()
        second = self.check()
        self.server.fail_query(0, names_error.DNSServerError("SERVFAIL"))
        expected = FCrDNSResult(False, None, "server-failure")
        self.assertEqual(self.successResultOf(first), expected)
        self.assertEqual(self.successResultOf(second), expected)
        self.assertEqual(self.successResultOf(self.check()), expected)
        self.assertEqual(self.server.sent, [PTR1_BYTES])
        self.clock.advance(30)
        self.assertNoResult(self.check())
        self.assertEqual(len(self.server.sent), 2)

    def test_real_timeout_is_shared_and_cached(self) -> None:
        """
        A query that really timed out ends every check sharing it as C{timeout}, cached for
        the negative TTL (30 s here) and no longer.
        """
        first = self.check()
        second = self.check()
        self.clock.advance(4.5)
        self.assertEqual(self.successResultOf(first).reason, "timeout")
        self.assertEqual(self.successResultOf(second).reason, "timeout")
        self.clock.advance(29.9)
        self.assertEqual(self.successResultOf(self.check()).reason, "timeout")
        self.assertEqual(len(self.server.sent), 1)
        self.clock.advance(0.1)
        self.assertNoResult(self.check())
        self.assertEqual(len(self.server.sent), 2)

    def test_query_cancelled_when_no_check_waits(self) -> None:
        """
        When every check sharing a query is cancelled, the query itself is cancelled and
        nothing stays scheduled or in flight.
        """
        first = self.check()
        second = self.check()
        first.cancel()
        self.assertEqual(self.server.cancelled, [])
        second.cancel()
        self.assertEqual(self.server.cancelled, [PTR1_BYTES])
        self.failureResultOf(first, CancelledError)
        self.failureResultOf(second, CancelledError)
        self.assertEqual(self.sharing.in_flight(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.cache), 0)


class ReissueTests(FCrDNSTestCase):
    def test_foreign_cancellations_are_bounded(self) -> None:
        """
        A resolver that keeps failing a lookup with L{CancelledError} the check did not ask
        for is asked again at most L{MAX_REISSUES} times; then the check ends as C{error},
        logged, and nothing is cached.
        """
        cache = FCrDNSCache(self.clock)
        self.resolver.add(dns.PTR, PTR1, CancelledError())
        with capturedLogs() as events:
            result = self.result(cache=cache)
        self.assertEqual(result, FCrDNSResult(False, None, "error"))
        self.assertEqual(len(self.resolver.names(dns.PTR)), MAX_REISSUES + 1)
        self.assertEqual(len(cache), 0)
        self.assertEqual(
            [e["count"] for e in events if e.get("event") == "peer.fcrdns.error"],
            [MAX_REISSUES + 1],
        )
        self.assertEqual(len(self.flushLoggedErrors(CancelledError)), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_foreign_cancellation_then_answer(self) -> None:
        """
        A lookup cancelled once by someone else is asked again, and the answer to the new
        lookup confirms the address.
        """
        self.resolver.add(dns.PTR, PTR1, HANG)
        self.resolver.add(dns.A, "good.test", [a("good.test", "127.0.0.1")])
        d = self.check()
        self.resolver.hanging[PTR1].errback(CancelledError())
        self.assertNoResult(d)
        self.resolver.hanging[PTR1].callback(([ptr(PTR1, "good.test")], [], []))
        self.assertEqual(self.successResultOf(d).name, "good.test")
        self.assertEqual(len(self.resolver.names(dns.PTR)), 2)

    def test_check_fault_not_cached(self) -> None:
        """
        A fault of the check itself (here a resolver answering with something that is not a
        record) ends it as C{error}, which is not a DNS answer and is not cached.
        """
        cache = FCrDNSCache(self.clock)
        self.resolver.add(dns.PTR, PTR1, [object()])
        self.assertEqual(self.result(cache=cache).reason, "error")
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        self.assertEqual(len(cache), 0)


class SharingResolverTests(unittest.TestCase):
    def setUp(self) -> None:
        self.resolver = FakeResolver()
        self.sharing = SharingResolver(self.resolver)

    def test_concurrent_lookups_share_one_query(self) -> None:
        """
        Two concurrent lookups of one question (names compared without case or final dot)
        send one query; its answer reaches both callers, each on its own L{Deferred}.
        """
        self.resolver.add(dns.PTR, PTR1, HANG)
        first = self.sharing.lookupPointer(PTR1, timeout=(1.0,))
        second = self.sharing.lookupPointer(PTR1.upper() + ".", timeout=(1.0,))
        self.assertIsNot(first, second)
        self.assertEqual(self.resolver.names(dns.PTR), [PTR1])
        answer = ([ptr(PTR1, "good.test")], [], [])
        self.resolver.hanging[PTR1].callback(answer)
        self.assertEqual(self.successResultOf(first), answer)
        self.assertEqual(self.successResultOf(second), answer)
        self.assertEqual(self.sharing.in_flight(), 0)

    def test_caller_cancelling_another_from_its_callback_leaves_the_rest_served(self) -> None:
        """
        When one caller's callback cancels another caller of the same query, that one gets
        L{CancelledError} and every later caller still gets the answer.
        """
        self.resolver.add(dns.PTR, PTR1, HANG)
        first = self.sharing.lookupPointer(PTR1)
        second = self.sharing.lookupPointer(PTR1)
        third = self.sharing.lookupPointer(PTR1)
        first.addCallback(lambda result: (second.cancel(), result)[1])
        answer = ([ptr(PTR1, "good.test")], [], [])
        self.resolver.hanging[PTR1].callback(answer)
        self.assertEqual(self.successResultOf(first), answer)
        self.failureResultOf(second, CancelledError)
        self.assertEqual(self.successResultOf(third), answer)

    def test_different_types_not_shared(self) -> None:
        """
        An A and an AAAA lookup of the same name are two queries.
        """
        self.resolver.add(dns.A, "x.test", HANG)
        self.resolver.add(dns.AAAA, "x.test", HANG)
        self.sharing.lookupAddress("x.test")
        self.sharing.lookupIPV6Address("x.test")
        self.assertEqual(len(self.resolver.calls), 2)

    def test_cancelling_one_caller_leaves_the_query_to_the_others(self) -> None:
        """
        A caller that cancels gets L{CancelledError}; the query goes on, and its failure
        (a real SERVFAIL) reaches the caller still waiting.
        """
        self.resolver.add(dns.PTR, PTR1, HANG)
        first = self.sharing.lookupPointer(PTR1)
        second = self.sharing.lookupPointer(PTR1)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertNoResult(second)
        self.assertEqual(self.resolver.cancelled, [])
        self.resolver.hanging[PTR1].errback(names_error.DNSServerError("SERVFAIL"))
        self.failureResultOf(second, names_error.DNSServerError)

    def test_last_caller_cancelling_cancels_the_query(self) -> None:
        """
        When the last caller cancels, the query is cancelled and a new lookup sends a new
        query.
        """
        self.resolver.add(dns.PTR, PTR1, HANG)
        first = self.sharing.lookupPointer(PTR1)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(self.resolver.cancelled, [PTR1])
        self.assertEqual(self.sharing.in_flight(), 0)
        self.sharing.lookupPointer(PTR1)
        self.assertEqual(len(self.resolver.calls), 2)

    def test_lookup_after_answer_is_a_new_query(self) -> None:
        """
        Only lookups in flight are shared: an answered one is not kept.
        """
        self.resolver.add(dns.A, "x.test", [a("x.test", "10.0.0.1")])
        self.successResultOf(self.sharing.lookupAddress("x.test"))
        self.successResultOf(self.sharing.lookupAddress("x.test"))
        self.assertEqual(len(self.resolver.calls), 2)
        self.assertEqual(self.sharing.in_flight(), 0)

    def test_resolver_raising_synchronously(self) -> None:
        """
        A resolver that raises gives the caller a failure and leaves nothing in flight.
        """

        class Raising(FakeResolver):
            def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]:  # noqa: N802
                raise RuntimeError("boom")

        sharing = SharingResolver(Raising())
        self.failureResultOf(sharing.lookupPointer(PTR1), RuntimeError)
        self.assertEqual(sharing.in_flight(), 0)


class CacheTests(FCrDNSTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.cache = FCrDNSCache(self.clock, max_entries=3, max_ttl=1000, negative_ttl=20)

    def confirmed(self, ptr_ttl: int = 300, a_ttl: int = 300) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "good.test", ptr_ttl)])
        self.resolver.add(dns.A, "good.test", [a("good.test", "127.0.0.1", a_ttl)])

    def test_hit_makes_no_query(self) -> None:
        self.confirmed()
        first = self.result(cache=self.cache)
        calls = len(self.resolver.calls)
        self.assertEqual(self.result(cache=self.cache), first)
        self.assertEqual(len(self.resolver.calls), calls)

    def test_positive_expires_at_smallest_ttl(self) -> None:
        self.confirmed(ptr_ttl=100, a_ttl=50)
        self.result(cache=self.cache)
        self.clock.advance(49)
        self.assertIsNotNone(self.cache.get("127.0.0.1"))
        self.clock.advance(1)
        self.assertIsNone(self.cache.get("127.0.0.1"))
        self.assertEqual(len(self.cache), 0)

    def test_ttl_capped(self) -> None:
        self.confirmed(ptr_ttl=99999, a_ttl=99999)
        self.result(cache=self.cache)
        self.clock.advance(999)
        self.assertIsNotNone(self.cache.get("127.0.0.1"))
        self.clock.advance(1)
        self.assertIsNone(self.cache.get("127.0.0.1"))

    def test_zero_ttl_not_cached(self) -> None:
        self.confirmed(ptr_ttl=0)
        self.result(cache=self.cache)
        self.assertEqual(len(self.cache), 0)

    def test_negative_cached_shortly(self) -> None:
        self.result(cache=self.cache)
        self.clock.advance(19)
        self.assertEqual(self.cache.get("127.0.0.1"), FCrDNSResult(False, None, "no-ptr"))
        self.clock.advance(1)
        self.assertIsNone(self.cache.get("127.0.0.1"))

    def test_timeout_cached_as_negative(self) -> None:
        self.resolver.add(dns.PTR, PTR1, HANG)
        self.check(cache=self.cache, timeout=1)
        self.clock.advance(1)
        self.assertEqual(self.result(cache=self.cache).reason, "timeout")
        self.assertEqual(len(self.resolver.names(dns.PTR)), 1)

    def test_mapped_address_shares_entry(self) -> None:
        self.confirmed()
        self.result(cache=self.cache)
        self.assertTrue(self.result("::ffff:127.0.0.1", cache=self.cache).confirmed)
        self.assertEqual(len(self.resolver.names(dns.PTR)), 1)

    def test_bound_evicts_oldest(self) -> None:
        for i in range(5):
            self.cache.put(f"10.0.0.{i}", FCrDNSResult(True, f"h{i}.test", "confirmed"), 100)
        self.assertEqual(len(self.cache), 3)
        self.assertIsNone(self.cache.get("10.0.0.0"))
        self.assertIsNone(self.cache.get("10.0.0.1"))
        self.assertEqual(self.cache.get("10.0.0.4"), FCrDNSResult(True, "h4.test", "confirmed"))

    def test_bad_bounds(self) -> None:
        self.assertRaises(ValueError, FCrDNSCache, self.clock, max_entries=0)
        self.assertRaises(ValueError, FCrDNSCache, self.clock, negative_ttl=-1)


class HelperTests(unittest.TestCase):
    def test_ipv4_reverse_name(self) -> None:
        self.assertEqual(
            reverse_name(ipaddress.IPv4Address("192.0.2.10")), "10.2.0.192.in-addr.arpa"
        )

    def test_ipv6_reverse_name_is_nibble_format(self) -> None:
        self.assertEqual(
            reverse_name(ipaddress.IPv6Address("2001:db8::567:89ab")),
            "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
        )

    def test_normalize(self) -> None:
        self.assertEqual(normalize_address("::ffff:10.1.2.3"), ipaddress.IPv4Address("10.1.2.3"))
        self.assertEqual(normalize_address("2001:DB8::1"), ipaddress.IPv6Address("2001:db8::1"))
        self.assertIsNone(normalize_address("example.com"))
        self.assertIsNone(normalize_address(""))

    def test_follow_answers_ignores_other_classes(self) -> None:
        record = dns.RRHeader("x.test", dns.A, dns.CH, 5, dns.Record_A("127.0.0.1"))
        self.assertEqual(follow_answers([record], b"x.test", dns.A), ([], float("inf")))

    def test_retry_schedule_within_budget(self) -> None:
        for budget in (0.0, 0.01, 1.0, 5.0, 60.0):
            schedule = retry_schedule(budget)
            self.assertTrue(all(t > 0 for t in schedule))
            self.assertLessEqual(sum(schedule), max(budget, 0.001))

    def test_make_resolver_uses_given_servers(self) -> None:
        resolver = make_resolver(task.Clock(), [("127.0.0.1", 5353)], 2.0)
        self.assertIsInstance(resolver, client.Resolver)
        self.assertEqual(resolver.servers, [("127.0.0.1", 5353)])

    def test_system_nameservers(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# c\nsearch x\nnameserver 192.0.2.53\nnameserver junk\nnameserver ::1\n")
        self.assertEqual(system_nameservers(path), [("192.0.2.53", 53), ("::1", 53)])

    def test_system_nameservers_missing_file(self) -> None:
        self.assertEqual(system_nameservers(self.mktemp()), [("127.0.0.1", 53)])


class _FakeDatagramPort:
    """
    The port a L{_FakeUDPClock} opens: records writes, stops the protocol on
    C{stopListening}, logs nothing of its own.
    """

    def __init__(self, number: int, protocol: Any) -> None:
        self.number = number
        self.protocol = protocol
        self.written: list[tuple[bytes, Any]] = []
        self.listening = True

    def getHost(self) -> IPv4Address:  # noqa: N802
        return IPv4Address("UDP", "0.0.0.0", self.number)

    def write(self, data: bytes, addr: Any = None) -> None:
        self.written.append((data, addr))

    def stopListening(self) -> None:  # noqa: N802
        self.listening = False
        self.protocol.doStop()


class _FakeUDPClock(task.Clock):
    """
    A clock that is also an C{IReactorUDP} (not a posix reactor): C{listenUDP} connects the
    protocol to a L{_FakeDatagramPort}, without a socket.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[_FakeDatagramPort] = []

    def listenUDP(  # noqa: N802
        self,
        port: int,
        protocol: Any,
        interface: str = "",
        maxPacketSize: int = 8192,  # noqa: N803
    ) -> _FakeDatagramPort:
        listening = _FakeDatagramPort(port, protocol)
        self.ports.append(listening)
        protocol.makeConnection(listening)
        return listening


class _NameErrorServer(DatagramProtocol):
    """
    A loopback DNS server for a test: answers every query with NXDOMAIN.
    """

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802
        query = dns.Message()
        query.fromStr(datagram)
        answer = dns.Message(id=query.id, answer=1, opCode=query.opCode, rCode=dns.ENAME)
        answer.queries = query.queries
        self.transport.write(answer.toStr(), addr)


class QuietResolverTests(unittest.TestCase):
    """
    L{make_resolver}'s resolver opens its per-query UDP ports through
    L{netguard.quiet_udp.listen_udp_quietly}: no C{Starting protocol} / C{Stopping protocol} lines,
    and on a real reactor the port's own two lines marked for netguard's observers to leave
    out.
    """

    def test_query_ports_are_quiet(self) -> None:
        """
        One lookup that times out opens one port and closes it: its protocol is quiet and
        logs nothing. The query still went out to the given server.
        """
        clock = _FakeUDPClock()
        resolver = make_resolver(clock, [("127.0.0.1", 5353)], 2.0)
        with capturedLogs() as events:
            d = resolver.lookupAddress("good.test", timeout=(1,))
            [port] = clock.ports
            self.assertFalse(port.protocol.noisy)
            self.assertEqual([addr for _data, addr in port.written], [("127.0.0.1", 5353)])
            clock.advance(1)
            self.failureResultOf(d, TimeoutError)
        self.assertFalse(port.listening)
        self.assertEqual(list(events), [])

    def test_other_reactor_calls_reach_the_real_reactor(self) -> None:
        """
        Everything but C{listenUDP} is the given reactor's own (timeouts use its clock).
        """
        clock = _FakeUDPClock()
        resolver = make_resolver(clock, [("127.0.0.1", 5353)], 2.0)
        resolver.lookupAddress("good.test", timeout=(5,))
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_real_query_port_lines_stay_out_of_the_log(self) -> None:
        """
        Over real loopback sockets: a lookup answered by a local server opens one
        L{QuietUDPPort} and closes it; its C{starting on} and C{Closed} lines are the only
        events, both recognised, and netguard's text log stays empty.
        """
        from twisted.internet import reactor

        server = reactor.listenUDP(0, _NameErrorServer(), "127.0.0.1")
        self.addCleanup(server.stopListening)
        resolver = make_resolver(reactor, [("127.0.0.1", server.getHost().port)], 30.0)
        out = io.StringIO()
        seen: list[tuple[str, bool]] = []
        closed: Deferred[None] = Deferred()

        def observe(event: dict[str, Any]) -> None:
            text, quiet = event.get("log_text", ""), is_quiet_udp_port_line(event)
            seen.append((text, quiet))
            if quiet and text.startswith("(UDP Port "):
                reactor.callLater(0, closed.callback, None)

        for observer in (observe, safe_text_observer(out)):
            globalLogPublisher.addObserver(observer)
            self.addCleanup(globalLogPublisher.removeObserver, observer)
        looked_up = resolver.lookupAddress("missing.test")
        self.assertFailure(looked_up, names_error.DomainError)

        def check(_: object) -> None:
            self.assertEqual([quiet for _text, quiet in seen], [True, True])
            [(opened, _), (closing, _)] = seen
            number = opened.removeprefix("DNSDatagramProtocol starting on ")
            self.assertTrue(number.isdigit(), opened)
            self.assertEqual(closing, f"(UDP Port {number} Closed)")
            self.assertEqual(out.getvalue(), "")

        return gatherResults([looked_up, closed]).addCallback(check)

    def test_cancelled_query_leaves_no_timer(self) -> None:
        """
        Over real loopback sockets, against a hostile DNS server that never answers: a
        lookup cancelled by its caller (a client that went before its check ended) closes
        its query port and cancels the query's timeout with it; no timer of the query is
        left for the rest of its 30 s (trial's clean-reactor check would also fail).
        """
        from twisted.internet import reactor

        silent = DatagramProtocol()  # receives every query, answers none
        server = reactor.listenUDP(0, silent, "127.0.0.1")
        self.addCleanup(server.stopListening)
        resolver = make_resolver(reactor, [("127.0.0.1", server.getHost().port)], 30.0)
        closed: Deferred[None] = Deferred()

        def observe(event: dict[str, Any]) -> None:
            text = event.get("log_text", "")
            if is_quiet_udp_port_line(event) and text.startswith("(UDP Port "):
                reactor.callLater(0, closed.callback, None)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        before = set(reactor.getDelayedCalls())
        looked_up = resolver.lookupPointer("1.0.0.127.in-addr.arpa")
        looked_up.addErrback(lambda f: f.trap(CancelledError))
        self.assertTrue(set(reactor.getDelayedCalls()) - before)  # the query's timeout
        looked_up.cancel()

        def check(_: object) -> None:
            left = [
                call
                for call in set(reactor.getDelayedCalls()) - before
                if call.active() and "_clearFailed" in repr(call)
            ]
            self.assertEqual(left, [])

        return closed.addCallback(check)


class _HostileTruncatingServer(DatagramProtocol):
    """
    A hostile DNS server written for a test: answers every UDP query with the truncation
    bit set and nothing in it, so that a resolver would retry over TCP.
    """

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802
        query = dns.Message()
        query.fromStr(datagram)
        answer = dns.Message(id=query.id, answer=1, opCode=query.opCode, trunc=1)
        answer.queries = query.queries
        self.transport.write(answer.toStr(), addr)


class _HostileTruncatingServerWithRecords(DatagramProtocol):
    """
    A hostile DNS server written for a test: answers a PTR query with C{good.test} and an
    A query with the truncation bit set and what fits, C{127.0.0.1} among it.
    """

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802
        query = dns.Message()
        query.fromStr(datagram)
        [question] = query.queries
        answer = dns.Message(id=query.id, answer=1, opCode=query.opCode)
        answer.queries = query.queries
        if question.type == dns.PTR:
            answer.answers = [ptr(question.name.name, b"good.test")]
        else:
            answer.trunc = 1
            answer.answers = [a(b"good.test", f"127.0.0.{n}") for n in range(1, 21)]
        self.transport.write(answer.toStr(), addr)


class _SilentTCP(Protocol):
    """
    The same hostile server's TCP side: accepts, counts, never answers.
    """

    def connectionMade(self) -> None:  # noqa: N802
        self.factory.accepted.append(self.transport)  # type: ignore[attr-defined]


class TruncatedAnswerTests(unittest.TestCase):
    """
    A truncated answer is used as far as it goes, over real loopback sockets: never a TCP
    retry, whose fixed 10 s timeout and connection would outlive the check.
    """

    def listen_both(self, server: DatagramProtocol, factory: Factory) -> Any:
        """
        C{server} on a UDP port and C{factory} on the TCP port of the same number.

        @return: the UDP port, the TCP port and the number.
        """
        from twisted.internet import reactor

        for _attempt in range(20):
            udp = reactor.listenUDP(0, server, "127.0.0.1")
            port = udp.getHost().port
            try:
                tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
            except CannotListenError:
                udp.stopListening()
                continue
            break
        else:
            self.fail("no port free for both UDP and TCP")
        self.addCleanup(udp.stopListening)
        self.addCleanup(tcp.stopListening)
        return udp, tcp, port

    @inlineCallbacks
    def test_truncated_answer_is_a_server_failure_without_tcp(self) -> Any:
        """
        A truncated answer that holds nothing is C{server-failure}, and no TCP connection
        is made to the server.
        """
        from twisted.internet import reactor

        factory = Factory.forProtocol(_SilentTCP)
        factory.accepted = []  # type: ignore[attr-defined]
        _udp, _tcp, port = self.listen_both(_HostileTruncatingServer(), factory)
        resolver = make_resolver(reactor, [("127.0.0.1", port)], 5.0)
        result = yield confirm_hostname(reactor, "127.0.0.1", resolver=resolver, timeout=5.0)
        self.assertEqual(result.reason, "server-failure")
        self.assertEqual(factory.accepted, [])  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_truncated_answer_that_holds_the_address_confirms(self) -> Any:
        """
        The other side: a truncated A answer whose records (those that fit) hold the
        peer's address confirms it, still without TCP.
        """
        from twisted.internet import reactor

        factory = Factory.forProtocol(_SilentTCP)
        factory.accepted = []  # type: ignore[attr-defined]
        _udp, _tcp, port = self.listen_both(_HostileTruncatingServerWithRecords(), factory)
        resolver = make_resolver(reactor, [("127.0.0.1", port)], 5.0)
        result = yield confirm_hostname(reactor, "127.0.0.1", resolver=resolver, timeout=5.0)
        self.assertEqual((result.reason, result.name), ("confirmed", "good.test"))
        self.assertEqual(factory.accepted, [])  # type: ignore[attr-defined]

"""
Tests for L{netguard.peer.checks}: policy validation, the pure decision, and a run of both
checks over a fake resolver and L{MemoryReactorClock}.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.names import dns
from twisted.trial import unittest

from netguard.log import format_text
from netguard.peer.checks import (
    PeerCheckPolicy,
    PeerCheckRun,
    PeerChecks,
    Verdict,
    decide,
    start_peer_checks,
)
from netguard.peer.fcrdns import FCrDNSCache, FCrDNSResult, SharingResolver
from netguard.peer.ident import UNSUPPORTED_ADDRESS, IdentResult
from tests.test_fcrdns import HANG, PTR1, FakeResolver, UnansweredResolver, a, ptr

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
LOCAL = IPv4Address("TCP", "127.0.0.9", 7700)
CONFIRMED = FCrDNSResult(True, "host.example.com", "confirmed", ("host.example.com",))
MISMATCH = FCrDNSResult(False, None, "mismatch", ("bank.example",))


class PolicyTests(unittest.TestCase):
    def test_defaults_are_off(self) -> None:
        policy = PeerCheckPolicy()
        self.assertEqual((policy.fcrdns, policy.ident), ("off", "off"))
        self.assertFalse(policy.waits_for_fcrdns)

    def test_unknown_fcrdns_mode(self) -> None:
        self.assertRaises(ValueError, PeerCheckPolicy, fcrdns="deny")

    def test_ident_cannot_be_required(self) -> None:
        self.assertRaises(ValueError, PeerCheckPolicy, ident="require")

    def test_patterns_need_fcrdns(self) -> None:
        self.assertRaises(ValueError, PeerCheckPolicy, fcrdns_deny=("*.bad",))

    def test_single_string_pattern_rejected(self) -> None:
        self.assertRaises(TypeError, PeerCheckPolicy, fcrdns="log", fcrdns_allow="*.good")

    def test_patterns_lower_cased(self) -> None:
        self.assertEqual(
            PeerCheckPolicy(fcrdns="log", fcrdns_allow=["*.EXAMPLE"]).fcrdns_allow, ("*.example",)
        )

    def test_timeouts_positive(self) -> None:
        self.assertRaises(ValueError, PeerCheckPolicy, fcrdns_timeout=0)
        self.assertRaises(ValueError, PeerCheckPolicy, ident_timeout=-1)

    def test_ident_port_range(self) -> None:
        self.assertRaises(ValueError, PeerCheckPolicy, ident_port=70000)

    def test_dns_servers_kept_as_written(self) -> None:
        """
        C{dns_servers} keeps each server as the operator wrote it; L{resolvers} gives the
        C{(ip, port)} pairs the resolver is built with, port 53 unless given.
        """
        policy = PeerCheckPolicy(dns_servers=["192.0.2.1", "192.0.2.2:5353", "[::1]:53", "::1"])
        self.assertEqual(policy.dns_servers, ("192.0.2.1", "192.0.2.2:5353", "[::1]:53", "::1"))
        self.assertEqual(
            policy.resolvers,
            (("192.0.2.1", 53), ("192.0.2.2", 5353), ("::1", 53), ("::1", 53)),
        )

    def test_dns_server_pairs_accepted(self) -> None:
        """
        C{(ip, port)} pairs are accepted too, and written as C{ip:port} or C{[ipv6]:port}.
        """
        policy = PeerCheckPolicy(dns_servers=(("127.0.0.1", 5300), ("::1", 53)))
        self.assertEqual(policy.dns_servers, ("127.0.0.1:5300", "[::1]:53"))
        self.assertEqual(policy.resolvers, (("127.0.0.1", 5300), ("::1", 53)))

    def test_bad_dns_server_rejected(self) -> None:
        self.assertRaises(ValueError, PeerCheckPolicy, dns_servers=["dns.example"])
        self.assertRaises(ValueError, PeerCheckPolicy, dns_servers=["192.0.2.1:0"])
        self.assertRaises(TypeError, PeerCheckPolicy, dns_servers="192.0.2.1")

    def test_waits_for_fcrdns(self) -> None:
        self.assertTrue(PeerCheckPolicy(fcrdns="require").waits_for_fcrdns)
        self.assertTrue(PeerCheckPolicy(fcrdns="log", fcrdns_deny=("x",)).waits_for_fcrdns)
        self.assertFalse(PeerCheckPolicy(fcrdns="log", ident="log").waits_for_fcrdns)


class DecideTests(unittest.TestCase):
    def test_off(self) -> None:
        self.assertEqual(decide(PeerCheckPolicy(), None), (True, "ok"))

    def test_log_mismatch_allowed(self) -> None:
        self.assertEqual(decide(PeerCheckPolicy(fcrdns="log"), MISMATCH), (True, "ok"))

    def test_require_confirmed(self) -> None:
        self.assertEqual(decide(PeerCheckPolicy(fcrdns="require"), CONFIRMED), (True, "ok"))

    def test_require_mismatch(self) -> None:
        self.assertEqual(
            decide(PeerCheckPolicy(fcrdns="require"), MISMATCH), (False, "fcrdns-mismatch")
        )

    def test_require_timeout(self) -> None:
        result = FCrDNSResult(False, None, "timeout")
        self.assertEqual(
            decide(PeerCheckPolicy(fcrdns="require"), result), (False, "fcrdns-timeout")
        )

    def test_require_without_result(self) -> None:
        self.assertEqual(
            decide(PeerCheckPolicy(fcrdns="require"), None), (False, "unsupported-address")
        )

    def test_deny_pattern_matches(self) -> None:
        policy = PeerCheckPolicy(fcrdns="log", fcrdns_deny=("*.EXAMPLE.com",))
        self.assertEqual(decide(policy, CONFIRMED), (False, "fcrdns-denied"))

    def test_deny_pattern_other_name(self) -> None:
        policy = PeerCheckPolicy(fcrdns="log", fcrdns_deny=("*.example.org",))
        self.assertEqual(decide(policy, CONFIRMED), (True, "ok"))

    def test_deny_pattern_ignores_unconfirmed_name(self) -> None:
        policy = PeerCheckPolicy(fcrdns="log", fcrdns_deny=("bank.*",))
        self.assertEqual(decide(policy, MISMATCH), (True, "ok"))

    def test_allow_pattern_matches(self) -> None:
        policy = PeerCheckPolicy(fcrdns="log", fcrdns_allow=("*.example.com",))
        self.assertEqual(decide(policy, CONFIRMED), (True, "ok"))

    def test_allow_pattern_other_name(self) -> None:
        policy = PeerCheckPolicy(fcrdns="log", fcrdns_allow=("*.example.org",))
        self.assertEqual(decide(policy, CONFIRMED), (False, "fcrdns-not-allowed"))

    def test_allow_pattern_refuses_unconfirmed(self) -> None:
        policy = PeerCheckPolicy(fcrdns="log", fcrdns_allow=("bank.example",))
        self.assertEqual(decide(policy, MISMATCH), (False, "fcrdns-not-allowed"))

    def test_deny_beats_allow(self) -> None:
        policy = PeerCheckPolicy(fcrdns="log", fcrdns_allow=("*",), fcrdns_deny=("host.*",))
        self.assertEqual(decide(policy, CONFIRMED), (False, "fcrdns-denied"))


class RunTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.resolver = FakeResolver()

    def start(self, policy: PeerCheckPolicy, peer: Any = PEER, local: Any = LOCAL) -> PeerCheckRun:
        return start_peer_checks(self.reactor, policy, peer, local, resolver=self.resolver)

    def verdict(self, run: PeerCheckRun) -> Verdict:
        verdict: Verdict = self.successResultOf(run.verdict())
        return verdict

    def confirmed(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "host.example.com")])
        self.resolver.add(dns.A, "host.example.com", [a("host.example.com", "127.0.0.1")])

    def ident_connection(self) -> tuple[Any, StringTransport]:
        factory = self.reactor.tcpClients[-1][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport


class RunOffTests(RunTestCase):
    def test_nothing_runs(self) -> None:
        run = self.start(PeerCheckPolicy())
        self.assertEqual(self.verdict(run), Verdict(True, "ok", None, None))
        self.assertEqual(self.resolver.calls, [])
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertIsNone(self.successResultOf(run.fcrdns))
        self.assertIsNone(self.successResultOf(run.ident))

    def test_unix_peer_is_local_even_when_required(self) -> None:
        policy = PeerCheckPolicy(fcrdns="require", ident="log")
        run = self.start(policy, UNIXAddress(b"/run/ng.sock"), UNIXAddress(b"/run/ng.sock"))
        self.assertEqual(self.verdict(run), Verdict(True, "local"))
        self.assertEqual(self.resolver.calls, [])
        self.assertEqual(self.reactor.tcpClients, [])


class RunFCrDNSTests(RunTestCase):
    def test_log_mode_does_not_wait(self) -> None:
        self.resolver.add(dns.PTR, PTR1, HANG)
        run = self.start(PeerCheckPolicy(fcrdns="log"))
        self.assertEqual(self.verdict(run), Verdict(True, "ok", None, None))
        fcrdns = run.fcrdns
        self.assertNoResult(fcrdns)
        self.reactor.advance(5.0)
        self.assertEqual(self.successResultOf(fcrdns).reason, "timeout")

    def test_log_mode_reports_result_when_done(self) -> None:
        self.confirmed()
        run = self.start(PeerCheckPolicy(fcrdns="log"))
        self.assertEqual(self.verdict(run).fcrdns, CONFIRMED)
        self.assertEqual(run.fcrdns_result, CONFIRMED)

    def test_require_waits_then_allows(self) -> None:
        self.confirmed()
        run = self.start(PeerCheckPolicy(fcrdns="require"))
        self.assertEqual(self.verdict(run), Verdict(True, "ok", CONFIRMED, None))

    def test_require_refuses_spoofed_ptr(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "bank.example")])
        self.resolver.add(dns.A, "bank.example", [a("bank.example", "192.0.2.1")])
        verdict = self.verdict(self.start(PeerCheckPolicy(fcrdns="require")))
        self.assertEqual((verdict.allowed, verdict.reason), (False, "fcrdns-mismatch"))

    def test_require_waits_no_longer_than_bound(self) -> None:
        self.resolver.add(dns.PTR, PTR1, HANG)
        run = self.start(PeerCheckPolicy(fcrdns="require", fcrdns_timeout=2.0))
        d = run.verdict()
        self.reactor.advance(1.99)
        self.assertNoResult(d)
        self.reactor.advance(0.01)
        verdict = self.successResultOf(d)
        self.assertEqual((verdict.allowed, verdict.reason), (False, "fcrdns-timeout"))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_deny_pattern_waits_in_log_mode(self) -> None:
        self.confirmed()
        policy = PeerCheckPolicy(fcrdns="log", fcrdns_deny=("*.example.com",))
        self.assertEqual(self.verdict(self.start(policy)).reason, "fcrdns-denied")

    def test_allow_pattern(self) -> None:
        self.confirmed()
        policy = PeerCheckPolicy(fcrdns="require", fcrdns_allow=("host.example.*",))
        self.assertTrue(self.verdict(self.start(policy)).allowed)

    def test_ipv6_peer(self) -> None:
        run = self.start(
            PeerCheckPolicy(fcrdns="require"),
            IPv6Address("TCP", "::1", 40000),
            IPv6Address("TCP", "::1", 7700),
        )
        self.assertEqual(self.verdict(run).reason, "fcrdns-no-ptr")
        self.assertTrue(self.resolver.calls[0][1].endswith(".ip6.arpa"))

    def test_each_access_is_a_new_deferred(self) -> None:
        self.confirmed()
        run = self.start(PeerCheckPolicy(fcrdns="log"))
        first = run.fcrdns
        first.addCallback(lambda _: "changed by a caller")
        self.assertEqual(self.successResultOf(run.fcrdns), CONFIRMED)
        self.assertEqual(self.verdict(run).fcrdns, CONFIRMED)

    def test_event_logged_with_escaped_names(self) -> None:
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, b"x\n2099 FAKE login ok\x1b[0m")])
        with capturedLogs() as events:
            self.start(PeerCheckPolicy(fcrdns="log"))
        [event] = [e for e in events if e.get("event") == "peer.fcrdns"]
        self.assertEqual(event["reason"], "bad-name")
        self.assertEqual(event["names_tried"], "x\\n2099 FAKE login ok\\x1b[0m")
        self.assertEqual(event["peer"], "127.0.0.1:40000")
        self.assertEqual(event["log_level"].name, "info")

    def test_reverse_zone_cannot_forge_words_in_the_line(self) -> None:
        """
        A PTR name the reverse zone chose with spaces and quotes (a fail2ban pattern's
        words) appears quoted in the rendered line, its quotes escaped: no pattern for a
        failed login matches, and no fake C{tried=}/C{confirmed=} token stands alone.
        """
        planted = b'x authentication failed for "root" from 10.9.9.9: unknown user'
        self.resolver.add(
            dns.PTR, PTR1, [ptr(PTR1, planted), ptr(PTR1, b"x name=ok.example confirmed=True")]
        )
        with capturedLogs() as events:
            self.start(PeerCheckPolicy(fcrdns="log"))
        [event] = [e for e in events if e.get("event") == "peer.fcrdns"]
        line = format_text(event)
        assert line is not None
        self.assertIsNone(re.search(r'authentication failed for "[^"]*" from 10\.9\.9\.9', line))
        self.assertIn('"x authentication failed for \\x22root\\x22 from 10.9.9.9', line)
        self.assertIn('"x name=ok.example confirmed=True"', line)
        self.assertEqual(line.count('"') % 2, 0, line)

    def test_shared_cache_used(self) -> None:
        self.confirmed()
        checks = PeerChecks(
            self.reactor, PeerCheckPolicy(fcrdns="require"), resolver=self.resolver
        )
        self.successResultOf(checks.start(PEER, LOCAL).verdict())
        calls = len(self.resolver.calls)
        self.assertTrue(self.successResultOf(checks.start(PEER, LOCAL).verdict()).allowed)
        self.assertEqual(len(self.resolver.calls), calls)
        self.assertIsInstance(checks.cache, FCrDNSCache)


class RunIdentTests(RunTestCase):
    def test_ident_query_from_local_address(self) -> None:
        self.start(PeerCheckPolicy(ident="log", ident_port=1113))
        host, port, _factory, _timeout, bind = self.reactor.tcpClients[0]
        self.assertEqual((host, port, bind), ("127.0.0.1", 1113, ("127.0.0.9", 0)))
        _protocol, transport = self.ident_connection()
        self.assertEqual(transport.value(), b"40000 , 7700\r\n")

    def test_verdict_never_waits_for_ident(self) -> None:
        run = self.start(PeerCheckPolicy(ident="log"))
        self.assertEqual(self.verdict(run), Verdict(True, "ok", None, None))
        self.assertNoResult(run.ident)

    def test_ident_claim_logged_escaped_and_unused(self) -> None:
        self.confirmed()
        policy = PeerCheckPolicy(fcrdns="require", ident="log")
        with capturedLogs() as events:
            run = self.start(policy)
            protocol, _transport = self.ident_connection()
            protocol.dataReceived(b"40000,7700:USERID:UNIX:root\x1b[2J\r\n")
        [event] = [e for e in events if e.get("event") == "peer.ident"]
        self.assertEqual(event["user"], "root\\x1b[2J")
        self.assertEqual((event["ok"], event["reason"], event["os"]), (True, "userid", "UNIX"))
        ident: IdentResult = self.successResultOf(run.ident)
        self.assertEqual(ident.reply.user, "root\x1b[2J")  # type: ignore[union-attr]
        verdict = self.verdict(run)
        self.assertEqual((verdict.allowed, verdict.reason, verdict.ident), (True, "ok", ident))

    def test_ident_os_token_quoted_in_the_line(self) -> None:
        """
        The identd's OS token (its own choice) is quoted in the message like the user.
        """
        with capturedLogs() as events:
            self.start(PeerCheckPolicy(ident="log"))
            protocol, _transport = self.ident_connection()
            protocol.dataReceived(b'40000,7700:USERID:OTHER"x=1:root\r\n')
        [event] = [e for e in events if e.get("event") == "peer.ident"]
        line = format_text(event)
        assert line is not None
        self.assertIn('os="OTHER\\x22x=1"', line)

    def test_both_start_at_once(self) -> None:
        self.resolver.add(dns.PTR, PTR1, HANG)
        self.start(PeerCheckPolicy(fcrdns="log", ident="log"))
        self.assertEqual(len(self.resolver.calls), 1)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_no_ident_without_ip_local_address(self) -> None:
        self.start(PeerCheckPolicy(ident="log"), PEER, None)
        self.assertEqual(self.reactor.tcpClients, [])

    def unsupported(self, peer: Any, local: Any) -> None:
        """
        No ident query can name the connection from C{peer} to C{local}: nothing is sent,
        the outcome is logged as C{unsupported-address}, and a required FCrDNS check still
        decides (here it fails: nothing answers).
        """
        self.resolver.add(dns.PTR, PTR1, [])
        policy = PeerCheckPolicy(fcrdns="require", ident="log")
        with capturedLogs() as events:
            run = self.start(policy, peer, local)
        self.assertEqual(self.reactor.tcpClients, [])
        ident: IdentResult = self.successResultOf(run.ident)
        self.assertEqual((ident.ok, ident.reason), (False, UNSUPPORTED_ADDRESS))
        [event] = [e for e in events if e.get("event") == "peer.ident"]
        self.assertEqual(event["reason"], UNSUPPORTED_ADDRESS)
        self.assertEqual(len(self.resolver.calls), 1)
        self.assertFalse(self.verdict(run).allowed)

    def test_port_zero_from_a_proxy_header(self) -> None:
        """
        HAProxy's C{set-src} sends port 0 when it cannot keep the source port.
        """
        self.unsupported(IPv4Address("TCP", "127.0.0.1", 0), LOCAL)

    def test_ipv4_peer_of_an_ipv6_address(self) -> None:
        """
        A PROXY v2 header with an IPv4-mapped source and a native IPv6 destination.
        """
        self.unsupported(
            IPv6Address("TCP", "::ffff:127.0.0.1", 40000), IPv6Address("TCP", "2001:db8::1", 7700)
        )

    def test_ipv4_peer_and_mapped_local_address(self) -> None:
        """
        Both sides IPv4, one written as an IPv4-mapped IPv6 address: the query goes over
        IPv4, from our address.
        """
        self.start(
            PeerCheckPolicy(ident="log", ident_port=1113),
            IPv6Address("TCP", "::ffff:127.0.0.1", 40000),
            IPv4Address("TCP", "127.0.0.9", 7700),
        )
        host, port, _factory, _timeout, bind = self.reactor.tcpClients[0]
        self.assertEqual((host, port, bind), ("127.0.0.1", 1113, ("127.0.0.9", 0)))


class CancelTests(RunTestCase):
    def test_cancel_stops_everything(self) -> None:
        self.resolver.add(dns.PTR, PTR1, HANG)
        run = self.start(PeerCheckPolicy(fcrdns="require", ident="log"))
        _protocol, transport = self.ident_connection()
        verdict = run.verdict()
        fcrdns = run.fcrdns
        run.cancel()
        self.assertEqual(self.successResultOf(verdict), Verdict(False, "cancelled"))
        self.assertIsNone(self.successResultOf(fcrdns))
        self.assertIsNone(self.successResultOf(run.ident))
        self.assertEqual(self.resolver.cancelled, [PTR1])
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_verdict_after_cancel(self) -> None:
        run = self.start(PeerCheckPolicy(fcrdns="log"))
        run.cancel()
        self.assertEqual(self.verdict(run).reason, "cancelled")

    def test_cancel_after_completion_keeps_results(self) -> None:
        self.confirmed()
        run = self.start(PeerCheckPolicy(fcrdns="require"))
        run.cancel()
        self.assertEqual(run.fcrdns_result, CONFIRMED)


PEER_B = IPv4Address("TCP", "127.0.0.1", 40001)
PEER_C = IPv4Address("TCP", "127.0.0.1", 40002)


class SharedCheckCancellationTests(RunTestCase):
    """
    Connections from one address checked through one L{PeerChecks} (one resolver, one
    cache): one connection going away never decides about the others.
    """

    def setUp(self) -> None:
        super().setUp()
        self.server = UnansweredResolver(self.reactor)
        self.checks = PeerChecks(
            self.reactor, PeerCheckPolicy(fcrdns="require"), resolver=self.server
        )

    def test_cancelled_connection_leaves_concurrent_one_to_its_own_timeout(self) -> None:
        """
        Two connections from one address while the DNS server never answers: the first
        closes (its run is cancelled); the second is not refused at once as
        C{fcrdns-server-failure} but waits, and is refused as C{fcrdns-timeout} when the
        query times out within its 5 s bound; a third connection 0.5 s after the
        cancellation gets no cached answer from it and waits the same way.
        """
        first = self.checks.start(PEER, LOCAL)
        second = self.checks.start(PEER_B, LOCAL)
        verdict = second.verdict()
        first.cancel()
        self.assertNoResult(verdict)
        self.reactor.advance(0.5)
        third = self.checks.start(PEER_C, LOCAL).verdict()
        self.assertNoResult(third)
        self.assertEqual(len(self.checks.cache), 0)
        self.assertEqual(self.server.cancelled, [])
        self.assertEqual(self.server.sent, [PTR1.encode("ascii")])
        self.reactor.advance(3.9)
        self.assertNoResult(verdict)
        self.reactor.advance(0.1)
        self.assertEqual(self.successResultOf(verdict).reason, "fcrdns-timeout")
        self.assertEqual(self.successResultOf(third).reason, "fcrdns-timeout")

    def test_given_resolver_wrapped_once(self) -> None:
        """
        A resolver given to L{PeerChecks} is wrapped in a L{SharingResolver}; one that is
        already one is used as it is.
        """
        self.assertIsInstance(self.checks.resolver(), SharingResolver)
        self.assertIs(self.checks.resolver().resolver, self.server)
        sharing = SharingResolver(self.server)
        again = PeerChecks(self.reactor, PeerCheckPolicy(fcrdns="log"), resolver=sharing)
        self.assertIs(again.resolver(), sharing)


REQUIRE = PeerCheckPolicy(fcrdns="require")


class StricterVerdictTests(RunTestCase):
    """
    A later decision under a stricter policy (a service requiring FCrDNS at C{OPEN}) reuses
    the connection's run: one check, one query, one log event.
    """

    def fcrdns_events(self, events: list[Any]) -> list[Any]:
        return [e for e in events if e.get("event") == "peer.fcrdns"]

    def test_log_mode_run_reused_under_require(self) -> None:
        """
        A run in C{"log"} mode answers a C{"require"} verdict from its own check, waiting
        for it if it is still running: one PTR query, one C{peer.fcrdns} event.
        """
        self.resolver.add(dns.PTR, PTR1, HANG)
        self.resolver.add(dns.A, "host.example.com", [a("host.example.com", "127.0.0.1")])
        with capturedLogs() as events:
            run = self.start(PeerCheckPolicy(fcrdns="log"))
            self.assertEqual(self.verdict(run).reason, "ok")
            strict = run.verdict(REQUIRE)
            self.assertNoResult(strict)
            self.resolver.hanging[PTR1].callback(([ptr(PTR1, "host.example.com")], [], []))
            self.assertEqual(self.successResultOf(strict), Verdict(True, "ok", CONFIRMED))
            again = self.successResultOf(run.verdict(REQUIRE))
        self.assertEqual(again, Verdict(True, "ok", CONFIRMED))
        self.assertEqual(self.resolver.names(dns.PTR), [PTR1])
        self.assertEqual(len(self.fcrdns_events(events)), 1)

    def test_require_verdict_refuses_from_log_mode_result(self) -> None:
        """
        The stricter policy decides on the same result: a spoofed PTR passes C{"log"} and
        is refused under C{"require"}.
        """
        self.resolver.add(dns.PTR, PTR1, [ptr(PTR1, "bank.example")])
        run = self.start(PeerCheckPolicy(fcrdns="log"))
        self.assertEqual(self.verdict(run).reason, "ok")
        verdict = self.successResultOf(run.verdict(REQUIRE))
        self.assertEqual((verdict.allowed, verdict.reason), (False, "fcrdns-mismatch"))

    def test_fcrdns_started_late_once(self) -> None:
        """
        A run without FCrDNS (C{"off"}, ident only) starts it at the first stricter
        decision, with the resolver and cache of the L{PeerChecks} given, and never again.
        """
        self.confirmed()
        checks = PeerChecks(self.reactor, REQUIRE, resolver=self.resolver)
        with capturedLogs() as events:
            run = self.start(PeerCheckPolicy(ident="log"))
            self.assertFalse(run.fcrdns_started)
            self.assertEqual(self.resolver.calls, [])
            run.start_fcrdns(checks)
            run.start_fcrdns(checks)
            self.assertTrue(run.fcrdns_started)
            first = self.successResultOf(run.verdict(REQUIRE))
            second = self.successResultOf(run.verdict(REQUIRE))
        self.assertEqual((first.allowed, second.allowed), (True, True))
        self.assertEqual(self.resolver.names(dns.PTR), [PTR1])
        self.assertEqual(len(self.fcrdns_events(events)), 1)
        self.assertEqual(checks.cache.get("127.0.0.1"), CONFIRMED)

    def test_require_verdict_without_fcrdns_is_refused(self) -> None:
        """
        A stricter verdict asked of a run that does not check FCrDNS refuses (never
        allows by default).
        """
        run = self.start(PeerCheckPolicy(ident="log"))
        verdict = self.successResultOf(run.verdict(REQUIRE))
        self.assertEqual((verdict.allowed, verdict.reason), (False, "unsupported-address"))

    def test_late_fcrdns_cancelled_with_the_run(self) -> None:
        """
        A check started late is stopped by the run's C{cancel}: the pending verdict is
        C{"cancelled"} and the lookup is cancelled.
        """
        self.resolver.add(dns.PTR, PTR1, HANG)
        run = self.start(PeerCheckPolicy())
        run.start_fcrdns(PeerChecks(self.reactor, REQUIRE, resolver=self.resolver))
        verdict = run.verdict(REQUIRE)
        run.cancel()
        self.assertEqual(self.successResultOf(verdict).reason, "cancelled")
        self.assertEqual(self.resolver.cancelled, [PTR1])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_no_late_fcrdns_after_cancel(self) -> None:
        """
        A cancelled run starts nothing.
        """
        run = self.start(PeerCheckPolicy())
        run.cancel()
        run.start_fcrdns(PeerChecks(self.reactor, REQUIRE, resolver=self.resolver))
        self.assertFalse(run.fcrdns_started)
        self.assertEqual(self.resolver.calls, [])
        self.assertEqual(self.successResultOf(run.verdict(REQUIRE)).reason, "cancelled")

    def test_unix_peer_needs_no_late_fcrdns(self) -> None:
        """
        A unix-socket peer is local under any policy; nothing is looked up.
        """
        run = self.start(PeerCheckPolicy(), UNIXAddress(b"/run/x.sock"), None)
        run.start_fcrdns(PeerChecks(self.reactor, REQUIRE, resolver=self.resolver))
        self.assertEqual(self.successResultOf(run.verdict(REQUIRE)), Verdict(True, "local"))
        self.assertEqual(self.resolver.calls, [])

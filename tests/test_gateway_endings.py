"""
Tests for how the gateway ends connections admission let in and what that costs: evictions
and probation ends on TLS (aborted before the handshake finished, a short linger after),
refusals on TLS listeners (a silent close, no timer), the log of a flood (no line per
connection that never sent a valid command), probation without peer checks or greeting
timer, progress only for a well-formed C{AUTH}, no SCRAM step for an evicted connection,
and a late C{RESUME} with tickets off. The real L{GatewayFactory} on Twisted fakes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import INegotiated, ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from netguard.admission import Admission, AdmissionPolicy, Refusal
from netguard.admitting import Admitted, AdmittingFactory, _Ending, _Refusal
from netguard.auth.scram import ClientExchange
from netguard.gateway.returning import ENDED_LINGER
from netguard.peer.checks import Verdict
from netguard.tickets import TicketSettings
from tests.test_gateway_tickets import Conn, Gateway, b64


@implementer(INegotiated, ISSLTransport)
class HandshakingTransport(StringTransport):
    """
    A transport that stands for a TLS connection (as Twisted's TLS layer provides it)
    whose handshake has not finished: aborts are recorded.
    """

    negotiatedProtocol = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True

    def getPeerCertificate(self) -> None:
        return None


class TLSConn(Conn):
    """
    A gateway connection on a L{HandshakingTransport}.
    """

    transport_class = HandshakingTransport


def small_pool(size: int = 1) -> AdmissionPolicy:
    return AdmissionPolicy(
        max_unauthenticated=size,
        red_soft=size,
        red_hard=size,
        per_source_rate=1000.0,
        per_source_burst=1000,
    )


class EvictionOnTLSTests(unittest.TestCase):
    def test_evicted_during_the_tls_handshake_is_aborted_at_once(self):
        """
        A TLS connection evicted before its handshake finished is aborted at once: no
        reply line (it could only wait for the handshake the peer controls), no abort
        timer left behind, no offence; the eviction is counted as a refusal.
        """
        g = Gateway(self, admission=small_pool())
        tls = TLSConn(g, "192.0.2.1")
        g.connect("198.51.100.1")  # the newcomer evicts it
        self.assertTrue(tls.transport.aborted)
        self.assertEqual(tls.transport.value(), b"")
        self.assertEqual(tls.proto._timers, {})
        self.assertEqual(g.penalties(), [])
        self.assertEqual(g.factory.stats.counters["refused.evicted"], 1)

    def test_probation_end_during_the_tls_handshake_is_aborted_at_once(self):
        """
        A TLS connection on probation whose probation ends before its handshake finished
        is aborted at once, without a line.
        """
        g = Gateway(self)
        g.admission.set_overload("overload-lag")
        tls = TLSConn(g, "192.0.2.1")
        self.assertIsNotNone(tls.proto.admitted.probation)
        g.clock.advance(1.0)
        self.assertTrue(tls.transport.aborted)
        self.assertEqual(tls.transport.value(), b"")

    def test_evicted_after_the_handshake_lingers_only_briefly(self):
        """
        After its handshake an evicted TLS connection is answered C{ERR BUSY evicted} and
        closed; a peer that does not take the line is aborted L{ENDED_LINGER} (2 s) later,
        not after C{write_timeout} (one tick before it: not yet).
        """
        g = Gateway(self, admission=small_pool())
        tls = TLSConn(g, "192.0.2.1")
        tls.proto.handshakeCompleted()
        g.clock.advance(0.1)
        tls.take()  # the greeting
        tls.transport.loseConnection = lambda: None  # type: ignore[method-assign]
        g.connect("198.51.100.1")
        self.assertEqual(tls.take(), [b"ERR BUSY evicted"])
        self.assertFalse(tls.transport.aborted)
        self.assertEqual(ENDED_LINGER, 2.0)
        g.clock.advance(ENDED_LINGER - 0.001)
        self.assertFalse(tls.transport.aborted)
        g.clock.advance(0.001)
        self.assertTrue(tls.transport.aborted)

    def test_evicted_plain_connection_lingers_only_briefly(self):
        """
        A plain connection that admission ended holds no slot either: a peer that does not
        read its C{ERR BUSY evicted} is aborted after L{ENDED_LINGER}.
        """
        g = Gateway(self, admission=small_pool())
        plain = g.connect("192.0.2.1", greet=True)
        aborted: list[bool] = []
        plain.transport.loseConnection = lambda: None  # type: ignore[method-assign]
        plain.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        g.connect("198.51.100.1")
        self.assertEqual(plain.take(), [b"ERR BUSY evicted"])
        g.clock.advance(ENDED_LINGER - 0.001)
        self.assertEqual(aborted, [])
        g.clock.advance(0.001)
        self.assertEqual(aborted, [True])


class RefusalOnTLSTests(unittest.TestCase):
    def test_refusal_on_tls_is_a_silent_abort_without_timer(self):
        """
        A refused connection on a TLS transport is aborted at once: nothing written (no
        handshake run to deliver C{ERR BUSY}), no timer scheduled.
        """
        clock = Clock()
        refusal = _Refusal(b"ERR BUSY per-source-cap", clock, 30.0)
        transport = HandshakingTransport()
        refusal.makeConnection(transport)
        self.assertTrue(transport.aborted)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_refusal_on_a_wrapper_still_writes_the_line(self):
        """
        On a non-TLS wrapper (a PROXY-header listener) the line is written and the close
        bounded by the write timeout, as before.
        """
        clock = Clock()
        refusal = _Refusal(b"ERR BUSY per-source-cap", clock, 30.0)
        transport = StringTransport()
        refusal.makeConnection(transport)
        self.assertEqual(transport.value(), b"ERR BUSY per-source-cap\r\n")
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_default_ending_aborts_tls_and_writes_to_others(self):
        """
        The default ending of an admission-aware protocol aborts a TLS connection at once,
        without a line; any other gets its line and a close.
        """
        clock = Clock()
        admission = Admission(AdmissionPolicy(), clock)
        factory = AdmittingFactory(_Aware(), admission, clock=clock)
        for transport, aborted_at_once in ((HandshakingTransport(), True), (_Plain(), False)):
            protocol = _Holder()
            protocol.transport = transport
            _Ending(factory, None, protocol)("evicted")
            self.assertEqual(transport.aborted, aborted_at_once)
            if not aborted_at_once:
                self.assertEqual(transport.value(), b"ERR BUSY evicted\r\n")
                self.assertTrue(transport.disconnecting)


class _Plain(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class _Holder:
    transport: Any = None


class _Aware:
    def build_admitted(self, addr: Any, admitted: Admitted) -> Any:
        return None

    def refused(self, addr: Any, refusal: Refusal) -> dict[str, object]:
        return {}

    def buildProtocol(self, addr: Any) -> Any:
        return None

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


class FloodLogTests(unittest.TestCase):
    def test_flood_of_admitted_then_ended_connections_logs_a_bounded_number_of_lines(self):
        """
        A connect flood from one source into a full pool: its first connection evicts an
        idle one of another source, the other 29 are admitted on probation and ended when
        it is over, none having sent a command. No C{conn.accept}, no C{conn.close}, no
        line per connection: C{conn.reject} (C{ended}) for the first 3 of the flood's
        source and reason and for the one evicted, then one C{conn.reject.summary} with the
        other 26.
        """
        g = Gateway(self, admission=small_pool(4))
        idle = [g.connect(f"198.51.100.{index}", greet=True) for index in range(1, 5)]
        flood = [g.connect("192.0.2.1") for _ in range(30)]
        g.clock.advance(1.0)  # probation over
        for conn in idle + flood:
            if conn.transport.disconnecting and conn.proto.state.value != "closed":
                conn.proto.connectionLost(None)
        self.assertEqual(sum(c.proto.state.value == "closed" for c in flood), 29)
        g.clock.advance(10)
        events = Counter(e.get("event") for e in g.events)
        self.assertEqual((events["conn.accept"], events["conn.close"]), (0, 0))
        per_source = Counter(
            (e["peer"].rsplit(":", 1)[0], e["reason"]) for e in g.named("conn.reject")
        )
        self.assertEqual(per_source[("192.0.2.1", "unauth-cap")], 3)
        self.assertEqual(sum(per_source.values()), 4)  # and one idle connection evicted
        [summary] = g.named("conn.reject.summary")
        self.assertEqual(
            (summary["source"], summary["reason"], summary["count"]),
            ("192.0.2.1/32", "unauth-cap", 26),
        )

    def test_unserved_closes_aggregated_and_served_ones_logged(self):
        """
        Connections that close before any valid command are logged as C{conn.close} only
        for the first 3 of their source and ending, the rest summarised; a connection that
        sent one logs C{conn.accept} (at that command, with its accept time) and its
        C{conn.close}.
        """
        g = Gateway(self)
        for conn in [g.connect(greet=True) for _ in range(5)]:  # each hangs up, silent
            conn.proto.closed_by = "client"
            conn.proto.connectionLost(None)
        self.assertEqual(len(g.named("conn.close")), 3)
        self.assertEqual(g.named("conn.accept"), [])
        served = g.connect(greet=True)
        served.send(b"PING")
        [accept] = g.named("conn.accept")
        self.assertEqual(accept["accepted_at"], g.clock.seconds() - 0.1)
        served.close()
        self.assertEqual(len(g.named("conn.close")), 4)
        g.clock.advance(10)
        [summary] = g.named("conn.reject.summary")
        self.assertEqual(
            (summary["of"], summary["reason"], summary["count"]), ("conn.close", "client", 2)
        )

    def test_tls_handshake_failures_aggregated(self):
        """
        Failed TLS handshakes log C{tls.handshake_failed} for the first 3 of a source in an
        interval, the rest in one summary.
        """
        g = Gateway(self)
        for _ in range(5):
            TLSConn(g, "192.0.2.1").proto.connectionLost(None)
        self.assertEqual(len(g.named("tls.handshake_failed")), 3)
        g.clock.advance(10)
        [summary] = [
            e for e in g.named("conn.reject.summary") if e["of"] == "tls.handshake_failed"
        ]
        self.assertEqual((summary["of"], summary["count"]), ("tls.handshake_failed", 2))


class _PendingRun:
    """
    A peer-check run whose verdict the test gives.
    """

    def __init__(self) -> None:
        self.verdicts: list[Deferred[Verdict]] = []
        self.cancelled = False

    def verdict(self, policy: Any = None) -> Deferred[Verdict]:
        d: Deferred[Verdict] = Deferred()
        self.verdicts.append(d)
        return d

    def cancel(self) -> None:
        self.cancelled = True


class ProbationCostTests(unittest.TestCase):
    def test_probation_starts_no_peer_checks_and_no_greeting_timer(self):
        """
        A connection on probation starts no peer checks and arms no greeting timer: its
        only timers are the framing deadline (shared by handshake and idle).
        """
        g = Gateway(self)
        started: list[Any] = []
        g.factory.start_peer_checks = lambda peer, local: started.append(peer)  # type: ignore[method-assign]
        g.admission.set_overload("overload-lag")
        g.connect("192.0.2.99")  # the pool's one timer is armed by the first
        before = len(g.clock.getDelayedCalls())
        conn = g.connect()
        self.assertIsNotNone(conn.admitted.probation)
        self.assertEqual(conn.proto._timers, {})
        self.assertEqual(len(g.clock.getDelayedCalls()) - before, 1)  # the deadline
        self.assertEqual(started, [])

    def test_peer_checks_start_with_the_greeting(self):
        """
        Peer checks start when the connection is greeted (not at connect): an early talker
        refused before the greeting costs none; a lane connection's start at its greeting.
        """
        g = Gateway(self)
        started: list[Any] = []
        g.factory.start_peer_checks = lambda peer, local: started.append(peer)  # type: ignore[method-assign]
        talker = g.connect("192.0.2.1")
        talker.send(b"HELLO")
        g.connect()
        self.assertEqual(started, [])
        g.clock.advance(0.1)
        self.assertEqual(len(started), 1)
        token = g.ticket("192.0.2.20")
        g.admission.set_overload("overload-lag")
        lane = g.connect("192.0.2.20")
        self.assertEqual(len(started), 2)  # the ticket's own login
        lane.send(b"RESUME " + token)
        self.assertEqual(len(started), 3)

    def test_probation_counts_as_a_connection_only_in_the_lane(self):
        """
        C{connections} counts a connection on probation only when a ticket takes it into
        the lane; one whose probation ends is counted only as the refusal it stands for.
        """
        g = Gateway(self)
        token = g.ticket()
        counted = g.factory.stats.counters["connections"]
        g.admission.set_overload("overload-lag")
        lane = g.connect()
        shed = g.connect("192.0.2.30")
        self.assertEqual(g.factory.stats.counters["connections"], counted)
        lane.send(b"RESUME " + token)
        self.assertEqual(g.factory.stats.counters["connections"], counted + 1)
        g.clock.advance(1.0)
        self.assertTrue(shed.transport.disconnecting)
        self.assertEqual(g.factory.stats.counters["connections"], counted + 1)
        self.assertEqual(g.factory.stats.counters["refused.overload-lag"], 1)


class ProgressTests(unittest.TestCase):
    def spy(self) -> list[Admitted]:
        calls: list[Admitted] = []
        original = Admitted.progress

        def spy(admitted: Admitted) -> None:
            calls.append(admitted)
            original(admitted)

        self.patch(Admitted, "progress", spy)
        return calls

    def test_malformed_auth_is_not_progress(self):
        """
        C{AUTH} with a mechanism not offered, or an argument that is not base64, is no
        progress (a cheap line must not rank a connection as useful).
        """
        calls = self.spy()
        g = Gateway(self)
        conn = g.connect(greet=True)
        conn.send(b"AUTH X y")
        conn.send(b"AUTH SCRAM-SHA-256 !!!!")
        self.assertEqual(calls, [])

    def test_well_formed_auth_waiting_for_peer_checks_is_progress(self):
        """
        A well-formed C{AUTH} is progress at once, even while it waits for the peer checks.
        """
        calls = self.spy()
        g = Gateway(self)
        run = _PendingRun()
        g.factory.start_peer_checks = lambda peer, local: run  # type: ignore[method-assign]
        conn = g.connect(greet=True)
        client = ClientExchange("alice", "x")
        self.assertEqual(conn.send(b"AUTH SCRAM-SHA-256 " + b64(client.first())), [])
        self.assertEqual(len(calls), 1)

    def test_evicted_during_peer_checks_runs_no_scram_step(self):
        """
        A connection evicted while its C{AUTH} waits for the peer checks gets
        C{ERR BUSY evicted} and nothing more: when the verdict comes, no SCRAM step runs
        and no C{CONT} follows.
        """
        g = Gateway(self, admission=small_pool())
        run = _PendingRun()
        g.factory.start_peer_checks = lambda peer, local: run  # type: ignore[method-assign]
        conn = g.connect("192.0.2.1", greet=True)
        client = ClientExchange("alice", "x")
        conn.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
        g.connect("198.51.100.1")
        self.assertEqual(conn.take(), [b"ERR BUSY evicted"])
        run.verdicts[0].callback(Verdict(True, "ok"))
        self.assertEqual(conn.take(), [])
        self.assertIsNone(conn.proto._exchange)


class LateResumeTests(unittest.TestCase):
    def test_late_resume_with_tickets_off_is_bad_sequence_without_offence(self):
        """
        With tickets off, C{RESUME <ticket>} after the greeting (an honest client with
        C{greeting_delay = 0} after tickets were turned off) is C{ERR BAD_SEQUENCE}, no
        offence, and the log shows C{RESUME <ticket>}, never the token.
        """
        g = Gateway(self, TicketSettings(enabled=False))
        conn = g.connect(greet=True)
        token = b"Q" * 80
        self.assertEqual(
            conn.send(b"RESUME " + token), [b"ERR BAD_SEQUENCE command not allowed now"]
        )
        self.assertEqual(g.penalties(), [])
        self.assertNotIn(token.decode(), repr(g.events))
        [refused] = g.named("proto.refuse")
        self.assertEqual(refused["offending"], "RESUME <ticket>")

    def test_malformed_resume_not_logged_with_its_token(self):
        """
        A C{RESUME} line with the wrong number of words is refused as bad syntax, and the
        log shows C{RESUME <ticket>}, not its words.
        """
        g = Gateway(self)
        conn = g.connect(greet=True)
        conn.send(b"RESUME secretpart morepart")
        self.assertNotIn("secretpart", repr(g.events))

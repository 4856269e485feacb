"""
Tests for L{netguard.gateway.standing} and its use by the NGP/1 session and its streams: no
password is tried from a source admission blocks (on connections already open too), no log
line per connection in a flood from rotating sources, no ticket in the log, and nothing new
opened for a user removed from the users file.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from netguard.admission import AdmissionPolicy
from netguard.auth.scram import ClientExchange
from netguard.auth.users import UserStore, make_record
from tests.test_gateway_streams import Mux
from tests.test_gateway_tickets import HOME, PASSWORD, Conn, Gateway, b64, unb64

#: The events a hostile client can make a connection log before it authenticates.
_FLOOD_EVENTS = (
    "proto.early_talker",
    "proto.refuse",
    "admission.block",
    "conn.close",
    "conn.timeout",
    "ticket.other_block",
    "proto.errors",
)


def guess(conn: Conn, password: str = "a wrong guess") -> list[bytes]:
    """
    One whole SCRAM login of alice with C{password} on C{conn}: the replies to C{AUTH} and
    (when it got C{CONT}) to C{CONT}.
    """
    client = ClientExchange("alice", password)
    replies = conn.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
    if len(replies) != 1 or not replies[0].startswith(b"CONT "):
        return replies
    return replies + conn.send(b"CONT " + b64(client.final(unb64(replies[0][5:]))))


def blocking_gateway(test: unittest.TestCase, threshold: int = 2) -> Gateway:
    """
    A gateway whose sources are blocked after C{threshold} failed logins (each connection
    may try 3).
    """
    return Gateway(test, admission=AdmissionPolicy(penalty_threshold=threshold))


class BlockedSourceGuessingTests(unittest.TestCase):
    """
    Once a source's block starts, no login step from it is answered with a verdict, on the
    connection that earned the block or on any other it still holds.
    """

    def test_failure_before_the_block_is_answered(self):
        """
        One past nothing: a failed login below the threshold is answered C{AUTH_FAILED} and
        the connection stays for another try.
        """
        g = blocking_gateway(self)
        conn = g.connect(greet=True)
        replies = guess(conn)
        self.assertEqual(replies[-1], b"ERR AUTH_FAILED authentication failed")
        self.assertFalse(conn.transport.disconnecting)
        self.assertIsNone(g.admission.blocked_for(conn.admitted.address))

    def test_offence_that_starts_the_block_closes_its_connection(self):
        """
        The failed login that starts the block (the second, threshold 2) is answered
        C{ERR BUSY penalised}, not C{AUTH_FAILED}, and its connection is closed, though it
        had a try left.
        """
        g = blocking_gateway(self)
        conn = g.connect(greet=True)
        guess(conn)
        replies = guess(conn)
        self.assertEqual(replies[-1], b"ERR BUSY penalised")
        self.assertTrue(conn.transport.disconnecting)
        self.assertIsNotNone(g.admission.blocked_for(conn.admitted.address))
        self.assertEqual(len(g.named("auth.fail")), 2)

    def test_next_auth_on_another_open_connection_is_refused_without_offence(self):
        """
        An C{AUTH} on another connection of the blocked source, greeted before the block, is
        answered C{ERR BUSY penalised} and closed; no SCRAM step runs, no attempt is logged,
        and it is no new offence (the source's offences stay 2).
        """
        g = blocking_gateway(self)
        first, other = g.connect(greet=True), g.connect(greet=True)
        guess(first)
        guess(first)
        replies = guess(other)
        self.assertEqual(replies, [b"ERR BUSY penalised"])
        self.assertTrue(other.transport.disconnecting)
        self.assertEqual(len(g.named("auth.fail")), 2)
        [(_, blocked, offences)] = g.penalties()
        self.assertEqual(offences, 2)
        self.assertGreater(blocked, 0)

    def test_cont_with_the_right_password_is_refused_once_blocked(self):
        """
        A connection that got C{CONT} before its source was blocked gets no verdict for its
        C{CONT} after, even with the right password: C{ERR BUSY penalised}, closed, no
        login.
        """
        g = blocking_gateway(self)
        first, other = g.connect(greet=True), g.connect(greet=True)
        client = ClientExchange("alice", PASSWORD)
        [cont] = other.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
        guess(first)
        guess(first)
        replies = other.send(b"CONT " + b64(client.final(unb64(cont[5:]))))
        self.assertEqual(replies, [b"ERR BUSY penalised"])
        self.assertTrue(other.transport.disconnecting)
        self.assertEqual(g.named("auth.ok"), [])

    def test_other_sources_still_log_in(self):
        """
        The block is the source's: a connection from another address logs in as usual, and
        a connection of the blocked source may still C{PING}.
        """
        g = blocking_gateway(self)
        first, other = g.connect(greet=True), g.connect(greet=True)
        guess(first)
        guess(first)
        self.assertEqual(other.send(b"PING"), [b"PONG"])
        elsewhere = g.connect(host="198.51.100.9", greet=True)
        elsewhere.login()
        self.assertEqual(len(g.named("auth.ok")), 1)

    def test_guesses_over_many_open_connections(self):
        """
        The reviewer's script on fakes: twenty connections greeted, then three wrong logins
        on each in turn. Only the guesses up to the one that starts the block (threshold 3,
        the first connection's last try, which ends it anyway) are answered
        C{AUTH_FAILED}; every other connection's first C{AUTH} is C{ERR BUSY penalised}.
        """
        g = blocking_gateway(self, threshold=3)
        conns = [g.connect(greet=True) for _ in range(20)]
        answers: Counter[bytes] = Counter()
        for conn in conns:
            for _ in range(3):
                replies = guess(conn)
                answers[replies[-1]] += 1
                if conn.transport.disconnecting:
                    break
        self.assertEqual(answers[b"ERR AUTH_FAILED authentication failed"], 3)
        self.assertEqual(answers[b"ERR BUSY penalised"], 19)
        self.assertEqual(len(g.named("auth.fail")), 3)


class FloodLogTests(unittest.TestCase):
    """
    A flood of hostile connections from rotating sources logs a bounded number of lines, and
    the summaries count every event not logged one by one.
    """

    def flood_lines(self, g: Gateway, count: int, make: Any) -> Counter[str]:
        for i in range(count):
            conn = g.connect(host=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
            make(conn)
            conn.close()
        return Counter(e["event"] for e in g.events if e.get("event") in _FLOOD_EVENTS)

    def unlogged(self, g: Gateway) -> Counter[str]:
        counts: Counter[str] = Counter()
        for summary in g.named("conn.reject.summary"):
            counts[summary["of"]] += summary["count"]
        return counts

    def test_rotating_early_talkers(self):
        """
        300 early talkers, each from its own address, with at most 60 lines one by one per
        interval: the log has at most 60 of the per-connection events before the interval
        ends, and with the summaries every early talk, refusal, block and close is counted
        once.
        """
        g = Gateway(self)
        g.factory.refusal_log.max_logged = 60
        lines = self.flood_lines(g, 300, lambda conn: conn.raw(b"GET / HTTP/1.0\r\n"))
        self.assertEqual(sum(lines.values()), 60)
        g.clock.advance(10)
        unlogged = self.unlogged(g)
        for event in ("proto.early_talker", "proto.refuse", "admission.block", "conn.close"):
            self.assertEqual(lines[event] + unlogged[event], 300, event)
        self.assertLessEqual(len(g.named("conn.reject.summary")), 300 * 4 - 60 + 4)

    def test_one_source_logs_three_of_each(self):
        """
        Per source: of ten early talkers from one address (its block lifted in between) in
        an interval, three of each event are logged, the other seven summarised.
        """
        g = Gateway(self)

        def talk(conn: Conn) -> None:
            conn.raw(b"x\r\n")
            g.admission.clear_penalties(None)

        for _ in range(10):
            conn = g.connect(host="192.0.2.99")
            talk(conn)
            conn.close()
        talkers = g.named("proto.early_talker")
        self.assertEqual(len(talkers), 3)
        g.clock.advance(10)
        [summary] = [s for s in g.named("conn.reject.summary") if s["of"] == "proto.early_talker"]
        self.assertEqual((summary["source"], summary["count"]), ("192.0.2.99/32", 7))

    def test_rotating_handshake_timeouts(self):
        """
        Connections from rotating sources that are greeted and never log in: their
        C{conn.timeout} (handshake deadline) and C{proto.refuse TIMEOUT} lines are bounded
        and counted too.
        """
        g = Gateway(self)
        g.factory.refusal_log.max_logged = 10
        conns = [g.connect(host=f"10.1.0.{i}", greet=True) for i in range(50)]
        g.clock.advance(60)
        for conn in conns:
            conn.close()
        lines = Counter(e["event"] for e in g.events if e.get("event") in _FLOOD_EVENTS)
        self.assertEqual(sum(lines.values()), 10)
        g.clock.advance(10)
        unlogged = self.unlogged(g)
        self.assertEqual(lines["conn.timeout"] + unlogged["conn.timeout"], 50)

    def test_stolen_ticket_from_other_blocks(self):
        """
        A ticket presented from another address block by 200 rotating sources: at most the
        cap of C{ticket.other_block} lines, the rest counted in the summaries.
        """
        g = Gateway(self)
        token = g.ticket()
        g.factory.refusal_log.max_logged = 20
        for i in range(200):
            conn = g.connect(host=f"203.0.{i // 256}.{i % 256}")
            conn.raw(b"RESUME " + token + b"\r\n")
            conn.close()
        other = g.named("ticket.other_block")
        self.assertLessEqual(len(other), 20)
        g.clock.advance(10)
        self.assertEqual(len(other) + self.unlogged(g)["ticket.other_block"], 200)

    def test_rotating_failed_logins(self):
        """
        200 connections from rotating sources, each with three failed logins (a bad
        client-first message): at most the cap of C{auth.fail} lines, the summaries count
        the rest, and the counter counts every one.
        """
        g = Gateway(self)
        g.factory.refusal_log.max_logged = 30
        log_clock = g.factory.refusal_log.clock = Clock()  # one interval, however long

        def fail(conn: Conn) -> None:
            g.clock.advance(1)
            for _ in range(3):
                conn.send(b"AUTH SCRAM-SHA-256 " + b64("garbage"))

        self.flood_lines(g, 200, fail)
        fails = g.named("auth.fail")
        self.assertLessEqual(len(fails), 30)
        log_clock.advance(10)
        self.assertEqual(len(fails) + self.unlogged(g)["auth.fail"], 600)
        self.assertEqual(g.factory.stats.counters["auth_fail"], 600)

    def test_rotating_peer_check_refusals(self):
        """
        Connections from rotating sources that the peer checks refuse: at most the cap of
        C{peer.refused} lines, the summaries count the rest.
        """
        from twisted.internet.defer import succeed

        from netguard.peer.checks import Verdict

        class Refusing:
            def verdict(self, policy: object = None) -> Any:
                return succeed(Verdict(False, "fcrdns-mismatch"))

            def cancel(self) -> None:
                pass

        g = Gateway(self)
        g.factory.start_peer_checks = lambda peer, local: Refusing()
        g.factory.refusal_log.max_logged = 10
        log_clock = g.factory.refusal_log.clock = Clock()  # one interval, however long

        def auth(conn: Conn) -> None:
            g.clock.advance(1)
            client = ClientExchange("alice", PASSWORD)
            replies = conn.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
            assert replies[-1] == b"ERR NOT_AUTHORIZED peer checks failed", replies

        self.flood_lines(g, 50, auth)
        refused = g.named("peer.refused")
        self.assertLessEqual(len(refused), 10)
        log_clock.advance(10)
        self.assertEqual(len(refused) + self.unlogged(g)["peer.refused"], 50)

    def test_authenticated_refusals_are_each_logged(self):
        """
        After login, refusals are the user's and are not aggregated: four C{OPEN nope} on
        one connection from one source give the first in full (later ones by the
        connection's own error summary), independent of the refusal log's state.
        """
        g = Gateway(self)
        g.factory.refusal_log.max_logged = 0
        conn = g.connect(greet=True)
        conn.login()
        conn.send(b"OPEN nope")
        [refused] = g.named("proto.refuse")
        self.assertEqual(refused["code"], "NO_SUCH_SERVICE")


class TicketNeverLoggedTests(unittest.TestCase):
    """
    A C{RESUME} ticket is replaced by C{<ticket>} wherever the log shows a client's bytes.
    """

    def early(self, data: bytes) -> tuple[Gateway, bytes, list[dict[str, Any]]]:
        g = Gateway(self)
        token = g.ticket()
        conn = g.connect(host="192.0.2.71")
        conn.raw(data.replace(b"TOKEN", token))
        g.clock.advance(1)  # a line not finished when the greeting is due is early talk
        return g, token, g.events

    def test_leading_blank_line(self):
        """
        The reviewer's input: C{\\r\\nRESUME <token>\\r\\n} is early talk, logged as
        C{\\r\\nRESUME <ticket>\\r\\n} in both C{proto.early_talker} and C{proto.refuse}.
        """
        g, token, events = self.early(b"\r\nRESUME TOKEN\r\n")
        [talk] = g.named("proto.early_talker")
        self.assertEqual(talk["offending"], "\\r\\nRESUME <ticket>\\r\\n")
        [refused] = g.named("proto.refuse")
        self.assertEqual(refused["offending"], "\\r\\nRESUME <ticket>\\r\\n")
        self.assertNotIn(token.decode(), repr(events))

    def test_second_of_two_resume_lines(self):
        """
        The reviewer's input: two C{RESUME} lines, the real ticket second: neither ticket
        is logged, not even the first 98 characters of the second.
        """
        g, token, events = self.early(b"RESUME AAAAAAAAAAAAAAAA\r\nRESUME TOKEN\r\n")
        [talk] = g.named("proto.early_talker")
        self.assertEqual(talk["offending"], "RESUME <ticket>\\r\\nRESUME <ticket>\\r\\n")
        self.assertNotIn(token.decode()[:16], repr(events))

    def test_ticket_cut_by_the_excerpt(self):
        """
        A ticket cut short by the excerpt's end (100 bytes of junk before it on an
        unfinished line, the excerpt 120) leaves no fragment in the log.
        """
        g, token, events = self.early(b"x" * 100 + b" resume TOKEN")
        [talk] = g.named("proto.early_talker")
        self.assertEqual(talk["offending"], "x" * 100 + " resume <ticket>")
        self.assertNotIn(token.decode()[:8], repr(events))

    def test_after_the_greeting_in_every_state(self):
        """
        A C{RESUME} line after the greeting is refused in the ready, auth-continue and
        authenticated states, and never logged with its ticket (nor one split by a
        non-printable byte, nor in a line too long).
        """
        g = Gateway(self)
        token = g.ticket()
        conn = g.connect(greet=True)
        conn.send(b"RESUME " + token)
        conn.send(b"resume\x00" + token)
        client = ClientExchange("alice", PASSWORD)
        conn.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
        conn.send(b"RESUME " + token)
        other = g.connect(host="192.0.2.11", greet=True)
        other.login()
        other.send(b"RESUME " + token + b" extra")
        longer = g.connect(host="192.0.2.12", greet=True)
        longer.send(b"RESUME " + token * 20)
        self.assertEqual(longer.proto.closed_by, "server")
        self.assertGreaterEqual(len(g.named("proto.refuse")), 4)
        self.assertNotIn(token.decode()[:12], repr(g.events))

    def test_byte_budget_crossed_inside_a_ticket(self):
        """
        A C{RESUME} line after the greeting that crosses the byte budget before login in the
        middle of its ticket: the C{TOO_MUCH_DATA} excerpt starts at the line's start, so
        its ticket is hidden (not the rest of the ticket past the budget).
        """
        import attrs

        g = Gateway(self)
        token = g.ticket()
        conn = g.connect(host="192.0.2.13", greet=True)
        conn.proto.limits = attrs.evolve(conn.proto.limits, max_bytes_before_auth=40)
        replies = conn.raw(b"PING\r\nRESUME " + token + b"\r\n")
        self.assertEqual(
            replies, [b"PONG", b"ERR TOO_MUCH_DATA too much data before authentication"]
        )
        [refused] = [e for e in g.named("proto.refuse") if e["code"] == "TOO_MUCH_DATA"]
        self.assertEqual(refused["offending"], "RESUME <ticket>")
        self.assertNotIn(token.decode()[30:40], repr(g.events))

    def test_byte_budget_crossed_inside_a_ticket_begun_in_an_earlier_read(self):
        """
        The same when the C{RESUME} line began in an earlier read than the one that crosses
        the budget: the excerpt starts where the line does (in what the line splitter
        held), so the ticket is hidden there too.
        """
        import attrs

        g = Gateway(self)
        token = g.ticket()
        conn = g.connect(host="192.0.2.13", greet=True)
        conn.proto.limits = attrs.evolve(conn.proto.limits, max_bytes_before_auth=40)
        self.assertEqual(conn.raw(b"PING\r\nRESUME "), [b"PONG"])
        replies = conn.raw(token + b"\r\n")
        self.assertEqual(replies, [b"ERR TOO_MUCH_DATA too much data before authentication"])
        [refused] = [e for e in g.named("proto.refuse") if e["code"] == "TOO_MUCH_DATA"]
        self.assertEqual(refused["offending"], "RESUME <ticket>")
        self.assertNotIn(token.decode()[10:30], repr(g.events))

    def test_hide_tickets(self):
        """
        Every C{RESUME} word's line rest is hidden, any case, anywhere on a line, CR kept;
        other bytes stay.
        """
        from netguard.gateway.returning import hide_tickets

        self.assertEqual(hide_tickets(b"PING\r\nOPEN x\r\n"), b"PING\r\nOPEN x\r\n")
        self.assertEqual(
            hide_tickets(b"x\rReSuMe\tabc\r\nresume d"), b"x\rReSuMe <ticket>\r\nresume <ticket>"
        )
        self.assertEqual(hide_tickets(b"RESUME <ticket>"), b"RESUME <ticket>")


class RemovedUserTests(unittest.TestCase):
    """
    A user removed from the users file (and the file reloaded) gets nothing new on the
    connections it had already authenticated.
    """

    def removed(self) -> tuple[Gateway, Conn]:
        g = Gateway(self)
        conn = g.connect(greet=True)
        conn.login()
        g.factory.users = UserStore.from_records([make_record("bob", "another password")])
        return g, conn

    def test_open_refused_and_closed(self):
        """
        C{OPEN echo} of a removed user is answered C{ERR NOT_AUTHORIZED user removed} and
        the connection closed (its login no longer stands), with C{proto.refuse} logged.
        """
        g, conn = self.removed()
        self.assertEqual(conn.send(b"OPEN echo"), [b"ERR NOT_AUTHORIZED user removed"])
        self.assertTrue(conn.transport.disconnecting)
        [refused] = g.named("proto.refuse")
        self.assertEqual((refused["text"], refused["user"]), ("user removed", "alice"))

    def test_ticket_services_and_mux_refused(self):
        """
        C{TICKET}, C{SERVICES} and C{MUX} of a removed user get the same answer (no ticket
        is issued for a user who is gone, with no misleading text).
        """
        for command in (b"TICKET", b"SERVICES", b"MUX yamux/1"):
            _, conn = self.removed()
            self.assertEqual(conn.send(command), [b"ERR NOT_AUTHORIZED user removed"], command)

    def test_ticket_issuing_names_the_removal(self):
        """
        Asked directly (as a command already dispatched would), the ticket issuer answers a
        user no longer in the store C{ERR NOT_AUTHORIZED user removed}, not the text for a
        peer address of no known kind.
        """
        _, conn = self.removed()
        conn.proto.do_ticket()
        self.assertEqual(conn.take(), [b"ERR NOT_AUTHORIZED user removed"])

    def test_ping_and_quit_still_answered(self):
        """
        C{PING} and C{QUIT} harm no one: answered as usual.
        """
        _, conn = self.removed()
        self.assertEqual(conn.send(b"PING"), [b"PONG"])
        self.assertEqual(conn.send(b"QUIT"), [b"BYE"])

    def test_user_still_there_opens(self):
        """
        The other side: a reload that keeps the user changes nothing, C{OPEN echo} opens.
        """
        g = Gateway(self)
        conn = g.connect(greet=True)
        conn.login()
        g.factory.users = UserStore.from_records([make_record("alice", "a new password")])
        self.assertEqual(conn.send(b"OPEN echo"), [b"OK OPEN echo"])

    def test_new_stream_refused_open_one_goes_on(self):
        """
        On a multiplexed session, a stream already relaying goes on after the removal; a new
        stream is refused C{ERR NOT_AUTHORIZED user removed}.
        """
        m = Mux(self)
        m.upgrade()
        live = m.open(b"OPEN echo\r\n")
        m.factory.users = UserStore.from_records([make_record("bob", "another password")])
        refused = m.open(b"OPEN echo\r\n")
        self.assertEqual(refused.received, b"ERR NOT_AUTHORIZED user removed\r\n")
        assert live.transport is not None
        live.transport.write(b"still")
        m.pump()
        self.assertEqual(live.received, b"OK OPEN echo\r\nstill")


__all__ = ["HOME"]

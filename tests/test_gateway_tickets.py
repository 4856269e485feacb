"""
Tests for L{netguard.gateway.returning} and the framing's pre-greeting line: returning-client
tickets in the NGP/1 session (C{TICKET}, C{RESUME} before the greeting, the greeting token),
probation, progress and eviction, on Twisted fakes with the real factory and admission.
"""

from __future__ import annotations

import base64
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from netguard.admission import AdmissionPolicy
from netguard.admitting import Admitted
from netguard.auth.scram import ClientExchange
from netguard.auth.users import UserStore, make_record
from netguard.config import load_config
from netguard.framing import FramingLimits, GuardedLineReceiver
from netguard.gateway.factory import GatewayFactory
from netguard.gateway.protocol import GatewaySession
from netguard.tickets import EXPIRY_GRACE, TicketSettings

PASSWORD = "correct horse battery staple"
KEY = bytes(range(100, 132))
T0 = 1_800_000_000.0
HOME = "192.0.2.10"


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def unb64(token: bytes) -> str:
    return base64.b64decode(token).decode()


class Gateway:
    """
    A real L{GatewayFactory} (admission included) on a L{Clock}, with a ticket key and
    every log event captured.
    """

    def __init__(
        self,
        test: unittest.TestCase,
        tickets: TicketSettings | None = None,
        admission: AdmissionPolicy | None = None,
        key: bytes | None = KEY,
        state_dir: str = "/nonexistent-netguard-test",
        users: UserStore | None = None,
    ):
        self.test = test
        self.clock = Clock()
        self.clock.advance(T0)
        config = load_config(None, {"state_dir": state_dir})
        config = attrs.evolve(
            config,
            tickets=tickets or TicketSettings(),
            admission=admission or AdmissionPolicy(),
        )
        self.users = users or UserStore.from_records([make_record("alice", PASSWORD)])
        self.factory = GatewayFactory(config, self.users, self.clock, ticket_key=key)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.ports = iter(range(40000, 50000))

    @property
    def admission(self) -> Any:
        return self.factory.admission

    def connect(self, host: str = HOME, greet: bool = False) -> Conn:
        conn = Conn(self, host)
        if greet:
            self.clock.advance(conn.proto.limits.greeting_delay)
            [greeting] = conn.take()
            conn.greeting = greeting
        return conn

    def ticket(self, host: str = HOME) -> bytes:
        """
        Log in from C{host}, ask for a ticket, close; return the token.
        """
        conn = self.connect(host, greet=True)
        conn.login()
        [reply] = conn.send(b"TICKET")
        conn.close()
        words = reply.split(b" ")
        self.test.assertEqual(words[:2], [b"OK", b"TICKET"], reply)
        return words[2]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def penalties(self) -> list[tuple[str, float, int]]:
        return list(self.admission.penalties())


class Conn:
    """
    One client connection on a L{StringTransport} (not greeted unless asked).

    @cvar transport_class: the fake transport the connection is made on.
    """

    transport_class: type[StringTransport] = StringTransport

    def __init__(self, gateway: Gateway, host: str):
        self.gateway = gateway
        address = IPv4Address("TCP", host, next(gateway.ports))
        self.proto = gateway.factory.buildProtocol(address)
        assert isinstance(self.proto, GatewaySession), self.proto
        self.transport = self.transport_class(peerAddress=address)
        self.proto.makeConnection(self.transport)
        self.greeting = b""
        gateway.test.addCleanup(self.close)

    @property
    def admitted(self) -> Admitted:
        assert self.proto.admitted is not None
        return self.proto.admitted

    def take(self) -> list[bytes]:
        out = self.transport.value()
        self.transport.clear()
        return [line for line in out.split(b"\r\n") if line]

    def send(self, line: bytes) -> list[bytes]:
        self.proto.dataReceived(line + b"\r\n")
        return self.take()

    def raw(self, data: bytes) -> list[bytes]:
        self.proto.dataReceived(data)
        return self.take()

    def login(self, user: str = "alice", password: str = PASSWORD) -> None:
        client = ClientExchange(user, password)
        [cont] = self.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
        [ok] = self.send(b"CONT " + b64(client.final(unb64(cont[5:]))))
        assert ok.startswith(b"OK "), ok
        client.verify(unb64(ok[3:]))

    def close(self) -> None:
        if self.proto.transport is not None and self.proto.state.value != "closed":
            self.proto.connectionLost(None)


class GreetingTokenTests(unittest.TestCase):
    def test_greeting_offers_tickets(self):
        """
        With tickets on (the default) the greeting ends with C{TICKETS=1}.
        """
        g = Gateway(self)
        greeting = g.connect(greet=True).greeting
        self.assertEqual(
            greeting,
            b"NETGUARD/1 netguard AUTH=SCRAM-SHA-256 MAXLINE=1024 MUX=yamux/1 TICKETS=1",
        )

    def test_no_token_when_disabled(self):
        """
        With C{[tickets] enabled = false} the greeting does not offer them.
        """
        g = Gateway(self, TicketSettings(enabled=False))
        self.assertNotIn(b"TICKETS", g.connect(greet=True).greeting)

    def test_no_token_without_a_key(self):
        """
        A factory given no key (as unit tests of other modules build it) offers no tickets.
        """
        g = Gateway(self, key=None)
        self.assertNotIn(b"TICKETS", g.connect(greet=True).greeting)


class TicketCommandTests(unittest.TestCase):
    def test_ticket_after_login(self):
        """
        After a login C{TICKET} is answered C{OK TICKET <token> LIFETIME=3600}; the event
        C{ticket.issued} names the user and lifetime and never the token.
        """
        g = Gateway(self)
        conn = g.connect(greet=True)
        conn.login()
        [reply] = conn.send(b"TICKET")
        ok, word, token, lifetime = reply.split(b" ")
        self.assertEqual((ok, word, lifetime), (b"OK", b"TICKET", b"LIFETIME=3600"))
        self.assertRegex(token, rb"\A[A-Za-z0-9_-]+\Z")
        [issued] = g.named("ticket.issued")
        self.assertEqual((issued["user"], issued["lifetime"]), ("alice", 3600))
        self.assertNotIn(token.decode(), repr(g.events))

    def test_pipelined_answers_in_order(self):
        """
        C{TICKET} pipelined with the next command in one write is answered first, in order.
        """
        g = Gateway(self)
        conn = g.connect(greet=True)
        conn.login()
        first, second = conn.raw(b"TICKET\r\nPING\r\n")
        self.assertTrue(first.startswith(b"OK TICKET "), first)
        self.assertEqual(second, b"PONG")

    def test_ticket_before_login_is_auth_required(self):
        """
        C{TICKET} before login is C{ERR AUTH_REQUIRED}; the connection stays.
        """
        g = Gateway(self)
        conn = g.connect(greet=True)
        self.assertEqual(conn.send(b"TICKET"), [b"ERR AUTH_REQUIRED authenticate first"])
        self.assertFalse(conn.transport.disconnecting)

    def test_second_ticket_is_bad_sequence(self):
        """
        A second C{TICKET} on one connection is C{ERR BAD_SEQUENCE}.
        """
        g = Gateway(self)
        conn = g.connect(greet=True)
        conn.login()
        conn.send(b"TICKET")
        [reply] = conn.send(b"TICKET")
        self.assertTrue(reply.startswith(b"ERR BAD_SEQUENCE"), reply)

    def test_disabled_is_unknown_command(self):
        """
        With tickets off C{TICKET} is C{ERR UNKNOWN_COMMAND}, before and after login.
        """
        g = Gateway(self, TicketSettings(enabled=False))
        conn = g.connect(greet=True)
        self.assertEqual(conn.send(b"TICKET"), [b"ERR UNKNOWN_COMMAND unknown command"])
        conn.login()
        self.assertEqual(conn.send(b"TICKET"), [b"ERR UNKNOWN_COMMAND unknown command"])


class ResumeTests(unittest.TestCase):
    def test_valid_resume_greeted_at_once_and_in_the_lane(self):
        """
        A valid C{RESUME} as the first line is greeted at once (no greeting delay), the
        connection is in the lane, and it then logs in as any other.
        """
        g = Gateway(self)
        token = g.ticket()
        conn = g.connect()
        [greeting] = conn.send(b"RESUME " + token)
        self.assertTrue(greeting.startswith(b"NETGUARD/1 "), greeting)
        self.assertTrue(conn.admitted.lane)
        [accepted] = g.named("ticket.accepted")
        self.assertEqual((accepted["lane"], accepted["ticket_user"]), (True, "alice"))
        conn.login()
        self.assertTrue(conn.admitted.promoted)

    def test_ticket_never_replaces_login(self):
        """
        A lane connection that has not logged in is refused C{OPEN} (authenticate first).
        """
        g = Gateway(self)
        token = g.ticket()
        conn = g.connect()
        conn.send(b"RESUME " + token)
        self.assertEqual(conn.send(b"OPEN echo"), [b"ERR AUTH_REQUIRED authenticate first"])

    def test_resume_split_across_reads(self):
        """
        A C{RESUME} line that arrives in pieces within the greeting delay is accepted.
        """
        g = Gateway(self)
        token = g.ticket()
        conn = g.connect()
        self.assertEqual(conn.raw(b"RESUME " + token[:10]), [])
        g.clock.advance(0.05)
        [greeting] = conn.raw(token[10:] + b"\r\n")
        self.assertTrue(greeting.startswith(b"NETGUARD/1 "))

    def test_forged_is_bad_ticket_and_offence(self):
        """
        A forged ticket is answered C{ERR BAD_TICKET forged}, the connection closed, the
        source given C{bad_ticket} points (2: below the default threshold, so one bad ticket
        never blocks on its own; a second does), and C{ticket.refused} logged.
        """
        g = Gateway(self)
        token = bytearray(g.ticket())
        token[20] = ord("A") if token[20] != ord("A") else ord("B")
        conn = g.connect()
        self.assertEqual(conn.send(b"RESUME " + bytes(token)), [b"ERR BAD_TICKET forged"])
        self.assertTrue(conn.transport.disconnecting)
        [(source, blocked, offences)] = g.penalties()
        self.assertEqual((source, blocked, offences), ("192.0.2.10/32", 0, 1))
        [refused] = g.named("ticket.refused")
        self.assertEqual((refused["reason"], refused["offence"]), ("forged", True))
        g.connect().send(b"RESUME " + bytes(token))
        [(source, blocked, offences)] = g.penalties()
        self.assertEqual(offences, 2)
        self.assertGreater(blocked, 0)

    def test_refused_tickets_logged_aggregated(self):
        """
        During a flood of bad tickets from one source only the first 3 per reason in an
        interval are logged as C{ticket.refused}; the rest are counted in one
        C{conn.reject.summary} (C{of} = C{ticket.refused}) when the interval ends. Every
        one is still answered C{ERR BAD_TICKET}.
        """
        g = Gateway(self, admission=AdmissionPolicy(bad_ticket_points=0))
        replies = [g.connect().send(b"RESUME AAAA") for _ in range(5)]
        self.assertEqual(replies, [[b"ERR BAD_TICKET forged"]] * 5)
        self.assertEqual(len(g.named("ticket.refused")), 3)
        g.clock.advance(10)
        [summary] = g.named("conn.reject.summary")
        self.assertEqual(
            (summary["of"], summary["reason"], summary["count"], summary["source"]),
            ("ticket.refused", "forged", 2, "192.0.2.10/32"),
        )

    def test_replayed_is_bad_ticket_and_offence(self):
        """
        The second presentation of a ticket is C{ERR BAD_TICKET replayed} and an offence.
        """
        g = Gateway(self)
        token = g.ticket()
        g.connect().send(b"RESUME " + token)
        conn = g.connect()
        self.assertEqual(conn.send(b"RESUME " + token), [b"ERR BAD_TICKET replayed"])
        self.assertEqual(len(g.penalties()), 1)

    def test_expired_is_bad_ticket_and_offence(self):
        """
        A ticket presented at its expiry plus the grace is C{ERR BAD_TICKET expired} and an
        offence.
        """
        g = Gateway(self)
        token = g.ticket()
        g.clock.advance(3600 + EXPIRY_GRACE)
        conn = g.connect()
        self.assertEqual(conn.send(b"RESUME " + token), [b"ERR BAD_TICKET expired"])
        self.assertEqual(len(g.penalties()), 1)

    def test_revoked_is_bad_ticket_without_offence(self):
        """
        After the user's password changed (a reload), the ticket is C{ERR BAD_TICKET
        revoked}: refused, but no points (an honest client holds such a ticket).
        """
        g = Gateway(self)
        token = g.ticket()
        users = UserStore.from_records([make_record("alice", "new password")])
        g.factory.apply_config(g.factory.config, users)
        conn = g.connect()
        self.assertEqual(conn.send(b"RESUME " + token), [b"ERR BAD_TICKET revoked"])
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(g.penalties(), [])

    def test_new_key_on_reload_revokes(self):
        """
        A reload with a new ticket key revokes every earlier ticket.
        """
        g = Gateway(self)
        token = g.ticket()
        g.factory.apply_config(g.factory.config, g.users, ticket_key=bytes(32))
        self.assertEqual(g.connect().send(b"RESUME " + token), [b"ERR BAD_TICKET revoked"])

    def test_reload_with_same_key_keeps_spent_tickets_spent(self):
        """
        A reload that keeps the key, even one that turns tickets off and on again, keeps
        the spent table: a spent ticket is still a replay.
        """
        g = Gateway(self)
        token = g.ticket()
        g.connect().send(b"RESUME " + token)
        config = g.factory.config
        g.factory.apply_config(
            attrs.evolve(config, tickets=TicketSettings(enabled=False)), g.users
        )
        g.factory.apply_config(config, g.users, ticket_key=KEY)
        self.assertEqual(g.connect().send(b"RESUME " + token), [b"ERR BAD_TICKET replayed"])

    def test_other_block_goes_on_as_first_time(self):
        """
        A valid ticket from another /24 buys no lane and is no offence: the connection is
        greeted after the normal delay, C{ticket.other_block} is logged.
        """
        g = Gateway(self)
        token = g.ticket()
        conn = g.connect("192.0.3.10")
        self.assertEqual(conn.send(b"RESUME " + token), [])
        self.assertFalse(conn.admitted.lane)
        g.clock.advance(0.1)
        [greeting] = conn.take()
        self.assertTrue(greeting.startswith(b"NETGUARD/1 "))
        self.assertEqual(g.penalties(), [])
        self.assertEqual(len(g.named("ticket.other_block")), 1)

    def test_lane_full_goes_on_as_first_time(self):
        """
        With C{lane_max = 1} and the lane taken, a second valid ticket buys no lane: the
        connection waits for the normal greeting; C{ticket.accepted} says C{lane-cap}.
        """
        g = Gateway(self, admission=AdmissionPolicy(lane_max=1))
        first, second = g.ticket(), g.ticket()
        g.connect().send(b"RESUME " + first)
        conn = g.connect()
        self.assertEqual(conn.send(b"RESUME " + second), [])
        self.assertFalse(conn.admitted.lane)
        g.clock.advance(0.1)
        self.assertEqual(len(conn.take()), 1)
        accepted = g.named("ticket.accepted")[-1]
        self.assertEqual((accepted["lane"], accepted["lane_text"]), (False, "lane-cap"))

    def test_spent_table_full_goes_on_as_first_time(self):
        """
        With the spent table full, a valid ticket buys no lane (fails closed for the lane,
        never for the login): greeted after the delay, no offence.
        """
        g = Gateway(self, TicketSettings(max_spent=1))
        first, second = g.ticket(), g.ticket()
        g.connect().send(b"RESUME " + first)
        conn = g.connect()
        self.assertEqual(conn.send(b"RESUME " + second), [])
        self.assertFalse(conn.admitted.lane)
        g.clock.advance(0.1)
        self.assertEqual(len(conn.take()), 1)
        self.assertEqual(g.penalties(), [])

    def test_partial_resume_at_greeting_is_early_talk(self):
        """
        A C{RESUME} line still unfinished when the greeting delay ends is early talk.
        """
        g = Gateway(self)
        conn = g.connect()
        conn.raw(b"RESUME abcdef")
        g.clock.advance(0.1)
        self.assertEqual(conn.take(), [b"ERR EARLY_TALKER you spoke before the greeting"])
        self.assertEqual(len(g.named("proto.early_talker")), 1)

    def test_resume_followed_by_more_is_early_talk(self):
        """
        C{RESUME} followed by anything else in the same read is early talk, and the ticket
        is not spent (still good on its own later).
        """
        g = Gateway(self)
        token = g.ticket()
        conn = g.connect()
        reply = conn.raw(b"RESUME " + token + b"\r\nPING\r\n")
        self.assertEqual(reply, [b"ERR EARLY_TALKER you spoke before the greeting"])
        [talk] = g.named("proto.early_talker")
        self.assertEqual(talk["offending"], "RESUME <ticket>\\r\\nPING\\r\\n")
        self.assertNotIn(token.decode(), repr(g.events))
        g.admission.clear_penalties(None)
        [greeting] = g.connect().send(b"RESUME " + token)
        self.assertTrue(greeting.startswith(b"NETGUARD/1 "))

    def test_second_line_after_resume_is_early_talk(self):
        """
        After a C{RESUME} that bought no lane, anything more before the greeting is early
        talk.
        """
        g = Gateway(self)
        token = g.ticket()
        conn = g.connect("192.0.3.10")
        self.assertEqual(conn.send(b"RESUME " + token), [])
        self.assertEqual(conn.send(b"PING"), [b"ERR EARLY_TALKER you spoke before the greeting"])

    def test_other_line_before_greeting_is_early_talk(self):
        """
        Any first line but C{RESUME} is early talk, as without tickets.
        """
        g = Gateway(self)
        self.assertEqual(
            g.connect().send(b"PING"), [b"ERR EARLY_TALKER you spoke before the greeting"]
        )

    def test_resume_line_at_the_bound_and_one_past(self):
        """
        A pre-greeting line of C{max_line_length} bytes is judged (a bad ticket); one byte
        more, newline or not, is early talk at once.
        """
        g = Gateway(self)
        line = b"RESUME " + b"A" * (1024 - 7)
        self.assertEqual(g.connect("192.0.2.1").send(line), [b"ERR BAD_TICKET too long"])
        conn = g.connect("192.0.2.2")
        self.assertEqual(
            conn.raw(line + b"A"), [b"ERR EARLY_TALKER you spoke before the greeting"]
        )

    def test_resume_after_greeting_is_bad_sequence(self):
        """
        C{RESUME} after the greeting is C{ERR BAD_SEQUENCE}; the connection stays, and the
        ticket is not logged.
        """
        g = Gateway(self)
        token = g.ticket()
        conn = g.connect(greet=True)
        self.assertEqual(
            conn.send(b"RESUME " + token), [b"ERR BAD_SEQUENCE command not allowed now"]
        )
        self.assertFalse(conn.transport.disconnecting)
        self.assertNotIn(token.decode(), repr(g.events))

    def test_disabled_resume_is_ignored_without_offence(self):
        """
        With tickets off (turned off after the client got its ticket), C{RESUME} before the
        greeting is neither early talk nor an offence: nothing is answered until the usual
        greeting delay, then the greeting without C{TICKETS=1}, and the connection is not in
        the lane. Any other line before the greeting is still early talk.
        """
        g = Gateway(self, TicketSettings(enabled=False))
        conn = g.connect()
        self.assertEqual(conn.send(b"RESUME abc"), [])
        g.clock.advance(conn.proto.limits.greeting_delay)
        [greeting] = conn.take()
        self.assertTrue(greeting.startswith(b"NETGUARD/1 "), greeting)
        self.assertNotIn(b"TICKETS=", greeting)
        self.assertEqual(g.penalties(), [])
        self.assertEqual(g.admission.snapshot()["lane"], 0)
        self.assertEqual(
            g.connect().send(b"HELLO"), [b"ERR EARLY_TALKER you spoke before the greeting"]
        )

    def test_key_never_logged(self):
        """
        Through issuing, accepting and refusing tickets no log event holds the key (raw,
        hex or base64) and none holds an issued token.
        """
        g = Gateway(self)
        token = g.ticket()
        g.connect().send(b"RESUME " + token)
        g.connect().send(b"RESUME " + token)
        text = repr(g.events) + "".join(formatEvent(e) for e in g.events)
        for shown in (repr(KEY), KEY.hex(), base64.b64encode(KEY).decode(), token.decode()):
            self.assertNotIn(shown, text)
        self.assertNotIn(KEY, repr(g.factory.tickets).encode())


class ProbationTests(unittest.TestCase):
    def on_probation(self, **policy: Any) -> Gateway:
        g = Gateway(self, admission=AdmissionPolicy(**policy))
        return g

    def test_never_greeted_and_busy_at_the_deadline(self):
        """
        Under overload a new connection is on probation: never greeted, and at
        C{probation_timeout} answered C{ERR BUSY overload-lag} and closed, no offence.
        """
        g = Gateway(self)
        g.admission.set_overload("overload-lag")
        conn = g.connect()
        self.assertIsNotNone(conn.admitted.probation)
        g.clock.advance(0.999)
        self.assertEqual(conn.take(), [])
        g.clock.advance(0.001)
        self.assertEqual(conn.take(), [b"ERR BUSY overload-lag"])
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(g.penalties(), [])

    def test_resume_within_timeout_enters_lane_and_is_greeted(self):
        """
        On probation, a valid ticket within the timeout enters the lane and is greeted at
        once; the probation deadline then passes without effect.
        """
        g = Gateway(self)
        token = g.ticket()
        g.admission.set_overload("overload-lag")
        conn = g.connect()
        g.clock.advance(0.5)
        [greeting] = conn.send(b"RESUME " + token)
        self.assertTrue(greeting.startswith(b"NETGUARD/1 "))
        self.assertTrue(conn.admitted.lane)
        self.assertIsNone(conn.admitted.probation)
        g.clock.advance(2)
        self.assertEqual(conn.take(), [])
        self.assertFalse(conn.transport.disconnecting)

    def test_partial_resume_cut_by_the_deadline_is_the_probation_refusal(self):
        """
        On probation an unfinished C{RESUME} line waits past the greeting delay; the end of
        probation answers it C{ERR BUSY}, not early talk, and no offence.
        """
        g = Gateway(self)
        g.admission.set_overload("overload-lag")
        conn = g.connect()
        conn.raw(b"RESUME abc")
        g.clock.advance(0.5)
        self.assertEqual(conn.take(), [])
        g.clock.advance(0.5)
        self.assertEqual(conn.take(), [b"ERR BUSY overload-lag"])
        self.assertEqual(g.penalties(), [])

    def test_other_block_on_probation_refused_when_it_ends(self):
        """
        On probation a ticket from another block buys nothing: refused at the deadline.
        """
        g = Gateway(self)
        token = g.ticket()
        g.admission.set_overload("overload-lag")
        conn = g.connect("192.0.3.1")
        self.assertEqual(conn.send(b"RESUME " + token), [])
        g.clock.advance(1.0)
        self.assertEqual(conn.take(), [b"ERR BUSY overload-lag"])

    def test_bad_ticket_on_probation_is_an_offence(self):
        """
        On probation a forged ticket is still C{ERR BAD_TICKET} and an offence.
        """
        g = Gateway(self)
        g.admission.set_overload("overload-lag")
        conn = g.connect()
        self.assertEqual(conn.send(b"RESUME AAAA"), [b"ERR BAD_TICKET forged"])
        self.assertEqual(len(g.penalties()), 1)


class ProgressAndEvictionTests(unittest.TestCase):
    def test_progress_at_auth_and_each_scram_step(self):
        """
        C{admitted.progress()} is called for a well-formed C{AUTH} (mechanism offered,
        base64 argument), when its first step is accepted (C{CONT}) and when the proof is
        accepted: three times for a login (a malformed C{AUTH} is none:
        L{tests.test_gateway_endings.ProgressTests}).
        """
        calls: list[Admitted] = []
        original = Admitted.progress

        def spy(admitted: Admitted) -> None:
            calls.append(admitted)
            original(admitted)

        self.patch(Admitted, "progress", spy)
        g = Gateway(self)
        conn = g.connect(greet=True)
        conn.login()
        self.assertEqual(len(calls), 3)

    def test_no_progress_for_lines_that_are_not_auth(self):
        """
        C{PING} and a refused command are not progress.
        """
        calls: list[Admitted] = []
        self.patch(Admitted, "progress", lambda admitted: calls.append(admitted))
        g = Gateway(self)
        conn = g.connect(greet=True)
        conn.send(b"PING")
        conn.send(b"OPEN echo")
        self.assertEqual(calls, [])

    def test_evicted_connection_answered_busy_and_closed(self):
        """
        When the unauthenticated pool is full of one source's connections, a newcomer from
        another source evicts one of them: it is answered C{ERR BUSY evicted} and closed,
        no offence; the newcomer is greeted normally.
        """
        policy = AdmissionPolicy(max_unauthenticated=2, red_soft=2, red_hard=2)
        g = Gateway(self, admission=policy)
        first = g.connect("192.0.2.1", greet=True)
        second = g.connect("192.0.2.1", greet=True)
        newcomer = g.connect("198.51.100.1")
        outcomes = [first.take(), second.take()]
        self.assertIn([b"ERR BUSY evicted"], outcomes)
        self.assertIn([], outcomes)
        evicted = first if outcomes[0] else second
        self.assertTrue(evicted.transport.disconnecting)
        self.assertIsNone(newcomer.admitted.probation)
        g.clock.advance(0.1)
        self.assertEqual(len(newcomer.take()), 1)
        self.assertEqual(g.penalties(), [])

    def test_eviction_of_a_closing_connection_is_still_counted(self):
        """
        A connection already closing (it said C{QUIT}; its slot is held until the close
        completes) that admission evicts gets no further line, but the eviction is counted
        as a refusal (C{refused.evicted}) as admission counts it.
        """
        policy = AdmissionPolicy(max_unauthenticated=2, red_soft=2, red_hard=2)
        g = Gateway(self, admission=policy)
        closing = g.connect("192.0.2.1", greet=True)
        self.assertEqual(closing.send(b"QUIT"), [b"BYE"])
        g.connect("192.0.2.1", greet=True)
        g.connect("198.51.100.1")
        self.assertEqual(closing.take(), [])
        self.assertEqual(g.factory.stats.counters["refused.evicted"], 1)
        self.assertEqual(g.admission.counters["evicted"], 1)

    def test_lane_connection_is_not_evicted(self):
        """
        A connection in the lane is never the victim: with the pool holding one lane and
        one ordinary connection of a source, the ordinary one is evicted.
        """
        policy = AdmissionPolicy(max_unauthenticated=1, red_soft=1, red_hard=1)
        g = Gateway(self, admission=policy)
        token = g.ticket("192.0.2.1")
        lane = g.connect("192.0.2.1")
        lane.send(b"RESUME " + token)
        ordinary = g.connect("192.0.2.1", greet=True)
        g.connect("198.51.100.1")
        self.assertEqual(lane.take(), [])
        self.assertEqual(ordinary.take(), [b"ERR BUSY evicted"])


class _OneLineFirst(GuardedLineReceiver):
    """
    A framing subclass that accepts C{HELLO} before the greeting and greets at once.
    """

    accepts_pre_greeting_line = True

    def __init__(self, limits: FramingLimits, clock: Clock):
        super().__init__(limits, clock)
        self.seen: list[bytes] = []

    def greet(self) -> None:
        self.sendLine(b"GREETING")

    def pre_greeting_line(self, line: bytes) -> bool:
        self.seen.append(line)
        if line != b"HELLO":
            return False
        self.greet_now()
        return True

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(b"LINE " + line)


class PreGreetingLineTests(unittest.TestCase):
    """
    The framing's generic hook: one line a subclass may accept before the greeting.
    """

    def connect(self, **limits: Any) -> tuple[_OneLineFirst, StringTransport, Clock]:
        clock = Clock()
        proto = _OneLineFirst(FramingLimits(**limits), clock)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, clock

    def test_accepted_line_greets_at_once_then_lines_flow(self):
        """
        An accepted first line (CRLF or bare LF) greets at once; later lines are ordinary.
        """
        for ending in (b"\r\n", b"\n"):
            proto, transport, clock = self.connect()
            proto.dataReceived(b"HELLO" + ending)
            self.assertEqual(transport.value(), b"GREETING\r\n")
            proto.dataReceived(b"x\r\n")
            self.assertEqual(transport.value(), b"GREETING\r\nLINE x\r\n")
            self.assertEqual(clock.getDelayedCalls()[0].getTime(), 30.0)  # no greet timer

    def test_refused_line_is_early_talk(self):
        """
        A line the subclass does not accept is early talk.
        """
        proto, transport, _ = self.connect()
        proto.dataReceived(b"NOPE\r\n")
        self.assertEqual(transport.value(), b"ERR EARLY_TALKER you spoke before the greeting\r\n")

    def test_partial_line_at_bound_waits_one_past_is_early_talk(self):
        """
        A partial line of C{max_line_length} bytes (plus the CR of its CRLF) waits; one byte
        more is early talk at once, before the greeting is due.
        """
        proto, transport, _ = self.connect(max_line_length=64)
        proto.dataReceived(b"H" * 64 + b"\r")
        self.assertEqual(transport.value(), b"")
        proto, transport, _ = self.connect(max_line_length=64)
        proto.dataReceived(b"H" * 65)
        self.assertEqual(transport.value(), b"ERR EARLY_TALKER you spoke before the greeting\r\n")

    def test_line_past_the_byte_budget_is_early_talk(self):
        """
        A first line larger than C{max_bytes_before_auth} is early talk, never counted past
        the budget.
        """
        proto, transport, _ = self.connect(max_line_length=1024, max_bytes_before_auth=256)
        proto.dataReceived(b"H" * 300 + b"\r\n")
        self.assertEqual(transport.value(), b"ERR EARLY_TALKER you spoke before the greeting\r\n")
        self.assertEqual(proto.seen, [])

    def test_without_the_flag_any_byte_is_early_talk(self):
        """
        A receiver that does not set C{accepts_pre_greeting_line} refuses at the first byte.
        """
        clock = Clock()
        proto = GuardedLineReceiver(FramingLimits(), clock)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"H")
        self.assertEqual(transport.value(), b"ERR EARLY_TALKER you spoke before the greeting\r\n")

    def test_greeting_due_false_holds_the_greeting(self):
        """
        A subclass whose C{greeting_due} says no is not greeted when the delay ends; it may
        greet later with C{greet_now}.
        """
        proto, transport, clock = self.connect()
        proto.greeting_due = lambda: False  # type: ignore[method-assign]
        clock.advance(5)
        self.assertEqual(transport.value(), b"")
        proto.greet_now()
        self.assertEqual(transport.value(), b"GREETING\r\n")

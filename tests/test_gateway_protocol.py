"""
Tests for L{netguard.gateway.protocol}: the NGP/1 state machine, on Twisted fakes.
"""

from __future__ import annotations

import base64
import sys

import attrs
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.test import iosim
from twisted.trial import unittest

from netguard.auth.scram import SCRAM_SHA_256, ClientExchange
from netguard.auth.users import UserStore, make_record
from netguard.client.protocol import Credentials, NGPClientProtocol, NGPError
from netguard.config import load_config
from netguard.gateway.factory import GatewayFactory
from netguard.gateway.protocol import TRANSITIONS, GatewaySession, SessionState

PASSWORD = "correct horse battery staple"


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def unb64(token: bytes) -> str:
    return base64.b64decode(token).decode()


def make_factory(clock: Clock, **limits) -> GatewayFactory:
    config = load_config(None, {"state_dir": "/nonexistent-netguard-test"})
    if limits:
        import attrs

        max_auth_attempts = limits.pop("max_auth_attempts", config.max_auth_attempts)
        config = attrs.evolve(
            config,
            limits=attrs.evolve(config.limits, **limits),
            max_auth_attempts=max_auth_attempts,
        )
    store = UserStore.from_records(
        [make_record("alice", PASSWORD, groups=("ops",)), make_record("bob", "other")]
    )
    return GatewayFactory(config, store, clock)


class Session:
    """
    One server session on a L{StringTransport}, greeted, with helpers to speak NGP/1.
    """

    def __init__(self, test: unittest.TestCase, **limits):
        self.clock = Clock()
        self.factory = make_factory(self.clock, **limits)
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.clock.advance(self.proto.limits.greeting_delay)
        self.greeting = self.take()[0]
        test.addCleanup(self.proto.connectionLost, None)

    def take(self) -> list[bytes]:
        out = self.transport.value()
        self.transport.clear()
        return [line for line in out.split(b"\r\n") if line]

    def send(self, line: bytes) -> list[bytes]:
        self.proto.dataReceived(line + b"\r\n")
        return self.take()

    def login(self, user="alice", password=PASSWORD) -> list[bytes]:
        client = ClientExchange(user, password)
        [cont] = self.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
        if not cont.startswith(b"CONT "):
            return [cont]
        final = client.final(unb64(cont[5:]))
        reply = self.send(b"CONT " + b64(final))
        if reply and reply[0].startswith(b"OK "):
            client.verify(unb64(reply[0][3:]))
        return reply


class GreetingTests(unittest.TestCase):
    def test_greeting_names_server_and_mechanism(self):
        s = Session(self)
        self.assertEqual(
            s.greeting, b"NETGUARD/1 netguard AUTH=SCRAM-SHA-256 MAXLINE=1024 MUX=yamux/1"
        )

    def test_ping(self):
        s = Session(self)
        self.assertEqual(s.send(b"PING"), [b"PONG"])

    def test_commands_are_case_insensitive(self):
        s = Session(self)
        self.assertEqual(s.send(b"ping"), [b"PONG"])

    def test_quit(self):
        s = Session(self)
        self.assertEqual(s.send(b"QUIT"), [b"BYE"])
        self.assertTrue(s.transport.disconnecting)

    def test_state_table_covers_every_live_state(self):
        self.assertEqual(
            set(TRANSITIONS),
            {SessionState.READY, SessionState.AUTH_CONTINUE, SessionState.AUTHENTICATED},
        )


class BadInputTests(unittest.TestCase):
    def assertRefused(self, reply, code):
        self.assertEqual(len(reply), 1)
        self.assertTrue(reply[0].startswith(b"ERR " + code + b" "), reply)

    def test_unknown_command(self):
        s = Session(self)
        self.assertRefused(s.send(b"HELO there"), b"UNKNOWN_COMMAND")
        self.assertFalse(s.transport.disconnecting)

    def test_empty_line(self):
        self.assertRefused(Session(self).send(b""), b"BAD_SYNTAX")

    def test_nul_byte(self):
        self.assertRefused(Session(self).send(b"PI\x00NG"), b"BAD_SYNTAX")

    def test_bare_cr(self):
        self.assertRefused(Session(self).send(b"PING\rPING"), b"BAD_SYNTAX")

    def test_non_ascii(self):
        self.assertRefused(Session(self).send("PÏNG".encode()), b"BAD_SYNTAX")

    def test_binary_junk(self):
        self.assertRefused(Session(self).send(b"\x16\x03\x01\x02\x00\x01\x00"), b"BAD_SYNTAX")

    def test_double_space(self):
        self.assertRefused(Session(self).send(b"AUTH  SCRAM-SHA-256 eA=="), b"BAD_SYNTAX")

    def test_trailing_space(self):
        self.assertRefused(Session(self).send(b"PING "), b"BAD_SYNTAX")

    def test_wrong_arity(self):
        self.assertRefused(Session(self).send(b"PING extra"), b"BAD_SYNTAX")

    def test_open_before_auth(self):
        self.assertRefused(Session(self).send(b"OPEN echo"), b"AUTH_REQUIRED")

    def test_services_before_auth_reveals_nothing(self):
        self.assertRefused(Session(self).send(b"SERVICES"), b"AUTH_REQUIRED")

    def test_cont_without_auth(self):
        self.assertRefused(Session(self).send(b"CONT eA=="), b"BAD_SEQUENCE")

    def test_unsupported_mechanism(self):
        self.assertRefused(Session(self).send(b"AUTH PLAIN eA=="), b"UNSUPPORTED_MECHANISM")

    def test_bad_base64(self):
        self.assertRefused(Session(self).send(b"AUTH SCRAM-SHA-256 !!!"), b"BAD_SYNTAX")

    def test_base64_of_non_utf8(self):
        token = base64.b64encode(b"\xff\xfe")
        self.assertRefused(Session(self).send(b"AUTH SCRAM-SHA-256 " + token), b"BAD_SYNTAX")

    def test_malformed_client_first_is_an_auth_failure(self):
        self.assertRefused(
            Session(self).send(b"AUTH SCRAM-SHA-256 " + b64("garbage")), b"AUTH_FAILED"
        )

    def test_overlong_line(self):
        s = Session(self)
        reply = s.send(b"PING" + b"x" * 2000)
        self.assertRefused(reply, b"LINE_TOO_LONG")
        self.assertTrue(s.transport.disconnecting)

    def test_line_flood_before_auth(self):
        s = Session(self)
        s.proto.dataReceived(b"PING\r\n" * 1000)
        lines = s.take()
        self.assertEqual(lines[:16], [b"PONG"] * 16)
        self.assertTrue(lines[-1].startswith(b"ERR TOO_MANY_LINES"))
        self.assertTrue(s.transport.disconnecting)

    def test_early_talker(self):
        clock = Clock()
        proto = make_factory(clock).buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"AUTH SCRAM-SHA-256 xx\r\n")
        self.assertTrue(transport.value().startswith(b"ERR EARLY_TALKER"))
        self.assertTrue(transport.disconnecting)

    def test_handshake_timeout(self):
        s = Session(self, handshake_timeout=5.0)
        s.clock.advance(6)
        self.assertEqual(s.take(), [b"ERR TIMEOUT handshake deadline"])
        self.assertTrue(s.transport.disconnecting)


class AuthTests(unittest.TestCase):
    def test_successful_login_with_mutual_auth(self):
        s = Session(self)
        [ok] = s.login()
        self.assertTrue(ok.startswith(b"OK "))
        self.assertIs(s.proto.state, SessionState.AUTHENTICATED)
        self.assertEqual(s.proto.user, "alice")

    def test_wrong_password(self):
        s = Session(self)
        self.assertEqual(s.login(password="wrong"), [b"ERR AUTH_FAILED authentication failed"])
        self.assertIs(s.proto.state, SessionState.READY)
        self.assertFalse(s.transport.disconnecting)

    def test_unknown_user_gets_the_same_answers(self):
        s = Session(self)
        client = ClientExchange("mallory", "x")
        [cont] = s.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
        self.assertTrue(cont.startswith(b"CONT "))
        reply = s.send(b"CONT " + b64(client.final(unb64(cont[5:]))))
        self.assertEqual(reply, [b"ERR AUTH_FAILED authentication failed"])

    def test_attempts_are_bounded(self):
        s = Session(self, max_auth_attempts=2)
        s.login(password="one")
        self.assertFalse(s.transport.disconnecting)
        s.login(password="two")
        self.assertTrue(s.transport.disconnecting)

    def test_abandoned_exchange_counts_as_failure(self):
        s = Session(self, max_auth_attempts=1)
        client = ClientExchange("alice", PASSWORD)
        s.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
        self.assertEqual(s.send(b"PING"), [b"ERR AUTH_FAILED authentication failed"])
        self.assertTrue(s.transport.disconnecting)

    def test_any_other_line_in_auth_continue_abandons_and_counts(self):
        # protocol.md: in auth-continue any line other than CONT or QUIT abandons the exchange
        # and counts as a failed attempt; malformed lines and a malformed CONT included.
        for line in (
            b"FOO",
            b"",
            b" PING",
            b"PING\x01",
            b"CONT",
            b"CONT a b",
            b"OPEN echo",
        ):
            s = Session(self)
            client = ClientExchange("alice", PASSWORD)
            s.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
            self.assertEqual(s.send(line), [b"ERR AUTH_FAILED authentication failed"], line)
            self.assertIs(s.proto.state, SessionState.READY, line)
            self.assertEqual(s.proto.auth_attempts, 1, line)
            self.assertEqual(s.send(b"PING"), [b"PONG"], line)  # back in ready, not stuck

    def test_cont_argument_not_base64_is_bad_syntax_and_not_an_attempt(self):
        """
        A CONT whose argument is not base64 of UTF-8 is C{BAD_SYNTAX}, as for AUTH: no attempt
        is counted and the exchange goes on, so a correct CONT still logs in.
        """
        for token in (b"!!bad!!", b"eA=", base64.b64encode(b"\xff\xfe")):
            s = Session(self, max_auth_attempts=1)
            client = ClientExchange("alice", PASSWORD)
            [cont] = s.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
            [refused] = s.send(b"CONT " + token)
            self.assertTrue(refused.startswith(b"ERR BAD_SYNTAX "), refused)
            self.assertEqual(s.proto.auth_attempts, 0, token)
            self.assertIs(s.proto.state, SessionState.AUTH_CONTINUE, token)
            self.assertFalse(s.transport.disconnecting, token)
            [ok] = s.send(b"CONT " + b64(client.final(unb64(cont[5:]))))
            self.assertTrue(ok.startswith(b"OK "), token)

    def test_quit_in_auth_continue_says_bye(self):
        s = Session(self)
        client = ClientExchange("alice", PASSWORD)
        s.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
        self.assertEqual(s.send(b"QUIT"), [b"BYE"])

    def test_auth_twice_is_out_of_sequence(self):
        s = Session(self)
        s.login()
        reply = s.send(b"AUTH SCRAM-SHA-256 " + b64("n,,n=alice,r=abc"))
        self.assertTrue(reply[0].startswith(b"ERR BAD_SEQUENCE"))

    def test_line_budget_lifted_after_auth(self):
        """
        After login the pre-authentication line budget (16) no longer applies: the budget
        after authentication (default 32 lines) does.
        """
        s = Session(self)
        s.login()
        s.proto.dataReceived(b"PING\r\n" * 32)
        self.assertEqual(s.take(), [b"PONG"] * 32)
        self.assertFalse(s.transport.disconnecting)

    def test_password_never_logged(self):
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        s = Session(self)
        s.login(password=PASSWORD + "x")
        s.login()
        self.assertTrue(events)
        self.assertNotIn(PASSWORD, repr(events))


class AfterLoginBoundTests(unittest.TestCase):
    """
    The line phase between login and C{OPEN} is bounded in lines, bytes, error replies and
    time, whether the lines are errors or valid commands, and its errors are logged once.
    """

    def setUp(self):
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == name]

    def test_defaults(self):
        """
        The gateway's defaults: 32 lines and 8192 bytes after login, 10 error replies per
        connection, 30 s from login to C{OPEN}.
        """
        limits = Session(self).proto.factory.framing_limits  # as configured, before stress
        self.assertEqual(
            (
                limits.max_lines_after_auth,
                limits.max_bytes_after_auth,
                limits.max_errors,
                limits.open_timeout,
            ),
            (32, 8192, 10, 30.0),
        )

    def test_megabyte_of_junk_lines_after_login_in_one_write(self):
        """
        1 MiB of C{a\\r\\n} in one write after login earns 10 C{UNKNOWN_COMMAND} replies and
        a final C{ERR TOO_MANY_LINES too many errors}; 11 lines are handled, the rest is
        dropped unparsed; the log holds two C{proto.refuse} events (the first error, the
        cut) and ONE C{proto.errors} event with the count.
        """
        s = Session(self)
        s.login()
        s.proto.dataReceived(b"a\r\n" * (2**20 // 3))
        lines = s.take()
        self.assertEqual(lines[:10], [b"ERR UNKNOWN_COMMAND unknown command"] * 10)
        self.assertEqual(lines[10:], [b"ERR TOO_MANY_LINES too many errors"])
        self.assertEqual(s.proto.lines_after_auth, 11)
        self.assertTrue(s.transport.disconnecting)
        s.proto.connectionLost(None)
        self.assertEqual(len(self.named("proto.refuse")), 2)
        [summary] = self.named("proto.errors")
        self.assertEqual((summary["count"], summary["first_code"]), (10, "UNKNOWN_COMMAND"))
        self.assertIn('input="a"', formatEvent(summary))

    def test_ping_flood_after_login_is_bounded(self):
        """
        Valid commands count too: 1 MiB of C{PING} after login gets 32 C{PONG} and then
        C{ERR TOO_MANY_LINES}; 33 lines are handled.
        """
        s = Session(self)
        s.login()
        s.proto.dataReceived(b"PING\r\n" * (2**20 // 6))
        lines = s.take()
        self.assertEqual(lines[:32], [b"PONG"] * 32)
        self.assertEqual(lines[32:], [b"ERR TOO_MANY_LINES too many lines after authentication"])
        self.assertEqual(s.proto.lines_after_auth, 33)
        self.assertTrue(s.transport.disconnecting)

    def test_services_flood_after_login_is_bounded(self):
        """
        C{SERVICES} spam is bounded by the same line budget.
        """
        s = Session(self, max_lines_after_auth=4)
        s.login()
        s.proto.dataReceived(b"SERVICES\r\n" * 10000)
        refusal = b"ERR TOO_MANY_LINES too many lines after authentication"
        self.assertEqual(s.take(), [b"OK SERVICES echo"] * 4 + [refusal])

    def test_lines_after_login_one_past_the_bound(self):
        """
        Exactly C{max_lines_after_auth} lines after login are answered, the next is refused.
        """
        s = Session(self, max_lines_after_auth=5)
        s.login()
        self.assertEqual(s.send(b"PING\r\nPING\r\nPING\r\nPING\r\nPING"), [b"PONG"] * 5)
        self.assertFalse(s.transport.disconnecting)
        self.assertEqual(
            s.send(b"PING"), [b"ERR TOO_MANY_LINES too many lines after authentication"]
        )
        self.assertTrue(s.transport.disconnecting)

    def test_bytes_after_login_one_past_the_bound(self):
        """
        Exactly C{max_bytes_after_auth} bytes of lines after login are answered; a line that
        crosses the bound by one byte is refused with C{TOO_MUCH_DATA}.
        """
        s = Session(self, max_bytes_after_auth=300, max_lines_after_auth=1000)
        s.login()
        s.proto.dataReceived(b"PING\r\n" * 50)  # 300 bytes
        self.assertEqual(s.take(), [b"PONG"] * 50)
        self.assertFalse(s.transport.disconnecting)
        s.proto.dataReceived(b"\n")  # one byte: an empty line
        self.assertEqual(s.take(), [b"ERR TOO_MUCH_DATA too much data after authentication"])
        self.assertTrue(s.transport.disconnecting)

    def test_errors_one_past_the_bound(self):
        """
        C{max_errors} error replies keep the session; the next error closes it. Service
        refusals count too.
        """
        s = Session(self)
        s.login()
        for _ in range(10):
            self.assertTrue(s.send(b"OPEN nope")[0].startswith(b"ERR NO_SUCH_SERVICE"))
        self.assertFalse(s.transport.disconnecting)
        self.assertEqual(s.send(b"OPEN nope"), [b"ERR TOO_MANY_LINES too many errors"])
        self.assertTrue(s.transport.disconnecting)

    def test_failed_logins_have_their_own_budget(self):
        """
        C{AUTH_FAILED} is bounded by C{max_auth_attempts} alone: with more attempts than
        error replies allowed, every attempt is still answered C{AUTH_FAILED}.
        """
        s = Session(self, max_errors=2, max_auth_attempts=5)
        for attempt in range(5):
            reply = s.send(b"AUTH SCRAM-SHA-256 " + b64("garbage"))
            self.assertTrue(reply[0].startswith(b"ERR AUTH_FAILED"), (attempt, reply))
        self.assertTrue(s.transport.disconnecting)

    def test_open_deadline_counts_from_login(self):
        """
        A client that logs in and never sends C{OPEN} gets C{ERR TIMEOUT open deadline}
        C{open_timeout} after login (not after connecting), and not a moment before. (The
        connection's deadline is the configured one scaled by the stress at accept time.)
        """
        s = Session(self, open_timeout=5.0, handshake_timeout=60.0, idle_timeout=600.0)
        deadline = s.proto.limits.open_timeout
        self.assertTrue(4.0 < deadline <= 5.0, deadline)
        s.clock.advance(20)
        s.login()
        s.clock.advance(deadline - 0.01)
        self.assertEqual(s.take(), [])
        self.assertFalse(s.transport.disconnecting)
        s.clock.advance(0.01)
        self.assertEqual(s.take(), [b"ERR TIMEOUT open deadline"])
        self.assertTrue(s.transport.disconnecting)
        [timeout] = self.named("conn.timeout")
        self.assertEqual(timeout["which"], "open")

    def test_open_stops_the_deadline(self):
        """
        C{OPEN} before the deadline: the relay is never cut by it.
        """
        s = Session(self, open_timeout=5.0)
        s.login()
        self.assertEqual(s.send(b"OPEN echo"), [b"OK OPEN echo"])
        s.clock.advance(60)
        s.proto.dataReceived(b"still here")
        self.assertEqual(s.take(), [b"still here"])
        self.assertFalse(s.transport.disconnecting)


class ServiceTests(unittest.TestCase):
    def test_services_lists_allowed(self):
        s = Session(self)
        s.login()
        self.assertEqual(s.send(b"SERVICES"), [b"OK SERVICES echo"])

    def test_open_echo_and_binary_round_trip(self):
        s = Session(self)
        s.login()
        self.assertEqual(s.send(b"OPEN echo"), [b"OK OPEN echo"])
        payload = bytes(range(256)) * 4 + b"\r\n\x00ERR\n"
        s.proto.dataReceived(payload)
        self.assertEqual(s.transport.value(), payload)
        self.assertEqual(s.proto.bytes_up, len(payload))

    def test_bytes_pipelined_behind_open_are_relayed(self):
        s = Session(self)
        s.login()
        s.proto.dataReceived(b"OPEN echo\r\n\x00raw\r\nPING\r\n")
        self.assertEqual(s.transport.value(), b"OK OPEN echo\r\n\x00raw\r\nPING\r\n")

    def test_unknown_service(self):
        s = Session(self)
        s.login()
        self.assertTrue(s.send(b"OPEN nope")[0].startswith(b"ERR NO_SUCH_SERVICE"))

    def test_bad_service_name(self):
        s = Session(self)
        s.login()
        self.assertTrue(s.send(b"OPEN ../etc")[0].startswith(b"ERR NO_SUCH_SERVICE"))


class ClientServerTests(unittest.TestCase):
    """
    The real client and the real server protocols against each other over L{iosim}.
    """

    def connect(self, password=PASSWORD, service="echo"):
        clock = Clock()
        factory = make_factory(clock)
        server = factory.buildProtocol(None)
        received = []

        class Client(NGPClientProtocol):
            def service_data(self, data):
                received.append(data)

        client = Client(Credentials("alice", password), service, clock=clock)
        server_io, client_io = (
            iosim.FakeTransport(server, False),
            iosim.FakeTransport(client, True),
        )
        server.makeConnection(server_io)
        client.makeConnection(client_io)
        pump = iosim.IOPump(client, server, client_io, server_io, False, clock)
        clock.advance(1)
        pump.flush()
        return client, server, pump, received

    def test_full_session(self):
        client, server, pump, received = self.connect()
        self.assertTrue(client.opened.called)
        client.transport.write(b"hello\x00\xff")
        pump.flush()
        self.assertEqual(b"".join(received), b"hello\x00\xff")

    def test_wrong_password_fails_opened(self):
        client, _, _, _ = self.connect(password="bad")
        failure = self.failureResultOf(client.opened, NGPError)
        self.assertEqual(failure.value.code, "AUTH_FAILED")

    def test_no_such_service(self):
        client, _, _, _ = self.connect(service="nope")
        failure = self.failureResultOf(client.opened, NGPError)
        self.assertEqual(failure.value.code, "NO_SUCH_SERVICE")


class AdmissionWiringTests(unittest.TestCase):
    """
    The factory consults admission control before greeting, and sessions report offences,
    authentication and release.
    """

    def factory(self, **policy):
        import attrs

        clock = Clock()
        factory = make_factory(clock)
        factory.admission = type(factory.admission)(
            attrs.evolve(factory.config.admission, **policy), clock
        )
        return factory, clock

    def connect(self, factory, clock, host="192.0.2.7"):
        from twisted.internet.address import IPv4Address

        address = IPv4Address("TCP", host, 40000)
        proto = factory.buildProtocol(address)
        if proto is None:
            return None, None
        transport = StringTransport(peerAddress=address)
        proto.makeConnection(transport)
        clock.advance(1)
        return proto, transport

    def test_refused_connection_gets_busy_line_and_close(self):
        factory, clock = self.factory(per_source_max=1)
        first, _ = self.connect(factory, clock)
        second, transport = self.connect(factory, clock)
        self.assertEqual(transport.value(), b"ERR BUSY per-source-cap\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(factory.stats.counters["refused.per-source-cap"], 1)

    def test_refusal_is_the_admitting_factorys_and_aborts_after_write_timeout(self):
        """
        The gateway refuses through its L{AdmittingFactory}: a refused peer that does not
        read the line is cut off after the (reloaded) write timeout.
        """
        import attrs

        factory, clock = self.factory(per_source_max=1)
        config = factory.config
        factory.apply_config(
            attrs.evolve(config, limits=attrs.evolve(config.limits, write_timeout=5.0)),
            factory.users,
        )
        self.assertIs(factory.admitting.admission, factory.admission)
        self.connect(factory, clock)
        _, transport = self.connect(factory, clock)  # one second passes in connect
        clock.advance(3.9)
        self.assertFalse(transport.disconnected)
        clock.advance(0.1)
        self.assertTrue(transport.disconnected)

    def test_reject_event_carries_the_next_conn_id(self):
        """
        A refused connection is logged with its own connection id, taken from the same
        sequence as the sessions'.
        """
        from twisted.logger import capturedLogs

        factory, clock = self.factory(per_source_max=1)
        first, _ = self.connect(factory, clock)
        with capturedLogs() as events:
            self.connect(factory, clock)
        second, _ = self.connect(factory, clock, host="192.0.2.8")
        [event] = [e for e in events if e.get("event") == "conn.reject"]
        prefix, number = first.conn_id.split("-")
        self.assertEqual(event["conn_id"], f"{prefix}-{int(number, 16) + 1:x}")
        self.assertEqual(second.conn_id, f"{prefix}-{int(number, 16) + 2:x}")
        self.assertEqual((event["peer"], event["reason"]), ("192.0.2.7:40000", "per-source-cap"))
        self.assertEqual(factory.stats.counters["refused"], 1)

    def test_line_phase_deadlines_shortened_under_stress(self):
        """
        Under stress the handshake, idle and login-to-OPEN deadlines of a new connection are
        all shortened alike (a quarter of the pool in use: to 0.8125 of their value).
        """
        factory, clock = self.factory(max_unauthenticated=4)
        proto, _ = self.connect(factory, clock)
        configured = factory.framing_limits
        self.assertEqual(configured.open_timeout, 30.0)
        for name in ("handshake_timeout", "idle_timeout", "open_timeout"):
            self.assertAlmostEqual(
                getattr(proto.limits, name), getattr(configured, name) * 0.8125, msg=name
            )

    def test_silent_close_mode_builds_no_protocol(self):
        factory, clock = self.factory(per_source_max=1, reject_mode="close")
        self.connect(factory, clock)
        self.assertIsNone(self.connect(factory, clock)[0])

    def test_release_frees_the_slot(self):
        factory, clock = self.factory(per_source_max=1)
        first, _ = self.connect(factory, clock)
        first.connectionLost(None)
        second, transport = self.connect(factory, clock)
        self.assertTrue(transport.value().startswith(b"NETGUARD/1"))

    def test_auth_failures_become_a_penalty(self):
        """
        Failed logins are offences: the one that starts the block (the second, with a
        threshold of 2) is answered C{ERR BUSY penalised} and closes the connection, and a
        new connection from the source is refused.
        """
        factory, clock = self.factory(penalty_threshold=2)
        proto, transport = self.connect(factory, clock)
        transport.clear()  # the greeting
        for _ in range(3):
            proto.dataReceived(b"AUTH SCRAM-SHA-256 " + b64("garbage") + b"\r\n")
        self.assertEqual(
            transport.value(), b"ERR AUTH_FAILED authentication failed\r\nERR BUSY penalised\r\n"
        )
        self.assertTrue(transport.disconnecting)
        transport.clear()
        _, refused = self.connect(factory, clock)
        self.assertEqual(refused.value(), b"ERR BUSY penalised\r\n")

    def test_format_errors_count_once_per_connection(self):
        # Found by a review: 4 KiB of random bytes gave a dozen BAD_SYNTAX answers on one
        # connection and blocked the source for an hour.
        factory, clock = self.factory()
        proto, transport = self.connect(factory, clock)
        for _ in range(10):
            proto.dataReceived(b"\x01junk\r\n")
        self.assertEqual(transport.value().count(b"ERR BAD_SYNTAX"), 10)
        [(source, blocked, offences)] = factory.admission.penalties()
        self.assertEqual((offences, blocked), (1, 0.0))

    def test_authenticated_session_moves_to_relay_pool(self):
        factory, clock = self.factory()
        proto, transport = self.connect(factory, clock)
        client = ClientExchange("alice", PASSWORD)
        proto.dataReceived(b"AUTH SCRAM-SHA-256 " + b64(client.first()) + b"\r\n")
        cont = transport.value().split(b"\r\n")[-2]
        proto.dataReceived(b"CONT " + b64(client.final(unb64(cont[5:]))) + b"\r\n")
        self.assertTrue(proto.in_relay_pool)
        self.assertEqual(factory.admission.snapshot()["relays"], 1)
        proto.connectionLost(None)
        self.assertEqual(factory.admission.snapshot()["relays"], 0)


class InternalErrorTests(unittest.TestCase):
    def test_bug_in_a_handler_answers_internal_and_logs(self):
        s = Session(self)

        def broken():
            raise RuntimeError("a bug")

        s.proto.do_ping = broken
        self.assertEqual(s.send(b"PING"), [b"ERR INTERNAL internal error"])
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class SessionMemoryTests(unittest.TestCase):
    """
    What each connection's session object costs: its own state is in slots, and the names
    left in its instance dict stay under CPython's bound for key-sharing instance dicts.
    """

    #: CPython (3.11) shares one key table among a class's instance dicts only while the
    #: class has fewer than 30 attribute names; past that every instance carries a full
    #: dict of its own (about 1.6 KiB instead of about 0.3, measured with tracemalloc).
    SHARED_KEYS_BOUND = 29

    def test_session_state_is_in_slots(self) -> None:
        """
        The session's own attributes (state, user, counters...) are not in its dict.
        """
        s = Session(self)
        s.login()
        names = set(vars(s.proto))
        for name in GatewaySession.__slots__:
            self.assertNotIn(name, names)
        self.assertEqual(s.proto.state, SessionState.AUTHENTICATED)

    def test_instance_dict_names_stay_under_the_shared_keys_bound(self) -> None:
        """
        Across every path a session can take (greeting, bad lines, a failed and a good
        login, a refused and a good OPEN, relayed bytes, close), the names ever
        set in session dicts stay below the bound, so every session's dict stays compact.
        """
        seen: set[str] = set()
        bad = Session(self)
        bad.send(b"PING")
        bad.send(b"NOPE")
        bad.login(password="wrong")
        seen |= set(vars(bad.proto))
        good = Session(self)
        good.login()
        good.send(b"SERVICES")
        good.send(b"OPEN nothing-here")
        good.send(b"OPEN echo")
        good.proto.dataReceived(b"raw bytes")
        seen |= set(vars(good.proto))
        good.proto.connectionLost(None)
        seen |= set(vars(good.proto))
        self.assertLessEqual(len(seen), self.SHARED_KEYS_BOUND, sorted(seen))

    def test_sessions_accepted_at_the_same_stress_share_one_limits_value(self) -> None:
        """
        Two connections accepted at the same stress (the first gone before the second
        comes) hold the same framing-limits object, not a copy each.
        """
        clock = Clock()
        factory = make_factory(clock)
        first = factory.buildProtocol(None)
        first.makeConnection(StringTransport())
        first.connectionLost(None)
        second = factory.buildProtocol(None)
        second.makeConnection(StringTransport())
        self.addCleanup(second.connectionLost, None)
        self.assertIs(first.limits, second.limits)

    def test_limits_still_scale_with_stress(self) -> None:
        """
        A connection accepted while another is still in the line phase gets its line-phase
        timeouts scaled to that stress: shorter than the first one's, the other bounds equal.
        """
        clock = Clock()
        factory = make_factory(clock)
        first = factory.buildProtocol(None)
        first.makeConnection(StringTransport())
        second = factory.buildProtocol(None)
        second.makeConnection(StringTransport())
        for proto in (first, second):
            self.addCleanup(proto.connectionLost, None)
        self.assertLess(second.limits.handshake_timeout, first.limits.handshake_timeout)
        self.assertLess(second.limits.idle_timeout, first.limits.idle_timeout)
        self.assertEqual(second.limits.max_line_length, first.limits.max_line_length)

    def test_shared_limits_values_are_bounded(self) -> None:
        """
        However many stress levels connections arrive at, the factory keeps at most
        C{_SCALED_KEPT} shared values (they are forgotten together at the bound).
        """
        from netguard.gateway.factory import _SCALED_KEPT

        clock = Clock()
        factory = make_factory(clock)
        factory.admission.policy = attrs.evolve(
            factory.admission.policy,
            max_connections=4 * _SCALED_KEPT,
            max_unauthenticated=4 * _SCALED_KEPT,
            red_soft=4 * _SCALED_KEPT,
            red_hard=4 * _SCALED_KEPT,
            per_source_max=4 * _SCALED_KEPT,
            per_source_burst=4 * _SCALED_KEPT,
        )
        for _ in range(_SCALED_KEPT + 2):
            proto = factory.buildProtocol(None)
            self.assertIsInstance(proto, GatewaySession)
            proto.makeConnection(StringTransport())
            self.addCleanup(proto.connectionLost, None)
        self.assertLessEqual(len(factory._scaled[1]), _SCALED_KEPT)

    def test_no_offence_set_per_session_until_an_offence(self) -> None:
        """
        Sessions without an offence share one empty offence set instead of holding one each.
        """
        first, second = Session(self), Session(self)
        self.assertIs(first.proto._offences, second.proto._offences)
        self.assertEqual(first.proto._offences, frozenset())

    def test_relaying_session_drops_its_line_phase_leftovers(self) -> None:
        """
        Once relaying, a session holds no list for bytes that came while the backend
        connected, and its emptied timer table is released (no timer left either).
        """
        s = Session(self)
        s.login()
        self.assertEqual(s.send(b"OPEN echo"), [b"OK OPEN echo"])
        self.assertIsNone(s.proto._pending)
        self.assertEqual(s.proto._timers, {})
        self.assertEqual(sys.getsizeof(s.proto._timers), sys.getsizeof({}))
        s.proto.dataReceived(b"still relayed")
        self.assertEqual(s.take(), [b"still relayed"])

    def test_relay_meter_is_slotted_and_reads_the_live_bytes(self) -> None:
        """
        The meter the stats hold per relay is a two-slot object that reads the bytes
        relayed so far each way.
        """
        s = Session(self)
        s.login()
        s.send(b"OPEN echo")
        s.proto.dataReceived(b"12345")
        s.take()
        meter = s.factory.stats._live[s.proto].meter
        self.assertFalse(hasattr(meter, "__dict__"))
        self.assertEqual(meter(), (5, 5))

    def test_mechanism_kept_is_the_shared_constant(self) -> None:
        """
        The mechanism a session logged in with is held as the module's constant, not a
        string decoded per session.
        """
        s = Session(self)
        s.login()
        self.assertIs(s.proto._mechanism, SCRAM_SHA_256)

    def test_user_name_is_one_string_per_user(self) -> None:
        """
        Sessions of one user hold the same (interned) name string, not a copy each.
        """
        first, second = Session(self), Session(self)
        first.login()
        second.login()
        self.assertEqual(first.proto.user, "alice")
        self.assertIs(first.proto.user, second.proto.user)


class TransportKeySharingTests(unittest.TestCase):
    """
    The names Twisted's TCP transports set after their constructor are shared before
    connections arrive, so a burst of accepted connections keeps small instance dicts.
    """

    #: What a C{tcp.Server} sets in its constructor.
    INIT_NAMES = (
        "_tempDataBuffer", "_tempDataLen", "client", "connected", "fileno", "hostname",
        "logstr", "protocol", "reactor", "repstr", "server", "sessionno", "socket",
    )  # fmt: skip

    def burst(self, cls: type) -> int:
        """
        Sixty-four instances of C{cls} built before any writes, then each written to (the
        names set on a first write, producer and close): the largest instance dict.
        """
        from netguard.shared_keys import TRANSPORT_LATE_NAMES

        instances = []
        for _ in range(64):
            instance = cls.__new__(cls)
            for name in self.INIT_NAMES:  # as its constructor does
                setattr(instance, name, None)
            instances.append(instance)
        for instance in instances:
            for name in TRANSPORT_LATE_NAMES:
                setattr(instance, name, None)
        return max(sys.getsizeof(vars(instance)) for instance in instances)

    def test_unix_transports_are_shared_too(self):
        """
        The names are shared for Unix-socket transports as well as TCP ones: a listener or
        a backend may be either, and the kernel relay sets C{doRead} on both kinds.
        """
        from twisted.internet import tcp, unix

        from netguard.shared_keys import transport_classes

        self.assertEqual(
            set(transport_classes()), {tcp.Server, tcp.Client, unix.Server, unix.Client}
        )

    def test_shared_names_keep_dicts_small(self) -> None:
        """
        With the late names shared first, every transport of a burst keeps a shared (small)
        dict; without, on CPython 3.11, the later ones each get a full dict of their own.
        """
        from twisted.internet import tcp

        from netguard.shared_keys import share_transport_keys

        class Shared(tcp.Server):
            pass  # fresh classes: their shared keys start empty, as at process start

        class NotShared(tcp.Server):
            pass

        share_transport_keys((Shared,))
        self.assertLess(self.burst(Shared), 512)
        if sys.version_info[:2] == (3, 11):
            self.assertGreater(self.burst(NotShared), 512)

    def test_factory_shares_twisted_tcp_transport_names(self) -> None:
        """
        Building the gateway's factory shares the names of Twisted's TCP transports (the
        default classes of L{share_transport_keys}).
        """
        from netguard.gateway import factory as factory_module

        calls: list[object] = []
        self.patch(factory_module, "share_transport_keys", lambda *a: calls.append(a))
        make_factory(Clock())
        self.assertEqual(calls, [()])

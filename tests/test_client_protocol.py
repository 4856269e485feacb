"""
Tests for L{netguard.client.protocol}: the NGP/1 client state machine on a L{StringTransport}
and a L{Clock}, against a server scripted by each test. The script runs the real SCRAM server
logic (L{ServerExchange}) and cheats where the test says so: a forged signature, a stripped
channel-binding offer, replies out of order or oversized, silence. Each cheat must fail the
client closed (L{NGPClientProtocol.opened} fails with a typed error naming what was wrong,
the connection is closed, nothing more is sent, no raw byte reaches the application).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.auth.scram import (
    THREAD_ITERATIONS,
    AuthFailed,
    ServerExchange,
    decode_wire,
    encode_wire,
)
from netguard.auth.users import UserRecord, make_record
from netguard.client.key_derivation import MAX_JOBS, KeyDeriver
from netguard.client.protocol import (
    CLIENT_LIMITS,
    FAILURE_REASONS,
    OPEN_TIMEOUT,
    ClientState,
    Credentials,
    NGPClientProtocol,
    NGPError,
    NGPProtocolError,
)
from netguard.tls import TLS_SERVER_END_POINT

PASSWORD = "correct horse battery staple"
RECORD = make_record("alice", PASSWORD)
BINDING = (TLS_SERVER_END_POINT, bytes(range(32)))
PLAIN_GREETING = b"NETGUARD/1 netguard AUTH=SCRAM-SHA-256 MAXLINE=1024"
TLS_GREETING = b"NETGUARD/1 netguard AUTH=SCRAM-SHA-256,SCRAM-SHA-256-PLUS MAXLINE=1024"


class _OneUserStore:
    """
    A verifier store holding one record, whatever it says (the real L{UserStore} checks
    records; a hostile server's forged ServerKey need not pass those checks).
    """

    def __init__(self, record: UserRecord):
        self.record = record

    def lookup(self, name: str) -> UserRecord | None:
        return self.record if name == self.record.name else None

    def auth_info(self, name: str) -> tuple[bytes, bytes, bytes, int]:
        return self.record.auth_info()


class HostileServerScript:
    """
    The server side of one session, written for these tests: the real SCRAM server logic
    (L{ServerExchange}) driven by hand, so a test can answer honestly up to the point where it
    cheats.

    @ivar client: the client under test, on a L{StringTransport}.
    """

    def __init__(
        self,
        test: unittest.TestCase,
        record: UserRecord = RECORD,
        tls: bool = False,
        **client_options: object,
    ):
        """
        @param record: the verifier the server uses (a forged one to cheat).
        @param tls: pretend the connection is TLS: the client and the server then both hold
            the same channel binding (L{BINDING}).
        @param client_options: more arguments for the client protocol.
        """
        self.clock = Clock()
        self.record = record
        self.server_binding = BINDING if tls else None
        if tls:
            client_options["channel_binding"] = BINDING
        self.client = RecordingClient(
            Credentials("alice", PASSWORD), "echo", clock=self.clock, **client_options
        )
        self.transport = StringTransport()
        self.client.makeConnection(self.transport)
        self.exchange: ServerExchange | None = None
        test.addCleanup(self.end)

    def end(self) -> None:
        """
        Lose the connection at the end of the test; a still-pending C{opened} fails then.
        """
        self.client.connectionLost(Failure(Exception("test over")))
        self.client.opened.addErrback(lambda _: None)

    def sent(self) -> list[bytes]:
        """
        The lines the client has sent so far (and clear them).
        """
        out = self.transport.value()
        self.transport.clear()
        assert out.endswith(b"\r\n") or not out, out
        return out.split(b"\r\n")[:-1]

    def feed(self, data: bytes) -> None:
        """
        Deliver C{data} from the server to the client.
        """
        self.client.dataReceived(data)

    def reply(self, line: bytes) -> None:
        """
        Deliver one server line to the client.
        """
        self.feed(line + b"\r\n")

    def answer_auth(self, greeting: bytes = PLAIN_GREETING) -> bytes:
        """
        Greet, read the client's AUTH and compute the honest CONT line (not sent).
        """
        self.reply(greeting)
        [auth] = self.sent()
        verb, mechanism, token = auth.split(b" ")
        assert verb == b"AUTH", auth
        binding = self.server_binding if mechanism.endswith(b"-PLUS") else None
        self.exchange = ServerExchange(
            _OneUserStore(self.record), mechanism.decode(), channel_binding=binding
        )
        return b"CONT " + encode_wire(self.exchange.first(decode_wire(token)))

    def answer_cont(self, greeting: bytes = PLAIN_GREETING) -> bytes:
        """
        Run the honest exchange up to the client's CONT and compute the honest OK line.
        """
        self.reply(self.answer_auth(greeting))
        [cont] = self.sent()
        assert cont.startswith(b"CONT "), cont
        assert self.exchange is not None
        return b"OK " + encode_wire(self.exchange.final(decode_wire(cont[5:])))

    def login(self, greeting: bytes = PLAIN_GREETING) -> None:
        """
        An honest login: the client then sends OPEN.
        """
        self.reply(self.answer_cont(greeting))
        assert self.sent() == [b"OPEN echo"]


class RecordingClient(NGPClientProtocol):
    """
    The real client protocol, recording what its application would have seen.
    """

    def __init__(self, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.app_events: list[object] = []

    def service_opened(self) -> None:
        self.app_events.append("opened")

    def service_data(self, data: bytes) -> None:
        self.app_events.append(data)


def flip_signature(ok_line: bytes) -> bytes:
    """
    The same C{OK} line with one bit of the server signature flipped.
    """
    message = decode_wire(ok_line[3:])
    assert message.startswith("v="), message
    signature = bytearray(base64.b64decode(message[2:]))
    signature[7] ^= 0x01
    forged = "v=" + base64.b64encode(bytes(signature)).decode()
    return b"OK " + encode_wire(forged)


class ClientTestCase(unittest.TestCase):
    """
    Assertions shared by the client tests.
    """

    def assert_failed_closed(
        self, script: HostileServerScript, error: type[Exception], reason: str | None = None
    ) -> Exception:
        """
        The client failed with C{error} (of C{reason}), closed the connection, sent nothing
        after the cheat, and its application saw nothing.
        """
        failure = self.failureResultOf(script.client.opened, error)
        self.assertIs(script.client.state, ClientState.FAILED)
        self.assertTrue(script.transport.disconnecting)
        self.assertEqual(script.sent(), [])
        self.assertEqual(script.client.app_events, [])
        if reason is not None:
            assert isinstance(failure.value, NGPProtocolError)
            self.assertEqual(failure.value.reason, reason)
            self.assertIn(reason, FAILURE_REASONS)
        # Whatever the server sends afterwards is read by nobody.
        script.feed(b"OK OPEN echo\r\njunk after the failure")
        self.assertEqual(script.sent(), [])
        self.assertEqual(script.client.app_events, [])
        return failure.value


class HonestServerTests(ClientTestCase):
    """
    The controls: against an honest server the client opens the service.
    """

    def test_honest_login_opens_the_service(self) -> None:
        """
        Greeting, AUTH, CONT, verified OK, OPEN, OK OPEN: raw bytes in the same read as
        C{OK OPEN} reach the application, in order.
        """
        script = HostileServerScript(self)
        script.login()
        script.feed(b"OK OPEN echo\r\n\x00raw\r\nPING\r\n")
        self.assertIsNone(self.successResultOf(script.client.opened))
        self.assertEqual(script.client.app_events, ["opened", b"\x00raw\r\nPING\r\n"])
        self.assertFalse(script.transport.disconnecting)

    def test_open_is_sent_only_after_the_signature_verified(self) -> None:
        """
        Until the OK line with the server signature arrives, the client sends nothing after
        its CONT (in particular no OPEN).
        """
        script = HostileServerScript(self)
        ok = script.answer_cont()
        self.assertEqual(script.sent(), [])
        script.reply(ok)
        self.assertEqual(script.sent(), [b"OPEN echo"])

    def test_deadlines_end_once_open(self) -> None:
        """
        Once the service is open no client deadline cuts it (the relay bounds it instead).
        """
        script = HostileServerScript(self)
        script.login()
        script.reply(b"OK OPEN echo")
        script.clock.advance(10 * OPEN_TIMEOUT)
        self.assertFalse(script.transport.disconnecting)


class ServerSignatureTests(ClientTestCase):
    """
    Mutual authentication: a server that cannot prove it holds the user's verifier is
    refused before C{OPEN} is sent.
    """

    def test_flipped_signature_is_refused(self) -> None:
        """
        The real server-final-message with one bit of its signature flipped: L{AuthFailed}
        (server not verified), no OPEN.
        """
        script = HostileServerScript(self)
        script.reply(flip_signature(script.answer_cont()))
        error = self.assert_failed_closed(script, AuthFailed)
        self.assertIn("did not prove it holds your verifier", str(error))

    def test_signature_made_with_another_server_key_is_refused(self) -> None:
        """
        A server that holds the user's StoredKey (so it can check the proof) but not its
        ServerKey signs with another key: refused.
        """
        forged = attrs.evolve(RECORD, server_key=os.urandom(32))
        script = HostileServerScript(self, record=forged)
        script.reply(script.answer_cont())
        error = self.assert_failed_closed(script, AuthFailed)
        self.assertIn("did not prove it holds your verifier", str(error))

    def test_forged_signature_followed_by_ok_open_and_data(self) -> None:
        """
        A forged OK, a pipelined C{OK OPEN echo} and service bytes in one read: the client
        stops at the forged OK; the bytes never reach the application.
        """
        script = HostileServerScript(self)
        script.feed(flip_signature(script.answer_cont()) + b"\r\nOK OPEN echo\r\nsecret")
        self.assert_failed_closed(script, AuthFailed)

    def test_server_error_instead_of_signature(self) -> None:
        """
        A server-final-message carrying C{e=} instead of C{v=}: refused.
        """
        script = HostileServerScript(self)
        script.answer_cont()
        script.reply(b"OK " + encode_wire("e=other-error"))
        self.assert_failed_closed(script, AuthFailed)

    def test_ok_without_a_signature(self) -> None:
        """
        A bare C{OK} (no server-final-message at all): refused, never taken as success.
        """
        script = HostileServerScript(self)
        script.answer_cont()
        script.reply(b"OK")
        error = self.assert_failed_closed(script, NGPProtocolError, "unexpected-reply")
        self.assertIn("OK (the server signature)", str(error))

    def test_server_first_not_extending_our_nonce(self) -> None:
        """
        A server-first-message whose nonce does not extend the client's: refused at CONT.
        """
        script = HostileServerScript(self)
        script.answer_auth()
        script.reply(b"CONT " + encode_wire("r=someoneelse,s=QSXCR+Q6sek8bf92,i=4096"))
        error = self.assert_failed_closed(script, AuthFailed)
        self.assertIn("server-first", str(error))


class ChannelBindingTests(ClientTestCase):
    """
    On TLS the client binds its login to the certificate it received, and refuses a
    greeting that hides the binding mechanism.
    """

    def test_tls_greeting_with_plus_is_bound(self) -> None:
        """
        On TLS, with PLUS offered, the client picks C{SCRAM-SHA-256-PLUS} and its gs2 header
        names C{tls-server-end-point}.
        """
        script = HostileServerScript(self, tls=True)
        script.reply(TLS_GREETING)
        [auth] = script.sent()
        self.assertTrue(auth.startswith(b"AUTH SCRAM-SHA-256-PLUS "), auth)
        self.assertTrue(decode_wire(auth.split(b" ")[2]).startswith("p=tls-server-end-point,,"))

    def test_stripped_plus_offer_on_tls_is_refused(self) -> None:
        """
        On TLS, a greeting offering only C{SCRAM-SHA-256} is a downgrade: refused before any
        SCRAM message is sent.
        """
        script = HostileServerScript(self, tls=True)
        script.reply(PLAIN_GREETING)
        error = self.assert_failed_closed(script, NGPProtocolError, "downgrade")
        self.assertIn("SCRAM-SHA-256-PLUS", str(error))

    def test_without_the_requirement_the_client_still_says_it_could_bind(self) -> None:
        """
        With C{require_channel_binding=False} a stripped offer is answered with
        C{SCRAM-SHA-256} and gs2 flag C{y} (never C{n}), so a gateway that did offer PLUS
        detects the downgrade.
        """
        script = HostileServerScript(self, tls=True, require_channel_binding=False)
        script.reply(PLAIN_GREETING)
        [auth] = script.sent()
        self.assertTrue(auth.startswith(b"AUTH SCRAM-SHA-256 "), auth)
        self.assertTrue(decode_wire(auth.split(b" ")[2]).startswith("y,,"))

    def test_server_that_offered_plus_refuses_the_y_flag(self) -> None:
        """
        The other half of that promise: the real server logic, knowing its channel binding,
        refuses the C{y} login (so the flag is a real check, not decoration).
        """
        script = HostileServerScript(self, tls=True, require_channel_binding=False)
        script.reply(PLAIN_GREETING)
        [auth] = script.sent()
        server = ServerExchange(_OneUserStore(RECORD), "SCRAM-SHA-256", channel_binding=BINDING)
        self.assertRaises(AuthFailed, server.first, decode_wire(auth.split(b" ")[2]))

    def test_plain_connection_says_it_cannot_bind(self) -> None:
        """
        Without TLS there is nothing to bind to: gs2 flag C{n}.
        """
        script = HostileServerScript(self)
        script.reply(PLAIN_GREETING)
        [auth] = script.sent()
        self.assertTrue(decode_wire(auth.split(b" ")[2]).startswith("n,,"))


class OutOfOrderTests(ClientTestCase):
    """
    Every reply NGP/1 does not allow in the client's state fails it closed.
    """

    def test_ssh_banner_is_not_a_gateway(self) -> None:
        """
        An SSH server's banner: C{not-a-gateway}, nothing sent.
        """
        script = HostileServerScript(self)
        script.reply(b"SSH-2.0-OpenSSH_9.6p1 Debian-4")
        error = self.assert_failed_closed(script, NGPProtocolError, "not-a-gateway")
        self.assertIn("SSH-2.0", str(error))

    def test_http_reply_is_not_a_gateway(self) -> None:
        """
        An HTTP status line: C{not-a-gateway}.
        """
        script = HostileServerScript(self)
        script.reply(b"HTTP/1.1 400 Bad Request")
        self.assert_failed_closed(script, NGPProtocolError, "not-a-gateway")

    def test_binary_greeting_is_not_a_gateway(self) -> None:
        """
        Non-ASCII bytes in the greeting: an unexpected reply, not a traceback.
        """
        script = HostileServerScript(self)
        script.reply(b"NETGUARD/1 \xff\xfe AUTH=SCRAM-SHA-256")
        self.assert_failed_closed(script, NGPProtocolError, "unexpected-reply")

    def test_greeting_without_a_known_mechanism(self) -> None:
        """
        A greeting that offers only mechanisms the client does not speak.
        """
        script = HostileServerScript(self)
        script.reply(b"NETGUARD/1 netguard AUTH=PLAIN,CRAM-MD5")
        self.assert_failed_closed(script, NGPProtocolError, "no-common-mechanism")

    def test_ok_before_cont(self) -> None:
        """
        C{OK <signature-looking token>} while the client waits for CONT.
        """
        script = HostileServerScript(self)
        script.answer_auth()
        script.reply(b"OK " + encode_wire("v=" + base64.b64encode(os.urandom(32)).decode()))
        error = self.assert_failed_closed(script, NGPProtocolError, "unexpected-reply")
        self.assertIn("waiting for CONT", str(error))

    def test_ok_open_before_ok(self) -> None:
        """
        C{OK OPEN echo} (and service bytes) instead of the server signature: no OPEN is ever
        sent, no byte reaches the application.
        """
        script = HostileServerScript(self)
        script.answer_cont()
        script.feed(b"OK OPEN echo\r\nservice bytes")
        error = self.assert_failed_closed(script, NGPProtocolError, "unexpected-reply")
        self.assertIn("OK (the server signature)", str(error))

    def test_second_greeting(self) -> None:
        """
        A second greeting while the client waits for CONT.
        """
        script = HostileServerScript(self)
        script.answer_auth()
        script.reply(PLAIN_GREETING)
        self.assert_failed_closed(script, NGPProtocolError, "unexpected-reply")

    def test_second_cont(self) -> None:
        """
        The CONT line again while the client waits for the signature.
        """
        script = HostileServerScript(self)
        cont = script.answer_auth()
        script.reply(cont)
        script.sent()
        script.reply(cont)
        self.assert_failed_closed(script, NGPProtocolError, "unexpected-reply")

    def test_ok_open_for_another_service(self) -> None:
        """
        C{OK OPEN admin} when the client asked for C{echo}: refused; the bytes after it
        never reach the application.
        """
        script = HostileServerScript(self)
        script.login()
        script.feed(b"OK OPEN admin\r\nadmin bytes")
        error = self.assert_failed_closed(script, NGPProtocolError, "unexpected-reply")
        self.assertIn("OK OPEN echo", str(error))

    def test_ok_open_with_trailing_text(self) -> None:
        """
        C{OK OPEN echo extra}: the exact line is required.
        """
        script = HostileServerScript(self)
        script.login()
        script.reply(b"OK OPEN echo extra")
        self.assert_failed_closed(script, NGPProtocolError, "unexpected-reply")

    def test_err_in_each_state_is_a_refusal(self) -> None:
        """
        C{ERR <code> <text>} at any point before the service is open fails with L{NGPError}
        carrying the escaped code and text.
        """
        steps = [
            lambda s: None,
            lambda s: s.answer_auth(),
            lambda s: s.answer_cont(),
            lambda s: s.login(),
        ]
        for step in steps:
            script = HostileServerScript(self)
            step(script)
            script.reply(b"ERR AUTH_FAILED no\x1b[31m")
            error = self.assert_failed_closed(script, NGPError)
            assert isinstance(error, NGPError)
            self.assertEqual(error.code, "AUTH_FAILED")
            self.assertNotIn("\x1b", error.text)


class OversizedReplyTests(ClientTestCase):
    """
    The client reads the server with bounded framing: a reply line longer than
    C{CLIENT_LIMITS.max_line_length}, with or without newline, fails it at once.
    """

    bound = CLIENT_LIMITS.max_line_length

    def greeting_of_length(self, length: int) -> bytes:
        head = b"NETGUARD/1 "
        tail = b" AUTH=SCRAM-SHA-256"
        return head + b"n" * (length - len(head) - len(tail)) + tail

    def test_greeting_at_the_bound_is_read(self) -> None:
        """
        A greeting of exactly the bound is accepted (the client answers AUTH).
        """
        script = HostileServerScript(self)
        script.reply(self.greeting_of_length(self.bound))
        [auth] = script.sent()
        self.assertTrue(auth.startswith(b"AUTH "))

    def test_greeting_one_past_the_bound(self) -> None:
        """
        One byte more: C{line-too-long}.
        """
        script = HostileServerScript(self)
        script.reply(self.greeting_of_length(self.bound + 1))
        error = self.assert_failed_closed(script, NGPProtocolError, "line-too-long")
        self.assertIn(str(self.bound), str(error))

    def test_endless_line_without_newline(self) -> None:
        """
        A line that never ends is refused as soon as it passes the bound, before any newline;
        up to the bound the client just waits.
        """
        script = HostileServerScript(self)
        script.feed(b"N" * self.bound)
        self.assertNoResult(script.client.opened)
        script.feed(b"N")
        self.assert_failed_closed(script, NGPProtocolError, "line-too-long")

    def test_endless_line_in_small_pieces(self) -> None:
        """
        The same line arriving a few bytes at a time is cut at the same bound.
        """
        script = HostileServerScript(self)
        script.answer_auth()
        for _ in range(self.bound // 8 + 1):
            script.feed(b"CONTCONT")
        self.assert_failed_closed(script, NGPProtocolError, "line-too-long")

    def test_huge_base64_token(self) -> None:
        """
        A CONT with a 64 KiB base64 token: refused for its length, never decoded.
        """
        script = HostileServerScript(self)
        script.answer_auth()
        script.reply(b"CONT " + base64.b64encode(os.urandom(48 * 1024)))
        self.assert_failed_closed(script, NGPProtocolError, "line-too-long")

    def test_oversized_reply_after_authentication(self) -> None:
        """
        The line bound holds after authentication too (while waiting for C{OK OPEN}).
        """
        script = HostileServerScript(self)
        script.login()
        script.feed(b"OK OPEN echo" + b" " * self.bound)
        self.assert_failed_closed(script, NGPProtocolError, "line-too-long")

    def test_token_that_is_not_a_scram_message(self) -> None:
        """
        A CONT token within the bound that decodes to binary junk: refused, no CONT sent.
        """
        script = HostileServerScript(self)
        script.answer_auth()
        script.reply(b"CONT " + base64.b64encode(b"\xff" * 600))
        self.assert_failed_closed(script, NGPProtocolError, "unexpected-reply")


class SilentServerTests(ClientTestCase):
    """
    Deadlines: a server that stops answering cannot hold the client.
    """

    def test_greeting_never_comes(self) -> None:
        """
        No greeting within C{CLIENT_LIMITS.handshake_timeout}: C{handshake-timeout}.
        """
        script = HostileServerScript(self)
        script.clock.advance(CLIENT_LIMITS.handshake_timeout - 0.1)
        self.assertNoResult(script.client.opened)
        script.clock.advance(0.1)
        error = self.assert_failed_closed(script, NGPProtocolError, "handshake-timeout")
        self.assertIn("waiting for the greeting", str(error))

    def test_cont_never_comes(self) -> None:
        """
        The greeting, then silence after AUTH: C{handshake-timeout} waiting for CONT.
        """
        script = HostileServerScript(self)
        script.answer_auth()
        script.clock.advance(CLIENT_LIMITS.handshake_timeout)
        error = self.assert_failed_closed(script, NGPProtocolError, "handshake-timeout")
        self.assertIn("waiting for CONT", str(error))

    def test_trickling_greeting_does_not_extend_the_deadline(self) -> None:
        """
        A byte every few seconds (never a full line) does not move the handshake deadline.
        """
        script = HostileServerScript(self)
        for _ in range(int(CLIENT_LIMITS.handshake_timeout // 5)):
            script.feed(b"N")
            script.clock.advance(5)
        self.assert_failed_closed(script, NGPProtocolError, "handshake-timeout")

    def test_open_answer_never_comes(self) -> None:
        """
        After OPEN the client waits C{OPEN_TIMEOUT} for the answer, then fails
        C{open-timeout}.
        """
        script = HostileServerScript(self)
        script.login()
        script.clock.advance(OPEN_TIMEOUT - 0.1)
        self.assertNoResult(script.client.opened)
        script.clock.advance(0.1)
        error = self.assert_failed_closed(script, NGPProtocolError, "open-timeout")
        self.assertIn("OPEN echo", str(error))

    def test_trickling_open_answer_does_not_extend_the_deadline(self) -> None:
        """
        Bytes of a never-finished C{OK OPEN} line, one every minute, do not reset the open
        deadline (the idle timer would have).
        """
        script = HostileServerScript(self)
        script.login()
        for _ in range(int(OPEN_TIMEOUT // 60) + 1):
            script.feed(b"O")
            script.clock.advance(60)
        self.assert_failed_closed(script, NGPProtocolError, "open-timeout")

    def test_open_timeout_is_configurable(self) -> None:
        """
        C{open_timeout} sets the open deadline.
        """
        script = HostileServerScript(self, open_timeout=5.0)
        script.login()
        script.clock.advance(5.0)
        self.assert_failed_closed(script, NGPProtocolError, "open-timeout")


class CancelTests(ClientTestCase):
    """
    A caller that gives up (a tunnel's local program went away) closes the connection.
    """

    def test_cancel_closes_the_connection(self) -> None:
        """
        Cancelling L{NGPClientProtocol.opened} mid-handshake closes the connection, and a
        login the server completes afterwards opens nothing.
        """
        script = HostileServerScript(self)
        ok = script.answer_cont()
        script.client.opened.cancel()
        self.failureResultOf(script.client.opened, CancelledError)
        self.assertTrue(script.transport.disconnecting)
        script.feed(ok + b"\r\nOK OPEN echo\r\ndata")
        self.assertEqual(script.sent(), [])
        self.assertEqual(script.client.app_events, [])

    def test_connection_lost_mid_handshake(self) -> None:
        """
        The server closing before the service is open fails with C{closed}, naming the
        state.
        """
        script = HostileServerScript(self)
        script.answer_auth()
        script.client.connectionLost(Failure(Exception("gone")))
        failure = self.failureResultOf(script.client.opened, NGPProtocolError)
        self.assertEqual(failure.value.reason, "closed")
        self.assertIn("waiting for CONT", str(failure.value))


class TLSVerificationReasonTests(unittest.TestCase):
    """
    A connection lost because the server's certificate failed our verification fails
    L{NGPClientProtocol.opened} with C{reason="tls-verification"} (so callers can tell it
    from a temporary loss); any other loss before the service is open stays C{"closed"}.
    """

    def lost_with(self, error: Exception) -> NGPProtocolError:
        client = NGPClientProtocol(Credentials("alice", PASSWORD), "echo", clock=Clock())
        client.makeConnection(StringTransport())
        client.connectionLost(Failure(error))
        failure = self.failureResultOf(client.opened, NGPProtocolError)
        assert isinstance(failure.value, NGPProtocolError)
        self.assertIn(failure.value.reason, FAILURE_REASONS)
        self.assertIn(
            "connection closed during the handshake, waiting for the greeting",
            str(failure.value),
        )
        return failure.value

    def test_pin_or_name_failure(self) -> None:
        """
        L{TLSVerificationError} (a pin or name check) is a verification failure, and its
        words are kept in the message.
        """
        from netguard.tls.errors import TLSVerificationError

        error = self.lost_with(TLSVerificationError("server key pin-sha256 X matches no pin"))
        self.assertEqual(error.reason, "tls-verification")
        self.assertIn("matches no pin", str(error))

    def test_openssl_chain_failure(self) -> None:
        """
        OpenSSL's C{certificate verify failed} (an untrusted or expired chain) is one too.
        """
        from OpenSSL.SSL import Error

        error = self.lost_with(Error([("SSL routines", "", "certificate verify failed")]))
        self.assertEqual(error.reason, "tls-verification")

    def test_server_refused_our_certificate(self) -> None:
        """
        A certificate alert from the server (ours missing where one is required, or not
        trusted) is C{"tls-refused"}: the same certificate cannot do better next time.
        """
        from OpenSSL.SSL import Error

        for alert in (
            "tlsv13 alert certificate required",
            "sslv3 alert bad certificate",
            "tlsv1 alert unknown ca",
            "sslv3 alert certificate expired",
        ):
            error = self.lost_with(Error([("SSL routines", "", alert)]))
            self.assertEqual(error.reason, "tls-refused", alert)
            self.assertIn(alert, str(error))

    def test_other_losses_stay_closed(self) -> None:
        """
        A TLS error that is not a verification (the peer closed during the handshake) and a
        plain close are C{"closed"}: temporary, as before.
        """
        from OpenSSL.SSL import Error
        from twisted.internet.error import ConnectionDone, ConnectionLost

        for error in (
            Error([("SSL routines", "", "unexpected eof while reading")]),
            Error([("SSL routines", "", "tlsv1 alert internal error")]),
            ConnectionDone(),
            ConnectionLost(),
        ):
            self.assertEqual(self.lost_with(error).reason, "closed", error)


class HeldThread:
    """
    Stands in for the deriver's thread: records each function and hands back a
    L{Deferred} that L{finish} fires with the function's result (or L{fail} with an error).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, function: Callable[[], Any]) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        self.calls.append((function, done))
        return done

    def finish(self) -> None:
        """
        The thread runs the function and the reactor gets its result.
        """
        self.start()
        self.deliver()

    def start(self) -> None:
        """
        The thread runs the function (its result reaches the reactor at L{deliver}).
        """
        [(function, done)] = self.calls
        self.started = (function(), done)

    def deliver(self) -> None:
        result, done = self.started
        self.calls.clear()
        done.callback(result)

    def fail(self, error: Exception) -> None:
        [(_, done)] = self.calls
        self.calls.clear()
        done.errback(Failure(error))


class SlowDerivationTests(ClientTestCase):
    """
    A server-first-message naming more than C{THREAD_ITERATIONS} iterations (the server
    chooses the count): PBKDF2 runs off the reactor (the real L{KeyDeriver}, its thread held
    by the test), and the login goes on from where it was once the keys are cached.
    """

    def script(
        self,
        iterations: int,
        credentials: Credentials | None = None,
        record: UserRecord | None = None,
    ) -> tuple[HostileServerScript, HeldThread]:
        record = record or make_record("alice", PASSWORD, iterations)
        script = HostileServerScript(self, record=record)
        if credentials is not None:
            script.client.credentials = credentials
        self.held = getattr(self, "held", None) or HeldThread()
        self.deriver = getattr(self, "deriver", None) or KeyDeriver(
            MemoryReactorClock(), run_in_thread=self.held
        )
        script.client.deriver = self.deriver
        return script, self.held

    def test_count_past_the_bound_is_derived_off_the_reactor(self) -> None:
        """
        One iteration past the bound: nothing is sent until the keys are derived; then
        the login completes as usual (the server's signature verified, OPEN sent).
        """
        script, held = self.script(THREAD_ITERATIONS + 1)
        script.reply(script.answer_auth())
        self.assertEqual(script.sent(), [])
        self.assertIs(script.client.state, ClientState.DERIVE_KEYS)
        self.assertEqual(len(held.calls), 1)
        held.finish()
        [cont] = script.sent()
        assert script.exchange is not None
        script.reply(b"OK " + encode_wire(script.exchange.final(decode_wire(cont[5:]))))
        self.assertEqual(script.sent(), [b"OPEN echo"])
        self.assertEqual(script.client.credentials.keys.derivations, 1)

    def test_count_at_the_bound_is_derived_inline(self) -> None:
        """
        Exactly the bound: derived at once, off nothing.
        """
        script, held = self.script(THREAD_ITERATIONS)
        script.login()
        self.assertEqual(held.calls, [])

    def test_concurrent_logins_share_one_derivation(self) -> None:
        """
        Five logins with the same credentials reach CONT before the keys are ready: one
        derivation, and every login goes on once it is done.
        """
        credentials = Credentials("alice", PASSWORD)
        record = make_record("alice", PASSWORD, THREAD_ITERATIONS + 1)  # one salt
        scripts = [self.script(THREAD_ITERATIONS + 1, credentials, record)[0] for _ in range(5)]
        for script in scripts:
            script.reply(script.answer_auth())
        self.assertEqual(len(self.held.calls), 1)
        self.held.finish()
        for script in scripts:
            [cont] = script.sent()
            self.assertTrue(cont.startswith(b"CONT "))
        self.assertEqual(credentials.keys.derivations, 1)

    def test_keys_of_a_login_that_timed_out_are_kept(self) -> None:
        """
        The handshake deadline ends the login while the keys are derived: the connect
        fails, nothing is sent, and the keys, whose derivation had started, are cached for
        the next login.
        """
        script, held = self.script(THREAD_ITERATIONS + 1)
        script.reply(script.answer_auth())
        held.start()
        script.clock.advance(CLIENT_LIMITS.handshake_timeout + 1)
        self.assertTrue(script.transport.disconnecting)
        script.client.connectionLost(Failure(ConnectionDone()))
        failure = self.failureResultOf(script.client.opened, NGPProtocolError)
        self.assertEqual(failure.value.reason, "handshake-timeout")
        script.transport.clear()
        held.deliver()
        self.assertEqual(script.transport.value(), b"")
        self.assertEqual(script.client.credentials.keys.derivations, 1)

    def test_connection_lost_while_deriving(self) -> None:
        """
        The connection ends while the keys are derived and no other login waits for them:
        the connect fails as closed, and the derivation, not started yet, is skipped.
        """
        script, held = self.script(THREAD_ITERATIONS + 1)
        script.reply(script.answer_auth())
        script.client.connectionLost(Failure(ConnectionDone()))
        failure = self.failureResultOf(script.client.opened, NGPProtocolError)
        self.assertIn("deriving its keys", str(failure.value))
        held.finish()
        self.assertEqual(script.sent(), [])
        self.assertEqual(script.client.credentials.keys.derivations, 0)

    def test_reply_while_deriving_is_refused(self) -> None:
        """
        A server that speaks before the client's CONT is refused; nothing is sent after.
        """
        script, held = self.script(THREAD_ITERATIONS + 1)
        script.reply(script.answer_auth())
        script.reply(b"OK v=c29vbg==")
        self.assert_failed_closed(script, NGPProtocolError, "unexpected-reply")
        held.finish()
        self.assertEqual(script.sent(), [])

    def test_derivation_failure_fails_the_connect(self) -> None:
        """
        The derivation raises: the connect fails with C{key-derivation}, nothing sent.
        """
        script, held = self.script(THREAD_ITERATIONS + 1)
        script.reply(script.answer_auth())
        held.fail(MemoryError("no room"))
        self.assert_failed_closed(script, NGPProtocolError, "key-derivation")

    def test_too_many_derivations_fail_at_once(self) -> None:
        """
        With C{max_jobs} derivations waiting (other salts), the next login fails with
        C{key-derivation} at once instead of queueing more.
        """
        for _ in range(MAX_JOBS):
            script, _ = self.script(THREAD_ITERATIONS + 1)
            script.reply(script.answer_auth())
        script, held = self.script(THREAD_ITERATIONS + 1)
        script.reply(script.answer_auth())
        self.assert_failed_closed(script, NGPProtocolError, "key-derivation")
        self.assertEqual(len(held.calls), MAX_JOBS)

    def test_impostor_with_a_high_count_is_still_refused(self) -> None:
        """
        An impostor (a forged verifier) naming a high count: the keys are derived off the
        reactor, and its signature then fails as it would inline.
        """
        forged = make_record("alice", "not the password", THREAD_ITERATIONS + 1)
        script = HostileServerScript(self, record=forged)
        held = HeldThread()
        script.client.deriver = KeyDeriver(MemoryReactorClock(), run_in_thread=held)
        script.reply(script.answer_auth())
        held.finish()
        [cont] = script.sent()
        assert script.exchange is not None
        # The forged verifier refuses the client's proof; the impostor answers with a
        # signature of its own making.
        self.assertRaises(AuthFailed, script.exchange.final, decode_wire(cont[5:]))
        script.reply(b"OK " + encode_wire("v=" + base64.b64encode(os.urandom(32)).decode()))
        self.assert_failed_closed(script, AuthFailed)

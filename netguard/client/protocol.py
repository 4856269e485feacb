# -*- test-case-name: tests.test_client_protocol,tests.integration.test_client_hostile -*-
"""
The client side of NGP/1: read the greeting, authenticate with SCRAM (checking the server's
signature: mutual authentication), open a service, then hand over raw bytes. A gateway
that offers returning-client tickets (C{TICKETS=1}) is asked for one after each login, and a
kept one is presented (C{RESUME}) as the next connection's first line.

The client trusts the server no more than the server trusts it: it reads with the same bounded
framing, bounds the whole handshake in time, and accepts only the replies the protocol allows
in each state.
"""

from __future__ import annotations

import enum
import re
from typing import Any

import attrs
from OpenSSL.SSL import Error as SSLError
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from netguard.auth.scram import (
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    AuthFailed,
    ClientExchange,
    ClientKeys,
    decode_wire,
    encode_wire,
)
from netguard.client.key_derivation import KeyDeriver, default_deriver
from netguard.client.tickets import MalformedTicket, TicketStore, parse_ticket_line
from netguard.errors import ErrorCode
from netguard.framing import FramingLimits, GuardedLineReceiver
from netguard.log import escape
from netguard.tls import channel_binding_for
from netguard.tls.errors import TLSVerificationError
from netguard.wrapped_interfaces import provide_through_wrapper


class NGPError(Exception):
    """
    The gateway refused: C{code} is the stable NGP/1 error code, C{text} its short text.
    """

    def __init__(self, code: str, text: str):
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class TicketRefused(NGPError):
    """
    The gateway refused the ticket this connection presented (C{ERR BAD_TICKET}, or
    C{ERR EARLY_TALKER} from a gateway that no longer reads C{RESUME}) and closed the
    connection. Nothing was wrong with the login: the endpoint connects again at once,
    without a ticket, once.
    """


class NGPProtocolError(Exception):
    """
    The server said something NGP/1 does not allow at this point (or is not a gateway), or
    broke one of the client's bounds; the client closed the connection.

    @ivar reason: a stable short name of what was wrong, for programs and logs: one of
        L{FAILURE_REASONS}.
    """

    def __init__(self, message: str, reason: str = "unexpected-reply"):
        super().__init__(message)
        self.reason = reason


#: Every L{NGPProtocolError.reason}, with what it means.
FAILURE_REASONS: dict[str, str] = {
    "not-a-gateway": "the first line was not an NGP/1 greeting",
    "no-common-mechanism": "the greeting offered no SCRAM mechanism this client speaks",
    "downgrade": "on TLS, the greeting did not offer SCRAM-SHA-256-PLUS (channel binding)",
    "unexpected-reply": "a reply NGP/1 does not allow in this state",
    "line-too-long": "a reply line longer than the client's bound, newline or not",
    "too-many-lines": "more lines before authentication than the client's bound",
    "too-much-data": "more bytes before authentication than the client's bound",
    "handshake-timeout": "no greeting, CONT or OK within the handshake deadline",
    "open-timeout": "no answer to OPEN within the open deadline",
    "idle-timeout": "the server was silent longer than the idle timeout",
    "early-data": "data before the TLS handshake completed",
    "closed": "the connection closed before the service was open",
    "key-derivation": "deriving the password's keys off the reactor failed, or too many "
    "derivations were waiting already",
    "tls-verification": "on TLS, the server's certificate failed the client's verification "
    "(a key pin, the chain of trust or the name): the handshake was aborted",
    "tls-refused": "on TLS, the gateway refused the client's certificate (a TLS alert: none "
    "given where one is required, untrusted, expired, revoked or not allowed)",
}


#: What OpenSSL says when the chain of trust fails the client's check (an untrusted or
#: expired certificate): the verify callback refused it.
_OPENSSL_VERIFY_FAILED = "certificate verify failed"


#: The TLS alerts by which a server refuses the client's certificate, as OpenSSL names them
#: (C{tlsv13 alert certificate required}, C{sslv3 alert bad certificate}, ...): trying again
#: with the same certificate cannot succeed.
_CERTIFICATE_REFUSED = re.compile(
    r"alert (certificate required|bad certificate|unknown ca|certificate unknown|"
    r"certificate expired|certificate revoked|unsupported certificate|access denied)"
)


def tls_refusal_reason(reason: Failure | None) -> str:
    """
    @param reason: why a connection was lost before the service was open.
    @return: the L{NGPProtocolError} reason for it: C{tls-verification} when the server's
        certificate failed our check (L{tls_verification_failed}), C{tls-refused} when the
        server refused ours with a certificate alert, else C{closed}.
    """
    if tls_verification_failed(reason):
        return "tls-verification"
    if reason is not None and reason.check(SSLError) is not None:
        if _CERTIFICATE_REFUSED.search(str(reason.value)):
            return "tls-refused"
    return "closed"


def tls_verification_failed(reason: Failure | None) -> bool:
    """
    @param reason: why a connection was lost.
    @return: whether it was lost because the server's certificate failed our verification:
        a pin or name check (L{TLSVerificationError}) or OpenSSL's own chain check. Any other
        TLS error (the peer closed during the handshake, say) is not one.
    """
    if reason is None:
        return False
    if reason.check(TLSVerificationError) is not None:
        return True
    return reason.check(SSLError) is not None and _OPENSSL_VERIFY_FAILED in str(reason.value)


@attrs.frozen(repr=False)
class Credentials:
    """
    A user name and password. The password is never shown by C{repr}.

    @ivar keys: the keys derived from the password, shared by every login with these
        credentials (L{ClientKeys}): PBKDF2 runs once per salt and iteration count.
    """

    username: str
    password: str
    keys: ClientKeys = attrs.field(factory=ClientKeys, eq=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"


class ClientState(enum.Enum):
    """
    Where a client session is.
    """

    AWAIT_GREETING = "await-greeting"
    AWAIT_CONT = "await-cont"
    DERIVE_KEYS = "derive-keys"
    AWAIT_AUTH_OK = "await-auth-ok"
    AWAIT_TICKET = "await-ticket"
    AWAIT_OPEN_OK = "await-open-ok"
    OPEN = "open"
    FAILED = "failed"


#: Client-side bounds on the server's replies until authentication: lines of at most 1024
#: bytes (newline or not), at most 8 lines and 8192 bytes, and 30 s from the connection to
#: the server's signature. The server speaks first, so there is no greeting delay to respect.
CLIENT_LIMITS = FramingLimits(greeting_delay=0, max_lines_before_auth=8, handshake_timeout=30)

#: Seconds the client waits for the answer to C{OPEN} (the gateway may be connecting to the
#: backend meanwhile: its C{connect_timeout} is 10 s by default); never reset by data.
OPEN_TIMEOUT = 120.0

#: The greeting's word that offers returning-client tickets.
TICKETS_OFFER = b"TICKETS=1"

#: The refusals that, right after C{RESUME}, mean the ticket was not taken (rather than the
#: connection or the user): the first from a gateway that reads tickets, the second from one
#: that no longer does.
TICKET_REFUSALS = frozenset({b"BAD_TICKET", b"EARLY_TALKER"})

#: The answers a gateway gives a C{RESUME} line that reached it after it had greeted (the
#: line was late: a lost segment, a slow path through a proxy): not an error of the login,
#: which goes on; the ticket bought nothing.
LATE_RESUME_ANSWERS = frozenset({b"BAD_SEQUENCE", b"UNKNOWN_COMMAND"})

#: What the client waits for in each state, for error messages.
_WAITING_FOR = {
    ClientState.AWAIT_GREETING: "the greeting",
    ClientState.AWAIT_CONT: "CONT",
    ClientState.DERIVE_KEYS: "nothing (the client was deriving its keys)",
    ClientState.AWAIT_AUTH_OK: "OK (the server signature)",
    ClientState.AWAIT_TICKET: "OK TICKET",
    ClientState.AWAIT_OPEN_OK: "OK OPEN",
}


class NGPClientProtocol(GuardedLineReceiver):
    """
    Authenticate to a gateway and open C{service}, trusting the server no more than the
    gateway trusts its clients: every reply is checked against the state, the server's
    SCRAM signature must verify before C{OPEN} is sent, and on TLS the login must be bound
    to the certificate received (C{SCRAM-SHA-256-PLUS}). Any failure closes the connection
    and fails L{opened}; nothing is sent after it.

    With a L{TicketStore}, a ticket taken from it is sent as C{RESUME <token>} at once on
    connecting (on TLS the TLS layer holds it until its handshake is done), and, when the
    greeting offers C{TICKETS=1}, C{TICKET} is sent in the same write as C{OPEN} once the
    server's signature has verified (never earlier: only a gateway that proved it holds our
    verifier hands us tickets). The answer is checked strictly (L{parse_ticket_line}); a
    malformed or refused one is logged (C{tunnel.ticket.ignored}, without its text) and the
    session goes on without it. A ticket replaces no part of the login.

    @ivar opened: fires with L{None} once the service is open (raw mode), or fails with
        L{NGPError} (the gateway refused), L{AuthFailed} (the server's SCRAM messages or
        signature did not verify: an impostor) or L{NGPProtocolError} (anything else; see
        its C{reason}). Cancelling it closes the connection.
    @ivar server_name: the name in the greeting (server-chosen text: escape it).
    @ivar presented: whether this connection presented a ticket.
    @ivar tickets_offered: whether the greeting offered tickets.
    """

    def __init__(
        self,
        credentials: Credentials,
        service: str,
        clock: Any = None,
        limits: FramingLimits = CLIENT_LIMITS,
        channel_binding: tuple[str, bytes] | None = None,
        open_timeout: float = OPEN_TIMEOUT,
        require_channel_binding: bool = True,
        tickets: TicketStore | None = None,
        present_ticket: bool = True,
    ):
        """
        @param credentials: who we are.
        @param service: the service to open.
        @param clock: the L{IReactorTime} for the deadlines (the global reactor by default).
        @param limits: the bounds on the server's replies until authentication.
        @param channel_binding: C{("tls-server-end-point", data)}; by default read from the
            TLS transport, if any.
        @param open_timeout: seconds to wait for the answer to C{OPEN}.
        @param require_channel_binding: on TLS, refuse a greeting without
            C{SCRAM-SHA-256-PLUS} as a downgrade. When false, such a login goes on with
            C{SCRAM-SHA-256} and tells the server it could have bound (gs2 flag C{y}), so a
            gateway that did offer PLUS still refuses it.
        @param tickets: where this endpoint's tickets are kept; L{None}: neither presented
            nor asked for.
        @param present_ticket: present one from C{tickets}, if it holds one (false for the
            connection that follows a refused ticket); tickets are asked for either way.
        """
        super().__init__(limits, clock)
        self.credentials = credentials
        self.service = service
        self.channel_binding = channel_binding
        self.open_timeout = open_timeout
        self.require_channel_binding = require_channel_binding
        self.state = ClientState.AWAIT_GREETING
        self.opened: Deferred[None] = Deferred(self._cancelled)
        self.server_name: str | None = None
        self._exchange: ClientExchange | None = None
        self._open_timer: Any = None
        self.tickets = tickets
        self.present_ticket = present_ticket
        self.presented = False
        self.tickets_offered = False
        self._resume_unanswered = False
        self._ticket_error: NGPError | None = None
        #: Derives keys for an iteration count too high to run on the reactor; the
        #: process's own (L{default_deriver}) unless set.
        self.deriver: KeyDeriver | None = None
        self._deriving: Deferred[None] | None = None

    # -- hooks for users of the open connection ------------------------------------------------

    def service_opened(self) -> None:
        """
        Called once the service is open; bytes that follow go to L{service_data}.
        """

    def service_data(self, data: bytes) -> None:
        """
        Raw bytes from the service.
        """

    def service_closed(self, reason: Failure) -> None:
        """
        The connection ended after the service was open.
        """

    # -- framing -------------------------------------------------------------------------------

    def greet(self) -> None:
        """The server greets, not us."""

    def open_line(self) -> bytes:
        """
        @return: the line sent once logged in (C{OPEN <service>}), without its CRLF.
        """
        return b"OPEN " + self.service.encode("ascii")

    def connectionMade(self) -> None:
        super().connectionMade()
        provide_through_wrapper(self, self.transport)
        if self.tickets is None or not self.present_ticket:
            return
        token = self.tickets.take()
        if token is not None:
            # The first bytes, without waiting for the greeting: the gateway reads a RESUME
            # line before it greets (a TLS transport sends it after its handshake).
            self.presented = True
            self.transport.write(b"RESUME " + token + b"\r\n")

    def refuse(
        self,
        code: Any,
        text: str | None = None,
        offending: bytes | None = None,
        close: bool = True,
    ) -> None:
        # A bound hit by the server's output (or a timeout): fail locally; a client never
        # writes ERR lines to a server.
        limits = self.limits
        waiting = _WAITING_FOR.get(self.state, "nothing")
        if code is ErrorCode.LINE_TOO_LONG:
            reason = "line-too-long"
            message = f"reply line longer than {limits.max_line_length} bytes"
        elif code is ErrorCode.TOO_MANY_LINES:
            reason = "too-many-lines"
            message = f"more than {limits.max_lines_before_auth} lines before authentication"
        elif code is ErrorCode.TOO_MUCH_DATA:
            reason = "too-much-data"
            message = f"more than {limits.max_bytes_before_auth} bytes before authentication"
        elif code is ErrorCode.TIMEOUT and text == "handshake deadline":
            reason = "handshake-timeout"
            message = f"no reply within the {limits.handshake_timeout:g} s handshake deadline"
        elif code is ErrorCode.TIMEOUT:
            reason = "idle-timeout"
            message = f"server silent for {limits.idle_timeout:g} s"
        elif code is ErrorCode.EARLY_TALKER:
            reason = "early-data"
            message = "data before the TLS handshake completed"
        else:
            reason = "unexpected-reply"
            message = f"{getattr(code, 'value', code)}: {text or 'refused'}"
        if offending is not None:
            message += f" (received {escape(offending[:64])})"
        self._fail(NGPProtocolError(f"{message}, waiting for {waiting}", reason))

    def lineReceived(self, line: bytes) -> None:
        if self._resume_unanswered:
            # The first line after the greeting: if the gateway read our RESUME before it
            # greeted, that was its answer; if it greeted first, RESUME is answered now.
            self._resume_unanswered = False
            if line.startswith(b"ERR ") and line[4:].partition(b" ")[0] in LATE_RESUME_ANSWERS:
                self.log.warn(
                    "our ticket reached {peer} after its greeting; logging in without it",
                    event="tunnel.ticket.ignored",
                    reason="late: the gateway greeted first",
                    **self.log_fields(),
                )
                return
        if line.startswith(b"ERR "):
            code, _, text = line[4:].partition(b" ")
            if self.state is ClientState.AWAIT_TICKET:
                self._ticket_declined(NGPError(escape(code), escape(text)))
                return
            if (
                self.state is ClientState.AWAIT_GREETING
                and self.presented
                and code in TICKET_REFUSALS
            ):
                # Our ticket was refused, so the others we hold are no better (a key
                # rotation, a password change, tickets turned off): drop them all rather
                # than have each refused in turn.
                if self.tickets is not None:
                    self.tickets.clear()
                self._fail(TicketRefused(escape(code), escape(text)))
                return
            self._fail(NGPError(escape(code), escape(text)))
            return
        handler = {
            ClientState.AWAIT_GREETING: self._on_greeting,
            ClientState.AWAIT_CONT: self._on_cont,
            ClientState.DERIVE_KEYS: self._on_line_while_deriving,
            ClientState.AWAIT_AUTH_OK: self._on_auth_ok,
            ClientState.AWAIT_TICKET: self._on_ticket,
            ClientState.AWAIT_OPEN_OK: self._on_open_ok,
        }.get(self.state)
        if handler is None:
            return
        try:
            handler(line)
        except AuthFailed as failure:
            self._fail(failure)
        except NGPProtocolError as failure:
            self._fail(
                NGPProtocolError(f"{failure} (received {escape(line, 200)})", failure.reason)
            )
        except ValueError as failure:
            waiting = _WAITING_FOR.get(self.state, "nothing")
            self._fail(
                NGPProtocolError(
                    f"unexpected reply {escape(line, 200)} while waiting for {waiting}: {failure}"
                )
            )

    def rawDataReceived(self, data: bytes) -> None:
        self.service_data(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self._cancel_open_timer()
        if self.state is ClientState.OPEN:
            self.service_closed(reason or Failure(ConnectionDone()))
        elif not self.opened.called and self._ticket_error is not None:
            # The gateway refused TICKET and then closed: that refusal is the likely cause.
            self.state = ClientState.FAILED
            self.opened.errback(self._ticket_error)
        elif not self.opened.called:
            waiting = _WAITING_FOR.get(self.state, "nothing")
            self.state = ClientState.FAILED
            why = reason.getErrorMessage() if reason is not None else "closed"
            self.opened.errback(
                NGPProtocolError(
                    f"connection closed during the handshake, waiting for {waiting}: "
                    f"{escape(why, 200)}",
                    tls_refusal_reason(reason),
                )
            )
        deriving, self._deriving = self._deriving, None
        if deriving is not None:
            # Left to other logins waiting for the same keys; skipped if none and not begun.
            deriving.cancel()

    # -- states --------------------------------------------------------------------------------

    def _on_greeting(self, line: bytes) -> None:
        words = line.decode("ascii").split(" ")
        if len(words) < 3 or words[0] != "NETGUARD/1":
            raise NGPProtocolError(
                "not an NGP/1 greeting: not a netguard gateway", "not-a-gateway"
            )
        self.server_name = words[1]
        offered: list[str] = []
        for word in words[2:]:
            if word.startswith("AUTH="):
                offered = word[5:].split(",")
        self.tickets_offered = TICKETS_OFFER.decode("ascii") in words[2:]
        if not self.tickets_offered and self.tickets is not None:
            # The gateway no longer issues tickets: those we hold would be refused.
            self.tickets.clear()
        # On TLS, bind the authentication to the certificate this connection was served
        # (RFC 5929 tls-server-end-point): relayed through a man in the middle, it fails.
        binding = self.channel_binding or channel_binding_for(self.transport, "client")
        if binding is not None and SCRAM_SHA_256_PLUS in offered:
            mechanism = SCRAM_SHA_256_PLUS
        elif binding is not None and self.require_channel_binding:
            # Every netguard TLS listener offers PLUS: a greeting without it on TLS is a
            # stripped offer (or TLS terminated in front of the gateway, which loses the same
            # protection). Refuse before any SCRAM message is sent.
            raise NGPProtocolError(
                f"downgrade refused: the server offered no {SCRAM_SHA_256_PLUS} over TLS",
                "downgrade",
            )
        elif SCRAM_SHA_256 in offered:
            # Keep passing the binding: the client then says "I could bind" (gs2 flag "y"),
            # so a server that does support PLUS detects a stripped offer.
            mechanism = SCRAM_SHA_256
        else:
            raise NGPProtocolError(
                "no SCRAM mechanism in common with the greeting", "no-common-mechanism"
            )
        self._exchange = ClientExchange(
            self.credentials.username,
            self.credentials.password,
            mechanism,
            binding,
            keys=self.credentials.keys,
        )
        first = self._exchange.first()
        self.state = ClientState.AWAIT_CONT
        self._resume_unanswered = self.presented
        self.sendLine(b"AUTH " + mechanism.encode("ascii") + b" " + encode_wire(first))

    def _on_cont(self, line: bytes) -> None:
        verb, _, token = line.partition(b" ")
        if verb != b"CONT" or self._exchange is None:
            raise NGPProtocolError("unexpected reply while waiting for CONT")
        server_first = decode_wire(token)
        pending = self._exchange.slow_derivation(server_first)
        if pending is None:
            self._send_final(server_first)
            return
        # PBKDF2 with this count would stall the reactor, and every other connection of the
        # process, for as long as it runs (a server chooses the count): derive it off the
        # reactor, into the credentials' cache, where L{final} finds it.
        self.state = ClientState.DERIVE_KEYS
        deriver = self.deriver if self.deriver is not None else default_deriver()
        self._deriving = deriving = deriver.derive(self._exchange.keys, pending)
        deriving.addCallbacks(
            self._keys_derived, self._derivation_failed, callbackArgs=(server_first,)
        )

    def _send_final(self, server_first: str) -> None:
        assert self._exchange is not None
        final = self._exchange.final(server_first)
        self.state = ClientState.AWAIT_AUTH_OK
        self.sendLine(b"CONT " + encode_wire(final))

    def _keys_derived(self, _: None, server_first: str) -> None:
        self._deriving = None
        if self.state is not ClientState.DERIVE_KEYS or self._exchange is None:
            return  # the connection ended meanwhile (the keys are cached all the same)
        try:
            self._send_final(server_first)
        except AuthFailed as failure:
            self._fail(failure)

    def _derivation_failed(self, failure: Failure) -> None:
        self._deriving = None
        if self.state is ClientState.DERIVE_KEYS and not failure.check(CancelledError):
            self._fail(
                NGPProtocolError(
                    f"deriving the keys failed: {failure.getErrorMessage()}", "key-derivation"
                )
            )

    def _on_line_while_deriving(self, line: bytes) -> None:
        raise NGPProtocolError("a reply before the client's CONT")

    def _on_auth_ok(self, line: bytes) -> None:
        verb, _, token = line.partition(b" ")
        if verb != b"OK" or self._exchange is None:
            raise NGPProtocolError("unexpected reply while waiting for OK (the server signature)")
        try:
            self._exchange.verify(decode_wire(token))  # mutual authentication
        except AuthFailed as failure:
            raise AuthFailed(
                "the server did not prove it holds your verifier (an impostor, or not your "
                f"gateway): {failure.reason}"
            ) from None
        self._exchange = None
        self.end_handshake()
        # One deadline for the answer, never reset by data (the idle timer is: a server
        # trickling bytes would hold the connection for as long as it liked).
        self.setTimeout(None)
        self._open_timer = self.clock.callLater(self.open_timeout, self._open_expired)
        if self.tickets is not None and self.tickets_offered:
            # Pipelined: the answers come in order, so asking costs no round trip.
            self.state = ClientState.AWAIT_TICKET
            self.transport.write(b"TICKET\r\n" + self.open_line() + b"\r\n")
        else:
            self.state = ClientState.AWAIT_OPEN_OK
            self.sendLine(self.open_line())

    def _on_ticket(self, line: bytes) -> None:
        if not line.startswith(b"OK TICKET"):
            raise NGPProtocolError("unexpected reply while waiting for OK TICKET")
        self.state = ClientState.AWAIT_OPEN_OK
        try:
            offer = parse_ticket_line(line)
        except MalformedTicket as malformed:
            # Never stored, and never logged: a token-like string is a secret.
            self.log.warn(
                "ignoring a malformed OK TICKET from {peer}: {reason}",
                event="tunnel.ticket.ignored",
                reason=malformed.reason,
                length=len(line),
                **self.log_fields(),
            )
            return
        assert self.tickets is not None
        self.tickets.keep(offer)

    def _ticket_declined(self, error: NGPError) -> None:
        """
        The gateway answered C{TICKET} with an error: go on without a ticket (the answer to
        C{OPEN} follows); if the connection closes instead, C{error} is why.
        """
        self.state = ClientState.AWAIT_OPEN_OK
        self._ticket_error = error
        self.log.warn(
            "the gateway {peer} issued no ticket: {code} {text}",
            event="tunnel.ticket.ignored",
            reason=f"refused: {error.code}",
            code=error.code,
            text=escape(error.text, 200),
            **self.log_fields(),
        )

    def _on_open_ok(self, line: bytes) -> None:
        self._ticket_error = None
        if line != b"OK OPEN " + self.service.encode("ascii"):
            raise NGPProtocolError(
                f"unexpected reply while waiting for OK OPEN {escape(self.service)}"
            )
        self._cancel_open_timer()
        self.state = ClientState.OPEN
        self.setRawMode()
        self.setTimeout(None)
        self.service_opened()
        self.opened.callback(None)

    def _open_expired(self) -> None:
        self._open_timer = None
        self._fail(
            NGPProtocolError(
                f"no answer to OPEN {escape(self.service)} within {self.open_timeout:g} s",
                "open-timeout",
            )
        )

    def _cancel_open_timer(self) -> None:
        timer, self._open_timer = self._open_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _cancelled(self, opened: Deferred[None]) -> None:
        """
        The caller cancelled L{opened} (which then fails with C{CancelledError}): close the
        connection; nothing more is sent or delivered.
        """
        self._close_failed()

    def abandon(self) -> None:
        """
        The endpoint gave up on this connection (its connect failed or was cancelled):
        close it, whatever its state, and consume the failure of L{opened}, which nobody
        waits for any more.
        """
        self.opened.addErrback(lambda _: None)
        if not self._close_failed() and self.state is ClientState.OPEN:
            if self.transport is not None:
                self.transport.loseConnection()

    def _close_failed(self) -> bool:
        """
        Enter the failed state and close; false if the session had already ended or opened.
        """
        if self.state in (ClientState.FAILED, ClientState.OPEN):
            return False
        self.state = ClientState.FAILED
        self._cancel_open_timer()
        if self.transport is not None:
            self.close_gracefully()
        return True

    def _fail(self, error: Exception) -> None:
        if self._close_failed() and not self.opened.called:
            self.opened.errback(error)

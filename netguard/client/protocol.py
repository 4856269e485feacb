# -*- test-case-name: tests.test_gateway_protocol,tests.integration.test_tunnel_real -*-
"""
The client side of NGP/1: read the greeting, authenticate with SCRAM (checking the server's
signature: mutual authentication), open a service, then hand over raw bytes.

The client trusts the server no more than the server trusts it: it reads with the same bounded
framing, bounds the whole handshake in time, and accepts only the replies the protocol allows
in each state.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from netguard.auth.scram import (
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    AuthFailed,
    ClientExchange,
    decode_wire,
    encode_wire,
)
from netguard.framing import FramingLimits, GuardedLineReceiver
from netguard.log import escape
from netguard.tls import channel_binding_for


class NGPError(Exception):
    """
    The gateway refused: C{code} is the stable NGP/1 error code, C{text} its short text.
    """

    def __init__(self, code: str, text: str):
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class NGPProtocolError(Exception):
    """
    The server said something NGP/1 does not allow at this point (or is not a gateway).
    """


@attrs.frozen(repr=False)
class Credentials:
    """
    A user name and password. The password is never shown by C{repr}.
    """

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"


class ClientState(enum.Enum):
    """
    Where a client session is.
    """

    AWAIT_GREETING = "await-greeting"
    AWAIT_CONT = "await-cont"
    AWAIT_AUTH_OK = "await-auth-ok"
    AWAIT_OPEN_OK = "await-open-ok"
    OPEN = "open"
    FAILED = "failed"


#: Client-side bounds: the server speaks first, so there is no greeting delay to respect.
CLIENT_LIMITS = FramingLimits(greeting_delay=0, max_lines_before_auth=8, handshake_timeout=30)


class NGPClientProtocol(GuardedLineReceiver):
    """
    Authenticate to a gateway and open C{service}.

    @ivar opened: fires with L{None} once the service is open (raw mode), or fails with
        L{NGPError}, L{AuthFailed} or L{NGPProtocolError}.
    @ivar server_name: the name in the greeting.
    """

    def __init__(
        self,
        credentials: Credentials,
        service: str,
        clock: Any = None,
        limits: FramingLimits = CLIENT_LIMITS,
        channel_binding: tuple[str, bytes] | None = None,
    ):
        super().__init__(limits, clock)
        self.credentials = credentials
        self.service = service
        self.channel_binding = channel_binding
        self.state = ClientState.AWAIT_GREETING
        self.opened: Deferred[None] = Deferred()
        self.server_name: str | None = None
        self._exchange: ClientExchange | None = None

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

    def refuse(
        self,
        code: Any,
        text: str | None = None,
        offending: bytes | None = None,
        close: bool = True,
    ) -> None:
        # A bound hit by the server's output (or a timeout): fail locally; a client never
        # writes ERR lines to a server.
        detail = text or code.value
        self._fail(NGPProtocolError(f"{code.value}: {detail} ({escape(offending)})"))

    def lineReceived(self, line: bytes) -> None:
        if line.startswith(b"ERR "):
            code, _, text = line[4:].partition(b" ")
            self._fail(NGPError(escape(code), escape(text)))
            return
        handler = {
            ClientState.AWAIT_GREETING: self._on_greeting,
            ClientState.AWAIT_CONT: self._on_cont,
            ClientState.AWAIT_AUTH_OK: self._on_auth_ok,
            ClientState.AWAIT_OPEN_OK: self._on_open_ok,
        }.get(self.state)
        if handler is None:
            return
        try:
            handler(line)
        except AuthFailed as failure:
            self._fail(failure)
        except (ValueError, NGPProtocolError) as failure:
            self._fail(NGPProtocolError(f"unexpected reply {escape(line)}: {failure}"))

    def rawDataReceived(self, data: bytes) -> None:
        self.service_data(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        if self.state is ClientState.OPEN:
            self.service_closed(reason or Failure(ConnectionDone()))
        elif not self.opened.called:
            why = reason.getErrorMessage() if reason is not None else "closed"
            self.opened.errback(
                NGPProtocolError(f"connection closed during the handshake: {escape(why, 200)}")
            )

    # -- states --------------------------------------------------------------------------------

    def _on_greeting(self, line: bytes) -> None:
        words = line.decode("ascii").split(" ")
        if len(words) < 3 or words[0] != "NETGUARD/1":
            raise NGPProtocolError("not an NGP/1 greeting")
        self.server_name = words[1]
        offered: list[str] = []
        for word in words[2:]:
            if word.startswith("AUTH="):
                offered = word[5:].split(",")
        # On TLS, bind the authentication to the certificate this connection was served
        # (RFC 5929 tls-server-end-point): relayed through a man in the middle, it fails.
        binding = self.channel_binding or channel_binding_for(self.transport, "client")
        if binding is not None and SCRAM_SHA_256_PLUS in offered:
            mechanism = SCRAM_SHA_256_PLUS
        elif SCRAM_SHA_256 in offered:
            # Keep passing the binding: the client then says "I could bind" (gs2 flag "y"),
            # so a server that does support PLUS detects a stripped offer.
            mechanism = SCRAM_SHA_256
        else:
            raise NGPProtocolError("no mechanism in common")
        self._exchange = ClientExchange(
            self.credentials.username, self.credentials.password, mechanism, binding
        )
        first = self._exchange.first()
        self.state = ClientState.AWAIT_CONT
        self.sendLine(b"AUTH " + mechanism.encode("ascii") + b" " + encode_wire(first))

    def _on_cont(self, line: bytes) -> None:
        verb, _, token = line.partition(b" ")
        if verb != b"CONT" or self._exchange is None:
            raise NGPProtocolError("expected CONT")
        final = self._exchange.final(decode_wire(token))
        self.state = ClientState.AWAIT_AUTH_OK
        self.sendLine(b"CONT " + encode_wire(final))

    def _on_auth_ok(self, line: bytes) -> None:
        verb, _, token = line.partition(b" ")
        if verb != b"OK" or self._exchange is None:
            raise NGPProtocolError("expected OK")
        self._exchange.verify(decode_wire(token))  # mutual authentication
        self._exchange = None
        self.end_handshake()
        self.state = ClientState.AWAIT_OPEN_OK
        self.sendLine(b"OPEN " + self.service.encode("ascii"))

    def _on_open_ok(self, line: bytes) -> None:
        if line != b"OK OPEN " + self.service.encode("ascii"):
            raise NGPProtocolError("expected OK OPEN")
        self.state = ClientState.OPEN
        self.setRawMode()
        self.setTimeout(None)
        self.service_opened()
        self.opened.callback(None)

    def _fail(self, error: Exception) -> None:
        if self.state is ClientState.FAILED:
            return
        self.state = ClientState.FAILED
        self.close_gracefully()
        if not self.opened.called:
            self.opened.errback(error)

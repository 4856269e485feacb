# -*- test-case-name: tests.test_socks5 -*-
"""
The errors of a SOCKS5 negotiation: one class per RFC 1928 reply code, the RFC 1929
authentication failure, protocol errors, an early close and the timeout.

What each one means to an operator: C{docs/endpoints.md}.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Final

from twisted.internet import error

from netguard.log import escape
from netguard.outbound.socks5.wire import Method

__all__ = [
    "EXCERPT_LIMIT",
    "REPLY_ERRORS",
    "AddressTypeNotSupported",
    "AuthenticationFailed",
    "CommandNotSupported",
    "ConnectionNotAllowed",
    "ConnectionRefused",
    "GeneralFailure",
    "HostUnreachable",
    "NetworkUnreachable",
    "NoAcceptableMethods",
    "SOCKSConnectionClosed",
    "SOCKSError",
    "SOCKSProtocolError",
    "SOCKSReplyError",
    "SOCKSTimeout",
    "TTLExpired",
    "UnassignedReplyCode",
    "reply_error",
]

#: How many bytes of a bad reply an error message shows (escaped).
EXCERPT_LIMIT: Final = 64


class SOCKSError(error.ConnectError):
    """
    A SOCKS5 negotiation failed. Base class of every error this module raises for a proxy.

    @ivar phase: what the negotiation was waiting for when it failed (C{"method selection
        reply"}, C{"RFC 1929 username/password reply"}, C{"CONNECT reply"}, C{"the connection
        to the proxy"}), or L{None} for an error raised outside a negotiation.
    """

    MESSAGE = "SOCKS5 negotiation failed"
    phase: str | None = None

    def __init__(self, message: str) -> None:
        """
        @param message: the complete human text; it never contains secrets and any text the
            proxy chose is already escaped.
        """
        super().__init__(string=message)
        self.message = message

    def __str__(self) -> str:
        """
        @return: the message.
        """
        return self.message


class SOCKSReplyError(SOCKSError):
    """
    The proxy answered CONNECT with a failure reply code (REP).

    @ivar code: the REP byte.
    @ivar rfc_text: the meaning RFC 1928 gives to the code.
    """

    code: int = -1
    rfc_text: str = "unknown"

    def __init__(self, code: int | None = None) -> None:
        """
        @param code: the REP byte; defaults to the class's own code.
        """
        if code is None:
            code = type(self).code
        self.code = code
        super().__init__(f"SOCKS5 proxy refused the request: REP 0x{code:02x} ({self.rfc_text})")


class GeneralFailure(SOCKSReplyError):
    """
    REP 0x01: general SOCKS server failure.
    """

    code = 0x01
    rfc_text = "general SOCKS server failure"


class ConnectionNotAllowed(SOCKSReplyError):
    """
    REP 0x02: connection not allowed by ruleset.
    """

    code = 0x02
    rfc_text = "connection not allowed by ruleset"


class NetworkUnreachable(SOCKSReplyError):
    """
    REP 0x03: network unreachable.
    """

    code = 0x03
    rfc_text = "Network unreachable"


class HostUnreachable(SOCKSReplyError):
    """
    REP 0x04: host unreachable.
    """

    code = 0x04
    rfc_text = "Host unreachable"


class ConnectionRefused(SOCKSReplyError, error.ConnectionRefusedError):
    """
    REP 0x05: the target refused the proxy's connection. Also a Twisted
    L{error.ConnectionRefusedError}.
    """

    code = 0x05
    rfc_text = "Connection refused"


class TTLExpired(SOCKSReplyError):
    """
    REP 0x06: TTL expired.
    """

    code = 0x06
    rfc_text = "TTL expired"


class CommandNotSupported(SOCKSReplyError):
    """
    REP 0x07: command not supported.
    """

    code = 0x07
    rfc_text = "Command not supported"


class AddressTypeNotSupported(SOCKSReplyError):
    """
    REP 0x08: address type not supported.
    """

    code = 0x08
    rfc_text = "Address type not supported"


class UnassignedReplyCode(SOCKSReplyError):
    """
    REP 0x09..0xFF: a failure code that RFC 1928 leaves unassigned.
    """

    rfc_text = "unassigned"


#: REP code -> exception class, for the codes RFC 1928 assigns.
REPLY_ERRORS: Mapping[int, type[SOCKSReplyError]] = types.MappingProxyType(
    {
        cls.code: cls
        for cls in (
            GeneralFailure,
            ConnectionNotAllowed,
            NetworkUnreachable,
            HostUnreachable,
            ConnectionRefused,
            TTLExpired,
            CommandNotSupported,
            AddressTypeNotSupported,
        )
    }
)


def reply_error(code: int) -> SOCKSReplyError:
    """
    The exception for a failure reply code.

    @param code: a REP byte other than 0.
    @return: an instance of the class in L{REPLY_ERRORS}, or of L{UnassignedReplyCode}.
    """
    cls = REPLY_ERRORS.get(code)
    return cls() if cls is not None else UnassignedReplyCode(code)


class AuthenticationFailed(SOCKSError):
    """
    The proxy rejected our username and password (RFC 1929 STATUS other than 0).

    @ivar status: the STATUS byte.
    """

    def __init__(self, status: int) -> None:
        """
        @param status: the STATUS byte the proxy sent.
        """
        self.status = status
        super().__init__(
            f"SOCKS5 proxy rejected the username/password (RFC 1929 status 0x{status:02x})"
        )


class NoAcceptableMethods(SOCKSError):
    """
    The proxy accepts none of the authentication methods we offered (METHOD 0xFF).

    @ivar offered: the methods we offered.
    """

    def __init__(self, offered: tuple[Method, ...]) -> None:
        """
        @param offered: the methods we offered.
        """
        self.offered = offered
        names = ", ".join(m.name.lower().replace("_", " ") for m in offered)
        super().__init__(f"SOCKS5 proxy accepts none of the offered methods ({names})")


class SOCKSProtocolError(SOCKSError):
    """
    The proxy sent something that is not a valid SOCKS5 reply.

    @ivar reason: what was wrong.
    @ivar excerpt: the start of what the proxy sent in the failing message, escaped with
        L{netguard.log.escape} (printable ASCII, bounded).
    """

    def __init__(self, reason: str, received: bytes = b"") -> None:
        """
        @param reason: what was wrong (our own text, no peer bytes).
        @param received: the bytes of the failing message; only an escaped excerpt is kept.
        """
        self.reason = reason
        self.excerpt = escape(received, limit=EXCERPT_LIMIT)
        super().__init__(f"SOCKS5 protocol error: {reason}; received: {self.excerpt}")


class SOCKSConnectionClosed(SOCKSProtocolError):
    """
    The proxy closed the connection before the negotiation finished.

    @ivar phase: the step we were waiting for.
    """

    def __init__(self, phase: str, received: bytes = b"") -> None:
        """
        @param phase: the step we were waiting for.
        @param received: the bytes of the incomplete message, if any.
        """
        self.phase = phase
        super().__init__(f"proxy closed the connection while waiting for the {phase}", received)


class SOCKSTimeout(SOCKSError, error.TimeoutError):
    """
    The negotiation did not finish in time. Also a Twisted L{error.TimeoutError}.

    @ivar timeout: the limit, in seconds.
    @ivar phase: the step we were waiting for.
    """

    def __init__(self, timeout: float, phase: str) -> None:
        """
        @param timeout: the limit, in seconds.
        @param phase: the step we were waiting for.
        """
        self.timeout = timeout
        self.phase = phase
        super().__init__(f"SOCKS5 negotiation timed out after {timeout:g} s waiting for {phase}")

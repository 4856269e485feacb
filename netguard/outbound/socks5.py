# -*- test-case-name: tests.test_socks5 -*-
"""
A SOCKS5 client endpoint: RFC 1928 CONNECT with RFC 1929 username/password.

L{SOCKS5ClientEndpoint} reaches C{host:port} through a SOCKS5 proxy that is itself reached
through any client endpoint, and composes like Twisted's own wrappers::

    proxy = HostnameEndpoint(reactor, "127.0.0.1", 1080)
    endpoint = SOCKS5ClientEndpoint(proxy, "example.com", 443, reactor=reactor)
    tls = wrapClientTLS(optionsForClientTLS("example.com"), endpoint)

As an endpoint string (the C{socks5:} plugin, for C{clientFromString})::

    socks5:host=example.com:port=443:proxy_host=127.0.0.1:proxy_port=1080
    socks5:host=10.0.0.5:port=redis:proxy_host=socks.internal:user=ng:password_file=/etc/ng/socks
    socks5:host=\\:\\:1:port=6379:proxy_host=127.0.0.1:timeout=3
    socks5:host=db.internal:port=5432:proxy=unix\\:path=/run/dante.sock

Grammar, credentials, bounds, errors and log events: C{docs/endpoints.md}.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
import socket
import types
from collections.abc import Mapping
from typing import Any, Final

import attrs
from twisted.internet import error
from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from netguard.endpoints import SOCKS5_ENDPOINT_KEYS, resolve_port
from netguard.log import escape
from netguard.secretfile import read_password_file

__all__ = [
    "MAX_BOUND_NAME",
    "MAX_REPLY_SIZE",
    "AddressType",
    "AddressTypeNotSupported",
    "AuthenticationFailed",
    "CommandNotSupported",
    "ConnectionNotAllowed",
    "ConnectionRefused",
    "GeneralFailure",
    "HostUnreachable",
    "Method",
    "NegotiationResult",
    "NegotiationStep",
    "NetworkUnreachable",
    "NoAcceptableMethods",
    "REPLY_ERRORS",
    "SOCKS5ClientEndpoint",
    "SOCKS5Negotiation",
    "SOCKSAddress",
    "SOCKSConnectionClosed",
    "SOCKSError",
    "SOCKSProtocolError",
    "SOCKSReplyError",
    "SOCKSTimeout",
    "TTLExpired",
    "UnassignedReplyCode",
    "endpoint_from_string_args",
    "is_valid_bound_name",
    "read_password_file",
    "reply_error",
    "target_address",
]

#: The SOCKS protocol version (RFC 1928).
SOCKS_VERSION: Final = 5
#: The version of the username/password sub-negotiation (RFC 1929).
AUTH_VERSION: Final = 1
#: The CONNECT command.
CMD_CONNECT: Final = 1
#: The longest host name a CONNECT reply may carry as BND.ADDR (ATYP 3): 253 characters, the
#: longest DNS name in text form, plus one optional final dot.
MAX_BOUND_NAME: Final = 254
#: The longest valid server message: a CONNECT reply with the longest bound host name
#: (VER, REP, RSV, ATYP, length byte, name, port).
MAX_REPLY_SIZE: Final = 4 + 1 + MAX_BOUND_NAME + 2
#: How many bytes of a bad reply an error message shows (escaped).
EXCERPT_LIMIT: Final = 64
#: The default negotiation timeout, in seconds.
DEFAULT_TIMEOUT: Final = 10.0

_LABEL = re.compile(rb"\A[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
#: A host name label (RFC 952/1123 LDH: letters, digits, inner hyphens; 1..63 characters).
_LDH_LABEL = re.compile(rb"\A[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
#: Every byte that may appear in a bound host name or textual IP address (colons: IPv6).
_BOUND_NAME_BYTES: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.:"
)


class Method(enum.IntEnum):
    """
    The authentication methods of RFC 1928 that this client knows.
    """

    NO_AUTH = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class AddressType(enum.IntEnum):
    """
    The address types (ATYP) of RFC 1928.
    """

    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


@attrs.frozen
class SOCKSAddress:
    """
    An address as a SOCKS5 message carries it.

    @ivar address_type: the ATYP.
    @ivar host: the dotted-quad or compressed IPv6 text, or the domain name; a domain name that
        came from the proxy has passed L{is_valid_bound_name} (printable ASCII, LDH labels or
        a textual address).
    @ivar port: the port, 0..65535.
    """

    address_type: AddressType
    host: str
    port: int

    def __str__(self) -> str:
        """
        @return: C{host:port}, with brackets around an IPv6 address.
        """
        if self.address_type is AddressType.IPV6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


# --------------------------------------------------------------------------------------------
# Exceptions


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


# --------------------------------------------------------------------------------------------
# Target validation and encoding


def _encode_domain(host: str) -> bytes:
    """
    Encode a host name for ATYP 3, refusing anything that is not a plausible DNS name.

    @raise ValueError: if C{host} is not a valid name of 1..255 bytes.
    """
    try:
        raw = host.encode("ascii")
    except UnicodeEncodeError:
        import idna  # a dependency of twisted[tls]; only needed for non-ASCII names

        try:
            raw = idna.encode(host, uts46=True)
        except idna.IDNAError as exc:
            raise ValueError(f"invalid host name {escape(host)!r}: {exc}") from None
    labels = raw[:-1].split(b".") if raw.endswith(b".") else raw.split(b".")
    if not 1 <= len(raw) <= 255 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"invalid host name {escape(host)!r}")
    return raw


def is_valid_bound_name(name: bytes) -> bool:
    """
    Whether a CONNECT reply's ATYP 3 BND.ADDR is well formed: a textual IP address, or a host
    name of LDH labels (RFC 952/1123: letters, digits, inner hyphens, 1..63 characters each) of
    at most 253 characters plus one optional final dot, whose last label is not all digits (so
    that no name can pass for a dotted-quad address it is not).

    A proxy that resolved the target remotely usually reports an address; a name is allowed,
    but binary bytes, spaces, control characters, empty labels or an over-long name are not:
    a reply carrying them is not a SOCKS5 reply, whatever its REP byte says.

    @param name: the BND.ADDR bytes (without their length byte).
    @return: C{True} if the name is well formed.
    """
    if not name or len(name) > MAX_BOUND_NAME or not _BOUND_NAME_BYTES.issuperset(name):
        return False
    text = name.decode("ascii")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return True
    bare = name[:-1] if name.endswith(b".") else name
    if not bare or len(bare) > MAX_BOUND_NAME - 1:
        return False
    labels = bare.split(b".")
    if not all(_LDH_LABEL.match(label) for label in labels):
        return False
    return not labels[-1].isdigit()


def target_address(host: str, port: int) -> tuple[SOCKSAddress, bytes]:
    """
    Validate a CONNECT target and encode its DST.ADDR and DST.PORT fields.

    @param host: a literal IPv4 or IPv6 address (optionally in brackets) or a host name.
    @param port: 1..65535.
    @return: the target as a L{SOCKSAddress} and the C{ATYP DST.ADDR DST.PORT} bytes.
    @raise ValueError: if the host or the port is invalid.
    """
    if not isinstance(host, str) or not host:
        raise ValueError("host must be a non-empty string")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an integer 1..65535, not {port!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    literal = host[1:-1] if bracketed else host
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        if bracketed:
            raise ValueError(f"not an IPv6 address in brackets: {escape(host)!r}") from None
        raw = _encode_domain(host)
        name = raw.decode("ascii")
        fields = bytes([AddressType.DOMAIN, len(raw)]) + raw
        return SOCKSAddress(AddressType.DOMAIN, name, port), fields + port.to_bytes(2, "big")
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise ValueError(f"scoped IPv6 addresses cannot be sent over SOCKS5: {escape(host)!r}")
    atyp = AddressType.IPV4 if ip.version == 4 else AddressType.IPV6
    return (
        SOCKSAddress(atyp, ip.compressed, port),
        bytes([atyp]) + ip.packed + port.to_bytes(2, "big"),
    )


def _credential(value: object, what: str) -> bytes:
    """
    Validate one RFC 1929 credential field without ever showing its value.

    @raise ValueError: if C{value} is not text of 1..255 bytes in UTF-8.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not encodable as UTF-8") from None
    if not 1 <= len(raw) <= 255:
        raise ValueError(f"{what} must be 1..255 bytes in UTF-8, not {len(raw)}")
    return raw


# --------------------------------------------------------------------------------------------
# The negotiation, without I/O


class _Phase(enum.Enum):
    """
    Where a negotiation stands; the value names what we wait for.
    """

    METHOD = "method selection reply"
    AUTH = "RFC 1929 username/password reply"
    CONNECT = "CONNECT reply"
    DONE = "nothing (established)"
    FAILED = "nothing (failed)"


@attrs.frozen
class NegotiationResult:
    """
    A successful negotiation.

    @ivar method: the authentication method the proxy selected.
    @ivar bound: BND.ADDR and BND.PORT from the CONNECT reply (chosen by the proxy).
    @ivar leftover: bytes received after the reply; they belong to the application.
    """

    method: Method
    bound: SOCKSAddress
    leftover: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")


@attrs.frozen
class NegotiationStep:
    """
    What to do after some bytes from the proxy were fed to a L{SOCKS5Negotiation}.

    @ivar send: bytes to write to the proxy now (possibly empty).
    @ivar result: the outcome once the negotiation has succeeded, else L{None}.
    """

    send: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    result: NegotiationResult | None = None


class SOCKS5Negotiation:
    """
    The client side of one RFC 1928 CONNECT negotiation, as a pure state machine (no I/O).

    States, in order: waiting for the method selection reply, for the username/password reply
    (only if the proxy selected that method), for the CONNECT reply; then done, or failed. Feed
    every byte from the proxy to L{receive}; write what it returns in L{NegotiationStep.send}.

    Replies are checked byte by byte as they arrive, so the outcome is the same however the
    bytes are split, and at most L{MAX_REPLY_SIZE} bytes are kept between calls.
    """

    def __init__(
        self,
        host: str,
        port: int,
        credentials: tuple[bytes, bytes] | None = None,
        offer_no_auth: bool = False,
    ) -> None:
        """
        @param host: the target host, as for L{target_address}.
        @param port: the target port.
        @param credentials: the username and password, each 1..255 bytes, or L{None}.
        @param offer_no_auth: also offer "no authentication" when credentials are given.
        @raise ValueError: if the target or the credentials are invalid.
        """
        self.target, fields = target_address(host, port)
        self._request = bytes([SOCKS_VERSION, CMD_CONNECT, 0]) + fields
        if credentials is None:
            self.offered: tuple[Method, ...] = (Method.NO_AUTH,)
            self._auth_request = b""
        else:
            user, password = credentials
            if not (1 <= len(user) <= 255 and 1 <= len(password) <= 255):
                raise ValueError("username and password must be 1..255 bytes each")
            self._auth_request = (
                bytes([AUTH_VERSION, len(user)]) + user + bytes([len(password)]) + password
            )
            self.offered = (
                (Method.NO_AUTH, Method.USERNAME_PASSWORD)
                if offer_no_auth
                else (Method.USERNAME_PASSWORD,)
            )
        self._phase = _Phase.METHOD
        self._failed_in: _Phase | None = None
        self._buffer = b""
        self._method = Method.NO_AUTH

    def __repr__(self) -> str:
        """
        @return: a description without any credential.
        """
        return f"<SOCKS5Negotiation to {self.target} waiting for {self._phase.value}>"

    @property
    def phase(self) -> str:
        """
        @return: what the negotiation waits for, in words (for messages and logs); once it
            has failed, what it was waiting for when it failed.
        """
        if self._failed_in is not None:
            return self._failed_in.value
        return self._phase.value

    @property
    def finished(self) -> bool:
        """
        @return: whether the negotiation has succeeded or failed.
        """
        return self._phase in (_Phase.DONE, _Phase.FAILED)

    @property
    def buffered(self) -> int:
        """
        @return: how many bytes of an incomplete reply are held.
        """
        return len(self._buffer)

    @property
    def pending(self) -> bytes:
        """
        @return: the bytes of the incomplete reply (for error messages).
        """
        return self._buffer

    def greeting(self) -> bytes:
        """
        @return: the version identifier/method selection message to send first.
        """
        return bytes([SOCKS_VERSION, len(self.offered), *self.offered])

    def fail(self) -> None:
        """
        Mark the negotiation failed from outside (timeout, cancellation, lost connection).
        L{phase} goes on naming the step it failed in.
        """
        if not self.finished:
            self._failed_in = self._phase
        self._phase = _Phase.FAILED
        self._buffer = b""

    def receive(self, data: bytes) -> NegotiationStep:
        """
        Consume bytes from the proxy.

        @param data: the bytes, any amount.
        @return: what to send and, once established, the result.
        @raise SOCKSError: a subclass naming what went wrong; the negotiation is then failed.
        @raise RuntimeError: if called after the negotiation finished.
        """
        if self.finished:
            raise RuntimeError(f"negotiation already finished: {self._phase.value}")
        buf = self._buffer + data
        send = []
        try:
            while True:
                if self._phase is _Phase.METHOD:
                    used = self._parse_method(buf)
                    if used is None:
                        break
                    buf = buf[used:]
                    if self._method is Method.USERNAME_PASSWORD:
                        self._phase = _Phase.AUTH
                        send.append(self._auth_request)
                    else:
                        self._phase = _Phase.CONNECT
                        send.append(self._request)
                elif self._phase is _Phase.AUTH:
                    used = self._parse_auth(buf)
                    if used is None:
                        break
                    buf = buf[used:]
                    self._phase = _Phase.CONNECT
                    send.append(self._request)
                else:
                    parsed = self._parse_reply(buf)
                    if parsed is None:
                        break
                    bound, used = parsed
                    self._phase = _Phase.DONE
                    self._buffer = b""
                    result = NegotiationResult(self._method, bound, buf[used:])
                    return NegotiationStep(b"".join(send), result)
        except SOCKSError as exc:
            if exc.phase is None:
                exc.phase = self._phase.value
            self.fail()
            raise
        # A reply is incomplete only while it is shorter than its longest valid form.
        if len(buf) >= MAX_REPLY_SIZE:  # pragma: no cover - every parser decides earlier
            self.fail()
            raise SOCKSProtocolError("reply longer than any valid SOCKS5 reply", buf)
        self._buffer = buf
        return NegotiationStep(b"".join(send))

    def _parse_method(self, buf: bytes) -> int | None:
        """
        Parse the method selection reply: C{VER METHOD}.

        @return: the bytes used, or L{None} if more are needed.
        """
        if len(buf) >= 1 and buf[0] != SOCKS_VERSION:
            raise SOCKSProtocolError(
                f"method selection reply has version {buf[0]}, expected 5 (not a SOCKS5 proxy?)",
                buf,
            )
        if len(buf) < 2:
            return None
        method = buf[1]
        if method == Method.NO_ACCEPTABLE:
            raise NoAcceptableMethods(self.offered)
        if method not in self.offered:
            raise SOCKSProtocolError(
                f"method selection reply selected method 0x{method:02x}, not offered", buf
            )
        self._method = Method(method)
        return 2

    def _parse_auth(self, buf: bytes) -> int | None:
        """
        Parse the RFC 1929 reply: C{VER STATUS}.

        @return: the bytes used, or L{None} if more are needed.
        """
        if len(buf) >= 1 and buf[0] != AUTH_VERSION:
            raise SOCKSProtocolError(
                f"RFC 1929 username/password reply has version {buf[0]}, expected 1", buf
            )
        if len(buf) < 2:
            return None
        if buf[1] != 0:
            raise AuthenticationFailed(buf[1])
        return 2

    def _parse_reply(self, buf: bytes) -> tuple[SOCKSAddress, int] | None:
        """
        Parse the CONNECT reply: C{VER REP RSV ATYP BND.ADDR BND.PORT}.

        A failure code is raised as soon as the REP byte is known: the rest of a failure reply
        carries nothing we use, and some proxies close without sending it. A success reply
        must carry a well-formed BND.ADDR: any 4 or 16 bytes for ATYP 1 or 4, a name that
        passes L{is_valid_bound_name} for ATYP 3, checked byte by byte as it arrives (a length
        byte above L{MAX_BOUND_NAME} or a byte that no name may hold fails at once).

        @return: the bound address and the bytes used, or L{None} if more are needed.
        """
        if len(buf) >= 1 and buf[0] != SOCKS_VERSION:
            raise SOCKSProtocolError(f"CONNECT reply has version {buf[0]}, expected 5", buf)
        if len(buf) >= 2 and buf[1] != 0:
            raise reply_error(buf[1])
        if len(buf) >= 3 and buf[2] != 0:
            raise SOCKSProtocolError(f"CONNECT reply has reserved byte {buf[2]}, expected 0", buf)
        if len(buf) < 4:
            return None
        atyp = buf[3]
        if atyp == AddressType.IPV4:
            end = 4 + 4
        elif atyp == AddressType.IPV6:
            end = 4 + 16
        elif atyp == AddressType.DOMAIN:
            if len(buf) < 5:
                return None
            if buf[4] == 0:
                raise SOCKSProtocolError("CONNECT reply has an empty domain name", buf)
            if buf[4] > MAX_BOUND_NAME:
                raise SOCKSProtocolError(
                    f"CONNECT reply has a {buf[4]}-byte bound name, longer than any host name",
                    buf,
                )
            end = 5 + buf[4]
            if not _BOUND_NAME_BYTES.issuperset(buf[5:end]):
                raise SOCKSProtocolError(
                    "CONNECT reply has a bound name with a byte no host name holds", buf
                )
        else:
            raise SOCKSProtocolError(f"CONNECT reply has unknown address type {atyp}", buf)
        if len(buf) < end + 2:
            return None
        port = int.from_bytes(buf[end : end + 2], "big")
        if atyp == AddressType.DOMAIN:
            if not is_valid_bound_name(buf[5:end]):
                raise SOCKSProtocolError(
                    "CONNECT reply has a bound name that is neither a host name nor an address",
                    buf,
                )
            bound = SOCKSAddress(AddressType.DOMAIN, buf[5:end].decode("ascii"), port)
        else:
            ip = ipaddress.ip_address(buf[4:end])
            bound = SOCKSAddress(AddressType(atyp), ip.compressed, port)
        return bound, end + 2


# --------------------------------------------------------------------------------------------
# The protocol on the proxy connection, which becomes the application's transport


@implementer(IHalfCloseableProtocol)
class _SOCKS5ClientProtocol(ProtocolWrapper):
    """
    Runs the negotiation on the proxy connection, then stands between the proxy transport and
    the application protocol, as the application's transport (the L{ProtocolWrapper} pattern).

    The application protocol is built when the proxy connection is made, but sees
    C{makeConnection} only once the CONNECT reply succeeded; if the negotiation fails it never
    sees anything, as with any failed connection attempt.
    """

    factory: _SOCKS5WrappingFactory
    # zope interfaces are not understood by mypy without a plugin: use them dynamically.
    transport: Any
    wrappedProtocol: Any

    def __init__(self, factory: _SOCKS5WrappingFactory, wrappedProtocol: IProtocol) -> None:
        """
        @param factory: the factory of this connection attempt.
        @param wrappedProtocol: the application protocol.
        """
        super().__init__(factory, wrappedProtocol)
        self.negotiation = factory.new_negotiation()
        self.socks_target = self.negotiation.target
        self.socks_bound: SOCKSAddress | None = None
        self._established = False
        self._aborted = False

    def makeConnection(self, transport: ITransport) -> None:
        """
        Attach to the proxy transport and send the greeting; the application waits.

        @param transport: the transport to the proxy.
        """
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        """
        Send the method selection message.
        """
        self.factory.proxy_connected(self)
        if not self.negotiation.finished:
            self.transport.write(self.negotiation.greeting())

    def dataReceived(self, data: bytes) -> None:
        """
        Feed the negotiation, or once established pass the bytes on.

        @param data: bytes from the proxy.
        """
        if self._established:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.negotiation.finished:
            return  # failed: we aborted, anything still arriving is dropped unread
        try:
            step = self.negotiation.receive(data)
        except SOCKSError as exc:
            self.fail(exc)
            return
        if step.send:
            self.transport.write(step.send)
        if step.result is not None:
            self._establish(step.result)

    def _establish(self, result: NegotiationResult) -> None:
        """
        Connect the application protocol, fire the endpoint's Deferred, then hand over the
        bytes that came with the reply (unless the application already closed).
        """
        self._established = True
        self.socks_bound = result.bound
        self.factory.registerProtocol(self)
        try:
            self.wrappedProtocol.makeConnection(self)
        except Exception:
            # As a TCP transport would: the connection is dropped (the application then sees
            # connectionLost), and the attempt fails with the application's error.
            self._aborted = True
            self.transport.abortConnection()
            self.factory.failed(Failure(), "the application protocol's connectionMade")
            return
        self.factory.established(self, result)
        if result.leftover and not (self.disconnecting or self._aborted):
            self.wrappedProtocol.dataReceived(result.leftover)

    def fail(self, exc: Exception) -> None:
        """
        End the negotiation with an error: abort the proxy connection and fail the attempt.

        @param exc: the reason given to the endpoint's Deferred.
        """
        self.negotiation.fail()
        self._aborted = True
        self.transport.abortConnection()
        self.factory.failed(Failure(exc))

    def abort_negotiation(self) -> None:
        """
        Abort the proxy connection without failing the attempt (the caller fails it).
        """
        if not self._established:
            self.negotiation.fail()
            self._aborted = True
            self.transport.abortConnection()

    def abortConnection(self) -> None:
        """
        Abort the connection (from the application).
        """
        self._aborted = True
        self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        """
        The proxy half-closed: pass it on if the application understands half-close, else
        close, as a plain TCP transport would.
        """
        if not self._established:
            if not self.negotiation.finished:
                self.fail(SOCKSConnectionClosed(self.negotiation.phase, self.negotiation.pending))
            return
        halfcloseable: Any = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if halfcloseable is not None:
            halfcloseable.readConnectionLost()
        else:
            self.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Our write side is closed: tell a half-close-aware application.
        """
        if self._established:
            halfcloseable: Any = IHalfCloseableProtocol(self.wrappedProtocol, None)
            if halfcloseable is not None:
                halfcloseable.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The proxy connection is gone: tell the application, or fail the negotiation.

        @param reason: why.
        """
        if self._established:
            super().connectionLost(reason)
            return
        if not self.negotiation.finished:
            phase, pending = self.negotiation.phase, self.negotiation.pending
            self.negotiation.fail()
            self.factory.failed(Failure(SOCKSConnectionClosed(phase, pending)))


class _SOCKS5WrappingFactory(WrappingFactory[_SOCKS5ClientProtocol]):
    """
    One connection attempt: the factory given to the proxy endpoint, and the owner of the
    Deferred that L{SOCKS5ClientEndpoint.connect} returns.
    """

    protocol = _SOCKS5ClientProtocol
    #: One factory per connection attempt: no "Starting factory" log lines.
    noisy = False

    def __init__(self, endpoint: SOCKS5ClientEndpoint, wrappedFactory: IProtocolFactory) -> None:
        """
        @param endpoint: the endpoint making the attempt.
        @param wrappedFactory: the application's factory.
        """
        super().__init__(wrappedFactory)
        self.endpoint = endpoint
        self.connection: _SOCKS5ClientProtocol | None = None
        self.proxy_attempt: Deferred[IProtocol] | None = None
        self._cancelled_in: str | None = None
        self.deferred: Deferred[IProtocol] = Deferred(self._cancel)

    def new_negotiation(self) -> SOCKS5Negotiation:
        """
        @return: a fresh negotiation for this endpoint's target and credentials.
        """
        return self.endpoint._new_negotiation()

    def buildProtocol(self, addr: IAddress | None) -> _SOCKS5ClientProtocol:
        """
        Build the application protocol (with the proxy's address) and its wrapper.

        @raise error.NoProtocol: if the application's factory returned L{None}.
        """
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            raise error.NoProtocol()
        return self.protocol(self, wrapped)

    def proxy_connected(self, connection: _SOCKS5ClientProtocol) -> None:
        """
        The proxy connection is up; abort it at once if the attempt is already over.
        """
        self.connection = connection
        if self.deferred.called:
            connection.abort_negotiation()

    def established(self, connection: _SOCKS5ClientProtocol, result: NegotiationResult) -> None:
        """
        The CONNECT reply succeeded: fire the Deferred with the application protocol.
        """
        self.endpoint._log_established(connection, result)
        if not self.deferred.called:
            self.deferred.callback(connection.wrappedProtocol)

    def failed(self, reason: Failure, phase: str | None = None) -> None:
        """
        The attempt failed: fire the Deferred with C{reason} (once).

        @param phase: what the attempt was waiting for; by default the negotiation's phase (or
            the connection to the proxy, before there is one).
        """
        if not self.deferred.called:
            self.endpoint._log_failed(reason, phase or self.phase())
            self.deferred.errback(reason)

    def phase(self) -> str:
        """
        @return: what the attempt waits for, in words.
        """
        if self.connection is None:
            return "the connection to the proxy"
        return self.connection.negotiation.phase

    def watch_proxy_attempt(self, attempt: Deferred[IProtocol]) -> None:
        """
        Follow the proxy endpoint's Deferred: its failure is the attempt's failure.
        """
        self.proxy_attempt = attempt

        def proxy_failed(reason: Failure) -> None:
            if self.deferred.called or self._cancelled_in is not None:
                return None  # we cancelled it (caller or timeout): reported by the Deferred
            self.failed(reason)
            return None

        attempt.addCallbacks(lambda _: None, proxy_failed)

    def _cancel(self, deferred: Deferred[IProtocol]) -> None:
        """
        Cancel the attempt (by the caller or by the timeout): stop connecting to the proxy, or
        abort the proxy connection. The Deferred then fails with L{CancelledError}.
        """
        self._cancelled_in = self.phase()
        if self.connection is not None:
            self.connection.abort_negotiation()
        elif self.proxy_attempt is not None:
            self.proxy_attempt.cancel()

    def timed_out(self, result: IProtocol | Failure, timeout: float) -> IProtocol | Failure:
        """
        Turn the cancellation done by the timeout into L{SOCKSTimeout}.
        """
        if isinstance(result, Failure) and result.check(CancelledError):
            phase = self._cancelled_in or self.phase()
            exc = SOCKSTimeout(timeout, phase)
            self.endpoint._log_failed(Failure(exc), phase)
            return Failure(exc)
        return result


# --------------------------------------------------------------------------------------------
# The endpoint


@implementer(IStreamClientEndpoint)
class SOCKS5ClientEndpoint:
    """
    A client endpoint that connects to C{host:port} through a SOCKS5 proxy.

    Its guarantees (methods offered, bounds, timeout, cancellation, what the application
    sees) and the endpoint string syntax are in C{docs/endpoints.md}.
    """

    log = Logger()

    def __init__(
        self,
        proxy_endpoint: IStreamClientEndpoint,
        host: str,
        port: int,
        *,
        reactor: IReactorTime,
        username: str | None = None,
        password: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        offer_no_auth: bool = False,
    ) -> None:
        """
        @param proxy_endpoint: how to reach the proxy.
        @param host: the target: a literal IPv4/IPv6 address, sent as such, or a host name,
            resolved by the proxy.
        @param port: the target port, 1..65535.
        @param reactor: the clock for the negotiation timeout.
        @param username: the RFC 1929 username, 1..255 bytes in UTF-8, or L{None}.
        @param password: the RFC 1929 password, 1..255 bytes in UTF-8; required with
            C{username}.
        @param timeout: seconds from L{connect} to the final reply, proxy connection included.
        @param offer_no_auth: with credentials, also offer "no authentication" (off by default,
            so that a proxy cannot silently drop authentication).
        @raise ValueError: if any argument is invalid (the message never shows the password).
        """
        self._proxy_endpoint: Any = proxy_endpoint
        self._target = target_address(host, port)[0]
        self._host, self._port = host, port
        self._reactor = reactor
        if (username is None) != (password is None):
            raise ValueError("username and password must be given together")
        self._credentials: tuple[bytes, bytes] | None = None
        if username is not None:
            self._credentials = (
                _credential(username, "username"),
                _credential(password, "password"),
            )
        self.username = username
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ValueError("timeout must be a number of seconds")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.timeout = float(timeout)
        if not isinstance(offer_no_auth, bool):
            raise ValueError("offer_no_auth must be a bool")
        self.offer_no_auth = offer_no_auth

    @property
    def target(self) -> SOCKSAddress:
        """
        @return: the target as it will be sent to the proxy.
        """
        return self._target

    @property
    def proxy_endpoint(self) -> IStreamClientEndpoint:
        """
        @return: the endpoint used to reach the proxy.
        """
        return self._proxy_endpoint

    def __repr__(self) -> str:
        """
        @return: a description that names the user but never shows the password.
        """
        auth = "" if self.username is None else f" user={escape(self.username)}"
        return f"<SOCKS5ClientEndpoint {self.target} via {self._proxy_endpoint!r}{auth}>"

    def _new_negotiation(self) -> SOCKS5Negotiation:
        """
        @return: a negotiation for one connection.
        """
        return SOCKS5Negotiation(self._host, self._port, self._credentials, self.offer_no_auth)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect to the proxy and ask it to CONNECT to the target.

        @param protocolFactory: builds the application protocol (called with the proxy's
            address once the proxy connection is made).
        @return: a cancellable L{Deferred} firing with the application protocol after its
            C{connectionMade}, or failing with a L{SOCKSError}, L{CancelledError}, or the proxy
            endpoint's own error.
        """
        attempt = _SOCKS5WrappingFactory(self, protocolFactory)
        attempt.deferred.addTimeout(self.timeout, self._reactor, attempt.timed_out)
        try:
            proxy_deferred = self._proxy_endpoint.connect(attempt)
        except Exception:
            attempt.failed(Failure())
        else:
            attempt.watch_proxy_attempt(proxy_deferred)
        return attempt.deferred

    def _log_established(
        self, connection: _SOCKS5ClientProtocol, result: NegotiationResult
    ) -> None:
        """
        Log an established tunnel.
        """
        self.log.debug(
            "SOCKS5 tunnel to {target} via {proxy} established (bound {bound}, method {method})",
            event="socks5.connected",
            target=str(self.target),
            proxy=_describe_address(connection.transport),
            bound=str(result.bound),
            method=result.method.name,
            user=escape(self.username),
        )

    def _log_failed(self, reason: Failure, phase: str) -> None:
        """
        Log a failed attempt (the reason's text never contains a secret). A L{SOCKSError}'s
        text already has the proxy's bytes escaped, so it is logged as it is; any other error's
        text is escaped here.
        """
        if isinstance(reason.value, SOCKSError):
            text = str(reason.value)
        else:
            text = escape(str(reason.value), limit=300)
        self.log.info(
            "SOCKS5 connection to {target} failed while waiting for {phase}: {reason}",
            event="socks5.failed",
            target=str(self.target),
            phase=phase,
            reason=text,
            error=type(reason.value).__name__,
            user=escape(self.username),
        )


def _describe_address(transport: Any) -> str:
    """
    Render a transport's peer address for a log line.
    """
    try:
        peer = transport.getPeer()
    except Exception:  # pragma: no cover - exotic transports
        return "-"
    if isinstance(peer, IPv4Address | IPv6Address):
        return f"{peer.host}:{peer.port}"
    if isinstance(peer, HostnameAddress):
        return f"{escape(peer.hostname)}:{peer.port}"
    return escape(str(peer))


# --------------------------------------------------------------------------------------------
# The endpoint string


#: Every key a C{socks5:} endpoint string may have.
ENDPOINT_KEYS: Final = SOCKS5_ENDPOINT_KEYS


def _port(value: str, what: str = "port") -> int:
    """
    Turn a port number or a TCP service name into a port one can connect to, with
    L{netguard.endpoints.resolve_port}.

    @param value: C{"443"} or C{"https"}.
    @param what: the key name, for the error message.
    @return: 1..65535.
    @raise ValueError: if C{value} is neither, or is port 0.
    """
    try:
        number = resolve_port(value)
    except ValueError:
        problem = "not a port 1..65535" if value.isdigit() else "no such TCP service"
        raise ValueError(f"{what}={escape(value)}: {problem}") from None
    if number == 0:
        raise ValueError(f"{what}={escape(value)}: not a port 1..65535")
    return number


def _parse_bool(key: str, value: str) -> bool:
    """
    Parse C{yes/no/true/false/1/0/on/off}.
    """
    lowered = value.lower()
    if lowered in ("yes", "true", "1", "on"):
        return True
    if lowered in ("no", "false", "0", "off"):
        return False
    raise ValueError(f"{key}={escape(value)}: expected yes or no")


def endpoint_from_string_args(reactor: Any, *args: str, **kwargs: str) -> SOCKS5ClientEndpoint:
    """
    Build a L{SOCKS5ClientEndpoint} from the parsed parts of a C{socks5:} endpoint string (what
    the plugin's C{parseStreamClient} receives). The grammar is in C{docs/endpoints.md}.

    @param reactor: the reactor given to C{clientFromString}; used for the proxy endpoint and
        as the clock.
    @param args: positional parts; none are accepted.
    @param kwargs: the C{key=value} parts.
    @return: the endpoint.
    @raise ValueError: on any missing, unknown, conflicting or invalid key.
    """
    from twisted.internet.endpoints import HostnameEndpoint, clientFromString

    if args:
        raise ValueError(
            "socks5: takes only key=value arguments, e.g. "
            "socks5:host=example.com:port=443:proxy_host=127.0.0.1:proxy_port=1080"
        )
    if "password" in kwargs:
        raise ValueError(
            "socks5: never put a password in an endpoint string; use password_file=PATH"
        )
    unknown = sorted(set(kwargs) - ENDPOINT_KEYS)
    if unknown:
        raise ValueError(
            f"socks5: unknown key(s) {', '.join(escape(k) for k in unknown)}; "
            f"known: {', '.join(sorted(ENDPOINT_KEYS))}"
        )
    for key in ("host", "port"):
        if not kwargs.get(key):
            raise ValueError(f"socks5: {key}= is required")
    port = _port(kwargs["port"])

    if ("proxy" in kwargs) == ("proxy_host" in kwargs):
        raise ValueError("socks5: give exactly one of proxy= and proxy_host=")
    proxy: Any
    if "proxy" in kwargs:
        if "proxy_port" in kwargs:
            raise ValueError("socks5: proxy_port= goes with proxy_host=, not with proxy=")
        proxy = clientFromString(reactor, kwargs["proxy"])
    else:
        if not kwargs["proxy_host"]:
            raise ValueError("socks5: proxy_host= is empty")
        if "proxy_port" in kwargs:
            proxy_port = _port(kwargs["proxy_port"], "proxy_port")
        else:
            try:
                proxy_port = socket.getservbyname("socks", "tcp")
            except OSError:
                proxy_port = 1080  # RFC 1928's registered port
        proxy = HostnameEndpoint(reactor, kwargs["proxy_host"], proxy_port)

    if ("user" in kwargs) != ("password_file" in kwargs):
        raise ValueError("socks5: user= and password_file= must be given together")
    username = password = None
    if "user" in kwargs:
        username = kwargs["user"]
        password = read_password_file(kwargs["password_file"])

    timeout = DEFAULT_TIMEOUT
    if "timeout" in kwargs:
        try:
            timeout = float(kwargs["timeout"])
        except ValueError:
            raise ValueError(
                f"socks5: timeout={escape(kwargs['timeout'])}: not a number"
            ) from None
    offer_no_auth = _parse_bool("offer_no_auth", kwargs.get("offer_no_auth", "no"))

    return SOCKS5ClientEndpoint(
        proxy,
        kwargs["host"],
        port,
        reactor=reactor,
        username=username,
        password=password,
        timeout=timeout,
        offer_no_auth=offer_no_auth,
    )

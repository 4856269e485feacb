# -*- test-case-name: tests.test_socks5 -*-
"""
The client side of an RFC 1928 CONNECT negotiation with RFC 1929 username/password, as a
pure state machine without I/O: target and credential encoding, reply parsing and bounds.

The messages and their bounds are described in C{docs/endpoints.md}.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Final

import attrs

from netguard.log import escape
from netguard.outbound.socks5.errors import (
    AuthenticationFailed,
    NoAcceptableMethods,
    SOCKSError,
    SOCKSProtocolError,
    reply_error,
)
from netguard.outbound.socks5.wire import (
    AUTH_VERSION,
    CMD_CONNECT,
    SOCKS_VERSION,
    AddressType,
    Method,
    SOCKSAddress,
)

__all__ = [
    "MAX_BOUND_NAME",
    "MAX_REPLY_SIZE",
    "NegotiationResult",
    "NegotiationStep",
    "SOCKS5Negotiation",
    "is_valid_bound_name",
    "target_address",
]

#: The longest host name a CONNECT reply may carry as BND.ADDR (ATYP 3): 253 characters, the
#: longest DNS name in text form, plus one optional final dot.
MAX_BOUND_NAME: Final = 254
#: The longest valid server message: a CONNECT reply with the longest bound host name
#: (VER, REP, RSV, ATYP, length byte, name, port).
MAX_REPLY_SIZE: Final = 4 + 1 + MAX_BOUND_NAME + 2

_LABEL = re.compile(rb"\A[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
#: A host name label (RFC 952/1123 LDH: letters, digits, inner hyphens; 1..63 characters).
_LDH_LABEL = re.compile(rb"\A[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
#: Every byte that may appear in a bound host name or textual IP address (colons: IPv6).
_BOUND_NAME_BYTES: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.:"
)


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

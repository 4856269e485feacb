# -*- test-case-name: tests.test_proxy_header -*-
"""
The C{haproxy:} listener: read the PROXY protocol header (version 1 or 2) I{before} the
application's factory builds a protocol, so that admission control and every log line see
the client address the header names, not the proxy's. Usage::

    endpoint = ProxyHeaderEndpoint(serverFromString(reactor, "tcp:7701"), reactor)
    endpoint.listen(factory)

Bounds, refusals and what to expose: C{docs/operating.md} section 4.1.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from netguard.framing import peer_label

log = Logger()

#: Seconds a new connection has to complete its PROXY header.
HEADER_TIMEOUT = 10.0

#: Connections that may wait for their header at once; admission control only counts a
#: connection once its header names the client, so this bounds the sockets held before it.
MAX_PENDING = 256

#: The longest version 1 header, its line end included (the specification's bound).
V1_MAX_BYTES = 107

#: How a version 1 header starts.
V1_PREFIX = b"PROXY"

#: A whole version 1 line (without its CRLF), exactly as the specification writes it: single
#: spaces, an address made of the characters of a textual IPv4 or IPv6 address (no scope),
#: ports in plain decimal without sign, separator or leading zero. C{UNKNOWN} may be
#: followed by anything printable, which is ignored.
_V1_LINE = re.compile(
    rb"PROXY (?:UNKNOWN(?: [\x20-\x7e]*)?"
    rb"|(?P<family>TCP4|TCP6) (?P<src>[0-9A-Fa-f:.]{1,45}) (?P<dst>[0-9A-Fa-f:.]{1,45})"
    rb" (?P<sport>0|[1-9][0-9]{0,4}) (?P<dport>0|[1-9][0-9]{0,4}))"
)


class InvalidV1Header(InvalidProxyHeader):
    """
    A version 1 header that is not in the specification's exact form.

    @ivar why: what is wrong, for the log (never text from the header).
    """

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class ProxyHeader:
    """
    What a PROXY header names.

    @ivar source: the client's address, or L{None} when the header names none.
    @ivar destination: the address the client connected to, or L{None}.
    """

    source: IPv4Address | IPv6Address | None
    destination: IPv4Address | IPv6Address | None


def parse_v1(line: bytes) -> ProxyHeader:
    """
    Parse one version 1 header line (without its CRLF), strictly: C{PROXY TCP4|TCP6 <src>
    <dst> <sport> <dport>} with an address of the family the line names (IPv4 dotted
    decimal without leading zeros; IPv6 without a scope), ports 0..65535 in plain decimal;
    or C{PROXY UNKNOWN} (no address).

    @raise InvalidV1Header: anything else.
    @return: the addresses; an IPv6 address in its compressed form.
    """
    match = _V1_LINE.fullmatch(line)
    if match is None:
        raise InvalidV1Header("malformed version 1 header")
    family = match.group("family")
    if family is None:
        return ProxyHeader(None, None)
    ports = [int(match.group(name)) for name in ("sport", "dport")]
    if max(ports) > 0xFFFF:
        raise InvalidV1Header("a port out of range")
    parse = ipaddress.IPv4Address if family == b"TCP4" else ipaddress.IPv6Address
    try:
        hosts = [parse(match.group(name).decode("ascii")) for name in ("src", "dst")]
    except ValueError:
        raise InvalidV1Header(f"an address that is not {family.decode()}") from None
    make = IPv4Address if family == b"TCP4" else IPv6Address
    return ProxyHeader(
        make("TCP", str(hosts[0]), ports[0]),  # type: ignore[arg-type]
        make("TCP", str(hosts[1]), ports[1]),  # type: ignore[arg-type]
    )


class V1Parser:
    """
    Reads one version 1 header: up to its CRLF, at most L{V1_MAX_BYTES} bytes with it, then
    L{parse_v1}. (Twisted's own parser takes extra fields, any C{int()} as a port, an
    address of the other family, a scope, and lines longer than the bound.)
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | tuple[None, None]:
        """
        Take more bytes.

        @return: the header and the bytes after it, or C{(None, None)} while incomplete.
        @raise InvalidV1Header: too long without its line end, or not a valid line.
        """
        self._buffer += data
        end = self._buffer.find(b"\r\n", 0, V1_MAX_BYTES)
        if end < 0:
            if len(self._buffer) >= V1_MAX_BYTES:
                raise InvalidV1Header(f"no line end within {V1_MAX_BYTES} bytes")
            return None, None
        line, remaining = self._buffer[:end], self._buffer[end + 2 :]
        self._buffer = b""
        return parse_v1(line), remaining


@implementer(IHalfCloseableProtocol)
class ProxyHeaderProtocol(ProtocolWrapper):
    """
    One connection of a L{ProxyHeaderFactory}: reads the header, then builds the wrapped
    factory's protocol with the header's source address and relays everything to it, as its
    transport (C{getPeer}/C{getHost} give the header's addresses).
    """

    wrappedProtocol: Any
    factory: Any

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        super().__init__(factory, None)  # type: ignore[arg-type]
        self._raw: Any = None
        self._parser: V1Parser | V2Parser | None = None
        self._pending = b""
        self._info: Any = None
        self._timer: Any = None
        self._waiting = False

    def logPrefix(self) -> str:
        if self.wrappedProtocol is None:
            return "ProxyHeaderProtocol"
        return str(super().logPrefix())

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))  # IHalfCloseableProtocol stays: class
        self.transport = self._raw = transport
        self.connected = 1
        self.factory.registerProtocol(self)
        self._waiting = True
        self.factory.pending += 1
        self._timer = self.factory.clock.callLater(HEADER_TIMEOUT, self._expired)

    def _expired(self) -> None:
        self._timer = None
        self._cancel_timer()
        log.info(
            "no PROXY header from {peer} within {timeout} s",
            event="conn.timeout",
            which="proxy-header",
            peer=peer_label(self._raw.getPeer()),
            timeout=HEADER_TIMEOUT,
        )
        self._raw.abortConnection()

    def _invalid(self, why: str) -> None:
        self._cancel_timer()
        log.info(
            "invalid PROXY header from {peer}: {why}",
            event="conn.reject",
            reason="proxy-header",
            why=why,
            peer=peer_label(self._raw.getPeer()),
        )
        self._raw.abortConnection()

    def _cancel_timer(self) -> None:
        """
        Stop waiting for the header: cancel its deadline and leave the pending count.
        """
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self._waiting:
            self._waiting = False
            self.factory.pending -= 1

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._info is not None or self._timer is None:
            return  # refused or closing: nothing more is read
        parser = self._parser
        if parser is None:
            self._pending += data
            pending = self._pending
            v1, v2 = V1_PREFIX, V2Parser.PREFIX
            if len(pending) < 16 and v2.startswith(pending[: len(v2)]):
                return  # maybe version 2: wait for its fixed part
            if len(pending) < len(v1) and v1.startswith(pending):
                return  # maybe version 1
            if pending.startswith(v2) and pending[12] & 0xF0 == 0x20:
                parser = V2Parser()
            elif pending.startswith(v1):
                parser = V1Parser()
            else:
                self._invalid("not a PROXY header")
                return
            self._parser = parser
            data, self._pending = pending, b""
        try:
            info, remaining = parser.feed(data)
        except InvalidV1Header as e:
            self._invalid(e.why)
            return
        except (InvalidProxyHeader, ValueError, IndexError, struct.error):
            # Twisted's version 2 parser raises more than InvalidProxyHeader on junk: every
            # one of them is a malformed header, never a traceback.
            self._invalid("malformed")
            return
        if info is None:
            return
        if not all(_ip_address(a) for a in (info.source, info.destination) if a is not None):
            self._invalid("an address that is not an IP address")
            return
        if any(a is not None and a.type != "TCP" for a in (info.source, info.destination)):
            self._invalid("not a TCP client")
            return
        self._cancel_timer()
        self._info = info
        self._start(remaining or b"")

    def _start(self, remaining: bytes) -> None:
        """
        The header is complete: let the wrapped factory decide with the header's address.
        """
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            self._raw.loseConnection()
            return
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        if remaining and self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(remaining)

    def getPeer(self) -> Any:
        if self._info is not None and self._info.source is not None:
            return self._info.source
        return self._raw.getPeer()

    def getHost(self) -> Any:
        if self._info is not None and self._info.destination is not None:
            return self._info.destination
        return self._raw.getHost()

    def readConnectionLost(self) -> None:
        wrapped = self.wrappedProtocol
        if wrapped is not None and IHalfCloseableProtocol.providedBy(wrapped):
            wrapped.readConnectionLost()
        else:
            self._raw.loseConnection()

    def writeConnectionLost(self) -> None:
        wrapped = self.wrappedProtocol
        if wrapped is not None and IHalfCloseableProtocol.providedBy(wrapped):
            wrapped.writeConnectionLost()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancel_timer()
        self.connected = 0
        if self.wrappedProtocol is None:
            self.factory.unregisterProtocol(self)
            return
        super().connectionLost(reason)


def _ip_address(address: Any) -> bool:
    """
    Whether a header's address is an IPv4 or IPv6 address (a version 2 header may name a
    unix socket).
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ProxyHeaderFactory(WrappingFactory):
    """
    Wraps the application's factory: each connection reads its PROXY header first.

    @ivar clock: the L{IReactorTime} of the header deadline.
    @ivar max_pending: the most connections waiting for their header at once.
    @ivar pending: how many wait now.
    """

    protocol = ProxyHeaderProtocol  # type: ignore[assignment]

    def __init__(self, wrappedFactory: Any, clock: Any, max_pending: int = MAX_PENDING) -> None:
        super().__init__(wrappedFactory)
        self.clock = clock
        self.max_pending = max_pending
        self.pending = 0

    def buildProtocol(self, addr: Any) -> Any:
        if self.pending >= self.max_pending:
            log.info(
                "refused {peer}: {pending} connections already wait for their PROXY header",
                event="conn.reject",
                reason="proxy-header-pending",
                pending=self.pending,
                peer=peer_label(addr),
            )
            return None  # Twisted closes the connection
        return ProxyHeaderProtocol(self)

    def logPrefix(self) -> str:
        prefix = getattr(self.wrappedFactory, "logPrefix", None)
        name = prefix() if callable(prefix) else type(self.wrappedFactory).__name__
        return f"{name} (PROXY)"


@implementer(IStreamServerEndpoint)
class ProxyHeaderEndpoint:
    """
    A server endpoint whose connections start with a PROXY header (as HAProxy's
    C{send-proxy} and C{send-proxy-v2} send it); what C{haproxy:<listener>} builds in
    netguard.

    Twisted's own C{haproxy:} wrapper builds the application's protocol as soon as the TCP
    connection is accepted, with the proxy's address, and connects it before the header has
    been read; this one does not. Until its header is complete a connection is not admitted,
    counts against nothing and reaches no application code; it is bounded by
    L{HEADER_TIMEOUT} and by the header's own length limits (107 bytes for version 1,
    16 + 65535 for version 2), and at most L{MAX_PENDING} connections wait for their header
    at once (more are closed at accept). A connection whose header is invalid or late is
    closed without a reply (its peer is the proxy, which speaks no NGP/1) and logged. A
    version 2 C{LOCAL} header (a proxy's own health check) carries no address: the
    connection keeps the proxy's.
    """

    def __init__(self, endpoint: Any, clock: Any) -> None:
        """
        @param endpoint: the L{IStreamServerEndpoint} underneath.
        @param clock: the L{IReactorTime} of the header deadline.
        """
        self.endpoint = endpoint
        self.clock = clock

    def listen(self, protocolFactory: Any) -> Any:
        """
        Listen with every connection of C{protocolFactory} behind a PROXY header.
        """
        return self.endpoint.listen(ProxyHeaderFactory(protocolFactory, self.clock))

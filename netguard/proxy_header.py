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
import struct
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
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
            v1, v2 = V1Parser.PROXYSTR, V2Parser.PREFIX
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
        except (InvalidProxyHeader, ValueError, IndexError, struct.error):
            # Twisted's parsers raise more than InvalidProxyHeader on junk (int("x") for a
            # port, for one): every one of them is a malformed header, never a traceback.
            self._invalid("malformed")
            return
        if info is None:
            return
        if not all(_ip_address(a) for a in (info.source, info.destination) if a is not None):
            self._invalid("an address that is not an IP address")
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
    Whether a header's address is an IPv4 or IPv6 address (Twisted's version 1 parser takes
    any word: C{PROXY TCP4 not-an-ip ...}).
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

# -*- test-case-name: tests.test_proxy_header -*-
"""
The C{haproxy:} listener: accept a PROXY protocol header (version 1 or 2) only from the
listed senders (C{proxy_from}), and read it I{before} the application's factory builds a
protocol, so that admission control and every log line see the client address the header
names, not the proxy's. Usage::

    endpoint = ProxyHeaderEndpoint(
        serverFromString(reactor, "tcp:7701"), reactor, Senders.of(["192.0.2.10"])
    )
    endpoint.listen(factory)

or, from a listener string, C{proxy_listener_endpoint(reactor,
"haproxy:proxy_from=192.0.2.10:tcp:7701")}.

Bounds, refusals and what to expose: C{docs/operating.md} section 4.1.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from netguard.addresses import peer_ip
from netguard.framing import peer_label
from netguard.proxy_listener import (
    DEFAULT_PROXY_FROM,
    Network,
    parse_proxy_from,
    split_proxy_listener,
)
from netguard.proxy_senders import SenderBook
from netguard.refusal_log import RefusalLog

log = Logger()

#: Seconds a new connection has to complete its PROXY header.
HEADER_TIMEOUT = 10.0

#: Connections that may wait for their header at once, per process (each worker of
#: C{workers = N} has its own); admission control only counts a connection once its header
#: names the client, so this bounds the sockets held before it.
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


#: How many C{wrappedFactory} links L{ProxyHeaderFactory} follows to find the admission
#: that offences are recorded with (the gateway's factory is under the TLS wrapper on a TLS
#: listener).
MAX_WRAPPING = 4


class Senders:
    """
    Who may send a PROXY header: the connections whose own peer address is in one of
    C{networks}. Unix-socket peers are always allowed (the socket's mode decides who can
    connect); a peer address that is neither an IP address nor a unix socket never is. An
    IPv4-mapped IPv6 peer (a dual-stack listener) is matched as the IPv4 address it is.

    @ivar networks: the networks, as C{proxy_from=} lists them.
    """

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)

    @classmethod
    def of(cls, entries: Iterable[str]) -> Senders:
        """
        Senders from address and network texts (C{"192.0.2.10"}, C{"10.1.0.0/24"}).

        @raise netguard.endpoints.EndpointError: on an entry that is neither.
        """
        return cls(parse_proxy_from(",".join(entries)))

    @classmethod
    def default(cls) -> Senders:
        """
        The senders of a C{haproxy:} listener without C{proxy_from=}: this host only
        (L{netguard.proxy_listener.DEFAULT_PROXY_FROM}).
        """
        return cls(ipaddress.ip_network(text) for text in DEFAULT_PROXY_FROM)

    def allows(self, address: object) -> bool:
        """
        Whether a connection from C{address} (its own peer address, never a header's) may
        send a PROXY header.
        """
        if isinstance(address, UNIXAddress):
            return True
        ip = peer_ip(getattr(address, "host", None))
        return ip is not None and any(ip in network for network in self.networks)

    def __repr__(self) -> str:
        return f"Senders({', '.join(str(n) for n in self.networks)})"


class _Offences(Protocol):
    """
    What L{ProxyHeaderFactory} needs of an admission (L{netguard.admission.Admission}).
    """

    def offence(self, address: object, kind: str) -> float | None: ...

    def source_key(self, address: object) -> str: ...

    def blocked_for(self, address: object) -> float | None: ...


@implementer(IHalfCloseableProtocol)
class ProxyHeaderProtocol(ProtocolWrapper):
    """
    One connection of a L{ProxyHeaderFactory}: reads the header, then builds the wrapped
    factory's protocol with the header's source address and relays everything to it, as its
    transport (C{getPeer}/C{getHost} give the header's addresses).
    """

    wrappedProtocol: Any
    factory: Any

    def __init__(self, factory: ProxyHeaderFactory, arrived_blocked: bool = False) -> None:
        """
        @param arrived_blocked: whether admission held the sender's source blocked when the
            connection was accepted (by offences that are not the sender's own at this
            listener: a header client's sharing its key, or another worker's).
        """
        super().__init__(factory, None)  # type: ignore[arg-type]
        self._arrived_blocked = arrived_blocked
        self._raw: Any = None
        self._parser: V1Parser | V2Parser | None = None
        self._pending = b""
        self._header: ProxyHeader | None = None
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
        self._received = False
        self.factory.pending += 1
        self._timer = self.factory.clock.callLater(HEADER_TIMEOUT, self._expired)

    def _expired(self) -> None:
        self._timer = None
        self._cancel_timer()
        peer = self._raw.getPeer()
        self.factory.refused(
            peer,
            "timeout",
            "conn.timeout",
            "no PROXY header from {peer} within {timeout} s",
            which="proxy-header",
            timeout=HEADER_TIMEOUT,
            listed=True,
            arrived_blocked=self._arrived_blocked,
        )
        self._raw.abortConnection()

    def _invalid(self, why: str) -> None:
        self._cancel_timer()
        self._parser, self._pending = None, b""
        self._refuse_invalid(why)
        self._raw.abortConnection()

    def _refuse_invalid(self, why: str) -> None:
        """
        Log a missing or malformed header and count it against the sender's address (the
        peer of this connection: it wrote the header).
        """
        self.factory.refused(
            self._raw.getPeer(),
            "format_error",
            "conn.reject",
            "invalid PROXY header from {peer}: {why}",
            reason="proxy-header",
            why=why,
            listed=True,
            arrived_blocked=self._arrived_blocked,
        )

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
        if self._header is not None or self._timer is None:
            return  # refused or closing: nothing more is read
        self._received = self._received or bool(data)
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
        # Only the two addresses are kept: Twisted's ProxyInfo also holds the whole raw
        # header (up to 16 + 65535 bytes of a version 2 header's TLVs), and the parser is
        # done with.
        self._parser = None
        header = ProxyHeader(info.source, info.destination)
        addresses = (header.source, header.destination)
        if not all(_ip_address(a) for a in addresses if a is not None):
            self._invalid("an address that is not an IP address")
            return
        if any(a is not None and a.type != "TCP" for a in addresses):
            self._invalid("not a TCP client")
            return
        self._cancel_timer()
        self._header = header
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

    def socket_transport(self) -> Any:
        """
        The transport under this wrapper once the wrapper is a pure pass-through: the header
        is read and accepted, the wrapped protocol runs, and nothing is held back (the bytes
        that came after the header went to it when it started). From then on acting on that
        transport (reading, writing, pausing, closing) is what acting through the wrapper
        does, and what it reports (data, half-close, loss) still reaches the wrapped
        protocol through this wrapper as its protocol.

        @return: that transport, or L{None} before then, or once the connection is gone.
        """
        if self.wrappedProtocol is None or self._header is None or self._pending:
            return None
        if not self.connected:
            return None
        return self._raw

    def getPeer(self) -> Any:
        if self._header is not None and self._header.source is not None:
            return self._header.source
        return self._raw.getPeer()

    def getHost(self) -> Any:
        if self._header is not None and self._header.destination is not None:
            return self._header.destination
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
        partial = self._waiting and self._received
        self._cancel_timer()
        if partial:
            # Some bytes, then the end, before a complete header: a truncated header. A
            # connection that ends before its first byte (a TCP health check, a port scan
            # by a listed sender) is no offence and is not logged.
            self._refuse_invalid("closed before the header was complete")
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
    Wraps the application's factory: each connection from a listed sender reads its PROXY
    header first; a connection from anyone else is closed at accept, before a byte is read.

    Every refusal (a sender not listed; a missing, malformed, truncated or late header) is
    logged, aggregated per source and reason as admission's refusals are (L{RefusalLog}),
    and counted as an offence against the address of the connection's own peer, the
    sender: the header's address is never charged, since whoever wrote it could have
    written anyone's. Offences go to the admission of the wrapped factory (the first
    C{admission} attribute along its C{wrappedFactory} links: the gateway's factory or an
    L{netguard.admitting.AdmittingFactory}); a factory without one records none.

    A listed sender is refused at accept only for a block its own offences at this
    listener earned (L{netguard.proxy_senders.SenderBook}, admission's rules) while admission
    still holds its source blocked (so C{ctl penalties clear} lifts it): never for a block
    a header's client earned, even one whose address is the sender's or shares its source
    key. That refusal is no new offence, as admission refuses a blocked source: its points
    cannot grow the block while it runs. A connection accepted while admission held the
    sender's source blocked by others' offences (a client's, or a block relayed from
    another worker or instance) is judged, and its offence counts toward the sender's own
    points here but not admission's, which would only extend the block in force (nor let
    processes that relay blocks extend each other's). Connections that were already
    waiting for their header when a block began are judged and charged as before, as
    admission charges the offences of connections it let in before a block. An address
    outside C{proxy_from} whose source admission holds blocked, for whatever reason, is
    refused as blocked, without a new offence.

    @ivar clock: the L{IReactorTime} of the header deadline.
    @ivar senders: who may send a header (L{Senders}).
    @ivar max_pending: the most connections waiting for their header at once (in this
        process: each worker has its own factory).
    @ivar pending: how many wait now.
    @ivar refusal_log: which refusals are logged one by one.
    """

    protocol = ProxyHeaderProtocol  # type: ignore[assignment]

    def __init__(
        self,
        wrappedFactory: Any,
        clock: Any,
        max_pending: int = MAX_PENDING,
        senders: Senders | None = None,
    ) -> None:
        """
        @param senders: who may send a header; L{Senders.default} (this host) when
            L{None}.
        """
        super().__init__(wrappedFactory)
        self.clock = clock
        self.senders = senders if senders is not None else Senders.default()
        self.max_pending = max_pending
        self.pending = 0
        self.refusal_log = RefusalLog(log, clock)
        self._senders = SenderBook()

    def admission(self) -> _Offences | None:
        """
        The admission offences are recorded with, looked up at each use (a reload may
        replace it), or L{None}.
        """
        factory = self.wrappedFactory
        for _ in range(MAX_WRAPPING):
            admission = getattr(factory, "admission", None)
            if callable(getattr(admission, "offence", None)):
                return admission  # type: ignore[no-any-return]
            factory = getattr(factory, "wrappedFactory", None)
            if factory is None:
                break
        return None

    def refused(
        self,
        peer: Any,
        offence: str | None,
        event: str,
        message: str,
        *,
        listed: bool = False,
        arrived_blocked: bool = False,
        **fields: object,
    ) -> None:
        """
        Count an offence of kind C{offence} (if not L{None}) against the sender C{peer} and
        log the refusal as C{event} (unless its source and reason were already logged often
        enough in this interval: then it is only counted, for C{conn.reject.summary}).

        @param listed: whether C{peer} is a listed sender (its offence also counts toward
            its own points at this listener, L{netguard.proxy_senders.SenderPenalties}).
        @param arrived_blocked: whether admission held C{peer}'s source blocked when the
            connection was accepted: while that block lasts, the offence counts only
            toward the sender's own points.
        """
        admission = self.admission()
        if admission is not None:
            if offence is not None:
                self._charge(admission, peer, offence, listed, arrived_blocked)
            source = admission.source_key(peer)
        else:
            source = str(getattr(peer, "host", None) or "-")
        reason = str(fields.get("reason", fields.get("which", event)))
        if self.refusal_log.note(source, reason, event):
            log.info(message, event=event, peer=peer_label(peer), offence=offence, **fields)

    def _charge(
        self, admission: _Offences, peer: Any, kind: str, listed: bool, arrived_blocked: bool
    ) -> None:
        """
        Count a sender's offence: toward its own points at this listener (a listed sender),
        and in admission unless its connection came while admission held its source blocked
        and it still does (the offence would only extend a block in force that others'
        offences set: a client's sharing the key, or another worker's).
        """
        if listed:
            self._senders.charge(admission, admission.source_key(peer), kind, self.clock.seconds())
        if arrived_blocked and self._blocked_for(admission, peer) is not None:
            return
        admission.offence(peer, kind)

    def _blocked_for(self, admission: _Offences | None, addr: Any) -> float | None:
        """
        Seconds left of a penalty block admission holds on C{addr}'s source (whoever
        earned it), or L{None}.
        """
        blocked_for = getattr(admission, "blocked_for", None)
        if blocked_for is None:
            return None
        left = blocked_for(addr)
        return None if left is None else float(left)

    def _own_block(self, admission: _Offences | None, addr: Any) -> float | None:
        """
        Seconds left of a block on the listed sender C{addr} that its own offences at this
        listener earned and admission still holds (the shorter of the two), or L{None}.
        When admission no longer holds its source blocked (the block was cleared, or it
        came from elsewhere and ended), the sender's own points here are forgotten too, and
        all of them after any clear of admission's penalties (its C{clears} count moved).
        """
        if admission is None:
            return None
        key = admission.source_key(addr)
        left = self._senders.block_left(admission, key, self.clock.seconds())
        if left is None:
            return None
        shared = self._blocked_for(admission, addr)
        if shared is None:
            self._senders.forget(key)
            return None
        return min(left, shared)

    def _refuse_blocked(self, addr: Any, left: float) -> None:
        """
        Log the refusal of a blocked peer at accept: as admission refuses a blocked source,
        no new offence (its points would only grow the block it is serving).
        """
        self.refused(
            addr,
            None,
            "conn.reject",
            "refused {peer}: blocked for {retry_after} s more",
            reason="penalised",
            retry_after=round(left, 1),
        )

    def buildProtocol(self, addr: Any) -> Any:
        """
        Decide at accept, before a byte is read: an unlisted peer, a listed sender serving a
        block of its own offences (L{_own_block}), or one past L{max_pending} is refused
        (Twisted closes the socket); anyone else waits for its header.
        """
        admission = self.admission()
        if not self.senders.allows(addr):
            blocked = self._blocked_for(admission, addr)
            if blocked is not None:
                self._refuse_blocked(addr, blocked)
                return None
            self.refused(
                addr,
                "format_error",
                "conn.reject",
                "refused {peer}: not a listed sender of PROXY headers",
                reason="proxy-sender",
            )
            return None  # Twisted closes the connection: nothing is read from it
        blocked = self._own_block(admission, addr)
        if blocked is not None:
            self._refuse_blocked(addr, blocked)
            return None
        if self.pending >= self.max_pending:
            # Not an offence: a busy proxy is no misbehaving one.
            self.refused(
                addr,
                None,
                "conn.reject",
                "refused {peer}: {pending} connections already wait for their PROXY header",
                reason="proxy-header-pending",
                pending=self.pending,
            )
            return None  # Twisted closes the connection
        return ProxyHeaderProtocol(self, self._blocked_for(admission, addr) is not None)

    def stopFactory(self) -> None:
        """
        The last listener has stopped: log the refusals still only counted.
        """
        self.refusal_log.flush()
        super().stopFactory()

    def logPrefix(self) -> str:
        prefix = getattr(self.wrappedFactory, "logPrefix", None)
        name = prefix() if callable(prefix) else type(self.wrappedFactory).__name__
        return f"{name} (PROXY)"


@implementer(IStreamServerEndpoint)
class ProxyHeaderEndpoint:
    """
    A server endpoint whose connections start with a PROXY header (as HAProxy's
    C{send-proxy} and C{send-proxy-v2} send it), accepted only from the listed senders;
    what C{haproxy:[proxy_from=...:]<listener>} builds in netguard.

    Twisted's own C{haproxy:} wrapper builds the application's protocol as soon as the TCP
    connection is accepted, with the proxy's address, and connects it before the header has
    been read, and takes a header from anyone; this one does neither. A connection whose
    own peer is not a listed sender is closed at accept, before a byte is read. Until its
    header is complete a connection is not admitted, counts against nothing and reaches no
    application code; it is bounded by L{HEADER_TIMEOUT} and by the header's own length
    limits (107 bytes for version 1, 16 + 65535 for version 2), and at most C{max_pending}
    (L{MAX_PENDING}) connections per process wait for their header at once (more are
    closed at accept). Once read, only the header's two addresses are kept. A connection
    from a listed sender must start with a header: one whose header is missing, invalid,
    truncated or late is closed without a reply (its peer is the proxy, which speaks no
    NGP/1), logged, and counted as an offence against the sender. A version 2 C{LOCAL}
    header (a proxy's own health check), a version 1 C{PROXY UNKNOWN} and a version 2
    header of an unspecified family carry no client address: the connection keeps the
    sender's own.
    """

    def __init__(
        self,
        endpoint: Any,
        clock: Any,
        senders: Senders | None = None,
        *,
        max_pending: int = MAX_PENDING,
    ) -> None:
        """
        @param endpoint: the L{IStreamServerEndpoint} underneath.
        @param clock: the L{IReactorTime} of the header deadline and of the refusals' log.
        @param senders: who may send a header; this host only (L{Senders.default}) when
            L{None}.
        @param max_pending: the most connections of this listener in this process waiting
            for their header at once (L{pending_share} for a worker's share of
            L{MAX_PENDING}).
        """
        self.endpoint = endpoint
        self.clock = clock
        self.senders = senders if senders is not None else Senders.default()
        self.max_pending = max_pending

    def listen(self, protocolFactory: Any) -> Any:
        """
        Listen with every connection of C{protocolFactory} behind a PROXY header.
        """
        return self.endpoint.listen(
            ProxyHeaderFactory(
                protocolFactory, self.clock, max_pending=self.max_pending, senders=self.senders
            )
        )


def pending_share(workers: int) -> int:
    """
    One worker's share of L{MAX_PENDING} when C{workers} processes accept on one listener:
    C{ceil(MAX_PENDING / workers)}, at least 1 (together at most C{MAX_PENDING + workers -
    1}).
    """
    return max(1, -(-MAX_PENDING // max(1, workers)))


def proxy_listener_endpoint(reactor: Any, description: str) -> ProxyHeaderEndpoint:
    """
    Build the endpoint of a C{haproxy:[proxy_from=NETWORKS:]<listener>} string (the
    listener underneath by Twisted's C{serverFromString}).

    @raise ValueError: (an L{netguard.endpoints.EndpointError}, or what Twisted's parser
        raises) if the string cannot be used.
    """
    proxy = split_proxy_listener(description)
    return ProxyHeaderEndpoint(
        serverFromString(reactor, proxy.inner), reactor, Senders(proxy.networks())
    )

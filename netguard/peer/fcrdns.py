# -*- test-case-name: tests.test_fcrdns -*-
"""
Forward-confirmed reverse DNS (FCrDNS): a client's address is confirmed only when a name of
its PTR answer, looked up forward, gives the address back; an unconfirmed name is never
shown as the peer's name.

L{confirm_hostname} is usable from any Twisted program, and its L{Deferred} never fails
(every outcome is an L{FCrDNSResult}; only the caller's own C{cancel()} errbacks it)::

    d = confirm_hostname(reactor, "192.0.2.10", resolver=resolver, cache=cache, timeout=5.0)
    d.addCallback(lambda result: print(result.confirmed, result.name, result.reason))

Names in results are untrusted text: escape them (L{netguard.log.escape}) before logging.
Each step and its bounds: C{docs/peer-checks.md}.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import attrs
from twisted.internet import error as internet_error
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names import error as names_error
from twisted.python.failure import Failure

from netguard.addresses import peer_ip
from netguard.log import escape
from netguard.quiet_udp import QuietUDPPort, listen_udp_quietly

#: Parse a textual IP address (an IPv6 zone dropped, IPv4-mapped IPv6 as IPv4): the parser
#: of L{netguard.addresses}, under the name this module has always exported.
normalize_address = peer_ip

#: Default bound on the whole check (PTR plus all forward lookups), in seconds.
DEFAULT_TIMEOUT = 5.0
#: Default number of PTR names that are looked up forward.
DEFAULT_MAX_NAMES = 4
#: How many CNAME records of an answer are followed, at most, from the queried name.
MAX_CNAME_HOPS = 8
#: Longest host name accepted (RFC 1035 presentation form without the final dot).
MAX_NAME_LENGTH = 253
#: Longest label accepted (RFC 1035).
MAX_LABEL_LENGTH = 63
#: How many times one check asks again after a lookup it still waited for was cancelled by
#: someone else (a resolver that shares queries between callers); then it ends as C{"error"}
#: (logged as C{peer.fcrdns.error}, never cached).
MAX_REISSUES = 3

_LDH = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_DIGITS = frozenset(b"0123456789")
_NAME_FIELD_LIMIT = 300

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Clock(Protocol):
    """
    The part of L{twisted.internet.interfaces.IReactorTime} used here (a structural type,
    since mypy cannot see that a reactor provides a zope interface).
    """

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], /, *args: Any) -> Any: ...


_Answers = tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]


@attrs.frozen
class FCrDNSResult:
    """
    The outcome of one forward-confirmed reverse DNS check.

    @ivar confirmed: C{True} only when a PTR name of the address resolves forward to that
        same address.
    @ivar name: the confirmed name (lower case, without the final dot), or L{None} when
        unconfirmed.
    @ivar reason: C{"confirmed"}, or why not: C{"no-ptr"} (NXDOMAIN or no PTR record),
        C{"mismatch"} (no valid PTR name resolves back to the address), C{"bad-name"} (every
        PTR name failed the hostname syntax check, none was looked up), C{"too-many-names"}
        (more PTR names than the bound, and none of those checked matched), C{"timeout"}
        (a lookup, or the whole check, ran out of time), C{"server-failure"} (SERVFAIL,
        REFUSED or another DNS error), C{"bad-address"} (the input was not an IP address),
        C{"error"} (an unexpected fault in the check itself, logged as C{peer.fcrdns.error}).
    @ivar names_tried: the PTR names examined, in answer order: valid names as looked up,
        invalid ones already escaped with L{netguard.log.escape} (they are untrusted text).
    @ivar names_skipped: how many further PTR names were ignored because of C{max_names}.
    """

    confirmed: bool
    name: str | None
    reason: str
    names_tried: tuple[str, ...] = ()
    names_skipped: int = 0


class FCrDNSCache:
    """
    A bounded cache of L{FCrDNSResult}s keyed by normalised address.

    Confirmed results live for the smallest TTL of the records that confirmed them, capped at
    C{max_ttl}. Unconfirmed results that DNS gave (C{no-ptr}, C{mismatch}, C{bad-name},
    C{too-many-names}, and also C{timeout} and C{server-failure}, so a client with a slow or
    broken reverse zone costs at most one slow check per C{negative_ttl}) live for
    C{negative_ttl}, also capped at C{max_ttl}. L{confirm_hostname} never stores a
    cancellation nor an C{error} (a fault of the check, not an answer). When full, the oldest
    entry is evicted. Time is read from the injected clock.
    """

    def __init__(
        self,
        clock: _Clock,
        *,
        max_entries: int = 4096,
        max_ttl: float = 3600.0,
        negative_ttl: float = 30.0,
    ) -> None:
        """
        @param clock: the time source (C{seconds()}), normally the reactor.
        @param max_entries: the most entries kept; at least 1.
        @param max_ttl: the longest any entry lives, in seconds.
        @param negative_ttl: how long an unconfirmed result lives, in seconds (0 disables
            negative caching).
        @raise ValueError: if a bound is out of range.
        """
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_ttl < 0 or negative_ttl < 0:
            raise ValueError("TTLs must not be negative")
        self._clock = clock
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self._entries: collections.OrderedDict[str, tuple[float, FCrDNSResult]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        """
        @return: the number of entries held, including any not yet purged after expiry.
        """
        return len(self._entries)

    def get(self, key: str) -> FCrDNSResult | None:
        """
        Look up a live entry.

        @param key: the normalised address (see L{normalize_address}).
        @return: the cached result, or L{None} if absent or expired (an expired entry is
            dropped).
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, result = entry
        if self._clock.seconds() >= expires:
            del self._entries[key]
            return None
        return result

    def put(self, key: str, result: FCrDNSResult, ttl: float) -> None:
        """
        Store a result.

        @param key: the normalised address.
        @param result: the result to keep.
        @param ttl: the smallest TTL of the records behind a confirmed result; ignored for an
            unconfirmed one, which uses C{negative_ttl}. Capped at C{max_ttl}; nothing is
            stored when the effective lifetime is zero.
        """
        life = min(ttl if result.confirmed else self.negative_ttl, self.max_ttl)
        if life <= 0:
            self._entries.pop(key, None)
            return
        self._entries.pop(key, None)
        self._entries[key] = (self._clock.seconds() + life, result)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def reverse_name(ip: IPAddress) -> str:
    """
    The reverse-tree name of an address.

    @param ip: the address.
    @return: C{d.c.b.a.in-addr.arpa} for IPv4, the 32-nibble C{...ip6.arpa} name for IPv6.
    """
    return ip.reverse_pointer


def is_valid_hostname(name: bytes) -> bool:
    """
    Check host name syntax (RFC 952/1123): dot-separated LDH labels (letters, digits,
    hyphen), each 1 to 63 octets, not starting or ending with a hyphen, at most 253 octets in
    all, one optional final dot, and a last label that is not all digits (so no name can pose
    as a dotted-quad address).

    @param name: the name as it came off the wire.
    @return: C{True} if the name may be looked up.
    """
    if name.endswith(b"."):
        name = name[:-1]
    if not name or len(name) > MAX_NAME_LENGTH:
        return False
    labels = name.split(b".")
    for label in labels:
        if not 1 <= len(label) <= MAX_LABEL_LENGTH:
            return False
        if not _LDH.issuperset(label) or label[:1] == b"-" or label[-1:] == b"-":
            return False
    return not _DIGITS.issuperset(labels[-1])


def follow_answers(
    records: Sequence[dns.RRHeader], qname: bytes, rtype: int, max_hops: int = MAX_CNAME_HOPS
) -> tuple[list[dns.RRHeader], float]:
    """
    Pick the records of type C{rtype} that answer C{qname}, following a CNAME chain only
    through the records the answer itself holds, at most C{max_hops} links. Records owned by
    other names (a hostile server's extras) are ignored.

    @param records: the answer section.
    @param qname: the name asked for.
    @param rtype: the record type wanted (C{dns.PTR}, C{dns.A}, C{dns.AAAA}).
    @param max_hops: the most CNAME links followed.
    @return: the matching records (possibly empty) and the smallest TTL along the path
        (infinity when nothing was used).
    """
    by_owner: dict[bytes, list[dns.RRHeader]] = {}
    for record in records:
        if record.cls == dns.IN and record.payload is not None:
            by_owner.setdefault(record.name.name.lower().rstrip(b"."), []).append(record)
    name = qname.lower().rstrip(b".")
    ttl = float("inf")
    seen = {name}
    for _hop in range(max_hops + 1):
        owned = by_owner.get(name, [])
        wanted = [r for r in owned if r.type == rtype]
        if wanted:
            return wanted, min([ttl, *(float(r.ttl) for r in wanted)])
        cnames = [r for r in owned if r.type == dns.CNAME]
        if not cnames:
            break
        ttl = min(ttl, float(cnames[0].ttl))
        name = _target(cnames[0]).lower().rstrip(b".")
        if name in seen:
            break
        seen.add(name)
    return [], ttl


class _InFlight:
    """
    One lookup under way in a L{SharingResolver} and the callers still waiting for it.
    """

    def __init__(self) -> None:
        self.query: Deferred[Any] | None = None
        self.waiters: list[Deferred[Any]] = []


class SharingResolver:
    """
    Wraps a resolver so that concurrent lookups of the same question share one query, while
    each caller keeps its own L{Deferred}: cancelling it detaches only that caller (it gets
    L{CancelledError}, nobody else does), and the query itself is cancelled only when no
    caller waits for it any more. Whatever the query ends with (answers, NXDOMAIN, a server
    failure, a timeout) reaches every caller still waiting.

    It provides the lookups L{confirm_hostname} makes (C{lookupPointer}, C{lookupAddress},
    C{lookupIPV6Address}). A shared query keeps the time bound of the caller that started
    it.

    @ivar resolver: the wrapped L{IResolver}.
    """

    def __init__(self, resolver: Any) -> None:
        """
        @param resolver: the L{IResolver} that sends the queries.
        """
        self.resolver = resolver
        self._flight: dict[tuple[int, str], _InFlight] = {}

    def in_flight(self) -> int:
        """
        @return: the number of queries under way.
        """
        return len(self._flight)

    def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]:  # noqa: N802
        """
        Look up PTR records of C{name} (see L{IResolver.lookupPointer}).
        """
        return self._share(dns.PTR, name, timeout, self.resolver.lookupPointer)

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:  # noqa: N802
        """
        Look up A records of C{name} (see L{IResolver.lookupAddress}).
        """
        return self._share(dns.A, name, timeout, self.resolver.lookupAddress)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[Any]:  # noqa: N802
        """
        Look up AAAA records of C{name} (see L{IResolver.lookupIPV6Address}).
        """
        return self._share(dns.AAAA, name, timeout, self.resolver.lookupIPV6Address)

    def _share(
        self, rtype: int, name: str, timeout: Any, method: Callable[..., Deferred[Any]]
    ) -> Deferred[Any]:
        key = (rtype, name.lower().rstrip("."))
        flight = self._flight.get(key)
        fresh = flight is None
        if flight is None:
            flight = self._flight[key] = _InFlight()
        waiter: Deferred[Any] = Deferred(functools.partial(self._detach, key, flight))
        flight.waiters.append(waiter)
        if fresh:
            try:
                query = method(name, timeout=timeout)
            except Exception:
                query = fail()
            flight.query = query
            query.addBoth(self._landed, key, flight)
        return waiter

    def _landed(self, outcome: Any, key: tuple[int, str], flight: _InFlight) -> None:
        if self._flight.get(key) is flight:
            del self._flight[key]
        waiters, flight.waiters = flight.waiters, []
        for waiter in waiters:
            if waiter.called:
                continue  # cancelled by an earlier waiter's callback: it has its answer
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)
        return None

    def _detach(self, key: tuple[int, str], flight: _InFlight, waiter: Deferred[Any]) -> None:
        if waiter in flight.waiters:
            flight.waiters.remove(waiter)
        if flight.waiters or flight.query is None:
            return
        # Nobody waits any more: a new caller starts a new query, this one is stopped.
        if self._flight.get(key) is flight:
            del self._flight[key]
        flight.query.cancel()


def make_resolver(
    reactor: Any,
    servers: Sequence[tuple[str, int]] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Any:
    """
    Build a plain DNS client resolver (no hosts file, no cache of its own) that asks the
    given servers over UDP (TCP on truncation).

    @param reactor: an L{IReactorUDP}, L{IReactorTCP} and L{IReactorTime} provider.
    @param servers: C{(ip, port)} pairs; empty or L{None} reads the C{nameserver} lines of
        C{/etc/resolv.conf} once (falling back to C{127.0.0.1:53}).
    @param timeout: the default total time of one lookup, in seconds.
    @return: an L{IResolver} provider (a L{twisted.names.client.Resolver}), whose per-query
        UDP ports are opened with L{netguard.quiet_udp.listen_udp_quietly}: no info lines of their
        own in netguard's logs.
    """
    chosen = list(servers) if servers else system_nameservers()
    return _UDPOnlyResolver(
        servers=chosen, timeout=retry_schedule(timeout), reactor=_QuietUDPReactor(reactor)
    )


class TruncatedAnswer(names_error.DNSServerError):
    """
    A DNS server answered with the truncation bit set (the answer did not fit a datagram).
    """


class _UDPOnlyResolver(client.Resolver):
    """
    Twisted's resolver, except that a truncated answer is used as far as it goes (the
    records that fit: a host with more addresses than a datagram holds confirms when the
    peer's address is among them) and is a failure (C{server-failure}) when it holds none,
    instead of a retry over TCP: that retry runs with Twisted's own fixed 10 s timeout, is
    not cancelled when the check's deadline ends it, and keeps its TCP connection open for as
    long as the server does, so a hostile DNS server answering every query truncated would
    make the checks hold connections and timers past their bounds. An honest PTR or A/AAAA
    answer for a host fits a datagram (512 bytes hold about ten names, more than
    C{fcrdns_max_names} looks at).
    """

    def filterAnswers(self, message: dns.Message) -> Any:  # noqa: N802
        if message.trunc:
            if message.rCode == dns.OK and message.answers:
                return (message.answers, message.authority, message.additional)
            return Failure(TruncatedAnswer(message))
        return super().filterAnswers(message)


class _QuietUDPReactor:
    """
    The reactor a L{make_resolver} resolver is given: the real one, except that
    C{listenUDP} goes through L{listen_udp_quietly}.

    L{twisted.names.client.Resolver} opens a new UDP port at a random number for every query
    (source port randomisation) and closes it after the answer. Its datagram protocol has no
    public switch, but the resolver opens every port through its reactor's C{listenUDP}
    (the public C{IReactorUDP} interface), so this is where the per-query C{Starting
    protocol} / C{Stopping protocol} lines are switched off and, on a real reactor, the port
    is a L{netguard.quiet_udp.QuietUDPPort}, whose own two lines are marked for netguard's log
    observers to leave out.
    """

    def __init__(self, reactor: Any) -> None:
        """
        @param reactor: the real reactor (C{IReactorUDP}, C{IReactorTCP}, C{IReactorTime}).
        """
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenUDP(  # noqa: N802
        self,
        port: int,
        protocol: Any,
        interface: str = "",
        maxPacketSize: int = 8192,  # noqa: N803
    ) -> Any:
        """
        C{IReactorUDP.listenUDP}, quietly (L{listen_udp_quietly}).
        """
        return listen_udp_quietly(
            self._reactor, port, protocol, interface, maxPacketSize, port_type=_DNSQueryPort
        )


class _DNSQueryPort(QuietUDPPort):
    """
    The port of one L{twisted.names.client.Resolver} query, closed with the timeouts of the
    queries its protocol still awaits.

    The resolver closes the port once the query's L{Deferred} fires, also when a caller
    cancelled it (its last waiter went: L{SharingResolver}); but the datagram protocol keeps
    that query's timeout timer (C{liveMessages}) and forgets the entry without cancelling
    it when it stops, so each cancelled query would leave a timer (and what it holds) for
    the rest of its timeout. Cancelled here, before the protocol stops.
    """

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        live = getattr(self.protocol, "liveMessages", None)
        if isinstance(live, dict):
            for _, timer in list(live.values()):
                if timer.active():
                    timer.cancel()
            live.clear()
        super().connectionLost(reason)


def system_nameservers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """
    Read the C{nameserver} lines of a resolv.conf file.

    @param path: the file to read.
    @return: C{(ip, 53)} pairs in file order, or C{[("127.0.0.1", 53)]} if none is usable.
    """
    found: list[tuple[str, int]] = []
    try:
        with open(path, encoding="ascii", errors="replace") as conf:
            for line in conf.read(65536).splitlines()[:1000]:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    ip = normalize_address(fields[1])
                    if ip is not None:
                        found.append((str(ip), 53))
    except OSError:
        pass
    return found or [("127.0.0.1", 53)]


def retry_schedule(remaining: float) -> tuple[float, ...]:
    """
    Split a time budget into the per-attempt timeouts of a L{twisted.names.client.Resolver}
    lookup: a short first try, then one retransmission, together 90% of the budget, so a
    single-server resolver gives up on its own just before the overall bound.

    @param remaining: seconds left.
    @return: the attempt timeouts.
    """
    budget = max(remaining, 0.001)
    return (budget * 0.3, budget * 0.6)


_TIMEOUT_ERRORS = (TimeoutError, internet_error.TimeoutError)


def _target(record: dns.RRHeader) -> bytes:
    name: bytes = cast(Any, record.payload).name.name
    return name


def _record_address(record: dns.RRHeader) -> IPAddress | None:
    try:
        return ipaddress.ip_address(cast(Any, record.payload).address)
    except (ValueError, TypeError, AttributeError):
        return None


def _classify_failure(failure: Failure) -> str:
    if failure.check(*_TIMEOUT_ERRORS):
        return "timeout"
    if failure.check(names_error.DNSNameError):
        return "nxdomain"
    return "server-failure"


class _Confirmation:
    """
    One running check: explicit states (PTR, then forward lookups), an overall deadline that
    cancels whatever is outstanding, and exactly one result.
    """

    log = Logger()

    def __init__(
        self,
        reactor: _Clock,
        resolver: Any,
        ip: IPAddress,
        timeout: float,
        max_names: int,
        negative_ttl: float,
    ) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._ip = ip
        self._max_names = max_names
        self._deadline = reactor.seconds() + timeout
        self._negative_ttl = negative_ttl
        self._pending: set[Deferred[Any]] = set()
        self._done = False
        self._tried: tuple[str, ...] = ()
        self._skipped = 0
        self._ptr_ttl = float("inf")
        self._forward: dict[bytes, tuple[str, float]] = {}
        self._expected = 0
        self._reissues = 0
        self.result: Deferred[tuple[FCrDNSResult, float | None]] = Deferred(self._cancelled)
        self._timer = reactor.callLater(timeout, self._timed_out)

    def start(self) -> Deferred[tuple[FCrDNSResult, float | None]]:
        self._lookup(
            self._resolver.lookupPointer, reverse_name(self._ip).encode("ascii"), self._got_ptr
        )
        return self.result

    def _lookup(
        self, method: Callable[..., Deferred[Any]], name: bytes, handler: Callable[[Any], None]
    ) -> None:
        schedule = retry_schedule(self._deadline - self._reactor.seconds())
        try:
            d = method(name.decode("ascii"), timeout=schedule)
        except Exception:
            d = fail()
        self._pending.add(d)
        d.addBoth(self._settle, d, method, name, handler)

    def _settle(
        self,
        outcome: Any,
        d: Deferred[Any],
        method: Callable[..., Deferred[Any]],
        name: bytes,
        handler: Callable[[Any], None],
    ) -> None:
        self._pending.discard(d)
        if self._done:
            return None
        if isinstance(outcome, Failure) and outcome.check(CancelledError):
            # Not an answer: this check did not cancel it (it would be done), so a resolver
            # that shares queries let another caller's cancellation through. Ask again.
            self._reissues += 1
            if self._reissues <= MAX_REISSUES:
                self._lookup(method, name, handler)
                return None
            self.log.failure(
                "FCrDNS lookup {name} cancelled by another caller {count} times",
                outcome,
                event="peer.fcrdns.error",
                name=escape(name, limit=_NAME_FIELD_LIMIT),
                count=self._reissues,
            )
            self._finish(self._result(False, None, "error"), None)
            return None
        try:
            handler(outcome)
        except Exception:
            self.log.failure("FCrDNS check failed", event="peer.fcrdns.error")
            self._finish(self._result(False, None, "error"), None)
        return None

    def _result(self, confirmed: bool, name: str | None, reason: str) -> FCrDNSResult:
        return FCrDNSResult(confirmed, name, reason, self._tried, self._skipped)

    def _fail(self, reason: str) -> None:
        self._finish(self._result(False, None, reason), self._negative_ttl)

    def _got_ptr(self, outcome: _Answers | Failure) -> None:
        if isinstance(outcome, Failure):
            kind = _classify_failure(outcome)
            self._fail("no-ptr" if kind == "nxdomain" else kind)
            return
        qname = reverse_name(self._ip).encode("ascii")
        records, self._ptr_ttl = follow_answers(outcome[0], qname, dns.PTR)
        checked: list[bytes] = []
        seen: set[bytes] = set()
        for record in records:
            target = _target(record)
            key = target.lower().rstrip(b".")
            if key not in seen:
                seen.add(key)
                if len(checked) < self._max_names:
                    checked.append(target)
        if not seen:
            self._fail("no-ptr")
            return
        self._skipped = len(seen) - len(checked)
        valid: list[bytes] = []
        tried: list[str] = []
        for name in checked:
            if is_valid_hostname(name):
                clean = name.rstrip(b".").lower()
                valid.append(clean)
                tried.append(clean.decode("ascii"))
            else:
                tried.append(escape(name, limit=_NAME_FIELD_LIMIT))
        self._tried = tuple(tried)
        if not valid:
            self._fail("too-many-names" if self._skipped else "bad-name")
            return
        self._expected = len(valid)
        for name in valid:
            method = (
                self._resolver.lookupAddress
                if self._ip.version == 4
                else self._resolver.lookupIPV6Address
            )
            self._lookup(method, name, functools.partial(self._got_forward, name))

    def _got_forward(self, name: bytes, outcome: _Answers | Failure) -> None:
        if isinstance(outcome, Failure):
            kind = _classify_failure(outcome)
            self._forward[name] = ("mismatch" if kind == "nxdomain" else kind, 0.0)
        else:
            rtype = dns.A if self._ip.version == 4 else dns.AAAA
            records, ttl = follow_answers(outcome[0], name, rtype)
            match = any(_record_address(r) == self._ip for r in records)
            self._forward[name] = ("confirmed" if match else "mismatch", ttl)
        if len(self._forward) == self._expected:
            self._decide()

    def _decide(self) -> None:
        for name, (kind, ttl) in self._forward.items():
            if kind == "confirmed":
                self._finish(
                    self._result(True, name.decode("ascii"), "confirmed"),
                    min(ttl, self._ptr_ttl),
                )
                return
        kinds = {kind for kind, _ttl in self._forward.values()}
        for reason in ("timeout", "server-failure"):
            if reason in kinds:
                self._fail(reason)
                return
        self._fail("too-many-names" if self._skipped else "mismatch")

    def _timed_out(self) -> None:
        self._finish(self._result(False, None, "timeout"), self._negative_ttl)

    def _stop(self) -> None:
        self._done = True
        if self._timer.active():
            self._timer.cancel()
        for d in list(self._pending):
            d.cancel()
        self._pending.clear()

    def _finish(self, result: FCrDNSResult, ttl: float | None) -> None:
        if self._done:
            return
        self._stop()
        self.result.callback((result, ttl))

    def _cancelled(self, _d: Deferred[tuple[FCrDNSResult, float | None]]) -> None:
        self._stop()


def confirm_hostname(
    reactor: _Clock,
    address: str,
    *,
    resolver: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_names: int = DEFAULT_MAX_NAMES,
    cache: FCrDNSCache | None = None,
) -> Deferred[FCrDNSResult]:
    """
    Check that C{address} has a PTR name that resolves forward to C{address} again.

    The PTR answer's names are deduplicated; the first C{max_names} are syntax-checked (see
    L{is_valid_hostname}) and the valid ones looked up forward concurrently; the rest are
    counted in C{names_skipped}. CNAME chains are followed only within each answer. The whole
    check ends after C{timeout} seconds at most: outstanding lookups are then cancelled and
    the result's reason is C{"timeout"}.

    @param reactor: the clock (C{seconds}, C{callLater}); with C{resolver=None} it must also
        provide L{IReactorUDP} and L{IReactorTCP}.
    @param address: the client's IPv4 or IPv6 address in text form (IPv4-mapped IPv6 is
        checked as IPv4).
    @param resolver: an L{IResolver} (see L{make_resolver}); L{None} builds one from
        C{/etc/resolv.conf} for this call only. Share one resolver between calls, wrapped in
        a L{SharingResolver} so that concurrent checks share their queries. A lookup this
        check still waits for that fails with L{CancelledError} (a resolver sharing it with
        a caller who cancelled) is asked again, at most L{MAX_REISSUES} times.
    @param timeout: the bound on the whole check, in seconds (> 0).
    @param max_names: how many PTR names are checked at most (>= 1).
    @param cache: an optional L{FCrDNSCache}; a live entry answers at once, and every new
        result is stored, except C{"error"} (and nothing is stored when the check is
        cancelled).
    @return: a L{Deferred} that fires with an L{FCrDNSResult} and never fails (cancelling it
        stops the lookups and errbacks it with L{CancelledError}).
    @raise ValueError: if C{timeout} or C{max_names} is out of range.
    """
    if not timeout > 0:
        raise ValueError("timeout must be positive")
    if max_names < 1:
        raise ValueError("max_names must be at least 1")
    ip = normalize_address(address)
    if ip is None:
        return succeed(FCrDNSResult(False, None, "bad-address"))
    key = str(ip)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return succeed(hit)
    if resolver is None:
        resolver = make_resolver(reactor, None, timeout)
    negative_ttl = cache.negative_ttl if cache is not None else 0.0
    check = _Confirmation(reactor, resolver, ip, timeout, max_names, negative_ttl)

    def store(outcome: tuple[FCrDNSResult, float | None]) -> FCrDNSResult:
        result, ttl = outcome
        if cache is not None and ttl is not None:
            cache.put(key, result, ttl)
        return result

    return check.start().addCallback(store)


__all__ = [
    "FCrDNSCache",
    "FCrDNSResult",
    "SharingResolver",
    "confirm_hostname",
    "follow_answers",
    "is_valid_hostname",
    "make_resolver",
    "normalize_address",
    "retry_schedule",
    "reverse_name",
    "system_nameservers",
]

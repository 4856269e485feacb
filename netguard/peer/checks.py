# -*- test-case-name: tests.test_checks -*-
"""
Run the peer checks (FCrDNS and ident) for one connection and apply a policy to them.

L{PeerChecks} is built once per listener or service; L{PeerChecks.start} starts both checks
when a connection is accepted, and the session asks L{PeerCheckRun.verdict} where it must
decide::

    checks = PeerChecks(reactor, PeerCheckPolicy(fcrdns="require", ident="log"))
    run = checks.start(transport.getPeer(), transport.getHost())   # in connectionMade
    run.verdict().addCallback(decide)                              # where it must decide
    run.cancel()                                                   # in connectionLost

Modes, waiting rules, shared lookups and log events: C{docs/peer-checks.md}.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Any, Final, Generic, Literal, TypeVar

import attrs
from attrs import validators
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from netguard.log import escape, quoted
from netguard.peer.fcrdns import (
    DEFAULT_MAX_NAMES,
    FCrDNSCache,
    FCrDNSResult,
    SharingResolver,
    confirm_hostname,
    make_resolver,
)
from netguard.peer.ident import (
    DEFAULT_MAX_REPLY,
    IDENT_PORT,
    UNSUPPORTED_ADDRESS,
    IdentResult,
    ident_query,
)

#: The port a DNS server is asked on unless its entry in L{PeerCheckPolicy.dns_servers} names
#: one.
DNS_PORT: Final = 53

_T = TypeVar("_T")

FCRDNS_MODES = ("off", "log", "require")
IDENT_MODES = ("off", "log")


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def _patterns(value: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError("patterns must be a sequence of strings, not one string")
    return tuple(str(p).lower() for p in value)


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """
    Split C{ip}, C{ip:port} or C{[ipv6]:port}; the IP is checked, the port is 1..65535.

    @raise ValueError: if it is not one of those forms.
    """
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    ipaddress.ip_address(host)
    port = int(port_text) if port_text else default_port
    if not 1 <= port <= 65535:
        raise ValueError(text)
    return host, port


def _server(value: str | tuple[str, int]) -> str:
    if isinstance(value, str):
        split_host_port(value, DNS_PORT)
        return value
    host, port = value
    text = f"[{host}]:{int(port)}" if ":" in str(host) else f"{host}:{int(port)}"
    split_host_port(text, DNS_PORT)
    return text


def _servers(value: Sequence[str | tuple[str, int]]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError("dns_servers must be a sequence of servers, not one string")
    return tuple(_server(server) for server in value)


@attrs.frozen
class PeerCheckPolicy:
    """
    What to check about a peer, and what to do with the answers.

    @ivar fcrdns: C{"off"} (no DNS traffic), C{"log"} (check and log; never delays or refuses,
        unless patterns are set) or C{"require"} (refuse a peer whose address is not
        forward-confirmed).
    @ivar fcrdns_deny: fnmatch patterns (case-insensitive) over the confirmed name; a match
        refuses. A peer with no confirmed name matches no deny pattern, so deny patterns stop
        only those who publish honest DNS: pair them with C{"require"}.
    @ivar fcrdns_allow: fnmatch patterns over the confirmed name; when any is set, only peers
        whose confirmed name matches one are allowed (an unconfirmed peer is refused).
        Patterns only narrow access; they never admit anyone other checks refuse.
    @ivar ident: C{"off"} or C{"log"} (query the peer's identd and log the claim; it never
        delays or decides anything).
    @ivar fcrdns_timeout: bound on one FCrDNS check, in seconds.
    @ivar fcrdns_max_names: how many PTR names are looked up forward, at most.
    @ivar ident_timeout: bound on one ident query, in seconds.
    @ivar ident_max_reply: bound on the ident reply line, in bytes.
    @ivar ident_port: the port the peer's identd listens on.
    @ivar dns_servers: DNS servers for FCrDNS as written, C{"ip"}, C{"ip:port"} or
        C{"[ipv6]:port"} (C{(ip, port)} pairs are accepted too); empty uses
        C{/etc/resolv.conf}. L{resolvers} gives them as C{(ip, port)} pairs.
    """

    fcrdns: Literal["off", "log", "require"] = attrs.field(
        default="off", validator=validators.in_(FCRDNS_MODES)
    )
    fcrdns_deny: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    fcrdns_allow: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    ident: Literal["off", "log"] = attrs.field(
        default="off", validator=validators.in_(IDENT_MODES)
    )
    fcrdns_timeout: float = attrs.field(default=5.0, validator=_positive)
    fcrdns_max_names: int = attrs.field(default=DEFAULT_MAX_NAMES, validator=_positive)
    ident_timeout: float = attrs.field(default=10.0, validator=_positive)
    ident_max_reply: int = attrs.field(default=DEFAULT_MAX_REPLY, validator=validators.ge(2))
    ident_port: int = attrs.field(
        default=IDENT_PORT, validator=[validators.ge(1), validators.le(65535)]
    )
    dns_servers: tuple[str, ...] = attrs.field(default=(), converter=_servers)

    def __attrs_post_init__(self) -> None:
        if (self.fcrdns_deny or self.fcrdns_allow) and self.fcrdns == "off":
            raise ValueError("fcrdns_deny/fcrdns_allow need fcrdns = 'log' or 'require'")

    @property
    def resolvers(self) -> tuple[tuple[str, int], ...]:
        """
        @return: L{dns_servers} as C{(ip, port)} pairs (port 53 unless given).
        """
        return tuple(split_host_port(server, DNS_PORT) for server in self.dns_servers)

    @property
    def waits_for_fcrdns(self) -> bool:
        """
        @return: whether a verdict must wait for the FCrDNS result.
        """
        return self.fcrdns == "require" or bool(self.fcrdns_deny or self.fcrdns_allow)


@attrs.frozen
class Verdict:
    """
    The policy's decision about one peer.

    @ivar allowed: whether the session may go on.
    @ivar reason: C{"ok"}, C{"local"} (a unix-socket peer: nothing to check),
        C{"fcrdns-<reason>"} in C{"require"} mode (for example C{"fcrdns-mismatch"},
        C{"fcrdns-timeout"}), C{"fcrdns-denied"} (a deny pattern matched),
        C{"fcrdns-not-allowed"} (allow patterns set, none matched),
        C{"unsupported-address"} (FCrDNS required but the address has no IP), or
        C{"cancelled"}.
    @ivar fcrdns: the FCrDNS result, if the check ran and finished before the verdict.
    @ivar ident: the ident result, if the query ran and finished before the verdict.
    """

    allowed: bool
    reason: str
    fcrdns: FCrDNSResult | None = None
    ident: IdentResult | None = None


def decide(policy: PeerCheckPolicy, fcrdns: FCrDNSResult | None) -> tuple[bool, str]:
    """
    Apply a policy to an FCrDNS result (pure function).

    @param policy: the policy.
    @param fcrdns: the result, or L{None} when the check did not run (off, not finished in
        C{"log"} mode, or an address without IP).
    @return: C{(allowed, reason)}.
    """
    if fcrdns is None:
        if policy.waits_for_fcrdns:
            return False, "unsupported-address"
        return True, "ok"
    name = fcrdns.name.lower() if fcrdns.confirmed and fcrdns.name else None
    if policy.fcrdns == "require" and name is None:
        return False, f"fcrdns-{fcrdns.reason}"
    if name is not None and any(fnmatch.fnmatchcase(name, p) for p in policy.fcrdns_deny):
        return False, "fcrdns-denied"
    if policy.fcrdns_allow and (
        name is None or not any(fnmatch.fnmatchcase(name, p) for p in policy.fcrdns_allow)
    ):
        return False, "fcrdns-not-allowed"
    return True, "ok"


class _Outcome(Generic[_T]):
    """
    A value that arrives once, handed to any number of waiters (each gets its own
    L{Deferred}, so nobody's callbacks change what the others see).
    """

    def __init__(self) -> None:
        self.done = False
        self.value: _T | None = None
        self._waiters: list[Deferred[_T | None]] = []

    def when(self) -> Deferred[_T | None]:
        if self.done:
            d: Deferred[_T | None] = Deferred()
            d.callback(self.value)
            return d
        d = Deferred()
        self._waiters.append(d)
        return d

    def fire(self, value: _T | None) -> None:
        if self.done:
            return
        self.done = True
        self.value = value
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(value)


def _peer_text(address: object) -> str:
    if isinstance(address, IPv4Address | IPv6Address):
        return escape(f"{address.host}:{address.port}")
    return escape(repr(address))


class PeerCheckRun:
    """
    The checks of one connection, started by L{PeerChecks.start} or L{start_peer_checks}.

    @ivar policy: the policy applied.
    @ivar peer: the remote address checked.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        policy: PeerCheckPolicy,
        peer: object,
        local: object,
        resolver_factory: Callable[[], Any],
        cache: FCrDNSCache | None,
    ) -> None:
        """
        Start the checks the policy enables. Use L{PeerChecks.start} or L{start_peer_checks}.

        @param reactor: an L{IReactorTCP}, L{IReactorUDP} and L{IReactorTime} provider.
        @param policy: the policy.
        @param peer: the remote address (C{transport.getPeer()}).
        @param local: our address of the connection (C{transport.getHost()}).
        @param resolver_factory: returns the L{IResolver} for FCrDNS (called only if needed).
        @param cache: the FCrDNS cache, if any.
        """
        self.policy = policy
        self.peer = peer
        self._reactor = reactor
        self._peer_text = _peer_text(peer)
        self._fcrdns: _Outcome[FCrDNSResult] = _Outcome()
        self._ident: _Outcome[IdentResult] = _Outcome()
        self._running: list[Deferred[Any]] = []
        self._cancelled = False
        self._fcrdns_started = False
        self._local = isinstance(peer, UNIXAddress)
        ip_peer = peer if isinstance(peer, IPv4Address | IPv6Address) else None
        if ip_peer is not None and policy.fcrdns != "off":
            self._start_fcrdns(ip_peer.host, policy, resolver_factory, cache)
        else:
            self._fcrdns.fire(None)
        if (
            ip_peer is not None
            and policy.ident == "log"
            and isinstance(local, IPv4Address | IPv6Address)
        ):
            try:
                query = ident_query(
                    reactor,
                    ip_peer.host,
                    ip_peer.port,
                    local.port,
                    local_host=local.host,
                    ident_port=policy.ident_port,
                    timeout=policy.ident_timeout,
                    max_reply=policy.ident_max_reply,
                )
            except ValueError:
                # No query can name this connection (a PROXY header's port 0, or an IPv4
                # source with an IPv6 destination): an outcome like any other, never an
                # error that would stop the connection's other checks.
                self._ident_done(IdentResult(False, None, UNSUPPORTED_ADDRESS))
            else:
                self._track(query, self._ident_done, self._ident)
        else:
            self._ident.fire(None)

    def _start_fcrdns(
        self,
        host: str,
        policy: PeerCheckPolicy,
        resolver_factory: Callable[[], Any],
        cache: FCrDNSCache | None,
    ) -> None:
        self._fcrdns_started = True
        d = confirm_hostname(
            self._reactor,
            host,
            resolver=resolver_factory(),
            timeout=policy.fcrdns_timeout,
            max_names=policy.fcrdns_max_names,
            cache=cache,
        )
        self._track(d, self._fcrdns_done, self._fcrdns)

    @property
    def fcrdns_started(self) -> bool:
        """
        @return: whether this run checks FCrDNS (its policy asked for it, or
            L{start_fcrdns} started it, and the peer has an IP address).
        """
        return self._fcrdns_started

    def start_fcrdns(self, checks: PeerChecks) -> None:
        """
        Start the FCrDNS check now, with the resolver, cache, timeout and bound of C{checks},
        unless this run already checks FCrDNS, was cancelled, or its peer has no IP address.
        Its result is logged and kept like one started with the run, so a connection is
        checked at most once whichever policy asks first.

        @param checks: where the resolver, cache and bounds come from.
        """
        if self._fcrdns_started or self._cancelled:
            return
        if not isinstance(self.peer, IPv4Address | IPv6Address):
            return
        self._fcrdns = _Outcome()
        self._start_fcrdns(self.peer.host, checks.policy, checks.resolver, checks.cache)

    def _track(self, d: Deferred[_T], done: Callable[[_T], None], outcome: _Outcome[_T]) -> None:
        self._running.append(d)

        def failed(failure: Failure) -> None:
            if not failure.check(CancelledError):
                self.log.failure("peer check failed", failure, event="peer.check.error")
            outcome.fire(None)

        d.addCallbacks(done, failed)

    @property
    def fcrdns(self) -> Deferred[FCrDNSResult | None]:
        """
        @return: a new L{Deferred} (on each access) firing with the FCrDNS result, or L{None}
            when the check is off, not applicable (unix peer) or cancelled. It never fails.
        """
        return self._fcrdns.when()

    @property
    def ident(self) -> Deferred[IdentResult | None]:
        """
        @return: a new L{Deferred} (on each access) firing with the ident result, or L{None}
            when the query is off, not applicable or cancelled. It never fails.
        """
        return self._ident.when()

    @property
    def fcrdns_result(self) -> FCrDNSResult | None:
        """
        @return: the FCrDNS result if it has arrived, else L{None}.
        """
        return self._fcrdns.value

    @property
    def ident_result(self) -> IdentResult | None:
        """
        @return: the ident result if it has arrived, else L{None}.
        """
        return self._ident.value

    def verdict(self, policy: PeerCheckPolicy | None = None) -> Deferred[Verdict]:
        """
        Decide about the peer, waiting for FCrDNS only if the policy needs it (and then at
        most the check's own bound); ident is never waited for.

        @param policy: the policy to apply to this run's results; by default the run's own.
            A stricter one (C{"require"}, patterns) finds C{"unsupported-address"} unless
            this run checks FCrDNS (see L{start_fcrdns}).
        @return: a new L{Deferred} firing with a L{Verdict}; it never fails.
        """
        applied = self.policy if policy is None else policy
        if self._local:
            return _fired(Verdict(True, "local"))
        if not applied.waits_for_fcrdns:
            return _fired(self._verdict(applied, self._fcrdns.value))
        return self._fcrdns.when().addCallback(lambda result: self._verdict(applied, result))

    def _verdict(self, policy: PeerCheckPolicy, fcrdns: FCrDNSResult | None) -> Verdict:
        if self._cancelled:
            return Verdict(False, "cancelled", fcrdns, self._ident.value)
        allowed, reason = decide(policy, fcrdns)
        return Verdict(allowed, reason, fcrdns, self._ident.value)

    def cancel(self) -> None:
        """
        Stop whatever is still running (call it when the connection is lost). Pending
        verdicts fire with C{Verdict(False, "cancelled")}; pending results with L{None}.
        """
        self._cancelled = True
        running, self._running = self._running, []
        for d in running:
            d.cancel()
        self._fcrdns.fire(None)
        self._ident.fire(None)

    def _fcrdns_done(self, result: FCrDNSResult) -> None:
        self.log.info(
            "peer {peer} fcrdns {reason} name={name} tried={names_tried_text}",
            event="peer.fcrdns",
            peer=self._peer_text,
            confirmed=result.confirmed,
            reason=escape(result.reason),
            name=escape(result.name),
            # Already escaped: valid host names, or escaped by confirm_hostname.
            names_tried=",".join(result.names_tried),
            # In the message, a name the reverse zone chose that is not a host name (it may
            # hold spaces and quotes: 'x authentication failed for "root" from 10.9.9.9')
            # is quoted, so it cannot pass for netguard's own words.
            names_tried_text=",".join(_name_text(n) for n in result.names_tried),
            names_skipped=result.names_skipped,
        )
        self._fcrdns.fire(result)

    def _ident_done(self, result: IdentResult) -> None:
        reply = result.reply
        user: str | bytes | None = None
        if reply is not None:
            user = reply.user if reply.user is not None else reply.user_octets
        self.log.info(
            "peer {peer} ident {reason} claims user={user_quoted} os={os_quoted}",
            event="peer.ident",
            peer=self._peer_text,
            ok=result.ok,
            reason=escape(result.reason),
            kind=escape(reply.kind if reply else None),
            os=escape(reply.os if reply else None),
            os_quoted=quoted(reply.os if reply else None),
            charset=escape(reply.charset if reply else None),
            user=escape(user, limit=600),
            user_quoted=quoted(user, limit=600),
            error=escape(reply.error if reply else None),
            received=result.received,
        )
        self._ident.fire(result)


#: What a valid host name (as L{netguard.peer.fcrdns} keeps it: lower case, no final dot)
#: is made of; any other name tried is shown quoted.
_HOST_NAME_TEXT = re.compile(r"[a-z0-9._-]+")


def _name_text(name: str) -> str:
    """
    A name tried (already escaped), for a log message: as it is when it is a host name,
    else in double quotes with C{"} escaped, as L{quoted} shows a value.
    """
    if _HOST_NAME_TEXT.fullmatch(name):
        return name
    return '"' + name.replace('"', "\\x22") + '"'


def _fired(verdict: Verdict) -> Deferred[Verdict]:
    d: Deferred[Verdict] = Deferred()
    d.callback(verdict)
    return d


class PeerChecks:
    """
    The peer checks of one listener or service: a policy, one resolver and one FCrDNS cache
    shared by all its connections. Concurrent checks share their DNS queries (through a
    L{SharingResolver}), and one connection's cancelled check never ends another's.
    """

    def __init__(
        self,
        reactor: Any,
        policy: PeerCheckPolicy,
        *,
        resolver: Any = None,
        cache: FCrDNSCache | None = None,
    ) -> None:
        """
        @param reactor: an L{IReactorTCP}, L{IReactorUDP} and L{IReactorTime} provider.
        @param policy: the policy.
        @param resolver: the L{IResolver} for FCrDNS, wrapped in a L{SharingResolver} unless
            it is one; by default one is built (on first use) from C{policy.resolvers}
            with L{make_resolver}.
        @param cache: the FCrDNS cache; by default a new L{FCrDNSCache} on C{reactor}.
        """
        self.reactor = reactor
        self.policy = policy
        self._resolver = _sharing(resolver) if resolver is not None else None
        self.cache = cache if cache is not None else FCrDNSCache(reactor)

    def resolver(self) -> Any:
        """
        @return: the shared resolver (a L{SharingResolver}), built on first use.
        """
        if self._resolver is None:
            self._resolver = SharingResolver(
                make_resolver(self.reactor, self.policy.resolvers, self.policy.fcrdns_timeout)
            )
        return self._resolver

    def start(self, peer_address: object, local_address: object) -> PeerCheckRun:
        """
        Start the checks for one accepted connection.

        @param peer_address: C{transport.getPeer()} (L{IPv4Address}, L{IPv6Address},
            L{UNIXAddress}, ...).
        @param local_address: C{transport.getHost()}.
        @return: the running checks.
        """
        return PeerCheckRun(
            self.reactor, self.policy, peer_address, local_address, self.resolver, self.cache
        )


def _sharing(resolver: Any) -> SharingResolver:
    return resolver if isinstance(resolver, SharingResolver) else SharingResolver(resolver)


def start_peer_checks(
    reactor: Any,
    policy: PeerCheckPolicy,
    peer_address: object,
    local_address: object,
    *,
    resolver: Any = None,
    cache: FCrDNSCache | None = None,
) -> PeerCheckRun:
    """
    Start the checks of one connection without a long-lived L{PeerChecks} (which shares the
    resolver and cache; prefer it in servers).

    @param reactor: an L{IReactorTCP}, L{IReactorUDP} and L{IReactorTime} provider.
    @param policy: the policy.
    @param peer_address: C{transport.getPeer()}.
    @param local_address: C{transport.getHost()}.
    @param resolver: the L{IResolver} for FCrDNS; by default built from
        C{policy.resolvers}.
    @param cache: an optional FCrDNS cache.
    @return: the running checks.
    """

    def resolver_factory() -> Any:
        if resolver is not None:
            return resolver
        return make_resolver(reactor, policy.resolvers, policy.fcrdns_timeout)

    return PeerCheckRun(reactor, policy, peer_address, local_address, resolver_factory, cache)


__all__ = [
    "DNS_PORT",
    "PeerCheckPolicy",
    "PeerCheckRun",
    "PeerChecks",
    "Verdict",
    "decide",
    "split_host_port",
    "start_peer_checks",
]

# -*- test-case-name: tests.test_gateway_protocol -*-
"""
The factory of NGP/1 sessions: what every session of one gateway shares.

It holds the configuration, the user store, the services and the counters, hands out
connection ids, and is the seam where admission control (through
L{netguard.admitting.AdmittingFactory}) and peer checks plug in.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from netguard.admission import Admission, Refusal
from netguard.admitting import Admitted, AdmittingFactory
from netguard.auth.users import UserStore
from netguard.config import Config
from netguard.framing import FramingLimits
from netguard.gateway.protocol import GatewaySession
from netguard.gateway.seams import DrainWatcher, LiveSession, Service
from netguard.gateway.stream_settings import StreamSettings
from netguard.gateway.streams import StreamCaps
from netguard.outbound.backends import BackendEndpoints, BackendLeg, open_backend
from netguard.outbound.proxy_v2 import ProxyOrigin
from netguard.peer.checks import PeerCheckPolicy, PeerCheckRun, PeerChecks
from netguard.refusal_log import RefusalLog
from netguard.relay import A, B
from netguard.shared_keys import share_transport_keys
from netguard.stats import Stats
from netguard.tickets import SpentClaims, TicketBook, load_retired_keys, save_retired_keys
from netguard.workers.penalties import SharedAdmission

#: Scaled line-phase timeouts: handshake, idle, open.
_Timeouts = tuple[float, float, float | None]

#: How many differently scaled framing limits the factory keeps for new connections to share.
_SCALED_KEPT = 256


class _RelayMeter:
    """
    The bytes a live session has relayed so far: up from its own counter (or its splice's,
    which a kernel relay keeps alone), down from its splice. One per relay, held by the
    stats while it runs (two slots: smaller than a closure or a partial).
    """

    __slots__ = ("session", "leg")

    def __init__(self, session: LiveSession, leg: BackendLeg):
        self.session = session
        self.leg = leg

    def __call__(self) -> tuple[int, int]:
        splice = self.leg.splice
        if splice is None:
            return self.session.bytes_up, 0
        counts = splice.counts
        return max(self.session.bytes_up, counts[A]), counts[B]


class GatewayFactory(Factory):
    """
    Builds L{GatewaySession}s for one gateway.

    Listeners are given this factory; its L{buildProtocol} is that of the
    L{AdmittingFactory} wrapped around it (L{admitting}), which admits or refuses each
    connection and hands an admitted one to L{build_admitted}.

    @ivar config: the L{netguard.config.Config} in force.
    @ivar users: the L{UserStore} in force (replaced as a whole on reload).
    @ivar stats: the process's L{Stats}.
    @ivar admitting: the L{AdmittingFactory} that admits this factory's connections.
    @ivar tickets: the L{TicketBook} of returning-client tickets, or L{None} when tickets
        are off (or no key was given).
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        users: UserStore,
        reactor: Any,
        stats: Stats | None = None,
        ticket_key: bytes | None = None,
    ):
        """
        @param ticket_key: the key tickets are sealed with (L{netguard.tickets.load_ticket_key}
            of the state directory); without one no ticket is issued or accepted.
        """
        share_transport_keys()
        self.config = config
        self.users = users
        self.reactor = reactor
        self.clock: Any = reactor
        self.stats = stats if stats is not None else Stats()
        self.stats.set_services(dict(config.services))
        self.framing_limits = config.limits
        self._scaled: tuple[FramingLimits, dict[_Timeouts, FramingLimits]] = (config.limits, {})
        self._backend_endpoints = BackendEndpoints(reactor)
        self.sessions: set[LiveSession] = set()
        #: The bounds of the streams of multiplexed sessions, and their live counts.
        self.stream_settings: StreamSettings = config.mux
        self.stream_caps = StreamCaps()
        self.admitting = AdmittingFactory(
            self,
            # Shared state needs an admission whose blocks can be published and applied.
            SharedAdmission(config.admission, reactor, _unreported)
            if config.shared.enabled
            else Admission(config.admission, reactor),
            clock=reactor,
            write_timeout=self.framing_limits.write_timeout,
            log=self.log,
        )
        #: Set by the service when it drains; told whenever a session ends.
        self.drainer: DrainWatcher | None = None
        policy = config.peer_checks
        self.peer_policy = policy
        self._require_checks: PeerChecks | None = None
        self.peer_checks = (
            PeerChecks(reactor, policy)
            if policy.fcrdns != "off" or policy.ident != "off"
            else None
        )
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(2)
        self.tickets: TicketBook | None = None
        self._ticket_book: TicketBook | None = None
        self._ticket_key = ticket_key
        self._ticket_claims: SpentClaims | None = None
        self._apply_tickets(config, ticket_key)

    def apply_config(
        self, config: Config, users: UserStore, ticket_key: bytes | None = None
    ) -> None:
        """
        Put a reloaded configuration and users file in force for new commands and sessions;
        live sessions keep their relays (and their own framing bounds).

        @param ticket_key: the ticket key read again (a new one revokes every ticket; the
            same one keeps the spent table); L{None} keeps the key in force.
        """
        self._apply_tickets(config, ticket_key if ticket_key is not None else self._ticket_key)
        self.config = config
        self.users = users
        self.stats.set_services(dict(config.services))
        self.framing_limits = config.limits
        self.stream_settings = config.mux
        self._backend_endpoints = BackendEndpoints(self.reactor)
        self.admitting.write_timeout = self.framing_limits.write_timeout
        policy = config.peer_checks
        if policy != self.peer_policy:
            self.peer_policy = policy
            self._require_checks = None
            self.peer_checks = (
                PeerChecks(self.reactor, policy)
                if policy.fcrdns != "off" or policy.ident != "off"
                else None
            )

    def _apply_tickets(self, config: Config, key: bytes | None) -> None:
        """
        Put the C{[tickets]} settings and the key in force: no book for sessions when tickets
        are off or there is no key. The book is kept while off, so its spent table survives
        a reload that turns tickets off and on again; a new key revokes every ticket, and
        the old one is kept in C{<state_dir>/ticket.key.old} (with the keys retired before
        it), so its tickets stay revoked (not forged) after a restart too.
        """
        self._ticket_key = key
        settings = config.tickets
        book = self._ticket_book
        if key is not None:
            if book is None:
                book = TicketBook(settings, key, self.reactor, retired_keys=self._retired(config))
            else:
                retired = book.retired_keys
                book = book.reloaded(settings, key)
                if book.retired_keys != retired:
                    self._save_retired(config, book.retired_keys)
        if book is not None:
            book.claims = self._ticket_claims
        self._ticket_book = book
        self.tickets = book if settings.enabled else None

    def share_tickets(self, claims: SpentClaims | None) -> None:
        """
        Claim valid tickets in C{claims} too (spent state shared with other processes), now
        and after every reload; L{None} stops it.
        """
        self._ticket_claims = claims
        if self._ticket_book is not None:
            self._ticket_book.claims = claims

    def _retired(self, config: Config) -> tuple[bytes, ...]:
        """
        The ticket keys earlier reloads retired, from the state directory (none when it
        cannot be read: their tickets then look forged, which is logged).
        """
        try:
            return load_retired_keys(config.state_dir)
        except ValueError as exc:
            self.log.warn(
                "retired ticket keys unusable: {why}", event="ticket.key_error", why=str(exc)
            )
            return ()

    def _save_retired(self, config: Config, keys: tuple[bytes, ...]) -> None:
        try:
            save_retired_keys(config.state_dir, keys)
        except ValueError as exc:
            self.log.warn(
                "retired ticket keys not saved: {why}", event="ticket.key_error", why=str(exc)
            )

    @property
    def admission(self) -> Admission:
        """
        The L{Admission} every new connection passes.
        """
        return self.admitting.admission

    @admission.setter
    def admission(self, admission: Admission) -> None:
        self.admitting.admission = admission

    @property
    def server_name(self) -> str:
        return str(self.config.server_name)

    @property
    def max_auth_attempts(self) -> int:
        return self.config.max_auth_attempts

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """
        Admit or refuse a new connection before anything is read from it (admission control:
        caps, rates, penalties, random early drop, overload), through L{admitting}.

        @return: the connection's L{GatewaySession}; for a refused one, the refusal's
            protocol, or L{None} for a silent close.
        """
        return self.admitting.buildProtocol(addr)

    def _conn_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids):x}"

    def refused(self, addr: IAddress | None, refusal: Refusal) -> Mapping[str, object]:
        """
        Count a refused connection (C{refused} and C{refused.<reason>}) and give it a
        connection id, logged with C{conn.reject} when it is one of the first few of its
        source and reason in an interval (the others are summarised: L{refusal_log}).
        """
        conn_id = self._conn_id()
        self.stats.count("refused")
        self.stats.count(f"refused.{refusal.reason}")
        return {"conn_id": conn_id}

    @property
    def refusal_log(self) -> RefusalLog:
        """
        The aggregator of this gateway's refusal events (C{conn.reject} and its
        C{conn.reject.summary}), for every refusal of a connection, whoever decides it.
        """
        return self.admitting.refusal_log

    def stopFactory(self) -> None:
        """
        The last listener has stopped (shutdown): log the refusals still only counted.
        """
        self.admitting.refusal_log.flush()

    def build_admitted(self, addr: IAddress | None, admitted: Admitted) -> GatewaySession:
        """
        Build an admitted connection's session, with line-phase timeouts scaled to the
        current stress.
        """
        conn_id = self._conn_id()
        return GatewaySession(self, conn_id, self._scaled_limits(), admitted)

    def _scaled_limits(self) -> FramingLimits:
        """
        The framing limits with the line-phase timeouts scaled to the current stress.
        Connections accepted at the same stress share one (immutable) value instead of
        holding a copy each: at most L{_SCALED_KEPT} values are kept, forgotten together when
        that many are held or the configured limits change.
        """
        base = self.framing_limits
        scaled = self.admission.scaled_timeout
        open_timeout = base.open_timeout
        timeouts = (
            scaled(base.handshake_timeout),
            scaled(base.idle_timeout),
            None if open_timeout is None else scaled(open_timeout),
        )
        cache = self._scaled
        if cache[0] is not base or len(cache[1]) >= _SCALED_KEPT:
            cache = self._scaled = (base, {})
        limits = cache[1].get(timeouts)
        if limits is None:
            if timeouts == (base.handshake_timeout, base.idle_timeout, open_timeout):
                limits = base
            else:
                limits = attrs.evolve(
                    base,
                    handshake_timeout=timeouts[0],
                    idle_timeout=timeouts[1],
                    open_timeout=timeouts[2],
                )
            cache[1][timeouts] = limits
        return limits

    # -- session bookkeeping -----------------------------------------------------------------

    def session_started(self, session: LiveSession) -> None:
        """
        Count a new live session (in C{connections} unless it is on probation: it counts
        there when a ticket takes it into the lane, else as the refusal it stands for).
        """
        self.sessions.add(session)
        admitted = session.admitted
        if admitted is None or admitted.probation is None:
            self.stats.count("connections")
        self.stats.active = len(self.sessions)

    def session_ended(self, session: LiveSession) -> None:
        """
        Forget a session that has closed, and give its admission slot back.
        """
        self.sessions.discard(session)
        self.stats.active = len(self.sessions)
        if session.admitted is not None:
            session.admitted.release()
        if self.drainer is not None:
            self.drainer.check()

    def relay_started(self, session: LiveSession, leg: BackendLeg, setup: float) -> None:
        """
        A session's relay started (C{OK OPEN} sent): count it for its service, record its
        set-up time, and let the figures read its bytes while it runs (L{Stats.relay_started}).

        @param leg: the session's backend leg, already attached (its splice counts the bytes
            from the backend).
        @param setup: seconds from accept to now.
        """

        self.stats.relay_started(session, session.service or "", setup, _RelayMeter(session, leg))

    def start_peer_checks(self, peer: IAddress, local: IAddress) -> PeerCheckRun | None:
        """
        Start the configured peer checks for a new connection, or return L{None} when all are
        off.
        """
        if self.peer_checks is None:
            return None
        return self.peer_checks.start(peer, local)

    def start_service_checks(
        self, service: Service, peer: IAddress, local: IAddress, run: PeerCheckRun | None = None
    ) -> PeerCheckRun | None:
        """
        Get the check an C{OPEN} of a service that requires a forward-confirmed peer
        (C{fcrdns = "require"}) waits for; ask it C{verdict(self.service_check_policy())}.

        The connection's own FCrDNS check is reused, so a connection is checked (one PTR
        query, one C{peer.fcrdns} event) at most once: C{run} itself when it checks FCrDNS;
        C{run} with its FCrDNS check started now (with the C{[peer_checks]} resolvers,
        patterns and timeout) when C{[peer_checks]} has C{fcrdns = "off"}; or, when the
        connection has no run at all, a new run that the caller keeps as the connection's
        run (to cancel it with the connection and reuse it for later C{OPEN}s).

        @param service: the service being opened.
        @param peer: C{transport.getPeer()}.
        @param local: C{transport.getHost()}.
        @param run: the connection's peer-check run, if it has one.
        @return: the run to ask, or L{None} when the service does not require FCrDNS.
        """
        if service.fcrdns != "require":
            return None
        # Even a run that required FCrDNS before authentication is asked again (its verdict
        # is already there): it may be one an earlier OPEN started, never asked at AUTH.
        checks = self._service_checks()
        if run is None:
            return checks.start(peer, local)
        run.start_fcrdns(checks)
        return run

    def service_check_policy(self) -> PeerCheckPolicy:
        """
        @return: the policy an C{OPEN} of a service with C{fcrdns = "require"} applies: the
            C{[peer_checks]} policy with FCrDNS required.
        """
        return self._service_checks().policy

    def _service_checks(self) -> PeerChecks:
        if self._require_checks is None:
            policy = attrs.evolve(self.peer_policy, fcrdns="require", ident="off")
            self._require_checks = PeerChecks(self.reactor, policy)
        return self._require_checks

    # -- services ------------------------------------------------------------------------------

    def service(self, name: str) -> Service | None:
        """
        The service configured under C{name}, or L{None}.
        """
        found: Service | None = dict(self.config.services).get(name)
        return found

    def allowed(self, service: Service, user: str) -> bool:
        """
        Whether C{user} may open C{service}.
        """
        return bool(service.allows(user, self.users.groups_of(user)))

    def services_for(self, user: str) -> list[str]:
        """
        The names of the services C{user} may open, sorted.
        """
        return sorted(
            name
            for name, service in dict(self.config.services).items()
            if self.allowed(service, user)
        )

    def relay_idle_timeout(self, name: str) -> float:
        """
        The idle timeout of an open session of service C{name}.
        """
        service = self.service(name)
        return (
            float(service.idle_timeout)
            if service is not None
            else self.framing_limits.idle_timeout
        )

    def open_backend(
        self, service: Service, origin: ProxyOrigin | None = None
    ) -> Deferred[BackendLeg]:
        """
        Open C{service}'s backend for one session (for C{origin}: its PROXY header).
        """
        return open_backend(
            self.reactor,
            service,
            write_timeout=self.framing_limits.write_timeout,
            endpoints=self._backend_endpoints,
            origin=origin,
        )


def _unreported(key: str, seconds: float, points: float) -> None:
    """
    A block with no one to tell yet (the shared state hooks its own report in).
    """

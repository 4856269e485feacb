# -*- test-case-name: tests.test_gateway_protocol -*-
"""
The seams of the gateway, written down: what an NGP/1 session uses of its factory
(L{SessionHost}), what the factory uses of a live session (L{LiveSession}) and of a drain
(L{DrainWatcher}), and what both read of a configured service (L{Service}). The factory and
the session depend on these, never on each other's module; the backend leg's side is
L{netguard.outbound.backends.BackendLeg}.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress

from netguard.admitting import Admitted
from netguard.auth.users import UserStore
from netguard.framing import FramingLimits
from netguard.outbound.backends import BackendLeg, BackendService
from netguard.outbound.proxy_v2 import ProxyOrigin
from netguard.peer.checks import PeerCheckPolicy, PeerCheckRun
from netguard.relay import ReactorTime
from netguard.stats import Stats


class Service(BackendService, Protocol):
    """
    What the gateway reads of a configured service (a L{netguard.config.ServiceConfig}).
    """

    @property
    def name(self) -> str: ...

    @property
    def fcrdns(self) -> str | None: ...

    def allows(self, user: str, groups: tuple[str, ...]) -> bool:
        """
        Whether C{user}, a member of C{groups}, may open this service.
        """
        ...


class LiveSession(Protocol):
    """
    What the factory (and the drain, through L{SessionHost}'s set of sessions) uses of a
    live session.

    @ivar admitted: the connection's hold on its admission slot, given back when it ends.
    @ivar service: the name of the service opened, or L{None}.
    @ivar bytes_up: bytes read from the client since the service was opened.
    """

    admitted: Admitted | None
    service: str | None
    bytes_up: int

    def shutdown(self) -> None:
        """
        The gateway is stopping: answer and close in the line phase, keep an open relay.
        """
        ...

    def cut(self) -> None:
        """
        The drain is over: abort the connection now, logged as closed by the server.
        """
        ...


class DrainWatcher(Protocol):
    """
    What the factory tells a drain in progress (L{netguard.ops.drain.Drainer}).
    """

    def check(self) -> None:
        """
        A session ended: see whether any is left.
        """
        ...


class SessionHost(Protocol):
    """
    What a session uses of the factory that built it (L{netguard.gateway.factory.GatewayFactory}).

    @ivar clock: every timer of the session.
    @ivar framing_limits: the configured framing bounds (the session's own are scaled).
    @ivar stats: the process's counters.
    @ivar users: the user store logins are checked against.
    """

    clock: ReactorTime
    framing_limits: FramingLimits
    stats: Stats
    users: UserStore

    @property
    def server_name(self) -> str: ...

    @property
    def max_auth_attempts(self) -> int: ...

    def session_started(self, session: LiveSession) -> None: ...

    def session_ended(self, session: LiveSession) -> None: ...

    def start_peer_checks(self, peer: IAddress, local: IAddress) -> PeerCheckRun | None: ...

    def start_service_checks(
        self,
        service: Service,
        peer: IAddress,
        local: IAddress,
        run: PeerCheckRun | None = None,
    ) -> PeerCheckRun | None: ...

    def service_check_policy(self) -> PeerCheckPolicy: ...

    def service(self, name: str) -> Service | None: ...

    def allowed(self, service: Service, user: str) -> bool: ...

    def services_for(self, user: str) -> list[str]: ...

    def open_backend(
        self, service: Service, origin: ProxyOrigin | None = None
    ) -> Deferred[BackendLeg]: ...

    def relay_started(self, session: LiveSession, leg: BackendLeg, setup: float) -> None: ...

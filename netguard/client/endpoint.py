# -*- test-case-name: tests.test_client_endpoint,tests.integration.test_tunnel_real -*-
"""
A client endpoint whose connections arrive at a service behind a netguard gateway, already
authenticated: C{NGPClientEndpoint}, and the C{netguard:} endpoint string built on it.

    endpoint = clientFromString(
        reactor,
        "netguard:host=127.0.0.1:port=7700:service=redis:user=alice:"
        "password_file=/home/alice/.netguard-pass",
    )
    protocol = await connectProtocol(endpoint, MyRedisProtocol())

The application protocol is connected only once the gateway has authenticated us (SCRAM
with the server's signature checked: mutual authentication) and opened the service; its
C{connectionMade} then sees a transport that carries raw bytes to and from the service.
Failures (refusal codes, authentication, a server that is not a gateway) fail the
L{Deferred} returned by C{connect} with L{NGPError}, L{AuthFailed} or L{NGPProtocolError}.
The endpoint keeps the returning-client tickets the gateway issues (in memory) and presents
one on its next connection.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netguard.client.protocol import Credentials, NGPClientProtocol, TicketRefused
from netguard.client.tickets import TicketStore
from netguard.endpoints import resolve_endpoint_ports, resolve_port
from netguard.log import escape
from netguard.secretfile import read_password_file

if TYPE_CHECKING:
    from netguard.client.mux_endpoint import MuxClientEndpoint


@implementer(IHalfCloseableProtocol)
class _CarrierProtocol(NGPClientProtocol):
    """
    The NGP/1 client that, once the service is open, hands its transport to the
    application's protocol and routes the raw bytes to it.
    """

    def __init__(self, factory: Factory, address: Any, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._app_factory = factory
        self._address = address
        self.app: Any = None

    def service_opened(self) -> None:
        self.app = self._app_factory.buildProtocol(self._address)
        if self.app is None:
            self.transport.loseConnection()
            return
        self.app.makeConnection(self.transport)

    def service_data(self, data: bytes) -> None:
        if self.app is not None:
            self.app.dataReceived(data)

    def readConnectionLost(self) -> None:
        if self.app is not None and IHalfCloseableProtocol.providedBy(self.app):
            self.app.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        if self.app is not None and IHalfCloseableProtocol.providedBy(self.app):
            self.app.writeConnectionLost()

    def service_closed(self, reason: Failure) -> None:
        if self.app is not None:
            self.app.connectionLost(reason)


class _CarrierFactory(Factory):
    """
    Builds the one carrier of a C{connect}, unless the endpoint has given up on it by then.

    @ivar abandoned: whether the connect failed: a connection the gateway endpoint makes
        anyway (Twisted's connectors do when they cannot arm their timeout) is closed at
        once, never logged in, and a carrier already built is closed.
    """

    noisy = False

    def __init__(self, endpoint: NGPClientEndpoint, app_factory: Factory, present: bool):
        self.endpoint = endpoint
        self.app_factory = app_factory
        self.present = present
        self.carrier: _CarrierProtocol | None = None
        self.abandoned = False

    def abandon(self) -> None:
        """
        The connect failed: close the carrier's connection, if any, and build none later.
        """
        self.abandoned = True
        carrier = self.carrier
        if carrier is None:
            return
        carrier.abandon()

    def buildProtocol(self, addr: Any) -> _CarrierProtocol | None:
        if self.abandoned or self.carrier is not None:
            return None
        self.carrier = _CarrierProtocol(
            self.app_factory,
            addr,
            self.endpoint.credentials,
            self.endpoint.service,
            clock=self.endpoint.reactor,
            tickets=self.endpoint.tickets,
            present_ticket=self.present,
        )
        self.carrier.factory = self
        return self.carrier


def ticket_store(tickets: bool | TicketStore) -> TicketStore | None:
    """
    @param tickets: C{True} for a store of one's own, C{False} for none, or a store to share.
    @return: the store an endpoint keeps its tickets in, or L{None}.
    """
    if isinstance(tickets, TicketStore):
        return tickets
    return TicketStore() if tickets else None


def log_ticket_refused(log: Logger, service: str, error: TicketRefused) -> None:
    """
    Log that the gateway refused our ticket and that we connect again without one.
    """
    log.warn(
        "the gateway refused our ticket for {service} ({code} {reason}); connecting again "
        "without one",
        event="tunnel.ticket.refused",
        service=escape(service),
        code=error.code,
        reason=escape(error.text, 200),
    )


@implementer(IStreamClientEndpoint)
class NGPClientEndpoint:
    """
    Connect to C{service} behind the gateway reached through C{gateway}.

    A connection presents a returning-client ticket kept from an earlier login, if any; if
    the gateway refuses it (L{TicketRefused}: the ticket was stale, replayed or revoked),
    the connect is made again at once without one, once.

    @ivar gateway: the L{IStreamClientEndpoint} of the gateway (TCP, unix, TLS...).
    @ivar service: the service name to open.
    @ivar tickets: where the gateway's tickets are kept (L{None}: not used).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        gateway: Any,
        credentials: Credentials,
        service: str,
        tickets: bool | TicketStore = True,
    ):
        """
        @param tickets: C{True} (a store of its own), C{False} (neither ask for nor present
            tickets) or a L{TicketStore} shared with another endpoint to the same gateway
            and user.
        """
        self.reactor = reactor
        self.gateway = gateway
        self.credentials = credentials
        self.service = service
        self.tickets = ticket_store(tickets)

    def connect(self, protocolFactory: Factory) -> Deferred[Any]:
        """
        Connect, authenticate, open the service, then connect C{protocolFactory}'s protocol.

        @return: a L{Deferred} firing with the application's protocol.
        """
        return self._connect(protocolFactory, present=True)

    def _connect(self, protocolFactory: Factory, present: bool) -> Deferred[Any]:
        carrier_factory = _CarrierFactory(self, protocolFactory, present)
        connecting = self.gateway.connect(carrier_factory)

        def opened(carrier: _CarrierProtocol) -> Deferred[Any]:
            return carrier.opened.addCallback(lambda _: carrier.app)

        def failed(failure: Failure) -> Failure:
            carrier_factory.abandon()
            return failure

        connecting.addCallback(opened)
        connecting.addErrback(failed)
        if present:
            connecting.addErrback(self._ticket_refused, protocolFactory)
        return connecting

    def _ticket_refused(self, failure: Failure, protocolFactory: Factory) -> Deferred[Any]:
        failure.trap(TicketRefused)
        assert isinstance(failure.value, TicketRefused)
        log_ticket_refused(self.log, self.service, failure.value)
        return self._connect(protocolFactory, present=False)


#: The C{timeout=} of a C{netguard:} string: seconds to establish the TCP connection to the
#: gateway, by default and at most.
DEFAULT_CONNECT_TIMEOUT = 30.0
MAX_CONNECT_TIMEOUT = 3600.0


def connect_timeout(text: str) -> float:
    """
    @param text: the value of C{timeout=}.
    @return: it as seconds: a finite number above 0 and at most L{MAX_CONNECT_TIMEOUT}.
    @raise ValueError: naming the key, for anything else (C{nan}, C{inf}, 0, negative).
    """
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_CONNECT_TIMEOUT):
        raise ValueError(
            f"netguard: timeout= must be a number of seconds above 0 and at most "
            f"{MAX_CONNECT_TIMEOUT:g}, not {escape(text, 40)!r}"
        )
    return seconds


def endpoint_from_string_args(
    reactor: Any, *args: str, **kwargs: str
) -> NGPClientEndpoint | MuxClientEndpoint:
    """
    Build an L{NGPClientEndpoint} from the parts of a C{netguard:} endpoint string.

    Keys: C{service=NAME} and C{user=NAME} (required); C{password_file=PATH} (required: a file
    of mode 0600 or stricter; a password is never accepted in the string itself); the gateway
    either as C{host=H:port=P} (TCP; the port may be a service name) or as C{gateway=<client
    endpoint string>} with its colons escaped once more (for example
    C{gateway=unix\\:path\\=/run/netguard/ng.sock}). TLS: C{tls=1} (verify against the system
    roots and C{tls_hostname}, default C{host}), C{ca_file=PATH}, C{pin_sha256=PIN[,PIN]},
    C{client_cert=PATH:client_key=PATH} for mutual TLS; see L{wrap_tls}. C{mux=yes}, the
    default, carries every connection as a stream of a shared multiplexed session
    (L{netguard.client.mux_endpoint.MuxClientEndpoint}; a gateway that does not multiplex
    gets a connection each); C{mux=no} opens one gateway connection per connection.
    C{tickets=yes}, the default, keeps the returning-client tickets the gateway issues (in
    memory) and presents them; C{tickets=no} neither asks for nor presents any.

    @raise ValueError: for a missing, unknown or invalid key.
    """
    if args:
        raise ValueError("netguard: takes only key=value arguments")
    if "password" in kwargs:
        raise ValueError("netguard: give password_file=, never a password")
    known = {"host", "port", "gateway", "service", "user", "password_file", "timeout"}
    known |= {"mux", "tickets"}
    known |= set(TLS_KEYS)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"netguard: unknown key(s) {', '.join(unknown)}")
    for key in ("service", "user", "password_file"):
        if not kwargs.get(key):
            raise ValueError(f"netguard: {key}= is required")
    mux = kwargs.get("mux", "yes").lower()
    if mux not in ("yes", "no"):
        raise ValueError("netguard: mux= is yes or no")
    tickets = kwargs.get("tickets", "yes").lower()
    if tickets not in ("yes", "no"):
        raise ValueError("netguard: tickets= is yes or no")
    timeout = connect_timeout(kwargs.get("timeout", str(DEFAULT_CONNECT_TIMEOUT)))
    if "gateway" in kwargs:
        if "host" in kwargs or "port" in kwargs:
            raise ValueError("netguard: give either gateway= or host= and port=, not both")
        gateway = clientFromString(
            reactor, resolve_endpoint_ports(kwargs["gateway"], server=False)
        )
    else:
        if not kwargs.get("host") or not kwargs.get("port"):
            raise ValueError("netguard: host= and port= (or gateway=) are required")
        try:
            number = resolve_port(kwargs["port"])
        except ValueError as e:
            raise ValueError(f"netguard: port= {e}") from None
        if number == 0:
            raise ValueError("netguard: port=0 cannot be connected to")
        gateway = HostnameEndpoint(reactor, kwargs["host"], number, timeout=timeout)
    gateway = wrap_tls(reactor, gateway, kwargs, default_hostname=kwargs.get("host"))
    password = read_password_file(kwargs["password_file"])
    credentials = Credentials(kwargs["user"], password)
    if mux == "yes":
        from netguard.client.mux_endpoint import MuxClientEndpoint

        return MuxClientEndpoint(
            reactor, gateway, credentials, kwargs["service"], tickets=tickets == "yes"
        )
    return NGPClientEndpoint(
        reactor, gateway, credentials, kwargs["service"], tickets=tickets == "yes"
    )


#: The TLS keys of a C{netguard:} endpoint string (and of C{netguard tunnel}'s options).
TLS_KEYS = ("tls", "tls_hostname", "ca_file", "pin_sha256", "client_cert", "client_key")


def _tls_flag(value: object) -> bool:
    """
    @return: whether C{tls=} (or C{--tls}) asks for TLS.
    @raise ValueError: for a value that is neither yes nor no (e.g. empty).
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).lower()
    if text in ("1", "yes", "true", "on"):
        return True
    if text in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"tls={escape(str(value), 40)}: use tls=yes or tls=no")


def wrap_tls(
    reactor: Any, gateway: Any, options: dict[str, Any], default_hostname: str | None
) -> Any:
    """
    Wrap the gateway endpoint in verified TLS when the options ask for it: C{tls} true, or
    any other TLS option given (a TLS option never silently leaves the connection plain).
    The server is always verified (system trust roots and the host name by default,
    C{ca_file}, or a C{pin_sha256}); there is no option to turn verification off.

    @raise ValueError: for TLS options without a host name to verify, or unusable files.
    """
    from netguard.tls import TLSConfigError, client_tls_options
    from netguard.tls_halfclose import wrap_client_tls

    wanted = _tls_flag(options.get("tls"))
    for key in TLS_KEYS[1:]:
        value = options.get(key)
        if value is None:
            continue
        if not str(value):
            # An empty value (a template whose variable was unset) is a mistake, never a
            # request for plain TCP.
            raise ValueError(f"{key}= is empty: give a value, or leave the key out")
        wanted = True
    if not wanted:
        return gateway
    hostname = options.get("tls_hostname") or default_hostname
    if not hostname:
        raise ValueError("TLS needs tls_hostname= (the name the gateway's certificate proves)")
    try:
        creator: Any = client_tls_options(
            hostname,
            ca_file=options.get("ca_file") or None,
            pin_sha256=options.get("pin_sha256") or None,
            client_cert=options.get("client_cert") or None,
            client_key=options.get("client_key") or None,
            clock=reactor,
        )
    except TLSConfigError as error:
        raise ValueError(str(error)) from None
    return wrap_client_tls(creator, gateway)

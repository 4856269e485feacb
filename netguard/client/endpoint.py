# -*- test-case-name: tests.test_client_endpoint -*-
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
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from netguard.client.protocol import Credentials, NGPClientProtocol
from netguard.secretfile import read_password_file


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
    noisy = False

    def __init__(self, endpoint: NGPClientEndpoint, app_factory: Factory):
        self.endpoint = endpoint
        self.app_factory = app_factory
        self.carrier: _CarrierProtocol | None = None

    def buildProtocol(self, addr: Any) -> _CarrierProtocol:
        self.carrier = _CarrierProtocol(
            self.app_factory,
            addr,
            self.endpoint.credentials,
            self.endpoint.service,
            clock=self.endpoint.reactor,
        )
        self.carrier.factory = self
        return self.carrier


@implementer(IStreamClientEndpoint)
class NGPClientEndpoint:
    """
    Connect to C{service} behind the gateway reached through C{gateway}.

    @ivar gateway: the L{IStreamClientEndpoint} of the gateway (TCP, unix, TLS...).
    @ivar service: the service name to open.
    """

    def __init__(self, reactor: Any, gateway: Any, credentials: Credentials, service: str):
        self.reactor = reactor
        self.gateway = gateway
        self.credentials = credentials
        self.service = service

    def connect(self, protocolFactory: Factory) -> Deferred[Any]:
        """
        Connect, authenticate, open the service, then connect C{protocolFactory}'s protocol.

        @return: a L{Deferred} firing with the application's protocol.
        """
        carrier_factory = _CarrierFactory(self, protocolFactory)
        connecting = self.gateway.connect(carrier_factory)

        def opened(carrier: _CarrierProtocol) -> Deferred[Any]:
            return carrier.opened.addCallback(lambda _: carrier.app)

        return connecting.addCallback(opened)


def endpoint_from_string_args(reactor: Any, *args: str, **kwargs: str) -> NGPClientEndpoint:
    """
    Build an L{NGPClientEndpoint} from the parts of a C{netguard:} endpoint string.

    Keys: C{service=NAME} and C{user=NAME} (required); C{password_file=PATH} (required: a file
    of mode 0600 or stricter; a password is never accepted in the string itself); the gateway
    either as C{host=H:port=P} (TCP; the port may be a service name) or as C{gateway=<client
    endpoint string>} with its colons escaped once more (for example
    C{gateway=unix\\:path\\=/run/netguard/ng.sock}).

    @raise ValueError: for a missing, unknown or invalid key.
    """
    if args:
        raise ValueError("netguard: takes only key=value arguments")
    known = {"host", "port", "gateway", "service", "user", "password_file", "timeout"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"netguard: unknown key(s) {', '.join(unknown)}")
    if "password" in kwargs:
        raise ValueError("netguard: give password_file=, never a password")
    for key in ("service", "user", "password_file"):
        if not kwargs.get(key):
            raise ValueError(f"netguard: {key}= is required")
    if "gateway" in kwargs:
        if "host" in kwargs or "port" in kwargs:
            raise ValueError("netguard: give either gateway= or host= and port=, not both")
        gateway = clientFromString(reactor, kwargs["gateway"])
    else:
        if not kwargs.get("host") or not kwargs.get("port"):
            raise ValueError("netguard: host= and port= (or gateway=) are required")
        description = f"tcp:host={kwargs['host']}:port={kwargs['port']}"
        if "timeout" in kwargs:
            description += f":timeout={kwargs['timeout']}"
        gateway = clientFromString(reactor, description)
    password = read_password_file(kwargs["password_file"])
    return NGPClientEndpoint(
        reactor, gateway, Credentials(kwargs["user"], password), kwargs["service"]
    )

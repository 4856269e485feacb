# -*- test-case-name: tests.test_socks5 -*-
"""
The Twisted side of the SOCKS5 client: L{SOCKS5ClientEndpoint}, the protocol that runs a
L{SOCKS5Negotiation} on the proxy connection and then becomes the application's transport,
and the builder behind the C{socks5:} endpoint string.

Guarantees, grammar, credentials and log events: C{docs/endpoints.md}.
"""

from __future__ import annotations

import math
import socket
from typing import Any, Final

from twisted.internet import error
from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from netguard.endpoints import SOCKS5_ENDPOINT_KEYS, resolve_port
from netguard.log import escape
from netguard.outbound.socks5.errors import SOCKSConnectionClosed, SOCKSError, SOCKSTimeout
from netguard.outbound.socks5.negotiation import (
    NegotiationResult,
    SOCKS5Negotiation,
    _credential,
    target_address,
)
from netguard.outbound.socks5.wire import SOCKSAddress
from netguard.secretfile import read_password_file

__all__ = [
    "DEFAULT_TIMEOUT",
    "ENDPOINT_KEYS",
    "SOCKS5ClientEndpoint",
    "endpoint_from_string_args",
]

#: The default negotiation timeout, in seconds.
DEFAULT_TIMEOUT: Final = 10.0


@implementer(IHalfCloseableProtocol)
class _SOCKS5ClientProtocol(ProtocolWrapper):
    """
    Runs the negotiation on the proxy connection, then stands between the proxy transport and
    the application protocol, as the application's transport (the L{ProtocolWrapper} pattern).

    The application protocol is built when the proxy connection is made, but sees
    C{makeConnection} only once the CONNECT reply succeeded; if the negotiation fails it never
    sees anything, as with any failed connection attempt.
    """

    factory: _SOCKS5WrappingFactory
    # zope interfaces are not understood by mypy without a plugin: use them dynamically.
    transport: Any
    wrappedProtocol: Any

    def __init__(self, factory: _SOCKS5WrappingFactory, wrappedProtocol: IProtocol) -> None:
        """
        @param factory: the factory of this connection attempt.
        @param wrappedProtocol: the application protocol.
        """
        super().__init__(factory, wrappedProtocol)
        self.negotiation = factory.new_negotiation()
        self.socks_target = self.negotiation.target
        self.socks_bound: SOCKSAddress | None = None
        self._established = False
        self._aborted = False

    def makeConnection(self, transport: ITransport) -> None:
        """
        Attach to the proxy transport and send the greeting; the application waits.

        @param transport: the transport to the proxy.
        """
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        """
        Send the method selection message.
        """
        self.factory.proxy_connected(self)
        if not self.negotiation.finished:
            self.transport.write(self.negotiation.greeting())

    def dataReceived(self, data: bytes) -> None:
        """
        Feed the negotiation, or once established pass the bytes on.

        @param data: bytes from the proxy.
        """
        if self._established:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.negotiation.finished:
            return  # failed: we aborted, anything still arriving is dropped unread
        try:
            step = self.negotiation.receive(data)
        except SOCKSError as exc:
            self.fail(exc)
            return
        if step.send:
            self.transport.write(step.send)
        if step.result is not None:
            self._establish(step.result)

    def _establish(self, result: NegotiationResult) -> None:
        """
        Connect the application protocol, fire the endpoint's Deferred, then hand over the
        bytes that came with the reply (unless the application already closed).
        """
        self._established = True
        self.socks_bound = result.bound
        self.factory.registerProtocol(self)
        try:
            self.wrappedProtocol.makeConnection(self)
        except Exception:
            # As a TCP transport would: the connection is dropped (the application then sees
            # connectionLost), and the attempt fails with the application's error.
            self._aborted = True
            self.transport.abortConnection()
            self.factory.failed(Failure(), "the application protocol's connectionMade")
            return
        self.factory.established(self, result)
        if result.leftover and not (self.disconnecting or self._aborted):
            self.wrappedProtocol.dataReceived(result.leftover)

    def fail(self, exc: Exception) -> None:
        """
        End the negotiation with an error: abort the proxy connection and fail the attempt.

        @param exc: the reason given to the endpoint's Deferred.
        """
        self.negotiation.fail()
        self._aborted = True
        self.transport.abortConnection()
        self.factory.failed(Failure(exc))

    def abort_negotiation(self) -> None:
        """
        Abort the proxy connection without failing the attempt (the caller fails it).
        """
        if not self._established:
            self.negotiation.fail()
            self._aborted = True
            self.transport.abortConnection()

    def abortConnection(self) -> None:
        """
        Abort the connection (from the application).
        """
        self._aborted = True
        self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        """
        The proxy half-closed: pass it on if the application understands half-close, else
        close, as a plain TCP transport would.
        """
        if not self._established:
            if not self.negotiation.finished:
                self.fail(SOCKSConnectionClosed(self.negotiation.phase, self.negotiation.pending))
            return
        halfcloseable: Any = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if halfcloseable is not None:
            halfcloseable.readConnectionLost()
        else:
            self.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Our write side is closed: tell a half-close-aware application.
        """
        if self._established:
            halfcloseable: Any = IHalfCloseableProtocol(self.wrappedProtocol, None)
            if halfcloseable is not None:
                halfcloseable.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The proxy connection is gone: tell the application, or fail the negotiation.

        @param reason: why.
        """
        if self._established:
            super().connectionLost(reason)
            return
        if not self.negotiation.finished:
            phase, pending = self.negotiation.phase, self.negotiation.pending
            self.negotiation.fail()
            self.factory.failed(Failure(SOCKSConnectionClosed(phase, pending)))


class _SOCKS5WrappingFactory(WrappingFactory[_SOCKS5ClientProtocol]):
    """
    One connection attempt: the factory given to the proxy endpoint, and the owner of the
    Deferred that L{SOCKS5ClientEndpoint.connect} returns.
    """

    protocol = _SOCKS5ClientProtocol
    #: One factory per connection attempt: no "Starting factory" log lines.
    noisy = False

    def __init__(self, endpoint: SOCKS5ClientEndpoint, wrappedFactory: IProtocolFactory) -> None:
        """
        @param endpoint: the endpoint making the attempt.
        @param wrappedFactory: the application's factory.
        """
        super().__init__(wrappedFactory)
        self.endpoint = endpoint
        self.connection: _SOCKS5ClientProtocol | None = None
        self.proxy_attempt: Deferred[IProtocol] | None = None
        self._cancelled_in: str | None = None
        self.deferred: Deferred[IProtocol] = Deferred(self._cancel)

    def new_negotiation(self) -> SOCKS5Negotiation:
        """
        @return: a fresh negotiation for this endpoint's target and credentials.
        """
        return self.endpoint._new_negotiation()

    def buildProtocol(self, addr: IAddress | None) -> _SOCKS5ClientProtocol:
        """
        Build the application protocol (with the proxy's address) and its wrapper.

        @raise error.NoProtocol: if the application's factory returned L{None}.
        """
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            raise error.NoProtocol()
        return self.protocol(self, wrapped)

    def proxy_connected(self, connection: _SOCKS5ClientProtocol) -> None:
        """
        The proxy connection is up; abort it at once if the attempt is already over.
        """
        self.connection = connection
        if self.deferred.called:
            connection.abort_negotiation()

    def established(self, connection: _SOCKS5ClientProtocol, result: NegotiationResult) -> None:
        """
        The CONNECT reply succeeded: fire the Deferred with the application protocol.
        """
        self.endpoint._log_established(connection, result)
        if not self.deferred.called:
            self.deferred.callback(connection.wrappedProtocol)

    def failed(self, reason: Failure, phase: str | None = None) -> None:
        """
        The attempt failed: fire the Deferred with C{reason} (once).

        @param phase: what the attempt was waiting for; by default the negotiation's phase (or
            the connection to the proxy, before there is one).
        """
        if not self.deferred.called:
            self.endpoint._log_failed(reason, phase or self.phase())
            self.deferred.errback(reason)

    def phase(self) -> str:
        """
        @return: what the attempt waits for, in words.
        """
        if self.connection is None:
            return "the connection to the proxy"
        return self.connection.negotiation.phase

    def watch_proxy_attempt(self, attempt: Deferred[IProtocol]) -> None:
        """
        Follow the proxy endpoint's Deferred: its failure is the attempt's failure.
        """
        self.proxy_attempt = attempt

        def proxy_failed(reason: Failure) -> None:
            if self.deferred.called or self._cancelled_in is not None:
                return None  # we cancelled it (caller or timeout): reported by the Deferred
            self.failed(reason)
            return None

        attempt.addCallbacks(lambda _: None, proxy_failed)

    def _cancel(self, deferred: Deferred[IProtocol]) -> None:
        """
        Cancel the attempt (by the caller or by the timeout): stop connecting to the proxy, or
        abort the proxy connection. The Deferred then fails with L{CancelledError}.
        """
        self._cancelled_in = self.phase()
        if self.connection is not None:
            self.connection.abort_negotiation()
        elif self.proxy_attempt is not None:
            self.proxy_attempt.cancel()

    def timed_out(self, result: IProtocol | Failure, timeout: float) -> IProtocol | Failure:
        """
        Turn the cancellation done by the timeout into L{SOCKSTimeout}.
        """
        if isinstance(result, Failure) and result.check(CancelledError):
            phase = self._cancelled_in or self.phase()
            exc = SOCKSTimeout(timeout, phase)
            self.endpoint._log_failed(Failure(exc), phase)
            return Failure(exc)
        return result


# --------------------------------------------------------------------------------------------
# The endpoint


@implementer(IStreamClientEndpoint)
class SOCKS5ClientEndpoint:
    """
    A client endpoint that connects to C{host:port} through a SOCKS5 proxy.

    Its guarantees (methods offered, bounds, timeout, cancellation, what the application
    sees) and the endpoint string syntax are in C{docs/endpoints.md}.
    """

    log = Logger()

    def __init__(
        self,
        proxy_endpoint: IStreamClientEndpoint,
        host: str,
        port: int,
        *,
        reactor: IReactorTime,
        username: str | None = None,
        password: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        offer_no_auth: bool = False,
    ) -> None:
        """
        @param proxy_endpoint: how to reach the proxy.
        @param host: the target: a literal IPv4/IPv6 address, sent as such, or a host name,
            resolved by the proxy.
        @param port: the target port, 1..65535.
        @param reactor: the clock for the negotiation timeout.
        @param username: the RFC 1929 username, 1..255 bytes in UTF-8, or L{None}.
        @param password: the RFC 1929 password, 1..255 bytes in UTF-8; required with
            C{username}.
        @param timeout: seconds from L{connect} to the final reply, proxy connection included.
        @param offer_no_auth: with credentials, also offer "no authentication" (off by default,
            so that a proxy cannot silently drop authentication).
        @raise ValueError: if any argument is invalid (the message never shows the password).
        """
        self._proxy_endpoint: Any = proxy_endpoint
        self._target = target_address(host, port)[0]
        self._host, self._port = host, port
        self._reactor = reactor
        if (username is None) != (password is None):
            raise ValueError("username and password must be given together")
        self._credentials: tuple[bytes, bytes] | None = None
        if username is not None:
            self._credentials = (
                _credential(username, "username"),
                _credential(password, "password"),
            )
        self.username = username
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ValueError("timeout must be a number of seconds")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.timeout = float(timeout)
        if not isinstance(offer_no_auth, bool):
            raise ValueError("offer_no_auth must be a bool")
        self.offer_no_auth = offer_no_auth

    @property
    def target(self) -> SOCKSAddress:
        """
        @return: the target as it will be sent to the proxy.
        """
        return self._target

    @property
    def proxy_endpoint(self) -> IStreamClientEndpoint:
        """
        @return: the endpoint used to reach the proxy.
        """
        return self._proxy_endpoint

    def __repr__(self) -> str:
        """
        @return: a description that names the user but never shows the password.
        """
        auth = "" if self.username is None else f" user={escape(self.username)}"
        return f"<SOCKS5ClientEndpoint {self.target} via {self._proxy_endpoint!r}{auth}>"

    def _new_negotiation(self) -> SOCKS5Negotiation:
        """
        @return: a negotiation for one connection.
        """
        return SOCKS5Negotiation(self._host, self._port, self._credentials, self.offer_no_auth)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect to the proxy and ask it to CONNECT to the target.

        @param protocolFactory: builds the application protocol (called with the proxy's
            address once the proxy connection is made).
        @return: a cancellable L{Deferred} firing with the application protocol after its
            C{connectionMade}, or failing with a L{SOCKSError}, L{CancelledError}, or the proxy
            endpoint's own error.
        """
        attempt = _SOCKS5WrappingFactory(self, protocolFactory)
        attempt.deferred.addTimeout(self.timeout, self._reactor, attempt.timed_out)
        try:
            proxy_deferred = self._proxy_endpoint.connect(attempt)
        except Exception:
            attempt.failed(Failure())
        else:
            attempt.watch_proxy_attempt(proxy_deferred)
        return attempt.deferred

    def _log_established(
        self, connection: _SOCKS5ClientProtocol, result: NegotiationResult
    ) -> None:
        """
        Log an established tunnel.
        """
        self.log.debug(
            "SOCKS5 tunnel to {target} via {proxy} established (bound {bound}, method {method})",
            event="socks5.connected",
            target=str(self.target),
            proxy=_describe_address(connection.transport),
            bound=str(result.bound),
            method=result.method.name,
            user=escape(self.username),
        )

    def _log_failed(self, reason: Failure, phase: str) -> None:
        """
        Log a failed attempt (the reason's text never contains a secret). A L{SOCKSError}'s
        text already has the proxy's bytes escaped, so it is logged as it is; any other error's
        text is escaped here.
        """
        if isinstance(reason.value, SOCKSError):
            text = str(reason.value)
        else:
            text = escape(str(reason.value), limit=300)
        self.log.info(
            "SOCKS5 connection to {target} failed while waiting for {phase}: {reason}",
            event="socks5.failed",
            target=str(self.target),
            phase=phase,
            reason=text,
            error=type(reason.value).__name__,
            user=escape(self.username),
        )


def _describe_address(transport: Any) -> str:
    """
    Render a transport's peer address for a log line.
    """
    try:
        peer = transport.getPeer()
    except Exception:  # pragma: no cover - exotic transports
        return "-"
    if isinstance(peer, IPv4Address | IPv6Address):
        return f"{peer.host}:{peer.port}"
    if isinstance(peer, HostnameAddress):
        return f"{escape(peer.hostname)}:{peer.port}"
    return escape(str(peer))


# --------------------------------------------------------------------------------------------
# The endpoint string


#: Every key a C{socks5:} endpoint string may have.
ENDPOINT_KEYS: Final = SOCKS5_ENDPOINT_KEYS


def _port(value: str, what: str = "port") -> int:
    """
    Turn a port number or a TCP service name into a port one can connect to, with
    L{netguard.endpoints.resolve_port}.

    @param value: C{"443"} or C{"https"}.
    @param what: the key name, for the error message.
    @return: 1..65535.
    @raise ValueError: if C{value} is neither, or is port 0.
    """
    try:
        number = resolve_port(value)
    except ValueError:
        problem = "not a port 1..65535" if value.isdigit() else "no such TCP service"
        raise ValueError(f"{what}={escape(value)}: {problem}") from None
    if number == 0:
        raise ValueError(f"{what}={escape(value)}: not a port 1..65535")
    return number


def _parse_bool(key: str, value: str) -> bool:
    """
    Parse C{yes/no/true/false/1/0/on/off}.
    """
    lowered = value.lower()
    if lowered in ("yes", "true", "1", "on"):
        return True
    if lowered in ("no", "false", "0", "off"):
        return False
    raise ValueError(f"{key}={escape(value)}: expected yes or no")


def endpoint_from_string_args(reactor: Any, *args: str, **kwargs: str) -> SOCKS5ClientEndpoint:
    """
    Build a L{SOCKS5ClientEndpoint} from the parsed parts of a C{socks5:} endpoint string (what
    the plugin's C{parseStreamClient} receives). The grammar is in C{docs/endpoints.md}.

    @param reactor: the reactor given to C{clientFromString}; used for the proxy endpoint and
        as the clock.
    @param args: positional parts; none are accepted.
    @param kwargs: the C{key=value} parts.
    @return: the endpoint.
    @raise ValueError: on any missing, unknown, conflicting or invalid key.
    """
    from twisted.internet.endpoints import HostnameEndpoint, clientFromString

    if args:
        raise ValueError(
            "socks5: takes only key=value arguments, e.g. "
            "socks5:host=example.com:port=443:proxy_host=127.0.0.1:proxy_port=1080"
        )
    if "password" in kwargs:
        raise ValueError(
            "socks5: never put a password in an endpoint string; use password_file=PATH"
        )
    unknown = sorted(set(kwargs) - ENDPOINT_KEYS)
    if unknown:
        raise ValueError(
            f"socks5: unknown key(s) {', '.join(escape(k) for k in unknown)}; "
            f"known: {', '.join(sorted(ENDPOINT_KEYS))}"
        )
    for key in ("host", "port"):
        if not kwargs.get(key):
            raise ValueError(f"socks5: {key}= is required")
    port = _port(kwargs["port"])

    if ("proxy" in kwargs) == ("proxy_host" in kwargs):
        raise ValueError("socks5: give exactly one of proxy= and proxy_host=")
    proxy: Any
    if "proxy" in kwargs:
        if "proxy_port" in kwargs:
            raise ValueError("socks5: proxy_port= goes with proxy_host=, not with proxy=")
        proxy = clientFromString(reactor, kwargs["proxy"])
    else:
        if not kwargs["proxy_host"]:
            raise ValueError("socks5: proxy_host= is empty")
        if "proxy_port" in kwargs:
            proxy_port = _port(kwargs["proxy_port"], "proxy_port")
        else:
            try:
                proxy_port = socket.getservbyname("socks", "tcp")
            except OSError:
                proxy_port = 1080  # RFC 1928's registered port
        proxy = HostnameEndpoint(reactor, kwargs["proxy_host"], proxy_port)

    if ("user" in kwargs) != ("password_file" in kwargs):
        raise ValueError("socks5: user= and password_file= must be given together")
    username = password = None
    if "user" in kwargs:
        username = kwargs["user"]
        password = read_password_file(kwargs["password_file"])

    timeout = DEFAULT_TIMEOUT
    if "timeout" in kwargs:
        try:
            timeout = float(kwargs["timeout"])
        except ValueError:
            raise ValueError(
                f"socks5: timeout={escape(kwargs['timeout'])}: not a number"
            ) from None
    offer_no_auth = _parse_bool("offer_no_auth", kwargs.get("offer_no_auth", "no"))

    return SOCKS5ClientEndpoint(
        proxy,
        kwargs["host"],
        port,
        reactor=reactor,
        username=username,
        password=password,
        timeout=timeout,
        offer_no_auth=offer_no_auth,
    )

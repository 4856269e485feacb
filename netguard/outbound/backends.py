# -*- test-case-name: tests.test_backends,tests.test_relay -*-
"""
Backends: what a service's bytes are relayed to once a client has opened it.

L{open_backend} opens one session's leg to a Twisted client endpoint string (C{tcp:},
C{unix:}, verified C{tls:}, C{socks5:}, optionally through the service's SOCKS5 proxy) or
to the built-in C{builtin:echo}. The session talks to its leg through the small
L{BackendLeg} contract, so this module knows nothing of the gateway; the relay itself is
L{netguard.relay.Splice}. Backend strings and opening: C{docs/operating.md} section 5.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString
from twisted.internet.error import ConnectionDone, NotConnectingError, TimeoutError
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IProtocolFactory,
)
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from netguard.endpoints import Field, join_fields, socks5_carry_problem, split_description
from netguard.log import escape
from netguard.outbound.backend_files import check_backend_files
from netguard.outbound.proxy_v2 import ProxyOrigin, header_for
from netguard.outbound.socks5 import SOCKSError
from netguard.relay import A, B, HalfCloseableTransport, ReactorTime, RelayResult, Splice
from netguard.relay_splice import KernelSplice, PipePool, kernel_relay_possible
from netguard.wrapped_interfaces import provide_through_wrapper

ECHO = "builtin:echo"


class BackendService(Protocol):
    """
    What opening a backend reads of a configured service (a
    L{netguard.config.ServiceConfig}).
    """

    @property
    def backend(self) -> str: ...

    @property
    def socks5(self) -> str | None: ...

    @property
    def connect_timeout(self) -> float: ...

    @property
    def idle_timeout(self) -> float: ...


class BackendLeg(Protocol):
    """
    What a session calls on its backend leg.

    @ivar done: fires with a L{RelayResult} when the relay has ended on both sides.
    @ivar splice: the relay once attached (its C{counts} are the live byte counts), or
        L{None}.
    """

    splice: Splice | KernelSplice | None

    @property
    def done(self) -> Deferred[RelayResult]: ...

    def attach(self, client_transport: HalfCloseableTransport) -> None:
        """
        The session starts relaying: wire backpressure between C{client_transport} and the
        backend, so neither side's write queue grows without bound.
        """

    def write(self, data: bytes) -> None:
        """Bytes from the client, for the backend."""

    def half_close(self) -> None:
        """The client will send no more."""

    def close(self) -> None:
        """The client's connection is gone: end the backend side."""


class BackendConnectTimeout(TimeoutError):
    """
    The backend did not accept the connection within the service's C{connect_timeout}.
    (A Twisted L{twisted.internet.error.TimeoutError}, itself a L{ConnectError}.)
    """


class _Leg:
    """
    What every backend leg holds: its relay's time bounds, its splice once attached, and
    the L{Deferred} of the relay's result.
    """

    __slots__ = ("clock", "write_timeout", "idle_timeout", "_done", "splice")

    def __init__(self, clock: ReactorTime, write_timeout: float, idle_timeout: float):
        """
        @param clock: the L{IReactorTime} for the relay's timers.
        @param write_timeout: see L{Splice}.
        @param idle_timeout: see L{Splice}.
        """
        self.clock = clock
        self.write_timeout = write_timeout
        self.idle_timeout = idle_timeout
        self._done: Deferred[RelayResult] | None = None
        self.splice: Splice | KernelSplice | None = None

    @property
    def done(self) -> Deferred[RelayResult]:
        """
        Fires with a L{RelayResult} when the relay has ended on both sides. Made when first
        asked for: by then the relay's own (a kernel relay makes its own only when asked, so
        an idle one that nobody waits on holds no L{Deferred}), else the leg's, which the
        relay is handed when it starts.
        """
        done = self._done
        if done is None:
            done = self._done = self.splice.done if self.splice is not None else Deferred()
        return done


class EchoLeg(_Leg):
    """
    The built-in echo backend: every byte written comes straight back.

    It is a splice whose two sides are the same client transport: side B is a L{_Mirror}
    that writes back to the client, and pausing it pauses reading the client (the only source
    of its bytes), so a client that does not read what it sent stops being read.
    """

    __slots__ = ()

    def attach(self, client_transport: HalfCloseableTransport) -> None:
        """
        Start echoing to C{client_transport}; the splice fires this leg's own L{done}.
        """
        mirror = _Mirror(client_transport)
        self.splice = Splice(
            client_transport,
            mirror,
            clock=self.clock,
            idle_timeout=self.idle_timeout,
            write_timeout=self.write_timeout,
            done=self.done,
        )
        mirror.splice = self.splice
        self.splice.start()

    def write(self, data: bytes) -> None:
        """
        Bytes from the client: sent straight back.
        """
        if self.splice is not None:
            self.splice.data_from(A, data)

    def half_close(self) -> None:
        """
        The client sent its last byte, and all of it has been echoed: pass the half-close
        back, and the echo side is done.
        """
        if self.splice is not None:
            self.splice.eof_from(A)
            self.splice.lost(B)

    def close(self) -> None:
        """
        The client's connection is gone.
        """
        if self.splice is not None:
            self.splice.lost(A)
            self.splice.lost(B)


class _Mirror:
    """
    The "backend transport" of the echo leg: what is written to it is what the echo backend
    reads, and it sends it straight back (counted as bytes from B to A); pausing it pauses
    reading the client (the only source of its bytes).
    """

    __slots__ = ("_client", "producer", "splice")

    def __init__(self, client_transport: HalfCloseableTransport):
        self._client = client_transport
        self.producer: object | None = None
        self.splice: Splice | None = None

    def write(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.data_from(B, data)

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self._client.pauseProducing()

    def resumeProducing(self) -> None:
        self._client.resumeProducing()

    def loseWriteConnection(self) -> None:
        self._client.loseWriteConnection()

    def loseConnection(self) -> None:
        """The client side closes itself."""

    def abortConnection(self) -> None:
        self._client.abortConnection()


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class _BackendProtocol(TwistedProtocol):
    """
    The connection to a backend: its events go to the leg.
    """

    transport: Any

    def __init__(self, leg: EndpointLeg):
        self.leg = leg

    def connectionMade(self) -> None:
        provide_through_wrapper(self, self.transport)
        self.leg.backend_connected()

    def handshakeCompleted(self) -> None:
        self.leg.backend_handshake_done()

    def dataReceived(self, data: bytes) -> None:
        self.leg.backend_data(data)

    def readConnectionLost(self) -> None:
        self.leg.backend_eof()

    def writeConnectionLost(self) -> None:
        """Our half-close was delivered; nothing to do."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.leg.backend_lost(reason)


#: The log prefix Twisted's C{tcp.Client} gives a backend connection (C{logPrefix()}).
_CLIENT_LOGSTR = f"{_BackendProtocol.__name__},client"


@implementer(IProtocolFactory)
class EndpointLeg(_Leg):
    """
    A backend reached through a client endpoint, and the factory of its one connection's
    protocol (a L{_BackendProtocol}).

    The leg is L{ready} once the backend connection can carry bytes: at once for a plain
    connection, after the TLS handshake (and so after the certificate was verified) for a TLS
    one; a connection lost before that fails L{ready} with its reason (a TLS verification
    error, say), so that the session answers C{BACKEND_UNAVAILABLE} instead of opening.

    Until the session attaches, what the backend sends is kept (and reading it paused, so
    that is at most one read), and its EOF or loss is remembered; L{attach} delivers them
    first, in order.

    With C{pipes}, a relay between two plain sockets (L{kernel_relay_possible}) is a
    L{KernelSplice} that borrows its pipes there; any other is an ordinary L{Splice}.

    With a C{preface} (a PROXY header, L{netguard.outbound.proxy_v2}), those bytes are the
    first the backend gets: written when the connection is made, ahead of any relayed byte
    (either relay sends what Twisted's buffer holds before anything it reads), and, for a
    TLS backend, on the connection itself before the TLS handshake, as HAProxy's
    C{send-proxy-v2} does. They are not the client's: the relay's counts leave them out.

    Memory: the leg keeps its state in slots; once attached it lets go of L{ready} (fired,
    and needed only while connecting) and holds no list for early bytes unless some came.
    Being its connection's factory itself, it is all that the connection's C{Connector}
    keeps of the opening: for a plain C{tcp:} backend (L{DirectTCP}) nothing else either,
    no endpoint wrapper and no connect L{Deferred}.

    @ivar ready: fires with the leg once it can carry bytes; L{None} once attached.
    """

    __slots__ = ("pipes", "preface", "protocol", "ready", "_early", "_eof_early", "_lost_early")

    def __init__(
        self,
        clock: ReactorTime,
        write_timeout: float,
        idle_timeout: float,
        pipes: PipePool | None = None,
        preface: bytes | None = None,
    ):
        """
        @param pipes: where kernel relays borrow their pipes; L{None} for none.
        @param preface: bytes the backend gets before any relayed byte, or L{None}.
        """
        super().__init__(clock, write_timeout, idle_timeout)
        self.pipes = pipes
        self.preface = preface
        self.protocol: _BackendProtocol | None = None
        self.ready: Deferred[EndpointLeg] | None = Deferred()
        self._early: list[bytes] | None = None
        self._eof_early = False
        self._lost_early = False

    def attach(self, client_transport: HalfCloseableTransport) -> None:
        """
        Start relaying between C{client_transport} (side A) and the backend (side B).
        """
        assert self.protocol is not None
        backend_transport = self.protocol.transport
        self.ready = None  # fired: the opening is over
        splice: Splice | KernelSplice
        if self.pipes is not None and kernel_relay_possible(client_transport, backend_transport):
            splice = KernelSplice(
                client_transport,
                backend_transport,
                clock=self.clock,
                pool=self.pipes,
                idle_timeout=self.idle_timeout,
                write_timeout=self.write_timeout,
                done=self._done,  # none unless asked for already: the relay makes it
                owner=self,
            )
            self.splice = splice
            splice.start()
        else:
            splice = Splice(
                client_transport,
                backend_transport,
                clock=self.clock,
                idle_timeout=self.idle_timeout,
                write_timeout=self.write_timeout,
                done=self.done,  # fired by the relay itself: no second Deferred chained
            )
            self.splice = splice
            splice.start()
        early, self._early = self._early, None
        for chunk in early or ():
            splice.data_from(B, chunk)
        if self._lost_early:
            splice.lost(B)
        elif self._eof_early:
            splice.eof_from(B)
        else:
            # Not unconditionally: the early bytes may have filled the client's queue.
            splice.resume_reading(B)

    def write(self, data: bytes) -> None:
        """
        Bytes from the client, for the backend.
        """
        if self.splice is not None:
            self.splice.data_from(A, data)

    def half_close(self) -> None:
        """
        The client will send no more.
        """
        if self.splice is not None:
            self.splice.eof_from(A)

    def close(self) -> None:
        """
        The client's connection is gone (before the attach: drop the backend connection).
        """
        if self.splice is not None:
            self.splice.lost(A)
        elif self.protocol is not None and self.protocol.transport is not None:
            if not self._lost_early:
                self.protocol.transport.loseConnection()

    def backend_connected(self) -> None:
        """
        The connection to the backend is made: the preface goes first (under TLS, on the
        connection beneath it: Twisted starts the handshake only once this returns); over TLS
        the leg waits for the handshake.
        """
        if self.protocol is None:
            return
        transport = self.protocol.transport
        connector = getattr(transport, "connector", None)
        if getattr(connector, "factory", None) is self:
            # Connected directly (DirectTCP): once connected, Twisted's tcp.Client uses its
            # connector only to report the connection's loss (connector.connectionLost);
            # the leg does that itself, so the Connector (and its cycle with the transport)
            # is not kept for the connection's life.
            transport.connector = self
        if getattr(transport, "logstr", None) == _CLIENT_LOGSTR:
            # Twisted formats the same log prefix for every backend connection: one shared
            # copy of that text instead of a string per connection.
            transport.logstr = _CLIENT_LOGSTR
        tls = isinstance(transport, TLSMemoryBIOProtocol)
        preface, self.preface = self.preface, None
        if preface is not None:
            (transport.transport if tls else transport).write(preface)
        if not tls:
            self._set_ready()

    def backend_handshake_done(self) -> None:
        """
        The TLS handshake with the backend succeeded (its certificate was verified).
        """
        self._set_ready()

    def abort_connecting(self) -> None:
        """
        Give up on a connection that is made but not ready (a TLS handshake that hangs).
        """
        if self.ready is not None and not self.ready.called and self.protocol is not None:
            self.protocol.transport.abortConnection()

    def _set_ready(self) -> None:
        if self.ready is not None and not self.ready.called:
            self.ready.callback(self)

    def backend_data(self, data: bytes) -> None:
        """
        The backend sent C{data}.
        """
        if self.splice is not None:
            self.splice.data_from(B, data)
        else:
            # Before the session attaches (bytes that came with the connection): kept, and
            # reading paused so this holds at most one read.
            if self._early is None:
                self._early = []
            self._early.append(data)
            if self.protocol is not None and self.protocol.transport is not None:
                self.protocol.transport.pauseProducing()

    def backend_eof(self) -> None:
        """
        The backend half-closed (or closed: Twisted reports a peer's close as EOF first).
        """
        if self.splice is not None:
            self.splice.eof_from(B)
        else:
            self._eof_early = True

    def backend_lost(self, reason: Failure | None = None) -> None:
        """
        The backend connection is gone.
        """
        if self.ready is not None and not self.ready.called:
            self.ready.errback(reason if reason is not None else Failure(ConnectionDone()))
        elif self.splice is not None:
            self.splice.lost(B)
        else:
            self._lost_early = True

    # -- the factory of the backend connection's protocol (IProtocolFactory, and what a
    # -- Connector asks of a ClientFactory) ------------------------------------------------

    def buildProtocol(self, addr: IAddress | None) -> _BackendProtocol:
        """
        Build the one protocol of the backend connection.
        """
        protocol = _BackendProtocol(self)
        self.protocol = protocol
        return protocol

    def doStart(self) -> None:
        """Nothing to start (and no "Starting factory" line: one factory per relay)."""

    def doStop(self) -> None:
        """Nothing to stop."""

    def startedConnecting(self, connector: IConnector) -> None:
        """A direct connection attempt started (L{DirectTCP}): nothing to do."""

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        """
        A direct connection attempt failed (refused, unreachable, Twisted's own connect
        timeout, or stopped by the leg's canceller): fail L{ready} with its reason.
        """
        if self.ready is not None and not self.ready.called:
            self.ready.errback(reason)

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        """The connection is gone: the protocol has reported it already."""

    def connectionLost(self, reason: Failure) -> None:
        """
        As the C{connector} of a direct connection once it is made (L{backend_connected}):
        the transport reports its loss, and the leg does what Twisted's C{Connector} would,
        tell the factory (itself) and stop it. The protocol reports the loss to the relay.
        """
        self.clientConnectionLost(self, reason)  # type: ignore[arg-type]
        self.doStop()


class DirectTCP:
    """
    Where a plain C{tcp:} backend is, read from the Twisted endpoint its description built
    (a L{TCP4ClientEndpoint}), for connecting with the reactor's C{connectTCP} and the leg
    as the factory: the same connection, timeout and source address as the endpoint's
    C{connect}, without the endpoint's per-connection wrappers (a wrapping factory and
    protocol and a connect L{Deferred}, kept by the connection for its whole life).
    """

    __slots__ = ("host", "port", "timeout", "bind_address")

    def __init__(self, host: str, port: int, timeout: float, bind_address: Any):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.bind_address = bind_address

    @classmethod
    def of(cls, endpoint: object) -> DirectTCP | None:
        """
        @return: where C{endpoint} connects, if it is exactly a L{TCP4ClientEndpoint} whose
            settings can be read; L{None} for any other endpoint (connected through its own
            C{connect}).
        """
        if type(endpoint) is not TCP4ClientEndpoint:
            return None
        try:
            return cls(
                endpoint._host,
                endpoint._port,
                endpoint._timeout,
                endpoint._bindAddress,
            )
        except AttributeError:  # another Twisted's endpoint: use its connect
            return None

    def connect(self, reactor: Any, leg: EndpointLeg) -> Deferred[EndpointLeg]:
        """
        Connect C{leg}'s backend connection.

        @return: C{leg.ready}, which cancelling stops the connection attempt (its failure,
            reported to the leg as a factory, fails it).
        """
        connectors: list[Any] = []

        def cancel(ready: Deferred[EndpointLeg]) -> None:
            try:
                connectors[0].stopConnecting()
            except NotConnectingError:
                pass  # connected already: the leg aborts a connection that is made

        ready: Deferred[EndpointLeg] = Deferred(cancel)
        leg.ready = ready
        connectors.append(
            reactor.connectTCP(
                self.host, self.port, leg, timeout=self.timeout, bindAddress=self.bind_address
            )
        )
        return ready


def describe_failure(failure: Failure, limit: int = 300) -> str:
    """
    The cause of a failed opening, as text for a log field, with what a peer chose escaped
    exactly once: a L{SOCKSError}'s message already shows the proxy's bytes escaped (and is
    printable ASCII), so it is used as it is; any other error's message is escaped here.

    @param failure: why L{open_backend} failed.
    @param limit: how many bytes of another error's message are shown.
    @return: printable ASCII.
    """
    if isinstance(failure.value, SOCKSError):
        return str(failure.value)
    return escape(failure.getErrorMessage() or failure.type.__name__, limit=limit)


def backend_endpoint(reactor: Any, service: BackendService) -> Any:
    """
    The client endpoint for C{service}'s backend, through its SOCKS5 proxy if it has one.

    The files Twisted reads to build a C{tls:} or C{ssl:} one are checked first
    (L{check_backend_files}): one that is not a regular file fails it at once.

    @raise netguard.outbound.backend_files.BackendFileError: such a file is a FIFO, a
        device or a socket.
    """
    check_backend_files(service.backend)
    if service.socks5:
        from netguard.outbound.socks5 import SOCKS5ClientEndpoint

        problem = socks5_carry_problem(service.backend)
        if problem is not None:
            raise ValueError(problem)
        fields = split_description(service.backend)
        params = {f.key: f.value for f in fields if f.key}
        if service.backend.split(":", 1)[0].lower() == "tls":
            return clientFromString(
                reactor, tls_through_socks5(fields, service.socks5, service.connect_timeout)
            )
        return SOCKS5ClientEndpoint(
            clientFromString(reactor, service.socks5),
            params["host"],
            int(params["port"]),
            reactor=reactor,
            timeout=service.connect_timeout,
        )
    return clientFromString(reactor, service.backend)


def tls_through_socks5(fields: list[Field], proxy: str, timeout: float) -> str:
    """
    The C{tls:} backend string C{fields} with its connection made through the SOCKS5 proxy
    whose client endpoint string is C{proxy}: Twisted's own C{tls:} endpoint then applies
    every TLS key of the string (C{trustRoots=}, C{certificate=}, C{privateKey=}, the host
    name to verify) exactly as it does without a proxy, around a C{socks5:} endpoint (its
    C{endpoint=}) that asks the proxy for the backend's host and port within C{timeout}
    seconds.

    @raise ValueError: if the string already names an C{endpoint=} of its own.
    """
    problem = socks5_carry_problem(join_fields(fields))
    if problem is not None:
        raise ValueError(problem)
    params = {f.key: f.value for f in fields if f.key}
    inner = join_fields(
        [
            Field(None, "socks5"),
            Field("host", params["host"]),
            Field("port", params["port"]),
            Field("proxy", proxy),
            Field("timeout", repr(float(timeout))),
        ]
    )
    return join_fields([*fields, Field("endpoint", inner)])


class BackendEndpoints:
    """
    The client endpoints of one configuration's backends, for L{open_backend}.

    A C{tcp:} or C{unix:} backend without a SOCKS5 proxy is built from its description on
    first use and reused for later sessions: building it reads nothing but the description,
    and its endpoint keeps no state between connections. Every other backend (C{tls:}, whose
    trust roots and certificate files are read when it is built; one behind a SOCKS5 proxy;
    an endpoint plugin's) is built afresh for each session. A reloaded configuration gets a
    new L{BackendEndpoints}.

    @ivar pipes: the pipes its kernel relays borrow (L{KernelSplice}).
    """

    def __init__(self, reactor: Any):
        """
        @param reactor: the reactor the endpoints connect with.
        """
        self._reactor = reactor
        self._built: dict[str, Any] = {}
        self._direct: dict[str, DirectTCP | None] = {}
        self.pipes = PipePool()

    def endpoint(self, service: BackendService) -> Any:
        """
        The client endpoint for C{service}'s backend (L{backend_endpoint}).

        @raise Exception: whatever building it raises for a bad description (not kept).
        """
        description = service.backend
        if service.socks5 or description.split(":", 1)[0].lower() not in ("tcp", "unix"):
            return backend_endpoint(self._reactor, service)
        built = self._built.get(description)
        if built is None:
            built = self._built[description] = backend_endpoint(self._reactor, service)
            self._direct[description] = DirectTCP.of(built)
        return built

    def direct(self, service: BackendService) -> DirectTCP | None:
        """
        Where C{service}'s backend is, when it is a plain C{tcp:} one reached directly
        (L{DirectTCP}); L{None} otherwise. Call after L{endpoint}.
        """
        if service.socks5:
            return None
        return self._direct.get(service.backend)


def open_backend(
    reactor: Any,
    service: BackendService,
    *,
    write_timeout: float = 30.0,
    endpoints: BackendEndpoints | None = None,
    origin: ProxyOrigin | None = None,
) -> Deferred[BackendLeg]:
    """
    Open the backend of C{service} for one session.

    Opening is bounded by the service's C{connect_timeout}, which covers the TCP connection,
    any SOCKS5 negotiation and, for a TLS backend, the handshake: a TLS backend counts as
    connected only once its certificate has been verified, so a verification failure is a
    failed opening (the session answers C{BACKEND_UNAVAILABLE} and logs the cause), never an
    opened service that then drops.

    Never raises: every problem, a bad backend description included, fails the L{Deferred}.

    @param reactor: the reactor used to connect and to time.
    @param service: a L{netguard.config.ServiceConfig} (C{backend}, C{socks5},
        C{connect_timeout}, C{idle_timeout} and C{kernel_relay}, true if absent, are read:
        with it, a relay between two plain sockets moves its bytes in the kernel,
        L{KernelSplice}).
    @param write_timeout: how long either side may leave its write queue full.
    @param endpoints: where the backend's endpoint and the kernel relay's pipes come from
        (L{BackendEndpoints}); by default the endpoint is built from the service's
        description for this session and the relay is the ordinary one.
    @param origin: who the session is for: with a service whose C{send_proxy} is C{"v2"}
        (C{"off"} if absent), the backend first gets a PROXY v2 header made from it
        (L{header_for}); a header over its bounds fails the opening.
    @return: a L{Deferred} firing with the L{BackendLeg} once connected, or failing with the
        precise cause: the endpoint's own error (refused, SOCKS5 reply, TLS verification...),
        or L{BackendConnectTimeout} when C{connect_timeout} passes first.
    """
    if service.backend == ECHO:
        return succeed(EchoLeg(reactor, write_timeout, service.idle_timeout))
    pipes: PipePool | None = None
    if getattr(service, "kernel_relay", True) and endpoints is not None:
        pipes = endpoints.pipes
    preface = None
    if origin is not None and getattr(service, "send_proxy", "off") == "v2":
        try:
            preface = header_for(origin)
        except ValueError as error:
            return fail(error)
    leg = EndpointLeg(reactor, write_timeout, service.idle_timeout, pipes, preface)
    ready = leg.ready
    assert ready is not None
    try:
        if endpoints is None:
            endpoint = backend_endpoint(reactor, service)
            direct = None if service.socks5 else DirectTCP.of(endpoint)
        else:
            endpoint = endpoints.endpoint(service)
            direct = endpoints.direct(service)
        if direct is not None:
            connecting: Deferred[Any] = direct.connect(reactor, leg)
            ready = connecting
        else:
            connecting = endpoint.connect(leg)
    except Exception as error:  # a bad description: reported like any connect failure
        return fail(error)

    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        if connecting.called:
            leg.abort_connecting()  # connected, but the TLS handshake is not done
        else:
            connecting.cancel()

    timeout = reactor.callLater(service.connect_timeout, expire)

    def connected(ready: EndpointLeg) -> EndpointLeg:
        if timeout.active():
            timeout.cancel()
        return leg

    def failed(failure: Failure) -> Failure:
        if timeout.active():
            timeout.cancel()
        if ready is not connecting:
            ready.addErrback(lambda _: None)  # reported here, not as an unhandled error
        if failure.check(TimeoutError):
            return failure  # already precise (e.g. a SOCKS5 timeout naming the phase)
        if expired:
            # Endpoints report their cancellation differently (CancelledError,
            # ConnectingCancelledError...): what happened is that the time ran out.
            return Failure(
                BackendConnectTimeout(string=f"no connection within {service.connect_timeout:g}s")
            )
        return failure

    if connecting is not ready:
        connecting.addCallback(lambda protocol: ready)
    connecting.addCallbacks(connected, failed)
    return connecting  # type: ignore[return-value]

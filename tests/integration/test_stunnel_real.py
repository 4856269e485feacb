# -*- test-case-name: tests.integration.test_stunnel_real -*-
"""
netguard's client behind a real TLS-terminating man in the middle: a real stunnel (Debian
package C{stunnel4}, run in the foreground, stopped by PID) with its own certificate, which
the client is told to trust (the worst case: a misissued or stolen certificate, or a
corporate interceptor the client's trust store accepts). stunnel terminates the client's TLS
and forwards plain TCP to the plain C{tcp:} listener of the real gateway running
in-process; that listener offers only C{SCRAM-SHA-256} (no channel binding is possible on
it).

Between stunnel and the gateway sits a recording tap (an honest plain TCP forwarder written
for these tests) so that the tests see every byte that crossed the interceptor's plain side.

The client (C{netguard tunnel --tls} and the C{netguard:} endpoint with C{tls=1}) must
refuse the login as a downgrade, before any SCRAM message and without one byte of the local
program crossing. The controls: the same client straight to the gateway's C{[[tls_listen]]}
listener logs in with C{SCRAM-SHA-256-PLUS}; and a client built with the public
C{require_channel_binding=False} does log in through stunnel, bound to nothing, with its
service bytes readable on the interceptor's plain side (what the refusal prevents).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.client.endpoint import NGPClientEndpoint, wrap_tls
from netguard.client.protocol import NGPClientProtocol, NGPProtocolError
from netguard.client.tunnel import TunnelFactory
from tests import tls_certs
from tests.integration.util import (
    RunningGateway,
    need_peer,
    start_listening_peer,
    wait_for,
)

#: The gateway: a plain listener (behind stunnel) on 127.0.0.2 and a TLS listener (the
#: control) on 127.0.0.1 (the same endpoint string twice would be refused). No event-loop-lag
#: shedding and a long handshake bound: on a loaded machine neither may refuse or cut these
#: tests' clients (they are hang guards, nothing more).
GATEWAY_CONFIG = """\
listen = ["tcp:0:interface=127.0.0.2"]

[[tls_listen]]
endpoint = "tcp:0:interface=127.0.0.1"
cert_file = "{cert_file}"
key_file = "{key_file}"

[limits]
handshake_timeout = 300.0

[overload]
max_lag = "off"
"""

#: stunnel's configuration: in the foreground, no pid file, a TLS server on C{front} with its
#: own certificate, forwarding plain TCP to C{back}.
STUNNEL_CONFIG = """\
foreground = yes
pid =
syslog = no
debug = notice

[netguard]
accept = 127.0.0.1:{front}
connect = 127.0.0.1:{back}
cert = {cert_file}
key = {key_file}
sslVersionMin = TLSv1.2
"""

#: The bound on any one wait (a hang guard; nothing asserts on speed).
WAIT = 30.0

#: What the local program sends first: it must never cross the interceptor.
LOCAL_MARKER = b"LOCAL-PROGRAM-SECRET-REQUEST\r\n"


class _TapSide(Protocol):
    """
    One side of a L{TapConnection}: records what it reads and passes it to the other side.
    """

    transport: Any

    def __init__(self, connection: TapConnection, record: bytearray):
        self.connection = connection
        self.record = record
        self.other: _TapSide | None = None
        self.pending: list[bytes] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.record += data
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.write(data)
        else:
            self.pending.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.loseConnection()
        self.connection.side_lost()


class TapConnection:
    """
    One connection through the L{RecordingTap}: what stunnel sent towards the gateway, what
    the gateway answered, and whether both sides have ended.
    """

    def __init__(self) -> None:
        self.to_gateway = bytearray()
        self.to_client = bytearray()
        self.near = _TapSide(self, self.to_gateway)
        self.far = _TapSide(self, self.to_client)
        self.near.other, self.far.other = self.far, self.near
        self._lost = 0

    @property
    def finished(self) -> bool:
        """
        Both sides have closed.
        """
        return self._lost >= 2

    def side_lost(self) -> None:
        self._lost += 1

    def gateway_connected(self, _: Any) -> None:
        for chunk in self.near.pending:
            self.far.transport.write(chunk)
        self.near.pending = []
        if self.near.lost:
            self.far.transport.loseConnection()

    def gateway_failed(self, failure: Failure) -> None:
        self.side_lost()
        if self.near.transport is not None:
            self.near.transport.loseConnection()


class RecordingTap(Factory):
    """
    An honest plain TCP forwarder written for these tests, between stunnel and the gateway's
    plain listener: relays every byte unchanged and records it.

    @ivar connections: every L{TapConnection}, in order.
    """

    noisy = False

    def __init__(self, gateway: Any):
        self.gateway = gateway
        self.connections: list[TapConnection] = []

    def buildProtocol(self, addr: Any) -> _TapSide:
        connection = TapConnection()
        self.connections.append(connection)
        connectProtocol(self.gateway, connection.far).addCallbacks(
            connection.gateway_connected, connection.gateway_failed
        )
        return connection.near


class Echoed(Protocol):
    """
    The application behind the C{netguard:} endpoint (or a local program using the tunnel):
    sends C{payload} at once and records what comes back; closes once it is all back when
    C{close_when_echoed} is set.

    @ivar events: C{connectionMade}, the data received, C{connectionLost}, in order.
    """

    transport: Any

    def __init__(self, payload: bytes, close_when_echoed: bool = True):
        self.payload = payload
        self.close_when_echoed = close_when_echoed
        self.received = b""
        self.events: list[object] = []
        self.echoed: Deferred[bytes] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.events.append("connectionMade")
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.events.append(data)
        self.received += data
        if len(self.received) >= len(self.payload) and not self.echoed.called:
            self.echoed.callback(self.received)
            if self.close_when_echoed:
                self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.events.append("connectionLost")
        self.closed.callback(None)


class RelaxedEchoClient(NGPClientProtocol):
    """
    netguard's client protocol with the public option C{require_channel_binding=False}:
    once C{echo} is open, sends C{payload} and collects the echo.
    """

    def __init__(self, running: RunningGateway, clock: Any, payload: bytes):
        super().__init__(running.credentials, "echo", clock=clock, require_channel_binding=False)
        self.payload = payload
        self.received = b""
        self.echoed: Deferred[bytes] = Deferred()

    def service_opened(self) -> None:
        self.transport.write(self.payload)

    def service_data(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.payload) and not self.echoed.called:
            self.echoed.callback(self.received)


if TYPE_CHECKING:
    _Base = unittest.TestCase
else:
    _Base = object


class _RealGateway(_Base):
    """
    The real gateway with a plain and a TLS listener, the recording tap in front of the plain
    one, and the gateway's log events.
    """

    timeout = 120

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ng-stun-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        cert, key = tls_certs.make_leaf("localhost")
        self.gateway_cert_file, gateway_key_file = tls_certs.write_identity(
            self.dir, "gateway", cert, key
        )
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.running = RunningGateway(
            self,
            GATEWAY_CONFIG.format(cert_file=self.gateway_cert_file, key_file=gateway_key_file),
            prefix="ng-stun-gw-",
        )
        self.plain_port = self.running.port(0)
        self.tls_port = self.running.port(1)
        # The client's own deadlines run on this clock, which nobody advances: nothing here
        # can time out because the machine is slow.
        self.clock = Clock()

    def client_endpoint(self, port: int, ca_file: str) -> NGPClientEndpoint:
        """
        The C{netguard:} endpoint with C{tls=1} to 127.0.0.1:C{port}, trusting C{ca_file}
        for the name C{localhost}: what C{netguard tunnel --tls} and a C{netguard:} endpoint
        string with C{tls=1:ca_file=...} build.
        """
        gateway = wrap_tls(
            reactor,
            TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=WAIT),
            {"tls": "1", "ca_file": ca_file},
            "localhost",
        )
        return NGPClientEndpoint(self.clock, gateway, self.running.credentials, "echo")

    @inlineCallbacks
    def start_tunnel(self, endpoint: NGPClientEndpoint, program: Protocol) -> Any:
        """
        C{netguard tunnel} on a loopback port through C{endpoint}, and C{program} connected
        to it as the local program.

        @return: the L{TunnelFactory}.
        """
        tunnel = TunnelFactory(reactor, endpoint)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(tunnel)
        self.addCleanup(port.stopListening)
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=WAIT),
            program,
        )
        return tunnel

    def named(self, name: str) -> list[dict[str, Any]]:
        """
        The log events called C{name}.
        """
        return [event for event in self.events if event.get("event") == name]

    def mechanisms_used(self) -> list[str]:
        """
        The SASL mechanism of each login the gateway accepted.
        """
        return [str(event.get("mechanism")) for event in self.named("auth.ok")]


class StunnelTerminatingTLSInFrontTests(_RealGateway, unittest.TestCase):
    """
    A real stunnel with its own certificate, which the client trusts, terminates the
    client's TLS in front of the gateway's plain listener.
    """

    def setUp(self) -> None:
        super().setUp()
        stunnel = need_peer("stunnel4", "stunnel4")
        cert, key = tls_certs.make_leaf("localhost")
        self.stunnel_cert_file, self.stunnel_key_file = tls_certs.write_identity(
            self.dir, "stunnel", cert, key
        )
        self.tap = RecordingTap(TCP4ClientEndpoint(reactor, "127.0.0.2", self.plain_port))
        tap_port = cast(Any, reactor).listenTCP(0, self.tap, interface="127.0.0.1")
        self.addCleanup(tap_port.stopListening)
        self.front = self.start_stunnel(stunnel, tap_port.getHost().port)
        self.addCleanup(self.running.idle)

    def start_stunnel(self, stunnel: str, back: int) -> int:
        """
        Start stunnel in the foreground on a free loopback port, forwarding to C{back};
        stopped by PID at cleanup.

        @return: the port the client connects to.
        """
        return start_listening_peer(
            self,
            "stunnel",
            self.dir,
            lambda front: STUNNEL_CONFIG.format(
                front=front,
                back=back,
                cert_file=self.stunnel_cert_file,
                key_file=self.stunnel_key_file,
            ),
            lambda path: [stunnel, path],
            WAIT,
        )

    @inlineCallbacks
    def assert_nothing_crossed(self) -> Any:
        """
        Exactly one connection crossed stunnel; the gateway's greeting (offering only
        C{SCRAM-SHA-256}) went through it to the client; not one byte came back towards the
        gateway (no SCRAM message, no local byte); the gateway logged no login attempt and
        closed the session in its greeted state.
        """
        yield wait_for(lambda: bool(self.tap.connections), timeout=WAIT)
        [connection] = self.tap.connections
        yield wait_for(lambda: connection.finished, timeout=WAIT)
        yield self.running.idle()
        self.assertTrue(connection.to_client.startswith(b"NETGUARD/1 "), connection.to_client)
        self.assertIn(b" AUTH=SCRAM-SHA-256 ", connection.to_client)
        self.assertEqual(bytes(connection.to_gateway), b"")
        self.assertEqual(self.named("auth.ok") + self.named("auth.fail"), [])
        [closed] = self.named("conn.close")
        self.assertEqual(closed["state"], "ready")

    @inlineCallbacks
    def test_endpoint_refuses_the_login_as_a_downgrade(self):
        """
        The C{netguard:} endpoint with C{tls=1}, trusting stunnel's certificate: the TLS
        handshake with stunnel succeeds, the greeting it relays offers no
        C{SCRAM-SHA-256-PLUS}, and C{connect()} fails with C{NGPProtocolError} (reason
        C{downgrade}) before any SCRAM message; the application is never connected.
        """
        app = Echoed(LOCAL_MARKER)
        connecting = connectProtocol(self.client_endpoint(self.front, self.stunnel_cert_file), app)
        failure = yield self.assertFailure(connecting, NGPProtocolError)
        self.assertEqual(failure.reason, "downgrade")
        self.assertIn("SCRAM-SHA-256-PLUS", str(failure))
        self.assertEqual(app.events, [])
        yield self.assert_nothing_crossed()

    @inlineCallbacks
    def test_tunnel_refuses_and_never_sends_a_local_byte(self):
        """
        C{netguard tunnel --tls} trusting stunnel's certificate: the local program's first
        bytes (sent at once) never cross stunnel; the local connection is closed with nothing
        received, and the tunnel logs C{tunnel.failed} naming the downgrade.
        """
        program = Echoed(LOCAL_MARKER)  # were it relayed, the echo would end it at once
        tunnel = yield self.start_tunnel(
            self.client_endpoint(self.front, self.stunnel_cert_file), program
        )
        yield program.closed
        self.assertEqual(program.received, b"")
        yield self.assert_nothing_crossed()
        self.assertEqual(tunnel.connections, set())
        [failed] = self.named("tunnel.failed")
        self.assertIn("downgrade refused", failed["reason"])
        self.assertIn("SCRAM-SHA-256-PLUS", failed["reason"])

    @inlineCallbacks
    def test_relaxed_client_logs_in_bound_to_nothing(self):
        """
        The control for the refusals (stunnel really forwards, and the refusal is the
        client's own check): a client built with the public C{require_channel_binding=False}
        goes on through stunnel, logs in with C{SCRAM-SHA-256} and opens C{echo}; its service
        bytes cross the interceptor's plain side in the clear. That is the login the default
        client refuses.
        """
        payload = b"SERVICE-BYTES-IN-THE-CLEAR-" + os.urandom(16).hex().encode()
        client = RelaxedEchoClient(self.running, self.clock, payload)
        yield connectProtocol(
            wrap_tls(
                reactor,
                TCP4ClientEndpoint(reactor, "127.0.0.1", self.front, timeout=WAIT),
                {"tls": "1", "ca_file": self.stunnel_cert_file},
                "localhost",
            ),
            client,
        )
        yield client.opened
        echoed = yield client.echoed
        self.assertEqual(echoed, payload)
        self.assertEqual(self.mechanisms_used(), ["SCRAM-SHA-256"])
        [connection] = self.tap.connections
        self.assertIn(b"AUTH SCRAM-SHA-256 ", connection.to_gateway)
        self.assertIn(payload, connection.to_gateway)
        client.transport.loseConnection()
        yield wait_for(lambda: connection.finished, timeout=WAIT)


class TLSPassedThroughToTheGatewayTests(_RealGateway, unittest.TestCase):
    """
    The controls: the same clients, with no interceptor, straight to the gateway's
    C{[[tls_listen]]} listener (trusting the gateway's certificate) log in with
    C{SCRAM-SHA-256-PLUS} and relay.
    """

    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(self.running.idle)

    @inlineCallbacks
    def test_endpoint_logs_in_with_channel_binding(self):
        """
        The C{netguard:} endpoint with C{tls=1}: the application is connected, its bytes are
        echoed, and the login used C{SCRAM-SHA-256-PLUS}.
        """
        payload = LOCAL_MARKER + os.urandom(4096)
        app = Echoed(payload)
        yield connectProtocol(self.client_endpoint(self.tls_port, self.gateway_cert_file), app)
        echoed = yield app.echoed
        self.assertEqual(echoed, payload)
        self.assertEqual(self.mechanisms_used(), ["SCRAM-SHA-256-PLUS"])

    @inlineCallbacks
    def test_tunnel_relays_with_channel_binding(self):
        """
        C{netguard tunnel --tls}: the local program's bytes are relayed and echoed, and the
        login used C{SCRAM-SHA-256-PLUS}.
        """
        payload = LOCAL_MARKER + os.urandom(4096)
        program = Echoed(payload)
        tunnel = yield self.start_tunnel(
            self.client_endpoint(self.tls_port, self.gateway_cert_file), program
        )
        echoed = yield program.echoed
        self.assertEqual(echoed, payload)
        self.assertEqual(self.mechanisms_used(), ["SCRAM-SHA-256-PLUS"])
        yield program.closed
        yield wait_for(lambda: not tunnel.connections, timeout=WAIT)
        self.assertEqual(self.named("tunnel.failed"), [])

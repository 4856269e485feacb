"""
The gateway on a TLS listener, end to end over loopback: verified and pinned clients,
SCRAM-SHA-256-PLUS with tls-server-end-point channel binding, a relayed authentication
through a man in the middle that fails, plain bytes on the TLS port, live certificate reload.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import tempfile
import time
import weakref

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent
from twisted.trial import unittest
from zope.interface import implementer

from netguard.client.endpoint import NGPClientEndpoint, wrap_tls
from netguard.client.protocol import NGPClientProtocol, NGPError
from netguard.tls import (
    TLSConfigError,
    TLSServerEndpoint,
    client_tls_options,
    load_server_context,
    public_key_pin,
)
from tests import tls_certs
from tests.integration.util import RunningGateway, wait_for


class Echoed(Protocol):
    """
    An application protocol behind the netguard: endpoint: sends, collects the echo.
    """

    def __init__(self, payload: bytes):
        self.payload = payload
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self):
        self.transport.write(self.payload)

    def dataReceived(self, data):
        self.received += data
        if len(self.received) >= len(self.payload) and not self.done.called:
            self.done.callback(self.received)
            self.transport.loseConnection()


class _Pipe(Protocol):
    """
    One side of the man in the middle: what it reads goes to the other side, verbatim.
    """

    def __init__(self):
        self.other: _Pipe | None = None
        self.pending: list[bytes] = []

    def dataReceived(self, data):
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)
        else:
            self.pending.append(data)

    def connectionLost(self, reason):
        if self.other is not None and self.other.transport is not None:
            self.other.transport.loseConnection()


class _MitmFactory(Factory):
    """
    Terminates the client's TLS with the attacker's certificate and relays the plaintext to
    the real gateway over a second TLS connection: the classic relay attack.
    """

    def __init__(self, gateway_endpoint):
        self.gateway_endpoint = gateway_endpoint
        self.connections: list[_Pipe] = []

    def buildProtocol(self, addr):
        near = _Pipe()
        far = _Pipe()
        near.other, far.other = far, near
        self.connections += [near, far]

        def connected(_):
            for chunk in near.pending:
                far.transport.write(chunk)
            near.pending = []

        connectProtocol(self.gateway_endpoint, far).addCallback(connected)
        return near


class TLSGatewayTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ngtls-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.cert, self.key = tls_certs.make_leaf("localhost", extra_names=("127.0.0.1",))
        self.cert_file, self.key_file = tls_certs.write_identity(
            self.dir, "gateway", self.cert, self.key
        )
        running = RunningGateway(
            self,
            'listen = ["tcp:0:interface=127.0.0.2"]\n'
            "[[tls_listen]]\n"
            'endpoint = "tcp:0:interface=127.0.0.1"\n'
            f'cert_file = "{self.cert_file}"\n'
            f'key_file = "{self.key_file}"\n'
            "[limits]\n"
            "handshake_timeout = 1.0\n"
            "greeting_delay = 0.05\n"
            "write_timeout = 600.0\n",
        )
        self.gateway = running.service
        self.plain_port = running.port(0)
        self.port = running.port(1)
        self.credentials = running.credentials
        self.pin = public_key_pin(self.cert)
        self.events: list[dict] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def tls_gateway(self, port=None, **options):
        plain = TCP4ClientEndpoint(reactor, "127.0.0.1", port or self.port)
        return wrap_tls(reactor, plain, {"tls": "1", **options}, default_hostname="localhost")

    def mechanisms_used(self):
        """
        The mechanism of each login, as the text log line names it (and the field agrees).
        """
        used = []
        for event in self.events:
            if event.get("event") == "auth.ok":
                named = re.search(r" with (\S+)\Z", formatEvent(event))
                self.assertIsNotNone(named, formatEvent(event))
                self.assertEqual(named.group(1), event.get("mechanism"))
                used.append(named.group(1))
        return used

    @inlineCallbacks
    def echo_through(self, gateway):
        payload = os.urandom(100_000)
        probe = Echoed(payload)
        yield connectProtocol(NGPClientEndpoint(reactor, gateway, self.credentials, "echo"), probe)
        received = yield probe.done
        self.assertEqual(received, payload)
        yield wait_for(lambda: not self.gateway.factory.sessions)

    @inlineCallbacks
    def test_pinned_client_uses_channel_binding(self):
        yield self.echo_through(self.tls_gateway(pin_sha256=self.pin))
        self.assertEqual(self.mechanisms_used(), ["SCRAM-SHA-256-PLUS"])

    @inlineCallbacks
    def test_ca_file_verification(self):
        yield self.echo_through(self.tls_gateway(ca_file=self.cert_file))
        self.assertEqual(self.mechanisms_used(), ["SCRAM-SHA-256-PLUS"])

    @inlineCallbacks
    def test_wrong_pin_never_authenticates(self):
        other, _ = tls_certs.make_leaf("localhost")
        probe = Echoed(b"x")
        endpoint = NGPClientEndpoint(
            reactor, self.tls_gateway(pin_sha256=public_key_pin(other)), self.credentials, "echo"
        )
        yield self.assertFailure(connectProtocol(endpoint, probe), Exception)
        self.assertEqual(self.mechanisms_used(), [])
        yield wait_for(lambda: not self.gateway.factory.sessions)

    @inlineCallbacks
    def test_relayed_authentication_fails(self):
        """
        A man in the middle with its own certificate (which the victim trusts: here by pin)
        relays the whole NGP/1 exchange to the real gateway: the victim binds SCRAM to the
        attacker's certificate, the gateway to its own, so the proof does not verify.
        """
        mitm_cert, mitm_key = tls_certs.make_leaf("localhost")
        mitm_cert_file, mitm_key_file = tls_certs.write_identity(
            self.dir, "mitm", mitm_cert, mitm_key
        )
        from netguard.tls import ServerTLSSettings

        mitm_tls = load_server_context(ServerTLSSettings(mitm_cert_file, mitm_key_file))
        upstream = wrapClientTLS(
            client_tls_options("localhost", ca_file=self.cert_file),
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.port),
        )
        mitm = _MitmFactory(upstream)
        mitm_port = yield TLSServerEndpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), mitm_tls, reactor
        ).listen(mitm)
        self.addCleanup(mitm_port.stopListening)
        victim = NGPClientProtocol(self.credentials, "echo", clock=reactor)
        yield connectProtocol(
            self.tls_gateway(port=mitm_port.getHost().port, pin_sha256=public_key_pin(mitm_cert)),
            victim,
        )
        failure = yield self.assertFailure(victim.opened, NGPError)
        self.assertEqual(failure.code, "AUTH_FAILED")
        self.assertEqual(self.mechanisms_used(), [])
        fails = [e for e in self.events if e.get("event") == "auth.fail"]
        self.assertTrue(fails)
        for pipe in mitm.connections:
            if pipe.transport is not None:
                pipe.transport.loseConnection()
        yield wait_for(lambda: not self.gateway.factory.sessions)

    @inlineCallbacks
    def test_control_relay_without_tls_succeeds(self):
        """
        The control for the test above: the same relay in front of a plain listener (no
        channel to bind to) lets the victim's authentication through. That is the attack
        channel binding stops.
        """
        mitm = _MitmFactory(TCP4ClientEndpoint(reactor, "127.0.0.2", self.plain_port))
        mitm_port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(mitm)
        self.addCleanup(mitm_port.stopListening)
        victim = NGPClientProtocol(self.credentials, "echo", clock=reactor)
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", mitm_port.getHost().port), victim
        )
        yield victim.opened
        self.assertEqual(self.mechanisms_used(), ["SCRAM-SHA-256"])
        victim.transport.loseConnection()
        yield wait_for(lambda: not self.gateway.factory.sessions)

    @inlineCallbacks
    def test_plain_bytes_on_tls_port_close_cleanly(self):
        said = Deferred()

        class Plain(Protocol):
            data = b""

            def connectionMade(self):
                self.transport.write(b"PING\r\nGET / HTTP/1.0\r\n\r\n")

            def dataReceived(self, data):
                self.data += data

            def connectionLost(self, reason):
                said.callback(self.data)

        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), Plain())
        answer = yield said
        self.assertNotIn(b"NETGUARD/1", answer)
        self.assertNotIn(b"PONG", answer)
        yield wait_for(lambda: not self.gateway.factory.sessions)
        self.assertFalse([e for e in self.events if e.get("log_failure") is not None])
        [failed] = [e for e in self.events if e.get("event") == "tls.handshake_failed"]
        self.assertTrue(failed["why"], failed)

    @inlineCallbacks
    def test_reload_serves_the_new_certificate_to_new_connections(self):
        new_cert, new_key = tls_certs.make_leaf("localhost")
        tls_certs.write_identity(self.dir, "gateway", new_cert, new_key)
        self.gateway.tls_identities[0].reload()
        yield self.echo_through(self.tls_gateway(pin_sha256=public_key_pin(new_cert)))
        old = NGPClientEndpoint(
            reactor, self.tls_gateway(pin_sha256=self.pin), self.credentials, "echo"
        )
        yield self.assertFailure(connectProtocol(old, Echoed(b"x")), Exception)
        yield wait_for(lambda: not self.gateway.factory.sessions)

    @inlineCallbacks
    def test_half_close_over_tls_keeps_the_answer(self):
        # Found by a review: a client that sent its request and half-closed got nothing back
        # over TLS (Twisted's TLS has no half-close), while plain TCP worked.
        payload = os.urandom(300_000)
        probe = _HalfCloser(payload)
        endpoint = NGPClientEndpoint(
            reactor, self.tls_gateway(pin_sha256=self.pin), self.credentials, "echo"
        )
        yield connectProtocol(endpoint, probe)
        yield probe.done
        reason = probe.reason
        self.assertEqual(probe.received, payload)
        self.assertTrue(probe.read_closed)  # the gateway passed our EOF back after the data
        self.assertIsInstance(reason.value, ConnectionDone)
        yield wait_for(lambda: not self.gateway.factory.sessions)

    def slow_client_hello(self, pause: float) -> bytes:
        """
        Python's own TLS client, whose ClientHello arrives C{pause} seconds after the TCP
        connection (a slow or lossy link): returns the first line the gateway sends.
        """
        context = ssl.create_default_context(cafile=self.cert_file)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            time.sleep(pause)
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                data = b""
                while not data.endswith(b"\r\n") and len(data) < 1024:
                    chunk = tls.recv(1024)
                    if not chunk:
                        break
                    data += chunk
                return data

    @inlineCallbacks
    def test_client_hello_after_the_greeting_delay(self):
        # The greeting delay (0.05 s here) passes before the ClientHello arrives. The greeting
        # must wait for the handshake, and the gateway must go on reading: once it stopped,
        # and such clients hung until the handshake deadline.
        greeting = yield deferToThread(self.slow_client_hello, 0.3)
        self.assertTrue(greeting.startswith(b"NETGUARD/1 "), greeting)
        self.assertIn(b"SCRAM-SHA-256-PLUS", greeting)
        yield wait_for(lambda: not self.gateway.factory.sessions)

    @inlineCallbacks
    def test_shutdown_drops_the_key(self):
        yield self.echo_through(self.tls_gateway(pin_sha256=self.pin))
        identity = self.gateway.tls_identities[0]
        context = weakref.ref(identity.context)
        yield self.gateway.stopService()
        self.assertIsNone(context())  # no connection, listener or service holds it any more
        self.assertRaises(TLSConfigError, lambda: identity.context)
        [done] = [e for e in self.events if e.get("event") == "shutdown.done"]
        self.assertEqual(done["tls_keys_dropped"], 1)

    # A TLS handshake that never completes is cut at the handshake deadline (1 s here), not
    # after the write timeout (600 s here): no reply can reach such a peer.

    @inlineCallbacks
    def stall(self, first: bytes):
        peer = _Silent(first)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), peer)
        yield wait_for(lambda: peer.closed.called, timeout=30)
        yield wait_for(lambda: not self.gateway.factory.sessions)

    def test_silent_client_cut_at_deadline(self):
        return self.stall(b"")

    def test_truncated_client_hello_cut_at_deadline(self):
        # A TLS record header announcing 512 bytes of ClientHello, then only 4 of them.
        return self.stall(bytes.fromhex("160301020001000200"))


@implementer(IHalfCloseableProtocol)
class _HalfCloser(Protocol):
    """
    Sends everything, half-closes, and reads the echo to the end.
    """

    def __init__(self, payload: bytes):
        self.payload = payload
        self.received = b""
        self.read_closed = False
        self.done: Deferred = Deferred()

    def connectionMade(self):
        self.transport.write(self.payload)
        self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        self.read_closed = True
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


class _Silent(Protocol):
    def __init__(self, first: bytes = b""):
        self.first = first
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self):
        if self.first:
            self.transport.write(self.first)

    def connectionLost(self, reason):
        self.closed.callback(None)


class SilentRefusalOnTLSTests(unittest.TestCase):
    """
    With C{reject_mode = "close"} a refused connection on a TLS listener is closed before any
    TLS work: no handshake, no traceback (Twisted's TLS factory used to wrap the missing
    protocol and fail).
    """

    timeout = 30

    def test_refused_before_the_handshake(self):
        directory = tempfile.mkdtemp(prefix="ngtls-", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        cert, key = tls_certs.make_leaf("localhost")
        cert_file, key_file = tls_certs.write_identity(directory, "gateway", cert, key)
        running = RunningGateway(
            self,
            "listen = []\n"
            "[[tls_listen]]\n"
            'endpoint = "tcp:0:interface=127.0.0.1"\n'
            f'cert_file = "{cert_file}"\nkey_file = "{key_file}"\n'
            '[admission]\nreject_mode = "close"\nper_source_max = 1\n',
        )
        events: list[dict] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        port = running.port()
        return deferToThread(self.two_clients, port).addCallback(self.check, running, events)

    def two_clients(self, port):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), timeout=10) as first:
            held = context.wrap_socket(first, server_hostname="localhost")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
                second.settimeout(5)
                refused = second.recv(100)  # closed at once, no ServerHello
            held.close()
        return refused

    def check(self, refused, running, events):
        self.assertEqual(refused, b"")
        self.assertFalse([e for e in events if e.get("log_failure") is not None])
        self.assertIn("per-source-cap", [e.get("reason") for e in events])
        return running.idle()

"""
The client side of mutual authentication, over real loopback sockets: C{netguard tunnel}
and the C{netguard:} endpoint against hostile gateways written for these tests (forged
server signature, stripped channel-binding offer on real TLS, a server that is not a
gateway, replies out of order or oversized, silence). Each must fail closed: a typed error
(and for the tunnel a C{tunnel.failed} event) naming what was wrong, no byte of the local
program reaching the hostile server, no byte of the hostile server reaching the local
program, and the local connection closed. Last, a hostile relay that strips the PLUS offer
in front of the real gateway on TLS shows both defences against that downgrade.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from typing import Any

from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import reactor, ssl
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from netguard.auth.scram import (
    AuthFailed,
    ServerExchange,
    decode_wire,
    encode_wire,
)
from netguard.auth.users import UserStore, make_record
from netguard.client.endpoint import NGPClientEndpoint, wrap_tls
from netguard.client.protocol import (
    CLIENT_LIMITS,
    OPEN_TIMEOUT,
    Credentials,
    NGPProtocolError,
)
from netguard.client.tunnel import TunnelFactory
from netguard.tls import TLS_SERVER_END_POINT, tls_server_end_point
from tests import tls_certs
from tests.integration.util import wait_for

PASSWORD = "hostile-test password"
CREDENTIALS = Credentials("alice", PASSWORD)
STORE = UserStore.from_records([make_record("alice", PASSWORD)])

#: What the local program sends first: it must never reach a hostile gateway.
LOCAL_MARKER = b"LOCAL-PROGRAM-SECRET-REQUEST\r\n"
#: What a hostile gateway sends as "service bytes": it must never reach the local program.
HOSTILE_JUNK = b"HOSTILE-JUNK-" * 64


def flip_signature(ok_line: bytes) -> bytes:
    """
    The same C{OK <server-final>} line with one bit of the server signature flipped.
    """
    message = decode_wire(ok_line[3:])
    signature = bytearray(base64.b64decode(message[2:]))
    signature[5] ^= 0x80
    return b"OK " + encode_wire("v=" + base64.b64encode(bytes(signature)).decode())


class HostileGatewayProtocol(LineReceiver):
    """
    A hostile NGP/1 gateway written for these tests. It runs the real SCRAM server logic
    (L{ServerExchange}, holding the user's verifier) honestly up to the step its C{mode}
    names, and cheats there (L{cheat}); from then on it only records. In C{honest} mode (the
    control) it logs in, answers C{OK OPEN} with junk "service bytes" and records the raw
    bytes it is sent.

    @ivar received: every byte the client sent.
    @ivar after_cheat: the bytes the client sent after the cheat (L{None} before it).
    @ivar lines: the lines the client sent in the line phase.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, factory: HostileGatewayFactory):
        self.factory = factory
        self.mode = factory.mode
        self.received = b""
        self.after_cheat: bytes | None = None
        self.lines: list[bytes] = []
        self.exchange: ServerExchange | None = None
        self.lost: Deferred[None] = Deferred()

    # -- recording ---------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.after_cheat is not None:
            self.after_cheat += data
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        """Raw bytes are recorded by L{dataReceived}."""

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    def cheat(self, data: bytes = b"") -> None:
        """
        The failure point: from here on the client must send nothing.
        """
        self.after_cheat = b""
        if data:
            self.transport.write(data)

    # -- the script --------------------------------------------------------------------------

    def greeting(self, plus: bool) -> bytes:
        mechanisms = "SCRAM-SHA-256,SCRAM-SHA-256-PLUS" if plus else "SCRAM-SHA-256"
        return f"NETGUARD/1 hostile AUTH={mechanisms} MAXLINE=1024\r\n".encode()

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        mode = self.mode
        if mode == "silent":
            self.cheat()
        elif mode == "not-a-gateway":
            self.cheat(b"SSH-2.0-OpenSSH_9.6p1 Debian-4\r\n" + HOSTILE_JUNK)
        elif mode == "long-greeting":
            self.cheat(b"NETGUARD/1 " + b"n" * 4000 + b" AUTH=SCRAM-SHA-256\r\n")
        elif mode == "endless-line":
            self.cheat(b"NETGUARD/1 " + b"n" * 65536)
        elif mode == "strip-plus":
            # Speaks TLS, but hides the binding mechanism; the rest of the login is honest
            # (so a client that went on would be relayed).
            self.cheat(self.greeting(plus=False))
        else:
            self.transport.write(self.greeting(plus=self.factory.binding is not None))

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        if self.after_cheat is not None and self.mode != "strip-plus":
            return
        verb, _, argument = line.partition(b" ")
        if verb == b"AUTH":
            self.on_auth(argument)
        elif verb == b"CONT":
            self.on_cont(argument)
        elif verb == b"OPEN":
            self.on_open(argument)

    def on_auth(self, argument: bytes) -> None:
        mode = self.mode
        mechanism, _, token = argument.partition(b" ")
        binding = self.factory.binding if mechanism.endswith(b"-PLUS") else None
        self.exchange = ServerExchange(STORE, mechanism.decode(), channel_binding=binding)
        cont = b"CONT " + encode_wire(self.exchange.first(decode_wire(token))) + b"\r\n"
        if mode == "ok-before-cont":
            fake = "v=" + base64.b64encode(os.urandom(32)).decode()
            self.cheat(b"OK " + encode_wire(fake) + b"\r\n")
        elif mode == "second-greeting":
            self.cheat(self.greeting(plus=False))
        elif mode == "huge-token":
            self.cheat(b"CONT " + base64.b64encode(os.urandom(96 * 1024)) + b"\r\n")
        elif mode == "silent-after-auth":
            self.cheat()
        else:
            self.transport.write(cont)

    def on_cont(self, argument: bytes) -> None:
        assert self.exchange is not None
        ok = b"OK " + encode_wire(self.exchange.final(decode_wire(argument)))
        if self.mode == "forged-signature":
            # The rest of a session pipelined after it: nothing of it may be used.
            self.cheat(flip_signature(ok) + b"\r\nOK OPEN echo\r\n" + HOSTILE_JUNK)
        elif self.mode == "open-before-ok":
            self.cheat(b"OK OPEN echo\r\n" + HOSTILE_JUNK)
        else:
            self.transport.write(ok + b"\r\n")

    def on_open(self, argument: bytes) -> None:
        if self.mode == "open-other-service":
            self.cheat(b"OK OPEN admin\r\n" + HOSTILE_JUNK)
        elif self.mode == "silent-after-open":
            self.cheat()
        else:
            self.setRawMode()
            self.transport.write(b"OK OPEN " + argument + b"\r\n" + HOSTILE_JUNK)


class HostileGatewayFactory(Factory):
    """
    Builds L{HostileGatewayProtocol}s in one C{mode}; C{binding} is the channel binding of
    its TLS certificate (L{None} on plain TCP).
    """

    noisy = False

    def __init__(self, mode: str, binding: tuple[str, bytes] | None = None):
        self.mode = mode
        self.binding = binding
        self.connections: list[HostileGatewayProtocol] = []

    def buildProtocol(self, addr: Any) -> HostileGatewayProtocol:
        return HostileGatewayProtocol(self)


class AppProbe(Protocol):
    """
    The application protocol behind the C{netguard:} endpoint: records what it was shown.
    """

    def __init__(self) -> None:
        self.events: list[object] = []

    def connectionMade(self) -> None:
        self.events.append("connectionMade")
        self.transport.write(LOCAL_MARKER)

    def dataReceived(self, data: bytes) -> None:
        self.events.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.events.append("connectionLost")


class LocalProgram(Protocol):
    """
    A local program using the tunnel: sends its request at once, records the answer.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(LOCAL_MARKER)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


#: For each silent mode: (the hostile server's progress to wait for, seconds to advance).
SILENCES = {
    "silent": (lambda h: True, CLIENT_LIMITS.handshake_timeout),
    "silent-after-auth": (lambda h: bool(h.lines), CLIENT_LIMITS.handshake_timeout),
    "silent-after-open": (lambda h: b"OPEN echo" in h.lines, OPEN_TIMEOUT),
}


class HostileGatewayHarness:
    """
    Runs one client kind against one hostile gateway and checks that it failed closed.
    Mixed into the test cases below; C{tls} says whether the hostile gateway speaks TLS.
    """

    timeout = 60
    tls = False

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        # The client's deadlines run on this clock: they fire when a test advances it,
        # never because the machine is slow.
        self.clock = Clock()

    @inlineCallbacks
    def start_hostile(self, mode: str):
        """
        Listen on 127.0.0.1 port 0 with a hostile gateway; return the gateway endpoint the
        client should use.
        """
        if not self.tls:
            factory = HostileGatewayFactory(mode)
            port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
            self.addCleanup(port.stopListening)
            self.hostile = factory
            return TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        directory = tempfile.mkdtemp(prefix="nghostile-", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        cert, key = tls_certs.make_leaf("localhost", extra_names=("127.0.0.1",))
        cert_file, _ = tls_certs.write_identity(directory, "hostile", cert, key)
        der = cert.public_bytes(serialization.Encoding.DER)
        factory = HostileGatewayFactory(mode, (TLS_SERVER_END_POINT, tls_server_end_point(der)))
        options = ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(key),
            certificate=crypto.X509.from_cryptography(cert),
        )
        port = yield SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        self.hostile = factory
        plain = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        # The client trusts this certificate (as a victim of a misissued or stolen one would).
        return wrap_tls(reactor, plain, {"tls": "1", "ca_file": cert_file}, "localhost")

    def endpoint(self, gateway: Any) -> NGPClientEndpoint:
        return NGPClientEndpoint(self.clock, gateway, CREDENTIALS, "echo")

    @inlineCallbacks
    def let_deadline_pass(self, mode: str):
        """
        For a silent mode: once the hostile server got as far as it will, advance the
        client's clock past the deadline that applies.
        """
        if mode not in SILENCES:
            return
        progress, seconds = SILENCES[mode]
        yield wait_for(lambda: any(progress(h) for h in self.hostile.connections))
        self.clock.advance(seconds)

    @inlineCallbacks
    def assert_hostile_got_nothing_after_cheat(self):
        """
        The client closed the hostile connection, and sent nothing after the cheat (in
        particular, not one byte of the local program).
        """
        yield wait_for(lambda: bool(self.hostile.connections), timeout=20)
        for hostile in self.hostile.connections:
            yield wait_for(lambda h=hostile: h.lost.called, timeout=20)
            self.assertEqual(hostile.after_cheat, b"", hostile.lines)
            self.assertNotIn(LOCAL_MARKER, hostile.received)

    def check(self, mode: str, error: type[Exception], reason: str | None, words: str) -> Any:
        """
        Run this class's client against C{mode}; it must fail with C{error} (of C{reason})
        whose message contains C{words}.
        """
        raise NotImplementedError

    # -- the cases ---------------------------------------------------------------------------

    def test_forged_server_signature(self):
        """
        The server's signature has one bit flipped (and an C{OK OPEN} with service bytes
        follows at once): refused as an impostor before OPEN.
        """
        return self.check("forged-signature", AuthFailed, None, "did not prove")

    def test_not_a_gateway(self):
        """
        An SSH banner instead of a greeting: C{not-a-gateway}.
        """
        return self.check("not-a-gateway", NGPProtocolError, "not-a-gateway", "SSH-2.0")

    def test_ok_before_cont(self):
        """
        C{OK <signature>} while the client waits for CONT.
        """
        return self.check("ok-before-cont", NGPProtocolError, "unexpected-reply", "CONT")

    def test_ok_open_before_ok(self):
        """
        C{OK OPEN echo} and service bytes instead of the server signature.
        """
        return self.check(
            "open-before-ok", NGPProtocolError, "unexpected-reply", "server signature"
        )

    def test_second_greeting(self):
        """
        A second greeting instead of CONT.
        """
        return self.check("second-greeting", NGPProtocolError, "unexpected-reply", "NETGUARD/1")

    def test_ok_open_for_another_service(self):
        """
        After an honest login, C{OK OPEN admin} (and its bytes) when C{echo} was asked for.
        """
        return self.check(
            "open-other-service", NGPProtocolError, "unexpected-reply", "OK OPEN admin"
        )

    def test_greeting_longer_than_the_bound(self):
        """
        A 4 KiB greeting line: C{line-too-long}.
        """
        return self.check("long-greeting", NGPProtocolError, "line-too-long", "1024")

    def test_endless_line(self):
        """
        64 KiB without a newline: cut at the line bound, not buffered.
        """
        return self.check("endless-line", NGPProtocolError, "line-too-long", "1024")

    def test_huge_base64_token(self):
        """
        A CONT with a 128 KiB base64 token: cut at the line bound.
        """
        return self.check("huge-token", NGPProtocolError, "line-too-long", "CONT")

    def test_greeting_never_comes(self):
        """
        A server that accepts and says nothing: C{handshake-timeout} (client clock).
        """
        return self.check("silent", NGPProtocolError, "handshake-timeout", "the greeting")

    def test_cont_never_comes(self):
        """
        A server that greets and never answers AUTH: C{handshake-timeout} waiting for CONT.
        """
        return self.check("silent-after-auth", NGPProtocolError, "handshake-timeout", "CONT")

    def test_open_answer_never_comes(self):
        """
        A server that logs in honestly and never answers OPEN: C{open-timeout}.
        """
        return self.check("silent-after-open", NGPProtocolError, "open-timeout", "OPEN echo")


class EndpointRunner(HostileGatewayHarness):
    """
    The client is the C{netguard:} endpoint (L{NGPClientEndpoint}).
    """

    @inlineCallbacks
    def check(self, mode: str, error: type[Exception], reason: str | None, words: str):
        gateway = yield self.start_hostile(mode)
        app = AppProbe()
        connecting = connectProtocol(self.endpoint(gateway), app)
        yield self.let_deadline_pass(mode)
        failure = yield self.assertFailure(connecting, error)
        if reason is not None:
            self.assertEqual(failure.reason, reason, str(failure))
        self.assertIn(words, str(failure))
        yield self.assert_hostile_got_nothing_after_cheat()
        self.assertEqual(app.events, [])

    @inlineCallbacks
    def test_control_honest_script_reaches_the_application(self):
        """
        The control: the same script, honest, opens the service and the harness sees it
        (the service bytes reach the application, its bytes reach the server).
        """
        gateway = yield self.start_hostile("honest")
        app = AppProbe()
        yield connectProtocol(self.endpoint(gateway), app)
        [hostile] = self.hostile.connections
        yield wait_for(lambda: LOCAL_MARKER in hostile.received)
        yield wait_for(
            lambda: b"".join(e for e in app.events if isinstance(e, bytes)) == HOSTILE_JUNK
        )
        app.transport.loseConnection()
        yield hostile.lost

    @inlineCallbacks
    def test_cancelled_connect_closes_the_gateway_connection(self):
        """
        Cancelling C{connect()} while the gateway has not greeted closes the gateway
        connection (it is not left to finish a login nobody needs), and the application is
        never connected.
        """
        gateway = yield self.start_hostile("silent")
        app = AppProbe()
        connecting = connectProtocol(self.endpoint(gateway), app)
        yield wait_for(lambda: bool(self.hostile.connections))
        [hostile] = self.hostile.connections
        connecting.cancel()
        yield self.assertFailure(connecting, CancelledError)
        yield wait_for(lambda: hostile.lost.called, timeout=20)
        self.assertEqual(hostile.received, b"")
        self.assertEqual(app.events, [])


class TunnelRunner(HostileGatewayHarness):
    """
    The client is C{netguard tunnel} (L{TunnelFactory}) with a real local program.
    """

    @inlineCallbacks
    def start_tunnel(self, mode: str):
        gateway = yield self.start_hostile(mode)
        tunnel = TunnelFactory(reactor, self.endpoint(gateway))
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(tunnel)
        self.addCleanup(port.stopListening)
        local = LocalProgram()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), local)
        return tunnel, local

    @inlineCallbacks
    def check(self, mode: str, error: type[Exception], reason: str | None, words: str):
        tunnel, local = yield self.start_tunnel(mode)
        yield self.let_deadline_pass(mode)
        yield local.closed
        self.assertEqual(local.received, b"")
        yield self.assert_hostile_got_nothing_after_cheat()
        self.assertEqual(tunnel.connections, set())
        [failed] = [e for e in self.events if e.get("event") == "tunnel.failed"]
        self.assertIn(words, failed["reason"])

    @inlineCallbacks
    def test_control_honest_script_is_relayed(self):
        """
        The control: the same script, honest, is relayed both ways (so the assertions above
        would see a relay).
        """
        tunnel, local = yield self.start_tunnel("honest")
        yield wait_for(lambda: bool(self.hostile.connections))
        [hostile] = self.hostile.connections
        yield wait_for(lambda: LOCAL_MARKER in hostile.received)
        yield wait_for(lambda: local.received == HOSTILE_JUNK)
        hostile.transport.loseConnection()
        yield local.closed
        yield wait_for(lambda: not tunnel.connections)


class TLSCases:
    """
    The TLS-only cases: the hostile gateway speaks real TLS with a certificate the client
    trusts.
    """

    tls = True

    def test_stripped_plus_offer(self):
        """
        On TLS the greeting offers only C{SCRAM-SHA-256} (C{-PLUS} stripped): refused as a
        downgrade before any SCRAM message; the rest of the hostile login would be honest.
        """
        return self.check("strip-plus", NGPProtocolError, "downgrade", "SCRAM-SHA-256-PLUS")


class EndpointAgainstHostileGatewayTests(EndpointRunner, unittest.TestCase):
    """
    The C{netguard:} endpoint against hostile gateways on plain TCP.
    """


class TunnelAgainstHostileGatewayTests(TunnelRunner, unittest.TestCase):
    """
    C{netguard tunnel} against hostile gateways on plain TCP.
    """


class EndpointAgainstHostileTLSGatewayTests(TLSCases, EndpointRunner, unittest.TestCase):
    """
    The C{netguard:} endpoint (C{tls=1}) against hostile gateways on real TLS; the forged
    signature here is made for a C{SCRAM-SHA-256-PLUS} login.
    """


class TunnelAgainstHostileTLSGatewayTests(TLSCases, TunnelRunner, unittest.TestCase):
    """
    C{netguard tunnel --tls} against hostile gateways on real TLS.
    """


class _StrippingPipe(Protocol):
    """
    One side of L{HostileStrippingRelayFactory}: passes bytes on to the other side; the
    gateway side removes C{,SCRAM-SHA-256-PLUS} from the first chunk (the greeting).
    """

    def __init__(self, strip: bool):
        self.strip = strip
        self.other: _StrippingPipe | None = None
        self.pending: list[bytes] = []
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.strip:
            self.strip = False
            data = data.replace(b",SCRAM-SHA-256-PLUS", b"")
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)
        else:
            self.pending.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.loseConnection()


class HostileStrippingRelayFactory(Factory):
    """
    A hostile man in the middle written for these tests: terminates the client's TLS with a
    certificate the client trusts, relays to the real gateway over TLS, and strips
    C{SCRAM-SHA-256-PLUS} from the greeting it passes on.
    """

    noisy = False

    def __init__(self, upstream: Any):
        self.upstream = upstream
        self.pipes: list[_StrippingPipe] = []

    def buildProtocol(self, addr: Any) -> _StrippingPipe:
        near, far = _StrippingPipe(False), _StrippingPipe(True)
        near.other, far.other = far, near
        self.pipes += [near, far]

        def connected(_: Any) -> None:
            for chunk in near.pending:
                far.transport.write(chunk)
            near.pending = []

        connectProtocol(self.upstream, far).addCallback(connected)
        return near


class StrippedOfferToTheRealGatewayTests(unittest.TestCase):
    """
    Both defences against a stripped PLUS offer, end to end through a hostile relay to the
    real gateway on a TLS listener: the client refuses the greeting; a client told to go on
    still flags its login C{y}, and the real gateway refuses it.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        from netguard.tls import ServerTLSSettings, TLSServerEndpoint, load_server_context
        from tests.integration.util import RunningGateway

        self.dir = tempfile.mkdtemp(prefix="ngstrip-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        cert, key = tls_certs.make_leaf("localhost")
        cert_file, key_file = tls_certs.write_identity(self.dir, "gateway", cert, key)
        running = RunningGateway(
            self,
            'listen = []\n[[tls_listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
            f'cert_file = "{cert_file}"\nkey_file = "{key_file}"\n',
        )
        self.running = running
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        upstream = wrap_tls(
            reactor,
            TCP4ClientEndpoint(reactor, "127.0.0.1", running.port(0)),
            {"tls": "1", "ca_file": cert_file},
            "localhost",
        )
        mitm_cert, mitm_key = tls_certs.make_leaf("localhost")
        mitm_cert_file, mitm_key_file = tls_certs.write_identity(
            self.dir, "mitm", mitm_cert, mitm_key
        )
        self.relay = HostileStrippingRelayFactory(upstream)
        port = yield TLSServerEndpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            load_server_context(ServerTLSSettings(mitm_cert_file, mitm_key_file)),
            reactor,
        ).listen(self.relay)
        self.addCleanup(port.stopListening)
        self.victim_gateway = wrap_tls(
            reactor,
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
            {"tls": "1", "ca_file": mitm_cert_file},
            "localhost",
        )

    @inlineCallbacks
    def finish(self):
        for pipe in self.relay.pipes:
            if pipe.transport is not None:
                pipe.transport.loseConnection()
        yield self.running.idle()

    @inlineCallbacks
    def test_client_refuses_the_stripped_greeting(self):
        """
        The default client sees the stripped greeting and refuses (C{downgrade}); the real
        gateway never receives an AUTH line.
        """
        from netguard.client.protocol import NGPClientProtocol

        victim = NGPClientProtocol(CREDENTIALS, "echo", clock=reactor)
        yield connectProtocol(self.victim_gateway, victim)
        failure = yield self.assertFailure(victim.opened, NGPProtocolError)
        self.assertEqual(failure.reason, "downgrade")
        yield wait_for(lambda: len(self.relay.pipes) == 2 and self.relay.pipes[1].received)
        self.assertNotIn(b"AUTH", self.relay.pipes[0].received)
        yield self.finish()

    @inlineCallbacks
    def test_client_told_to_go_on_is_refused_by_the_gateway(self):
        """
        With C{require_channel_binding=False} the client goes on with C{SCRAM-SHA-256} and gs2
        flag C{y}; the real gateway, which did offer PLUS, refuses it (C{AUTH_FAILED}) and
        nobody is logged in. A client that dropped its binding data would be let in.
        """
        from netguard.client.protocol import NGPClientProtocol, NGPError

        victim = NGPClientProtocol(
            self.running.credentials, "echo", clock=reactor, require_channel_binding=False
        )
        yield connectProtocol(self.victim_gateway, victim)
        failure = yield self.assertFailure(victim.opened, NGPError)
        self.assertEqual(failure.code, "AUTH_FAILED")
        self.assertEqual([e for e in self.events if e.get("event") == "auth.ok"], [])
        self.assertTrue([e for e in self.events if e.get("event") == "auth.fail"])
        self.assertIn(b"AUTH SCRAM-SHA-256 ", self.relay.pipes[0].received)
        yield self.finish()

"""
Returning-client tickets from the client's side, over real loopback sockets: the C{netguard:}
endpoints and C{netguard tunnel} (in-process and as its own process) against the real
gateway (a ticket issued after the first login, presented by the next connection, which the
gateway greets at once: C{ticket.accepted}; a revoked or replayed one refused, then served
without), and against hostile gateways written for these tests (an oversized or garbage
ticket, a refused ticket).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Factory
from twisted.logger import globalLogPublisher
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

import netguard
from netguard.auth.scram import ServerExchange, decode_wire, encode_wire
from netguard.auth.users import UserStore, make_record
from netguard.client.endpoint import NGPClientEndpoint, wrap_tls
from netguard.client.mux_endpoint import MuxClientEndpoint
from netguard.client.protocol import Credentials, NGPError
from netguard.client.tickets import MAX_TOKEN, TicketOffer, TicketStore
from netguard.client.tunnel import TunnelFactory
from netguard.ops.reload import Reloader
from tests import tls_certs
from tests.integration.util import EchoProbe, RunningGateway, stop_process, wait_for

PASSWORD = "ticket-test password"
CREDENTIALS = Credentials("alice", PASSWORD)
USERS = UserStore.from_records([make_record("alice", PASSWORD)])

#: A well-formed token, as the hostile gateway hands it out when it is honest about it.
GOOD_TOKEN = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo"


class HostileTicketGatewayProtocol(LineReceiver):
    """
    A hostile gateway written for these tests: the real SCRAM server logic (so the client's
    signature check passes), C{TICKETS=1} in its greeting, and, per connection, a script
    from its factory: C{greet} (greet at once; answer C{TICKET} with the factory's
    C{ticket_answer}), C{refuse} (wait for the client's first line, record it, answer
    C{ERR BAD_TICKET} and close) or C{greet-refuse} (greet at once, answer the first line
    with C{ERR BAD_TICKET} and close). After C{OK OPEN echo} it echoes raw bytes.

    @ivar first_line: the first line the client sent.
    @ivar lines: every line the client sent.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 1 << 16

    def __init__(self, factory: HostileTicketGateway, script: str) -> None:
        self.factory = factory
        self.script = script
        self.lines: list[bytes] = []
        self.exchange: ServerExchange | None = None

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        if self.script in ("greet", "greet-refuse"):
            self.greet()

    def greet(self) -> None:
        self.sendLine(b"NETGUARD/1 hostile AUTH=SCRAM-SHA-256 MAXLINE=1024 TICKETS=1")

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        if self.script in ("refuse", "greet-refuse") and len(self.lines) == 1:
            self.sendLine(b"ERR BAD_TICKET replayed")
            self.transport.loseConnection()
            return
        verb, _, rest = line.partition(b" ")
        if verb == b"AUTH":
            mechanism, _, token = rest.partition(b" ")
            self.exchange = ServerExchange(USERS, mechanism.decode())
            self.sendLine(b"CONT " + encode_wire(self.exchange.first(decode_wire(token))))
        elif verb == b"CONT" and self.exchange is not None:
            self.sendLine(b"OK " + encode_wire(self.exchange.final(decode_wire(rest))))
        elif verb == b"TICKET":
            self.sendLine(self.factory.ticket_answer)
        elif line == b"OPEN echo":
            self.sendLine(b"OK OPEN echo")
            self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    @property
    def first_line(self) -> bytes | None:
        return self.lines[0] if self.lines else None


class HostileTicketGateway(Factory):
    """
    Builds L{HostileTicketGatewayProtocol}s, the Nth with C{scripts[N]} (C{greet} once the
    list is used up).

    @ivar connections: the protocols, in order.
    """

    def __init__(self, ticket_answer: bytes, scripts: list[str] | None = None) -> None:
        self.ticket_answer = ticket_answer
        self.scripts = list(scripts or [])
        self.connections: list[HostileTicketGatewayProtocol] = []

    def buildProtocol(self, addr: Any) -> HostileTicketGatewayProtocol:
        script = self.scripts.pop(0) if self.scripts else "greet"
        protocol = HostileTicketGatewayProtocol(self, script)
        protocol.factory = self
        return protocol


@inlineCallbacks
def echo_through(test: Any, endpoint: Any, payload: bytes = b"ping") -> Any:
    """
    Connect through C{endpoint} to the echo service and check that C{payload} comes back.
    """
    app = EchoProbe(payload)
    yield connectProtocol(endpoint, app)
    received = yield app.done
    test.assertEqual(received, payload)


class HostileTicketGatewayTests(unittest.TestCase):
    """
    The C{netguard:} endpoint (one connection per connect) against hostile ticket gateways
    over real sockets.
    """

    timeout = 60

    @inlineCallbacks
    def start(self, factory: HostileTicketGateway) -> Any:
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        self.store = TicketStore()
        return NGPClientEndpoint(
            reactor,
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
            CREDENTIALS,
            "echo",
            tickets=self.store,
        )

    def echo(self, endpoint: NGPClientEndpoint, payload: bytes = b"ping") -> Any:
        return echo_through(self, endpoint, payload)

    @inlineCallbacks
    def test_oversized_ticket_ignored(self) -> None:
        """
        A hostile gateway's 513-character token: the service still opens and echoes, no
        ticket is kept, and the next connection presents none (its first line is C{AUTH}).
        """
        gateway = HostileTicketGateway(b"OK TICKET " + b"A" * (MAX_TOKEN + 1) + b" LIFETIME=60")
        endpoint = yield self.start(gateway)
        yield self.echo(endpoint)
        self.assertEqual(len(self.store), 0)
        yield self.echo(endpoint)
        first = gateway.connections[1].first_line
        assert first is not None
        self.assertTrue(first.startswith(b"AUTH "), first)

    @inlineCallbacks
    def test_garbage_ticket_ignored(self) -> None:
        """
        Binary garbage, escape sequences and a negative lifetime in C{OK TICKET}: ignored,
        the service opens, nothing kept.
        """
        gateway = HostileTicketGateway(b"OK TICKET \x1b[2J\xff\x00 LIFETIME=-5")
        endpoint = yield self.start(gateway)
        yield self.echo(endpoint)
        self.assertEqual(len(self.store), 0)

    @inlineCallbacks
    def test_good_ticket_presented_first(self) -> None:
        """
        The control: a well-formed ticket is kept and the next connection's first line is
        C{RESUME <token>}.
        """
        gateway = HostileTicketGateway(b"OK TICKET " + GOOD_TOKEN + b" LIFETIME=600")
        endpoint = yield self.start(gateway)
        yield self.echo(endpoint)
        self.assertEqual(len(self.store), 1)
        gateway.scripts = ["refuse"]
        yield self.echo(endpoint)
        self.assertEqual(gateway.connections[1].first_line, b"RESUME " + GOOD_TOKEN)

    @inlineCallbacks
    def test_refused_ticket_reconnects_without_one(self) -> None:
        """
        C{ERR BAD_TICKET} to the C{RESUME}: the endpoint connects again at once without a
        ticket and the service opens; three connections in all.
        """
        gateway = HostileTicketGateway(b"OK TICKET " + GOOD_TOKEN + b" LIFETIME=600")
        endpoint = yield self.start(gateway)
        yield self.echo(endpoint)
        gateway.scripts = ["refuse"]
        yield self.echo(endpoint)
        self.assertEqual(len(gateway.connections), 3)
        first = gateway.connections[2].first_line
        assert first is not None
        self.assertTrue(first.startswith(b"AUTH "), first)

    @inlineCallbacks
    def test_refused_twice_fails(self) -> None:
        """
        A hostile gateway that answers the retry's login with C{ERR BAD_TICKET} too (no
        ticket was presented): the connect fails with C{BAD_TICKET}; two connections for it,
        no third.
        """
        gateway = HostileTicketGateway(b"OK TICKET " + GOOD_TOKEN + b" LIFETIME=600")
        endpoint = yield self.start(gateway)
        yield self.echo(endpoint)
        gateway.scripts = ["refuse", "greet-refuse"]
        failure = yield self.assertFailure(connectProtocol(endpoint, EchoProbe(b"x")), NGPError)
        self.assertEqual(failure.code, "BAD_TICKET")
        yield wait_for(lambda: len(gateway.connections) == 3)
        self.assertEqual(len(gateway.connections), 3)


class RealGatewayTicketTests(unittest.TestCase):
    """
    The client endpoints and C{netguard tunnel}'s factory against the real gateway (tickets
    on by default, the key in its state directory), on loopback TCP: the first login gets
    a ticket, the next gateway connection presents it and is accepted into the lane
    (C{ticket.accepted} with C{lane} true) before it logs in as usual.
    """

    timeout = 60

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def start_gateway(self, config: str | None = None) -> RunningGateway:
        overrides = {} if config else {"listen": ["tcp:0:interface=127.0.0.1"]}
        running = RunningGateway(self, config, overrides=overrides)
        self.addCleanup(running.idle)
        return running

    def events_named(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("event") == name]

    def echo(self, endpoint: Any, payload: bytes = b"ping") -> Any:
        return echo_through(self, endpoint, payload)

    @inlineCallbacks
    def test_second_connection_enters_the_lane(self) -> None:
        """
        C{mux=no}: the first connect's login gets a ticket (C{ticket.issued}); the second
        connect presents it and the gateway accepts it into the lane; both echo. The token
        appears in no log event.
        """
        running = self.start_gateway()
        store = TicketStore()
        endpoint = NGPClientEndpoint(
            reactor,
            TCP4ClientEndpoint(reactor, "127.0.0.1", running.port()),
            running.credentials,
            "echo",
            tickets=store,
        )
        yield self.echo(endpoint)
        self.assertEqual(len(self.events_named("ticket.issued")), 1)
        self.assertEqual(len(store), 1)
        token = store.take()
        assert token is not None
        self.assertNotIn(token.decode(), repr(self.events))
        store.keep(TicketOffer(token, 60))
        self.assertEqual(self.events_named("ticket.accepted"), [])
        yield self.echo(endpoint)
        [accepted] = self.events_named("ticket.accepted")
        self.assertTrue(accepted["lane"])
        self.assertEqual(len(self.events_named("ticket.issued")), 2)
        self.assertEqual(self.events_named("ticket.refused"), [])

    def endpoint(self, running: RunningGateway, store: TicketStore) -> NGPClientEndpoint:
        return NGPClientEndpoint(
            reactor,
            TCP4ClientEndpoint(reactor, "127.0.0.1", running.port()),
            running.credentials,
            "echo",
            tickets=store,
        )

    @inlineCallbacks
    def test_revoked_ticket_refused_then_served_without(self) -> None:
        """
        The ticket key is replaced (deleted, then a reload makes a new one): the kept
        ticket is refused as revoked (no offence), and the endpoint serves the connect at
        once with a new connection without a ticket (C{tunnel.ticket.refused}), which gets
        a new ticket.
        """
        running = self.start_gateway('listen = ["tcp:0:interface=127.0.0.1"]\n')
        store = TicketStore()
        endpoint = self.endpoint(running, store)
        yield self.echo(endpoint)
        self.assertEqual(len(store), 1)
        os.unlink(os.path.join(running.dir, "st", "ticket.key"))
        Reloader(running.service, running.config_path, running.overrides).reload()
        yield self.echo(endpoint)
        [refused] = self.events_named("ticket.refused")
        self.assertEqual((refused["reason"], refused["offence"]), ("revoked", False))
        self.assertEqual(len(self.events_named("tunnel.ticket.refused")), 1)
        self.assertEqual(len(store), 1)

    @inlineCallbacks
    def test_replayed_ticket_refused_then_served_without(self) -> None:
        """
        The same ticket presented twice (a copy kept by hand, as an eavesdropper would):
        the first use enters the lane; the second is refused as replayed and the endpoint
        serves the connect with a new connection without a ticket. (Replay is an offence:
        the loopback source is exempt from penalties here so that the retry is admitted.)
        """
        running = self.start_gateway(
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            '[admission]\nnever_penalise = ["127.0.0.0/8"]\n'
        )
        store = TicketStore()
        endpoint = self.endpoint(running, store)
        yield self.echo(endpoint)
        token = store.take()
        assert token is not None
        store.keep(TicketOffer(token, 60))
        yield self.echo(endpoint)
        store.clear()
        store.keep(TicketOffer(token, 60))
        yield self.echo(endpoint)
        self.assertEqual(len(self.events_named("ticket.accepted")), 1)
        [refused] = self.events_named("ticket.refused")
        self.assertEqual((refused["reason"], refused["offence"]), ("replayed", True))
        self.assertEqual(len(self.events_named("tunnel.ticket.refused")), 1)

    @inlineCallbacks
    def test_mux_sessions_present_tickets(self) -> None:
        """
        C{mux=yes}: a session's login gets a ticket (pipelined with C{MUX}); a second
        endpoint sharing the store (as a new session would) presents it and enters the lane.
        """
        running = self.start_gateway()
        store = TicketStore()

        def endpoint() -> MuxClientEndpoint:
            made = MuxClientEndpoint(
                reactor,
                TCP4ClientEndpoint(reactor, "127.0.0.1", running.port()),
                running.credentials,
                "echo",
                tickets=store,
            )
            self.addCleanup(made.close)
            return made

        yield self.echo(endpoint())
        self.assertEqual(len(store), 1)
        yield self.echo(endpoint())
        [accepted] = self.events_named("ticket.accepted")
        self.assertTrue(accepted["lane"])

    @inlineCallbacks
    def test_tls_resume_after_the_handshake(self) -> None:
        """
        On a TLS listener the C{RESUME} line goes out after the TLS handshake: the ticket is
        accepted into the lane and the login that follows is bound to the certificate
        (SCRAM-SHA-256-PLUS) as always.
        """
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        cert, key = tls_certs.make_leaf("localhost")
        cert_file, key_file = tls_certs.write_identity(directory, "gateway", cert, key)
        running = self.start_gateway(
            'listen = ["tcp:0:interface=127.0.0.2"]\n'
            '[[tls_listen]]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
            f'cert_file = "{cert_file}"\nkey_file = "{key_file}"\n',
        )
        gateway = wrap_tls(
            reactor,
            TCP4ClientEndpoint(reactor, "127.0.0.1", running.port(1)),
            {"tls": "1", "ca_file": cert_file},
            default_hostname="localhost",
        )
        store = TicketStore()
        endpoint = NGPClientEndpoint(reactor, gateway, running.credentials, "echo", tickets=store)
        yield self.echo(endpoint)
        self.assertEqual(len(store), 1)
        yield self.echo(endpoint)
        [accepted] = self.events_named("ticket.accepted")
        self.assertTrue(accepted["lane"])
        mechanisms = [e.get("mechanism") for e in self.events_named("auth.ok")]
        self.assertEqual(mechanisms, ["SCRAM-SHA-256-PLUS"] * 2)

    @inlineCallbacks
    def test_tunnel_second_local_connection_enters_the_lane(self) -> None:
        """
        C{netguard tunnel}'s factory (C{--no-mux}): two local connections one after the
        other; the second one's gateway connection presents the first one's ticket and is
        accepted into the lane.
        """
        running = self.start_gateway()
        endpoint = NGPClientEndpoint(
            reactor,
            TCP4ClientEndpoint(reactor, "127.0.0.1", running.port()),
            running.credentials,
            "echo",
        )
        factory = TunnelFactory(reactor, endpoint)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        local = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        for payload in (b"first", b"second"):
            app = EchoProbe(payload)
            yield connectProtocol(local, app)
            self.assertEqual((yield app.done), payload)
            yield wait_for(lambda: not factory.connections)
        [accepted] = self.events_named("ticket.accepted")
        self.assertTrue(accepted["lane"])


class TunnelProcessTicketTests(unittest.TestCase):
    """
    The real C{netguard tunnel} process (C{--no-mux}, a unix listener) in front of the real
    gateway: the second local connection's gateway connection presents the ticket the first
    login got and enters the lane; with C{--no-tickets} no ticket is asked for or presented.
    """

    timeout = 90

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.running = RunningGateway(self, overrides={"listen": ["tcp:0:interface=127.0.0.1"]})
        self.addCleanup(self.running.idle)
        self.password_file = os.path.join(self.running.dir, "pw")
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, self.running.credentials.password.encode() + b"\n")
        os.close(fd)

    def events_named(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("event") == name]

    def start_tunnel(self, *options: str) -> tuple[str, str]:
        """
        Start C{netguard tunnel} (this checkout's code) listening on a unix socket; stopped
        by PID at cleanup.

        @return: the socket path and the tunnel's log path.
        """
        sock = os.path.join(self.running.dir, "t.sock")
        log_path = os.path.join(self.running.dir, "tunnel.log")
        log = open(log_path, "wb")  # noqa: SIM115 - closed by stop_process at cleanup
        root = os.path.dirname(os.path.dirname(os.path.abspath(netguard.__file__)))
        env = {**os.environ, "PYTHONPATH": root}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "netguard.cli",
                "tunnel",
                "--gateway",
                f"tcp:host=127.0.0.1:port={self.running.port()}",
                "--service",
                "echo",
                "--listen",
                f"unix:{sock}:mode=600",
                "--user",
                self.running.credentials.username,
                "--password-file",
                self.password_file,
                "--no-mux",
                *options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self.addCleanup(stop_process, process, log)
        return sock, log_path

    @inlineCallbacks
    def echo_twice(self, sock: str) -> Any:
        yield wait_for(lambda: os.path.exists(sock), timeout=30)
        for payload in (b"first", b"second"):
            app = EchoProbe(payload)
            yield connectProtocol(UNIXClientEndpoint(reactor, sock), app)
            self.assertEqual((yield app.done), payload)
            yield wait_for(lambda: not self.running.factory.sessions)

    @inlineCallbacks
    def test_second_local_connection_enters_the_lane(self) -> None:
        """
        Two local connections one after the other: two logins, two tickets issued, the
        second gateway connection accepted into the lane; the tunnel's log holds no token.
        """
        sock, log_path = self.start_tunnel()
        yield self.echo_twice(sock)
        [accepted] = self.events_named("ticket.accepted")
        self.assertTrue(accepted["lane"])
        self.assertEqual(len(self.events_named("ticket.issued")), 2)
        with open(log_path, "rb") as handle:
            self.assertNotIn(b"RESUME", handle.read())

    @inlineCallbacks
    def test_no_tickets(self) -> None:
        """
        C{--no-tickets}: no ticket issued, none presented.
        """
        sock, _ = self.start_tunnel("--no-tickets")
        yield self.echo_twice(sock)
        self.assertEqual(self.events_named("ticket.issued"), [])
        self.assertEqual(self.events_named("ticket.accepted"), [])

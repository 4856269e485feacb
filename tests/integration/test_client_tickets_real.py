"""
Returning-client tickets from the client's side, over real loopback sockets: the C{netguard:}
endpoints and C{netguard tunnel} against the real gateway (a ticket issued after the first
login, presented by the next connection, which the gateway greets at once:
C{ticket.accepted}), and against hostile gateways written for these tests (an oversized or
garbage ticket, a refused ticket).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from netguard.auth.scram import ServerExchange, decode_wire, encode_wire
from netguard.auth.users import UserStore, make_record
from netguard.client.endpoint import NGPClientEndpoint
from netguard.client.protocol import Credentials, NGPError
from netguard.client.tickets import MAX_TOKEN, TicketStore
from tests.integration.util import wait_for

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


class Echo(Protocol):
    """
    Send C{payload} and fire C{done} with what came back once it is all there.
    """

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.payload) and not self.done.called:
            self.done.callback(self.received)
            self.transport.loseConnection()  # type: ignore[union-attr]


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

    @inlineCallbacks
    def echo(self, endpoint: NGPClientEndpoint, payload: bytes = b"ping") -> Any:
        app = Echo(payload)
        yield connectProtocol(endpoint, app)
        received = yield app.done
        self.assertEqual(received, payload)

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
        failure = yield self.assertFailure(connectProtocol(endpoint, Echo(b"x")), NGPError)
        self.assertEqual(failure.code, "BAD_TICKET")
        yield wait_for(lambda: len(gateway.connections) == 3)
        self.assertEqual(len(gateway.connections), 3)

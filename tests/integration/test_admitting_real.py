"""
L{netguard.admitting.AdmittingFactory} around other Twisted servers, over real sockets: the
application protocol it wraps keeps its half-close and its TLS handshake notice, as it has
without the wrapper (Twisted's C{ProtocolWrapper} declares only its transport's interfaces).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import clientFromString, connectProtocol, serverFromString
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from netguard.admission import Admission, AdmissionPolicy
from netguard.admitting import AdmittingFactory
from netguard.framing import FramingLimits, GuardedLineReceiver
from tests.integration.test_relay_real import make_certificates


@implementer(IHalfCloseableProtocol)
class CountThenAnswer(Protocol):
    """
    Counts what it reads; answers with the count when the peer half-closes.
    """

    def __init__(self) -> None:
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)

    def readConnectionLost(self) -> None:
        self.transport.write(b"got %d\n" % self.count)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class Greeter(GuardedLineReceiver):
    """
    Greets once the connection is ready (after the TLS handshake on a TLS listener).
    """

    limits = FramingLimits(max_line_length=64, handshake_timeout=30.0)

    def __init__(self) -> None:
        super().__init__()
        self.gone: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self.gone.callback(None)

    def greet(self) -> None:
        self.sendLine(b"HELLO")

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(b"ECHO " + line)


class FirstLine(Protocol):
    """
    Fires C{line} with the first line it reads, C{closed} when the connection is gone.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.line: Deferred[bytes] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" in self.buffer and not self.line.called:
            self.line.callback(self.buffer.split(b"\n", 1)[0])

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.line.called:
            self.line.callback(b"(closed) " + self.buffer)
        self.closed.callback(None)


def half_close_and_read(port: int, payload: bytes) -> bytes:
    """
    Send C{payload}, half-close, and read to the end (in a thread: a blocking client).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk
        return answer


def address(host: str, port: int) -> Any:
    """
    A peer address as a TCP listener gives it.
    """
    from twisted.internet.address import IPv4Address

    return IPv4Address("TCP", host, port)


class AdmittedProtocolInterfacesTests(unittest.TestCase):
    """
    What the wrapped protocol provides, the wrapper passes on.
    """

    def admitting(self, factory: Factory) -> AdmittingFactory:
        return AdmittingFactory(factory, Admission(AdmissionPolicy(per_source_max=4), reactor))

    @inlineCallbacks
    def listen(self, description: str, factory: Factory) -> Any:
        port = yield serverFromString(reactor, description).listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def test_half_close_reaches_the_wrapped_protocol(self) -> Any:
        """
        The client's FIN reaches the wrapped protocol as C{readConnectionLost}, which can
        still answer; without the wrapper the same server answers the same.
        """
        for factory in (
            Factory.forProtocol(CountThenAnswer),
            self.admitting(Factory.forProtocol(CountThenAnswer)),
        ):
            port = yield self.listen("tcp:0:interface=127.0.0.1", factory)
            answer = yield deferToThread(half_close_and_read, port, b"x" * 100)
            self.assertEqual(answer, b"got 100\n", type(factory).__name__)

    @inlineCallbacks
    def test_tls_listener_greets_after_the_handshake(self) -> Any:
        """
        A guarded line receiver behind the wrapper on a TLS listener is told the handshake
        is done and greets, as it does without the wrapper.
        """
        trust, server_pem = make_certificates(self.mktemp())
        listen = f"ssl:0:interface=127.0.0.1:privateKey={server_pem}:certKey={server_pem}"
        servers: list[Greeter] = []

        def greeter() -> Greeter:
            servers.append(Greeter())
            return servers[-1]

        for factory in (
            Factory.forProtocol(greeter),
            self.admitting(Factory.forProtocol(greeter)),
        ):
            port = yield self.listen(listen, factory)
            client = FirstLine()
            endpoint = clientFromString(
                reactor,
                f"tls:127.0.0.1:{port}:trustRoots={trust}:endpoint=tcp\\:127.0.0.1\\:{port}",
            )
            yield connectProtocol(endpoint, client)
            line = yield client.line
            client.transport.loseConnection()
            yield client.closed
            yield servers[-1].gone
            self.assertEqual(line.rstrip(b"\r"), b"HELLO", type(factory).__name__)

    def test_only_what_the_wrapped_protocol_provides(self) -> None:
        """
        A plain protocol's wrapper does not claim half-close: Twisted then closes the
        connection at the peer's FIN, as it does for the plain protocol.
        """
        from twisted.internet.testing import StringTransport

        factory = self.admitting(Factory.forProtocol(Protocol))
        wrapper = factory.buildProtocol(address("127.0.0.1", 40000))
        assert wrapper is not None
        wrapper.makeConnection(StringTransport())
        self.assertFalse(IHalfCloseableProtocol.providedBy(wrapper))
        factory = self.admitting(Factory.forProtocol(CountThenAnswer))
        wrapper = factory.buildProtocol(address("127.0.0.1", 40001))
        assert wrapper is not None
        wrapper.makeConnection(StringTransport())
        self.assertTrue(IHalfCloseableProtocol.providedBy(wrapper))

    def test_transports_half_close_not_claimed_for_a_plain_protocol(self) -> None:
        """
        A transport that itself provides C{IHalfCloseableProtocol} (netguard's half-closing
        TLS) does not make the wrapper of a plain protocol claim it: its peer's
        C{close_notify} then closes the connection instead of calling a
        C{readConnectionLost} the protocol does not have.
        """
        from twisted.internet.testing import StringTransport
        from zope.interface import directlyProvides

        transport = StringTransport()
        directlyProvides(transport, IHalfCloseableProtocol)
        wrapper = self.admitting(Factory.forProtocol(Protocol)).buildProtocol(
            address("127.0.0.1", 40002)
        )
        assert wrapper is not None
        wrapper.makeConnection(transport)
        self.assertFalse(IHalfCloseableProtocol.providedBy(wrapper))

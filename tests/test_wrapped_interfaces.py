"""
L{netguard.wrapped_interfaces}: a protocol connected through a Twisted client endpoint keeps
every optional interface it provides (half-close above all) on the wrapper its transport
talks to.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import (
    IFileDescriptorReceiver,
    IHalfCloseableProtocol,
    IHandshakeListener,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from netguard.client.protocol import Credentials, NGPClientProtocol
from netguard.outbound.backends import _BackendProtocol
from netguard.wrapped_interfaces import provide_through_wrapper


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class _Both(Protocol):
    """Half-closeable and a handshake listener, and says so to its wrapper."""

    def __init__(self) -> None:
        self.half_closed = 0

    def connectionMade(self) -> None:
        provide_through_wrapper(self, self.transport)

    def readConnectionLost(self) -> None:
        self.half_closed += 1

    def writeConnectionLost(self) -> None:
        """Not used."""

    def handshakeCompleted(self) -> None:
        """Not used."""


def connect_through_endpoint(protocol: Protocol) -> tuple[Any, StringTransport]:
    """
    Connect C{protocol} through a real L{TCP4ClientEndpoint} on a memory reactor, as a TCP
    connection would: the transport's C{protocol} is Twisted's wrapper.

    @return: the wrapper and the transport.
    """
    reactor = MemoryReactorClock()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", 7)
    connected: Deferred[Any] = endpoint.connect(Factory.forProtocol(lambda: protocol))
    wrapping_factory = reactor.tcpClients[0][2]
    wrapper = wrapping_factory.buildProtocol(None)
    transport = StringTransport()
    transport.protocol = wrapper  # as tcp.Connection has it
    wrapper.makeConnection(transport)
    assert connected.called
    return wrapper, transport


class ProvideThroughWrapperTests(unittest.TestCase):
    """
    L{provide_through_wrapper}.
    """

    def test_wrapper_keeps_half_close(self) -> None:
        """
        A protocol providing both C{IHalfCloseableProtocol} and C{IHandshakeListener}:
        after it connected, the endpoint wrapper provides both, so a transport that asks the
        wrapper (as Twisted's TCP transport does at a FIN) passes the half-close on.
        """
        protocol = _Both()
        wrapper, _ = connect_through_endpoint(protocol)
        self.assertTrue(IHalfCloseableProtocol.providedBy(wrapper))
        self.assertTrue(IHandshakeListener.providedBy(wrapper))
        self.assertFalse(IFileDescriptorReceiver.providedBy(wrapper))
        IHalfCloseableProtocol(wrapper).readConnectionLost()
        self.assertEqual(protocol.half_closed, 1)

    def test_backend_protocol(self) -> None:
        """
        The gateway's backend connection protocol keeps its half-close through the wrapper.
        """

        class Leg:
            def backend_connected(self) -> None:
                """Not used."""

        wrapper, _ = connect_through_endpoint(_BackendProtocol(Leg()))  # type: ignore[arg-type]
        self.assertTrue(IHalfCloseableProtocol.providedBy(wrapper))

    def test_ngp_client(self) -> None:
        """
        A half-closeable NGP/1 client (as the C{netguard:} endpoint's carrier is) keeps its
        half-close through the wrapper.
        """

        @implementer(IHalfCloseableProtocol)
        class Client(NGPClientProtocol):
            def readConnectionLost(self) -> None:
                """Not used."""

            def writeConnectionLost(self) -> None:
                """Not used."""

        client = Client(Credentials("alice", b"secret"), "echo", clock=MemoryReactorClock())
        wrapper, _ = connect_through_endpoint(client)
        self.assertTrue(IHalfCloseableProtocol.providedBy(wrapper))
        self.assertTrue(IHandshakeListener.providedBy(wrapper))

    def test_not_half_closeable_stays_so(self) -> None:
        """
        Nothing is added that the protocol does not provide: a plain protocol's wrapper
        stays without half-close (the transport then reports a FIN as the connection lost).
        """

        class Plain(Protocol):
            def connectionMade(self) -> None:
                provide_through_wrapper(self, self.transport)

        wrapper, _ = connect_through_endpoint(Plain())
        self.assertFalse(IHalfCloseableProtocol.providedBy(wrapper))

    def test_no_wrapper(self) -> None:
        """
        A protocol connected directly (the transport's protocol is the protocol itself, or
        something that does not wrap it) is left alone.
        """
        protocol = _Both()
        transport = StringTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        other = Protocol()
        transport.protocol = other
        provide_through_wrapper(protocol, transport)
        self.assertFalse(IHalfCloseableProtocol.providedBy(other))

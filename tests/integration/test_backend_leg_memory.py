"""
What an idle relay to a plain C{tcp:} backend keeps of its opening, end to end: the real
gateway on loopback, the real NGP/1 client and a real echo backend process (the
L{tests.integration.test_relay_real} peers), and the backend leg connecting on its own over
real loopback sockets.

What is proven here:
  - the backend connection's transport talks to the leg's own protocol, and once connected
    its connector is the leg itself: no endpoint wrapper and no Twisted C{Connector} stays
    with the connection, and the kernel relay keeps no bound method of the leg;
  - no L{Deferred} is reachable from the backend connection and its kernel relay while the
    relay is idle: the connect L{Deferred} is not kept, and the relay's result is made only
    when asked for;
  - a refused connection still fails the opening with Twisted's own error, and a backend
    that closes is still reported to the relay, which ends.
"""

from __future__ import annotations

import gc
import socket
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionRefusedError
from twisted.trial import unittest

from netguard.config import ServiceConfig
from netguard.outbound import backends
from netguard.outbound.backends import BackendEndpoints, EndpointLeg, open_backend
from netguard.relay import B
from tests.integration.test_relay_real import WAIT, RelayRealTestCase, wait_until

#: The modules whose objects make up a backend connection and its opening.
_CONNECTION_MODULES = (
    "twisted.internet.tcp",
    "twisted.internet.base",
    "twisted.internet.endpoints",
    "twisted.internet.defer",
    "netguard.outbound",
    "netguard.relay",
)


def reachable_deferreds(roots: list[object], stop: list[object], bound: int = 20000) -> list[Any]:
    """
    The L{Deferred}s reachable from C{roots} through the objects of a connection (instances
    of L{_CONNECTION_MODULES}' classes, their attribute values, containers, bound methods and
    closures), not going past C{stop} (nor into a L{Deferred}'s callbacks).

    @param bound: at most this many objects are visited; reaching it fails (a search that
        stopped short would prove nothing).
    """
    stopped = {id(each) for each in stop}
    seen: set[int] = set()
    found: list[Any] = []
    todo = list(roots)
    while todo and len(seen) < bound:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in stopped:
            continue
        seen.add(id(obj))
        if isinstance(obj, Deferred):
            found.append(obj)
            continue
        module = getattr(type(obj), "__module__", "") or ""
        container = isinstance(obj, (list, tuple, dict, set)) and not (
            isinstance(obj, dict) and "__builtins__" in obj
        )
        kinds = (type(lambda: 0), type(protocol.Protocol().makeConnection))
        if container or isinstance(obj, kinds) or module.startswith(_CONNECTION_MODULES):
            if isinstance(obj, type(lambda: 0)):
                todo.extend(cell.cell_contents for cell in obj.__closure__ or ())
            else:
                todo.extend(gc.get_referents(obj))
    if todo and len(seen) >= bound:
        raise AssertionError(f"the search stopped at {bound} objects")
    return found


class IdleTCPBackendTests(RelayRealTestCase):
    """
    An idle relay to a C{tcp:} backend, through the real gateway.
    """

    @inlineCallbacks
    def opened_leg(self) -> Any:
        port = self.start_peer("echo")
        self.start_gateway([f"echo2=tcp:host=127.0.0.1:port={port}"])
        client = yield self.open("echo2")
        client.transport.write(b"0123456789abcdef")
        yield client.wait_for(lambda c: c.count >= 16, "the echo")
        return self.legs[0]

    @inlineCallbacks
    def test_backend_connection_keeps_no_endpoint_wrapper(self) -> Any:
        """
        The backend transport's protocol is the leg's own protocol, and once connected its
        connector is the leg itself: no wrapping protocol or factory, and no Twisted
        C{Connector}, lives as long as the relay.
        """
        leg = yield self.opened_leg()
        transport = leg.protocol.transport
        self.assertIs(transport.protocol, leg.protocol)
        self.assertIs(transport.connector, leg)

    @inlineCallbacks
    def test_backend_log_prefix_is_one_shared_string(self) -> Any:
        """
        The backend transport's log prefix is Twisted's text, held as one string shared by
        every backend connection, not a string of its own.
        """
        leg = yield self.opened_leg()
        transport = leg.protocol.transport
        self.assertEqual(transport.logPrefix(), "_BackendProtocol,client")
        self.assertIs(transport.logstr, backends._CLIENT_LOGSTR)

    @inlineCallbacks
    def test_kernel_relay_keeps_no_bound_method_of_the_leg(self) -> Any:
        """
        The leg's kernel relay knows the leg as its owner (told of a fall-back through its
        C{splice}), not through a bound method kept for the relay's life.
        """
        leg = yield self.opened_leg()
        self.assertIs(leg.splice.owner, leg)

    @inlineCallbacks
    def test_idle_relay_holds_no_deferred(self) -> Any:
        """
        From the backend connection (its transport, protocol and leg) and the kernel relay,
        no L{Deferred} is reachable while the relay is idle: the connect L{Deferred} is not
        kept, and the relay's result L{Deferred} is made only once someone asks for it (the
        session, when its client goes), already fired if the relay has ended by then.
        """
        leg = yield self.opened_leg()
        transport = leg.protocol.transport
        found = reachable_deferreds(
            [transport, transport.protocol, leg, leg.splice],
            stop=[reactor, transport.reactor, self.gateway.factory],
        )
        self.assertEqual(found, [])
        self.assertIsNone(leg._done)
        self.assertFalse(leg.done.called)  # asked for now: made, not yet fired
        self.assertIs(leg.splice.done, leg.done)


class DirectConnectionTests(unittest.TestCase):
    """
    A C{tcp:} backend leg connecting on its own, over real loopback sockets.
    """

    def service(self, port: int) -> ServiceConfig:
        return ServiceConfig(
            "svc", f"tcp:host=127.0.0.1:port={port}", ("*",), connect_timeout=WAIT
        )

    def test_refused_is_twisteds_error(self) -> Any:
        """
        A port nobody listens on fails the opening with Twisted's
        L{ConnectionRefusedError}, as through the endpoint.
        """
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))  # bound, never listening: refused, and kept bound
        self.addCleanup(probe.close)  # until the end, so no other socket can take the port
        port = probe.getsockname()[1]
        opening = open_backend(reactor, self.service(port), endpoints=BackendEndpoints(reactor))
        return self.assertFailure(opening, ConnectionRefusedError)

    @inlineCallbacks
    def test_backend_close_reaches_the_relay(self) -> Any:
        """
        A backend that closes its connection is still reported to the leg's relay (as EOF
        or loss), and once the client side closes too the relay ends, C{ended_by} the
        backend's side.
        """

        class Closing(protocol.Protocol):
            def connectionMade(self) -> None:
                self.transport.loseConnection()

        listening = reactor.listenTCP(  # type: ignore[attr-defined]
            0, protocol.Factory.forProtocol(Closing), interface="127.0.0.1"
        )
        self.addCleanup(listening.stopListening)
        leg = yield open_backend(
            reactor,
            self.service(listening.getHost().port),
            endpoints=BackendEndpoints(reactor),
        ).addTimeout(WAIT, reactor)
        self.assertIsInstance(leg, EndpointLeg)
        server, client = socket.socketpair()
        self.addCleanup(server.close)

        class Carrier(protocol.Protocol):
            """The client side, as a session reports its loss: to the leg."""

            def connectionLost(self, reason: Any = None) -> None:
                leg.close()

        carrier = Carrier()
        reactor.adoptStreamConnection(  # type: ignore[attr-defined]
            client.fileno(), socket.AF_UNIX, protocol.Factory.forProtocol(lambda: carrier)
        )
        client.close()
        leg.attach(carrier.transport)
        yield wait_until(
            lambda: leg.splice.eof[B] or leg.splice.gone[B], "the backend's close at the relay"
        )
        server.close()
        result = yield leg.done.addTimeout(WAIT, reactor)
        self.assertEqual(result.ended_by, B)

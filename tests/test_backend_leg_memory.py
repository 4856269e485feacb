"""
Tests for what a backend leg of L{netguard.outbound.backends} keeps of its opening: a plain
C{tcp:} backend is connected with the reactor's C{connectTCP} and the leg as its factory
(L{netguard.outbound.backends.DirectTCP}), with the endpoint's own settings, so no endpoint
wrapper or connect L{Deferred} lives as long as the connection; every other backend still
goes through its endpoint. On a L{MemoryReactorClock}; the real sockets are in
L{tests.integration.test_backend_leg_memory}.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from netguard.config import ServiceConfig
from netguard.outbound.backends import (
    BackendConnectTimeout,
    BackendEndpoints,
    DirectTCP,
    EndpointLeg,
    open_backend,
)
from netguard.relay import A, B, RelayResult, Splice
from netguard.relay_pipes import PipePool
from netguard.relay_splice import KernelSplice

CONNECT_TIMEOUT = 3.0


def service(backend: str, socks5: str | None = None) -> ServiceConfig:
    return ServiceConfig("svc", backend, ("*",), socks5=socks5, connect_timeout=CONNECT_TIMEOUT)


class DirectTCPTests(unittest.TestCase):
    """
    A C{tcp:} backend is connected directly, the leg being the connection's factory.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoints = BackendEndpoints(self.reactor)

    def open(self, svc: ServiceConfig) -> Any:
        return open_backend(self.reactor, svc, write_timeout=30.0, endpoints=self.endpoints)

    def test_connects_with_the_endpoints_settings_and_the_leg_as_factory(self) -> None:
        """
        Host, port, connect timeout and source address are the ones Twisted's parser read
        from the description, and the factory given to C{connectTCP} is the leg itself.
        """
        self.open(service("tcp:host=10.0.0.5:port=6379:timeout=7:bindAddress=10.0.0.1"))
        host, port, factory, timeout, bind = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout, bind), ("10.0.0.5", 6379, 7, ("10.0.0.1", 0)))
        self.assertIsInstance(factory, EndpointLeg)

    def test_also_without_shared_endpoints(self) -> None:
        """
        Opened without L{BackendEndpoints}, a C{tcp:} backend is connected directly too.
        """
        open_backend(self.reactor, service("tcp:host=10.0.0.5:port=6379"))
        self.assertIsInstance(self.reactor.tcpClients[0][2], EndpointLeg)

    def test_connected_leg_is_the_result_and_keeps_no_ready(self) -> None:
        """
        Once connected the opening fires with the leg, whose protocol is the one the
        connection was given; attached, the leg lets go of its L{ready}.
        """
        opening = self.open(service("tcp:host=10.0.0.5:port=6379"))
        leg = self.reactor.tcpClients[0][2]
        protocol = leg.buildProtocol(IPv4Address("TCP", "10.0.0.5", 6379))
        protocol.makeConnection(StringTransport())
        self.assertIs(self.successResultOf(opening), leg)
        self.assertIs(leg.protocol, protocol)
        self.assertEqual(self.reactor.getDelayedCalls(), [])  # the connect timer is gone
        leg.attach(StringTransport())
        self.assertIsNone(leg.ready)

    def test_ordinary_relay_fires_the_legs_own_done(self) -> None:
        """
        A leg relayed by the ordinary L{Splice} (a transport that is not a plain socket, as
        a multiplexed stream's) hands it its own L{done}: no second L{Deferred} is chained
        for the relay's life, and the result still arrives there once both sides are gone.
        """
        opening = self.open(service("tcp:host=10.0.0.5:port=6379"))
        leg = self.reactor.tcpClients[0][2]
        protocol = leg.buildProtocol(IPv4Address("TCP", "10.0.0.5", 6379))
        protocol.makeConnection(StringTransport())
        self.successResultOf(opening)
        leg.attach(StringTransport())
        self.assertIsInstance(leg.splice, Splice)
        self.assertIs(leg.splice.done, leg.done)
        results: list[Any] = []
        leg.done.addCallback(results.append)
        leg.close()
        protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual([result.ended_by for result in results], [A])

    def test_leg_provides_iprotocolfactory(self) -> None:
        """
        The leg is a full L{IProtocolFactory} (also what endpoints are given).
        """
        self.open(service("tcp:host=10.0.0.5:port=6379"))
        self.assertTrue(verifyObject(IProtocolFactory, self.reactor.tcpClients[0][2]))

    def test_refused_is_the_reactors_error(self) -> None:
        """
        The connector's failure, told to the leg, fails the opening with its own reason.
        """
        opening = self.open(service("tcp:host=10.0.0.5:port=6379"))
        leg = self.reactor.tcpClients[0][2]
        leg.clientConnectionFailed(
            self.reactor.connectors[0], Failure(error.ConnectionRefusedError())
        )
        self.failureResultOf(opening, error.ConnectionRefusedError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timeout_stops_a_connector_that_reports_at_once(self) -> None:
        """
        When the connect timeout passes, the attempt is stopped; a connector that reports
        the stopped attempt at once (as Twisted's does, with a C{UserError}) still gives
        L{BackendConnectTimeout}, and no error is left unhandled.
        """
        opening = self.open(service("tcp:host=10.0.0.5:port=6379"))
        leg = self.reactor.tcpClients[0][2]
        connector = self.reactor.connectors[0]

        def stop() -> None:
            connector.stoppedConnecting = True
            leg.clientConnectionFailed(connector, Failure(error.UserError()))

        connector.stopConnecting = stop
        self.reactor.advance(CONNECT_TIMEOUT)
        self.failureResultOf(opening, BackendConnectTimeout)
        self.assertTrue(connector.stoppedConnecting)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_canceller_accepts_a_connector_no_longer_connecting(self) -> None:
        """
        A connector that refuses C{stopConnecting} (C{NotConnectingError}: no longer
        connecting) does not break the deadline: the canceller takes that as the end of its
        job and the opening still fails with the timeout.
        """
        opening = self.open(service("tcp:host=10.0.0.5:port=6379"))
        connector = self.reactor.connectors[0]

        def stop() -> None:
            raise error.NotConnectingError()

        connector.stopConnecting = stop
        self.reactor.advance(CONNECT_TIMEOUT)
        self.failureResultOf(opening, BackendConnectTimeout)

    def test_other_backends_go_through_their_endpoint(self) -> None:
        """
        Behind a SOCKS5 proxy, or over TLS, a backend is connected by its endpoint, which
        gives the reactor a factory of its own.
        """
        self.open(service("tcp:host=10.0.0.5:port=6379", socks5="tcp:host=127.0.0.1:port=1080"))
        self.open(service("tls:host=127.0.0.1:port=6380"))
        for client in self.reactor.tcpClients:
            self.assertNotIsInstance(client[2], EndpointLeg)

    def test_of_reads_only_twisteds_tcp4_endpoint(self) -> None:
        """
        L{DirectTCP.of} reads a L{TCP4ClientEndpoint} and nothing else: not another
        endpoint, not a subclass, not one whose settings cannot be read.
        """
        direct = DirectTCP.of(TCP4ClientEndpoint(self.reactor, "10.0.0.5", 1, 5, ("10.0.0.1", 0)))
        assert direct is not None
        self.assertEqual(
            (direct.host, direct.port, direct.timeout, direct.bind_address),
            ("10.0.0.5", 1, 5, ("10.0.0.1", 0)),
        )

        class Sub(TCP4ClientEndpoint):
            pass

        bare = TCP4ClientEndpoint(self.reactor, "10.0.0.5", 1)
        del bare._bindAddress
        for other in (
            HostnameEndpoint(self.reactor, b"localhost", 1),
            UNIXClientEndpoint(self.reactor, "/run/x.sock"),
            Sub(self.reactor, "10.0.0.5", 1),
            bare,
        ):
            self.assertIsNone(DirectTCP.of(other), other)


class BackendTransportKeysTests(unittest.TestCase):
    """
    A burst of backend connections (many C{OPEN}s read in one turn of the reactor) keeps
    every C{tcp.Client}'s instance dict shared: the names Twisted sets on a client after
    its constructor (C{realAddress} a turn later, once resolved; C{connected} and C{logstr}
    once connected; C{dataBuffer} and C{offset} on a first write) are shared before
    connections arrive (L{netguard.shared_keys.share_transport_keys}).
    """

    #: What a C{tcp.Client} sets in its constructor, in order.
    INIT_NAMES = (
        "connector", "addr", "_requiresResolution", "reactor", "_tempDataBuffer",
        "_tempDataLen", "socket", "fileno", "protocol",
    )  # fmt: skip

    #: What it sets later, in order: resolved, connecting, connected, first write.
    LATER_NAMES = (
        "realAddress", "doWrite", "doRead", "connected", "logstr", "dataBuffer", "offset",
    )  # fmt: skip

    def burst(self, cls: type) -> int:
        """
        Sixty-four instances of C{cls} built in one turn, then each resolved, connected and
        written to: the largest instance dict.
        """
        instances = []
        for _ in range(64):
            instance = cls.__new__(cls)
            for name in self.INIT_NAMES:
                setattr(instance, name, None)
            instances.append(instance)
        for instance in instances:
            for name in self.LATER_NAMES:
                setattr(instance, name, None)
            del instance.doWrite, instance.doRead  # as doConnect does once connected
        return max(sys.getsizeof(vars(instance)) for instance in instances)

    def test_a_burst_of_backend_clients_keeps_shared_dicts(self) -> None:
        """
        With Twisted's client names shared first, every C{tcp.Client} of a burst keeps a
        shared (small) dict. With only the names every transport sets late shared (not
        C{realAddress} and C{logstr}), the shared keys have no room left for those two
        when the burst sets them, and on CPython 3.11 each client gets a full dict of its
        own.
        """
        from twisted.internet import tcp

        from netguard.shared_keys import TRANSPORT_LATE_NAMES, share_transport_keys

        class Shared(tcp.Client):
            pass  # a fresh class: its shared keys start empty, as at process start

        class Partly(tcp.Client):
            pass

        share_transport_keys((Shared,))
        self.assertLess(self.burst(Shared), 512)
        partly: Any = object.__new__(Partly)
        for name in TRANSPORT_LATE_NAMES:
            if hasattr(Partly, name):
                setattr(partly, name, getattr(Partly, name))
        if sys.version_info[:2] == (3, 11):
            self.assertGreater(self.burst(Partly), 512)


class _Owner:
    """
    Holds a relay, as a backend leg does; also lets the test harness follow a fall-back
    (its protocols report to the relay that carries on).
    """

    __slots__ = ("_splice", "harness")

    def __init__(self, harness: Any) -> None:
        self.harness = harness
        self._splice: Any = None

    @property
    def splice(self) -> Any:
        return self._splice

    @splice.setter
    def splice(self, splice: Any) -> None:
        self._splice = splice
        if isinstance(splice, Splice):
            self.harness._fall_back(splice)


class FallBackOwnerTests(unittest.TestCase):
    """
    A kernel relay tells its owner (the backend leg) of the ordinary relay that carries on
    after a fall-back by setting the owner's C{splice}: no bound method of the leg is kept
    for the relay's life.
    """

    skip = None if hasattr(os, "splice") else "os.splice is not available"

    @inlineCallbacks
    def test_fall_back_becomes_the_owners_splice(self) -> Any:
        """
        The first C{splice} fails with C{EINVAL}: the ordinary L{Splice} that takes over is
        the owner's C{splice}, and bytes still arrive both ways.
        """
        from tests.test_relay_splice import _Harness

        def refuse(*args: object, **kwargs: object) -> int:
            raise OSError(errno.EINVAL, "Invalid argument")

        harness = _Harness(self, splice=refuse, start=False)
        owner = _Owner(harness)
        owner.splice = harness.relay
        harness.relay.owner = owner
        harness.relay.start()
        harness.relay._ab.small = harness.relay._ba.small = False  # bulk: splice at once
        harness.relay.resume_reading(A)
        harness.relay.resume_reading(B)
        harness.peer_a.outgoing += b"up"
        harness.peer_b.outgoing += b"down"
        yield from harness.until(
            lambda: len(harness.peer_b.received) == 2 and len(harness.peer_a.received) == 4
        )
        self.assertEqual(len(harness.fell_back), 1)
        self.assertIs(owner.splice, harness.fell_back[0])
        self.assertIsInstance(owner.splice, Splice)


class _Transport:
    """Just what a kernel relay calls on a plain socket's transport, on no socket."""

    disconnecting = False
    _writeDisconnecting = False

    def __init__(self) -> None:
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.closed = False

    def doRead(self) -> None:
        """Twisted's own read event handler."""

    def doWrite(self) -> None:
        """Twisted's own write event handler."""

    def startReading(self) -> None:
        """Reading on."""

    def stopReading(self) -> None:
        """Reading off."""

    def startWriting(self) -> None:
        """Write events on."""

    def stopWriting(self) -> None:
        """Write events off."""

    def loseWriteConnection(self) -> None:
        """Half-close."""

    def loseConnection(self) -> None:
        self.closed = True

    def abortConnection(self) -> None:
        self.closed = True

    def fileno(self) -> int:
        return -1


class LazyDoneTests(unittest.TestCase):
    """
    A kernel relay makes its result's L{Deferred} only when asked for it: an idle relay
    nobody waits on holds none, and the result is never lost.
    """

    def relay(self) -> KernelSplice:
        return KernelSplice(
            _Transport(), _Transport(), clock=Clock(), pool=PipePool(), splice=lambda *a, **k: 0
        )

    def test_no_deferred_until_asked(self) -> None:
        """
        A relay built without a C{done} holds no L{Deferred} until L{KernelSplice.done} is
        read; then it is one, the same each time, not yet fired.
        """
        relay = self.relay()
        self.assertIsNone(relay._done)
        done = relay.done
        self.assertIs(relay.done, done)
        self.assertNoResult(done)

    def test_asked_before_the_end_fires_at_the_end(self) -> None:
        """
        Asked for while the relay runs, the L{Deferred} fires with the result when both
        sides are gone.
        """
        relay = self.relay()
        done = relay.done
        relay.lost(B)
        self.assertNoResult(done)
        relay.lost(A)
        self.assertEqual(self.successResultOf(done).ended_by, B)

    def test_asked_after_the_end_is_already_fired(self) -> None:
        """
        Asked for only after the relay has ended (the session asks when its client goes,
        which may come after the backend's end), the L{Deferred} has the result already,
        and the relay no longer keeps the result apart.
        """
        relay = self.relay()
        relay.lost(A)
        relay.lost(B)
        self.assertIsInstance(relay._done, RelayResult)  # kept, no Deferred made
        self.assertEqual(self.successResultOf(relay.done).ended_by, A)
        self.assertIsInstance(relay._done, Deferred)

    def test_given_done_is_fired(self) -> None:
        """
        A C{done} handed in (as a backend leg does when its own was asked for before the
        relay started) is the one fired.
        """
        given: Deferred[Any] = Deferred()
        relay = KernelSplice(
            _Transport(),
            _Transport(),
            clock=Clock(),
            pool=PipePool(),
            splice=lambda *a, **k: 0,
            done=given,
        )
        self.assertIs(relay.done, given)
        relay.lost(A)
        relay.lost(B)
        self.assertEqual(self.successResultOf(given).ended_by, A)

    def test_leg_done_is_its_kernel_relays(self) -> None:
        """
        A backend leg that is asked for its C{done} only once its kernel relay runs gets the
        relay's own, made then; asked before, it makes its own and the relay fires it.
        """
        leg = EndpointLeg(Clock(), 30.0, 60.0)
        leg.splice = self.relay()
        self.assertIsNone(leg._done)
        self.assertIs(leg.done, leg.splice.done)
        early = EndpointLeg(Clock(), 30.0, 60.0)
        made = early.done
        self.assertIsInstance(made, Deferred)
        self.assertIs(early.done, made)

"""
Eviction, probation and the returning-client lane over real loopback sockets: a small
L{AdmissionAware} server (a hostile-free toy, not the gateway) behind L{AdmittingFactory},
with clients bound to distinct loopback addresses so each is its own source. The waits are
hang guards only; nothing asserts on time.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from netguard.admission import OVERLOAD_LAG, Admission, AdmissionPolicy, Refusal
from netguard.admitting import Admitted, AdmittingFactory

#: Hang guard for every wait (the test never measures time).
GUARD = 30.0


class LaneServer(LineReceiver):
    """
    Greets at once unless on probation; a first line C{RESUME ok} enters the lane and is
    greeted; C{AUTH} counts as progress.
    """

    delimiter = b"\r\n"

    def __init__(self, admitted: Admitted) -> None:
        self.admitted = admitted
        self.greeted = False

    def connectionMade(self) -> None:
        if self.admitted.probation is None:
            self.greet()

    def greet(self) -> None:
        self.greeted = True
        self.sendLine(b"HELLO")

    def lineReceived(self, line: bytes) -> None:
        if not self.greeted and line == b"RESUME ok":
            if self.admitted.enter_lane() is None:
                self.greet()
        elif line.startswith(b"AUTH"):
            self.admitted.progress()
            self.sendLine(b"CONT")

    def connectionLost(self, reason: Any = None) -> None:
        self.admitted.release()


class LaneFactory(Factory):
    """
    An L{AdmissionAware} factory of L{LaneServer}s (the default eviction handler of
    L{AdmittingFactory} answers and closes).
    """

    def build_admitted(self, addr: Any, admitted: Admitted) -> Protocol:
        return LaneServer(admitted)

    def refused(self, addr: Any, refusal: Refusal) -> dict[str, object]:
        return {}


class Client(Protocol):
    """
    Collects what the server says and fires C{closed} with it at the end.
    """

    def __init__(self, first: bytes = b"") -> None:
        self.first = first
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()
        self.said: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        if self.first:
            self.transport.write(self.first)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.said.called:
            self.said.callback(self.received)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.received)


class RealSocketTests(unittest.TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.factory = AdmittingFactory(LaneFactory(), self.make_admission(0.2))
        self.port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.factory
        )
        self.addCleanup(self.port.stopListening)
        self.clients: list[Client] = []

    def make_admission(self, probation_timeout: float) -> Admission:
        self.admission = Admission(
            AdmissionPolicy(
                max_unauthenticated=3,
                red_soft=3,
                probation_timeout=probation_timeout,
                per_source_burst=100,
            ),
            reactor,
        )
        return self.admission

    @inlineCallbacks
    def connect(self, source: str, first: bytes = b"") -> Any:
        client = Client(first)
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.port.getHost().port, bindAddress=(source, 0)
        )
        yield endpoint.connect(Factory.forProtocol(lambda: client))
        self.clients.append(client)
        self.addCleanup(self.drop, client)
        return client

    def drop(self, client: Client) -> Deferred[bytes] | None:
        if client.closed.called:
            return None
        client.transport.abortConnection()
        return client.closed

    def guarded(self, deferred: Deferred[Any]) -> Deferred[Any]:
        return deferred.addTimeout(GUARD, reactor)

    @inlineCallbacks
    def test_fresh_source_evicts_from_the_biggest_over_sockets(self) -> Any:
        """
        A source holding the whole pool loses its oldest connection without progress to
        a fresh source: that client reads C{ERR BUSY evicted} and the close; the newcomer
        is greeted. The flooding source's next connection waits on probation and is then
        refused C{unauth-cap}; nobody else is touched.
        """
        crowd = []
        for _ in range(3):
            client = yield self.connect("127.0.0.2")
            yield self.guarded(client.said)
            crowd.append(client)
        crowd[0].transport.write(b"AUTH x\r\n")  # progress: ranks after the others
        yield self.guarded(_until(lambda: crowd[0].received.endswith(b"CONT\r\n")))
        newcomer = yield self.connect("127.0.0.3")
        self.assertEqual((yield self.guarded(newcomer.said)), b"HELLO\r\n")
        said = yield self.guarded(crowd[1].closed)
        self.assertEqual(said, b"HELLO\r\nERR BUSY evicted\r\n")
        self.assertFalse(crowd[0].closed.called or crowd[2].closed.called)
        flood = yield self.connect("127.0.0.2")
        said = yield self.guarded(flood.closed)
        self.assertEqual(said, b"ERR BUSY unauth-cap\r\n")
        self.assertFalse(newcomer.closed.called or crowd[0].closed.called)
        self.assertEqual(self.admission.snapshot()["evictions"], 1)

    @inlineCallbacks
    def test_overload_never_refuses_the_lane_over_sockets(self) -> Any:
        """
        Under overload a client that presents a ticket at once enters the lane and is
        greeted; one that does not is refused with the overload reason when its probation
        ends. (A long probation, so that a loaded machine cannot make the ticket late.)
        """
        self.factory.admission = self.make_admission(5.0)
        self.admission.set_overload(OVERLOAD_LAG)
        returning = yield self.connect("127.0.0.2", b"RESUME ok\r\n")
        stranger = yield self.connect("127.0.0.3")
        self.assertEqual((yield self.guarded(returning.said)), b"HELLO\r\n")
        said = yield self.guarded(stranger.closed)
        self.assertEqual(said, b"ERR BUSY overload-lag\r\n")
        self.assertFalse(returning.closed.called)
        snap = self.admission.snapshot()
        self.assertEqual((snap["lane"], snap["probation"]), (1, 0))


def _until(predicate: Any) -> Deferred[None]:
    """
    Fire once C{predicate()} is true, polling the reactor (the caller guards the wait).
    """
    done: Deferred[None] = Deferred()

    def check() -> None:
        if done.called:
            return
        if predicate():
            done.callback(None)
        else:
            reactor.callLater(0.005, check)

    check()
    return done

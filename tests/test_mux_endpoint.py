"""
Tests for L{netguard.client.mux_endpoint}: the multiplexing client endpoint's state machine
against the real gateway protocol over L{iosim}, on a L{Clock}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from netguard.client.mux_endpoint import (
    CLIENT_MAX_STREAMS,
    MuxClientEndpoint,
    SessionUnavailable,
    backoff_delay,
    parse_open_rate,
)
from netguard.client.protocol import Credentials, NGPError, NGPProtocolError
from netguard.client.tickets import TicketStore
from netguard.gateway.factory import GatewayFactory
from netguard.gateway.stream_settings import StreamSettings
from netguard.mux.limits import MuxLimits
from netguard.mux.stream import SessionLost
from tests.test_gateway_protocol import PASSWORD, make_factory

_ADDR = IPv4Address("TCP", "127.0.0.1", 40000)


class FakeGateway:
    """
    A gateway endpoint: each C{connect} builds the real gateway protocol of C{factory} and
    connects it to the client's over L{iosim}; or fails with C{refuse}; or, with C{hold},
    waits until the test calls L{release}.

    @ivar connections: how many connections were made.
    @ivar servers: the gateway protocols, in order.
    """

    def __init__(self, clock: Clock, **limits: Any) -> None:
        self.clock = clock
        self.factory = make_factory(clock, **limits)
        self.pumps: list[iosim.IOPump] = []
        self.servers: list[Any] = []
        self.connections = 0
        self.refuse: Exception | None = None
        self.hold = False
        self.held: list[tuple[Factory, Deferred[Any]]] = []
        self.old = False
        self.rewrite_mux: Callable[[bytes], bytes] | None = None
        self.peer: Any = None

    def connect(self, client_factory: Factory) -> Deferred[Any]:
        if self.refuse is not None:
            return fail(self.refuse)
        if self.hold:
            waiting: Deferred[Any] = Deferred()
            self.held.append((client_factory, waiting))
            return waiting
        return succeed(self._connect(client_factory))

    def release(self) -> None:
        held, self.held = self.held, []
        for client_factory, waiting in held:
            waiting.callback(self._connect(client_factory))

    def _connect(self, client_factory: Factory) -> Any:
        self.connections += 1
        server = self.factory.buildProtocol(None)
        if self.old:
            server.greet = lambda: server.sendLine(
                b"NETGUARD/1 old AUTH=SCRAM-SHA-256 MAXLINE=1024"
            )
        rewrite = self.rewrite_mux
        if rewrite is not None:
            send_line = server.sendLine
            server.sendLine = lambda line: send_line(
                rewrite(line) if line.startswith(b"OK MUX ") else line
            )
        client = client_factory.buildProtocol(_ADDR)
        server_io = iosim.FakeTransport(server, False, peerAddress=self.peer)
        client_io = iosim.FakeTransport(client, True)
        server.makeConnection(server_io)
        client.makeConnection(client_io)
        self.servers.append(server)
        self.pumps.append(iosim.IOPump(client, server, client_io, server_io, False, self.clock))
        return client

    def flush(self) -> None:
        """
        Move bytes until nothing moves (bounded), advancing the clock past the greeting
        delay and the endpoint's zero-delay calls.
        """
        for _ in range(50):
            self.clock.advance(0)
            moved = False
            for pump in self.pumps:
                moved = pump.pump() or moved
            if not moved and not any(
                call.getTime() <= self.clock.seconds() for call in self.clock.getDelayedCalls()
            ):
                return

    def greet(self) -> None:
        """
        Let the greeting delay pass, then flush.
        """
        self.clock.advance(self.factory.config.limits.greeting_delay)
        self.flush()

    def issue_tickets(self, key: bytes) -> None:
        """
        Issue and accept returning-client tickets sealed with C{key} (a new key revokes
        every ticket), to clients seen at C{127.0.0.1}.
        """
        factory = self.factory
        self.factory = GatewayFactory(factory.config, factory.users, self.clock, ticket_key=key)
        self.peer = _ADDR

    def drop(self, index: int = 0) -> None:
        """
        The connection C{index} is lost (as a gateway restart or a network fault).
        """
        self.servers[index].transport.abortConnection()
        self.flush()


class App(Protocol):
    """
    An application protocol that records what arrives and how it ended.
    """

    def __init__(self) -> None:
        self.data = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


class Harness:
    """
    An endpoint to the C{echo} service of a L{FakeGateway}.
    """

    def __init__(
        self,
        test: unittest.TestCase,
        password: str = PASSWORD,
        service: str = "echo",
        random: float = 0.5,
        **options: Any,
    ) -> None:
        self.clock = Clock()
        self.gateway = FakeGateway(self.clock)
        self.apps: list[App] = []
        self.endpoint = MuxClientEndpoint(
            self.clock,
            self.gateway,
            Credentials("alice", password),
            service,
            random=lambda: random,
            **options,
        )
        test.addCleanup(self.endpoint.close)

    def connect(self) -> Deferred[Any]:
        app = App()
        self.apps.append(app)
        return self.endpoint.connect(Factory.forProtocol(lambda: app))

    def settle(self) -> None:
        self.gateway.greet()


class LazySessionTests(unittest.TestCase):
    def test_provides_the_interface(self) -> None:
        """
        The endpoint is an L{IStreamClientEndpoint}.
        """
        h = Harness(self)
        self.assertTrue(verifyObject(IStreamClientEndpoint, h.endpoint))

    def test_no_connection_before_the_first_connect(self) -> None:
        """
        Building the endpoint connects nowhere; the first connect logs in once.
        """
        h = Harness(self)
        self.assertEqual(h.gateway.connections, 0)
        h.connect().addErrback(lambda failure: None)
        self.assertEqual(h.gateway.connections, 1)

    def test_many_connects_share_one_login(self) -> None:
        """
        Ten connects, issued before and after the session is up, all become streams of one
        gateway connection (one login), each relaying its own bytes; bytes the gateway
        sends behind C{OK OPEN} reach the application, never the answer line itself.
        """
        h = Harness(self)
        early = [h.connect() for _ in range(5)]
        h.settle()
        late = [h.connect() for _ in range(5)]
        h.gateway.flush()
        for i, connecting in enumerate(early + late):
            app = self.successResultOf(connecting)
            app.transport.write(b"%d" % i)
        h.gateway.flush()
        self.assertEqual([app.data for app in h.apps], [b"%d" % i for i in range(10)])
        self.assertEqual((h.gateway.connections, h.endpoint.logins), (1, 1))
        self.assertEqual(h.gateway.factory.stats.snapshot()["streams"], 10)


class SessionCapTests(unittest.TestCase):
    def test_a_full_session_opens_another(self) -> None:
        """
        With the gateway's C{STREAMS=2}, a third connect is carried by a second session
        (a second login); the first two share the first.
        """
        h = Harness(self)
        h.gateway.factory.stream_settings = attrs.evolve(StreamSettings(), max_streams=2)
        connects = [h.connect() for _ in range(2)]
        h.settle()
        self.assertEqual([s.max_streams for s in h.endpoint.sessions], [2])
        connects.append(h.connect())
        h.settle()
        for connecting in connects:
            self.assertIsInstance(self.successResultOf(connecting), App)
        self.assertEqual((h.endpoint.logins, len(h.endpoint.sessions)), (2, 2))

    def test_at_max_sessions_a_connect_waits_for_a_stream_to_end(self) -> None:
        """
        With C{max_sessions=1} and C{STREAMS=2}, a third connect opens no second session:
        it waits, and connects once one of the two streams has ended.
        """
        h = Harness(self, max_sessions=1)
        h.gateway.factory.stream_settings = attrs.evolve(StreamSettings(), max_streams=2)
        first, second = h.connect(), h.connect()
        h.settle()
        third = h.connect()
        h.gateway.flush()
        self.assertNoResult(third)
        self.assertEqual(h.endpoint.logins, 1)
        app = self.successResultOf(first)
        app.transport.loseConnection()
        h.gateway.flush()
        self.assertIsInstance(self.successResultOf(third), App)
        self.assertEqual(h.endpoint.logins, 1)
        self.successResultOf(second)

    def test_the_announced_streams_above_the_spec_default_are_used(self) -> None:
        """
        A gateway announcing C{STREAMS=300} (above C{MuxLimits().max_streams}, 256) gets
        300 streams on one session: the 257th to 300th connects are not held back by the
        client's own default (with C{max_sessions=1} they would wait, and fail, otherwise).
        """
        h = Harness(self, max_sessions=1)
        h.gateway.factory.stream_settings = attrs.evolve(
            StreamSettings(), max_streams=300, max_per_user=1000, open_burst=1000
        )
        connects = [h.connect() for _ in range(300)]
        h.settle()
        self.assertEqual([s.max_streams for s in h.endpoint.sessions], [300])
        self.assertEqual(h.endpoint.sessions[0].session.limits.max_streams, 300)
        for connecting in connects:
            self.assertIsInstance(self.successResultOf(connecting), App)
        self.assertEqual(h.endpoint.sessions[0].session.open_streams, 300)
        self.assertEqual(h.endpoint.logins, 1)

    def test_the_client_ceiling_bounds_the_announced_streams(self) -> None:
        """
        With the endpoint's C{max_streams=5} and the gateway's C{STREAMS=6}, a session
        carries 5 streams (the ceiling, exactly); the sixth connect waits, with
        C{max_sessions=1}, until one of them ends.
        """
        h = Harness(self, max_sessions=1, max_streams=5)
        h.gateway.factory.stream_settings = attrs.evolve(StreamSettings(), max_streams=6)
        connects = [h.connect() for _ in range(5)]
        h.settle()
        self.assertEqual([s.max_streams for s in h.endpoint.sessions], [5])
        sixth = h.connect()
        h.gateway.flush()
        self.assertNoResult(sixth)
        self.successResultOf(connects[0]).transport.loseConnection()
        h.gateway.flush()
        self.assertIsInstance(self.successResultOf(sixth), App)
        self.assertEqual(h.endpoint.logins, 1)

    def announced(self, streams: int) -> int:
        """
        @return: the streams a default endpoint's session takes from a gateway announcing
            C{STREAMS=<streams>}.
        """
        h = Harness(self, max_sessions=1)
        h.gateway.factory.stream_settings = attrs.evolve(
            StreamSettings(), max_streams=streams, max_per_user=2 * streams
        )
        connecting = h.connect()
        h.settle()
        self.assertIsInstance(self.successResultOf(connecting), App)
        return h.endpoint.sessions[0].max_streams

    def test_the_default_ceiling_is_1024_streams_a_session(self) -> None:
        """
        A hostile gateway cannot make a default endpoint's session carry (and grant windows
        to) more than L{CLIENT_MAX_STREAMS}, 1,024, streams: C{STREAMS=1024} is taken
        exactly, C{STREAMS=1025} gives 1,024.
        """
        self.assertEqual(CLIENT_MAX_STREAMS, 1024)
        self.assertEqual(self.announced(1024), 1024)
        self.assertEqual(self.announced(1025), 1024)

    def test_a_ceiling_below_one_is_refused(self) -> None:
        """
        C{max_streams} must be at least 1.
        """
        self.assertRaises(
            ValueError,
            MuxClientEndpoint,
            Clock(),
            None,
            Credentials("alice", PASSWORD),
            "echo",
            max_streams=0,
        )


class PaceTests(unittest.TestCase):
    def paced(self, h: Harness, at_once: int, interval: float) -> None:
        """
        Assert that, after the first connect, C{at_once - 1} more connects open at once, the
        next waits an instant before C{interval} still and opens at C{interval}, all on one
        session (the endpoint is built with C{max_sessions=1}, so no second session can take
        the late connect).
        """
        first = h.connect()
        h.settle()
        self.successResultOf(first)
        burst = [h.connect() for _ in range(at_once - 1)]
        late = h.connect()
        h.gateway.flush()
        for connecting in burst:
            self.successResultOf(connecting)
        self.assertNoResult(late)
        h.clock.advance(interval - 1e-6)
        h.gateway.flush()
        self.assertNoResult(late)
        h.clock.advance(2e-6)
        h.gateway.flush()
        self.assertIsInstance(self.successResultOf(late), App)
        self.assertEqual((h.endpoint.logins, len(h.endpoint.sessions)), (1, 1))

    def test_openings_are_paced_below_the_announced_rate(self) -> None:
        """
        A gateway announcing C{OPENRATE=10/4} (its C{[mux]} opening bounds): a session opens
        at most 2 streams at once (half the burst) and then one per 1/9 s (0.9 of the rate):
        the third connect waits, an instant before its turn still, and no second session is
        opened for it.
        """
        h = Harness(self, max_sessions=1)
        h.gateway.factory.stream_settings = StreamSettings(open_rate=10.0, open_burst=4)
        self.paced(h, 2, 1 / 9)
        [session] = h.endpoint.sessions
        self.assertEqual((session.open_rate, session.open_burst), (10.0, 4))

    def test_without_openrate_the_client_assumes_its_own_bounds(self) -> None:
        """
        An older gateway whose C{OK MUX} states no C{OPENRATE=} is assumed to have the
        client's own opening bounds (here 10/s and 4): 2 at once, then one per 1/9 s.
        """
        limits = MuxLimits(open_rate=10.0, open_burst=4, keepalive_interval=None)
        h = Harness(self, limits=limits, max_sessions=1)
        h.gateway.rewrite_mux = lambda line: line.partition(b" OPENRATE=")[0]
        self.paced(h, 2, 1 / 9)

    def test_a_higher_announced_rate_lets_the_client_open_faster(self) -> None:
        """
        A gateway announcing C{OPENRATE=100/40} lets a client whose own bounds are 10/s and
        4 open 20 streams at once and the next 1/90 s later (not 2 and 1/9 s); the gateway
        never ends the session for it.
        """
        limits = MuxLimits(open_rate=10.0, open_burst=4, keepalive_interval=None)
        h = Harness(self, limits=limits, max_sessions=1)
        h.gateway.factory.stream_settings = StreamSettings(open_rate=100.0, open_burst=40)
        self.paced(h, 20, 1 / 90)
        [server] = h.gateway.servers
        self.assertFalse(server.transport.disconnecting)

    def test_a_malformed_openrate_is_ignored_with_a_log_event(self) -> None:
        """
        A hostile gateway announcing a malformed C{OPENRATE=} (zero, an exponent, no burst,
        a negative, too many digits, not a number): the client logs
        C{tunnel.mux.openrate_ignored}, keeps the session and paces with its own bounds.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for bad in (b"0/4", b"1e9/4", b"10/", b"-5/4", b"1234567890/4", b"fast", b"10/0"):
            events.clear()
            limits = MuxLimits(open_rate=10.0, open_burst=4, keepalive_interval=None)
            h = Harness(self, limits=limits, max_sessions=1)
            h.gateway.rewrite_mux = lambda line, bad=bad: (
                line.partition(b" OPENRATE=")[0] + b" OPENRATE=" + bad
            )
            self.paced(h, 2, 1 / 9)
            [ignored] = [e for e in events if e.get("event") == "tunnel.mux.openrate_ignored"]
            self.assertEqual((ignored["rate"], ignored["burst"]), (10.0, 4))
            self.assertEqual([e for e in events if e.get("log_failure")], [])

    def test_a_paced_out_session_brings_in_another(self) -> None:
        """
        Saturation by pace: with C{OPENRATE=10/4} and room for 2 sessions, the connect past
        the first session's tokens starts a second login and is opened on the new session at
        once, not a pace interval later; the next connect past both sessions' tokens waits
        for a token, since no third session may be opened.
        """
        h = Harness(self, max_sessions=2)
        h.gateway.factory.stream_settings = StreamSettings(open_rate=10.0, open_burst=4)
        first = h.connect()
        h.settle()
        second = h.connect()
        h.gateway.flush()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual((h.endpoint.logins, len(h.endpoint.sessions)), (1, 1))
        third = h.connect()
        h.gateway.flush()
        self.assertNoResult(third)
        self.assertEqual(h.endpoint.logins, 2)
        h.settle()
        self.successResultOf(third)
        self.assertEqual(len(h.endpoint.sessions), 2)
        self.assertEqual([s.session.open_streams for s in h.endpoint.sessions], [2, 1])
        fourth = h.connect()  # the new session's second token
        h.gateway.flush()
        self.successResultOf(fourth)
        late = h.connect()
        h.gateway.flush()
        self.assertNoResult(late)
        self.assertEqual(h.endpoint.logins, 2)
        h.clock.advance(1 / 9)
        h.gateway.flush()
        self.successResultOf(late)
        self.assertEqual(h.endpoint.logins, 2)

    def test_parse_open_rate(self) -> None:
        """
        C{OPENRATE=}'s value is C{<rate>/<burst>}: a decimal rate (a fraction allowed) and a
        whole burst, both above zero; anything else is None.
        """
        self.assertEqual(parse_open_rate(b"1000/512"), (1000.0, 512))
        self.assertEqual(parse_open_rate(b"2.5/1"), (2.5, 1))
        self.assertEqual(parse_open_rate(b"999999999/999999999"), (999999999.0, 999999999))
        for bad in (
            b"",
            b"/",
            b"1000",
            b"1000/512/1",
            b"0/1",
            b"0.0/1",
            b"1/0",
            b"1./2",
            b".5/2",
            b"1e3/2",
            b"1000000000/1",
            b"1/1000000000",
            b"+1/2",
            b"1/2 ",
        ):
            self.assertIsNone(parse_open_rate(bad), bad)


class RefusalTests(unittest.TestCase):
    def test_refused_stream_beside_a_live_one(self) -> None:
        """
        With the gateway's per-user stream cap at 1, the second connect fails with the
        gateway's C{ERR BUSY stream-cap-user} as an L{NGPError} (no bytes reach its
        application, which is never connected), while the first stream keeps relaying.
        """
        h = Harness(self)
        h.gateway.factory.stream_settings = attrs.evolve(StreamSettings(), max_per_user=1)
        first = h.connect()
        h.settle()
        live = self.successResultOf(first)
        second = h.connect()
        h.gateway.flush()
        error = self.failureResultOf(second, NGPError).value
        self.assertEqual((error.code, error.text), ("BUSY", "stream-cap-user"))
        self.assertIsNone(h.apps[1].transport)
        live.transport.write(b"still here")
        h.gateway.flush()
        self.assertEqual(live.data, b"still here")
        self.assertIsNone(live.lost)

    def test_unknown_service_fails_the_connect(self) -> None:
        """
        A stream to a service the gateway does not have fails with
        C{NGPError("NO_SUCH_SERVICE")}; the session stays up for the next connect.
        """
        h = Harness(self, service="nope")
        connecting = h.connect()
        h.settle()
        self.assertEqual(self.failureResultOf(connecting, NGPError).value.code, "NO_SUCH_SERVICE")
        self.assertEqual(len(h.endpoint.sessions), 1)

    def test_answer_longer_than_the_bound_resets_the_stream(self) -> None:
        """
        A hostile gateway answering C{OPEN} with 1026 bytes and no line end is still waited
        for; one byte more fails the connect with C{NGPProtocolError("line-too-long")} and
        resets the stream.
        """
        opener, stream = _hand_fed_opener()
        self.assertEqual(stream.written, b"OPEN echo\r\n")
        opener.dataReceived(b"x" * 1026)
        self.assertNoResult(opener.result)
        opener.dataReceived(b"x")
        error = self.failureResultOf(opener.result, NGPProtocolError).value
        self.assertEqual(error.reason, "line-too-long")
        self.assertTrue(stream.aborted)

    def test_junk_answer_resets_the_stream(self) -> None:
        """
        A hostile gateway answering C{OPEN} with a line that is neither C{OK OPEN echo}
        nor C{ERR}: the connect fails with L{NGPProtocolError}, the application is never
        built and the stream is reset.
        """
        opener, stream = _hand_fed_opener()
        opener.dataReceived(b"OK OPEN redis\r\nbackend bytes")
        self.failureResultOf(opener.result, NGPProtocolError)
        self.assertIsNone(opener.app)
        self.assertTrue(stream.aborted)


class _HandStream:
    """
    A stream whose opener the test feeds by hand.
    """

    def __init__(self) -> None:
        self.written = b""
        self.aborted = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def abortConnection(self) -> None:
        self.aborted = True

    def loseConnection(self) -> None:
        self.closed = True

    def getPeer(self) -> IPv4Address:
        return _ADDR


def _hand_fed_opener() -> tuple[Any, _HandStream]:
    from netguard.client.mux_opener import StreamOpener

    opener = StreamOpener("echo", Factory.forProtocol(App), Deferred(), lambda: None)
    stream = _HandStream()
    opener.makeConnection(stream)  # type: ignore[arg-type]
    return opener, stream


class WaitTests(unittest.TestCase):
    def test_connect_waits_for_a_slow_login_within_the_bound(self) -> None:
        """
        A connect issued while the gateway connection is still being made waits: the login
        completing just before C{wait_timeout} still connects it.
        """
        h = Harness(self, wait_timeout=15.0)
        h.gateway.hold = True
        connecting = h.connect()
        greeting_delay = h.gateway.factory.config.limits.greeting_delay
        h.clock.advance(14.999 - greeting_delay)
        self.assertNoResult(connecting)
        h.gateway.release()
        h.settle()  # the greeting comes 0.001 s before the bound
        self.assertIsInstance(self.successResultOf(connecting), App)

    def test_connect_fails_at_the_bound(self) -> None:
        """
        A connect still without a session at C{wait_timeout} fails with
        L{SessionUnavailable}; an instant before it was still waiting.
        """
        h = Harness(self, wait_timeout=15.0)
        h.gateway.hold = True
        connecting = h.connect()
        h.clock.advance(14.999)
        self.assertNoResult(connecting)
        h.clock.advance(0.001)
        self.failureResultOf(connecting, SessionUnavailable)

    def test_cancelled_connect_stops_waiting(self) -> None:
        """
        Cancelling a waiting connect removes it: the later session serves no one for it.
        """
        h = Harness(self)
        h.gateway.hold = True
        connecting = h.connect()
        connecting.cancel()
        self.failureResultOf(connecting)
        h.gateway.hold = False
        h.gateway.release()
        h.gateway.flush()
        self.assertEqual(h.gateway.factory.stats.snapshot().get("streams", 0), 0)


class SessionLossTests(unittest.TestCase):
    def test_loss_ends_streams_with_an_error_and_next_connect_logs_in_again(self) -> None:
        """
        When the gateway connection is lost, each open stream's application sees
        L{SessionLost}; the next connect waits the first backoff delay (random 0.5 of
        0.1 s), then logs in again and connects.
        """
        h = Harness(self)
        one, two = h.connect(), h.connect()
        h.settle()
        apps = [self.successResultOf(one), self.successResultOf(two)]
        h.gateway.drop()
        for app in apps:
            assert app.lost is not None
            app.lost.trap(SessionLost)
        self.assertEqual(h.endpoint.sessions, [])
        again = h.connect()
        h.clock.advance(0.049)
        self.assertEqual(h.gateway.connections, 1)
        h.clock.advance(0.001)
        self.assertEqual(h.gateway.connections, 2)
        h.settle()
        self.assertIsInstance(self.successResultOf(again), App)

    def test_backoff_doubles_with_full_jitter_up_to_the_cap(self) -> None:
        """
        While the gateway refuses connections, logins are retried at delays of
        C{random * min(cap, base * 2**n)}: with random 0.5, base 0.1 and cap 1, after
        0.05, 0.1, 0.2, 0.4, 0.5, 0.5 s (not an instant before each); once the gateway
        accepts, the waiting connect connects.
        """
        h = Harness(self, backoff_cap=1.0, wait_timeout=100.0)
        h.gateway.refuse = ConnectionRefusedError()
        connecting = h.connect()
        delays = []
        for _ in range(6):
            retry = h.endpoint._retry
            assert retry is not None
            delays.append(round(retry.getTime() - h.clock.seconds(), 9))
            logins = h.endpoint.logins
            h.clock.advance(delays[-1] - 1e-6)
            self.assertEqual(h.endpoint.logins, logins)
            h.clock.advance(2e-6)
            self.assertEqual(h.endpoint.logins, logins + 1)
        self.assertEqual(delays, [0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
        h.gateway.refuse = None
        h.clock.advance(0.5)
        h.settle()
        self.assertIsInstance(self.successResultOf(connecting), App)
        self.assertEqual(backoff_delay(0, lambda: 0.5, 0.1, 10.0), 0.05)

    def test_no_waiters_no_retries(self) -> None:
        """
        A failed login with no connect waiting schedules nothing: the endpoint never
        connects on its own.
        """
        h = Harness(self, wait_timeout=1.0)
        h.gateway.refuse = ConnectionRefusedError()
        connecting = h.connect()
        h.clock.advance(1.0)
        self.failureResultOf(connecting, SessionUnavailable)
        logins = h.endpoint.logins
        h.clock.advance(1000)
        self.assertEqual(h.endpoint.logins, logins)


class FatalLoginTests(unittest.TestCase):
    def test_auth_failed_fails_waiting_connects_and_is_not_retried(self) -> None:
        """
        A wrong password: every waiting connect fails with C{NGPError("AUTH_FAILED")} at
        once; no login follows by itself however long we wait; a connect during the backoff
        delay fails at once without a login; after it, one connect makes one new login.
        """
        h = Harness(self, password="wrong")
        waiting = [h.connect() for _ in range(3)]
        h.settle()
        for connecting in waiting:
            self.assertEqual(self.failureResultOf(connecting, NGPError).value.code, "AUTH_FAILED")
        self.assertEqual(h.endpoint.logins, 1)
        self.assertEqual(self.failureResultOf(h.connect(), NGPError).value.code, "AUTH_FAILED")
        self.assertEqual(h.endpoint.logins, 1)
        h.clock.advance(1000)
        self.assertEqual(h.endpoint.logins, 1)
        later = h.connect()
        self.assertEqual(h.endpoint.logins, 2)
        h.settle()
        self.failureResultOf(later, NGPError)


class FallbackTests(unittest.TestCase):
    def test_greeting_without_mux_falls_back_to_one_connection_per_connect(self) -> None:
        """
        An older gateway (no C{MUX=yamux/1} in its greeting): the waiting connect and later
        ones are each carried by a connection of their own (L{NGPClientEndpoint}), and
        work; nothing was sent after the greeting on the probing connection.
        """
        h = Harness(self)
        h.gateway.old = True
        first = h.connect()
        h.settle()  # the probing connection's greeting
        h.settle()  # the fallback connection's
        self.assertIsNotNone(h.endpoint.fallback)
        app = self.successResultOf(first)
        second = h.connect()
        h.settle()
        app2 = self.successResultOf(second)
        app.transport.write(b"one")
        app2.transport.write(b"two")
        h.gateway.flush()
        self.assertEqual((app.data, app2.data), (b"one", b"two"))
        self.assertEqual(h.gateway.connections, 3)
        self.assertEqual(h.gateway.factory.stats.snapshot().get("streams", 0), 0)


class EndpointStringTests(unittest.TestCase):
    def build(self, **extra: str) -> Any:
        import os
        import tempfile

        from netguard.client.endpoint import endpoint_from_string_args

        directory = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, directory)
        path = os.path.join(directory, "pass")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(PASSWORD + "\n")
        keys = {"host": "127.0.0.1", "port": "7700", "service": "echo", "user": "alice"}
        return endpoint_from_string_args(Clock(), password_file=path, **keys, **extra)

    def test_mux_yes_builds_the_multiplexing_endpoint(self) -> None:
        """
        C{mux=yes} in a C{netguard:} string gives a L{MuxClientEndpoint} for the service.
        """
        endpoint = self.build(mux="yes")
        self.assertIsInstance(endpoint, MuxClientEndpoint)
        self.assertEqual(endpoint.service, "echo")

    def test_default_is_multiplexed(self) -> None:
        """
        Without C{mux=} the endpoint multiplexes; C{mux=no} gives the per-connection one.
        """
        from netguard.client.endpoint import NGPClientEndpoint

        self.assertIsInstance(self.build(), MuxClientEndpoint)
        self.assertIsInstance(self.build(mux="no"), NGPClientEndpoint)

    def test_other_mux_values_are_refused(self) -> None:
        """
        C{mux=} takes only yes or no: anything else is a C{ValueError} naming the key.
        """
        error = self.assertRaises(ValueError, self.build, mux="maybe")
        self.assertIn("mux=", str(error))


class ExhaustedIdsTests(unittest.TestCase):
    def test_a_session_out_of_stream_ids_is_retired(self) -> None:
        """
        A session whose stream ids are used up fails that connect with
        L{SessionUnavailable} (nothing raised to the caller) and sends go-away, so the
        next connect is carried by a new session.
        """
        h = Harness(self)
        first = h.connect()
        h.settle()
        self.successResultOf(first)
        [login] = h.endpoint.sessions
        assert login.session is not None
        login.session._next_id = 2**32 + 1
        self.failureResultOf(h.connect(), SessionUnavailable)
        self.assertTrue(login.retired)
        again = h.connect()
        h.settle()
        self.assertIsInstance(self.successResultOf(again), App)
        self.assertEqual(h.endpoint.logins, 2)


class GracefulEndTests(unittest.TestCase):
    def test_after_the_gateways_idle_go_away_the_next_login_is_immediate(self) -> None:
        """
        A session the gateway ends with a normal go-away (here its idle timeout, with no
        stream open) is not a failure: the next connect logs in at once, without the
        backoff delay that follows a lost connection.
        """
        h = Harness(self)
        first = h.connect()
        h.settle()
        app = self.successResultOf(first)
        app.transport.loseConnection()
        h.gateway.flush()
        for _ in range(10000):
            if not h.endpoint.sessions:
                break
            h.clock.advance(5)
            h.gateway.flush()
        self.assertEqual(h.endpoint.sessions, [])
        again = h.connect()
        self.assertEqual(h.gateway.connections, 2)
        h.settle()
        self.assertIsInstance(self.successResultOf(again), App)

    def test_close_fails_waiting_connects_and_cancels_the_login(self) -> None:
        """
        Closing the endpoint while a login is under way fails the waiting connects with
        L{SessionUnavailable} and cancels the gateway connection attempt.
        """
        h = Harness(self)
        h.gateway.hold = True
        connecting = h.connect()
        h.endpoint.close()
        self.failureResultOf(connecting, SessionUnavailable)
        [(_, attempt)] = h.gateway.held
        self.assertTrue(attempt.called)  # cancelled: the login failed, nothing retried
        h.clock.advance(100)
        self.assertEqual((h.endpoint.logins, h.endpoint.sessions), (1, []))


class TicketTests(unittest.TestCase):
    """
    Returning-client tickets against the real gateway protocol: each login gets a ticket
    (pipelined with C{MUX}); the next login presents it and the gateway greets it at once,
    without the greeting delay; a revoked one costs one immediate login without a ticket.
    """

    def harness(self) -> Harness:
        h = Harness(self, max_sessions=1, random=0.0)
        self.assertIsInstance(h.endpoint.tickets, TicketStore)
        h.gateway.issue_tickets(b"k" * 32)
        return h

    @staticmethod
    def kept(h: Harness) -> int:
        """
        How many tickets the endpoint keeps.
        """
        assert h.endpoint.tickets is not None
        return len(h.endpoint.tickets)

    def test_login_gets_a_ticket(self) -> None:
        """
        The first login's C{TICKET} is answered: one ticket issued and kept.
        """
        h = self.harness()
        connecting = h.connect()
        h.settle()
        self.assertIsInstance(self.successResultOf(connecting), App)
        self.assertEqual(self.kept(h), 1)
        self.assertEqual(h.gateway.factory.stats.snapshot()["tickets_issued"], 1)

    def test_next_login_greeted_at_once(self) -> None:
        """
        After the session is lost, the next login presents the ticket and is greeted at
        once: the session is up with no clock advance at all (without a ticket it would wait
        for the greeting delay).
        """
        h = self.harness()
        h.connect()
        h.settle()
        with capturedLogs() as events:
            h.gateway.drop()
            connecting = h.connect()
            h.gateway.flush()
        self.assertIsInstance(self.successResultOf(connecting), App)
        self.assertEqual(h.gateway.connections, 2)
        [accepted] = [e for e in events if e.get("event") == "ticket.accepted"]
        self.assertTrue(accepted["lane"])
        self.assertEqual(self.kept(h), 1)

    def test_late_resume_still_logs_in(self) -> None:
        """
        The gateway's greeting delay passes before our C{RESUME} reaches it (a slow path):
        the gateway answers the late line C{ERR BAD_SEQUENCE} and the login goes on; the
        session comes up, with no failed login.
        """
        h = self.harness()
        h.connect()
        h.settle()
        h.gateway.drop()
        with capturedLogs() as events:
            connecting = h.connect()
            h.clock.advance(h.gateway.factory.config.limits.greeting_delay)
            h.gateway.flush()
        self.assertIsInstance(self.successResultOf(connecting), App)
        names = [e.get("event") for e in events]
        self.assertIn("tunnel.ticket.ignored", names)
        self.assertNotIn("tunnel.mux.login_failed", names)
        self.assertNotIn("ticket.accepted", names)

    def test_without_a_ticket_the_greeting_waits(self) -> None:
        """
        The control: a login with no ticket kept is not greeted before the delay.
        """
        h = self.harness()
        connecting = h.connect()
        h.gateway.flush()
        self.assertNoResult(connecting)
        h.settle()
        self.assertIsInstance(self.successResultOf(connecting), App)

    def test_revoked_ticket_logs_in_again_at_once(self) -> None:
        """
        A new ticket key (as after a reload that replaced it): the presented ticket is
        refused (C{ERR BAD_TICKET revoked}); the endpoint logs in again at once without one,
        not counted as a failed login, and the connect is served.
        """
        h = self.harness()
        h.connect()
        h.settle()
        h.gateway.drop()
        h.gateway.factory.apply_config(
            h.gateway.factory.config, h.gateway.factory.users, ticket_key=b"n" * 32
        )
        with capturedLogs() as events:
            connecting = h.connect()
            h.gateway.flush()
            h.settle()
        self.assertIsInstance(self.successResultOf(connecting), App)
        names = [e.get("event") for e in events]
        self.assertIn("tunnel.ticket.refused", names)
        self.assertNotIn("tunnel.mux.login_failed", names)
        self.assertEqual(h.gateway.connections, 3)
        self.assertEqual(self.kept(h), 1)


class _TLSRefusingGateway:
    """
    A gateway endpoint whose every connection is lost as a TLS handshake is when the
    server's certificate fails verification (or, with another C{reason}, as any lost
    connection): the login's protocol is connected, then loses its connection with it.
    """

    def __init__(self, reason: Failure) -> None:
        self.reason = reason
        self.connections = 0

    def connect(self, factory: Factory) -> Deferred[Any]:
        from twisted.internet.testing import StringTransport

        self.connections += 1
        protocol = factory.buildProtocol(_ADDR)
        protocol.makeConnection(StringTransport())
        protocol.connectionLost(self.reason)
        return succeed(protocol)


class TLSVerificationTests(unittest.TestCase):
    """
    A gateway whose certificate fails our verification is refused at once and not
    retried, as on the per-connection path.
    """

    def refused_by(self, error: Exception) -> tuple[MuxClientEndpoint, Clock, Any, Any]:
        clock = Clock()
        gateway = _TLSRefusingGateway(Failure(error))
        endpoint = MuxClientEndpoint(
            clock, gateway, Credentials("alice", PASSWORD), "echo", random=lambda: 0.5
        )
        self.addCleanup(endpoint.close)
        return endpoint, clock, gateway, endpoint.connect(Factory.forProtocol(App))

    def assert_fatal(self, error: Exception) -> None:
        endpoint, clock, gateway, connecting = self.refused_by(error)
        failure = self.failureResultOf(connecting, NGPProtocolError)
        self.assertEqual(failure.value.reason, "tls-verification")
        self.assertIn("connection closed during the handshake", str(failure.value))
        self.assertIn(str(error), str(failure.value))
        # A connect during the backoff delay fails at once, with no new handshake.
        again = self.failureResultOf(endpoint.connect(Factory.forProtocol(App)))
        self.assertEqual(again.value.reason, "tls-verification")
        clock.advance(endpoint.wait_timeout)
        self.assertEqual((gateway.connections, endpoint.logins), (1, 1))

    def test_pin_mismatch_fails_at_once(self) -> None:
        """
        A key that matches no configured pin (L{TLSVerificationError}): the waiting connect
        fails at once with C{NGPProtocolError(reason="tls-verification")}, one handshake.
        """
        from netguard.tls.errors import TLSVerificationError

        self.assert_fatal(
            TLSVerificationError("server key pin-sha256 AAAA= matches no configured pin")
        )

    def test_untrusted_certificate_fails_at_once(self) -> None:
        """
        OpenSSL's own refusal of the chain (C{certificate verify failed}) is fatal too.
        """
        from OpenSSL.SSL import Error

        self.assert_fatal(
            Error([("SSL routines", "", "certificate verify failed")])  # type: ignore[no-untyped-call]
        )

    def test_other_tls_errors_are_retried(self) -> None:
        """
        A TLS error that is not a verification failure (the gateway closed during the
        handshake, as a flooded one may) stays temporary: the connect waits and another
        login is made after the backoff delay.
        """
        from OpenSSL.SSL import Error

        endpoint, clock, gateway, connecting = self.refused_by(
            Error([("SSL routines", "", "unexpected eof while reading")])  # type: ignore[no-untyped-call]
        )
        self.assertNoResult(connecting)
        clock.advance(endpoint.backoff_base)
        self.assertEqual(gateway.connections, 2)
        clock.advance(endpoint.wait_timeout)
        self.failureResultOf(connecting, SessionUnavailable)


class _ConnectsAnyway(FakeGateway):
    """
    A hostile gateway endpoint that fails C{connect} yet goes on with the connection (as
    Twisted's connectors do when they cannot arm their timeout, say a negative one): with
    C{built_first} the login's protocol is connected to the real gateway before the failure;
    otherwise the connection arrives later (L{arrive}).
    """

    def __init__(self, clock: Clock, built_first: bool) -> None:
        super().__init__(clock)
        self.built_first = built_first
        self.factories: list[Factory] = []
        self.built: list[Any] = []

    def connect(self, client_factory: Factory) -> Deferred[Any]:
        self.factories.append(client_factory)
        if self.built_first:
            self.built.append(self._connect(client_factory))
        return fail(AssertionError("-5.0 is not greater than or equal to 0 seconds"))

    def arrive(self) -> None:
        for factory in self.factories:
            if factory.buildProtocol(_ADDR) is None:
                continue
            self.built.append(self._connect(factory))


class AbandonedLoginTests(unittest.TestCase):
    """
    A login whose C{connect} failed or was given up never becomes a session that the
    endpoint does not hold: its connection is closed, or never made.
    """

    def run_endpoint(self, built_first: bool) -> tuple[_ConnectsAnyway, Deferred[Any]]:
        clock = Clock()
        gateway = _ConnectsAnyway(clock, built_first)
        endpoint = MuxClientEndpoint(
            clock, gateway, Credentials("alice", PASSWORD), "echo", random=lambda: 0.5
        )
        self.addCleanup(endpoint.close)
        connecting = endpoint.connect(Factory.forProtocol(App))
        # Every retry within the wait bound fails the same way.
        for _ in range(200):
            gateway.greet()
            clock.advance(0.1)
        self.failureResultOf(connecting, SessionUnavailable)
        endpoint.close()
        gateway.greet()
        self.assertGreater(len(gateway.factories), 2)
        return gateway, connecting

    def test_connection_made_before_the_failure_is_closed(self) -> None:
        """
        Each login connected before its C{connect} failed is closed before it logs in:
        the real gateway saw no login and holds no session, and no such login ever
        reached the multiplexed state.
        """
        gateway, _ = self.run_endpoint(built_first=True)
        self.assertEqual(len(gateway.built), len(gateway.factories))
        self.assertEqual(gateway.factory.sessions, set())
        self.assertEqual(gateway.factory.stats.snapshot().get("auth_ok", 0), 0)
        self.assertTrue(all(login.mux is None for login in gateway.built))

    def test_connection_after_the_failure_gets_no_protocol(self) -> None:
        """
        A connection that arrives after C{connect} failed gets no protocol (Twisted then
        closes it): no login is made on it.
        """
        gateway, _ = self.run_endpoint(built_first=False)
        gateway.arrive()
        gateway.greet()
        self.assertEqual(gateway.built, [])

    def test_cancelled_login_is_closed(self) -> None:
        """
        A login under way when the endpoint is closed (its connect cancelled after the
        connection was made) is closed: the gateway holds no session afterwards.
        """
        h = Harness(self)
        h.connect().addErrback(lambda failure: None)
        self.assertEqual(h.gateway.connections, 1)
        h.endpoint.close()
        h.settle()
        self.assertEqual(h.gateway.factory.sessions, set())
        self.assertEqual(h.endpoint.sessions, [])

"""
Tests for L{netguard.gateway.streams} and the C{MUX} upgrade of
L{netguard.gateway.protocol}: a logged-in NGP/1 session upgraded to a yamux session, driven
by the core's own L{MuxSession} in the client role, on Twisted fakes.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.auth.users import UserStore
from netguard.config import load_config
from netguard.config.model import ConfigError, ServiceConfig
from netguard.gateway.factory import GatewayFactory
from netguard.gateway.protocol import SessionState
from netguard.gateway.stream_settings import StreamSettings
from netguard.gateway.streams import REFUSALS_BURST, REFUSALS_PER_SECOND, StreamCaps
from netguard.mux import frames
from netguard.mux.frames import Flag, FrameType
from netguard.mux.limits import MuxLimits
from netguard.mux.session import MuxSession
from netguard.ops.metrics import render_metrics
from netguard.outbound.backends import EchoLeg
from netguard.peer.checks import Verdict
from tests.mux_fakes import Recorder
from tests.test_gateway_protocol import ClientServerTests, Session
from tests.test_metrics import parse_exposition

_PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class _ClientPipe:
    """
    The client session's transport: what it writes is kept for the gateway.
    """

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.out.extend(data)

    def loseConnection(self) -> None:
        self.closed = True

    def abortConnection(self) -> None:
        self.closed = True

    def getPeer(self) -> IPv4Address:
        return _PEER

    def getHost(self) -> IPv4Address:
        return _PEER


class Mux:
    """
    A gateway session upgraded with C{MUX yamux/1}, and a client L{MuxSession} wired to it.
    """

    def __init__(self, test: unittest.TestCase, settings: StreamSettings | None = None) -> None:
        self.s = Session(test)
        self.factory = self.s.factory
        if settings is not None:
            self.factory.stream_settings = settings
        config = self.factory.config
        services = dict(config.services)
        services["secret"] = ServiceConfig("secret", "builtin:echo", groups=("nobody",))
        services["slow"] = ServiceConfig("slow", "tcp:host=127.0.0.1:port=9", users=("*",))
        services["echo2"] = ServiceConfig("echo2", "builtin:echo", users=("*",))
        self.factory.config = attrs.evolve(config, services=services)
        self.backends: list[Deferred[Any]] = []
        real_open = self.factory.open_backend

        def open_backend(service: Any, origin: Any = None) -> Deferred[Any]:
            if service.name != "slow":
                return real_open(service, origin)
            waiting: Deferred[Any] = Deferred()
            self.backends.append(waiting)
            return waiting

        self.factory.open_backend = open_backend  # type: ignore[method-assign]
        self.s.login()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.pipe = _ClientPipe()
        self.client = MuxSession(
            self.pipe,
            client=True,
            clock=self.s.clock,
            accept=lambda stream: None,
            limits=MuxLimits(keepalive_interval=None),
        )

    def upgrade(self, extra: bytes = b"") -> bytes:
        """
        Send C{MUX yamux/1} (and C{extra} in the same read); return the reply line.
        """
        self.s.proto.dataReceived(b"MUX yamux/1\r\n" + extra)
        out = self.s.transport.value()
        line, _, self.rest = out.partition(b"\r\n")
        self.s.transport.clear()
        return line

    def pump(self) -> None:
        """
        Move bytes both ways until neither side has anything to say (bounded).
        """
        for _ in range(1000):
            moved = False
            if self.pipe.out:
                out, self.pipe.out = self.pipe.out, []
                self.s.proto.dataReceived(b"".join(out))
                moved = True
            value = self.s.transport.value()
            if value:
                self.s.transport.clear()
                self.client.data_received(value)
                moved = True
            if not moved:
                return
        raise AssertionError("the two sides never went quiet")

    def open(self, first: bytes) -> Recorder:
        """
        Open a stream, write C{first} at once, and pump.
        """
        recorder = Recorder()
        stream = self.client.open_stream(recorder)  # type: ignore[arg-type]
        if first:
            stream.write(first)
        self.pump()
        return recorder

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]


class UpgradeTests(unittest.TestCase):
    def test_mux_answers_streams_and_window(self):
        """
        C{MUX yamux/1} after login answers C{OK MUX yamux/1 STREAMS=<n> WINDOW=<bytes>
        OPENRATE=<rate>/<burst>} with the configured stream cap, the spec's window and the
        default opening bounds, and the session is in the MUX state.
        """
        m = Mux(self, StreamSettings(max_streams=7))
        self.assertEqual(m.upgrade(), b"OK MUX yamux/1 STREAMS=7 WINDOW=262144 OPENRATE=1000/512")
        self.assertIs(m.s.proto.state, SessionState.MUX)

    def test_mux_announces_a_fractional_open_rate_exactly(self):
        """
        A rate with a fraction is announced as its shortest exact decimal, never with an
        exponent: C{OPENRATE=2.5/3}, and the largest allowed rate as C{100000}.
        """
        m = Mux(self, StreamSettings(open_rate=2.5, open_burst=3))
        self.assertTrue(m.upgrade().endswith(b" OPENRATE=2.5/3"))
        m = Mux(self, StreamSettings(open_rate=100000.0, open_burst=100000))
        self.assertTrue(m.upgrade().endswith(b" OPENRATE=100000/100000"))

    def test_configured_open_burst_bound_and_one_past(self):
        """
        The gateway enforces the configured opening bounds: with C{open_burst = 3} at one
        opening a second, three SYNs at once are answered and a fourth at the same instant
        ends the session with go-away (C{open-rate}), without a traceback.
        """
        m = Mux(self, StreamSettings(open_rate=1.0, open_burst=3))
        m.upgrade()
        body = b"OPEN echo\r\n"
        syns = [
            frames.encode(FrameType.DATA, Flag.SYN, stream_id, len(body)) + body
            for stream_id in (1, 3, 5, 7)
        ]
        m.s.proto.dataReceived(b"".join(syns[:3]))
        self.assertEqual(m.named("mux.end"), [])
        self.assertFalse(m.s.transport.disconnecting)
        m.s.proto.dataReceived(syns[3])
        [ended] = m.named("mux.end")
        self.assertEqual(ended["violation"], "open-rate")
        self.assertTrue(m.s.transport.disconnecting)
        self.assertEqual([e for e in m.events if e.get("log_failure")], [])

    def test_session_sends_its_frames_at_once(self):
        """
        The upgraded connection gets TCP_NODELAY: a stream's request and answer are small
        frames that must not wait for Nagle's algorithm and the peer's delayed ACK.
        """
        m = Mux(self)
        calls: list[bool] = []
        m.s.transport.setTcpNoDelay = calls.append  # type: ignore[attr-defined]
        m.upgrade()
        self.assertEqual(calls, [True])

    def test_mux_before_login_is_auth_required(self):
        """
        C{MUX} before authentication is refused C{AUTH_REQUIRED} and the line phase goes on.
        """
        s = Session(self)
        [reply] = s.send(b"MUX yamux/1")
        self.assertTrue(reply.startswith(b"ERR AUTH_REQUIRED"), reply)
        self.assertEqual(s.send(b"PING"), [b"PONG"])

    def test_unknown_framing_is_refused_and_the_line_phase_goes_on(self):
        """
        An unknown framing name is refused C{UNSUPPORTED_FRAMING}; the session stays in the
        line phase (C{OPEN} still works).
        """
        s = Session(self)
        s.login()
        [reply] = s.send(b"MUX h2")
        self.assertTrue(reply.startswith(b"ERR UNSUPPORTED_FRAMING"), reply)
        self.assertIs(s.proto.state, SessionState.AUTHENTICATED)
        self.assertEqual(s.send(b"OPEN echo"), [b"OK OPEN echo"])

    def test_frames_in_the_same_read_as_the_mux_line_are_the_sessions(self):
        """
        Frames that arrive in the same read as the C{MUX} line are handed to the session,
        in order, none lost: a SYN with an C{OPEN echo} line and data right behind it.
        """
        m = Mux(self)
        body = b"OPEN echo\r\nhello"
        syn = frames.encode(FrameType.DATA, Flag.SYN, 1, len(body)) + body
        self.assertEqual(
            m.upgrade(syn), b"OK MUX yamux/1 STREAMS=256 WINDOW=262144 OPENRATE=1000/512"
        )
        # The client session did not open stream 1 itself: read the raw answer instead.
        payloads = b""
        offset = 0
        while offset < len(m.rest):
            header = frames.decode(m.rest, offset)
            offset += frames.HEADER_SIZE
            if header.type is FrameType.DATA:
                payloads += m.rest[offset : offset + header.length]
                offset += header.length
        self.assertEqual(payloads, b"OK OPEN echo\r\nhello")


class StreamOpenTests(unittest.TestCase):
    def setUp(self):
        self.m = Mux(self)
        self.m.upgrade()

    def test_open_echo_relays_bytes_after_the_line(self):
        """
        A stream's C{OPEN echo} line is answered C{OK OPEN echo} and the bytes written right
        behind it are the relay's first bytes, in order.
        """
        r = self.m.open(b"OPEN echo\r\nfirst bytes\x00\r\n")
        self.assertEqual(r.received, b"OK OPEN echo\r\nfirst bytes\x00\r\n")
        assert r.transport is not None
        r.transport.write(b"more")
        self.m.pump()
        self.assertEqual(r.received, b"OK OPEN echo\r\nfirst bytes\x00\r\nmore")
        self.assertEqual(self.m.factory.stats.snapshot()["streams"], 1)
        self.assertEqual(self.m.factory.stats.snapshot()["streams_active"], 1)
        [opened] = self.m.named("stream.open")
        self.assertEqual((opened["service"], opened["user"]), ("echo", "alice"))

    def test_line_split_across_frames(self):
        """
        The C{OPEN} line may arrive in any number of frames.
        """
        recorder = Recorder()
        stream = self.m.client.open_stream(recorder)  # type: ignore[arg-type]
        for byte in b"OPEN echo\n":
            stream.write(bytes([byte]))
            self.m.pump()
        stream.write(b"x")
        self.m.pump()
        self.assertEqual(recorder.received, b"OK OPEN echo\r\nx")

    def test_unknown_service_refused_then_fin_session_goes_on(self):
        """
        C{OPEN nope} is answered C{ERR NO_SUCH_SERVICE} and FIN on that stream only; a
        stream beside it keeps relaying, and a new one opens.
        """
        live = self.m.open(b"OPEN echo\r\n")
        bad = self.m.open(b"OPEN nope\r\n")
        self.assertTrue(bad.received.startswith(b"ERR NO_SUCH_SERVICE "), bad.received)
        self.assertTrue(bad.received.endswith(b"\r\n"))
        self.assertTrue(bad.eof)
        assert live.transport is not None
        live.transport.write(b"still here")
        self.m.pump()
        self.assertEqual(live.received, b"OK OPEN echo\r\nstill here")
        again = self.m.open(b"OPEN echo\r\n")
        self.assertEqual(again.received, b"OK OPEN echo\r\n")
        [refused] = self.m.named("stream.refused")
        self.assertEqual(refused["code"], "NO_SUCH_SERVICE")

    def test_not_authorized(self):
        """
        A service the user may not open is refused C{NOT_AUTHORIZED} on the stream, logged
        C{session.denied} as C{OPEN} is.
        """
        r = self.m.open(b"OPEN secret\r\n")
        self.assertTrue(r.received.startswith(b"ERR NOT_AUTHORIZED "), r.received)
        self.assertEqual(len(self.m.named("session.denied")), 1)

    def test_hostile_junk_before_open(self):
        """
        A hostile client that sends binary junk instead of an C{OPEN} line gets
        C{ERR BAD_SYNTAX} and FIN on that stream; the session goes on.
        """
        r = self.m.open(b"\x00\xff GET / HTTP/1.1\r\n")
        self.assertTrue(r.received.startswith(b"ERR BAD_SYNTAX "), r.received)
        self.assertIs(self.m.s.proto.state, SessionState.MUX)
        self.assertIsNone(self.m.client.ended)

    def test_refused_first_line_logged_without_a_ticket_or_a_proof(self):
        """
        A stream whose first line is a C{RESUME} ticket or a C{CONT} proof (a client that
        mixed up its lines) is refused C{BAD_SYNTAX}, and C{stream.refused} shows neither.
        """
        for line in (b"RESUME ATHBw6h0UJNEy0tXWXMt\r\n", b"CONT Yz1iaXdzLHI9dW5hQmFL\r\n"):
            r = self.m.open(line)
            self.assertTrue(r.received.startswith(b"ERR BAD_SYNTAX "), r.received)
        logged = [e["offending"] for e in self.m.named("stream.refused")]
        self.assertEqual(logged, ["RESUME <ticket>", "CONT <scram>"])

    def test_open_line_outside_printable_ascii_is_bad_syntax(self):
        """
        An C{OPEN} line whose service name holds bytes outside printable ASCII (a control
        byte, UTF-8) is C{ERR BAD_SYNTAX}, as on a connection's line phase, not
        C{NO_SUCH_SERVICE}; a printable unknown name is still C{NO_SUCH_SERVICE}.
        """
        for name in (b"ec\x01ho", b"\xc3\xa9cho", b"echo\x7f"):
            r = self.m.open(b"OPEN " + name + b"\r\n")
            self.assertTrue(r.received.startswith(b"ERR BAD_SYNTAX "), (name, r.received))
        r = self.m.open(b"OPEN nope\r\n")
        self.assertTrue(r.received.startswith(b"ERR NO_SUCH_SERVICE "), r.received)
        self.assertIsNone(self.m.client.ended)

    def test_line_at_the_bound_is_read(self):
        """
        An C{OPEN} line of exactly MAXLINE bytes is read (and answered for its service).
        """
        limit = self.m.factory.framing_limits.max_line_length
        name = b"x" * (limit - len(b"OPEN "))
        r = self.m.open(b"OPEN " + name + b"\r\n")
        self.assertTrue(r.received.startswith(b"ERR NO_SUCH_SERVICE "), r.received)

    def test_line_one_past_the_bound_is_too_long(self):
        """
        One byte past MAXLINE (no newline needed) is C{ERR LINE_TOO_LONG}.
        """
        limit = self.m.factory.framing_limits.max_line_length
        r = self.m.open(b"O" * (limit + 1))
        self.assertTrue(r.received.startswith(b"ERR LINE_TOO_LONG "), r.received)

    def test_open_deadline(self):
        """
        A stream without a complete C{OPEN} line within C{open_timeout} is refused
        C{ERR TIMEOUT}; just before the deadline it is still waiting.
        """
        r = self.m.open(b"OPEN ec")
        timeout = self.m.factory.stream_settings.open_timeout
        self.m.s.clock.advance(timeout - 0.001)
        self.m.pump()
        self.assertEqual(r.received, b"")
        self.m.s.clock.advance(0.001)
        self.m.pump()
        self.assertTrue(r.received.startswith(b"ERR TIMEOUT "), r.received)

    def test_fin_before_line_is_refused(self):
        """
        A stream half-closed before its line is answered C{ERR BAD_SYNTAX} and closed.
        """
        recorder = Recorder()
        stream = self.m.client.open_stream(recorder)  # type: ignore[arg-type]
        stream.write(b"OPEN")
        stream.loseWriteConnection()
        self.m.pump()
        self.assertTrue(recorder.received.startswith(b"ERR BAD_SYNTAX "), recorder.received)

    def test_half_close_per_stream(self):
        """
        The client's FIN on one stream reaches the backend (echo: passed back as FIN after
        the echoed bytes); another stream goes on relaying.
        """
        one = self.m.open(b"OPEN echo\r\nbye")
        two = self.m.open(b"OPEN echo\r\n")
        assert one.transport is not None and two.transport is not None
        one.transport.loseWriteConnection()
        self.m.pump()
        self.assertEqual(one.received, b"OK OPEN echo\r\nbye")
        self.assertTrue(one.eof)
        two.transport.write(b"ping")
        self.m.pump()
        self.assertEqual(two.received, b"OK OPEN echo\r\nping")
        self.assertFalse(two.eof)
        [closed] = self.m.named("stream.close")
        self.assertEqual((closed["bytes_up"], closed["bytes_down"]), (3, 3))
        self.assertEqual(self.m.factory.stats.snapshot()["streams_active"], 1)


class BackendTests(unittest.TestCase):
    def setUp(self):
        self.m = Mux(self)
        self.m.upgrade()

    def test_backend_unavailable_on_the_stream(self):
        """
        A backend that cannot be reached is C{ERR BACKEND_UNAVAILABLE} on that stream only.
        """
        r = self.m.open(b"OPEN slow\r\n")
        self.m.backends[0].errback(Failure(ConnectionRefusedError()))
        self.m.pump()
        self.assertTrue(r.received.startswith(b"ERR BACKEND_UNAVAILABLE "), r.received)
        self.assertIsNone(self.m.client.ended)

    def test_bytes_held_while_the_backend_connects(self):
        """
        Bytes behind the line and in later frames wait while the backend connects, then are
        relayed first, in order.
        """
        r = self.m.open(b"OPEN slow\r\none,")
        assert r.transport is not None
        r.transport.write(b"two")
        self.m.pump()
        self.assertEqual(r.received, b"")
        self.m.backends[0].callback(EchoLeg(self.m.s.clock, 30.0, 3600.0))
        self.m.pump()
        self.assertEqual(r.received, b"OK OPEN slow\r\none,two")

    def test_a_relaying_stream_keeps_no_pending_list(self):
        """
        The list of bytes held while the backend connects exists only then: a stream
        relaying (with or without bytes held on the way) keeps none, so an idle stream
        costs no list.
        """
        held = self.m.open(b"OPEN slow\r\none,")
        plain = self.m.open(b"OPEN echo\r\n")
        self.m.backends[0].callback(EchoLeg(self.m.s.clock, 30.0, 3600.0))
        self.m.pump()
        self.assertEqual(
            (held.received, plain.received), (b"OK OPEN slow\r\none,", b"OK OPEN echo\r\n")
        )
        streams = self.m.s.proto._gate.streams
        self.assertEqual(len(streams), 2)
        self.assertEqual([stream._pending for stream in streams], [None, None])

    def test_one_logger_per_session(self):
        """
        The session's streams log through one logger (not a new one built per log line),
        with the namespace and source a class attribute would give: the gate.
        """
        self.m.open(b"OPEN echo\r\n")
        self.m.open(b"OPEN echo\r\n")
        gate = self.m.s.proto._gate
        self.assertIs(gate.log, gate.log)
        opened = self.m.named("stream.open")
        self.assertEqual(len(opened), 2)
        self.assertIs(opened[0]["log_logger"], opened[1]["log_logger"])
        self.assertIs(opened[0]["log_source"], gate)
        self.assertEqual(opened[0]["log_namespace"], "netguard.gateway.streams.StreamGate")

    def test_bytes_behind_open_let_go_when_the_stream_ends_while_connecting(self):
        """
        Bytes a client sent behind its C{OPEN} line, held while the backend connects, are
        let go as soon as the stream is reset (they can never be relayed), not kept until
        the connection attempt ends: a session cannot hold more than its credit by opening
        streams with data to a slow backend and resetting them.
        """
        r = self.m.open(b"OPEN slow\r\n" + b"x" * 1000)
        assert r.transport is not None
        self.m.pump()
        (stream,) = self.m.s.proto._gate.streams
        self.assertEqual(b"".join(stream._pending), b"x" * 1000)
        r.transport.abortConnection()
        self.m.pump()
        self.assertIsNone(stream._pending)
        self.assertEqual(stream._line, b"")
        leg = EchoLeg(self.m.s.clock, 30.0, 3600.0)
        self.m.backends[0].callback(leg)
        self.assertEqual(self.m.s.proto._gate.session.open_streams, 0)

    def test_rapid_reset_counts_until_the_backend_attempt_ends(self):
        """
        A stream reset while its backend connects still counts against the session's
        stream cap until the backend attempt ends; then it is released.
        """
        r = self.m.open(b"OPEN slow\r\n")
        assert r.transport is not None
        r.transport.abortConnection()
        self.m.pump()
        server = self.m.s.proto._gate.session
        self.assertEqual(server.open_streams, 1)
        leg = EchoLeg(self.m.s.clock, 30.0, 3600.0)
        self.m.backends[0].callback(leg)
        self.assertEqual(server.open_streams, 0)


class CapTests(unittest.TestCase):
    def test_per_user_cap_at_the_bound_and_one_past(self):
        """
        With C{max_per_user=2}, two streams of the user open and the third is refused
        C{ERR BUSY stream-cap-user}; once one ends, a new one opens.
        """
        m = Mux(self, StreamSettings(max_per_user=2))
        m.upgrade()
        one = m.open(b"OPEN echo\r\n")
        two = m.open(b"OPEN echo2\r\n")
        three = m.open(b"OPEN echo\r\n")
        self.assertEqual(one.received, b"OK OPEN echo\r\n")
        self.assertEqual(two.received, b"OK OPEN echo2\r\n")
        self.assertEqual(three.received, b"ERR BUSY stream-cap-user\r\n")
        assert one.transport is not None
        one.transport.loseConnection()
        m.pump()
        self.assertEqual(m.open(b"OPEN echo\r\n").received, b"OK OPEN echo\r\n")

    def test_per_service_cap_at_the_bound_and_one_past(self):
        """
        With C{max_per_service=1}, a second stream of the same service is refused
        C{ERR BUSY stream-cap-service}, another service still opens.
        """
        m = Mux(self, StreamSettings(max_per_service=1))
        m.upgrade()
        self.assertEqual(m.open(b"OPEN echo\r\n").received, b"OK OPEN echo\r\n")
        self.assertEqual(m.open(b"OPEN echo\r\n").received, b"ERR BUSY stream-cap-service\r\n")
        self.assertEqual(m.open(b"OPEN echo2\r\n").received, b"OK OPEN echo2\r\n")

    def test_session_stream_cap_resets_one_past(self):
        """
        With C{max_streams=2}, a third SYN while two are open is reset by the session.
        """
        m = Mux(self, StreamSettings(max_streams=2))
        m.upgrade()
        m.open(b"OPEN echo\r\n")
        m.open(b"OPEN echo\r\n")
        third = m.open(b"OPEN echo\r\n")
        self.assertEqual(third.received, b"")
        self.assertIsNotNone(third.reason)

    def test_syn_flood_is_bounded(self):
        """
        A hostile client that opens streams in a flood without ever sending a line holds at
        most C{max_streams} of them; each is refused C{TIMEOUT} at the open deadline and
        the session is left with none.
        """
        m = Mux(self, StreamSettings(max_streams=16))
        m.upgrade()
        server = m.s.proto._gate.session
        for stream_id in range(1, 2 * 40, 2):
            m.s.proto.dataReceived(frames.encode(FrameType.WINDOW_UPDATE, Flag.SYN, stream_id, 0))
        self.assertEqual(server.open_streams, 16)
        m.s.clock.advance(m.factory.stream_settings.open_timeout)
        self.assertEqual(len(m.named("stream.refused")), 16)

    def test_caps_keep_no_key_once_back_to_zero(self):
        """
        L{StreamCaps} forgets a user and a service when their count is back to 0.
        """
        caps = StreamCaps()
        settings = StreamSettings()
        self.assertIsNone(caps.take("alice", "echo", settings))
        caps.give("alice", "echo")
        self.assertEqual((caps.users, caps.services), ({}, {}))


class RefusalBoundTests(unittest.TestCase):
    """
    Refusals a client earns on its streams are bounded as the line phase bounds its errors.
    """

    def setUp(self) -> None:
        self.m = Mux(self)
        self.m.upgrade()

    def refuse(self, count: int) -> list[Recorder]:
        streams = [self.m.open(b"OPEN nope\r\n") for _ in range(count)]
        for r in streams:
            self.assertTrue(r.received.startswith(b"ERR NO_SUCH_SERVICE "), r.received)
        return streams

    def test_refusals_at_the_bound_and_one_past(self):
        """
        A hostile client asking for services that do not exist: C{REFUSALS_BURST} refused
        streams leave the session alone; the one past it ends the session with a go-away
        (protocol error) and one C{mux.refusals_exceeded} line, however many follow.
        """
        self.refuse(REFUSALS_BURST)
        self.assertIsNone(self.m.client.ended)
        self.assertEqual(self.m.named("mux.refusals_exceeded"), [])
        self.refuse(1)
        [exceeded] = self.m.named("mux.refusals_exceeded")
        self.assertEqual(exceeded["streams_refused"], REFUSALS_BURST + 1)
        self.assertIsNotNone(self.m.client.ended)

    def test_bucket_refills(self):
        """
        Refusals are refilled at C{REFUSALS_PER_SECOND}: a client that keeps below that
        rate after its burst keeps its session.
        """
        self.refuse(REFUSALS_BURST)
        self.m.s.clock.advance(1.0 / REFUSALS_PER_SECOND)
        self.refuse(1)
        self.assertIsNone(self.m.client.ended)
        self.assertEqual(self.m.named("mux.refusals_exceeded"), [])

    def test_refusals_of_the_gateways_state_are_not_counted(self):
        """
        A backend that is down is not the client's doing: more than C{REFUSALS_BURST}
        C{BACKEND_UNAVAILABLE} answers leave the session alone.
        """
        for i in range(REFUSALS_BURST + 2):
            r = self.m.open(b"OPEN slow\r\n")
            self.m.backends[i].errback(Failure(ConnectionRefusedError()))
            self.m.pump()
            self.assertTrue(r.received.startswith(b"ERR BACKEND_UNAVAILABLE "), r.received)
        self.assertIsNone(self.m.client.ended)

    def test_own_stream_cap_refusals_are_counted(self):
        """
        A user holding its own stream cap who keeps opening streams earns those
        C{BUSY stream-cap-user} refusals: C{REFUSALS_BURST} leave the session alone, the one
        past it ends the session (go-away, protocol error), so the refusal log cannot be
        driven at the opening rate.
        """
        m = Mux(self, StreamSettings(max_per_user=1))
        m.upgrade()
        self.assertEqual(m.open(b"OPEN echo\r\n").received, b"OK OPEN echo\r\n")
        for _ in range(REFUSALS_BURST):
            self.assertEqual(m.open(b"OPEN echo\r\n").received, b"ERR BUSY stream-cap-user\r\n")
        self.assertIsNone(m.client.ended)
        self.assertEqual(m.named("mux.refusals_exceeded"), [])
        m.open(b"OPEN echo\r\n")
        self.assertEqual(len(m.named("mux.refusals_exceeded")), 1)
        self.assertIsNotNone(m.client.ended)

    def test_user_cap_held_by_other_sessions_is_not_counted(self):
        """
        The other side: when the user's other sessions hold its stream cap (this session
        holds none of it), C{BUSY stream-cap-user} is the gateway's state for this session:
        more than C{REFUSALS_BURST} of them leave it alone.
        """
        m = Mux(self, StreamSettings(max_per_user=2))
        m.upgrade()
        settings = m.factory.stream_settings
        for _ in range(2):  # what two streams of alice's other sessions hold
            self.assertIsNone(m.factory.stream_caps.take("alice", "echo2", settings))
        for _ in range(REFUSALS_BURST + 2):
            self.assertEqual(m.open(b"OPEN echo\r\n").received, b"ERR BUSY stream-cap-user\r\n")
        self.assertIsNone(m.client.ended)
        self.assertEqual(m.named("mux.refusals_exceeded"), [])

    def test_service_cap_refusals_are_not_counted(self):
        """
        The other side: a service at its cap is the gateway's state (other users' streams
        may hold it), so more than C{REFUSALS_BURST} C{BUSY stream-cap-service} answers
        leave the session alone.
        """
        m = Mux(self, StreamSettings(max_per_service=1))
        m.upgrade()
        self.assertEqual(m.open(b"OPEN echo\r\n").received, b"OK OPEN echo\r\n")
        for _ in range(REFUSALS_BURST + 2):
            self.assertEqual(m.open(b"OPEN echo\r\n").received, b"ERR BUSY stream-cap-service\r\n")
        self.assertIsNone(m.client.ended)
        self.assertEqual(m.named("mux.refusals_exceeded"), [])


class DrainTests(unittest.TestCase):
    def test_drain_refuses_new_streams_and_goes_away_when_the_last_ends(self):
        """
        On shutdown a live stream goes on, a new stream is refused C{ERR SHUTTING_DOWN}, and
        when the live stream ends the session sends go-away and closes the connection.
        """
        m = Mux(self)
        m.upgrade()
        live = m.open(b"OPEN echo\r\n")
        m.s.proto.shutdown()
        m.pump()
        new = m.open(b"OPEN echo\r\n")
        self.assertTrue(new.received.startswith(b"ERR SHUTTING_DOWN "), new.received)
        assert live.transport is not None and new.transport is not None
        new.transport.loseConnection()
        live.transport.write(b"x")
        m.pump()
        self.assertEqual(live.received, b"OK OPEN echo\r\nx")
        self.assertFalse(m.s.transport.disconnecting)
        live.transport.loseConnection()
        m.pump()
        self.assertIsNotNone(m.client.remote_go_away)
        self.assertTrue(m.s.transport.disconnecting)

    def test_drain_without_streams_closes_at_once(self):
        """
        A multiplexed session with no stream open goes away and closes at once on shutdown.
        """
        m = Mux(self)
        m.upgrade()
        m.s.proto.shutdown()
        m.pump()
        self.assertTrue(m.s.transport.disconnecting)


class StreamFiguresTests(unittest.TestCase):
    def test_streams_in_the_figures_and_the_metrics(self):
        """
        A relaying stream and a refused one are counted as streams (not connections) in
        the stats and exposed as C{netguard_streams_total}, C{netguard_streams_active} and
        C{netguard_stream_refusals_total{code}}; the connection counts once.
        """
        m = Mux(self)
        m.upgrade()
        m.open(b"OPEN echo\r\n")
        m.open(b"OPEN nope\r\n")
        figures = m.factory.stats.snapshot()
        self.assertEqual(
            (figures["connections"], figures["streams"], figures["streams_active"]), (1, 1, 1)
        )
        self.assertEqual(figures["streams_accepted"], 2)
        self.assertEqual(figures["streams_refused.no_such_service"], 1)
        values = parse_exposition(render_metrics(figures).decode())
        self.assertEqual(values[("netguard_streams_total", ())], 1)
        self.assertEqual(values[("netguard_streams_active", ())], 1)
        key = ("netguard_stream_refusals_total", (("code", "NO_SUCH_SERVICE"),))
        self.assertEqual(values[key], 1)

    def test_payload_bytes_counted_once_framed_bytes_only_logged(self):
        """
        The byte counters hold each stream's payload once; the connection's framed bytes
        (headers, window updates) are logged in its C{conn.close}, not counted again.
        """
        m = Mux(self)
        m.upgrade()
        r = m.open(b"OPEN echo\r\n" + b"x" * 1000)
        assert r.transport is not None
        r.transport.loseConnection()
        m.pump()
        m.s.proto.connectionLost(None)
        figures = m.factory.stats.snapshot()
        self.assertEqual((figures["bytes_up"], figures["bytes_down"]), (1000, 1000))
        [closed] = m.named("conn.close")
        self.assertGreater(closed["bytes_up"], 1000)


class SessionBoundTests(unittest.TestCase):
    def test_idle_timeout_spares_a_session_with_live_streams(self):
        """
        The connection's idle timeout does not end a multiplexed session while a stream is
        open, however long; once the last stream has ended, the session goes away after
        that timeout (and not one step before).
        """
        m = Mux(self)
        m.upgrade()
        idle = m.s.proto.limits.idle_timeout
        live = m.open(b"OPEN echo\r\n")
        m.s.clock.advance(idle * 3)
        self.assertFalse(m.s.transport.disconnecting)
        assert live.transport is not None
        live.transport.loseConnection()
        m.pump()
        m.s.clock.advance(idle - 0.001)
        self.assertFalse(m.s.transport.disconnecting)
        m.s.clock.advance(0.001)
        m.pump()
        self.assertTrue(m.s.transport.disconnecting)
        [ended] = m.named("mux.end")
        self.assertEqual(ended["violation"], "idle")

    def test_keepalive_unanswered_ends_the_session(self):
        """
        The gateway pings every C{keepalive_interval}; a client that never answers is cut
        C{keepalive_timeout} later, its streams with it.
        """
        m = Mux(self, StreamSettings(keepalive_interval=5.0, keepalive_timeout=2.0))
        m.upgrade()
        m.open(b"OPEN echo\r\n")
        m.s.clock.advance(5.0)
        frame = m.s.transport.value()
        self.assertEqual(frames.decode(frame, 0).type, FrameType.PING)
        m.s.transport.clear()
        m.s.clock.advance(2.0)
        [ended] = m.named("mux.end")
        self.assertEqual(ended["violation"], "keepalive-timeout")
        self.assertTrue(m.s.transport.disconnecting)
        self.assertEqual(m.factory.stats.snapshot()["streams_active"], 0)

    def test_keepalive_answered_keeps_the_session(self):
        """
        A client that answers the gateway's pings keeps its session.
        """
        m = Mux(self, StreamSettings(keepalive_interval=5.0, keepalive_timeout=2.0))
        m.upgrade()
        m.open(b"OPEN echo\r\n")
        for _ in range(3):
            m.s.clock.advance(5.0)
            m.pump()
        self.assertEqual(m.named("mux.end"), [])

    def test_hostile_rapid_reset_ends_the_session_without_traceback(self):
        """
        A hostile client that opens streams and resets each before its answer past the
        core's rapid-reset bound gets go-away and the connection closed; no traceback is
        logged.
        """
        m = Mux(self)
        m.upgrade()
        burst = MuxLimits().early_reset_burst
        for n in range(burst + 1):
            stream_id = 1 + 2 * n
            body = b"OPEN ec"
            m.s.proto.dataReceived(
                frames.encode(FrameType.DATA, Flag.SYN, stream_id, len(body))
                + body
                + frames.encode(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)
            )
        [ended] = m.named("mux.end")
        self.assertEqual(ended["violation"], "rapid-reset")
        self.assertTrue(m.s.transport.disconnecting)
        self.assertEqual([e for e in m.events if e.get("log_failure")], [])

    def test_hostile_junk_frames_end_the_session_cleanly(self):
        """
        Bytes that are not yamux frames after C{OK MUX} end the session with a protocol
        error go-away and a close, logged C{mux.end}; no traceback.
        """
        m = Mux(self)
        m.upgrade()
        m.s.proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        [ended] = m.named("mux.end")
        self.assertEqual(ended["violation"], "bad-version")
        self.assertTrue(m.s.transport.disconnecting)
        self.assertEqual([e for e in m.events if e.get("log_failure")], [])
        m.s.proto.connectionLost(None)
        [closed] = m.named("conn.close")
        self.assertEqual(closed["state"], "mux")


class MuxConfigTests(unittest.TestCase):
    def load(self, text: str) -> Any:
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(text)
        return load_config(path, {"state_dir": "/nonexistent-netguard-test"})

    def test_defaults(self):
        """
        Without a C{[mux]} table the settings are L{StreamSettings}' defaults.
        """
        self.assertEqual(self.load("").mux, StreamSettings())

    def test_keys_are_read_and_reach_the_gateway(self):
        """
        C{[mux]} keys are read into the config and the gateway's streams use them (the
        C{OK MUX} line announces C{max_streams}, C{open_rate} and C{open_burst}, which reach
        the session's framing bounds).
        """
        config = self.load(
            "[mux]\nmax_streams = 3\nmax_per_user = 2\nopen_timeout = 2.5\n"
            "open_rate = 3000\nopen_burst = 64\n"
        )
        self.assertEqual(
            (config.mux.max_streams, config.mux.max_per_user, config.mux.open_timeout),
            (3, 2, 2.5),
        )
        self.assertEqual((config.mux.open_rate, config.mux.open_burst), (3000.0, 64))
        factory = GatewayFactory(config, UserStore.from_records([]), Clock())
        self.assertIs(factory.stream_settings, config.mux)
        limits = config.mux.mux_limits(None)
        self.assertEqual((limits.open_rate, limits.open_burst), (3000.0, 64))
        m = Mux(self, factory.stream_settings)
        self.assertEqual(m.upgrade(), b"OK MUX yamux/1 STREAMS=3 WINDOW=262144 OPENRATE=3000/64")

    def test_reload_applies_to_new_sessions(self):
        """
        A reload puts new C{[mux]} settings in force for sessions upgraded afterwards.
        """
        users = UserStore.from_records([])
        factory = GatewayFactory(self.load(""), users, Clock())
        reloaded = self.load("[mux]\nmax_streams = 9\n")
        factory.apply_config(reloaded, users)
        self.assertEqual(factory.stream_settings.max_streams, 9)

    def test_bounds_at_the_limit_and_one_past(self):
        """
        C{max_streams} 65536 is accepted, 65537 and 0 are refused naming the key.
        """
        self.assertEqual(self.load("[mux]\nmax_streams = 65536\n").mux.max_streams, 65536)
        for bad in ("65537", "0", "1.5", '"many"'):
            with self.assertRaises(ConfigError) as caught:
                self.load(f"[mux]\nmax_streams = {bad}\n")
            self.assertIn("mux.max_streams", str(caught.exception))

    def test_open_rate_bounds_at_the_limit_and_one_past(self):
        """
        C{open_rate} 1 and 100000 (and a fraction) are accepted; 0.999, 100000.5, 0, a
        negative, NaN and a string are refused naming the key.
        """
        for good, read in (("1", 1.0), ("100000", 100000.0), ("2.5", 2.5)):
            self.assertEqual(self.load(f"[mux]\nopen_rate = {good}\n").mux.open_rate, read)
        for bad in ("0.999", "100000.5", "0", "-5", "nan", '"fast"'):
            with self.assertRaises(ConfigError) as caught:
                self.load(f"[mux]\nopen_rate = {bad}\n")
            self.assertIn("mux.open_rate", str(caught.exception))

    def test_open_burst_bounds_at_the_limit_and_one_past(self):
        """
        C{open_burst} 1 and 100000 are accepted; 100001, 0, 1.5 and a string are refused
        naming the key.
        """
        for good in (1, 100000):
            self.assertEqual(self.load(f"[mux]\nopen_burst = {good}\n").mux.open_burst, good)
        for bad in ("100001", "0", "1.5", '"many"'):
            with self.assertRaises(ConfigError) as caught:
                self.load(f"[mux]\nopen_burst = {bad}\n")
            self.assertIn("mux.open_burst", str(caught.exception))

    def test_unknown_key_is_refused(self):
        """
        An unknown key in C{[mux]} is refused, naming it.
        """
        with self.assertRaises(ConfigError) as caught:
            self.load("[mux]\nmax_stream = 3\n")
        self.assertIn("max_stream", str(caught.exception))


class StreamPeerCheckTests(unittest.TestCase):
    def setUp(self):
        self.m = Mux(self)
        self.m.upgrade()
        self.verdicts: list[Deferred[Verdict]] = []

        def service_verdict(service: Any) -> Deferred[Verdict]:
            waiting: Deferred[Verdict] = Deferred()
            self.verdicts.append(waiting)
            return waiting

        # The connection's own check, as for a service with fcrdns = "require".
        self.m.s.proto.service_verdict = service_verdict

    def test_stream_waits_for_the_peer_check_and_is_refused(self):
        """
        A stream to a service that requires a forward-confirmed peer waits for the
        connection's check; a refusing verdict is C{ERR NOT_AUTHORIZED peer checks failed}
        on that stream, logged C{peer.refused} and counted as OPEN's is.
        """
        r = self.m.open(b"OPEN echo\r\nheld")
        self.assertEqual(r.received, b"")
        self.verdicts[0].callback(Verdict(False, "fcrdns-mismatch"))
        self.m.pump()
        self.assertEqual(r.received, b"ERR NOT_AUTHORIZED peer checks failed\r\n")
        [refused] = self.m.named("peer.refused")
        self.assertEqual(refused["service"], "echo")
        failures = self.m.factory.stats.services_snapshot()["echo"]["open_failures"]
        self.assertEqual(failures["peer-checks"], 1)

    def test_stream_opens_once_the_peer_check_allows(self):
        """
        An allowing verdict opens the stream; the bytes behind the line come first.
        """
        r = self.m.open(b"OPEN echo\r\nheld")
        self.verdicts[0].callback(Verdict(True, "ok"))
        self.m.pump()
        self.assertEqual(r.received, b"OK OPEN echo\r\nheld")


class GreetingTests(unittest.TestCase):
    def test_greeting_announces_mux_last(self):
        """
        The greeting ends with the capability C{MUX=yamux/1}.
        """
        s = Session(self)
        self.assertTrue(s.greeting.endswith(b" MAXLINE=1024 MUX=yamux/1"), s.greeting)

    def test_netguards_client_ignores_the_capability(self):
        """
        netguard's own client, which knows nothing of C{MUX}, logs in and opens a service
        through a gateway that announces it (unknown capability words are ignored).
        """
        client, server, pump, received = ClientServerTests.connect(self)  # type: ignore[arg-type]
        self.assertTrue(client.opened.called)
        client.transport.write(b"hello")
        pump.flush()
        self.assertEqual(b"".join(received), b"hello")


class ConnectionCloseTests(unittest.TestCase):
    def test_client_half_close_ends_the_session_and_closes(self):
        """
        The client half-closing the whole connection ends the session (its streams are
        told) and the gateway closes the connection, no longer its producer (a TLS
        transport would otherwise hold the close).
        """
        m = Mux(self)
        m.upgrade()
        live = m.open(b"OPEN echo\r\n")
        m.s.proto.readConnectionLost()
        self.assertTrue(m.s.transport.disconnecting)
        self.assertIsNone(m.s.transport.producer)
        self.assertEqual(m.factory.stats.snapshot()["streams_active"], 0)
        self.assertIsNone(live.reason)  # the client side learns of it from the closed socket

    def test_session_end_lets_go_of_the_transport(self):
        """
        When the session ends itself (here a violation), it is no longer the transport's
        producer, so the close it asked for happens on a TLS transport too.
        """
        m = Mux(self)
        m.upgrade()
        self.assertIsNotNone(m.s.transport.producer)
        m.s.proto.dataReceived(b"junk" * 4)
        self.assertTrue(m.s.transport.disconnecting)
        self.assertIsNone(m.s.transport.producer)

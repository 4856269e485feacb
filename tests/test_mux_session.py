"""
Tests for L{netguard.mux.session.MuxSession} and L{netguard.mux.stream.MuxStream} as a
whole: streams between two real sessions over L{iosim.connectedServerAndClient} and over
real loopback TCP, out-of-order openings, and the stream as its protocol's transport. Flow
control, hostile peers, the session's end and the application's faults have their own
modules (C{tests.test_mux_session_*}); the fakes are in L{tests.mux_fakes}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from netguard.mux.frames import INITIAL_WINDOW, MAX_UINT32, Violation
from netguard.mux.limits import MuxLimits
from netguard.mux.protocol import MuxProtocol
from netguard.mux.session import MuxSession
from netguard.mux.stream import MuxStream, StreamReset, StreamState
from tests.mux_fakes import (
    ACK,
    DATA,
    FIN,
    SYN,
    WINDOW,
    Echo,
    Harness,
    Recorder,
    Source,
    data,
    frame,
    kinds,
)


class RoundTripTests(unittest.TestCase):
    """
    Streams between two real sessions, over iosim.
    """

    def connect(self, limits: MuxLimits | None = None) -> tuple[MuxSession, MuxSession, Any]:
        """
        A client and a server session connected through iosim; the server echoes.
        """
        self.clock = Clock()
        self.server_streams: list[Echo] = []

        def accept(stream: MuxStream) -> Echo:
            echo = Echo()
            self.server_streams.append(echo)
            return echo

        client, server, pump = iosim.connectedServerAndClient(
            lambda: MuxProtocol(client=False, clock=self.clock, accept=accept, limits=limits),
            lambda: MuxProtocol(
                client=True, clock=self.clock, accept=lambda s: None, limits=limits
            ),
            clock=self.clock,
        )
        assert client.session is not None and server.session is not None
        return client.session, server.session, pump

    def test_echo_and_half_close(self) -> None:
        """
        Bytes written on a stream come back in order; our FIN reaches the server's protocol
        as a half-close, its FIN ends the stream cleanly on both ends, and the stream no
        longer counts.
        """
        client, server, pump = self.connect()
        protocol = Recorder()
        stream = client.open_stream(protocol)
        stream.write(b"hello ")
        stream.writeSequence([b"world", b""])
        pump.flush()
        self.assertEqual(bytes(protocol.received), b"hello world")
        stream.loseWriteConnection()
        pump.flush()
        self.assertTrue(self.server_streams[0].eof)
        self.assertTrue(protocol.eof)
        assert protocol.reason is not None
        protocol.reason.trap(ConnectionDone)
        self.assertEqual((client.open_streams, server.open_streams), (0, 0))
        self.assertEqual((stream.bytes_out, stream.bytes_in), (11, 11))
        self.assertEqual(stream.state, StreamState.CLOSED)

    def test_interleaved_streams(self) -> None:
        """
        Writes on several streams, interleaved, each come back on their own stream in order.
        """
        client, server, pump = self.connect()
        pairs = [self._open(client) for _ in range(3)]
        for round_ in range(5):
            for index, (stream, _) in enumerate(pairs):
                stream.write(f"{index}:{round_};".encode())
        pump.flush()
        for index, (_, protocol) in enumerate(pairs):
            expected = "".join(f"{index}:{r};" for r in range(5)).encode()
            self.assertEqual(bytes(protocol.received), expected)

    def _open(self, session: MuxSession) -> tuple[MuxStream, Recorder]:
        protocol = Recorder()
        return session.open_stream(protocol), protocol

    def test_bulk_beside_chatty_stream(self) -> None:
        """
        A 2 MiB transfer (eight windows, so window updates are needed) and a chatty stream
        on the same session both complete, every byte in order.
        """
        client, server, pump = self.connect()
        bulk, bulk_protocol = self._open(client)
        chatty, chatty_protocol = self._open(client)
        source = Source(bulk, 64 * 1024, 2 * 1024 * 1024)
        bulk.registerProducer(source, True)
        source.run()
        for index in range(200):
            chatty.write(b"%d\n" % index)
            pump.pump()
        pump.flush()
        self.assertEqual(len(bulk_protocol.received), 2 * 1024 * 1024)
        self.assertEqual(chatty_protocol.received, b"".join(b"%d\n" % i for i in range(200)))
        self.assertGreater(source.pauses, 0)

    def test_server_half_closes_first(self) -> None:
        """
        The server's FIN reaches the client as a half-close while the client can still
        send; the client's FIN then ends the stream.
        """
        client, server, pump = self.connect()
        stream, protocol = self._open(client)
        pump.flush()
        server_stream = self.server_streams[0].transport
        assert server_stream is not None
        server_stream.write(b"bye")
        server_stream.loseWriteConnection()
        pump.flush()
        self.assertTrue(protocol.eof)
        self.assertEqual(stream.state, StreamState.REMOTE_CLOSE)
        stream.write(b"late")
        pump.flush()
        self.assertEqual(self.server_streams[0].received, b"late")
        stream.loseWriteConnection()
        pump.flush()
        assert protocol.reason is not None
        protocol.reason.trap(ConnectionDone)

    def test_abort_resets_the_peer(self) -> None:
        """
        abortConnection sends RST: our protocol sees ConnectionAborted, the peer's sees
        StreamReset, neither stream counts any more, and the session goes on.
        """
        client, server, pump = self.connect()
        stream, protocol = self._open(client)
        stream.write(b"x")
        pump.flush()
        stream.abortConnection()
        pump.flush()
        assert protocol.reason is not None and self.server_streams[0].reason is not None
        protocol.reason.trap(ConnectionAborted)
        self.server_streams[0].reason.trap(StreamReset)
        self.assertEqual((client.open_streams, server.open_streams), (0, 0))
        other, other_protocol = self._open(client)
        other.write(b"still")
        pump.flush()
        self.assertEqual(other_protocol.received, b"still")

    def test_stream_as_transport(self) -> None:
        """
        A stream provides ITransport, IConsumer and IPushProducer, and reports the session
        transport's addresses.
        """
        client, server, pump = self.connect()
        stream, _ = self._open(client)
        for interface in (ITransport, IConsumer, IPushProducer):
            self.assertTrue(verifyObject(interface, stream))
        self.assertEqual(stream.getPeer(), client.transport.getPeer())
        self.assertEqual(stream.getHost(), client.transport.getHost())


class OutOfOrderOpeningTests(unittest.TestCase):
    """
    Stream openings whose ids do not arrive in order, as hashicorp/yamux sends them.
    """

    def test_syns_out_of_order_accepted(self) -> None:
        """
        SYNs for streams 5, 1, 3 (in that order) all open streams and are answered.
        """
        harness = Harness()
        harness.feed(*(data(sid, b"OPEN echo\r\n", SYN) for sid in (5, 1, 3)))
        self.assertEqual([s.stream_id for s in harness.accepted], [5, 1, 3])
        for stream in harness.accepted:
            stream.write(b"OK\r\n")
        sent = kinds(harness.sent())
        self.assertEqual(
            sorted(k for k in sent if k[1] == ACK), [(WINDOW, ACK, sid, 0) for sid in (1, 3, 5)]
        )
        self.assertEqual(harness.protocols[1].received, b"OPEN echo\r\n")


class StreamInterfaceTests(unittest.TestCase):
    """
    The stream as its protocol's transport: half-close, counters, write after close.
    """

    def test_protocol_without_half_close(self) -> None:
        """
        A protocol without C{readConnectionLost} gets the stream closed on the peer's FIN,
        as Twisted does for protocols that are not half-closeable.
        """
        harness = Harness(protocol=lambda: Recorder(half_close=False))  # type: ignore[arg-type]
        harness.feed(data(1, b"x", SYN | FIN))
        self.assertIn((WINDOW, FIN, 1, 0), kinds(harness.sent()))
        reason = harness.protocols[1].reason
        assert reason is not None
        reason.trap(ConnectionDone)
        self.assertEqual(harness.session.open_streams, 0)

    def test_write_after_close_ignored(self) -> None:
        """
        Writes after loseWriteConnection are ignored, as on a Twisted transport.
        """
        harness = Harness(client=True)
        stream, _ = harness.open()
        stream.write(b"a")
        stream.loseWriteConnection()
        stream.write(b"b")
        payloads = [p for h, p in harness.sent() if h.type is DATA]
        self.assertEqual(payloads, [b"a"])

    def test_counters(self) -> None:
        """
        Payload bytes are counted per stream each way, and wire bytes per session.
        """
        harness = Harness()
        wire = data(1, b"OPEN echo\r\n", SYN)
        harness.feed(wire)
        harness.accepted[0].write(b"OK OPEN echo\r\n")
        out = harness.transport.value()
        stream = harness.accepted[0]
        self.assertEqual((stream.bytes_in, stream.bytes_out), (11, 14))
        self.assertEqual((harness.session.bytes_in, harness.session.bytes_out), (23, len(out)))


class LoopbackTests(unittest.TestCase):
    """
    Sessions over real loopback TCP connections, with Twisted's own transports (their
    buffers and producer calls), against our own session and a hostile raw peer.
    """

    def listen(self, accept: Any, limits: MuxLimits | None = None) -> Any:
        """
        A server session factory on an ephemeral loopback port; cleaned up after the test.
        The protocols it builds are kept in C{self.servers}.
        """
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory

        self.servers: list[MuxProtocol] = []

        def build() -> MuxProtocol:
            protocol = MuxProtocol(
                client=False,
                clock=reactor,  # type: ignore[arg-type]
                accept=accept,
                limits=limits,
            )
            self.servers.append(protocol)
            return protocol

        factory = Factory.forProtocol(build)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return port

    async def wait_for(self, condition: Any, what: str) -> None:
        """
        Let the reactor run until C{condition()} holds; a generous hang guard, never a timing
        assertion.
        """
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        for _ in range(3000):
            if condition():
                return
            await deferLater(reactor, 0.01)  # type: ignore[arg-type]
        self.fail(f"gave up waiting for {what}")

    async def test_echo_eight_mebibytes(self) -> None:
        """
        8 MiB through one stream to an echoing server and back (32 windows each way, window
        updates and the transports' backpressure in play) arrive whole and in order, and the
        stream ends cleanly on both sides.
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        port = self.listen(lambda stream: Echo())
        client = MuxProtocol(client=True, clock=reactor, accept=lambda s: None)  # type: ignore[arg-type]
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await connectProtocol(endpoint, client)
        self.addCleanup(lambda: client.transport and client.transport.loseConnection())
        assert client.session is not None
        payload = bytes(range(256)) * (8 * 4096)
        protocol = Recorder()
        stream = client.session.open_stream(protocol)
        stream.write(payload)
        stream.loseWriteConnection()
        await self.wait_for(lambda: protocol.reason is not None, "the stream to end")
        self.assertTrue(bytes(protocol.received) == payload, "echoed bytes differ")
        assert protocol.reason is not None
        protocol.reason.trap(ConnectionDone)
        self.assertEqual(client.session.open_streams, 0)

    async def test_hostile_peer_not_reading_bounds_our_buffer(self) -> None:
        """
        A hostile raw peer opens a stream, grants it the largest window and never reads its
        socket: once the kernel's buffers are full, Twisted's transport pauses the session,
        the stream's queue reaches its high-water mark and its producer is paused; the bytes
        held in our process stay within the transport's buffer, one batch and one
        high-water mark. The transport's buffer is measured after every write the session
        makes (where it peaks), not sampled.
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol

        sources: list[Source] = []
        sessions: list[MuxStream] = []
        highest = [0]
        writes = [0]

        def buffered(tcp: Any) -> int:
            return len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen  # type: ignore[no-any-return]

        def observe(tcp: Any) -> None:
            original = tcp.writeSequence

            def write_sequence(data: list[bytes]) -> None:
                original(data)
                writes[0] += 1
                highest[0] = max(highest[0], buffered(tcp))

            tcp.writeSequence = write_sequence

        class Flood(Recorder):
            def makeConnection(self, transport: MuxStream) -> None:
                super().makeConnection(transport)
                observe(transport._session.transport)
                sessions.append(transport)
                source = Source(transport, 16384, 64 * 1024 * 1024)
                sources.append(source)
                transport.registerProducer(source, True)
                transport.accept()
                reactor.callLater(0, source.run)  # type: ignore[attr-defined]

        port = self.listen(lambda stream: Flood())
        hostile = Protocol()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await connectProtocol(endpoint, hostile)
        self.addCleanup(hostile.transport.abortConnection)  # type: ignore[union-attr]
        hostile.transport.write(  # type: ignore[union-attr]
            frame(WINDOW, SYN, 1, MAX_UINT32 - INITIAL_WINDOW)
        )
        hostile.transport.pauseProducing()  # type: ignore[union-attr]
        await self.wait_for(lambda: bool(sessions), "the stream")
        stream = sessions[0]
        session = stream._session
        transport: Any = session.transport
        bound = transport.bufferSize + 64 * 1024 + session.limits.max_frame + 12
        await self.wait_for(
            lambda: session._paused and sources[0].paused, "the session and producer paused"
        )
        self.assertGreater(writes[0], 0)
        self.assertLessEqual(highest[0], bound)
        self.assertLessEqual(stream.queued, session.limits.stream_high_water + 16384)
        self.assertGreater(session.bytes_out, INITIAL_WINDOW)

    async def test_hostile_peer_not_reading_cannot_keep_an_ended_session(self) -> None:
        """
        A hostile raw peer makes the session fill its socket and stops reading, then sends
        a broken header: the session ends (go-away 1, close), and since the close cannot
        complete, the connection is aborted at C{linger_timeout}; no timer is left.
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol

        sources: list[Source] = []

        class Flood(Recorder):
            def makeConnection(self, transport: MuxStream) -> None:
                super().makeConnection(transport)
                source = Source(transport, 16384, 64 * 1024 * 1024)
                sources.append(source)
                transport.registerProducer(source, True)
                transport.accept()
                reactor.callLater(0, source.run)  # type: ignore[attr-defined]

        limits = MuxLimits(keepalive_interval=None, linger_timeout=0.2)
        port = self.listen(lambda stream: Flood(), limits)
        hostile = Protocol()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await connectProtocol(endpoint, hostile)
        self.addCleanup(hostile.transport.abortConnection)  # type: ignore[union-attr]
        hostile.transport.write(  # type: ignore[union-attr]
            frame(WINDOW, SYN, 1, MAX_UINT32 - INITIAL_WINDOW)
        )
        hostile.transport.pauseProducing()  # type: ignore[union-attr]
        await self.wait_for(lambda: bool(sources) and sources[0].paused, "the flood to stall")
        server = self.servers[0]
        session = server.session
        assert session is not None
        await self.wait_for(lambda: session._paused, "the session paused")
        hostile.transport.write(b"\x07" * 12)  # type: ignore[union-attr]
        await self.wait_for(lambda: session.ended is not None, "the violation")
        assert session.ended is not None
        self.assertEqual(session.ended.violation, Violation.BAD_VERSION)
        transport: Any = server.transport
        await self.wait_for(lambda: transport.disconnected, "the connection to be aborted")
        self.assertIsNone(session._linger)

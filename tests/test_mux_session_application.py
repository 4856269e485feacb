"""
The application's side of L{netguard.mux.session.MuxSession}: protocols, producers and
owners that raise or close in a callback cost at most their own stream, and a stream serves
as side A of L{netguard.relay.Splice}.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.mux.frames import INITIAL_WINDOW
from netguard.mux.outcome import SessionEnd
from netguard.mux.stream import MuxStream, StreamReset
from netguard.relay import A, B, Splice
from tests.mux_fakes import DATA, FIN, RST, SYN, WINDOW, Harness, Recorder, data, frame, kinds


class Raiser(Recorder):
    """
    A stream protocol with a bug: it raises on data.
    """

    def dataReceived(self, data: bytes) -> None:
        raise ZeroDivisionError("application bug")


class CloseOnData(Recorder):
    """
    A stream protocol that closes its stream on the first data it gets.
    """

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        assert self.transport is not None
        self.transport.loseConnection()


class ApplicationTests(unittest.TestCase):
    """
    What the session does when the application misbehaves or closes in a callback.
    """

    def test_protocol_exception_resets_only_its_stream(self) -> None:
        """
        A protocol that raises gets its own stream reset (logged), while the session and
        other streams go on.
        """
        harness = Harness()
        harness.feed(frame(WINDOW, SYN, 1, 0))
        harness.protocol_class = Raiser
        harness.feed(frame(WINDOW, SYN, 3, 0))
        harness.sent()
        harness.feed(data(3, b"boom"), data(1, b"fine"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIn((WINDOW, RST, 3, 0), kinds(harness.sent()))
        self.assertEqual(harness.protocols[1].received, b"fine")
        self.assertEqual(harness.ends, [])
        self.assertEqual(harness.session.open_streams, 1)

    def test_accept_exception_resets_the_stream(self) -> None:
        """
        An accept callback that raises gets that stream reset (logged); the session goes on.
        """
        harness = Harness()

        def broken(stream: MuxStream) -> None:
            raise KeyError("bug")

        harness.session._accept = broken
        harness.feed(frame(WINDOW, SYN, 1, 0))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual(kinds(harness.sent()), [(WINDOW, RST, 1, 0)])
        self.assertEqual((harness.ends, harness.session.open_streams), ([], 0))

    def test_credit_consistent_when_closing_while_draining(self) -> None:
        """
        A protocol that closes its stream while held data is being delivered leaves the
        session's credit equal to the sum of its streams' credit (nothing counted twice).
        """
        harness = Harness(protocol=CloseOnData)
        harness.feed(frame(WINDOW, SYN, 1, 0), frame(WINDOW, SYN, 3, 0))
        first, second = harness.accepted
        first.pauseProducing()
        second.pauseProducing()
        harness.feed(data(1, b"a" * 1000), data(1, b"b" * 1000), data(3, b"c" * 500))
        self.assertEqual(harness.session.credit, 2 * INITIAL_WINDOW)
        first.resumeProducing()
        self.assertEqual(harness.protocols[1].received, b"a" * 1000 + b"b" * 1000)
        streams = [first, second]
        self.assertEqual(harness.session.credit, sum(s.outstanding for s in streams))
        harness.feed(frame(WINDOW, FIN, 1, 0))
        self.assertEqual(harness.session.credit, second.outstanding)


class BrokenProducer:
    """
    A push producer with a bug: each of its methods named in C{broken} raises.
    """

    def __init__(self, *broken: str) -> None:
        self.broken = broken

    def _maybe_raise(self, name: str) -> None:
        if name in self.broken:
            raise ZeroDivisionError(name)

    def pauseProducing(self) -> None:
        self._maybe_raise("pause")

    def resumeProducing(self) -> None:
        self._maybe_raise("resume")

    def stopProducing(self) -> None:
        self._maybe_raise("stop")


class BrokenMaker(Recorder):
    """
    A stream protocol whose C{makeConnection} raises.
    """

    def makeConnection(self, transport: MuxStream) -> None:
        super().makeConnection(transport)
        raise ZeroDivisionError("makeConnection")


class ApplicationCallbackTests(unittest.TestCase):
    """
    Every call into the application (producer, protocol, owner) that raises is logged and
    costs at most its own stream: nothing escapes L{MuxSession.data_received} or a write.
    """

    def two_streams(self) -> tuple[Harness, MuxStream, MuxStream]:
        """
        A session with two accepted peer streams, 1 and 3.
        """
        harness = Harness()
        harness.feed(data(1, b"x", SYN), data(3, b"y", SYN))
        first, second = harness.accepted
        first.accept()
        second.accept()
        harness.sent()
        return harness, first, second

    def test_producer_stop_raises_on_peer_reset(self) -> None:
        """
        A producer whose C{stopProducing} raises, on a stream the peer resets: nothing
        escapes, the protocol is told, the stream is no longer counted, the rest of the
        read is handled once.
        """
        harness, first, _ = self.two_streams()
        first.registerProducer(BrokenProducer("stop"), True)
        harness.feed(frame(WINDOW, RST, 1, 0), data(3, b"after"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        reason = harness.protocols[1].reason
        assert reason is not None
        reason.trap(StreamReset)
        self.assertIsNone(harness.session.stream(1))
        self.assertEqual(harness.protocols[3].received, b"yafter")
        self.assertEqual(harness.ends, [])

    def test_producer_pause_raises_on_write(self) -> None:
        """
        A producer whose C{pauseProducing} raises when its stream passes the high-water
        mark: the write returns, the stream is reset, the other stream goes on.
        """
        harness, first, second = self.two_streams()
        first.registerProducer(BrokenProducer("pause"), True)
        harness.session.pauseProducing()
        first.write(b"z" * harness.session.limits.stream_high_water)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(first.lost)
        harness.session.resumeProducing()
        self.assertIn((WINDOW, RST, 1, 0), kinds(harness.sent()))
        second.write(b"ok")
        self.assertEqual([p for h, p in harness.sent() if h.stream_id == 3], [b"ok"])

    def test_producer_resume_raises_in_pump(self) -> None:
        """
        A producer whose C{resumeProducing} raises when its queue empties (a window update
        arrives in L{MuxSession.data_received}): nothing escapes, its stream is reset.
        """
        harness, first, _ = self.two_streams()
        first.registerProducer(BrokenProducer("resume"), True)
        first.write(b"z" * (INITIAL_WINDOW + 1000))
        self.assertTrue(first.producer_paused)
        harness.sent()
        harness.feed(frame(WINDOW, 0, 1, 1000))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIn((WINDOW, RST, 1, 0), kinds(harness.sent()))
        self.assertEqual(harness.ends, [])

    def test_make_connection_raises_on_open(self) -> None:
        """
        A protocol whose C{makeConnection} raises, given to L{MuxSession.open_stream}: the
        call returns the stream, reset right after its SYN, and not counted.
        """
        harness = Harness(client=True)
        stream, _ = harness.open(BrokenMaker())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(kinds(harness.sent()), [(WINDOW, SYN, 1, 0), (WINDOW, RST, 1, 0)])
        self.assertTrue(stream.lost)
        self.assertEqual(harness.session.open_streams, 0)

    def test_make_connection_raises_on_accept(self) -> None:
        """
        A protocol whose C{makeConnection} raises, for a stream the peer opens: that stream
        is reset, the session goes on.
        """
        harness = Harness(protocol=BrokenMaker)
        harness.feed(frame(WINDOW, SYN, 1, 0))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(kinds(harness.sent()), [(WINDOW, RST, 1, 0)])
        self.assertEqual((harness.ends, harness.session.open_streams), ([], 0))

    def test_on_end_raises(self) -> None:
        """
        An owner whose C{on_end} raises: logged, nothing escapes, the transport is closed.
        """
        harness = Harness()

        def broken(end: SessionEnd) -> None:
            raise ZeroDivisionError("on_end")

        harness.session._on_end = broken
        harness.feed(b"\x07" * 12)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(harness.transport.disconnecting)


class Backend(StringTransport):
    """
    A backend transport for a splice: records half-close and pause.
    """

    def __init__(self) -> None:
        super().__init__()
        self.write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class SpliceSide(Recorder):
    """
    A stream protocol that hands its events to side A of a splice.
    """

    splice: Splice | None = None

    def dataReceived(self, data: bytes) -> None:
        assert self.splice is not None
        self.splice.data_from(A, data)

    def _read_lost(self) -> None:
        assert self.splice is not None
        self.splice.eof_from(A)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if self.splice is not None:
            self.splice.lost(A)


class RelayTransportTests(unittest.TestCase):
    """
    A stream as side A of L{netguard.relay.Splice}, a backend transport as side B.
    """

    def splice(self) -> tuple[Harness, MuxStream, Backend, Splice]:
        """
        A stream the peer opened, spliced to a backend.
        """
        harness = Harness(protocol=SpliceSide)
        harness.feed(frame(WINDOW, SYN, 1, 0))
        stream = harness.accepted[0]
        backend = Backend()
        splice = Splice(stream, backend, clock=harness.clock)
        protocol = harness.protocols[1]
        assert isinstance(protocol, SpliceSide)
        protocol.splice = splice
        splice.start()
        harness.sent()
        return harness, stream, backend, splice

    def test_bytes_and_half_close_both_ways(self) -> None:
        """
        Bytes go both ways; the peer's FIN half-closes the backend, the backend's EOF sends
        our FIN, and the relay ends cleanly.
        """
        harness, stream, backend, splice = self.splice()
        harness.feed(data(1, b"GET"))
        self.assertEqual(backend.value(), b"GET")
        splice.data_from(B, b"VALUE")
        self.assertEqual([p for h, p in harness.sent() if h.type is DATA], [b"VALUE"])
        harness.feed(frame(WINDOW, FIN, 1, 0))
        self.assertTrue(backend.write_closed)
        splice.eof_from(B)
        self.assertIn((WINDOW, FIN, 1, 0), kinds(harness.sent()))
        splice.lost(B)
        self.assertEqual(harness.session.open_streams, 0)
        self.assertEqual(splice.ended_by, "a")

    def test_window_exhausted_pauses_the_backend(self) -> None:
        """
        A peer that never returns credit: after one window and a high-water mark queued, the
        splice pauses the backend's reading; credit from the peer resumes it.
        """
        harness, stream, backend, splice = self.splice()
        chunk = b"x" * 16384
        sent = 0
        for _ in range(100):
            if backend.producerState == "paused":
                break
            splice.data_from(B, chunk)
            sent += len(chunk)
        self.assertEqual(backend.producerState, "paused")
        self.assertLessEqual(sent, INITIAL_WINDOW + harness.session.limits.stream_high_water)
        harness.feed(frame(WINDOW, 0, 1, INITIAL_WINDOW))
        self.assertEqual(backend.producerState, "producing")

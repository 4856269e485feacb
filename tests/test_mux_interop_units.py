"""
The behaviours of the reference yamux implementation (hashicorp/yamux) that netguard's
session must accept, pinned on Twisted's fakes; found against the real one by
L{tests.integration.test_yamux_interop}.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.test.proto_helpers import StringTransport
from twisted.trial import unittest

from netguard.mux import frames
from netguard.mux.frames import (
    HEADER_SIZE,
    INITIAL_WINDOW,
    Flag,
    FrameType,
    GoAwayCode,
    Header,
    Violation,
)
from netguard.mux.limits import MuxLimits
from netguard.mux.session import MuxSession, SessionEnd
from tests.mux_fakes import Recorder

LIMITS = MuxLimits(keepalive_interval=None, open_timeout=10.0, close_timeout=300.0)


def frame(kind: FrameType, flags: Flag | int, stream_id: int, length: int) -> bytes:
    return frames.encode(kind, flags, stream_id, length)


def parse(wire: bytes) -> list[Header]:
    """
    The headers of the frames in C{wire} (payloads skipped).
    """
    headers = []
    offset = 0
    while offset < len(wire):
        header = frames.decode(wire, offset)
        headers.append(header)
        offset += HEADER_SIZE + (header.length if header.type is FrameType.DATA else 0)
    return headers


class ClientSession:
    """
    netguard's session in the client role on a L{StringTransport}, one stream opened with
    C{request} written behind its SYN.
    """

    def __init__(self, request: bytes, *, fin: bool) -> None:
        self.clock = Clock()
        self.transport = StringTransport()
        self.ends: list[SessionEnd] = []
        self.session = MuxSession(
            self.transport,
            client=True,
            clock=self.clock,
            accept=lambda stream: None,
            limits=LIMITS,
            on_end=self.ends.append,
        )
        self.protocol = Recorder()
        self.stream = self.session.open_stream(self.protocol)
        self.stream.write(request)
        if fin:
            self.stream.loseWriteConnection()

    def sent(self) -> list[Header]:
        wire = self.transport.value()
        self.transport.clear()
        return parse(wire)


class ImplicitAckTests(unittest.TestCase):
    """
    hashicorp/yamux acknowledges a stream (ACK) only while it is in SYN_RECEIVED; a FIN that
    arrives before it has sent anything moves it to REMOTE_CLOSE, and it then answers
    without ever sending an ACK.
    """

    def test_first_frame_after_our_fin_counts_as_ack(self) -> None:
        """
        Data and FIN behind our SYN, then the peer's answer without ACK (data, then FIN as
        a window update, as hashicorp/yamux sends them): the answer is delivered, the stream
        closes cleanly, and the session goes on with nothing sent back but window credit.
        """
        client = ClientSession(b"request", fin=True)
        sent = client.sent()
        self.assertEqual(sent[-1].flags & Flag.FIN, Flag.FIN)
        client.session.data_received(
            frame(FrameType.DATA, 0, 1, 8)
            + b"response"
            + frame(FrameType.WINDOW_UPDATE, Flag.FIN, 1, 0)
        )
        self.assertEqual((client.protocol.received, client.protocol.eof), (b"response", True))
        assert client.protocol.reason is not None
        self.assertIsInstance(client.protocol.reason.value, ConnectionDone)
        self.assertEqual(client.ends, [])
        self.assertIsNone(client.session.ended)
        self.assertEqual(client.session.open_streams, 0)
        self.assertNotIn(FrameType.GO_AWAY, [h.type for h in client.sent()])

    def test_implicit_ack_stops_the_open_deadline(self) -> None:
        """
        After our FIN, the peer's first frame without ACK (data, no FIN yet) is the ACK: the
        open deadline no longer resets the stream; the close deadline, which waits for the
        peer's FIN, runs from then instead.
        """
        client = ClientSession(b"request", fin=True)
        client.sent()
        client.session.data_received(frame(FrameType.DATA, 0, 1, 4) + b"part")
        client.clock.advance(LIMITS.open_timeout + 1)
        self.assertIsNone(client.protocol.reason)
        self.assertEqual(client.protocol.received, b"part")
        self.assertEqual(client.sent(), [])
        client.clock.advance(LIMITS.close_timeout)
        self.assertIsNotNone(client.protocol.reason)
        self.assertEqual(
            [(h.type, h.flags) for h in client.sent()], [(FrameType.WINDOW_UPDATE, Flag.RST)]
        )

    def test_hostile_frame_without_ack_before_our_fin(self) -> None:
        """
        Without our FIN sent, a frame without ACK on a stream we opened is still a protocol
        error: the session ends (frame-before-ack) with a go-away (protocol error).
        """
        client = ClientSession(b"request", fin=False)
        client.sent()
        client.session.data_received(frame(FrameType.DATA, 0, 1, 5) + b"early")
        self.assertEqual([end.violation for end in client.ends], [Violation.FRAME_BEFORE_ACK])
        go_away = [h for h in client.sent() if h.type is FrameType.GO_AWAY]
        self.assertEqual([h.length for h in go_away], [GoAwayCode.PROTOCOL_ERROR])

    def test_hostile_frame_without_ack_while_our_fin_waits_for_window(self) -> None:
        """
        The boundary: our FIN asked for but not yet sent (the request is one byte past the
        initial window, so FIN waits behind it) does not count; the peer cannot have seen
        it, so a window update without ACK is still frame-before-ack.
        """
        client = ClientSession(b"x" * (INITIAL_WINDOW + 1), fin=True)
        self.assertFalse(any(h.flags & Flag.FIN for h in client.sent()))
        client.session.data_received(frame(FrameType.WINDOW_UPDATE, 0, 1, 1024))
        self.assertEqual([end.violation for end in client.ends], [Violation.FRAME_BEFORE_ACK])

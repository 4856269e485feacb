"""
Fakes for the tests of L{netguard.mux.session.MuxSession}: frames as a hand-driven peer
writes them, stream protocols that record or echo, a push producer, and a L{Harness} that
runs one session on a L{StringTransport} with a L{task.Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from netguard.mux import frames
from netguard.mux.frames import Flag, FrameType, GoAwayCode, Header, Violation
from netguard.mux.limits import MuxLimits
from netguard.mux.outcome import SessionEnd
from netguard.mux.session import MuxSession
from netguard.mux.stream import MuxStream

DATA, WINDOW, PING, GO_AWAY = (
    FrameType.DATA,
    FrameType.WINDOW_UPDATE,
    FrameType.PING,
    FrameType.GO_AWAY,
)
SYN, ACK, FIN, RST = Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST


def frame(kind: FrameType, flags: Flag | int, stream_id: int, length: int) -> bytes:
    """
    A header, as a hand-driven peer writes it.
    """
    return frames.encode(kind, flags, stream_id, length)


def data(stream_id: int, payload: bytes, flags: Flag | int = 0) -> bytes:
    """
    A data frame with C{payload}.
    """
    return frame(DATA, flags, stream_id, len(payload)) + payload


def parse(wire: bytes) -> list[tuple[Header, bytes]]:
    """
    Every frame in C{wire}, with its payload.
    """
    result = []
    offset = 0
    while offset < len(wire):
        header = frames.decode(wire, offset)
        size = header.length if header.type is DATA else 0
        payload = wire[offset + 12 : offset + 12 + size]
        result.append((header, payload))
        offset += 12 + size
    return result


class Recorder:
    """
    A stream protocol that records what it is told.
    """

    def __init__(self, half_close: bool = True) -> None:
        self.transport: MuxStream | None = None
        self.received = bytearray()
        self.eof = False
        self.reason: Failure | None = None
        if half_close:
            self.readConnectionLost = self._read_lost

    def makeConnection(self, transport: MuxStream) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def _read_lost(self) -> None:
        self.eof = True

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason


class Echo(Recorder):
    """
    A stream protocol that echoes and half-closes back on the peer's FIN.
    """

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        assert self.transport is not None
        self.transport.write(data)

    def _read_lost(self) -> None:
        super()._read_lost()
        assert self.transport is not None
        self.transport.loseWriteConnection()


@implementer(IPushProducer)
class Source:
    """
    A push producer that writes C{chunk} to a stream each time it is asked to produce,
    until paused, at most C{total} bytes.
    """

    def __init__(self, stream: MuxStream, chunk: int, total: int) -> None:
        self.stream = stream
        self.chunk = chunk
        self.left = total
        self.paused = False
        self.stopped = False
        self.pauses = 0

    def run(self) -> None:
        """
        Write until paused or done (bounded by C{total}).
        """
        while not self.paused and self.left > 0:
            size = min(self.chunk, self.left)
            self.left -= size
            self.stream.write(b"x" * size)

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.run()

    def stopProducing(self) -> None:
        self.stopped = True


class Harness:
    """
    One session on a L{StringTransport}, driven by hand as its peer.
    """

    def __init__(
        self,
        *,
        client: bool = False,
        limits: MuxLimits | None = None,
        protocol: type[Recorder] = Recorder,
    ) -> None:
        self.clock = Clock()
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 7700),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        )
        self.accepted: list[MuxStream] = []
        self.protocols: dict[int, Recorder] = {}
        self.ends: list[SessionEnd] = []
        self.refuse = False
        self.protocol_class = protocol
        self.session = MuxSession(
            self.transport,
            client=client,
            clock=self.clock,
            accept=self._accept,
            limits=limits if limits is not None else MuxLimits(keepalive_interval=None),
            on_end=self.ends.append,
        )

    def _accept(self, stream: MuxStream) -> Recorder | None:
        if self.refuse:
            return None
        self.accepted.append(stream)
        protocol = self.protocols[stream.stream_id] = self.protocol_class()
        return protocol

    def feed(self, *chunks: bytes) -> None:
        """
        The peer sends C{chunks}, in one read.
        """
        self.session.data_received(b"".join(chunks))

    def sent(self) -> list[tuple[Header, bytes]]:
        """
        Frames the session wrote since the last call.
        """
        wire = self.transport.value()
        self.transport.clear()
        return parse(wire)

    def open(self, protocol: Recorder | None = None) -> tuple[MuxStream, Recorder]:
        """
        Open a stream from the session's side.
        """
        protocol = protocol if protocol is not None else Recorder()
        return self.session.open_stream(protocol), protocol


def kinds(sent: list[tuple[Header, bytes]]) -> list[tuple[FrameType, Flag, int, int]]:
    """
    The headers of C{sent} as plain tuples.
    """
    return [(h.type, h.flags, h.stream_id, h.length) for h, _ in sent]


class SessionEndedMixin:
    """
    Assertions about how a session ended.
    """

    def assert_ended(
        self, harness: Harness, violation: Violation, code: GoAwayCode = GoAwayCode.PROTOCOL_ERROR
    ) -> None:
        """
        The session ended for C{violation}, sent go-away C{code} as its last frame, and
        closed its transport.
        """
        case: Any = self
        case.assertEqual([end.violation for end in harness.ends], [violation])
        sent = harness.sent()
        case.assertEqual(kinds(sent)[-1:], [(GO_AWAY, Flag(0), 0, code)])
        case.assertTrue(harness.transport.disconnecting)
        case.assertEqual(harness.session.open_streams, 0)

"""
Tests for L{netguard.mux.protocol.MuxProtocol}: how it leaves its transport when the session
ends.
"""

from __future__ import annotations

from twisted.internet.abstract import FileDescriptor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from netguard.mux import frames
from netguard.mux.frames import FrameType, GoAwayCode, Violation
from netguard.mux.outcome import SessionEnd
from netguard.mux.protocol import SESSION_BUFFER, MuxProtocol, widen_buffer


class HeldCloseTransport(StringTransport):
    """
    A transport that, like Twisted's TLS transport, holds a close asked for while a
    producer is registered, and closes once the producer is unregistered.

    @ivar closed: whether the close really happened.
    """

    closed = False

    def loseConnection(self) -> None:
        self.disconnecting = True
        if self.producer is None:
            self.closed = True

    def unregisterProducer(self) -> None:
        super().unregisterProducer()
        if self.disconnecting:
            self.closed = True


class MuxProtocolCloseTests(unittest.TestCase):
    def connect(self) -> tuple[MuxProtocol, HeldCloseTransport, list[SessionEnd]]:
        ends: list[SessionEnd] = []
        protocol = MuxProtocol(
            client=True, clock=Clock(), accept=lambda stream: None, on_end=ends.append
        )
        transport = HeldCloseTransport()
        protocol.makeConnection(transport)
        self.assertIs(transport.producer, protocol.session)
        return protocol, transport, ends

    def test_local_go_away_closes_a_held_close_transport(self) -> None:
        """
        A session ended by our go-away (no stream open) stops being the producer, so a
        transport that holds its close while a producer is registered really closes; the
        owner's C{on_end} is still called once.
        """
        protocol, transport, ends = self.connect()
        assert protocol.session is not None
        protocol.session.go_away()
        self.assertTrue(transport.closed)
        self.assertIsNone(transport.producer)
        self.assertEqual([end.violation for end in ends], [Violation.LOCAL_GO_AWAY])

    def test_violation_closes_a_held_close_transport(self) -> None:
        """
        A session ended for the peer's violation (a frame of an unknown version) lets go of
        the transport too, so its close happens.
        """
        protocol, transport, ends = self.connect()
        protocol.dataReceived(b"\x09" + b"\x00" * 11)
        self.assertTrue(transport.closed)
        self.assertIsNone(transport.producer)
        self.assertEqual([end.violation for end in ends], [Violation.BAD_VERSION])

    def test_remote_go_away_closes_a_held_close_transport(self) -> None:
        """
        The peer's go-away for a protocol error ends the session and the transport closes.
        """
        protocol, transport, ends = self.connect()
        protocol.dataReceived(frames.encode(FrameType.GO_AWAY, 0, 0, GoAwayCode.PROTOCOL_ERROR))
        self.assertTrue(transport.closed)
        self.assertIsNone(transport.producer)
        self.assertEqual(len(ends), 1)

    def test_connection_lost_leaves_the_transport_alone(self) -> None:
        """
        A lost connection ends the session without calling the gone transport; the owner
        is told once.
        """
        protocol, transport, ends = self.connect()
        protocol.connectionLost(None)
        self.assertFalse(transport.disconnecting)
        self.assertEqual([end.violation for end in ends], [Violation.CONNECTION_LOST])


class NoDelayTransport(StringTransport):
    """
    A TCP-like transport that records C{setTcpNoDelay}; with C{fails}, it raises OSError as
    an AF_UNIX socket does.
    """

    def __init__(self, fails: bool = False) -> None:
        super().__init__()
        self.fails = fails
        self.no_delay: list[bool] = []

    def setTcpNoDelay(self, enabled: bool) -> None:
        if self.fails:
            raise OSError("not a TCP socket")
        self.no_delay.append(enabled)


class MuxProtocolNoDelayTests(unittest.TestCase):
    def test_sets_tcp_nodelay(self) -> None:
        """
        The session's small interleaved frames are sent at once: the protocol sets
        TCP_NODELAY on a transport that has it.
        """
        transport = NoDelayTransport()
        MuxProtocol(client=True, clock=Clock(), accept=lambda s: None).makeConnection(transport)
        self.assertEqual(transport.no_delay, [True])

    def test_a_transport_refusing_nodelay_still_runs(self) -> None:
        """
        A transport whose socket is not TCP (C{setTcpNoDelay} raises OSError) still gets
        its session, registered as producer; so does one without the method.
        """
        for transport in (NoDelayTransport(fails=True), StringTransport()):
            protocol = MuxProtocol(client=True, clock=Clock(), accept=lambda s: None)
            protocol.makeConnection(transport)
            self.assertIs(transport.producer, protocol.session)


class SessionBufferTests(unittest.TestCase):
    def test_a_file_descriptor_gets_the_session_buffer(self) -> None:
        """
        A session over a Twisted file descriptor (TCP, UNIX) reads and buffers up to
        C{SESSION_BUFFER} (256 KiB) instead of Twisted's 64 KiB, on that transport only.
        """
        transport = FileDescriptor(reactor=Clock())
        self.assertEqual(transport.bufferSize, 64 * 1024)
        protocol = MuxProtocol(client=True, clock=Clock(), accept=lambda stream: None)
        protocol.makeConnection(transport)
        self.assertEqual((transport.bufferSize, SESSION_BUFFER), (256 * 1024, 256 * 1024))
        self.assertEqual(FileDescriptor.bufferSize, 64 * 1024)

    def test_other_transports_are_left_alone(self) -> None:
        """
        A transport that is not a file descriptor (a TLS wrapper, a test transport) gets no
        C{bufferSize}.
        """
        transport = StringTransport()
        widen_buffer(transport)
        self.assertFalse(hasattr(transport, "bufferSize"))

# -*- test-case-name: tests.test_mux_session,tests.test_mux_protocol -*-
"""
A Twisted protocol that runs a L{MuxSession} over its transport.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.abstract import FileDescriptor
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from netguard.mux.frames import Violation
from netguard.mux.limits import MuxLimits
from netguard.mux.outcome import SessionEnd, SessionTransport
from netguard.mux.session import MuxSession
from netguard.mux.stream import MuxStream, StreamProtocol
from netguard.relay import ReactorTime, send_at_once

#: The read size and output high-water mark of a session's own connection (Twisted's
#: C{FileDescriptor.bufferSize}, 64 KiB by default): a session carries many streams' data,
#: framed 64 KiB at a time, so at the default the transport paused the session at every
#: data frame and read the peer's frames in pieces smaller than one frame.
SESSION_BUFFER = 256 * 1024


def widen_buffer(transport: object, size: int = SESSION_BUFFER) -> None:
    """
    Give a session's connection a read size and output high-water mark of C{size} bytes,
    where it is a Twisted file descriptor (TCP, UNIX); other transports (a TLS wrapper) keep
    theirs. The session's output bound grows with it: what its transport may hold before
    pausing the session is C{size} plus one batch.
    """
    if isinstance(transport, FileDescriptor):
        transport.bufferSize = size


class MuxProtocol(Protocol):
    """
    Runs a session over C{self.transport}: bytes in go to it, and it is registered as the
    transport's streaming producer so that a full transport buffer pauses its output. When
    the session ends it stops being the producer, so that the close it asked for happens:
    Twisted's TLS transport holds its close_notify while a producer is registered.

    @ivar session: the session, once connected.
    """

    def __init__(
        self,
        *,
        client: bool,
        clock: ReactorTime,
        accept: Callable[[MuxStream], StreamProtocol | None],
        limits: MuxLimits | None = None,
        on_end: Callable[[SessionEnd], None] | None = None,
    ) -> None:
        """
        The arguments are those of L{MuxSession}.
        """
        self._client = client
        self._clock = clock
        self._accept = accept
        self._limits = limits
        self._on_end = on_end
        self.session: MuxSession | None = None

    def connectionMade(self) -> None:
        """
        Set TCP_NODELAY where the transport allows it (a session's frames are small and
        interleaved: Nagle's algorithm with delayed ACKs would hold request/response streams
        up to 40 ms each) and widen its buffer (L{widen_buffer}), then start the session and
        register it as the transport's producer.
        """
        send_at_once(self.transport)
        widen_buffer(self.transport)
        transport: SessionTransport = self.transport  # type: ignore[assignment]
        self.session = MuxSession(
            transport,
            client=self._client,
            clock=self._clock,
            accept=self._accept,
            limits=self._limits,
            on_end=self._ended,
        )
        self.transport.registerProducer(self.session, True)  # type: ignore[union-attr]

    def _ended(self, end: SessionEnd) -> None:
        """
        The session has ended (and asked the transport to close, unless the connection was
        already lost): stop being the transport's producer, then tell the owner.
        """
        if end.violation is not Violation.CONNECTION_LOST and self.transport is not None:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
        if self._on_end is not None:
            self._on_end(end)

    def dataReceived(self, data: bytes) -> None:
        """
        Feed the session.
        """
        if self.session is not None:
            self.session.data_received(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """
        End the session: every stream is told.
        """
        if self.session is not None:
            self.session.connection_lost(reason)

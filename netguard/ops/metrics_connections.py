# -*- test-case-name: tests.test_metrics_connections -*-
"""
The connection bounds of the metrics listener: a fixed deadline for each request and a
connection cap where a newcomer replaces the oldest connection still waiting for a request.
"""

from __future__ import annotations

from typing import Any, Final

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

#: Seconds a connection has to send one complete request (headers and body), counted from
#: its accept, and then to take its answer, counted from the answer being handed over;
#: bytes sent meanwhile do not extend it.
REQUEST_DEADLINE: Final = 10.0


class DeadlineConnection(ProtocolWrapper):
    """
    One connection: waiting for a request (deadline armed, may be evicted) or being
    answered (neither).

    @ivar waiting_since: when the connection began waiting for its current request.
    @ivar closing: whether it was cut (deadline or eviction) and is on its way out.
    """

    factory: BoundedDeadlineFactory

    def __init__(self, factory: BoundedDeadlineFactory, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self.waiting_since = factory.clock.seconds()
        self.closing = False
        self._answering = 0
        self._lost = False
        self._deadline: Any = None

    @property
    def waiting(self) -> bool:
        """
        @return: whether the connection is waiting for a request (so may be evicted).
        """
        return self._answering == 0 and not self.closing and not self._lost

    def makeConnection(self, transport: Any) -> None:
        """
        Arm the deadline of the first request, then connect the wrapped protocol.
        """
        self._arm()
        super().makeConnection(transport)

    def request_received(self) -> None:
        """
        A complete request arrived: it is being answered, so no deadline runs.
        """
        self._answering += 1
        self._disarm()

    def answer_done(self) -> None:
        """
        An answer was handed to the transport (or the connection was lost meanwhile): once
        none is left, the deadline of the next request starts.
        """
        self._answering = max(0, self._answering - 1)
        if self._answering == 0 and not self._lost and not self.closing:
            self.waiting_since = self.factory.clock.seconds()
            self._arm()

    def cut(self) -> None:
        """
        Drop the connection now, without answering (any queued bytes are discarded).
        """
        self._disarm()
        self.closing = True
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Stop the deadline and pass the loss on.
        """
        self._lost = True
        self._disarm()
        super().connectionLost(reason)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.factory.clock.callLater(self.factory.deadline, self._expired)

    def _disarm(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _expired(self) -> None:
        self._deadline = None
        self.cut()


class BoundedDeadlineFactory(WrappingFactory[DeadlineConnection]):
    """
    Wrap every connection in a L{DeadlineConnection}; at most C{max_connections} at once.
    When the cap is full, the connection that has waited longest for a request is cut to
    make room; a connection being answered is never cut, and when every one is being
    answered the newcomer is closed at once.

    @ivar clock: the deadlines' clock.
    @ivar deadline: seconds per request (L{REQUEST_DEADLINE}).
    @ivar max_connections: the cap.
    """

    noisy = False
    protocol = DeadlineConnection

    def __init__(
        self,
        wrapped: Any,
        max_connections: int,
        clock: Any,
        deadline: float = REQUEST_DEADLINE,
    ) -> None:
        super().__init__(wrapped)
        self.max_connections = max_connections
        self.clock = clock
        self.deadline = deadline

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """
        A wrapped protocol for a new connection, after evicting one if the cap is full;
        L{None} (close at once) when nothing can be evicted.
        """
        live = [protocol for protocol in self.protocols if not protocol.closing]
        if len(live) >= self.max_connections:
            waiting = [protocol for protocol in live if protocol.waiting]
            if not waiting:
                return None
            min(waiting, key=lambda protocol: protocol.waiting_since).cut()
        return super().buildProtocol(addr)

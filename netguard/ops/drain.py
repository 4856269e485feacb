# -*- test-case-name: tests.test_drain -*-
"""
Graceful shutdown: stop accepting, tell clients still in the line phase
C{ERR SHUTTING_DOWN}, let open relays finish up to a grace period, then close what is left
(C{docs/operating.md} section 7.4).

L{Drainer} works on anything that keeps a set of live sessions (C{factory.sessions}) whose
sessions have a C{shutdown()} method (answer and close in the line phase, keep relaying
otherwise) and a C{cut()} method (abort the connection, logged as closed by the server).
L{StopRequests} is the one record of the stop requests (SIGTERM, SIGINT, C{ctl drain}): the
first stops the reactor (which drains), a later signal aborts every remaining connection at
once, as the end of the grace period does.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

#: Why a second stop signal cut the connections (C{shutdown.force}'s C{why}).
SECOND_SIGNAL = "second stop signal"


class Drainer:
    """
    Drain the sessions of C{factory} within C{grace} seconds.

    @ivar draining: whether a drain has started.
    @ivar forced: how many connections the grace period (or a second signal) cut.
    """

    log = Logger()

    def __init__(self, factory: Any, clock: Any, grace: float):
        self.factory = factory
        self.clock = clock
        self.grace = grace
        self.draining = False
        self.forced = 0
        self._waiters: list[Deferred[None]] = []
        self._timer: Any = None

    def drain(self) -> Deferred[None]:
        """
        Start draining (once); the L{Deferred} fires when no session is left.
        """
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if self.draining:
            self.check()
            return waiter
        self.draining = True
        sessions = list(self.factory.sessions)
        self.log.info(
            "draining {count} connection(s), grace {grace}s",
            event="shutdown.drain",
            count=len(sessions),
            grace=self.grace,
        )
        for session in sessions:
            session.shutdown()
        if self.factory.sessions:
            self._timer = self.clock.callLater(self.grace, self.force, "grace period over")
        self.check()
        return waiter

    def check(self) -> None:
        """
        Called when a session ends: fire once none is left.
        """
        if not self.draining or self.factory.sessions:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def force(self, why: str) -> None:
        """
        Abort every remaining connection now.
        """
        self._timer = None
        remaining = list(self.factory.sessions)
        self.forced += len(remaining)
        if remaining:
            self.log.info(
                "closing {count} connection(s) at once: {why}",
                event="shutdown.force",
                count=len(remaining),
                why=why,
            )
        for session in remaining:
            session.cut()


class StopRequests:
    """
    The stop requests of one process, whichever way they come (SIGTERM, SIGINT,
    C{netguard ctl drain}): the first stops the reactor, which drains through the service's
    C{stopService}; a later stop signal cuts what is left at once; a later C{ctl drain} is
    answered that the drain is already under way. Nothing asks the reactor to stop twice.

    @ivar requested: whether a stop was requested.
    """

    def __init__(self, reactor: Any, force: Callable[[str], None]) -> None:
        """
        @param reactor: the reactor to stop.
        @param force: aborts every remaining connection, given why (L{Drainer.force}, or a
            supervisor's, which tells every worker).
        """
        self.reactor = reactor
        self.force = force
        self.requested = False

    def request(self) -> bool:
        """
        Ask for the stop (in the reactor thread).

        @return: whether this was the first request (the reactor stops on its next turn);
            L{False} when a stop was already under way, which this request leaves alone.
        """
        if self.requested:
            return False
        self.requested = True
        self.reactor.callLater(0, _stop, self.reactor)
        return True

    def signal(self) -> None:
        """
        A stop signal (in the reactor thread): the first stops, any later one cuts.
        """
        if not self.request():
            self.force(SECOND_SIGNAL)


def install_sigterm(reactor: Any, stops: StopRequests) -> Any:
    """
    Make SIGTERM (and SIGINT) a stop request of C{stops}: the first (or a C{ctl drain}
    before it) stops the reactor, which drains; a later signal aborts what is left at once.

    @return: the previous handler, for L{signal.signal} to restore.
    """

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(stops.signal)

    signal.signal(signal.SIGINT, handler)  # Ctrl-C in the foreground: the same two steps
    return signal.signal(signal.SIGTERM, handler)


def _stop(reactor: Any) -> None:
    """
    Stop C{reactor} unless it is stopping already (for a reason of its own).
    """
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass

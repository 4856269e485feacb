# -*- test-case-name: tests.test_drain -*-
"""
Graceful shutdown: stop accepting, tell clients still in the line phase
C{ERR SHUTTING_DOWN}, let open relays finish up to a grace period, then close what is left
(C{docs/operating.md} section 7.4).

L{Drainer} works on anything that keeps a set of live sessions (C{factory.sessions}) whose
sessions have a C{shutdown()} method (answer and close in the line phase, keep relaying
otherwise) and a C{transport}. A second SIGTERM, or the end of the grace period, aborts every
remaining connection at once.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger


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
            session.transport.abortConnection()


def install_sigterm(reactor: Any, drainer: Drainer) -> Any:
    """
    Make SIGTERM (and SIGINT) stop the reactor (which drains, through the service's
    C{stopService}) and a second signal abort what is left at once.

    @return: the previous handler, for L{signal.signal} to restore.
    """
    count = [0]

    def handler(signum: int, frame: Any) -> None:
        count[0] += 1
        if count[0] == 1:
            reactor.callFromThread(_stop, reactor)
        else:
            reactor.callFromThread(drainer.force, "second stop signal")

    signal.signal(signal.SIGINT, handler)  # Ctrl-C in the foreground: the same two steps
    return signal.signal(signal.SIGTERM, handler)


def _stop(reactor: Any) -> None:
    if reactor.running:
        reactor.stop()

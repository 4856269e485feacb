# -*- test-case-name: tests.test_shared_link -*-
"""
One kept-up connection to Redis: connected at start, authenticated, reconnected with backoff
and jitter after a loss, and every command bounded in time. Nothing ever waits for a
connection: while it is down, commands fail at once.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Any, Final

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from netguard.shared.resp import Reply, RespProtocol

#: Seconds allowed for a connection (and its AUTH) to be set up.
CONNECT_TIMEOUT: Final = 2.0
#: Reconnection delays: the first, and the most it doubles to (each drawn with +-50% jitter).
BACKOFF_FIRST: Final = 0.25
BACKOFF_MAX: Final = 10.0
#: Seconds a connection must stay up, having answered a real command, before its loss
#: counts as a new outage: only then does the next retry start at L{BACKOFF_FIRST} again
#: (and the shared state log that sharing was restored). A Redis that answers and then
#: drops the connection every few seconds is retried with the growing delay.
STABLE: Final = 10.0
#: Seconds a reply may be missing (counted from the command; at least twice the command's
#: bound) before the connection is taken for gone. A reply past the command's bound fails
#: its caller only: an event loop busy for longer than the bound (a burst of handshakes)
#: reads a reply that came in time only after the timer ran.
GRACE: Final = 1.0


class Unavailable(Exception):
    """
    Redis is not connected, or did not answer within the bound; the caller goes on alone.
    """


class RedisLink:
    """
    A connection to Redis that is kept up.

    @ivar protocol: the connected L{RespProtocol}, or L{None} while down.
    @ivar up: whether it is connected and authenticated.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamClientEndpoint,
        *,
        timeout: float,
        password: bytes | None = None,
        on_up: Callable[[RedisLink], object] | None = None,
        on_down: Callable[[RedisLink, str], object] | None = None,
        random: _random.Random | None = None,
    ) -> None:
        """
        @param reactor: the clock and scheduler.
        @param endpoint: where Redis listens.
        @param timeout: the most seconds a command waits for its reply.
        @param password: sent with AUTH after each connect, when given.
        @param on_up: called each time the link is (again) connected and authenticated.
        @param on_down: called with a reason each time an attempt fails or the link is lost.
        """
        self.reactor = reactor
        self.endpoint = endpoint
        self.timeout = timeout
        self.password = password
        self.on_up = on_up
        self.on_down = on_down
        self._random = random if random is not None else _random.Random()
        self.protocol: RespProtocol | None = None
        self.up = False
        self.running = False
        self.subscriber = False
        self._delay = BACKOFF_FIRST
        self._retry: Any = None
        self._attempt: Deferred[Any] | None = None
        self._up_since: float | None = None
        self._answered = False
        self.timeouts = 0
        self.late = 0
        self.errors = 0
        self.failures = 0

    # -- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        """
        Connect now, and again after every loss until L{stop}.
        """
        if self.running:
            return
        self.running = True
        self._connect()

    def stop(self) -> None:
        """
        Close the connection and make no more attempts.
        """
        self.running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        protocol, self.protocol = self.protocol, None
        self.up = False
        self._up_since = None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]

    def _connect(self) -> None:
        self._retry = None
        if not self.running:
            return
        endpoint: Any = self.endpoint
        factory = Factory.forProtocol(RespProtocol)
        factory.noisy = False  # no "Starting factory" / "Stopping factory" per attempt
        attempt: Deferred[Any] = endpoint.connect(factory)
        self._attempt = attempt
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            attempt.cancel()

        guard = self.reactor.callLater(CONNECT_TIMEOUT, expire)

        def connected(protocol: RespProtocol) -> Deferred[Any]:
            protocol.on_lost = lambda: self._lost(protocol)
            self.protocol = protocol
            # A Redis that accepts but does not answer is not up: the link is up only once
            # it answered (AUTH, then PING) within CONNECT_TIMEOUT.
            if self.password is None:
                return protocol.command("PING")
            return protocol.command("AUTH", self.password).addCallback(
                lambda _: protocol.command("PING")
            )

        def ready(_: object) -> None:
            if guard.active():
                guard.cancel()
            self._attempt = None
            if not self.running or self.protocol is None:
                return
            self.up = True
            self._up_since = self.reactor.seconds()
            self._answered = False
            if self.on_up is not None:
                self.on_up(self)

        def failed(failure: Failure) -> None:
            if guard.active():
                guard.cancel()
            self._attempt = None
            protocol, self.protocol = self.protocol, None
            if protocol is not None and protocol.transport is not None and not protocol.lost:
                protocol.on_lost = None
                protocol.transport.abortConnection()  # type: ignore[attr-defined]
            if expired:
                # Our own deadline cancelled the attempt: say so, not "CancelledError".
                self._down(f"no answer within {CONNECT_TIMEOUT}s")
            else:
                self._down(_reason(failure))

        attempt.addCallback(connected).addCallbacks(ready, failed)

    def answered(self) -> None:
        """
        The link served a real command in time. If this connection then stays up for
        L{STABLE} seconds, its loss retries after the first delay again. (Answering at
        connect is not enough: a Redis that answers PING and then stalls would otherwise be
        retried at once, over and over; nor is answering once: a Redis that answers and
        drops the connection a second later would be.)
        """
        self._answered = True

    @property
    def stable(self) -> bool:
        """
        Whether this connection has answered a real command and has been up for at least
        L{STABLE} seconds (until its loss is handled).
        """
        since = self._up_since
        return self._answered and since is not None and self.reactor.seconds() - since >= STABLE

    def _lost(self, protocol: RespProtocol) -> None:
        if protocol is not self.protocol:
            return
        self.protocol = None
        if self.up:
            self.up = False
            self._down("connection lost")

    @property
    def grace(self) -> float:
        """
        Seconds after a command that its missing reply drops the connection.
        """
        return max(GRACE, 2 * self.timeout)

    def drop(self, reason: str) -> None:
        """
        Take the connection for gone: abort it, report the link down with C{reason} (the
        owner logs it), and reconnect (with backoff).
        """
        protocol, self.protocol = self.protocol, None
        if protocol is None:
            return
        protocol.on_lost = None
        if protocol.transport is not None and not protocol.lost:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
        self._down(reason)

    def _down(self, reason: str) -> None:
        if self.stable:
            self._delay = BACKOFF_FIRST  # a new outage, after a connection that held
        self.up = False
        self._up_since = None
        self._answered = False
        self.failures += 1
        if self.on_down is not None:
            self.on_down(self, reason)
        if not self.running or self._retry is not None:
            return
        delay = self._delay * self._random.uniform(0.5, 1.5)
        self._delay = min(BACKOFF_MAX, self._delay * 2)
        self._retry = self.reactor.callLater(delay, self._connect)

    # -- commands ---------------------------------------------------------------------------

    def call(self, *args: bytes | str | int) -> Deferred[Reply]:
        """
        Send a command and wait for its reply at most L{timeout} seconds.

        @return: a L{Deferred} of the reply; it fails with L{Unavailable} at once while the
            link is down, or after the bound. A reply later than the bound is read and
            dropped (the connection is kept); a reply still missing L{GRACE} seconds (at
            least twice the bound) after the command was sent drops the connection (a Redis
            that does not answer is treated as gone), and the link reconnects.
        """
        protocol = self.protocol
        if not self.up or protocol is None:
            return fail(Unavailable("not connected"))
        answer = protocol.command(*args)
        result: Deferred[Reply] = Deferred()

        def overdue() -> None:
            if protocol is self.protocol:
                self.drop(f"no answer within {self.grace}s")

        def expire() -> None:
            self.timeouts += 1
            if not result.called:
                result.errback(Unavailable(f"no answer within {self.timeout}s"))

        timer = self.reactor.callLater(self.timeout, expire)
        grace = self.reactor.callLater(self.grace, overdue)

        def settle(outcome: Reply | Failure) -> None:
            if timer.active():
                timer.cancel()
            if grace.active():
                grace.cancel()
            if result.called:
                if not isinstance(outcome, Failure):
                    self.late += 1
                return
            if isinstance(outcome, Failure):
                self.errors += 1
                result.errback(outcome)
            else:
                result.callback(outcome)

        answer.addBoth(settle)
        return result

    def send(self, *args: bytes | str | int) -> None:
        """
        Send a command whose reply nobody waits for (a failure is only counted).
        """
        self.call(*args).addErrback(lambda _: None)


def _reason(failure: Failure) -> str:
    text = failure.getErrorMessage() or failure.type.__name__
    return text[:200]

# -*- test-case-name: tests.test_mux_endpoint,tests.integration.test_mux_tunnel -*-
"""
A client endpoint that carries each connection as a stream of one shared, authenticated
multiplexed session to a netguard gateway (C{MUX yamux/1}): L{MuxClientEndpoint}.

The session is established on the first C{connect}, reused by later ones, and established
again (with backoff) after it is lost; a gateway whose greeting lacks C{MUX=yamux/1} is
reached with one connection per C{connect}, as L{NGPClientEndpoint} does.
"""

from __future__ import annotations

import random as _random
import re
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netguard.auth.scram import AuthFailed
from netguard.client.endpoint import NGPClientEndpoint, log_ticket_refused, ticket_store
from netguard.client.mux_opener import StreamOpener
from netguard.client.protocol import (
    ClientState,
    Credentials,
    NGPClientProtocol,
    NGPError,
    NGPProtocolError,
    TicketRefused,
)
from netguard.client.tickets import TicketStore
from netguard.log import escape
from netguard.mux.frames import GoAwayCode
from netguard.mux.limits import MuxLimits, TokenBucket
from netguard.mux.outcome import OpenRefused, SessionEnd
from netguard.mux.protocol import MuxProtocol
from netguard.mux.session import MuxSession

#: The framing asked for and the greeting's capability word that offers it.
YAMUX_1 = "yamux/1"

#: Refusals of the login that retrying cannot cure: waiting connects fail at once and no
#: retry is scheduled (the next C{connect} tries again, after the backoff delay).
FATAL_CODES = frozenset({"AUTH_FAILED", "NOT_AUTHORIZED", "UNSUPPORTED_FRAMING"})

#: The share of the gateway's stream-opening rate and burst a session uses, so that
#: openings bunched on the way never pass the gateway's bound, which ends the session. The
#: bounds are those C{OK MUX} announces (C{OPENRATE=<rate>/<burst>}); a gateway that does
#: not announce them (or announces them malformed) is assumed to have ours
#: (C{MuxLimits.open_rate} and C{open_burst}).
PACE_RATE = 0.9
PACE_BURST = 0.5

#: The most streams one client session carries at once, whatever the gateway's C{STREAMS=}
#: announces (the session takes the lower of the two); the gateway's own default per user
#: is the same. Each stream's receive window (at least the spec's 256 KiB) is credit the
#: gateway may use, so this bounds what one session can be made to hold in the client:
#: C{1,024 * 256 KiB + window_budget} (272 MiB with the default limits).
CLIENT_MAX_STREAMS = 1024

#: C{OPENRATE=}'s value: a decimal rate (openings per second) and a whole burst.
_OPEN_RATE = re.compile(rb"([0-9]{1,9}(?:\.[0-9]{1,17})?)/([0-9]{1,9})")


def parse_open_rate(value: bytes) -> tuple[float, int] | None:
    """
    @param value: what follows C{OPENRATE=} in C{OK MUX}.
    @return: the gateway's stream-opening rate and burst, or None if C{value} is not
        C{<rate>/<burst>} with both above zero.
    """
    match = _OPEN_RATE.fullmatch(value)
    if match is None:
        return None
    rate, burst = float(match.group(1)), int(match.group(2))
    if rate <= 0 or burst <= 0:
        return None
    return rate, burst


#: L{NGPProtocolError} reasons that retrying cannot cure either.
FATAL_REASONS = frozenset(
    {"not-a-gateway", "no-common-mechanism", "downgrade", "tls-verification", "tls-refused"}
)

_log = Logger()


class MuxUnsupported(Exception):
    """
    The gateway's greeting does not offer C{MUX=yamux/1}.
    """


class SessionUnavailable(ConnectError):
    """
    No session could be had within the wait bound; C{reason} says what happened last.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(string=reason)
        self.reason = reason


def backoff_delay(attempt: int, random: Callable[[], float], base: float, cap: float) -> float:
    """
    Exponential backoff with full jitter: a random delay up to C{base * 2**attempt}, at most
    C{cap}.

    @param attempt: how many logins in a row have failed (0 after a session was lost).
    @param random: a source of floats in [0, 1).
    """
    return random() * min(cap, base * 2 ** min(attempt, 32))


class _MuxLogin(NGPClientProtocol):
    """
    netguard's login, then C{MUX yamux/1} instead of C{OPEN}, then a client L{MuxSession}
    over the connection (through L{MuxProtocol}). L{opened} fires once C{OK MUX} has
    arrived, or fails as a login does, or with L{MuxUnsupported} before any SCRAM message
    if the greeting does not offer multiplexing.

    @ivar max_streams: the most streams this session may carry at once: the gateway's
        C{STREAMS=} bounded by the endpoint's ceiling (L{CLIENT_MAX_STREAMS} by default);
        without C{STREAMS=}, our limits' C{max_streams} (the gateway's default) within that
        ceiling.
    @ivar open_rate: the gateway's stream-opening rate on this session (announced in
        C{OK MUX}, else assumed from our limits).
    @ivar open_burst: the gateway's stream-opening burst, likewise.
    @ivar pace: the token bucket our stream openings on this session take from:
        L{PACE_RATE} of C{open_rate}, L{PACE_BURST} of C{open_burst}.
    @ivar retired: whether we sent go-away (no new stream; the open ones go on).
    """

    def __init__(
        self,
        credentials: Credentials,
        clock: Any,
        limits: MuxLimits,
        on_end: Callable[[_MuxLogin, SessionEnd], None],
        tickets: TicketStore | None = None,
        present_ticket: bool = True,
        stream_ceiling: int = CLIENT_MAX_STREAMS,
    ) -> None:
        super().__init__(
            credentials, "mux", clock=clock, tickets=tickets, present_ticket=present_ticket
        )
        self._limits = limits
        self._on_session_end = on_end
        self._stream_ceiling = stream_ceiling
        self.mux: MuxProtocol | None = None
        self.max_streams = min(limits.max_streams, stream_ceiling)
        self.retired = False
        self._set_pace(limits.open_rate, limits.open_burst)

    def _set_pace(self, rate: float, burst: int) -> None:
        self.open_rate, self.open_burst = rate, burst
        self.pace = TokenBucket(
            rate * PACE_RATE, max(1, int(burst * PACE_BURST)), self.clock.seconds()
        )

    def pace_interval(self) -> float:
        """
        @return: seconds between two openings at this session's pace.
        """
        return 1.0 / (self.open_rate * PACE_RATE)

    @property
    def session(self) -> MuxSession | None:
        """
        @return: the session, once C{OK MUX} has arrived.
        """
        return self.mux.session if self.mux is not None else None

    def usable(self) -> bool:
        """
        @return: whether a stream can be opened now (the session runs, neither side has
            sent go-away, and it is below its stream cap).
        """
        session = self.session
        return (
            session is not None
            and not self.retired
            and session.ended is None
            and session.remote_go_away is None
            and session.open_streams < self.max_streams
        )

    def open_line(self) -> bytes:
        return b"MUX " + YAMUX_1.encode("ascii")

    def lineReceived(self, line: bytes) -> None:
        if self.state is ClientState.AWAIT_GREETING and line.startswith(b"NETGUARD/1 "):
            offered = [
                word[4:].split(b",") for word in line.split(b" ")[2:] if word.startswith(b"MUX=")
            ]
            if not any(YAMUX_1.encode("ascii") in framings for framings in offered):
                self._fail(MuxUnsupported("the gateway does not offer MUX=yamux/1"))
                return
        if self.state is ClientState.AWAIT_OPEN_OK and line.startswith(b"OK MUX "):
            self._upgrade(line)
            return
        super().lineReceived(line)

    def _upgrade(self, line: bytes) -> None:
        words = line.split(b" ")
        if words[2:3] != [YAMUX_1.encode("ascii")]:
            self._fail(NGPProtocolError(f"unexpected reply {escape(line, 200)} to MUX"))
            return
        for word in words[3:]:
            if word.startswith(b"STREAMS=") and word[8:].isdigit() and len(word) <= 18:
                self.max_streams = max(1, min(self._stream_ceiling, int(word[8:])))
            elif word.startswith(b"OPENRATE="):
                announced = parse_open_rate(word[9:])
                if announced is None:
                    _log.warn(
                        "ignoring a malformed {word} in OK MUX; pacing as if {rate}/{burst}",
                        event="tunnel.mux.openrate_ignored",
                        word=escape(word, 100),
                        rate=self.open_rate,
                        burst=self.open_burst,
                    )
                else:
                    self._set_pace(*announced)
        self._cancel_open_timer()
        self.state = ClientState.OPEN
        self.setRawMode()
        self.setTimeout(None)
        self.mux = MuxProtocol(
            client=True,
            clock=self.clock,
            accept=lambda stream: None,
            limits=attrs.evolve(self._limits, max_streams=self.max_streams),
            on_end=lambda end: self._on_session_end(self, end),
        )
        self.mux.makeConnection(self.transport)
        self.opened.callback(None)

    def rawDataReceived(self, data: bytes) -> None:
        if self.mux is not None:
            self.mux.dataReceived(data)

    def readConnectionLost(self) -> None:
        # No frame can follow a half-close of the whole connection.
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.mux is not None:
            self.mux.connectionLost(reason)
        super().connectionLost(reason)

    def abandon(self) -> None:
        """
        The endpoint gave up on this login (its connect failed, or was cancelled): close
        the connection if it has one, and never deliver a session from it.
        """
        self.opened.addErrback(lambda _: None)
        if not self._close_failed() and self.state is ClientState.OPEN:
            self.close()  # the session too, not only the connection

    def close(self) -> None:
        """
        End the session (its streams end with L{netguard.mux.stream.SessionLost}) and
        close the connection.
        """
        if self.mux is not None and self.mux.session is not None:
            self.retired = True
            self.mux.session.go_away()
            self.mux.session.connection_lost(None)
        if self.transport is not None:
            self.transport.unregisterProducer()
            self.transport.loseConnection()


class _LoginFactory(Factory):
    """
    Builds one login's protocol for the gateway endpoint, unless the endpoint has given up
    on that login by then (its connect failed before the connection was made: a connection
    that goes on anyway is then closed at once, never logged in).
    """

    noisy = False

    def __init__(self, login: _MuxLogin) -> None:
        self.login = login
        self.built = False
        self.abandoned = False

    def buildProtocol(self, addr: Any) -> _MuxLogin | None:
        if self.abandoned or self.built:
            return None
        self.built = True
        return self.login

    def abandon(self) -> None:
        """
        Give the login up: close its connection if it has one, refuse one that comes later.
        """
        self.abandoned = True
        self.login.abandon()


class _Waiter:
    """
    A C{connect} waiting for a session: its factory, its result and its deadline.
    """

    __slots__ = ("factory", "result", "timer")

    def __init__(self, factory: Factory, result: Deferred[Any]) -> None:
        self.factory = factory
        self.result = result
        self.timer: Any = None


@implementer(IStreamClientEndpoint)
class MuxClientEndpoint:
    """
    Connect to C{service} behind the gateway reached through C{gateway}, each connection a
    stream of a shared multiplexed session.

    One session is established lazily by the first C{connect} and shared; another (up to
    C{max_sessions}) only when every one is saturated: at its stream cap, or out of opening
    tokens while connects wait. Openings on a session are paced below the gateway's opening
    rate (L{PACE_RATE}, L{PACE_BURST}); a connect past the pace waits for the first token
    of any session, or for a new session. Connects issued while no
    session has room wait for one, at most C{wait_timeout} seconds, then fail with
    L{SessionUnavailable}. A lost session ends its streams (their protocols see
    L{netguard.mux.stream.SessionLost}); the next login waits a backoff delay with full
    jitter (C{backoff_base} doubling per failed login, at most C{backoff_cap}). A login the
    gateway refuses for good (L{FATAL_CODES}, an impostor, not a gateway) fails the waiting
    connects at once and is not retried by itself. A greeting without C{MUX=yamux/1} makes
    this endpoint connect as L{NGPClientEndpoint} from then on (sharing the tickets).

    Each login presents a returning-client ticket kept from an earlier one, if any, and asks
    for a new one (C{TICKET}, in the same write as C{MUX}). A login whose ticket the gateway
    refuses (L{TicketRefused}) is made again at once without one: no backoff, not counted
    as a failure, once.

    @ivar sessions: the live sessions.
    @ivar logins: how many logins were started.
    @ivar fallback: the per-connection endpoint, once the gateway turned out not to
        multiplex.
    @ivar tickets: where the gateway's tickets are kept (L{None}: not used).
    """

    log = _log

    def __init__(
        self,
        reactor: Any,
        gateway: Any,
        credentials: Credentials,
        service: str,
        *,
        max_sessions: int = 4,
        max_streams: int = CLIENT_MAX_STREAMS,
        wait_timeout: float = 15.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 10.0,
        limits: MuxLimits | None = None,
        random: Callable[[], float] = _random.random,
        tickets: bool | TicketStore = True,
    ) -> None:
        """
        @param reactor: the reactor (or a clock with C{callLater} for tests).
        @param gateway: the L{IStreamClientEndpoint} of the gateway.
        @param credentials: who we are.
        @param service: the service every connection opens.
        @param max_sessions: the most sessions at once (at least 1).
        @param max_streams: the most streams one session carries at once, whatever the
            gateway announces (at least 1); a session carries the gateway's C{STREAMS=}
            within it, so the endpoint carries up to C{max_sessions} times that.
        @param wait_timeout: seconds a connect may wait for a session.
        @param backoff_base: the first backoff bound, seconds.
        @param backoff_cap: the largest backoff bound, seconds.
        @param limits: the client sessions' bounds.
        @param random: floats in [0, 1) for the jitter.
        @param tickets: C{True} (a store of its own), C{False} (neither ask for nor present
            tickets) or a L{TicketStore} to share.
        """
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        self.reactor = reactor
        self.gateway = gateway
        self.credentials = credentials
        self.service = service
        self.max_sessions = max_sessions
        self.max_streams = max_streams
        self.wait_timeout = wait_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.limits = limits if limits is not None else MuxLimits()
        self.random = random
        self.tickets = ticket_store(tickets)
        self.sessions: list[_MuxLogin] = []
        self.logins = 0
        self.fallback: NGPClientEndpoint | None = None
        self._waiters: deque[_Waiter] = deque()
        self._login: Deferred[Any] | None = None
        self._retry: Any = None
        self._pace_timer: Any = None
        self._failures = 0
        self._lost = False
        self._fatal: Exception | None = None
        self._not_before = 0.0
        self._last_error = "no session yet"

    def connect(self, protocolFactory: Factory) -> Deferred[Any]:
        """
        Open a stream to the service and connect C{protocolFactory}'s protocol to it once
        the gateway has answered C{OK OPEN}.

        @return: a L{Deferred} firing with the application's protocol, or failing with
            L{NGPError} (the gateway refused this stream or the login),
            L{SessionUnavailable}, L{AuthFailed} or L{NGPProtocolError}.
        """
        if self.fallback is not None:
            return self.fallback.connect(protocolFactory)
        if self._fatal is not None and self.reactor.seconds() < self._not_before:
            # A refused login is not retried before its backoff delay, however many
            # connects come meanwhile.
            failed: Deferred[Any] = Deferred()
            failed.errback(self._fatal)
            return failed
        if not self._waiters:
            session = self._pick()
            if session is not None:
                return self._open(session, protocolFactory)
        waiter = _Waiter(protocolFactory, Deferred(lambda d: self._cancel(waiter)))
        waiter.timer = self.reactor.callLater(self.wait_timeout, self._expired, waiter)
        self._waiters.append(waiter)
        self._serve()
        return waiter.result

    # streams

    def _pick(self) -> _MuxLogin | None:
        """
        @return: a session that can take a stream now (below its stream cap, with a token
            of its opening pace, which is then taken), if any.
        """
        now = self.reactor.seconds()
        for session in self.sessions:
            if session.usable() and session.pace.take(now):
                return session
        return None

    def _paced(self) -> bool:
        """
        @return: whether some session has room but no opening token now.
        """
        return any(session.usable() for session in self.sessions)

    def _open(self, login: _MuxLogin, factory: Factory) -> Deferred[Any]:
        opener: StreamOpener | None = None

        def cancel(result: Deferred[Any]) -> None:
            if opener is not None:
                opener.cancel()

        result: Deferred[Any] = Deferred(cancel)
        opener = StreamOpener(self.service, factory, result, self._stream_gone)
        session = login.session
        assert session is not None
        try:
            session.open_stream(opener)
        except OpenRefused as refused:
            # Only the ids can run out here (usable() checked the rest): retire the session.
            login.retired = True
            session.go_away()
            result.errback(SessionUnavailable(f"session cannot open a stream: {refused}"))
        return result

    def _stream_gone(self) -> None:
        # A stream ended: its session may have room for a waiting connect.
        if self._waiters:
            self.reactor.callLater(0, self._serve)

    def _serve(self) -> None:
        while self._waiters:
            session = self._pick()
            if session is None:
                if self._paced():
                    # Saturated: the sessions have room but no opening token. The waiters
                    # take the next token, and another session (while below max_sessions)
                    # adds its own opening rate.
                    self._pace_later()
                self._want_session()
                return
            waiter = self._waiters.popleft()
            self._stop(waiter)
            self._open(session, waiter.factory).chainDeferred(waiter.result)

    def _pace_later(self) -> None:
        if self._pace_timer is None:
            paced = [session.pace_interval() for session in self.sessions if session.usable()]
            interval = min(paced, default=1.0 / (self.limits.open_rate * PACE_RATE))
            self._pace_timer = self.reactor.callLater(interval, self._paced_serve)

    def _paced_serve(self) -> None:
        self._pace_timer = None
        self._serve()

    # waiting connects

    def _expired(self, waiter: _Waiter) -> None:
        waiter.timer = None
        self._waiters.remove(waiter)
        waiter.result.errback(
            SessionUnavailable(
                f"no session within {self.wait_timeout:g} s: {escape(self._last_error, 300)}"
            )
        )

    def _cancel(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            self._stop(waiter)

    @staticmethod
    def _stop(waiter: _Waiter) -> None:
        timer, waiter.timer = waiter.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            self._stop(waiter)
            waiter.result.errback(error)

    # sessions

    def _want_session(self) -> None:
        """
        Start a login if connects wait, none is under way or scheduled, and there is room
        for another session.
        """
        if not self._waiters or self._login is not None or self._retry is not None:
            return
        if len(self.sessions) >= self.max_sessions:
            return  # the waiters wait for a stream to end
        delay = 0.0
        if self._fatal is None and (self._failures or self._lost):
            # The first login after a lost session or a failed login waits up to
            # backoff_base, each further failure doubles the bound (full jitter).
            attempt = max(0, self._failures - 1)
            delay = backoff_delay(attempt, self.random, self.backoff_base, self.backoff_cap)
        if delay > 0:
            self._retry = self.reactor.callLater(delay, self._start_login)
        else:
            self._start_login()

    def _start_login(self, present: bool = True) -> None:
        """
        @param present: present a ticket, if one is kept (false right after one was
            refused).
        """
        self._retry = None
        if not self._waiters:
            return  # the connects that wanted it have gone: the endpoint never logs in alone
        self.logins += 1
        login = _MuxLogin(
            self.credentials,
            self.reactor,
            self.limits,
            self._session_ended,
            tickets=self.tickets,
            present_ticket=present,
            stream_ceiling=self.max_streams,
        )
        factory = _LoginFactory(login)
        self._login = self.gateway.connect(factory)
        self._login.addCallback(lambda _: login.opened)
        self._login.addCallbacks(
            lambda _: self._logged_in(login), self._login_failed, errbackArgs=(factory,)
        )

    def _logged_in(self, login: _MuxLogin) -> None:
        self._login = None
        self._failures = 0
        self._lost = False
        self._fatal = None
        self.sessions.append(login)
        self.log.info(
            "multiplexed session to {service} up ({streams} streams)",
            event="tunnel.mux.up",
            service=escape(self.service),
            streams=login.max_streams,
            open_rate=login.open_rate,
            open_burst=login.open_burst,
        )
        self._serve()

    def _login_failed(self, failure: Failure, factory: _LoginFactory) -> None:
        self._login = None
        # The gateway endpoint may fail the connect yet go on with the connection (Twisted's
        # connectors do when they cannot arm their timeout): that login must not become a
        # session nobody holds.
        factory.abandon()
        error = failure.value
        self._last_error = str(error)
        if isinstance(error, TicketRefused):
            # Only a login that presented a ticket fails so, and its retry presents none.
            log_ticket_refused(self.log, self.service, error)
            self._start_login(present=False)
            return
        if isinstance(error, MuxUnsupported):
            self.fallback = NGPClientEndpoint(
                self.reactor,
                self.gateway,
                self.credentials,
                self.service,
                tickets=self.tickets if self.tickets is not None else False,
            )
            self.log.info(
                "the gateway does not multiplex; one connection per connect to {service}",
                event="tunnel.mux.fallback",
                service=escape(self.service),
            )
            waiters, self._waiters = self._waiters, deque()
            for waiter in waiters:
                self._stop(waiter)
                self.fallback.connect(waiter.factory).chainDeferred(waiter.result)
            return
        fatal = (
            isinstance(error, AuthFailed)
            or (isinstance(error, NGPError) and error.code in FATAL_CODES)
            or (isinstance(error, NGPProtocolError) and error.reason in FATAL_REASONS)
        )
        self._failures += 1
        self.log.warn(
            "login for a multiplexed session to {service} failed: {reason}",
            event="tunnel.mux.login_failed",
            service=escape(self.service),
            reason=escape(str(error), limit=300),
            attempt=self._failures,
            retried=not fatal,
        )
        if fatal:
            assert isinstance(error, Exception)
            self._fatal = error
            self._not_before = self.reactor.seconds() + backoff_delay(
                self._failures - 1, self.random, self.backoff_base, self.backoff_cap
            )
            self._fail_waiters(error)
            return
        self._fatal = None
        self._want_session()

    def _session_ended(self, login: _MuxLogin, end: SessionEnd) -> None:
        if login in self.sessions:
            self.sessions.remove(login)
        # After the gateway's normal go-away (its idle timeout, a drain) the next login need
        # not wait; after anything else (a lost connection, an error) it backs off.
        session = login.session
        self._lost = session is None or session.remote_go_away is not GoAwayCode.NORMAL
        self._last_error = f"session ended: {end.violation.value}"
        self.log.info(
            "multiplexed session to {service} ended: {violation}",
            event="tunnel.mux.down",
            service=escape(self.service),
            violation=end.violation.value,
            by_peer=end.by_peer,
        )
        if self._waiters:
            self.reactor.callLater(0, self._serve)

    def close(self) -> None:
        """
        End every session and fail the waiting connects (for an orderly stop).
        """
        pending, self._login = self._login, None
        if pending is not None:
            pending.cancel()
        for timer in (self._retry, self._pace_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._retry = self._pace_timer = None
        self._fail_waiters(SessionUnavailable("the endpoint was closed"))
        for login in list(self.sessions):
            login.close()

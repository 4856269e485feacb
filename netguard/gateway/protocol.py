# -*- test-case-name: tests.test_gateway_protocol -*-
"""
The NGP/1 server session: greeting, SCRAM authentication, service selection, then raw bytes.

The session is an explicit state machine. L{TRANSITIONS} lists, for each L{SessionState},
every command accepted there and the method that handles it; anything else is refused with a
stable code, so an illegal transition (C{OPEN} before C{AUTH}) cannot be written by accident.
The bounded framing (line length, pre-authentication budgets, early talkers, deadlines,
stalled readers) comes from L{GuardedLineReceiver}.

Wire format and codes: C{docs/protocol.md}.
"""

from __future__ import annotations

import re
import sys
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IReactorTime,
    ISSLTransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from netguard.admitting import Admitted
from netguard.auth.scram import (
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    AuthFailed,
    ServerExchange,
    decode_wire,
    encode_wire,
)
from netguard.errors import ErrorCode
from netguard.framing import FramingLimits, FramingPhase
from netguard.gateway.opening import (
    OpenRefusal,
    backend_failed,
    checks_refused,
    choose_service,
)
from netguard.gateway.returning import CLOSED_BY_ADMISSION, LaneSession
from netguard.gateway.seams import Service, SessionHost
from netguard.gateway.standing import PENALISED, offence_blocks, standing_refusal
from netguard.gateway.states import TRANSITIONS, SessionState, syntax_problem
from netguard.gateway.streams import YAMUX_1, StreamGate, StreamHost
from netguard.log import escape, quoted
from netguard.outbound.backends import BackendLeg
from netguard.outbound.proxy_v2 import ProxyOrigin
from netguard.peer.checks import PeerCheckRun, Verdict
from netguard.relay import RelayResult
from netguard.tls import channel_binding_for, connection_info, describe_tls_error

_UNKNOWN = object()

#: A session's offences until its first (one shared empty set, not one per connection).
_NO_OFFENCES: frozenset[str] = frozenset()

#: Refusals that count as offences for admission control's per-source penalties.
_OFFENCES: dict[ErrorCode, str] = {
    ErrorCode.AUTH_FAILED: "auth_failure",
    ErrorCode.EARLY_TALKER: "early_talker",
    ErrorCode.TIMEOUT: "timeout",
    ErrorCode.LINE_TOO_LONG: "format_error",
    ErrorCode.TOO_MANY_LINES: "format_error",
    ErrorCode.TOO_MUCH_DATA: "format_error",
    ErrorCode.BAD_SYNTAX: "format_error",
    ErrorCode.UNKNOWN_COMMAND: "format_error",
}

#: The relay's C{ended_by} (side A is the client, B the backend) as logged in C{closed_by}.
_RELAY_ENDINGS = {
    "a": "client",
    "b": "backend",
    "stalled-a": "client-stalled",
    "stalled-b": "backend-stalled",
}
#: The words the text log line gives for each C{closed_by}.
_CLOSE_REASONS = {
    "client": "the client closed",
    "backend": "the backend closed",
    "server": "the gateway closed",
    CLOSED_BY_ADMISSION: "admission ended it (evicted, or its probation ended)",
    "idle": "idle timeout",
    "client-stalled": "the client stopped reading for write_timeout",
    "backend-stalled": "the backend stopped reading for write_timeout",
}
_SERVICE_NAME = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class GatewaySession(LaneSession):
    """
    One client connection to the gateway.

    @ivar state: the current L{SessionState}.
    @ivar user: the authenticated user name, or L{None}.
    @ivar conn_id: a short id that ties this connection's log events together.

    Once a service is open, the bytes are relayed by the backend leg's
    L{netguard.relay.Splice}; half-closes are passed through both ways.
    """

    #: Failed logins have their own budget (C{max_auth_attempts}) and are each logged
    #: (C{auth.fail}); every other error reply counts against C{limits.max_errors}.
    errors_exempt = frozenset({ErrorCode.AUTH_FAILED})

    #: The session's own state lives in slots, so that the instance dict holds only the
    #: framing's and Twisted's attributes: kept under CPython's limit for key-sharing dicts
    #: (about 30 names per class), each session's dict stays a compact shared-key one
    #: instead of a full table (about 1.3 KiB more per connection, measured).
    __slots__ = (
        "conn_id",
        "admitted",
        "state",
        "user",
        "service",
        "auth_attempts",
        "bytes_up",
        "bytes_down",
        "closed_by",
        "_exchange",
        "_mechanism",
        "_leg",
        "_pending",
        "_client_eof",
        "_offences",
        "_peer_run",
        "_binding",
        "_tls_ready",
        "_peer_verdict",
        "_started",
        "_gate",
        "_ticketed",
        "_lane_user",
        "_accepted",
        "_cut",
        "_login_verifier",
    )

    def __init__(
        self,
        factory: SessionHost,
        conn_id: str,
        limits: FramingLimits | None = None,
        admitted: Admitted | None = None,
    ):
        """
        @param factory: what the session uses of the gateway.
        @param conn_id: the connection's id.
        @param limits: its framing bounds (the factory's by default).
        @param admitted: its hold on its admission slot (given back when it ends), or
            L{None} when the connection is not under admission control.
        """
        super().__init__(limits or factory.framing_limits, cast(IReactorTime, factory.clock))
        self.factory = factory
        self.conn_id = conn_id
        self.admitted = admitted
        if admitted is not None:
            admitted.on_evict = self._evicted  # admission ends the connection through it
        self.state = SessionState.READY
        self.user: str | None = None
        self.service: str | None = None
        self.auth_attempts = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.closed_by = "server"
        self._exchange: ServerExchange | None = None
        self._mechanism = ""
        self._leg: BackendLeg | None = None
        self._pending: list[bytes] | None = None  # bytes read while the backend connects
        self._client_eof = False
        self._offences = _NO_OFFENCES
        self._peer_run: PeerCheckRun | None = None
        self._binding: object = _UNKNOWN
        self._tls_ready = False
        self._peer_verdict: Verdict | None = None
        self._started = factory.clock.seconds()
        self._gate: StreamGate | None = None
        self._ticketed = False
        self._lane_user: str | None = None
        self._accepted = False  # conn.accept logged (at its first valid command)
        self._login_verifier: tuple[bytes, bytes, bytes, int] | None = None
        self._cut = False  # aborted by the drain (L{cut}): the server closed it

    @property
    def peer_address(self) -> object:
        """
        The peer address admission control keys this connection by, or L{None}.
        """
        return None if self.admitted is None else self.admitted.address

    @property
    def in_relay_pool(self) -> bool:
        """
        Whether admission control moved this connection to the authenticated pool.
        """
        return self.admitted is not None and self.admitted.promoted

    # -- framing hooks -----------------------------------------------------------------------

    def log_fields(self) -> dict[str, Any]:
        fields = super().log_fields()
        fields["conn_id"] = self.conn_id
        fields["user"] = escape(self.user)
        return fields

    def greet(self) -> None:
        if self._peer_run is None:
            # FCrDNS and ident start with the greeting and run while the client
            # authenticates: early talkers, connections ended before it, and connections on
            # probation cost no lookup.
            try:
                self._peer_run = self.factory.start_peer_checks(
                    self.transport.getPeer(), self.transport.getHost()
                )
            except Exception:
                # A bug of ours: without its checks the connection must not log in (a
                # required FCrDNS would be skipped), so it ends here, before the greeting.
                self.log.failure(
                    "peer checks of {peer} could not start",
                    event="proto.internal",
                    command="greeting",
                    **self.log_fields(),
                )
                self.refuse(ErrorCode.INTERNAL)
                return
        mechanisms = ",".join(self.offered_mechanisms())
        tickets = " TICKETS=1" if self.ticket_book() is not None else ""
        self.sendLine(
            f"NETGUARD/1 {self.factory.server_name} AUTH={mechanisms} "
            f"MAXLINE={self.limits.max_line_length} MUX={YAMUX_1}{tickets}".encode("ascii")
        )

    def connectionMade(self) -> None:
        # conn.accept is logged at the first valid command (log_accept): a flood of
        # connections that never send one logs no line each.
        self.factory.session_started(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure | None = None) -> None:
        previous = self.state
        self.state = SessionState.CLOSED
        if self.admitted is not None:
            self.admitted.on_evict = None
        if not self._tls_ready and INegotiated.providedBy(self.transport):
            # Plain text, junk, a truncated or refused handshake on a TLS listener.
            why = describe_tls_error(reason)
            if why is None:
                why = reason.getErrorMessage() if reason is not None else "closed"
            if self.closed_by != CLOSED_BY_ADMISSION and self.note_refusal(
                "tls-handshake", "tls.handshake_failed"
            ):
                self.log.info(
                    "TLS handshake with {peer} failed: {why}",
                    event="tls.handshake_failed",
                    why=escape(why, limit=200),
                    **self.log_fields(),
                )
        super().connectionLost(reason)
        if self._peer_run is not None:
            self._peer_run.cancel()
        gate = self._gate
        if gate is not None and gate.session is not None:
            mux = gate.session
            mux.connection_lost(reason)
            self.bytes_up, self.bytes_down = mux.bytes_in, mux.bytes_out
        leg, self._leg = self._leg, None
        if leg is None:
            # Logged (or counted in the refusal log) before the slot is given back: the last
            # session's end may complete a drain, and nothing is logged after shutdown.done.
            self._log_close(None, previous)
            self.factory.session_ended(self)
            return
        self.factory.session_ended(self)
        leg.close()
        leg.done.addCallback(self._log_close, previous)

    def readConnectionLost(self) -> None:
        """
        The client half-closed: pass it on to the backend while relaying; in the line phase
        there is nothing more to read, so flush our replies and close.
        """
        if self.state is SessionState.RELAYING and self._leg is not None:
            self._leg.half_close()
        elif self.state is SessionState.MUX and self._gate is not None:
            self.closed_by = "client"
            self._gate.client_eof()
        elif self.state is SessionState.OPENING:
            self._client_eof = True
        else:
            self.closed_by = "client"
            self.close_gracefully()

    def writeConnectionLost(self) -> None:
        """Our half-close reached the client; the relay goes on the other way."""

    def _log_close(self, result: RelayResult | None, state: SessionState) -> RelayResult | None:
        """
        Log the close with the relay's final counts; passes C{result} on for other waiters.
        """
        if result is not None:
            # A kernel relay reads the client's bytes itself, past this session's counter.
            self.bytes_up = max(self.bytes_up, result.bytes_a_to_b)
            self.bytes_down = result.bytes_b_to_a
            self.closed_by = _RELAY_ENDINGS.get(result.ended_by, result.ended_by)
        # Final counts in, live meter out, in one step: the byte counters never go down. A
        # multiplexed connection's framed bytes are logged, not counted: its streams count
        # their own payload.
        counted = (0, 0) if state is SessionState.MUX else (self.bytes_up, self.bytes_down)
        self.factory.stats.session_closed(self, self.service, *counted)
        if not self.close_logged():
            return result
        self.log.info(
            "closed {peer} after {duration:.3f}s up={bytes_up} down={bytes_down}: {why}",
            why=_CLOSE_REASONS.get(self.closed_by, self.closed_by),
            event="conn.close",
            state=state.value,
            service=escape(self.service),
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
            duration=self.factory.clock.seconds() - self._started,
            closed_by=self.closed_by,
            **self.log_fields(),
        )
        return result

    def lineReceived(self, line: bytes) -> None:
        if self.state not in TRANSITIONS:
            return
        problem = syntax_problem(line)
        if problem is not None:
            code, text = problem
            if self.state is SessionState.AUTH_CONTINUE:
                # In auth-continue any line but a well-formed CONT or QUIT abandons the
                # exchange and counts as a failed attempt (protocol.md section 4).
                self._abandon_exchange(text, line)
            else:
                self.refuse(code, text, offending=line, close=False)
            return
        parts = line.split(b" ")
        command, args = parts[0].upper(), parts[1:]
        handler = TRANSITIONS[self.state].get(command)
        if handler is None:
            self._out_of_sequence(command, line)
            return
        if not self._accepted:
            self.log_accept()
        refusal = standing_refusal(self.admitted, self.factory.users, self.user, command)
        if refusal is not None:
            self.refuse(*refusal)  # closes; not an offence
            return
        try:
            getattr(self, handler)(*args)
        except Exception:
            # A bug of ours, never the client's doing: the operator gets the traceback, the
            # client one line, and the session ends.
            self.log.failure(
                "internal error handling {command}",
                event="proto.internal",
                command=escape(command),
                **self.log_fields(),
            )
            self.refuse(ErrorCode.INTERNAL)

    def rawDataReceived(self, data: bytes) -> None:
        self.bytes_up += len(data)
        if self.state is SessionState.RELAYING and self._leg is not None:
            self._leg.write(data)
        elif self.state is SessionState.MUX:
            if self._gate is not None and self._gate.session is not None:
                self._gate.session.data_received(data)
        elif self.state is SessionState.OPENING:
            # Kept until the backend answers; reading stays paused meanwhile, so this holds
            # at most what had already arrived.
            if self._pending is None:
                self._pending = []
            self._pending.append(data)
            self.transport.pauseProducing()

    # -- command handlers --------------------------------------------------------------------

    def offered_mechanisms(self) -> list[str]:
        """
        The SASL mechanisms offered on this connection: SCRAM-SHA-256-PLUS first on TLS
        (channel binding to this connection's certificate), SCRAM-SHA-256 always.
        """
        if self.channel_binding() is not None:
            return [SCRAM_SHA_256, SCRAM_SHA_256_PLUS]  # the order of DESIGN 2; no preference
        return [SCRAM_SHA_256]

    def do_ping(self) -> None:
        self.sendLine(b"PONG")

    def do_quit(self) -> None:
        self.sendLine(b"BYE")
        self.closed_by = "client"
        self.state = SessionState.CLOSED
        self.close_gracefully()

    def do_auth(self, mechanism: bytes, token: bytes) -> None:
        name = mechanism.decode("ascii")
        offered = self.offered_mechanisms()
        if name not in offered:
            self.refuse(ErrorCode.UNSUPPORTED_MECHANISM, offending=mechanism, close=False)
            return
        name = offered[offered.index(name)]  # the shared constant, not a copy per session
        client_first = self._decode(token)
        if client_first is None:
            return
        # A well-formed AUTH is useful progress (eviction takes those that made none first),
        # even while it waits for the peer checks.
        self._progress()
        if self._peer_run is not None and self._peer_verdict is None:
            # Policy may need the peer checks' verdict before anyone may try a password: wait
            # for it (bounded by the checks' own timeouts), holding later lines.
            self.hold_lines()
            self._peer_run.verdict().addCallback(self._peer_decided, name, client_first)
            return
        self._first_step(name, client_first)

    def _first_step(self, name: str, client_first: str) -> None:
        """
        The first SCRAM step of C{AUTH <name> <client-first>}, both already checked.
        """
        exchange = ServerExchange(self.factory.users, name, self.channel_binding())
        try:
            server_first = exchange.first(client_first)
        except AuthFailed as failure:
            self._auth_failed(failure, exchange.username)
            return
        self._exchange = exchange
        self._mechanism = name
        self.state = SessionState.AUTH_CONTINUE
        self._progress()
        self.sendLine(b"CONT " + encode_wire(server_first))

    def _peer_decided(self, verdict: Verdict, name: str, client_first: str) -> None:
        self._peer_verdict = verdict
        if self.state is SessionState.CLOSED or self.phase is FramingPhase.CLOSING:
            return  # ended meanwhile (evicted, timed out): no SCRAM step for it
        if not verdict.allowed:
            if self.note_refusal("peer-checks", "peer.refused"):
                self.log.info(
                    "peer checks refused {peer}: {reason}",
                    event="peer.refused",
                    reason=escape(verdict.reason),
                    **self.log_fields(),
                )
            self.refuse(ErrorCode.NOT_AUTHORIZED, "peer checks failed")
            return
        self._first_step(name, client_first)
        self.release_lines()

    def do_cont(self, token: bytes) -> None:
        client_final = self._decode(token)
        if client_final is None:
            return  # BAD_SYNTAX, not an attempt: the exchange goes on (protocol.md section 4)
        exchange, self._exchange = self._exchange, None
        assert exchange is not None
        try:
            server_final = exchange.final(client_final)
            verifier = self._verifier_in_force(exchange)
        except AuthFailed as failure:
            self.state = SessionState.READY
            self._auth_failed(failure, exchange.username)
            return
        self._login_verifier = verifier
        self._progress()
        if self.admitted is not None and self.admitted.address is not None:
            refusal = self.admitted.promote()
            if refusal is not None:
                self.refuse(ErrorCode.BUSY, refusal.reason)
                return
        name = exchange.username
        self.user = None if name is None else sys.intern(name)  # one string per user
        self.lane_login(self.user or "")
        self.state = SessionState.AUTHENTICATED
        self.end_handshake()
        self.factory.stats.count("auth_ok")
        self.log.info(
            "authenticated {user} from {peer} with {mechanism}",
            event="auth.ok",
            mechanism=self._mechanism,
            **self.log_fields(),
        )
        self.sendLine(b"OK " + encode_wire(server_final))

    def _verifier_in_force(self, exchange: ServerExchange) -> tuple[bytes, bytes, bytes, int]:
        """
        The verifier a proof was checked against, if it is still the user's: a users file
        reloaded during the exchange (a password changed, the user removed) fails a proof
        made with what it replaced.

        @raise AuthFailed: the verifier is no longer in force.
        """
        record = self.factory.users.lookup(exchange.username or "")
        verifier = exchange.verifier
        if record is None or verifier is None or record.auth_info() != verifier:
            raise AuthFailed("the user's verifier changed during the exchange", True)
        return verifier

    def do_services(self) -> None:
        names = self.factory.services_for(self.user or "")
        self.sendLine(" ".join(["OK SERVICES", *names]).encode("ascii"))

    def do_mux(self, framing: bytes) -> None:
        """
        Upgrade the connection to a multiplexed session: C{OK MUX yamux/1 STREAMS=<n>
        WINDOW=<bytes> OPENRATE=<rate>/<burst>}, and from the next byte on, yamux frames
        (what followed the line in the same read is the session's first bytes). An unknown
        framing is refused and the line phase goes on.
        """
        if framing != YAMUX_1.encode("ascii"):
            self.refuse(ErrorCode.UNSUPPORTED_FRAMING, offending=framing, close=False)
            return
        gate = StreamGate(self, cast(StreamHost, self.factory), self.limits.idle_timeout)
        self.state = SessionState.MUX
        self._gate = gate
        self.sendLine(gate.reply())
        self.setRawMode()
        # The session's own bounds take over: its idle timeout runs only while no stream is
        # open, its keepalive notices a dead path.
        self.setTimeout(None)
        gate.start(self.transport, self._mux_ended)

    def _mux_ended(self, closed_by: str) -> None:
        """
        The multiplexed session ended (its streams have been told; the gate logged how).
        """
        self.closed_by = "server" if self._cut else closed_by

    def do_open(self, name_bytes: bytes) -> None:
        chosen = choose_service(
            self.factory, name_bytes, self.user or "", self.log, self.log_fields()
        )
        if isinstance(chosen, OpenRefusal):
            offending = None if chosen.code is ErrorCode.NOT_AUTHORIZED else name_bytes
            self.refuse(chosen.code, chosen.text, offending=offending, close=False)
            return
        verdict = self.service_verdict(chosen)
        if verdict is not None:
            self.hold_lines()
            verdict.addCallback(self._service_check_decided, chosen)
            return
        self._open(chosen)

    def service_verdict(self, service: Service) -> Deferred[Verdict] | None:
        """
        The verdict an opening of C{service} must wait for, when the service requires a
        forward-confirmed peer: the connection's own check (started once, bounded by its
        timeout, cached per address), which is the connection's from now on (cancelled with
        it). Shared by C{OPEN} and by the streams of a multiplexed session.

        @return: the verdict to wait for, or L{None} when the service requires none.
        """
        run = self.factory.start_service_checks(
            service, self.transport.getPeer(), self.transport.getHost(), self._peer_run
        )
        if run is None:
            return None
        self._peer_run = run
        return run.verdict(self.factory.service_check_policy())

    def backend_origin(self, unique_id: str) -> ProxyOrigin:
        """
        Who a backend opened for this connection serves, for its PROXY header: the client's
        address and the address it reached as this connection sees them (a C{haproxy:}
        listener's are its header's), the authenticated user, and C{unique_id}. Shared by
        C{OPEN} and by the streams of a multiplexed session.
        """
        return ProxyOrigin(
            self.transport.getPeer(), self.transport.getHost(), self.user or "", unique_id
        )

    def _service_check_decided(self, verdict: Verdict, service: Service) -> None:
        if self.state is not SessionState.AUTHENTICATED:
            return
        if verdict.allowed:
            self._open(service)
        else:
            refusal = checks_refused(self.factory, service, verdict, self.log, self.log_fields())
            self.refuse(refusal.code, refusal.text, close=False)
        self.release_lines()

    def _open(self, service: Service) -> None:
        self.service = service.name
        self.state = SessionState.OPENING
        self.setRawMode()
        self.transport.pauseProducing()
        opening: Deferred[BackendLeg] = self.factory.open_backend(
            service, self.backend_origin(self.conn_id)
        )
        opening.addCallbacks(self._backend_ready, self._backend_failed)

    def refuse(
        self,
        code: ErrorCode,
        text: str | None = None,
        offending: bytes | None = None,
        close: bool = True,
    ) -> None:
        """
        Refuse as the framing does, and tell admission control when the refusal is an
        offence (penalties grow with repeat offences from the same source).
        """
        kind = _OFFENCES.get(code)
        # Format errors count once per connection: one burst of junk (each bad line is
        # answered, the connection stays) must not reach an hour's block by itself.
        if kind is not None and (kind != "format_error" or kind not in self._offences):
            self._offences |= {kind}
            if offence_blocks(self.admitted, kind) and not close:
                # The source is blocked now: this connection gets no further verdict either.
                code, text, close = ErrorCode.BUSY, PENALISED, True
        super().refuse(code, text, offending, close)
        if close and ISSLTransport.providedBy(self.transport) and not self._tls_ready:
            # A TLS handshake that never finished (a stalled or truncated ClientHello): no
            # reply can reach the peer and a graceful close would wait for the handshake, so
            # cut the connection now; the handshake deadline is the whole bound.
            self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake finished: log what was negotiated; the greeting delay starts now.
        """
        self._tls_ready = True
        info = connection_info(self.transport)
        if info is not None:
            self.log.info(
                "TLS {version} {cipher} with {peer}",
                event="tls.established",
                version=info.version,
                cipher=info.cipher,
                client_cert=escape(info.peer_subject),
                resumed=info.resumed,
                **self.log_fields(),
            )
        super().handshakeCompleted()

    # -- shutdown ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """
        The gateway is stopping: a client still in the line phase (or whose backend is still
        connecting) is told C{ERR SHUTTING_DOWN} and closed; an open relay goes on until it
        ends or the drain's grace period does.
        """
        if self.state is SessionState.RELAYING:
            return
        if self.state is SessionState.MUX and self._gate is not None:
            self.closed_by = "server"
            self._gate.shutdown()
            return
        self.closed_by = "server"
        self.refuse(ErrorCode.SHUTTING_DOWN)

    def cut(self) -> None:
        """
        The drain's grace period is over (or a second stop signal came): abort the
        connection now, its relay too, logged as closed by the server (C{closed_by}).
        """
        self.closed_by = "server"
        self._cut = True
        if self._gate is not None:
            self._gate.cut = True  # its streams end by the server's hand too
        leg = self._leg
        if leg is not None and leg.splice is not None:
            leg.splice.abort("server")  # both sides, its result naming the server
        else:
            self.transport.abortConnection()

    # -- hooks for TLS -------------------------------------------------------------------------

    def channel_binding(self) -> tuple[str, bytes] | None:
        """
        The C{tls-server-end-point} channel binding of this connection (from the certificate
        it was actually served), or L{None} on a plain one.
        """
        if self._binding is _UNKNOWN:
            self._binding = channel_binding_for(self.transport, "server")
        return cast("tuple[str, bytes] | None", self._binding)

    # -- internals -----------------------------------------------------------------------------

    def _backend_ready(self, leg: BackendLeg) -> None:
        if self.state is not SessionState.OPENING:
            leg.close()
            return
        self._leg = leg
        self.state = SessionState.RELAYING
        self.sendLine(b"OK OPEN " + self.service.encode("ascii"))  # type: ignore[union-attr]
        # From here the relay owns the time bounds (idle, stalled reader).
        self.setTimeout(None)
        self.log.info(
            "{user} opened {service}",
            event="session.open",
            service=self.service,
            **self.log_fields(),
        )
        leg.attach(self.transport)
        self.factory.relay_started(self, leg, self.factory.clock.seconds() - self._started)
        pending, self._pending = self._pending, None
        for chunk in pending or ():
            leg.write(chunk)
        if self._client_eof:
            leg.half_close()
        else:
            self.transport.resumeProducing()

    def _backend_failed(self, failure: Failure) -> None:
        if self.state is not SessionState.OPENING:
            return
        self._pending = None
        refusal = backend_failed(
            self.factory, self.service or "", failure, self.log, self.log_fields()
        )
        self.refuse(refusal.code, refusal.text)

    def _decode(self, token: bytes) -> str | None:
        try:
            return decode_wire(token)
        except ValueError:
            self.refuse(
                ErrorCode.BAD_SYNTAX,
                "argument is not base64 of UTF-8",
                offending=token,
                close=False,
            )
            return None

    def _auth_failed(self, failure: AuthFailed, username: str | None) -> None:
        self.auth_attempts += 1
        self.factory.stats.count("auth_fail")
        if self.note_refusal("auth-failure", "auth.fail"):
            self.log.info(
                "authentication failed for {claimed_quoted} from {peer}: {reason}",
                event="auth.fail",
                claimed=escape(username),
                claimed_quoted=quoted(username),
                reason=escape(failure.reason),
                known_user=failure.known_user,
                attempt=self.auth_attempts,
                **self.log_fields(),
            )
        last = self.auth_attempts >= self.factory.max_auth_attempts
        self.refuse(ErrorCode.AUTH_FAILED, close=last)

    def _abandon_exchange(self, why: str | None, line: bytes) -> None:
        """
        Leave auth-continue: the exchange is dropped and counted as a failed attempt.
        """
        exchange, self._exchange = self._exchange, None
        self.state = SessionState.READY
        self._auth_failed(
            AuthFailed(f"exchange abandoned: {why or 'unexpected line'}", None),
            exchange.username if exchange else None,
        )

    def _out_of_sequence(self, command: bytes, line: bytes) -> None:
        if command == b"TICKET" and self.ticket_book() is None:
            self.refuse(ErrorCode.UNKNOWN_COMMAND, offending=line, close=False)
            return
        if self.state is SessionState.AUTH_CONTINUE:
            self._abandon_exchange(f"{command.decode('ascii')} instead of CONT", line)
            return
        if self.state is SessionState.READY and command in (
            b"OPEN",
            b"MUX",
            b"SERVICES",
            b"TICKET",
        ):
            self.refuse(ErrorCode.AUTH_REQUIRED, offending=line, close=False)
            return
        # A RESUME line's ticket is never logged (L{loggable_input}).
        self.refuse(ErrorCode.BAD_SEQUENCE, offending=line, close=False)

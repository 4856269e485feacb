# -*- test-case-name: tests.test_gateway_streams -*-
"""
The gateway side of a multiplexed session: each stream the client opens names its service
in a first line C{OPEN <service>}, is authorised and answered as C{OPEN} is on a connection,
then relays to the service's backend. C{docs/protocol.md} section 5.1 is the wire format.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from netguard.errors import ErrorCode, format_error
from netguard.gateway.opening import (
    OpenRefusal,
    backend_failed,
    checks_refused,
    choose_service,
)
from netguard.gateway.returning import hide_secrets
from netguard.gateway.seams import Service, SessionHost
from netguard.gateway.standing import USER_REMOVED, user_removed
from netguard.gateway.stream_settings import StreamSettings, open_rate_text
from netguard.log import escape
from netguard.mux.frames import INITIAL_WINDOW, GoAwayCode, Violation
from netguard.mux.limits import TokenBucket
from netguard.mux.outcome import SessionEnd, SessionTransport
from netguard.mux.protocol import widen_buffer
from netguard.mux.session import MuxSession
from netguard.mux.stream import MuxStream
from netguard.outbound.backends import BackendLeg
from netguard.outbound.proxy_v2 import ProxyOrigin
from netguard.peer.checks import Verdict
from netguard.relay import (
    A,
    B,
    DelayedCall,
    HalfCloseableTransport,
    RelayResult,
    send_at_once,
)

#: The framing name of C{MUX} and the greeting's C{MUX=} capability.
YAMUX_1 = "yamux/1"

#: The relay's C{ended_by} as a stream's C{stream.close} gives it in C{closed_by}.
_ENDINGS = {
    "a": "client",
    "b": "backend",
    "stalled-a": "client-stalled",
    "stalled-b": "backend-stalled",
}

#: The refusal for a stream of a draining gateway.
_SHUTTING_DOWN = OpenRefusal(ErrorCode.SHUTTING_DOWN)

#: An OPEN line as the line phase allows it: printable ASCII only.
_PRINTABLE = re.compile(rb"[\x20-\x7e]*\Z")

#: Refusals of a session's streams that the client's own requests earn (not a busy, down or
#: draining gateway) are bounded as the line phase bounds its errors: a burst of
#: L{REFUSALS_BURST}, refilled at L{REFUSALS_PER_SECOND}; one past an empty bucket ends the
#: session (go-away, protocol error), so that an authenticated client cannot turn streams
#: that cost it nothing into an endless stream of refusal log lines.
REFUSALS_BURST = 10
REFUSALS_PER_SECOND = 1.0

#: The refusal codes that L{REFUSALS_BURST} does not count: the gateway's state, not the
#: client's request.
_NOT_THE_CLIENTS = frozenset(
    {ErrorCode.BUSY, ErrorCode.BACKEND_UNAVAILABLE, ErrorCode.SHUTTING_DOWN}
)

#: The C{BUSY} reason of a user at its stream cap: when the session's own streams hold the
#: whole cap, a refusal for it is the client's doing and counts against L{REFUSALS_BURST}.
USER_CAP = "stream-cap-user"


class StreamCaps:
    """
    The live streams of every session of one gateway, per user and per service: the counts
    the caps of L{StreamSettings} apply to. A key is forgotten when its count is back to 0.
    """

    __slots__ = ("users", "services")

    def __init__(self) -> None:
        self.users: dict[str, int] = {}
        self.services: dict[str, int] = {}

    def take(self, user: str, service: str, settings: StreamSettings) -> str | None:
        """
        Count one more stream of C{user} to C{service}, unless a cap is reached.

        @return: L{None} (counted), or the C{BUSY} reason (nothing counted).
        """
        if self.users.get(user, 0) >= settings.max_per_user:
            return USER_CAP
        if self.services.get(service, 0) >= settings.max_per_service:
            return "stream-cap-service"
        self.users[user] = self.users.get(user, 0) + 1
        self.services[service] = self.services.get(service, 0) + 1
        return None

    def give(self, user: str, service: str) -> None:
        """
        A stream counted by L{take} has ended.
        """
        for counts, key in ((self.users, user), (self.services, service)):
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)


class StreamHost(SessionHost, Protocol):
    """
    What the streams use of the gateway besides what a session does.

    @ivar stream_settings: the bounds in force.
    @ivar stream_caps: the per-user and per-service counts.
    """

    stream_settings: StreamSettings
    stream_caps: StreamCaps


class StreamOwner(Protocol):
    """
    What the streams use of the connection that carries them (the NGP/1 session).
    """

    conn_id: str
    user: str | None

    def log_fields(self) -> dict[str, Any]: ...

    def service_verdict(self, service: Service) -> Deferred[Verdict] | None: ...

    def backend_origin(self, unique_id: str) -> ProxyOrigin: ...


class StreamState(enum.Enum):
    """
    Where a gateway stream is.
    """

    LINE = "line"  # reading the OPEN line
    OPENING = "opening"  # authorised, the backend connecting (or peer checks running)
    RELAYING = "relaying"
    REFUSED = "refused"  # answered ERR, FIN sent
    DONE = "done"


class StreamGate:
    """
    The streams of one multiplexed session: accepts each stream the client opens, tracks the
    live ones, and drains them when the gateway stops.

    @ivar session: the L{MuxSession}, once started.
    @ivar streams: the streams not yet finished.
    @ivar draining: whether new streams are refused C{SHUTTING_DOWN}.
    @ivar cut: whether the gateway cut the connection (its drain's grace is over): its
        streams' ends are then the server's (C{closed_by}), not the client's.
    @ivar opened: streams answered C{OK OPEN}.
    @ivar refused: streams answered C{ERR}.
    @ivar log: the session's logger (source: the gate).
    """

    def __init__(self, owner: StreamOwner, host: StreamHost, idle_timeout: float | None) -> None:
        """
        @param owner: the connection.
        @param host: the gateway.
        @param idle_timeout: seconds the session may live with no stream open.
        """
        # One logger per session, as a class attribute would give (namespace, source): a
        # Logger class attribute builds a new Logger at every access, and every stream logs.
        self.log = Logger(f"{__name__}.{type(self).__name__}", self)
        self.owner = owner
        self.host = host
        self.settings = host.stream_settings
        self.limits = self.settings.mux_limits(idle_timeout)
        self.session: MuxSession | None = None
        self.streams: set[GatewayStream] = set()
        self.draining = False
        self.cut = False
        self.opened = 0
        self.refused = 0
        #: This session's streams counted against the per-user and per-service caps.
        self.capped = 0
        self._refusals = TokenBucket(REFUSALS_PER_SECOND, REFUSALS_BURST, host.clock.seconds())
        self._refusals_exceeded = False
        self._on_end: Callable[[str], None] | None = None
        self._transport: Any = None

    def reply(self) -> bytes:
        """
        @return: the answer to C{MUX yamux/1}, without its line end: the session's stream
            cap, initial window and stream-opening bounds (C{OPENRATE=<rate>/<burst>}, which
            clients pace themselves below).
        """
        streams, window = self.limits.max_streams, INITIAL_WINDOW
        rate = open_rate_text(self.limits.open_rate)
        return (
            f"OK MUX {YAMUX_1} STREAMS={streams} WINDOW={window}"
            f" OPENRATE={rate}/{self.limits.open_burst}"
        ).encode("ascii")

    def start(self, transport: SessionTransport, on_end: Callable[[str], None]) -> None:
        """
        Run the session over C{transport} (a line receiver in raw mode), registered as its
        streaming producer, with TCP_NODELAY set (L{send_at_once}): a stream's request and
        answer are small frames that must not wait for Nagle's algorithm; and with the
        session's wider read size and output mark (L{widen_buffer}).

        @param on_end: told, once, how the session ended: C{"idle"}, C{"client"} (its
            go-away, a lost connection) or C{"server"} (a drain, a violation).
        """
        self._on_end = on_end
        self._transport = transport
        send_at_once(transport)
        widen_buffer(transport)
        self.session = MuxSession(
            transport,
            client=False,
            clock=self.host.clock,
            accept=self.accept,
            limits=self.limits,
            on_end=self._ended,
        )
        cast(Any, transport).registerProducer(self.session, True)
        self.log.info(
            "{user} started a multiplexed session ({framing})",
            event="mux.start",
            framing=YAMUX_1,
            max_streams=self.limits.max_streams,
            **self.owner.log_fields(),
        )

    def client_eof(self) -> None:
        """
        The client half-closed the connection: no frame can follow, so the session ends
        (every stream is told) and the connection is closed.
        """
        transport = self._transport
        if self.session is not None:
            self.session.connection_lost(None)
        self._let_go()
        if transport is not None:
            transport.loseConnection()

    def _let_go(self) -> None:
        """
        Stop being the transport's producer, so that a close the session asked for happens:
        Twisted's TLS transport holds its close (close_notify) while a producer is registered.
        """
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.unregisterProducer()

    def _ended(self, end: SessionEnd) -> None:
        self.log.info(
            "multiplexed session of {peer} ended: {violation}",
            event="mux.end",
            violation=end.violation.value,
            code=int(end.code),
            by_peer=end.by_peer,
            detail=end.detail,
            streams_opened=self.opened,
            streams_refused=self.refused,
            **self.owner.log_fields(),
        )
        if end.violation is not Violation.CONNECTION_LOST:
            self._let_go()  # the session has asked the transport to close
        if end.violation is Violation.IDLE:
            closed_by = "idle"
        elif end.by_peer:
            closed_by = "client"
        else:
            closed_by = "server"
        if self._on_end is not None:
            self._on_end(closed_by)

    def count_refusal(self, refusal: OpenRefusal) -> None:
        """
        A stream was refused: past L{REFUSALS_BURST} (refilled at L{REFUSALS_PER_SECOND})
        refusals the client earned (every one but the gateway's state, L{_NOT_THE_CLIENTS};
        a user's stream cap, L{USER_CAP}, is this session's doing only when its own streams
        hold the whole cap, not when the user's other sessions do), end the session with a
        go-away (protocol error); its other streams finish, no new one is accepted.
        """
        if self.session is None:
            return
        if refusal.code in _NOT_THE_CLIENTS and not (
            refusal.text == USER_CAP and self.capped >= self.settings.max_per_user
        ):
            return
        if self._refusals.take(self.host.clock.seconds()):
            return
        if not self._refusals_exceeded:
            self._refusals_exceeded = True
            self.log.info(
                "multiplexed session of {peer}: too many refused streams",
                event="mux.refusals_exceeded",
                streams_refused=self.refused,
                **self.owner.log_fields(),
            )
            self.session.go_away(GoAwayCode.PROTOCOL_ERROR)

    def accept(self, stream: MuxStream) -> GatewayStream:
        """
        The client opened C{stream}: its protocol reads the C{OPEN} line.
        """
        protocol = GatewayStream(self)
        self.streams.add(protocol)
        self.host.stats.count("streams_accepted")
        return protocol

    def shutdown(self) -> None:
        """
        The gateway is stopping: refuse new streams C{SHUTTING_DOWN}, and those still in
        their C{OPEN} line; relaying streams go on; go-away once none is left.
        """
        self.draining = True
        for stream in list(self.streams):
            if stream.state is StreamState.LINE:
                stream.refuse(_SHUTTING_DOWN)
        self._maybe_go_away()

    def finished(self, stream: GatewayStream) -> None:
        """
        C{stream} is over (its backend attempt, if any, has ended too).
        """
        self.streams.discard(stream)
        self._maybe_go_away()

    def _maybe_go_away(self) -> None:
        if not self.draining or self.session is None:
            return
        if any(s.state in (StreamState.OPENING, StreamState.RELAYING) for s in self.streams):
            return
        self.session.go_away()


class GatewayStream:
    """
    One stream of a multiplexed session, as the gateway sees it: the bounded C{OPEN} line,
    the authorisation, the answer, then the relay with the stream as side A.

    @ivar state: the L{StreamState}.
    @ivar service: the service's name once chosen.
    @ivar closed_by: how it ended, as logged.
    """

    __slots__ = (
        "gate",
        "transport",
        "state",
        "service",
        "closed_by",
        "_line",
        "_pending",
        "_eof",
        "_deadline",
        "_leg",
        "_counted",
        "_gone",
        "_started",
    )

    def __init__(self, gate: StreamGate) -> None:
        self.gate = gate
        self.transport: MuxStream | None = None
        self.state = StreamState.LINE
        self.service: str | None = None
        self.closed_by = "client"
        self._line = b""
        self._pending: list[bytes] | None = None
        self._eof = False
        self._deadline: DelayedCall | None = None
        self._leg: BackendLeg | None = None
        self._counted = False
        self._gone = False
        self._started = gate.host.clock.seconds()

    # -- what the stream calls -------------------------------------------------------------

    def makeConnection(self, transport: MuxStream) -> None:
        """
        The stream is open: refuse it at once while draining, else wait for its line.
        """
        self.transport = transport
        if self.gate.draining:
            self.refuse(_SHUTTING_DOWN)
            return
        self._deadline = self.gate.host.clock.callLater(
            self.gate.settings.open_timeout, self._deadline_passed
        )

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the client: the C{OPEN} line (bounded), then the relay's.
        """
        if self.state is StreamState.RELAYING:
            if self._leg is not None:
                self._leg.write(data)
        elif self.state is StreamState.LINE:
            self._line_data(data)
        elif self.state is StreamState.OPENING:
            self._hold(data)

    def readConnectionLost(self) -> None:
        """
        The client half-closed the stream.
        """
        if self.state is StreamState.RELAYING:
            if self._leg is not None:
                self._leg.half_close()
        elif self.state is StreamState.OPENING:
            self._eof = True
        elif self.state is StreamState.LINE:
            self.refuse(OpenRefusal(ErrorCode.BAD_SYNTAX, "stream ended before its OPEN line"))

    def connectionLost(self, reason: Failure) -> None:
        """
        The stream is over on the wire (closed, reset, or its session ended).
        """
        self._gone = True
        self._cancel_deadline()
        previous = self.state
        if previous is StreamState.OPENING:
            # Still counted until the backend attempt ends: a client that opens and resets
            # streams cannot start more backend connections than the stream cap. What it
            # sent behind its OPEN line can never be relayed now: let it go at once, not
            # when the attempt ends (the session's credit for it is already returned).
            self.closed_by = "client-reset"
            self._pending = None
            self._line = b""
            return
        leg, self._leg = self._leg, None
        if leg is not None:
            leg.close()
            leg.done.addCallback(self._relay_ended)
            return
        self._finish()

    # -- the OPEN line ----------------------------------------------------------------------

    def _line_data(self, data: bytes) -> None:
        limit = self.gate.host.framing_limits.max_line_length
        buffer = self._line + data
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) > limit and not (len(buffer) == limit + 1 and buffer.endswith(b"\r")):
                self.refuse(OpenRefusal(ErrorCode.LINE_TOO_LONG), buffer[:64])
            else:
                self._line = buffer
            return
        stop = end - 1 if end > 0 and buffer[end - 1] == 0x0D else end
        line, rest = buffer[:stop], buffer[end + 1 :]
        self._line = b""
        if len(line) > limit:
            self.refuse(OpenRefusal(ErrorCode.LINE_TOO_LONG), line[:64])
            return
        self._cancel_deadline()
        words = line.split(b" ")
        if len(words) != 2 or words[0].upper() != b"OPEN":
            self.refuse(
                OpenRefusal(ErrorCode.BAD_SYNTAX, "a stream begins with OPEN <service>"),
                line[:64],
            )
            return
        if not _PRINTABLE.match(line):
            # As on a connection's line phase: bytes outside printable ASCII are a syntax
            # error, whatever the service name would have been.
            self.refuse(
                OpenRefusal(ErrorCode.BAD_SYNTAX, "only printable ASCII is allowed"), line[:64]
            )
            return
        if rest:
            self._hold(rest)
        self._open(words[1])

    def _hold(self, data: bytes) -> None:
        """
        Keep bytes that follow the C{OPEN} line until the relay starts (the list exists
        only then: an idle relaying stream carries none).
        """
        if self._pending is None:
            self._pending = []
        self._pending.append(data)

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.state is StreamState.LINE:
            self.refuse(OpenRefusal(ErrorCode.TIMEOUT, "open deadline"))

    def _cancel_deadline(self) -> None:
        timer, self._deadline = self._deadline, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- opening ----------------------------------------------------------------------------

    def _open(self, name: bytes) -> None:
        gate = self.gate
        owner = gate.owner
        if gate.draining:
            self.refuse(_SHUTTING_DOWN)
            return
        if user_removed(gate.host.users, owner.user):
            # Removed from the users file since the session's login: no new stream for it
            # (the streams already open go on to their end).
            self.refuse(OpenRefusal(ErrorCode.NOT_AUTHORIZED, USER_REMOVED))
            return
        chosen = choose_service(gate.host, name, owner.user or "", gate.log, self.log_fields())
        if isinstance(chosen, OpenRefusal):
            self.refuse(chosen, name if chosen.code is ErrorCode.NO_SUCH_SERVICE else None)
            return
        self.service = chosen.name
        self.state = StreamState.OPENING
        assert self.transport is not None
        # Bytes after the line wait in the stream (its window bounds them) until the relay.
        self.transport.pauseProducing()
        verdict = owner.service_verdict(chosen)
        if verdict is None:
            self._connect(chosen)
        else:
            verdict.addCallback(self._checked, chosen)

    def _checked(self, verdict: Verdict, service: Service) -> None:
        if self.state is not StreamState.OPENING:
            return
        if self._gone:
            self._finish()
        elif verdict.allowed:
            self._connect(service)
        else:
            self.refuse(
                checks_refused(self.gate.host, service, verdict, self.gate.log, self.log_fields())
            )

    def _connect(self, service: Service) -> None:
        gate = self.gate
        if self._gone:
            self._finish()
            return
        busy = gate.host.stream_caps.take(gate.owner.user or "", service.name, gate.settings)
        if busy is not None:
            self.refuse(OpenRefusal(ErrorCode.BUSY, busy))
            return
        self._counted = True
        gate.capped += 1
        assert self.transport is not None
        origin = gate.owner.backend_origin(f"{gate.owner.conn_id}/{self.transport.stream_id}")
        opening: Deferred[BackendLeg] = gate.host.open_backend(service, origin)
        opening.addCallbacks(self._backend_ready, self._backend_failed)

    def _backend_ready(self, leg: BackendLeg) -> None:
        if self._gone or self.state is not StreamState.OPENING:
            leg.close()
            self._finish()
            return
        transport = self.transport
        assert transport is not None and self.service is not None
        self._leg = leg
        self.state = StreamState.RELAYING
        self.gate.opened += 1
        transport.write(b"OK OPEN " + self.service.encode("ascii") + b"\r\n")
        host = self.gate.host
        host.stats.stream_started(self, self.service, _StreamMeter(leg))
        self.gate.log.info(
            "{user} opened {service} on stream {stream_id}",
            event="stream.open",
            service=self.service,
            **self.log_fields(),
        )
        leg.attach(cast(HalfCloseableTransport, transport))
        pending, self._pending = self._pending, None
        for chunk in pending or ():
            leg.write(chunk)
        if self._eof:
            leg.half_close()
        elif leg.splice is not None:
            leg.splice.resume_reading(A)
        else:
            transport.resumeProducing()

    def _backend_failed(self, failure: Failure) -> None:
        if self._gone or self.state is not StreamState.OPENING:
            self._finish()
            return
        self.refuse(
            backend_failed(
                self.gate.host, self.service or "", failure, self.gate.log, self.log_fields()
            )
        )

    # -- the end ----------------------------------------------------------------------------

    def refuse(self, refusal: OpenRefusal, offending: bytes | None = None) -> None:
        """
        Answer C{ERR <CODE> <text>} on the stream and close it (FIN); nothing more it sends
        is read. The session and its other streams go on.
        """
        if self.state in (StreamState.REFUSED, StreamState.DONE, StreamState.RELAYING):
            return
        self._cancel_deadline()
        self.state = StreamState.REFUSED
        self._pending = None
        self._line = b""
        gate = self.gate
        gate.refused += 1
        gate.host.stats.count("streams_refused")
        gate.host.stats.count(f"streams_refused.{refusal.code.value.lower()}")
        gate.log.info(
            "refused stream {stream_id} of {peer}: {code}",
            event="stream.refused",
            code=refusal.code.value,
            text=refusal.text or "",
            service=escape(self.service),
            offending=escape(hide_secrets(offending)) if offending is not None else "-",
            **self.log_fields(),
        )
        self._release_caps()
        transport = self.transport
        if transport is not None and not self._gone:
            transport.write(format_error(refusal.code, refusal.text) + b"\r\n")
            transport.loseConnection()
        if self._gone:
            self._finish()
        gate.count_refusal(refusal)

    def _relay_ended(self, result: RelayResult) -> RelayResult:
        if self.gate.cut:
            self.closed_by = "server"
        else:
            self.closed_by = _ENDINGS.get(result.ended_by, result.ended_by)
        self._log_close(result.bytes_a_to_b, result.bytes_b_to_a)
        self._finish()
        return result

    def _log_close(self, up: int, down: int) -> None:
        host = self.gate.host
        host.stats.session_closed(self, self.service, up, down)
        host.stats.stream_ended()
        self.gate.log.info(
            "stream {stream_id} of {user} to {service} closed after {duration:.3f}s "
            "up={bytes_up} down={bytes_down}: {closed_by}",
            event="stream.close",
            service=escape(self.service),
            bytes_up=up,
            bytes_down=down,
            duration=host.clock.seconds() - self._started,
            closed_by=self.closed_by,
            **self.log_fields(),
        )

    def _finish(self) -> None:
        if self.state is StreamState.DONE:
            return
        self.state = StreamState.DONE
        self._pending = None
        self._cancel_deadline()
        self._release_caps()
        transport = self.transport
        if transport is not None:
            transport.release()
        self.gate.finished(self)

    def _release_caps(self) -> None:
        if self._counted:
            self._counted = False
            self.gate.capped -= 1
            self.gate.host.stream_caps.give(self.gate.owner.user or "", self.service or "")

    def log_fields(self) -> dict[str, Any]:
        """
        The connection's log fields plus the stream's id.
        """
        fields = self.gate.owner.log_fields()
        fields["stream_id"] = self.transport.stream_id if self.transport is not None else 0
        return fields


class _StreamMeter:
    """
    The bytes a live stream has relayed so far (for the figures), from its splice.
    """

    __slots__ = ("leg",)

    def __init__(self, leg: BackendLeg) -> None:
        self.leg = leg

    def __call__(self) -> tuple[int, int]:
        splice = self.leg.splice
        if splice is None:
            return 0, 0
        counts = splice.counts
        return counts[A], counts[B]

# -*- test-case-name: tests.test_framing -*-
"""
A bounded, binary-safe line receiver: the base every netguard protocol is built on.

L{GuardedLineReceiver} is a L{LineReceiver} that can face a hostile network: bounded lines,
pre-authentication budgets, early-talker refusal, handshake, idle and write deadlines. Its
bounds are one L{FramingLimits} value, given to the constructor or set as a class attribute,
so that C{Factory.forProtocol} works too. Until L{GuardedLineReceiver.end_handshake} is
called a connection is in its handshake: few lines and bytes, closed at the handshake
deadline. A protocol with a login calls it when the login succeeds; one without, once it has
greeted::

    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory

    from netguard.framing import FramingLimits, GuardedLineReceiver

    class Echo(GuardedLineReceiver):
        limits = FramingLimits(max_line_length=64, idle_timeout=10.0)

        def greet(self):
            self.sendLine(b"HELLO echo")
            self.end_handshake()  # no login: the handshake ends with the greeting

        def lineReceived(self, line):
            self.sendLine(b"ECHO " + line)

    endpoint = serverFromString(reactor, "tcp:7000:interface=127.0.0.1")
    endpoint.listen(Factory.forProtocol(Echo))  # or Echo(FramingLimits(...), reactor)

The bounds as NGP/1 uses them: C{docs/protocol.md}; their keys: C{docs/operating.md}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    INegotiated,
    IPushProducer,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from netguard.deadline import SharedDeadline
from netguard.errors import DEFAULT_TEXT, ErrorCode, format_error
from netguard.framing_limits import DEFAULT_MAX_ERRORS, FramingLimits
from netguard.greeting import FramingPhase, GreetingPhase
from netguard.log import escape, quoted
from netguard.sending import plain_socket, write_now

__all__ = [
    "DEFAULT_MAX_ERRORS",
    "FramingLimits",
    "FramingPhase",
    "GuardedLineReceiver",
    "peer_label",
]


def peer_label(address: Any) -> str:
    """
    A short printable name for a transport address: C{host:port} for IP, C{unix:path} for a
    unix socket (C{unix:-} for an unnamed peer).
    """
    host = getattr(address, "host", None)
    if host is not None:
        if ":" in host:
            return f"[{escape(host)}]:{getattr(address, 'port', '?')}"
        return f"{escape(host)}:{getattr(address, 'port', '?')}"
    name = getattr(address, "name", None)
    if name is not None or type(address).__name__ == "UNIXAddress":
        if isinstance(name, bytes):
            name = name.decode("utf-8", "surrogateescape")
        return f"unix:{escape(name) if name else '-'}"
    return escape(str(address))


@implementer(IPushProducer, IHandshakeListener)
class GuardedLineReceiver(GreetingPhase, SharedDeadline, LineReceiver, TimeoutMixin):
    """
    A L{LineReceiver} with every bound a hostile network needs:

      - a line ends at LF; one CR right before the LF is removed (so CRLF and bare LF both end
        a line); any other byte, NUL, bare CR and non-ASCII included, is delivered unchanged
        to L{lineReceived}, which decides whether it is acceptable;
      - a line longer than C{max_line_length} is refused with C{LINE_TOO_LONG} as soon as the
        buffer passes the bound, newline or not, so memory per connection stays bounded;
      - before L{end_handshake} is called (that is, before authentication) at most
        C{max_lines_before_auth} lines and C{max_bytes_before_auth} bytes are accepted, the
        bytes counted in line and raw mode alike however the reads are split: in line mode
        the byte past the budget is refused with C{TOO_MUCH_DATA}; in raw mode the bytes
        within it are delivered, and the connection is closed without an error line (a raw
        stream has no room for one), logged as C{proto.refuse} with C{raw=True};
      - after it, until L{setRawMode} (in NGP/1: from login to C{OPEN}), at most
        C{max_lines_after_auth} lines and C{max_bytes_after_auth} bytes of lines, within
        C{open_timeout}: opt-in bounds (L{None}, no bound, by default), for a protocol whose
        line phase ends soon after its handshake;
      - at most C{max_errors} error replies that keep the connection (L{refuse} with
        C{close=False}) are sent; the next one closes it. Only the first is logged in full,
        the rest once, as a count, when the line phase ends (C{proto.errors});
      - a client that sends anything before the greeting (an early talker: bots do, real
        clients wait) is refused with C{EARLY_TALKER}; a subclass that sets
        C{accepts_pre_greeting_line} may accept one line as the very first input instead
        (L{pre_greeting_line}): awaited, bounded by C{max_line_length}, until the greeting is
        due, and anything after it, or a partial line when the greeting is due, is early
        talk;
      - a handshake deadline runs from the connection to L{end_handshake}; an idle timeout
        (L{TimeoutMixin}'s C{setTimeout}/C{resetTimeout}) runs for the whole connection; the
        two share one timer, armed for the nearer, so a connection holds one timer and a
        finished handshake leaves no cancelled one behind in the reactor;
      - write side: in line mode the receiver registers itself as the streaming producer of
        its own transport, so when the peer stops reading and our output queue passes the
        transport's high-water mark we stop reading the peer (no reply is generated for input
        we have not read) and cut the connection if it stays that way for C{write_timeout};
        after a refusal the final error line gets the same bound before the connection is
        aborted. In raw mode the code relaying the bytes wires its own backpressure;
      - on a TLS transport the greeting delay starts when the TLS handshake completes
        (L{IHandshakeListener}), and a pause while the handshake runs never stops reading:
        Twisted's TLS layer pauses its producer whenever it holds an application write until
        the handshake ends, and a receiver that stopped reading then would never read the
        peer's last handshake message (a greeting timer firing mid-handshake would leave the
        connection stuck until the handshake deadline).

    The parser splits each received chunk once (linear time), unlike L{LineReceiver}, which
    re-splits its buffer for every line, and it stops at the first bound, so a flood of short
    lines costs no more than the bound allows. L{setRawMode} hands every byte after the
    current line to L{rawDataReceived}, in order, none lost and none repeated.

    The line-length bound is C{limits.max_line_length}: L{LineReceiver}'s C{MAX_LENGTH} is
    read from it, and a subclass that sets C{MAX_LENGTH} itself is refused with L{TypeError}
    when the class is created (a second bound beside C{limits} would be silently ignored or
    disagree with the limits a constructor is given).

    Subclasses implement L{greet}, L{lineReceived} and L{rawDataReceived}, and may override
    L{log_fields} to add fields (a connection id, a user) to every event, L{refuse} to see
    (or change) every refusal, L{loggable_input} to hide secrets in the input the log shows,
    and L{note_refusal} to aggregate the refusal events of unauthenticated connections.
    Refusals use netguard's own one-line format (C{ERR <CODE> <text>}, L{netguard.errors}).

    @ivar limits: the L{FramingLimits} in force.
    @ivar clock: the L{IReactorTime} used for every timer.
    @ivar phase: the current L{FramingPhase}.
    """

    delimiter = b"\r\n"
    log = Logger()
    # Typed loosely: zope interfaces (ITransport, IReactorTime) do not type-check as classes.
    transport: Any
    clock: Any

    #: The bounds used when the constructor is given none; subclasses may set their own.
    limits: FramingLimits = FramingLimits()
    #: Error codes that neither count against C{max_errors} nor are folded into the
    #: C{proto.errors} count (a subclass that bounds them itself, as NGP/1 does failed
    #: logins, names them here).
    errors_exempt: frozenset[ErrorCode] = frozenset()
    phase: FramingPhase = FramingPhase.PRE_GREETING
    lines_received = 0
    bytes_before_auth = 0
    lines_after_auth = 0
    bytes_after_auth = 0
    errors_answered = 0
    handshake_done = False

    def __init__(self, limits: FramingLimits | None = None, clock: IReactorTime | None = None):
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        if limits is not None:
            self.limits = limits
        self.clock = clock
        # Every name an instance ever sets is set here, in one order, so that instances
        # keep sharing their class's key table: CPython 3.11 turns an instance dict that
        # gains a name its class's (possibly frozen) shared keys lack into a full dict of
        # its own, a 768-byte block per connection.
        self.phase = FramingPhase.PRE_GREETING
        self._buffer = b""
        self.line_mode = 1
        self.lines_received = 0
        self.bytes_before_auth = 0
        self.lines_after_auth = 0
        self.bytes_after_auth = 0
        self.errors_answered = 0
        self.handshake_done = False
        self.timeOut: float | None = None  # type: ignore[assignment]
        self._idle_at: float | None = None
        self._handshake_at: float | None = None
        self._deadline: Any = None
        self._timers: dict[str, Any] = {}
        self._write_paused = False
        self._held = False
        self._registered = False
        self._tls_handshaking = False
        self._greet_rechecked = False
        self._first_error: tuple[ErrorCode, bytes | None] | None = None
        self._errors_summarised = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """
        Refuse a subclass that sets L{LineReceiver}'s C{MAX_LENGTH}: the bound is
        C{limits.max_line_length}.

        @raise TypeError: C{MAX_LENGTH} is set in the class body.
        """
        super().__init_subclass__(**kwargs)
        inherited = GuardedLineReceiver.__dict__["MAX_LENGTH"]
        value = cls.__dict__.get("MAX_LENGTH", inherited)
        if value is not inherited:
            raise TypeError(
                f"{cls.__qualname__} sets MAX_LENGTH, which GuardedLineReceiver does not use: "
                f"set limits = FramingLimits(max_line_length={value!r}) instead"
            )

    @property
    def MAX_LENGTH(self) -> int:  # type: ignore[override]
        """
        L{LineReceiver}'s bound, read from C{limits} (not stored: every instance attribute
        counts against CPython's limit for compact key-sharing instance dicts). Read-only.
        """
        return self.limits.max_line_length

    @MAX_LENGTH.setter
    def MAX_LENGTH(self, value: int) -> None:
        raise AttributeError(
            "MAX_LENGTH is read from limits.max_line_length: set "
            f"self.limits = attrs.evolve(self.limits, max_line_length={value!r}) instead"
        )

    # -- hooks for subclasses --------------------------------------------------------------

    def greet(self) -> None:
        """
        Send the greeting. Called once, after C{greeting_delay} of silence from the peer.
        """

    def log_fields(self) -> dict[str, Any]:
        """
        Fields added to every event this connection logs. Subclasses extend the dict.
        """
        transport = self.transport
        peer = peer_label(transport.getPeer()) if transport is not None else "-"
        return {"peer": peer}

    def note_refusal(self, reason: str, event: str) -> bool:
        """
        Whether to log one refusal-type event (C{event}, for C{reason}) of a connection not
        yet authenticated; a subclass counts it in an aggregated log instead (during a flood,
        only the first few per source and interval are logged one by one). Logged by default.
        """
        return True

    def sendLine(self, line: bytes) -> None:
        """
        Send C{line} and the delimiter: on a plain socket at once when nothing waits before
        it (L{netguard.sending.write_now}: a reply costs no writable event), otherwise
        through the transport's buffer.
        """
        transport = self.transport
        if plain_socket(transport):
            write_now(transport, line + self.delimiter)
        else:
            transport.write(line + self.delimiter)  # type: ignore[union-attr]

    def lineReceived(self, line: bytes) -> None:
        """
        Called with each complete line, without its terminator.
        """

    def rawDataReceived(self, data: bytes) -> None:
        """
        Called with every byte received in raw mode, in order.
        """

    # -- public API --------------------------------------------------------------------------

    def callLater(self, period: float, func: Any) -> IDelayedCall:
        """
        Schedule on the injected clock (used by L{TimeoutMixin} too).
        """
        return self.clock.callLater(period, func)

    def end_handshake(self) -> None:
        """
        The handshake succeeded (in NGP/1: the login). Until this is called the connection
        is bounded by C{max_lines_before_auth}, C{max_bytes_before_auth} (in line and raw
        mode) and C{handshake_timeout}, so a protocol without a login calls it once it has
        greeted, or every connection is cut at those bounds.

        It stops the handshake deadline and lifts the pre-authentication line and byte
        budgets. The line-length bound, the error budget and the idle timeout stay; the
        budgets after authentication (if set) and the open deadline start.
        """
        self.handshake_done = True
        self._handshake_at = None
        self._arm_deadline()
        open_timeout = self.limits.open_timeout
        if open_timeout is not None and self.line_mode and self.phase is FramingPhase.LINES:
            self._timers["open"] = self.clock.callLater(open_timeout, self._open_expired)

    def refuse(
        self,
        code: ErrorCode,
        text: str | None = None,
        offending: bytes | None = None,
        close: bool = True,
    ) -> None:
        """
        Answer C{ERR <code> <text>}, log the refusal with the escaped offending input
        (quoted in the message), and (by default) close the connection.

        An error reply that keeps the connection counts against C{max_errors}: one past the
        budget is answered C{ERR TOO_MANY_LINES too many errors} instead, and the connection
        is closed. Only the first such reply of a connection is logged here; the others are
        counted and logged once (C{proto.errors}) when the line phase ends.

        @param code: the stable error code.
        @param text: a short printable text for the client; the code's default when L{None}.
        @param offending: the input that caused the refusal, for the log only.
        @param close: close the connection after the error line.
        """
        if self.phase is FramingPhase.CLOSING:
            return
        if offending is not None:
            offending = self.loggable_input(offending)
        if not close and code not in self.errors_exempt:
            budget = self.limits.max_errors
            if budget is not None and self.errors_answered >= budget:
                self.refuse(ErrorCode.TOO_MANY_LINES, "too many errors", offending, close=True)
                return
            self.errors_answered += 1
            if self._first_error is not None:
                self.sendLine(format_error(code, text))
                return
            self._first_error = (code, offending)
        self._log_refusal(code, text, offending, close)
        self.sendLine(format_error(code, text))
        if close:
            self.close_gracefully()

    def _log_refusal(
        self, code: ErrorCode, text: str | None, offending: bytes | None, close: bool, **extra: Any
    ) -> None:
        """
        Log C{proto.refuse} (before authentication, only when L{note_refusal} says so).
        """
        if self.handshake_done or self.note_refusal(code.value, "proto.refuse"):
            self.log.info(
                "refused {peer}: {code} {text} input={offending_quoted}",
                event="proto.refuse",
                code=code.value,
                text=text if text is not None else DEFAULT_TEXT[code],
                offending=escape(offending) if offending is not None else "-",
                offending_quoted=quoted(offending) if offending is not None else "-",
                closing=close,
                **extra,
                **self.log_fields(),
            )

    def close_gracefully(self, linger: float | None = None) -> None:
        """
        Flush what is queued and close; if the peer does not read it within C{linger}
        seconds (C{write_timeout} by default), abort; with C{linger=0}, abort at once, no
        timer. All later input is discarded.
        """
        if self.phase is FramingPhase.CLOSING:
            return
        self.phase = FramingPhase.CLOSING
        self._cancel_all()
        self.setTimeout(None)
        self._summarise_errors()
        transport = self.transport
        self._unregister()
        if linger is not None and linger <= 0:
            transport.abortConnection()
            return
        delay = self.limits.write_timeout if linger is None else linger
        self._timers["abort"] = self.clock.callLater(delay, self._abort_stuck)
        transport.loseConnection()

    def limit_handshake(self, seconds: float) -> None:
        """
        Bring the handshake deadline forward to C{seconds} from now (never later than it
        was); nothing once the handshake is done.
        """
        if self.handshake_done or self._handshake_at is None:
            return
        self._handshake_at = min(self._handshake_at, self.clock.seconds() + seconds)
        self._arm_deadline()

    def hold_lines(self) -> None:
        """
        Stop delivering lines (and reading) until L{release_lines}: for a subclass that must
        wait for something (a check, a lookup) before it may handle the next line.
        """
        self._held = True
        if self.transport is not None:
            self.transport.pauseProducing()

    def release_lines(self) -> None:
        """
        Deliver the lines that arrived meanwhile, in order, and read again; if a held line
        switched to raw mode, deliver what followed it to L{rawDataReceived} instead and
        leave reading paused for the raw consumer.
        """
        if not self._held:
            return
        self._held = False
        if self.phase is FramingPhase.CLOSING:
            return
        if self.phase is FramingPhase.RAW:
            # The held line switched to raw mode: what followed it in the same read is the
            # raw consumer's first bytes, and reading is the raw consumer's to resume (a
            # relay resumes it when it can take more).
            rest, self._buffer = self._buffer, b""
            if rest:
                self.rawDataReceived(rest)
            return
        if not self._write_paused:
            self.transport.resumeProducing()
        if self.line_mode and self._buffer:
            self._process(b"")

    def setRawMode(self) -> None:
        """
        Deliver every byte after the current line to L{rawDataReceived}, in order: while
        lines are held the bytes wait for L{release_lines}, and reading stays paused. Called
        before the greeting, it takes effect when the greeting is sent (bytes before it are
        still early talk). Raw mode does not end the handshake: the bytes before
        L{end_handshake} count against C{max_bytes_before_auth}.

        In raw mode what we write is no longer a reply to what we read, so the receiver stops
        being its transport's producer: whoever uses the raw bytes (a relay) wires its own
        backpressure (see L{netguard.relay}).
        """
        if self.phase is FramingPhase.LINES:
            self.phase = FramingPhase.RAW
        self.line_mode = 0
        transport = self.transport
        self._unregister()
        self._cancel("write")
        self._cancel("open")
        if not self._timers:
            self._timers.clear()  # an emptied dict keeps its table until cleared
        self._summarise_errors()
        if self._write_paused:
            self._write_paused = False
            if not self._held:
                # Held bytes wait for release_lines, which leaves reading to the raw
                # consumer: reading now would deliver new bytes ahead of them.
                transport.resumeProducing()

    def setLineMode(self, extra: bytes = b"") -> None:
        """
        Go back to line mode, parsing C{extra} first.
        """
        if self.phase is FramingPhase.RAW:
            self.phase = FramingPhase.LINES
        self.line_mode = 1
        if extra:
            self._process(extra)

    def clearLineBuffer(self) -> bytes:
        """
        Drop and return the unparsed buffer.
        """
        buffered, self._buffer = self._buffer, b""
        return buffered

    def greet_now(self) -> None:
        """
        L{GreetingPhase.greet_now<netguard.greeting.GreetingPhase.greet_now>}, in raw mode
        from then on if L{setRawMode} was called before.
        """
        super().greet_now()
        self._raw_from_greeting()

    def _greet_now(self) -> None:
        """
        The greeting delay ended: greet (see L{netguard.greeting}), and then as L{greet_now}.
        """
        super()._greet_now()
        self._raw_from_greeting()

    def _raw_from_greeting(self) -> None:
        """
        The greeting was just sent: enter raw mode if L{setRawMode} was called before it.
        """
        if self.phase is FramingPhase.LINES and not self.line_mode:
            self.phase = FramingPhase.RAW

    # -- Twisted protocol --------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self._registered = True
        # A TLS transport (INegotiated) is still in its handshake now; it tells us when that
        # ends (handshakeCompleted), and the greeting delay counts from then.
        self._tls_handshaking = INegotiated.providedBy(self.transport)
        self._handshake_at = self.clock.seconds() + self.limits.handshake_timeout
        self.setTimeout(self.limits.idle_timeout)
        if not self._tls_handshaking:
            self._start_greeting()

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done (L{IHandshakeListener}): start the greeting delay now, so
        early talkers are caught on TLS too and the greeting is never held by the TLS layer.
        """
        if not self._tls_handshaking:
            return
        self._tls_handshaking = False
        if self.phase is FramingPhase.PRE_GREETING:
            self._start_greeting()

    def connectionLost(self, reason: Any = None) -> None:
        self.phase = FramingPhase.CLOSING
        self._cancel_all()
        self.setTimeout(None)
        self._summarise_errors()

    def dataReceived(self, data: bytes) -> None:
        phase = self.phase
        if phase is FramingPhase.CLOSING:
            return
        self.resetTimeout()
        if phase is FramingPhase.RAW:
            if self.handshake_done and not self._held:
                self.rawDataReceived(data)
            else:
                self._raw_guarded(data)
        elif phase is FramingPhase.PRE_GREETING:
            if self.accepts_pre_greeting_line and not self.lines_received:
                self._pre_greeting(data)
            else:
                self._early_talk(data)
        elif not self.handshake_done:
            room = self.limits.max_bytes_before_auth - self.bytes_before_auth
            if len(data) <= room:
                self.bytes_before_auth += len(data)
                self._process(data)
                return
            # The lines that fit in the budget are answered as if they had come alone; the
            # byte that crosses it is refused (unless those lines ended the handshake), the
            # log showing the line it is in from its start.
            head, excess = data[:room], data[room:]
            self.bytes_before_auth += len(head)
            if head:
                self._process(head)
            if self.phase is FramingPhase.CLOSING:
                return
            if self.handshake_done or self.phase is FramingPhase.RAW:
                self.dataReceived(excess)
            else:
                # The line it is in may have begun in an earlier read: it is what the line
                # splitter holds after its last line end.
                held = self._buffer
                line_start = held.rfind(b"\n") + 1
                self.refuse(ErrorCode.TOO_MUCH_DATA, offending=(held[line_start:] + excess)[:64])
        else:
            self._process(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(ErrorCode.LINE_TOO_LONG, offending=line[:64])

    def timeoutConnection(self) -> None:
        self._log_timeout("idle timeout {peer}", "idle")
        self.refuse(ErrorCode.TIMEOUT, "idle timeout")

    # -- IPushProducer: the transport tells us when the peer stops reading ------------------

    def pauseProducing(self) -> None:
        if self._write_paused or self.phase is FramingPhase.CLOSING:
            return
        self._write_paused = True
        if not self._tls_handshaking:
            # Mid-handshake the pause means only that TLS holds our write until the handshake
            # ends; reading must go on or it never ends (the handshake deadline bounds it).
            self.transport.pauseProducing()
        self._timers["write"] = self.clock.callLater(self.limits.write_timeout, self._write_stuck)

    def resumeProducing(self) -> None:
        if not self._write_paused:
            return
        self._write_paused = False
        self._cancel("write")
        if self.phase is FramingPhase.CLOSING or self._held:
            return
        self.transport.resumeProducing()
        if self.line_mode and self._buffer:
            self._process(b"")

    def stopProducing(self) -> None:
        self._cancel("write")

    # -- internals -------------------------------------------------------------------------

    def _process(self, data: bytes) -> None:
        """
        Split C{data} (after what was buffered) into lines, one pass, stopping at the first
        bound, a pause, a close, or a switch to raw mode.
        """
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        start = 0
        limits = self.limits
        while self.phase is FramingPhase.LINES and not (self._write_paused or self._held):
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            stop = end - 1 if end > start and buffer[end - 1] == 0x0D else end
            if stop - start > limits.max_line_length:
                self.lineLengthExceeded(buffer[start:stop])
                return
            line = buffer[start:stop]
            size = end + 1 - start
            start = end + 1
            if not self.handshake_done:
                self.lines_received += 1
                if self.lines_received > limits.max_lines_before_auth:
                    self.refuse(ErrorCode.TOO_MANY_LINES, offending=line)
                    return
            elif not self._within_budget_after_auth(line, size):
                return
            self.lineReceived(line)
        rest = buffer[start:] if start else buffer
        if self.phase is FramingPhase.RAW:
            if self._held:
                self._buffer = rest  # for release_lines
            elif rest:
                self.rawDataReceived(rest)
        elif self.phase is FramingPhase.LINES:
            if (self._write_paused or self._held) and b"\n" in rest:
                # Complete lines wait for the pause to end (reading is paused meanwhile, so
                # this holds at most what had already arrived).
                self._buffer = rest
            elif len(rest) > limits.max_line_length and not (
                len(rest) == limits.max_line_length + 1 and rest.endswith(b"\r")
            ):
                # Too long already, newline or not (a full line may still be followed by
                # the CR of its CRLF, nothing else).
                self.lineLengthExceeded(rest)
            else:
                self._buffer = rest

    def _raw_guarded(self, data: bytes) -> None:
        """
        Raw bytes before L{end_handshake} (counted against C{max_bytes_before_auth}) or while
        lines are held (kept, in order, for L{release_lines}).
        """
        if not self.handshake_done:
            room = max(0, self.limits.max_bytes_before_auth - self.bytes_before_auth)
            if len(data) > room:
                head, excess = data[:room], data[room:]
                if head:
                    self._raw_guarded(head)
                if self.phase is FramingPhase.RAW and not self.handshake_done:
                    self._raw_over_budget(excess)
                elif self.phase is not FramingPhase.CLOSING:
                    self.dataReceived(excess)  # the head ended the handshake or raw mode
                return
            self.bytes_before_auth += len(data)
        if self._held:
            self._buffer += data
        else:
            self.rawDataReceived(data)

    def _raw_over_budget(self, excess: bytes) -> None:
        """
        Raw bytes past C{max_bytes_before_auth}: close without an error line (the peer
        reads a raw stream, which has no room for one), logged as a refusal.
        """
        offending = self.loggable_input(excess[:64])
        self._log_refusal(ErrorCode.TOO_MUCH_DATA, None, offending, True, raw=True)
        self.close_gracefully()

    def _within_budget_after_auth(self, line: bytes, size: int) -> bool:
        """
        Count one line of C{size} bytes (terminator included) against the budgets after
        the handshake; refuse (and close) when it is one past either.
        """
        limits = self.limits
        self.lines_after_auth += 1
        self.bytes_after_auth += size
        if limits.max_lines_after_auth is not None:
            if self.lines_after_auth > limits.max_lines_after_auth:
                self.refuse(ErrorCode.TOO_MANY_LINES, "too many lines after authentication", line)
                return False
        if limits.max_bytes_after_auth is not None:
            if self.bytes_after_auth > limits.max_bytes_after_auth:
                self.refuse(
                    ErrorCode.TOO_MUCH_DATA, "too much data after authentication", line[:64]
                )
                return False
        return True

    def _summarise_errors(self) -> None:
        """
        Log, once, how many error replies this connection got beyond the first (which was
        logged in full when it was sent).
        """
        if self._errors_summarised or self._first_error is None:
            return
        self._errors_summarised = True
        if self.errors_answered < 2:
            return
        code, offending = self._first_error
        if not self.handshake_done and not self.note_refusal(code.value, "proto.errors"):
            return
        self.log.info(
            "{count} error replies to {peer}, first: {first_code} input={first_quoted}",
            event="proto.errors",
            count=self.errors_answered,
            first_code=code.value,
            first_offending=escape(offending) if offending is not None else "-",
            first_quoted=quoted(offending) if offending is not None else "-",
            **self.log_fields(),
        )

    def _open_expired(self) -> None:
        self._timers.pop("open", None)
        self._log_timeout("open deadline {peer}", "open")
        self.refuse(ErrorCode.TIMEOUT, "open deadline")

    def _handshake_expired(self) -> None:
        self._log_timeout("handshake deadline {peer}", "handshake")
        self.refuse(ErrorCode.TIMEOUT, "handshake deadline")

    def _write_stuck(self) -> None:
        self._timers.pop("write", None)
        self._log_timeout("peer stopped reading {peer}", "write")
        self.phase = FramingPhase.CLOSING
        self._cancel_all()
        self.transport.abortConnection()

    def _abort_stuck(self) -> None:
        self._timers.pop("abort", None)
        self._log_timeout("peer did not read our last reply {peer}", "close")
        self.transport.abortConnection()

    def _log_timeout(self, text: str, which: str) -> None:
        """
        Log C{conn.timeout} (before authentication, only when L{note_refusal} says so).
        """
        if self.handshake_done or self.note_refusal(f"timeout-{which}", "conn.timeout"):
            self.log.info(text, event="conn.timeout", which=which, **self.log_fields())

    def _cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _unregister(self) -> None:
        """
        Stop being our transport's producer (tracked here: a TLS transport wraps the
        producer, so C{transport.producer} is not us).
        """
        if self._registered:
            self._registered = False
            if self.transport is not None:
                self.transport.unregisterProducer()

    def _cancel_all(self) -> None:
        for name in list(self._timers):
            self._cancel(name)
        self._handshake_at = None
        self._idle_at = None
        self._arm_deadline()

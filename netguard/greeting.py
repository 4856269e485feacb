# -*- test-case-name: tests.test_framing -*-
"""
The time before the greeting, for L{netguard.framing.GuardedLineReceiver}: the greeting
delay (a peer that talks during it is an early talker), a subclass's one line accepted
before it (C{RESUME <ticket>} in NGP/1), a greeting held until a subclass releases it
(probation), and greeting at once.
"""

from __future__ import annotations

import enum
import socket
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import INegotiated

from netguard.errors import ErrorCode
from netguard.log import escape

#: When the greeting delay ends with the peer's bytes already waiting unread, the greeting
#: waits this much longer (seconds): the reactor polls, and so reads them, in between.
_GREET_RECHECK = 0.001


class FramingPhase(enum.Enum):
    """
    Where a connection is: silent before the greeting, reading lines, relaying raw bytes, or
    closing (all further input is discarded).
    """

    PRE_GREETING = "pre-greeting"
    LINES = "lines"
    RAW = "raw"
    CLOSING = "closing"


class GreetingPhase:
    """
    The pre-greeting part of L{netguard.framing.GuardedLineReceiver} (which see for the
    attributes and methods used here): its hooks for subclasses and its state machine.
    """

    #: Whether one line sent before the greeting goes to L{pre_greeting_line} instead of
    #: being early talk.
    accepts_pre_greeting_line: bool = False

    phase: FramingPhase
    limits: Any
    clock: Any
    transport: Any
    log: Any
    lines_received: int
    bytes_before_auth: int
    _buffer: bytes
    _timers: dict[str, Any]
    _tls_handshaking: bool
    _greet_rechecked: bool

    if TYPE_CHECKING:

        def greet(self) -> None: ...

        def log_fields(self) -> dict[str, Any]: ...

        def note_refusal(self, reason: str, event: str) -> bool: ...

        def refuse(
            self,
            code: ErrorCode,
            text: str | None = None,
            offending: bytes | None = None,
            close: bool = True,
        ) -> None: ...

        def _cancel(self, name: str) -> None: ...

    def pre_greeting_line(self, line: bytes) -> bool:
        """
        Called (when C{accepts_pre_greeting_line} is set) with a complete first line that
        arrived alone before the greeting. It may answer, refuse, or L{greet_now}.

        @return: whether the line is accepted; when not, it is early talk.
        """
        return False

    def greeting_due(self) -> bool:
        """
        Called when the greeting delay would start and when it has passed: whether to greet
        (no delay timer is armed while it says C{False}). A subclass that returns C{False}
        keeps the connection before the greeting (input is still early talk) until it calls
        L{greet_now} or refuses.
        """
        return True

    def loggable_input(self, data: bytes) -> bytes:
        """
        What of a peer's bytes the log may show, for an early talker's bytes and every
        refusal's input excerpt (a subclass hides secrets).
        """
        return data

    def greet_now(self) -> None:
        """
        Greet at once, skipping what is left of the greeting delay (nothing once greeted).
        """
        if self.phase is not FramingPhase.PRE_GREETING or self._tls_handshaking:
            return
        self._cancel("greet")
        self.phase = FramingPhase.LINES
        self.greet()

    def _start_greeting(self) -> None:
        if not self.greeting_due():
            return  # held: only greet_now or a refusal ends the wait, no timer meanwhile
        if self.limits.greeting_delay > 0:
            self._timers["greet"] = self.clock.callLater(
                self.limits.greeting_delay, self._greet_now
            )
        else:
            self._greet_now()

    def _early_talk(self, data: bytes) -> None:
        self._buffer = b""
        data = self.loggable_input(data)
        if self.note_refusal("early-talker", "proto.early_talker"):
            self.log.info(
                "early talker {peer}",
                event="proto.early_talker",
                offending=escape(data),
                **self.log_fields(),
            )
        self.refuse(ErrorCode.EARLY_TALKER, offending=data)

    def _pre_greeting(self, data: bytes) -> None:
        """
        Gather the one line a subclass may accept before the greeting: a line that is too
        long, is followed by more bytes, or is not accepted is early talk.
        """
        buffer = self._buffer + data if self._buffer else data
        limit = self.limits.max_line_length
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) > limit + 1 or (len(buffer) == limit + 1 and buffer[-1] != 0x0D):
                self._early_talk(buffer)
            else:
                self._buffer = buffer  # bounded by the line length; the greeting ends it
            return
        stop = end - 1 if end > 0 and buffer[end - 1] == 0x0D else end
        if end + 1 != len(buffer) or stop > limit or end >= self.limits.max_bytes_before_auth:
            self._early_talk(buffer)
            return
        self._buffer = b""
        self.lines_received += 1
        self.bytes_before_auth += len(buffer)
        if not self.pre_greeting_line(buffer[:stop]):
            self._early_talk(buffer)

    def _greet_now(self) -> None:
        self._timers.pop("greet", None)
        if self.phase is not FramingPhase.PRE_GREETING:
            return
        if self.limits.greeting_delay > 0 and not self._greet_rechecked and self._bytes_waiting():
            # The peer spoke before the delay ended, but a busy reactor has not read it yet
            # (timers run before the next poll): let the read come first, so the early
            # talker is refused with its own bytes instead of being greeted.
            self._greet_rechecked = True
            self._timers["greet"] = self.clock.callLater(_GREET_RECHECK, self._greet_now)
            return
        if not self.greeting_due():
            return
        if self._buffer:
            # A line begun before the greeting and not finished when it was due.
            self._early_talk(self._buffer)
            return
        self.phase = FramingPhase.LINES
        self.greet()

    def _bytes_waiting(self) -> bool:
        """
        Whether the peer's bytes already wait in the kernel for a plain socket (peeked, not
        read). A TLS connection is never peeked: its socket holds TLS records, not what the
        peer said to us.
        """
        if INegotiated.providedBy(self.transport):
            return False
        get_handle = getattr(self.transport, "getHandle", None)
        handle = get_handle() if get_handle is not None else None
        if not isinstance(handle, socket.socket):
            return False
        try:
            return bool(handle.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:  # nothing waiting (EAGAIN), or the socket is already gone
            return False

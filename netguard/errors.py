# -*- test-case-name: tests.test_errors -*-
"""
The stable error codes of NGP/1 and of the toolkit's framing.

Every refusal a client sees is one line C{ERR <CODE> <short text>}; the codes are listed here
once, with their default text, and documented in C{docs/protocol.md}. Clients are written
against these names, so a code is never renamed or reused for another meaning.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """
    A stable NGP/1 error code. The value is the code as written on the wire.
    """

    LINE_TOO_LONG = "LINE_TOO_LONG"
    TOO_MANY_LINES = "TOO_MANY_LINES"
    TOO_MUCH_DATA = "TOO_MUCH_DATA"
    BAD_SYNTAX = "BAD_SYNTAX"
    UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
    BAD_SEQUENCE = "BAD_SEQUENCE"
    EARLY_TALKER = "EARLY_TALKER"
    AUTH_REQUIRED = "AUTH_REQUIRED"
    UNSUPPORTED_MECHANISM = "UNSUPPORTED_MECHANISM"
    UNSUPPORTED_FRAMING = "UNSUPPORTED_FRAMING"
    AUTH_FAILED = "AUTH_FAILED"
    NOT_AUTHORIZED = "NOT_AUTHORIZED"
    NO_SUCH_SERVICE = "NO_SUCH_SERVICE"
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
    TIMEOUT = "TIMEOUT"
    BUSY = "BUSY"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    INTERNAL = "INTERNAL"
    BAD_TICKET = "BAD_TICKET"


#: The short text sent after each code unless the caller gives a more precise one.
DEFAULT_TEXT: dict[ErrorCode, str] = {
    ErrorCode.LINE_TOO_LONG: "line too long",
    ErrorCode.TOO_MANY_LINES: "too many lines before authentication",
    ErrorCode.TOO_MUCH_DATA: "too much data before authentication",
    ErrorCode.BAD_SYNTAX: "bad syntax",
    ErrorCode.UNKNOWN_COMMAND: "unknown command",
    ErrorCode.BAD_SEQUENCE: "command not allowed now",
    ErrorCode.EARLY_TALKER: "you spoke before the greeting",
    ErrorCode.AUTH_REQUIRED: "authenticate first",
    ErrorCode.UNSUPPORTED_MECHANISM: "mechanism not offered",
    ErrorCode.UNSUPPORTED_FRAMING: "multiplexing framing not offered",
    ErrorCode.AUTH_FAILED: "authentication failed",
    ErrorCode.NOT_AUTHORIZED: "not authorized for that service",
    ErrorCode.NO_SUCH_SERVICE: "no such service",
    ErrorCode.BACKEND_UNAVAILABLE: "backend unavailable",
    ErrorCode.TIMEOUT: "timeout",
    ErrorCode.BUSY: "busy, try later",
    ErrorCode.SHUTTING_DOWN: "shutting down",
    ErrorCode.INTERNAL: "internal error",
    ErrorCode.BAD_TICKET: "ticket refused",
}


def format_error(code: ErrorCode, text: str | None = None) -> bytes:
    """
    Render the one-line refusal for C{code}, without the line terminator.

    @param code: the stable code.
    @param text: a short human text; it must be printable ASCII, and anything else is replaced
        so that a refusal can never carry a line break or a control byte.
    @return: C{b"ERR <CODE> <text>"}.
    """
    body = DEFAULT_TEXT[code] if text is None else text
    safe = "".join(c if " " <= c <= "~" else "?" for c in body)[:200]
    return f"ERR {code.value} {safe}".encode("ascii")

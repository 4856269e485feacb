# -*- test-case-name: tests.test_log -*-
"""
Logging helpers: escaping of untrusted text, and observers that keep log lines unforgeable.

Every field that carries text a peer chose (a user name, a service name, an offending line, a
PTR name) is passed through L{escape} before it reaches an event, and the text observer built
by L{safe_text_observer} escapes the final rendered line again, as defence in depth: a hostile
peer can never start a new log line, move the cursor of an operator's terminal, or hide bytes.

Events carry a stable C{event} field (for example C{"conn.accept"}); the full list is in
C{docs/logging.md}.
"""

from __future__ import annotations

from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    formatEventAsClassicLogText,
    jsonFileLogObserver,
)

#: How many bytes of untrusted input a log field shows before it is truncated.
DEFAULT_FIELD_LIMIT = 120

_PRINTABLE = frozenset(range(0x20, 0x7F)) - {0x5C}


def escape(value: bytes | str | None, limit: int = DEFAULT_FIELD_LIMIT) -> str:
    """
    Render untrusted bytes or text as printable ASCII, safe for any log line.

    Printable ASCII other than the backslash is kept; the backslash becomes C{\\\\}; common
    control bytes become C{\\r}, C{\\n}, C{\\t}, C{\\0}; every other byte becomes C{\\xNN}
    (text is UTF-8 encoded first, so non-ASCII letters show as their bytes). Output longer than
    C{limit} input bytes is cut and ends with C{...(+N bytes)}.

    @param value: the untrusted value; L{None} renders as C{-}.
    @param limit: the number of input bytes shown at most.
    @return: an ASCII string with no control characters.
    """
    if value is None:
        return "-"
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
    shown = raw[:limit]
    out = []
    for byte in shown:
        if byte in _PRINTABLE:
            out.append(chr(byte))
        elif byte == 0x5C:
            out.append("\\\\")
        elif byte == 0x0D:
            out.append("\\r")
        elif byte == 0x0A:
            out.append("\\n")
        elif byte == 0x09:
            out.append("\\t")
        elif byte == 0x00:
            out.append("\\0")
        else:
            out.append(f"\\x{byte:02x}")
    if len(raw) > limit:
        out.append(f"...(+{len(raw) - limit} bytes)")
    return "".join(out)


def _escape_rendered_line(text: str) -> str:
    """
    Escape a rendered log line, keeping only its final newline.
    """
    body = text[:-1] if text.endswith("\n") else text
    cleaned = "".join(
        c if (" " <= c <= "~") else escape(c, limit=len(c.encode("utf-8")) + 1) for c in body
    )
    return cleaned + "\n"


def _format_safe(event: dict[str, Any]) -> str | None:
    text = formatEventAsClassicLogText(event)
    if text is None:
        return None
    return _escape_rendered_line(text)


def safe_text_observer(out: IO[str]) -> FileLogObserver:
    """
    A classic one-line-per-event text observer whose every line is escaped again.

    @param out: a text stream (for example C{sys.stdout} or an opened log file).
    @return: an C{ILogObserver}.
    """
    return FileLogObserver(out, _format_safe)


def json_observer(out: IO[str]) -> FileLogObserver:
    """
    An observer that writes one JSON object per event (Twisted's own JSON format, with the
    record separator), for machines to read.

    @param out: a text stream.
    @return: an C{ILogObserver}.
    """
    return jsonFileLogObserver(out)

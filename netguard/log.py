# -*- test-case-name: tests.test_log -*-
"""
Logging helpers: escaping of untrusted text (L{escape}) and observers that keep log lines
unforgeable (escaped text or ASCII-only JSON, optionally with journal priorities); the
C{[log] file} sink is L{netguard.log_file.FileLogSink}.

Formats, the escaping guarantee, the C{twistd --logger} observers and every event:
C{docs/logging.md}.
"""

from __future__ import annotations

import functools
import json
import math
import os
import string
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import Enum
from types import MappingProxyType
from typing import IO, Any

import attrs
from twisted.logger import (
    FileLogObserver,
    LoggingFile,
    LogLevel,
    eventAsText,
    formatEvent,
    formatTime,
)

from netguard.quiet_udp import without_quiet_udp_lines

#: How many bytes of untrusted input a log field shows before it is truncated.
DEFAULT_FIELD_LIMIT = 120

#: The values of C{[log] format}.
LOG_FORMATS = ("text", "json")

#: The keys every JSON record starts with (an event field of the same name is renamed
#: C{field_<name>}).
JSON_RECORD_KEYS = ("time", "ts", "level", "namespace", "system", "event", "message", "failure")

#: The syslog priority of each level, written as C{<N>} before a line for the journal
#: (C{sd-daemon(3)}: 7 debug, 6 info, 4 warning, 3 error, 2 critical).
JOURNAL_PRIORITIES: Mapping[str, int] = MappingProxyType(
    {
        "debug": 7,
        "info": 6,
        "warn": 4,
        "error": 3,
        "critical": 2,
    }
)

#: The priority of an event without a known level (Twisted's legacy messages).
DEFAULT_JOURNAL_PRIORITY = 6

#: How deep nested event values are rendered in JSON before being shown as text.
_MAX_JSON_DEPTH = 6

#: How many bytes of a C{bytes} value (never expected: fields carry escaped text) are shown.
_BYTES_FIELD_LIMIT = 1024

#: Keys of events bridged from the legacy C{twisted.python.log} API, already rendered in
#: the record's own keys.
_LEGACY_KEYS = frozenset({"message", "time", "system", "isError", "format", "failure", "why"})

_PRINTABLE = frozenset(range(0x20, 0x7F)) - {0x5C}

_FORMATTER = string.Formatter()

#: The same bytes, for C{bytes.translate}: input with nothing left after deleting them is
#: shown as it is.
_PRINTABLE_BYTES = bytes(sorted(_PRINTABLE))

_NAMED_BYTES = {0x5C: "\\\\", 0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t", 0x00: "\\0"}


def _level_name(level: object) -> str | None:
    """
    The name of a L{LogLevel} constant, else L{None}.
    """
    if level is not None and any(level is known for known in LogLevel.iterconstants()):
        return str(level.name)  # type: ignore[attr-defined]
    return None


def _to_bytes(value: object) -> bytes:
    """
    The bytes an untrusted value stands for: text is UTF-8 encoded (bytes smuggled in by
    C{surrogateescape} decoding come back as themselves; other lone surrogates are kept as
    their 3-byte encoding), anything else is its C{str()}.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    text = value if isinstance(value, str) else str(value)
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def escape(value: object, limit: int = DEFAULT_FIELD_LIMIT) -> str:
    """
    Render untrusted bytes or text as printable ASCII, safe for any log line.

    Printable ASCII other than the backslash is kept; the backslash becomes C{\\\\} (so an
    escape sequence can never be forged by sending its text); CR, LF, TAB and NUL become
    C{\\r}, C{\\n}, C{\\t}, C{\\0}; every other byte becomes C{\\xNN} (text is UTF-8 encoded
    first, so non-ASCII letters show as their bytes, and invalid UTF-8 shows as the bytes
    received). The rendering is one-to-one: the original bytes can be recovered from it.
    Input longer than C{limit} bytes is cut and ends with C{...(+N bytes)}.

    @param value: the untrusted value, normally C{bytes} or C{str}; L{None} renders as
        C{-}; another object as its C{str()}.
    @param limit: the number of input bytes shown at most.
    @return: an ASCII string with no control characters.
    """
    if value is None:
        return "-"
    raw = _to_bytes(value)
    head = raw[:limit]
    if not head.translate(None, _PRINTABLE_BYTES):
        shown = head.decode("ascii")
        return shown if len(raw) <= limit else f"{shown}...(+{len(raw) - limit} bytes)"
    out = []
    for byte in head:
        if byte in _PRINTABLE:
            out.append(chr(byte))
        else:
            out.append(_NAMED_BYTES.get(byte) or f"\\x{byte:02x}")
    if len(raw) > limit:
        out.append(f"...(+{len(raw) - limit} bytes)")
    return "".join(out)


def quoted(value: object, limit: int = DEFAULT_FIELD_LIMIT) -> str:
    """
    L{escape}, in double quotes, with C{"} itself escaped (C{\\x22}): for an untrusted value
    that may contain spaces, inside a text message, so that a name such as
    C{evil from 10.9.9.9: ok} cannot pass for the words around it (a fail2ban-style pattern
    over the message still sees one token).
    """
    return '"' + escape(value, limit).replace('"', "\\x22") + '"'


def _escape_rendered_line(text: str) -> str:
    """
    Escape a rendered log line, keeping only its final newline: printable ASCII (the
    backslash included, so text that went through L{escape} is not changed) is kept, any
    other character is shown as L{escape} shows it.
    """
    body = text[:-1] if text.endswith("\n") else text
    if body.isascii() and body.isprintable():  # for ASCII: exactly " " to "~"
        return body + "\n"
    cleaned = "".join(c if " " <= c <= "~" else escape(c, limit=8) for c in body)
    return cleaned + "\n"


def _token(value: object) -> str:
    """
    A column of the text line: escaped, without spaces, C{-} when absent or empty.
    """
    if value is None or value == "":
        return "-"
    return escape(value, limit=DEFAULT_FIELD_LIMIT).replace(" ", "_")


def _system(event: Mapping[str, Any]) -> str:
    """
    The bracketed column of the text line: C{log_system} if set, else
    C{<namespace>#<level>}, as Twisted's classic format shows it.
    """
    system = event.get("log_system")
    if system is None:
        level_name = _level_name(event.get("log_level")) or "-"
        system = f"{event.get('log_namespace', '-')}#{level_name}"
    return _token(system)


class _PerSecondTime:
    """
    L{formatTime} for the events of one observer: the text shows whole seconds, so the text
    of the last second is kept and reused for the next events in that second. A time whose
    microseconds would round up to the next second is formatted afresh.
    """

    def __init__(self) -> None:
        self._cached: tuple[int, str] | None = None

    def __call__(self, when: object) -> str:
        if type(when) is int or (type(when) is float and math.isfinite(when)):
            second = int(when)
            if when >= 0 and when - second < 0.999999:
                cached = self._cached  # one read: another thread may replace it
                if cached is not None and cached[0] == second:
                    return cached[1]
                text = formatTime(when)  # type: ignore[arg-type]
                self._cached = (second, text)
                return text
        return formatTime(when)  # type: ignore[arg-type]


#: A conversion of a replacement field, as C{string.Formatter.convert_field} applies it.
_CONVERSIONS: Mapping[str | None, Callable[[Any], Any]] = MappingProxyType(
    {None: lambda value: value, "s": str, "r": repr, "a": ascii}
)


@functools.lru_cache(maxsize=512)
def _simple_format(log_format: str) -> tuple[tuple[str, str | None, str, str | None], ...] | None:
    """
    C{log_format} parsed once into (literal, key, spec, conversion) parts when every
    replacement field is a plain name (C{{peer}}, C{{duration:.3f}}, C{{why!r}}), else
    L{None}: attribute or index access, calls (C{{f()}}), positional fields, nested specs
    and malformed formats are left to Twisted.
    """
    try:
        parsed = list(_FORMATTER.parse(log_format))
    except ValueError:
        return None
    parts = []
    for literal, key, spec, conversion in parsed:
        if key is not None:
            if not key.isidentifier() or "{" in (spec or "") or conversion not in _CONVERSIONS:
                return None
        parts.append((literal, key, spec or "", conversion))
    return tuple(parts)


def _message(event: Mapping[str, Any]) -> str:
    """
    The event's message, exactly as C{eventAsText(event, includeTimestamp=False,
    includeSystem=False)} renders it, without Twisted's per-field wrappers for the common
    case of a string format whose fields are plain names present in the event (the lines
    netguard writes for every session); anything else goes through Twisted.
    """
    log_format = event.get("log_format")
    if type(log_format) is str and "log_failure" not in event and "log_flattened" not in event:
        parts = _simple_format(log_format)
        if parts is not None:
            try:
                out = []
                for literal, key, spec, conversion in parts:
                    out.append(literal)
                    if key is not None:
                        out.append(format(_CONVERSIONS[conversion](event[key]), spec))
                return "".join(out)
            except Exception:
                pass  # Twisted renders what cannot be formatted in its own words
    return eventAsText(dict(event), includeTimestamp=False, includeSystem=False)


def format_text(
    event: Mapping[str, Any], format_time: Callable[[Any], str] = formatTime
) -> str | None:
    """
    Render an event as one escaped text line::

        <time> [<namespace>#<level>] <event> <conn_id> <message>

    The first four columns never hold a space and come before any text a peer chose, so
    C{awk '$3 == "auth.fail"'} and C{grep " 1f3a-2c "} are reliable; C{<event>} and
    C{<conn_id>} are C{-} when the event has none. A traceback (C{log.failure}) stays on the
    same line. Every character other than printable ASCII is escaped, even in text that did
    not go through L{escape} (defence in depth), so the only control character written is the
    final newline.

    @param event: a C{twisted.logger} event.
    @param format_time: renders C{log_time} (an observer passes its L{_PerSecondTime}).
    @return: the line, ending with a newline, or L{None} for an event with nothing to show.
    """
    try:
        text = _message(event)
        if not text:
            return None
        line = (
            f"{format_time(event.get('log_time'))} [{_system(event)}] "
            f"{_token(event.get('event'))} {_token(event.get('conn_id'))} {text}"
        )
        return _escape_rendered_line(line)
    except Exception as error:  # an observer must never raise
        return _escape_rendered_line(f"- [netguard.log#error] log.unformattable - {error!r}")


def _jsonable(value: Any, depth: int = 0) -> Any:
    """
    A JSON-serialisable form of an event value: JSON types stay as they are (non-finite
    floats become text), containers are converted recursively, bytes are escaped, enums and
    constants show their name, anything else its C{str()}.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return escape(value, limit=_BYTES_FIELD_LIMIT)
    if depth < _MAX_JSON_DEPTH:
        if isinstance(value, Mapping):
            return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, Enum):
        return _jsonable(value.value, depth + 1) if depth < _MAX_JSON_DEPTH else value.name
    name = _level_name(value)
    if name is not None:
        return name
    try:
        return str(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def _iso_time(when: object) -> str | None:
    if not isinstance(when, int | float) or not math.isfinite(when):
        return None
    moment = datetime.fromtimestamp(when, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def event_as_record(event: Mapping[str, Any]) -> dict[str, Any]:
    """
    The flat JSON record of an event.

    Keys, in this order: C{time} (ISO 8601, UTC, milliseconds), C{ts} (Unix time),
    C{level}, C{namespace}, C{system} (only for events that set C{log_system}), C{event}
    (the stable name, L{None} for events from Twisted itself), C{message} (the rendered
    text), C{failure} (the traceback text, only for C{log.failure} events), then every
    other field of the event under its own name. Twisted's C{log_*} keys are left out; a
    field named like one of the record's keys is renamed C{field_<name>}.

    @param event: a C{twisted.logger} event.
    @return: a dict that C{json.dumps} accepts.
    """
    record: dict[str, Any] = {
        "time": _iso_time(event.get("log_time")),
        "ts": _jsonable(event.get("log_time")),
        "level": _level_name(event.get("log_level")),
        "namespace": _jsonable(event.get("log_namespace")),
    }
    if event.get("log_system") is not None:
        record["system"] = _jsonable(event["log_system"])
    record["event"] = _jsonable(event.get("event"))
    record["message"] = formatEvent(dict(event))
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["failure"] = failure.getTraceback()
        except Exception:
            record["failure"] = f"<unformattable {type(failure).__name__}>"
    legacy = "isError" in event
    for key, value in event.items():
        key = str(key)
        if key == "event" or key.startswith("log_") or (legacy and key in _LEGACY_KEYS):
            continue
        name = f"field_{key}" if key in JSON_RECORD_KEYS else key
        record[name] = _jsonable(value)
    return record


def format_json(event: Mapping[str, Any]) -> str:
    """
    Render an event as one line of JSON (L{event_as_record}): ASCII only, so no raw control
    character (and no raw newline) can appear inside a record.

    @param event: a C{twisted.logger} event.
    @return: the JSON text followed by a newline.
    """
    try:
        text = json.dumps(
            event_as_record(event), ensure_ascii=True, allow_nan=False, separators=(",", ":")
        )
    except Exception as error:  # an observer must never raise
        text = json.dumps(
            {"time": None, "event": "log.unformattable", "message": escape(repr(error))},
            ensure_ascii=True,
        )
    return text + "\n"


def safe_text_observer(out: IO[str]) -> FileLogObserver:
    """
    An observer writing one escaped text line per event (L{format_text}), except the
    routine lines of ports opened by L{listen_udp_quietly} (L{is_quiet_udp_port_line}).

    @param out: a text stream (for example C{sys.stdout} or an opened log file).
    @return: an C{ILogObserver}.
    """
    return FileLogObserver(out, without_quiet_udp_lines(_text_formatter()))


def _text_formatter() -> Callable[[Mapping[str, Any]], str | None]:
    """
    L{format_text} with a time formatter of its own, for one observer.
    """
    return functools.partial(format_text, format_time=_PerSecondTime())


def json_observer(out: IO[str]) -> FileLogObserver:
    """
    An observer writing one JSON object per line per event (L{format_json}), for machines
    (C{jq -c 'select(.event == "auth.fail")'}), except the routine lines of ports opened by
    L{listen_udp_quietly} (L{is_quiet_udp_port_line}).

    @param out: a text stream.
    @return: an C{ILogObserver}.
    """
    return FileLogObserver(out, without_quiet_udp_lines(format_json))


def journal_priority(event: Mapping[str, Any]) -> int:
    """
    The syslog priority of an event (L{JOURNAL_PRIORITIES}); legacy events logged with
    C{isError} are errors, other events without a known level are info.
    """
    name = _level_name(event.get("log_level"))
    if name is None and event.get("isError"):
        name = "error"
    return JOURNAL_PRIORITIES.get(name or "", DEFAULT_JOURNAL_PRIORITY)


def with_journal_priority(
    formatter: Callable[[Mapping[str, Any]], str | None],
) -> Callable[[Mapping[str, Any]], str | None]:
    """
    A formatter that writes C{<N>} (L{journal_priority}) before every line C{formatter}
    writes; our formatters write one line per event, so the prefix is at a line start.
    """

    def format_with_priority(event: Mapping[str, Any]) -> str | None:
        line = formatter(event)
        if line is None:
            return None
        return f"<{journal_priority(event)}>{line}"

    return format_with_priority


def is_journal_stream(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """
    Whether C{stream} is the journal: C{$JOURNAL_STREAM} (C{<device>:<inode>}, set by
    systemd for a service whose output goes to the journal) names the file C{stream}
    writes to, as C{systemd.exec(5)} advises to check. A redirected standard output (to a
    file or a pipe) is not the journal even under systemd.

    @param environ: the environment; L{os.environ} when L{None}.
    """
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isascii() and device.isdigit() and inode.isascii() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return info.st_dev == int(device) and info.st_ino == int(inode)


def _stdout() -> IO[str]:
    """
    Standard output; the real one if C{sys.stdout} was redirected into the log system
    (writing there from an observer would loop).
    """
    out: Any = sys.stdout
    if out is None or isinstance(out, LoggingFile):
        out = sys.__stdout__
    return out  # type: ignore[no-any-return]


def _stdout_observer(
    formatter: Callable[[Mapping[str, Any]], str | None], journal: bool | None
) -> FileLogObserver:
    """
    C{formatter}'s lines on standard output, with priority prefixes if C{journal} (L{None}:
    if standard output is the journal, L{is_journal_stream}).
    """
    out = _stdout()
    if journal is None:
        journal = is_journal_stream(out)
    chosen = with_journal_priority(formatter) if journal else formatter
    return FileLogObserver(out, without_quiet_udp_lines(chosen))


def text_stdout_observer() -> FileLogObserver:
    """
    Escaped text lines (L{format_text}) on standard output; a zero-argument factory for
    C{twistd --logger netguard.log.text_stdout_observer}. When standard output is the
    journal (L{is_journal_stream}) each line starts with its priority (C{<6>}, ...).

    @return: an C{ILogObserver}.
    """
    return _stdout_observer(_text_formatter(), None)


def json_stdout_observer() -> FileLogObserver:
    """
    JSON lines (L{format_json}) on standard output; a zero-argument factory for
    C{twistd --logger netguard.log.json_stdout_observer}. When standard output is the
    journal each line starts with its priority, which journald strips: the entry's message
    is the JSON record alone.

    @return: an C{ILogObserver}.
    """
    return _stdout_observer(format_json, None)


def text_journal_observer() -> FileLogObserver:
    """
    L{text_stdout_observer} with the priority prefix always, for a journal that
    C{$JOURNAL_STREAM} does not name (C{twistd --logger netguard.log.text_journal_observer}).

    @return: an C{ILogObserver}.
    """
    return _stdout_observer(_text_formatter(), True)


def json_journal_observer() -> FileLogObserver:
    """
    L{json_stdout_observer} with the priority prefix always.

    @return: an C{ILogObserver}.
    """
    return _stdout_observer(format_json, True)


_OBSERVERS: Mapping[str, Callable[[IO[str]], FileLogObserver]] = {
    "text": safe_text_observer,
    "json": json_observer,
}


def observer_for(log_format: str, out: IO[str]) -> FileLogObserver:
    """
    The observer of a C{[log] format} on a stream.

    @param log_format: C{"text"} or C{"json"}.
    @param out: a text stream.
    @return: an C{ILogObserver}.
    @raise ValueError: for another format.
    """
    try:
        return _OBSERVERS[log_format](out)
    except KeyError:
        raise ValueError(f"unknown log format {log_format!r}") from None


@attrs.frozen(kw_only=True)
class LogSettings:
    """
    Where and how the log is written (the C{[log]} table of the configuration).

    @ivar format: C{"text"} (one escaped line per event) or C{"json"} (one JSON object per
        event).
    @ivar file: C{"-"} for standard output, or an absolute path.
    """

    format: str = "text"
    file: str = "-"


def stdout_log_problem(config: Any, runner: Mapping[str, Any] | None) -> str | None:
    """
    Why C{log.format = "json"} with C{log.file = "-"} would not give JSON, or L{None}.

    With C{file = "-"} netguard writes no file of its own: the runner's log observer decides
    the format of standard output. C{twistd} gives JSON only with a C{--logger} (for example
    C{netguard.log.json_stdout_observer}), C{twist} only with C{--log-format=json}.
    An unknown runner (or none, as in tests) is not second-guessed.

    @param config: the C{[log]} configuration (C{format}, C{file}).
    @param runner: the runner's parsed options (the plugin options' C{parent}), or L{None}.
    @return: a message for the operator, or L{None} if there is nothing to refuse.
    """
    if config.format != "json" or config.file != "-" or runner is None:
        return None
    if "logger" in runner:  # twistd
        if runner["logger"] is not None:
            return None
        fix = "run twistd --logger netguard.log.json_stdout_observer netguard ..."
    elif "logLevel" in runner:  # twist
        if runner.get("logFormat") == "json":
            return None
        fix = "run twist --log-format=json netguard ..."
    else:
        return None
    return (
        'log.format = "json" with log.file = "-" has no effect by itself: standard output '
        f"is the runner's own log; {fix}, or set log.file to a path"
    )

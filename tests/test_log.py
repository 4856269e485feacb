"""
Tests for L{netguard.log}: L{escape} on every kind of hostile byte, the text and JSON
observers (one record per line, no raw control character even for fields nobody escaped),
the zero-argument stdout factories for C{twistd --logger}, the C{[log] file} sink, and the
check that C{log.format = "json"} with C{log.file = "-"} is not silently ignored.
"""

from __future__ import annotations

import calendar
import errno
import fcntl
import io
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import gatherResults
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (
    ILogObserver,
    Logger,
    LoggingFile,
    LogLevel,
    LogPublisher,
    eventAsText,
    formatTime,
    globalLogPublisher,
)
from twisted.logger import _logger as twisted_logger_module
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from netguard import log as log_module
from netguard.log import (
    DEFAULT_FIELD_LIMIT,
    JOURNAL_PRIORITIES,
    JSON_RECORD_KEYS,
    escape,
    event_as_record,
    format_json,
    format_text,
    is_journal_stream,
    journal_priority,
    json_journal_observer,
    json_observer,
    json_stdout_observer,
    observer_for,
    quoted,
    safe_text_observer,
    stdout_log_problem,
    text_journal_observer,
    text_stdout_observer,
    with_journal_priority,
)
from netguard.log_file import (
    WRITE_FAILURE_REPORT_INTERVAL,
    FileLogSink,
    LogFileError,
    NotLogFile,
    open_log_file,
)
from netguard.quiet_udp import (
    QUIET_UDP_CONTEXT_KEY,
    QuietUDPPort,
    is_quiet_udp_port_line,
    listen_udp_quietly,
)

#: What a hostile peer would like to see at the start of a log line of its own.
FORGED = "1999-12-31T23:59:59+0000 [netguard.gateway.protocol.GatewaySession#info] auth.ok"

#: A field nobody escaped: CR LF, a forged line, ANSI colour, clear screen, cursor moves,
#: NUL, backspace, DEL, BEL, an OSC title sequence, a C1 control, a Unicode line separator.
RAW = (
    f"x\r\n{FORGED} root\x1b[31mred\x1b[0m\x1b[2J\x1b[H\x1b[1A\x1b[10;20H"
    "\x00nul\x08\x08bs\x7fdel\x07\x1b]0;title\x07\x85\u2028end"
)

_UNESCAPE = {"\\": 0x5C, "r": 0x0D, "n": 0x0A, "t": 0x09, "0": 0x00}


def unescape(text: str) -> bytes:
    """
    Invert L{escape} (without a truncation marker): proves the rendering is one-to-one.
    """
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out.append(ord(char))
            i += 1
        elif text[i + 1] == "x":
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            out.append(_UNESCAPE[text[i + 1]])
            i += 2
    return bytes(out)


def control_chars(text: str) -> list[str]:
    """
    Every character of C{text} that is not printable ASCII.
    """
    return [c for c in text if not " " <= c <= "~"]


def publish(**fields: Any) -> tuple[str, str]:
    """
    Log one event with C{fields} through a real L{Logger} to both observers.

    @return: what the text observer and the JSON observer wrote.
    """
    publisher = LogPublisher()
    text, js = io.StringIO(), io.StringIO()
    publisher.addObserver(safe_text_observer(text))
    publisher.addObserver(json_observer(js))
    logger = Logger(namespace="tests.test_log", observer=publisher)  # type: ignore[arg-type]
    log_format = fields.pop("log_format", "hello {name}")
    logger.info(log_format, **fields)
    return text.getvalue(), js.getvalue()


@attrs.frozen
class LogSettings:
    format: str = "text"
    file: str = "-"


class QuotedTests(unittest.TestCase):
    """
    Found by a review: an untrusted name with spaces (C{evil from 10.9.9.9: ok}) in a text
    message could pass for the words around it; quoted, it stays one token.
    """

    def test_spaces_stay_inside_the_quotes(self):
        self.assertEqual(quoted("evil from 10.9.9.9: ok"), '"evil from 10.9.9.9: ok"')

    def test_a_quote_cannot_close_the_quotes(self):
        self.assertEqual(quoted('evil" from "10.9.9.9'), '"evil\\x22 from \\x2210.9.9.9"')

    def test_a_literal_escape_text_stays_distinct(self):
        self.assertNotEqual(quoted('a"b'), quoted("a\\x22b"))

    def test_none(self):
        self.assertEqual(quoted(None), '"-"')


class EscapeTests(unittest.TestCase):
    """
    L{escape}: printable ASCII out, one-to-one, bounded.
    """

    def test_carriage_return(self) -> None:
        self.assertEqual(escape("a\rb"), "a\\rb")

    def test_line_feed(self) -> None:
        self.assertEqual(escape(b"a\nb"), "a\\nb")

    def test_crlf_forged_line(self) -> None:
        out = escape(f"bob\r\n{FORGED}")
        self.assertEqual(out, f"bob\\r\\n{FORGED}")
        self.assertEqual(control_chars(out), [])

    def test_tab(self) -> None:
        self.assertEqual(escape("a\tb"), "a\\tb")

    def test_nul(self) -> None:
        self.assertEqual(escape(b"a\x00b"), "a\\0b")

    def test_ansi_colour(self) -> None:
        self.assertEqual(escape("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m")

    def test_ansi_clear_screen_and_cursor_home(self) -> None:
        self.assertEqual(escape("\x1b[2J\x1b[H"), "\\x1b[2J\\x1b[H")

    def test_ansi_cursor_moves(self) -> None:
        self.assertEqual(escape("\x1b[1A\x1b[10;20H\x1b[5D"), "\\x1b[1A\\x1b[10;20H\\x1b[5D")

    def test_osc_title_sequence(self) -> None:
        self.assertEqual(escape("\x1b]0;owned\x07"), "\\x1b]0;owned\\x07")

    def test_delete(self) -> None:
        self.assertEqual(escape(b"a\x7fb"), "a\\x7fb")

    def test_backspace(self) -> None:
        # "password\b\b\b\b\b\b\b\bxxxxxxxx" must not overprint on a terminal.
        self.assertEqual(escape("ab\x08\x08cd"), "ab\\x08\\x08cd")

    def test_c1_control_in_text(self) -> None:
        self.assertEqual(escape("a\x85b\x9bc"), "a\\xc2\\x85b\\xc2\\x9bc")

    def test_unicode_line_separator(self) -> None:
        self.assertEqual(escape("a\u2028b"), "a\\xe2\\x80\\xa8b")

    def test_utf8_multibyte_text(self) -> None:
        self.assertEqual(escape("é日😀"), "\\xc3\\xa9\\xe6\\x97\\xa5\\xf0\\x9f\\x98\\x80")

    def test_utf8_multibyte_bytes(self) -> None:
        self.assertEqual(escape("é".encode()), "\\xc3\\xa9")

    def test_invalid_utf8_bytes(self) -> None:
        self.assertEqual(escape(b"\xff\xfe\xc3(\x80"), "\\xff\\xfe\\xc3(\\x80")

    def test_invalid_utf8_smuggled_in_text(self) -> None:
        # Bytes decoded with surrogateescape come back as the bytes received.
        text = b"a\xffb".decode("utf-8", "surrogateescape")
        self.assertEqual(escape(text), "a\\xffb")

    def test_lone_surrogate_does_not_raise(self) -> None:
        self.assertEqual(escape("a\ud800b"), "a\\xed\\xa0\\x80b")

    def test_backslash_doubled(self) -> None:
        self.assertEqual(escape("a\\b"), "a\\\\b")

    def test_forged_escape_is_distinguishable(self) -> None:
        # A peer typing the text of an escape gets something other than the real one.
        self.assertEqual(escape("\\x1b[2J"), "\\\\x1b[2J")
        self.assertNotEqual(escape("\\x1b[2J"), escape("\x1b[2J"))
        self.assertNotEqual(escape("\\n"), escape("\n"))
        self.assertNotEqual(escape("\\r\\n"), escape("\r\n"))
        self.assertNotEqual(escape("\\0"), escape("\0"))

    def test_printable_ascii_unchanged(self) -> None:
        text = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x5C)
        self.assertEqual(escape(text, limit=200), text)

    def test_none(self) -> None:
        self.assertEqual(escape(None), "-")

    def test_other_object_is_its_text(self) -> None:
        self.assertEqual(escape(42), "42")

    def test_over_long_is_truncated_with_marker(self) -> None:
        out = escape("a" * 500)
        self.assertEqual(
            out, "a" * DEFAULT_FIELD_LIMIT + f"...(+{500 - DEFAULT_FIELD_LIMIT} bytes)"
        )

    def test_truncation_counts_bytes_not_characters(self) -> None:
        self.assertEqual(escape("é" * 10, limit=4), "\\xc3\\xa9\\xc3\\xa9...(+16 bytes)")

    def test_exactly_at_limit_has_no_marker(self) -> None:
        self.assertEqual(escape("b" * 8, limit=8), "b" * 8)

    def test_over_long_control_bytes_bounded(self) -> None:
        out = escape(b"\x1b" * 10_000)
        self.assertEqual(out, "\\x1b" * DEFAULT_FIELD_LIMIT + "...(+9880 bytes)")

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=DEFAULT_FIELD_LIMIT))
    def test_bytes_printable_and_one_to_one(self, raw: bytes) -> None:
        out = escape(raw)
        self.assertEqual(control_chars(out), [])
        self.assertEqual(unescape(out), raw)

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=30))
    def test_text_printable_and_one_to_one(self, text: str) -> None:
        out = escape(text)
        self.assertEqual(control_chars(out), [])
        self.assertEqual(unescape(out), text.encode("utf-8", "surrogatepass"))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(min_size=1, max_size=400), st.integers(min_value=1, max_value=200))
    def test_always_bounded(self, raw: bytes, limit: int) -> None:
        out = escape(raw, limit=limit)
        self.assertLessEqual(len(out), 4 * limit + len(f"...(+{len(raw)} bytes)"))
        self.assertEqual(control_chars(out), [])


class TextObserverTests(unittest.TestCase):
    """
    L{format_text} / L{safe_text_observer}: one escaped line per event, fixed columns.
    """

    LINE = re.compile(r"^\S+ \[\S+\] (\S+) (\S+) (.*)\n\Z", re.DOTALL)

    def test_columns(self) -> None:
        text, _ = publish(
            log_format="authenticated {user}", event="auth.ok", conn_id="1f3a-2c", user="alice"
        )
        match = self.LINE.match(text)
        assert match is not None, text
        self.assertEqual(match.groups(), ("auth.ok", "1f3a-2c", "authenticated alice"))
        self.assertIn(" [tests.test_log#info] ", text)

    def test_missing_event_and_conn_id_are_dashes(self) -> None:
        text, _ = publish(log_format="from Twisted")
        match = self.LINE.match(text)
        assert match is not None, text
        self.assertEqual(match.groups(), ("-", "-", "from Twisted"))

    def test_unescaped_field_cannot_forge_a_line(self) -> None:
        # Defence in depth: a caller forgot escape(); the line is still one safe line.
        text, _ = publish(event="auth.fail", conn_id="1-1", name=RAW)
        self.assertEqual(text.count("\n"), 1)
        self.assertTrue(text.endswith("\n"))
        self.assertEqual(control_chars(text[:-1]), [])
        self.assertEqual(len(text.splitlines()), 1)
        self.assertFalse(text.startswith("1999"))
        self.assertIn(f"x\\r\\n{FORGED} root\\x1b[31mred\\x1b[0m\\x1b[2J\\x1b[H", text)
        self.assertIn("\\0nul\\x08\\x08bs\\x7fdel\\x07\\x1b]0;title\\x07", text)
        self.assertIn("\\xc2\\x85\\xe2\\x80\\xa8end", text)

    def test_escaped_field_is_not_escaped_twice(self) -> None:
        text, _ = publish(name=escape(RAW, limit=1000))
        self.assertIn(escape(RAW, limit=1000), text)

    def test_hostile_event_name_and_conn_id(self) -> None:
        # The columns before the message cannot hold a space or a control character.
        text, _ = publish(event="a b\nc", conn_id="x\r y", name="n")
        match = self.LINE.match(text)
        assert match is not None, text
        self.assertEqual(match.group(1), "a_b\\nc")
        self.assertEqual(match.group(2), "x\\r_y")

    def test_traceback_stays_on_one_line(self) -> None:
        publisher = LogPublisher()
        out = io.StringIO()
        publisher.addObserver(safe_text_observer(out))
        logger = Logger(namespace="t", observer=publisher)  # type: ignore[arg-type]
        try:
            raise ValueError("bad\r\nvalue")
        except ValueError:
            logger.failure("it broke", event="x.error")
        text = out.getvalue()
        self.assertEqual(text.count("\n"), 1)
        self.assertIn("it broke\\nTraceback", text)
        self.assertIn("ValueError: bad\\r\\nvalue", text)
        self.assertIn("[t#critical] x.error - ", text)

    def test_non_ascii_message(self) -> None:
        text, _ = publish(log_format="caf\u00e9 {name}", name="ok")
        self.assertIn("caf\\xc3\\xa9 ok", text)

    def test_bad_format_string_still_one_line(self) -> None:
        text, _ = publish(log_format="{missing", event="x")
        self.assertEqual(text.count("\n"), 1)
        self.assertIn("Unable to format event", text)

    def test_event_with_nothing_to_show(self) -> None:
        self.assertIsNone(format_text({"log_time": 1.0}))

    def test_legacy_system_shown_without_spaces(self) -> None:
        text = format_text({"log_format": "hi", "log_system": "Gateway Factory,0,127.0.0.1"})
        assert text is not None
        self.assertIn(" [Gateway_Factory,0,127.0.0.1] - - hi\n", text)


class JSONObserverTests(unittest.TestCase):
    """
    L{format_json} / L{json_observer}: one parseable, ASCII-only object per line.
    """

    def record(self, **fields: Any) -> dict[str, Any]:
        _, js = publish(**fields)
        self.assertEqual(js.count("\n"), 1, js)
        self.assertTrue(js.endswith("\n"))
        record = json.loads(js)
        self.assertIsInstance(record, dict)
        return record  # type: ignore[no-any-return]

    def test_record_keys(self) -> None:
        record = self.record(
            log_format="authenticated {user}",
            event="auth.ok",
            conn_id="1f3a-2c",
            user="alice",
            attempt=2,
            ok=True,
        )
        self.assertEqual(
            list(record)[:6], ["time", "ts", "level", "namespace", "event", "message"]
        )
        self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertIsInstance(record["ts"], float)
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["namespace"], "tests.test_log")
        self.assertEqual(record["event"], "auth.ok")
        self.assertEqual(record["message"], "authenticated alice")
        self.assertEqual(record["conn_id"], "1f3a-2c")
        self.assertEqual(record["user"], "alice")
        self.assertEqual(record["attempt"], 2)
        self.assertIs(record["ok"], True)
        self.assertFalse([key for key in record if key.startswith("log_")])

    def test_unescaped_field_stays_in_one_record(self) -> None:
        _, js = publish(event="auth.fail", name=RAW)
        self.assertEqual(js.count("\n"), 1)
        self.assertEqual(control_chars(js[:-1]), [])  # ASCII only: \r, \n, ESC are \u-escaped
        record = json.loads(js)
        self.assertEqual(record["name"], RAW)  # and nothing was lost

    def test_event_without_name(self) -> None:
        self.assertIsNone(self.record(log_format="from Twisted")["event"])

    def test_bytes_value_is_escaped_text(self) -> None:
        self.assertEqual(self.record(data=b"\xff\r\n")["data"], "\\xff\\r\\n")

    def test_non_finite_float(self) -> None:
        record = self.record(a=float("nan"), b=float("inf"))
        self.assertEqual((record["a"], record["b"]), ("nan", "inf"))

    def test_nested_values(self) -> None:
        record = self.record(figures={"refused": {"rate": 2}, "list": (1, "x\n")})
        self.assertEqual(record["figures"], {"refused": {"rate": 2}, "list": [1, "x\n"]})

    def test_deeply_nested_value_bounded(self) -> None:
        deep: Any = "bottom"
        for _ in range(50):
            deep = [deep]
        record = self.record(deep=deep)
        self.assertIsInstance(record["deep"], list)

    def test_unserialisable_object_is_text(self) -> None:
        class Thing:
            def __str__(self) -> str:
                return "thing\r\n"

        self.assertEqual(self.record(thing=Thing())["thing"], "thing\r\n")

    def test_field_named_like_a_record_key_is_renamed(self) -> None:
        record = self.record(log_format="x", time=3, ts="mine", message="m", system="s")
        self.assertEqual(record["field_time"], 3)
        self.assertEqual(record["field_ts"], "mine")
        self.assertEqual(record["field_message"], "m")
        self.assertEqual(record["field_system"], "s")
        self.assertIsInstance(record["ts"], float)
        self.assertEqual(record["message"], "x")

    def test_failure_traceback_in_one_record(self) -> None:
        publisher = LogPublisher()
        out = io.StringIO()
        publisher.addObserver(json_observer(out))
        logger = Logger(namespace="t", observer=publisher)  # type: ignore[arg-type]
        try:
            raise ValueError("bad\r\nvalue")
        except ValueError:
            logger.failure("it broke", event="x.error")
        text = out.getvalue()
        self.assertEqual(text.count("\n"), 1)
        record = json.loads(text)
        self.assertEqual(record["level"], "critical")
        self.assertIn("ValueError: bad\r\nvalue", record["failure"])

    def test_legacy_event_keys_folded(self) -> None:
        event = {
            "message": ("hello",),
            "time": 1.5,
            "system": "-",
            "isError": 0,
            "log_format": "{log_text}",
            "log_text": "hello",
            "log_time": 1.5,
            "log_system": "-",
            "log_namespace": "log_legacy",
            "port": 7700,
        }
        record = event_as_record(event)
        self.assertEqual(
            record,
            {
                "time": "1970-01-01T00:00:01.500Z",
                "ts": 1.5,
                "level": None,
                "namespace": "log_legacy",
                "system": "-",
                "event": None,
                "message": "hello",
                "port": 7700,
            },
        )

    def test_record_keys_documented(self) -> None:
        self.assertEqual(
            JSON_RECORD_KEYS,
            ("time", "ts", "level", "namespace", "system", "event", "message", "failure"),
        )

    def test_format_json_never_raises(self) -> None:
        class Explodes:
            def __str__(self) -> str:
                raise RuntimeError("no")

        text = format_json({"log_format": "x", "thing": Explodes()})
        self.assertEqual(json.loads(text)["thing"], "<unrepresentable Explodes>")

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=5))
    def test_any_text_fields_give_one_ascii_line(self, fields: dict[str, str]) -> None:
        event: dict[str, Any] = {"log_format": "m", "log_time": 0.0, **fields}
        text = format_json(event)
        self.assertEqual(text.count("\n"), 1)
        self.assertEqual(control_chars(text[:-1]), [])
        self.assertIsInstance(json.loads(text), dict)


class StdoutFactoryTests(unittest.TestCase):
    """
    The zero-argument factories for C{twistd --logger}.
    """

    def test_text_stdout_observer(self) -> None:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = text_stdout_observer()
        verifyObject(ILogObserver, observer)
        observer({"log_format": "hi {x}", "x": "\x1b[2J", "event": "e", "log_time": 0.0})
        self.assertRegex(out.getvalue(), r"^\S+ \[-#-\] e - hi \\x1b\[2J\n\Z")

    def test_json_stdout_observer(self) -> None:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = json_stdout_observer()
        verifyObject(ILogObserver, observer)
        observer({"log_format": "hi", "event": "e", "log_time": 0.0})
        self.assertEqual(json.loads(out.getvalue())["event"], "e")

    def test_redirected_stdout_is_not_used(self) -> None:
        # After twistd redirects sys.stdout into the log, writing there would loop.
        real = io.StringIO()
        self.patch(sys, "__stdout__", real)
        self.patch(sys, "stdout", LoggingFile(Logger(observer=LogPublisher())))  # type: ignore[arg-type]
        json_stdout_observer()({"log_format": "hi", "log_time": 0.0})
        self.assertEqual(json.loads(real.getvalue())["message"], "hi")

    def test_observer_for(self) -> None:
        out = io.StringIO()
        observer_for("json", out)({"log_format": "x"})
        self.assertEqual(json.loads(out.getvalue())["message"], "x")
        self.assertRaises(ValueError, observer_for, "xml", out)


class JournalPriorityTests(unittest.TestCase):
    """
    Lines for the journal start with the sd-daemon priority of their level (C{<N>}), on
    standard output when C{$JOURNAL_STREAM} names it, or always with the journal factories.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.out = open(os.path.join(self.dir, "stdout"), "w+")
        self.addCleanup(self.out.close)
        info = os.fstat(self.out.fileno())
        self.journal = f"{info.st_dev}:{info.st_ino}"
        self.patch(log_module, "_stdout", lambda: self.out)
        previous = os.environ.pop("JOURNAL_STREAM", None)
        if previous is not None:
            self.addCleanup(os.environ.__setitem__, "JOURNAL_STREAM", previous)
        self.addCleanup(os.environ.pop, "JOURNAL_STREAM", None)

    def emit(self, observer: Any) -> list[str]:
        """
        Log one event of each level through a real L{Logger} to C{observer}.

        @return: the lines written.
        """
        publisher = LogPublisher()
        publisher.addObserver(observer)
        logger = Logger(namespace="t", observer=publisher)  # type: ignore[arg-type]
        for level in ("debug", "info", "warn", "error", "critical"):
            getattr(logger, level)("level {name}", name=level, event=f"t.{level}")
        self.out.flush()
        self.out.seek(0)
        return self.out.read().splitlines(keepends=True)

    def test_priority_of_each_level(self) -> None:
        """
        debug 7, info 6, warn 4, error 3, critical 2, as sd-daemon(3) defines them.
        """
        self.assertEqual(
            dict(JOURNAL_PRIORITIES),
            {"debug": 7, "info": 6, "warn": 4, "error": 3, "critical": 2},
        )
        lines = self.emit(text_journal_observer())
        self.assertEqual([line[:3] for line in lines], ["<7>", "<6>", "<4>", "<3>", "<2>"])
        for line, level in zip(lines, ("debug", "info", "warn", "error", "critical"), strict=True):
            self.assertRegex(line, rf"^<\d>\S+ \[t#{level}\] t\.{level} - level {level}\n\Z")

    def test_events_without_level(self) -> None:
        """
        A legacy error (C{isError}) is priority 3; an event with no known level is 6; an
        event with nothing to show writes nothing, not a bare prefix.
        """
        formatter = with_journal_priority(format_text)
        legacy = {"log_format": "x", "isError": 1, "log_time": 0.0}
        self.assertEqual(journal_priority(legacy), 3)
        self.assertTrue(str(formatter(legacy)).startswith("<3>"))
        self.assertEqual(journal_priority({"log_format": "x", "log_level": "warn"}), 6)
        self.assertIsNone(formatter({"log_format": "", "log_time": 0.0}))

    def test_hostile_text_cannot_start_a_line_of_another_priority(self) -> None:
        """
        A field holding a newline and C{<0>} (emergency) stays inside the one line, whose
        only prefix is its own.
        """
        line = with_journal_priority(format_text)(
            {"log_format": "{x}", "x": "a\n<0>forged", "log_time": 0.0}
        )
        assert line is not None
        self.assertEqual(line.count("\n"), 1)
        self.assertTrue(line.startswith("<6>"))
        self.assertIn("a\\n<0>forged", line)

    def test_text_stdout_observer_prefixes_on_the_journal_stream(self) -> None:
        """
        With C{JOURNAL_STREAM} naming standard output's device and inode, the text stdout
        observer writes the prefix.
        """
        os.environ["JOURNAL_STREAM"] = self.journal
        lines = self.emit(text_stdout_observer())
        self.assertEqual([line[:3] for line in lines], ["<7>", "<6>", "<4>", "<3>", "<2>"])

    def test_json_stdout_observer_prefixes_and_keeps_the_record_whole(self) -> None:
        """
        Under the journal each JSON line is C{<N>} then the record, which journald strips:
        the rest is the same JSON record as without the journal.
        """
        os.environ["JOURNAL_STREAM"] = self.journal
        lines = self.emit(json_stdout_observer())
        self.assertEqual([line[:3] for line in lines], ["<7>", "<6>", "<4>", "<3>", "<2>"])
        records = [json.loads(line[3:]) for line in lines]
        self.assertEqual(
            [r["level"] for r in records], ["debug", "info", "warn", "error", "critical"]
        )
        self.assertEqual(
            list(records[0])[: len(JSON_RECORD_KEYS) - 2],
            ["time", "ts", "level", "namespace", "event", "message"],
        )

    def test_no_prefix_without_journal_stream(self) -> None:
        """
        Without C{JOURNAL_STREAM} (a terminal, a file, another supervisor) nothing changes.
        """
        lines = self.emit(text_stdout_observer())
        self.assertEqual(len(lines), 5)
        self.assertFalse(any(line.startswith("<") for line in lines), lines)

    def test_journal_stream_naming_another_file_gives_no_prefix(self) -> None:
        """
        C{JOURNAL_STREAM} set, but standard output redirected elsewhere (its inode is not
        the one named, here one off): no prefix.
        """
        device, inode = self.journal.split(":")
        os.environ["JOURNAL_STREAM"] = f"{device}:{int(inode) + 1}"
        lines = self.emit(text_stdout_observer())
        self.assertFalse(any(line.startswith("<") for line in lines), lines)

    def test_is_journal_stream(self) -> None:
        """
        Only an exact C{<device>:<inode>} match counts; malformed values and streams
        without a descriptor never do.
        """
        device, inode = self.journal.split(":")
        self.assertTrue(is_journal_stream(self.out, {"JOURNAL_STREAM": self.journal}))
        for value in (
            "",
            ":",
            device,
            f"{device}:",
            f":{inode}",
            f"{device}:{inode}x",
            f"{int(device) + 1}:{inode}",
            f"-{device}:{inode}",
        ):
            self.assertFalse(is_journal_stream(self.out, {"JOURNAL_STREAM": value}), value)
        self.assertFalse(is_journal_stream(self.out, {}))
        self.assertFalse(is_journal_stream(io.StringIO(), {"JOURNAL_STREAM": self.journal}))


class FileLogSinkTests(unittest.TestCase):
    """
    L{FileLogSink}: the C{[log] file} observer, added on start and removed on stop.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "netguard.log")
        self.publisher = LogPublisher()
        self.events: list[dict[str, Any]] = []
        self.publisher.addObserver(self.events.append)
        self.logger = Logger(namespace="t", observer=self.publisher)  # type: ignore[arg-type]

    def sink(self, log_format: str = "text") -> FileLogSink:
        sink = FileLogSink(self.path, log_format, self.publisher)
        self.addCleanup(sink.stop)
        return sink

    def read(self) -> str:
        with open(self.path) as handle:
            return handle.read()

    def test_creates_file_0600_whatever_the_umask(self) -> None:
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        self.sink().start()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_writes_text_lines(self) -> None:
        sink = self.sink()
        sink.start()
        self.logger.info("hello {name}", event="x.hello", name="a\r\nb")
        lines = self.read().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn(" log.file_open - logging to ", lines[0])
        self.assertRegex(lines[1], r" \[t#info\] x\.hello - hello a\\r\\nb$")

    def test_writes_json_lines(self) -> None:
        self.sink("json").start()
        self.logger.info("hello {name}", event="x.hello", name="a\r\nb")
        records = [json.loads(line) for line in self.read().splitlines()]
        self.assertEqual([r["event"] for r in records], ["log.file_open", "x.hello"])
        self.assertEqual(records[0]["file_format"], "json")
        self.assertIn("(json)", records[0]["message"])
        self.assertEqual(records[0]["mode"], "0600")
        self.assertEqual(records[1]["name"], "a\r\nb")

    def test_appends_to_existing_file_and_keeps_its_mode(self) -> None:
        with open(self.path, "w") as handle:
            handle.write("earlier\n")
        os.chmod(self.path, 0o640)
        self.sink().start()
        self.assertTrue(self.read().startswith("earlier\n"))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        warned = [e for e in self.events if e.get("event") == "log.file_permissions"]
        self.assertEqual(len(warned), 1)
        self.assertEqual(warned[0]["mode"], "0640")

    def test_private_file_no_permission_warning(self) -> None:
        self.sink().start()
        self.assertFalse([e for e in self.events if e.get("event") == "log.file_permissions"])

    def test_stop_removes_observer_and_closes(self) -> None:
        sink = self.sink()
        sink.start()
        self.assertTrue(sink.started)
        sink.stop()
        self.assertFalse(sink.started)
        self.logger.info("after", event="x.after")
        self.assertNotIn("x.after", self.read())
        # Only our own capture is left on the publisher.
        self.assertEqual(self.publisher._observers, [self.events.append])

    def test_start_and_stop_are_idempotent(self) -> None:
        sink = self.sink()
        sink.start()
        sink.start()
        self.logger.info("once", event="x.once")
        self.assertEqual(self.read().count("x.once"), 1)
        sink.stop()
        sink.stop()

    def test_stop_passes_result_through(self) -> None:
        sink = self.sink()
        sink.start()
        marker = object()
        self.assertIs(sink.stop(marker), marker)

    def test_unopenable_path(self) -> None:
        sink = FileLogSink(os.path.join(self.dir, "missing", "x.log"), "text", self.publisher)
        error = self.assertRaises(LogFileError, sink.start)
        self.assertIn("missing/x.log", str(error))
        self.assertIn("No such file", str(error))
        self.assertFalse(sink.started)

    def test_inactive_for_dash(self) -> None:
        sink = FileLogSink.from_config(LogSettings("json", "-"), self.publisher)
        sink.start()
        self.assertFalse(sink.started)
        self.assertEqual(self.publisher._observers, [self.events.append])

    def test_from_config(self) -> None:
        sink = FileLogSink.from_config(LogSettings("json", self.path), self.publisher)
        self.addCleanup(sink.stop)
        self.assertEqual((sink.path, sink.log_format), (self.path, "json"))

    def test_unknown_format(self) -> None:
        self.assertRaises(ValueError, FileLogSink, self.path, "xml", self.publisher)

    def test_default_publisher_is_global(self) -> None:
        sink = FileLogSink(self.path, "json")
        sink.start()
        self.addCleanup(sink.stop)
        Logger(namespace="t").info("global", event="x.global")
        self.assertIn('"event":"x.global"', self.read())

    def test_open_log_file_appends(self) -> None:
        for text in ("one\n", "two\n"):
            stream = open_log_file(self.path)
            stream.write(text)
            stream.close()
        self.assertEqual(self.read(), "one\ntwo\n")


class LogFileKindTests(unittest.TestCase):
    """
    L{open_log_file} never blocks: a FIFO (with or without a reader) or a socket is
    refused at once with an error naming the path, at start and when the sink reopens the
    file after a failed write; a character device (C{/dev/null}, C{/dev/full}) still works.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ngf-", dir="/tmp")  # short: socket path bound
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "ng.log")
        self.publisher = LogPublisher()
        self.events: list[dict[str, Any]] = []
        self.publisher.addObserver(self.events.append)
        self.now = 0.0

    def run_guarded(self, call: Any) -> Any:
        """
        Run C{call} in a thread; if it is still blocked (in C{open} of the FIFO at
        C{self.path}) after a generous hang guard, release it by opening the FIFO's reading
        end, then fail. Returns what C{call} returned or raised.
        """
        outcome: list[Any] = []

        def target() -> None:
            try:
                outcome.append(call())
            except BaseException as error:  # noqa: BLE001 - handed back to the test
                outcome.append(error)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(10)  # hang guard only
        if thread.is_alive():
            reader = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            thread.join(10)
            os.close(reader)
            self.fail("opening the FIFO blocked")
        return outcome[0]

    def test_fifo_without_reader_refused_at_start(self) -> None:
        """
        A FIFO nobody reads as the log file: the start fails at once with L{LogFileError}
        naming the path and what it is, instead of blocking in C{open}.
        """
        os.mkfifo(self.path)
        sink = FileLogSink(self.path, "json", self.publisher)
        self.addCleanup(sink.stop)
        error = self.run_guarded(sink.start)
        self.assertIsInstance(error, LogFileError)
        self.assertIn(self.path, str(error))
        self.assertIn("is a FIFO, not a regular file or a character device", str(error))
        self.assertFalse(sink.started)

    def test_fifo_with_reader_accepted(self) -> None:
        """
        The other side: a FIFO that has a reader (C{/dev/stdout} piped to C{tee}) opens
        without blocking and takes the records, its descriptor left blocking.
        """
        os.mkfifo(self.path)
        reader = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        stream = self.run_guarded(lambda: open_log_file(self.path))
        self.assertNotIsInstance(stream, BaseException)
        self.addCleanup(stream.close)
        self.assertTrue(os.get_blocking(stream.fileno()))
        stream.write("a record\n")
        stream.flush()
        self.assertEqual(os.read(reader, 100), b"a record\n")

    def test_unix_socket_refused(self) -> None:
        """
        A unix socket as the log file is refused as such, not with a bare C{ENXIO}.
        """
        server = socket.socket(socket.AF_UNIX)
        self.addCleanup(server.close)
        server.bind(self.path)
        error = self.assertRaises(NotLogFile, open_log_file, self.path)
        self.assertIn("is a socket", str(error))

    def test_character_device_accepted_and_blocking(self) -> None:
        """
        The other side: C{/dev/null}, a character device, opens and takes writes, and its
        descriptor is left blocking (C{O_NONBLOCK} only guards the open).
        """
        stream = open_log_file("/dev/null")
        self.addCleanup(stream.close)
        self.assertFalse(fcntl.fcntl(stream.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)
        stream.write("record\n")
        stream.flush()

    def test_regular_file_descriptor_blocking(self) -> None:
        """
        A regular log file's descriptor is left without C{O_NONBLOCK}.
        """
        stream = open_log_file(self.path)
        self.addCleanup(stream.close)
        self.assertFalse(fcntl.fcntl(stream.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)

    def test_reopen_after_failure_refuses_fifo(self) -> None:
        """
        The log file a symlink to C{/dev/full} (every write fails); once replaced by a
        FIFO nobody reads, the reopen for the next record refuses it at once: the record is
        dropped and counted, and C{log.write_failed} names the FIFO; nothing blocks.
        """
        if not os.path.exists("/dev/full"):
            raise unittest.SkipTest("no /dev/full on this system")
        os.symlink("/dev/full", self.path)
        sink = FileLogSink(self.path, "json", self.publisher, seconds=lambda: self.now)
        sink.start()
        self.addCleanup(sink.stop)
        logger = Logger(namespace="t", observer=self.publisher)  # type: ignore[arg-type]
        logger.info("first", event="x.first")
        os.remove(self.path)
        os.mkfifo(self.path)
        self.now = WRITE_FAILURE_REPORT_INTERVAL
        self.run_guarded(lambda: logger.info("second", event="x.second"))
        reports = [e for e in self.events if e.get("event") == "log.write_failed"]
        self.assertEqual([r["errno"] for r in reports], ["ENOSPC", "-"])
        self.assertIn("is a FIFO", reports[1]["error"])
        self.assertEqual(sink.dropped, 3)
        self.assertTrue(sink.started)
        self.assertEqual([e for e in self.events if "log_failure" in e], [])


class FlakyFile:
    """
    A log file whose writes fail with C{ENOSPC} while C{disk["full"]} is set; records reach
    C{disk["lines"]} only when flushed, and what is still buffered at close is lost.
    """

    def __init__(self, disk: dict[str, Any]) -> None:
        self.disk = disk
        self.buffer = ""
        self.closed = False

    def write(self, text: str) -> None:
        self.buffer += text

    def flush(self) -> None:
        if self.disk["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.disk["lines"].append(self.buffer)
        self.buffer = ""

    def close(self) -> None:
        self.closed = True


class FileLogSinkWriteFailureTests(unittest.TestCase):
    """
    A C{[log] file} that can no longer be written: records are dropped and counted, the
    other observers get one rate-limited C{log.write_failed} and no traceback, and writing
    resumes (with one C{log.write_restored}) when the file takes records again.
    """

    def setUp(self) -> None:
        self.publisher = LogPublisher()
        self.events: list[dict[str, Any]] = []
        self.publisher.addObserver(self.events.append)
        self.logger = Logger(namespace="t", observer=self.publisher)  # type: ignore[arg-type]
        self.disk: dict[str, Any] = {"full": False, "lines": []}
        self.files: list[FlakyFile] = []
        self.now = 0.0

    def opener(self, path: str) -> Any:
        stream = FlakyFile(self.disk)
        self.files.append(stream)
        return stream

    def sink(self) -> FileLogSink:
        sink = FileLogSink("x.log", "text", self.publisher, self.opener, lambda: self.now)
        sink.start()
        self.addCleanup(sink.stop)
        return sink

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    def emit(self, count: int) -> None:
        for number in range(count):
            self.logger.info("record {number}", event="x.record", number=number)

    def test_failed_writes_dropped_counted_and_reported_once(self) -> None:
        """
        Three records on a full disk: all three dropped and counted, one C{log.write_failed}
        (error, errno, one dropped so far) for the other observers, no traceback, and the
        sink stays on the publisher.
        """
        sink = self.sink()
        self.disk["full"] = True
        self.emit(3)
        reports = self.named("log.write_failed")
        self.assertEqual(len(reports), 1)
        self.assertEqual(reports[0]["log_level"], LogLevel.error)
        self.assertEqual(reports[0]["errno"], "ENOSPC")
        self.assertEqual(reports[0]["error"], os.strerror(errno.ENOSPC))
        self.assertEqual(reports[0]["dropped"], 1)
        self.assertEqual(sink.dropped, 3)
        self.assertEqual([e for e in self.events if "log_failure" in e], [])
        self.assertTrue(sink.started)
        self.assertEqual(len(self.publisher._observers), 2)

    def test_half_written_record_not_kept_back(self) -> None:
        """
        After a failure the file is closed (its buffer dropped) and reopened for the next
        record, so a dropped record never reappears later.
        """
        self.sink()
        self.disk["full"] = True
        self.emit(1)
        self.assertTrue(self.files[0].closed)
        self.disk["full"] = False
        self.logger.info("after", event="x.after")
        self.assertEqual(len(self.files), 2)
        written = "".join(self.disk["lines"])
        self.assertNotIn("record 0", written)
        self.assertIn("x.after", written)

    def test_no_second_report_before_the_interval(self) -> None:
        """
        Half a second before the interval is over, further failures are only counted.
        """
        self.sink()
        self.disk["full"] = True
        self.emit(1)
        self.now = WRITE_FAILURE_REPORT_INTERVAL - 0.5
        self.emit(4)
        self.assertEqual(len(self.named("log.write_failed")), 1)

    def test_next_report_at_the_interval_counts_since_the_last(self) -> None:
        """
        At the interval exactly, the next failure is reported with the records dropped
        since the previous report (itself included).
        """
        self.sink()
        self.disk["full"] = True
        self.emit(1)
        self.now = WRITE_FAILURE_REPORT_INTERVAL - 0.5
        self.emit(4)
        self.now = WRITE_FAILURE_REPORT_INTERVAL
        self.emit(1)
        self.assertEqual([e["dropped"] for e in self.named("log.write_failed")], [1, 5])

    def test_recovery_written_and_said_once(self) -> None:
        """
        When the file takes records again, the record is written, followed (in the file and
        for the other observers) by one C{log.write_restored} with the count lost; the next
        records bring no other.
        """
        sink = self.sink()
        self.disk["full"] = True
        self.emit(3)
        self.disk["full"] = False
        self.logger.info("back", event="x.back")
        self.emit(2)
        restored = self.named("log.write_restored")
        self.assertEqual(len(restored), 1)
        self.assertEqual(restored[0]["lost"], 3)
        self.assertEqual(sink.dropped, 0)
        lines = "".join(self.disk["lines"]).splitlines()
        self.assertIn("x.back", lines[1])
        self.assertIn("log.write_restored", lines[2])
        self.assertEqual(len(lines), 5)

    def test_failure_after_recovery_reported_at_once(self) -> None:
        """
        A new failure after a recovery is reported at once, not held back by the interval
        of the previous report.
        """
        self.sink()
        self.disk["full"] = True
        self.emit(1)
        self.disk["full"] = False
        self.emit(1)
        self.disk["full"] = True
        self.emit(1)
        self.assertEqual([e["dropped"] for e in self.named("log.write_failed")], [1, 1])

    def test_reopen_failure_counted(self) -> None:
        """
        A file that cannot be reopened (removed directory) drops the record like a failed
        write, without a traceback.
        """

        def opener(path: str) -> Any:
            if self.files:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            return self.opener(path)

        sink = FileLogSink("x.log", "text", self.publisher, opener, lambda: self.now)
        sink.start()
        self.addCleanup(sink.stop)
        self.disk["full"] = True
        self.emit(1)
        self.disk["full"] = False
        self.emit(2)
        self.assertEqual(sink.dropped, 3)
        self.assertEqual(self.named("log.write_failed")[0]["errno"], "ENOSPC")
        self.assertEqual([e for e in self.events if "log_failure" in e], [])

    def test_dev_full(self) -> None:
        """
        With the real C{/dev/full} as the log file, 36 records (and C{log.file_open}) are
        dropped and counted, with one C{log.write_failed} naming C{ENOSPC} and no traceback.
        """
        if not os.path.exists("/dev/full"):
            raise unittest.SkipTest("no /dev/full on this system")
        sink = FileLogSink("/dev/full", "text", self.publisher)
        sink.start()
        self.addCleanup(sink.stop)
        self.emit(36)
        reports = self.named("log.write_failed")
        self.assertEqual([(r["errno"], r["dropped"]) for r in reports], [("ENOSPC", 1)])
        self.assertEqual(sink.dropped, 37)
        self.assertEqual([e for e in self.events if "log_failure" in e], [])
        self.assertTrue(sink.started)


class StdoutProblemTests(unittest.TestCase):
    """
    L{stdout_log_problem}: C{format = "json"} with C{file = "-"} is refused unless the
    runner writes JSON.
    """

    JSON_STDOUT = LogSettings("json", "-")

    def test_text_is_fine(self) -> None:
        self.assertIsNone(stdout_log_problem(LogSettings("text", "-"), {"logger": None}))

    def test_json_to_a_file_is_fine(self) -> None:
        self.assertIsNone(stdout_log_problem(LogSettings("json", "/x"), {"logger": None}))

    def test_twistd_without_logger_refused(self) -> None:
        problem = stdout_log_problem(self.JSON_STDOUT, {"logger": None, "nodaemon": 1})
        assert problem is not None
        self.assertIn("--logger netguard.log.json_stdout_observer", problem)
        self.assertIn("log.file", problem)

    def test_twistd_with_logger_fine(self) -> None:
        runner = {"logger": "netguard.log.json_stdout_observer"}
        self.assertIsNone(stdout_log_problem(self.JSON_STDOUT, runner))

    def test_twist_without_json_refused(self) -> None:
        problem = stdout_log_problem(self.JSON_STDOUT, {"logLevel": "info"})
        assert problem is not None
        self.assertIn("twist --log-format=json", problem)

    def test_twist_with_json_fine(self) -> None:
        runner = {"logLevel": "info", "logFormat": "json"}
        self.assertIsNone(stdout_log_problem(self.JSON_STDOUT, runner))

    def test_no_runner_not_second_guessed(self) -> None:
        self.assertIsNone(stdout_log_problem(self.JSON_STDOUT, None))

    def test_plugin_refuses_under_twistd(self) -> None:
        from twisted.application.app import ServerOptions
        from twisted.python import usage

        from netguard.tap import Options

        options = Options()
        options.parent = ServerOptions()  # type: ignore[attr-defined]
        state = tempfile.mkdtemp(dir="/tmp")
        self.addCleanup(os.rmdir, state)
        error = self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            ["--state-dir", state, "--log-format", "json"],
        )
        self.assertIn("json_stdout_observer", str(error))


class GlobalPublisherHygieneTests(unittest.TestCase):
    """
    Nothing in this module leaves an observer on the global publisher.
    """

    def test_no_leak(self) -> None:
        before = list(globalLogPublisher._observers)
        where = tempfile.mkdtemp(dir="/tmp")
        self.addCleanup(shutil.rmtree, where, True)
        path = os.path.join(where, "x.log")
        sink = FileLogSink(path, "text")
        sink.start()
        sink.stop()
        self.assertEqual(globalLogPublisher._observers, before)


class _FakeUDPReactor:
    """
    An C{IReactorUDP} that is not a posix reactor: C{listenUDP} records its arguments and
    connects the protocol, without a socket or a log line.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, int]] = []

    def listenUDP(  # noqa: N802
        self,
        port: int,
        protocol: Any,
        interface: str = "",
        maxPacketSize: int = 8192,  # noqa: N803
    ) -> object:
        self.calls.append((port, interface, maxPacketSize))
        listening = object()
        protocol.makeConnection(listening)
        return listening


def _quiet_legacy_msg(*message: str, **fields: Any) -> None:
    """
    C{twisted.python.log.msg} inside the log context a L{QuietUDPPort} sets.
    """
    legacy_log.callWithContext({QUIET_UDP_CONTEXT_KEY: True}, legacy_log.msg, *message, **fields)


class QuietUDPPortTests(unittest.TestCase):
    """
    L{QuietUDPPort}, L{listen_udp_quietly} and L{is_quiet_udp_port_line}: the per-port info
    lines of a routine UDP port (one per DNS query) stay out of netguard's logs, and nothing
    else does. The predicate reads the event alone: no state, no port numbers.
    """

    def capture(self) -> list[tuple[dict[str, Any], bool]]:
        """
        Every event of the global publisher, with the predicate's answer when it was logged.
        """
        seen: list[tuple[dict[str, Any], bool]] = []

        def observe(event: dict[str, Any]) -> None:
            seen.append((event, is_quiet_udp_port_line(event)))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return seen

    def observe_with(self, *observers: Any) -> None:
        for observer in observers:
            globalLogPublisher.addObserver(observer)
            self.addCleanup(globalLogPublisher.removeObserver, observer)

    def open_quiet(self) -> tuple[QuietUDPPort, MemoryReactorClock, DatagramProtocol]:
        """
        A L{QuietUDPPort} on a real loopback socket, driven by a fake reactor.
        """
        protocol = DatagramProtocol()
        reactor = MemoryReactorClock()
        port = QuietUDPPort(0, protocol, "127.0.0.1", 512, reactor)
        port.startListening()
        self.addCleanup(lambda: port.connected and port.connectionLost())
        self.assertEqual(reactor.readers, {port})
        return port, reactor, protocol

    def close_quiet(self, port: QuietUDPPort, reactor: MemoryReactorClock) -> None:
        """
        Stop C{port} as C{udp.Port.stopListening} does: its C{connectionLost} runs on the
        next reactor turn.
        """
        stopped = port.stopListening()
        reactor.advance(0)
        self.successResultOf(stopped)

    def test_quiet_port_lines_are_recognised_and_protocol_lines_never_logged(self) -> None:
        """
        A L{QuietUDPPort}'s C{starting on} and C{Closed} lines are recognised; its protocol's
        own C{Starting protocol} / C{Stopping protocol} lines are not logged at all.
        """
        seen = self.capture()
        port, reactor, protocol = self.open_quiet()
        number = port.getHost().port
        self.assertFalse(protocol.noisy)
        self.assertIs(protocol.transport, port)
        self.close_quiet(port, reactor)
        self.assertEqual(
            [(e["log_text"], quiet) for e, quiet in seen],
            [
                (f"DatagramProtocol starting on {number}", True),
                (f"(UDP Port {number} Closed)", True),
            ],
        )

    def test_what_the_stop_callbacks_log_is_not_marked(self) -> None:
        """
        The C{Deferred} that C{stopListening} returns fires after the quiet port closed,
        outside its log context: a line its callbacks log, even one identical to the
        port's own, is kept.
        """
        seen = self.capture()
        port, reactor, _protocol = self.open_quiet()
        number = port.getHost().port
        stopped = port.stopListening()
        stopped.addCallback(lambda _: legacy_log.msg(f"(UDP Port {number} Closed)"))
        reactor.advance(0)
        self.successResultOf(stopped)
        self.assertFalse(port.connected)
        self.assertEqual(
            [(e["log_text"], quiet) for e, quiet in seen],
            [
                (f"DatagramProtocol starting on {number}", True),
                (f"(UDP Port {number} Closed)", True),
                (f"(UDP Port {number} Closed)", False),
            ],
        )

    def test_the_two_forms_with_the_context_key_are_recognised(self) -> None:
        """
        Exactly the two texts, as plain legacy info messages logged inside the quiet
        context, are recognised, whatever the prefix and the number.
        """
        seen = self.capture()
        _quiet_legacy_msg("DNSDatagramProtocol starting on 0")
        _quiet_legacy_msg("Any prefix starting on 65535")
        _quiet_legacy_msg("(UDP Port 1 Closed)")
        _quiet_legacy_msg("(UDP Port 123456 Closed)")
        self.assertEqual([quiet for _e, quiet in seen], [True] * 4)

    def test_other_events_are_kept(self) -> None:
        """
        Everything else is kept: the two texts without the context key (an ordinary port),
        and, inside the quiet context, any other text, the texts with more or other
        characters, as an error, with two arguments, from the new logging API, or with
        another value of the key.
        """
        seen = self.capture()
        legacy_log.msg("DatagramProtocol starting on 40001")
        legacy_log.msg("(UDP Port 40001 Closed)")
        _quiet_legacy_msg("(UDP Port 40001 Closed)", isError=1)
        _quiet_legacy_msg("(UDP Port 40001 Closed) ")
        _quiet_legacy_msg(" (UDP Port 40001 Closed)")
        _quiet_legacy_msg("(UDP Port 040001x Closed)")
        _quiet_legacy_msg("(UDP Port  Closed)")
        _quiet_legacy_msg("(UDP Port \u0661 Closed)")
        _quiet_legacy_msg("(UDP Port 40001 Closed)", "more")
        _quiet_legacy_msg("(UDP Port 40001 Closed)\n(UDP Port 40001 Closed)")
        _quiet_legacy_msg("DatagramProtocol starting on x1")
        _quiet_legacy_msg("starting on 40001")
        _quiet_legacy_msg("forged\nDatagramProtocol starting on 40001")
        _quiet_legacy_msg("DatagramProtocol starting on 40001\n")
        _quiet_legacy_msg("Starting protocol <x>")
        _quiet_legacy_msg("Unexpected message (1)")
        Logger().info("(UDP Port 40001 Closed)", netguard_quiet_udp_port=True)
        legacy_log.callWithContext(
            {QUIET_UDP_CONTEXT_KEY: "yes"}, legacy_log.msg, "(UDP Port 1 Closed)"
        )
        self.assertEqual(len(seen), 18)
        self.assertEqual([quiet for _e, quiet in seen], [False] * 18)

    def test_answer_depends_on_the_event_alone(self) -> None:
        """
        The same event gets the same answer before a quiet port opens, while it is open and
        after it closed, whatever its number.
        """
        seen = self.capture()
        _quiet_legacy_msg("(UDP Port 7 Closed)")
        legacy_log.msg("(UDP Port 7 Closed)")
        [(quiet_event, _), (plain_event, _)] = seen
        answers = [(is_quiet_udp_port_line(quiet_event), is_quiet_udp_port_line(plain_event))]
        port, reactor, _protocol = self.open_quiet()
        number = port.getHost().port
        plain = f"(UDP Port {number} Closed)"
        legacy_log.msg(plain)
        answers.append((is_quiet_udp_port_line(quiet_event), is_quiet_udp_port_line(plain_event)))
        self.close_quiet(port, reactor)
        answers.append((is_quiet_udp_port_line(quiet_event), is_quiet_udp_port_line(plain_event)))
        self.assertEqual(answers, [(True, False)] * 3)
        self.assertEqual(
            [(e["log_text"], quiet) for e, quiet in seen[2:]],
            [
                (f"DatagramProtocol starting on {number}", True),
                (plain, False),
                (plain, True),
            ],
        )

    def test_netguard_observers_leave_out_only_quiet_lines(self) -> None:
        """
        Every netguard observer (text, JSON, the C{--logger} factories, the C{[log] file}
        sink's) writes every event except the quiet port's two lines.
        """
        streams = [io.StringIO() for _ in range(4)]
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        self.observe_with(
            safe_text_observer(streams[0]),
            json_observer(streams[1]),
            observer_for("text", streams[2]),
            observer_for("json", streams[3]),
            text_stdout_observer(),
            json_journal_observer(),
        )
        seen = self.capture()
        port, reactor, _protocol = self.open_quiet()
        number = port.getHost().port
        legacy_log.msg(f"(UDP Port {number} Closed)")
        Logger().info("kept", event="peer.fcrdns")
        self.close_quiet(port, reactor)
        self.assertEqual(len(seen), 4)
        outputs = [s.getvalue() for s in streams] + [stdout.getvalue()]
        for output in outputs:
            self.assertNotIn("starting on", output)
            self.assertIn("peer.fcrdns", output)
        self.assertEqual(
            [o.count(f"(UDP Port {number} Closed)") for o in outputs], [1, 1, 1, 1, 2]
        )
        self.assertEqual([len(o.splitlines()) for o in outputs], [2, 2, 2, 2, 4])

    def test_other_reactors_get_a_quiet_protocol(self) -> None:
        """
        On a reactor that is not a posix reactor (a test's fake), L{listen_udp_quietly} is
        its C{listenUDP} with the same arguments, the protocol's C{noisy} off.
        """
        protocol = DatagramProtocol()
        reactor = _FakeUDPReactor()
        listening = listen_udp_quietly(reactor, 0, protocol, "::", 512)
        self.assertEqual(reactor.calls, [(0, "::", 512)])
        self.assertIs(protocol.transport, listening)
        self.assertFalse(protocol.noisy)

    def test_real_udp_ports_of_others_keep_their_lines(self) -> None:
        """
        Over real loopback sockets: a quietly opened port leaves no line in netguard's text
        and JSON logs, while a port opened the ordinary way at the same time keeps all four
        of Twisted's lines.
        """
        from twisted.internet import reactor

        text, records = io.StringIO(), io.StringIO()
        self.observe_with(safe_text_observer(text), json_observer(records))
        seen = self.capture()
        quiet = listen_udp_quietly(reactor, 0, DatagramProtocol(), "127.0.0.1")
        self.assertIsInstance(quiet, QuietUDPPort)
        plain = reactor.listenUDP(0, DatagramProtocol(), "127.0.0.1")
        quiet_number, plain_number = quiet.getHost().port, plain.getHost().port
        stopped = [quiet.stopListening(), plain.stopListening()]

        def check(_: object) -> None:
            self.assertEqual(
                [e["log_text"] for e, quiet in seen if quiet],
                [
                    f"DatagramProtocol starting on {quiet_number}",
                    f"(UDP Port {quiet_number} Closed)",
                ],
            )
            written = text.getvalue()
            self.assertNotIn(f" {quiet_number}", written)
            self.assertIn(f"DatagramProtocol starting on {plain_number}", written)
            self.assertIn(f"(UDP Port {plain_number} Closed)", written)
            self.assertEqual(written.count("Starting protocol"), 1)
            self.assertEqual(written.count("Stopping protocol"), 1)
            self.assertEqual(len(written.splitlines()), 4)
            self.assertEqual(len(seen), 6)
            lines = [json.loads(line)["message"] for line in records.getvalue().splitlines()]
            self.assertEqual(lines, [line.split(" - - ", 1)[1] for line in written.splitlines()])

        return gatherResults(stopped).addCallback(check)

    def test_real_port_with_the_number_of_a_live_quiet_port_keeps_its_lines(self) -> None:
        """
        Over real loopback sockets: an ordinary port bound to another address with the same
        number as a quiet port, opened and closed while the quiet port is open, keeps all
        four of its lines, identical in text to the quiet port's.
        """
        from twisted.internet import reactor

        text = io.StringIO()
        self.observe_with(safe_text_observer(text))
        quiet = listen_udp_quietly(reactor, 0, DatagramProtocol(), "127.0.0.1")
        self.addCleanup(quiet.stopListening)
        number = quiet.getHost().port
        plain = reactor.listenUDP(number, DatagramProtocol(), "127.0.0.2")

        def check(_: object) -> None:
            written = text.getvalue()
            self.assertEqual(written.count(f"DatagramProtocol starting on {number}"), 1)
            self.assertEqual(written.count(f"(UDP Port {number} Closed)"), 1)
            self.assertEqual(written.count("Starting protocol"), 1)
            self.assertEqual(written.count("Stopping protocol"), 1)
            self.assertEqual(len(written.splitlines()), 4)

        return plain.stopListening().addCallback(check)

    def test_real_port_reusing_the_number_of_a_closed_quiet_port_keeps_its_lines(self) -> None:
        """
        Over real loopback sockets: after a quiet port closed, an ordinary port opened on
        the same address and number keeps all four of its lines.
        """
        from twisted.internet import reactor

        text = io.StringIO()
        self.observe_with(safe_text_observer(text))
        quiet = listen_udp_quietly(reactor, 0, DatagramProtocol(), "127.0.0.1")
        number = quiet.getHost().port

        def reopen(_: object) -> Any:
            self.assertEqual(text.getvalue(), "")
            plain = reactor.listenUDP(number, DatagramProtocol(), "127.0.0.1")
            return plain.stopListening()

        def check(_: object) -> None:
            written = text.getvalue()
            self.assertEqual(written.count(f"DatagramProtocol starting on {number}"), 1)
            self.assertEqual(written.count(f"(UDP Port {number} Closed)"), 1)
            self.assertEqual(len(written.splitlines()), 4)

        return quiet.stopListening().addCallback(reopen).addCallback(check)


def reference_escape(value: object, limit: int) -> str:
    """
    L{escape} as C{docs/logging.md} section 4 states it, one byte at a time: printable ASCII
    but the backslash kept, the backslash doubled, CR LF TAB NUL named, every other byte
    C{\\xNN}; text UTF-8 encoded first (C{surrogateescape} bytes as themselves, other lone
    surrogates as their 3 bytes); more than C{limit} bytes cut with C{...(+N bytes)}.
    """
    if value is None:
        return "-"
    if isinstance(value, bytes):
        raw = value
    else:
        text = value if isinstance(value, str) else str(value)
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")
    named = {0x5C: "\\\\", 0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t", 0x00: "\\0"}
    out = ""
    for byte in raw[:limit]:
        if byte in named:
            out += named[byte]
        elif 0x20 <= byte <= 0x7E:
            out += chr(byte)
        else:
            out += f"\\x{byte:02x}"
    if len(raw) > limit:
        out += f"...(+{len(raw) - limit} bytes)"
    return out


def reference_rendered_line(text: str) -> str:
    """
    The text observer's second pass as C{docs/logging.md} states it: the final newline
    dropped, every character but printable ASCII escaped as L{escape} shows it, one newline
    added.
    """
    body = text[:-1] if text.endswith("\n") else text
    return "".join(c if 0x20 <= ord(c) <= 0x7E else reference_escape(c, 8) for c in body) + "\n"


#: Bytes at the edges of the printable range and of the fast path's table, weighted in.
_EDGE_BYTES = [0x00, 0x09, 0x0A, 0x0D, 0x1F, 0x20, 0x41, 0x5B, 0x5C, 0x5D, 0x7E, 0x7F, 0x80, 0xFF]

#: Characters at the same edges, with non-ASCII printable letters, C1 controls, separators,
#: a C{surrogateescape} byte and a lone surrogate.
_EDGE_CHARS = "\x00\t\n\r\x1f ~\x7f\\A\x80\x85\xa0\xe9\u2028\u4e2d\U0001f600\udc80\udcff\ud800"

_edge_bytes = st.lists(st.sampled_from(_EDGE_BYTES), max_size=40).map(bytes)
_any_bytes = st.one_of(st.binary(max_size=300), _edge_bytes)
_any_text = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40),
    st.text(alphabet=st.sampled_from(_EDGE_CHARS), max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
)


class _RecordingPrintable(frozenset[int]):
    """
    The set of bytes C{escape}'s per-byte loop looks each byte up in, counting lookups.
    """

    lookups = 0

    def __contains__(self, item: object) -> bool:
        type(self).lookups += 1
        return super().__contains__(item)


class EscapeFastPathTests(unittest.TestCase):
    """
    L{escape}'s printable-ASCII fast path gives exactly what the per-byte rules give, for
    any input and limit, and is the path taken for printable ASCII.
    """

    @settings(max_examples=500, deadline=None)
    @given(st.one_of(_any_bytes, _any_text), st.integers(min_value=0, max_value=320))
    def test_same_as_the_documented_rules(self, value: bytes | str, limit: int) -> None:
        """
        For arbitrary bytes or text (edge bytes 0x1f, 0x20, 0x7e, 0x7f, the backslash,
        non-ASCII, surrogates weighted in) and any limit, L{escape} equals the byte-by-byte
        reference written from the documented rules, truncation marker included.
        """
        self.assertEqual(escape(value, limit=limit), reference_escape(value, limit))

    def test_each_single_byte(self) -> None:
        """
        Every one of the 256 bytes alone, and just before and after a printable run, is
        escaped as the rules say (the fast path's table lets exactly 0x20-0x7e but 0x5c
        through).
        """
        for byte in range(256):
            for raw in (bytes([byte]), b"ab" + bytes([byte]), bytes([byte]) + b"yz"):
                self.assertEqual(escape(raw), reference_escape(raw, DEFAULT_FIELD_LIMIT), raw)

    def test_limit_cuts_a_printable_value_at_the_boundary(self) -> None:
        """
        Printable ASCII of exactly C{limit} bytes has no marker; one byte more is cut with
        C{...(+1 bytes)}; a control byte just past the limit is not shown at all.
        """
        self.assertEqual(escape("a" * 10, limit=10), "a" * 10)
        self.assertEqual(escape("a" * 11, limit=10), "a" * 10 + "...(+1 bytes)")
        self.assertEqual(escape(b"a" * 10 + b"\x1b", limit=10), "a" * 10 + "...(+1 bytes)")

    def test_printable_ascii_skips_the_per_byte_loop(self) -> None:
        """
        Printable ASCII (bytes or text, even cut at the limit, and whatever follows the
        limit) never goes through the per-byte loop: no byte is looked up in its table.
        """
        self.patch(log_module, "_PRINTABLE", _RecordingPrintable(log_module._PRINTABLE))
        self.patch(_RecordingPrintable, "lookups", 0)
        every_printable = bytes(b for b in range(0x20, 0x7F) if b != 0x5C)
        self.assertEqual(escape(every_printable), every_printable.decode())
        self.assertEqual(
            escape(every_printable.decode(), limit=10),
            escape(every_printable[:10]) + "...(+84 bytes)",
        )
        self.assertEqual(escape(12345), "12345")
        self.assertEqual(escape(b"a" * 10 + b"\x1b\n", limit=10), "a" * 10 + "...(+2 bytes)")
        self.assertEqual(_RecordingPrintable.lookups, 0)

    def test_other_input_takes_the_per_byte_loop(self) -> None:
        """
        The control for the test above: a backslash, a DEL, a 0x1f or a non-ASCII letter
        within the limit sends the value through the per-byte loop (each byte looked up).
        """
        self.patch(log_module, "_PRINTABLE", _RecordingPrintable(log_module._PRINTABLE))
        for value in ("ab\\", b"ab\x7f", b"\x1fab", "ab\u00e9"):
            self.patch(_RecordingPrintable, "lookups", 0)
            self.assertEqual(escape(value), reference_escape(value, DEFAULT_FIELD_LIMIT))
            self.assertGreater(_RecordingPrintable.lookups, 0, value)


def _genexpr_calls(function: Any, *args: Any) -> int:
    """
    Call C{function(*args)} under a profiler and count how many generator expressions of
    C{netguard/log.py} it started (the rendered-line check's per-character loop is one).
    """
    started = 0
    log_file = log_module.__file__

    def profile(frame: Any, kind: str, arg: object) -> None:
        nonlocal started
        code = frame.f_code
        if kind == "call" and code.co_name == "<genexpr>" and code.co_filename == log_file:
            started += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        function(*args)
    finally:
        sys.setprofile(previous)
    return started


class RenderedLineFastPathTests(unittest.TestCase):
    """
    The text observer's second pass over the whole line (C{_escape_rendered_line}): its
    printable-ASCII fast path gives what the per-character rule gives, and is taken.
    """

    @settings(max_examples=500, deadline=None)
    @given(st.one_of(_any_text, _any_text.map(lambda text: text + "\n")))
    def test_same_as_the_documented_rule(self, text: str) -> None:
        """
        For arbitrary text (edge characters 0x1f, 0x20, 0x7e, 0x7f, the backslash,
        non-ASCII printable letters, separators, surrogates weighted in; with or without a
        final newline), the line equals the per-character reference.
        """
        self.assertEqual(log_module._escape_rendered_line(text), reference_rendered_line(text))

    def test_edge_characters_one_by_one(self) -> None:
        """
        Each edge character alone and amid printable text: only 0x20-0x7e (the backslash
        included, unlike L{escape}) is kept.
        """
        for char in _EDGE_CHARS:
            for text in (char, f"a{char}b", f"a{char}b\n"):
                self.assertEqual(
                    log_module._escape_rendered_line(text), reference_rendered_line(text), text
                )

    def test_printable_ascii_skips_the_per_character_loop(self) -> None:
        """
        A printable-ASCII line (a backslash, a space, a tilde in it; with or without its
        newline) starts no per-character loop, and comes back unchanged with one newline.
        """
        line = "2026-05-01T10:00:00+0000 [a#info] e c x\\y ~ \\x1b"
        self.assertEqual(_genexpr_calls(log_module._escape_rendered_line, line), 0)
        self.assertEqual(_genexpr_calls(log_module._escape_rendered_line, line + "\n"), 0)
        self.assertEqual(log_module._escape_rendered_line(line + "\n"), line + "\n")

    def test_other_lines_take_the_per_character_loop(self) -> None:
        """
        The control for the test above (the profiler does see the loop): a 0x1f, a DEL, a
        non-ASCII printable letter or an inner newline sends the line through it.
        """
        for line in ("a\x1fb", "a\x7fb", "caf\u00e9", "a\nb\n"):
            self.assertGreater(_genexpr_calls(log_module._escape_rendered_line, line), 0, line)


#: A second in 2026, and the same second plus microseconds that round up to the next one.
_SECOND = 1_780_000_000
_ROUNDS_UP = _SECOND + 0.9999996


class _CountingFormatTime:
    """
    Twisted's L{formatTime}, counting its calls (patched in where C{netguard.log} looks it
    up; L{format_text}'s default keeps the real one, for the reference lines).
    """

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, when: Any) -> str:
        self.calls += 1
        return formatTime(when)


def _event(when: Any, number: int = 0) -> dict[str, Any]:
    """
    An info event at C{when}, as L{Logger} would emit it.
    """
    return {
        "log_format": "event {number}",
        "number": number,
        "log_time": when,
        "log_namespace": "tests.test_log",
        "log_level": LogLevel.info,
        "event": "x.y",
        "conn_id": "1-1",
    }


class PerSecondTimeTests(unittest.TestCase):
    """
    The text observers format the time once per second and reuse the text, writing lines
    byte-identical to those formatted with Twisted's L{formatTime} for every event.
    """

    def setUp(self) -> None:
        self.counting = _CountingFormatTime()
        self.patch(log_module, "formatTime", self.counting)

    def observe(self, observer_out: io.StringIO, times: list[Any]) -> list[str]:
        """
        Send one event per time to a fresh L{safe_text_observer} writing to C{observer_out}.

        @return: the lines it wrote.
        """
        observer = safe_text_observer(observer_out)
        for number, when in enumerate(times):
            observer(_event(when, number))
        return observer_out.getvalue().splitlines(keepends=True)

    def assert_lines_as_twisted_formats_them(self, times: list[Any], lines: list[str]) -> None:
        """
        Each line is what L{format_text} with Twisted's own L{formatTime} writes.
        """
        self.assertEqual(len(lines), len(times))
        for number, (when, line) in enumerate(zip(times, lines, strict=True)):
            self.assertEqual(line, format_text(_event(when, number)), when)
            self.assertTrue(line.startswith(formatTime(when) + " ["), (when, line))

    def test_events_within_one_second_format_the_time_once(self) -> None:
        """
        Five events within one second format the time once; the next second once more.
        """
        times = [_SECOND + f for f in (0.0, 0.1, 0.5, 0.75, 0.999)]
        lines = self.observe(io.StringIO(), times)
        self.assertEqual(self.counting.calls, 1)
        self.assert_lines_as_twisted_formats_them(times, lines)
        self.assertEqual(len(set(line.split(" ")[0] for line in lines)), 1)

    def test_across_a_second_boundary(self) -> None:
        """
        Events either side of a second boundary (the last time Twisted still shows in the
        second before, the boundary itself, and back again) each show their own second.
        """
        before = _SECOND + 0.9999994
        times = [_SECOND + 0.5, before, _SECOND + 1.0, _SECOND + 1.25, _SECOND + 0.5, _SECOND + 2]
        lines = self.observe(io.StringIO(), times)
        self.assert_lines_as_twisted_formats_them(times, lines)
        self.assertNotEqual(lines[1].split(" ")[0], lines[2].split(" ")[0])
        self.assertEqual(self.counting.calls, 5)

    def test_microseconds_that_round_up_are_formatted_afresh(self) -> None:
        """
        After an event at x.0, an event at x.9999996 (which Twisted shows as second x+1,
        its microseconds rounding up) shows x+1, not the kept text of x; so do the exact
        rounding edge x.9999995 and a time just under it.
        """
        self.assertEqual(formatTime(_ROUNDS_UP), formatTime(_SECOND + 1))  # the premise
        self.assertNotEqual(formatTime(_ROUNDS_UP), formatTime(_SECOND))
        times = [_SECOND, _ROUNDS_UP, _SECOND + 0.1, _SECOND + 0.9999995, _SECOND + 0.9999994]
        lines = self.observe(io.StringIO(), times)
        self.assert_lines_as_twisted_formats_them(times, lines)

    def test_times_that_are_not_a_plain_second(self) -> None:
        """
        An int time, a negative time, a missing time and a non-finite time give what
        Twisted gives (or the same C{log.unformattable} line), whatever was kept before.
        """
        times: list[Any] = [_SECOND, _SECOND + 0.5, -0.5, 0, -1, None, _SECOND + 0.2, 0, -1]
        lines = self.observe(io.StringIO(), times)
        self.assert_lines_as_twisted_formats_them(times, lines)
        for when in (float("nan"), float("inf")):
            out = io.StringIO()
            safe_text_observer(out)(_event(_SECOND))
            safe_text_observer(out)(_event(when))
            self.assertEqual(
                out.getvalue().splitlines(keepends=True)[1], format_text(_event(when))
            )

    @settings(max_examples=300, deadline=None)
    @given(
        st.integers(min_value=0, max_value=2**32),
        st.lists(
            st.tuples(
                st.integers(min_value=-1, max_value=2),
                st.one_of(
                    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
                    st.sampled_from([0.0, 0.5, 0.999999, 0.9999994, 0.9999995, 0.9999996]),
                ),
                st.booleans(),
            ),
            max_size=12,
        ),
    )
    def test_any_sequence_of_times(self, base: int, steps: list[tuple[int, float, bool]]) -> None:
        """
        For any sequence of times within a few seconds of each other (forwards, backwards,
        ints and floats, near every rounding edge), one observer's time text equals
        Twisted's L{formatTime} for each.
        """
        format_time = log_module._PerSecondTime()
        for offset, fraction, whole in steps:
            when: float | int = base + offset if whole else base + offset + fraction
            self.assertEqual(format_time(when), formatTime(when), when)

    def test_with_a_logger_on_a_fake_clock(self) -> None:
        """
        Events of a real L{Logger} whose clock is a fake one, set by hand within a second,
        onto a rounding edge and into the next seconds: the lines are Twisted's, and the
        time is formatted once for the first second, then for each edge and new second.
        """
        now = [float(_SECOND)]
        self.patch(twisted_logger_module, "time", lambda: now[0])
        publisher = LogPublisher()
        out, events = io.StringIO(), list[dict[str, Any]]()
        publisher.addObserver(safe_text_observer(out))  # type: ignore[arg-type]
        publisher.addObserver(events.append)  # type: ignore[arg-type]
        logger = Logger(namespace="tests.test_log", observer=publisher)  # type: ignore[arg-type]
        times = [_SECOND, _SECOND + 0.3, _SECOND + 0.6, _ROUNDS_UP, _SECOND + 1.4, _ROUNDS_UP + 1]
        for when in times:
            now[0] = when
            logger.info("at {when}", when=when, event="x.y")
        self.assertEqual([event["log_time"] for event in events], times)
        lines = out.getvalue().splitlines(keepends=True)
        self.assertEqual(lines, [format_text(event) for event in events])
        self.assertEqual(self.counting.calls, 4)

    def test_the_kept_text_is_each_observers_own(self) -> None:
        """
        Two observers keep their own second: the second observer formats a second the
        first already formatted, and each then reuses its own text; the factories for
        C{twistd --logger} each get their own too.
        """
        first_out, second_out = io.StringIO(), io.StringIO()
        first, second = safe_text_observer(first_out), safe_text_observer(second_out)
        first(_event(_SECOND + 0.1))
        second(_event(_SECOND + 0.2))
        self.assertEqual(self.counting.calls, 2)
        first(_event(_SECOND + 0.3))
        second(_event(_SECOND + 0.4))
        self.assertEqual(self.counting.calls, 2)
        self.patch(sys, "stdout", io.StringIO())
        for factory in (text_stdout_observer, text_stdout_observer, text_journal_observer):
            factory()(_event(_SECOND + 0.5))
        self.assertEqual(self.counting.calls, 5)

    def test_a_kept_second_does_not_cross_a_time_zone_change(self) -> None:
        """
        In a zone with daylight saving time, events either side of the switch show their
        own UTC offset, exactly as Twisted shows them.
        """
        previous = os.environ.get("TZ")

        def restore() -> None:
            if previous is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = previous
            time.tzset()

        self.addCleanup(restore)
        os.environ["TZ"] = "EST5EDT,M3.2.0,M11.1.0"
        time.tzset()
        switch = calendar.timegm((2026, 3, 8, 7, 0, 0, 0, 0, 0))  # 02:00 EST
        times = [switch - 1.5, switch - 0.5, switch, switch + 0.5]
        lines = self.observe(io.StringIO(), times)
        self.assert_lines_as_twisted_formats_them(times, lines)
        self.assertEqual(
            [line.split(" ")[0][-5:] for line in lines], ["-0500", "-0500", "-0400", "-0400"]
        )


_FIELD_NAMES = ("peer", "why", "n", "duration")
_FIELD_VALUES = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=6),
    st.none(),
)


@st.composite
def _formats(draw: Any) -> str:
    """
    Format strings of literal text (braces escaped) and plain-name fields with optional
    conversions and specs, some of which do not fit their value.
    """
    pieces = []
    for _ in range(draw(st.integers(0, 4))):
        text = draw(st.text(max_size=6)).replace("{", "{{").replace("}", "}}")
        name = draw(st.sampled_from(_FIELD_NAMES))
        conversion = draw(st.sampled_from(["", "!r", "!s", "!a"]))
        spec = draw(st.sampled_from(["", ":.3f", ":>5", ":d", ":x", ":s"]))
        pieces.append(f"{text}{{{name}{conversion}{spec}}}")
    pieces.append(draw(st.text(max_size=6)).replace("{", "{{").replace("}", "}}"))
    return "".join(pieces)


class MessageRenderingTests(unittest.TestCase):
    """
    The text observer renders messages without Twisted's per-field wrappers when it can;
    the text must be exactly what Twisted's C{eventAsText} writes.
    """

    def twisted_text(self, event: dict[str, Any]) -> str:
        return eventAsText(dict(event), includeTimestamp=False, includeSystem=False)

    @given(
        _formats(),
        st.dictionaries(st.sampled_from(_FIELD_NAMES), _FIELD_VALUES, max_size=4),
    )
    @settings(max_examples=400, deadline=None)
    def test_same_text_as_twisted(self, log_format: str, fields: dict[str, Any]) -> None:
        """
        For any format of plain-name fields and any values (missing keys, specs that do not
        fit the value, NaN, bytes, non-ASCII text), the message is Twisted's, byte for byte.
        """
        event = {"log_format": log_format, "log_level": LogLevel.info, **fields}
        self.assertEqual(log_module._message(event), self.twisted_text(event))

    def test_formats_left_to_twisted(self) -> None:
        """
        Calls, attribute and index access, positional and nested fields, malformed formats,
        flattened events, bytes formats and failures are rendered by Twisted itself.
        """

        class Thing:
            size = 3

            def __str__(self) -> str:
                return "thing"

        events = [
            {"log_format": "{f()}", "f": lambda: "called"},
            {"log_format": "{thing.size}", "thing": Thing()},
            {"log_format": "{items[1]}", "items": ["a", "b"]},
            {"log_format": "{} {0}"},
            {"log_format": "{n:{width}}", "n": 5, "width": 4},
            {"log_format": "unclosed {brace"},
            {"log_format": b"bytes {n}", "n": 1},
            {"log_format": "{n}", "n": 2, "log_flattened": {"n!:": "2"}},
            {"log_format": "{thing}", "thing": Thing()},
            {"log_format": None},
            {},
        ]
        for event in events:
            with self.subTest(event=event):
                self.assertEqual(log_module._message(event), self.twisted_text(event))
        for fast in ({"log_format": "{n}", "n": 7}, {"log_format": "x{{y}}"}):
            self.assertIsNotNone(log_module._simple_format(fast["log_format"]))
        for slow in ("{f()}", "{a.b}", "{a[0]}", "{}", "{n:{w}}", "{n!z}", "{"):
            self.assertIsNone(log_module._simple_format(slow))

    def test_failure_keeps_its_traceback(self) -> None:
        """
        A C{log.failure} event keeps its traceback on the rendered line.
        """
        failure = Failure(ZeroDivisionError("division by zero"))
        event = {"log_format": "boom {n}", "n": 1, "log_failure": failure}
        text = log_module._message(event)
        self.assertEqual(text, self.twisted_text(event))
        self.assertIn("ZeroDivisionError", text)

"""
Tests for L{netguard.events}: the catalogue L{EVENTS} against the source (every emitted name
is in it, every name in it is emitted), against C{docs/logging.md} section 6 (names both
ways, and levels), the shape of the names, and the txaio side: L{register_with_txaio} makes
txaio give a C{log_category} event the catalogue's text, and L{event_logger}'s events reach
Twisted observers and netguard's own.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import txaio
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from netguard.events import EVENTS, describe_events, event_logger, register_with_txaio
from netguard.log import format_json, format_text

_ROOT = Path(__file__).resolve().parent.parent

_DOC = _ROOT / "docs" / "logging.md"

#: C{event="name"} (or C{'name'}) anywhere in the source text.
_EVENT_LITERAL = re.compile(r"""\bevent\s*=\s*(?P<quote>["'])(?P<name>[^"'\n]*)(?P=quote)""")

#: C{area.what}: lower case, dotted, at least two parts.
_NAME_SHAPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")

#: Names without a dot, kept because names are never renamed (docs/logging.md, top).
_UNDOTTED = frozenset({"heartbeat"})

#: The level of an event logged by each C{twisted.logger.Logger} method.
_METHOD_LEVELS = {
    "debug": "debug",
    "info": "info",
    "warn": "warn",
    "error": "error",
    "critical": "critical",
    "failure": "critical",
}


def _source_files() -> list[Path]:
    """
    The files whose events the catalogue covers.
    """
    return sorted((_ROOT / "netguard").rglob("*.py")) + sorted(
        (_ROOT / "twisted" / "plugins").glob("*.py")
    )


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(_ROOT)}:{line}"


def _literal_names() -> dict[str, list[str]]:
    """
    Every C{event="..."} literal of the source text (docstrings included), by the regex.

    @return: name -> the places (C{file:line}) it is written.
    """
    found: dict[str, list[str]] = {}
    for path in _source_files():
        text = path.read_text(encoding="utf-8")
        for match in _EVENT_LITERAL.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.setdefault(match.group("name"), []).append(_where(path, line))
    return found


@attrs.frozen
class _Emission:
    """
    One event name a call site can emit.

    @ivar name: the event name.
    @ivar where: C{file:line} of the logger call (or of the record written by an observer).
    @ivar level: the level the call logs at, or L{None} if not known from the source.
    @ivar literal: whether the name is written as C{event="name"} (not computed).
    """

    name: str
    where: str
    level: str | None
    literal: bool


def _strings(node: ast.AST) -> list[str]:
    return [
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def _call_level(call: ast.Call) -> str | None:
    """
    The level a C{twisted.logger.Logger} call logs at, from its method and C{level=}.
    """
    func = call.func
    if not isinstance(func, ast.Attribute):
        return None
    if func.attr == "emit" and call.args:
        first = call.args[0]
        return first.attr if isinstance(first, ast.Attribute) else None
    level = _METHOD_LEVELS.get(func.attr)
    for keyword in call.keywords:
        if func.attr == "failure" and keyword.arg == "level":
            value = keyword.value
            level = value.attr if isinstance(value, ast.Attribute) else None
    return level


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _argument(call: ast.Call, function: ast.FunctionDef, parameter: str) -> ast.AST | None:
    """
    The expression a call passes for one parameter of C{function}, or L{None}.
    """
    for keyword in call.keywords:
        if keyword.arg == parameter:
            return keyword.value
    names = [a.arg for a in function.args.posonlyargs + function.args.args]
    index = names.index(parameter)
    if names and names[0] in ("self", "cls") and isinstance(call.func, ast.Attribute):
        index -= 1
    return call.args[index] if 0 <= index < len(call.args) else None


def run_fresh(case: unittest.TestCase, program: str) -> subprocess.CompletedProcess[str]:
    """
    Run C{program} in a fresh interpreter from the source tree; it must succeed.
    """
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    case.assertEqual(done.returncode, 0, done.stderr)
    return done


class _EventVisitor(ast.NodeVisitor):
    """
    Collects the C{event=} arguments of one module, with the function each is in.
    """

    def __init__(self) -> None:
        self.functions: list[ast.FunctionDef] = []
        self.direct: list[tuple[ast.Call, ast.expr]] = []
        self.through_parameter: list[tuple[ast.Call, ast.FunctionDef, str]] = []
        self.unresolved: list[ast.Call] = []
        self.records: list[ast.Dict] = []
        self.calls: list[ast.Call] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.functions.append(node)
        self.generic_visit(node)
        self.functions.pop()

    def visit_Call(self, node: ast.Call) -> None:
        self.calls.append(node)
        for keyword in node.keywords:
            if keyword.arg != "event":
                continue
            value = keyword.value
            parameters = {a.arg for a in self.functions[-1].args.args} if self.functions else set()
            if _strings(value):
                self.direct.append((node, value))
            elif isinstance(value, ast.Name) and value.id in parameters:
                self.through_parameter.append((node, self.functions[-1], value.id))
            else:
                self.unresolved.append(node)
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        if any(isinstance(k, ast.Constant) and k.value == "event" for k in node.keys):
            self.records.append(node)
        self.generic_visit(node)


@attrs.frozen
class _Scan:
    """
    What the AST scan of the source found.

    @ivar emissions: every name a call site or observer can emit.
    @ivar unresolved: C{file:line} of C{event=} arguments whose names the scan cannot see.
    """

    emissions: tuple[_Emission, ...]
    unresolved: tuple[str, ...]


def _scan() -> _Scan:
    """
    Every event name the code can emit, found in the syntax tree: the string constants of
    each C{event=} argument (so C{"heartbeat.on" if on else "heartbeat.off"} gives both);
    for C{event=<parameter>}, the strings passed for that parameter where the function is
    called (C{_log_loaded("tls.loaded")}); and the C{"event"} of records written as dicts
    (the observers' C{log.unformattable}).
    """
    visitors: list[tuple[Path, _EventVisitor]] = []
    for path in _source_files():
        visitor = _EventVisitor()
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        visitors.append((path, visitor))
    all_calls = [(path, call) for path, v in visitors for call in v.calls]
    emissions: list[_Emission] = []
    unresolved: list[str] = []
    for path, visitor in visitors:
        for call, value in visitor.direct:
            literal = isinstance(value, ast.Constant)
            for name in _strings(value):
                emissions.append(
                    _Emission(name, _where(path, call.lineno), _call_level(call), literal)
                )
        for call, function, parameter in visitor.through_parameter:
            names: list[tuple[str, str]] = []
            for caller_path, caller in all_calls:
                if _called_name(caller) != function.name:
                    continue
                argument = _argument(caller, function, parameter)
                if argument is not None:
                    names.extend(
                        (n, _where(caller_path, caller.lineno)) for n in _strings(argument)
                    )
            if not names:
                unresolved.append(_where(path, call.lineno))
            emissions.extend(_Emission(n, where, _call_level(call), False) for n, where in names)
        for record in visitor.records:
            for key, value in zip(record.keys, record.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "event":
                    for name in _strings(value):
                        emissions.append(_Emission(name, _where(path, record.lineno), None, False))
        unresolved.extend(_where(path, call.lineno) for call in visitor.unresolved)
    return _Scan(tuple(emissions), tuple(unresolved))


@attrs.frozen
class _DocRow:
    """
    One row of a table of C{docs/logging.md} section 6.
    """

    names: tuple[str, ...]
    level: str
    line: int


def _documented() -> list[_DocRow]:
    """
    The rows of the event tables of C{docs/logging.md} section 6: the names in the first
    column (C{`tls.loaded`, `tls.reloaded`} is two), the level in the second.
    """
    rows = []
    inside = False
    for number, line in enumerate(_DOC.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("## "):
            inside = line.startswith("## 6.")
            continue
        if inside and line.startswith("| `"):
            cells = [cell.strip() for cell in line.split("|")]
            rows.append(_DocRow(tuple(re.findall(r"`([^`]+)`", cells[1])), cells[2], number))
    return rows


class CatalogueAgainstSourceTests(unittest.TestCase):
    """
    L{EVENTS} holds exactly the names the code emits.
    """

    def test_scanned_files(self) -> None:
        """
        The scan reads the modules of C{netguard/} (subpackages included) and the plugins.
        """
        names = {str(path.relative_to(_ROOT)) for path in _source_files()}
        self.assertIn("netguard/gateway/protocol.py", names)
        self.assertIn("netguard/ops/heartbeat.py", names)
        self.assertIn("twisted/plugins/netguard_plugin.py", names)

    def test_every_literal_is_catalogued(self) -> None:
        """
        Every C{event="..."} literal of the source text (found by the regex) is a key of
        L{EVENTS}.
        """
        literals = _literal_names()
        self.assertIn("conn.reject", literals)
        missing = {name: places for name, places in literals.items() if name not in EVENTS}
        self.assertEqual(missing, {}, "emitted but not in netguard.events.EVENTS")

    def test_every_computed_name_is_catalogued(self) -> None:
        """
        Names the regex cannot see as C{event="..."} (a conditional, a name passed through a
        parameter, the observers' own record) are keys of L{EVENTS} too.
        """
        emitted = {e.name: e.where for e in _scan().emissions}
        for computed in ("heartbeat.off", "tls.loaded", "tls.reloaded", "log.unformattable"):
            self.assertIn(computed, emitted)
        missing = {name: where for name, where in emitted.items() if name not in EVENTS}
        self.assertEqual(missing, {}, "emitted but not in netguard.events.EVENTS")

    def test_every_event_argument_is_visible(self) -> None:
        """
        Every C{event=} argument is a string, an expression of strings, or a parameter whose
        callers pass strings: no name is computed where the scan (and a reader) cannot see it.
        """
        self.assertEqual(_scan().unresolved, ())

    def test_scanners_agree(self) -> None:
        """
        The regex and the syntax tree find the same plain literals: a name mentioned as
        C{event="..."} in a docstring is one the code emits, and the regex misses no literal.
        """
        literals = set(_literal_names())
        emitted = {e.name for e in _scan().emissions}
        self.assertEqual(literals - emitted, set())
        plain = {e.name for e in _scan().emissions if e.literal}
        self.assertEqual(plain - literals, set())

    def test_no_dead_names(self) -> None:
        """
        Every key of L{EVENTS} is emitted somewhere.
        """
        emitted = {e.name for e in _scan().emissions}
        self.assertEqual(set(EVENTS) - emitted, set(), "in EVENTS but never emitted")


class CatalogueAgainstDocsTests(unittest.TestCase):
    """
    L{EVENTS} and the tables of C{docs/logging.md} section 6 list the same names, at the
    levels the code logs them.
    """

    def test_section_found(self) -> None:
        """
        Section 6 has rows (a renamed heading would make the other tests vacuous).
        """
        self.assertGreater(len(_documented()), 40)

    def test_every_name_documented(self) -> None:
        """
        Every key of L{EVENTS} has a row in section 6.
        """
        documented = {name for row in _documented() for name in row.names}
        self.assertEqual(sorted(set(EVENTS) - documented), [])

    def test_every_documented_name_catalogued(self) -> None:
        """
        Every name in the first column of section 6 is a key of L{EVENTS}.
        """
        stray = {
            name: f"docs/logging.md:{row.line}"
            for row in _documented()
            for name in row.names
            if name not in EVENTS
        }
        self.assertEqual(stray, {})

    def test_documented_levels(self) -> None:
        """
        The level column of section 6 is the level of every call site of that name
        (C{failure} logs at critical).
        """
        documented = {name: row.level for row in _documented() for name in row.names}
        wrong = {
            e.where: f"{e.name}: code {e.level}, docs {documented.get(e.name)}"
            for e in _scan().emissions
            if e.level is not None and documented.get(e.name) != e.level
        }
        self.assertEqual(wrong, {})


class NameTests(unittest.TestCase):
    """
    The names and descriptions of L{EVENTS}.
    """

    def test_names_are_area_what(self) -> None:
        """
        Every name is lower case and dotted (C{area.what}, more levels allowed), except the
        one old undotted name, C{heartbeat}.
        """
        odd = {name for name in EVENTS if not _NAME_SHAPE.match(name)}
        self.assertEqual(odd, _UNDOTTED)

    def test_shape_rejects_bad_names(self) -> None:
        """
        The pattern refuses upper case, no dot, empty parts and dashes.
        """
        for bad in ("Conn.accept", "conn", "conn..x", ".conn", "conn.", "conn.x-y", "AR123"):
            self.assertIsNone(_NAME_SHAPE.match(bad), bad)
        for good in ("conn.accept", "peer.check.error", "heartbeat.sigusr1_replaced"):
            self.assertIsNotNone(_NAME_SHAPE.match(good), good)

    def test_descriptions_are_one_plain_line(self) -> None:
        """
        Each description is one non-empty line with no C{{field}}: rendered as a message it
        is itself, whatever the event's fields.
        """
        for name, text in EVENTS.items():
            self.assertTrue(text.strip(), name)
            self.assertNotIn("\n", text, name)
            self.assertNotIn("{", text, name)
            self.assertNotIn("}", text, name)
            event = {"log_format": text, "peer": "x", "reason": "y"}
            self.assertEqual(formatEvent(event), text)

    def test_read_only(self) -> None:
        """
        L{EVENTS} cannot be changed.
        """
        with self.assertRaises(TypeError):
            EVENTS["conn.accept"] = "changed"  # type: ignore[index]


def _collector() -> tuple[list[dict[str, Any]], Any]:
    events: list[dict[str, Any]] = []
    return events, events.append


class RegisterWithTxaioTests(unittest.TestCase):
    """
    L{register_with_txaio} makes txaio take a C{log_category} event's message from
    L{EVENTS}.
    """

    def test_txaio_logger_uses_catalogue_text(self) -> None:
        """
        After registering, any txaio logger (not only L{event_logger}'s) replaces the
        message of a C{log_category} call with the catalogue's description; the fields stay.
        """
        register_with_txaio()
        events, observer = _collector()
        log = txaio.make_logger(observer=observer)  # type: ignore[attr-defined]
        log.info("the caller's own text", log_category="conn.reject", peer="192.0.2.7:1")
        [event] = events
        self.assertEqual(event["log_format"], EVENTS["conn.reject"])
        self.assertEqual(formatEvent(event), EVENTS["conn.reject"])
        self.assertEqual(event["peer"], "192.0.2.7:1")

    def test_idempotent_and_keeps_other_categories(self) -> None:
        """
        Registering twice gives the same table, and a category another library registered
        stays.
        """
        register_with_txaio()
        txaio.add_log_categories(  # type: ignore[attr-defined]
            {"tests.test_events.foreign": "a foreign category"}
        )
        register_with_txaio()
        register_with_txaio()
        events, observer = _collector()
        log = txaio.make_logger(observer=observer)  # type: ignore[attr-defined]
        log.info("own", log_category="tests.test_events.foreign")
        log.info("own", log_category="auth.fail")
        self.assertEqual(
            [formatEvent(e) for e in events], ["a foreign category", EVENTS["auth.fail"]]
        )

    def test_not_registered_at_import(self) -> None:
        """
        Importing L{netguard.events} registers nothing (checked in a fresh interpreter): a
        txaio call with a catalogued category keeps its own text until
        L{register_with_txaio} is called.
        """
        program = (
            "import txaio\n"
            "from twisted.logger import formatEvent\n"
            "txaio.use_twisted()\n"
            "import netguard.events\n"
            "seen = []\n"
            "log = txaio.make_logger(observer=seen.append)\n"
            "log.info('own text', log_category='conn.reject')\n"
            "netguard.events.register_with_txaio()\n"
            "log.info('own text', log_category='conn.reject')\n"
            "print(repr([formatEvent(e) for e in seen]))\n"
        )
        done = run_fresh(self, program)
        self.assertEqual(done.stdout.strip(), repr(["own text", EVENTS["conn.reject"]]))


class EventLoggerTests(unittest.TestCase):
    """
    L{event_logger}: a txaio logger whose events look like netguard's own.
    """

    def test_global_publisher(self) -> None:
        """
        Without an observer, events go to Twisted's global publisher, with the given
        namespace, the category as C{event}, the description as message, and the fields.
        """
        events, observer = _collector()
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        log = event_logger("tests.test_events.global")
        log.info(log_category="session.open", peer="192.0.2.7:1", service="redis")
        [event] = [e for e in events if e.get("log_namespace") == "tests.test_events.global"]
        self.assertEqual(event["event"], "session.open")
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(formatEvent(event), EVENTS["session.open"])
        self.assertEqual((event["peer"], event["service"]), ("192.0.2.7:1", "redis"))

    def test_event_field_from_category(self) -> None:
        """
        The C{event} field defaults to the C{log_category}.
        """
        events, observer = _collector()
        event_logger("tests", observer).warn(log_category="overload.on", reason="x")
        self.assertEqual(events[0]["event"], "overload.on")

    def test_explicit_event_kept(self) -> None:
        """
        An C{event} the call gives is kept.
        """
        events, observer = _collector()
        event_logger("tests", observer).info(log_category="conn.accept", event="conn.accept")
        self.assertEqual(events[0]["event"], "conn.accept")

    def test_debug_not_dropped(self) -> None:
        """
        The logger is at level debug: a debug event (C{socks5.connected}) is delivered.
        """
        events, observer = _collector()
        event_logger("tests", observer).debug(log_category="socks5.connected", target="t")
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.debug)
        self.assertEqual(formatEvent(event), EVENTS["socks5.connected"])

    def test_unknown_category_keeps_own_message(self) -> None:
        """
        A category not in the table is not an error: the call's own message is kept.
        """
        events, observer = _collector()
        event_logger("tests", observer).info("own {n}", log_category="tests.none", n=1)
        self.assertEqual(formatEvent(events[0]), "own 1")
        self.assertEqual(events[0]["event"], "tests.none")

    def test_failure_keeps_own_message(self) -> None:
        """
        C{failure()} logs the traceback with the call's own message and the category as
        C{event}.
        """
        events, observer = _collector()
        try:
            raise ValueError("boom")
        except ValueError:
            event_logger("tests", observer).failure("it broke", log_category="proto.internal")
        [event] = events
        self.assertEqual(event["event"], "proto.internal")
        self.assertEqual(event["log_level"], LogLevel.critical)
        self.assertEqual(formatEvent(event), "it broke")
        self.assertTrue(event["log_failure"].check(ValueError))

    def test_text_line(self) -> None:
        """
        netguard's text observer writes the name in its event column and the description
        as the message.
        """
        events, observer = _collector()
        event_logger("tests.ns", observer).info(
            log_category="conn.reject", peer="192.0.2.7:1", reason="rate", conn_id="ab-1"
        )
        line = format_text(events[0])
        assert line is not None
        columns = line.split(" ", 4)
        self.assertEqual(columns[1:4], ["[tests.ns#info]", "conn.reject", "ab-1"])
        self.assertEqual(columns[4], EVENTS["conn.reject"] + "\n")

    def test_json_record(self) -> None:
        """
        netguard's JSON observer writes the name, the description and every field.
        """
        events, observer = _collector()
        event_logger("tests.ns", observer).info(
            log_category="conn.reject", peer="192.0.2.7:1", reason="rate"
        )
        record = json.loads(format_json(events[0]))
        self.assertEqual(record["event"], "conn.reject")
        self.assertEqual(record["message"], EVENTS["conn.reject"])
        self.assertEqual((record["peer"], record["reason"]), ("192.0.2.7:1", "rate"))
        self.assertNotIn("log_category", record)


class OptionalTxaioTests(unittest.TestCase):
    """
    txaio is an optional extra: the catalogue and C{netguard events} work without it, and the
    txaio bridge says what to install.
    """

    def test_catalogue_imports_without_txaio(self) -> None:
        """
        In a fresh interpreter where txaio cannot be imported, L{netguard.events} and the
        gateway's modules import, and L{event_logger} raises an ImportError naming the extra.
        """
        program = (
            "import sys\n"
            "sys.modules['txaio'] = None\n"
            "import netguard.events, netguard.service, netguard.cli\n"
            "assert netguard.events.EVENTS\n"
            "try:\n"
            "    netguard.events.event_logger('x')\n"
            "except ImportError as e:\n"
            "    print(e)\n"
        )
        done = run_fresh(self, program)
        self.assertIn("pip install 'netguard[txaio]'", done.stdout)

    def test_describe_events_lists_every_name_once(self) -> None:
        """C{netguard events} text: one line per catalogued name, in catalogue order."""
        lines = describe_events().splitlines()
        self.assertEqual([line.split()[0] for line in lines], list(EVENTS))
        for line, text in zip(lines, EVENTS.values(), strict=True):
            self.assertTrue(line.endswith("  " + text), line)

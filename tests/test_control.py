"""
Tests for L{netguard.ops.control} and L{netguard.ops.ctl_client}: the control protocol on
Twisted fakes, then a real unix socket (mode, takeover guard, peer credentials) driven by the
real blocking client in a thread while the reactor serves.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import stat
import tempfile
import time
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard import cli, config
from netguard.admission import AdmissionPolicy
from netguard.admission.state import Admission
from netguard.ops import ctl_client
from netguard.ops.control import (
    CONTROL_LIMITS,
    DEFAULT_PENALTIES_TOP,
    MAX_PENALTIES_TOP,
    MAX_QUEUED,
    ControlError,
    ControlFactory,
    ControlService,
    UnsafeControlPath,
    error_line,
    listen_control,
    ok_line,
    select_penalties,
)
from netguard.ops.ctl_client import (
    EXIT_OK,
    EXIT_PROTOCOL,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    run_ctl,
)
from netguard.ops.lock import NotASocket, SocketInUse
from netguard.service import GatewayControl


class FakeCommands:
    """
    A L{ControlCommands} that records calls; C{reload_result} decides what reload does.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.figures: dict[str, Any] = {"active": 2, "connections": 10, "heartbeat": False}
        self.reload_result: Any = "reloaded: 3 services, 2 users"
        self.listed: list[Any] = [{"source": "192.0.2.7/32", "blocked_for": 7.5, "offences": 4}]

    def status(self) -> dict[str, Any]:
        self.calls.append(("status",))
        return self.figures

    def heartbeat(self, on: bool) -> bool:
        self.calls.append(("heartbeat", on))
        self.figures["heartbeat"] = on
        return on

    def reload(self) -> Any:
        self.calls.append(("reload",))
        if isinstance(self.reload_result, Exception):
            raise self.reload_result
        return self.reload_result

    def drain(self) -> str:
        self.calls.append(("drain",))
        return "draining 2 relays, 30s grace"

    def penalties(self, top: int, source: str | None) -> dict[str, Any]:
        self.calls.append(("penalties", top, source))
        return select_penalties(self.listed, top, source)

    def clear_penalties(self, source: str | None) -> int:
        self.calls.append(("clear_penalties", source))
        return 1 if source else len(self.listed)


def capture(case: unittest.TestCase) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class Conn:
    """
    One control connection on a L{StringTransport}, with helpers to send lines and read the
    replies.
    """

    def __init__(self, factory: ControlFactory) -> None:
        self.factory = factory
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def replies(self) -> list[bytes]:
        data = self.transport.value()
        self.transport.clear()
        assert data == b"" or data.endswith(b"\r\n"), data
        return data.split(b"\r\n")[:-1]

    def ask(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        (reply,) = self.replies()
        return reply

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)


def payload(reply: bytes) -> Any:
    assert reply.startswith(b"OK "), reply
    return json.loads(reply[3:])


class ProtocolTests(unittest.TestCase):
    def setUp(self):
        self.events = capture(self)
        self.clock = Clock()
        self.commands = FakeCommands()
        self.factory = ControlFactory(
            self.commands, self.clock, peer_uid=lambda transport: os.geteuid()
        )
        self.conn = Conn(self.factory)

    def test_no_greeting_line(self):
        self.assertEqual(self.conn.replies(), [])

    def test_default_limits(self):
        self.assertEqual(CONTROL_LIMITS.max_line_length, 256)
        self.assertEqual(CONTROL_LIMITS.greeting_delay, 0)
        self.assertEqual(CONTROL_LIMITS.idle_timeout, 30)
        self.assertIs(self.conn.proto.limits, CONTROL_LIMITS)

    def test_status_is_one_json_line(self):
        self.assertEqual(
            payload(self.conn.ask(b"status")),
            {"active": 2, "connections": 10, "heartbeat": False},
        )

    def test_status_accepts_lf_and_upper_case(self):
        self.conn.send(b"STATUS\n")
        (reply,) = self.conn.replies()
        self.assertEqual(payload(reply)["active"], 2)

    def test_status_with_argument_refused(self):
        self.assertEqual(self.conn.ask(b"status all"), b"ERR BAD_SYNTAX usage: status")
        self.assertEqual(self.commands.calls, [])

    def test_status_values_json_cannot_hold_sent_as_text(self):
        self.commands.figures = {"set": {1}, "bytes": b"x"}
        reply = payload(self.conn.ask(b"status"))
        self.assertEqual(reply, {"set": "{1}", "bytes": "b'x'"})

    def test_status_text_with_line_breaks_stays_one_ascii_line(self):
        self.commands.figures = {"name": "evil\r\nOK forged\x1b[2J\u00e9"}
        self.conn.send(b"status\r\n")
        data = self.conn.transport.value()
        self.assertEqual(data.count(b"\n"), 1)
        self.assertTrue(all(0x20 <= b < 0x7F for b in data[:-2]))
        self.assertEqual(payload(data[:-2])["name"], "evil\r\nOK forged\x1b[2J\u00e9")

    def test_status_with_non_finite_number_is_internal_error(self):
        self.commands.figures = {"lag": float("nan")}
        reply = self.conn.ask(b"status")
        self.assertTrue(reply.startswith(b"ERR INTERNAL "))
        self.flushLoggedErrors(ValueError)

    def test_heartbeat_on_and_off(self):
        self.assertEqual(payload(self.conn.ask(b"heartbeat on")), {"heartbeat": True})
        self.assertEqual(payload(self.conn.ask(b"heartbeat OFF")), {"heartbeat": False})
        self.assertEqual(self.commands.calls, [("heartbeat", True), ("heartbeat", False)])

    def test_heartbeat_without_state_refused(self):
        self.assertEqual(self.conn.ask(b"heartbeat"), b"ERR BAD_SYNTAX usage: heartbeat on|off")

    def test_heartbeat_with_unknown_state_refused(self):
        self.assertEqual(
            self.conn.ask(b"heartbeat maybe"), b"ERR BAD_SYNTAX usage: heartbeat on|off"
        )
        self.assertEqual(self.commands.calls, [])

    def test_reload_returning_text(self):
        self.assertEqual(
            payload(self.conn.ask(b"reload")), {"reload": "reloaded: 3 services, 2 users"}
        )

    def test_reload_refused_with_code(self):
        self.commands.reload_result = ControlError("RELOAD_FAILED", "config: bad key limits.x")
        self.assertEqual(self.conn.ask(b"reload"), b"ERR RELOAD_FAILED config: bad key limits.x")
        self.assertFalse(self.conn.closing)

    def test_control_error_with_invalid_code_sent_as_failed(self):
        self.commands.reload_result = ControlError("bad code\r\n", "x")
        self.assertEqual(self.conn.ask(b"reload"), b"ERR FAILED x")

    def test_reload_deferred_answered_when_it_fires(self):
        pending: Deferred[str] = Deferred()
        self.commands.reload_result = pending
        self.conn.send(b"reload\r\n")
        self.assertEqual(self.conn.replies(), [])
        pending.callback("done")
        self.assertEqual(self.conn.replies(), [b'OK {"reload":"done"}'])

    def test_reload_deferred_failing_with_control_error(self):
        self.commands.reload_result = fail(ControlError("RELOAD_FAILED", "users file missing"))
        self.assertEqual(self.conn.ask(b"reload"), b"ERR RELOAD_FAILED users file missing")

    def test_commands_behind_a_running_one_answered_in_order(self):
        pending: Deferred[str] = Deferred()
        self.commands.reload_result = pending
        self.conn.send(b"reload\r\nstatus\r\nheartbeat on\r\n")
        self.assertEqual(self.conn.replies(), [])
        self.assertEqual(self.commands.calls, [("reload",)])
        pending.callback("ok")
        replies = self.conn.replies()
        self.assertEqual(len(replies), 3)
        self.assertEqual(payload(replies[0]), {"reload": "ok"})
        self.assertEqual(payload(replies[1])["active"], 2)
        self.assertEqual(payload(replies[2]), {"heartbeat": True})

    def test_too_many_queued_commands_refused_and_closed(self):
        self.commands.reload_result = Deferred()
        self.conn.send(b"reload\r\n" + b"status\r\n" * (MAX_QUEUED + 1))
        (reply,) = self.conn.replies()
        self.assertTrue(reply.startswith(b"ERR BUSY"))
        self.assertTrue(self.conn.closing)

    def test_slow_command_answered_timeout_and_late_result_logged(self):
        pending: Deferred[str] = Deferred()
        self.commands.reload_result = pending
        self.conn.send(b"reload\r\nstatus\r\n")
        self.clock.advance(self.factory.command_timeout)
        replies = self.conn.replies()
        self.assertTrue(replies[0].startswith(b"ERR TIMEOUT "))
        self.assertEqual(payload(replies[1])["active"], 2)
        pending.callback("finally")
        self.assertEqual(self.conn.replies(), [])
        late = [e for e in self.events if e.get("event") == "control.command" and e["late"]]
        self.assertEqual([(e["command"], e["outcome"]) for e in late], [("reload", "ok")])

    def test_no_idle_timeout_while_a_command_runs(self):
        self.commands.reload_result = pending = Deferred()
        self.conn.send(b"reload\r\n")
        self.clock.advance(CONTROL_LIMITS.idle_timeout + 5)
        self.assertFalse(self.conn.closing)
        pending.callback("ok")
        self.assertEqual(len(self.conn.replies()), 1)

    def test_idle_connection_timed_out(self):
        self.clock.advance(CONTROL_LIMITS.idle_timeout)
        (reply,) = self.conn.replies()
        self.assertTrue(reply.startswith(b"ERR TIMEOUT"))
        self.assertTrue(self.conn.closing)

    def test_drain(self):
        self.assertEqual(
            payload(self.conn.ask(b"drain")), {"drain": "draining 2 relays, 30s grace"}
        )

    def test_penalties_listed(self):
        """
        C{penalties} and C{penalties list} ask for the default 100 sources of every source
        and answer the rows with C{total} and C{truncated}.
        """
        expected = {
            "penalties": [{"source": "192.0.2.7/32", "blocked_for": 7.5, "offences": 4}],
            "total": 1,
            "truncated": False,
        }
        self.assertEqual(payload(self.conn.ask(b"penalties")), expected)
        self.assertEqual(payload(self.conn.ask(b"penalties list")), expected)
        self.assertEqual(
            self.commands.calls,
            [
                ("penalties", DEFAULT_PENALTIES_TOP, None),
                ("penalties", DEFAULT_PENALTIES_TOP, None),
            ],
        )

    def test_penalties_clear_all(self):
        self.assertEqual(payload(self.conn.ask(b"penalties clear")), {"cleared": 1})
        self.assertEqual(self.commands.calls, [("clear_penalties", None)])

    def test_penalties_clear_one_source_normalised(self):
        self.assertEqual(payload(self.conn.ask(b"penalties clear 2001:DB8::0:1")), {"cleared": 1})
        self.assertEqual(self.commands.calls, [("clear_penalties", "2001:db8::1")])

    def test_penalties_clear_network(self):
        self.conn.ask(b"penalties clear 2001:db8:1:2::/64")
        self.assertEqual(self.commands.calls, [("clear_penalties", "2001:db8:1:2::/64")])

    def test_penalties_clear_bad_source_refused(self):
        reply = self.conn.ask(b"penalties clear example.com")
        self.assertEqual(
            reply, b"ERR BAD_SYNTAX SOURCE must be an IP address or network, unix or unknown"
        )
        self.assertEqual(self.commands.calls, [])

    def test_penalties_clear_named_source(self):
        self.conn.ask(b"penalties clear unix")
        self.assertEqual(self.commands.calls, [("clear_penalties", "unix")])

    def test_penalties_unknown_subcommand_refused(self):
        reply = self.conn.ask(b"penalties drop")
        self.assertTrue(reply.startswith(b"ERR BAD_SYNTAX usage: penalties"))

    def test_help_lists_commands(self):
        self.assertIn("heartbeat on|off", payload(self.conn.ask(b"help"))["commands"])

    def test_unknown_command_refused_connection_kept(self):
        self.assertEqual(
            self.conn.ask(b"shutdown"), b"ERR UNKNOWN_COMMAND unknown command; try help"
        )
        self.assertFalse(self.conn.closing)
        self.assertEqual(payload(self.conn.ask(b"status"))["active"], 2)

    def test_empty_line_refused(self):
        self.assertTrue(self.conn.ask(b"").startswith(b"ERR BAD_SYNTAX"))

    def test_double_space_refused(self):
        self.assertTrue(self.conn.ask(b"heartbeat  on").startswith(b"ERR BAD_SYNTAX"))

    def test_control_bytes_refused_and_logged_escaped(self):
        reply = self.conn.ask(b"status\x1b[2J\x00")
        self.assertTrue(reply.startswith(b"ERR BAD_SYNTAX"))
        (bad,) = [e for e in self.events if e.get("event") == "control.bad_line"]
        self.assertEqual(bad["line"], "status\\x1b[2J\\0")

    def test_non_ascii_refused(self):
        self.assertTrue(self.conn.ask("st\u00e4tus".encode()).startswith(b"ERR BAD_SYNTAX"))

    def test_line_too_long_refused_and_closed(self):
        self.conn.send(b"status " + b"x" * 300 + b"\r\n")
        (reply,) = self.conn.replies()
        self.assertTrue(reply.startswith(b"ERR LINE_TOO_LONG"))
        self.assertTrue(self.conn.closing)
        self.assertEqual(self.commands.calls, [])

    def test_unexpected_exception_is_internal_error_and_logged(self):
        self.commands.reload_result = RuntimeError("secret detail")
        reply = self.conn.ask(b"reload")
        self.assertEqual(reply, b"ERR INTERNAL RuntimeError (see the daemon's log)")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_every_command_logged_with_outcome(self):
        self.conn.ask(b"heartbeat on")
        self.conn.ask(b"nope")
        logged = [
            (e["command"], e["outcome"])
            for e in self.events
            if e.get("event") == "control.command"
        ]
        self.assertEqual(logged, [("heartbeat on", "ok"), ("nope", "UNKNOWN_COMMAND")])

    def test_reply_after_client_left_not_written(self):
        pending: Deferred[str] = Deferred()
        self.commands.reload_result = pending
        self.conn.send(b"reload\r\n")
        self.conn.proto.connectionLost(Failure(ConnectionDone()))
        pending.callback("ok")
        self.assertEqual(self.conn.transport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])


def penalty_rows(count: int) -> list[dict[str, Any]]:
    """
    C{count} penalty rows of distinct sources, each with a longer block than the next.
    """
    return [
        {"source": f"198.18.{i >> 8}.{i & 255}/32", "blocked_for": float(count - i), "offences": 1}
        for i in range(count)
    ]


class PenaltiesListingTests(unittest.TestCase):
    """
    C{penalties [list] [SOURCE] [--top N]}: a bounded answer, at its boundaries.
    """

    def setUp(self):
        self.commands = FakeCommands()
        self.factory = ControlFactory(
            self.commands, Clock(), peer_uid=lambda transport: os.geteuid()
        )
        self.conn = Conn(self.factory)

    def listing(self, line: bytes) -> dict[str, Any]:
        return payload(self.conn.ask(line))  # type: ignore[no-any-return]

    def test_exactly_top_sources_all_listed(self):
        """
        With exactly N sources, C{--top N} lists them all and is not truncated.
        """
        self.commands.listed = penalty_rows(5)
        answer = self.listing(b"penalties --top 5")
        self.assertEqual(answer["penalties"], penalty_rows(5))
        self.assertEqual((answer["total"], answer["truncated"]), (5, False))

    def test_approximate_flag_passed_on(self):
        """
        The supervisor's C{approximate} flag reaches the reply as it is (true or false); a
        single-process answer has none and the reply adds none.
        """
        self.commands.listed = penalty_rows(2)
        self.assertNotIn("approximate", self.listing(b"penalties --top 5"))
        for flag in (True, False):
            answer = dict(select_penalties(penalty_rows(2), 5), approximate=flag)
            self.commands.penalties = lambda top, source, answer=answer: answer  # type: ignore[method-assign]
            self.assertIs(self.listing(b"penalties --top 5")["approximate"], flag)

    def test_one_past_top_cut_and_flagged(self):
        """
        With N + 1 sources, C{--top N} lists the N with the longest blocks, says there are
        N + 1 and that the list is truncated.
        """
        self.commands.listed = penalty_rows(6)
        answer = self.listing(b"penalties --top 5")
        self.assertEqual(answer["penalties"], penalty_rows(6)[:5])
        self.assertEqual((answer["total"], answer["truncated"]), (6, True))

    def test_default_top_boundary(self):
        """
        Without C{--top}, the first L{DEFAULT_PENALTIES_TOP} are listed: that many are not
        truncated, one more is.
        """
        self.commands.listed = penalty_rows(DEFAULT_PENALTIES_TOP)
        answer = self.listing(b"penalties")
        self.assertEqual(len(answer["penalties"]), DEFAULT_PENALTIES_TOP)
        self.assertFalse(answer["truncated"])
        self.commands.listed = penalty_rows(DEFAULT_PENALTIES_TOP + 1)
        answer = self.listing(b"penalties")
        self.assertEqual(len(answer["penalties"]), DEFAULT_PENALTIES_TOP)
        self.assertEqual(answer["total"], DEFAULT_PENALTIES_TOP + 1)
        self.assertTrue(answer["truncated"])

    def test_longest_block_then_most_offences_first(self):
        """
        The longest block left comes first; among equal blocks, the most offences.
        """
        self.commands.listed = [
            {"source": "192.0.2.1/32", "blocked_for": 0.0, "offences": 9},
            {"source": "192.0.2.2/32", "blocked_for": 30.0, "offences": 1},
            {"source": "192.0.2.3/32", "blocked_for": 30.0, "offences": 4},
            {"source": "192.0.2.4/32", "blocked_for": 0.0, "offences": 2},
        ]
        answer = self.listing(b"penalties --top 3")
        self.assertEqual(
            [row["source"] for row in answer["penalties"]],
            ["192.0.2.3/32", "192.0.2.2/32", "192.0.2.1/32"],
        )

    def test_top_within_bounds_accepted(self):
        """
        C{--top 1} and C{--top} L{MAX_PENALTIES_TOP} are taken, in either place around
        SOURCE.
        """
        self.listing(b"penalties --top 1")
        self.listing(f"penalties list --top {MAX_PENALTIES_TOP}".encode())
        self.listing(b"penalties 192.0.2.7 --top 7")
        self.listing(b"penalties --top 8 192.0.2.7")
        self.assertEqual(
            self.commands.calls,
            [
                ("penalties", 1, None),
                ("penalties", MAX_PENALTIES_TOP, None),
                ("penalties", 7, "192.0.2.7"),
                ("penalties", 8, "192.0.2.7"),
            ],
        )

    def test_top_out_of_bounds_refused(self):
        """
        C{--top} 0, one past L{MAX_PENALTIES_TOP}, not a number, missing or repeated, and
        two sources, are refused with the usage; the daemon is not asked.
        """
        for line in (
            b"penalties --top 0",
            f"penalties --top {MAX_PENALTIES_TOP + 1}".encode(),
            b"penalties --top -1",
            b"penalties --top many",
            b"penalties --top",
            b"penalties --top 5 --top 6",
            b"penalties 192.0.2.7 192.0.2.8",
            b"penalties example.com",
        ):
            reply = self.conn.ask(line)
            self.assertTrue(reply.startswith(b"ERR BAD_SYNTAX usage: penalties"), (line, reply))
            self.assertLessEqual(len(reply), 240)
        self.assertEqual(self.commands.calls, [])

    def test_source_filter_address_matches_its_key(self):
        """
        C{penalties ADDRESS} answers for the key holding that address: an IPv4 /32 or /24
        key, an IPv6 /64 key, an IPv4-mapped IPv6 address as IPv4.
        """
        self.commands.listed = [
            {"source": "192.0.2.7/32", "blocked_for": 5.0, "offences": 3},
            {"source": "198.51.100.0/24", "blocked_for": 4.0, "offences": 2},
            {"source": "2001:db8:1:2::/64", "blocked_for": 3.0, "offences": 1},
            {"source": "unix", "blocked_for": 0.0, "offences": 1},
        ]
        for address, key in (
            ("192.0.2.7", "192.0.2.7/32"),
            ("198.51.100.77", "198.51.100.0/24"),
            ("2001:DB8:1:2::99", "2001:db8:1:2::/64"),
            ("::ffff:192.0.2.7", "192.0.2.7/32"),
            ("unix", "unix"),
        ):
            answer = self.listing(f"penalties {address}".encode())
            self.assertEqual([row["source"] for row in answer["penalties"]], [key], address)
            self.assertEqual((answer["total"], answer["truncated"]), (1, False))

    def test_source_filter_network_lists_the_keys_inside(self):
        """
        C{penalties NETWORK} lists the keys inside it, still bounded by C{--top}.
        """
        self.commands.listed = penalty_rows(300)
        answer = self.listing(b"penalties 198.18.1.0/24 --top 10")
        self.assertEqual(answer["penalties"], penalty_rows(300)[256:266])
        self.assertEqual((answer["total"], answer["truncated"]), (44, True))

    def test_source_filter_without_match_is_empty(self):
        """
        A source with no penalty gives an empty list, total 0, not truncated.
        """
        answer = self.listing(b"penalties 203.0.113.9")
        self.assertEqual(answer, {"penalties": [], "total": 0, "truncated": False})

    def test_reply_bounded_whatever_the_daemon_answers(self):
        """
        The reply never holds more than N rows, even from a daemon side that answers more.
        """
        self.commands.penalties = lambda top, source: {"penalties": penalty_rows(5000)}
        answer = self.listing(b"penalties --top 3")
        self.assertEqual(answer["penalties"], penalty_rows(5000)[:3])
        self.assertEqual((answer["total"], answer["truncated"]), (5000, True))

    def test_tracked_bound_of_a_real_admission_within_client_limit(self):
        """
        A real admission table full at its documented bound (C{max_tracked_sources},
        65,536 sources, each with points): C{penalties} answers 100 rows, the total and
        C{truncated}, on a line far below what C{netguard ctl} reads; so does C{--top}
        L{MAX_PENALTIES_TOP}.
        """
        policy = AdmissionPolicy(ipv6_prefix=128)
        self.assertEqual(policy.max_tracked_sources, 65536)
        admission = Admission(policy, Clock())
        for i in range(policy.max_tracked_sources):
            admission.offence(
                f"2001:db8:ffff:ffff:ffff:ffff:{i >> 8:x}ff:ff{i & 255:02x}", "timeout"
            )
        control = GatewayControl(SimpleNamespace(factory=SimpleNamespace(admission=admission)))
        conn = Conn(ControlFactory(control, Clock(), peer_uid=lambda transport: os.geteuid()))
        for line, rows in ((b"penalties", 100), (b"penalties --top 1000", MAX_PENALTIES_TOP)):
            reply = conn.ask(line)
            self.assertLess(len(reply), ctl_client.MAX_REPLY_BYTES // 8)
            answer = payload(reply)
            self.assertEqual(len(answer["penalties"]), rows)
            self.assertEqual((answer["total"], answer["truncated"]), (65536, True))
            self.assertEqual(set(answer["penalties"][0]), {"source", "blocked_for", "offences"})

    def test_longest_rows_at_max_top_within_client_limit(self):
        """
        L{MAX_PENALTIES_TOP} rows of the longest keys and figures fit the client's limit.
        """
        longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"
        self.commands.listed = [
            {"source": longest, "blocked_for": 86400.0 - i / 10, "offences": 2**31 - i}
            for i in range(MAX_PENALTIES_TOP + 1)
        ]
        reply = self.conn.ask(f"penalties --top {MAX_PENALTIES_TOP}".encode())
        self.assertLess(len(reply), ctl_client.MAX_REPLY_BYTES // 8)
        self.assertTrue(payload(reply)["truncated"])


class AccessTests(unittest.TestCase):
    def setUp(self):
        self.events = capture(self)
        self.commands = FakeCommands()

    def factory(self, uid, **kwargs):
        return ControlFactory(self.commands, Clock(), peer_uid=lambda transport: uid, **kwargs)

    def test_other_user_refused_and_closed(self):
        conn = Conn(self.factory(os.geteuid() + 1, allowed_uids=frozenset({os.geteuid()})))
        (reply,) = conn.replies()
        self.assertTrue(reply.startswith(b"ERR NOT_AUTHORIZED"))
        self.assertTrue(conn.closing)
        conn.send(b"drain\r\n")
        self.assertEqual(self.commands.calls, [])
        (denied,) = [e for e in self.events if e.get("event") == "control.denied"]
        self.assertEqual(denied["uid"], os.geteuid() + 1)

    def test_unknown_peer_refused(self):
        conn = Conn(self.factory(None))
        (reply,) = conn.replies()
        self.assertTrue(reply.startswith(b"ERR NOT_AUTHORIZED"))

    def test_root_allowed_by_default(self):
        conn = Conn(self.factory(0))
        self.assertEqual(payload(conn.ask(b"status"))["active"], 2)

    def test_too_many_connections_refused(self):
        factory = self.factory(os.geteuid(), max_clients=2)
        first, second = Conn(factory), Conn(factory)
        third = Conn(factory)
        (reply,) = third.replies()
        self.assertTrue(reply.startswith(b"ERR BUSY"))
        self.assertFalse(first.closing or second.closing)

    def test_closed_connection_frees_its_slot(self):
        factory = self.factory(os.geteuid(), max_clients=1)
        first = Conn(factory)
        first.proto.connectionLost(Failure(ConnectionDone()))
        second = Conn(factory)
        self.assertEqual(payload(second.ask(b"status"))["active"], 2)


class ReplyFormatTests(unittest.TestCase):
    def test_ok_line_compact_sorted(self):
        self.assertEqual(ok_line({"b": 1, "a": [1, 2]}), b'OK {"a":[1,2],"b":1}')

    def test_error_line_replaces_unprintable(self):
        self.assertEqual(error_line("X", "a\r\nb"), b"ERR X a??b")

    def test_error_line_invalid_code(self):
        self.assertEqual(error_line("x y", "t"), b"ERR FAILED t")

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300))
    def test_any_line_gets_exactly_one_reply_line(self, line):
        line = line.replace(b"\n", b"")
        factory = ControlFactory(FakeCommands(), Clock(), peer_uid=lambda t: os.geteuid())
        conn = Conn(factory)
        conn.send(line + b"\n")
        replies = conn.replies()
        self.assertEqual(len(replies), 1)
        self.assertTrue(replies[0].startswith((b"OK ", b"ERR ")), replies[0])
        self.assertTrue(all(0x20 <= b < 0x7F for b in replies[0]))
        self.flushLoggedErrors()


def short_tempdir(case: unittest.TestCase) -> str:
    """
    A 0700 directory under /tmp with a short name (AF_UNIX paths are limited to 107 bytes).
    """
    path = tempfile.mkdtemp(prefix="ngc", dir="/tmp")

    def remove() -> None:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)

    case.addCleanup(remove)
    return path


class RealSocketTests(unittest.TestCase):
    """
    A real control socket served by the real reactor; the blocking client runs in a thread.
    """

    def setUp(self):
        self.dir = short_tempdir(self)
        self.path = os.path.join(self.dir, "ctl.sock")
        self.commands = FakeCommands()
        self.factory = ControlFactory(self.commands, reactor)

    @inlineCallbacks
    def listen(self, factory=None):
        port = yield listen_control(reactor, self.path, factory or self.factory)
        self.addCleanup(port.stopListening)
        return port

    @inlineCallbacks
    def test_ctl_reaches_the_daemon_through_a_broken_config(self):
        # Found by a review: "ctl --config FILE reload" after a bad edit of FILE stopped at
        # parsing FILE itself, so the daemon could never say RELOAD_REFUSED.
        yield self.listen()
        config_file = os.path.join(self.dir, "ng.toml")
        with open(config_file, "w") as handle:
            handle.write(
                f'[ops]\ncontrol_socket = "{self.path}"\n[limits]\nmax_line_length = 10\n'
            )
        out, err = io.StringIO(), io.StringIO()
        code = yield deferToThread(
            cli.main, ["ctl", "--config", config_file, "status"], stdout=out, stderr=err
        )
        self.assertEqual(code, EXIT_OK, err.getvalue())
        self.assertEqual(json.loads(out.getvalue()), self.commands.figures)
        self.assertIn("limits.max_line_length", err.getvalue())
        self.assertIn(f"using the control socket {self.path}", err.getvalue())

    @inlineCallbacks
    def test_ctl_with_a_config_that_is_not_toml_is_an_error(self):
        config_file = os.path.join(self.dir, "ng.toml")
        with open(config_file, "w") as handle:
            handle.write("this is not = = toml\n")
        err = io.StringIO()
        code = yield deferToThread(
            cli.main, ["ctl", "--config", config_file, "status"], stdout=io.StringIO(), stderr=err
        )
        self.assertEqual(code, 2)
        self.assertIn("netguard: error:", err.getvalue())

    @inlineCallbacks
    def test_penalties_at_the_tracked_bound_round_trip(self):
        """
        With 65,536 penalised sources (C{max_tracked_sources}), C{netguard ctl penalties}
        over the real socket succeeds: the first 100, the total and C{truncated}; with
        C{--top 1000} (the CLI option) the first 1,000.
        """
        self.commands.listed = penalty_rows(65536)
        yield self.listen()
        code, output = yield deferToThread(run_ctl, self.path, ["penalties"])
        self.assertEqual(code, EXIT_OK, output)
        answer = json.loads(output)
        self.assertEqual(answer["penalties"], penalty_rows(65536)[:DEFAULT_PENALTIES_TOP])
        self.assertEqual((answer["total"], answer["truncated"]), (65536, True))
        out, err = io.StringIO(), io.StringIO()
        code = yield deferToThread(
            cli.main,
            ["ctl", "--socket", self.path, "penalties", "--top", "1000"],
            stdout=out,
            stderr=err,
        )
        self.assertEqual(code, EXIT_OK, err.getvalue())
        self.assertEqual(len(json.loads(out.getvalue())["penalties"]), 1000)
        self.assertEqual(self.commands.calls[-1], ("penalties", 1000, None))

    @inlineCallbacks
    def test_ctl_penalties_source_and_top_forms(self):
        """
        C{netguard ctl penalties SOURCE --top N}, C{--top N penalties SOURCE} and
        C{ctl -- penalties --top N SOURCE} all send N and the normalised source.
        """
        yield self.listen()
        for words in (
            ["penalties", "192.0.2.0/24", "--top", "3"],
            ["--top", "3", "penalties", "192.0.2.0/24"],
            ["--", "penalties", "--top", "3", "192.0.2.0/24"],
        ):
            out, err = io.StringIO(), io.StringIO()
            code = yield deferToThread(
                cli.main, ["ctl", "--socket", self.path, *words], stdout=out, stderr=err
            )
            self.assertEqual(code, EXIT_OK, (words, err.getvalue()))
            self.assertEqual(json.loads(out.getvalue())["total"], 1)
            self.assertEqual(self.commands.calls[-1], ("penalties", 3, "192.0.2.0/24"))

    @inlineCallbacks
    def test_ctl_top_option_only_with_penalties(self):
        """
        C{netguard ctl --top N} with another command (or C{penalties clear}) is a usage
        error (exit 2) and sends nothing.
        """
        yield self.listen()
        for words in (["--top", "5", "status"], ["penalties", "clear", "--top", "5"]):
            err = io.StringIO()
            code = yield deferToThread(
                cli.main, ["ctl", "--socket", self.path, *words], stdout=io.StringIO(), stderr=err
            )
            self.assertEqual(code, 2, words)
            self.assertIn("--top N goes with the penalties command", err.getvalue())
        self.assertEqual(self.commands.calls, [])

    @inlineCallbacks
    def test_socket_mode_0600_and_status_round_trip(self):
        yield self.listen()
        self.assertEqual(stat.S_IMODE(os.lstat(self.path).st_mode), 0o600)
        code, output = yield deferToThread(run_ctl, self.path, ["status"])
        self.assertEqual(code, EXIT_OK)
        self.assertEqual(json.loads(output), self.commands.figures)

    @inlineCallbacks
    def test_heartbeat_and_refusal_round_trip(self):
        yield self.listen()
        code, output = yield deferToThread(run_ctl, self.path, ["heartbeat", "on"])
        self.assertEqual((code, json.loads(output)), (EXIT_OK, {"heartbeat": True}))
        code, output = yield deferToThread(run_ctl, self.path, ["heartbeat", "sideways"])
        self.assertEqual((code, output), (EXIT_REFUSED, "BAD_SYNTAX usage: heartbeat on|off"))

    @inlineCallbacks
    def test_deferred_reload_round_trip(self):
        self.commands.reload_result = pending = Deferred()
        yield self.listen()
        answer = deferToThread(run_ctl, self.path, ["reload"])
        for _ in range(1000):
            if ("reload",) in self.commands.calls:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        pending.callback("applied")
        code, output = yield answer
        self.assertEqual((code, json.loads(output)), (EXIT_OK, {"reload": "applied"}))

    @inlineCallbacks
    def test_peer_credentials_checked_on_real_socket(self):
        other = ControlFactory(
            self.commands, reactor, allowed_uids=frozenset({os.geteuid() + 12345})
        )
        yield self.listen(other)
        code, output = yield deferToThread(run_ctl, self.path, ["drain"])
        self.assertEqual(code, EXIT_REFUSED, output)
        self.assertTrue(output.startswith("NOT_AUTHORIZED"))
        self.assertEqual(self.commands.calls, [])

    @inlineCallbacks
    def test_live_socket_never_taken_over(self):
        yield self.listen()
        with self.assertRaises(SocketInUse):
            yield listen_control(reactor, self.path, ControlFactory(FakeCommands(), reactor))
        code, _ = yield deferToThread(run_ctl, self.path, ["status"])
        self.assertEqual(code, EXIT_OK)

    @inlineCallbacks
    def test_stale_socket_replaced(self):
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(self.path)
        stale.close()
        yield self.listen()
        code, _ = yield deferToThread(run_ctl, self.path, ["status"])
        self.assertEqual(code, EXIT_OK)

    @inlineCallbacks
    def test_regular_file_at_path_kept(self):
        with open(self.path, "w") as f:
            f.write("not a socket\n")
        with self.assertRaises(NotASocket):
            yield listen_control(reactor, self.path, self.factory)
        with open(self.path) as f:
            self.assertEqual(f.read(), "not a socket\n")

    @inlineCallbacks
    def test_directory_writable_by_others_refused(self):
        os.chmod(self.dir, 0o777)
        self.addCleanup(os.chmod, self.dir, 0o700)
        with self.assertRaises(UnsafeControlPath):
            yield listen_control(reactor, self.path, self.factory)
        self.assertFalse(os.path.exists(self.path))

    @inlineCallbacks
    def test_relative_path_refused(self):
        with self.assertRaises(UnsafeControlPath):
            yield listen_control(reactor, "ctl.sock", self.factory)

    @inlineCallbacks
    def test_abstract_name_refused(self):
        with self.assertRaises(UnsafeControlPath):
            yield listen_control(reactor, "\0netguard", self.factory)

    @inlineCallbacks
    def test_too_long_path_refused(self):
        with self.assertRaises(UnsafeControlPath):
            yield listen_control(reactor, "/tmp/" + "x" * 120, self.factory)

    @inlineCallbacks
    def test_service_removes_socket_and_lock_when_stopped(self):
        service = ControlService(reactor, self.path, self.factory)
        service.startService()
        self.assertTrue(os.path.lexists(self.path + ".lock"))
        code, _ = yield deferToThread(run_ctl, self.path, ["status"])
        self.assertEqual(code, EXIT_OK)
        yield service.stopService()
        self.assertFalse(os.path.lexists(self.path))
        self.assertFalse(os.path.lexists(self.path + ".lock"))

    @inlineCallbacks
    def test_service_listens_once_when_started_with_privileges(self):
        service = ControlService(reactor, self.path, self.factory)
        service.privilegedStartService()
        port = service.port
        service.startService()
        self.assertIs(service.port, port)
        yield service.stopService()
        self.assertFalse(os.path.lexists(self.path))

    def test_service_start_fails_on_live_socket(self):
        holder = socket.socket(socket.AF_UNIX)
        self.addCleanup(holder.close)
        holder.bind(self.path)
        holder.listen(1)
        service = ControlService(reactor, self.path, self.factory)
        self.assertRaises(SocketInUse, service.startService)
        self.assertFalse(service.running)


class ClientTests(unittest.TestCase):
    def setUp(self):
        self.dir = short_tempdir(self)
        self.path = os.path.join(self.dir, "c.sock")

    def test_no_socket_is_unreachable(self):
        code, output = run_ctl(self.path, ["status"])
        self.assertEqual(code, EXIT_UNREACHABLE)
        self.assertIn("is netguard running?", output)

    def test_permission_denied_names_the_cause(self):
        # Found by a review: another user got "(is netguard running?)" for a live daemon.
        def refuse(self, address):
            raise PermissionError(13, "Permission denied")

        self.patch(socket.socket, "connect", refuse)
        code, output = run_ctl(self.path, ["status"])
        self.assertEqual(code, EXIT_UNREACHABLE)
        self.assertIn("only the daemon's user (or root)", output)
        self.assertNotIn("is netguard running", output)

    def test_empty_command_is_usage_error(self):
        self.assertEqual(run_ctl(self.path, [])[0], EXIT_USAGE)

    def test_control_characters_are_usage_error(self):
        self.assertEqual(run_ctl(self.path, ["status\r\nreload"])[0], EXIT_USAGE)

    def test_word_with_space_is_usage_error(self):
        self.assertEqual(run_ctl(self.path, ["heartbeat on"])[0], EXIT_USAGE)

    def test_too_long_command_is_usage_error(self):
        self.assertEqual(run_ctl(self.path, ["x" * 300])[0], EXIT_USAGE)

    def test_silent_daemon_is_protocol_error_within_timeout(self):
        silent = socket.socket(socket.AF_UNIX)
        self.addCleanup(silent.close)
        silent.bind(self.path)
        silent.listen(1)
        code, output = run_ctl(self.path, ["status"], timeout=0.2)
        self.assertEqual(code, EXIT_PROTOCOL)
        self.assertIn("no reply", output)

    @inlineCallbacks
    def serve(self, reply: bytes):
        class Replier(Protocol):
            def dataReceived(self, data):
                self.transport.write(reply)
                self.transport.loseConnection()

        port = reactor.listenUNIX(self.path, Factory.forProtocol(Replier))
        self.addCleanup(port.stopListening)
        result = yield deferToThread(run_ctl, self.path, ["status"])
        return result

    @inlineCallbacks
    def test_garbage_reply_is_protocol_error(self):
        code, output = yield self.serve(b"HELLO\x1b[2J\r\n")
        self.assertEqual(code, EXIT_PROTOCOL)
        self.assertNotIn("\x1b", output)

    @inlineCallbacks
    def test_bad_json_is_protocol_error(self):
        code, _ = yield self.serve(b"OK {not json\r\n")
        self.assertEqual(code, EXIT_PROTOCOL)

    @inlineCallbacks
    def test_close_without_reply_is_protocol_error(self):
        code, output = yield self.serve(b"")
        self.assertEqual(code, EXIT_PROTOCOL)
        self.assertIn("without a reply", output)

    @inlineCallbacks
    def test_error_reply_text_made_printable(self):
        code, output = yield self.serve(b"ERR X bad\x07bell\r\n")
        self.assertEqual((code, output), (EXIT_REFUSED, "X bad?bell"))

    @inlineCallbacks
    def test_over_long_reply_says_how_to_ask_for_less(self):
        """
        A reply longer than the client reads is a protocol error whose text names the
        limit and the options that ask for less (C{penalties --top N}, C{penalties SOURCE}).
        """
        code, output = yield self.serve(b"OK " + b"x" * (ctl_client.MAX_REPLY_BYTES + 10))
        self.assertEqual(code, EXIT_PROTOCOL)
        self.assertIn(str(ctl_client.MAX_REPLY_BYTES), output)
        self.assertIn("penalties --top N", output)
        self.assertIn("penalties SOURCE", output)

    def test_ok_payload_printed_indented(self):
        from netguard.ops.ctl_client import _format_reply

        self.assertEqual(_format_reply(b'OK {"a":1}'), (EXIT_OK, '{\n  "a": 1\n}'))


class DiscoveryTests(unittest.TestCase):
    """
    C{netguard ctl} with no option naming the socket finds the running gateway from the
    kernel's table of bound unix sockets, or says exactly what to pass.
    """

    def setUp(self):
        self.dirs = [short_tempdir(self), short_tempdir(self)]
        self.factory = ControlFactory(FakeCommands(), reactor)
        # No default state directory socket: the discovery is what is tested.
        missing = os.path.join(self.dirs[0], "no-such-state-dir")
        self.patch(config, "default_state_dir", lambda: missing)
        # Only this test's sockets count (other gateways may run on this machine).
        real = ctl_client.listening_control_sockets
        mine = tuple(self.dirs)
        self.patch(
            ctl_client,
            "listening_control_sockets",
            lambda *args: [p for p in real(*args) if p.startswith(mine)],
        )

    @inlineCallbacks
    def gateway(self, directory: str, lock: bool = True) -> Any:
        """
        Serve a control socket in C{directory}, with an instance lock beside it.
        """
        path = os.path.join(directory, "control.sock")
        port = yield listen_control(reactor, path, self.factory)
        self.addCleanup(port.stopListening)
        if lock:
            with open(os.path.join(directory, "netguard.lock"), "w") as handle:
                handle.write(str(os.getpid()))
        return path

    def ctl(self) -> Any:
        out, err = io.StringIO(), io.StringIO()
        done = deferToThread(cli.main, ["ctl", "status"], stdout=out, stderr=err)
        return done.addCallback(lambda code: (code, out.getvalue(), err.getvalue()))

    @inlineCallbacks
    def test_live_socket_with_lock_is_listed(self):
        """A bound control.sock of ours with a netguard lock beside it is found."""
        path = yield self.gateway(self.dirs[0])
        self.assertEqual(ctl_client.listening_control_sockets(), [path])

    @inlineCallbacks
    def test_socket_without_instance_lock_is_not_listed(self):
        """A control.sock with no netguard lock beside it is not a gateway's."""
        yield self.gateway(self.dirs[0], lock=False)
        self.assertEqual(ctl_client.listening_control_sockets(), [])

    def test_stale_socket_file_is_not_listed(self):
        """A socket file nobody listens on (a killed gateway's) is not in the table."""
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(os.path.join(self.dirs[0], "control.sock"))
        stale.close()
        with open(os.path.join(self.dirs[0], "netguard.lock"), "w") as handle:
            handle.write("1")
        self.assertEqual(ctl_client.listening_control_sockets(), [])

    def test_table_that_cannot_be_read_lists_nothing(self):
        """Where there is no /proc/net/unix, discovery finds nothing rather than failing."""
        missing = os.path.join(self.dirs[0], "no-such-table")
        self.assertEqual(ctl_client.listening_control_sockets(missing), [])

    @inlineCallbacks
    def test_ctl_status_finds_the_one_running_gateway(self):
        """With no option, C{ctl status} reaches the one running gateway and names it."""
        path = yield self.gateway(self.dirs[0])
        code, out, err = yield self.ctl()
        self.assertEqual(code, EXIT_OK, err)
        self.assertEqual(json.loads(out)["active"], 2)
        self.assertIn(f"using the running gateway's control socket {path}", err)

    @inlineCallbacks
    def test_ctl_status_with_two_gateways_asks_which(self):
        """Two running gateways: an error that lists both and names --socket."""
        first = yield self.gateway(self.dirs[0])
        second = yield self.gateway(self.dirs[1])
        code, _, err = yield self.ctl()
        self.assertEqual(code, EXIT_USAGE)
        self.assertIn(first, err)
        self.assertIn(second, err)
        self.assertIn("--socket PATH", err)

    @inlineCallbacks
    def test_ctl_status_with_no_gateway_says_what_to_pass(self):
        """No gateway at all: one error line naming the options that would find one."""
        code, _, err = yield self.ctl()
        self.assertEqual(code, EXIT_USAGE)
        self.assertEqual(err.count("\n"), 1, err)
        for needle in ("no running netguard found", "--state-dir DIR", "--config FILE"):
            self.assertIn(needle, err)

    @inlineCallbacks
    def test_ctl_state_dir_option(self):
        """C{ctl --state-dir DIR} uses DIR/control.sock."""
        yield self.gateway(self.dirs[1], lock=False)
        out, err = io.StringIO(), io.StringIO()
        code = yield deferToThread(
            cli.main, ["ctl", "--state-dir", self.dirs[1], "status"], stdout=out, stderr=err
        )
        self.assertEqual(code, EXIT_OK, err.getvalue())

    def hostile_socket(self, directory: str) -> str:
        """
        A hostile listener's C{control.sock} in C{directory}: bound and listening (so the
        kernel's table lists it), with a C{netguard.lock} beside it; closed after the test.
        """
        path = os.path.join(directory, "control.sock")
        hostile = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(hostile.close)
        hostile.bind(path)
        hostile.listen(1)
        with open(os.path.join(directory, "netguard.lock"), "w") as handle:
            handle.write("1")
        return path

    @inlineCallbacks
    def test_symlinked_control_socket_is_not_listed(self):
        """
        A listed C{control.sock} whose name was swapped for a symbolic link to one of our
        own sockets (the hostile swap) is not listed; the socket it points to, a real
        gateway's, still is.
        """
        real = yield self.gateway(self.dirs[1])
        swapped = self.hostile_socket(self.dirs[0])
        os.unlink(swapped)
        os.symlink(real, swapped)
        self.assertEqual(ctl_client.listening_control_sockets(), [real])

    @inlineCallbacks
    def test_lock_that_is_a_symlink_is_not_accepted(self):
        """
        A C{netguard.lock} that is a symbolic link (here to a regular file of ours) does not
        make a gateway; a regular file in its place does.
        """
        path = yield self.gateway(self.dirs[0], lock=False)
        target = os.path.join(self.dirs[1], "some-file")
        with open(target, "w") as handle:
            handle.write("1")
        lock = os.path.join(self.dirs[0], "netguard.lock")
        os.symlink(target, lock)
        self.assertEqual(ctl_client.listening_control_sockets(), [])
        os.unlink(lock)
        os.link(target, lock)
        self.assertEqual(ctl_client.listening_control_sockets(), [path])

    @inlineCallbacks
    def test_lock_owned_by_another_user_is_not_accepted(self):
        """A C{netguard.lock} owned by another user does not make a gateway of ours."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("giving a file to another user needs root (os.chown)")
        path = yield self.gateway(self.dirs[0])
        lock = os.path.join(self.dirs[0], "netguard.lock")
        os.chown(lock, NOBODY, -1)
        self.assertEqual(ctl_client.listening_control_sockets(), [])
        os.chown(lock, 0, -1)
        self.assertEqual(ctl_client.listening_control_sockets(), [path])

    @inlineCallbacks
    def test_writable_directory_is_refused(self):
        """
        A directory writable by group or others (where another user could swap the
        socket) is refused, sticky or not; readable by all (0755) is accepted.
        """
        path = yield self.gateway(self.dirs[0])
        for mode in (0o720, 0o702, 0o777, 0o1777):
            os.chmod(self.dirs[0], mode)
            self.assertEqual(ctl_client.listening_control_sockets(), [], oct(mode))
        os.chmod(self.dirs[0], 0o755)
        self.assertEqual(ctl_client.listening_control_sockets(), [path])

    @inlineCallbacks
    def test_directory_owned_by_another_user_is_refused(self):
        """A socket of ours in a directory another user owns is refused."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("giving a directory to another user needs root (os.chown)")
        path = yield self.gateway(self.dirs[0])
        os.chown(self.dirs[0], NOBODY, -1)
        self.assertEqual(ctl_client.listening_control_sockets(), [])
        os.chown(self.dirs[0], os.geteuid(), -1)
        self.assertEqual(ctl_client.listening_control_sockets(), [path])

    @inlineCallbacks
    def test_directory_above_writable_by_others_must_be_sticky(self):
        """
        Above the socket's directory, a directory others may write lets them rename what is
        in it, so it is refused unless sticky (as C{/tmp} is).
        """
        public = os.path.join(self.dirs[0], "p")
        os.mkdir(public)
        self.addCleanup(os.rmdir, public)
        inner = os.path.join(public, "g")
        os.mkdir(inner, 0o700)
        self.addCleanup(os.rmdir, inner)
        self.addCleanup(os.unlink, os.path.join(inner, "netguard.lock"))
        path = yield self.gateway(inner)
        os.chmod(public, 0o777)
        self.assertEqual(ctl_client.listening_control_sockets(), [])
        os.chmod(public, 0o1777)
        self.assertEqual(ctl_client.listening_control_sockets(), [path])

    @inlineCallbacks
    def test_ctl_status_ignores_a_symlinked_socket(self):
        """
        End to end: with a hostile symlinked C{control.sock} beside our one gateway,
        C{ctl status} still finds just that gateway (not "several").
        """
        real = yield self.gateway(self.dirs[1])
        swapped = self.hostile_socket(self.dirs[0])
        os.unlink(swapped)
        os.symlink(real, swapped)
        code, _, err = yield self.ctl()
        self.assertEqual(code, EXIT_OK, err)
        self.assertIn(f"using the running gateway's control socket {real}", err)


#: The user id of C{nobody}, which the peer credential tests run as.
NOBODY = 65534

#: Another unprivileged user id with no account behind it.
STRANGER = 65533


def _wait_child(pid: int, deadline: float = 30.0) -> None:
    """
    Reap the child C{pid}; kill it if it has not ended within C{deadline} seconds (a hang
    guard; the children bound their own waits).
    """
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _read_all(fd: int, deadline: float = 30.0) -> bytes:
    """
    Read the pipe C{fd} to its end (at most C{deadline} seconds), then close it.
    """
    data = b""
    end = time.monotonic() + deadline
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data


class PeerCredentialTests(unittest.TestCase):
    """
    C{run_ctl} checks who serves the socket it connected to (C{SO_PEERCRED}) before it
    sends anything: a user other than root talks only to a daemon of its own user or of
    root; root talks to any. Real sockets; the other users are forked children that
    C{setuid()} (so these tests need root) and end by themselves within a few seconds.
    """

    def setUp(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("running listeners and clients as other users needs root")
        self.dir = short_tempdir(self)
        os.chmod(self.dir, 0o755)
        self.path = os.path.join(self.dir, "control.sock")

    def listener(self, uid: int) -> int:
        """
        Fork a hostile listener that binds C{self.path}, becomes C{uid} and only then
        listens (the kernel records the credentials at C{listen}), accepts one connection,
        answers C{OK {"forged": true}} and writes to the returned pipe what it received.
        """
        ready_r, ready_w = os.pipe()
        got_r, got_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            try:
                os.close(ready_r)
                os.close(got_r)
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                server.bind(self.path)
                os.chmod(self.path, 0o666)
                os.setgid(uid)
                os.setuid(uid)
                server.listen(1)
                os.write(ready_w, b"R")
                server.settimeout(10)
                conn, _ = server.accept()
                conn.settimeout(5)
                received = b""
                try:
                    while b"\n" not in received:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        received += chunk
                    conn.sendall(b'OK {"forged": true}\r\n')
                except OSError:
                    pass
                os.write(got_w, received)
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(got_w)
        self.addCleanup(_wait_child, pid)
        try:
            ready, _, _ = select.select([ready_r], [], [], 10)
            self.assertEqual(os.read(ready_r, 1) if ready else b"", b"R")
        finally:
            os.close(ready_r)
        self.got_fd = got_r
        return pid

    def received(self) -> bytes:
        """What the listener received (read once it has ended)."""
        return _read_all(self.got_fd)

    def ctl_as(self, uid: int) -> tuple[int, str]:
        """
        Run C{run_ctl(self.path, ["status"])} in a child that runs as C{uid}.
        """
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(out_r)
                os.setgid(uid)
                os.setuid(uid)
                result = run_ctl(self.path, ["status"], timeout=5)
                os.write(out_w, json.dumps(result).encode())
            finally:
                os._exit(0)
        os.close(out_w)
        output = _read_all(out_r)
        _wait_child(pid)
        code, text = json.loads(output)
        return code, text

    def test_peer_of_another_user_is_refused_before_sending(self):
        """
        A socket served by another (unprivileged) user: exit 3 with a message naming its
        uid, and the command never reaches it (its forged reply is not shown).
        """
        self.listener(NOBODY)
        code, text = self.ctl_as(STRANGER)
        self.assertEqual(code, EXIT_UNREACHABLE, text)
        self.assertIn(f"served by uid {NOBODY}", text)
        self.assertIn(f"(uid {STRANGER})", text)
        self.assertNotIn("forged", text)
        self.assertEqual(self.received(), b"")

    def test_peer_of_the_same_user_is_accepted(self):
        """A socket served by our own user is used: the command is sent, its reply shown."""
        self.listener(NOBODY)
        code, text = self.ctl_as(NOBODY)
        self.assertEqual((code, json.loads(text)), (EXIT_OK, {"forged": True}))
        self.assertEqual(self.received(), b"status\r\n")

    def test_peer_that_is_root_is_accepted(self):
        """A daemon that listens as root is trusted by any user (root is trusted anyway)."""
        self.listener(0)
        code, text = self.ctl_as(STRANGER)
        self.assertEqual(code, EXIT_OK, text)

    def test_root_may_talk_to_any_user_daemon(self):
        """Root's ctl talks to a daemon of another user (one running as its service user)."""
        self.listener(NOBODY)
        code, text = run_ctl(self.path, ["status"], timeout=5)
        self.assertEqual(code, EXIT_OK, text)


class OwnDaemonPeerTests(unittest.TestCase):
    """
    The peer credential check lets C{run_ctl} talk to a real daemon of our own user, whoever
    we are.
    """

    @inlineCallbacks
    def test_own_daemon_is_accepted(self):
        """Our own L{ControlFactory} on a real socket: C{status} succeeds."""
        path = os.path.join(short_tempdir(self), "control.sock")
        port = yield listen_control(reactor, path, ControlFactory(FakeCommands(), reactor))
        self.addCleanup(port.stopListening)
        code, text = yield deferToThread(run_ctl, path, ["status"])
        self.assertEqual(code, EXIT_OK, text)

    def test_policy_for_a_user_and_for_root(self):
        """
        On a real connection to a socket this process serves: as this user, accepted; as
        another unprivileged user (C{euid} given), refused, unless that user is root.
        """
        path = os.path.join(short_tempdir(self), "s")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(server.close)
        server.bind(path)
        server.listen(1)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(client.close)
        client.connect(path)
        me = os.geteuid()
        other = STRANGER if me != STRANGER else NOBODY
        self.assertIsNone(ctl_client.peer_refusal(client, path))
        self.assertIsNone(ctl_client.peer_refusal(client, path, euid=0))
        if me == 0:
            self.assertIsNone(ctl_client.peer_refusal(client, path, euid=other))
        else:
            refusal = ctl_client.peer_refusal(client, path, euid=other)
            self.assertIn(f"served by uid {me}", refusal or "")

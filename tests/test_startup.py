"""
Tests for L{netguard.ops.startup}: the privileged start shared by the single-process gateway
and the workers' supervisor.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from netguard.ops import startup
from netguard.ops.startup import created_paths, start_privileged


class FakeLock:
    path = "/state/netguard.lock"

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def write_pid(self) -> None:
        self.calls.append("pid")


class FakeSink:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def start(self) -> None:
        self.calls.append("log")


def service(calls: list[str], run_as: Any = None) -> Any:
    return SimpleNamespace(
        instance_lock=FakeLock(calls),
        log_sink=FakeSink(calls),
        run_as=run_as,
        created_paths=lambda: ["/state/users"],
    )


class StartPrivilegedTests(unittest.TestCase):
    def test_order(self) -> None:
        """
        The lock's pid is written, then the log file started, then what must listen.
        """
        calls: list[str] = []
        start_privileged(service(calls), lambda: calls.append("start"), "/state")
        self.assertEqual(calls, ["pid", "log", "start"])

    def test_known_failure_is_one_line(self) -> None:
        """
        A failure of the kinds a start can meet ends the process with one line naming it.
        """

        def start() -> None:
            raise CannotListenError("127.0.0.1", 7700, OSError("in use"))

        error = self.assertRaises(SystemExit, start_privileged, service([]), start, "/state")
        self.assertTrue(str(error.code).startswith("netguard: "))

    def test_caller_failures_too(self) -> None:
        """
        The caller's own failures (C{also}) end it the same way; others are not hidden.
        """

        class Special(Exception):
            pass

        def start() -> None:
            raise Special("listener x")

        error = self.assertRaises(
            SystemExit, start_privileged, service([]), start, "/state", (Special,)
        )
        self.assertEqual(error.code, "netguard: listener x")
        self.assertRaises(Special, start_privileged, service([]), start, "/state")

    def test_hands_over_to_run_as(self) -> None:
        """
        Under C{--uid}, the state directory and what netguard made in it go to that user;
        a failure to do so is one line too.
        """
        handed: list[tuple[Any, ...]] = []
        self.patch(startup, "hand_over", lambda *args: handed.append(args))
        start_privileged(service([], run_as=(1000, 1000)), lambda: None, "/state")
        self.assertEqual(handed, [("/state", ["/state/users"], 1000, 1000)])

        def refuse(*args: object) -> None:
            raise PermissionError("not allowed")

        self.patch(startup, "hand_over", refuse)
        error = self.assertRaises(
            SystemExit, start_privileged, service([], run_as=(1000, 1000)), lambda: None, "/s"
        )
        self.assertIn("cannot hand the state directory over", str(error.code))


class CreatedPathsTests(unittest.TestCase):
    def test_every_path(self) -> None:
        """
        The users file, both keys, the lock, the listeners' sockets and the control socket.
        """
        config = SimpleNamespace(
            users_file="/state/users",
            state_dir="/state",
            ops=SimpleNamespace(control_socket="/state/control.sock"),
        )
        paths = created_paths(config, FakeLock([]), ["/state/gw.sock"])
        self.assertEqual(
            paths,
            [
                "/state/users",
                "/state/mock-verifier.key",
                "/state/ticket.key",
                "/state/netguard.lock",
                "/state/gw.sock",
                "/state/control.sock",
            ],
        )

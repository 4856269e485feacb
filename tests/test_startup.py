"""
Tests for L{netguard.ops.startup}: the privileged start shared by the single-process gateway
and the workers' supervisor.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.logger import capturedLogs
from twisted.scripts._twistd_unix import UnixApplicationRunner
from twisted.scripts.twistd import ServerOptions
from twisted.trial import unittest

from netguard.ops import startup
from netguard.ops.startup import StartFailed, created_paths, start_privileged


class FakeLock:
    path = "/state/netguard.lock"

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def write_pid(self) -> None:
        self.calls.append("pid")

    def release(self) -> bool:
        self.calls.append("release")
        return True


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


def failing_start() -> None:
    raise CannotListenError("127.0.0.1", 7700, OSError("in use"))


class StartFailureTests(unittest.TestCase):
    """
    How a failed privileged start ends: one line, the lock released, and heard by twistd.
    """

    def test_failure_is_logged_and_releases_the_lock(self) -> None:
        """
        The reason is logged as C{gateway.start_failed} and the instance lock released
        (its file removed), so nothing is left for the next start to trip over.
        """
        calls: list[str] = []
        with capturedLogs() as events:
            self.assertRaises(StartFailed, start_privileged, service(calls), failing_start, "/s")
        self.assertEqual(calls, ["pid", "log", "release"])
        failed = [event for event in events if event.get("event") == "gateway.start_failed"]
        self.assertEqual(len(failed), 1)
        self.assertIn("in use", failed[0]["reason"])

    def test_start_failed_is_an_exit_and_an_exception(self) -> None:
        """
        L{StartFailed} exits like L{SystemExit} (its code is the one line shown) and is an
        L{Exception}, what twistd catches.
        """
        error = StartFailed("control socket directory /x: writable by group or others")
        self.assertIsInstance(error, SystemExit)
        self.assertIsInstance(error, Exception)
        line = "netguard: control socket directory /x: writable by group or others"
        self.assertEqual((error.code, str(error)), (line, line))
        self.assertEqual(error.reason, line.removeprefix("netguard: "))

    def run_twistd_post_application(self, start: Any) -> tuple[bytes, str]:
        """
        Run twistd's real C{postApplication} with C{start} as what it starts, as its daemon
        child does: with a status pipe to the waiting parent and a pidfile.

        @return: what the parent would read from the pipe, and the pidfile's path.
        """
        base = self.mktemp()
        os.mkdir(base)
        pidfile = os.path.join(base, "t.pid")
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        os.set_blocking(read_end, False)
        config = ServerOptions()
        config.update(nodaemon=True, pidfile=pidfile, originalname=True, statusPipe=write_end)
        runner = UnixApplicationRunner(config)
        runner.application = None

        def start_application(application: Any) -> None:
            with open(pidfile, "w") as handle:  # as twistd's setupEnvironment does
                handle.write(str(os.getpid()))
            start()

        runner.startApplication = start_application  # type: ignore[method-assign]
        self.assertRaises(SystemExit, runner.postApplication)
        try:
            return os.read(read_end, 100), pidfile
        except BlockingIOError:
            os.close(write_end)
            return b"", pidfile

    def test_twistd_reports_it_to_its_waiting_parent(self) -> None:
        """
        Through twistd's own C{postApplication}, a failed start reaches the status pipe as
        C{1 ...: <reason>} (the waiting parent prints it and exits 1) and the pidfile is
        removed; a bare L{SystemExit} would leave the parent waiting for ever.
        """
        calls: list[str] = []
        heard, pidfile = self.run_twistd_post_application(
            lambda: start_privileged(service(calls), failing_start, "/state")
        )
        self.assertTrue(heard.startswith(b"1 "), heard)
        self.assertIn(b"StartFailed: netguard: Couldn't listen on 127.0.0.1:7700", heard)
        self.assertFalse(os.path.exists(pidfile))

    def test_hand_over_failure_reported_too(self) -> None:
        """
        A failure to hand the state directory over (C{--uid}) ends the start the same way.
        """

        def refuse(*args: object) -> None:
            raise PermissionError("not allowed")

        self.patch(startup, "hand_over", refuse)
        heard, pidfile = self.run_twistd_post_application(
            lambda: start_privileged(service([], run_as=(1000, 1000)), lambda: None, "/s")
        )
        self.assertIn(b"StartFailed: netguard: cannot hand the state directory over", heard)
        self.assertFalse(os.path.exists(pidfile))


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

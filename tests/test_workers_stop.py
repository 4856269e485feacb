"""
Tests for the supervisor's stop requests (C{ctl drain}, SIGTERM in either order) and for a
reload that not every worker answered (L{netguard.workers.supervisor.ReloadIncomplete}).
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from netguard.ops.control import ControlError
from netguard.ops.drain import SECOND_SIGNAL
from netguard.ops.reload import ReloadRefused
from netguard.workers import commands
from netguard.workers.operate import SupervisorControl, SupervisorReloader
from netguard.workers.supervisor import QUERY_TIMEOUT, ReloadIncomplete, Supervisor
from tests.test_drain_stop import StrictReactor
from tests.test_workers import FakeSpawner, make_config


class SupervisorDrainCommandTests(unittest.TestCase):
    """
    C{ctl drain} with workers shares the supervisor's one record of stop requests.
    """

    def setUp(self) -> None:
        self.reactor = StrictReactor()
        self.spawner = FakeSpawner()
        self.supervisor = Supervisor(make_config(), self.reactor, self.spawner)
        self.supervisor.startService()
        for slot in self.supervisor.slots:
            self.supervisor.worker_ready(slot)
        self.control = SupervisorControl(self.supervisor, self.reactor)

    def forced(self) -> list[bool]:
        return [
            kwargs["force"]
            for slot in self.supervisor.slots
            for kwargs in slot.channel.sent(commands.Drain)
        ]

    def test_drain_twice_is_answered_already_draining(self) -> None:
        """
        The first C{drain} stops the supervisor; a second one says so and asks the reactor
        for no second stop (no L{ReactorNotRunning} traceback).
        """
        first = self.control.drain()
        second = self.control.drain()
        self.reactor.advance(0)
        self.assertEqual(first, "draining 2 worker(s), grace 5.0s")
        self.assertTrue(second.startswith("already draining"), second)
        self.assertEqual(self.reactor.stops, 1)
        self.assertEqual(self.forced(), [])

    def test_sigterm_after_drain_has_every_worker_cut(self) -> None:
        """
        After C{ctl drain}, the next SIGTERM is the second stop: every worker, draining by
        then, is told to cut what it still has, and the reactor is not asked to stop again.
        """
        self.control.drain()
        self.reactor.advance(0)
        self.supervisor.stopService()  # what the reactor's stop runs
        self.supervisor.stop_requests.signal()
        self.assertEqual(self.forced(), [False, True, False, True])
        self.assertEqual(self.reactor.stops, 1)

    def test_drain_after_sigterm_is_answered_already_draining(self) -> None:
        """
        A C{ctl drain} after SIGTERM neither stops again nor cuts anything.
        """
        self.supervisor.stop_requests.signal()
        self.reactor.advance(0)
        answer = self.control.drain()
        self.reactor.advance(0)
        self.assertTrue(answer.startswith("already draining"), answer)
        self.assertEqual((self.reactor.stops, self.forced()), (1, []))

    def test_second_stop_signal_reaches_the_supervisors_force(self) -> None:
        """
        The supervisor's stop record cuts through L{Supervisor.force} with the second
        signal's reason.
        """
        seen: list[str] = []
        self.supervisor.stop_requests.force = seen.append
        self.supervisor.stop_requests.signal()
        self.supervisor.stop_requests.signal()
        self.assertEqual(seen, [SECOND_SIGNAL])


class ReloadUnansweredTests(unittest.TestCase):
    """
    A reload that a worker never answers is reported as incomplete, not as a success.
    """

    def setUp(self) -> None:
        self.reactor = StrictReactor()
        self.hung: list[Deferred[Any]] = []

        def hang(**kwargs: Any) -> Deferred[Any]:
            waiting: Deferred[Any] = Deferred()
            self.hung.append(waiting)
            return waiting

        state = self.mktemp()
        os.makedirs(state, mode=0o700)
        users = os.path.join(state, "users")
        with open(users, "w"):
            pass
        os.chmod(users, 0o600)
        self.config = attrs.evolve(make_config(), state_dir=state, users_file=users)
        self.spawner = FakeSpawner({commands.Reload: {"summary": "reloaded: 0 user(s)"}})
        self.supervisor = Supervisor(self.config, self.reactor, self.spawner)
        self.supervisor.startService()
        for slot in self.supervisor.slots:
            self.supervisor.worker_ready(slot)
        self.supervisor.slots[1].channel.answers[commands.Reload] = hang
        self.supervisor.reloader = SupervisorReloader(
            self.supervisor, None, {}, load=lambda path, overrides: self.config, environ={}
        )

    def test_worker_silent_past_the_bound_makes_reload_incomplete(self) -> None:
        """
        One worker (of two) silent for L{QUERY_TIMEOUT}: C{ctl reload} answers
        C{RELOAD_INCOMPLETE} naming that worker and the bound in words (no exception repr),
        which C{netguard ctl} exits 1 on.
        """
        answer = SupervisorControl(self.supervisor, self.reactor).reload()
        self.reactor.advance(QUERY_TIMEOUT)
        failure = self.failureResultOf(answer, ControlError)
        self.assertEqual(failure.value.code, "RELOAD_INCOMPLETE")
        self.assertEqual(
            failure.value.text,
            "1/2 workers reloaded; reloaded: 0 user(s); "
            f"worker 1 did not answer within {QUERY_TIMEOUT:g} s",
        )

    def test_worker_answering_just_in_time_reloads(self) -> None:
        """
        The other side of the bound: a worker that answers just before L{QUERY_TIMEOUT}
        counts, and the reload succeeds for both.
        """
        answer = SupervisorControl(self.supervisor, self.reactor).reload()
        self.reactor.advance(QUERY_TIMEOUT - 0.001)
        self.hung[0].callback({"summary": "reloaded: 0 user(s)"})
        self.assertTrue(self.successResultOf(answer).startswith("2/2 workers reloaded"))

    def test_sighup_path_traps_an_incomplete_reload(self) -> None:
        """
        For SIGHUP (which traps L{ReloadRefused}) the incomplete reload is a kind of
        refusal, so it ends in the log line, never an unhandled error.
        """
        result = self.supervisor.reloader.reload()
        self.reactor.advance(QUERY_TIMEOUT)
        failure = self.failureResultOf(result, ReloadIncomplete)
        self.assertIsInstance(failure.value, ReloadRefused)

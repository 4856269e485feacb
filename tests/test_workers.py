"""
Tests for L{netguard.workers}: the budget division (exact bounds and remainders), the
supervisor's state machine on fakes (start, restart backoff, isolation of a crash, penalty
relay, reload and drain fan-out, the stop's deadline), the aggregation of figures and
penalties, the shared penalties of a worker, and the AMP JSON argument.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import tempfile
from types import SimpleNamespace
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.protocols import amp
from twisted.protocols.wire import Echo
from twisted.test.iosim import connectedServerAndClient
from twisted.trial import unittest

from netguard.admission import PENALISED, AdmissionPolicy, Refusal
from netguard.admission.state import Admission
from netguard.config import (
    MAX_FILE_BYTES,
    Config,
    ConfigError,
    describe,
    describe_defaults,
    load_config,
)
from netguard.config.loader import cpu_count
from netguard.config.schema import Source, parse_workers
from netguard.ops.control import ControlError
from netguard.ops.reload import ReloadRefused
from netguard.tickets import SpentTable
from netguard.worker import (
    WorkerChannel,
    WorkerStartError,
    build,
    stamp_worker,
    worker_config,
)
from netguard.workers import commands
from netguard.workers.budget import (
    POOL_CAPS,
    exact_share,
    rounded_up_share,
    too_small_caps,
    worker_policy,
)
from netguard.workers.figures import aggregate, merge, merge_penalties, merge_penalty_answers
from netguard.workers.listeners import InheritedEndpoint, SharedTCPPort
from netguard.workers.operate import SupervisorControl, SupervisorReloader
from netguard.workers.penalties import SharedAdmission
from netguard.workers.slots import (
    FIRST_DELAY,
    MAX_DELAY,
    RUNNING,
    STABLE_AFTER,
    STARTING,
    STOPPED,
    STOPPING,
    WAITING,
    WorkerSlot,
    next_delay,
)
from netguard.workers.spawning import Spawner, read_start_text
from netguard.workers.spent import SharedSpentTable, share_spent
from netguard.workers.supervisor import (
    EXIT_MARGIN,
    QUERY_TIMEOUT,
    ReloadIncomplete,
    Supervisor,
    check_readable_after_drop,
)


class BudgetTests(unittest.TestCase):
    """
    L{worker_policy} and its shares: pool caps exact, per-source counts rounded up, rates
    divided.
    """

    def test_exact_shares_add_up_with_remainder_first(self) -> None:
        """
        The shares of every total among 1..8 workers add up to the total exactly, differ
        by at most one, and the remainder goes to the first workers.
        """
        for count in range(1, 9):
            for total in range(count, 60):
                shares = [exact_share(total, i, count) for i in range(count)]
                self.assertEqual(sum(shares), total)
                self.assertLessEqual(max(shares) - min(shares), 1)
                self.assertEqual(shares, sorted(shares, reverse=True))

    def test_exact_share_index_out_of_range(self) -> None:
        """
        A worker index outside 0..count-1 (one past the end, negative) or a count of 0 is
        an error, not a share.
        """
        self.assertRaises(ValueError, exact_share, 10, 2, 2)
        self.assertRaises(ValueError, exact_share, 10, -1, 2)
        self.assertRaises(ValueError, exact_share, 10, 0, 0)

    def test_default_global_cap_is_each_workers_pools_added_up(self) -> None:
        """
        With the global cap left at its default (the three pools added up), each worker's
        global cap is its own pool shares added up, whichever way they round (3 workers of
        the defaults: 86 + 86 + 256 = 428 for the first, not 427, its exact share of 1280);
        an explicit cap is shared exactly.
        """
        policy = AdmissionPolicy()
        for count in range(1, 5):
            for index in range(count):
                share = worker_policy(policy, index, count)
                self.assertEqual(
                    share.max_connections,
                    share.max_unauthenticated + share.lane_max + share.max_relays,
                )
        self.assertEqual(worker_policy(policy, 0, 3).max_connections, 428)
        explicit = AdmissionPolicy(max_connections=1000)
        self.assertEqual(
            [worker_policy(explicit, i, 3).max_connections for i in range(3)], [334, 333, 333]
        )

    def test_lane_per_user_is_divided_rounded_up(self) -> None:
        """
        The per-user lane cap is a per-key count like the per-source cap: N workers allow
        one user at most C{lane_per_user + N - 1} lane connections together (16 over 3
        workers: 6 each, 18 in all), not N times it.
        """
        policy = AdmissionPolicy(lane_per_user=16)
        self.assertEqual([worker_policy(policy, i, 3).lane_per_user for i in range(3)], [6, 6, 6])
        self.assertEqual(worker_policy(policy, 0, 1).lane_per_user, 16)

    def test_rounded_up_share_is_exact_for_large_counts(self) -> None:
        """
        The share is computed in integers: exact where a float division is not (above
        2**53), and never an C{OverflowError}.
        """
        self.assertEqual(rounded_up_share(2**60 + 1, 2), 2**59 + 1)
        self.assertEqual(rounded_up_share(10**400, 3), -(-(10**400) // 3))

    def test_rounded_up_share_excess_at_most_count_minus_one(self) -> None:
        """
        N workers each allowing C{ceil(c / N)} together allow between C{c} and
        C{c + N - 1}: exactly C{c} when N divides it, C{c + N - 1} when C{c = kN + 1}.
        """
        for count in range(1, 9):
            for total in range(1, 100):
                together = rounded_up_share(total, count) * count
                self.assertGreaterEqual(together, total)
                self.assertLessEqual(together - total, count - 1)
        self.assertEqual(rounded_up_share(32, 2) * 2, 32)
        self.assertEqual(rounded_up_share(33, 2) * 2, 34)
        self.assertEqual(rounded_up_share(9, 4) * 4, 12)

    def test_worker_policy_divides(self) -> None:
        """
        Two workers of the defaults: pool caps halved exactly (1024, 256, 768, 256, 512),
        random early drop halved, per-source cap and burst halved rounded up, rate halved;
        penalties and bounds of the tables untouched.
        """
        policy = AdmissionPolicy(per_source_max=33, per_source_burst=21, per_source_rate=7.0)
        shares = [worker_policy(policy, i, 2) for i in range(2)]
        for name in POOL_CAPS:
            self.assertEqual(sum(getattr(s, name) for s in shares), getattr(policy, name))
        self.assertEqual([s.red_soft for s in shares], [64, 64])
        self.assertEqual([s.red_hard for s in shares], [128, 128])
        self.assertEqual([s.per_source_max for s in shares], [17, 17])
        self.assertEqual([s.per_source_burst for s in shares], [11, 11])
        self.assertEqual([s.per_source_rate for s in shares], [3.5, 3.5])
        for share in shares:
            self.assertEqual(share.penalty_threshold, policy.penalty_threshold)
            self.assertEqual(share.max_tracked_sources, policy.max_tracked_sources)

    def test_worker_policy_remainder(self) -> None:
        """
        Three workers of C{max_relays = 10}: 4, 3, 3; of C{max_connections = 3}: 1 each
        (the exact boundary, one per worker).
        """
        policy = AdmissionPolicy(
            max_connections=3,
            max_unauthenticated=3,
            max_relays=10,
            lane_max=3,
            max_probation=3,
        )
        shares = [worker_policy(policy, i, 3) for i in range(3)]
        self.assertEqual([s.max_relays for s in shares], [4, 3, 3])
        self.assertEqual([s.max_connections for s in shares], [1, 1, 1])
        self.assertEqual([s.red_soft for s in shares], [1, 1, 1])

    def test_cap_one_below_workers_refused(self) -> None:
        """
        A pool cap one below the number of workers cannot give each worker one: refused,
        naming the cap; equal to it is accepted.
        """
        policy = AdmissionPolicy(max_relays=2)
        self.assertEqual(too_small_caps(policy, 2), [])
        self.assertEqual(too_small_caps(policy, 3), ["max_relays (2)"])
        self.assertRaises(ValueError, worker_policy, policy, 0, 3)

    def test_one_worker_unchanged(self) -> None:
        """
        One worker enforces the configured policy itself.
        """
        policy = AdmissionPolicy(per_source_max=5)
        self.assertIs(worker_policy(policy, 0, 1), policy)


class FakeChannel:
    """
    A worker's AMP connection as the supervisor sees it: records calls and answers from a
    table (a callable per command, or a value).
    """

    def __init__(self, answers: dict[type, Any] | None = None) -> None:
        self.calls: list[tuple[type, dict[str, Any]]] = []
        self.answers = answers or {}

    def callRemote(self, command: type, **kwargs: Any) -> Any:
        self.calls.append((command, kwargs))
        if not command.requiresAnswer:
            return None
        answer = self.answers.get(command, {})
        if isinstance(answer, Exception):
            return fail(answer)
        if callable(answer):
            return answer(**kwargs)
        return succeed(answer)

    def sent(self, command: type) -> list[dict[str, Any]]:
        return [kwargs for c, kwargs in self.calls if c is command]


class FakeHandle:
    """
    A spawned worker process: a PID, its channel and the signals sent to it.
    """

    def __init__(self, pid: int, channel: FakeChannel) -> None:
        self.pid = pid
        self.channel = channel
        self.signals: list[int] = []

    def signal(self, signum: int) -> None:
        self.signals.append(signum)


class SpawningReactor:
    """
    A reactor whose C{spawnProcess} records what a worker is started with (its command
    line and descriptors) and what the supervisor writes to, and closes, its pipes.
    """

    def __init__(self) -> None:
        self.spawned: list[dict[str, Any]] = []

    def spawnProcess(self, process: Any, executable: str, args: Any, **kw: Any) -> Any:
        record: dict[str, Any] = {"args": args, "fds": kw["childFDs"], "written": {}, "closed": []}
        self.spawned.append(record)

        def write(fd: int, data: bytes) -> None:
            record["written"][fd] = record["written"].get(fd, b"") + data

        return SimpleNamespace(pid=4242, writeToChild=write, closeChildFD=record["closed"].append)

    def start_text(self, spec: dict[str, Any], number: int = 0) -> bytes:
        """
        What the supervisor wrote to, and closed, the start configuration's pipe of the
        C{number}th worker.
        """
        record = self.spawned[number]
        fd = spec["start_fd"]
        assert record["fds"][fd] == "w" and fd in record["closed"]
        data: bytes = record["written"][fd]
        return data


class FakeSpawner:
    """
    Records every spawn; each gets a new PID and a channel made by C{channels}.
    """

    def __init__(self, answers: dict[type, Any] | None = None) -> None:
        self.spawned: list[tuple[int, FakeHandle]] = []
        self.answers = answers or {}
        self.fail_next = False
        self._pid = 1000

    def __call__(self, slot: WorkerSlot) -> FakeHandle:
        if self.fail_next:
            self.fail_next = False
            raise OSError("no more processes")
        self._pid += 1
        handle = FakeHandle(self._pid, FakeChannel(dict(self.answers)))
        self.spawned.append((slot.index, handle))
        return handle


def make_config(workers: int = 2, **ops: Any) -> Config:
    config = Config(state_dir="/nonexistent", users_file="/nonexistent/users", listen=())
    return attrs.evolve(
        config, workers=workers, ops=attrs.evolve(config.ops, shutdown_grace=5.0, **ops)
    )


class SupervisorStateTests(unittest.TestCase):
    """
    The supervisor's worker slots on a L{Clock} and a fake spawner.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.spawner = FakeSpawner()
        self.supervisor = Supervisor(make_config(), self.clock, self.spawner)

    def start(self) -> None:
        self.supervisor.startService()
        for slot in self.supervisor.slots:
            self.supervisor.worker_ready(slot)

    def test_start_spawns_every_worker(self) -> None:
        """
        Starting spawns one process per slot, each starting until it reports ready, then
        running.
        """
        self.supervisor.startService()
        self.assertEqual([index for index, _ in self.spawner.spawned], [0, 1])
        self.assertEqual([s.state for s in self.supervisor.slots], [STARTING, STARTING])
        self.supervisor.worker_ready(self.supervisor.slots[0])
        self.assertEqual([s.state for s in self.supervisor.slots], [RUNNING, STARTING])

    def test_backoff_doubles_to_ceiling(self) -> None:
        """
        A worker that keeps dying at once is restarted after 0.5, 1, 2, 4, 8, 16, 30 and
        then 30 seconds: the delay doubles and stops at 30.
        """
        self.start()
        slot = self.supervisor.slots[1]
        waits = []
        for _ in range(8):
            self.supervisor.worker_ended(slot, (1, None))
            self.assertEqual(slot.state, WAITING)
            waits.append(slot.timer.getTime() - self.clock.seconds())
            self.clock.advance(waits[-1])
            self.assertEqual(slot.state, STARTING)
        self.assertEqual(waits, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0])
        self.assertEqual(slot.restarts, 8)
        self.assertEqual(len(self.spawner.spawned), 2 + 8)

    def test_backoff_resets_after_stable_life(self) -> None:
        """
        A worker that lived exactly 60 s is restarted after 0.5 s again; one that lived a
        little less keeps the doubled delay.
        """
        self.assertEqual(next_delay(8.0, STABLE_AFTER), (FIRST_DELAY, 1.0))
        self.assertEqual(next_delay(8.0, STABLE_AFTER - 0.001), (8.0, 16.0))
        self.assertEqual(next_delay(MAX_DELAY, 0.0), (MAX_DELAY, MAX_DELAY))
        self.start()
        slot = self.supervisor.slots[0]
        self.supervisor.worker_ended(slot, (None, signal.SIGKILL))
        self.clock.advance(0.5)
        self.supervisor.worker_ended(slot, (None, signal.SIGKILL))
        self.assertEqual(slot.timer.getTime() - self.clock.seconds(), 1.0)
        self.clock.advance(1.0)
        self.supervisor.worker_ready(slot)
        self.clock.advance(STABLE_AFTER)
        self.supervisor.worker_ended(slot, (None, signal.SIGKILL))
        self.assertEqual(slot.timer.getTime() - self.clock.seconds(), FIRST_DELAY)

    def test_crash_touches_no_other_worker(self) -> None:
        """
        One worker's exit changes nothing for the other: it keeps running, is sent no
        signal and no command.
        """
        self.start()
        other = self.supervisor.slots[0]
        handle = other.handle
        calls = list(handle.channel.calls)
        self.supervisor.worker_ended(self.supervisor.slots[1], (None, signal.SIGKILL))
        self.clock.advance(FIRST_DELAY)
        self.assertEqual(other.state, RUNNING)
        self.assertIs(other.handle, handle)
        self.assertEqual(handle.signals, [])
        self.assertEqual(handle.channel.calls, calls)

    def test_spawn_failure_retried(self) -> None:
        """
        A spawn that fails (fork refused) counts as an exit: retried after the backoff.
        """
        self.spawner.fail_next = True
        self.supervisor.startService()
        slot = self.supervisor.slots[0]
        self.assertEqual(slot.state, WAITING)
        self.clock.advance(FIRST_DELAY)
        self.assertEqual(slot.state, STARTING)
        self.assertEqual(len(self.spawner.spawned), 2)

    def test_block_relayed_to_others_only(self) -> None:
        """
        A block reported by worker 0 is sent to every other live worker (source, seconds,
        points), never back to worker 0 and not to a worker waiting for its restart.
        """
        self.supervisor = Supervisor(make_config(workers=3), self.clock, self.spawner)
        self.start()
        slots = self.supervisor.slots
        self.supervisor.worker_ended(slots[2], (1, None))
        told = self.supervisor.worker_blocked(slots[0], "192.0.2.1/32", 10.0, 3.0)
        self.assertEqual(told, 1)
        self.assertEqual(
            slots[1].channel.sent(commands.ApplyBlock),
            [{"source": "192.0.2.1/32", "seconds": 10.0, "points": 3.0}],
        )
        self.assertEqual(slots[0].channel.sent(commands.ApplyBlock), [])

    def test_block_capped_at_penalty_max(self) -> None:
        """
        A reported block exactly C{penalty_max} long is relayed as it is; one a second
        longer (or any length a lying worker sends, up to 1e300) is relayed capped at
        C{penalty_max}.
        """
        self.start()
        slots = self.supervisor.slots
        most = self.supervisor.config.admission.penalty_max
        for seconds in (most, most + 1.0, 1e300):
            self.supervisor.worker_blocked(slots[0], "192.0.2.1/32", seconds, 3.0)
        self.assertEqual(
            [sent["seconds"] for sent in slots[1].channel.sent(commands.ApplyBlock)],
            [most, most, most],
        )

    def test_non_finite_block_refused(self) -> None:
        """
        A reported block of infinite, NaN, zero or negative seconds, or with infinite, NaN
        or negative points, is told to no worker and logged as C{worker.block_refused}.
        """
        self.start()
        slots = self.supervisor.slots
        bad = [
            (float("inf"), 3.0),
            (float("nan"), 3.0),
            (0.0, 3.0),
            (-5.0, 3.0),
            (10.0, float("inf")),
            (10.0, float("nan")),
            (10.0, -1.0),
        ]
        with capturedLogs() as events:
            told = [
                self.supervisor.worker_blocked(slots[0], f"192.0.2.{n}/32", s, p)
                for n, (s, p) in enumerate(bad)
            ]
        self.assertEqual(told, [0] * len(bad))
        self.assertEqual(slots[1].channel.sent(commands.ApplyBlock), [])
        refused = [e for e in events if e.get("event") == "worker.block_refused"]
        self.assertEqual(len(refused), len(bad))
        self.assertFalse([e for e in events if e.get("event") == "worker.penalty_shared"])

    def test_shared_block_lines_bounded(self) -> None:
        """
        C{worker.penalty_shared} is logged through the refusal aggregator: one source
        blocked 5 times in an interval logs 3 lines and a C{conn.reject.summary} of 2;
        2,000 sources blocked in an interval log at most 1,024 lines, the rest counted in
        summaries (under C{other}); every block is still relayed.
        """
        self.start()
        slots = self.supervisor.slots
        with capturedLogs() as events:
            for _ in range(5):
                self.supervisor.worker_blocked(slots[0], "192.0.2.1/32", 10.0, 3.0)
            self.clock.advance(10.0)
        shared = [e for e in events if e.get("event") == "worker.penalty_shared"]
        summaries = [e for e in events if e.get("event") == "conn.reject.summary"]
        self.assertEqual(len(shared), 3)
        self.assertEqual(
            [(e["source"], e["of"], e["reason"], e["count"]) for e in summaries],
            [("192.0.2.1/32", "worker.penalty_shared", "shared", 2)],
        )
        with capturedLogs() as events:
            for n in range(2000):
                self.supervisor.worker_blocked(
                    slots[0], f"10.{n // 256}.{n % 256}.1/32", 10.0, 3.0
                )
            self.clock.advance(10.0)
        shared = [e for e in events if e.get("event") == "worker.penalty_shared"]
        summaries = [e for e in events if e.get("event") == "conn.reject.summary"]
        self.assertLessEqual(len(shared), 1024)
        self.assertEqual(len(shared) + sum(e["count"] for e in summaries), 2000)
        self.assertEqual(len(slots[1].channel.sent(commands.ApplyBlock)), 2005)

    def test_reload_fans_out(self) -> None:
        """
        A reload reaches every live worker; when one refuses, the reload is incomplete
        (L{ReloadIncomplete}): the summary counts those that reloaded and names the refusal.
        """
        self.spawner.answers = {commands.Reload: {"summary": "reloaded: 1 user(s)"}}
        self.start()
        self.supervisor.slots[1].channel.answers[commands.Reload] = commands.ReloadRefusedError(
            "bad users file"
        )
        failure = self.failureResultOf(self.supervisor.reload_workers(), ReloadIncomplete)
        summary = str(failure.value)
        self.assertIn("1/2 workers reloaded; reloaded: 1 user(s)", summary)
        self.assertIn("worker 1 refused: bad users file", summary)
        for slot in self.supervisor.slots:
            self.assertEqual(len(slot.channel.sent(commands.Reload)), 1)

    def test_stop_drains_all_and_waits(self) -> None:
        """
        Stopping tells every worker to drain and fires only once every worker has exited;
        no worker is restarted from then on, even one that dies during the drain.
        """
        self.start()
        slots = self.supervisor.slots
        handles = [s.handle for s in slots]
        stopped = self.supervisor.stopService()
        for handle in handles:
            self.assertEqual(handle.channel.sent(commands.Drain), [{"force": False}])
        self.assertEqual([s.state for s in slots], [STOPPING, STOPPING])
        self.supervisor.worker_ended(slots[0], (0, None))
        self.assertNoResult(stopped)
        self.clock.advance(MAX_DELAY)
        self.assertEqual(len(self.spawner.spawned), 2)
        self.supervisor.worker_ended(slots[1], (0, None))
        self.successResultOf(stopped)
        self.assertEqual([s.state for s in slots], [STOPPED, STOPPED])

    def test_stop_cancels_pending_restart(self) -> None:
        """
        A restart scheduled before the stop never happens.
        """
        self.start()
        self.supervisor.worker_ended(self.supervisor.slots[0], (1, None))
        stopped = self.supervisor.stopService()
        self.supervisor.worker_ended(self.supervisor.slots[1], (0, None))
        self.successResultOf(stopped)
        self.clock.advance(MAX_DELAY)
        self.assertEqual(len(self.spawner.spawned), 2)

    def test_stop_kills_after_deadline(self) -> None:
        """
        A worker still running when the grace period plus the margin is over is killed
        (SIGKILL), not a moment before; the stop completes when it is reaped.
        """
        self.start()
        handles = [s.handle for s in self.supervisor.slots]
        stopped = self.supervisor.stopService()
        self.supervisor.worker_ended(self.supervisor.slots[0], (0, None))
        self.clock.advance(5.0 + EXIT_MARGIN - 0.001)
        self.assertEqual(handles[1].signals, [])
        self.clock.advance(0.001)
        self.assertEqual(handles[1].signals, [signal.SIGKILL])
        self.assertEqual(handles[0].signals, [])
        self.assertNoResult(stopped)
        self.supervisor.worker_ended(self.supervisor.slots[1], (None, signal.SIGKILL))
        self.successResultOf(stopped)

    def test_force_reaches_every_worker(self) -> None:
        """
        A second stop signal asks every live worker to close what is left.
        """
        self.start()
        self.supervisor.force("second stop signal")
        for slot in self.supervisor.slots:
            self.assertEqual(slot.channel.sent(commands.Drain), [{"force": True}])

    def test_heartbeat_to_restarted_worker(self) -> None:
        """
        The heartbeat state is sent to every worker, and to a worker that starts later.
        """
        self.start()
        self.supervisor.set_heartbeat(True, by="control")
        for slot in self.supervisor.slots:
            self.assertEqual(slot.channel.sent(commands.Heartbeat), [{"on": True}])
        slot = self.supervisor.slots[0]
        self.supervisor.worker_ended(slot, (1, None))
        self.clock.advance(FIRST_DELAY)
        self.supervisor.worker_ready(slot)
        self.assertEqual(slot.channel.sent(commands.Heartbeat), [{"on": True}])


class PasswordFileOwnerTests(unittest.TestCase):
    """
    The Redis password file under C{twistd --uid}: the workers read it after the drop.
    """

    def password_file(self) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as handle:
            handle.write("secret\n")
        os.chmod(path, 0o600)
        return path

    def test_other_owner_refused_at_start(self) -> None:
        """
        A password file that does not belong to the user the workers run as stops the
        supervisor's start with a message naming the file, its owner and that user (instead
        of every worker exiting and restarting for ever).
        """
        path = self.password_file()
        config = make_config()
        config = attrs.evolve(
            config,
            shared=attrs.evolve(config.shared, redis="tcp:127.0.0.1:6379", password_file=path),
        )
        supervisor = Supervisor(config, Clock(), FakeSpawner())
        supervisor.run_as = (os.getuid() + 1, os.getgid())
        error = self.assertRaises(SystemExit, supervisor.privilegedStartService)
        self.assertIn(f"password_file={path} belongs to uid {os.getuid()}", str(error))
        self.assertIn(f"as uid {os.getuid() + 1}", str(error))

    def test_owner_or_missing_file_passes(self) -> None:
        """
        A file that belongs to the workers' user passes; a missing one is left to the
        worker, which names the reason.
        """
        check_readable_after_drop(self.password_file(), os.getuid())
        check_readable_after_drop(os.path.abspath(self.mktemp()), os.getuid() + 1)


class AggregationTests(unittest.TestCase):
    """
    The sums of the workers' figures and penalties.
    """

    def test_status_sums_workers(self) -> None:
        """
        The status sums counters and gauges (nested tables too), takes the highest stress,
        any draining, keeps one line per worker, and the supervisor's own PID and uptime.
        """
        clock = Clock()
        figures = [
            {"active": 1, "connections": 5, "admission": {"relays": 1, "stress": 0.2}},
            {"active": 2, "connections": 7, "admission": {"relays": 2, "stress": 0.5}},
        ]
        spawner = FakeSpawner()
        supervisor = Supervisor(make_config(), clock, spawner)
        supervisor.startService()
        for slot, row in zip(supervisor.slots, figures, strict=True):
            slot.channel.answers[commands.Status] = {"figures": row}
            supervisor.worker_ready(slot)
        status = self.successResultOf(supervisor.status())
        self.assertEqual(status["active"], 3)
        self.assertEqual(status["connections"], 12)
        self.assertEqual(status["admission"], {"relays": 3, "stress": 0.5})
        self.assertEqual([r["active"] for r in status["workers"]], [1, 2])
        self.assertEqual(status["workers_running"], 2)
        self.assertFalse(status["draining"])

    def test_silent_worker_left_out(self) -> None:
        """
        A worker that does not answer within the query timeout is left out of the sums and
        shown as not answering; the status still comes.
        """
        clock = Clock()
        spawner = FakeSpawner()
        supervisor = Supervisor(make_config(), clock, spawner)
        supervisor.startService()
        slots = supervisor.slots
        slots[0].channel.answers[commands.Status] = {"figures": {"active": 4}}
        from twisted.internet.defer import Deferred

        slots[1].channel.answers[commands.Status] = lambda: Deferred()
        for slot in slots:
            supervisor.worker_ready(slot)
        pending = supervisor.status()
        self.assertNoResult(pending)
        clock.advance(QUERY_TIMEOUT)
        status = self.successResultOf(pending)
        self.assertEqual(status["active"], 4)
        self.assertEqual(status["workers"][1]["answer"], "none")

    def test_merge_rules(self) -> None:
        """
        Numbers add (floats rounded), booleans are all (any for C{draining}), histogram
        buckets add per bound, other values take the first that is set.
        """
        self.assertEqual(merge([1, 2, 3]), 6)
        self.assertEqual(merge([True, False]), False)
        self.assertEqual(merge([True, True]), True)
        self.assertEqual(merge([False, True], "draining"), True)
        self.assertEqual(merge([None, "overload-lag"]), "overload-lag")
        self.assertEqual(
            merge([[[0.1, 1], [1.0, 2]], [[0.1, 3], [1.0, 4]]], "buckets"), [[0.1, 4], [1.0, 6]]
        )
        self.assertEqual(
            aggregate([{"uptime": 5, "active": 1}, {"uptime": 6, "active": 1}]), {"active": 2}
        )

    def status_of(self, figures: list[dict[str, Any]]) -> dict[str, Any]:
        """
        C{ctl status} of a supervisor whose two workers answer with C{figures}.
        """
        supervisor = Supervisor(make_config(), Clock(), FakeSpawner())
        supervisor.startService()
        for slot, row in zip(supervisor.slots, figures, strict=True):
            slot.channel.answers[commands.Status] = {"figures": row}
            supervisor.worker_ready(slot)
        return self.successResultOf(supervisor.status())  # type: ignore[no-any-return]

    def test_worker_index_not_summed(self) -> None:
        """
        Each worker's own index (C{worker}) is not a quantity: the status of workers 0 and 1
        has no C{worker} figure (summed, it read 1); each line keeps its C{index}.
        """
        status = self.status_of([{"worker": 0, "active": 0}, {"worker": 1, "active": 0}])
        self.assertNotIn("worker", status)
        self.assertEqual([row["index"] for row in status["workers"]], [0, 1])
        self.assertNotIn("worker", aggregate([{"worker": 1}, {"worker": 2}]))

    def test_source_gauges_not_double_counted(self) -> None:
        """
        One source blocked in both workers (the block is relayed to every worker) counts
        once: the source gauges show the largest one worker holds, not the sum; the pool
        gauges beside them are still summed.
        """
        rows = [
            {
                "admission": {
                    "tracked_sources": 1,
                    "penalised_sources": 1,
                    "blocked_sources": 1,
                    "active_sources": 0,
                    "relays": 1,
                }
            },
            {
                "admission": {
                    "tracked_sources": 3,
                    "penalised_sources": 1,
                    "blocked_sources": 1,
                    "active_sources": 2,
                    "relays": 1,
                }
            },
        ]
        admission = self.status_of(rows)["admission"]
        self.assertEqual(
            admission,
            {
                "tracked_sources": 3,
                "penalised_sources": 1,
                "blocked_sources": 1,
                "active_sources": 2,
                "relays": 2,
            },
        )

    def test_shared_up_only_when_up_in_every_worker(self) -> None:
        """
        C{shared.up} is true for the gateway only when it is in every worker: one worker
        degraded (Redis unreachable from it) shows false; both up show true.
        """
        one_down = self.status_of([{"shared": {"up": True}}, {"shared": {"up": False}}])
        self.assertIs(one_down["shared"]["up"], False)
        both_up = self.status_of([{"shared": {"up": True}}, {"shared": {"up": True}}])
        self.assertIs(both_up["shared"]["up"], True)

    def test_worker_line_without_connections_shows_zero(self) -> None:
        """
        A worker that has accepted no connection yet (no C{connections} counter) shows
        C{connections} 0 on its line, not null; a worker's own figures are shown as given.
        """
        status = self.status_of([{"active": 0}, {"active": 1, "connections": 4}])
        rows = status["workers"]
        self.assertEqual([(r["active"], r["connections"]) for r in rows], [(0, 0), (1, 4)])

    def test_penalties_merged(self) -> None:
        """
        One row per source: the longest block left, the offences of every worker added.
        """
        rows = merge_penalties(
            [
                [{"source": "a", "blocked_for": 5.0, "offences": 1}],
                [
                    {"source": "a", "blocked_for": 9.0, "offences": 2},
                    {"source": "b", "blocked_for": 0.0, "offences": 1},
                ],
            ]
        )
        self.assertEqual(
            rows,
            [
                {"source": "a", "blocked_for": 9.0, "offences": 3},
                {"source": "b", "blocked_for": 0.0, "offences": 1},
            ],
        )


def rows_of(*sources: tuple[str, float, int]) -> list[dict[str, Any]]:
    return [{"source": s, "blocked_for": b, "offences": o} for s, b, o in sources]


class PenaltyAnswerTests(unittest.TestCase):
    """
    C{ctl penalties} with workers: each worker sends its first N rows, the supervisor
    merges them and cuts to N, so the answer is bounded at every hop.
    """

    def test_exactly_top_across_workers_not_truncated(self) -> None:
        """
        N distinct sources spread over the workers: all N listed, total N, not truncated.
        """
        answer = merge_penalty_answers(
            [
                {"penalties": rows_of(("a", 9.0, 1)), "total": 1, "truncated": False},
                {"penalties": rows_of(("b", 5.0, 1)), "total": 1, "truncated": False},
            ],
            2,
        )
        self.assertEqual(
            answer,
            {"penalties": rows_of(("a", 9.0, 1), ("b", 5.0, 1)), "total": 2, "truncated": False},
        )

    def test_one_past_top_across_workers_truncated(self) -> None:
        """
        N + 1 distinct sources over the workers: the N with the longest blocks (then the
        most offences, added over workers), total N + 1, truncated.
        """
        answer = merge_penalty_answers(
            [
                {"penalties": rows_of(("a", 9.0, 1), ("c", 0.0, 2)), "total": 2},
                {"penalties": rows_of(("b", 0.0, 1), ("c", 0.0, 2)), "total": 2},
            ],
            2,
        )
        self.assertEqual(answer["penalties"], rows_of(("a", 9.0, 1), ("c", 0.0, 4)))
        self.assertEqual((answer["total"], answer["truncated"]), (3, True))

    def test_total_the_largest_one_worker_holds(self) -> None:
        """
        The workers' tables overlap (blocks are shared): C{total} is the largest one
        worker's count, and a worker that left rows out makes the answer truncated.
        """
        answer = merge_penalty_answers(
            [
                {"penalties": rows_of(("a", 9.0, 1)), "total": 70000, "truncated": True},
                {"penalties": rows_of(("a", 9.0, 0)), "total": 1, "truncated": False},
            ],
            1,
        )
        self.assertEqual(answer["penalties"], rows_of(("a", 9.0, 1)))
        self.assertEqual((answer["total"], answer["truncated"]), (70000, True))

    def test_supervisor_asks_every_worker_for_top_and_source(self) -> None:
        """
        The supervisor sends C{top} and the filter to every worker and merges the answers.
        """
        supervisor = Supervisor(make_config(), Clock(), FakeSpawner())
        supervisor.startService()
        answers = [
            {"penalties": rows_of(("192.0.2.1/32", 5.0, 1)), "total": 1, "truncated": False},
            {"penalties": rows_of(("192.0.2.1/32", 5.0, 2)), "total": 1, "truncated": False},
        ]
        for slot, answer in zip(supervisor.slots, answers, strict=True):
            slot.channel.answers[commands.Penalties] = answer
            supervisor.worker_ready(slot)
        listed = self.successResultOf(supervisor.penalties(7, "192.0.2.0/24"))
        self.assertEqual(
            listed,
            {
                "penalties": rows_of(("192.0.2.1/32", 5.0, 3)),
                "total": 1,
                "truncated": False,
                "approximate": False,
            },
        )
        for slot in supervisor.slots:
            self.assertEqual(
                slot.channel.sent(commands.Penalties), [{"top": 7, "source": "192.0.2.0/24"}]
            )

    def test_worker_answer_at_the_tracked_bound_over_amp(self) -> None:
        """
        A worker whose admission table is full (65,536 sources) answers C{Penalties} over a
        real AMP exchange with its first N rows, its total and C{truncated}: a bounded box.
        """
        policy = AdmissionPolicy(ipv6_prefix=128)
        admission = Admission(policy, Clock())
        for i in range(policy.max_tracked_sources):
            admission.offence(f"2001:db8::{i >> 8:x}:{i & 255:x}", "timeout")
        channel = WorkerChannel(Clock(), 0)
        channel.service = SimpleNamespace(  # type: ignore[assignment]
            factory=SimpleNamespace(admission=admission)
        )
        client, server, pump = connectedServerAndClient(
            ServerClass=lambda: channel, ClientClass=amp.AMP
        )
        answer = client.callRemote(commands.Penalties, top=1000)
        pump.flush()
        result = self.successResultOf(answer)
        self.assertEqual(len(result["penalties"]), 1000)
        self.assertEqual((result["total"], result["truncated"]), (65536, True))
        filtered = client.callRemote(commands.Penalties, top=5, source="2001:db8::1:7")
        pump.flush()
        self.assertEqual(
            self.successResultOf(filtered)["penalties"],
            rows_of(("2001:db8::1:7/128", 0.0, 1)),
        )


class SharedAdmissionTests(unittest.TestCase):
    """
    L{SharedAdmission}: blocks reported out, blocks applied in.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.reports: list[tuple[str, float, float]] = []
        self.policy = AdmissionPolicy(penalty_threshold=3, penalty_base=10.0)
        self.admission = SharedAdmission(
            self.policy, self.clock, lambda *report: self.reports.append(report)
        )
        self.peer = IPv4Address("TCP", "192.0.2.7", 4000)

    def test_block_reported_once(self) -> None:
        """
        Offences below the threshold report nothing; the one that blocks reports the source
        key, the block and the points; an offence while blocked that does not extend the
        block reports nothing more.
        """
        self.admission.offence(self.peer, "auth_failure")
        self.admission.offence(self.peer, "auth_failure")
        self.assertEqual(self.reports, [])
        self.admission.offence(self.peer, "auth_failure")
        self.assertEqual(len(self.reports), 1)
        source, seconds, points = self.reports[0]
        self.assertEqual(source, "192.0.2.7/32")
        self.assertEqual(seconds, 10.0)
        self.assertGreater(points, 2.0)

    def test_extension_reported(self) -> None:
        """
        A further offence that lengthens the block is reported again, with the longer
        block.
        """
        for _ in range(3):
            self.admission.offence(self.peer, "auth_failure")
        self.admission.offence(self.peer, "auth_failure")
        self.assertEqual([round(r[1]) for r in self.reports], [10, 20])

    def test_applied_block_refuses(self) -> None:
        """
        A block applied from another worker refuses the source here (C{penalised}) until it
        ends, then admits it; the next offence here escalates from the points carried.
        """
        self.admission.apply_block("192.0.2.7/32", 10.0, 3.0)
        refusal = self.admission.admit(self.peer)
        self.assertIsInstance(refusal, Refusal)
        assert isinstance(refusal, Refusal)
        self.assertEqual(refusal.reason, PENALISED)
        self.clock.advance(10.0)
        self.assertIsNone(self.admission.admit(self.peer))
        self.assertEqual(self.reports, [])
        blocked = self.admission.offence(self.peer, "auth_failure")
        self.assertEqual(blocked, 20.0)

    def test_applied_block_keeps_longer(self) -> None:
        """
        A shorter block applied over a longer one keeps the longer one; zero or negative
        seconds change nothing.
        """
        self.admission.apply_block("192.0.2.7/32", 100.0, 3.0)
        self.admission.apply_block("192.0.2.7/32", 5.0, 3.0)
        self.admission.apply_block("192.0.2.8/32", 0.0, 3.0)
        self.clock.advance(50.0)
        self.assertIsInstance(self.admission.admit(self.peer), Refusal)
        self.assertEqual([row[0] for row in self.admission.penalties()], ["192.0.2.7/32"])

    def test_applied_block_capped_at_penalty_max(self) -> None:
        """
        A relayed block longer than C{penalty_max} (here 1e300 s, from a lying peer)
        blocks for C{penalty_max} only: refused just before it ends, admitted at its end.
        """
        self.admission.apply_block("192.0.2.7/32", 1e300, 3.0)
        self.clock.advance(self.policy.penalty_max - 0.001)
        self.assertIsInstance(self.admission.admit(self.peer), Refusal)
        self.clock.advance(0.001)
        self.assertIsNone(self.admission.admit(self.peer))

    def test_applied_non_finite_block_ignored(self) -> None:
        """
        A relayed block of infinite or NaN seconds, or with infinite or NaN points, changes
        nothing (no entry, the source admitted).
        """
        for seconds, points in (
            (float("inf"), 3.0),
            (float("nan"), 3.0),
            (10.0, float("inf")),
            (10.0, float("nan")),
        ):
            self.admission.apply_block("192.0.2.7/32", seconds, points)
        self.assertEqual(self.admission.penalties(), [])
        self.assertIsNone(self.admission.admit(self.peer))

    def test_applied_blocks_bounded(self) -> None:
        """
        Applied blocks respect C{max_tracked_sources}: the table never grows past it, the
        least recent entry going first.
        """
        admission = SharedAdmission(
            AdmissionPolicy(max_tracked_sources=4), self.clock, lambda *r: None
        )
        for n in range(10):
            admission.apply_block(f"192.0.2.{n}/32", 60.0, 3.0)
        self.assertEqual(
            sorted(row[0] for row in admission.penalties()),
            [f"192.0.2.{n}/32" for n in range(6, 10)],
        )


class JSONArgumentTests(unittest.TestCase):
    """
    L{commands.JSONArgument}: values beyond one AMP value's 64 KiB, and refusals.
    """

    def round_trip(self, value: Any) -> Any:
        argument = commands.JSONArgument()
        strings: dict[bytes, bytes] = {}
        argument.toBox(b"figures", strings, {"figures": value}, None)
        for chunk in strings.values():
            self.assertLessEqual(len(chunk), amp.MAX_VALUE_LENGTH)
        objects: dict[str, Any] = {}
        argument.fromBox(b"figures", dict(strings), objects, None)
        return objects["figures"]

    def test_large_value_round_trips(self) -> None:
        """
        A value of about 300 KiB travels in several chunks and comes back equal.
        """
        value = {f"service{n}": {"sessions": n, "name": "x" * 100} for n in range(2500)}
        self.assertEqual(self.round_trip(value), value)

    def test_too_large_refused(self) -> None:
        """
        A value beyond 64 chunks is refused by the sender.
        """
        value = "x" * (amp.MAX_VALUE_LENGTH * commands.MAX_CHUNKS + 1)
        self.assertRaises(ValueError, self.round_trip, value)

    def test_bad_chunk_count_refused(self) -> None:
        """
        A chunk count that is not a number from 1 to 64 is refused by the receiver before
        anything is joined.
        """
        argument = commands.JSONArgument()
        for bad in (b"0", b"65", b"-1", b"x"):
            self.assertRaises(
                ValueError, argument.fromBox, b"figures", {b"figures": bad}, {}, None
            )


class WorkersConfigTests(unittest.TestCase):
    """
    The C{workers} key: bounds, C{"auto"}, the check against the pool caps, and
    C{check-config}.
    """

    def load(self, text: str) -> Config:
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(text)
        return load_config(path, {"state_dir": "/tmp/ng-unused", "listen": ["tcp:7700"]})

    def test_default_one(self) -> None:
        """
        Without the key, one process serves alone.
        """
        config = self.load("")
        self.assertEqual(config.workers, 1)
        self.assertEqual(config.origins["workers"], "default")

    def test_bounds(self) -> None:
        """
        1 and 64 are accepted; 0 and 65, a boolean, a float and other text are refused
        naming the key and what it allows.
        """
        self.assertEqual(self.load("workers = 1\n").workers, 1)
        self.assertEqual(self.load("workers = 64\n").workers, 64)
        for bad in ("0", "65", "true", "2.0", '"many"', "-1"):
            with self.assertRaises(ConfigError) as raised:
                self.load(f"workers = {bad}\n")
            self.assertIn("workers", str(raised.exception))
            self.assertIn('"auto"', str(raised.exception))

    def test_auto(self) -> None:
        """
        C{"auto"} is the CPUs this process may run on, within 1..64.
        """
        src = Source("f.toml", "file", "/")
        self.assertEqual(parse_workers(src, "workers", "auto", 2), 2)
        self.assertEqual(parse_workers(src, "workers", "auto", 200), 64)
        self.assertEqual(parse_workers(src, "workers", "auto", 0), 1)
        self.assertEqual(self.load('workers = "auto"\n').workers, min(64, cpu_count()))

    def test_caps_smaller_than_workers_refused(self) -> None:
        """
        Three workers cannot share C{max_relays = 2} (refused, naming it); they can share
        C{max_relays = 3}, one each.
        """
        with self.assertRaises(ConfigError) as raised:
            self.load("workers = 3\n[admission]\nmax_relays = 2\n")
        self.assertIn("max_relays (2)", str(raised.exception))
        self.assertEqual(self.load("workers = 3\n[admission]\nmax_relays = 3\n").workers, 3)

    def test_check_config_shows_workers(self) -> None:
        """
        C{check-config} shows the effective number of workers and where it came from, and
        the defaults list documents the key.
        """
        shown = describe(self.load("workers = 2\n"))
        self.assertIn("workers = 2  # set in file; a supervisor and 2 workers", shown)
        self.assertIn("\nworkers = 1", describe_defaults())


class InheritedSocketTests(unittest.TestCase):
    """
    L{InheritedEndpoint} over real listening sockets in this process: what a worker does to
    the socket it adopts, and what it leaves alone.
    """

    def listening_unix(self, mode: int) -> tuple[str, int]:
        directory = tempfile.mkdtemp(prefix="ngwu-", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "s.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(8)
        sock.setblocking(False)
        self.addCleanup(sock.close)
        return path, os.dup(sock.fileno())

    @inlineCallbacks
    def test_unix_socket_file_left_alone(self) -> Any:
        """
        A worker adopting a unix socket serves on it without changing the file's mode
        (Twisted's own adoption would make it 0666), and stopping leaves the file in place
        (Twisted's would remove it under the other workers).
        """
        path, fd = self.listening_unix(0o600)
        port = yield InheritedEndpoint(reactor, fd, socket.AF_UNIX).listen(
            Factory.forProtocol(Echo)
        )
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        client = yield connectProtocol(UNIXClientEndpoint(reactor, path), Protocol())
        client.transport.loseConnection()
        yield port.stopListening()
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    @inlineCallbacks
    def test_inherited_descriptor_closed(self) -> Any:
        """
        The inherited descriptor is closed once adopted (the port holds its own copy): a
        worker keeps one descriptor per listener, not two.
        """
        _, fd = self.listening_unix(0o600)
        port = yield InheritedEndpoint(reactor, fd, socket.AF_UNIX).listen(
            Factory.forProtocol(Echo)
        )
        self.assertRaises(OSError, os.fstat, fd)
        yield port.stopListening()

    @inlineCallbacks
    def test_tcp_copy_stops_alone(self) -> Any:
        """
        Two adopted copies of one TCP socket: stopping one (a worker draining) leaves the
        socket accepting through the other (no shutdown of the shared socket).
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        self.addCleanup(sock.close)
        number = sock.getsockname()[1]
        ports = []
        for _ in range(2):
            endpoint = InheritedEndpoint(reactor, os.dup(sock.fileno()), socket.AF_INET)
            ports.append((yield endpoint.listen(Factory.forProtocol(Echo))))
        sock.close()
        yield ports[0].stopListening()
        client = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", number), Protocol()
        )
        client.transport.loseConnection()
        yield ports[1].stopListening()

    def test_accepts_in_turns(self) -> None:
        """
        A shared port accepts one connection per readiness, leaving the rest of a burst
        to the other workers, however many are waiting and whatever Twisted's adaptive
        batch grew to.
        """
        built: list[Any] = []

        class Counting(Factory):
            def buildProtocol(self, addr: Any) -> Protocol:
                built.append(addr)
                return Protocol()

        port = SharedTCPPort(0, Counting(), interface="127.0.0.1")
        port.startListening()
        self.addCleanup(port.stopListening)
        clients = [
            socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
            for _ in range(3)
        ]
        for client in clients:
            self.addCleanup(client.close)
        port.numberAccepts = 120
        port.doRead()
        self.assertEqual(len(built), 1)
        port.doRead()
        self.assertEqual(len(built), 2)
        for transport in list(port.reactor.getReaders()):
            if getattr(transport, "server", None) is port:
                transport.abortConnection()


class WorkerSideTests(unittest.TestCase):
    """
    The worker's own pieces: its configuration, its log stamp, its stop.
    """

    def test_worker_config(self) -> None:
        """
        A worker runs with its share of the admission budget and without a control socket
        or a metrics listener of its own.
        """
        config = attrs.evolve(
            make_config(), ops=attrs.evolve(make_config().ops, metrics_listen="tcp:9100")
        )
        mine = worker_config(config, 1, 2)
        self.assertEqual(mine.admission, worker_policy(config.admission, 1, 2))
        self.assertEqual((mine.ops.control_socket, mine.ops.metrics_listen), ("", ""))
        self.assertEqual(mine.ops.shutdown_grace, config.ops.shutdown_grace)

    def test_log_stamp(self) -> None:
        """
        Every event of a worker carries C{worker}; the text column shows it before the
        namespace and level; an event with its own system keeps it.
        """
        stamp = stamp_worker(3)
        event: dict[str, Any] = {"log_namespace": "netguard.x", "log_level": LogLevel.info}
        stamp(event)
        self.assertEqual(event["worker"], 3)
        self.assertEqual(event["log_system"], "w3:netguard.x#info")
        legacy: dict[str, Any] = {"log_system": "-", "log_namespace": "log_legacy"}
        stamp(legacy)
        self.assertTrue(legacy["log_system"].startswith("w3:"))
        own: dict[str, Any] = {"log_system": "HTTPChannel,1,127.0.0.1"}
        stamp(own)
        self.assertEqual(own["log_system"], "HTTPChannel,1,127.0.0.1")

    def test_stop_then_force(self) -> None:
        """
        The first stop (drain from the supervisor, SIGTERM, or the supervisor's pipe closing)
        stops the reactor once; a second unforced one (the supervisor's drain after the
        worker's own SIGTERM from a process-group kill) changes nothing; only a forced one
        (the supervisor's answer to a second stop signal) cuts what the drain left.
        """
        clock = Clock()
        clock.running = True  # type: ignore[attr-defined]
        stops: list[bool] = []
        clock.stop = lambda: stops.append(True)  # type: ignore[attr-defined]
        forced: list[str] = []
        channel = WorkerChannel(clock, 0)
        channel.service = FakeService(forced)  # type: ignore[assignment]
        channel.stop()
        clock.advance(0)
        self.assertEqual((stops, forced), ([True], []))
        channel.stop()
        clock.advance(0)
        self.assertEqual((stops, forced), ([True], []))
        channel.stop(force=True)
        clock.advance(0)
        self.assertEqual((stops, forced), ([True], ["second stop signal"]))


class FakeService:
    """
    The parts of a gateway service a worker's stop touches.
    """

    def __init__(self, forced: list[str]) -> None:
        self.drainer = self
        self.forced = forced

    def force(self, why: str) -> None:
        self.forced.append(why)


class SharedSpentTests(unittest.TestCase):
    """
    Returning-client tickets single use across workers: L{SharedSpentTable},
    L{share_spent} and the supervisor's relay.
    """

    def setUp(self) -> None:
        self.reports: list[tuple[bytes, float, str]] = []
        self.table = SharedSpentTable(4, 2, lambda *r: self.reports.append(r))

    def test_local_spend_reported(self) -> None:
        """
        A ticket spent here is recorded and reported once, with its expiry and user.
        """
        self.assertTrue(self.table.spend(b"id1", 100.0, 0.0, "alice"))
        self.assertIn(b"id1", self.table)
        self.assertEqual(self.reports, [(b"id1", 100.0, "alice")])

    def test_refused_spend_not_reported(self) -> None:
        """
        A spend the table refuses (the user's share full) is not reported: nothing was
        spent.
        """
        self.table.spend(b"a", 100.0, 0.0, "alice")
        self.table.spend(b"b", 100.0, 0.0, "alice")
        self.assertFalse(self.table.spend(b"c", 100.0, 0.0, "alice"))
        self.assertEqual([r[0] for r in self.reports], [b"a", b"b"])

    def test_spent_elsewhere_recorded_silently(self) -> None:
        """
        A ticket another worker spent is recorded here (a replay here finds it) and not
        reported back; recording it twice is harmless.
        """
        self.assertTrue(self.table.spent_elsewhere(b"x", 100.0, 0.0, "bob"))
        self.assertTrue(self.table.spent_elsewhere(b"x", 100.0, 0.0, "bob"))
        self.assertIn(b"x", self.table)
        self.assertEqual(self.reports, [])
        self.assertEqual(self.table.held_by("bob"), 1)

    def test_spent_elsewhere_bounded(self) -> None:
        """
        Relayed spends respect the table's bounds: past the limit nothing more is recorded
        (a presentation here then finds the table full and gets no lane).
        """
        for n in range(4):
            self.assertTrue(self.table.spent_elsewhere(b"%d" % n, 100.0, 0.0, f"u{n}"))
        self.assertFalse(self.table.spent_elsewhere(b"9", 100.0, 0.0, "u9"))
        self.assertEqual(len(self.table), 4)

    def test_share_spent(self) -> None:
        """
        L{share_spent} replaces a book's fresh table (keeping its bounds), keeps a table
        already shared, leaves a table that holds spends alone, and does nothing without a
        book.
        """

        class Book:
            def __init__(self, table: SpentTable) -> None:
                self.spent = table

        book = Book(SpentTable(7, 3))
        shared = share_spent(book, lambda *r: None)
        self.assertIsInstance(book.spent, SharedSpentTable)
        assert shared is not None
        self.assertEqual((shared.limit, shared.per_user), (7, 3))
        self.assertIs(share_spent(book, lambda *r: None), shared)
        used = SpentTable(7)
        used.spend(b"id", 100.0, 0.0)
        other = Book(used)
        self.assertIsNone(share_spent(other, lambda *r: None))
        self.assertIs(other.spent, used)
        self.assertIsNone(share_spent(None, lambda *r: None))

    def test_supervisor_relays_spent(self) -> None:
        """
        The supervisor relays a spent ticket to every other live worker, not back to the
        worker that spent it.
        """
        supervisor = Supervisor(make_config(workers=3), Clock(), FakeSpawner())
        supervisor.startService()
        slots = supervisor.slots
        for slot in slots:
            supervisor.worker_ready(slot)
        self.assertEqual(supervisor.worker_spent(slots[1], b"id", 50.0, "alice"), 2)
        for index in (0, 2):
            self.assertEqual(
                slots[index].channel.sent(commands.ApplySpent),
                [{"ticket_id": b"id", "expires": 50.0, "user": "alice"}],
            )
        self.assertEqual(slots[1].channel.sent(commands.ApplySpent), [])

    def test_failing_report_keeps_spend(self) -> None:
        """
        A report that raises (the supervisor's pipe broken) is logged; the ticket stays
        spent here and the presentation goes on.
        """

        def broken(*report: Any) -> None:
            raise ValueError("pipe gone")

        table = SharedSpentTable(4, None, broken)
        self.assertTrue(table.spend(b"id", 100.0, 0.0, "alice"))
        self.assertIn(b"id", table)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class SharedAdmissionReportTests(unittest.TestCase):
    """
    A block stands in its own worker whatever happens to its report.
    """

    def test_failing_report_keeps_block(self) -> None:
        """
        A report that raises is logged; the source is blocked here all the same.
        """

        def broken(*report: Any) -> None:
            raise ValueError("pipe gone")

        clock = Clock()
        admission = SharedAdmission(AdmissionPolicy(), clock, broken)
        peer = IPv4Address("TCP", "192.0.2.9", 1)
        self.assertEqual(admission.offence(peer, "early_talker"), 10.0)
        self.assertIsInstance(admission.admit(peer), Refusal)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class SupervisorReloadTests(unittest.TestCase):
    """
    L{SupervisorReloader}: the configuration is checked before any worker is asked.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.spawner = FakeSpawner({commands.Reload: {"summary": "reloaded: 1 user(s)"}})
        state = self.mktemp()
        os.makedirs(state, mode=0o700)
        self.config = attrs.evolve(make_config(), state_dir=state)
        self.supervisor = Supervisor(self.config, self.clock, self.spawner)
        self.supervisor.startService()
        for slot in self.supervisor.slots:
            self.supervisor.worker_ready(slot)
        self.users = self.mktemp()
        with open(self.users, "w") as handle:
            handle.write("")
        os.chmod(self.users, 0o600)

    def reloader(self, load: Any) -> SupervisorReloader:
        return SupervisorReloader(self.supervisor, None, {}, load=load, environ={})

    def test_bad_config_reaches_no_worker(self) -> None:
        """
        A configuration that does not load is refused (L{ReloadRefused}) and no worker is
        asked to reload; the configuration in force stays.
        """

        def broken(path: Any, overrides: Any) -> Config:
            raise ConfigError("f.toml", "workers", "must be an integer")

        failure = self.failureResultOf(self.reloader(broken).reload(), ReloadRefused)
        self.assertIn("workers", str(failure.value))
        for slot in self.supervisor.slots:
            self.assertEqual(slot.channel.sent(commands.Reload), [])
        self.assertIs(self.supervisor.in_force, self.config)

    def test_good_config_fans_out_and_names_restart_keys(self) -> None:
        """
        A configuration that loads reaches every worker, becomes the one in force, and the
        summary names the keys that need a restart (here C{workers}).
        """
        new = attrs.evolve(self.config, workers=3, users_file=self.users)

        summary = self.successResultOf(self.reloader(lambda p, o: new).reload())
        self.assertIn("2/2 workers reloaded", summary)
        self.assertIn("restart needed for: workers", summary)
        self.assertEqual(self.supervisor.in_force.users_file, self.users)
        for slot in self.supervisor.slots:
            self.assertEqual(len(slot.channel.sent(commands.Reload)), 1)

    def test_restart_only_keys_stay_from_the_start(self) -> None:
        """
        A reload that changes restart-only keys (C{admission}, C{workers}, C{listen}) and a
        reloadable one (C{users_file}) puts the new reloadable key in force but keeps the
        start's restart-only ones: a worker started later runs with the same ones as the
        others. The summary still names the keys that need a restart.
        """
        admission = attrs.evolve(self.config.admission, penalty_base=900.0)
        new = attrs.evolve(
            self.config,
            workers=3,
            admission=admission,
            listen=("tcp:7999",),
            users_file=self.users,
        )
        summary = self.successResultOf(self.reloader(lambda p, o: new).reload())
        self.assertIn("restart needed for: listen, admission, workers", summary)
        in_force = self.supervisor.in_force
        self.assertEqual(in_force.users_file, self.users)
        self.assertEqual(
            (in_force.admission, in_force.workers, in_force.listen),
            (self.config.admission, self.config.workers, self.config.listen),
        )

    def test_worker_started_after_reload_keeps_start_keys(self) -> None:
        """
        A worker spawned after a reload that changed a restart-only key in the file is told
        the start's restart-only keys: it builds with the start's admission policy (its
        share) and the file's new services, and the configuration it loads has the
        fingerprint of the one in force (so it starts).
        """
        state = os.path.abspath(self.config.state_dir)
        self.users = os.path.abspath(self.users)
        path = os.path.join(state, "netguard.toml")
        base = (
            f'state_dir = "{state}"\nusers_file = "{self.users}"\nworkers = 2\n'
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            '[services.echo]\nbackend = "builtin:echo"\nusers = ["*"]\n'
        )
        with open(path, "w") as handle:
            handle.write(base + "[admission]\npenalty_base = 600\n")
        started = load_config(path, {})
        supervisor = Supervisor(started, self.clock, FakeSpawner())
        reactor = SpawningReactor()
        spawner = Spawner(reactor, path, {}, [])  # made at the start, as make_supervisor does
        spawner.supervisor = supervisor
        with open(path, "w") as handle:
            handle.write(
                base
                + '[services.echo2]\nbackend = "builtin:echo"\nusers = ["*"]\n'
                + "[admission]\npenalty_base = 900\n"
            )
        reloader = SupervisorReloader(supervisor, path, {}, environ={})
        self.successResultOf(reloader.reload())
        spawner(supervisor.slots[0])
        spec = json.loads(reactor.spawned[0]["args"][-1])
        service = build(Clock(), spec, WorkerChannel(Clock(), 0), reactor.start_text(spec))
        config = service.factory.config
        self.assertEqual(config.admission, worker_policy(started.admission, 0, 2))
        self.assertEqual(config.admission.penalty_base, 600.0)
        self.assertEqual(sorted(config.services), ["echo", "echo2"])

    def test_start_text_changed_before_the_spawner_read_it_refused(self) -> None:
        """
        Should the file's restart-only keys change between the supervisor's start load
        and the spawner's read of its text, a worker does not start with keys the others
        do not have: its configuration misses the fingerprint of the one in force.
        """
        state = os.path.abspath(self.config.state_dir)
        path = os.path.join(state, "netguard.toml")
        base = (
            f'state_dir = "{state}"\nusers_file = "{os.path.abspath(self.users)}"\n'
            'workers = 2\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
            '[services.echo]\nbackend = "builtin:echo"\nusers = ["*"]\n'
        )
        with open(path, "w") as handle:
            handle.write(base + "[admission]\npenalty_base = 600\n")
        supervisor = Supervisor(load_config(path, {}), self.clock, FakeSpawner())
        with open(path, "w") as handle:
            handle.write(base + "[admission]\npenalty_base = 900\n")
        reactor = SpawningReactor()
        spawner = Spawner(reactor, path, {}, [])
        spawner.supervisor = supervisor
        spawner(supervisor.slots[0])
        spec = json.loads(reactor.spawned[0]["args"][-1])
        text = reactor.start_text(spec)
        error = self.assertRaises(
            WorkerStartError, build, Clock(), spec, WorkerChannel(Clock(), 0), text
        )
        self.assertIn("configuration file changed", str(error))

    def test_start_text_read_to_its_end_and_bounded(self) -> None:
        """
        The worker reads the start configuration's text to its end and closes the
        descriptor; a text of exactly L{MAX_FILE_BYTES} is read whole, a longer one only to
        one byte past the bound, which the loader refuses as too large.
        """
        work = self.mktemp()
        os.makedirs(work)
        path = os.path.join(work, "netguard.toml")
        for size, kept in ((MAX_FILE_BYTES, MAX_FILE_BYTES), (4 * MAX_FILE_BYTES, None)):
            with open(path, "wb") as handle:
                handle.write(b"#" * size)
            fd = os.open(path, os.O_RDONLY)
            text = read_start_text(fd)
            self.assertRaises(OSError, os.fstat, fd)
            self.assertEqual(len(text), MAX_FILE_BYTES + 1 if kept is None else kept)
        error = self.assertRaises(ConfigError, load_config, path, {}, text=text)
        self.assertIn("larger than", str(error))

    def test_worker_command_line_holds_no_configuration_values(self) -> None:
        """
        The worker's command line (readable by any local user in C{/proc}) holds its
        position, the file's path, the overrides, the fingerprint and descriptor numbers:
        no pickle and no value from the file. The start configuration's text goes over a
        pipe of the worker's own, written in full and closed; without a file there is none.
        """
        state = os.path.abspath(self.config.state_dir)
        path = os.path.join(state, "netguard.toml")
        text = (
            f'state_dir = "{state}"\nusers_file = "{os.path.abspath(self.users)}"\n'
            'workers = 2\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
            '[services.echo]\nbackend = "builtin:echo"\nusers = ["*"]\n'
            "[admission]\npenalty_base = 613.5\n"
        )
        with open(path, "w") as handle:
            handle.write(text)
        supervisor = Supervisor(load_config(path, {}), self.clock, FakeSpawner())
        reactor = SpawningReactor()
        spawner = Spawner(reactor, path, {"server_name": "gw"}, [])
        spawner.supervisor = supervisor
        spawner(supervisor.slots[1])
        line = reactor.spawned[0]["args"][-1]
        spec = json.loads(line)
        self.assertEqual(
            spec,
            {
                "index": 1,
                "count": 2,
                "config": path,
                "overrides": {"server_name": "gw"},
                "fingerprint": spec["fingerprint"],
                "start_fd": 4,
                "listeners": [],
            },
        )
        self.assertRegex(spec["fingerprint"], "^[0-9a-f]{64}$")
        self.assertNotIn("613.5", line)
        self.assertNotIn("echo", line)
        self.assertEqual(reactor.start_text(spec), text.encode())
        self.assertEqual(sorted(reactor.spawned[0]["fds"]), [0, 1, 2, 3, 4])

        defaults = Spawner(reactor, None, {}, [])
        defaults.supervisor = supervisor
        defaults(supervisor.slots[0])
        spec = json.loads(reactor.spawned[1]["args"][-1])
        self.assertIsNone(spec["start_fd"])
        self.assertEqual(sorted(reactor.spawned[1]["fds"]), [0, 1, 2, 3])
        self.assertEqual(reactor.spawned[1]["written"], {})

    def test_control_reload_refused_code(self) -> None:
        """
        Through the control socket a refused reload is C{RELOAD_REFUSED} with the reason.
        """

        def broken(path: Any, overrides: Any) -> Config:
            raise ConfigError("f.toml", "listen", "bad")

        self.supervisor.reloader = self.reloader(broken)
        control = SupervisorControl(self.supervisor, self.clock)
        failure = self.failureResultOf(control.reload(), ControlError)
        self.assertEqual(failure.value.code, "RELOAD_REFUSED")

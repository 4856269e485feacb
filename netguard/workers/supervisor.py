# -*- test-case-name: tests.test_workers,tests.integration.test_workers_real -*-
"""
The supervisor of C{workers = N}: the process C{twistd} starts holds the instance lock, the
control socket, the metrics listener, the systemd notifications and every listening socket,
and runs N worker processes (L{netguard.worker}) that inherit the sockets and accept on them.

It restarts a worker that exits (with backoff, never touching the others) or that does not
serve within L{START_TIMEOUT}, relays penalty blocks and spent tickets between workers and
keeps those in force (L{netguard.workers.replay}) to send to a worker before it serves, fans
SIGHUP and C{ctl reload} out to every worker, drains them all on SIGTERM, and answers
C{ctl status} and the metrics with the workers' figures combined (L{aggregate}).
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any, Final

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from netguard.log import escape
from netguard.log_file import FileLogSink
from netguard.ops.drain import StopRequests
from netguard.ops.notify import (
    Watchdog,
    notify_ready,
    notify_stopping,
)
from netguard.ops.reload import ReloadRefused
from netguard.ops.startup import created_paths, start_privileged
from netguard.refusal_log import RefusalLog
from netguard.stats import HistogramSnapshot
from netguard.workers import commands
from netguard.workers.figures import (
    aggregate,
    worker_row,
)
from netguard.workers.penalty_rounds import second_round
from netguard.workers.replay import BlockBook, ReplayCursor, SpentBook
from netguard.workers.slots import (
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    WAITING,
    WorkerSlot,
    next_delay,
)

log = Logger()

#: Seconds a starting worker may stay silent before it is killed and, as any worker that
#: exits, restarted: from its start to L{commands.Ready}, from there (or each answered
#: L{commands.Replay} batch) to its next answer, and from the last to its L{commands.Serve}
#: answer. A long replay that the worker answers steadily is never cut short.
START_TIMEOUT: Final = 60.0

#: Seconds a worker has to answer a query (status, penalties) before it is left out.
QUERY_TIMEOUT: Final = 5.0

#: Seconds after the drain's grace period before a worker that has not exited is killed.
EXIT_MARGIN: Final = 10.0

#: How often the figures of the metrics endpoint are gathered from the workers.
METRICS_POLL: Final = 1.0


def check_readable_after_drop(path: str, uid: int) -> None:
    """
    Refuse to start when the workers could not read the Redis password file: they start
    after the privilege drop (C{twistd --uid}) and read it as that user, and the file may
    give no permission to group or others, so it must belong to that user. Without this
    check every worker would exit at its start and be restarted with backoff for ever.

    @param path: C{[shared] password_file}.
    @param uid: the user the workers run as.
    @raise SystemExit: naming the file, its owner and the user, when they differ. A file
        that cannot be examined is left to the worker, which names the reason.
    """
    try:
        owner = os.stat(path).st_uid
    except OSError:
        return
    if owner != uid:
        raise SystemExit(
            f"netguard: [shared] password_file={escape(path)} belongs to uid {owner}, but the "
            f"workers read it after dropping privileges, as uid {uid}; give it to that "
            "user (chown, mode 0600)"
        )


class Supervisor(MultiService):
    """
    Runs and watches N workers. Built by L{netguard.service.make_service} when
    C{workers > 1}; the listening sockets are opened by then (L{listeners}).

    @ivar slots: the worker positions.
    @ivar stopping: whether a stop has begun (no restart is scheduled from then on).
    @ivar heartbeat_on: the heartbeat state every worker is told (and a restarted one too).
    """

    def __init__(
        self,
        config: Any,
        clock: Any,
        spawn: Callable[[WorkerSlot], Any],
        listeners: list[Any] | None = None,
        instance_lock: Any = None,
    ) -> None:
        """
        @param config: the validated configuration (its C{workers} is N).
        @param clock: the reactor (a L{twisted.internet.task.Clock} in tests).
        @param spawn: starts a worker for a slot and returns its handle (with C{pid},
            C{channel} and C{signal(signum)}); see L{netguard.workers.spawning}.
        @param listeners: the shared listening sockets, closed when the supervisor stops.
        @param instance_lock: the held L{netguard.ops.lock.InstanceLock}.
        """
        super().__init__()
        self.config = config
        self.clock = clock
        self.spawn = spawn
        self.listeners = listeners or []
        self.instance_lock = instance_lock
        #: The configuration last loaded (at start, or by the last reload): a worker that
        #: starts must load the same (L{netguard.workers.spawning.config_fingerprint}).
        self.in_force = config
        self.slots = [WorkerSlot(index) for index in range(config.workers)]
        self.stopping = False
        #: SIGTERM, SIGINT and C{ctl drain}: the first stops (every worker drains), a later
        #: signal has every worker cut what it still has.
        self.stop_requests = StopRequests(clock, self.force)
        self.heartbeat_on = bool(config.ops.heartbeat)
        self.started_at = clock.seconds()
        self.reloader: Any = None
        self.run_as: tuple[int, int] | None = None
        self.log_sink = FileLogSink.from_config(config.log)
        self.watchdog = Watchdog(clock)
        self.watchdog.setServiceParent(self)
        self._exited: list[Deferred[None]] = []
        self._kill_timer: Any = None
        self._metrics_cache: list[Mapping[str, Any]] = []
        self._metrics_loop: LoopingCall | None = None
        #: Bounds the lines of shared (and refused) blocks (L{worker_blocked}).
        self.block_log = RefusalLog(log, clock)
        #: The blocks in force and the spent tickets, for a worker that starts.
        self.blocks = BlockBook()
        self.spent = SpentBook()

    # -- starting and restarting ---------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """
        Start the log file and the child services (control socket, metrics) while still
        privileged, as the single-process gateway does.
        """
        if self.run_as is not None and self.config.shared.password_file:
            check_readable_after_drop(self.config.shared.password_file, self.run_as[0])
        start_privileged(self, super().privilegedStartService, self.config.state_dir)

    def created_paths(self) -> list[str]:
        """
        What netguard creates in the state directory (L{netguard.ops.startup.created_paths}),
        with the unix listeners.
        """
        sockets = (getattr(listener.port, "port", None) for listener in self.listeners)
        return created_paths(
            self.config,
            self.instance_lock,
            [os.fsdecode(name) for name in sockets if isinstance(name, str | bytes)],
        )

    def startService(self) -> None:
        """
        Start every worker, and the metrics poll when a metrics listener is configured.
        """
        self.log_sink.start()
        for warning in self.config.warnings:
            log.warn("configuration: {detail}", event="config.warning", detail=warning)
        super().startService()
        for slot in self.slots:
            self.start_worker(slot)
        if self.config.ops.metrics_listen:
            self._metrics_loop = LoopingCall(self._poll_metrics)
            self._metrics_loop.clock = self.clock
            self._metrics_loop.start(METRICS_POLL, now=False)
        log.info(
            "netguard started: {count} listener(s), {workers} workers, services {services}",
            event="gateway.start",
            count=len(self.listeners),
            workers=len(self.slots),
            services=",".join(sorted(dict(self.config.services))),
        )

    def start_worker(self, slot: WorkerSlot) -> None:
        """
        Start a process for C{slot} (now).
        """
        slot.timer = None
        if self.stopping:
            return
        slot.started_at = self.clock.seconds()
        slot.state = STARTING
        try:
            handle = self.spawn(slot)
        except OSError as error:
            log.error(
                "worker {worker} could not be started: {error}",
                event="worker.spawn_failed",
                worker=slot.index,
                error=str(error),
            )
            self.worker_ended(slot, (None, None))
            return
        slot.handle = handle
        slot.pid = handle.pid
        slot.channel = handle.channel
        slot.cancel_deadline()
        slot.progress_at = self.clock.seconds()
        slot.deadline = self.clock.callLater(START_TIMEOUT, self.start_overdue, slot, handle)

    def start_overdue(self, slot: WorkerSlot, handle: Any) -> None:
        """
        The start deadline of the worker started as C{handle}: if it made progress since
        the deadline was set (L{WorkerSlot.progress_at}), wait until L{START_TIMEOUT} after
        that progress (one timer, moved only when it fires); else it was silent for
        L{START_TIMEOUT}: kill it; its exit is then handled (and restarted) as any other.
        """
        slot.deadline = None
        if slot.handle is not handle or slot.state != STARTING:
            return
        left = slot.progress_at + START_TIMEOUT - self.clock.seconds()
        if left > 0:
            slot.deadline = self.clock.callLater(left, self.start_overdue, slot, handle)
            return
        log.warn(
            "worker {worker} (pid {pid}) silent {timeout:.0f}s while starting; killing it",
            event="worker.start_timeout",
            worker=slot.index,
            pid=slot.pid,
            timeout=START_TIMEOUT,
        )
        handle.signal(signal.SIGKILL)

    def worker_ready(self, slot: WorkerSlot) -> None:
        """
        A worker is built and waits to serve: send it the blocks in force and the spent
        tickets in batches (L{replay_next}), then L{commands.Serve}; it serves once it
        answers (L{worker_serving}). Each batch goes once the one before is answered, so
        the worker has applied the state before it adopts its listeners.
        """
        if slot.state != STARTING or slot.channel is None:
            return
        cursor = ReplayCursor(self.blocks, self.spent, self.clock.seconds())
        self.replay_next(slot, slot.channel, cursor)

    def replay_next(self, slot: WorkerSlot, channel: Any, cursor: ReplayCursor) -> None:
        """
        The starting worker on C{channel} answered (its C{Ready} or the last batch): note
        its progress and send the next batch of C{cursor} (L{commands.Replay}: blocks with
        the seconds left, at most C{penalty_max} in force, and points decayed to now), or
        L{commands.Serve} once all were sent. The reactor serves others between batches.
        """
        if slot.channel is not channel or slot.state != STARTING:
            return
        now = self.clock.seconds()
        slot.progress_at = now
        policy = self.in_force.admission
        batch = cursor.next_batch(now, policy.penalty_decay, policy.penalty_max)
        if batch is None:
            serving = channel.callRemote(commands.Serve)
            serving.addCallbacks(
                lambda _: self.worker_serving(slot, channel),
                lambda failure: self._serve_failed(slot, channel, failure),
            )
            return
        blocks, spent = batch
        sent = channel.callRemote(commands.Replay, blocks=blocks, spent=spent)
        sent.addCallbacks(
            lambda _: self.replay_next(slot, channel, cursor),
            lambda failure: self._serve_failed(slot, channel, failure),
        )

    def _serve_failed(self, slot: WorkerSlot, channel: Any, failure: Failure) -> None:
        """
        The worker could not start serving (or died first): it exits by itself; one that
        would not is killed at its start deadline.
        """
        if slot.channel is channel and slot.state == STARTING:
            log.warn(
                "worker {worker} (pid {pid}) could not start serving: {reason}",
                event="worker.serve_failed",
                worker=slot.index,
                pid=slot.pid,
                reason=failure.getErrorMessage(),
            )

    def worker_serving(self, slot: WorkerSlot, channel: Any) -> None:
        """
        A worker adopted every listener: it serves. Tell it the heartbeat state; tell the
        service manager we are ready once every worker is.
        """
        if slot.state != STARTING or slot.channel is not channel:
            return
        slot.cancel_deadline()
        slot.state = RUNNING
        log.info(
            "worker {worker} serving (pid {pid})",
            event="worker.started",
            worker=slot.index,
            pid=slot.pid,
            restarts=slot.restarts,
        )
        if self.heartbeat_on and slot.channel is not None:
            _quiet(slot.channel.callRemote(commands.Heartbeat, on=True))
        if all(s.state == RUNNING for s in self.slots):
            notify_ready(f"{len(self.listeners)} listener(s), {len(self.slots)} workers")

    def worker_ended(self, slot: WorkerSlot, status: tuple[int | None, int | None]) -> None:
        """
        A worker process exited (C{status}: exit code, signal). Log it, and unless the
        supervisor is stopping, restart it after the backoff delay.
        """
        now = self.clock.seconds()
        lived = now - slot.started_at
        pid = slot.pid
        slot.pid = slot.handle = slot.channel = None
        slot.cancel_deadline()
        code, signum = status
        if self.stopping:
            slot.state = STOPPED
            log.info(
                "worker {worker} (pid {pid}) stopped",
                event="worker.stopped",
                worker=slot.index,
                pid=pid,
                exit_code=code,
                signal=signum,
            )
            self._check_exited()
            return
        wait, slot.delay = next_delay(slot.delay, lived)
        slot.state = WAITING
        slot.restarts += 1
        log.warn(
            "worker {worker} (pid {pid}) exited (code {exit_code}, signal {signal}) after "
            "{lived:.1f}s; restarting in {restart_in}s",
            event="worker.exited",
            worker=slot.index,
            pid=pid,
            exit_code=code,
            signal=signum,
            lived=round(lived, 3),
            restart_in=wait,
        )
        slot.timer = self.clock.callLater(wait, self.start_worker, slot)

    # -- penalties -----------------------------------------------------------------------------

    def worker_blocked(self, slot: WorkerSlot, source: str, seconds: float, points: float) -> int:
        """
        A worker's offences blocked C{source}: tell every other live worker, the block at
        most C{penalty_max} long (a block that is not a finite positive length with finite
        points at least 0 is refused and told to no one). Logged through L{block_log}: the
        first blocks of each source in an interval one by one, the rest in a summary, so a
        many-source flood logs a bounded number of lines.

        @return: how many workers were told.
        """
        if not self.worker_learnt(slot, source, seconds, points):
            return 0
        seconds = min(seconds, self.in_force.admission.penalty_max)
        told = self._tell_others(
            slot, commands.ApplyBlock, source=source, seconds=seconds, points=points
        )
        if self.block_log.note(source, "shared", "worker.penalty_shared"):
            log.info(
                "block of {source} for {seconds:.0f}s by worker {worker} shared with "
                "{told} other(s)",
                event="worker.penalty_shared",
                source=source,
                seconds=round(seconds, 1),
                worker=slot.index,
                told=told,
            )
        return told

    def worker_learnt(self, slot: WorkerSlot, source: str, seconds: float, points: float) -> bool:
        """
        Keep a block a worker reported (its own, or one it learnt from Redis, which every
        worker hears itself and is not relayed) for a worker that starts later, at most the
        C{penalty_max} in force long; one that is not a finite positive length with finite
        points at least 0 is refused (C{worker.block_refused}, through L{block_log}).

        @return: whether the block was taken.
        """
        if not (math.isfinite(seconds) and seconds > 0 and math.isfinite(points) and points >= 0):
            if self.block_log.note(source, "bad-block", "worker.block_refused"):
                log.warn(
                    "block of {source} by worker {worker} refused: {seconds} s, {points} points",
                    event="worker.block_refused",
                    source=source,
                    worker=slot.index,
                    seconds=repr(seconds),
                    points=repr(points),
                )
            return False
        policy = self.in_force.admission
        now = self.clock.seconds()
        seconds = min(seconds, policy.penalty_max)
        limit = policy.max_tracked_sources
        self.blocks.record(source, seconds, points, now, policy.penalty_decay, limit)
        return True

    def worker_spent(self, slot: WorkerSlot, ticket_id: bytes, expires: float, user: str) -> int:
        """
        A worker spent a returning-client ticket: tell every other live worker, so a
        replay there is refused, and keep it (until its expiry, at most C{max_spent} of
        them) for a worker that starts later.

        @return: how many workers were told.
        """
        if math.isfinite(expires):
            limit = self.in_force.tickets.max_spent
            self.spent.record(ticket_id, expires, user, self.clock.seconds(), limit)
        return self._tell_others(
            slot, commands.ApplySpent, ticket_id=ticket_id, expires=expires, user=user
        )

    def _tell_others(self, slot: WorkerSlot, command: Any, **arguments: Any) -> int:
        """
        Send C{command} to every live worker but C{slot}'s, without waiting for answers.

        @return: how many workers were told.
        """
        told = 0
        for other in self.slots:
            if other is slot or other.channel is None:
                continue
            _quiet(other.channel.callRemote(command, **arguments))
            told += 1
        return told

    # -- queries and fan-out -------------------------------------------------------------------

    def live(self) -> list[WorkerSlot]:
        """
        The slots whose process is running (ready or not) and reachable.
        """
        return [s for s in self.slots if s.channel is not None and s.state in (STARTING, RUNNING)]

    def ask_all(self, command: type[amp.Command], **kwargs: Any) -> Deferred[list[Any]]:
        """
        Send C{command} to every live worker.

        @return: a L{Deferred} firing with C{(slot, response or Failure)} per worker; a
            worker that does not answer within L{QUERY_TIMEOUT} gets a failure.
        """
        slots = self.live()
        calls = []
        for slot in slots:
            call = slot.channel.callRemote(command, **kwargs)
            call.addTimeout(QUERY_TIMEOUT, self.clock)
            calls.append(call)
        gathered = DeferredList(calls, consumeErrors=True)
        return gathered.addCallback(
            lambda results: [
                (slot, value) for slot, (_, value) in zip(slots, results, strict=True)
            ]
        )

    def status(self) -> Deferred[dict[str, Any]]:
        """
        The gateway's figures: the workers' combined (L{aggregate}), the supervisor's own
        (pid, uptime, listeners, heartbeat, draining), and one line per worker under
        C{workers}.
        """

        def combine(results: list[tuple[WorkerSlot, Any]]) -> dict[str, Any]:
            now = self.clock.seconds()
            answered = [r["figures"] for _, r in results if isinstance(r, dict)]
            figures = aggregate(answered)
            rows = []
            for slot in self.slots:
                row = slot.summary(now)
                for s, r in results:
                    if s is slot:
                        if isinstance(r, dict):
                            row.update(worker_row(r["figures"]))
                        else:
                            row["answer"] = "none"
                rows.append(row)
            figures["workers"] = rows
            figures["workers_running"] = sum(1 for s in self.slots if s.state == RUNNING)
            figures["worker_restarts"] = sum(s.restarts for s in self.slots)
            figures["pid"] = os.getpid()
            figures["uptime"] = round(now - self.started_at, 3)
            figures["heartbeat"] = self.heartbeat_on
            figures["draining"] = self.stopping or bool(figures.get("draining"))
            figures["listeners"] = [listener.description for listener in self.listeners]
            return figures

        return self.ask_all(commands.Status).addCallback(combine)

    def _poll_metrics(self) -> Deferred[None]:
        def keep(results: list[tuple[WorkerSlot, Any]]) -> None:
            self._metrics_cache = [r["figures"] for _, r in results if isinstance(r, dict)]

        return self.ask_all(commands.MetricsFigures).addCallback(keep)

    def metrics_figures(self) -> dict[str, Any]:
        """
        The figures of the metrics endpoint: the workers' figures as last gathered (at most
        L{METRICS_POLL} seconds old), summed, with the set-up histogram rebuilt.
        """
        figures = aggregate(self._metrics_cache)
        setup = figures.get("session_setup")
        if isinstance(setup, Mapping):
            figures["session_setup"] = HistogramSnapshot(
                tuple((float(b), int(c)) for b, c in setup.get("buckets", ())),
                int(setup.get("count", 0)),
                float(setup.get("total", 0.0)),
            )
        figures["worker_restarts"] = sum(s.restarts for s in self.slots)
        figures["uptime"] = round(self.clock.seconds() - self.started_at, 3)
        figures["draining"] = self.stopping
        return figures

    def toggle(self, by: str = "signal") -> bool:
        """
        Switch every worker's heartbeat the other way (SIGUSR1 to the supervisor).
        """
        return self.set_heartbeat(not self.heartbeat_on, by)

    def set_heartbeat(self, on: bool, by: str) -> bool:
        """
        Switch every worker's heartbeat (and that of workers started later).
        """
        self.heartbeat_on = on
        log.info(
            "heartbeat of every worker switched {state} by {by}",
            event="heartbeat.on" if on else "heartbeat.off",
            state="on" if on else "off",
            by=by,
        )
        for slot in self.live():
            _quiet(slot.channel.callRemote(commands.Heartbeat, on=on))
        return on

    def reload_workers(self) -> Deferred[str]:
        """
        Tell every live worker to reload (the configuration was checked by the caller).

        @return: a L{Deferred} firing with a one-line summary, or failing with
            L{ReloadIncomplete} (naming each worker that did not answer within
            L{QUERY_TIMEOUT} or failed) when not every worker reloaded.
        """

        def summarise(results: list[tuple[WorkerSlot, Any]]) -> str:
            done = [r["summary"] for _, r in results if isinstance(r, dict)]
            missed = [_reload_missed(slot, r) for slot, r in results if not isinstance(r, dict)]
            summary = f"{len(done)}/{len(results)} workers reloaded"
            if done:
                summary += f"; {done[0]}"
            if missed:
                summary += "; " + "; ".join(missed)
                log.warn("{summary}", event="worker.reload_incomplete", summary=summary)
                raise ReloadIncomplete(summary)
            log.info("{summary}", event="worker.reloaded", summary=summary)
            return summary

        return self.ask_all(commands.Reload).addCallback(summarise)

    def penalties(self, top: int, source: str | None = None) -> Deferred[dict[str, Any]]:
        """
        The first C{top} penalised sources of the host (overlapping C{source}, if given), in
        two rounds: every worker sends its first C{top}; then each worker that left rows
        out is asked the figures of the other workers' candidates it did not list
        (L{second_round}), and all are merged: each listed
        row exact, the answer C{approximate} when the list itself may not be the true first
        C{top}. No worker sends more than C{top} rows or is asked more than the candidates,
        so the answer stays bounded however many sources the workers track.
        """
        kwargs: dict[str, Any] = {"top": top}
        if source is not None:
            kwargs["source"] = source
        return self.ask_all(commands.Penalties, **kwargs).addCallback(
            second_round, top, self.clock, QUERY_TIMEOUT
        )

    def clear_penalties(self, source: str | None) -> Deferred[int]:
        """
        Forget penalties in every worker, and the blocks kept for a worker that starts.

        @param source: a source key as C{penalties} lists it, an address or a network
            (every key the listing filter shows for it is forgotten), or L{None} for all.
        @return: a L{Deferred} firing with the most entries one worker removed.
        """
        kwargs = {} if source is None else {"source": source}
        self.blocks.forget(source)
        return self.ask_all(commands.ClearPenalties, **kwargs).addCallback(
            lambda results: max([r["cleared"] for _, r in results if isinstance(r, dict)] or [0])
        )

    # -- stopping ------------------------------------------------------------------------------

    def stopService(self) -> Deferred[Any]:
        """
        Stop: no more restarts, close the shared listening sockets (the workers close their
        copies as they drain), tell every worker to drain, wait for every worker to exit
        (the drain's grace period plus L{EXIT_MARGIN}, then the rest are killed), stop the
        control socket and metrics, release the lock.
        """
        self.stopping = True
        notify_stopping()
        self.block_log.flush()
        if self._metrics_loop is not None and self._metrics_loop.running:
            self._metrics_loop.stop()
        for slot in self.slots:
            if slot.timer is not None and slot.timer.active():
                slot.timer.cancel()
            slot.timer = None
            slot.cancel_deadline()
            if slot.state == WAITING:
                slot.state = STOPPED
        closing = [maybeDeferred(listener.close) for listener in self.listeners]
        log.info(
            "draining {count} worker(s), grace {grace}s",
            event="shutdown.drain",
            count=len(self.live()),
            grace=self.config.ops.shutdown_grace,
        )
        for slot in self.live():
            slot.state = STOPPING
            _quiet(slot.channel.callRemote(commands.Drain, force=False))
        exited: Deferred[None] = Deferred()
        self._exited.append(exited)
        self._kill_timer = self.clock.callLater(
            self.config.ops.shutdown_grace + EXIT_MARGIN, self._kill_remaining
        )
        self._check_exited()
        done: Deferred[Any] = DeferredList([*closing, exited], consumeErrors=True)
        done.addCallback(lambda _: maybeDeferred(super(Supervisor, self).stopService))
        done.addCallback(self._stopped)
        done.addBoth(self.log_sink.stop)
        return done

    def force(self, why: str) -> None:
        """
        A second stop signal: every worker still running or draining closes what it still
        has at once.
        """
        for slot in self.slots:
            if slot.channel is not None and slot.state in (STARTING, RUNNING, STOPPING):
                _quiet(slot.channel.callRemote(commands.Drain, force=True))

    def _kill_remaining(self) -> None:
        self._kill_timer = None
        for slot in self.slots:
            if slot.handle is not None:
                log.warn(
                    "worker {worker} (pid {pid}) did not exit in time; killing it",
                    event="worker.killed",
                    worker=slot.index,
                    pid=slot.pid,
                )
                slot.handle.signal(signal.SIGKILL)

    def _check_exited(self) -> None:
        if not self.stopping or any(s.handle is not None for s in self.slots):
            return
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        self._kill_timer = None
        waiters, self._exited = self._exited, []
        for waiter in waiters:
            waiter.callback(None)

    def _stopped(self, _: Any) -> None:
        log.info(
            "netguard stopped: {workers} workers",
            event="shutdown.done",
            workers=len(self.slots),
            restarts=sum(s.restarts for s in self.slots),
        )
        if self.instance_lock is not None:
            self.instance_lock.release()


class ReloadIncomplete(ReloadRefused):
    """
    A reload reached only some workers: the others did not answer in time, or failed. The
    configuration was checked and is in force in those that answered; the message is the
    summary naming each of the others.
    """


def _reload_missed(slot: WorkerSlot, failure: Failure) -> str:
    """
    How a worker missed a reload, in words: no answer within L{QUERY_TIMEOUT} (stopped,
    hung) or the failure it sent.
    """
    if failure.check(defer.TimeoutError):
        return f"worker {slot.index} did not answer within {QUERY_TIMEOUT:g} s"
    return f"worker {slot.index} refused: {failure.getErrorMessage()}"


def _quiet(d: Deferred[Any] | None) -> None:
    """
    Fire-and-forget a remote call: a worker gone in the meantime is no error here (its exit
    is logged by the supervisor). A command that wants no answer gives L{None}.
    """
    if d is not None:
        d.addErrback(_ignore)


def _ignore(failure: Failure) -> None:
    return None

# -*- test-case-name: tests.test_workers,tests.integration.test_workers_real -*-
"""
The supervisor's answers to the operator: SIGHUP and C{netguard ctl reload}
(L{SupervisorReloader}), and every command of the control socket (L{SupervisorControl}),
each reaching every worker through the L{netguard.workers.supervisor.Supervisor}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from netguard.auth.users import UsersFileError, UserStore, load_mock_key
from netguard.config import ConfigError, load_config
from netguard.ops.control import ControlError
from netguard.ops.notify import monotonic_usec, notify_ready, notify_reloading
from netguard.ops.reload import RESTART_ONLY, ReloadRefused
from netguard.workers.spawning import keep_restart_only
from netguard.workers.supervisor import ReloadIncomplete, Supervisor

log = Logger()


class SupervisorReloader:
    """
    SIGHUP and C{ctl reload} for a supervisor: check the configuration and the users file
    here, then have every worker reload (each applies it as the single-process gateway
    does). A configuration that does not load is refused without reaching any worker.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        path: str | None,
        overrides: Mapping[str, object],
        load: Callable[..., Any] = load_config,
        environ: Mapping[str, str] | None = None,
        now_usec: Callable[[], int] = monotonic_usec,
    ) -> None:
        self.supervisor = supervisor
        self.path = path
        self.overrides = dict(overrides)
        self._load = load
        self._environ = environ
        self._now_usec = now_usec

    def reload(self) -> Deferred[str]:
        """
        Reload every worker, between C{RELOADING=1} and C{READY=1} to the service manager.

        @return: a L{Deferred} firing with a one-line summary, or failing with
            L{ReloadRefused} when the new configuration or users file is unusable, or with
            L{ReloadIncomplete} when a worker did not reload (no answer in time, a failure).
        """
        notify_reloading(self._environ, self._now_usec)
        started = self.supervisor.config
        try:
            config = self._load(self.path, self.overrides)
            UserStore.load(config.users_file, mock_key=load_mock_key(started.state_dir))
        except (ConfigError, UsersFileError, OSError, ValueError) as error:
            log.warn("reload refused: {reason}", event="reload.refused", reason=str(error))
            notify_ready("reload refused; the old configuration stays", self._environ)
            return fail(ReloadRefused(str(error)))
        pending = [k for k in RESTART_ONLY if getattr(started, k) != getattr(config, k)]
        # The restart-only keys stay those of the start: a worker started later (after a
        # crash) must run with the same ones as the others.
        self.supervisor.in_force = keep_restart_only(config, started)

        def done(summary: str) -> str:
            if pending:
                summary += f"; restart needed for: {', '.join(pending)}"
            notify_ready("reloaded", self._environ)
            return summary

        def incomplete(failure: Failure) -> Failure:
            failure.trap(ReloadIncomplete)
            notify_ready("reload incomplete", self._environ)
            return failure

        return self.supervisor.reload_workers().addCallbacks(done, incomplete)


class SupervisorControl:
    """
    The supervisor's side of the control socket (L{netguard.ops.control.ControlCommands}):
    every command reaches every worker.
    """

    def __init__(self, supervisor: Supervisor, reactor: Any) -> None:
        self.supervisor = supervisor
        self.reactor = reactor

    def status(self) -> Any:
        return self.supervisor.status()

    def heartbeat(self, on: bool) -> bool:
        return self.supervisor.set_heartbeat(on, by="control")

    def reload(self) -> Any:
        reloader = self.supervisor.reloader
        if reloader is None:
            raise ControlError("NOT_AVAILABLE", "this gateway was not started from a config")

        def refused(failure: Failure) -> None:
            if failure.check(ReloadIncomplete):
                raise ControlError("RELOAD_INCOMPLETE", str(failure.value))
            failure.trap(ReloadRefused)
            raise ControlError("RELOAD_REFUSED", str(failure.value))

        return maybeDeferred(reloader.reload).addErrback(refused)

    def drain(self) -> str:
        """
        The first stop request stops the supervisor (every worker drains, as on SIGTERM,
        and a SIGTERM after it cuts at once); a later one changes nothing and says so.
        """
        count = len(self.supervisor.live())
        grace = self.supervisor.config.ops.shutdown_grace
        if not self.supervisor.stop_requests.request():
            return f"already draining: {count} worker(s) left, grace {grace}s"
        return f"draining {count} worker(s), grace {grace}s"

    def penalties(self, top: int, source: str | None) -> Any:
        return self.supervisor.penalties(top, source)

    def clear_penalties(self, source: str | None) -> Any:
        return self.supervisor.clear_penalties(source)

# -*- test-case-name: tests.integration.test_reload -*-
"""
Live reload (SIGHUP, C{netguard ctl reload}): read the configuration, the users file and
the ticket key again and re-read TLS certificates, without dropping a live connection.

A reload is all or nothing for the configuration and the users: an invalid new
configuration or users file is refused, logged, and the old one stays in force. TLS
identities reload one by one; a bad new certificate keeps that listener's old one (and is
logged by L{netguard.tls}). Settings that only a restart can change (listeners, the state
directory, the control socket) are reported, not applied.

The service manager is told: C{RELOADING=1} (with C{MONOTONIC_USEC=}) before a reload and
C{READY=1} after it, applied or refused (L{netguard.ops.notify}; C{Type=notify-reload}).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from netguard.auth.users import UsersFileError, UserStore, load_mock_key
from netguard.config import ConfigError, load_config
from netguard.ops.notify import monotonic_usec, notify_ready, notify_reloading
from netguard.tickets import load_ticket_key
from netguard.tls import TLSConfigError

log = Logger()

#: Keys whose change needs a restart: they are bound when the gateway starts.
RESTART_ONLY = (
    "listen",
    "tls_listen",
    "state_dir",
    "ops",
    "admission",
    "overload",
    "log",
    "workers",
    "shared",
)


class ReloadRefused(Exception):
    """
    The new configuration or users file is invalid; the old one stays in force.
    """


class Reloader:
    """
    Reload the configuration a gateway was started from.

    @ivar path: the configuration file (L{None}: built-in defaults).
    @ivar overrides: the command-line overrides, applied again on every reload.
    """

    def __init__(
        self,
        service: Any,
        path: str | None,
        overrides: Mapping[str, object],
        load: Callable[..., Any] = load_config,
        environ: Mapping[str, str] | None = None,
        now_usec: Callable[[], int] = monotonic_usec,
    ):
        """
        @param environ: where C{NOTIFY_SOCKET} is read; L{os.environ} when L{None}.
        @param now_usec: C{CLOCK_MONOTONIC} in microseconds, for C{MONOTONIC_USEC=}.
        """
        self.service = service
        self.path = path
        self.overrides = dict(overrides)
        self._load = load
        self._environ = environ
        self._now_usec = now_usec
        #: What the running process was started with: restart-only keys compare to this.
        self.started_with = service.factory.config

    def reload(self) -> str:
        """
        Reload now, between C{RELOADING=1} and C{READY=1} to the service manager.

        @return: a one-line summary for the operator.
        @raise ReloadRefused: with the reason, when the new configuration or users file is
            unusable (nothing was changed).
        """
        notify_reloading(self._environ, self._now_usec)
        status = "reload failed; the old configuration stays"
        try:
            summary = self._reload()
            status = "reloaded"
            return summary
        except ReloadRefused:
            status = "reload refused; the old configuration stays"
            raise
        finally:
            notify_ready(status, self._environ)

    def _reload(self) -> str:
        factory = self.service.factory
        try:
            config = self._load(self.path, self.overrides)
            # The key of the running gateway: unknown names keep their salts.
            key = load_mock_key(self.started_with.state_dir)
            users = UserStore.load(config.users_file, mock_key=key)
            # Read again: a replaced (or deleted, then made anew) key revokes every ticket.
            ticket_key = load_ticket_key(self.started_with.state_dir)
        except (ConfigError, UsersFileError, OSError, ValueError) as error:
            log.warn("reload refused: {reason}", event="reload.refused", reason=str(error))
            raise ReloadRefused(str(error)) from None
        started = self.started_with
        pending = [key for key in RESTART_ONLY if getattr(started, key) != getattr(config, key)]
        factory.apply_config(config, users, ticket_key=ticket_key)
        tls_failed = 0
        for identity in self.service.tls_identities:
            try:
                identity.reload()
            except TLSConfigError:
                tls_failed += 1  # logged by netguard.tls; the old certificate stays
        summary = (
            f"reloaded: {len(users)} user(s), services {','.join(sorted(config.services))}"
            f"; tls {len(self.service.tls_identities) - tls_failed}/"
            f"{len(self.service.tls_identities)} reloaded"
        )
        if pending:
            summary += f"; restart needed for: {', '.join(pending)}"
        log.info("{summary}", event="reload.done", summary=summary, restart_needed=pending)
        return summary


def install_sighup(reactor: Any, reloader: Reloader) -> Any:
    """
    Make SIGHUP reload (in the reactor thread).

    @return: the previous handler.
    """

    def run() -> None:
        # A supervisor's reload answers later (a Deferred); a refusal is logged either way.
        result = maybeDeferred(reloader.reload)
        result.addErrback(lambda failure: failure.trap(ReloadRefused))

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(run)

    return signal.signal(signal.SIGHUP, handler)

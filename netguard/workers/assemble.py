# -*- test-case-name: tests.integration.test_workers_real -*-
"""
Assembling the supervisor of C{workers = N} (called by L{netguard.service.make_service} with
the instance lock held and the listeners checked free): the users file and the ticket key
made once for all workers, every listening socket opened, the control socket and the metrics
listener attached.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from netguard.ops.control import ControlFactory, ControlService
from netguard.ops.lock import InstanceConflict, check_unix_socket_free
from netguard.ops.metrics import MetricsService
from netguard.service import ListenFailed, _unix_socket_path, load_users
from netguard.tickets import load_ticket_key
from netguard.workers.listeners import (
    SharedListener,
    SharedListenFailed,
    open_shared,
    plain_description,
)
from netguard.workers.operate import SupervisorControl
from netguard.workers.spawning import Spawner
from netguard.workers.supervisor import Supervisor, log


def open_listeners(reactor: Any, config: Any) -> list[SharedListener]:
    """
    Open every configured listener for the workers (C{listen}, then C{[[tls_listen]]}).

    @raise ListenFailed: naming the first that cannot open; those opened are closed again.
    """
    wanted = [(d, plain_description(d), "listen", i) for i, d in enumerate(config.listen)]
    wanted += [
        (f"tls+{tls.endpoint}", plain_description(tls.endpoint), "tls", i)
        for i, tls in enumerate(config.tls_listen)
    ]
    opened: list[SharedListener] = []
    try:
        for description, plain, kind, position in wanted:
            path = _unix_socket_path(plain)
            if path is not None:
                check_unix_socket_free(path)  # never take a live instance's socket
            opened.append(open_shared(reactor, description, plain, kind, position))
            log.info("listening on {listener}", event="gateway.listen", listener=description)
    except (SharedListenFailed, InstanceConflict) as error:
        for listener in opened:
            listener.close()
        raise ListenFailed(str(error)) from None
    return opened


def make_supervisor(
    config: Any,
    reactor: Any,
    instance_lock: Any,
    terminal: IO[str] | None,
    source: tuple[str | None, Mapping[str, Any]],
) -> Supervisor:
    """
    Build the supervisor of C{config.workers} workers.

    @param source: the configuration file and overrides the workers load.
    @raise ListenFailed: when a listener cannot open (the lock is released).
    @raise SystemExit: when the ticket key cannot be made.
    """
    load_users(config, terminal)  # made (and its password shown) once, here
    try:
        load_ticket_key(config.state_dir)  # made once: every worker seals with it
    except ValueError as error:
        instance_lock.release()
        raise SystemExit(f"netguard: cannot start: {error}") from None
    try:
        listeners = open_listeners(reactor, config)
    except ListenFailed:
        instance_lock.release()
        raise
    spawner = Spawner(reactor, source[0], source[1], listeners)
    supervisor = Supervisor(config, reactor, spawner, listeners, instance_lock)
    spawner.supervisor = supervisor
    if config.ops.control_socket:
        control = ControlFactory(SupervisorControl(supervisor, reactor), reactor)
        ControlService(reactor, config.ops.control_socket, control).setServiceParent(supervisor)
    if config.ops.metrics_listen:
        MetricsService(
            reactor, config.ops.metrics_listen, supervisor.metrics_figures
        ).setServiceParent(supervisor)
    return supervisor

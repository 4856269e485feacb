# -*- test-case-name: tests.integration.test_gateway_e2e,tests.integration.test_twistd -*-
"""
Build the gateway's L{MultiService} from a validated L{netguard.config.Config}.

This is the only place that touches the file system at start-up: it creates the state
directory (mode 0700), creates the users file with a generated password when there is none
(shown once on the terminal, never logged), loads the users, and attaches one listening
service per configured endpoint string.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import IO, Any

from twisted.application.service import MultiService
from twisted.internet import tcp
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import Logger
from twisted.python.failure import Failure

from netguard.auth.users import UserStore, ensure_users_file, load_mock_key
from netguard.endpoints import with_default_backlog
from netguard.gateway.factory import GatewayFactory
from netguard.log_file import FileLogSink, LogFileError
from netguard.ops.control import (
    ControlError,
    ControlFactory,
    ControlService,
    UnsafeControlPath,
    check_control_path,
    select_penalties,
)
from netguard.ops.drain import Drainer, StopRequests
from netguard.ops.heartbeat import Heartbeat, install_sigusr1
from netguard.ops.lock import (
    InstanceConflict,
    InstanceLock,
    acquire_instance_lock,
    check_unix_socket_free,
)
from netguard.ops.metrics import MetricsService
from netguard.ops.notify import Watchdog, notify_ready, notify_stopping
from netguard.ops.overload import OverloadMonitor
from netguard.ops.preflight import AddressBusy, check_listener_free, check_log_file
from netguard.ops.reload import ReloadRefused
from netguard.ops.startup import created_paths, start_privileged
from netguard.proxy_header import proxy_listener_endpoint
from netguard.secretfile import read_password_file
from netguard.shared.state import SharedState
from netguard.stats import Stats
from netguard.tickets import load_ticket_key
from netguard.tls import ServerTLS, TLSServerEndpoint, load_server_context

log = Logger()


class ListenFailed(Exception):
    """
    A configured listener could not be opened (address in use, permission, bad path...).
    """


class GatewayService(MultiService):
    """
    The running gateway: one listening port per configured endpoint string, all serving the
    shared L{GatewayFactory}; other parts (heartbeat, control socket) are child services.

    @ivar factory: the factory every listener uses.
    @ivar ports: the L{IListeningPort}s, once started.
    """

    def __init__(
        self,
        factory: GatewayFactory,
        endpoints: list[tuple[str, Any]],
        instance_lock: InstanceLock | None = None,
    ):
        super().__init__()
        self.factory = factory
        self.endpoints = endpoints
        #: The TLS identities of the TLS listeners (reloaded by SIGHUP / ctl reload).
        self.tls_identities: list[ServerTLS] = []
        #: Set by the plugin: how SIGHUP and C{ctl reload} re-read the configuration.
        self.reloader: Any = None
        self.ports: list[Any] = []
        self.instance_lock = instance_lock
        #: Set by the plugin under C{twistd --uid} as root: C{(uid, gid)} to hand the state
        #: directory to before twistd drops privileges (L{netguard.ops.privileges}).
        self.run_as: tuple[int, int] | None = None
        #: Whether a unix listener's path is checked for a live owner before listening
        #: (off in a worker, whose unix sockets are inherited from its supervisor).
        self.check_unix_sockets = True
        self.started_at = factory.clock.seconds()
        self._uninstall_sigusr1: Any = None
        # [log] file: also write every event there, from start to the last shutdown event.
        self.log_sink = FileLogSink.from_config(factory.config.log)
        ops = factory.config.ops
        self.heartbeat = Heartbeat(
            factory.clock, self.figures, ops.heartbeat_interval, enabled=ops.heartbeat
        )
        self.heartbeat.setServiceParent(self)
        #: C{WATCHDOG=1} to systemd from the reactor, when the unit sets C{WatchdogSec=}.
        self.watchdog = Watchdog(factory.clock)
        self.watchdog.setServiceParent(self)
        if ops.control_socket:
            control = ControlFactory(GatewayControl(self), factory.reactor)
            ControlService(factory.reactor, ops.control_socket, control).setServiceParent(self)
        #: The loopback-only Prometheus endpoint (C{ops.metrics_listen}), or L{None}.
        self.metrics: MetricsService | None = None
        if ops.metrics_listen:
            self.metrics = MetricsService(
                factory.reactor, ops.metrics_listen, self.metrics_figures
            )
            self.metrics.setServiceParent(self)
        self.drainer = Drainer(factory, factory.clock, factory.config.ops.shutdown_grace)
        factory.drainer = self.drainer
        #: SIGTERM, SIGINT and C{ctl drain}: the first stops (and drains), a later signal cuts.
        self.stop_requests = StopRequests(factory.reactor, self.drainer.force)
        self.overload_monitor = OverloadMonitor(
            factory.clock, factory.admission, factory.config.overload
        )
        #: State shared with other processes through Redis (C{[shared]}), or L{None}.
        self.shared: SharedState | None = None
        if factory.config.shared.enabled:
            self.shared = shared_state(factory)
            self.shared.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """
        Listen on every endpoint before twistd drops privileges (C{--uid}), so a privileged
        port or a root-owned socket directory works. A listener that cannot open ends the
        start with one line naming it, not a traceback. Under C{twistd --uid} as root,
        then hand the state directory and what we created in it to that user (L{run_as}).
        A start that fails anywhere (a listener, a child service such as the control socket
        or the metrics listener, the hand-over) closes every port it opened at once.
        """
        try:
            start_privileged(
                self, self._listen_and_start, self.factory.config.state_dir, (ListenFailed,)
            )
        except BaseException:
            self._close_opened()
            raise

    def _listen_and_start(self) -> None:
        self.listen()
        super().privilegedStartService()  # children: the control socket listens here

    def created_paths(self) -> list[str]:
        """
        What netguard creates in the state directory (L{netguard.ops.startup.created_paths}),
        with the unix sockets of the listeners.
        """
        sockets = (
            _unix_socket_path(description.removeprefix("tls+"))
            for description, _ in self.endpoints
        )
        return created_paths(
            self.factory.config, self.instance_lock, [path for path in sockets if path]
        )

    def listen(self) -> None:
        """
        Open every listener (once).

        @raise ListenFailed: naming the first listener that cannot open; the ports already
            opened are closed again.
        """
        if self.ports:
            return
        for description, endpoint in self.endpoints:
            path = _unix_socket_path(description)
            if path is not None and self.check_unix_sockets:
                try:
                    check_unix_socket_free(path)  # never take a live instance's socket
                except InstanceConflict as error:
                    self._close_opened()
                    raise ListenFailed(str(error)) from None
            failures: list[Failure] = []
            endpoint.listen(self.factory).addCallbacks(self.ports.append, failures.append)
            if failures:
                self._close_opened()
                raise ListenFailed(f"cannot listen on {description}: {failures[0].value}")
            log.info("listening on {listener}", event="gateway.listen", listener=description)

    def _close_opened(self) -> None:
        """
        The start failed: close the ports already opened, the gateway's and those of its
        child services (their C{port}: the control socket, the metrics listener), now, not
        on a reactor turn that a failed start never reaches (L{close_at_once}), so no unix
        socket file or lock file is left behind.
        """
        ports, self.ports = self.ports, []
        for child in self:
            port = getattr(child, "port", None)
            if port is not None:
                child.port = None
                ports.append(port)
        for port in ports:
            close_at_once(port)

    def startService(self) -> None:
        """
        Start serving: listen (unless already done with privileges), log the configuration's
        warnings, start the overload monitor and the child services.
        """
        self.log_sink.start()
        self.listen()
        for warning in self.factory.config.warnings:
            log.warn("configuration: {detail}", event="config.warning", detail=warning)
        self.overload_monitor.start()
        log.info(
            "netguard started: {count} listener(s), services {services}",
            event="gateway.start",
            count=len(self.ports),
            services=",".join(sorted(dict(self.factory.config.services))),
        )
        super().startService()
        reactor = self.factory.reactor
        reactor.callWhenRunning(self._running, reactor)

    def _running(self, reactor: Any) -> None:
        """
        The reactor runs (its own signal handlers, and SIGTERM's drain, are in place): take
        SIGUSR1 for the heartbeat and tell systemd we are ready.
        """
        if not self.running:
            return
        if self._uninstall_sigusr1 is None:
            self._uninstall_sigusr1 = install_sigusr1(reactor, self.heartbeat)
        notify_ready(f"{len(self.ports)} listener(s)")

    def figures(self) -> dict[str, Any]:
        """
        The cumulative figures and states, for the heartbeat and C{netguard ctl status}.
        """
        figures: dict[str, Any] = dict(self.factory.stats.snapshot())
        figures["uptime"] = round(self.factory.clock.seconds() - self.started_at, 3)
        figures["admission"] = self.factory.admission.snapshot()
        figures["draining"] = self.drainer.draining
        if self.shared is not None:
            figures["shared"] = self.shared.snapshot()
        return figures

    def metrics_figures(self) -> dict[str, Any]:
        """
        The figures, plus what only the metrics endpoint shows: per-service figures
        (C{services}) and the session set-up time histogram (C{session_setup}).
        """
        figures = self.figures()
        figures["services"] = self.factory.stats.services_snapshot()
        figures["session_setup"] = self.factory.stats.setup_seconds.snapshot()
        for name, value in figures.pop("shared", {}).items():
            figures[f"shared_{name}"] = value
        return figures

    def stopService(self) -> Any:
        """
        Graceful shutdown: stop accepting at once (every listener closes, unix sockets are
        removed), drain the sessions within C{ops.shutdown_grace}, stop the child services,
        drop the verifiers we hold, and log a summary.
        """
        notify_stopping()
        if self._uninstall_sigusr1 is not None:
            self._uninstall_sigusr1()
            self._uninstall_sigusr1 = None
        ports, self.ports = self.ports, []
        closing = [maybeDeferred(port.stopListening) for port in ports]
        self.overload_monitor.stop()
        draining = self.drainer.drain()
        draining.addCallback(lambda _: maybeDeferred(super(GatewayService, self).stopService))
        draining.addCallback(self._stopped)
        draining.addBoth(self.log_sink.stop)  # after shutdown.done
        return gatherResults([*closing, draining], consumeErrors=True)

    def _stopped(self, _: Any) -> None:
        # Every connection is closed by now: the endings counted since the listeners stopped
        # are summarised here, and no interval timer outlives the gateway.
        self.factory.refusal_log.flush()
        self.factory.users = UserStore.from_records([])
        # Every connection is closed by now, so dropping the contexts frees the keys
        # (OpenSSL clears them as it frees them); collect to break any cycle still holding one.
        keys_dropped = sum(identity.forget() for identity in self.tls_identities)
        gc.collect()
        log.info(
            "netguard stopped: {figures}",
            event="shutdown.done",
            figures=" ".join(f"{k}={v}" for k, v in sorted(self.factory.stats.snapshot().items())),
            forced=self.drainer.forced,
            tls_keys_dropped=keys_dropped,
        )
        if self.instance_lock is not None:
            self.instance_lock.release()


def close_at_once(port: Any) -> None:
    """
    Close a listening port at once. Twisted's C{stopListening} closes a port (removing a
    unix socket's file and its C{lockfile=} lock) on the reactor's next turn; after a failed
    start there is none. A port of Twisted's own (L{tcp.Port}, whose C{unix.Port} removes
    its files) is closed here and now, as that turn would; any other is asked to stop.
    """
    if isinstance(port, tcp.Port) and port.connected and not port.disconnecting:
        port.disconnecting = True
        port.stopReading()
        port.connectionLost(Failure(CONNECTION_DONE))
    else:
        port.stopListening()


def shared_state(factory: GatewayFactory) -> SharedState:
    """
    The shared-state layer for C{factory}'s C{[shared]} settings: the Redis endpoint built
    from its string, the password read from its file (mode 0600).

    @raise SystemExit: when the password file cannot be used.
    """
    config = factory.config
    settings = config.shared
    password = None
    if settings.password_file:
        try:
            password = read_password_file(settings.password_file).encode("utf-8")
        except ValueError as error:
            raise SystemExit(f"netguard: [shared] {error}") from None
    endpoint = clientFromString(factory.reactor, settings.redis)
    return SharedState(
        settings, factory.reactor, factory, endpoint, password=password, workers=config.workers
    )


class GatewayControl:
    """
    The gateway's side of the control socket (L{netguard.ops.control.ControlCommands}).
    """

    def __init__(self, service: GatewayService) -> None:
        self.service = service

    def status(self) -> dict[str, Any]:
        figures = self.service.figures()
        figures["pid"] = os.getpid()
        figures["heartbeat"] = self.service.heartbeat.enabled
        figures["listeners"] = [description for description, _ in self.service.endpoints]
        return figures

    def heartbeat(self, on: bool) -> bool:
        return self.service.heartbeat.set_enabled(on, by="control")

    def reload(self) -> str:
        reloader = self.service.reloader
        if reloader is None:
            raise ControlError("NOT_AVAILABLE", "this gateway was not started from a config")
        try:
            return str(reloader.reload())
        except ReloadRefused as error:
            raise ControlError("RELOAD_REFUSED", str(error)) from None

    def drain(self) -> str:
        """
        The first stop request stops the gateway (its C{stopService} drains, as on SIGTERM,
        and a SIGTERM after it cuts at once); a later one changes nothing and says so.
        """
        count = len(self.service.factory.sessions)
        grace = self.service.drainer.grace
        if not self.service.stop_requests.request():
            return f"already draining: {count} connection(s) left, grace {grace}s"
        return f"draining {count} connection(s), grace {grace}s"

    def penalties(self, top: int, source: str | None) -> dict[str, Any]:
        return select_penalties(
            (
                {"source": key, "blocked_for": round(left, 1), "offences": offences}
                for key, left, offences in self.service.factory.admission.penalties()
            ),
            top,
            source,
        )

    def clear_penalties(self, source: str | None) -> int:
        return self.service.factory.admission.clear_penalties(source)


def _unix_socket_path(description: str) -> str | None:
    """
    The socket path of a C{unix:} listener string, else L{None}.
    """
    if not description.startswith("unix:"):
        return None
    path = description[5:].split(":", 1)[0]
    return path[len("address=") :] if path.startswith("address=") else path


def prepare_state_dir(path: str) -> None:
    """
    Create the state directory with mode 0700 if it does not exist.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)


def _unix_socket_dirs(listen: tuple[str, ...]) -> list[str]:
    """
    The parent directories of the unix socket paths among the listener strings.
    """
    dirs = []
    for description in listen:
        if description.startswith("unix:"):
            path = description[5:].split(":", 1)[0]
            if path.startswith("address="):
                path = path[len("address=") :]
            dirs.append(os.path.dirname(path) or ".")
    return dirs


def show_once(text: str, terminal: IO[str] | None = None) -> None:
    """
    Write C{text} to the controlling terminal (or standard error when there is none), never
    through the log system, so a generated secret is seen once and not recorded.
    """
    if terminal is not None:
        terminal.write(text)
        terminal.flush()
        return
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(text)
            return
    except OSError:
        pass
    os.write(sys.__stderr__.fileno() if sys.__stderr__ else 2, text.encode())


def load_users(config: Any, terminal: IO[str] | None = None) -> UserStore:
    """
    Load the users file, creating it with one generated user when it does not exist.
    """
    created = ensure_users_file(config.users_file)
    if created is not None:
        name, password = created
        show_once(
            f"\nnetguard created the users file {config.users_file}\n"
            f"  user:     {name}\n  password: {password}\n"
            "This password is shown once and is not stored or logged; change it with\n"
            f"  netguard passwd {name} --users {config.users_file}\n\n",
            terminal,
        )
        log.info(
            "created users file {path} with user {name}",
            event="users.created",
            path=config.users_file,
            name=name,
        )
    return UserStore.load(config.users_file, mock_key=load_mock_key(config.state_dir))


def _preflight(config: Any) -> None:
    """
    Check, while twistd is still in the foreground, what the start would otherwise meet
    only after twistd forked: the control socket's place, the log file, and every address
    we will listen on (L{netguard.ops.preflight}). Each stops the start on the terminal.

    @raise UnsafeControlPath: the control socket's directory is not ours alone.
    @raise LogFileError: the C{[log] file} cannot be opened.
    @raise ListenFailed: naming the listener and the problem.
    """
    if config.ops.control_socket:
        check_control_path(config.ops.control_socket)
    check_log_file(config.log.file)
    listeners = [*config.listen, *(tls.endpoint for tls in config.tls_listen)]
    if config.ops.metrics_listen:
        listeners.append(config.ops.metrics_listen)
    try:
        for description in listeners:
            check_listener_free(description)
        if config.ops.control_socket:
            check_listener_free(
                "unix:" + config.ops.control_socket.replace("\\", "\\\\").replace(":", "\\:"),
                f"the control socket {config.ops.control_socket}",
            )
    except AddressBusy as error:
        raise ListenFailed(str(error)) from None


def _endpoint(reactor: Any, description: str) -> Any:
    """
    Build a server endpoint; what Twisted's parser raises (for example a C{systemd:} listener
    started without systemd's sockets) becomes L{ListenFailed} naming the listener.
    """
    try:
        full = with_default_backlog(description)
        if full.startswith("haproxy:"):  # the PROXY header is read before admission
            return proxy_listener_endpoint(reactor, full)
        return serverFromString(reactor, full)
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise ListenFailed(
            f"cannot use listener {description}: {type(error).__name__}: {error}"
        ) from None


def make_service(
    config: Any,
    reactor: Any,
    terminal: IO[str] | None = None,
    source: tuple[str | None, dict[str, Any]] | None = None,
) -> Any:
    """
    Build the gateway service for C{config}: a L{GatewayService}, or with C{workers} above
    1 a L{netguard.workers.supervisor.Supervisor} of that many worker processes.

    @param config: a validated L{netguard.config.Config}.
    @param reactor: the reactor listeners and timers use.
    @param terminal: where a generated password is shown (the controlling terminal when
        L{None}).
    @param source: the configuration file and command-line overrides C{config} was loaded
        from, which workers load again (the built-in defaults when L{None}).
    @return: the service, ready to be started.
    """
    prepare_state_dir(config.state_dir)
    # Before anything else touches the state directory (users file, sockets). flock: the
    # lock survives twistd's daemonizing fork; the child rewrites its PID.
    instance_lock = acquire_instance_lock(config.state_dir)
    for directory in _unix_socket_dirs(config.listen):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    for directory in _unix_socket_dirs(tuple(tls.endpoint for tls in config.tls_listen)):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        _preflight(config)
    except (ListenFailed, UnsafeControlPath, LogFileError):
        instance_lock.release()
        raise
    # Certificates and keys are read now, before privileges are dropped; a bad file stops
    # the start with TLSConfigError naming it.
    identities = [load_server_context(tls.settings) for tls in config.tls_listen]
    if config.workers > 1:
        from netguard.workers.assemble import make_supervisor

        return make_supervisor(config, reactor, instance_lock, terminal, source or (None, {}))
    # Endpoints are built (not yet listening) before the users file is created, so an
    # unusable listener does not leave a new users file and a shown password behind.
    endpoints = [(description, _endpoint(reactor, description)) for description in config.listen]
    for tls, identity in zip(config.tls_listen, identities, strict=True):
        plain = _endpoint(reactor, tls.endpoint)
        endpoints.append((f"tls+{tls.endpoint}", TLSServerEndpoint(plain, identity, reactor)))
    users = load_users(config, terminal)
    try:
        ticket_key = load_ticket_key(config.state_dir)
    except ValueError as error:
        instance_lock.release()
        raise SystemExit(f"netguard: cannot start: {error}") from None
    factory = GatewayFactory(config, users, reactor, Stats(), ticket_key=ticket_key)
    service = GatewayService(factory, endpoints, instance_lock)
    service.tls_identities = identities
    return service

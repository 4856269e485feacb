# -*- test-case-name: tests.integration.test_workers_real -*-
"""
One worker of C{workers = N}: C{python -m netguard.worker SPEC}, started by the supervisor
(L{netguard.workers.spawning}) with the shared listening sockets as inherited descriptors.

It is the single-process gateway (L{netguard.service.GatewayService}) without the lock,
the control socket and the metrics listener (the supervisor holds those), with its share of
the admission budget and of the stream caps (L{netguard.workers.budget}) and penalties
shared through the supervisor (L{netguard.workers.penalties}). Its log lines carry a
C{worker} field. It accepts no connection before the supervisor has sent it the blocks in
force and the spent tickets (L{WorkerChannel.serve}).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any, Final, cast

import attrs
from twisted.internet.stdio import StandardIO
from twisted.logger import LogLevel, globalLogBeginner
from twisted.protocols import amp

from netguard.auth.users import UserStore, load_mock_key
from netguard.config import Config, load_config
from netguard.gateway.factory import GatewayFactory
from netguard.log import json_stdout_observer, text_stdout_observer
from netguard.ops.control import MAX_PENALTIES_TOP
from netguard.ops.reload import Reloader, ReloadRefused
from netguard.service import GatewayControl, GatewayService
from netguard.stats import HistogramSnapshot, Stats
from netguard.tickets import load_ticket_key
from netguard.tls import TLSServerEndpoint, load_server_context
from netguard.workers import commands
from netguard.workers.budget import worker_policy, worker_streams
from netguard.workers.listeners import InheritedEndpoint, wrapped_endpoint
from netguard.workers.penalties import SharedAdmission
from netguard.workers.spawning import (
    AMP_IN,
    AMP_OUT,
    config_fingerprint,
    keep_restart_only,
    read_start_text,
)
from netguard.workers.spent import SharedSpentTable, share_spent


class WorkerStartError(Exception):
    """
    The worker cannot serve as its supervisor expects; the message says why.
    """


def worker_config(config: Config, index: int, count: int) -> Config:
    """
    The configuration worker C{index} of C{count} runs with: its share of the admission
    budget and of the C{[mux]} caps over every session (L{netguard.workers.budget}), and no
    control socket or metrics listener of its own.
    """
    ops = attrs.evolve(config.ops, control_socket="", metrics_listen="")
    return attrs.evolve(
        config,
        admission=worker_policy(config.admission, index, count),
        mux=worker_streams(config.mux, count),
        ops=ops,
    )


def stamp_worker(index: int) -> Any:
    """
    An observer, added before the others, that marks every event with C{worker} (and, for
    the text format, shows it in the bracketed column as C{w<index>:<namespace>#<level>}).
    """

    def observer(event: dict[str, Any]) -> None:
        event["worker"] = index
        if event.get("log_system", "-") == "-":
            level = event.get("log_level")
            name = level.name if isinstance(level, type(LogLevel.info)) else "-"
            event["log_system"] = f"w{index}:{event.get('log_namespace', '-')}#{name}"

    return observer


def _histogram(snapshot: object) -> object:
    if isinstance(snapshot, HistogramSnapshot):
        return {
            "buckets": [list(pair) for pair in snapshot.buckets],
            "count": snapshot.count,
            "total": snapshot.total,
        }
    return snapshot


#: The most source keys one exact-figures question (C{Penalties} with C{keys}) names: the
#: candidates of 64 workers' first L{MAX_PENALTIES_TOP}.
MAX_KEYS: Final = 64 * MAX_PENALTIES_TOP


class WorkerChannel(amp.AMP):
    """
    The worker's AMP connection to its supervisor.
    """

    def __init__(self, reactor: Any, index: int) -> None:
        super().__init__()
        self.reactor = reactor
        self.index = index
        self.service: GatewayService | None = None
        self._stopping = False
        #: Whether the service was started (L{serve}): only then is it drained at the end.
        self.serving = False
        #: The worker's exit status: 1 when it could not start serving.
        self.exit_code = 0

    def _service(self) -> GatewayService:
        if self.service is None:
            raise RuntimeError("worker not started")
        return self.service

    @commands.Serve.responder
    def serve(self) -> dict[str, Any]:
        """
        Adopt every listener and start accepting: the supervisor sends this after the
        blocks in force and the spent tickets, which the pipe delivered (and this channel
        applied) first. A worker that cannot serve says why on its standard error and exits
        with status 1.
        """
        service = self._service()
        if self.serving:
            return {}
        try:
            service.privilegedStartService()
            service.startService()
        except (Exception, SystemExit) as error:  # noqa: BLE001 - one line, then exit 1
            sys.stderr.write(f"netguard worker {self.index}: cannot start: {error}\n")
            self.exit_code = 1
            self.stop()
            raise commands.ServeRefusedError(str(error)) from None
        self.serving = True
        self.reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        return {}

    @commands.Status.responder
    def status(self) -> dict[str, Any]:
        service = self._service()
        figures = GatewayControl(service).status()
        figures["worker"] = self.index
        return {"figures": figures}

    @commands.MetricsFigures.responder
    def metrics(self) -> dict[str, Any]:
        figures = self._service().metrics_figures()
        figures["session_setup"] = _histogram(figures.get("session_setup"))
        return {"figures": figures}

    @commands.Reload.responder
    def reload(self) -> dict[str, Any]:
        service = self._service()
        try:
            summary = str(service.reloader.reload())
        except ReloadRefused as error:
            raise commands.ReloadRefusedError(str(error)) from None
        self.share_tickets()  # a new key (or tickets turned on) made a new spent table
        return {"summary": summary}

    def share_tickets(self) -> None:
        """
        Make the ticket book's spent table report to (and take from) the other workers.
        """
        share_spent(self._service().factory.tickets, self.report_spent)

    def report_spent(self, ticket_id: bytes, expires: float, user: str) -> None:
        """
        Tell the supervisor that a ticket was spent here.
        """
        self.callRemote(
            commands.TicketSpent, ticket_id=bytes(ticket_id), expires=float(expires), user=user
        )

    @commands.ApplySpent.responder
    def apply_spent(self, ticket_id: bytes, expires: float, user: str) -> dict[str, Any]:
        book = self._service().factory.tickets
        if book is not None and isinstance(book.spent, SharedSpentTable):
            book.spent.spent_elsewhere(ticket_id, expires, self.reactor.seconds(), user)
        return {}

    @commands.Drain.responder
    def drain(self, force: bool) -> dict[str, Any]:
        self.stop(force)
        return {}

    @commands.Heartbeat.responder
    def heartbeat(self, on: bool) -> dict[str, Any]:
        return {"on": self._service().heartbeat.set_enabled(on, by="supervisor")}

    @commands.Penalties.responder
    def penalties(self, top: int, source: str | None = None, keys: Any = None) -> dict[str, Any]:
        """
        The first C{top} penalised sources here (overlapping C{source}, if given); or, with
        C{keys}, the figures of exactly those source keys held here (at most L{MAX_KEYS};
        anything but a list of strings asks for none).
        """
        if keys is None:
            return GatewayControl(self._service()).penalties(
                min(max(1, top), MAX_PENALTIES_TOP), source
            )
        wanted = (
            {key for key in keys[:MAX_KEYS] if isinstance(key, str)}
            if isinstance(keys, list)
            else set()
        )
        rows = [
            {"source": key, "blocked_for": round(left, 1), "offences": offences}
            for key, left, offences in self._service().factory.admission.penalties()
            if key in wanted
        ]
        return {"penalties": rows, "total": len(rows), "truncated": False}

    @commands.ClearPenalties.responder
    def clear_penalties(self, source: str | None) -> dict[str, Any]:
        return {"cleared": self._service().factory.admission.clear_penalties(source)}

    @commands.Replay.responder
    def replay(self, blocks: list[dict[str, Any]], spent: list[dict[str, Any]]) -> dict[str, Any]:
        """
        Apply one batch of the state in force the supervisor sends before L{serve}.
        """
        for block in blocks:
            self.apply_block(block["source"], block["seconds"], block["points"])
        for ticket in spent:
            self.apply_spent(ticket["ticket_id"], ticket["expires"], ticket["user"])
        return {}

    @commands.ApplyBlock.responder
    def apply_block(self, source: str, seconds: float, points: float) -> dict[str, Any]:
        admission = self._service().factory.admission
        if isinstance(admission, SharedAdmission):
            admission.apply_block(source, seconds, points)
        return {}

    def report_learnt(self, source: str, seconds: float, points: float) -> None:
        """
        Tell the supervisor of a block learnt from Redis, to keep (not to relay).
        """
        self.callRemote(
            commands.BlockLearnt, source=source, seconds=float(seconds), points=float(points)
        )

    def report_block(self, source: str, seconds: float, points: float) -> None:
        """
        Tell the supervisor that an offence here blocked C{source}.
        """
        self.callRemote(
            commands.Blocked, source=source, seconds=float(seconds), points=float(points)
        )

    def stop(self, force: bool = False) -> None:
        """
        A stop: the first (the supervisor's drain, this worker's own SIGTERM, or the
        supervisor's pipe closing) stops the reactor, which drains; only a forced one (the
        supervisor's answer to a second stop signal) closes every remaining connection at
        once. A worker never counts stops itself: a SIGTERM to the whole process group
        (systemd's default) reaches it and its supervisor together, and the supervisor's
        drain that follows is the same stop, not a second one.
        """
        if force and self.service is not None:
            self.service.drainer.force("second stop signal")
        if not self._stopping:
            self._stopping = True
            self.reactor.callLater(0, _stop_reactor, self.reactor)

    def connectionLost(self, reason: Any = None) -> None:
        """
        The supervisor is gone: drain and exit.
        """
        super().connectionLost(reason)
        self.stop()


def _stop_reactor(reactor: Any) -> None:
    if reactor.running:
        reactor.stop()


def build(
    reactor: Any,
    spec: Mapping[str, Any],
    channel: WorkerChannel,
    start_text: bytes | None = None,
) -> GatewayService:
    """
    Build the worker's gateway service from its spec (see
    L{netguard.workers.spawning.worker_spec}).

    @param start_text: the configuration file's text as the supervisor read it at its start
        (L{read_start_text}), or L{None} without a file: the restart-only keys come from
        its parse with the same overrides.
    """
    index, count = int(spec["index"]), int(spec["count"])
    path, overrides = spec["config"], spec["overrides"]
    started = None
    if path is not None and start_text is not None:
        started = load_config(path, overrides, text=start_text)

    def pinned(p: str | None, o: Mapping[str, object]) -> Config:
        loaded = load_config(p, o)
        return loaded if started is None else keep_restart_only(loaded, started)

    def load(p: str | None, o: Mapping[str, object]) -> Config:
        return worker_config(pinned(p, o), index, count)

    loaded = pinned(path, overrides)
    wanted = spec.get("fingerprint")
    if wanted is not None and config_fingerprint(loaded) != wanted:
        raise WorkerStartError(
            "the configuration file changed since the supervisor last loaded it; reload "
            "(SIGHUP) to apply it to every worker"
        )
    config = worker_config(loaded, index, count)
    users = UserStore.load(config.users_file, mock_key=load_mock_key(config.state_dir))
    factory = GatewayFactory(
        config, users, reactor, Stats(), ticket_key=load_ticket_key(config.state_dir)
    )
    admission = SharedAdmission(config.admission, reactor, channel.report_block)
    admission.learnt = channel.report_learnt
    factory.admission = admission
    identities = []
    endpoints: list[tuple[str, Any]] = []
    for entry in spec["listeners"]:
        inherited = InheritedEndpoint(reactor, int(entry["fd"]), int(entry["family"]))
        description = str(entry["description"])
        if entry["kind"] == "tls":
            endpoint = description.removeprefix("tls+")
            tls = next((t for t in config.tls_listen if t.endpoint == endpoint), None)
            if tls is None:
                raise WorkerStartError(
                    f"TLS listener {endpoint} is no longer configured; listeners change "
                    "only with a restart of netguard"
                )
            identity = load_server_context(tls.settings)
            identities.append(identity)
            # Behind haproxy: the PROXY header comes before the TLS handshake, as in
            # the single-process gateway.
            plain = wrapped_endpoint(reactor, endpoint, inherited)
            endpoints.append((description, TLSServerEndpoint(plain, identity, reactor)))
        else:
            endpoints.append((description, wrapped_endpoint(reactor, description, inherited)))
    service = GatewayService(factory, endpoints, None)
    service.check_unix_sockets = False
    service.tls_identities = identities
    service.reloader = Reloader(service, path, overrides, load=load)
    return service


def main(argv: list[str] | None = None) -> int:
    """
    Run one worker until it is told to stop (or its supervisor goes away).

    @param argv: C{[program, SPEC-JSON]}.
    @return: the exit status.
    """
    from twisted.internet import reactor as installed

    reactor: Any = installed

    args = sys.argv if argv is None else argv
    spec = json.loads(args[1])
    index = int(spec["index"])
    start_fd = spec.get("start_fd")
    try:
        start_text = None if start_fd is None else read_start_text(int(start_fd))
    except OSError as error:
        sys.stderr.write(f"netguard worker {index}: cannot start: {error}\n")
        return 1
    overrides = spec["overrides"]
    log_format = str(overrides.get("log_format") or "")
    if not log_format:
        config = load_config(spec["config"], overrides)
        log_format = config.log.format
    # As the supervisor's own lines: the priority prefix when standard output is the journal.
    out = json_stdout_observer() if log_format == "json" else text_stdout_observer()
    globalLogBeginner.beginLoggingTo(
        [stamp_worker(index), cast(Any, out)], redirectStandardIO=False
    )
    channel = WorkerChannel(reactor, index)
    try:
        service = build(reactor, spec, channel, start_text)
    except Exception as error:  # noqa: BLE001 - one line for the operator, then exit 1
        sys.stderr.write(f"netguard worker {index}: cannot start: {error}\n")
        return 1
    channel.service = service
    channel.share_tickets()
    stdio: Any = StandardIO
    stdio(channel, stdin=AMP_IN, stdout=AMP_OUT, reactor=reactor)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor reloads us

    def on_term(signum: int, frame: Any) -> None:
        reactor.callFromThread(channel.stop)

    # Not listening yet: the supervisor answers Ready with the state in force, then Serve.
    reactor.callWhenRunning(signal.signal, signal.SIGTERM, on_term)
    reactor.callWhenRunning(channel.callRemote, commands.Ready, index=index, pid=os.getpid())
    reactor.run(installSignalHandlers=False)
    return channel.exit_code


if __name__ == "__main__":
    raise SystemExit(main())

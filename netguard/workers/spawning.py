# -*- test-case-name: tests.integration.test_workers_real -*-
"""
Starting a worker process (C{python -m netguard.worker}) with C{reactor.spawnProcess}: the
shared listening sockets as inherited descriptors from 4 on, standard output and error
shared with the supervisor (the log), and AMP over two pipes (the worker reads descriptor
0 and writes descriptor 3).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import sys
from collections.abc import Mapping
from typing import Any, Final

import attrs
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.protocols import amp
from twisted.python.failure import Failure

from netguard.ops.reload import RESTART_ONLY
from netguard.workers import commands
from netguard.workers.listeners import SharedListener
from netguard.workers.supervisor import Supervisor, WorkerSlot, exit_status

#: The worker's descriptor for AMP from the supervisor, to it, and its first listener.
AMP_IN: Final = 0
AMP_OUT: Final = 3
FIRST_LISTENER_FD: Final = 4

#: Variables meant for the supervisor alone: the service manager's (a worker must not
#: notify systemd nor adopt systemd's sockets a second time).
SUPERVISOR_ONLY: Final = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)


class _Address:
    """
    The address of a pipe end, for AMP's logging.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<pipe {self.name}>"


class _PipeTransport:
    """
    The transport AMP writes to: the worker's standard input.
    """

    disconnecting = False

    def __init__(self, process: Any, name: str) -> None:
        self.process = process
        self.name = name

    def write(self, data: bytes) -> None:
        try:
            self.process.writeToChild(AMP_IN, data)
        except (KeyError, OSError):
            pass  # the worker is gone; its exit is reported by processEnded

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        try:
            self.process.closeChildFD(AMP_IN)
        except (KeyError, OSError):
            pass

    def getPeer(self) -> _Address:
        return _Address(self.name)

    def getHost(self) -> _Address:
        return _Address("supervisor")


class SupervisorChannel(amp.AMP):
    """
    The supervisor's AMP connection to one worker: answers L{commands.Ready},
    L{commands.Blocked} and L{commands.TicketSpent}.
    """

    def __init__(self, supervisor: Supervisor, slot: WorkerSlot) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.slot = slot

    @commands.Ready.responder
    def ready(self, index: int, pid: int) -> dict[str, Any]:
        self.supervisor.worker_ready(self.slot)
        return {}

    @commands.Blocked.responder
    def blocked(self, source: str, seconds: float, points: float) -> dict[str, Any]:
        self.supervisor.worker_blocked(self.slot, source, seconds, points)
        return {}

    @commands.TicketSpent.responder
    def ticket_spent(self, ticket_id: bytes, expires: float, user: str) -> dict[str, Any]:
        self.supervisor.worker_spent(self.slot, ticket_id, expires, user)
        return {}


class WorkerProcess(ProcessProtocol):
    """
    One worker process: its AMP bytes to the channel, its end to the supervisor.
    """

    def __init__(self, supervisor: Supervisor, slot: WorkerSlot) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.channel = SupervisorChannel(supervisor, slot)
        self.pid: int | None = None
        self._ended = False

    def connectionMade(self) -> None:
        self.channel.makeConnection(_PipeTransport(self.transport, f"worker {self.slot.index}"))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == AMP_OUT:
            self.channel.dataReceived(data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == AMP_OUT:
            self.channel.connectionLost(Failure(ConnectionError("worker pipe closed")))

    def processEnded(self, reason: Failure) -> None:
        if self._ended:
            return
        self._ended = True
        if self.slot.handle is self:
            self.supervisor.worker_ended(self.slot, exit_status(reason))

    def signal(self, signum: int) -> None:
        """
        Send a signal to the worker (ignored if it has exited).
        """
        transport: Any = self.transport
        try:
            transport.signalProcess(signum)
        except (ProcessExitedAlready, OSError):
            pass


def worker_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    The environment of a worker: the supervisor's less L{SUPERVISOR_ONLY}.
    """
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k not in SUPERVISOR_ONLY}


def config_fingerprint(config: Any) -> str:
    """
    A digest of a configuration's values (not its warnings or their origins): a worker
    compares the configuration it loads with the one its supervisor has in force.
    """
    values = attrs.evolve(config, warnings=(), origins={})
    return hashlib.sha256(repr(values).encode("utf-8")).hexdigest()


def restart_only_values(config: Any) -> str:
    """
    The restart-only keys (L{RESTART_ONLY}) of the configuration the supervisor started
    with, encoded for a worker's spec: a worker started after a reload keeps them, as the
    workers started with the supervisor do (they change only with a restart).

    The encoding is a pickle: the worker decodes only what its own supervisor wrote on its
    command line (no secret is among these keys: C{shared} names a password file, never
    the password).
    """
    values = {key: getattr(config, key) for key in RESTART_ONLY}
    return base64.b64encode(pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)).decode()


def keep_restart_only(config: Any, started: Any) -> Any:
    """
    C{config} with the restart-only keys (L{RESTART_ONLY}) of C{started}: what a reload puts
    in force for the workers.

    @param started: the configuration the supervisor started with, or its encoded values
        (L{restart_only_values}).
    """
    if isinstance(started, str):
        values = pickle.loads(base64.b64decode(started))  # noqa: S301 - the supervisor's own
    else:
        values = {key: getattr(started, key) for key in RESTART_ONLY}
    return attrs.evolve(config, **{key: values[key] for key in RESTART_ONLY})


def worker_spec(
    slot: WorkerSlot,
    count: int,
    config_path: str | None,
    overrides: Mapping[str, Any],
    listeners: list[SharedListener],
    fingerprint: str | None = None,
    restart_only: str | None = None,
) -> dict[str, Any]:
    """
    What a worker is told on its command line: its position, the configuration to load (and
    the fingerprint it must have), the restart-only keys it keeps from the configuration
    the supervisor started with (L{restart_only_values}), and which inherited descriptor is
    which listener (as the supervisor opened it: a reload does not change the listeners).
    """
    return {
        "index": slot.index,
        "count": count,
        "config": config_path,
        "overrides": dict(overrides),
        "fingerprint": fingerprint,
        "restart_only": restart_only,
        "listeners": [
            {
                "kind": listener.kind,
                "description": listener.description,
                "fd": FIRST_LISTENER_FD + number,
                "family": listener.family,
            }
            for number, listener in enumerate(listeners)
        ],
    }


class Spawner:
    """
    Starts worker processes for a L{Supervisor} (its C{spawn}).
    """

    def __init__(
        self,
        reactor: Any,
        config_path: str | None,
        overrides: Mapping[str, Any],
        listeners: list[SharedListener],
        executable: str = sys.executable,
    ) -> None:
        self.reactor = reactor
        self.config_path = config_path
        self.overrides = dict(overrides)
        self.listeners = listeners
        self.executable = executable
        #: The worker's command line before its spec.
        self.command = [executable, "-m", "netguard.worker"]
        self.supervisor: Supervisor | None = None

    def __call__(self, slot: WorkerSlot) -> WorkerProcess:
        assert self.supervisor is not None
        spec = worker_spec(
            slot,
            len(self.supervisor.slots),
            self.config_path,
            self.overrides,
            self.listeners,
            config_fingerprint(self.supervisor.in_force),
            restart_only_values(self.supervisor.config),
        )
        child_fds: dict[int, Any] = {AMP_IN: "w", 1: 1, 2: 2, AMP_OUT: "r"}
        for number, listener in enumerate(self.listeners):
            child_fds[FIRST_LISTENER_FD + number] = listener.fd
        process = WorkerProcess(self.supervisor, slot)
        slot.handle = process  # before spawnProcess: an immediate end must find it
        args = [*self.command, json.dumps(spec)]
        transport = self.reactor.spawnProcess(
            process, args[0], args, env=worker_environ(), childFDs=child_fds
        )
        process.pid = transport.pid
        return process

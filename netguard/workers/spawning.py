# -*- test-case-name: tests.integration.test_workers_real -*-
"""
Starting a worker process (C{python -m netguard.worker}) with C{reactor.spawnProcess}: the
shared listening sockets as inherited descriptors from 4 on, standard output and error
shared with the supervisor (the log), and AMP over two pipes (the worker reads descriptor
0 and writes descriptor 3). The text of the configuration file as the supervisor read it at
its start reaches the worker over one more pipe, never on its command line (which any local
user can read).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, Final

import attrs
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.protocols import amp
from twisted.python.failure import Failure

from netguard.config import MAX_FILE_BYTES
from netguard.config.loader import read_config_bytes
from netguard.ops.reload import RESTART_ONLY
from netguard.workers import commands
from netguard.workers.listeners import SharedListener
from netguard.workers.slots import WorkerSlot, exit_status
from netguard.workers.supervisor import Supervisor

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

    @commands.BlockLearnt.responder
    def block_learnt(self, source: str, seconds: float, points: float) -> dict[str, Any]:
        self.supervisor.worker_learnt(self.slot, source, seconds, points)
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


def keep_restart_only(config: Any, started: Any) -> Any:
    """
    C{config} with the restart-only keys (L{RESTART_ONLY}) of C{started}, the configuration
    the supervisor started with: what a reload puts in force for the workers, and what a
    worker started after a reload runs with (they change only with a restart).
    """
    return attrs.evolve(config, **{key: getattr(started, key) for key in RESTART_ONLY})


def read_start_text(fd: int) -> bytes:
    """
    Read the start configuration's text from descriptor C{fd} to its end (the supervisor
    writes it and closes its end), and close C{fd}.

    At most one byte more than the loader accepts (L{MAX_FILE_BYTES}) is read: the loader
    refuses that text as too large.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, min(65536, MAX_FILE_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def worker_spec(
    slot: WorkerSlot,
    count: int,
    config_path: str | None,
    overrides: Mapping[str, Any],
    listeners: list[SharedListener],
    fingerprint: str | None = None,
    start_fd: int | None = None,
) -> dict[str, Any]:
    """
    What a worker is told on its command line: its position, the configuration to load (and
    the fingerprint it must have), the inherited descriptor it reads the start
    configuration's text from (L{Spawner}), and which inherited descriptor is which
    listener (as the supervisor opened it: a reload does not change the listeners). No
    configuration value is on it beyond the file's path and the overrides.
    """
    return {
        "index": slot.index,
        "count": count,
        "config": config_path,
        "overrides": dict(overrides),
        "fingerprint": fingerprint,
        "start_fd": start_fd,
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

    It reads the configuration file's bytes when it is made (at the supervisor's start,
    right after the start configuration was loaded) and writes them to each worker over a
    pipe of their own, which the worker reads to its end before it loads its configuration
    and parses with the same overrides: its restart-only keys (L{RESTART_ONLY}) come from
    that parse (L{keep_restart_only}), so a worker started after a reload runs with the
    start's ones as the others do. Should the file have changed between the start load and
    this read, the worker's configuration does not match the fingerprint of the one in
    force and it refuses to start.
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
        #: The configuration file's bytes at the start (L{None} without a file).
        self.start_text = None if config_path is None else read_config_bytes(config_path)
        #: The worker's command line before its spec.
        self.command = [executable, "-m", "netguard.worker"]
        self.supervisor: Supervisor | None = None

    def __call__(self, slot: WorkerSlot) -> WorkerProcess:
        assert self.supervisor is not None
        start_fd = None
        if self.start_text is not None:
            start_fd = FIRST_LISTENER_FD + len(self.listeners)
        spec = worker_spec(
            slot,
            len(self.supervisor.slots),
            self.config_path,
            self.overrides,
            self.listeners,
            config_fingerprint(self.supervisor.in_force),
            start_fd,
        )
        child_fds: dict[int, Any] = {AMP_IN: "w", 1: 1, 2: 2, AMP_OUT: "r"}
        for number, listener in enumerate(self.listeners):
            child_fds[FIRST_LISTENER_FD + number] = listener.fd
        if start_fd is not None:
            child_fds[start_fd] = "w"
        process = WorkerProcess(self.supervisor, slot)
        slot.handle = process  # before spawnProcess: an immediate end must find it
        args = [*self.command, json.dumps(spec)]
        transport = self.reactor.spawnProcess(
            process, args[0], args, env=worker_environ(), childFDs=child_fds
        )
        process.pid = transport.pid
        if start_fd is not None and self.start_text is not None:
            # Buffered by the reactor; closed once written, so the worker reads to its end.
            transport.writeToChild(start_fd, self.start_text)
            transport.closeChildFD(start_fd)
        return process

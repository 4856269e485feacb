"""
Process bookkeeping for the benchmark harness: start servers as tracked subprocesses pinned to
a CPU, wait until they listen, account their CPU time and memory from /proc, and always stop
them (by the process group each one leads) when the run ends.

Nothing here kills a process the harness did not start: every server is started in its own
session (so it leads a process group whose id is its PID), and only those groups are signalled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

import attrs

#: Clock ticks per second of the /proc/<pid>/stat CPU counters.
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.

    @return: the port number.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    """
    The fields of /proc/<pid>/stat after the command name, or L{None} if the process is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def group_members(pgid: int, zombies: bool = False) -> list[int]:
    """
    The processes of process group C{pgid} (the leader and, for forking servers such as
    socat, its children).

    @param pgid: the process group id (the PID of a server started by L{Processes.start}).
    @param zombies: include exited children not yet reaped (their CPU times still count).
    @return: the PIDs.
    """
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        # fields[0] is the state, fields[2] the process group.
        if fields is None or int(fields[2]) != pgid:
            continue
        if zombies or fields[0] != "Z":
            members.append(int(entry))
    return members


def group_cpu_seconds(pgid: int) -> float:
    """
    CPU seconds (user + system) used by process group C{pgid}: its live members, plus the
    children its leader has reaped (socat's finished per-connection children).

    @param pgid: the process group id.
    @return: seconds of CPU time.
    """
    ticks = 0
    for pid in group_members(pgid, zombies=True):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # utime, stime, cutime, cstime are fields 14..17 of stat (indices 11..14 here).
        ticks += int(fields[11]) + int(fields[12])
        if pid == pgid:
            ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


@attrs.frozen
class Memory:
    """
    Memory of a set of processes, in KiB.

    @ivar rss: the sum of the resident set sizes (counts shared pages once per process).
    @ivar pss: the sum of the proportional set sizes (shared pages split between sharers).
    @ivar processes: how many processes were counted.
    """

    rss: int
    pss: int
    processes: int


def group_memory(pgid: int) -> Memory:
    """
    RSS and PSS of every live member of process group C{pgid}, from /proc/<pid>/smaps_rollup.

    @param pgid: the process group id.
    @return: the summed L{Memory}.
    """
    rss = pss = count = 0
    for pid in group_members(pgid):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                text = f.read()
        except OSError:
            continue
        count += 1
        for line in text.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return Memory(rss=rss, pss=pss, processes=count)


def _listening_inodes(port: int) -> set[str]:
    """
    Socket inodes listening on TCP port C{port} (IPv4 or IPv6).
    """
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state, inode = parts[1], parts[3], parts[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            continue
    return inodes


def owns_listener(pgid: int, port: int) -> bool:
    """
    Whether a member of process group C{pgid} holds the socket listening on C{port}: so a
    port taken meanwhile by someone else's server is never mistaken for ours.

    @param pgid: the process group id.
    @param port: the TCP port.
    @return: C{True} if one of the group's processes has that listening socket open.
    """
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in group_members(pgid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return True
            except OSError:
                continue
    return False


class StartFailed(Exception):
    """
    A server did not come up (exited, or did not listen in time).
    """


@attrs.define
class Server:
    """
    A server the harness started.

    @ivar name: a short label (used in log file names and reports).
    @ivar popen: the subprocess; its PID is also its process group id.
    @ivar log_path: where its standard output and error go.
    """

    name: str
    popen: subprocess.Popen[bytes]
    log_path: str

    @property
    def pid(self) -> int:
        """
        @return: the PID (and process group id).
        """
        return int(self.popen.pid)

    def alive(self) -> bool:
        """
        @return: whether the leader is still running.
        """
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """
        @return: the last lines of its log, for error messages.
        """
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """
    Every server started for one benchmark run, stopped together by L{stop_all}.
    """

    def __init__(self, log_dir: str):
        """
        @param log_dir: directory for the servers' log files.
        """
        self.log_dir = log_dir
        self.servers: list[Server] = []
        self._count = 0

    def start(
        self,
        name: str,
        argv: Sequence[str],
        cpu: int | str | None,
        *,
        cwd: str | None = None,
        stdin: IO[Any] | int | None = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
    ) -> Server:
        """
        Start C{argv} in its own session, pinned to C{cpu} with C{taskset -c} (which execs, so
        the PID is the server's own).

        @param name: a label.
        @param argv: the command.
        @param cpu: the CPU to pin to (or a C{taskset} CPU list, C{"0-1"}), or L{None} to
            leave the affinity inherited from this process.
        @param cwd: working directory.
        @param stdin: standard input of the server.
        @param env: environment (default: ours).
        @return: the L{Server}.
        """
        self._count += 1
        log_path = os.path.join(self.log_dir, f"{self._count:02d}-{name}.log")
        command = list(argv)
        if cpu is not None:
            command = ["taskset", "-c", str(cpu), *command]
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                command,
                stdin=stdin,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        server = Server(name, popen, log_path)
        self.servers.append(server)
        return server

    def wait_listening(self, server: Server, port: int, timeout: float = 15.0) -> None:
        """
        Wait until C{server} (or a process of its group) listens on 127.0.0.1:C{port}.

        @raise StartFailed: if it exits first or the time runs out.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not server.alive():
                raise StartFailed(
                    f"{server.name} exited with {server.popen.returncode}:\n{server.log_tail()}"
                )
            if owns_listener(server.pid, port):
                return
            time.sleep(0.05)
        raise StartFailed(f"{server.name} did not listen on {port} in {timeout:g}s")

    def stop(self, server: Server, grace: float = 5.0) -> None:
        """
        Stop one server: SIGTERM to its process group, SIGKILL after C{grace} seconds.
        """
        if server not in self.servers:
            return
        self.servers.remove(server)
        _terminate_group(server, grace)

    def stop_all(self, grace: float = 5.0) -> None:
        """
        Stop every server still running, most recently started first.
        """
        servers, self.servers = self.servers, []
        for server in servers:
            _signal_group(server.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for server in reversed(servers):
            _wait(server, max(0.0, deadline - time.monotonic()))
        for server in servers:
            if server.popen.poll() is None or group_members(server.pid):
                _signal_group(server.pid, signal.SIGKILL)
                _wait(server, 2.0)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(server: Server, timeout: float) -> None:
    try:
        server.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def _terminate_group(server: Server, grace: float) -> None:
    _signal_group(server.pid, signal.SIGTERM)
    _wait(server, grace)
    if server.popen.poll() is None or group_members(server.pid):
        _signal_group(server.pid, signal.SIGKILL)
        _wait(server, 2.0)


@attrs.frozen
class Finished:
    """
    A load generator run that has finished (or was killed at its time bound).

    @ivar returncode: its exit status (negative: killed by that signal).
    @ivar stdout: what it printed.
    @ivar wall: seconds from start to exit.
    @ivar cpu: CPU seconds (user + system) of it and every descendant it waited for.
    @ivar timed_out: whether it was killed at the time bound.
    """

    returncode: int
    stdout: str
    wall: float
    cpu: float
    timed_out: bool


def run_generator(
    argv: Sequence[str], cpu: int | None, timeout: float, log_path: str | None = None
) -> Finished:
    """
    Run a load generator to completion, pinned to C{cpu}, and measure its CPU time with
    C{wait4} (its own plus that of the workers it waited for).

    @param argv: the command.
    @param cpu: the CPU to pin to, or L{None}.
    @param timeout: the time bound; the generator's process group is killed after it.
    @param log_path: where its standard error goes (L{None}: discarded).
    @return: a L{Finished}.
    """
    command = list(argv)
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    stderr: Any = subprocess.DEVNULL
    if log_path is not None:
        stderr = open(log_path, "ab")  # noqa: SIM115 - closed below
    started = time.monotonic()
    popen = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    chunks: list[bytes] = []
    assert popen.stdout is not None
    reader = threading.Thread(target=lambda: chunks.append(popen.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    timed_out = False
    deadline = started + timeout
    try:
        while True:
            pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                timed_out = True
                _signal_group(popen.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(popen.pid, 0)
                break
            time.sleep(0.005)
    except BaseException:
        _signal_group(popen.pid, signal.SIGKILL)
        popen.wait()
        raise
    finally:
        if log_path is not None:
            stderr.close()
    wall = time.monotonic() - started
    popen.returncode = os.waitstatus_to_exitcode(status)
    # Workers that outlived it (they should not) are killed with its group.
    _signal_group(popen.pid, signal.SIGKILL)
    reader.join(5.0)
    popen.stdout.close()
    return Finished(
        returncode=popen.returncode,
        stdout=b"".join(chunks).decode("utf-8", "replace"),
        wall=wall,
        cpu=float(usage.ru_utime + usage.ru_stime),
        timed_out=timed_out,
    )

"""
Workers: what several gateway processes on one port cost and how evenly they share the
connections, with the listening socket shared two ways. Not part of the benchmark figures.

    .venv/bin/python bench/workers.py                   # 3 runs of each mode, interleaved
    .venv/bin/python bench/workers.py --sessions 4000 --runs 5

Modes, interleaved in each run (one, inherit, reuseport, one, inherit, ...):

* C{one}: C{workers = 1}, the single-process gateway (the anchor).
* C{inherit}: C{workers = 2} as shipped: the supervisor opens one listening socket and both
  workers accept on an inherited copy (one accept queue, both workers woken by epoll).
* C{reuseport}: C{workers = 2} with the supervisor's listener replaced, for this benchmark
  only, by one C{SO_REUSEPORT} socket per worker on the same port (the kernel hashes each
  new connection to one of them).

Each session: connect, greeting (C{greeting_delay = 0}), SCRAM-SHA-256 (the client caches its
salted password, RFC 5802), C{OPEN echo}, 16 bytes echoed, close; C{--conns} at a time, from
one asyncio client in this process. The gateway (supervisor and workers: the whole process
group) is pinned to CPU 1, this client and the echo backend to CPU 0. Figures per mode: the
sessions per second, the gateway's CPU per session (utime + stime of the whole group less its
idle CPU over the same time), and the spread: the share of the timed sessions the busiest
worker accepted (from C{ctl status}: 50% is even). The load average is printed with each run.
Every process started is stopped by its process group id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from functools import partial
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import loadgen  # noqa: E402
import paths as pathmod  # noqa: E402
import profile_session  # noqa: E402
from procs import Processes, free_port, group_cpu_seconds  # noqa: E402

MODES = ("one", "inherit", "reuseport", "inherit-batch")


# -- the gateway child -----------------------------------------------------------------------


class _ReusePortListener:
    """
    One C{SO_REUSEPORT} listening socket standing in for a shared listener (this benchmark
    only): the supervisor gives worker C{i} socket C{i}.
    """

    kind = "listen"
    position = 0

    def __init__(self, description: str, sock: socket.socket) -> None:
        self.description = description
        self.sock = sock

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    @property
    def family(self) -> int:
        return int(self.sock.family)

    def close(self) -> None:
        self.sock.close()


def _use_reuseport() -> None:
    """
    Make the supervisor open one C{SO_REUSEPORT} socket per worker instead of one shared
    socket, and give each worker only its own.
    """
    import netguard.workers.assemble as assemble
    from netguard.workers.spawning import Spawner

    def open_listeners(reactor: Any, config: Any) -> list[Any]:
        port = int(config.listen[0].split(":")[1])
        listeners = []
        for _ in range(config.workers):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(1024)
            sock.setblocking(False)
            listeners.append(_ReusePortListener(config.listen[0], sock))
        return listeners

    class OwnSocket(Spawner):
        def __call__(self, slot: Any) -> Any:
            every = self.listeners
            self.listeners = [every[slot.index]]
            try:
                return super().__call__(slot)
            finally:
                self.listeners = every

    assemble.open_listeners = open_listeners  # type: ignore[assignment]
    assemble.Spawner = OwnSocket  # type: ignore[misc]


def _use_batch_worker(batch: str) -> None:
    """
    Start the workers through this script's C{_worker}, which sets the accept batch first.
    """
    import netguard.workers.assemble as assemble
    from netguard.workers.spawning import Spawner

    class BatchWorker(Spawner):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.command = [sys.executable, __file__, "_worker", "--accept-batch", batch]

    assemble.Spawner = BatchWorker  # type: ignore[misc]


def worker_child(args: argparse.Namespace) -> int:
    """
    Run one worker with the accept batch C{--accept-batch} (C{twisted}: Twisted's own).
    """
    from netguard import worker
    from netguard.workers import listeners

    listeners.ACCEPT_BATCH = None if args.accept_batch == "twisted" else int(args.accept_batch)
    return worker.main(["netguard.worker", args.spec])


def gateway_child(args: argparse.Namespace) -> int:
    """
    Run C{twistd} in this process (the supervisor), in mode C{--mode}.
    """
    if args.mode == "reuseport":
        _use_reuseport()
    if args.mode == "inherit-batch":
        _use_batch_worker("twisted")
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *args.twistd]
    run()
    return 0


# -- measuring -------------------------------------------------------------------------------


def ctl_status(path: str) -> dict[str, Any]:
    """
    C{status} over the control socket (blocking, bounded).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(b"status\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    text = data.decode()
    if not text.startswith("OK "):
        raise RuntimeError(f"status: {text!r}")
    return json.loads(text[3:])  # type: ignore[no-any-return]


def per_worker(status: dict[str, Any]) -> list[int]:
    """
    The connections each worker accepted so far (the gateway's own for one process).
    """
    rows = status.get("workers")
    if not rows:
        return [int(status.get("connections", 0))]
    return [int(row.get("connections") or 0) for row in rows]


def wait_ready(control: str, workers: int, timeout: float = 30.0) -> None:
    """
    Wait until every worker serves (or the single process answers).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = ctl_status(control)
            if workers == 1 or status.get("workers_running") == workers:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the workers did not all start")


def measure(
    args: argparse.Namespace, setup: pathmod.Setup, work: str, mode: str
) -> dict[str, Any]:
    """
    Start the gateway in C{mode}, warm it up, time C{--sessions} sessions; stop it.
    """
    processes = Processes(work)
    state = tempfile.mkdtemp(prefix=f"state-{mode}-", dir=work)
    config = os.path.join(state, "bench.toml")
    workers = 1 if mode == "one" else 2
    with open(config, "w") as f:
        f.write(f"workers = {workers}\n" + pathmod.NETGUARD_CONFIG)
        f.write("[limits]\ngreeting_delay = 0\n")
    port, backend = free_port(), free_port()
    control = os.path.join(state, "control.sock")
    tree = os.path.dirname(HERE)
    env = dict(os.environ, PYTHONPATH=tree)
    try:
        echo = processes.start(
            f"echo-{mode}",
            [sys.executable, profile_session.__file__, "_echo", "--port", str(backend)],
            args.client_cpu,
        )
        processes.wait_listening(echo, backend)
        twistd_args = [
            "-n", "--pidfile=", "--logger", "netguard.log.text_stdout_observer", "netguard",
            "--config", config, "--state-dir", state, "--users", setup.users_file,
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--service", f"echo=tcp:host=127.0.0.1:port={backend}",
        ]  # fmt: skip
        gateway = processes.start(
            f"gateway-{mode}",
            [sys.executable, __file__, "_gateway", "--mode", mode, "--", *twistd_args],
            args.gateway_cpu,
            cwd=tree,
            env=env,
        )
        try:
            wait_ready(control, workers)
        except RuntimeError:
            raise RuntimeError(gateway.log_tail(40)) from None
        target = loadgen.NGPTarget("echo", setup.user, _read(setup.password_file))
        scram = loadgen.ScramClient(target.user, target.password)

        def window(count: int) -> tuple[int, int, float]:
            session = partial(profile_session._session, port, target, scram)
            return asyncio.run(profile_session._drive(session, count, args.conns, args.seconds))

        window(args.warmup)
        time.sleep(0.5)
        idle0 = group_cpu_seconds(gateway.pid)
        time.sleep(1.0)
        idle = group_cpu_seconds(gateway.pid) - idle0
        before = per_worker(ctl_status(control))
        cpu0 = group_cpu_seconds(gateway.pid)
        done, failed, wall = window(args.sessions)
        time.sleep(0.5)
        cpu = group_cpu_seconds(gateway.pid) - cpu0 - idle * (wall + 0.5)
        after = per_worker(ctl_status(control))
        accepted = [a - b for a, b in zip(after, before, strict=True)]
        return {
            "mode": mode,
            "sessions": done,
            "failed": failed,
            "rate": done / wall,
            "us_per_session": 1e6 * cpu / max(done, 1),
            "accepted": accepted,
            "busiest_share": max(accepted) / max(1, sum(accepted)),
            "load": os.getloadavg()[0],
        }
    finally:
        processes.stop_all()
        shutil.rmtree(state, ignore_errors=True)


def greeted(port: int, count: int, timeout: float = 5.0) -> tuple[int, list[str]]:
    """
    Open C{count} connections from 127.0.0.1 at once, hold them, and read each one's first
    line: how many were greeted (C{NETGUARD/1 ...}) while all are held, and the other
    first lines (refusals), before closing them all.
    """
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            socks.append(sock)
        lines = []
        for sock in socks:
            try:
                lines.append(sock.recv(256).split(b"\r\n")[0].decode("ascii", "replace"))
            except TimeoutError:
                lines.append("(silent)")
        good = sum(1 for line in lines if line.startswith("NETGUARD/1"))
        return good, sorted({line for line in lines if not line.startswith("NETGUARD/1")})
    finally:
        for sock in socks:
            sock.close()


def measure_caps(
    args: argparse.Namespace, setup: pathmod.Setup, work: str, mode: str
) -> dict[str, Any]:
    """
    How close two workers stay to the configured caps, the kernel spreading the
    connections as it does: C{per_source_max = 5} (each worker 3: at most 6 together) and
    C{max_unauthenticated = 7} (4 + 3: never more than 7 greeted at once).
    """
    results: dict[str, Any] = {}
    for name, table, wanted in (
        ("per_source_max=5", "per_source_max = 5\n", 30),
        (
            "max_unauthenticated=7",
            "max_unauthenticated = 7\nmax_connections = 16\nper_source_max = 64\n",
            30,
        ),
    ):
        processes = Processes(work)
        state = tempfile.mkdtemp(prefix="state-caps-", dir=work)
        config = os.path.join(state, "bench.toml")
        base = pathmod.NETGUARD_CONFIG.replace("per_source_max = 8192\n", "").replace(
            "max_unauthenticated = 2048\n", ""
        )
        base = base.replace("max_connections = 8192\n", "")
        with open(config, "w") as f:
            f.write("workers = 2\n" + base + table + "[limits]\ngreeting_delay = 0\n")
        port = free_port()
        control = os.path.join(state, "control.sock")
        tree = os.path.dirname(HERE)
        try:
            gateway = processes.start(
                "gateway-caps",
                [
                    sys.executable, __file__, "_gateway", "--mode", mode, "--",
                    "-n", "--pidfile=", "netguard", "--config", config, "--state-dir", state,
                    "--users", setup.users_file, "--listen", f"tcp:{port}:interface=127.0.0.1",
                ],
                None if args.gateway_cpu < 0 else args.gateway_cpu,
                cwd=tree,
                env=dict(os.environ, PYTHONPATH=tree),
            )  # fmt: skip
            try:
                wait_ready(control, 2)
            except RuntimeError:
                raise RuntimeError(gateway.log_tail()) from None
            counts = []
            refusals: set[str] = set()
            for _ in range(args.cap_trials):
                good, other = greeted(port, wanted)
                counts.append(good)
                refusals.update(other)
                time.sleep(1.5)  # probation and slots over before the next trial
            results[name] = {"greeted": counts, "refusals": sorted(refusals)}
        finally:
            processes.stop_all()
            shutil.rmtree(state, ignore_errors=True)
    return results


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("_gateway")
    child.add_argument("--mode", choices=MODES, required=True)
    child.add_argument("twistd", nargs=argparse.REMAINDER)
    one = sub.add_parser("_worker")
    one.add_argument("--accept-batch", required=True)
    one.add_argument("spec")
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0, help="bound on one window")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--gateway-cpu", type=int, default=1, help="-1: not pinned")
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--cap-trials", type=int, default=5, help="0: skip the caps check")
    args = parser.parse_args(argv)
    if args.command == "_gateway":
        args.twistd = [a for a in args.twistd if a != "--"]
        return gateway_child(args)
    if args.command == "_worker":
        return worker_child(args)
    os.sched_setaffinity(0, {args.client_cpu})
    work = tempfile.mkdtemp(prefix="ngbench-workers-")
    venv_bin = os.path.dirname(sys.executable)
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes.split(",")}
    try:
        setup = pathmod.prepare(work, Processes(work), None, venv_bin)
        for run in range(args.runs):
            for mode in results:
                r = measure(args, setup, work, mode)
                results[mode].append(r)
                print(
                    f"run {run + 1} {mode:9s} {r['rate']:7.0f} sessions/s "
                    f"{r['us_per_session']:6.0f} us/session accepted {r['accepted']} "
                    f"failed {r['failed']} load {r['load']:.2f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.cap_trials:
        work = tempfile.mkdtemp(prefix="ngbench-workers-")
        try:
            setup = pathmod.prepare(work, Processes(work), None, venv_bin)
            for mode in ("inherit", "inherit-batch", "reuseport"):
                caps = measure_caps(args, setup, work, mode)
                for name, row in caps.items():
                    print(
                        f"caps {mode:9s} {name}: greeted at once {row['greeted']} "
                        f"refusals {row['refusals']}",
                        flush=True,
                    )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print("\nmedians over", args.runs, "runs:")
    ones = results.get("one")
    anchor = statistics.median(r["us_per_session"] for r in ones) if ones else None
    for mode, rows in results.items():
        if not rows:
            continue
        rate = statistics.median(r["rate"] for r in rows)
        cpu = statistics.median(r["us_per_session"] for r in rows)
        share = statistics.median(r["busiest_share"] for r in rows)
        ratio = f" cpu/session x{cpu / anchor:.2f} of one" if anchor else ""
        print(
            f"{mode:9s} {rate:7.0f} sessions/s {cpu:6.0f} us/session "
            f"busiest worker {100 * share:5.1f}%{ratio}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""
Workers and instances: authenticated sessions per second, bulk throughput and the CPU each
process spends, for one gateway process, two workers, two instances behind HAProxy, and
HAProxy alone. Not part of the benchmark figures.

    .venv/bin/python bench/workers.py                       # 3 runs of each mode, interleaved
    .venv/bin/python bench/workers.py --runs 5 --seconds 5 --cap-trials 5

Modes, interleaved in each run (one, two, haproxy+2, haproxy, one, two, ...):

* C{one}: C{workers = 1}, the single-process gateway (the anchor).
* C{two}: C{workers = 2} as shipped: the supervisor opens one listening socket and both
  workers accept on an inherited copy.
* C{haproxy+2}: HAProxy (Debian, mode tcp, one thread, C{balance roundrobin}, C{send-proxy-v2})
  in front of two separate gateways, each C{workers = 1} with its own state directory and a
  C{haproxy:proxy_from=127.0.0.1:tcp:...} listener (HAProxy's source address).
* C{haproxy}: HAProxy alone relaying to the same backends, no NGP/1 (the anchor of the
  relays: what a connection costs a C relay that does no authentication).
* C{reuseport}, C{inherit-batch} (not run by default): C{workers = 2} with one
  C{SO_REUSEPORT} socket per worker instead of the inherited one (this benchmark replaces the
  supervisor's listener), or with Twisted's own accept batch.

Sessions: with C{--client c} (the default) C{ngp_connrate}, the compiled client
(C{bench/ngp_connrate.c}, built by C{cclient.py}: one epoll loop, C{--conns} at a time,
SCRAM-SHA-256 with the salted password and the keys derived from it cached per RFC 5802, so a
session costs it two HMACs and a few system calls); with C{--client python}
C{loadgen.py connrate --ngp redis:...} (one asyncio process, the same caching). Each session:
connect, greeting (C{greeting_delay = 0}), SCRAM, C{OPEN redis}, one PING (14 bytes) answered
by redis-server (7 bytes), close; C{--seconds} long, after a one-second warm-up run of the
same client. HAProxy alone is driven by the same client without NGP/1. Bulk:
C{loadgen.py bulk --direction up --bytes --bulk} through one session to C{backend.py}'s sink
(C{OPEN bulk}; HAProxy alone: straight through). The gateways' services keep the shipped
defaults (the kernel relay on).

Pinning: the path under test (the gateway's supervisor and workers; or HAProxy and both
instances) on CPU 1 (C{--gateway-cpu}), the load generator, redis-server and the sink on
CPU 0. So two workers share one core here: the wall-clock rates show what one core gives,
and the CPU per session (utime + stime from C{/proc/<pid>/stat} of every process of the path,
less its idle CPU over the same time, each process also on its own) gives what free cores
would: C{2 free cores} = min(2 cores / the path's CPU per session, 1 core / its busiest
process's). The generator's own CPU per session is printed beside. Medians of C{--runs};
the load average is printed with each run. Every process started is stopped by its process
group id. C{--cap-trials N} adds the burst check of two workers against C{per_source_max}
and C{max_unauthenticated}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cclient  # noqa: E402
import loadgen  # noqa: E402
import paths as pathmod  # noqa: E402
import profile_session  # noqa: E402
from procs import (  # noqa: E402
    Processes,
    Server,
    free_port,
    group_cpu_seconds,
    group_members,
    run_generator,
)
from profile_bulk import start_backend  # noqa: E402
from profile_rr import start_redis  # noqa: E402

MODES = ("one", "two", "haproxy+2", "haproxy", "reuseport", "inherit-batch")

#: The modes run by default: the issue's comparison.
DEFAULT_MODES = "one,two,haproxy+2,haproxy"


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


def _pin(cpu: int) -> int | str:
    """
    The CPU a path is pinned to; every CPU for -1 (this script runs pinned to the client's
    CPU, and a child left unpinned would inherit that).
    """
    return f"0-{(os.cpu_count() or 1) - 1}" if cpu < 0 else cpu


def start_instance(
    args: argparse.Namespace,
    setup: pathmod.Setup,
    processes: Processes,
    name: str,
    mode: str,
    workers: int,
    listen: str,
    services: dict[str, int],
) -> tuple[Server, str]:
    """
    Start one gateway (C{twistd netguard} run by this script's C{_gateway}, so that C{mode}
    can replace the listener for this benchmark) with its own state directory, the
    benchmark's configuration and C{greeting_delay = 0}, on the gateway CPU; wait until every
    worker serves.

    @param listen: the listener (C{tcp:...} or C{haproxy:proxy_from=...:tcp:...}).
    @param services: service name to backend port on 127.0.0.1.
    @return: the server (its process group holds the supervisor and the workers) and its
        control socket.
    """
    state = tempfile.mkdtemp(prefix=f"state-{name}-", dir=setup.work)
    config = os.path.join(state, "bench.toml")
    with open(config, "w") as f:
        f.write(f"workers = {workers}\n" + pathmod.NETGUARD_CONFIG)
        f.write("[limits]\ngreeting_delay = 0\n")
    tree = os.path.dirname(HERE)
    service_args = [
        arg
        for service, port in services.items()
        for arg in ("--service", f"{service}=tcp:host=127.0.0.1:port={port}")
    ] + ["--service", "echo=builtin:echo"]
    twistd_args = [
        "-n", "--pidfile=", "--logger", "netguard.log.text_stdout_observer", "netguard",
        "--config", config, "--state-dir", state, "--users", setup.users_file,
        "--listen", listen, *service_args,
    ]  # fmt: skip
    server = processes.start(
        name,
        [sys.executable, __file__, "_gateway", "--mode", mode, "--", *twistd_args],
        _pin(args.gateway_cpu),
        cwd=tree,
        env=dict(os.environ, PYTHONPATH=tree),
    )
    return server, os.path.join(state, "control.sock")


def start_haproxy(
    processes: Processes,
    work: str,
    cpu: int | str | None,
    routes: list[tuple[int, list[int], bool]],
) -> Server:
    """
    HAProxy (Debian), mode tcp, one thread (pinned to one CPU), one frontend per route
    balancing C{roundrobin} over its servers, with C{send-proxy-v2} when the route says so.

    @param routes: (front port, server ports, send a PROXY v2 header) for each frontend.
    """
    path = os.path.join(work, f"haproxy-{routes[0][0]}.cfg")
    text = (
        "global\n    maxconn 8192\n"
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n"
        "    timeout server 1h\n    maxconn 8192\n"
    )
    for n, (front, servers, send_proxy) in enumerate(routes):
        text += f"frontend f{n}\n    bind 127.0.0.1:{front}\n    default_backend b{n}\n"
        text += f"backend b{n}\n    balance roundrobin\n"
        for i, port in enumerate(servers):
            text += f"    server s{i} 127.0.0.1:{port}" + (" send-proxy-v2" if send_proxy else "")
            text += "\n"
    with open(path, "w") as f:
        f.write(text)
    server = processes.start("haproxy", ["haproxy", "-db", "-f", path], cpu)
    for front, _, _ in routes:
        processes.wait_listening(server, front)
    return server


def cpu_by_process(groups: dict[str, int]) -> dict[str, float]:
    """
    CPU seconds (utime + stime, from C{/proc}) of each group (C{label}: every process of it,
    with the children its leader reaped) and, for a group of several processes (a supervisor
    and its workers), of each one: C{label.supervisor} (the leader) and C{label.PID}.
    """
    out: dict[str, float] = {}
    for label, pgid in groups.items():
        out[label] = group_cpu_seconds(pgid)
        members = group_members(pgid)
        if len(members) < 2:
            continue
        for pid in members:
            try:
                own = profile_session.cpu_seconds(pid)
            except OSError:
                continue
            out[f"{label}.supervisor" if pid == pgid else f"{label}.{pid}"] = own
    return out


def loadgen_run(
    args: argparse.Namespace, port: int, ngp: str | None, command: list[str], log: str
) -> dict[str, Any]:
    """
    Run C{loadgen.py COMMAND} on the client CPU against C{port}; its JSON result, with
    C{gen_s}: the generator's CPU seconds over its timed window.
    """
    argv = [sys.executable, loadgen.__file__, "--port", str(port)]
    if ngp:
        argv += ["--ngp", ngp]
    done = run_generator([*argv, *command], args.client_cpu, 300.0, log)
    if done.returncode or done.timed_out:
        with open(log) as f:
            raise RuntimeError(f"loadgen {command[0]} failed: {f.read()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["gen_s"] = result["gen_cpu_pct"] / 100 * result["window_s"]
    return result


def sessions_run(
    args: argparse.Namespace, port: int, ngp: str | None, seconds: float, log: str
) -> dict[str, Any]:
    """
    Run C{--seconds} of sessions with the client C{--client} on the client CPU: the result of
    C{loadgen.py connrate} (the C client prints the same keys), with C{gen_s}: the
    generator's CPU seconds over its timed window.
    """
    if args.client == "python":
        command = ["connrate", "--conns", str(args.conns), "--procs", "1"]
        return loadgen_run(args, port, ngp, [*command, "--seconds", str(seconds)], log)
    echo = bool(ngp) and args.service == "echo"
    result = cclient.run_connrate(
        port, ngp, args.conns, seconds, cpu=args.client_cpu, log=log, echo=echo
    )
    result["gen_s"] = result["cpu_s"]
    return result


def timed(
    groups: dict[str, int], idle: dict[str, float], run: Any
) -> tuple[dict[str, Any], dict[str, float]]:
    """
    Run C{run()} and return its result and the CPU seconds each process used meanwhile, less
    its idle CPU over the same time (C{idle}: seconds per second).
    """
    before = cpu_by_process(groups)
    t0 = time.monotonic()
    result = run()
    wall = time.monotonic() - t0
    after = cpu_by_process(groups)
    used = {
        key: after[key] - before[key] - idle.get(key, 0.0) * wall for key in after if key in before
    }
    return result, used


def measure(
    args: argparse.Namespace, setup: pathmod.Setup, redis: int, sink: int, mode: str
) -> dict[str, Any]:
    """
    Start the path of C{mode}, warm it up, then time C{--seconds} of authenticated sessions
    and one C{--bulk}-byte upload; stop it.
    """
    processes = Processes(setup.work)
    services = {"redis": redis, "bulk": sink}
    ngp_redis = f"{args.service}:{setup.user}:{setup.password_file}"
    ngp_bulk = f"bulk:{setup.user}:{setup.password_file}"
    controls: dict[str, str] = {}
    groups: dict[str, int] = {}
    log = os.path.join(setup.work, f"loadgen-{mode}.log")
    try:
        if mode == "haproxy":
            front, bulk_front = free_port(), free_port()
            hp = start_haproxy(
                processes,
                setup.work,
                _pin(args.gateway_cpu),
                [(front, [redis], False), (bulk_front, [sink], False)],
            )
            groups["haproxy"] = hp.pid
            ngp_redis = ngp_bulk = ""
        elif mode == "haproxy+2":
            ports = [free_port(), free_port()]
            for name, port in zip(("a", "b"), ports, strict=True):
                listen = f"haproxy:proxy_from=127.0.0.1:tcp:{port}:interface=127.0.0.1"
                server, controls[name] = start_instance(
                    args, setup, processes, f"instance-{name}", "one", 1, listen, services
                )
                groups[name] = server.pid
            for control in controls.values():
                wait_ready(control, 1)
            front = bulk_front = free_port()
            hp = start_haproxy(
                processes, setup.work, _pin(args.gateway_cpu), [(front, ports, True)]
            )
            groups["haproxy"] = hp.pid
        else:
            workers = 1 if mode == "one" else 2
            front = bulk_front = free_port()
            listen = f"tcp:{front}:interface=127.0.0.1"
            server, controls["gateway"] = start_instance(
                args, setup, processes, f"gateway-{mode}", mode, workers, listen, services
            )
            groups["gateway"] = server.pid
            try:
                wait_ready(controls["gateway"], workers)
            except RuntimeError:
                raise RuntimeError(server.log_tail(40)) from None
        sessions_run(args, front, ngp_redis, 1.0, log)  # warm-up
        time.sleep(0.5)
        idle0 = cpu_by_process(groups)
        time.sleep(1.0)
        idle = {
            key: value - idle0.get(key, value) for key, value in cpu_by_process(groups).items()
        }
        before = {name: ctl_status(path) for name, path in controls.items()}
        rate, cpu = timed(
            groups,
            idle,
            lambda: sessions_run(args, front, ngp_redis, args.seconds, log),
        )
        after = {name: ctl_status(path) for name, path in controls.items()}
        accepted = [
            a - b
            for name in controls
            for a, b in zip(per_worker(after[name]), per_worker(before[name]), strict=True)
        ]
        bulk, bulk_cpu = timed(
            groups,
            idle,
            lambda: loadgen_run(
                args,
                bulk_front,
                ngp_bulk,
                ["bulk", "--direction", "up", "--bytes", str(args.bulk)],
                log,
            ),
        )
        count = rate["connections"] + 1  # and the one that filled the SCRAM cache
        return {
            "mode": mode,
            "sessions": rate["connections"],
            "errors": rate["errors"],
            "error_sample": rate.get("error_sample", []),
            "rate": rate["rate"],
            "cpu_us": {key: 1e6 * value / count for key, value in cpu.items()},
            "gen_us": 1e6 * rate["gen_s"] / count,
            "accepted": accepted,
            "busiest_share": max(accepted) / max(1, sum(accepted)) if accepted else 1.0,
            "mb_per_s": bulk["mb_per_s"],
            "bulk_s_per_gib": {
                key: value / (bulk["bytes"] / 2**30) for key, value in bulk_cpu.items()
            },
            "bulk_gen_s_per_gib": bulk["gen_s"] / (bulk["bytes"] / 2**30),
            "load": os.getloadavg()[0],
        }
    finally:
        processes.stop_all()


def path_total(figures: dict[str, float]) -> float:
    """
    The path's CPU: the sum of its groups' totals.
    """
    return sum(value for key, value in figures.items() if "." not in key)


def busiest_process(figures: dict[str, float]) -> float:
    """
    The busiest single process's figure (a supervisor, a worker, a single-process gateway,
    HAProxy).
    """
    split = {key.split(".")[0] for key in figures if "." in key}
    return max(value for key, value in figures.items() if ("." in key) or (key not in split))


def projected_rate(cpu_us: dict[str, float], cores: int) -> float:
    """
    Sessions per second the path would serve with C{cores} free cores for itself: bounded by
    all its CPU spread over the cores and by its busiest process on one core.
    """
    return min(cores * 1e6 / path_total(cpu_us), 1e6 / busiest_process(cpu_us))


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
                _pin(args.gateway_cpu),
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


def _parts(figures: dict[str, float], form: str = ".0f") -> str:
    return ", ".join(f"{key} {value:{form}}" for key, value in sorted(figures.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("_gateway")
    child.add_argument("--mode", choices=MODES, required=True)
    child.add_argument("twistd", nargs=argparse.REMAINDER)
    one = sub.add_parser("_worker")
    one.add_argument("--accept-batch", required=True)
    one.add_argument("spec")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed sessions per mode")
    parser.add_argument("--bulk", type=int, default=1 << 30, help="bytes uploaded per mode")
    parser.add_argument("--conns", type=int, default=16, help="sessions at a time")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--service",
        choices=["redis", "echo"],
        default="redis",
        help="each session's service: redis-server (PING) or the built-in echo (no backend "
        "process sharing the cores; the C client only)",
    )
    parser.add_argument("--modes", default=DEFAULT_MODES, help=f"of {', '.join(MODES)}")
    parser.add_argument("--gateway-cpu", type=int, default=1, help="-1: not pinned")
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--cap-trials", type=int, default=0, help="0: skip the caps check")
    parser.add_argument(
        "--client",
        choices=("c", "python"),
        default="c",
        help="the sessions' client: the compiled ngp_connrate (c) or loadgen.py connrate",
    )
    args = parser.parse_args(argv)
    if args.command == "_gateway":
        args.twistd = [a for a in args.twistd if a != "--"]
        return gateway_child(args)
    if args.command == "_worker":
        return worker_child(args)
    if args.service == "echo" and args.client != "c":
        raise SystemExit("workers.py --service echo: needs --client c")
    if args.client == "c":
        try:
            cclient.build()
        except cclient.BuildError as e:
            raise SystemExit(f"workers.py --client c: {e}") from None
    os.sched_setaffinity(0, {args.client_cpu})
    work = tempfile.mkdtemp(prefix="ngbench-workers-")
    venv_bin = os.path.dirname(sys.executable)
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes.split(",")}
    backends = Processes(work)
    try:
        setup = pathmod.prepare(work, Processes(work), None, venv_bin)
        redis = start_redis(backends, work)
        sink = start_backend(backends, sys.executable)
        for run in range(args.runs):
            for mode in results:
                r = measure(args, setup, redis, sink, mode)
                results[mode].append(r)
                print(
                    f"run {run + 1} {mode:9s} {r['rate']:6.0f} sessions/s "
                    f"path {path_total(r['cpu_us']):4.0f} us/session [{_parts(r['cpu_us'])}] "
                    f"{args.client} client {r['gen_us']:4.0f} us; accepted {r['accepted']} "
                    f"errors {r['errors']} {r['error_sample'] if r['errors'] else ''}; "
                    f"bulk {r['mb_per_s']:5.0f} MB/s "
                    f"path {path_total(r['bulk_s_per_gib']):.2f} s/GiB "
                    f"[{_parts(r['bulk_s_per_gib'], '.2f')}]; load {r['load']:.2f}",
                    flush=True,
                )
    finally:
        backends.stop_all()
        if args.keep:
            print(f"kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.cap_trials:
        work = tempfile.mkdtemp(prefix="ngbench-workers-")
        try:
            setup = pathmod.prepare(work, Processes(work), None, venv_bin)
            for mode in ("two", "inherit-batch", "reuseport"):
                caps = measure_caps(args, setup, work, mode)
                for name, row in caps.items():
                    print(
                        f"caps {mode:9s} {name}: greeted at once {row['greeted']} "
                        f"refusals {row['refusals']}",
                        flush=True,
                    )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    report(results, args.runs)
    return 0


def _median_parts(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """
    Median of each part (group or process) of C{key} over the runs, worker PIDs renamed
    C{worker1}, C{worker2} (busiest first) so that the runs line up.
    """
    renamed = []
    for row in rows:
        parts = dict(row[key])
        workers = [k for k in parts if "." in k and not k.endswith(".supervisor")]
        for n, k in enumerate(sorted(workers, key=lambda k: -parts[k]), 1):
            parts[f"{k.split('.')[0]}.worker{n}"] = parts.pop(k)
        renamed.append(parts)
    keys = set.intersection(*(set(p) for p in renamed))
    return {k: statistics.median(p[k] for p in renamed) for k in keys}


def report(results: dict[str, list[dict[str, Any]]], runs: int) -> None:
    """
    Print the medians per mode, the ratios to C{one}, and what 1 and 2 free cores would give.
    """
    print(f"\nmedians over {runs} runs (us: CPU microseconds per authenticated session):")
    anchor: float | None = None
    for mode, rows in results.items():
        if not rows:
            continue
        cpu = _median_parts(rows, "cpu_us")
        bulk = _median_parts(rows, "bulk_s_per_gib")
        rate = statistics.median(r["rate"] for r in rows)
        gen = statistics.median(r["gen_us"] for r in rows)
        share = statistics.median(r["busiest_share"] for r in rows)
        mb = statistics.median(r["mb_per_s"] for r in rows)
        one_core = 1e6 / path_total(cpu)
        two_cores = projected_rate(cpu, 2)
        if mode == "one":
            anchor = two_cores
        ratio = f" (x{two_cores / anchor:.2f} of one)" if anchor else ""
        print(
            f"{mode:9s} measured {rate:6.0f} sessions/s, path {path_total(cpu):4.0f} us "
            f"[{_parts(cpu)}], generator {gen:4.0f} us, busiest {100 * share:5.1f}%; "
            f"1 core {one_core:5.0f}/s, 2 free cores {two_cores:5.0f}/s{ratio}; "
            f"bulk {mb:5.0f} MB/s, path {path_total(bulk):.2f} s/GiB [{_parts(bulk, '.2f')}]"
        )


if __name__ == "__main__":
    raise SystemExit(main())

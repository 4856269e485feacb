"""
New connections per second through C{netguard tunnel}, with and without C{--mux}, and the CPU
each connection costs the tunnel and the gateway. Not part of the benchmark figures.

    .venv/bin/python bench/profile_mux.py                  # 3 interleaved runs of each
    .venv/bin/python bench/profile_mux.py --connections 4000 --conns 32

Each run starts a TCP echo backend, the real gateway (C{twistd -n netguard}, the generated
benchmark configuration of C{paths.py} plus C{greeting_delay = 0}, so that the per-connection
path is not held back by the greeting delay, which costs time but no CPU) pinned to CPU 1, and
the real C{netguard tunnel} (C{--mux} or not) pinned to CPU 0, both running the checkout
given by C{--tree}. The client, in this process, and the echo backend run on CPU 1 beside the
gateway (CPU 0 is the tunnel's alone). Each connection: connect to the tunnel's TCP port, 16
bytes echoed, close; C{--conns} at a time. The figures: connections per second, and each
process's own CPU (utime + stime from C{/proc/<pid>/stat}, less its idle CPU measured just
before) per connection. The two modes alternate within each run (per-connection, mux, ...)
and the medians of C{--runs} runs are printed with the load average of each run. Everything
runs on 127.0.0.1, bounded in count and time, and every process started is stopped by its
own process group id.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from functools import partial
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import paths as pathmod  # noqa: E402
from procs import Processes, free_port  # noqa: E402
from profile_session import _drive, _load, _relayed, cpu_seconds  # noqa: E402

#: The modes compared, in the order they alternate.
MODES = ("per-connection", "mux")


def measure(
    args: argparse.Namespace, setup: pathmod.Setup, work: str, mode: str
) -> dict[str, Any]:
    """
    Start the backend, gateway and tunnel (C{--mux} when C{mode} is C{"mux"}), warm up, time
    C{--connections} connections, stop what was started.
    """
    processes = Processes(work)
    tree = os.path.abspath(args.tree)
    env = dict(os.environ, PYTHONPATH=tree)
    state = tempfile.mkdtemp(prefix=f"state-{mode}-", dir=work)
    config = os.path.join(state, "bench.toml")
    with open(config, "w") as f:
        f.write(pathmod.NETGUARD_CONFIG + "[limits]\ngreeting_delay = 0\n")
        if args.open_rate:
            f.write(f"[mux]\nopen_rate = {args.open_rate}\n")
    gateway_port, backend, tunnel_port = free_port(), free_port(), free_port()
    try:
        echo = processes.start(
            f"echo-{mode}",
            [sys.executable, os.path.join(HERE, "profile_session.py"), "_echo",
             "--port", str(backend)],
            args.client_cpu,
        )  # fmt: skip
        processes.wait_listening(echo, backend)
        gateway = processes.start(
            f"gateway-{mode}",
            [
                sys.executable, os.path.join(HERE, "profile_session.py"), "_gateway",
                *(["--cprofile", os.path.join(args.cprofile, f"gateway-{mode}.prof")]
                  if args.cprofile else []),
                "--",
                "-n", "--pidfile=", "--logger", "netguard.log.text_stdout_observer",
                "netguard", "--config", config, "--state-dir", state,
                "--users", setup.users_file,
                "--listen", f"tcp:{gateway_port}:interface=127.0.0.1",
                "--service", f"echo=tcp:host=127.0.0.1:port={backend}",
            ],
            args.gateway_cpu, cwd=tree, env=env,
        )  # fmt: skip
        processes.wait_listening(gateway, gateway_port, timeout=30)
        tunnel = processes.start(
            f"tunnel-{mode}",
            [
                sys.executable,
                *(["-m", "cProfile", "-o", os.path.join(args.cprofile, f"tunnel-{mode}.prof")]
                  if args.cprofile else []),
                "-m", "netguard.cli", "tunnel",
                *(["--mux"] if mode == "mux" else []),
                "--gateway", f"tcp:host=127.0.0.1:port={gateway_port}",
                "--service", "echo", "--listen", f"tcp:{tunnel_port}:interface=127.0.0.1",
                "--user", setup.user, "--password-file", setup.password_file,
            ],
            args.tunnel_cpu, cwd=tree, env=env,
        )  # fmt: skip
        processes.wait_listening(tunnel, tunnel_port, timeout=30)

        def window(count: int) -> tuple[int, int, float]:
            return asyncio.run(
                _drive(partial(_relayed, tunnel_port), count, args.conns, args.seconds)
            )

        window(args.warmup)
        time.sleep(0.5)
        pids = {"tunnel": tunnel.pid, "gateway": gateway.pid}
        idle0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        time.sleep(1.0)
        idle = {name: cpu_seconds(pid) - idle0[name] for name, pid in pids.items()}
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        if args.cprofile:
            os.kill(gateway.pid, signal.SIGUSR2)
        done, failed, wall = window(args.connections)
        if args.cprofile:
            os.kill(gateway.pid, signal.SIGUSR2)
        time.sleep(0.5)  # the last closes
        result: dict[str, Any] = {
            "mode": mode, "connections": done, "failed": failed, "wall_s": wall,
            "rate": done / wall,
        }  # fmt: skip
        for name, pid in pids.items():
            cpu = cpu_seconds(pid) - cpu0[name] - idle[name] * (wall + 0.5)
            result[f"{name}_us"] = 1e6 * cpu / max(done, 1)
            result[f"{name}_cpu_pct"] = 100 * cpu / wall
        with open(gateway.log_path, errors="replace") as f:
            result["logins"] = sum(1 for line in f if "authenticated " in line)
        return result
    finally:
        processes.stop_all()
        shutil.rmtree(state, ignore_errors=True)


def _report(run: int, r: dict[str, Any]) -> None:
    sys.stdout.write(
        f"run {run} {r['mode']}: {r['rate']:.0f} conn/s ({r['connections']} done, "
        f"{r['failed']} failed), tunnel {r['tunnel_us']:.0f} us/conn "
        f"({r['tunnel_cpu_pct']:.0f}% CPU), gateway {r['gateway_us']:.0f} us/conn "
        f"({r['gateway_cpu_pct']:.0f}% CPU), gateway logins {r['logins']}, load {r['load']}\n"
    )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=3000, help="timed per run")
    parser.add_argument("--warmup", type=int, default=300, help="connections before timing")
    parser.add_argument("--conns", type=int, default=16, help="connections in flight at once")
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode, interleaved")
    parser.add_argument("--seconds", type=float, default=60.0, help="bound on one window")
    parser.add_argument("--tree", default=".", help="the checkout to run")
    parser.add_argument(
        "--open-rate", type=float, help="the gateway's [mux] open_rate (default: its default)"
    )
    parser.add_argument(
        "--cprofile",
        metavar="DIR",
        help="write cProfile statistics of the gateway (timed window) and the tunnel (its "
        "whole life) into DIR; the CPU figures are then not comparable",
    )
    parser.add_argument("--tunnel-cpu", type=int, default=0)
    parser.add_argument("--gateway-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=1)
    args = parser.parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        args.tunnel_cpu = args.gateway_cpu = args.client_cpu = None
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})
    work = tempfile.mkdtemp(prefix="netguard-mux-")
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    try:
        setup = pathmod.prepare(work, Processes(work), None, os.path.dirname(sys.executable))
        for run in range(1, args.runs + 1):
            for mode in MODES:
                load = _load()
                r = measure(args, setup, work, mode)
                r["load"] = load
                results[mode].append(r)
                _report(run, r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write("medians:\n")
    for mode, runs in results.items():
        med = {
            key: statistics.median(r[key] for r in runs)
            for key in ("rate", "tunnel_us", "gateway_us")
        }
        rates = ", ".join(f"{r['rate']:.0f}" for r in runs)
        sys.stdout.write(
            f"  {mode}: {med['rate']:.0f} conn/s, tunnel {med['tunnel_us']:.0f} us/conn, "
            f"gateway {med['gateway_us']:.0f} us/conn "
            f"(rates per run: {rates})\n"
        )
    base, mux = results["per-connection"], results["mux"]
    ratios = [m["rate"] / b["rate"] for b, m in zip(base, mux, strict=True)]
    sys.stdout.write(
        f"ratio mux / per-connection, connections per second: {statistics.median(ratios):.2f}x "
        f"(per run: {', '.join(f'{x:.2f}' for x in ratios)})\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

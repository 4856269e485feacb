"""
Request/response through the gateway: C{redis-benchmark -t get -c 50} against a real
redis-server, the gateway's CPU per request with and without the kernel relay beside
HAProxy's (mode tcp) in the same interleaved run. Not part of the benchmark figures.

    .venv/bin/python bench/profile_rr.py                     # 3 runs of 200,000 GETs
    .venv/bin/python bench/profile_rr.py --profile py-spy    # + py-spy top-N per gateway
    .venv/bin/python bench/profile_rr.py --requests 500000 --runs 5

redis-benchmark cannot speak NGP/1, so it reaches the gateway through C{netguard tunnel}, the
only NGP/1 client: redis-benchmark, the tunnel and redis-server run on CPU 0, the relay being
measured (the gateway, or HAProxy in front of the same redis-server) alone on CPU 1. What is
compared is the relay's own CPU time per request (utime + stime from C{/proc/<pid>/stat} over
the run, less its idle rate), the relay in each case carrying the same 50 connections' GETs
(the gateway's 50 sessions are opened, authenticated and relayed within the window: a few
milliseconds of the total). Requests per second are shown too, but on the gateway path the
tunnel shares CPU 0 with the generator and the backend, so the wall-clock rate is not the
gateway's alone. A second measurement takes the tunnel out: C{loadgen.py ping --conns 50}
speaks NGP/1 itself to the gateway (as C{bench/run.py} measures "gateway only") and plain RESP
to HAProxy. Twisted's portforward (user-space copies, no checks) is measured alongside as the
floor of a relay on Twisted. The median of the runs is printed with the ratio to HAProxy and
the load average with every run. Everything runs on 127.0.0.1; every process started is stopped by
its own process group id.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import paths as pathmod  # noqa: E402
from procs import Processes, free_port, group_cpu_seconds  # noqa: E402
from profile_bulk import (  # noqa: E402
    LOAD_CPU,
    RELAY_CPU,
    idle_rate,
    platform_line,
    start_gateway,
    start_haproxy,
)
from profile_netguard import py_spy_during  # noqa: E402


def start_redis(processes: Processes, work: str, cpu: int = LOAD_CPU) -> int:
    """
    redis-server (no persistence) on CPU C{cpu} (the load CPU unless told).

    @return: its port.
    """
    port = free_port()
    server = processes.start(
        "redis-server",
        [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
            "--logfile", "",
        ],
        cpu,
        cwd=work,
    )  # fmt: skip
    processes.wait_listening(server, port)
    return port


def start_tunnel(setup: pathmod.Setup, gateway: pathmod.Target, name: str) -> int:
    """
    C{netguard tunnel} to C{gateway}'s service C{bench}, on the load CPU.

    @return: the tunnel's port.
    """
    port = free_port()
    tunnel = setup.processes.start(
        name,
        [
            os.path.join(setup.venv_bin, "netguard"), "tunnel",
            "--gateway", f"tcp:host=127.0.0.1:port={gateway.port}",
            "--service", "bench", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--user", setup.user, "--password-file", setup.password_file,
        ],
        LOAD_CPU,
        cwd=setup.work,
        env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)},
    )  # fmt: skip
    setup.processes.wait_listening(tunnel, port)
    return port


def benchmark(port: int, relay_pid: int, requests: int) -> dict[str, float] | None:
    """
    One C{redis-benchmark -t get -c 50} through C{port}, on the load CPU.

    @return: the relay's C{us_per_request} (less its idle rate) and C{rps}, or L{None}.
    """
    idle = idle_rate(relay_pid)
    before = group_cpu_seconds(relay_pid)
    started = time.monotonic()
    done = subprocess.run(
        [
            "taskset", "-c", str(LOAD_CPU), "redis-benchmark", "-h", "127.0.0.1",
            "-p", str(port), "-t", "get", "-n", str(requests), "-c", "50", "--csv",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    wall = time.monotonic() - started
    cpu = group_cpu_seconds(relay_pid) - before - idle * wall
    if done.returncode != 0:
        sys.stderr.write(f"redis-benchmark on {port}: {done.stderr[-300:]}\n")
        return None
    rows = [row for row in csv.reader(done.stdout.splitlines()) if row and row[0] == "GET"]
    if not rows:
        return None
    return {"us_per_request": 1e6 * cpu / requests, "rps": float(rows[0][1])}


def ping(
    python: str, port: int, pid: int, ngp: str | None, seconds: float
) -> dict[str, float] | None:
    """
    C{loadgen.py ping --conns 50} (redis PING ping-pong, speaking NGP/1 itself when C{ngp}
    is given, so the gateway is reached without the tunnel), on the load CPU.

    @return: the relay's C{us_per_request} over the timed window (less its idle rate) and
        C{rps}, or L{None}.
    """
    idle = idle_rate(pid)
    command = [
        "taskset", "-c", str(LOAD_CPU), python, os.path.join(HERE, "loadgen.py"),
        "--port", str(port), "--watch", f"relay:{pid}",
    ]  # fmt: skip
    if ngp:
        command += ["--ngp", ngp]
    command += ["ping", "--conns", "50", "--seconds", str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        sys.stderr.write(f"loadgen ping on {port}: {done.stderr[-300:]}\n")
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    window = result["window_s"]
    cpu = result["relay_cpu_pct"] / 100 * window - idle * window
    return {"us_per_request": 1e6 * cpu / result["requests"], "rps": result["rps"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per loadgen ping run")
    parser.add_argument("--profile", choices=["py-spy"], help="py-spy the gateways too")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    python = sys.executable
    work = tempfile.mkdtemp(prefix="ng-rr-", dir="/tmp")
    processes = Processes(work)
    try:
        setup = pathmod.prepare(work, processes, RELAY_CPU, os.path.dirname(python))
        redis = start_redis(processes, work)
        paths: list[tuple[str, int, int]] = []
        direct: list[tuple[str, int, int, str | None]] = []
        for name, kernel in (("gateway-splice", True), ("gateway-copy", False)):
            gateway = start_gateway(setup, redis, name, kernel_relay=kernel)
            port = start_tunnel(setup, gateway, f"tunnel-{name}")
            paths.append((name, port, gateway.relays[0].pid))
            direct.append((name, gateway.port, gateway.relays[0].pid, gateway.ngp))
        haproxy = start_haproxy(setup, redis, "haproxy", "")
        paths.append(("haproxy", haproxy.port, haproxy.relays[0].pid))
        direct.append(("haproxy", haproxy.port, haproxy.relays[0].pid, None))
        # Twisted's own relay (user-space copies, no checks): the floor of a relay on Twisted.
        (portforward,) = pathmod.start_portforward(setup, redis, "rr")
        paths.append(("portforward", portforward.port, portforward.relays[0].pid))
        direct.append(("portforward", portforward.port, portforward.relays[0].pid, None))
        print(f"machine: {os.cpu_count()} CPUs; {platform_line()}")
        print(f"relay on CPU {RELAY_CPU}; redis-benchmark, tunnel, redis on CPU {LOAD_CPU}")
        samples: dict[str, list[dict[str, float]]] = {}
        pings: dict[str, list[dict[str, float]]] = {}
        for run in range(args.runs):
            load = os.getloadavg()
            print(f"run {run + 1}: load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
            k = run % len(paths)
            for name, port, pid in paths[k:] + paths[:k]:
                sample = benchmark(port, pid, args.requests)
                if sample is None:
                    continue
                samples.setdefault(name, []).append(sample)
                print(
                    f"  redis-benchmark {name:15} {sample['us_per_request']:6.2f} µs "
                    f"CPU/request  {sample['rps']:8.0f} GET/s"
                )
            for name, port, pid, ngp in direct[k:] + direct[:k]:
                sample = ping(python, port, pid, ngp, args.seconds)
                if sample is None:
                    continue
                pings.setdefault(name, []).append(sample)
                print(
                    f"  loadgen ping    {name:15} {sample['us_per_request']:6.2f} µs "
                    f"CPU/request  {sample['rps']:8.0f} PING/s"
                )
        print()
        for title, table in (
            ("redis-benchmark -t get -c 50 (gateway behind the tunnel)", samples),
            ("loadgen.py ping --conns 50 (gateway alone, the generator speaks NGP/1)", pings),
        ):
            print(title)
            base = statistics.median(s["us_per_request"] for s in table.get("haproxy", [{}]))
            print("| path | relay CPU µs/request (median) | req/s | HAProxy's CPU ÷ this | runs |")
            print("|---|---|---|---|---|")
            for name, _, _ in paths:
                if name not in table:
                    continue
                cpu = statistics.median(s["us_per_request"] for s in table[name])
                rps = statistics.median(s["rps"] for s in table[name])
                print(
                    f"| {name} | {cpu:.2f} | {rps:.0f} | {base / cpu:.2f}× | {len(table[name])} |"
                )
            print()
        if args.profile:
            for name, port, pid in paths:
                if name.startswith("gateway"):
                    print(f"py-spy {name}:")
                    print(profile(pid, port, args.requests, args.top))
    finally:
        processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def profile(pid: int, port: int, requests: int, top: int) -> str:
    """
    py-spy (on the load CPU, non-blocking) on the relay C{pid} during one benchmark.
    """
    return py_spy_during(pid, LOAD_CPU, top, "rr", lambda: benchmark(port, pid, requests))


if __name__ == "__main__":
    raise SystemExit(main())

"""
The multiplexed tunnel against the per-connection tunnel and HAProxy, in one interleaved run:
new connections per second, pooled requests, bulk through one connection, memory per idle
stream. Not part of the benchmark figures.

    .venv/bin/python bench/mux_tunnel.py                          # 3 runs, every figure
    .venv/bin/python bench/mux_tunnel.py --runs 5 --open-rate 50000
    .venv/bin/python bench/mux_tunnel.py --only new,pooled --profile DIR  # + py-spy tables
    .venv/bin/python bench/mux_tunnel.py --tree /tmp/other-checkout

The paths, each in front of the same redis-server (and, for the bulk figure, the same
C{backend.py} sink):

  haproxy         HAProxy (Debian, mode tcp), the anchor
  per-connection  C{netguard tunnel --no-mux} (a gateway connection, login and OPEN for every
                  local connection; without the flag on a tree whose tunnel lacks it)
  mux             C{netguard tunnel --mux}, the gateway's configuration as shipped (the
                  opening rate of a session is C{[mux] open_rate}, 1,000/s, and the tunnel
                  paces itself below it)
  mux-lifted      the same with C{[mux] open_rate = --open-rate}: what the two processes
                  sustain when the opening rate is not the bound

The tunnel runs alone on CPU 0 with the load (redis-benchmark, redis-server, the bulk
generator and sink); the gateway, or HAProxy on the anchor path, alone on CPU 1. The gateway
is the real one (C{twistd -n netguard} in C{profile_session.py}'s C{_gateway} child, logging
every connection and stream through C{netguard.log.text_stdout_observer} as the systemd unit
does) with the benchmark configuration of C{paths.py} (C{greeting_delay} as shipped, 0.1 s,
unless C{--greeting-delay}); tunnel and gateway run the checkout C{--tree}. The figures:

  new     C{redis-benchmark -t get -c 50 -k 0}: every request a new connection to the path
  pooled  C{redis-benchmark -t get -c 50} (C{-k 1}): 50 connections, request after request
  bulk    C{loadgen.py bulk}: C{--bytes} written through one connection to the sink (no
          mux-lifted: the opening rate plays no part)
  memory  C{--idle} idle connections (each has had one PING answered) opened through fresh
          processes after C{WARM} held ones: the growth of each process's RSS, PSS and USS
          (C{/proc/<pid>/smaps_rollup}) divided by C{--idle}. The gateways of this figure
          raise the C{[mux]} stream caps above C{--idle}, so one session holds every stream.

For each: the rate, and each process's own CPU per unit (utime + stime from
C{/proc/<pid>/stat} over the window, less its idle CPU measured just before), redis-benchmark's
and redis-server's too (the sink's for bulk), how busy each CPU was over the window (every
process, others' included, from C{/proc/stat}), and the ratio to HAProxy. Each
figure's paths alternate within a run (the order rotating from run to run); the medians of
C{--runs} runs are printed, with the load average of each run. The number of new connections
per path is sized from a warm-up (C{--new-seconds} worth, within C{--new-min} and
C{--new-max}). Everything runs on 127.0.0.1, bounded in count and time, and every process
started is stopped by its own process group id.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import attrs

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import paths as pathmod  # noqa: E402
from procs import Processes, Server, free_port, run_generator  # noqa: E402
from profile_bulk import GIB, LOAD_CPU, RELAY_CPU, platform_line, start_backend, start_haproxy  # noqa: E402
from profile_memory import _fill, smaps  # noqa: E402
from profile_netguard import summarise_raw  # noqa: E402
from profile_rr import start_redis  # noqa: E402
from profile_session import _load, cpu_seconds  # noqa: E402
from run import _on_signal, _raise_nofile  # noqa: E402

#: The paths, in report order.
PATHS = ("haproxy", "per-connection", "mux", "mux-lifted")

#: The figures, in the order they are measured within a run.
FIGURES = ("new", "pooled", "bulk", "memory")

#: Idle connections held before the memory baseline is read (one-off allocations).
WARM = 50

#: Seconds to let every process settle before a memory reading.
SETTLE = 2.0

#: A redis PING in RESP and its answer.
PING, PONG = b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"


@attrs.define
class Path:
    """
    One path being measured.

    @ivar name: one of L{PATHS}.
    @ivar port: the port redis-benchmark connects to.
    @ivar bulk_port: the port of the same path in front of the bulk sink (L{None}: no bulk).
    @ivar procs: the processes measured, by role (C{tunnel}, C{gateway}, C{haproxy}); the
        bulk path's tunnel is C{bulk-tunnel}.
    @ivar new_requests: how many new connections one C{new} window makes (sized by warm-up).
    """

    name: str
    port: int
    bulk_port: int | None
    procs: dict[str, Server]
    new_requests: int = 0


# -- starting the paths ------------------------------------------------------------------------


def gateway_config(args: argparse.Namespace, path: str, idle: int = 0) -> str:
    """
    The gateway's configuration: the benchmark's (C{paths.py}), the greeting delay if given,
    the opening rate on C{mux-lifted}, and for the memory figure (C{idle} > 0) stream caps
    above C{idle}.
    """
    text = pathmod.NETGUARD_CONFIG
    mux: list[str] = []
    if path == "mux-lifted":
        mux.append(f"open_rate = {args.open_rate}")
    if idle:
        caps = idle + WARM + 256
        mux += [f"max_streams = {caps}", f"max_per_user = {caps}", f"max_per_service = {caps}"]
    if mux:
        text += "[mux]\n" + "".join(line + "\n" for line in mux)
    if args.greeting_delay is not None:
        text += f"[limits]\ngreeting_delay = {args.greeting_delay}\n"
    return text


def start_gateway(
    args: argparse.Namespace, setup: pathmod.Setup, services: dict[str, int], path: str,
    label: str, idle: int = 0,
) -> tuple[Server, int]:  # fmt: skip
    """
    The gateway of checkout C{--tree} on CPU 1, with one service per C{services} item (name:
    backend port).

    @return: the server and its port.
    """
    tree = os.path.abspath(args.tree)
    state = tempfile.mkdtemp(prefix=f"state-{label}-", dir=setup.work)
    config = os.path.join(state, "bench.toml")
    with open(config, "w") as f:
        f.write(gateway_config(args, path, idle))
    port = free_port()
    service_args: list[str] = []
    for name, backend in services.items():
        service_args += ["--service", f"{name}=tcp:host=127.0.0.1:port={backend}"]
    gateway = setup.processes.start(
        f"gateway-{label}",
        [
            sys.executable, os.path.join(HERE, "profile_session.py"), "_gateway", "--",
            "-n", "--pidfile=", "--logger", "netguard.log.text_stdout_observer", "netguard",
            "--config", config, "--state-dir", state, "--users", setup.users_file,
            "--listen", f"tcp:{port}:interface=127.0.0.1", *service_args,
        ],
        RELAY_CPU, cwd=tree, env=dict(os.environ, PYTHONPATH=tree),
    )  # fmt: skip
    setup.processes.wait_listening(gateway, port, timeout=30)
    return gateway, port


def tunnel_mode_args(args: argparse.Namespace, path: str) -> list[str]:
    """
    The tunnel's mode flag: C{--mux} on the mux paths; C{--no-mux} on the per-connection path
    when the tree's tunnel has it (its help is read), nothing otherwise.
    """
    if path != "per-connection":
        return ["--mux"]
    if args.no_mux_flag is None:
        tree = os.path.abspath(args.tree)
        shown = subprocess.run(
            [sys.executable, "-m", "netguard.cli", "tunnel", "--help"],
            capture_output=True, text=True, timeout=60, cwd=tree,
            env=dict(os.environ, PYTHONPATH=tree),
        )  # fmt: skip
        args.no_mux_flag = "--no-mux" in shown.stdout
    return ["--no-mux"] if args.no_mux_flag else []


def start_tunnel(
    args: argparse.Namespace, setup: pathmod.Setup, gateway_port: int, service: str,
    path: str, label: str,
) -> tuple[Server, int]:  # fmt: skip
    """
    C{netguard tunnel} of checkout C{--tree} to C{service}, on CPU 0.

    @return: the server and its port.
    """
    tree = os.path.abspath(args.tree)
    port = free_port()
    tunnel = setup.processes.start(
        f"tunnel-{label}",
        [
            sys.executable, "-m", "netguard.cli", "tunnel", *tunnel_mode_args(args, path),
            "--gateway", f"tcp:host=127.0.0.1:port={gateway_port}",
            "--service", service, "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--user", setup.user, "--password-file", setup.password_file,
        ],
        LOAD_CPU, cwd=tree, env=dict(os.environ, PYTHONPATH=tree),
    )  # fmt: skip
    setup.processes.wait_listening(tunnel, port, timeout=30)
    return tunnel, port


def start_path(
    args: argparse.Namespace, setup: pathmod.Setup, name: str, redis: int, sink: Server | None,
    idle: int = 0,
) -> Path:  # fmt: skip
    """
    Start path C{name} in front of redis (and of the bulk sink when C{sink} is given: its
    CPU is reported with the bulk figure, as C{sink}).
    """
    if name == "haproxy":
        front = start_haproxy(setup, redis, f"haproxy-{idle}", "")
        procs = {"haproxy": front.relays[0]}
        bulk_port = None
        if sink is not None:
            bulk = start_haproxy(setup, sink_port(sink), "haproxy-bulk", "")
            procs["bulk-haproxy"], procs["bulk-sink"] = bulk.relays[0], sink
            bulk_port = bulk.port
        return Path(name, front.port, bulk_port, procs)
    services = {"redis": redis} if sink is None else {"redis": redis, "bulk": sink_port(sink)}
    label = f"{name}-{idle}" if idle else name
    gateway, gateway_port = start_gateway(args, setup, services, name, label, idle)
    tunnel, port = start_tunnel(args, setup, gateway_port, "redis", name, label)
    procs = {"tunnel": tunnel, "gateway": gateway}
    bulk_port = None
    if sink is not None:
        procs["bulk-tunnel"], bulk_port = start_tunnel(
            args, setup, gateway_port, "bulk", name, f"bulk-{label}"
        )
        procs["bulk-sink"] = sink
    return Path(name, port, bulk_port, procs)


def sink_port(sink: Server) -> int:
    """
    @return: the bulk sink's port (from its command line).
    """
    argv = list(sink.popen.args)  # type: ignore[arg-type]
    return int(argv[argv.index("--port") + 1])


def stop_path(setup: pathmod.Setup, path: Path) -> None:
    """
    Stop every process of C{path} (by its process group id).
    """
    for server in path.procs.values():
        setup.processes.stop(server)


# -- CPU accounting ------------------------------------------------------------------------------


def cpu_times() -> dict[int, tuple[int, int]]:
    """
    @return: per CPU, its idle (idle + iowait) and total ticks so far (from C{/proc/stat}).
    """
    times = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                ticks = [int(v) for v in values[:8]]
                times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return times


def busy(before: dict[int, tuple[int, int]]) -> dict[str, float]:
    """
    @return: C{busyN}: how busy each CPU was since C{before} (every process, ours and
        others'), in percent.
    """
    shares = {}
    for cpu, (idle, total) in cpu_times().items():
        spent = total - before[cpu][1]
        shares[f"busy{cpu}"] = 100 * (1 - (idle - before[cpu][0]) / spent) if spent else 0.0
    return shares


def idle_rates(pids: dict[str, int], seconds: float = 0.5) -> dict[str, float]:
    """
    CPU seconds per second each process spends with nothing to do, measured together.
    """
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    time.sleep(seconds)
    return {role: (cpu_seconds(pid) - before[role]) / seconds for role, pid in pids.items()}


def measured(path: Path, redis_pid: int, bulk: bool = False) -> dict[str, int]:
    """
    The PIDs whose CPU a window reports: the path's (the redis ones, or the bulk ones) and
    redis-server's.
    """
    pids = {}
    for role, server in path.procs.items():
        if role.startswith("bulk-"):
            if bulk:
                pids[role.removeprefix("bulk-")] = server.pid
        elif not bulk or role == "gateway":  # one gateway serves both tunnels
            pids[role] = server.pid
    if not bulk:
        pids["redis"] = redis_pid
    return pids


def redis_benchmark(
    port: int, pids: dict[str, int], requests: int, keepalive: bool, timeout: float
) -> dict[str, float] | None:
    """
    One C{redis-benchmark -t get -c 50} (C{-k 0} unless C{keepalive}) through C{port}, on the
    load CPU; each process's CPU over the window, less its idle rate.

    @return: C{rps} and C{<role>_us} per request (roles of C{pids}, and C{bench} for
        redis-benchmark itself), or L{None} if it failed.
    """
    idle = idle_rates(pids)
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    machine = cpu_times()
    done = run_generator(
        [
            "redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "get",
            "-n", str(requests), "-c", "50", "-k", "1" if keepalive else "0", "--csv",
        ],
        LOAD_CPU, timeout,
    )  # fmt: skip
    shares = busy(machine)
    rows = [row for row in csv.reader(done.stdout.splitlines()) if row and row[0] == "GET"]
    if done.returncode != 0 or done.timed_out or not rows:
        sys.stderr.write(f"redis-benchmark on {port}: exit {done.returncode}\n")
        return None
    result = {
        "rps": float(rows[0][1]),
        "bench_us": 1e6 * done.cpu / requests,
        "bench_pct": 100 * done.cpu / done.wall,
        **shares,
    }
    for role, pid in pids.items():
        cpu = cpu_seconds(pid) - before[role] - idle[role] * done.wall
        result[f"{role}_us"] = 1e6 * cpu / requests
        result[f"{role}_pct"] = 100 * cpu / done.wall
    return result


def bulk_transfer(path: Path, size: int) -> dict[str, float] | None:
    """
    C{size} bytes written through C{path}'s bulk port to the sink (C{loadgen.py bulk
    --direction up}, on the load CPU); each process's CPU over the generator's timed window,
    less its idle rate.

    @return: C{mb_per_s} and C{<role>_s_per_gib}, or L{None} if it failed.
    """
    assert path.bulk_port is not None
    pids = measured(path, 0, bulk=True)
    idle = idle_rates(pids)
    command = [
        "taskset", "-c", str(LOAD_CPU), sys.executable, os.path.join(HERE, "loadgen.py"),
        "--port", str(path.bulk_port),
        *[f"--watch={role}:{pid}" for role, pid in pids.items()],
        "bulk", "--direction", "up", "--bytes", str(size),
    ]  # fmt: skip
    machine = cpu_times()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    shares = busy(machine)  # over the generator's whole run, its start-up included
    if done.returncode != 0:
        sys.stderr.write(f"bulk through {path.name}: {done.stderr[-400:]}\n")
        return None
    got = json.loads(done.stdout.strip().splitlines()[-1])
    window, gib = got["window_s"], got["bytes"] / GIB
    result = {
        "mb_per_s": got["mb_per_s"],
        "gen_s_per_gib": got["gen_cpu_pct"] / 100 * window / gib,
        "gen_pct": got["gen_cpu_pct"],
        **shares,
    }
    for role in pids:
        cpu = got[f"{role}_cpu_pct"] / 100 * window - idle[role] * window
        result[f"{role}_s_per_gib"] = cpu / gib
        result[f"{role}_pct"] = 100 * cpu / window
    return result


# -- memory ---------------------------------------------------------------------------------------


async def _open_idle(port: int) -> Any:
    """
    Open one connection through the path, have one PING answered, keep it (return its writer).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PING)
    if await reader.readexactly(len(PONG)) != PONG:
        raise ValueError("redis did not answer PONG")
    return writer


async def _hold(port: int, pids: dict[str, int], idle: int) -> dict[str, dict[str, int]]:
    """
    Hold L{WARM} connections, read each process's memory, open C{idle} more, read again.

    @return: the readings, C{<role>} -> C{rss}/C{pss}/C{uss} growth in KiB.
    """
    held: list[Any] = []
    try:
        if await _fill(held, WARM, lambda: _open_idle(port)):
            raise RuntimeError(f"warm-up connections to {port} failed")
        await asyncio.sleep(SETTLE)
        before = {role: smaps(pid) for role, pid in pids.items()}
        failed = await _fill(held, WARM + idle, lambda: _open_idle(port))
        if failed:
            raise RuntimeError(f"{failed} of {idle} idle connections to {port} failed")
        await asyncio.sleep(SETTLE)
        after = {role: smaps(pid) for role, pid in pids.items()}
    finally:
        for writer in held:
            writer.close()
    return {role: {k: after[role][k] - before[role][k] for k in after[role]} for role in pids}


def memory(
    args: argparse.Namespace, setup: pathmod.Setup, name: str, redis: int
) -> dict[str, float] | None:
    """
    Fresh processes of path C{name}; the memory each grows by per idle connection.

    @return: C{<role>_<rss|pss|uss>} in KiB per idle connection, or L{None} if it failed.
    """
    path = start_path(args, setup, name, redis, None, idle=args.idle)
    try:
        pids = {role: server.pid for role, server in path.procs.items()}
        growth = asyncio.run(_hold(path.port, pids, args.idle))
    except (RuntimeError, OSError) as e:
        sys.stderr.write(f"memory through {name}: {e}\n")
        return None
    finally:
        stop_path(setup, path)
    return {
        f"{role}_{key}": value / args.idle
        for role, reading in growth.items()
        for key, value in reading.items()
    }


# -- profiles -------------------------------------------------------------------------------------


def py_spy(pids: dict[str, int], seconds: int, out: str, work: Callable[[], object]) -> str:
    """
    C{py-spy record -r 500 -f raw --nonblocking} of each Python process in C{pids} while
    C{work()} runs (each recorder on the CPU its target does not use); the top frames by self
    time, per process.
    """
    pyspy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    spies = {}
    for role, pid in pids.items():
        raw = os.path.join(out, f"{role}.raw")
        cpu = RELAY_CPU if role == "tunnel" else LOAD_CPU
        spies[role] = (raw, subprocess.Popen(
            [
                "taskset", "-c", str(cpu), pyspy, "record", "-p", str(pid), "-d", str(seconds),
                "-r", "500", "-f", "raw", "-o", raw, "--nonblocking",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    time.sleep(0.5)
    work()
    text = []
    for role, (raw, spy) in spies.items():
        try:
            spy.wait(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
        summary = summarise_raw(raw, 12) if os.path.exists(raw) else "  (no profile)\n"
        text.append(f" {role} (pid {pids[role]}):\n{summary}")
    return "".join(text)


def profiles(args: argparse.Namespace, paths: dict[str, Path], redis_pid: int) -> None:
    """
    One py-spy profile of the tunnel and the gateway per figure, on the mux paths, printed.
    """
    os.makedirs(args.profile, exist_ok=True)
    jobs: list[tuple[str, str, Callable[[], object], bool]] = []
    lifted = paths.get("mux-lifted") or paths["mux"]
    if "new" in args.figures:
        jobs.append(("new", lifted.name, lambda: redis_benchmark(
            lifted.port, {}, lifted.new_requests, False, args.timeout), False))  # fmt: skip
    if "pooled" in args.figures:
        jobs.append(("pooled", "mux", lambda: redis_benchmark(
            paths["mux"].port, {}, args.requests, True, args.timeout), False))  # fmt: skip
    if "bulk" in args.figures:
        jobs.append(("bulk", "mux", lambda: bulk_transfer(paths["mux"], args.bytes), True))
    for figure, name, work, bulk in jobs:
        out = os.path.join(args.profile, f"{figure}-{name}")
        os.makedirs(out, exist_ok=True)
        pids = {
            k: v
            for k, v in measured(paths[name], redis_pid, bulk).items()
            if k not in ("redis", "sink")
        }
        print(f"py-spy, {figure} through {name}, by self time:")
        print(py_spy(pids, 12, out, work))


# -- the run --------------------------------------------------------------------------------------


def _fmt_cpu(sample: dict[str, float], suffix: str, scale: str) -> str:
    """
    Each process's figure, and its share of a CPU over the window where there is one.
    """
    parts = []
    for key in sample:
        if key.endswith(suffix):
            role = key.removesuffix(suffix)
            share = f" ({sample[role + '_pct']:.0f}%)" if role + "_pct" in sample else ""
            parts.append(f"{role} {sample[key]:{scale}}{share}")
    return ", ".join(parts)


def size_new(args: argparse.Namespace, path: Path) -> None:
    """
    Warm C{path} up with C{--new-min} new connections and size its C{new} window from the
    rate seen: C{--new-seconds} worth, within C{--new-min} and C{--new-max}.
    """
    sample = redis_benchmark(path.port, {}, args.new_min, False, args.timeout)
    rate = sample["rps"] if sample else 0.0
    path.new_requests = int(min(args.new_max, max(args.new_min, rate * args.new_seconds)))
    print(f"  warm-up {path.name:15} {rate:8.0f} new conn/s -> {path.new_requests} per window")


def one_run(
    args: argparse.Namespace, setup: pathmod.Setup, paths: dict[str, Path], redis: Server,
    redis_port: int, run: int, samples: dict[tuple[str, str], list[dict[str, float]]],
) -> None:  # fmt: skip
    """
    Every figure once for every path, the paths of each figure in rotated order.
    """
    load = _load()
    print(f"run {run + 1}: load average {load}", flush=True)
    for figure in args.figures:
        names = [n for n in paths if figure != "bulk" or paths[n].bulk_port is not None]
        if figure == "memory":
            names = [n for n in names if n != "mux-lifted"]
        k = run % len(names)
        for name in names[k:] + names[:k]:
            path = paths[name]
            sample: dict[str, float] | None
            if figure == "new":
                pids = measured(path, redis.pid)
                sample = redis_benchmark(path.port, pids, path.new_requests, False, args.timeout)
                line = f"{sample['rps']:8.0f} new conn/s; µs/conn: " if sample else ""
                scale, suffix = ".0f", "_us"
            elif figure == "pooled":
                pids = measured(path, redis.pid)
                sample = redis_benchmark(path.port, pids, args.requests, True, args.timeout)
                line = f"{sample['rps']:8.0f} GET/s; µs/GET: " if sample else ""
                scale, suffix = ".1f", "_us"
            elif figure == "bulk":
                sample = bulk_transfer(path, args.bytes)
                line = f"{sample['mb_per_s']:8.0f} MB/s; CPU s/GiB: " if sample else ""
                scale, suffix = ".3f", "_s_per_gib"
            else:
                sample = memory(args, setup, name, redis_port)
                line = "KiB/idle conn (PSS): " if sample else ""
                scale, suffix = ".2f", "_pss"
            if sample is None:
                print(f"  {figure:6} {name:15} failed", flush=True)
                continue
            samples.setdefault((figure, name), []).append(sample)
            machine = "".join(
                f"; CPU {key[4:]} {sample[key]:.0f}% busy"
                for key in sample
                if key.startswith("busy")
            )
            print(
                f"  {figure:6} {name:15} {line}{_fmt_cpu(sample, suffix, scale)}{machine}",
                flush=True,
            )


#: Per figure: the rate key, its unit, the CPU key suffix, its unit and format.
REPORT = {
    "new": ("rps", "new conn/s", "_us", "µs/conn", ".0f"),
    "pooled": ("rps", "GET/s", "_us", "µs/GET", ".1f"),
    "bulk": ("mb_per_s", "MB/s", "_s_per_gib", "CPU s/GiB", ".3f"),
}


def _median(runs: list[dict[str, float]], key: str, fmt: str) -> str:
    values = [r[key] for r in runs if key in r]
    return f"{statistics.median(values):{fmt}}" if values else "-"


def tables(
    args: argparse.Namespace, samples: dict[tuple[str, str], list[dict[str, float]]]
) -> str:
    """
    The medians as Markdown tables, with ratios to HAProxy (per run, then the median).
    """
    out: list[str] = []
    for figure in args.figures:
        names = [n for n in PATHS if (figure, n) in samples]
        if not names:
            continue
        if figure == "memory":
            out.append(f"memory: KiB per idle connection ({args.idle} idle), median")
            out.append("| path | process | RSS | PSS | USS | runs |")
            out.append("|---|---|---:|---:|---:|---:|")
            for name in names:
                runs = samples[(figure, name)]
                roles = [k.removesuffix("_pss") for k in runs[0] if k.endswith("_pss")]
                for role in roles:
                    cells = [
                        f"{statistics.median(r[f'{role}_{key}'] for r in runs):.2f}"
                        for key in ("rss", "pss", "uss")
                    ]
                    out.append(f"| {name} | {role} | {' | '.join(cells)} | {len(runs)} |")
            out.append("")
            continue
        rate_key, rate_unit, suffix, cpu_unit, fmt = REPORT[figure]
        anchor = samples.get((figure, "haproxy"), [])
        out.append(f"{figure}: median of runs; ratios to HAProxy per run, then the median")
        out.append(
            f"| path | {rate_unit} | ÷ HAProxy | {cpu_unit}: tunnel | gateway / HAProxy | "
            "gateway ÷ HAProxy | load: generator | redis (bulk: sink) | CPU 0, 1 % busy | runs |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in names:
            runs = samples[(figure, name)]

            relay = "haproxy" if name == "haproxy" else "gateway"
            rate_ratio = cpu_ratio = "-"
            if anchor and name != "haproxy":
                pairs = list(zip(runs, anchor, strict=False))
                rate_ratio = (
                    f"{statistics.median(r[rate_key] / a[rate_key] for r, a in pairs):.2f}×"
                )
                key = f"haproxy{suffix}"
                cpu_ratio = (
                    f"{statistics.median(r[relay + suffix] / a[key] for r, a in pairs):.2f}×"
                )
            generator = "bench" if figure != "bulk" else "gen"
            cells = [
                f"{statistics.median(r[rate_key] for r in runs):.0f}",
                rate_ratio,
                _median(runs, "tunnel" + suffix, fmt),
                _median(runs, relay + suffix, fmt),
                cpu_ratio,
                _median(runs, generator + suffix, fmt),
                _median(runs, ("sink" if figure == "bulk" else "redis") + suffix, fmt),
                f"{_median(runs, 'busy0', '.0f')}, {_median(runs, 'busy1', '.0f')}",
                str(len(runs)),
            ]
            out.append(f"| {name} | {' | '.join(cells)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs, interleaved (default 3)")
    parser.add_argument("--requests", type=int, default=100_000, help="GETs per pooled window")
    parser.add_argument("--new-seconds", type=float, default=5.0, help="seconds per new window")
    parser.add_argument("--new-min", type=int, default=2000, help="fewest new conns per window")
    parser.add_argument("--new-max", type=int, default=25_000, help="most new conns per window")
    parser.add_argument(
        "--bytes", type=int, default=GIB,
        help="bytes per bulk transfer (default 1 GiB: CPU time is counted in 10 ms ticks)",
    )  # fmt: skip
    parser.add_argument(
        "--idle", type=int, default=900,
        help="idle connections held after the warm ones (default 900: the tunnel carries at "
        "most 4 sessions x 256 streams at once)",
    )  # fmt: skip
    parser.add_argument(
        "--open-rate", type=float, default=100_000.0,
        help="[mux] open_rate of the mux-lifted path's gateway (0: no mux-lifted path)",
    )  # fmt: skip
    parser.add_argument("--greeting-delay", type=float, help="[limits] greeting_delay")
    parser.add_argument(
        "--backend-cpu", type=int, choices=(LOAD_CPU, RELAY_CPU), default=LOAD_CPU,
        help=f"CPU of redis-server (default {LOAD_CPU}, with the load and the tunnel; "
        f"{RELAY_CPU}: beside the gateway or HAProxy, as deployed: client side, server side)",
    )  # fmt: skip
    parser.add_argument("--only", help="comma-separated figures: " + ",".join(FIGURES))
    parser.add_argument("--tree", default=os.path.dirname(HERE), help="the checkout to run")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on one window")
    parser.add_argument("--profile", metavar="DIR", help="py-spy profiles after the runs")
    args = parser.parse_args(argv)
    args.figures = [f for f in (args.only.split(",") if args.only else FIGURES) if f in FIGURES]
    args.no_mux_flag = None
    if (os.cpu_count() or 1) < 2:
        parser.error("needs 2 CPUs: the tunnel on CPU 0, the gateway on CPU 1")
    _raise_nofile()  # the children inherit it: 2 x --idle sockets in some processes
    signal.signal(signal.SIGTERM, _on_signal)  # stop what was started, also on SIGTERM
    signal.signal(signal.SIGHUP, _on_signal)
    os.sched_setaffinity(0, {LOAD_CPU})
    work = tempfile.mkdtemp(prefix="ng-mux-tunnel-", dir="/tmp")
    processes = Processes(work)
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        setup = pathmod.prepare(work, processes, RELAY_CPU, os.path.dirname(sys.executable))
        redis_port = start_redis(processes, work, args.backend_cpu)
        redis = processes.servers[-1]
        sink = None
        if "bulk" in args.figures:
            start_backend(processes, sys.executable)
            sink = processes.servers[-1]
        names = [n for n in PATHS if n != "mux-lifted" or args.open_rate > 0]
        paths: dict[str, Path] = {}
        for name in names:
            bulk = sink if name != "mux-lifted" else None
            paths[name] = start_path(args, setup, name, redis_port, bulk)
        print(f"machine: {os.cpu_count()} CPUs; {platform_line()}; {redis_version()}")
        print(
            f"tree {os.path.abspath(args.tree)} ({tree_version(args.tree)}); per-connection "
            f"tunnel {'--no-mux' if tunnel_mode_args(args, 'per-connection') else '(no flag)'}; "
            f"mux-lifted open_rate {args.open_rate:g}"
        )
        print(f"tunnel, redis-benchmark, redis-server, sink on CPU {LOAD_CPU}; gateway or "
              f"HAProxy alone on CPU {RELAY_CPU}")  # fmt: skip
        if "new" in args.figures or args.profile:
            for path in paths.values():
                size_new(args, path)
        for run in range(args.runs):
            one_run(args, setup, paths, redis, redis_port, run, samples)
        print()
        print(tables(args, samples))
        print(logins(paths))
        if args.profile:
            profiles(args, paths, redis.pid)
    finally:
        processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def logins(paths: dict[str, Path]) -> str:
    """
    @return: how many logins and multiplexed sessions each gateway saw over the whole run
        (from its log).
    """
    parts = []
    for name, path in paths.items():
        if "gateway" in path.procs:
            with open(path.procs["gateway"].log_path, errors="replace") as f:
                text = f.read()
            parts.append(
                f"{name} {text.count(' auth.ok ')} logins, {text.count(' mux.start ')} sessions"
            )
    return "gateways over the whole run: " + "; ".join(parts) + "\n"


def redis_version() -> str:
    """
    @return: redis-benchmark's version line.
    """
    done = subprocess.run(["redis-benchmark", "--version"], capture_output=True, text=True)
    return done.stdout.strip()


def tree_version(tree: str) -> str:
    """
    @return: the checkout's commit, and whether it has uncommitted changes under netguard/.
    """
    git = ["git", "-C", os.path.abspath(tree)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "netguard"], capture_output=True, text=True
    )
    commit = head.stdout.strip() or "not a git checkout"
    return commit + (", netguard/ modified" if dirty.stdout.strip() else "")


if __name__ == "__main__":
    raise SystemExit(main())

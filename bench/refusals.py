"""
What refusing a connection costs the gateway: refusals per second one core sustains, and the
gateway's CPU per refusal, for checkouts compared side by side. Not part of the benchmark
figures of C{bench/run.py}.

    .venv/bin/python bench/refusals.py                              # this checkout, 3 runs
    .venv/bin/python bench/refusals.py --trees /tmp/before,.        # interleave two checkouts
    .venv/bin/python bench/refusals.py --modes reply,close --refusals 30000

The gateway is the real one (C{twistd -n netguard} through C{bench/profile_session.py}'s
gateway child, the generated benchmark configuration of C{paths.py}, logging to standard
output, a file, through C{netguard.log.text_stdout_observer} as the systemd unit does),
pinned alone to CPU 1, with an always-refusing policy: C{admission.deny} covers the whole
loopback network, so every connection is refused before anything is read
(C{reject_mode = "reply"}: the C{ERR BUSY denied} line, then the close; C{"close"}: closed
without a word). The load generator, this process, runs on CPU 0: a non-blocking epoll loop
that keeps C{--conns} connections in flight, each from one of C{--sources} loopback
addresses (127.0.0.2 and up) in turn, reads each until the gateway closes it, checks the
answer and closes. The gateway's CPU time (utime + stime from C{/proc/<pid>/stat}, less its
idle CPU over the same wall time) divided by the refusals is the CPU per refusal; its
inverse is the refusals one core sustains; the measured rate is also printed (the load
generator, one Python core, may be the bottleneck of that one). Checkouts and modes are
interleaved in each run (A, B, A, B...), the medians of C{--runs} runs are printed, with the
load average at each run. Everything runs on 127.0.0.1, bounded in count and time, and every
process started is stopped by its own process group id.
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import shutil
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import paths as pathmod  # noqa: E402
import profile_session  # noqa: E402
from procs import Processes, free_port  # noqa: E402

#: What a refused client receives in each mode.
EXPECTED = {"reply": b"ERR BUSY denied\r\n", "close": b""}


def flood(
    port: int, count: int, conns: int, sources: int, seconds: float
) -> tuple[int, int, float]:
    """
    Open C{count} connections to 127.0.0.1:C{port}, C{conns} at a time, from C{sources}
    loopback source addresses in turn; read each until it is closed.

    @return: (connections answered as expected, the others, wall seconds).
    """
    poller = select.epoll()
    live: dict[int, tuple[socket.socket, bytearray]] = {}
    started = done = bad = 0
    expected = flood.expected  # type: ignore[attr-defined]
    source = 0
    t0 = time.monotonic()
    deadline = t0 + seconds

    def open_one() -> None:
        nonlocal started, source, bad
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((f"127.0.0.{2 + source}", 0))
        source = (source + 1) % sources
        started += 1
        err = sock.connect_ex(("127.0.0.1", port))
        if err not in (0, errno.EINPROGRESS):
            bad += 1
            sock.close()
            return
        live[sock.fileno()] = (sock, bytearray())
        poller.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)

    try:
        while (started < count or live) and time.monotonic() < deadline:
            while started < count and len(live) < conns:
                open_one()
            for fd, _ in poller.poll(1.0):
                sock, data = live[fd]
                try:
                    chunk = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    data += chunk
                    if len(data) < 4096:
                        continue
                poller.unregister(fd)
                del live[fd]
                sock.close()
                if bytes(data) == expected:
                    done += 1
                else:
                    bad += 1
    finally:
        for sock, _ in live.values():
            sock.close()
        poller.close()
    return done, bad + len(live), time.monotonic() - t0


def measure(
    args: argparse.Namespace, tree: str, mode: str, setup: Any, work: str
) -> dict[str, Any]:
    """
    Start a refusing gateway from checkout C{tree}, warm it up, measure its idle CPU, then
    time C{--refusals} refusals. Stop what was started.
    """
    processes = Processes(work)
    state = tempfile.mkdtemp(prefix="state-", dir=work)
    config = os.path.join(state, "bench.toml")
    with open(config, "w") as f:
        f.write(
            pathmod.NETGUARD_CONFIG
            + f'deny = ["127.0.0.0/8"]\nreject_mode = "{mode}"\n'
            + "[limits]\ngreeting_delay = 0\n"
        )
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    result: dict[str, Any] = {"tree": tree, "mode": mode}
    flood.expected = EXPECTED[mode]  # type: ignore[attr-defined]
    try:
        twistd_args = [
            "-n", "--pidfile=", "--logger", "netguard.log.text_stdout_observer", "netguard",
            "--config", config, "--state-dir", state, "--users", setup.users_file,
            "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
        ]  # fmt: skip
        gateway = processes.start(
            f"gateway-{mode}",
            [sys.executable, profile_session.__file__, "_gateway", "--", *twistd_args],
            args.gateway_cpu,
            cwd=os.path.abspath(tree),
            env=env,
        )
        processes.wait_listening(gateway, port, timeout=30)
        pid = gateway.pid
        flood(port, args.warmup, args.conns, args.sources, args.seconds)
        time.sleep(0.5)
        idle0 = profile_session.cpu_seconds(pid)
        time.sleep(1.0)
        idle = profile_session.cpu_seconds(pid) - idle0
        lines0 = profile_session._lines(gateway.log_path)
        cpu0 = profile_session.cpu_seconds(pid)
        done, bad, wall = flood(port, args.refusals, args.conns, args.sources, args.seconds)
        time.sleep(0.3)
        cpu = profile_session.cpu_seconds(pid) - cpu0 - idle * (wall + 0.3)
        lines = profile_session._lines(gateway.log_path) - lines0
        result.update(
            refused=done, bad=bad, wall_s=wall, rate=done / wall, cpu_s=cpu,
            us_per_refusal=1e6 * cpu / max(done, 1),
            per_core=max(done, 1) / cpu if cpu > 0 else float("inf"),
            gateway_cpu_pct=100 * cpu / wall,
            log_lines_per_refusal=lines / max(done, 1),
        )  # fmt: skip
    finally:
        processes.stop_all()
        shutil.rmtree(state, ignore_errors=True)
    return result


def _report(title: str, r: dict[str, Any]) -> None:
    print(
        f"{title:<34} {r['us_per_refusal']:7.1f} us/refusal  {r['per_core']:8.0f}/s per core  "
        f"measured {r['rate']:7.0f}/s at {r['gateway_cpu_pct']:3.0f}% CPU  "
        f"log {r['log_lines_per_refusal']:.3f} lines/refusal  bad {r['bad']}  load {r['load']}"
    )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refusals", type=int, default=60000, help="timed refusals per run")
    parser.add_argument("--warmup", type=int, default=2000, help="refusals before the timing")
    parser.add_argument("--conns", type=int, default=64, help="connections in flight at once")
    parser.add_argument("--sources", type=int, default=64, help="loopback source addresses")
    parser.add_argument("--runs", type=int, default=3, help="runs, interleaved")
    parser.add_argument("--seconds", type=float, default=60.0, help="bound on one window")
    parser.add_argument("--trees", default=".", help="checkouts to compare, comma-separated")
    parser.add_argument("--modes", default="reply,close", help="reject_mode values to measure")
    parser.add_argument("--gateway-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.sources <= 250:
        parser.error("--sources must be from 1 to 250 (127.0.0.2 and up)")
    if (os.cpu_count() or 1) < 2:
        args.gateway_cpu = args.client_cpu = None
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})
    trees = [t for t in args.trees.split(",") if t]
    modes = [m for m in args.modes.split(",") if m]
    work = tempfile.mkdtemp(prefix="netguard-refusals-")
    results: dict[tuple[str, str], list[dict[str, Any]]] = {
        (t, m): [] for t in trees for m in modes
    }
    try:
        setup = pathmod.prepare(work, Processes(work), None, os.path.dirname(sys.executable))
        for run in range(args.runs):
            for mode in modes:
                for tree in trees:
                    load = profile_session._load()
                    r = measure(args, tree, mode, setup, work)
                    r["load"] = load
                    results[tree, mode].append(r)
                    _report(f"run {run + 1} {mode} {tree}", r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nmedians of {args.runs} runs ({args.refusals} refusals each, {args.conns} in flight, "
        f"{args.sources} sources; gateway on CPU {args.gateway_cpu}, load on CPU "
        f"{args.client_cpu}):"
    )
    for mode in modes:
        base: float | None = None
        for tree in trees:
            rs = results[tree, mode]
            us = statistics.median(r["us_per_refusal"] for r in rs)
            rate = statistics.median(r["rate"] for r in rs)
            lines = statistics.median(r["log_lines_per_refusal"] for r in rs)
            ratio = "" if base is None else f"  ({us / base:.2f}x the first)"
            base = us if base is None else base
            print(
                f"  {mode:<5} {tree:<30} {us:7.1f} us/refusal = {1e6 / us:8.0f} refusals/s per "
                f"core; measured {rate:7.0f}/s; {lines:.3f} log lines/refusal{ratio}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

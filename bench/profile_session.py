"""
What one authenticated plain session costs the gateway, and where that time goes: a
companion of C{bench/profile_netguard.py} for the session set-up path. Not part of the
benchmark figures.

    .venv/bin/python bench/profile_session.py                     # CPU per session, 3 runs
    .venv/bin/python bench/profile_session.py --profile cprofile  # + cProfile top-N tables
    .venv/bin/python bench/profile_session.py --profile py-spy    # + py-spy top-N tables
    .venv/bin/python bench/profile_session.py --trees /tmp/before,.  # interleave two checkouts
    .venv/bin/python bench/profile_session.py --no-portforward   # the gateway alone

The gateway is the real one (C{twistd -n netguard}, the generated benchmark configuration of
C{paths.py} with C{greeting_delay = 0}, every other check as shipped, logging every session
to standard output, a file, through C{--logger netguard.log.text_stdout_observer} as the
systemd unit does) pinned to CPU 1; the client and a TCP echo backend (the service C{echo})
run on CPU 0.
Each session: connect, greeting, SCRAM-SHA-256 (the client caches its salted password, as RFC
5802 allows, and checks the server's signature), C{OPEN echo}, 16 bytes echoed, close. The
gateway's CPU time (utime + stime from C{/proc/<pid>/stat}) over the timed sessions, divided
by their count, is the figure; a warm-up comes first. With C{--profile cprofile} the gateway
enables C{cProfile} on SIGUSR2 for the timed window only (a separate run from the CPU figure:
the profiler's own cost is not in it).

The anchor, measured in the same run and interleaved with the gateway's runs under the same
pinning: Twisted's own relay (C{twistd -n portforward}, as C{bench/paths.py} runs it) alone on
CPU 1, forwarding to the same echo backend on CPU 0, driven by the same client doing the
equivalent plain work (connect, 16 bytes echoed, close, the same concurrency and counts). Its
CPU per relayed connection is measured the same way, and the script prints the medians of
both and their ratio. Everything runs on 127.0.0.1, bounded in count and time, and every
process started is stopped by its own process group id.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import loadgen  # noqa: E402
import paths as pathmod  # noqa: E402
from procs import CLK_TCK, Processes, free_port  # noqa: E402
from profile_netguard import summarise_raw  # noqa: E402

#: The payload echoed on each session.
PAYLOAD = b"0123456789abcdef"

#: Bound on one session, seconds.
SESSION_TIMEOUT = 10.0


def cpu_seconds(pid: int) -> float:
    """
    @return: utime + stime of process C{pid}, in seconds (from C{/proc/<pid>/stat}).
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read().decode("ascii", "replace")
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- the child processes ---------------------------------------------------------------------


def gateway_child(args: argparse.Namespace) -> int:
    """
    Run C{twistd} in this process; with C{--cprofile FILE}, SIGUSR2 starts C{cProfile} and a
    second SIGUSR2 stops it and writes its statistics to FILE.
    """
    import cProfile

    import netguard

    sys.stdout.write(f"profile_session: netguard from {netguard.__file__}\n")
    sys.stdout.flush()
    if args.cprofile:
        profiler = cProfile.Profile()
        running = [False]

        def toggle(signum: int, frame: Any) -> None:
            if not running[0]:
                running[0] = True
                profiler.enable()
            else:
                profiler.disable()
                running[0] = False
                profiler.dump_stats(args.cprofile + ".tmp")
                os.rename(args.cprofile + ".tmp", args.cprofile)

        signal.signal(signal.SIGUSR2, toggle)
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *args.twistd]
    run()
    return 0


def echo_child(args: argparse.Namespace) -> int:
    """
    A TCP echo server on 127.0.0.1:C{--port} (the service C{echo}'s backend).
    """

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(echo, "127.0.0.1", args.port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())
    return 0


# -- the client ------------------------------------------------------------------------------


async def _echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send the payload, check the echo, close."""
    try:
        writer.write(PAYLOAD)
        if await reader.readexactly(len(PAYLOAD)) != PAYLOAD:
            raise ValueError("the echo returned other bytes")
    finally:
        writer.close()
        await writer.wait_closed()


async def _session(port: int, target: loadgen.NGPTarget, scram: loadgen.ScramClient) -> None:
    await _echo_once(*await loadgen.connect_async("127.0.0.1", port, target, scram))


async def _relayed(port: int) -> None:
    await _echo_once(*await asyncio.open_connection("127.0.0.1", port))


async def _drive(
    session: Callable[[], Awaitable[None]], count: int, conns: int, seconds: float
) -> tuple[int, int, float]:
    """
    Run C{count} sessions (each one call of C{session}), C{conns} at a time, for at most
    C{seconds}.

    @return: (sessions completed, sessions failed, wall seconds).
    """
    done = failed = 0
    started = time.perf_counter()
    deadline = started + seconds
    next_index = 0

    async def worker() -> None:
        nonlocal done, failed, next_index
        while next_index < count and time.perf_counter() < deadline:
            next_index += 1
            try:
                await asyncio.wait_for(session(), SESSION_TIMEOUT)
                done += 1
            except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError):
                failed += 1

    await asyncio.gather(*(worker() for _ in range(conns)))
    return done, failed, time.perf_counter() - started


# -- one measurement -------------------------------------------------------------------------


def measure(
    args: argparse.Namespace, tree: str, setup: pathmod.Setup, work: str, label: str
) -> dict[str, Any]:
    """
    Start a gateway from checkout C{tree}, warm it up, time C{--sessions} sessions and, if
    asked, profile a second window of the same size. Stop what was started.
    """
    processes = Processes(work)
    state = tempfile.mkdtemp(prefix="state-", dir=work)
    config = os.path.join(state, "bench.toml")
    with open(config, "w") as f:
        f.write(pathmod.NETGUARD_CONFIG + "[limits]\ngreeting_delay = 0\n")
    port, backend = free_port(), free_port()
    prof = os.path.join(work, f"{label}.prof")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    result: dict[str, Any] = {"tree": tree}
    try:
        echo = processes.start(
            f"echo-{label}",
            [sys.executable, __file__, "_echo", "--port", str(backend)],
            args.client_cpu,
        )
        processes.wait_listening(echo, backend)
        twistd_args = [
            "-n", "--pidfile=", "--logger", "netguard.log.text_stdout_observer", "netguard",
            "--config", config, "--state-dir", state, "--users", setup.users_file,
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--service", f"echo=tcp:host=127.0.0.1:port={backend}",
        ]  # fmt: skip
        child = [sys.executable, __file__, "_gateway"]
        if args.profile == "cprofile":
            child += ["--cprofile", prof]
        gateway = processes.start(
            f"gateway-{label}", [*child, "--", *twistd_args], args.gateway_cpu,
            cwd=os.path.abspath(tree), env=env,
        )  # fmt: skip
        processes.wait_listening(gateway, port, timeout=30)
        target = loadgen.NGPTarget("echo", setup.user, _read(setup.password_file))
        scram = loadgen.ScramClient(target.user, target.password)

        def window(count: int) -> tuple[int, int, float]:
            session = partial(_session, port, target, scram)
            return asyncio.run(_drive(session, count, args.conns, args.seconds))

        with open(gateway.log_path, errors="replace") as f:
            result["netguard"] = f.readline().rsplit(" ", 1)[-1].strip()
        result.update(_timed(args, gateway, window))
        if args.profile:
            result["profile"] = _profile(args, gateway.pid, window, prof, label, work)
    finally:
        processes.stop_all()
        shutil.rmtree(state, ignore_errors=True)
    return result


def _timed(args: argparse.Namespace, server: Any, window: Any) -> dict[str, Any]:
    """
    Warm C{server} up, measure its idle CPU, then time C{--sessions} sessions.

    @param server: the L{procs.Server} being measured (its PID and log).
    @param window: runs a given number of sessions; returns (done, failed, wall seconds).
    @return: the figures: CPU per session less idle, rate, log lines per session.
    """
    window(args.warmup)
    time.sleep(0.5)
    idle0 = cpu_seconds(server.pid)
    time.sleep(1.0)
    idle = cpu_seconds(server.pid) - idle0
    lines0 = _lines(server.log_path)
    cpu0 = cpu_seconds(server.pid)
    done, failed, wall = window(args.sessions)
    time.sleep(0.5)  # let the server finish the last closes and log lines
    cpu = cpu_seconds(server.pid) - cpu0 - idle * (wall + 0.5)
    return {
        "idle_cpu_per_s": idle, "sessions": done, "failed": failed, "wall_s": wall,
        "rate": done / wall, "cpu_s": cpu, "us_per_session": 1e6 * cpu / max(done, 1),
        "gateway_cpu_pct": 100 * cpu / wall,
        "log_lines_per_session": (_lines(server.log_path) - lines0) / max(done, 1),
    }  # fmt: skip


def measure_portforward(args: argparse.Namespace, work: str, label: str) -> dict[str, Any]:
    """
    Start Twisted's portforward (C{twistd -n portforward}) in front of a fresh echo backend,
    pinned as the gateway is, and time C{--sessions} relayed connections (connect, 16 bytes
    echoed, close) the way L{measure} times sessions. Stop what was started.
    """
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")

    def argv(port: int, backend: int) -> list[str]:
        return [
            twistd, "-n", "--pidfile=", "portforward",
            "-p", f"tcp:{port}:interface=127.0.0.1", "-h", "127.0.0.1", "-d", str(backend),
        ]  # fmt: skip

    return _measure_other(
        args, work, f"portforward-{label}", argv, lambda port: partial(_relayed, port)
    )


def measure_floor(
    args: argparse.Namespace, setup: pathmod.Setup, work: str, label: str
) -> dict[str, Any]:
    """
    Start C{bench/ngp_floor.py} (the NGP/1 exchange on bare Twisted, no checks) in front of
    a fresh echo backend, pinned as the gateway is, and time C{--sessions} sessions exactly
    as L{measure} does. Stop what was started.
    """
    target = loadgen.NGPTarget("echo", setup.user, _read(setup.password_file))
    scram = loadgen.ScramClient(target.user, target.password)

    def argv(port: int, backend: int) -> list[str]:
        floor = os.path.join(HERE, "ngp_floor.py")
        return [sys.executable, floor, "--port", str(port), "--backend", str(backend),
                "--users", setup.users_file]  # fmt: skip

    return _measure_other(
        args, work, f"floor-{label}", argv, lambda port: partial(_session, port, target, scram)
    )


def _measure_other(
    args: argparse.Namespace,
    work: str,
    name: str,
    argv: Callable[[int, int], list[str]],
    session: Callable[[int], Callable[[], Awaitable[None]]],
) -> dict[str, Any]:
    """
    Start the server C{argv(port, backend)} pinned as the gateway is, in front of a fresh
    echo backend, and time C{--sessions} calls of C{session(port)}. Stop what was started.
    """
    processes = Processes(work)
    port, backend = free_port(), free_port()
    try:
        echo = processes.start(
            f"echo-{name}",
            [sys.executable, __file__, "_echo", "--port", str(backend)],
            args.client_cpu,
        )
        processes.wait_listening(echo, backend)
        server = processes.start(name, argv(port, backend), args.gateway_cpu, cwd=work)
        processes.wait_listening(server, port, timeout=30)

        def window(count: int) -> tuple[int, int, float]:
            return asyncio.run(_drive(session(port), count, args.conns, args.seconds))

        return _timed(args, server, window)
    finally:
        processes.stop_all()


def _profile(
    args: argparse.Namespace, pid: int, window: Any, prof: str, label: str, work: str
) -> str:
    """
    Profile one more window of C{--sessions} sessions; return the top-N tables as text.
    """
    if args.profile == "cprofile":
        os.kill(pid, signal.SIGUSR2)
        window(args.sessions)
        time.sleep(0.5)
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not os.path.exists(prof) and time.monotonic() < deadline:
            time.sleep(0.1)
        if args.save_profile:
            shutil.copy(prof, args.save_profile)
        return _cprofile_tables(prof, args.top)
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    out = os.path.join(work, f"{label}.raw")
    seconds = max(2, int(args.sessions / 600) + 2)
    command = [
        pyspy, "record", "--pid", str(pid), "--format", "raw", "--output", out,
        "--rate", "500", "--nonblocking", "--duration", str(seconds),
    ]  # fmt: skip
    if args.client_cpu is not None:
        command = ["taskset", "-c", str(args.client_cpu), *command]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        window(args.sessions)
        spy.wait(timeout=seconds + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    return summarise_raw(out, args.top) if os.path.exists(out) else "  (no profile)\n"


def _cprofile_tables(path: str, top: int) -> str:
    """
    @return: the top C{top} functions by cumulative and by own (total) time, as text.
    """
    import io

    out = io.StringIO()
    stats = pstats.Stats(path, stream=out)
    stats.strip_dirs()
    for key in ("cumulative", "tottime"):
        out.write(f"-- top {top} by {key} time\n")
        stats.sort_stats(key).print_stats(top)
    text = out.getvalue()
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def _report(title: str, unit: str, r: dict[str, Any], tail: str) -> None:
    sys.stdout.write(
        f"{title}: {r['us_per_session']:.0f} us/{unit} ({r['sessions']} {unit}s, "
        f"{r['failed']} failed, {r['rate']:.0f}/s, relay CPU {r['gateway_cpu_pct']:.0f}%, "
        f"idle {1e3 * r['idle_cpu_per_s']:.0f} ms/s, "
        f"{r['log_lines_per_session']:.1f} log lines/{unit}, load {r['load']}{tail})\n"
    )
    sys.stdout.flush()


def _lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().rstrip("\r\n")


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000, help="timed sessions per run")
    parser.add_argument("--warmup", type=int, default=300, help="sessions before the timing")
    parser.add_argument("--conns", type=int, default=16, help="sessions in flight at once")
    parser.add_argument("--runs", type=int, default=3, help="runs per tree, interleaved")
    parser.add_argument("--seconds", type=float, default=60.0, help="bound on one window")
    parser.add_argument("--trees", default=".", help="checkouts to compare, comma-separated")
    parser.add_argument("--profile", choices=["cprofile", "py-spy"], help="profile too")
    parser.add_argument("--save-profile", help="keep the (last) cProfile statistics here")
    parser.add_argument("--top", type=int, default=25, help="rows of each profile table")
    parser.add_argument(
        "--no-portforward", dest="portforward", action="store_false",
        help="skip the anchor: Twisted's portforward, interleaved with the gateway's runs",
    )  # fmt: skip
    parser.add_argument(
        "--floor", action="store_true",
        help="also measure bench/ngp_floor.py: the NGP/1 exchange on bare Twisted, no checks",
    )  # fmt: skip
    parser.add_argument("--gateway-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("_gateway")
    p.add_argument("--cprofile")
    p.add_argument("twistd", nargs=argparse.REMAINDER)
    p = sub.add_parser("_echo")
    p.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "_gateway":
        if args.twistd[:1] == ["--"]:
            args.twistd = args.twistd[1:]
        return gateway_child(args)
    if args.command == "_echo":
        return echo_child(args)
    if (os.cpu_count() or 1) < 2:
        args.gateway_cpu = args.client_cpu = None
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})
    trees = [t for t in args.trees.split(",") if t]
    work = tempfile.mkdtemp(prefix="netguard-session-")
    results: dict[str, list[dict[str, Any]]] = {tree: [] for tree in trees}
    anchor: list[dict[str, Any]] = []
    floor: list[dict[str, Any]] = []
    try:
        setup = pathmod.prepare(work, Processes(work), None, os.path.dirname(sys.executable))
        for run in range(args.runs):
            for i, tree in enumerate(trees):
                load = _load()
                r = measure(args, tree, setup, work, f"r{run}t{i}")
                r["load"] = load
                results[tree].append(r)
                _report(f"run {run + 1} {tree}", "session", r, f"; {r['netguard']}")
                if "profile" in r:
                    sys.stdout.write(r["profile"])
            if args.portforward:
                load = _load()
                r = measure_portforward(args, work, f"r{run}pf")
                r["load"] = load
                anchor.append(r)
                _report(f"run {run + 1} portforward", "connection", r, "")
            if args.floor:
                load = _load()
                r = measure_floor(args, setup, work, f"r{run}")
                r["load"] = load
                floor.append(r)
                _report(f"run {run + 1} NGP floor", "session", r, "")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write("median gateway CPU per session:\n")
    pf = statistics.median(r["us_per_session"] for r in anchor) if anchor else None
    for tree, runs in results.items():
        figures = [r["us_per_session"] for r in runs]
        if figures:
            sys.stdout.write(
                f"  {tree}: {statistics.median(figures):.0f} us "
                f"(runs: {', '.join(f'{f:.0f}' for f in figures)})\n"
            )
    if floor:
        figures = [r["us_per_session"] for r in floor]
        sys.stdout.write(
            f"median NGP/1 on bare Twisted (bench/ngp_floor.py) CPU per session: "
            f"{statistics.median(figures):.0f} us "
            f"(runs: {', '.join(f'{f:.0f}' for f in figures)})\n"
        )
    if pf is not None:
        figures = [r["us_per_session"] for r in anchor]
        sys.stdout.write(
            f"median Twisted portforward CPU per relayed connection: {pf:.0f} us "
            f"(runs: {', '.join(f'{f:.0f}' for f in figures)})\n"
        )
        for tree, runs in results.items():
            if runs:
                gw = statistics.median(r["us_per_session"] for r in runs)
                each = [
                    g["us_per_session"] / a["us_per_session"]
                    for g, a in zip(runs, anchor, strict=True)
                ]
                sys.stdout.write(
                    f"ratio gateway / portforward, {tree}: {gw / pf:.2f}x "
                    f"(per run: {', '.join(f'{x:.2f}' for x in each)})\n"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""
What an idle connection costs the gateway in memory, per phase, next to Twisted's
portforward: a companion of C{bench/profile_session.py}. Not part of the benchmark figures.

    .venv/bin/python bench/profile_memory.py                        # 1 run, 0..8000
    .venv/bin/python bench/profile_memory.py --runs 3 --steps 0,2000,8000
    .venv/bin/python bench/profile_memory.py --trees /tmp/before,.  # interleave two checkouts
    .venv/bin/python bench/profile_memory.py --breakdown 2000       # tracemalloc + getsizeof
    .venv/bin/python bench/profile_memory.py --collect [--trim]     # + pymalloc and glibc
    .venv/bin/python bench/profile_memory.py --wrap 'heaptrack -o F' --phases echo  # attribution

For each phase a fresh gateway (C{twistd -n netguard} from the checkout, the generated
configuration of C{paths.py} with the caps raised above the largest step, the line-phase
deadlines raised so that nothing times out while held, overload shedding on lag off; every
other check as shipped, logging every connection to a file) runs alone on CPU 1; this process
(the client) and a TCP echo backend run on CPU 0. The client opens connections in steps (by
default 0, 1000, 2000, 4000, 8000 held at once), each left in one phase:

  greeted    connected and greeted, not authenticated
  authed     SCRAM-SHA-256 done (client caches its salted password), no OPEN
  echo       OPEN echo (the built-in echo service), 16 bytes echoed, then idle
  tcp        OPEN tcp (a TCP echo backend this script starts), 16 bytes echoed, then idle

and, in the same run, Twisted's portforward (C{twistd -n portforward}) in front of the same
echo backend, each connection having relayed 16 bytes. After each step and a settle, the
relay's RSS, PSS and USS (Private_Clean + Private_Dirty) are read from
C{/proc/<pid>/smaps_rollup}; the figure is KiB per connection, the least-squares slope over
the steps. Everything is on 127.0.0.1, bounded in count and time, and every process started
is stopped by its own process group id.

With C{--collect} the gateway (and portforward) run a full collection after each reading
and report pymalloc's figures (bytes in its blocks and arenas) and glibc's C{mallinfo2}
(bytes in use, free in its heap, mmap'd); with C{--trim} they also call C{malloc_trim(0)}
first (the RSS read before the signal is reported as C{rss_before}). C{--wrap} runs the
gateway under another command (heaptrack, say) for attribution only.

With C{--breakdown N} the script instead runs one gateway under C{tracemalloc} with N
idle relayed connections of each kind: it prints the growth between the empty gateway and
N connections by file and line, and C{sys.getsizeof} of each per-connection object of one
relayed session (the gateway child does both on SIGUSR2).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
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

import loadgen  # noqa: E402
import paths as pathmod  # noqa: E402
from procs import Processes, Server, free_port  # noqa: E402
from profile_session import PAYLOAD, echo_child  # noqa: E402
from run import _raise_nofile  # noqa: E402

#: The gateway's phases, in the order they are measured, then the anchor.
PHASES = ("greeted", "authed", "echo", "tcp")

#: Connections opened at once while a step fills.
CONCURRENCY = 64

#: Bound on opening one connection (seconds).
OPEN_TIMEOUT = 30.0


def gateway_config(largest: int) -> str:
    """
    The benchmark's generated configuration, with every cap above C{largest} connections
    and deadlines long enough that no held connection is closed while it is measured.
    (The generated configuration ends inside its C{[admission]} table.)
    """
    caps = largest + 512
    return (
        pathmod.NETGUARD_CONFIG.replace("max_connections = 8192", f"max_connections = {caps}")
        .replace("max_unauthenticated = 2048", f"max_unauthenticated = {caps}")
        .replace("max_relays = 6144", f"max_relays = {caps}")
        .replace("per_source_max = 8192", f"per_source_max = {caps}")
        + f"red_soft = {caps}\n"  # no random early drop while the line phase fills
        + "[limits]\nhandshake_timeout = 3600\nidle_timeout = 86400\n"
        + '[overload]\nmax_lag = "off"\n'
    )


def smaps(pid: int) -> dict[str, int]:
    """
    @return: Rss, Pss and Uss (Private_Clean + Private_Dirty) of process C{pid}, in KiB.
    """
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = {
            line.split(":")[0]: int(line.split()[1]) for line in f if line.rstrip().endswith("kB")
        }
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "uss": fields["Private_Clean"] + fields["Private_Dirty"],
    }


def slope(xs: list[int], ys: list[float]) -> float:
    """
    @return: the least-squares slope of C{ys} over C{xs}.
    """
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


# -- the gateway child -----------------------------------------------------------------------


def gateway_child(args: argparse.Namespace) -> int:
    """
    Run C{twistd} in this process; with C{--breakdown FILE}, under tracemalloc: the first
    SIGUSR2 takes the baseline snapshot, the second writes the growth and the sizes of one
    relayed session's objects to FILE.
    """
    import netguard

    sys.stdout.write(f"profile_memory: netguard from {netguard.__file__}\n")
    sys.stdout.flush()
    if args.collect:
        import gc

        dumps = [0]

        def collect(signum: int, frame: Any) -> None:
            gc.collect()
            dumps[0] += 1
            if args.trim:
                _malloc_trim()
            _malloc_stats(f"{args.collect}.{dumps[0]}")

        signal.signal(signal.SIGUSR2, collect)
    if args.breakdown:
        import tracemalloc

        tracemalloc.start(args.frames)
        snapshots: list[Any] = []

        def on_signal(signum: int, frame: Any) -> None:
            import gc

            gc.collect()
            snapshots.append(tracemalloc.take_snapshot())
            if len(snapshots) == 2:
                text = _growth(snapshots[0], snapshots[1]) + _sizes()
                with open(args.breakdown + ".tmp", "w") as f:
                    f.write(text)
                os.rename(args.breakdown + ".tmp", args.breakdown)

        signal.signal(signal.SIGUSR2, on_signal)
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *args.twistd]
    run()
    return 0


class _MallInfo2(ctypes.Structure):
    """
    glibc's C{struct mallinfo2} (every field a C{size_t}).
    """

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _mallinfo() -> str:
    """
    glibc's C{mallinfo2()} of the main arena as C{name = bytes} lines (empty elsewhere):
    C{arena} (heap obtained by brk), C{hblkhd} (mmap'd blocks), C{uordblks} (in use),
    C{fordblks} (free, kept), C{keepcost} (trimmable top).
    """
    try:
        function = _libc().mallinfo2
    except (OSError, AttributeError):
        return ""
    function.restype = _MallInfo2
    info = function()
    return "".join(f"mallinfo2 {name} = {getattr(info, name)}\n" for name, _ in info._fields_)


def _malloc_trim() -> None:
    """
    glibc's C{malloc_trim(0)}: give free heap pages back to the system.
    """
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _malloc_stats(path: str) -> None:
    """
    Write pymalloc's statistics (C{sys._debugmallocstats}, which writes to file descriptor
    2) and glibc's C{mallinfo2} to C{path} (complete once it exists).
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path + ".tmp", "w") as f:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
            sys.stderr.flush()
            f.write(_mallinfo())
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    os.rename(path + ".tmp", path)


def pymalloc_kib(path: str) -> dict[str, int]:
    """
    @return: from a L{_malloc_stats} file, the KiB in pymalloc's allocated blocks (live
        small objects, as pymalloc rounds them) and in its arenas (what it holds from the
        system, free space included).
    """
    out = {}
    with open(path) as f:
        for line in f:
            name, _, value = line.rpartition("=")
            number = value.strip().replace(",", "")
            if not number.isdigit():
                continue
            if "bytes in allocated blocks" in name:
                out["pym_blocks"] = int(number) // 1024
            elif "bytes/arena" in name:
                out["pym_arenas"] = int(number) // 1024
            elif name.startswith("mallinfo2 "):
                out["malloc_" + name.split()[1]] = int(number) // 1024
    return out


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/netguard/", "lib/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _growth(before: Any, after: Any, top: int = 30) -> str:
    import tracemalloc

    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(filters), after.filter_traces(filters)
    out = []
    for name, snapshot in (("before", before), ("after", after)):
        large = [t.size for t in snapshot.traces if t.size > 512]
        out.append(
            f"-- {name}: {len(large)} blocks over 512 bytes (glibc malloc, not pymalloc), "
            f"{sum(large) / 1024:.0f} KiB"
        )
    out.append(f"-- glibc malloc now:\n{_mallinfo()}")
    for group in ("filename", "lineno"):
        stats = after.compare_to(before, group)
        grown = sum(s.size_diff for s in stats)
        out.append(f"-- growth by {group}: {grown / 1024:.0f} KiB in total")
        for stat in stats[:top]:
            frame = stat.traceback[0]
            where = f"{_short(frame.filename)}:{frame.lineno if group == 'lineno' else ''}"
            out.append(
                f"   {stat.size_diff / 1024:9.1f} KiB {stat.count_diff:+7d} blocks  {where}"
            )
    if len(after.traces) and len(after.traces[0].traceback) > 1:
        out.append("-- largest growth by allocation traceback (innermost frame last):")
        for stat in after.compare_to(before, "traceback")[:12]:
            out.append(f"   {stat.size_diff / 1024:9.1f} KiB {stat.count_diff:+7d} blocks")
            for frame in list(stat.traceback)[-6:]:
                out.append(f"        {_short(frame.filename)}:{frame.lineno}")
    return "\n".join(out) + "\n"


def _deep(obj: Any) -> int:
    """
    C{sys.getsizeof} of C{obj} plus its instance dict, if it has one.
    """
    size = sys.getsizeof(obj)
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        size += sys.getsizeof(d)
    return size


def _fields(obj: Any) -> dict[str, Any]:
    """
    An object's attributes: its instance dict and its slots.
    """
    fields = dict(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name):
                fields[name] = getattr(obj, name)
    return fields


def _sizes() -> str:
    """
    The size of each object one relayed session holds, for one session of each backend kind.
    """
    import gc

    from netguard.gateway.protocol import GatewaySession, SessionState

    counts: dict[str, int] = {}
    for obj in gc.get_objects():
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        counts[name] = counts.get(name, 0) + 1
    big: dict[str, list[int]] = {}
    for obj in gc.get_objects():
        d = getattr(obj, "__dict__", None) if not isinstance(obj, type) else None
        if isinstance(d, dict) and sys.getsizeof(d) > 512:
            entry = big.setdefault(f"{type(obj).__module__}.{type(obj).__qualname__}", [0, 0])
            entry[0] += 1
            entry[1] += sys.getsizeof(d)
    out = ["-- instance dicts over 512 bytes (allocated by glibc malloc), by owner type"]
    for name, (count, size) in sorted(big.items(), key=lambda item: -item[1][1])[:12]:
        out.append(f"   {count:7d}  {size / 1024:9.1f} KiB  {name}")
    out.append("-- objects the collector tracks, by type, the 25 most numerous")
    for name, count in sorted(counts.items(), key=lambda item: -item[1])[:25]:
        out.append(f"   {count:7d}  {name}")
    out.append("-- sys.getsizeof (object + its __dict__) of one relayed session's objects")
    seen: set[str] = set()
    for obj in gc.get_objects():
        if not isinstance(obj, GatewaySession) or obj.state is not SessionState.RELAYING:
            continue
        leg = obj._leg
        kind = type(leg).__name__
        if kind in seen:
            continue
        seen.add(kind)
        parts: list[tuple[str, Any]] = [
            ("GatewaySession", obj),
            ("its __dict__ keys", len(getattr(obj, "__dict__", {}))),
            ("client transport " + type(obj.transport).__name__, obj.transport),
            ("admission hold " + type(obj.admitted).__name__, obj.admitted),
            ("leg " + kind, leg),
        ]
        splice = getattr(leg, "splice", None)
        if splice is not None:
            parts.append(("relay " + type(splice).__name__, splice))
            for name, value in sorted(_fields(splice).items()):
                if isinstance(value, (dict, list, set)) or hasattr(value, "__dict__"):
                    parts.append((f"  .{name} {type(value).__name__}", value))
        protocol = getattr(leg, "protocol", None)
        if protocol is not None:
            parts.append(("backend protocol " + type(protocol).__name__, protocol))
            parts.append(
                ("backend transport " + type(protocol.transport).__name__, protocol.transport)
            )
        for name, value in sorted(_fields(obj).items()):
            if isinstance(value, (dict, list, set, bytes)) or hasattr(value, "__dict__"):
                parts.append((f"  session.{name} {type(value).__name__}", value))
        out.append(f"{kind}:")
        for label, value in parts:
            figure = value if isinstance(value, int) else _deep(value)
            out.append(f"   {figure:6d}  {label}")
    return "\n".join(out) + "\n"


# -- the client ------------------------------------------------------------------------------


async def _open_one(port: int, phase: str, scram: Any, setup_user: str, password: str) -> Any:
    """
    Open one connection and leave it in C{phase}; return its writer (held by the caller).
    """
    if phase in ("echo", "tcp"):
        target = loadgen.NGPTarget(phase, setup_user, password)
        reader, writer = await loadgen.connect_async("127.0.0.1", port, target, scram)
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        greeting = await reader.readline()
        if not greeting.startswith(b"NETGUARD/1 ") and phase != "portforward":
            raise ValueError(f"not a greeting: {greeting[:60]!r}")
        if phase == "authed":
            steps = loadgen._NGPSteps(loadgen.NGPTarget("echo", setup_user, password), scram)
            writer.write(steps.on_greeting(greeting.rstrip(b"\r\n")) + b"\r\n")
            writer.write(steps.on_cont((await reader.readline()).rstrip(b"\r\n")) + b"\r\n")
            steps.on_auth_ok((await reader.readline()).rstrip(b"\r\n"))
    if phase in ("echo", "tcp"):
        writer.write(PAYLOAD)
        if await reader.readexactly(len(PAYLOAD)) != PAYLOAD:
            raise ValueError("the echo returned other bytes")
    return writer


async def _open_relayed(port: int) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PAYLOAD)
    if await reader.readexactly(len(PAYLOAD)) != PAYLOAD:
        raise ValueError("the echo returned other bytes")
    return writer


async def _fill(held: list[Any], want: int, opener: Any) -> int:
    """
    Open connections with C{opener} until C{held} has C{want}; return the failures.
    """
    gate = asyncio.Semaphore(CONCURRENCY)
    failures = 0

    async def one() -> None:
        nonlocal failures
        async with gate:
            try:
                held.append(await asyncio.wait_for(opener(), OPEN_TIMEOUT))
            except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
                failures += 1

    await asyncio.gather(*(one() for _ in range(want - len(held))))
    return failures


async def _steps(
    args: argparse.Namespace, pid: int, opener: Any, label: str, collect: str | None = None
) -> list[tuple[int, dict[str, int]]]:
    """
    Fill to each step, settle, read the relay's memory; close everything at the end.

    @param collect: the gateway's C{--collect} path, to add pymalloc's figures.
    """
    dumps = 0
    held: list[Any] = []
    readings = []
    try:
        for step in args.steps:
            failures = await _fill(held, step, opener)
            if failures:
                raise RuntimeError(f"{label}: {failures} connections failed at step {step}")
            await asyncio.sleep(args.settle)
            reading = smaps(pid)
            if collect is not None:
                # A full collection (no cyclic garbage left), then pymalloc's own figures.
                dumps += 1
                os.kill(pid, signal.SIGUSR2)
                deadline = time.monotonic() + 60
                while not os.path.exists(f"{collect}.{dumps}") and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                before = {f"{k}_before": v for k, v in reading.items()}
                reading = {**smaps(pid), **before, **pymalloc_kib(f"{collect}.{dumps}")}
            readings.append((len(held), reading))
    finally:
        for writer in held:
            writer.close()
    return readings


def _start_gateway(
    args: argparse.Namespace, processes: Processes, setup: pathmod.Setup, tree: str,
    backend: int, work: str, label: str, breakdown: str | None = None,
) -> tuple[Server, int]:  # fmt: skip
    state = tempfile.mkdtemp(prefix="state-", dir=work)
    config = os.path.join(state, "bench.toml")
    with open(config, "w") as f:
        f.write(gateway_config(max(args.steps)))
    port = free_port()
    twistd_args = [
        "-n", "--pidfile=", "--logger", "netguard.log.text_stdout_observer", "netguard",
        "--config", config, "--state-dir", state, "--users", setup.users_file,
        "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--service", "echo=builtin:echo",
        "--service", f"tcp=tcp:host=127.0.0.1:port={backend}",
    ]  # fmt: skip
    child = [sys.executable, __file__, "_gateway"]
    if breakdown:
        child += ["--breakdown", breakdown, "--frames", str(args.frames)]
    elif args.collect:
        child += ["--collect", os.path.join(work, f"pymalloc-{label}")]
        if args.trim:
            child.append("--trim")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    wrap = args.wrap.split() if args.wrap else []
    gateway = processes.start(
        f"gateway-{label}", [*wrap, *child, "--", *twistd_args], args.gateway_cpu,
        cwd=os.path.abspath(tree), env=env,
    )  # fmt: skip
    processes.wait_listening(gateway, port, timeout=30)
    return gateway, port


def measure_phase(
    args: argparse.Namespace, setup: pathmod.Setup, tree: str, phase: str, work: str,
    backend: int, label: str,
) -> list[tuple[int, dict[str, int]]]:  # fmt: skip
    """
    One fresh gateway from C{tree}, filled step by step with connections left in C{phase}.
    """
    processes = Processes(work)
    password = _read(setup.password_file)
    scram = loadgen.ScramClient(setup.user, password)
    try:
        gateway, port = _start_gateway(args, processes, setup, tree, backend, work, label)

        def opener() -> Any:
            return _open_one(port, phase, scram, setup.user, password)

        collect = os.path.join(work, f"pymalloc-{label}") if args.collect else None
        return asyncio.run(_steps(args, gateway.pid, opener, label, collect))
    finally:
        processes.stop_all()


def measure_portforward(
    args: argparse.Namespace, work: str, backend: int, label: str
) -> list[tuple[int, dict[str, int]]]:
    """
    Twisted's portforward in front of the same echo backend, filled the same way.
    """
    processes = Processes(work)
    port = free_port()
    # Run through this script's gateway child, so that --collect reads portforward too.
    child = [sys.executable, __file__, "_gateway"]
    collect = os.path.join(work, f"pymalloc-{label}") if args.collect else None
    if collect is not None:
        child += ["--collect", collect] + (["--trim"] if args.trim else [])
    try:
        relay = processes.start(
            f"portforward-{label}",
            [
                *child, "--", "-n", "--pidfile=", "portforward",
                "-p", f"tcp:{port}:interface=127.0.0.1", "-h", "127.0.0.1", "-d", str(backend),
            ],
            args.gateway_cpu, cwd=work,
        )  # fmt: skip
        processes.wait_listening(relay, port, timeout=30)
        return asyncio.run(_steps(args, relay.pid, lambda: _open_relayed(port), label, collect))
    finally:
        processes.stop_all()


def breakdown(args: argparse.Namespace, setup: pathmod.Setup, work: str, backend: int) -> None:
    """
    One gateway under tracemalloc: baseline snapshot, then C{--breakdown} idle relayed
    connections of each backend kind, then the growth and the object sizes.
    """
    processes = Processes(work)
    report = os.path.join(work, "breakdown.txt")
    password = _read(setup.password_file)
    scram = loadgen.ScramClient(setup.user, password)
    count = args.breakdown
    who = (setup.user, password)
    kinds = [k for k in args.kinds.split(",") if k]
    try:
        gateway, port = _start_gateway(
            args, processes, setup, ".", backend, work, "breakdown", breakdown=report
        )

        async def drive() -> None:
            held: list[Any] = []
            # One of each first, so that one-off allocations (imports, caches) are baseline.
            for phase in kinds:
                await _fill(held, len(held) + 1, partial(_open_one, port, phase, scram, *who))
            await asyncio.sleep(args.settle)
            os.kill(gateway.pid, signal.SIGUSR2)
            for phase in kinds:
                opener = partial(_open_one, port, phase, scram, *who)
                failed = await _fill(held, len(held) + count, opener)
                if failed:
                    raise RuntimeError(f"{failed} connections failed")
            await asyncio.sleep(args.settle)
            os.kill(gateway.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 120
            while not os.path.exists(report) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            for writer in held:
                writer.close()

        asyncio.run(drive())
        sys.stdout.write(f"tracemalloc, {count} idle relayed sessions of each of {kinds}:\n")
        sys.stdout.write(_read(report) + "\n")
    finally:
        processes.stop_all()


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().rstrip("\r\n")


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _per_conn(readings: list[tuple[int, dict[str, int]]], key: str) -> float:
    return slope([n for n, _ in readings], [r[key] for _, r in readings])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="0,1000,2000,4000,8000", help="connections held")
    parser.add_argument("--runs", type=int, default=1, help="runs, interleaved")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before each reading")
    parser.add_argument("--trees", default=".", help="checkouts to compare, comma-separated")
    parser.add_argument("--phases", default=",".join(PHASES) + ",portforward")
    parser.add_argument("--breakdown", type=int, help="tracemalloc + getsizeof at N relays")
    parser.add_argument("--frames", type=int, default=1, help="tracemalloc frames kept")
    parser.add_argument(
        "--collect", action="store_true",
        help="after each reading the gateway runs gc.collect() and reports pymalloc's "
        "figures (SIGUSR2): live small-object bytes and arena bytes per connection",
    )  # fmt: skip
    parser.add_argument(
        "--trim", action="store_true",
        help="with --collect: the gateway also calls glibc's malloc_trim(0) after its "
        "collection; RSS is read after it, and before the signal as rss_before",
    )  # fmt: skip
    parser.add_argument(
        "--wrap", default="",
        help="a command the gateway runs under, e.g. 'heaptrack -o /tmp/gw' (its RSS is "
        "then the wrapper's process, so only for attribution, not for the figures)",
    )  # fmt: skip
    parser.add_argument("--kinds", default="echo,tcp", help="services opened for --breakdown")
    parser.add_argument("--gateway-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("_gateway")
    p.add_argument("--breakdown")
    p.add_argument("--frames", type=int, default=1)
    p.add_argument("--collect")
    p.add_argument("--trim", action="store_true")
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
    args.steps = sorted({int(s) for s in args.steps.split(",") if s})
    _raise_nofile()  # before the children start: they inherit it
    if (os.cpu_count() or 1) < 2:
        args.gateway_cpu = args.client_cpu = None
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})
    trees = [t for t in args.trees.split(",") if t]
    phases = [p for p in args.phases.split(",") if p]
    work = tempfile.mkdtemp(prefix="netguard-memory-")
    backends = Processes(work)
    results: dict[str, list[float]] = {}
    try:
        setup = pathmod.prepare(work, Processes(work), None, os.path.dirname(sys.executable))
        backend = free_port()
        echo = backends.start(
            "echo-backend", [sys.executable, __file__, "_echo", "--port", str(backend)],
            args.client_cpu,
        )  # fmt: skip
        backends.wait_listening(echo, backend)
        if args.breakdown:
            breakdown(args, setup, work, backend)
            return 0
        for run in range(args.runs):
            for phase in phases:
                for i, tree in enumerate(trees if phase != "portforward" else ["-"]):
                    load = _load()
                    label = f"r{run}-{phase}-t{i}"
                    if phase == "portforward":
                        readings = measure_portforward(args, work, backend, label)
                    else:
                        readings = measure_phase(args, setup, tree, phase, work, backend, label)
                    figures = {k: _per_conn(readings, k) for k in readings[0][1]}
                    results.setdefault(f"{phase} {tree}", []).append(figures["rss"])
                    steps = " ".join(f"{n}:{r['rss'] / 1024:.1f}" for n, r in readings)
                    sys.stdout.write(
                        f"run {run + 1} {phase:<11} {tree}: {figures['rss']:.2f} KiB/conn RSS, "
                        f"{figures['pss']:.2f} PSS, {figures['uss']:.2f} USS"
                        + (
                            f", pymalloc {figures['pym_blocks']:.2f} in blocks, "
                            f"{figures['pym_arenas']:.2f} in arenas"
                            if "pym_blocks" in figures
                            else ""
                        )
                        + (
                            f", malloc {figures['malloc_uordblks']:.2f} in use, "
                            f"{figures['malloc_fordblks']:.2f} free in its heap, "
                            f"{figures['malloc_hblkhd']:.2f} mmap'd, "
                            f"RSS before the collection {figures['rss_before']:.2f}"
                            if "malloc_uordblks" in figures
                            else ""
                        )
                        + " "
                        f"(held:RSS MiB {steps}; load {load})\n"
                    )
                    sys.stdout.flush()
    finally:
        backends.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write("median KiB per connection (RSS slope):\n")
    for key, figures in results.items():
        sys.stdout.write(
            f"  {key:<14} {statistics.median(figures):6.2f} "
            f"(runs: {', '.join(f'{f:.2f}' for f in figures)})\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""
Where netguard spends its time and memory, next to Twisted's portforward: a companion of
C{bench/run.py} for looking at results critically. Not part of the benchmark figures.

    .venv/bin/python bench/profile_netguard.py cpu      # py-spy on gateway, tunnel, portforward
    .venv/bin/python bench/profile_netguard.py memory   # tracemalloc: 1000 idle relays

C{cpu} runs each load of the benchmark (bulk upload, 50-connection ping-pong, connection
churn) through netguard and through portforward while py-spy samples the relay processes
(py-spy runs on the load CPU, non-blocking), and prints for each process the functions with
the most samples: self (the innermost frame) and inclusive. C{memory} runs the gateway and a
tunnel in one process under tracemalloc and prints the allocation sites that grow when 1000
idle connections are held through them. Outputs go to C{bench/results/profile/} (ignored by
git). py-spy is not a project dependency: C{.venv/bin/pip install py-spy}.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import paths as pathmod  # noqa: E402
from run import QUICK, Bench, _raise_nofile, _readline_bounded  # noqa: E402

OUT = os.path.join(HERE, "results", "profile")

#: Seconds each profiled load runs.
SECONDS = 5.0


def py_spy_during(pid: int, cpu: int, top: int, label: str, work: Callable[[], object]) -> str:
    """
    Record process C{pid} with py-spy (run on CPU C{cpu}, non-blocking, 250 Hz) while
    C{work()} runs; return the top-N table (L{summarise_raw}).
    """
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    out = os.path.join(tempfile.gettempdir(), f"{label}-{os.getpid()}.raw")
    spy = subprocess.Popen(
        [
            "taskset", "-c", str(cpu), pyspy, "record", "--pid", str(pid), "--format", "raw",
            "--output", out, "--rate", "250", "--nonblocking", "--duration", "600",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        work()
    finally:
        spy.send_signal(2)  # py-spy writes its output on SIGINT
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    if not os.path.exists(out):
        return "  (no profile)\n"
    text = summarise_raw(out, top)
    os.unlink(out)
    return text


def summarise_raw(path: str, top: int = 18) -> str:
    """
    Summarise a py-spy raw (collapsed) profile: the frames with most samples, innermost
    (self) and anywhere in the stack (inclusive, by function).
    """
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            total += count
            frames = stack.split(";")
            self_counts[frames[-1]] += count
            seen = set()
            for frame in frames:
                function = frame.rsplit(":", 1)[0] + ")" if ":" in frame else frame
                if function not in seen:
                    seen.add(function)
                    inclusive[function] += count
    if not total:
        return "  (no samples)\n"
    lines = [f"  {total} busy samples", "  self:"]
    for frame, count in self_counts.most_common(top):
        lines.append(f"    {100 * count / total:5.1f}%  {frame}")
    lines.append("  inclusive (by function):")
    for frame, count in inclusive.most_common(top + 12):
        lines.append(f"    {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines) + "\n"


def cpu(args: argparse.Namespace) -> int:
    """
    py-spy the relays under each load.
    """
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(pyspy):
        sys.stderr.write("py-spy is missing: .venv/bin/pip install py-spy\n")
        return 2
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="netguard-profile-")
    bench = Bench(QUICK, work, {"netguard", "portforward"})
    if bench.gen_cpu is not None:
        os.sched_setaffinity(0, {bench.gen_cpu})
    summary: list[str] = []
    try:
        bench.setup = pathmod.prepare(work, bench.processes, bench.relay_cpu, bench.venv_bin)
        bench.start_backends()
        bulk = {t.name: t for t in bench.start_paths("bulk", "bulk")}
        redis = {t.name: t for t in bench.start_paths("redis", "redis")}
        redis.update({t.name: t for t in bench.start_paths("redis", "gd0", (pathmod.GD0,))})
        s = str(SECONDS - 1)
        scenarios: list[tuple[str, Any, list[str], str]] = [
            ("bulk", bulk["netguard"], ["bulk", "--bytes", str(3 << 30)], "bulk"),
            ("bulk", bulk["portforward"], ["bulk", "--bytes", str(4 << 30)], "bulk"),
            ("ping50", redis["netguard"], ["ping", "--conns", "50", "--seconds", s], "redis"),
            ("ping50", redis["gateway"], ["ping", "--conns", "50", "--seconds", s], "redis"),
            ("ping50", redis["portforward"], ["ping", "--conns", "50", "--seconds", s], "redis"),
            (
                "conn",
                redis["netguard-gd0"],
                ["connrate", "--conns", "50", "--seconds", s],
                "redis",
            ),
            ("conn", redis["gateway-gd0"], ["connrate", "--conns", "50", "--seconds", s], "redis"),
            ("conn", redis["portforward"], ["connrate", "--conns", "50", "--seconds", s], "redis"),
        ]
        for scenario, target, load, backend in scenarios:
            spies = []
            for relay in target.relays:
                out = os.path.join(OUT, f"{scenario}-{target.name}-{relay.name}.txt")
                command = [
                    pyspy, "record", "--pid", str(relay.pid), "--format", "raw",
                    "--output", out, "--rate", "250", "--nonblocking",
                    "--duration", str(int(SECONDS)),
                ]  # fmt: skip
                if bench.gen_cpu is not None:
                    command = ["taskset", "-c", str(bench.gen_cpu), *command]
                spies.append(
                    (
                        relay,
                        out,
                        subprocess.Popen(
                            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                        ),
                    )
                )
            time.sleep(0.5)
            result, cpu_shares, why = bench.run_loadgen(target, backend, load, SECONDS + 60)
            for _, _, spy in spies:
                try:
                    spy.wait(timeout=SECONDS + 30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
            figure = ""
            if result:
                figure = {
                    "bulk": f"{result.get('mb_per_s', 0):.0f} MB/s",
                    "ping50": f"{result.get('rps', 0):.0f} req/s",
                    "conn": f"{result.get('rate', 0):.0f} conn/s",
                }[scenario]
            head = (
                f"== {scenario} through {target.label}: {figure or why} "
                f"(relay CPU {cpu_shares.get('relay_cpu_pct') or 0:.0f}%)"
            )
            summary.append(head)
            bench.log(head)
            for relay, out, _ in spies:
                summary.append(f"-- {relay.name} (pid {relay.pid})")
                summary.append(summarise_raw(out) if os.path.exists(out) else "  (no profile)\n")
    finally:
        bench.processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(summary)
    with open(os.path.join(OUT, "cpu-summary.txt"), "w") as f:
        f.write(text)
    sys.stdout.write(text)
    return 0


# -- memory ----------------------------------------------------------------------------------


def memory_child(args: argparse.Namespace) -> int:
    """
    Run a gateway and a tunnel in this process under tracemalloc; take snapshots when told
    on standard input (C{snap}), print the growth between the first two at C{report}.
    """
    import threading
    import tracemalloc

    tracemalloc.start(8)
    from twisted.internet import reactor as _reactor
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from netguard.client.endpoint import NGPClientEndpoint
    from netguard.client.protocol import Credentials
    from netguard.client.tunnel import TunnelFactory
    from netguard.config import load_config
    from netguard.secretfile import read_password_file
    from netguard.service import make_service

    reactor: Any = _reactor
    log = open(os.path.join(args.state, "memory-child.log"), "w")  # noqa: SIM115
    observer: Any = textFileLogObserver(log)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    config = load_config(
        args.config,
        {
            "listen": [f"tcp:{args.gateway_port}:interface=127.0.0.1"],
            "services": [f"bench=tcp:host=127.0.0.1:port={args.backend_port}"],
            "users_file": args.users,
            "state_dir": args.state,
        },
    )
    service = make_service(config, reactor)
    service.startService()
    endpoint = NGPClientEndpoint(
        reactor,
        clientFromString(reactor, f"tcp:host=127.0.0.1:port={args.gateway_port}"),
        Credentials("bench", read_password_file(args.password_file)),
        "bench",
    )
    factory = TunnelFactory(reactor, endpoint)
    serverFromString(reactor, f"tcp:{args.tunnel_port}:interface=127.0.0.1").listen(factory)
    snapshots: list[Any] = []

    def command(line: str) -> None:
        word = line.strip()
        if word == "snap":
            import gc

            gc.collect()
            snapshots.append(tracemalloc.take_snapshot())
            sys.stdout.write(f"snapped {len(snapshots)}\n")
        elif word == "report":
            before, after = snapshots[0], snapshots[1]
            filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
            before, after = before.filter_traces(filters), after.filter_traces(filters)
            out = []
            for group in ("filename", "lineno"):
                stats = after.compare_to(before, group)
                grown = sum(s.size_diff for s in stats)
                out.append(f"-- growth by {group}: {grown / 1024:.0f} KiB in total")
                for stat in stats[:25]:
                    frame = stat.traceback[0]
                    out.append(
                        f"   {stat.size_diff / 1024:9.1f} KiB {stat.count_diff:+7d} blocks  "
                        f"{_short(frame.filename)}:{frame.lineno if group == 'lineno' else ''}"
                    )
            stats = after.compare_to(before, "traceback")
            out.append("-- largest growth by allocation traceback (innermost last):")
            for stat in stats[:8]:
                out.append(f"   {stat.size_diff / 1024:9.1f} KiB {stat.count_diff:+7d} blocks")
                for frame in list(stat.traceback)[-5:]:
                    out.append(f"        {_short(frame.filename)}:{frame.lineno}")
            with open(args.report, "w") as f:
                f.write("\n".join(out) + "\n")
            sys.stdout.write("reported\n")
        elif word == "quit":
            reactor.stop()
            return
        sys.stdout.flush()

    def read_commands() -> None:
        for line in sys.stdin:
            reactor.callFromThread(command, line)
        reactor.callFromThread(reactor.stop)

    threading.Thread(target=read_commands, daemon=True).start()
    reactor.callWhenRunning(lambda: (sys.stdout.write("ready\n"), sys.stdout.flush()))
    reactor.run()
    return 0


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def memory(args: argparse.Namespace) -> int:
    """
    Hold 1000 idle connections through an in-process gateway + tunnel under tracemalloc and
    print what grew.
    """
    from procs import free_port

    os.makedirs(OUT, exist_ok=True)
    _raise_nofile()
    work = tempfile.mkdtemp(prefix="netguard-profile-")
    bench = Bench(QUICK, work, {"netguard"})
    report = os.path.join(OUT, "memory-tracemalloc.txt")
    try:
        setup = pathmod.prepare(work, bench.processes, bench.relay_cpu, bench.venv_bin)
        bench.start_backends()
        state = os.path.join(work, "state")
        os.makedirs(state, mode=0o700)
        config = os.path.join(state, "bench.toml")
        with open(config, "w") as f:
            f.write(pathmod.NETGUARD_CONFIG)
        gateway_port, tunnel_port = free_port(), free_port()
        child = subprocess.Popen(
            [
                sys.executable, __file__, "_memory_child", "--config", config,
                "--state", state, "--users", setup.users_file,
                "--password-file", setup.password_file,
                "--gateway-port", str(gateway_port), "--tunnel-port", str(tunnel_port),
                "--backend-port", str(bench.backend_ports["redis"]), "--report", report,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        assert child.stdin is not None
        try:
            if _readline_bounded(child, 60) != b"ready":
                raise SystemExit("the gateway did not start")
            targets = {
                "tunnel": pathmod.Target("netguard", "netguard", tunnel_port),
                "gateway": pathmod.Target(
                    "gateway", "gateway", gateway_port,
                    ngp=f"bench:{setup.user}:{setup.password_file}",
                ),
            }  # fmt: skip
            target = targets[args.through]

            def hold(count: int, then: bytes) -> None:
                holder = subprocess.Popen(
                    bench.loadgen_cmd(target, "hold", "--count", str(count)),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                assert holder.stdin is not None
                line = _readline_bounded(holder, 300)
                sys.stderr.write(f"held: {line.decode()}\n")
                if then:
                    child.stdin.write(then)  # type: ignore[union-attr]
                    child.stdin.flush()  # type: ignore[union-attr]
                    sys.stderr.write(f"child: {_readline_bounded(child, 300).decode()}\n")
                holder.stdin.write(b"done\n")
                holder.stdin.close()
                holder.wait(60)

            hold(100, b"")  # warm up: imports, caches, first-connection allocations
            time.sleep(1.0)
            child.stdin.write(b"snap\n")
            child.stdin.flush()
            sys.stderr.write(f"child: {_readline_bounded(child, 60).decode()}\n")
            hold(args.count, b"snap\n")
            child.stdin.write(b"report\n")
            child.stdin.flush()
            _readline_bounded(child, 300)
        finally:
            try:
                child.stdin.write(b"quit\n")
                child.stdin.close()
            except OSError:
                pass
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, 9)
                child.wait()
    finally:
        bench.processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    with open(report) as f:
        text = f.read()
    sys.stdout.write(f"through the {args.through}, {args.count} connections held\n{text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("cpu")
    p = sub.add_parser("memory")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--through", choices=["tunnel", "gateway"], default="tunnel")
    p = sub.add_parser("_memory_child")
    for name in ("config", "state", "users", "password-file", "report"):
        p.add_argument(f"--{name}", required=True)
    for name in ("gateway-port", "tunnel-port", "backend-port"):
        p.add_argument(f"--{name}", type=int, required=True)
    args = parser.parse_args(argv)
    return {"cpu": cpu, "memory": memory, "_memory_child": memory_child}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())

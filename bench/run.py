"""
The netguard benchmark: every path side by side in one run, on loopback only.

    .venv/bin/python bench/run.py [--quick] [--out bench/results] [--paths a,b,...]

It starts every server it needs as a tracked subprocess (backends on the load CPU, relays on
the relay CPU), measures bulk throughput (with an integrity check), request rate and latency,
connection rate and memory per idle connection through each path, stops everything it
started (also on Ctrl-C or an error), and writes C{<out>/<timestamp>.json}, a Markdown report
and a PNG plot (see C{bench/README.md}). Nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
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

import loadgen  # noqa: E402
import paths as pathmod  # noqa: E402
import report  # noqa: E402
from procs import (  # noqa: E402
    Finished,
    Processes,
    Server,
    StartFailed,
    free_port,
    group_cpu_seconds,
    group_memory,
    run_generator,
)

REPO = os.path.dirname(HERE)


@attrs.frozen
class Mode:
    """
    The sizes, counts and time bounds of one kind of run.
    """

    name: str
    bulk_bytes: int
    echo_bytes: int
    reps_bulk: int
    reps_rb: int
    reps_py: int
    reps_conn: int
    rb_n_c50: int
    rb_n_c1: int
    py_seconds: float
    conn_seconds: float
    hold: int
    budget: float  # seconds for the whole run; measurements past it are skipped


QUICK = Mode("quick", 256 << 20, 16 << 20, 1, 1, 1, 1, 10_000, 2_000, 1.5, 1.5, 1000, 170.0)
FULL = Mode("full", 1024 << 20, 64 << 20, 3, 3, 2, 2, 40_000, 8_000, 3.0, 3.0, 1000, 840.0)

#: Concurrency of the request-rate and connection-rate measurements.
CONCURRENCY = 50


class Bench:
    """
    One benchmark run: its servers, its results, its time budget.
    """

    def __init__(self, mode: Mode, work: str, only: set[str] | None):
        self.mode = mode
        self.work = work
        self.only = only
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs)
        self.processes = Processes(self.logs)
        cpus = sorted(os.sched_getaffinity(0))
        self.gen_cpu: int | None = cpus[0]
        self.relay_cpu: int | None = cpus[1] if len(cpus) > 1 else cpus[0]
        self.python = sys.executable
        self.venv_bin = os.path.dirname(sys.executable)
        self.loadgen = os.path.join(HERE, "loadgen.py")
        self.started = time.monotonic()
        self.measurements: dict[str, dict[str, Any]] = {}
        self.targets: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.skipped: dict[str, str] = {}
        self.phases: list[dict[str, Any]] = []
        self.backend_servers: dict[str, Server] = {}
        self.path_of: dict[str, str] = {}
        self.dead_paths: set[str] = set()
        self.setup: pathmod.Setup | None = None

    # -- bookkeeping ---------------------------------------------------------------------------

    def log(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        sys.stderr.write(f"[{elapsed:6.1f}s] {text}\n")
        sys.stderr.flush()

    def over_budget(self) -> bool:
        return time.monotonic() - self.started > self.mode.budget

    def define(self, key: str, title: str, unit: str, better: str, **extra: Any) -> None:
        if key not in self.measurements:
            self.measurements[key] = {
                "title": title,
                "unit": unit,
                "better": better,
                "results": {},
                **extra,
            }

    def record(self, key: str, target: pathmod.Target, sample: dict[str, Any]) -> None:
        entry = self.measurements[key]["results"].setdefault(target.name, {"samples": []})
        entry["samples"].append(sample)

    def note_target(self, target: pathmod.Target) -> None:
        self.targets.setdefault(
            target.name,
            {
                "label": target.label,
                "kind": target.kind,
                "relays": [relay.name for relay in target.relays],
            },
        )

    # -- running things ------------------------------------------------------------------------

    def start_backends(self) -> None:
        redis_port = free_port()
        redis = self.processes.start(
            "redis-server",
            [
                "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--protected-mode", "no",
                "--maxclients", "10000", "--daemonize", "no", "--logfile", "",
            ],
            self.gen_cpu,
            cwd=self.work,
        )  # fmt: skip
        self.processes.wait_listening(redis, redis_port)
        bulk_port = free_port()
        bulk = self.processes.start(
            "bulk-backend",
            [self.python, os.path.join(HERE, "backend.py"), "--port", str(bulk_port)],
            self.gen_cpu,
        )
        self.processes.wait_listening(bulk, bulk_port)
        self.backend_servers = {"redis": redis, "bulk": bulk}
        self.backend_ports = {"redis": redis_port, "bulk": bulk_port}

    def start_paths(
        self, backend: str, tag: str, defs: tuple[pathmod.PathDef, ...] = pathmod.PATHS
    ) -> list[pathmod.Target]:
        assert self.setup is not None
        targets: list[pathmod.Target] = []
        for path in defs:
            if self.only is not None and path.name not in self.only and path is not pathmod.GD0:
                continue
            missing = path.missing()
            if missing:
                self.skipped[path.name] = f"not installed: {', '.join(missing)}"
                continue
            if path.name in self.dead_paths:
                continue  # every target failed its probe earlier in this run
            try:
                started = path.start(self.setup, self.backend_ports[backend], tag)
            except (StartFailed, OSError, subprocess.SubprocessError) as e:
                self.skipped[path.name] = f"did not start: {str(e)[:300]}"
                self.log(f"path {path.name} did not start: {e}")
                continue
            for target in started:
                self.note_target(target)
                self.path_of[target.name] = path.name
            targets.extend(started)
        return targets

    def probe(self, targets: list[pathmod.Target], backend: str) -> list[pathmod.Target]:
        """
        One request through each target before anything is measured; a target that fails it
        is left out (with the reason in the report) instead of producing error rows.
        """
        good = []
        for target in targets:
            try:
                ngp = loadgen.parse_ngp(target.ngp)
                scram = loadgen.ScramClient(ngp.user, ngp.password) if ngp else None
                sock, extra = loadgen.connect("127.0.0.1", target.port, ngp, scram, timeout=5.0)
                with sock:
                    request, reply = (
                        (b"P", b"p") if backend == "bulk" else (loadgen.PING, loadgen.PONG)
                    )
                    sock.sendall(request)
                    got, _ = loadgen._recv_exact(sock, len(reply), extra)
                    if got != reply:
                        raise ValueError(f"answered {got!r}")
                good.append(target)
            except Exception as e:  # noqa: BLE001 - any failure means: leave it out
                relay_logs = " ".join(os.path.basename(r.log_path) for r in target.relays)
                why = (
                    f"probe through it failed ({type(e).__name__}: {str(e)[:120]}); "
                    f"see {relay_logs}"
                )
                self.skipped[target.name] = why
                self.log(f"{target.name}: {why}")
        for path in {self.path_of.get(t.name) for t in targets}:
            siblings = [t for t in targets if self.path_of.get(t.name) == path]
            if path is not None and not any(t in good for t in siblings):
                self.dead_paths.add(path)
        return good

    def stop_targets(self, targets: list[pathmod.Target]) -> None:
        seen: set[int] = set()
        for target in targets:
            for relay in target.relays:
                if relay.pid not in seen:
                    seen.add(relay.pid)
                    self.processes.stop(relay)
                    self.check_refusals(relay)

    def check_refusals(self, relay: Server) -> None:
        """
        Note refusals a netguard process logged (admission, overload, timeouts): a benchmark
        must not be measuring refusals.
        """
        if not relay.name.startswith("netguard"):
            return
        counts: dict[str, int] = {}
        try:
            with open(relay.log_path, errors="replace") as f:
                for line in f:
                    if "refused" in line or "failed" in line:
                        if "SHUTTING_DOWN" in line:
                            continue  # our own stop
                        reason = line.split("] ", 1)[-1].split(":")[-1].strip()[:60]
                        counts[reason] = counts.get(reason, 0) + 1
        except OSError:
            return
        if counts:
            text = ", ".join(f"{n}× {r}" for r, n in sorted(counts.items(), key=lambda x: -x[1]))
            self.notes.append(f"{os.path.basename(relay.log_path)}: refusals/failures: {text}")
            self.log(f"{relay.name} logged refusals/failures: {text}")

    def measured(
        self,
        target: pathmod.Target,
        backend: str,
        run: Callable[[], Finished],
    ) -> tuple[Finished, dict[str, Any]]:
        """
        Run one generator and account the CPU of relays, backend and generator.
        """
        backend_server = self.backend_servers[backend]
        relay_pids = sorted({r.pid for r in target.relays})
        before_relay = {pid: group_cpu_seconds(pid) for pid in relay_pids}
        before_backend = group_cpu_seconds(backend_server.pid)
        started = time.monotonic()
        finished = run()
        wall = time.monotonic() - started
        relay_cpu = sum(group_cpu_seconds(pid) - before_relay[pid] for pid in relay_pids)
        backend_cpu = group_cpu_seconds(backend_server.pid) - before_backend
        cpu = {
            "wall_s": wall,
            "relay_cpu_pct": 100 * relay_cpu / wall if relay_pids else None,
            "gen_cpu_pct": 100 * finished.cpu / wall,
            "backend_cpu_pct": 100 * backend_cpu / wall,
        }
        return finished, cpu

    def loadgen_cmd(
        self, target: pathmod.Target, *args: str, backend: str | None = None
    ) -> list[str]:
        command = [self.python, self.loadgen, "--port", str(target.port)]
        if target.ngp:
            command += ["--ngp", target.ngp]
        for pid in sorted({r.pid for r in target.relays}):
            command += ["--watch", f"relay:{pid}"]
        if backend is not None:
            command += ["--watch", f"backend:{self.backend_servers[backend].pid}"]
        return command + list(args)

    def run_loadgen(
        self, target: pathmod.Target, backend: str, args: list[str], timeout: float
    ) -> tuple[dict[str, Any] | None, dict[str, Any], str]:
        finished, cpu = self.measured(
            target,
            backend,
            lambda: run_generator(
                self.loadgen_cmd(target, *args, backend=backend),
                self.gen_cpu,
                timeout,
                os.path.join(self.logs, "loadgen.err"),
            ),
        )
        if finished.returncode != 0 or finished.timed_out:
            why = "timed out" if finished.timed_out else f"exit {finished.returncode}"
            return None, cpu, why
        try:
            result = json.loads(finished.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None, cpu, "no result"
        if "window_s" in result:
            # The generator measured the CPU shares over its timed window only (without its
            # start-up, connections and handshakes): prefer those.
            cpu = {
                "wall_s": cpu["wall_s"],
                "window_s": result["window_s"],
                "relay_cpu_pct": result.get("relay_cpu_pct"),
                "gen_cpu_pct": result.get("gen_cpu_pct"),
                "backend_cpu_pct": result.get("backend_cpu_pct"),
            }
        return result, cpu, ""

    def run_redis_benchmark(
        self, target: pathmod.Target, args: list[str], timeout: float
    ) -> tuple[dict[str, dict[str, float]] | None, dict[str, Any], str]:
        command = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(target.port), "--csv", *args]
        finished, cpu = self.measured(
            target,
            "redis",
            lambda: run_generator(
                command, self.gen_cpu, timeout, os.path.join(self.logs, "redis-benchmark.err")
            ),
        )
        if finished.returncode != 0 or finished.timed_out:
            why = "timed out" if finished.timed_out else f"exit {finished.returncode}"
            return None, cpu, why
        rows = [line for line in finished.stdout.splitlines() if line.startswith('"')]
        tests: dict[str, dict[str, float]] = {}
        for row in csv.reader(rows):
            if row[0] == "test":
                header = row
                continue
            tests[row[0]] = {
                name: float(value) for name, value in zip(header[1:], row[1:], strict=False)
            }
        if not tests:
            return None, cpu, "no result"
        return tests, cpu, ""

    # -- phases --------------------------------------------------------------------------------

    def phase(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": name,
            "loadavg_start": os.getloadavg(),
            "t_start": self.elapsed(),
        }
        self.phases.append(info)
        self.log(f"phase {name} (load average {info['loadavg_start'][0]:.2f})")
        return info

    def end_phase(self, info: dict[str, Any]) -> None:
        info["loadavg_end"] = os.getloadavg()
        info["t_end"] = self.elapsed()

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 1)

    def rotated(self, targets: list[pathmod.Target], rep: int) -> list[pathmod.Target]:
        if not targets:
            return targets
        k = rep % len(targets)
        return targets[k:] + targets[:k]

    def bulk_phase(self) -> None:
        info = self.phase("bulk")
        mode = self.mode
        started = self.start_paths("bulk", "bulk")
        targets = self.probe(started, "bulk")
        self.define("bulk_up", f"Bulk upload, {mode.bulk_bytes >> 20} MiB", "MB/s", "higher")
        self.define("bulk_down", f"Bulk download, {mode.bulk_bytes >> 20} MiB", "MB/s", "higher")
        self.define("integrity", f"Echo integrity, {mode.echo_bytes >> 20} MiB", "ok", "ok")
        try:
            for rep in range(mode.reps_bulk):
                for target in self.rotated(targets, rep):
                    for direction in ("up", "down"):
                        if self.over_budget():
                            self.skip_note(f"bulk_{direction}", target)
                            continue
                        result, cpu, why = self.run_loadgen(
                            target,
                            "bulk",
                            ["bulk", "--direction", direction, "--bytes", str(mode.bulk_bytes)],
                            timeout=120,
                        )
                        sample = {**cpu, "error": why}
                        if result is not None:
                            sample["value"] = result["mb_per_s"]
                        self.record(f"bulk_{direction}", target, sample)
                        self.log(f"bulk {direction} {target.name}: {_fmt(sample)}")
            for target in targets:
                result, cpu, why = self.run_loadgen(
                    target, "bulk", ["echo", "--bytes", str(mode.echo_bytes)], timeout=120
                )
                sample = {**cpu, "error": why}
                if result is not None:
                    sample.update(
                        value=bool(result["ok"]),
                        up_ok=result["up_ok"],
                        down_ok=result["down_ok"],
                        mb_per_s=result["bytes"] / result["seconds"] / 1e6,
                    )
                else:
                    sample["value"] = False
                self.record("integrity", target, sample)
                self.log(f"integrity {target.name}: {sample.get('value')} {why}")
        finally:
            self.stop_targets(started)
            self.end_phase(info)

    def skip_note(self, key: str, target: pathmod.Target) -> None:
        self.record(key, target, {"error": "skipped: over the time budget"})

    def requests_phase(self) -> None:
        info = self.phase("requests")
        mode = self.mode
        started = self.start_paths("redis", "redis")
        extra_started = []
        if self.only is None or "netguard" in self.only:
            extra_started = self.start_paths("redis", "redis-gd0", (pathmod.GD0,))
        targets = self.probe(started, "redis")
        extra = self.probe(extra_started, "redis")
        c = str(CONCURRENCY)
        self.define(
            "rb_c50", f"redis-benchmark -c {c} (rps)", "req/s", "higher", tests=[], tool="rb"
        )
        self.define("rb_c1", "redis-benchmark -c 1 (p50)", "ms", "lower", tests=[], tool="rb")
        self.define("py_c50", f"Python PING ping-pong, {c} connections", "req/s", "higher")
        self.define("py_c1", "Python PING ping-pong, 1 connection (p50)", "ms", "lower")
        self.define("py_conn", f"New connections/s (Python, {c} at a time)", "conn/s", "higher")
        self.define(
            "rb_conn", f"New connections/s (redis-benchmark -k 0 -c {c})", "conn/s", "higher"
        )
        try:
            plain = [t for t in targets if t.plain]
            for rep in range(mode.reps_rb):
                for target in self.rotated(plain, rep):
                    for key, args in (
                        ("rb_c50", ["-t", "ping,set,get", "-n", str(mode.rb_n_c50), "-c", c]),
                        ("rb_c1", ["-t", "ping,set,get", "-n", str(mode.rb_n_c1), "-c", "1"]),
                    ):
                        if self.over_budget():
                            self.skip_note(key, target)
                            continue
                        tests, cpu, why = self.run_redis_benchmark(target, args, timeout=120)
                        sample: dict[str, Any] = {**cpu, "error": why}
                        if tests is not None:
                            sample["tests"] = tests
                            if key == "rb_c50":
                                sample["value"] = tests.get("GET", {}).get("rps")
                            else:
                                sample["value"] = tests.get("GET", {}).get("p50_latency_ms")
                        self.record(key, target, sample)
                        self.log(f"{key} {target.name}: {_fmt(sample)}")
            for rep in range(mode.reps_py):
                for target in self.rotated(targets, rep):
                    for key, conns in (("py_c1", "1"), ("py_c50", c)):
                        if self.over_budget():
                            self.skip_note(key, target)
                            continue
                        result, cpu, why = self.run_loadgen(
                            target,
                            "redis",
                            ["ping", "--conns", conns, "--seconds", str(mode.py_seconds)],
                            timeout=mode.py_seconds + 60,
                        )
                        sample = {**cpu, "error": why}
                        if result is not None:
                            sample.update(result)
                            sample["value"] = result["p50_ms"] if key == "py_c1" else result["rps"]
                        self.record(key, target, sample)
                        self.log(f"{key} {target.name}: {_fmt(sample)}")
            conn_targets = targets + extra
            rates: dict[str, float] = {}
            for rep in range(mode.reps_conn):
                for target in self.rotated(conn_targets, rep):
                    if self.over_budget():
                        self.skip_note("py_conn", target)
                        continue
                    result, cpu, why = self.run_loadgen(
                        target,
                        "redis",
                        ["connrate", "--conns", c, "--seconds", str(mode.conn_seconds)],
                        timeout=mode.conn_seconds + 60,
                    )
                    sample = {**cpu, "error": why}
                    if result is not None:
                        sample.update(result)
                        sample["value"] = result["rate"]
                        rates[target.name] = result["rate"]
                    self.record("py_conn", target, sample)
                    self.log(f"py_conn {target.name}: {_fmt(sample)}")
            for target in conn_targets:
                if not target.plain:
                    continue
                if self.over_budget():
                    self.skip_note("rb_conn", target)
                    continue
                # As many connections as the Python generator managed in the same time.
                count = int(min(20_000, max(300, rates.get(target.name, 300) * mode.conn_seconds)))
                tests, cpu, why = self.run_redis_benchmark(
                    target, ["-n", str(count), "-c", c, "-k", "0", "PING"], timeout=90
                )
                sample = {**cpu, "error": why, "connections": count}
                if tests is not None:
                    ping = next(iter(tests.values()))
                    sample.update(value=ping["rps"], p50_ms=ping["p50_latency_ms"])
                self.record("rb_conn", target, sample)
                self.log(f"rb_conn {target.name}: {_fmt(sample)}")
        finally:
            self.stop_targets(started + extra_started)
            self.end_phase(info)

    def memory_phase(self) -> None:
        info = self.phase("memory")
        count = self.mode.hold
        self.define(
            "mem_rss", f"Memory per idle connection ({count} held), RSS", "KiB/conn", "lower"
        )
        self.define(
            "mem_pss", f"Memory per idle connection ({count} held), PSS", "KiB/conn", "lower"
        )
        try:
            for path in pathmod.PATHS:
                if self.only is not None and path.name not in self.only:
                    continue
                if path.name == "direct" or path.missing():
                    continue
                names = {
                    "netguard": ["netguard", "gateway"],
                    "netguard-tls": ["netguard-tls", "gateway-tls"],
                }.get(path.name, [path.name])
                for index, name in enumerate(names):
                    if self.over_budget():
                        self.record("mem_rss", _stub(name), {"error": "skipped: over budget"})
                        continue
                    targets = self.start_paths("redis", f"mem-{name}", (path,))
                    try:
                        if len(targets) <= index or not self.probe([targets[index]], "redis"):
                            continue
                        self.hold(targets[index], count)
                    finally:
                        self.stop_targets(targets)
        finally:
            self.end_phase(info)

    def hold(self, target: pathmod.Target, count: int) -> None:
        relay_pids = sorted({r.pid for r in target.relays})
        time.sleep(0.3)
        before = [group_memory(pid) for pid in relay_pids]
        command = self.loadgen_cmd(target, "hold", "--count", str(count), "--timeout", "120")
        if self.gen_cpu is not None:
            command = ["taskset", "-c", str(self.gen_cpu), *command]
        err = open(os.path.join(self.logs, "loadgen.err"), "ab")  # noqa: SIM115
        popen = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
        sample: dict[str, Any] = {"error": ""}
        try:
            assert popen.stdout is not None and popen.stdin is not None
            line = _readline_bounded(popen, 150.0)
            ready = json.loads(line) if line else None
            if ready is None:
                sample["error"] = "no ready line"
            else:
                time.sleep(0.5)
                after = [group_memory(pid) for pid in relay_pids]
                held = ready["ready"]
                rss = sum(m.rss for m in after) - sum(m.rss for m in before)
                pss = sum(m.pss for m in after) - sum(m.pss for m in before)
                sample.update(
                    held=held,
                    open_errors=ready["errors"],
                    open_seconds=ready["seconds"],
                    rss_before_kib=sum(m.rss for m in before),
                    rss_after_kib=sum(m.rss for m in after),
                    pss_before_kib=sum(m.pss for m in before),
                    pss_after_kib=sum(m.pss for m in after),
                    processes_after=sum(m.processes for m in after),
                    per_relay={
                        relay.name: {
                            "rss_before": before[relay_pids.index(relay.pid)].rss,
                            "rss_after": after[relay_pids.index(relay.pid)].rss,
                        }
                        for relay in target.relays
                    },
                )
                if held:
                    sample["rss_value"] = rss / held
                    sample["pss_value"] = pss / held
            popen.stdin.write(b"done\n")
            popen.stdin.flush()
            popen.stdin.close()
            popen.wait(timeout=60)
        except (subprocess.TimeoutExpired, OSError, ValueError) as e:
            sample["error"] = f"{type(e).__name__}: {e}"
        finally:
            if popen.poll() is None:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
            err.close()
        self.record("mem_rss", target, {**sample, "value": sample.get("rss_value")})
        self.record("mem_pss", target, {**sample, "value": sample.get("pss_value")})
        self.log(
            f"memory {target.name}: held {sample.get('held')} "
            f"rss/conn {sample.get('rss_value')} pss/conn {sample.get('pss_value')} "
            f"{sample['error']}"
        )

    # -- the whole run -------------------------------------------------------------------------

    def run(self) -> None:
        self.setup = pathmod.prepare(self.work, self.processes, self.relay_cpu, self.venv_bin)
        self.start_backends()
        self.bulk_phase()
        self.requests_phase()
        self.memory_phase()

    def summarise(self) -> None:
        """
        Reduce every measurement's samples to one value (the median of the good samples).
        """
        for measurement in self.measurements.values():
            for entry in measurement["results"].values():
                samples = entry["samples"]
                good = [s for s in samples if s.get("value") is not None and not s.get("error")]
                entry["errors"] = [s["error"] for s in samples if s.get("error")]
                if measurement["better"] == "ok":
                    entry["value"] = all(s.get("value") is True for s in samples) and bool(samples)
                    continue
                if not good:
                    entry["value"] = None
                    continue
                values = [float(s["value"]) for s in good]
                entry["value"] = statistics.median(values)
                entry["spread"] = [min(values), max(values)]
                for field in (
                    "relay_cpu_pct",
                    "gen_cpu_pct",
                    "backend_cpu_pct",
                    "p50_ms",
                    "p99_ms",
                    "rps",
                    "held",
                    "rss_before_kib",
                    "rss_after_kib",
                ):
                    found = [s[field] for s in good if s.get(field) is not None]
                    if found:
                        entry[field] = statistics.median(found)
                tests = [s["tests"] for s in good if "tests" in s]
                if tests:
                    entry["tests"] = {
                        name: {
                            k: statistics.median(t[name][k] for t in tests if name in t)
                            for k in tests[0][name]
                        }
                        for name in tests[0]
                    }


def _stub(name: str) -> pathmod.Target:
    return pathmod.Target(name, name, 0)


def _readline_bounded(popen: subprocess.Popen[bytes], timeout: float) -> bytes:
    import selectors

    assert popen.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(popen.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data and time.monotonic() < deadline:
        if selector.select(timeout=1.0):
            chunk = os.read(popen.stdout.fileno(), 4096)
            if not chunk:
                break
            data += chunk
    selector.close()
    return data.split(b"\n", 1)[0]


def _fmt(sample: dict[str, Any]) -> str:
    value = sample.get("value")
    shown = f"{value:.3f}" if isinstance(value, float) else str(value)
    relay = sample.get("relay_cpu_pct")
    relay_text = f"{relay:.0f}%" if relay is not None else "-"
    return (
        f"{shown} (relay CPU {relay_text}, gen {sample.get('gen_cpu_pct', 0):.0f}%, "
        f"backend {sample.get('backend_cpu_pct', 0):.0f}%) {sample.get('error', '')}"
    )


def _version(argv: list[str], word: str) -> str:
    """
    The first line of C{argv}'s output that contains C{word}.
    """
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    for line in (out.stdout + out.stderr).splitlines():
        if word in line:
            return line.strip()[:80]
    return "?"


def machine_info(cpus: int) -> dict[str, Any]:
    """
    What the report says about the machine and the programs.
    """
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import twisted

    return {
        "cpu_model": model,
        "cpus": cpus,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "versions": {
            "haproxy": _version(["haproxy", "-v"], "version"),
            "socat": _version(["socat", "-V"], "socat version"),
            "stunnel": _version(
                [shutil.which("stunnel4") or "stunnel", "-version"], "on x86"
            ).split(" on ")[0],
            "spiped": _version(["spiped", "-v"], "spiped"),
            "redis": _version(["redis-server", "--version"], "v=").split(" sha=")[0],
        },
    }


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, about 3 minutes")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="results directory")
    parser.add_argument(
        "--paths", help="comma-separated subset of: " + ",".join(p.name for p in pathmod.PATHS)
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    only = set(args.paths.split(",")) | {"direct"} if args.paths else None
    os.makedirs(args.out, exist_ok=True)
    _raise_nofile()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    work = tempfile.mkdtemp(prefix="netguard-bench-")
    bench = Bench(mode, work, only)
    cpus = len(os.sched_getaffinity(0))
    # The harness itself shares the load CPU, so nothing of ours runs on the relay CPU except
    # the relays.
    if bench.gen_cpu is not None:
        os.sched_setaffinity(0, {bench.gen_cpu})
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    interrupted = None
    try:
        bench.log(
            f"mode {mode.name}; work dir {work}; load CPU {bench.gen_cpu}, "
            f"relay CPU {bench.relay_cpu}"
        )
        bench.run()
    except KeyboardInterrupt as e:
        interrupted = f"interrupted ({e})"
        bench.log(interrupted)
    finally:
        bench.processes.stop_all()
    bench.summarise()
    document = {
        "timestamp": stamp,
        "mode": attrs.asdict(mode),
        "machine": machine_info(cpus),
        "layout": {
            "load_cpu": bench.gen_cpu,
            "relay_cpu": bench.relay_cpu,
            "concurrency": CONCURRENCY,
            "description": (
                f"backends (redis-server, bench/backend.py), load generators (loadgen.py, "
                f"redis-benchmark) and the harness on CPU {bench.gen_cpu}; every relay process "
                f"(both ends of the pairs, gateway and tunnel) on CPU {bench.relay_cpu}; "
                "pinned with taskset -c"
            ),
        },
        "targets": bench.targets,
        "measurements": bench.measurements,
        "skipped": bench.skipped,
        "phases": bench.phases,
        "notes": bench.notes,
        "interrupted": interrupted,
        "duration_s": bench.elapsed(),
    }
    json_path = os.path.join(args.out, f"{stamp}.json")
    with open(json_path, "w") as f:
        json.dump(document, f, indent=1, default=str)
    md_path, png_path = report.write_all(document, json_path, REPO, args.out)
    bench.log(f"wrote {json_path}, {md_path}, {png_path or '(no plot)'}")
    if args.keep_work:
        bench.log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())

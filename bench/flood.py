"""
Flood benchmark at the default configuration: are legitimate clients served while floods
from many loopback addresses hit the gateway? A benchmark, not a test: it measures and
reports, it never asserts. Loopback only; every process it starts is stopped by its own
process group id.

    .venv/bin/python bench/flood.py                                   # ~6 min: the table
    .venv/bin/python bench/flood.py --tree /tmp/ng/wt-flood-before    # another checkout
    .venv/bin/python bench/flood.py --tree A --tree B --runs 3        # interleaved A, B, A...
    .venv/bin/python bench/flood.py --attacks all --duration 120      # longer, one attack

For each attack (C{none}, C{slowloris}, C{connect}, C{login}, C{all}: the three at once) and
each checkout (C{--tree}), a fresh gateway: the real C{twistd -n netguard} from that checkout
(C{PYTHONPATH}), logging every event to standard output (a file) through C{--logger
netguard.log.text_stdout_observer}, pinned alone to CPU 1, at the shipped defaults: no
configuration file, only C{--state-dir} (a fresh directory), C{--users} (one user made with
C{netguard adduser}) and C{--listen tcp:PORT:interface=127.0.0.1}; the service is the
default C{echo} (C{builtin:echo}). Then:

  1. the legitimate clients (C{flood_legit.py}: netguard's own C{netguard:} endpoint from
     the checkout, pinned to CPU 0) log in once: the returning client (127.0.0.2) does one
     session, the multiplexed client (127.0.0.4) establishes its session;
  2. the attackers (C{flood_attack.py}: asyncio, pinned to CPU 0 at C{nice 10} so that the
     clients' own CPU is not what is measured) start;
  3. after C{--warmup} seconds the clients run for C{--duration} seconds: a returning
     client, a first-time client (127.0.0.3, a fresh endpoint every attempt) and new
     streams on the established multiplexed session, each AUTH (not for streams) + C{OPEN
     echo} + a 64 KiB echo, retried after 0.25 s until 10 s have passed;
  4. the attack stops; the gateway is watched C{--recovery} seconds more; C{netguard ctl
     status} is read; everything is stopped.

The gateway's CPU (utime + stime from C{/proc/<pid>/stat}), RSS (C{VmRSS}), open file
descriptors and log lines are sampled every second from its start to the end of the
recovery; the report prints them every 5 s. The figures per attack and client: sessions
served on the first attempt, served within 10 s, p50 and p99 of the time from the first
attempt to the checked echo; for the multiplexed session, the stream attempts that failed
(streams lost) and the logins it needed again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import paths as pathmod  # noqa: E402
from procs import CLK_TCK, Processes, Server, free_port  # noqa: E402
from profile_session import _load  # noqa: E402

#: The attack phases, in run order, and what C{flood_attack.py} runs for each.
PHASES = {
    "none": "",
    "slowloris": "slowloris",
    "connect": "connect",
    "login": "login",
    "all": "slowloris,connect,login",
}

#: What the report calls each phase (the issue's table).
PHASE_LABELS = {
    "none": "none",
    "slowloris": "slowloris: 50 sources, 1,000 conns dripping 1 byte / 5 s",
    "connect": "connect flood: 254 sources, 1,500 concurrent, held 2 s",
    "login": "failed-login flood: 50 sources, 200 concurrent",
    "all": "all three at once",
}

#: The legitimate clients, in report order.
CLIENTS = ("returning", "first-time", "mux")


# -- sampling the gateway --------------------------------------------------------------------


class Sampler:
    """
    The gateway's CPU, RSS, open descriptors and log size, sampled from C{/proc}.

    @ivar samples: C{(time.monotonic(), cpu seconds, rss KiB, fds, log lines, log bytes)}.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.samples: list[tuple[float, float, int, int, int, int]] = []
        self._log_lines = 0
        self._log_bytes = 0

    def _log(self) -> tuple[int, int]:
        """
        @return: (lines, bytes) of the gateway's log so far, reading only what is new.
        """
        try:
            with open(self.server.log_path, "rb") as f:
                f.seek(self._log_bytes)
                while chunk := f.read(1 << 20):
                    self._log_lines += chunk.count(b"\n")
                    self._log_bytes += len(chunk)
        except OSError:
            pass
        return self._log_lines, self._log_bytes

    def sample(self) -> None:
        pid = self.server.pid
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read().decode("ascii", "replace")
            fields = raw[raw.rindex(")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
            rss = 0
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, ValueError):
            return
        lines, size = self._log()
        self.samples.append((time.monotonic(), cpu, rss, fds, lines, size))

    def sleep(self, seconds: float, until: Any = None) -> bool:
        """
        Sample once a second for C{seconds}, or until C{until()} is true.

        @return: whether C{until()} became true.
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if until is not None and until():
                return True
            self.sample()
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        return until is not None and bool(until())


# -- one measurement ---------------------------------------------------------------------------


def _ctl_status(tree: str, env: dict[str, str], state: str) -> dict[str, Any] | None:
    try:
        reply = subprocess.run(
            [sys.executable, "-m", "netguard.cli", "ctl", "--socket",
             os.path.join(state, "control.sock"), "status"],
            capture_output=True, timeout=20, cwd=tree, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    if reply.returncode != 0:
        return None
    try:
        status: dict[str, Any] = json.loads(reply.stdout)
    except ValueError:
        return None
    return status


def measure(
    args: argparse.Namespace, setup: pathmod.Setup, tree: str, phase: str, work: str
) -> dict[str, Any]:
    """
    One gateway from C{tree}, one attack phase; stop everything started before returning.
    """
    processes = Processes(work)
    tree = os.path.abspath(tree)
    env = dict(os.environ, PYTHONPATH=tree)
    state = tempfile.mkdtemp(prefix=f"state-{phase}-", dir=work)
    talk = tempfile.mkdtemp(prefix=f"legit-{phase}-", dir=work)
    port = free_port()
    result: dict[str, Any] = {"tree": tree, "phase": phase, "load": _load()}
    try:
        gateway = processes.start(
            f"gateway-{phase}",
            [
                sys.executable, os.path.join(HERE, "profile_session.py"), "_gateway", "--",
                "-n", "--pidfile=", "--logger", "netguard.log.text_stdout_observer",
                "netguard", "--state-dir", state, "--users", setup.users_file,
                "--listen", f"tcp:{port}:interface=127.0.0.1",
            ],
            args.gateway_cpu, cwd=tree, env=env,
        )  # fmt: skip
        processes.wait_listening(gateway, port, timeout=30)
        sampler = Sampler(gateway)
        sampler.sample()
        legit = processes.start(
            f"legit-{phase}",
            [
                sys.executable, os.path.join(HERE, "flood_legit.py"), "--port", str(port),
                "--user", setup.user, "--password-file", setup.password_file,
                "--work", talk, "--duration", str(args.duration),
            ],
            args.client_cpu, cwd=tree, env=env,
        )  # fmt: skip
        ready = os.path.join(talk, "ready")
        if not sampler.sleep(60, lambda: os.path.exists(ready) or not legit.alive()):
            raise RuntimeError(f"the clients were not ready in 60 s:\n{legit.log_tail()}")
        attacker = None
        attack_out = os.path.join(talk, "attack.json")
        if PHASES[phase]:
            attacker = processes.start(
                f"attack-{phase}",
                [
                    "nice", "-n", "10", sys.executable, os.path.join(HERE, "flood_attack.py"),
                    "--port", str(port), "--attacks", PHASES[phase], "--scale", str(args.scale),
                    "--cycle-scale", str(args.cycle_scale),
                    "--duration", str(args.warmup + args.duration + 15),
                    "--user", setup.user, "--out", attack_out,
                ],
                args.client_cpu,
            )  # fmt: skip
        result["attack_at"] = time.monotonic()
        result["before"] = sampler.samples[-1]
        sampler.sleep(args.warmup)
        with open(os.path.join(talk, "go"), "w"):
            pass
        result["go_at"] = time.monotonic()
        sampler.sleep(args.duration + 30, lambda: not legit.alive())
        if attacker is not None:
            if attacker.alive():
                os.kill(attacker.pid, signal.SIGTERM)
            sampler.sleep(20, lambda: not attacker.alive())
            processes.stop(attacker)
        result["stop_at"] = time.monotonic()
        result["status"] = _ctl_status(tree, env, state)
        sampler.sleep(args.recovery)
        result["samples"] = sampler.samples
        result["after"] = sampler.samples[-1]
        try:
            with open(os.path.join(talk, "legit.json")) as f:
                result["legit"] = json.load(f)
        except (OSError, ValueError) as error:
            result["legit"] = {"error": f"no figures from the clients: {error}"}
        if attacker is not None and os.path.exists(attack_out):
            with open(attack_out) as f:
                result["attack"] = json.load(f)
        with open(gateway.log_path, errors="replace") as f:
            result["netguard"] = f.readline().rsplit(" ", 1)[-1].strip()
        return result
    finally:
        processes.stop_all()
        shutil.rmtree(state, ignore_errors=True)


# -- figures -----------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float | None:
    """
    @return: the nearest-rank percentile of C{values}, or L{None} when there are none.
    """
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, int(-(-fraction * len(ordered) // 1)) - 1))
    return ordered[index]


def summarise_client(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """
    @return: sessions, first-attempt and within-10-s shares (%), p50/p99 of the time to be
        served, failed attempts and their reasons.
    """
    served = [s["served_after"] for s in sessions if s["ok"]]
    reasons: Counter[str] = Counter()
    for s in sessions:
        reasons.update(s["reasons"])
    count = len(sessions)
    return {
        "sessions": count,
        "first_pct": 100 * sum(1 for s in sessions if s["ok"] and s["attempts"] == 1) / count
        if count
        else None,
        "within_pct": 100 * len(served) / count if count else None,
        "p50": percentile(served, 0.5),
        "p99": percentile(served, 0.99),
        "failed_attempts": sum(s["attempts"] - (1 if s["ok"] else 0) for s in sessions),
        "reasons": dict(reasons.most_common()),
    }


def summarise_gateway(r: dict[str, Any]) -> dict[str, Any]:
    """
    @return: the gateway's CPU (mean and largest 1 s share over the attack), RSS and open
        descriptors before / at the peak / after the recovery, and its log during the attack.
    """
    samples = r["samples"]
    during = [s for s in samples if r["attack_at"] <= s[0] <= r["stop_at"]]
    if len(during) < 2:
        during = samples
    first, last = during[0], during[-1]
    steps = [
        100 * (b[1] - a[1]) / (b[0] - a[0])
        for a, b in zip(during, during[1:], strict=False)
        if b[0] > a[0]
    ]
    return {
        "cpu_mean_pct": 100 * (last[1] - first[1]) / max(0.1, last[0] - first[0]),
        "cpu_max_pct": max(steps, default=0.0),
        "rss_mib": (r["before"][2] / 1024, max(s[2] for s in during) / 1024, r["after"][2] / 1024),
        "fds": (r["before"][3], max(s[3] for s in during), r["after"][3]),
        "log_lines": last[4] - first[4],
        "log_kib": (last[5] - first[5]) / 1024,
        "seconds": last[0] - first[0],
    }


def timeline(r: dict[str, Any], step: float = 5.0) -> list[str]:
    """
    @return: one entry per C{step} seconds of the gateway's life from the attack's start
        (t = 0: the clients start measuring): CPU % over the step, RSS (MiB) and open
        descriptors at its end, log lines written during it.
    """
    samples = [s for s in r["samples"] if s[0] >= r["attack_at"] - 1.0]
    entries = []
    mark = samples[0] if samples else None
    for sample in samples[1:]:
        assert mark is not None
        if sample[0] - mark[0] >= step - 0.05 or sample is samples[-1]:
            cpu = 100 * (sample[1] - mark[1]) / max(0.1, sample[0] - mark[0])
            entries.append(
                f"{sample[0] - r['go_at']:+.0f}s {cpu:.0f}% {sample[2] / 1024:.0f}M "
                f"{sample[3]}fd {sample[4] - mark[4]}l"
            )
            mark = sample
    return entries


def _s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} %"


def report(result: dict[str, Any], run: int) -> str:
    """
    @return: the Markdown figures of one run of one checkout, every phase.
    """
    phases = result["phases"]
    some = next(iter(phases.values()))
    lines = [
        f"### {result['tree']} (netguard from {some.get('netguard', '?')}), run {run}",
        "",
        "| attack | client | sessions | served 1st attempt | served within 10 s | p50 | p99 "
        "| failed attempts: reasons |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase, r in phases.items():
        legit = r["legit"]
        for kind in CLIENTS:
            c = summarise_client(legit.get("clients", {}).get(kind, []))
            reasons = ", ".join(f"{k} {v}" for k, v in list(c["reasons"].items())[:3]) or "-"
            if kind == "mux":
                relogins = (legit.get("mux_logins") or 1) - 1
                reasons = f"streams lost {c['failed_attempts']}, re-logins {relogins}; {reasons}"
            lines.append(
                f"| {PHASE_LABELS[phase] if kind == 'returning' else ''} | {kind} "
                f"| {c['sessions']} | {_pct(c['first_pct'])} | {_pct(c['within_pct'])} "
                f"| {_s(c['p50'])} | {_s(c['p99'])} | {reasons} |"
            )
        if "error" in legit:
            lines.append(f"| | clients' error: {legit['error']} | | | | | | |")
    lines += [
        "",
        "| attack | gateway CPU mean / max 1 s | RSS MiB before / peak / after "
        "| fds before / peak / after | log during the attack | attack connections "
        "| gateway CPU per attack connection | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase, r in phases.items():
        g = summarise_gateway(r)
        started = sum(a["started"] for a in r.get("attack", {}).get("attacks", {}).values())
        rate = f"{started} ({started / max(1.0, g['seconds']):.0f}/s)" if started else "-"
        per = (
            f"{1e6 * g['cpu_mean_pct'] / 100 * g['seconds'] / started:.0f} us" if started else "-"
        )
        lines.append(
            f"| {phase} | {g['cpu_mean_pct']:.0f} % / {g['cpu_max_pct']:.0f} % "
            f"| {g['rss_mib'][0]:.0f} / {g['rss_mib'][1]:.0f} / {g['rss_mib'][2]:.0f} "
            f"| {g['fds'][0]} / {g['fds'][1]} / {g['fds'][2]} "
            f"| {g['log_lines']} lines, {g['log_kib']:.0f} KiB | {rate} | {per} | {r['load']} |"
        )
    lines += ["", "Attackers' connections ended (per attack) and the gateway's refusal counters:"]
    for phase, r in phases.items():
        for name, a in r.get("attack", {}).get("attacks", {}).items():
            got = ", ".join(f"{k} {v}" for k, v in list(a["outcomes"].items())[:5])
            extra = f", failed logins {a['failed_logins']}" if a["failed_logins"] else ""
            lines.append(f"- {phase}/{name}: peak open {a['peak_open']}{extra}; {got}")
        status = r.get("status") or {}
        refused = {
            k[len("refused.") :]: v for k, v in status.items() if k.startswith("refused.") and v
        }
        counters = [
            f"{k} {status[k]}" for k in ("tickets_issued", "tickets_accepted") if k in status
        ]
        if refused or counters:
            lines.append(
                f"- {phase}: gateway refused "
                + (", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "none")
                + "".join(f"; {c}" for c in counters)
            )
    lines += [
        "",
        "Gateway timeline (every 5 s from the attack's start; t = 0 when the clients start "
        "measuring): t CPU RSS fds log-lines",
    ]
    for phase, r in phases.items():
        lines.append(f"- {phase}: " + " | ".join(timeline(r)))
    return "\n".join(lines)


def _cell(figures: list[dict[str, Any]], key: str, fmt: Any) -> str:
    values = [f[key] for f in figures if f[key] is not None]
    if not values:
        return "-"
    return f"{fmt(statistics.median(values))} ({', '.join(fmt(v) for v in values)})"


def medians(results: list[dict[str, Any]]) -> str:
    """
    @return: per checkout, attack and client, the medians over the runs (and each run's
        value in brackets) of the first-attempt share, the within-10-s share, p50 and p99;
        for the multiplexed session the streams lost in each run.
    """
    lines = [
        "| checkout | attack | client | served 1st attempt | served within 10 s | p50 | p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    trees = list(dict.fromkeys(r["tree"] for r in results))
    for tree in trees:
        runs = [r for r in results if r["tree"] == tree]
        for phase in runs[0]["phases"]:
            for kind in CLIENTS:
                figures = [
                    summarise_client(r["phases"][phase]["legit"].get("clients", {}).get(kind, []))
                    for r in runs
                    if phase in r["phases"]
                ]

                lost = ""
                if kind == "mux":
                    lost = (
                        " (streams lost: "
                        + ", ".join(str(f["failed_attempts"]) for f in figures)
                        + ")"
                    )
                lines.append(
                    f"| {os.path.basename(tree.rstrip('/')) or tree} | {phase} | {kind}{lost} "
                    f"| {_cell(figures, 'first_pct', _pct)} "
                    f"| {_cell(figures, 'within_pct', _pct)} "
                    f"| {_cell(figures, 'p50', _s)} | {_cell(figures, 'p99', _s)} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tree", action="append", help="a checkout to run (repeat to interleave; default .)"
    )
    parser.add_argument("--attacks", default=",".join(PHASES), help="phases, comma-separated")
    parser.add_argument("--duration", type=float, default=45.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=5.0, help="attack before measuring")
    parser.add_argument("--recovery", type=float, default=10.0, help="watched after the attack")
    parser.add_argument("--runs", type=int, default=1, help="runs of every phase and tree")
    parser.add_argument("--scale", type=float, default=1.0, help="scale the attacks' slots")
    parser.add_argument(
        "--cycle-scale",
        type=float,
        default=1.0,
        help="scale the attackers' least time between two connections of a slot (0: at once)",
    )
    parser.add_argument("--gateway-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--json", help="also write every sample and figure to this file")
    parser.add_argument("--report", metavar="JSON", help="print the report of an earlier --json")
    args = parser.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            earlier = json.load(f)["results"]
        for r in earlier:
            sys.stdout.write(report(r, r["run"]) + "\n\n")
        sys.stdout.write(medians(earlier) + "\n")
        return 0
    trees = args.tree or ["."]
    phases = [p for p in args.attacks.split(",") if p]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    if (os.cpu_count() or 1) < 2:
        args.gateway_cpu = args.client_cpu = None
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})
    work = tempfile.mkdtemp(prefix="netguard-flood-")
    results: list[dict[str, Any]] = []
    try:
        setup = pathmod.prepare(work, Processes(work), None, os.path.dirname(sys.executable))
        for run in range(1, args.runs + 1):
            runs = {tree: {"tree": tree, "run": run, "phases": {}} for tree in trees}
            for phase in phases:
                for tree in trees:
                    sys.stderr.write(
                        f"[{time.strftime('%H:%M:%S')}] run {run} {phase} {tree} "
                        f"(load {_load()})\n"
                    )
                    sys.stderr.flush()
                    runs[tree]["phases"][phase] = measure(args, setup, tree, phase, work)
                    time.sleep(2)  # let the sockets of the phase go
            for tree in trees:
                results.append(runs[tree])
                sys.stdout.write(report(runs[tree], run) + "\n\n")
                sys.stdout.flush()
        if args.runs > 1 or len(trees) > 1:
            sys.stdout.write("Medians over the runs (each run's value in brackets):\n\n")
            sys.stdout.write(medians(results) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "results": results}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

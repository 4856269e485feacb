"""
What one bulk stream costs the gateway per GiB relayed, with and without the kernel relay,
beside HAProxy (mode tcp, with and without splicing) in the same interleaved run; and the same
over TLS beside an stunnel server. Not part of the benchmark figures.

    .venv/bin/python bench/profile_bulk.py                      # plain paths, 3 runs, 1 GiB
    .venv/bin/python bench/profile_bulk.py --tls                # + gateway over TLS, stunnel
    .venv/bin/python bench/profile_bulk.py --profile py-spy     # + py-spy top-N per gateway
    .venv/bin/python bench/profile_bulk.py --bytes 268435456 --runs 5

Every relay process runs alone on CPU 1 (C{taskset}); the load generator (C{loadgen.py bulk},
which speaks NGP/1 itself to reach the gateway without the tunnel), the bulk backend
(C{backend.py}) and, on the stunnel path, the stunnel client run on CPU 0. A run measures
each path in turn (upload, then download), the order rotating from run to run, so the
compared paths share the machine's state; the figure is the relay's own CPU time (utime +
stime from C{/proc/<pid>/stat}) over the transfer window, less what it spends idle over a
window of the same length measured just before, divided by the GiB moved. The median of the
runs is printed with the ratio to each HAProxy mode, and the load average with every run.

The paths:
  - C{gateway-splice}: the gateway as shipped (C{kernel_relay = true}: C{os.splice});
  - C{gateway-copy}: the same service with C{kernel_relay = false} (the ordinary relay);
  - C{haproxy}: Debian's HAProxy, mode tcp, no C{option splice-*} (HAProxy does not splice
    unless told to);
  - C{haproxy-splice}: the same with C{option splice-auto};
  - C{haproxy-splice-256k}: and with C{tune.pipesize 262144}, the gateway's pipe size;
  - with C{--tls}: C{gateway-tls} (a C{[[tls_listen]]} listener) and C{stunnel-server} (an
    stunnel server in front of the backend, its client on CPU 0 as part of the load).
Everything runs on 127.0.0.1; every process started is stopped by its own process group id.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import paths as pathmod  # noqa: E402
from procs import Processes, free_port, group_cpu_seconds  # noqa: E402
from profile_netguard import py_spy_during  # noqa: E402

GIB = 1 << 30
#: The relays' CPU and the load's CPU.
RELAY_CPU, LOAD_CPU = 1, 0


def start_backend(processes: Processes, python: str) -> int:
    """
    Start C{backend.py} on the load CPU.

    @return: its port.
    """
    port = free_port()
    server = processes.start(
        "bulk-backend", [python, os.path.join(HERE, "backend.py"), "--port", str(port)], LOAD_CPU
    )
    processes.wait_listening(server, port)
    return port


def start_gateway(
    setup: pathmod.Setup, backend: int, name: str, *, kernel_relay: bool = True, tls: bool = False
) -> pathmod.Target:
    """
    The gateway alone (C{twistd -n netguard}) on the relay CPU, with the benchmark's
    configuration of C{paths.py} and one service, C{bench}, to the backend.
    """
    state = os.path.join(setup.work, name)
    os.makedirs(state, mode=0o700)
    port = free_port()
    endpoint = f"tcp:{port}:interface=127.0.0.1"
    text = pathmod.NETGUARD_CONFIG
    if tls:
        text = (
            "listen = []\n" + text + "[[tls_listen]]\n"
            f'endpoint = "{endpoint}"\ncert_file = "{setup.cert}"\nkey_file = "{setup.key}"\n'
        )
    else:
        text = f'listen = ["{endpoint}"]\n' + text
    text += (
        "[services.bench]\n"
        f'backend = "tcp:host=127.0.0.1:port={backend}"\n'
        'users = ["*"]\n'
        f"kernel_relay = {'true' if kernel_relay else 'false'}\n"
    )
    config = os.path.join(state, "bench.toml")
    with open(config, "w") as f:
        f.write(text)
    server = pathmod._start(
        setup,
        name,
        [
            os.path.join(setup.venv_bin, "twistd"), "-n", "--pidfile=", "netguard",
            "--config", config, "--state-dir", state, "--users", setup.users_file,
        ],
        port,
        cwd=state,
        env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)},  # this checkout's netguard
    )  # fmt: skip
    ngp = f"bench:{setup.user}:{setup.password_file}" + (f":{setup.cert}" if tls else "")
    return pathmod.Target(name, name, port, (server,), ngp=ngp, kind="netguard")


def start_haproxy(
    setup: pathmod.Setup, backend: int, name: str, options: str, tune: str = ""
) -> pathmod.Target:
    """
    HAProxy, mode tcp, on the relay CPU (one thread), with C{options} in its defaults and
    C{tune} in its global section.
    """
    port = free_port()
    config = os.path.join(setup.work, f"{name}.cfg")
    with open(config, "w") as f:
        f.write(
            f"global\n    maxconn 8192\n    maxpipes 1024\n{tune}"
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n"
            f"    timeout server 1h\n    maxconn 8192\n{options}"
            f"frontend bench\n    bind 127.0.0.1:{port}\n    default_backend bench\n"
            f"backend bench\n    server backend 127.0.0.1:{backend}\n"
        )
    server = pathmod._start(setup, name, ["haproxy", "-db", "-f", config], port)
    return pathmod.Target(name, name, port, (server,))


def start_stunnel_server(setup: pathmod.Setup, backend: int) -> pathmod.Target:
    """
    An stunnel server on the relay CPU in front of the backend; its stunnel client (the TLS
    side of the load) on the load CPU. Only the server is measured.
    """
    middle, port = free_port(), free_port()
    binary = shutil.which("stunnel4") or "stunnel"
    server_conf = pathmod._stunnel_conf(
        os.path.join(setup.work, "stunnel-server.conf"),
        f"[server]\naccept = 127.0.0.1:{middle}\nconnect = 127.0.0.1:{backend}\n"
        f"cert = {setup.cert}\nkey = {setup.key}\n",
    )
    client_conf = pathmod._stunnel_conf(
        os.path.join(setup.work, "stunnel-client.conf"),
        f"[client]\nclient = yes\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{middle}\n"
        f"verifyPeer = yes\nCAfile = {setup.cert}\ncheckHost = localhost\n",
    )
    server = pathmod._start(setup, "stunnel-server", [binary, server_conf], middle)
    client = setup.processes.start("stunnel-client", [binary, client_conf], LOAD_CPU)
    setup.processes.wait_listening(client, port)
    return pathmod.Target("stunnel-server", "stunnel-server", port, (server,))


def idle_rate(pid: int, seconds: float = 0.5) -> float:
    """
    CPU seconds per second process group C{pid} spends with nothing to relay.
    """
    before = group_cpu_seconds(pid)
    time.sleep(seconds)
    return (group_cpu_seconds(pid) - before) / seconds


def transfer(
    python: str, target: pathmod.Target, direction: str, size: int
) -> dict[str, float] | None:
    """
    One bulk transfer through C{target}, the generator on the load CPU.

    @return: C{cpu_s_per_gib} (the relay's, less its idle rate) and C{mb_per_s}, or
        L{None} when the transfer failed.
    """
    pid = target.relays[0].pid
    idle = idle_rate(pid)
    command = [
        "taskset", "-c", str(LOAD_CPU), python, os.path.join(HERE, "loadgen.py"),
        "--port", str(target.port), "--watch", f"relay:{pid}",
    ]  # fmt: skip
    if target.ngp:
        command += ["--ngp", target.ngp]
    command += ["bulk", "--direction", direction, "--bytes", str(size)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.stderr.write(f"{target.name} {direction}: {done.stderr[-400:]}\n")
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    window = result["window_s"]
    cpu = result["relay_cpu_pct"] / 100 * window - idle * window
    return {"cpu_s_per_gib": cpu / (result["bytes"] / GIB), "mb_per_s": result["mb_per_s"]}


def profile(python: str, target: pathmod.Target, direction: str, size: int, top: int) -> str:
    """
    py-spy (on the load CPU, non-blocking) on C{target}'s relay during one transfer.
    """
    return py_spy_during(
        target.relays[0].pid, LOAD_CPU, top, f"bulk-{target.name}-{direction}",
        lambda: transfer(python, target, direction, size),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=GIB, help="bytes per transfer")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tls", action="store_true", help="also the TLS paths")
    parser.add_argument("--profile", choices=["py-spy"], help="py-spy the gateways too")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--only", help="comma-separated path names to measure")
    args = parser.parse_args(argv)
    python = sys.executable
    venv_bin = os.path.dirname(python)
    work = tempfile.mkdtemp(prefix="ng-bulk-", dir="/tmp")
    processes = Processes(work)
    try:
        setup = pathmod.prepare(work, processes, RELAY_CPU, venv_bin)
        backend = start_backend(processes, python)
        targets = [
            start_gateway(setup, backend, "gateway-splice"),
            start_gateway(setup, backend, "gateway-copy", kernel_relay=False),
            start_haproxy(setup, backend, "haproxy", ""),
            start_haproxy(setup, backend, "haproxy-splice", "    option splice-auto\n"),
            start_haproxy(
                setup,
                backend,
                "haproxy-splice-256k",
                "    option splice-auto\n",
                "    tune.pipesize 262144\n",
            ),
        ]
        if args.tls:
            targets.append(start_gateway(setup, backend, "gateway-tls", tls=True))
            targets.append(start_stunnel_server(setup, backend))
        if args.only:
            targets = [t for t in targets if t.name in args.only.split(",")]
        print(f"machine: {os.cpu_count()} CPUs; {platform_line()}")
        print(f"relays pinned to CPU {RELAY_CPU}, load on CPU {LOAD_CPU}; {args.bytes} bytes")
        samples: dict[tuple[str, str], list[dict[str, float]]] = {}
        for run in range(args.runs):
            load = os.getloadavg()
            print(f"run {run + 1}: load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
            k = run % len(targets)
            for target in targets[k:] + targets[:k]:
                for direction in ("up", "down"):
                    sample = transfer(python, target, direction, args.bytes)
                    if sample is None:
                        continue
                    samples.setdefault((target.name, direction), []).append(sample)
                    print(
                        f"  {target.name:15} {direction:4} {sample['cpu_s_per_gib']:6.3f} "
                        f"CPU s/GiB  {sample['mb_per_s']:7.0f} MB/s"
                    )
        print()
        print(table(targets, samples))
        if args.profile:
            for target in targets:
                if target.name.startswith("gateway"):
                    for direction in ("up", "down"):
                        print(f"py-spy {target.name} {direction}:")
                        print(profile(python, target, direction, args.bytes, args.top))
    finally:
        processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def platform_line() -> str:
    """
    The kernel and the HAProxy version, for the report.
    """
    kernel = os.uname().release
    try:
        version = subprocess.run(
            ["haproxy", "-v"], capture_output=True, text=True, timeout=10
        ).stdout.split("\n")[0]
    except OSError:
        version = "haproxy ?"
    return f"Linux {kernel}; {version}"


def table(targets: list[pathmod.Target], samples: dict[tuple[str, str], Any]) -> str:
    """
    The medians as a Markdown table, with ratios to both HAProxy modes.
    """

    def median(name: str, direction: str, key: str) -> float | None:
        values = [s[key] for s in samples.get((name, direction), [])]
        return statistics.median(values) if values else None

    rows = [
        "| path | direction | CPU s/GiB (median) | MB/s | ÷ haproxy | ÷ haproxy-splice | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for target in targets:
        for direction in ("up", "down"):
            cpu = median(target.name, direction, "cpu_s_per_gib")
            if cpu is None:
                continue
            rate = median(target.name, direction, "mb_per_s")
            ratios = []
            for anchor in ("haproxy", "haproxy-splice"):
                base = median(anchor, direction, "cpu_s_per_gib")
                ratios.append(f"{cpu / base:.2f}×" if base else "-")
            runs = len(samples[(target.name, direction)])
            rows.append(
                f"| {target.name} | {direction} | {cpu:.3f} | {rate:.0f} | {ratios[0]} | "
                f"{ratios[1]} | {runs} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())

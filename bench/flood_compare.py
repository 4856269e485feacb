"""
Flood comparison (the admission issue's benchmark; C{bench/flood.py} is the flood benchmark
at the default configuration): can a legitimate client still get in while a flood of silent
connections from many addresses hits the port? A benchmark, not a test: it measures and
reports, it never asserts. Loopback only.

    .venv/bin/python bench/flood_compare.py [--paths netguard,maxstartups,haproxy]
        [--connections 2000] [--duration 20] [--sources 199] [--json FILE]

Three paths, each behind one port on 127.0.0.1, each with a pre-authentication (or
pre-service) budget of 100 connections and a 10 s timeout for a client that says nothing:

  - C{netguard}: the gateway (C{twistd -n netguard}) with its admission control: a separate
    unauthenticated pool of 100, 5 concurrent and 5 new connections per second per source,
    random early drop from 50 to 100, penalties (a source whose connections time out or talk
    early is blocked for a time that doubles), line-phase timeouts that shrink under stress,
    event-loop lag shedding; the built-in echo service behind it.
  - C{maxstartups}: the same gateway configured with sshd's semantics: one pre-auth pool with
    random early drop only, as C{MaxStartups 10:30:100} (drop from 10 unauthenticated
    connections with probability 0.3, rising to 1 at 100), no per-source limits, no
    penalties, no stress-adaptive timeouts, no lag shedding; C{handshake_timeout} plays
    C{LoginGraceTime}.
  - C{haproxy}: HAProxy in TCP mode in front of a trivial banner-and-echo backend:
    C{maxconn 100} on the frontend, a C{stick-table} tracking C{conn_cur} and
    C{conn_rate(1s)} per source with C{tcp-request connection reject} above 5, and
    C{timeout client 10s}. HAProxy knows nothing of authentication, so its C{maxconn} is the
    single pool.

For each path: a baseline (the legitimate client alone), then the flood: C{--connections}
connections spread evenly over C{--duration} seconds from 127.0.0.2 ... 127.0.0.(1+sources),
each held silent until the server closes it. Two seconds into the flood the legitimate client
(127.0.0.1) runs sessions one after the other until the flood's schedule ends: connect, wait
to be served (netguard: greeting, SCRAM-SHA-256, C{OPEN echo}; HAProxy: the backend's banner),
echo 4 KiB and check it, close. A refusal (C{ERR BUSY}, a close before being served, a failed
connect) is retried after 0.25 s; a session that is not served within 10 s of its first attempt
fails. Reported per path: sessions served (%), time to be served from the first attempt (p50,
p95, max), attempts per session, and what the attackers got.

Processes: the server under test is pinned to CPU 1, the attacker, the legitimate client and
the HAProxy backend to CPU 0 (where there are two CPUs). Every process is started in its own
session and stopped by its process-group id at the end, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VENV_BIN = os.path.dirname(sys.executable)

#: The pre-authentication budget, timeout, and per-source limits shared by every path.
POOL = 100
TIMEOUT = 10
PER_SOURCE_MAX = 5
PER_SOURCE_RATE = 5

#: The legitimate client: retry pause, per-session deadline, echo size, warm-up into the flood.
RETRY_PAUSE = 0.25
SESSION_DEADLINE = 10.0
ECHO_BYTES = 4096
WARMUP = 2.0
BASELINE_SESSIONS = 20

#: How long after its schedule an attacker keeps a connection the server has not closed.
LINGER = 15.0

NETGUARD_CONFIG = f"""\
[limits]
handshake_timeout = {TIMEOUT}

[admission]
max_connections = {2 * POOL}
max_unauthenticated = {POOL}
max_relays = {POOL}
per_source_max = {PER_SOURCE_MAX}
per_source_rate = {PER_SOURCE_RATE}
per_source_burst = {PER_SOURCE_RATE}
red_soft = {POOL // 2}
red_hard = {POOL}
"""

#: sshd's MaxStartups 10:30:100 and nothing else: one pool, random early drop only.
MAXSTARTUPS_CONFIG = f"""\
[limits]
handshake_timeout = {TIMEOUT}

[admission]
max_connections = {2 * POOL}
max_unauthenticated = {POOL}
max_relays = {POOL}
per_source_max = 1000000
per_source_rate = 1000000
per_source_burst = 1000000
red_soft = 10
red_rate = 0.3
red_hard = {POOL}
stress_timeout_floor = 1.0
auth_failure_points = 0
early_talker_points = 0
timeout_points = 0
format_error_points = 0

[overload]
max_lag = "off"
"""

HAPROXY_CONFIG = """\
global
    maxconn 8000
    nbthread 1

defaults
    mode tcp
    timeout connect 5s
    timeout client {timeout}s
    timeout server {timeout}s

frontend flood
    bind 127.0.0.1:{port}
    maxconn {pool}
    stick-table type ip size 100k expire 30s store conn_cur,conn_rate(1s)
    tcp-request connection track-sc0 src
    tcp-request connection reject if {{ sc0_conn_cur gt {per_source_max} }}
    tcp-request connection reject if {{ sc0_conn_rate gt {per_source_rate} }}
    default_backend echo

backend echo
    server echo 127.0.0.1:{backend_port}
"""

ALL_PATHS = ("netguard", "maxstartups", "haproxy")


# -- helpers ----------------------------------------------------------------------------------


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 20.0) -> None:
    """
    Wait until something accepts connections on 127.0.0.1:C{port}.

    @raise RuntimeError: if nothing does within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def percentile(values: list[float], fraction: float) -> float | None:
    """
    The nearest-rank percentile of C{values}, or L{None} when there are none.
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


class Processes:
    """
    The processes this run started: each leads its own session, so it can be stopped (with
    any children) by its process-group id, and nothing else is ever signalled.
    """

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], cpu: int | None, **kwargs: Any) -> subprocess.Popen[bytes]:
        """
        Start C{argv} in a new session, pinned to C{cpu} when given.
        """
        process = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.started.append(process)
        if cpu is not None:
            try:
                os.sched_setaffinity(process.pid, {cpu})
            except OSError:
                pass
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """
        Stop one process group we started: SIGTERM, then SIGKILL after 5 s.
        """
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
            except ProcessLookupError:
                pass
        if process in self.started:
            self.started.remove(process)

    def stop_all(self) -> None:
        """
        Stop every process group still running, most recent first.
        """
        for process in reversed(list(self.started)):
            self.stop(process)


# -- the backend behind HAProxy (asyncio) ----------------------------------------------------


async def _backend(port_file: str) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"HELLO echo\r\n")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    with open(port_file + ".tmp", "w") as handle:
        handle.write(str(port))
    os.replace(port_file + ".tmp", port_file)
    async with server:
        await server.serve_forever()


# -- the attacker (asyncio) --------------------------------------------------------------------


async def _attack(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    sources = [f"127.0.0.{2 + n}" for n in range(args.sources)]
    outcomes: Counter[str] = Counter()
    held: list[float] = []
    start = loop.time()
    end = start + args.duration + LINGER
    peak = [0, 0]

    async def one(index: int) -> None:
        await asyncio.sleep(
            max(0.0, start + index * args.duration / args.connections - loop.time())
        )
        began = loop.time()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", args.port, local_addr=(sources[index % len(sources)], 0)
                ),
                timeout=5,
            )
        except (TimeoutError, OSError) as error:
            outcomes[f"connect failed: {type(error).__name__}"] += 1
            return
        peak[0] += 1
        peak[1] = max(peak[1], peak[0])
        said = b""
        ended = "closed"
        try:
            while len(said) < 4096:
                data = await asyncio.wait_for(
                    reader.read(4096), timeout=max(0.01, end - loop.time())
                )
                if not data:
                    break
                said += data
        except TimeoutError:
            ended = "still open at the end"
        except OSError:
            ended = "reset"
        finally:
            peak[0] -= 1
            writer.close()
        first = said.split(b"\r\n", 1)[0]
        if ended == "still open at the end":
            outcomes[ended] += 1
        elif first.startswith(b"ERR BUSY"):
            outcomes["refused: " + first[9:].decode("ascii", "replace")] += 1
        elif not said:
            outcomes["refused: closed without a word"] += 1
        else:
            outcomes["served, then cut off"] += 1
            held.append(loop.time() - began)

    await asyncio.gather(*(one(index) for index in range(args.connections)))
    return {
        "outcomes": dict(outcomes),
        "held_p50": percentile(held, 0.5),
        "held_max": max(held) if held else None,
        "peak_open": peak[1],
        "took": loop.time() - start,
    }


# -- the legitimate client (Twisted) -----------------------------------------------------------


def _legit(args: argparse.Namespace) -> list[dict[str, Any]]:
    import attrs
    from twisted.internet import reactor as global_reactor
    from twisted.internet.defer import Deferred, inlineCallbacks
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol
    from twisted.internet.task import deferLater

    from netguard.client.protocol import CLIENT_LIMITS, Credentials, NGPClientProtocol, NGPError

    reactor: Any = global_reactor
    credentials: Any = None
    if args.kind == "netguard":
        with open(args.password_file) as handle:
            credentials = Credentials(args.user, handle.read().strip())
    payload = os.urandom(ECHO_BYTES)

    class Plain(Protocol):
        """Wait for the backend's banner line, then echo."""

        def __init__(self) -> None:
            self.buffer = b""
            self.served: Deferred[None] = Deferred()
            self.echoed: Deferred[bytes] = Deferred()
            self.banner = False

        def dataReceived(self, data: bytes) -> None:
            self.buffer += data
            if not self.banner and b"\r\n" in self.buffer:
                self.banner = True
                self.buffer = self.buffer.split(b"\r\n", 1)[1]
                self.served.callback(None)
            if self.banner and len(self.buffer) >= ECHO_BYTES and not self.echoed.called:
                self.echoed.callback(self.buffer)

        def connectionLost(self, reason: Any = None) -> None:
            if not self.served.called:
                self.served.errback(ConnectionError("closed without a word"))
            elif not self.echoed.called:
                self.echoed.errback(ConnectionError("closed during the echo"))

    class Gateway(NGPClientProtocol):
        """Authenticate, open echo, echo."""

        def __init__(self, remaining: float) -> None:
            limits = attrs.evolve(CLIENT_LIMITS, handshake_timeout=max(0.1, remaining))
            super().__init__(credentials, "echo", clock=reactor, limits=limits)
            self.buffer = b""
            self.echoed: Deferred[bytes] = Deferred()

        def service_data(self, data: bytes) -> None:
            self.buffer += data
            if len(self.buffer) >= ECHO_BYTES and not self.echoed.called:
                self.echoed.callback(self.buffer)

        def service_closed(self, reason: Any) -> None:
            if not self.echoed.called:
                self.echoed.errback(ConnectionError("closed during the echo"))

    @inlineCallbacks
    def attempt(remaining: float) -> Any:
        """One connection: C{(outcome, seconds until served or None)}."""
        began = reactor.seconds()
        endpoint = TCP4ClientEndpoint(
            reactor,
            "127.0.0.1",
            args.port,
            timeout=max(1, int(remaining)),
            bindAddress=("127.0.0.1", 0),
        )
        protocol: Any = Gateway(remaining) if args.kind == "netguard" else Plain()
        try:
            connecting = connectProtocol(endpoint, protocol)
            connecting.addTimeout(remaining, reactor)
            yield connecting
        except Exception as error:
            return f"connect failed: {type(error).__name__}", None
        waiting = protocol.opened if args.kind == "netguard" else protocol.served
        waiting.addTimeout(max(0.01, remaining - (reactor.seconds() - began)), reactor)
        try:
            yield waiting
        except NGPError as error:
            protocol.transport.abortConnection()
            return f"{error.code} {error.text}", None
        except Exception as error:
            protocol.transport.abortConnection()
            return f"not served: {type(error).__name__}", None
        served = reactor.seconds() - began
        protocol.transport.write(payload)
        echoed = protocol.echoed
        echoed.addTimeout(max(0.01, remaining - (reactor.seconds() - began)), reactor)
        try:
            data = yield echoed
        except Exception as error:
            protocol.transport.abortConnection()
            return f"echo failed: {type(error).__name__}", None
        protocol.transport.loseConnection()
        return ("ok" if data[:ECHO_BYTES] == payload else "echo corrupted"), served

    @inlineCallbacks
    def session() -> Any:
        first = reactor.seconds()
        attempts = 0
        reasons: Counter[str] = Counter()
        while True:
            remaining = SESSION_DEADLINE - (reactor.seconds() - first)
            if remaining <= 0:
                return {"ok": False, "attempts": attempts, "reasons": dict(reasons)}
            attempts += 1
            began = reactor.seconds()
            outcome, served = yield attempt(remaining)
            if outcome == "ok":
                return {
                    "ok": True,
                    "attempts": attempts,
                    "served_after": began - first + served,
                    "last_attempt": served,
                    "reasons": dict(reasons),
                }
            reasons[outcome] += 1
            yield deferLater(reactor, RETRY_PAUSE, lambda: None)

    results: list[dict[str, Any]] = []

    @inlineCallbacks
    def run() -> Any:
        started = reactor.seconds()
        try:
            while len(results) < args.sessions and reactor.seconds() - started < args.until:
                began = reactor.seconds()
                result = yield session()
                result["started_at"] = began - started
                results.append(result)
                yield deferLater(reactor, RETRY_PAUSE, lambda: None)
        finally:
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()
    return results


# -- the run ------------------------------------------------------------------------------------


def start_server(path: str, work: str, procs: Processes) -> dict[str, Any]:
    """
    Start the server of C{path} (and its backend) and wait until it listens.

    @return: what the clients need: C{port}, C{kind}, and for netguard C{user},
        C{password_file}, C{control}.
    """
    port = free_port()
    server_cpu = 1 if (os.cpu_count() or 1) > 1 else None
    if path in ("netguard", "maxstartups"):
        state = os.path.join(work, path)
        os.makedirs(state, mode=0o700)
        config = os.path.join(state, "netguard.toml")
        with open(config, "w") as handle:
            handle.write(NETGUARD_CONFIG if path == "netguard" else MAXSTARTUPS_CONFIG)
        password = secrets.token_urlsafe(18)
        password_file = os.path.join(work, f"{path}.password")
        with open(os.open(password_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
            handle.write(password + "\n")
        subprocess.run(
            [
                os.path.join(VENV_BIN, "netguard"),
                "adduser",
                "bench",
                "--users",
                os.path.join(state, "users"),
            ],
            input=(password + "\n").encode(),
            check=True,
            capture_output=True,
            timeout=30,
        )
        log = open(os.path.join(state, "twistd.out"), "wb")
        procs.start(
            [
                os.path.join(VENV_BIN, "twistd"),
                "-n",
                "--pidfile=",
                "netguard",
                "--config",
                config,
                "--state-dir",
                state,
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--log-file",
                os.path.join(state, "netguard.log"),
            ],
            server_cpu,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        wait_listening(port)
        return {
            "port": port,
            "kind": "netguard",
            "user": "bench",
            "password_file": password_file,
            "control": os.path.join(state, "control.sock"),
        }
    port_file = os.path.join(work, "backend.port")
    procs.start([sys.executable, __file__, "backend", "--port-file", port_file], 0)
    deadline = time.monotonic() + 20
    while not os.path.exists(port_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(port_file) as handle:
        backend_port = int(handle.read())
    config = os.path.join(work, "haproxy.cfg")
    with open(config, "w") as handle:
        handle.write(
            HAPROXY_CONFIG.format(
                port=port,
                pool=POOL,
                timeout=TIMEOUT,
                per_source_max=PER_SOURCE_MAX,
                per_source_rate=PER_SOURCE_RATE,
                backend_port=backend_port,
            )
        )
    log = open(os.path.join(work, "haproxy.out"), "wb")
    procs.start(["haproxy", "-db", "-f", config], server_cpu, stdout=log, stderr=subprocess.STDOUT)
    wait_listening(port)
    return {"port": port, "kind": "plain"}


def run_legit(
    server: dict[str, Any], sessions: int, until: float, out: str, procs: Processes
) -> subprocess.Popen[bytes]:
    """
    Start the legitimate client; it writes its sessions as JSON to C{out}.
    """
    argv = [
        sys.executable,
        __file__,
        "legit",
        "--port",
        str(server["port"]),
        "--kind",
        server["kind"],
        "--sessions",
        str(sessions),
        "--until",
        str(until),
        "--out",
        out,
    ]
    if server["kind"] == "netguard":
        argv += ["--user", server["user"], "--password-file", server["password_file"]]
    return procs.start(argv, 0, cwd=REPO)


def summarise(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """
    Success rate, latency percentiles, attempts and refusal reasons of some sessions.
    """
    served = [s["served_after"] for s in sessions if s["ok"]]
    reasons: Counter[str] = Counter()
    for s in sessions:
        reasons.update(s["reasons"])
    return {
        "sessions": len(sessions),
        "ok": len(served),
        "success": 100.0 * len(served) / len(sessions) if sessions else None,
        "p50": percentile(served, 0.5),
        "p95": percentile(served, 0.95),
        "max": max(served) if served else None,
        "attempts_mean": statistics.fmean(s["attempts"] for s in sessions) if sessions else None,
        "retried": dict(reasons.most_common()),
    }


def run_path(path: str, args: argparse.Namespace, work: str) -> dict[str, Any]:
    """
    Baseline then flood for one path; every process it starts is stopped before it returns.
    """
    procs = Processes()
    try:
        server = start_server(path, work, procs)
        base_out = os.path.join(work, f"{path}.baseline.json")
        legit = run_legit(server, BASELINE_SESSIONS, 60, base_out, procs)
        legit.wait(timeout=120)
        flood_out = os.path.join(work, f"{path}.flood.json")
        attack_out = os.path.join(work, f"{path}.attack.json")
        attacker = procs.start(
            [
                sys.executable,
                __file__,
                "attack",
                "--port",
                str(server["port"]),
                "--connections",
                str(args.connections),
                "--duration",
                str(args.duration),
                "--sources",
                str(args.sources),
                "--out",
                attack_out,
            ],
            0,
        )
        time.sleep(WARMUP)
        legit = run_legit(server, 10_000, args.duration - WARMUP, flood_out, procs)
        legit.wait(timeout=args.duration + SESSION_DEADLINE + 60)
        attacker.wait(timeout=args.duration + LINGER + 60)
        status = None
        if server["kind"] == "netguard":
            reply = subprocess.run(
                [
                    os.path.join(VENV_BIN, "netguard"),
                    "ctl",
                    "--socket",
                    server["control"],
                    "status",
                ],
                capture_output=True,
                timeout=20,
            )
            if reply.returncode == 0:
                status = json.loads(reply.stdout)
        with open(base_out) as b, open(flood_out) as f, open(attack_out) as a:
            result = {
                "baseline": summarise(json.load(b)),
                "flood": summarise(json.load(f)),
                "attack": json.load(a),
            }
        if status is not None:
            result["refused"] = {
                k[len("refused.") :]: v for k, v in status.items() if k.startswith("refused.")
            }
            result["admission_after"] = status.get("admission")
        return result
    finally:
        procs.stop_all()


def _fmt(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "-"
    if unit != "s":
        return f"{value:.0f}{unit}"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    """
    The results as Markdown tables.
    """
    lines = [
        f"Flood: {args.connections} silent connections over {args.duration} s from "
        f"{args.sources} addresses (127.0.0.2 ... 127.0.0.{1 + args.sources}); legitimate "
        f"client from 127.0.0.1, sessions back to back from {WARMUP:.0f} s into the flood; "
        f"a session fails if not served within {SESSION_DEADLINE:.0f} s of its first attempt.",
        "",
        "| path | baseline: served, p50 | flood: sessions served | p50 | p95 | max "
        "| attempts/session |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, r in results.items():
        b, f = r["baseline"], r["flood"]
        lines.append(
            f"| {path} | {b['ok']}/{b['sessions']}, {_fmt(b['p50'])} "
            f"| {f['ok']}/{f['sessions']} ({_fmt(f['success'], '%')})"
            f" | {_fmt(f['p50'])} | {_fmt(f['p95'])} | {_fmt(f['max'])} |"
            f" {f['attempts_mean']:.1f} |"
        )
    lines += [
        "",
        "| path | legitimate retries by reason | attackers got | attacker held p50 / max |",
        "|---|---|---|---|",
    ]
    for path, r in results.items():
        a = r["attack"]
        retried = ", ".join(f"{k}: {v}" for k, v in r["flood"]["retried"].items()) or "-"
        got = ", ".join(f"{k}: {v}" for k, v in sorted(a["outcomes"].items(), key=lambda i: -i[1]))
        lines.append(
            f"| {path} | {retried} | {got} | {_fmt(a['held_p50'])} / {_fmt(a['held_max'])} |"
        )
    for path, r in results.items():
        if "refused" in r:
            refused = ", ".join(f"{k}: {v}" for k, v in sorted(r["refused"].items()))
            lines.append(f"\n{path} gateway counters: refused {refused}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """
    The command line: C{run} (the default) or one of the helper roles.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role")
    run = sub.add_parser("run")
    for p in (parser, run):
        p.add_argument("--paths", default=",".join(ALL_PATHS))
        p.add_argument("--connections", type=int, default=2000)
        p.add_argument("--duration", type=float, default=20.0)
        p.add_argument("--sources", type=int, default=199)
        p.add_argument("--json", default=None, help="also write the figures to this file")
    backend = sub.add_parser("backend")
    backend.add_argument("--port-file", required=True)
    attack = sub.add_parser("attack")
    attack.add_argument("--port", type=int, required=True)
    attack.add_argument("--connections", type=int, required=True)
    attack.add_argument("--duration", type=float, required=True)
    attack.add_argument("--sources", type=int, required=True)
    attack.add_argument("--out", required=True)
    legit = sub.add_parser("legit")
    legit.add_argument("--port", type=int, required=True)
    legit.add_argument("--kind", choices=("netguard", "plain"), required=True)
    legit.add_argument("--sessions", type=int, required=True)
    legit.add_argument("--until", type=float, required=True)
    legit.add_argument("--out", required=True)
    legit.add_argument("--user", default="")
    legit.add_argument("--password-file", default="")
    args = parser.parse_args(argv)

    if args.role == "backend":
        asyncio.run(_backend(args.port_file))
        return 0
    if args.role == "attack":
        if not 1 <= args.sources <= 253:
            parser.error("--sources must be within 1..253 (127.0.0.2 ... 127.0.0.254)")
        result = asyncio.run(_attack(args))
        with open(args.out, "w") as handle:
            json.dump(result, handle)
        return 0
    if args.role == "legit":
        sys.path.insert(0, REPO)
        sessions = _legit(args)
        with open(args.out, "w") as handle:
            json.dump(sessions, handle)
        return 0

    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(ALL_PATHS)
    if unknown:
        parser.error(f"unknown paths: {', '.join(sorted(unknown))}")
    if "haproxy" in paths and shutil.which("haproxy") is None:
        print("haproxy is not installed: skipping that path", file=sys.stderr)
        paths.remove("haproxy")
    work = tempfile.mkdtemp(prefix="ng-flood-bench-", dir="/tmp")
    results: dict[str, Any] = {}
    try:
        for path in paths:
            print(f"[{time.strftime('%H:%M:%S')}] {path} ...", file=sys.stderr, flush=True)
            results[path] = run_path(path, args, work)
            time.sleep(2)  # let the previous path's sockets go
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=1)
    print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""
Multiplexing framings compared on this machine, in one interleaved run: HTTP/2 streams (h2,
extended CONNECT naming the service), yamux (bench/mux_yamux_min.py), and SSH connection-layer
channels (Twisted Conch's SSHConnection over a bare packet framing), beside plain TCP with one
connection per stream (the anchor, run between each candidate).

Both ends are Twisted processes: the server pinned alone on one CPU, the client (load) on the
other. Per candidate and run, on a fresh server process:

  memory     RSS delta of the server per idle stream, N streams open at once (default 4000)
  streams    streams opened, 16 bytes echoed, closed (both half-closes), per second, over one
             connection (the anchor: one TCP connection each), 16 in flight
  rr         16-byte request/response rate over 50 concurrent streams (redis GET-like)
  bulk       MB/s and server CPU s per GiB uploading through one stream to a sink

Server CPU is utime + stime from /proc less its idle rate measured before the run. Run::

  .venv/bin/pip install -r bench/requirements.txt
  .venv/bin/python bench/mux_candidates.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mux_framings as fr  # noqa: E402
from procs import Processes, free_port, group_memory, run_generator  # noqa: E402

CANDIDATES = ("h2", "yamux", "ssh")
ANCHOR = "tcp"
SERVER_CPU, CLIENT_CPU = 1, 0
#: Bound on one client run, seconds (a hang guard, not a measurement).
CLIENT_TIMEOUT = 300.0


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _quiet_logs() -> None:
    # Twisted buffers log events until an observer is set: discard them in every candidate
    # alike (Conch logs every channel open at info level).
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)


def server_child(args: argparse.Namespace) -> int:
    """
    Serve one candidate until SIGTERM.
    """
    _raise_nofile()
    _quiet_logs()
    from twisted.internet import reactor

    if args.candidate == "tcp":
        fr.tcp_server(reactor, args.port, args.sink_port)
    else:
        {"h2": fr.h2_server, "yamux": fr.yamux_server, "ssh": fr.ssh_server}[args.candidate](
            reactor, args.port
        )
    print(f"serving {args.candidate} on {args.port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]
    return 0


# -- the tests a client runs ----------------------------------------------------------------


class Driver:
    """
    Runs one test over an opener (anything with C{open(service, app) -> Stream}) and fires
    C{done} with a result dict.
    """

    def __init__(self, reactor: Any, opener: Any, args: argparse.Namespace) -> None:
        from twisted.internet import defer

        self.reactor = reactor
        self.opener = opener
        self.args = args
        self.done: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.errors = 0
        self.first_error = ""

    def fail(self, why: str) -> None:
        """Count an error, keeping the first reason."""
        self.errors += 1
        self.first_error = self.first_error or why

    def mark(self) -> float:
        """
        Start the measured section: its wall clock and this process's CPU.

        @return: the wall clock now.
        """
        self.cpu0 = time.process_time()
        return time.perf_counter()

    def finish(self, result: dict[str, Any]) -> None:
        """Fire C{done} with C{result}, the client CPU and the errors."""
        result["client_cpu"] = time.process_time() - getattr(self, "cpu0", time.process_time())
        result["errors"] = self.errors
        result["first_error"] = self.first_error
        if not self.done.called:
            self.done.callback(result)

    # streams: open, 16 bytes echoed, close; `inflight` at once
    def streams(self) -> None:
        """Open, echo 16 bytes, close, C{--streams} times with 16 in flight."""
        total, inflight = self.args.streams, 16
        state = {"started": 0, "ended": 0}
        payload = b"0123456789abcdef"
        start = self.mark()
        driver = self

        class Echo16(fr.App):
            def __init__(self) -> None:
                self.got = b""
                self.stream: fr.Stream | None = None

            def on_open(self) -> None:
                assert self.stream is not None
                self.stream.write(payload)

            def on_data(self, data: bytes) -> None:
                self.got += data
                if data and len(self.got) == len(payload):
                    assert self.stream is not None
                    self.stream.end()

            def on_end(self) -> None:
                if self.got != payload:
                    driver.fail(f"echo got {self.got!r}")
                self.next()

            def on_refused(self, why: str) -> None:
                driver.fail(why)
                self.next()

            def next(self) -> None:
                state["ended"] += 1
                if state["ended"] == total:
                    elapsed = time.perf_counter() - start
                    driver.finish({"count": total, "seconds": elapsed})
                elif state["started"] < total:
                    launch()

        def launch() -> None:
            state["started"] += 1
            app = Echo16()
            app.stream = self.opener.open(b"echo", app)

        for _ in range(inflight):
            launch()

    # rr: 50 streams, each `per_stream` 16-byte request/response round trips
    def rr(self) -> None:
        """Fifty streams, each C{--rr-per-stream} 16-byte request/response round trips."""
        clients, per = 50, self.args.rr_per_stream
        state = {"ended": 0, "opened": 0}
        driver = self
        request = b"GET key:00000001"
        start = [0.0]

        class Pinger(fr.App):
            def __init__(self) -> None:
                self.left = per
                self.got = 0
                self.stream: fr.Stream | None = None

            def on_open(self) -> None:
                state["opened"] += 1
                if state["opened"] == clients:
                    start[0] = driver.mark()
                    for app in apps:
                        assert app.stream is not None
                        app.stream.write(request)

            def on_data(self, data: bytes) -> None:
                self.got += len(data)
                assert self.stream is not None
                if self.got >= len(request):
                    self.got -= len(request)
                    self.left -= 1
                    if self.left:
                        self.stream.write(request)
                    else:
                        self.stream.end()

            def on_end(self) -> None:
                if self.left:
                    driver.fail(f"ended with {self.left} left")
                state["ended"] += 1
                if state["ended"] == clients:
                    elapsed = time.perf_counter() - start[0]
                    driver.finish({"count": clients * per, "seconds": elapsed})

            def on_refused(self, why: str) -> None:
                driver.fail(why)
                self.on_end()

        apps = [Pinger() for _ in range(clients)]
        for app in apps:
            app.stream = self.opener.open(b"echo", app)

    # bulk: one stream uploads `bulk_mib` MiB to the sink, which answers the count
    def bulk(self) -> None:
        """Upload C{--bulk-mib} MiB through one stream; the sink answers the count."""
        total = self.args.bulk_mib * 1024 * 1024
        chunk = os.urandom(65536)
        driver = self
        start = [0.0]

        class Upload(fr.App):
            def __init__(self) -> None:
                self.sent = 0
                self.reply = b""
                self.stream: fr.Stream | None = None
                self.ended = False

            def on_open(self) -> None:
                start[0] = driver.mark()
                self.on_writable()

            def on_writable(self) -> None:
                stream = self.stream
                assert stream is not None
                while self.sent < total and stream.ready():
                    stream.write(chunk)
                    self.sent += len(chunk)
                if self.sent >= total and not self.ended:
                    self.ended = True
                    stream.end()

            def on_data(self, data: bytes) -> None:
                self.reply += data

            def on_end(self) -> None:
                elapsed = time.perf_counter() - start[0]
                if self.reply != struct.pack(">Q", total):
                    driver.fail(f"sink answered {self.reply!r}")
                driver.finish({"count": total, "seconds": elapsed})

            def on_refused(self, why: str) -> None:
                driver.fail(why)
                driver.finish({"count": 0, "seconds": 0.0})

        app = Upload()
        app.stream = self.opener.open(b"sink", app)

    # memory: open `idle` streams and hold them until the parent has read the server's RSS
    def memory(self) -> None:
        """Open C{--idle} streams and hold them while the parent reads the server RSS."""
        total = self.args.idle
        state = {"opened": 0, "launched": 0}
        driver = self
        keep: list[Any] = []

        class Idle(fr.App):
            def on_open(self) -> None:
                state["opened"] += 1
                if state["launched"] < total:
                    launch()
                if state["opened"] == total:
                    driver.hold()

            def on_refused(self, why: str) -> None:
                driver.fail(why)
                state["opened"] += 1
                if state["opened"] == total:
                    driver.hold()

        def launch() -> None:
            state["launched"] += 1
            app = Idle()
            keep.append((app, self.opener.open(b"echo", app)))

        for _ in range(min(64, total)):
            launch()

    def hold(self) -> None:
        """Tell the parent the streams are open; wait (bounded) for its go."""
        # Tell the parent, then wait (bounded) for its word that it has read the RSS.
        with open(self.args.ready_file + ".tmp", "w") as f:
            f.write("ready")
        os.rename(self.args.ready_file + ".tmp", self.args.ready_file)
        deadline = time.monotonic() + 120.0

        def poll() -> None:
            if os.path.exists(self.args.go_file) or time.monotonic() > deadline:
                self.finish({"count": self.args.idle, "seconds": 0.0})
            else:
                self.reactor.callLater(0.05, poll)

        poll()


def client_child(args: argparse.Namespace) -> int:
    """
    Run one test against one candidate and print its result as JSON.
    """
    _raise_nofile()
    _quiet_logs()
    from twisted.internet import reactor

    connect = {
        "tcp": fr.tcp_client,
        "h2": fr.h2_client,
        "yamux": fr.yamux_client,
        "ssh": fr.ssh_client,
    }
    result: dict[str, Any] = {}

    def run(opener: Any) -> None:
        driver = Driver(reactor, opener, args)
        driver.done.addCallback(result.update)
        driver.done.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
        getattr(driver, args.test)()

    def failed(f: Any) -> None:
        result["errors"] = 1
        result["first_error"] = str(f.value)
        reactor.stop()  # type: ignore[attr-defined]

    d = connect[args.candidate](reactor, args.port, args.sink_port)
    d.addCallbacks(run, failed)
    reactor.run()  # type: ignore[attr-defined]
    print(json.dumps(result), flush=True)
    return 0


# -- the parent: start, measure, interleave, report ------------------------------------------


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _client_argv(
    args: argparse.Namespace, candidate: str, test: str, ports: tuple[int, int], **kw: str
) -> list[str]:
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "client",
        candidate,
        test,
        "--port",
        str(ports[0]),
        "--sink-port",
        str(ports[1]),
        "--streams",
        str(args.streams),
        "--rr-per-stream",
        str(args.rr_per_stream),
        "--bulk-mib",
        str(args.bulk_mib),
        "--idle",
        str(args.idle),
    ]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}", value]
    return argv


def measure_candidate(
    args: argparse.Namespace, processes: Processes, work: str, candidate: str
) -> dict[str, Any]:
    """
    Start a fresh server for C{candidate}, run the four tests against it, stop it.
    """
    from profile_session import cpu_seconds

    ports = (free_port(), free_port())
    server = processes.start(
        f"mux-{candidate}",
        [
            sys.executable,
            os.path.abspath(__file__),
            "server",
            candidate,
            "--port",
            str(ports[0]),
            "--sink-port",
            str(ports[1]),
        ],
        SERVER_CPU,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    try:
        processes.wait_listening(server, ports[0])
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        time.sleep(0.5)
        idle_rate = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
        out: dict[str, Any] = {"load": _load()}

        # memory first, on a fresh heap
        ready = os.path.join(work, f"ready-{candidate}-{time.monotonic_ns()}")
        go = ready + ".go"
        rss0 = group_memory(server.pid).rss
        holder: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: holder.update(
                f=run_generator(
                    _client_argv(args, candidate, "memory", ports, ready_file=ready, go_file=go),
                    CLIENT_CPU,
                    CLIENT_TIMEOUT,
                )
            )
        )
        thread.start()
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while not os.path.exists(ready) and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        rss1 = group_memory(server.pid).rss
        with open(go, "w") as f:
            f.write("go")
        thread.join(CLIENT_TIMEOUT)
        res = json.loads(holder["f"].stdout or "{}")
        out["memory"] = {
            "kib_per_stream": (rss1 - rss0) / args.idle,
            "errors": res.get("errors", 1),
        }

        for test in ("streams", "rr", "bulk"):
            c0, t0 = cpu_seconds(server.pid), time.monotonic()
            fin = run_generator(
                _client_argv(args, candidate, test, ports), CLIENT_CPU, CLIENT_TIMEOUT
            )
            wall = time.monotonic() - t0
            cpu = cpu_seconds(server.pid) - c0 - idle_rate * wall
            res = json.loads(fin.stdout or "{}") if not fin.timed_out else {}
            count, seconds = res.get("count", 0), res.get("seconds", 0.0)
            out[test] = {
                "count": count,
                "seconds": seconds,
                "rate": count / seconds if seconds else 0.0,
                "server_cpu": cpu,
                "client_cpu": res.get("client_cpu", fin.cpu),
                "errors": res.get("errors", 1),
                "first_error": res.get("first_error", "timed out" if fin.timed_out else ""),
            }
        return out
    finally:
        processes.stop(server)


#: The report's columns: heading, format, and the figure of one measurement.
COLUMNS: tuple[tuple[str, str, Callable[[dict[str, Any]], float]], ...] = (
    ("streams/s", ",.0f", lambda r: r["streams"]["rate"]),
    (
        "server µs/stream",
        ".0f",
        lambda r: r["streams"]["server_cpu"] / r["streams"]["count"] * 1e6,
    ),
    (
        "client µs/stream",
        ".0f",
        lambda r: r["streams"]["client_cpu"] / r["streams"]["count"] * 1e6,
    ),
    ("req/s, 50 streams", ",.0f", lambda r: r["rr"]["rate"]),
    ("server µs/req", ".1f", lambda r: r["rr"]["server_cpu"] / r["rr"]["count"] * 1e6),
    ("client µs/req", ".1f", lambda r: r["rr"]["client_cpu"] / r["rr"]["count"] * 1e6),
    ("bulk MB/s", ",.0f", lambda r: r["bulk"]["rate"] / 1e6),
    ("server CPU s/GiB", ".2f", lambda r: r["bulk"]["server_cpu"] / (r["bulk"]["count"] / 2**30)),
    ("client CPU s/GiB", ".2f", lambda r: r["bulk"]["client_cpu"] / (r["bulk"]["count"] / 2**30)),
    ("server KiB/idle stream", ".2f", lambda r: r["memory"]["kib_per_stream"]),
)
TESTS = ("memory", "streams", "rr", "bulk")


def report(runs: list[dict[str, list[dict[str, Any]]]]) -> str:
    """
    The medians of every column per framing, as a Markdown table.
    """
    heads = ["framing", *(c[0] for c in COLUMNS), "errors"]
    lines = ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
    for name in (ANCHOR, *CANDIDATES):
        results = [r for run in runs for r in run.get(name, [])]
        if not results:
            continue
        cells = [name]
        for _, fmt, figure in COLUMNS:
            values = [figure(r) for r in results if all(r[t]["count"] for t in TESTS[1:])]
            cells.append(format(statistics.median(values), fmt) if values else "-")
        cells.append(str(sum(r[t]["errors"] for r in results for t in TESTS)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parent(args: argparse.Namespace) -> int:
    """
    The interleaved comparison; children read the frame size from the environment.
    """
    os.environ["MUX_BENCH_FRAME"] = str(args.frame)
    fr.FRAME = args.frame
    work = tempfile.mkdtemp(prefix="mux-bench-")
    processes = Processes(work)
    runs: list[dict[str, list[dict[str, Any]]]] = []
    try:
        for run in range(args.runs):
            results: dict[str, list[dict[str, Any]]] = {}
            # A, anchor, A, anchor...: the anchor between every candidate; the candidates'
            # order rotates from run to run.
            shift = run % len(args.candidates)
            order = args.candidates[shift:] + args.candidates[:shift]
            sequence = [ANCHOR]
            for name in order:
                sequence += [name, ANCHOR]
            for name in sequence:
                result = measure_candidate(args, processes, work, name)
                results.setdefault(name, []).append(result)
                print(
                    f"run {run + 1} {name:6s} load {result['load']}: "
                    + ", ".join(
                        f"{t} {result[t]['rate']:,.0f}/s ({result[t]['errors']} err)"
                        for t in ("streams", "rr")
                    )
                    + f", bulk {result['bulk']['rate'] / 1e6:,.0f} MB/s, "
                    f"idle {result['memory']['kib_per_stream']:.2f} KiB/stream",
                    flush=True,
                )
                errs = [
                    result[t].get("first_error")
                    for t in ("streams", "rr", "bulk")
                    if result[t].get("first_error")
                ]
                if errs:
                    print(f"  first errors: {errs}", flush=True)
            runs.append(results)
    finally:
        processes.stop_all()
    print()
    print(
        f"median of {args.runs} runs (anchor: median of all its runs); "
        f"window {fr.WINDOW // 1024} KiB, frame {fr.FRAME} bytes; streams={args.streams}, "
        f"rr={50 * args.rr_per_stream} requests, "
        f"bulk={args.bulk_mib} MiB, idle={args.idle}; server on CPU {SERVER_CPU}, client on CPU "
        f"{CLIENT_CPU}; load now {_load()}"
    )
    print(report(runs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line: the comparison (default), or one server or client child."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role")
    run = sub.add_parser("run", help="the interleaved comparison (the default)")
    for p in (parser, run):
        p.add_argument("--runs", type=int, default=3)
        p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
        p.add_argument("--streams", type=int, default=10000)
        p.add_argument("--rr-per-stream", type=int, default=2000)
        p.add_argument("--bulk-mib", type=int, default=1024)
        p.add_argument("--idle", type=int, default=4000)
        p.add_argument("--json", default="")
        p.add_argument("--frame", type=int, default=16384, help="largest data frame, bytes")
    server = sub.add_parser("server")
    server.add_argument("candidate", choices=(ANCHOR, *CANDIDATES))
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--sink-port", type=int, required=True)
    client = sub.add_parser("client")
    client.add_argument("candidate", choices=(ANCHOR, *CANDIDATES))
    client.add_argument("test", choices=("streams", "rr", "bulk", "memory"))
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--sink-port", type=int, required=True)
    client.add_argument("--streams", type=int, default=10000)
    client.add_argument("--rr-per-stream", type=int, default=2000)
    client.add_argument("--bulk-mib", type=int, default=1024)
    client.add_argument("--idle", type=int, default=4000)
    client.add_argument("--ready-file", default="")
    client.add_argument("--go-file", default="")
    args = parser.parse_args(argv)
    if args.role == "server":
        return server_child(args)
    if args.role == "client":
        return client_child(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())

"""
What TLS costs the gateway, beside stunnel's server in the same run: CPU per full TLS 1.3
handshake, per resumed one, per TLS session, per GiB, and memory per idle TLS connection.
A companion of C{bench/profile_session.py}; not part of the benchmark figures.

    .venv/bin/python bench/profile_tls.py handshake            # CPU per handshake, 3 runs
    .venv/bin/python bench/profile_tls.py handshake --profile cprofile   # + where it goes
    .venv/bin/python bench/profile_tls.py bulk                 # CPU per GiB, one stream
    .venv/bin/python bench/profile_tls.py memory --conns 2000,8000   # RSS per idle TLS relay
    .venv/bin/python bench/profile_tls.py memory --burst 1048576     # ... after 1 MiB echoed

The gateway is the real one (C{twistd -n netguard}, C{paths.py}'s benchmark configuration
with C{greeting_delay = 0} and one C{[[tls_listen]]}, every check as shipped, logging every
session) and stunnel4 is run as an operator would (C{paths.py}'s options), both serving the
same self-signed EC P-256 certificate with the same TLS 1.3 suite (TLS_AES_128_GCM_SHA256)
and group (X25519); each is pinned alone on CPU 1, the client (Python's C{ssl}, blocking
sockets in threads) and the backends on CPU 0. The figure is the server's own CPU time
(utime + stime from C{/proc/<pid>/stat}) over the timed window less its idle CPU, divided by
the count; the cases of one run are interleaved (gateway, stunnel, gateway, ...) and the
median of the runs is printed with the load average of each.

Handshake cases (C{handshake}):

  - C{gw-hs}: connect, full TLS 1.3 handshake, read the greeting, close;
  - C{gw-hs-resumed}: the same, resuming the previous connection's session (ECDHE again);
  - C{gw-session}: full handshake, greeting, SCRAM-SHA-256-PLUS (the client caches its salted
    password and checks the server's signature), C{OPEN echo}, 16 bytes echoed, close;
  - C{st-hs}, C{st-hs-resumed}: stunnel: connect, handshake (full, resumed), 16 bytes echoed
    through its backend, close.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import resource
import shutil
import signal
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import loadgen  # noqa: E402
import paths as pathmod  # noqa: E402
import profile_session  # noqa: E402
from procs import Processes, Server, free_port, group_memory  # noqa: E402

#: The payload echoed in a session.
PAYLOAD = profile_session.PAYLOAD

#: Bound on one blocking socket operation, seconds.
IO_TIMEOUT = 15.0

#: The TLS 1.3 suite and group both servers are held to.
SUITE = "TLS_AES_128_GCM_SHA256"
GROUP = "X25519"


# -- servers ------------------------------------------------------------------------------------


def gateway_config(cert: str, key: str, port: int, extra: str = "", conns: int = 0) -> str:
    """
    The gateway's configuration: C{paths.py}'s, without its greeting delay, with one TLS
    listener and its caps raised above C{conns}.
    """
    text = pathmod.NETGUARD_CONFIG
    if conns:
        for name in ("max_connections", "max_unauthenticated", "max_relays", "per_source_max"):
            head, _, rest = text.partition(f"\n{name} = ")
            text = head + f"\n{name} = {conns + 64}\n" + rest.split("\n", 1)[1]
    return (
        "listen = []\n" + text + "[limits]\ngreeting_delay = 0\n[[tls_listen]]\n"
        f'endpoint = "tcp:{port}:interface=127.0.0.1"\n'
        f'cert_file = "{cert}"\nkey_file = "{key}"\n{extra}'
    )


def start_gateway(
    args: argparse.Namespace,
    setup: pathmod.Setup,
    processes: Processes,
    backend: int,
    label: str,
    extra: str = "",
    conns: int = 0,
    cprofile: str | None = None,
) -> tuple[Server, int]:
    """
    Start a TLS gateway (profile_session's C{_gateway} child) pinned to the server CPU.

    @return: the server and its TLS port.
    """
    state = tempfile.mkdtemp(prefix=f"state-{label}-", dir=setup.work)
    port = free_port()
    config = os.path.join(state, "bench.toml")
    with open(config, "w") as f:
        f.write(gateway_config(setup.cert, setup.key, port, extra, conns))
    twistd_args = [
        "-n", "--pidfile=", "--logger", "netguard.log.text_stdout_observer", "netguard",
        "--config", config, "--state-dir", state, "--users", setup.users_file,
        "--service", f"echo=tcp:host=127.0.0.1:port={backend}",
    ]  # fmt: skip
    child = [sys.executable, profile_session.__file__, "_gateway"]
    if cprofile:
        child += ["--cprofile", cprofile]
    server = processes.start(
        f"gateway-{label}", [*child, "--", *twistd_args], args.server_cpu,
        cwd=state, env=dict(os.environ, PYTHONPATH=os.path.abspath(args.tree)),
    )  # fmt: skip
    processes.wait_listening(server, port, timeout=30)
    return server, port


def start_stunnel(
    args: argparse.Namespace, setup: pathmod.Setup, processes: Processes, backend: int, label: str
) -> tuple[Server, int]:
    """
    Start a stunnel4 server in front of C{backend}, pinned to the server CPU, with the
    options of C{paths.py} and the suite and group of the gateway.
    """
    port = free_port()
    conf = os.path.join(setup.work, f"stunnel-{label}.conf")
    with open(conf, "w") as f:
        f.write(
            "foreground = yes\npid =\nsyslog = no\ndebug = 4\n"
            f"[server]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{backend}\n"
            f"cert = {setup.cert}\nkey = {setup.key}\n"
            f"ciphersuites = {SUITE}\ncurves = {GROUP}\n"
        )
    binary = shutil.which("stunnel4") or "stunnel"
    server = processes.start(f"stunnel-{label}", [binary, conf], args.server_cpu)
    processes.wait_listening(server, port)
    return server, port


def start_echo(args: argparse.Namespace, processes: Processes, label: str) -> int:
    """
    Start profile_session's TCP echo backend on the client CPU.

    @return: its port.
    """
    port = free_port()
    echo = processes.start(
        f"echo-{label}",
        [sys.executable, profile_session.__file__, "_echo", "--port", str(port)],
        args.client_cpu,
    )
    processes.wait_listening(echo, port)
    return port


def start_backend(args: argparse.Namespace, processes: Processes, label: str) -> int:
    """
    Start C{bench/backend.py} (sink, source) on the client CPU.

    @return: its port.
    """
    port = free_port()
    backend = processes.start(
        f"backend-{label}",
        [sys.executable, os.path.join(HERE, "backend.py"), "--port", str(port)],
        args.client_cpu,
    )
    processes.wait_listening(backend, port)
    return port


# -- the client ---------------------------------------------------------------------------------


def client_context(cafile: str) -> ssl.SSLContext:
    """
    A client context verifying the self-signed certificate, TLS 1.3 only, offering the
    suite and group under test (Python's C{ssl} offers X25519 first).
    """
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


class PlusScram(loadgen.ScramClient):
    """
    SCRAM-SHA-256-PLUS with C{tls-server-end-point} (RFC 5929) from the server certificate
    the client saw; the salted password is cached as in L{loadgen.ScramClient}.
    """

    GS2 = "p=tls-server-end-point,,"

    def plus_first(self) -> tuple[str, str]:
        bare, _ = self.first()
        return bare, self.GS2 + bare

    def plus_final(self, bare: str, server_first: str, cbdata: bytes) -> tuple[str, bytes]:
        """
        @return: (client-final-message bound to C{cbdata}, the server signature we expect).
        """
        return self.final(bare, server_first, self.GS2.encode("ascii") + cbdata)


class Client:
    """
    Blocking TLS connections to one server, with the session to resume kept per thread.
    """

    def __init__(self, port: int, context: ssl.SSLContext, scram: PlusScram | None) -> None:
        self.port = port
        self.context = context
        self.scram = scram
        self.local = threading.local()
        self.resumed = 0
        self.lock = threading.Lock()

    def connect(self, resume: bool) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = getattr(self.local, "session", None) if resume else None
        sock = self.context.wrap_socket(raw, server_hostname="localhost", session=session)
        if sock.session_reused:
            with self.lock:
                self.resumed += 1
        return sock

    def keep(self, sock: ssl.SSLSocket) -> None:
        """Keep the session (the tickets arrive with the first application data read)."""
        self.local.session = sock.session

    @staticmethod
    def line(sock: ssl.SSLSocket, buffer: bytearray) -> bytes:
        while b"\n" not in buffer:
            got = sock.recv(4096)
            if not got:
                raise ConnectionError("closed")
            buffer += got
        index = buffer.index(b"\n")
        line = bytes(buffer[:index]).rstrip(b"\r")
        del buffer[: index + 1]
        return line

    def gateway_handshake(self, resume: bool) -> None:
        """Connect, handshake, read the greeting, close."""
        with self.connect(resume) as sock:
            greeting = self.line(sock, bytearray())
            if not greeting.startswith(b"NETGUARD/1 "):
                raise ValueError(f"not a greeting: {greeting!r}")
            self.keep(sock)

    def gateway_session(self, resume: bool, echo: bool = True) -> ssl.SSLSocket:
        """Handshake, greeting, SCRAM-SHA-256-PLUS, OPEN echo, 16 bytes echoed; open."""
        assert self.scram is not None
        sock = self.connect(resume)
        buffer = bytearray()
        greeting = self.line(sock, buffer)
        if b"SCRAM-SHA-256-PLUS" not in greeting:
            raise ValueError(f"no -PLUS offered: {greeting!r}")
        bare, first = self.scram.plus_first()
        sock.sendall(b"AUTH SCRAM-SHA-256-PLUS " + base64.b64encode(first.encode()) + b"\r\n")
        cont = self.line(sock, buffer)
        if not cont.startswith(b"CONT "):
            raise ValueError(f"expected CONT: {cont!r}")
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        final, expected = self.scram.plus_final(
            bare, base64.b64decode(cont[5:]).decode(), hashlib.sha256(der).digest()
        )
        sock.sendall(b"CONT " + base64.b64encode(final.encode()) + b"\r\n")
        ok = self.line(sock, buffer)
        if (
            not ok.startswith(b"OK ")
            or base64.b64decode(base64.b64decode(ok[3:]).decode()[2:]) != expected
        ):
            raise ValueError(f"authentication: {ok!r}")
        sock.sendall(b"OPEN echo\r\n")
        if self.line(sock, buffer) != b"OK OPEN echo":
            raise ValueError("OPEN refused")
        if echo:
            self.echo(sock, buffer)
        self.keep(sock)
        return sock

    def echo(self, sock: ssl.SSLSocket, buffer: bytearray | None = None) -> None:
        sock.sendall(PAYLOAD)
        got = bytes(buffer or b"")
        while len(got) < len(PAYLOAD):
            more = sock.recv(64)
            if not more:
                raise ConnectionError("closed")
            got += more
        if got != PAYLOAD:
            raise ValueError("echo returned other bytes")

    def gateway_session_closed(self, resume: bool) -> None:
        self.gateway_session(resume).close()

    def stunnel_handshake(self, resume: bool) -> None:
        """Connect, handshake, 16 bytes echoed through stunnel's backend, close."""
        with self.connect(resume) as sock:
            self.echo(sock)
            self.keep(sock)


def drive(
    unit: Callable[[], None], count: int, threads: int, seconds: float
) -> tuple[int, int, float]:
    """
    Run C{count} units, C{threads} at a time, for at most C{seconds}.

    @return: (done, failed, wall seconds).
    """
    done = failed = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    left = [count]
    errors: list[str] = []

    def worker() -> None:
        nonlocal done, failed
        while time.perf_counter() < deadline:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            try:
                unit()
                ok = True
            except (OSError, ValueError) as e:
                ok = False
                if len(errors) < 3:
                    errors.append(f"{type(e).__name__}: {e}")
            with lock:
                done, failed = done + ok, failed + (not ok)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(threads):
            pool.submit(worker)
    if errors:
        sys.stdout.write(f"  errors: {errors}\n")
    return done, failed, time.perf_counter() - started


def timed(args: argparse.Namespace, server: Server, unit: Callable[[], None]) -> dict[str, Any]:
    """
    profile_session's timing (warm-up, idle CPU, timed window) around C{unit}.
    """
    window_args = argparse.Namespace(warmup=args.warmup, sessions=args.count)

    def window(count: int) -> tuple[int, int, float]:
        return drive(unit, count, args.threads, args.seconds)

    return profile_session._timed(window_args, server, window)


# -- modes ----------------------------------------------------------------------------------------


def _report(label: str, r: dict[str, Any], extra: str = "") -> None:
    sys.stdout.write(
        f"  {label:<16} {r['us_per_session']:7.0f} us each ({r['sessions']} done, "
        f"{r['failed']} failed, {r['rate']:.0f}/s, server CPU {r['gateway_cpu_pct']:.0f}%, "
        f"{r['log_lines_per_session']:.1f} log lines each{extra})\n"
    )
    sys.stdout.flush()


def handshake_mode(args: argparse.Namespace, setup: pathmod.Setup) -> dict[str, list[float]]:
    """
    The handshake cases, interleaved, C{--runs} times.
    """
    figures: dict[str, list[float]] = {}
    for run in range(args.runs):
        processes = Processes(setup.work)
        try:
            sys.stdout.write(f"run {run + 1}, load {profile_session._load()}\n")
            for label, figure in _handshake_run(args, setup, processes, f"r{run}").items():
                figures.setdefault(label, []).append(figure)
        finally:
            processes.stop_all()
    return figures


def _handshake_run(
    args: argparse.Namespace, setup: pathmod.Setup, processes: Processes, tag: str
) -> dict[str, float]:
    """
    One run of every handshake case on fresh servers; with C{--profile}, then a cProfile
    window of C{gw-hs}.

    @return: microseconds of server CPU per unit, by case.
    """
    context = client_context(setup.cert)
    echo = start_echo(args, processes, tag)
    prof = os.path.join(setup.work, f"{tag}.prof") if args.profile else None
    gateway, gport = start_gateway(
        args, setup, processes, echo, tag, args.gateway_extra, cprofile=prof
    )
    stunnel, sport = start_stunnel(args, setup, processes, echo, tag)
    gw = Client(gport, context, PlusScram(setup.user, profile_session._read(setup.password_file)))
    st = Client(sport, context, None)
    cases: list[tuple[str, Server, Client, Callable[[], None]]] = [
        ("gw-hs", gateway, gw, lambda: gw.gateway_handshake(False)),
        ("st-hs", stunnel, st, lambda: st.stunnel_handshake(False)),
        ("gw-session", gateway, gw, lambda: gw.gateway_session_closed(False)),
        ("gw-hs-resumed", gateway, gw, lambda: gw.gateway_handshake(True)),
        ("st-hs-resumed", stunnel, st, lambda: st.stunnel_handshake(True)),
        ("gw-session-res", gateway, gw, lambda: gw.gateway_session_closed(True)),
    ]
    figures: dict[str, float] = {}
    for label, server, client, unit in cases:
        client.resumed = 0
        r = timed(args, server, unit)
        share = client.resumed / max(1, r["sessions"] + args.warmup)
        _report(label, r, f", {100 * share:.0f}% resumed")
        figures[label] = r["us_per_session"]
    if prof:
        os.kill(gateway.pid, signal.SIGUSR2)
        drive(lambda: gw.gateway_handshake(False), args.count, args.threads, 60)
        time.sleep(0.5)
        os.kill(gateway.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not os.path.exists(prof) and time.monotonic() < deadline:
            time.sleep(0.1)
        if args.save_profile:
            shutil.copy(prof, args.save_profile)
        sys.stdout.write(profile_session._cprofile_tables(prof, args.top))
    return figures


def _bulk_unit(client: Client, gateway: bool, direction: str, size: int) -> None:
    if gateway:
        sock = client.gateway_session(False, echo=False)
    else:
        sock = client.connect(False)
    with sock:
        chunk = memoryview(os.urandom(1 << 18))
        if direction == "up":
            sock.sendall(b"U" + size.to_bytes(8, "big"))
            left = size
            while left:
                step = min(left, len(chunk))
                sock.sendall(chunk[:step])
                left -= step
            reply = b""
            while len(reply) < 9:
                more = sock.recv(9 - len(reply))
                if not more:
                    raise ConnectionError("closed")
                reply += more
            if reply != b"K" + size.to_bytes(8, "big"):
                raise ValueError(f"sink answered {reply!r}")
        else:
            sock.sendall(b"D" + size.to_bytes(8, "big"))
            left = size
            buffer = bytearray(1 << 18)
            while left:
                got = sock.recv_into(buffer, min(left, len(buffer)))
                if not got:
                    raise ConnectionError("closed")
                left -= got


def bulk_mode(args: argparse.Namespace, setup: pathmod.Setup) -> dict[str, list[float]]:
    """
    CPU per GiB of one stream each way through the gateway and through stunnel.
    """
    figures: dict[str, list[float]] = {}
    context = client_context(setup.cert)
    password = profile_session._read(setup.password_file)
    size = int(args.gib * (1 << 30))
    for run in range(args.runs):
        processes = Processes(setup.work)
        try:
            sys.stdout.write(f"run {run + 1}, load {profile_session._load()}\n")
            backend = start_backend(args, processes, f"b{run}")
            gateway, gport = start_gateway(args, setup, processes, backend, f"b{run}")
            stunnel, sport = start_stunnel(args, setup, processes, backend, f"b{run}")
            # The gateway's service "echo" is the bulk backend here.
            gw = Client(gport, context, PlusScram(setup.user, password))
            st = Client(sport, context, None)
            for direction in ("up", "down"):
                for label, server, client, is_gw in (
                    (f"gw-{direction}", gateway, gw, True),
                    (f"st-{direction}", stunnel, st, False),
                ):
                    _bulk_unit(client, is_gw, direction, 1 << 20)  # warm-up
                    cpu0 = profile_session.cpu_seconds(server.pid)
                    started = time.perf_counter()
                    _bulk_unit(client, is_gw, direction, size)
                    wall = time.perf_counter() - started
                    cpu = profile_session.cpu_seconds(server.pid) - cpu0
                    per_gib = cpu / (size / (1 << 30))
                    sys.stdout.write(
                        f"  {label:<8} {per_gib:6.2f} s CPU/GiB, {size / wall / 1e6:6.0f} MB/s\n"
                    )
                    figures.setdefault(label, []).append(per_gib)
        finally:
            processes.stop_all()
    return figures


def _rss_kib(pid: int) -> int:
    return group_memory(pid).rss


def memory_mode(args: argparse.Namespace, setup: pathmod.Setup) -> dict[str, list[float]]:
    """
    RSS per idle relayed TLS connection (gateway after OPEN echo and 16 bytes echoed), at
    each count of C{--conns}; the gateway is fresh for each count and run.
    """
    figures: dict[str, list[float]] = {}
    for count in (int(c) for c in args.conns.split(",")):
        for run in range(args.runs):
            processes = Processes(setup.work)
            held: list[ssl.SSLSocket] = []
            try:
                per = _memory_run(args, setup, processes, count, held, f"m{count}r{run}")
                figures.setdefault(f"gw-{count}", []).append(per)
            finally:
                for sock in held:
                    sock.close()
                processes.stop_all()
    return figures


def _burst(sock: ssl.SSLSocket, size: int) -> None:
    """
    Echo C{size} bytes through an open session, 64 KiB at a time, before it goes idle.
    """
    block = os.urandom(1 << 16)
    left = size
    while left:
        step = min(left, len(block))
        sock.sendall(block[:step])
        got = 0
        while got < step:
            more = sock.recv(step - got)
            if not more:
                raise ConnectionError("closed")
            got += len(more)
        left -= step


def _memory_run(
    args: argparse.Namespace,
    setup: pathmod.Setup,
    processes: Processes,
    count: int,
    held: list[ssl.SSLSocket],
    tag: str,
) -> float:
    """
    Open C{count} relayed TLS sessions through a fresh gateway into C{held}.

    @return: the gateway's RSS growth per connection held, KiB.
    """
    load = profile_session._load()
    context = client_context(setup.cert)
    echo = start_echo(args, processes, tag)
    gateway, gport = start_gateway(args, setup, processes, echo, tag, args.gateway_extra, count)
    gw = Client(gport, context, PlusScram(setup.user, profile_session._read(setup.password_file)))
    for _ in range(20):  # warm-up: first-use allocations are not per connection
        gw.gateway_session(False).close()
    time.sleep(1.0)
    before = _rss_kib(gateway.pid)
    lock = threading.Lock()

    def one() -> None:
        sock = gw.gateway_session(False)
        with lock:
            held.append(sock)
        _burst(sock, args.burst)

    drive(one, count, args.threads, 600)
    time.sleep(2.0)
    after = _rss_kib(gateway.pid)
    per = (after - before) / max(1, len(held))
    sys.stdout.write(
        f"  {count} held ({len(held)} open): {per:.1f} KiB RSS per idle TLS "
        f"connection (gateway {before} -> {after} KiB), load {load}\n"
    )
    return per


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["handshake", "bulk", "memory"])
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs")
    parser.add_argument("--count", type=int, default=1500, help="timed handshakes per case")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--threads", type=int, default=8, help="client connections at once")
    parser.add_argument("--seconds", type=float, default=120.0, help="bound on one window")
    parser.add_argument("--gib", type=float, default=1.0, help="bulk size per direction")
    parser.add_argument("--conns", default="2000,8000", help="memory: idle connection counts")
    parser.add_argument(
        "--burst", type=int, default=0, help="memory: bytes echoed on each before it idles"
    )
    parser.add_argument("--profile", choices=["cprofile"], help="handshake: profile gw-hs")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--save-profile", help="handshake: keep the cProfile statistics here")
    parser.add_argument(
        "--gateway-extra", default="", help="more keys for the [[tls_listen]] table"
    )
    parser.add_argument(
        "--tree", default=os.path.dirname(HERE), help="the checkout whose netguard to run"
    )
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    args = parser.parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        args.server_cpu = args.client_cpu = None
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="netguard-tls-")
    try:
        setup = pathmod.prepare(work, Processes(work), None, os.path.dirname(sys.executable))
        sys.stdout.write(f"{ssl.OPENSSL_VERSION} (client); suite {SUITE}, group {GROUP}\n")
        mode = {"handshake": handshake_mode, "bulk": bulk_mode, "memory": memory_mode}
        figures = mode[args.mode](args, setup)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write("medians:\n")
    medians = {k: statistics.median(v) for k, v in figures.items()}
    for key, values in figures.items():
        sys.stdout.write(
            f"  {key:<16} {medians[key]:8.1f} (runs: {', '.join(f'{v:.1f}' for v in values)})\n"
        )
    pairs = (
        ("gw-hs", "st-hs"),
        ("gw-session", "st-hs"),
        ("gw-hs-resumed", "st-hs-resumed"),
        ("gw-hs-resumed", "gw-hs"),
        ("gw-session-res", "gw-session"),
        ("gw-up", "st-up"),
        ("gw-down", "st-down"),
    )
    for gw, st in pairs:
        if gw in medians and st in medians:
            sys.stdout.write(f"  ratio {gw} / {st}: {medians[gw] / medians[st]:.2f}x\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""
The paths the benchmark compares. Each is a TCP port on 127.0.0.1 that the load generator
connects to, in front of one backend; every relay process is pinned to the relay CPU.

  direct       the backend itself (no relay)
  netguard     netguard tunnel -> netguard gateway (twistd) -> backend
  gateway      the netguard gateway alone, the load generator speaking NGP/1 itself
  socat        socat TCP-LISTEN:..,fork,reuseaddr TCP:backend
  haproxy      HAProxy in mode tcp (generated configuration)
  portforward  twistd portforward (Twisted's own relay)
  stunnel      stunnel client -> (TLS) -> stunnel server -> backend
  spiped       spiped -e -> (spiped protocol) -> spiped -d -> backend
  netguard-tls netguard tunnel -> (TLS) -> gateway -> backend, and the gateway alone over TLS
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import attrs
from procs import Processes, Server, free_port

#: The gateway's configuration file: only what the benchmark needs to differ from the shipped
#: defaults. Every connection of the benchmark comes from 127.0.0.1, so the per-source limits
#: (32 concurrent, 10/s with a burst of 20 by default: right for the internet, wrong for a
#: load generator) and the global caps are raised above what the benchmark opens; SIGTERM
#: drains for 1 s instead of 30 so stopping is quick. Everything else (greeting delay,
#: overload shedding on event-loop lag, logging of every connection) is as shipped.
NETGUARD_CONFIG = """\
[ops]
shutdown_grace = 1.0
[admission]
max_connections = 8192
max_unauthenticated = 2048
max_relays = 6144
per_source_max = 8192
per_source_rate = 1000000.0
per_source_burst = 1000000
"""

#: Which paths are relays we compare against ("the usual alternatives").
ALTERNATIVES = ("socat", "haproxy", "portforward", "stunnel", "spiped")


@attrs.frozen
class Target:
    """
    One front door to measure.

    @ivar name: key in the results (C{"netguard"}, C{"gateway"}, C{"socat"}...).
    @ivar label: what the report shows.
    @ivar port: the TCP port on 127.0.0.1 the load generator connects to.
    @ivar relays: the relay processes of this path (their CPU and memory are reported).
    @ivar ngp: the load generator's C{--ngp} argument when it must speak NGP/1 itself.
    @ivar kind: C{"direct"}, C{"netguard"} or C{"alternative"}.
    """

    name: str
    label: str
    port: int
    relays: tuple[Server, ...] = ()
    ngp: str | None = None
    kind: str = "alternative"

    @property
    def plain(self) -> bool:
        """
        @return: whether an unmodified client (redis-benchmark) can use it.
        """
        return self.ngp is None


@attrs.frozen
class Setup:
    """
    What every path needs, prepared once per run.

    @ivar work: the run's scratch directory.
    @ivar processes: the run's L{Processes}.
    @ivar relay_cpu: the CPU every relay process is pinned to.
    @ivar venv_bin: the directory of the venv's executables (twistd, netguard).
    @ivar user: the netguard user.
    @ivar password_file: its password (mode 0600).
    @ivar users_file: the netguard users file holding its verifier.
    @ivar cert: a self-signed certificate (PEM) for stunnel.
    @ivar key: its private key (PEM).
    @ivar spiped_key: the spiped shared key file.
    """

    work: str
    processes: Processes
    relay_cpu: int | None
    venv_bin: str
    user: str
    password_file: str
    users_file: str
    cert: str
    key: str
    spiped_key: str


def prepare(work: str, processes: Processes, relay_cpu: int | None, venv_bin: str) -> Setup:
    """
    Create the credentials, certificate and keys the paths need, in C{work}.
    """
    os.umask(0o077)  # keys are written 0600 (the gateway refuses a key others can read)
    password = os.urandom(18).hex()
    password_file = os.path.join(work, "password")
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    users_file = os.path.join(work, "users")
    subprocess.run(
        [os.path.join(venv_bin, "netguard"), "adduser", "bench", "--users", users_file],
        input=password + "\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    )
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    if shutil.which("openssl"):
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
    spiped_key = os.path.join(work, "spiped.key")
    fd = os.open(spiped_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    return Setup(
        work=work,
        processes=processes,
        relay_cpu=relay_cpu,
        venv_bin=venv_bin,
        user="bench",
        password_file=password_file,
        users_file=users_file,
        cert=cert,
        key=key,
        spiped_key=spiped_key,
    )


def _start(setup: Setup, name: str, argv: list[str], port: int, **kw: Any) -> Server:
    server = setup.processes.start(name, argv, setup.relay_cpu, **kw)
    setup.processes.wait_listening(server, port)
    return server


# -- the paths ----------------------------------------------------------------------------------


def start_direct(setup: Setup, backend: int, tag: str) -> list[Target]:
    """
    No relay: the backend's own port.
    """
    return [Target("direct", "direct (no relay)", backend, kind="direct")]


def _netguard(
    setup: Setup,
    backend: int,
    tag: str,
    greeting_delay: float | None,
    suffix: str,
    tls: bool = False,
) -> list[Target]:
    state = os.path.join(setup.work, f"netguard-{tag}{suffix}")
    os.makedirs(state, mode=0o700)
    gateway_port = free_port()
    gateway_client = f"tcp:host=127.0.0.1:port={gateway_port}"
    listen = ["--listen", f"tcp:{gateway_port}:interface=127.0.0.1"]
    tunnel_tls: list[str] = []
    text = NETGUARD_CONFIG
    if greeting_delay is not None:
        text += f"[limits]\ngreeting_delay = {greeting_delay}\n"
    if tls:
        # The hardened TLS listener ([[tls_listen]]) as operators run it. --listen would
        # replace it, so the configuration holds the only listener. The tunnel verifies the
        # gateway against the certificate as its only CA and checks the name it carries.
        listen = []
        text = (
            "listen = []\n" + text + "[[tls_listen]]\n"
            f'endpoint = "tcp:{gateway_port}:interface=127.0.0.1"\n'
            f'cert_file = "{setup.cert}"\nkey_file = "{setup.key}"\n'
        )
        tunnel_tls = ["--ca-file", setup.cert, "--tls-hostname", "localhost"]
    config = os.path.join(state, "bench.toml")
    with open(config, "w") as f:
        f.write(text)
    gateway = _start(
        setup,
        f"netguard-gateway{suffix}",
        [
            os.path.join(setup.venv_bin, "twistd"), "-n", "--pidfile=", "netguard",
            "--config", config, "--state-dir", state, "--users", setup.users_file,
            *listen,
            "--service", f"bench=tcp:host=127.0.0.1:port={backend}",
        ],
        gateway_port,
        cwd=state,
    )  # fmt: skip
    tunnel_port = free_port()
    tunnel = _start(
        setup,
        f"netguard-tunnel{suffix}",
        [
            os.path.join(setup.venv_bin, "netguard"), "tunnel",
            "--gateway", gateway_client,
            "--service", "bench", "--listen", f"tcp:{tunnel_port}:interface=127.0.0.1",
            "--user", setup.user, "--password-file", setup.password_file,
            *tunnel_tls,
        ],
        tunnel_port,
        cwd=state,
    )  # fmt: skip
    note = "" if greeting_delay is None else f", greeting_delay={greeting_delay:g}"
    note += ", TLS" if tls else ""
    ngp = f"bench:{setup.user}:{setup.password_file}"
    if tls:
        ngp += f":{setup.cert}"
    return [
        Target(
            f"netguard{suffix}",
            f"netguard (tunnel + gateway{note})",
            tunnel_port,
            (gateway, tunnel),
            kind="netguard",
        ),
        Target(
            f"gateway{suffix}",
            f"netguard gateway only{note}",
            gateway_port,
            (gateway,),
            ngp=ngp,
            kind="netguard",
        ),
    ]


def start_netguard(setup: Setup, backend: int, tag: str) -> list[Target]:
    """
    C{netguard tunnel} -> gateway -> backend, with the gateway's shipped defaults; and the
    gateway alone (the load generator speaks NGP/1).
    """
    return _netguard(setup, backend, tag, None, "")


def start_netguard_tls(setup: Setup, backend: int, tag: str) -> list[Target]:
    """
    The same over TLS: the gateway listens with C{ssl:} (the stunnel certificate) and the
    tunnel connects with C{tls:}, verifying it.
    """
    return _netguard(setup, backend, tag, None, "-tls", tls=True)


def start_netguard_gd0(setup: Setup, backend: int, tag: str) -> list[Target]:
    """
    The same with C{limits.greeting_delay = 0} (no early-talker detection), to show what the
    greeting delay costs a connection.
    """
    return _netguard(setup, backend, tag, 0.0, "-gd0")


def start_socat(setup: Setup, backend: int, tag: str) -> list[Target]:
    """
    socat, one forked process per connection.
    """
    port = free_port()
    server = _start(
        setup,
        "socat",
        [
            "socat",
            f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=1024",
            f"TCP:127.0.0.1:{backend}",
        ],
        port,
    )
    return [Target("socat", "socat (fork)", port, (server,))]


def start_haproxy(setup: Setup, backend: int, tag: str) -> list[Target]:
    """
    HAProxy, mode tcp, one thread (it runs as many threads as CPUs it may use: one).
    """
    port = free_port()
    config = os.path.join(setup.work, f"haproxy-{tag}.cfg")
    with open(config, "w") as f:
        f.write(
            "global\n"
            "    maxconn 8192\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 5s\n"
            "    timeout client 1h\n"
            "    timeout server 1h\n"
            "    maxconn 8192\n"
            "frontend bench\n"
            f"    bind 127.0.0.1:{port}\n"
            "    default_backend bench\n"
            "backend bench\n"
            f"    server backend 127.0.0.1:{backend}\n"
        )
    server = _start(setup, "haproxy", ["haproxy", "-db", "-f", config], port)
    return [Target("haproxy", "HAProxy (mode tcp)", port, (server,))]


def start_portforward(setup: Setup, backend: int, tag: str) -> list[Target]:
    """
    Twisted's portforward, run by twistd like the gateway.
    """
    port = free_port()
    server = _start(
        setup,
        "portforward",
        [
            os.path.join(setup.venv_bin, "twistd"), "-n", "--pidfile=", "portforward",
            "-p", f"tcp:{port}:interface=127.0.0.1", "-h", "127.0.0.1", "-d", str(backend),
        ],
        port,
        cwd=setup.work,
    )  # fmt: skip
    return [Target("portforward", "Twisted portforward", port, (server,))]


def _stunnel_conf(path: str, body: str) -> str:
    with open(path, "w") as f:
        f.write("foreground = yes\npid =\nsyslog = no\ndebug = 4\n" + body)
    return path


def start_stunnel(setup: Setup, backend: int, tag: str) -> list[Target]:
    """
    stunnel client -> TLS -> stunnel server -> backend (self-signed EC P-256 certificate,
    verified by the client).
    """
    middle, port = free_port(), free_port()
    server_conf = _stunnel_conf(
        os.path.join(setup.work, f"stunnel-server-{tag}.conf"),
        f"[server]\naccept = 127.0.0.1:{middle}\nconnect = 127.0.0.1:{backend}\n"
        f"cert = {setup.cert}\nkey = {setup.key}\n",
    )
    client_conf = _stunnel_conf(
        os.path.join(setup.work, f"stunnel-client-{tag}.conf"),
        f"[client]\nclient = yes\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{middle}\n"
        f"verifyPeer = yes\nCAfile = {setup.cert}\ncheckHost = localhost\n",
    )
    binary = shutil.which("stunnel4") or "stunnel"
    server = _start(setup, "stunnel-server", [binary, server_conf], middle)
    client = _start(setup, "stunnel-client", [binary, client_conf], port)
    return [Target("stunnel", "stunnel pair (TLS)", port, (client, server))]


def start_spiped(setup: Setup, backend: int, tag: str) -> list[Target]:
    """
    spiped -e -> spiped -d -> backend (default handshake, with perfect forward secrecy);
    C{-n 8192} lifts its default limit of 100 connections.
    """
    middle, port = free_port(), free_port()
    common = ["-F", "-n", "8192", "-k", setup.spiped_key]
    server = _start(
        setup,
        "spiped-d",
        ["spiped", "-d", "-s", f"[127.0.0.1]:{middle}", "-t", f"[127.0.0.1]:{backend}", *common],
        middle,
    )
    client = _start(
        setup,
        "spiped-e",
        ["spiped", "-e", "-s", f"[127.0.0.1]:{port}", "-t", f"[127.0.0.1]:{middle}", *common],
        port,
    )
    return [Target("spiped", "spiped pair", port, (client, server))]


@attrs.frozen
class PathDef:
    """
    A path and how to start it.

    @ivar name: its key.
    @ivar binaries: programs it needs (it is skipped, with a note, when one is missing).
    @ivar start: C{start(setup, backend_port, tag)} -> its L{Target}s.
    """

    name: str
    binaries: tuple[str, ...]
    start: Callable[[Setup, int, str], list[Target]]

    def missing(self) -> list[str]:
        """
        @return: the required programs that are not installed.
        """
        return [b for b in self.binaries if not shutil.which(b)]


#: Every path, in report order.
PATHS: tuple[PathDef, ...] = (
    PathDef("direct", (), start_direct),
    PathDef("netguard", (), start_netguard),
    PathDef("socat", ("socat",), start_socat),
    PathDef("haproxy", ("haproxy",), start_haproxy),
    PathDef("portforward", (), start_portforward),
    PathDef("stunnel", ("stunnel4", "openssl"), start_stunnel),
    PathDef("spiped", ("spiped",), start_spiped),
    PathDef("netguard-tls", ("openssl",), start_netguard_tls),
)

#: The variant started for the connection-rate measurement only.
GD0 = PathDef("netguard-gd0", (), start_netguard_gd0)

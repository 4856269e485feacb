"""
Helpers shared by the integration tests: what to do when a real peer is missing (skip on a
developer's machine, fail in CI), free loopback ports, bounded waiting, the real gateway
running in-process, stopping the peer processes a test started, the redis-server command
line, the log's events, client connections from chosen loopback addresses, an echo client,
a raw client that records the greeting, and a real HAProxy in front of the gateway.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest

from netguard.client.protocol import Credentials, NGPClientProtocol
from netguard.config import load_config
from netguard.service import make_service


class PeerUnavailable(Exception):
    """
    A real peer a test needs (a program such as redis-server or haproxy) is not installed or
    did not start, and this is a CI run: the test errors instead of skipping, so a broken
    install step cannot give a green CI.
    """


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """
    Whether this is a CI run: the environment variable C{CI} is C{true} (as CI services and
    C{.ci/run} set it; C{1} and C{yes} count too, in any case).

    @param environ: the environment to look at; C{os.environ} by default.
    """
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() in ("true", "1", "yes")


def peer_unavailable(reason: str, environ: Mapping[str, str] | None = None) -> NoReturn:
    """
    The one answer to a missing or failing real peer: on a developer's machine the test is
    skipped with C{reason}; in CI (see L{in_ci}) it errors with C{reason}.

    @raise SkipTest: outside CI.
    @raise PeerUnavailable: in CI.
    """
    if in_ci(environ):
        raise PeerUnavailable(f"{reason} (CI=true: a missing or failing peer fails the run)")
    raise SkipTest(reason)


def need_peer(program: str, package: str, environ: Mapping[str, str] | None = None) -> str:
    """
    The path of the peer program C{program} (an absolute path, or a name looked up on
    C{PATH}), which must be an executable file; otherwise L{peer_unavailable}.

    @param package: the Debian package that installs it, named in the reason.
    @return: the executable's path.
    """
    path = program if os.path.isabs(program) else shutil.which(program)
    if path is None or not (os.path.isfile(path) and os.access(path, os.X_OK)):
        peer_unavailable(
            f"{program} is not installed (Debian package {package}; "
            "scripts/setup-test-env installs it)",
            environ,
        )
    return path


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@inlineCallbacks
def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.01):
    """
    Wait, letting the reactor run, until C{predicate()} is true; at most C{timeout} seconds.

    @raise AssertionError: if the condition is not reached in time.
    """
    for _ in range(int(timeout / step)):
        if predicate():
            return
        yield deferLater(reactor, step, lambda: None)
    raise AssertionError("condition not reached in time")


class RunningGateway:
    """
    The real gateway service, built as C{twistd netguard} builds it, running in this process
    on the real reactor, with a fresh state directory under /tmp (unix socket paths must stay
    under 108 bytes). Stopped and removed at the test's cleanup.

    Listener strings given in C{overrides} may say C{{dir}} for the temporary directory.

    @ivar service: the L{netguard.service.GatewayService}.
    @ivar dir: the temporary directory (the state directory is C{dir/st}).
    @ivar credentials: the generated user's L{Credentials}, read from what the first run
        showed on its terminal.
    @ivar terminal: that text.
    """

    def __init__(
        self,
        case: Any,
        config_text: str | None = None,
        overrides: dict[str, Any] | None = None,
        prefix: str = "ng-",
    ):
        self.dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        case.addCleanup(shutil.rmtree, self.dir, True)
        path = None
        if config_text is not None:
            path = os.path.join(self.dir, "netguard.toml")
            with open(path, "w") as handle:
                handle.write(config_text)
        self.config_path = path
        self.overrides = {"state_dir": os.path.join(self.dir, "st"), **(overrides or {})}
        if "listen" in self.overrides:  # "{dir}" in a listener stands for this directory
            self.overrides["listen"] = [
                description.replace("{dir}", self.dir) for description in self.overrides["listen"]
            ]
        terminal = io.StringIO()
        self.service = make_service(load_config(path, self.overrides), reactor, terminal=terminal)
        self.service.startService()
        case.addCleanup(self.service.stopService)
        self.terminal = terminal.getvalue()
        user = re.search(r"user:\s+(\S+)", self.terminal)
        password = re.search(r"password:\s+(\S+)", self.terminal)
        assert user is not None and password is not None
        self.credentials = Credentials(user.group(1), password.group(1))

    @property
    def factory(self) -> Any:
        return self.service.factory

    def port(self, index: int = 0) -> int:
        """
        The TCP port of the C{index}th listener.
        """
        return int(self.service.ports[index].getHost().port)

    def idle(self) -> Any:
        """
        Wait until no session is left (so the test ends with a clean reactor).
        """
        return wait_for(lambda: not self.service.factory.sessions)


def stop_process(proc: subprocess.Popen[bytes], log: Any = None) -> None:
    """
    Stop one process a test started, by its PID: SIGTERM, then SIGKILL after 5 s; then close
    its log file, if any.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if log is not None:
        log.close()


def redis_server_argv(redis_server: str, port: int) -> list[str]:
    """
    A redis-server on 127.0.0.1:C{port}, in the foreground, persisting nothing.
    """
    return [
        redis_server,
        "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no", "--daemonize", "no",
    ]  # fmt: skip


class EchoClient(NGPClientProtocol):
    """
    The real client: opens C{service} (C{echo} unless told) and collects what comes back;
    C{done} fires once C{expected} bytes arrived (or the connection closed).
    """

    def __init__(self, credentials: Credentials, expected: int, service: str = "echo") -> None:
        super().__init__(credentials, service, clock=reactor)
        self.expected = expected
        self.received = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def service_data(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(bytes(self.received))

    def service_closed(self, reason: Any) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.received))

    @inlineCallbacks
    def exchange(self, payload: bytes, wait: float = 30.0) -> Any:
        """
        Once connected: wait until the service is open, send C{payload}, wait until as many
        bytes came back (or the connection closed), and close.

        @param wait: the bound on each wait.
        @return: what came back and the client's own address.
        """
        yield self.opened.addTimeout(wait, reactor)
        own = self.transport.getHost()
        self.transport.write(payload)
        received = yield self.done.addTimeout(wait, reactor)
        self.transport.loseConnection()
        return received, own


class EchoProbe(Protocol):
    """
    An application protocol for an echo service reached through an endpoint: sends
    C{payload} on connection and fires L{done} with what came back once as many bytes have
    arrived (then closes), or fails it if the connection ends before.
    """

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.payload) and not self.done.called:
            self.done.callback(self.received)
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            self.done.errback(reason or Failure(ConnectionError("closed")))


def log_events(case: Any) -> list[dict[str, Any]]:
    """
    A list that collects, in order, every event logged from now until C{case}'s cleanup.
    """
    events: list[dict[str, Any]] = []
    observer: Any = events.append  # an ILogObserver
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def clients_aborted_at_cleanup(case: Any, gateway: RunningGateway) -> list[Any]:
    """
    A list for the client protocols a test connects: at C{case}'s cleanup every one still
    connected is aborted, then the wait is for C{gateway} to have no session left.
    """
    clients: list[Any] = []

    @inlineCallbacks
    def close() -> Any:
        for client in clients:
            if client.transport is not None and client.transport.connected:
                client.transport.abortConnection()
        yield gateway.idle()

    case.addCleanup(close)
    return clients


def connect_from(source: str, port: int, protocol: Any, wait: float = 30.0) -> Deferred[Any]:
    """
    Connect C{protocol} from the loopback address C{source} to 127.0.0.1:C{port}.

    @param wait: the bound on the connection attempt.
    """
    endpoint = TCP4ClientEndpoint(
        reactor, "127.0.0.1", port, timeout=wait, bindAddress=(source, 0)
    )
    return connectProtocol(endpoint, protocol)


def listening(port: int) -> bool:
    """
    Whether some socket listens on 127.0.0.1:C{port} (read from C{/proc/net/tcp}, so that the
    check makes no connection through the peer).
    """
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        for row in table.readlines()[1:]:
            fields = row.split()
            if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
                return True
    return False


def start_listening_peer(
    case: Any,
    name: str,
    directory: str,
    config_for: Callable[[int], str],
    argv_for: Callable[[str], list[str]],
    wait: float = 30.0,
) -> int:
    """
    Start a real peer daemon in the foreground on a free loopback port, stopped by PID at
    C{case}'s cleanup: write its configuration for the port, start it, and wait until it
    listens (three tries, as a free port can be taken between the check and the bind).

    @param name: the peer's name, for its files and the reason it did not start.
    @param directory: where its configuration and log go.
    @param config_for: the configuration text for a front port.
    @param argv_for: the command line for a configuration file's path.
    @param wait: seconds to wait for each try.
    @return: the port it listens on.
    @raise PeerUnavailable: in CI when it does not start (a skip elsewhere).
    """
    log_text = ""
    for attempt in range(3):
        front = free_port()
        path = os.path.join(directory, f"{name}-{attempt}.conf")
        with open(path, "w") as handle:
            handle.write(config_for(front))
        log_path = os.path.join(directory, f"{name}-{attempt}.log")
        log = open(log_path, "wb")  # noqa: SIM115 - closed by stop_process at cleanup
        process = subprocess.Popen(
            argv_for(path), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        case.addCleanup(stop_process, process, log)
        for _ in range(int(wait / 0.05)):
            if listening(front) or process.poll() is not None:
                break
            time.sleep(0.05)
        if listening(front) and process.poll() is None:
            return front
        with open(log_path, "rb") as handle:
            log_text = handle.read()[-2000:].decode("utf-8", "replace")
    peer_unavailable(f"{name} did not start: {log_text!r}")


class Probe(Protocol):
    """
    A raw client: writes C{data} (if any) once connected, records what it receives until the
    connection ends.

    @ivar greeted: fires once the gateway's greeting has arrived (errs if the connection
        ends before it).
    @ivar closed: fires with everything received once the connection ends.
    """

    transport: Any

    def __init__(self, data: bytes = b"") -> None:
        self.to_send = data
        self.data = b""
        self.greeted: Deferred[None] = Deferred()
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        if self.to_send:
            self.transport.write(self.to_send)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.greeted.called and self.data.startswith(b"NETGUARD/1 "):
            self.greeted.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.greeted.called:
            self.greeted.errback(AssertionError(f"closed before the greeting: {self.data!r}"))
        self.closed.callback(self.data)


#: The gateway for tests about client addresses: at most one connection per source address
#: (so admission's key shows: a second one from the same address is refused at once), no
#: event-loop-lag shedding (on a loaded machine the shared event loop's lag would refuse
#: their clients).
ONE_PER_SOURCE = """\
[admission]
per_source_max = 1

[overload]
max_lag = "off"
"""

#: The real HAProxy (Debian package C{haproxy}).
HAPROXY = "/usr/sbin/haproxy"


def haproxy_tcp_config(
    front: int, back: int, server: str = "", timeout: int = 60, check: bool = False
) -> str:
    """
    HAProxy's configuration for a plain TCP proxy from 127.0.0.1:C{front} to the gateway at
    127.0.0.1:C{back}.

    @param server: the options of the server line (the PROXY header it sends, its source
        address, health checks).
    @param timeout: the client and server timeouts, in seconds.
    @param check: whether to bound health checks (C{timeout check 10s}).
    """
    check_line = "    timeout check 10s\n" if check else ""
    server_line = f"server netguard 127.0.0.1:{back} {server}".rstrip()
    return (
        "global\n"
        "    maxconn 64\n"
        "\n"
        "defaults\n"
        "    mode tcp\n"
        "    timeout connect 10s\n"
        f"    timeout client {timeout}s\n"
        f"    timeout server {timeout}s\n"
        f"{check_line}"
        "\n"
        "frontend clients\n"
        f"    bind 127.0.0.1:{front}\n"
        "    default_backend gateway\n"
        "\n"
        "backend gateway\n"
        f"    {server_line}\n"
    )


def start_haproxy(
    case: Any,
    directory: str,
    config_for: Callable[[int], str],
    wait: float = 30.0,
    name: str = "haproxy",
) -> int:
    """
    Start the real HAProxy in the foreground (C{-db}) with the configuration
    C{config_for(front)} on a free loopback port, stopped by PID at C{case}'s cleanup (see
    L{start_listening_peer}); its files are C{directory/name-<try>.conf} and C{.log}.

    @return: the port it listens on.
    @raise PeerUnavailable: in CI when it is missing or does not start (a skip elsewhere).
    """
    haproxy = need_peer(HAPROXY, "haproxy")
    return start_listening_peer(
        case, name, directory, config_for, lambda path: [haproxy, "-db", "-f", path], wait
    )

"""
Helpers shared by the integration tests: free loopback ports, bounded waiting, the real
gateway running in-process, stopping the peer processes a test started, the redis-server
command line, and an echo client.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater

from netguard.client.protocol import Credentials, NGPClientProtocol
from netguard.config import load_config
from netguard.service import make_service


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
    The real client: opens C{echo} and collects what comes back; C{done} fires once
    C{expected} bytes arrived (or the connection closed).
    """

    def __init__(self, credentials: Credentials, expected: int) -> None:
        super().__init__(credentials, "echo", clock=reactor)
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

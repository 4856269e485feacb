"""
A backend that finishes sending first, over real sockets: its half-close reaches the client
as an end of input, and what the client sends after that still reaches the backend, whole.

The backend is a test peer (a Python socket server started by the test): it sends a seeded
payload, shuts its write side down, then reads until the client's end and writes the count
and SHA-256 of what it read to a file. Twisted's client-endpoint wrapper used to hide the
backend connection's and the NGP/1 client's half-close (L{netguard.wrapped_interfaces}), so
the gateway, and the C{netguard:} endpoint, closed both directions at the backend's FIN.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.integration.test_relay_real import (
    START_DEADLINE,
    WAIT,
    RelayRealTestCase,
    ServiceClient,
    wait_until,
)

#: The backend: C{sendfirst FAMILY ADDRESS SIZE SEED RESULT}.
PEER = r"""
import hashlib, random, socket, sys
family, address, size, seed, result = sys.argv[1:6]
if family == "unix":
    server = socket.socket(socket.AF_UNIX)
    server.bind(address)
else:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
server.listen(4)
print("LISTENING", address if family == "unix" else server.getsockname()[1], flush=True)
conn, _ = server.accept()
conn.sendall(random.Random(int(seed)).randbytes(int(size)))
conn.shutdown(socket.SHUT_WR)
digest, count = hashlib.sha256(), 0
while True:
    data = conn.recv(262144)
    if not data:
        break
    digest.update(data)
    count += len(data)
with open(result + ".part", "w") as handle:
    handle.write(f"{count} {digest.hexdigest()}\n")
import os
os.rename(result + ".part", result)
conn.close()
"""

#: What the backend sends before its FIN, and what the client sends after it.
DOWN = 1 << 20
UP = 3 * (1 << 20)


@implementer(IHalfCloseableProtocol)
class HalfClosingClient(ServiceClient):
    """
    The real NGP/1 client, told of the gateway's half-close (L{eof}).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.eof: Deferred[None] = Deferred()

    def readConnectionLost(self) -> None:
        self.eof.callback(None)

    def writeConnectionLost(self) -> None:
        """Our own half-close went out."""


@implementer(IHalfCloseableProtocol)
class HalfClosingApp(Protocol):
    """
    An application protocol behind the C{netguard:} endpoint: counts what comes and is told
    of the half-close.
    """

    def __init__(self) -> None:
        self.count = 0
        self.hasher = hashlib.sha256()
        self.eof: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        self.hasher.update(data)

    def readConnectionLost(self) -> None:
        self.eof.callback(None)

    def writeConnectionLost(self) -> None:
        """Our own half-close went out."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.eof.called:
            self.eof.errback(reason or Failure(ConnectionError("lost")))
        self.lost.callback(None)


class BackendFinishesFirstTests(RelayRealTestCase):
    """
    The backend half-closes first; the client then sends, and the backend gets every byte.
    """

    def start_sender(self, family: str) -> tuple[str, str]:
        """
        Start the backend peer.

        @return: its endpoint description for the gateway, and its result file.
        """
        result = os.path.join(self.tmp, f"result-{family}")
        address = os.path.join(self.tmp, "backend.sock") if family == "unix" else "-"
        name = f"sendfirst-{family}"
        self.spawn(
            [sys.executable, "-c", PEER, family, address, str(DOWN), str(self.seed), result], name
        )
        log = os.path.join(self.tmp, f"{name}.log")
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            with open(log, "rb") as handle:
                match = re.search(rb"LISTENING (\S+)\n", handle.read())
            if match:
                if family == "unix":
                    return f"unix:path={address}", result
                return f"tcp:host=127.0.0.1:port={int(match.group(1))}", result
            time.sleep(0.02)
        raise AssertionError(f"the backend peer did not start: {self.log_of(name)}")

    def expected_down(self) -> str:
        return hashlib.sha256(random.Random(self.seed).randbytes(DOWN)).hexdigest()

    @inlineCallbacks
    def backend_read(self, result: str) -> Any:
        """
        @return: what the backend read after its FIN: (count, SHA-256).
        """
        yield wait_until(lambda: os.path.exists(result), "the backend's result")
        with open(result) as handle:
            count, digest = handle.read().split()
        return int(count), digest

    @inlineCallbacks
    def through_gateway(self, family: str, kernel_relay: bool) -> Any:
        backend, result = self.start_sender(family)
        self.start_gateway(
            config=(
                "[services.first]\n"
                f'backend = "{backend}"\n'
                'users = ["*"]\n'
                f"kernel_relay = {'true' if kernel_relay else 'false'}\n"
            )
        )
        client = yield self.open("first", HalfClosingClient)
        yield client.eof.addTimeout(WAIT, reactor)
        self.assertEqual(client.count, DOWN)
        self.assertEqual(client.hasher.hexdigest(), self.expected_down())
        upload = random.Random(self.seed + 1).randbytes(UP)
        client.transport.write(upload)
        client.transport.loseConnection()
        count, digest = yield self.backend_read(result)
        self.assertEqual((count, digest), (UP, hashlib.sha256(upload).hexdigest()))

    def test_unix_backend_ordinary_relay(self) -> Any:
        """
        A C{unix:} backend (connected through Twisted's client endpoint) that half-closes
        first, ordinary relay: the client sees the end of input, and its later bytes reach
        the backend.
        """
        return self.through_gateway("unix", kernel_relay=False)

    def test_unix_backend_kernel_relay(self) -> Any:
        """
        The same with the kernel relay (both legs plain sockets).
        """
        return self.through_gateway("unix", kernel_relay=True)

    def test_tcp_backend_kernel_relay(self) -> Any:
        """
        The same with a C{tcp:} backend (connected directly, no endpoint wrapper).
        """
        return self.through_gateway("tcp", kernel_relay=True)

    @inlineCallbacks
    def test_netguard_endpoint_per_connection(self) -> Any:
        """
        Through the C{netguard:} endpoint with C{mux=no} (the carrier over one NGP/1
        connection): the application is told of the backend's half-close, not of a lost
        connection, and what it sends afterwards reaches the backend.
        """
        backend, result = self.start_sender("tcp")
        self.start_gateway([f"first={backend}"])
        password_file = os.path.join(self.tmp, "password")
        with open(os.open(password_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
            handle.write(self.password + "\n")
        endpoint = clientFromString(
            reactor,
            f"netguard:host=127.0.0.1:port={self.port}:service=first:"
            f"user={self.user}:password_file={password_file}:mux=no",
        )
        app = HalfClosingApp()
        yield connectProtocol(endpoint, app)
        yield app.eof.addTimeout(WAIT, reactor)
        self.assertEqual((app.count, app.hasher.hexdigest()), (DOWN, self.expected_down()))
        upload = random.Random(self.seed + 2).randbytes(UP)
        app.transport.write(upload)
        app.transport.loseConnection()
        count, digest = yield self.backend_read(result)
        self.assertEqual((count, digest), (UP, hashlib.sha256(upload).hexdigest()))
        yield app.lost.addTimeout(WAIT, reactor)

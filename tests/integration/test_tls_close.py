"""
TLS connections that end, end: over real loopback sockets, with real TLS clients that answer
the other side's C{close_notify} with their own (Python's C{ssl} module doing C{unwrap()}),
the connection is closed on both sides at once instead of staying half-closed until a write
timeout.

  - the gateway's C{[[tls_listen]]} listener after C{QUIT} and a closing error: the gateway
    closes its side, its active count returns to zero, and forty connections in a row from
    one address all get C{BYE} under the default per-source cap; a refused connection is
    closed before any handshake, at once;
  - the C{netguard:} endpoint with C{tls=1}: the application's C{connectionLost} is called
    after its C{loseConnection};
  - C{netguard tunnel --tls}, the real command in a subprocess: a finished local connection
    leaves no local socket in CLOSE-WAIT.

Write timeouts are set far beyond every wait here (600 s), so that no timeout can end a
connection that the close itself did not end; the waits are hang guards, not measurements.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.client.endpoint import NGPClientEndpoint
from tests import tls_certs
from tests.integration.util import RunningGateway, free_port, stop_process, wait_for

#: The hang guard of one blocking socket operation, in seconds.
GUARD = 30.0
#: The source tree, put first on the tunnel subprocess's path (the venv's copy may be stale).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Outcome:
    """
    What one TLS client saw: the first line, the reply to its line, and whether the gateway
    closed the TCP connection after the client's C{close_notify}.
    """

    def __init__(self) -> None:
        self.first = b""
        self.reply = b""
        self.closed_by_gateway = False

    def __repr__(self) -> str:
        return f"<{self.first!r} {self.reply!r} closed={self.closed_by_gateway}>"


def _read_line(tls: ssl.SSLSocket) -> bytes:
    line = b""
    while not line.endswith(b"\n") and len(line) < 4096:
        chunk = tls.recv(1)
        if not chunk:
            break
        line += chunk
    return line


def tls_session(port: int, cafile: str, line: bytes | None) -> _Outcome:
    """
    One connection as a careful TLS client makes it: read the first line, send C{line}
    after a greeting and read the answer, read to the gateway's C{close_notify}, answer it
    with ours (C{unwrap()}), then wait for the gateway to close TCP (bounded by L{GUARD}).
    """
    outcome = _Outcome()
    context = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
    try:
        tls = context.wrap_socket(raw, server_hostname="localhost")
        outcome.first = _read_line(tls)
        if line is not None and outcome.first.startswith(b"NETGUARD/1 "):
            tls.sendall(line)
            outcome.reply = _read_line(tls)
        while tls.recv(4096):  # to the gateway's close_notify
            pass
        plain = tls.unwrap()  # our close_notify; the gateway's came already
        try:
            outcome.closed_by_gateway = plain.recv(1) == b""
        except TimeoutError:
            outcome.closed_by_gateway = False
    finally:
        raw.close()
    return outcome


def silent_refusal(port: int) -> bytes:
    """
    Connect over plain TCP, send nothing, and read until the gateway closes (a reset counts
    as a close, also one that arrives while C{connect} returns; bounded by L{GUARD}, a
    timeout fails).

    @return: every byte the gateway sent.
    """
    received = b""
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
    except ConnectionResetError:
        return received
    try:
        while len(received) < 4096:
            chunk = raw.recv(4096)
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        raw.close()
    return received


def failed_handshake(port: int, cafile: str) -> str | None:
    """
    A TLS client's connection attempt.

    @return: why its handshake failed, or L{None} if it completed.
    """
    context = ssl.create_default_context(cafile=cafile)
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
    except ConnectionResetError as failure:
        return repr(failure)
    try:
        context.wrap_socket(raw, server_hostname="localhost").close()
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as failure:
        return repr(failure)
    finally:
        raw.close()
    return None


def one_after_another(port: int, cafile: str, line: bytes, count: int) -> list[_Outcome]:
    """
    C{count} L{tls_session}s one at a time; stops at the first one the gateway left open.
    """
    outcomes = []
    for _ in range(count):
        outcome = tls_session(port, cafile, line)
        outcomes.append(outcome)
        if not outcome.closed_by_gateway:
            break
    return outcomes


class TLSGatewayCloseTests(unittest.TestCase):
    """
    The gateway's TLS listener, default per-source cap (32), a generous rate limit (so that
    only the cap can refuse), offences not counted (the error test closes on purpose).
    """

    timeout = 240

    def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="ngtc-", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        cert, key = tls_certs.make_leaf("localhost", extra_names=("127.0.0.1",))
        self.cert_file, key_file = tls_certs.write_identity(directory, "gateway", cert, key)
        self.running = RunningGateway(
            self,
            "listen = []\n"
            "[[tls_listen]]\n"
            'endpoint = "tcp:0:interface=127.0.0.1"\n'
            f'cert_file = "{self.cert_file}"\n'
            f'key_file = "{key_file}"\n'
            "[limits]\n"
            "greeting_delay = 0.01\n"
            "write_timeout = 600.0\n"
            "[admission]\n"
            "per_source_rate = 10000.0\n"
            "per_source_burst = 10000\n"
            'never_penalise = ["127.0.0.0/8"]\n',
        )
        self.tls_port = self.running.port(0)

    def all_gone(self) -> bool:
        """
        No session left and no source counted as active.
        """
        factory = self.running.factory
        return not factory.sessions and factory.admission.snapshot()["active_sources"] == 0

    @inlineCallbacks
    def test_forty_quits_in_a_row_all_get_bye(self) -> Any:
        """
        Forty TLS connect + QUIT + close_notify, one at a time from one address, all get
        BYE and are closed by the gateway; none is left counted against the per-source cap
        (it used to stay until the write timeout: 32 BYE, then ERR BUSY per-source-cap).
        """
        outcomes = yield deferToThread(
            one_after_another, self.tls_port, self.cert_file, b"QUIT\r\n", 40
        )
        self.assertEqual(len(outcomes), 40, outcomes[-1])
        for outcome in outcomes:
            self.assertTrue(outcome.first.startswith(b"NETGUARD/1 "), outcome)
            self.assertEqual(outcome.reply, b"BYE\r\n")
            self.assertTrue(outcome.closed_by_gateway, outcome)
        yield wait_for(self.all_gone, timeout=GUARD)

    @inlineCallbacks
    def test_error_close_ends_the_connection(self) -> Any:
        """
        A line longer than max_line_length (1024) gets ERR LINE_TOO_LONG and a close: the client's
        answering close_notify ends the connection on the gateway's side too.
        """
        outcome = yield deferToThread(
            tls_session, self.tls_port, self.cert_file, b"A" * 2000 + b"\r\n"
        )
        self.assertTrue(outcome.reply.startswith(b"ERR LINE_TOO_LONG"), outcome)
        self.assertTrue(outcome.closed_by_gateway, outcome)
        yield wait_for(self.all_gone, timeout=GUARD)

    @inlineCallbacks
    def test_busy_refusal_ends_the_connection(self) -> Any:
        """
        With the source at its cap, a new connection on the TLS listener is refused before
        any handshake: the gateway sends no byte (no ServerHello, no C{ERR BUSY}: a line
        could only go through a handshake the refused peer controls) and closes at once,
        with no timer: the write timeout is 600 s, far past the hang guard, and no abort
        timer is left in the reactor. A TLS client's handshake fails. Once the held
        connections go, the address is served again, and the QUIT that follows ends cleanly.
        """
        held = yield deferToThread(self.hold, 32)
        try:
            before = set(reactor.getDelayedCalls())
            received = yield deferToThread(silent_refusal, self.tls_port)
            timers = [
                call
                for call in set(reactor.getDelayedCalls()) - before
                if call.active() and "abortConnection" in repr(call)
            ]
            handshake = yield deferToThread(failed_handshake, self.tls_port, self.cert_file)
        finally:
            for sock in held:
                sock.close()
        self.assertEqual(received, b"")
        self.assertEqual(timers, [])
        self.assertIsNotNone(handshake)
        yield wait_for(self.all_gone, timeout=GUARD)
        again = yield deferToThread(tls_session, self.tls_port, self.cert_file, b"QUIT\r\n")
        self.assertEqual(again.reply, b"BYE\r\n")
        self.assertTrue(again.closed_by_gateway, again)

    def hold(self, count: int) -> list[ssl.SSLSocket]:
        """
        C{count} TLS connections that have their greeting and stay open.
        """
        context = ssl.create_default_context(cafile=self.cert_file)
        held: list[ssl.SSLSocket] = []
        for _ in range(count):
            raw = socket.create_connection(("127.0.0.1", self.tls_port), timeout=GUARD)
            tls = context.wrap_socket(raw, server_hostname="localhost")
            held.append(tls)
            greeting = _read_line(tls)
            assert greeting.startswith(b"NETGUARD/1 "), greeting
        return held

    @inlineCallbacks
    def test_netguard_endpoint_tls_reaches_connection_lost(self) -> Any:
        """
        The netguard: endpoint string with tls=1 and mux=no (a TLS connection per
        connection, whose close is what this pins): after the application's loseConnection
        its connectionLost is called, with a clean close (it used to be never called).
        """
        description = (
            f"netguard:host=127.0.0.1:port={self.tls_port}:service=echo:"
            f"user={self.running.credentials.username}:"
            f"password_file={self.password_file()}:tls=1:ca_file={self.cert_file}:"
            "tls_hostname=localhost:mux=no"
        )
        endpoint = clientFromString(reactor, description)
        self.assertIsInstance(endpoint, NGPClientEndpoint)
        app = _EchoThenClose(b"hello over TLS")
        yield connectProtocol(endpoint, app)
        echoed = yield app.echoed
        self.assertEqual(echoed, b"hello over TLS")
        yield wait_for(lambda: app.lost is not None, timeout=GUARD)
        self.assertIsInstance(app.lost.value, ConnectionDone)
        yield wait_for(self.all_gone, timeout=GUARD)

    def password_file(self) -> str:
        path = os.path.join(self.running.dir, "pw")
        if not os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, self.running.credentials.password.encode() + b"\n")
            os.close(fd)
        return path

    @inlineCallbacks
    def test_tunnel_tls_leaves_no_close_wait(self) -> Any:
        """
        The real C{netguard tunnel --tls} (a subprocess): after three finished local
        connections no socket of the tunnel is left in CLOSE-WAIT, neither local nor towards
        the gateway, and the tunnel has ended each connection (the TLS side of each used to
        stay in CLOSE-WAIT until the tunnel's 30 s write timeout).

        The tunnel's write timeout (30 s) cannot be raised from its command line, so the
        bound here is 20 s of wall-clock time: a hang guard that the close, a loopback
        exchange, passes with a wide margin, and that a tunnel waiting for its 30 s timeout
        cannot pass on any machine.
        """
        local_port = free_port()
        log = open(os.path.join(self.running.dir, "tunnel.log"), "wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([REPO, *filter(None, [env.get("PYTHONPATH")])])
        process = subprocess.Popen(
            [
                sys.executable, "-m", "netguard.cli", "tunnel",
                "--gateway", f"tcp:host=127.0.0.1:port={self.tls_port}",
                "--service", "echo",
                "--listen", f"tcp:{local_port}:interface=127.0.0.1",
                "--user", self.running.credentials.username,
                "--password-file", self.password_file(),
                "--tls", "--ca-file", self.cert_file, "--tls-hostname", "localhost",
                "--no-mux",  # a TLS connection per local connection: their closes
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )  # fmt: skip
        self.addCleanup(stop_process, process, log)
        for number in range(3):
            payload = f"ping {number}\n".encode()
            echoed = yield deferToThread(local_exchange, local_port, payload)
            self.assertEqual(echoed, payload)
        # Neither the local sockets nor the tunnel's TLS connections to the gateway (which
        # the gateway closes first) may stay in CLOSE-WAIT; the tunnel logs each end.
        yield within(20, lambda: not close_wait_sockets(local_port, self.tls_port))
        yield within(20, lambda: self.tunnel_closes(log.name) == 3)
        yield wait_for(self.all_gone, timeout=GUARD)
        self.assertIsNone(process.poll())

    def tunnel_closes(self, path: str) -> int:
        """
        How many "tunnel connection closed" lines the tunnel has logged.
        """
        with open(path, "rb") as handle:
            return handle.read().count(b"tunnel connection closed")


@inlineCallbacks
def within(seconds: float, predicate: Callable[[], bool]) -> Any:
    """
    Wait, letting the reactor run, until C{predicate()} is true; at most C{seconds} of
    wall-clock time (L{wait_for} counts its steps, which a loaded machine stretches).

    @raise AssertionError: if the condition is not reached in time.
    """
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        yield deferLater(reactor, 0.05, lambda: None)


def local_exchange(port: int, payload: bytes) -> bytes:
    """
    What a simple local program does through the tunnel: connect (retrying while the tunnel
    starts, bounded), send, read the echo, close.
    """
    for _ in range(int(GUARD / 0.1)):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
            break
        except ConnectionRefusedError:
            time.sleep(0.1)
    else:
        raise AssertionError("the tunnel never listened")
    with sock:
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    return received


def close_wait_sockets(*ports: int) -> list[str]:
    """
    The IPv4 TCP sockets in CLOSE-WAIT (the peer has closed, this end has not) whose local
    or remote port is one of C{ports}, from C{/proc/net/tcp}.
    """
    found = []
    with open("/proc/net/tcp") as table:
        next(table)
        for row in table:
            fields = row.split()
            local, remote, state = fields[1], fields[2], fields[3]
            ends = {int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)}
            if state == "08" and ends & set(ports):
                found.append(row.strip())
    return found


class _EchoThenClose(Protocol):
    """
    The application behind the netguard: endpoint: sends, waits for the echo, closes.
    """

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.echoed: Deferred[bytes] = Deferred()
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.payload) and not self.echoed.called:
            self.echoed.callback(self.received)
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason

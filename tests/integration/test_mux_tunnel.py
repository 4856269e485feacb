"""
End to end over real loopback sockets: C{netguard tunnel}'s L{TunnelFactory} with the
multiplexing L{MuxClientEndpoint} in front of the real gateway (L{RunningGateway}) and a real
redis-server, driven by unmodified programs (redis-benchmark, socat): one login for every
local connection, half-close through a stream, a gateway restart under load.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    clientFromString,
    connectProtocol,
    serverFromString,
)
from twisted.internet.protocol import Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.client.mux_endpoint import MuxClientEndpoint
from netguard.client.tunnel import TunnelFactory
from netguard.config import load_config
from netguard.service import make_service
from tests.integration.test_mux_gateway import tls_gateway
from tests.integration.test_tunnel_real import REDIS_BENCHMARK, REDIS_SERVER, start_redis
from tests.integration.util import (
    RunningGateway,
    free_port,
    peer_unavailable,
    stop_process,
    wait_for,
)

SOCAT = shutil.which("socat")


class RedisPing(Protocol):
    """
    A local program's connection: sends C{PING} each time L{ping} is called; L{replies}
    counts C{+PONG}; L{closed} fires when the connection ends.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def ping(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._waiting.append((self.replies + 1, waiter))
        self.transport.write(b"PING\r\n")  # type: ignore[union-attr]
        return waiter

    @property
    def replies(self) -> int:
        return self.received.count(b"+PONG\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for entry in list(self._waiting):
            if self.replies >= entry[0]:
                self._waiting.remove(entry)
                entry[1].callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        for _, waiter in self._waiting:
            waiter.errback(reason or Failure(ConnectionError("closed")))
        self._waiting = []
        self.closed.callback(None)


class MuxTunnelTests(unittest.TestCase):
    timeout = 180

    def setUp(self) -> Any:
        if not (REDIS_SERVER and REDIS_BENCHMARK):
            peer_unavailable("redis-server/redis-benchmark not installed (Debian: redis-server)")
        self.dir = tempfile.mkdtemp(prefix="ngmt-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.redis_port = start_redis(self, self.dir)
        self.gateway_port = free_port()
        self.gateway = self.start_gateway()
        return self.start_tunnel()

    def start_gateway(self) -> RunningGateway:
        overrides: dict[str, Any] = {
            "listen": [f"tcp:{self.gateway_port}:interface=127.0.0.1"],
            "services": [
                f"redis=tcp:host=127.0.0.1:port={self.redis_port}",
                "echo=builtin:echo",
            ],
        }
        config = "[ops]\nshutdown_grace = 0.5\n[mux]\nopen_rate = 3000\nopen_burst = 256\n"
        return RunningGateway(self, config, overrides=overrides)

    def restart_gateway(self) -> Any:
        """
        A second gateway on the same port, with the first one's users file and its own
        state directory; stopped at cleanup.
        """
        overrides: dict[str, Any] = {
            "state_dir": os.path.join(self.dir, "st2"),
            "users_file": os.path.join(self.gateway.dir, "st", "users"),
            "listen": [f"tcp:{self.gateway_port}:interface=127.0.0.1"],
            "services": [f"redis=tcp:host=127.0.0.1:port={self.redis_port}"],
        }
        service = make_service(load_config(None, overrides), reactor, terminal=io.StringIO())
        service.startService()
        self.addCleanup(service.stopService)
        return service

    @inlineCallbacks
    def start_tunnel(self, service: str = "redis") -> Any:
        self.sock = os.path.join(self.dir, f"{service}.sock")
        self.endpoint = MuxClientEndpoint(
            reactor,
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.gateway_port),
            self.gateway.credentials,
            service,
        )
        self.addCleanup(self.endpoint.close)
        self.tunnel = TunnelFactory(reactor, self.endpoint)
        port = yield serverFromString(reactor, f"unix:{self.sock}:mode=600").listen(self.tunnel)
        self.addCleanup(port.stopListening)
        self.addCleanup(wait_for, lambda: not self.tunnel.connections)
        return self.sock

    def logins(self, service: Any = None) -> int:
        stats = (service or self.gateway.service).factory.stats.snapshot()
        return int(stats.get("auth_ok", 0))

    @inlineCallbacks
    def benchmark(self, *args: str) -> Any:
        out, err, code = yield getProcessOutputAndValue(
            REDIS_BENCHMARK, ["-s", self.sock, "-q", *args]
        )
        self.assertEqual(code, 0, err)
        text = out.decode(errors="replace").replace("\r", "\n")
        return text

    @inlineCallbacks
    def test_redis_benchmark_new_connection_per_request(self) -> Any:
        """
        C{redis-benchmark -k 0} (a new local connection for every request, 1,000 of them
        from 10 clients) completes through the tunnel, and the gateway saw one login and
        one connection for all of them: each local connection was a stream. The session
        paces itself by the gateway's announced C{[mux]} opening bounds (3000/s, 256) and
        the gateway never ends it for opening too fast.
        """
        text = yield self.benchmark("-k", "0", "-n", "1000", "-c", "10", "-t", "ping,get")
        self.assertIn("GET:", text)
        self.assertEqual(self.logins(), 1)
        [login] = self.endpoint.sessions
        self.assertEqual((login.open_rate, login.open_burst), (3000.0, 256))
        stats = self.gateway.factory.stats.snapshot()
        self.assertEqual(stats["connections"], 1)
        self.assertGreaterEqual(stats["streams"], 2000)
        self.assertEqual(self.endpoint.credentials.keys.derivations, 1)

    @inlineCallbacks
    def test_redis_benchmark_fifty_pooled_clients(self) -> Any:
        """
        C{redis-benchmark} with 50 pooled clients (SET and GET, 20,000 requests) completes
        through the tunnel over one gateway login.
        """
        text = yield self.benchmark("-n", "20000", "-c", "50", "-t", "set,get")
        self.assertIn("SET:", text)
        self.assertIn("GET:", text)
        self.assertEqual(self.logins(), 1)
        self.assertEqual(self.gateway.factory.stats.snapshot()["connections"], 1)

    @inlineCallbacks
    def test_gateway_restart_under_load(self) -> Any:
        """
        Five local connections relay through one session; the gateway stops (its drain
        grace of 0.5 s ends the streams): each local connection is closed, none hangs.
        Connections opened while the gateway is down wait; once a new gateway listens on
        the same port (same users), they are carried by a new session and answered.
        """
        local = UNIXClientEndpoint(reactor, self.sock)
        before = []
        for _ in range(5):
            client = yield connectProtocol(local, RedisPing())
            yield client.ping()
            before.append(client)
        self.assertEqual(self.logins(), 1)
        yield self.gateway.service.stopService()
        for client in before:
            yield client.closed
        waiting = []
        for _ in range(3):
            client = yield connectProtocol(local, RedisPing())
            waiting.append((client, client.ping()))
        # Down for at least two refused logins: the connects wait through the backoff.
        yield wait_for(lambda: self.endpoint.logins >= 3)
        self.assertFalse(any(answered.called for _, answered in waiting))
        restarted = self.restart_gateway()
        for client, answered in waiting:
            yield answered
            self.assertEqual(client.replies, 1)
        self.assertEqual(self.logins(restarted), 1)
        for client, _ in waiting:
            client.transport.loseConnection()  # type: ignore[union-attr]
            yield client.closed

    def start_command(self) -> str:
        """
        The real C{netguard tunnel --mux} command to the echo service, as a process of
        its own (stopped by PID at cleanup); returns its unix socket once it listens.
        """
        password_file = os.path.join(self.dir, "pw")
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, self.gateway.credentials.password.encode() + b"\n")
        os.close(fd)
        sock = os.path.join(self.dir, "echo-cmd.sock")
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        log = open(os.path.join(self.dir, "tunnel.log"), "wb")  # noqa: SIM115 - closed at cleanup
        process = subprocess.Popen(
            [
                sys.executable, "-m", "netguard.cli", "tunnel", "--mux",
                "--gateway", f"tcp:host=127.0.0.1:port={self.gateway_port}",
                "--service", "echo", "--listen", f"unix:{sock}:mode=600",
                "--user", self.gateway.credentials.username,
                "--password-file", password_file,
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root,
            env={**os.environ, "PYTHONPATH": root},
        )  # fmt: skip
        self.addCleanup(stop_process, process, log)
        return sock

    @inlineCallbacks
    def test_half_closing_socat_through_the_command(self) -> Any:
        """
        Three runs of socat through the real C{netguard tunnel --mux} command to the echo
        service: each sends 1 MiB and half-closes (stdin's end), gets every byte back and
        then the echo's end of stream (socat exits 0 long before its 60 s -t bound); the
        gateway saw one login for the three.
        """
        if not SOCAT:
            peer_unavailable("socat not installed (Debian: socat)")
        sock = self.start_command()
        yield wait_for(lambda: os.path.exists(sock))
        payload = os.path.join(self.dir, "payload")
        with open(payload, "wb") as handle:
            handle.write(os.urandom(1 << 20))
        for _ in range(3):
            out, err, code = yield getProcessOutputAndValue(
                "/bin/sh", ["-c", f"{SOCAT} -t 60 - UNIX-CONNECT:{sock} < {payload}"]
            )
            self.assertEqual(code, 0, err)
            with open(payload, "rb") as handle:
                self.assertTrue(out == handle.read(), f"echo differs: {len(out)} bytes back")
        self.assertEqual(self.logins(), 1)

    @inlineCallbacks
    def test_endpoint_string_with_mux(self) -> Any:
        """
        From Twisted code, C{netguard:...:mux=yes} gives connections that are streams of
        one session: two connections to redis answer C{PING} over one login.
        """
        password_file = os.path.join(self.dir, "pw-string")
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, self.gateway.credentials.password.encode() + b"\n")
        os.close(fd)
        endpoint = clientFromString(
            reactor,
            f"netguard:host=127.0.0.1:port={self.gateway_port}:service=redis:"
            f"user={self.gateway.credentials.username}:password_file={password_file}:mux=yes",
        )
        self.assertIsInstance(endpoint, MuxClientEndpoint)
        self.addCleanup(endpoint.close)
        clients = []
        for _ in range(2):
            client = yield connectProtocol(endpoint, RedisPing())
            yield client.ping()
            clients.append(client)
        self.assertEqual(self.logins(), 1)
        for client in clients:
            client.transport.loseConnection()  # type: ignore[union-attr]
            yield client.closed


class MuxEndpointOverTLSTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def test_streams_and_session_end_over_tls(self) -> Any:
        """
        Over a TLS listener (login bound to the certificate), two connections of the
        multiplexing endpoint echo their bytes over one login; when the session then ends
        by our go-away, the TLS connection really closes (the gateway sees it gone), though
        the session was the TLS transport's producer.
        """
        gateway, tls = tls_gateway(self)
        endpoint = MuxClientEndpoint(reactor, tls, gateway.credentials, "echo")
        self.addCleanup(endpoint.close)
        apps = []
        for i in range(2):
            app = yield connectProtocol(endpoint, EchoApp())
            app.transport.write(b"%d" % i * 1000)
            apps.append(app)
        for i, app in enumerate(apps):
            yield wait_for(lambda app=app: len(app.received) >= 1000)
            self.assertEqual(bytes(app.received), b"%d" % i * 1000)
            app.transport.loseConnection()
            yield app.closed
        self.assertEqual(gateway.factory.stats.snapshot()["auth_ok"], 1)
        [login] = endpoint.sessions
        assert login.session is not None
        yield wait_for(lambda: login.session is not None and login.session.open_streams == 0)
        login.session.go_away()
        yield gateway.idle()
        self.assertEqual(endpoint.sessions, [])


class EchoApp(Protocol):
    """
    Collects what the echo service returns; L{closed} fires when the stream ends.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)

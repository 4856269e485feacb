"""
Tests for L{netguard.ops.reload}: the real gateway reloads its configuration, users and
certificates in-process, keeping live sessions; bad new files are refused.
"""

from __future__ import annotations

import base64
import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from netguard.auth.users import add_user
from netguard.client.protocol import Credentials, NGPClientProtocol, NGPError
from netguard.ops.reload import Reloader, ReloadRefused
from tests.integration.util import RunningGateway, wait_for


class Collector(NGPClientProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, clock=reactor, **kwargs)
        self.received = b""
        self.waiting: Deferred[bytes] | None = None

    def service_data(self, data):
        self.received += data
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.callback(self.received)


class TaggingBackend(Protocol):
    """
    A backend that answers every chunk it reads with its tag and the chunk (so a client can
    tell which backend it reached), and records its connections.
    """

    def __init__(self, tag: bytes, connections: list[TaggingBackend]) -> None:
        self.tag = tag
        self.connections = connections
        self.open = False

    def connectionMade(self) -> None:
        self.open = True
        self.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(self.tag + data)

    def connectionLost(self, reason: Any = None) -> None:
        self.open = False


class ReloadTests(unittest.TestCase):
    timeout = 60

    def write_config(self, text: str) -> None:
        with open(self.config_file, "w") as handle:
            handle.write(text)

    def setUp(self):
        running = RunningGateway(self, 'listen = ["tcp:0:interface=127.0.0.1"]\n')
        self.config_file = running.config_path
        self.gateway = running.service
        self.gateway.reloader = Reloader(self.gateway, self.config_file, running.overrides)
        self.port = running.port()
        self.credentials = running.credentials

    @inlineCallbacks
    def open(self, service="echo", credentials=None):
        client = Collector(credentials or self.credentials, service)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        yield client.opened
        return client

    @inlineCallbacks
    def echo(self, client, data):
        client.waiting = Deferred()
        client.received = b""
        client.transport.write(data)
        received = yield client.waiting
        while len(received) < len(data):
            client.waiting = Deferred()
            received = yield client.waiting
        return received

    @inlineCallbacks
    def close(self, client):
        client.transport.loseConnection()
        yield wait_for(lambda: not self.gateway.factory.sessions)

    @inlineCallbacks
    def test_new_service_and_live_session_kept(self):
        live = yield self.open()
        self.write_config(
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            '[services.echo]\nbackend = "builtin:echo"\nusers = ["*"]\n'
            '[services.echo2]\nbackend = "builtin:echo"\nusers = ["*"]\n'
        )
        summary = self.gateway.reloader.reload()
        self.assertIn("echo2", summary)
        received = yield self.echo(live, b"still here")
        self.assertEqual(received, b"still here")
        second = yield self.open("echo2")
        live.transport.loseConnection()
        yield self.close(second)

    @inlineCallbacks
    def test_removed_service_refused_for_new_sessions(self):
        self.write_config(
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            '[services.other]\nbackend = "builtin:echo"\nusers = ["*"]\n'
        )
        self.gateway.reloader.reload()
        failure = yield self.assertFailure(self.open("echo"), NGPError)
        self.assertEqual(failure.code, "NO_SUCH_SERVICE")
        yield wait_for(lambda: not self.gateway.factory.sessions)

    @inlineCallbacks
    def test_invalid_config_refused_old_kept(self):
        self.write_config("[limits]\nmax_line_length = 1\n")
        with self.assertRaises(ReloadRefused) as caught:
            self.gateway.reloader.reload()
        self.assertIn("limits.max_line_length", str(caught.exception))
        client = yield self.open("echo")
        yield self.close(client)

    @inlineCallbacks
    def test_new_user_can_log_in_after_reload(self):
        add_user(self.gateway.factory.config.users_file, "carol", "carol's password")
        with self.assertRaises(NGPError):
            yield self.open(credentials=Credentials("carol", "carol's password"))
        yield wait_for(lambda: not self.gateway.factory.sessions)
        self.gateway.reloader.reload()
        client = yield self.open(credentials=Credentials("carol", "carol's password"))
        yield self.close(client)

    def server_first_salt(self, name: str) -> bytes:
        """
        The salt the gateway's server-first-message gives C{name}, read over a real socket.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            reader = raw.makefile("rb")
            greeting = reader.readline()
            assert greeting.startswith(b"NETGUARD/1 "), greeting
            first = base64.b64encode(f"n,,n={name},r=abcdefghijklmnop".encode()).decode()
            raw.sendall(f"AUTH SCRAM-SHA-256 {first}\r\n".encode())
            reply = reader.readline().split()
            assert reply[0] == b"CONT", reply
            fields = dict(f.split("=", 1) for f in base64.b64decode(reply[1]).decode().split(","))
            raw.sendall(b"QUIT\r\n")
            return base64.b64decode(fields["s"])

    @inlineCallbacks
    def test_unknown_names_keep_their_salts_across_users_changes(self):
        names = ("mallory", "eve", "carol")
        salts = lambda: [self.server_first_salt(n) for n in names]  # noqa: E731
        before = yield deferToThread(salts)
        add_user(self.gateway.factory.config.users_file, "carol", "carol's password")
        self.gateway.reloader.reload()
        after = yield deferToThread(salts)
        self.assertEqual(after[:2], before[:2])  # nothing to learn about the other names
        self.assertNotEqual(after[2], before[2])  # carol now has her real salt
        yield wait_for(lambda: not self.gateway.factory.sessions)

    def test_insecure_users_file_refused(self):
        os.chmod(self.gateway.factory.config.users_file, 0o644)
        with self.assertRaises(ReloadRefused):
            self.gateway.reloader.reload()
        self.assertEqual(len(self.gateway.factory.users), 1)

    def test_listener_change_needs_restart(self):
        self.write_config('listen = ["tcp:0:interface=127.0.0.2"]\n')
        summary = self.gateway.reloader.reload()
        self.assertIn("restart needed for: listen", summary)

    def test_restart_needed_reported_on_every_reload(self):
        self.write_config('listen = ["tcp:0:interface=127.0.0.2"]\n')
        self.assertIn("restart needed for: listen", self.gateway.reloader.reload())
        self.assertIn("restart needed for: listen", self.gateway.reloader.reload())

    def start_backend(self, tag: bytes) -> tuple[int, list[TaggingBackend]]:
        """
        A L{TaggingBackend} listening on loopback, stopped at cleanup.

        @return: its port and the list of its connections.
        """
        connections: list[TaggingBackend] = []
        factory = Factory.forProtocol(lambda: TaggingBackend(tag, connections))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, connections

    def configure_echo(self, backend_port: int) -> None:
        """
        Point the C{echo} service at the backend on C{backend_port} and reload.
        """
        self.write_config(
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            f'[services.echo]\nbackend = "tcp:host=127.0.0.1:port={backend_port}"\n'
            'users = ["*"]\n'
        )
        self.gateway.reloader.reload()

    @inlineCallbacks
    def exchange(self, client, data: bytes, expected: bytes):
        """
        Send C{data} through C{client}'s session and wait for C{len(expected)} bytes back.
        """
        client.waiting = Deferred()
        client.received = b""
        client.transport.write(data)
        received = yield client.waiting
        while len(received) < len(expected):
            client.waiting = Deferred()
            received = yield client.waiting
        return received

    @inlineCallbacks
    def test_changed_backend_reached_by_the_next_session(self):
        """
        After a reload moves C{echo} from backend A to backend B, a session opened before
        still talks to A, the next session reaches B, and a reload back to A sends the next
        session to A again (each backend sees exactly the connections it should).
        """
        port_a, seen_by_a = self.start_backend(b"A:")
        port_b, seen_by_b = self.start_backend(b"B:")
        self.configure_echo(port_a)
        before = yield self.open()
        received = yield self.exchange(before, b"one", b"A:one")
        self.assertEqual(received, b"A:one")

        self.configure_echo(port_b)
        received = yield self.exchange(before, b"two", b"A:two")
        self.assertEqual(received, b"A:two")  # the live relay is untouched
        after = yield self.open()
        received = yield self.exchange(after, b"three", b"B:three")
        self.assertEqual(received, b"B:three")

        self.configure_echo(port_a)
        again = yield self.open()
        received = yield self.exchange(again, b"four", b"A:four")
        self.assertEqual(received, b"A:four")
        self.assertEqual((len(seen_by_a), len(seen_by_b)), (2, 1))

        for client in (before, after, again):
            client.transport.loseConnection()
        yield wait_for(lambda: not self.gateway.factory.sessions)
        yield wait_for(lambda: not any(c.open for c in seen_by_a + seen_by_b))

# -*- test-case-name: tests.integration.test_removed_user_real -*-
"""
A user removed from the users file (C{netguard deluser}'s function, then a reload) while
logged in, over real loopback sockets: the connection it authenticated gets no new
C{OPEN} (C{ERR NOT_AUTHORIZED user removed}, then the close), while its relay opened before
the removal goes on.

The gateway is built as C{twistd netguard} builds it and runs in this process; the client
is a raw socket in a thread (a blocking SCRAM login). Every wait is a bounded hang guard.
"""

from __future__ import annotations

import base64
import socket

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from netguard.auth.scram import ClientExchange
from netguard.auth.users import add_user, delete_user
from netguard.ops.reload import Reloader
from tests.integration.util import RunningGateway

USER, PASSWORD = "carol", "carol's password"


class _Client:
    """
    A blocking NGP/1 client on one socket (for a thread).
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.reader = self.sock.makefile("rb")

    def line(self) -> bytes:
        return self.reader.readline().rstrip(b"\r\n")

    def send(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.line()

    def login(self) -> None:
        greeting = self.line()
        assert greeting.startswith(b"NETGUARD/1 "), greeting
        client = ClientExchange(USER, PASSWORD)
        cont = self.send(b"AUTH SCRAM-SHA-256 " + base64.b64encode(client.first().encode()))
        final = client.final(base64.b64decode(cont[5:]).decode())
        ok = self.send(b"CONT " + base64.b64encode(final.encode()))
        assert ok.startswith(b"OK "), ok

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class RemovedUserRealTests(unittest.TestCase):
    """
    A logged-in user removed and the users file reloaded.
    """

    timeout = 60

    def setUp(self) -> None:
        running = RunningGateway(self, 'listen = ["tcp:0:interface=127.0.0.1"]\n')
        self.gateway = running.service
        self.reloader = Reloader(self.gateway, running.config_path, running.overrides)
        self.users_file = self.gateway.factory.config.users_file
        add_user(self.users_file, USER, PASSWORD)
        self.reloader.reload()
        self.port = running.port()

    @inlineCallbacks
    def test_no_new_open_relay_goes_on(self):
        """
        Two connections of the user, one relaying C{echo}, one logged in and idle; the user
        is removed and the file reloaded: the idle one's C{OPEN echo} is answered
        C{ERR NOT_AUTHORIZED user removed} and closed; the relay still echoes.
        """
        relaying, idle = _Client(self.port), _Client(self.port)
        self.addCleanup(relaying.close)
        self.addCleanup(idle.close)
        yield deferToThread(relaying.login)
        opened = yield deferToThread(relaying.send, b"OPEN echo")
        self.assertEqual(opened, b"OK OPEN echo")
        yield deferToThread(idle.login)

        delete_user(self.users_file, USER)
        self.reloader.reload()

        refused = yield deferToThread(idle.send, b"OPEN echo")
        self.assertEqual(refused, b"ERR NOT_AUTHORIZED user removed")
        end = yield deferToThread(idle.reader.read)
        self.assertEqual(end, b"")
        echoed = yield deferToThread(relaying.send, b"still relayed")
        self.assertEqual(echoed, b"still relayed")

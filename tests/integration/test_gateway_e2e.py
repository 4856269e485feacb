"""
End to end: the real gateway service (as C{twistd netguard} builds it) on real loopback TCP
and unix sockets, driven by the real NGP/1 client over the real reactor.
"""

from __future__ import annotations

import hashlib
import os
import random

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from netguard.client.protocol import Credentials, NGPClientProtocol, NGPError
from tests.integration.util import RunningGateway, wait_for


class Collector(NGPClientProtocol):
    """
    A client that collects the service's bytes and fires C{done} once C{expected} arrived.
    """

    def __init__(self, *args, expected=0, **kwargs):
        super().__init__(*args, clock=reactor, **kwargs)
        self.received = bytearray()
        self.expected = expected
        self.done: Deferred[bytes] = Deferred()

    def service_data(self, data):
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(bytes(self.received))

    def service_closed(self, reason):
        if not self.done.called:
            self.done.callback(bytes(self.received))


class RawClient(Protocol):
    """
    A raw socket peer, for the hostile-input paths: records what the gateway says.
    """

    def __init__(self):
        self.data = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.closed.callback(self.data)


class GatewayEndToEndTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        # A greeting delay long enough that the early-talker test cannot race it.
        self.gateway = RunningGateway(
            self,
            "[limits]\ngreeting_delay = 0.5\n",
            {"listen": ["tcp:0:interface=127.0.0.1", "unix:{dir}/ng.sock:mode=600"]},
        )
        self.state = self.gateway.overrides["state_dir"]
        self.sock_path = os.path.join(self.gateway.dir, "ng.sock")
        self.service = self.gateway.service
        self.port = self.gateway.port()
        self.user = self.gateway.credentials.username
        self.password = self.gateway.credentials.password

    def tcp(self):
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)

    @inlineCallbacks
    def echo_session(self, endpoint, size):
        payload = random.Random(size).randbytes(size)
        client = Collector(Credentials(self.user, self.password), "echo", expected=size)
        yield connectProtocol(endpoint, client)
        yield client.opened
        chunks = random.Random(1).sample(range(1, size), k=min(20, size - 1))
        start = 0
        for cut in sorted(chunks) + [size]:
            client.transport.write(payload[start:cut])
            start = cut
        received = yield client.done
        client.transport.loseConnection()
        self.assertEqual(hashlib.sha256(received).hexdigest(), hashlib.sha256(payload).hexdigest())

    def test_first_run_created_users_file_0600_and_password_not_in_it(self):
        users_file = os.path.join(self.state, "users")
        self.assertEqual(os.stat(users_file).st_mode & 0o777, 0o600)
        with open(users_file) as handle:
            self.assertNotIn(self.password, handle.read())

    def test_unix_socket_mode(self):
        self.assertEqual(os.stat(self.sock_path).st_mode & 0o777, 0o600)

    def test_echo_over_tcp(self):
        return self.echo_session(self.tcp(), 1 << 20)

    def test_echo_over_unix_socket(self):
        return self.echo_session(UNIXClientEndpoint(reactor, self.sock_path), 1 << 20)

    @inlineCallbacks
    def test_wrong_password_is_refused(self):
        client = Collector(Credentials(self.user, "not-the-password"), "echo")
        yield connectProtocol(self.tcp(), client)
        failure = yield self.assertFailure(client.opened, NGPError)
        self.assertEqual(failure.code, "AUTH_FAILED")

    @inlineCallbacks
    def test_early_talker_over_real_socket(self):
        peer = RawClient()
        yield connectProtocol(self.tcp(), peer)
        peer.transport.write(b"AUTH SCRAM-SHA-256 x\r\n")
        said = yield peer.closed
        self.assertTrue(said.startswith(b"ERR EARLY_TALKER"), said)

    @inlineCallbacks
    def test_binary_junk_then_flood_is_cut_off(self):
        peer = RawClient()
        yield connectProtocol(self.tcp(), peer)
        yield wait_for(lambda: peer.data.startswith(b"NETGUARD/1"))
        peer.transport.write(b"\x00\xff\xfe junk\r\n")
        yield wait_for(lambda: b"ERR BAD_SYNTAX" in peer.data)
        peer.transport.write(os.urandom(256 * 1024))
        said = yield peer.closed
        lines = said.split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"NETGUARD/1 "))
        self.assertTrue(
            any(
                line.startswith(
                    (b"ERR TOO_MUCH_DATA", b"ERR LINE_TOO_LONG", b"ERR TOO_MANY_LINES")
                )
                for line in lines
            ),
            said,
        )

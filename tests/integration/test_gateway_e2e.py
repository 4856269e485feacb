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
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from netguard.auth.scram import ClientExchange, decode_wire, encode_wire
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


class HostileLoggedInFlooder(RawClient):
    """
    A hostile client with valid credentials: it logs in by hand (SCRAM), then, instead of
    opening a service, sends whatever it is told to.
    """

    @inlineCallbacks
    def login(self, user: str, password: str):
        """
        Wait for the greeting, run SCRAM; return (a Deferred firing with) the final reply.
        """
        yield wait_for(lambda: self.data.endswith(b"\r\n"), timeout=30)
        exchange = ClientExchange(user, password)
        self.data = b""
        self.transport.write(b"AUTH SCRAM-SHA-256 " + encode_wire(exchange.first()) + b"\r\n")
        yield wait_for(lambda: self.data.endswith(b"\r\n"), timeout=30)
        cont, self.data = self.data, b""
        assert cont.startswith(b"CONT "), cont
        final = exchange.final(decode_wire(cont[5:].strip()))
        self.transport.write(b"CONT " + encode_wire(final) + b"\r\n")
        yield wait_for(lambda: self.data.endswith(b"\r\n"), timeout=30)
        reply, self.data = self.data, b""
        if reply.startswith(b"OK "):
            exchange.verify(decode_wire(reply[3:].strip()))
        return reply


def record_events(case: unittest.TestCase) -> list[dict]:
    """
    Every event published in the process during the test.
    """
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


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

    @inlineCallbacks
    def test_logged_in_junk_flood_is_cut_and_the_next_login_is_served(self):
        """
        A hostile client that logs in, then sends 1 MiB of C{a\\r\\n} in one write, is cut
        after 10 error replies and a final C{ERR TOO_MANY_LINES too many errors} (at most
        11 reply lines reach it, whatever the reset after the close lets through); the
        gateway logs ONE C{proto.errors} event with the count, and at once serves a new
        login and echo session.
        """
        events = record_events(self)
        peer = HostileLoggedInFlooder()
        yield connectProtocol(self.tcp(), peer)
        reply = yield peer.login(self.user, self.password)
        self.assertTrue(reply.startswith(b"OK "), reply)
        peer.transport.write(b"a\r\n" * (2**20 // 3))
        said = yield peer.closed
        replies = [line for line in said.split(b"\r\n") if line]
        self.assertLessEqual(len(replies), 11, replies[:20])
        self.assertLessEqual(len(said), 11 * 64)
        self.assertTrue(
            all(
                line
                in (b"ERR UNKNOWN_COMMAND unknown command", b"ERR TOO_MANY_LINES too many errors")
                for line in replies
            ),
            replies[:20],
        )
        [summary] = [e for e in events if e.get("event") == "proto.errors"]
        self.assertEqual((summary["count"], summary["first_code"]), (10, "UNKNOWN_COMMAND"))
        refusals = [e for e in events if e.get("event") == "proto.refuse"]
        self.assertEqual([e["code"] for e in refusals], ["UNKNOWN_COMMAND", "TOO_MANY_LINES"])
        yield self.echo_session(self.tcp(), 4096)

    @inlineCallbacks
    def test_logged_in_ping_flood_is_cut(self):
        """
        Valid commands are bounded too: 1 MiB of C{PING} after login gets at most 32
        C{PONG} and C{ERR TOO_MANY_LINES}, then the connection is closed.
        """
        peer = HostileLoggedInFlooder()
        yield connectProtocol(self.tcp(), peer)
        reply = yield peer.login(self.user, self.password)
        self.assertTrue(reply.startswith(b"OK "), reply)
        peer.transport.write(b"PING\r\n" * (2**20 // 6))
        said = yield peer.closed
        replies = [line for line in said.split(b"\r\n") if line]
        self.assertLessEqual(len(replies), 33)
        self.assertTrue(
            all(
                line in (b"PONG", b"ERR TOO_MANY_LINES too many lines after authentication")
                for line in replies
            ),
            replies[:40],
        )


class PreAuthByteBudgetEndToEndTests(unittest.TestCase):
    """
    C{limits.max_bytes_before_auth} over a real socket: exactly the bound is served, one
    byte more is refused.
    """

    timeout = 60

    def setUp(self):
        # 258 bytes = 43 lines of PING; the line budget is out of the way.
        self.gateway = RunningGateway(
            self,
            "[limits]\ngreeting_delay = 0.3\nmax_bytes_before_auth = 258\n"
            "max_lines_before_auth = 100\n",
            {"listen": ["tcp:0:interface=127.0.0.1"]},
        )
        self.events = record_events(self)

    def too_much_data(self) -> list[dict]:
        return [
            e
            for e in self.events
            if e.get("event") == "proto.refuse" and e.get("code") == "TOO_MUCH_DATA"
        ]

    @inlineCallbacks
    def test_exactly_the_byte_budget_then_one_byte_more(self):
        """
        43 C{PING} lines (exactly 258 bytes) in one write are all answered and nothing is
        refused (the gateway handled the whole write before our 43rd C{PONG} could arrive);
        the next single byte is refused with C{TOO_MUCH_DATA} and the connection is closed.
        """
        peer = RawClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.gateway.port()), peer)
        yield wait_for(lambda: peer.data.startswith(b"NETGUARD/1 ") and b"\r\n" in peer.data)
        peer.transport.write(b"PING\r\n" * 43)
        yield wait_for(lambda: peer.data.count(b"PONG\r\n") == 43, timeout=30)
        self.assertEqual(self.too_much_data(), [])
        self.assertNotIn(b"ERR", peer.data)
        self.assertFalse(peer.closed.called)
        peer.transport.write(b"P")
        said = yield peer.closed
        self.assertTrue(
            said.endswith(b"ERR TOO_MUCH_DATA too much data before authentication\r\n"), said
        )
        [refusal] = self.too_much_data()
        self.assertEqual(refusal["offending"], "P")

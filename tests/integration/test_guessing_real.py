# -*- test-case-name: tests.integration.test_guessing_real -*-
"""
A running gateway over real loopback sockets under two hostile clients: one source that
opens many connections and guesses passwords on all of them (a penalty block ends the
guessing on every connection, not only on new ones), and a flood of early talkers from a
new source address per connection (the log stays bounded, its summaries count the rest).

The gateway is built as C{twistd netguard} builds it and runs in this process; the clients
are raw sockets in a thread, bound to loopback source addresses (each its own source key).
The refusal log's interval is driven by a L{twisted.internet.task.Clock} the test advances,
so the counts cannot depend on how fast the machine is; every wait is a bounded hang guard.
"""

from __future__ import annotations

import base64
import socket
from collections import Counter

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from netguard.auth.scram import ClientExchange
from tests.integration.test_refusals_real import RefusalWatch
from tests.integration.util import RunningGateway

#: The hostile guesser's source address.
GUESSER = "127.77.0.1"

#: The events a connection can log before it authenticates.
PER_CONNECTION = ("proto.early_talker", "proto.refuse", "admission.block", "conn.close")


class _Lines:
    """
    A blocking line reader over a socket (for the client thread).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def line(self) -> bytes | None:
        while b"\n" not in self.buffer:
            try:
                chunk = self.sock.recv(4096)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r")


def guess_on_many(
    port: int, user: str, connections: int, tries: int
) -> tuple[Counter[bytes], bytes]:
    """
    The reviewer's script: open C{connections} connections from L{GUESSER}, read every
    greeting, then try C{tries} wrong passwords on each in turn (stopping on a connection at
    the first answer that is not C{AUTH_FAILED}).

    @return: the last answer of each try, counted; and what a new connection then gets.
    """
    socks = [
        socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(GUESSER, 0))
        for _ in range(connections)
    ]
    answers: Counter[bytes] = Counter()
    try:
        readers = [_Lines(sock) for sock in socks]
        greetings = [reader.line() or b"" for reader in readers]
        assert all(g.startswith(b"NETGUARD/1 ") for g in greetings), greetings
        for number, reader in enumerate(readers):
            for attempt in range(tries):
                client = ClientExchange(user, f"wrong guess {number}.{attempt}")
                first = base64.b64encode(client.first().encode())
                reader.sock.sendall(b"AUTH SCRAM-SHA-256 " + first + b"\r\n")
                reply = reader.line() or b"<closed>"
                if reply.startswith(b"CONT "):
                    final = client.final(base64.b64decode(reply[5:]).decode())
                    reader.sock.sendall(b"CONT " + base64.b64encode(final.encode()) + b"\r\n")
                    reply = reader.line() or b"<closed>"
                answers[reply] += 1
                if not reply.startswith(b"ERR AUTH_FAILED"):
                    break
    finally:
        for sock in socks:
            sock.close()
    with socket.create_connection(
        ("127.0.0.1", port), timeout=20, source_address=(GUESSER, 0)
    ) as sock:
        after = _Lines(sock).line() or b"<closed>"
    return answers, after


def early_talkers(port: int, count: int) -> list[bytes]:
    """
    C{count} hostile early talkers, each from its own loopback address, each sending a line
    at once and reading until the gateway closes.

    @return: what each received.
    """
    received = []
    for i in range(count):
        source = f"127.78.{i // 250}.{i % 250 + 1}"
        with socket.create_connection(
            ("127.0.0.1", port), timeout=20, source_address=(source, 0)
        ) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while len(data) < 4096:
                try:
                    chunk = sock.recv(4096)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
            received.append(data)
    return received


class GuessingRealTests(RefusalWatch, unittest.TestCase):
    """
    Hostile clients against a gateway on the real reactor.
    """

    timeout = 120

    def start_gateway(self, config: str = "") -> None:
        self.gateway = RunningGateway(self, 'listen = ["tcp:0:interface=127.0.0.1"]\n' + config)
        self.watch_refusals()

    @inlineCallbacks
    def test_block_ends_guessing_on_open_connections(self):
        """
        Twenty connections from one source (within its burst), greeted, then three wrong
        logins on each: only the three guesses up to the one that starts the block are
        answered C{AUTH_FAILED}; the first C{AUTH} on each of the other nineteen is
        C{ERR BUSY penalised}; a new connection is refused C{ERR BUSY penalised}; the log
        has three C{auth.fail} and one C{admission.block}.
        """
        self.start_gateway()
        user = self.gateway.credentials.username
        answers, after = yield deferToThread(guess_on_many, self.port, user, 20, 3)
        self.assertEqual(
            answers,
            Counter({b"ERR AUTH_FAILED authentication failed": 3, b"ERR BUSY penalised": 19}),
        )
        self.assertEqual(after, b"ERR BUSY penalised")
        self.assertEqual(len(self.named("auth.fail")), 3)
        self.assertEqual(len(self.named("admission.block")), 1)
        yield self.gateway.idle()

    @inlineCallbacks
    def test_rotating_early_talkers_bounded_log(self):
        """
        120 hostile early talkers, a new source address each, with at most 40 lines logged
        one by one per interval: every one is refused C{EARLY_TALKER}, at most 40 of the
        per-connection events are logged, and once the interval ends the summaries count
        each event of all 120.
        """
        self.start_gateway("[limits]\ngreeting_delay = 2.0\n")
        self.gateway.factory.refusal_log.max_logged = 40
        received = yield deferToThread(early_talkers, self.port, 120)
        self.assertEqual(received, [b"ERR EARLY_TALKER you spoke before the greeting\r\n"] * 120)
        yield self.gateway.idle()
        lines = Counter(e["event"] for e in self.events if e.get("event") in PER_CONNECTION)
        self.assertEqual(sum(lines.values()), 40)
        self.log_clock.advance(10.0)
        unlogged: Counter[str] = Counter()
        for summary in self.named("conn.reject.summary"):
            unlogged[summary["of"]] += summary["count"]
        for event in PER_CONNECTION:
            self.assertEqual(lines[event] + unlogged[event], 120, event)

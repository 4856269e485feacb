"""
TLS 1.3 session resumption on the real gateway over loopback: a client resuming its
session still authenticates with SCRAM-SHA-256-PLUS (channel binding verified by the
gateway) and its bytes are relayed; a listener without resumption never resumes; OpenSSL's
own client (C{openssl s_client}) resumes too.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile

import scramp
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests import tls_certs
from tests.integration.util import RunningGateway, peer_unavailable, wait_for

#: Bound on one blocking socket operation of the test client, seconds.
IO_TIMEOUT = 10.0


def _line(sock: ssl.SSLSocket, buffer: bytearray) -> bytes:
    for _ in range(1000):
        if b"\n" in buffer:
            break
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    index = buffer.index(b"\n")
    line = bytes(buffer[:index]).rstrip(b"\r")
    del buffer[: index + 1]
    return line


class ResumingClient:
    """
    Python's own TLS client (blocking, run in a thread), keeping the session of its last
    connection to offer on the next, and logging in with SCRAM-SHA-256-PLUS bound to the
    certificate it saw (from the session when resumed).
    """

    def __init__(self, host: str, port: int, cafile: str, user: str, password: str) -> None:
        self.host = host
        self.port = port
        self.context = ssl.create_default_context(cafile=cafile)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.user = user
        self.password = password
        self.session: ssl.SSLSession | None = None

    def session_through(self, payload: bytes) -> tuple[bool, bytes, bytes]:
        """
        Connect (offering the kept session), log in with channel binding, open C{echo},
        send C{payload} and read it back.

        @return: (whether the session was resumed, the login's last line, the echo).
        """
        raw = socket.create_connection((self.host, self.port), timeout=IO_TIMEOUT)
        with self.context.wrap_socket(
            raw, server_hostname="localhost", session=self.session
        ) as sock:
            resumed = sock.session_reused
            buffer = bytearray()
            greeting = _line(sock, buffer)
            assert b"SCRAM-SHA-256-PLUS" in greeting, greeting
            der = sock.getpeercert(binary_form=True)
            assert der is not None
            binding = ("tls-server-end-point", hashlib.sha256(der).digest())
            scram = scramp.ScramClient(
                ["SCRAM-SHA-256-PLUS"], self.user, self.password, channel_binding=binding
            )
            first = scram.get_client_first().encode()
            sock.sendall(b"AUTH SCRAM-SHA-256-PLUS " + base64.b64encode(first) + b"\r\n")
            cont = _line(sock, buffer)
            assert cont.startswith(b"CONT "), cont
            scram.set_server_first(base64.b64decode(cont[5:]).decode())
            final = scram.get_client_final().encode()
            sock.sendall(b"CONT " + base64.b64encode(final) + b"\r\n")
            ok = _line(sock, buffer)
            if not ok.startswith(b"OK "):
                return resumed, ok, b""
            scram.set_server_final(base64.b64decode(ok[3:]).decode())
            sock.sendall(b"OPEN echo\r\n")
            opened = _line(sock, buffer)
            assert opened == b"OK OPEN echo", opened
            sock.sendall(payload)
            echo = bytes(buffer)
            while len(echo) < len(payload):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                echo += chunk
            self.session = sock.session
            return resumed, ok, echo


class TLSResumptionGatewayTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ngres-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.cert, self.key = tls_certs.make_leaf("localhost")
        self.cert_file, self.key_file = tls_certs.write_identity(
            self.dir, "gateway", self.cert, self.key
        )

        def listener(address: str) -> str:
            return (
                "[[tls_listen]]\n"
                f'endpoint = "tcp:0:interface={address}"\n'
                f'cert_file = "{self.cert_file}"\nkey_file = "{self.key_file}"\n'
                'min_version = "1.3"\n'
            )

        self.running = RunningGateway(
            self,
            "listen = []\n"
            + listener("127.0.0.1")
            + "session_resumption = true\n"
            + listener("127.0.0.2")
            + "[limits]\nhandshake_timeout = 2.0\ngreeting_delay = 0\n",
        )
        self.events: list[dict] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def client(self, index: int) -> ResumingClient:
        credentials = self.running.credentials
        return ResumingClient(
            ("127.0.0.1", "127.0.0.2")[index],
            self.running.port(index),
            self.cert_file,
            credentials.username,
            credentials.password,
        )

    def logins(self) -> list[str]:
        return [e.get("mechanism") for e in self.events if e.get("event") == "auth.ok"]

    @inlineCallbacks
    def test_resumed_session_authenticates_with_channel_binding(self):
        """
        A client that resumes its session (no certificate sent again) still logs in with
        SCRAM-SHA-256-PLUS, the gateway verifying the binding to its certificate, and gets
        its bytes back.
        """
        client = self.client(0)
        payload = os.urandom(50_000)
        resumed, ok, echo = yield deferToThread(client.session_through, payload)
        self.assertFalse(resumed)
        self.assertEqual(echo, payload)
        resumed, ok, echo = yield deferToThread(client.session_through, payload)
        self.assertTrue(resumed)
        self.assertTrue(ok.startswith(b"OK "), ok)
        self.assertEqual(echo, payload)
        self.assertEqual(self.logins(), ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256-PLUS"])
        yield self.running.idle()

    @inlineCallbacks
    def test_established_line_says_whether_resumed(self):
        """
        The gateway's C{tls.established} line says C{resumed} False for the full handshake
        and True for the resumed one.
        """
        client = self.client(0)
        for _ in range(2):
            yield deferToThread(client.session_through, b"x" * 100)
        established = [e for e in self.events if e.get("event") == "tls.established"]
        self.assertEqual([e["resumed"] for e in established], [False, True])
        yield self.running.idle()

    @inlineCallbacks
    def test_listener_without_resumption_never_resumes(self):
        """
        The listener without C{session_resumption} answers the same client's offer with a
        full handshake every time.
        """
        client = self.client(1)
        for _ in range(2):
            resumed, ok, echo = yield deferToThread(client.session_through, b"x" * 100)
            self.assertFalse(resumed)
            self.assertEqual(echo, b"x" * 100)
        self.assertEqual(self.logins(), ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256-PLUS"])
        yield self.running.idle()

    @inlineCallbacks
    def test_ticket_of_one_listener_not_accepted_by_another(self):
        """
        A session from the resuming listener offered to the other listener (same
        certificate, other keys) gets a full handshake there.
        """
        first = self.client(0)
        yield deferToThread(first.session_through, b"x")
        other = self.client(1)
        other.context, other.session = first.context, first.session
        resumed, ok, echo = yield deferToThread(other.session_through, b"y")
        self.assertFalse(resumed)
        self.assertEqual(echo, b"y")
        yield self.running.idle()

    def s_client(self, port: int, *session: str) -> str:
        """
        Run C{openssl s_client} against C{port} until the gateway closes the line phase at
        its deadline (stdin stays open and silent, so it is no early talker).
        """
        command = [
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
            "-CAfile", self.cert_file, "-servername", "localhost", "-ign_eof", *session,
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            out, _ = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        return out.decode("utf-8", "replace")

    @inlineCallbacks
    def test_openssl_client_resumes(self):
        """
        OpenSSL's own client saves the session of a first connection and resumes it on a
        second (C{Reused, TLSv1.3}), which still gets the greeting.
        """
        if shutil.which("openssl") is None:
            peer_unavailable("openssl is not installed (Debian: openssl)")
        saved = os.path.join(self.dir, "session.pem")
        port = self.running.port(0)
        first = yield deferToThread(self.s_client, port, "-sess_out", saved)
        self.assertIn("New, TLSv1.3", first)
        second = yield deferToThread(self.s_client, port, "-sess_in", saved)
        self.assertIn("Reused, TLSv1.3", second)
        self.assertIn("NETGUARD/1 ", second)
        yield wait_for(lambda: not self.running.factory.sessions)

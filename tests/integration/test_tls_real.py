"""
Integration tests for L{netguard.tls} with real TLS on loopback and real tools.

Server side: a Twisted echo server on 127.0.0.1 with netguard's context, probed by
C{openssl s_client} and C{sslscan}: TLS 1.0/1.1 refused and 1.2/1.3 accepted, non-AEAD and
finite-field key exchange refused, no resumption, no renegotiation, plain text and broken
handshakes closed cleanly with no traceback, client certificates required and verified,
reload without dropping a live connection.

Client side: L{netguard.tls.client_tls_options} against a real C{openssl s_server}: pin,
CA file, host name, client certificate, an old-protocol server.

Controls: the same tools, pointed at a deliberately weak C{openssl s_server}, do see TLS 1.0
and session resumption, so their silence about netguard's server means something. Debian's
OpenSSL refuses TLS < 1.2 on the client side by default (C{/etc/ssl/openssl.cnf}); the tools
run with an empty C{OPENSSL_CONF} and C{@SECLEVEL=0} so the refusals come from the server.
OpenSSL 3 also refuses TLS 1.0/1.1 by itself at security level 1 and above, on the server
too, whatever netguard's own floor says: the version tests run netguard's context at level 0
(its cipher list unchanged), so that only netguard's floor can refuse; a control shows that
with that floor lowered the same test sees a different refusal, and with the cipher list
opened too, a TLS 1.0 session.

Every tool runs as a child process of the reactor with a deadline, and is killed by its PID
if it overruns; servers started here are stopped by PID at cleanup.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from netguard import tls
from netguard.tls import (
    ServerTLSSettings,
    TLSVerificationError,
    channel_binding_for,
    client_tls_options,
    load_server_context,
    make_self_signed,
    public_key_pin,
)
from tests import tls_certs
from tests.integration.util import free_port, peer_unavailable, wait_for

OPENSSL = shutil.which("openssl")
SSLSCAN = shutil.which("sslscan")

#: How long any tool may run.
TOOL_TIMEOUT = 30.0
#: How long a connection may take to reach the state a test waits for.
WAIT = 15.0

AEAD = set(tls.TLS12_CIPHERS.split(":")) | set(tls.TLS13_CIPHERSUITES.split(":"))


# -- running tools --------------------------------------------------------------------------------


@attrs.frozen
class ToolResult:
    """
    What a tool printed and how it ended.
    """

    out: bytes
    err: bytes
    code: int | None
    timed_out: bool

    @property
    def text(self) -> str:
        return (self.out + self.err).decode("utf-8", "replace")


class _Collector(ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out = b""
        self.err = b""
        self.ended: Deferred[int | None] = Deferred()

    def connectionMade(self) -> None:
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


@inlineCallbacks
def run_tool(argv: list[str], stdin: bytes = b"", env: dict[str, str] | None = None) -> Any:
    """
    Run a tool under the reactor, at most L{TOOL_TIMEOUT} seconds (then SIGKILL to its PID).

    (C{getProcessOutputAndValue} cannot be bounded: it gives no handle on the process.)
    """
    collector = _Collector(stdin)
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    environment.update(env or {})
    process = reactor.spawnProcess(collector, argv[0], argv, env=environment)
    killed = []

    def kill() -> None:
        killed.append(True)
        try:
            process.signalProcess("KILL")
        except Exception:
            pass

    timer = reactor.callLater(TOOL_TIMEOUT, kill)
    code = yield collector.ended
    if timer.active():
        timer.cancel()
    return ToolResult(collector.out, collector.err, code, bool(killed))


# -- the server under test ------------------------------------------------------------------------


@implementer(IHandshakeListener)
class Echo(Protocol):
    """
    Answers C{ECHO:<data>}; closes after a line containing C{BYE}; cuts a handshake that
    has not finished after C{deadline} seconds (as the gateway's handshake deadline would).
    """

    deadline = 2.0

    def __init__(self, server: EchoFactory) -> None:
        self.server = server
        self.handshake_done = False
        self.timer: Any = None

    def connectionMade(self) -> None:
        self.server.connections.append(self)
        self.timer = reactor.callLater(self.deadline, self.expire)

    def expire(self) -> None:
        self.server.expired += 1
        self.transport.loseConnection()

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()

    def dataReceived(self, data: bytes) -> None:
        self.server.received.append(data)
        self.transport.write(b"ECHO:" + data)
        if b"BYE" in data:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.server.reasons.append(tls.describe_tls_error(reason))


class EchoFactory(Factory):
    def __init__(self) -> None:
        self.connections: list[Echo] = []
        self.reasons: list[str | None] = []
        self.received: list[bytes] = []
        self.expired = 0

    def buildProtocol(self, addr: Any) -> Echo:
        protocol = Echo(self)
        protocol.factory = self
        return protocol


@implementer(IHandshakeListener)
class Client(Protocol):
    """
    A client that records its handshake, data and end.
    """

    def __init__(self, send: bytes = b"") -> None:
        self.send = send
        self.handshake_done = False
        self.data = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        if self.send:
            self.transport.write(self.send)

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


class RealTLSCase(unittest.TestCase):
    """
    Files in a temporary directory; events of the global log collected.
    """

    def setUp(self) -> None:
        if OPENSSL is None:
            peer_unavailable("openssl not installed (Debian package openssl)")
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.empty_conf = tls_certs.write(os.path.join(self.dir, "empty.cnf"), b"")
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def openssl(self, *args: str, stdin: bytes = b"") -> Deferred[ToolResult]:
        assert OPENSSL is not None
        return run_tool([OPENSSL, *args], stdin, {"OPENSSL_CONF": self.empty_conf})

    def assertNoTraceback(self) -> None:
        failures = [e for e in self.events if "log_failure" in e]
        self.assertEqual(failures, [], "a traceback was logged")

    def start_s_server(self, *args: str) -> tuple[int, str, subprocess.Popen[bytes]]:
        """
        Start C{openssl s_server} on a free loopback port; return the port once it accepts.
        """
        assert OPENSSL is not None
        port = free_port()
        log_path = self.path(f"s_server-{port}.log")
        log = open(log_path, "wb")
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-rev", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", ""), "OPENSSL_CONF": self.empty_conf},
        )

        def stop() -> None:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)

        self.addCleanup(stop)
        return port, log_path, process

    @inlineCallbacks
    def s_server(self, *args: str) -> Any:
        port, log_path, process = self.start_s_server(*args)

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"s_server exited: {open(log_path).read()}")
            with open(log_path, "rb") as handle:
                return b"ACCEPT" in handle.read()

        yield wait_for(ready, WAIT)
        return port


class ServerCase(RealTLSCase):
    """
    netguard's server context behind a Twisted echo server.
    """

    server_cert_hostname = "localhost"

    def setUp(self) -> None:
        super().setUp()
        cert, key = tls_certs.make_leaf(self.server_cert_hostname)
        self.cert = cert
        self.cert_file, self.key_file = tls_certs.write_identity(self.dir, "server", cert, key)
        self.ca = tls_certs.make_ca()
        self.ca_file = tls_certs.write(self.path("ca.pem"), tls_certs.cert_pem(self.ca[0]))

    @inlineCallbacks
    def listen(self, **settings: Any) -> Any:
        self.server_tls = load_server_context(
            ServerTLSSettings(self.cert_file, self.key_file, **settings)
        )
        self.echo = EchoFactory()
        endpoint = tls.TLSServerEndpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), self.server_tls
        )
        port = yield endpoint.listen(self.echo)
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        return self.port

    def s_client(self, *args: str, data: bytes = b"ping BYE\n") -> Deferred[ToolResult]:
        return self.openssl(
            "s_client",
            "-connect",
            f"127.0.0.1:{self.port}",
            "-servername",
            "localhost",
            "-ign_eof",
            *args,
            stdin=data,
        )

    @inlineCallbacks
    def wait_closed(self, count: int = 1) -> Any:
        yield wait_for(lambda: len(self.echo.reasons) >= count, WAIT)

    def library_security_level_zero(self, ciphers: str = tls.TLS12_CIPHERS) -> None:
        """
        Put the listening context at OpenSSL security level 0 (with C{ciphers}, netguard's
        own list unless told), so that OpenSSL's own refusal of TLS 1.0/1.1 at level 1 and
        above cannot answer for netguard's floor.
        """
        self.server_tls.context.set_cipher_list(f"{ciphers}:@SECLEVEL=0".encode("ascii"))


def assert_session(case: unittest.TestCase, result: ToolResult, protocol: str) -> None:
    """
    C{openssl s_client} printed a session of C{protocol} (as its C{Protocol  :} line names
    it: C{TLSv1}, C{TLSv1.1}) with a CBC cipher (no AEAD exists before TLS 1.2).
    """
    case.assertRegex(result.text, rf"\n +Protocol +: {re.escape(protocol)}\n")
    case.assertIn("Cipher is ECDHE-ECDSA-AES256-SHA", result.text)


# -- versions, ciphers, groups --------------------------------------------------------------------


class ProtocolVersionTests(ServerCase):
    @inlineCallbacks
    def refused_by_the_floor(self, version_flag: str) -> Any:
        """
        A real client that can speak C{version_flag} (see the controls) tries it against
        netguard's context at security level 0: netguard's floor refuses the version.
        """
        yield self.listen()
        self.library_security_level_zero()
        result = yield self.s_client(version_flag, "-cipher", "DEFAULT:@SECLEVEL=0")
        self.assertNotEqual(result.code, 0)
        self.assertIn("alert protocol version", result.text)
        self.assertNotIn("ECHO:", result.text)
        yield self.wait_closed()
        self.assertEqual(self.echo.reasons, ["unsupported protocol"])
        self.assertNoTraceback()

    def test_tls10_refused(self) -> Any:
        """
        TLS 1.0 is refused as a version (protocol_version alert) by netguard's floor, not by
        OpenSSL's security level.
        """
        return self.refused_by_the_floor("-tls1")

    def test_tls11_refused(self) -> Any:
        """
        TLS 1.1 is refused as a version by netguard's floor, not by OpenSSL's security
        level.
        """
        return self.refused_by_the_floor("-tls1_1")

    @inlineCallbacks
    def test_control_lowered_floor_is_seen(self) -> Any:
        """
        The control for the two tests above: with netguard's floor lowered to TLS 1.0 (its
        options and minimum version, patched here), the same real client is no longer
        refused as a version: netguard's AEAD-only cipher list refuses it instead (so
        those tests fail), and with the cipher list opened too it gets a TLS 1.0 or 1.1
        session with the echo.
        """
        self.patch(
            tls.context,
            "CONTEXT_OPTIONS",
            tls.CONTEXT_OPTIONS & ~(SSL.OP_NO_TLSv1 | SSL.OP_NO_TLSv1_1),
        )
        for flag, name in (("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")):
            yield self.listen()
            self.server_tls.context.set_min_proto_version(SSL.TLS1_VERSION)
            self.library_security_level_zero()
            result = yield self.s_client(flag, "-cipher", "DEFAULT:@SECLEVEL=0")
            self.assertNotIn("alert protocol version", result.text)
            self.assertIn("alert handshake failure", result.text)
            yield self.wait_closed()
            self.assertEqual(self.echo.reasons, ["no shared cipher"])
            yield self.listen()
            self.server_tls.context.set_min_proto_version(SSL.TLS1_VERSION)
            self.library_security_level_zero("ALL")
            result = yield self.s_client(flag, "-cipher", "DEFAULT:@SECLEVEL=0")
            assert_session(self, result, name)
            self.assertIn(b"ECHO:ping BYE", result.out)

    @inlineCallbacks
    def test_tls12_accepted(self) -> Any:
        yield self.listen()
        result = yield self.s_client("-tls1_2")
        self.assertIn("New, TLSv1.2, Cipher is ECDHE-ECDSA-AES128-GCM-SHA256", result.text)
        self.assertIn(b"ECHO:ping BYE", result.out)
        self.assertEqual(result.code, 0)

    @inlineCallbacks
    def test_tls13_accepted(self) -> Any:
        yield self.listen()
        result = yield self.s_client("-tls1_3")
        self.assertIn("New, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256", result.text)
        self.assertIn(b"ECHO:ping BYE", result.out)

    @inlineCallbacks
    def test_default_client_gets_tls13(self) -> Any:
        yield self.listen()
        result = yield self.s_client()
        self.assertIn("New, TLSv1.3", result.text)

    @inlineCallbacks
    def test_tls12_refused_when_13_required(self) -> Any:
        yield self.listen(min_version="1.3")
        result = yield self.s_client("-tls1_2")
        self.assertIn("alert protocol version", result.text)
        self.assertNotIn("ECHO:", result.text)

    @inlineCallbacks
    def test_non_aead_cipher_refused(self) -> Any:
        yield self.listen()
        result = yield self.s_client("-tls1_2", "-cipher", "AES128-SHA")
        self.assertNotEqual(result.code, 0)
        self.assertIn("alert handshake failure", result.text)
        self.assertNotIn("ECHO:", result.text)
        yield self.wait_closed()
        self.assertEqual(self.echo.reasons, ["no shared cipher"])

    @inlineCallbacks
    def test_ecdhe_cbc_cipher_refused(self) -> Any:
        yield self.listen()
        result = yield self.s_client("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256")
        self.assertIn("alert handshake failure", result.text)

    @inlineCallbacks
    def test_finite_field_group_refused(self) -> Any:
        yield self.listen()
        result = yield self.s_client("-tls1_3", "-groups", "ffdhe2048")
        self.assertNotEqual(result.code, 0)
        self.assertNotIn("ECHO:", result.text)

    @inlineCallbacks
    def test_ssl4_server_endpoint_takes_the_creator(self) -> Any:
        self.server_tls = load_server_context(ServerTLSSettings(self.cert_file, self.key_file))
        self.echo = EchoFactory()
        endpoint = SSL4ServerEndpoint(reactor, 0, self.server_tls, interface="127.0.0.1")
        port = yield endpoint.listen(self.echo)
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        result = yield self.s_client("-tls1_3")
        self.assertIn(b"ECHO:ping BYE", result.out)


class ResumptionTests(ServerCase):
    @inlineCallbacks
    def test_no_tls12_resumption(self) -> Any:
        yield self.listen()
        result = yield self.s_client("-tls1_2", "-reconnect")
        handshakes = re.findall(r"^(New|Reused), ", result.out.decode(), re.M)
        self.assertEqual(set(handshakes), {"New"})
        self.assertGreaterEqual(len(handshakes), 2)

    @inlineCallbacks
    def test_no_tls13_resumption(self) -> Any:
        yield self.listen()
        session = self.path("session.pem")
        first = yield self.s_client("-tls1_3", "-sess_out", session)
        self.assertIn(b"ECHO:", first.out)
        self.assertTrue(os.path.exists(session))
        second = yield self.s_client("-tls1_3", "-sess_in", session)
        self.assertIn("New, TLSv1.3", second.text)
        self.assertNotIn("Reused,", second.text)

    @inlineCallbacks
    def test_control_s_server_resumes(self) -> Any:
        # The same s_client sees resumption where there is some.
        port = yield self.s_server("-cert", self.cert_file, "-key", self.key_file)
        result = yield self.openssl(
            "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-reconnect"
        )
        self.assertIn("Reused, TLSv1.2", result.text)


# -- sslscan --------------------------------------------------------------------------------------


def sslscan_sections(output: str) -> dict[str, list[str]]:
    """
    Split sslscan's report into its sections (the indented headings) and their lines.
    """
    sections: dict[str, list[str]] = {}
    current = "preamble"
    for line in output.splitlines():
        if line.startswith("  ") and line.strip().endswith(":") and not line.startswith("   "):
            current = line.strip().rstrip(":")
            sections[current] = []
        elif line.strip():
            sections.setdefault(current, []).append(line.strip())
    return sections


class SSLScanTests(ServerCase):
    def setUp(self) -> None:
        super().setUp()
        if SSLSCAN is None:
            peer_unavailable("sslscan not installed (Debian package sslscan)")

    def sslscan(self, port: int) -> Deferred[ToolResult]:
        assert SSLSCAN is not None
        return run_tool([SSLSCAN, "--no-colour", f"127.0.0.1:{port}"])

    @inlineCallbacks
    def test_protocols_ciphers_and_features(self) -> Any:
        yield self.listen()
        result = yield self.sslscan(self.port)
        self.assertFalse(result.timed_out)
        sections = sslscan_sections(result.out.decode())
        protocols = dict(line.split() for line in sections["SSL/TLS Protocols"])
        self.assertEqual(
            protocols,
            {
                "SSLv2": "disabled",
                "SSLv3": "disabled",
                "TLSv1.0": "disabled",
                "TLSv1.1": "disabled",
                "TLSv1.2": "enabled",
                "TLSv1.3": "enabled",
            },
        )
        ciphers = [
            line.split()
            for line in sections["Supported Server Cipher(s)"]
            if line.startswith(("Accepted", "Preferred"))
        ]
        self.assertGreater(len(ciphers), 0)
        for fields in ciphers:
            self.assertIn(fields[1], ("TLSv1.2", "TLSv1.3"))
            self.assertIn(fields[4], AEAD, f"non-AEAD cipher accepted: {fields}")
        self.assertEqual(sections["TLS renegotiation"], ["Session renegotiation not supported"])
        compression = " ".join(sections["TLS Compression"])
        self.assertNotIn("Compression enabled", compression)
        self.assertTrue(
            "Compression disabled" in compression or "does not support compression" in compression,
            compression,
        )
        for line in sections["Heartbleed"]:
            self.assertIn("not vulnerable", line)
        groups = " ".join(sections.get("Server Key Exchange Group(s)", []))
        self.assertNotIn("ffdhe", groups)
        self.assertIn("x25519", groups)
        self.assertNoTraceback()

    @inlineCallbacks
    def test_control_sslscan_sees_tls10(self) -> Any:
        # sslscan does detect TLS 1.0 where it is on, so its "disabled" above means something.
        port = yield self.s_server(
            "-cert", self.cert_file, "-key", self.key_file, "-tls1", "-cipher", "ALL:@SECLEVEL=0"
        )
        result = yield self.sslscan(port)
        protocols = dict(
            line.split() for line in sslscan_sections(result.out.decode())["SSL/TLS Protocols"]
        )
        self.assertEqual(protocols["TLSv1.0"], "enabled")

    @inlineCallbacks
    def s_client_speaks(self, flag: str, name: str) -> Any:
        port = yield self.s_server(
            "-cert", self.cert_file, "-key", self.key_file, flag, "-cipher", "ALL:@SECLEVEL=0"
        )
        result = yield self.openssl(
            "s_client", "-connect", f"127.0.0.1:{port}", flag, "-cipher", "DEFAULT:@SECLEVEL=0"
        )
        assert_session(self, result, name)

    def test_control_s_client_speaks_tls10(self) -> Any:
        """
        The client of the version tests, as they run it, does speak TLS 1.0 to a server
        that allows it (openssl s_server).
        """
        return self.s_client_speaks("-tls1", "TLSv1")

    def test_control_s_client_speaks_tls11(self) -> Any:
        """
        The client of the version tests, as they run it, does speak TLS 1.1 to a server
        that allows it (openssl s_server).
        """
        return self.s_client_speaks("-tls1_1", "TLSv1.1")


# -- hostile input --------------------------------------------------------------------------------


def real_client_hello() -> bytes:
    """
    The first flight of a real TLS 1.3 client.
    """
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD))
    client.set_connect_state()
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    hello: bytes = client.bio_read(65536)
    return hello


class HostileInputTests(ServerCase):
    @inlineCallbacks
    def raw(self, data: bytes, half_close: bool = False) -> Any:
        client = Client(data)
        protocol = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client
        )
        if half_close:
            protocol.transport.loseWriteConnection()
        yield wait_for(lambda: client.lost is not None, WAIT)
        yield self.wait_closed()
        return client

    @inlineCallbacks
    def test_plain_http_closed_cleanly(self) -> Any:
        yield self.listen()
        client = yield self.raw(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        self.assertEqual(client.data, b"")
        self.assertEqual(self.echo.reasons, ["http request"])
        self.assertEqual(self.echo.received, [])
        self.assertNoTraceback()

    @inlineCallbacks
    def test_plain_text_closed_cleanly(self) -> Any:
        yield self.listen()
        client = yield self.raw(b"AUTH SCRAM-SHA-256 biwsbj1hbGljZSxyPXh5eg==\r\n")
        self.assertEqual(client.data, b"")
        self.assertEqual(self.echo.reasons, ["wrong version number"])
        self.assertNoTraceback()

    @inlineCallbacks
    def test_binary_garbage_closed_cleanly(self) -> Any:
        yield self.listen()
        yield self.raw(bytes(range(256)) * 4)
        self.assertEqual(len(self.echo.reasons), 1)
        self.assertIsNotNone(self.echo.reasons[0])
        self.assertEqual(self.echo.received, [])
        self.assertNoTraceback()

    @inlineCallbacks
    def test_truncated_client_hello_then_eof(self) -> Any:
        yield self.listen()
        hello = real_client_hello()
        self.assertGreater(len(hello), 100)
        yield self.raw(hello[: len(hello) // 2], half_close=True)
        self.assertEqual(self.echo.received, [])
        self.assertEqual(self.echo.expired, 0)
        self.assertNoTraceback()

    @inlineCallbacks
    def test_truncated_client_hello_then_silence(self) -> Any:
        yield self.listen()
        hello = real_client_hello()
        client = yield self.raw(hello[: len(hello) // 2])
        # The protocol's handshake deadline closed it: loseConnection during a handshake
        # aborts when nothing was written yet.
        self.assertEqual(self.echo.expired, 1)
        self.assertEqual(client.data, b"")
        self.assertNoTraceback()

    @inlineCallbacks
    def test_record_header_only(self) -> Any:
        yield self.listen()
        yield self.raw(b"\x16\x03\x01\x40\x00", half_close=True)
        self.assertEqual(self.echo.received, [])
        self.assertNoTraceback()


# -- client certificates --------------------------------------------------------------------------


class MutualTLSTests(ServerCase):
    def client_identity(self, issuer: Any) -> tuple[str, str]:
        cert, key = tls_certs.make_leaf("alice", issuer=issuer, client=True)
        return tls_certs.write_identity(self.dir, "alice", cert, key)

    @inlineCallbacks
    def test_client_without_certificate_refused(self) -> Any:
        yield self.listen(client_ca_file=self.ca_file, require_client_cert=True)
        result = yield self.s_client("-tls1_3")
        self.assertNotIn(b"ECHO:", result.out)
        yield self.wait_closed()
        self.assertEqual(self.echo.reasons, ["peer did not return a certificate"])
        self.assertEqual(self.echo.received, [])
        self.assertNoTraceback()

    @inlineCallbacks
    def test_client_without_certificate_refused_tls12(self) -> Any:
        yield self.listen(client_ca_file=self.ca_file, require_client_cert=True)
        result = yield self.s_client("-tls1_2")
        self.assertNotIn(b"ECHO:", result.out)
        self.assertNotEqual(result.code, 0)

    @inlineCallbacks
    def test_client_with_ca_signed_certificate_accepted(self) -> Any:
        yield self.listen(client_ca_file=self.ca_file, require_client_cert=True)
        cert, key = self.client_identity(self.ca)
        result = yield self.s_client("-tls1_3", "-cert", cert, "-key", key)
        self.assertIn(b"ECHO:ping BYE", result.out)
        yield self.wait_closed()
        self.assertEqual(self.echo.reasons, [None])

    @inlineCallbacks
    def test_client_certificate_subject_visible_while_connected(self) -> Any:
        yield self.listen(client_ca_file=self.ca_file, require_client_cert=True)
        cert, key = self.client_identity(self.ca)
        creator = client_tls_options(
            "localhost",
            pin_sha256=public_key_pin(self.cert),
            client_cert=cert,
            client_key=key,
        )
        client = Client(b"hello")
        yield connectProtocol(
            wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)), client
        )
        yield wait_for(lambda: client.data == b"ECHO:hello", WAIT)
        info = tls.connection_info(self.echo.connections[0].transport)
        assert info is not None
        self.assertEqual(info.peer_subject, "CN=alice")
        client_transport: Any = client.transport
        client_transport.loseConnection()
        yield self.wait_closed()

    @inlineCallbacks
    def test_client_certificate_from_other_ca_refused(self) -> Any:
        yield self.listen(client_ca_file=self.ca_file, require_client_cert=True)
        cert, key = self.client_identity(tls_certs.make_ca("evil"))
        result = yield self.s_client("-tls1_3", "-cert", cert, "-key", key)
        self.assertNotIn(b"ECHO:", result.out)
        yield self.wait_closed()
        self.assertIn("certificate verify failed", self.echo.reasons[0] or "")


def served_certificate(result: ToolResult) -> x509.Certificate:
    """
    The server certificate C{s_client} printed.
    """
    match = re.search(
        rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", result.out, re.S
    )
    assert match is not None, result.text
    return x509.load_pem_x509_certificate(match.group(0))


# -- reload ---------------------------------------------------------------------------------------


class ReloadTests(ServerCase):
    @inlineCallbacks
    def test_reload_keeps_live_connection_and_serves_new_certificate(self) -> Any:
        yield self.listen()
        new_cert, new_key = tls_certs.make_leaf("localhost")
        pins = f"{public_key_pin(self.cert)},{public_key_pin(new_cert)}"
        live = Client(b"one")
        yield connectProtocol(
            wrapClientTLS(
                client_tls_options("localhost", pin_sha256=pins),
                TCP4ClientEndpoint(reactor, "127.0.0.1", self.port),
            ),
            live,
        )
        yield wait_for(lambda: live.data == b"ECHO:one", WAIT)
        old_binding = channel_binding_for(live.transport, "client")

        tls_certs.write(self.cert_file, tls_certs.cert_pem(new_cert))
        tls_certs.write(self.key_file, tls_certs.key_pem(new_key), 0o600)
        self.server_tls.reload()

        live_transport: Any = live.transport
        live_transport.write(b"two")
        yield wait_for(lambda: live.data == b"ECHO:oneECHO:two", WAIT)
        self.assertIsNone(live.lost)
        self.assertEqual(channel_binding_for(live.transport, "client"), old_binding)
        self.assertEqual(
            channel_binding_for(self.echo.connections[0].transport, "server"), old_binding
        )

        result = yield self.s_client("-tls1_3")
        served = served_certificate(result)
        self.assertEqual(served, new_cert)
        live_transport.loseConnection()
        yield wait_for(lambda: live.lost is not None, WAIT)

    @inlineCallbacks
    def test_bad_reload_keeps_serving_old_certificate(self) -> Any:
        yield self.listen()
        tls_certs.write(
            self.cert_file, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        self.assertRaises(tls.TLSConfigError, self.server_tls.reload)
        result = yield self.s_client("-tls1_3")
        self.assertIn(b"ECHO:ping BYE", result.out)
        self.assertEqual(served_certificate(result), self.cert)
        failed = [e for e in self.events if e.get("event") == "tls.reload_failed"]
        self.assertEqual(len(failed), 1)


# -- the client against openssl s_server ----------------------------------------------------------


class ClientTests(RealTLSCase):
    def setUp(self) -> None:
        super().setUp()
        self.cert_file = self.path("cert.pem")
        self.key_file = self.path("key.pem")
        self.info = make_self_signed("localhost", self.key_file, self.cert_file, days=2)
        with open(self.cert_file, "rb") as handle:
            self.cert = x509.load_pem_x509_certificate(handle.read())

    @inlineCallbacks
    def connect(self, port: int, creator: Any) -> Any:
        client = Client(b"hello\n")
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        yield connectProtocol(endpoint, client)
        yield wait_for(lambda: client.lost is not None or client.data.endswith(b"\n"), WAIT)
        if client.lost is None:
            client_transport: Any = client.transport
            client_transport.loseConnection()
            yield wait_for(lambda: client.lost is not None, WAIT)
        return client

    @inlineCallbacks
    def test_pin_computed_like_openssl(self) -> Any:
        result = yield run_tool(
            [
                "/bin/sh",
                "-c",
                f"{OPENSSL} x509 -in {self.cert_file} -pubkey -noout"
                f" | {OPENSSL} pkey -pubin -outform der"
                f" | {OPENSSL} dgst -sha256 -binary | base64",
            ]
        )
        self.assertEqual(result.out.decode().strip(), self.info.pin_sha256)
        self.assertEqual(self.info.pin_sha256, public_key_pin(self.cert))

    @inlineCallbacks
    def test_right_pin_connects(self) -> Any:
        port = yield self.s_server("-cert", self.cert_file, "-key", self.key_file)
        client = Client(b"hello\n")
        endpoint = wrapClientTLS(
            client_tls_options("localhost", pin_sha256=self.info.pin_sha256),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        )
        yield connectProtocol(endpoint, client)
        yield wait_for(lambda: client.data == b"olleh\n", WAIT)
        der = self.cert.public_bytes(serialization.Encoding.DER)
        self.assertEqual(
            channel_binding_for(client.transport, "client"), tls.server_end_point_binding(der)
        )
        client_transport: Any = client.transport
        client_transport.loseConnection()
        yield wait_for(lambda: client.lost is not None, WAIT)

    @inlineCallbacks
    def test_wrong_pin_fails(self) -> Any:
        port = yield self.s_server("-cert", self.cert_file, "-key", self.key_file)
        wrong = public_key_pin(tls_certs.make_leaf()[0])
        client = yield self.connect(port, client_tls_options("localhost", pin_sha256=wrong))
        self.assertFalse(client.handshake_done)
        self.assertEqual(client.data, b"")
        self.assertIsInstance(client.lost.value, TLSVerificationError)
        self.assertIn("matches no configured pin", client.lost.value.reason)

    @inlineCallbacks
    def test_ca_file_verification_succeeds(self) -> Any:
        port = yield self.s_server("-cert", self.cert_file, "-key", self.key_file)
        client = yield self.connect(port, client_tls_options("localhost", ca_file=self.cert_file))
        self.assertTrue(client.handshake_done)
        self.assertEqual(client.data, b"olleh\n")

    @inlineCallbacks
    def test_hostname_mismatch_fails(self) -> Any:
        port = yield self.s_server("-cert", self.cert_file, "-key", self.key_file)
        client = yield self.connect(
            port, client_tls_options("gateway.example.org", ca_file=self.cert_file)
        )
        self.assertFalse(client.handshake_done)
        self.assertIsInstance(client.lost.value, TLSVerificationError)
        self.assertIn("not valid for 'gateway.example.org'", client.lost.value.reason)

    @inlineCallbacks
    def test_system_roots_refuse_self_signed(self) -> Any:
        port = yield self.s_server("-cert", self.cert_file, "-key", self.key_file)
        client = yield self.connect(port, client_tls_options("localhost"))
        self.assertFalse(client.handshake_done)
        self.assertIn("certificate verify failed", tls.describe_tls_error(client.lost) or "")

    @inlineCallbacks
    def test_old_protocol_server_refused(self) -> Any:
        """
        netguard's client refuses a server that speaks only TLS 1.1 (s_server, which the
        controls show speaking it), as a version, by its own floor.
        """
        port = yield self.s_server(
            "-cert",
            self.cert_file,
            "-key",
            self.key_file,
            "-tls1_1",
            "-cipher",
            "ALL:@SECLEVEL=0",
        )
        creator = client_tls_options("localhost", ca_file=self.cert_file)
        # At OpenSSL security level 0 (netguard's cipher list unchanged), so that only
        # netguard's floor, not OpenSSL's own refusal of TLS 1.1 at level 1, can refuse.
        context: SSL.Context = creator._context
        context.set_cipher_list(f"{tls.TLS12_CIPHERS}:@SECLEVEL=0".encode("ascii"))
        client = yield self.connect(port, creator)
        self.assertFalse(client.handshake_done)
        self.assertEqual(client.data, b"")
        self.assertIn("protocol version", tls.describe_tls_error(client.lost) or "")

    @inlineCallbacks
    def test_client_certificate_for_mtls_server(self) -> Any:
        ca = tls_certs.make_ca()
        ca_file = tls_certs.write(self.path("ca.pem"), tls_certs.cert_pem(ca[0]))
        cert, key = tls_certs.make_leaf("alice", issuer=ca, client=True)
        client_cert, client_key = tls_certs.write_identity(self.dir, "alice", cert, key)
        port = yield self.s_server(
            "-cert", self.cert_file, "-key", self.key_file, "-Verify", "2", "-CAfile", ca_file
        )
        with_cert = yield self.connect(
            port,
            client_tls_options(
                "localhost",
                pin_sha256=self.info.pin_sha256,
                client_cert=client_cert,
                client_key=client_key,
            ),
        )
        self.assertEqual(with_cert.data, b"olleh\n")
        without = yield self.connect(
            port, client_tls_options("localhost", pin_sha256=self.info.pin_sha256)
        )
        self.assertEqual(without.data, b"")
        self.assertIsNotNone(without.lost)

"""
End to end over real loopback sockets, against the real gateway: what the tunnel's client
side refuses or closes. A gateway whose TLS certificate fails verification is refused at
once on the multiplexed path too; a login whose connect failed never stays logged in at
the gateway; the real C{netguard tunnel} command keeps its listener to the user unless told
otherwise (loopback TCP, unix sockets of mode 600; that C{--allow-remote} lets a listener on
every interface through is tested in-process, in L{tests.test_cli_tunnel}, so that no test
listens beyond loopback).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.client.endpoint import NGPClientEndpoint, wrap_tls
from netguard.client.mux_endpoint import MuxClientEndpoint, SessionUnavailable
from netguard.client.protocol import NGPProtocolError
from netguard.tls import public_key_pin
from tests import tls_certs
from tests.integration.util import (
    EchoProbe,
    RunningGateway,
    free_port,
    listening,
    log_events,
    stop_process,
    wait_for,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Silent(Protocol):
    """
    An application protocol that sends nothing and records whether its connection ended.
    """

    lost = False

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True


class MuxTLSVerificationTests(unittest.TestCase):
    """
    The multiplexing endpoint against a real C{[[tls_listen]]} whose certificate fails the
    client's verification: the connect fails at once with the per-connection path's error
    (C{NGPProtocolError}, C{reason="tls-verification"}), after one TLS handshake, and the
    gateway saw no login.
    """

    timeout = 60

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ngtg-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.cert, key = tls_certs.make_leaf("localhost", extra_names=("127.0.0.1",))
        self.cert_file, key_file = tls_certs.write_identity(self.dir, "gateway", self.cert, key)
        self.gateway = RunningGateway(
            self,
            'listen = ["tcp:0:interface=127.0.0.2"]\n'
            "[[tls_listen]]\n"
            'endpoint = "tcp:0:interface=127.0.0.1"\n'
            f'cert_file = "{self.cert_file}"\n'
            f'key_file = "{key_file}"\n',
        )
        self.events = log_events(self)

    @inlineCallbacks
    def refused(self, **tls: str) -> Any:
        plain = TCP4ClientEndpoint(reactor, "127.0.0.1", self.gateway.port(1))
        gateway = wrap_tls(reactor, plain, {"tls": "1", **tls}, default_hostname="localhost")
        endpoint = MuxClientEndpoint(reactor, gateway, self.gateway.credentials, "echo")
        self.addCleanup(endpoint.close)
        error = yield self.assertFailure(connectProtocol(endpoint, EchoProbe(b"x")), Exception)
        self.assertIsInstance(error, NGPProtocolError, repr(error))
        self.assertNotIsInstance(error, SessionUnavailable)
        self.assertEqual(error.reason, "tls-verification")
        self.assertIn("connection closed during the handshake", str(error))
        self.assertEqual(endpoint.logins, 1)
        self.assertEqual([e for e in self.events if e.get("event") == "auth.ok"], [])
        yield self.gateway.idle()
        return error

    @inlineCallbacks
    def test_wrong_pin(self) -> Any:
        """
        A pin that matches another key: refused at once, the verifier's words kept.
        """
        other, _ = tls_certs.make_leaf("localhost")
        error = yield self.refused(pin_sha256=public_key_pin(other))
        self.assertIn("matches no configured pin", str(error))

    @inlineCallbacks
    def test_untrusted_certificate(self) -> Any:
        """
        A CA file that does not hold the gateway's (self-signed) certificate: OpenSSL's
        refusal of the chain is fatal too.
        """
        other, other_key = tls_certs.make_leaf("localhost")
        other_file, _ = tls_certs.write_identity(self.dir, "other", other, other_key)
        error = yield self.refused(ca_file=other_file)
        self.assertIn("certificate verify failed", str(error))

    @inlineCallbacks
    def test_name_mismatch(self) -> Any:
        """
        The right certificate for another name: refused at once.
        """
        error = yield self.refused(ca_file=self.cert_file, tls_hostname="other.example")
        self.assertIn("not valid for 'other.example'", str(error))

    @inlineCallbacks
    def test_control_right_pin_logs_in(self) -> Any:
        """
        The same endpoint with the gateway's own pin carries a stream (the refusals above
        are the verification's, not the set-up's).
        """
        plain = TCP4ClientEndpoint(reactor, "127.0.0.1", self.gateway.port(1))
        gateway = wrap_tls(
            reactor, plain, {"pin_sha256": public_key_pin(self.cert)}, default_hostname="localhost"
        )
        endpoint = MuxClientEndpoint(reactor, gateway, self.gateway.credentials, "echo")
        self.addCleanup(endpoint.close)
        probe = EchoProbe(b"through")
        yield connectProtocol(endpoint, probe)
        self.assertEqual((yield probe.done), b"through")


class MuxClientCertificateRefusedTests(unittest.TestCase):
    """
    The multiplexing endpoint against a real C{[[tls_listen]]} that requires a client
    certificate the client does not have: the gateway's certificate alert fails the connect
    at once (C{NGPProtocolError}, C{reason="tls-refused"}) after one TLS handshake, as on the
    per-connection path, instead of retrying until the session wait runs out.
    """

    timeout = 60

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ngtg-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.cert, key = tls_certs.make_leaf("localhost", extra_names=("127.0.0.1",))
        cert_file, key_file = tls_certs.write_identity(self.dir, "gateway", self.cert, key)
        ca, ca_key = tls_certs.make_leaf("clients")
        ca_file, _ = tls_certs.write_identity(self.dir, "clients", ca, ca_key)
        self.gateway = RunningGateway(
            self,
            'listen = ["tcp:0:interface=127.0.0.2"]\n'
            "[[tls_listen]]\n"
            'endpoint = "tcp:0:interface=127.0.0.1"\n'
            f'cert_file = "{cert_file}"\n'
            f'key_file = "{key_file}"\n'
            f'client_ca_file = "{ca_file}"\n'
            "require_client_cert = true\n",
        )
        self.events = log_events(self)

    def endpoint(self, mux: bool) -> Any:
        plain = TCP4ClientEndpoint(reactor, "127.0.0.1", self.gateway.port(1))
        gateway = wrap_tls(
            reactor, plain, {"pin_sha256": public_key_pin(self.cert)}, default_hostname="localhost"
        )
        if not mux:
            return NGPClientEndpoint(reactor, gateway, self.gateway.credentials, "echo")
        endpoint = MuxClientEndpoint(reactor, gateway, self.gateway.credentials, "echo")
        self.addCleanup(endpoint.close)
        return endpoint

    @inlineCallbacks
    def test_no_client_certificate(self) -> Any:
        """
        No client certificate where the listener requires one: refused at once on both
        paths, the alert's words kept, one login attempt on the multiplexed one.
        """
        for mux in (True, False):
            endpoint = self.endpoint(mux)
            error = yield self.assertFailure(
                connectProtocol(endpoint, EchoProbe(b"x")), NGPProtocolError
            )
            self.assertNotIsInstance(error, SessionUnavailable)
            self.assertEqual(error.reason, "tls-refused", (mux, str(error)))
            self.assertIn("alert certificate required", str(error))
            if mux:
                self.assertEqual(endpoint.logins, 1)
        self.assertEqual([e for e in self.events if e.get("event") == "auth.ok"], [])
        yield self.gateway.idle()


class AbandonedLoginRealTests(unittest.TestCase):
    """
    A gateway endpoint that fails C{connect} while its TCP connection goes on (Twisted's
    connector with a negative timeout, as C{timeout=-5} once gave): no login is left
    authenticated at the real gateway, multiplexed or not.
    """

    timeout = 60

    def setUp(self) -> None:
        self.gateway = RunningGateway(self, 'listen = ["tcp:0:interface=127.0.0.1"]\n')
        self.events = log_events(self)

    def broken_gateway(self) -> HostnameEndpoint:
        return HostnameEndpoint(reactor, "127.0.0.1", self.gateway.port(), timeout=-5)

    def accepted(self) -> int:
        return sum(1 for e in self.events if e.get("event") == "conn.accept")

    @inlineCallbacks
    def test_multiplexed_logins_are_closed(self) -> Any:
        """
        Every login the endpoint retries within its wait bound reaches the gateway as a
        connection (Twisted reports the failure only at its next connection attempt, 0.3 s
        on, so a login may have completed by then), and each is closed by the client once
        its connect failed: the gateway is left with no session, though the client process
        goes on.
        """
        endpoint = MuxClientEndpoint(
            reactor,
            self.broken_gateway(),
            self.gateway.credentials,
            "echo",
            wait_timeout=1.0,
            backoff_base=0.05,
            backoff_cap=0.1,
        )
        self.addCleanup(endpoint.close)
        yield self.assertFailure(connectProtocol(endpoint, EchoProbe(b"x")), SessionUnavailable)
        endpoint.close()
        self.assertGreater(endpoint.logins, 1)
        yield wait_for(lambda: self.accepted() >= endpoint.logins)
        yield self.gateway.idle()
        self.assertEqual(endpoint.sessions, [])

    @inlineCallbacks
    def test_per_connection_carrier_is_closed(self) -> Any:
        """
        The per-connection endpoint likewise: the connect fails, and the connection that
        went on anyway is closed by the client, whatever it had reached by then (Twisted
        reports the failure only 0.3 s on, so the service may have been opened and the
        application connected; it then sees the connection end).
        """
        endpoint = NGPClientEndpoint(
            reactor, self.broken_gateway(), self.gateway.credentials, "echo"
        )
        probe = _Silent()
        yield self.assertFailure(connectProtocol(endpoint, probe), AssertionError)
        yield wait_for(lambda: self.accepted() >= 1)
        yield self.gateway.idle()
        self.assertTrue(probe.transport is None or probe.lost)


class TunnelCommandListenTests(unittest.TestCase):
    """
    The real C{netguard tunnel} command, as a process of its own (stopped by PID at
    cleanup), and who can reach its listener.
    """

    timeout = 60

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ngtc-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.gateway = RunningGateway(self, 'listen = ["tcp:0:interface=127.0.0.1"]\n')
        self.password_file = os.path.join(self.dir, "pw")
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, self.gateway.credentials.password.encode() + b"\n")
        os.close(fd)

    def argv(self, listen: str, *extra: str) -> list[str]:
        return [
            "-m", "netguard.cli", "tunnel",
            "--gateway", f"tcp:host=127.0.0.1:port={self.gateway.port()}",
            "--service", "echo", "--listen", listen,
            "--user", self.gateway.credentials.username,
            "--password-file", self.password_file, *extra,
        ]  # fmt: skip

    def start(self, listen: str, *extra: str) -> str:
        """
        Start the command; return the path of its log (standard output and error).
        """
        path = os.path.join(self.dir, "tunnel.log")
        log = open(path, "wb")  # noqa: SIM115 - closed at cleanup
        process = subprocess.Popen(
            [sys.executable, *self.argv(listen, *extra)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": ROOT},
        )  # fmt: skip
        self.addCleanup(stop_process, process, log)
        return path

    @inlineCallbacks
    def test_all_interfaces_refused(self) -> Any:
        """
        C{--listen tcp:PORT} (all interfaces) without C{--allow-remote}: the command exits
        2 with one line saying why, and nothing ever listened on the port.
        """
        port = free_port()
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, self.argv(f"tcp:{port}"), env={**os.environ, "PYTHONPATH": ROOT},
            path=ROOT,
        )  # fmt: skip
        self.assertEqual(code, 2, err)
        self.assertIn(b"all IPv4 interfaces", err)
        self.assertIn(b"--allow-remote", err)
        self.assertNotIn(b"Traceback", err)
        self.assertFalse(listening(port))

    @inlineCallbacks
    def test_unix_socket_without_mode_is_600(self) -> Any:
        """
        C{--listen unix:PATH} (no mode) gives a socket only its user can use, and it
        carries a connection to the service.
        """
        sock = os.path.join(self.dir, "t.sock")
        self.start(f"unix:{sock}")
        yield wait_for(lambda: os.path.exists(sock), timeout=30)
        self.assertEqual(stat.S_IMODE(os.stat(sock).st_mode), 0o600)
        probe = EchoProbe(b"mine only")
        yield connectProtocol(UNIXClientEndpoint(reactor, sock), probe)
        self.assertEqual((yield probe.done), b"mine only")

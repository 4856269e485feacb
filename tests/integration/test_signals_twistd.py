"""
Signals on a real C{twistd -n netguard} child: SIGHUP reload applied and refused, and
SIGTERM draining with a relay in flight (all its bytes arrive) while a line-phase client is
told C{ERR SHUTTING_DOWN}.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from netguard.client.protocol import NGPClientProtocol
from tests.integration.test_twistd import Twistd, short_temp_dir
from tests.integration.util import free_port, wait_for

CONFIG = """\
[ops]
shutdown_grace = {grace}
[services.echo]
backend = "builtin:echo"
users = ["*"]
"""


class Stream(NGPClientProtocol):
    """
    Opens a service and collects what comes back.
    """

    def __init__(self, credentials, service):
        super().__init__(credentials, service, clock=reactor)
        self.received = bytearray()
        self.ended: Deferred[bytes] = Deferred()

    def service_data(self, data):
        self.received += data

    def service_closed(self, reason):
        self.ended.callback(bytes(self.received))


class LinePeer(Protocol):
    """
    A raw client that waits in the line phase.
    """

    def __init__(self):
        self.data = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.closed.callback(self.data)


class SignalTests(unittest.TestCase):
    timeout = 90

    def setUp(self):
        self.root = short_temp_dir("ngs-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.config = os.path.join(self.root, "netguard.toml")
        self.write_config(CONFIG.format(grace=20))
        self.port = free_port()

    def write_config(self, text):
        with open(self.config, "w") as handle:
            handle.write(text)

    @inlineCallbacks
    def start(self):
        self.daemon = Twistd(
            self,
            os.path.join(self.root, "st"),
            ["--config", self.config, "--listen", f"tcp:{self.port}:interface=127.0.0.1"],
        )
        credentials = yield self.daemon.started()
        return credentials

    @inlineCallbacks
    def open(self, credentials, service="echo"):
        client = Stream(credentials, service)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        yield client.opened
        return client

    @inlineCallbacks
    def test_sighup_reload_applied_and_refused(self):
        credentials = yield self.start()
        self.write_config(
            CONFIG.format(grace=20) + '[services.echo2]\nbackend = "builtin:echo"\nusers = ["*"]\n'
        )
        os.kill(self.daemon.process.pid, signal.SIGHUP)
        yield self.daemon.wait_for(lambda: "reloaded:" in self.daemon.stdout, "the reload")
        client = yield self.open(credentials, "echo2")
        client.transport.loseConnection()

        self.write_config("[limits]\nmax_line_length = 1\n")
        os.kill(self.daemon.process.pid, signal.SIGHUP)
        yield self.daemon.wait_for(
            lambda: "reload refused" in self.daemon.stdout, "the refused reload"
        )
        client = yield self.open(credentials, "echo2")  # the old configuration stays
        client.transport.loseConnection()
        self.assertIsNone(self.daemon.process.poll())
        self.daemon.process.send_signal(signal.SIGTERM)
        status = yield self.daemon.exited()
        self.assertEqual(status, 0, self.daemon.describe())

    @inlineCallbacks
    def test_sigterm_drains_relay_and_tells_line_phase_client(self):
        credentials = yield self.start()
        relay = yield self.open(credentials)
        waiting = LinePeer()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), waiting)
        yield wait_for(lambda: waiting.data.startswith(b"NETGUARD/1"))

        self.daemon.process.send_signal(signal.SIGTERM)
        said = yield waiting.closed
        self.assertIn(b"ERR SHUTTING_DOWN", said)
        # The relay still works during the grace period: 1 MiB goes through and back intact.
        payload = os.urandom(1 << 20)
        relay.transport.write(payload)
        yield wait_for(lambda: len(relay.received) >= len(payload), timeout=30)
        self.assertEqual(
            hashlib.sha256(bytes(relay.received)).digest(), hashlib.sha256(payload).digest()
        )
        relay.transport.loseConnection()
        status = yield self.daemon.exited()
        self.assertEqual(status, 0, self.daemon.describe())
        self.assertIn("netguard stopped", self.daemon.stdout)
        # New connections were refused from the first signal on.
        late = NGPClientProtocol(credentials, "echo", clock=reactor)
        with self.assertRaises(ConnectionRefusedError):
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), late)

    @inlineCallbacks
    def test_second_sigterm_cuts_at_once(self):
        self.write_config(CONFIG.format(grace=600))
        credentials = yield self.start()
        relay = yield self.open(credentials)
        self.daemon.process.send_signal(signal.SIGTERM)
        yield self.daemon.wait_for(
            lambda: "draining 1 connection" in self.daemon.stdout, "the drain"
        )
        self.daemon.process.send_signal(signal.SIGTERM)
        yield relay.ended
        status = yield self.daemon.exited()
        self.assertEqual(status, 0, self.daemon.describe())
        self.assertIn("second stop signal", self.daemon.stdout)

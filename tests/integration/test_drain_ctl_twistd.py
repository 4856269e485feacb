"""
C{netguard ctl drain} on a real C{twistd -n netguard} child, alone and with two workers:
a repeated drain is answered "already draining" without a traceback, and the SIGTERM after
a C{ctl drain} is the second stop signal, which cuts the relay still running at once (its
C{conn.close} logged as closed by the gateway).
"""

from __future__ import annotations

import os
import shutil
import signal

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from netguard.client.protocol import NGPClientProtocol
from netguard.ops.ctl_client import EXIT_OK, run_ctl
from tests.integration.test_twistd import Twistd, short_temp_dir
from tests.integration.util import free_port

CONFIG = """\
workers = {workers}
[limits]
greeting_delay = 0.05
[ops]
shutdown_grace = 600
[services.echo]
backend = "builtin:echo"
users = ["*"]
"""


class Stream(NGPClientProtocol):
    """
    A real client that opens C{echo} and waits for the relay's end.
    """

    def __init__(self, credentials):
        super().__init__(credentials, "echo", clock=reactor)
        self.ended: Deferred[None] = Deferred()

    def service_data(self, data):
        pass

    def service_closed(self, reason):
        if not self.ended.called:
            self.ended.callback(None)


class CtlDrainTests(unittest.TestCase):
    """
    One record of stop requests, whichever way they come, on the real daemon.
    """

    timeout = 120
    workers = 1

    def setUp(self):
        self.root = short_temp_dir("ngd-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.config = os.path.join(self.root, "netguard.toml")
        with open(self.config, "w") as handle:
            handle.write(CONFIG.format(workers=self.workers))
        self.port = free_port()
        self.state = os.path.join(self.root, "st")
        self.control = os.path.join(self.state, "control.sock")

    @inlineCallbacks
    def start(self):
        self.daemon = Twistd(
            self,
            self.state,
            ["--config", self.config, "--listen", f"tcp:{self.port}:interface=127.0.0.1"],
        )
        credentials = yield self.daemon.started()
        if self.workers > 1:
            yield self.daemon.wait_for(
                lambda: self.daemon.stdout.count("serving (pid ") == self.workers,
                "every worker serving",
            )
        return credentials

    @inlineCallbacks
    def open_relay(self, credentials):
        client = Stream(credentials)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        yield client.opened
        return client

    @inlineCallbacks
    def relay_drains(self, relay):
        """
        The relay was not cut: it ends when its client closes it, the daemon then exits 0,
        nothing is logged as a second stop signal and no traceback.
        """
        self.assertFalse(relay.ended.called)
        relay.transport.loseConnection()
        yield relay.ended
        status = yield self.daemon.exited()
        self.assertEqual(status, 0, self.daemon.describe())
        self.assertNotIn("second stop signal", self.daemon.stdout)
        for word in ("Traceback", "ReactorNotRunning", "Unhandled"):
            self.assertNotIn(word, self.daemon.stdout + self.daemon.stderr)

    def ctl(self, *words):
        return deferToThread(run_ctl, self.control, list(words), 10.0)

    @inlineCallbacks
    def test_drain_twice_then_sigterm_cuts_at_once(self):
        """
        C{ctl drain} starts the drain; a second one is answered "already draining"
        (exit 0); the next SIGTERM cuts the relay at once (the grace is 600 s), the daemon
        exits 0 and no traceback is logged.
        """
        credentials = yield self.start()
        relay = yield self.open_relay(credentials)
        code, first = yield self.ctl("drain")
        self.assertEqual(code, EXIT_OK, first)
        self.assertIn("draining", first)
        self.assertNotIn("already", first)
        yield self.daemon.wait_for(lambda: "draining" in self.daemon.stdout, "the drain")
        code, second = yield self.ctl("drain")
        self.assertEqual(code, EXIT_OK, second)
        self.assertIn("already draining", second)
        self.daemon.process.send_signal(signal.SIGTERM)
        yield relay.ended
        status = yield self.daemon.exited()
        self.assertEqual(status, 0, self.daemon.describe())
        self.assertIn("second stop signal", self.daemon.stdout)
        self.assertIn("the gateway closed", self.daemon.stdout)
        for word in ("Traceback", "ReactorNotRunning", "Unhandled"):
            self.assertNotIn(word, self.daemon.stdout + self.daemon.stderr)

    @inlineCallbacks
    def test_drain_after_sigterm_is_already_draining(self):
        """
        After a SIGTERM, C{ctl drain} (while the control socket still answers during the
        drain) is "already draining" and does not cut the relay, which ends normally when
        the client closes it.
        """
        credentials = yield self.start()
        relay = yield self.open_relay(credentials)
        self.daemon.process.send_signal(signal.SIGTERM)
        yield self.daemon.wait_for(lambda: "draining" in self.daemon.stdout, "the drain")
        code, answer = yield self.ctl("drain")
        self.assertEqual(code, EXIT_OK, answer)
        self.assertIn("already draining", answer)
        yield self.relay_drains(relay)


class WorkersCtlDrainTests(CtlDrainTests):
    """
    The same with C{workers = 2}: the supervisor keeps the one record.
    """

    workers = 2

    @inlineCallbacks
    def test_sigterm_to_the_process_group_drains(self):
        """
        A SIGTERM to the whole process group (systemd's default C{KillMode=control-group}
        on C{systemctl stop}) reaches the supervisor and every worker at once: it is one
        stop, not two. The relay is not cut: it still echoes after the signal and ends
        when its client closes it; nothing is logged as a second stop signal.
        """
        credentials = yield self.start()
        relay = yield self.open_relay(credentials)
        os.killpg(os.getpgid(self.daemon.process.pid), signal.SIGTERM)
        yield self.daemon.wait_for(
            lambda: self.daemon.stdout.count("draining") >= 1 + self.workers, "every drain"
        )
        yield self.relay_drains(relay)

"""
C{netguard ctl reload} with C{workers = 2} on the real C{twistd -n netguard}, one worker
stopped (SIGSTOP): the reload is reported incomplete (exit 1, C{RELOAD_INCOMPLETE} naming
the silent worker), never as a success.
"""

from __future__ import annotations

import json
import os
import shutil
import signal

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from netguard.ops.ctl_client import EXIT_OK, EXIT_REFUSED, run_ctl
from netguard.workers.supervisor import QUERY_TIMEOUT
from tests.integration.test_twistd import Twistd, short_temp_dir
from tests.integration.util import free_port

CONFIG = """\
workers = 2
[limits]
greeting_delay = 0.05
[services.echo]
backend = "builtin:echo"
users = ["*"]
"""


class UnansweredReloadTests(unittest.TestCase):
    """
    A worker that cannot answer makes the reload fail visibly.
    """

    timeout = 120

    def setUp(self):
        self.root = short_temp_dir("ngr-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.config = os.path.join(self.root, "netguard.toml")
        with open(self.config, "w") as handle:
            handle.write(CONFIG)
        self.state = os.path.join(self.root, "st")
        self.control = os.path.join(self.state, "control.sock")
        self.paused: list[int] = []
        self.addCleanup(self.resume_all)

    def resume_all(self):
        for pid in self.paused:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.paused = []

    def ctl(self, *words):
        # Longer than the supervisor's bound on a worker's answer, which is what is tested.
        return deferToThread(run_ctl, self.control, list(words), QUERY_TIMEOUT * 6)

    @inlineCallbacks
    def test_stopped_worker_makes_reload_incomplete(self):
        """
        With worker 1 stopped, C{ctl reload} exits 1 with C{RELOAD_INCOMPLETE} naming
        worker 1 and the bound in words (no exception repr); once it runs again a reload
        succeeds (exit 0, 2/2), and the daemon stops cleanly.
        """
        port = free_port()
        daemon = Twistd(
            self,
            self.state,
            ["--config", self.config, "--listen", f"tcp:{port}:interface=127.0.0.1"],
        )
        yield daemon.started()
        yield daemon.wait_for(lambda: daemon.stdout.count("serving (pid ") == 2, "two workers")
        code, text = yield self.ctl("status")
        self.assertEqual(code, EXIT_OK, text)
        [row] = [r for r in json.loads(text)["workers"] if r["index"] == 1]
        os.kill(row["pid"], signal.SIGSTOP)
        self.paused.append(row["pid"])

        code, text = yield self.ctl("reload")
        self.assertEqual(code, EXIT_REFUSED, text)
        self.assertTrue(text.startswith("RELOAD_INCOMPLETE 1/2 workers reloaded"), text)
        self.assertIn(f"worker 1 did not answer within {QUERY_TIMEOUT:g} s", text)
        self.assertNotIn("Deferred", text)

        self.resume_all()
        code, text = yield self.ctl("reload")
        self.assertEqual(code, EXIT_OK, text)
        self.assertIn("2/2 workers reloaded", text)
        daemon.process.send_signal(signal.SIGTERM)
        status = yield daemon.exited()
        self.assertEqual(status, 0, daemon.describe())
        self.assertIn("worker 1 did not answer", daemon.stdout)

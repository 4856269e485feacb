"""
The operations wiring of issue 7 on a real C{twistd -n netguard} child: one instance per state
directory, the control socket (mode 0600) driven by the real C{netguard ctl} client, the
heartbeat toggled by a real SIGUSR1 and by the control socket, systemd notifications on a
real datagram socket, and clean removal of the lock and sockets on SIGTERM.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import stat
import time

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from netguard.ops.ctl_client import EXIT_OK, EXIT_REFUSED, run_ctl
from tests.integration.test_twistd import (
    REPO,
    TWISTD,
    WAIT,
    Twistd,
    python_env,
    run,
    short_temp_dir,
)


class OpsTwistdTests(unittest.TestCase):
    def setUp(self):
        self.root = short_temp_dir("ngo-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.state = os.path.join(self.root, "st")
        self.control = os.path.join(self.state, "control.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(self.notify.close)
        self.notify.bind(os.path.join(self.root, "notify"))
        self.notify.settimeout(WAIT)
        os.environ["NOTIFY_SOCKET"] = os.path.join(self.root, "notify")
        self.addCleanup(os.environ.pop, "NOTIFY_SOCKET", None)

    @inlineCallbacks
    def start(self):
        daemon = Twistd(self, self.state, ["--listen", "tcp:0:interface=127.0.0.1"])
        yield daemon.started()
        return daemon

    def ctl(self, *words):
        return deferToThread(run_ctl, self.control, list(words))

    @inlineCallbacks
    def test_ready_status_heartbeat_second_instance_and_clean_stop(self):
        daemon = yield self.start()
        ready = yield deferToThread(self.notify.recv, 4096)
        self.assertTrue(ready.startswith(b"READY=1"), ready)

        # The lock names the daemon; the control socket is 0600.
        with open(os.path.join(self.state, "netguard.lock")) as f:
            self.assertEqual(int(f.read()), daemon.process.pid)
        self.assertEqual(stat.S_IMODE(os.lstat(self.control).st_mode), 0o600)

        code, output = yield self.ctl("status")
        self.assertEqual(code, EXIT_OK, output)
        self.assertEqual(json.loads(output)["pid"], daemon.process.pid)

        # A second copy on the same state directory refuses, naming the PID, and takes
        # nothing from the first (its control socket still answers).
        prefix, env = python_env(REPO, self.root)
        second = run(
            [
                *prefix,
                "-c",
                TWISTD,
                "-n",
                "--pidfile=",
                "netguard",
                "--state-dir",
                self.state,
                "--listen",
                "tcp:0:interface=127.0.0.1",
            ],
            env,
            self.root,
        )
        self.assertEqual(second.returncode, 1, second.stderr)
        self.assertIn(f"already running as pid {daemon.process.pid}", second.stderr)
        code, _ = yield self.ctl("status")
        self.assertEqual(code, EXIT_OK)

        # Heartbeat: on by the control socket, off by SIGUSR1.
        code, output = yield self.ctl("heartbeat", "on")
        self.assertEqual((code, json.loads(output)), (EXIT_OK, {"heartbeat": True}))
        yield daemon.wait_for(lambda: "heartbeat active=" in daemon.stdout, "a heartbeat")
        os.kill(daemon.process.pid, signal.SIGUSR1)
        yield daemon.wait_for(
            lambda: "heartbeat switched off by signal" in daemon.stdout, "the SIGUSR1 switch"
        )
        code, output = yield self.ctl("heartbeat", "sideways")
        self.assertEqual(code, EXIT_REFUSED)

        daemon.process.send_signal(signal.SIGTERM)
        stopping = yield deferToThread(self.notify.recv, 4096)
        self.assertEqual(stopping, b"STOPPING=1")
        status = yield daemon.exited()
        self.assertEqual(status, 0, daemon.describe())
        self.assertEqual(
            sorted(os.listdir(self.state)), ["mock-verifier.key", "ticket.key", "users"]
        )

    def datagrams_until(self, wanted, what):
        """
        Receive notifications until C{wanted(datagram)} holds (a bounded number of them).

        @return: every datagram received, the wanted one last.
        """
        seen = []
        for _ in range(200):
            try:
                datagram = self.notify.recv(4096)
            except TimeoutError:
                break
            seen.append(datagram)
            if wanted(datagram):
                return seen
        raise AssertionError(f"no {what} among {seen!r}")

    @inlineCallbacks
    def test_reload_bracketed_and_watchdog_keepalives(self):
        """
        Under C{WATCHDOG_USEC}, the daemon sends C{WATCHDOG=1} at start and again after
        C{READY=1}; SIGHUP and C{ctl reload} each send C{RELOADING=1} with a
        C{MONOTONIC_USEC} read after the request, then C{READY=1}.
        """
        os.environ["WATCHDOG_USEC"] = "2000000"
        self.addCleanup(os.environ.pop, "WATCHDOG_USEC", None)
        daemon = yield self.start()
        seen = yield deferToThread(
            self.datagrams_until, lambda d: d.startswith(b"READY=1"), "READY"
        )
        self.assertIn(b"WATCHDOG=1", seen)  # the first keep-alive comes at start
        seen = yield deferToThread(
            self.datagrams_until, lambda d: d == b"WATCHDOG=1", "keep-alive"
        )
        self.assertEqual(seen, [b"WATCHDOG=1"])  # and the next after READY

        def reload_bracket(how):
            seen = self.datagrams_until(lambda d: d.startswith(b"RELOADING=1"), "RELOADING")
            reloading = seen[-1]
            seen = self.datagrams_until(lambda d: d.startswith(b"READY=1"), "READY")
            self.assertEqual([d for d in seen[:-1] if d != b"WATCHDOG=1"], [], how)
            return reloading, seen[-1]

        for how in ("SIGHUP", "ctl reload"):
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            if how == "SIGHUP":
                os.kill(daemon.process.pid, signal.SIGHUP)
            else:
                code, output = yield self.ctl("reload")
                self.assertEqual(code, EXIT_OK, output)
            reloading, ready = yield deferToThread(reload_bracket, how)
            after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            name, _, value = reloading.partition(b"\n")
            self.assertEqual(name, b"RELOADING=1", how)
            self.assertTrue(value.startswith(b"MONOTONIC_USEC="), reloading)
            self.assertTrue(before <= int(value.split(b"=", 1)[1]) <= after, (how, reloading))
            self.assertEqual(ready, b"READY=1\nSTATUS=reloaded", how)

        daemon.process.send_signal(signal.SIGTERM)
        status = yield daemon.exited()
        self.assertEqual(status, 0, daemon.describe())

    @inlineCallbacks
    def test_killed_instance_leaves_nothing_that_blocks_a_restart(self):
        daemon = yield self.start()
        daemon.process.kill()
        daemon.process.wait(WAIT)
        self.assertTrue(os.path.exists(self.control))
        again = Twistd(self, self.state, ["--listen", "tcp:0:interface=127.0.0.1"])
        yield again.wait_for(lambda: "netguard started" in again.stdout, "the restart")
        code, output = yield self.ctl("status")
        self.assertEqual(code, EXIT_OK, output)
        self.assertEqual(json.loads(output)["pid"], again.process.pid)
        self.assertIn("removed stale unix socket", again.stdout)


class RunAsUserTests(unittest.TestCase):
    """
    C{twistd --uid/--gid} as root: every listener opens as root, then the state directory
    and what netguard created in it go to that user, so after twistd drops privileges a
    SIGHUP still re-reads the users file and SIGTERM still removes the sockets and the lock.
    """

    timeout = 60

    def setUp(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("twistd --uid needs root; this runs as a normal user")
        try:
            self.nobody = pwd.getpwnam("nobody")
        except KeyError:
            raise unittest.SkipTest("no 'nobody' user on this machine") from None
        self.root = short_temp_dir("ngu-")
        self.addCleanup(shutil.rmtree, self.root, True)
        os.chmod(self.root, 0o755)  # the run-as user must reach its state directory
        self.state = os.path.join(self.root, "st")
        self.socket = os.path.join(self.state, "ng.sock")

    @inlineCallbacks
    def test_reload_and_clean_stop_after_dropping_root(self):
        uid, gid = self.nobody.pw_uid, self.nobody.pw_gid
        daemon = Twistd(
            self,
            self.state,
            ["--listen", "tcp:0:interface=127.0.0.1",
             "--listen", f"unix:{self.socket}:mode=600:lockfile=1"],
            twistd_options=["--uid", str(uid), "--gid", str(gid)],
        )  # fmt: skip
        yield daemon.started()
        with open(f"/proc/{daemon.process.pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        self.assertEqual(set(uids), {str(uid)})  # the daemon really runs as nobody
        for name in ("", "users", "netguard.lock", "ng.sock", "control.sock"):
            info = os.lstat(os.path.join(self.state, name))
            self.assertEqual((info.st_uid, info.st_gid), (uid, gid), name)
        self.assertEqual(stat.S_IMODE(os.stat(self.state).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.state, "users")).st_mode), 0o600)
        self.assertIn("before dropping root", daemon.stdout)

        daemon.process.send_signal(signal.SIGHUP)
        yield daemon.wait_for(lambda: "reloaded: 1 user(s)" in daemon.stdout, "the reload")
        self.assertNotIn("reload refused", daemon.stdout)

        daemon.process.send_signal(signal.SIGTERM)
        code = yield daemon.exited()
        self.assertEqual(code, 0, daemon.describe())
        self.assertEqual(
            sorted(os.listdir(self.state)), ["mock-verifier.key", "ticket.key", "users"]
        )
        self.assertNotIn("remove_failed", daemon.stdout)

"""
The real C{twistd netguard} started the usual way, without C{-n}: twistd forks into the
background and its first process waits on a status pipe to hear how the start went.

  - L{DaemonStartFailureTests}: a control socket directory open to its group, a log file in a
    missing directory and a C{--uid} only root could switch to are found before the fork; a
    listener the kernel refuses only at the real listen fails after it. Each returns at once
    with status 1 and the reason on the terminal, no traceback, no daemon left running, no
    pidfile and no instance lock left behind.
  - L{DaemonStartTests}: the other side, a good start returns 0 and leaves a daemon that
    serves, stopped by its PID.

Every run is bounded (L{WAIT}, a hang guard only); anything still running with this test's
temporary directory on its command line is killed by its PID in a cleanup.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time

from twisted.trial import unittest

from tests.integration.test_twistd import REPO, TWISTD, WAIT, python_env, read, short_temp_dir
from tests.integration.util import free_port, peer_unavailable

#: How often the bounded waits below look again, in seconds.
STEP = 0.05


def processes_naming(marker: str) -> list[int]:
    """
    The live processes whose command line contains C{marker} (zombies have none).
    """
    found = []
    needle = os.fsencode(marker)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if needle in handle.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def wait_until(predicate: object, what: str) -> None:
    """
    Wait (at most L{WAIT} seconds, a hang guard) until C{predicate()} is true.

    @raise AssertionError: naming C{what} if it never is.
    """
    for _ in range(int(WAIT / STEP)):
        if predicate():  # type: ignore[operator]
            return
        time.sleep(STEP)
    raise AssertionError(f"not reached within {WAIT} s: {what}")


class DaemonRun(unittest.TestCase):
    """
    Start C{twistd --pidfile P --logfile L netguard --state-dir S ...} in a fresh directory.
    """

    def setUp(self) -> None:
        self.base = short_temp_dir("ngd-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.addCleanup(self.kill_leftovers)
        self.pidfile = os.path.join(self.base, "t.pid")
        self.logfile = os.path.join(self.base, "t.log")
        self.state = os.path.join(self.base, "st")
        self.port = free_port()
        self.prefix, self.env = python_env(REPO, self.base)

    def kill_leftovers(self) -> None:
        for pid in processes_naming(self.base):
            os.kill(pid, signal.SIGKILL)

    def start(self, *netguard_args: str, before: tuple[str, ...] = (), uid: str = "") -> str:
        """
        Run twistd (without C{-n}) to its return; a wait past L{WAIT} fails the test.

        @param before: a command that runs twistd (C{setpriv ...}).
        @param uid: twistd's C{--uid}, if any.
        @return: its standard output and error together; C{self.returncode} its status.
        """
        argv = [*before, *self.prefix, "-c", TWISTD, *(["--uid", uid] if uid else [])]
        argv += ["--pidfile", self.pidfile, "--logfile", self.logfile, "netguard"]
        argv += ["--state-dir", self.state, "--listen", f"tcp:{self.port}:interface=127.0.0.1"]
        try:
            done = subprocess.run(
                [*argv, *netguard_args],
                env=self.env,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=WAIT,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            self.fail(f"twistd did not return within {WAIT} s: its parent waits for ever")
        self.returncode = done.returncode
        return done.stdout + done.stderr


class DaemonStartFailureTests(DaemonRun):
    """
    A start that fails returns at once, with status 1 and the reason, leaving nothing.
    """

    def assert_refused(self, output: str, reason: str) -> None:
        self.assertEqual(self.returncode, 1, output)
        self.assertIn(reason, output)
        self.assertNotIn("Traceback", output)
        wait_until(lambda: not processes_naming(self.base), "the daemon exits")
        self.assertFalse(os.path.exists(self.pidfile), "a stale pidfile was left")
        self.assertFalse(os.path.exists(os.path.join(self.state, "netguard.lock")))
        self.assertNotIn("Traceback", read(self.logfile))

    def test_control_socket_directory_open_to_its_group(self) -> None:
        """
        C{ops.control_socket} in a directory of mode 0770: refused before the fork with the
        line naming the directory; no users file is made.
        """
        shared = os.path.join(self.base, "ctlbad")
        os.mkdir(shared)
        os.chmod(shared, 0o770)
        config = os.path.join(self.base, "ctl.toml")
        with open(config, "w") as handle:
            handle.write(f'[ops]\ncontrol_socket = "{shared}/c.sock"\n')
        output = self.start("--config", config)
        self.assert_refused(
            output,
            f"netguard: control socket directory {shared}: writable by group or others (use 0700)",
        )
        self.assertFalse(os.path.exists(os.path.join(self.state, "users")))

    def test_log_file_in_a_missing_directory(self) -> None:
        """
        C{--log-file} in a directory that does not exist: refused before the fork.
        """
        log_file = os.path.join(self.base, "nodir", "x.log")
        output = self.start("--log-file", log_file)
        self.assert_refused(
            output, f"netguard: cannot open log file {log_file}: No such file or directory"
        )
        self.assertFalse(os.path.exists(os.path.join(self.state, "users")))

    def test_listener_refused_only_after_the_fork(self) -> None:
        """
        A unix listener the kernel refuses only at the real listen (in C{/proc}, which the
        foreground checks cannot tell): the daemon reports it through twistd's status pipe,
        its parent prints it and exits 1; the daemon's log holds the reason, no traceback.
        """
        output = self.start("--listen", "unix:/proc/self/ng.sock:mode=600")
        self.assert_refused(
            output, "StartFailed: netguard: cannot listen on unix:/proc/self/ng.sock"
        )
        log = read(self.logfile)
        self.assertIn("start failed: cannot listen on unix:/proc/self/ng.sock", log)
        self.assertIn("netguard: cannot listen on unix:/proc/self/ng.sock", log)

    def test_uid_only_root_could_switch_to(self) -> None:
        """
        Run as C{nobody}, C{twistd --uid 0}: twistd could switch only after the fork, and
        its own failure there would leave the parent waiting; refused before the fork.
        """
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to run twistd as another user")
        if shutil.which("setpriv") is None:
            peer_unavailable("setpriv is not installed (Debian package util-linux)")
        nobody = pwd.getpwnam("nobody")
        for root, dirs, files in os.walk(self.base):
            for name in [root, *(os.path.join(root, entry) for entry in dirs + files)]:
                os.lchown(name, nobody.pw_uid, nobody.pw_gid)
        as_nobody = ("setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}")
        output = self.start(before=(*as_nobody, "--clear-groups"), uid="0")
        self.assert_refused(
            output,
            "netguard: cannot start: twistd --uid 0 --gid 0: only root can switch to another "
            f"user or group (running as uid {nobody.pw_uid} gid {nobody.pw_gid})",
        )


class DaemonStartTests(DaemonRun):
    """
    The other side: a start that works returns 0 with the daemon serving.
    """

    def test_good_start_returns_0_and_serves(self) -> None:
        """
        With nothing wrong twistd returns 0, the pidfile names a live daemon that greets on
        its listener, and SIGTERM (by that PID) stops it and removes the pidfile.
        """
        output = self.start()
        self.assertEqual(self.returncode, 0, output)
        with open(self.pidfile) as handle:
            pid = int(handle.read())
        self.assertIn(pid, processes_naming(self.base))
        with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT) as client:
            self.assertTrue(client.recv(64).startswith(b"NETGUARD/1 "))
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: pid not in processes_naming(self.base), "the daemon stops")
        self.assertFalse(os.path.exists(self.pidfile))

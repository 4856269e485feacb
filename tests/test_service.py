"""
Tests for L{netguard.service.make_service}: what it checks while twistd is still in the
foreground, before anything is written to the state directory.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile

from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from netguard.config import load_config
from netguard.log import LogFileError
from netguard.ops.control import UnsafeControlPath
from netguard.service import GatewayService, make_service


class ForegroundChecksTests(unittest.TestCase):
    """
    A control socket in a directory others may write, or a log file that cannot be opened,
    stops L{make_service} (in the foreground, before twistd forks) with the start's own
    message; the users file is not made and the instance lock is released.
    """

    def setUp(self) -> None:
        # Under /tmp: unix socket paths must stay under 108 bytes.
        self.base = tempfile.mkdtemp(prefix="ngsv-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.state = os.path.join(self.base, "st")
        self.terminal = io.StringIO()

    def build(self, config_text: str = "", **overrides: object) -> object:
        path = os.path.join(self.base, "netguard.toml")
        with open(path, "w") as handle:
            handle.write(config_text)
        config = load_config(path, {"state_dir": self.state, "listen": [], **overrides})
        return make_service(config, MemoryReactorClock(), terminal=self.terminal)

    def assert_nothing_left(self) -> None:
        self.assertEqual(os.listdir(self.state), [])  # no users file, no lock file
        self.assertEqual(self.terminal.getvalue(), "")  # no password shown

    def test_group_writable_control_socket_directory(self) -> None:
        """
        C{ops.control_socket} in a group-writable directory is refused here, not after
        twistd forked.
        """
        shared = os.path.join(self.base, "ctlbad")
        os.mkdir(shared)
        os.chmod(shared, 0o770)
        socket_path = os.path.join(shared, "c.sock")
        error = self.assertRaises(
            UnsafeControlPath, self.build, f'[ops]\ncontrol_socket = "{socket_path}"\n'
        )
        self.assertEqual(
            str(error),
            f"control socket directory {shared}: writable by group or others (use 0700)",
        )
        self.assert_nothing_left()

    def test_default_control_socket_in_an_open_state_directory(self) -> None:
        """
        An existing group-writable state directory would hold the default control socket:
        refused here too (its mode is left as it is).
        """
        os.mkdir(self.state)
        os.chmod(self.state, 0o770)
        error = self.assertRaises(UnsafeControlPath, self.build)
        self.assertIn(f"control socket directory {self.state}: writable by group", str(error))
        self.assert_nothing_left()

    def test_log_file_in_a_missing_directory(self) -> None:
        """
        A C{log.file} whose directory does not exist is refused here with the message the
        start would give.
        """
        log_file = os.path.join(self.base, "nodir", "x.log")
        error = self.assertRaises(LogFileError, self.build, log_file=log_file)
        self.assertEqual(str(error), f"cannot open log file {log_file}: No such file or directory")
        self.assert_nothing_left()

    def test_private_directories_pass(self) -> None:
        """
        The other side: a control socket in a 0700 directory and a log file in an existing
        directory build the service.
        """
        private = os.path.join(self.base, "ctl")
        os.mkdir(private, 0o700)
        log_file = os.path.join(self.base, "x.log")
        service = self.build(
            f'[ops]\ncontrol_socket = "{os.path.join(private, "c.sock")}"\n', log_file=log_file
        )
        self.assertIsInstance(service, GatewayService)
        assert isinstance(service, GatewayService)
        self.assertTrue(os.path.exists(log_file))
        self.assertIsNotNone(service.instance_lock)
        assert service.instance_lock is not None
        service.instance_lock.release()

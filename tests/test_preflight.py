"""
Tests for L{netguard.ops.preflight}: addresses probed before twistd daemonizes.
"""

from __future__ import annotations

import os
import socket
import stat

from twisted.trial import unittest

from netguard.log_file import LogFileError
from netguard.ops.preflight import AddressBusy, check_listener_free, check_log_file


def listening(family: socket.AddressFamily, address: str) -> tuple[socket.socket, int]:
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.bind((address, 0))
    holder.listen(1)
    return holder, holder.getsockname()[1]


class TCPTests(unittest.TestCase):
    def test_port_in_use_refused_with_its_reason(self) -> None:
        holder, port = listening(socket.AF_INET, "127.0.0.1")
        self.addCleanup(holder.close)
        error = self.assertRaises(
            AddressBusy, check_listener_free, f"tcp:{port}:interface=127.0.0.1"
        )
        self.assertIn(f"tcp:{port}:interface=127.0.0.1", str(error))
        self.assertIn("already in use", str(error))

    def test_free_port_passes_and_stays_free(self) -> None:
        holder, port = listening(socket.AF_INET, "127.0.0.1")
        holder.close()
        check_listener_free(f"tcp:{port}:interface=127.0.0.1")
        again, _ = listening(socket.AF_INET, "127.0.0.1")  # nothing kept bound
        again.close()
        check_listener_free(f"tcp:port={port}:interface=127.0.0.1")

    def test_port_zero_not_probed(self) -> None:
        check_listener_free("tcp:0:interface=127.0.0.1")

    def test_ipv6_in_use(self) -> None:
        try:
            holder, port = listening(socket.AF_INET6, "::1")
        except OSError:
            raise unittest.SkipTest("no IPv6 loopback here") from None
        self.addCleanup(holder.close)
        self.assertRaises(AddressBusy, check_listener_free, f"tcp6:{port}:interface=\\:\\:1")

    def test_haproxy_probes_what_it_wraps(self) -> None:
        holder, port = listening(socket.AF_INET, "127.0.0.1")
        self.addCleanup(holder.close)
        error = self.assertRaises(
            AddressBusy, check_listener_free, f"haproxy:tcp:{port}:interface=127.0.0.1"
        )
        self.assertIn(f"haproxy:tcp:{port}", str(error))

    def test_address_not_on_this_host(self) -> None:
        error = self.assertRaises(AddressBusy, check_listener_free, "tcp:7700:interface=192.0.2.1")
        self.assertIn("not available", str(error))

    def test_privileged_port_needs_privileges(self) -> None:
        if os.geteuid() == 0:
            raise unittest.SkipTest("root may bind any port")
        error = self.assertRaises(AddressBusy, check_listener_free, "tcp:1:interface=127.0.0.1")
        self.assertIn("permission denied", str(error))

    def test_other_types_left_to_the_real_listen(self) -> None:
        check_listener_free("systemd:domain=INET:index=0")


class UnixTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def test_live_socket_refused(self) -> None:
        path = os.path.join(self.dir, "ng.sock")
        holder = socket.socket(socket.AF_UNIX)
        self.addCleanup(holder.close)
        holder.bind(path)
        holder.listen(1)
        error = self.assertRaises(AddressBusy, check_listener_free, f"unix:{path}:mode=600")
        self.assertIn(path, str(error))
        self.assertTrue(os.path.exists(path))  # never taken from its owner

    def test_stale_socket_removed_and_absent_path_fine(self) -> None:
        path = os.path.join(self.dir, "stale.sock")
        holder = socket.socket(socket.AF_UNIX)
        holder.bind(path)
        holder.close()  # the path stays, nobody listens
        check_listener_free(f"unix:{path}")
        self.assertFalse(os.path.exists(path))
        check_listener_free(f"unix:address={path}")

    def test_escaped_colon_in_path(self) -> None:
        path = os.path.join(self.dir, "a:b.sock")
        holder = socket.socket(socket.AF_UNIX)
        self.addCleanup(holder.close)
        holder.bind(path)
        holder.listen(1)
        self.assertRaises(AddressBusy, check_listener_free, "unix:" + path.replace(":", "\\:"))


class LogFileTests(unittest.TestCase):
    """
    The C{[log] file} is tried before twistd forks, as the start would open it.
    """

    def setUp(self) -> None:
        self.base = self.mktemp()
        os.mkdir(self.base)

    def test_missing_directory_refused_with_the_start_s_message(self) -> None:
        """
        A file in a directory that does not exist: the message the start would give.
        """
        path = os.path.join(self.base, "nodir", "x.log")
        error = self.assertRaises(LogFileError, check_log_file, path)
        self.assertEqual(str(error), f"cannot open log file {path}: No such file or directory")

    def test_directory_as_file_refused(self) -> None:
        """
        A path that is a directory cannot be a log file.
        """
        error = self.assertRaises(LogFileError, check_log_file, self.base)
        self.assertIn(f"cannot open log file {self.base}: ", str(error))

    def test_new_file_created_private_and_empty(self) -> None:
        """
        A file that does not exist yet is created (mode 0600, empty), as the start would.
        """
        path = os.path.join(self.base, "x.log")
        check_log_file(path)
        info = os.stat(path)
        self.assertEqual(stat.S_IMODE(info.st_mode), 0o600)
        self.assertEqual(info.st_size, 0)

    def test_existing_file_kept(self) -> None:
        """
        An existing file keeps its content and its mode.
        """
        path = os.path.join(self.base, "x.log")
        with open(path, "w") as handle:
            handle.write("earlier\n")
        os.chmod(path, 0o640)
        check_log_file(path)
        with open(path) as handle:
            self.assertEqual(handle.read(), "earlier\n")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)

    def test_no_file_of_our_own_not_probed(self) -> None:
        """
        C{"-"} (twistd's log only) is not a path: nothing is opened or created.
        """
        check_log_file("-")
        self.assertFalse(os.path.exists("-"))

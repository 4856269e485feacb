"""
Tests for L{netguard.ops.lock}: the instance lock against real processes, and the unix socket
takeover guard against real sockets.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap

from twisted.trial import unittest

import netguard
from netguard.ops.lock import (
    LOCK_FILE_NAME,
    AlreadyRunning,
    LockError,
    NotASocket,
    SocketInUse,
    acquire_instance_lock,
    check_unix_socket_free,
)

#: The directory netguard is imported from, for the child processes.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(netguard.__file__)))

#: A process that holds the flock of the file named in argv[1], writes its PID there, says
#: "locked" and waits until its standard input closes.
HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\\n" % os.getpid())
    print("locked", flush=True)
    sys.stdin.read()
    """
)

#: The twistd daemonization path: take the lock with our API, fork, let the parent exit at
#: once (os._exit, as twistd's parent does), and have the child record its PID and wait.
DAEMONIZING = textwrap.dedent(
    """
    import os, sys
    from netguard.ops.lock import acquire_instance_lock
    lock = acquire_instance_lock(sys.argv[1])
    if os.fork():
        os._exit(0)
    lock.write_pid()
    print(os.getpid(), flush=True)
    sys.stdin.read()
    """
)


def short_tempdir(case: unittest.TestCase) -> str:
    """
    A fresh directory under /tmp with a short name (AF_UNIX paths are limited to 107 bytes),
    removed after the test.
    """
    path = tempfile.mkdtemp(prefix="ngl", dir="/tmp")

    def remove() -> None:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)

    case.addCleanup(remove)
    return path


def read_line(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """
    One line from a child's standard output, waiting at most C{timeout} seconds.
    """
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError("the child process did not answer in time")
    return proc.stdout.readline().strip()


def start_child(case: unittest.TestCase, script: str, *args: str) -> subprocess.Popen[str]:
    """
    Start C{python -c script args...} with pipes; the cleanup closes its stdin (it then ends)
    and kills it by PID if it is still there.
    """
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )

    def stop() -> None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()

    case.addCleanup(stop)
    return proc


def dead_pid() -> int:
    """
    The PID of a process that has exited.
    """
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


class InstanceLockTests(unittest.TestCase):
    def setUp(self):
        self.state = short_tempdir(self)
        self.path = os.path.join(self.state, LOCK_FILE_NAME)

    def acquire(self):
        lock = acquire_instance_lock(self.state)
        self.addCleanup(lock.release)
        return lock

    def test_first_acquire_writes_our_pid(self):
        lock = self.acquire()
        self.assertTrue(lock.held)
        self.assertEqual(lock.pid, os.getpid())
        with open(self.path) as f:
            self.assertEqual(f.read(), f"{os.getpid()}\n")

    def test_lock_file_mode_0600(self):
        self.acquire()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_existing_lock_file_with_loose_mode_tightened(self):
        with open(self.path, "w") as f:
            f.write("1\n")
        os.chmod(self.path, 0o644)
        self.acquire()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_descriptor_close_on_exec(self):
        lock = self.acquire()
        self.assertTrue(fcntl.fcntl(lock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)

    def test_held_by_other_process_refused_with_its_pid(self):
        holder = start_child(self, HOLDER, self.path)
        self.assertEqual(read_line(holder), "locked")
        with self.assertRaises(AlreadyRunning) as caught:
            acquire_instance_lock(self.state)
        self.assertEqual(caught.exception.pid, holder.pid)
        self.assertEqual(caught.exception.path, self.path)
        self.assertIn(f"pid {holder.pid}", str(caught.exception))
        # The refused attempt changed nothing in the holder's file.
        with open(self.path) as f:
            self.assertEqual(f.read(), f"{holder.pid}\n")

    def test_pid_is_within_twistds_100_byte_error_report(self):
        holder = start_child(self, HOLDER, self.path)
        read_line(holder)
        with self.assertRaises(AlreadyRunning) as caught:
            acquire_instance_lock(self.state)
        # twistd reports "1 <module.Class>: <message>" cut to 100 bytes.
        report = f"1 netguard.ops.lock.AlreadyRunning: {caught.exception}"[:100]
        self.assertIn(f"pid {holder.pid} ", report)

    def test_second_acquire_in_same_process_refused(self):
        self.acquire()
        with self.assertRaises(AlreadyRunning) as caught:
            acquire_instance_lock(self.state)
        self.assertEqual(caught.exception.pid, os.getpid())

    def test_holder_with_unreadable_pid_refused_with_unknown_pid(self):
        holder = start_child(
            self,
            "import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
            self.path,
        )
        read_line(holder)
        with self.assertRaises(AlreadyRunning) as caught:
            acquire_instance_lock(self.state)
        self.assertIsNone(caught.exception.pid)
        self.assertIn("unknown pid", str(caught.exception))

    def test_stale_file_of_dead_process_taken_over(self):
        gone = dead_pid()
        with open(self.path, "w") as f:
            f.write(f"{gone}\n")
        lock = self.acquire()
        self.assertEqual(lock.pid, os.getpid())
        with open(self.path) as f:
            self.assertEqual(f.read(), f"{os.getpid()}\n")

    def test_lock_of_killed_holder_taken_over(self):
        holder = start_child(self, HOLDER, self.path)
        read_line(holder)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        lock = self.acquire()
        with open(self.path) as f:
            self.assertEqual(f.read(), f"{lock.pid}\n")

    def test_lock_survives_fork_and_parent_exit(self):
        """
        The twistd path: the lock taken before daemonization is still held by the child
        after the parent exits, and the file names the child.
        """
        child = start_child(self, DAEMONIZING, self.state)
        daemon_pid = int(read_line(child))
        self.addCleanup(self._kill_quietly, daemon_pid)
        with self.assertRaises(AlreadyRunning) as caught:
            acquire_instance_lock(self.state)
        self.assertEqual(caught.exception.pid, daemon_pid)
        self.assertNotEqual(daemon_pid, child.pid)

    @staticmethod
    def _kill_quietly(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def test_release_removes_file_and_frees_lock(self):
        lock = acquire_instance_lock(self.state)
        self.assertTrue(lock.release())
        self.assertFalse(os.path.exists(self.path))
        self.assertFalse(lock.held)
        again = self.acquire()
        self.assertTrue(again.held)

    def test_release_twice_does_nothing(self):
        lock = acquire_instance_lock(self.state)
        lock.release()
        self.assertFalse(lock.release())

    def test_release_keeps_a_file_that_is_not_ours(self):
        lock = acquire_instance_lock(self.state)
        os.unlink(self.path)
        with open(self.path, "w") as f:
            f.write("someone else\n")
        self.assertFalse(lock.release())
        with open(self.path) as f:
            self.assertEqual(f.read(), "someone else\n")

    def test_write_pid_after_release_refused(self):
        lock = acquire_instance_lock(self.state)
        lock.release()
        self.assertRaises(ValueError, lock.write_pid)

    def test_write_pid_replaces_content(self):
        lock = self.acquire()
        lock.write_pid(7)
        with open(self.path) as f:
            self.assertEqual(f.read(), "7\n")
        self.assertEqual(lock.pid, 7)

    def test_symlink_lock_file_refused(self):
        target = os.path.join(self.state, "elsewhere")
        os.symlink(target, self.path)
        self.assertRaises(LockError, acquire_instance_lock, self.state)
        self.assertFalse(os.path.exists(target))

    def test_directory_as_lock_file_refused(self):
        os.mkdir(self.path)
        self.addCleanup(os.rmdir, self.path)
        self.assertRaises(LockError, acquire_instance_lock, self.state)

    def test_missing_state_dir_refused(self):
        self.assertRaises(LockError, acquire_instance_lock, os.path.join(self.state, "nope"))


class UnixSocketGuardTests(unittest.TestCase):
    def setUp(self):
        self.dir = short_tempdir(self)
        self.path = os.path.join(self.dir, "s.sock")

    def bound(self, listen: bool) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.bind(self.path)
        if listen:
            sock.listen(1)
        return sock

    def test_absent_path_is_free(self):
        self.assertFalse(check_unix_socket_free(self.path))

    def test_live_socket_refused_and_kept(self):
        self.bound(listen=True)
        with self.assertRaises(SocketInUse) as caught:
            check_unix_socket_free(self.path)
        self.assertIn("in use", str(caught.exception))
        self.assertTrue(stat.S_ISSOCK(os.lstat(self.path).st_mode))

    def test_live_socket_of_other_process_refused(self):
        server = start_child(
            self,
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "s.bind(sys.argv[1]); s.listen(1)\n"
            "print('listening', flush=True)\n"
            "sys.stdin.read()\n",
            self.path,
        )
        self.assertEqual(read_line(server), "listening")
        self.assertRaises(SocketInUse, check_unix_socket_free, self.path)
        self.assertTrue(os.path.exists(self.path))

    def test_stale_socket_removed(self):
        sock = self.bound(listen=False)
        sock.close()
        self.assertTrue(check_unix_socket_free(self.path))
        self.assertFalse(os.path.exists(self.path))

    def test_bound_but_not_listening_socket_is_stale(self):
        self.bound(listen=False)
        self.assertTrue(check_unix_socket_free(self.path))

    def test_regular_file_never_removed(self):
        with open(self.path, "w") as f:
            f.write("precious\n")
        self.assertRaises(NotASocket, check_unix_socket_free, self.path)
        with open(self.path) as f:
            self.assertEqual(f.read(), "precious\n")

    def test_symlink_to_socket_never_followed(self):
        real = os.path.join(self.dir, "real.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.bind(real)
        os.symlink(real, self.path)
        self.assertRaises(NotASocket, check_unix_socket_free, self.path)
        self.assertTrue(os.path.exists(real))

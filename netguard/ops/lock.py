# -*- test-case-name: tests.test_lock -*-
"""
One instance per state directory, and never a live instance's unix socket.

L{acquire_instance_lock} holds an exclusive C{flock(2)} lock on C{<state_dir>/netguard.lock}
for the life of the process (a second copy fails with L{AlreadyRunning}, naming the running
PID); L{check_unix_socket_free} never unlinks a socket a live process accepts on. What an
operator sees: C{docs/operating.md} section 7.7.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat

from twisted.logger import Logger

#: The name of the lock file inside the state directory.
LOCK_FILE_NAME = "netguard.lock"

#: How many times acquiring starts over when the lock file was replaced under us.
_MAX_ATTEMPTS = 5

#: The most bytes read from a lock file to find the holder's PID.
_MAX_PID_BYTES = 32

log = Logger()


class InstanceConflict(Exception):
    """
    Another live process owns something we need (the state directory lock, a socket path).

    @ivar path: the contested path.
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class AlreadyRunning(InstanceConflict):
    """
    Another live process holds the instance lock of this state directory.

    The PID comes first in the message: C{twistd} shows only the first 100 bytes of a start-up
    error of a daemonizing process, and the PID is the part the operator needs.

    @ivar pid: the PID recorded by the holder, or L{None} if it could not be read.
    """

    def __init__(self, pid: int | None, path: str) -> None:
        who = f"pid {pid}" if pid is not None else "an unknown pid"
        super().__init__(f"netguard is already running as {who} (lock {path})", path)
        self.pid = pid


class SocketInUse(InstanceConflict):
    """
    A live process is accepting connections on a unix socket path we were asked to listen on.
    """

    def __init__(self, path: str) -> None:
        super().__init__(
            f"unix socket {path} is in use by a live process; refusing to take it over", path
        )


class NotASocket(InstanceConflict):
    """
    Something other than a socket exists where a unix socket should be created; it is never
    removed (a mistyped path must not cost the operator a file).
    """

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} exists and is not a unix socket; refusing to remove it", path)


class LockError(OSError):
    """
    The lock file could not be opened or is not a regular file (a symlink, a directory...).
    """


def _read_pid(fd: int) -> int | None:
    """
    The PID written in an open lock file, or L{None} if there is no valid one.
    """
    try:
        raw = os.pread(fd, _MAX_PID_BYTES, 0)
    except OSError:
        return None
    text = raw.decode("ascii", "replace").strip()
    if not text.isdigit():
        return None
    pid = int(text)
    return pid if pid > 0 else None


def _open_lock_file(path: str) -> int:
    """
    Open (creating, mode 0600) the lock file without following a symlink.

    @raise LockError: if it cannot be opened or is not a regular file.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise LockError(e.errno, f"cannot open the lock file: {e.strerror}", path) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise LockError(errno.EINVAL, "the lock file is not a regular file", path)
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != 0o600:
        os.fchmod(fd, 0o600)
    return fd


def _same_file(fd: int, path: str) -> bool:
    """
    Whether C{path} still names the file open on C{fd}.
    """
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


class InstanceLock:
    """
    The held instance lock of one state directory. Keep a reference for the life of the
    process; the kernel releases the lock when the process ends, however it ends.

    @ivar path: the lock file.
    @ivar pid: the PID last written into it.
    """

    def __init__(self, fd: int, path: str, pid: int) -> None:
        self._fd: int | None = fd
        self.path = path
        self.pid = pid

    @property
    def held(self) -> bool:
        """
        Whether this object still holds the lock (L{release} not called yet).
        """
        return self._fd is not None

    def fileno(self) -> int:
        """
        @return: the descriptor the lock is held on.
        @raise ValueError: if the lock was released.
        """
        if self._fd is None:
            raise ValueError("the instance lock was released")
        return self._fd

    def write_pid(self, pid: int | None = None) -> None:
        """
        Record C{pid} (default: this process) in the lock file. Call it in the daemon child
        after C{twistd} has forked, so the file names the process that really runs.

        @param pid: the PID to record; L{os.getpid} when L{None}.
        @raise ValueError: if the lock was released.
        """
        fd = self.fileno()
        previous, self.pid = self.pid, os.getpid() if pid is None else pid
        if previous != self.pid:
            log.info(
                "instance lock {path} now held by pid {pid} (twistd's daemon)",
                event="lock.acquired",
                path=self.path,
                pid=self.pid,
                stale_pid=None,
            )
        data = f"{self.pid}\n".encode("ascii")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def release(self) -> bool:
        """
        Remove the lock file, if we hold the lock and the path still names our file, then
        release the lock. Calling it again does nothing.

        @return: whether the file was removed.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return False
        removed = False
        try:
            if _same_file(fd, self.path):
                os.unlink(self.path)
                removed = True
        except OSError as e:
            log.warn(
                "could not remove the lock file {path}: {error}",
                event="lock.remove_failed",
                path=self.path,
                error=e.strerror or str(e),
            )
        finally:
            # Unlink first, unlock second: a copy waiting on the old file then sees that the
            # path no longer names it and starts over on a fresh file.
            os.close(fd)
        return removed


def acquire_instance_lock(state_dir: str) -> InstanceLock:
    """
    Take the instance lock of C{state_dir} and write our PID into it.

    Why C{flock} and not C{lockf}/C{fcntl} record locks:

      - the kernel drops a C{flock} lock when the last descriptor of its open file
        description closes, which happens when the holder exits, however it dies (SIGKILL
        included). A lock file left behind by a dead process is therefore I{not} locked: the
        next copy simply takes the lock and writes its own PID. There is no PID-liveness
        guess (C{kill(pid, 0)}), so a recycled PID can neither block a start nor let a
        second copy in;
      - a C{flock} lock belongs to the open file description, so it survives C{fork()}: when
        C{twistd} daemonizes after the service was built, the daemon child keeps the lock
        that the parent took, and the parent's exit does not release it. POSIX record locks
        (C{lockf}, C{fcntl(F_SETLK)}) belong to a process and are not inherited by a child:
        the lock would vanish at daemonization. (Call L{InstanceLock.write_pid} in the child
        to record its PID.)
      - the descriptor is opened with C{O_CLOEXEC}, so a program we execute never inherits
        (and never keeps alive) our lock.

    The lock file is removed by L{InstanceLock.release} only while we hold it, and only if
    the path still names the file we locked. Because the file can be removed, a copy that
    opened the old file just before the removal could lock a file that no longer has a name;
    so after locking this checks that the path still names the locked file, and starts again
    if not.

    @param state_dir: the state directory (it must exist).
    @return: the held L{InstanceLock}.
    @raise AlreadyRunning: if another live process holds the lock; its PID is in the message.
    @raise LockError: if the lock file cannot be opened or is not a regular file.
    """
    path = os.path.join(state_dir, LOCK_FILE_NAME)
    for _attempt in range(_MAX_ATTEMPTS):
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise AlreadyRunning(pid, path) from None
        except OSError:
            os.close(fd)
            raise
        if not _same_file(fd, path):
            # The holder removed the file between our open and our lock: start over.
            os.close(fd)
            continue
        previous = _read_pid(fd)
        lock = InstanceLock(fd, path, os.getpid())
        lock.write_pid()
        log.info(
            "instance lock {path} held by pid {pid}",
            event="lock.acquired",
            path=path,
            pid=lock.pid,
            stale_pid=previous if previous != lock.pid else None,
        )
        return lock
    raise LockError(errno.EAGAIN, "the lock file kept being replaced", path)


def check_unix_socket_free(path: str, timeout: float = 1.0) -> bool:
    """
    Make sure we may listen on the unix socket C{path} without stealing it.

    A socket that answers a connection is in use by a live process: it is left alone and
    L{SocketInUse} is raised. A socket that refuses connections (C{ECONNREFUSED}: nobody is
    listening) is stale and is removed, but only if the path still names the same socket we
    probed. Anything that is not a socket is never removed.

    This blocks for at most C{timeout} seconds; it is meant for start-up.

    @param path: the socket path (a file system path, not an abstract name).
    @param timeout: the longest wait for the probing connection.
    @return: whether a stale socket was removed (C{False} when the path was free).
    @raise SocketInUse: if a process accepts connections on it, or it cannot be told.
    @raise NotASocket: if something other than a socket is there.
    """
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(before.st_mode):
        raise NotASocket(path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(timeout)
        probe.connect(path)
    except ConnectionRefusedError:
        pass
    except FileNotFoundError:
        return False
    except OSError:
        # Timed out (a full backlog), no permission to connect...: we cannot prove it is dead.
        raise SocketInUse(path) from None
    else:
        raise SocketInUse(path)
    finally:
        probe.close()
    try:
        after = os.lstat(path)
    except FileNotFoundError:
        return False
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        # Someone replaced it while we probed: do not guess, let the caller try again.
        raise SocketInUse(path)
    os.unlink(path)
    log.info("removed stale unix socket {path}", event="socket.stale_removed", path=path)
    return True

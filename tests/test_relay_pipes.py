"""
Tests for L{netguard.relay_pipes}: when the kernel relay applies, and the bounds of the pipe
pool it borrows from (real pipes and real loopback sockets).
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import signal
import socket

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.proto_helpers import StringTransport
from twisted.trial import unittest

from netguard import relay_pipes
from netguard.relay_pipes import CHUNK, PipePool, kernel_relay_possible
from tests.test_relay_splice import SKIP, _Harness


class KernelRelayPossibleTests(unittest.TestCase):
    """
    L{kernel_relay_possible}: plain socket transports only.
    """

    skip = SKIP

    def test_plain_tcp_sockets(self) -> None:
        """
        Two of Twisted's plain TCP transports can be relayed in the kernel.
        """
        harness = _Harness(self, start=False)
        self.assertTrue(kernel_relay_possible(harness.a, harness.b))

    def test_unix_sockets(self) -> None:
        """
        Two of Twisted's unix socket transports can be relayed in the kernel.
        """
        harness = _Harness(self, family=socket.AF_UNIX, start=False)
        self.assertTrue(kernel_relay_possible(harness.a, harness.b))

    def test_not_tls(self) -> None:
        """
        A TLS transport (Twisted's TLS wrapper) on either side is not relayed in the kernel.
        """
        harness = _Harness(self, start=False)
        tls = TLSMemoryBIOFactory(
            optionsForClientTLS("example.invalid"), True, Factory.forProtocol(Protocol)
        ).buildProtocol(None)
        self.assertFalse(kernel_relay_possible(tls, harness.b))
        self.assertFalse(kernel_relay_possible(harness.a, tls))

    def test_not_other_transports(self) -> None:
        """
        A transport that is not a socket of Twisted's own (a test transport, the echo
        backend's mirror) is not relayed in the kernel.
        """
        harness = _Harness(self, start=False)
        self.assertFalse(kernel_relay_possible(StringTransport(), harness.b))

    def test_not_without_splice(self) -> None:
        """
        Where there is no C{os.splice} (another system, an older Python), the same two
        plain sockets are not relayed in the kernel.
        """
        harness = _Harness(self, start=False)
        self.assertTrue(kernel_relay_possible(harness.a, harness.b))
        self.patch(relay_pipes, "system_splice", lambda: None)
        self.assertFalse(kernel_relay_possible(harness.a, harness.b))

    def test_sigpipe_is_ignored(self) -> None:
        """
        C{splice} into a socket whose peer is gone raises C{SIGPIPE}: the process the relay
        runs in ignores it (as Python arranges at start-up), so the call fails with
        C{EPIPE} instead of killing the process.
        """
        self.assertIs(signal.getsignal(signal.SIGPIPE), signal.SIG_IGN)
        self.assertTrue(relay_pipes.sigpipe_ignored())

    def test_not_where_sigpipe_kills(self) -> None:
        """
        In a process that restored C{SIGPIPE}'s default action (it would be killed by a
        splice into a reset socket), nothing is relayed in the kernel.
        """
        harness = _Harness(self, start=False)
        previous = signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        self.addCleanup(signal.signal, signal.SIGPIPE, previous)
        self.assertFalse(kernel_relay_possible(harness.a, harness.b))
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.assertTrue(kernel_relay_possible(harness.a, harness.b))


class PipePoolTests(unittest.TestCase):
    """
    L{PipePool}: what it lends, keeps and closes.
    """

    skip = SKIP

    def test_pipes_are_chunk_sized(self) -> None:
        """
        A lent pipe holds L{CHUNK} bytes, is non-blocking and close-on-exec.
        """
        pool = PipePool()
        pipe = pool.take()
        self.addCleanup(pool.close)
        self.addCleanup(pool.give_back, pipe, True)
        self.assertEqual(fcntl.fcntl(pipe[1], relay_pipes._F_GETPIPE_SZ), CHUNK)
        for fd in pipe:
            self.assertFalse(os.get_blocking(fd))
            self.assertFalse(os.get_inheritable(fd))

    def test_pool_is_bounded(self) -> None:
        """
        The pool keeps at most C{max_idle} empty pipes and closes the rest; a pipe given back
        with bytes in it is closed, never reused.
        """
        pool = PipePool(max_idle=1)
        first, second, third = pool.take(), pool.take(), pool.take()
        self.assertEqual(pool.in_use, 3)
        pool.give_back(first, empty=True)
        pool.give_back(second, empty=True)
        os.write(third[1], b"x")
        pool.give_back(third, empty=False)
        self.assertEqual((pool.in_use, pool.idle), (0, 1))
        for fd in (*second, *third):
            self.assertRaises(OSError, os.fstat, fd)
        self.assertEqual(pool.take(), first)
        pool.give_back(first, empty=True)
        pool.close()
        self.assertEqual(pool.idle, 0)

    def test_undersized_pipe_is_not_pooled(self) -> None:
        """
        A pipe the kernel would not make L{CHUNK} large (past the per-user pipe quota the
        resize fails) is lent, then closed when given back, never kept for reuse.
        """

        class QuotaReached:
            """A hostile stand-in for L{fcntl}: every pipe resize is refused."""

            @staticmethod
            def fcntl(fd: int, command: int, argument: int = 0) -> int:
                if command == relay_pipes._F_SETPIPE_SZ:
                    raise OSError(errno.EPERM, "Operation not permitted")
                return fcntl.fcntl(fd, command, argument)

        pool = PipePool()
        self.patch(relay_pipes, "fcntl", QuotaReached)
        small = pool.take()
        pool.give_back(small, empty=True)
        self.assertEqual(pool.idle, 0)
        for fd in small:
            self.assertRaises(OSError, os.fstat, fd)
        self.patch(relay_pipes, "fcntl", fcntl)
        full = pool.take()
        pool.give_back(full, empty=True)
        self.assertEqual(pool.idle, 1)
        pool.close()

    def test_lending_is_bounded(self) -> None:
        """
        At most C{max_in_use} pipes are lent at once: one more is refused with C{EMFILE}
        (counted in C{refused}), and lent again once one is given back.
        """
        pool = PipePool(max_in_use=2)
        first, second = pool.take(), pool.take()
        error = self.assertRaises(OSError, pool.take)
        self.assertEqual(error.errno, errno.EMFILE)
        self.assertEqual((pool.in_use, pool.refused), (2, 1))
        pool.give_back(first, empty=True)
        third = pool.take()
        self.assertEqual(third, first)
        for pipe in (second, third):
            pool.give_back(pipe, empty=True)
        pool.close()

    def test_default_bounds(self) -> None:
        """
        By default a pool keeps at most 8 idle pipes (16 descriptors, 2 MiB of the pipe
        quota) and lends at most a quarter of the descriptor limit: pipes never hold more
        than half of the process's descriptors.
        """
        pool = PipePool()
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertEqual(pool.max_idle, 8)
        self.assertEqual(pool.max_in_use, soft // 4)

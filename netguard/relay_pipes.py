# -*- test-case-name: tests.test_relay_splice -*-
"""
What the kernel relay (L{netguard.relay_splice.KernelSplice}) stands on: when it applies
(L{kernel_relay_possible}) and the bounded pool of pipes it borrows (L{PipePool}).
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import signal
import sys
import weakref
from collections.abc import Callable

from netguard.proxy_header import ProxyHeaderProtocol
from netguard.sending import plain_socket

#: The most bytes one direction holds in flight: its pipe is made this large (a Linux pipe
#: holds 64 KiB unless told otherwise). Four times the default: a quarter of the splice
#: calls and event-loop wake-ups per byte. A pipe the kernel will not make this large (past
#: the per-user pipe quota) is used once and closed, never pooled.
CHUNK = 262144

#: The size of the one buffer every relay of a pool reads short messages into.
SMALL_READ = 65536

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)

SpliceCall = Callable[..., int]


def system_splice() -> SpliceCall | None:
    """
    C{os.splice} on Linux; L{None} elsewhere.
    """
    splice = getattr(os, "splice", None)
    if splice is None or not sys.platform.startswith("linux"):
        return None
    return splice  # type: ignore[no-any-return]


def sigpipe_ignored() -> bool:
    """
    Whether this process ignores C{SIGPIPE}. C{splice} into a socket whose peer has gone
    raises C{SIGPIPE} (there is no C{MSG_NOSIGNAL} for it); Python ignores the signal at
    start-up, so the call fails with C{EPIPE} instead. A process that restored the default
    action would be killed: the kernel relay is not used there.
    """
    return signal.getsignal(signal.SIGPIPE) is signal.SIG_IGN


def relay_transport(transport: object) -> object:
    """
    The transport a kernel relay acts on for C{transport}: the TCP transport under a
    L{netguard.proxy_header.ProxyHeaderProtocol} once that wrapper is a pure pass-through
    (L{ProxyHeaderProtocol.socket_transport}); C{transport} itself otherwise.
    """
    if isinstance(transport, ProxyHeaderProtocol):
        under = transport.socket_transport()
        if under is not None:
            return under
    return transport


def _plain_socket(transport: object) -> bool:
    return plain_socket(relay_transport(transport))


def kernel_relay_possible(a: object, b: object, splice: SpliceCall | None = None) -> bool:
    """
    Whether a L{netguard.relay_splice.KernelSplice} can relay between C{a} and C{b}: both
    are Twisted's own plain TCP or unix socket transports (not TLS, not a wrapper around
    one, except a C{haproxy:} listener's wrapper once it is a pure pass-through: the relay
    acts on the transport under it, L{relay_transport}), on Linux with C{os.splice}, in a
    process that ignores C{SIGPIPE} (L{sigpipe_ignored}).

    @param splice: the splice call to be used (by default C{os.splice}, where there is one).
    """
    if splice is None:
        splice = system_splice()
    return splice is not None and _plain_socket(a) and _plain_socket(b) and sigpipe_ignored()


def _close_pipes(pipes: list[tuple[int, int]]) -> None:
    while pipes:
        read_end, write_end = pipes.pop()
        os.close(read_end)
        os.close(write_end)


def default_max_in_use() -> int:
    """
    How many pipes a pool lends at most by default: a quarter of the process's descriptor
    limit (C{RLIMIT_NOFILE}, soft), so that pipes never hold more than half of the
    descriptors and the rest stay for connections, logs and DNS.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 1 << 20
    return max(1, soft // 4)


class PipePool:
    """
    The pipes kernel relays borrow while bytes are in flight, and a few idle ones kept for
    the next borrower (an idle relay holds none).

    Bounds: at most C{max_in_use} pipes are lent at once (two descriptors each); a borrower
    refused one (the bound, or the kernel's own descriptor or pipe limits) moves its bytes
    through user space instead, as the ordinary relay does. At most C{max_idle} empty pipes
    are kept; a pipe the kernel would not size to L{CHUNK} (over the per-user pipe quota,
    C{/proc/sys/fs/pipe-user-pages-soft}) is closed when given back, never pooled.

    @ivar max_idle: how many empty pipes are kept open for reuse.
    @ivar max_in_use: how many pipes may be lent at once.
    @ivar in_use: pipes lent out now.
    @ivar refused: how many times a pipe was asked for and none could be lent.
    @ivar relays: kernel relays started with this pool.
    @ivar fallbacks: kernel relays that found the kernel could not splice and went on as
        an ordinary L{netguard.relay.Splice}.
    """

    __slots__ = (
        "_idle",
        "_undersized",
        "_finalizer",
        "max_idle",
        "max_in_use",
        "in_use",
        "refused",
        "relays",
        "fallbacks",
        "buffer",
        "view",
        "__weakref__",
    )

    def __init__(self, max_idle: int = 8, max_in_use: int | None = None):
        """
        @param max_idle: how many empty pipes are kept open for reuse (each costs two
            descriptors and L{CHUNK} of the per-user pipe quota while kept).
        @param max_in_use: how many pipes may be lent at once; by default
            L{default_max_in_use}.
        """
        self.max_idle = max_idle
        self.max_in_use = default_max_in_use() if max_in_use is None else max_in_use
        self.in_use = 0
        self.refused = 0
        self.relays = 0
        self.fallbacks = 0
        #: The one buffer every relay of this pool reads short messages into (the reactor
        #: runs one read at a time, and each is sent on before the next).
        self.buffer = bytearray(SMALL_READ)
        self.view = memoryview(self.buffer)
        self._idle: list[tuple[int, int]] = []
        self._undersized: set[int] = set()
        self._finalizer = weakref.finalize(self, _close_pipes, self._idle)

    @property
    def idle(self) -> int:
        """
        How many empty pipes are kept open now.
        """
        return len(self._idle)

    def take(self) -> tuple[int, int]:
        """
        Lend a pipe (non-blocking, close-on-exec).

        @return: its read and write ends.
        @raise OSError: when no pipe can be lent: C{max_in_use} are out (C{EMFILE}), or the
            kernel refuses one (descriptor limits).
        """
        if self.in_use >= self.max_in_use:
            self.refused += 1
            raise OSError(errno.EMFILE, "the pipe pool's bound is reached")
        if self._idle:
            pipe = self._idle.pop()
        else:
            try:
                pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                self.refused += 1
                raise
            try:
                fcntl.fcntl(pipe[1], _F_SETPIPE_SZ, CHUNK)
                full = fcntl.fcntl(pipe[1], _F_GETPIPE_SZ) >= CHUNK
            except OSError:
                full = False  # over the pipe quota: a smaller pipe, which fills sooner
            if not full:
                self._undersized.add(pipe[1])
        self.in_use += 1
        return pipe

    def give_back(self, pipe: tuple[int, int], empty: bool) -> None:
        """
        Return a lent pipe: kept for reuse when it is C{empty}, full-sized and the pool has
        room, closed otherwise (bytes left in it are dropped).
        """
        self.in_use -= 1
        if empty and len(self._idle) < self.max_idle and pipe[1] not in self._undersized:
            self._idle.append(pipe)
        else:
            self._undersized.discard(pipe[1])
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        """
        Close the idle pipes.
        """
        _close_pipes(self._idle)

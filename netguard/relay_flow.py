# -*- test-case-name: tests.test_relay_splice -*-
"""
One direction of the kernel relay (L{netguard.relay_splice.KernelSplice}): a L{_Flow} reads
its source socket and moves the bytes to its target socket through a pipe (C{os.splice}) or,
for short reads, through the pool's buffer; it is its source transport's C{doRead}, and its
target's C{doWrite} while bytes wait for the target.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any

from twisted.internet import main

from netguard.relay import A, B, DelayedCall
from netguard.relay_pipes import CHUNK
from netguard.sending import has_user_data

if TYPE_CHECKING:
    from netguard.relay_splice import KernelSplice


#: A splice shorter than this switches its direction back to short reads (one C{recv_into}
#: into the pool's buffer, L{netguard.relay_pipes.SMALL_READ} bytes, and one C{send}:
#: cheaper than two C{splice} calls for a few bytes); a short read that fills the buffer
#: switches it to C{splice} (HAProxy's C{splice-auto} decides alike).
SMALL = 16384

#: How many full reads one readable event may move before the reactor serves the others (a
#: bulk stream saves the event loop's round trips; a short read ends the burst at once).
_BURST = 4

#: Errors that mean this kernel cannot splice these descriptors at all.
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


class _Flow:
    """
    One direction of a L{KernelSplice}: bytes read from C{source} go through one pipe to
    C{target}. The flow itself is the source transport's C{doRead} (calling it is
    L{readable}: no bound method is made per relay), and its L{writable} becomes the target
    transport's C{doWrite} while the flow waits for the target (L{hook_writes}: bytes in its
    pipe or in Twisted's buffer of the target, its source paused) and until everything has
    been written (L{drained}); otherwise Twisted's own C{doWrite} serves the target, so an
    idle relay allocates nothing for its hooks. The reactor keeps watching each socket once,
    through its own transport. Descriptors are asked of the transports at each call, never
    kept: a transport whose connection is gone answers -1, never a number reused by another
    socket.
    """

    __slots__ = (
        "relay",
        "side",
        "source",
        "target",
        "pipe",
        "queued",
        "count",
        "eof",
        "paused",
        "paused_at",
        "took",
        "half_close_pending",
        "stall",
        "writing",
        "small",
        "hooked",
    )

    def __init__(self, relay: KernelSplice, side: str, source: Any, target: Any):
        self.relay = relay
        self.side = side
        self.source = source
        self.target = target
        self.pipe: tuple[int, int] | None = None
        self.queued = 0
        self.count = 0
        self.eof = False
        self.paused = False
        self.paused_at = 0.0
        self.took = False
        self.half_close_pending = False
        self.stall: DelayedCall | None = None
        self.writing = False
        self.small = True
        self.hooked = False

    # -- reactor events --------------------------------------------------------------------

    def readable(self) -> object:
        """
        The source socket is readable: move what it holds into the pipe, then on to the
        target as far as it takes it.

        @return: what C{doRead} returns: L{None}, or why the source connection ended
            (C{CONNECTION_DONE} for its EOF, which Twisted hands to the protocol's
            C{readConnectionLost} as usual; C{CONNECTION_LOST} for an error).
        """
        relay = self.relay
        if self.paused or self.eof or relay.closing:
            self.source.stopReading()
            return None
        for burst in range(_BURST):
            if self.small and not self.queued:
                return self._copy()
            if self.pipe is None:
                try:
                    self.pipe = relay.pool.take()
                except OSError:
                    # No pipe to be had (the pool's bound, descriptor limits): this read
                    # goes through user space, bounded the same way.
                    return self._read_in_user_space()
            room = CHUNK - self.queued
            if room <= 0:
                self.pause()
                return None
            try:
                moved = relay.splice_call(self.source.fileno(), self.pipe[1], room, flags=_FLAGS)
            except BlockingIOError:
                if self.queued:
                    self.pause()  # the pipe is full: its target is not taking bytes
                    return None
                self._release()
                if burst == 0:
                    # Readable, yet nothing to splice: the next byte is TCP urgent data
                    # (splice stops at the urgent mark). One read in user space, like the
                    # ordinary relay's recv, skips the urgent byte and moves what follows.
                    return self._read_in_user_space()
                return None
            except InterruptedError:
                return None
            except OSError as error:
                if error.errno not in _UNSUPPORTED:
                    return main.CONNECTION_LOST
                if relay.may_fall_back():
                    return relay.fall_back(self)
                relay.splice_failed(self, error)
                return None
            if moved == 0:
                if not self.queued:
                    self._release()
                return main.CONNECTION_DONE
            relay.spliced = True
            if moved < SMALL:
                self.small = True
            self.queued += moved
            self.count += moved
            relay.last = relay.clock.seconds()
            self.flush(from_target=False)
            if self.queued >= CHUNK:
                self.pause()
                return None
            if moved < room or self.queued or self.paused or relay.closing:
                return None  # the source had no more, or the target is not taking it all
        return None

    #: The flow is its source transport's C{doRead}.
    __call__ = readable

    def want_writes(self) -> None:
        """
        Install L{writable} as the target transport's C{doWrite} (once), so that the
        target's write events reach this flow; then ask for them.
        """
        self.hook_writes()
        self.target.startWriting()

    def hook_writes(self) -> None:
        """
        Make L{writable} the target transport's C{doWrite} (once), before anything the flow
        writes or waits for there: Twisted's own C{doWrite} would write its buffer but never
        tell the flow it drained.
        """
        if not self.hooked:
            self.hooked = True
            self.target.doWrite = self.writable

    def unhook_writes(self) -> None:
        """
        Give the target's C{doWrite} back to Twisted (unless Twisted replaced it itself, as
        C{abortConnection} does): nothing of this flow waits for the target any more.
        """
        if self.hooked:
            self.hooked = False
            target = self.target
            if getattr(target.doWrite, "__self__", None) is self:
                del target.doWrite

    def _read_in_user_space(self) -> object:
        """
        One read of the source by its own transport: its protocol hands the bytes to
        L{KernelSplice.data_from}, which queues them in Twisted's buffer of the target.
        """
        return type(self.source).doRead(self.source)

    def _copy(self) -> object:
        """
        Move one short read through the pool's buffer: C{recv_into}, then C{send} as much
        as the target takes; the rest goes to Twisted's buffer of the target, ahead of
        anything later, and the source is not read until it has been written.
        """
        relay = self.relay
        view = relay.pool.view
        try:
            size = self.source.socket.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return main.CONNECTION_LOST
        if size == 0:
            return main.CONNECTION_DONE
        if size == len(view):
            self.small = False  # a bulk stream: splice from now on
        target = self.target
        if relay.gone_side(target):
            return None  # bytes for a side that is gone: dropped, not counted
        if target.fileno() < 0:
            relay.unreported_loss(target)
            return None
        self.count += size
        relay.last = relay.clock.seconds()
        sent = 0
        if not has_user_data(target):
            try:
                sent = target.socket.send(view[:size])
            except OSError:
                sent = 0  # full, or an error that the target's own events will report
        if sent < size:
            self.hook_writes()
            target.write(bytes(view[sent:size]))
            self.pause()
        return None

    def writable(self) -> object:
        """
        The target socket is writable: first what Twisted's own buffer holds for it (and
        Twisted's pending close or half-close once that is empty), then the pipe.

        @return: what C{doWrite} returns.
        """
        target = self.target
        if not self.queued or has_user_data(target):
            why = type(target).doWrite(target)
            if why or has_user_data(target):
                return why
            if not self.queued:
                self.drained()
                return None
        return self.flush(from_target=True)

    # -- moving bytes ----------------------------------------------------------------------

    def flush(self, from_target: bool) -> object:
        """
        Move what the pipe holds to the target, as far as it takes it; wait for the target
        to be writable for the rest.

        @param from_target: whether this runs in the target's own C{doWrite} (which can
            report an error of the target; elsewhere the target's C{doWrite} is asked to).
        """
        target = self.target
        relay = self.relay
        if relay.gone_side(target):
            self.drop()
            return None
        target_fd = target.fileno()
        if target_fd < 0:
            relay.unreported_loss(target)
            return None
        if has_user_data(target):
            self.wait_for_target()
            return None
        assert self.pipe is not None
        while self.queued:
            try:
                moved = relay.splice_call(self.pipe[0], target_fd, self.queued, flags=_FLAGS)
            except BlockingIOError:
                self.wait_for_target()
                return None
            except InterruptedError:
                continue
            except OSError as error:
                if error.errno in _UNSUPPORTED:
                    relay.splice_failed(self, error)
                    return None
                if from_target:
                    return main.CONNECTION_LOST
                self.writing = True
                self.want_writes()
                return None
            if moved <= 0:
                self.wait_for_target()
                return None
            self.queued -= moved
            self.took = True
        if self.writing and not (target.disconnecting or target._writeDisconnecting):
            self.writing = False
            target.stopWriting()
        self.drained()
        return None

    def wait_for_target(self) -> None:
        """
        Bytes wait for the target, which takes no more now: ask for its write events, and
        start its stalled-reader clock unless it runs already.
        """
        self.writing = True
        self.want_writes()
        relay = self.relay
        if self.stall is None and not relay.closing:
            self.took = False
            self.stall = relay.clock.callLater(relay.write_timeout, self.stall_check)

    def pause(self) -> None:
        """
        The target holds what it can: stop reading the source until it has taken it all,
        and start the target's stalled-reader clock (unless it runs already).
        """
        self.source.stopReading()
        self.hook_writes()
        if self.paused:
            return
        self.paused = True
        relay = self.relay
        self.paused_at = relay.clock.seconds()
        if self.stall is None and not relay.closing:
            self.stall = relay.clock.callLater(relay.write_timeout, self.stall_check)

    def stall_check(self) -> None:
        """
        The stalled-reader clock ran out: a target that left bytes waiting and took none of
        them for C{write_timeout}, or, while its source is paused, has not taken them all
        within C{write_timeout} of the pause (as L{Splice} measures a full write queue), is
        a stalled reader; one that is still taking bytes gets another C{write_timeout}.
        """
        self.stall = None
        relay = self.relay
        if relay.closing or not (self.queued or has_user_data(self.target)):
            return
        now = relay.clock.seconds()
        if self.paused:
            left = self.paused_at + relay.write_timeout - now
            if left > 0:
                self.stall = relay.clock.callLater(left, self.stall_check)
                return
        elif self.took:
            self.took = False
            self.stall = relay.clock.callLater(relay.write_timeout, self.stall_check)
            return
        relay.stalled(self, other(self.side))

    def drained(self) -> None:
        """
        Everything read from the source has reached the target (pipe and Twisted's buffer
        empty): give the pipe back and the target's C{doWrite} to Twisted, then resume
        reading, or perform the half-close or close that waited for this (Twisted's own
        C{doWrite} completes those).
        """
        self._release()
        self.cancel_stall()
        self.unhook_writes()
        relay = self.relay
        if relay.closing:
            if not relay.gone_side(self.target):
                self.target.loseConnection()
            return
        if self.half_close_pending:
            self.half_close_pending = False
            self.target.loseWriteConnection()
        if self.paused:
            self.paused = False
            if not (self.eof or relay.gone_side(self.source)):
                self.source.startReading()

    def cancel_stall(self) -> None:
        """
        Cancel the stalled-reader timer, if any.
        """
        if self.stall is not None:
            if self.stall.active():
                self.stall.cancel()
            self.stall = None

    def _release(self) -> None:
        if self.pipe is not None:
            self.relay.pool.give_back(self.pipe, not self.queued)
            self.pipe = None
            self.queued = 0

    def drop(self) -> None:
        """
        The relay is over for this direction: drop what the pipe holds.
        """
        self.cancel_stall()
        self._release()

    def uninstall(self) -> None:
        """
        Give the read and write events back to the transports (unless Twisted replaced them
        itself, as C{abortConnection} does).
        """
        source = self.source
        if source.doRead is self:
            del source.doRead
        self.unhook_writes()


_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


def other(side: str) -> str:
    """
    The side that is not C{side}.
    """
    return B if side == A else A

# -*- test-case-name: tests.test_notify -*-
"""
systemd integration without libsystemd: readiness and reload notification, the watchdog,
and inherited sockets.

L{sd_notify} sends one datagram to C{$NOTIFY_SOCKET} as C{sd_notify(3)} does, and does
nothing when the variable is not set, so the same code runs under systemd, another
supervisor or a terminal. Unit files, what is notified when, and socket activation:
C{docs/systemd.md}.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

#: The first descriptor systemd passes (C{SD_LISTEN_FDS_START}).
LISTEN_FDS_START = 3

#: The longest notification sent; systemd accepts more, but ours are a few words.
MAX_MESSAGE_BYTES = 4096

log = Logger()


def _address(value: str) -> str | None:
    """
    The socket address named by C{$NOTIFY_SOCKET}: a path, or an abstract name (C{@name},
    sent with a leading NUL); L{None} for kinds we do not speak (C{vsock:...}).
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def status_message(text: str) -> str:
    """
    A C{STATUS=} assignment for C{text}, on one line: line breaks and other control
    characters are replaced by spaces, so the text cannot add an assignment of its own (such
    as C{MAINPID=}).

    @param text: a short human-readable state.
    @return: C{"STATUS=<text>"}.
    """
    return "STATUS=" + "".join(c if c.isprintable() else " " for c in text)


def sd_notify(
    message: str, environ: Mapping[str, str] | None = None, timeout: float = 1.0
) -> bool:
    """
    Send C{message} (for example C{"READY=1"}, C{"STOPPING=1"},
    C{"READY=1\\nSTATUS=serving"}) to the service manager.

    @param message: newline-separated C{KEY=VALUE} assignments.
    @param environ: the environment to read C{NOTIFY_SOCKET} from; L{os.environ} when L{None}.
    @param timeout: the most seconds the send may block (it is a local datagram; it only
        blocks if the manager's queue is full).
    @return: whether the message was sent; C{False} when there is no C{NOTIFY_SOCKET}, it is
        of an unsupported kind, or the send failed (logged as C{notify.failed}).
    @raise ValueError: if C{message} is empty, holds a NUL, or is longer than
        L{MAX_MESSAGE_BYTES}.
    """
    data = message.encode("utf-8")
    if not data or b"\0" in data or len(data) > MAX_MESSAGE_BYTES:
        raise ValueError("a notification is 1 to 4096 bytes without NUL")
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET", "")
    if not target:
        return False
    address = _address(target)
    if address is None:
        log.warn(
            "NOTIFY_SOCKET of an unsupported kind; not notifying",
            event="notify.unsupported",
        )
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(timeout)
            sock.sendto(data, address)
    except OSError as e:
        log.warn(
            "could not notify the service manager: {error}",
            event="notify.failed",
            error=e.strerror or type(e).__name__,
        )
        return False
    return True


def notify_ready(status: str | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """
    Tell the service manager that start-up is complete (every listener is open).

    @param status: an optional C{STATUS=} text sent with it.
    @return: see L{sd_notify}.
    """
    message = "READY=1" if status is None else "READY=1\n" + status_message(status)
    return sd_notify(message, environ)


def notify_stopping(status: str | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """
    Tell the service manager that a shutdown has begun.

    @param status: an optional C{STATUS=} text sent with it.
    @return: see L{sd_notify}.
    """
    message = "STOPPING=1" if status is None else "STOPPING=1\n" + status_message(status)
    return sd_notify(message, environ)


def monotonic_usec() -> int:
    """
    C{CLOCK_MONOTONIC} in microseconds, the clock systemd's C{MONOTONIC_USEC=} is read on.
    """
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def notify_reloading(
    environ: Mapping[str, str] | None = None, now_usec: Callable[[], int] = monotonic_usec
) -> bool:
    """
    Tell the service manager that a reload has begun: C{RELOADING=1} with
    C{MONOTONIC_USEC=} the moment it began (C{Type=notify-reload} units need both); send
    L{notify_ready} when it is over, whatever its outcome.

    @param now_usec: the C{CLOCK_MONOTONIC} reading in microseconds.
    @return: see L{sd_notify}.
    """
    return sd_notify(f"RELOADING=1\nMONOTONIC_USEC={int(now_usec())}", environ)


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float:
    """
    How often the service manager wants C{WATCHDOG=1}, as C{sd_watchdog_enabled(3)} reads
    it: C{$WATCHDOG_USEC} (a positive number of microseconds), provided C{$WATCHDOG_PID}
    is absent or names this process.

    @param environ: the environment; L{os.environ} when L{None}.
    @param pid: the PID C{WATCHDOG_PID} must name; L{os.getpid} when L{None}.
    @return: the watchdog timeout in seconds; 0 when there is no watchdog for us (unset,
        malformed, zero, or meant for another process).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
        return 0.0
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid is not None:
        me = os.getpid() if pid is None else pid
        if not (watchdog_pid.isascii() and watchdog_pid.isdigit()) or int(watchdog_pid) != me:
            return 0.0
    return int(usec) / 1_000_000


class Watchdog(Service):
    """
    Send C{WATCHDOG=1} every half of the manager's watchdog timeout, from the reactor: if the
    event loop stops turning, the keep-alives stop and systemd acts (C{WatchdogSec=}).

    Does nothing when the manager set no watchdog for this process (L{watchdog_interval}).

    @ivar timeout: the manager's watchdog timeout in seconds (0: no watchdog).
    """

    def __init__(
        self,
        clock: IReactorTime,
        environ: Mapping[str, str] | None = None,
        pid: int | None = None,
    ) -> None:
        self._clock = clock
        self._environ = environ
        self.timeout = watchdog_interval(environ, pid)
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        """
        Send the first keep-alive now, then every C{timeout / 2} seconds.
        """
        super().startService()
        if self.timeout <= 0 or self._loop is not None:
            return
        self._loop = LoopingCall(self._ping)
        self._loop.clock = self._clock
        self._loop.start(self.timeout / 2, now=True)

    def stopService(self) -> Any:
        """
        Stop sending keep-alives.
        """
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        return super().stopService()

    def _ping(self) -> None:
        sd_notify("WATCHDOG=1", self._environ)


def systemd_listen_fds(environ: Mapping[str, str] | None = None, pid: int | None = None) -> int:
    """
    How many listening sockets systemd passed to this process (descriptors
    L{LISTEN_FDS_START} onwards), as C{sd_listen_fds(3)} counts them.

    The variables count only if C{LISTEN_PID} is this process: a child that inherited the
    environment but not the role gets 0. Unlike C{sd_listen_fds}, this never changes the
    environment. Note that Twisted's C{systemd:} server endpoint already consumes the
    variables: importing L{twisted.internet.endpoints} reads them (for the endpoint parser)
    and I{removes} them from C{os.environ}, so that the descriptors are not adopted twice.
    After that import this function sees nothing in C{os.environ}; call it with a copy of
    the environment taken earlier, or rely on the C{systemd:domain=INET:index=0} listener
    strings, which is how netguard adopts them.

    @param environ: the environment; L{os.environ} when L{None}.
    @param pid: the PID the variables must name; L{os.getpid} when L{None}.
    @return: the count, 0 when absent, meant for another process, or malformed.
    """
    env = os.environ if environ is None else environ
    me = os.getpid() if pid is None else pid
    listen_pid = env.get("LISTEN_PID", "")
    count = env.get("LISTEN_FDS", "")
    if not (listen_pid.isdigit() and count.isdigit()) or int(listen_pid) != me:
        return 0
    return int(count)

# -*- test-case-name: tests.test_workers -*-
"""
One worker's place in the supervisor: its slot (position, state, process, timers), the
restart backoff, and how an ended process's status is read. C{docs/operating.md} section
7.10.
"""

from __future__ import annotations

from typing import Any, Final

from twisted.python.failure import Failure

#: The first restart delay, its ceiling, and how long a worker must have lived for the next
#: restart to start again from the first delay.
FIRST_DELAY: Final = 0.5
MAX_DELAY: Final = 30.0
STABLE_AFTER: Final = 60.0

#: Worker states.
STARTING: Final = "starting"
RUNNING: Final = "running"
WAITING: Final = "waiting"  # exited; a restart is scheduled
STOPPING: Final = "stopping"
STOPPED: Final = "stopped"


class WorkerSlot:
    """
    One worker position (0 to N-1) and the process currently filling it.

    @ivar index: the position, stable across restarts.
    @ivar state: L{STARTING}, L{RUNNING}, L{WAITING}, L{STOPPING} or L{STOPPED}.
    @ivar pid: the live process's id, or L{None}.
    @ivar handle: the live process's handle (L{ProcessHandle}), or L{None}.
    @ivar channel: the AMP connection to the live process, or L{None}.
    @ivar started_at: when the live (or last) process was started.
    @ivar delay: the restart delay the next unstable exit waits.
    @ivar restarts: how many times this slot's worker was restarted.
    @ivar timer: the pending restart, or L{None}.
    @ivar deadline: the pending start deadline (L{START_TIMEOUT}), or L{None}.
    @ivar progress_at: when the starting worker last made progress (its start, its
        C{Ready}, an answered replay batch): the deadline is L{START_TIMEOUT} after it.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.state = STOPPED
        self.pid: int | None = None
        self.handle: Any = None
        self.channel: Any = None
        self.started_at = 0.0
        self.delay = FIRST_DELAY
        self.restarts = 0
        self.timer: Any = None
        self.deadline: Any = None
        self.progress_at = 0.0

    def cancel_deadline(self) -> None:
        """
        Cancel the start deadline, if one is pending.
        """
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None

    def summary(self, now: float) -> dict[str, Any]:
        """
        This slot's line in C{ctl status}.
        """
        return {
            "index": self.index,
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "uptime": round(now - self.started_at, 3) if self.pid is not None else None,
        }


def next_delay(delay: float, lived: float) -> tuple[float, float]:
    """
    The backoff rule: a worker that lived L{STABLE_AFTER} seconds or more is restarted after
    L{FIRST_DELAY}; otherwise after C{delay}. The delay after that doubles, up to
    L{MAX_DELAY}.

    @param delay: the slot's current delay.
    @param lived: how long the worker that just exited ran.
    @return: C{(wait now, the slot's next delay)}.
    """
    wait = FIRST_DELAY if lived >= STABLE_AFTER else delay
    return wait, min(MAX_DELAY, wait * 2)


def exit_status(reason: Failure | None) -> tuple[int | None, int | None]:
    """
    C{(exit code, signal)} of an ended process, from C{processEnded}'s reason.
    """
    value = getattr(reason, "value", None)
    return getattr(value, "exitCode", None), getattr(value, "signal", None)

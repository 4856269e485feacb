"""
The typed seam for time that netguard's timed parts take instead of the reactor: the part of
L{twisted.internet.interfaces.IReactorTime} they use, so that tests pass a
L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Cancellable(Protocol):
    """
    What L{Scheduler.callLater} returns (an L{twisted.internet.interfaces.IDelayedCall}).
    """

    def active(self) -> bool:
        """
        Whether the call is still to happen.
        """
        ...

    def cancel(self) -> None:
        """
        Stop the call from happening.
        """
        ...


class Scheduler(Protocol):
    """
    The time and the delayed calls: a reactor, or a L{twisted.internet.task.Clock} in tests.
    """

    def seconds(self) -> float:
        """
        The current time in seconds.
        """
        ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object
    ) -> Cancellable:
        """
        Call C{callable(*args)} in C{delay} seconds.
        """
        ...

# -*- test-case-name: tests.test_framing -*-
"""
The handshake deadline and the idle timeout of L{netguard.framing.GuardedLineReceiver},
sharing one timer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from netguard.greeting import FramingPhase


class SharedDeadline:
    """
    One timer for two deadlines, armed for the nearer: the handshake deadline (an absolute
    time, C{_handshake_at}) and the idle timeout (L{TimeoutMixin<twisted.protocols.policies.
    TimeoutMixin>}'s C{setTimeout}/C{resetTimeout}, which this replaces), so a connection
    holds one timer and a finished handshake leaves no cancelled one behind in the reactor.
    L{netguard.framing.GuardedLineReceiver} (which see for the attributes used here) sets
    C{_handshake_at} and calls L{_arm_deadline}.
    """

    clock: Any
    phase: FramingPhase
    timeOut: float | None
    _idle_at: float | None
    _handshake_at: float | None
    _deadline: Any

    if TYPE_CHECKING:

        def timeoutConnection(self) -> None: ...

        def _handshake_expired(self) -> None: ...

    def setTimeout(self, period: float | None) -> float | None:  # type: ignore[override]
        """
        L{TimeoutMixin.setTimeout}: the idle timeout is C{period} seconds from now (L{None}:
        none). It shares one timer with the handshake deadline, armed for the nearer.
        """
        previous = self.timeOut
        self.timeOut = period  # type: ignore[assignment]
        self._idle_at = None if period is None else self.clock.seconds() + period
        self._arm_deadline()
        return previous

    def resetTimeout(self) -> None:
        """
        L{TimeoutMixin.resetTimeout}: the peer was heard from, the idle timeout counts from
        now (nothing once it has fired or was set to L{None}). The timer is not touched:
        when it fires early it finds the later deadline and waits for it.
        """
        if self._idle_at is not None and self.timeOut is not None:
            self._idle_at = self.clock.seconds() + self.timeOut

    def _arm_deadline(self) -> None:
        """
        Arm the one timer for the nearer of the handshake and idle deadlines (or cancel it
        when there is neither).
        """
        due = self._idle_at
        if self._handshake_at is not None and (due is None or self._handshake_at < due):
            due = self._handshake_at
        timer = self._deadline
        if due is None:
            if timer is not None:
                self._deadline = None
                if timer.active():
                    timer.cancel()
            return
        delay = max(0.0, due - self.clock.seconds())
        if timer is not None and timer.active():
            timer.reset(delay)
        else:
            self._deadline = self.clock.callLater(delay, self._deadline_due)

    def _deadline_due(self) -> None:
        """
        The timer fired: end the connection for whichever deadline has passed (the idle
        timeout first, as its timer was armed first), or wait for the nearer one.
        """
        self._deadline = None
        now = self.clock.seconds()
        if self._idle_at is not None and now >= self._idle_at:
            self._idle_at = None
            self.timeoutConnection()
        elif self._handshake_at is not None and now >= self._handshake_at:
            self._handshake_at = None
            self._handshake_expired()
        if self.phase is not FramingPhase.CLOSING:
            self._arm_deadline()

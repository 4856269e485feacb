# -*- test-case-name: tests.test_mux_session -*-
"""
What a session tells its owner (how it ended, why an opening was refused), and what it needs
of its transport.
"""

from __future__ import annotations

from typing import Protocol

import attrs
from twisted.internet.interfaces import IAddress

from netguard.mux.frames import GoAwayCode, Violation


class SessionTransport(Protocol):
    """
    What a session uses of its transport (a TCP or TLS transport, say).
    """

    def write(self, data: bytes) -> None: ...

    def writeSequence(self, data: list[bytes]) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def getPeer(self) -> IAddress: ...

    def getHost(self) -> IAddress: ...


@attrs.frozen
class SessionEnd:
    """
    Why a session ended: a value the owner logs.

    @ivar violation: the reason.
    @ivar code: the go-away code sent or received (C{NORMAL} for a lost connection).
    @ivar by_peer: whether the peer ended it (its go-away, its close) rather than us.
    @ivar detail: numbers only, never peer bytes.
    """

    violation: Violation
    code: GoAwayCode
    by_peer: bool
    detail: str = ""


class OpenRefused(Exception):
    """
    A stream cannot be opened now.

    @ivar reason: C{"session-ended"}, C{"go-away"}, C{"stream-limit"} or C{"ids-exhausted"}.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

# -*- test-case-name: tests.test_client_tickets -*-
"""
The client's store of returning-client tickets: what C{OK TICKET} handed out, kept in
memory only, each presented once (C{RESUME}) before its lifetime passes.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable

import attrs

#: The longest token a client keeps or presents (the gateway refuses longer ones unread).
MAX_TOKEN = 512

#: The longest lifetime a gateway may announce, seconds (a week: the gateway's own bound).
MAX_LIFETIME = 604800

#: How many tickets one store keeps at most (one per session an endpoint runs at once is
#: plenty; the oldest goes first).
CAPACITY = 4

#: A ticket is dropped this much before its announced lifetime ends: a tenth of it, at most
#: this many seconds, so that one presented at the last moment has not expired on arrival
#: (the gateway's clock counts from issue, ours from receipt: the margin covers the
#: difference, and a clock step on either side).
MAX_MARGIN = 30.0

#: A token: base64url without padding, 1 to L{MAX_TOKEN} characters.
_TOKEN = re.compile(rb"[A-Za-z0-9_-]{1,%d}" % MAX_TOKEN)
#: C{LIFETIME=} with a decimal number of seconds, no sign, no leading zero.
_LIFETIME = re.compile(rb"LIFETIME=([1-9][0-9]{0,5})")


@attrs.frozen
class TicketOffer:
    """
    A well-formed C{OK TICKET} answer.

    @ivar token: the opaque token (base64url, at most L{MAX_TOKEN} characters).
    @ivar lifetime: the seconds it is valid for, as announced.
    """

    token: bytes = attrs.field(repr=False)
    lifetime: int


class MalformedTicket(ValueError):
    """
    An C{OK TICKET} line that is not C{OK TICKET <token> LIFETIME=<seconds>} with a token of
    at most L{MAX_TOKEN} base64url characters and a lifetime from 1 to L{MAX_LIFETIME}.
    C{reason} names what was wrong; the message never holds the line's text.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_ticket_line(line: bytes) -> TicketOffer:
    """
    Read the gateway's answer to C{TICKET}, strictly.

    @param line: a line beginning with C{OK TICKET}.
    @return: the offer.
    @raise MalformedTicket: if anything about it is not exactly as the protocol says.
    """
    words = line.split(b" ")
    if len(words) != 4 or words[:2] != [b"OK", b"TICKET"]:
        raise MalformedTicket("not OK TICKET <token> LIFETIME=<seconds>")
    token, lifetime = words[2], words[3]
    if len(token) > MAX_TOKEN:
        raise MalformedTicket(f"token longer than {MAX_TOKEN} characters")
    if _TOKEN.fullmatch(token) is None:
        raise MalformedTicket("token is not base64url")
    match = _LIFETIME.fullmatch(lifetime)
    if match is None or int(match.group(1)) > MAX_LIFETIME:
        raise MalformedTicket(f"lifetime is not a number of seconds from 1 to {MAX_LIFETIME}")
    return TicketOffer(token, int(match.group(1)))


def boot_clock() -> float:
    """
    Seconds on a clock that never steps and keeps running while the machine is suspended
    (C{CLOCK_BOOTTIME} on Linux; C{CLOCK_MONOTONIC} elsewhere), so that a laptop's tunnel
    woken after a night does not present a ticket the gateway sees as expired (an offence).
    """
    return time.clock_gettime(_BOOT_CLOCK)


_BOOT_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class TicketStore:
    """
    The tickets one endpoint holds: at most C{capacity}, in memory only, each taken once.
    A ticket is usable until its lifetime, counted on our own clock (L{boot_clock}, which
    runs during suspend) from when it arrived, less a margin (a tenth of it, at most
    L{MAX_MARGIN} seconds). Its C{repr} shows how many it holds, never a token.
    """

    def __init__(self, now: Callable[[], float] = boot_clock, capacity: int = CAPACITY) -> None:
        """
        @param now: the clock (seconds; L{boot_clock} by default).
        @param capacity: the most tickets kept; a new one pushes out the oldest.
        """
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._now = now
        self._tickets: deque[tuple[bytes, float]] = deque(maxlen=capacity)

    def __repr__(self) -> str:
        return f"<TicketStore holding {len(self._tickets)}>"

    def __len__(self) -> int:
        return len(self._tickets)

    def keep(self, offer: TicketOffer) -> None:
        """
        Keep a ticket the gateway issued (after it proved itself in the login).
        """
        margin = min(MAX_MARGIN, offer.lifetime / 10)
        self._tickets.append((offer.token, self._now() + offer.lifetime - margin))

    def take(self) -> bytes | None:
        """
        @return: the newest usable ticket, removed from the store (a ticket is presented
            once), or L{None}. Expired ones are dropped on the way.
        """
        now = self._now()
        while self._tickets:
            token, usable_until = self._tickets.pop()
            if now < usable_until:
                return token
        return None

    def clear(self) -> None:
        """
        Drop every ticket (the gateway refused one: the others are no better).
        """
        self._tickets.clear()

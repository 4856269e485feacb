# -*- test-case-name: tests.test_workers -*-
"""
Returning-client tickets single use across the workers of a host: each worker's spent table
(L{SharedSpentTable}) reports every ticket it spends, and records the tickets the other
workers spent as the supervisor relays them. A replay reaches another worker in time to be
refused unless it arrives there within one relay through the supervisor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from netguard.tickets import SpentTable

log = Logger()

#: Called with (ticket id, expiry, user) when a ticket is spent here.
SpentReport = Callable[[bytes, float, str], Any]


class SharedSpentTable(SpentTable):
    """
    A L{SpentTable} whose spends are reported to the other workers.

    @ivar report: told of each ticket spent here.
    """

    def __init__(self, limit: int, per_user: int | None, report: SpentReport) -> None:
        super().__init__(limit, per_user)
        self.report = report

    def spend(self, ticket_id: bytes, expires: float, now: float, user: str = "") -> bool:
        """
        Record a ticket presented here as L{SpentTable.spend} does, and report it.
        """
        recorded = super().spend(ticket_id, expires, now, user)
        if recorded:
            try:
                self.report(ticket_id, expires, user)
            except Exception:  # noqa: BLE001 - the spend here stands; sharing is best effort
                log.failure("reporting a spent ticket failed", event="worker.share_failed")
        return recorded

    def spent_elsewhere(self, ticket_id: bytes, expires: float, now: float, user: str) -> bool:
        """
        Record a ticket another worker spent (not reported again). Bounded like every
        spend: when the table or the user's share is full it is not recorded, and a
        presentation of it here then finds the table full and gets no lane (fails closed).

        @return: whether it was recorded (or already was).
        """
        if ticket_id in self:
            return True
        return SpentTable.spend(self, ticket_id, expires, now, user)


def share_spent(book: Any, report: SpentReport) -> SharedSpentTable | None:
    """
    Give a ticket book a L{SharedSpentTable} in place of its fresh (empty) spent table: at a
    worker's start and after a reload that replaced the key. A table already shared is kept.

    @param book: the factory's L{netguard.tickets.TicketBook}, or L{None} (tickets off).
    @return: the shared table, or L{None} when there is no book or its table already holds
        spends of its own (left as it is).
    """
    if book is None:
        return None
    table = book.spent
    if isinstance(table, SharedSpentTable):
        return table
    if len(table):
        return None
    shared = SharedSpentTable(table.limit, table.per_user, report)
    book.spent = shared
    return shared

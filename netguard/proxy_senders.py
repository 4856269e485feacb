# -*- test-case-name: tests.test_proxy_header -*-
"""
The penalty points PROXY senders earn at one C{haproxy:} listener by their own PROXY-layer
offences, kept apart from admission's table, so that a block a client behind the proxy
earns never refuses the proxy itself. docs/operating.md section 4.1 says when a sender is
refused at accept.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.logger import ILogObserver, Logger, LogPublisher

from netguard.admission.penalties import PenaltyTable
from netguard.admission.policy import AdmissionPolicy

#: The penalty rules of a listener whose application has no admission policy.
_DEFAULT_POLICY = AdmissionPolicy()

#: Spent entries of a listener's table of senders' own penalties dropped per offence.
SENDER_PRUNE_STEP = 2


class SenderPenalties(PenaltyTable):
    """
    The penalty points senders earned at one C{haproxy:} listener by their own PROXY-layer
    offences (a missing, malformed, truncated or late header), kept apart from admission's
    table: admission counts a header's client address under the same source key as the
    sender when they share it (the proxy's own address, a local user of the proxy's host,
    the proxy's IPv4 prefix or IPv6 /64), so only this table tells whether the sender's
    own offences earned a block. Same rules and bound as admission's (its policy's
    threshold, decay, block lengths and C{max_tracked_sources}, least recently offending
    forgotten first). Its blocks are not logged: admission logs the block of the source.
    """

    # A publisher with no observer (it provides ILogObserver): the events go nowhere.
    log = Logger(observer=cast(ILogObserver, LogPublisher()))

    #: The admission's count of clears this table last saw (L{SenderBook}).
    clears = 0


class SenderBook:
    """
    One listener's L{SenderPenalties}, under the policy of the admission in force (a reload
    that changes it carries the entries over, within the new bound), forgotten whenever an
    operator cleared admission's penalties since it last looked (admission's C{clears}
    count moved): what a clear lifted must not come back when another block (a client's
    under the same key, a relayed one) lands on the key.
    """

    def __init__(self) -> None:
        self.table: SenderPenalties | None = None

    def charge(self, admission: Any, key: str, kind: str, now: float) -> None:
        """
        Count an offence of C{kind} by the sender whose source key is C{key}.
        """
        own = self._table(admission)
        points = own.policy.points_for(kind)
        if points > 0:
            own.prune(now, SENDER_PRUNE_STEP)
            own.add(key, points, kind, now)

    def block_left(self, admission: Any, key: str, now: float) -> float | None:
        """
        @return: seconds left of the block the sender's own offences earned, or L{None}.
        """
        own = self.table
        if own is None or self._forget_cleared(own, admission):
            return None
        penalty = own.entries.get(key)
        if penalty is None:
            return None
        left = penalty.blocked_until - now
        return left if left > 0 else None

    def forget(self, key: str) -> None:
        """
        Forget the sender's own points (admission no longer holds its source blocked).
        """
        if self.table is not None:
            self.table.entries.pop(key, None)

    def _table(self, admission: Any) -> SenderPenalties:
        policy = getattr(admission, "policy", None)
        if not isinstance(policy, AdmissionPolicy):
            policy = _DEFAULT_POLICY
        own = self.table
        if own is None or own.policy is not policy:
            fresh = SenderPenalties(policy)
            fresh.clears = getattr(admission, "clears", 0)
            if own is not None:
                kept = list(own.entries.items())[-policy.max_tracked_sources :]
                fresh.entries.update(kept)
                fresh.clears = own.clears
            self.table = own = fresh
        self._forget_cleared(own, admission)
        return own

    @staticmethod
    def _forget_cleared(own: SenderPenalties, admission: Any) -> bool:
        clears = getattr(admission, "clears", 0)
        if own.clears == clears:
            return False
        own.entries.clear()
        own.clears = clears
        return True

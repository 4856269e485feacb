# -*- test-case-name: tests.test_refusal_log -*-
"""
Aggregated logging of refusals: during a flood, one C{conn.reject.summary} event per source
and reason per interval instead of one line per refused connection.

The events and their fields: C{docs/logging.md} section 6.
"""

from __future__ import annotations

from twisted.logger import Logger

from netguard.clocks import Cancellable, Scheduler

#: Seconds one interval lasts.
INTERVAL = 10.0

#: Refusals per source, reason and interval logged one by one before the rest are counted.
INDIVIDUAL = 3

#: Sources (source, reason and event kind) tracked per interval; the rest count as L{OTHER}.
MAX_KEYS = 1024

#: Refusals logged one by one per interval, all sources together; the rest are counted.
MAX_LOGGED = 1024

#: The source under which refusals beyond L{MAX_KEYS} keys are counted.
OTHER = "other"


#: (source key, reason, event the refusal is logged as) -> [logged one by one, only counted].
_Table = dict[tuple[str, str, str], list[int]]


class RefusalLog:
    """
    Decides which refusals are logged one by one and counts the rest.

    The caller asks L{note} about each refusal and logs it itself (with its own event and
    fields) only when told to: the first L{INDIVIDUAL} refusals of each (source, reason,
    event) in an interval. The others are only counted, and at the end of the interval one
    C{conn.reject.summary} event per (source, reason, event) that had any carries their
    C{count}. An interval starts with the first refusal after the previous one ended, and a
    timer runs only while some refusal waits to be summarised: a gateway that refuses a
    connection now and then keeps no timer and logs no summary. At most C{max_keys} keys
    are tracked per interval; refusals of other sources in that interval are counted under
    the source L{OTHER} (one key per reason and event) and never logged one by one; and at
    most C{max_logged} refusals are logged one by one per interval, all sources and events
    together (the others are counted under their own key, or L{OTHER}). A flood from many
    addresses thus costs bounded memory and at most C{max_logged} lines plus one summary
    per key per interval, and the summaries' counts say how many were not logged.

    The reasons and event names come from netguard's own vocabulary, never from a peer; the
    source keys come from L{netguard.admission.Admission.source_key}.

    @ivar interval: seconds one interval lasts.
    @ivar individual: refusals per key and interval logged one by one.
    @ivar max_keys: keys tracked per interval before refusals count under L{OTHER}.
    @ivar max_logged: refusals logged one by one per interval, all keys together.
    """

    def __init__(
        self,
        log: Logger,
        clock: Scheduler,
        *,
        interval: float = INTERVAL,
        individual: int = INDIVIDUAL,
        max_keys: int = MAX_KEYS,
        max_logged: int = MAX_LOGGED,
    ) -> None:
        """
        @param log: the logger of C{conn.reject.summary}.
        @param clock: the time source and timer (the reactor; a
            L{twisted.internet.task.Clock} in tests).
        """
        self.log = log
        self.clock = clock
        self.interval = interval
        self.individual = individual
        self.max_keys = max_keys
        self.max_logged = max_logged
        self._logged = 0
        self._table: _Table = {}
        self._other: _Table = {}
        self._started: float | None = None
        self._timer: Cancellable | None = None

    def note(self, source: str, reason: str, event: str = "conn.reject") -> bool:
        """
        Account for one refusal.

        @param source: the peer's source key.
        @param reason: why it was refused.
        @param event: the event the caller logs it as, when it does (C{conn.reject},
            C{ticket.refused}); summaries of each are kept apart.
        @return: whether the caller logs this refusal one by one; when not, it is counted in
            the summary of its interval.
        """
        now = self.clock.seconds()
        started = self._started
        if started is None or (
            self._timer is None and not started <= now < started + self.interval
        ):
            # A new interval: nothing waits to be summarised (or there would be a timer), so
            # the old counts are dropped. A clock that went back starts one too.
            self._table.clear()
            self._logged = 0
            self._started = started = now
        key = (source, reason, event)
        counts = self._table.get(key)
        if counts is None:
            if len(self._table) < self.max_keys:
                self._table[key] = counts = [0, 0]
            else:
                key = (OTHER, reason, event)
                counts = self._other.get(key)
                if counts is None:
                    self._other[key] = counts = [0, 0]
                counts[1] += 1
                self._arm(started)
                return False
        if counts[0] < self.individual and self._logged < self.max_logged:
            counts[0] += 1
            self._logged += 1
            return True
        counts[1] += 1
        self._arm(started)
        return False

    def _arm(self, started: float) -> None:
        if self._timer is None:
            delay = max(0.0, started + self.interval - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._interval_over)

    def _interval_over(self) -> None:
        self._timer = None
        self._summarise()

    def flush(self) -> None:
        """
        Log the summaries of the interval so far now and start afresh (at shutdown); no timer
        is left behind.
        """
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._summarise()

    @property
    def pending(self) -> int:
        """
        Refusals counted but not yet summarised.
        """
        return sum(c[1] for c in self._table.values()) + sum(c[1] for c in self._other.values())

    def _summarise(self) -> None:
        """
        One C{conn.reject.summary} per key with refusals only counted; then forget the
        interval.
        """
        table, other = self._table, self._other
        self._table, self._other = {}, {}
        self._logged = 0
        started, self._started = self._started, None
        if started is None:
            return
        seconds = round(max(0.0, self.clock.seconds() - started), 3)
        for (source, reason, event), (logged, count) in [*table.items(), *other.items()]:
            if count:
                self.log.info(
                    "{count} more refusals ({of}) of {source} in {seconds} s: {reason}",
                    event="conn.reject.summary",
                    source=source,
                    reason=reason,
                    of=event,
                    count=count,
                    logged=logged,
                    seconds=seconds,
                )

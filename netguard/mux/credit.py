# -*- test-case-name: tests.test_mux_session -*-
"""
The receive side's accounting of a session: the credit its streams hold, the bytes held for
paused streams, the window updates withheld while those reach the budget, and the growth of
the windows of streams that keep reading.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from netguard.mux.frames import INITIAL_WINDOW

if TYPE_CHECKING:
    from netguard.mux.stream import MuxStream


class ReceiveCredit:
    """
    Receive credit across a session.

    C{credit} is the sum of the live streams' L{MuxStream.outstanding} (bytes the peer may
    still send plus bytes held); C{held} the sum of their held bytes. A window update is
    withheld while C{held} is at least C{budget}: credit granted but unused (an idle
    stream's window) costs no memory and does not count. Withheld updates go out once held
    bytes drain below the budget.

    Each stream's window (L{MuxStream.window}) starts at the spec's 256 KiB; no stream's
    L{MuxStream.outstanding} passes its window. When a stream's protocol has read all it
    was sent (nothing held) by the time half its window is owed back, the window doubles,
    up to C{max_window}, while the growth summed over the live streams (C{grown}) stays
    within C{window_budget}. So the credit of a session stays within
    C{streams * 256 KiB + window_budget}. A stream's growth is returned when it ends.

    @ivar budget: the held bytes at which updates are withheld.
    @ivar credit: receive credit across the session.
    @ivar held: bytes held for streams whose reading is paused.
    @ivar max_window: the largest window of a stream.
    @ivar window_budget: the most growth (window above 256 KiB) across the live streams.
    @ivar grown: the growth of the live streams' windows.
    """

    __slots__ = (
        "budget",
        "credit",
        "held",
        "max_window",
        "window_budget",
        "grown",
        "_starved",
        "_send_update",
    )

    def __init__(
        self,
        budget: int,
        send_update: Callable[[int, int], None],
        max_window: int = INITIAL_WINDOW,
        window_budget: int = 0,
    ) -> None:
        """
        @param budget: the held bytes at which updates are withheld.
        @param send_update: called with a stream id and a window delta to send.
        @param max_window: the largest window of a stream.
        @param window_budget: the most growth across the live streams.
        """
        self.budget = budget
        self.credit = 0
        self.held = 0
        self.max_window = max_window
        self.window_budget = window_budget
        self.grown = 0
        self._starved: set[MuxStream] = set()
        self._send_update = send_update

    def opened(self, stream: MuxStream) -> None:
        """
        A stream starts with its initial window.
        """
        self.credit += stream.outstanding

    def received(self, size: int) -> None:
        """
        C{size} payload bytes arrived (the stream's window has shrunk by as much).
        """
        self.credit -= size

    def hold(self, delta: int) -> None:
        """
        Bytes held for a paused stream grew (or, negative, were delivered).
        """
        self.credit += delta
        self.held += delta
        if delta < 0:
            self.regrant()

    def drop_held(self, stream: MuxStream) -> None:
        """
        The stream's reading was closed: its held bytes are dropped and it gets no more
        credit.
        """
        self.credit -= stream.buffered
        self.held -= stream.buffered
        self._starved.discard(stream)
        self.regrant()

    def ended(self, stream: MuxStream) -> None:
        """
        The stream is over: its credit and held bytes no longer count.
        """
        self.credit -= stream.outstanding
        self.held -= stream.buffered
        self._starved.discard(stream)
        self._shrink(stream)
        self.regrant()

    def _shrink(self, stream: MuxStream) -> None:
        """
        Return the stream's growth to the budget.
        """
        self.grown -= stream.window - INITIAL_WINDOW
        stream.window = INITIAL_WINDOW

    def grant(self, stream: MuxStream, grow: bool = False) -> None:
        """
        Give back the credit the stream's protocol has consumed, once half its window is
        owed, unless held bytes have reached the budget (then the stream waits for
        L{regrant}). A stream whose reading is paused or closed, that the peer has
        half-closed, or that has ended, gets nothing.

        @param grow: whether the stream's window may grow now (its protocol has just been
            handed data, so it keeps reading if nothing is held).
        """
        if (
            stream.reading_paused
            or stream.remote_fin
            or stream.reset
            or stream.lost
            or stream.read_closed
        ):
            self._starved.discard(stream)
            return
        if not stream.acked and not stream.outbound:
            # Every frame on a stream the peer opened follows our ACK; the credit owed goes
            # out when the application accepts the stream.
            return
        window = stream.window
        owed = window - stream.outstanding
        if owed < window // 2:
            return
        if self.held >= self.budget:
            self._starved.add(stream)
            return
        self._starved.discard(stream)
        if grow and not stream.buffered and window < self.max_window:
            more = min(window, self.max_window - window, self.window_budget - self.grown)
            if more > 0:
                stream.window = window + more
                self.grown += more
                owed += more
        stream.recv_window += owed
        self.credit += owed
        self._send_update(stream.stream_id, owed)

    def regrant(self) -> None:
        """
        Held bytes drained: give the streams refused for the budget their credit.
        """
        if not self._starved or self.held >= self.budget:
            return
        for stream in list(self._starved):
            self.grant(stream)

    def clear(self) -> None:
        """
        The session ended: nothing counts any more.
        """
        self.credit = 0
        self.held = 0
        self.grown = 0
        self._starved.clear()


class DeadCredit:
    """
    The credit the peer still holds on streams that ended on our side while it could
    still send: streams we reset, whose data the peer sent before our RST reached it. A
    grown window lets such data come as one frame above 256 KiB, or as many frames; both
    are the peer's right, and are dropped without counting as a flood.

    At most C{limit} streams are remembered (the oldest forgotten first); a stream's entry
    goes once its credit is used up, the peer resets or finishes it, or its id is opened
    again.
    """

    __slots__ = ("limit", "_credit")

    def __init__(self, limit: int) -> None:
        """
        @param limit: the most streams remembered.
        """
        self.limit = limit
        self._credit: OrderedDict[int, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._credit)

    def remember(self, stream_id: int, credit: int) -> None:
        """
        The stream ended with C{credit} bytes the peer may still send.
        """
        self._credit.pop(stream_id, None)
        if credit <= 0:
            return
        if len(self._credit) >= self.limit:
            self._credit.popitem(last=False)
        self._credit[stream_id] = credit

    def allowed(self, stream_id: int) -> int:
        """
        @return: the bytes the peer may still send on the ended stream.
        """
        return self._credit.get(stream_id, 0)

    def spend(self, stream_id: int, length: int) -> int:
        """
        The peer sent C{length} bytes on the ended stream.

        @return: the bytes beyond its remaining credit.
        """
        credit = self._credit.get(stream_id, 0)
        if length < credit:
            self._credit[stream_id] = credit - length
            return 0
        self._credit.pop(stream_id, None)
        return length - credit

    def forget(self, stream_id: int) -> None:
        """
        The peer can send nothing more on the stream (or its id is in use again).
        """
        self._credit.pop(stream_id, None)

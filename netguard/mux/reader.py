# -*- test-case-name: tests.test_mux_session_hostile -*-
"""
The input side of a session: cuts the bytes read into frames, holding at most one partial
frame between reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netguard.mux import frames
from netguard.mux.frames import HEADER_SIZE, FrameType

if TYPE_CHECKING:
    from netguard.mux.session import MuxSession


class FrameReader:
    """
    Cuts a session's input into frames and hands each to the session (C{_handle}), the
    length of each data frame checked against its stream's window (C{_check_length}) from
    the header alone, before any of its payload is held.

    Frames are cut straight from each read (one copy per payload); only a partial frame at
    the end of a read is kept, and the next read gives it only the bytes it lacks. So what
    is held between reads is less than one frame: at most 12 bytes plus the largest window.
    """

    __slots__ = ("_session", "_held")

    def __init__(self, session: MuxSession) -> None:
        """
        @param session: the session the frames are for.
        """
        self._session = session
        self._held = bytearray()

    @property
    def held(self) -> int:
        """
        @return: bytes of a partial frame kept for the next read.
        """
        return len(self._held)

    def clear(self) -> None:
        """
        Drop what is held (the session has ended).
        """
        self._held = bytearray()

    def feed(self, data: bytes) -> None:
        """
        Hand every whole frame in C{data} and what was held before to the session, until
        the session ends; keep the partial frame at the end.

        @raise netguard.mux.frames.FrameError: a header breaks a rule.
        @raise Exception: what the session raises for a frame (its violations).
        """
        session = self._session
        offset = self._complete(data) if self._held else 0
        if offset < 0 or session.ended is not None:
            return
        end = len(data)
        check_length = session._check_length
        handle = session._handle
        while end - offset >= HEADER_SIZE:
            header = frames.decode(data, offset)
            start = offset + HEADER_SIZE
            if header.type is FrameType.DATA:
                check_length(header)
                offset = start + header.length
                if offset > end:
                    offset = start - HEADER_SIZE
                    break
                handle(header, data[start:offset])
            else:
                offset = start
                handle(header, b"")
            if session.ended is not None:
                return
        if offset < end:
            self._held += memoryview(data)[offset:]

    def _complete(self, data: bytes) -> int:
        """
        Complete the frame begun in an earlier read with the front of C{data} (only the
        bytes it lacks are copied), and hand it to the session.

        @return: where the next frame starts in C{data}, or -1 if C{data} did not complete
            it (then all of C{data} is kept).
        """
        held = self._held
        offset = 0
        if len(held) < HEADER_SIZE:
            offset = HEADER_SIZE - len(held)
            held += data[:offset]
            if len(held) < HEADER_SIZE:
                return -1
        header = frames.decode(held)
        size = HEADER_SIZE
        if header.type is FrameType.DATA:
            self._session._check_length(header)
            size += header.length
        need = size - len(held)
        if need > len(data) - offset:
            held += memoryview(data)[offset:]
            return -1
        if need:
            held += memoryview(data)[offset : offset + need]
        self._held = bytearray()
        self._session._handle(header, bytes(memoryview(held)[HEADER_SIZE:]))
        return offset + need

# -*- test-case-name: tests.test_operator_files -*-
"""
Opening the files an operator names (configuration, certificates, passwords) so that one
that is not a regular file (a FIFO, a device) is refused at once instead of blocking the
process in C{open} or C{read}: these files are read again at every reload, and some at every
backend connection, inside the reactor.
"""

from __future__ import annotations

import os
import stat


class NotRegularFile(OSError):
    """
    The path names something other than a regular file.

    @ivar kind: what it is instead ("a directory", "a FIFO", "a device", "a socket").
    """

    def __init__(self, path: str, mode: int) -> None:
        self.kind = _kind(mode)
        super().__init__(0, f"is {self.kind}, not a regular file", path)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "something else"


def open_regular(path: str, flags: int = 0) -> tuple[int, os.stat_result]:
    """
    Open C{path} for reading without blocking (C{O_NONBLOCK}: opening a FIFO with no writer
    returns at once) and check that it is a regular file.

    @param flags: more C{os.O_*} flags (e.g. C{O_NOFOLLOW}).
    @return: the descriptor (the caller closes it) and its C{fstat}.
    @raise NotRegularFile: it is not a regular file (the descriptor is closed).
    @raise OSError: it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(path, info.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_regular(path: str, limit: int) -> bytes:
    """
    Read at most C{limit} bytes of the regular file C{path} (L{open_regular}).

    @raise NotRegularFile: it is not a regular file.
    @raise OSError: it cannot be opened or read.
    """
    fd, _ = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(limit)

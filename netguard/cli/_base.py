# -*- test-case-name: tests.test_cli -*-
"""
What every C{netguard} subcommand shares: the injected streams, L{CommandError} and the exit
statuses. The commands themselves: docs/operating.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

import attrs

#: Exit status for success.
EXIT_OK = 0

#: Exit status for every user mistake (bad name, missing or insecure file, ...).
EXIT_USAGE = 2

#: Exit status after Ctrl-C.
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """
    A user mistake, reported as one line on standard error with exit status 2.
    """


@attrs.frozen
class _IO:
    """
    The streams and prompt a command uses (injected, so tests run in-process).
    """

    stdin: IO[str] | None
    stdout: IO[str]
    stderr: IO[str]
    getpass: Callable[[str], str]

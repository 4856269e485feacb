# -*- test-case-name: tests.test_cli -*-
"""
The C{netguard} command: the argument parser, L{main} and its error handling. Each command
lives in its own module (L{users}, L{checks}, L{tunnel}, L{ctl}, L{cert}); the commands and
their options: docs/operating.md.

Every mistake a user can make ends with one line C{netguard: error: ...} on standard error
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass as _getpass
import sys
from collections.abc import Callable, Sequence
from typing import IO

from netguard import __version__
from netguard.auth.users import UsersFileError
from netguard.cli import cert, checks, ctl, tunnel, users
from netguard.cli._base import _IO, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandError
from netguard.cli.users import MAX_PASSWORD_CHARS

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "MAX_PASSWORD_CHARS",
    "CommandError",
    "build_parser",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    """
    The argument parser of the C{netguard} command, with every subcommand.

    @return: the parser; each subcommand's namespace has a C{run} callable.
    """
    from twisted.copyright import version as twisted_version

    parser = argparse.ArgumentParser(
        prog="netguard",
        description="netguard: a hardened single-port gateway. Manage users, check a "
        "configuration. (The daemon itself runs as `twistd netguard`.)",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"netguard {__version__} (Twisted {twisted_version})",
        help="show netguard's version (and Twisted's) and exit",
    )
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for module in (users, checks, tunnel, ctl, cert):
        module.add_parsers(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe_os_error(e: OSError) -> str:
    reason = e.strerror or str(e)
    return f"{e.filename}: {reason}" if e.filename is not None else reason


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    getpass: Callable[[str], str] | None = None,
) -> int:
    """
    Run the C{netguard} command.

    @param argv: the arguments after the program name; C{sys.argv[1:]} if L{None}.
    @param stdin: where a piped password is read; C{sys.stdin} if L{None}.
    @param stdout: where results go; C{sys.stdout} if L{None}.
    @param stderr: where errors go; C{sys.stderr} if L{None}.
    @param getpass: the terminal prompt; L{getpass.getpass} if L{None}.
    @return: the exit status: 0, or 2 for any user mistake (after one line on stderr).
    """
    io = _IO(
        stdin=sys.stdin if stdin is None else stdin,
        stdout=sys.stdout if stdout is None else stdout,
        stderr=sys.stderr if stderr is None else stderr,
        getpass=_getpass.getpass if getpass is None else getpass,
    )
    parser = build_parser()
    with contextlib.redirect_stdout(io.stdout), contextlib.redirect_stderr(io.stderr):
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_usage(io.stderr)
        io.stderr.write("netguard: error: a command is required (see netguard --help)\n")
        return EXIT_USAGE
    try:
        status: int = args.run(args, io)
        return status
    except KeyboardInterrupt:
        io.stderr.write("\nnetguard: interrupted\n")
        return EXIT_INTERRUPTED
    except (CommandError, UsersFileError, ValueError) as e:
        message = str(e)
    except OSError as e:
        message = _describe_os_error(e)
    io.stderr.write(f"netguard: error: {_one_line(message)}\n")
    return EXIT_USAGE

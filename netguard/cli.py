# -*- test-case-name: tests.test_cli -*-
"""
The C{netguard} command: manage the users file and check a configuration.

Subcommands::

    netguard adduser NAME [--users FILE] [--groups a,b] [--iterations N]
    netguard passwd NAME [--users FILE]
    netguard deluser NAME [--users FILE]
    netguard check-config [--config FILE | --defaults]
    netguard tunnel --gateway ENDPOINT --service NAME --listen ENDPOINT --user NAME
                    [--password-file FILE]

A password is never taken from the command line or the environment: it is asked twice with
C{getpass} when standard input is a terminal, and otherwise read as exactly one line from
standard input (only the final newline is removed), so scripts can pipe it in.

Every mistake a user can make ends with one line C{netguard: error: ...} on standard error
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass as _getpass
import os
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any

import attrs

from netguard.auth import users

#: Exit status for success.
EXIT_OK = 0

#: Exit status for every user mistake (bad name, missing or insecure file, ...).
EXIT_USAGE = 2

#: Exit status after Ctrl-C.
EXIT_INTERRUPTED = 130

#: The longest password accepted, in characters.
MAX_PASSWORD_CHARS = 1024


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


def _default_users_file() -> str:
    """
    The users file named by the configuration module's default.

    @raise CommandError: if L{netguard.config} does not provide one yet.
    """
    try:
        from netguard import config
    except ModuleNotFoundError as e:
        if e.name != "netguard.config":
            raise
        raise CommandError("no default users file is known; pass --users FILE") from None
    default = getattr(config, "default_users_file", None)
    if default is None:
        raise CommandError("no default users file is known; pass --users FILE")
    try:
        path: str = os.fspath(default())
    except config.ConfigError as e:
        raise CommandError(f"{e}; pass --users FILE") from None
    return path


def _users_path(args: argparse.Namespace) -> str:
    path: str | None = args.users
    return path if path is not None else _default_users_file()


def _read_password(io: _IO, confirm: bool = True) -> str:
    """
    Read a password: with getpass from a terminal (twice when C{confirm}), else one line
    from stdin.

    @raise CommandError: if the two entries differ, the password is empty or too long, or
        there is no standard input.
    """
    if io.stdin is None:
        raise CommandError("no password given: standard input is closed")
    if io.stdin.isatty():
        try:
            first = io.getpass("New password: " if confirm else "Password: ")
            second = io.getpass("Retype new password: ") if confirm else first
        except EOFError:
            raise CommandError("no password given") from None
        if first != second:
            raise CommandError("the passwords do not match")
        password = first
    else:
        line = io.stdin.readline(MAX_PASSWORD_CHARS + 2)
        password = line[:-1] if line.endswith("\n") else line
    if password == "":
        raise CommandError("empty password refused")
    if len(password) > MAX_PASSWORD_CHARS:
        raise CommandError(f"password longer than {MAX_PASSWORD_CHARS} characters refused")
    return password


def _parse_groups(text: str | None) -> tuple[str, ...]:
    if text is None or text == "":
        return ()
    groups = tuple(text.split(","))
    for group in groups:
        try:
            users.validate_name(group)
        except ValueError:
            raise CommandError(
                "invalid group name in --groups: use names of ASCII letters, digits and "
                "._@- separated by commas"
            ) from None
    if len(set(groups)) != len(groups):
        raise CommandError("a group is listed twice in --groups")
    return groups


def _existing_store(path: str) -> users.UserStore | None:
    """
    Load the users file if it exists (with its permission check).
    """
    try:
        return users.UserStore.load(path)
    except FileNotFoundError:
        return None


def _cmd_adduser(args: argparse.Namespace, io: _IO) -> int:
    path = _users_path(args)
    name = users.validate_name(args.name)
    groups = _parse_groups(args.groups)
    if not users.MIN_ITERATIONS <= args.iterations <= users.MAX_ITERATIONS:
        raise CommandError(
            f"--iterations must be from {users.MIN_ITERATIONS} to {users.MAX_ITERATIONS}"
        )
    store = _existing_store(path)
    if store is not None and store.lookup(name) is not None:
        raise CommandError(f"user {name} already exists in {path}")
    password = _read_password(io)
    users.add_user(path, name, password, groups=groups, iterations=args.iterations)
    io.stdout.write(f"added user {name} to {path}\n")
    return EXIT_OK


def _cmd_passwd(args: argparse.Namespace, io: _IO) -> int:
    path = _users_path(args)
    name = users.validate_name(args.name)
    store = users.UserStore.load(path)
    if store.lookup(name) is None:
        raise CommandError(f"no user {name} in {path}")
    password = _read_password(io)
    users.set_password(path, name, password)
    io.stdout.write(f"changed the password of {name} in {path}\n")
    return EXIT_OK


def _cmd_deluser(args: argparse.Namespace, io: _IO) -> int:
    path = _users_path(args)
    name = users.validate_name(args.name)
    users.delete_user(path, name)
    io.stdout.write(f"removed user {name} from {path}\n")
    return EXIT_OK


def _cmd_check_config(args: argparse.Namespace, io: _IO) -> int:
    try:
        from netguard import config
    except ModuleNotFoundError as e:
        if e.name != "netguard.config":
            raise
        raise CommandError("check-config is not available: netguard.config is missing") from None
    if args.defaults:
        io.stdout.write(config.describe_defaults().rstrip("\n") + "\n")
        return EXIT_OK
    try:
        loaded = config.load_config(args.config)
    except config.ConfigError as e:
        raise CommandError(str(e)) from None
    io.stdout.write(config.describe(loaded).rstrip("\n") + "\n")
    return EXIT_OK


def _cmd_tunnel(args: argparse.Namespace, io: _IO) -> int:
    from twisted.internet import reactor as _reactor
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.logger import globalLogBeginner

    from netguard.client.endpoint import NGPClientEndpoint
    from netguard.client.protocol import Credentials
    from netguard.client.tunnel import TunnelFactory
    from netguard.log import safe_text_observer
    from netguard.secretfile import read_password_file

    reactor: Any = _reactor
    name = users.validate_name(args.user)
    if args.password_file:
        try:
            password = read_password_file(args.password_file)
        except ValueError as e:
            raise CommandError(str(e)) from None
    else:
        password = _read_password(io, confirm=False)
    try:
        gateway = clientFromString(reactor, args.gateway)
        listen = serverFromString(reactor, args.listen)
    except (ValueError, KeyError, TypeError) as e:
        raise CommandError(f"bad endpoint string: {e}") from None
    endpoint = NGPClientEndpoint(reactor, gateway, Credentials(name, password), args.service)
    factory = TunnelFactory(reactor, endpoint, idle_timeout=args.idle_timeout)
    observer: Any = safe_text_observer(io.stderr)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    failures: list[str] = []

    def cannot_listen(failure: Any) -> None:
        failures.append(str(failure.value))
        reactor.stop()

    reactor.callWhenRunning(lambda: listen.listen(factory).addErrback(cannot_listen))
    reactor.run()
    if failures:
        raise CommandError(f"cannot listen on {args.listen}: {failures[0]}")
    return EXIT_OK


def _control_socket_path(args: argparse.Namespace) -> str:
    """
    The control socket named by --socket, or by the configuration (--config, else the
    defaults: <state_dir>/control.sock).
    """
    if args.socket:
        return str(args.socket)
    from netguard import config

    try:
        loaded = config.load_config(args.config)
    except config.ConfigError as e:
        raise CommandError(str(e)) from None
    path = str(loaded.ops.control_socket)
    if not path:
        raise CommandError("the configuration has no control socket (ops.control_socket)")
    return path


def _cmd_ctl(args: argparse.Namespace, io: _IO) -> int:
    from netguard.ops.ctl_client import EXIT_OK, run_ctl

    code, output = run_ctl(_control_socket_path(args), args.words, timeout=args.timeout)
    if code == EXIT_OK:
        if output:
            io.stdout.write(output + "\n")
    else:
        io.stderr.write(f"netguard: error: {output}\n")
    return code


def build_parser() -> argparse.ArgumentParser:
    """
    The argument parser of the C{netguard} command, with every subcommand.

    @return: the parser; each subcommand's namespace has a C{run} callable.
    """
    parser = argparse.ArgumentParser(
        prog="netguard",
        description="netguard: a hardened single-port gateway. Manage users, check a "
        "configuration. (The daemon itself runs as `twistd netguard`.)",
    )
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")

    users_help = "the users file (default: the configured one)"

    p = sub.add_parser(
        "adduser",
        help="add a user (password from the terminal, or one line on stdin)",
        description="Add a user. The password is asked twice on a terminal, or read as one "
        "line from standard input; never from arguments or the environment.",
    )
    p.add_argument("name", metavar="NAME", help="the new user's name")
    p.add_argument("--users", metavar="FILE", help=users_help)
    p.add_argument("--groups", metavar="A,B", help="comma-separated groups of the user")
    p.add_argument(
        "--iterations",
        metavar="N",
        type=int,
        default=users.DEFAULT_ITERATIONS,
        help=f"PBKDF2 iterations (default {users.DEFAULT_ITERATIONS})",
    )
    p.set_defaults(run=_cmd_adduser)

    p = sub.add_parser(
        "passwd",
        help="change a user's password",
        description="Change a user's password (new salt; groups kept).",
    )
    p.add_argument("name", metavar="NAME", help="the user")
    p.add_argument("--users", metavar="FILE", help=users_help)
    p.set_defaults(run=_cmd_passwd)

    p = sub.add_parser("deluser", help="remove a user", description="Remove a user.")
    p.add_argument("name", metavar="NAME", help="the user")
    p.add_argument("--users", metavar="FILE", help=users_help)
    p.set_defaults(run=_cmd_deluser)

    p = sub.add_parser(
        "check-config",
        help="validate a configuration and print it, or print every default",
        description="Load and validate a configuration file and print the resulting "
        "settings; with --defaults, print every setting's default.",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--config", metavar="FILE", help="the TOML configuration file")
    group.add_argument("--defaults", action="store_true", help="print every default")
    p.set_defaults(run=_cmd_check_config)

    p = sub.add_parser(
        "tunnel",
        allow_abbrev=False,
        help="carry every connection to a local listener through the gateway to a service",
        description="Listen locally; carry each connection through the gateway (SCRAM, "
        "server signature checked) to one service, so unmodified programs reach it. The "
        "password comes from --password-file (mode 0600) or the terminal, never from "
        "arguments or the environment.",
    )
    p.add_argument(
        "--gateway",
        required=True,
        metavar="ENDPOINT",
        help="client endpoint string of the gateway, e.g. tcp:host=127.0.0.1:port=7700 or "
        "unix:path=/var/lib/netguard/netguard.sock",
    )
    p.add_argument("--service", required=True, metavar="NAME", help="the service to open")
    p.add_argument(
        "--listen",
        required=True,
        metavar="ENDPOINT",
        help="local server endpoint string, e.g. unix:/tmp/redis.sock:mode=600 or "
        "tcp:6380:interface=127.0.0.1",
    )
    p.add_argument("--user", required=True, metavar="NAME", help="the netguard user")
    p.add_argument("--password-file", metavar="FILE", help="file holding the password (0600)")
    p.add_argument(
        "--idle-timeout",
        metavar="SECONDS",
        type=float,
        default=3600.0,
        help="close a tunnelled connection idle this long (default 3600)",
    )
    p.set_defaults(run=_cmd_tunnel)

    # --- Later subcommands (a later issue); register them here when they really work: ---
    p = sub.add_parser(
        "ctl",
        help="control the running daemon through its control socket",
        description="Send one command to the running daemon's control socket and print the "
        "reply (JSON). Commands: status, heartbeat on|off, reload, drain, penalties [list], "
        "penalties clear [SOURCE], help. Exit status: 0 done, 1 refused by the daemon, "
        "2 usage, 3 daemon not reachable, 4 no valid reply in time.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="the control socket")
    where.add_argument("--config", metavar="FILE", help="take the socket from this configuration")
    p.add_argument(
        "--timeout", metavar="SECONDS", type=float, default=5.0, help="give up after (default 5)"
    )
    p.add_argument("words", nargs="+", metavar="COMMAND", help="e.g. status, heartbeat on")
    p.set_defaults(run=_cmd_ctl)

    # TODO(cert): `netguard cert` - certificate helpers.
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
    except (CommandError, users.UsersFileError, ValueError) as e:
        message = str(e)
    except OSError as e:
        message = _describe_os_error(e)
    io.stderr.write(f"netguard: error: {_one_line(message)}\n")
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

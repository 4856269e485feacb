# -*- test-case-name: tests.test_cli -*-
"""
C{netguard adduser}, C{passwd} and C{deluser}: manage the users file, and read a password
(twice with getpass on a terminal, else one line from standard input; never from arguments
or the environment). See docs/operating.md section 2.
"""

from __future__ import annotations

import argparse
import os

from netguard.auth import users
from netguard.cli._base import _IO, EXIT_OK, CommandError

#: The longest password accepted, in characters.
MAX_PASSWORD_CHARS = 1024


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
    _warn_if_iterations_stand_out(users.UserStore.load(path), name, io)
    return EXIT_OK


def _warn_if_iterations_stand_out(store: users.UserStore, name: str, io: _IO) -> None:
    """
    Unknown names are answered with the iteration count most users have; a user with another
    count can be told apart from an unknown name by any client (one AUTH, no password).
    """
    record = store.lookup(name)
    common = store.mock_iterations
    if record is not None and record.iterations != common:
        io.stderr.write(
            f"netguard: warning: {name} has {record.iterations} iterations and most users "
            f"{common}; a client can tell that {name} exists from the count the gateway "
            "sends (use the same --iterations for every user)\n"
        )


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


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Register C{adduser}, C{passwd} and C{deluser} on the C{netguard} parser.
    """
    users_help = (
        "the users file (default: <default state dir>/users, the default run's; this command "
        "does not read a configuration file)"
    )

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

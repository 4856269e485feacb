# -*- test-case-name: tests.test_control -*-
"""
C{netguard ctl}: send one command to the running daemon's control socket, found from the
options, the configuration, or the one running gateway of this user. See docs/operating.md
section 7.5.
"""

from __future__ import annotations

import argparse
import os

from netguard.cli._base import _IO, CommandError
from netguard.cli.tunnel import seconds_option
from netguard.operator_files import read_regular
from netguard.ops.ctl_client import DEFAULT_TIMEOUT, TIMEOUT_RANGE


def _control_socket_path(args: argparse.Namespace, io: _IO) -> str:
    """
    The control socket named by --socket, or by the configuration (--config, else the
    defaults: <state_dir>/control.sock).
    """
    if args.socket:
        return str(args.socket)
    from netguard import config

    if args.state_dir:
        return os.path.join(os.path.abspath(args.state_dir), "control.sock")
    if args.config is None:
        return _find_control_socket(io)
    try:
        loaded = config.load_config(args.config)
    except config.ConfigError as e:
        # A broken file must not lock the operator out of the running daemon (whose
        # "ctl reload" would answer RELOAD_REFUSED with the same problem): find the socket
        # from the two keys that name it, if the file is still TOML.
        fallback = _control_socket_of_broken_config(args.config)
        if fallback is None:
            raise CommandError(str(e)) from None
        io.stderr.write(f"netguard: warning: {e}; using the control socket {fallback}\n")
        return fallback
    path = str(loaded.ops.control_socket)
    if not path:
        raise CommandError("the configuration has no control socket (ops.control_socket)")
    return path


def _find_control_socket(io: _IO) -> str:
    """
    With no option naming it: the default state directory's control socket if it is there,
    else the one running gateway of this user that the kernel's socket table shows.

    @raise CommandError: none or several found, with the options that would name one.
    """
    from netguard import config
    from netguard.ops.ctl_client import listening_control_sockets

    try:
        default = os.path.join(config.default_state_dir(), "control.sock")
    except config.ConfigError:
        default = None
    if default is not None and os.path.exists(default):
        return default
    running = listening_control_sockets()
    if len(running) == 1:
        io.stderr.write(f"netguard: using the running gateway's control socket {running[0]}\n")
        return running[0]
    where = f"{default} does not exist" if default else "there is no default state directory"
    if running:
        listed = ", ".join(running)
        raise CommandError(
            f"{where} and several gateways are running ({listed}); choose one with --socket PATH"
        )
    raise CommandError(
        f"no running netguard found: {where}, and no control socket of this user is "
        "listening; pass the --state-dir DIR or --config FILE the gateway was started "
        "with, or --socket PATH"
    )


def _control_socket_of_broken_config(path: str | None) -> str | None:
    """
    The control socket a configuration file names (C{ops.control_socket}, else
    C{<state_dir>/control.sock}), read without validating the rest of the file.

    @return: the path, or L{None} when the file is not TOML or names neither key usably.
    """
    import tomllib

    from netguard import config

    if path is None:
        return None
    try:
        # Not open(): a FIFO would block here; the loader has said why it is refused.
        data = read_regular(path, config.MAX_FILE_BYTES + 1)
        doc = tomllib.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    base = os.path.dirname(os.path.abspath(path))

    def absolute(value: object) -> str | None:
        if not isinstance(value, str) or not value or "\x00" in value:
            return None
        value = os.path.expanduser(value)
        return os.path.normpath(value if os.path.isabs(value) else os.path.join(base, value))

    ops = doc.get("ops")
    if isinstance(ops, dict) and "control_socket" in ops:
        return absolute(ops["control_socket"])
    state_dir = absolute(doc.get("state_dir")) if "state_dir" in doc else None
    if state_dir is None and "state_dir" in doc:
        return None
    try:
        state_dir = state_dir or config.default_state_dir()
    except config.ConfigError:
        return None
    return os.path.join(state_dir, "control.sock")


def _cmd_ctl(args: argparse.Namespace, io: _IO) -> int:
    from netguard.ops.ctl_client import EXIT_OK, run_ctl

    words = list(args.words)
    if args.top is not None:
        if words[0].lower() != "penalties" or (len(words) > 1 and words[1].lower() == "clear"):
            raise CommandError("--top N goes with the penalties command (penalties --top N)")
        words += ["--top", str(args.top)]
    code, output = run_ctl(_control_socket_path(args, io), words, timeout=args.timeout)
    if code == EXIT_OK:
        if output:
            io.stdout.write(output + "\n")
    else:
        io.stderr.write(f"netguard: error: {output}\n")
    return code


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Register C{ctl} on the C{netguard} parser.
    """
    p = sub.add_parser(
        "ctl",
        help="control the running daemon through its control socket",
        description="Send one command to the running daemon's control socket and print the "
        "reply (JSON). Commands: status, heartbeat on|off, reload, drain, "
        "penalties [SOURCE] [--top N] (the N sources, default 100, at most 1000, with the "
        "longest blocks, then the most offences, with total and truncated; SOURCE an address "
        "or network to list only the sources within it; SOURCE before --top, or after "
        "--: netguard ctl -- penalties --top N SOURCE), penalties clear [SOURCE], help. "
        "Exit status: 0 done, 1 refused by the daemon, "
        "2 usage, 3 daemon not reachable, 4 no valid reply in time. With no --socket, "
        "--config or --state-dir: the default state directory's socket, else the one "
        "running gateway of this user.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="the control socket")
    where.add_argument("--config", metavar="FILE", help="take the socket from this configuration")
    where.add_argument(
        "--state-dir", metavar="DIR", help="the gateway's state directory (DIR/control.sock)"
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=seconds_option(*TIMEOUT_RANGE),
        default=DEFAULT_TIMEOUT,
        help=f"give up after (default {DEFAULT_TIMEOUT:g}; from 0.1 to 3600)",
    )
    p.add_argument(
        "--top",
        metavar="N",
        type=int,
        help="with penalties: list at most N sources (default 100, at most 1000)",
    )
    p.add_argument("words", nargs="+", metavar="COMMAND", help="e.g. status, heartbeat on")
    p.set_defaults(run=_cmd_ctl)

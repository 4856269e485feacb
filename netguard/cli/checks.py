# -*- test-case-name: tests.test_cli -*-
"""
C{netguard check-config} (validate a configuration, or print every default) and C{netguard
events} (the catalogue of log event names). See docs/operating.md section 3.
"""

from __future__ import annotations

import argparse

from netguard.cli._base import _IO, EXIT_OK, CommandError


def _cmd_events(args: argparse.Namespace, io: _IO) -> int:
    from netguard.events import describe_events

    io.stdout.write(describe_events())
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


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Register C{check-config} and C{events} on the C{netguard} parser.
    """
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
        "events",
        help="list every log event name and what it means",
        description="Print every stable log event name netguard emits (the 'event' field of "
        "its text and JSON lines), with what it means: the names to match in log filters, "
        "alerts and dashboards. Levels and fields: docs/logging.md section 6.",
    )
    p.set_defaults(run=_cmd_events)

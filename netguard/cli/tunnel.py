# -*- test-case-name: tests.test_cli_tunnel,tests.test_cli -*-
"""
C{netguard tunnel}: run a local listener whose connections go through the gateway to one
service (the work is L{netguard.client.tunnel}). See docs/operating.md section 6.1.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from netguard.auth import users
from netguard.cli._base import _IO, EXIT_OK, CommandError
from netguard.cli.users import _read_password

#: The range of C{--idle-timeout}, in seconds: that of a service's C{idle_timeout}.
IDLE_TIMEOUT_RANGE = (1.0, 604800.0)

#: The mode a unix C{--listen} socket gets when its string names none: the user's own.
DEFAULT_UNIX_MODE = "600"


def seconds_option(low: float, high: float) -> Any:
    """
    @return: an argparse C{type} that accepts a finite number of seconds from C{low} to
        C{high} (both included) and refuses anything else (C{nan}, C{inf}, out of range)
        with an error naming the range.
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number of seconds from {low:g} to {high:g}"
            )
        return value

    return parse


def local_listener(description: str, allow_remote: bool) -> tuple[str, str | None]:
    """
    Check C{--listen} before anything listens: whoever connects to it is carried through
    the gateway as the logged-in user, so it must stay with that user unless they say
    otherwise. A TCP listener on a non-loopback (or no) interface, a unix socket whose
    C{mode=} lets others write to it (any local user could connect), or a listener netguard
    cannot judge (a plugin) is refused without C{allow_remote}; a unix socket whose string
    names no C{mode=} gets L{DEFAULT_UNIX_MODE}.

    @param description: the C{--listen} endpoint string.
    @param allow_remote: the user accepts a listener others can reach (C{--allow-remote}).
    @return: the endpoint string to listen on (ports as numbers, the mode added), and a
        warning to show when C{allow_remote} let a reachable listener through.
    @raise CommandError: for a bad string, or a reachable listener without C{allow_remote}.
    """
    from netguard.endpoints import Field, check_listener, join_fields, split_description

    try:
        listener = check_listener(description)
    except (ValueError, KeyError, TypeError) as e:
        raise CommandError(f"bad --listen endpoint string: {e}") from None
    fields = split_description(listener.description)
    reach = f"beyond this host ({listener.exposure})" if listener.network else None
    if fields[0].value.lower() == "unix":
        modes = [f.value for f in fields if f.key == "mode"]
        if not modes:
            fields.append(Field("mode", DEFAULT_UNIX_MODE))
        elif int(modes[-1], 8) & 0o002:
            reach = f"by every local user (mode {modes[-1]})"
    result = join_fields(fields)
    if reach is None:
        return result, None
    risk = (
        f"--listen {description} can be reached {reach}: anyone who connects to it is "
        "carried through the gateway as you"
    )
    if not allow_remote:
        raise CommandError(
            f"{risk}; listen on a unix socket of mode 600 or on loopback "
            "(tcp:PORT:interface=127.0.0.1), or give --allow-remote if that is really what "
            "you want"
        )
    return result, f"warning: {risk} (--allow-remote)"


def _gateway_host(args: argparse.Namespace) -> str | None:
    """
    The host named by a C{tcp:} gateway endpoint string (for TLS name checks), if any.
    """
    from netguard.endpoints import split_description

    try:
        fields = split_description(args.gateway)
    except ValueError:
        return None
    positional = [f.value for f in fields if f.key is None]
    named = {f.key: f.value for f in fields if f.key is not None}
    if named.get("host"):
        return named["host"]
    return positional[1] if len(positional) > 1 else None


def build_endpoint(reactor: Any, gateway: Any, credentials: Any, args: argparse.Namespace) -> Any:
    """
    The client endpoint C{netguard tunnel} carries its connections through: multiplexed
    (C{--mux}) or one gateway connection each, keeping tickets unless C{--no-tickets}.
    """
    from netguard.client.endpoint import NGPClientEndpoint

    if args.mux:
        from netguard.client.mux_endpoint import MuxClientEndpoint

        return MuxClientEndpoint(reactor, gateway, credentials, args.service, tickets=args.tickets)
    return NGPClientEndpoint(reactor, gateway, credentials, args.service, tickets=args.tickets)


def _cmd_tunnel(args: argparse.Namespace, io: _IO) -> int:
    from twisted.internet import reactor as _reactor
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.logger import globalLogBeginner

    from netguard.client.endpoint import wrap_tls
    from netguard.client.protocol import Credentials
    from netguard.client.tunnel import TunnelFactory
    from netguard.endpoints import resolve_endpoint_ports
    from netguard.log import safe_text_observer
    from netguard.secretfile import read_password_file

    reactor: Any = _reactor
    name = users.validate_name(args.user)
    # The endpoints first: a typo in one must not cost the user a password prompt.
    try:
        gateway = clientFromString(reactor, resolve_endpoint_ports(args.gateway, server=False))
    except (ValueError, KeyError, TypeError) as e:
        raise CommandError(f"bad --gateway endpoint string: {e}") from None
    listen_description, warning = local_listener(args.listen, args.allow_remote)
    try:
        listen = serverFromString(reactor, listen_description)
    except (ValueError, KeyError, TypeError) as e:
        raise CommandError(f"bad --listen endpoint string: {e}") from None
    if warning is not None:
        io.stderr.write(warning + "\n")
    if args.password_file:
        try:
            password = read_password_file(args.password_file)
        except ValueError as e:
            raise CommandError(str(e)) from None
    else:
        password = _read_password(io, confirm=False)
    tls_options = {
        "tls": args.tls,
        "tls_hostname": args.tls_hostname,
        "ca_file": args.ca_file,
        "pin_sha256": args.pin_sha256,
        "client_cert": args.client_cert,
        "client_key": args.client_key,
    }
    try:
        gateway = wrap_tls(reactor, gateway, tls_options, default_hostname=_gateway_host(args))
    except ValueError as e:
        raise CommandError(str(e)) from None
    endpoint = build_endpoint(reactor, gateway, Credentials(name, password), args)
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


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Register C{tunnel} on the C{netguard} parser.
    """
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
        help="local server endpoint string, e.g. unix:/tmp/redis.sock or "
        "tcp:6380:interface=127.0.0.1; whoever connects to it acts as --user: a unix "
        "socket without mode= gets mode 600, and a TCP listener must be on loopback "
        "unless --allow-remote is given",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="accept a --listen that others can reach (a TCP port on all or a "
        "non-loopback interface, a unix socket whose mode= lets others write): anyone who "
        "reaches it uses the gateway as --user",
    )
    p.add_argument("--user", required=True, metavar="NAME", help="the netguard user")
    p.add_argument("--password-file", metavar="FILE", help="file holding the password (0600)")
    p.add_argument(
        "--idle-timeout",
        metavar="SECONDS",
        type=seconds_option(*IDLE_TIMEOUT_RANGE),
        default=3600.0,
        help="close a tunnelled connection idle this long: 1 to 604800 (default 3600)",
    )
    p.add_argument(
        "--mux",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="carry every local connection as a stream of a shared, multiplexed gateway "
        "session (one login for many connections; MUX yamux/1; a gateway without it gets a "
        "connection each): the default; --no-mux opens one gateway connection, login and "
        "OPEN per local connection",
    )
    p.add_argument(
        "--tickets",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the returning-client tickets the gateway issues after a login (in memory "
        "only) and present one on the next gateway connection, which then gets priority "
        "admission during a flood (a ticket never replaces the login): the default; "
        "--no-tickets neither asks for nor presents any",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="speak TLS to the gateway, verifying its certificate (system roots and name); "
        "every other TLS option below implies it",
    )
    p.add_argument(
        "--tls-hostname",
        metavar="NAME",
        help="name the certificate must prove (default: the --gateway host; implies --tls)",
    )
    p.add_argument("--ca-file", metavar="FILE", help="trust only these CAs (implies --tls)")
    p.add_argument(
        "--pin-sha256",
        metavar="PIN",
        help="accept the server key with this pin-sha256 (comma-separated; implies --tls)",
    )
    p.add_argument(
        "--client-cert",
        metavar="FILE",
        help="client certificate for mutual TLS (implies --tls; needs --client-key)",
    )
    p.add_argument(
        "--client-key", metavar="FILE", help="its private key, mode 0600 (implies --tls)"
    )
    p.set_defaults(run=_cmd_tunnel)

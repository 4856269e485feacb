# -*- test-case-name: tests.test_cli -*-
"""
C{netguard tunnel}: run a local listener whose connections go through the gateway to one
service (the work is L{netguard.client.tunnel}). See docs/operating.md section 6.1.
"""

from __future__ import annotations

import argparse
from typing import Any

from netguard.auth import users
from netguard.cli._base import _IO, EXIT_OK, CommandError
from netguard.cli.users import _read_password


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
    try:
        listen = serverFromString(reactor, resolve_endpoint_ports(args.listen, server=True))
    except (ValueError, KeyError, TypeError) as e:
        raise CommandError(f"bad --listen endpoint string: {e}") from None
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
        help="speak TLS to the gateway, verifying its certificate (system roots and name)",
    )
    p.add_argument("--tls-hostname", metavar="NAME", help="name the certificate must prove")
    p.add_argument("--ca-file", metavar="FILE", help="trust only these CAs (implies --tls)")
    p.add_argument(
        "--pin-sha256",
        metavar="PIN",
        help="accept the server key with this pin-sha256 (comma-separated; implies --tls)",
    )
    p.add_argument("--client-cert", metavar="FILE", help="client certificate for mutual TLS")
    p.add_argument("--client-key", metavar="FILE", help="its private key (mode 0600)")
    p.set_defaults(run=_cmd_tunnel)

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

from netguard import __version__
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


def _cmd_tunnel(args: argparse.Namespace, io: _IO) -> int:
    from twisted.internet import reactor as _reactor
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.logger import globalLogBeginner

    from netguard.client.endpoint import NGPClientEndpoint, wrap_tls
    from netguard.client.protocol import Credentials
    from netguard.client.tunnel import TunnelFactory
    from netguard.endpoints import resolve_endpoint_ports
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
        gateway = clientFromString(reactor, resolve_endpoint_ports(args.gateway, server=False))
        listen = serverFromString(reactor, resolve_endpoint_ports(args.listen, server=True))
    except (ValueError, KeyError, TypeError) as e:
        raise CommandError(f"bad endpoint string: {e}") from None
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
        with open(path, "rb") as handle:
            doc = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
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

    code, output = run_ctl(_control_socket_path(args, io), args.words, timeout=args.timeout)
    if code == EXIT_OK:
        if output:
            io.stdout.write(output + "\n")
    else:
        io.stderr.write(f"netguard: error: {output}\n")
    return code


# -- netguard cert -------------------------------------------------------------------------------


def _cert_hostname(text: str) -> str:
    """
    Check the name a self-signed certificate is made for: an IP address, or a DNS name of
    dot-separated labels (letters, digits, hyphens; internationalized names allowed).

    @return: the name as given (an IP address normalized).
    @raise CommandError: for anything else (a wildcard, a URL, a trailing dot...).
    """
    import ipaddress
    import re

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    problem = (
        f"--hostname {text!r} is not a DNS name or an IP address; give the name clients "
        "connect to, e.g. gw.example.org or 192.0.2.10 (no wildcard, port or trailing dot)"
    )
    try:
        ascii_name = text.encode("idna").decode("ascii")
    except UnicodeError:
        raise CommandError(problem) from None
    labels = ascii_name.split(".")
    label = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
    if len(ascii_name) > 253 or not all(label.fullmatch(part) for part in labels):
        raise CommandError(problem)
    if labels[-1].isdigit():
        raise CommandError(f"--hostname {text!r} looks like an incomplete IP address")
    return text


def _cert_default_dir() -> str:
    """
    C{<state_dir>/tls}, created with mode 0700 (and the state directory too) if missing.

    @raise CommandError: if there is no state directory to default to, or the path is taken.
    """
    from netguard import config

    try:
        state_dir = config.default_state_dir()
    except config.ConfigError as e:
        raise CommandError(f"{e}; pass --key FILE and --cert FILE") from None
    directory = os.path.join(state_dir, "tls")
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        if not os.path.isdir(directory):
            raise CommandError(f"{directory} exists and is not a directory") from None
    else:
        os.chmod(directory, 0o700)
    return directory


def _cert_target(path: str, option: str) -> str:
    """
    An absolute output path whose directory exists and which is not a directory itself.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise CommandError(f"{option} {path}: the directory {parent} does not exist")
    if os.path.isdir(path):
        raise CommandError(f"{option} {path}: is a directory; give a file name")
    return path


def _cert_endpoint_value(text: str) -> str:
    """
    Escape a value for a Twisted endpoint string (C{\\} and C{:}).
    """
    return text.replace("\\", "\\\\").replace(":", "\\:")


def _cert_selfsigned(args: argparse.Namespace, io: _IO) -> int:
    import ipaddress
    import json
    import shlex

    from netguard import tls

    hostname = _cert_hostname(args.hostname)
    if not 1 <= args.days <= 3650:
        raise CommandError("--days must be from 1 to 3650")
    key_path, cert_path = args.key, args.cert
    if key_path is None or cert_path is None:
        directory = _cert_default_dir()
        key_path = key_path if key_path is not None else os.path.join(directory, "key.pem")
        cert_path = cert_path if cert_path is not None else os.path.join(directory, "cert.pem")
    key_path = _cert_target(key_path, "--key")
    cert_path = _cert_target(cert_path, "--cert")
    if key_path == cert_path:
        raise CommandError("--key and --cert must name two different files")
    try:
        info = tls.make_self_signed(hostname, key_path, cert_path, args.days, overwrite=args.force)
    except tls.TLSConfigError as e:
        raise CommandError(str(e)) from None

    try:
        address: Any = ipaddress.ip_address(hostname)
    except ValueError:
        address = None
    if address is None:
        listen = "tcp:7701:interface=0.0.0.0"
    elif address.version == 4:
        listen = f"tcp:7701:interface={address}"
    else:
        listen = f"tcp6:7701:interface={_cert_endpoint_value(str(address))}"
    host = _cert_endpoint_value(hostname)
    pin = info.pin_sha256
    expires = info.not_after.strftime("%Y-%m-%d %H:%M:%S UTC")
    tunnel = shlex.join(
        [
            "netguard",
            "tunnel",
            "--gateway",
            f"tcp:host={host}:port=7701",
            "--tls",
            "--pin-sha256",
            pin,
        ]
    )
    lines = [
        f"created a key and a self-signed certificate for {hostname}",
        f"  key:          {key_path} (mode 0600; keep it secret, never copy it to clients)",
        f"  certificate:  {cert_path} (mode 0644)",
        f"  expires:      {expires} ({args.days} days from now)",
        f"  sha256:       {info.sha256_fingerprint}",
        f"  pin-sha256:   {pin}",
        "",
        "Server: add a TLS listener to the configuration file (7701 is an example port):",
        "",
        "  [[tls_listen]]",
        f"  endpoint = {json.dumps(listen)}",
        f"  cert_file = {json.dumps(cert_path)}",
        f"  key_file = {json.dumps(key_path)}",
        "",
        "Client, netguard tunnel (add --service, --user and --listen as usual):",
        "",
        f"  {tunnel}",
        "",
        "Client, netguard: endpoint string (add these keys):",
        "",
        f"  tls=1:pin_sha256={pin}",
        f"  e.g. netguard:host={host}:port=7701:service=SERVICE:user=USER:"
        f"password_file=FILE:tls=1:pin_sha256={pin}",
    ]
    io.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def _cert_read(path: str) -> Any:
    """
    The first certificate of a PEM file (the leaf of a full-chain file).

    @return: a C{cryptography} certificate.
    @raise CommandError: if the file cannot be read or holds no PEM certificate.
    """
    from cryptography import x509

    from netguard.tls import MAX_PEM_BYTES

    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        raise CommandError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CommandError(f"{path}: is a directory, not a certificate file") from None
    except OSError as e:
        raise CommandError(f"{path}: cannot read it ({e.strerror})") from None
    if len(data) > MAX_PEM_BYTES:
        raise CommandError(f"{path}: larger than {MAX_PEM_BYTES} bytes; not a certificate")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        if b"PRIVATE KEY-----" in data:
            raise CommandError(f"{path}: holds a private key, not a certificate")
        raise CommandError(
            f"{path}: holds no PEM certificate (-----BEGIN CERTIFICATE-----); convert a DER "
            "certificate with 'openssl x509 -inform der -in FILE'"
        )
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except ValueError as e:
        raise CommandError(f"{path}: cannot parse the certificate ({e})") from None


def _cert_pin(args: argparse.Namespace, io: _IO) -> int:
    from netguard.tls import public_key_pin

    io.stdout.write(public_key_pin(_cert_read(args.file)) + "\n")
    return EXIT_OK


def _cert_check(args: argparse.Namespace, io: _IO) -> int:
    import datetime

    from netguard import tls

    try:
        settings = tls.ServerTLSSettings(
            cert_file=args.cert,
            key_file=args.key,
            chain_file=args.chain,
            client_ca_file=args.ca,
        )
        server_tls = tls.load_server_context(settings)
    except tls.TLSConfigError as e:
        raise CommandError(str(e)) from None
    info = server_tls.certificate_info
    left = info.not_after - datetime.datetime.now(datetime.UTC)
    names = [f"DNS:{name}" for name in info.dns_names]
    names += [f"IP:{address}" for address in info.ip_addresses]
    issuer = "(self-signed)" if info.issuer == info.subject else info.issuer
    client_certs = f"verified against {args.ca} (optional)" if args.ca else "not asked for"
    lines = [
        f"certificate:  {args.cert}",
        f"key:          {args.key} (belongs to the certificate)",
        f"subject:      {info.subject}",
        f"issuer:       {issuer}",
        f"names:        {', '.join(names) if names else '(none: clients cannot verify a name)'}",
        f"key type:     {info.key_type}",
        f"serial:       {info.serial}",
        f"valid from:   {info.not_before.strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"valid until:  {info.not_after.strftime('%Y-%m-%d %H:%M:%S UTC')} "
        f"({left.days} days left)",
        f"sha256:       {info.sha256_fingerprint}",
        f"pin-sha256:   {info.pin_sha256}",
        f"client certs: {client_certs}",
    ]
    lines += [f"warning: {warning}" for warning in server_tls.warnings]
    lines.append("ok: netguard can serve this certificate and key")
    io.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def _cmd_cert(args: argparse.Namespace, io: _IO) -> int:
    """
    C{netguard cert selfsigned|pin|check}: certificate helpers for TLS listeners.
    """
    actions: dict[str, Callable[[argparse.Namespace, _IO], int]] = {
        "selfsigned": _cert_selfsigned,
        "pin": _cert_pin,
        "check": _cert_check,
    }
    action = actions.get(args.cert_command or "")
    if action is None:
        raise CommandError("a cert command is required: selfsigned, pin or check")
    return action(args, io)


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

    # --- Later subcommands (a later issue); register them here when they really work: ---
    p = sub.add_parser(
        "ctl",
        help="control the running daemon through its control socket",
        description="Send one command to the running daemon's control socket and print the "
        "reply (JSON). Commands: status, heartbeat on|off, reload, drain, penalties [list], "
        "penalties clear [SOURCE], help. Exit status: 0 done, 1 refused by the daemon, "
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
        "--timeout", metavar="SECONDS", type=float, default=5.0, help="give up after (default 5)"
    )
    p.add_argument("words", nargs="+", metavar="COMMAND", help="e.g. status, heartbeat on")
    p.set_defaults(run=_cmd_ctl)

    p = sub.add_parser(
        "cert",
        help="create a self-signed certificate, print a pin, check a certificate and key",
        description="Certificate helpers for TLS listeners ([[tls_listen]]) and their "
        "clients. See docs/tls.md.",
    )
    cert = p.add_subparsers(title="cert commands", dest="cert_command", metavar="CERT_COMMAND")
    c = cert.add_parser(
        "selfsigned",
        help="create an EC P-256 key (0600) and a self-signed certificate",
        description="Create an EC P-256 key (mode 0600) and a self-signed certificate for "
        "a first deployment, and print its pin-sha256 with ready-to-paste server and client "
        "settings. Existing files are never replaced without --force.",
    )
    c.add_argument(
        "--hostname", required=True, metavar="NAME", help="the DNS name or IP clients connect to"
    )
    c.add_argument("--key", metavar="FILE", help="the key file (default <state_dir>/tls/key.pem)")
    c.add_argument(
        "--cert", metavar="FILE", help="the certificate file (default <state_dir>/tls/cert.pem)"
    )
    c.add_argument(
        "--days", metavar="N", type=int, default=365, help="validity in days (default 365)"
    )
    c.add_argument(
        "--force",
        action="store_true",
        help="replace existing files (a new key: pinned clients need the new pin)",
    )
    c = cert.add_parser(
        "pin",
        help="print the pin-sha256 of a certificate file",
        description="Print the pin-sha256 (base64 SHA-256 of the public key) of the first "
        "certificate in a PEM file, for --pin-sha256 / pin_sha256=.",
    )
    c.add_argument("file", metavar="FILE", help="a PEM certificate (or full-chain) file")
    c = cert.add_parser(
        "check",
        help="load a certificate and key as a TLS listener would, and describe them",
        description="Load a certificate, key and optional chain and client CA file with the "
        "checks a TLS listener applies at start and on reload; print the certificate and any "
        "warnings. A problem is one line and exit status 2.",
    )
    c.add_argument("--cert", required=True, metavar="FILE", help="the certificate (PEM)")
    c.add_argument("--key", required=True, metavar="FILE", help="its private key (PEM)")
    c.add_argument("--chain", metavar="FILE", help="intermediate certificates (PEM)")
    c.add_argument("--ca", metavar="FILE", help="CA certificates for client certificates (mTLS)")
    p.set_defaults(run=_cmd_cert)

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

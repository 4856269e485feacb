# -*- test-case-name: tests.test_cli_cert -*-
"""
C{netguard cert selfsigned|pin|check}: certificate helpers for TLS listeners and their
clients. See docs/tls.md.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from netguard.cli._base import _IO, EXIT_OK, CommandError


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


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Register C{cert} and its subcommands on the C{netguard} parser.
    """
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

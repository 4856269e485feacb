# -*- test-case-name: tests.test_endpoints -*-
"""
Endpoint strings, in one place: splitting and joining them as Twisted's parser does, checking
listeners and backends field by field without listening, connecting or reading files, port
names resolved with C{getservbyname}, who can reach a listener, the default listen backlog,
and secrets hidden before a string is shown.

The grammar the operator writes is in C{docs/operating.md} ("Endpoint strings").
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Final

import attrs

from netguard.quoting import describe_value, toml_string, truncate

__all__ = [
    "BACKEND_HELP",
    "DEFAULT_LISTEN_BACKLOG",
    "LISTENER_HELP",
    "MAX_DESCRIPTION_LENGTH",
    "SOCKS5_ENDPOINT_KEYS",
    "Backend",
    "EndpointError",
    "Field",
    "Listener",
    "check_backend",
    "check_listener",
    "join_fields",
    "looks_secret",
    "quote_field",
    "redact_description",
    "resolve_endpoint_ports",
    "resolve_port",
    "split_description",
    "with_default_backlog",
]

#: The longest endpoint string accepted.
MAX_DESCRIPTION_LENGTH: Final = 4096

#: Every key a C{socks5:} endpoint string may have (the grammar is in
#: L{netguard.outbound.socks5}).
SOCKS5_ENDPOINT_KEYS: Final = frozenset(
    {
        "host",
        "port",
        "proxy",
        "proxy_host",
        "proxy_port",
        "user",
        "password_file",
        "timeout",
        "offer_no_auth",
    }
)

_PORT_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_SECRET_KEY_RE: Final = re.compile(r"pass|secret|token|credential|apikey", re.IGNORECASE)
_URL_USERINFO_RE: Final = re.compile(r"(//[^/@:\s]*:)[^/@\s]*@")


class EndpointError(ValueError):
    """
    An endpoint string (or one of its fields) cannot be used.

    @ivar message: what is wrong and what is allowed; also the exception's text.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def looks_secret(name: str) -> bool:
    """
    Whether an option or key name looks like it holds a password or token.
    """
    return _SECRET_KEY_RE.search(name) is not None


# ---------------------------------------------------------------------------------------------
# Ports


def resolve_port(
    name_or_number: str | int,
    *,
    lookup: Callable[[str, str], int] = socket.getservbyname,
) -> int:
    """
    Turn a TCP port number or service name into a port number (seed tip 1: port numbers are
    looked up with C{getservbyname}, never assumed).

    @param name_or_number: decimal digits (C{"6379"}) or a service name from the services
        database (C{"redis"}, C{"https"}).
    @param lookup: the C{getservbyname} to use (tests inject a fake).
    @return: the port, from 0 to 65535.
    @raise ValueError: if it is neither a port number in range nor a known TCP service name.
    """
    if isinstance(name_or_number, int) and not isinstance(name_or_number, bool):
        text = str(name_or_number)
    elif isinstance(name_or_number, str):
        text = name_or_number
    else:
        raise ValueError(f"a port must be a number or a service name, not {name_or_number!r}")
    if text.isascii() and text.isdigit():
        port = int(text)
        if port > 65535:
            raise ValueError(f"port {text} is out of range (0 to 65535)")
        return port
    if not _PORT_NAME_RE.fullmatch(text):
        raise ValueError(
            f"{toml_string(truncate(text, 40))} is neither a port number nor a service name"
        )
    try:
        port = lookup(text, "tcp")
    except OSError:
        raise ValueError(
            f"unknown service name {toml_string(text)}: not in the services database "
            "(/etc/services) for tcp; give the port number or add the name there"
        ) from None
    if not 0 <= port <= 65535:
        raise ValueError(f"service name {text!r} resolved to an impossible port {port}")
    return port


def _checked_port(text: str, *, allow_zero: bool) -> str:
    """
    Resolve an endpoint's port value, returning it as decimal digits.
    """
    try:
        port = resolve_port(text)
    except ValueError as e:
        raise EndpointError(str(e)) from None
    if port == 0 and not allow_zero:
        raise EndpointError("port 0 cannot be connected to; give a port from 1 to 65535")
    return str(port)


# ---------------------------------------------------------------------------------------------
# Endpoint description strings


@attrs.frozen
class Field:
    """
    One colon-separated field of an endpoint description: C{value} or C{key=value}.
    """

    key: str | None
    value: str


def split_description(description: str) -> list[Field]:
    """
    Split an endpoint description the way Twisted's C{endpoints._parse} does (a backslash
    escapes the next character, C{:} separates fields, the first unescaped C{=} of a field
    separates key and value), but keep the fields in order so the string can be rebuilt.

    @raise EndpointError: on a trailing lone backslash or an empty option name.
    """
    fields: list[Field] = []
    key: str | None = None
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise EndpointError("ends with a lone backslash (write \\\\ for a backslash)")
            current.append(escaped)
        elif char == ":":
            fields.append(Field(key, "".join(current)))
            key, current = None, []
        elif char == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(char)
    fields.append(Field(key, "".join(current)))
    for field in fields:
        if field.key == "":
            raise EndpointError('has an option with an empty name ("=value")')
    return fields


#: The listen backlog of a listener whose string does not set one. Twisted's default is 50,
#: which a burst of connects overflows (each dropped SYN costs the client a retransmit of 1 s
#: or more); 511 is nginx's and Redis's choice, within Linux's default somaxconn (4096), which
#: caps it anyway. Admission still decides on each connection once it is accepted.
DEFAULT_LISTEN_BACKLOG: Final = 511


def with_default_backlog(description: str, backlog: int = DEFAULT_LISTEN_BACKLOG) -> str:
    """
    The server endpoint string C{description} with C{backlog=} added when its type takes a
    backlog (tcp, tcp6, ssl, tls, unix, also inside C{haproxy:}) and sets none, by name or
    by position; any other string is returned unchanged.

    @raise EndpointError: as L{split_description}.
    """
    fields = split_description(description)
    prefix = ""
    if fields[0].key is None and fields[0].value == "haproxy" and len(fields) > 1:
        prefix, fields = "haproxy:", fields[1:]
    kind = fields[0].value if fields[0].key is None else None
    endpoint_type = _SERVER_TYPES.get(kind or "")
    if endpoint_type is None or "backlog" not in endpoint_type.params:
        return description
    positional = [f for f in fields[1:] if f.key is None]
    named = {f.key for f in fields[1:] if f.key is not None}
    if "backlog" in named or len(positional) > endpoint_type.positional.index("backlog"):
        return description
    return prefix + join_fields([*fields, Field("backlog", str(backlog))])


def quote_field(text: str, *, value: bool) -> str:
    """
    Escape text for an endpoint description; C{=} only needs escaping outside values.
    """
    out = text.replace("\\", "\\\\").replace(":", "\\:")
    return out if value else out.replace("=", "\\=")


def join_fields(fields: Iterable[Field]) -> str:
    """
    The inverse of L{split_description}.
    """
    return ":".join(
        quote_field(f.value, value=False)
        if f.key is None
        else f"{quote_field(f.key, value=False)}={quote_field(f.value, value=True)}"
        for f in fields
    )


@attrs.frozen
class _EndpointType:
    """
    The parameters of one endpoint type, as Twisted's parser for it binds them.

    @ivar params: every parameter name, in Twisted's positional order.
    @ivar positional: the parameters positional fields may fill.
    @ivar skip_named: positional fields skip parameters already given by name (Twisted's
        C{_parseClientTCP} rule) instead of clashing with them (Python call rules).
    @ivar required: parameters that must be given.
    """

    params: tuple[str, ...]
    positional: tuple[str, ...]
    skip_named: bool
    required: frozenset[str]


def _python_call(params: tuple[str, ...], *required: str) -> _EndpointType:
    return _EndpointType(params, params, False, frozenset(required))


_SERVER_TYPES: Final[Mapping[str, _EndpointType]] = MappingProxyType(
    {
        "tcp": _python_call(("port", "interface", "backlog"), "port"),
        "tcp6": _python_call(("port", "backlog", "interface"), "port"),
        "ssl": _python_call(
            (
                "port",
                "privateKey",
                "certKey",
                "sslmethod",
                "interface",
                "backlog",
                "extraCertChain",
                "dhParameters",
            ),
            "port",
        ),
        "tls": _python_call(("path", "port", "backlog", "interface"), "path"),
        "unix": _python_call(("address", "mode", "backlog", "lockfile"), "address"),
        "systemd": _python_call(("domain", "index", "name"), "domain"),
    }
)

_CLIENT_TYPES: Final[Mapping[str, _EndpointType]] = MappingProxyType(
    {
        "tcp": _EndpointType(
            ("host", "port", "timeout", "bindAddress"),
            ("host", "port"),
            True,
            frozenset({"host", "port"}),
        ),
        "ssl": _EndpointType(
            (
                "host",
                "port",
                "timeout",
                "bindAddress",
                "certKey",
                "privateKey",
                "caCertsDir",
                "hostname",
            ),
            ("host", "port"),
            True,
            frozenset({"host", "port"}),
        ),
        "tls": _python_call(
            (
                "host",
                "port",
                "timeout",
                "bindAddress",
                "certificate",
                "privateKey",
                "trustRoots",
                "endpoint",
            ),
            "host",
            "port",
        ),
        "unix": _EndpointType(
            ("path", "timeout", "lockfile"), ("path",), False, frozenset({"path"})
        ),
        # netguard's own SOCKS5 client endpoint (netguard/outbound/socks5.py).
        "socks5": _EndpointType(
            tuple(sorted(SOCKS5_ENDPOINT_KEYS)),
            (),
            False,
            frozenset({"host", "port"}),
        ),
    }
)

BACKEND_HELP: Final = (
    "use tcp:host=HOST:port=PORT, unix:path=PATH, tls:host=HOST:port=PORT, "
    "ssl:host=HOST:port=PORT:hostname=HOST, "
    "socks5:host=HOST:port=PORT:proxy_host=ADDR[:proxy_port=PORT][:user=U:password_file=F] "
    "or builtin:echo"
)
LISTENER_HELP: Final = (
    "use tcp:PORT:interface=ADDR, tcp6:PORT:interface=ADDR, ssl:PORT:..., tls:CERTDIR:PORT, "
    "unix:PATH:mode=600, systemd:domain=INET:index=0, haproxy:<listener>, "
    "or a type from an installed endpoint plugin"
)


def _bind(what: str, fields: Sequence[Field], kind: _EndpointType) -> dict[str, int]:
    """
    Bind the fields after the type prefix to parameter names.

    @param what: names the endpoint in messages, e.g. C{"a tcp: listener"}.
    @param fields: all fields, the type prefix first.
    @return: parameter name to index in C{fields}.
    @raise EndpointError: on an unknown option, a parameter given twice, too many positional
        fields, or a missing required parameter.
    """
    bound: dict[str, int] = {}
    positional: list[int] = []
    for index, field in enumerate(fields[1:], start=1):
        if field.key is None:
            positional.append(index)
            continue
        if field.key not in kind.params:
            raise EndpointError(
                f"unknown option {toml_string(truncate(field.key, 40))} for {what}; "
                f"allowed: {', '.join(kind.params)}"
            )
        if field.key in bound:
            raise EndpointError(f"option {field.key!r} is given twice")
        bound[field.key] = index
    slots = [p for p in kind.positional if not (kind.skip_named and p in bound)]
    if len(positional) > len(slots):
        raise EndpointError(
            f"has {len(positional)} positional fields, but {what} takes at most "
            f"{len(slots)} ({', '.join(slots) or 'none'}); name the others (key=value), "
            "and escape colons inside values (IPv6 addresses, paths) as \\:"
        )
    for name, index in zip(slots, positional, strict=False):
        if name in bound:
            raise EndpointError(
                f"{name!r} is given twice (by position and by name); escape colons inside "
                "values (IPv6 addresses, paths) as \\:"
            )
        bound[name] = index
    missing = sorted(kind.required - bound.keys())
    if missing:
        raise EndpointError(f"{what} needs {' and '.join(missing)}")
    return bound


def _check_ip(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise EndpointError(
            f"{toml_string(truncate(text, 60))} is not an IP address "
            "(write 127.0.0.1, ::1, 0.0.0.0 or :: and escape colons as \\:)"
        ) from None
    return text


def _check_decimal(text: str, low: int, high: int, what: str) -> str:
    if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
        raise EndpointError(f"{what} must be an integer from {low} to {high}, got {text!r}")
    return text


def _check_nonempty(text: str, what: str) -> str:
    if not text or "\x00" in text:
        raise EndpointError(f"{what} must not be empty")
    return text


def _check_host(text: str) -> str:
    if not text or len(text) > 253 or any(ord(c) <= 0x20 or c in "\x7f/" for c in text):
        raise EndpointError(f"{toml_string(truncate(text, 60))} is not a host name or address")
    return text


def _check_flag(text: str) -> str:
    if text not in ("0", "1"):
        raise EndpointError(f"lockfile must be 0 or 1, got {toml_string(truncate(text, 20))}")
    return text


def _check_mode(text: str) -> str:
    if not (text and len(text) <= 4 and all(c in "01234567" for c in text)):
        raise EndpointError(f"mode must be octal digits such as 600, got {text!r}")
    if int(text, 8) > 0o777:
        raise EndpointError(f"mode {text} has bits beyond 777")
    return text


def _check_unix_path(text: str) -> str:
    _check_nonempty(text, "a unix socket path")
    if len(os.fsencode(text)) > 107:
        raise EndpointError(
            f"unix socket path is {len(os.fsencode(text))} bytes; the limit is 107, "
            "so choose a shorter path or state_dir"
        )
    return text


def _check_sslmethod(text: str) -> str:
    from OpenSSL import SSL

    if not (text.endswith("_METHOD") and text.isidentifier() and hasattr(SSL, text)):
        raise EndpointError(
            f"sslmethod {toml_string(truncate(text, 40))} is not an OpenSSL method"
        )
    return text


def _check_domain(text: str) -> str:
    if text not in ("INET", "INET6", "UNIX"):
        raise EndpointError(
            f"domain must be INET, INET6 or UNIX, got {toml_string(truncate(text))}"
        )
    return text


def _server_value(kind: str, name: str, text: str) -> str:
    """
    Check one listener parameter; return its normalized text (ports become numbers).
    """
    if name == "port":
        return _checked_port(text, allow_zero=True)
    if name == "interface":
        return _check_ip(text)
    if name == "backlog":
        return _check_decimal(text, 1, 65535, "backlog")
    if name == "mode":
        return _check_mode(text)
    if name == "lockfile":
        return _check_flag(text)
    if name == "address":
        return _check_unix_path(text)
    if name == "sslmethod":
        return _check_sslmethod(text)
    if name == "domain":
        return _check_domain(text)
    if name == "index":
        return _check_decimal(text, 0, 1023, "index")
    return _check_nonempty(text, f"{name} of a {kind}: listener")


@attrs.frozen
class Listener:
    """
    A checked listener.

    @ivar description: the normalized endpoint string (ports as numbers).
    @ivar exposure: who can reach it, in words.
    @ivar network: reachable from beyond this host (marked by C{netguard check-config}).
    @ivar warning: something the operator should look at, or L{None}.
    """

    description: str
    exposure: str
    network: bool
    warning: str | None = None


def _ip_exposure(interface: str | None, implicit: str) -> tuple[str, bool, str | None]:
    """
    Classify a TCP listener by its interface.

    @param interface: the interface given, or L{None} if none was.
    @param implicit: what Twisted binds when none is given (C{""} or C{"::"}).
    @return: (exposure text, reachable from the network, warning or None).
    """
    if interface is None:
        if implicit == "":
            which, local, every = "all IPv4 interfaces", "127.0.0.1", "0.0.0.0"
        else:
            which, local, every = "all interfaces (IPv6 and IPv4)", "\\:\\:1", "\\:\\:"
        return (
            f"NETWORK: {which} (no interface given)",
            True,
            f"names no interface, so it listens on {which}; add :interface={local} to keep "
            f"it local, or write :interface={every} to make the choice explicit",
        )
    address = ipaddress.ip_address(interface)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "loopback only", False, None
    if address.is_unspecified:
        return f"NETWORK: all interfaces ({interface})", True, None
    return f"NETWORK: interface {interface}", True, None


def _endpoint_head(description: object, what: str, help_text: str) -> tuple[list[Field], str]:
    """
    Split an endpoint string into its fields and lower-cased type, with the checks every
    endpoint string gets (a string, not empty, bounded, starting with a type).

    @raise EndpointError: naming C{what} and showing C{help_text}.
    """
    if not isinstance(description, str):
        raise EndpointError(
            f"{what} must be an endpoint string, got {describe_value(description)}; {help_text}"
        )
    if not description or len(description) > MAX_DESCRIPTION_LENGTH:
        raise EndpointError(
            f"{what} must be 1 to {MAX_DESCRIPTION_LENGTH} characters; {help_text}"
        )
    fields = split_description(description)
    head = fields[0]
    kind = head.value.lower()
    if head.key is not None or not kind:
        raise EndpointError(f"must start with an endpoint type; {help_text}")
    return fields, kind


def check_listener(description: object, *, nested: bool = False) -> Listener:
    """
    Check a server endpoint string without listening.

    Known types (tcp, tcp6, ssl, tls, unix, systemd, haproxy) are checked field by field
    without reading key files or inherited descriptors; other types go through Twisted's
    plugin mechanism with a L{MemoryReactor}, which builds an endpoint but never listens.

    @raise EndpointError: if it is not a usable listener.
    """
    fields, kind = _endpoint_head(description, "a listener", LISTENER_HELP)
    if kind == "haproxy":
        if nested:
            raise EndpointError("haproxy: cannot wrap another haproxy: listener")
        if len(fields) < 2:
            raise EndpointError("haproxy: needs a listener after it, e.g. haproxy:tcp:7700:...")
        inner = check_listener(join_fields(fields[1:]), nested=True)
        return Listener(
            "haproxy:" + inner.description,
            inner.exposure + "; client addresses come from the PROXY header",
            inner.network,
            inner.warning,
        )
    if kind == "stdio":
        raise EndpointError(f"stdio: is not a network listener; {LISTENER_HELP}")
    endpoint_type = _SERVER_TYPES.get(kind)
    if endpoint_type is None:
        return _check_plugin_listener(str(description), kind)
    bound = _bind(f"a {kind}: listener", fields, endpoint_type)
    fields[0] = Field(None, kind)
    values: dict[str, str] = {}
    for name, index in bound.items():
        values[name] = _server_value(kind, name, fields[index].value)
        if values[name] != fields[index].value:
            fields[index] = Field(fields[index].key, values[name])
    normalized = join_fields(fields)
    if kind in ("tcp", "tcp6", "unix"):
        _twisted_agrees(normalized, server=True)
    if kind == "unix":
        mode = values.get("mode", "666")
        return Listener(normalized, f"local unix socket, mode {mode}", False)
    if kind == "systemd":
        if ("index" in values) == ("name" in values):
            raise EndpointError("a systemd: listener needs exactly one of index and name")
        return Listener(normalized, "inherited from systemd: its socket unit decides", False)
    implicit = "" if kind in ("tcp", "ssl") else "::"
    exposure, network, warning = _ip_exposure(values.get("interface"), implicit)
    return Listener(normalized, exposure, network, warning)


def _check_plugin_listener(description: str, kind: str) -> Listener:
    """
    Check a listener type we do not know by asking Twisted's plugin mechanism to build it
    with a memory reactor (building an endpoint never listens).
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        serverFromString(MemoryReactor(), description)
    except Exception as e:  # noqa: BLE001 - third-party parsers raise anything; never a traceback
        text = str(e)
        if text.startswith("Unknown endpoint type"):
            raise EndpointError(
                f"unknown listener type {toml_string(truncate(kind, 40))}; {LISTENER_HELP}"
            ) from None
        raise EndpointError(f"Twisted cannot build this listener: {truncate(text, 200)}") from None
    return Listener(
        description,
        f"{kind}: plugin listener; netguard cannot tell which interfaces it exposes",
        True,
        f"is a {kind}: plugin listener; netguard cannot tell which interfaces it exposes",
    )


def _twisted_agrees(description: str, *, server: bool) -> None:
    """
    Let Twisted's own parser build the endpoint (with a memory reactor: nothing listens or
    connects), as a second opinion for the types whose parsers read no files.

    @raise EndpointError: if Twisted refuses what our checks accepted.
    """
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.internet.testing import MemoryReactor

    build = serverFromString if server else clientFromString
    try:
        build(MemoryReactor(), description)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise EndpointError(f"Twisted cannot parse it: {truncate(str(e), 200)}") from None


def _client_value(kind: str, name: str, text: str) -> str:
    """
    Check one backend parameter; return its normalized text (ports become numbers).
    """
    if name == "port":
        return _checked_port(text, allow_zero=False)
    if name in ("host", "hostname"):
        return _check_host(text)
    if name == "bindAddress":
        return _check_ip(text)
    if name == "timeout":
        return _check_decimal(text, 1, 3600, "timeout")
    if name == "lockfile":
        return _check_flag(text)
    if name == "path":
        return _check_unix_path(text)
    if name == "endpoint":
        inner = check_backend(text, nested=True)
        return inner.description
    return _check_nonempty(text, f"{name} of a {kind}: backend")


@attrs.frozen
class Backend:
    """
    A checked backend: the normalized endpoint string and an optional warning.
    """

    description: str
    kind: str
    warning: str | None = None


def check_backend(description: object, *, nested: bool = False) -> Backend:
    """
    Check a client endpoint string without connecting or reading files.

    @raise EndpointError: if it is not a usable backend.
    """
    fields, kind = _endpoint_head(description, "a backend", BACKEND_HELP)
    if kind == "builtin":
        if nested or [(f.key, f.value) for f in fields[1:]] != [(None, "echo")]:
            raise EndpointError("the only built-in backend is builtin:echo")
        return Backend("builtin:echo", kind)
    endpoint_type = _CLIENT_TYPES.get(kind)
    if endpoint_type is None:
        raise EndpointError(
            f"unknown backend type {toml_string(truncate(kind, 40))}; {BACKEND_HELP}"
        )
    bound = _bind(f"a {kind}: backend", fields, endpoint_type)
    fields[0] = Field(None, kind)
    for name, index in bound.items():
        checked = _client_value(kind, name, fields[index].value)
        if checked != fields[index].value:
            fields[index] = Field(fields[index].key, checked)
    normalized = join_fields(fields)
    if kind in ("tcp", "unix"):
        _twisted_agrees(normalized, server=False)
    warning = None
    if kind == "ssl" and "hostname" not in bound:
        warning = (
            "is an ssl: backend without hostname=, so the backend's certificate is not "
            "verified; add hostname=NAME or use tls:host=NAME:port=PORT"
        )
    return Backend(normalized, kind, warning)


def resolve_endpoint_ports(description: str, *, server: bool) -> str:
    """
    Resolve the port names of an endpoint string that goes straight to Twisted's parser (the
    client side: C{netguard tunnel --gateway/--listen}, C{netguard:gateway=}), as the
    configuration does for its own strings: C{tcp:host=gw:port=ngp} becomes
    C{tcp:host=gw:port=7700} through C{getservbyname} (seed tip 1). The types the
    configuration knows (C{tcp}, C{tcp6}, C{ssl}, C{tls}, C{unix}...) are checked field by
    field; any other type (a plugin such as C{socks5:}) is returned unchanged for its own
    parser to judge.

    @param description: the endpoint string.
    @param server: whether it is a server (listening) endpoint string.
    @return: the string with every port a number.
    @raise EndpointError: naming what is wrong (an unknown service name, a bad field).
    """
    kind = description.split(":", 1)[0]
    known = _SERVER_TYPES if server else _CLIENT_TYPES
    if kind not in known and not (server and kind == "haproxy"):
        return description
    if server:
        return check_listener(description).description
    return check_backend(description).description


def redact_description(description: str) -> str:
    """
    Hide secrets in an endpoint-like string: values of options whose name looks like a
    password or token, and the password part of C{scheme://user:password@host}.
    """
    text = _URL_USERINFO_RE.sub(r"\1***@", description)
    try:
        fields = split_description(text)
    except EndpointError:
        return text
    if not any(f.key is not None and looks_secret(f.key) for f in fields):
        return text
    return join_fields(
        Field(f.key, "***") if f.key is not None and looks_secret(f.key) else f for f in fields
    )

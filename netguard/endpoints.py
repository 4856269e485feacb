# -*- test-case-name: tests.test_endpoints -*-
"""
Endpoint strings, in one place: splitting and joining them as Twisted's parser does, checking
listeners and backends by building them with Twisted's own parsers on a memory reactor (never
listening, connecting or reading key files), port names resolved with C{getservbyname}, who
can reach a listener, the default listen backlog, and secrets hidden before a string is shown.
The C{haproxy:} wrapper (C{proxy_from=} and its checks) is L{netguard.proxy_listener}.

The strings the operator writes are in C{docs/operating.md} (sections 4 and 5).
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
    "quote_field",
    "resolve_endpoint_ports",
    "resolve_port",
    "socks5_carry_problem",
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


class EndpointError(ValueError):
    """
    An endpoint string (or one of its fields) cannot be used.

    @ivar message: what is wrong and what is allowed; also the exception's text.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
    prefix: list[Field] = []
    if fields[0].key is None and fields[0].value == "haproxy" and len(fields) > 1:
        prefix, fields = fields[:1], fields[1:]
        if fields[0].key == "proxy_from" and len(fields) > 1:
            prefix, fields = [*prefix, fields[0]], fields[1:]
    kind = fields[0].value if fields[0].key is None else None
    params = _SERVER_PARAMS.get(kind or "", ())
    if "backlog" not in params:
        return description
    positional = [f for f in fields[1:] if f.key is None]
    named = {f.key for f in fields[1:] if f.key is not None}
    if "backlog" in named or len(positional) > params.index("backlog"):
        return description
    return join_fields([*prefix, *fields, Field("backlog", str(backlog))])


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


#: Twisted's built-in server endpoint types, each with its parameters in the order its parser
#: takes positional fields. netguard reads this only to know which field is the port (to
#: resolve its name), where a default backlog goes, and which options to suggest; whether a
#: string is valid is Twisted's to say, by building it.
_SERVER_PARAMS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        kind: tuple(names.split())
        for kind, names in {
            "tcp": "port interface backlog",
            "tcp6": "port backlog interface",
            "ssl": "port privateKey certKey sslmethod interface backlog "
            "extraCertChain dhParameters",
            "tls": "path port backlog interface",
            "unix": "address mode backlog lockfile",
            "systemd": "domain index name",
        }.items()
    }
)

#: The same for client types (C{socks5:} is netguard's own, L{netguard.outbound.socks5}).
_CLIENT_PARAMS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        kind: tuple(names.split())
        for kind, names in {
            "tcp": "host port timeout bindAddress",
            "ssl": "host port timeout bindAddress certKey privateKey caCertsDir hostname",
            "tls": "host port timeout bindAddress certificate privateKey trustRoots endpoint",
            "unix": "path timeout lockfile",
            "socks5": " ".join(sorted(SOCKS5_ENDPOINT_KEYS)),
        }.items()
    }
)


def client_params(kind: str) -> tuple[str, ...]:
    """
    @return: the parameters of a built-in client type in their positional order (empty for
        any other type).
    """
    return _CLIENT_PARAMS.get(kind, ())


#: Client types whose parser takes fewer positional fields than parameters: C{tcp:} and
#: C{ssl:} take host and port, and a positional field skips one already given by name
#: (Twisted's C{_parseClientTCP}); C{unix:} takes the path; C{socks5:} takes none.
_CLIENT_POSITIONAL: Final[Mapping[str, int]] = MappingProxyType(
    {"tcp": 2, "ssl": 2, "unix": 1, "socks5": 0}
)

#: Options that Twisted reads files for (or, for C{endpoint=}, builds a nested endpoint that
#: is checked on its own) while it builds: left out of the build made at check time.
_READ_AT_START: Final = frozenset(
    "privateKey certKey extraCertChain dhParameters caCertsDir certificate trustRoots".split()
    + ["endpoint"]
)

#: The integer options and their ranges (Twisted takes any integer; these refuse the ones
#: that cannot work, such as a backlog or timeout of 0).
_INTEGER_RANGES: Final[Mapping[str, tuple[int, int]]] = MappingProxyType(
    {"backlog": (1, 65535), "timeout": (1, 3600), "index": (0, 1023)}
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


def _name_fields(
    what: str, fields: Sequence[Field], params: tuple[str, ...], positional: int, skip_named: bool
) -> dict[str, int]:
    """
    Name the fields after the type prefix: named fields by their key, positional ones by the
    parameter Twisted's parser gives them. Refuses only what Twisted would take silently or
    explain with a bare C{TypeError}; unknown and missing options are Twisted's to find.

    @param what: names the endpoint in messages, e.g. C{"a tcp: listener"}.
    @param positional: how many of C{params} positional fields may fill.
    @param skip_named: positional fields skip parameters already given by name.
    @return: option name to index in C{fields}.
    @raise EndpointError: on an option given twice or too many positional fields.
    """
    named: dict[str, int] = {}
    places: list[int] = []
    for index, field in enumerate(fields[1:], start=1):
        if field.key is None:
            places.append(index)
        elif field.key in named:
            raise EndpointError(f"option {truncate(field.key, 40)!r} is given twice")
        else:
            named[field.key] = index
    slots = [p for p in params[:positional] if not (skip_named and p in named)]
    if len(places) > len(slots):
        raise EndpointError(
            f"has {len(places)} positional fields, but {what} takes at most "
            f"{len(slots)} ({', '.join(slots) or 'none'}); name the others (key=value), "
            "and escape colons inside values (IPv6 addresses, paths) as \\:"
        )
    for name, index in zip(slots, places, strict=False):
        if name in named:
            raise EndpointError(
                f"{name!r} is given twice (by position and by name); escape colons inside "
                "values (IPv6 addresses, paths) as \\:"
            )
        named[name] = index
    return named


def _unknown_option(name: str, what: str, params: tuple[str, ...]) -> EndpointError:
    return EndpointError(
        f"unknown option {toml_string(truncate(name, 40))} for {what}; "
        f"allowed: {', '.join(params)}"
    )


def _check_ip(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise EndpointError(
            f"{toml_string(truncate(text, 60))} is not an IP address "
            "(write 127.0.0.1, ::1, 0.0.0.0 or :: and escape colons as \\:)"
        ) from None
    return text


def _check_nonempty(text: str, what: str) -> str:
    if not text or "\x00" in text:
        raise EndpointError(f"{what} must not be empty")
    return text


def _check_host(text: str) -> str:
    if not text or len(text) > 253 or any(ord(c) <= 0x20 or c in "\x7f/" for c in text):
        raise EndpointError(f"{toml_string(truncate(text, 60))} is not a host name or address")
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


def _checked_value(what: str, name: str, text: str, *, server: bool) -> str:
    """
    Check one option where Twisted would take a value that cannot work, or refuse it with a
    message that does not name the option; return its normalized text (ports become numbers).
    """
    if name == "port":
        return _checked_port(text, allow_zero=server)
    if name in ("interface", "bindAddress"):
        return _check_ip(text)
    if name in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[name]
        if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
            raise EndpointError(f"{name} must be an integer from {low} to {high}, got {text!r}")
        return text
    if name == "lockfile" and text not in ("0", "1"):
        raise EndpointError(f"lockfile must be 0 or 1, got {toml_string(truncate(text, 20))}")
    if name == "mode":
        return _check_mode(text)
    if name == "address" or (name == "path" and not server):
        return _check_unix_path(text)
    if name in ("host", "hostname"):
        return _check_host(text)
    if name == "sslmethod":
        return _check_sslmethod(text)
    if name == "domain":
        return _check_domain(text)
    if name == "endpoint":
        return check_backend(text, nested=True).description
    return _check_nonempty(text, f"{name} of {what}")


def _checked_fields(
    what: str, kind: str, fields: list[Field], *, server: bool
) -> tuple[dict[str, int], tuple[str, ...]]:
    """
    Name the fields of a built-in type and check (in place, normalizing ports) the values of
    the options it knows.

    @return: option name to index in C{fields}, and the type's parameters.
    """
    if server:
        params = _SERVER_PARAMS[kind]
        named = _name_fields(what, fields, params, len(params), False)
    else:
        params = _CLIENT_PARAMS[kind]
        positional = _CLIENT_POSITIONAL.get(kind, len(params))
        named = _name_fields(what, fields, params, positional, kind in ("tcp", "ssl"))
    fields[0] = Field(None, kind)
    for name, index in named.items():
        if name in params:
            checked = _checked_value(what, name, fields[index].value, server=server)
            fields[index] = Field(fields[index].key, checked)
    return named, params


def _build(description: str, *, server: bool) -> object:
    """
    Build an endpoint with Twisted's own C{serverFromString}/C{clientFromString} on a
    L{MemoryReactor}: building never listens or connects.
    """
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.internet.testing import MemoryReactor

    return (serverFromString if server else clientFromString)(MemoryReactor(), description)


def _built_by_twisted(
    what: str,
    kind: str,
    fields: Sequence[Field],
    named: Mapping[str, int],
    params: tuple[str, ...],
    *,
    server: bool,
) -> object:
    """
    Let Twisted build the checked string and say what it refuses (unknown options, missing
    ones, values it cannot convert). Options it would read files for are left out, so key
    files are read when the gateway starts, not at check time; an C{ssl:} listener is built
    as the C{tcp:} listener it runs on.

    @return: the endpoint Twisted built.
    @raise EndpointError: naming the unknown or missing option, or quoting Twisted.
    """
    description = join_fields(fields)
    if server and kind == "ssl" or _READ_AT_START.intersection(named):
        skip = _READ_AT_START | {"sslmethod"}
        probe = [Field(name, fields[index].value) for name, index in named.items()]
        kept = [f for f in probe if f.key not in skip]
        description = join_fields([Field(None, "tcp" if server else kind), *kept])
    try:
        return _build(description, server=server)
    except Exception as e:  # noqa: BLE001 - Twisted's parsers raise anything; never a traceback
        error = e
    if kind == "systemd" and isinstance(error, IndexError | KeyError):
        return None  # the descriptors systemd passes at start are not there at check time
    text = str(error)
    if unknown := re.search(r"unexpected keyword argument '([^']*)'", text):
        raise _unknown_option(unknown[1], what, params)
    # tls: raises TypeError("unrecognized keyword arguments present", [names]).
    if isinstance(error, TypeError) and len(error.args) == 2 and isinstance(error.args[1], list):
        raise _unknown_option(str(error.args[1][0]), what, params)
    if missing := re.search(r"missing \d+ required positional arguments?: (.*)", text):
        names = sorted(re.findall(r"'(\w+)'", missing[1]))
        raise EndpointError(f"{what} needs {' and '.join(names)}")
    kind_word = "listener" if server else "backend"
    raise EndpointError(f"Twisted cannot build this {kind_word}: {truncate(text, 200)}")


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


def _check_socks5_names(what: str, named: Mapping[str, int], params: tuple[str, ...]) -> None:
    """
    Check the option names of a C{socks5:} backend, which is not built at check time (its
    parser reads the password file).
    """
    for name in named:
        if name not in params:
            raise _unknown_option(name, what, params)
    missing = sorted({"host", "port"} - named.keys())
    if missing:
        raise EndpointError(f"{what} needs {' and '.join(missing)}")


#: The options of an C{ssl:} listener whose files Twisted reads when it starts listening.
_SSL_LISTENER_FILES: Final = ("privateKey", "certKey", "extraCertChain", "dhParameters")


def _check_key_files(fields: Sequence[Field], named: Mapping[str, int]) -> None:
    """
    Check, without reading or blocking, that each file an C{ssl:} listener reads (those it
    names, and Twisted's defaults: C{server.pem}, C{certKey} the key's file) is a regular
    file when it is there (one missing or unreadable is Twisted's to report at start): a
    FIFO would block the start in C{open}, a device would never end.

    @raise EndpointError: naming the option and what the file is.
    """
    from netguard.operator_files import NotRegularFile, open_regular

    paths = {name: fields[named[name]].value for name in _SSL_LISTENER_FILES if name in named}
    paths.setdefault("privateKey", "server.pem")
    paths.setdefault("certKey", paths["privateKey"])
    for option, path in paths.items():
        try:
            fd, _ = open_regular(path)
        except NotRegularFile as error:
            raise EndpointError(
                f"{option}= names {toml_string(truncate(path, 200))}, which is "
                f"{error.kind}, not a regular file"
            ) from None
        except OSError:
            continue
        os.close(fd)


def check_listener(description: object, *, nested: bool = False) -> Listener:
    """
    Check a server endpoint string without listening: netguard's own checks (port names,
    values Twisted would take but cannot work), then Twisted's own parser builds it on a
    L{MemoryReactor}, which never listens, and the endpoint it returns says who can reach
    it. Key files are not read (an C{ssl:} listener's that are there must be regular files,
    checked without reading); C{systemd:} descriptors need not be there yet.

    @raise EndpointError: if it is not a usable listener.
    """
    fields, kind = _endpoint_head(description, "a listener", LISTENER_HELP)
    if kind == "haproxy":
        if nested:
            raise EndpointError("haproxy: cannot wrap another haproxy: listener")
        # Imported here: a haproxy: listener checks the listener it wraps with this function.
        from netguard.proxy_listener import check_proxy_listener

        return check_proxy_listener(fields)
    if kind == "stdio":
        raise EndpointError(f"stdio: is not a network listener; {LISTENER_HELP}")
    if kind not in _SERVER_PARAMS:
        return _check_plugin_listener(str(description), kind)
    what = f"a {kind}: listener"
    named, params = _checked_fields(what, kind, fields, server=True)
    normalized = join_fields(fields)
    if kind == "systemd" and ("index" in named) == ("name" in named):
        raise EndpointError("a systemd: listener needs exactly one of index and name")
    endpoint = _built_by_twisted(what, kind, fields, named, params, server=True)
    if kind == "ssl":
        _check_key_files(fields, named)
    if kind == "systemd":
        return Listener(normalized, "inherited from systemd: its socket unit decides", False)
    from twisted.internet.endpoints import TCP6ServerEndpoint, UNIXServerEndpoint

    if isinstance(endpoint, UNIXServerEndpoint):
        if "mode" in named:
            mode = fields[named["mode"]].value
            return Listener(normalized, f"local unix socket, mode {mode}", False)
        return Listener(
            normalized,
            "local unix socket, mode 666",
            False,
            "a unix listener without mode= is created mode 666 (Twisted's default): every "
            "local user can connect (a login is still required); add mode=600 or mode=660",
        )
    # A tls: listener wraps its TCP endpoint, which it holds as .endpoint.
    tcp = getattr(endpoint, "endpoint", endpoint)
    implicit = "::" if isinstance(tcp, TCP6ServerEndpoint) else ""
    interface = fields[named["interface"]].value if "interface" in named else None
    exposure, network, warning = _ip_exposure(interface, implicit)
    return Listener(normalized, exposure, network, warning)


def _check_plugin_listener(description: str, kind: str) -> Listener:
    """
    Check a listener type we do not know by asking Twisted's plugin mechanism to build it
    with a memory reactor (building an endpoint never listens).
    """
    try:
        _build(description, server=True)
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
    Check a client endpoint string without connecting or reading files: netguard's own
    checks (port names, values Twisted would take but cannot work), then Twisted's own parser
    builds it on a L{MemoryReactor}, which never connects. C{socks5:} strings are checked
    by name only (building one reads its password file).

    @raise EndpointError: if it is not a usable backend.
    """
    fields, kind = _endpoint_head(description, "a backend", BACKEND_HELP)
    if kind == "builtin":
        if nested or [(f.key, f.value) for f in fields[1:]] != [(None, "echo")]:
            raise EndpointError("the only built-in backend is builtin:echo")
        return Backend("builtin:echo", kind)
    if kind not in _CLIENT_PARAMS:
        raise EndpointError(
            f"unknown backend type {toml_string(truncate(kind, 40))}; {BACKEND_HELP}"
        )
    what = f"a {kind}: backend"
    named, params = _checked_fields(what, kind, fields, server=False)
    if kind == "socks5":
        _check_socks5_names(what, named, params)
    else:
        _built_by_twisted(what, kind, fields, named, params, server=False)
    warning = None
    if kind == "ssl" and "hostname" not in named:
        warning = (
            "is an ssl: backend without hostname=, so the backend's certificate is not "
            "verified; add hostname=NAME or use tls:host=NAME:port=PORT"
        )
    return Backend(join_fields(fields), kind, warning)


def resolve_endpoint_ports(description: str, *, server: bool) -> str:
    """
    Resolve the port names of an endpoint string that goes straight to Twisted's parser (the
    client side: C{netguard tunnel --gateway/--listen}, C{netguard:gateway=}), as the
    configuration does for its own strings: C{tcp:host=gw:port=ngp} becomes
    C{tcp:host=gw:port=7700} through C{getservbyname} (seed tip 1). Strings of the types the
    configuration knows (C{tcp}, C{tcp6}, C{ssl}, C{tls}, C{unix}...) are checked as the
    configuration checks them; any other type (a plugin) is returned unchanged for its own
    parser to judge.

    @param description: the endpoint string.
    @param server: whether it is a server (listening) endpoint string.
    @return: the string with every port a number.
    @raise EndpointError: naming what is wrong (an unknown service name, a bad field).
    """
    kind = description.split(":", 1)[0]
    known = _SERVER_PARAMS if server else _CLIENT_PARAMS
    if kind not in known and not (server and kind == "haproxy"):
        return description
    if server:
        return check_listener(description).description
    return check_backend(description).description


def socks5_carry_problem(description: str) -> str | None:
    """
    Why a service's SOCKS5 proxy cannot carry the backend C{description}, or L{None} if it
    can: it carries a C{tcp:} or C{tls:} backend that names its C{host=} and C{port=}, and a
    C{tls:} one only if it names no C{endpoint=} of its own (the proxy's connection is that
    endpoint). The configuration refuses at load what opening would refuse.

    @raise EndpointError: if C{description} cannot be split.
    """
    fields = split_description(description)
    named = {f.key for f in fields if f.key}
    kind = description.split(":", 1)[0].lower()
    if kind not in ("tcp", "tls") or not {"host", "port"} <= named:
        return "socks5 needs a tcp:host=...:port=... or tls:host=...:port=... backend"
    if kind == "tls" and "endpoint" in named:
        return "socks5 cannot carry a tls: backend that names its own endpoint="
    return None

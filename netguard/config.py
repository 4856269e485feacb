# -*- test-case-name: tests.test_config -*-
"""
The netguard configuration: one TOML file plus command-line overrides, validated into one
frozen L{Config}.

Every key is optional and has a safe default; a run with no file at all listens on loopback
(C{tcp:7700:interface=127.0.0.1}) and on a mode-600 unix socket in the state directory, and
offers one service, the built-in C{echo}, to every authenticated user. C{describe_defaults}
prints every key with its default, what it allows and what it defends against (like
C{postconf -d}); C{describe} prints the effective configuration and where each value came from.

Precedence, weakest first: built-in defaults, the file, the command-line overrides. Rules:

  - A file that has a C{[services]} table replaces the default set of services entirely:
    name C{[services.echo]} again to keep the built-in echo, or leave C{[services]} empty to
    offer none.
  - A non-empty C{listen} override (C{--listen}, repeatable) replaces the file's listeners.
    Each C{services} override (C{--service NAME=ENDPOINT}) adds a service open to every
    authenticated user, or replaces the one of that name.
  - The default C{users_file} and the default unix listener live in the final C{state_dir}
    (after overrides).
  - Relative paths in the file are taken from the file's directory, relative paths given as
    overrides from the current directory; a leading C{~} is expanded.
  - A port may be a service name (C{tcp:https:interface=::1}, C{tcp:host=db:port=postgresql});
    it is resolved once, at load time, with C{getservbyname}, and the endpoint strings kept in
    the L{Config} carry the number.

Every problem raises L{ConfigError}, which names the file, the dotted key and what is allowed;
no bad file ever produces a traceback. Loading is pure: nothing listens, connects or writes,
and the only file read is the configuration file itself (plus the system's services database
for port names). Key and certificate files named in endpoint strings are read when the service
starts, not here; the state directory is created by the service, not here.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, TypeVar

import attrs

from netguard.framing import DEFAULT_MAX_ERRORS, FramingLimits
from netguard.outbound.socks5 import ENDPOINT_KEYS as SOCKS5_ENDPOINT_KEYS

__all__ = [
    "resolve_endpoint_ports",
    "COMMAND_LINE_SOURCE",
    "DEFAULTS_SOURCE",
    "DEFAULT_PORT",
    "DEFAULT_SERVER_NAME",
    "ORIGIN_COMMAND_LINE",
    "ORIGIN_DEFAULT",
    "ORIGIN_FILE",
    "ROOT_STATE_DIR",
    "Config",
    "ConfigError",
    "Limits",
    "LogConfig",
    "ServiceConfig",
    "default_listen",
    "default_state_dir",
    "default_users_file",
    "describe",
    "describe_defaults",
    "load_config",
    "resolve_port",
]

#: The server name sent in the greeting unless configured (never the host name, which would
#: tell strangers how the inside of the network is named).
DEFAULT_SERVER_NAME: Final = "netguard"

#: The state directory when running as root.
ROOT_STATE_DIR: Final = "/var/lib/netguard"

#: The TCP port of the default loopback listener.
DEFAULT_PORT: Final = 7700

#: L{Config.source} and L{ConfigError.path} when no file is involved.
DEFAULTS_SOURCE: Final = "<defaults>"

#: L{ConfigError.path} for a bad override given on the command line.
COMMAND_LINE_SOURCE: Final = "<command line>"

#: Values of L{Config.origins}: where an effective value came from.
ORIGIN_DEFAULT: Final = "default"
ORIGIN_FILE: Final = "file"
ORIGIN_COMMAND_LINE: Final = "command line"

#: The largest configuration file read; anything bigger is refused as "not a config file".
MAX_FILE_BYTES: Final = 1024 * 1024
#: The longest endpoint description, path or SOCKS5 string accepted.
MAX_STRING_LENGTH: Final = 4096
#: Bounds on list sizes, so a typo cannot make a huge configuration.
MAX_LISTENERS: Final = 64
MAX_SERVICES: Final = 1024
MAX_NAMES_PER_SERVICE: Final = 1024

_T = TypeVar("_T")

_SERVER_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SERVICE_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The same rule as netguard.auth.users for user and group names.
_PRINCIPAL_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_PORT_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_SECRET_KEY_RE: Final = re.compile(r"pass|secret|token|credential|apikey", re.IGNORECASE)
_URL_USERINFO_RE: Final = re.compile(r"(//[^/@:\s]*:)[^/@\s]*@")
_TOML_POSITION_RE: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END_RE: Final = re.compile(r"\s*\(at end of document\)\s*$")


class ConfigError(Exception):
    """
    The configuration cannot be used.

    @ivar path: the configuration file, or L{COMMAND_LINE_SOURCE} / L{DEFAULTS_SOURCE}.
    @ivar key: the dotted key at fault (C{"limits.max_line_length"}), a position such as
        C{"line 3"} for a syntax error, or L{None} when the whole file is at fault.
    @ivar message: what is wrong and what is allowed.
    """

    def __init__(self, path: str, key: str | None, message: str) -> None:
        """
        @param path: see L{ConfigError.path}.
        @param key: see L{ConfigError.key}.
        @param message: see L{ConfigError.message}.
        """
        super().__init__(path, key, message)
        self.path = path
        self.key = key
        self.message = message

    def __str__(self) -> str:
        """
        @return: C{"<path>: <key>: <message>"}, or C{"<path>: <message>"} without a key.
        """
        if self.key:
            return f"{self.path}: {self.key}: {self.message}"
        return f"{self.path}: {self.message}"


class _Invalid(Exception):
    """
    A value is wrong; the caller knows the file and key and turns this into L{ConfigError}.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------------------------
# Result values


_FRAMING: Final = FramingLimits()


@attrs.frozen(kw_only=True)
class Limits:
    """
    The bounds every connection lives within. Times are in seconds.

    @ivar max_line_length: longest line in the line phase, without its terminator.
    @ivar max_lines_before_auth: lines a client may send before it has authenticated.
    @ivar max_bytes_before_auth: bytes a client may send before it has authenticated.
    @ivar greeting_delay: silence kept before the greeting; a client that talks during it is
        an early talker.
    @ivar handshake_timeout: time from connection to the end of authentication.
    @ivar idle_timeout: longest silence from the client in the line phase.
    @ivar write_timeout: longest time a client may leave our queued output unread.
    @ivar max_auth_attempts: failed authentications allowed on one connection.
    @ivar max_lines_after_auth: lines a client may send after authenticating, before C{OPEN}.
    @ivar max_bytes_after_auth: bytes of lines a client may send after authenticating,
        before C{OPEN}.
    @ivar max_errors: error replies (that keep the connection) one connection may earn; the
        next one closes it.
    @ivar open_timeout: time from authentication to C{OPEN}.
    """

    # The framing's own defaults are the configuration's: one source of truth.
    max_line_length: int = _FRAMING.max_line_length
    max_lines_before_auth: int = _FRAMING.max_lines_before_auth
    max_bytes_before_auth: int = _FRAMING.max_bytes_before_auth
    greeting_delay: float = _FRAMING.greeting_delay
    handshake_timeout: float = _FRAMING.handshake_timeout
    idle_timeout: float = _FRAMING.idle_timeout
    write_timeout: float = _FRAMING.write_timeout
    max_auth_attempts: int = 3
    # The framing leaves the line phase after the handshake unbounded (a protocol of its own
    # may live there); the gateway's ends at OPEN, so it is bounded here.
    max_lines_after_auth: int = 32
    max_bytes_after_auth: int = 8192
    max_errors: int = DEFAULT_MAX_ERRORS
    open_timeout: float = 30.0


@attrs.frozen(kw_only=True)
class LogConfig:
    """
    Where and how the log is written.

    @ivar format: C{"text"} (one escaped line per event) or C{"json"} (one JSON object per
        event).
    @ivar file: C{"-"} for standard output, or an absolute path.
    """

    format: str = "text"
    file: str = "-"


@attrs.frozen(kw_only=True)
class OpsConfig:
    """
    How the daemon behaves for its operator.

    @ivar heartbeat: log a heartbeat (cumulative figures) from the start; SIGUSR1 and
        C{netguard ctl heartbeat on|off} switch it at run time either way.
    @ivar heartbeat_interval: seconds between two heartbeats.
    @ivar shutdown_grace: on SIGTERM, seconds open relays get to finish before they are
        closed (line-phase clients are told C{ERR SHUTTING_DOWN} at once).
    @ivar control_socket: the AF_UNIX control socket (mode 0600), C{""} for none.
    @ivar metrics_listen: the Prometheus metrics listener, a C{tcp:}/C{tcp6:} server
        endpoint string on a loopback interface (C{"tcp:9108:interface=127.0.0.1"}), or
        C{""} for none (the default).
    """

    heartbeat: bool = False
    heartbeat_interval: float = 60.0
    shutdown_grace: float = 30.0
    control_socket: str = ""
    metrics_listen: str = ""


@attrs.frozen(kw_only=True)
class PeerChecksConfig:
    """
    Forward-confirmed reverse DNS and ident checks of every TCP peer (seed tips 4 and 10);
    see C{docs/peer-checks.md}. Both are off by default.

    @ivar fcrdns: C{"off"}, C{"log"} or C{"require"}.
    @ivar fcrdns_deny: patterns over the confirmed name that refuse a peer.
    @ivar fcrdns_allow: patterns over the confirmed name; when set, only matching peers may
        authenticate.
    @ivar ident: C{"off"} or C{"log"} (the claim is logged, never trusted).
    @ivar fcrdns_timeout: bound on one FCrDNS check, seconds.
    @ivar fcrdns_max_names: PTR names looked up forward, at most.
    @ivar ident_max_reply: bound on the ident reply line, bytes.
    @ivar ident_port: the port of the peer's identd (113).
    @ivar ident_timeout: bound on one ident query, seconds.
    @ivar dns_servers: C{"ip"} or C{"ip:port"} / C{"[ipv6]:port"} resolvers; empty uses
        C{/etc/resolv.conf}.
    """

    fcrdns: str = "off"
    fcrdns_deny: tuple[str, ...] = ()
    fcrdns_allow: tuple[str, ...] = ()
    ident: str = "off"
    fcrdns_timeout: float = 5.0
    fcrdns_max_names: int = 4
    ident_max_reply: int = 1024
    ident_port: int = 113
    ident_timeout: float = 10.0
    dns_servers: tuple[str, ...] = ()

    def policy(self) -> Any:
        """
        The L{netguard.peer.checks.PeerCheckPolicy} these settings describe.
        """
        from netguard.peer.checks import PeerCheckPolicy

        servers = []
        for server in self.dns_servers:
            host, port = _split_host_port(server, 53)
            servers.append((host, port))
        return PeerCheckPolicy(
            fcrdns=self.fcrdns,  # type: ignore[arg-type]
            fcrdns_deny=self.fcrdns_deny,
            fcrdns_allow=self.fcrdns_allow,
            ident=self.ident,  # type: ignore[arg-type]
            fcrdns_timeout=self.fcrdns_timeout,
            fcrdns_max_names=self.fcrdns_max_names,
            ident_max_reply=self.ident_max_reply,
            ident_port=self.ident_port,
            ident_timeout=self.ident_timeout,
            dns_servers=tuple(servers),
        )


def _split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """
    Split C{ip}, C{ip:port} or C{[ipv6]:port}; the IP is checked, the port is 1..65535.

    @raise ValueError: if it is not one of those forms.
    """
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    ipaddress.ip_address(host)
    port = int(port_text) if port_text else default_port
    if not 1 <= port <= 65535:
        raise ValueError(text)
    return host, port


@attrs.frozen(kw_only=True)
class OverloadConfig:
    """
    Load shedding (seed tip 5): while one of these is exceeded, new connections are refused
    cheaply with C{ERR BUSY overload-*}. L{None} turns a signal off.

    @ivar max_load: one-minute load average (like xinetd's C{max_load}); off by default
        because it depends on the machine (twice the CPU count is a sensible start).
    @ivar max_lag: event-loop lag in seconds: how late a timer fires.
    @ivar max_rss_mb: resident memory of the process, in MiB.
    @ivar interval: seconds between two measurements.
    """

    max_load: float | None = None
    max_lag: float | None = 0.5
    max_rss_mb: float | None = None
    interval: float = 1.0


def _admission_policy_class() -> Any:
    from netguard.admission import AdmissionPolicy

    return AdmissionPolicy


@attrs.frozen(kw_only=True)
class TLSListenConfig:
    """
    One TLS listener (C{[[tls_listen]]}): TLS from the first byte on a plain server endpoint,
    with netguard's hardened settings (see C{docs/tls.md}).

    @ivar endpoint: the server endpoint string underneath (C{tcp:...}, C{unix:...}, ...).
    @ivar cert_file: the certificate (PEM), optionally followed by its chain.
    @ivar key_file: the private key (PEM), no access for other users.
    @ivar chain_file: intermediate certificates, or C{""}.
    @ivar client_ca_file: CA certificates for client certificates, or C{""}.
    @ivar require_client_cert: refuse clients without a certificate from C{client_ca_file}.
    @ivar min_version: C{"1.2"} or C{"1.3"}.
    """

    endpoint: str
    cert_file: str
    key_file: str
    chain_file: str = ""
    client_ca_file: str = ""
    require_client_cert: bool = False
    min_version: str = "1.2"

    def settings(self) -> Any:
        """
        The L{netguard.tls.ServerTLSSettings} of this listener.
        """
        from netguard.tls import ServerTLSSettings

        return ServerTLSSettings(
            cert_file=self.cert_file,
            key_file=self.key_file,
            chain_file=self.chain_file or None,
            client_ca_file=self.client_ca_file or None,
            require_client_cert=self.require_client_cert,
            min_version=self.min_version,
        )


def _to_tuple(values: Iterable[str]) -> tuple[str, ...]:
    """
    Convert a list of names to a tuple (attrs converter).
    """
    if isinstance(values, str):
        raise TypeError("expected a sequence of names, not one string")
    return tuple(values)


@attrs.frozen
class ServiceConfig:
    """
    One service a client may OPEN.

    @ivar name: the name clients use in C{OPEN <name>}.
    @ivar backend: a Twisted client endpoint string, or C{"builtin:echo"}.
    @ivar users: user names allowed to open it; C{"*"} means every authenticated user.
    @ivar groups: group names (from the users file) whose members may open it.
    @ivar connect_timeout: seconds allowed to connect to the backend.
    @ivar idle_timeout: seconds a relay may stay silent in both directions before it is closed.
    @ivar socks5: a SOCKS5 proxy endpoint description used to reach the backend, or L{None}.
    @ivar fcrdns: this service's own FCrDNS mode (C{"require"} makes C{OPEN} of it wait for a
        forward-confirmed name, with the C{[peer_checks]} resolvers, patterns and timeout),
        or L{None} to follow C{[peer_checks]}.
    """

    name: str
    backend: str
    users: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple)
    groups: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple)
    connect_timeout: float = 10.0
    idle_timeout: float = 3600.0
    socks5: str | None = None
    fcrdns: str | None = None

    def allows(self, user: str, groups: tuple[str, ...]) -> bool:
        """
        Whether an authenticated user may open this service.

        @param user: the authenticated user name.
        @param groups: the groups that user belongs to.
        @return: C{True} if C{"*"} or the user is listed in L{users}, or one of C{groups} is
            listed in L{groups}; C{False} otherwise (and always for an empty user name).
        """
        if not user:
            return False
        if "*" in self.users or user in self.users:
            return True
        return any(group in self.groups for group in groups)


def _freeze_services(
    value: Mapping[str, ServiceConfig] | Iterable[tuple[str, ServiceConfig]],
) -> Mapping[str, ServiceConfig]:
    """
    Copy services into a read-only mapping (attrs converter).
    """
    return MappingProxyType(dict(value))


def _freeze_origins(value: Mapping[str, str]) -> Mapping[str, str]:
    """
    Copy origins into a read-only mapping (attrs converter).
    """
    return MappingProxyType(dict(value))


#: A service with every optional value at its default (for defaults and documentation).
_SERVICE_DEFAULTS: Final = ServiceConfig("NAME", "builtin:echo")


def _default_services() -> Mapping[str, ServiceConfig]:
    """
    The services of a configuration that declares none: the built-in echo, for everyone.
    """
    return MappingProxyType({"echo": ServiceConfig("echo", "builtin:echo", ("*",))})


@attrs.frozen(kw_only=True)
class Config:
    """
    The whole, validated configuration. Build it with L{load_config}.

    @ivar server_name: the name sent in the greeting.
    @ivar state_dir: the directory for the users file, the unix socket and the lock.
    @ivar users_file: the SCRAM verifier store.
    @ivar listen: server endpoint strings, ports as numbers.
    @ivar tls_listen: TLS listeners (L{TLSListenConfig}).
    @ivar limits: the per-connection bounds.
    @ivar log: the log settings.
    @ivar ops: the daemon's operational settings (heartbeat, shutdown, control socket).
    @ivar peer_checks: FCrDNS and ident checks of peers.
    @ivar admission: the L{netguard.admission.AdmissionPolicy} (limits, rates, penalties).
    @ivar overload: load-shedding thresholds (L{OverloadConfig}).
    @ivar services: service name to L{ServiceConfig}, read-only.
    @ivar warnings: things that work but that an operator should look at.
    @ivar source: the configuration file, or L{DEFAULTS_SOURCE}.
    @ivar origins: dotted key to L{ORIGIN_DEFAULT}, L{ORIGIN_FILE} or L{ORIGIN_COMMAND_LINE}.
    """

    server_name: str = DEFAULT_SERVER_NAME
    state_dir: str
    users_file: str
    listen: tuple[str, ...] = attrs.field(converter=_to_tuple)
    tls_listen: tuple[TLSListenConfig, ...] = ()
    limits: Limits = attrs.field(factory=Limits)
    log: LogConfig = attrs.field(factory=LogConfig)
    ops: OpsConfig = attrs.field(factory=OpsConfig)
    peer_checks: PeerChecksConfig = attrs.field(factory=PeerChecksConfig)
    admission: Any = attrs.field(factory=lambda: _admission_policy_class()())
    overload: OverloadConfig = attrs.field(factory=lambda: OverloadConfig())
    services: Mapping[str, ServiceConfig] = attrs.field(
        factory=_default_services, converter=_freeze_services
    )
    warnings: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple)
    source: str = DEFAULTS_SOURCE
    origins: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze_origins)


# ---------------------------------------------------------------------------------------------
# The schema: ranges and the reason each bound exists


@attrs.frozen
class _Range:
    """
    An allowed numeric range.
    """

    kind: type
    low: float
    high: float
    unit: str = ""

    def allowed(self) -> str:
        """
        @return: the range in words, e.g. C{"an integer from 64 to 65536"}.
        """
        if self.kind is int:
            return f"an integer from {_num(self.low)} to {_num(self.high)}"
        return f"a number of {self.unit or 'units'} from {_num(self.low)} to {_num(self.high)}"

    def check(self, value: object) -> int | float:
        """
        @return: C{value} if it is in range (floats always as C{float}).
        @raise _Invalid: otherwise.
        """
        problem = f"must be {self.allowed()}, got {_describe_value(value)}"
        if isinstance(value, bool):
            raise _Invalid(problem)
        if self.kind is int:
            if not isinstance(value, int) or not self.low <= value <= self.high:
                raise _Invalid(problem)
            return value
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise _Invalid(problem)
        if not self.low <= value <= self.high:
            raise _Invalid(problem)
        return float(value)


@attrs.frozen
class _NumberKey:
    """
    A numeric key, its range and what it defends against.
    """

    name: str
    range: _Range
    defends: str


_LIMIT_KEYS: Final[tuple[_NumberKey, ...]] = (
    _NumberKey(
        "max_line_length",
        _Range(int, 64, 65536, "bytes"),
        "a client sending one endless line to exhaust memory",
    ),
    _NumberKey(
        "max_lines_before_auth",
        _Range(int, 1, 10000),
        "an unauthenticated client keeping a session busy with many small commands",
    ),
    _NumberKey(
        "max_bytes_before_auth",
        _Range(int, 256, 1048576, "bytes"),
        "an unauthenticated client pushing data (a chargen-style flood) at the line parser",
    ),
    _NumberKey(
        "greeting_delay",
        _Range(float, 0, 30, "seconds"),
        "bots that talk before the greeting: early talkers are caught during this pause",
    ),
    _NumberKey(
        "handshake_timeout",
        _Range(float, 1, 3600, "seconds"),
        "a client that connects and never finishes authenticating, holding a slot (slowloris)",
    ),
    _NumberKey(
        "idle_timeout",
        _Range(float, 1, 86400, "seconds"),
        "a client that goes silent in the line phase and holds its connection forever",
    ),
    _NumberKey(
        "write_timeout",
        _Range(float, 1, 3600, "seconds"),
        "a client that stops reading while replies are queued, pinning our memory",
    ),
    _NumberKey(
        "max_auth_attempts",
        _Range(int, 1, 20),
        "online password guessing over one connection",
    ),
    _NumberKey(
        "max_lines_after_auth",
        _Range(int, 1, 10000),
        "an authenticated client flooding the line phase with commands (valid or not) "
        "instead of opening a service",
    ),
    _NumberKey(
        "max_bytes_after_auth",
        _Range(int, 256, 1048576, "bytes"),
        "an authenticated client pushing data at the line parser instead of opening a service",
    ),
    _NumberKey(
        "max_errors",
        _Range(int, 1, 10000),
        "a client (authenticated or not) earning error reply after error reply, each a "
        "reply to write and a log record",
    ),
    _NumberKey(
        "open_timeout",
        _Range(float, 1, 3600, "seconds"),
        "an authenticated client that never opens a service, holding a relay-pool slot",
    ),
)

_SERVICE_NUMBER_KEYS: Final[tuple[_NumberKey, ...]] = (
    _NumberKey(
        "connect_timeout",
        _Range(float, 0.1, 300, "seconds"),
        "a backend that never answers leaving clients hanging",
    ),
    _NumberKey(
        "idle_timeout",
        _Range(float, 1, 604800, "seconds"),
        "relays left open and silent forever, holding sockets and memory",
    ),
)

_TOP_KEYS: Final = (
    "server_name",
    "state_dir",
    "users_file",
    "listen",
    "tls_listen",
    "limits",
    "log",
    "ops",
    "peer_checks",
    "admission",
    "overload",
    "services",
)


@attrs.frozen
class _TableKey:
    """
    A key of a typed table: how its raw value is checked, its default, the allowed values in
    words, and what it defends against (for C{describe_defaults}).
    """

    name: str
    check: Callable[[_Source, str, object], Any]
    allowed: str
    defends: str


def _bool(src: _Source, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise src.error(key, f"must be true or false, got {_describe_value(value)}")
    return value


def _number(range_: _Range) -> Callable[[_Source, str, object], Any]:
    def check(src: _Source, key: str, value: object) -> Any:
        return src.check(key, range_.check, value)

    return check


def _optional_path(src: _Source, key: str, value: object) -> str:
    if value == "":
        return ""
    return _path(src, key, value)


def _choice(*allowed: str) -> Callable[[_Source, str, object], Any]:
    def check(src: _Source, key: str, value: object) -> Any:
        if value not in allowed:
            words = ", ".join(_toml_string(a) for a in allowed)
            raise src.error(key, f"must be one of {words}, got {_describe_value(value)}")
        return value

    return check


def _string_list(what: str, item: Callable[[str], object]) -> Callable[..., Any]:
    def check(src: _Source, key: str, value: object) -> Any:
        allowed = f"a list of {what}"
        if not isinstance(value, list) or len(value) > 256:
            raise src.error(key, f"must be {allowed} (at most 256), got {_describe_value(value)}")
        for index, element in enumerate(value):
            problem = f"must be {allowed}; item {index} is {_describe_value(element)}"
            if not isinstance(element, str) or not element or len(element) > 253:
                raise src.error(key, problem)
            try:
                item(element)
            except ValueError:
                raise src.error(key, problem) from None
        return tuple(value)

    return check


def _name_pattern(text: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9*?.\[\]!-]+", text):
        raise ValueError(text)


_PEER_CHECK_KEYS: Final[tuple[_TableKey, ...]] = (
    _TableKey(
        "fcrdns",
        _choice("off", "log", "require"),
        '"off", "log" or "require"',
        "spoofed reverse DNS: a PTR name counts only once its forward lookup gives the "
        "client's address back (seed tip 4)",
    ),
    _TableKey(
        "fcrdns_deny",
        _string_list("host name patterns (fnmatch)", _name_pattern),
        'a list of patterns over the confirmed name, e.g. "*.dialup.example"',
        "known-bad networks by name; only narrows who may try to authenticate",
    ),
    _TableKey(
        "fcrdns_allow",
        _string_list("host name patterns (fnmatch)", _name_pattern),
        "a list of patterns; when set only peers with a matching confirmed name may try",
        "access from anywhere but the expected hosts; only narrows, never grants",
    ),
    _TableKey(
        "ident",
        _choice("off", "log"),
        '"off" or "log"',
        "nothing by itself: an RFC 1413 claim is logged as untrusted (seed tip 10); off by "
        "default because it is the one connection made back toward a client",
    ),
    _TableKey(
        "fcrdns_timeout",
        _number(_Range(float, 0.1, 60, "seconds")),
        "a number of seconds from 0.1 to 60",
        "a DNS server that never answers holding a session (every lookup is bounded)",
    ),
    _TableKey(
        "fcrdns_max_names",
        _number(_Range(int, 1, 16)),
        "an integer from 1 to 16",
        "a PTR answer listing many names, each costing a forward lookup",
    ),
    _TableKey(
        "ident_max_reply",
        _number(_Range(int, 64, 4096, "bytes")),
        "an integer from 64 to 4096 (bytes)",
        "an identd that streams endless bytes (chargen): the reply line is cut here",
    ),
    _TableKey(
        "ident_port",
        _number(_Range(int, 1, 65535)),
        "a port from 1 to 65535 (RFC 1413: 113)",
        "nothing: for test set-ups whose identd does not listen on 113",
    ),
    _TableKey(
        "ident_timeout",
        _number(_Range(float, 0.1, 60, "seconds")),
        "a number of seconds from 0.1 to 60",
        "an identd that stays silent or drips (the reply is also bounded in bytes)",
    ),
    _TableKey(
        "dns_servers",
        _string_list(
            'resolvers "IP", "IP:PORT" or "[IPv6]:PORT"', lambda t: _split_host_port(t, 53)
        ),
        "a list of resolvers; empty uses /etc/resolv.conf",
        "lookups sent to a resolver the operator did not choose",
    ),
)


def _optional_number(range_: _Range) -> Callable[[_Source, str, object], Any]:
    def check(src: _Source, key: str, value: object) -> Any:
        if value is False or value == "off":
            return None
        return src.check(key, range_.check, value)

    return check


_OVERLOAD_KEYS: Final[tuple[_TableKey, ...]] = (
    _TableKey(
        "max_load",
        _optional_number(_Range(float, 0.1, 10000, "load")),
        'a load average from 0.1 to 10000, or "off" (default off)',
        "a machine already overloaded by others: stop taking work (seed tip 5, xinetd max_load)",
    ),
    _TableKey(
        "max_lag",
        _optional_number(_Range(float, 0.01, 60, "seconds")),
        'a number of seconds from 0.01 to 60, or "off"',
        "a saturated event loop: refuse new work before every session slows down",
    ),
    _TableKey(
        "max_rss_mb",
        _optional_number(_Range(float, 16, 1048576, "MiB")),
        'a number of MiB from 16 to 1048576, or "off" (default off)',
        "memory exhaustion of the process under a flood",
    ),
    _TableKey(
        "interval",
        _number(_Range(float, 0.1, 60, "seconds")),
        "a number of seconds from 0.1 to 60",
        "slow reaction to overload (too long) or measurement cost (too short)",
    ),
)


def _admission_docs() -> dict[str, str]:
    """
    What each admission knob defends against, read from the policy's own docstring.
    """
    text = _admission_policy_class().__doc__ or ""
    docs: dict[str, str] = {}
    for match in re.finditer(r"@ivar (\w+): (.*?)(?=\n\s*@ivar |\Z)", text, re.S):
        plain = re.sub(r"[CLI]\{([^{}]*)\}", r"\1", " ".join(match.group(2).split()))
        docs[match.group(1)] = plain
    return docs


def _admission(src: _Source, table: object, origins: dict[str, str]) -> Any:
    """
    Check the C{[admission]} table: every key must be a field of the admission policy, of the
    right type; the policy's own validators check ranges and relations.
    """
    policy_class = _admission_policy_class()
    if not isinstance(table, dict):
        raise src.error("admission", f"must be a table, got {_describe_value(table)}")
    fields = {field.name: field for field in attrs.fields(policy_class)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"admission.{_toml_key(key)}"
        if key not in fields:
            raise src.error(
                dotted, f"unknown key; allowed keys in [admission] are: {', '.join(fields)}"
            )
        default = fields[key].default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory(policy_class()) if default.takes_self else default.factory()
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and math.isfinite(value)
        elif isinstance(default, tuple):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise src.error(
                dotted,
                f"must be like the default {_value_text(_plain(default))}, "
                f"got {_describe_value(value)}",
            )
        values[key] = tuple(value) if isinstance(value, list) else value
        origins[dotted] = ORIGIN_FILE
    try:
        return policy_class(**values)
    except (ValueError, TypeError) as e:
        # attrs validators put the readable message first in their arguments.
        message = str(e.args[0]) if e.args else str(e)
        key = next((k for k in values if k in message), None)
        where = f"admission.{key}" if key else "admission"
        raise src.error(where, message) from None


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _metrics_listen(src: _Source, key: str, value: object) -> str:
    """
    C{ops.metrics_listen}: C{""}, or a listener that L{_check_listener} accepts and that is
    a C{tcp:} or C{tcp6:} listener on a loopback interface (so never all interfaces, never
    a socket whose exposure netguard cannot see: C{systemd:}, C{haproxy:}, plugins).

    @return: the normalized endpoint string, or C{""}.
    """
    if value == "":
        return ""
    listener: _Listener = src.check(key, _check_listener, value)
    kind = listener.description.split(":", 1)[0]
    if kind not in ("tcp", "tcp6") or listener.network:
        raise src.error(
            key,
            "the metrics listener must be loopback only: a tcp: or tcp6: listener with "
            "interface=127.0.0.1 (or another 127.x address) or interface=\\:\\:1, e.g. "
            f'"tcp:9108:interface=127.0.0.1"; got {_describe_value(value)} ({listener.exposure})',
        )
    return listener.description


_OPS_KEYS: Final[tuple[_TableKey, ...]] = (
    _TableKey(
        "heartbeat",
        _bool,
        "true or false",
        "a daemon that hangs silently: each beat proves the event loop runs (seed tip 16)",
    ),
    _TableKey(
        "heartbeat_interval",
        _number(_Range(float, 1, 86400, "seconds")),
        "a number of seconds from 1 to 86400",
        "log floods from a too-frequent heartbeat",
    ),
    _TableKey(
        "shutdown_grace",
        _number(_Range(float, 0, 3600, "seconds")),
        "a number of seconds from 0 to 3600",
        "a stop that cuts transfers (too short) or never finishes (bounded)",
    ),
    _TableKey(
        "control_socket",
        _optional_path,
        '"" (none) or a path; default <state_dir>/control.sock',
        "remote administration: the only admin interface is this mode-0600 local socket",
    ),
    _TableKey(
        "metrics_listen",
        _metrics_listen,
        '"" (off) or a tcp:/tcp6: listener on a loopback interface, e.g. '
        '"tcp:9108:interface=127.0.0.1"',
        "traffic figures leaking to the network: off by default, loopback only (never all "
        "interfaces), read-only GET /metrics",
    ),
)
_LOG_KEYS: Final = ("format", "file")
_LOG_FORMATS: Final = ("text", "json")
_SERVICE_KEYS: Final = (
    "backend",
    "users",
    "groups",
    "connect_timeout",
    "idle_timeout",
    "socks5",
    "fcrdns",
)
_OVERRIDE_KEYS: Final = (
    "listen",
    "services",
    "users_file",
    "state_dir",
    "server_name",
    "log_format",
    "log_file",
)


# ---------------------------------------------------------------------------------------------
# Small renderers


def _num(value: float) -> str:
    """
    Render a bound without a useless C{.0}.
    """
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _toml_string(text: str) -> str:
    """
    Render text as a TOML basic string made only of printable ASCII.
    """
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _truncate(text: str, limit: int = 80) -> str:
    """
    Cut text shown in an error message.
    """
    return text if len(text) <= limit else text[:limit] + "..."


def _describe_value(value: object) -> str:
    """
    Name a TOML value's type, and show it if it is short, for an error message.
    """
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {_toml_string(_truncate(value))}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}"


def _toml_key(name: str) -> str:
    """
    Render one component of a dotted key, quoting it if TOML needs quotes.
    """
    return name if _BARE_KEY_RE.fullmatch(name) else _toml_string(name)


def _service_key(name: str, key: str | None = None) -> str:
    """
    The dotted key C{services.<name>[.<key>]}.
    """
    base = f"services.{_toml_key(name)}"
    return base if key is None else f"{base}.{key}"


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
            f"{_toml_string(_truncate(text, 40))} is neither a port number nor a service name"
        )
    try:
        port = lookup(text, "tcp")
    except OSError:
        raise ValueError(
            f"unknown service name {_toml_string(text)}: not in the services database "
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
        raise _Invalid(str(e)) from None
    if port == 0 and not allow_zero:
        raise _Invalid("port 0 cannot be connected to; give a port from 1 to 65535")
    return str(port)


# ---------------------------------------------------------------------------------------------
# Endpoint description strings


@attrs.frozen
class _Field:
    """
    One colon-separated field of an endpoint description: C{value} or C{key=value}.
    """

    key: str | None
    value: str


def _split_description(description: str) -> list[_Field]:
    """
    Split an endpoint description the way Twisted's C{endpoints._parse} does (a backslash
    escapes the next character, C{:} separates fields, the first unescaped C{=} of a field
    separates key and value), but keep the fields in order so the string can be rebuilt.

    @raise _Invalid: on a trailing lone backslash or an empty option name.
    """
    fields: list[_Field] = []
    key: str | None = None
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise _Invalid("ends with a lone backslash (write \\\\ for a backslash)")
            current.append(escaped)
        elif char == ":":
            fields.append(_Field(key, "".join(current)))
            key, current = None, []
        elif char == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(char)
    fields.append(_Field(key, "".join(current)))
    for field in fields:
        if field.key == "":
            raise _Invalid('has an option with an empty name ("=value")')
    return fields


def split_description(description: str) -> list[_Field]:
    """
    Split an endpoint description into its fields as Twisted's parser does (see
    L{_split_description}), for code outside the configuration (start-up probes).

    @raise ValueError: on a trailing lone backslash or an empty option name.
    """
    try:
        return _split_description(description)
    except _Invalid as e:
        raise ValueError(e.message) from None


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

    @raise ValueError: as L{split_description}.
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
    return prefix + _join_fields([*fields, _Field("backlog", str(backlog))])


def _quote(text: str, *, value: bool) -> str:
    """
    Escape text for an endpoint description; C{=} only needs escaping outside values.
    """
    out = text.replace("\\", "\\\\").replace(":", "\\:")
    return out if value else out.replace("=", "\\=")


def _join_fields(fields: Iterable[_Field]) -> str:
    """
    The inverse of L{_split_description}.
    """
    return ":".join(
        _quote(f.value, value=False)
        if f.key is None
        else f"{_quote(f.key, value=False)}={_quote(f.value, value=True)}"
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

_BACKEND_HELP: Final = (
    "use tcp:host=HOST:port=PORT, unix:path=PATH, tls:host=HOST:port=PORT, "
    "ssl:host=HOST:port=PORT:hostname=HOST, "
    "socks5:host=HOST:port=PORT:proxy_host=ADDR[:proxy_port=PORT][:user=U:password_file=F] "
    "or builtin:echo"
)
_LISTENER_HELP: Final = (
    "use tcp:PORT:interface=ADDR, tcp6:PORT:interface=ADDR, ssl:PORT:..., tls:CERTDIR:PORT, "
    "unix:PATH:mode=600, systemd:domain=INET:index=0, haproxy:<listener>, "
    "or a type from an installed endpoint plugin"
)


def _bind(what: str, fields: Sequence[_Field], kind: _EndpointType) -> dict[str, int]:
    """
    Bind the fields after the type prefix to parameter names.

    @param what: names the endpoint in messages, e.g. C{"a tcp: listener"}.
    @param fields: all fields, the type prefix first.
    @return: parameter name to index in C{fields}.
    @raise _Invalid: on an unknown option, a parameter given twice, too many positional
        fields, or a missing required parameter.
    """
    bound: dict[str, int] = {}
    positional: list[int] = []
    for index, field in enumerate(fields[1:], start=1):
        if field.key is None:
            positional.append(index)
            continue
        if field.key not in kind.params:
            raise _Invalid(
                f"unknown option {_toml_string(_truncate(field.key, 40))} for {what}; "
                f"allowed: {', '.join(kind.params)}"
            )
        if field.key in bound:
            raise _Invalid(f"option {field.key!r} is given twice")
        bound[field.key] = index
    slots = [p for p in kind.positional if not (kind.skip_named and p in bound)]
    if len(positional) > len(slots):
        raise _Invalid(
            f"has {len(positional)} positional fields, but {what} takes at most "
            f"{len(slots)} ({', '.join(slots) or 'none'}); name the others (key=value), "
            "and escape colons inside values (IPv6 addresses, paths) as \\:"
        )
    for name, index in zip(slots, positional, strict=False):
        if name in bound:
            raise _Invalid(
                f"{name!r} is given twice (by position and by name); escape colons inside "
                "values (IPv6 addresses, paths) as \\:"
            )
        bound[name] = index
    missing = sorted(kind.required - bound.keys())
    if missing:
        raise _Invalid(f"{what} needs {' and '.join(missing)}")
    return bound


def _check_ip(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise _Invalid(
            f"{_toml_string(_truncate(text, 60))} is not an IP address "
            "(write 127.0.0.1, ::1, 0.0.0.0 or :: and escape colons as \\:)"
        ) from None
    return text


def _check_decimal(text: str, low: int, high: int, what: str) -> str:
    if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
        raise _Invalid(f"{what} must be an integer from {low} to {high}, got {text!r}")
    return text


def _check_nonempty(text: str, what: str) -> str:
    if not text or "\x00" in text:
        raise _Invalid(f"{what} must not be empty")
    return text


def _check_host(text: str) -> str:
    if not text or len(text) > 253 or any(ord(c) <= 0x20 or c in "\x7f/" for c in text):
        raise _Invalid(f"{_toml_string(_truncate(text, 60))} is not a host name or address")
    return text


def _check_flag(text: str) -> str:
    if text not in ("0", "1"):
        raise _Invalid(f"lockfile must be 0 or 1, got {_toml_string(_truncate(text, 20))}")
    return text


def _check_mode(text: str) -> str:
    if not (text and len(text) <= 4 and all(c in "01234567" for c in text)):
        raise _Invalid(f"mode must be octal digits such as 600, got {text!r}")
    if int(text, 8) > 0o777:
        raise _Invalid(f"mode {text} has bits beyond 777")
    return text


def _check_unix_path(text: str) -> str:
    _check_nonempty(text, "a unix socket path")
    if len(os.fsencode(text)) > 107:
        raise _Invalid(
            f"unix socket path is {len(os.fsencode(text))} bytes; the limit is 107, "
            "so choose a shorter path or state_dir"
        )
    return text


def _check_sslmethod(text: str) -> str:
    from OpenSSL import SSL

    if not (text.endswith("_METHOD") and text.isidentifier() and hasattr(SSL, text)):
        raise _Invalid(f"sslmethod {_toml_string(_truncate(text, 40))} is not an OpenSSL method")
    return text


def _check_domain(text: str) -> str:
    if text not in ("INET", "INET6", "UNIX"):
        raise _Invalid(f"domain must be INET, INET6 or UNIX, got {_toml_string(_truncate(text))}")
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
class _Listener:
    """
    A checked listener.

    @ivar description: the normalized endpoint string (ports as numbers).
    @ivar exposure: who can reach it, in words.
    @ivar network: reachable from beyond this host (marked by L{describe}).
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


def _endpoint_head(description: object, what: str, help_text: str) -> tuple[list[_Field], str]:
    """
    Split an endpoint string into its fields and lower-cased type, with the checks every
    endpoint string gets (a string, not empty, bounded, starting with a type).

    @raise _Invalid: naming C{what} and showing C{help_text}.
    """
    if not isinstance(description, str):
        raise _Invalid(
            f"{what} must be an endpoint string, got {_describe_value(description)}; {help_text}"
        )
    if not description or len(description) > MAX_STRING_LENGTH:
        raise _Invalid(f"{what} must be 1 to {MAX_STRING_LENGTH} characters; {help_text}")
    fields = _split_description(description)
    head = fields[0]
    kind = head.value.lower()
    if head.key is not None or not kind:
        raise _Invalid(f"must start with an endpoint type; {help_text}")
    return fields, kind


def _check_listener(description: object, *, nested: bool = False) -> _Listener:
    """
    Check a server endpoint string without listening.

    Known types (tcp, tcp6, ssl, tls, unix, systemd, haproxy) are checked field by field
    without reading key files or inherited descriptors; other types go through Twisted's
    plugin mechanism with a L{MemoryReactor}, which builds an endpoint but never listens.

    @raise _Invalid: if it is not a usable listener.
    """
    fields, kind = _endpoint_head(description, "a listener", _LISTENER_HELP)
    if kind == "haproxy":
        if nested:
            raise _Invalid("haproxy: cannot wrap another haproxy: listener")
        if len(fields) < 2:
            raise _Invalid("haproxy: needs a listener after it, e.g. haproxy:tcp:7700:...")
        inner = _check_listener(_join_fields(fields[1:]), nested=True)
        return _Listener(
            "haproxy:" + inner.description,
            inner.exposure + "; client addresses come from the PROXY header",
            inner.network,
            inner.warning,
        )
    if kind == "stdio":
        raise _Invalid(f"stdio: is not a network listener; {_LISTENER_HELP}")
    endpoint_type = _SERVER_TYPES.get(kind)
    if endpoint_type is None:
        return _check_plugin_listener(str(description), kind)
    bound = _bind(f"a {kind}: listener", fields, endpoint_type)
    fields[0] = _Field(None, kind)
    values: dict[str, str] = {}
    for name, index in bound.items():
        values[name] = _server_value(kind, name, fields[index].value)
        if values[name] != fields[index].value:
            fields[index] = _Field(fields[index].key, values[name])
    normalized = _join_fields(fields)
    if kind in ("tcp", "tcp6", "unix"):
        _twisted_agrees(normalized, server=True)
    if kind == "unix":
        mode = values.get("mode", "666")
        return _Listener(normalized, f"local unix socket, mode {mode}", False)
    if kind == "systemd":
        if ("index" in values) == ("name" in values):
            raise _Invalid("a systemd: listener needs exactly one of index and name")
        return _Listener(normalized, "inherited from systemd: its socket unit decides", False)
    implicit = "" if kind in ("tcp", "ssl") else "::"
    exposure, network, warning = _ip_exposure(values.get("interface"), implicit)
    return _Listener(normalized, exposure, network, warning)


def _check_plugin_listener(description: str, kind: str) -> _Listener:
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
            raise _Invalid(
                f"unknown listener type {_toml_string(_truncate(kind, 40))}; {_LISTENER_HELP}"
            ) from None
        raise _Invalid(f"Twisted cannot build this listener: {_truncate(text, 200)}") from None
    return _Listener(
        description,
        f"{kind}: plugin listener; netguard cannot tell which interfaces it exposes",
        True,
        f"is a {kind}: plugin listener; netguard cannot tell which interfaces it exposes",
    )


def _twisted_agrees(description: str, *, server: bool) -> None:
    """
    Let Twisted's own parser build the endpoint (with a memory reactor: nothing listens or
    connects), as a second opinion for the types whose parsers read no files.

    @raise _Invalid: if Twisted refuses what our checks accepted.
    """
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.internet.testing import MemoryReactor

    build = serverFromString if server else clientFromString
    try:
        build(MemoryReactor(), description)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise _Invalid(f"Twisted cannot parse it: {_truncate(str(e), 200)}") from None


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
        inner = _check_backend(text, nested=True)
        return inner.description
    return _check_nonempty(text, f"{name} of a {kind}: backend")


@attrs.frozen
class _Backend:
    """
    A checked backend: the normalized endpoint string and an optional warning.
    """

    description: str
    kind: str
    warning: str | None = None


def _check_backend(description: object, *, nested: bool = False) -> _Backend:
    """
    Check a client endpoint string without connecting or reading files.

    @raise _Invalid: if it is not a usable backend.
    """
    fields, kind = _endpoint_head(description, "a backend", _BACKEND_HELP)
    if kind == "builtin":
        if nested or [(f.key, f.value) for f in fields[1:]] != [(None, "echo")]:
            raise _Invalid("the only built-in backend is builtin:echo")
        return _Backend("builtin:echo", kind)
    endpoint_type = _CLIENT_TYPES.get(kind)
    if endpoint_type is None:
        raise _Invalid(
            f"unknown backend type {_toml_string(_truncate(kind, 40))}; {_BACKEND_HELP}"
        )
    bound = _bind(f"a {kind}: backend", fields, endpoint_type)
    fields[0] = _Field(None, kind)
    for name, index in bound.items():
        checked = _client_value(kind, name, fields[index].value)
        if checked != fields[index].value:
            fields[index] = _Field(fields[index].key, checked)
    normalized = _join_fields(fields)
    if kind in ("tcp", "unix"):
        _twisted_agrees(normalized, server=False)
    warning = None
    if kind == "ssl" and "hostname" not in bound:
        warning = (
            "is an ssl: backend without hostname=, so the backend's certificate is not "
            "verified; add hostname=NAME or use tls:host=NAME:port=PORT"
        )
    return _Backend(normalized, kind, warning)


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
    @raise ValueError: naming what is wrong (an unknown service name, a bad field).
    """
    kind = description.split(":", 1)[0]
    known = _SERVER_TYPES if server else _CLIENT_TYPES
    if kind not in known and not (server and kind == "haproxy"):
        return description
    try:
        if server:
            return _check_listener(description).description
        return _check_backend(description).description
    except _Invalid as e:
        raise ValueError(e.message) from None


def _redact_description(description: str) -> str:
    """
    Hide secrets in an endpoint-like string: values of options whose name looks like a
    password or token, and the password part of C{scheme://user:password@host}.
    """
    text = _URL_USERINFO_RE.sub(r"\1***@", description)
    try:
        fields = _split_description(text)
    except _Invalid:
        return text
    if not any(f.key is not None and _SECRET_KEY_RE.search(f.key) for f in fields):
        return text
    return _join_fields(
        _Field(f.key, "***") if f.key is not None and _SECRET_KEY_RE.search(f.key) else f
        for f in fields
    )


# ---------------------------------------------------------------------------------------------
# Defaults that depend on the environment


def default_state_dir(environ: Mapping[str, str] | None = None, euid: int | None = None) -> str:
    """
    The state directory used when none is configured: C{/var/lib/netguard} for root,
    otherwise C{$XDG_STATE_HOME/netguard} (if that is an absolute path) or
    C{~/.local/state/netguard}.

    @param environ: the environment to read (default L{os.environ}).
    @param euid: the effective user id (default L{os.geteuid}).
    @return: an absolute path.
    @raise ConfigError: if a non-root user has no home directory.
    """
    env = os.environ if environ is None else environ
    uid = os.geteuid() if euid is None else euid
    if uid == 0:
        return ROOT_STATE_DIR
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "netguard")
    home = env.get("HOME", "")
    if not home or not os.path.isabs(home):
        import pwd

        try:
            home = pwd.getpwuid(uid).pw_dir
        except KeyError:
            home = ""
    if not home or not os.path.isabs(home):
        raise ConfigError(
            DEFAULTS_SOURCE, "state_dir", "there is no home directory to default to; set it"
        )
    return os.path.join(home, ".local", "state", "netguard")


def default_users_file(
    state_dir: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    euid: int | None = None,
) -> str:
    """
    The users file used when none is configured: C{<state_dir>/users}. Without arguments this
    is what the gateway uses when neither its file nor its options name a users file or a
    state directory.

    @param state_dir: the state directory (default L{default_state_dir}).
    @param environ: passed to L{default_state_dir}.
    @param euid: passed to L{default_state_dir}.
    @return: an absolute path.
    """
    base = state_dir if state_dir is not None else default_state_dir(environ, euid)
    return os.path.join(base, "users")


def default_listen(state_dir: str) -> tuple[str, ...]:
    """
    The listeners used when none are configured: loopback TCP port L{DEFAULT_PORT}, and a
    mode-600 unix socket C{netguard.sock} in C{state_dir} (colons in the path escaped).

    @param state_dir: the state directory.
    @return: two server endpoint strings.
    """
    sock = os.path.join(state_dir, "netguard.sock")
    return (
        f"tcp:{DEFAULT_PORT}:interface=127.0.0.1",
        f"unix:{_quote(sock, value=False)}:mode=600:lockfile=1",
    )


# ---------------------------------------------------------------------------------------------
# Reading the file


def _read_toml(path: str) -> dict[str, Any]:
    """
    Read and parse the configuration file.

    @raise ConfigError: for any problem, naming the file and (for syntax errors) the line.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory, not a configuration file") from None
    except PermissionError:
        raise ConfigError(path, None, "permission denied") from None
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(path, None, f"cannot be read: {reason}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(
            path, None, f"is larger than {MAX_FILE_BYTES} bytes; is this a configuration file?"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            path, f"line {line}", "is not valid UTF-8 (TOML files are UTF-8)"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        position = _TOML_POSITION_RE.search(message)
        if position is not None:
            base = message[: position.start()]
            raise ConfigError(
                path,
                f"line {position.group(1)}",
                f"TOML syntax error: {base} (column {position.group(2)})",
            ) from None
        end = _TOML_END_RE.search(message)
        base = message[: end.start()] if end is not None else message
        raise ConfigError(path, "end of file", f"TOML syntax error: {base}") from None
    except RecursionError:
        raise ConfigError(path, None, "TOML syntax error: values nested too deeply") from None


# ---------------------------------------------------------------------------------------------
# Building a Config


@attrs.frozen
class _Source:
    """
    Where raw values come from: for error messages and relative paths.
    """

    path: str
    origin: str
    base_dir: str

    def error(self, key: str | None, message: str) -> ConfigError:
        """
        @return: a L{ConfigError} for this source.
        """
        return ConfigError(self.path, key, message)

    def check(self, key: str, check: Callable[..., _T], *args: object) -> _T:
        """
        Run C{check(*args)}, turning L{_Invalid} into L{ConfigError} for this source and key.
        """
        try:
            return check(*args)
        except _Invalid as e:
            raise self.error(key, e.message) from None


def _string(src: _Source, key: str, value: object, allowed: str) -> str:
    if not isinstance(value, str):
        raise src.error(key, f"must be {allowed}, got {_describe_value(value)}")
    return value


def _path(src: _Source, key: str, value: object) -> str:
    """
    A filesystem path: absolute, or made so against the source's base directory.
    """
    allowed = "a path (relative paths are taken from the configuration file's directory)"
    text = _string(src, key, value, allowed)
    if not text or "\x00" in text or len(text) > MAX_STRING_LENGTH:
        raise src.error(key, f"must be {allowed}, got {_describe_value(value)}")
    text = os.path.expanduser(text)
    if not os.path.isabs(text):
        text = os.path.join(src.base_dir, text)
    return os.path.normpath(text)


def _server_name(src: _Source, key: str, value: object) -> str:
    allowed = "1 to 64 characters of A-Z a-z 0-9 . _ -"
    text = _string(src, key, value, allowed)
    if not _SERVER_NAME_RE.fullmatch(text):
        raise src.error(key, f"must be {allowed}, got {_describe_value(value)}")
    return text


def _log_format(src: _Source, key: str, value: object) -> str:
    allowed = "one of " + ", ".join(_toml_string(f) for f in _LOG_FORMATS)
    text = _string(src, key, value, allowed)
    if text not in _LOG_FORMATS:
        raise src.error(key, f"must be {allowed}, got {_describe_value(value)}")
    return text


def _log_file(src: _Source, key: str, value: object) -> str:
    if value == "-":
        return "-"
    return _path(src, key, value)


def _names(src: _Source, key: str, value: object, *, allow_star: bool) -> tuple[str, ...]:
    """
    A list of user or group names, duplicates dropped.
    """
    kind = "user" if allow_star else "group"
    star = ', or "*" for every authenticated user' if allow_star else ""
    allowed = (
        f"an array of {kind} names (1 to 64 characters of A-Z a-z 0-9 . _ @ -, starting with "
        f"a letter or digit){star}"
    )
    if not isinstance(value, list):
        raise src.error(key, f"must be {allowed}, got {_describe_value(value)}")
    if len(value) > MAX_NAMES_PER_SERVICE:
        raise src.error(key, f"lists more than {MAX_NAMES_PER_SERVICE} names")
    names: list[str] = []
    for index, item in enumerate(value):
        ok = isinstance(item, str) and (
            (allow_star and item == "*") or _PRINCIPAL_RE.fullmatch(item) is not None
        )
        if not ok:
            raise src.error(f"{key}[{index}]", f"must be {allowed}, got {_describe_value(item)}")
        assert isinstance(item, str)
        if item not in names:
            names.append(item)
    return tuple(names)


def _socks5(src: _Source, key: str, value: object) -> str:
    allowed = (
        "a SOCKS5 proxy endpoint description of 1 to "
        f"{MAX_STRING_LENGTH} printable ASCII characters"
    )
    if not isinstance(value, str):
        raise src.error(key, f"must be {allowed}, got {_describe_value(value)}")
    if not value or len(value) > MAX_STRING_LENGTH or not all(" " <= c <= "~" for c in value):
        # Never echo the value: it may hold a proxy password.
        raise src.error(key, f"must be {allowed}")
    return value


def _service_name(src: _Source, key: str, name: object) -> str:
    if not isinstance(name, str) or not _SERVICE_NAME_RE.fullmatch(name):
        raise src.error(
            key,
            "a service name must be 1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a "
            f"letter or digit; got {_describe_value(name)}",
        )
    return name


@attrs.define
class _Builder:
    """
    Collects origins and warnings while one L{load_config} call runs (never shared).
    """

    origins: dict[str, str] = attrs.field(factory=dict)
    warnings: list[str] = attrs.field(factory=list)

    def service(self, src: _Source, name: str, body: object) -> ServiceConfig:
        """
        Build one service from its table in the file.
        """
        prefix = _service_key(name)
        if not isinstance(body, dict):
            raise src.error(
                prefix,
                f"must be a table ([{prefix}] with backend = ...), got {_describe_value(body)}",
            )
        for key in body:
            if key not in _SERVICE_KEYS:
                raise src.error(
                    _service_key(name, _toml_key(key)),
                    f"unknown key; allowed keys in a service are: {', '.join(_SERVICE_KEYS)}",
                )
        if "backend" not in body:
            raise src.error(
                _service_key(name, "backend"),
                "is missing; every service needs a backend: " + _BACKEND_HELP,
            )
        backend_key = _service_key(name, "backend")
        backend: _Backend = src.check(backend_key, _check_backend, body["backend"])
        users = _names(src, _service_key(name, "users"), body.get("users", []), allow_star=True)
        groups = _names(
            src, _service_key(name, "groups"), body.get("groups", []), allow_star=False
        )
        numbers: dict[str, float] = {}
        for spec in _SERVICE_NUMBER_KEYS:
            if spec.name in body:
                numbers[spec.name] = src.check(
                    _service_key(name, spec.name), spec.range.check, body[spec.name]
                )
        socks5 = None
        if "socks5" in body:
            socks5 = _socks5(src, _service_key(name, "socks5"), body["socks5"])
            if backend.kind not in ("tcp", "tls"):
                raise src.error(
                    _service_key(name, "socks5"),
                    "a SOCKS5 proxy can only reach tcp: or tls: backends",
                )
        fcrdns = None
        if "fcrdns" in body:
            fcrdns = _choice("off", "log", "require")(
                src, _service_key(name, "fcrdns"), body["fcrdns"]
            )
        for key in _SERVICE_KEYS:
            origin = src.origin if key in body else ORIGIN_DEFAULT
            self.origins[_service_key(name, key)] = origin
        if backend.warning:
            self.warnings.append(f"{backend_key}: {backend.warning}")
        return ServiceConfig(
            name,
            backend.description,
            users,
            groups,
            connect_timeout=numbers.get("connect_timeout", _SERVICE_DEFAULTS.connect_timeout),
            idle_timeout=numbers.get("idle_timeout", _SERVICE_DEFAULTS.idle_timeout),
            socks5=socks5,
            fcrdns=fcrdns,
        )

    def forget_service(self, name: str) -> None:
        """
        Drop the origins and warnings of a service that an override replaces.
        """
        for key in _SERVICE_KEYS:
            self.origins.pop(_service_key(name, key), None)
        prefix = _service_key(name) + "."
        self.warnings[:] = [w for w in self.warnings if not w.startswith(prefix)]


def _check_overrides(src: _Source, overrides: Mapping[str, object]) -> dict[str, object]:
    """
    Check override names and drop those not given (L{None}, or an empty C{listen} or
    C{services} list).
    """
    given: dict[str, object] = {}
    for key, value in overrides.items():
        if key not in _OVERRIDE_KEYS:
            raise src.error(str(key), f"unknown override; allowed: {', '.join(_OVERRIDE_KEYS)}")
        if value is None:
            continue
        if key in ("listen", "services"):
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise src.error(key, f"must be a list of strings, got {_describe_value(value)}")
            if not value:
                continue
            value = list(value)
        given[key] = value
    return given


_TLS_LISTEN_KEYS: Final = (
    "endpoint",
    "cert_file",
    "key_file",
    "chain_file",
    "client_ca_file",
    "require_client_cert",
    "min_version",
)


def _tls_listeners(
    src: _Source, values: object, plain: tuple[str, ...], builder: _Builder
) -> tuple[TLSListenConfig, ...]:
    """
    Check the C{[[tls_listen]]} array: each entry a table with an endpoint string that is not
    itself TLS, the certificate and key files (read only when the gateway starts).
    """
    if not isinstance(values, list) or len(values) > MAX_LISTENERS:
        raise src.error(
            "tls_listen",
            f"must be an array of tables ([[tls_listen]]), at most {MAX_LISTENERS}, "
            f"got {_describe_value(values)}",
        )
    result: list[TLSListenConfig] = []
    seen = set(plain)
    for index, body in enumerate(values):
        prefix = f"tls_listen[{index}]"
        if not isinstance(body, dict):
            raise src.error(prefix, f"must be a table, got {_describe_value(body)}")
        for key in body:
            if key not in _TLS_LISTEN_KEYS:
                raise src.error(
                    f"{prefix}.{_toml_key(key)}",
                    f"unknown key; allowed keys are: {', '.join(_TLS_LISTEN_KEYS)}",
                )
        for key in ("endpoint", "cert_file", "key_file"):
            if key not in body:
                raise src.error(f"{prefix}.{key}", "is required")
        listener: _Listener = src.check(f"{prefix}.endpoint", _check_listener, body["endpoint"])
        kind = listener.description.split(":", 1)[0]
        if kind in ("ssl", "tls"):
            raise src.error(
                f"{prefix}.endpoint",
                "is already TLS; give the plain endpoint (tcp:..., unix:...) and netguard "
                "adds its hardened TLS",
            )
        if listener.description in seen:
            raise src.error(f"{prefix}.endpoint", "is listed twice")
        seen.add(listener.description)
        if listener.warning:
            builder.warnings.append(f"{prefix}.endpoint: {listener.warning}")
        files = {
            key: _path(src, f"{prefix}.{key}", body[key]) if body.get(key, "") != "" else ""
            for key in ("cert_file", "key_file", "chain_file", "client_ca_file")
        }
        require = _bool(
            src, f"{prefix}.require_client_cert", body.get("require_client_cert", False)
        )
        if require and not files["client_ca_file"]:
            raise src.error(f"{prefix}.require_client_cert", "needs client_ca_file")
        version = _choice("1.2", "1.3")(
            src, f"{prefix}.min_version", body.get("min_version", "1.2")
        )
        result.append(
            TLSListenConfig(
                endpoint=listener.description,
                require_client_cert=require,
                min_version=version,
                **files,
            )
        )
    return tuple(result)


def _listeners(src: _Source, key: str, values: object, builder: _Builder) -> tuple[str, ...]:
    if not isinstance(values, list):
        raise src.error(
            key, f"must be an array of server endpoint strings, got {_describe_value(values)}"
        )
    if len(values) > MAX_LISTENERS:
        raise src.error(key, f"must list at most {MAX_LISTENERS} endpoints")
    result: list[str] = []
    for index, value in enumerate(values):
        item_key = f"{key}[{index}]"
        listener: _Listener = src.check(item_key, _check_listener, value)
        if listener.description in result:
            raise src.error(item_key, "is listed twice")
        if listener.warning:
            builder.warnings.append(
                f"{item_key} {_toml_string(_redact_description(listener.description))}: "
                f"{listener.warning}"
            )
        result.append(listener.description)
    return tuple(result)


def load_config(
    path: str | None = None,
    overrides: Mapping[str, object] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    euid: int | None = None,
) -> Config:
    """
    Read, merge and validate the configuration.

    @param path: the TOML file, or L{None} for the built-in defaults only.
    @param overrides: values from C{twistd netguard} options, all optional (L{None} means not
        given): C{listen} (list of server endpoint strings; non-empty replaces the file's),
        C{services} (list of C{"NAME=ENDPOINT"}; each adds or replaces a service open to
        every authenticated user), C{users_file}, C{state_dir}, C{server_name},
        C{log_format}, C{log_file}.
    @param environ: the environment for the default state directory (default L{os.environ}).
    @param euid: the effective user id for the default state directory (default
        L{os.geteuid}).
    @return: the validated, frozen configuration.
    @raise ConfigError: naming the file (or L{COMMAND_LINE_SOURCE}), the dotted key and what
        is allowed, for anything wrong.
    """
    cli = _Source(COMMAND_LINE_SOURCE, ORIGIN_COMMAND_LINE, os.getcwd())
    defaults = _Source(DEFAULTS_SOURCE, ORIGIN_DEFAULT, os.getcwd())
    opts = _check_overrides(cli, overrides or {})
    if path is None:
        doc: dict[str, Any] = {}
        src = defaults
    else:
        doc = _read_toml(path)
        src = _Source(path, ORIGIN_FILE, os.path.dirname(os.path.abspath(path)))
    for key in doc:
        if key not in _TOP_KEYS:
            raise src.error(
                _toml_key(key), f"unknown key; allowed top-level keys are: {', '.join(_TOP_KEYS)}"
            )
    builder = _Builder()
    origins = builder.origins

    def choose(
        key: str, opt: str, table: Mapping[str, Any], name: str, check: Callable[..., Any]
    ) -> Any:
        if opt in opts:
            origins[key] = ORIGIN_COMMAND_LINE
            return check(cli, opt, opts[opt])
        if name in table:
            origins[key] = ORIGIN_FILE
            return check(src, key, table[name])
        origins[key] = ORIGIN_DEFAULT
        return None

    server_name = choose("server_name", "server_name", doc, "server_name", _server_name)
    server_name = server_name or DEFAULT_SERVER_NAME
    state_dir = choose("state_dir", "state_dir", doc, "state_dir", _path)
    if state_dir is None:
        state_dir = default_state_dir(environ, euid)
    users_file = choose("users_file", "users_file", doc, "users_file", _path)
    if users_file is None:
        users_file = default_users_file(state_dir)

    if "listen" in opts:
        origins["listen"] = ORIGIN_COMMAND_LINE
        listen = _listeners(cli, "listen", opts["listen"], builder)
    elif "listen" in doc:
        origins["listen"] = ORIGIN_FILE
        listen = _listeners(src, "listen", doc["listen"], builder)
    else:
        # The default listeners derive from state_dir: blame state_dir, where it came from.
        origins["listen"] = ORIGIN_DEFAULT
        where = {ORIGIN_FILE: src, ORIGIN_COMMAND_LINE: cli}.get(origins["state_dir"], defaults)
        try:
            listen = _listeners(defaults, "listen", list(default_listen(state_dir)), builder)
        except ConfigError as e:
            raise where.error(
                "state_dir",
                f"the default listener in it is unusable ({e.message}); choose a shorter "
                "state_dir or set listen",
            ) from None

    if "listen" in opts:
        tls_listen: tuple[TLSListenConfig, ...] = ()  # --listen: only those listeners open
    else:
        tls_listen = _tls_listeners(src, doc.get("tls_listen", []), listen, builder)
    entries = doc.get("tls_listen", []) if "listen" not in opts else []
    for index in range(len(tls_listen)):
        given = entries[index] if isinstance(entries[index], dict) else {}
        for field in attrs.fields(TLSListenConfig):
            origin = ORIGIN_FILE if field.name in given else ORIGIN_DEFAULT
            origins[f"tls_listen[{index}].{field.name}"] = origin
    if not listen and not tls_listen:
        where = cli if "listen" in opts else src
        raise where.error("listen", "no listener: give at least one in listen or [[tls_listen]]")
    limits = _limits(src, doc.get("limits", {}), origins)

    log_table = doc.get("log", {})
    if not isinstance(log_table, dict):
        raise src.error("log", f"must be a table, got {_describe_value(log_table)}")
    for key in log_table:
        if key not in _LOG_KEYS:
            raise src.error(
                f"log.{_toml_key(key)}",
                f"unknown key; allowed keys in [log] are: {', '.join(_LOG_KEYS)}",
            )
    log_format = choose("log.format", "log_format", log_table, "format", _log_format)
    log_file = choose("log.file", "log_file", log_table, "file", _log_file)
    log = LogConfig(format=log_format or "text", file=log_file or "-")

    ops_values = _typed_table(src, "ops", doc.get("ops", {}), _OPS_KEYS, origins)
    ops_values.setdefault("control_socket", os.path.join(state_dir, "control.sock"))
    ops = OpsConfig(**ops_values)
    peer_values = _typed_table(
        src, "peer_checks", doc.get("peer_checks", {}), _PEER_CHECK_KEYS, origins
    )
    peer_checks = PeerChecksConfig(**peer_values)
    admission = _admission(src, doc.get("admission", {}), origins)
    overload = OverloadConfig(
        **_typed_table(src, "overload", doc.get("overload", {}), _OVERLOAD_KEYS, origins)
    )
    if (peer_checks.fcrdns_deny or peer_checks.fcrdns_allow) and peer_checks.fcrdns == "off":
        raise src.error(
            "peer_checks.fcrdns",
            'fcrdns_deny and fcrdns_allow need fcrdns = "log" or "require"',
        )

    services = _services(src, cli, doc, opts, builder)

    for name, service in services.items():
        if not service.users and not service.groups:
            builder.warnings.append(
                f"{_service_key(name)}: lists no users and no groups, so nobody may open it"
            )
    if not services:
        builder.warnings.append("services: none are configured, so clients can open nothing")

    return Config(
        server_name=server_name,
        state_dir=state_dir,
        users_file=users_file,
        listen=listen,
        tls_listen=tls_listen,
        limits=limits,
        log=log,
        ops=ops,
        peer_checks=peer_checks,
        admission=admission,
        overload=overload,
        services=services,
        warnings=tuple(builder.warnings),
        source=DEFAULTS_SOURCE if path is None else path,
        origins=origins,
    )


def _typed_table(
    src: _Source,
    name: str,
    table: object,
    keys: tuple[_TableKey, ...],
    origins: dict[str, str],
) -> dict[str, Any]:
    """
    Check the table C{[name]} against C{keys}: unknown keys and bad values are errors.

    @return: the checked values of the keys present (absent keys keep their defaults).
    """
    if not isinstance(table, dict):
        raise src.error(name, f"must be a table, got {_describe_value(table)}")
    names = [spec.name for spec in keys]
    for key in table:
        if key not in names:
            raise src.error(
                f"{name}.{_toml_key(key)}",
                f"unknown key; allowed keys in [{name}] are: {', '.join(names)}",
            )
    values: dict[str, Any] = {}
    for spec in keys:
        key = f"{name}.{spec.name}"
        if spec.name in table:
            values[spec.name] = spec.check(src, key, table[spec.name])
            origins[key] = ORIGIN_FILE
        else:
            origins[key] = ORIGIN_DEFAULT
    return values


def _limits(src: _Source, table: object, origins: dict[str, str]) -> Limits:
    if not isinstance(table, dict):
        raise src.error("limits", f"must be a table, got {_describe_value(table)}")
    names = [spec.name for spec in _LIMIT_KEYS]
    for key in table:
        if key not in names:
            raise src.error(
                f"limits.{_toml_key(key)}",
                f"unknown key; allowed keys in [limits] are: {', '.join(names)}",
            )
    values: dict[str, Any] = {}
    for spec in _LIMIT_KEYS:
        key = f"limits.{spec.name}"
        if spec.name in table:
            values[spec.name] = src.check(key, spec.range.check, table[spec.name])
            origins[key] = ORIGIN_FILE
        else:
            origins[key] = ORIGIN_DEFAULT
    limits = Limits(**values)
    if limits.greeting_delay >= limits.handshake_timeout:
        raise src.error(
            "limits.greeting_delay",
            f"must be less than limits.handshake_timeout ({_num(limits.handshake_timeout)}), "
            f"or every client times out before it is greeted; got {_num(limits.greeting_delay)}",
        )
    return limits


def _services(
    src: _Source,
    cli: _Source,
    doc: Mapping[str, Any],
    opts: Mapping[str, object],
    builder: _Builder,
) -> dict[str, ServiceConfig]:
    services: dict[str, ServiceConfig] = {}
    if "services" in doc:
        table = doc["services"]
        if not isinstance(table, dict):
            raise src.error(
                "services",
                f"must be a table of [services.NAME] tables, got {_describe_value(table)}",
            )
        if len(table) > MAX_SERVICES:
            raise src.error("services", f"declares more than {MAX_SERVICES} services")
        for name, body in table.items():
            _service_name(src, _service_key(name), name)
            services[name] = builder.service(src, name, body)
    else:
        for name, service in _default_services().items():
            services[name] = service
            for key in _SERVICE_KEYS:
                builder.origins[_service_key(name, key)] = ORIGIN_DEFAULT
    entries = opts.get("services", [])
    assert isinstance(entries, list)
    for index, entry in enumerate(entries):
        item_key = f"services[{index}]"
        if not isinstance(entry, str) or "=" not in entry:
            raise cli.error(
                item_key,
                "must be NAME=ENDPOINT, e.g. redis=tcp:host=127.0.0.1:port=6379; got "
                + _describe_value(entry),
            )
        name, _, endpoint = entry.partition("=")
        _service_name(cli, item_key, name)
        backend_key = _service_key(name, "backend")
        backend: _Backend = cli.check(backend_key, _check_backend, endpoint)
        builder.forget_service(name)
        services[name] = ServiceConfig(name, backend.description, ("*",))
        builder.origins[_service_key(name, "backend")] = ORIGIN_COMMAND_LINE
        builder.origins[_service_key(name, "users")] = ORIGIN_COMMAND_LINE
        for key in _SERVICE_KEYS:
            builder.origins.setdefault(_service_key(name, key), ORIGIN_DEFAULT)
        if backend.warning:
            builder.warnings.append(f"{backend_key}: {backend.warning}")
    if len(services) > MAX_SERVICES:
        raise cli.error("services", f"more than {MAX_SERVICES} services")
    return services


# ---------------------------------------------------------------------------------------------
# Describing


def _value_text(value: object) -> str:
    """
    Render a value TOML-style.
    """
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return _toml_string(str(value))


def _redacted(key: str, value: object) -> object:
    """
    Never print a secret: a key that looks like one is hidden entirely, and endpoint-like
    strings lose option values and URL passwords that look like secrets.
    """
    last = key.rsplit(".", 1)[-1]
    if _SECRET_KEY_RE.search(last):
        return "<redacted>"
    if isinstance(value, str):
        return _redact_description(value)
    return value


def _origin_note(config: Config, key: str) -> str:
    origin = config.origins.get(key, ORIGIN_DEFAULT)
    if origin == ORIGIN_FILE:
        return "set in file"
    return origin


def describe(config: Config) -> str:
    """
    Every effective key, one C{key = value} line each in TOML-like dotted form, with where
    it came from (default, file, command line); listeners are marked with who can reach
    them (C{NETWORK: ...} for anything beyond loopback); warnings last. Nothing that looks
    like a password is ever printed.

    @param config: the configuration.
    @return: the text, ending with a newline.
    """
    lines = [f"# netguard configuration; source: {config.source}"]

    def add(key: str, value: object, note: str = "") -> None:
        shown = _value_text(_redacted(key, value))
        extra = f"; {note}" if note else ""
        lines.append(f"{key} = {shown}  # {_origin_note(config, key)}{extra}")

    add("server_name", config.server_name)
    add("state_dir", config.state_dir)
    users_note = (
        "state_dir/users"
        if config.origins.get("users_file", ORIGIN_DEFAULT) == ORIGIN_DEFAULT
        else ""
    )
    add("users_file", config.users_file, users_note)
    for index, description in enumerate(config.listen):
        try:
            exposure = _check_listener(description).exposure
        except _Invalid as e:
            exposure = f"INVALID: {e.message}"
        shown = _value_text(_redact_description(description))
        lines.append(f"listen[{index}] = {shown}  # {_origin_note(config, 'listen')}; {exposure}")
    for index, tls in enumerate(config.tls_listen):
        for field in attrs.fields(TLSListenConfig):
            add(f"tls_listen[{index}].{field.name}", getattr(tls, field.name))
    for field in attrs.fields(Limits):
        add(f"limits.{field.name}", getattr(config.limits, field.name))
    add("log.format", config.log.format)
    add("log.file", config.log.file, "stdout" if config.log.file == "-" else "")
    for field in attrs.fields(OpsConfig):
        add(f"ops.{field.name}", getattr(config.ops, field.name))
    for field in attrs.fields(type(config.admission)):
        add(f"admission.{field.name}", _plain(getattr(config.admission, field.name)))
    for field in attrs.fields(OverloadConfig):
        value = getattr(config.overload, field.name)
        add(f"overload.{field.name}", "off" if value is None else value)
    for field in attrs.fields(PeerChecksConfig):
        add(
            f"peer_checks.{field.name}",
            list(getattr(config.peer_checks, field.name))
            if isinstance(getattr(config.peer_checks, field.name), tuple)
            else getattr(config.peer_checks, field.name),
        )
    if not config.services:
        lines.append("# services: none")
    for name, service in config.services.items():
        add(_service_key(name, "backend"), service.backend)
        add(_service_key(name, "users"), list(service.users))
        add(_service_key(name, "groups"), list(service.groups))
        add(_service_key(name, "connect_timeout"), service.connect_timeout)
        add(_service_key(name, "idle_timeout"), service.idle_timeout)
        add(_service_key(name, "socks5"), service.socks5)
        add(_service_key(name, "fcrdns"), service.fcrdns)
    for warning in config.warnings:
        lines.append(f"# warning: {warning}")
    return "\n".join(lines) + "\n"


@attrs.frozen
class _KeyDoc:
    key: str
    default: str
    allowed: str
    defends: str


def _tls_listen_docs() -> list[_KeyDoc]:
    """
    The keys of one C{[[tls_listen]]} entry (none by default: no TLS listener).
    """
    return [
        _KeyDoc(
            "tls_listen[].endpoint",
            "none (no TLS listener by default; an entry needs endpoint, cert_file, key_file)",
            "a plain server endpoint string (tcp, tcp6, unix, systemd, haproxy:...), not ssl: "
            "or tls:, not listed elsewhere; at most 64 entries",
            "eavesdropping and relayed logins on a network listener: TLS from the first byte, "
            "TLS 1.2+ with ECDHE and AEAD only, SCRAM-SHA-256-PLUS channel binding",
        ),
        _KeyDoc(
            "tls_listen[].cert_file",
            "required",
            "a PEM file: the certificate, then optional intermediates (at most 1 MiB)",
            "serving an expired, not-yet-valid or mismatched certificate: checked at start "
            "and at reload",
        ),
        _KeyDoc(
            "tls_listen[].key_file",
            "required",
            "a PEM file with an unencrypted RSA (2048+ bits), P-256, P-384, Ed25519 or Ed448 "
            "key that other users cannot read",
            "key theft: a key readable by others stops the start",
        ),
        _KeyDoc(
            "tls_listen[].chain_file",
            '""',
            "a PEM file of intermediate certificates, or empty",
            "clients that cannot build the chain to their trust root",
        ),
        _KeyDoc(
            "tls_listen[].client_ca_file",
            '""',
            "a PEM file of the CAs client certificates must chain to, or empty (no client "
            "certificates asked for)",
            "clients without a certificate from your CA, when combined with require_client_cert",
        ),
        _KeyDoc(
            "tls_listen[].require_client_cert",
            "false",
            "true or false; true needs client_ca_file",
            "anyone without a valid client certificate reaching the line phase at all",
        ),
        _KeyDoc(
            "tls_listen[].min_version",
            '"1.2"',
            '"1.2" or "1.3"',
            "protocol downgrade to TLS 1.0/1.1, which are never accepted",
        ),
    ]


def _key_docs() -> tuple[_KeyDoc, ...]:
    """
    The documentation of every key, in file order.
    """
    limits = Limits()
    docs = [
        _KeyDoc(
            "server_name",
            _toml_string(DEFAULT_SERVER_NAME),
            "1 to 64 characters of A-Z a-z 0-9 . _ -",
            "greeting injection, and leaking the host's real name to strangers",
        ),
        _KeyDoc(
            "state_dir",
            f"{_toml_string(ROOT_STATE_DIR)} (as root; otherwise $XDG_STATE_HOME/netguard "
            "or ~/.local/state/netguard)",
            "a path; relative paths are taken from the configuration file's directory",
            "sockets and secrets scattered in shared or world-writable places",
        ),
        _KeyDoc(
            "users_file",
            '"<state_dir>/users"',
            "a path to a file written by `netguard adduser` (mode 0600)",
            "password theft: it holds salted SCRAM verifiers, never passwords",
        ),
        _KeyDoc(
            "listen",
            _value_text(list(default_listen("<state_dir>"))),
            f"1 to {MAX_LISTENERS} server endpoint strings: tcp, tcp6, ssl, tls, unix, "
            "systemd, haproxy:<listener>, or a plugin's; ports may be service names",
            "accidental exposure: by default only loopback and a mode-600 unix socket; a "
            "listener with no interface (all interfaces) is warned about",
        ),
        *_tls_listen_docs(),
    ]
    for spec in _LIMIT_KEYS:
        docs.append(
            _KeyDoc(
                f"limits.{spec.name}",
                repr(getattr(limits, spec.name)),
                spec.range.allowed(),
                spec.defends,
            )
        )
    ops = OpsConfig()
    for op_key in _OPS_KEYS:
        default = getattr(ops, op_key.name)
        docs.append(
            _KeyDoc(
                f"ops.{op_key.name}",
                '"<state_dir>/control.sock"'
                if op_key.name == "control_socket"
                else _value_text(default),
                op_key.allowed,
                op_key.defends,
            )
        )
    from netguard.admission import allowed_values

    policy = _admission_policy_class()()
    admission_docs = _admission_docs()
    for field in attrs.fields(type(policy)):
        docs.append(
            _KeyDoc(
                f"admission.{field.name}",
                _value_text(_plain(getattr(policy, field.name))),
                allowed_values(field.name),
                admission_docs.get(field.name, ""),
            )
        )
    overload = OverloadConfig()
    for load_key in _OVERLOAD_KEYS:
        value = getattr(overload, load_key.name)
        docs.append(
            _KeyDoc(
                f"overload.{load_key.name}",
                _value_text("off" if value is None else value),
                load_key.allowed,
                load_key.defends,
            )
        )
    checks = PeerChecksConfig()
    for check_key in _PEER_CHECK_KEYS:
        default = getattr(checks, check_key.name)
        docs.append(
            _KeyDoc(
                f"peer_checks.{check_key.name}",
                _value_text(list(default) if isinstance(default, tuple) else default),
                check_key.allowed,
                check_key.defends,
            )
        )
    docs += [
        _KeyDoc(
            "log.format",
            _toml_string("text"),
            "one of " + ", ".join(_toml_string(f) for f in _LOG_FORMATS),
            "forged or ambiguous records: json gives machines one object per event, and "
            "untrusted text is escaped in both formats",
        ),
        _KeyDoc(
            "log.file",
            _toml_string("-"),
            '"-" (standard output) or a path',
            "unaccountable use: every accept, refusal, login and relay is recorded",
        ),
        _KeyDoc(
            "services.<name>.backend",
            '(required; with no [services] table at all: services.echo.backend = "builtin:echo")',
            "a client endpoint string: tcp:host=H:port=P, unix:path=P, tls:host=H:port=P, "
            "ssl:host=H:port=P:hostname=H, or builtin:echo; <name> is 1 to 64 characters of "
            "A-Z a-z 0-9 . _ -",
            "clients choosing where the gateway connects: they can only name a service",
        ),
        _KeyDoc(
            "services.<name>.users",
            '[] (the default echo service: ["*"])',
            'an array of user names, "*" meaning every authenticated user',
            "over-broad access: a service is closed to anyone not listed",
        ),
        _KeyDoc(
            "services.<name>.groups",
            "[]",
            "an array of group names from the users file",
            "over-broad access: a service is closed to groups not listed",
        ),
    ]
    for spec in _SERVICE_NUMBER_KEYS:
        docs.append(
            _KeyDoc(
                f"services.<name>.{spec.name}",
                repr(getattr(_SERVICE_DEFAULTS, spec.name)),
                spec.range.allowed(),
                spec.defends,
            )
        )
    docs.append(
        _KeyDoc(
            "services.<name>.socks5",
            "(none)",
            "a SOCKS5 proxy endpoint description (printable ASCII), for tcp/tls backends",
            "backends reached by paths the operator did not choose: only through this proxy",
        )
    )
    docs.append(
        _KeyDoc(
            "services.<name>.fcrdns",
            "(follows [peer_checks])",
            '"off", "log" or "require"',
            "opening a sensitive service from a host whose reverse DNS is not forward-"
            "confirmed (or outside [peer_checks] name patterns), while other services stay open",
        )
    )
    return tuple(docs)


def describe_defaults() -> str:
    """
    Every key with its default value, what it allows and what it defends against, like
    C{postconf -d}; the text C{netguard check-config --defaults} prints and
    C{docs/operating.md} copies. It does not depend on the environment.

    @return: the text, ending with a newline.
    """
    lines = [
        "# netguard configuration keys: default, allowed values, and what each defends against.",
        "# Every key is optional. A [services] table in the file replaces the default",
        '# services (echo, backend "builtin:echo", users ["*"]) entirely.',
    ]
    for doc in _key_docs():
        lines.append("")
        lines.append(f"{doc.key} = {doc.default}")
        lines.append(f"    # allowed: {doc.allowed}")
        lines.append(f"    # defends against: {doc.defends}")
    return "\n".join(lines) + "\n"

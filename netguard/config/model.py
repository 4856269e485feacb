# -*- test-case-name: tests.test_config -*-
"""
The configuration as values: the frozen L{Config} and the settings it holds, the constants
and bounds they share, and L{ConfigError}. Nothing here reads files or the environment; the
loader builds these (see C{docs/operating.md} for every key).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

import attrs

from netguard.admission import AdmissionPolicy
from netguard.endpoints import MAX_DESCRIPTION_LENGTH
from netguard.framing import FramingLimits
from netguard.gateway.stream_settings import StreamSettings
from netguard.log import LogSettings
from netguard.ops.overload import OverloadSettings
from netguard.peer.checks import PeerCheckPolicy
from netguard.shared.settings import SharedSettings
from netguard.tickets import TicketSettings
from netguard.tls.server import ServerTLSSettings

__all__ = [
    "COMMAND_LINE_SOURCE",
    "DEFAULTS_SOURCE",
    "DEFAULT_MAX_AUTH_ATTEMPTS",
    "DEFAULT_PORT",
    "DEFAULT_SERVER_NAME",
    "GATEWAY_LIMITS",
    "MAX_FILE_BYTES",
    "MAX_LISTENERS",
    "MAX_NAMES_PER_SERVICE",
    "MAX_SERVICES",
    "MAX_STRING_LENGTH",
    "ORIGIN_COMMAND_LINE",
    "ORIGIN_DEFAULT",
    "ORIGIN_FILE",
    "ROOT_STATE_DIR",
    "SERVICE_DEFAULTS",
    "Config",
    "ConfigError",
    "LogConfig",
    "OpsConfig",
    "ServiceConfig",
    "TLSListenConfig",
    "default_services",
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
MAX_STRING_LENGTH: Final = MAX_DESCRIPTION_LENGTH
#: Bounds on list sizes, so a typo cannot make a huge configuration.
MAX_LISTENERS: Final = 64
MAX_SERVICES: Final = 1024
MAX_NAMES_PER_SERVICE: Final = 1024


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


# ---------------------------------------------------------------------------------------------
# Result values


#: The framing bounds of a gateway connection unless configured (C{[limits]}): the framing's
#: own defaults, except that the line phase after login is bounded, since the gateway's ends
#: at C{OPEN} (the framing leaves it unbounded, as a protocol of its own may live there).
GATEWAY_LIMITS: Final = FramingLimits(
    max_lines_after_auth=32, max_bytes_after_auth=8192, open_timeout=30.0
)

#: Failed authentications allowed on one connection unless configured
#: (C{limits.max_auth_attempts}).
DEFAULT_MAX_AUTH_ATTEMPTS: Final = 3


#: The C{[log]} settings are the log module's own value (this name is kept for callers).
LogConfig = LogSettings


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
class TLSListenConfig:
    """
    One TLS listener (C{[[tls_listen]]}): TLS from the first byte on a plain server endpoint,
    with netguard's hardened settings (see C{docs/tls.md}).

    @ivar endpoint: the server endpoint string underneath (C{tcp:...}, C{unix:...}, ...).
    @ivar settings: the listener's certificate, key and client-certificate settings.
    """

    endpoint: str
    settings: ServerTLSSettings


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
    @ivar kernel_relay: relay this service's bytes inside the kernel (C{os.splice} through a
        pipe) when both legs are plain sockets on Linux; every relay bound holds either way.
    @ivar send_proxy: C{"v2"}: the backend first gets a PROXY protocol version 2 header
        naming the client, the user and the session's id
        (L{netguard.outbound.proxy_v2}); C{"off"}: nothing but the client's bytes.
    """

    name: str
    backend: str
    users: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple)
    groups: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple)
    connect_timeout: float = 10.0
    idle_timeout: float = 3600.0
    socks5: str | None = None
    fcrdns: str | None = None
    kernel_relay: bool = True
    send_proxy: str = "off"

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
SERVICE_DEFAULTS: Final = ServiceConfig("NAME", "builtin:echo")


def default_services() -> Mapping[str, ServiceConfig]:
    """
    The services of a configuration that declares none: the built-in echo, for everyone.
    """
    return MappingProxyType({"echo": ServiceConfig("echo", "builtin:echo", ("*",))})


@attrs.frozen(kw_only=True)
class Config:
    """
    The whole, validated configuration. Build it with L{netguard.config.load_config}.

    @ivar server_name: the name sent in the greeting.
    @ivar state_dir: the directory for the users file, the unix socket and the lock.
    @ivar users_file: the SCRAM verifier store.
    @ivar listen: server endpoint strings, ports as numbers.
    @ivar tls_listen: TLS listeners (L{TLSListenConfig}).
    @ivar limits: the framing bounds of every gateway connection (C{[limits]}).
    @ivar max_auth_attempts: failed authentications allowed on one connection
        (C{limits.max_auth_attempts}).
    @ivar log: the log settings.
    @ivar ops: the daemon's operational settings (heartbeat, shutdown, control socket).
    @ivar peer_checks: FCrDNS and ident checks of peers (C{[peer_checks]}).
    @ivar admission: the L{netguard.admission.AdmissionPolicy} (limits, rates, penalties).
    @ivar overload: load-shedding thresholds (C{[overload]}).
    @ivar mux: the bounds of the streams of multiplexed sessions (C{[mux]}).
    @ivar tickets: returning-client tickets (C{[tickets]}).
    @ivar shared: state shared between instances through Redis (C{[shared]}).
    @ivar services: service name to L{ServiceConfig}, read-only.
    @ivar workers: how many gateway processes share the listeners (1: this process serves
        alone; more: it supervises that many workers, L{netguard.workers}).
    @ivar warnings: things that work but that an operator should look at.
    @ivar source: the configuration file, or L{DEFAULTS_SOURCE}.
    @ivar origins: dotted key to L{ORIGIN_DEFAULT}, L{ORIGIN_FILE} or L{ORIGIN_COMMAND_LINE}.
    """

    server_name: str = DEFAULT_SERVER_NAME
    state_dir: str
    users_file: str
    listen: tuple[str, ...] = attrs.field(converter=_to_tuple)
    tls_listen: tuple[TLSListenConfig, ...] = ()
    limits: FramingLimits = GATEWAY_LIMITS
    max_auth_attempts: int = DEFAULT_MAX_AUTH_ATTEMPTS
    log: LogConfig = attrs.field(factory=LogConfig)
    ops: OpsConfig = attrs.field(factory=OpsConfig)
    peer_checks: PeerCheckPolicy = attrs.field(factory=PeerCheckPolicy)
    admission: AdmissionPolicy = attrs.field(factory=AdmissionPolicy)
    overload: OverloadSettings = attrs.field(factory=OverloadSettings)
    mux: StreamSettings = attrs.field(factory=StreamSettings)
    tickets: TicketSettings = attrs.field(factory=TicketSettings)
    shared: SharedSettings = attrs.field(factory=SharedSettings)
    services: Mapping[str, ServiceConfig] = attrs.field(
        factory=default_services, converter=_freeze_services
    )
    workers: int = 1
    warnings: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple)
    source: str = DEFAULTS_SOURCE
    origins: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze_origins)

# -*- test-case-name: tests.test_config -*-
"""
Loading the configuration: the defaults that depend on the environment (state directory,
users file, listeners), reading the TOML file, and merging defaults, file and command-line
overrides into one checked L{Config} with L{load_config}. The rules are in
C{docs/operating.md}.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs

from netguard.admission import AdmissionPolicy
from netguard.config.bind_addresses import first_clash, unix_listener
from netguard.config.model import (
    COMMAND_LINE_SOURCE,
    DEFAULT_MAX_AUTH_ATTEMPTS,
    DEFAULT_PORT,
    DEFAULT_SERVER_NAME,
    DEFAULTS_SOURCE,
    GATEWAY_LIMITS,
    MAX_FILE_BYTES,
    MAX_LISTENERS,
    MAX_SERVICES,
    ORIGIN_COMMAND_LINE,
    ORIGIN_DEFAULT,
    ORIGIN_FILE,
    ROOT_STATE_DIR,
    SERVICE_DEFAULTS,
    Config,
    ConfigError,
    LogConfig,
    OpsConfig,
    ServiceConfig,
    TLSListenConfig,
    default_services,
)
from netguard.config.schema import (
    LIMIT_KEYS,
    LOG_KEYS,
    OVERRIDE_KEYS,
    SEND_PROXY_CHOICES,
    SERVICE_KEYS,
    SERVICE_NUMBER_KEYS,
    TOP_KEYS,
    NumberKey,
    Source,
    TableKey,
    num,
    parse_admission,
    parse_bool,
    parse_choice,
    parse_log_file,
    parse_log_format,
    parse_names,
    parse_path,
    parse_server_name,
    parse_service_name,
    parse_socks5,
    parse_workers,
    service_key,
    toml_key,
)
from netguard.config.shared_schema import SHARED_KEYS
from netguard.config.table_schema import (
    MUX_KEYS,
    OPS_KEYS,
    OVERLOAD_KEYS,
    PEER_CHECK_KEYS,
    TICKET_KEYS,
)
from netguard.config.tls_schema import TLS_ENDPOINT_KEY, TLS_LISTEN_KEYS, TLS_SETTINGS_KEYS
from netguard.endpoints import (
    BACKEND_HELP,
    Backend,
    Listener,
    check_backend,
    check_listener,
    quote_field,
    socks5_carry_problem,
)
from netguard.framing import FramingLimits
from netguard.gateway.stream_settings import StreamSettings
from netguard.operator_files import NotRegularFile, read_regular
from netguard.ops.overload import OverloadSettings
from netguard.peer.checks import PeerCheckPolicy
from netguard.quoting import describe_value, toml_string
from netguard.redaction import redact_description
from netguard.shared.settings import SharedSettings
from netguard.tickets import TicketSettings
from netguard.tls.errors import TLSConfigError
from netguard.tls.server import ServerTLSSettings
from netguard.workers.budget import too_small_caps

__all__ = ["default_listen", "default_state_dir", "default_users_file", "load_config"]

_TOML_POSITION_RE: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END_RE: Final = re.compile(r"\s*\(at end of document\)\s*$")

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
        f"unix:{quote_field(sock, value=False)}:mode=600:lockfile=1",
    )


# ---------------------------------------------------------------------------------------------
# Reading the file


def read_config_bytes(path: str) -> bytes:
    """
    The bytes of the configuration file, at most L{MAX_FILE_BYTES} + 1 of them (one more
    than the loader accepts, so that L{load_config} refuses a larger file).

    @raise ConfigError: when it cannot be read.
    """
    try:
        return read_regular(path, MAX_FILE_BYTES + 1)
    except NotRegularFile as e:
        raise ConfigError(path, None, f"is {e.kind}, not a configuration file") from None
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory, not a configuration file") from None
    except PermissionError:
        raise ConfigError(path, None, "permission denied") from None
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(path, None, f"cannot be read: {reason}") from None


def _read_toml(path: str, data: bytes | None = None) -> dict[str, Any]:
    """
    Read and parse the configuration file (or C{data}, its text as read earlier).

    @raise ConfigError: for any problem, naming the file and (for syntax errors) the line.
    """
    if data is None:
        data = read_config_bytes(path)
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


@attrs.define
class _Builder:
    """
    Collects origins and warnings while one L{load_config} call runs (never shared).
    """

    origins: dict[str, str] = attrs.field(factory=dict)
    warnings: list[str] = attrs.field(factory=list)

    def service(self, src: Source, name: str, body: object) -> ServiceConfig:
        """
        Build one service from its table in the file.
        """
        prefix = service_key(name)
        if not isinstance(body, dict):
            raise src.error(
                prefix,
                f"must be a table ([{prefix}] with backend = ...), got {describe_value(body)}",
            )
        for key in body:
            if key not in SERVICE_KEYS:
                raise src.error(
                    service_key(name, toml_key(key)),
                    f"unknown key; allowed keys in a service are: {', '.join(SERVICE_KEYS)}",
                )
        if "backend" not in body:
            raise src.error(
                service_key(name, "backend"),
                "is missing; every service needs a backend: " + BACKEND_HELP,
            )
        backend_key = service_key(name, "backend")
        backend: Backend = src.check(backend_key, check_backend, body["backend"])
        users = parse_names(
            src, service_key(name, "users"), body.get("users", []), allow_star=True
        )
        groups = parse_names(
            src, service_key(name, "groups"), body.get("groups", []), allow_star=False
        )
        numbers: dict[str, float] = {}
        for spec in SERVICE_NUMBER_KEYS:
            if spec.name in body:
                numbers[spec.name] = src.check(
                    service_key(name, spec.name), spec.range.check, body[spec.name]
                )
        socks5 = None
        if "socks5" in body:
            socks5 = parse_socks5(src, service_key(name, "socks5"), body["socks5"])
            if backend.kind not in ("tcp", "tls"):
                raise src.error(
                    service_key(name, "socks5"),
                    "a SOCKS5 proxy can only reach tcp: or tls: backends",
                )
            problem = socks5_carry_problem(backend.description)
            if problem is not None:
                raise src.error(service_key(name, "socks5"), problem)
        fcrdns = None
        if "fcrdns" in body:
            fcrdns = parse_choice("off", "log", "require")(
                src, service_key(name, "fcrdns"), body["fcrdns"]
            )
        kernel_relay = SERVICE_DEFAULTS.kernel_relay
        if "kernel_relay" in body:
            kernel_relay = parse_bool(src, service_key(name, "kernel_relay"), body["kernel_relay"])
        send_proxy = SERVICE_DEFAULTS.send_proxy
        if "send_proxy" in body:
            send_proxy = parse_choice(*SEND_PROXY_CHOICES)(
                src, service_key(name, "send_proxy"), body["send_proxy"]
            )
            if send_proxy != "off" and backend.kind == "builtin":
                raise src.error(
                    service_key(name, "send_proxy"),
                    "the built-in echo backend has no connection to send a PROXY header on",
                )
        for key in SERVICE_KEYS:
            origin = src.origin if key in body else ORIGIN_DEFAULT
            self.origins[service_key(name, key)] = origin
        if backend.warning:
            self.warnings.append(f"{backend_key}: {backend.warning}")
        return ServiceConfig(
            name,
            backend.description,
            users,
            groups,
            connect_timeout=numbers.get("connect_timeout", SERVICE_DEFAULTS.connect_timeout),
            idle_timeout=numbers.get("idle_timeout", SERVICE_DEFAULTS.idle_timeout),
            socks5=socks5,
            fcrdns=fcrdns,
            kernel_relay=kernel_relay,
            send_proxy=send_proxy,
        )

    def forget_service(self, name: str) -> None:
        """
        Drop the origins and warnings of a service that an override replaces.
        """
        for key in SERVICE_KEYS:
            self.origins.pop(service_key(name, key), None)
        prefix = service_key(name) + "."
        self.warnings[:] = [w for w in self.warnings if not w.startswith(prefix)]


def _check_overrides(src: Source, overrides: Mapping[str, object]) -> dict[str, object]:
    """
    Check override names and drop those not given (L{None}, or an empty C{listen} or
    C{services} list).
    """
    given: dict[str, object] = {}
    for key, value in overrides.items():
        if key not in OVERRIDE_KEYS:
            raise src.error(str(key), f"unknown override; allowed: {', '.join(OVERRIDE_KEYS)}")
        if value is None:
            continue
        if key in ("listen", "services"):
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise src.error(key, f"must be a list of strings, got {describe_value(value)}")
            if not value:
                continue
            value = list(value)
        given[key] = value
    return given


def _tls_listeners(
    src: Source, values: object, plain: tuple[str, ...], builder: _Builder
) -> tuple[TLSListenConfig, ...]:
    """
    Check the C{[[tls_listen]]} array against L{TLS_LISTEN_KEYS}: each entry a table with an
    endpoint string that is not itself TLS and is listed nowhere else, and the
    L{ServerTLSSettings} its other keys give (files are read only when the gateway starts).
    """
    if not isinstance(values, list) or len(values) > MAX_LISTENERS:
        raise src.error(
            "tls_listen",
            f"must be an array of tables ([[tls_listen]]), at most {MAX_LISTENERS}, "
            f"got {describe_value(values)}",
        )
    names = [spec.name for spec in TLS_LISTEN_KEYS]
    result: list[TLSListenConfig] = []
    for index, body in enumerate(values):
        prefix = f"tls_listen[{index}]"
        if not isinstance(body, dict):
            raise src.error(prefix, f"must be a table, got {describe_value(body)}")
        for key in body:
            if key not in names:
                raise src.error(
                    f"{prefix}.{toml_key(key)}",
                    f"unknown key; allowed keys are: {', '.join(names)}",
                )
        for spec in TLS_LISTEN_KEYS:
            if spec.required and spec.name not in body:
                raise src.error(f"{prefix}.{spec.name}", "is required")
        endpoint_key = f"{prefix}.{TLS_ENDPOINT_KEY.name}"
        listener: Listener = TLS_ENDPOINT_KEY.check(src, endpoint_key, body["endpoint"])
        if listener.warning:
            builder.warnings.append(f"{endpoint_key}: {listener.warning}")
        given: dict[str, Any] = {}
        for spec in TLS_SETTINGS_KEYS:
            if spec.name not in body:
                continue
            key = f"{prefix}.{spec.name}"
            given[spec.name] = spec.check(src, key, body[spec.name])
            if spec.needs and given[spec.name] and not given.get(spec.needs):
                raise src.error(key, f"needs {spec.needs}")
        try:
            settings = ServerTLSSettings(**given)
        except TLSConfigError as e:
            raise src.error(f"{prefix}.{e.path}", e.problem) from None
        result.append(TLSListenConfig(endpoint=listener.description, settings=settings))
    return tuple(result)


def _listeners(src: Source, key: str, values: object, builder: _Builder) -> tuple[str, ...]:
    if not isinstance(values, list):
        raise src.error(
            key, f"must be an array of server endpoint strings, got {describe_value(values)}"
        )
    if len(values) > MAX_LISTENERS:
        raise src.error(key, f"must list at most {MAX_LISTENERS} endpoints")
    result: list[str] = []
    for index, value in enumerate(values):
        item_key = f"{key}[{index}]"
        listener: Listener = src.check(item_key, check_listener, value)
        if listener.warning:
            builder.warnings.append(
                f"{item_key} {toml_string(redact_description(listener.description))}: "
                f"{listener.warning}"
            )
        result.append(listener.description)
    return tuple(result)


def _check_distinct_addresses(listeners: Sequence[tuple[Source, str, str]]) -> None:
    """
    Refuse two listeners (of C{listen}, C{[[tls_listen]]}, C{ops.metrics_listen} and the
    control socket) that bind the same address: the later one is blamed, naming the
    earlier, so the start never fails after the fork on an address it took itself.

    @param listeners: C{(source, key, endpoint string)} in the order they are configured.
    @raise ConfigError: naming both keys and the address.
    """
    sources = {key: source for source, key, _ in listeners}
    clash = first_clash((key, text) for _, key, text in listeners)
    if clash is None:
        return
    (earlier_key, earlier), (later_key, _), address = clash
    raise sources[later_key].error(
        later_key,
        f"is listed twice: {address.describe()} is also {earlier_key} "
        f"{toml_string(redact_description(earlier))}",
    )


def load_config(
    path: str | None = None,
    overrides: Mapping[str, object] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    euid: int | None = None,
    text: bytes | None = None,
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
    @param text: the file's bytes as read earlier (L{read_config_bytes}), parsed instead of
        reading C{path} again; C{path} still names it and places its relative paths.
    @return: the validated, frozen configuration.
    @raise ConfigError: naming the file (or L{COMMAND_LINE_SOURCE}), the dotted key and what
        is allowed, for anything wrong.
    """
    cli = Source(COMMAND_LINE_SOURCE, ORIGIN_COMMAND_LINE, os.getcwd())
    defaults = Source(DEFAULTS_SOURCE, ORIGIN_DEFAULT, os.getcwd())
    opts = _check_overrides(cli, overrides or {})
    if path is None:
        doc: dict[str, Any] = {}
        src = defaults
    else:
        doc = _read_toml(path, text)
        src = Source(path, ORIGIN_FILE, os.path.dirname(os.path.abspath(path)))
    for key in doc:
        if key not in TOP_KEYS:
            raise src.error(
                toml_key(key), f"unknown key; allowed top-level keys are: {', '.join(TOP_KEYS)}"
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

    server_name = choose("server_name", "server_name", doc, "server_name", parse_server_name)
    server_name = server_name or DEFAULT_SERVER_NAME
    state_dir = choose("state_dir", "state_dir", doc, "state_dir", parse_path)
    if state_dir is None:
        state_dir = default_state_dir(environ, euid)
    users_file = choose("users_file", "users_file", doc, "users_file", parse_path)
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
        for spec in TLS_LISTEN_KEYS:
            origin = ORIGIN_FILE if spec.name in given else ORIGIN_DEFAULT
            origins[f"tls_listen[{index}].{spec.name}"] = origin
    if not listen and not tls_listen:
        where = cli if "listen" in opts else src
        raise where.error("listen", "no listener: give at least one in listen or [[tls_listen]]")
    limits, max_auth_attempts = _limits(src, doc.get("limits", {}), origins)

    log_table = doc.get("log", {})
    if not isinstance(log_table, dict):
        raise src.error("log", f"must be a table, got {describe_value(log_table)}")
    for key in log_table:
        if key not in LOG_KEYS:
            raise src.error(
                f"log.{toml_key(key)}",
                f"unknown key; allowed keys in [log] are: {', '.join(LOG_KEYS)}",
            )
    log_format = choose("log.format", "log_format", log_table, "format", parse_log_format)
    log_file = choose("log.file", "log_file", log_table, "file", parse_log_file)
    log = LogConfig(format=log_format or "text", file=log_file or "-")

    ops_values = _typed_table(src, "ops", doc.get("ops", {}), OPS_KEYS, origins)
    ops_values.setdefault("control_socket", os.path.join(state_dir, "control.sock"))
    ops = OpsConfig(**ops_values)
    listen_src = cli if "listen" in opts else src if "listen" in doc else defaults
    listeners = [(listen_src, f"listen[{index}]", text) for index, text in enumerate(listen)]
    listeners += [
        (src, f"tls_listen[{index}].endpoint", tls.endpoint)
        for index, tls in enumerate(tls_listen)
    ]
    if ops.metrics_listen:
        listeners.append((src, "ops.metrics_listen", ops.metrics_listen))
    if ops.control_socket:
        control = (src, "ops.control_socket", unix_listener(ops.control_socket))
        if origins.get("ops.control_socket") == ORIGIN_FILE:
            listeners.append(control)
        else:  # the default path: blame the listener the operator wrote
            listeners.insert(0, control)
    _check_distinct_addresses(listeners)
    peer_values = _typed_table(
        src, "peer_checks", doc.get("peer_checks", {}), PEER_CHECK_KEYS, origins
    )
    admission = parse_admission(src, doc.get("admission", {}), origins)
    workers = _workers(src, doc, admission, origins)
    overload = OverloadSettings(
        **_typed_table(src, "overload", doc.get("overload", {}), OVERLOAD_KEYS, origins)
    )
    mux = StreamSettings(**_typed_table(src, "mux", doc.get("mux", {}), MUX_KEYS, origins))
    tickets = TicketSettings(
        **_typed_table(src, "tickets", doc.get("tickets", {}), TICKET_KEYS, origins)
    )
    shared = SharedSettings(
        **_typed_table(src, "shared", doc.get("shared", {}), SHARED_KEYS, origins)
    )
    patterns = peer_values.get("fcrdns_deny") or peer_values.get("fcrdns_allow")
    if patterns and peer_values.get("fcrdns", "off") == "off":
        raise src.error(
            "peer_checks.fcrdns",
            'fcrdns_deny and fcrdns_allow need fcrdns = "log" or "require"',
        )
    peer_checks = PeerCheckPolicy(**peer_values)

    services = _services(src, cli, doc, opts, builder)

    for name, service in services.items():
        if not service.users and not service.groups:
            builder.warnings.append(
                f"{service_key(name)}: lists no users and no groups, so nobody may open it"
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
        max_auth_attempts=max_auth_attempts,
        log=log,
        ops=ops,
        peer_checks=peer_checks,
        admission=admission,
        overload=overload,
        mux=mux,
        tickets=tickets,
        shared=shared,
        services=services,
        workers=workers,
        warnings=tuple(builder.warnings),
        source=DEFAULTS_SOURCE if path is None else path,
        origins=origins,
    )


def cpu_count() -> int:
    """
    The CPUs this process may run on (its affinity mask), what C{workers = "auto"} uses.
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _workers(
    src: Source, doc: Mapping[str, Any], admission: AdmissionPolicy, origins: dict[str, str]
) -> int:
    """
    C{workers}, checked against the admission pool caps: each worker needs at least one of
    each (L{netguard.workers.budget.too_small_caps}).
    """
    if "workers" not in doc:
        origins["workers"] = ORIGIN_DEFAULT
        return 1
    origins["workers"] = ORIGIN_FILE
    workers = parse_workers(src, "workers", doc["workers"], cpu_count())
    small = too_small_caps(admission, workers)
    if small:
        raise src.error(
            "workers",
            f"{workers} workers cannot share admission caps smaller than that: "
            f"{', '.join(small)} (each worker gets an exact share, at least 1)",
        )
    return workers


def _typed_table(
    src: Source,
    name: str,
    table: object,
    keys: Sequence[TableKey | NumberKey],
    origins: dict[str, str],
) -> dict[str, Any]:
    """
    Check the table C{[name]} against C{keys}: unknown keys and bad values are errors.

    @return: the checked values of the keys present (absent keys keep their defaults).
    """
    if not isinstance(table, dict):
        raise src.error(name, f"must be a table, got {describe_value(table)}")
    names = [spec.name for spec in keys]
    for key in table:
        if key not in names:
            raise src.error(
                f"{name}.{toml_key(key)}",
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


def _limits(src: Source, table: object, origins: dict[str, str]) -> tuple[FramingLimits, int]:
    """
    Check the C{[limits]} table.

    @return: the framing bounds and C{max_auth_attempts}.
    """
    values = _typed_table(src, "limits", table, LIMIT_KEYS, origins)
    max_auth_attempts = values.pop("max_auth_attempts", DEFAULT_MAX_AUTH_ATTEMPTS)
    limits = attrs.evolve(GATEWAY_LIMITS, **values)
    if limits.greeting_delay >= limits.handshake_timeout:
        raise src.error(
            "limits.greeting_delay",
            f"must be less than limits.handshake_timeout ({num(limits.handshake_timeout)}), "
            f"or every client times out before it is greeted; got {num(limits.greeting_delay)}",
        )
    return limits, max_auth_attempts


def _services(
    src: Source,
    cli: Source,
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
                f"must be a table of [services.NAME] tables, got {describe_value(table)}",
            )
        if len(table) > MAX_SERVICES:
            raise src.error("services", f"declares more than {MAX_SERVICES} services")
        for name, body in table.items():
            parse_service_name(src, service_key(name), name)
            services[name] = builder.service(src, name, body)
    else:
        for name, service in default_services().items():
            services[name] = service
            for key in SERVICE_KEYS:
                builder.origins[service_key(name, key)] = ORIGIN_DEFAULT
    entries = opts.get("services", [])
    assert isinstance(entries, list)
    for index, entry in enumerate(entries):
        item_key = f"services[{index}]"
        if not isinstance(entry, str) or "=" not in entry:
            raise cli.error(
                item_key,
                "must be NAME=ENDPOINT, e.g. redis=tcp:host=127.0.0.1:port=6379; got "
                + describe_value(entry),
            )
        name, _, endpoint = entry.partition("=")
        parse_service_name(cli, item_key, name)
        backend_key = service_key(name, "backend")
        backend: Backend = cli.check(backend_key, check_backend, endpoint)
        builder.forget_service(name)
        services[name] = ServiceConfig(name, backend.description, ("*",))
        builder.origins[service_key(name, "backend")] = ORIGIN_COMMAND_LINE
        builder.origins[service_key(name, "users")] = ORIGIN_COMMAND_LINE
        for key in SERVICE_KEYS:
            builder.origins.setdefault(service_key(name, key), ORIGIN_DEFAULT)
        if backend.warning:
            builder.warnings.append(f"{backend_key}: {backend.warning}")
    if len(services) > MAX_SERVICES:
        raise cli.error("services", f"more than {MAX_SERVICES} services")
    return services

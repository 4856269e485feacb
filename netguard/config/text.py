# -*- test-case-name: tests.test_config -*-
"""
The configuration as text: L{describe} prints the effective configuration with where each
value came from (C{netguard check-config}), L{describe_defaults} every key with its default,
what it allows and what it defends against (C{netguard check-config --defaults}, copied into
C{docs/operating.md}). Nothing that looks like a secret is ever printed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from netguard.admission import AdmissionPolicy, allowed_values
from netguard.config.loader import default_listen
from netguard.config.model import (
    DEFAULT_MAX_AUTH_ATTEMPTS,
    DEFAULT_SERVER_NAME,
    GATEWAY_LIMITS,
    MAX_LISTENERS,
    ORIGIN_DEFAULT,
    ORIGIN_FILE,
    ROOT_STATE_DIR,
    SERVICE_DEFAULTS,
    Config,
    OpsConfig,
)
from netguard.config.schema import (
    LIMIT_KEYS,
    LOG_FORMATS,
    SERVICE_NUMBER_KEYS,
    plain,
    service_key,
    value_text,
)
from netguard.config.shared_schema import SHARED_KEYS
from netguard.config.table_schema import (
    MUX_KEYS,
    OPS_KEYS,
    OVERLOAD_KEYS,
    PEER_CHECK_KEYS,
    TICKET_KEYS,
)
from netguard.config.tls_schema import TLS_LISTEN_KEYS, TLS_SETTINGS_KEYS
from netguard.endpoints import EndpointError, check_listener
from netguard.framing import FramingLimits
from netguard.gateway.stream_settings import StreamSettings
from netguard.ops.overload import OverloadSettings
from netguard.peer.checks import PeerCheckPolicy
from netguard.quoting import toml_string
from netguard.redaction import looks_secret, redact_description
from netguard.shared.settings import SharedSettings
from netguard.tickets import TicketSettings
from netguard.tls.server import ServerTLSSettings

__all__ = ["describe", "describe_defaults"]


def _admission_docs() -> dict[str, str]:
    """
    What each admission knob defends against, read from the policy's own docstring.
    """
    text = AdmissionPolicy.__doc__ or ""
    docs: dict[str, str] = {}
    for match in re.finditer(r"@ivar (\w+): (.*?)(?=\n\s*@ivar |\Z)", text, re.S):
        words = re.sub(r"[CLI]\{([^{}]*)\}", r"\1", " ".join(match.group(2).split()))
        docs[match.group(1)] = words
    return docs


def _limit(limits: FramingLimits, max_auth_attempts: int, name: str) -> object:
    """
    The value of the C{[limits]} key C{name}: C{max_auth_attempts} is the gateway's own, every
    other key a bound of its framing.
    """
    return max_auth_attempts if name == "max_auth_attempts" else getattr(limits, name)


def _redacted(key: str, value: object) -> object:
    """
    Never print a secret: a key that looks like one is hidden entirely, and endpoint-like
    strings lose option values and URL passwords that look like secrets.
    """
    last = key.rsplit(".", 1)[-1]
    if looks_secret(last):
        return "<redacted>"
    if isinstance(value, str):
        return redact_description(value)
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
        shown = value_text(_redacted(key, value))
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
    add(
        "workers",
        config.workers,
        "one process" if config.workers == 1 else f"a supervisor and {config.workers} workers",
    )
    for index, description in enumerate(config.listen):
        try:
            exposure = check_listener(description).exposure
        except EndpointError as e:
            exposure = f"INVALID: {e.message}"
        shown = value_text(redact_description(description))
        lines.append(f"listen[{index}] = {shown}  # {_origin_note(config, 'listen')}; {exposure}")
    for index, tls in enumerate(config.tls_listen):
        add(f"tls_listen[{index}].endpoint", tls.endpoint)
        for tls_key in TLS_SETTINGS_KEYS:
            value = getattr(tls.settings, tls_key.name)
            add(f"tls_listen[{index}].{tls_key.name}", "" if value is None else value)
    for spec in LIMIT_KEYS:
        add(f"limits.{spec.name}", _limit(config.limits, config.max_auth_attempts, spec.name))
    add("log.format", config.log.format)
    add("log.file", config.log.file, "stdout" if config.log.file == "-" else "")
    for field in attrs.fields(OpsConfig):
        add(f"ops.{field.name}", getattr(config.ops, field.name))
    for field in attrs.fields(AdmissionPolicy):
        add(f"admission.{field.name}", plain(getattr(config.admission, field.name)))
    for field in attrs.fields(OverloadSettings):
        value = getattr(config.overload, field.name)
        add(f"overload.{field.name}", "off" if value is None else value)
    for mux_key in MUX_KEYS:
        add(f"mux.{mux_key.name}", getattr(config.mux, mux_key.name))
    for ticket_key in TICKET_KEYS:
        add(f"tickets.{ticket_key.name}", getattr(config.tickets, ticket_key.name))
    for shared_key in SHARED_KEYS:
        add(f"shared.{shared_key.name}", getattr(config.shared, shared_key.name))
    for check_key in PEER_CHECK_KEYS:
        add(f"peer_checks.{check_key.name}", plain(getattr(config.peer_checks, check_key.name)))
    if not config.services:
        lines.append("# services: none")
    for name, service in config.services.items():
        add(service_key(name, "backend"), service.backend)
        add(service_key(name, "users"), list(service.users))
        add(service_key(name, "groups"), list(service.groups))
        add(service_key(name, "connect_timeout"), service.connect_timeout)
        add(service_key(name, "idle_timeout"), service.idle_timeout)
        add(service_key(name, "socks5"), service.socks5)
        add(service_key(name, "fcrdns"), service.fcrdns)
        add(service_key(name, "kernel_relay"), service.kernel_relay)
        add(service_key(name, "send_proxy"), service.send_proxy)
    for warning in config.warnings:
        lines.append(f"# warning: {warning}")
    return "\n".join(lines) + "\n"


@attrs.frozen
class _KeyDoc:
    key: str
    default: str
    allowed: str
    defends: str


def _table_docs(
    table: str,
    defaults: object,
    keys: Iterable[Any],
    show: Callable[[str, object], str] | None = None,
) -> list[_KeyDoc]:
    """
    The keys of one configuration table, each with its default read from C{defaults} (the
    table's settings value) and shown by C{show(name, value)} (L{value_text} by default).
    """
    docs = []
    for spec in keys:
        value = getattr(defaults, spec.name)
        shown = show(spec.name, value) if show is not None else value_text(value)
        docs.append(_KeyDoc(f"{table}.{spec.name}", shown, spec.allowed, spec.defends))
    return docs


def _tls_listen_docs() -> list[_KeyDoc]:
    """
    The keys of one C{[[tls_listen]]} entry (none by default: no TLS listener), each with
    its default: in words, C{required}, or that of its L{ServerTLSSettings} field.
    """
    fields = attrs.fields_dict(ServerTLSSettings)
    docs = []
    for spec in TLS_LISTEN_KEYS:
        if spec.default:
            default = spec.default
        elif spec.required:
            default = "required"
        else:
            value = fields[spec.name].default
            default = value_text("" if value is None else value)
        docs.append(_KeyDoc(f"tls_listen[].{spec.name}", default, spec.allowed, spec.defends))
    return docs


def _key_docs() -> tuple[_KeyDoc, ...]:
    """
    The documentation of every key, in file order.
    """
    docs = [
        _KeyDoc(
            "server_name",
            toml_string(DEFAULT_SERVER_NAME),
            "1 to 64 characters of A-Z a-z 0-9 . _ -",
            "greeting injection, and leaking the host's real name to strangers",
        ),
        _KeyDoc(
            "state_dir",
            f"{toml_string(ROOT_STATE_DIR)} (as root; otherwise $XDG_STATE_HOME/netguard "
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
            value_text(list(default_listen("<state_dir>"))),
            f"1 to {MAX_LISTENERS} server endpoint strings: tcp, tcp6, ssl, tls, unix, "
            "systemd, haproxy:[proxy_from=ADDR,NETWORK...:]<listener>, or a plugin's; "
            "ports may be service names",
            "accidental exposure: by default only loopback and a mode-600 unix socket; a "
            "listener with no interface (all interfaces) is warned about; forged client "
            "addresses: a haproxy: listener takes PROXY headers only from proxy_from "
            "(default: this host)",
        ),
        *_tls_listen_docs(),
        _KeyDoc(
            "workers",
            "1",
            'an integer from 1 to 64, or "auto" (one per CPU this process may run on); '
            "more than 1 runs that many gateway processes sharing every listener under one "
            "supervisor",
            "one flooded core: the workers share the load while the configured admission "
            "limits hold for all of them together (each gets its share)",
        ),
    ]
    for spec in LIMIT_KEYS:
        docs.append(
            _KeyDoc(
                f"limits.{spec.name}",
                repr(_limit(GATEWAY_LIMITS, DEFAULT_MAX_AUTH_ATTEMPTS, spec.name)),
                spec.range.allowed(),
                spec.defends,
            )
        )
    docs += _table_docs(
        "ops",
        OpsConfig(),
        OPS_KEYS,
        lambda name, value: (
            '"<state_dir>/control.sock"' if name == "control_socket" else value_text(value)
        ),
    )
    policy = AdmissionPolicy()
    admission_docs = _admission_docs()
    for field in attrs.fields(AdmissionPolicy):
        docs.append(
            _KeyDoc(
                f"admission.{field.name}",
                value_text(plain(getattr(policy, field.name))),
                allowed_values(field.name),
                admission_docs.get(field.name, ""),
            )
        )
    docs += _table_docs(
        "overload",
        OverloadSettings(),
        OVERLOAD_KEYS,
        lambda name, value: value_text("off" if value is None else value),
    )
    docs += _table_docs("mux", StreamSettings(), MUX_KEYS)
    docs += _table_docs("tickets", TicketSettings(), TICKET_KEYS)
    docs += _table_docs("shared", SharedSettings(), SHARED_KEYS)
    docs += _table_docs(
        "peer_checks",
        PeerCheckPolicy(),
        PEER_CHECK_KEYS,
        lambda name, value: value_text(list(value) if isinstance(value, tuple) else value),
    )
    docs += [
        _KeyDoc(
            "log.format",
            toml_string("text"),
            "one of " + ", ".join(toml_string(f) for f in LOG_FORMATS),
            "forged or ambiguous records: json gives machines one object per event, and "
            "untrusted text is escaped in both formats",
        ),
        _KeyDoc(
            "log.file",
            toml_string("-"),
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
    for spec in SERVICE_NUMBER_KEYS:
        docs.append(
            _KeyDoc(
                f"services.<name>.{spec.name}",
                repr(getattr(SERVICE_DEFAULTS, spec.name)),
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
    docs.append(
        _KeyDoc(
            "services.<name>.kernel_relay",
            "true",
            "true or false: relay inside the kernel (os.splice) when both legs are plain "
            "sockets on Linux; TLS, echo and other systems always use the ordinary relay",
            "a bulk stream costing the gateway two user-space copies per byte (the relay's "
            "bounds hold either way)",
        )
    )
    docs.append(
        _KeyDoc(
            "services.<name>.send_proxy",
            '"off"',
            '"off" or "v2": send the backend a PROXY protocol version 2 header first (client '
            "and reached address, user name in TLV 0xE0, session id in PP2_TYPE_UNIQUE_ID, "
            "CRC32C); not with builtin:echo",
            "a backend that sees only the gateway's address and cannot log or limit by the "
            "real client or user",
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

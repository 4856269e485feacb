# -*- test-case-name: tests.test_config -*-
"""
The key schema: every key of the configuration file with its type, its range or allowed
values, its default and the reason each bound exists, and the checks that turn one raw TOML
value into a checked one (or a L{ConfigError} naming the file and key). The keys of the typed
tables (C{[peer_checks]}, C{[overload]}, C{[mux]}, C{[tickets]}, C{[ops]}) are in
L{netguard.config.table_schema}, those of C{[[tls_listen]]} in L{netguard.config.tls_schema}
and those of C{[shared]} in L{netguard.config.shared_schema}. See C{docs/operating.md} for the
keys.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any, Final, TypeVar

import attrs

from netguard.admission import AdmissionPolicy
from netguard.config.model import (
    MAX_NAMES_PER_SERVICE,
    MAX_STRING_LENGTH,
    ORIGIN_FILE,
    ConfigError,
)
from netguard.endpoints import EndpointError
from netguard.quoting import describe_value, toml_string

_T = TypeVar("_T")

_SERVER_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SERVICE_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The same rule as netguard.auth.users for user and group names.
_PRINCIPAL_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")


class Invalid(Exception):
    """
    A value is wrong; the caller knows the file and key and turns this into L{ConfigError}.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------------------------
# The schema: ranges and the reason each bound exists


@attrs.frozen
class Range:
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
            return f"an integer from {num(self.low)} to {num(self.high)}"
        return f"a number of {self.unit or 'units'} from {num(self.low)} to {num(self.high)}"

    def check(self, value: object) -> int | float:
        """
        @return: C{value} if it is in range (floats always as C{float}).
        @raise Invalid: otherwise.
        """
        problem = f"must be {self.allowed()}, got {describe_value(value)}"
        if isinstance(value, bool):
            raise Invalid(problem)
        if self.kind is int:
            if not isinstance(value, int) or not self.low <= value <= self.high:
                raise Invalid(problem)
            return value
        if not isinstance(value, int | float) or not _finite(value):
            raise Invalid(problem)
        if not self.low <= value <= self.high:
            raise Invalid(problem)
        return float(value)


def _finite(value: float) -> bool:
    """
    Whether a TOML number is finite and within a float's range: an integer too large for a
    float is not (C{math.isfinite} would raise C{OverflowError} on it).
    """
    if isinstance(value, int):
        return -sys.float_info.max <= value <= sys.float_info.max
    return math.isfinite(value)


@attrs.frozen
class NumberKey:
    """
    A numeric key, its range and what it defends against.
    """

    name: str
    range: Range
    defends: str

    def check(self, src: Source, key: str, value: object) -> Any:
        """
        The checked value of C{key}, as a L{TableKey}'s check gives it.
        """
        return src.check(key, self.range.check, value)


LIMIT_KEYS: Final[tuple[NumberKey, ...]] = (
    NumberKey(
        "max_line_length",
        Range(int, 64, 65536, "bytes"),
        "a client sending one endless line to exhaust memory",
    ),
    NumberKey(
        "max_lines_before_auth",
        Range(int, 1, 10000),
        "an unauthenticated client keeping a session busy with many small commands",
    ),
    NumberKey(
        "max_bytes_before_auth",
        Range(int, 256, 1048576, "bytes"),
        "an unauthenticated client pushing data (a chargen-style flood) at the line parser",
    ),
    NumberKey(
        "greeting_delay",
        Range(float, 0, 30, "seconds"),
        "bots that talk before the greeting: early talkers are caught during this pause",
    ),
    NumberKey(
        "handshake_timeout",
        Range(float, 1, 3600, "seconds"),
        "a client that connects and never finishes authenticating, holding a slot (slowloris)",
    ),
    NumberKey(
        "idle_timeout",
        Range(float, 1, 86400, "seconds"),
        "a client that goes silent in the line phase and holds its connection forever",
    ),
    NumberKey(
        "write_timeout",
        Range(float, 1, 3600, "seconds"),
        "a client that stops reading while replies are queued, pinning our memory",
    ),
    NumberKey(
        "max_auth_attempts",
        Range(int, 1, 20),
        "online password guessing over one connection",
    ),
    NumberKey(
        "max_lines_after_auth",
        Range(int, 1, 10000),
        "an authenticated client flooding the line phase with commands (valid or not) "
        "instead of opening a service",
    ),
    NumberKey(
        "max_bytes_after_auth",
        Range(int, 256, 1048576, "bytes"),
        "an authenticated client pushing data at the line parser instead of opening a service",
    ),
    NumberKey(
        "max_errors",
        Range(int, 1, 10000),
        "a client (authenticated or not) earning error reply after error reply, each a "
        "reply to write and a log record",
    ),
    NumberKey(
        "open_timeout",
        Range(float, 1, 3600, "seconds"),
        "an authenticated client that never opens a service, holding a relay-pool slot",
    ),
)

SERVICE_NUMBER_KEYS: Final[tuple[NumberKey, ...]] = (
    NumberKey(
        "connect_timeout",
        Range(float, 0.1, 300, "seconds"),
        "a backend that never answers leaving clients hanging",
    ),
    NumberKey(
        "idle_timeout",
        Range(float, 1, 604800, "seconds"),
        "relays left open and silent forever, holding sockets and memory",
    ),
)

TOP_KEYS: Final = (
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
    "mux",
    "tickets",
    "shared",
    "services",
    "workers",
)


@attrs.frozen
class TableKey:
    """
    A key of a typed table: how its raw value is checked, its default, the allowed values in
    words, and what it defends against (for C{describe_defaults}).
    """

    name: str
    check: Callable[[Source, str, object], Any]
    allowed: str
    defends: str


def parse_bool(src: Source, key: str, value: object) -> bool:
    """
    A TOML boolean.
    """
    if not isinstance(value, bool):
        raise src.error(key, f"must be true or false, got {describe_value(value)}")
    return value


def _number(range_: Range) -> Callable[[Source, str, object], Any]:
    def check(src: Source, key: str, value: object) -> Any:
        return src.check(key, range_.check, value)

    return check


def optional_path(src: Source, key: str, value: object) -> str:
    if value == "":
        return ""
    return parse_path(src, key, value)


def parse_choice(*allowed: str) -> Callable[[Source, str, object], Any]:
    """
    A check that the value is one of C{allowed}.
    """

    def check(src: Source, key: str, value: object) -> Any:
        if value not in allowed:
            words = ", ".join(toml_string(a) for a in allowed)
            raise src.error(key, f"must be one of {words}, got {describe_value(value)}")
        return value

    return check


def parse_admission(src: Source, table: object, origins: dict[str, str]) -> AdmissionPolicy:
    """
    Check the C{[admission]} table: every key must be a field of the admission policy, of the
    right type; the policy's own validators check ranges and relations.
    """
    if not isinstance(table, dict):
        raise src.error("admission", f"must be a table, got {describe_value(table)}")
    defaults = AdmissionPolicy()
    fields = [field.name for field in attrs.fields(AdmissionPolicy)]
    values: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"admission.{toml_key(key)}"
        if key not in fields:
            raise src.error(
                dotted, f"unknown key; allowed keys in [admission] are: {', '.join(fields)}"
            )
        default = getattr(defaults, key)
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and _finite(value)
        elif isinstance(default, tuple):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise src.error(
                dotted,
                f"must be like the default {value_text(plain(default))}, "
                f"got {describe_value(value)}",
            )
        values[key] = tuple(value) if isinstance(value, list) else value
        origins[dotted] = ORIGIN_FILE
    try:
        return AdmissionPolicy(**values)
    except (ValueError, TypeError) as e:
        # attrs validators put the readable message first in their arguments.
        message = str(e.args[0]) if e.args else str(e)
        key = next((k for k in values if k in message), None)
        where = f"admission.{key}" if key else "admission"
        raise src.error(where, message) from None


def plain(value: object) -> object:
    """
    A tuple as the list TOML would show; anything else unchanged.
    """
    return list(value) if isinstance(value, tuple) else value


LOG_KEYS: Final = ("format", "file")
LOG_FORMATS: Final = ("text", "json")
SERVICE_KEYS: Final = (
    "backend",
    "users",
    "groups",
    "connect_timeout",
    "idle_timeout",
    "socks5",
    "fcrdns",
    "kernel_relay",
    "send_proxy",
)
#: What a service's C{send_proxy} may be: no header, or a PROXY protocol version 2 header.
SEND_PROXY_CHOICES: Final = ("off", "v2")
OVERRIDE_KEYS: Final = (
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


def num(value: float) -> str:
    """
    Render a bound without a useless C{.0}.
    """
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def toml_key(name: str) -> str:
    """
    Render one component of a dotted key, quoting it if TOML needs quotes.
    """
    return name if _BARE_KEY_RE.fullmatch(name) else toml_string(name)


def service_key(name: str, key: str | None = None) -> str:
    """
    The dotted key C{services.<name>[.<key>]}.
    """
    base = f"services.{toml_key(name)}"
    return base if key is None else f"{base}.{key}"


# ---------------------------------------------------------------------------------------------
# Where values come from, and the checks of single values


@attrs.frozen
class Source:
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
        Run C{check(*args)}, turning L{Invalid} and L{EndpointError} into L{ConfigError} for
        this source and key.
        """
        try:
            return check(*args)
        except (Invalid, EndpointError) as e:
            raise self.error(key, e.message) from None


def _string(src: Source, key: str, value: object, allowed: str) -> str:
    if not isinstance(value, str):
        raise src.error(key, f"must be {allowed}, got {describe_value(value)}")
    return value


def parse_path(src: Source, key: str, value: object) -> str:
    """
    A filesystem path: absolute, or made so against the source's base directory.
    """
    allowed = "a path (relative paths are taken from the configuration file's directory)"
    text = _string(src, key, value, allowed)
    if not text or "\x00" in text or len(text) > MAX_STRING_LENGTH:
        raise src.error(key, f"must be {allowed}, got {describe_value(value)}")
    text = os.path.expanduser(text)
    if not os.path.isabs(text):
        text = os.path.join(src.base_dir, text)
    return os.path.normpath(text)


def parse_server_name(src: Source, key: str, value: object) -> str:
    """
    C{server_name}: the name in the greeting.
    """
    allowed = "1 to 64 characters of A-Z a-z 0-9 . _ -"
    text = _string(src, key, value, allowed)
    if not _SERVER_NAME_RE.fullmatch(text):
        raise src.error(key, f"must be {allowed}, got {describe_value(value)}")
    return text


#: The bounds of C{workers}.
MIN_WORKERS: Final = 1
MAX_WORKERS: Final = 64


def parse_workers(src: Source, key: str, value: object, cpus: int) -> int:
    """
    C{workers}: how many gateway processes share the listeners, an integer from
    L{MIN_WORKERS} to L{MAX_WORKERS}, or C{"auto"} for C{cpus} (capped at L{MAX_WORKERS}).
    """
    allowed = f'an integer from {MIN_WORKERS} to {MAX_WORKERS}, or "auto" (one per CPU)'
    if value == "auto":
        return max(MIN_WORKERS, min(MAX_WORKERS, cpus))
    if isinstance(value, bool) or not isinstance(value, int):
        raise src.error(key, f"must be {allowed}, got {describe_value(value)}")
    if not MIN_WORKERS <= value <= MAX_WORKERS:
        raise src.error(key, f"must be {allowed}, got {describe_value(value)}")
    return value


def parse_log_format(src: Source, key: str, value: object) -> str:
    """
    C{log.format}: one of L{LOG_FORMATS}.
    """
    allowed = "one of " + ", ".join(toml_string(f) for f in LOG_FORMATS)
    text = _string(src, key, value, allowed)
    if text not in LOG_FORMATS:
        raise src.error(key, f"must be {allowed}, got {describe_value(value)}")
    return text


def parse_log_file(src: Source, key: str, value: object) -> str:
    """
    C{log.file}: C{"-"} (standard output) or a path.
    """
    if value == "-":
        return "-"
    return parse_path(src, key, value)


def parse_names(src: Source, key: str, value: object, *, allow_star: bool) -> tuple[str, ...]:
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
        raise src.error(key, f"must be {allowed}, got {describe_value(value)}")
    if len(value) > MAX_NAMES_PER_SERVICE:
        raise src.error(key, f"lists more than {MAX_NAMES_PER_SERVICE} names")
    names: list[str] = []
    for index, item in enumerate(value):
        ok = isinstance(item, str) and (
            (allow_star and item == "*") or _PRINCIPAL_RE.fullmatch(item) is not None
        )
        if not ok:
            raise src.error(f"{key}[{index}]", f"must be {allowed}, got {describe_value(item)}")
        assert isinstance(item, str)
        if item not in names:
            names.append(item)
    return tuple(names)


def parse_socks5(src: Source, key: str, value: object) -> str:
    """
    A service's C{socks5} proxy string, never echoed in a message (it may hold a secret).
    """
    allowed = (
        "a SOCKS5 proxy endpoint description of 1 to "
        f"{MAX_STRING_LENGTH} printable ASCII characters"
    )
    if not isinstance(value, str):
        raise src.error(key, f"must be {allowed}, got {describe_value(value)}")
    if not value or len(value) > MAX_STRING_LENGTH or not all(" " <= c <= "~" for c in value):
        # Never echo the value: it may hold a proxy password.
        raise src.error(key, f"must be {allowed}")
    return value


def parse_service_name(src: Source, key: str, name: object) -> str:
    """
    The C{NAME} of C{[services.NAME]} or C{--service NAME=...}.
    """
    if not isinstance(name, str) or not _SERVICE_NAME_RE.fullmatch(name):
        raise src.error(
            key,
            "a service name must be 1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a "
            f"letter or digit; got {describe_value(name)}",
        )
    return name


def value_text(value: object) -> str:
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
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return toml_string(str(value))

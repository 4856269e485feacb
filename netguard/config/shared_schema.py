# -*- test-case-name: tests.test_shared_state -*-
"""
The keys of the C{[shared]} table (state shared between instances through Redis): each
key's check, the allowed values in words and what it defends against. C{docs/operating.md}
("Shared state in Redis") describes them.
"""

from __future__ import annotations

import re
from typing import Final

from netguard.config.schema import Range, Source, TableKey, _number, optional_path
from netguard.endpoints import EndpointError, check_backend
from netguard.quoting import describe_value

_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9:._-]{1,64}")


def _redis(src: Source, key: str, value: object) -> str:
    if value == "":
        return ""
    if not isinstance(value, str):
        raise src.error(key, f"must be a client endpoint string, got {describe_value(value)}")

    def check(text: str) -> str:
        backend = check_backend(text)
        if backend.kind not in ("tcp", "unix"):
            raise EndpointError("must be a tcp: or unix: client endpoint string")
        return backend.description

    return str(src.check(key, check, value))


def _prefix(src: Source, key: str, value: object) -> str:
    if not isinstance(value, str) or not _PREFIX_RE.fullmatch(value):
        raise src.error(
            key, f"must be 1 to 64 of A-Z a-z 0-9 : . _ -, got {describe_value(value)}"
        )
    return value


SHARED_KEYS: Final[tuple[TableKey, ...]] = (
    TableKey(
        "redis",
        _redis,
        'a tcp: or unix: client endpoint string, or "" (off)',
        "an attacker penalised by one instance or worker moving on to the next one: blocks, "
        "per-source rates and spent tickets are shared through this Redis",
    ),
    TableKey(
        "password_file",
        optional_path,
        'a path to a file of mode 0600 holding the Redis password, or "" (no AUTH)',
        "another local user of the Redis writing blocks or spending tickets",
    ),
    TableKey(
        "key_prefix",
        _prefix,
        "1 to 64 of A-Z a-z 0-9 : . _ -",
        "two gateways sharing one Redis by mistake (give each deployment its own prefix)",
    ),
    TableKey(
        "timeout",
        _number(Range(float, 0.001, 5, "seconds")),
        "a number of seconds from 0.001 to 5",
        "a slow or hung Redis holding a client: no request waits longer for it (a later "
        "reply fails that request only); a reply still missing after 1 s (or twice this) "
        "counts as Redis unreachable (local limits only)",
    ),
    TableKey(
        "rate_window",
        _number(Range(float, 0.1, 3600, "seconds")),
        "a number of seconds from 0.1 to 3600",
        "a source spreading its connections over instances to get each one's rate: the "
        "shared count of a window past the per-source budget blocks it until the window ends",
    ),
)

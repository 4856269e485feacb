# -*- test-case-name: tests.test_config -*-
"""
The keys of one C{[[tls_listen]]} entry: each key's check, whether it is required, the key
it needs, its default in words and what it defends against. The rest of the key schema is in
L{netguard.config.schema}; C{docs/operating.md} and C{docs/tls.md} describe the keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs

from netguard.config.schema import (
    Source,
    optional_path,
    parse_bool,
    parse_choice,
    parse_path,
)
from netguard.endpoints import Listener, check_listener


@attrs.frozen
class EntryKey:
    """
    A key of one C{[[tls_listen]]} entry: how its raw value is checked, whether every entry
    must give it, the key it needs when set to a true value, and, for C{describe_defaults},
    its default in words (empty: the default of the L{ServerTLSSettings} field of that name),
    the allowed values and what it defends against.
    """

    name: str
    check: Callable[[Source, str, object], Any]
    allowed: str
    defends: str
    required: bool = False
    needs: str = ""
    default: str = ""


def _tls_endpoint(src: Source, key: str, value: object) -> Listener:
    """
    C{tls_listen[].endpoint}: a listener that L{check_listener} accepts and that is not
    itself TLS (netguard adds its own).
    """
    listener: Listener = src.check(key, check_listener, value)
    if listener.description.split(":", 1)[0] in ("ssl", "tls"):
        raise src.error(
            key,
            "is already TLS; give the plain endpoint (tcp:..., unix:...) and netguard "
            "adds its hardened TLS",
        )
    return listener


def _optional_file(src: Source, key: str, value: object) -> str | None:
    if value == "":
        return None
    return parse_path(src, key, value)


#: The C{endpoint} of a C{[[tls_listen]]} entry: the L{TLSListenConfig} field beside its
#: settings.
TLS_ENDPOINT_KEY: Final = EntryKey(
    "endpoint",
    _tls_endpoint,
    "a plain server endpoint string (tcp, tcp6, unix, systemd, haproxy:...), not ssl: "
    "or tls:, not listed elsewhere; at most 64 entries",
    "eavesdropping and relayed logins on a network listener: TLS from the first byte, "
    "TLS 1.2+ with ECDHE and AEAD only, SCRAM-SHA-256-PLUS channel binding",
    required=True,
    default="none (no TLS listener by default; an entry needs endpoint, cert_file, key_file)",
)

#: The other keys of a C{[[tls_listen]]} entry, each a field of L{ServerTLSSettings}, in
#: the order they are checked (a key's C{needs} comes before it).
TLS_SETTINGS_KEYS: Final[tuple[EntryKey, ...]] = (
    EntryKey(
        "cert_file",
        optional_path,
        "a PEM file: the certificate, then optional intermediates (at most 1 MiB)",
        "serving an expired, not-yet-valid or mismatched certificate: checked at start "
        "and at reload",
        required=True,
    ),
    EntryKey(
        "key_file",
        optional_path,
        "a PEM file with an unencrypted RSA (2048+ bits), P-256, P-384, Ed25519 or Ed448 "
        "key that other users cannot read",
        "key theft: a key readable by others stops the start",
        required=True,
    ),
    EntryKey(
        "chain_file",
        _optional_file,
        "a PEM file of intermediate certificates, or empty",
        "clients that cannot build the chain to their trust root",
    ),
    EntryKey(
        "client_ca_file",
        _optional_file,
        "a PEM file of the CAs client certificates must chain to, or empty (no client "
        "certificates asked for)",
        "clients without a certificate from your CA, when combined with require_client_cert",
    ),
    EntryKey(
        "require_client_cert",
        parse_bool,
        "true or false; true needs client_ca_file",
        "anyone without a valid client certificate reaching the line phase at all",
        needs="client_ca_file",
    ),
    EntryKey(
        "min_version",
        parse_choice("1.2", "1.3"),
        '"1.2" or "1.3"',
        "protocol downgrade to TLS 1.0/1.1, which are never accepted",
    ),
    EntryKey(
        "session_resumption",
        parse_bool,
        'true or false; true needs min_version = "1.3"',
        "nothing when off (every handshake is full); when on, TLS 1.3 tickets with a new "
        "(EC)DHE exchange on each resumption, no 0-RTT, ticket keys in memory only and "
        "replaced hourly, tickets valid 1 hour (docs/tls.md section 11)",
    ),
)

#: Every key of a C{[[tls_listen]]} entry, in file order.
TLS_LISTEN_KEYS: Final[tuple[EntryKey, ...]] = (TLS_ENDPOINT_KEY, *TLS_SETTINGS_KEYS)

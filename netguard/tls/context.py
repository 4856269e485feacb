# -*- test-case-name: tests.test_tls -*-
"""
The hardened OpenSSL context that servers and clients both start from (TLS 1.2 or later,
ECDHE with AEAD suites, elliptic-curve groups only, no compression, renegotiation or session
resumption), TLS 1.3 resumption for the servers that allow it, and the certificate chain and
key put on it. docs/tls.md section 4 lists every
setting and the reason for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
)
from OpenSSL import SSL
from twisted.logger import Logger

from netguard.tls.certificates import public_key_pin, spki
from netguard.tls.connection import describe_tls_error
from netguard.tls.errors import TLSConfigError

#: The TLS 1.2 cipher suites, in server preference order: ECDHE with AEAD only.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

#: The TLS 1.3 cipher suites (all AEAD), set explicitly so CCM and integrity-only suites
#: never appear whatever the library's default.
TLS13_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

#: Key-exchange groups, most preferred first; the first list the library accepts is used.
KEY_EXCHANGE_GROUPS = ("X25519MLKEM768:X25519:P-256:P-384", "X25519:P-256:P-384")

#: Options set on every context netguard makes.
CONTEXT_OPTIONS = (
    SSL.OP_NO_SSLv2
    | SSL.OP_NO_SSLv3
    | SSL.OP_NO_TLSv1
    | SSL.OP_NO_TLSv1_1
    | SSL.OP_NO_COMPRESSION
    | SSL.OP_NO_RENEGOTIATION
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_NO_TICKET
    | SSL.OP_SINGLE_ECDH_USE
)

#: Seconds a TLS 1.3 session ticket may be used when resumption is on: the ticket's
#: lifetime, and how long one context's ticket keys are used before new ones are made.
TICKET_LIFETIME = 3600

#: The accepted values of L{ServerTLSSettings.min_version}.
MIN_VERSIONS: Mapping[str, int] = MappingProxyType(
    {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
)


#: Logs what the context builders decide on their own (the group fallback).
_log = Logger()


def _set_groups(context: SSL.Context) -> None:
    """
    Restrict key exchange to elliptic-curve groups.

    pyOpenSSL has no public call for the group list: use the binding it uses itself, and
    fall back on its public single-curve call (P-256) if the binding ever goes away or
    refuses every list of L{KEY_EXCHANGE_GROUPS}; the fallback is logged (C{tls.warning}),
    since it drops X25519 and the post-quantum hybrid.
    """
    try:
        from OpenSSL._util import lib
    except ImportError:  # pragma: no cover - depends on the installed pyOpenSSL
        lib = None
    setter = getattr(lib, "SSL_CTX_set1_curves_list", None)
    if setter is None:
        reason = "pyOpenSSL has no SSL_CTX_set1_curves_list binding"
    else:
        for groups in KEY_EXCHANGE_GROUPS:
            if setter(context._context, groups.encode("ascii")) == 1:
                return
        reason = "OpenSSL refused every key-exchange group list"
    context.set_tmp_ecdh(ec.SECP256R1())
    _log.warn(
        "TLS: {detail}",
        event="tls.warning",
        detail=f"{reason}; key exchange falls back to P-256 only (no X25519, no X25519MLKEM768)",
    )


def base_context(method: int, min_version: int, ticket_lifetime: int | None = None) -> SSL.Context:
    """
    A new context with every setting of this module and no identity yet.

    With C{ticket_lifetime}, a server context resumes TLS 1.3 sessions from the stateless
    tickets it issues, sealed with keys OpenSSL makes at random for this context, in memory
    only, and accepted for C{ticket_lifetime} seconds. A resumption always makes a new
    (EC)DHE exchange (C{psk_dhe_ke}): OpenSSL ignores C{psk_ke} unless
    C{SSL_OP_ALLOW_NO_DHE_KEX} is set, which netguard never sets, so a client offering only
    C{psk_ke} gets a full handshake; the tickets allow no early data (0-RTT). Only for
    contexts limited to TLS 1.3: for TLS 1.2 the same tickets would resume without a key
    exchange.

    @param method: C{SSL.TLS_SERVER_METHOD} or C{SSL.TLS_CLIENT_METHOD}.
    @param min_version: the lowest protocol version (a value of L{MIN_VERSIONS}).
    @param ticket_lifetime: seconds a ticket is accepted, or L{None}: no resumption.
    @return: the context.
    """
    context = SSL.Context(method)
    context.set_min_proto_version(min_version)
    if ticket_lifetime is None:
        context.set_options(CONTEXT_OPTIONS)
    else:
        context.set_options(CONTEXT_OPTIONS & ~SSL.OP_NO_TICKET)
        context.set_timeout(ticket_lifetime)
    _no_early_data(context)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    context.set_tls13_ciphersuites(TLS13_CIPHERSUITES.encode("ascii"))
    _set_groups(context)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return context


def _no_early_data(context: SSL.Context) -> None:
    """
    Make the tickets of C{context} allow no early data (OpenSSL's default already; set so
    that a library default never turns 0-RTT on).
    """
    try:
        from OpenSSL._util import lib
    except ImportError:  # pragma: no cover - depends on the installed pyOpenSSL
        return
    setter = getattr(lib, "SSL_CTX_set_max_early_data", None)
    if setter is not None:
        setter(context._context, 0)


def use_identity(
    context: SSL.Context,
    key: PrivateKeyTypes,
    chain: Sequence[x509.Certificate],
    cert_path: str,
    key_path: str,
) -> None:
    """
    Put a certificate chain and its key on C{context}.

    @raise TLSConfigError: when the key does not belong to the leaf, or OpenSSL refuses them.
    """
    leaf = chain[0]
    if spki(leaf.public_key()) != spki(key.public_key()):
        raise TLSConfigError(
            key_path,
            f"key file: this key does not belong to the certificate in {cert_path} "
            f"(certificate key pin {public_key_pin(leaf)})",
        )
    try:
        context.use_certificate(leaf)
        context.use_privatekey(key)  # type: ignore[arg-type]
        for extra in chain[1:]:
            context.add_extra_chain_cert(extra)
        context.check_privatekey()
    except SSL.Error as e:
        raise TLSConfigError(
            cert_path, f"OpenSSL refused the certificate or key ({describe_tls_error(e)})"
        ) from None

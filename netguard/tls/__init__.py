# -*- test-case-name: tests.test_tls -*-
"""
TLS for netguard: hardened server contexts with live reload (L{server}), verified client
options with optional key pinning (L{client}), certificates, keys and self-signed
certificates (L{certificates}), and the channel binding SCRAM-SHA-256-PLUS uses (L{binding}).

Server side::

    server_tls = load_server_context(ServerTLSSettings("cert.pem", "key.pem"))
    endpoint = TLSServerEndpoint(serverFromString(reactor, "tcp:7700"), server_tls)

Client side::

    creator = client_tls_options("gw.example.org", pin_sha256="8Rw...=")
    endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "gw.example.org", 7700))

docs/tls.md is the specification: what the contexts enforce, reload, pins, channel binding.
"""

from netguard.tls.binding import (
    TLS_SERVER_END_POINT,
    ServedBinding,
    channel_binding_for,
    server_end_point_binding,
    tls_server_end_point,
)
from netguard.tls.certificates import (
    EXPIRY_WARNING_DAYS,
    MAX_PEM_BYTES,
    MIN_RSA_BITS,
    CertificateInfo,
    build_self_signed,
    make_self_signed,
    public_key_pin,
)
from netguard.tls.client import ClientTLS, client_tls_options, parse_pins
from netguard.tls.connection import (
    TLSConnectionInfo,
    connection_info,
    describe_tls_error,
    tls_connection_of,
)
from netguard.tls.context import (
    CONTEXT_OPTIONS,
    KEY_EXCHANGE_GROUPS,
    MIN_VERSIONS,
    TICKET_LIFETIME,
    TLS12_CIPHERS,
    TLS13_CIPHERSUITES,
)
from netguard.tls.errors import TLSConfigError, TLSVerificationError
from netguard.tls.server import (
    ServerTLS,
    ServerTLSSettings,
    TLSServerEndpoint,
    load_server_context,
)

__all__ = [
    "CONTEXT_OPTIONS",
    "EXPIRY_WARNING_DAYS",
    "KEY_EXCHANGE_GROUPS",
    "MAX_PEM_BYTES",
    "MIN_RSA_BITS",
    "MIN_VERSIONS",
    "TICKET_LIFETIME",
    "TLS12_CIPHERS",
    "TLS13_CIPHERSUITES",
    "TLS_SERVER_END_POINT",
    "CertificateInfo",
    "ClientTLS",
    "ServedBinding",
    "ServerTLS",
    "ServerTLSSettings",
    "TLSConfigError",
    "TLSConnectionInfo",
    "TLSServerEndpoint",
    "TLSVerificationError",
    "build_self_signed",
    "channel_binding_for",
    "client_tls_options",
    "connection_info",
    "describe_tls_error",
    "load_server_context",
    "make_self_signed",
    "parse_pins",
    "public_key_pin",
    "server_end_point_binding",
    "tls_connection_of",
    "tls_server_end_point",
]

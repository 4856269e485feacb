# -*- test-case-name: tests.test_socks5 -*-
"""
A SOCKS5 client endpoint: RFC 1928 CONNECT with RFC 1929 username/password.

L{SOCKS5ClientEndpoint} reaches C{host:port} through a SOCKS5 proxy that is itself reached
through any client endpoint, and composes like Twisted's own wrappers::

    proxy = HostnameEndpoint(reactor, "127.0.0.1", 1080)
    endpoint = SOCKS5ClientEndpoint(proxy, "example.com", 443, reactor=reactor)
    tls = wrapClientTLS(optionsForClientTLS("example.com"), endpoint)

As an endpoint string (the C{socks5:} plugin, for C{clientFromString})::

    socks5:host=example.com:port=443:proxy_host=127.0.0.1:proxy_port=1080
    socks5:host=10.0.0.5:port=redis:proxy_host=socks.internal:user=ng:password_file=/etc/ng/socks
    socks5:host=\\:\\:1:port=6379:proxy_host=127.0.0.1:timeout=3
    socks5:host=db.internal:port=5432:proxy=unix\\:path=/run/dante.sock

Grammar, credentials, bounds, errors and log events: C{docs/endpoints.md}. The modules:
C{wire} (the values messages carry), C{errors}, C{negotiation} (the I/O-free state machine),
C{endpoint} (the Twisted endpoint and the C{socks5:} string).
"""

from netguard.outbound.socks5.endpoint import (
    DEFAULT_TIMEOUT,
    ENDPOINT_KEYS,
    SOCKS5ClientEndpoint,
    endpoint_from_string_args,
)
from netguard.outbound.socks5.errors import (
    EXCERPT_LIMIT,
    REPLY_ERRORS,
    AddressTypeNotSupported,
    AuthenticationFailed,
    CommandNotSupported,
    ConnectionNotAllowed,
    ConnectionRefused,
    GeneralFailure,
    HostUnreachable,
    NetworkUnreachable,
    NoAcceptableMethods,
    SOCKSConnectionClosed,
    SOCKSError,
    SOCKSProtocolError,
    SOCKSReplyError,
    SOCKSTimeout,
    TTLExpired,
    UnassignedReplyCode,
    reply_error,
)
from netguard.outbound.socks5.negotiation import (
    MAX_BOUND_NAME,
    MAX_REPLY_SIZE,
    NegotiationResult,
    NegotiationStep,
    SOCKS5Negotiation,
    is_valid_bound_name,
    target_address,
)
from netguard.outbound.socks5.wire import (
    AUTH_VERSION,
    CMD_CONNECT,
    SOCKS_VERSION,
    AddressType,
    Method,
    SOCKSAddress,
)
from netguard.secretfile import read_password_file

__all__ = [
    "AUTH_VERSION",
    "CMD_CONNECT",
    "DEFAULT_TIMEOUT",
    "ENDPOINT_KEYS",
    "EXCERPT_LIMIT",
    "MAX_BOUND_NAME",
    "MAX_REPLY_SIZE",
    "AddressType",
    "AddressTypeNotSupported",
    "AuthenticationFailed",
    "CommandNotSupported",
    "ConnectionNotAllowed",
    "ConnectionRefused",
    "GeneralFailure",
    "HostUnreachable",
    "Method",
    "NegotiationResult",
    "NegotiationStep",
    "NetworkUnreachable",
    "NoAcceptableMethods",
    "REPLY_ERRORS",
    "SOCKS_VERSION",
    "SOCKS5ClientEndpoint",
    "SOCKS5Negotiation",
    "SOCKSAddress",
    "SOCKSConnectionClosed",
    "SOCKSError",
    "SOCKSProtocolError",
    "SOCKSReplyError",
    "SOCKSTimeout",
    "TTLExpired",
    "UnassignedReplyCode",
    "endpoint_from_string_args",
    "is_valid_bound_name",
    "read_password_file",
    "reply_error",
    "target_address",
]

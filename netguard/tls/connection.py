# -*- test-case-name: tests.test_tls -*-
"""
What one live TLS connection says about itself: the OpenSSL connection under a Twisted
transport, its negotiated parameters for the log, and short texts for TLS failures.
"""

from __future__ import annotations

from typing import Any

import attrs
from OpenSSL import SSL
from twisted.python.failure import Failure

try:
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover - depends on the installed pyOpenSSL
    _lib = None

from netguard.tls.certificates import public_key_pin
from netguard.tls.errors import TLSVerificationError


@attrs.frozen
class TLSConnectionInfo:
    """
    The negotiated parameters of one TLS connection, for the log.

    @ivar version: e.g. C{"TLSv1.3"}.
    @ivar cipher: e.g. C{"TLS_AES_128_GCM_SHA256"}.
    @ivar peer_subject: the subject of the peer's certificate (RFC 4514), or L{None}; on a
        server this is a client certificate, verified against the CA file if one was set.
        Text the peer's CA chose: escape it before logging.
    @ivar peer_pin: the public-key pin of the peer's certificate, or L{None}.
    @ivar resumed: whether the session was resumed (from a ticket) rather than made by a
        full handshake; on a resumed session the peer's certificate is the one verified
        when the session was first made.
    """

    version: str | None
    cipher: str | None
    peer_subject: str | None
    peer_pin: str | None
    resumed: bool = False


def session_resumed(connection: SSL.Connection) -> bool:
    """
    Whether OpenSSL resumed a session on C{connection} (C{SSL_session_reused}, which
    pyOpenSSL does not wrap); L{False} where the binding is missing.
    """
    ssl = getattr(connection, "_ssl", None)
    if _lib is None or ssl is None or not hasattr(_lib, "SSL_session_reused"):
        return False
    return bool(_lib.SSL_session_reused(ssl))


def tls_connection_of(transport: Any) -> SSL.Connection | None:
    """
    The OpenSSL connection under a Twisted transport, if it is a TLS one.

    A protocol wrapped by L{TLSMemoryBIOFactory} (C{ssl:} endpoints, L{TLSServerEndpoint},
    C{wrapClientTLS}) has a L{twisted.protocols.tls.TLSMemoryBIOProtocol} as its transport,
    whose C{getHandle()} is the L{SSL.Connection}; protocol wrappers delegate C{getHandle}
    to their own transport. A plain TCP transport's handle is a socket: L{None}.

    @param transport: a transport, or L{None}.
    @return: the connection, or L{None} when the transport is not TLS (or is gone).
    """
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    try:
        handle = get_handle()
    except Exception:
        return None
    return handle if isinstance(handle, SSL.Connection) else None


def connection_info(transport: Any) -> TLSConnectionInfo | None:
    """
    Describe the TLS parameters of a connection, for the log.

    @param transport: the protocol's transport.
    @return: the description, or L{None} when the transport is not TLS.
    """
    connection = tls_connection_of(transport)
    if connection is None:
        return None
    peer = connection.get_peer_certificate(as_cryptography=True)
    return TLSConnectionInfo(
        version=connection.get_protocol_version_name() or None,
        cipher=connection.get_cipher_name(),
        peer_subject=peer.subject.rfc4514_string() if peer is not None else None,
        peer_pin=public_key_pin(peer) if peer is not None else None,
        resumed=session_resumed(connection),
    )


def describe_tls_error(reason: Failure | BaseException | None) -> str | None:
    """
    A short text for a TLS failure (a handshake refused, plain text on a TLS port, a client
    without a certificate...), for the C{reason} of a log event.

    @param reason: what a protocol's C{connectionLost} got, or an exception.
    @return: the OpenSSL reasons joined by C{"; "} (e.g. C{"unsupported protocol"},
        C{"no shared cipher"}, C{"peer did not return a certificate"}), the text of a
        L{TLSVerificationError}, or L{None} when C{reason} is no TLS error.
    """
    value = reason.value if isinstance(reason, Failure) else reason
    if isinstance(value, TLSVerificationError):
        return value.reason
    if not isinstance(value, SSL.Error):
        return None
    details = value.args[0] if value.args else None
    texts: list[str] = []
    if isinstance(details, list):
        for item in details:
            if isinstance(item, tuple) and item:
                texts.append(str(item[-1]))
    return "; ".join(t for t in texts if t) or type(value).__name__

# -*- test-case-name: tests.test_tls_binding -*-
"""
Channel binding for SCRAM-SHA-256-PLUS: the C{tls-server-end-point} data (RFC 5929) of a
certificate, and of the certificate one live connection was actually served.

The TLS layer computes these bytes and hands them to SCRAM (L{netguard.auth.scram}), which
treats them as opaque; see docs/tls.md (channel binding) for why they are read from the
connection and not from the configuration.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import SignatureAlgorithmOID
from OpenSSL import SSL

from netguard.tls.connection import tls_connection_of

#: The channel-binding type netguard uses (RFC 5929).
TLS_SERVER_END_POINT = "tls-server-end-point"

#: Signature hashes RFC 5929 section 4.1 replaces with SHA-256.
_UPGRADED_TO_SHA256 = ("md5", "sha1")


def _binding_hash(certificate: x509.Certificate) -> str:
    """
    The name (for L{hashlib.new}) of the hash that binds C{certificate}.
    """
    try:
        algorithm = certificate.signature_hash_algorithm
    except UnsupportedAlgorithm as e:
        raise ValueError(f"no tls-server-end-point data: {e}") from None
    if algorithm is None:
        # Signature algorithms without a separate hash: RFC 5929 says nothing; Ed25519
        # signs with SHA-512 internally, which is what scramp and asn1crypto use too.
        if certificate.signature_algorithm_oid == SignatureAlgorithmOID.ED25519:
            return "sha512"
        raise ValueError(
            "no tls-server-end-point data: no hash function is defined for the signature "
            f"algorithm {certificate.signature_algorithm_oid.dotted_string}"
        )
    name = algorithm.name.replace("-", "_")
    return "sha256" if name in _UPGRADED_TO_SHA256 else name


def tls_server_end_point(cert_der: bytes) -> bytes:
    """
    The C{tls-server-end-point} channel-binding data of a certificate (RFC 5929 section 4.1).

    This is the hash of the DER certificate, with the hash function of the certificate's
    signature algorithm, where MD5 and SHA-1 are replaced by SHA-256. (For signature
    algorithms without a separate hash, RFC 5929 says nothing: Ed25519 uses SHA-512, as
    scramp does; others are refused.)

    @param cert_der: the server certificate, DER-encoded.
    @return: the channel-binding data.
    @raise ValueError: if the certificate cannot be parsed or its hash is not available.
    """
    try:
        certificate = x509.load_der_x509_certificate(cert_der)
    except ValueError as e:
        raise ValueError(
            f"no tls-server-end-point data: cannot parse the certificate ({e})"
        ) from None
    name = _binding_hash(certificate)
    try:
        return hashlib.new(name, cert_der).digest()
    except (ValueError, TypeError):
        raise ValueError(f"no tls-server-end-point data: hash {name} is not available") from None


def server_end_point_binding(cert_der: bytes) -> tuple[str, bytes]:
    """
    The channel binding of a server certificate, ready for the SCRAM exchanges.

    @param cert_der: the server's certificate, DER.
    @return: C{("tls-server-end-point", data)} (RFC 5929).
    @raise ValueError: if the certificate cannot be parsed.
    """
    return (TLS_SERVER_END_POINT, tls_server_end_point(cert_der))


@attrs.frozen
class ServedBinding:
    """
    The channel binding of the certificate a server context serves, kept as that context's
    application data (C{SSL.Context.set_app_data}) so that each connection reads it instead
    of converting and hashing the certificate again. A context serves one certificate for
    its whole life (a reload makes a new context), so the value never goes stale.

    @ivar binding: C{("tls-server-end-point", data)}.
    """

    binding: tuple[str, bytes]


def _served_certificate(
    connection: SSL.Connection, side: Literal["server", "client"]
) -> x509.Certificate | None:
    if side == "server":
        return connection.get_certificate(as_cryptography=True)
    return connection.get_peer_certificate(as_cryptography=True)


def channel_binding_for(
    transport: Any, side: Literal["server", "client"]
) -> tuple[str, bytes] | None:
    """
    The C{tls-server-end-point} channel binding of one connection, from the certificate
    that this connection's server presented (read from the connection, so a reload does not
    change it).

    @param transport: the protocol's transport.
    @param side: C{"server"} on the gateway (our own certificate on this connection),
        C{"client"} on a client (the server's certificate; available once the handshake is
        done, which it is when the first application byte arrives).
    On the server side, a context that carries a L{ServedBinding} (every context
    L{netguard.tls.server} builds) answers from it; any other context has the certificate
    read and hashed.

    @return: C{("tls-server-end-point", data)}, or L{None} when the transport is not TLS or
        has no server certificate (yet).
    @raise ValueError: for a C{side} other than the two above.
    """
    if side not in ("server", "client"):
        raise ValueError("side must be 'server' or 'client'")
    connection = tls_connection_of(transport)
    if connection is None:
        return None
    if side == "server":
        served = connection.get_context().get_app_data()
        if isinstance(served, ServedBinding):
            return served.binding
    certificate = _served_certificate(connection, side)
    if certificate is None:
        return None
    return server_end_point_binding(certificate.public_bytes(serialization.Encoding.DER))

# -*- test-case-name: tests.test_tls -*-
"""
TLS for netguard: hardened server contexts with live reload, verified client options with
optional key pinning, channel-binding data read from the connection itself, and
self-signed certificates for a first deployment.

Server side::

    server_tls = load_server_context(ServerTLSSettings("cert.pem", "key.pem"))
    endpoint = TLSServerEndpoint(serverFromString(reactor, "tcp:7700"), server_tls)
    ...
    server_tls.reload()      # on SIGHUP: new connections get the new certificate

Client side::

    creator = client_tls_options("gw.example.org", pin_sha256="8Rw...=")
    endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "gw.example.org", 7700))

What the server context enforces (L{load_server_context}):
  - TLS 1.2 minimum (1.3 preferred; C{min_version="1.3"} for 1.3 only); SSLv3, TLS 1.0 and
    1.1 are never negotiated;
  - TLS 1.2: ECDHE key exchange with AEAD ciphers only (AES-GCM, ChaCha20-Poly1305), for
    ECDSA and RSA certificates; no static RSA, no DHE, no CBC, no SHA-1 MACs. TLS 1.3: its
    three AEAD suites, set explicitly (no CCM, no integrity-only suites). Key-exchange groups
    are restricted to elliptic curves (X25519MLKEM768 where the library has it, X25519, P-256,
    P-384), so finite-field DHE is not negotiated in TLS 1.3 either;
  - server cipher preference, no compression, no renegotiation;
  - no session resumption (see below);
  - optional client certificates verified against C{client_ca_file}, required or not.

Session resumption is off, deliberately (Twisted's default too): netguard's own clients
never resume a session (Twisted keeps no client session cache), so resumption would only
serve third-party clients, and it costs: TLS 1.2 tickets encrypted under one process-wide
key weaken forward secrecy; a resumed session skips the client-certificate check against the
I{current} CA file after a reload; and after a certificate reload a resumed session would be
bound (tls-server-end-point) to a certificate other than the one the server now holds. No
session cache, no tickets (C{OP_NO_TICKET}); TLS 1.3 handshakes stay full handshakes.

Key-file permissions: a key file that other users (the "world") can read or write is
refused; a group-readable key file is accepted with a warning, since Debian's C{ssl-cert}
convention (mode 0640, group C{ssl-cert}) is a legitimate way to share a key with a daemon.

Reload (L{ServerTLS.reload}) reads the files again and swaps the context only when everything
loaded and checked: new connections use the new certificate, live connections keep theirs,
and a bad file leaves the old context in place and raises L{TLSConfigError} (and logs why).

Channel binding: SCRAM-SHA-256-PLUS binds to C{tls-server-end-point} (RFC 5929). After a
reload, a connection must use the certificate it was actually served, so
L{channel_binding_for} reads it from the connection (our certificate on the server side, the
peer's on the client side), never from the current configuration.

Client verification (L{client_tls_options}) can never be switched off: either the server's
certificate chain is verified against the system trust roots or a CA file and its name
against the host name (through C{service_identity}), or a pin of its public key is given as
an explicit alternative for self-signed deployments, or both (then both must hold).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netguard.auth.scram import TLS_SERVER_END_POINT, tls_server_end_point
from netguard.tls_halfclose import HalfCloseTLSFactory

__all__ = [
    "CONTEXT_OPTIONS",
    "KEY_EXCHANGE_GROUPS",
    "TLS12_CIPHERS",
    "TLS13_CIPHERSUITES",
    "CertificateInfo",
    "ClientTLS",
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
]

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

#: The accepted values of L{ServerTLSSettings.min_version}.
MIN_VERSIONS: Mapping[str, int] = MappingProxyType(
    {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
)

#: The largest PEM file read, in bytes (a certificate chain is a few kilobytes).
MAX_PEM_BYTES = 1 << 20

#: A served certificate that expires within this many days is reported in the warnings.
EXPIRY_WARNING_DAYS = 14

#: The smallest RSA key accepted, in bits.
MIN_RSA_BITS = 2048

_ALLOWED_CURVES = ("secp256r1", "secp384r1")


class TLSConfigError(ValueError):
    """
    A TLS file or setting cannot be used.

    @ivar path: the file (or setting name) at fault, or L{None}.
    @ivar problem: what is wrong with it, in words an operator can act on.
    """

    def __init__(self, path: str | None, problem: str) -> None:
        """
        @param path: the file or setting at fault.
        @param problem: what is wrong.
        """
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


class TLSVerificationError(Exception):
    """
    The server's certificate failed our verification (name or pin); the connection is
    aborted during the handshake and this is the reason its protocol is given.

    @ivar reason: what failed, in words.
    """

    def __init__(self, reason: str) -> None:
        """
        @param reason: what failed.
        """
        super().__init__(reason)
        self.reason = reason


class _WallClock:
    """
    The system's clock, for callers that inject none.
    """

    def seconds(self) -> float:
        return time.time()


def _now(clock: IReactorTime | None) -> datetime.datetime:
    source: Any = clock if clock is not None else _WallClock()
    seconds = float(source.seconds())
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


# -- settings and values -------------------------------------------------------------------------


def _check_min_version(instance: Any, attribute: Any, value: str) -> None:
    if value not in MIN_VERSIONS:
        raise TLSConfigError("min_version", f"must be one of {', '.join(MIN_VERSIONS)}")


@attrs.frozen
class ServerTLSSettings:
    """
    Where a TLS listener's certificate and key are, and whom it asks for certificates.

    @ivar cert_file: PEM file with the server certificate first, optionally followed by its
        chain (a "fullchain" file).
    @ivar key_file: PEM file with the unencrypted private key (may be the same file).
    @ivar chain_file: optional PEM file with more chain certificates.
    @ivar client_ca_file: optional PEM file of the CA certificates that client certificates
        must chain to; when set, a client certificate that is presented is verified.
    @ivar require_client_cert: refuse clients without a valid certificate (needs
        C{client_ca_file}).
    @ivar min_version: C{"1.2"} (the default) or C{"1.3"}.
    """

    cert_file: str
    key_file: str
    chain_file: str | None = None
    client_ca_file: str | None = None
    require_client_cert: bool = False
    min_version: str = attrs.field(default="1.2", validator=_check_min_version)

    def __attrs_post_init__(self) -> None:
        if self.require_client_cert and not self.client_ca_file:
            raise TLSConfigError(
                "require_client_cert",
                "needs client_ca_file, the CA that client certificates must chain to",
            )


@attrs.frozen
class CertificateInfo:
    """
    What an operator needs to know about a certificate.

    @ivar subject: the subject, RFC 4514.
    @ivar issuer: the issuer, RFC 4514.
    @ivar serial: the serial number, hexadecimal.
    @ivar not_before: start of validity (UTC).
    @ivar not_after: end of validity (UTC).
    @ivar sha256_fingerprint: SHA-256 of the DER certificate, colon-separated hex.
    @ivar pin_sha256: the public-key pin (L{public_key_pin}) a client can use.
    @ivar dns_names: the DNS names in the subject alternative name.
    @ivar ip_addresses: the IP addresses in the subject alternative name.
    @ivar key_type: e.g. C{"EC secp256r1"} or C{"RSA 3072"}.
    """

    subject: str
    issuer: str
    serial: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    sha256_fingerprint: str
    pin_sha256: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    key_type: str

    @classmethod
    def of(cls, certificate: x509.Certificate) -> CertificateInfo:
        """
        Describe C{certificate}.

        @param certificate: the certificate.
        @return: its description.
        """
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns_names = tuple(san.get_values_for_type(x509.DNSName))
            ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            dns_names, ips = (), ()
        digest = certificate.fingerprint(hashes.SHA256()).hex().upper()
        return cls(
            subject=certificate.subject.rfc4514_string(),
            issuer=certificate.issuer.rfc4514_string(),
            serial=format(certificate.serial_number, "x"),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            sha256_fingerprint=":".join(digest[i : i + 2] for i in range(0, len(digest), 2)),
            pin_sha256=public_key_pin(certificate),
            dns_names=dns_names,
            ip_addresses=ips,
            key_type=_key_type(certificate.public_key()),
        )


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
    """

    version: str | None
    cipher: str | None
    peer_subject: str | None
    peer_pin: str | None


# -- small pure helpers ---------------------------------------------------------------------------


def _key_type(key: PublicKeyTypes) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_pin(certificate: x509.Certificate) -> str:
    """
    The public-key pin of a certificate: base64 of the SHA-256 of its DER
    SubjectPublicKeyInfo (HPKP's C{pin-sha256}, the value of C{curl --pinnedpubkey sha256//}).
    The pin survives certificate renewal with the same key.

    @param certificate: the certificate.
    @return: the pin, 44 characters of base64.
    """
    digest = hashlib.sha256(_spki(certificate.public_key())).digest()
    return base64.b64encode(digest).decode("ascii")


def parse_pins(value: str | Sequence[str]) -> frozenset[bytes]:
    """
    Parse one or more public-key pins.

    @param value: a pin, several pins separated by commas (for key rotation), or a sequence
        of pins; each is base64 of 32 bytes, optionally prefixed C{sha256//} as curl writes it.
    @return: the SHA-256 digests.
    @raise TLSConfigError: if there is no pin or one is not base64 of a SHA-256 digest.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    pins = set()
    for item in items:
        text = item.strip()
        if text.startswith("sha256//"):
            text = text[len("sha256//") :]
        try:
            digest = base64.b64decode(text.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            digest = b""
        if len(digest) != 32:
            raise TLSConfigError(
                "pin_sha256",
                "each pin must be base64 of a SHA-256 digest (44 characters ending in '='), "
                "as printed by 'netguard cert selfsigned'",
            )
        pins.add(digest)
    if not pins:
        raise TLSConfigError("pin_sha256", "no pin given")
    return frozenset(pins)


def server_end_point_binding(cert_der: bytes) -> tuple[str, bytes]:
    """
    The channel binding of a server certificate, ready for the SCRAM exchanges.

    @param cert_der: the server's certificate, DER.
    @return: C{("tls-server-end-point", data)} (RFC 5929).
    @raise ValueError: if the certificate cannot be parsed.
    """
    return (TLS_SERVER_END_POINT, tls_server_end_point(cert_der))


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
    @return: C{("tls-server-end-point", data)}, or L{None} when the transport is not TLS or
        has no server certificate (yet).
    @raise ValueError: for a C{side} other than the two above.
    """
    if side not in ("server", "client"):
        raise ValueError("side must be 'server' or 'client'")
    connection = tls_connection_of(transport)
    if connection is None:
        return None
    certificate = _served_certificate(connection, side)
    if certificate is None:
        return None
    return server_end_point_binding(certificate.public_bytes(serialization.Encoding.DER))


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


# -- reading and checking files ------------------------------------------------------------------


def _read_pem(path: str, what: str) -> bytearray:
    """
    Read a PEM file, bounded. The result is a L{bytearray} so the caller can wipe a key's
    bytes once they are parsed (L{_wipe}).
    """
    try:
        with open(path, "rb") as handle:
            data = bytearray(handle.read(MAX_PEM_BYTES + 1))
    except FileNotFoundError:
        raise TLSConfigError(path, f"{what}: no such file") from None
    except IsADirectoryError:
        raise TLSConfigError(path, f"{what}: is a directory, not a file") from None
    except PermissionError:
        raise TLSConfigError(
            path, f"{what}: cannot read it (permission denied for uid {os.geteuid()})"
        ) from None
    except OSError as e:
        raise TLSConfigError(path, f"{what}: cannot read it ({e.strerror})") from None
    if len(data) > MAX_PEM_BYTES:
        raise TLSConfigError(path, f"{what}: larger than {MAX_PEM_BYTES} bytes")
    if b"-----BEGIN " not in data:
        raise TLSConfigError(
            path,
            f"{what}: not a PEM file (DER is not accepted; convert it with "
            "'openssl x509 -inform der' or 'openssl pkey -inform der')",
        )
    return data


def _load_certificates(path: str, what: str) -> list[x509.Certificate]:
    data = _read_pem(path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSConfigError(path, f"{what}: holds no PEM certificate")
    try:
        return x509.load_pem_x509_certificates(bytes(data))
    except ValueError as e:
        raise TLSConfigError(path, f"{what}: cannot parse its certificates ({e})") from None


def _key_file_mode(path: str) -> str | None:
    """
    Refuse a key file others can use; return a warning for a group-readable one.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise TLSConfigError(path, f"key file: cannot stat it ({e.strerror})") from None
    if mode & 0o007:
        raise TLSConfigError(
            path,
            f"key file: mode {mode & 0o777:04o} lets every user on this host use the key; "
            f"run 'chmod 600 {path}'",
        )
    if mode & 0o070:
        return (
            f"key file {path} is accessible to its group (mode {mode & 0o777:04o}); "
            "use mode 0600 unless the group exists only to share this key"
        )
    return None


def _wipe(buffer: bytearray) -> None:
    """
    Overwrite a buffer that held key material with zeros, so the PEM text of a key does not
    linger in the heap after parsing.
    """
    buffer[:] = bytes(len(buffer))


def _load_private_key(path: str) -> tuple[PrivateKeyTypes, str | None]:
    warning = _key_file_mode(path)
    data = _read_pem(path, "key file")
    try:
        return _parse_private_key(path, data), warning
    finally:
        _wipe(data)


def _parse_private_key(path: str, data: bytearray) -> PrivateKeyTypes:
    if b"PRIVATE KEY-----" not in data:
        raise TLSConfigError(path, "key file: holds no PEM private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(
            path,
            "key file: the key is encrypted; netguard needs an unencrypted key "
            "(protect it with file permissions; decrypt with 'openssl pkey -in KEY -out NEW')",
        ) from None
    except ValueError as e:
        raise TLSConfigError(path, f"key file: cannot parse the private key ({e})") from None
    except UnsupportedAlgorithm as e:
        raise TLSConfigError(path, f"key file: unsupported key algorithm ({e})") from None
    if isinstance(key, dsa.DSAPrivateKey):
        raise TLSConfigError(path, "key file: DSA keys are not supported; use EC or RSA")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise TLSConfigError(
            path, f"key file: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} needed"
        )
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name not in _ALLOWED_CURVES:
        raise TLSConfigError(
            path, f"key file: EC curve {key.curve.name} is not supported; use P-256 or P-384"
        )
    if not isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise TLSConfigError(path, f"key file: {type(key).__name__} keys are not supported")
    return key


def _check_validity(
    certificate: x509.Certificate, path: str, now: datetime.datetime
) -> str | None:
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    if now < not_before:
        raise TLSConfigError(
            path,
            f"certificate is not valid yet: valid from {not_before.isoformat()} "
            f"(now {now.isoformat(timespec='seconds')}; check the clock)",
        )
    if now > not_after:
        raise TLSConfigError(path, f"certificate expired on {not_after.isoformat()}")
    left = not_after - now
    if left < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        return f"certificate in {path} expires on {not_after.isoformat()} (in {left.days} days)"
    return None


def _chain_warnings(chain: Sequence[x509.Certificate], path: str) -> list[str]:
    warnings = []
    for index in range(1, len(chain)):
        try:
            chain[index - 1].verify_directly_issued_by(chain[index])
        except (ValueError, TypeError, InvalidSignature):
            warnings.append(
                f"chain in {path}: certificate {index + 1} "
                f"({chain[index].subject.rfc4514_string()}) did not issue certificate "
                f"{index}; clients may fail to build the chain"
            )
    return warnings


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


def _base_context(method: int, min_version: int) -> SSL.Context:
    context = SSL.Context(method)
    context.set_min_proto_version(min_version)
    context.set_options(CONTEXT_OPTIONS)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    context.set_tls13_ciphersuites(TLS13_CIPHERSUITES.encode("ascii"))
    _set_groups(context)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return context


def _use_identity(
    context: SSL.Context,
    key: PrivateKeyTypes,
    chain: Sequence[x509.Certificate],
    cert_path: str,
    key_path: str,
) -> None:
    leaf = chain[0]
    if _spki(leaf.public_key()) != _spki(key.public_key()):
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


# -- server side ----------------------------------------------------------------------------------


@attrs.frozen
class _Loaded:
    context: SSL.Context
    certificate: x509.Certificate
    info: CertificateInfo
    binding: tuple[str, bytes]
    warnings: tuple[str, ...]


def _load_server(settings: ServerTLSSettings, clock: IReactorTime | None) -> _Loaded:
    warnings: list[str] = []
    chain = _load_certificates(settings.cert_file, "certificate file")
    key, key_warning = _load_private_key(settings.key_file)
    if key_warning:
        warnings.append(key_warning)
    if settings.chain_file:
        chain = chain + _load_certificates(settings.chain_file, "chain file")
    leaf = chain[0]
    expiring = _check_validity(leaf, settings.cert_file, _now(clock))
    if expiring:
        warnings.append(expiring)
    warnings.extend(_chain_warnings(chain, settings.chain_file or settings.cert_file))
    context = _base_context(SSL.TLS_SERVER_METHOD, MIN_VERSIONS[settings.min_version])
    _use_identity(context, key, chain, settings.cert_file, settings.key_file)
    # Required by OpenSSL for client certificates; harmless without a session cache.
    context.set_session_id(b"netguard")
    if settings.client_ca_file:
        cas = _load_certificates(settings.client_ca_file, "client CA file")
        store = context.get_cert_store()
        assert store is not None
        for ca in cas:
            store.add_cert(crypto.X509.from_cryptography(ca))
            context.add_client_ca(ca)
        mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
        if settings.require_client_cert:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        context.set_verify(mode)
    else:
        context.set_verify(SSL.VERIFY_NONE)
    der = leaf.public_bytes(serialization.Encoding.DER)
    return _Loaded(
        context=context,
        certificate=leaf,
        info=CertificateInfo.of(leaf),
        binding=server_end_point_binding(der),
        warnings=tuple(warnings),
    )


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS identity of one listener: hands each new connection the context in force, and
    swaps it on L{reload}.

    Pass it wherever Twisted wants a server connection creator (L{TLSServerEndpoint},
    C{SSL4ServerEndpoint}, C{listenSSL}, L{TLSMemoryBIOFactory}).

    @ivar settings: the settings in force.
    """

    log = Logger()

    def __init__(
        self,
        settings: ServerTLSSettings,
        loaded: _Loaded,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        Use L{load_server_context} rather than this.
        """
        self.settings = settings
        self._loaded: _Loaded | None = loaded
        self._clock = clock

    def _in_force(self) -> _Loaded:
        if self._loaded is None:
            raise TLSConfigError(self.settings.key_file, "the key was dropped at shutdown")
        return self._loaded

    @property
    def context(self) -> SSL.Context:
        """
        @return: the context new connections get.
        @raise TLSConfigError: after L{forget}.
        """
        return self._in_force().context

    @property
    def certificate(self) -> x509.Certificate:
        """
        @return: the certificate new connections are served.
        """
        return self._in_force().certificate

    @property
    def certificate_info(self) -> CertificateInfo:
        """
        @return: the description of L{certificate}.
        """
        return self._in_force().info

    @property
    def warnings(self) -> tuple[str, ...]:
        """
        @return: what the last successful load found questionable but accepted.
        """
        return self._in_force().warnings

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        A new server connection on the context in force now.

        @param tlsProtocol: the L{twisted.protocols.tls.TLSMemoryBIOProtocol}.
        @return: the connection.
        """
        return SSL.Connection(self._in_force().context, None)

    def channel_binding(self) -> tuple[str, bytes]:
        """
        The channel binding of the certificate served to new connections. A live connection
        must use L{channel_binding_for} instead: it may have been served an older one.

        @return: C{("tls-server-end-point", data)}.
        """
        return self._in_force().binding

    def reload(self, settings: ServerTLSSettings | None = None) -> CertificateInfo:
        """
        Read the files again (or those of new C{settings}) and, if all is well, serve the
        result to new connections; live connections keep what they have.

        @param settings: new settings, or L{None} to re-read the current ones.
        @return: the description of the certificate now served.
        @raise TLSConfigError: if something is wrong; the old context stays in force.
        """
        settings = settings if settings is not None else self.settings
        current = self._in_force()
        try:
            loaded = _load_server(settings, self._clock)
        except TLSConfigError as e:
            self.log.error(
                "TLS reload failed, keeping certificate {subject}: {problem}",
                event="tls.reload_failed",
                path=e.path,
                problem=e.problem,
                subject=current.info.subject,
            )
            raise
        self.settings = settings
        self._loaded = loaded
        self._log_loaded("tls.reloaded")
        return loaded.info

    def forget(self) -> bool:
        """
        Drop the context in force, and with it the private key, at shutdown. Once the last
        connection that uses the context is gone, OpenSSL frees the key, clearing its memory
        (C{EVP_PKEY_free} wipes private key material). Afterwards new connections, reloads and
        the properties raise L{TLSConfigError}; call it only once no listener uses this.

        @return: whether there was a key to drop (C{False} on a second call).
        """
        dropped, self._loaded = self._loaded is not None, None
        return dropped

    def _log_loaded(self, event: str) -> None:
        loaded = self._in_force()
        info = loaded.info
        self.log.info(
            "TLS certificate {subject} (pin-sha256 {pin}) valid until {not_after}",
            event=event,
            subject=info.subject,
            pin=info.pin_sha256,
            not_after=info.not_after.isoformat(),
            cert_file=self.settings.cert_file,
            client_certs=(
                "required"
                if self.settings.require_client_cert
                else "verified"
                if self.settings.client_ca_file
                else "off"
            ),
        )
        for warning in loaded.warnings:
            self.log.warn("TLS: {detail}", event="tls.warning", detail=warning)


def load_server_context(
    settings: ServerTLSSettings, clock: IReactorTime | None = None
) -> ServerTLS:
    """
    Load and check a listener's certificate, key, chain and client CAs, and build its
    hardened context (see the module docstring for what it enforces).

    @param settings: the files and choices.
    @param clock: the clock validity is checked against (the system clock by default).
    @return: the L{ServerTLS} serving that context.
    @raise TLSConfigError: naming the file and the problem, for a missing, unreadable,
        unparsable or encrypted file, a key that does not match the certificate, a
        certificate that is expired or not valid yet, a weak or unsupported key, or a key
        file that any user can read.
    """
    server_tls = ServerTLS(settings, _load_server(settings, clock), clock)
    server_tls._log_loaded("tls.loaded")
    return server_tls


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    Wrap any stream server endpoint (C{tcp:}, C{tcp6:}, C{unix:}, C{systemd:},
    C{haproxy:}...) so its connections speak TLS from the first byte with a L{ServerTLS}.

    With C{haproxy:}, the PROXY header is read first and TLS starts after it, as HAProxy
    sends them.
    """

    def __init__(self, endpoint: Any, server_tls: ServerTLS, clock: Any = None) -> None:
        """
        @param endpoint: the L{IStreamServerEndpoint} to listen on.
        @param server_tls: the TLS identity.
        @param clock: the clock of Twisted's small-write aggregation (the reactor by default).
        """
        self.endpoint = endpoint
        self.server_tls = server_tls
        self._clock = clock

    def listen(self, protocolFactory: Any) -> Any:
        """
        Listen, wrapping C{protocolFactory}'s protocols in TLS.

        @param protocolFactory: the application's L{IProtocolFactory}.
        @return: the wrapped endpoint's L{Deferred} of an L{IListeningPort}.
        """
        creator: Any = self.server_tls
        return self.endpoint.listen(
            HalfCloseTLSFactory(creator, False, protocolFactory, self._clock)
        )


# -- client side ----------------------------------------------------------------------------------


class _Verification:
    """
    The verification state of one client connection.
    """

    def __init__(self) -> None:
        self.leaf_checked = False
        self.failure: str | None = None


@implementer(IOpenSSLClientConnectionCreator)
class ClientTLS:
    """
    Client connection creator: verifies the server by chain and name, by key pin, or both.

    @ivar hostname: the name (or IP address) the server must prove.
    @ivar pins: accepted public-key digests; empty when none.
    @ivar ca_file: the CA file trusted instead of the system roots, or L{None}.
    @ivar chain_verified: whether the chain and name are checked (false only in pin-only
        mode).
    """

    log = Logger()

    def __init__(
        self,
        hostname: str,
        context: SSL.Context,
        *,
        pins: frozenset[bytes],
        ca_file: str | None,
        clock: IReactorTime | None,
    ) -> None:
        """
        Use L{client_tls_options} rather than this.
        """
        self.hostname = hostname
        self.pins = pins
        self.ca_file = ca_file
        self.chain_verified = not pins or ca_file is not None
        self._context = context
        self._clock = clock
        try:
            self._ip: str | None = str(ipaddress.ip_address(hostname))
        except ValueError:
            self._ip = None
        self._ascii = hostname if self._ip else hostname.encode("idna").decode("ascii")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        A new client connection that sends SNI (for names) and verifies the server.

        @param tlsProtocol: the L{twisted.protocols.tls.TLSMemoryBIOProtocol}.
        @return: the connection.
        """
        connection = SSL.Connection(self._context, None)
        if self._ip is None:
            connection.set_tlsext_host_name(self._ascii.encode("ascii"))
        state = _Verification()

        def verify(
            conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
        ) -> bool:
            return self._verify(state, conn, cert, errno, depth, ok)

        def info(conn: SSL.Connection, where: int, ret: int) -> None:
            if where & SSL.SSL_CB_HANDSHAKE_DONE and not state.leaf_checked:
                self._fail(conn, state.failure or "the server certificate was never checked")

        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        connection.set_info_callback(info)
        return connection

    def _fail(self, conn: SSL.Connection, reason: str) -> None:
        protocol = conn.get_app_data()
        if protocol is not None and hasattr(protocol, "failVerification"):
            protocol.failVerification(Failure(TLSVerificationError(reason)))

    def _check_leaf(self, certificate: x509.Certificate) -> str | None:
        if self.pins:
            digest = hashlib.sha256(_spki(certificate.public_key())).digest()
            if digest not in self.pins:
                return (
                    f"server key pin-sha256 {public_key_pin(certificate)} matches no "
                    "configured pin"
                )
        if self.chain_verified:
            try:
                if self._ip is not None:
                    verify_certificate_ip_address(certificate, self._ip)
                else:
                    verify_certificate_hostname(certificate, self._ascii)
            except (VerificationError, CertificateError) as e:
                return f"server certificate is not valid for {self.hostname!r}: {e}"
        else:
            now = _now(self._clock)
            if now < certificate.not_valid_before_utc:
                return "pinned server certificate is not valid yet"
            if now > certificate.not_valid_after_utc:
                return "pinned server certificate has expired"
        return None

    def _verify(
        self,
        state: _Verification,
        conn: SSL.Connection,
        cert: crypto.X509,
        errno: int,
        depth: int,
        ok: int,
    ) -> bool:
        try:
            if depth > 0:
                # Pin-only mode trusts no CA: only the leaf's key matters.
                return bool(ok) or not self.chain_verified
            if self.chain_verified and not ok:
                # OpenSSL's own verdict (untrusted, expired...) ends the handshake.
                return False
            problem = self._check_leaf(cert.to_cryptography())
            if problem is not None:
                state.failure = problem
                self._fail(conn, problem)
                return False
            state.leaf_checked = True
            return True
        except BaseException:
            # An exception must never escape into OpenSSL; refuse.
            self.log.failure("while verifying a server certificate", event="tls.verify_error")
            return False


def _load_client_identity(
    context: SSL.Context, client_cert: str, client_key: str, log: Logger
) -> None:
    chain = _load_certificates(client_cert, "client certificate file")
    key, warning = _load_private_key(client_key)
    if warning:
        log.warn("TLS: {detail}", event="tls.warning", detail=warning)
    _use_identity(context, key, chain, client_cert, client_key)


def client_tls_options(
    hostname: str,
    *,
    ca_file: str | None = None,
    pin_sha256: str | Sequence[str] | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    clock: IReactorTime | None = None,
) -> ClientTLS:
    """
    TLS options for a netguard client (C{netguard tunnel}, the C{netguard:} endpoint).

    The same protocol versions and AEAD suites as the server. The server is verified in one
    of three ways, never none:
      - default: its chain against the system trust roots and its name against
        C{hostname}, through C{service_identity};
      - C{ca_file}: the same, against the CAs of that file only (a self-signed
        certificate can be its own CA file);
      - C{pin_sha256}: its public key must match a pin; chain and name are not checked (the
        pin names the key exactly), validity dates are. With C{ca_file} as well, the chain,
        the name and the pin must all hold.

    @param hostname: the name or IP address the server must prove (also sent as SNI).
    @param ca_file: a PEM file of trusted CAs, instead of the system roots.
    @param pin_sha256: one pin, comma-separated pins, or a sequence (see L{parse_pins}).
    @param client_cert: a PEM certificate (and chain) for mutual TLS.
    @param client_key: its key (mode 0600; refused if others can read it).
    @param clock: the clock pin-mode validity is checked against.
    @return: an L{IOpenSSLClientConnectionCreator} for C{wrapClientTLS} and friends.
    @raise TLSConfigError: for an unusable file, a malformed pin, or one of C{client_cert}
        and C{client_key} without the other.
    @raise ValueError: for an empty host name.
    """
    if not hostname:
        raise ValueError("a host name is required to verify the server")
    if (client_cert is None) != (client_key is None):
        raise TLSConfigError("client_cert", "give both client_cert and client_key, or neither")
    pins = parse_pins(pin_sha256) if pin_sha256 is not None else frozenset()
    log = ClientTLS.log
    context = _base_context(SSL.TLS_CLIENT_METHOD, SSL.TLS1_2_VERSION)
    if ca_file is not None:
        store = context.get_cert_store()
        assert store is not None
        for ca in _load_certificates(ca_file, "CA file"):
            store.add_cert(crypto.X509.from_cryptography(ca))
    elif not pins:
        context.set_default_verify_paths()
    if client_cert is not None and client_key is not None:
        _load_client_identity(context, client_cert, client_key, log)
    return ClientTLS(hostname, context, pins=pins, ca_file=ca_file, clock=clock)


# -- self-signed certificates ---------------------------------------------------------------------


def _write_private(path: str, data: bytes, mode: int, overwrite: bool) -> None:
    """
    Write C{data} to C{path} atomically with exactly C{mode}, via a new temporary file in the
    same directory; without C{overwrite}, never replace an existing file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(
        temporary,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        mode,
    )
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise TLSConfigError(
                    path, "exists already; refusing to overwrite it (ask for --force)"
                ) from None
            os.unlink(temporary)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _subject_alt_name(hostname: str) -> tuple[x509.GeneralName, str]:
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        ascii_name = hostname.encode("idna").decode("ascii")
        return x509.DNSName(ascii_name), ascii_name
    return x509.IPAddress(address), str(address)


def build_self_signed(
    hostname: str,
    key: CertificateIssuerPrivateKeyTypes,
    *,
    days: int = 365,
    now: datetime.datetime,
) -> x509.Certificate:
    """
    A self-signed server certificate for C{hostname} (a DNS name or an IP address).

    @param hostname: the name clients will verify.
    @param key: the key to certify and sign with.
    @param days: validity in days from C{now}.
    @param now: the current time (UTC); validity starts five minutes earlier for clock skew.
    @return: the certificate.
    @raise ValueError: for an empty name or a non-positive C{days}.
    """
    if not hostname:
        raise ValueError("a host name is required")
    if days <= 0:
        raise ValueError("days must be positive")
    general_name, text = _subject_alt_name(hostname)
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "netguard self-signed")]
    if len(text) <= 64:
        attributes.insert(0, x509.NameAttribute(NameOID.COMMON_NAME, text))
    name = x509.Name(attributes)
    algorithm = (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([general_name]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, algorithm)
    )


def make_self_signed(
    hostname: str,
    key_path: str,
    cert_path: str,
    days: int = 365,
    *,
    overwrite: bool = False,
    clock: IReactorTime | None = None,
) -> CertificateInfo:
    """
    Create an EC P-256 key and a self-signed certificate for a first deployment.

    The key is written with mode 0600 and the certificate with mode 0644, each atomically
    through a new temporary file (created with C{O_EXCL}) in the target directory. Clients
    then use the printed pin (C{--pin-sha256}) or the certificate as their CA file.

    @param hostname: the DNS name or IP address clients connect to (subject alternative name).
    @param key_path: where the key goes.
    @param cert_path: where the certificate goes.
    @param days: validity in days.
    @param overwrite: replace existing files; refused otherwise.
    @param clock: the clock for the validity period.
    @return: the description of the new certificate (with its pin).
    @raise TLSConfigError: if a file exists and C{overwrite} is false.
    @raise ValueError: for an empty host name or a non-positive C{days}.
    @raise OSError: if a file cannot be written.
    """
    if not overwrite:
        for path in (key_path, cert_path):
            if os.path.lexists(path):
                raise TLSConfigError(
                    path, "exists already; refusing to overwrite it (ask for --force)"
                )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = build_self_signed(hostname, key, days=days, now=_now(clock))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, key_pem, 0o600, overwrite)
    try:
        _write_private(
            cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644, overwrite
        )
    except BaseException:
        if not overwrite:
            os.unlink(key_path)
        raise
    return CertificateInfo.of(certificate)

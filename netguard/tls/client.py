# -*- test-case-name: tests.test_tls -*-
"""
TLS for netguard's clients (C{netguard tunnel}, the C{netguard:} endpoint): options that
always verify the server, by chain and name, by public-key pin, or both; nothing turns
verification off. docs/tls.md (the client side) explains the three modes.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netguard.tls.certificates import (
    load_certificates,
    load_private_key,
    public_key_pin,
    spki,
    utc_now,
)
from netguard.tls.context import base_context, use_identity
from netguard.tls.errors import TLSConfigError, TLSVerificationError


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
            digest = hashlib.sha256(spki(certificate.public_key())).digest()
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
            now = utc_now(self._clock)
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
    chain = load_certificates(client_cert, "client certificate file")
    key, warning = load_private_key(client_key)
    if warning:
        log.warn("TLS: {detail}", event="tls.warning", detail=warning)
    use_identity(context, key, chain, client_cert, client_key)


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
    context = base_context(SSL.TLS_CLIENT_METHOD, SSL.TLS1_2_VERSION)
    if ca_file is not None:
        store = context.get_cert_store()
        assert store is not None
        for ca in load_certificates(ca_file, "CA file"):
            store.add_cert(crypto.X509.from_cryptography(ca))
    elif not pins:
        context.set_default_verify_paths()
    if client_cert is not None and client_key is not None:
        _load_client_identity(context, client_cert, client_key, log)
    return ClientTLS(hostname, context, pins=pins, ca_file=ca_file, clock=clock)

"""
Tests for L{netguard.tls}: the settings of the server context, start-up errors for bad
files, handshakes between in-memory OpenSSL connections (versions, ciphers, groups, client
certificates), reload, channel binding read from live Twisted TLS connections, client
verification by chain, name and pin, and self-signed certificates.

Handshakes run over memory BIOs or Twisted's C{iosim}: no sockets, no clock.
"""

from __future__ import annotations

import base64
import datetime
import gc
import hashlib
import os
import stat
import weakref
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from netguard import tls
from netguard.framing import FramingLimits, FramingPhase, GuardedLineReceiver
from netguard.tls import (
    CertificateInfo,
    ServerTLSSettings,
    TLSConfigError,
    TLSVerificationError,
    certificates,
    channel_binding_for,
    client_tls_options,
    load_server_context,
    make_self_signed,
    parse_pins,
    public_key_pin,
    tls_server_end_point,
)
from tests import tls_certs
from tests.tls_certs import DAY, NOW

#: The TLS 1.2 suites the server may pick, and TLS 1.3's three.
AEAD_12 = set(tls.TLS12_CIPHERS.split(":"))
AEAD_13 = set(tls.TLS13_CIPHERSUITES.split(":"))


def clock_at(when: datetime.datetime) -> Clock:
    clock = Clock()
    clock.advance(when.timestamp())
    return clock


# -- in-memory handshakes -----------------------------------------------------------------------


@attrs.frozen
class Outcome:
    """
    How an in-memory handshake ended.
    """

    done: bool
    server_error: str | None
    client_error: str | None


def run_handshake(server: SSL.Connection, client: SSL.Connection) -> Outcome:
    """
    Drive a handshake between two memory-BIO connections, then one byte each way (so TLS 1.3
    alerts that follow the client's view of the handshake arrive); bounded in rounds.
    """
    server.set_accept_state()
    client.set_connect_state()
    errors: dict[str, str | None] = {"server": None, "client": None}
    finished = {"server": False, "client": False}
    sides = (("client", client), ("server", server))
    for _ in range(30):
        for name, conn in sides:
            if errors[name] is not None:
                continue
            try:
                if not finished[name]:
                    conn.do_handshake()
                    finished[name] = True
                    conn.send(b"x")
                else:
                    conn.recv(1024)
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                errors[name] = "closed"
            except SSL.Error as e:
                errors[name] = tls.describe_tls_error(e)
        moved = False
        for source, target in ((client, server), (server, client)):
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                continue
            target.bio_write(data)
            moved = True
        if not moved and (errors["server"] or errors["client"] or all(finished.values())):
            break
    ok = all(finished.values()) and not errors["server"] and not errors["client"]
    return Outcome(ok, errors["server"], errors["client"])


def client_context(
    *,
    max_version: int | None = None,
    min_version: int | None = None,
    ciphers: bytes | None = None,
    groups: bytes | None = None,
    identity: tuple[x509.Certificate, Any] | None = None,
) -> SSL.Context:
    """
    A permissive test client: no verification, whatever versions and ciphers asked.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if min_version is not None:
        context.set_min_proto_version(min_version)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    if ciphers is not None:
        context.set_cipher_list(ciphers)
    if groups is not None:
        from OpenSSL._util import lib

        assert lib.SSL_CTX_set1_curves_list(context._context, groups) == 1
    if identity is not None:
        context.use_certificate(identity[0])
        context.use_privatekey(identity[1])
    return context


class TLSTestCase(unittest.TestCase):
    """
    Files in a fresh directory.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.cert, self.key = tls_certs.make_leaf("localhost")
        self.cert_file, self.key_file = tls_certs.write_identity(
            self.dir, "server", self.cert, self.key
        )

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def settings(self, **kwargs: Any) -> ServerTLSSettings:
        return ServerTLSSettings(self.cert_file, self.key_file, **kwargs)

    def load(self, **kwargs: Any) -> tls.ServerTLS:
        with capturedLogs():
            return load_server_context(self.settings(**kwargs))

    def assertConfigError(
        self, settings: ServerTLSSettings, path: str, *fragments: str, clock: Any = None
    ) -> TLSConfigError:
        with capturedLogs():
            error = self.assertRaises(TLSConfigError, load_server_context, settings, clock)
        self.assertEqual(error.path, path)
        for fragment in fragments:
            self.assertIn(fragment, error.problem)
        self.assertIn(path, str(error))
        return error


# -- settings -------------------------------------------------------------------------------------


class SettingsTests(unittest.TestCase):
    def test_defaults(self) -> None:
        settings = ServerTLSSettings("c.pem", "k.pem")
        self.assertEqual(settings.min_version, "1.2")
        self.assertFalse(settings.require_client_cert)
        self.assertIsNone(settings.client_ca_file)
        self.assertIsNone(settings.chain_file)

    def test_min_version_13(self) -> None:
        self.assertEqual(ServerTLSSettings("c", "k", min_version="1.3").min_version, "1.3")

    def test_min_version_11_refused(self) -> None:
        error = self.assertRaises(TLSConfigError, ServerTLSSettings, "c", "k", min_version="1.1")
        self.assertEqual(error.path, "min_version")

    def test_min_version_garbage_refused(self) -> None:
        self.assertRaises(TLSConfigError, ServerTLSSettings, "c", "k", min_version="tls1.2")

    def test_require_client_cert_needs_ca(self) -> None:
        error = self.assertRaises(
            TLSConfigError, ServerTLSSettings, "c", "k", require_client_cert=True
        )
        self.assertIn("client_ca_file", error.problem)

    def test_config_error_is_value_error(self) -> None:
        self.assertIsInstance(TLSConfigError("x", "y"), ValueError)

    def test_frozen(self) -> None:
        settings = ServerTLSSettings("c", "k")
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, settings, "key_file", "x")


# -- start-up errors ------------------------------------------------------------------------------


class LoadErrorTests(TLSTestCase):
    def test_missing_cert_file(self) -> None:
        missing = self.path("nope.crt")
        self.assertConfigError(
            ServerTLSSettings(missing, self.key_file), missing, "certificate file", "no such file"
        )

    def test_missing_key_file(self) -> None:
        missing = self.path("nope.key")
        self.assertConfigError(ServerTLSSettings(self.cert_file, missing), missing, "key file")

    def test_missing_chain_file(self) -> None:
        missing = self.path("chain.pem")
        self.assertConfigError(self.settings(chain_file=missing), missing, "chain file")

    def test_missing_client_ca_file(self) -> None:
        missing = self.path("ca.pem")
        self.assertConfigError(self.settings(client_ca_file=missing), missing, "client CA file")

    def test_cert_file_is_directory(self) -> None:
        self.assertConfigError(
            ServerTLSSettings(self.dir, self.key_file), self.dir, "is a directory"
        )

    def test_unreadable_cert_file(self) -> None:
        if os.geteuid() == 0:
            raise unittest.SkipTest("root reads every file; run as a normal user")
        os.chmod(self.cert_file, 0)
        self.assertConfigError(self.settings(), self.cert_file, "permission denied")

    def test_cert_file_der(self) -> None:
        der = tls_certs.write(
            self.path("server.der"), self.cert.public_bytes(serialization.Encoding.DER)
        )
        self.assertConfigError(ServerTLSSettings(der, self.key_file), der, "not a PEM file")

    def test_cert_file_holds_only_a_key(self) -> None:
        self.assertConfigError(
            ServerTLSSettings(self.key_file, self.key_file), self.key_file, "no PEM certificate"
        )

    def test_cert_file_garbled(self) -> None:
        bad = tls_certs.write(
            self.path("bad.crt"),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        self.assertConfigError(ServerTLSSettings(bad, self.key_file), bad, "cannot parse")

    def test_cert_file_too_large(self) -> None:
        big = tls_certs.write(
            self.path("big.crt"), tls_certs.cert_pem(self.cert) + b"#" * tls.MAX_PEM_BYTES
        )
        self.assertConfigError(ServerTLSSettings(big, self.key_file), big, "larger than")

    def test_key_file_holds_no_key(self) -> None:
        key_as_cert = tls_certs.write(self.path("k.pem"), tls_certs.cert_pem(self.cert), 0o600)
        self.assertConfigError(
            ServerTLSSettings(self.cert_file, key_as_cert), key_as_cert, "no PEM private key"
        )

    def test_encrypted_key(self) -> None:
        encrypted = tls_certs.write(
            self.path("enc.key"), tls_certs.key_pem(self.key, b"secret"), 0o600
        )
        self.assertConfigError(
            ServerTLSSettings(self.cert_file, encrypted), encrypted, "encrypted"
        )

    def test_mismatched_key(self) -> None:
        other = tls_certs.write(
            self.path("other.key"), tls_certs.key_pem(tls_certs.ec_key()), 0o600
        )
        error = self.assertConfigError(
            ServerTLSSettings(self.cert_file, other), other, "does not belong", self.cert_file
        )
        self.assertIn(public_key_pin(self.cert), error.problem)

    def test_expired_certificate(self) -> None:
        cert, key = tls_certs.make_leaf(not_before=NOW - 30 * DAY, not_after=NOW - DAY)
        cert_file, key_file = tls_certs.write_identity(self.dir, "expired", cert, key)
        self.assertConfigError(ServerTLSSettings(cert_file, key_file), cert_file, "expired on")

    def test_not_yet_valid_certificate(self) -> None:
        cert, key = tls_certs.make_leaf(not_before=NOW + DAY, not_after=NOW + 30 * DAY)
        cert_file, key_file = tls_certs.write_identity(self.dir, "future", cert, key)
        self.assertConfigError(
            ServerTLSSettings(cert_file, key_file), cert_file, "not valid yet", "check the clock"
        )

    def test_validity_uses_injected_clock(self) -> None:
        later = clock_at(NOW + 60 * DAY)
        self.assertConfigError(self.settings(), self.cert_file, "expired", clock=later)

    def test_world_readable_key_refused(self) -> None:
        os.chmod(self.key_file, 0o604)
        self.assertConfigError(self.settings(), self.key_file, "every user", "chmod 600")

    def test_world_writable_key_refused(self) -> None:
        os.chmod(self.key_file, 0o602)
        self.assertConfigError(self.settings(), self.key_file, "every user")

    def test_group_readable_key_warns(self) -> None:
        os.chmod(self.key_file, 0o640)
        with capturedLogs() as events:
            server_tls = load_server_context(self.settings())
        self.assertEqual(len(server_tls.warnings), 1)
        self.assertIn("group", server_tls.warnings[0])
        warned = [e for e in events if e.get("event") == "tls.warning"]
        self.assertEqual([e["detail"] for e in warned], list(server_tls.warnings))

    def test_weak_rsa_key_refused(self) -> None:
        cert, key = tls_certs.make_leaf(key=tls_certs.rsa_key(1024))
        cert_file, key_file = tls_certs.write_identity(self.dir, "weak", cert, key)
        self.assertConfigError(ServerTLSSettings(cert_file, key_file), key_file, "1024 bits")

    def test_p521_refused(self) -> None:
        cert, key = tls_certs.make_leaf(key=ec.generate_private_key(ec.SECP521R1()))
        cert_file, key_file = tls_certs.write_identity(self.dir, "p521", cert, key)
        self.assertConfigError(ServerTLSSettings(cert_file, key_file), key_file, "secp521r1")

    def test_unsupported_curve_refused(self) -> None:
        cert, key = tls_certs.make_leaf(key=ec.generate_private_key(ec.SECP256K1()))
        cert_file, key_file = tls_certs.write_identity(self.dir, "k1", cert, key)
        self.assertConfigError(ServerTLSSettings(cert_file, key_file), key_file, "secp256k1")


class LoadTests(TLSTestCase):
    def test_creator_interface(self) -> None:
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, self.load()))

    def test_certificate_info(self) -> None:
        info = self.load().certificate_info
        self.assertEqual(info.subject, "CN=localhost")
        self.assertEqual(info.dns_names, ("localhost",))
        self.assertEqual(info.key_type, "EC secp256r1")
        self.assertEqual(info.pin_sha256, public_key_pin(self.cert))
        self.assertEqual(len(info.sha256_fingerprint.split(":")), 32)

    def test_loaded_event(self) -> None:
        with capturedLogs() as events:
            load_server_context(self.settings())
        loaded = [e for e in events if e.get("event") == "tls.loaded"]
        self.assertEqual(len(loaded), 1)
        self.assertEqual(loaded[0]["pin"], public_key_pin(self.cert))
        self.assertEqual(loaded[0]["client_certs"], "off")

    def test_no_warnings_for_clean_files(self) -> None:
        self.assertEqual(self.load().warnings, ())

    def test_combined_pem_file(self) -> None:
        combined = tls_certs.write(
            self.path("combined.pem"),
            tls_certs.cert_pem(self.cert) + tls_certs.key_pem(self.key),
            0o600,
        )
        with capturedLogs():
            server_tls = load_server_context(ServerTLSSettings(combined, combined))
        self.assertEqual(server_tls.certificate, self.cert)

    def test_fullchain_in_cert_file(self) -> None:
        ca = tls_certs.make_ca()
        cert, key = tls_certs.make_leaf(issuer=ca)
        cert_file, key_file = tls_certs.write_identity(self.dir, "chained", (cert, ca[0]), key)
        with capturedLogs():
            server_tls = load_server_context(ServerTLSSettings(cert_file, key_file))
        self.assertEqual(server_tls.certificate, cert)
        self.assertEqual(server_tls.warnings, ())

    def test_misordered_chain_warns(self) -> None:
        ca = tls_certs.make_ca()
        cert, key = tls_certs.make_leaf(issuer=ca)
        unrelated = tls_certs.make_ca("someone else")[0]
        cert_file, key_file = tls_certs.write_identity(self.dir, "c", (cert, unrelated), key)
        with capturedLogs():
            server_tls = load_server_context(ServerTLSSettings(cert_file, key_file))
        self.assertEqual(len(server_tls.warnings), 1)
        self.assertIn("did not issue", server_tls.warnings[0])

    def test_expiring_soon_warns(self) -> None:
        with capturedLogs():
            server_tls = load_server_context(
                self.settings(), clock_at(NOW + (30 - tls.EXPIRY_WARNING_DAYS + 2) * DAY)
            )
        self.assertEqual(len(server_tls.warnings), 1)
        self.assertIn("expires on", server_tls.warnings[0])


# -- the context's settings -----------------------------------------------------------------------


class ContextSettingsTests(TLSTestCase):
    def options(self, context: SSL.Context) -> int:
        # set_options adds nothing with 0 and returns the options in force.
        return context.set_options(0)

    def test_security_options(self) -> None:
        options = self.options(self.load().context)
        for flag, name in [
            (SSL.OP_NO_COMPRESSION, "OP_NO_COMPRESSION"),
            (SSL.OP_NO_RENEGOTIATION, "OP_NO_RENEGOTIATION"),
            (SSL.OP_CIPHER_SERVER_PREFERENCE, "OP_CIPHER_SERVER_PREFERENCE"),
            (SSL.OP_NO_TICKET, "OP_NO_TICKET"),
            (SSL.OP_NO_SSLv3, "OP_NO_SSLv3"),
            (SSL.OP_NO_TLSv1, "OP_NO_TLSv1"),
            (SSL.OP_NO_TLSv1_1, "OP_NO_TLSv1_1"),
        ]:
            self.assertTrue(options & flag, f"{name} is not set")

    def test_tls_12_stays_enabled(self) -> None:
        self.assertFalse(self.options(self.load().context) & SSL.OP_NO_TLSv1_2)

    def test_session_cache_off(self) -> None:
        self.assertEqual(self.load().context.get_session_cache_mode(), SSL.SESS_CACHE_OFF)

    def test_cipher_list_is_aead_ecdhe_only(self) -> None:
        offered = SSL.Connection(self.load().context).get_cipher_list()
        self.assertEqual(set(offered), AEAD_12 | AEAD_13)
        for name in offered:
            self.assertTrue(
                name.startswith("TLS_") or name.startswith("ECDHE-"),
                f"{name} is neither TLS 1.3 nor ECDHE",
            )
            self.assertRegex(name, "GCM|CHACHA20")

    def test_no_client_verification_by_default(self) -> None:
        self.assertEqual(self.load().context.get_verify_mode(), SSL.VERIFY_NONE)

    def test_client_certificates_required(self) -> None:
        ca = tls_certs.make_ca()
        ca_file = tls_certs.write(self.path("ca.pem"), tls_certs.cert_pem(ca[0]))
        context = self.load(client_ca_file=ca_file, require_client_cert=True).context
        self.assertEqual(
            context.get_verify_mode(),
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE,
        )

    def test_client_certificates_optional(self) -> None:
        ca = tls_certs.make_ca()
        ca_file = tls_certs.write(self.path("ca.pem"), tls_certs.cert_pem(ca[0]))
        context = self.load(client_ca_file=ca_file).context
        self.assertEqual(context.get_verify_mode(), SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE)


# -- handshakes -----------------------------------------------------------------------------------


class HandshakeTests(TLSTestCase):
    def shake(self, server_tls: tls.ServerTLS, context: SSL.Context) -> tuple[Outcome, Any]:
        server = server_tls.serverConnectionForTLS(None)
        client = SSL.Connection(context)
        return run_handshake(server, client), client

    def test_default_client_gets_tls13(self) -> None:
        outcome, client = self.shake(self.load(), client_context())
        self.assertTrue(outcome.done, outcome)
        self.assertEqual(client.get_protocol_version_name(), "TLSv1.3")
        self.assertIn(client.get_cipher_name(), AEAD_13)

    def test_tls12_client_gets_ecdhe_aead(self) -> None:
        outcome, client = self.shake(self.load(), client_context(max_version=SSL.TLS1_2_VERSION))
        self.assertTrue(outcome.done, outcome)
        self.assertEqual(client.get_protocol_version_name(), "TLSv1.2")
        self.assertEqual(client.get_cipher_name(), "ECDHE-ECDSA-AES128-GCM-SHA256")

    def test_server_preference_wins(self) -> None:
        context = client_context(
            max_version=SSL.TLS1_2_VERSION,
            ciphers=b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256",
        )
        outcome, client = self.shake(self.load(), context)
        self.assertTrue(outcome.done, outcome)
        self.assertEqual(client.get_cipher_name(), "ECDHE-ECDSA-AES128-GCM-SHA256")

    def test_tls11_refused_by_server(self) -> None:
        context = client_context(
            min_version=SSL.TLS1_VERSION,
            max_version=SSL.TLS1_1_VERSION,
            ciphers=b"DEFAULT:@SECLEVEL=0",
        )
        outcome, _ = self.shake(self.load(), context)
        self.assertFalse(outcome.done)
        self.assertEqual(outcome.server_error, "unsupported protocol")

    def test_tls10_refused_by_server(self) -> None:
        context = client_context(
            min_version=SSL.TLS1_VERSION,
            max_version=SSL.TLS1_VERSION,
            ciphers=b"DEFAULT:@SECLEVEL=0",
        )
        outcome, _ = self.shake(self.load(), context)
        self.assertEqual(outcome.server_error, "unsupported protocol")

    def test_tls12_refused_when_13_required(self) -> None:
        outcome, _ = self.shake(
            self.load(min_version="1.3"), client_context(max_version=SSL.TLS1_2_VERSION)
        )
        self.assertEqual(outcome.server_error, "unsupported protocol")

    def test_cbc_cipher_refused(self) -> None:
        context = client_context(
            max_version=SSL.TLS1_2_VERSION, ciphers=b"ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"
        )
        outcome, _ = self.shake(self.load(), context)
        self.assertEqual(outcome.server_error, "no shared cipher")

    def test_static_rsa_refused(self) -> None:
        cert, key = tls_certs.make_leaf(key=tls_certs.rsa_key())
        cert_file, key_file = tls_certs.write_identity(self.dir, "rsa", cert, key)
        with capturedLogs():
            server_tls = load_server_context(ServerTLSSettings(cert_file, key_file))
        context = client_context(max_version=SSL.TLS1_2_VERSION, ciphers=b"AES128-GCM-SHA256")
        outcome, _ = self.shake(server_tls, context)
        self.assertEqual(outcome.server_error, "no shared cipher")

    def test_rsa_certificate_gets_ecdhe_rsa(self) -> None:
        cert, key = tls_certs.make_leaf(key=tls_certs.rsa_key())
        cert_file, key_file = tls_certs.write_identity(self.dir, "rsa", cert, key)
        with capturedLogs():
            server_tls = load_server_context(ServerTLSSettings(cert_file, key_file))
        outcome, client = self.shake(server_tls, client_context(max_version=SSL.TLS1_2_VERSION))
        self.assertTrue(outcome.done, outcome)
        self.assertEqual(client.get_cipher_name(), "ECDHE-RSA-AES128-GCM-SHA256")

    def test_p384_certificate(self) -> None:
        cert, key = tls_certs.make_leaf(key=ec.generate_private_key(ec.SECP384R1()))
        cert_file, key_file = tls_certs.write_identity(self.dir, "p384", cert, key)
        with capturedLogs():
            server_tls = load_server_context(ServerTLSSettings(cert_file, key_file))
        for version in (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION):
            outcome, _ = self.shake(server_tls, client_context(max_version=version))
            self.assertTrue(outcome.done, outcome)

    def test_dhe_refused(self) -> None:
        cert, key = tls_certs.make_leaf(key=tls_certs.rsa_key())
        cert_file, key_file = tls_certs.write_identity(self.dir, "rsa", cert, key)
        with capturedLogs():
            server_tls = load_server_context(ServerTLSSettings(cert_file, key_file))
        context = client_context(
            max_version=SSL.TLS1_2_VERSION, ciphers=b"DHE-RSA-AES128-GCM-SHA256"
        )
        outcome, _ = self.shake(server_tls, context)
        self.assertEqual(outcome.server_error, "no shared cipher")

    def test_finite_field_group_refused_in_tls13(self) -> None:
        outcome, _ = self.shake(self.load(), client_context(groups=b"ffdhe2048"))
        self.assertFalse(outcome.done)
        self.assertIsNotNone(outcome.server_error)

    def test_p256_only_client(self) -> None:
        outcome, client = self.shake(self.load(), client_context(groups=b"P-256"))
        self.assertTrue(outcome.done, outcome)
        self.assertEqual(client.get_group_name(), "secp256r1")

    def test_client_without_certificate_refused_when_required(self) -> None:
        ca = tls_certs.make_ca()
        ca_file = tls_certs.write(self.path("ca.pem"), tls_certs.cert_pem(ca[0]))
        server_tls = self.load(client_ca_file=ca_file, require_client_cert=True)
        outcome, _ = self.shake(server_tls, client_context())
        self.assertFalse(outcome.done)
        self.assertEqual(outcome.server_error, "peer did not return a certificate")

    def test_client_with_ca_signed_certificate_accepted(self) -> None:
        ca = tls_certs.make_ca()
        ca_file = tls_certs.write(self.path("ca.pem"), tls_certs.cert_pem(ca[0]))
        server_tls = self.load(client_ca_file=ca_file, require_client_cert=True)
        identity = tls_certs.make_leaf("alice", issuer=ca, client=True)
        server = server_tls.serverConnectionForTLS(None)
        outcome = run_handshake(server, SSL.Connection(client_context(identity=identity)))
        self.assertTrue(outcome.done, outcome)
        peer = server.get_peer_certificate(as_cryptography=True)
        self.assertEqual(peer, identity[0])

    def test_client_certificate_from_other_ca_refused(self) -> None:
        ca = tls_certs.make_ca()
        ca_file = tls_certs.write(self.path("ca.pem"), tls_certs.cert_pem(ca[0]))
        server_tls = self.load(client_ca_file=ca_file, require_client_cert=True)
        stranger = tls_certs.make_leaf("mallory", issuer=tls_certs.make_ca("evil"), client=True)
        outcome, _ = self.shake(server_tls, client_context(identity=stranger))
        self.assertFalse(outcome.done)
        self.assertIn("certificate verify failed", outcome.server_error or "")

    def test_optional_client_certificate_may_be_absent(self) -> None:
        ca = tls_certs.make_ca()
        ca_file = tls_certs.write(self.path("ca.pem"), tls_certs.cert_pem(ca[0]))
        outcome, _ = self.shake(self.load(client_ca_file=ca_file), client_context())
        self.assertTrue(outcome.done, outcome)

    def test_optional_client_certificate_is_verified_when_present(self) -> None:
        ca = tls_certs.make_ca()
        ca_file = tls_certs.write(self.path("ca.pem"), tls_certs.cert_pem(ca[0]))
        stranger = tls_certs.make_leaf("mallory", issuer=tls_certs.make_ca("evil"), client=True)
        outcome, _ = self.shake(
            self.load(client_ca_file=ca_file), client_context(identity=stranger)
        )
        self.assertFalse(outcome.done)

    def test_renegotiation_refused(self) -> None:
        # OpenSSL 3 also refuses client renegotiation by default; OP_NO_RENEGOTIATION (see
        # ContextSettingsTests) keeps it refused whatever the library's default.
        server = self.load().serverConnectionForTLS(None)
        client = SSL.Connection(client_context(max_version=SSL.TLS1_2_VERSION))
        self.assertTrue(run_handshake(server, client).done)
        self.assertTrue(client.renegotiate())
        self.assertEqual(renegotiate(server, client), "no renegotiation")
        self.assertTrue(client.renegotiate_pending())


def renegotiate(server: SSL.Connection, client: SSL.Connection) -> str | None:
    """
    Let a client-initiated renegotiation run (bounded); return the client's first error.
    """
    for _ in range(20):
        for conn in (client, server):
            for step in (conn.do_handshake, lambda conn=conn: conn.recv(1024)):
                try:
                    step()
                except (SSL.WantReadError, SSL.ZeroReturnError):
                    pass
                except SSL.Error as e:
                    if conn is client:
                        return tls.describe_tls_error(e)
        for source, target in ((client, server), (server, client)):
            try:
                target.bio_write(source.bio_read(65536))
            except SSL.WantReadError:
                pass
    return None


# -- reload ---------------------------------------------------------------------------------------


class _LibWithoutGroupCall:
    """
    A stand-in for pyOpenSSL's private C{lib} binding without C{SSL_CTX_set1_curves_list}.
    """


class _LibRefusingEveryGroupList:
    """
    A stand-in for pyOpenSSL's private C{lib} whose C{SSL_CTX_set1_curves_list} refuses
    every list (returns 0, as OpenSSL does for names it does not know).
    """

    def __init__(self) -> None:
        self.asked: list[bytes] = []

    def SSL_CTX_set1_curves_list(self, context: Any, groups: bytes) -> int:  # noqa: N802
        self.asked.append(groups)
        return 0


class GroupFallbackTests(TLSTestCase):
    """
    When pyOpenSSL's private group call is missing or refuses every list, the context still
    gets an elliptic-curve group (P-256) and a C{tls.warning} says so.
    """

    def shake(self, server_tls: tls.ServerTLS, groups: bytes) -> tuple[Outcome, Any]:
        client = SSL.Connection(client_context(groups=groups))
        return run_handshake(server_tls.serverConnectionForTLS(None), client), client

    def load_logged(self, lib: object = None) -> tuple[tls.ServerTLS, list[dict[str, Any]]]:
        """
        Load the server context, with C{lib} in place of pyOpenSSL's private binding while
        it is built (the real one again afterwards, for the test clients).

        @return: the context and the C{tls.warning} events logged meanwhile.
        """
        import OpenSSL._util

        patcher = None if lib is None else self.patch(OpenSSL._util, "lib", lib)
        try:
            with capturedLogs() as events:
                server_tls = load_server_context(self.settings())
        finally:
            if patcher is not None:
                patcher.restore()
        return server_tls, [e for e in events if e.get("event") == "tls.warning"]

    def assert_p256_only(self, server_tls: tls.ServerTLS) -> None:
        outcome, client = self.shake(server_tls, b"P-256")
        self.assertTrue(outcome.done, outcome)
        self.assertEqual(client.get_group_name(), "secp256r1")
        outcome, _ = self.shake(server_tls, b"X25519")
        self.assertFalse(outcome.done)

    def test_missing_binding_warns_and_keeps_p256(self) -> None:
        """
        Without C{SSL_CTX_set1_curves_list} the context offers P-256 alone (a P-256 client
        completes, an X25519-only client cannot), and one C{tls.warning} names the missing
        call and the fallback.
        """
        server_tls, warnings = self.load_logged(_LibWithoutGroupCall())
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("no SSL_CTX_set1_curves_list binding", warnings[0]["detail"])
        self.assertIn("falls back to P-256", warnings[0]["detail"])
        self.assertEqual(warnings[0]["log_level"], LogLevel.warn)
        self.assert_p256_only(server_tls)

    def test_every_list_refused_warns_and_keeps_p256(self) -> None:
        """
        When the call refuses every list of C{KEY_EXCHANGE_GROUPS} (each tried once, in
        order), the context offers P-256 alone and one C{tls.warning} says so.
        """
        refusing = _LibRefusingEveryGroupList()
        server_tls, warnings = self.load_logged(refusing)
        self.assertEqual(refusing.asked, [g.encode("ascii") for g in tls.KEY_EXCHANGE_GROUPS])
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("refused every key-exchange group list", warnings[0]["detail"])
        self.assert_p256_only(server_tls)

    def test_usual_path_is_silent_and_offers_x25519(self) -> None:
        """
        Control: with the real binding no warning is logged and an X25519-only client
        completes, so the two tests above see the fallback and nothing else.
        """
        server_tls, warnings = self.load_logged()
        self.assertEqual(warnings, [])
        outcome, client = self.shake(server_tls, b"X25519")
        self.assertTrue(outcome.done, outcome)
        self.assertEqual(client.get_group_name(), "x25519")


class ReloadTests(TLSTestCase):
    def replace_identity(self, hostname: str = "localhost") -> x509.Certificate:
        cert, key = tls_certs.make_leaf(hostname)
        tls_certs.write(self.cert_file, tls_certs.cert_pem(cert))
        tls_certs.write(self.key_file, tls_certs.key_pem(key), 0o600)
        return cert

    def served(self, server_tls: tls.ServerTLS, server: SSL.Connection | None = None) -> Any:
        server = server or server_tls.serverConnectionForTLS(None)
        client = SSL.Connection(client_context())
        self.assertTrue(run_handshake(server, client).done)
        return client.get_peer_certificate(as_cryptography=True)

    def test_reload_serves_new_certificate(self) -> None:
        server_tls = self.load()
        self.assertEqual(self.served(server_tls), self.cert)
        new = self.replace_identity()
        with capturedLogs() as events:
            info = server_tls.reload()
        self.assertEqual(info, CertificateInfo.of(new))
        self.assertEqual(self.served(server_tls), new)
        self.assertEqual([e["event"] for e in events if "event" in e], ["tls.reloaded"])

    def test_connection_made_before_reload_keeps_old_certificate(self) -> None:
        server_tls = self.load()
        early = server_tls.serverConnectionForTLS(None)
        self.replace_identity()
        with capturedLogs():
            server_tls.reload()
        self.assertEqual(self.served(server_tls, early), self.cert)

    def test_reload_changes_channel_binding(self) -> None:
        server_tls = self.load()
        before = server_tls.channel_binding()
        new = self.replace_identity()
        with capturedLogs():
            server_tls.reload()
        self.assertNotEqual(server_tls.channel_binding(), before)
        self.assertEqual(
            server_tls.channel_binding(),
            (
                "tls-server-end-point",
                tls_server_end_point(new.public_bytes(serialization.Encoding.DER)),
            ),
        )

    def test_bad_reload_keeps_old_context(self) -> None:
        server_tls = self.load()
        context = server_tls.context
        tls_certs.write(self.key_file, tls_certs.key_pem(tls_certs.ec_key()), 0o600)
        with capturedLogs() as events:
            error = self.assertRaises(TLSConfigError, server_tls.reload)
        self.assertEqual(error.path, self.key_file)
        self.assertIs(server_tls.context, context)
        self.assertEqual(self.served(server_tls), self.cert)
        failed = [e for e in events if e.get("event") == "tls.reload_failed"]
        self.assertEqual(len(failed), 1)
        self.assertEqual(failed[0]["path"], self.key_file)
        self.assertIn("does not belong", failed[0]["problem"])

    def test_reload_with_missing_file_keeps_old_context(self) -> None:
        server_tls = self.load()
        os.unlink(self.cert_file)
        with capturedLogs():
            self.assertRaises(TLSConfigError, server_tls.reload)
        self.assertEqual(self.served(server_tls), self.cert)

    def test_reload_with_new_settings(self) -> None:
        server_tls = self.load()
        ca = tls_certs.make_ca()
        ca_file = tls_certs.write(self.path("ca.pem"), tls_certs.cert_pem(ca[0]))
        new_settings = self.settings(client_ca_file=ca_file, require_client_cert=True)
        with capturedLogs():
            server_tls.reload(new_settings)
        self.assertEqual(server_tls.settings, new_settings)
        outcome = run_handshake(
            server_tls.serverConnectionForTLS(None), SSL.Connection(client_context())
        )
        self.assertEqual(outcome.server_error, "peer did not return a certificate")

    def test_bad_new_settings_keep_old_settings(self) -> None:
        server_tls = self.load()
        old = server_tls.settings
        with capturedLogs():
            self.assertRaises(
                TLSConfigError, server_tls.reload, self.settings(client_ca_file=self.path("x"))
            )
        self.assertEqual(server_tls.settings, old)


# -- Twisted connections: channel binding, endpoint, client verification ------------------------


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """
    Records the handshake, the bytes and the end of one connection.
    """

    def __init__(self) -> None:
        self.handshake_done = False
        self.data = b""
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


def connect(server_creator: Any, client_creator: Any) -> tuple[Recorder, Recorder, Any]:
    """
    A Twisted TLS connection in memory: (server protocol, client protocol, pump).
    """
    clock = Clock()
    protocols: dict[str, Recorder] = {}

    def server() -> Any:
        protocols["server"] = Recorder()
        factory = TLSMemoryBIOFactory(
            server_creator, False, Factory.forProtocol(lambda: protocols["server"]), clock
        )
        return factory.buildProtocol(None)

    def client() -> Any:
        protocols["client"] = Recorder()
        factory = TLSMemoryBIOFactory(
            client_creator, True, Factory.forProtocol(lambda: protocols["client"]), clock
        )
        return factory.buildProtocol(None)

    _, _, pump = connectedServerAndClient(server, client, clock=clock)
    for _ in range(10):
        pump.flush()
    return protocols["server"], protocols["client"], pump


class ForgetTests(TLSTestCase):
    """
    Key material is dropped at shutdown: the PEM text is wiped as soon as it is parsed, and
    L{tls.ServerTLS.forget} lets go of the context (and so OpenSSL's copy of the key).
    """

    def test_key_file_bytes_wiped_after_parsing(self) -> None:
        buffers: list[bytearray] = []
        real = certificates._read_pem

        def keep(path: str, what: str) -> bytearray:
            buffers.append(real(path, what))
            return buffers[-1]

        self.patch(certificates, "_read_pem", keep)
        self.load()
        key_buffers = [b for b in buffers if len(b) == len(tls_certs.key_pem(self.key))]
        self.assertEqual(len(key_buffers), 1)
        self.assertEqual(bytes(key_buffers[0]), bytes(len(key_buffers[0])))
        certificate_buffers = [b for b in buffers if b not in key_buffers]
        self.assertTrue(certificate_buffers and all(any(b) for b in certificate_buffers))

    def test_key_bytes_wiped_when_parsing_fails(self) -> None:
        buffers: list[bytearray] = []
        real = certificates._read_pem
        self.patch(
            certificates, "_read_pem", lambda p, w: buffers.append(real(p, w)) or buffers[-1]
        )
        pem = tls_certs.key_pem(self.key).replace(b"-----END", b"garbage\n-----END")
        tls_certs.write(self.key_file, pem, 0o600)
        self.assertConfigError(self.settings(), self.key_file, "cannot parse")
        self.assertEqual(bytes(buffers[-1]), bytes(len(buffers[-1])))

    def test_forget_releases_the_context(self) -> None:
        server_tls = self.load()
        context = weakref.ref(server_tls.context)
        self.assertTrue(server_tls.forget())
        gc.collect()
        self.assertIsNone(context())
        self.assertFalse(server_tls.forget())

    def test_forgotten_identity_serves_nothing(self) -> None:
        server_tls = self.load()
        server_tls.forget()
        for use in (
            lambda: server_tls.context,
            lambda: server_tls.certificate_info,
            lambda: server_tls.serverConnectionForTLS(None),
            lambda: server_tls.channel_binding(),
            server_tls.reload,
        ):
            error = self.assertRaises(TLSConfigError, use)
            self.assertIn("dropped at shutdown", error.problem)

    def test_live_connection_keeps_working_until_closed(self) -> None:
        server_tls = self.load()
        server = server_tls.serverConnectionForTLS(None)
        server_tls.forget()
        client = SSL.Connection(client_context())
        self.assertTrue(run_handshake(server, client).done)


class ChannelBindingTests(TLSTestCase):
    def test_both_sides_agree_with_served_certificate(self) -> None:
        server_tls = self.load()
        server, client, _ = connect(
            server_tls, client_tls_options("localhost", pin_sha256=public_key_pin(self.cert))
        )
        self.assertTrue(client.handshake_done)
        expected = tls.server_end_point_binding(self.cert.public_bytes(serialization.Encoding.DER))
        self.assertEqual(channel_binding_for(server.transport, "server"), expected)
        self.assertEqual(channel_binding_for(client.transport, "client"), expected)
        self.assertEqual(server_tls.channel_binding(), expected)

    def test_live_connection_keeps_binding_after_reload(self) -> None:
        server_tls = self.load()
        pins = public_key_pin(self.cert)
        new_cert, new_key = tls_certs.make_leaf("localhost")
        pins += "," + public_key_pin(new_cert)
        old_server, old_client, _ = connect(
            server_tls, client_tls_options("localhost", pin_sha256=pins)
        )
        tls_certs.write(self.cert_file, tls_certs.cert_pem(new_cert))
        tls_certs.write(self.key_file, tls_certs.key_pem(new_key), 0o600)
        with capturedLogs():
            server_tls.reload()
        new_server, new_client, _ = connect(
            server_tls, client_tls_options("localhost", pin_sha256=pins)
        )
        old = channel_binding_for(old_server.transport, "server")
        new = channel_binding_for(new_server.transport, "server")
        self.assertNotEqual(old, new)
        self.assertEqual(old, channel_binding_for(old_client.transport, "client"))
        self.assertEqual(new, channel_binding_for(new_client.transport, "client"))
        self.assertEqual(new, server_tls.channel_binding())

    def test_plain_transport_has_none(self) -> None:
        self.assertIsNone(channel_binding_for(StringTransport(), "server"))
        self.assertIsNone(channel_binding_for(StringTransport(), "client"))

    def test_no_transport_has_none(self) -> None:
        self.assertIsNone(channel_binding_for(None, "server"))

    def test_bad_side(self) -> None:
        self.assertRaises(ValueError, channel_binding_for, StringTransport(), "middle")

    def test_connection_info(self) -> None:
        server, client, _ = connect(
            self.load(), client_tls_options("localhost", pin_sha256=public_key_pin(self.cert))
        )
        info = tls.connection_info(client.transport)
        assert info is not None
        self.assertEqual(info.version, "TLSv1.3")
        self.assertIn(info.cipher, AEAD_13)
        self.assertEqual(info.peer_subject, "CN=localhost")
        self.assertEqual(info.peer_pin, public_key_pin(self.cert))
        server_info = tls.connection_info(server.transport)
        assert server_info is not None
        self.assertIsNone(server_info.peer_subject)
        self.assertIsNone(tls.connection_info(StringTransport()))


class EndpointTests(TLSTestCase):
    def test_interface(self) -> None:
        endpoint = tls.TLSServerEndpoint(object(), self.load())
        self.assertTrue(verifyObject(IStreamServerEndpoint, endpoint))

    def test_listen_wraps_factory(self) -> None:
        from twisted.internet.endpoints import TCP4ServerEndpoint

        reactor = MemoryReactorClock()
        server_tls = self.load()
        endpoint = tls.TLSServerEndpoint(TCP4ServerEndpoint(reactor, 7700), server_tls, reactor)
        app = Factory.forProtocol(Recorder)
        endpoint.listen(app)
        port, factory, _, _ = reactor.tcpServers[0]
        self.assertEqual(port, 7700)
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        self.assertIs(factory.wrappedFactory, app)


class ClientVerificationTests(TLSTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ca = tls_certs.make_ca()
        self.ca_file = tls_certs.write(self.path("ca.pem"), tls_certs.cert_pem(self.ca[0]))
        signed, signed_key = tls_certs.make_leaf(
            "gw.test", issuer=self.ca, extra_names=("127.0.0.1",)
        )
        cert_file, key_file = tls_certs.write_identity(self.dir, "signed", signed, signed_key)
        self.signed = signed
        with capturedLogs():
            self.signed_server = load_server_context(ServerTLSSettings(cert_file, key_file))
            self.self_signed_server = load_server_context(self.settings())

    def assertRefused(self, client: Recorder, fragment: str) -> None:
        self.assertFalse(client.handshake_done)
        self.assertIsNotNone(client.lost)
        assert client.lost is not None
        self.assertIn(fragment, tls.describe_tls_error(client.lost) or repr(client.lost.value))

    def test_interface(self) -> None:
        self.assertTrue(
            verifyObject(IOpenSSLClientConnectionCreator, client_tls_options("localhost"))
        )

    def test_ca_file_and_name(self) -> None:
        _, client, _ = connect(
            self.signed_server, client_tls_options("gw.test", ca_file=self.ca_file)
        )
        self.assertTrue(client.handshake_done)
        self.assertIsNone(client.lost)

    def test_ca_file_and_ip_address(self) -> None:
        _, client, _ = connect(
            self.signed_server, client_tls_options("127.0.0.1", ca_file=self.ca_file)
        )
        self.assertTrue(client.handshake_done)

    def test_wrong_name_refused(self) -> None:
        _, client, _ = connect(
            self.signed_server, client_tls_options("other.test", ca_file=self.ca_file)
        )
        self.assertRefused(client, "not valid for 'other.test'")
        self.assertIsInstance(client.lost.value if client.lost else None, TLSVerificationError)

    def test_certificate_without_names_refused(self) -> None:
        key = tls_certs.ec_key()
        bare = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.test")]))
            .issuer_name(self.ca[0].subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY)
            .not_valid_after(NOW + DAY)
            .sign(self.ca[1], hashes.SHA256())
        )
        cert_file, key_file = tls_certs.write_identity(self.dir, "bare", bare, key)
        with capturedLogs():
            server_tls = load_server_context(ServerTLSSettings(cert_file, key_file))
        _, client, _ = connect(server_tls, client_tls_options("gw.test", ca_file=self.ca_file))
        # A common name alone does not count (RFC 6125): the name check fails.
        self.assertRefused(client, "not valid for 'gw.test'")

    def test_wrong_ip_refused(self) -> None:
        _, client, _ = connect(
            self.signed_server, client_tls_options("127.0.0.2", ca_file=self.ca_file)
        )
        self.assertRefused(client, "not valid for")

    def test_untrusted_chain_refused(self) -> None:
        other_ca = tls_certs.write(
            self.path("other.pem"), tls_certs.cert_pem(tls_certs.make_ca("x")[0])
        )
        _, client, _ = connect(self.signed_server, client_tls_options("gw.test", ca_file=other_ca))
        self.assertRefused(client, "certificate verify failed")

    def test_self_signed_refused_by_system_roots(self) -> None:
        _, client, _ = connect(self.self_signed_server, client_tls_options("localhost"))
        self.assertRefused(client, "certificate verify failed")

    def test_self_signed_as_its_own_ca_file(self) -> None:
        _, client, _ = connect(
            self.self_signed_server, client_tls_options("localhost", ca_file=self.cert_file)
        )
        self.assertTrue(client.handshake_done)

    def test_right_pin_accepted(self) -> None:
        creator = client_tls_options("localhost", pin_sha256=public_key_pin(self.cert))
        _, client, _ = connect(self.self_signed_server, creator)
        self.assertTrue(client.handshake_done)
        self.assertFalse(creator.chain_verified)

    def test_pin_ignores_name(self) -> None:
        creator = client_tls_options("192.0.2.7", pin_sha256=public_key_pin(self.cert))
        _, client, _ = connect(self.self_signed_server, creator)
        self.assertTrue(client.handshake_done)

    def test_wrong_pin_refused(self) -> None:
        wrong = public_key_pin(tls_certs.make_leaf()[0])
        _, client, _ = connect(
            self.self_signed_server, client_tls_options("localhost", pin_sha256=wrong)
        )
        self.assertRefused(client, "matches no configured pin")

    def test_wrong_pin_refused_on_ca_signed_server(self) -> None:
        wrong = public_key_pin(tls_certs.make_leaf()[0])
        creator = client_tls_options("gw.test", ca_file=self.ca_file, pin_sha256=wrong)
        _, client, _ = connect(self.signed_server, creator)
        self.assertRefused(client, "matches no configured pin")

    def test_pin_and_ca_both_hold(self) -> None:
        creator = client_tls_options(
            "gw.test", ca_file=self.ca_file, pin_sha256=public_key_pin(self.signed)
        )
        self.assertTrue(creator.chain_verified)
        _, client, _ = connect(self.signed_server, creator)
        self.assertTrue(client.handshake_done)

    def test_pin_and_ca_wrong_name_refused(self) -> None:
        creator = client_tls_options(
            "other.test", ca_file=self.ca_file, pin_sha256=public_key_pin(self.signed)
        )
        _, client, _ = connect(self.signed_server, creator)
        self.assertRefused(client, "not valid for")

    def test_pinned_but_expired_refused(self) -> None:
        creator = client_tls_options(
            "localhost", pin_sha256=public_key_pin(self.cert), clock=clock_at(NOW + 60 * DAY)
        )
        _, client, _ = connect(self.self_signed_server, creator)
        self.assertRefused(client, "has expired")

    def test_client_certificate(self) -> None:
        client_cert, client_key = tls_certs.write_identity(
            self.dir,
            "alice",
            tls_certs.make_leaf("alice", issuer=self.ca, client=True)[0],
            tls_certs.ec_key(),
        )
        # The key above does not match: a clear error names the key file.
        error = self.assertRaises(
            TLSConfigError,
            client_tls_options,
            "localhost",
            pin_sha256=public_key_pin(self.cert),
            client_cert=client_cert,
            client_key=client_key,
        )
        self.assertEqual(error.path, client_key)

    def test_client_certificate_accepted_by_mtls_server(self) -> None:
        cert, key = tls_certs.make_leaf("alice", issuer=self.ca, client=True)
        client_cert, client_key = tls_certs.write_identity(self.dir, "alice", cert, key)
        with capturedLogs():
            server_tls = load_server_context(
                self.settings(client_ca_file=self.ca_file, require_client_cert=True)
            )
        creator = client_tls_options(
            "localhost",
            pin_sha256=public_key_pin(self.cert),
            client_cert=client_cert,
            client_key=client_key,
        )
        server, client, _ = connect(server_tls, creator)
        self.assertTrue(server.handshake_done)
        info = tls.connection_info(server.transport)
        assert info is not None
        self.assertEqual(info.peer_subject, "CN=alice")

    def test_client_without_certificate_refused_by_mtls_server(self) -> None:
        with capturedLogs():
            server_tls = load_server_context(
                self.settings(client_ca_file=self.ca_file, require_client_cert=True)
            )
        creator = client_tls_options("localhost", pin_sha256=public_key_pin(self.cert))
        server, client, _ = connect(server_tls, creator)
        self.assertFalse(server.handshake_done)
        self.assertEqual(server.data, b"")
        assert server.lost is not None
        self.assertEqual(tls.describe_tls_error(server.lost), "peer did not return a certificate")
        self.assertIsNotNone(client.lost)

    def test_client_cert_without_key(self) -> None:
        error = self.assertRaises(
            TLSConfigError, client_tls_options, "localhost", client_cert=self.cert_file
        )
        self.assertIn("both", error.problem)

    def test_empty_hostname(self) -> None:
        self.assertRaises(ValueError, client_tls_options, "")

    def test_missing_ca_file(self) -> None:
        error = self.assertRaises(
            TLSConfigError, client_tls_options, "x", ca_file=self.path("missing.pem")
        )
        self.assertIn("CA file", error.problem)

    def test_client_refuses_tls11_server(self) -> None:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_VERSION)
        context.set_max_proto_version(SSL.TLS1_1_VERSION)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        context.use_certificate(self.cert)
        context.use_privatekey(self.key)

        @implementer(IOpenSSLServerConnectionCreator)
        class Old:
            def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
                return SSL.Connection(context)

        creator = client_tls_options("localhost", pin_sha256=public_key_pin(self.cert))
        _, client, _ = connect(Old(), creator)
        self.assertFalse(client.handshake_done)


class TwistedTLSPitfallTests(TLSTestCase):
    """
    Measured: on a Twisted TLS transport, C{loseConnection} before the handshake has
    finished aborts at once only if the protocol has written nothing yet; a protocol that
    greeted in C{connectionMade} (as the gateway does) is not closed until the handshake
    completes, so its handshake deadline must C{abortConnection} (or greet only once
    C{handshakeCompleted} is called).
    """

    def start(self, greet: bool) -> tuple[Any, StringTransport]:
        class Greeter(Protocol):
            def connectionMade(self) -> None:
                if greet:
                    self.transport.write(b"NETGUARD/1 gw AUTH=SCRAM-SHA-256\r\n")

        factory = TLSMemoryBIOFactory(self.load(), False, Factory.forProtocol(Greeter), Clock())
        tls_protocol = factory.buildProtocol(None)
        transport = StringTransport()
        tls_protocol.makeConnection(transport)
        return tls_protocol.wrappedProtocol, transport

    def test_silent_protocol_closes_mid_handshake(self) -> None:
        app, transport = self.start(greet=False)
        app.transport.loseConnection()
        self.assertTrue(transport.disconnecting)

    def test_greeting_protocol_does_not_close_mid_handshake(self) -> None:
        app, transport = self.start(greet=True)
        app.transport.loseConnection()
        self.assertFalse(transport.disconnecting)

    def test_abort_closes_greeting_protocol(self) -> None:
        app, transport = self.start(greet=True)
        app.transport.abortConnection()
        self.assertTrue(transport.disconnecting)


class GreetingOverTLSTests(TLSTestCase):
    """
    L{GuardedLineReceiver} over Twisted's TLS: Twisted pauses the application's producer
    whenever it holds an application write until the handshake ends. A receiver that then
    stopped reading would never read the client's last handshake message: measured under load
    (a greeting timer firing mid-handshake), connections stayed stuck until the handshake
    deadline. The greeting delay therefore starts at C{handshakeCompleted}, and a pause
    mid-handshake never stops reading.
    """

    def start(self) -> tuple[Any, Any, StringTransport, Clock]:
        clock = Clock()

        class Greeter(GuardedLineReceiver):
            def greet(self) -> None:
                self.sendLine(b"HELLO")

        limits = FramingLimits(greeting_delay=0.05, handshake_timeout=10)
        factory = TLSMemoryBIOFactory(
            self.load(), False, Factory.forProtocol(lambda: Greeter(limits, clock)), clock
        )
        tls_protocol = factory.buildProtocol(None)
        transport = StringTransport()
        tls_protocol.makeConnection(transport)
        client = SSL.Connection(client_context())
        client.set_connect_state()
        return tls_protocol, client, transport, clock

    def pump(self, tls_protocol: Any, client: SSL.Connection, transport: StringTransport) -> None:
        """
        Client -> server, then server -> client, once.
        """
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            tls_protocol.dataReceived(client.bio_read(65536))
        except SSL.WantReadError:
            pass
        written = transport.value()
        transport.clear()
        if written:
            client.bio_write(written)

    def test_greeting_delay_counts_from_handshake_end(self) -> None:
        tls_protocol, client, transport, clock = self.start()
        receiver = tls_protocol.wrappedProtocol
        self.pump(tls_protocol, client, transport)  # ClientHello in, server flight out
        clock.advance(1.0)  # far past the greeting delay, still mid-handshake
        self.assertEqual(receiver.phase, FramingPhase.PRE_GREETING)
        self.assertEqual(transport.producerState, "producing")  # still reading
        self.pump(tls_protocol, client, transport)  # the client's Finished
        self.assertTrue(tls_protocol._handshakeDone)
        self.assertEqual(receiver.phase, FramingPhase.PRE_GREETING)  # the delay runs now
        clock.advance(0.05)
        self.pump(tls_protocol, client, transport)
        self.assertEqual(client.recv(1024), b"HELLO\r\n")

    def test_pause_mid_handshake_keeps_reading(self) -> None:
        tls_protocol, client, transport, clock = self.start()
        receiver = tls_protocol.wrappedProtocol
        # Before the ClientHello is read, as a timer firing on a busy server does: TLS holds
        # the write until the handshake ends and pauses us.
        receiver.sendLine(b"EARLY")
        clock.advance(0)  # Twisted's TLS transport aggregates small writes until then
        self.assertTrue(receiver._write_paused)
        self.assertEqual(transport.producerState, "producing")
        self.pump(tls_protocol, client, transport)  # ClientHello in, server flight out
        self.pump(tls_protocol, client, transport)  # so the Finished is still read
        self.assertTrue(tls_protocol._handshakeDone)
        self.assertFalse(receiver._write_paused)  # TLS sent the held write and resumed us
        self.pump(tls_protocol, client, transport)
        self.assertEqual(client.recv(1024), b"EARLY\r\n")


# -- pins -----------------------------------------------------------------------------------------


class PinTests(unittest.TestCase):
    def test_pin_is_sha256_of_spki(self) -> None:
        cert, key = tls_certs.make_leaf()
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        expected = base64.b64encode(hashlib.sha256(spki).digest()).decode()
        self.assertEqual(public_key_pin(cert), expected)
        self.assertEqual(len(expected), 44)

    def test_pin_survives_reissue_with_same_key(self) -> None:
        key = tls_certs.ec_key()
        first = tls_certs.make_leaf("a.test", key=key)[0]
        second = tls_certs.make_leaf("b.test", key=key)[0]
        self.assertNotEqual(first, second)
        self.assertEqual(public_key_pin(first), public_key_pin(second))

    def test_pin_differs_for_another_key(self) -> None:
        self.assertNotEqual(
            public_key_pin(tls_certs.make_leaf()[0]), public_key_pin(tls_certs.make_leaf()[0])
        )

    def test_parse_one(self) -> None:
        pin = public_key_pin(tls_certs.make_leaf()[0])
        self.assertEqual(parse_pins(pin), {base64.b64decode(pin)})

    def test_parse_curl_prefix(self) -> None:
        pin = public_key_pin(tls_certs.make_leaf()[0])
        self.assertEqual(parse_pins("sha256//" + pin), {base64.b64decode(pin)})

    def test_parse_several(self) -> None:
        a = public_key_pin(tls_certs.make_leaf()[0])
        b = public_key_pin(tls_certs.make_leaf()[0])
        self.assertEqual(len(parse_pins(f"{a}, {b}")), 2)
        self.assertEqual(parse_pins([a, b]), parse_pins(f"{a},{b}"))

    def test_parse_not_base64(self) -> None:
        error = self.assertRaises(TLSConfigError, parse_pins, "not base64!")
        self.assertEqual(error.path, "pin_sha256")

    def test_parse_wrong_length(self) -> None:
        self.assertRaises(TLSConfigError, parse_pins, base64.b64encode(b"x" * 20).decode())

    def test_parse_hex_fingerprint_refused(self) -> None:
        self.assertRaises(TLSConfigError, parse_pins, "ab" * 32)

    def test_parse_empty(self) -> None:
        self.assertRaises(TLSConfigError, parse_pins, "")

    def test_parse_empty_list(self) -> None:
        self.assertRaises(TLSConfigError, parse_pins, [])

    def test_parse_non_ascii(self) -> None:
        self.assertRaises(TLSConfigError, parse_pins, "é" * 44)


class DescribeErrorTests(unittest.TestCase):
    def test_ssl_error(self) -> None:
        error = SSL.Error([("SSL routines", "", "wrong version number")])
        self.assertEqual(tls.describe_tls_error(Failure(error)), "wrong version number")

    def test_verification_error(self) -> None:
        self.assertEqual(tls.describe_tls_error(TLSVerificationError("bad pin")), "bad pin")

    def test_other_error(self) -> None:
        self.assertIsNone(tls.describe_tls_error(Failure(ValueError("x"))))

    def test_none(self) -> None:
        self.assertIsNone(tls.describe_tls_error(None))


# -- self-signed certificates ---------------------------------------------------------------------


class SelfSignedTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.key_path = os.path.join(self.dir, "key.pem")
        self.cert_path = os.path.join(self.dir, "cert.pem")

    def make(self, hostname: str = "gw.example.org", **kwargs: Any) -> CertificateInfo:
        return make_self_signed(hostname, self.key_path, self.cert_path, **kwargs)

    def certificate(self) -> x509.Certificate:
        with open(self.cert_path, "rb") as handle:
            return x509.load_pem_x509_certificate(handle.read())

    def test_modes(self) -> None:
        self.make()
        self.assertEqual(stat.S_IMODE(os.stat(self.key_path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.cert_path).st_mode), 0o644)

    def test_modes_under_permissive_umask(self) -> None:
        old = os.umask(0)
        try:
            self.make()
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(self.key_path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.cert_path).st_mode), 0o644)

    def test_dns_name(self) -> None:
        info = self.make()
        self.assertEqual(info.dns_names, ("gw.example.org",))
        self.assertEqual(info.ip_addresses, ())
        cert = self.certificate()
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        self.assertEqual(cn, "gw.example.org")
        self.assertEqual(cert.subject, cert.issuer)

    def test_ip_address(self) -> None:
        info = self.make("127.0.0.1")
        self.assertEqual(info.ip_addresses, ("127.0.0.1",))
        self.assertEqual(info.dns_names, ())

    def test_ipv6_address(self) -> None:
        self.assertEqual(self.make("::1").ip_addresses, ("::1",))

    def test_key_is_p256(self) -> None:
        info = self.make()
        self.assertEqual(info.key_type, "EC secp256r1")
        with open(self.key_path, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.assertEqual(info.pin_sha256, public_key_pin(self.certificate()))

    def test_server_extensions(self) -> None:
        self.make()
        cert = self.certificate()
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(basic.critical)
        self.assertFalse(basic.value.ca)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(usage), [ExtendedKeyUsageOID.SERVER_AUTH])

    def test_validity_from_clock(self) -> None:
        start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
        info = self.make(days=10, clock=clock_at(start))
        self.assertEqual(info.not_after, start + datetime.timedelta(days=10))
        self.assertEqual(info.not_before, start - datetime.timedelta(minutes=5))

    def test_refuses_to_overwrite_key(self) -> None:
        tls_certs.write(self.key_path, b"precious", 0o600)
        error = self.assertRaises(TLSConfigError, self.make)
        self.assertEqual(error.path, self.key_path)
        with open(self.key_path, "rb") as handle:
            self.assertEqual(handle.read(), b"precious")
        self.assertFalse(os.path.exists(self.cert_path))

    def test_refuses_to_overwrite_cert(self) -> None:
        tls_certs.write(self.cert_path, b"precious")
        error = self.assertRaises(TLSConfigError, self.make)
        self.assertEqual(error.path, self.cert_path)
        self.assertFalse(os.path.exists(self.key_path))

    def test_refuses_dangling_symlink(self) -> None:
        os.symlink(os.path.join(self.dir, "elsewhere"), self.key_path)
        self.assertRaises(TLSConfigError, self.make)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "elsewhere")))

    def test_overwrite_when_asked(self) -> None:
        first = self.make()
        second = self.make(overwrite=True)
        self.assertNotEqual(first.pin_sha256, second.pin_sha256)
        self.assertEqual(public_key_pin(self.certificate()), second.pin_sha256)
        self.assertEqual(stat.S_IMODE(os.stat(self.key_path).st_mode), 0o600)

    def test_no_temporary_files_left(self) -> None:
        self.make()
        self.assertEqual(sorted(os.listdir(self.dir)), ["cert.pem", "key.pem"])

    def test_no_temporary_files_left_after_refusal(self) -> None:
        self.make()
        self.assertRaises(TLSConfigError, self.make)
        self.assertEqual(sorted(os.listdir(self.dir)), ["cert.pem", "key.pem"])

    def test_loads_as_server_identity(self) -> None:
        info = self.make("localhost")
        with capturedLogs():
            server_tls = load_server_context(ServerTLSSettings(self.cert_path, self.key_path))
        self.assertEqual(server_tls.warnings, ())
        self.assertEqual(server_tls.certificate_info, info)

    def test_usable_as_client_ca_file(self) -> None:
        self.make("localhost")
        with capturedLogs():
            server_tls = load_server_context(ServerTLSSettings(self.cert_path, self.key_path))
        _, client, _ = connect(server_tls, client_tls_options("localhost", ca_file=self.cert_path))
        self.assertTrue(client.handshake_done)

    def test_empty_hostname(self) -> None:
        self.assertRaises(ValueError, self.make, "")
        self.assertEqual(os.listdir(self.dir), [])

    def test_bad_days(self) -> None:
        self.assertRaises(ValueError, self.make, days=0)
        self.assertEqual(os.listdir(self.dir), [])

"""
Tests for L{netguard.tls.binding}: the C{tls-server-end-point} data (RFC 5929) the TLS layer
hands to SCRAM, and the TLS package's independence from L{netguard.auth}. The channel binding
of live connections is tested in L{tests.test_tls.ChannelBindingTests}.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
import sys

from asn1crypto.x509 import Certificate
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.trial import unittest

from netguard.auth.scram import SCRAM_SHA_256_PLUS, ClientExchange, ServerExchange
from netguard.auth.users import UserStore, make_record
from netguard.tls import binding
from netguard.tls.binding import (
    TLS_SERVER_END_POINT,
    ServedBinding,
    channel_binding_for,
    server_end_point_binding,
    tls_server_end_point,
)
from tests.test_tls import TLSTestCase, client_context, run_handshake


def make_cert(
    algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None,
    key: ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | None = None,
) -> bytes:
    """
    A DER certificate signed with C{algorithm} (L{None} for Ed25519 and Ed448 keys).
    """
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netguard test")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return cert.public_bytes(Encoding.DER)


def relabel(der: bytes, algorithm: str) -> bytes:
    """
    The same certificate, claiming another signature algorithm (the signature itself is not
    checked for channel binding; cryptography no longer signs with SHA-1 or MD5).
    """
    cert = Certificate.load(der)
    cert["signature_algorithm"] = {"algorithm": algorithm}
    cert["tbs_certificate"]["signature"] = {"algorithm": algorithm}
    out: bytes = cert.dump(force=True)
    return out


class TlsServerEndPointTests(unittest.TestCase):
    """
    L{tls_server_end_point} hashes the DER certificate with its signature's hash (RFC 5929
    section 4.1), SHA-256 in place of MD5 and SHA-1, and refuses what it cannot hash.
    """

    def test_sha256(self) -> None:
        der = make_cert(hashes.SHA256())
        self.assertEqual(tls_server_end_point(der), hashlib.sha256(der).digest())

    def test_sha384(self) -> None:
        der = make_cert(hashes.SHA384())
        self.assertEqual(tls_server_end_point(der), hashlib.sha384(der).digest())

    def test_sha512(self) -> None:
        der = make_cert(hashes.SHA512())
        self.assertEqual(tls_server_end_point(der), hashlib.sha512(der).digest())

    def test_sha1_upgraded(self) -> None:
        der = relabel(make_cert(hashes.SHA256()), "sha1_ecdsa")
        self.assertEqual(Certificate.load(der).hash_algo, "sha1")
        self.assertEqual(tls_server_end_point(der), hashlib.sha256(der).digest())

    def test_md5_upgraded(self) -> None:
        der = relabel(make_cert(hashes.SHA256()), "md5_rsa")
        self.assertEqual(Certificate.load(der).hash_algo, "md5")
        self.assertEqual(tls_server_end_point(der), hashlib.sha256(der).digest())

    def test_garbage(self) -> None:
        self.assertRaises(ValueError, tls_server_end_point, b"not a certificate")

    def test_empty(self) -> None:
        self.assertRaises(ValueError, tls_server_end_point, b"")

    def test_binds_an_exchange(self) -> None:
        """
        The data binds a SCRAM-SHA-256-PLUS exchange that both sides complete.
        """
        der = make_cert(hashes.SHA256())
        data = tls_server_end_point(der)
        store = UserStore.from_records([make_record("alice", "correct horse")])
        binding = (TLS_SERVER_END_POINT, data)
        server = ServerExchange(store, SCRAM_SHA_256_PLUS, binding)
        client = ClientExchange("alice", "correct horse", SCRAM_SHA_256_PLUS, binding)
        client.verify(server.final(client.final(server.first(client.first()))))
        self.assertTrue(server.authenticated)

    def test_ed25519_uses_sha512(self) -> None:
        """
        An Ed25519 signature has no separate hash; SHA-512 (Ed25519's own, and scramp's
        choice) binds it.
        """
        der = make_cert(None, ed25519.Ed25519PrivateKey.generate())
        self.assertEqual(tls_server_end_point(der), hashlib.sha512(der).digest())

    def test_ed448_refused(self) -> None:
        """
        Ed448 has no fixed-length hash to bind with: a L{ValueError}, never another error.
        """
        der = make_cert(None, ed448.Ed448PrivateKey.generate())
        error = self.assertRaises(ValueError, tls_server_end_point, der)
        self.assertIn("no tls-server-end-point data", str(error))

    def test_binding_pairs_the_type_name(self) -> None:
        """
        L{server_end_point_binding} is the pair the SCRAM exchanges take.
        """
        der = make_cert(hashes.SHA256())
        self.assertEqual(
            server_end_point_binding(der), (TLS_SERVER_END_POINT, tls_server_end_point(der))
        )
        self.assertEqual(TLS_SERVER_END_POINT, "tls-server-end-point")


class _Handle:
    """
    The part of a Twisted TLS transport that L{channel_binding_for} reads.
    """

    def __init__(self, connection: SSL.Connection) -> None:
        self.connection = connection

    def getHandle(self) -> SSL.Connection:
        return self.connection


def _not_called(cert_der: bytes) -> bytes:
    raise AssertionError("the certificate was hashed again")


class ServedBindingTests(TLSTestCase):
    """
    The server side of a connection reads its binding from its context (computed once when
    the context was built) instead of converting and hashing the certificate again.
    """

    def handshake(self, context: SSL.Context) -> SSL.Connection:
        server = SSL.Connection(context, None)
        self.assertTrue(run_handshake(server, SSL.Connection(client_context(), None)).done)
        return server

    def test_server_side_reads_the_context(self) -> None:
        """
        On a context netguard built, the server's binding is the certificate's, and no
        certificate is hashed for the connection.
        """
        server_tls = self.load()
        server = self.handshake(server_tls.context)
        expected = server_end_point_binding(self.cert.public_bytes(Encoding.DER))
        self.patch(binding, "tls_server_end_point", _not_called)
        self.assertEqual(channel_binding_for(_Handle(server), "server"), expected)

    def test_context_carries_its_certificate_binding(self) -> None:
        """
        The value kept on the context is the binding of the certificate it serves.
        """
        served = self.load().context.get_app_data()
        self.assertIsInstance(served, ServedBinding)
        self.assertEqual(
            served.binding, server_end_point_binding(self.cert.public_bytes(Encoding.DER))
        )

    def test_other_context_is_hashed(self) -> None:
        """
        A server context netguard did not build (no L{ServedBinding}) still gets the
        binding of the certificate it served, computed from the connection.
        """
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate(self.cert)
        context.use_privatekey(self.key)
        context.set_app_data("someone else's data")
        server = self.handshake(context)
        self.assertEqual(
            channel_binding_for(_Handle(server), "server"),
            server_end_point_binding(self.cert.public_bytes(Encoding.DER)),
        )

    def test_client_side_reads_the_peer_certificate(self) -> None:
        """
        The client side never trusts context data: it hashes the certificate it was shown.
        """
        server_tls = self.load()
        client = SSL.Connection(client_context(), None)
        client.set_app_data(ServedBinding(("tls-server-end-point", b"forged")))
        self.assertTrue(run_handshake(server_tls.serverConnectionForTLS(None), client).done)
        self.assertEqual(
            channel_binding_for(_Handle(client), "client"),
            server_end_point_binding(self.cert.public_bytes(Encoding.DER)),
        )


class LayeringTests(unittest.TestCase):
    """
    The TLS layer hands bytes to SCRAM and never imports it.
    """

    def test_tls_imports_nothing_from_auth(self) -> None:
        """
        Importing L{netguard.tls} (every module of it) loads no module of L{netguard.auth}.
        """
        code = (
            "import sys, pkgutil, importlib, netguard.tls as t\n"
            "for m in pkgutil.iter_modules(t.__path__):\n"
            "    importlib.import_module('netguard.tls.' + m.name)\n"
            "print(sorted(n for n in sys.modules if n.startswith('netguard.auth')))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.strip(), "[]")

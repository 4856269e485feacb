"""
Certificates for the TLS tests, made with C{cryptography}: a CA, server and client
certificates it signs, self-signed, expired and not-yet-valid certificates, written as PEM
files the way an operator would have them (keys mode 0600).

Not a test module: L{tests.test_tls} and L{tests.integration.test_tls_real} share it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def ec_key() -> ec.EllipticCurvePrivateKey:
    """
    A fresh P-256 key.
    """
    return ec.generate_private_key(ec.SECP256R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """
    A fresh RSA key.
    """
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(
    common_name: str = "netguard test CA", key: CertificateIssuerPrivateKeyTypes | None = None
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """
    A self-signed CA certificate and its key.
    """
    key = key or ec_key()
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    hostname: str = "localhost",
    *,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    issuer: tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes] | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    client: bool = False,
    extra_names: tuple[str, ...] = (),
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """
    An end-entity certificate for C{hostname} (a DNS name or an IP address), signed by
    C{issuer} or self-signed, and its key.
    """
    key = key or ec_key()
    names: list[x509.GeneralName] = []
    for name in (hostname, *extra_names):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    issuer_name = issuer[0].subject if issuer else _name(hostname)
    signing_key = issuer[1] if issuer else key
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hostname))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 30 * DAY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(signing_key, hashes.SHA256())
    )
    return cert, key


def cert_pem(*certs: x509.Certificate) -> bytes:
    """
    PEM of one or more certificates.
    """
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: CertificateIssuerPrivateKeyTypes, password: bytes | None = None) -> bytes:
    """
    PKCS#8 PEM of a key, encrypted when C{password} is given.
    """
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write(path: str, data: bytes, mode: int = 0o644) -> str:
    """
    Write C{data} to C{path} with C{mode}; return the path.
    """
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
    return path


def write_identity(
    directory: str,
    stem: str,
    cert: x509.Certificate | tuple[x509.Certificate, ...],
    key: CertificateIssuerPrivateKeyTypes,
) -> tuple[str, str]:
    """
    Write C{stem}.crt (mode 0644) and C{stem}.key (mode 0600) into C{directory}.

    @return: the certificate and key paths.
    """
    certs = cert if isinstance(cert, tuple) else (cert,)
    cert_path = write(os.path.join(directory, f"{stem}.crt"), cert_pem(*certs))
    key_path = write(os.path.join(directory, f"{stem}.key"), key_pem(key), 0o600)
    return cert_path, key_path

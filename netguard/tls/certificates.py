# -*- test-case-name: tests.test_tls -*-
"""
Certificates and keys on disk: bounded PEM reading, the checks a served certificate and its
key must pass (key-file mode, key strength, validity dates, chain order), public-key pins,
and the self-signed certificates of C{netguard cert}. docs/tls.md gives the rules and why.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import secrets
import time
from collections.abc import Sequence
from typing import Any

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
from twisted.internet.interfaces import (
    IReactorTime,
)

from netguard.operator_files import NotRegularFile, read_regular
from netguard.tls.errors import TLSConfigError

#: The largest PEM file read, in bytes (a certificate chain is a few kilobytes).
MAX_PEM_BYTES = 1 << 20

#: A served certificate that expires within this many days is reported in the warnings.
EXPIRY_WARNING_DAYS = 14

#: The smallest RSA key accepted, in bits.
MIN_RSA_BITS = 2048

_ALLOWED_CURVES = ("secp256r1", "secp384r1")


class _WallClock:
    """
    The system's clock, for callers that inject none.
    """

    def seconds(self) -> float:
        return time.time()


def utc_now(clock: IReactorTime | None) -> datetime.datetime:
    """
    @param clock: the clock to read, or L{None} for the system's.
    @return: its time, as an aware UTC datetime.
    """
    source: Any = clock if clock is not None else _WallClock()
    seconds = float(source.seconds())
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


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


def spki(key: PublicKeyTypes) -> bytes:
    """
    @param key: a public key.
    @return: its DER SubjectPublicKeyInfo (what a pin hashes).
    """
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
    digest = hashlib.sha256(spki(certificate.public_key())).digest()
    return base64.b64encode(digest).decode("ascii")


def _read_pem(path: str, what: str) -> bytearray:
    """
    Read a PEM file, bounded. The result is a L{bytearray} so the caller can wipe a key's
    bytes once they are parsed (L{_wipe}).
    """
    try:
        data = bytearray(read_regular(path, MAX_PEM_BYTES + 1))
    except NotRegularFile as e:
        raise TLSConfigError(path, f"{what}: is {e.kind}, not a file") from None
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


def load_certificates(path: str, what: str) -> list[x509.Certificate]:
    """
    Read the PEM certificates of a file, in file order.

    @param path: the file.
    @param what: what the file is, for the error (C{"certificate file"}...).
    @return: at least one certificate.
    @raise TLSConfigError: for a missing, unreadable, oversized or unparsable file.
    """
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


def load_private_key(path: str) -> tuple[PrivateKeyTypes, str | None]:
    """
    Read an unencrypted private key, refusing a file others can use and a weak or
    unsupported key; the PEM text is wiped once parsed.

    @param path: the key file.
    @return: the key, and a warning for a group-readable file (or L{None}).
    @raise TLSConfigError: naming the file and the problem.
    """
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


def check_validity(certificate: x509.Certificate, path: str, now: datetime.datetime) -> str | None:
    """
    @return: a warning when C{certificate} expires within L{EXPIRY_WARNING_DAYS}, else L{None}.
    @raise TLSConfigError: when it is not valid yet or has expired at C{now}.
    """
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


def chain_warnings(chain: Sequence[x509.Certificate], path: str) -> list[str]:
    """
    @return: a warning for each certificate of C{chain} not issued by the next one.
    """
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
    certificate = build_self_signed(hostname, key, days=days, now=utc_now(clock))
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

"""
Tests for C{netguard cert} (L{netguard.cli.cert}): C{selfsigned}, C{pin} and C{check}, run
in-process with injected streams and a temporary directory.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import os
import shlex
import stat
import tomllib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.trial import unittest

from netguard import cli, config, tls
from netguard.cli.cert import _cert_hostname
from netguard.endpoints import split_description
from tests import tls_certs

HOST = "gw.example.org"


def _parse(description: str) -> tuple[list[str], dict[str, str]]:
    """
    The positional and named fields of an endpoint string, as Twisted's parser reads them
    (netguard.endpoints splits the same way: tests.test_endpoints checks that).
    """
    fields = split_description(description)
    return [f.value for f in fields if f.key is None], {f.key: f.value for f in fields if f.key}


def read_certificate(path: str) -> x509.Certificate:
    """
    The first certificate of a PEM file.
    """
    with open(path, "rb") as handle:
        return x509.load_pem_x509_certificates(handle.read())[0]


def mode_of(path: str) -> int:
    """
    The permission bits of C{path}.
    """
    return stat.S_IMODE(os.stat(path).st_mode)


def field(out: str, label: str) -> str:
    """
    The value of the first C{label: value} line of a command's output.
    """
    for line in out.splitlines():
        name, sep, value = line.strip().partition(":")
        if sep and name == label:
            return value.strip()
    raise AssertionError(f"no {label!r} line in:\n{out}")


class CertTestBase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.key = os.path.join(self.dir, "key.pem")
        self.cert = os.path.join(self.dir, "cert.pem")

    def run_cli(self, argv: list[str]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(argv, stdin=io.StringIO(""), stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def selfsigned(self, *extra: str, hostname: str = HOST) -> tuple[int, str, str]:
        return self.run_cli(
            ["cert", "selfsigned", "--hostname", hostname, "--key", self.key, "--cert", self.cert]
            + list(extra)
        )

    def make_pair(self, hostname: str = HOST) -> str:
        code, out, err = self.selfsigned(hostname=hostname)
        self.assertEqual((code, err), (0, ""))
        return out

    def assert_one_line_error(self, code: int, err: str, *fragments: str) -> None:
        """
        Exit status 2 and exactly one line C{netguard: error: ...}, no traceback.
        """
        self.assertEqual(code, 2)
        self.assertTrue(err.startswith("netguard: error: "), err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertNotIn("Traceback", err)
        for fragment in fragments:
            self.assertIn(fragment, err)


class SelfSignedTests(CertTestBase):
    def test_key_mode_0600(self) -> None:
        self.make_pair()
        self.assertEqual(mode_of(self.key), 0o600)

    def test_cert_mode_0644(self) -> None:
        self.make_pair()
        self.assertEqual(mode_of(self.cert), 0o644)

    def test_modes_do_not_depend_on_umask(self) -> None:
        old = os.umask(0o000)
        self.addCleanup(os.umask, old)
        self.make_pair()
        self.assertEqual((mode_of(self.key), mode_of(self.cert)), (0o600, 0o644))

    def test_key_matches_certificate(self) -> None:
        self.make_pair()
        with open(self.key, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
        public = read_certificate(self.cert).public_key()
        der = serialization.Encoding.DER
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        self.assertEqual(key.public_key().public_bytes(der, spki), public.public_bytes(der, spki))

    def test_printed_pin_is_public_key_pin_of_written_cert(self) -> None:
        out = self.make_pair()
        self.assertEqual(field(out, "pin-sha256"), tls.public_key_pin(read_certificate(self.cert)))

    def test_printed_pin_is_accepted_by_parse_pins(self) -> None:
        out = self.make_pair()
        self.assertEqual(len(tls.parse_pins(field(out, "pin-sha256"))), 1)

    def test_prints_files_and_expiry(self) -> None:
        out = self.make_pair()
        certificate = read_certificate(self.cert)
        self.assertTrue(field(out, "key").startswith(self.key + " (mode 0600"))
        self.assertTrue(field(out, "certificate").startswith(self.cert + " (mode 0644"))
        expires = certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
        self.assertIn(expires, out)

    def test_certificate_names_the_dns_hostname(self) -> None:
        self.make_pair()
        san = read_certificate(self.cert).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        self.assertEqual(san.value.get_values_for_type(x509.DNSName), [HOST])

    def test_certificate_names_an_ip_address(self) -> None:
        self.make_pair(hostname="192.0.2.10")
        san = read_certificate(self.cert).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        self.assertEqual(
            [str(a) for a in san.value.get_values_for_type(x509.IPAddress)], ["192.0.2.10"]
        )

    def test_days(self) -> None:
        code, _, _ = self.selfsigned("--days", "30")
        self.assertEqual(code, 0)
        certificate = read_certificate(self.cert)
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        # Validity starts five minutes early for clock skew.
        self.assertEqual(lifetime, datetime.timedelta(days=30, minutes=5))

    def test_refuses_to_overwrite_an_existing_key(self) -> None:
        with open(self.key, "wb") as handle:
            handle.write(b"old key")
        code, out, err = self.selfsigned()
        self.assert_one_line_error(code, err, self.key, "--force")
        self.assertEqual(out, "")
        with open(self.key, "rb") as handle:
            self.assertEqual(handle.read(), b"old key")
        self.assertFalse(os.path.exists(self.cert))

    def test_refuses_to_overwrite_an_existing_cert(self) -> None:
        with open(self.cert, "wb") as handle:
            handle.write(b"old cert")
        code, _, err = self.selfsigned()
        self.assert_one_line_error(code, err, self.cert, "--force")
        with open(self.cert, "rb") as handle:
            self.assertEqual(handle.read(), b"old cert")
        self.assertFalse(os.path.exists(self.key))

    def test_refuses_a_second_run_on_the_same_files(self) -> None:
        first = self.make_pair()
        code, _, err = self.selfsigned()
        self.assert_one_line_error(code, err, "exists already")
        self.assertEqual(
            field(first, "pin-sha256"), tls.public_key_pin(read_certificate(self.cert))
        )

    def test_force_replaces_key_and_cert(self) -> None:
        first = self.make_pair()
        code, second, err = self.selfsigned("--force")
        self.assertEqual((code, err), (0, ""))
        self.assertNotEqual(field(first, "pin-sha256"), field(second, "pin-sha256"))
        self.assertEqual(
            field(second, "pin-sha256"), tls.public_key_pin(read_certificate(self.cert))
        )
        self.assertEqual((mode_of(self.key), mode_of(self.cert)), (0o600, 0o644))

    def test_default_paths_in_state_dir(self) -> None:
        state_dir = os.path.join(self.dir, "state")
        self.patch(config, "default_state_dir", lambda: state_dir)
        code, out, err = self.run_cli(["cert", "selfsigned", "--hostname", HOST])
        self.assertEqual((code, err), (0, ""))
        key = os.path.join(state_dir, "tls", "key.pem")
        cert = os.path.join(state_dir, "tls", "cert.pem")
        self.assertEqual(mode_of(os.path.join(state_dir, "tls")), 0o700)
        self.assertEqual(mode_of(state_dir), 0o700)
        self.assertEqual((mode_of(key), mode_of(cert)), (0o600, 0o644))
        self.assertEqual(field(out, "pin-sha256"), tls.public_key_pin(read_certificate(cert)))

    def test_default_tls_dir_exists_already(self) -> None:
        state_dir = os.path.join(self.dir, "state")
        os.makedirs(os.path.join(state_dir, "tls"), mode=0o750)
        self.patch(config, "default_state_dir", lambda: state_dir)
        code, _, err = self.run_cli(["cert", "selfsigned", "--hostname", HOST])
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(os.path.exists(os.path.join(state_dir, "tls", "key.pem")))

    def test_default_tls_path_is_a_file(self) -> None:
        state_dir = os.path.join(self.dir, "state")
        os.makedirs(state_dir)
        with open(os.path.join(state_dir, "tls"), "w") as handle:
            handle.write("not a directory")
        self.patch(config, "default_state_dir", lambda: state_dir)
        code, _, err = self.run_cli(["cert", "selfsigned", "--hostname", HOST])
        self.assert_one_line_error(code, err, "not a directory")

    def test_only_cert_defaults(self) -> None:
        state_dir = os.path.join(self.dir, "state")
        self.patch(config, "default_state_dir", lambda: state_dir)
        code, _, err = self.run_cli(["cert", "selfsigned", "--hostname", HOST, "--key", self.key])
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(mode_of(self.key), 0o600)
        self.assertTrue(os.path.exists(os.path.join(state_dir, "tls", "cert.pem")))
        self.assertFalse(os.path.exists(os.path.join(state_dir, "tls", "key.pem")))

    def test_state_dir_unknown(self) -> None:
        def no_home() -> str:
            raise config.ConfigError("<defaults>", "state_dir", "no home directory")

        self.patch(config, "default_state_dir", no_home)
        code, _, err = self.run_cli(["cert", "selfsigned", "--hostname", HOST])
        self.assert_one_line_error(code, err, "--key", "--cert")

    def test_missing_directory(self) -> None:
        self.key = os.path.join(self.dir, "nowhere", "key.pem")
        code, _, err = self.selfsigned()
        self.assert_one_line_error(code, err, "does not exist")
        self.assertFalse(os.path.exists(self.cert))

    def test_key_path_is_a_directory(self) -> None:
        os.mkdir(self.key)
        code, _, err = self.selfsigned()
        self.assert_one_line_error(code, err, "is a directory")

    def test_key_and_cert_the_same_file(self) -> None:
        self.cert = self.key
        code, _, err = self.selfsigned()
        self.assert_one_line_error(code, err, "two different files")
        self.assertFalse(os.path.exists(self.key))

    def test_days_zero(self) -> None:
        code, _, err = self.selfsigned("--days", "0")
        self.assert_one_line_error(code, err, "--days")
        self.assertFalse(os.path.exists(self.key))

    def test_days_negative(self) -> None:
        code, _, err = self.selfsigned("--days=-5")
        self.assert_one_line_error(code, err, "--days")

    def test_days_too_many(self) -> None:
        code, _, err = self.selfsigned("--days", "3651")
        self.assert_one_line_error(code, err, "--days")

    def test_days_not_a_number(self) -> None:
        code, _, err = self.selfsigned("--days", "forever")
        self.assertEqual(code, 2)
        self.assertIn("--days", err)
        self.assertNotIn("Traceback", err)

    def test_hostname_required(self) -> None:
        code, _, err = self.run_cli(["cert", "selfsigned", "--key", self.key])
        self.assertEqual(code, 2)
        self.assertIn("--hostname", err)
        self.assertNotIn("Traceback", err)

    def test_hostname_empty(self) -> None:
        code, _, err = self.selfsigned(hostname="")
        self.assert_one_line_error(code, err, "--hostname")

    def test_hostname_wildcard(self) -> None:
        code, _, err = self.selfsigned(hostname="*.example.org")
        self.assert_one_line_error(code, err, "--hostname")
        self.assertFalse(os.path.exists(self.key))

    def test_hostname_with_port(self) -> None:
        code, _, err = self.selfsigned(hostname="gw.example.org:7701")
        self.assert_one_line_error(code, err, "--hostname")

    def test_hostname_url(self) -> None:
        code, _, err = self.selfsigned(hostname="https://gw.example.org/")
        self.assert_one_line_error(code, err, "--hostname")

    def test_hostname_with_space(self) -> None:
        code, _, err = self.selfsigned(hostname="gw example")
        self.assert_one_line_error(code, err, "--hostname")

    def test_hostname_trailing_dot(self) -> None:
        code, _, err = self.selfsigned(hostname="gw.example.org.")
        self.assert_one_line_error(code, err, "--hostname")

    def test_hostname_label_too_long(self) -> None:
        code, _, err = self.selfsigned(hostname="a" * 64 + ".example.org")
        self.assert_one_line_error(code, err, "--hostname")

    def test_hostname_incomplete_ip_address(self) -> None:
        code, _, err = self.selfsigned(hostname="10.0.1")
        self.assert_one_line_error(code, err, "incomplete IP address")

    def test_hostname_with_newline(self) -> None:
        code, _, err = self.selfsigned(hostname="gw\nevil")
        self.assert_one_line_error(code, err, "--hostname")

    def test_internationalized_hostname(self) -> None:
        self.make_pair(hostname="bücher.example")
        san = read_certificate(self.cert).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        self.assertEqual(san.value.get_values_for_type(x509.DNSName), ["xn--bcher-kva.example"])


class SelfSignedOutputTests(CertTestBase):
    """
    The lines printed for pasting work where they are meant to go.
    """

    def server_toml(self, out: str) -> str:
        lines = out.splitlines()
        start = lines.index("  [[tls_listen]]")
        block = []
        for line in lines[start:]:
            if not line.strip():
                break
            block.append(line)
        return "\n".join(block) + "\n"

    def tunnel_words(self, out: str) -> list[str]:
        for line in out.splitlines():
            if line.strip().startswith("netguard tunnel "):
                return shlex.split(line)
        raise AssertionError(f"no tunnel line in:\n{out}")

    def endpoint_example(self, out: str) -> str:
        for line in out.splitlines():
            if line.strip().startswith("e.g. netguard:"):
                return line.strip()[len("e.g. ") :]
        raise AssertionError(f"no netguard: example in:\n{out}")

    def test_server_block_is_toml(self) -> None:
        out = self.make_pair()
        listener = tomllib.loads(self.server_toml(out))["tls_listen"][0]
        self.assertEqual(listener["cert_file"], self.cert)
        self.assertEqual(listener["key_file"], self.key)
        self.assertEqual(listener["endpoint"], "tcp:7701:interface=0.0.0.0")

    def test_server_block_for_ipv6_address(self) -> None:
        out = self.make_pair(hostname="::1")
        listener = tomllib.loads(self.server_toml(out))["tls_listen"][0]
        self.assertEqual(listener["endpoint"], "tcp6:7701:interface=\\:\\:1")

    def test_server_block_is_a_valid_configuration(self) -> None:
        """
        Depends on the C{[[tls_listen]]} wiring of L{netguard.config}.
        """
        out = self.make_pair()
        path = os.path.join(self.dir, "netguard.toml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.server_toml(out))
        # A short home: the default unix listener's path must fit in sun_path.
        loaded = config.load_config(path, environ={"HOME": "/home/ng"}, euid=1000)
        self.assertEqual(len(loaded.tls_listen), 1)
        settings = loaded.tls_listen[0].settings
        self.assertEqual((settings.cert_file, settings.key_file), (self.cert, self.key))
        tls.load_server_context(settings)

    def test_tunnel_line_parses(self) -> None:
        """
        The printed C{netguard tunnel} line is accepted by the tunnel's parser (which
        depends on the lead's C{--tls}/C{--pin-sha256} wiring).
        """
        out = self.make_pair()
        words = self.tunnel_words(out)
        self.assertEqual(words[:2], ["netguard", "tunnel"])
        args = cli.build_parser().parse_args(
            words[1:] + ["--service", "echo", "--user", "alice", "--listen", "tcp:6380"]
        )
        self.assertTrue(args.tls)
        self.assertEqual(args.pin_sha256, field(out, "pin-sha256"))
        self.assertEqual(args.gateway, f"tcp:host={HOST}:port=7701")

    def test_tunnel_line_for_ipv6_address(self) -> None:
        out = self.make_pair(hostname="::1")
        words = self.tunnel_words(out)
        gateway = words[words.index("--gateway") + 1]
        self.assertEqual(_parse(gateway)[1]["host"], "::1")

    def test_endpoint_keys(self) -> None:
        out = self.make_pair()
        pin = field(out, "pin-sha256")
        self.assertIn(f"  tls=1:pin_sha256={pin}\n", out)
        positional, named = _parse(self.endpoint_example(out))
        self.assertEqual(positional, ["netguard"])
        self.assertEqual(named["tls"], "1")
        self.assertEqual(named["pin_sha256"], pin)
        self.assertEqual(named["host"], HOST)

    def test_endpoint_example_for_ipv6_address(self) -> None:
        out = self.make_pair(hostname="::1")
        self.assertEqual(_parse(self.endpoint_example(out))[1]["host"], "::1")


class PinTests(CertTestBase):
    def test_pin_is_public_key_pin(self) -> None:
        self.make_pair()
        code, out, err = self.run_cli(["cert", "pin", self.cert])
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, tls.public_key_pin(read_certificate(self.cert)) + "\n")

    def test_pin_equals_selfsigned_output(self) -> None:
        printed = field(self.make_pair(), "pin-sha256")
        _, out, _ = self.run_cli(["cert", "pin", self.cert])
        self.assertEqual(out.strip(), printed)

    def test_pin_of_full_chain_is_the_leaf(self) -> None:
        ca = tls_certs.make_ca()
        leaf, _ = tls_certs.make_leaf(HOST, issuer=ca)
        path = tls_certs.write(self.cert, tls_certs.cert_pem(leaf, ca[0]))
        _, out, _ = self.run_cli(["cert", "pin", path])
        self.assertEqual(out, tls.public_key_pin(leaf) + "\n")

    def test_pin_of_der_file(self) -> None:
        leaf, _ = tls_certs.make_leaf(HOST)
        path = tls_certs.write(self.cert, leaf.public_bytes(serialization.Encoding.DER))
        code, out, err = self.run_cli(["cert", "pin", path])
        self.assert_one_line_error(code, err, "PEM", "-inform der")
        self.assertEqual(out, "")

    def test_pin_of_text_file(self) -> None:
        path = tls_certs.write(self.cert, b"hello\n")
        code, _, err = self.run_cli(["cert", "pin", path])
        self.assert_one_line_error(code, err, "holds no PEM certificate")

    def test_pin_of_empty_file(self) -> None:
        path = tls_certs.write(self.cert, b"")
        code, _, err = self.run_cli(["cert", "pin", path])
        self.assert_one_line_error(code, err, "holds no PEM certificate")

    def test_pin_of_private_key(self) -> None:
        self.make_pair()
        code, out, err = self.run_cli(["cert", "pin", self.key])
        self.assert_one_line_error(code, err, "private key")
        self.assertEqual(out, "")
        self.assertNotIn("BEGIN", err)

    def test_pin_of_broken_pem(self) -> None:
        path = tls_certs.write(
            self.cert, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        code, _, err = self.run_cli(["cert", "pin", path])
        self.assert_one_line_error(code, err, "cannot parse")

    def test_pin_of_huge_file(self) -> None:
        path = tls_certs.write(self.cert, b"-----BEGIN CERTIFICATE-----\n" * 40000)
        code, _, err = self.run_cli(["cert", "pin", path])
        self.assert_one_line_error(code, err, "larger than")

    def test_pin_of_missing_file(self) -> None:
        code, _, err = self.run_cli(["cert", "pin", os.path.join(self.dir, "absent.pem")])
        self.assert_one_line_error(code, err, "no such file")

    def test_pin_of_directory(self) -> None:
        code, _, err = self.run_cli(["cert", "pin", self.dir])
        self.assert_one_line_error(code, err, "is a directory")

    def test_pin_needs_a_file(self) -> None:
        code, _, err = self.run_cli(["cert", "pin"])
        self.assertEqual(code, 2)
        self.assertNotIn("Traceback", err)


class CheckTests(CertTestBase):
    def check(self, *extra: str) -> tuple[int, str, str]:
        return self.run_cli(["cert", "check", "--cert", self.cert, "--key", self.key, *extra])

    def test_good_pair(self) -> None:
        self.make_pair()
        code, out, err = self.check()
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(field(out, "pin-sha256"), tls.public_key_pin(read_certificate(self.cert)))
        self.assertIn(f"CN={HOST}", field(out, "subject"))
        self.assertEqual(field(out, "issuer"), "(self-signed)")
        self.assertEqual(field(out, "names"), f"DNS:{HOST}")
        self.assertEqual(field(out, "key type"), "EC secp256r1")
        self.assertNotIn("warning:", out)
        self.assertTrue(out.endswith("ok: netguard can serve this certificate and key\n"))

    def test_mismatched_pair(self) -> None:
        self.make_pair()
        other_key = os.path.join(self.dir, "other-key.pem")
        other_cert = os.path.join(self.dir, "other-cert.pem")
        code, _, _ = self.run_cli(
            ["cert", "selfsigned", "--hostname", HOST, "--key", other_key, "--cert", other_cert]
        )
        self.assertEqual(code, 0)
        code, out, err = self.run_cli(["cert", "check", "--cert", self.cert, "--key", other_key])
        self.assert_one_line_error(code, err, other_key, "does not belong")
        self.assertEqual(out, "")

    def test_world_readable_key(self) -> None:
        self.make_pair()
        os.chmod(self.key, 0o644)
        code, _, err = self.check()
        self.assert_one_line_error(code, err, "chmod 600")

    def test_group_readable_key_is_a_warning(self) -> None:
        self.make_pair()
        os.chmod(self.key, 0o640)
        code, out, err = self.check()
        self.assertEqual((code, err), (0, ""))
        self.assertIn("warning: key file", out)

    def test_soon_expiring_certificate_is_a_warning(self) -> None:
        self.selfsigned("--days", "5")
        code, out, _ = self.check()
        self.assertEqual(code, 0)
        self.assertIn("warning: certificate in", out)
        self.assertIn("expires", out)

    def test_expired_certificate(self) -> None:
        leaf, key = tls_certs.make_leaf(
            HOST,
            not_before=tls_certs.NOW - 10 * tls_certs.DAY,
            not_after=tls_certs.NOW - tls_certs.DAY,
        )
        tls_certs.write(self.cert, tls_certs.cert_pem(leaf))
        tls_certs.write(self.key, tls_certs.key_pem(key), 0o600)
        code, _, err = self.check()
        self.assert_one_line_error(code, err, "expired")

    def test_encrypted_key(self) -> None:
        leaf, key = tls_certs.make_leaf(HOST)
        tls_certs.write(self.cert, tls_certs.cert_pem(leaf))
        tls_certs.write(self.key, tls_certs.key_pem(key, b"secret"), 0o600)
        code, _, err = self.check()
        self.assert_one_line_error(code, err, "encrypted")

    def test_missing_key(self) -> None:
        self.make_pair()
        os.unlink(self.key)
        code, _, err = self.check()
        self.assert_one_line_error(code, err, self.key)

    def test_cert_and_key_swapped(self) -> None:
        self.make_pair()
        code, _, err = self.run_cli(["cert", "check", "--cert", self.key, "--key", self.cert])
        self.assert_one_line_error(code, err)

    def test_chain(self) -> None:
        ca = tls_certs.make_ca()
        leaf, key = tls_certs.make_leaf(HOST, issuer=ca)
        tls_certs.write(self.cert, tls_certs.cert_pem(leaf))
        tls_certs.write(self.key, tls_certs.key_pem(key), 0o600)
        chain = tls_certs.write(os.path.join(self.dir, "chain.pem"), tls_certs.cert_pem(ca[0]))
        code, out, err = self.check("--chain", chain)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(field(out, "issuer"), ca[0].subject.rfc4514_string())
        self.assertNotIn("warning:", out)

    def test_wrong_chain_is_a_warning(self) -> None:
        leaf, key = tls_certs.make_leaf(HOST, issuer=tls_certs.make_ca())
        other_ca, _ = tls_certs.make_ca("another CA")
        tls_certs.write(self.cert, tls_certs.cert_pem(leaf))
        tls_certs.write(self.key, tls_certs.key_pem(key), 0o600)
        chain = tls_certs.write(os.path.join(self.dir, "chain.pem"), tls_certs.cert_pem(other_ca))
        code, out, _ = self.check("--chain", chain)
        self.assertEqual(code, 0)
        self.assertIn("did not issue", out)

    def test_client_ca(self) -> None:
        self.make_pair()
        ca, _ = tls_certs.make_ca()
        path = tls_certs.write(os.path.join(self.dir, "clients.pem"), tls_certs.cert_pem(ca))
        code, out, err = self.check("--ca", path)
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"verified against {path}", field(out, "client certs"))

    def test_client_ca_not_pem(self) -> None:
        self.make_pair()
        path = tls_certs.write(os.path.join(self.dir, "clients.pem"), b"\x30\x82garbage")
        code, _, err = self.check("--ca", path)
        self.assert_one_line_error(code, err, "client CA file")

    def test_needs_cert_and_key(self) -> None:
        code, _, err = self.run_cli(["cert", "check", "--cert", self.cert])
        self.assertEqual(code, 2)
        self.assertIn("--key", err)
        self.assertNotIn("Traceback", err)


class CertCommandTests(CertTestBase):
    def test_listed_in_help(self) -> None:
        code, out, _ = self.run_cli(["--help"])
        self.assertEqual(code, 0)
        self.assertIn("    cert ", out)

    def test_cert_help_lists_its_commands(self) -> None:
        code, out, _ = self.run_cli(["cert", "--help"])
        self.assertEqual(code, 0)
        for name in ("selfsigned", "pin", "check"):
            self.assertIn(name, out)

    def test_cert_without_command(self) -> None:
        code, _, err = self.run_cli(["cert"])
        self.assert_one_line_error(code, err, "selfsigned, pin or check")

    def test_cert_unknown_command(self) -> None:
        code, _, err = self.run_cli(["cert", "frobnicate"])
        self.assertEqual(code, 2)
        self.assertIn("invalid choice", err)
        self.assertNotIn("Traceback", err)


class HostnameCheckTests(unittest.TestCase):
    """
    The C{--hostname} check, on any text.
    """

    key = tls_certs.ec_key()

    @settings(max_examples=200, deadline=None)
    @given(
        st.one_of(
            st.text(max_size=80),
            st.from_regex(r"[a-z0-9*._:/ -]{1,40}", fullmatch=True),
            st.ip_addresses().map(str),
        )
    )
    def test_accepted_or_one_clean_error(self, text: str) -> None:
        """
        Any text is either refused with L{cli.CommandError} or accepted, and an accepted
        name makes a certificate that a client can verify by that name.
        """
        try:
            name = _cert_hostname(text)
        except cli.CommandError as e:
            self.assertNotIn("\n", str(e).replace(repr(text), ""))
            return
        certificate = tls.build_self_signed(name, self.key, now=tls_certs.NOW)
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            verify_certificate_hostname(certificate, name.encode("idna").decode("ascii"))
        else:
            verify_certificate_ip_address(certificate, str(address))
        tls.client_tls_options(name, pin_sha256=tls.public_key_pin(certificate))

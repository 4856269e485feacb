"""
Tests for L{netguard.endpoints}: port names, the order-keeping splitter against Twisted's own
parser, port resolution of client-side strings, checking by building with Twisted's parsers,
and the default listen backlog. The checks of listeners and backends in a configuration file,
with their messages, are in L{tests.test_config}.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.internet import endpoints as twisted_endpoints
from twisted.python.filepath import FilePath
from twisted.trial import unittest

from netguard.endpoints import (
    EndpointError,
    check_backend,
    check_listener,
    join_fields,
    resolve_endpoint_ports,
    resolve_port,
    split_description,
    with_default_backlog,
)
from tests.test_operator_files import outcome_or_blocked


def _port_of(name: str) -> int:
    """
    The port of a service name from this host's services database, or skip the test.
    """
    try:
        return socket.getservbyname(name, "tcp")
    except OSError:
        raise unittest.SkipTest(f"{name!r} is not in this host's /etc/services") from None


class ResolvePortTests(unittest.TestCase):
    """
    L{resolve_port}: ports are numbers or names from the services database (seed tip 1).
    """

    def test_number(self) -> None:
        self.assertEqual(resolve_port("6379"), 6379)

    def test_int(self) -> None:
        self.assertEqual(resolve_port(8080), 8080)

    def test_zero(self) -> None:
        self.assertEqual(resolve_port("0"), 0)

    def test_out_of_range(self) -> None:
        self.assertRaises(ValueError, resolve_port, "65536")

    def test_non_ascii_digits_refused(self) -> None:
        self.assertRaises(ValueError, resolve_port, "\u0668\u0660")

    def test_signed_number_refused(self) -> None:
        self.assertRaises(ValueError, resolve_port, "+80")

    def test_injected_lookup(self) -> None:
        calls = []

        def lookup(name: str, proto: str) -> int:
            calls.append((name, proto))
            return 4242

        self.assertEqual(resolve_port("netguard-test", lookup=lookup), 4242)
        self.assertEqual(calls, [("netguard-test", "tcp")])

    def test_unknown_name(self) -> None:
        error = self.assertRaises(ValueError, resolve_port, "netguard-no-such-service")
        self.assertIn("unknown service name", str(error))

    def test_real_name(self) -> None:
        self.assertEqual(resolve_port("http"), _port_of("http"))


class ResolveEndpointPortsTests(unittest.TestCase):
    """
    L{resolve_endpoint_ports}: the client side's endpoint strings get port names resolved
    as the configuration's do.
    """

    def test_client_tcp_port_name(self) -> None:
        port = _port_of("http")
        self.assertEqual(
            resolve_endpoint_ports("tcp:host=gw.example.org:port=http", server=False),
            f"tcp:host=gw.example.org:port={port}",
        )

    def test_server_tcp_positional_port_name(self) -> None:
        port = _port_of("http")
        self.assertEqual(
            resolve_endpoint_ports("tcp:http:interface=127.0.0.1", server=True),
            f"tcp:{port}:interface=127.0.0.1",
        )

    def test_numbers_and_unix_unchanged(self) -> None:
        for description, server in (
            ("tcp:host=127.0.0.1:port=7700", False),
            ("unix:path=/run/netguard/netguard.sock", False),
            ("tcp:7700:interface=127.0.0.1", True),
            ("unix:/tmp/redis.sock:mode=600", True),
        ):
            self.assertEqual(resolve_endpoint_ports(description, server=server), description)

    def test_other_types_left_to_their_parser(self) -> None:
        self.assertEqual(
            resolve_endpoint_ports("someplugin:a=b:port=http", server=False),
            "someplugin:a=b:port=http",
        )

    def test_unknown_service_name_refused(self) -> None:
        error = self.assertRaises(
            ValueError,
            resolve_endpoint_ports,
            "tcp:host=127.0.0.1:port=no-such-service-here",
            server=False,
        )
        self.assertIn("unknown service name", str(error))

    def test_port_zero_refused_for_clients(self) -> None:
        self.assertRaises(
            ValueError, resolve_endpoint_ports, "tcp:host=127.0.0.1:port=0", server=False
        )


class BuiltByTwistedTests(unittest.TestCase):
    """
    L{check_listener} and L{check_backend} let Twisted's own parsers build each string (on a
    memory reactor) and turn what they refuse into messages naming the option, without
    reading key or password files.
    """

    def setUp(self) -> None:
        self.reads: list[str] = []

        def refuse(path: FilePath[str]) -> bytes:
            self.reads.append(path.path)
            raise AssertionError(f"read {path.path} at check time")

        self.patch(FilePath, "getContent", refuse)

    def assertRefused(
        self, check: Callable[[str], object], description: str, message: str
    ) -> None:
        error = self.assertRaises(EndpointError, check, description)
        self.assertEqual(error.message, message)

    def test_unknown_listener_option_named(self) -> None:
        """Twisted's TypeError for an unknown option becomes a message naming it."""
        self.assertRefused(
            check_listener,
            "tcp:7000:interfce=127.0.0.1",
            'unknown option "interfce" for a tcp: listener; allowed: port, interface, backlog',
        )

    def test_unknown_tls_backend_option_named(self) -> None:
        """tls: refuses unknown options its own way; the message still names the option."""
        error = self.assertRaises(EndpointError, check_backend, "tls:host=a:port=1:colour=x")
        self.assertIn('unknown option "colour" for a tls: backend', error.message)

    def test_unknown_ssl_listener_option_named(self) -> None:
        """An ssl: listener, built as the tcp: listener it runs on, names unknown options."""
        error = self.assertRaises(EndpointError, check_listener, "ssl:443:colour=red")
        self.assertIn('unknown option "colour" for a ssl: listener', error.message)

    def test_missing_options_named(self) -> None:
        """Twisted's TypeError for missing arguments becomes "needs ..."."""
        self.assertRefused(check_listener, "tcp:interface=127.0.0.1", "a tcp: listener needs port")
        self.assertRefused(check_backend, "tls:host=a", "a tls: backend needs port")
        self.assertRefused(check_backend, "unix:timeout=5", "a unix: backend needs path")

    def test_ssl_listener_key_files_not_read(self) -> None:
        """ssl: key files are read when the gateway starts, not when the string is checked."""
        listener = check_listener("ssl:443:privateKey=/no/such.key:certKey=/no/such.crt")
        self.assertTrue(listener.description.startswith("ssl:443:"))
        self.assertIn("all IPv4 interfaces", listener.exposure)
        self.assertEqual(self.reads, [])

    def test_ssl_listener_key_fifo_refused_at_once(self) -> None:
        """
        An C{ssl:} listener whose C{privateKey=}, C{certKey=}, C{extraCertChain=} or
        C{dhParameters=} is a FIFO is refused at once naming the option (Twisted's start
        would block in C{open} on it); a regular file there, or one not there yet, is
        accepted without being read.
        """
        fifo = self.mktemp()
        os.mkfifo(fifo, 0o600)
        regular = FilePath(self.mktemp())
        regular.setContent(b"not read")
        for option in ("privateKey", "certKey", "extraCertChain", "dhParameters"):
            outcome = outcome_or_blocked(
                fifo, lambda option=option: check_listener(f"ssl:443:{option}={fifo}")
            )
            self.assertIsInstance(outcome, EndpointError, f"{option}: {outcome!r}")
            self.assertIn(f"{option}= names", str(outcome))
            self.assertIn("is a FIFO, not a regular file", str(outcome))
            check_listener(f"ssl:443:{option}={regular.path}")
        self.assertEqual(self.reads, [])

    def test_ssl_listener_default_key_file_checked(self) -> None:
        """
        An C{ssl:} listener that names no key reads Twisted's default C{server.pem} in the
        working directory: a FIFO there is refused as by name.
        """
        here = os.getcwd()
        self.addCleanup(os.chdir, here)
        directory = self.mktemp()
        os.mkdir(directory)
        os.chdir(directory)
        os.mkfifo("server.pem", 0o600)
        fifo = os.path.abspath("server.pem")
        outcome = outcome_or_blocked(fifo, lambda: check_listener("ssl:443"))
        self.assertIsInstance(outcome, EndpointError, repr(outcome))
        self.assertIn("privateKey= names", str(outcome))

    def test_backend_certificate_files_not_read(self) -> None:
        """tls: and ssl: backends name files that are read at start, never at check time."""
        check_backend("tls:host=a:port=1:trustRoots=/no/such:certificate=/no/such.pem")
        check_backend("ssl:host=a:port=1:hostname=a:caCertsDir=/no/such:certKey=/no/such.pem")
        self.assertEqual(self.reads, [])

    def test_socks5_password_file_not_read(self) -> None:
        """A socks5: backend is checked by name only: building it would read the password."""
        backend = check_backend("socks5:host=a:port=1:proxy_host=p:user=u:password_file=/no/x")
        self.assertEqual(backend.kind, "socks5")

    def test_systemd_checked_without_descriptors(self) -> None:
        """systemd: is checked without the descriptors systemd passes at start."""
        listener = check_listener("systemd:domain=INET:index=0")
        self.assertEqual(listener.exposure, "inherited from systemd: its socket unit decides")

    def test_tls_listener_exposure_read_from_its_endpoint(self) -> None:
        """A tls: listener wraps a tcp6 endpoint, which binds every interface by default."""
        listener = check_listener("tls:/etc/certs:7703")
        self.assertEqual(
            listener.exposure, "NETWORK: all interfaces (IPv6 and IPv4) (no interface given)"
        )
        self.assertTrue(listener.network)

    def test_values_twisted_would_take_refused(self) -> None:
        """What Twisted builds but cannot work (an interface by name, mode 7777) is refused."""
        error = self.assertRaises(EndpointError, check_listener, "tcp:7000:interface=localhost")
        self.assertIn("not an IP address", error.message)
        error = self.assertRaises(EndpointError, check_listener, "unix:/a.sock:mode=7777")
        self.assertIn("beyond 777", error.message)


_DESCRIPTION_TEXT = st.text(alphabet="ab=:\\-/", max_size=30)


class DescriptionParserTests(unittest.TestCase):
    """
    The order-keeping endpoint splitter agrees with Twisted's own parser.
    """

    @settings(max_examples=200, deadline=None)
    @given(_DESCRIPTION_TEXT)
    def test_split_agrees_with_twisted(self, text: str) -> None:
        try:
            fields = split_description(text)
        except EndpointError:
            return
        keys = [f.key for f in fields if f.key is not None]
        assume(len(keys) == len(set(keys)))
        args, kwargs = twisted_endpoints._parse(text)
        self.assertEqual([f.value for f in fields if f.key is None], args)
        self.assertEqual({f.key: f.value for f in fields if f.key is not None}, kwargs)

    @settings(max_examples=200, deadline=None)
    @given(_DESCRIPTION_TEXT)
    def test_join_round_trips(self, text: str) -> None:
        try:
            fields = split_description(text)
        except EndpointError:
            return
        self.assertEqual(split_description(join_fields(fields)), fields)

    def test_lone_backslash(self) -> None:
        self.assertRaises(EndpointError, split_description, "tcp:80\\")

    def test_empty_option_name(self) -> None:
        self.assertRaises(EndpointError, split_description, "tcp:=80")


class DefaultBacklogTests(unittest.TestCase):
    """
    L{with_default_backlog}: the backlog added to a listener string that sets none.
    """

    def test_added_where_missing(self) -> None:
        """tcp, tcp6 and unix strings without a backlog get the default, escapes kept."""
        for description, expected in [
            ("tcp:7700:interface=127.0.0.1", "tcp:7700:interface=127.0.0.1:backlog=511"),
            ("tcp6:7700", "tcp6:7700:backlog=511"),
            ("unix:/run/a\\:b.sock:mode=600", "unix:/run/a\\:b.sock:mode=600:backlog=511"),
            ("haproxy:tcp:7700", "haproxy:tcp:7700:backlog=511"),
        ]:
            self.assertEqual(with_default_backlog(description), expected)

    def test_kept_when_given_by_name_or_position(self) -> None:
        """A backlog the string sets, by name or in its positional place, is not touched."""
        for description in ["tcp:7700:backlog=7", "tcp:7700:127.0.0.1:7", "tcp6:7700:7"]:
            self.assertEqual(with_default_backlog(description), description)

    def test_types_without_a_backlog_unchanged(self) -> None:
        """systemd: sockets are already listening; unknown types are left to their parser."""
        for description in ["systemd:domain=INET:index=0", "someplugin:x=1"]:
            self.assertEqual(with_default_backlog(description), description)

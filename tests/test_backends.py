"""
Tests for L{netguard.outbound.backends}: L{open_backend} and L{backend_endpoint}.

Connections are made on a L{MemoryReactorClock}: its connectors never connect unless the test
builds the protocol, so a connect timeout is a matter of advancing the clock, and a refusal is
the connector's factory told so. (The legs themselves are tested in L{tests.test_relay}.)
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.auth.users import UserStore
from netguard.config import Config, ServiceConfig, load_config
from netguard.gateway.factory import GatewayFactory
from netguard.outbound import backends as backends_module
from netguard.outbound.backend_files import BackendFileError
from netguard.outbound.backends import (
    BackendConnectTimeout,
    BackendEndpoints,
    EchoLeg,
    EndpointLeg,
    backend_endpoint,
    describe_failure,
    open_backend,
)
from netguard.outbound.socks5 import (
    AddressType,
    SOCKS5ClientEndpoint,
    SOCKSAddress,
    SOCKSProtocolError,
)
from tests.test_operator_files import outcome_or_blocked

CONNECT_TIMEOUT = 3.0


def service(backend: str, socks5: str | None = None, **kwargs: Any) -> ServiceConfig:
    """
    A service open to everyone with C{backend}, a short connect timeout unless given.
    """
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
    return ServiceConfig("svc", backend, ("*",), socks5=socks5, **kwargs)


class NeverConnects:
    """
    A client endpoint whose connection attempt never completes; records its cancellation.
    """

    def __init__(self) -> None:
        self.cancelled = False

    def connect(self, factory: Any) -> Deferred[Any]:
        def cancel(deferred: Deferred[Any]) -> None:
            self.cancelled = True
            deferred.errback(error.ConnectingCancelledError(IPv4Address("TCP", "10.0.0.5", 1)))

        return Deferred(cancel)


class OpenBackendTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def open(self, svc: ServiceConfig) -> Deferred[Any]:
        return open_backend(self.reactor, svc, write_timeout=30.0)

    def assert_no_timer_left(self) -> None:
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def complete_connection(self, index: int = 0) -> Any:
        """
        Let connection attempt C{index} succeed, on a L{StringTransport}.
        """
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        protocol.makeConnection(StringTransport())
        return protocol


class EchoTests(OpenBackendTestCase):
    def test_echo_gives_an_echo_leg_at_once(self) -> None:
        leg = self.successResultOf(self.open(service("builtin:echo")))
        self.assertIsInstance(leg, EchoLeg)

    def test_echo_makes_no_connection_and_no_timer(self) -> None:
        self.open(service("builtin:echo"))
        self.assertEqual(self.reactor.tcpClients, [])
        self.assert_no_timer_left()

    def test_echo_leg_gets_the_services_idle_timeout(self) -> None:
        leg = self.successResultOf(self.open(service("builtin:echo", idle_timeout=42.0)))
        self.assertEqual(leg.idle_timeout, 42.0)
        self.assertEqual(leg.write_timeout, 30.0)


class ConnectTests(OpenBackendTestCase):
    def test_tcp_backend_connects_to_its_host_and_port(self) -> None:
        self.open(service("tcp:host=10.0.0.5:port=6379"))
        self.assertEqual(self.reactor.tcpClients[0][:2], ("10.0.0.5", 6379))

    def test_unix_backend_connects_to_its_path(self) -> None:
        self.open(service("unix:path=/run/redis.sock"))
        self.assertEqual(self.reactor.unixClients[0][0], "/run/redis.sock")

    def test_connected_gives_an_endpoint_leg(self) -> None:
        opening = self.open(service("tcp:host=10.0.0.5:port=6379", idle_timeout=99.0))
        self.assertNoResult(opening)
        self.complete_connection()
        leg = self.successResultOf(opening)
        self.assertIsInstance(leg, EndpointLeg)
        self.assertEqual(leg.idle_timeout, 99.0)

    def test_kernel_relay_pipes_come_only_from_shared_endpoints(self) -> None:
        """
        A leg opened with the gateway's L{BackendEndpoints} borrows that one pipe pool for a
        kernel relay; one opened without gets none (an ordinary relay), so no pool and its
        read buffer are made per session.
        """
        opening = self.open(service("tcp:host=10.0.0.5:port=6379"))
        self.complete_connection()
        self.assertIsNone(self.successResultOf(opening).pipes)
        endpoints = BackendEndpoints(self.reactor)
        svc = service("tcp:host=10.0.0.5:port=6379")
        opening = open_backend(self.reactor, svc, write_timeout=30.0, endpoints=endpoints)
        self.complete_connection(1)
        self.assertIs(self.successResultOf(opening).pipes, endpoints.pipes)

    def test_connected_cancels_the_connect_timer(self) -> None:
        opening = self.open(service("tcp:host=10.0.0.5:port=6379"))
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.complete_connection()
        self.successResultOf(opening)
        self.assert_no_timer_left()

    def test_connected_just_before_the_timeout(self) -> None:
        opening = self.open(service("tcp:host=10.0.0.5:port=6379"))
        self.reactor.advance(CONNECT_TIMEOUT - 0.01)
        self.complete_connection()
        legs: list[Any] = []
        opening.addCallback(legs.append)
        self.reactor.advance(1)  # the timer was cancelled: nothing changes
        self.assertEqual(len(legs), 1)
        self.assertIsInstance(legs[0], EndpointLeg)
        self.assert_no_timer_left()


class ConnectTimeoutTests(OpenBackendTestCase):
    def test_tcp_connect_timeout_gives_backend_connect_timeout(self) -> None:
        opening = self.open(service("tcp:host=10.0.0.5:port=6379"))
        self.reactor.advance(CONNECT_TIMEOUT - 0.01)
        self.assertNoResult(opening)
        self.reactor.advance(0.01)
        failure = self.failureResultOf(opening, BackendConnectTimeout)
        self.assertIn("no connection within 3s", failure.getErrorMessage())

    def test_tcp_connect_timeout_stops_connecting(self) -> None:
        opening = self.open(service("tcp:host=10.0.0.5:port=6379"))
        self.reactor.advance(CONNECT_TIMEOUT)
        self.failureResultOf(opening)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assert_no_timer_left()

    def test_unix_connect_timeout_gives_backend_connect_timeout(self) -> None:
        opening = self.open(service("unix:path=/run/slow.sock"))
        self.reactor.advance(CONNECT_TIMEOUT)
        self.failureResultOf(opening, BackendConnectTimeout)

    def test_connect_timeout_is_a_twisted_timeout_and_connect_error(self) -> None:
        opening = self.open(service("tcp:host=10.0.0.5:port=6379"))
        self.reactor.advance(CONNECT_TIMEOUT)
        failure = self.failureResultOf(opening)
        self.assertTrue(failure.check(error.TimeoutError))
        self.assertTrue(failure.check(error.ConnectError))

    def test_connect_timeout_of_any_endpoint(self) -> None:
        # Whatever error an endpoint reports for its cancellation, the cause is the time.
        never = NeverConnects()
        self.patch(
            __import__("netguard.outbound.backends", fromlist=["x"]),
            "backend_endpoint",
            lambda reactor, svc: never,
        )
        opening = self.open(service("tcp:host=10.0.0.5:port=1"))
        self.reactor.advance(CONNECT_TIMEOUT)
        self.failureResultOf(opening, BackendConnectTimeout)
        self.assertTrue(never.cancelled)

    def test_socks5_connect_timeout_is_a_timeout(self) -> None:
        opening = self.open(
            service("tcp:host=10.0.0.5:port=6379", socks5="tcp:host=127.0.0.1:port=1080")
        )
        self.reactor.advance(CONNECT_TIMEOUT)
        failure = self.failureResultOf(opening)
        self.assertTrue(failure.check(error.TimeoutError), failure)
        self.assert_no_timer_left()


class ConnectFailureTests(OpenBackendTestCase):
    def test_refused_gives_the_endpoints_error(self) -> None:
        opening = self.open(service("tcp:host=127.0.0.1:port=9"))
        _, _, factory, _, _ = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(error.ConnectionRefusedError())
        )
        failure = self.failureResultOf(opening, error.ConnectionRefusedError)
        self.assertIn("refused", failure.getErrorMessage())
        self.assert_no_timer_left()

    def test_no_route_gives_the_endpoints_error(self) -> None:
        opening = self.open(service("tcp:host=10.0.0.5:port=6379"))
        _, _, factory, _, _ = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(self.reactor.connectors[0], Failure(error.NoRouteError()))
        self.failureResultOf(opening, error.NoRouteError)
        self.assert_no_timer_left()


class BadDescriptionTests(OpenBackendTestCase):
    """
    A bad backend description fails the Deferred (the session answers BACKEND_UNAVAILABLE
    and logs the cause); L{open_backend} never raises.
    """

    def assert_fails(self, svc: ServiceConfig) -> Failure:
        opening = self.open(svc)  # must not raise
        failure = self.failureResultOf(opening)
        self.assert_no_timer_left()
        self.assertEqual(self.reactor.tcpClients, [])
        return failure

    def test_unknown_endpoint_type(self) -> None:
        self.assert_fails(service("nonsense:host=10.0.0.5"))

    def test_tcp_without_port(self) -> None:
        self.assert_fails(service("tcp:host=10.0.0.5"))

    def test_tcp_with_a_port_that_is_not_a_number(self) -> None:
        self.assert_fails(service("tcp:host=10.0.0.5:port=six"))

    def test_socks5_with_a_unix_backend(self) -> None:
        failure = self.assert_fails(
            service("unix:path=/run/x.sock", socks5="tcp:host=127.0.0.1:port=1080")
        )
        self.assertTrue(failure.check(ValueError))
        self.assertIn("socks5 needs", failure.getErrorMessage())

    def test_socks5_with_a_positional_tcp_backend(self) -> None:
        failure = self.assert_fails(
            service("tcp:10.0.0.5:6379", socks5="tcp:host=127.0.0.1:port=1080")
        )
        self.assertTrue(failure.check(ValueError))

    def test_socks5_with_a_bad_proxy_description(self) -> None:
        self.assert_fails(service("tcp:host=10.0.0.5:port=6379", socks5="bogus:whatever"))

    def test_socks5_with_an_invalid_target_host(self) -> None:
        self.assert_fails(
            service("tcp:host=bad..name:port=6379", socks5="tcp:host=127.0.0.1:port=1080")
        )

    def test_endpoint_whose_connect_raises(self) -> None:
        class Raising:
            def connect(self, factory: Any) -> Deferred[Any]:
                raise RuntimeError("broken endpoint")

        self.patch(
            __import__("netguard.outbound.backends", fromlist=["x"]),
            "backend_endpoint",
            lambda reactor, svc: Raising(),
        )
        failure = self.assert_fails(service("tcp:host=10.0.0.5:port=1"))
        self.assertTrue(failure.check(RuntimeError))


class SOCKS5Tests(OpenBackendTestCase):
    def test_socks5_key_builds_a_socks5_endpoint_to_the_backend(self) -> None:
        endpoint = backend_endpoint(
            self.reactor,
            service("tcp:host=10.0.0.5:port=6379", socks5="tcp:host=127.0.0.1:port=1080"),
        )
        self.assertIsInstance(endpoint, SOCKS5ClientEndpoint)
        self.assertEqual(endpoint.target, SOCKSAddress(AddressType.IPV4, "10.0.0.5", 6379))
        self.assertEqual(endpoint.timeout, CONNECT_TIMEOUT)
        self.assertIsInstance(endpoint.proxy_endpoint, TCP4ClientEndpoint)

    def test_socks5_key_with_a_host_name_is_resolved_by_the_proxy(self) -> None:
        endpoint = backend_endpoint(
            self.reactor,
            service("tcp:host=redis.internal:port=6379", socks5="tcp:host=127.0.0.1:port=1080"),
        )
        self.assertEqual(endpoint.target, SOCKSAddress(AddressType.DOMAIN, "redis.internal", 6379))

    def test_socks5_key_connects_to_the_proxy_not_the_backend(self) -> None:
        self.open(service("tcp:host=10.0.0.5:port=6379", socks5="tcp:host=127.0.0.1:port=1080"))
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("127.0.0.1", 1080)])

    def test_socks5_key_sends_connect_for_the_backend(self) -> None:
        opening = self.open(
            service("tcp:host=10.0.0.5:port=6379", socks5="tcp:host=127.0.0.1:port=1080")
        )
        protocol = self.complete_connection()
        proxy = protocol.transport
        self.assertEqual(proxy.value(), b"\x05\x01\x00")  # no-auth offered
        proxy.clear()
        protocol.dataReceived(b"\x05\x00")
        self.assertEqual(proxy.value(), b"\x05\x01\x00\x01" + bytes([10, 0, 0, 5]) + b"\x18\xeb")
        protocol.dataReceived(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38")
        self.assertIsInstance(self.successResultOf(opening), EndpointLeg)
        self.assert_no_timer_left()

    def test_socks5_key_with_a_tls_backend_wraps_tls_around_the_tunnel(self) -> None:
        endpoint = backend_endpoint(
            self.reactor,
            service("tls:host=db.internal:port=5432", socks5="tcp:host=127.0.0.1:port=1080"),
        )
        self.assertNotIsInstance(endpoint, SOCKS5ClientEndpoint)
        self.assertIsInstance(endpoint._wrappedEndpoint, SOCKS5ClientEndpoint)

    def test_socks5_endpoint_string_backend(self) -> None:
        endpoint = backend_endpoint(
            self.reactor,
            service("socks5:host=10.0.0.5:port=6379:proxy_host=127.0.0.1:proxy_port=1080"),
        )
        self.assertIsInstance(endpoint, SOCKS5ClientEndpoint)
        self.assertEqual(endpoint.target, SOCKSAddress(AddressType.IPV4, "10.0.0.5", 6379))

    def test_without_socks5_key_the_backend_is_reached_directly(self) -> None:
        endpoint = backend_endpoint(self.reactor, service("tcp:host=10.0.0.5:port=6379"))
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)

    def test_bogus_success_reply_fails_the_opening_and_relays_nothing(self) -> None:
        """
        A proxy answering REP 0 with a 255-byte binary BND.ADDR and 64 KiB of junk: the
        opening fails with L{SOCKSProtocolError} (the session then answers
        C{BACKEND_UNAVAILABLE}), the proxy connection is aborted, and no leg ever exists to
        carry the junk.
        """
        opening = self.open(
            service("tcp:host=10.0.0.5:port=6379", socks5="tcp:host=127.0.0.1:port=1080")
        )
        protocol = self.complete_connection()
        protocol.dataReceived(b"\x05\x00")
        protocol.dataReceived(b"\x05\x00\x00\x03\xff" + bytes(range(255)) + b"\x00\x50")
        protocol.dataReceived(b"junk" * 16384)
        failure = self.failureResultOf(opening, SOCKSProtocolError)
        self.assertEqual(failure.value.phase, "CONNECT reply")
        self.assertTrue(protocol.transport.disconnected)
        self.assert_no_timer_left()


class DescribeFailureTests(unittest.TestCase):
    """
    L{describe_failure}: the cause of a failed opening, for a log field, with what a peer chose
    escaped exactly once.
    """

    def test_socks_error_text_kept_as_it_is(self) -> None:
        """
        A L{SOCKSProtocolError} already shows the proxy's bytes escaped: they are not escaped
        a second time (C{\\x05\\x07}, not C{\\\\x05\\\\x07}).
        """
        exc = SOCKSProtocolError("method selection reply has version 4", b"\x04\x07")
        text = describe_failure(Failure(exc))
        self.assertEqual(text, str(exc))
        self.assertTrue(text.endswith("received: \\x04\\x07"), text)

    def test_other_errors_escaped(self) -> None:
        """
        Any other error's message is escaped here (it may carry a peer's text: a TLS
        certificate name, a DNS name).
        """
        text = describe_failure(Failure(error.DNSLookupError("bad\nname\x1b")))
        self.assertIn("bad\\nname\\x1b", text)
        self.assertNotIn("\n", text)

    def test_other_errors_bounded(self) -> None:
        """
        Another error's message is cut at C{limit} bytes.
        """
        text = describe_failure(Failure(ValueError("x" * 1000)), limit=300)
        self.assertLess(len(text), 330)

    def test_empty_message_gives_the_class_name(self) -> None:
        """
        An error without a message is named by its class.
        """
        self.assertEqual(describe_failure(Failure(KeyError())), "KeyError")


class QuietFactoryTests(OpenBackendTestCase):
    """
    The factories of a backend connection (one per relay) do not log Twisted's "Starting
    factory" / "Stopping factory" lines, directly, through SOCKS5, or under TLS.
    """

    def assert_quiet(self, svc: ServiceConfig) -> None:
        self.open(svc)
        factory = self.reactor.tcpClients[0][2]
        with capturedLogs() as events:
            factory.doStart()
            factory.doStop()
        self.assertEqual([formatEvent(e) for e in events], [])

    def test_tcp_backend(self) -> None:
        """
        A plain TCP backend.
        """
        self.assert_quiet(service("tcp:host=10.0.0.5:port=6379"))

    def test_socks5_backend(self) -> None:
        """
        A backend through the service's SOCKS5 proxy: the SOCKS5 attempt's factory and the
        leg's factory it wraps.
        """
        self.assert_quiet(
            service("tcp:host=10.0.0.5:port=6379", socks5="tcp:host=127.0.0.1:port=1080")
        )

    def test_tls_backend_through_socks5(self) -> None:
        """
        A TLS backend through a SOCKS5 proxy: TLS, SOCKS5 and leg factories, one inside the
        other.
        """
        self.assert_quiet(
            service("tls:host=db.internal:port=5432", socks5="tcp:host=127.0.0.1:port=1080")
        )


class TLSBackendTests(OpenBackendTestCase):
    """
    A TLS backend is ready only after its handshake (so after its certificate was verified):
    a handshake that fails or hangs fails the opening instead of opening the service.
    """

    def start(self) -> tuple[Deferred[Any], Any]:
        opening = self.open(service("tls:host=127.0.0.1:port=6380"))
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        tls = factory.buildProtocol(IPv4Address("TCP", host, port))
        tls.makeConnection(StringTransport())
        return opening, tls

    def test_connected_but_not_ready_before_the_handshake(self) -> None:
        opening, tls = self.start()
        self.assertTrue(tls.transport.value().startswith(b"\x16\x03"))  # a ClientHello went
        self.assertNoResult(opening)

    def test_handshake_failure_fails_the_opening_with_its_reason(self) -> None:
        from OpenSSL import SSL

        opening, tls = self.start()
        tls.dataReceived(b"\x15\x03\x03\x00\x02\x02\x2a")  # fatal alert: bad_certificate
        self.assertTrue(tls.transport.disconnecting)  # TLS closes the connection
        tls.connectionLost(Failure(error.ConnectionDone()))
        failure = self.failureResultOf(opening, SSL.Error)
        self.assertIn("bad certificate", failure.getErrorMessage())
        self.assert_no_timer_left()

    def test_handshake_that_hangs_times_out(self) -> None:
        opening, tls = self.start()
        self.reactor.advance(CONNECT_TIMEOUT)
        self.assertTrue(tls.transport.disconnected)  # aborted
        tls.connectionLost(Failure(error.ConnectionAborted()))
        self.failureResultOf(opening, BackendConnectTimeout)
        self.assert_no_timer_left()


class BackendFileTests(OpenBackendTestCase):
    """
    The files Twisted reads to build a C{tls:} or C{ssl:} backend (certificate, key, the
    C{*.pem} of a trust-root directory) are checked without blocking first: a FIFO among
    them fails the opening at once, naming the option and the file, instead of blocking
    the reactor in C{open}; files Twisted does not read are not judged.
    """

    def setUp(self) -> None:
        super().setUp()
        self.directory = self.mktemp()
        os.mkdir(self.directory)
        self.fifo = os.path.join(self.directory, "x.pem")
        os.mkfifo(self.fifo, 0o600)

    def refused(self, backend: str, option: str) -> BackendFileError:
        """
        Opening C{backend} fails at once (not blocked on the FIFO) with a
        L{BackendFileError} naming C{option} and the FIFO, and no connection is attempted.
        """

        def opening() -> None:
            failure = self.failureResultOf(self.open(service(backend)))
            raise failure.value

        outcome = outcome_or_blocked(self.fifo, opening)
        self.assertIsInstance(outcome, BackendFileError, repr(outcome))
        assert isinstance(outcome, BackendFileError)
        self.assertEqual((outcome.option, outcome.path), (option, self.fifo))
        self.assertIn("is a FIFO, not a regular file", str(outcome))
        self.assertEqual(self.reactor.tcpClients, [])
        return outcome

    def regular_pem(self) -> str:
        """
        A new regular PEM file: a self-signed certificate and its key.
        """
        from OpenSSL.crypto import FILETYPE_PEM
        from twisted.internet.ssl import KeyPair

        key = KeyPair.generate(size=2048)
        cert = key.selfSignedCert(1, CN="b.test")
        path = self.mktemp()
        with open(path, "wb") as handle:
            handle.write(cert.dump(FILETYPE_PEM) + key.dump(FILETYPE_PEM))
        return path

    def test_tls_trust_roots_directory_holding_a_fifo(self) -> None:
        """A C{*.pem} FIFO in a C{tls:} backend's C{trustRoots=} directory is refused."""
        self.refused(f"tls:host=127.0.0.1:port=6380:trustRoots={self.directory}", "trustRoots")

    def test_tls_trust_roots_fifo_named_in_capitals(self) -> None:
        """Twisted reads C{X.PEM} as it reads C{x.pem}: a FIFO so named is refused too."""
        os.rename(self.fifo, os.path.join(self.directory, "X.PEM"))
        self.fifo = os.path.join(self.directory, "X.PEM")
        self.refused(f"tls:host=127.0.0.1:port=6380:trustRoots={self.directory}", "trustRoots")

    def test_tls_files_given_by_position(self) -> None:
        """
        Twisted's C{tls:} takes its files by position too
        (C{host:port:timeout:bindAddress:certificate:privateKey:trustRoots}): a FIFO there
        is refused as by name.
        """
        self.refused(f"tls:127.0.0.1:6380:30:127.0.0.1:{self.fifo}", "certificate")
        pem = self.regular_pem()
        self.refused(f"tls:127.0.0.1:6380:30:127.0.0.1:{pem}:{pem}:{self.directory}", "trustRoots")

    def test_tls_certificate_fifo(self) -> None:
        """A C{tls:} backend whose C{certificate=} is a FIFO is refused."""
        self.refused(f"tls:host=127.0.0.1:port=6380:certificate={self.fifo}", "certificate")

    def test_tls_private_key_fifo(self) -> None:
        """A C{tls:} backend whose C{privateKey=} is a FIFO is refused."""
        pem = self.regular_pem()
        self.refused(
            f"tls:host=127.0.0.1:port=6380:certificate={pem}:privateKey={self.fifo}",
            "privateKey",
        )

    def test_tls_nested_endpoint_fifo(self) -> None:
        """A FIFO in the C{tls:} string nested as a C{tls:} backend's C{endpoint=} is refused."""
        inner = f"tls\\:host\\=127.0.0.1\\:port\\=6380\\:certificate\\={self.fifo}"
        self.refused(f"tls:host=b.test:port=6380:endpoint={inner}", "certificate")

    def test_ssl_ca_certs_directory_holding_a_fifo(self) -> None:
        """A C{*.pem} FIFO in an C{ssl:} backend's C{caCertsDir=} is refused."""
        self.refused(
            f"ssl:host=127.0.0.1:port=6380:hostname=b.test:caCertsDir={self.directory}",
            "caCertsDir",
        )

    def test_ssl_cert_key_fifo(self) -> None:
        """An C{ssl:} backend whose C{certKey=} is a FIFO is refused."""
        self.refused(f"ssl:host=127.0.0.1:port=6380:certKey={self.fifo}", "certKey")

    def test_files_twisted_does_not_read_are_not_judged(self) -> None:
        """
        A FIFO not named C{*.pem}, and a subdirectory named C{d.pem}, in C{trustRoots=}
        (Twisted reads neither) beside a regular C{*.pem}: the backend is built and its
        connection attempted.
        """
        os.rename(self.fifo, os.path.join(self.directory, "x.pem.txt"))
        os.mkdir(os.path.join(self.directory, "d.pem"))
        os.rename(self.regular_pem(), os.path.join(self.directory, "ca.pem"))
        opening = self.open(service(f"tls:host=127.0.0.1:port=6380:trustRoots={self.directory}"))
        self.assertNoResult(opening)
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("127.0.0.1", 6380)])

    def test_each_session_checks_again(self) -> None:
        """
        Through L{BackendEndpoints} (the gateway's path), a C{tls:} backend is built for
        each session: after one opening, a FIFO put in its trust roots fails the next.
        """
        os.unlink(self.fifo)
        svc = service(f"tls:host=127.0.0.1:port=6380:trustRoots={self.directory}")
        endpoints = BackendEndpoints(self.reactor)
        self.assertNoResult(open_backend(self.reactor, svc, endpoints=endpoints))
        os.mkfifo(self.fifo, 0o600)

        def opening() -> None:
            raise self.failureResultOf(open_backend(self.reactor, svc, endpoints=endpoints)).value

        outcome = outcome_or_blocked(self.fifo, opening)
        self.assertIsInstance(outcome, BackendFileError, repr(outcome))
        self.assertEqual(len(self.reactor.tcpClients), 1)


class _Counting:
    """
    A function of L{netguard.outbound.backends}, counting its calls (patched in where the
    module looks it up).
    """

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[str] = []

    def __call__(self, reactor: Any, what: Any) -> Any:
        self.calls.append(what if isinstance(what, str) else what.backend)
        return self.real(reactor, what)


class BackendEndpointsTestCase(OpenBackendTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.parsed = _Counting(backends_module.clientFromString)
        self.built = _Counting(backends_module.backend_endpoint)
        self.patch(backends_module, "clientFromString", self.parsed)
        self.patch(backends_module, "backend_endpoint", self.built)
        self.endpoints = BackendEndpoints(self.reactor)

    def open(self, svc: ServiceConfig) -> Deferred[Any]:
        return open_backend(self.reactor, svc, write_timeout=30.0, endpoints=self.endpoints)


class BackendEndpointsTests(BackendEndpointsTestCase):
    """
    L{BackendEndpoints}: a C{tcp:} or C{unix:} backend without SOCKS5 is built from its
    description once for all the sessions of one configuration; every other backend is
    built for each session.
    """

    OPENS = 5

    def test_tcp_backend_is_parsed_once_for_many_opens(self) -> None:
        """
        Five OPENs of a C{tcp:} service parse its description once, and each still makes a
        connection attempt of its own to the backend's host and port.
        """
        svc = service("tcp:host=10.0.0.5:port=6379")
        for _ in range(self.OPENS):
            self.open(svc)
        self.assertEqual(self.parsed.calls, ["tcp:host=10.0.0.5:port=6379"])
        self.assertEqual(
            [client[:2] for client in self.reactor.tcpClients], [("10.0.0.5", 6379)] * self.OPENS
        )

    def test_unix_backend_is_parsed_once_for_many_opens(self) -> None:
        """
        Five OPENs of a C{unix:} service parse its description once and connect five times.
        """
        svc = service("unix:path=/run/redis.sock")
        for _ in range(self.OPENS):
            self.open(svc)
        self.assertEqual(self.parsed.calls, ["unix:path=/run/redis.sock"])
        self.assertEqual(
            [client[0] for client in self.reactor.unixClients], ["/run/redis.sock"] * self.OPENS
        )

    def test_each_session_connects_and_ends_on_its_own(self) -> None:
        """
        Sessions sharing a built C{tcp:} endpoint get legs of their own: the second one's
        connection completes while the first one's is still pending, and the first one then
        times out alone.
        """
        svc = service("tcp:host=10.0.0.5:port=6379")
        first = self.open(svc)
        self.reactor.advance(CONNECT_TIMEOUT / 2)
        second = self.open(svc)
        self.complete_connection(1)
        leg = self.successResultOf(second)
        self.assertIsInstance(leg, EndpointLeg)
        self.assertNoResult(first)
        self.reactor.advance(CONNECT_TIMEOUT / 2)
        self.failureResultOf(first, BackendConnectTimeout)
        self.assertEqual(len(self.parsed.calls), 1)

    def test_each_description_has_its_own_endpoint(self) -> None:
        """
        Two services with different backends reach each their own; a third with the same
        description as the first shares its endpoint (one parse per description).
        """
        self.open(service("tcp:host=10.0.0.5:port=6379"))
        self.open(service("tcp:host=10.0.0.6:port=5432"))
        self.open(ServiceConfig("other", "tcp:host=10.0.0.5:port=6379", ("*",)))
        self.assertEqual(
            [client[:2] for client in self.reactor.tcpClients],
            [("10.0.0.5", 6379), ("10.0.0.6", 5432), ("10.0.0.5", 6379)],
        )
        self.assertEqual(len(self.parsed.calls), 2)

    def test_tls_backend_is_built_on_every_open(self) -> None:
        """
        A C{tls:} backend (its trust roots and certificates are read when it is built) is
        built for each of five OPENs.
        """
        svc = service("tls:host=127.0.0.1:port=6380")
        for _ in range(self.OPENS):
            self.open(svc)
        self.assertEqual(len(self.built.calls), self.OPENS)
        self.assertEqual(self.parsed.calls, ["tls:host=127.0.0.1:port=6380"] * self.OPENS)
        self.assertEqual(len(self.reactor.tcpClients), self.OPENS)

    def test_socks5_service_is_built_on_every_open(self) -> None:
        """
        A C{tcp:} backend behind a SOCKS5 proxy is built for each OPEN: its proxy
        description is parsed five times for five OPENs, each connecting to the proxy.
        """
        svc = service("tcp:host=10.0.0.5:port=6379", socks5="tcp:host=127.0.0.1:port=1080")
        for _ in range(self.OPENS):
            self.open(svc)
        self.assertEqual(len(self.built.calls), self.OPENS)
        self.assertEqual(self.parsed.calls, ["tcp:host=127.0.0.1:port=1080"] * self.OPENS)
        self.assertEqual(
            [client[:2] for client in self.reactor.tcpClients], [("127.0.0.1", 1080)] * self.OPENS
        )

    def test_plugin_backend_is_built_on_every_open(self) -> None:
        """
        A backend of an endpoint plugin (here the C{socks5:} client endpoint) is built for
        each OPEN.
        """
        svc = service("socks5:host=10.0.0.5:port=6379:proxy_host=127.0.0.1:proxy_port=1080")
        for _ in range(self.OPENS):
            self.open(svc)
        self.assertEqual(len(self.built.calls), self.OPENS)
        self.assertEqual(len(self.parsed.calls), self.OPENS)

    def test_only_the_tcp_and_unix_schemes_are_kept(self) -> None:
        """
        Only the C{tcp} and C{unix} schemes (in any case) are kept: C{ssl:} (Twisted's
        other TCP-based client, which reads certificate options when built) is built each
        time, C{TCP:} once.
        """
        for _ in range(3):
            self.open(service("ssl:host=10.0.0.6:port=6379"))
            self.open(service("TCP:host=10.0.0.5:port=6379"))
        self.assertEqual(
            self.parsed.calls,
            ["ssl:host=10.0.0.6:port=6379", "TCP:host=10.0.0.5:port=6379"]
            + ["ssl:host=10.0.0.6:port=6379"] * 2,
        )

    def test_a_bad_description_is_not_kept(self) -> None:
        """
        A C{tcp:} description that does not build fails every OPEN with the parser's error,
        parsed again each time (a failure is not kept in place of an endpoint).
        """
        svc = service("tcp:host=10.0.0.5")
        for _ in range(3):
            self.failureResultOf(self.open(svc), TypeError)
        self.assertEqual(len(self.parsed.calls), 3)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_without_endpoints_every_open_builds(self) -> None:
        """
        L{open_backend} without a L{BackendEndpoints} builds the endpoint for each session.
        """
        svc = service("tcp:host=10.0.0.5:port=6379")
        for _ in range(3):
            open_backend(self.reactor, svc, write_timeout=30.0)
        self.assertEqual(len(self.parsed.calls), 3)


class GatewayBackendEndpointsTests(BackendEndpointsTestCase):
    """
    The gateway factory keeps one L{BackendEndpoints} per configuration: L{apply_config}
    (what a reload calls) replaces it, so the next OPEN reaches the backend the new
    configuration names, while relays already open keep their connection.
    """

    def make_factory(self, backend: str) -> GatewayFactory:
        config = load_config(None, {"state_dir": "/nonexistent-netguard-test"})
        return GatewayFactory(
            self.configured(config, backend), UserStore.from_records([]), self.reactor
        )

    def configured(self, config: Config, backend: str) -> Config:
        return attrs.evolve(config, services={"svc": ServiceConfig("svc", backend, ("*",))})

    def reload(self, factory: GatewayFactory, backend: str) -> None:
        factory.apply_config(self.configured(factory.config, backend), factory.users)

    def test_opens_share_one_parse_until_a_reload(self) -> None:
        """
        Three OPENs through the factory parse the backend once; after a reload that changes
        its port, the next OPENs connect to the new port (parsed once more), and a live
        relay on the old backend is not touched.
        """
        factory = self.make_factory("tcp:host=10.0.0.5:port=6379")
        openings = [factory.open_backend(factory.config.services["svc"]) for _ in range(3)]
        live = self.complete_connection(0)
        self.assertIsInstance(self.successResultOf(openings[0]), EndpointLeg)
        self.assertEqual(len(self.parsed.calls), 1)
        self.reload(factory, "tcp:host=10.0.0.5:port=6380")
        for _ in range(3):
            factory.open_backend(factory.config.services["svc"])
        self.assertEqual(
            [client[:2] for client in self.reactor.tcpClients],
            [("10.0.0.5", 6379)] * 3 + [("10.0.0.5", 6380)] * 3,
        )
        self.assertEqual(
            self.parsed.calls, ["tcp:host=10.0.0.5:port=6379", "tcp:host=10.0.0.5:port=6380"]
        )
        self.assertFalse(live.transport.disconnecting)
        self.assertNoResult(openings[1])  # still connecting to the old backend

    def test_a_reload_builds_afresh_even_an_unchanged_backend(self) -> None:
        """
        Reloading to a new port and back to the first: the first description is parsed
        again (the old configuration's endpoints are gone, not kept or accumulated).
        """
        factory = self.make_factory("unix:path=/run/a.sock")
        factory.open_backend(factory.config.services["svc"])
        self.reload(factory, "unix:path=/run/b.sock")
        factory.open_backend(factory.config.services["svc"])
        self.reload(factory, "unix:path=/run/a.sock")
        factory.open_backend(factory.config.services["svc"])
        factory.open_backend(factory.config.services["svc"])
        self.assertEqual(
            self.parsed.calls,
            ["unix:path=/run/a.sock", "unix:path=/run/b.sock", "unix:path=/run/a.sock"],
        )
        self.assertEqual(
            [client[0] for client in self.reactor.unixClients],
            ["/run/a.sock", "/run/b.sock", "/run/a.sock", "/run/a.sock"],
        )

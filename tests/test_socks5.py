"""
Tests for L{netguard.outbound.socks5} and the C{socks5:} endpoint string plugin.

Everything here runs on Twisted fakes: a L{MemoryReactorClock} as the clock (and as the reactor
of a real L{TCP4ClientEndpoint}), L{StringTransport} as the proxy connection, and L{iosim} for
an in-memory round trip against a small scripted SOCKS5 server.
"""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, clientFromString
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.plugin import IPlugin, getPlugins
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from netguard.log import format_text
from netguard.outbound import socks5
from netguard.outbound.socks5 import (
    MAX_REPLY_SIZE,
    AddressType,
    AddressTypeNotSupported,
    AuthenticationFailed,
    CommandNotSupported,
    ConnectionNotAllowed,
    ConnectionRefused,
    GeneralFailure,
    HostUnreachable,
    Method,
    NetworkUnreachable,
    NoAcceptableMethods,
    SOCKS5ClientEndpoint,
    SOCKS5Negotiation,
    SOCKSAddress,
    SOCKSConnectionClosed,
    SOCKSError,
    SOCKSProtocolError,
    SOCKSReplyError,
    SOCKSTimeout,
    TTLExpired,
    UnassignedReplyCode,
)

PROXY_ADDRESS = IPv4Address("TCP", "127.0.0.1", 1080)
PASSWORD = "s3cret-Pässword"
NO_AUTH_GREETING = b"\x05\x01\x00"
USERPASS_GREETING = b"\x05\x01\x02"
METHOD_NO_AUTH = b"\x05\x00"
METHOD_USERPASS = b"\x05\x02"
AUTH_OK = b"\x01\x00"
#: Success, bound 10.1.2.3:4660.
REPLY_V4 = b"\x05\x00\x00\x01\x0a\x01\x02\x03\x12\x34"
#: Success, bound [2001:db8::1]:80.
REPLY_V6 = b"\x05\x00\x00\x04" + bytes.fromhex("20010db8000000000000000000000001") + b"\x00\x50"
#: Success, bound proxy.example:1080.
REPLY_DOMAIN = b"\x05\x00\x00\x03\x0dproxy.example\x04\x38"
REQUEST_DOMAIN = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
#: Well-formed bound host names (LDH labels, the last one starting with a letter).
BOUND_NAME_PATTERN = (
    rb"[a-z](?:[a-z0-9-]{0,8}[a-z0-9])?(?:\.[a-z](?:[a-z0-9-]{0,8}[a-z0-9])?){0,4}\.?"
)
#: A host name of 253 characters (four labels of 63, 63, 63 and 61) and a final dot: the
#: longest well-formed bound name.
NAME_253 = b".".join([b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61])
LONGEST_BOUND_NAME = NAME_253 + b"."


class Recorder(Protocol):
    """
    An application protocol that records what happens to it.
    """

    def __init__(self) -> None:
        self.made = 0
        self.received: list[bytes] = []
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.made += 1

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = reason


@implementer(IHalfCloseableProtocol)
class HalfCloseRecorder(Recorder):
    """
    A recorder that understands half-close.
    """

    def __init__(self) -> None:
        super().__init__()
        self.read_closed = False
        self.write_closed = False

    def readConnectionLost(self) -> None:
        self.read_closed = True

    def writeConnectionLost(self) -> None:
        self.write_closed = True


class HalfCloseStringTransport(StringTransport):
    """
    A L{StringTransport} that records a write-side half-close.
    """

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


@implementer(IStreamClientEndpoint)
class FakeProxyEndpoint:
    """
    A proxy endpoint whose connection the test completes by hand, on a L{StringTransport}.
    """

    def __init__(self) -> None:
        self.factory: Any = None
        self.deferred: Deferred[Any] | None = None
        self.cancelled = False

    def connect(self, factory: Any) -> Deferred[Any]:
        self.factory = factory

        def cancel(d: Deferred[Any]) -> None:
            self.cancelled = True

        self.deferred = Deferred(cancel)
        return self.deferred

    def complete(
        self, transport_class: type[StringTransport] = StringTransport
    ) -> tuple[Any, StringTransport]:
        transport = transport_class(peerAddress=PROXY_ADDRESS)
        proto = self.factory.buildProtocol(PROXY_ADDRESS)
        proto.makeConnection(transport)
        assert self.deferred is not None
        self.deferred.callback(proto)
        return proto, transport


class Harness:
    """
    One connection attempt through a L{FakeProxyEndpoint}, with a L{MemoryReactorClock}.
    """

    def __init__(
        self,
        host: str = "example.com",
        port: int = 443,
        app: type[Recorder] = Recorder,
        **kwargs: Any,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.proxy = FakeProxyEndpoint()
        self.endpoint = SOCKS5ClientEndpoint(self.proxy, host, port, reactor=self.clock, **kwargs)
        self.apps: list[Recorder] = []

        def build() -> Recorder:
            app_proto = app()
            self.apps.append(app_proto)
            return app_proto

        self.deferred = self.endpoint.connect(Factory.forProtocol(build))
        self.results: list[Any] = []
        #: What the application had received when the Deferred fired.
        self.received_at_result: list[list[bytes]] = []

        def record(result: Any) -> None:
            self.results.append(result)
            if isinstance(result, Recorder):
                self.received_at_result.append(list(result.received))

        self.deferred.addBoth(record)

    def connect_proxy(
        self, transport_class: type[StringTransport] = StringTransport
    ) -> StringTransport:
        self.proto, self.transport = self.proxy.complete(transport_class)
        return self.transport

    def take(self) -> bytes:
        """
        @return: what was written to the proxy since the last call.
        """
        value = self.transport.value()
        self.transport.clear()
        return value

    def feed(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    @property
    def app(self) -> Recorder:
        return self.apps[0]

    def failure(self) -> Failure:
        assert len(self.results) == 1, self.results
        result = self.results[0]
        assert isinstance(result, Failure), result
        return result

    def established(self, transport_class: type[StringTransport] = StringTransport) -> Recorder:
        """
        Run a whole successful no-auth negotiation.
        """
        self.connect_proxy(transport_class)
        self.take()
        self.feed(METHOD_NO_AUTH + REPLY_V4)
        assert self.results == [self.app], self.results
        return self.app


# ---------------------------------------------------------------------------------------------


class InterfaceTests(unittest.TestCase):
    """
    The endpoint and the plugin provide their interfaces.
    """

    def test_endpoint_provides_interface(self) -> None:
        endpoint = SOCKS5ClientEndpoint(
            FakeProxyEndpoint(), "example.com", 443, reactor=MemoryReactorClock()
        )
        self.assertTrue(verifyObject(IStreamClientEndpoint, endpoint))

    def test_errors_are_connect_errors(self) -> None:
        for cls in (
            SOCKSError,
            SOCKSReplyError,
            AuthenticationFailed,
            NoAcceptableMethods,
            SOCKSProtocolError,
            SOCKSConnectionClosed,
            SOCKSTimeout,
            *socks5.REPLY_ERRORS.values(),
            UnassignedReplyCode,
        ):
            self.assertTrue(issubclass(cls, error.ConnectError), cls)
            self.assertTrue(issubclass(cls, SOCKSError), cls)

    def test_refused_is_twisted_connection_refused(self) -> None:
        self.assertIsInstance(ConnectionRefused(), error.ConnectionRefusedError)

    def test_timeout_is_twisted_timeout(self) -> None:
        self.assertIsInstance(SOCKSTimeout(1.0, "x"), error.TimeoutError)


class GreetingTests(unittest.TestCase):
    """
    The methods offered and the requests sent.
    """

    def test_no_credentials_offers_no_auth_only(self) -> None:
        h = Harness()
        self.assertEqual(h.connect_proxy().value(), NO_AUTH_GREETING)

    def test_credentials_offer_userpass_only(self) -> None:
        h = Harness(username="alice", password=PASSWORD)
        self.assertEqual(h.connect_proxy().value(), USERPASS_GREETING)

    def test_credentials_with_offer_no_auth_offers_both(self) -> None:
        h = Harness(username="alice", password=PASSWORD, offer_no_auth=True)
        self.assertEqual(h.connect_proxy().value(), b"\x05\x02\x00\x02")

    def test_domain_request(self) -> None:
        h = Harness()
        h.connect_proxy()
        h.take()
        h.feed(METHOD_NO_AUTH)
        self.assertEqual(h.take(), REQUEST_DOMAIN)

    def test_ipv4_literal_sent_as_address(self) -> None:
        h = Harness("192.0.2.7", 80)
        h.connect_proxy()
        h.take()
        h.feed(METHOD_NO_AUTH)
        self.assertEqual(h.take(), b"\x05\x01\x00\x01\xc0\x00\x02\x07\x00\x50")

    def test_ipv6_literal_sent_as_address(self) -> None:
        h = Harness("2001:db8::1", 80)
        h.connect_proxy()
        h.take()
        h.feed(METHOD_NO_AUTH)
        self.assertEqual(
            h.take(),
            b"\x05\x01\x00\x04" + bytes.fromhex("20010db8000000000000000000000001") + b"\x00\x50",
        )

    def test_bracketed_ipv6_literal(self) -> None:
        self.assertEqual(
            SOCKS5ClientEndpoint(
                FakeProxyEndpoint(), "[::1]", 80, reactor=MemoryReactorClock()
            ).target,
            SOCKSAddress(AddressType.IPV6, "::1", 80),
        )

    def test_localhost_sent_as_domain(self) -> None:
        """
        A name is never resolved locally, not even C{localhost}.
        """
        h = Harness("localhost", 6379)
        h.connect_proxy()
        h.take()
        h.feed(METHOD_NO_AUTH)
        self.assertEqual(h.take(), b"\x05\x01\x00\x03\x09localhost\x18\xeb")

    def test_idn_sent_as_punycode(self) -> None:
        negotiation = SOCKS5Negotiation("bücher.example", 80)
        self.assertEqual(negotiation.target.host, "xn--bcher-kva.example")

    def test_auth_request(self) -> None:
        h = Harness(username="alice", password=PASSWORD)
        h.connect_proxy()
        h.take()
        h.feed(METHOD_USERPASS)
        raw = PASSWORD.encode("utf-8")
        self.assertEqual(h.take(), b"\x01\x05alice" + bytes([len(raw)]) + raw)
        h.feed(AUTH_OK)
        self.assertEqual(h.take(), REQUEST_DOMAIN)


class SuccessTests(unittest.TestCase):
    """
    Successful negotiations, for each ATYP of the reply.
    """

    def _succeed(self, reply: bytes) -> Harness:
        h = Harness()
        h.connect_proxy()
        h.take()
        h.feed(METHOD_NO_AUTH)
        h.take()
        self.assertEqual(h.results, [])
        self.assertEqual(h.apps[0].made, 0)
        h.feed(reply)
        self.assertEqual(h.results, [h.app])
        self.assertEqual(h.app.made, 1)
        self.assertEqual(h.app.received, [])
        return h

    def test_reply_ipv4(self) -> None:
        h = self._succeed(REPLY_V4)
        self.assertEqual(
            h.app.transport.socks_bound,  # type: ignore[union-attr]
            SOCKSAddress(AddressType.IPV4, "10.1.2.3", 0x1234),
        )

    def test_reply_ipv6(self) -> None:
        h = self._succeed(REPLY_V6)
        self.assertEqual(
            h.app.transport.socks_bound,  # type: ignore[union-attr]
            SOCKSAddress(AddressType.IPV6, "2001:db8::1", 80),
        )

    def test_reply_domain(self) -> None:
        h = self._succeed(REPLY_DOMAIN)
        self.assertEqual(
            h.app.transport.socks_bound,  # type: ignore[union-attr]
            SOCKSAddress(AddressType.DOMAIN, "proxy.example", 1080),
        )

    def test_reply_domain_textual_address(self) -> None:
        """
        A bound "name" that is a textual IPv6 address is well formed.
        """
        h = self._succeed(b"\x05\x00\x00\x03\x0b2001:db8::1\x00\x50")
        bound = h.app.transport.socks_bound  # type: ignore[union-attr]
        self.assertEqual(bound, SOCKSAddress(AddressType.DOMAIN, "2001:db8::1", 80))

    def test_timer_cancelled_on_success(self) -> None:
        h = self._succeed(REPLY_V4)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_peer_is_the_proxy(self) -> None:
        h = self._succeed(REPLY_V4)
        transport: Any = h.app.transport
        self.assertEqual(transport.getPeer(), PROXY_ADDRESS)
        self.assertEqual(
            transport.socks_target, SOCKSAddress(AddressType.DOMAIN, "example.com", 443)
        )

    def test_application_writes_reach_the_proxy_connection(self) -> None:
        h = self._succeed(REPLY_V4)
        h.app.transport.write(b"GET / HTTP/1.0\r\n\r\n")  # type: ignore[union-attr]
        h.app.transport.writeSequence([b"a", b"b"])  # type: ignore[union-attr]
        self.assertEqual(h.take(), b"GET / HTTP/1.0\r\n\r\nab")

    def test_later_data_delivered(self) -> None:
        h = self._succeed(REPLY_V4)
        h.feed(b"one")
        h.feed(b"two")
        self.assertEqual(h.app.received, [b"one", b"two"])

    def test_application_close(self) -> None:
        h = self._succeed(REPLY_V4)
        h.app.transport.loseConnection()  # type: ignore[union-attr]
        self.assertTrue(h.transport.disconnecting)

    def test_application_abort(self) -> None:
        h = self._succeed(REPLY_V4)
        h.app.transport.abortConnection()  # type: ignore[union-attr]
        self.assertTrue(h.transport.disconnected)

    def test_connection_lost_reaches_application(self) -> None:
        h = self._succeed(REPLY_V4)
        h.proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertIsNotNone(h.app.lost)
        assert h.app.lost is not None
        self.assertTrue(h.app.lost.check(error.ConnectionDone))

    def test_cancel_after_success_does_nothing(self) -> None:
        h = self._succeed(REPLY_V4)
        h.deferred.cancel()
        self.assertEqual(h.results, [h.app])
        self.assertFalse(h.transport.disconnecting)

    def test_username_password_success(self) -> None:
        h = Harness(username="alice", password=PASSWORD)
        h.connect_proxy()
        h.feed(METHOD_USERPASS)
        h.feed(AUTH_OK)
        h.feed(REPLY_V4)
        self.assertEqual(h.results, [h.app])

    def test_offer_no_auth_accepts_no_auth(self) -> None:
        h = Harness(username="alice", password=PASSWORD, offer_no_auth=True)
        h.connect_proxy()
        h.take()
        h.feed(METHOD_NO_AUTH)
        self.assertEqual(h.take(), REQUEST_DOMAIN)
        h.feed(REPLY_V4)
        self.assertEqual(h.results, [h.app])


class LeftoverTests(unittest.TestCase):
    """
    Bytes that arrive with the reply belong to the application: none lost, none duplicated.
    """

    def test_bytes_in_same_segment_as_reply(self) -> None:
        h = Harness()
        h.connect_proxy()
        h.feed(METHOD_NO_AUTH)
        h.feed(REPLY_V4 + b"+OK hello")
        self.assertEqual(h.results, [h.app])
        self.assertEqual(h.app.received, [b"+OK hello"])
        h.feed(b" more")
        self.assertEqual(b"".join(h.app.received), b"+OK hello more")

    def test_all_replies_and_data_in_one_segment(self) -> None:
        h = Harness(username="alice", password=PASSWORD)
        h.connect_proxy()
        h.take()
        h.feed(METHOD_USERPASS + AUTH_OK + REPLY_DOMAIN + b"data")
        self.assertEqual(h.results, [h.app])
        self.assertEqual(h.app.received, [b"data"])
        raw = PASSWORD.encode("utf-8")
        self.assertEqual(h.take(), b"\x01\x05alice" + bytes([len(raw)]) + raw + REQUEST_DOMAIN)

    def test_leftover_delivered_after_deferred_fires(self) -> None:
        """
        As with a plain TCP connection, the caller's callback runs before any byte arrives.
        """
        h = Harness()
        h.connect_proxy()
        h.feed(METHOD_NO_AUTH + REPLY_V4 + b"x")
        self.assertEqual(h.received_at_result, [[]])
        self.assertEqual(h.app.received, [b"x"])

    def test_leftover_not_delivered_after_application_closed(self) -> None:
        class Closer(Recorder):
            def connectionMade(self) -> None:
                super().connectionMade()
                self.transport.loseConnection()  # type: ignore[union-attr]

        h = Harness(app=Closer)
        h.connect_proxy()
        h.feed(METHOD_NO_AUTH + REPLY_V4 + b"ignored")
        self.assertEqual(h.app.received, [])
        self.assertTrue(h.transport.disconnecting)

    def test_one_byte_at_a_time_no_auth(self) -> None:
        h = Harness()
        h.connect_proxy()
        for byte in METHOD_NO_AUTH + REPLY_DOMAIN + b"abc":
            h.feed(bytes([byte]))
        self.assertEqual(h.results, [h.app])
        self.assertEqual(b"".join(h.app.received), b"abc")
        self.assertEqual(h.app.received, [b"a", b"b", b"c"])

    def test_one_byte_at_a_time_with_auth(self) -> None:
        h = Harness(username="alice", password=PASSWORD)
        h.connect_proxy()
        stream = METHOD_USERPASS + AUTH_OK + REPLY_V6 + b"xyz"
        for i, byte in enumerate(stream):
            h.feed(bytes([byte]))
            if i < len(stream) - 4:
                self.assertEqual(h.results, [])
        self.assertEqual(h.results, [h.app])
        self.assertEqual(b"".join(h.app.received), b"xyz")


class ReplyCodeTests(unittest.TestCase):
    """
    Each REP code maps to its exception class, carrying the code and the RFC text.
    """

    def _reply(self, code: int) -> Failure:
        h = Harness()
        h.connect_proxy()
        h.feed(METHOD_NO_AUTH)
        h.feed(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))
        self.assertTrue(h.transport.disconnected)
        self.assertEqual(h.apps[0].made, 0)
        return h.failure()

    def _check(self, code: int, cls: type[SOCKSReplyError], text: str) -> None:
        failure = self._reply(code)
        self.assertIs(type(failure.value), cls)
        value: Any = failure.value
        self.assertEqual(value.code, code)
        self.assertEqual(value.rfc_text, text)
        self.assertIn(text, str(value))
        self.assertIn(f"0x{code:02x}", str(value))

    def test_general_failure(self) -> None:
        self._check(1, GeneralFailure, "general SOCKS server failure")

    def test_connection_not_allowed(self) -> None:
        self._check(2, ConnectionNotAllowed, "connection not allowed by ruleset")

    def test_network_unreachable(self) -> None:
        self._check(3, NetworkUnreachable, "Network unreachable")

    def test_host_unreachable(self) -> None:
        self._check(4, HostUnreachable, "Host unreachable")

    def test_connection_refused(self) -> None:
        self._check(5, ConnectionRefused, "Connection refused")

    def test_ttl_expired(self) -> None:
        self._check(6, TTLExpired, "TTL expired")

    def test_command_not_supported(self) -> None:
        self._check(7, CommandNotSupported, "Command not supported")

    def test_address_type_not_supported(self) -> None:
        self._check(8, AddressTypeNotSupported, "Address type not supported")

    def test_unassigned_code_9(self) -> None:
        self._check(9, UnassignedReplyCode, "unassigned")

    def test_unassigned_code_255(self) -> None:
        self._check(255, UnassignedReplyCode, "unassigned")

    def test_failure_code_decided_on_second_byte(self) -> None:
        """
        Some proxies close right after C{VER REP}: the code is reported, not a short reply.
        """
        h = Harness()
        h.connect_proxy()
        h.feed(METHOD_NO_AUTH + b"\x05\x05")
        self.assertIsInstance(h.failure().value, ConnectionRefused)


class BadReplyTests(unittest.TestCase):
    """
    Replies that are not SOCKS5: each gives L{SOCKSProtocolError} with an escaped excerpt, and
    the proxy connection is aborted.
    """

    def _fails(self, *chunks: bytes, **kwargs: Any) -> SOCKSProtocolError:
        h = Harness(**kwargs)
        h.connect_proxy()
        for chunk in chunks:
            h.feed(chunk)
        value = h.failure().value
        self.assertIsInstance(value, SOCKSProtocolError)
        self.assertTrue(h.transport.disconnected)
        self.assertEqual(h.apps[0].made, 0)
        assert isinstance(value, SOCKSProtocolError)
        return value

    def test_garbage_version_in_method_reply(self) -> None:
        exc = self._fails(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertIn("version 72", exc.reason)
        self.assertEqual(exc.excerpt, "HTTP/1.1 400 Bad Request\\r\\n\\r\\n")
        self.assertIn("HTTP/1.1 400 Bad Request\\r\\n", str(exc))

    def test_socks4_reply_version(self) -> None:
        self.assertIn("version 0", self._fails(b"\x00\x5a").reason)

    def test_garbage_version_in_connect_reply(self) -> None:
        self.assertIn("version 4", self._fails(METHOD_NO_AUTH, b"\x04\x00\x00\x01").reason)

    def test_rsv_nonzero(self) -> None:
        exc = self._fails(METHOD_NO_AUTH, b"\x05\x00\x01\x01\x00\x00\x00\x00\x00\x00")
        self.assertIn("reserved byte 1", exc.reason)

    def test_bad_atyp_0(self) -> None:
        self.assertIn("address type 0", self._fails(METHOD_NO_AUTH, b"\x05\x00\x00\x00").reason)

    def test_bad_atyp_2(self) -> None:
        self.assertIn("address type 2", self._fails(METHOD_NO_AUTH, b"\x05\x00\x00\x02").reason)

    def test_bad_atyp_255(self) -> None:
        exc = self._fails(METHOD_NO_AUTH, b"\x05\x00\x00\xff")
        self.assertIn("address type 255", exc.reason)
        self.assertEqual(exc.excerpt, "\\x05\\0\\0\\xff")

    def test_empty_domain(self) -> None:
        exc = self._fails(METHOD_NO_AUTH, b"\x05\x00\x00\x03\x00\x00\x50")
        self.assertIn("empty domain", exc.reason)

    def test_domain_length_overrun_then_close(self) -> None:
        """
        A length byte promising more than the proxy sends: we wait for exactly that much, then
        the close is reported with what we had.
        """
        h = Harness()
        h.connect_proxy()
        h.feed(METHOD_NO_AUTH + b"\x05\x00\x00\x03\x40short")
        self.assertEqual(h.results, [])
        h.proto.connectionLost(Failure(error.ConnectionDone()))
        value = h.failure().value
        self.assertIsInstance(value, SOCKSConnectionClosed)
        assert isinstance(value, SOCKSConnectionClosed)
        self.assertEqual(value.phase, "CONNECT reply")
        self.assertEqual(value.excerpt, "\\x05\\0\\0\\x03@short")

    def test_domain_length_byte_respected(self) -> None:
        """
        The name is exactly as long as the length byte says; what follows the port is
        application data, not more name.
        """
        h = Harness()
        h.connect_proxy()
        h.feed(METHOD_NO_AUTH + b"\x05\x00\x00\x03\x03example.com\x00\x50")
        bound = h.app.transport.socks_bound  # type: ignore[union-attr]
        self.assertEqual(bound, SOCKSAddress(AddressType.DOMAIN, "exa", 0x6D70))
        self.assertEqual(b"".join(h.app.received), b"le.com\x00\x50")

    def test_method_not_offered(self) -> None:
        exc = self._fails(METHOD_USERPASS)
        self.assertIn("method 0x02, not offered", exc.reason)

    def test_gssapi_not_offered(self) -> None:
        self.assertIn("0x01", self._fails(b"\x05\x01").reason)

    def test_no_auth_selected_when_only_userpass_offered(self) -> None:
        """
        The downgrade we refuse: credentials were configured, the proxy picks no-auth.
        """
        exc = self._fails(METHOD_NO_AUTH, username="alice", password=PASSWORD)
        self.assertIn("method 0x00, not offered", exc.reason)

    def test_auth_reply_bad_version(self) -> None:
        exc = self._fails(METHOD_USERPASS, b"\x05\x00", username="alice", password=PASSWORD)
        self.assertIn("username/password reply has version 5", exc.reason)

    def test_closed_before_method_reply(self) -> None:
        h = Harness()
        h.connect_proxy()
        h.feed(b"\x05")
        h.proto.connectionLost(Failure(error.ConnectionDone()))
        value = h.failure().value
        self.assertIsInstance(value, SOCKSConnectionClosed)
        self.assertIn("method selection reply", str(value))

    def test_half_close_during_negotiation(self) -> None:
        h = Harness()
        h.connect_proxy()
        h.proto.readConnectionLost()
        self.assertIsInstance(h.failure().value, SOCKSConnectionClosed)
        self.assertTrue(h.transport.disconnected)

    def test_data_after_failure_is_dropped(self) -> None:
        h = Harness()
        h.connect_proxy()
        h.feed(b"\x04")
        h.feed(b"\x05\x00" * 1000)
        self.assertEqual(len(h.results), 1)
        self.assertEqual(h.proto.negotiation.buffered, 0)


class BoundAddressTests(unittest.TestCase):
    """
    A success reply (REP 0) counts only with a well-formed BND.ADDR: any 4 or 16 bytes for
    ATYP 1 or 4; for ATYP 3 a name that L{socks5.is_valid_bound_name} accepts, at most
    L{socks5.MAX_BOUND_NAME} bytes. Anything else is a L{SOCKSProtocolError}, decided on the
    first byte that cannot belong to a valid reply, and not one byte after the reply reaches
    the application.
    """

    def _negotiate(self, *chunks: bytes) -> Harness:
        h = Harness()
        h.connect_proxy()
        h.feed(METHOD_NO_AUTH)
        for chunk in chunks:
            h.feed(chunk)
        return h

    def _fails(self, *chunks: bytes) -> SOCKSProtocolError:
        h = self._negotiate(*chunks)
        value = h.failure().value
        self.assertIsInstance(value, SOCKSProtocolError)
        assert isinstance(value, SOCKSProtocolError)
        self.assertEqual(value.phase, "CONNECT reply")
        self.assertTrue(h.transport.disconnected)
        self.assertEqual(h.apps[0].made, 0)
        self.assertEqual(h.apps[0].received, [])
        return value

    def _bound(self, name: bytes) -> SOCKSAddress:
        h = self._negotiate(b"\x05\x00\x00\x03" + bytes([len(name)]) + name + b"\x00\x50")
        self.assertEqual(h.results, [h.app])
        bound: SOCKSAddress = h.app.transport.socks_bound  # type: ignore[union-attr]
        return bound

    def _domain_reply(self, name: bytes) -> bytes:
        return b"\x05\x00\x00\x03" + bytes([len(name)]) + name + b"\x00\x50"

    def test_binary_255_byte_name_then_64_kib_of_junk(self) -> None:
        """
        The hostile proxy of the report: REP 0, ATYP 3, a 255-byte binary name, then 64 KiB
        of junk, all in one read. The attempt fails and no junk reaches the application.
        """
        junk = os.urandom(65536)
        exc = self._fails(self._domain_reply(bytes(range(255))) + junk)
        self.assertIn("255-byte bound name", exc.reason)

    def test_binary_name_fails_on_the_length_byte(self) -> None:
        """
        Dripped one byte at a time, the 255-byte name fails as soon as its length byte is
        read: nothing more is buffered or waited for.
        """
        h = self._negotiate()
        for byte in b"\x05\x00\x00\x03\xff":
            h.feed(bytes([byte]))
        self.assertIsInstance(h.failure().value, SOCKSProtocolError)
        self.assertEqual(h.proto.negotiation.buffered, 0)

    def test_binary_name_of_valid_length_then_junk(self) -> None:
        """
        A binary name of a plausible length (16) fails too, and its junk is dropped.
        """
        self._fails(self._domain_reply(b"\x00\x01\x02\xff" * 4) + b"junk" * 1000)

    def test_non_hostname_byte_fails_before_the_name_is_complete(self) -> None:
        """
        A byte that no host name or address holds (here NUL) fails at once, although the
        length byte promises 13 more bytes.
        """
        exc = self._fails(b"\x05\x00\x00\x03\x10ab\x00")
        self.assertIn("byte no host name holds", exc.reason)

    def test_control_bytes_in_name(self) -> None:
        """
        Control characters (LF, ESC) in a bound name: a protocol error, shown escaped.
        """
        exc = self._fails(self._domain_reply(b"a\nb\x1b"))
        self.assertIn("\\n", exc.excerpt)
        self.assertNotIn("\n", str(exc))

    def test_space_in_name(self) -> None:
        """
        A space is printable but belongs in no host name.
        """
        self._fails(self._domain_reply(b"proxy example"))

    def test_empty_name(self) -> None:
        """
        Length 0: an empty name.
        """
        self.assertIn("empty domain", self._fails(b"\x05\x00\x00\x03\x00\x00\x50").reason)

    def test_empty_label(self) -> None:
        """
        C{a..b}: an empty label.
        """
        self._fails(self._domain_reply(b"a..b"))

    def test_hyphen_at_label_edge(self) -> None:
        """
        A label may not start or end with a hyphen.
        """
        self._fails(self._domain_reply(b"-proxy.example"))
        self._fails(self._domain_reply(b"proxy-.example"))

    def test_label_of_63_ok_and_64_refused(self) -> None:
        """
        The label bound, and one past it.
        """
        self.assertEqual(self._bound(b"a" * 63 + b".example").host, "a" * 63 + ".example")
        self._fails(self._domain_reply(b"a" * 64 + b".example"))

    def test_name_of_253_ok(self) -> None:
        """
        The longest DNS name in text form, 253 characters, is accepted.
        """
        self.assertEqual(len(NAME_253), 253)
        self.assertEqual(self._bound(NAME_253).host, NAME_253.decode("ascii"))

    def test_name_of_253_with_final_dot_ok(self) -> None:
        """
        253 characters and a final dot (254 bytes, L{socks5.MAX_BOUND_NAME}) are accepted.
        """
        self.assertEqual(len(LONGEST_BOUND_NAME), socks5.MAX_BOUND_NAME)
        self.assertEqual(self._bound(LONGEST_BOUND_NAME).port, 80)

    def test_name_of_254_refused(self) -> None:
        """
        One past the bound: 254 characters without a final dot.
        """
        name = NAME_253 + b"e"
        self.assertEqual(len(name), 254)
        self._fails(self._domain_reply(name))

    def test_name_of_255_refused(self) -> None:
        """
        254 characters and a final dot: 255 bytes, refused on the length byte.
        """
        self._fails(self._domain_reply(NAME_253 + b"e."))

    def test_textual_ipv4_ok(self) -> None:
        """
        A textual IPv4 address is a well-formed bound name.
        """
        self.assertEqual(self._bound(b"10.1.2.3").host, "10.1.2.3")

    def test_all_digit_last_label_that_is_no_address(self) -> None:
        """
        C{10.1.2.300} is neither an address nor a host name (its last label is all digits).
        """
        self._fails(self._domain_reply(b"10.1.2.300"))

    def test_colons_that_are_no_address(self) -> None:
        """
        Colons are allowed only as part of a valid IPv6 address.
        """
        self._fails(self._domain_reply(b"a:b"))
        self._fails(self._domain_reply(b":::"))

    def test_ipv4_any_four_bytes(self) -> None:
        """
        ATYP 1: any four bytes, 0.0.0.0 included (proxies often report it).
        """
        h = self._negotiate(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
        self.assertEqual(h.results, [h.app])

    def test_ipv6_any_sixteen_bytes(self) -> None:
        """
        ATYP 4: any sixteen bytes.
        """
        h = self._negotiate(b"\x05\x00\x00\x04" + b"\xff" * 16 + b"\x00\x00")
        self.assertEqual(h.results, [h.app])

    def test_failure_code_with_binary_name_is_the_failure_code(self) -> None:
        """
        A failure reply is decided on its REP byte, whatever follows.
        """
        h = self._negotiate(b"\x05\x05\x00\x03\xff" + bytes(range(255)))
        self.assertIsInstance(h.failure().value, ConnectionRefused)


class BoundNameSyntaxTests(unittest.TestCase):
    """
    L{socks5.is_valid_bound_name} on its own.
    """

    def test_accepted(self) -> None:
        """
        Host names, with or without a final dot, and textual addresses.
        """
        for name in (
            b"proxy.example",
            b"proxy.example.",
            b"a",
            b"xn--bcher-kva.example",
            b"h-1.example",
            b"10.1.2.3",
            b"2001:db8::1",
            b"::ffff:10.1.2.3",
            NAME_253,
            LONGEST_BOUND_NAME,
        ):
            self.assertTrue(socks5.is_valid_bound_name(name), name)

    def test_refused(self) -> None:
        """
        Empty, over-long, binary, non-LDH, empty labels, a lone dot, numeric last labels that
        are no address, scoped addresses, underscores.
        """
        for name in (
            b"",
            b".",
            b"..",
            NAME_253 + b"e",
            NAME_253 + b"e.",
            b"\x00",
            b"proxy\x00.example",
            b"pr\xc3\xb6xy.example",
            b"proxy example",
            b"a..b",
            b".a",
            b"-a",
            b"a-",
            b"999.1.1.1",
            b"1234",
            b"fe80::1%eth0",
            b"a:b",
            b"under_score.example",
            b"a" * 64,
        ):
            self.assertFalse(socks5.is_valid_bound_name(name), name)


class PhaseTests(unittest.TestCase):
    """
    Every failure names the phase the negotiation was in: on the exception (C{phase}) and in
    the C{socks5.failed} log event, never "nothing".
    """

    def _failed_event(self, *chunks: bytes, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        with capturedLogs() as events:
            h = Harness(**kwargs)
            h.connect_proxy()
            for chunk in chunks:
                h.feed(chunk)
        failed = [e for e in events if e.get("event") == "socks5.failed"]
        self.assertEqual(len(failed), 1, failed)
        return h.failure().value, failed[0]

    def _check(self, phase: str, *chunks: bytes, **kwargs: Any) -> dict[str, Any]:
        value, event = self._failed_event(*chunks, **kwargs)
        self.assertEqual(value.phase, phase)
        self.assertEqual(event["phase"], phase)
        text = formatEvent(event)
        self.assertIn(f"failed while waiting for {phase}: ", text)
        self.assertNotIn("nothing", text)
        return event

    def test_method_selection(self) -> None:
        """
        A bad version in the method selection reply.
        """
        self._check("method selection reply", b"\x04\x00")

    def test_method_not_offered(self) -> None:
        """
        A method we did not offer.
        """
        self._check("method selection reply", METHOD_USERPASS)

    def test_no_acceptable_methods(self) -> None:
        """
        METHOD 0xFF.
        """
        self._check("method selection reply", b"\x05\xff")

    def test_rfc1929_authentication_rejected(self) -> None:
        """
        The proxy rejects our username and password.
        """
        self._check(
            "RFC 1929 username/password reply",
            METHOD_USERPASS,
            b"\x01\x01",
            username="alice",
            password=PASSWORD,
        )

    def test_rfc1929_bad_version(self) -> None:
        """
        A username/password reply with the wrong version.
        """
        self._check(
            "RFC 1929 username/password reply",
            METHOD_USERPASS,
            b"\x05\x00",
            username="alice",
            password=PASSWORD,
        )

    def test_connect_reply_code(self) -> None:
        """
        A failure REP code.
        """
        self._check("CONNECT reply", METHOD_NO_AUTH, b"\x05\x02")

    def test_connect_reply_reserved_byte(self) -> None:
        """
        RSV other than 0.
        """
        self._check("CONNECT reply", METHOD_NO_AUTH, b"\x05\x00\x07")

    def test_connect_reply_bogus_bound_name(self) -> None:
        """
        A success reply with a binary bound name.
        """
        self._check("CONNECT reply", METHOD_NO_AUTH, b"\x05\x00\x00\x03\x02\x00\x00")

    def test_application_connection_made_raises(self) -> None:
        """
        The application's C{connectionMade} raises after a good reply: the phase says so.
        """

        class Broken(Recorder):
            def connectionMade(self) -> None:
                raise ZeroDivisionError("application bug")

        value, event = self._failed_event(METHOD_NO_AUTH + REPLY_V4, app=Broken)
        self.assertIsInstance(value, ZeroDivisionError)
        self.assertEqual(event["phase"], "the application protocol's connectionMade")
        self.flushLoggedErrors(ZeroDivisionError)


class EscapeOnceTests(unittest.TestCase):
    """
    The proxy's bytes are escaped exactly once: in the exception, and the log event and the
    rendered log line show that text unchanged (C{\\x05\\x07}, not C{\\\\x05\\\\x07}).
    """

    def _failed(self, *chunks: bytes) -> tuple[Any, dict[str, Any]]:
        with capturedLogs() as events:
            h = Harness()
            h.connect_proxy()
            for chunk in chunks:
                h.feed(chunk)
        [event] = [e for e in events if e.get("event") == "socks5.failed"]
        return h.failure().value, event

    def test_excerpt_escaped_once_in_exception_event_and_line(self) -> None:
        """
        A method selection reply choosing 0x07: the excerpt reads C{\\x05\\x07} everywhere.
        """
        value, event = self._failed(b"\x05\x07")
        self.assertEqual(value.excerpt, "\\x05\\x07")
        self.assertEqual(event["reason"], str(value))
        line = format_text(event)
        assert line is not None
        self.assertIn("received: \\x05\\x07\n", line)
        self.assertNotIn("\\\\", line)

    def test_backslash_from_the_proxy_escaped_once(self) -> None:
        """
        A backslash the proxy sent shows as one escaped backslash (C{\\\\}), not two.
        """
        value, event = self._failed(b"\\x41")
        self.assertEqual(value.excerpt, "\\\\x41")
        line = format_text(event)
        assert line is not None
        self.assertIn("received: \\\\x41\n", line)
        self.assertNotIn("\\\\\\\\", line)

    def test_other_errors_are_escaped_in_the_event(self) -> None:
        """
        An error that is not a L{SOCKSError} (the proxy endpoint's own) is escaped where it is
        logged.
        """
        with capturedLogs() as events:
            h = Harness()
            assert h.proxy.deferred is not None
            h.proxy.deferred.errback(error.DNSLookupError("no\nsuch host"))
        [event] = [e for e in events if e.get("event") == "socks5.failed"]
        self.assertIn("no\\nsuch host", event["reason"])
        self.assertEqual(event["phase"], "the connection to the proxy")
        h.failure()


class QuietFactoryTests(unittest.TestCase):
    """
    The factory of each connection attempt does not log Twisted's "Starting factory" and
    "Stopping factory" lines (one pair per SOCKS5 connection otherwise).
    """

    def test_no_starting_or_stopping_factory_events(self) -> None:
        """
        Start and stop the attempt's factory as a connector does: no event at all.
        """
        quiet_app = Factory.forProtocol(Recorder)
        quiet_app.noisy = False
        clock = MemoryReactorClock()
        proxy = FakeProxyEndpoint()
        endpoint = SOCKS5ClientEndpoint(proxy, "example.com", 443, reactor=clock)
        endpoint.connect(quiet_app).addErrback(lambda _: None)
        with capturedLogs() as events:
            proxy.factory.doStart()
            proxy.factory.doStop()
        self.assertEqual([formatEvent(e) for e in events], [])


class AuthTests(unittest.TestCase):
    """
    Method selection and RFC 1929 outcomes.
    """

    def test_no_acceptable_methods(self) -> None:
        h = Harness()
        h.connect_proxy()
        h.feed(b"\x05\xff")
        value = h.failure().value
        self.assertIsInstance(value, NoAcceptableMethods)
        assert isinstance(value, NoAcceptableMethods)
        self.assertEqual(value.offered, (Method.NO_AUTH,))
        self.assertTrue(h.transport.disconnected)

    def test_no_acceptable_methods_with_credentials(self) -> None:
        h = Harness(username="alice", password=PASSWORD)
        h.connect_proxy()
        h.feed(b"\x05\xff")
        self.assertIn("username password", str(h.failure().value))

    def test_authentication_failed(self) -> None:
        h = Harness(username="alice", password=PASSWORD)
        h.connect_proxy()
        h.feed(METHOD_USERPASS)
        h.feed(b"\x01\x01")
        value = h.failure().value
        self.assertIsInstance(value, AuthenticationFailed)
        assert isinstance(value, AuthenticationFailed)
        self.assertEqual(value.status, 1)
        self.assertTrue(h.transport.disconnected)
        self.assertNotIn(PASSWORD, str(value))
        self.assertNotIn(PASSWORD, repr(value))

    def test_password_never_in_logs_repr_or_errors(self) -> None:
        with capturedLogs() as events:
            h = Harness(username="alice", password=PASSWORD)
            h.connect_proxy()
            h.feed(METHOD_USERPASS)
            h.feed(b"\x01\x02")
        self.assertTrue(any(e.get("event") == "socks5.failed" for e in events))
        text = repr(events) + repr(h.endpoint) + repr(h.proto.negotiation) + str(h.failure())
        self.assertIn("alice", repr(h.endpoint))
        for needle in (PASSWORD, PASSWORD.encode("utf-8").hex(), "s3cret"):
            self.assertNotIn(needle, text)

    def test_password_not_in_step_repr(self) -> None:
        negotiation = SOCKS5Negotiation("example.com", 443, (b"alice", b"hunter2"))
        step = negotiation.receive(METHOD_USERPASS)
        self.assertIn(b"hunter2", step.send)
        self.assertNotIn("hunter2", repr(step))
        self.assertNotIn("hunter2", repr(negotiation))

    def test_password_not_in_validation_errors(self) -> None:
        long_password = "p" * 300
        exc = self.assertRaises(
            ValueError,
            SOCKS5ClientEndpoint,
            FakeProxyEndpoint(),
            "example.com",
            443,
            reactor=MemoryReactorClock(),
            username="alice",
            password=long_password,
        )
        self.assertNotIn("ppp", str(exc))
        self.assertIn("300", str(exc))


class TimeoutTests(unittest.TestCase):
    """
    One timeout covers the whole attempt.
    """

    def test_timeout_during_negotiation(self) -> None:
        h = Harness(timeout=5.0)
        h.connect_proxy()
        h.clock.advance(4.9)
        self.assertEqual(h.results, [])
        h.clock.advance(0.1)
        value = h.failure().value
        self.assertIsInstance(value, SOCKSTimeout)
        assert isinstance(value, SOCKSTimeout)
        self.assertEqual(value.timeout, 5.0)
        self.assertEqual(value.phase, "method selection reply")
        self.assertTrue(h.transport.disconnected)

    def test_timeout_while_waiting_for_connect_reply(self) -> None:
        h = Harness(timeout=2)
        h.connect_proxy()
        h.feed(METHOD_NO_AUTH + b"\x05\x00")
        h.clock.advance(2)
        value: Any = h.failure().value
        self.assertIsInstance(value, SOCKSTimeout)
        self.assertEqual(value.phase, "CONNECT reply")
        self.assertTrue(h.transport.disconnected)

    def test_timeout_during_proxy_connection(self) -> None:
        h = Harness(timeout=3)
        h.clock.advance(3)
        value: Any = h.failure().value
        self.assertIsInstance(value, SOCKSTimeout)
        self.assertEqual(value.phase, "the connection to the proxy")
        self.assertTrue(h.proxy.cancelled)

    def test_timeout_logged(self) -> None:
        with capturedLogs() as events:
            h = Harness(timeout=1)
            h.connect_proxy()
            h.clock.advance(1)
        failed = [e for e in events if e.get("event") == "socks5.failed"]
        self.assertEqual(len(failed), 1)
        self.assertEqual(failed[0]["error"], "SOCKSTimeout")

    def test_late_connection_after_timeout_is_aborted(self) -> None:
        """
        A proxy endpoint that ignores cancellation and connects anyway gets aborted.
        """
        h = Harness(timeout=1)
        h.clock.advance(1)
        self.assertIsInstance(h.failure().value, SOCKSTimeout)
        transport = StringTransport(peerAddress=PROXY_ADDRESS)
        proto = h.proxy.factory.buildProtocol(PROXY_ADDRESS)
        proto.makeConnection(transport)
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")


class CancellationTests(unittest.TestCase):
    """
    The Deferred from connect() is cancellable.
    """

    def test_cancel_during_negotiation_aborts(self) -> None:
        h = Harness()
        h.connect_proxy()
        h.feed(METHOD_NO_AUTH)
        h.deferred.cancel()
        self.assertIsInstance(h.failure().value, CancelledError)
        self.assertTrue(h.transport.disconnected)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.feed(REPLY_V4)
        self.assertEqual(h.apps[0].made, 0)

    def test_cancel_during_proxy_connection(self) -> None:
        h = Harness()
        h.deferred.cancel()
        self.assertIsInstance(h.failure().value, CancelledError)
        self.assertTrue(h.proxy.cancelled)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_connection_lost_after_cancel_is_quiet(self) -> None:
        h = Harness()
        h.connect_proxy()
        h.deferred.cancel()
        h.proto.connectionLost(Failure(error.ConnectionAborted()))
        self.assertEqual(len(h.results), 1)


class HalfCloseTests(unittest.TestCase):
    """
    Half-close passes through to applications that understand it.
    """

    def test_read_half_close_forwarded(self) -> None:
        h = Harness(app=HalfCloseRecorder)
        app = h.established()
        h.proto.readConnectionLost()
        assert isinstance(app, HalfCloseRecorder)
        self.assertTrue(app.read_closed)
        self.assertFalse(h.transport.disconnecting)

    def test_write_half_close_forwarded(self) -> None:
        h = Harness(app=HalfCloseRecorder)
        app = h.established()
        h.proto.writeConnectionLost()
        assert isinstance(app, HalfCloseRecorder)
        self.assertTrue(app.write_closed)

    def test_read_half_close_closes_plain_application(self) -> None:
        h = Harness()
        h.established()
        h.proto.readConnectionLost()
        self.assertTrue(h.transport.disconnecting)

    def test_application_can_half_close(self) -> None:
        h = Harness(app=HalfCloseRecorder)
        app = h.established(HalfCloseStringTransport)
        app.transport.loseWriteConnection()  # type: ignore[union-attr]
        self.assertTrue(h.transport.write_closed)  # type: ignore[attr-defined]


class MemoryBoundTests(unittest.TestCase):
    """
    A peer that streams endless bytes cannot make us buffer more than one valid reply.
    """

    def test_longest_valid_reply_dripped(self) -> None:
        h = Harness()
        h.connect_proxy()
        h.feed(METHOD_NO_AUTH)
        reply = b"\x05\x00\x00\x03\xfe" + LONGEST_BOUND_NAME + b"\x00\x50"
        self.assertEqual(len(reply), MAX_REPLY_SIZE)
        peak = 0
        for byte in reply[:-1]:
            h.feed(bytes([byte]))
            peak = max(peak, h.proto.negotiation.buffered)
        self.assertEqual(peak, MAX_REPLY_SIZE - 1)
        self.assertEqual(h.results, [])
        h.feed(reply[-1:] + b"tail")
        self.assertEqual(h.results, [h.app])
        self.assertEqual(h.app.received, [b"tail"])

    def test_endless_garbage_stream_fails_at_once(self) -> None:
        h = Harness()
        h.connect_proxy()
        chunk = bytes(range(256)) * 256  # 64 KiB, like one read from a chargen-style peer
        for _ in range(16):
            h.feed(chunk)
            self.assertEqual(h.proto.negotiation.buffered, 0)
        self.assertIsInstance(h.failure().value, SOCKSProtocolError)
        self.assertTrue(h.transport.disconnected)
        self.assertLessEqual(len(str(h.failure().value)), 400)

    def test_endless_stream_of_plausible_bytes(self) -> None:
        """
        C{05 00 05 00 ...}: the method reply is fine, then the reserved byte is not.
        """
        h = Harness()
        h.connect_proxy()
        for _ in range(1000):
            h.feed(b"\x05\x00")
            self.assertLess(h.proto.negotiation.buffered, MAX_REPLY_SIZE)
        self.assertIn("reserved byte 5", str(h.failure().value))


class ProxyEndpointTests(unittest.TestCase):
    """
    With a real Twisted endpoint (L{TCP4ClientEndpoint} on a L{MemoryReactorClock}).
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoint = SOCKS5ClientEndpoint(
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", 1080),
            "example.com",
            443,
            reactor=self.reactor,
        )
        self.results: list[Any] = []
        self.deferred = self.endpoint.connect(Factory.forProtocol(Recorder))
        self.deferred.addBoth(self.results.append)

    def test_connects_to_proxy(self) -> None:
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 1080))
        transport = StringTransport(peerAddress=PROXY_ADDRESS)
        proto = factory.buildProtocol(PROXY_ADDRESS)
        proto.makeConnection(transport)
        self.assertEqual(transport.value(), NO_AUTH_GREETING)
        proto.dataReceived(METHOD_NO_AUTH + REPLY_V4 + b"hi")
        self.assertEqual(len(self.results), 1)
        app = self.results[0]
        self.assertIsInstance(app, Recorder)
        self.assertEqual(app.received, [b"hi"])
        self.assertEqual(app.transport.getPeer(), PROXY_ADDRESS)

    def test_proxy_refused_is_not_a_socks_error(self) -> None:
        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(error.ConnectionRefusedError())
        )
        value = self.results[0].value
        self.assertIsInstance(value, error.ConnectionRefusedError)
        self.assertNotIsInstance(value, SOCKSError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cancel_stops_connecting(self) -> None:
        self.deferred.cancel()
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertIsInstance(self.results[0].value, CancelledError)

    def test_timeout_stops_connecting(self) -> None:
        self.reactor.advance(10)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertIsInstance(self.results[0].value, SOCKSTimeout)

    def test_factory_returning_none(self) -> None:
        endpoint = SOCKS5ClientEndpoint(
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", 1080),
            "example.com",
            443,
            reactor=self.reactor,
        )
        factory = Factory()
        factory.buildProtocol = lambda addr: None  # type: ignore[method-assign]
        results: list[Any] = []
        endpoint.connect(factory).addBoth(results.append)
        wrapping = self.reactor.tcpClients[-1][2]
        self.assertIsNone(wrapping.buildProtocol(PROXY_ADDRESS))
        self.assertIsInstance(results[0].value, error.NoProtocol)


class ValidationTests(unittest.TestCase):
    """
    Arguments are checked in __init__.
    """

    def _make(self, host: str = "example.com", port: int = 443, **kwargs: Any) -> Any:
        return SOCKS5ClientEndpoint(
            FakeProxyEndpoint(), host, port, reactor=MemoryReactorClock(), **kwargs
        )

    def test_username_too_long(self) -> None:
        self.assertRaises(ValueError, self._make, username="u" * 256, password="p")

    def test_username_255_bytes_ok(self) -> None:
        self._make(username="u" * 255, password="p" * 255)

    def test_username_empty(self) -> None:
        self.assertRaises(ValueError, self._make, username="", password="p")

    def test_password_empty(self) -> None:
        self.assertRaises(ValueError, self._make, username="u", password="")

    def test_length_counted_in_utf8_bytes(self) -> None:
        self.assertRaises(ValueError, self._make, username="u", password="é" * 128)
        self._make(username="u", password="é" * 127)

    def test_unencodable_password(self) -> None:
        self.assertRaises(ValueError, self._make, username="u", password="\udcff")

    def test_username_without_password(self) -> None:
        self.assertRaises(ValueError, self._make, username="u")

    def test_password_without_username(self) -> None:
        self.assertRaises(ValueError, self._make, password="p")

    def test_port_zero(self) -> None:
        self.assertRaises(ValueError, self._make, port=0)

    def test_port_too_large(self) -> None:
        self.assertRaises(ValueError, self._make, port=65536)

    def test_port_bool(self) -> None:
        self.assertRaises(ValueError, self._make, port=True)

    def test_empty_host(self) -> None:
        self.assertRaises(ValueError, self._make, host="")

    def test_host_with_space(self) -> None:
        self.assertRaises(ValueError, self._make, host="exa mple.com")

    def test_host_with_slash(self) -> None:
        self.assertRaises(ValueError, self._make, host="example.com/evil")

    def test_host_label_too_long(self) -> None:
        self.assertRaises(ValueError, self._make, host="a" * 64 + ".com")

    def test_host_too_long(self) -> None:
        self.assertRaises(ValueError, self._make, host=".".join(["a" * 60] * 5))

    def test_host_trailing_dot_ok(self) -> None:
        self.assertEqual(self._make(host="example.com.").target.host, "example.com.")

    def test_bracketed_non_ipv6(self) -> None:
        self.assertRaises(ValueError, self._make, host="[example.com]")

    def test_scoped_ipv6(self) -> None:
        self.assertRaises(ValueError, self._make, host="fe80::1%eth0")

    def test_timeout_zero(self) -> None:
        self.assertRaises(ValueError, self._make, timeout=0)

    def test_timeout_nan(self) -> None:
        self.assertRaises(ValueError, self._make, timeout=float("nan"))

    def test_timeout_infinite(self) -> None:
        self.assertRaises(ValueError, self._make, timeout=float("inf"))


class NegotiationTests(unittest.TestCase):
    """
    The sans-I/O negotiation on its own, including properties on arbitrary input.
    """

    def test_receive_after_finish_is_a_bug(self) -> None:
        negotiation = SOCKS5Negotiation("example.com", 443)
        negotiation.receive(METHOD_NO_AUTH + REPLY_V4)
        self.assertRaises(RuntimeError, negotiation.receive, b"x")

    def test_result_repr_hides_leftover(self) -> None:
        negotiation = SOCKS5Negotiation("example.com", 443)
        step = negotiation.receive(METHOD_NO_AUTH + REPLY_V4 + b"secret-app-data")
        self.assertNotIn("secret-app-data", repr(step))

    @staticmethod
    def _negotiate_chunks(
        chunks: list[bytes], credentials: bool, offer_no_auth: bool
    ) -> tuple[Any, ...]:
        """
        Feed chunks until the negotiation ends; return a comparable outcome.
        """
        negotiation = SOCKS5Negotiation(
            "example.com",
            443,
            (b"alice", b"pw") if credentials else None,
            offer_no_auth,
        )
        sent = [negotiation.greeting()]
        leftover = b""
        for chunk in chunks:
            if negotiation.finished:
                leftover += chunk
                continue
            try:
                step = negotiation.receive(chunk)
            except SOCKSError as exc:
                return ("error", type(exc), str(exc).split("; received:")[0])
            assert negotiation.buffered < MAX_REPLY_SIZE
            sent.append(step.send)
            if step.result is not None:
                leftover = step.result.leftover
                result = step.result
        if negotiation.finished:
            return ("ok", b"".join(sent), result.bound, result.method, leftover)
        return ("incomplete", b"".join(sent), negotiation.pending)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.binary(max_size=300), max_size=8),
        st.booleans(),
        st.booleans(),
    )
    def test_arbitrary_bytes_only_raise_socks_errors(
        self, chunks: list[bytes], credentials: bool, offer_no_auth: bool
    ) -> None:
        # Any exception other than SOCKSError escapes _run and fails the test.
        self._negotiate_chunks(chunks, credentials, offer_no_auth)

    @settings(max_examples=200, deadline=None)
    @given(
        st.sampled_from(
            [b"\x05\x00", b"\x05\x02", b"\x05\x02\x01\x00", b"\x05\x00\x05\x00\x00", b""]
        ),
        st.binary(max_size=300),
        st.booleans(),
        st.booleans(),
        st.data(),
    )
    def test_outcome_independent_of_splitting(
        self, prefix: bytes, tail: bytes, credentials: bool, offer: bool, data: Any
    ) -> None:
        stream = prefix + tail
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        self.assertEqual(
            self._negotiate_chunks([stream], credentials, offer),
            self._negotiate_chunks(chunks, credentials, offer),
        )

    @settings(max_examples=200, deadline=None)
    @given(
        st.one_of(
            st.ip_addresses(v=4).map(lambda a: bytes([1]) + a.packed),
            st.ip_addresses(v=6).map(lambda a: bytes([4]) + a.packed),
            st.from_regex(BOUND_NAME_PATTERN, fullmatch=True).map(
                lambda n: bytes([3, len(n)]) + n
            ),
        ),
        st.integers(0, 65535),
        st.binary(max_size=200),
        st.data(),
    )
    def test_valid_reply_any_split_delivers_tail_exactly(
        self, address: bytes, port: int, tail: bytes, data: Any
    ) -> None:
        stream = METHOD_NO_AUTH + b"\x05\x00\x00" + address + port.to_bytes(2, "big") + tail
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
        h = Harness()
        h.connect_proxy()
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            h.feed(stream[a:b])
        self.assertEqual(h.results, [h.app])
        self.assertEqual(b"".join(h.app.received), tail)
        self.assertEqual(h.app.transport.socks_bound.port, port)  # type: ignore[union-attr]


class ScriptedSOCKSServer(Protocol):
    """
    A minimal, strict RFC 1928/1929 server for in-memory tests: checks what the client sends,
    answers, sends early application bytes with the reply, then echoes.
    """

    def __init__(self, credentials: tuple[bytes, bytes] | None) -> None:
        self.credentials = credentials
        self.buffer = b""
        self.state = "greeting"
        self.request: bytes | None = None
        self.echoed = 0

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.state == "greeting":
                if len(self.buffer) < 2 or len(self.buffer) < 2 + self.buffer[1]:
                    return
                methods = self.buffer[2 : 2 + self.buffer[1]]
                self.buffer = self.buffer[2 + self.buffer[1] :]
                want = 2 if self.credentials else 0
                assert want in methods, methods
                self.transport.write(bytes([5, want]))  # type: ignore[union-attr]
                self.state = "auth" if self.credentials else "request"
            elif self.state == "auth":
                assert self.credentials is not None
                expected = (
                    bytes([1, len(self.credentials[0])])
                    + self.credentials[0]
                    + bytes([len(self.credentials[1])])
                    + self.credentials[1]
                )
                if len(self.buffer) < len(expected):
                    return
                ok = self.buffer[: len(expected)] == expected
                self.buffer = self.buffer[len(expected) :]
                self.transport.write(b"\x01\x00" if ok else b"\x01\x01")  # type: ignore[union-attr]
                self.state = "request" if ok else "closed"
                if not ok:
                    self.transport.loseConnection()  # type: ignore[union-attr]
                    return
            elif self.state == "request":
                if len(self.buffer) < 5 or len(self.buffer) < 7 + self.buffer[4]:
                    return
                size = 7 + self.buffer[4]
                self.request, self.buffer = self.buffer[:size], self.buffer[size:]
                self.transport.write(REPLY_V4 + b"early")  # type: ignore[union-attr]
                self.state = "echo"
            elif self.state == "echo":
                if self.buffer:
                    self.echoed += len(self.buffer)
                    self.transport.write(self.buffer)  # type: ignore[union-attr]
                    self.buffer = b""
                return
            else:
                return


class InMemoryRoundTripTests(unittest.TestCase):
    """
    A whole exchange through L{iosim}, against L{ScriptedSOCKSServer}.
    """

    def _round_trip(self, credentials: tuple[str, str] | None) -> tuple[Any, Any, Any]:
        server = ScriptedSOCKSServer(
            None
            if credentials is None
            else (credentials[0].encode("utf-8"), credentials[1].encode("utf-8"))
        )
        clock = MemoryReactorClock()
        proxy = FakeProxyEndpoint()
        kwargs: dict[str, Any] = {}
        if credentials is not None:
            kwargs = {"username": credentials[0], "password": credentials[1]}
        endpoint = SOCKS5ClientEndpoint(proxy, "example.com", 443, reactor=clock, **kwargs)
        results: list[Any] = []
        endpoint.connect(Factory.forProtocol(Recorder)).addBoth(results.append)
        client = proxy.factory.buildProtocol(PROXY_ADDRESS)
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            clock=clock,
        )
        assert proxy.deferred is not None
        proxy.deferred.callback(client)
        pump.flush()
        return server, results, pump

    def test_round_trip_with_auth(self) -> None:
        server, results, pump = self._round_trip(("alice", PASSWORD))
        self.assertEqual(server.request, REQUEST_DOMAIN)
        app = results[0]
        self.assertIsInstance(app, Recorder)
        self.assertEqual(b"".join(app.received), b"early")
        app.transport.write(b"ping")
        pump.flush()
        self.assertEqual(b"".join(app.received), b"earlyping")
        self.assertEqual(server.echoed, 4)

    def test_round_trip_no_auth(self) -> None:
        server, results, pump = self._round_trip(None)
        self.assertEqual(b"".join(results[0].received), b"early")


class PasswordFileTests(unittest.TestCase):
    """
    L{socks5.read_password_file}.
    """

    def _file(self, content: bytes, mode: int = 0o600) -> str:
        fd, path = tempfile.mkstemp(dir=self.mktemp_dir())
        os.write(fd, content)
        os.close(fd)
        os.chmod(path, mode)
        return path

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path

    def test_reads_and_strips_one_newline(self) -> None:
        self.assertEqual(socks5.read_password_file(self._file(b"pw\n")), "pw")

    def test_strips_crlf(self) -> None:
        self.assertEqual(socks5.read_password_file(self._file(b"pw\r\n")), "pw")

    def test_keeps_inner_and_second_newline(self) -> None:
        self.assertEqual(socks5.read_password_file(self._file(b" p w\n\n")), " p w\n")

    def test_mode_0400_ok(self) -> None:
        self.assertEqual(socks5.read_password_file(self._file(b"pw", 0o400)), "pw")

    def test_mode_0640_refused(self) -> None:
        path = self._file(b"topsecret", 0o640)
        exc = self.assertRaises(ValueError, socks5.read_password_file, path)
        self.assertIn("0640", str(exc))
        self.assertNotIn("topsecret", str(exc))

    def test_mode_0604_refused(self) -> None:
        self.assertRaises(ValueError, socks5.read_password_file, self._file(b"pw", 0o604))

    def test_missing_file(self) -> None:
        self.assertRaises(ValueError, socks5.read_password_file, "/nonexistent/netguard/pw")

    def test_directory_refused(self) -> None:
        path = self.mktemp_dir()
        os.chmod(path, stat.S_IRWXU)
        self.assertRaises(ValueError, socks5.read_password_file, path)

    def test_empty_refused(self) -> None:
        self.assertRaises(ValueError, socks5.read_password_file, self._file(b"\n"))

    def test_not_utf8_refused(self) -> None:
        self.assertRaises(ValueError, socks5.read_password_file, self._file(b"\xff\xfe"))

    def test_too_large_refused(self) -> None:
        self.assertRaises(ValueError, socks5.read_password_file, self._file(b"p" * 5000))


class EndpointStringTests(unittest.TestCase):
    """
    The C{socks5:} endpoint string, through C{clientFromString} and the plugin.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def _parse(self, description: str) -> Any:
        return clientFromString(self.reactor, description)

    def _password_file(self, content: bytes = b"hunter2\n", mode: int = 0o600) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, mode)
        return path

    def test_plugin_is_discovered(self) -> None:
        parsers = [
            p
            for p in getPlugins(IStreamClientEndpointStringParserWithReactor)
            if p.prefix == "socks5"
        ]
        self.assertEqual(len(parsers), 1)
        self.assertTrue(verifyObject(IPlugin, parsers[0]))
        self.assertTrue(verifyObject(IStreamClientEndpointStringParserWithReactor, parsers[0]))

    def test_basic(self) -> None:
        endpoint = self._parse(
            "socks5:host=example.com:port=443:proxy_host=127.0.0.1:proxy_port=1080"
        )
        self.assertIsInstance(endpoint, SOCKS5ClientEndpoint)
        self.assertEqual(endpoint.target, SOCKSAddress(AddressType.DOMAIN, "example.com", 443))
        self.assertIsInstance(endpoint.proxy_endpoint, HostnameEndpoint)
        self.assertEqual(repr(endpoint.proxy_endpoint), "<HostnameEndpoint 127.0.0.1:1080>")
        self.assertIsNone(endpoint.username)
        self.assertEqual(endpoint.timeout, 10.0)

    def test_service_names(self) -> None:
        endpoint = self._parse("socks5:host=example.com:port=https:proxy_host=p:proxy_port=socks")
        self.assertEqual(endpoint.target.port, 443)
        self.assertEqual(repr(endpoint.proxy_endpoint), "<HostnameEndpoint p:1080>")

    def test_default_proxy_port_is_socks_service(self) -> None:
        endpoint = self._parse("socks5:host=example.com:port=80:proxy_host=p")
        self.assertEqual(repr(endpoint.proxy_endpoint), "<HostnameEndpoint p:1080>")

    def test_unknown_service(self) -> None:
        self.assertRaises(
            ValueError, self._parse, "socks5:host=e.com:port=no-such-svc-xyz:proxy_host=p"
        )

    def test_port_out_of_range(self) -> None:
        self.assertRaises(ValueError, self._parse, "socks5:host=e.com:port=70000:proxy_host=p")

    def test_ipv6_target_escaped(self) -> None:
        endpoint = self._parse(r"socks5:host=\:\:1:port=80:proxy_host=127.0.0.1")
        self.assertEqual(endpoint.target, SOCKSAddress(AddressType.IPV6, "::1", 80))

    def test_nested_unix_proxy(self) -> None:
        endpoint = self._parse(r"socks5:host=db:port=5432:proxy=unix\:path=/run/dante.sock")
        self.assertEqual(endpoint.proxy_endpoint._path, "/run/dante.sock")

    def test_nested_tcp_proxy_with_ipv6(self) -> None:
        endpoint = self._parse(
            r"socks5:host=db:port=5432:proxy=tcp\:host=\\\:\\\:1\:port=1080:timeout=2.5"
        )
        self.assertIsInstance(endpoint.proxy_endpoint, TCP4ClientEndpoint)
        self.assertEqual(endpoint.proxy_endpoint._host, "::1")
        self.assertEqual(endpoint.proxy_endpoint._port, 1080)
        self.assertEqual(endpoint.timeout, 2.5)

    def test_chained_socks5_proxies(self) -> None:
        endpoint = self._parse(
            r"socks5:host=db:port=1:proxy=socks5\:host=p2\:port=1080\:proxy_host=p1"
        )
        self.assertIsInstance(endpoint.proxy_endpoint, SOCKS5ClientEndpoint)

    def test_credentials_from_file(self) -> None:
        path = self._password_file()
        endpoint = self._parse(
            f"socks5:host=e.com:port=1:proxy_host=p:user=alice:password_file={path}"
        )
        self.assertEqual(endpoint.username, "alice")
        self.assertEqual(endpoint._new_negotiation().greeting(), USERPASS_GREETING)
        self.assertNotIn("hunter2", repr(endpoint))

    def test_offer_no_auth(self) -> None:
        path = self._password_file()
        endpoint = self._parse(
            f"socks5:host=e.com:port=1:proxy_host=p:user=a:password_file={path}:offer_no_auth=yes"
        )
        self.assertEqual(endpoint._new_negotiation().greeting(), b"\x05\x02\x00\x02")

    def test_offer_no_auth_bad_value(self) -> None:
        self.assertRaises(
            ValueError, self._parse, "socks5:host=e.com:port=1:proxy_host=p:offer_no_auth=maybe"
        )

    def test_password_in_string_refused(self) -> None:
        exc = self.assertRaises(
            ValueError,
            self._parse,
            "socks5:host=e.com:port=1:proxy_host=p:user=a:password=hunter2",
        )
        self.assertIn("password_file", str(exc))
        self.assertNotIn("hunter2", str(exc))

    def test_world_readable_password_file_refused(self) -> None:
        path = self._password_file(mode=0o644)
        self.assertRaises(
            ValueError,
            self._parse,
            f"socks5:host=e.com:port=1:proxy_host=p:user=a:password_file={path}",
        )

    def test_user_without_password_file(self) -> None:
        self.assertRaises(ValueError, self._parse, "socks5:host=e.com:port=1:proxy_host=p:user=a")

    def test_password_file_without_user(self) -> None:
        path = self._password_file()
        self.assertRaises(
            ValueError, self._parse, f"socks5:host=e.com:port=1:proxy_host=p:password_file={path}"
        )

    def test_both_proxy_forms_refused(self) -> None:
        self.assertRaises(
            ValueError,
            self._parse,
            r"socks5:host=e.com:port=1:proxy_host=p:proxy=tcp\:host=p\:port=1",
        )

    def test_no_proxy_refused(self) -> None:
        self.assertRaises(ValueError, self._parse, "socks5:host=e.com:port=1")

    def test_proxy_port_with_proxy_refused(self) -> None:
        self.assertRaises(
            ValueError,
            self._parse,
            r"socks5:host=e.com:port=1:proxy=tcp\:host=p\:port=1:proxy_port=2",
        )

    def test_missing_host(self) -> None:
        self.assertRaises(ValueError, self._parse, "socks5:port=1:proxy_host=p")

    def test_missing_port(self) -> None:
        self.assertRaises(ValueError, self._parse, "socks5:host=e.com:proxy_host=p")

    def test_unknown_key(self) -> None:
        exc = self.assertRaises(
            ValueError, self._parse, "socks5:host=e.com:port=1:proxy_host=p:colour=red"
        )
        self.assertIn("colour", str(exc))

    def test_positional_argument_refused(self) -> None:
        self.assertRaises(ValueError, self._parse, "socks5:e.com:port=1:proxy_host=p")

    def test_bad_timeout(self) -> None:
        self.assertRaises(
            ValueError, self._parse, "socks5:host=e.com:port=1:proxy_host=p:timeout=soon"
        )

    def test_negative_timeout(self) -> None:
        self.assertRaises(
            ValueError, self._parse, "socks5:host=e.com:port=1:proxy_host=p:timeout=-1"
        )

    def test_docstring_examples_parse(self) -> None:
        """
        Every example in the module docstring is a valid description.
        """
        self._check_examples(socks5.__doc__ or "")

    def test_docs_examples_parse(self) -> None:
        """
        Every example in C{docs/endpoints.md} is a valid description.
        """
        path = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "endpoints.md")
        with open(path, encoding="utf-8") as f:
            self._check_examples(f.read())

    def _check_examples(self, doc: str) -> None:
        examples = [
            line.strip()
            for line in doc.splitlines()
            if line.strip().startswith("socks5:host=") and "TARGET" not in line
        ]
        self.assertGreaterEqual(len(examples), 4)
        path = self._password_file()
        for example in examples:
            example = example.replace("/etc/ng/socks", path)
            self.assertIsInstance(self._parse(example), SOCKS5ClientEndpoint, example)

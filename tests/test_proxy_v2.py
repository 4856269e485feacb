"""
Tests for L{netguard.outbound.proxy_v2} (the PROXY v2 header a service sends its backend),
for how a backend leg sends it (L{netguard.outbound.backends}) and for both gateway paths that
open backends (C{OPEN} on a connection, C{OPEN} on a stream), on Twisted fakes; and for the
service key C{send_proxy}.
"""

from __future__ import annotations

import os
import struct
import tempfile
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.trial import unittest

from netguard.config import load_config
from netguard.config.model import ConfigError, ServiceConfig
from netguard.config.text import describe, describe_defaults
from netguard.outbound.backends import BackendEndpoints, open_backend
from netguard.outbound.proxy_v2 import (
    LOCAL,
    MAX_HEADER,
    MAX_UNIQUE_ID,
    MAX_USER_BYTES,
    PP2_TYPE_NETGUARD_USER,
    PP2_TYPE_NOOP,
    PROXY,
    SIGNATURE,
    TCP4,
    UNSPEC,
    HeaderTooLarge,
    ProxyOrigin,
    address_block,
    crc32c,
    encode,
    header_for,
)
from netguard.relay import A

CLIENT = IPv4Address("TCP", "192.0.2.7", 51234)
REACHED = IPv4Address("TCP", "198.51.100.1", 7700)


def bitwise_crc32c(data: bytes) -> int:
    """
    CRC32c computed bit by bit (no table), as RFC 3720 appendix B.4 describes it: an
    implementation independent of the module's table-driven one.
    """
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def parse(header: bytes) -> dict[str, Any]:
    """
    Read a version 2 header by the specification's layout, written here apart from the
    encoder: the command, the family, the address block, the TLVs (type to value, in order)
    and whether its CRC32c checks (bitwise, with the field zeroed).
    """
    assert header[:12] == SIGNATURE, header[:12]
    command, family, length = struct.unpack("!BBH", header[12:16])
    assert len(header) == 16 + length, (len(header), length)
    address_size = {0x11: 12, 0x21: 36, 0x00: 0}[family]
    addresses = header[16 : 16 + address_size]
    tlvs: list[tuple[int, bytes]] = []
    offset = 16 + address_size
    crc_at = None
    while offset < len(header):
        kind, size = struct.unpack("!BH", header[offset : offset + 3])
        if kind == 0x03:
            crc_at = offset + 3
        tlvs.append((kind, header[offset + 3 : offset + 3 + size]))
        offset += 3 + size
    assert offset == len(header)
    crc_ok = None
    if crc_at is not None:
        zeroed = header[:crc_at] + b"\0\0\0\0" + header[crc_at + 4 :]
        crc_ok = struct.unpack("!I", header[crc_at : crc_at + 4])[0] == bitwise_crc32c(zeroed)
    return {
        "command": command,
        "family": family,
        "addresses": addresses,
        "tlvs": tlvs,
        "crc_ok": crc_ok,
    }


def origin(**changes: Any) -> ProxyOrigin:
    values: dict[str, Any] = {
        "source": CLIENT,
        "destination": REACHED,
        "user": "alice",
        "unique_id": "ab12-7",
    }
    values.update(changes)
    return ProxyOrigin(**values)


class CRC32CTests(unittest.TestCase):
    """
    The checksum against published vectors: the check value of the CRC catalogue and
    RFC 3720 appendix B.4.
    """

    def test_catalogue_check_value(self) -> None:
        """CRC32c of C{"123456789"} is 0xE3069283."""
        self.assertEqual(crc32c(b"123456789"), 0xE3069283)

    def test_rfc3720_vectors(self) -> None:
        """32 zero bytes, 32 0xFF bytes, 0..31 and 31..0 give RFC 3720's values."""
        self.assertEqual(crc32c(bytes(32)), 0x8A9136AA)
        self.assertEqual(crc32c(b"\xff" * 32), 0x62A8AB43)
        self.assertEqual(crc32c(bytes(range(32))), 0x46DD794E)
        self.assertEqual(crc32c(bytes(range(31, -1, -1))), 0x113FDB5C)

    def test_matches_a_bitwise_implementation(self) -> None:
        """On random inputs the table-driven CRC equals the bitwise one."""
        for size in (0, 1, 7, 64, 300):
            data = os.urandom(size)
            self.assertEqual(crc32c(data), bitwise_crc32c(data))


class LayoutTests(unittest.TestCase):
    """
    The header's exact bytes, by the specification's layout (section 2.2).
    """

    def test_ipv4_exact_bytes(self) -> None:
        """
        An IPv4 client: signature, 0x21 (version 2, PROXY), 0x11 (TCP over IPv4), the
        length, source and destination addresses then ports, then the unique id (0x05), the
        user (0xE0) and the CRC32c (0x03) TLVs, in that order.
        """
        header = header_for(origin())
        body = (
            bytes([192, 0, 2, 7, 198, 51, 100, 1])
            + struct.pack("!HH", 51234, 7700)
            + b"\x05\x00\x06ab12-7"
            + b"\xe0\x00\x05alice"
            + b"\x03\x00\x04"
        )
        prefix = SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body) + 4) + body
        self.assertEqual(header[: len(prefix)], prefix)
        self.assertEqual(len(header), len(prefix) + 4)
        self.assertTrue(parse(header)["crc_ok"])

    def test_ipv6(self) -> None:
        """An IPv6 client and address: family 0x21, 16-byte addresses, then the ports."""
        header = header_for(
            origin(
                source=IPv6Address("TCP", "2001:db8::7", 40000),
                destination=IPv6Address("TCP", "2001:db8::1", 7700),
            )
        )
        parsed = parse(header)
        self.assertEqual(parsed["family"], 0x21)
        self.assertEqual(
            parsed["addresses"],
            bytes.fromhex("20010db8000000000000000000000007")
            + bytes.fromhex("20010db8000000000000000000000001")
            + struct.pack("!HH", 40000, 7700),
        )
        self.assertTrue(parsed["crc_ok"])

    def test_ipv4_mapped_is_sent_as_ipv4(self) -> None:
        """
        A client of a dual-stack listener (both addresses IPv4-mapped IPv6) is sent as TCP
        over IPv4 with the plain IPv4 addresses.
        """
        family, block = address_block(
            IPv6Address("TCP", "::ffff:192.0.2.7", 51234),
            IPv6Address("TCP", "::ffff:198.51.100.1", 7700),
        )
        self.assertEqual(family, TCP4)
        self.assertEqual(block, address_block(CLIENT, REACHED)[1])

    def test_mixed_families_are_sent_as_ipv6(self) -> None:
        """
        An IPv4 end with an IPv6 one: TCP over IPv6, the IPv4 end as an IPv4-mapped address
        (as HAProxy sends it).
        """
        family, block = address_block(CLIENT, IPv6Address("TCP", "2001:db8::1", 7700))
        self.assertEqual(family, 0x21)
        self.assertEqual(block[:16], bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 7]))

    def test_scoped_ipv6_drops_the_scope(self) -> None:
        """A link-local address with a scope is sent as its 16 bytes (no scope on the wire)."""
        family, block = address_block(
            IPv6Address("TCP", "fe80::7%lo", 1), IPv6Address("TCP", "fe80::1%lo", 2)
        )
        self.assertEqual(family, 0x21)
        self.assertEqual(block[:16], bytes.fromhex("fe800000000000000000000000000007"))

    def test_unix_client_is_local_unspec_with_the_tlvs(self) -> None:
        """
        A client on a unix socket has no address to send: the command is LOCAL (the
        receiver keeps the connection's own endpoints; HAProxy 2.6 refuses PROXY with
        UNSPEC), the family UNSPEC with no address block, and the user and id TLVs are still
        sent, with the CRC32c.
        """
        header = header_for(
            origin(source=UNIXAddress(None), destination=UNIXAddress(b"/run/ng.sock"))
        )
        parsed = parse(header)
        self.assertEqual((parsed["command"], parsed["family"]), (LOCAL, UNSPEC))
        self.assertEqual(header[12:14], b"\x20\x00")
        self.assertEqual(parsed["addresses"], b"")
        self.assertEqual(parsed["tlvs"][:2], [(0x05, b"ab12-7"), (0xE0, b"alice")])
        self.assertTrue(parsed["crc_ok"])

    def test_tcp_client_is_the_proxy_command(self) -> None:
        """A client with a TCP address gets the PROXY command (0x21)."""
        self.assertEqual(parse(header_for(origin()))["command"], PROXY)

    def test_unknown_address_is_unspec(self) -> None:
        """No address at all, or a non-TCP one (UDP), is UNSPEC as well."""
        self.assertEqual(address_block(None, REACHED), (UNSPEC, b""))
        self.assertEqual(address_block(CLIENT, None), (UNSPEC, b""))
        udp = IPv4Address("UDP", "192.0.2.7", 53)
        self.assertEqual(address_block(udp, REACHED), (UNSPEC, b""))

    def test_local_command(self) -> None:
        """The encoder writes a LOCAL header as the specification shows it: 0x20 0x00."""
        header = encode(LOCAL, UNSPEC, b"", checksum=False)
        self.assertEqual(header, SIGNATURE + b"\x20\x00\x00\x00")

    def test_user_tlv_is_in_the_application_range(self) -> None:
        """netguard's user TLV type is in PP2_TYPE_MIN_CUSTOM..PP2_TYPE_MAX_CUSTOM."""
        self.assertTrue(0xE0 <= PP2_TYPE_NETGUARD_USER <= 0xEF)

    def test_user_name_is_sent_as_utf8_bytes_unescaped(self) -> None:
        """A user name with any characters is sent as its UTF-8 bytes, nothing escaped."""
        header = header_for(origin(user="é\r\n\x00"))
        self.assertIn((0xE0, "é\r\n\x00".encode()), parse(header)["tlvs"])

    def test_every_byte_is_covered_by_the_checksum(self) -> None:
        """Flipping any one byte of the header makes its CRC32c fail."""
        header = header_for(origin())
        for index in range(12, len(header)):
            changed = bytearray(header)
            changed[index] ^= 0x01
            try:
                self.assertFalse(parse(bytes(changed))["crc_ok"], index)
            except (AssertionError, KeyError, struct.error):
                pass  # the layout itself broke (length, family): not a header at all

    def test_twisted_parser_reads_the_addresses(self) -> None:
        """Twisted's own version 2 parser reads the client and reached addresses back."""
        info = V2Parser.parse(header_for(origin()))
        self.assertEqual(info.source, IPv4Address("TCP", "192.0.2.7", 51234))
        self.assertEqual(info.destination, IPv4Address("TCP", "198.51.100.1", 7700))


class BoundTests(unittest.TestCase):
    """
    Every bound at its limit and one past it: nothing over a bound is ever sent.
    """

    def test_user_at_the_bound(self) -> None:
        """A user name of exactly L{MAX_USER_BYTES} bytes is sent."""
        header = header_for(origin(user="u" * MAX_USER_BYTES))
        self.assertIn((0xE0, b"u" * MAX_USER_BYTES), parse(header)["tlvs"])

    def test_user_one_past_the_bound(self) -> None:
        """One byte more (counted in UTF-8 bytes, not characters) is refused."""
        with self.assertRaises(HeaderTooLarge) as caught:
            header_for(origin(user="é" * 128))  # 256 bytes
        self.assertEqual((caught.exception.what, caught.exception.size), ("user", 256))

    def test_unique_id_at_the_bound(self) -> None:
        """A unique id of 128 bytes, the specification's bound, is sent."""
        header = header_for(origin(unique_id="i" * MAX_UNIQUE_ID))
        self.assertIn((0x05, b"i" * 128), parse(header)["tlvs"])

    def test_unique_id_one_past_the_bound(self) -> None:
        """A unique id of 129 bytes is refused."""
        with self.assertRaises(HeaderTooLarge) as caught:
            header_for(origin(unique_id="i" * 129))
        self.assertEqual(caught.exception.what, "unique_id")

    def test_largest_header_netguard_sends_fits(self) -> None:
        """IPv6 addresses with the longest user and id stay within L{MAX_HEADER}."""
        header = header_for(
            origin(
                source=IPv6Address("TCP", "2001:db8::7", 1),
                destination=IPv6Address("TCP", "2001:db8::1", 2),
                user="u" * MAX_USER_BYTES,
                unique_id="i" * MAX_UNIQUE_ID,
            )
        )
        self.assertLessEqual(len(header), MAX_HEADER)
        self.assertTrue(parse(header)["crc_ok"])

    def test_header_at_the_bound(self) -> None:
        """A header of exactly L{MAX_HEADER} (536) bytes is written."""
        # 16 fixed + 3 + n (NOOP) + 7 (CRC) = 536
        header = encode(PROXY, UNSPEC, b"", ((PP2_TYPE_NOOP, bytes(MAX_HEADER - 26)),))
        self.assertEqual(len(header), MAX_HEADER)
        self.assertTrue(parse(header)["crc_ok"])

    def test_header_one_past_the_bound(self) -> None:
        """One byte more is refused, saying the size and the bound."""
        with self.assertRaises(HeaderTooLarge) as caught:
            encode(PROXY, UNSPEC, b"", ((PP2_TYPE_NOOP, bytes(MAX_HEADER - 25)),))
        self.assertEqual((caught.exception.size, caught.exception.limit), (537, 536))

    def test_tlv_value_over_its_length_field(self) -> None:
        """A TLV value longer than 65535 bytes is refused before anything is built."""
        with self.assertRaises(HeaderTooLarge) as caught:
            encode(PROXY, UNSPEC, b"", ((PP2_TYPE_NOOP, bytes(65536)),))
        self.assertEqual(caught.exception.what, "tlv")


def proxied(backend: str = "tcp:host=10.0.0.5:port=6379", **kwargs: Any) -> ServiceConfig:
    kwargs.setdefault("send_proxy", "v2")
    return ServiceConfig("svc", backend, ("*",), **kwargs)


class LegTests(unittest.TestCase):
    """
    A backend leg sends the header before any relayed byte, outside the relay's counts.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def connect(self, svc: ServiceConfig, who: ProxyOrigin | None) -> tuple[Any, StringTransport]:
        opening = open_backend(
            self.reactor,
            svc,
            endpoints=BackendEndpoints(self.reactor),
            origin=who,
        )
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        transport = StringTransport()
        factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(transport)
        return self.successResultOf(opening), transport

    def test_header_first_then_relayed_bytes_not_counted(self) -> None:
        """
        The backend gets the header as soon as it is connected, then the client's bytes;
        the relay counts only the client's bytes.
        """
        leg, backend = self.connect(proxied(), origin())
        self.assertEqual(backend.value(), header_for(origin()))
        leg.attach(StringTransport())
        leg.write(b"PING\r\n")
        self.assertEqual(backend.value(), header_for(origin()) + b"PING\r\n")
        self.assertEqual(leg.splice.counts[A], 6)

    def test_off_sends_nothing_but_the_client_bytes(self) -> None:
        """With C{send_proxy = "off"} the backend gets exactly the client's bytes."""
        leg, backend = self.connect(proxied(send_proxy="off"), origin())
        leg.attach(StringTransport())
        leg.write(b"PING\r\n")
        self.assertEqual(backend.value(), b"PING\r\n")

    def test_header_under_tls_goes_before_the_client_hello(self) -> None:
        """
        For a TLS backend the header is sent on the connection itself, before the TLS
        handshake (as HAProxy's C{ssl send-proxy-v2} does): the first bytes are the header,
        the next a TLS record.
        """
        self.reactor = MemoryReactorClock()
        open_backend(self.reactor, proxied("tls:host=127.0.0.1:port=6380"), origin=origin())
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        transport = StringTransport()
        factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(transport)
        header = header_for(origin())
        self.assertEqual(transport.value()[: len(header)], header)
        self.assertEqual(transport.value()[len(header) : len(header) + 2], b"\x16\x03")

    def test_through_socks5_the_header_follows_the_proxy_reply(self) -> None:
        """
        Through a SOCKS5 proxy the proxy gets its greeting and C{CONNECT} untouched; the
        header is the first byte after the proxy's success reply, so it reaches the backend.
        """
        svc = proxied(socks5="tcp:host=127.0.0.1:port=1080")
        opening = open_backend(self.reactor, svc, origin=origin())
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        proxy = StringTransport()
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        protocol.makeConnection(proxy)
        self.assertEqual(proxy.value(), b"\x05\x01\x00")
        proxy.clear()
        protocol.dataReceived(b"\x05\x00")
        self.assertEqual(proxy.value()[:4], b"\x05\x01\x00\x01")  # CONNECT, no header yet
        proxy.clear()
        protocol.dataReceived(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38")
        self.successResultOf(opening)
        self.assertEqual(proxy.value(), header_for(origin()))

    def test_header_over_its_bound_fails_the_opening(self) -> None:
        """
        A header that cannot be sent (a user name over the bound) fails the opening with
        L{HeaderTooLarge} and makes no connection.
        """
        opening = open_backend(
            self.reactor, proxied(), origin=origin(user="u" * (MAX_USER_BYTES + 1))
        )
        self.failureResultOf(opening, HeaderTooLarge)
        self.assertEqual(self.reactor.tcpClients, [])


def gateway_config(send_proxy: str = "v2") -> Any:
    config = load_config(None, {"state_dir": "/nonexistent-netguard-test"})
    services = dict(config.services)
    services["redis"] = ServiceConfig(
        "redis", "tcp:host=10.0.0.5:port=6379", ("*",), send_proxy=send_proxy
    )
    return attrs.evolve(config, services=services)


class GatewayPathTests(unittest.TestCase):
    """
    Both ways a session opens a backend send the header first: C{OPEN} on the connection,
    and C{OPEN} on a stream of a multiplexed session.
    """

    def setUp(self) -> None:
        from tests.test_gateway_protocol import Session

        self.session = Session(self)
        self.reactor = MemoryReactorClock()
        factory = self.session.factory
        factory.config = gateway_config()
        factory.reactor = self.reactor
        factory._backend_endpoints = BackendEndpoints(self.reactor)
        self.session.login()

    def connect_backend(self) -> StringTransport:
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        transport = StringTransport()
        factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(transport)
        return transport

    def test_open_sends_the_header_then_the_client_bytes(self) -> None:
        """
        C{OPEN redis} with bytes behind it: the backend gets the header (the client's and
        the reached address as the session's transport gives them, the user, the
        connection's id), then those bytes; the session counts the client's bytes only.
        """
        proto = self.session.proto
        proto.dataReceived(b"OPEN redis\r\nPING\r\n")
        backend = self.connect_backend()
        self.assertEqual(self.session.take(), [b"OK OPEN redis"])
        expected = header_for(
            ProxyOrigin(
                self.session.transport.getPeer(),
                self.session.transport.getHost(),
                "alice",
                proto.conn_id,
            )
        )
        self.assertEqual(backend.value(), expected + b"PING\r\n")
        parsed = parse(expected)
        self.assertIn((0x05, proto.conn_id.encode()), parsed["tlvs"])
        self.assertIn((0xE0, b"alice"), parsed["tlvs"])
        self.assertEqual((proto.bytes_up, proto._leg.splice.counts[A]), (6, 6))

    def test_header_over_its_bound_refuses_the_open(self) -> None:
        """
        A header that cannot be sent (here a user name over the bound, which the users file
        never allows) refuses the opening as an unreachable backend would:
        C{ERR BACKEND_UNAVAILABLE}, logged C{session.backend_failed} with the bound as its
        cause, and no connection made.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        long_name = "u" * (MAX_USER_BYTES + 1)
        self.session.proto.user = long_name
        # The users file never holds such a name: the store is told to know it, so that the
        # opening is not refused for a user gone from the file before the header is built.
        users = self.session.factory.users
        record = users.lookup("alice")
        self.patch(users, "lookup", lambda name: record if name == long_name else None)
        [reply] = self.session.send(b"OPEN redis")
        self.assertTrue(reply.startswith(b"ERR BACKEND_UNAVAILABLE "), reply)
        self.assertEqual(self.reactor.tcpClients, [])
        [failed] = [e for e in events if e.get("event") == "session.backend_failed"]
        self.assertEqual(failed["error_type"], "HeaderTooLarge")
        self.assertIn("over its bound of 255", failed["cause"])

    def test_open_without_send_proxy_sends_no_header(self) -> None:
        """With the key off, the backend's first bytes are the client's."""
        self.session.factory.config = gateway_config("off")
        self.session.proto.dataReceived(b"OPEN redis\r\nPING\r\n")
        backend = self.connect_backend()
        self.assertEqual(backend.value(), b"PING\r\n")

    def test_stream_sends_the_header_with_its_stream_id(self) -> None:
        """
        A stream's C{OPEN redis}: its backend gets the header, whose unique id is the
        connection's id and the stream's (C{<conn_id>/<stream_id>}), then the stream's bytes.
        """
        from tests.test_gateway_streams import Mux

        mux = Mux(self)
        mux.factory.config = attrs.evolve(
            mux.factory.config,
            services={**mux.factory.config.services, **gateway_config().services},
        )
        mux.factory.reactor = self.reactor
        mux.factory._backend_endpoints = BackendEndpoints(self.reactor)
        mux.upgrade()
        recorder = mux.open(b"OPEN redis\r\nPING\r\n")
        backend = self.connect_backend()
        mux.pump()
        self.assertEqual(recorder.received, b"OK OPEN redis\r\n")
        assert recorder.transport is not None
        stream_id = recorder.transport.stream_id
        unique_id = f"{mux.s.proto.conn_id}/{stream_id}"
        expected = header_for(
            ProxyOrigin(mux.s.transport.getPeer(), mux.s.transport.getHost(), "alice", unique_id)
        )
        self.assertEqual(backend.value(), expected + b"PING\r\n")


class SendProxyConfigTests(unittest.TestCase):
    """
    The service key C{send_proxy}: C{"off"} by default, C{"v2"}, anything else refused
    naming the key.
    """

    def load(self, body: str) -> Any:
        directory = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(directory, True))
        path = os.path.join(directory, "netguard.toml")
        with open(path, "w") as handle:
            handle.write(body)
        return load_config(path, {"state_dir": os.path.join(directory, "st")})

    def test_default_is_off(self) -> None:
        """A service without the key sends no header."""
        config = self.load('[services.redis]\nbackend = "tcp:host=127.0.0.1:port=6379"\n')
        self.assertEqual(config.services["redis"].send_proxy, "off")

    def test_v2(self) -> None:
        """C{send_proxy = "v2"} is read, and shown by check-config with its origin."""
        config = self.load(
            '[services.redis]\nbackend = "tcp:host=127.0.0.1:port=6379"\nsend_proxy = "v2"\n'
        )
        self.assertEqual(config.services["redis"].send_proxy, "v2")
        self.assertIn('services.redis.send_proxy = "v2"', describe(config))

    def test_other_values_are_refused(self) -> None:
        """C{"v1"} (it cannot carry the user), C{true} and C{"V2"} are refused, naming it."""
        for value in ('"v1"', "true", '"V2"'):
            with self.assertRaises(ConfigError) as caught:
                self.load(
                    '[services.redis]\nbackend = "tcp:host=127.0.0.1:port=6379"\n'
                    f"send_proxy = {value}\n"
                )
            self.assertIn("services.redis.send_proxy", str(caught.exception))

    def test_echo_backend_is_refused(self) -> None:
        """The built-in echo has no connection to send a header on: refused at load."""
        with self.assertRaises(ConfigError) as caught:
            self.load('[services.e]\nbackend = "builtin:echo"\nsend_proxy = "v2"\n')
        self.assertIn("services.e.send_proxy", str(caught.exception))

    def test_documented_in_defaults(self) -> None:
        """C{check-config --defaults} lists the key with its default."""
        self.assertIn("services.<name>.send_proxy", describe_defaults())

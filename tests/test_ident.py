"""
Tests for L{netguard.peer.ident}: the strict RFC 1413 reply parser (named cases and
property tests) and the bounded client over L{MemoryReactorClock} and L{StringTransport}, plus
one query over real loopback sockets (quiet factories).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.peer.ident import (
    MAX_USER_ID,
    STANDARD_ERRORS,
    IdentProtocolError,
    IdentReply,
    IdentResult,
    format_ident_query,
    ident_query,
    parse_ident_reply,
)


def parse(line: bytes, server_port: int = 6193, client_port: int = 23) -> IdentReply:
    return parse_ident_reply(line, server_port, client_port)


class ParseValidTests(unittest.TestCase):
    def test_userid(self) -> None:
        self.assertEqual(
            parse(b"6193, 23 : USERID : UNIX : stjohns"),
            IdentReply(
                kind="USERID",
                os="UNIX",
                charset="US-ASCII",
                user="stjohns",
                user_octets=b"stjohns",
            ),
        )

    def test_oidentd_compact_form(self) -> None:
        reply = parse(b"6193,23:USERID:UNIX:root")
        self.assertEqual((reply.os, reply.user), ("UNIX", "root"))

    def test_error(self) -> None:
        self.assertEqual(
            parse(b"6193, 23 : ERROR : NO-USER"), IdentReply(kind="ERROR", error="NO-USER")
        )

    def test_every_standard_error(self) -> None:
        for error in sorted(STANDARD_ERRORS):
            self.assertEqual(parse(b"6193,23:ERROR:" + error.encode()).error, error)

    def test_extension_error(self) -> None:
        self.assertEqual(parse(b"6193,23:ERROR:X-LOCAL-POLICY").error, "X-LOCAL-POLICY")

    def test_spaces_and_tabs_around_tokens(self) -> None:
        reply = parse(b" \t6193 \t,\t 23 \t:\t USERID \t:\t UNIX \t, \tUTF-8\t : alice")
        self.assertEqual((reply.os, reply.charset, reply.user), ("UNIX", "UTF-8", "alice"))

    def test_trailing_whitespace_after_error(self) -> None:
        self.assertEqual(parse(b"6193,23:ERROR:HIDDEN-USER  \t").error, "HIDDEN-USER")

    def test_final_cr_tolerated(self) -> None:
        self.assertEqual(parse(b"6193,23:USERID:UNIX:bob\r").user, "bob")

    def test_user_id_keeps_colons_and_inner_spaces(self) -> None:
        self.assertEqual(parse(b"6193,23:USERID:OTHER:a: b :c ").user, "a: b :c ")

    def test_charset_utf8_decoded(self) -> None:
        reply = parse("6193,23:USERID:OTHER,UTF-8:été".encode())
        self.assertEqual((reply.user, reply.user_octets), ("été", "été".encode()))

    def test_unknown_charset_kept_as_octets(self) -> None:
        reply = parse(b"6193,23:USERID:OTHER,EBCDIC-X:\x81\x82")
        self.assertEqual(
            (reply.charset, reply.user, reply.user_octets), ("EBCDIC-X", None, b"\x81\x82")
        )

    def test_undecodable_ascii_kept_as_octets(self) -> None:
        reply = parse(b"6193,23:USERID:UNIX:r\xffot")
        self.assertEqual((reply.user, reply.user_octets), (None, b"r\xffot"))

    def test_user_id_of_512_octets(self) -> None:
        reply = parse(b"6193,23:USERID:UNIX:" + b"u" * MAX_USER_ID)
        self.assertEqual(len(reply.user_octets or b""), MAX_USER_ID)

    def test_token_of_64(self) -> None:
        self.assertEqual(parse(b"6193,23:USERID:" + b"O" * 64 + b":x").os, "O" * 64)


class ParseInvalidTests(unittest.TestCase):
    def assertRejected(self, line: bytes, problem: str, **kw: Any) -> IdentProtocolError:
        error = self.assertRaises(IdentProtocolError, parse, line, **kw)
        self.assertEqual(error.problem, problem)
        return error

    def test_port_mismatch(self) -> None:
        self.assertRejected(b"6194,23:USERID:UNIX:root", "reply is for other ports")

    def test_ports_swapped(self) -> None:
        self.assertRejected(b"23,6193:USERID:UNIX:root", "reply is for other ports")

    def test_port_too_many_digits(self) -> None:
        self.assertRejected(b"006193,23:USERID:UNIX:root", "bad port pair")

    def test_port_not_a_number(self) -> None:
        self.assertRejected(b"61a3,23:USERID:UNIX:root", "bad port pair")

    def test_negative_port(self) -> None:
        self.assertRejected(b"-6193,23:USERID:UNIX:root", "bad port pair")

    def test_over_long_user_id(self) -> None:
        self.assertRejected(
            b"6193,23:USERID:UNIX:" + b"u" * (MAX_USER_ID + 1), "user-id longer than 512 octets"
        )

    def test_empty_user_id(self) -> None:
        self.assertRejected(b"6193,23:USERID:UNIX:  ", "empty user-id")

    def test_nul_in_user_id(self) -> None:
        self.assertRejected(b"6193,23:USERID:UNIX:ro\x00ot", "NUL byte in the reply")

    def test_binary_junk(self) -> None:
        self.assertRejected(bytes(range(14, 256)) * 3, "bad port pair")

    def test_nul_junk(self) -> None:
        self.assertRejected(b"\x00" * 50, "NUL byte in the reply")

    def test_inner_cr(self) -> None:
        self.assertRejected(b"6193,23:USERID:UNIX:ro\rot", "line break inside the reply")

    def test_inner_lf(self) -> None:
        self.assertRejected(b"6193,23:USERID:UNIX:ro\not", "line break inside the reply")

    def test_empty_line(self) -> None:
        self.assertRejected(b"", "missing fields")

    def test_only_ports(self) -> None:
        self.assertRejected(b"6193, 23", "missing fields")

    def test_userid_without_opsys(self) -> None:
        self.assertRejected(b"6193, 23 : USERID", "missing fields")

    def test_userid_without_user(self) -> None:
        self.assertRejected(b"6193, 23 : USERID : UNIX", "missing user-id")

    def test_error_without_type(self) -> None:
        self.assertRejected(b"6193, 23 : ERROR", "missing fields")

    def test_error_empty_type(self) -> None:
        self.assertRejected(b"6193, 23 : ERROR : ", "bad error type")

    def test_unknown_error_type(self) -> None:
        self.assertRejected(b"6193,23:ERROR:BOGUS", "unknown error type")

    def test_bare_x_error_type(self) -> None:
        self.assertRejected(b"6193,23:ERROR:X", "unknown error type")

    def test_error_with_extra_field(self) -> None:
        self.assertRejected(b"6193,23:ERROR:NO-USER:extra", "extra field after the error type")

    def test_lower_case_keyword(self) -> None:
        self.assertRejected(b"6193,23:userid:UNIX:root", "unknown reply type")

    def test_unknown_keyword(self) -> None:
        self.assertRejected(b"6193,23:HELLO:UNIX:root", "unknown reply type")

    def test_space_inside_opsys_token(self) -> None:
        self.assertRejected(b"6193,23:USERID:UN IX:root", "bad operating system field")

    def test_opsys_token_too_long(self) -> None:
        self.assertRejected(
            b"6193,23:USERID:" + b"O" * 65 + b":root", "bad operating system field"
        )

    def test_empty_charset(self) -> None:
        self.assertRejected(b"6193,23:USERID:UNIX,:root", "bad operating system field")

    def test_two_charsets(self) -> None:
        self.assertRejected(b"6193,23:USERID:UNIX,A,B:root", "bad operating system field")

    def test_non_ascii_opsys(self) -> None:
        self.assertRejected(b"6193,23:USERID:\xc3\xa9:root", "bad operating system field")

    def test_excerpt_is_escaped_and_short(self) -> None:
        error = self.assertRejected(b"\x1b[2J\r\nFAKE" + b"A" * 500, "line break inside the reply")
        self.assertTrue(error.excerpt.startswith("\\x1b[2J\\r\\nFAKE"))
        self.assertTrue(all(" " <= c <= "~" for c in str(error)))
        self.assertLess(len(error.excerpt), 120)


_TOKEN_CHARS = [chr(c) for c in range(0x21, 0x7F) if chr(c) not in ":,"]
_tokens = st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=64)
_ws = st.text(alphabet=" \t", max_size=3)
_ports = st.integers(min_value=1, max_value=65535)
_user_octets = st.binary(min_size=1, max_size=MAX_USER_ID).filter(
    lambda b: not ({0, 10, 13} & set(b)) and b[:1] not in (b" ", b"\t")
)


class ParsePropertyTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=700), _ports, _ports)
    def test_arbitrary_bytes_only_raise_protocol_error(
        self, line: bytes, server_port: int, client_port: int
    ) -> None:
        try:
            reply = parse_ident_reply(line, server_port, client_port)
        except IdentProtocolError as e:
            self.assertTrue(all(" " <= c <= "~" for c in str(e)))
        else:
            self.assertIn(reply.kind, ("USERID", "ERROR"))

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [
                    b"6193",
                    b"23",
                    b",",
                    b":",
                    b" ",
                    b"USERID",
                    b"ERROR",
                    b"UNIX",
                    b"NO-USER",
                    b"\x00",
                    b"\xff",
                    b"\r",
                    b"X",
                ]
            ),
            max_size=20,
        ),
    )
    def test_near_miss_tokens_only_raise_protocol_error(self, parts: list[bytes]) -> None:
        try:
            parse(b"".join(parts))
        except IdentProtocolError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(
        _ports,
        _ports,
        _tokens,
        st.none() | _tokens,
        _user_octets,
        st.lists(_ws, min_size=8, max_size=8),
    )
    def test_valid_userid_round_trips(
        self,
        server_port: int,
        client_port: int,
        opsys: str,
        charset: str | None,
        user: bytes,
        ws: list[str],
    ) -> None:
        w = [x.encode() for x in ws]
        field = w[4] + opsys.encode() + w[5]
        if charset is not None:
            field += b"," + w[6] + charset.encode() + w[7]
        line = (
            w[0]
            + b"%d" % server_port
            + w[1]
            + b","
            + w[2]
            + b"%d" % client_port
            + w[3]
            + b":USERID:"
            + field
            + b":"
            + user
        )
        reply = parse_ident_reply(line, server_port, client_port)
        self.assertEqual(reply.kind, "USERID")
        self.assertEqual(reply.os, opsys)
        self.assertEqual(reply.charset, charset or "US-ASCII")
        self.assertEqual(reply.user_octets, user)
        if charset is None:
            expected = user.decode("ascii") if user.isascii() else None
            self.assertEqual(reply.user, expected)

    @settings(max_examples=200, deadline=None)
    @given(
        _ports,
        _ports,
        st.sampled_from(sorted(STANDARD_ERRORS)) | _tokens.map(lambda t: "X" + t[:63]),
        _ws,
        _ws,
    )
    def test_valid_error_round_trips(
        self, server_port: int, client_port: int, error: str, w1: str, w2: str
    ) -> None:
        line = b"%d,%d:ERROR:%s%s%s" % (
            server_port,
            client_port,
            w1.encode(),
            error.encode(),
            w2.encode(),
        )
        self.assertEqual(
            parse_ident_reply(line, server_port, client_port),
            IdentReply(kind="ERROR", error=error),
        )


class ClientTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def start(
        self, client_host: str = "192.0.2.5", local_host: str = "192.0.2.1", **kw: Any
    ) -> Deferred[IdentResult]:
        return ident_query(self.reactor, client_host, 6191, 23, local_host=local_host, **kw)

    def connect(self) -> tuple[Any, StringTransport]:
        factory = self.reactor.tcpClients[-1][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def result(self, d: Deferred[IdentResult]) -> IdentResult:
        result: IdentResult = self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        return result


class ClientTests(ClientTestCase):
    def test_connects_from_local_address_to_port_113(self) -> None:
        self.start()
        host, port, _factory, _timeout, bind = self.reactor.tcpClients[0]
        self.assertEqual((host, port, bind), ("192.0.2.5", 113, ("192.0.2.1", 0)))

    def test_ipv6(self) -> None:
        self.start("2001:db8::5", "2001:db8::1", ident_port=1113)
        host, port, _factory, _timeout, bind = self.reactor.tcpClients[0]
        self.assertEqual((host, port, bind), ("2001:db8::5", 1113, ("2001:db8::1", 0)))

    def test_ipv4_mapped_addresses_use_ipv4(self) -> None:
        self.start("::ffff:192.0.2.5", "::ffff:192.0.2.1")
        host, _port, _factory, _timeout, bind = self.reactor.tcpClients[0]
        self.assertEqual((host, bind), ("192.0.2.5", ("192.0.2.1", 0)))

    def test_sends_query(self) -> None:
        self.start()
        _protocol, transport = self.connect()
        self.assertEqual(transport.value(), b"6191 , 23\r\n")
        self.assertEqual(format_ident_query(6191, 23), b"6191 , 23\r\n")

    def test_userid_reply(self) -> None:
        d = self.start()
        protocol, transport = self.connect()
        protocol.dataReceived(b"6191 , 23 : USERID : UNIX : alice\r\n")
        result = self.result(d)
        self.assertEqual((result.ok, result.reason, result.received), (True, "userid", 35))
        self.assertEqual(result.reply, parse_ident_reply(b"6191,23:USERID:UNIX:alice", 6191, 23))
        self.assertTrue(transport.disconnecting)

    def test_error_reply(self) -> None:
        d = self.start()
        protocol, _transport = self.connect()
        protocol.dataReceived(b"6191,23:ERROR:HIDDEN-USER\r\n")
        result = self.result(d)
        self.assertEqual((result.ok, result.reason), (True, "error"))
        self.assertEqual(result.reply, IdentReply(kind="ERROR", error="HIDDEN-USER"))

    def test_bare_lf_terminator(self) -> None:
        d = self.start()
        protocol, _transport = self.connect()
        protocol.dataReceived(b"6191,23:ERROR:NO-USER\n")
        self.assertTrue(self.result(d).ok)

    def test_reply_split_across_reads(self) -> None:
        d = self.start()
        protocol, _transport = self.connect()
        for byte in b"6191 , 23 : USERID : UNIX : alice\r\n":
            self.assertNoResult(d)
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(self.result(d).reply.user, "alice")  # type: ignore[union-attr]

    def test_only_first_line_used(self) -> None:
        d = self.start()
        protocol, _transport = self.connect()
        protocol.dataReceived(b"6191,23:USERID:UNIX:alice\r\n6191,23:USERID:UNIX:root\r\n")
        protocol.dataReceived(b"junk" * 1000)
        self.assertEqual(self.result(d).reply.user, "alice")  # type: ignore[union-attr]

    def test_malformed_reply(self) -> None:
        d = self.start()
        protocol, transport = self.connect()
        protocol.dataReceived(b"1,2:USERID:UNIX:alice\r\n")
        result = self.result(d)
        self.assertEqual(
            result, IdentResult(False, None, "protocol-error: reply is for other ports", 23)
        )
        self.assertTrue(transport.disconnected)

    def test_binary_reply(self) -> None:
        d = self.start()
        protocol, _transport = self.connect()
        protocol.dataReceived(b"\x00\xff\xfe\x1b[31m\r\n")
        self.assertEqual(self.result(d).reason, "protocol-error: NUL byte in the reply")


class ClientBoundTests(ClientTestCase):
    def test_chargen_flood_capped(self) -> None:
        d = self.start(max_reply=1024)
        protocol, transport = self.connect()
        chunk = bytes(range(33, 127)) * 2
        sent = 0
        while not d.called and sent < 1_000_000:
            protocol.dataReceived(chunk)
            sent += len(chunk)
        result = self.result(d)
        self.assertEqual(result.reason, "protocol-error: reply too long")
        self.assertLessEqual(result.received, 1024 + len(chunk))
        self.assertLess(sent, 1024 + len(chunk))
        self.assertTrue(transport.disconnected)
        self.assertLessEqual(len(protocol._wrappedProtocol._buffer), 1024)

    def test_one_huge_read_capped(self) -> None:
        d = self.start(max_reply=1024)
        protocol, _transport = self.connect()
        protocol.dataReceived(b"x" * 65536)
        result = self.result(d)
        self.assertEqual(
            (result.reason, result.received), ("protocol-error: reply too long", 65536)
        )
        self.assertEqual(protocol._wrappedProtocol._buffer, b"")

    def test_over_long_line_with_terminator(self) -> None:
        d = self.start(max_reply=100)
        protocol, _transport = self.connect()
        protocol.dataReceived(b"6191,23:USERID:UNIX:" + b"u" * 100 + b"\r\n")
        self.assertEqual(self.result(d).reason, "protocol-error: reply too long")

    def test_line_exactly_at_bound(self) -> None:
        line = b"6191,23:USERID:UNIX:alice\r\n"
        d = self.start(max_reply=len(line))
        protocol, _transport = self.connect()
        protocol.dataReceived(line)
        self.assertTrue(self.result(d).ok)

    def test_line_one_over_bound(self) -> None:
        line = b"6191,23:USERID:UNIX:alice\r\n"
        d = self.start(max_reply=len(line) - 1)
        protocol, _transport = self.connect()
        protocol.dataReceived(line)
        self.assertEqual(self.result(d).reason, "protocol-error: reply too long")

    def test_silence_times_out(self) -> None:
        d = self.start(timeout=7.0)
        _protocol, transport = self.connect()
        self.reactor.advance(6.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.assertEqual(self.result(d), IdentResult(False, None, "timeout", 0))
        self.assertTrue(transport.disconnected)

    def test_slow_drip_times_out(self) -> None:
        d = self.start(timeout=5.0)
        protocol, _transport = self.connect()
        for _ in range(50):
            protocol.dataReceived(b"6")
            self.reactor.advance(0.5)
        result = self.result(d)
        self.assertEqual((result.reason, result.received), ("timeout", 10))

    def test_connect_never_completes(self) -> None:
        d = self.start(timeout=3.0)
        self.reactor.advance(3.0)
        self.assertEqual(self.result(d).reason, "timeout")
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)

    def test_connection_refused(self) -> None:
        d = self.start()
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        self.assertEqual(self.result(d), IdentResult(False, None, "connect-failed"))

    def test_closed_without_reply(self) -> None:
        d = self.start()
        protocol, _transport = self.connect()
        protocol.connectionLost(Failure(ConnectionRefusedError()))
        self.assertEqual(self.result(d).reason, "closed")

    def test_closed_inside_line(self) -> None:
        d = self.start()
        protocol, _transport = self.connect()
        protocol.dataReceived(b"6191,23:USERID:UNIX:ali")
        protocol.connectionLost(Failure(ConnectionRefusedError()))
        self.assertEqual(
            self.result(d).reason, "protocol-error: connection closed inside the reply line"
        )

    def test_caller_cancel(self) -> None:
        d = self.start()
        _protocol, transport = self.connect()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_caller_cancel_while_connecting(self) -> None:
        d = self.start()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)

    def test_bad_arguments(self) -> None:
        self.assertRaises(
            ValueError, ident_query, self.reactor, "192.0.2.5", 0, 23, local_host="192.0.2.1"
        )
        self.assertRaises(
            ValueError, ident_query, self.reactor, "192.0.2.5", 1, 65536, local_host="192.0.2.1"
        )
        self.assertRaises(ValueError, self.start, timeout=0)
        self.assertRaises(ValueError, self.start, max_reply=1)
        self.assertRaises(ValueError, self.start, local_host="::1")
        self.assertRaises(ValueError, self.start, client_host="host.example")


class _HostileIdentResponder(Protocol):
    """
    A hostile identd for the loopback test: answers every query with a fixed USERID line;
    C{lost} fires when the querier has gone.
    """

    def __init__(self, lost: Deferred[None]) -> None:
        self.lost = lost

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data.strip() + b" : USERID : UNIX : mallory\r\n")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)


def _factory_lines(events: list[dict[str, Any]]) -> list[str]:
    """
    @return: the rendered events that are Twisted's factory start/stop lines.
    """
    lines = [formatEvent(event) or "" for event in events]
    return [line for line in lines if "Starting factory" in line or "Stopping factory" in line]


class QuietFactoryTests(ClientTestCase):
    """
    An ident query (one per client connection when ident is on) does not log Twisted's
    "Starting factory" / "Stopping factory" lines.
    """

    def test_query_factory_is_quiet(self) -> None:
        """
        Started and stopped as a connector does, the query's factory logs nothing.
        """
        self.start()
        factory = self.reactor.tcpClients[0][2]
        with capturedLogs() as events:
            factory.doStart()
            factory.doStop()
        self.assertEqual([formatEvent(e) for e in events], [])

    def test_real_query_over_loopback_logs_no_factory_lines(self) -> Deferred[None]:
        """
        A whole query over real loopback sockets, against an identd played by a Twisted
        server in this process: the answer arrives, and no factory line was logged, from the
        connection attempt to its end (the responder sees the close only after our side has
        closed, and so after our factory was stopped).
        """
        from twisted.internet import reactor

        lost: Deferred[None] = Deferred()
        server = reactor.listenTCP(  # type: ignore[attr-defined]
            0, Factory.forProtocol(lambda: _HostileIdentResponder(lost)), interface="127.0.0.1"
        )
        server.factory.noisy = False  # the test's own server, not what is checked
        self.addCleanup(server.stopListening)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def check(result: IdentResult) -> Deferred[None]:
            self.assertTrue(result.ok, result)
            assert result.reply is not None
            self.assertEqual(result.reply.user, "mallory")
            return lost.addCallback(lambda _: self.assertEqual(_factory_lines(events), []))

        query = ident_query(
            reactor,
            "127.0.0.1",
            6191,
            23,
            local_host="127.0.0.1",
            ident_port=server.getHost().port,
            timeout=30.0,
        )
        return query.addCallback(check)

"""
Tests for L{netguard.shared.resp}: commands encoded as Redis expects them, replies parsed from
bytes recorded from redis-server 7.0 (split at every byte too), the bounds a broken or
hostile server meets (exactly at each bound and one past it), and the protocol's ordering of
replies, error replies and pushed messages.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from netguard.shared import resp
from netguard.shared.resp import (
    MAX_ARRAY,
    MAX_BULK,
    MAX_LINE,
    MAX_PENDING,
    Incomplete,
    ProtocolError,
    RedisError,
    ReplyReader,
    RespProtocol,
    encode_command,
    parse_reply,
)

#: Replies recorded from redis-server 7.0.15 for the commands netguard sends.
RECORDED: dict[str, tuple[bytes, Any]] = {
    "PING": (b"+PONG\r\n", b"PONG"),
    "SET NX fresh": (b"+OK\r\n", b"OK"),
    "SET NX taken": (b"$-1\r\n", None),
    "SCAN": (
        b"*2\r\n$1\r\n0\r\n*1\r\n$27\r\nnetguard:block:192.0.2.0/24\r\n",
        [b"0", [b"netguard:block:192.0.2.0/24"]],
    ),
    "GET": (b"$5\r\n3.000\r\n", b"3.000"),
    "INCRBY": (b":5\r\n", 5),
    "SUBSCRIBE": (
        b"*3\r\n$9\r\nsubscribe\r\n$15\r\nnetguard:blocks\r\n:1\r\n",
        [b"subscribe", b"netguard:blocks", 1],
    ),
    "message": (
        b"*3\r\n$7\r\nmessage\r\n$15\r\nnetguard:blocks\r\n$24\r\n192.0.2.0/24 10000 3.000\r\n",
        [b"message", b"netguard:blocks", b"192.0.2.0/24 10000 3.000"],
    ),
}

AUTH_ERROR = (
    b"-ERR AUTH <password> called without any password configured for the default user. "
    b"Are you sure your configuration is correct?\r\n"
)


def connected() -> tuple[RespProtocol, StringTransport]:
    protocol = RespProtocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


class EncodeTests(unittest.TestCase):
    """
    L{encode_command}.
    """

    def test_bulk_strings(self) -> None:
        """
        Every argument is a bulk string: text in UTF-8, integers in decimal, bytes as they
        are (a space or CRLF inside an argument is data, not a separator).
        """
        self.assertEqual(
            encode_command("SET", b"k\r\n x", 1500),
            b"*3\r\n$3\r\nSET\r\n$5\r\nk\r\n x\r\n$4\r\n1500\r\n",
        )


class ParseRecordedTests(unittest.TestCase):
    """
    L{parse_reply} on recorded replies.
    """

    def test_recorded(self) -> None:
        """
        Each recorded reply parses to its value, consuming exactly its bytes.
        """
        for name, (data, value) in RECORDED.items():
            self.assertEqual(parse_reply(data), (value, len(data)), name)

    def test_recorded_error(self) -> None:
        """
        An error reply is a L{RedisError} carrying the server's text.
        """
        reply, end = parse_reply(AUTH_ERROR)
        self.assertIsInstance(reply, RedisError)
        self.assertIn("AUTH <password>", str(reply))
        self.assertEqual(end, len(AUTH_ERROR))

    def test_every_prefix_incomplete(self) -> None:
        """
        Every proper prefix of a recorded reply is incomplete (never a wrong value).
        """
        for name, (data, _) in RECORDED.items():
            for cut in range(len(data)):
                with self.assertRaises(Incomplete, msg=f"{name}[:{cut}]"):
                    parse_reply(data[:cut])

    def test_null_array(self) -> None:
        """
        C{*-1} is a null array.
        """
        self.assertEqual(parse_reply(b"*-1\r\n"), (None, 5))


class BoundTests(unittest.TestCase):
    """
    The bounds of L{parse_reply}: at each one accepted, one past it refused.
    """

    def test_bulk_at_bound(self) -> None:
        """
        A bulk string of L{MAX_BULK} bytes is accepted.
        """
        data = b"$%d\r\n%s\r\n" % (MAX_BULK, b"x" * MAX_BULK)
        self.assertEqual(parse_reply(data)[0], b"x" * MAX_BULK)

    def test_bulk_past_bound(self) -> None:
        """
        A bulk length one past L{MAX_BULK} is refused before its bytes arrive.
        """
        with self.assertRaises(ProtocolError):
            parse_reply(b"$%d\r\n" % (MAX_BULK + 1))

    def test_negative_bulk(self) -> None:
        """
        A bulk length below -1 is refused.
        """
        with self.assertRaises(ProtocolError):
            parse_reply(b"$-2\r\n")

    def test_array_at_bound(self) -> None:
        """
        An array of L{MAX_ARRAY} integers is accepted.
        """
        data = b"*%d\r\n" % MAX_ARRAY + b":1\r\n" * MAX_ARRAY
        self.assertEqual(len(parse_reply(data)[0]), MAX_ARRAY)  # type: ignore[arg-type]

    def test_array_past_bound(self) -> None:
        """
        An array of L{MAX_ARRAY} + 1 elements is refused from its header.
        """
        with self.assertRaises(ProtocolError):
            parse_reply(b"*%d\r\n" % (MAX_ARRAY + 1))

    def test_depth(self) -> None:
        """
        Arrays nest two deep (a SCAN reply); a third level is refused.
        """
        self.assertEqual(parse_reply(b"*1\r\n*1\r\n:1\r\n")[0], [[1]])
        with self.assertRaises(ProtocolError):
            parse_reply(b"*1\r\n*1\r\n*1\r\n:1\r\n")

    def test_line_at_bound(self) -> None:
        """
        A status line of L{MAX_LINE} bytes is accepted; one longer is refused, CRLF or not.
        """
        self.assertEqual(parse_reply(b"+" + b"a" * (MAX_LINE - 1) + b"\r\n")[0], b"a" * 511)
        with self.assertRaises(ProtocolError):
            parse_reply(b"+" + b"a" * (MAX_LINE + 3))

    def test_bad_integer(self) -> None:
        """
        An integer reply that is not digits (one leading minus sign at most), or too long,
        is refused with L{ProtocolError}; C{-5} is read.
        """
        self.assertEqual(parse_reply(b":-5\r\n"), (-5, 5))
        bad = (b":x\r\n", b":\r\n", b":" + b"9" * 21 + b"\r\n", b"$1x\r\n", b":--5\r\n", b":-\r\n")
        for data in (*bad, b"*--1\r\n", b"$--5\r\n", b":5-\r\n"):
            with self.assertRaises(ProtocolError, msg=repr(data)):
                parse_reply(data)

    def test_unterminated_bulk(self) -> None:
        """
        A bulk string not followed by CRLF is refused.
        """
        with self.assertRaises(ProtocolError):
            parse_reply(b"$1\r\nxyz")

    def test_unknown_type(self) -> None:
        """
        RESP3 and garbage type bytes are refused.
        """
        for data in (b"%1\r\n", b"_\r\n", b"hello\r\n"):
            with self.assertRaises(ProtocolError, msg=repr(data)):
                parse_reply(data)


class ProtocolTests(unittest.TestCase):
    """
    L{RespProtocol}: replies in order, errors, pushes, and what closes the connection.
    """

    def test_replies_in_order_split_at_every_byte(self) -> None:
        """
        Two commands get their replies in order, even when the replies arrive one byte at a
        time.
        """
        protocol, transport = connected()
        results: list[Any] = []
        protocol.command("PING").addCallback(results.append)
        protocol.command("INCRBY", "k", 5).addCallback(results.append)
        self.assertEqual(
            transport.value(), encode_command("PING") + encode_command("INCRBY", "k", 5)
        )
        for byte in b"+PONG\r\n:5\r\n":
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(results, [b"PONG", 5])
        self.assertEqual(protocol.pending, 0)

    def test_error_reply_fails_its_command(self) -> None:
        """
        An error reply fails only its own command, with L{RedisError}.
        """
        protocol, _ = connected()
        failed = protocol.command("AUTH", "wrong")
        ok = protocol.command("PING")
        protocol.dataReceived(AUTH_ERROR + b"+PONG\r\n")
        self.failureResultOf(failed, RedisError)
        self.assertEqual(self.successResultOf(ok), b"PONG")

    def test_unsolicited_reply_closes(self) -> None:
        """
        A reply nobody asked for aborts the connection.
        """
        protocol, transport = connected()
        protocol.dataReceived(b"+OK\r\n")
        self.assertTrue(transport.disconnecting)

    def test_hostile_reply_fails_pending_and_closes(self) -> None:
        """
        A reply breaking a bound aborts the connection and fails every waiting command.
        """
        protocol, transport = connected()
        waiting = protocol.command("GET", "k")
        protocol.dataReceived(b"$%d\r\n" % (MAX_BULK + 1))
        self.failureResultOf(waiting, ProtocolError)
        self.assertTrue(transport.disconnecting)

    def test_unfinished_reply_bounded(self) -> None:
        """
        An array of many legal elements that never ends is held up to
        L{resp.MAX_REPLY_BYTES} (each element charged its bytes and L{resp.ELEMENT_CHARGE});
        one more element past it aborts the connection (the bounds of each element alone
        would allow 4096 times 64 KiB).
        """
        protocol, transport = connected()
        waiting = protocol.command("SCAN", 0)
        header = b"*4096\r\n"
        element = b"$64\r\n" + b"x" * 64 + b"\r\n"
        charge = resp.ELEMENT_CHARGE
        under = (resp.MAX_REPLY_BYTES - len(header) - charge) // (len(element) + charge)
        protocol.dataReceived(header + element * under)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(element)
        self.assertTrue(transport.disconnecting)
        self.failureResultOf(waiting, ProtocolError)

    def test_pushes(self) -> None:
        """
        On a subscriber connection every reply goes to C{on_push}, the recorded
        subscription confirmation and message included.
        """
        protocol, _ = connected()
        pushed: list[Any] = []
        protocol.on_push = pushed.append
        self.assertIsNone(self.successResultOf(protocol.command("SUBSCRIBE", "netguard:blocks")))
        protocol.dataReceived(RECORDED["SUBSCRIBE"][0] + RECORDED["message"][0])
        self.assertEqual(pushed, [RECORDED["SUBSCRIBE"][1], RECORDED["message"][1]])

    def test_pending_bound(self) -> None:
        """
        At most L{MAX_PENDING} commands wait; the next fails at once and is not sent.
        """
        protocol, transport = connected()
        for _ in range(MAX_PENDING):
            protocol.command("PING")
        sent = len(transport.value())
        self.failureResultOf(protocol.command("PING"), ProtocolError)
        self.assertEqual(len(transport.value()), sent)

    def test_lost_fails_pending_once(self) -> None:
        """
        Losing the connection fails every waiting command and calls C{on_lost} once; later
        commands fail at once.
        """
        protocol, _ = connected()
        lost: list[None] = []
        protocol.on_lost = lambda: lost.append(None)
        waiting = protocol.command("PING")
        protocol.connectionLost(None)
        protocol.connectionLost(None)
        self.failureResultOf(waiting, ProtocolError)
        self.assertEqual(lost, [None])
        self.failureResultOf(protocol.command("PING"), ProtocolError)


class ReaderTests(unittest.TestCase):
    """
    L{ReplyReader}: replies however the bytes are cut, each element parsed once it is whole,
    and the bound on an unfinished reply.
    """

    def count_elements(self) -> list[int]:
        """
        Count the calls of the element parser from now on.
        """
        calls = [0]
        element = resp._element

        def counted(buffer: bytes, start: int) -> Any:
            calls[0] += 1
            return element(buffer, start)

        self.patch(resp, "_element", counted)
        return calls

    def feed_bytes(self, reader: ReplyReader, data: bytes) -> list[Any]:
        replies: list[Any] = []
        for byte in data:
            replies.extend(reader.feed(bytes([byte])))
        return replies

    def test_recorded_at_every_cut(self) -> None:
        """
        Every recorded reply, all of them in one stream, cut at every byte or given whole,
        gives the same replies in order.
        """
        stream = b"".join(data for data, _ in RECORDED.values()) + AUTH_ERROR
        expected = [value for _, value in RECORDED.values()]
        for cut in range(len(stream) + 1):
            reader = ReplyReader()
            replies = list(reader.feed(stream[:cut])) + list(reader.feed(stream[cut:]))
            self.assertEqual(replies[:-1], expected, cut)
            self.assertIsInstance(replies[-1], RedisError)
        self.assertEqual(self.feed_bytes(ReplyReader(), stream)[:-1], expected)

    def test_long_bulk_parsed_once(self) -> None:
        """
        A bulk string at the bound arriving one byte at a time is parsed when it can be
        whole, not at every byte (parsing from the start on each read cost time in the
        square of its length).
        """
        data = b"$%d\r\n" % MAX_BULK + b"x" * MAX_BULK + b"\r\n"
        calls = self.count_elements()
        self.assertEqual(self.feed_bytes(ReplyReader(), data), [b"x" * MAX_BULK])
        self.assertLessEqual(calls[0], len(b"$%d\r\n" % MAX_BULK) + 2)

    def test_long_array_linear(self) -> None:
        """
        An array of as many elements as an unfinished reply may hold, one byte at a time:
        the elements already parsed are not parsed again, so the parser runs at most about
        once per byte.
        """
        element = b":7\r\n"
        count = resp.MAX_REPLY_BYTES // (len(element) + resp.ELEMENT_CHARGE) - 1
        data = b"*%d\r\n" % count + element * count
        calls = self.count_elements()
        self.assertEqual(self.feed_bytes(ReplyReader(), data), [[7] * count])
        self.assertLessEqual(calls[0], len(data) + 1)

    def test_tiny_elements_charged_as_objects(self) -> None:
        """
        A reply of many tiny elements (each a Python object far larger than its three bytes)
        is refused once the elements' charge passes the bound, long before their bytes would.
        """
        reader = ReplyReader()
        list(reader.feed(b"*64\r\n"))
        row = b"*4096\r\n" + b"-\r\n" * 4096
        with self.assertRaises(ProtocolError):
            for _ in range(64):
                list(reader.feed(row))
        self.assertLess(len(row) * 2, resp.MAX_REPLY_BYTES)  # bytes alone: far under

    def test_nested_depth_bound(self) -> None:
        """
        Arrays nest at most L{resp.MAX_DEPTH} deep when read incrementally too.
        """
        self.assertEqual(list(ReplyReader().feed(b"*1\r\n*1\r\n:1\r\n")), [[[1]]])
        with self.assertRaises(ProtocolError):
            list(ReplyReader().feed(b"*1\r\n*1\r\n*1\r\n:1\r\n"))

    def test_unfinished_bulk_inside_array_bounded(self) -> None:
        """
        Bytes of an unfinished bulk string count against the unfinished reply's bound while
        they are only collected: past it, the reader refuses before the string is whole.
        """
        reader = ReplyReader()
        charge = resp.ELEMENT_CHARGE
        element = b"$%d\r\n" % MAX_BULK + b"x" * MAX_BULK + b"\r\n"
        whole = resp.MAX_REPLY_BYTES // (len(element) + charge)
        list(reader.feed(b"*8\r\n" + element * whole))
        room = resp.MAX_REPLY_BYTES - (len(b"*8\r\n") + charge) - whole * (len(element) + charge)
        self.assertLess(room, len(element))  # the next element cannot fit whole
        header = b"$%d\r\n" % MAX_BULK
        list(reader.feed(header + b"x" * (room - len(header))))  # at the bound: held
        with self.assertRaises(ProtocolError):
            list(reader.feed(b"x"))  # one past it, the string still unfinished

    def test_good_reply_delivered_before_a_bad_one(self) -> None:
        """
        A good reply followed in the same read by a broken one reaches its command; the
        broken one then aborts the connection and fails the rest.
        """
        protocol, transport = connected()
        first = protocol.command("PING")
        second = protocol.command("GET", "k")
        protocol.dataReceived(b"+PONG\r\n?junk\r\n")
        self.assertEqual(self.successResultOf(first), b"PONG")
        self.failureResultOf(second, ProtocolError)
        self.assertTrue(transport.disconnecting)

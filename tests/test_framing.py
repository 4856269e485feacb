"""
Tests for L{netguard.framing}: every bound and every kind of hostile input, on Twisted fakes.
"""

from __future__ import annotations

import itertools
import re
import resource
import socket
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import INegotiated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest
from zope.interface import implementer

from netguard.errors import ErrorCode
from netguard.framing import FramingLimits, FramingPhase, GuardedLineReceiver, peer_label


class Recorder(GuardedLineReceiver):
    """
    A receiver that greets, records lines, switches to raw mode on C{RAW}, answers a line
    starting with C{BAD} with an error that keeps the connection (C{DENIED}: an exempt one),
    and records raw bytes: enough to observe the framing alone.
    """

    def __init__(self, limits=None, clock=None):
        super().__init__(limits, clock)
        self.lines: list[bytes] = []
        self.raw: list[bytes] = []
        self.authenticate_on = b"AUTHOK"

    def greet(self):
        self.sendLine(b"HELLO")

    def lineReceived(self, line):
        self.lines.append(line)
        if line == self.authenticate_on:
            self.end_handshake()
        if line == b"RAW":
            self.setRawMode()
        if line == b"WAIT":
            self.hold_lines()
        if line.startswith(b"BAD"):
            self.refuse(ErrorCode.BAD_SYNTAX, offending=line, close=False)
        if line.startswith(b"DENIED"):
            self.refuse(ErrorCode.AUTH_FAILED, offending=line, close=False)

    def rawDataReceived(self, data):
        self.raw.append(data)


def record_events(proto: GuardedLineReceiver) -> list[dict]:
    """
    Send every event C{proto} logs to a list, which is returned.
    """
    events: list[dict] = []
    proto.log = Logger(observer=events.append)
    return events


def named(events: list[dict], name: str) -> list[dict]:
    return [event for event in events if event.get("event") == name]


def replies(transport: StringTransport) -> list[bytes]:
    return [line for line in transport.value().split(b"\r\n") if line]


def connect(limits: FramingLimits | None = None, greet: bool = True):
    """
    A L{Recorder} on a L{StringTransport} driven by a L{Clock}, greeted unless told not to.
    """
    clock = Clock()
    proto = Recorder(limits or FramingLimits(), clock)
    transport = StringTransport()
    proto.makeConnection(transport)
    if greet:
        clock.advance(proto.limits.greeting_delay)
    return proto, transport, clock


class LineSplittingTests(unittest.TestCase):
    def test_greeting_after_delay(self):
        proto, transport, clock = connect(greet=False)
        self.assertEqual(transport.value(), b"")
        clock.advance(proto.limits.greeting_delay)
        self.assertEqual(transport.value(), b"HELLO\r\n")
        self.assertIs(proto.phase, FramingPhase.LINES)

    def test_zero_delay_greets_at_once(self):
        proto, transport, _ = connect(FramingLimits(greeting_delay=0), greet=False)
        self.assertEqual(transport.value(), b"HELLO\r\n")

    def test_crlf_and_bare_lf_end_lines(self):
        proto, _, _ = connect()
        proto.dataReceived(b"one\r\ntwo\nthree\r\n")
        self.assertEqual(proto.lines, [b"one", b"two", b"three"])

    def test_bare_cr_is_kept_inside_the_line(self):
        proto, _, _ = connect()
        proto.dataReceived(b"a\rb\r\n")
        self.assertEqual(proto.lines, [b"a\rb"])

    def test_nul_and_binary_are_delivered_unchanged(self):
        proto, _, _ = connect()
        proto.dataReceived(b"\x00\xff\xfe\x01x\r\n")
        self.assertEqual(proto.lines, [b"\x00\xff\xfe\x01x"])

    def test_non_ascii_utf8_is_delivered_unchanged(self):
        proto, _, _ = connect()
        proto.dataReceived("héllo☃\r\n".encode())
        self.assertEqual(proto.lines, ["héllo☃".encode()])

    def test_line_split_across_many_reads(self):
        proto, _, _ = connect()
        for byte in b"PING and more\r\n":
            proto.dataReceived(bytes([byte]))
        self.assertEqual(proto.lines, [b"PING and more"])

    def test_crlf_split_between_reads(self):
        proto, _, _ = connect()
        proto.dataReceived(b"abc\r")
        proto.dataReceived(b"\ndef\r\n")
        self.assertEqual(proto.lines, [b"abc", b"def"])

    def test_many_lines_in_one_read(self):
        proto, _, _ = connect(FramingLimits(max_lines_before_auth=100))
        proto.dataReceived(b"".join(b"L%d\r\n" % i for i in range(50)))
        self.assertEqual(proto.lines, [b"L%d" % i for i in range(50)])

    def test_no_newline_is_buffered_not_delivered(self):
        proto, transport, _ = connect()
        proto.dataReceived(b"no newline yet")
        self.assertEqual(proto.lines, [])
        self.assertFalse(transport.disconnecting)

    def test_empty_lines(self):
        proto, _, _ = connect()
        proto.dataReceived(b"\r\n\n")
        self.assertEqual(proto.lines, [b"", b""])

    @settings(max_examples=200, deadline=None)
    @given(
        lines=st.lists(
            st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").rstrip(b"\r")), max_size=12
        ),
        cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=10),
    )
    def test_any_chunking_gives_the_same_lines(self, lines, cuts):
        """
        However the stream is cut into reads, the same lines come out, in order.
        """
        stream = b"".join(line + b"\r\n" for line in lines)
        proto, _, _ = connect(FramingLimits(max_lines_before_auth=100))
        points = sorted({c for c in cuts if c < len(stream)} | {0, len(stream)})
        for a, b in itertools.pairwise(points):
            proto.dataReceived(stream[a:b])
        self.assertEqual(proto.lines, lines)

    @settings(max_examples=200, deadline=None)
    @given(junk=st.binary(max_size=4000))
    def test_arbitrary_bytes_never_raise_and_stay_bounded(self, junk):
        """
        Any input leaves the receiver either reading with a buffer within the bound, or closing.
        """
        limits = FramingLimits(max_line_length=100)
        proto, transport, _ = connect(limits)
        proto.dataReceived(junk)
        self.assertLessEqual(len(proto._buffer), limits.max_line_length + 1)
        for line in proto.lines:
            self.assertLessEqual(len(line), limits.max_line_length)
        if proto.phase is FramingPhase.CLOSING:
            self.assertTrue(transport.disconnecting)


class ClassLimitsTests(unittest.TestCase):
    def test_class_attribute_limits_apply_without_constructor_arguments(self):
        # A developer's own protocol built by Factory.forProtocol gets its class's limits
        # (found by a review: a class attribute used to be ignored silently).
        class Short(Recorder):
            limits = FramingLimits(max_line_length=8, greeting_delay=0)

        proto = Short(clock=Clock())
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"123456789\r\n")
        self.assertIn(b"ERR LINE_TOO_LONG", transport.value())

    def test_constructor_limits_win(self):
        proto = Recorder(FramingLimits(max_line_length=100), Clock())
        self.assertEqual(proto.limits.max_line_length, 100)
        self.assertEqual(Recorder(clock=Clock()).limits, FramingLimits())


class BoundTests(unittest.TestCase):
    def test_overlong_line_refused_and_closed(self):
        proto, transport, _ = connect(FramingLimits(max_line_length=10))
        proto.dataReceived(b"x" * 11 + b"\r\n")
        self.assertIn(b"ERR LINE_TOO_LONG", transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(proto.lines, [])

    def test_line_at_the_bound_is_accepted(self):
        proto, transport, _ = connect(FramingLimits(max_line_length=10))
        proto.dataReceived(b"x" * 10 + b"\r\n")
        self.assertEqual(proto.lines, [b"x" * 10])
        self.assertFalse(transport.disconnecting)

    def test_overlong_without_newline_refused_at_once(self):
        """
        A peer that never sends a newline cannot make us buffer more than the bound.
        """
        proto, transport, _ = connect(FramingLimits(max_line_length=10))
        proto.dataReceived(b"y" * 12)
        self.assertIn(b"ERR LINE_TOO_LONG", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_one_byte_over_without_newline_refused_at_once(self):
        # Found by an independent client: bound + 1 bytes with no newline waited for the
        # next byte. Only a CR may follow a full-length line (the start of its CRLF).
        proto, transport, _ = connect(FramingLimits(max_line_length=10))
        proto.dataReceived(b"y" * 11)
        self.assertIn(b"ERR LINE_TOO_LONG", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_full_line_then_cr_waits_for_its_lf(self):
        proto, transport, _ = connect(FramingLimits(max_line_length=10))
        proto.dataReceived(b"y" * 10 + b"\r")
        self.assertNotIn(b"ERR", transport.value())
        proto.dataReceived(b"\n")
        self.assertEqual(proto.lines, [b"y" * 10])
        self.assertFalse(transport.disconnecting)

    def test_slow_drip_without_newline_refused(self):
        proto, transport, _ = connect(FramingLimits(max_line_length=10))
        for _ in range(12):
            proto.dataReceived(b"z")
        self.assertIn(b"ERR LINE_TOO_LONG", transport.value())

    def test_too_many_lines_before_auth(self):
        proto, transport, _ = connect(FramingLimits(max_lines_before_auth=3))
        proto.dataReceived(b"a\r\nb\r\nc\r\nd\r\ne\r\n")
        self.assertEqual(proto.lines, [b"a", b"b", b"c"])
        self.assertIn(b"ERR TOO_MANY_LINES", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_line_budget_lifted_after_handshake(self):
        proto, transport, _ = connect(FramingLimits(max_lines_before_auth=3))
        proto.dataReceived(b"AUTHOK\r\n" + b"x\r\n" * 10)
        self.assertEqual(len(proto.lines), 11)
        self.assertFalse(transport.disconnecting)

    def test_lines_within_the_byte_budget_are_answered_in_any_split(self):
        # The same bytes in one write or many get the same answers: every line that fits in
        # the budget is delivered, and the byte that crosses it is refused.
        data = b"PING\r\n" + b"x" * 300
        for chunks in ([data], [data[:6], data[6:]], [bytes([b]) for b in data]):
            proto, transport, _ = connect(FramingLimits(max_bytes_before_auth=256))
            for chunk in chunks:
                proto.dataReceived(chunk)
            self.assertEqual(proto.lines, [b"PING"])
            self.assertIn(b"ERR TOO_MUCH_DATA", transport.value())
            self.assertTrue(transport.disconnecting)

    def test_handshake_ending_inside_the_budget_lifts_it_for_the_rest(self):
        proto, transport, _ = connect(FramingLimits(max_bytes_before_auth=256))
        proto.dataReceived(b"AUTHOK\r\n" + b"y\r\n" * 200)
        self.assertEqual(len(proto.lines), 201)
        self.assertFalse(transport.disconnecting)

    def test_too_much_data_before_auth(self):
        proto, transport, _ = connect(FramingLimits(max_bytes_before_auth=256))
        proto.dataReceived(b"a" * 100 + b"\r\n")
        proto.dataReceived(b"b" * 200)
        self.assertIn(b"ERR TOO_MUCH_DATA", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_input_after_refusal_is_discarded(self):
        proto, transport, _ = connect(FramingLimits(max_line_length=10))
        proto.dataReceived(b"x" * 20)
        before = transport.value()
        proto.dataReceived(b"PING\r\n" * 5)
        self.assertEqual(proto.lines, [])
        self.assertEqual(transport.value(), before)

    def test_empty_line_flood_is_cut_early(self):
        """
        1 MiB of empty lines in one read stops at the line budget: the rest is not parsed.
        """
        proto, transport, _ = connect(
            FramingLimits(max_lines_before_auth=16, max_bytes_before_auth=2**21)
        )
        before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        proto.dataReceived(b"\r\n" * (2**19))
        spent = resource.getrusage(resource.RUSAGE_SELF).ru_utime - before
        self.assertEqual(len(proto.lines), 16)
        self.assertIn(b"ERR TOO_MANY_LINES", transport.value())
        # Reported, never asserted: speed is measured in bench/, not in tests.
        print(f"\n    1 MiB of empty lines cost {spent * 1000:.1f} ms of CPU")

    def test_short_line_flood_after_auth_is_linear(self):
        """
        After authentication (no line budget) 1 MiB of C{a\\r\\n} is parsed in one pass.
        """
        proto, _, _ = connect()
        proto.dataReceived(b"AUTHOK\r\n")
        proto.dataReceived(b"a\r\n" * (2**20 // 3))
        self.assertEqual(len(proto.lines), 1 + 2**20 // 3)


class EarlyTalkerTests(unittest.TestCase):
    def test_talking_before_greeting_is_refused(self):
        proto, transport, clock = connect(greet=False)
        proto.dataReceived(b"AUTH x y\r\n")
        self.assertEqual(transport.value(), b"ERR EARLY_TALKER you spoke before the greeting\r\n")
        self.assertTrue(transport.disconnecting)
        clock.advance(10)
        self.assertNotIn(b"HELLO", transport.value())
        self.assertEqual(proto.lines, [])

    def test_partial_line_before_greeting_is_refused(self):
        proto, transport, _ = connect(greet=False)
        proto.dataReceived(b"\x16\x03\x01")
        self.assertIn(b"ERR EARLY_TALKER", transport.value())


class _SocketTransport(StringTransport):
    """
    A L{StringTransport} whose C{getHandle} is a real connected socket (one end of a
    socketpair), as Twisted's TCP and unix transports give: what the peer sent waits there.
    """

    def __init__(self, handle: socket.socket) -> None:
        super().__init__()
        self.handle = handle

    def getHandle(self) -> socket.socket:
        return self.handle


@implementer(INegotiated)
class _TLSSocketTransport(_SocketTransport):
    """The same, as a TLS transport: its socket holds TLS records, never peeked."""


class EarlyTalkerOnABusyReactorTests(unittest.TestCase):
    """
    The greeting delay ends on a timer, and a busy reactor runs timers before it reads what
    arrived meanwhile: bytes the peer sent before the greeting that still wait in the kernel
    make it an early talker all the same.
    """

    def connect(self, transport_class: type[_SocketTransport] = _SocketTransport) -> Any:
        ours, self.peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(self.peer.close)
        clock = Clock()
        proto = Recorder(FramingLimits(), clock)
        transport = transport_class(ours)
        proto.makeConnection(transport)
        return proto, transport, clock

    def test_bytes_waiting_at_the_end_of_the_delay_are_read_before_any_greeting(self):
        """
        The peer's bytes wait unread when the delay ends: no greeting; once the reactor
        reads them they are refused as an early talker's, with those bytes.
        """
        proto, transport, clock = self.connect()
        events = record_events(proto)
        self.peer.sendall(b"AUTH x y\r\n")
        clock.advance(proto.limits.greeting_delay)
        self.assertEqual(transport.value(), b"")
        # The reactor's next poll reads them, before the timer it set for the next turn.
        proto.dataReceived(self.peer_bytes_read_by_the_reactor(transport))
        clock.advance(0.001)
        self.assertEqual(transport.value(), b"ERR EARLY_TALKER you spoke before the greeting\r\n")
        clock.advance(10)
        self.assertNotIn(b"HELLO", transport.value())
        [early] = named(events, "proto.early_talker")
        self.assertIn("AUTH x y", early["offending"])

    def peer_bytes_read_by_the_reactor(self, transport: _SocketTransport) -> bytes:
        """What the reactor would read from our end (the bytes are consumed)."""
        return transport.handle.recv(4096)

    def test_nothing_waiting_greets_at_the_end_of_the_delay(self):
        """A quiet peer is greeted when the delay ends, not a moment before."""
        proto, transport, clock = self.connect()
        clock.advance(proto.limits.greeting_delay - 0.001)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.001)
        self.assertEqual(transport.value(), b"HELLO\r\n")

    def test_bytes_never_delivered_do_not_hold_the_greeting_for_ever(self):
        """
        The check is made once: if the bytes are not delivered 1 ms later (a paused
        transport), the greeting goes out and the bytes are ordinary lines when they come.
        """
        proto, transport, clock = self.connect()
        self.peer.sendall(b"PING\r\n")
        clock.advance(proto.limits.greeting_delay)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.001)
        self.assertEqual(transport.value(), b"HELLO\r\n")

    def test_tls_socket_is_never_peeked(self):
        """
        On TLS the socket holds TLS records, not what the peer said: the greeting is not
        held back by them.
        """
        proto, transport, clock = self.connect(_TLSSocketTransport)
        proto.handshakeCompleted()
        self.peer.sendall(b"\x17\x03\x03\x00\x10 tls record")
        clock.advance(proto.limits.greeting_delay)
        self.assertEqual(transport.value(), b"HELLO\r\n")

    def test_no_delay_no_check(self):
        """With C{greeting_delay = 0} there is no early-talker check and no peek."""
        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        peer.sendall(b"PING\r\n")
        proto = Recorder(FramingLimits(greeting_delay=0), Clock())
        transport = _SocketTransport(ours)
        proto.makeConnection(transport)
        self.assertEqual(transport.value(), b"HELLO\r\n")


class RawModeTests(unittest.TestCase):
    def test_bytes_behind_switch_line_are_not_lost_or_reread(self):
        proto, _, _ = connect()
        proto.dataReceived(b"one\r\nRAW\r\n\x00\r\nbinary\xff\nmore")
        self.assertEqual(proto.lines, [b"one", b"RAW"])
        self.assertEqual(b"".join(proto.raw), b"\x00\r\nbinary\xff\nmore")
        proto.dataReceived(b"\r\nnext")
        self.assertEqual(b"".join(proto.raw), b"\x00\r\nbinary\xff\nmore\r\nnext")
        self.assertEqual(proto.lines, [b"one", b"RAW"])

    def test_switch_with_buffered_partial_line(self):
        proto, _, _ = connect()
        proto.dataReceived(b"RA")
        proto.dataReceived(b"W\r\nxyz")
        self.assertEqual(b"".join(proto.raw), b"xyz")

    def test_raw_mode_has_no_line_bound(self):
        proto, transport, _ = connect(FramingLimits(max_line_length=10))
        proto.dataReceived(b"AUTHOK\r\nRAW\r\n")
        proto.dataReceived(b"q" * 10000)
        self.assertEqual(len(b"".join(proto.raw)), 10000)
        self.assertFalse(transport.disconnecting)

    def test_back_to_line_mode(self):
        proto, _, _ = connect()
        proto.dataReceived(b"RAW\r\n")
        proto.setLineMode(b"after\r\n")
        self.assertEqual(proto.lines[-1], b"after")


class TimeoutTests(unittest.TestCase):
    def test_handshake_deadline(self):
        limits = FramingLimits(handshake_timeout=5, idle_timeout=100)
        proto, transport, clock = connect(limits)
        for _ in range(6):
            clock.advance(1)
            proto.dataReceived(b"PI")
        self.assertIn(b"ERR TIMEOUT handshake deadline", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_handshake_deadline_cancelled_by_end_handshake(self):
        limits = FramingLimits(handshake_timeout=5, idle_timeout=100)
        proto, transport, clock = connect(limits)
        proto.dataReceived(b"AUTHOK\r\n")
        clock.advance(50)
        self.assertNotIn(b"ERR", transport.value())

    def test_idle_timeout(self):
        limits = FramingLimits(handshake_timeout=1000, idle_timeout=10)
        proto, transport, clock = connect(limits)
        clock.advance(9)
        proto.dataReceived(b"x")
        clock.advance(9)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertIn(b"ERR TIMEOUT idle timeout", transport.value())

    def test_no_timer_left_after_connection_lost(self):
        proto, _, clock = connect()
        proto.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])


class DeadlineTimerTests(unittest.TestCase):
    """
    The handshake deadline and the idle timeout share one timer, armed for the nearer:
    each still ends the connection at its bound, not before, with its own reply.
    """

    def test_one_timer_for_handshake_and_idle(self) -> None:
        """
        A greeted connection before its handshake holds one timer, due at the nearer
        deadline (the handshake's here).
        """
        proto, _, clock = connect(FramingLimits(handshake_timeout=5, idle_timeout=100))
        [call] = clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 5)

    def test_handshake_deadline_at_the_bound_while_talking(self) -> None:
        """
        A peer that keeps talking (resetting the idle timeout) without finishing the
        handshake is refused exactly at the handshake deadline, not an instant before.
        """
        proto, transport, clock = connect(FramingLimits(handshake_timeout=5, idle_timeout=3))
        for _ in range(8):  # greeted at 0.1, talking until 4.1
            clock.advance(0.5)
            proto.dataReceived(b"P")
        clock.advance(0.9 - 1e-6)  # t = 5 - 1e-6, the idle deadline is 7.1
        self.assertFalse(transport.disconnecting)
        clock.advance(1e-6)
        self.assertIn(b"ERR TIMEOUT handshake deadline", transport.value())
        self.assertNotIn(b"idle timeout", transport.value())

    def test_idle_timeout_at_the_bound_after_activity(self) -> None:
        """
        The idle timeout counts from the last byte: not a moment before C{idle_timeout}
        after it, and at that instant.
        """
        proto, transport, clock = connect(FramingLimits(handshake_timeout=1000, idle_timeout=10))
        clock.advance(3)
        proto.dataReceived(b"x")  # idle deadline 13.1 (greeted at 0.1)
        clock.advance(10 - 1e-6)
        self.assertFalse(transport.disconnecting)
        clock.advance(1e-6)
        self.assertIn(b"ERR TIMEOUT idle timeout", transport.value())

    def test_idle_nearer_than_handshake(self) -> None:
        """
        A silent peer whose idle timeout comes before the handshake deadline is refused for
        idleness at the idle bound.
        """
        proto, transport, clock = connect(FramingLimits(handshake_timeout=50, idle_timeout=10))
        clock.advance(10 - 0.1 - 1e-6)
        self.assertFalse(transport.disconnecting)
        clock.advance(1e-6)
        self.assertIn(b"ERR TIMEOUT idle timeout", transport.value())

    def test_end_handshake_moves_the_timer_to_the_idle_deadline(self) -> None:
        """
        After the handshake the one timer waits for the idle deadline (no second timer, no
        cancelled one left behind), and the handshake deadline no longer applies.
        """
        proto, transport, clock = connect(FramingLimits(handshake_timeout=5, idle_timeout=100))
        armed = list(clock.getDelayedCalls())
        proto.dataReceived(b"AUTHOK\r\n")
        [call] = clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 100.1)
        # (a cancelled call would stay in a real reactor's heap until its time)
        self.assertEqual([c for c in armed if c.cancelled], [])
        clock.advance(50)
        self.assertFalse(transport.disconnecting)

    def test_no_timer_once_both_are_off(self) -> None:
        """
        After the handshake, turning the idle timeout off (as a relay taking over does)
        leaves no timer at all.
        """
        proto, _, clock = connect(FramingLimits(handshake_timeout=5, idle_timeout=100))
        proto.dataReceived(b"AUTHOK\r\nRAW\r\n")
        proto.setTimeout(None)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_set_timeout_returns_the_previous_period(self) -> None:
        """
        L{setTimeout} keeps L{TimeoutMixin}'s contract: it returns the previous period.
        """
        proto, _, _ = connect(FramingLimits(idle_timeout=100))
        self.assertEqual(proto.setTimeout(7), 100)
        self.assertEqual(proto.setTimeout(None), 7)


class InstanceDictTests(unittest.TestCase):
    """
    A receiver's instance dict keeps sharing its class's key table however connections
    arrive: every name it ever sets is set in the constructor. (CPython 3.11 stops adding
    names to a class's shared keys once about 30 instances exist; an instance that then
    sets a new name gets a full dict of its own, 768 bytes more per connection.)
    """

    #: Names Twisted and TimeoutMixin set when the connection is made, right after the
    #: constructor (before any other instance can be built).
    CONNECTION_NAMES = {"transport", "connected", "timeOut", "_TimeoutMixin__timeoutCall"}

    def test_every_name_is_set_in_the_constructor(self) -> None:
        """
        A whole session (greeting, lines before and after the handshake, an error reply,
        raw mode, close) sets no instance name the constructor did not set.
        """
        clock = Clock()
        proto = Recorder(FramingLimits(max_lines_after_auth=5, max_bytes_after_auth=500), clock)
        from_constructor = set(vars(proto))
        transport = StringTransport()
        proto.makeConnection(transport)
        clock.advance(proto.limits.greeting_delay)
        proto.dataReceived(b"PING\r\nBAD x\r\nAUTHOK\r\nAFTER\r\n")
        proto.dataReceived(b"RAW\r\nraw bytes")
        proto.connectionLost(None)
        names = set(vars(proto)) - {"lines", "raw", "authenticate_on"}  # Recorder's own
        self.assertEqual(names - from_constructor - self.CONNECTION_NAMES, set())

    def test_dicts_stay_shared_when_many_connections_arrive_at_once(self) -> None:
        """
        Sixty-four connections made before any of them speaks (a burst of accepts), then
        each logged in: every instance dict still shares its class's keys (small), none
        turned into a full dict of its own.
        """

        class Fresh(Recorder):
            pass  # a class of its own: its shared keys start empty, as at process start

        clock = Clock()
        protos = []
        for _ in range(64):
            proto = Fresh(FramingLimits(), clock)
            proto.makeConnection(StringTransport())
            protos.append(proto)
        clock.advance(FramingLimits().greeting_delay)
        for proto in protos:
            proto.dataReceived(b"PING\r\nAUTHOK\r\nRAW\r\n")
        sizes = {sys.getsizeof(vars(proto)) for proto in protos}
        self.assertLess(max(sizes), 512, sizes)


class WriteBoundTests(unittest.TestCase):
    def test_receiver_is_its_transports_producer(self):
        proto, transport, _ = connect()
        self.assertIs(transport.producer, proto)
        self.assertTrue(transport.streaming)

    def test_stalled_reader_stops_reading_then_is_aborted(self):
        limits = FramingLimits(write_timeout=7)
        proto, transport, clock = connect(limits)
        proto.pauseProducing()  # what the transport does when its buffer is full
        self.assertEqual(transport.producerState, "paused")
        clock.advance(6)
        self.assertFalse(getattr(transport, "aborted", False))
        clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_lines_after_pause_wait_until_resume(self):
        proto, transport, _ = connect()
        proto.dataReceived(b"a\r\n")
        proto.pauseProducing()
        proto.dataReceived(b"b\r\nc\r\n")
        self.assertEqual(proto.lines, [b"a"])
        proto.resumeProducing()
        self.assertEqual(proto.lines, [b"a", b"b", b"c"])
        self.assertEqual(transport.producerState, "producing")

    def test_resume_cancels_write_timer(self):
        limits = FramingLimits(write_timeout=7, handshake_timeout=1000, idle_timeout=1000)
        proto, transport, clock = connect(limits)
        proto.pauseProducing()
        proto.resumeProducing()
        clock.advance(100)
        self.assertFalse(transport.disconnecting)

    def test_unread_final_error_is_aborted_after_write_timeout(self):
        proto, transport, clock = connect(FramingLimits(write_timeout=3, max_line_length=10))
        aborted = []
        transport.abortConnection = lambda: aborted.append(True)
        proto.dataReceived(b"x" * 30)
        self.assertIsNone(transport.producer)
        clock.advance(4)
        self.assertEqual(aborted, [True])


class PeerLabelTests(unittest.TestCase):
    def test_ipv4(self):
        from twisted.internet.address import IPv4Address

        self.assertEqual(peer_label(IPv4Address("TCP", "127.0.0.1", 5)), "127.0.0.1:5")

    def test_ipv6(self):
        from twisted.internet.address import IPv6Address

        self.assertEqual(peer_label(IPv6Address("TCP", "::1", 5)), "[::1]:5")

    def test_unix_unnamed(self):
        from twisted.internet.address import UNIXAddress

        self.assertEqual(peer_label(UNIXAddress(None)), "unix:-")


class HoldTests(unittest.TestCase):
    def test_held_lines_wait_in_order(self):
        proto, transport, _ = connect(FramingLimits(max_line_length=10))
        proto.dataReceived(b"a\r\n")
        proto.hold_lines()
        self.assertEqual(transport.producerState, "paused")
        proto.dataReceived(b"bbbbbbbbb\r\ncccccccc\r\ndd")
        self.assertEqual(proto.lines, [b"a"])
        self.assertFalse(transport.disconnecting)
        proto.release_lines()
        self.assertEqual(proto.lines, [b"a", b"bbbbbbbbb", b"cccccccc"])
        self.assertEqual(transport.producerState, "producing")
        proto.dataReceived(b"\r\n")
        self.assertEqual(proto.lines[-1], b"dd")

    def test_bytes_after_a_held_switch_to_raw_are_delivered(self):
        """
        A subclass that holds lines while it decides (an asynchronous check before C{OPEN})
        and then switches to raw mode gets every byte that followed the deciding line in the
        same read, in order, when it releases the lines: none is dropped with the line
        buffer, and reading stays paused for the raw consumer to resume.
        """
        proto, transport, _ = connect()
        proto.dataReceived(b"WAIT\r\nrelay me\r\n\x00and this")
        self.assertEqual(proto.lines, [b"WAIT"])
        self.assertEqual(proto.raw, [])
        proto.setRawMode()
        proto.release_lines()
        self.assertEqual(b"".join(proto.raw), b"relay me\r\n\x00and this")
        self.assertEqual(transport.producerState, "paused")
        proto.dataReceived(b" and later")
        self.assertEqual(b"".join(proto.raw), b"relay me\r\n\x00and this and later")

    def test_overlong_partial_line_still_refused_while_held(self):
        proto, transport, _ = connect(FramingLimits(max_line_length=10))
        proto.hold_lines()
        proto.dataReceived(b"x" * 30)
        self.assertIn(b"ERR LINE_TOO_LONG", transport.value())

    def test_paused_with_many_buffered_lines_is_not_a_long_line(self):
        proto, transport, _ = connect(FramingLimits(max_line_length=10))
        proto.pauseProducing()
        proto.dataReceived(b"123456789\r\n" * 5)
        self.assertFalse(transport.disconnecting)
        proto.resumeProducing()
        self.assertEqual(len(proto.lines), 5)


class PreAuthBoundaryTests(unittest.TestCase):
    """
    The budgets before the handshake, exactly at each bound and one past it.
    """

    def test_bytes_before_auth_exactly_at_the_bound_are_accepted(self):
        """
        Exactly C{max_bytes_before_auth} bytes (whole lines, in one read or byte by byte)
        are all delivered and the connection stays open.
        """
        data = b"a" * 62 + b"\r\n"  # 64 bytes
        for chunks in ([data * 4], [bytes([b]) for b in data * 4]):
            proto, transport, _ = connect(FramingLimits(max_bytes_before_auth=256))
            for chunk in chunks:
                proto.dataReceived(chunk)
            self.assertEqual(proto.bytes_before_auth, 256)
            self.assertEqual(proto.lines, [b"a" * 62] * 4)
            self.assertEqual(replies(transport), [b"HELLO"])
            self.assertFalse(transport.disconnecting)

    def test_one_byte_past_bytes_before_auth_is_refused(self):
        """
        One byte past C{max_bytes_before_auth}, in the same read or in the next one, is
        refused with C{TOO_MUCH_DATA} and closes; the lines within the bound were delivered.
        """
        data = (b"a" * 62 + b"\r\n") * 4
        for chunks in ([data + b"b"], [data, b"b"]):
            proto, transport, _ = connect(FramingLimits(max_bytes_before_auth=256))
            for chunk in chunks:
                proto.dataReceived(chunk)
            self.assertEqual(len(proto.lines), 4)
            self.assertEqual(
                replies(transport)[-1], b"ERR TOO_MUCH_DATA too much data before authentication"
            )
            self.assertTrue(transport.disconnecting)

    def test_lines_before_auth_exactly_at_the_bound_are_accepted(self):
        """
        Exactly C{max_lines_before_auth} lines are delivered and the connection stays open.
        """
        proto, transport, _ = connect(FramingLimits(max_lines_before_auth=3))
        proto.dataReceived(b"a\r\nb\r\nc\r\n")
        self.assertEqual(proto.lines, [b"a", b"b", b"c"])
        self.assertFalse(transport.disconnecting)

    def test_one_line_past_lines_before_auth_is_refused(self):
        """
        The line after C{max_lines_before_auth}, in a later read, is refused with
        C{TOO_MANY_LINES}, undelivered, and closes.
        """
        proto, transport, _ = connect(FramingLimits(max_lines_before_auth=3))
        proto.dataReceived(b"a\r\nb\r\nc\r\n")
        proto.dataReceived(b"d\r\n")
        self.assertEqual(proto.lines, [b"a", b"b", b"c"])
        self.assertEqual(
            replies(transport)[-1], b"ERR TOO_MANY_LINES too many lines before authentication"
        )
        self.assertTrue(transport.disconnecting)


class AfterAuthBudgetTests(unittest.TestCase):
    """
    The opt-in budgets between L{GuardedLineReceiver.end_handshake} and raw mode: lines,
    bytes and time, exactly at each bound and one past it.
    """

    def test_lines_after_auth_exactly_at_the_bound_are_accepted(self):
        """
        C{max_lines_after_auth} lines after the handshake are all delivered; the
        connection stays open.
        """
        proto, transport, _ = connect(FramingLimits(max_lines_after_auth=5))
        proto.dataReceived(b"AUTHOK\r\n" + b"x\r\n" * 5)
        self.assertEqual(proto.lines, [b"AUTHOK"] + [b"x"] * 5)
        self.assertFalse(transport.disconnecting)

    def test_one_line_past_lines_after_auth_is_refused(self):
        """
        The line after C{max_lines_after_auth} is refused with C{TOO_MANY_LINES}, not
        delivered, and the connection is closed.
        """
        proto, transport, _ = connect(FramingLimits(max_lines_after_auth=5))
        proto.dataReceived(b"AUTHOK\r\n" + b"x\r\n" * 5)
        proto.dataReceived(b"y\r\n")
        self.assertEqual(proto.lines, [b"AUTHOK"] + [b"x"] * 5)
        self.assertEqual(
            replies(transport)[-1], b"ERR TOO_MANY_LINES too many lines after authentication"
        )
        self.assertTrue(transport.disconnecting)

    def test_bytes_after_auth_exactly_at_the_bound_are_accepted(self):
        """
        Lines of exactly C{max_bytes_after_auth} bytes (terminators included) after the
        handshake are all delivered.
        """
        proto, transport, _ = connect(FramingLimits(max_bytes_after_auth=300))
        proto.dataReceived(b"AUTHOK\r\n")
        proto.dataReceived((b"z" * 98 + b"\r\n") * 3)
        self.assertEqual(proto.bytes_after_auth, 300)
        self.assertEqual(len(proto.lines), 4)
        self.assertFalse(transport.disconnecting)

    def test_one_byte_past_bytes_after_auth_is_refused(self):
        """
        A line that takes the count one byte past C{max_bytes_after_auth} is refused with
        C{TOO_MUCH_DATA}, not delivered, and the connection is closed.
        """
        proto, transport, _ = connect(FramingLimits(max_bytes_after_auth=300))
        proto.dataReceived(b"AUTHOK\r\n")
        proto.dataReceived((b"z" * 98 + b"\r\n") * 2 + b"z" * 98 + b"\r\r\n")
        self.assertEqual(len(proto.lines), 3)
        self.assertEqual(
            replies(transport)[-1], b"ERR TOO_MUCH_DATA too much data after authentication"
        )
        self.assertTrue(transport.disconnecting)

    def test_megabyte_of_short_lines_after_auth_stops_at_the_bound(self):
        """
        1 MiB of C{a\\r\\n} in one read after the handshake: exactly the budget is handled,
        the rest of the read is dropped unparsed, and later reads are discarded.
        """
        proto, transport, _ = connect(FramingLimits(max_lines_after_auth=32))
        proto.dataReceived(b"AUTHOK\r\n")
        proto.dataReceived(b"a\r\n" * (2**20 // 3))
        self.assertEqual(len(proto.lines), 1 + 32)
        self.assertEqual(proto.lines_after_auth, 33)
        self.assertEqual(proto.clearLineBuffer(), b"")
        proto.dataReceived(b"a\r\n" * 1000)
        self.assertEqual(proto.lines_after_auth, 33)
        self.assertTrue(transport.disconnecting)

    def test_raw_bytes_behind_the_switch_do_not_count(self):
        """
        Bytes after the line that switches to raw mode, in the same read, are raw data, not
        lines: the byte budget after the handshake does not apply to them.
        """
        proto, transport, _ = connect(FramingLimits(max_bytes_after_auth=256))
        proto.dataReceived(b"AUTHOK\r\nRAW\r\n" + b"r" * 10000)
        self.assertEqual(b"".join(proto.raw), b"r" * 10000)
        self.assertFalse(transport.disconnecting)

    def test_no_bound_after_auth_by_default(self):
        """
        The toolkit's default limits leave the line phase after the handshake unbounded in
        lines, bytes and time (a protocol of its own may live there).
        """
        limits = FramingLimits()
        self.assertEqual(
            (
                limits.max_lines_after_auth,
                limits.max_bytes_after_auth,
                limits.open_timeout,
            ),
            (None, None, None),
        )

    def test_open_deadline_fires_exactly_at_the_bound(self):
        """
        With C{open_timeout}, a connection still in line mode that long after the
        handshake is refused with C{TIMEOUT open deadline}; a moment before, it is not.
        """
        limits = FramingLimits(open_timeout=5, handshake_timeout=100, idle_timeout=100)
        proto, transport, clock = connect(limits)
        clock.advance(50)  # the deadline counts from the handshake, not the connection
        proto.dataReceived(b"AUTHOK\r\n")
        events = record_events(proto)
        clock.advance(4.999)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.001)
        self.assertEqual(replies(transport)[-1], b"ERR TIMEOUT open deadline")
        self.assertTrue(transport.disconnecting)
        [timeout] = named(events, "conn.timeout")
        self.assertEqual(timeout["which"], "open")

    def test_raw_mode_cancels_the_open_deadline(self):
        """
        Switching to raw mode before C{open_timeout} stops the deadline.
        """
        limits = FramingLimits(open_timeout=5, handshake_timeout=100, idle_timeout=100)
        proto, transport, clock = connect(limits)
        proto.dataReceived(b"AUTHOK\r\nRAW\r\n")
        clock.advance(50)
        self.assertNotIn(b"ERR", transport.value())
        self.assertFalse(transport.disconnecting)


class ErrorBudgetTests(unittest.TestCase):
    """
    Error replies that keep the connection: bounded per connection, and logged once.
    """

    def test_errors_exactly_at_the_bound_keep_the_connection(self):
        """
        C{max_errors} error replies are each answered and the connection stays open.
        """
        proto, transport, _ = connect(FramingLimits(max_errors=3))
        proto.dataReceived(b"BAD1\r\nBAD2\r\nBAD3\r\n")
        self.assertEqual(replies(transport)[1:], [b"ERR BAD_SYNTAX bad syntax"] * 3)
        self.assertFalse(transport.disconnecting)

    def test_one_error_past_the_bound_closes(self):
        """
        The error after C{max_errors} is answered C{ERR TOO_MANY_LINES too many errors}
        and closes; the rest of the read is not handled.
        """
        proto, transport, _ = connect(FramingLimits(max_errors=3))
        proto.dataReceived(b"BAD1\r\nBAD2\r\nBAD3\r\nBAD4\r\nlater\r\n")
        self.assertEqual(
            replies(transport)[1:],
            [b"ERR BAD_SYNTAX bad syntax"] * 3 + [b"ERR TOO_MANY_LINES too many errors"],
        )
        self.assertEqual(proto.errors_answered, 3)
        self.assertNotIn(b"later", proto.lines)
        self.assertTrue(transport.disconnecting)

    def test_exempt_codes_do_not_count(self):
        """
        Codes in C{errors_exempt} (bounded by their subclass) neither use the budget nor
        end the connection, and each is logged.
        """

        class Exempting(Recorder):
            errors_exempt = frozenset({ErrorCode.AUTH_FAILED})

        proto = Exempting(FramingLimits(max_errors=2), Clock())
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.clock.advance(proto.limits.greeting_delay)
        events = record_events(proto)
        proto.dataReceived(b"DENIED\r\n" * 5)
        self.assertEqual(replies(transport)[1:], [b"ERR AUTH_FAILED authentication failed"] * 5)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(named(events, "proto.refuse")), 5)

    def test_errors_logged_once_with_a_count(self):
        """
        Of a burst of error replies only the first is logged as C{proto.refuse}; when the
        connection is cut, one C{proto.errors} event carries the count and the first input.
        """
        proto, transport, _ = connect(FramingLimits(max_errors=10))
        events = record_events(proto)
        proto.dataReceived(b"BAD first\r\n" + b"BAD\r\n" * 100000)
        proto.connectionLost(None)
        refusals = named(events, "proto.refuse")
        self.assertEqual([e["code"] for e in refusals], ["BAD_SYNTAX", "TOO_MANY_LINES"])
        self.assertEqual(refusals[0]["offending"], "BAD first")
        [summary] = named(events, "proto.errors")
        self.assertEqual((summary["count"], summary["first_code"]), (10, "BAD_SYNTAX"))
        self.assertTrue(formatEvent(summary).startswith("10 error replies to "))
        self.assertIn('first: BAD_SYNTAX input="BAD first"', formatEvent(summary))

    def test_summary_when_the_line_phase_ends_in_raw_mode(self):
        """
        Error replies followed by a switch to raw mode are summarised at the switch, once.
        """
        proto, _, _ = connect()
        events = record_events(proto)
        proto.dataReceived(b"BAD1\r\nBAD2\r\nRAW\r\n")
        [summary] = named(events, "proto.errors")
        self.assertEqual(summary["count"], 2)
        proto.connectionLost(None)
        self.assertEqual(len(named(events, "proto.errors")), 1)

    def test_a_single_error_is_not_summarised(self):
        """
        One error reply is logged in full when sent; no summary repeats it.
        """
        proto, _, _ = connect()
        events = record_events(proto)
        proto.dataReceived(b"BAD1\r\n")
        proto.connectionLost(None)
        self.assertEqual(len(named(events, "proto.refuse")), 1)
        self.assertEqual(named(events, "proto.errors"), [])


class RefusalQuotingTests(unittest.TestCase):
    """
    The offending input a client chose is quoted in the text of a refusal, so it cannot pass
    for the words of another event.
    """

    FORGED = b'X authentication failed for "root" from 10.9.9.9: unknown user'

    def test_offending_input_is_quoted_in_the_message(self):
        """
        C{proto.refuse} shows the input in double quotes with its own quotes escaped; a
        fail2ban-style pattern for failed logins finds nothing in it.
        """
        proto, _, _ = connect()
        events = record_events(proto)
        proto.dataReceived(b"BAD " + self.FORGED + b"\r\n")
        [refusal] = named(events, "proto.refuse")
        message = formatEvent(refusal)
        self.assertIn(
            'input="BAD X authentication failed for \\x22root\\x22 from 10.9.9.9: unknown user"',
            message,
        )
        self.assertIsNone(
            re.search(r'authentication failed for "[^"]*" from 10\.9\.9\.9', message)
        )

    def test_first_input_is_quoted_in_the_summary(self):
        """
        C{proto.errors} quotes the first offending input the same way.
        """
        proto, _, _ = connect()
        events = record_events(proto)
        proto.dataReceived(b"BAD " + self.FORGED + b"\r\nBAD\r\n")
        proto.connectionLost(None)
        [summary] = named(events, "proto.errors")
        message = formatEvent(summary)
        self.assertIn('input="BAD X authentication failed for \\x22root\\x22', message)
        self.assertIsNone(
            re.search(r'authentication failed for "[^"]*" from 10\.9\.9\.9', message)
        )

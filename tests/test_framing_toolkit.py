"""
Tests for L{netguard.framing.GuardedLineReceiver} as other Twisted services use it: raw mode
while lines are held, raw mode before the handshake ends or before the greeting, the
LineReceiver C{MAX_LENGTH} idiom, and the module docstring's example.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

import netguard.framing
from netguard.framing import FramingLimits, FramingPhase, GuardedLineReceiver
from tests.test_framing import Recorder, connect, named, record_events, replies


class _HoldThenRaw(Recorder):
    """
    A L{Recorder} whose C{OPEN} line holds the lines and switches to raw mode at once, and
    whose first raw bytes may end the handshake (C{end_on_raw}).
    """

    end_on_raw = False

    def lineReceived(self, line: bytes) -> None:
        super().lineReceived(line)
        if line == b"OPEN":
            self.hold_lines()
            self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        super().rawDataReceived(data)
        if self.end_on_raw and not self.handshake_done:
            self.end_handshake()


class HeldRawOrderTests(unittest.TestCase):
    """
    Raw bytes are delivered in the order they arrived, also when raw mode starts while lines
    are held and our output queue is full: reading stays paused until L{release_lines}.
    """

    def held_open(self) -> tuple[Recorder, StringTransport]:
        """
        A handshake-ended receiver that got C{WAIT} and the first raw bytes in one read,
        holding them.
        """
        proto, transport, _ = connect()
        proto.dataReceived(b"AUTHOK\r\n")
        proto.dataReceived(b"WAIT\r\nfirst-")
        self.assertEqual(transport.producerState, "paused")
        return proto, transport

    def test_switch_while_held_and_write_paused_keeps_reading_paused(self) -> None:
        """
        C{setRawMode} while lines are held and the peer had stopped reading does not resume
        reading: the held bytes come first, at L{release_lines}, then what is read later;
        reading stays paused for the raw consumer.
        """
        proto, transport = self.held_open()
        proto.pauseProducing()
        proto.setRawMode()
        self.assertEqual(transport.producerState, "paused")
        proto.release_lines()
        self.assertEqual(proto.raw, [b"first-"])
        self.assertEqual(transport.producerState, "paused")
        proto.dataReceived(b"second")
        self.assertEqual(proto.raw, [b"first-", b"second"])

    def test_bytes_arriving_while_held_in_raw_mode_wait_behind_the_held_ones(self) -> None:
        """
        Bytes a transport delivers after the switch but before L{release_lines} (a TLS
        layer hands over the rest of one read even after a pause) wait behind the held
        bytes: nothing is delivered while held, all of it in order at release.
        """
        proto, _ = self.held_open()
        proto.pauseProducing()
        proto.setRawMode()
        proto.dataReceived(b"second")
        proto.dataReceived(b"-third")
        self.assertEqual(proto.raw, [])
        proto.release_lines()
        self.assertEqual(b"".join(proto.raw), b"first-second-third")

    def test_switch_while_write_paused_but_not_held_resumes_reading(self) -> None:
        """
        The other side: with no lines held, C{setRawMode} after the peer stopped reading
        resumes reading (the raw consumer wires its own backpressure), and raw bytes are
        delivered at once.
        """
        proto, transport, _ = connect()
        proto.dataReceived(b"AUTHOK\r\n")
        proto.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        proto.setRawMode()
        self.assertEqual(transport.producerState, "producing")
        proto.dataReceived(b"now")
        self.assertEqual(proto.raw, [b"now"])

    def test_hold_and_switch_in_one_line_keeps_the_rest_for_release(self) -> None:
        """
        A line that holds and switches to raw mode at once: the bytes after it in the same
        read, and in later reads, are delivered at L{release_lines}, in order, not before.
        """
        clock = Clock()
        proto = _HoldThenRaw(FramingLimits(), clock)
        transport = StringTransport()
        proto.makeConnection(transport)
        clock.advance(proto.limits.greeting_delay)
        proto.dataReceived(b"AUTHOK\r\nOPEN\r\nfirst-")
        proto.dataReceived(b"second")
        self.assertEqual(proto.raw, [])
        proto.release_lines()
        self.assertEqual(b"".join(proto.raw), b"first-second")


class RawBudgetBeforeAuthTests(unittest.TestCase):
    """
    Raw bytes before L{end_handshake} count against C{max_bytes_before_auth} however the
    reads are split: the bytes within the budget are delivered, the byte past it closes the
    connection without an error line in the raw stream, and a C{proto.refuse} is logged.
    """

    budget = 256

    def splits(self, data: bytes) -> list[list[bytes]]:
        """
        C{data} in one read, in two (after the switch line), and byte by byte.
        """
        return [[data], [data[:5], data[5:]], [data[i : i + 1] for i in range(len(data))]]

    def test_exactly_the_budget_is_delivered_in_every_split(self) -> None:
        """
        C{RAW} and raw bytes that make exactly C{max_bytes_before_auth} are all delivered,
        however split, and the connection stays open with nothing written.
        """
        data = b"RAW\r\n" + b"x" * (self.budget - 5)
        for chunks in self.splits(data):
            proto, transport, _ = connect(FramingLimits(max_bytes_before_auth=self.budget))
            for chunk in chunks:
                proto.dataReceived(chunk)
            self.assertEqual(b"".join(proto.raw), b"x" * (self.budget - 5))
            self.assertEqual(replies(transport), [b"HELLO"])
            self.assertFalse(transport.disconnecting)

    def test_one_byte_past_the_budget_closes_in_every_split(self) -> None:
        """
        One byte more, in the same read or a later one: the bytes within the budget are
        delivered, the one past it is not, the connection is closed, no C{ERR} line is
        written into the raw stream, and C{proto.refuse} (C{TOO_MUCH_DATA}, C{raw}) is
        logged once.
        """
        data = b"RAW\r\n" + b"x" * (self.budget - 5) + b"y"
        for chunks in self.splits(data):
            proto, transport, _ = connect(FramingLimits(max_bytes_before_auth=self.budget))
            events = record_events(proto)
            for chunk in chunks:
                proto.dataReceived(chunk)
            self.assertEqual(b"".join(proto.raw), b"x" * (self.budget - 5))
            self.assertEqual(replies(transport), [b"HELLO"])
            self.assertTrue(transport.disconnecting)
            [event] = named(events, "proto.refuse")
            self.assertEqual((event["code"], event["raw"]), ("TOO_MUCH_DATA", True))
            self.assertEqual(event["offending"], "y")
            self.assertIs(proto.phase, FramingPhase.CLOSING)

    def test_reviewer_scenario_same_answer_for_one_and_two_reads(self) -> None:
        """
        C{RAW} and 9000 bytes under the default budget (8192) give the same answer in one
        read and in two: 8188 raw bytes, then a silent close.
        """
        outcomes = set()
        for chunks in ([b"RAW\n" + b"x" * 9000], [b"RAW\n", b"x" * 9000]):
            proto, transport, _ = connect()
            for chunk in chunks:
                proto.dataReceived(chunk)
            outcomes.add((len(b"".join(proto.raw)), transport.value(), transport.disconnecting))
        self.assertEqual(outcomes, {(8188, b"HELLO\r\n", True)})

    def test_raw_bytes_after_the_handshake_are_unbounded(self) -> None:
        """
        After L{end_handshake} raw mode has no byte bound.
        """
        proto, transport, _ = connect(FramingLimits(max_bytes_before_auth=self.budget))
        proto.dataReceived(b"AUTHOK\r\nRAW\r\n")
        proto.dataReceived(b"q" * (self.budget * 10))
        self.assertEqual(len(b"".join(proto.raw)), self.budget * 10)
        self.assertFalse(transport.disconnecting)

    def test_raw_consumer_ending_the_handshake_gets_the_rest_of_the_read(self) -> None:
        """
        A raw consumer that ends the handshake itself (a login in raw bytes) within the
        budget gets every byte after it, in the same read and later, with no bound.
        """
        clock = Clock()
        proto = _HoldThenRaw(FramingLimits(max_bytes_before_auth=self.budget), clock)
        proto.end_on_raw = True
        transport = StringTransport()
        proto.makeConnection(transport)
        clock.advance(proto.limits.greeting_delay)
        proto.dataReceived(b"RAW\r\n")
        proto.dataReceived(b"z" * (self.budget * 3))
        proto.dataReceived(b"z" * self.budget)
        self.assertEqual(b"".join(proto.raw), b"z" * (self.budget * 4))
        self.assertTrue(proto.handshake_done)
        self.assertFalse(transport.disconnecting)

    def test_held_raw_bytes_count_against_the_budget(self) -> None:
        """
        Raw bytes that arrive while lines are held before the handshake ends count too: the
        byte past the budget closes the connection.
        """
        clock = Clock()
        proto = _HoldThenRaw(FramingLimits(max_bytes_before_auth=self.budget), clock)
        transport = StringTransport()
        proto.makeConnection(transport)
        clock.advance(proto.limits.greeting_delay)
        proto.dataReceived(b"OPEN\r\n")
        proto.dataReceived(b"w" * (self.budget - 6))
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"w")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(replies(transport), [b"HELLO"])


class _RawFromConnect(Recorder):
    """
    A L{Recorder} that asks for raw mode as soon as it is connected.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.setRawMode()


class RawBeforeGreetingTests(unittest.TestCase):
    """
    C{setRawMode} called before the greeting takes effect when the greeting is sent.
    """

    def make(self, proto_class: type[Recorder] = _RawFromConnect, **limits: Any) -> Any:
        clock = Clock()
        proto = proto_class(FramingLimits(**limits), clock)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, clock

    def test_raw_mode_starts_at_the_delayed_greeting(self) -> None:
        """
        With a greeting delay, raw mode asked for in C{connectionMade} starts when the
        greeting is sent: every byte after it goes to C{rawDataReceived}, none to
        C{lineReceived}.
        """
        proto, transport, clock = self.make(greeting_delay=0.1)
        self.assertIs(proto.phase, FramingPhase.PRE_GREETING)
        clock.advance(0.1)
        self.assertEqual(replies(transport), [b"HELLO"])
        self.assertIs(proto.phase, FramingPhase.RAW)
        proto.dataReceived(b"abc\ndef\n")
        self.assertEqual((proto.lines, proto.raw), ([], [b"abc\ndef\n"]))

    def test_without_greeting_delay_unchanged(self) -> None:
        """
        Greeted at once (no delay), C{setRawMode} in C{connectionMade} is raw mode at once,
        as before.
        """
        proto, _, _ = self.make(greeting_delay=0)
        self.assertIs(proto.phase, FramingPhase.RAW)
        proto.dataReceived(b"abc\n")
        self.assertEqual((proto.lines, proto.raw), ([], [b"abc\n"]))

    def test_bytes_before_the_greeting_are_still_early_talk(self) -> None:
        """
        Raw mode asked for early does not let a peer talk before the greeting: it is refused
        as an early talker and nothing reaches C{rawDataReceived}.
        """
        proto, transport, clock = self.make(greeting_delay=0.1)
        clock.advance(0.05)
        proto.dataReceived(b"hello?")
        self.assertEqual(replies(transport), [b"ERR EARLY_TALKER you spoke before the greeting"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(proto.raw, [])

    def test_greet_now_starts_raw_mode_too(self) -> None:
        """
        A held greeting (C{greeting_due} false) ended by C{greet_now} starts raw mode too.
        """

        class Held(_RawFromConnect):
            def greeting_due(self) -> bool:
                return False

        proto, transport, _ = self.make(Held, greeting_delay=0.1)
        proto.greet_now()
        self.assertIs(proto.phase, FramingPhase.RAW)
        proto.dataReceived(b"x\n")
        self.assertEqual(proto.raw, [b"x\n"])

    def test_line_mode_asked_for_before_the_greeting_wins(self) -> None:
        """
        C{setLineMode} after C{setRawMode}, both before the greeting, leaves line mode.
        """
        proto, _, clock = self.make(greeting_delay=0.1)
        proto.setLineMode()
        clock.advance(0.1)
        self.assertIs(proto.phase, FramingPhase.LINES)
        proto.dataReceived(b"abc\r\n")
        self.assertEqual((proto.lines, proto.raw), ([b"abc"], []))

    def test_raw_bytes_before_the_handshake_are_bounded(self) -> None:
        """
        Raw mode from the greeting is still before the handshake: C{max_bytes_before_auth}
        bytes are delivered, the next one closes.
        """
        proto, transport, clock = self.make(greeting_delay=0.1, max_bytes_before_auth=100)
        clock.advance(0.1)
        proto.dataReceived(b"r" * 100)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"r")
        self.assertEqual(b"".join(proto.raw), b"r" * 100)
        self.assertTrue(transport.disconnecting)


class MaxLengthIdiomTests(unittest.TestCase):
    """
    L{LineReceiver}'s C{MAX_LENGTH} idiom is refused with a message naming the way that
    works (C{limits.max_line_length}), never silently ignored.
    """

    def test_max_length_in_a_subclass_body_is_refused_at_class_creation(self) -> None:
        """
        A subclass that sets C{MAX_LENGTH = 16} is refused with a L{TypeError} telling to
        set C{limits = FramingLimits(max_line_length=16)}.
        """
        with self.assertRaises(TypeError) as caught:

            class Short(GuardedLineReceiver):
                MAX_LENGTH = 16

        self.assertIn("Short sets MAX_LENGTH", str(caught.exception))
        self.assertIn("limits = FramingLimits(max_line_length=16)", str(caught.exception))

    def test_max_length_refused_deeper_in_the_hierarchy(self) -> None:
        """
        A subclass of a subclass that sets C{MAX_LENGTH} is refused too.
        """
        with self.assertRaises(TypeError):

            class Shorter(Recorder):
                MAX_LENGTH = 8

    def test_limits_line_length_is_the_bound_and_max_length_reads_it(self) -> None:
        """
        The other side: a subclass with C{limits} (or restating the inherited C{MAX_LENGTH})
        is accepted; C{MAX_LENGTH} reads C{max_line_length}; a line at the bound is
        delivered and one byte longer refused.
        """

        class Short(Recorder):
            limits = FramingLimits(max_line_length=16)
            MAX_LENGTH = GuardedLineReceiver.MAX_LENGTH

        clock = Clock()
        proto = Short(clock=clock)
        self.assertEqual(proto.MAX_LENGTH, 16)
        transport = StringTransport()
        proto.makeConnection(transport)
        clock.advance(proto.limits.greeting_delay)
        proto.dataReceived(b"a" * 16 + b"\r\n")
        self.assertEqual(proto.lines, [b"a" * 16])
        proto.dataReceived(b"b" * 17 + b"\r\n")
        self.assertEqual(proto.lines, [b"a" * 16])
        self.assertEqual(replies(transport)[-1], b"ERR LINE_TOO_LONG line too long")

    def test_assigning_max_length_on_an_instance_names_limits(self) -> None:
        """
        C{self.MAX_LENGTH = 16} raises L{AttributeError} saying to change C{limits}.
        """
        proto = Recorder(clock=Clock())
        with self.assertRaises(AttributeError) as caught:
            proto.MAX_LENGTH = 16  # type: ignore[misc]
        self.assertIn("max_line_length=16", str(caught.exception))
        self.assertEqual(proto.MAX_LENGTH, FramingLimits().max_line_length)


def _docstring_example() -> str:
    """
    The code block of L{netguard.framing}'s module docstring.
    """
    doc = netguard.framing.__doc__ or ""
    match = re.search(r"::\n\n((?:    .*\n|\n)+)", doc)
    assert match is not None, "no example in the module docstring"
    return textwrap.dedent(match.group(1))


class DocstringExampleTests(unittest.TestCase):
    """
    The module docstring's example runs as written (with a memory reactor in place of the
    global one) and gives a server that answers every line, past the pre-authentication
    budgets and the handshake deadline, and still closes an idle peer.
    """

    def run_example(self) -> tuple[dict[str, Any], MemoryReactorClock]:
        """
        Execute the example with C{reactor} a L{MemoryReactorClock}.
        """
        source = _docstring_example()
        line = "from twisted.internet import reactor\n"
        self.assertIn(line, source)
        reactor = MemoryReactorClock()
        namespace: dict[str, Any] = {"__name__": "example", "reactor": reactor}
        exec(compile(source.replace(line, ""), "framing-example", "exec"), namespace)
        return namespace, reactor

    def test_example_listens_with_its_protocol(self) -> None:
        """
        The example listens on loopback port 7000 with a factory that builds its C{Echo}.
        """
        namespace, reactor = self.run_example()
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (7000, "127.0.0.1"))
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.assertIsInstance(proto, namespace["Echo"])

    def test_example_answers_past_the_budgets_and_the_handshake_deadline(self) -> None:
        """
        The example's server answers 40 lines over 60 s (past the 16 lines before
        authentication and the 30 s handshake deadline); a line of 64 bytes is echoed, one
        of 65 refused; 10 s of silence closes it.
        """
        namespace, _ = self.run_example()
        clock = Clock()
        proto = namespace["Echo"](clock=clock)
        transport = StringTransport()
        proto.makeConnection(transport)
        clock.advance(proto.limits.greeting_delay)
        for number in range(40):
            proto.dataReceived(b"line %d\r\n" % number)
            clock.advance(1.5)
        self.assertFalse(transport.disconnecting)
        expected = [b"HELLO echo"] + [b"ECHO line %d" % number for number in range(40)]
        self.assertEqual(replies(transport), expected)
        proto.dataReceived(b"w" * 64 + b"\r\n")
        self.assertEqual(replies(transport)[-1], b"ECHO " + b"w" * 64)
        clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(replies(transport)[-1], b"ERR TIMEOUT idle timeout")
        proto2 = namespace["Echo"](clock=clock)
        transport2 = StringTransport()
        proto2.makeConnection(transport2)
        clock.advance(proto2.limits.greeting_delay)
        proto2.dataReceived(b"w" * 65 + b"\r\n")
        self.assertEqual(replies(transport2)[-1], b"ERR LINE_TOO_LONG line too long")

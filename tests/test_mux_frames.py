"""
Tests for L{netguard.mux.frames}: the yamux header, encoded and decoded, and every rule
checked without session state.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from netguard.mux import frames
from netguard.mux.frames import Flag, FrameError, FrameType, GoAwayCode, Header, Violation


def raw(version: int, kind: int, flags: int, stream_id: int, length: int) -> bytes:
    """
    A header with any field values, valid or not.
    """
    return struct.pack(">BBHII", version, kind, flags, stream_id, length)


class EncodeDecodeTests(unittest.TestCase):
    """
    Round trips of valid headers.
    """

    def test_layout(self) -> None:
        """
        The header is 12 bytes: version, type, flags, stream id, length, big-endian.
        """
        self.assertEqual(
            frames.encode(FrameType.WINDOW_UPDATE, Flag.SYN, 3, 0x01020304),
            b"\x00\x01\x00\x01\x00\x00\x00\x03\x01\x02\x03\x04",
        )
        self.assertEqual(frames.HEADER_SIZE, 12)

    def test_round_trip_each_type(self) -> None:
        """
        Every type decodes to the fields it was encoded with.
        """
        cases = [
            (FrameType.DATA, Flag.SYN | Flag.FIN, 1, 16384),
            (FrameType.WINDOW_UPDATE, Flag.ACK, 2, frames.MAX_UINT32),
            (FrameType.WINDOW_UPDATE, Flag.RST, 7, 0),
            (FrameType.PING, Flag.SYN, 0, 0xDEADBEEF),
            (FrameType.PING, Flag.ACK, 0, 0),
            (FrameType.GO_AWAY, Flag(0), 0, GoAwayCode.INTERNAL_ERROR),
        ]
        for kind, flags, stream_id, length in cases:
            header = frames.decode(frames.encode(kind, flags, stream_id, length))
            self.assertEqual(header, Header(kind, flags, stream_id, length))

    def test_decode_at_offset(self) -> None:
        """
        A header is read at any offset of a larger buffer.
        """
        buf = bytearray(b"xyz") + frames.encode(FrameType.DATA, 0, 5, 9)
        self.assertEqual(frames.decode(buf, 3), Header(FrameType.DATA, Flag(0), 5, 9))

    def test_encode_refuses_out_of_range(self) -> None:
        """
        Fields past 32 bits and unknown flags are refused when encoding.
        """
        self.assertRaises(ValueError, frames.encode, FrameType.DATA, 0, 2**32, 0)
        self.assertRaises(ValueError, frames.encode, FrameType.DATA, 0, 1, 2**32)
        self.assertRaises(ValueError, frames.encode, FrameType.DATA, 16, 1, 0)


class MalformedHeaderTests(unittest.TestCase):
    """
    Each rule of the framing, broken once: a L{FrameError} naming the rule.
    """

    def assert_violation(self, header: bytes, violation: Violation) -> None:
        """
        Decoding C{header} raises a L{FrameError} for C{violation}.
        """
        error = self.assertRaises(FrameError, frames.decode, header)
        self.assertIs(error.violation, violation)

    def test_version_one(self) -> None:
        """
        Version 1 (any but 0) is refused.
        """
        self.assert_violation(raw(1, 0, 0, 1, 0), Violation.BAD_VERSION)

    def test_unknown_type(self) -> None:
        """
        Type 4, one past go-away, and 255 are refused.
        """
        self.assert_violation(raw(0, 4, 0, 1, 0), Violation.UNKNOWN_TYPE)
        self.assert_violation(raw(0, 255, 0, 1, 0), Violation.UNKNOWN_TYPE)

    def test_unknown_flag(self) -> None:
        """
        Flag bit 0x10, one past RST, is refused.
        """
        self.assert_violation(raw(0, 0, 0x10, 1, 0), Violation.BAD_FLAGS)

    def test_syn_with_ack(self) -> None:
        """
        SYN and ACK together are refused.
        """
        self.assert_violation(raw(0, 1, 3, 1, 0), Violation.BAD_FLAGS)

    def test_ping_flags(self) -> None:
        """
        A ping needs exactly SYN or ACK: none, FIN or RST is refused.
        """
        for flags in (0, 4, 8, 1 | 4):
            self.assert_violation(raw(0, 2, flags, 0, 1), Violation.BAD_FLAGS)

    def test_go_away_flags(self) -> None:
        """
        A go-away with any flag is refused.
        """
        self.assert_violation(raw(0, 3, 1, 0, 0), Violation.BAD_FLAGS)

    def test_go_away_code_bound(self) -> None:
        """
        Go-away codes 0 to 2 are accepted; 3, one past, is refused.
        """
        self.assertEqual(frames.decode(raw(0, 3, 0, 0, 2)).length, 2)
        self.assert_violation(raw(0, 3, 0, 0, 3), Violation.BAD_LENGTH)

    def test_session_frames_on_a_stream(self) -> None:
        """
        Ping and go-away on a stream other than 0 are refused.
        """
        self.assert_violation(raw(0, 2, 1, 1, 0), Violation.BAD_STREAM_ID)
        self.assert_violation(raw(0, 3, 0, 2, 0), Violation.BAD_STREAM_ID)

    def test_stream_frames_on_stream_zero(self) -> None:
        """
        Data and window update on stream 0 are refused.
        """
        self.assert_violation(raw(0, 0, 0, 0, 0), Violation.BAD_STREAM_ID)
        self.assert_violation(raw(0, 1, 1, 0, 0), Violation.BAD_STREAM_ID)

    def test_data_with_rst_and_payload(self) -> None:
        """
        A data frame that carries a payload and RST is refused; RST alone on an empty data
        frame is accepted.
        """
        self.assert_violation(raw(0, 0, 8, 1, 1), Violation.BAD_FLAGS)
        self.assertEqual(frames.decode(raw(0, 0, 8, 1, 0)).flags, Flag.RST)


class ParityTests(unittest.TestCase):
    """
    Which side owns a stream id.
    """

    def test_parity(self) -> None:
        """
        Clients open odd ids, servers even ones.
        """
        self.assertTrue(frames.is_peer_stream(1, we_are_client=False))
        self.assertFalse(frames.is_peer_stream(2, we_are_client=False))
        self.assertTrue(frames.is_peer_stream(2, we_are_client=True))
        self.assertFalse(frames.is_peer_stream(3, we_are_client=True))


class DecodePropertyTests(unittest.TestCase):
    """
    Any 12 bytes decode to a valid header or raise L{FrameError}; nothing else.
    """

    @settings(max_examples=500, deadline=None)
    @given(header=st.binary(min_size=12, max_size=12))
    def test_any_header(self, header: bytes) -> None:
        """
        Arbitrary headers are decoded or refused with a named violation, and a decoded one
        encodes back to the same bytes.
        """
        try:
            decoded = frames.decode(header)
        except FrameError as error:
            self.assertIsInstance(error.violation, Violation)
            return
        encoded = frames.encode(decoded.type, decoded.flags, decoded.stream_id, decoded.length)
        self.assertEqual(encoded, header)

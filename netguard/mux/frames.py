# -*- test-case-name: tests.test_mux_frames -*-
"""
The yamux frame header: encode, decode and validate the rules that need no session state.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

#: version (1), type (1), flags (2), stream id (4), length (4), network byte order.
_HEADER = struct.Struct(">BBHII")
#: Bytes in every frame header.
HEADER_SIZE = _HEADER.size
#: Pack a header from fields already known to be valid (version, type, flags, stream id,
#: length as ints): the per-frame path of a session's own data frames, which
#: L{encode}'s checks would only repeat.
pack_header = _HEADER.pack
#: The only protocol version.
VERSION = 0
#: The largest value of the 32-bit stream id, length and window fields.
MAX_UINT32 = 0xFFFFFFFF
#: The window every stream starts with in each direction (the spec's 256 KiB).
INITIAL_WINDOW = 256 * 1024


class FrameType(enum.IntEnum):
    """
    The four frame types.
    """

    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3


class Flag(enum.IntFlag):
    """
    The four header flags.
    """

    SYN = 1
    ACK = 2
    FIN = 4
    RST = 8


_KNOWN_FLAGS = Flag.SYN | Flag.ACK | Flag.FIN | Flag.RST


class GoAwayCode(enum.IntEnum):
    """
    The go-away codes of the spec: normal end, protocol error, internal error.
    """

    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class Violation(enum.Enum):
    """
    Why a session was ended or a frame refused: a stable, loggable reason. The value is the
    text an owner logs.
    """

    BAD_VERSION = "bad-version"
    UNKNOWN_TYPE = "unknown-type"
    BAD_FLAGS = "bad-flags"
    BAD_STREAM_ID = "bad-stream-id"
    BAD_LENGTH = "bad-length"
    WINDOW_EXCEEDED = "window-exceeded"
    WINDOW_OVERFLOW = "window-overflow"
    DUPLICATE_SYN = "duplicate-syn"
    UNKNOWN_STREAM = "unknown-stream"
    FRAME_BEFORE_ACK = "frame-before-ack"
    DATA_AFTER_FIN = "data-after-fin"
    OPEN_RATE = "open-rate"
    RAPID_RESET = "rapid-reset"
    PING_FLOOD = "ping-flood"
    EMPTY_FRAME_FLOOD = "empty-frame-flood"
    PEER_NOT_READING = "peer-not-reading"
    KEEPALIVE_TIMEOUT = "keepalive-timeout"
    IDLE = "idle"
    REMOTE_GO_AWAY = "remote-go-away"
    LOCAL_GO_AWAY = "local-go-away"
    CONNECTION_LOST = "connection-lost"


class FrameError(Exception):
    """
    A frame that breaks a rule of the framing (its header) or of the session (found while
    handling it): the session must end with a protocol error.

    @ivar violation: which rule.
    @ivar detail: a short text for the log (never peer-controlled bytes, only numbers).
    """

    def __init__(self, violation: Violation, detail: str = "") -> None:
        super().__init__(violation.value, detail)
        self.violation = violation
        self.detail = detail


class Header(NamedTuple):
    """
    A decoded, validated frame header.

    @ivar type: the frame type.
    @ivar flags: the flags set (an int; compare with L{Flag} members).
    @ivar stream_id: the stream, 0 for ping and go-away.
    @ivar length: payload length (data), window delta (window update), opaque value (ping)
        or code (go-away).
    """

    type: FrameType
    flags: int
    stream_id: int
    length: int


_TYPES = tuple(FrameType)
_SYN, _ACK, _RST = int(Flag.SYN), int(Flag.ACK), int(Flag.RST)
_KNOWN = int(_KNOWN_FLAGS)


def encode(type: FrameType, flags: Flag | int, stream_id: int, length: int) -> bytes:
    """
    Encode a frame header.

    @param type: the frame type.
    @param flags: the flags.
    @param stream_id: the stream id (0 for session frames).
    @param length: the length field.
    @return: 12 bytes.
    @raise ValueError: if a field is out of range.
    """
    if not 0 <= stream_id <= MAX_UINT32 or not 0 <= length <= MAX_UINT32:
        raise ValueError("stream id and length are 32-bit unsigned")
    if int(flags) & ~int(_KNOWN_FLAGS):
        raise ValueError("unknown flag")
    return _HEADER.pack(VERSION, int(type), int(flags), stream_id, length)


def decode(buffer: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    """
    Decode and validate the header at C{offset}.

    Rules checked here (those that need no session state): version 0; a known type; only
    known flags; SYN and ACK not together; ping carries exactly one of SYN and ACK and
    nothing else; go-away carries no flag and a known code; ping and go-away use stream 0
    and every other type a stream other than 0; a data frame with a payload carries no RST.

    @param buffer: at least C{offset + HEADER_SIZE} bytes.
    @param offset: where the header starts.
    @return: the header.
    @raise FrameError: if a rule is broken.
    """
    version, raw_type, flags, stream_id, length = _HEADER.unpack_from(buffer, offset)
    if version != VERSION:
        raise FrameError(Violation.BAD_VERSION, f"version {version}")
    if raw_type >= len(_TYPES):
        raise FrameError(Violation.UNKNOWN_TYPE, f"type {raw_type}")
    type = _TYPES[raw_type]
    if flags & ~_KNOWN:
        raise FrameError(Violation.BAD_FLAGS, f"flags {flags:#x}")
    if flags & _SYN and flags & _ACK:
        raise FrameError(Violation.BAD_FLAGS, "SYN with ACK")
    if raw_type >= 2:
        if stream_id != 0:
            raise FrameError(Violation.BAD_STREAM_ID, f"{type.name} on stream {stream_id}")
        if type is FrameType.PING and flags not in (_SYN, _ACK):
            raise FrameError(Violation.BAD_FLAGS, f"ping flags {flags:#x}")
        if type is FrameType.GO_AWAY:
            if flags:
                raise FrameError(Violation.BAD_FLAGS, f"go-away flags {flags:#x}")
            if length > max(GoAwayCode):
                raise FrameError(Violation.BAD_LENGTH, f"go-away code {length}")
    else:
        if stream_id == 0:
            raise FrameError(Violation.BAD_STREAM_ID, f"{type.name} on stream 0")
        if type is FrameType.DATA and length and flags & _RST:
            raise FrameError(Violation.BAD_FLAGS, "data with RST")
    return Header(type, flags, stream_id, length)


def is_peer_stream(stream_id: int, we_are_client: bool) -> bool:
    """
    Whether C{stream_id} is one the peer opens: clients open odd ids, servers even ones.

    @param stream_id: a stream id other than 0.
    @param we_are_client: whether this end is the client.
    @return: True if the peer's side owns the id.
    """
    return stream_id % 2 == (0 if we_are_client else 1)

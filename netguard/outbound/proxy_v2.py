# -*- test-case-name: tests.test_proxy_v2 -*-
"""
The PROXY protocol version 2 header a service sends its backend (HAProxy's
C{send-proxy-v2}), so that the backend sees the real client, the user netguard
authenticated and the connection's id. The layout is HAProxy's C{proxy-protocol.txt},
section 2.2; what netguard sends and why: C{docs/operating.md}, the service key
C{send_proxy}.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

import attrs
from twisted.internet.address import IPv4Address, IPv6Address

from netguard.addresses import peer_ip

#: The twelve bytes every version 2 header starts with.
SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"

#: Version 2 (high nibble) with the LOCAL or the PROXY command (low nibble).
LOCAL: Final = 0x20
PROXY: Final = 0x21

#: Address family and transport: unspecified, TCP over IPv4, TCP over IPv6.
UNSPEC: Final = 0x00
TCP4: Final = 0x11
TCP6: Final = 0x21

#: The registered TLV types netguard sends.
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05

#: netguard's own TLV, from the range the specification leaves to applications
#: (C{PP2_TYPE_MIN_CUSTOM} 0xE0 to C{PP2_TYPE_MAX_CUSTOM} 0xEF): the authenticated user
#: name, UTF-8, unescaped.
PP2_TYPE_NETGUARD_USER: Final = 0xE0

#: The specification's bound on C{PP2_TYPE_UNIQUE_ID}.
MAX_UNIQUE_ID: Final = 128

#: The longest user name sent, in bytes (the users file allows 64 characters).
MAX_USER_BYTES: Final = 255

#: The longest header sent: the specification designs both versions to fit in the
#: smallest TCP segment every host must accept (576 - 40 bytes), so that the header
#: arrives at once. (Its length field alone would allow 16 + 65535 bytes.)
MAX_HEADER: Final = 536

_FIXED: Final = 16


class HeaderTooLarge(ValueError):
    """
    A header, or one of its values, is over its bound; nothing is sent.

    @ivar what: which bound (C{"header"}, C{"user"}, C{"unique_id"}, C{"tlv"}).
    @ivar size: the size asked for, in bytes.
    @ivar limit: the bound.
    """

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"PROXY v2 {what} of {size} bytes is over its bound of {limit}")
        self.what = what
        self.size = size
        self.limit = limit


@attrs.frozen
class ProxyOrigin:
    """
    What a backend is told about the session it serves.

    @ivar source: the client's address as netguard knows it (a C{haproxy:} listener's is the
        one its header named); anything but a TCP address (a unix socket's peer, L{None})
        is sent as an unspecified address.
    @ivar destination: the address the client connected to.
    @ivar user: the authenticated user name.
    @ivar unique_id: the id netguard logs the session under (the connection's, or the
        connection's and the stream's).
    """

    source: object
    destination: object
    user: str
    unique_id: str


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes) -> int:
    """
    The CRC32c (Castagnoli) of C{data}, as RFC 4960 appendix B and the PROXY protocol's
    C{PP2_TYPE_CRC32C} compute it.
    """
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def tlv(kind: int, value: bytes) -> bytes:
    """
    One type-length-value vector.

    @raise HeaderTooLarge: for a value longer than a length field holds.
    """
    if len(value) > 0xFFFF:
        raise HeaderTooLarge("tlv", len(value), 0xFFFF)
    return struct.pack("!BH", kind, len(value)) + value


def _ip(address: object) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """
    The IP address and port of a TCP address, an IPv4-mapped IPv6 address as IPv4; L{None}
    for any other address.
    """
    if not isinstance(address, (IPv4Address, IPv6Address)) or address.type != "TCP":
        return None
    ip = peer_ip(address.host)
    return None if ip is None else (ip, address.port)


def address_block(source: object, destination: object) -> tuple[int, bytes]:
    """
    The family byte and the address block for a connection from C{source} to
    C{destination}: TCP over IPv4 when both are IPv4 (IPv4-mapped IPv6 counts as IPv4),
    TCP over IPv6 when either is IPv6 (the other then IPv4-mapped, as HAProxy sends it),
    and no addresses (C{UNSPEC}) when either is not a TCP address.
    """
    source_end, destination_end = _ip(source), _ip(destination)
    if source_end is None or destination_end is None:
        return UNSPEC, b""
    (src, sport), (dst, dport) = source_end, destination_end
    if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
        return TCP4, src.packed + dst.packed + struct.pack("!HH", sport, dport)
    packed = [
        ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed).packed
        if isinstance(ip, ipaddress.IPv4Address)
        else ip.packed
        for ip in (src, dst)
    ]
    return TCP6, packed[0] + packed[1] + struct.pack("!HH", sport, dport)


def encode(
    command: int,
    family: int,
    addresses: bytes,
    tlvs: tuple[tuple[int, bytes], ...] = (),
    checksum: bool = True,
) -> bytes:
    """
    A whole version 2 header.

    @param command: L{PROXY} or L{LOCAL} (version included).
    @param family: the family and transport byte (L{TCP4}, L{TCP6}, L{UNSPEC}).
    @param addresses: the address block that goes with C{family}.
    @param tlvs: type and value of each TLV, in order.
    @param checksum: end with a C{PP2_TYPE_CRC32C} TLV over the whole header.
    @raise HeaderTooLarge: when the header would be longer than L{MAX_HEADER}.
    """
    body = addresses + b"".join(tlv(kind, value) for kind, value in tlvs)
    crc_size = 7 if checksum else 0
    size = _FIXED + len(body) + crc_size
    if size > MAX_HEADER:
        raise HeaderTooLarge("header", size, MAX_HEADER)
    head = SIGNATURE + struct.pack("!BBH", command, family, len(body) + crc_size)
    if not checksum:
        return head + body
    unchecked = head + body + tlv(PP2_TYPE_CRC32C, b"\0\0\0\0")
    return unchecked[:-4] + struct.pack("!I", crc32c(unchecked))


def header_for(origin: ProxyOrigin) -> bytes:
    """
    The header a backend gets for C{origin}: the PROXY command with the client's and the
    connection's TCP addresses, then C{PP2_TYPE_UNIQUE_ID}, L{PP2_TYPE_NETGUARD_USER} and
    C{PP2_TYPE_CRC32C}.

    A client without a TCP address (on a unix socket) gets the LOCAL command with no
    addresses (C{UNSPEC}): the receiver keeps the connection's own endpoints, the gateway's,
    which is where such a client is. The specification lets a receiver refuse the PROXY
    command with C{UNSPEC}, and HAProxy 2.6 does (it accepts LOCAL). The TLVs are sent
    either way, for receivers that read them on LOCAL too (HAProxy 2.6 ignores them there).

    @raise HeaderTooLarge: for a user name over L{MAX_USER_BYTES} or an id over
        L{MAX_UNIQUE_ID} bytes.
    """
    user = origin.user.encode("utf-8")
    if len(user) > MAX_USER_BYTES:
        raise HeaderTooLarge("user", len(user), MAX_USER_BYTES)
    unique_id = origin.unique_id.encode("utf-8")
    if len(unique_id) > MAX_UNIQUE_ID:
        raise HeaderTooLarge("unique_id", len(unique_id), MAX_UNIQUE_ID)
    family, addresses = address_block(origin.source, origin.destination)
    return encode(
        LOCAL if family == UNSPEC else PROXY,
        family,
        addresses,
        ((PP2_TYPE_UNIQUE_ID, unique_id), (PP2_TYPE_NETGUARD_USER, user)),
    )

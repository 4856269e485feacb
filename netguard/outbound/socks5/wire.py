# -*- test-case-name: tests.test_socks5 -*-
"""
The values SOCKS5 messages carry (RFC 1928/1929): versions, the CONNECT command,
authentication methods, address types and an address.

The protocol is described in C{docs/endpoints.md}.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs

__all__ = [
    "AUTH_VERSION",
    "CMD_CONNECT",
    "SOCKS_VERSION",
    "AddressType",
    "Method",
    "SOCKSAddress",
]

#: The SOCKS protocol version (RFC 1928).
SOCKS_VERSION: Final = 5
#: The version of the username/password sub-negotiation (RFC 1929).
AUTH_VERSION: Final = 1
#: The CONNECT command.
CMD_CONNECT: Final = 1


class Method(enum.IntEnum):
    """
    The authentication methods of RFC 1928 that this client knows.
    """

    NO_AUTH = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class AddressType(enum.IntEnum):
    """
    The address types (ATYP) of RFC 1928.
    """

    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


@attrs.frozen
class SOCKSAddress:
    """
    An address as a SOCKS5 message carries it.

    @ivar address_type: the ATYP.
    @ivar host: the dotted-quad or compressed IPv6 text, or the domain name; a domain name that
        came from the proxy has passed L{is_valid_bound_name} (printable ASCII, LDH labels or
        a textual address).
    @ivar port: the port, 0..65535.
    """

    address_type: AddressType
    host: str
    port: int

    def __str__(self) -> str:
        """
        @return: C{host:port}, with brackets around an IPv6 address.
        """
        if self.address_type is AddressType.IPV6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

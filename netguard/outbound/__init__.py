"""
Outbound connections: the SOCKS5 client endpoint (L{SOCKS5ClientEndpoint}, also the
C{socks5:} endpoint string) and the gateway's backend legs.
"""

from netguard.outbound.socks5 import SOCKS5ClientEndpoint

__all__ = ["SOCKS5ClientEndpoint"]

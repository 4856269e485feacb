# -*- test-case-name: tests.test_proxy_header -*-
"""
C{haproxy:} listener strings: who may send a PROXY header (C{proxy_from=}, and this host by
default), taking a C{haproxy:[proxy_from=NETWORKS:]<listener>} string apart, and checking one
for C{check-config} and the start (the listener it wraps is checked by
L{netguard.endpoints.check_listener}, which hands C{haproxy:} strings here). Reading the
header itself is L{netguard.proxy_header}'s job.

The listener string is described in C{docs/operating.md} (section 4.1, C{haproxy:}).
"""

from __future__ import annotations

import ipaddress
from typing import Final

import attrs

from netguard.endpoints import (
    EndpointError,
    Field,
    Listener,
    _unknown_option,
    check_listener,
    join_fields,
    split_description,
)
from netguard.quoting import toml_string, truncate

__all__ = [
    "DEFAULT_PROXY_FROM",
    "MAX_PROXY_FROM",
    "Network",
    "ProxyListener",
    "check_proxy_listener",
    "parse_proxy_from",
    "split_proxy_listener",
]

#: Who may send a PROXY header to a C{haproxy:} listener that names no C{proxy_from=}: this
#: host only (a unix socket's senders are decided by its mode, not by this).
DEFAULT_PROXY_FROM: Final = ("127.0.0.0/8", "::1/128")

#: The most networks one C{proxy_from=} may list.
MAX_PROXY_FROM: Final = 64

_PROXY_FROM_HELP: Final = (
    "write haproxy:proxy_from=ADDR[,NETWORK...]:<listener>, e.g. "
    "haproxy:proxy_from=192.0.2.10,10.1.0.0/24:tcp:7701 (an IPv6 address's colons as \\:)"
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class ProxyListener:
    """
    A C{haproxy:} listener string taken apart.

    @ivar senders: the networks whose connections may send a PROXY header, in order, or
        L{None} when the string names none (then L{DEFAULT_PROXY_FROM} applies).
    @ivar inner: the endpoint string of the listener underneath.
    """

    senders: tuple[Network, ...] | None
    inner: str

    def networks(self) -> tuple[Network, ...]:
        """
        The senders in force: the ones given, or L{DEFAULT_PROXY_FROM}.
        """
        if self.senders is not None:
            return self.senders
        return tuple(ipaddress.ip_network(text) for text in DEFAULT_PROXY_FROM)


def parse_proxy_from(value: str) -> tuple[Network, ...]:
    """
    Parse the value of C{proxy_from=}: comma-separated IP addresses (one host each) or
    networks in CIDR form without host bits (C{10.1.0.0/24}, not C{10.1.0.5/24}).

    @return: the networks, in order, duplicates dropped; an IPv4-mapped IPv6 address or
        network is given as the IPv4 one it stands for.
    @raise EndpointError: on an empty list, more than L{MAX_PROXY_FROM} entries, or an
        entry that is not an address or network.
    """
    items = [item.strip() for item in value.split(",")]
    if not value.strip() or not all(items):
        raise EndpointError(f"proxy_from= needs addresses or networks; {_PROXY_FROM_HELP}")
    if len(items) > MAX_PROXY_FROM:
        raise EndpointError(f"proxy_from= lists more than {MAX_PROXY_FROM} networks")
    networks: list[Network] = []
    for item in items:
        try:
            network: Network = ipaddress.ip_network(item, strict=True)
        except ValueError as e:
            raise EndpointError(
                f"proxy_from= entry {toml_string(truncate(item, 60))} is not an IP address or "
                f"network ({e}); {_PROXY_FROM_HELP}"
            ) from None
        if isinstance(network, ipaddress.IPv6Network):
            mapped = network.network_address.ipv4_mapped
            if mapped is not None and network.prefixlen >= 96:
                network = ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
        if network not in networks:
            networks.append(network)
    return tuple(networks)


def split_proxy_listener(description: str) -> ProxyListener:
    """
    Take a C{haproxy:[proxy_from=NETWORKS:]<listener>} string apart (C{proxy_from=} may only
    come right after C{haproxy:}; any other option there belongs to no one).

    @raise EndpointError: if it is not such a string, or C{proxy_from=} is not valid.
    """
    fields = split_description(description)
    if fields[0].key is not None or fields[0].value.lower() != "haproxy":
        raise EndpointError("is not a haproxy: listener")
    rest = fields[1:]
    senders = None
    if rest and rest[0].key is not None:
        if rest[0].key != "proxy_from":
            raise _unknown_option(rest[0].key, "a haproxy: listener", ("proxy_from",))
        senders = parse_proxy_from(rest[0].value)
        rest = rest[1:]
    if not rest:
        raise EndpointError("haproxy: needs a listener after it, e.g. haproxy:tcp:7700:...")
    return ProxyListener(senders, join_fields(rest))


def check_proxy_listener(fields: list[Field]) -> Listener:
    """
    Check a C{haproxy:} listener: its C{proxy_from=} and the listener it wraps; say in its
    exposure who may send the header, and warn where the senders do not fit the listener.
    """
    proxy = split_proxy_listener(join_fields(fields))
    inner = check_listener(proxy.inner, nested=True)
    warnings = [inner.warning] if inner.warning else []
    unix = inner.exposure.startswith("local unix socket")
    if unix and proxy.senders is not None:
        raise EndpointError(
            "proxy_from= does not apply to a unix listener: the socket's mode decides who may "
            "send a PROXY header; remove proxy_from= or listen on TCP"
        )
    if unix:
        senders = "PROXY headers from whoever the socket's mode lets connect"
    else:
        shown = ", ".join(str(n) for n in proxy.networks())
        default = "" if proxy.senders is not None else " (the default: no proxy_from=)"
        senders = f"PROXY headers accepted only from {shown}{default}"
    if not unix and proxy.senders is None and inner.network:
        warnings.append(
            "accepts PROXY headers only from this host (no proxy_from=), so a proxy on "
            "another host is refused; add proxy_from=ADDR[,NETWORK...] naming the proxies"
        )
    if any(n.prefixlen == 0 for n in proxy.senders or ()):
        warnings.append(
            "has proxy_from= with a /0 network: anyone who can reach it may write any client "
            "address in a PROXY header; list only the proxies' addresses"
        )
    normalized = [Field(None, "haproxy")]
    if proxy.senders is not None:
        normalized.append(Field("proxy_from", ",".join(str(n) for n in proxy.senders)))
    return Listener(
        join_fields(normalized) + ":" + inner.description,
        f"{inner.exposure}; client addresses come from the PROXY header; {senders}",
        inner.network,
        "; ".join(warnings) or None,
    )

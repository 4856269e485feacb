# -*- test-case-name: tests.test_config -*-
"""
The address each listener binds, so that two listeners that would take the same one (the
same TCP port and interface, a wildcard and an address under it, or one unix socket path
spelt two ways) are refused when the configuration loads, not after twistd forked.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable

import attrs

from netguard.endpoints import EndpointError, quote_field, split_description
from netguard.proxy_listener import split_proxy_listener

#: Where each listener type takes its port and interface when they are given by position.
_TCP_POSITIONS = {"tcp": (0, 1), "tcp6": (0, 2), "ssl": (0, 4), "tls": (1, 3)}

#: The interface a TCP listener binds when none is given (Twisted's defaults).
_TCP_DEFAULT = {"tcp": "0.0.0.0", "tcp6": "::", "ssl": "0.0.0.0", "tls": "::"}

#: The port a listener type takes when none is given (Twisted's C{tls:} server: 443).
_PORT_DEFAULT = {"tls": "443"}


@attrs.frozen
class BindAddress:
    """
    What one listener binds: a TCP port on an interface, a unix socket path (resolved), or,
    for a listener whose address netguard cannot read (C{systemd:}, plugins), its string.

    @ivar kind: C{"tcp"}, C{"unix"} or C{"other"}.
    @ivar host: the interface's address, in its compressed form (TCP only).
    @ivar port: the port (TCP only; 0 is any free port and never clashes).
    @ivar path: the resolved socket path, the abstract name, or the other listener's string.
    """

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""

    def clashes(self, other: BindAddress) -> bool:
        """
        Whether binding both would fail: the same path; the same TCP port on the same
        interface, or on a wildcard that covers the other (C{0.0.0.0} every IPv4 address,
        C{::} every address, since Twisted leaves IPv6 sockets dual-stack).
        """
        if self.kind != other.kind:
            return False
        if self.kind != "tcp":
            return self.path == other.path
        if self.port == 0 or self.port != other.port:
            return False
        return (
            self.host == other.host
            or _covers(self.host, other.host)
            or _covers(other.host, self.host)
        )

    def describe(self) -> str:
        """
        The address in words, for an error message.
        """
        if self.kind == "tcp":
            return f"{self.host} port {self.port}"
        if self.kind == "unix":
            return f"the unix socket {self.path}"
        return "the same listener"


def _covers(wildcard: str, host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if wildcard == "::":
        return True
    return wildcard == "0.0.0.0" and address.version == 4


def _normal_host(text: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text  # a name Twisted would resolve: compared as given
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)  # binds the IPv4 address itself
    return address.compressed


def _unix_path(path: str) -> str:
    if path.startswith(("\0", "@")):
        return path  # an abstract name is no file: compared as given
    return os.path.realpath(path)


def bind_address(description: str) -> BindAddress:
    """
    The address a checked server endpoint string binds.

    @param description: a listener string as L{netguard.endpoints.check_listener}
        normalized it, or a unix socket given as C{unix:PATH}.
    @return: its L{BindAddress}; C{kind="other"} when netguard cannot read one.
    """
    try:
        fields = split_description(description)
        kind = fields[0].value.lower()
        if kind == "haproxy":
            return bind_address(split_proxy_listener(description).inner)
    except EndpointError:
        return BindAddress("other", path=description)
    positional = [f.value for f in fields[1:] if f.key is None]
    named = {f.key: f.value for f in fields[1:] if f.key is not None}
    if kind in _TCP_POSITIONS:
        at_port, at_interface = _TCP_POSITIONS[kind]
        given_port = positional[at_port] if len(positional) > at_port else None
        port = named.get("port", given_port) or _PORT_DEFAULT.get(kind, "")
        given = positional[at_interface] if len(positional) > at_interface else None
        host = named.get("interface", given) or _TCP_DEFAULT[kind]
        if port.isdigit():
            return BindAddress("tcp", host=_normal_host(host), port=int(port))
    if kind == "unix":
        path = named.get("address", positional[0] if positional else "")
        if path:
            return BindAddress("unix", path=_unix_path(path))
    return BindAddress("other", path=description)


def unix_listener(path: str) -> str:
    """
    The C{unix:} listener string of a socket path (the control socket's), escaped.
    """
    return "unix:" + quote_field(path, value=False)


def first_clash(
    listeners: Iterable[tuple[str, str]],
) -> tuple[tuple[str, str], tuple[str, str], BindAddress] | None:
    """
    The first listener that binds what an earlier one binds, or is the same string in the
    same list (a TCP port 0, any free port, in two settings, e.g. C{listen} and
    C{ops.metrics_listen}, is not: each gets its own).

    @param listeners: C{(key, description)} in the order they are configured.
    @return: C{(earlier, later, address)}, each listener as its C{(key, description)}, or
        L{None} when every address is distinct.
    """
    seen: list[tuple[tuple[str, str], BindAddress]] = []
    for key, description in listeners:
        address = bind_address(description)
        for earlier, bound in seen:
            same = earlier[1] == description and (
                address.kind != "tcp" or address.port != 0 or _list(earlier[0]) == _list(key)
            )
            if same or bound.clashes(address):
                return earlier, (key, description), address
        seen.append(((key, description), address))
    return None


def _list(key: str) -> str:
    """
    The setting a listener's key belongs to: C{listen} for C{listen[2]}.
    """
    return key.split("[", 1)[0]

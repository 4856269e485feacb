# -*- test-case-name: tests.test_socks5,tests.test_client_endpoint -*-
"""
Client endpoint string parsers contributed by netguard to C{clientFromString}.

Each parser is a small class providing L{IStreamClientEndpointStringParserWithReactor} and
L{IPlugin}, instantiated once at module level (Twisted's plugin system finds plugins as module
attributes). The parsers only delegate: the grammar, validation and documentation of each
prefix live next to the endpoint they build, and are imported only when a string with that
prefix is parsed, so that a problem there can never break plugin discovery for anything else.

  - C{socks5:}: L{netguard.outbound.socks5.SOCKS5ClientEndpoint}; grammar in
    C{docs/endpoints.md}.
  - C{netguard:}: L{netguard.client.endpoint.NGPClientEndpoint}; grammar in that module and in
    C{docs/endpoints.md}.

This directory must not contain an C{__init__.py}: C{twisted.plugins} is extended through its
C{__path__}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import (
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
)
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class SOCKS5EndpointParser:
    """
    Parses C{socks5:host=...:port=...:proxy_host=...} into a SOCKS5 client endpoint.
    """

    prefix = "socks5"

    def parseStreamClient(self, reactor: Any, *args: str, **kwargs: str) -> IStreamClientEndpoint:
        """
        Build the endpoint described by the parts of a C{socks5:} string.

        @param reactor: the reactor given to C{clientFromString}.
        @param args: positional parts (none are accepted).
        @param kwargs: the C{key=value} parts.
        @return: a L{netguard.outbound.socks5.SOCKS5ClientEndpoint}.
        @raise ValueError: if the description is invalid.
        """
        from netguard.outbound.socks5 import endpoint_from_string_args

        endpoint: Any = endpoint_from_string_args(reactor, *args, **kwargs)
        return endpoint


#: The C{socks5:} parser instance that the plugin system discovers.
socks5_endpoint_parser = SOCKS5EndpointParser()


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class NetguardEndpointParser:
    """
    Parses C{netguard:host=...:port=...:service=...:user=...:password_file=...} into an
    endpoint whose connections reach a service behind a netguard gateway, authenticated.
    """

    prefix = "netguard"

    def parseStreamClient(self, reactor: Any, *args: str, **kwargs: str) -> IStreamClientEndpoint:
        """
        Build the endpoint described by the parts of a C{netguard:} string.

        @return: a L{netguard.client.mux_endpoint.MuxClientEndpoint} (C{mux=yes}, the
            default; call its C{close()} when done) or a
            L{netguard.client.endpoint.NGPClientEndpoint} (C{mux=no}).
        @raise ValueError: if the description is invalid.
        """
        from netguard.client.endpoint import endpoint_from_string_args

        endpoint: Any = endpoint_from_string_args(reactor, *args, **kwargs)
        return endpoint


#: The C{netguard:} parser instance that the plugin system discovers.
netguard_endpoint_parser = NetguardEndpointParser()

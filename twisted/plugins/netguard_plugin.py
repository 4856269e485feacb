# -*- test-case-name: tests.test_plugin -*-
"""
The C{twistd netguard} plugin: a pointer to L{netguard.tap}, which holds the options and
assembles the gateway service.

This module lives in C{twisted/plugins/} (not a package) so that Twisted's plugin system finds
it both in a source checkout and in an installed copy.
"""

from twisted.application.service import ServiceMaker

service_maker = ServiceMaker(
    "netguard",
    "netguard.tap",
    "Hardened single-port gateway: SCRAM auth, bounded framing, relay.",
    "netguard",
)

# -*- test-case-name: tests.test_gateway_protocol,tests.test_tunnel -*-
"""
Keeping Twisted's stream transports on CPython's shared instance keys: a process that holds
many idle connections (the gateway, the tunnel) enters the names Twisted's transports set
late into each class's shared keys once, at start-up, so that no connection pays for an
instance dict of its own. The measurements: C{docs/performance.md}, "Memory".
"""

from __future__ import annotations

from typing import Any

#: Names Twisted's TCP transports set on themselves after their constructor (on the first
#: write, producer, half-close or close; C{doRead}, C{doWrite} and C{connected} while a
#: client connects, and C{doWrite} while the kernel relay moves a direction), class
#: attributes until then.
TRANSPORT_LATE_NAMES = (
    "connected",
    "doRead",
    "doWrite",
    "dataBuffer",
    "offset",
    "producer",
    "streamingProducer",
    "producerPaused",
    "disconnecting",
    "disconnected",
    "_writeDisconnecting",
    "_writeDisconnected",
)


#: Names Twisted's client transports set late besides: C{realAddress} a turn of the reactor
#: after C{connectTCP} (once the address is resolved), C{logstr} once connected. Not class
#: attributes all of them (C{realAddress} is not), so they are entered for the classes that
#: resolve an address (C{tcp.Client}, C{unix.Client}).
CLIENT_LATE_NAMES = ("realAddress", "logstr")


def transport_classes() -> tuple[type, ...]:
    """
    Twisted's stream transport classes a gateway's connections use: TCP and Unix-socket
    C{Server} (listeners) and C{Client} (backends).
    """
    from twisted.internet import tcp, unix

    return (tcp.Server, tcp.Client, unix.Server, unix.Client)


def share_transport_keys(classes: tuple[type, ...] | None = None) -> None:
    """
    Enter the names Twisted's TCP transports set late into their classes' shared instance
    keys, on one throwaway instance each, before connections arrive.

    CPython 3.11 stops adding names to a class's shared keys once about 30 instances
    exist; a transport that then sets one of these names for the first time (C{offset} on
    its first write) gets a full instance dict of its own, a 768-byte block, for every
    connection accepted in a burst. Setting them once at start-up keeps every transport's
    dict shared. Nothing else changes: the throwaway instances are never used.

    @param classes: the transport classes; Twisted's TCP and Unix-socket C{Server} and
        C{Client} by default (listeners and backends may be either).
    """
    if classes is None:
        classes = transport_classes()
    for cls in classes:
        instance: Any = object.__new__(cls)
        for name in TRANSPORT_LATE_NAMES:
            if hasattr(cls, name):
                setattr(instance, name, getattr(cls, name))
        if hasattr(cls, "resolveAddress"):
            for name in CLIENT_LATE_NAMES:
                setattr(instance, name, getattr(cls, name, None))

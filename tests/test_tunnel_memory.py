# -*- test-case-name: tests.test_tunnel_memory -*-
"""
What an idle tunnelled connection keeps in the tunnel: the transports' and protocols'
instance dicts stay on CPython's shared keys however many connections arrive at once, and
a stream's opener keeps nothing the opening alone needed. Figures: C{docs/multiplexing.md}
section 8.5.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.trial import unittest

from netguard.client import tunnel as tunnel_module
from netguard.client.tunnel import TunnelConnection, TunnelFactory, _RemoteSide
from tests.test_mux_endpoint import _hand_fed_opener
from tests.test_tunnel import RefusingEndpoint

#: Bytes a connected protocol may allocate beyond its constructor's (none is the aim; a
#: dict that must grow for a name set late costs hundreds).
LATE_NAME_BYTES = 64


def bytes_to_connect(make: Any) -> float:
    """
    Sixty-four instances made at once (a burst of accepts), then each given the names
    Twisted sets on a protocol when it connects it: the bytes that allocated, per instance.
    """
    instances = [make() for _ in range(64)]
    transports = [object() for _ in instances]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for instance, transport in zip(instances, transports, strict=True):
            instance.transport = transport
            instance.connected = 1
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / len(instances)


class SharedKeysTests(unittest.TestCase):
    def setUp(self) -> None:
        self.factory = TunnelFactory(Clock(), RefusingEndpoint([]))  # type: ignore[arg-type]

    def test_factory_shares_twisted_transport_names(self) -> None:
        """
        Building the tunnel's factory enters the names Twisted's transports set late into
        their shared keys, as the gateway's does.
        """
        calls: list[object] = []
        self.patch(tunnel_module, "share_transport_keys", lambda *a: calls.append(a))
        TunnelFactory(Clock(), RefusingEndpoint([]))  # type: ignore[arg-type]
        self.assertEqual(calls, [()])

    def test_local_connections_connect_without_growing(self) -> None:
        """
        Local connections accepted in a burst and connected afterwards allocate nothing more
        for the names Twisted sets then (they were set in the constructor).
        """

        class Fresh(TunnelConnection):
            pass  # a fresh class: its shared keys start empty, as at process start

        self.assertLess(bytes_to_connect(lambda: Fresh(self.factory)), LATE_NAME_BYTES)

    def test_gateway_sides_connect_without_growing(self) -> None:
        """
        The gateway side of each connection, connected once its stream is open (long after
        the burst), allocates nothing more for those names either.
        """

        class Fresh(_RemoteSide):
            pass

        local = TunnelConnection(self.factory)
        self.assertLess(bytes_to_connect(lambda: Fresh(local)), LATE_NAME_BYTES)


class OpenerTests(unittest.TestCase):
    def test_opener_has_no_instance_dict(self) -> None:
        """
        A stream's opener keeps its state in slots.
        """
        opener, _ = _hand_fed_opener()
        self.assertFalse(hasattr(opener, "__dict__"))

    def test_opened_stream_drops_what_opening_needed(self) -> None:
        """
        Once the gateway answered C{OK OPEN}, the opener no longer holds the application's
        factory or the answer's buffer; bytes still reach the application.
        """
        opener, _ = _hand_fed_opener()
        opener.dataReceived(b"OK OPEN echo\r\nfirst")
        self.assertIsNone(opener.factory)
        self.assertIsNone(opener._answer)
        app = opener.app
        self.assertIsNotNone(app)
        opener.dataReceived(b" second")
        self.assertEqual(app.data, b"first second")

    def test_refused_stream_keeps_its_error(self) -> None:
        """
        A refusal still fails the connect with the gateway's error (the release of the
        opening's state applies only to an opened stream).
        """
        opener, _ = _hand_fed_opener()
        opener.dataReceived(b"ERR NO_SERVICE no such service\r\n")
        failure = self.failureResultOf(opener.result)
        self.assertEqual(failure.value.code, "NO_SERVICE")
        self.assertIsInstance(opener.factory, Factory)

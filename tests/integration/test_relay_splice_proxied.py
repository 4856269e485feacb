"""
The kernel relay behind a C{haproxy:} listener, end to end: the real gateway on loopback
with a C{haproxy:} listener, real HAProxy (Debian package C{haproxy}, C{send-proxy-v2}, run
in the foreground, stopped by PID) in front of it, the real NGP/1 client connecting to
HAProxy, and a real backend process (the L{PEER_SCRIPT} servers of
L{tests.integration.test_relay_real}).

What is proven here: once the PROXY header is consumed, the client's leg is relayed in the
kernel on the socket under the header's wrapper (the leg holds a L{KernelSplice}, the
gateway's pipe pool counts it and no fall-back), 64 MiB of random bytes each way arrive
unchanged (SHA-256 on both ends), the client's half-close reaches the backend and the
backend's close reaches the client, and the close event's byte counts are exact.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint

from netguard.config import load_config
from netguard.relay_splice import KernelSplice
from tests.integration import test_relay_real
from tests.integration.test_relay_real import (
    WAIT,
    RelayRealTestCase,
)
from tests.integration.test_relay_splice import SKIP, both_ways
from tests.integration.util import haproxy_tcp_config, start_haproxy


class KernelRelayBehindHAProxyTests(RelayRealTestCase):
    """
    A client through HAProxy and a C{haproxy:} listener is relayed in the kernel.
    """

    skip = SKIP
    SIZE = 64 * 1024 * 1024
    timeout = 300

    def start_proxied_gateway(self, services: list[str]) -> None:
        """
        Start the gateway with one C{haproxy:} listener on 127.0.0.1 and HAProxy in front of
        it; the client connects to HAProxy.
        """

        def proxied(path: Any, overrides: dict[str, Any]) -> Any:
            listen = ["haproxy:tcp:0:interface=127.0.0.1"]
            return load_config(path, {**overrides, "listen": listen})

        self.patch(test_relay_real, "load_config", proxied)
        self.start_gateway(services)
        back = self.port
        # A plain TCP proxy sending a version 2 header, with 120 s timeouts.
        self.port = start_haproxy(
            self,
            self.tmp,
            lambda front: haproxy_tcp_config(front, back, "send-proxy-v2", timeout=120),
            WAIT,
        )

    def pipes(self) -> Any:
        return self.gateway.factory._backend_endpoints.pipes

    def endpoint(self) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)

    @inlineCallbacks
    def test_bulk_both_ways_in_the_kernel(self) -> Any:
        """
        64 MiB of random bytes each way at once through HAProxy and the C{haproxy:}
        listener: the relay is a L{KernelSplice} on the socket under the header's wrapper
        (the pipe pool counts one kernel relay, no fall-back), both streams arrive unchanged
        (the backend reports the SHA-256 of what it read after the client's half-close, the
        client checks what it got), and C{conn.close} counts every byte.
        """
        backend_seed = self.rng.randrange(1 << 30)
        port = self.start_peer("sinksource", backend_seed, self.SIZE)
        self.start_proxied_gateway([f"both=tcp:host=127.0.0.1:port={port}"])
        ours = self.rng.randbytes(self.SIZE)
        theirs = random.Random(backend_seed).randbytes(self.SIZE)
        client = yield self.open("both")
        relay = self.legs[0].splice
        self.assertIsInstance(relay, KernelSplice)
        session = self.relaying_session()
        self.assertIsNot(relay._ab.source, session.transport)  # the socket, not the wrapper
        self.assertIs(relay._ab.source, session.transport.socket_transport())
        yield both_ways(self, client, ours, theirs, WAIT * 4)
        self.assertTrue(relay.spliced)
        self.assertEqual((self.pipes().relays, self.pipes().fallbacks), (1, 0))
        self.assertEqual(self.pipes().in_use, 0)

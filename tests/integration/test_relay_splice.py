"""
The kernel relay end to end: the real gateway on loopback, the real NGP/1 client, and real
backend processes (the L{PEER_SCRIPT} servers of L{tests.integration.test_relay_real}).

What is proven here:
  - between a plain client and a plain C{tcp:} backend the relay runs in the kernel (the
    gateway's pipe pool counts it, the leg holds a L{KernelSplice}), and 32 MiB of random
    bytes each way, at once, arrive unchanged (SHA-256 on both ends), with the close event's
    byte counts exact;
  - TCP urgent data from the client is skipped, as the ordinary relay skips it, and the
    bytes after it arrive, without a busy loop;
  - an idle kernel relay holds no timer of its own, no bound method in its transports, and
    its backend leg lets go of what only the opening needed;
  - C{kernel_relay = false} in a service's table keeps that service on the ordinary relay;
  - a client on a TLS listener is relayed by the ordinary relay, with its bytes intact.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import types
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater

from netguard import relay_flow
from netguard.client.endpoint import NGPClientEndpoint, wrap_tls
from netguard.relay import Splice
from netguard.relay_splice import KernelSplice
from netguard.tls import public_key_pin
from tests import tls_certs
from tests.integration.test_relay_real import (
    WAIT,
    ChunkSender,
    RelayRealTestCase,
    random_chunks,
    sha,
    wait_until,
)
from tests.integration.test_tls_gateway import Echoed
from tests.integration.util import RunningGateway, wait_for

SKIP = None if hasattr(os, "splice") else "os.splice is not available (Linux, Python 3.10+)"


@inlineCallbacks
def both_ways(case: Any, client: Any, ours: bytes, theirs: bytes, closed_within: float) -> Any:
    """
    Send C{ours} through C{client} to the C{sinksource} backend, half-closing after it; check
    that C{theirs} came back whole, then the sink's report of what it got, and the byte
    counts of the close event.
    """
    sender = ChunkSender(client.transport, random_chunks(case.rng, ours), half_close=True)
    yield sender.start().addTimeout(WAIT, reactor)
    yield client.wait_closed(timeout=closed_within)
    received = bytes(client.data)
    size = len(theirs)
    case.assertEqual(sha(received[:size]), sha(theirs), "down " + case.note())
    report = f"{len(ours)} {sha(ours)}\n".encode()
    case.assertEqual(received[size:], report, "up " + case.note())
    yield wait_until(lambda: case.logged("conn.close"), "the close event")
    close = case.logged("conn.close")[0]
    case.assertEqual((close["bytes_up"], close["bytes_down"]), (len(ours), size + len(report)))


class KernelRelayGatewayTests(RelayRealTestCase):
    """
    The gateway relays plain sockets in the kernel, or not, as configured.
    """

    skip = SKIP
    SIZE = 32 * 1024 * 1024

    def pipes(self) -> Any:
        return self.gateway.factory._backend_endpoints.pipes

    @inlineCallbacks
    def test_bulk_both_ways_in_the_kernel(self) -> Any:
        """
        32 MiB of random bytes each way at once, through a kernel relay: both arrive
        unchanged (the backend reports the SHA-256 of what it read, the client checks what
        it got), the relay was a L{KernelSplice}, and C{conn.close} counts every byte.
        """
        backend_seed = self.rng.randrange(1 << 30)
        port = self.start_peer("sinksource", backend_seed, self.SIZE)
        self.start_gateway([f"both=tcp:host=127.0.0.1:port={port}"])
        ours = self.rng.randbytes(self.SIZE)
        theirs = random.Random(backend_seed).randbytes(self.SIZE)
        client = yield self.open("both")
        self.assertIsInstance(self.legs[0].splice, KernelSplice)
        yield both_ways(self, client, ours, theirs, WAIT)
        self.assertEqual((self.pipes().relays, self.pipes().fallbacks), (1, 0))
        self.assertEqual(self.pipes().in_use, 0)

    @inlineCallbacks
    def test_live_counts(self) -> Any:
        """
        While a kernel relay runs, the gateway's live figures count the bytes it moved both
        ways (the session itself never sees the client's bytes).
        """
        port = self.start_peer("echo")
        self.start_gateway([f"echo2=tcp:host=127.0.0.1:port={port}"])
        payload = self.rng.randbytes(1 << 20)
        client = yield self.open("echo2")
        client.transport.write(payload)
        yield client.wait_for(lambda c: c.count >= len(payload), "the echo")
        self.assertIsInstance(self.legs[0].splice, KernelSplice)
        self.assertEqual(self.gateway.factory.stats.live_bytes(), (len(payload), len(payload)))

    @inlineCallbacks
    def test_urgent_data(self) -> Any:
        """
        The client sends C{abc}, a TCP urgent byte, then C{def} through a kernel relay that
        splices (the path is proven taken): the echo brings back C{abcdef}, in order, the
        urgent byte skipped as the ordinary relay skips it, and once it is back the relay
        makes at most two splice calls in 200 reactor turns (no busy loop at the mark).
        """
        self.patch(relay_flow, "SMALL", 0)  # the directions stay in splice mode
        port = self.start_peer("echo")
        self.start_gateway([f"echo2=tcp:host=127.0.0.1:port={port}"])
        client = yield self.open("echo2")
        relay = self.legs[0].splice
        self.assertIsInstance(relay, KernelSplice)
        relay._ab.small = relay._ba.small = False
        calls: list[int] = []
        real = relay.splice_call

        def counting(*args: Any, **kwargs: Any) -> int:
            calls.append(1)
            return int(real(*args, **kwargs))

        relay.splice_call = counting
        client.transport.write(b"abc")
        yield client.wait_for(lambda c: c.count >= 3, "abc")
        self.assertTrue(relay.spliced)
        client.transport.getHandle().send(b"!", socket.MSG_OOB)
        client.transport.write(b"def")
        yield client.wait_for(lambda c: c.count >= 6, "the bytes after the urgent mark")
        self.assertEqual(bytes(client.data), b"abcdef")
        before = len(calls)
        for _ in range(200):
            yield deferLater(reactor, 0, lambda: None)
        self.assertLessEqual(len(calls) - before, 2, "the relay keeps splicing")
        self.assertEqual(self.pipes().fallbacks, 0)

    @inlineCallbacks
    def test_idle_relay_holds_little(self) -> Any:
        """
        An idle kernel relay through the real gateway, after 16 bytes echoed by a TCP
        backend, holds only what it needs: no timer of its own in the reactor (its idle
        timeout is a place in the shared sweep), no bound method of its flows in either
        transport, and a backend leg with slots that has let go of its fired C{ready}
        L{Deferred} and holds no list for early bytes.
        """
        port = self.start_peer("echo")
        self.start_gateway([f"echo2=tcp:host=127.0.0.1:port={port}"])
        client = yield self.open("echo2")
        payload = self.rng.randbytes(16)
        client.transport.write(payload)
        yield client.wait_for(lambda c: c.count >= len(payload), "the echo")
        leg = self.legs[0]
        relay = leg.splice
        self.assertIsInstance(relay, KernelSplice)
        self.assertIsNotNone(relay.idle_key)  # watched by the sweep
        owned = {relay, relay._ab, relay._ba}
        timers = [
            call
            for call in reactor.getDelayedCalls()  # type: ignore[attr-defined]
            if getattr(call.func, "__self__", None) in owned
        ]
        self.assertEqual(timers, [])
        for transport in (relay._ab.source, relay._ba.source):
            bound = [
                value
                for value in vars(transport).values()
                if isinstance(value, types.MethodType) and value.__self__ in owned
            ]
            self.assertEqual(bound, [])
        self.assertFalse(hasattr(leg, "__dict__"))
        self.assertIsNone(leg.ready)
        self.assertIsNone(leg._early)

    @inlineCallbacks
    def test_kernel_relay_off(self) -> Any:
        """
        With C{kernel_relay = false} the service is relayed by the ordinary L{Splice}, and
        its bytes arrive unchanged.
        """
        port = self.start_peer("echo")
        self.start_gateway(
            config=(
                "[services.echo2]\n"
                f'backend = "tcp:host=127.0.0.1:port={port}"\n'
                'users = ["*"]\n'
                "kernel_relay = false\n"
            )
        )
        payload = self.rng.randbytes(1 << 20)
        client = yield self.open("echo2")
        self.assertIsInstance(self.legs[0].splice, Splice)
        client.transport.write(payload)
        yield client.wait_for(lambda c: c.count >= len(payload), "the echo")
        self.assertEqual(bytes(client.data), payload)
        self.assertEqual(self.pipes().relays, 0)


class KernelRelayTLSFallBackTests(RelayRealTestCase):
    """
    A TLS client leg is never relayed in the kernel.
    """

    skip = SKIP

    @inlineCallbacks
    def test_tls_listener_uses_the_ordinary_relay(self) -> Any:
        """
        A client on a TLS listener, a plain C{tcp:} backend: the ordinary relay carries the
        bytes (the pipe pool saw no kernel relay), and 4 MiB come back unchanged.
        """
        port = self.start_peer("echo")
        cert, key = tls_certs.make_leaf("localhost", extra_names=("127.0.0.1",))
        cert_file, key_file = tls_certs.write_identity(self.tmp, "gateway", cert, key)
        running = RunningGateway(
            self,
            'listen = ["tcp:0:interface=127.0.0.2"]\n'
            "[[tls_listen]]\n"
            'endpoint = "tcp:0:interface=127.0.0.1"\n'
            f'cert_file = "{cert_file}"\n'
            f'key_file = "{key_file}"\n'
            "[services.echo2]\n"
            f'backend = "tcp:host=127.0.0.1:port={port}"\n'
            'users = ["*"]\n',
        )
        gateway = wrap_tls(
            reactor,
            TCP4ClientEndpoint(reactor, "127.0.0.1", running.port(1)),
            {"tls": "1", "pin_sha256": public_key_pin(cert)},
            default_hostname="localhost",
        )
        payload = os.urandom(4 << 20)
        probe = Echoed(payload)
        yield connectProtocol(
            NGPClientEndpoint(reactor, gateway, running.credentials, "echo2"), probe
        )
        received = yield probe.done
        self.assertEqual(hashlib.sha256(received).digest(), hashlib.sha256(payload).digest())
        pipes = running.factory._backend_endpoints.pipes
        self.assertEqual(pipes.relays, 0)
        yield wait_for(lambda: not running.factory.sessions)

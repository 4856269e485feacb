"""
Tests for the kernel relay behind a C{haproxy:} listener: a side whose transport is a
L{netguard.proxy_header.ProxyHeaderProtocol} is relayed in the kernel on the TCP transport
under it once the header is consumed (L{netguard.relay_pipes.relay_transport}), with its
events still reaching the side's protocol through the wrapper.

The sockets are real loopback pairs handed to the running reactor, as in
L{tests.test_relay_splice}; the header's deadline runs on a L{task.Clock}.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import Clock, deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.proto_helpers import StringTransportWithDisconnection
from twisted.trial import unittest

from netguard.proxy_header import ProxyHeaderFactory, ProxyHeaderProtocol
from netguard.relay import A, B, RelayResult
from netguard.relay_pipes import kernel_relay_possible, relay_transport
from netguard.relay_splice import KernelSplice, PipePool
from tests.test_proxy_header import PROXY_ADDRESS, V1, AppFactory, v2
from tests.test_relay_splice import (
    IDLE,
    SKIP,
    WRITE,
    _adopt,
    _payload,
    _Peer,
    _SideProtocol,
    _tcp_pair,
)

#: Hang guard of the reactor loops (a step count, never an assertion on time).
STEPS = 40000


class SocketTransportTests(unittest.TestCase):
    """
    L{ProxyHeaderProtocol.socket_transport}: the transport under the wrapper only once the
    wrapper is a pure pass-through (fakes).
    """

    def connect(self, refuse: bool = False) -> tuple[Any, AppFactory, Any]:
        app = AppFactory(refuse)
        wrapper = ProxyHeaderFactory(app, Clock()).buildProtocol(PROXY_ADDRESS)
        transport = StringTransportWithDisconnection(peerAddress=PROXY_ADDRESS)
        transport.protocol = wrapper
        wrapper.makeConnection(transport)
        return wrapper, app, transport

    def test_none_before_the_header_is_complete(self) -> None:
        """
        While the header is incomplete (bytes of it held by the wrapper, no protocol
        built), there is no transport to relay on: the wrapper still has work to do.
        """
        wrapper, _, _ = self.connect()
        self.assertIsNone(wrapper.socket_transport())
        wrapper.dataReceived(V1[:-1])
        self.assertIsNone(wrapper.socket_transport())
        self.assertIs(relay_transport(wrapper), wrapper)

    def test_the_transport_once_the_header_is_consumed(self) -> None:
        """
        One byte later (the header's last), with bytes after it in the same read, the
        application's protocol has those bytes and the wrapper holds nothing: the
        transport under it is given.
        """
        wrapper, app, transport = self.connect()
        wrapper.dataReceived(V1[:-1])
        wrapper.dataReceived(V1[-1:] + b"early")
        self.assertEqual(app.built[0].data, b"early")
        self.assertIs(wrapper.socket_transport(), transport)
        self.assertIs(relay_transport(wrapper), transport)

    def test_none_when_refused(self) -> None:
        """
        A header the application refused (no protocol built) or a malformed one gives no
        transport.
        """
        wrapper, _, _ = self.connect(refuse=True)
        wrapper.dataReceived(V1)
        self.assertIsNone(wrapper.socket_transport())
        wrapper, _, _ = self.connect()
        wrapper.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertIsNone(wrapper.socket_transport())

    def test_none_once_lost(self) -> None:
        """
        After the connection is lost the wrapper gives no transport.
        """
        wrapper, _, transport = self.connect()
        wrapper.dataReceived(v2())
        self.assertIs(wrapper.socket_transport(), transport)
        transport.loseConnection()
        self.assertIsNone(wrapper.socket_transport())

    def test_other_transports_are_themselves(self) -> None:
        """
        L{relay_transport} leaves any transport that is not the header wrapper as it is.
        """
        transport = StringTransportWithDisconnection()
        self.assertIs(relay_transport(transport), transport)


class _ProxiedSide:
    """
    Side A of a relay behind a PROXY header: a real loopback pair whose local end the
    reactor reads through a L{ProxyHeaderFactory}, the far end played by a L{_Peer}.
    """

    def __init__(self, test: unittest.TestCase) -> None:
        peer, local = _tcp_pair()
        self.peer = _Peer(peer)
        self.protocol = _SideProtocol(A)
        self.factory = ProxyHeaderFactory(Factory.forProtocol(lambda: self.protocol), Clock())
        reactor.adoptStreamConnection(  # type: ignore[attr-defined]
            local.fileno(), socket.AF_INET, self.factory
        )
        local.close()
        test.addCleanup(self.peer.close)


def _wait(check: Any, pump: Any, steps: int = STEPS) -> Deferred[None]:
    """
    Run the reactor and C{pump} until C{check()} holds (a hang guard of C{steps} turns).
    """

    @inlineCallbacks
    def loop() -> Generator[Deferred[Any], Any, None]:
        for _ in range(steps):
            pump()
            if check():
                return
            yield deferLater(reactor, 0.0005, lambda: None)
        raise AssertionError("hang guard: condition never held")

    return loop()  # type: ignore[no-any-return]


class KernelRelayBehindHeaderTests(unittest.TestCase):
    """
    A side behind a PROXY header is relayed in the kernel once the header is consumed.
    """

    skip = SKIP

    @inlineCallbacks
    def test_header_not_complete_not_possible(self) -> Any:
        """
        While the wrapper still waits for the rest of the header, the kernel relay does not
        apply to its side (it would bypass the header's parser); one byte later, the last
        of the header, it does.
        """
        side = _ProxiedSide(self)
        _, local_b = _tcp_pair()
        other = _adopt(local_b, socket.AF_INET, B)
        self.addCleanup(other.transport.abortConnection)
        header = v2()
        side.peer.outgoing += header[:-1]
        yield _wait(lambda: bool(side.factory.protocols), side.peer.pump)
        wrapper = next(iter(side.factory.protocols))
        yield _wait(lambda: bool(wrapper._parser), side.peer.pump)
        self.assertIsNone(side.protocol.transport)  # no protocol built yet
        self.assertFalse(kernel_relay_possible(wrapper, other.transport))
        side.peer.outgoing += header[-1:]
        yield _wait(lambda: side.protocol.transport is not None, side.peer.pump)
        self.assertTrue(kernel_relay_possible(wrapper, other.transport))

    @inlineCallbacks
    def test_bulk_with_early_bytes_and_half_close(self) -> Any:
        """
        The client's first bytes come in the same segment as the PROXY header, then 4 MiB
        each way with a half-close from each side: the relay between the wrapper and a
        plain socket is a kernel relay on the socket under the wrapper, it splices, every
        byte arrives in order (the early bytes first), both half-closes are carried, the
        result counts every byte, and the side's protocol heard of the EOF and the loss
        through the wrapper.
        """
        side = _ProxiedSide(self)
        peer_b, local_b = _tcp_pair()
        far_b = _Peer(peer_b)
        self.addCleanup(far_b.close)
        proto_b = _adopt(local_b, socket.AF_INET, B)
        early = b"early bytes in the header's segment"
        side.peer.sock.setblocking(True)
        side.peer.sock.sendall(v2() + early)  # one send: one segment on loopback
        side.peer.sock.setblocking(False)
        proto_a = side.protocol
        yield _wait(lambda: b"".join(proto_a.user_space) == early, side.peer.pump)
        wrapper = proto_a.transport
        self.assertIsInstance(wrapper, ProxyHeaderProtocol)
        self.assertTrue(kernel_relay_possible(wrapper, proto_b.transport))
        pool = PipePool()
        relay = KernelSplice(
            wrapper,
            proto_b.transport,
            clock=Clock(),
            pool=pool,
            idle_timeout=IDLE,
            write_timeout=WRITE,
        )
        results: list[RelayResult] = []
        relay.done.addCallback(results.append)
        proto_a.relay = proto_b.relay = relay
        relay.start()
        relay.data_from(A, early)  # what the session does with bytes read before
        relay.resume_reading(A)
        relay.resume_reading(B)
        up, down = _payload(4 << 20, 1), _payload(4 << 20, 2)
        side.peer.outgoing += up
        side.peer.shut_after_send = True
        far_b.outgoing += down
        far_b.shut_after_send = True

        def pump() -> None:
            side.peer.pump()
            far_b.pump()

        yield _wait(lambda: bool(results) and side.peer.eof and far_b.eof, pump)
        self.assertTrue(relay.spliced)
        self.assertEqual(bytes(far_b.received), early + up)
        self.assertEqual(bytes(side.peer.received), down)
        self.assertEqual(
            (results[0].bytes_a_to_b, results[0].bytes_b_to_a),
            (len(early) + len(up), len(down)),
        )
        self.assertEqual(b"".join(proto_a.user_space), early)  # the rest went by the kernel
        self.assertEqual((pool.relays, pool.fallbacks, pool.in_use), (1, 0, 0))

    def test_wrapper_over_tls_not_possible(self) -> None:
        """
        A header wrapper over a TLS transport (a C{haproxy:ssl:} listener) is never relayed
        in the kernel, even once its header is consumed.
        """
        tls = TLSMemoryBIOFactory(
            optionsForClientTLS("example.invalid"), True, Factory.forProtocol(Protocol)
        ).buildProtocol(None)
        tls.makeConnection(StringTransportWithDisconnection())
        app = AppFactory()
        wrapper = ProxyHeaderFactory(app, Clock()).buildProtocol(PROXY_ADDRESS)
        wrapper.makeConnection(tls)
        wrapper.dataReceived(V1)
        self.assertIs(wrapper.socket_transport(), tls)
        _, local_b = _tcp_pair()
        other = _adopt(local_b, socket.AF_INET, B)
        self.addCleanup(other.transport.abortConnection)
        self.assertFalse(kernel_relay_possible(wrapper, other.transport))

    @inlineCallbacks
    def test_client_reset_reaches_the_relay_through_the_wrapper(self) -> Any:
        """
        The client behind the header resets its connection while a kernel relay runs on
        the socket under the wrapper: the loss reaches the side's protocol through the
        wrapper, the relay ends (C{ended_by} side A), the other side is closed, and the
        wrapper's factory no longer holds the connection.
        """
        side = _ProxiedSide(self)
        peer_b, local_b = _tcp_pair()
        far_b = _Peer(peer_b)
        self.addCleanup(far_b.close)
        proto_b = _adopt(local_b, socket.AF_INET, B)
        side.peer.outgoing += v2()
        proto_a = side.protocol
        yield _wait(lambda: proto_a.transport is not None, side.peer.pump)
        relay = KernelSplice(
            proto_a.transport,
            proto_b.transport,
            clock=Clock(),
            pool=PipePool(),
            idle_timeout=IDLE,
            write_timeout=WRITE,
        )
        results: list[RelayResult] = []
        relay.done.addCallback(results.append)
        proto_a.relay = proto_b.relay = relay
        relay.start()
        relay.resume_reading(A)
        relay.resume_reading(B)
        side.peer.outgoing += _payload(1 << 20, 3)

        def pump() -> None:
            side.peer.pump()
            far_b.pump()

        yield _wait(lambda: len(far_b.received) == 1 << 20, pump)
        self.assertTrue(relay.spliced)
        side.peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        side.peer.sock.close()
        yield _wait(lambda: bool(results) and far_b.eof, far_b.pump)
        self.assertEqual(results[0].ended_by, A)
        self.assertEqual(results[0].bytes_a_to_b, 1 << 20)
        self.assertEqual(relay.gone, {A: True, B: True})
        self.assertEqual(side.factory.protocols, {})

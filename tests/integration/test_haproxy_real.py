# -*- test-case-name: tests.integration.test_haproxy_real -*-
"""
The C{haproxy:} (PROXY protocol) listener behind a real HAProxy (Debian package C{haproxy},
run in the foreground with C{-db}, stopped by PID), in front of the real gateway running
in-process: HAProxy accepts clients on a loopback port and connects to the gateway from
127.0.0.1, sending a PROXY header (C{send-proxy}: version 1, text; C{send-proxy-v2}: version
2, binary) that names the client's own address.

Each client binds its own source address (127.0.0.5, 127.0.0.6), so the header carries an
address that differs from HAProxy's. The gateway must take every client address from the
header: in what it logs and in admission control (here C{per_source_max = 1}).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.integration.util import (
    EchoClient,
    RunningGateway,
    need_peer,
    start_listening_peer,
    wait_for,
)

HAPROXY = "/usr/sbin/haproxy"

#: The gateway: at most one connection per source address, so a second one from the same
#: address is refused at once. No event-loop-lag shedding: these tests are about addresses,
#: and on a loaded machine the lag of the shared event loop would refuse their clients.
CONFIG = """\
[admission]
per_source_max = 1

[overload]
max_lag = "off"
"""

#: HAProxy's configuration: a plain TCP proxy from C{front} to the gateway at C{back},
#: sending the PROXY header given as C{send_proxy}; no health checks (they would be
#: connections of their own).
HAPROXY_CONFIG = """\
global
    maxconn 64

defaults
    mode tcp
    timeout connect 10s
    timeout client 60s
    timeout server 60s

frontend clients
    bind 127.0.0.1:{front}
    default_backend gateway

backend gateway
    server netguard 127.0.0.1:{back} {send_proxy}
"""

#: The bound on any one wait (a hang guard; nothing asserts on speed).
WAIT = 30.0


class RawClient(Protocol):
    """
    A client that says nothing: records what the gateway sends until the connection ends.

    @ivar greeted: fires once the greeting has arrived.
    @ivar closed: fires with everything received, once the connection ends.
    """

    transport: Any

    def __init__(self) -> None:
        self.data = b""
        self.greeted: Deferred[None] = Deferred()
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.greeted.called and self.data.startswith(b"NETGUARD/1 "):
            self.greeted.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.greeted.called:
            self.greeted.errback(AssertionError(f"closed before the greeting: {self.data!r}"))
        self.closed.callback(self.data)


if TYPE_CHECKING:
    _Base = unittest.TestCase
else:
    _Base = object


class _BehindHAProxy(_Base):
    """
    A real HAProxy sending the PROXY header L{send_proxy}, in front of the real gateway.
    """

    timeout = 60
    #: The HAProxy server option that sends the header.
    send_proxy = ""

    def setUp(self) -> None:
        haproxy = need_peer(HAPROXY, "haproxy")
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.gateway = RunningGateway(
            self, CONFIG, {"listen": ["haproxy:tcp:0:interface=127.0.0.1"]}, prefix="ng-hap-"
        )
        self.front = self.start_haproxy(haproxy, self.gateway.port())
        self.clients: list[Any] = []
        self.addCleanup(self.close_clients)

    def start_haproxy(self, haproxy: str, back: int) -> int:
        """
        Start HAProxy in the foreground (C{-db}) on a free loopback port in front of the
        gateway's port C{back}; stopped by PID at cleanup.

        @return: the port clients connect to.
        """
        return start_listening_peer(
            self,
            "haproxy",
            self.gateway.dir,
            lambda front: HAPROXY_CONFIG.format(
                front=front, back=back, send_proxy=self.send_proxy
            ),
            lambda path: [haproxy, "-db", "-f", path],
            WAIT,
        )

    @inlineCallbacks
    def close_clients(self) -> Any:
        """
        Close every client connection still open, then wait until the gateway has no session.
        """
        for client in self.clients:
            if client.transport is not None and client.transport.connected:
                client.transport.abortConnection()
        yield self.gateway.idle()

    def connect(self, source: str, protocol: Any) -> Deferred[Any]:
        """
        Connect C{protocol} to HAProxy's front port from the address C{source}.
        """
        self.clients.append(protocol)
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.front, timeout=WAIT, bindAddress=(source, 0)
        )
        return connectProtocol(endpoint, protocol)

    @inlineCallbacks
    def echo(self, source: str, payload: bytes) -> Any:
        """
        Log in from C{source} through HAProxy (SCRAM), open C{echo}, send C{payload} and
        return what came back and the client's own port.
        """
        client = EchoClient(self.gateway.credentials, len(payload))
        yield self.connect(source, client)
        yield client.opened.addTimeout(WAIT, reactor)
        port = client.transport.getHost().port
        client.transport.write(payload)
        received = yield client.done.addTimeout(WAIT, reactor)
        client.transport.loseConnection()
        return received, port

    def logged(self, event: str) -> list[dict[str, Any]]:
        """
        The gateway's events named C{event}, in order.
        """
        return [e for e in self.events if e.get("event") == event]

    # -- the tests ---------------------------------------------------------------------------

    @inlineCallbacks
    def test_login_and_echo_carry_the_client_address(self) -> Any:
        """
        A full login (SCRAM) and C{OPEN echo} through HAProxy work, and the gateway logs the
        client's own address and port from the header (127.0.0.5 and the client's port) when
        it accepts the connection and when the user logs in, never HAProxy's 127.0.0.1.
        """
        payload = os.urandom(64 * 1024)
        received, port = yield self.echo("127.0.0.5", payload)
        self.assertEqual(received, payload)
        client_address = f"127.0.0.5:{port}"
        self.assertEqual([e["peer"] for e in self.logged("conn.accept")], [client_address])
        self.assertEqual([e["peer"] for e in self.logged("auth.ok")], [client_address])

    @inlineCallbacks
    def test_per_source_cap_counts_by_header_address(self) -> Any:
        """
        With C{per_source_max = 1} and one connection from 127.0.0.5 held open, a second one
        from 127.0.0.5 is refused C{ERR BUSY per-source-cap} (its header address is counted,
        and the refusal is logged with it), while a client from 127.0.0.6 (a different header
        address; the same HAProxy address 127.0.0.1) is admitted and served end to end.
        """
        held = RawClient()
        yield self.connect("127.0.0.5", held)
        yield held.greeted.addTimeout(WAIT, reactor)

        second = RawClient()
        second.greeted.addErrback(lambda _: None)  # it is refused, never greeted
        yield self.connect("127.0.0.5", second)
        second_port = second.transport.getHost().port
        said = yield second.closed.addTimeout(WAIT, reactor)
        self.assertEqual(said, b"ERR BUSY per-source-cap\r\n")
        rejected = self.logged("conn.reject")
        self.assertEqual(
            [(e["peer"], e["reason"]) for e in rejected],
            [(f"127.0.0.5:{second_port}", "per-source-cap")],
        )

        payload = os.urandom(4096)
        received, port = yield self.echo("127.0.0.6", payload)
        self.assertEqual(received, payload)
        self.assertIn(f"127.0.0.6:{port}", [e["peer"] for e in self.logged("auth.ok")])
        self.assertFalse(held.closed.called)  # the held connection was never disturbed
        yield wait_for(lambda: len(self.gateway.factory.sessions) == 1, timeout=WAIT)


class SendProxyV1Tests(_BehindHAProxy, unittest.TestCase):
    """
    HAProxy sends the text header (PROXY protocol version 1).
    """

    send_proxy = "send-proxy"


class SendProxyV2Tests(_BehindHAProxy, unittest.TestCase):
    """
    HAProxy sends the binary header (PROXY protocol version 2).
    """

    send_proxy = "send-proxy-v2"

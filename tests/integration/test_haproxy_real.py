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
from twisted.trial import unittest

from tests.integration.util import (
    ONE_PER_SOURCE,
    EchoClient,
    Probe,
    RunningGateway,
    clients_aborted_at_cleanup,
    connect_from,
    haproxy_tcp_config,
    log_events,
    start_haproxy,
    wait_for,
)

#: The bound on any one wait (a hang guard; nothing asserts on speed).
WAIT = 30.0


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
        self.events = log_events(self)
        self.gateway = RunningGateway(
            self,
            ONE_PER_SOURCE,
            {"listen": ["haproxy:tcp:0:interface=127.0.0.1"]},
            prefix="ng-hap-",
        )
        back = self.gateway.port()
        # A plain TCP proxy sending the PROXY header given as send_proxy; no health checks
        # (they would be connections of their own).
        self.front = start_haproxy(
            self,
            self.gateway.dir,
            lambda front: haproxy_tcp_config(front, back, self.send_proxy),
            WAIT,
        )
        self.clients = clients_aborted_at_cleanup(self, self.gateway)

    def connect(self, source: str, protocol: Any) -> Deferred[Any]:
        """
        Connect C{protocol} to HAProxy's front port from the address C{source}.
        """
        self.clients.append(protocol)
        return connect_from(source, self.front, protocol, WAIT)

    @inlineCallbacks
    def echo(self, source: str, payload: bytes) -> Any:
        """
        Log in from C{source} through HAProxy (SCRAM), open C{echo}, send C{payload} and
        return what came back and the client's own port.
        """
        client = EchoClient(self.gateway.credentials, len(payload))
        yield self.connect(source, client)
        received, own = yield client.exchange(payload, WAIT)
        return received, own.port

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
        held = Probe()
        yield self.connect("127.0.0.5", held)
        yield held.greeted.addTimeout(WAIT, reactor)

        second = Probe()
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

# -*- test-case-name: tests.integration.test_proxy_from_real -*-
"""
PROXY headers only from the listed senders (C{haproxy:proxy_from=...}), over real loopback
sockets: the real gateway running in-process with a C{haproxy:} listener whose senders are
127.0.0.16/30 (127.0.0.16 to 127.0.0.19) and a plain listener beside it, real HAProxy
(Debian package C{haproxy}, run in the foreground with C{-db}, stopped by PID) whose
connections to the gateway come from a chosen address (C{source} on its server line), and
raw clients (hostile senders) bound to chosen loopback addresses.

What is pinned: HAProxy from a listed address with C{send-proxy} and C{send-proxy-v2} is
served, with the real client address in the log and in admission; its health checks
(version 2 C{LOCAL}) are served with the real connection endpoints; the same HAProxy from
an address outside the list is refused, logged, and its address (not the client's) gets
penalty points that block it on the plain listener too; a raw client sending a header from
an address outside the list is refused; a listed sender with no header or a malformed one
is refused with an event; the network's first and last addresses are senders, the
addresses just outside it are not.
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

#: The listed senders: 127.0.0.16 (first) to 127.0.0.19 (last).
PROXY_FROM = "127.0.0.16/30"
#: A listed sender, HAProxy's source address towards the gateway.
LISTED = "127.0.0.17"
#: The first address past the network.
PAST = "127.0.0.20"
#: The last address before it.
BEFORE = "127.0.0.15"

#: The bound on any one wait (a hang guard; nothing asserts on speed).
WAIT = 30.0


def v1_header(source: str, port: int, gateway_port: int) -> bytes:
    """
    A version 1 header naming C{source}:C{port} as the client.
    """
    return f"PROXY TCP4 {source} 127.0.0.1 {port} {gateway_port}\r\n".encode()


if TYPE_CHECKING:
    _Base = unittest.TestCase
else:
    _Base = object


class _Gateway(_Base):
    """
    The real gateway with a C{haproxy:proxy_from=127.0.0.16/30} listener (index 0) and a
    plain listener (index 1), its log captured.
    """

    timeout = 90

    def setUp(self) -> None:
        self.events = log_events(self)
        self.gateway = RunningGateway(
            self,
            ONE_PER_SOURCE,
            {
                "listen": [
                    f"haproxy:proxy_from={PROXY_FROM}:tcp:0:interface=127.0.0.1",
                    "tcp:0:interface=127.0.0.1",
                ]
            },
            prefix="ng-pxf-",
        )
        self.clients = clients_aborted_at_cleanup(self, self.gateway)

    def connect(self, source: str, port: int, protocol: Any) -> Deferred[Any]:
        """
        Connect C{protocol} from the address C{source} to 127.0.0.1:C{port}.
        """
        self.clients.append(protocol)
        return connect_from(source, port, protocol, WAIT)

    @inlineCallbacks
    def refused_silently(self, source: str, data: bytes, port: int | None = None) -> Any:
        """
        Connect from C{source}, send C{data}, and check the gateway closes the connection
        without a byte.
        """
        probe = Probe(data)
        probe.greeted.addErrback(lambda _: None)
        yield self.connect(source, self.gateway.port() if port is None else port, probe)
        said = yield probe.closed.addTimeout(WAIT, reactor)
        self.assertEqual(said, b"", source)

    @inlineCallbacks
    def greeted(self, source: str, data: bytes) -> Any:
        """
        Connect from C{source} to the C{haproxy:} listener, send C{data}, wait for the
        greeting, send C{QUIT} (its first command, which logs C{conn.accept}) and wait for
        the close; return the probe.
        """
        probe = Probe(data)
        yield self.connect(source, self.gateway.port(), probe)
        yield probe.greeted.addTimeout(WAIT, reactor)
        probe.transport.write(b"QUIT\r\n")
        said = yield probe.closed.addTimeout(WAIT, reactor)
        self.assertTrue(said.endswith(b"\r\nBYE\r\n"), said)
        return probe

    def logged(self, event: str, **fields: object) -> list[dict[str, Any]]:
        """
        The gateway's events named C{event} with the given field values, in order.
        """
        return [
            e
            for e in self.events
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    def penalised(self) -> dict[str, int]:
        """
        Admission's penalties: source key to offences.
        """
        return {
            source: offences for source, _, offences in self.gateway.factory.admission.penalties()
        }

    def start_haproxy(self, name: str, server: str) -> int:
        """
        Start HAProxy, a plain TCP proxy (health checks bounded), in front of the
        C{haproxy:} listener with C{server} options on its server line (the header it sends,
        its source address, health checks); stopped by PID at cleanup.

        @return: the port clients connect to.
        """
        back = self.gateway.port()
        return start_haproxy(
            self,
            self.gateway.dir,
            lambda front: haproxy_tcp_config(front, back, server, check=True),
            WAIT,
            name,
        )


class _ListedHAProxy(_Gateway):
    """
    HAProxy connecting from the listed address 127.0.0.17 with the header L{send_proxy}.
    """

    send_proxy = ""

    def setUp(self) -> None:
        super().setUp()
        self.front = self.start_haproxy("haproxy", f"{self.send_proxy} source {LISTED}")

    @inlineCallbacks
    def test_served_with_the_client_address(self) -> Any:
        """
        A full login (SCRAM) and C{OPEN echo} through HAProxy work; the gateway logs the
        client's own address and port (127.0.0.5) when it accepts the connection and when
        the user logs in, never HAProxy's 127.0.0.17; nothing is refused or penalised.
        """
        payload = os.urandom(64 * 1024)
        client = EchoClient(self.gateway.credentials, len(payload))
        yield self.connect("127.0.0.5", self.front, client)
        received, own = yield client.exchange(payload, WAIT)
        self.assertEqual(received, payload)
        address = f"127.0.0.5:{own.port}"
        self.assertEqual([e["peer"] for e in self.logged("conn.accept")], [address])
        self.assertEqual([e["peer"] for e in self.logged("auth.ok")], [address])
        self.assertEqual(self.logged("conn.reject"), [])
        self.assertEqual(self.penalised(), {})

    @inlineCallbacks
    def test_admission_counts_the_client_address(self) -> Any:
        """
        With C{per_source_max = 1} and a connection from client 127.0.0.5 held open, a
        second one from 127.0.0.5 is refused C{ERR BUSY per-source-cap}, while one from
        127.0.0.6 (the same sender, 127.0.0.17) is greeted: admission's key is the
        header's client address.
        """
        held = Probe()
        yield self.connect("127.0.0.5", self.front, held)
        yield held.greeted.addTimeout(WAIT, reactor)
        second = Probe()
        second.greeted.addErrback(lambda _: None)
        yield self.connect("127.0.0.5", self.front, second)
        said = yield second.closed.addTimeout(WAIT, reactor)
        self.assertEqual(said, b"ERR BUSY per-source-cap\r\n")
        other = Probe()
        yield self.connect("127.0.0.6", self.front, other)
        yield other.greeted.addTimeout(WAIT, reactor)
        [reject] = self.logged("conn.reject")
        self.assertTrue(reject["peer"].startswith("127.0.0.5:"), reject)


class SendProxyV1Tests(_ListedHAProxy, unittest.TestCase):
    """
    HAProxy from a listed address sends the text header (PROXY protocol version 1).
    """

    send_proxy = "send-proxy"


class SendProxyV2Tests(_ListedHAProxy, unittest.TestCase):
    """
    HAProxy from a listed address sends the binary header (PROXY protocol version 2).
    """

    send_proxy = "send-proxy-v2"


class HealthCheckTests(_Gateway, unittest.TestCase):
    """
    HAProxy's health checks with C{send-proxy-v2} carry a version 2 C{LOCAL} header (no
    client address): from a listed sender they are served with the real connection
    endpoints, the sender's own address.
    """

    @inlineCallbacks
    def test_local_health_check_served_with_the_senders_address(self) -> Any:
        """
        A health check's connection is admitted with HAProxy's own address (127.0.0.17): it
        sends no command, so no C{conn.accept}, and its C{conn.close} (the first few of a
        source in an interval are logged one by one) names that address; no header is
        refused and no offence counted. (Checks that overlap may meet admission's per-source
        cap of the sender's own address, 1 here: a refusal by admission, not of the header.)
        """
        self.start_haproxy(
            "haproxy-check", f"send-proxy-v2 source {LISTED} check check-send-proxy inter 200ms"
        )
        yield wait_for(
            lambda: any(e["peer"].startswith(f"{LISTED}:") for e in self.logged("conn.close")),
            timeout=WAIT,
        )
        self.assertEqual(self.logged("conn.accept"), [])
        for reason in ("proxy-header", "proxy-sender"):
            self.assertEqual(self.logged("conn.reject", reason=reason), [])
        self.assertEqual(self.penalised(), {})


class OutsiderTests(_Gateway, unittest.TestCase):
    """
    Connections from addresses outside C{proxy_from}, with or without a proxy.
    """

    @inlineCallbacks
    def test_haproxy_from_an_unlisted_address_refused(self) -> Any:
        """
        The same HAProxy, but connecting from 127.0.0.20 (the first address past the list)
        with C{send-proxy-v2}: its client is never greeted (the gateway closes at accept,
        before reading the header); the refusal is logged as C{conn.reject}
        C{reason=proxy-sender} with HAProxy's address, and the offence is HAProxy's
        (127.0.0.20/32), not the client's address the header would have named.
        """
        front = self.start_haproxy("haproxy-outsider", f"send-proxy-v2 source {PAST}")
        yield self.refused_silently("127.0.0.5", b"", front)
        yield wait_for(lambda: bool(self.logged("conn.reject")), timeout=WAIT)
        [reject] = self.logged("conn.reject")
        self.assertEqual(reject["reason"], "proxy-sender")
        self.assertTrue(reject["peer"].startswith(f"{PAST}:"), reject)
        self.assertEqual(self.penalised(), {f"{PAST}/32": 1})
        self.assertEqual(self.logged("conn.accept"), [])

    @inlineCallbacks
    def test_raw_header_from_an_unlisted_address_refused(self) -> Any:
        """
        A hostile raw client at 127.0.0.5 sending a well-formed header that claims
        203.0.113.9: closed without a byte, logged with its own address, penalised on its
        own address; the claimed address is never charged, nothing is admitted.
        """
        yield self.refused_silently(
            "127.0.0.5", v1_header("203.0.113.9", 4000, self.gateway.port())
        )
        [reject] = self.logged("conn.reject")
        self.assertEqual(reject["reason"], "proxy-sender")
        self.assertTrue(reject["peer"].startswith("127.0.0.5:"), reject)
        self.assertEqual(self.penalised(), {"127.0.0.5/32": 1})
        self.assertEqual(self.logged("conn.accept"), [])

    @inlineCallbacks
    def test_missing_header_from_a_listed_sender_refused(self) -> Any:
        """
        A listed sender (127.0.0.17) that starts with NGP/1 instead of a header: closed
        without a byte, C{conn.reject} C{reason=proxy-header}, an offence of 127.0.0.17.
        """
        yield self.refused_silently(LISTED, b"PING\r\n")
        [reject] = self.logged("conn.reject", reason="proxy-header")
        self.assertEqual(reject["why"], "not a PROXY header")
        self.assertTrue(reject["peer"].startswith(f"{LISTED}:"), reject)
        self.assertEqual(self.penalised(), {f"{LISTED}/32": 1})

    @inlineCallbacks
    def test_malformed_header_from_a_listed_sender_refused(self) -> Any:
        """
        A listed sender (127.0.0.18) whose header has a port out of range: closed without
        a byte, logged with why, an offence of the sender, none of the claimed address.
        """
        header = b"PROXY TCP4 203.0.113.9 127.0.0.1 99999 7701\r\n"
        yield self.refused_silently("127.0.0.18", header)
        [reject] = self.logged("conn.reject", reason="proxy-header")
        self.assertEqual(reject["why"], "a port out of range")
        self.assertEqual(self.penalised(), {"127.0.0.18/32": 1})

    @inlineCallbacks
    def test_network_boundary(self) -> Any:
        """
        With C{proxy_from=127.0.0.16/30}, a valid header from 127.0.0.16 (first address)
        and from 127.0.0.19 (last) is greeted, each as the client its header names; from
        127.0.0.15 (just before) and 127.0.0.20 (just past) the connection is refused.
        """
        port = self.gateway.port()
        yield self.greeted("127.0.0.16", v1_header("203.0.113.16", 4016, port))
        yield self.greeted("127.0.0.19", v1_header("203.0.113.19", 4019, port))
        yield self.refused_silently(BEFORE, v1_header("203.0.113.15", 4015, port))
        yield self.refused_silently(PAST, v1_header("203.0.113.20", 4020, port))
        self.assertEqual(
            [e["peer"] for e in self.logged("conn.accept")],
            ["203.0.113.16:4016", "203.0.113.19:4019"],
        )
        self.assertEqual(
            sorted(e["peer"].split(":")[0] for e in self.logged("conn.reject")), [BEFORE, PAST]
        )

    @inlineCallbacks
    def test_sender_penalties_block_it_on_the_plain_listener(self) -> Any:
        """
        Three refused connections from 127.0.0.21 reach the penalty threshold: the source
        is then refused C{ERR BUSY penalised} on the gateway's plain listener, while
        another source (127.0.0.22) is greeted there.
        """
        for _ in range(3):
            yield self.refused_silently("127.0.0.21", b"")
        self.assertEqual(self.penalised(), {"127.0.0.21/32": 3})
        plain = self.gateway.port(1)
        blocked = Probe()
        blocked.greeted.addErrback(lambda _: None)
        yield self.connect("127.0.0.21", plain, blocked)
        said = yield blocked.closed.addTimeout(WAIT, reactor)
        self.assertEqual(said, b"ERR BUSY penalised\r\n")
        fine = Probe()
        yield self.connect("127.0.0.22", plain, fine)
        yield fine.greeted.addTimeout(WAIT, reactor)

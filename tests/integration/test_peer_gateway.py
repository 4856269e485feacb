"""
The gateway applying its peer-check policy (FCrDNS in C{require} mode) to real loopback
clients, against a real dnsmasq serving good and spoofed PTR records.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from netguard.client.protocol import NGPClientProtocol, NGPError
from tests.integration import test_peer_real as peer_real
from tests.integration.util import RunningGateway, peer_unavailable, wait_for


class _DnsmasqGateway:
    """
    A real dnsmasq (good PTR for 127.0.0.1, spoofed for 127.0.0.2, none for others) and the
    real gateway configured with C{config} (C{{dns}} stands for dnsmasq's address).
    """

    timeout = 60
    start_dnsmasq = peer_real.DnsmasqTests.start_dnsmasq
    config = ""

    def setUp(self):
        if not os.access(peer_real.DNSMASQ, os.X_OK):
            peer_unavailable(f"{peer_real.DNSMASQ} not installed (Debian: dnsmasq-base)")
        records = [
            "--ptr-record=1.0.0.127.in-addr.arpa,good.test",
            "--host-record=good.test,127.0.0.1",
            "--ptr-record=2.0.0.127.in-addr.arpa,spoof.test",
            "--host-record=spoof.test,127.0.0.20",
        ]
        for _attempt in range(5):
            self.port = peer_real.free_dns_port()
            if self.start_dnsmasq(records) is None:
                break
        else:
            self.fail("dnsmasq did not start")
        running = RunningGateway(
            self,
            self.config.replace("{dns}", f"127.0.0.1:{self.port}"),
            {"listen": ["tcp:0:interface=127.0.0.1"]},
        )
        self.gateway = running.service
        self.gw_port = running.port()
        self.credentials = running.credentials

    @inlineCallbacks
    def session_from(self, source: str, service: str = "echo"):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.gw_port, bindAddress=(source, 0))
        client = NGPClientProtocol(self.credentials, service, clock=reactor)
        yield connectProtocol(endpoint, client)
        try:
            yield client.opened
        finally:
            client.transport.loseConnection()
            yield wait_for(lambda: not self.gateway.factory.sessions)


class GatewayFCrDNSTests(_DnsmasqGateway, unittest.TestCase):
    config = '[peer_checks]\nfcrdns = "require"\ndns_servers = ["{dns}"]\nfcrdns_timeout = 5.0\n'

    def test_confirmed_peer_may_authenticate(self):
        return self.session_from("127.0.0.1")

    @inlineCallbacks
    def test_spoofed_ptr_is_refused_before_any_password(self):
        failure = yield self.assertFailure(self.session_from("127.0.0.2"), NGPError)
        self.assertEqual(failure.code, "NOT_AUTHORIZED")
        self.assertEqual(self.gateway.factory.stats.counters["auth_fail"], 0)
        self.assertEqual(self.gateway.factory.stats.counters["auth_ok"], 0)

    @inlineCallbacks
    def test_no_ptr_is_refused(self):
        failure = yield self.assertFailure(self.session_from("127.0.0.9"), NGPError)
        self.assertEqual(failure.code, "NOT_AUTHORIZED")


class ServiceFCrDNSTests(_DnsmasqGateway, unittest.TestCase):
    """
    Peer checks off for the gateway, but one service requires a forward-confirmed peer:
    other services stay open to everyone, that one only to confirmed hosts.
    """

    config = (
        '[peer_checks]\ndns_servers = ["{dns}"]\n'
        '[services.echo]\nbackend = "builtin:echo"\nusers = ["*"]\n'
        '[services.vault]\nbackend = "builtin:echo"\nusers = ["*"]\nfcrdns = "require"\n'
    )

    def test_confirmed_peer_opens_the_strict_service(self):
        return self.session_from("127.0.0.1", "vault")

    @inlineCallbacks
    def test_spoofed_peer_refused_for_the_strict_service_only(self):
        failure = yield self.assertFailure(self.session_from("127.0.0.2", "vault"), NGPError)
        self.assertEqual(failure.code, "NOT_AUTHORIZED")
        yield self.session_from("127.0.0.2", "echo")

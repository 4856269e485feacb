"""
Two gateway instances behind real HAProxy (Debian package C{haproxy}, run in the foreground,
stopped by PID), which balances clients between them round robin and sends each a PROXY v2
header (C{send-proxy-v2}) from a listed sender address (C{haproxy:proxy_from=...}), the
instances sharing state through a real redis-server: both log the real client address, and
a source penalised through one instance is refused by the other.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from tests.integration.test_shared_real import LineClient, RedisCase
from tests.integration.util import RunningGateway, need_peer, start_listening_peer, wait_for

HAPROXY = "/usr/sbin/haproxy"
#: HAProxy's source address towards the instances, the one listed sender.
SENDER = "127.0.0.17"
#: The client's own address.
CLIENT = "127.0.0.5"

#: Round robin over the two instances, each sent a PROXY v2 header from L{SENDER}.
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
    default_backend gateways

backend gateways
    balance roundrobin
    server one 127.0.0.1:{one} send-proxy-v2 source {sender}
    server two 127.0.0.1:{two} send-proxy-v2 source {sender}
"""


class SharedBehindHAProxyTests(RedisCase):
    """
    HAProxy in front of two instances sharing one redis-server.
    """

    timeout = 120

    def instance(self, redis_port: int) -> RunningGateway:
        text = (
            f'[shared]\nredis = "tcp:host=127.0.0.1:port={redis_port}"\n'
            '[overload]\nmax_lag = "off"\n'
        )
        listener = f"haproxy:proxy_from={SENDER}/32:tcp:0:interface=127.0.0.1"
        return RunningGateway(self, text, overrides={"listen": [listener]}, prefix="ng-shx-")

    def of(self, event: dict[str, Any], *instances: RunningGateway) -> RunningGateway | None:
        """
        The instance that logged C{event} (its factory, or its connection's).
        """
        source = event.get("log_source")
        factory = getattr(source, "factory", source)
        for running in instances:
            if factory is running.factory:
                return running
        return None

    @inlineCallbacks
    def through(self, front: int, first: bytes = b"") -> Any:
        """
        Connect from L{CLIENT} to HAProxy, send C{first}; return the first line answered.
        """
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", front, timeout=30, bindAddress=(CLIENT, 0)
        )
        client = yield connectProtocol(endpoint, LineClient(first))
        yield wait_for(lambda: bool(client.lines) or client.done.called, timeout=30)
        lines = client.lines
        client.transport.loseConnection()
        yield client.done
        return lines[0] if lines else b""

    @inlineCallbacks
    def test_penalised_through_one_refused_by_other(self) -> Any:
        """
        An early talker arriving through HAProxy at one instance is blocked there under its
        own address (127.0.0.5, from the PROXY v2 header, never HAProxy's 127.0.0.17); its
        next connection, which HAProxy sends to the other instance, is refused there
        (C{ERR BUSY penalised}), and that instance logs the refusal with the client's
        address too.
        """
        haproxy = need_peer(HAPROXY, "haproxy")
        port = self.start_redis()
        one, two = self.instance(port), self.instance(port)
        yield wait_for(lambda: one.service.shared.sharing and two.service.shared.sharing)
        front = start_listening_peer(
            self,
            "haproxy",
            self.tmp,
            lambda f: HAPROXY_CONFIG.format(
                front=f, one=one.port(), two=two.port(), sender=SENDER
            ),
            lambda path: [haproxy, "-db", "-f", path],
            30.0,
        )
        line = yield self.through(front, b"HELLO\r\n")
        self.assertTrue(line.startswith(b"ERR EARLY_TALKER"), line)
        [talk] = [e for e in self.events if e.get("event") == "proto.early_talker"]
        first = self.of(talk, one, two)
        other = two if first is one else one
        self.assertIsNotNone(first)
        self.assertTrue(talk["peer"].startswith(f"{CLIENT}:"), talk["peer"])
        yield wait_for(lambda: bool(other.factory.admission.penalties()))
        self.assertEqual(
            [(s, n) for s, _, n in other.factory.admission.penalties()], [(f"{CLIENT}/32", 0)]
        )
        line = yield self.through(front)
        self.assertEqual(line, b"ERR BUSY penalised")
        [reject] = [
            e
            for e in self.events
            if e.get("event") == "conn.reject" and e.get("reason") == "penalised"
        ]
        self.assertIs(self.of(reject, one, two), other)
        self.assertTrue(reject["peer"].startswith(f"{CLIENT}:"), reject["peer"])
        peers = [e["peer"] for e in self.events if isinstance(e.get("peer"), str)]
        self.assertFalse([p for p in peers if p.startswith(f"{SENDER}:")], peers)

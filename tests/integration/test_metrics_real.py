"""
The metrics endpoint of a real gateway (as C{twistd netguard} builds it) on real loopback
sockets: one authenticated echo session and one connection refused by admission control move
the counters, and a real HTTP client (L{twisted.web.client.Agent}) reads them back in a text
exposition that the strict test parser accepts.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from netguard.ops.metrics import CONTENT_TYPE
from tests.integration.test_gateway_e2e import Collector, RawClient
from tests.integration.util import RunningGateway
from tests.test_metrics import parse_exposition


class MetricsEndpointTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        # One connection per source: with the echo session open, the next one is refused.
        self.gateway = RunningGateway(
            self,
            "[admission]\nper_source_max = 1\n"
            '[ops]\ncontrol_socket = ""\nmetrics_listen = "tcp:0:interface=127.0.0.1"\n',
            {"listen": ["tcp:0:interface=127.0.0.1"]},
        )
        self.service = self.gateway.service
        self.metrics_address = self.service.metrics.port.getHost()

    @inlineCallbacks
    def scrape(self, path=b"/metrics", method=b"GET"):
        """
        One HTTP request to the metrics listener; returns (response, body).
        """
        url = b"http://127.0.0.1:%d%s" % (self.metrics_address.port, path)
        response = yield Agent(reactor).request(method, url, Headers({b"user-agent": [b"t"]}))
        body = yield readBody(response)
        return response, body

    @inlineCallbacks
    def metrics(self):
        response, body = yield self.scrape()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [CONTENT_TYPE])
        return parse_exposition(body.decode("utf-8"))

    def test_listens_on_loopback_only(self):
        self.assertEqual(self.metrics_address.host, "127.0.0.1")
        self.assertNotEqual(self.metrics_address.port, 0)

    @inlineCallbacks
    def test_counters_move_with_a_session_and_a_refusal(self):
        before = yield self.metrics()
        self.assertEqual(before[("netguard_connections_total", ())], 0)
        self.assertEqual(before[("netguard_auth_ok_total", ())], 0)
        self.assertEqual(before[("netguard_active", ())], 0)

        # One authenticated echo session, held open.
        payload = b"metrics" * 1000
        client = Collector(self.gateway.credentials, "echo", expected=len(payload))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.gateway.port())
        yield connectProtocol(endpoint, client)
        yield client.opened
        client.transport.write(payload)
        received = yield client.done
        self.assertEqual(received, payload)

        # A second connection from the same source is refused (per_source_max = 1).
        refused = RawClient()
        yield connectProtocol(endpoint, refused)
        said = yield refused.closed
        self.assertTrue(said.startswith(b"ERR BUSY"), said)

        during = yield self.metrics()
        self.assertEqual(during[("netguard_connections_total", ())], 1)
        self.assertEqual(during[("netguard_auth_ok_total", ())], 1)
        self.assertEqual(during[("netguard_active", ())], 1)
        self.assertEqual(during[("netguard_admission_relays", ())], 1)
        reason = (("reason", "per-source-cap"),)
        self.assertEqual(during[("netguard_refused_total", reason)], 1)
        self.assertEqual(
            sum(v for (n, _), v in during.items() if n == "netguard_refused_total"), 1
        )

        # Bytes are counted when the session closes.
        client.transport.loseConnection()
        yield self.gateway.idle()
        after = yield self.metrics()
        self.assertEqual(after[("netguard_active", ())], 0)
        self.assertEqual(after[("netguard_bytes_up_total", ())], len(payload))
        self.assertEqual(after[("netguard_bytes_down_total", ())], len(payload))
        self.assertEqual(after[("netguard_auth_fail_total", ())], 0)
        self.assertGreater(after[("netguard_uptime_seconds", ())], 0)

    @inlineCallbacks
    def test_other_paths_404(self):
        response, body = yield self.scrape(b"/")
        self.assertEqual(response.code, 404)
        self.assertNotIn(b"netguard_", body)

    @inlineCallbacks
    def test_post_405(self):
        response, _ = yield self.scrape(method=b"POST")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])

    @inlineCallbacks
    def test_stopped_with_the_gateway(self):
        yield self.service.stopService()  # the fixture's cleanup stopping again is harmless
        self.assertIsNone(self.service.metrics.port)
        with self.assertRaises(ConnectionRefusedError):
            yield self.scrape()

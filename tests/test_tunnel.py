"""
Tests for L{netguard.client.tunnel}: what a local connection does when the gateway refuses.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial import unittest

from netguard.client.protocol import NGPError
from netguard.client.tunnel import RETRY_DELAYS, TunnelFactory


class RefusingEndpoint:
    """
    Stands in for the gateway endpoint: answers each connect with the next outcome.
    """

    service = "redis"

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.attempts = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts += 1
        outcome = self.outcomes.pop(0) if self.outcomes else NGPError("BUSY", "rate")
        if isinstance(outcome, Exception):
            return fail(outcome)
        return Deferred()  # never answers: stays connecting


class RetryTests(unittest.TestCase):
    def start(self, outcomes: list[Any]) -> tuple[Any, StringTransport, RefusingEndpoint, Clock]:
        clock = Clock()
        endpoint = RefusingEndpoint(outcomes)
        factory = TunnelFactory(clock, endpoint, random=lambda: 0.5)  # type: ignore[arg-type]
        local = factory.buildProtocol(None)
        transport = StringTransport()
        with capturedLogs() as self.events:
            local.makeConnection(transport)
        return local, transport, endpoint, clock

    def test_busy_rate_is_retried_after_a_pause(self) -> None:
        local, transport, endpoint, clock = self.start([NGPError("BUSY", "rate"), "pending"])
        self.assertEqual(endpoint.attempts, 1)
        self.assertFalse(transport.disconnecting)
        clock.advance(RETRY_DELAYS[0])
        self.assertEqual(endpoint.attempts, 2)
        self.assertFalse(transport.disconnecting)

    def test_gives_up_after_the_last_delay(self) -> None:
        local, transport, endpoint, clock = self.start([])
        with capturedLogs() as events:
            for delay in RETRY_DELAYS:
                clock.advance(delay)
        self.assertEqual(endpoint.attempts, len(RETRY_DELAYS) + 1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual([e["event"] for e in events if "event" in e][-1], "tunnel.failed")

    def test_refusals_about_the_client_are_not_retried(self) -> None:
        for error in (
            NGPError("BUSY", "penalised"),
            NGPError("BUSY", "denied"),
            NGPError("AUTH_FAILED", "authentication failed"),
        ):
            local, transport, endpoint, clock = self.start([error])
            clock.advance(10)
            self.assertEqual(endpoint.attempts, 1, error)
            self.assertTrue(transport.disconnecting, error)

    def test_local_close_cancels_the_pending_retry(self) -> None:
        local, transport, endpoint, clock = self.start([NGPError("BUSY", "rate")])
        local.connectionLost(None)
        clock.advance(10)
        self.assertEqual(endpoint.attempts, 1)

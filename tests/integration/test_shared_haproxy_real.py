"""
Two gateway instances behind real HAProxy (Debian package C{haproxy}, run in the foreground,
stopped by PID), which balances clients between them round robin and sends each a PROXY v2
header (C{send-proxy-v2}) from a listed sender address (C{haproxy:proxy_from=...}), the
instances sharing state through a real redis-server: both log the real client address, and
a source penalised through one instance is refused by the other. The HAProxy configuration
and the instances' settings are read from C{docs/operating.md} section 7.12, so that the
deployment guide shows exactly what this test runs.
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from tests.integration.test_shared_real import LineClient, RedisCase
from tests.integration.util import RunningGateway, start_haproxy, wait_for

#: HAProxy's source address towards the instances, the one listed sender.
SENDER = "127.0.0.17"
#: The client's own address.
CLIENT = "127.0.0.5"
#: The deployment guide whose configuration this test runs, and its section.
GUIDE = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "operating.md")
SECTION = "### 7.12 "
#: The ports the guide shows: HAProxy's front end, instance one, instance two, Redis.
FRONT, ONE, TWO, REDIS = "127.0.0.1:7700", "127.0.0.1:7701", "127.0.0.1:7702", "port=6379"


def guide_blocks() -> tuple[str, dict[str, Any]]:
    """
    The guide's HAProxy configuration (its C{haproxy} block) and instance one's settings
    (its C{toml} block), from section 7.12 of C{docs/operating.md}.
    """
    with open(GUIDE, encoding="utf-8") as handle:
        text = handle.read()
    start = text.index(SECTION)
    end = text.find("\n## ", start)
    section = text[start : end if end != -1 else len(text)]
    [haproxy] = re.findall(r"```haproxy\n(.*?)```", section, re.S)
    [toml] = re.findall(r"```toml\n(.*?)```", section, re.S)
    return haproxy, tomllib.loads(toml)


def replaced(text: str, old: str, new: str) -> str:
    """
    C{text} with C{old}, which must occur in it, replaced by C{new}.
    """
    if old not in text:
        raise AssertionError(f"{old!r} is not in the guide's configuration")
    return text.replace(old, new)


class SharedBehindHAProxyTests(RedisCase):
    """
    HAProxy in front of two instances sharing one redis-server.
    """

    timeout = 120

    def instance(self, redis_port: int) -> RunningGateway:
        """
        An instance configured as the guide's instance one: its C{haproxy:} listener (on a
        free port) and its C{[shared]} Redis (the test's).
        """
        _, settings = guide_blocks()
        [listener] = settings["listen"]
        self.assertEqual(listener, f"haproxy:proxy_from={SENDER}/32:tcp:7701:interface=127.0.0.1")
        redis = replaced(settings["shared"]["redis"], REDIS, f"port={redis_port}")
        text = f'[shared]\nredis = "{redis}"\n[overload]\nmax_lag = "off"\n'
        listener = replaced(listener, ":tcp:7701:", ":tcp:0:")
        return RunningGateway(self, text, overrides={"listen": [listener]}, prefix="ng-shx-")

    def haproxy_config(self, front: int, one: int, two: int) -> str:
        """
        The guide's HAProxy configuration with the test's ports.
        """
        config, _ = guide_blocks()
        self.assertIn(f"send-proxy-v2 source {SENDER} check check-send-proxy", config)
        config = replaced(config, FRONT, f"127.0.0.1:{front}")
        config = replaced(config, ONE, f"127.0.0.1:{one}")
        return replaced(config, TWO, f"127.0.0.1:{two}")

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
        address too. HAProxy's health checks (C{check-send-proxy}) reach both instances
        and are never an offence.
        """
        port = self.start_redis()
        one, two = self.instance(port), self.instance(port)
        yield wait_for(lambda: one.service.shared.sharing and two.service.shared.sharing)
        front = start_haproxy(
            self, self.tmp, lambda f: self.haproxy_config(f, one.port(), two.port()), 30.0
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

        # HAProxy's health checks (a PROXY v2 LOCAL header, then a hang-up) reach each
        # instance from the sender's own address: served and closed, never an offence.
        def checks(running: RunningGateway) -> list[dict[str, Any]]:
            return [
                e
                for e in self.events
                if str(e.get("peer", "")).startswith(f"{SENDER}:") and self.of(e, running)
            ]

        yield wait_for(lambda: bool(checks(one) and checks(two)), timeout=30)
        sender_events = {e["event"] for e in checks(one) + checks(two)}
        self.assertEqual(sender_events - {"conn.open", "conn.close"}, set(), sender_events)
        for running in (one, two):
            keys = [row[0] for row in running.factory.admission.penalties()]
            self.assertNotIn(f"{SENDER}/32", keys)

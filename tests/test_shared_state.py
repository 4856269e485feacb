"""
Tests for L{netguard.shared.state} on test doubles: two processes' shared state against a
Redis test double (an in-memory stand-in for the few commands netguard sends, not a peer; the
real redis-server is in C{tests/integration/test_shared_real.py}), time on a L{task.Clock}.
Blocks cross processes and are read back on connect; hostile channel messages are dropped;
tickets are claimed once; an outage is logged once; the shared rate, measured in model time.
Also the C{[shared]} configuration keys.
"""

from __future__ import annotations

import fnmatch
import os
import random
import shutil
import tempfile
from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial import unittest

from netguard.admission import AdmissionPolicy, Refusal
from netguard.config import ConfigError, load_config
from netguard.shared.link import BACKOFF_MAX, GRACE, STABLE
from netguard.shared.resp import encode_command, parse_reply
from netguard.shared.settings import SharedSettings
from netguard.shared.state import (
    FEED_PING,
    MAX_MESSAGE,
    RATE_FLUSH,
    SharedState,
    parse_block,
    valid_source,
)
from netguard.workers.penalties import SharedAdmission


class PipeTransport:
    """
    One end of a synchronous in-memory connection: what is written is delivered to the
    other end at once.
    """

    def __init__(self) -> None:
        self.peer: Protocol | None = None
        self.other: PipeTransport | None = None
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        if not self.disconnecting and self.peer is not None:
            self.peer.dataReceived(data)

    def abortConnection(self) -> None:
        self.loseConnection()

    def loseConnection(self) -> None:
        if self.disconnecting:
            return
        self.disconnecting = True
        assert self.other is not None
        self.other.disconnecting = True
        for end in (self, self.other):
            if end.peer is not None:
                end.peer.connectionLost(None)


class RedisDouble:
    """
    A Redis test double: a dictionary with millisecond expiry on the test's clock, answering
    PING, AUTH, SET (NX, PX), PEXPIRE (GT), GET, PTTL, INCRBY, SCAN (MATCH; one round),
    SUBSCRIBE and PUBLISH in RESP2 (PING on a subscribed connection with a C{pong} push, as
    Redis does). C{down}: connections are refused; C{stall}: commands of these names are
    never answered; C{hold}: their answers are kept until L{release} (a reply that came in
    time but is read late).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.data: dict[bytes, tuple[bytes, float | None]] = {}
        self.subscribers: list[RedisConnection] = []
        self.connections: list[RedisConnection] = []
        self.down = False
        self.stall: set[bytes] = set()
        self.hold: set[bytes] = set()
        self.held: list[tuple[RedisConnection, bytes]] = []
        self.commands: Counter[bytes] = Counter()

    def release(self) -> None:
        held, self.held = self.held, []
        for connection, answer in held:
            connection.transport.write(answer)

    def live(self, key: bytes) -> tuple[bytes, float | None] | None:
        entry = self.data.get(key)
        if entry is not None and entry[1] is not None and entry[1] <= self.clock.seconds():
            del self.data[key]
            return None
        return entry

    def answer(self, connection: RedisConnection, args: list[bytes]) -> bytes | None:
        name = args[0].upper()
        self.commands[name] += 1
        if name in self.stall:
            return None
        if name in self.hold:
            self.hold.discard(name)
            answer = self.answer(connection, args)
            self.commands[name] -= 1
            if answer is not None:
                self.held.append((connection, answer))
            return None
        now = self.clock.seconds()
        if name == b"PING" and connection in self.subscribers:
            return b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
        if name in (b"PING", b"AUTH"):
            return b"+PONG\r\n" if name == b"PING" else b"+OK\r\n"
        if name == b"SET":
            options = [a.upper() for a in args[3:]]
            if b"NX" in options and self.live(args[1]) is not None:
                return b"$-1\r\n"
            expiry = None
            if b"PX" in options:
                expiry = now + int(args[3 + options.index(b"PX") + 1]) / 1000
            self.data[args[1]] = (args[2], expiry)
            return b"+OK\r\n"
        if name == b"PEXPIRE":
            entry = self.live(args[1])
            if entry is None:
                return b":0\r\n"
            expiry = now + int(args[2]) / 1000
            if len(args) > 3 and args[3].upper() == b"GT":
                if entry[1] is None or expiry <= entry[1]:
                    return b":0\r\n"
            self.data[args[1]] = (entry[0], expiry)
            return b":1\r\n"
        if name == b"GET":
            entry = self.live(args[1])
            return b"$-1\r\n" if entry is None else b"$%d\r\n%s\r\n" % (len(entry[0]), entry[0])
        if name == b"PTTL":
            entry = self.live(args[1])
            if entry is None:
                return b":-2\r\n"
            return b":%d\r\n" % (-1 if entry[1] is None else round((entry[1] - now) * 1000))
        if name == b"INCRBY":
            entry = self.live(args[1])
            value = int(entry[0] if entry else b"0") + int(args[2])
            self.data[args[1]] = (b"%d" % value, entry[1] if entry else None)
            return b":%d\r\n" % value
        if name == b"SCAN":
            pattern = args[args.index(b"MATCH") + 1].decode() if b"MATCH" in args else "*"
            keys = [
                k for k in list(self.data) if self.live(k) and fnmatch.fnmatch(k.decode(), pattern)
            ]
            return b"*2\r\n$1\r\n0\r\n" + encode_command(*keys)
        if name == b"SUBSCRIBE":
            self.subscribers.append(connection)
            return b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(args[1]), args[1])
        if name == b"PUBLISH":
            live = [s for s in self.subscribers if not s.transport.disconnecting]
            for subscriber in live:
                subscriber.transport.write(encode_command(b"message", args[1], args[2]))
            return b":%d\r\n" % len(live)
        return b"-ERR unknown command\r\n"


class RedisConnection(Protocol):
    """
    The double's side of one connection.
    """

    def __init__(self, redis: RedisDouble) -> None:
        self.redis = redis
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while self.buffer:
            try:
                args, end = parse_reply(self.buffer)
            except Exception:  # noqa: BLE001 - incomplete
                return
            self.buffer = self.buffer[end:]
            assert isinstance(args, list)
            answer = self.redis.answer(self, args)  # type: ignore[arg-type]
            if answer is not None:
                self.transport.write(answer)


class RedisEndpoint:
    """
    A client endpoint test double connecting to a L{RedisDouble}.
    """

    def __init__(self, redis: RedisDouble) -> None:
        self.redis = redis

    def connect(self, factory: Any) -> Deferred[Any]:
        if self.redis.down:
            attempt: Deferred[Any] = Deferred()
            attempt.errback(ConnectionRefusedError())
            return attempt
        client = factory.buildProtocol(None)
        server = RedisConnection(self.redis)
        near, far = PipeTransport(), PipeTransport()
        near.peer, far.peer = server, client  # writes of the client reach the server
        near.other, far.other = far, near
        server.transport = far
        client.makeConnection(near)
        self.redis.connections.append(server)
        attempt = Deferred()
        attempt.callback(client)
        return attempt


class Holder:
    """
    What a gateway factory offers the shared state: admission and the ticket book.
    """

    def __init__(self, admission: Any) -> None:
        self.admission = admission
        self.tickets = None
        self.claims: Any = "unset"

    def share_tickets(self, claims: Any) -> None:
        self.claims = claims


def kill_connections(redis: RedisDouble) -> None:
    """
    Drop every live connection of the double (as a Redis that was killed).
    """
    for connection in redis.connections:
        connection.transport.loseConnection()
    redis.connections.clear()
    redis.subscribers.clear()


class StateCase(unittest.TestCase):
    """
    Two processes (their admissions and shared states) and one Redis double.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.redis = RedisDouble(self.clock)
        self.events: list[dict[str, Any]] = []

    def process(
        self, policy: AdmissionPolicy | None = None, start: bool = True, **settings: Any
    ) -> tuple[SharedState, SharedAdmission]:
        admission = SharedAdmission(policy or AdmissionPolicy(), self.clock, lambda *a: None)
        state = SharedState(
            SharedSettings(redis="tcp:host=127.0.0.1:port=6379", **settings),
            self.clock,
            Holder(admission),
            RedisEndpoint(self.redis),  # type: ignore[arg-type]
            random=random.Random(7),
        )
        state.log = Logger(observer=self.events.append, source=state)
        if start:
            state.startService()
            self.addCleanup(state.stopService)
        return state, admission

    def named(self, name: str, state: SharedState | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("event") == name and (state is None or e.get("log_source") is state)
        ]


class BlockTests(StateCase):
    """
    Blocks published by one process, applied by the others.
    """

    def test_block_crosses(self) -> None:
        """
        An offence blocking a source in one process blocks it in the other (with the same
        length, no offence of its own), and it is kept in Redis for its length.
        """
        one, first = self.process()
        two, second = self.process()
        self.assertTrue(one.sharing and two.sharing)
        blocked = first.offence("192.0.2.7", "early_talker")
        self.assertIsNotNone(blocked)
        refusal = second.enter("192.0.2.7")
        self.assertIsInstance(refusal, Refusal)
        self.assertEqual(refusal.reason, "penalised")  # type: ignore[union-attr]
        [(source, left, offences)] = second.penalties()
        self.assertEqual((source, offences), ("192.0.2.7/32", 0))
        self.assertAlmostEqual(left, blocked, places=2)  # type: ignore[arg-type]
        value, expiry = self.redis.data[b"netguard:block:192.0.2.7/32"]
        self.assertAlmostEqual(expiry - self.clock.seconds(), blocked, places=2)  # type: ignore[operator]
        self.assertEqual(one.counters["blocks_published"], 1)
        self.assertEqual(two.counters["blocks_applied"], 1)

    def test_loaded_on_connect(self) -> None:
        """
        A process that connects after a block was published reads it back (bounded SCAN,
        then PTTL and GET) with the time left, and refuses the source.
        """
        one, first = self.process()
        blocked = first.offence("198.51.100.1", "early_talker")
        self.clock.advance(4)
        two, second = self.process()
        self.assertIsInstance(second.enter("198.51.100.1"), Refusal)
        [(_, left, _)] = second.penalties()
        self.assertAlmostEqual(left, blocked - 4, places=2)  # type: ignore[operator]
        self.clock.advance(blocked - 4 + 0.01)  # type: ignore[operator]
        self.assertNotIsInstance(second.enter("198.51.100.1"), Refusal)

    def test_longer_block_in_redis_kept(self) -> None:
        """
        A shorter block published later does not shorten the one kept in Redis.
        """
        one, first = self.process()
        one.publish_block("203.0.113.0/32", 300, 5)
        one.publish_block("203.0.113.0/32", 10, 3)
        _, expiry = self.redis.data[b"netguard:block:203.0.113.0/32"]
        self.assertAlmostEqual(expiry - self.clock.seconds(), 300)  # type: ignore[operator]

    def test_hostile_messages_dropped(self) -> None:
        """
        Channel messages that are not blocks (bad key, bad numbers, too long, zero or
        negative time, points out of range) are dropped and counted; a block longer than
        C{penalty_max} is cut to it.
        """
        one, first = self.process()
        bad = [
            b"not-an-address 1000 1.0",
            b"192.0.2.1/32 1000",
            b"192.0.2.1/32 x 1.0",
            b"192.0.2.1/32 0 1.0",
            b"192.0.2.1/32 -5 1.0",
            b"192.0.2.1/32 1000 -1",
            b"192.0.2.1/32 1000 1e9",
            b"192.0.2.1/32 1000 nan",
            b"\xff\xfe 1000 1.0",
            b"192.0.2.1/32 " + b"1" * MAX_MESSAGE + b" 1.0",
        ]
        for message in bad:
            self.redis.answer(None, [b"PUBLISH", one.channel, message])  # type: ignore[arg-type]
        self.assertEqual(one.counters["messages_dropped"], len(bad))
        self.assertEqual(first.penalties(), [])
        self.redis.answer(None, [b"PUBLISH", one.channel, b"192.0.2.1/32 99999999 1.0"])  # type: ignore[arg-type]
        [(_, left, _)] = first.penalties()
        self.assertEqual(left, AdmissionPolicy().penalty_max)

    def test_parse_block_bounds(self) -> None:
        """
        L{parse_block} and L{valid_source}: network strings are sources; the host-local
        special keys and other text are not.
        """
        self.assertEqual(parse_block(b"192.0.2.0/24 1500 2.000", 60.0), ("192.0.2.0/24", 1.5, 2.0))
        self.assertIsNone(parse_block(b"unix 1500 2.000", 60.0))
        self.assertTrue(valid_source("2001:db8::/64"))
        self.assertFalse(valid_source("2001:db8::/64 extra"))
        self.assertFalse(valid_source("unknown"))

    def test_foreign_prefix_refused(self) -> None:
        """
        A hostile channel message keyed by a network that is not one of this host's source
        keys is dropped: with C{ipv4_prefix = 32} a /32 is a block and a /24 or
        C{0.0.0.0/0} is not; with C{ipv6_prefix = 64} a /64 in admission's spelling is, a
        /48, a /65, another spelling of the /64, or an IPv4-mapped /64 is not. A flood of
        such keys evicts no genuine block (the table is at its bound).
        """
        policy = AdmissionPolicy(ipv4_prefix=32, ipv6_prefix=64, max_tracked_sources=2)
        one, first = self.process(policy)
        self.redis.answer(None, [b"PUBLISH", one.channel, b"192.0.2.1/32 60000 1.0"])  # type: ignore[arg-type]
        self.redis.answer(None, [b"PUBLISH", one.channel, b"2001:db8:1:2::/64 60000 1.0"])  # type: ignore[arg-type]
        self.assertEqual(
            sorted(row[0] for row in first.penalties()), ["192.0.2.1/32", "2001:db8:1:2::/64"]
        )
        foreign = [
            b"192.0.2.0/24",
            b"0.0.0.0/0",
            b"2001:db8::/48",
            b"2001:db8:1:2::/65",
            b"2001:db8:1:2:0::/64",
            b"::ffff:0:0/96",
            b"::ffff:c000:201/128",
        ]
        foreign += [b"198.51.%d.0/24" % n for n in range(50)]
        for key in foreign:
            self.redis.answer(None, [b"PUBLISH", one.channel, key + b" 60000 1.0"])  # type: ignore[arg-type]
        self.assertEqual(one.counters["messages_dropped"], len(foreign))
        self.assertEqual(
            sorted(row[0] for row in first.penalties()), ["192.0.2.1/32", "2001:db8:1:2::/64"]
        )
        self.assertIsInstance(first.enter("192.0.2.1"), Refusal)
        self.assertEqual(parse_block(b"0.0.0.0/0 1000 1.0", 60.0, (32, 64)), None)
        self.assertEqual(
            parse_block(b"0.0.0.0/0 1000 1.0", 60.0, (0, 64)), ("0.0.0.0/0", 1.0, 1.0)
        )
        self.assertEqual(parse_block(b"192.0.2.1/32 1000 1.0", 60.0, (24, 64)), None)
        self.assertEqual(
            parse_block(b"192.0.2.0/24 1000 1.0", 60.0, (24, 64)), ("192.0.2.0/24", 1.0, 1.0)
        )

    def test_foreign_prefix_not_read_back(self) -> None:
        """
        A block stored in Redis under a key of another prefix length (written there by
        anyone who can write to Redis) is not applied when blocks are read back; one of the
        local length is.
        """
        for key in (b"192.0.2.0/24", b"0.0.0.0/0", b"192.0.2.7/32"):
            self.redis.data[b"netguard:block:" + key] = (b"3.000", self.clock.seconds() + 30)
        one, first = self.process(AdmissionPolicy(ipv4_prefix=32))
        self.assertEqual([row[0] for row in first.penalties()], ["192.0.2.7/32"])

    def test_host_local_sources_not_shared(self) -> None:
        """
        A block of the unix-socket source (every local unix peer of one host) is neither
        published nor counted for the shared rate: on another host that key means other
        peers.
        """
        one, first = self.process()
        for key in ("unix", "unknown"):
            one.publish_block(key, 10, 3)
            one.count_connection(key)
        self.clock.advance(RATE_FLUSH)
        self.assertEqual(self.redis.commands[b"PUBLISH"], 0)
        self.assertEqual(self.redis.commands[b"INCRBY"], 0)
        self.assertEqual(one.counters["blocks_published"], 0)

    def test_subscription_lost_reads_back(self) -> None:
        """
        Blocks published while a process's subscription was down (its command link up)
        are read back when the subscription is made again.
        """
        one, first = self.process()
        two, second = self.process()
        [feed] = [c for c in self.redis.subscribers if c is not None][1:2]
        feed.transport.loseConnection()
        self.redis.subscribers.remove(feed)
        first.offence("192.0.2.77", "early_talker")
        self.assertNotIsInstance(second.enter("192.0.2.77"), Refusal)
        for _ in range(20):
            self.clock.advance(0.1)  # the first retry comes within 0.375 s
        self.assertTrue(two.sharing)
        self.assertIsInstance(second.enter("192.0.2.77"), Refusal)


class TicketClaimTests(StateCase):
    """
    L{SharedState.claim_ticket}.
    """

    def test_once(self) -> None:
        """
        The first claim of a ticket is fresh (C{True}), kept until the ticket expires; a
        second one, from any process, is a replay (C{False}); after expiry the key is gone.
        """
        one, _ = self.process()
        two, _ = self.process()
        now = self.clock.seconds()
        self.assertIs(self.successResultOf(one.claim_ticket(b"\x01" * 16, now + 60, now)), True)
        self.assertIs(self.successResultOf(two.claim_ticket(b"\x01" * 16, now + 60, now)), False)
        self.assertIs(self.successResultOf(one.claim_ticket(b"\x02" * 16, now + 60, now)), True)
        self.clock.advance(60)
        self.assertIsNone(self.redis.live(b"netguard:spent:" + (b"01" * 16)))

    def test_down_answers_at_once(self) -> None:
        """
        While Redis is down a claim is answered at once with L{None} (the local verdict).
        """
        self.redis.down = True
        one, _ = self.process()
        now = self.clock.seconds()
        self.assertIsNone(self.successResultOf(one.claim_ticket(b"\x01" * 16, now + 60, now)))
        self.assertEqual(one.counters["tickets_local"], 1)

    def test_stalled_claim_bounded(self) -> None:
        """
        A claim Redis does not answer waits the bound exactly (not answered one tick
        before), then is L{None} (the connection kept); still unanswered after the grace,
        the connection is dropped and the outage logged once.
        """
        one, _ = self.process(timeout=0.05)
        self.redis.stall.add(b"SET")
        now = self.clock.seconds()
        claim = one.claim_ticket(b"\x01" * 16, now + 60, now)
        self.clock.advance(0.049)
        self.assertNoResult(claim)
        self.clock.advance(0.001)
        self.assertIsNone(self.successResultOf(claim))
        self.assertEqual(self.named("shared.degraded", one), [])
        self.assertTrue(one.sharing)
        self.clock.advance(GRACE - 0.05)
        self.assertEqual(len(self.named("shared.degraded", one)), 1)
        self.assertFalse(one.link.up)

    def test_late_reply_after_stall(self) -> None:
        """
        The event loop stalls past the bound while Redis's answer to a claim waits unread:
        the claim is judged locally at the bound (L{None}, counted), the late answer is then
        read and dropped, and sharing stays up: no C{shared.degraded}, the connection kept,
        later claims answered by Redis.
        """
        one, _ = self.process(timeout=0.05)
        connections = len(self.redis.connections)
        self.redis.hold.add(b"SET")
        now = self.clock.seconds()
        claim = one.claim_ticket(b"\x01" * 16, now + 60, now)
        self.clock.advance(0.08)
        self.assertIsNone(self.successResultOf(claim))
        self.redis.release()
        self.assertEqual((one.link.timeouts, one.link.late), (1, 1))
        self.clock.advance(GRACE * 2)
        self.assertEqual(self.named("shared.degraded", one), [])
        self.assertTrue(one.sharing)
        self.assertEqual(len(self.redis.connections), connections)
        self.assertIs(self.successResultOf(one.claim_ticket(b"\x01" * 16, now + 60, now)), False)
        self.assertEqual(one.counters["tickets_local"], 1)

    def test_hooked_into_book(self) -> None:
        """
        Started, the shared state offers itself for ticket claims; stopped, it withdraws.
        """
        one, _ = self.process()
        self.assertIs(one.holder.claims, one)
        one.stopService()
        self.assertIsNone(one.holder.claims)


class HealthTests(StateCase):
    """
    Degradation and restoration, logged once per outage.
    """

    def test_outage_logged_once(self) -> None:
        """
        Redis killed: one C{shared.degraded} however many reconnections fail; local blocks
        still work and are not shared; back: shared again at once (blocks decided meanwhile
        elsewhere are read back), and one C{shared.restored} once sharing held for
        L{STABLE} seconds (not a tick before).
        """
        one, first = self.process()
        two, second = self.process()
        self.assertEqual(len(self.named("shared.connected")), 2)
        self.redis.down = True
        kill_connections(self.redis)
        for _ in range(20):
            self.clock.advance(BACKOFF_MAX)
        self.assertGreaterEqual(one.link.failures, 10)
        self.assertEqual(len(self.named("shared.degraded", one)), 1)
        self.assertEqual(len(self.named("shared.degraded", two)), 1)
        first.offence("192.0.2.9", "early_talker")
        self.assertIsInstance(first.enter("192.0.2.9"), Refusal)
        self.assertNotIsInstance(second.enter("192.0.2.9"), Refusal)
        self.assertEqual(one.counters["blocks_unshared"], 1)
        self.redis.down = False
        self.redis.data[b"netguard:block:192.0.2.10/32"] = (b"3.000", self.clock.seconds() + 30)
        self.clock.advance(BACKOFF_MAX * 1.5)
        self.assertTrue(one.sharing and two.sharing)
        self.assertIsInstance(second.enter("192.0.2.10"), Refusal)
        self.assertEqual(self.named("shared.restored"), [])
        self.clock.advance(STABLE)
        self.assertEqual(len(self.named("shared.restored", one)), 1)
        self.assertEqual(len(self.named("shared.restored", two)), 1)
        self.assertFalse(one.degraded or two.degraded)

    def test_flapping_redis_is_one_outage(self) -> None:
        """
        A Redis that answers everything and drops every connection within a second, for 120
        s: one C{shared.degraded} and no C{shared.restored} while it flaps (sharing comes
        back for moments and is used, but never holds for L{STABLE} seconds), and the
        reconnections back off instead of starting again at L{BACKOFF_FIRST} each time
        (at most 25 attempts per link). Once Redis stays up, one C{shared.restored}
        L{STABLE} seconds later, counting the flaps.
        """
        one, _ = self.process()
        start = len(self.events)
        came_back = 0
        for _ in range(120):
            self.clock.advance(1.0)
            came_back += one.sharing
            kill_connections(self.redis)
        names = [e["event"] for e in self.events[start:]]
        self.assertEqual(names, ["shared.degraded"])
        self.assertGreater(came_back, 3)
        self.assertLessEqual(one.link.failures, 25)
        self.assertLessEqual(one.feed.failures, 25)
        self.assertEqual(one.counters["restored"], 0)
        for _ in range(40):
            self.clock.advance(1.0)
        [restored] = self.named("shared.restored", one)
        self.assertEqual(restored["flaps"], one.flaps)
        self.assertGreaterEqual(restored["flaps"], 3)
        self.assertFalse(one.degraded)

    def test_dead_feed_noticed(self) -> None:
        """
        The subscription is checked with a PING every L{FEED_PING} seconds: answered, it
        stays; silently dead (no C{pong} within the grace, as behind a NAT that dropped
        it), one C{shared.degraded} (not one tick before the grace), the feed is made again
        and sharing restored; blocks published meanwhile are read back.
        """
        one, first = self.process()
        two, second = self.process()
        feed = one.feed.protocol
        self.clock.advance(FEED_PING)
        self.clock.advance(GRACE)
        self.assertIs(one.feed.protocol, feed)
        self.assertEqual(self.named("shared.degraded", one), [])
        # The feed's connection is gone without a word: nothing reaches it, nothing answers.
        [dead] = [c for c in self.redis.subscribers if c.transport.peer is feed]
        self.redis.subscribers.remove(dead)
        self.redis.stall.add(b"PING")
        self.clock.advance(FEED_PING - GRACE)
        self.clock.advance(GRACE - 0.001)
        self.assertEqual(self.named("shared.degraded", one), [])
        self.clock.advance(0.001)
        [degraded] = self.named("shared.degraded", one)
        self.assertIn("PING", degraded["reason"])
        self.assertFalse(one.sharing)
        second.offence("192.0.2.44", "early_talker")
        self.redis.stall.discard(b"PING")
        for _ in range(20):
            self.clock.advance(0.1)
        self.assertTrue(one.sharing)
        self.assertIsInstance(first.enter("192.0.2.44"), Refusal)
        self.clock.advance(STABLE)
        self.assertEqual(len(self.named("shared.restored", one)), 1)

    def test_unreachable_at_start(self) -> None:
        """
        Redis unreachable from the start: one C{shared.degraded}, no C{shared.connected};
        when it comes, C{shared.restored}.
        """
        self.redis.down = True
        one, _ = self.process()
        for _ in range(10):
            self.clock.advance(BACKOFF_MAX)
        self.assertEqual([e["event"] for e in self.events], ["shared.degraded"])
        self.redis.down = False
        self.clock.advance(BACKOFF_MAX * 1.5)
        self.clock.advance(STABLE)
        self.assertEqual([e["event"] for e in self.events], ["shared.degraded", "shared.restored"])

    def test_snapshot(self) -> None:
        """
        The figures say whether sharing is up and count what was shared.
        """
        one, first = self.process()
        first.offence("192.0.2.9", "early_talker")
        figures = one.snapshot()
        self.assertEqual((figures["up"], figures["blocks_published"]), (True, 1))


class RateTests(StateCase):
    """
    The per-source rate shared in fixed windows, measured in model time.
    """

    def admitted(self, sharing: bool) -> tuple[int, int]:
        """
        One source opening a connection every 5 ms for 1 s, alternately at two processes,
        each with the default per-source budget (burst 20, 10/s, a cap of 100 live).

        @return: connections admitted in total, and the whole budget of the window.
        """
        policy = AdmissionPolicy(per_source_max=1000)
        if not sharing:
            self.redis.down = True
        (_, one), (_, two) = self.process(policy), self.process(policy)
        self.clock.advance(-(self.clock.seconds() % 1.0) + 1.0)  # the start of a window
        admitted = 0
        for step in range(200):
            admission = (one, two)[step % 2]
            if not isinstance(admission.enter("192.0.2.50"), Refusal):
                admitted += 1
            self.clock.advance(0.005)
        return admitted, int(policy.per_source_burst + policy.per_source_rate * 1.0)

    def test_alone(self) -> None:
        """
        Without Redis the two processes admit each its own budget: nearly twice the whole
        (each bucket refills through the second: 58 of 60 here).
        """
        admitted, budget = self.admitted(sharing=False)
        self.assertGreaterEqual(admitted, 2 * budget - 2)

    def test_shared(self) -> None:
        """
        Shared, the two admit the whole budget of the window plus what arrives before the
        counts are next sent (at most one L{RATE_FLUSH} of arrivals: here 20), not twice it.
        """
        admitted, budget = self.admitted(sharing=True)
        self.assertLessEqual(admitted, budget + int(RATE_FLUSH / 0.005))
        self.assertGreaterEqual(admitted, budget)


class ConfigTests(unittest.TestCase):
    """
    The C{[shared]} table.
    """

    def load(self, text: str) -> Any:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "netguard.toml")
        with open(path, "w") as handle:
            handle.write(text)
        return load_config(path, {"state_dir": os.path.join(directory, "st")})

    def test_defaults(self) -> None:
        """
        Off by default; the bound is 50 ms, the prefix C{netguard:}.
        """
        shared = self.load("").shared
        self.assertEqual(
            (shared.enabled, shared.timeout, shared.key_prefix, shared.rate_window),
            (False, 0.05, "netguard:", 1.0),
        )

    def test_endpoints(self) -> None:
        """
        C{tcp:} and C{unix:} client strings are taken; others (TLS, SOCKS, garbage) are
        refused naming the key.
        """
        self.assertTrue(
            self.load('[shared]\nredis = "tcp:host=127.0.0.1:port=6379"\n').shared.enabled
        )
        self.assertTrue(
            self.load('[shared]\nredis = "unix:path=/run/redis.sock"\n').shared.enabled
        )
        for bad in ('"ssl:host=a:port=1"', '"tcp:host=a"', "6379", '"nonsense"'):
            with self.assertRaises(ConfigError, msg=bad) as caught:
                self.load(f"[shared]\nredis = {bad}\n")
            self.assertIn("shared.redis", str(caught.exception))

    def test_bounds(self) -> None:
        """
        The timeout and window ranges at their ends and one past; the prefix's characters;
        unknown keys.
        """
        self.assertEqual(self.load("[shared]\ntimeout = 5\n").shared.timeout, 5.0)
        self.assertEqual(self.load("[shared]\ntimeout = 0.001\n").shared.timeout, 0.001)
        for bad in (
            "timeout = 5.01",
            "timeout = 0",
            "rate_window = 0.09",
            'key_prefix = "a b"',
            'key_prefix = ""',
            "frobnicate = 1",
        ):
            with self.assertRaises(ConfigError, msg=bad):
                self.load(f"[shared]\n{bad}\n")


class ClaimsDouble:
    """
    A spent-claims test double: each claim is a L{Deferred} the test fires.
    """

    def __init__(self) -> None:
        self.claims: list[tuple[bytes, float, float, Deferred[bool | None]]] = []

    def claim_ticket(self, ticket_id: bytes, expires: float, now: float) -> Deferred[bool | None]:
        waiting: Deferred[bool | None] = Deferred()
        self.claims.append((ticket_id, expires, now, waiting))
        return waiting


class ResumeClaimTests(unittest.TestCase):
    """
    A C{RESUME} at a real gateway factory whose ticket book claims valid tickets in shared
    state (L{netguard.tickets.TicketBook.confirm}, the gateway's wait for it).
    """

    def setUp(self) -> None:
        from tests.test_gateway_tickets import Gateway

        self.gateway = Gateway(self)
        self.claims = ClaimsDouble()
        self.gateway.factory.share_tickets(self.claims)
        self.token = self.gateway.ticket()

    def resume(self) -> tuple[Any, list[bytes]]:
        conn = self.gateway.connect()
        return conn, conn.send(b"RESUME " + self.token)

    def test_waits_for_the_claim(self) -> None:
        """
        A valid ticket is not acted on until its claim is answered (nothing sent, no lane);
        a fresh claim then greets at once, through the lane, with the ticket's id and
        expiry claimed.
        """
        conn, lines = self.resume()
        self.assertEqual(lines, [])
        [(ticket_id, expires, now, waiting)] = self.claims.claims
        self.assertEqual(len(ticket_id), 16)
        self.assertLessEqual(abs(expires - now - 3600), 1)  # issued on a whole second
        self.assertEqual(self.gateway.named("ticket.accepted"), [])
        waiting.callback(True)
        [greeting] = conn.take()
        self.assertTrue(greeting.startswith(b"NETGUARD/1 "))
        [accepted] = self.gateway.named("ticket.accepted")
        self.assertTrue(accepted["lane"])

    def test_replayed_elsewhere(self) -> None:
        """
        A claim answered "already spent" (another process took it) is a replay: C{ERR
        BAD_TICKET replayed}, an offence, although the local spent table had not seen it.
        """
        conn, _ = self.resume()
        self.claims.claims[0][3].callback(False)
        self.assertEqual(conn.take(), [b"ERR BAD_TICKET replayed"])
        [(_, _, offences)] = self.gateway.penalties()
        self.assertEqual(offences, 1)

    def test_unanswered_claim_local_verdict(self) -> None:
        """
        A claim the shared state could not answer (L{None}) leaves the local verdict:
        accepted.
        """
        conn, _ = self.resume()
        self.claims.claims[0][3].callback(None)
        [greeting] = conn.take()
        self.assertTrue(greeting.startswith(b"NETGUARD/1 "))

    def test_closed_while_waiting(self) -> None:
        """
        A connection that ends while its claim is pending is not acted on when the answer
        comes (nothing sent, no lane taken, no event).
        """
        conn, _ = self.resume()
        conn.close()
        self.claims.claims[0][3].callback(True)
        self.assertEqual(conn.take(), [])
        self.assertEqual(self.gateway.named("ticket.accepted"), [])
        self.assertEqual(self.gateway.admission.snapshot()["lane"], 0)

    def test_invalid_ticket_not_claimed(self) -> None:
        """
        Only valid tickets are claimed: a forged one is refused at once.
        """
        conn = self.gateway.connect()
        self.assertEqual(conn.send(b"RESUME AAAA" + self.token[4:]), [b"ERR BAD_TICKET forged"])
        self.assertEqual(self.claims.claims, [])

    def test_kept_across_reloads(self) -> None:
        """
        A reload (same key, or a new key) keeps the claims in the new ticket book; without
        claims, L{netguard.tickets.TicketBook.confirm} asks nothing.
        """
        factory = self.gateway.factory
        factory.apply_config(factory.config, factory.users)
        self.assertIs(factory.tickets.claims, self.claims)
        factory.apply_config(factory.config, factory.users, ticket_key=bytes(32))
        self.assertIs(factory.tickets.claims, self.claims)
        factory.share_tickets(None)
        self.assertIsNone(
            factory.tickets.confirm(factory.tickets.check(b"x", None, factory.users))
        )

# -*- test-case-name: tests.test_shared_state -*-
"""
Admission state shared between gateway processes through Redis: blocks published and
applied by every process, returning-client tickets claimed once across all of them, and
per-source connection counts summed in fixed windows. Redis is never in the way: nothing
waits for it longer than C{timeout}, and without it each process enforces its own limits.
"""

from __future__ import annotations

import ipaddress
import math
import random as _random
from collections import Counter
from collections.abc import Callable
from typing import Any, Final, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from netguard.admission import UNIX_SOURCE, UNKNOWN_SOURCE
from netguard.shared.link import STABLE, RedisLink
from netguard.shared.resp import Reply
from netguard.shared.settings import SharedSettings

#: Blocks read back from Redis after each (re)connection: SCAN rounds, keys per round.
SCAN_ROUNDS: Final = 64
SCAN_COUNT: Final = 256
#: The longest block message accepted from the channel.
MAX_MESSAGE: Final = 160
#: How often counted connections are sent, and the most sources counted between two sends.
RATE_FLUSH: Final = 0.1
MAX_RATE_KEYS: Final = 400
#: The counters of L{SharedState.snapshot}, always all present.
COUNTERS: Final = (
    "degraded",
    "restored",
    "blocks_published",
    "blocks_applied",
    "blocks_unshared",
    "messages_dropped",
    "tickets_claimed",
    "tickets_replayed",
    "tickets_local",
    "rate_blocks",
    "rates_dropped",
    "errors",
)
#: A block sent for a source past its shared rate lasts at least this long.
MIN_RATE_BLOCK: Final = 0.05
#: How often the subscription is checked with a PING (answered within the feed link's
#: grace, or the feed is taken for dead and made again).
FEED_PING: Final = 5.0


class BlockingAdmission(Protocol):
    """
    What the shared state needs of admission (L{netguard.workers.penalties.SharedAdmission}).
    """

    report: Callable[[str, float, float], Any]
    token_taken: Callable[[str], object] | None
    policy: Any

    def apply_block(self, key: str, seconds: float, points: float) -> None: ...


class Holder(Protocol):
    """
    Where the admission and the ticket book in force are found (the gateway factory).
    """

    admission: Any
    tickets: Any


def valid_source(key: str, prefixes: tuple[int, int] | None = None) -> bool:
    """
    Whether C{key} is a source key that means the same on every host: a network string.
    The special keys (every unix-socket peer of one host, every peer without an IP
    address) are local to their host; they and anything else from the channel are dropped.

    @param prefixes: the local C{(ipv4_prefix, ipv6_prefix)}: when given, only a key this
        host's admission could have made is valid: a network of exactly that length,
        written as admission writes it (so that one network is one key), IPv4-mapped IPv6
        refused (admission counts those as IPv4).
    """
    if key in (UNIX_SOURCE, UNKNOWN_SOURCE):
        return False
    try:
        network = ipaddress.ip_network(key)
    except ValueError:
        return False
    if prefixes is None:
        return True
    if str(network) != key:
        return False
    if isinstance(network, ipaddress.IPv4Network):
        return network.prefixlen == prefixes[0]
    return network.prefixlen == prefixes[1] and network.network_address.ipv4_mapped is None


def parse_block(
    message: bytes, max_seconds: float, prefixes: tuple[int, int] | None = None
) -> tuple[str, float, float] | None:
    """
    Read a block message C{b"<source key> <milliseconds> <points>"}.

    @param prefixes: the local prefix lengths (L{valid_source}): a key of another length
        (a network wider than one source, as C{0.0.0.0/0}) is not a block here.
    @return: C{(key, seconds, points)}, seconds capped at C{max_seconds}; L{None} when the
        message is not one.
    """
    if len(message) > MAX_MESSAGE:
        return None
    try:
        key, millis, points = message.decode("ascii").split(" ")
        seconds, score = int(millis) / 1000.0, float(points)
    except ValueError:
        return None
    if not valid_source(key, prefixes) or not 0 < seconds or not 0.0 <= score <= 1000.0:
        return None
    return key, min(seconds, max_seconds), score


def _prefixes(policy: Any) -> tuple[int, int]:
    return int(policy.ipv4_prefix), int(policy.ipv6_prefix)


class SharedState(Service):
    """
    The shared-state layer of one gateway process: two links to Redis (commands, and the
    block channel's subscription), hooked to the holder's admission and ticket book while
    running.

    @ivar degraded: whether an outage is logged and not yet over: sharing is down, or back
        for less than L{STABLE} seconds (an outage ends, and is logged restored, only once
        sharing has held that long; a Redis that keeps dropping its connections is one
        outage, however many times it comes back for a moment).
    @ivar flaps: how many times sharing came back and was lost again within this outage.
    @ivar counters: what was shared, applied, refused or done alone.
    """

    log = Logger()
    name: Any = "shared"

    def __init__(
        self,
        settings: SharedSettings,
        reactor: Any,
        holder: Holder,
        endpoint: IStreamClientEndpoint,
        *,
        password: bytes | None = None,
        workers: int = 1,
        random: _random.Random | None = None,
    ) -> None:
        """
        @param endpoint: where Redis listens (both links connect there).
        @param workers: how many workers share this host's admission budget: the shared rate
            is counted against the whole figure, that is a worker's share times this.
        """
        self.settings = settings
        self.reactor = reactor
        self.holder = holder
        self.workers = max(1, workers)
        prefix = settings.key_prefix
        self.channel = f"{prefix}blocks".encode()
        self._block_key = f"{prefix}block:".encode()
        self._spent_key = f"{prefix}spent:".encode()
        self._rate_key = f"{prefix}rate:".encode()
        common: dict[str, Any] = {
            "timeout": settings.timeout,
            "password": password,
            "on_down": self._down,
            "random": random,
        }
        self.link = RedisLink(reactor, endpoint, on_up=self._link_up, **common)
        self.feed = RedisLink(reactor, endpoint, on_up=self._feed_up, **common)
        self.feed.subscriber = True
        self.degraded = False
        self.ever_up = False
        self.flaps = 0
        self._outage_started = 0.0
        self._holding: Any = None
        self._confirmed = False
        self.counters: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._flusher = LoopingCall(self._flush_rates)
        self._flusher.clock = reactor
        self._pinger = LoopingCall(self._ping_feed)
        self._pinger.clock = reactor
        self._feed_check: Any = None
        self._hooked: Any = None
        self._report: Any = None

    # -- lifetime ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._hook()
        self.link.start()
        self.feed.start()
        self._flusher.start(RATE_FLUSH, now=False)
        self._pinger.start(FEED_PING, now=False)

    def stopService(self) -> Any:
        super().stopService()
        if self._flusher.running:
            self._flusher.stop()
        if self._pinger.running:
            self._pinger.stop()
        self._feed_answered()
        self._stop_holding()
        self.link.stop()
        self.feed.stop()
        self._unhook()
        return None

    def _hook(self) -> None:
        share = getattr(self.holder, "share_tickets", None)
        if share is not None:
            share(self)
        admission = self.holder.admission
        if not hasattr(admission, "apply_block"):
            return  # not shareable (the factory makes a shareable one when [shared] is on)
        self._hooked = admission
        self._report = admission.report
        earlier = admission.report

        def report(key: str, seconds: float, points: float) -> None:
            self.publish_block(key, seconds, points)
            earlier(key, seconds, points)

        admission.report = report
        admission.token_taken = self.count_connection

    def _unhook(self) -> None:
        admission, self._hooked = self._hooked, None
        if admission is not None:
            admission.report = self._report
            admission.token_taken = None
        share = getattr(self.holder, "share_tickets", None)
        if share is not None:
            share(None)

    # -- health -----------------------------------------------------------------------------

    @property
    def sharing(self) -> bool:
        """
        Whether both links are up and Redis answered a real command (the bounded read of the
        blocks in force) since the command link last connected.
        """
        return self.link.up and self.feed.up and self._confirmed

    def _down(self, link: RedisLink, reason: str) -> None:
        if link is self.link:
            self._confirmed = False
        if self._stop_holding():
            self.flaps += 1  # back for less than STABLE seconds: the same outage goes on
        if self.degraded:
            return
        self.degraded = True
        self.flaps = 0
        self._outage_started = self.reactor.seconds()
        self.counters["degraded"] += 1
        self.log.warn(
            "shared state unavailable ({reason}): enforcing local limits only until Redis "
            "answers again",
            event="shared.degraded",
            reason=reason,
            redis=self.settings.redis,
        )

    def _stop_holding(self) -> bool:
        """
        Stop waiting for sharing to hold; return whether it was waited for.
        """
        holding, self._holding = self._holding, None
        if holding is not None and holding.active():
            holding.cancel()
            return True
        return False

    def _held(self) -> None:
        """
        Sharing has held for L{STABLE} seconds since it came back: the outage is over.
        """
        self._holding = None
        if not (self.sharing and self.degraded):
            return
        self.degraded = False
        self.counters["restored"] += 1
        self.log.info(
            "shared state restored: sharing through Redis again after {seconds} s"
            " ({flaps} times back and lost again meanwhile)",
            event="shared.restored",
            redis=self.settings.redis,
            seconds=round(self.reactor.seconds() - self._outage_started, 1),
            flaps=self.flaps,
        )

    def _up(self) -> None:
        if not self.sharing:
            return
        if self.degraded:
            # Shared again from now on, but the outage is over (and logged so) only once
            # this has held for STABLE seconds.
            if self._holding is None:
                self._holding = self.reactor.callLater(STABLE, self._held)
        elif not self.ever_up:
            self.log.info(
                "sharing state through Redis", event="shared.connected", redis=self.settings.redis
            )
        self.ever_up = True

    def _link_up(self, link: RedisLink) -> None:
        self._load_blocks(b"0", 0, 0)

    def _confirm(self) -> None:
        if self._confirmed or not self.link.up:
            return
        self._confirmed = True
        self.link.answered()
        self._up()

    def _ping_feed(self) -> None:
        """
        Check the subscription: a connection silently gone (a NAT or firewall that dropped
        it) would otherwise look up for ever while no block arrives. Redis answers a PING
        in subscribed mode with a C{pong} push; none within the feed's grace drops the
        feed (logged as degraded) and it is made again.
        """
        protocol = self.feed.protocol
        if not self.feed.up or protocol is None or self._feed_check is not None:
            return
        self._feed_check = self.reactor.callLater(self.feed.grace, self._feed_silent, protocol)
        protocol.command("PING")

    def _feed_silent(self, protocol: Any) -> None:
        self._feed_check = None
        if protocol is self.feed.protocol:
            self.feed.drop(f"subscription did not answer PING within {self.feed.grace}s")

    def _feed_answered(self) -> None:
        check, self._feed_check = self._feed_check, None
        if check is not None and check.active():
            check.cancel()

    def _feed_up(self, link: RedisLink) -> None:
        protocol = link.protocol
        if protocol is None:
            return
        self._feed_answered()
        protocol.on_push = self._pushed
        protocol.command("SUBSCRIBE", self.channel)
        if self._confirmed:
            # Blocks published while the subscription was down were missed: read them back.
            self._load_blocks(b"0", 0, 0)
        self._up()

    # -- blocks -----------------------------------------------------------------------------

    def publish_block(self, key: str, seconds: float, points: float) -> None:
        """
        Tell every process of a block decided here: kept in Redis for its length (a longer
        one there is kept), and announced on the channel.
        """
        if not valid_source(key):
            return  # unix-socket peers and peers without an address are this host's own
        if not self.link.up:
            self.counters["blocks_unshared"] += 1
            return
        millis = max(1, math.ceil(seconds * 1000))
        name = self._block_key + key.encode("ascii")
        score = f"{points:.3f}"
        self.link.send("SET", name, score, "PX", millis, "NX")
        self.link.send("PEXPIRE", name, millis, "GT")
        self.link.send("PUBLISH", self.channel, f"{key} {millis} {score}")
        self.counters["blocks_published"] += 1

    def _apply(self, key: str, seconds: float, points: float) -> None:
        admission = self._hooked
        if admission is None:
            return
        # A worker's admission also hands the block to its supervisor (kept for a worker
        # that starts later); never through report, which would publish it again.
        learn = getattr(admission, "apply_learnt", None)
        if learn is not None:
            learn(key, seconds, points)
        else:
            admission.apply_block(key, seconds, points)
        self.counters["blocks_applied"] += 1

    def _pushed(self, reply: Reply) -> None:
        if reply == b"PONG" or (
            isinstance(reply, list) and len(reply) == 2 and reply[0] == b"pong"
        ):
            self._feed_answered()
            self.feed.answered()
            return
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"subscribe":
            self.feed.answered()  # the subscription is confirmed: a real answer
            return
        if not (isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message"):
            return  # anything else
        message = reply[2]
        policy = self._hooked.policy if self._hooked is not None else None
        if policy is None or not isinstance(message, bytes):
            self.counters["messages_dropped"] += 1
            return
        block = parse_block(message, float(policy.penalty_max), _prefixes(policy))
        if block is None:
            self.counters["messages_dropped"] += 1
            return
        self._apply(*block)

    def _load_blocks(self, cursor: bytes, rounds: int, loaded: int) -> None:
        """
        Read the blocks in force from Redis (bounded SCAN), and apply each.
        """
        admission = self._hooked
        if rounds >= SCAN_ROUNDS:
            return
        limit = int(admission.policy.max_tracked_sources) if admission is not None else 0
        pattern = self._block_key + b"*"
        scan = self.link.call("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)

        def scanned(reply: Reply) -> None:
            self._confirm()
            if not (isinstance(reply, list) and len(reply) == 2):
                return
            after, names = reply
            if not isinstance(after, bytes) or not isinstance(names, list):
                return
            count = loaded
            for name in names:
                if count >= limit:
                    return
                if isinstance(name, bytes) and name.startswith(self._block_key):
                    self._load_one(name)
                    count += 1
            if after != b"0":
                self._load_blocks(after, rounds + 1, count)

        scan.addCallbacks(scanned, self._ignored)

    def _load_one(self, name: bytes) -> None:
        key = name[len(self._block_key) :]
        admission = self._hooked
        if admission is None:
            return
        if not valid_source(key.decode("ascii", "replace"), _prefixes(admission.policy)):
            self.counters["messages_dropped"] += 1
            return
        link = self.link

        def got_ttl(millis: Reply) -> Any:
            if not isinstance(millis, int) or millis <= 0:
                return None
            return link.call("GET", name).addCallback(got_points, millis)

        def got_points(score: Reply, millis: int) -> None:
            admission = self._hooked
            if not isinstance(score, bytes) or admission is None:
                return
            policy = admission.policy
            message = b"%s %d %s" % (key, millis, score)
            block = parse_block(message, float(policy.penalty_max), _prefixes(policy))
            if block is not None:
                self._apply(*block)

        link.call("PTTL", name).addCallback(got_ttl).addErrback(self._ignored)

    def _ignored(self, failure: Failure) -> None:
        self.counters["errors"] += 1

    # -- tickets ----------------------------------------------------------------------------

    def claim_ticket(self, ticket_id: bytes, expires: float, now: float) -> Deferred[bool | None]:
        """
        Claim a ticket presented here, once across every process.

        @return: a L{Deferred} (already fired while Redis is down) of C{True} when this is
            its first presentation anywhere, C{False} when it was presented before (a
            replay), L{None} when Redis did not answer within the bound (only the local
            spent table then judged it).
        """
        if not self.link.up:
            self.counters["tickets_local"] += 1
            return succeed(None)
        millis = max(1, math.ceil((expires - now) * 1000))
        claim = self.link.call(
            "SET", self._spent_key + ticket_id.hex().encode(), "1", "NX", "PX", millis
        )

        def answered(reply: Reply) -> bool | None:
            if reply == b"OK":
                self.counters["tickets_claimed"] += 1
                return True
            if reply is None:
                self.counters["tickets_replayed"] += 1
                return False
            return None

        def unanswered(failure: Failure) -> None:
            self.counters["tickets_local"] += 1
            return None

        return claim.addCallbacks(answered, unanswered)

    # -- rates ------------------------------------------------------------------------------

    def count_connection(self, key: str) -> None:
        """
        Count a connection admission let in from C{key}; counts are sent every
        L{RATE_FLUSH} seconds.
        """
        if not self.link.up or not valid_source(key):
            return
        pending = self._pending
        if key not in pending and len(pending) >= MAX_RATE_KEYS:
            self.counters["rates_dropped"] += 1
            return
        pending[key] += 1

    def _flush_rates(self) -> None:
        pending, self._pending = self._pending, Counter()
        admission = self._hooked
        if not pending or admission is None or not self.link.up:
            return
        policy = admission.policy
        window = self.settings.rate_window
        allowed = (
            policy.per_source_burst * self.workers + policy.per_source_rate * self.workers * window
        )
        now = self.reactor.seconds()
        slot = int(now // window)
        ends = (slot + 1) * window
        expiry = max(1, math.ceil(window * 2000))
        for key, count in pending.items():
            name = b"%s%s:%d" % (self._rate_key, key.encode("ascii"), slot)
            total = self.link.call("INCRBY", name, count)
            self.link.send("PEXPIRE", name, expiry)
            total.addCallbacks(self._counted, self._ignored, callbackArgs=(key, allowed, ends))

    def _counted(self, total: Reply, key: str, allowed: float, ends: float) -> None:
        if not isinstance(total, int) or total <= allowed:
            return
        self.counters["rate_blocks"] += 1
        seconds = max(MIN_RATE_BLOCK, ends - self.reactor.seconds())
        self._apply(key, seconds, 0.0)
        self.publish_block(key, seconds, 0.0)

    # -- figures ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """
        The figures for C{status} and the metrics.
        """
        figures: dict[str, Any] = {name: self.counters[name] for name in COUNTERS}
        figures["up"] = self.sharing
        figures["timeouts"] = self.link.timeouts + self.feed.timeouts
        return figures

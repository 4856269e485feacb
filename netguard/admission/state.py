# -*- test-case-name: tests.test_admission -*-
"""
Admission control: which new connection may take a slot, decided before the greeting.

L{Admission} holds one listener's (or one process's) pools, per-source tables and penalties,
the probation pool and the eviction ranking, with an injected clock and random source; it
opens no socket. L{netguard.admitting} applies
it to any Twisted server, the gateway included. The rules in order, the pools, penalties and
bounds: C{docs/operating.md} section 8.
"""

from __future__ import annotations

import ipaddress
import random as _random
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from twisted.logger import Logger

from netguard.addresses import peer_ip
from netguard.admission.addresses import IP, classify, identify, member
from netguard.admission.eviction import (
    GONE,
    LANE,
    PROBATION,
    RELAY,
    UNAUTH,
    EvictionIndex,
    Slot,
    Source,
)
from netguard.admission.penalties import PenaltyTable
from netguard.admission.policy import (
    DENIED,
    EVICTED,
    GLOBAL_CAP,
    LANE_CAP,
    LANE_CAP_USER,
    NOT_ALLOWED,
    OFFENCE_KINDS,
    PENALISED,
    PER_SOURCE_CAP,
    RANDOM_EARLY_DROP,
    RATE,
    RELAY_CAP,
    UNAUTH_CAP,
    UNIX_SOURCE,
    UNKNOWN_SOURCE,
    AdmissionPolicy,
    Refusal,
)
from netguard.admission.probation import ProbationPool
from netguard.clocks import Scheduler
from netguard.errors import ErrorCode, format_error
from netguard.ops.control import matching_sources
from netguard.refusal_log import RefusalLog

#: The clock admission takes: C{seconds()} and C{callLater()} (a reactor, or a
#: L{twisted.internet.task.Clock} in tests).
TimeSource = Scheduler


#: How many stale table entries each call examines for lazy pruning.
_PRUNE_STEP = 2


class Admission:
    """
    The admission state of one listener (or one process): pools, per-source tables, penalties,
    the probation pool and the eviction ranking.

    Two ways to use it. Per connection: L{enter} gives a L{Slot} (or a L{Refusal}), and the
    caller later calls L{release}, and as the connection goes L{progress}, L{enter_lane},
    L{promote}, and L{set_evict_handler} to make it evictable (and to be told when its
    probation ends); L{netguard.admitting.Admitted} wraps these. By address, for callers that
    keep no handle: L{admit}, L{authenticated} and L{released} take the same peer value,
    normally C{transport.getPeer()}; Twisted addresses carry the source port, so each live
    connection is tracked by its own entry, and a call about a connection that was never
    admitted (or was already released) changes nothing. Those connections are never on
    probation and never evicted.

    @ivar policy: the L{AdmissionPolicy} in force.
    @ivar counters: refusals so far, by reason.
    """

    log = Logger()

    def __init__(
        self,
        policy: AdmissionPolicy,
        clock: Scheduler,
        random: _random.Random | None = None,
    ) -> None:
        """
        @param policy: the knobs.
        @param clock: the time source and the scheduler of the probation pool's one timer
            (the reactor; L{twisted.internet.task.Clock} in tests).
        @param random: the source of random-early-drop draws; inject a seeded
            L{random.Random} for deterministic tests. By default a new L{random.Random}
            seeded from the OS (a fresh one per instance, not a shared default).
        """
        self.policy = policy
        self.clock = clock
        #: How many times penalties were cleared (L{clear_penalties}): a table kept beside
        #: this one (a PROXY listener's senders' own points) forgets what a clear lifted.
        self.clears = 0
        self._random = random if random is not None else _random.Random()
        self.counters: Counter[str] = Counter()
        self._deny = tuple(ipaddress.ip_network(n) for n in policy.deny)
        self._allow = tuple(ipaddress.ip_network(n) for n in policy.allow)
        self._never = tuple(ipaddress.ip_network(n) for n in policy.never_penalise)
        self._mask4 = (0xFFFFFFFF << (32 - policy.ipv4_prefix)) & 0xFFFFFFFF
        self._mask6 = ((1 << 128) - 1) ^ ((1 << (128 - policy.ipv6_prefix)) - 1)
        self._points = {kind: policy.points_for(kind) for kind in OFFENCE_KINDS}
        self._overload: str | None = None
        self._unauth = 0
        self._lane = 0
        self._relays = 0
        # user -> that user's connections in the lane (bounded by lane_max: every entry
        # holds at least one lane slot).
        self._lane_users: dict[str, int] = {}
        # peer identity -> the slots admitted by address (admit); bounded by the connection
        # caps, because every entry holds at least one live slot.
        self._live: dict[Hashable, list[Slot]] = {}
        # source key -> its record, while it has live connections (same bound, plus the
        # probation pool's).
        self._sources: dict[str, Source] = {}
        self._evictions = EvictionIndex()
        self._probation = ProbationPool(
            clock, policy.probation_timeout, policy.max_probation, self._expired
        )
        # source key -> [tokens, stamp], least recently seen first.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._penalty_table = PenaltyTable(policy)
        # source key -> penalty, least recently offending first.
        self._penalties = self._penalty_table.entries
        #: Told the source key of each connection that took a rate token (the shared
        #: per-source rate, L{netguard.shared.state}); L{None} when nothing listens.
        self.token_taken: Callable[[str], object] | None = None

    # -- addresses --------------------------------------------------------------------------

    def _key_of(self, ip: IP | None) -> str:
        if ip is None:
            return UNKNOWN_SOURCE
        if ip.version == 4:
            prefix = self.policy.ipv4_prefix
            if prefix == 32:
                return f"{ip}/32"
            return f"{ipaddress.IPv4Address(int(ip) & self._mask4)}/{prefix}"
        prefix = self.policy.ipv6_prefix
        if prefix == 128:
            return f"{ip}/128"
        return f"{ipaddress.IPv6Address(int(ip) & self._mask6)}/{prefix}"

    def source_key(self, address: object) -> str:
        """
        The key under which per-source limits and penalties count a peer.

        IPv4 addresses are grouped by C{ipv4_prefix}, IPv6 by C{ipv6_prefix}, and IPv4-mapped
        IPv6 addresses (C{::ffff:192.0.2.1}, seen on dual-stack listeners) count as IPv4. The
        key is a network string such as C{"192.0.2.1/32"} or C{"2001:db8:1:2::/64"}. It is a
        key for limits only: no rule grants anything by it.

        @param address: a Twisted address or a host string.
        @return: the key; L{UNIX_SOURCE} for unix peers, L{UNKNOWN_SOURCE} for anything that is
            not an IP address (all such peers share that one key, and its limits).
        """
        _, ip, unix = classify(address)
        return UNIX_SOURCE if unix else self._key_of(ip)

    # -- the decision -----------------------------------------------------------------------

    def _refuse(self, reason: str, retry_after: float | None = None) -> Refusal:
        self.counters[reason] += 1
        return Refusal(reason, retry_after)

    def drop_probability(self, unauthenticated: int) -> float:
        """
        The random-early-drop probability with this many unauthenticated connections.

        @param unauthenticated: the line-phase connection count.
        @return: 0 below C{red_soft}; C{red_rate} at C{red_soft}, rising linearly to 1 at
            C{red_hard}; 1 from C{red_hard} on.
        """
        soft, hard = self.policy.red_soft, self.policy.red_hard
        if unauthenticated < soft:
            return 0.0
        if unauthenticated >= hard:
            return 1.0
        rate = self.policy.red_rate
        return rate + (1.0 - rate) * (unauthenticated - soft) / (hard - soft)

    def enter(self, address: object, *, probation: bool = True) -> Slot | Refusal:
        """
        Decide on a new connection, before it is greeted, and give it a slot.

        The rules in order: C{deny}/C{allow}, the global cap (when no unauthenticated
        connection could make room), the per-source rules (penalty block, per-source cap,
        rate) refuse at once. Then the pressure rules: overload; a full unauthenticated pool
        or the global cap, where a victim is evicted when the ranking allows one (at the
        global cap, no victim is a C{global-cap} refusal);
        random early drop, for sources that already hold an unauthenticated slot or have a
        bad record. A pressure rule puts the connection on probation (or refuses it, without
        C{probation}). Unix-socket peers meet no per-source rule and share the source
        L{UNIX_SOURCE}. Cost: a few dictionary operations, plus one scan of the
        C{deny}/C{allow} lists when they are set; no scan of the pool.

        @param address: the peer (C{transport.getPeer()}) or a host string.
        @param probation: whether the caller can hold a connection on probation; without,
            a pressure reason refuses as it says.
        @return: the L{Slot} (its C{probation} set when on probation: call L{release} when
            the connection ends), or the L{Refusal}.
        """
        ident, host, unix = identify(address)
        policy = self.policy
        ip: IP | None = None
        parsed = False
        if not unix and (self._deny or self._allow):
            ip, parsed = (None if host is None else peer_ip(host)), True
            if self._deny and ip is not None and member(ip, self._deny):
                return self._refuse(DENIED)
            if self._allow and (ip is None or not member(ip, self._allow)):
                return self._refuse(NOT_ALLOWED)
        at_cap = self._unauth + self._lane + self._relays >= policy.max_connections
        if at_cap and not self._unauth:
            return self._refuse(GLOBAL_CAP)  # nothing a newcomer could take the place of
        now = self.clock.seconds()
        bad = False
        if unix:
            key = UNIX_SOURCE
        else:
            self._prune(now)
            if not parsed and host is not None:
                ip = peer_ip(host)
            # One string per source, not one per connection (each source record holds it).
            key = sys.intern(self._key_of(ip))
            penalty = None if self._exempt(ip) else self._penalties.get(key)
            if penalty is not None:
                if penalty.blocked_until > now:
                    return self._refuse(PENALISED, penalty.blocked_until - now)
                bad = self._penalty_table.decayed(penalty, now) > 0.0
            known = self._sources.get(key)
            if known is not None and known.live >= policy.per_source_max:
                return self._refuse(PER_SOURCE_CAP)
            wait = self._take_token(key, now)
            if wait is not None:
                return self._refuse(RATE, wait)
            if self.token_taken is not None:
                self.token_taken(key)
        source = self._sources.get(key)
        held = 0 if source is None else source.unauth
        if source is not None and source.bad != bad:
            self._evictions.set_bad(source, bad)
        pressure: str | None = None
        victim: Slot | None = None
        if self._overload is not None:
            pressure = self._overload
        elif at_cap or self._unauth >= policy.max_unauthenticated:
            # At the global cap (every pool full with the default cap) an eviction keeps
            # the count: the newcomer takes the victim's place, or is refused outright.
            victim = self._evictions.victim(held, bad, self._still_bad)
            if victim is None:
                if at_cap:
                    return self._refuse(GLOBAL_CAP)
                pressure = UNAUTH_CAP
        elif (
            self._unauth >= policy.red_soft
            and (held > 0 or bad)
            and self._random.random() < self.drop_probability(self._unauth)
        ):
            pressure = RANDOM_EARLY_DROP
        if pressure is not None and not probation:
            return self._refuse(pressure)
        ended: list[tuple[Slot, str]] = []
        if victim is not None:
            self.counters[EVICTED] += 1
            self._end(victim)
            ended.append((victim, EVICTED))
        if source is None:
            source = self._sources[key] = Source(key, bad)
        source.live += 1
        slot = Slot(source, UNAUTH, ident)
        if pressure is None:
            self._unauth += 1
            source.unauth += 1
            self._evictions.recount(source, source.unauth - 1)
        else:
            slot.pool = PROBATION
            slot.probation = Refusal(pressure)
            shed = self._probation.add(slot, now)
            if shed is not None:
                ended.append(self._shed(shed))
        self._notify(ended)
        return slot

    def admit(self, address: object) -> Refusal | None:
        """
        Decide on a new connection, for callers that track connections by address: as
        L{enter} without probation, the slot found again by the same peer value in
        L{authenticated} and L{released}. Such a connection is never evicted (nothing could
        tell it to go).

        @param address: the peer (C{transport.getPeer()}) or a host string.
        @return: L{None} when admitted (call L{authenticated} and L{released} later), else
            the L{Refusal}.
        """
        result = self.enter(address, probation=False)
        if isinstance(result, Refusal):
            return result
        self._live.setdefault(result.ident, []).append(result)
        return None

    def _take_token(self, key: str, now: float) -> float | None:
        """
        Take one token from C{key}'s bucket.

        @return: L{None} if a token was taken, else the seconds until one is available.
        """
        policy = self.policy
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= policy.max_tracked_sources:
                self._buckets.popitem(last=False)
            self._buckets[key] = [policy.per_source_burst - 1.0, now]
            return None
        self._buckets.move_to_end(key)
        tokens = min(
            float(policy.per_source_burst),
            bucket[0] + max(0.0, now - bucket[1]) * policy.per_source_rate,
        )
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        bucket[0] = tokens
        return (1.0 - tokens) / policy.per_source_rate

    # -- one connection's moves -------------------------------------------------------------

    def _leave_unauth(self, slot: Slot) -> None:
        source = slot.source
        self._evictions.untrack(slot)
        self._unauth -= 1
        source.unauth -= 1
        self._evictions.recount(source, source.unauth + 1)

    def _leave_lane(self, slot: Slot) -> None:
        self._lane -= 1
        user = slot.user
        if user is not None:
            slot.user = None
            held = self._lane_users[user] - 1
            if held:
                self._lane_users[user] = held
            else:
                del self._lane_users[user]

    def _end(self, slot: Slot) -> None:
        """
        Take a live slot out of every count (it becomes L{GONE}).
        """
        pool = slot.pool
        if pool == UNAUTH:
            self._leave_unauth(slot)
        elif pool == RELAY:
            self._relays -= 1
        elif pool == LANE:
            self._leave_lane(slot)
        elif pool == PROBATION:
            self._probation.remove(slot)
        else:
            return
        slot.pool = GONE
        source = slot.source
        source.live -= 1
        if source.live <= 0 and self._sources.get(source.key) is source:
            del self._sources[source.key]

    def _shed(self, slot: Slot) -> tuple[Slot, str]:
        """
        End a connection whose probation is over, counted as the refusal it stood for.
        """
        reason = slot.probation.reason if slot.probation is not None else UNAUTH_CAP
        self.counters[reason] += 1
        slot.pool = GONE  # already out of the probation pool: only the source count is left
        source = slot.source
        source.live -= 1
        if source.live <= 0 and self._sources.get(source.key) is source:
            del self._sources[source.key]
        return slot, reason

    def _expired(self, slots: list[Slot]) -> None:
        self._notify([self._shed(slot) for slot in slots])

    def _notify(self, ended: list[tuple[Slot, str]]) -> None:
        """
        Tell the owners of ended connections, once every count is settled; a failing owner
        is logged and does not stop the others.
        """
        for slot, reason in ended:
            callback = slot.on_evict
            slot.on_evict = None
            if callback is None:
                continue
            try:
                callback(reason)
            except Exception:
                self.log.failure("ending a connection ({reason}) failed", reason=reason)

    def release(self, slot: Slot) -> None:
        """
        Forget a connection that has closed (once; later calls change nothing).
        """
        if slot.pool == GONE:
            return
        self._end(slot)
        ident = slot.ident
        if ident is not None:
            held = self._live.get(ident)
            if held is not None and slot in held:
                held.remove(slot)
                if not held:
                    del self._live[ident]

    def promote(self, slot: Slot) -> Refusal | None:
        """
        The connection has authenticated: move it to the relay pool.

        Only the relay cap applies: how full the other pools are, the global count or
        overload do not matter, and no new slot is taken, so a pre-authentication flood
        cannot stop an authenticated user.

        @return: L{None} when moved (or already a relay); a C{relay-cap} L{Refusal}, the
            connection then staying where it was; the probation refusal of a connection on
            probation (which cannot have logged in); an C{evicted} L{Refusal} for a
            connection that no longer holds a slot.
        """
        pool = slot.pool
        if pool == RELAY:
            return None
        if pool == GONE:
            return Refusal(EVICTED)
        if pool == PROBATION:
            return slot.probation
        if self._relays >= self.policy.max_relays:
            return self._refuse(RELAY_CAP)
        if pool == UNAUTH:
            self._leave_unauth(slot)
        else:
            self._leave_lane(slot)
        slot.pool = RELAY
        self._relays += 1
        return None

    def enter_lane(self, slot: Slot, user: str | None = None) -> Refusal | None:
        """
        The connection presented a valid returning-client ticket: move it from the
        unauthenticated pool, or from probation, into the lane.

        @param user: the user the ticket was issued to: at most C{lane_per_user}
            connections of one user are in the lane at once, each counted until it leaves
            the lane (logs in, closes, or is released). L{None} counts against no user.
        @return: L{None} when it is in the lane (or already there, or a relay); else a
            L{Refusal} and nothing changes: C{lane-cap} when the lane is full,
            C{lane-cap-user} when C{user} already holds C{lane_per_user} lane connections,
            C{global-cap} when a connection on probation would pass the global cap,
            C{evicted} when the connection no longer holds a slot.
        """
        pool = slot.pool
        if pool in (LANE, RELAY):
            return None
        if pool == GONE:
            return Refusal(EVICTED)
        policy = self.policy
        if self._lane >= policy.lane_max:
            return self._refuse(LANE_CAP)
        if user is not None and self._lane_users.get(user, 0) >= policy.lane_per_user:
            return self._refuse(LANE_CAP_USER)
        if pool == PROBATION:
            if self._unauth + self._lane + self._relays >= policy.max_connections:
                return self._refuse(GLOBAL_CAP)
            self._probation.remove(slot)
            slot.probation = None
        else:
            self._leave_unauth(slot)
        slot.pool = LANE
        self._lane += 1
        if user is not None:
            slot.user = user
            self._lane_users[user] = self._lane_users.get(user, 0) + 1
        return None

    def progress(self, slot: Slot) -> None:
        """
        The connection made useful progress (it started to authenticate, or passed a step):
        it ranks after connections that have made none, and its "last useful" time is now.
        """
        if slot.pool == UNAUTH:
            self._evictions.touch(slot)
        else:
            slot.progressed = True

    def set_evict_handler(self, slot: Slot, callback: Callable[[str], object] | None) -> None:
        """
        Set what admission calls to end the connection (with the reason: C{evicted}, or the
        probation reason when probation ends). A connection of the unauthenticated pool is
        evictable only while a handler is set.
        """
        slot.on_evict = callback
        if slot.pool == UNAUTH:
            if callback is None:
                self._evictions.untrack(slot)
            else:
                self._evictions.track(slot)

    def _still_bad(self, source: Source) -> bool:
        return self._penalty_table.has_points(source.key, self.clock.seconds())

    # -- the address-keyed calls ------------------------------------------------------------

    def authenticated(self, address: object) -> Refusal | None:
        """
        L{promote} for a connection admitted with L{admit}.

        @param address: the value given to L{admit}.
        @return: L{None} when moved (or when the connection is unknown or already a relay,
            which changes nothing), or a C{relay-cap} L{Refusal}; the connection then stays
            counted as unauthenticated until L{released}.
        """
        held = self._live.get(identify(address)[0])
        if not held:
            return None
        for slot in held:
            if slot.pool != RELAY:
                return self.promote(slot)
        return None

    def released(self, address: object, authenticated: bool) -> None:
        """
        L{release} for a connection admitted with L{admit}.

        @param address: the value given to L{admit}.
        @param authenticated: whether it was in the relay pool. If that pool holds no
            connection of this peer, the other pool's is released instead, so a caller's
            mislabelled release cannot leave a slot counted for ever. A peer never admitted,
            or already released, changes nothing.
        """
        held = self._live.get(identify(address)[0])
        if not held:
            return
        chosen = held[0]
        for slot in held:
            if (slot.pool == RELAY) == authenticated:
                chosen = slot
                break
        self.release(chosen)

    # -- penalties --------------------------------------------------------------------------

    def offence(self, address: object, kind: str) -> float | None:
        """
        Record an offence by a peer's source.

        Points decay by one per C{penalty_decay} seconds. Once the points pass
        C{penalty_threshold - 1} (C{penalty_threshold} offences within about
        C{penalty_decay} seconds) the source is blocked for
        C{min(penalty_max, penalty_base * 2 ** (ceil(points) - penalty_threshold))} from now (a
        running longer block is kept; an extension is logged too). Unix peers and
        C{never_penalise} networks get no points.

        @param address: the peer.
        @param kind: one of L{OFFENCE_KINDS}.
        @return: the seconds the source is now blocked for, or L{None} if it is not blocked.
        @raise ValueError: for an unknown kind.
        """
        points = self._points.get(kind)
        if points is None:
            raise ValueError(f"unknown offence kind {kind!r}")
        if points == 0:
            return None  # a kind the operator set to 0 points is not an offence at all
        _, ip, unix = classify(address)
        if unix or self._exempt(ip):
            return None
        now = self.clock.seconds()
        self._prune(now)
        key = self._key_of(ip)
        blocked = self._penalty_table.add(key, points, kind, now)
        source = self._sources.get(key)
        if source is not None:
            self._evictions.set_bad(source, True)
        return blocked

    def log_blocks_in(self, refusal_log: RefusalLog | None) -> None:
        """
        Send C{admission.block} through C{refusal_log} (the first few per source and kind in
        an interval are logged, the rest summarised), or log every block (L{None}).
        """
        self._penalty_table.refusal_log = refusal_log

    def _exempt(self, ip: Any) -> bool:
        """
        Whether C{ip} is in C{never_penalise}: it earns no points, and a block of its source
        key (earned by a neighbour in the same IPv4 prefix or IPv6 /64) does not apply to it.
        """
        return ip is not None and bool(self._never) and member(ip, self._never)

    def slot_blocked(self, slot: Slot, address: object) -> bool:
        """
        Whether the source of an admitted connection is blocked now, read only: its key is
        the slot's, so the common answer (no block on it) costs one lookup; only a key under
        a block goes through L{blocked_for} (the C{never_penalise} exemption).

        @param slot: the connection's slot.
        @param address: its peer, as admitted.
        """
        penalty = self._penalties.get(slot.source.key)
        if penalty is None or penalty.blocked_until <= self.clock.seconds():
            return False
        return self.blocked_for(address) is not None

    def blocked_for(self, address: object) -> float | None:
        """
        How long a peer's source stays blocked, read only: no slot, token or point is taken
        (a wrapper that refuses before admission, as the PROXY header layer does for the
        sender, asks this first).

        @param address: the peer.
        @return: the seconds of block left, or L{None} when its source is not blocked (unix
            peers never are).
        """
        _, ip, unix = classify(address)
        if unix or self._exempt(ip):
            return None
        penalty = self._penalties.get(self._key_of(ip))
        if penalty is None:
            return None
        left = penalty.blocked_until - self.clock.seconds()
        return left if left > 0 else None

    def penalties(self) -> list[tuple[str, float, int]]:
        """
        The sources with penalty points or a block, for the control socket.

        Spent entries are pruned first (a full scan, bounded by C{max_tracked_sources}).

        @return: C{(source key, seconds of block left, offences)} tuples, longest block first.
        """
        return self._penalty_table.listing(self.clock.seconds())

    def clear_penalties(self, source: str | None = None) -> int:
        """
        Forget penalties: all of them, or one source's.

        @param source: L{None} for all; else a source key as L{penalties} lists it, an
            address or a network: every key the listing filter shows for it is removed
            (L{netguard.ops.control.matching_sources}); other text removes nothing.
        @return: how many entries were removed.
        """
        self.clears += 1
        if source is None:
            count = len(self._penalties)
            self._penalties.clear()
            return count
        keys = matching_sources(list(self._penalties), source)
        for key in keys:
            del self._penalties[key]
        return len(keys)

    def _prune(self, now: float) -> None:
        """
        Drop a few entries at the old end of each table that carry no information any more:
        a bucket that has refilled completely, a penalty with no points and no block. Each call
        adds at most one entry per table and examines up to C{_PRUNE_STEP}, so idle entries go
        away as traffic continues, at constant cost per call.
        """
        buckets = self._buckets
        burst = float(self.policy.per_source_burst)
        rate = self.policy.per_source_rate
        for _ in range(_PRUNE_STEP):
            if not buckets:
                break
            key = next(iter(buckets))
            tokens, stamp = buckets[key]
            if tokens + max(0.0, now - stamp) * rate < burst:
                break
            del buckets[key]
        self._penalty_table.prune(now, _PRUNE_STEP)

    # -- overload and stress ----------------------------------------------------------------

    def set_overload(self, reason: str | None) -> None:
        """
        Start or stop putting every new connection on probation (refusing it, for callers
        that cannot hold one) because the process is overloaded. The lane, logins and
        established connections are not touched.

        @param reason: the refusal reason (C{overload-load}, C{overload-lag} or
            C{overload-memory}), or L{None} to stop.
        """
        self._overload = reason

    @property
    def overload(self) -> str | None:
        """
        The overload reason in force, or L{None}.
        """
        return self._overload

    def stress(self) -> float:
        """
        How stressed admission is, from 0 (idle) to 1.

        @return: 1 while overloaded, else the fill ratio of the unauthenticated pool.
        """
        if self._overload is not None:
            return 1.0
        return min(1.0, self._unauth / self.policy.max_unauthenticated)

    def scaled_timeout(self, base: float) -> float:
        """
        A line-phase timeout shortened under stress, as Postfix does: linearly from C{base}
        at no stress to C{base * stress_timeout_floor} (a quarter by default) when the
        unauthenticated pool is full or the process overloaded. Slow clients then free their
        slots sooner exactly when slots are scarce; read it when arming each timeout.

        @param base: the configured timeout in seconds.
        @return: the timeout to use now.
        """
        floor = self.policy.stress_timeout_floor
        return base * (1.0 - (1.0 - floor) * self.stress())

    # -- reporting --------------------------------------------------------------------------

    def reply_line(self, refusal: Refusal) -> bytes | None:
        """
        What to send a refused peer before closing, per C{reject_mode}.

        @param refusal: the refusal.
        @return: C{b"ERR BUSY <reason>"} (no line terminator), or L{None} for a silent close.
        """
        if self.policy.reject_mode == "close":
            return None
        return format_error(ErrorCode.BUSY, refusal.reason)

    def snapshot(self) -> dict[str, Any]:
        """
        Current gauges for the heartbeat and status.

        C{blocked_sources} counts with one scan of the penalty table (bounded).

        @return: C{unauthenticated}, C{lane}, C{relays}, C{connections} (the three together:
            what the global cap counts), C{probation} (connections on probation, outside the
            global cap), C{evictions} (so far), C{active_sources} (IP and unknown sources with
            live connections), C{tracked_sources} (rate buckets), C{penalised_sources}
            (penalty entries), C{blocked_sources}, C{stress}, C{overload} (reason or L{None}).
        """
        now = self.clock.seconds()
        return {
            "unauthenticated": self._unauth,
            "lane": self._lane,
            "relays": self._relays,
            "connections": self._unauth + self._lane + self._relays,
            "probation": len(self._probation),
            "evictions": self.counters[EVICTED],
            "active_sources": len(self._sources) - (UNIX_SOURCE in self._sources),
            "tracked_sources": len(self._buckets),
            "penalised_sources": len(self._penalties),
            "blocked_sources": sum(
                1 for penalty in self._penalties.values() if penalty.blocked_until > now
            ),
            "stress": self.stress(),
            "overload": self._overload,
        }

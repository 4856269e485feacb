# -*- test-case-name: tests.test_admission -*-
"""
The admission settings value and its vocabulary: the refusal reasons, the offence kinds, the
source keys that are not addresses, and L{AdmissionPolicy} with every knob's bounds. Pure
values, no state; L{netguard.admission.state.Admission} applies them.

The knobs, their defaults and the rules they drive: C{docs/operating.md} section 8.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs

#: Refusal reasons: stable short codes, sent after C{ERR BUSY} and used as counter names.
GLOBAL_CAP: Final = "global-cap"
UNAUTH_CAP: Final = "unauth-cap"
RELAY_CAP: Final = "relay-cap"
PER_SOURCE_CAP: Final = "per-source-cap"
RATE: Final = "rate"
PENALISED: Final = "penalised"
RANDOM_EARLY_DROP: Final = "random-early-drop"
DENIED: Final = "denied"
NOT_ALLOWED: Final = "not-allowed"
OVERLOAD_LOAD: Final = "overload-load"
OVERLOAD_LAG: Final = "overload-lag"
OVERLOAD_MEMORY: Final = "overload-memory"
EVICTED: Final = "evicted"
LANE_CAP: Final = "lane-cap"
LANE_CAP_USER: Final = "lane-cap-user"

#: Every reason L{netguard.admission.state.Admission} can give.
REASONS: Final = frozenset(
    {
        GLOBAL_CAP,
        UNAUTH_CAP,
        RELAY_CAP,
        PER_SOURCE_CAP,
        RATE,
        PENALISED,
        RANDOM_EARLY_DROP,
        DENIED,
        NOT_ALLOWED,
        OVERLOAD_LOAD,
        OVERLOAD_LAG,
        OVERLOAD_MEMORY,
        EVICTED,
        LANE_CAP,
        LANE_CAP_USER,
    }
)

#: The pressure reasons: a connection they would refuse is let in on probation instead,
#: when its factory can take one (L{netguard.admitting.AdmissionAware}).
PRESSURE_REASONS: Final = frozenset(
    {UNAUTH_CAP, RANDOM_EARLY_DROP, OVERLOAD_LAG, OVERLOAD_LOAD, OVERLOAD_MEMORY}
)

#: The offence kinds L{netguard.admission.state.Admission.offence} accepts.
OFFENCE_KINDS: Final = ("auth_failure", "early_talker", "timeout", "format_error", "bad_ticket")

#: The source key of every peer whose address is not an IP address (and not a unix socket).
UNKNOWN_SOURCE: Final = "unknown"
#: The source key of unix-socket peers (per-source rules do not apply to them).
UNIX_SOURCE: Final = "unix"


def _cidr_tuple(value: str | Iterable[str]) -> tuple[str, ...]:
    """
    Accept a single CIDR string or an iterable of them (a TOML list) as a tuple.
    """
    if isinstance(value, str):
        return (value,)
    return tuple(str(item) for item in value)


def _check_cidrs(instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    """
    Every entry must be a network without host bits set (C{10.1.2.3/8} is a typo, not
    C{10.0.0.0/8}: for an allow or never-penalise list, guessing wide would be unsafe).
    """
    for item in value:
        try:
            ipaddress.ip_network(item, strict=True)
        except ValueError as error:
            raise ValueError(f"{attribute.name}: {item!r} is not a network: {error}") from None


def _as_float(value: Any) -> float:
    """
    Convert a field's value as C{float()} does, except that an integer too large for a float
    becomes an infinity of its sign (which every field's validator refuses, naming the
    field) instead of raising C{OverflowError}.
    """
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


#: The largest count a knob takes: far above any real cap, and small enough that the
#: arithmetic of shares, buckets and penalties never leaves the floats it works in.
MAX_COUNT: Final = 2**31 - 1


def _within_count(attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, int) and value > MAX_COUNT:
        raise ValueError(f"{attribute.name} must be at most {MAX_COUNT}, not {value!r}")


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 < value < math.inf:
        raise ValueError(f"{attribute.name} must be positive and finite, not {value!r}")
    _within_count(attribute, value)


#: The longest a penalty time may be set to (a year, in seconds): beyond it the arithmetic
#: of blocks (C{penalty_base * 2 ** n}, deadlines) would leave the floats it works in.
MAX_PENALTY_SECONDS: Final = 365 * 24 * 3600.0

#: The shortest (a millisecond), so that C{penalty_max / penalty_base} stays finite.
MIN_PENALTY_SECONDS: Final = 0.001


def _penalty_seconds(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not MIN_PENALTY_SECONDS <= value <= MAX_PENALTY_SECONDS:
        raise ValueError(
            f"{attribute.name} must be within {MIN_PENALTY_SECONDS:g}..{MAX_PENALTY_SECONDS:g}"
            f" seconds, not {value!r}"
        )


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")
    _within_count(attribute, value)


def _fraction(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be within [0, 1], not {value!r}")


def _prefix(bits: int) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
        if not 0 <= value <= bits:
            raise ValueError(f"{attribute.name} must be within 0..{bits}, not {value!r}")

    return check


#: The relations between knobs that L{AdmissionPolicy} checks besides each knob's own range.
_RELATIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "red_soft": "at most red_hard",
        "red_hard": "at least red_soft",
        "penalty_base": "at most penalty_max",
        "penalty_max": "at least penalty_base",
    }
)


def allowed_values(name: str) -> str:
    """
    What L{AdmissionPolicy} accepts for one knob, in words, from the validator it carries
    (for C{netguard check-config --defaults} and the operator guide).

    @param name: a field of L{AdmissionPolicy}.
    @return: the allowed values.
    @raise KeyError: for an unknown field.
    """
    field = attrs.fields_dict(AdmissionPolicy)[name]
    check = field.validator
    integer = field.type in ("int", int)
    if name in ("ipv4_prefix", "ipv6_prefix"):
        text = f"an integer from 0 to {32 if name == 'ipv4_prefix' else 128}"
    elif check is _positive:
        text = f"an integer from 1 to {MAX_COUNT}" if integer else "a number above 0"
    elif check is _penalty_seconds:
        text = f"a number of seconds from {MIN_PENALTY_SECONDS:g} to {MAX_PENALTY_SECONDS:g}"
    elif check is _non_negative:
        text = f"an integer from 0 to {MAX_COUNT}"
    elif check is _fraction:
        text = "a number from 0 to 1"
    elif name == "reject_mode":
        text = '"reply" or "close"'
    else:
        text = 'a list of networks in CIDR notation, e.g. ["10.0.0.0/8", "2001:db8::/32"]'
    relation = _RELATIONS.get(name)
    return text if relation is None else f"{text}, {relation}"


@attrs.frozen
class AdmissionPolicy:
    """
    Every admission knob, each with a safe default. Counts are connections, times seconds.

    @ivar max_unauthenticated: cap on connections still in the line phase (default 256).
        Defends against floods of connections that never authenticate (slowloris, SYN-and-talk
        bots): they can fill this pool and no more.
    @ivar max_relays: cap on authenticated connections (default 768), a separate pool.
        Moving into it never depends on the unauthenticated pool, so authenticated users are
        not starved by a pre-authentication flood.
    @ivar lane_max: cap on connections in the returning-client lane (default 256): those
        that presented a valid ticket and have not logged in yet. A lane connection is never
        evicted, never on probation and never refused by overload; the cap bounds what
        stolen-but-valid tickets can hold.
    @ivar max_connections: global cap on live connections of the unauthenticated pool, the
        lane and the relay pool together (default C{max_unauthenticated + lane_max +
        max_relays}, so 1280, and it never bites before the pool caps; set lower, it does).
        Defends the process's file descriptors and memory against any flood. Connections
        on probation are outside it (C{max_probation} bounds them), so the gateway's client
        descriptors are bounded by C{max_connections + max_probation}, plus refused
        connections in flight (each closed before the next is accepted, or within the
        write timeout on a TLS or PROXY-header listener).
    @ivar per_source_max: concurrent connections per source key (default 32). Defends against
        one host (or one IPv6 /64) taking a pool by itself.
    @ivar per_source_rate: new connections per second per source key, token-bucket refill
        rate (default 10.0). Defends against connection churn from one source (xinetd C{cps},
        Postfix anvil).
    @ivar per_source_burst: token-bucket size (default 20): how many connections a quiet
        source may open at once before the rate applies.
    @ivar ipv4_prefix: IPv4 source keys group addresses by this prefix (default 32: one key
        per address).
    @ivar ipv6_prefix: IPv6 source keys group addresses by this prefix (default 64: one key
        per /64, because one host or subscriber usually owns a whole /64 and could otherwise
        make up 2**64 sources).
    @ivar red_soft: random early drop starts at this many unauthenticated connections
        (default C{max_unauthenticated // 2} but at least 1, so 128).
    @ivar red_hard: from this many unauthenticated connections every new one is dropped
        (default C{max_unauthenticated}, 256).
    @ivar red_rate: drop probability at C{red_soft} (default 0.3, as sshd's C{10:30:100}); it
        rises linearly to 1 at C{red_hard}. Together these defend against a flood filling the
        line-phase pool with certainty: a legitimate client keeps a chance to get in, and the
        attacker must keep paying for connections that are dropped at once.
    @ivar stress_timeout_floor: under full stress line-phase timeouts shrink to this fraction
        of their configured value (default 0.25); see
        L{netguard.admission.state.Admission.scaled_timeout}. Defends
        against slow clients holding pool slots while the pool is filling.
    @ivar penalty_base: block time when a source's points first reach the threshold (10 s).
    @ivar penalty_max: longest block (3600 s).
    @ivar penalty_decay: seconds after which one penalty point is forgotten (600 s); points
        decay linearly.
    @ivar penalty_threshold: points before blocks start (3). A source with C{n >= threshold}
        points is blocked for C{min(penalty_max, penalty_base * 2 ** (n - threshold))}.
        Together the penalty knobs defend against password guessing, protocol fuzzing and bots
        that talk before the greeting, with blocks that grow on repetition and fade with time.
    @ivar auth_failure_points: points for a failed authentication (1).
    @ivar early_talker_points: points for talking before the greeting (3: such a client is a
        bot, not a person, so one early talk blocks for C{penalty_base}).
    @ivar timeout_points: points for a line-phase timeout (1).
    @ivar format_error_points: points for a malformed line or command (1).
    @ivar bad_ticket_points: points for presenting a forged, expired or replayed
        returning-client ticket (2: below the default threshold, so one bad ticket never
        blocks on its own, since an honest client can present one after a restart, a key
        change or a clock step; a second within the decay time does).
    @ivar never_penalise: networks (CIDR) whose offences add no points (default empty). This
        exempts from penalty blocks only; caps, rates and authentication still apply. Set it to
        the address of a local proxy (e.g. C{127.0.0.1/32} behind HAProxy or stunnel), through
        which every client appears from one address, so one client's offences cannot block all.
        Empty by default because any entry is a privilege an attacker at that address gets too.
    @ivar deny: networks (CIDR) refused before any other rule (default empty).
    @ivar allow: if not empty, only these networks may try to authenticate (default empty).
        It never grants anything: a listed address meets every other rule and must still
        authenticate. Neither list applies to unix-socket peers (file permissions govern
        those).
    @ivar max_tracked_sources: bound on each per-source table (rate buckets, penalties;
        default 65536). When a table is full the least recently seen key is forgotten: an
        attacker who controls more keys than this can make us forget a key, which gives that
        key what a fresh one has (a full bucket, no points) and nothing more; the pool caps
        never depend on these tables. Rate churn cannot evict penalties (separate tables), and
        each penalty entry costs the attacker an admitted, misbehaving connection.
    @ivar lane_per_user: cap on one user's connections in the returning-client lane (default
        16), counted by the user each ticket was issued to: one account (its tickets
        stolen, or its owner hostile) cannot take the lane from every other returning
        client. A connection past it gets no lane (C{lane-cap-user}) and goes on as a
        first-time one.
    @ivar max_probation: cap on connections on probation at once (default 512): admitted
        only to present a ticket, because a pressure reason would have refused them. When
        full, a newcomer makes room by ending the oldest connection of the source holding
        the most on probation, so a flood sheds its own before a source with fewer.
    @ivar probation_timeout: seconds a connection on probation has to present a valid
        ticket before it is refused with the reason it stands for (default 1.0).
    @ivar reject_mode: C{"reply"} answers a refusal with C{ERR BUSY <reason>} then closes;
        C{"close"} closes silently, which costs less under a flood and tells a scanner less.
    """

    max_unauthenticated: int = attrs.field(default=256, validator=_positive)
    max_relays: int = attrs.field(default=768, validator=_positive)
    lane_max: int = attrs.field(default=256, validator=_positive)
    # After the three pools its default adds up (attrs fills fields in this order).
    max_connections: int = attrs.field(
        default=attrs.Factory(
            lambda self: self.max_unauthenticated + self.lane_max + self.max_relays,
            takes_self=True,
        ),
        validator=_positive,
    )
    per_source_max: int = attrs.field(default=32, validator=_positive)
    per_source_rate: float = attrs.field(default=10.0, converter=_as_float, validator=_positive)
    per_source_burst: int = attrs.field(default=20, validator=_positive)
    ipv4_prefix: int = attrs.field(default=32, validator=_prefix(32))
    ipv6_prefix: int = attrs.field(default=64, validator=_prefix(128))
    red_soft: int = attrs.field(
        default=attrs.Factory(lambda self: max(1, self.max_unauthenticated // 2), takes_self=True),
        validator=_positive,
    )
    red_hard: int = attrs.field(
        default=attrs.Factory(lambda self: self.max_unauthenticated, takes_self=True),
        validator=_positive,
    )
    red_rate: float = attrs.field(default=0.3, converter=_as_float, validator=_fraction)
    stress_timeout_floor: float = attrs.field(
        default=0.25, converter=_as_float, validator=_fraction
    )
    penalty_base: float = attrs.field(
        default=10.0, converter=_as_float, validator=_penalty_seconds
    )
    penalty_max: float = attrs.field(
        default=3600.0, converter=_as_float, validator=_penalty_seconds
    )
    penalty_decay: float = attrs.field(default=600.0, converter=_as_float, validator=_positive)
    penalty_threshold: int = attrs.field(default=3, validator=_positive)
    auth_failure_points: int = attrs.field(default=1, validator=_non_negative)
    early_talker_points: int = attrs.field(default=3, validator=_non_negative)
    timeout_points: int = attrs.field(default=1, validator=_non_negative)
    format_error_points: int = attrs.field(default=1, validator=_non_negative)
    bad_ticket_points: int = attrs.field(default=2, validator=_non_negative)
    never_penalise: tuple[str, ...] = attrs.field(
        default=(), converter=_cidr_tuple, validator=_check_cidrs
    )
    deny: tuple[str, ...] = attrs.field(default=(), converter=_cidr_tuple, validator=_check_cidrs)
    allow: tuple[str, ...] = attrs.field(default=(), converter=_cidr_tuple, validator=_check_cidrs)
    max_tracked_sources: int = attrs.field(default=65536, validator=_positive)
    lane_per_user: int = attrs.field(default=16, validator=_positive)
    max_probation: int = attrs.field(default=512, validator=_positive)
    probation_timeout: float = attrs.field(default=1.0, converter=_as_float, validator=_positive)
    reject_mode: str = attrs.field(
        default="reply", validator=attrs.validators.in_(("reply", "close"))
    )

    def __attrs_post_init__(self) -> None:
        if self.red_soft > self.red_hard:
            raise ValueError(f"red_soft ({self.red_soft}) exceeds red_hard ({self.red_hard})")
        if self.penalty_base > self.penalty_max:
            raise ValueError(
                f"penalty_base ({self.penalty_base}) exceeds penalty_max ({self.penalty_max})"
            )

    def points_for(self, kind: str) -> int:
        """
        The penalty points of one offence.

        @param kind: one of L{OFFENCE_KINDS}.
        @return: the configured points.
        @raise ValueError: for an unknown kind.
        """
        if kind not in OFFENCE_KINDS:
            raise ValueError(f"unknown offence kind {kind!r}")
        return int(getattr(self, f"{kind}_points"))


@attrs.frozen
class Refusal:
    """
    Why a new connection (or a move to the relay pool) was refused.

    @ivar reason: one of L{REASONS}.
    @ivar retry_after: seconds after which the same attempt could succeed, when known (rate
        limit, penalty block), else L{None}.
    """

    reason: str
    retry_after: float | None = None

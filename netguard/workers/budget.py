# -*- test-case-name: tests.test_workers -*-
"""
Dividing the admission budget between the workers of one host, so that together they keep
the configured limits as a whole.

Pool caps are divided exactly: worker C{i} of C{n} gets C{total // n}, plus one for the
first C{total % n} workers, so the shares add up to the configured cap. Per-source caps and
bursts are divided rounded up (C{ceil(total / n)}), so a source may get up to C{n - 1}
above its configured figure, never more; rates are divided exactly. The streams one user,
or one service, may have open at once across the sessions of a worker (C{[mux]}
C{max_per_user}, C{max_per_service}) are divided rounded up too. What this guarantees and
costs: C{docs/operating.md}, section "Workers".
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from netguard.admission import AdmissionPolicy
from netguard.gateway.stream_settings import StreamSettings

#: The fields of L{AdmissionPolicy} that are global pool caps, divided exactly.
POOL_CAPS: Final = (
    "max_connections",
    "max_unauthenticated",
    "max_relays",
    "lane_max",
    "max_probation",
)

#: The per-source counts, divided rounded up.
PER_SOURCE_COUNTS: Final = ("per_source_max", "per_source_burst", "lane_per_user")

#: The C{[mux]} caps over every session of a worker, divided rounded up.
STREAM_CAPS: Final = ("max_per_user", "max_per_service")

#: The pools whose caps add up to the default global cap (C{max_connections}).
_GLOBAL_PARTS: Final = ("max_unauthenticated", "lane_max", "max_relays")


def exact_share(total: int, index: int, count: int) -> int:
    """
    Worker C{index}'s share of C{total}: the shares of the C{count} workers add up to
    C{total} exactly, the remainder going one each to the first workers.

    @param total: the configured figure (at least 0).
    @param index: the worker, C{0 <= index < count}.
    @param count: how many workers share it (at least 1).
    @return: the share.
    @raise ValueError: for an index out of range or a count below 1.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"worker {index} of {count} does not exist")
    return total // count + (1 if index < total % count else 0)


def rounded_up_share(total: int, count: int) -> int:
    """
    Each worker's share of a per-source count: C{ceil(total / count)}, so C{count} workers
    together allow at most C{count - 1} more than C{total}.
    """
    if count < 1:
        raise ValueError(f"{count} workers")
    return -(-total // count)  # exact for any integers (a float division is not)


def too_small_caps(policy: AdmissionPolicy, count: int) -> list[str]:
    """
    The pool caps too small to give each of C{count} workers at least one.

    @return: C{"<name> (<value>)"} for each such cap, empty when all can be divided.
    """
    return [
        f"{name} ({getattr(policy, name)})" for name in POOL_CAPS if getattr(policy, name) < count
    ]


def worker_policy(policy: AdmissionPolicy, index: int, count: int) -> AdmissionPolicy:
    """
    The admission policy worker C{index} of C{count} enforces.

    Pool caps and the random-early-drop thresholds get their exact share (at least 1), the
    per-source caps and bursts and the per-user lane cap their rounded-up share (the
    default global cap: the worker's pool shares added up), the per-source rate its exact
    fraction; every other knob (penalties, prefixes, lists, table bounds) is the same in
    every worker. One worker gets the policy unchanged.

    @raise ValueError: if a pool cap is smaller than C{count} (L{too_small_caps}).
    """
    if count == 1:
        return policy
    small = too_small_caps(policy, count)
    if small:
        raise ValueError(f"smaller than the {count} workers: {', '.join(small)}")
    changes: dict[str, Any] = {
        name: exact_share(getattr(policy, name), index, count) for name in POOL_CAPS
    }
    if policy.max_connections == sum(getattr(policy, name) for name in _GLOBAL_PARTS):
        # The default global cap is the pools added up: so is each worker's, or a worker
        # whose shares round the other way would meet its global cap before its pools.
        changes["max_connections"] = sum(changes[name] for name in _GLOBAL_PARTS)
    changes["red_soft"] = max(1, exact_share(policy.red_soft, index, count))
    changes["red_hard"] = max(1, exact_share(policy.red_hard, index, count))
    for name in PER_SOURCE_COUNTS:
        changes[name] = rounded_up_share(getattr(policy, name), count)
    changes["per_source_rate"] = policy.per_source_rate / count
    return attrs.evolve(policy, **changes)


def worker_streams(settings: StreamSettings, count: int) -> StreamSettings:
    """
    The C{[mux]} bounds each of C{count} workers enforces: the caps over every session
    (L{STREAM_CAPS}) divided rounded up, at least 1 (so N workers together allow at most
    N - 1 more streams of one user, or one service, than configured); the bounds of one
    session (C{max_streams}, rates, timeouts) as configured, since a session lives in one
    worker. One worker gets the settings unchanged.
    """
    if count == 1:
        return settings
    changes = {
        name: max(1, rounded_up_share(getattr(settings, name), count)) for name in STREAM_CAPS
    }
    return attrs.evolve(settings, **changes)

# -*- test-case-name: tests.test_workers -*-
"""
The figures of several workers as one gateway's: counters and gauges are summed (nested
tables too), ratios take the worst, the counts of sources the largest one worker holds,
states hold when they hold in every worker, other values take the first that is set. Each
worker's own line is kept under C{workers}.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from netguard.ops.control import penalty_order

#: Keys whose values are ratios or levels, not quantities: the highest is shown.
HIGHEST: Final = frozenset({"stress"})

#: Gauges that count sources: one source known to every worker is in every worker's count,
#: so the sum would count it N times. The largest one worker holds is shown: at least that
#: many distinct sources, exactly the blocked ones (every block is relayed to every worker,
#: and sent to a worker that starts later).
SOURCE_GAUGES: Final = frozenset(
    {"tracked_sources", "penalised_sources", "blocked_sources", "active_sources"}
)

#: Boolean states true for the gateway when any worker's is (one draining worker shows);
#: every other boolean (such as C{shared.up}) is true only when it is in every worker.
ANY_OF: Final = frozenset({"draining"})

#: Keys of one process (the supervisor states its own uptime, pid, listeners...; C{worker}
#: is each worker's index): never summed.
OWN: Final = frozenset({"uptime", "pid", "heartbeat", "listeners", "workers", "worker"})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def merge(values: list[Any], key: str = "") -> Any:
    """
    Merge one key's values from every worker.

    @param values: the values the workers gave, in worker order (absent ones left out).
    @param key: the key, for the keys merged otherwise than by summing (L{HIGHEST},
        L{SOURCE_GAUGES}, L{ANY_OF}).
    @return: the sum of numbers (the highest for L{HIGHEST} and L{SOURCE_GAUGES}), the
        merge of tables key by key, for booleans whether all are true (any for L{ANY_OF}),
        the first value that is not L{None} otherwise.
    """
    if not values:
        return None
    if all(_is_number(v) for v in values):
        if key in HIGHEST or key in SOURCE_GAUGES:
            return max(values)
        total = sum(values)
        return round(total, 6) if isinstance(total, float) else total
    if all(isinstance(v, bool) for v in values):
        return any(values) if key in ANY_OF else all(values)
    if key == "buckets" and all(isinstance(v, list | tuple) for v in values):
        return _merge_buckets(values)
    if all(isinstance(v, Mapping) for v in values):
        keys: dict[str, None] = {}
        for value in values:
            keys.update(dict.fromkeys(value))
        return {k: merge([v[k] for v in values if k in v], k) for k in keys}
    for value in values:
        if value is not None:
            return value
    return None


def _merge_buckets(values: list[Any]) -> list[list[float]]:
    """
    Histogram buckets (C{[bound, count]} pairs, the same bounds in every worker): the
    counts summed per bound; a worker with other bounds is left out.
    """
    first = [list(pair) for pair in values[0]]
    bounds = [pair[0] for pair in first]
    for other in values[1:]:
        if [pair[0] for pair in other] != bounds:
            continue
        for pair, (_, count) in zip(first, other, strict=True):
            pair[1] += count
    return first


def aggregate(per_worker: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """
    The gateway's figures from its workers' (L{merge} of every key except L{OWN}).

    @param per_worker: each running worker's figures.
    @return: the merged figures.
    """
    rows = [row for row in per_worker]
    merged = merge(rows) if rows else {}
    return {k: v for k, v in dict(merged or {}).items() if k not in OWN}


def worker_row(figures: Mapping[str, Any]) -> dict[str, Any]:
    """
    What a worker's line in C{ctl status} shows of its figures: C{active} (sessions now) and
    C{connections} (accepted so far), 0 when the worker has none yet (or gave no number).
    """
    return {
        name: value if _is_number(value := figures.get(name)) else 0
        for name in ("active", "connections")
    }


def merge_penalties(per_worker: Iterable[Iterable[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """
    One penalty listing from every worker's: per source, the longest block left and the
    offences of all workers added up; in L{penalty_order} (longest block first, then the
    most offences).
    """
    merged: dict[str, dict[str, Any]] = {}
    for listing in per_worker:
        for row in listing:
            source = str(row.get("source"))
            entry = merged.setdefault(
                source, {"source": source, "blocked_for": 0.0, "offences": 0}
            )
            entry["blocked_for"] = max(entry["blocked_for"], float(row.get("blocked_for", 0.0)))
            entry["offences"] += int(row.get("offences", 0))
    rows = list(merged.values())
    rows.sort(key=penalty_order)
    return rows


def merge_penalty_answers(answers: Iterable[Mapping[str, Any]], top: int) -> dict[str, Any]:
    """
    One C{penalties} answer from the workers' (each its first C{top} rows, its C{total},
    whether it left some out): their rows merged (L{merge_penalties}) and cut to C{top}.
    C{total} is the largest one worker holds, as for the other counts of sources
    (L{SOURCE_GAUGES}): at least that many distinct sources, exactly the blocked ones.
    C{truncated} when rows are left out here or by a worker.
    """
    answers = list(answers)
    rows = merge_penalties(answer.get("penalties", []) for answer in answers)
    listed = rows[: max(1, top)]
    total = max([int(answer.get("total", 0)) for answer in answers] + [len(rows)])
    truncated = (
        any(bool(answer.get("truncated")) for answer in answers)
        or len(rows) > len(listed)
        or total > len(listed)
    )
    return {"penalties": listed, "total": total, "truncated": truncated}


def missing_candidates(answers: Sequence[Mapping[str, Any]]) -> dict[int, list[str]]:
    """
    The second round of a C{penalties} listing across workers: every source some worker
    listed in its first C{top} (the candidates) that a worker which left rows out did not
    list, per such worker (by its index in C{answers}). A worker that left nothing out has
    no other matching source, so it is not asked.

    @param answers: the workers' first-round answers (L{select_penalties
        <netguard.ops.control.select_penalties>}).
    @return: worker index to the candidate keys to ask it the figures of (none empty).
    """
    candidates: dict[str, None] = {}
    for answer in answers:
        for row in answer.get("penalties", []):
            candidates[str(row.get("source"))] = None
    asked: dict[int, list[str]] = {}
    for index, answer in enumerate(answers):
        if not answer.get("truncated"):
            continue
        own = {str(row.get("source")) for row in answer.get("penalties", [])}
        missing = [key for key in candidates if key not in own]
        if missing:
            asked[index] = missing
    return asked


def merge_exact_penalties(
    answers: Sequence[Mapping[str, Any]],
    exact: Mapping[int, Mapping[str, Any] | None],
    top: int,
) -> dict[str, Any]:
    """
    One C{penalties} answer from the workers' two rounds: each worker's first-round rows
    and, for a worker asked in the second round (L{missing_candidates}), its figures of the
    other candidates. Every listed row then carries exact figures (the longest block, the
    offences of all workers added up). The list is the true first C{top} when at most one
    worker left rows out (a source no worker listed is then held only by that worker, below
    its C{top}th row); with more, a source below each one's C{top}th row could add up to
    more, and the answer says C{"approximate": true}; so too when a second-round answer is
    missing (its worker's figures are then left out of some rows).

    @param exact: worker index to its second-round answer, or L{None} for no answer.
    """
    rows = [list(answer.get("penalties", [])) for answer in answers]
    for index, answer in exact.items():
        if answer is not None:
            rows[index].extend(answer.get("penalties", []))
    merged = merge_penalty_answers(
        [dict(answer, penalties=listing) for answer, listing in zip(answers, rows, strict=True)],
        top,
    )
    cut_short = sum(1 for answer in answers if answer.get("truncated"))
    merged["approximate"] = cut_short > 1 or any(answer is None for answer in exact.values())
    return merged

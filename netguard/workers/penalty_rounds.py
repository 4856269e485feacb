# -*- test-case-name: tests.test_workers_penalties -*-
"""
The second round of C{ctl penalties} across workers: the exact figures of the candidates
some worker left out of its first C{top} rows, so that every listed row is exact.
docs/operating.md section 8.3.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList, fail

from netguard.workers import commands
from netguard.workers.figures import merge_exact_penalties, missing_candidates


def second_round(
    results: list[Any], top: int, clock: Any, timeout: float
) -> Deferred[dict[str, Any]]:
    """
    The second round of C{ctl penalties} over the workers: C{results} are the first
    round's C{(slot, answer or failure)}; each worker that left rows out is asked, within
    C{timeout}, the figures of the other workers' candidates it did not list
    (L{missing_candidates}), and all are merged (L{merge_exact_penalties}). The answer is
    C{approximate} also when a worker gave no first-round answer (its figures are missing
    altogether).
    """
    answered = [(slot, r) for slot, r in results if isinstance(r, dict)]
    answers = [answer for _, answer in answered]
    asked = missing_candidates(answers)
    calls = []
    for index, keys in asked.items():
        slot = answered[index][0]
        if slot.channel is None:
            calls.append(fail(RuntimeError("worker gone")))
            continue
        call = slot.channel.callRemote(commands.Penalties, top=top, keys=keys)
        call.addTimeout(timeout, clock)
        calls.append(call)

    def merge(got: list[tuple[bool, Any]]) -> dict[str, Any]:
        exact = {
            index: (value if ok and isinstance(value, dict) else None)
            for index, (ok, value) in zip(asked, got, strict=True)
        }
        merged = merge_exact_penalties(answers, exact, top)
        if len(answered) < len(results):
            merged["approximate"] = True  # a worker's figures are missing altogether
        return merged

    return DeferredList(calls, consumeErrors=True).addCallback(merge)

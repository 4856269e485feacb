"""
Tests for C{ctl penalties} with workers (L{netguard.workers.figures.missing_candidates},
L{netguard.workers.figures.merge_exact_penalties}, L{Supervisor.penalties}): offences that
are not blocks stay in the worker that saw them, so the supervisor lists in two rounds (each
worker's first N, then the figures of the other candidates from each worker that left rows
out): every listed row exact, and the answer marked approximate when the list itself may
miss a source.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial import unittest

from netguard.admission import AdmissionPolicy
from netguard.admission.state import Admission
from netguard.ops.control import select_penalties
from netguard.worker import WorkerChannel
from netguard.workers import commands
from netguard.workers.figures import (
    merge_exact_penalties,
    merge_penalties,
    missing_candidates,
)
from netguard.workers.supervisor import QUERY_TIMEOUT, Supervisor
from tests.test_workers import FakeSpawner, make_config


def rows(*entries: tuple[str, float, int]) -> list[dict[str, Any]]:
    """
    Penalty rows from C{(source, blocked_for, offences)}.
    """
    return [{"source": s, "blocked_for": b, "offences": o} for s, b, o in entries]


def two_rounds(tables: list[list[dict[str, Any]]], top: int) -> dict[str, Any]:
    """
    What the supervisor answers for workers holding C{tables}: each worker's first C{top}
    (L{select_penalties}), then the figures of the missing candidates from each worker
    that left rows out, merged.
    """
    answers = [select_penalties(table, top) for table in tables]
    exact = {}
    for index, keys in missing_candidates(answers).items():
        held = [row for row in tables[index] if row["source"] in keys]
        exact[index] = {"penalties": held, "total": len(held), "truncated": False}
    return merge_exact_penalties(answers, exact, top)


class TwoRoundMergeTests(unittest.TestCase):
    """
    The merge of the workers' two rounds on the reviewer's cases and their boundaries.
    """

    def test_listed_row_carries_every_workers_offences(self) -> None:
        """
        A source first at one worker (9 offences) and below the first row at the other (7)
        is listed with 16, its true total, not 9; the answer (both workers cut short) says
        it is approximate.
        """
        w0 = rows(("192.0.2.9/32", 0.0, 9), ("192.0.2.1/32", 0.0, 1))
        w1 = rows(("192.0.2.8/32", 0.0, 8), ("192.0.2.9/32", 0.0, 7))
        answer = two_rounds([w0, w1], 1)
        self.assertEqual(answer["penalties"], rows(("192.0.2.9/32", 0.0, 16)))
        self.assertEqual(answer["penalties"], merge_penalties([w0, w1])[:1])
        self.assertTrue(answer["approximate"])

    def test_source_in_no_top_makes_the_answer_approximate(self) -> None:
        """
        A source below the first row at both workers (5 + 5) outranks each worker's first
        (6): the rows listed carry their exact figures, and the answer says C{approximate}
        since no round can see that source without reading whole tables.
        """
        w0 = rows(("192.0.2.1/32", 0.0, 5), ("192.0.2.2/32", 0.0, 6))
        w1 = rows(("192.0.2.1/32", 0.0, 5), ("192.0.2.3/32", 0.0, 6))
        answer = two_rounds([w0, w1], 1)
        truth = {row["source"]: row for row in merge_penalties([w0, w1])}
        self.assertTrue(answer["approximate"])
        for row in answer["penalties"]:
            self.assertEqual(row, truth[row["source"]])

    def test_one_worker_cut_short_gives_the_true_top(self) -> None:
        """
        When only one worker leaves rows out, the listing is the true first N with exact
        figures and not approximate: the other worker's source (3 offences here, 3 below
        the top at the first worker) adds up to 6 and comes first.
        """
        w0 = rows(("a", 0.0, 5), ("b", 0.0, 4), ("c", 0.0, 3))
        w1 = rows(("c", 0.0, 3))
        answer = two_rounds([w0, w1], 2)
        self.assertEqual(answer["penalties"], rows(("c", 0.0, 6), ("a", 0.0, 5)))
        self.assertEqual(answer["penalties"], merge_penalties([w0, w1])[:2])
        self.assertEqual((answer["total"], answer["truncated"]), (3, True))
        self.assertFalse(answer["approximate"])

    def test_exact_whenever_at_most_one_worker_cut_short(self) -> None:
        """
        On 300 random tables of three workers (shared blocks, local offences), whenever at
        most one worker leaves rows out the answer is the true first N, and says so.
        """
        rng = random.Random(7)
        checked = 0
        for _ in range(300):
            sources = [f"198.51.100.{i}/32" for i in range(rng.randint(1, 12))]
            tables = []
            for _worker in range(3):
                held = rng.sample(sources, rng.randint(0, len(sources)))
                tables.append(
                    rows(
                        *((s, float(rng.choice((0, 0, 10, 20))), rng.randint(1, 5)) for s in held)
                    )
                )
            top = rng.randint(1, 6)
            answers = [select_penalties(table, top) for table in tables]
            answer = two_rounds(tables, top)
            if sum(1 for a in answers if a["truncated"]) <= 1:
                checked += 1
                self.assertEqual(answer["penalties"], merge_penalties(tables)[:top])
                self.assertFalse(answer["approximate"])
            truth = {row["source"]: row for row in merge_penalties(tables)}
            for row in answer["penalties"]:
                self.assertEqual(row, truth[row["source"]])
        self.assertGreater(checked, 100)

    def test_no_worker_cut_short_asks_no_second_round(self) -> None:
        """
        Workers that listed every source they hold are asked nothing more.
        """
        answers = [
            select_penalties(rows(("a", 0.0, 1)), 5),
            select_penalties(rows(("b", 0.0, 1)), 5),
        ]
        self.assertEqual(missing_candidates(answers), {})


class SupervisorTwoRoundTests(unittest.TestCase):
    """
    The supervisor's two rounds over fake workers on a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.supervisor = Supervisor(make_config(), self.clock, FakeSpawner())
        self.supervisor.startService()
        self.first_round = [
            {"penalties": rows(("a", 0.0, 5)), "total": 2, "truncated": True},
            {"penalties": rows(("c", 0.0, 3)), "total": 1, "truncated": False},
        ]
        for slot in self.supervisor.slots:
            self.supervisor.worker_ready(slot)

    def answer(self, index: int, second: Any) -> None:
        """
        Worker C{index} answers the first round from L{first_round} and the second with
        C{second} (a value, or a callable giving a L{Deferred}).
        """
        first = self.first_round[index]

        def respond(**kwargs: Any) -> Any:
            if "keys" not in kwargs:
                return _fired(first)
            return second(**kwargs) if callable(second) else _fired(second)

        self.supervisor.slots[index].channel.answers[commands.Penalties] = respond

    def test_second_round_asks_only_the_worker_that_left_rows_out(self) -> None:
        """
        Worker 0 left rows out: it alone is asked the figures of C{c}, the source worker 1
        listed and it did not; its 3 offences there are added (C{c} 6 comes first).
        """
        self.answer(0, {"penalties": rows(("c", 0.0, 3)), "total": 1, "truncated": False})
        self.answer(1, {})
        answer = self.successResultOf(self.supervisor.penalties(2))
        self.assertEqual(answer["penalties"], rows(("c", 0.0, 6), ("a", 0.0, 5)))
        self.assertFalse(answer["approximate"])
        first, second = self.supervisor.slots
        self.assertEqual(
            first.channel.sent(commands.Penalties), [{"top": 2}, {"top": 2, "keys": ["c"]}]
        )
        self.assertEqual(second.channel.sent(commands.Penalties), [{"top": 2}])

    def test_silent_second_round_makes_the_answer_approximate(self) -> None:
        """
        A worker that does not answer the second round within L{QUERY_TIMEOUT}: the
        answer comes then, with the figures the supervisor has, marked approximate.
        """
        self.answer(0, lambda **kwargs: Deferred())
        self.answer(1, {})
        listed = self.supervisor.penalties(2)
        self.assertNoResult(listed)
        self.clock.advance(QUERY_TIMEOUT)
        answer = self.successResultOf(listed)
        self.assertEqual(answer["penalties"], rows(("a", 0.0, 5), ("c", 0.0, 3)))
        self.assertTrue(answer["approximate"])

    def test_worker_silent_in_the_first_round_makes_the_answer_approximate(self) -> None:
        """
        A worker that does not answer the first round within L{QUERY_TIMEOUT}: its figures
        are missing altogether, so the answer (the other worker's rows) is marked
        approximate even though no worker that answered left rows out.
        """
        self.first_round[0] = {"penalties": rows(("a", 0.0, 5)), "total": 1, "truncated": False}
        self.answer(0, {})
        self.supervisor.slots[1].channel.answers[commands.Penalties] = lambda **kwargs: Deferred()
        listed = self.supervisor.penalties(2)
        self.assertNoResult(listed)
        self.clock.advance(QUERY_TIMEOUT)
        answer = self.successResultOf(listed)
        self.assertEqual(answer["penalties"], rows(("a", 0.0, 5)))
        self.assertTrue(answer["approximate"])


def _fired(value: Any) -> Deferred[Any]:
    result: Deferred[Any] = Deferred()
    result.callback(value)
    return result


class WorkerExactFiguresTests(unittest.TestCase):
    """
    A worker answers the second round over a real AMP exchange.
    """

    def test_worker_answers_figures_of_exactly_the_keys_asked(self) -> None:
        """
        C{Penalties} with C{keys} answers the rows of exactly the keys held (one asked key
        held, one not); C{keys} that is not a list of strings asks for none.
        """
        admission = Admission(AdmissionPolicy(), Clock())
        for address in ("192.0.2.1", "192.0.2.2", "192.0.2.2"):
            admission.offence(address, "timeout")
        channel = WorkerChannel(Clock(), 0)
        channel.service = SimpleNamespace(  # type: ignore[assignment]
            factory=SimpleNamespace(admission=admission)
        )
        client, _, pump = connectedServerAndClient(
            ServerClass=lambda: channel, ClientClass=amp.AMP
        )
        asked = client.callRemote(commands.Penalties, top=1, keys=["192.0.2.2/32", "192.0.2.9/32"])
        pump.flush()
        self.assertEqual(
            self.successResultOf(asked),
            {"penalties": rows(("192.0.2.2/32", 0.0, 2)), "total": 1, "truncated": False},
        )
        bad = client.callRemote(commands.Penalties, top=1, keys={"192.0.2.2/32": 1})
        pump.flush()
        self.assertEqual(self.successResultOf(bad)["penalties"], [])

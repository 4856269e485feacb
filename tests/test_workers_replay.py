"""
Tests for what the supervisor of C{workers = N} keeps of the shared state and sends to a
worker that starts (L{netguard.workers.replay}, L{Supervisor.worker_ready}): the bounded
tables of blocks in force and spent tickets, their replay before the worker serves, over the
real AMP protocol between a supervisor and a worker channel, and the start deadline of a
worker that never serves.
"""

from __future__ import annotations

import io
import signal
import sys
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.test.iosim import connectedServerAndClient
from twisted.trial import unittest

from netguard.admission import AdmissionPolicy
from netguard.config import Config
from netguard.tickets import TicketSettings
from netguard.worker import WorkerChannel
from netguard.workers import commands
from netguard.workers.penalties import SharedAdmission
from netguard.workers.replay import BlockBook, ExpiringTable, SpentBook
from netguard.workers.slots import FIRST_DELAY, RUNNING, STARTING, WAITING, WorkerSlot
from netguard.workers.spawning import SupervisorChannel
from netguard.workers.spent import SharedSpentTable
from netguard.workers.supervisor import START_TIMEOUT, Supervisor
from tests.test_shared_state import StateCase
from tests.test_workers import FakeSpawner


def make_config(**admission: Any) -> Config:
    """
    A two-worker configuration with C{admission} knobs and a 100-id spent table.
    """
    config = Config(state_dir="/nonexistent", users_file="/nonexistent/users", listen=())
    return attrs.evolve(
        config,
        workers=2,
        admission=attrs.evolve(config.admission, **admission),
        tickets=TicketSettings(max_spent=100),
    )


class ExpiringTableTests(unittest.TestCase):
    """
    L{ExpiringTable}: bounded, the entry that expires first goes first.
    """

    def test_full_table_evicts_the_first_to_expire(self) -> None:
        """
        At the limit (3) every entry is kept; one more evicts the entry that expires first,
        whatever the order they came in; a new entry that would expire before every other
        is itself the one left out.
        """
        table: ExpiringTable[str] = ExpiringTable()
        for key, expiry in (("b", 20.0), ("a", 10.0), ("c", 30.0)):
            self.assertTrue(table.put(key, expiry, None, 0.0, 3))
        self.assertEqual(len(table), 3)
        self.assertTrue(table.put("d", 40.0, None, 0.0, 3))
        self.assertEqual(sorted(table.entries), ["b", "c", "d"])
        self.assertFalse(table.put("e", 15.0, None, 0.0, 3))
        self.assertEqual(sorted(table.entries), ["b", "c", "d"])

    def test_expired_entries_go_before_live_ones(self) -> None:
        """
        An entry that expired (exactly at now, or before) is dropped before any live one
        is evicted, and is never listed; an entry added already expired is not kept.
        """
        table: ExpiringTable[str] = ExpiringTable()
        table.put("old", 5.0, None, 0.0, 2)
        table.put("live", 50.0, None, 0.0, 2)
        self.assertTrue(table.put("new", 40.0, None, 5.0, 2))
        self.assertEqual(sorted(table.entries), ["live", "new"])
        self.assertEqual([key for key, _, _ in table.live(40.0)], ["live"])
        self.assertFalse(table.put("late", 40.0, None, 40.0, 2))

    def test_extended_entry_keeps_its_place_by_new_expiry(self) -> None:
        """
        An entry whose expiry moved later is evicted by its new expiry, not its old one
        (the stale heap item is skipped), and the heap stays bounded by the table's size
        however often entries are extended.
        """
        table: ExpiringTable[str] = ExpiringTable()
        table.put("a", 10.0, None, 0.0, 2)
        table.put("b", 20.0, None, 0.0, 2)
        table.put("a", 30.0, None, 0.0, 2)
        table.put("c", 25.0, None, 0.0, 2)
        self.assertEqual(sorted(table.entries), ["a", "c"])
        for step in range(1000):
            table.put("a", 31.0 + step, None, 0.0, 2)
        self.assertLessEqual(len(table._heap), 2 * len(table) + 64)


class BlockBookTests(unittest.TestCase):
    """
    L{BlockBook}: the blocks in force, merged as a worker merges them.
    """

    def test_merge_keeps_later_end_and_higher_points(self) -> None:
        """
        A second block of a source keeps the later end; the points are the higher of the
        new ones and the old ones decayed (one point per C{decay} seconds).
        """
        book = BlockBook()
        book.record("192.0.2.1/32", 100.0, 5.0, 0.0, 10.0, 10)
        book.record("192.0.2.1/32", 10.0, 1.0, 20.0, 10.0, 10)
        self.assertEqual(book.in_force(20.0, 10.0), [("192.0.2.1/32", 80.0, 3.0)])
        self.assertEqual(book.in_force(50.0, 10.0), [("192.0.2.1/32", 50.0, 0.0)])

    def test_ended_block_not_in_force(self) -> None:
        """
        A block is in force until its end, exclusive: listed a moment before, not at it.
        """
        book = BlockBook()
        book.record("192.0.2.1/32", 30.0, 1.0, 0.0, 600.0, 10)
        self.assertEqual(len(book.in_force(29.5, 600.0)), 1)
        self.assertEqual(book.in_force(30.0, 600.0), [])
        self.assertEqual(len(book), 0)

    def test_forget(self) -> None:
        """
        Forgetting one source leaves the others; forgetting all empties the book.
        """
        book = BlockBook()
        for number in range(3):
            book.record(f"192.0.2.{number}/32", 30.0, 1.0, 0.0, 600.0, 10)
        self.assertEqual(book.forget("192.0.2.1/32"), 1)
        self.assertEqual(book.forget("192.0.2.1/32"), 0)
        self.assertEqual(book.forget(None), 2)
        self.assertEqual(book.in_force(0.0, 600.0), [])


class SpentBookTests(unittest.TestCase):
    """
    L{SpentBook}: spent ids until their tickets expire, bounded.
    """

    def test_bounded_and_expiring(self) -> None:
        """
        At the limit (2) both ids are kept, a third evicts the one that expires first; an
        id noted twice stays as first noted; expired ids are not listed.
        """
        book = SpentBook()
        self.assertTrue(book.record(b"a", 10.0, "u", 0.0, 2))
        self.assertTrue(book.record(b"b", 20.0, "u", 0.0, 2))
        self.assertTrue(book.record(b"a", 99.0, "other", 0.0, 2))
        self.assertTrue(book.record(b"c", 30.0, "v", 0.0, 2))
        self.assertEqual(book.in_force(0.0), [(b"b", 20.0, "u"), (b"c", 30.0, "v")])
        self.assertEqual(book.in_force(20.0), [(b"c", 30.0, "v")])


def replayed_blocks(channel: Any) -> list[dict[str, Any]]:
    """
    The blocks C{channel} was sent in L{commands.Replay} batches, in order.
    """
    return [block for batch in channel.sent(commands.Replay) for block in batch["blocks"]]


def replayed_spent(channel: Any) -> list[dict[str, Any]]:
    """
    The spent tickets C{channel} was sent in L{commands.Replay} batches, in order.
    """
    return [ticket for batch in channel.sent(commands.Replay) for ticket in batch["spent"]]


class SupervisorReplayTests(unittest.TestCase):
    """
    The supervisor keeps the blocks and spent tickets its workers report and sends them to a
    worker that starts, before telling it to serve.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.spawner = FakeSpawner({commands.ClearPenalties: {"cleared": 1}})
        self.supervisor = Supervisor(
            make_config(penalty_decay=100.0, max_tracked_sources=2), self.clock, self.spawner
        )
        self.supervisor.startService()
        for slot in self.supervisor.slots:
            self.supervisor.worker_ready(slot)

    def restart(self, slot: WorkerSlot) -> Any:
        """
        SIGKILL C{slot}'s worker and start it again.

        @return: the new worker's channel.
        """
        self.supervisor.worker_ended(slot, (None, signal.SIGKILL))
        self.clock.advance(slot.timer.getTime() - self.clock.seconds())
        self.assertEqual(slot.state, STARTING)
        return slot.channel

    def test_restarted_worker_gets_blocks_before_serving(self) -> None:
        """
        A block reported by worker 0 is sent to worker 1 restarted afterwards: as an
        C{Replay} batch with the seconds left and the points decayed to now, before C{Serve};
        the worker counts as running only once it answers C{Serve}.
        """
        slots = self.supervisor.slots
        self.supervisor.worker_blocked(slots[0], "192.0.2.1/32", 100.0, 5.0)
        self.clock.advance(20.0 - FIRST_DELAY)
        answer: Deferred[dict[str, Any]] = Deferred()
        self.spawner.answers[commands.Serve] = lambda: answer
        channel = self.restart(slots[1])
        self.assertEqual(channel.calls, [])
        self.supervisor.worker_ready(slots[1])
        self.assertEqual(
            [command for command, _ in channel.calls], [commands.Replay, commands.Serve]
        )
        self.assertEqual(
            replayed_blocks(channel),
            [{"source": "192.0.2.1/32", "seconds": 80.0, "points": 4.8}],
        )
        self.assertEqual(slots[1].state, STARTING)
        answer.callback({})
        self.assertEqual(slots[1].state, RUNNING)

    def test_worker_restarted_twice_gets_its_own_blocks(self) -> None:
        """
        The worker that reported a block gets it back when it is itself restarted (the
        table is the host's, not the other workers').
        """
        slot = self.supervisor.slots[0]
        self.supervisor.worker_blocked(slot, "192.0.2.1/32", 100.0, 5.0)
        channel = self.restart(slot)
        self.supervisor.worker_ready(slot)
        self.assertEqual([c["source"] for c in replayed_blocks(channel)], ["192.0.2.1/32"])

    def test_ended_and_cleared_blocks_not_replayed(self) -> None:
        """
        A block that ended before the restart is not sent; nor one cleared with C{ctl
        penalties clear} (by key, by address, or all).
        """
        slots = self.supervisor.slots
        self.supervisor.worker_blocked(slots[0], "192.0.2.1/32", 1.0, 1.0)
        self.supervisor.worker_blocked(slots[0], "192.0.2.2/32", 100.0, 1.0)
        self.clock.advance(1.0)
        channel = self.restart(slots[1])
        self.supervisor.worker_ready(slots[1])
        self.assertEqual([c["source"] for c in replayed_blocks(channel)], ["192.0.2.2/32"])
        self.supervisor.clear_penalties("192.0.2.2")
        self.supervisor.worker_blocked(slots[0], "192.0.2.3/32", 100.0, 1.0)
        self.supervisor.clear_penalties(None)
        channel = self.restart(slots[1])
        self.supervisor.worker_ready(slots[1])
        self.assertEqual(replayed_blocks(channel), [])

    def test_clear_network_forgets_exactly_the_kept_blocks_inside(self) -> None:
        """
        C{penalties clear 10.1.2.0/31} forgets the kept blocks of the keys inside the
        network and no other (not 10.1.2.2, nor C{unknown}); C{unix} or bad text forgets
        nothing. The restarted worker gets the blocks left.
        """
        self.supervisor.blocks = BlockBook()
        slots = self.supervisor.slots
        self.supervisor.config = make_config(penalty_decay=100.0, max_tracked_sources=10)
        self.supervisor.in_force = self.supervisor.config
        for source in ("10.1.2.0/32", "10.1.2.1/32", "10.1.2.2/32", "unknown"):
            self.supervisor.worker_blocked(slots[0], source, 100.0, 1.0)
        self.supervisor.clear_penalties("10.1.2.0/31")
        self.supervisor.clear_penalties("unix")
        self.supervisor.clear_penalties("not-an-address")
        channel = self.restart(slots[1])
        self.supervisor.worker_ready(slots[1])
        self.assertEqual(
            sorted(c["source"] for c in replayed_blocks(channel)), ["10.1.2.2/32", "unknown"]
        )
        self.assertEqual(
            slots[0].channel.sent(commands.ClearPenalties),
            [{"source": "10.1.2.0/31"}, {"source": "unix"}, {"source": "not-an-address"}],
        )

    def test_blocks_bounded_by_max_tracked_sources(self) -> None:
        """
        With C{max_tracked_sources = 2}, three blocked sources keep the two that end last:
        the restarted worker gets those two.
        """
        slots = self.supervisor.slots
        for number, seconds in ((1, 300.0), (2, 100.0), (3, 200.0)):
            self.supervisor.worker_blocked(slots[0], f"192.0.2.{number}/32", seconds, 1.0)
        self.assertEqual(len(self.supervisor.blocks), 2)
        channel = self.restart(slots[1])
        self.supervisor.worker_ready(slots[1])
        self.assertEqual(
            sorted(c["source"] for c in replayed_blocks(channel)),
            ["192.0.2.1/32", "192.0.2.3/32"],
        )

    def test_refused_block_not_kept(self) -> None:
        """
        A block the supervisor refuses (not a finite length) is kept for no one; one longer
        than C{penalty_max} is kept as C{penalty_max} long.
        """
        slots = self.supervisor.slots
        self.supervisor.worker_blocked(slots[0], "192.0.2.1/32", float("inf"), 1.0)
        self.supervisor.worker_blocked(slots[0], "192.0.2.2/32", 1e300, 1.0)
        channel = self.restart(slots[1])
        self.supervisor.worker_ready(slots[1])
        penalty_max = self.supervisor.config.admission.penalty_max
        self.assertEqual(
            [(c["source"], c["seconds"]) for c in replayed_blocks(channel)],
            [("192.0.2.2/32", penalty_max - FIRST_DELAY)],
        )

    def test_restarted_worker_gets_spent_tickets(self) -> None:
        """
        A ticket spent at worker 0 is sent to worker 1 restarted afterwards (before
        C{Serve}) while it has not expired; one whose ticket expired is not; at most
        C{max_spent} (100) are kept.
        """
        slots = self.supervisor.slots
        now = self.clock.seconds()
        self.supervisor.worker_spent(slots[0], b"gone", now + 0.1, "alice")
        self.supervisor.worker_spent(slots[0], b"live", now + 3600.0, "alice")
        self.supervisor.worker_spent(slots[0], b"nan", float("nan"), "alice")
        channel = self.restart(slots[1])
        self.supervisor.worker_ready(slots[1])
        self.assertEqual(
            replayed_spent(channel),
            [{"ticket_id": b"live", "expires": now + 3600.0, "user": "alice"}],
        )
        self.assertEqual(channel.calls[-1][0], commands.Serve)
        for number in range(150):
            self.supervisor.worker_spent(slots[0], b"%d" % number, now + 10.0 + number, "bob")
        self.assertEqual(len(self.supervisor.spent), 100)


class ReplayOverAMPTests(unittest.TestCase):
    """
    The supervisor and a worker channel over the real AMP protocol (an in-memory pipe): a
    restarted worker has applied the blocks in force when it starts to serve.
    """

    def test_worker_applies_blocks_and_tickets_before_it_serves(self) -> None:
        """
        Worker 1, restarted after worker 0 blocked a source and spent a ticket, sends
        C{Ready}; its service is started (it adopts its listeners) only after it has applied
        the block (the source is refused from its first connection) and the ticket; then the
        supervisor counts it as running.
        """

        class Reactor(Clock):
            """
            A worker's reactor: a clock that takes shutdown triggers.
            """

            def addSystemEventTrigger(self, *args: Any) -> None:
                pass

        clock = Clock()
        worker_clock = Reactor()
        policy = AdmissionPolicy()
        seen: list[Any] = []
        pumps: list[Any] = []

        class Service:
            """
            The parts of a worker's gateway service the channel touches.
            """

            def __init__(self) -> None:
                self.factory = self
                self.admission = SharedAdmission(policy, worker_clock, lambda *a: None)
                self.tickets = self
                self.spent = SharedSpentTable(10, 10, lambda *a: None)

            def privilegedStartService(self) -> None:
                pass

            def startService(self) -> None:
                seen.append((self.admission.penalties(), b"t" in self.spent))

            def stopService(self) -> None:
                pass

        workers: list[WorkerChannel] = []

        def spawn(slot: WorkerSlot) -> Any:
            service = Service()
            worker = WorkerChannel(worker_clock, slot.index)
            worker.service = service  # type: ignore[assignment]
            _, supervisor_side, pump = connectedServerAndClient(
                lambda: SupervisorChannel(supervisor, slot), lambda: worker
            )
            workers.append(worker)
            pumps.append(pump)
            handle = type("Handle", (), {})()
            handle.pid = 2000 + len(workers)
            handle.channel = supervisor_side
            handle.signal = lambda signum: None
            return handle

        supervisor = Supervisor(make_config(), clock, spawn)
        supervisor.startService()
        for worker, pump in zip(workers, pumps, strict=True):
            worker.callRemote(commands.Ready, index=worker.index, pid=1)
            pump.flush()
        self.assertEqual([s.state for s in supervisor.slots], [RUNNING, RUNNING])
        slots = supervisor.slots
        supervisor.worker_blocked(slots[0], "192.0.2.1/32", 600.0, 3.0)
        supervisor.worker_spent(slots[0], b"t", clock.seconds() + 600.0, "alice")
        seen.clear()
        supervisor.worker_ended(slots[1], (None, signal.SIGKILL))
        clock.advance(FIRST_DELAY)
        worker_clock.advance(FIRST_DELAY)
        workers[-1].callRemote(commands.Ready, index=1, pid=2)
        pumps[-1].flush()
        self.assertEqual(seen, [([("192.0.2.1/32", 599.5, 0)], True)])
        self.assertEqual(slots[1].state, RUNNING)


class StartDeadlineTests(unittest.TestCase):
    """
    A worker that never serves is killed at its start deadline and restarted.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.spawner = FakeSpawner()
        self.supervisor = Supervisor(make_config(), self.clock, self.spawner)

    def test_silent_worker_killed_at_deadline(self) -> None:
        """
        A worker that sends no C{Ready} is sent nothing a moment before L{START_TIMEOUT},
        SIGKILL at it, with one C{worker.start_timeout} line; its exit is then restarted
        with the backoff, and the new worker has a deadline of its own.
        """
        with capturedLogs() as events:
            self.supervisor.startService()
            self.supervisor.worker_ready(self.supervisor.slots[0])
            slot = self.supervisor.slots[1]
            handle = slot.handle
            self.clock.advance(START_TIMEOUT - 0.001)
            self.assertEqual(handle.signals, [])
            self.clock.advance(0.001)
            self.assertEqual(handle.signals, [signal.SIGKILL])
        timeouts = [e for e in events if e.get("event") == "worker.start_timeout"]
        self.assertEqual([(e["worker"], e["pid"]) for e in timeouts], [(1, handle.pid)])
        self.assertEqual(self.supervisor.slots[0].handle.signals, [])
        self.supervisor.worker_ended(slot, (None, signal.SIGKILL))
        self.assertEqual(slot.state, WAITING)
        self.clock.advance(FIRST_DELAY)
        self.assertIsNot(slot.handle, handle)
        self.clock.advance(START_TIMEOUT)
        self.assertEqual(slot.handle.signals, [signal.SIGKILL])

    def test_worker_ready_but_not_serving_killed(self) -> None:
        """
        A worker that sends C{Ready} but never answers C{Serve} is killed at the deadline
        too.
        """
        self.spawner.answers[commands.Serve] = lambda: Deferred()
        self.supervisor.startService()
        slot = self.supervisor.slots[0]
        self.supervisor.worker_ready(slot)
        self.assertEqual(slot.state, STARTING)
        self.clock.advance(START_TIMEOUT)
        self.assertEqual(slot.handle.signals, [signal.SIGKILL])

    def test_serving_worker_never_killed(self) -> None:
        """
        A worker that serves in time is not signalled at, or long after, the deadline; nor
        is a worker that exited before it (its deadline is cancelled) or one stopping.
        """
        self.supervisor.startService()
        first, second = self.supervisor.slots
        self.supervisor.worker_ready(first)
        handle = first.handle
        second_handle = second.handle
        self.supervisor.worker_ended(second, (1, None))
        self.clock.advance(FIRST_DELAY)
        self.supervisor.worker_ready(second)
        self.clock.advance(START_TIMEOUT * 3)
        self.assertEqual(handle.signals, [])
        self.assertEqual(second_handle.signals, [])
        self.assertEqual(second.handle.signals, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ReplayProgressTests(unittest.TestCase):
    """
    The start deadline times a starting worker's silence, not its whole start: each
    answered replay batch is progress; the replay goes in batches that each fit AMP's value
    bound, one at a time.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.pending: list[Deferred[dict[str, Any]]] = []

        def held(**kwargs: Any) -> Deferred[dict[str, Any]]:
            answer: Deferred[dict[str, Any]] = Deferred()
            self.pending.append(answer)
            return answer

        self.spawner = FakeSpawner({commands.Replay: held})
        self.supervisor = Supervisor(
            make_config(max_tracked_sources=10_000, penalty_max=86_400.0),
            self.clock,
            self.spawner,
        )
        self.supervisor.startService()
        first, self.slot = self.supervisor.slots
        self.supervisor.worker_ready(first)
        for number in range(3000):
            source = f"2001:db8:{number:x}:ffff::/64"
            self.supervisor.worker_blocked(first, source, 80_000.0, 9.0)

    def test_long_replay_answered_steadily_not_killed(self) -> None:
        """
        A replay whose batches are each answered just under L{START_TIMEOUT} after the one
        before takes several times L{START_TIMEOUT} in all: the worker is never signalled,
        gets every block, one batch in flight at a time, and serves at the end.
        """
        self.supervisor.worker_ready(self.slot)
        channel = self.slot.channel
        answered = 0
        while self.pending and answered < 100:
            self.assertEqual(len(self.pending), 1)
            self.clock.advance(START_TIMEOUT - 0.001)
            self.pending.pop().callback({})
            answered += 1
        self.assertGreaterEqual(answered, 3)
        self.assertGreater(self.clock.seconds(), 2 * START_TIMEOUT)
        self.assertEqual(self.slot.handle.signals, [])
        self.assertEqual(len(replayed_blocks(channel)), 3000)
        self.assertEqual(channel.calls[-1][0], commands.Serve)
        self.assertEqual(self.slot.state, RUNNING)

    def test_worker_silent_during_replay_killed_at_exactly_the_timeout(self) -> None:
        """
        A worker that answers the first batch and then no more is not signalled one tick
        before L{START_TIMEOUT} after that answer, and is killed at exactly that time.
        """
        self.supervisor.worker_ready(self.slot)
        self.clock.advance(10.0)
        self.pending.pop().callback({})
        answered_at = self.clock.seconds()
        self.assertEqual(len(self.pending), 1)
        self.clock.advance(answered_at + START_TIMEOUT - 0.001 - self.clock.seconds())
        self.assertEqual(self.slot.handle.signals, [])
        self.clock.advance(0.001)
        self.assertEqual(self.slot.handle.signals, [signal.SIGKILL])

    def test_batches_fit_one_amp_value(self) -> None:
        """
        Every batch, encoded by AMP as sent (the longest IPv6 keys, spent tickets of long
        user names), keeps each list within one AMP value; there are several batches.
        """
        now = self.clock.seconds()
        for number in range(2000):
            ticket = b"%032d" % number
            self.supervisor.worker_spent(self.slot, ticket, now + 600.0, "u" * 200)
        self.supervisor.worker_ready(self.slot)
        while self.pending:
            self.pending.pop().callback({})
        batches = self.slot.channel.sent(commands.Replay)
        self.assertGreater(len(batches), 2)
        for batch in batches:
            box = commands.Replay.makeArguments(batch, None)
            self.assertLessEqual(max(len(value) for value in box.values()), 65_535)
            box.serialize()
        self.assertEqual(len(replayed_spent(self.slot.channel)), 100)

    def test_lowered_penalty_max_applies_to_kept_blocks(self) -> None:
        """
        After a reload that lowers C{penalty_max}, a block reported then is kept at most the
        new length, and a block kept from before is replayed at most the new length.
        """
        self.supervisor.in_force = attrs.evolve(
            self.supervisor.in_force,
            admission=attrs.evolve(self.supervisor.in_force.admission, penalty_max=60.0),
        )
        self.supervisor.worker_blocked(self.slot, "192.0.2.1/32", 50_000.0, 9.0)
        self.assertEqual(self.supervisor.blocks.current("192.0.2.1/32", 0.0, 1.0)[0], 60.0)
        self.supervisor.worker_ready(self.slot)
        while self.pending:
            self.pending.pop().callback({})
        seconds = {block["seconds"] for block in replayed_blocks(self.slot.channel)}
        self.assertEqual(seconds, {60.0})


class LearntBlockTests(unittest.TestCase):
    """
    A block a worker learnt from Redis is kept by the supervisor for a worker that starts
    later, and neither relayed to the other workers nor published again.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.supervisor = Supervisor(make_config(), self.clock, FakeSpawner())
        self.supervisor.startService()
        for slot in self.supervisor.slots:
            self.supervisor.worker_ready(slot)

    def test_learnt_block_kept_not_relayed_and_replayed(self) -> None:
        """
        C{worker_learnt} keeps the block (capped at C{penalty_max}) and tells no worker;
        the worker restarted in the other slot gets it in its replay.
        """
        first, second = self.supervisor.slots
        penalty_max = self.supervisor.in_force.admission.penalty_max
        self.assertTrue(self.supervisor.worker_learnt(first, "192.0.2.1/32", 1e9, 3.0))
        self.assertEqual(second.channel.sent(commands.ApplyBlock), [])
        self.assertEqual(first.channel.sent(commands.ApplyBlock), [])
        self.supervisor.worker_ended(second, (None, signal.SIGKILL))
        self.clock.advance(FIRST_DELAY)
        self.supervisor.worker_ready(second)
        self.assertEqual(
            [(b["source"], b["seconds"]) for b in replayed_blocks(second.channel)],
            [("192.0.2.1/32", penalty_max - FIRST_DELAY)],
        )

    def test_bad_learnt_block_refused(self) -> None:
        """
        A learnt block that is not a finite positive length with finite points at least 0
        is not kept (C{worker.block_refused}).
        """
        slot = self.supervisor.slots[0]
        with capturedLogs() as events:
            for seconds, points in ((float("nan"), 1.0), (0.0, 1.0), (5.0, -1.0)):
                self.assertFalse(
                    self.supervisor.worker_learnt(slot, "192.0.2.1/32", seconds, points)
                )
        self.assertEqual(len(self.supervisor.blocks), 0)
        self.assertTrue([e for e in events if e.get("event") == "worker.block_refused"])

    def test_shared_admission_passes_learnt_not_reported(self) -> None:
        """
        L{SharedAdmission.apply_learnt} blocks the source, tells C{learnt}, and never its
        C{report} (which the shared state hooks to publish to Redis).
        """
        reported: list[Any] = []
        learnt: list[Any] = []
        admission = SharedAdmission(AdmissionPolicy(), Clock(), lambda *a: reported.append(a))
        admission.learnt = lambda *a: learnt.append(a)
        admission.apply_learnt("192.0.2.1/32", 60.0, 4.0)
        self.assertEqual(learnt, [("192.0.2.1/32", 60.0, 4.0)])
        self.assertEqual(reported, [])
        self.assertEqual([key for key, *_ in admission.penalties()], ["192.0.2.1/32"])

    def test_worker_passes_learnt_block_to_supervisor_over_amp(self) -> None:
        """
        A worker channel's C{report_learnt} reaches the supervisor over the real AMP
        protocol as a kept block, relayed to no worker.
        """
        slot = self.supervisor.slots[0]
        worker = WorkerChannel(Clock(), 0)
        _, _, pump = connectedServerAndClient(
            lambda: SupervisorChannel(self.supervisor, slot), lambda: worker
        )
        worker.report_learnt("192.0.2.9/32", 30.0, 2.0)
        pump.flush()
        self.assertEqual(self.supervisor.blocks.current("192.0.2.9/32", 0.0, 1.0), (30.0, 2.0))
        self.assertEqual(self.supervisor.slots[1].channel.sent(commands.ApplyBlock), [])


class LearntThroughRedisTests(StateCase):
    """
    The shared state hands a block learnt from Redis to a worker's admission as learnt.
    """

    def test_block_from_redis_learnt_once_never_published_again(self) -> None:
        """
        A block published by one process reaches the other's C{learnt} once; the other
        neither reports it (no C{Blocked} to its supervisor) nor publishes it: no loop.
        """
        one, first = self.process()
        two, second = self.process()
        reported: list[Any] = []
        learnt: list[Any] = []
        second.learnt = lambda *a: learnt.append(a)
        earlier = second.report
        second.report = lambda *a: (reported.append(a), earlier(*a))
        first.offence("192.0.2.7", "early_talker")
        self.assertEqual([entry[0] for entry in learnt], ["192.0.2.7/32"])
        self.assertEqual(reported, [])
        self.assertEqual(two.counters["blocks_published"], 0)
        self.assertEqual(one.counters["blocks_published"], 1)


class ServeFailureTests(unittest.TestCase):
    """
    A worker that cannot start serving says why and exits; the supervisor logs it.
    """

    def test_worker_that_cannot_listen_exits_with_status_1(self) -> None:
        """
        A listener the worker cannot adopt at C{Serve} (its start raises, as a failed
        listen does with C{SystemExit}) answers C{SERVE_REFUSED}, sets exit status 1 and
        stops the reactor; no drain is registered for a service that never started.
        """
        stops: list[bool] = []
        triggers: list[Any] = []
        clock = Clock()
        clock.running = True  # type: ignore[attr-defined]
        clock.stop = lambda: stops.append(True)  # type: ignore[attr-defined]
        clock.addSystemEventTrigger = lambda *a: triggers.append(a)  # type: ignore[attr-defined]

        class Failing:
            def privilegedStartService(self) -> None:
                raise SystemExit("netguard: cannot listen on tcp:1")

        channel = WorkerChannel(clock, 0)
        channel.service = Failing()  # type: ignore[assignment]
        self.patch(sys, "stderr", io.StringIO())
        self.assertRaises(commands.ServeRefusedError, channel.serve)
        clock.advance(0)
        self.assertEqual((channel.exit_code, stops, triggers), (1, [True], []))
        self.assertIn("cannot start: netguard: cannot listen on tcp:1", sys.stderr.getvalue())

    def test_supervisor_logs_refused_serve(self) -> None:
        """
        A refused C{Serve} is logged (C{worker.serve_failed}) and leaves the worker
        starting (it exits by itself, or is killed at its deadline).
        """
        spawner = FakeSpawner({commands.Serve: commands.ServeRefusedError("no listener")})
        supervisor = Supervisor(make_config(), Clock(), spawner)
        supervisor.startService()
        slot = supervisor.slots[0]
        with capturedLogs() as events:
            supervisor.worker_ready(slot)
        failed = [e for e in events if e.get("event") == "worker.serve_failed"]
        self.assertEqual([(e["worker"], e["reason"]) for e in failed], [(0, "no listener")])
        self.assertEqual(slot.state, STARTING)

"""
Tests for L{netguard.client.key_derivation.KeyDeriver}: one derivation per keys, the result
cached whoever still waits, work nobody waits for skipped, a bound on what waits, and the
reactor's shutdown. The thread is held by the test (L{HeldThread}); the real thread is in
C{tests.integration.test_client_slow_keys}.
"""

from __future__ import annotations

import threading

from twisted.internet.defer import CancelledError, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from netguard.auth.scram import ClientKeys, PendingKeys
from netguard.client.key_derivation import DerivationRefused, KeyDeriver
from tests.test_client_protocol import HeldThread

KEYS = (b"c" * 32, b"s" * 32)


class KeyDeriverTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.held = HeldThread()
        self.deriver = KeyDeriver(self.reactor, max_jobs=2, run_in_thread=self.held)
        self.cache = ClientKeys()
        self.derived = 0

    def pending(self, salt: bytes = b"salt-one-1234") -> PendingKeys:
        def derive() -> tuple[bytes, bytes]:
            self.derived += 1
            return KEYS

        return PendingKeys(salt, 100_000, derive)

    def test_waiters_share_one_derivation_and_find_the_keys_cached(self) -> None:
        first = self.deriver.derive(self.cache, self.pending())
        second = self.deriver.derive(self.cache, self.pending())
        self.assertEqual(len(self.held.calls), 1)
        self.held.finish()
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))
        self.assertEqual(self.derived, 1)
        self.assertTrue(self.cache.holds(b"salt-one-1234", 100_000))

    def test_one_waiter_leaving_does_not_stop_the_other(self) -> None:
        first = self.deriver.derive(self.cache, self.pending())
        second = self.deriver.derive(self.cache, self.pending())
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.held.finish()
        self.assertIsNone(self.successResultOf(second))
        self.assertEqual(self.derived, 1)

    def test_work_nobody_waits_for_is_skipped(self) -> None:
        waiting = self.deriver.derive(self.cache, self.pending())
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.held.finish()
        self.assertEqual(self.derived, 0)
        self.assertFalse(self.cache.holds(b"salt-one-1234", 100_000))

    def test_begun_work_is_cached_after_its_login_left(self) -> None:
        waiting = self.deriver.derive(self.cache, self.pending())
        self.held.start()
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.held.deliver()
        self.assertTrue(self.cache.holds(b"salt-one-1234", 100_000))

    def test_at_most_max_jobs_wait(self) -> None:
        self.deriver.derive(self.cache, self.pending(b"salt-one-1234"))
        self.deriver.derive(self.cache, self.pending(b"salt-two-1234"))
        self.failureResultOf(
            self.deriver.derive(self.cache, self.pending(b"salt-three-12")), DerivationRefused
        )
        self.assertEqual(len(self.held.calls), 2)

    def test_failure_reaches_every_waiter(self) -> None:
        first = self.deriver.derive(self.cache, self.pending())
        second = self.deriver.derive(self.cache, self.pending())
        self.held.fail(MemoryError("no room"))
        self.failureResultOf(first, MemoryError)
        self.failureResultOf(second, MemoryError)

    def test_shutdown_skips_what_waits_and_refuses_more(self) -> None:
        waiting = self.deriver.derive(self.cache, self.pending())
        [(stop, args, kwargs)] = self.reactor.triggers["during"]["shutdown"]
        stop(*args, **kwargs)
        self.held.finish()
        self.failureResultOf(waiting, DerivationRefused)
        self.assertEqual(self.derived, 0)
        self.failureResultOf(self.deriver.derive(self.cache, self.pending()), DerivationRefused)

    def test_no_thread_forgets_the_job(self) -> None:
        """
        The thread cannot be started: the login fails at once, and the job holds no place,
        so the next login tries again.
        """

        def no_thread(function: object) -> object:
            raise RuntimeError("can't start new thread")

        deriver = KeyDeriver(self.reactor, max_jobs=1, run_in_thread=no_thread)  # type: ignore[arg-type]
        self.failureResultOf(deriver.derive(self.cache, self.pending()), RuntimeError)
        self.failureResultOf(deriver.derive(self.cache, self.pending()), RuntimeError)
        self.failureResultOf(
            deriver.derive(self.cache, self.pending(b"salt-two-1234")), RuntimeError
        )

    def test_a_waiter_cancelling_another_while_they_are_told(self) -> None:
        """
        One login's callback cancels another's waiter (its connection closing at once):
        the cancelled one is skipped, the rest are told.
        """
        first = self.deriver.derive(self.cache, self.pending())
        second = self.deriver.derive(self.cache, self.pending())
        third = self.deriver.derive(self.cache, self.pending())
        first.addCallback(lambda _: second.cancel())
        self.held.finish()
        self.failureResultOf(second, CancelledError)
        self.assertIsNone(self.successResultOf(third))

    def test_a_thread_answering_at_once_reaches_its_waiter(self) -> None:
        """
        A C{run_in_thread} that fires before returning still tells the login.
        """
        deriver = KeyDeriver(self.reactor, run_in_thread=lambda function: succeed(function()))
        self.assertIsNone(self.successResultOf(deriver.derive(self.cache, self.pending())))
        self.assertTrue(self.cache.holds(b"salt-one-1234", 100_000))

    def test_own_thread_that_cannot_start(self) -> None:
        """
        The deriver's own thread cannot be started (the process is out of threads): the
        login fails, and the reactor's shutdown has no thread to join.
        """

        class NoThread(threading.Thread):
            def start(self) -> None:
                raise RuntimeError("can't start new thread")

        self.patch(ThreadPool, "threadFactory", NoThread)
        deriver = KeyDeriver(self.reactor)
        self.failureResultOf(deriver.derive(self.cache, self.pending()), RuntimeError)
        [_, (stop, args, kwargs)] = self.reactor.triggers["during"]["shutdown"]
        stop(*args, **kwargs)
        self.failureResultOf(deriver.derive(self.cache, self.pending()), DerivationRefused)

# -*- test-case-name: tests.test_key_derivation -*-
"""
PBKDF2 off the reactor for a client whose server names a high iteration count (the server
chooses it, up to what a users file may hold): on one thread of its own, so neither the
reactor nor Twisted's shared thread pool (which also resolves host names) waits for it. A
derivation is shared by every login that needs the same keys, its result is cached however
the logins ended, work nobody waits for any more is skipped, and at most L{MAX_JOBS}
derivations wait at once. The protocol: C{docs/protocol.md}, "What netguard's own client
does".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from netguard.auth.scram import ClientKeys, PendingKeys

#: Derivations running or waiting at once, across the process; more fail at once.
MAX_JOBS = 4


class DerivationRefused(Exception):
    """
    Too many derivations are waiting already (a gateway naming a fresh salt and a high count
    at every login): this login fails instead of queueing more.
    """


@attrs.define(eq=False)
class _Job:
    """
    One derivation and the logins waiting for it.
    """

    run: Callable[[], tuple[bytes, bytes]]
    waiters: list[Deferred[None]] = attrs.Factory(list)
    #: False once no login waits: the thread then skips it (read there, set here).
    wanted: bool = True

    def run_if_wanted(self) -> tuple[bytes, bytes] | None:
        return self.run() if self.wanted else None

    def leave(self, waiter: Deferred[None]) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)
        if not self.waiters:
            self.wanted = False


class KeyDeriver:
    """
    Derives keys on one thread of its own, started on first use and stopped with the
    reactor (a derivation running then is finished first: at most one, a few seconds at
    10,000,000 iterations; those waiting are skipped).
    """

    def __init__(
        self,
        reactor: Any,
        max_jobs: int = MAX_JOBS,
        run_in_thread: Callable[[Callable[[], Any]], Deferred[Any]] | None = None,
    ) -> None:
        """
        @param reactor: the reactor whose shutdown stops the thread.
        @param max_jobs: derivations running or waiting at once.
        @param run_in_thread: runs a function off the reactor and fires with its result
            (tests hold it); by default the deriver's own thread.
        """
        self._reactor = reactor
        self.max_jobs = max_jobs
        self._run = run_in_thread if run_in_thread is not None else self._on_own_thread
        self._pool: ThreadPool | None = None
        self._jobs: dict[tuple[int, bytes, int], _Job] = {}
        self._stopping = False
        reactor.addSystemEventTrigger("during", "shutdown", self._stop)

    def derive(self, cache: ClientKeys, pending: PendingKeys) -> Deferred[None]:
        """
        Derive the keys C{pending} names into C{cache}, or wait for the derivation already
        doing so.

        @return: fires with L{None} once the keys are in C{cache}; fails with
            L{DerivationRefused} when L{max_jobs} derivations wait already, or with what the
            derivation raised. Cancelling it leaves the derivation, which is skipped if no
            other login waits for it and it has not started.
        """
        key = (id(cache), pending.salt, pending.iterations)
        job = self._jobs.get(key)
        start = job is None
        if job is None:
            if len(self._jobs) >= self.max_jobs or self._stopping:
                return fail(DerivationRefused(f"{len(self._jobs)} key derivations in progress"))
            job = self._jobs[key] = _Job(pending.derive)
        waiter: Deferred[None] = Deferred(lambda waiting: job.leave(waiting))
        job.waiters.append(waiter)
        job.wanted = True
        if start:
            try:
                running = self._run(job.run_if_wanted)
            except Exception:
                # No thread to run it (the process is out of threads): forget the job, so
                # that it holds no place and the next login tries again.
                del self._jobs[key]
                job.waiters.clear()
                return fail()
            running.addBoth(self._finished, key, job, cache, pending)
        return waiter

    def _finished(
        self,
        result: tuple[bytes, bytes] | None | Failure,
        key: tuple[int, bytes, int],
        job: _Job,
        cache: ClientKeys,
        pending: PendingKeys,
    ) -> None:
        if self._jobs.get(key) is job:
            del self._jobs[key]
        waiters, job.waiters = job.waiters, []
        if result is None:
            # Skipped as unwanted just before a login joined it: that login retries.
            result = Failure(DerivationRefused("the derivation was skipped"))
        elif not isinstance(result, Failure):
            # Kept even when no login waits any more: the next one finds them.
            cache.keep(pending.salt, pending.iterations, result)
        for waiter in waiters:
            # A waiter's callback may cancel another (its login ending at once): skip it.
            if waiter.called:
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    def _on_own_thread(self, function: Callable[[], Any]) -> Deferred[Any]:
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=1, name="netguard-key-derivation")
            self._pool.start()
        try:
            return deferToThreadPool(self._reactor, self._pool, function)
        except Exception:
            # Its thread could not start: drop the pool (there is nothing to join at the
            # reactor's shutdown); the next derivation starts a new one.
            self._pool = None
            raise

    def _stop(self) -> None:
        self._stopping = True
        for job in self._jobs.values():
            job.wanted = False
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()


_default: KeyDeriver | None = None


def default_deriver() -> KeyDeriver:
    """
    @return: the process's deriver, on the global reactor.
    """
    global _default
    if _default is None:
        from twisted.internet import reactor

        _default = KeyDeriver(reactor)
    return _default

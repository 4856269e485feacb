"""
C{workers = 2} on the real C{twistd -n netguard} with C{[shared]} naming a real
redis-server: a block a worker learnt from Redis is kept by the supervisor, so a worker
restarted after Redis went away still refuses the blocked source from its first connection.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.integration.test_shared_workers_real import SharedWorkersCase
from tests.integration.test_workers_real import RawLine, ctl


class LearntBlockReplayTests(SharedWorkersCase):
    """
    A supervisor with two workers and an outside instance, sharing one redis-server.
    """

    timeout = 120

    @inlineCallbacks
    def test_block_learnt_from_redis_survives_a_restart_without_redis(self) -> Any:
        """
        An early talker blocked by the outside instance reaches both workers through Redis;
        Redis is then killed and worker 1 SIGKILLed: the worker started in its slot (worker
        0 paused, so it alone accepts) refuses the source with C{ERR BUSY penalised} on
        each of 10 connections (before, it greeted it 6 times in 10).
        """
        daemon, control, port, pids, figures = yield self.blocked_elsewhere("ngwr-")
        # Each worker answers status after the block it passed on, on the same ordered pipe.
        self.kill_redis()
        os.kill(pids[1], signal.SIGKILL)
        yield daemon.wait_for(
            lambda: f"worker 1 (pid {pids[1]}) exited (code None, signal 9)" in daemon.stdout,
            "worker.exited",
        )
        for _ in range(600):
            figures = yield deferToThread(ctl, control, "status")
            rows = figures["workers"]
            if rows[1]["pid"] not in (None, pids[1]) and rows[1]["state"] == "running":
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(figures["workers"][1]["state"], "running")
        os.kill(pids[0], signal.SIGSTOP)  # only the restarted worker accepts
        try:
            answers = []
            for _ in range(10):
                probe = RawLine()
                yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), probe)
                answers.append((yield probe.closed))
        finally:
            os.kill(pids[0], signal.SIGCONT)
        self.assertEqual(answers, [b"ERR BUSY penalised\r\n"] * 10)

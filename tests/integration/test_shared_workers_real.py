"""
C{workers = 2} on the real C{twistd -n netguard} with C{[shared]} naming a real
redis-server: each worker shares through Redis, so a source blocked by another instance
(an in-process gateway on the same Redis) is refused by both workers, and C{ctl status}
shows the shared figures of the workers summed.
"""

from __future__ import annotations

import os
import shutil
import signal
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.integration.test_shared_real import RedisCase
from tests.integration.test_twistd import Twistd, short_temp_dir
from tests.integration.test_workers_real import BASE, RawLine, ctl
from tests.integration.util import free_port, wait_for


class SharedWorkersCase(RedisCase):
    """
    A supervisor with two workers and an outside instance, sharing one redis-server.
    """

    timeout = 120

    @inlineCallbacks
    def status(self, control: str) -> Any:
        figures = yield deferToThread(ctl, control, "status")
        return figures

    @inlineCallbacks
    def blocked_elsewhere(self, prefix: str) -> Any:
        """
        Start redis-server, C{twistd -n netguard} with two workers sharing through it (both
        connected), and an outside instance on the same Redis, where an early talker from
        127.0.0.1 is blocked; wait until both workers applied that block.

        @return: the daemon, its control socket, its port, the workers' pids and the last
            status figures.
        """
        redis_port = self.start_redis()
        root = short_temp_dir(prefix)
        self.addCleanup(shutil.rmtree, root, True)
        state = os.path.join(root, "s")
        config = os.path.join(root, "netguard.toml")
        port = free_port()
        text = BASE.format(listen=f'"tcp:{port}:interface=127.0.0.1"', grace=5)
        text += f'[shared]\nredis = "tcp:host=127.0.0.1:port={redis_port}"\n'
        with open(config, "w") as handle:
            handle.write(text)
        daemon = Twistd(self, state, ["--config", config])
        yield daemon.started()
        control = os.path.join(state, "control.sock")
        yield daemon.wait_for(
            lambda: daemon.stdout.count("sharing state through Redis") == 2,
            "both workers sharing (shared.connected)",
        )
        figures = yield self.status(control)
        self.assertTrue(figures["shared"]["up"])
        pids = [r["pid"] for r in figures["workers"]]

        outside = self.gateway(redis_port)
        yield wait_for(lambda: outside.service.shared.sharing)
        line = yield self.first_line(outside, b"HELLO\r\n")
        self.assertTrue(line.startswith(b"ERR EARLY_TALKER"), line)

        for _ in range(600):
            figures = yield self.status(control)
            if figures["shared"].get("blocks_applied", 0) == 2:  # summed: one per worker
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(figures["shared"]["blocks_applied"], 2)
        return daemon, control, port, pids, figures


class SharedWorkersTests(SharedWorkersCase):
    """
    A supervisor with two workers and an outside instance, sharing one redis-server.
    """

    @inlineCallbacks
    def test_block_elsewhere_refused_by_both_workers(self) -> Any:
        """
        An early talker blocked by the outside instance is refused (C{ERR BUSY penalised})
        by each of the two workers in turn (the other paused while it accepts); C{ctl
        status} shows both workers sharing and the blocks they applied.
        """
        daemon, control, port, pids, figures = yield self.blocked_elsewhere("ngsw-")
        self.assertEqual(figures["shared"]["blocks_published"], 0)
        for index in (0, 1):
            other = pids[1 - index]
            os.kill(other, signal.SIGSTOP)  # only worker `index` accepts
            try:
                probe = RawLine()
                yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), probe)
                data = yield probe.closed
            finally:
                os.kill(other, signal.SIGCONT)
            self.assertEqual(data, b"ERR BUSY penalised\r\n", index)

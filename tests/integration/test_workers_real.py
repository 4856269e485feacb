"""
C{workers = 2} on the real C{twistd -n netguard}: a supervisor and two worker processes
sharing every listener, over real loopback and unix sockets.

Which worker accepts a connection is the kernel's choice; to make a test deterministic, the
other worker is paused (SIGSTOP) while the connection is made, so the only process calling
C{accept} on the shared socket is the chosen one, and resumed (SIGCONT) right after.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial import unittest
from zope.interface import implementer

from netguard.client.endpoint import wrap_tls
from netguard.client.protocol import Credentials, NGPClientProtocol
from netguard.ops.ctl_client import run_ctl
from tests import tls_certs
from tests.integration.test_tickets_real import RawClient
from tests.integration.test_twistd import Twistd, short_temp_dir
from tests.integration.util import free_port

BASE = """\
workers = 2
listen = [{listen}]
[limits]
greeting_delay = 0.05
[ops]
shutdown_grace = {grace}
[services.echo]
backend = "builtin:echo"
users = ["*"]
"""


class Stream(NGPClientProtocol):
    """
    A real client that opens C{echo} and collects what comes back, for as long as the test
    keeps it open.
    """

    def __init__(self, credentials: Credentials) -> None:
        super().__init__(credentials, "echo", clock=reactor)
        self.received = bytearray()
        self.ended: Deferred[bytes] = Deferred()

    def service_data(self, data: bytes) -> None:
        self.received += data

    def service_closed(self, reason: Any) -> None:
        if not self.ended.called:
            self.ended.callback(bytes(self.received))


class RawLine(Protocol):
    """
    A raw client: collects whatever the gateway writes until it closes; may talk first.
    """

    def __init__(self, early: bytes = b"") -> None:
        self.early = early
        self.data = b""
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        if self.early:
            self.transport.write(self.early)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(self.data)


class _HeaderFirst(ProtocolWrapper):
    """
    Writes a PROXY header on the connection before the wrapped protocol (TLS) talks.
    """

    header = b""

    def connectionMade(self) -> None:
        self.transport.write(self.header)
        super().connectionMade()


@implementer(IStreamClientEndpoint)
class HeaderFirstEndpoint:
    """
    A client endpoint that sends C{header} first on each connection, as HAProxy's
    C{send-proxy} does, then hands the connection to the protocol (for TLS, its handshake).
    """

    def __init__(self, endpoint: Any, header: bytes) -> None:
        self.endpoint = endpoint
        self.header = header

    def connect(self, factory: Any) -> Any:
        wrapping = WrappingFactory(factory)
        header = self.header

        class Wrapper(_HeaderFirst):
            pass

        Wrapper.header = header
        wrapping.protocol = Wrapper
        return self.endpoint.connect(wrapping).addCallback(lambda wrapper: wrapper.wrappedProtocol)


def ctl(path: str, command: str) -> dict[str, Any]:
    """
    One control command over the supervisor's control socket (blocking, bounded).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    line = data.decode().strip()
    if not line.startswith("OK "):
        raise AssertionError(f"{command}: {line}")
    return json.loads(line[3:])  # type: ignore[no-any-return]


class WorkersTests(unittest.TestCase):
    """
    The supervisor and its two workers, the real processes.
    """

    timeout = 120

    def setUp(self) -> None:
        self.root = short_temp_dir("ngwk-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.state = os.path.join(self.root, "s")
        self.config = os.path.join(self.root, "netguard.toml")
        self.port = free_port()
        self.control = os.path.join(self.state, "control.sock")
        self.paused: list[int] = []
        self.addCleanup(self.resume_all)

    # -- helpers ---------------------------------------------------------------------------------

    @inlineCallbacks
    def start(
        self, extra: str = "", listen: str | None = None, grace: int = 20, ops_extra: bool = False
    ) -> Any:
        """
        Start the supervisor with two workers; C{extra} is appended to the configuration
        (to the C{[ops]} table with C{ops_extra}, else after the services).
        """
        listeners = listen if listen is not None else f'"tcp:{self.port}:interface=127.0.0.1"'
        text = BASE.format(listen=listeners, grace=grace)
        if ops_extra:
            text = text.replace("[services.echo]", extra + "[services.echo]")
        else:
            text += extra
        with open(self.config, "w") as handle:
            handle.write(text)
        self.daemon = Twistd(self, self.state, ["--config", self.config])
        self.credentials = yield self.daemon.started()
        yield self.daemon.wait_for(lambda: self.running() == 2, "two workers serving")
        return self.credentials

    def running(self) -> int:
        """
        How many workers the log says serve now (started less exited).
        """
        out = self.daemon.stdout
        return out.count("serving (pid ") - out.count("exited (code")

    def status(self) -> Any:
        return deferToThread(ctl, self.control, "status")

    @inlineCallbacks
    def pids(self) -> Any:
        """
        The worker PIDs by index, once both serve.
        """
        for _ in range(300):
            figures = yield self.status()
            rows = figures["workers"]
            if all(row["state"] == "running" for row in rows):
                return [row["pid"] for row in rows]
            yield deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"workers not both running: {figures}")

    def pause(self, pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        self.paused.append(pid)

    def killed(self, pids: list[int], index: int) -> Any:
        """
        SIGKILL worker C{index} (of C{pids}) and wait until the supervisor has seen it exit.
        """
        os.kill(pids[index], signal.SIGKILL)
        ended = f"worker {index} (pid {pids[index]}) exited (code None, signal 9)"
        return self.daemon.wait_for(lambda: ended in self.daemon.stdout, "worker.exited")

    def resume(self, pid: int) -> None:
        os.kill(pid, signal.SIGCONT)
        self.paused.remove(pid)

    def resume_all(self) -> None:
        for pid in list(self.paused):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.paused = []

    def endpoint(self) -> Any:
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)

    @inlineCallbacks
    def open_through_each(self, pids: list[int]) -> Any:
        """
        Open one echo session served by each worker (L{open_through}).

        @return: the sessions, worker 0's first.
        """
        streams = []
        for index in range(len(pids)):
            stream = yield self.open_through(pids, index)
            streams.append(stream)
        return streams

    @inlineCallbacks
    def open_through(self, pids: list[int], index: int, endpoint: Any = None) -> Any:
        """
        Open an echo session that worker C{index} serves (the other one paused meanwhile).
        """
        other = pids[1 - index]
        self.pause(other)
        try:
            stream = Stream(self.credentials)
            yield connectProtocol(endpoint or self.endpoint(), stream)
            yield stream.opened
        finally:
            self.resume(other)
        return stream

    @inlineCallbacks
    def echo(self, stream: Stream, size: int = 256 * 1024) -> Any:
        """
        Send C{size} random bytes over an open session and check they all come back.
        """
        payload = os.urandom(size)
        start = len(stream.received)
        stream.transport.write(payload)
        yield self.daemon.wait_for(
            lambda: len(stream.received) - start >= size or stream.ended.called, "the echo"
        )
        got = bytes(stream.received[start:])
        self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(payload).hexdigest())

    @inlineCallbacks
    def served_by(self, pids: list[int], index: int) -> Any:
        """
        Whether the status shows one live session in worker C{index}.
        """
        figures = yield self.status()
        return figures["workers"][index]["active"]

    @inlineCallbacks
    def answer_while_paused(self, pid: int) -> Any:
        """
        What a new connection gets (all it reads until closed) while worker C{pid} is
        paused, so that the other worker alone accepts it.
        """
        self.pause(pid)
        try:
            probe = RawLine()
            yield connectProtocol(self.endpoint(), probe)
            data = yield probe.closed
        finally:
            self.resume(pid)
        return data

    # -- the tests -------------------------------------------------------------------------------

    @inlineCallbacks
    def test_both_workers_serve_one_port(self) -> Any:
        """
        Two workers accept on the same port: with one paused, the other serves a session
        (and the status counts it against that worker), and the other way round; the
        worker's log lines carry its index (C{w0:}/C{w1:}).
        """
        yield self.start()
        pids = yield self.pids()
        self.assertEqual(len(set(pids)), 2)
        for index in (0, 1):
            stream = yield self.open_through(pids, index)
            yield self.echo(stream)
            active = yield self.served_by(pids, index)
            self.assertEqual(active, 1)
            stream.transport.loseConnection()
            yield stream.ended
        yield self.daemon.wait_for(
            lambda: (
                re.search(r"\[w0:\S+\] auth\.ok", self.daemon.stdout) is not None
                and re.search(r"\[w1:\S+\] auth\.ok", self.daemon.stdout) is not None
            ),
            "a login logged by each worker",
        )

    @inlineCallbacks
    def test_killed_worker_replaced_other_keeps_relaying(self) -> Any:
        """
        SIGKILL to one worker: the supervisor logs C{worker.exited} (signal 9) and starts a
        new one in the same slot, while a relay through the surviving worker keeps every
        byte before, during and after; the new worker serves.
        """
        yield self.start()
        pids = yield self.pids()
        stream = yield self.open_through(pids, 0)
        yield self.echo(stream)
        exited = self.killed(pids, 1)
        yield self.echo(stream)
        yield exited
        yield self.echo(stream)
        new = yield self.pids()
        self.assertEqual(new[0], pids[0])
        self.assertNotEqual(new[1], pids[1])
        figures = yield self.status()
        self.assertEqual(figures["workers"][1]["restarts"], 1)
        self.assertEqual(figures["workers"][0]["restarts"], 0)
        yield self.echo(stream)
        fresh = yield self.open_through(new, 1)
        yield self.echo(fresh)
        stream.transport.loseConnection()
        fresh.transport.loseConnection()
        yield stream.ended
        yield fresh.ended

    @inlineCallbacks
    def test_sighup_reloads_both(self) -> Any:
        """
        SIGHUP to the supervisor: each worker logs its own C{reload.done}, the supervisor
        C{worker.reloaded} with 2/2; a configuration that does not load is refused by the
        supervisor and reaches no worker.
        """
        yield self.start()
        yield self.pids()
        os.kill(self.daemon.process.pid, signal.SIGHUP)
        yield self.daemon.wait_for(
            lambda: "2/2 workers reloaded" in self.daemon.stdout, "worker.reloaded"
        )
        out = self.daemon.stdout
        self.assertRegex(out, r"\[w0:\S+\] reload\.done")
        self.assertRegex(out, r"\[w1:\S+\] reload\.done")
        with open(self.config, "a") as handle:
            handle.write("bogus_key = 1\n")
        os.kill(self.daemon.process.pid, signal.SIGHUP)
        yield self.daemon.wait_for(lambda: "reload refused" in self.daemon.stdout, "refusal")
        self.assertEqual(self.daemon.stdout.count("reload.done"), 2)

    @inlineCallbacks
    def test_restarted_worker_needs_the_config_in_force(self) -> Any:
        """
        A worker restarted after the configuration file was edited but not reloaded does
        not start with settings the other worker does not have: it exits saying why (and is
        retried with backoff); after SIGHUP applies the file to the running worker, the next
        attempt starts and serves.
        """
        yield self.start()
        pids = yield self.pids()
        with open(self.config, "a") as handle:
            handle.write('[services.echo2]\nbackend = "builtin:echo"\nusers = ["*"]\n')
        os.kill(pids[1], signal.SIGKILL)
        yield self.daemon.wait_for(
            lambda: (
                "configuration file changed since the supervisor last loaded it"
                in self.daemon.stderr
            ),
            "the refusal to start",
        )
        yield self.daemon.wait_for(
            lambda: "exited (code 1, signal None)" in self.daemon.stdout, "the exit logged"
        )
        os.kill(self.daemon.process.pid, signal.SIGHUP)
        yield self.daemon.wait_for(
            lambda: "1/1 workers reloaded" in self.daemon.stdout, "the running worker's reload"
        )
        new = yield self.pids()
        self.assertEqual(new[0], pids[0])
        stream = yield self.open_through(new, 1)
        yield self.echo(stream, 1024)
        stream.transport.loseConnection()
        yield stream.ended

    @inlineCallbacks
    def test_sigterm_drains_both(self) -> Any:
        """
        SIGTERM to the supervisor: both workers drain (their relays keep every byte until
        the clients close), the shared port stops accepting, and the supervisor exits 0
        after both workers have stopped.
        """
        yield self.start()
        pids = yield self.pids()
        streams = yield self.open_through_each(pids)
        os.kill(self.daemon.process.pid, signal.SIGTERM)
        yield self.daemon.wait_for(
            lambda: self.daemon.stdout.count("shutdown.drain - draining 1 connection(s)") == 2,
            "both workers draining",
        )
        for stream in streams:
            yield self.echo(stream)
        refused = RawLine()
        try:
            yield connectProtocol(self.endpoint(), refused)
            data = yield refused.closed
            self.assertNotIn(b"NETGUARD/1", data)
        except ConnectionRefusedError:
            pass  # the port is closed already
        for stream in streams:
            stream.transport.loseConnection()
        code = yield self.daemon.exited()
        self.assertEqual(code, 0)
        self.assertEqual(len(re.findall(r"worker \d \(pid \d+\) stopped", self.daemon.stdout)), 2)
        self.assertIn("netguard stopped: 2 workers", self.daemon.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.state, "netguard.lock")))

    @inlineCallbacks
    def test_unix_and_tls_listeners(self) -> Any:
        """
        A unix-socket listener and a TLS listener work with workers: a session through each
        worker on each; the socket file keeps mode 0600 (a worker adopting it does not
        change it) and survives a worker killed and a worker that drained and exited by
        itself (a worker does not remove it); the replacements serve on it.
        """
        cert, key = tls_certs.make_leaf("localhost", extra_names=("127.0.0.1",))
        cert_file, key_file = tls_certs.write_identity(self.root, "gateway", cert, key)
        tls_port = free_port()
        path = os.path.join(self.root, "ng.sock")
        yield self.start(
            extra=(
                "[[tls_listen]]\n"
                f'endpoint = "tcp:{tls_port}:interface=127.0.0.1"\n'
                f'cert_file = "{cert_file}"\n'
                f'key_file = "{key_file}"\n'
            ),
            listen=f'"unix:{path}:mode=600"',
        )
        pids = yield self.pids()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        tls = wrap_tls(
            reactor,
            TCP4ClientEndpoint(reactor, "127.0.0.1", tls_port),
            {"tls": "1", "ca_file": cert_file},
            default_hostname="localhost",
        )
        for index in (0, 1):
            for endpoint in (UNIXClientEndpoint(reactor, path), tls):
                stream = yield self.open_through(pids, index, endpoint)
                yield self.echo(stream, 64 * 1024)
                stream.transport.loseConnection()
                yield stream.ended
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        os.kill(pids[0], signal.SIGKILL)
        yield self.daemon.wait_for(
            lambda: f"worker 0 (pid {pids[0]}) exited" in self.daemon.stdout, "worker.exited"
        )
        new = yield self.pids()
        self.assertNotEqual(new[0], pids[0])
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        stream = yield self.open_through(new, 0, UNIXClientEndpoint(reactor, path))
        yield self.echo(stream, 1024)
        stream.transport.loseConnection()
        yield stream.ended
        # A worker that drains and exits by itself closes its copy without removing the
        # file or changing its mode; its replacement serves on it.
        os.kill(new[1], signal.SIGTERM)
        yield self.daemon.wait_for(
            lambda: f"worker 1 (pid {new[1]}) exited (code 0" in self.daemon.stdout,
            "the drained worker's exit",
        )
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        latest = yield self.pids()
        stream = yield self.open_through(latest, 1, UNIXClientEndpoint(reactor, path))
        yield self.echo(stream, 1024)
        stream.transport.loseConnection()
        yield stream.ended
        yield self.daemon.wait_for(lambda: "SCRAM-SHA-256-PLUS" in self.daemon.stdout, "TLS login")

    @inlineCallbacks
    def test_status_aggregates_workers(self) -> Any:
        """
        C{ctl status} sums the workers' figures: with one session in each worker, C{active}
        is 2 and C{connections} the sum of both workers' lines; it lists both workers with
        their PIDs and the supervisor's own PID.
        """
        yield self.start()
        pids = yield self.pids()
        streams = yield self.open_through_each(pids)
        figures = yield self.status()
        self.assertEqual(figures["active"], 2)
        self.assertEqual([row["active"] for row in figures["workers"]], [1, 1])
        self.assertEqual(figures["connections"], sum(r["connections"] for r in figures["workers"]))
        self.assertEqual(figures["admission"]["relays"], 2)
        self.assertEqual(figures["pid"], self.daemon.process.pid)
        self.assertEqual(sorted(r["pid"] for r in figures["workers"]), sorted(pids))
        self.assertEqual(figures["workers_running"], 2)
        for stream in streams:
            stream.transport.loseConnection()
            yield stream.ended

    @inlineCallbacks
    def test_penalty_in_one_worker_refused_by_other(self) -> Any:
        """
        A source blocked by one worker (an early talker) is refused with C{ERR BUSY
        penalised} by the other worker, which never saw it offend; C{ctl penalties} lists
        it, and C{ctl penalties clear} clears it in both workers, after which the other
        worker greets it again.
        """
        yield self.start(extra="[admission]\npenalty_base = 600\n")
        pids = yield self.pids()
        self.pause(pids[1])
        early = RawLine(b"HELLO\r\n")
        yield connectProtocol(self.endpoint(), early)
        yield early.closed
        self.resume(pids[1])
        yield self.daemon.wait_for(
            lambda: "shared with 1 other(s)" in self.daemon.stdout,
            "worker.penalty_shared",
        )
        # Worker 1 answers a status only after every message sent to it before (one pipe,
        # in order): the relayed block has been applied by then.
        yield self.status()
        data = yield self.answer_while_paused(pids[0])
        self.assertIn(b"ERR BUSY penalised", data)
        listed = yield deferToThread(ctl, self.control, "penalties")
        self.assertEqual([row["source"] for row in listed["penalties"]], ["127.0.0.1/32"])
        yield deferToThread(ctl, self.control, "penalties clear")
        self.pause(pids[0])
        try:
            stream = Stream(self.credentials)
            yield connectProtocol(self.endpoint(), stream)
            yield stream.opened
        finally:
            self.resume(pids[0])
        stream.transport.loseConnection()
        yield stream.ended

    @inlineCallbacks
    def test_penalties_top_and_source_through_the_supervisor(self) -> Any:
        """
        C{netguard ctl penalties} through the supervisor's real control socket, with the
        real client: early talkers from three loopback sources (6, 4 and 2 offences, all in
        worker 0, points only) give C{--top 2} the two with the most offences, C{total} 3
        and C{truncated}; C{--top 3} all of them, not truncated; C{penalties SOURCE} that
        one source alone; C{penalties clear SOURCE} still clears it in both workers.
        """
        yield self.start(extra="[admission]\nearly_talker_points = 1\npenalty_threshold = 50\n")
        pids = yield self.pids()
        self.pause(pids[1])
        try:
            for source, count in (("127.0.0.2", 4), ("127.0.0.3", 6), ("127.0.0.4", 2)):
                endpoint = TCP4ClientEndpoint(
                    reactor, "127.0.0.1", self.port, bindAddress=(source, 0)
                )
                for _ in range(count):
                    early = RawLine(b"HELLO\r\n")
                    yield connectProtocol(endpoint, early)
                    yield early.closed
        finally:
            self.resume(pids[1])
        yield self.status()

        def listed(*words: str) -> Any:
            def run() -> Any:
                code, output = run_ctl(self.control, list(words), timeout=15)
                self.assertEqual(code, 0, output)
                return json.loads(output)

            return deferToThread(run)

        top = yield listed("penalties", "--top", "2")
        self.assertEqual(
            [(row["source"], row["offences"]) for row in top["penalties"]],
            [("127.0.0.3/32", 6), ("127.0.0.2/32", 4)],
        )
        self.assertEqual((top["total"], top["truncated"]), (3, True))
        every = yield listed("penalties", "--top", "3")
        self.assertEqual(
            [row["source"] for row in every["penalties"]],
            ["127.0.0.3/32", "127.0.0.2/32", "127.0.0.4/32"],
        )
        self.assertEqual((every["total"], every["truncated"]), (3, False))
        one = yield listed("penalties", "127.0.0.4")
        self.assertEqual(
            one,
            {
                "penalties": [{"source": "127.0.0.4/32", "blocked_for": 0.0, "offences": 2}],
                "total": 1,
                "truncated": False,
                "approximate": False,
            },
        )
        cleared = yield listed("penalties", "clear", "127.0.0.3")
        self.assertEqual(cleared, {"cleared": 1})
        after = yield listed("penalties")
        self.assertEqual(
            [row["source"] for row in after["penalties"]], ["127.0.0.2/32", "127.0.0.4/32"]
        )
        self.assertEqual((after["total"], after["truncated"]), (2, False))

    @inlineCallbacks
    def test_restarted_worker_keeps_blocks_in_force(self) -> Any:
        """
        A source blocked by worker 0 (an early talker) is still refused with C{ERR BUSY
        penalised} by the worker started in slot 0 after a SIGKILL: the supervisor sends it
        the blocks in force before it serves, so its first connection from that source is
        already refused (before, it greeted the source with a fresh budget).
        """
        yield self.start(extra="[admission]\npenalty_base = 600\n")
        pids = yield self.pids()
        self.pause(pids[1])
        try:
            early = RawLine(b"HELLO\r\n")
            yield connectProtocol(self.endpoint(), early)
            yield early.closed
        finally:
            self.resume(pids[1])
        yield self.daemon.wait_for(
            lambda: "shared with 1 other(s)" in self.daemon.stdout, "worker.penalty_shared"
        )
        yield self.killed(pids, 0)
        new = yield self.pids()
        self.assertNotEqual(new[0], pids[0])
        self.assertEqual(new[1], pids[1])
        data = yield self.answer_while_paused(new[1])
        self.assertIn(b"ERR BUSY penalised", data)
        yield self.daemon.wait_for(
            lambda: re.search(r"\[w0:\S+\] conn\.reject", self.daemon.stdout) is not None,
            "the restarted worker 0 refusing the source",
        )

    @inlineCallbacks
    def test_restarted_worker_gets_a_replay_of_several_batches(self) -> Any:
        """
        1,500 sources blocked by worker 0 (one early talker each, from 127.0.x.y) are more
        than one replay batch: the worker started in slot 0 after a SIGKILL gets them all,
        batch after batch, before it serves, and refuses the first and the last of them
        with C{ERR BUSY penalised}.
        """
        yield self.start(extra="[admission]\npenalty_base = 600\nper_source_burst = 4\n")
        pids = yield self.pids()
        sources = [f"127.0.{2 + i // 250}.{1 + i % 250}" for i in range(1500)]
        self.pause(pids[1])
        try:
            for source in sources:
                early = RawLine(b"HELLO\r\n")
                endpoint = TCP4ClientEndpoint(
                    reactor, "127.0.0.1", self.port, bindAddress=(source, 0)
                )
                yield connectProtocol(endpoint, early)
                yield early.closed
        finally:
            self.resume(pids[1])
        # Worker 0 answers this after the blocks it reported, on the same ordered pipe.
        yield self.status()
        yield self.killed(pids, 0)
        new = yield self.pids()
        self.assertNotEqual(new[0], pids[0])
        self.pause(new[1])
        try:
            for source in (sources[0], sources[-1]):
                probe = RawLine()
                endpoint = TCP4ClientEndpoint(
                    reactor, "127.0.0.1", self.port, bindAddress=(source, 0)
                )
                yield connectProtocol(endpoint, probe)
                data = yield probe.closed
                self.assertIn(b"ERR BUSY penalised", data, source)
        finally:
            self.resume(new[1])

    @inlineCallbacks
    def test_ticket_spent_in_one_worker_refused_by_other(self) -> Any:
        """
        A returning-client ticket issued and presented (spent) at one worker is refused as
        replayed (C{ERR BAD_TICKET}) when presented again at the other, which never saw it
        spent; a fresh ticket from one worker enters the other's lane (the workers share the
        key).
        """
        yield self.start()
        pids = yield self.pids()

        def get_ticket() -> bytes:
            client = RawClient(self.port)
            try:
                client.line()
                client.login(self.credentials)
                client.send(b"TICKET\r\nOPEN echo\r\n")
                ticket = client.line()
                assert client.line() == b"OK OPEN echo"
            finally:
                client.close()
            return ticket.split(b" ")[2]

        def present(token: bytes) -> bytes:
            client = RawClient(self.port)
            try:
                client.send(b"RESUME " + token + b"\r\n")
                return client.line()
            finally:
                client.close()

        self.pause(pids[1])
        try:
            token = yield deferToThread(get_ticket)
            first = yield deferToThread(present, token)
            fresh = yield deferToThread(get_ticket)
        finally:
            self.resume(pids[1])
        self.assertTrue(first.startswith(b"NETGUARD/1 "), first)
        # Each status answer from worker 1 comes after every message the supervisor sent it
        # before (one pipe, in order): the relayed spend has been applied by then.
        yield self.status()
        yield self.status()
        self.pause(pids[0])
        try:
            other = yield deferToThread(present, fresh)
            replay = yield deferToThread(present, token)
        finally:
            self.resume(pids[0])
        self.assertTrue(other.startswith(b"NETGUARD/1 "), other)
        self.assertTrue(replay.startswith(b"ERR BAD_TICKET"), replay)
        yield self.daemon.wait_for(
            lambda: (
                re.search(r"\[w1:\S+\] ticket\.refused .*replayed", self.daemon.stdout) is not None
            ),
            "worker 1 refusing the replay",
        )

    @inlineCallbacks
    def test_proxy_listener_in_each_worker(self) -> Any:
        """
        A C{haproxy:} listener works with workers: each worker reads the PROXY header from
        this host (the default C{proxy_from}) and greets the client under the header's
        address, which its log shows.
        """
        yield self.start(listen=f'"haproxy:tcp:{self.port}:interface=127.0.0.1"')
        pids = yield self.pids()
        for index, client in ((0, "192.0.2.40"), (1, "192.0.2.41")):
            header = f"PROXY TCP4 {client} 127.0.0.1 40000 {self.port}\r\n".encode()
            probe = RawLine(header)
            self.pause(pids[1 - index])
            try:
                yield connectProtocol(self.endpoint(), probe)
                yield self.daemon.wait_for(lambda p=probe: b"\r\n" in p.data, "the greeting")
            finally:
                self.resume(pids[1 - index])
            self.assertTrue(probe.data.startswith(b"NETGUARD/1 "), probe.data)
            probe.transport.write(b"PING\r\n")
            yield self.daemon.wait_for(lambda p=probe: b"PONG" in p.data, "the PONG")
            probe.transport.loseConnection()
            yield probe.closed
            pattern = rf"\[w{index}:\S+\] conn\.accept \S+ accepted {client}:40000"
            yield self.daemon.wait_for(
                lambda pattern=pattern: re.search(pattern, self.daemon.stdout) is not None,
                f"worker {index} logging {client}",
            )

    @inlineCallbacks
    def test_tls_listener_behind_haproxy(self) -> Any:
        """
        A C{[[tls_listen]]} on a C{haproxy:} listener with workers reads the PROXY header
        before the TLS handshake, as the single-process gateway does: a header from this
        host (the default C{proxy_from}) then TLS is served in each worker as the header's
        client; a TLS client that sends no header is refused with C{conn.reject
        reason=proxy-header} and charged one offence on its own address.
        """
        cert, key = tls_certs.make_leaf("localhost", extra_names=("127.0.0.1",))
        cert_file, key_file = tls_certs.write_identity(self.root, "gateway", cert, key)
        tls_port = free_port()
        yield self.start(
            extra=(
                "[[tls_listen]]\n"
                f'endpoint = "haproxy:tcp:{tls_port}:interface=127.0.0.1"\n'
                f'cert_file = "{cert_file}"\n'
                f'key_file = "{key_file}"\n'
            )
        )
        pids = yield self.pids()
        plain = TCP4ClientEndpoint(reactor, "127.0.0.1", tls_port)
        options = {"tls": "1", "ca_file": cert_file}
        for index, client in ((0, "192.0.2.50"), (1, "192.0.2.51")):
            header = f"PROXY TCP4 {client} 127.0.0.1 40000 {tls_port}\r\n".encode()
            endpoint = wrap_tls(
                reactor, HeaderFirstEndpoint(plain, header), options, default_hostname="localhost"
            )
            stream = yield self.open_through(pids, index, endpoint)
            yield self.echo(stream, 64 * 1024)
            stream.transport.loseConnection()
            yield stream.ended
            pattern = rf"\[w{index}:\S+\] conn\.accept \S+ accepted {client}:40000"
            yield self.daemon.wait_for(
                lambda pattern=pattern: re.search(pattern, self.daemon.stdout) is not None,
                f"worker {index} logging {client}",
            )
        listed = yield deferToThread(ctl, self.control, "penalties")
        self.assertEqual(listed["penalties"], [])
        # A TLS client straight to the listener: its ClientHello is not a PROXY header.
        direct = RawLine()
        yield connectProtocol(
            wrap_tls(reactor, plain, options, default_hostname="localhost"), direct
        )
        said = yield direct.closed
        self.assertEqual(said, b"")
        yield self.daemon.wait_for(
            lambda: "invalid PROXY header from 127.0.0.1:" in self.daemon.stdout,
            "the refusal",
        )
        listed = yield deferToThread(ctl, self.control, "penalties")
        self.assertEqual(
            [(row["source"], row["offences"]) for row in listed["penalties"]],
            [("127.0.0.1/32", 1)],
        )

    @inlineCallbacks
    def test_per_source_cap_divided(self) -> Any:
        """
        The per-source cap is divided between the workers rounded up: with
        C{per_source_max = 3} and two workers, one worker holds at most 2 connections of a
        source (the third is refused C{per-source-cap}), so the two together hold at most
        4 = 3 + (2 - 1).
        """
        yield self.start(extra="[admission]\nper_source_max = 3\n")
        pids = yield self.pids()
        self.pause(pids[1])
        try:
            held = []
            for _ in range(2):
                stream = Stream(self.credentials)
                yield connectProtocol(self.endpoint(), stream)
                yield stream.opened
                held.append(stream)
            third = RawLine()
            yield connectProtocol(self.endpoint(), third)
            data = yield third.closed
        finally:
            self.resume(pids[1])
        self.assertIn(b"ERR BUSY per-source-cap", data)
        for stream in held:
            stream.transport.loseConnection()
            yield stream.ended

    @inlineCallbacks
    def test_metrics_sum_workers(self) -> Any:
        """
        The supervisor's metrics endpoint shows the workers' figures summed: with one
        session in each worker, C{netguard_active} is 2 and the set-up histogram counts both
        sessions.
        """
        metrics_port = free_port()
        yield self.start(
            extra=f'metrics_listen = "tcp:{metrics_port}:interface=127.0.0.1"\n',
            ops_extra=True,
        )
        pids = yield self.pids()
        streams = yield self.open_through_each(pids)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        scraped = [""]

        def scrape() -> bool:
            with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - loopback
                scraped[0] = answer.read().decode()
            # The figures are gathered once a second: wait for a gathering after both opened.
            return (
                re.search(r"^netguard_active 2$", scraped[0], re.M) is not None
                and re.search(r"^netguard_session_setup_seconds_count 2$", scraped[0], re.M)
                is not None
            )

        for _ in range(100):
            done = yield deferToThread(scrape)
            if done:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertRegex(scraped[0], r"(?m)^netguard_active 2$")
        self.assertRegex(scraped[0], r"(?m)^netguard_session_setup_seconds_count 2$")
        for stream in streams:
            stream.transport.loseConnection()
            yield stream.ended


#: Runs twistd after making the workers start with the interpreter given as the first
#: argument (one the run-as user may execute), then as C{twistd} itself.
TWISTD_WITH_WORKER_PYTHON = """\
import sys
import netguard.workers.assemble as assemble
from netguard.workers.spawning import Spawner
python = sys.argv.pop(1)
class WorkerPython(Spawner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.command = [python, "-S", "-m", "netguard.worker"]
assemble.Spawner = WorkerPython
from twisted.scripts.twistd import run
sys.argv[0] = "twistd"
run()
"""


def runnable_python(uid: int, gid: int) -> tuple[str | None, str]:
    """
    An interpreter of this Python's version that user C{uid} may run (this one, or the
    system's), or L{None} and why not.
    """
    problems = []
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                user=uid,
                group=gid,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except OSError as error:
            problems.append(f"{candidate}: {error.strerror}")
            continue
        if probe.returncode == 0 and probe.stdout.strip() == str(sys.version_info[:2]):
            return candidate, ""
        problems.append(f"{candidate}: exit {probe.returncode} {probe.stdout.strip()}")
    return None, "; ".join(problems)


class RunAsTwistd(Twistd):
    """
    L{Twistd} whose scratch directory (holding the Twisted view on the import path) the
    run-as user can read, and whose workers start with C{python}: the workers start after
    twistd dropped root, so they need an interpreter and an import path that user can read.
    """

    def __init__(
        self,
        case: unittest.TestCase,
        state_dir: str,
        args: list[str],
        options: list[str],
        python: str,
    ) -> None:
        self.python = python
        super().__init__(case, state_dir, args, options)

    def prepare_work(self) -> None:
        os.chmod(self.work, 0o755)

    def twistd(self, prefix: list[str]) -> list[str]:
        return [*prefix, "-c", TWISTD_WITH_WORKER_PYTHON, self.python]


class WorkersRunAsTests(unittest.TestCase):
    """
    C{twistd --uid/--gid} as root with two workers.
    """

    timeout = 90

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("twistd --uid needs root; this runs as a normal user")
        try:
            self.nobody = pwd.getpwnam("nobody")
        except KeyError:
            raise unittest.SkipTest("no 'nobody' user on this machine") from None
        python, problem = runnable_python(self.nobody.pw_uid, self.nobody.pw_gid)
        if python is None:
            raise unittest.SkipTest(
                f"'nobody' can run no Python {sys.version_info[:2]}: {problem}"
            )
        self.python = python
        self.root = short_temp_dir("ngwu-")
        self.addCleanup(shutil.rmtree, self.root, True)
        os.chmod(self.root, 0o755)  # the run-as user must reach its state directory
        self.state = os.path.join(self.root, "st")
        self.config = os.path.join(self.root, "netguard.toml")
        self.port = free_port()
        with open(self.config, "w") as handle:
            handle.write(BASE.format(listen=f'"tcp:{self.port}:interface=127.0.0.1"', grace=5))
        os.chmod(self.config, 0o644)

    @inlineCallbacks
    def test_workers_run_as_user(self) -> Any:
        """
        The supervisor hands the state directory to the run-as user before the drop, the
        workers start after it as that user, read the users file and keys, serve, reload
        on SIGHUP, and the stop removes the sockets and the lock.
        """
        uid, gid = self.nobody.pw_uid, self.nobody.pw_gid
        daemon = RunAsTwistd(
            self,
            self.state,
            ["--config", self.config],
            ["--uid", str(uid), "--gid", str(gid)],
            self.python,
        )
        credentials = yield daemon.started()
        yield daemon.wait_for(lambda: daemon.stdout.count("serving (pid ") == 2, "two workers")
        status = yield deferToThread(ctl, os.path.join(self.state, "control.sock"), "status")
        for row in status["workers"]:
            with open(f"/proc/{row['pid']}/status") as f:
                uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
            self.assertEqual(set(uids), {str(uid)})
        for name in ("", "users", "netguard.lock", "control.sock", "ticket.key"):
            info = os.lstat(os.path.join(self.state, name))
            self.assertEqual((info.st_uid, info.st_gid), (uid, gid), name)
        stream = Stream(credentials)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), stream)
        yield stream.opened
        stream.transport.loseConnection()
        yield stream.ended
        daemon.process.send_signal(signal.SIGHUP)
        yield daemon.wait_for(lambda: "2/2 workers reloaded" in daemon.stdout, "the reload")
        daemon.process.send_signal(signal.SIGTERM)
        code = yield daemon.exited()
        self.assertEqual(code, 0, daemon.describe())
        self.assertEqual(
            sorted(os.listdir(self.state)), ["mock-verifier.key", "ticket.key", "users"]
        )

"""
State shared through a real redis-server between two real gateway instances in this process
(two services on their own ports and state directories, as two hosts behind a load balancer
would run): a source blocked by one is refused by the other, a ticket spent at one is refused
at the other, Redis killed mid-test (each instance keeps serving on its own limits, one
C{shared.degraded} each, one C{shared.restored} each once redis-server is back), and a
hostile slow Redis that never answers a real command (no client waits past the bound).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from netguard.shared.resp import RespProtocol
from tests.integration.util import (
    RunningGateway,
    free_port,
    need_peer,
    redis_server_argv,
    stop_process,
    wait_for,
)

SOURCE = "127.0.0.1/32"


class LineClient(Protocol):
    """
    A raw client: sends C{first} on connecting, collects the lines it is sent; C{done} fires
    with them when the gateway closes (or the test closes it).
    """

    def __init__(self, first: bytes = b"") -> None:
        self.first = first
        self.data = b""
        self.done: Deferred[list[bytes]] = Deferred()

    def connectionMade(self) -> None:
        if self.first:
            self.transport.write(self.first)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    @property
    def lines(self) -> list[bytes]:
        return self.data.split(b"\r\n")[:-1] if b"\r\n" in self.data else []

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.lines)


class HostileSlowRedis(Protocol):
    """
    A hostile slow Redis written for these tests: answers PING, SCAN (nothing stored),
    INCRBY and PEXPIRE at once, and never answers a SET (the claim of a ticket). It reads
    each command's name only (enough for the few commands netguard sends).
    """

    ANSWERS = {
        b"PING": b"+PONG\r\n",
        b"SCAN": b"*2\r\n$1\r\n0\r\n*0\r\n",
        b"INCRBY": b":1\r\n",
        b"PEXPIRE": b":1\r\n",
    }

    def __init__(self) -> None:
        self.buffer = b""
        self.stalled = 0

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            parts = self.buffer.split(b"\r\n")
            if len(parts) < 4 or not parts[0].startswith(b"*"):
                return
            count = int(parts[0][1:])
            if len(parts) < 2 * count + 2:
                return
            name = parts[2].upper()
            self.buffer = b"\r\n".join(parts[2 * count + 1 :])
            answer = self.ANSWERS.get(name)
            if answer is None:
                self.stalled += 1
            else:
                self.transport.write(answer)


class HostileFlappingRedis(HostileSlowRedis):
    """
    A hostile flapping Redis written for these tests: answers PING, SCAN (nothing stored),
    SUBSCRIBE, INCRBY and PEXPIRE at once, and closes every connection one second after it
    was accepted, whatever it is doing.
    """

    ANSWERS = {
        **HostileSlowRedis.ANSWERS,
        b"SUBSCRIBE": b"*3\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n:1\r\n",
        b"SET": b"+OK\r\n",
        b"PUBLISH": b":0\r\n",
    }

    def connectionMade(self) -> None:
        self.closing = reactor.callLater(1.0, self.transport.loseConnection)

    def connectionLost(self, reason: Any = None) -> None:
        if self.closing.active():
            self.closing.cancel()


class RedisCase(unittest.TestCase):
    """
    A real redis-server the test starts (and may kill and start again), gateway instances
    sharing it, the log captured.
    """

    timeout = 120

    def setUp(self) -> None:
        self.redis_server = need_peer("redis-server", "redis-server")
        self.tmp = tempfile.mkdtemp(prefix="ngs-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.redis: subprocess.Popen[bytes] | None = None

    # -- peers -------------------------------------------------------------------------------

    def start_redis(self, port: int | None = None, extra: tuple[str, ...] = ()) -> int:
        """
        Start redis-server (no persistence) on C{port} or a free one, with C{extra}
        arguments; stopped by PID at cleanup. Return the port once it answers PING (or
        asks for a password).
        """
        for attempt in range(3):
            chosen = port if port is not None else free_port()
            log = open(os.path.join(self.tmp, f"redis-{chosen}-{attempt}.log"), "ab")  # noqa: SIM115 - closed by stop_process
            proc = subprocess.Popen(
                [*redis_server_argv(self.redis_server, chosen), *extra],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self.addCleanup(stop_process, proc, log)
            for _ in range(200):
                if proc.poll() is not None:
                    break
                if _redis_ping(chosen):
                    self.redis = proc
                    return chosen
                time.sleep(0.05)
            stop_process(proc, log)
        raise AssertionError("redis-server did not start")

    def kill_redis(self) -> None:
        """
        Kill the redis-server this test started, by its PID, and reap it.
        """
        assert self.redis is not None
        os.kill(self.redis.pid, signal.SIGKILL)
        self.redis.wait(timeout=10)

    def gateway(self, redis_port: int, **shared: object) -> RunningGateway:
        return self.gateway_at(f"tcp:host=127.0.0.1:port={redis_port}", **shared)

    def gateway_at(self, redis: str, **shared: object) -> RunningGateway:
        settings = {"redis": redis, **shared}
        text = "[shared]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in settings.items())
        return RunningGateway(self, text, overrides={"listen": ["tcp:0:interface=127.0.0.1"]})

    def connect(self, running: RunningGateway, first: bytes = b"") -> Deferred[LineClient]:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", running.port())
        client = LineClient(first)
        return connectProtocol(endpoint, client)

    def named(self, event: str, running: RunningGateway) -> list[dict[str, Any]]:
        """
        The events called C{event} logged by C{running}'s shared state.
        """
        shared = running.service.shared
        return [
            e for e in self.events if e.get("event") == event and e.get("log_source") is shared
        ]

    def factory_lines(self, since: int) -> list[dict[str, Any]]:
        """
        Since event C{since}, Twisted's "Starting factory"/"Stopping factory" events of the
        Redis links' connection attempts.
        """
        return [
            e
            for e in self.events[since:]
            if str(e.get("log_format", "")).startswith(("Starting factory", "Stopping factory"))
            and getattr(e.get("factory"), "protocol", None) is RespProtocol
        ]

    @inlineCallbacks
    def first_line(self, running: RunningGateway, first: bytes = b"") -> Any:
        """
        Connect, send C{first}, and return the first line the gateway sends (then hang up).
        """
        client = yield self.connect(running, first)
        yield wait_for(lambda: bool(client.lines) or client.done.called)
        lines = client.lines
        client.transport.loseConnection()
        yield client.done
        return lines[0] if lines else b""


class SharedRealTests(RedisCase):
    """
    Two gateway instances sharing one real redis-server.
    """

    @inlineCallbacks
    def test_block_by_one_refused_by_other(self) -> Any:
        """
        An early talker blocked by one instance is refused by the other at once (its
        first connection there: C{ERR BUSY penalised}), through Redis's channel; the other
        instance had no offence of its own from that source.
        """
        port = self.start_redis()
        one, two = self.gateway(port), self.gateway(port)
        yield wait_for(lambda: one.service.shared.sharing and two.service.shared.sharing)
        line = yield self.first_line(one, b"HELLO\r\n")
        self.assertTrue(line.startswith(b"ERR EARLY_TALKER"), line)
        yield wait_for(lambda: any(row[0] == SOURCE for row in two.factory.admission.penalties()))
        [(source, left, offences)] = two.factory.admission.penalties()
        self.assertEqual((source, offences), (SOURCE, 0))
        self.assertGreater(left, 0)
        line = yield self.first_line(two)
        self.assertEqual(line, b"ERR BUSY penalised")

    @inlineCallbacks
    def test_ticket_spent_at_one_refused_at_other(self) -> Any:
        """
        A returning-client ticket presented at one instance (accepted: greeted at once) is
        refused as replayed at the other, although the other's own spent table never saw
        it: the claim in Redis decides. A fresh ticket is still accepted there.
        """
        port = self.start_redis()
        one, two = self.gateway(port), self.gateway(port)
        share_ticket_key(one, two)
        yield wait_for(lambda: one.service.shared.sharing and two.service.shared.sharing)
        token = mint(one)
        line = yield self.first_line(one, b"RESUME " + token + b"\r\n")
        self.assertTrue(line.startswith(b"NETGUARD/1 "), line)
        line = yield self.first_line(two, b"RESUME " + token + b"\r\n")
        self.assertEqual(line, b"ERR BAD_TICKET replayed")
        self.assertEqual(len(two.factory.tickets.spent), 1)  # its own table took it first
        two.factory.admission.clear_penalties()
        line = yield self.first_line(two, b"RESUME " + mint(one) + b"\r\n")
        self.assertTrue(line.startswith(b"NETGUARD/1 "), line)

    def assert_outages(self, running: RunningGateway, since: int) -> None:
        """
        Since event C{since}, C{running} logged C{shared.degraded} and C{shared.restored}
        alternately, starting with a degradation and ending restored: at most one
        degradation per outage, and every outage over. (How many outages a loaded machine
        adds is not asserted: a stall longer than the grace is one.)
        """
        names = [
            e["event"]
            for e in self.events[since:]
            if e.get("log_source") is running.service.shared
            and e.get("event") in ("shared.degraded", "shared.restored")
        ]
        self.assertTrue(names, "no outage logged")
        self.assertEqual(names, ["shared.degraded", "shared.restored"] * (len(names) // 2))

    @inlineCallbacks
    def restored(self, *running: RunningGateway) -> Any:
        """
        Wait until each of C{running} is sharing and its outage is over (logged restored
        once sharing held for L{netguard.shared.link.STABLE} seconds).
        """
        yield wait_for(
            lambda: all(
                r.service.shared.sharing and not r.service.shared.degraded for r in running
            ),
            timeout=60,
        )

    @inlineCallbacks
    def test_redis_killed_then_restarted(self) -> Any:
        """
        redis-server killed mid-test: both instances keep serving and enforce their own
        limits (a source blocked by one is not refused by the other), each logs exactly one
        C{shared.degraded} while it is down however many reconnections fail, and the
        failed attempts log no Twisted factory lines; once redis-server runs again on its
        port each logs C{shared.restored} (one per outage), and blocks are shared again.
        """
        port = self.start_redis()
        one, two = self.gateway(port), self.gateway(port)
        yield wait_for(lambda: one.service.shared.sharing and two.service.shared.sharing)
        since = len(self.events)
        self.kill_redis()
        yield wait_for(lambda: one.service.shared.degraded and two.service.shared.degraded)
        # Several reconnections fail, none logged again.
        yield wait_for(
            lambda: min(one.service.shared.link.failures, two.service.shared.link.failures) >= 3,
            timeout=30,
        )
        line = yield self.first_line(one, b"HELLO\r\n")
        self.assertTrue(line.startswith(b"ERR EARLY_TALKER"), line)
        line = yield self.first_line(one)
        self.assertEqual(line, b"ERR BUSY penalised")  # enforced locally
        line = yield self.first_line(two)
        self.assertTrue(line.startswith(b"NETGUARD/1 "), line)  # not shared while down
        for running in (one, two):
            down = [
                e for e in self.events[since:] if e.get("log_source") is running.service.shared
            ]
            self.assertEqual([e["event"] for e in down], ["shared.degraded"])
        self.assertEqual(self.factory_lines(since), [])

        self.start_redis(port)
        yield self.restored(one, two)
        self.assert_outages(one, since)
        self.assert_outages(two, since)
        one.factory.admission.clear_penalties()
        two.factory.admission.clear_penalties()
        line = yield self.first_line(two, b"HELLO\r\n")
        self.assertTrue(line.startswith(b"ERR EARLY_TALKER"), line)
        yield wait_for(lambda: any(row[0] == SOURCE for row in one.factory.admission.penalties()))
        line = yield self.first_line(one)
        self.assertEqual(line, b"ERR BUSY penalised")

    @inlineCallbacks
    def test_hostile_slow_redis(self) -> Any:
        """
        A hostile slow Redis (answers everything but the claim of a ticket): a RESUME waits
        for the claim at most the bound (a timeout counted) and is then judged by the local
        spent table alone (accepted: greeted); no claim succeeds. The instance serves
        meanwhile. The unanswered claim drops the connection after the grace: logged as
        C{shared.degraded}, and once connected again and answered, C{shared.restored}
        (one per outage).
        """
        factory = Factory.forProtocol(HostileSlowRedis)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        one = self.gateway(port.getHost().port, timeout=0.05)
        shared = one.service.shared
        yield wait_for(lambda: shared.sharing)
        since = len(self.events)
        line = yield self.first_line(one, b"RESUME " + mint(one) + b"\r\n")
        self.assertTrue(line.startswith(b"NETGUARD/1 "), line)
        self.assertGreaterEqual(shared.link.timeouts, 1)
        self.assertGreaterEqual(shared.counters["tickets_local"], 1)
        self.assertEqual(shared.counters["tickets_claimed"], 0)
        line = yield self.first_line(one)
        self.assertTrue(line.startswith(b"NETGUARD/1 "), line)
        yield wait_for(lambda: bool(self.named("shared.degraded", one)), timeout=30)
        yield self.restored(one)
        self.assert_outages(one, since)


class FlappingRedisTests(RedisCase):
    """
    A gateway instance against a hostile flapping Redis over real loopback sockets.
    """

    @inlineCallbacks
    def test_flapping_redis_logs_one_outage(self) -> Any:
        """
        A Redis that answers and drops every connection after a second: the instance logs
        C{shared.connected}, then one C{shared.degraded} and no C{shared.restored} however
        many times sharing comes back for that second (at least 4 lost connections of the
        command link here), the attempts log no Twisted factory lines, and it serves.
        """
        factory = Factory.forProtocol(HostileFlappingRedis)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        since = len(self.events)
        one = self.gateway(port.getHost().port)
        shared = one.service.shared
        yield wait_for(lambda: shared.link.failures >= 4, timeout=60)
        names = [
            e["event"]
            for e in self.events[since:]
            if e.get("log_source") is shared and str(e.get("event")).startswith("shared.")
        ]
        self.assertEqual(names, ["shared.connected", "shared.degraded"])
        self.assertEqual(self.factory_lines(since), [])
        line = yield self.first_line(one)
        self.assertTrue(line.startswith(b"NETGUARD/1 "), line)


class SharedAuthRealTests(RedisCase):
    """
    A redis-server with a password, reached over its unix socket.
    """

    def with_password(self) -> str:
        """
        Start redis-server with C{requirepass} and a unix socket; return the socket's path.
        """
        path = os.path.join(self.tmp, "redis.sock")
        self.start_redis(extra=("--requirepass", "pass word", "--unixsocket", path))
        return path

    def password_file(self, text: str) -> str:
        path = os.path.join(self.tmp, f"redis-{len(text)}.pass")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(text + "\n")
        return path

    @inlineCallbacks
    def test_auth_over_unix_socket(self) -> Any:
        """
        With the password from a 0600 file (AUTH), over the unix socket, blocks are shared.
        """
        path = self.with_password()
        secret = self.password_file("pass word")
        one = self.gateway_at(f"unix:path={path}", password_file=secret)
        two = self.gateway_at(f"unix:path={path}", password_file=secret)
        yield wait_for(lambda: one.service.shared.sharing and two.service.shared.sharing)
        line = yield self.first_line(one, b"HELLO\r\n")
        self.assertTrue(line.startswith(b"ERR EARLY_TALKER"), line)
        yield wait_for(lambda: bool(two.factory.admission.penalties()))
        line = yield self.first_line(two)
        self.assertEqual(line, b"ERR BUSY penalised")

    @inlineCallbacks
    def test_wrong_password(self) -> Any:
        """
        A wrong password: never sharing, one C{shared.degraded} however often it retries,
        the password never logged, and the instance serves.
        """
        path = self.with_password()
        one = self.gateway_at(f"unix:path={path}", password_file=self.password_file("wrong"))
        shared = one.service.shared
        yield wait_for(lambda: shared.link.failures >= 3, timeout=30)
        self.assertFalse(shared.sharing)
        self.assertEqual(len(self.named("shared.degraded", one)), 1)
        self.assertNotIn(
            "wrong", repr([e for e in self.events if "shared" in str(e.get("event"))])
        )
        line = yield self.first_line(one)
        self.assertTrue(line.startswith(b"NETGUARD/1 "), line)


def share_ticket_key(one: RunningGateway, two: RunningGateway) -> None:
    """
    Give C{two} the ticket key and the users of C{one}, as instances behind one load balancer
    share them.
    """
    with open(os.path.join(one.dir, "st", "ticket.key"), "rb") as handle:
        key = handle.read()
    two.factory.users = one.factory.users
    two.factory.apply_config(two.factory.config, one.factory.users, ticket_key=key)


def mint(running: RunningGateway) -> bytes:
    """
    A fresh ticket of the generated user for 127.0.0.1, sealed by C{running}'s book.
    """
    user = running.credentials.username
    record = running.factory.users.lookup(user)
    issued = running.factory.tickets.issue(user, record, IPv4Address("TCP", "127.0.0.1", 1))
    assert issued is not None
    return issued[0].encode("ascii")


def _toml(value: object) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    return repr(value)


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False

# -*- test-case-name: tests.integration.test_flood -*-
"""
Admission control under a real flood: the gateway in-process on 127.0.0.1, attackers over
real loopback sockets from many source addresses (127.0.0.2 ... 127.0.0.60, each client
socket bound to its own address), and a legitimate client from 127.0.0.1 that must still
authenticate and relay while the flood runs.

The attackers:

  - flood sources (127.0.0.2 ... 127.0.0.51): each opens connections on a fixed pacing,
    faster than its allowed rate and more than its allowed concurrency, and holds every
    admitted connection silent (slowloris) until the gateway closes it;
  - a drip attacker (127.0.0.52): waits for the greeting, then sends one byte every second and
    never a line end, so the idle timeout never fires and only the handshake deadline can end
    it;
  - early talkers (127.0.0.53 ... 127.0.0.60): send a command before the greeting. Each
    connects and sends in one turn of the reactor the gateway runs in, so its bytes are
    queued before the gateway has even accepted the connection, however slow the machine.

Every loop is bounded (attempt counts, retry counts, wait timeouts); nothing asserts on speed.
Every client connection is closed and the gateway has no session left before the test ends.

Nothing depends on the machine being fast: on a loaded machine a legitimate login may miss the
handshake deadline (which shrinks under stress, as it should) or be refused while the event
loop lags, so a legitimate session retries every transient refusal (C{ERR BUSY}, a timeout,
a connection that closes or does not complete before the service is open) a bounded number of
times; the test asserts that it is eventually served and that every retry had such a cause.
The time bounds are hang guards only.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import select
import shutil
import socket
import tempfile
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.admission import REASONS
from netguard.admission.eviction import UNAUTH
from netguard.client.protocol import (
    CLIENT_LIMITS,
    Credentials,
    NGPClientProtocol,
    NGPError,
    NGPProtocolError,
)
from netguard.config import load_config
from netguard.gateway.protocol import GatewaySession
from netguard.service import make_service
from tests.integration.util import wait_for

log = Logger()

#: The gateway's admission and time bounds for this test (small, so a flood fills them).
#: The legitimate client's address earns no penalty points: on a slow machine its logins may
#: miss the handshake deadline, and growing blocks for that would test the machine's speed,
#: not the flood defences (every attacker address is penalised as usual).
CONFIG = """\
[limits]
greeting_delay = 0.2
handshake_timeout = 3

[admission]
max_unauthenticated = 40
per_source_max = 5
per_source_rate = 5
per_source_burst = 5
red_soft = 20
never_penalise = ["127.0.0.1/32"]

[overload]
max_lag = 2.0
"""

MAX_UNAUTHENTICATED = 40
RED_SOFT = 20

#: Flood sources, the drip attacker and the early talkers: 127.0.0.2 ... 127.0.0.60.
FLOOD_SOURCES = [f"127.0.0.{n}" for n in range(2, 52)]
DRIP_SOURCE = "127.0.0.52"
TALKER_SOURCES = [f"127.0.0.{n}" for n in range(53, 61)]
LEGIT_SOURCE = "127.0.0.1"

#: Each flood source tries this many connections per second (more than per_source_rate)...
ATTACK_RATE = 8.0
#: ... keeps at most this many open (more than per_source_max) ...
ATTACK_HOLD = 6
#: ... and makes at most this many attempts in all.
ATTACK_MAX_ATTEMPTS = 120

#: Legitimate sessions during the flood, the bytes each echoes, the pause between them.
LEGIT_SESSIONS = 4
LEGIT_BYTES = 64 * 1024
LEGIT_PAUSE = 1.5
#: Transient failures (see L{TRANSIENT}) a legitimate session may retry, and the pause
#: before each retry (slower than per_source_rate, so the client never limits itself).
LEGIT_MAX_RETRIES = 120
LEGIT_RETRY_PAUSE = 0.25
#: The gateway's refusals a legitimate login retries: C{ERR BUSY <reason>} and C{ERR TIMEOUT}
#: (it missed the handshake deadline); and the client's own failures that only say the
#: machine or the gateway was slow or full (see L{FAILURE_REASONS}).
TRANSIENT_CODES = frozenset({"BUSY", "TIMEOUT"})
TRANSIENT_CLIENT_REASONS = frozenset({"handshake-timeout", "idle-timeout", "closed"})

#: The drip attacker's pacing and its own bound (far beyond the handshake deadline).
DRIP_INTERVAL = 1.0
DRIP_MAX_BYTES = 20

#: Early-talker attempts (each) and the pause between them.
TALKER_MAX_ATTEMPTS = 100
#: What an early talker says. A valid command (no penalty points if it ever came after the
#: greeting), so only talking early is what gets the talker refused and penalised.
TALK = b"PING\r\n"
TALKER_PAUSE = 0.3

#: Connect timeout of every client, seconds.
CONNECT_TIMEOUT = 5
#: Attempts of the drip attacker to be admitted before the flood starts.
DRIP_MAX_ATTEMPTS = 20
#: The bound on any one wait of the test (a hang guard; nothing asserts on speed).
WAIT = 60


def sleep(seconds: float) -> Deferred[None]:
    """
    A Deferred that fires after C{seconds} on the global reactor.
    """
    return deferLater(reactor, seconds, lambda: None)


class Clients:
    """
    Every client connection the test opens, so that cleanup can close them all and wait.

    @ivar live: connected client protocols not yet lost.
    @ivar connecting: connection attempts still in flight.
    """

    def __init__(self) -> None:
        self.live: set[Any] = set()
        self.connecting = 0

    def connect(self, source: str, port: int, protocol: Any) -> Deferred[Any]:
        """
        Connect C{protocol} to the gateway from C{source}; the result fires with the protocol
        or fails with the connection error.
        """
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", port, timeout=CONNECT_TIMEOUT, bindAddress=(source, 0)
        )
        self.connecting += 1
        attempt = connectProtocol(endpoint, protocol)

        def done(result: Any) -> Any:
            self.connecting -= 1
            if not isinstance(result, Failure):
                self.live.add(protocol)
            return result

        attempt.addBoth(done)
        return attempt

    def talk_first(self, source: str, port: int, data: bytes, protocol: Any) -> bool:
        """
        Connect to the gateway from C{source} and send C{data} at once, in this turn of the
        reactor, which the in-process gateway shares: the bytes are queued before the gateway
        can accept the connection (let alone greet it), however slow the machine. Then hand
        the connection to C{protocol}.

        @return: whether it connected; L{False} if the connection did not complete at once
            (the gateway's listen queue is full).
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((source, 0))
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            if not poller.poll(0) or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                return False
            sock.send(data)
            self.live.add(protocol)
            reactor.adoptStreamConnection(
                sock.fileno(), socket.AF_INET, Factory.forProtocol(lambda: protocol)
            )
            return True
        finally:
            sock.close()  # the reactor holds its own copy of an adopted connection

    def lost(self, protocol: Any) -> None:
        """
        A client protocol's connection ended.
        """
        self.live.discard(protocol)

    def abort_all(self) -> None:
        """
        Abort every client connection still open.
        """
        for protocol in list(self.live):
            if protocol.transport is not None:
                protocol.transport.abortConnection()

    def idle(self) -> bool:
        """
        Whether no client connection is open or connecting.
        """
        return not self.live and self.connecting == 0


class Holder(Protocol):
    """
    A slowloris connection: says nothing, keeps whatever the gateway sends, and lets the
    gateway decide when it ends.
    """

    def __init__(self, clients: Clients, on_lost: Callable[[Holder], None]) -> None:
        self.clients = clients
        self.on_lost = on_lost
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data[: 4096 - len(self.data)]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.clients.lost(self)
        self.on_lost(self)


class FloodSource:
    """
    One flooding address: an attempt every C{1 / ATTACK_RATE} seconds while fewer than
    C{ATTACK_HOLD} of its connections are open, at most C{ATTACK_MAX_ATTEMPTS} in all.

    @ivar replies: the first line of what the gateway said on each ended connection.
    """

    def __init__(self, source: str, port: int, clients: Clients) -> None:
        self.source = source
        self.port = port
        self.clients = clients
        self.attempts = 0
        self.open = 0
        self.replies: Counter[bytes] = Counter()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(1.0 / ATTACK_RATE, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        if self.attempts >= ATTACK_MAX_ATTEMPTS:
            self.stop()
            return
        if self.open >= ATTACK_HOLD:
            return
        self.attempts += 1
        self.open += 1
        attempt = self.clients.connect(self.source, self.port, Holder(self.clients, self._lost))
        attempt.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        self.open -= 1
        self.replies[b"(connect failed)"] += 1

    def _lost(self, holder: Holder) -> None:
        self.open -= 1
        self.replies[holder.data.split(b"\r\n", 1)[0][:40]] += 1


class Drip(Protocol):
    """
    Waits for the greeting, then sends one byte every C{DRIP_INTERVAL} seconds, never a line
    end, at most C{DRIP_MAX_BYTES}.

    @ivar closed: fires with everything the gateway said, once the connection ends.
    """

    transport: Any

    def __init__(self, clients: Clients) -> None:
        self.clients = clients
        self.data = b""
        self.sent = 0
        self.greeted: Deferred[None] = Deferred()
        self.closed: Deferred[bytes] = Deferred()
        self._loop = LoopingCall(self._drip)
        self._loop.clock = reactor

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.greeted.called and self.data.startswith(b"NETGUARD/1 "):
            self.greeted.callback(None)
            self._loop.start(DRIP_INTERVAL, now=True)

    def _drip(self) -> None:
        if self.sent >= DRIP_MAX_BYTES:
            self._loop.stop()
            return
        self.sent += 1
        self.transport.write(b"A")

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._loop.running:
            self._loop.stop()
        self.clients.lost(self)
        if not self.greeted.called:
            self.greeted.errback(AssertionError(f"closed before the greeting: {self.data!r}"))
        self.closed.callback(self.data)


class Talker(Protocol):
    """
    An early talker's connection, once it has sent L{TALK} (see L{Clients.talk_first}):
    collects what the gateway says, and hangs up if that is a greeting (the talk was not
    early after all: the gateway decides, and the test only counts early talks it caught).

    @ivar closed: fires with everything the gateway said, once the connection ends.
    """

    transport: Any

    def __init__(self, clients: Clients) -> None:
        self.clients = clients
        self.data = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.data.startswith(b"NETGUARD/1 "):
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.clients.lost(self)
        self.closed.callback(self.data)


class Legit(NGPClientProtocol):
    """
    The legitimate client: authenticates, opens C{echo}, and collects C{expected} bytes.
    """

    def __init__(self, clients: Clients, credentials: Credentials, expected: int) -> None:
        limits = attrs.evolve(CLIENT_LIMITS, handshake_timeout=10)
        super().__init__(credentials, "echo", clock=reactor, limits=limits)
        self.clients = clients
        self.expected = expected
        self.received = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def service_data(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(bytes(self.received))

    def service_closed(self, reason: Failure) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.received))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.clients.lost(self)
        super().connectionLost(reason)


class FloodTests(unittest.TestCase):
    """
    A flood, a drip and early talkers from 59 addresses while a legitimate client relays.
    """

    timeout = 480

    def setUp(self) -> None:
        self.state = tempfile.mkdtemp(prefix="ng-flood-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.state, True)
        config_file = os.path.join(self.state, "netguard.toml")
        with open(config_file, "w") as handle:
            handle.write(CONFIG)
        config = load_config(
            config_file, {"state_dir": self.state, "listen": ["tcp:0:interface=127.0.0.1"]}
        )
        terminal = io.StringIO()
        self.service = make_service(config, reactor, terminal=terminal)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.factory = self.service.factory
        self.port = self.service.ports[0].getHost().port
        shown = terminal.getvalue()
        user = re.search(r"user:\s+(\S+)", shown)
        password = re.search(r"password:\s+(\S+)", shown)
        assert user is not None and password is not None
        self.credentials = Credentials(user.group(1), password.group(1))
        self.clients = Clients()
        self.flood: list[FloodSource] = []
        self.talking: list[Deferred[Any]] = []
        self.stopping = False
        self.addCleanup(self.close_everything)
        self.watch_admission()

    # -- observation ---------------------------------------------------------------------------

    def watch_admission(self) -> None:
        """
        Sample the unauthenticated pool after every admission decision and every 50 ms, and
        track refused connections until they close.
        """
        self.max_unauthenticated = 0
        self.max_line_phase = 0
        self.max_probation = 0
        self.samples = 0
        self.refusals_open: set[Any] = set()
        factory = self.factory
        build = factory.buildProtocol

        def sample() -> None:
            self.samples += 1
            snapshot = factory.admission.snapshot()
            self.max_unauthenticated = max(self.max_unauthenticated, snapshot["unauthenticated"])
            # Sessions that hold a slot of the unauthenticated pool (those on probation, in
            # the returning-client lane or evicted and closing hold none).
            line_phase = sum(
                1
                for s in factory.sessions
                if s.admitted is not None and s.admitted.slot.pool == UNAUTH
            )
            self.max_line_phase = max(self.max_line_phase, line_phase)
            self.max_probation = max(self.max_probation, snapshot["probation"])

        def watched(addr: Any) -> Any:
            protocol = build(addr)
            sample()
            if protocol is not None and not isinstance(protocol, GatewaySession):
                self.refusals_open.add(protocol)
                lost = protocol.connectionLost

                def refusal_lost(reason: Any = None) -> None:
                    self.refusals_open.discard(protocol)
                    lost(reason)

                protocol.connectionLost = refusal_lost  # type: ignore[method-assign]
            return protocol

        factory.buildProtocol = watched  # type: ignore[method-assign]
        self.sampler = LoopingCall(sample)
        self.sampler.clock = reactor
        self.sampler.start(0.05, now=True)

    @inlineCallbacks
    def close_everything(self) -> Any:
        """
        Stop every attacker, close every client connection, and wait (bounded) until neither
        the clients nor the gateway hold a connection.
        """
        self.stopping = True
        try:
            for source in self.flood:
                source.stop()
            yield wait_for(lambda: all(t.called for t in self.talking), timeout=WAIT)
            yield wait_for(lambda: self.clients.connecting == 0, timeout=WAIT)
            self.clients.abort_all()
            yield wait_for(self.clients.idle, timeout=WAIT)
            yield wait_for(
                lambda: not self.factory.sessions and not self.refusals_open, timeout=WAIT
            )
        finally:
            if self.sampler.running:
                self.sampler.stop()

    # -- the parts of the attack ---------------------------------------------------------------

    @inlineCallbacks
    def start_drip(self) -> Any:
        """
        Connect the drip attacker before the flood fills the pool; return it once greeted.
        A refusal (a lagging event loop on a loaded machine) is retried, a bounded number of
        times.
        """
        for attempt in range(DRIP_MAX_ATTEMPTS):
            drip = Drip(self.clients)
            yield self.clients.connect(DRIP_SOURCE, self.port, drip)
            try:
                yield drip.greeted
            except AssertionError:
                if not drip.data.startswith(b"ERR BUSY ") or attempt + 1 == DRIP_MAX_ATTEMPTS:
                    raise
                yield sleep(LEGIT_RETRY_PAUSE)
                continue
            return drip

    @inlineCallbacks
    def early_talker(self, source: str) -> Any:
        """
        Talk early from C{source} until admitted once (refused with C{EARLY_TALKER}), then
        come back until refused as C{penalised}.

        @return: C{(the EARLY_TALKER reply, every reply, (the penalised reply, the source's
            penalty rows at that moment))}; L{None} for what did not happen.
        """
        replies: list[bytes] = []
        offended = penalised = None
        for _ in range(TALKER_MAX_ATTEMPTS):
            if self.stopping:
                break
            talker = Talker(self.clients)
            if not self.clients.talk_first(source, self.port, TALK, talker):
                replies.append(b"(listen queue full)")  # just another try
                yield sleep(TALKER_PAUSE)
                continue
            said = (yield talker.closed).split(b"\r\n", 1)[0]
            replies.append(said)
            if offended is None and said.startswith(b"ERR EARLY_TALKER"):
                offended = said
            elif offended is not None and said == b"ERR BUSY penalised":
                key = self.factory.admission.source_key(source)
                rows = [row for row in self.factory.admission.penalties() if row[0] == key]
                penalised = (said, rows)
                break
            yield sleep(TALKER_PAUSE)
        return offended, replies, penalised

    @inlineCallbacks
    def legit_session(self, number: int) -> Any:
        """
        Authenticate from 127.0.0.1, open echo, relay C{LEGIT_BYTES} and check them; retry a
        transient failure before the service is open up to C{LEGIT_MAX_RETRIES} times. Any
        other failure (a wrong answer, an authentication failure) is not retried.

        @return: what each retried failure was: C{"BUSY <reason>"} or C{"TIMEOUT <text>"} from
            the gateway, C{"client <reason>"} from the client, C{"connect <error>"}.
        """
        payload = random.Random(number).randbytes(LEGIT_BYTES)
        retried: list[str] = []
        while True:
            client = Legit(self.clients, self.credentials, LEGIT_BYTES)
            failure: str | None
            try:
                yield self.clients.connect(LEGIT_SOURCE, self.port, client)
                yield client.opened
            except ConnectError as error:
                failure = f"connect {type(error).__name__}"
            except NGPError as error:
                if error.code not in TRANSIENT_CODES:
                    raise
                failure = f"{error.code} {error.text}"
            except NGPProtocolError as error:
                if error.reason not in TRANSIENT_CLIENT_REASONS:
                    raise
                failure = f"client {error.reason}"
            else:
                failure = None
            if failure is not None:
                if len(retried) >= LEGIT_MAX_RETRIES:
                    self.fail(f"not served within {LEGIT_MAX_RETRIES} retries: {retried}")
                retried.append(failure)
                yield sleep(LEGIT_RETRY_PAUSE)
                continue
            for start in range(0, LEGIT_BYTES, 8192):
                client.transport.write(payload[start : start + 8192])
            received = yield client.done
            client.transport.loseConnection()
            self.assertEqual(
                hashlib.sha256(received).hexdigest(), hashlib.sha256(payload).hexdigest()
            )
            return retried

    # -- the test ----------------------------------------------------------------------------

    @inlineCallbacks
    def test_legitimate_client_served_during_flood(self) -> Any:
        """
        While 50 addresses flood and hold connections, one drips and eight talk early, a
        legitimate client authenticates and relays 64 KiB, several times. Refusals are
        counted by reason, the unauthenticated pool never passes its cap, early talkers are
        penalised, and the drip attacker is cut off by the handshake deadline or evicted.
        """
        drip = yield self.start_drip()
        self.flood = [FloodSource(source, self.port, self.clients) for source in FLOOD_SOURCES]
        for source in self.flood:
            source.start()
        self.talking = talking = [self.early_talker(source) for source in TALKER_SOURCES]
        # The first legitimate session starts only once the flood has filled the pool to
        # where random early drop begins.
        yield wait_for(
            lambda: self.factory.admission.snapshot()["unauthenticated"] >= RED_SOFT,
            timeout=WAIT,
        )
        legit_retries: list[list[str]] = []
        for number in range(LEGIT_SESSIONS):
            retried = yield self.legit_session(number)
            legit_retries.append(retried)
            yield sleep(LEGIT_PAUSE)
        drip_said = yield drip.closed
        talker_results = []
        for talk in talking:
            talker_results.append((yield talk))
        for source in self.flood:
            source.stop()

        stats = self.factory.stats.counters
        refused = {
            key[len("refused.") :]: value
            for key, value in stats.items()
            if key.startswith("refused.")
        }
        penalties = {
            key: (left, offences) for key, left, offences in self.factory.admission.penalties()
        }
        flood_replies: Counter[bytes] = Counter()
        for source in self.flood:
            flood_replies.update(source.replies)
        log.info(
            "flood summary: legit retries {retries}; refused {refused}; max unauthenticated "
            "{max_unauth} (line-phase sessions {max_line}, {samples} samples); flood attempts "
            "{attempts}; flood replies {replies}; drip sent {drip_sent} bytes, got {drip}; "
            "penalties {penalties}",
            event="test.flood.summary",
            retries=[Counter(r) for r in legit_retries],
            refused=refused,
            max_unauth=self.max_unauthenticated,
            max_line=self.max_line_phase,
            samples=self.samples,
            attempts=sum(s.attempts for s in self.flood),
            replies=dict(flood_replies),
            drip_sent=drip.sent,
            drip=drip_said,
            penalties={key: penalties[key] for key in sorted(penalties)},
        )

        # Every legitimate session succeeded (legit_session checked the bytes), within the
        # bounded retries; every BUSY it met was for a known reason.
        self.assertEqual(len(legit_retries), LEGIT_SESSIONS)
        for retried in legit_retries:
            self.assertLessEqual(len(retried), LEGIT_MAX_RETRIES)
            busy = {failure.split(" ", 1)[1] for failure in retried if failure.startswith("BUSY ")}
            self.assertTrue(busy <= REASONS, retried)

        # Refusals are counted by reason: only known reasons, the per-reason counters add up
        # to the total and agree with admission's own, and the flood met the pool limits.
        self.assertTrue(set(refused) <= REASONS, refused)
        self.assertEqual(sum(refused.values()), stats["refused"])
        self.assertEqual(refused, {k: v for k, v in self.factory.admission.counters.items() if v})
        # A full pool evicts (or puts newcomers on probation, then refuses them) rather than
        # refusing at once: any of these shows the flood met the pool limits.
        self.assertGreater(
            refused.get("random-early-drop", 0)
            + refused.get("unauth-cap", 0)
            + refused.get("evicted", 0),
            0,
        )
        self.assertGreater(refused.get("penalised", 0), 0)

        # The unauthenticated pool filled up to random early drop but never passed its cap.
        self.assertGreaterEqual(self.max_unauthenticated, RED_SOFT)
        self.assertLessEqual(self.max_unauthenticated, MAX_UNAUTHENTICATED)
        self.assertLessEqual(self.max_line_phase, MAX_UNAUTHENTICATED)
        self.assertLessEqual(self.max_probation, self.factory.admission.policy.max_probation)

        # Every early talker was refused as one, penalised, and then refused as penalised.
        for talker, (offended, replies, penalised) in zip(
            TALKER_SOURCES, talker_results, strict=True
        ):
            self.assertIsNotNone(offended, replies)
            self.assertTrue(offended.startswith(b"ERR EARLY_TALKER "), replies)
            self.assertIsNotNone(penalised, replies)
            said, rows = penalised
            self.assertEqual(said, b"ERR BUSY penalised")
            # When it was refused, the table held a running block for its source ...
            [(key, left, offences)] = rows
            self.assertEqual(key, f"{talker}/32")
            self.assertGreater(left, 0)
            self.assertGreaterEqual(offences, 1)
            # ... and the offence is still remembered at the end (points decay slowly).
            self.assertIn(key, penalties)

        # The drip attacker kept the connection active (so the idle timeout never fired) and
        # was cut off long before its own bound: by the handshake deadline, or evicted
        # first, as the oldest connection without progress, to admit a newcomer.
        self.assertTrue(drip_said.startswith(b"NETGUARD/1 "), drip_said)
        ends = (b"\r\nERR TIMEOUT handshake deadline\r\n", b"\r\nERR BUSY evicted\r\n")
        self.assertTrue(any(end in drip_said for end in ends), drip_said)
        self.assertGreaterEqual(drip.sent, 1)
        self.assertLess(drip.sent, DRIP_MAX_BYTES)

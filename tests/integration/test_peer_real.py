"""
Integration tests for L{netguard.peer}: FCrDNS against a real dnsmasq, ident against a real
oidentd, and ident against hostile responders (chargen, silence, over-long and binary lines)
running in their own processes. Everything listens on 127.0.0.1 at ports picked by binding
port 0; every process is started here and stopped by its PID.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import select
import socket
import subprocess
import sys
import time
from typing import Any

import attrs
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.logger import capturedLogs, globalLogPublisher
from twisted.names import dns
from twisted.trial import unittest

from netguard.log import json_observer, safe_text_observer
from netguard.peer.checks import PeerCheckPolicy, PeerChecks, start_peer_checks
from netguard.peer.fcrdns import FCrDNSCache, FCrDNSResult, confirm_hostname, make_resolver
from netguard.peer.ident import IdentReply, IdentResult, ident_query
from tests.integration.util import peer_unavailable

DNSMASQ = "/usr/sbin/dnsmasq"
OIDENTD = "/usr/sbin/oidentd"
#: Twisted's TCP transports read at most this much per read.
READ_SIZE = 65536


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_dns_port() -> int:
    """
    A port free for both UDP and TCP on 127.0.0.1 at the time of the call.
    """
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def stop_process(case: unittest.TestCase, process: subprocess.Popen[bytes]) -> None:
    """
    Stop a process this test started, by its PID, at cleanup.
    """

    def stop() -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    case.addCleanup(stop)


def dns_ready(port: int) -> bool:
    query = dns.Message(id=4242, recDes=1)
    query.queries = [dns.Query(b"good.test", dns.A, dns.IN)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(query.toStr(), ("127.0.0.1", port))
        try:
            s.recvfrom(4096)
        except OSError:
            return False
    return True


class DnsmasqTests(unittest.TestCase):
    """
    FCrDNS against dnsmasq serving, on 127.0.0.1:PORT:

      - 127.0.0.1 and ::1 -> good.test -> 127.0.0.1 / ::1 (confirmed)
      - 127.0.0.2 -> spoof.test -> 127.0.0.20 (a PTR its forward zone does not back)
      - 127.0.0.3 -> ten names m0..m9.test, none resolving (many names, capped)
      - 127.0.0.4 -> "bad_na me!.test" (illegal characters; dnsmasq serves it as given)
      - 127.0.0.5 -> x.hang.test, whose A lookup dnsmasq forwards to a UDP socket that
        never answers (a lookup that never answers)
      - 127.0.0.6 -> alias.test, a CNAME to good6.test -> 127.0.0.6 (confirmed via CNAME)
      - 127.0.0.7 -> x.refused.example, outside every local zone: REFUSED (server failure)
      - 127.0.0.8 -> nothing: NXDOMAIN (the whole test. and in-addr.arpa zones are local)
    """

    def setUp(self) -> None:
        if not os.access(DNSMASQ, os.X_OK):
            peer_unavailable(f"{DNSMASQ} not installed (Debian package dnsmasq-base)")
        self.silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.silent.close)
        self.silent.bind(("127.0.0.1", 0))
        silent_port = self.silent.getsockname()[1]
        records = [
            "--ptr-record=1.0.0.127.in-addr.arpa,good.test",
            "--ptr-record=" + "1." + "0." * 31 + "ip6.arpa,good.test",
            "--host-record=good.test,127.0.0.1,::1",
            "--ptr-record=2.0.0.127.in-addr.arpa,spoof.test",
            "--host-record=spoof.test,127.0.0.20",
            *[f"--ptr-record=3.0.0.127.in-addr.arpa,m{i}.test" for i in range(10)],
            "--ptr-record=4.0.0.127.in-addr.arpa,bad_na me!.test",
            "--ptr-record=5.0.0.127.in-addr.arpa,x.hang.test",
            f"--server=/hang.test/127.0.0.1#{silent_port}",
            "--ptr-record=6.0.0.127.in-addr.arpa,alias.test",
            "--host-record=good6.test,127.0.0.6",
            "--cname=alias.test,good6.test",
            "--ptr-record=7.0.0.127.in-addr.arpa,x.refused.example",
        ]
        # dnsmasq binds UDP and TCP on its port; a port free for one may be taken for the
        # other by the time it starts, so a few attempts are allowed.
        for _attempt in range(5):
            self.port = free_dns_port()
            error = self.start_dnsmasq(records)
            if error is None:
                break
            if "Address already in use" not in error:
                self.fail(f"dnsmasq exited: {error}")
        else:
            self.fail("dnsmasq found no free port")
        self.resolver = make_resolver(reactor, [("127.0.0.1", self.port)])

    def start_dnsmasq(self, records: list[str]) -> str | None:
        args = [
            DNSMASQ,
            "--no-daemon",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--local-ttl=60",
            "--local=/test/",
            "--local=/in-addr.arpa/",
            "--local=/ip6.arpa/",
            *records,
        ]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stop_process(self, process)
        for _ in range(100):
            if process.poll() is not None:
                assert process.stderr is not None
                return process.stderr.read().decode(errors="replace")
            if dns_ready(self.port):
                return None
        return "dnsmasq did not answer"

    def confirm(self, address: str, **kw: Any) -> defer.Deferred[FCrDNSResult]:
        kw.setdefault("resolver", self.resolver)
        return confirm_hostname(reactor, address, **kw)

    @defer.inlineCallbacks
    def test_confirmed(self) -> Any:
        result = yield self.confirm("127.0.0.1")
        self.assertEqual(result, FCrDNSResult(True, "good.test", "confirmed", ("good.test",)))

    @defer.inlineCallbacks
    def test_confirmed_ipv6(self) -> Any:
        result = yield self.confirm("::1")
        self.assertEqual((result.confirmed, result.name), (True, "good.test"))

    @defer.inlineCallbacks
    def test_confirmed_ipv4_mapped(self) -> Any:
        result = yield self.confirm("::ffff:127.0.0.1")
        self.assertEqual((result.confirmed, result.name), (True, "good.test"))

    @defer.inlineCallbacks
    def test_confirmed_through_cname(self) -> Any:
        result = yield self.confirm("127.0.0.6")
        self.assertEqual((result.confirmed, result.name), (True, "alias.test"))

    @defer.inlineCallbacks
    def test_spoofed_ptr(self) -> Any:
        result = yield self.confirm("127.0.0.2")
        self.assertEqual(result, FCrDNSResult(False, None, "mismatch", ("spoof.test",)))

    @defer.inlineCallbacks
    def test_many_names_capped(self) -> Any:
        result = yield self.confirm("127.0.0.3", max_names=4)
        self.assertEqual((result.reason, result.names_skipped), ("too-many-names", 6))
        self.assertEqual(len(result.names_tried), 4)
        self.assertTrue(set(result.names_tried) <= {f"m{i}.test" for i in range(10)})

    @defer.inlineCallbacks
    def test_illegal_characters(self) -> Any:
        result = yield self.confirm("127.0.0.4")
        self.assertEqual(result, FCrDNSResult(False, None, "bad-name", ("bad_na me!.test",)))

    @defer.inlineCallbacks
    def test_nxdomain(self) -> Any:
        result = yield self.confirm("127.0.0.8")
        self.assertEqual(result, FCrDNSResult(False, None, "no-ptr"))

    @defer.inlineCallbacks
    def test_refused_is_server_failure(self) -> Any:
        result = yield self.confirm("127.0.0.7")
        self.assertEqual(result.reason, "server-failure")

    @defer.inlineCallbacks
    def test_forward_lookup_never_answers(self) -> Any:
        result = yield self.confirm("127.0.0.5", timeout=1.5)
        self.assertEqual(result, FCrDNSResult(False, None, "timeout", ("x.hang.test",)))

    @defer.inlineCallbacks
    def test_server_never_answers(self) -> Any:
        silent = make_resolver(reactor, [("127.0.0.1", self.silent.getsockname()[1])])
        result = yield self.confirm("127.0.0.1", resolver=silent, timeout=1.5)
        self.assertEqual(result, FCrDNSResult(False, None, "timeout"))

    @defer.inlineCallbacks
    def test_cache_answers_second_check(self) -> Any:
        cache = FCrDNSCache(reactor)
        first = yield self.confirm("127.0.0.1", cache=cache)
        unused = make_resolver(reactor, [("127.0.0.1", self.silent.getsockname()[1])])
        second = yield self.confirm("127.0.0.1", cache=cache, resolver=unused)
        self.assertEqual(second, first)

    @defer.inlineCallbacks
    def test_require_policy_over_real_dns(self) -> Any:
        policy = PeerCheckPolicy(fcrdns="require", dns_servers=(("127.0.0.1", self.port),))
        local = IPv4Address("TCP", "127.0.0.1", 7700)
        good = start_peer_checks(reactor, policy, IPv4Address("TCP", "127.0.0.1", 5000), local)
        spoofed = start_peer_checks(reactor, policy, IPv4Address("TCP", "127.0.0.2", 5000), local)
        good_verdict = yield good.verdict()
        spoofed_verdict = yield spoofed.verdict()
        self.assertEqual((good_verdict.allowed, good_verdict.reason), (True, "ok"))
        self.assertEqual(
            (spoofed_verdict.allowed, spoofed_verdict.reason), (False, "fcrdns-mismatch")
        )

    @defer.inlineCallbacks
    def test_dns_client_lines_stay_out_of_the_log(self) -> Any:
        """
        One real check (C{fcrdns = "log"}, netguard's own resolver, PTR then A) writes only
        its C{peer.fcrdns} line to netguard's text and JSON logs: Twisted's per-query
        C{DNSDatagramProtocol starting on N}, C{Starting protocol ...},
        C{Stopping protocol ...} and C{(UDP Port N Closed)} lines are not there, and the
        protocol lines do not even reach the global publisher. Every other event is written.
        """
        text, records = io.StringIO(), io.StringIO()
        events: list[dict[str, Any]] = []
        observers = [events.append, safe_text_observer(text), json_observer(records)]
        for observer in observers:
            globalLogPublisher.addObserver(observer)
            self.addCleanup(globalLogPublisher.removeObserver, observer)
        policy = PeerCheckPolicy(fcrdns="log", dns_servers=(("127.0.0.1", self.port),))
        checks = PeerChecks(reactor, policy)
        run = checks.start(
            IPv4Address("TCP", "127.0.0.1", 5000), IPv4Address("TCP", "127.0.0.1", 7700)
        )
        result = yield run.fcrdns
        self.assertEqual((result.confirmed, result.name), (True, "good.test"))

        def lines(kind: str) -> list[str]:
            return [e["log_text"] for e in events if kind in e.get("log_text", "")]

        # The query ports close on the next reactor turns; wait for both (a hang guard only).
        for _ in range(1000):
            if len(lines(" Closed)")) >= 2:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        opened = lines(" starting on ")
        self.assertEqual(len(opened), 2)  # PTR and A: the check really used the DNS client
        self.assertEqual(len(lines(" Closed)")), 2)
        self.assertEqual(lines("Starting protocol") + lines("Stopping protocol"), [])
        noise = ("starting on", "Starting protocol", "Stopping protocol", "UDP Port")
        written = text.getvalue().splitlines()
        for line in written + records.getvalue().splitlines():
            self.assertFalse([n for n in noise if n in line], line)
        self.assertEqual(
            [json.loads(r)["event"] for r in records.getvalue().splitlines()], ["peer.fcrdns"]
        )
        self.assertEqual(len(written), 1)
        self.assertIn(" peer.fcrdns ", written[0])
        self.assertEqual(len(written), len(events) - len(opened) - len(lines(" Closed)")))


class HostileSilentDNSServer(protocol.DatagramProtocol):
    """
    A hostile DNS server written for the test: it reads every query and drops it, never
    answering; it counts what it received.
    """

    def __init__(self) -> None:
        self.received = 0

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        self.received += 1


class SharedCheckCancellationTests(unittest.TestCase):
    """
    Checks of one address sharing Twisted's real DNS client and one cache, against a DNS
    server that never answers, over real UDP: cancelling one check (a client that went
    away) is not a DNS answer for the others.
    """

    def setUp(self) -> None:
        self.server = HostileSilentDNSServer()
        port = reactor.listenUDP(0, self.server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        # The bound only has to outlast the few steps before the cancellation (a hang guard).
        self.policy = PeerCheckPolicy(
            fcrdns="require",
            fcrdns_timeout=6.0,
            dns_servers=(("127.0.0.1", port.getHost().port),),
        )
        self.local = IPv4Address("TCP", "127.0.0.1", 7700)

    def start(self, checks: PeerChecks, port: int) -> Any:
        return checks.start(IPv4Address("TCP", "127.0.0.1", port), self.local)

    @defer.inlineCallbacks
    def test_cancelled_check_does_not_refuse_concurrent_or_later_checks(self) -> Any:
        """
        Two connections from one address; the first is cancelled: the second is not decided
        at that moment (before: C{fcrdns-server-failure} at once) and a third started after
        the cancellation finds nothing cached; both end as C{fcrdns-timeout}, the honest
        outcome of a server that never answers, and only that is cached.
        """
        checks = PeerChecks(reactor, self.policy)
        first = self.start(checks, 5001)
        second = self.start(checks, 5002)
        verdict = second.verdict()
        yield wait_for_received(self.server, 1)
        first.cancel()
        self.assertFalse(verdict.called)
        self.assertEqual(len(checks.cache), 0)
        third = self.start(checks, 5003).verdict()
        self.assertFalse(third.called)
        second_verdict = yield verdict
        third_verdict = yield third
        self.assertEqual(second_verdict.reason, "fcrdns-timeout")
        self.assertEqual(third_verdict.reason, "fcrdns-timeout")
        self.assertEqual(checks.cache.get("127.0.0.1"), FCrDNSResult(False, None, "timeout"))

    @defer.inlineCallbacks
    def test_lone_check_of_a_silent_server_ends_as_timeout(self) -> Any:
        """
        The control: a lone check against the same server ends as C{fcrdns-timeout}.
        """
        policy = attrs.evolve(self.policy, fcrdns_timeout=1.5)
        verdict = yield self.start(PeerChecks(reactor, policy), 5004).verdict()
        self.assertEqual(verdict.reason, "fcrdns-timeout")


@defer.inlineCallbacks
def wait_for_received(server: HostileSilentDNSServer, count: int) -> Any:
    """
    Let the reactor run until C{server} has received C{count} datagrams (hang guard: 10 s).
    """
    for _ in range(1000):
        if server.received >= count:
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the DNS server received nothing")


class _Accepting(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.accepted.callback(self.transport)  # type: ignore[attr-defined]


class LoopbackConnectionMixin:
    """
    A real loopback TCP connection inside the test: a listener (the "gateway") and a client
    connected to it.
    """

    @defer.inlineCallbacks
    def loopback_connection(self) -> Any:
        factory = protocol.Factory.forProtocol(_Accepting)
        factory.accepted = defer.Deferred()  # type: ignore[attr-defined]
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
        address = port.getHost()
        client = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", address.port), protocol.Protocol()
        )
        self.addCleanup(client.transport.loseConnection)  # type: ignore[attr-defined]
        server_transport = yield factory.accepted
        self.addCleanup(server_transport.loseConnection)  # type: ignore[attr-defined]
        return server_transport.getPeer(), server_transport.getHost()


def wait_for_tcp(port: int, process: subprocess.Popen[bytes]) -> bool:
    for _ in range(100):
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class OidentdTests(LoopbackConnectionMixin, unittest.TestCase):
    """
    ident_query against a real oidentd answering for real loopback connections of this
    process (run with an empty configuration, so nothing is hidden).
    """

    def setUp(self) -> None:
        if not os.access(OIDENTD, os.X_OK):
            peer_unavailable(f"{OIDENTD} not installed (Debian package oidentd)")
        self.port = free_port()
        args = [OIDENTD, "-i", "-S", "-a", "127.0.0.1", "-p", str(self.port), "-C", "/dev/null"]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stop_process(self, process)
        if not wait_for_tcp(self.port, process):
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            peer_unavailable(f"oidentd cannot run here: {err.strip()!r}")

    @defer.inlineCallbacks
    def test_userid_for_real_connection(self) -> Any:
        peer, local = yield self.loopback_connection()
        result = yield ident_query(
            reactor, peer.host, peer.port, local.port, local_host=local.host, ident_port=self.port
        )
        user = pwd.getpwuid(os.geteuid()).pw_name
        self.assertEqual((result.ok, result.reason), (True, "userid"))
        self.assertEqual(result.reply.kind, "USERID")
        self.assertEqual(result.reply.user, user)
        self.assertEqual(result.reply.os, "UNIX")

    @defer.inlineCallbacks
    def test_error_for_unknown_connection(self) -> Any:
        result = yield ident_query(
            reactor, "127.0.0.1", 1, 2, local_host="127.0.0.1", ident_port=self.port
        )
        self.assertEqual(
            result,
            IdentResult(True, IdentReply(kind="ERROR", error="NO-USER"), "error", result.received),
        )

    @defer.inlineCallbacks
    def test_peer_checks_log_the_claim(self) -> Any:
        peer, local = yield self.loopback_connection()
        policy = PeerCheckPolicy(ident="log", ident_port=self.port)
        with capturedLogs() as events:
            run = start_peer_checks(reactor, policy, peer, local)
            verdict = yield run.verdict()
            ident = yield run.ident
        self.assertEqual((verdict.allowed, verdict.reason), (True, "ok"))
        self.assertTrue(ident.ok)
        [event] = [e for e in events if e.get("event") == "peer.ident"]
        self.assertEqual(event["user"], pwd.getpwuid(os.geteuid()).pw_name)


HOSTILE = r"""
import socket, sys
mode = sys.argv[1]
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(8)
print(listener.getsockname()[1], flush=True)
held = []
while True:
    conn, _ = listener.accept()
    held.append(conn)
    try:
        query = conn.recv(100).split(b"\r\n")[0].replace(b" ", b"")
        if mode == "chargen":
            line = bytes(range(33, 127)) + b"\r\n"
            chunk = (line * 1000)[:65536]
            chunk = chunk.replace(b"\n", b"!")
            while True:
                conn.sendall(chunk)
        elif mode == "long":
            conn.sendall(query + b":USERID:UNIX:" + b"u" * 5000 + b"\r\n")
        elif mode == "long-user":
            conn.sendall(query + b":USERID:UNIX:" + b"u" * 600 + b"\r\n")
        elif mode == "binary":
            conn.sendall(query + b":USERID:UNIX:\x00\xff\x1b[2J\x07root\r\n")
        elif mode == "silent":
            pass
    except OSError:
        pass
"""


class HostileIdentTests(unittest.TestCase):
    """
    ident_query against hostile responders in their own processes: memory (bytes read) and
    time stay bounded whatever they send.
    """

    max_reply = 1024

    def responder(self, mode: str) -> int:
        process = subprocess.Popen(
            [sys.executable, "-c", HOSTILE, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        stop_process(self, process)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        if not ready:
            self.fail("hostile responder did not start")
        return int(process.stdout.readline())

    def query(self, port: int, timeout: float = 10.0) -> defer.Deferred[IdentResult]:
        return ident_query(
            reactor,
            "127.0.0.1",
            40000,
            7700,
            local_host="127.0.0.1",
            ident_port=port,
            timeout=timeout,
            max_reply=self.max_reply,
        )

    @defer.inlineCallbacks
    def test_chargen(self) -> Any:
        result = yield self.query(self.responder("chargen"))
        self.assertEqual((result.ok, result.reason), (False, "protocol-error: reply too long"))
        self.assertLessEqual(result.received, self.max_reply + READ_SIZE)

    @defer.inlineCallbacks
    def test_silent(self) -> Any:
        result = yield self.query(self.responder("silent"), timeout=1.0)
        self.assertEqual(result, IdentResult(False, None, "timeout", 0))

    @defer.inlineCallbacks
    def test_over_long_line(self) -> Any:
        result = yield self.query(self.responder("long"))
        self.assertEqual(result.reason, "protocol-error: reply too long")
        self.assertLessEqual(result.received, self.max_reply + READ_SIZE)

    @defer.inlineCallbacks
    def test_over_long_user_id_within_line_bound(self) -> Any:
        result = yield self.query(self.responder("long-user"))
        self.assertEqual(result.reason, "protocol-error: user-id longer than 512 octets")

    @defer.inlineCallbacks
    def test_binary_line(self) -> Any:
        result = yield self.query(self.responder("binary"))
        self.assertEqual(
            (result.ok, result.reason), (False, "protocol-error: NUL byte in the reply")
        )

    @defer.inlineCallbacks
    def test_nobody_listening(self) -> Any:
        result = yield self.query(free_port())
        self.assertEqual(result.reason, "connect-failed")

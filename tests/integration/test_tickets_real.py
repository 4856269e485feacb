"""
Returning-client tickets from the gateway's side, over real loopback sockets: the real
gateway (built as C{twistd netguard} builds it, its key in the state directory) and a raw
socket client that speaks NGP/1 itself with netguard's own SCRAM client code: a ticket
asked for pipelined with C{OPEN}, presented by the next connection before the greeting and
greeted at once into the lane; a forged, replayed, expired or revoked ticket refused with
C{ERR BAD_TICKET}, the offences shown by the control socket's C{penalties}; a ticket from
another /24 of loopback going on as a first-time client; the key never logged.

The client is blocking and runs in a thread (the gateway runs on this process's reactor);
every read has a hang guard, no assertion is on time.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import socket
import ssl
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from netguard.auth.scram import ClientExchange, decode_wire, encode_wire
from netguard.client.protocol import Credentials
from netguard.ops.ctl_client import run_ctl
from netguard.ops.reload import Reloader
from netguard.tickets import EXPIRY_GRACE, TICKET_KEY_FILE
from tests import tls_certs
from tests.integration.util import RunningGateway, wait_for

_T = TypeVar("_T")

#: Seconds any one read may wait: a hang guard only.
_HANG_GUARD = 15.0


class RawClient:
    """
    A blocking NGP/1 client on a plain socket, from a chosen loopback source address.
    """

    def __init__(
        self,
        port: int,
        source: str = "127.0.0.1",
        proxy_from: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """
        @param proxy_from: send a PROXY v1 header first, naming this as the client address.
        @param tls: do a TLS handshake (with this context) before any NGP/1 byte.
        """
        sock = socket.create_connection(
            ("127.0.0.1", port), timeout=_HANG_GUARD, source_address=(source, 0)
        )
        if proxy_from is not None:
            sock.sendall(f"PROXY TCP4 {proxy_from} 127.0.0.1 40000 {port}\r\n".encode())
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """
        The next line (without CRLF); C{b""} at end of stream.
        """
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return b""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def at_eof(self) -> bool:
        """
        Whether the gateway closed the connection after what was read.
        """
        return not self.buffer and self.sock.recv(1) == b""

    def login(self, credentials: Credentials) -> None:
        exchange = ClientExchange(credentials.username, credentials.password)
        self.send(b"AUTH SCRAM-SHA-256 " + encode_wire(exchange.first()) + b"\r\n")
        cont = self.line()
        assert cont.startswith(b"CONT "), cont
        self.send(b"CONT " + encode_wire(exchange.final(decode_wire(cont[5:]))) + b"\r\n")
        ok = self.line()
        assert ok.startswith(b"OK "), ok
        exchange.verify(decode_wire(ok[3:]))

    def echo(self, payload: bytes) -> bytes:
        self.send(payload)
        got = b""
        while len(got) < len(payload):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got

    def close(self) -> None:
        self.sock.close()


def flip(token: bytes, index: int) -> bytes:
    """
    The token with one character changed (a forgery attempt).
    """
    replacement = b"B" if token[index : index + 1] == b"A" else b"A"
    return token[:index] + replacement + token[index + 1 :]


class _Later:
    """
    A wall clock C{offset} seconds ahead of the reactor's (to date tickets as expired).
    """

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def seconds(self) -> float:
        return float(reactor.seconds()) + self.offset  # type: ignore[attr-defined]


class GatewayTicketsRealTests(unittest.TestCase):
    """
    The real gateway issues, accepts and refuses tickets over real sockets.
    """

    timeout = 90

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.running = RunningGateway(
            self, overrides={"listen": ["tcp:0:interface=127.0.0.1"]}, prefix="ngtk-"
        )
        self.addCleanup(self.running.idle)
        self.port = self.running.port()
        self.credentials = self.running.credentials
        self.state_dir = self.running.overrides["state_dir"]

    def in_thread(self, work: Callable[[], _T]) -> Any:
        return deferToThread(work)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("event") == name]

    #: Keyword arguments of every L{RawClient} (a subclass sets a PROXY header or TLS).
    client_options: dict[str, Any] = {}

    def client(self, source: str = "127.0.0.1", proxy_from: str | None = None) -> RawClient:
        options = dict(self.client_options)
        if proxy_from is not None:
            options["proxy_from"] = proxy_from
        return RawClient(self.port, source, **options)

    def get_ticket(self, source: str = "127.0.0.1", proxy_from: str | None = None) -> bytes:
        """
        (In the thread.) Log in, ask C{TICKET} pipelined with C{OPEN echo}, check the echo,
        close; return the token.
        """
        client = self.client(source, proxy_from)
        try:
            greeting = client.line()
            assert greeting.endswith(b" TICKETS=1"), greeting
            client.login(self.credentials)
            client.send(b"TICKET\r\nOPEN echo\r\n")
            ticket = client.line()
            opened = client.line()
            assert opened == b"OK OPEN echo", opened
            assert client.echo(b"hello") == b"hello"
        finally:
            client.close()
        ok, word, token, lifetime = ticket.split(b" ")
        assert (ok, word, lifetime) == (b"OK", b"TICKET", b"LIFETIME=3600"), ticket
        return token

    def resume(
        self, token: bytes, source: str = "127.0.0.1", proxy_from: str | None = None
    ) -> tuple[RawClient, bytes]:
        """
        (In the thread.) Connect and send C{RESUME} at once; return the client and the
        first line the gateway sent.
        """
        client = self.client(source, proxy_from)
        client.send(b"RESUME " + token + b"\r\n")
        return client, client.line()

    def refused(self, token: bytes, source: str = "127.0.0.1") -> tuple[bytes, bool]:
        """
        (In the thread.) Present a ticket expected to be refused: the reply and whether the
        gateway closed the connection after it.
        """
        client, reply = self.resume(token, source)
        try:
            return reply, client.at_eof()
        finally:
            client.close()

    def penalties(self) -> dict[str, int]:
        """
        (In the thread.) What C{netguard ctl penalties} shows: source to offences.
        """
        path = os.path.join(self.state_dir, "control.sock")
        status, text = run_ctl(path, ["penalties"])
        assert status == 0, text
        return {row["source"]: row["offences"] for row in json.loads(text)["penalties"]}

    def test_ticket_presented_before_the_greeting_is_greeted_into_the_lane(self):
        """
        A ticket asked for pipelined with C{OPEN echo} (answers in order), presented as the
        first line of a new connection, is greeted at once (C{ticket.accepted}, lane true);
        that connection logs in and relays as any other. No penalty anywhere.
        """

        def work() -> dict[str, int]:
            token = self.get_ticket()
            client, greeting = self.resume(token)
            try:
                assert greeting.startswith(b"NETGUARD/1 "), greeting
                client.login(self.credentials)
                client.send(b"OPEN echo\r\n")
                assert client.line() == b"OK OPEN echo"
                assert client.echo(b"returning") == b"returning"
            finally:
                client.close()
            return self.penalties()

        d = self.in_thread(work)

        def check(penalties: dict[str, int]) -> None:
            self.assertEqual(penalties, {})
            self.assertEqual(len(self.named("ticket.issued")), 1)
            [accepted] = self.named("ticket.accepted")
            self.assertEqual(accepted["lane"], True)
            self.assertEqual(accepted["ticket_user"], self.credentials.username)

        return d.addCallback(check)

    def test_overload_greets_a_ticket_into_the_lane_and_sheds_the_others(self):
        """
        The real gateway under overload (admission's overload signal set as the overload
        monitor sets it): a client presenting its ticket is greeted at once into the lane,
        logs in and relays; a client without one is never greeted and gets
        C{ERR BUSY overload-lag} when its probation ends, then the close. No offence.
        """
        admission = self.running.factory.admission
        self.addCleanup(admission.set_overload, None)

        def shed_and_served(token: bytes) -> tuple[bytes, bool, bytes, bytes]:
            stranger = self.client()
            try:
                client, greeting = self.resume(token)
                try:
                    client.login(self.credentials)
                    client.send(b"OPEN echo\r\n")
                    opened = client.line()
                    assert client.echo(b"in the lane") == b"in the lane"
                finally:
                    client.close()
                answer = stranger.line()
                return answer, stranger.at_eof(), greeting, opened
            finally:
                stranger.close()

        def overloaded(token: bytes) -> Any:
            admission.set_overload("overload-lag")
            return self.in_thread(lambda: shed_and_served(token))

        def check(result: tuple[bytes, bool, bytes, bytes]) -> Any:
            answer, closed, greeting, opened = result
            self.assertEqual((answer, closed), (b"ERR BUSY overload-lag", True))
            self.assertTrue(greeting.startswith(b"NETGUARD/1 "), greeting)
            self.assertEqual(opened, b"OK OPEN echo")
            [accepted] = self.named("ticket.accepted")
            self.assertTrue(accepted["lane"])
            self.assertEqual(self.running.factory.stats.counters["refused.overload-lag"], 1)
            return self.in_thread(self.penalties).addCallback(self.assertEqual, {})

        return self.in_thread(self.get_ticket).addCallback(overloaded).addCallback(check)

    def test_replayed_and_forged_refused_with_offences(self):
        """
        A spent ticket presented again is C{ERR BAD_TICKET replayed}; a forged one (one
        character changed), from another source, C{ERR BAD_TICKET forged}; each closes the
        connection, and C{netguard ctl penalties} shows both sources with one offence.
        """

        def work() -> tuple[Any, ...]:
            token = self.get_ticket()
            client, greeting = self.resume(token)
            client.close()
            assert greeting.startswith(b"NETGUARD/1 "), greeting
            replayed = self.refused(token)
            forged = self.refused(flip(token, len(token) // 2), "127.0.0.2")
            return replayed, forged, self.penalties()

        d = self.in_thread(work)

        def check(result: tuple[Any, ...]) -> None:
            replayed, forged, penalties = result
            self.assertEqual(replayed, (b"ERR BAD_TICKET replayed", True))
            self.assertEqual(forged, (b"ERR BAD_TICKET forged", True))
            self.assertEqual(penalties, {"127.0.0.1/32": 1, "127.0.0.2/32": 1})
            reasons = sorted(e["reason"] for e in self.named("ticket.refused"))
            self.assertEqual(reasons, ["forged", "replayed"])

        return d.addCallback(check)

    def test_expired_refused_with_offence(self):
        """
        A ticket presented once its lifetime and the grace have passed (the gateway's clock
        moved ahead) is C{ERR BAD_TICKET expired}, an offence.
        """

        def issue() -> bytes:
            return self.get_ticket()

        def present(token: bytes) -> tuple[Any, ...]:
            return self.refused(token), self.penalties()

        d = self.in_thread(issue)

        def later(token: bytes) -> Any:
            self.running.factory.tickets.clock = _Later(3600 + EXPIRY_GRACE)
            return self.in_thread(lambda: present(token))

        def check(result: tuple[Any, ...]) -> None:
            reply, penalties = result
            self.assertEqual(reply, (b"ERR BAD_TICKET expired", True))
            self.assertEqual(penalties, {"127.0.0.1/32": 1})

        return d.addCallback(later).addCallback(check)

    def test_key_replaced_and_reloaded_revokes_without_offence(self):
        """
        Replacing the key file and reloading (as SIGHUP does) revokes earlier tickets: C{ERR
        BAD_TICKET revoked}, no offence; a new login's ticket is accepted.
        """
        reloader = Reloader(self.running.service, None, self.running.overrides)
        key_path = os.path.join(self.state_dir, TICKET_KEY_FILE)

        def replace_key() -> None:
            os.unlink(key_path)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, os.urandom(32))
            os.close(fd)

        def after_reload(token: bytes) -> tuple[Any, ...]:
            refused = self.refused(token)
            fresh = self.get_ticket()
            client, greeting = self.resume(fresh)
            client.close()
            return refused, greeting, self.penalties()

        def reload_then(token: bytes) -> Any:
            replace_key()
            reloader.reload()
            return self.in_thread(lambda: after_reload(token))

        def check(result: tuple[Any, ...]) -> None:
            refused, greeting, penalties = result
            self.assertEqual(refused, (b"ERR BAD_TICKET revoked", True))
            self.assertTrue(greeting.startswith(b"NETGUARD/1 "), greeting)
            self.assertEqual(penalties, {})

        return self.in_thread(self.get_ticket).addCallback(reload_then).addCallback(check)

    def test_other_block_goes_on_as_a_first_time_client(self):
        """
        A valid ticket presented from another /24 of loopback (127.0.1.1) is not refused and
        not an offence: the connection is greeted as a first-time one (after the delay)
        and logs in; C{ticket.other_block} is logged and no lane entered.
        """

        def work() -> dict[str, int]:
            token = self.get_ticket()
            client, greeting = self.resume(token, "127.0.1.1")
            try:
                assert greeting.startswith(b"NETGUARD/1 "), greeting
                client.login(self.credentials)
            finally:
                client.close()
            return self.penalties()

        def check(penalties: dict[str, int]) -> None:
            self.assertEqual(penalties, {})
            self.assertEqual(len(self.named("ticket.other_block")), 1)
            self.assertEqual(self.named("ticket.accepted"), [])

        return self.in_thread(work).addCallback(check)

    def test_key_file_private_and_never_logged(self):
        """
        The key file in the state directory is 32 bytes, mode 0600; after issuing,
        accepting and refusing tickets no log event holds it (raw, hex or base64).
        """

        def work() -> None:
            token = self.get_ticket()
            client, _ = self.resume(token)
            client.close()
            self.refused(token)

        def check(_: object) -> None:
            path = os.path.join(self.state_dir, TICKET_KEY_FILE)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            with open(path, "rb") as handle:
                key = handle.read()
            self.assertEqual(len(key), 32)
            text = repr(self.events) + "".join(formatEvent(e) for e in self.events)
            for shown in (repr(key), key.hex(), base64.b64encode(key).decode()):
                self.assertNotIn(shown, text)

        return self.in_thread(work).addCallback(check)


def tls_gateway(
    test: unittest.TestCase, config: str, prefix: str
) -> tuple[list[dict[str, Any]], RunningGateway, ssl.SSLContext]:
    """
    The real gateway on one TLS listener with a fresh certificate, plus C{config}, its log
    events captured.

    @return: the captured events, the gateway, and a client context trusting its certificate.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    directory = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    test.addCleanup(shutil.rmtree, directory, True)
    cert, key = tls_certs.make_leaf("localhost")
    cert_file, key_file = tls_certs.write_identity(directory, "gateway", cert, key)
    running = RunningGateway(
        test,
        "listen = []\n[[tls_listen]]\n"
        'endpoint = "tcp:0:interface=127.0.0.1"\n'
        f'cert_file = "{cert_file}"\nkey_file = "{key_file}"\n' + config,
        prefix=prefix,
    )
    test.addCleanup(running.idle)
    return events, running, ssl.create_default_context(cafile=cert_file)


class TLSTicketsRealTests(unittest.TestCase):
    """
    On a TLS listener the ticket is presented right after the TLS handshake, before the
    greeting, and greets at once into the lane.
    """

    timeout = 90

    def setUp(self) -> None:
        self.events, self.running, self.context = tls_gateway(self, "", "ngtkt-")

    def test_resume_after_the_tls_handshake_enters_the_lane(self):
        """
        Over TLS: log in, ask C{TICKET}; a new TLS connection sends C{RESUME} as its first
        bytes inside TLS, is greeted at once into the lane and logs in.
        """
        port = self.running.port()
        credentials = self.running.credentials

        def work() -> bytes:
            first = RawClient(port, tls=self.context)
            try:
                first.line()
                first.login(credentials)
                first.send(b"TICKET\r\n")
                token = first.line().split(b" ")[2]
            finally:
                first.close()
            second = RawClient(port, tls=self.context)
            try:
                second.send(b"RESUME " + token + b"\r\n")
                greeting = second.line()
                second.login(credentials)
            finally:
                second.close()
            return greeting

        def check(greeting: bytes) -> None:
            self.assertTrue(greeting.startswith(b"NETGUARD/1 "), greeting)
            self.assertIn(b"SCRAM-SHA-256-PLUS", greeting)
            [accepted] = [e for e in self.events if e.get("event") == "ticket.accepted"]
            self.assertTrue(accepted["lane"])

        return deferToThread(work).addCallback(check)


class ProxyHeaderTicketsRealTests(GatewayTicketsRealTests):
    """
    Behind a C{haproxy:} listener the address block is the PROXY header's client address,
    not the proxy's: the same tests, every client announced as 203.0.113.5, plus the block
    boundary by the header's address.
    """

    client_options = {"proxy_from": "203.0.113.5"}

    def setUp(self) -> None:
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.running = RunningGateway(
            self, overrides={"listen": ["haproxy:tcp:0:interface=127.0.0.1"]}, prefix="ngtkp-"
        )
        self.addCleanup(self.running.idle)
        self.port = self.running.port()
        self.credentials = self.running.credentials
        self.state_dir = self.running.overrides["state_dir"]

    def test_replayed_and_forged_refused_with_offences(self):
        """
        Offences count against the header's source: a replay announced from 203.0.113.5 and
        a forgery announced from 203.0.113.6 (both over 127.0.0.1) are each that source's.
        """

        def work() -> tuple[Any, ...]:
            token = self.get_ticket()
            client, greeting = self.resume(token)
            client.close()
            assert greeting.startswith(b"NETGUARD/1 "), greeting
            replayed = self.refused(token)
            forged_client, forged = self.resume(flip(token, 10), proxy_from="203.0.113.6")
            forged_client.close()
            return replayed, forged, self.penalties()

        def check(result: tuple[Any, ...]) -> None:
            replayed, forged, penalties = result
            self.assertEqual(replayed, (b"ERR BAD_TICKET replayed", True))
            self.assertEqual(forged, b"ERR BAD_TICKET forged")
            self.assertEqual(penalties, {"203.0.113.5/32": 1, "203.0.113.6/32": 1})

        return self.in_thread(work).addCallback(check)

    def test_expired_refused_with_offence(self):
        """
        An expired ticket is an offence of the header's source.
        """

        def present(token: bytes) -> tuple[Any, ...]:
            return self.refused(token), self.penalties()

        def later(token: bytes) -> Any:
            self.running.factory.tickets.clock = _Later(3600 + EXPIRY_GRACE)
            return self.in_thread(lambda: present(token))

        def check(result: tuple[Any, ...]) -> None:
            reply, penalties = result
            self.assertEqual(reply, (b"ERR BAD_TICKET expired", True))
            self.assertEqual(penalties, {"203.0.113.5/32": 1})

        return self.in_thread(self.get_ticket).addCallback(later).addCallback(check)

    def test_other_block_goes_on_as_a_first_time_client(self):
        """
        By the header's address: 203.0.113.77 is the same /24 (the lane), 203.0.114.5 is
        another block (no lane, no offence), though every connection comes from 127.0.0.1.
        """

        def work() -> tuple[bytes, dict[str, int]]:
            same = self.get_ticket()
            client, greeting = self.resume(same, proxy_from="203.0.113.77")
            client.close()
            other = self.get_ticket()
            client, later_greeting = self.resume(other, proxy_from="203.0.114.5")
            client.close()
            assert later_greeting.startswith(b"NETGUARD/1 "), later_greeting
            return greeting, self.penalties()

        def check(result: tuple[bytes, dict[str, int]]) -> None:
            greeting, penalties = result
            self.assertTrue(greeting.startswith(b"NETGUARD/1 "), greeting)
            self.assertEqual(penalties, {})
            [accepted] = self.named("ticket.accepted")
            self.assertTrue(accepted["lane"])
            self.assertEqual(len(self.named("ticket.other_block")), 1)

        return self.in_thread(work).addCallback(check)


def _eof_or_reset(sock: socket.socket) -> bytes:
    """
    (In the thread.) What the gateway sends before closing C{sock}: its bytes (C{b""} for a
    silent close), a reset counted as a close.
    """
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return got
            got += chunk
    except ConnectionResetError:
        return got


class TLSEndingsRealTests(unittest.TestCase):
    """
    On a real TLS listener, connections admission ends or refuses never wait for a TLS
    handshake: an evicted connection that never sent its ClientHello is aborted at once,
    and a refused one is closed silently before any handshake (the write timeout, 120 s
    here, is far beyond every hang guard: waiting for it would fail the test).
    """

    timeout = 60

    def setUp(self) -> None:
        self.events, self.running, self.context = tls_gateway(
            self,
            "[limits]\nwrite_timeout = 120\n"
            "[admission]\nmax_unauthenticated = 2\nred_soft = 2\nred_hard = 2\n"
            'deny = ["127.0.0.4/32"]\n',
            "ngtke-",
        )
        self.port = self.running.port()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("event") == name]

    def test_evicted_before_its_tls_handshake_is_aborted_at_once(self):
        """
        Two connections from 127.0.0.2 that never send a ClientHello fill the pool; a TLS
        client from 127.0.0.3 evicts one of them, which is closed at once without a byte
        (not after the write timeout), while the newcomer is greeted. No
        C{tls.handshake_failed} is logged for the evicted one.
        """
        factory = self.running.factory
        stalled = [
            socket.create_connection(
                ("127.0.0.1", self.port), timeout=_HANG_GUARD, source_address=("127.0.0.2", 0)
            )
            for _ in range(2)
        ]
        for sock in stalled:
            self.addCleanup(sock.close)

        def newcomer() -> tuple[bytes, bytes]:
            client = RawClient(self.port, "127.0.0.3", tls=self.context)
            try:
                greeting = client.line()
                readable, _, _ = select.select(stalled, [], [], _HANG_GUARD)
                assert readable, "no stalled connection was closed within the hang guard"
                return greeting, _eof_or_reset(readable[0])
            finally:
                client.close()

        def check(result: tuple[bytes, bytes]) -> None:
            greeting, evicted = result
            self.assertTrue(greeting.startswith(b"NETGUARD/1 "), greeting)
            self.assertEqual(evicted, b"")
            self.assertEqual(factory.stats.counters["refused.evicted"], 1)
            self.assertEqual(self.named("tls.handshake_failed"), [])

        d = wait_for(lambda: len(factory.sessions) == 2)
        d.addCallback(lambda _: deferToThread(newcomer))
        return d.addCallback(check)

    def test_refused_on_tls_is_a_silent_close(self):
        """
        A connection admission refuses (a denied source) on a TLS listener is closed before
        any handshake: a raw socket reads end of stream with no byte (no ServerHello, no
        C{ERR BUSY} through TLS); a TLS client's handshake fails. C{conn.reject} is logged.
        """

        def work() -> tuple[bytes, str]:
            try:
                raw = socket.create_connection(
                    ("127.0.0.1", self.port), timeout=_HANG_GUARD, source_address=("127.0.0.4", 0)
                )
            except ConnectionResetError:
                got = b""  # aborted so soon the reset beat connect()'s return: a close too
            else:
                try:
                    got = _eof_or_reset(raw)
                finally:
                    raw.close()
            try:
                RawClient(self.port, "127.0.0.4", tls=self.context).close()
            except (ssl.SSLError, OSError) as exc:
                return got, type(exc).__name__
            return got, "handshake succeeded"

        def check(result: tuple[bytes, str]) -> None:
            got, failure = result
            self.assertEqual(got, b"")
            self.assertNotEqual(failure, "handshake succeeded")
            self.assertEqual([e["reason"] for e in self.named("conn.reject")], ["denied"] * 2)

        return deferToThread(work).addCallback(check)

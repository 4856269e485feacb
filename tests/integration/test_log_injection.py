"""
End to end: a hostile peer cannot forge, split or colour the gateway's log, and no secret
reaches it.

  - L{JSONLogFileTests} and L{TextLogFileTests}: the real gateway service (as C{twistd
    netguard} builds it) in this process on real loopback TCP, with C{[log] file} set in a
    configuration file (JSON, then text). Sessions carry CR, LF, ANSI sequences, NUL, DEL,
    invalid UTF-8 and text that imitates our escapes or a whole log line, in SCRAM user
    names, in C{OPEN} service names and in raw junk lines. After the service stops, every
    line of the log file is one record (JSON: each parses; text: each starts with our own
    timestamp and columns, never with text from the input), the hostile bytes appear only
    escaped, and after a full successful session plus failed attempts neither the password
    nor anything derived from it (the SCRAM proof, ClientKey, SaltedPassword, StoredKey,
    ServerKey, the CONT token) is in the file or in any event published in the process.
  - L{TwistdLoggerTests}: the real C{twistd} process with C{--logger
    netguard.log.json_stdout_observer} writes only JSON lines on standard output; with
    C{--log-file} it also writes the file (mode 0600) from the first listener to the last
    shutdown event; C{--log-format json} alone is refused with the fix named.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import signal
import stat
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from netguard.auth.scram import ClientExchange, encode_wire
from netguard.client.protocol import Credentials, NGPError
from netguard.config import load_config
from netguard.log import escape
from netguard.service import make_service
from tests.integration.test_twistd import (
    REPO,
    TWISTD,
    WAIT,
    python_env,
    read,
    run,
    short_temp_dir,
)
from tests.integration.util import EchoClient, free_port, wait_for

#: Text a peer would like to see at the start of a log line: a timestamp and columns of ours.
FORGED = "1999-12-31T23:59:59+0000 [netguard.gateway.protocol.GatewaySession#info] auth.ok"

#: Raw bytes no log line may contain (the text log's final newline aside).
RAW_MARKERS = ("\x1b", "\r", "\x00", "\x7f", "\x08", "\x07")

#: A text log line: our timestamp, [namespace#level], event, conn_id, message.
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^ \]]+\] \S+ \S+ ")

#: A line a client sends so that a careless log would show a failed login from 10.9.9.9.
PLANTED = b'X authentication failed for "root" from 10.9.9.9: unknown user'

#: fail2ban-style patterns for failed logins: one that relies on our quoting of user names,
#: searched anywhere; one anchored at the start of a message (the text after the columns).
BAN_QUOTED = re.compile(r'authentication failed for "[^"]*" from 10\.9\.9\.9')
BAN_ANCHORED = re.compile(r"^authentication failed for .* from 10\.9\.9\.9")


class LineClient(Protocol):
    """
    A raw NGP/1 peer: sends whatever bytes it is told to and collects the reply lines.
    """

    def __init__(self, early: bytes = b"") -> None:
        self.early = early
        self.buffer = b""
        self.lines: list[bytes] = []
        self.read = 0
        self.closed = False
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.early:
            self.transport.write(self.early)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\r\n")
        self.lines += lines

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self.done.callback(None)

    def send(self, line: bytes) -> None:
        self.transport.write(line + b"\r\n")

    @inlineCallbacks
    def next_line(self) -> Any:
        """
        @return: (a Deferred firing with) the next reply line, or L{None} once closed.
        """
        yield wait_for(lambda: len(self.lines) > self.read or self.closed)
        if len(self.lines) <= self.read:
            return None
        self.read += 1
        return self.lines[self.read - 1]


def scram_secrets(password: str, server_first: str, client_final: str) -> dict[str, str]:
    """
    Everything secret a SCRAM exchange involves, in the forms a careless log could hold.
    """
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    salt, iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    proof = client_final.rsplit(",p=", 1)[1]
    secrets = {
        "password": password,
        "proof": proof,
        "cont_token": encode_wire(client_final).decode(),
    }
    for name, value in [
        ("salted_password", salted),
        ("client_key", client_key),
        ("server_key", server_key),
        ("stored_key", stored_key),
    ]:
        secrets[name + "_b64"] = base64.b64encode(value).decode()
        secrets[name + "_hex"] = value.hex()
    secrets["proof_hex"] = base64.b64decode(proof).hex()
    return secrets


class LogFileMixin:
    """
    The gateway in this process with C{[log] file} set; subclasses choose the format.
    """

    log_format = "json"

    def setUp(self) -> None:
        self.state = tempfile.mkdtemp(prefix="ngl-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.state, True)
        self.log_path = os.path.join(self.state, "netguard.log")
        config_file = os.path.join(self.state, "netguard.toml")
        with open(config_file, "w") as handle:
            handle.write(
                "[limits]\n"
                "greeting_delay = 0.3\n"  # the early talker cannot race it
                "[log]\n"
                f'format = "{self.log_format}"\n'
                f'file = "{self.log_path}"\n'
                "[admission]\n"
                # Every hostile client here is 127.0.0.1: no penalty block between tests'
                # sessions, and no rate limit.
                'never_penalise = ["127.0.0.1/32"]\n'
                "per_source_rate = 1000.0\n"
                "per_source_burst = 1000\n"
                "[ops]\n"
                "shutdown_grace = 2.0\n"
            )
        # Every event published in the process during the test, stop included.
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        config = load_config(
            config_file, {"state_dir": self.state, "listen": ["tcp:0:interface=127.0.0.1"]}
        )
        self.assertEqual((config.log.format, config.log.file), (self.log_format, self.log_path))
        self.terminal = io.StringIO()
        self.service = make_service(config, reactor, terminal=self.terminal)
        self.service.startService()
        self.addCleanup(self.stop)
        self.port = self.service.ports[0].getHost().port
        # Every hostile client here is 127.0.0.1: log each of its refusals one by one (the
        # aggregation of a flood is tested in test_refusals_real and test_guessing_real).
        self.service.factory.refusal_log.individual = 1000
        shown = self.terminal.getvalue()
        self.user = re.search(r"user:\s+(\S+)", shown).group(1)  # type: ignore[union-attr]
        self.password = re.search(r"password:\s+(\S+)", shown).group(1)  # type: ignore[union-attr]
        self.secrets: dict[str, str] = {"password": self.password}

    def stop(self) -> Any:
        """
        Stop the service (once): its last events reach the file, which is then closed.
        """
        if not self.service.running:
            return None
        return self.service.stopService()

    def endpoint(self) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)

    @inlineCallbacks
    def raw(self, early: bytes = b"") -> Any:
        """
        @return: (a Deferred firing with) a connected L{LineClient}, greeted unless it
            talked early.
        """
        client = LineClient(early)
        yield connectProtocol(self.endpoint(), client)
        if not early:
            greeting = yield client.next_line()
            self.assertTrue(greeting.startswith(b"NETGUARD/1 "), greeting)
        return client

    @inlineCallbacks
    def authenticate(self, client: LineClient, user: str, password: str) -> Any:
        """
        Run SCRAM by hand on a raw client, keeping every secret it involved.

        @return: (a Deferred firing with) the final reply line.
        """
        exchange = ClientExchange(user, password)
        client.send(b"AUTH SCRAM-SHA-256 " + encode_wire(exchange.first()))
        reply = yield client.next_line()
        self.assertTrue(reply.startswith(b"CONT "), reply)
        server_first = base64.b64decode(reply[5:]).decode()
        client_final = exchange.final(server_first)
        self.secrets.update(
            {
                f"{user}/{password}/{key}": value
                for key, value in scram_secrets(password, server_first, client_final).items()
            }
        )
        client.send(b"CONT " + encode_wire(client_final))
        reply = yield client.next_line()
        if reply.startswith(b"OK "):
            exchange.verify(base64.b64decode(reply[3:]).decode())
        return reply

    @inlineCallbacks
    def refused(self, client: LineClient, line: bytes, code: bytes) -> Any:
        """
        Send one line and check the C{ERR} code it earns.
        """
        client.send(line)
        reply = yield client.next_line()
        self.assertTrue(reply is not None and reply.startswith(b"ERR " + code), (line, reply))

    # -- reading the log -------------------------------------------------------------------

    @inlineCallbacks
    def log_file(self) -> Any:
        """
        Stop the gateway, then read the log file and check that every line is one record.

        @return: (a Deferred firing with) the file's text.
        """
        yield self.stop()
        self.assertEqual(stat.S_IMODE(os.stat(self.log_path).st_mode), 0o600)
        with open(self.log_path, "rb") as handle:
            data = handle.read()
        text = data.decode("ascii")  # both formats are pure ASCII
        self.assertTrue(text.endswith("\n"))
        lines = text[:-1].split("\n")
        for marker in RAW_MARKERS:
            self.assertNotIn(marker, text)
        for line in lines:
            self.assertEqual([c for c in line if not " " <= c <= "~"], [], line)
            self.assertFalse(line.startswith("1999-"), line)
            self.check_record(line)
        names = self.event_names(text)
        self.assertEqual(names[0], "log.file_open")
        self.assertIn("gateway.start", names)
        self.assertEqual(names[-1], "shutdown.done")
        return text

    def check_record(self, line: str) -> None:
        raise NotImplementedError

    def event_names(self, text: str) -> list[str]:
        raise NotImplementedError

    def assert_logged(
        self, text: str, event: str, field: str, value: str, prefix: bool = False
    ) -> None:
        """
        Some C{event} record carries C{field} = C{value} (an escaped value), or a value
        starting with it if C{prefix}.
        """
        raise NotImplementedError

    def assert_no_secrets(self, text: str) -> None:
        """
        No secret of any exchange is in the file, nor in any event published.
        """
        published = "\n".join(repr(event) + formatEvent(event) for event in self.events)
        self.assertTrue(published)
        self.assertGreater(len(self.secrets), 10)
        for name, secret in self.secrets.items():
            self.assertNotIn(secret, text, name)
            self.assertNotIn(escape(secret, limit=10_000), text, name)
            self.assertNotIn(secret, published, name)

    # -- the tests ----------------------------------------------------------------------------

    @inlineCallbacks
    def test_password_and_scram_secrets_never_logged(self) -> Any:
        """
        A full session (authenticate, open echo, relay bytes, close) plus failed attempts:
        wrong password for the real user, the real password for an unknown user, the real
        password sent as the service name: none of the secrets is logged anywhere.
        """
        payload = b"relayed data is never logged " + self.password.encode()
        client = EchoClient(Credentials(self.user, self.password), len(payload))
        yield connectProtocol(self.endpoint(), client)
        yield client.opened
        client.transport.write(payload)
        self.assertEqual((yield client.done), payload)
        client.transport.loseConnection()
        # The same by hand, keeping the proof and keys, then failures.
        good = yield self.raw()
        reply = yield self.authenticate(good, self.user, self.password)
        self.assertTrue(reply.startswith(b"OK "), reply)
        good.send(b"QUIT")
        yield good.done
        wrong = yield self.raw()
        reply = yield self.authenticate(wrong, self.user, "not-" + self.password)
        self.assertTrue(reply.startswith(b"ERR AUTH_FAILED"), reply)
        unknown = yield self.raw()
        reply = yield self.authenticate(unknown, "nobody", self.password)
        self.assertTrue(reply.startswith(b"ERR AUTH_FAILED"), reply)
        failing = EchoClient(Credentials(self.user, "wrong-" + self.password), 0)
        yield connectProtocol(self.endpoint(), failing)
        failure = yield self.assertFailure(failing.opened, NGPError)
        self.assertEqual(failure.code, "AUTH_FAILED")
        text = yield self.log_file()
        self.assertGreaterEqual(self.event_names(text).count("auth.ok"), 2)
        self.assertGreaterEqual(self.event_names(text).count("auth.fail"), 3)
        self.assertIn("session.open", self.event_names(text))
        self.assertNotIn("relayed data", text)
        self.assert_no_secrets(text)

    @inlineCallbacks
    def test_scram_username_with_control_bytes(self) -> Any:
        """
        A client-first-message built by hand with CR, LF, ANSI, NUL and DEL in the user
        name (no real client can send one: SASLprep refuses it) fails authentication, and
        nothing of it reaches the log raw.
        """
        names = [
            f"x\r\n{FORGED} root",
            "evil\x1b[31mred\x1b[2J\x1b[H",
            "nul\x00byte",
            "del\x7fbs\x08bell\x07",
        ]
        for name in names:
            client = yield self.raw()
            first = f"n,,n={name},r=abcdefghijklmnopqrstuvwx"
            client.send(b"AUTH SCRAM-SHA-256 " + encode_wire(first))
            reply = yield client.next_line()
            self.assertTrue(reply.startswith(b"ERR AUTH_FAILED"), reply)
            client.transport.loseConnection()
            yield client.done
        text = yield self.log_file()
        self.assertGreaterEqual(self.event_names(text).count("auth.fail"), len(names))
        # SASLprep (or the message parser, for NUL) refused the name before it was read.
        self.assert_logged(text, "auth.fail", "claimed", "-")

    @inlineCallbacks
    def test_scram_username_imitating_escapes_and_log_lines(self) -> Any:
        """
        User names that SASLprep allows but that imitate our escapes, a whole log line, or
        hold non-ASCII letters are logged escaped: backslashes doubled, non-ASCII as bytes.
        """
        names = [
            "evil\\r\\n\\x1b[2J",
            f"{FORGED} - authenticated root",
            "\u00fcn\u00efc\u00f6de\u65e5\u672c",
        ]
        for name in names:
            client = yield self.raw()
            reply = yield self.authenticate(client, name, "whatever")
            self.assertTrue(reply.startswith(b"ERR AUTH_FAILED"), reply)
            client.transport.loseConnection()
            yield client.done
        text = yield self.log_file()
        self.assert_logged(text, "auth.fail", "claimed", "evil\\\\r\\\\n\\\\x1b[2J")
        self.assert_logged(text, "auth.fail", "claimed", escape(names[1]))
        self.assert_logged(
            text,
            "auth.fail",
            "claimed",
            "\\xc3\\xbcn\\xc3\\xafc\\xc3\\xb6de\\xe6\\x97\\xa5\\xe6\\x9c\\xac",
        )

    @inlineCallbacks
    def test_open_with_hostile_bytes(self) -> Any:
        """
        After authenticating, C{OPEN} lines holding ANSI sequences, CR, NUL, DEL, invalid
        UTF-8 or the text of an escape are refused and logged escaped (each on a session of
        its own: a session's later error replies are only counted).
        """
        hostile = [
            (b"OPEN ec\x1b[2J\x1b[Hho", b"BAD_SYNTAX"),
            (b"OPEN echo\r" + FORGED.encode(), b"BAD_SYNTAX"),
            (b"OPEN \x00echo", b"BAD_SYNTAX"),
            (b"OPEN ec\x7f\x08ho", b"BAD_SYNTAX"),
            (b"OPEN \xff\xfe\xc3(", b"BAD_SYNTAX"),
            (b"OPEN \\x1b[2J\\r\\n", b"NO_SUCH_SERVICE"),
        ]
        for line, code in hostile:
            client = yield self.raw()
            reply = yield self.authenticate(client, self.user, self.password)
            self.assertTrue(reply.startswith(b"OK "), reply)
            yield self.refused(client, line, code)
            client.send(b"QUIT")
            yield client.done
        text = yield self.log_file()
        for line, code in hostile:
            # A bad line is logged whole; a well-formed OPEN of an unknown name, its name.
            offending = line if code == b"BAD_SYNTAX" else line[len(b"OPEN ") :]
            self.assert_logged(text, "proto.refuse", "offending", escape(offending))

    @inlineCallbacks
    def test_raw_junk_lines_before_authentication(self) -> Any:
        """
        Junk lines (an OSC title sequence, NUL, invalid UTF-8, a bare CR), each the first
        error of its session, are refused and logged escaped; a forged log line sent after a
        LF is never a record of its own: it is a field inside one record when it is the
        first error, and only counted (C{proto.errors}) when it is not.
        """
        hostile = [
            b"\x1b]0;owned\x07\x1b[2J",
            b"PING\x00",
            b"\xff\xfe\xfd",
            b"HELLO\rWORLD",
        ]
        for line in hostile:
            client = yield self.raw()
            yield self.refused(client, line, b"BAD_SYNTAX")
            client.transport.loseConnection()
            yield client.done
        client = yield self.raw()
        yield self.refused(client, FORGED.encode(), b"UNKNOWN_COMMAND")
        client.send(b"x\n" + FORGED.encode())  # two lines: "x", then the forged one
        for _ in range(2):
            reply = yield client.next_line()
            self.assertTrue(reply.startswith(b"ERR UNKNOWN_COMMAND"), reply)
        client.transport.loseConnection()
        yield client.done
        text = yield self.log_file()
        for line in hostile:
            self.assert_logged(text, "proto.refuse", "offending", escape(line))
        self.assert_logged(text, "proto.refuse", "offending", FORGED)
        self.assert_logged(text, "proto.errors", "first_offending", FORGED)

    @inlineCallbacks
    def test_early_talker_with_escape_sequences(self) -> Any:
        """
        A client that talks before the greeting, with a clear-screen sequence and a forged
        line, is cut off and its bytes are logged escaped.
        """
        early = b"\x1b[2J\x1b[H\r\n" + FORGED.encode() + b"\r\n"
        client = yield self.raw(early=early)
        yield client.done
        self.assertTrue(client.lines and client.lines[0].startswith(b"ERR EARLY_TALKER"))
        text = yield self.log_file()
        # The bytes come in one segment on loopback; a split would only shorten the field.
        self.assertIn("proto.early_talker", self.event_names(text))
        self.assert_logged(text, "proto.refuse", "offending", escape(early[:8]), prefix=True)

    def messages(self, text: str) -> list[str]:
        """
        The message part of every record (after the columns; JSON: the C{message} key).
        """
        raise NotImplementedError

    def assert_only_quoted(self, text: str, needle: str) -> None:
        """
        C{needle} appears in messages only inside a quoted field (an odd number of C{"}
        before it), and no fail2ban-style pattern matches a message or a raw line.
        """
        seen = 0
        for message in self.messages(text):
            self.assertIsNone(BAN_QUOTED.search(message), message)
            self.assertIsNone(BAN_ANCHORED.search(message), message)
            start = message.find(needle)
            while start >= 0:
                seen += 1
                self.assertEqual(message[:start].count('"') % 2, 1, message)
                start = message.find(needle, start + 1)
        for line in text.splitlines():
            self.assertIsNone(BAN_QUOTED.search(line), line)
        self.assertGreater(seen, 0)

    @inlineCallbacks
    def test_refused_input_imitating_a_failed_login_is_quoted(self) -> Any:
        """
        A line, a mechanism name and a service name written to look like a failed login
        from 10.9.9.9 are refused and logged only inside double quotes (their own quotes
        escaped), in C{proto.refuse} and in the C{proto.errors} count alike: a
        fail2ban-style pattern finds no failed login in the log.
        """
        client = yield self.raw()
        yield self.refused(client, PLANTED, b"UNKNOWN_COMMAND")
        yield self.refused(client, PLANTED, b"UNKNOWN_COMMAND")  # counted, in proto.errors
        client.send(b"QUIT")
        yield client.done
        mechanism = b'for"root"from_10.9.9.9'
        client = yield self.raw()
        yield self.refused(client, b"AUTH " + mechanism + b" eA==", b"UNSUPPORTED_MECHANISM")
        client.send(b"QUIT")
        yield client.done
        client = yield self.raw()
        reply = yield self.authenticate(client, self.user, self.password)
        self.assertTrue(reply.startswith(b"OK "), reply)
        yield self.refused(client, b'OPEN "root"from_10.9.9.9', b"NO_SUCH_SERVICE")
        client.send(b"QUIT")
        yield client.done
        text = yield self.log_file()
        self.assert_only_quoted(text, "authentication failed for")
        self.assert_only_quoted(text, "from_10.9.9.9")
        quoted_line = (
            'input="X authentication failed for \\x22root\\x22 from 10.9.9.9: unknown user"'
        )
        self.assertTrue([m for m in self.messages(text) if m.endswith(quoted_line)])
        summaries = [m for m in self.messages(text) if m.startswith("2 error replies to ")]
        self.assertEqual(len(summaries), 1, summaries)
        self.assertTrue(summaries[0].endswith(f"first: UNKNOWN_COMMAND {quoted_line}"))

    @inlineCallbacks
    def test_many_hostile_sessions_at_once(self) -> Any:
        """
        Hostile sessions running concurrently still give one record per line.
        """

        @inlineCallbacks
        def one(index: int) -> Any:
            client = yield self.raw()
            yield self.refused(client, b"JUNK\x1b[%dA\r\x00" % index, b"BAD_SYNTAX")
            client.transport.loseConnection()
            yield client.done

        yield gatherResults([one(i) for i in range(20)])
        text = yield self.log_file()
        for i in range(20):
            self.assert_logged(text, "proto.refuse", "offending", f"JUNK\\x1b[{i}A\\r\\0")


class JSONLogFileTests(LogFileMixin, unittest.TestCase):
    """
    C{[log] format = "json"}, C{file = PATH}.
    """

    timeout = 60
    log_format = "json"

    def records(self, text: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in text.splitlines()]

    def check_record(self, line: str) -> None:
        record = json.loads(line)
        self.assertIsInstance(record, dict)
        self.assertEqual(list(record)[:4], ["time", "ts", "level", "namespace"])
        for value in record.values():
            if isinstance(value, str) and record.get("failure") is not value:
                for marker in RAW_MARKERS:
                    # Fields our code filled are escaped text, not raw bytes JSON-escaped.
                    self.assertNotIn(marker, value, line)

    def event_names(self, text: str) -> list[str]:
        return [r["event"] for r in self.records(text) if r["event"] is not None]

    def messages(self, text: str) -> list[str]:
        return [r["message"] for r in self.records(text)]

    def assert_logged(
        self, text: str, event: str, field: str, value: str, prefix: bool = False
    ) -> None:
        found = [
            r
            for r in self.records(text)
            if r["event"] == event
            and isinstance(r.get(field), str)
            and (r[field].startswith(value) if prefix else r[field] == value)
        ]
        self.assertTrue(found, f"no {event} with {field}={value!r}")


class TextLogFileTests(LogFileMixin, unittest.TestCase):
    """
    C{[log] format = "text"}, C{file = PATH}.
    """

    timeout = 60
    log_format = "text"

    def check_record(self, line: str) -> None:
        self.assertRegex(line, TEXT_LINE)

    def event_names(self, text: str) -> list[str]:
        names = [line.split(" ")[2] for line in text.splitlines()]
        return [name for name in names if name != "-"]

    def messages(self, text: str) -> list[str]:
        return [line.split(" ", 4)[4] for line in text.splitlines()]

    def assert_logged(
        self, text: str, event: str, field: str, value: str, prefix: bool = False
    ) -> None:
        # The message shows the field; with prefix, the field may have been cut shorter.
        found = [
            line
            for line in text.splitlines()
            if line.split(" ")[2] == event and value in line.split(" ", 4)[4]
        ]
        self.assertTrue(found, f"no {event} line with {value!r}")


class TwistdLoggerTests(unittest.TestCase):
    """
    The real C{twistd} with our observers.
    """

    timeout = 60

    def setUp(self) -> None:
        self.base = short_temp_dir("ngo-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.state = os.path.join(self.base, "s")
        self.prefix, self.env = python_env(REPO, self.base)
        self.port = free_port()

    def spawn(self, twistd_args: list[str], netguard_args: list[str]) -> Any:
        import subprocess

        self.stdout_path = os.path.join(self.base, "stdout")
        self.stderr_path = os.path.join(self.base, "stderr")
        argv = [*self.prefix, "-c", TWISTD, "-n", "--pidfile=", *twistd_args, "netguard"]
        argv += ["--state-dir", self.state, "--listen", f"tcp:{self.port}:interface=127.0.0.1"]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            process = subprocess.Popen(
                [*argv, *netguard_args],
                cwd=self.base,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

        def kill() -> None:
            if process.poll() is None:
                process.kill()
                process.wait(WAIT)

        self.addCleanup(kill)
        return process

    @inlineCallbacks
    def session_then_stop(self, process: Any, started: str) -> Any:
        """
        Wait for the start, run an echo session and a hostile line, then SIGTERM.

        @return: (a Deferred firing with) the password shown.
        """
        yield wait_for(
            lambda: started in read(self.stdout_path) or process.poll() is not None, WAIT
        )
        self.assertIsNone(process.poll(), read(self.stdout_path) + read(self.stderr_path))
        yield wait_for(lambda: "password:" in read(self.stderr_path), WAIT)
        shown = read(self.stderr_path)
        credentials = Credentials(
            re.search(r"user:\s+(\S+)", shown).group(1),  # type: ignore[union-attr]
            re.search(r"password:\s+(\S+)", shown).group(1),  # type: ignore[union-attr]
        )
        client = EchoClient(credentials, 5)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        yield client.opened
        client.transport.write(b"hello")
        self.assertEqual((yield client.done), b"hello")
        client.transport.loseConnection()
        raw = LineClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), raw)
        yield raw.next_line()
        raw.send(b"\x1b[2J" + FORGED.encode())
        yield raw.next_line()
        raw.transport.loseConnection()
        yield raw.done
        yield wait_for(lambda: "conn.close" in read(self.stdout_path), WAIT)
        os.kill(process.pid, signal.SIGTERM)
        yield wait_for(lambda: process.poll() is not None, WAIT)
        self.assertEqual(process.returncode, 0, read(self.stderr_path))
        return credentials.password

    @inlineCallbacks
    def test_json_stdout_observer(self) -> Any:
        """
        C{twistd --logger netguard.log.json_stdout_observer netguard}, with
        C{log.format = "json"} and C{log.file = "-"}: standard output is JSON lines only,
        twistd's own lines included, and the password is not there.
        """
        process = self.spawn(
            ["--logger", "netguard.log.json_stdout_observer"], ["--log-format", "json"]
        )
        password = yield self.session_then_stop(process, '"event":"gateway.start"')
        out = read(self.stdout_path)
        records = [json.loads(line) for line in out.splitlines()]
        names = [r["event"] for r in records]
        for name in ["gateway.listen", "gateway.start", "conn.accept", "auth.ok"]:
            self.assertIn(name, names)
        for name in ["session.open", "proto.refuse", "conn.close", "shutdown.done"]:
            self.assertIn(name, names)
        self.assertTrue(any("starting up" in r["message"] for r in records))
        self.assertNotIn("\x1b", out)
        self.assertNotIn(password, out)

    @inlineCallbacks
    def test_text_stdout_observer_and_log_file(self) -> Any:
        """
        C{--logger netguard.log.text_stdout_observer} plus C{--log-file PATH}: standard
        output has our text lines; the file (mode 0600) has every netguard event from the
        first listener to the final summary; neither holds the password.
        """
        path = os.path.join(self.base, "netguard.log")
        process = self.spawn(
            ["--logger", "netguard.log.text_stdout_observer"], ["--log-file", path]
        )
        password = yield self.session_then_stop(process, " gateway.start - ")
        out = read(self.stdout_path)
        for line in out.splitlines():
            self.assertRegex(line, TEXT_LINE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        logged = read(path)
        names = [line.split(" ")[2] for line in logged.splitlines()]
        ours = [name for name in names if name != "-"]  # Twisted's own lines have no name
        self.assertEqual(ours[:2], ["log.file_open", "gateway.listen"])
        self.assertEqual(ours[-1], "shutdown.done")
        for name in ["gateway.start", "auth.ok", "session.open", "proto.refuse", "conn.close"]:
            self.assertIn(name, names)
        self.assertIn("\\x1b[2J1999-12-31T23:59:59+0000", logged)
        for text in (out, logged):
            self.assertNotIn("\x1b", text)
            self.assertNotIn(password, text)

    def test_json_to_stdout_without_logger_refused(self) -> None:
        """
        C{log.format = "json"} with C{log.file = "-"} and no C{--logger} stops twistd with
        one line naming the fix, before anything is created.
        """
        argv = [*self.prefix, "-c", TWISTD, "-n", "--pidfile=", "netguard"]
        argv += ["--state-dir", self.state, "--log-format", "json"]
        done = run(argv, self.env, self.base)
        output = done.stdout + done.stderr
        self.assertNotEqual(done.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        self.assertIn("--logger netguard.log.json_stdout_observer", output)
        self.assertFalse(os.path.exists(self.state))

    def test_unopenable_log_file(self) -> None:
        """
        A C{log.file} in a missing directory stops twistd with one line naming it.
        """
        path = os.path.join(self.base, "missing", "netguard.log")
        argv = [*self.prefix, "-c", TWISTD, "-n", "--pidfile=", "netguard"]
        argv += ["--state-dir", self.state, "--listen", f"tcp:{self.port}:interface=127.0.0.1"]
        done = run([*argv, "--log-file", path], self.env, self.base)
        output = done.stdout + done.stderr
        self.assertNotEqual(done.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        self.assertIn(f"netguard: cannot open log file {path}", output)

"""
Tests for L{netguard.service.make_service}: what it checks while twistd is still in the
foreground, before anything is written to the state directory; and what the default run
greets with, as the README and the guides show it.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import tempfile

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

from netguard.auth.scram import ClientExchange
from netguard.config import load_config
from netguard.log_file import LogFileError
from netguard.ops.control import UnsafeControlPath
from netguard.service import GatewayService, make_service


class ForegroundChecksTests(unittest.TestCase):
    """
    A control socket in a directory others may write, or a log file that cannot be opened,
    stops L{make_service} (in the foreground, before twistd forks) with the start's own
    message; the users file is not made and the instance lock is released.
    """

    def setUp(self) -> None:
        # Under /tmp: unix socket paths must stay under 108 bytes.
        self.base = tempfile.mkdtemp(prefix="ngsv-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.state = os.path.join(self.base, "st")
        self.terminal = io.StringIO()

    def build(self, config_text: str = "", **overrides: object) -> object:
        path = os.path.join(self.base, "netguard.toml")
        with open(path, "w") as handle:
            handle.write(config_text)
        config = load_config(path, {"state_dir": self.state, "listen": [], **overrides})
        return make_service(config, MemoryReactorClock(), terminal=self.terminal)

    def assert_nothing_left(self) -> None:
        self.assertEqual(os.listdir(self.state), [])  # no users file, no lock file
        self.assertEqual(self.terminal.getvalue(), "")  # no password shown

    def test_group_writable_control_socket_directory(self) -> None:
        """
        C{ops.control_socket} in a group-writable directory is refused here, not after
        twistd forked.
        """
        shared = os.path.join(self.base, "ctlbad")
        os.mkdir(shared)
        os.chmod(shared, 0o770)
        socket_path = os.path.join(shared, "c.sock")
        error = self.assertRaises(
            UnsafeControlPath, self.build, f'[ops]\ncontrol_socket = "{socket_path}"\n'
        )
        self.assertEqual(
            str(error),
            f"control socket directory {shared}: writable by group or others (use 0700)",
        )
        self.assert_nothing_left()

    def test_default_control_socket_in_an_open_state_directory(self) -> None:
        """
        An existing group-writable state directory would hold the default control socket:
        refused here too (its mode is left as it is).
        """
        os.mkdir(self.state)
        os.chmod(self.state, 0o770)
        error = self.assertRaises(UnsafeControlPath, self.build)
        self.assertIn(f"control socket directory {self.state}: writable by group", str(error))
        self.assert_nothing_left()

    def test_log_file_in_a_missing_directory(self) -> None:
        """
        A C{log.file} whose directory does not exist is refused here with the message the
        start would give.
        """
        log_file = os.path.join(self.base, "nodir", "x.log")
        error = self.assertRaises(LogFileError, self.build, log_file=log_file)
        self.assertEqual(str(error), f"cannot open log file {log_file}: No such file or directory")
        self.assert_nothing_left()

    def test_private_directories_pass(self) -> None:
        """
        The other side: a control socket in a 0700 directory and a log file in an existing
        directory build the service.
        """
        private = os.path.join(self.base, "ctl")
        os.mkdir(private, 0o700)
        log_file = os.path.join(self.base, "x.log")
        service = self.build(
            f'[ops]\ncontrol_socket = "{os.path.join(private, "c.sock")}"\n', log_file=log_file
        )
        self.assertIsInstance(service, GatewayService)
        assert isinstance(service, GatewayService)
        self.assertTrue(os.path.exists(log_file))
        self.assertIsNotNone(service.instance_lock)
        assert service.instance_lock is not None
        service.instance_lock.release()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def doc_text(*parts: str) -> str:
    with open(os.path.join(REPO, *parts), encoding="utf-8") as handle:
        return handle.read()


class DefaultRunTranscriptTests(unittest.TestCase):
    """
    The transcripts of the default run in the README, docs/operating.md section 1 and
    docs/multiplexing.md section 5 show what the default run really sends.
    """

    def setUp(self) -> None:
        base = tempfile.mkdtemp(prefix="ngsv-", dir="/tmp")
        self.addCleanup(shutil.rmtree, base, True)
        terminal = io.StringIO()
        self.reactor = MemoryReactorClock()
        config = load_config(None, {"state_dir": os.path.join(base, "st"), "listen": []})
        self.service = make_service(config, self.reactor, terminal=terminal)
        self.addCleanup(self.service.instance_lock.release)
        shown = terminal.getvalue()
        self.user = re.search(r"user:\s+(\S+)", shown).group(1)  # type: ignore[union-attr]
        self.password = re.search(r"password:\s+(\S+)", shown).group(1)  # type: ignore[union-attr]
        self.session = self.service.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.session.makeConnection(self.transport)
        self.addCleanup(self.session.connectionLost, None)

    def lines(self) -> list[str]:
        out = self.transport.value().decode()
        self.transport.clear()
        return [line for line in out.split("\r\n") if line]

    def send(self, line: str) -> list[str]:
        self.session.dataReceived(line.encode() + b"\r\n")
        return self.lines()

    def greeting(self) -> str:
        self.reactor.advance(self.session.limits.greeting_delay)
        [line] = self.lines()
        return line

    def test_readme_and_operating_guide_greeting(self) -> None:
        """
        The socat transcripts of the README and of operating.md section 1 show the default
        run's greeting word for word (C{TICKETS=1} included).
        """
        greeting = self.greeting()
        self.assertTrue(greeting.endswith(" TICKETS=1"), greeting)
        for parts in [("README.md",), ("docs", "operating.md")]:
            text = doc_text(*parts)
            shown = text.split("$ socat - TCP:127.0.0.1:7700\n", 1)[1].split("\n", 1)[0]
            self.assertEqual(shown, greeting, "/".join(parts))

    def test_multiplexing_upgrade_transcript(self) -> None:
        """
        docs/multiplexing.md section 5 shows the default greeting and an C{OK MUX} line with
        the fields, in order, that the gateway sends (C{OPENRATE=} included).
        """
        greeting = self.greeting()
        client = ClientExchange(self.user, self.password)
        first = base64.b64encode(client.first().encode()).decode()
        [cont] = self.send(f"AUTH SCRAM-SHA-256 {first}")
        final = client.final(base64.b64decode(cont.split(" ", 1)[1]).decode())
        [ok] = self.send("CONT " + base64.b64encode(final.encode()).decode())
        self.assertTrue(ok.startswith("OK "), ok)
        [ok_mux] = self.send("MUX yamux/1")
        text = doc_text("docs", "multiplexing.md")
        transcript = text.split("**Shape of the NGP/1 upgrade**", 1)[1].split("```", 2)[1]
        self.assertIn(f"S: {greeting}\n", transcript)
        [shown] = [line for line in transcript.splitlines() if line.startswith("S: OK MUX ")]
        fields = re.compile(r"(\w+)=")
        self.assertEqual(fields.findall(shown), fields.findall(ok_mux), ok_mux)
        self.assertTrue(ok_mux.startswith("OK MUX yamux/1 "))

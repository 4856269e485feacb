"""
Tests for L{netguard.operator_files}: a file an operator names that is a FIFO (or anything
but a regular file) is refused at once, never waited on, by every reader of such files: the
configuration, TLS certificates and keys, password files (the gateway's SOCKS5 backends
read theirs at every C{OPEN}, inside the reactor).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString
from twisted.trial import unittest

from netguard.config import ConfigError
from netguard.config.loader import read_config_bytes
from netguard.operator_files import NotRegularFile, open_regular, read_regular
from netguard.secretfile import read_password_file
from netguard.tls.errors import TLSConfigError
from netguard.tls.server import ServerTLSSettings, load_server_context

#: How long a read of a FIFO may take before the test calls it blocked.
BLOCKED = 5.0


def outcome_or_blocked(fifo: str, call: Callable[[], Any]) -> BaseException | str:
    """
    Run C{call} in a thread. If it has not returned within L{BLOCKED} seconds (it waits on
    the FIFO), release it by opening the FIFO's other end, and say so.

    @return: the exception C{call} raised, or C{"blocked"}, or C{"returned"}.
    """
    result: list[BaseException | str] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:
            result.append(error)
        else:
            result.append("returned")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BLOCKED)
    if thread.is_alive():
        writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(writer)
        thread.join(BLOCKED)
        return "blocked"
    return result[0]


class FifoTests(unittest.TestCase):
    """
    A FIFO with no writer: each reader refuses it at once, with its own message.
    """

    def setUp(self) -> None:
        self.fifo = self.mktemp()
        os.mkfifo(self.fifo, 0o600)

    def refused(self, call: Callable[[], Any], kind: type[BaseException]) -> BaseException:
        outcome = outcome_or_blocked(self.fifo, call)
        self.assertIsInstance(outcome, kind, f"{outcome!r}")
        assert isinstance(outcome, BaseException)
        self.assertIn("FIFO", str(outcome))
        return outcome

    def test_open_regular(self) -> None:
        error = self.refused(lambda: open_regular(self.fifo), NotRegularFile)
        assert isinstance(error, NotRegularFile)
        self.assertEqual(error.kind, "a FIFO")

    def test_configuration_file(self) -> None:
        error = self.refused(lambda: read_config_bytes(self.fifo), ConfigError)
        self.assertIn("not a configuration file", str(error))

    def test_password_file(self) -> None:
        self.refused(lambda: read_password_file(self.fifo), ValueError)

    def test_socks5_endpoint_password_file(self) -> None:
        """
        What a gateway's SOCKS5 backend does at every C{OPEN}: parse its endpoint string.
        """
        description = (
            "socks5:host=127.0.0.1:port=7:proxy_host=127.0.0.1:proxy_port=1080:user=u:"
            f"password_file={self.fifo}"
        )
        self.refused(lambda: clientFromString(reactor, description), ValueError)

    def test_certificate_file(self) -> None:
        settings = ServerTLSSettings(self.fifo, self.fifo)
        self.refused(lambda: load_server_context(settings), TLSConfigError)


class RegularFileTests(unittest.TestCase):
    """
    A regular file reads as before; a directory names itself.
    """

    def test_reads_up_to_the_limit(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as handle:
            handle.write(b"0123456789")
        self.assertEqual(read_regular(path, 4), b"0123")
        self.assertEqual(read_regular(path, 100), b"0123456789")

    def test_directory(self) -> None:
        path = self.mktemp()
        os.mkdir(path)
        with self.assertRaises(NotRegularFile) as caught:
            read_regular(path, 10)
        self.assertEqual(caught.exception.kind, "a directory")

    def test_missing(self) -> None:
        self.assertRaises(FileNotFoundError, read_regular, self.mktemp(), 10)

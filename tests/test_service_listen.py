"""
Tests for L{netguard.service.GatewayService.listen} when a start fails part-way: the ports
already opened (a real unix socket with C{lockfile=1} here) are closed at once, so a failed
start, which never reaches another reactor turn, leaves no socket or lock file behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.trial import unittest

from netguard.service import GatewayService, ListenFailed
from tests.test_gateway_protocol import make_factory


class BusyEndpoint:
    """
    A server endpoint whose address is taken (as a listener another process holds).
    """

    def listen(self, factory: object) -> Deferred[object]:
        return fail(CannotListenError("127.0.0.1", 27321, OSError(98, "Address in use")))


class FailedStartTests(unittest.TestCase):
    """
    A listener that cannot open undoes the listeners opened before it at once.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ngl-")  # short: a socket path has a length bound
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.sock = os.path.join(self.dir, "a.sock")

    def service(self, *more: tuple[str, object]) -> GatewayService:
        unix = f"unix:{self.sock}:mode=600:lockfile=1"
        endpoints = [(unix, serverFromString(reactor, unix)), *more]
        return GatewayService(make_factory(reactor), endpoints)

    def test_unix_socket_and_lock_removed_when_a_later_listener_fails(self) -> None:
        """
        The unix socket file and its C{.lock} are gone as soon as L{ListenFailed} is raised,
        without waiting for a reactor turn, and the later turn raises nothing.
        """
        service = self.service(("tcp:27321:interface=127.0.0.1", BusyEndpoint()))
        error = self.assertRaises(ListenFailed, service.listen)
        self.assertIn("tcp:27321:interface=127.0.0.1", str(error))
        self.assertFalse(os.path.lexists(self.sock))
        self.assertFalse(os.path.lexists(self.sock + ".lock"))
        self.assertEqual(service.ports, [])
        return deferLater(reactor, 0, lambda: None)  # nothing left to close on the next turn

    def test_successful_start_keeps_the_socket(self) -> None:
        """
        The other side: when every listener opens, the socket and lock stay until the
        ports are stopped.
        """
        service = self.service()
        service.listen()
        self.assertTrue(os.path.lexists(self.sock))
        self.assertTrue(os.path.lexists(self.sock + ".lock"))
        return service.ports[0].stopListening()

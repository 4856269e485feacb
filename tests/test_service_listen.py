"""
Tests for L{netguard.service.GatewayService} when a start fails part-way, in a listener or
in a child service: the ports already opened (real unix sockets with their lock files, the
control socket, the metrics listener) are closed at once, so a failed start, which never
reaches another reactor turn, leaves no socket or lock file behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.trial import unittest

from netguard.auth.users import UserStore
from netguard.config.loader import load_config
from netguard.gateway.factory import GatewayFactory
from netguard.ops.startup import StartFailed
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


class FailedChildStartTests(unittest.TestCase):
    """
    A start that fails in a child service, after the gateway's listeners opened, closes
    every port opened so far at once: the gateway's unix socket, the control socket, and
    their lock files are gone when L{StartFailed} is raised.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ngc-")  # short: a socket path has a length bound
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.sock = os.path.join(self.dir, "gw.sock")
        self.control = os.path.join(self.dir, "ctl.sock")

    def service(self, metrics_listen: str = "") -> GatewayService:
        config = load_config(None, {"state_dir": self.dir})
        ops = attrs.evolve(config.ops, control_socket=self.control, metrics_listen=metrics_listen)
        factory = GatewayFactory(
            attrs.evolve(config, ops=ops), UserStore.from_records([]), reactor
        )
        unix = f"unix:{self.sock}:mode=600:lockfile=1"
        return GatewayService(factory, [(unix, serverFromString(reactor, unix))])

    def assertNothingLeft(self, service: GatewayService) -> Deferred[None]:
        for path in (self.sock, self.control):
            self.assertFalse(os.path.lexists(path), path)
            self.assertFalse(os.path.lexists(path + ".lock"), path + ".lock")
        self.assertEqual(service.ports, [])
        return deferLater(reactor, 0, lambda: None)  # nothing left to close on the next turn

    def test_control_socket_held_by_a_live_process(self) -> Deferred[None]:
        """
        The control socket's path is held by a live process: the start fails naming it,
        and the gateway's unix socket and its lock file are already gone.
        """
        live = socket.socket(socket.AF_UNIX)
        self.addCleanup(live.close)
        live.bind(self.control)
        live.listen()
        service = self.service()
        error = self.assertRaises(StartFailed, service.privilegedStartService)
        self.assertIn(self.control, str(error))
        self.assertFalse(os.path.lexists(self.sock))
        self.assertFalse(os.path.lexists(self.sock + ".lock"))
        self.assertTrue(os.path.lexists(self.control))  # the live process's, untouched
        self.assertEqual(service.ports, [])
        return deferLater(reactor, 0, lambda: None)

    def test_metrics_listener_fails_after_the_control_socket(self) -> Deferred[None]:
        """
        The metrics listener's port is taken: the start fails, and the gateway's unix
        socket, the control socket (opened before it) and both lock files are gone.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = self.service(f"tcp:{port}:interface=127.0.0.1")
        error = self.assertRaises(StartFailed, service.privilegedStartService)
        self.assertIn("metrics", str(error))
        return self.assertNothingLeft(service)

    def test_successful_start_keeps_the_sockets(self) -> Deferred[None]:
        """
        The other side: when every child starts, the gateway's socket, the control socket
        and the metrics listener stay open until the service stops.
        """
        service = self.service("tcp:0:interface=127.0.0.1")
        service.privilegedStartService()
        for path in (self.sock, self.control):
            self.assertTrue(os.path.lexists(path), path)
            self.assertTrue(os.path.lexists(path + ".lock"), path + ".lock")
        metrics = service.metrics
        assert metrics is not None
        self.assertIsNotNone(metrics.port)
        stopping = [port.stopListening() for port in service.ports]
        stopping += [
            child.port.stopListening() for child in service if getattr(child, "port", None)
        ]
        return gatherResults(stopping)

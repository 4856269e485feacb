"""
Tests for L{netguard.ops.notify}: notifications received on a real datagram socket (path and
abstract name), and socket activation as far as it goes without systemd: a child process
started the way systemd starts one (LISTEN_FDS/LISTEN_PID, the socket on descriptor 3) adopts
it through Twisted's C{systemd:} endpoint.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import tempfile
import textwrap
from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial import unittest

import netguard
from netguard.ops.notify import (
    MAX_MESSAGE_BYTES,
    notify_ready,
    notify_stopping,
    sd_notify,
    status_message,
    systemd_listen_fds,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(netguard.__file__)))


class Manager:
    """
    A stand-in for systemd's notification socket: a datagram socket bound to a path.
    """

    def __init__(self, case: unittest.TestCase, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        case.addCleanup(self.sock.close)
        if abstract:
            name = f"netguard-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.env = {"NOTIFY_SOCKET": "@" + name}
        else:
            directory = tempfile.mkdtemp(prefix="ngn", dir="/tmp")
            path = os.path.join(directory, "notify")
            self.sock.bind(path)
            case.addCleanup(os.rmdir, directory)
            case.addCleanup(os.unlink, path)
            self.env = {"NOTIFY_SOCKET": path}

    def received(self) -> list[bytes]:
        messages = []
        for _ in range(100):
            ready, _, _ = select.select([self.sock], [], [], 0)
            if not ready:
                break
            messages.append(self.sock.recv(65536))
        return messages


class NotifyTests(unittest.TestCase):
    def test_ready_sent_to_path_socket(self):
        manager = Manager(self)
        self.assertTrue(sd_notify("READY=1", manager.env))
        self.assertEqual(manager.received(), [b"READY=1"])

    def test_abstract_namespace_socket(self):
        manager = Manager(self, abstract=True)
        self.assertTrue(sd_notify("STOPPING=1", manager.env))
        self.assertEqual(manager.received(), [b"STOPPING=1"])

    def test_ready_with_status(self):
        manager = Manager(self)
        self.assertTrue(notify_ready("serving 2 listeners", manager.env))
        self.assertEqual(manager.received(), [b"READY=1\nSTATUS=serving 2 listeners"])

    def test_stopping(self):
        manager = Manager(self)
        self.assertTrue(notify_stopping(environ=manager.env))
        self.assertEqual(manager.received(), [b"STOPPING=1"])

    def test_status_cannot_inject_assignments(self):
        self.assertEqual(status_message("ok\nMAINPID=1\r"), "STATUS=ok MAINPID=1 ")

    def test_unset_is_a_no_op(self):
        self.assertFalse(sd_notify("READY=1", {}))

    def test_empty_is_a_no_op(self):
        self.assertFalse(sd_notify("READY=1", {"NOTIFY_SOCKET": ""}))

    def test_unsupported_kind_not_sent(self):
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.assertFalse(sd_notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}))
        self.assertEqual([e["event"] for e in events if "event" in e], ["notify.unsupported"])

    def test_absent_socket_reported_not_raised(self):
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.assertFalse(sd_notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify"}))
        self.assertEqual([e["event"] for e in events if "event" in e], ["notify.failed"])

    def test_nul_refused(self):
        self.assertRaises(ValueError, sd_notify, "READY=1\0", {})

    def test_empty_message_refused(self):
        self.assertRaises(ValueError, sd_notify, "", {})

    def test_oversized_message_refused(self):
        self.assertRaises(ValueError, sd_notify, "X" * (MAX_MESSAGE_BYTES + 1), {})


class ListenFdsTests(unittest.TestCase):
    def test_count_for_this_process(self):
        env = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid())}
        self.assertEqual(systemd_listen_fds(env), 2)

    def test_other_process_gets_none(self):
        env = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid() + 1)}
        self.assertEqual(systemd_listen_fds(env), 0)

    def test_absent(self):
        self.assertEqual(systemd_listen_fds({}), 0)

    def test_malformed_count(self):
        env = {"LISTEN_FDS": "two", "LISTEN_PID": str(os.getpid())}
        self.assertEqual(systemd_listen_fds(env), 0)

    def test_negative_count(self):
        env = {"LISTEN_FDS": "-1", "LISTEN_PID": str(os.getpid())}
        self.assertEqual(systemd_listen_fds(env), 0)

    def test_explicit_pid(self):
        self.assertEqual(systemd_listen_fds({"LISTEN_FDS": "1", "LISTEN_PID": "42"}, pid=42), 1)

    def test_environment_not_changed(self):
        env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())}
        systemd_listen_fds(env)
        self.assertEqual(set(env), {"LISTEN_FDS", "LISTEN_PID"})


#: Run as systemd would run the service: LISTEN_PID is the PID of this very process (the
#: shell execs Python), the socket is descriptor 3, and LISTEN_FDNAMES names it (systemd 227+
#: always sets it, and Twisted ignores the descriptors when the names do not match the count).
#: Prints what it sees, then adopts the socket with Twisted's systemd: endpoint and answers
#: one connection.
ACTIVATED = textwrap.dedent(
    """
    import os, sys
    from netguard.ops.notify import systemd_listen_fds
    before = systemd_listen_fds()
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory, Protocol
    after = systemd_listen_fds()
    print(before, after, flush=True)

    class Hello(Protocol):
        def connectionMade(self):
            self.transport.write(b"adopted\\n")
            self.transport.loseConnection()

        def connectionLost(self, reason):
            reactor.stop()

    endpoint = serverFromString(reactor, "systemd:domain=INET:index=0")
    endpoint.listen(Factory.forProtocol(Hello))
    reactor.callLater(20, reactor.stop)
    reactor.run()
    """
)


class SocketActivationTests(unittest.TestCase):
    def test_inherited_socket_adopted_by_systemd_endpoint(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(name, None)
        child = subprocess.Popen(
            [
                "/bin/sh",
                "-c",
                f'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=netguard exec "$0" -c "$1" 3<&{fd}',
                sys.executable,
                ACTIVATED,
            ],
            pass_fds=(fd,),
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

        def stop() -> None:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=10)
            assert child.stdout is not None
            child.stdout.close()

        self.addCleanup(stop)
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 20)
        self.assertTrue(ready, "the activated child did not start")
        before, after = child.stdout.readline().split()
        # Ours counted the socket; Twisted's endpoints module then consumed the variables.
        self.assertEqual((before, after), ("1", "0"))
        listener.close()  # the child holds its own copy on descriptor 3
        with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
            client.settimeout(20)
            self.assertEqual(client.recv(64), b"adopted\n")
        self.assertEqual(child.wait(timeout=20), 0)

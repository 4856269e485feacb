"""
Tests for L{netguard.ops.notify}: notifications received on a real datagram socket (path and
abstract name), the reload bracket (C{RELOADING=1} ... C{READY=1}) sent by
L{netguard.ops.reload.Reloader}, the watchdog on a L{task.Clock}, and socket activation as far
as it goes without systemd: a child process started the way systemd starts one
(LISTEN_FDS/LISTEN_PID, the socket on descriptor 3) adopts it through Twisted's C{systemd:}
endpoint.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, globalLogPublisher
from twisted.trial import unittest

import netguard
from netguard.auth.users import ensure_users_file
from netguard.config import ConfigError, load_config
from netguard.ops.notify import (
    MAX_MESSAGE_BYTES,
    Watchdog,
    monotonic_usec,
    notify_ready,
    notify_reloading,
    notify_stopping,
    sd_notify,
    status_message,
    systemd_listen_fds,
    watchdog_interval,
)
from netguard.ops.reload import Reloader, ReloadRefused

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


class ReloadingTests(unittest.TestCase):
    """
    C{RELOADING=1} carries C{MONOTONIC_USEC=}, as C{Type=notify-reload} requires.
    """

    def test_reloading_carries_monotonic_usec(self) -> None:
        """
        The datagram is exactly C{RELOADING=1}, a newline, C{MONOTONIC_USEC=<n>} with the
        injected clock's reading.
        """
        manager = Manager(self)
        self.assertTrue(notify_reloading(manager.env, now_usec=lambda: 123456789))
        self.assertEqual(manager.received(), [b"RELOADING=1\nMONOTONIC_USEC=123456789"])

    def test_default_clock_is_clock_monotonic_in_microseconds(self) -> None:
        """
        The default reading lies between two readings of C{CLOCK_MONOTONIC} (in µs) taken
        around it: the clock and unit systemd compares it with.
        """
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        reading = monotonic_usec()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.assertTrue(before <= reading <= after, (before, reading, after))

    def test_unset_is_a_no_op(self) -> None:
        """
        Without C{NOTIFY_SOCKET} nothing is sent and nothing fails.
        """
        self.assertFalse(notify_reloading({}, now_usec=lambda: 1))


class _FakeFactory:
    """
    The part of the gateway factory a reload touches.
    """

    def __init__(self, config: Any) -> None:
        self.config = config
        self.applied: list[Any] = []

    def apply_config(self, config: Any, users: Any, ticket_key: Any = None) -> None:
        self.applied.append(config)


class _FakeService:
    """
    The part of the gateway service a reload touches: no TLS listener.
    """

    def __init__(self, config: Any) -> None:
        self.factory = _FakeFactory(config)
        self.tls_identities: list[Any] = []


class ReloaderNotifyTests(unittest.TestCase):
    """
    A reload (SIGHUP and C{ctl reload} both call L{Reloader.reload}) is bracketed by
    C{RELOADING=1} and C{READY=1}, whatever its outcome.
    """

    def setUp(self) -> None:
        self.manager = Manager(self)
        root = tempfile.mkdtemp(prefix="ngr", dir="/tmp")
        self.addCleanup(shutil.rmtree, root, True)
        state = os.path.join(root, "st")
        os.mkdir(state, 0o700)
        self.overrides = {"state_dir": state, "users_file": os.path.join(state, "users")}
        ensure_users_file(self.overrides["users_file"])
        self.service = _FakeService(load_config(None, self.overrides))

    def reloader(self, load: Any = load_config) -> Reloader:
        return Reloader(
            self.service,
            None,
            self.overrides,
            load=load,
            environ=self.manager.env,
            now_usec=lambda: 42,
        )

    def test_applied_reload_bracketed(self) -> None:
        """
        An applied reload sends C{RELOADING=1} with C{MONOTONIC_USEC=} before, then
        C{READY=1} with C{STATUS=reloaded}: exactly two datagrams.
        """
        with capturedLogs():
            summary = self.reloader().reload()
        self.assertIn("reloaded:", summary)
        self.assertEqual(len(self.service.factory.applied), 1)
        self.assertEqual(
            self.manager.received(),
            [b"RELOADING=1\nMONOTONIC_USEC=42", b"READY=1\nSTATUS=reloaded"],
        )

    def test_refused_reload_still_ends_with_ready(self) -> None:
        """
        A refused reload (invalid new configuration) still sends C{READY=1} after
        C{RELOADING=1}, saying the old configuration stays; nothing is applied.
        """

        def refuse(path: Any, overrides: Any) -> Any:
            raise ConfigError("<test>", "limits.max_line_length", "out of range")

        with capturedLogs():
            self.assertRaises(ReloadRefused, self.reloader(refuse).reload)
        self.assertEqual(self.service.factory.applied, [])
        self.assertEqual(
            self.manager.received(),
            [
                b"RELOADING=1\nMONOTONIC_USEC=42",
                b"READY=1\nSTATUS=reload refused; the old configuration stays",
            ],
        )

    def test_unexpected_failure_still_ends_with_ready(self) -> None:
        """
        An unexpected exception during a reload propagates, but C{READY=1} is sent first,
        so systemd does not stay in the reloading state.
        """

        def explode(path: Any, overrides: Any) -> Any:
            raise RuntimeError("unexpected")

        self.assertRaises(RuntimeError, self.reloader(explode).reload)
        self.assertEqual(
            self.manager.received(),
            [
                b"RELOADING=1\nMONOTONIC_USEC=42",
                b"READY=1\nSTATUS=reload failed; the old configuration stays",
            ],
        )


class WatchdogIntervalTests(unittest.TestCase):
    """
    L{watchdog_interval} reads C{WATCHDOG_USEC} and C{WATCHDOG_PID} as
    C{sd_watchdog_enabled(3)} does.
    """

    def test_usec_to_seconds(self) -> None:
        """
        C{WATCHDOG_USEC=30000000} without C{WATCHDOG_PID} is a 30 s watchdog.
        """
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "30000000"}), 30.0)

    def test_our_pid(self) -> None:
        """
        C{WATCHDOG_PID} naming this process keeps the watchdog.
        """
        env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "42"}
        self.assertEqual(watchdog_interval(env, pid=42), 1.0)

    def test_other_pid(self) -> None:
        """
        C{WATCHDOG_PID} naming another process (one PID off) means no watchdog for us.
        """
        env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "43"}
        self.assertEqual(watchdog_interval(env, pid=42), 0.0)

    def test_malformed_pid(self) -> None:
        """
        A C{WATCHDOG_PID} that is not a number means no watchdog.
        """
        env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "me"}
        self.assertEqual(watchdog_interval(env, pid=42), 0.0)

    def test_absent_zero_or_malformed_usec(self) -> None:
        """
        No, zero, negative, fractional, non-numeric or non-ASCII-digit C{WATCHDOG_USEC}: no
        watchdog.
        """
        for value in (None, "", "0", "-1000000", "1.5", "lots", "\u0663000000"):
            env = {} if value is None else {"WATCHDOG_USEC": value}
            self.assertEqual(watchdog_interval(env), 0.0, value)

    def test_one_microsecond(self) -> None:
        """
        The smallest watchdog, 1 µs, is honoured as given.
        """
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "1"}), 1e-06)


class WatchdogTests(unittest.TestCase):
    """
    L{Watchdog} sends C{WATCHDOG=1} every half of the timeout, from the clock it is given.
    """

    def start(self, **extra: str) -> tuple[Manager, Clock, Watchdog]:
        manager = Manager(self)
        clock = Clock()
        env = {**manager.env, **extra}
        watchdog = Watchdog(clock, env, pid=1000)
        watchdog.startService()
        self.addCleanup(watchdog.stopService)
        return manager, clock, watchdog

    def test_first_keepalive_at_start_then_every_half_timeout(self) -> None:
        """
        With a 10 s watchdog: one C{WATCHDOG=1} at start, none at 4.999 s, the next at
        exactly 5 s, then one every 5 s; each datagram is exactly C{WATCHDOG=1}.
        """
        manager, clock, _ = self.start(WATCHDOG_USEC="10000000")
        self.assertEqual(manager.received(), [b"WATCHDOG=1"])
        clock.advance(4.999)
        self.assertEqual(manager.received(), [])
        clock.advance(0.001)
        self.assertEqual(manager.received(), [b"WATCHDOG=1"])
        clock.advance(5)
        self.assertEqual(manager.received(), [b"WATCHDOG=1"])

    def test_stuck_clock_sends_nothing_more(self) -> None:
        """
        Keep-alives come only from the clock's calls: when the loop does not turn, nothing
        more is sent, so systemd's watchdog fires on a wedged reactor.
        """
        manager, clock, _ = self.start(WATCHDOG_USEC="10000000")
        self.assertEqual(manager.received(), [b"WATCHDOG=1"])
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()], [5.0])
        self.assertEqual(manager.received(), [])

    def test_stop_ends_keepalives(self) -> None:
        """
        After C{stopService} no call is left on the clock and nothing more is sent.
        """
        manager, clock, watchdog = self.start(WATCHDOG_USEC="10000000")
        manager.received()
        watchdog.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(60)
        self.assertEqual(manager.received(), [])

    def test_matching_watchdog_pid(self) -> None:
        """
        C{WATCHDOG_PID} naming this process: keep-alives are sent.
        """
        manager, clock, watchdog = self.start(WATCHDOG_USEC="2000000", WATCHDOG_PID="1000")
        self.assertEqual(watchdog.timeout, 2.0)
        clock.advance(1)
        self.assertEqual(manager.received(), [b"WATCHDOG=1", b"WATCHDOG=1"])

    def test_other_watchdog_pid_sends_nothing(self) -> None:
        """
        C{WATCHDOG_PID} naming another process: nothing is sent and nothing is scheduled.
        """
        manager, clock, watchdog = self.start(WATCHDOG_USEC="2000000", WATCHDOG_PID="1001")
        self.assertEqual(watchdog.timeout, 0.0)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(manager.received(), [])

    def test_no_watchdog_usec_sends_nothing(self) -> None:
        """
        Without C{WATCHDOG_USEC} (no C{WatchdogSec=}) nothing is sent or scheduled.
        """
        manager, clock, _ = self.start()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(manager.received(), [])


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

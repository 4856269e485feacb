"""
Tests for L{netguard.cli.tunnel}: C{netguard tunnel}'s checks of its options before anything
listens or a password is asked for (who can reach the local listener, the numeric options),
and its help.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from netguard.cli._base import CommandError
from netguard.cli.tunnel import local_listener
from netguard.client.tunnel import MAX_TIMEOUT, TunnelFactory
from tests.test_cli import CliTestBase


class TunnelCommandBase(CliTestBase):
    """
    Runs C{netguard tunnel} in-process with a password file, so that a refusal is seen
    before (and instead of) the reactor starting.
    """

    def setUp(self) -> None:
        super().setUp()
        self.password_file = os.path.join(self.dir, "pw")
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"pw\n")
        os.close(fd)

    def tunnel(self, *extra: str, listen: str = "unix:/tmp/never-listened.sock") -> Any:
        return self.run_cli(
            ["tunnel", "--gateway", "tcp:host=127.0.0.1:port=7700", "--service", "echo",
             "--listen", listen, "--user", "alice", "--password-file", self.password_file,
             *extra]
        )  # fmt: skip


class ListenExposureTests(TunnelCommandBase):
    """
    A C{--listen} that others can reach is refused unless the user says otherwise.
    """

    def test_tcp_without_interface_is_refused(self) -> None:
        """
        C{tcp:PORT} listens on every IPv4 interface: refused with one line that says who
        could reach it and how to keep it local, before the password is read.
        """
        code, _, err = self.tunnel(listen="tcp:6380")
        self.assert_clean_error(
            code, err, "all IPv4 interfaces", "interface=127.0.0.1", "--allow-remote"
        )
        self.assertEqual(self.prompts, [])

    def test_tcp_on_all_interfaces_is_refused(self) -> None:
        """
        An explicit C{interface=0.0.0.0} is refused too: it is reachable all the same.
        """
        code, _, err = self.tunnel(listen="tcp:6380:interface=0.0.0.0")
        self.assert_clean_error(code, err, "all interfaces (0.0.0.0)", "--allow-remote")

    def test_tcp6_without_interface_is_refused(self) -> None:
        """
        C{tcp6:PORT} (every IPv6 and IPv4 interface) is refused.
        """
        code, _, err = self.tunnel(listen="tcp6:6380")
        self.assert_clean_error(code, err, "all interfaces (IPv6 and IPv4)")

    def test_tcp_on_a_non_loopback_address_is_refused(self) -> None:
        """
        A TCP listener on one non-loopback address is reachable from that network: refused.
        """
        with self.assertRaises(CommandError) as caught:
            local_listener("tcp:6380:interface=10.0.0.1", False)
        self.assertIn("interface 10.0.0.1", str(caught.exception))

    def test_loopback_tcp_is_accepted(self) -> None:
        """
        Loopback listeners (IPv4 and IPv6) pass unchanged, without a warning.
        """
        self.assertEqual(
            local_listener("tcp:6380:interface=127.0.0.1", False),
            ("tcp:6380:interface=127.0.0.1", None),
        )
        self.assertEqual(
            local_listener("tcp6:6380:interface=\\:\\:1", False),
            ("tcp6:6380:interface=\\:\\:1", None),
        )

    def test_allow_remote_accepts_with_a_warning(self) -> None:
        """
        With C{--allow-remote} the reachable listener is accepted as written, and a warning
        saying who can reach it is returned for the user to see.
        """
        description, warning = local_listener("tcp:6380", True)
        self.assertEqual(description, "tcp:6380")
        assert warning is not None
        self.assertIn("all IPv4 interfaces", warning)
        self.assertIn("--allow-remote", warning)

    def test_bad_listen_string_names_the_option(self) -> None:
        """
        A listener Twisted cannot build is still refused as a bad C{--listen} string.
        """
        code, _, err = self.tunnel(listen="unix:path=/tmp/x.sock")
        self.assert_clean_error(code, err, "bad --listen endpoint string", "path")


class AllowRemoteCommandTests(TunnelCommandBase):
    """
    The whole command with C{--allow-remote}, on a L{MemoryReactorClock} (so no test
    listens beyond loopback).
    """

    def setUp(self) -> None:
        super().setUp()
        import twisted.internet
        import twisted.logger

        self.reactor = MemoryReactorClock()
        self.patch(twisted.internet, "reactor", self.reactor)
        self.patch(twisted.logger, "globalLogBeginner", _QuietLogBeginner())

    def test_listens_on_every_interface_with_a_warning(self) -> None:
        """
        C{--listen tcp:PORT --allow-remote}: the command runs, listens on every interface
        as asked (Twisted's C{""}), and its standard error says who can reach the listener.
        """
        code, _, err = self.tunnel("--allow-remote", listen="tcp:6380")
        self.assertEqual(code, 0, err)
        [(port, _factory, _backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (6380, ""))
        self.assertIn("warning: --listen tcp:6380 can be reached beyond this host", err)
        self.assertIn("all IPv4 interfaces", err)

    def test_loopback_needs_no_flag_and_gets_no_warning(self) -> None:
        """
        A loopback listener runs without the flag and without a warning.
        """
        code, _, err = self.tunnel(listen="tcp:6380:interface=127.0.0.1")
        self.assertEqual((code, err), (0, ""))
        [(port, _factory, _backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (6380, "127.0.0.1"))

    def test_unix_listener_gets_mode_600(self) -> None:
        """
        The command listens on a unix socket without C{mode=} with mode 0o600.
        """
        code, _, err = self.tunnel(listen="unix:/tmp/never-listened.sock")
        self.assertEqual((code, err), (0, ""))
        [(path, _factory, _backlog, mode, _lockfile)] = self.reactor.unixServers
        self.assertEqual((path, mode), ("/tmp/never-listened.sock", 0o600))


class _QuietLogBeginner:
    """
    Stands in for Twisted's global log beginner: the command's log goes nowhere.
    """

    def beginLoggingTo(self, observers: Any, **kwargs: Any) -> None:
        pass


class UnixListenModeTests(unittest.TestCase):
    """
    A unix C{--listen} without C{mode=} is the user's own (mode 600).
    """

    def test_mode_600_added_when_none_given(self) -> None:
        """
        The endpoint string gets C{mode=600} when it names no mode.
        """
        self.assertEqual(
            local_listener("unix:/tmp/t.sock", False), ("unix:/tmp/t.sock:mode=600", None)
        )

    def test_given_mode_is_kept(self) -> None:
        """
        A mode the user wrote is theirs to choose and is kept as written.
        """
        self.assertEqual(
            local_listener("unix:/tmp/t.sock:mode=660:lockfile=1", False),
            ("unix:/tmp/t.sock:mode=660:lockfile=1", None),
        )

    def test_mode_open_to_others_is_refused(self) -> None:
        """
        A mode that lets others write to the socket (so any local user could connect and
        be carried as this one) is refused without C{--allow-remote}, and accepted with it,
        with a warning; group access (660) and the owner's alone (600, 700) are not.
        """
        for mode in ("666", "662", "0777"):
            with self.assertRaises(CommandError) as caught:
                local_listener(f"unix:/tmp/t.sock:mode={mode}", False)
            self.assertIn(f"by every local user (mode {mode})", str(caught.exception))
            description, warning = local_listener(f"unix:/tmp/t.sock:mode={mode}", True)
            self.assertEqual(description, f"unix:/tmp/t.sock:mode={mode}")
            assert warning is not None
            self.assertIn("every local user", warning)
        for mode in ("660", "600", "700", "664"):
            self.assertEqual(  # (r-- for others gives no connect: that needs write)
                local_listener(f"unix:/tmp/t.sock:mode={mode}", False),
                (f"unix:/tmp/t.sock:mode={mode}", None),
            )

    @inlineCallbacks
    def test_real_socket_is_mode_600(self) -> Any:
        """
        A real socket listened on with the checked string is C{srw-------}: no other user
        can connect to it and be carried through the gateway as this one.
        """
        directory = tempfile.mkdtemp(prefix="ngclt-", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "t.sock")
        description, _ = local_listener(f"unix:{path}", False)
        port = yield serverFromString(reactor, description).listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)


class NumericOptionTests(TunnelCommandBase):
    """
    C{--idle-timeout} takes a finite number of seconds from 1 to 604800, nothing else.
    """

    def test_not_finite_or_out_of_range_refused(self) -> None:
        """
        C{nan}, C{inf}, C{-inf}, negative, zero, just below 1, just above 604800 and text
        are refused by the parser (exit 2, the option and the range named, no traceback).
        """
        for value in ("nan", "inf", "-inf", "-1", "0", "0.999", "604800.001", "abc"):
            code, _, err = self.tunnel(f"--idle-timeout={value}")
            self.assertEqual(code, 2, value)
            self.assertIn("--idle-timeout", err, value)
            self.assertIn("from 1 to 604800", err, value)
            self.assertNotIn("Traceback", err, value)

    def test_bounds_accepted(self) -> None:
        """
        Both ends of the range are accepted by the parser.
        """
        from netguard.cli import build_parser

        parser = build_parser()
        for value in ("1", "604800"):
            args = parser.parse_args(
                ["tunnel", "--gateway", "tcp:host=h:port=1", "--service", "s", "--listen",
                 "unix:/tmp/x", "--user", "u", "--idle-timeout", value]
            )  # fmt: skip
            self.assertEqual(args.idle_timeout, float(value))


class TunnelFactoryTimeoutTests(unittest.TestCase):
    """
    L{TunnelFactory} refuses timeouts its relays could not keep.
    """

    def test_bad_timeouts_refused(self) -> None:
        """
        A non-finite, negative, zero or too large idle or write timeout is a C{ValueError}
        naming the parameter, at construction (not an error in every relay later).
        """
        for name in ("idle_timeout", "write_timeout"):
            for value in (float("nan"), float("inf"), -1.0, 0.0, 0.5, MAX_TIMEOUT + 1):
                with self.assertRaises(ValueError) as caught:
                    TunnelFactory(reactor, None, **{name: value})  # type: ignore[arg-type]
                self.assertIn(name, str(caught.exception))

    def test_bounds_accepted(self) -> None:
        """
        1 s and L{MAX_TIMEOUT} are accepted.
        """
        for value in (1.0, MAX_TIMEOUT):
            factory = TunnelFactory(
                reactor,
                None,  # type: ignore[arg-type]
                idle_timeout=value,
                write_timeout=value,
            )
            self.assertEqual(factory.idle_timeout, value)


class HelpTests(TunnelCommandBase):
    """
    C{netguard tunnel --help} says what each option does.
    """

    def test_help_says_which_options_turn_tls_on(self) -> None:
        """
        The help says that every TLS option, C{--client-cert} included, turns TLS on, and
        documents C{--allow-remote} and the unix socket's default mode.
        """
        code, out, _ = self.run_cli(["tunnel", "--help"])
        self.assertEqual(code, 0)
        text = " ".join(out.split())
        self.assertIn("every other TLS option below implies it", text)
        self.assertIn("client certificate for mutual TLS (implies --tls", text)
        self.assertIn("--allow-remote", text)
        self.assertIn("mode 600", text)

"""
Tests for L{netguard.cli}, run in-process with injected streams and a temporary directory.
"""

from __future__ import annotations

import io
import os
import stat

from twisted.trial import unittest

from netguard import cli
from netguard import config as _config
from netguard.auth import users
from netguard.auth.scram import AuthFailed, ClientExchange, ServerExchange
from netguard.auth.users import UserStore
from tests.test_operator_files import outcome_or_blocked


class TtyInput(io.StringIO):
    """
    A standard input that claims to be a terminal.
    """

    def isatty(self) -> bool:
        return True


def authenticates(path: str, name: str, password: str) -> bool:
    """
    Run a full SCRAM exchange against the users file, as the gateway will.
    """
    store = UserStore.load(path)
    server = ServerExchange(store)
    client = ClientExchange(name, password)
    try:
        client_final = client.final(server.first(client.first()))
        client.verify(server.final(client_final))
    except AuthFailed:
        return False
    return client.verified and server.authenticated


class CliTestBase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.users = os.path.join(self.dir, "users")
        self.prompts: list[str] = []
        self.answers: list[str] = []

    def fake_getpass(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.answers:
            raise EOFError()
        answer = self.answers.pop(0)
        if answer == "^C":
            raise KeyboardInterrupt()
        return answer

    def run_cli(self, argv: list[str], stdin: io.StringIO | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(
            argv,
            stdin=io.StringIO("") if stdin is None else stdin,
            stdout=out,
            stderr=err,
            getpass=self.fake_getpass,
        )
        return code, out.getvalue(), err.getvalue()

    def adduser(self, name: str, password: str, *extra: str) -> tuple[int, str, str]:
        return self.run_cli(
            ["adduser", name, "--users", self.users, *extra], io.StringIO(password + "\n")
        )

    def assert_clean_error(self, code: int, err: str, *needles: str) -> None:
        """
        A user mistake: exit status 2 and exactly one line on stderr, no traceback.
        """
        self.assertEqual(code, 2)
        self.assertNotIn("Traceback", err)
        self.assertTrue(err.startswith("netguard: error: "), err)
        self.assertEqual(err.count("\n"), 1, err)
        for needle in needles:
            self.assertIn(needle, err)


class AddUserTests(CliTestBase):
    def test_adduser(self) -> None:
        code, out, err = self.adduser("alice", "s3cret pass")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("alice", out)
        self.assertNotIn("s3cret", out)
        self.assertEqual(stat.S_IMODE(os.stat(self.users).st_mode), 0o600)
        with open(self.users, encoding="utf-8") as f:
            lines = [line for line in f.read().splitlines() if not line.startswith("#")]
        self.assertEqual(len(lines), 1)
        self.assertNotIn("s3cret", lines[0])
        rec = users.parse_line(lines[0])
        self.assertEqual((rec.name, rec.iterations, rec.groups), ("alice", 4096, ()))
        self.assertTrue(authenticates(self.users, "alice", "s3cret pass"))
        self.assertFalse(authenticates(self.users, "alice", "s3cret pas"))

    def test_groups_and_iterations(self) -> None:
        code, out, err = self.adduser("bob", "pw", "--groups", "ops,db", "--iterations", "5000")
        self.assertEqual((code, err), (0, ""))
        rec = UserStore.load(self.users).lookup("bob")
        assert rec is not None
        self.assertEqual((rec.groups, rec.iterations), (("ops", "db"), 5000))
        self.assertTrue(authenticates(self.users, "bob", "pw"))

    def test_only_the_newline_is_stripped(self) -> None:
        self.assertEqual(self.adduser("alice", "  spaced  ")[0], 0)
        self.assertTrue(authenticates(self.users, "alice", "  spaced  "))
        self.assertFalse(authenticates(self.users, "alice", "spaced"))

    def test_exactly_one_line_is_read(self) -> None:
        stdin = io.StringIO("first\nsecond\n")
        code, _, _ = self.run_cli(["adduser", "alice", "--users", self.users], stdin)
        self.assertEqual(code, 0)
        self.assertEqual(stdin.read(), "second\n")
        self.assertTrue(authenticates(self.users, "alice", "first"))

    def test_password_without_newline(self) -> None:
        code, _, _ = self.run_cli(["adduser", "a", "--users", self.users], io.StringIO("pw"))
        self.assertEqual(code, 0)
        self.assertTrue(authenticates(self.users, "a", "pw"))

    def test_second_user(self) -> None:
        self.adduser("alice", "pw1")
        self.assertEqual(self.adduser("bob", "pw2")[0], 0)
        self.assertTrue(authenticates(self.users, "alice", "pw1"))
        self.assertTrue(authenticates(self.users, "bob", "pw2"))

    def test_tty_prompts_twice(self) -> None:
        self.answers = ["tty pass", "tty pass"]
        code, _, err = self.run_cli(["adduser", "alice", "--users", self.users], TtyInput())
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(len(self.prompts), 2)
        self.assertTrue(authenticates(self.users, "alice", "tty pass"))

    def test_tty_mismatch(self) -> None:
        self.answers = ["one", "two"]
        code, _, err = self.run_cli(["adduser", "alice", "--users", self.users], TtyInput())
        self.assert_clean_error(code, err, "do not match")
        self.assertFalse(os.path.exists(self.users))

    def test_tty_end_of_file(self) -> None:
        code, _, err = self.run_cli(["adduser", "alice", "--users", self.users], TtyInput())
        self.assert_clean_error(code, err, "no password")
        self.assertFalse(os.path.exists(self.users))

    def test_tty_interrupted(self) -> None:
        self.answers = ["^C"]
        code, _, err = self.run_cli(["adduser", "alice", "--users", self.users], TtyInput())
        self.assertEqual(code, 130)
        self.assertNotIn("Traceback", err)
        self.assertFalse(os.path.exists(self.users))

    def test_empty_password(self) -> None:
        code, _, err = self.adduser("alice", "")
        self.assert_clean_error(code, err, "empty password")
        self.assertFalse(os.path.exists(self.users))

    def test_no_input(self) -> None:
        code, _, err = self.run_cli(["adduser", "a", "--users", self.users], io.StringIO(""))
        self.assert_clean_error(code, err, "empty password")

    def test_tty_empty_password(self) -> None:
        self.answers = ["", ""]
        code, _, err = self.run_cli(["adduser", "alice", "--users", self.users], TtyInput())
        self.assert_clean_error(code, err, "empty password")

    def test_password_too_long(self) -> None:
        code, _, err = self.adduser("alice", "x" * 5000)
        self.assert_clean_error(code, err, "longer")

    def test_password_with_control_character(self) -> None:
        code, _, err = self.adduser("alice", "bad\x07bell")
        self.assert_clean_error(code, err)
        self.assertNotIn("bell", err)

    def test_bad_name(self) -> None:
        code, _, err = self.adduser("bad:name", "pw")
        self.assert_clean_error(code, err, "invalid name")
        self.assertFalse(os.path.exists(self.users))

    def test_bad_group(self) -> None:
        code, _, err = self.adduser("alice", "pw", "--groups", "ops,-x")
        self.assert_clean_error(code, err, "group")

    def test_duplicate_group(self) -> None:
        code, _, err = self.adduser("alice", "pw", "--groups", "ops,ops")
        self.assert_clean_error(code, err, "twice")

    def test_bad_iterations(self) -> None:
        code, _, err = self.adduser("alice", "pw", "--iterations", "1000")
        self.assert_clean_error(code, err, "--iterations")

    def test_existing_user(self) -> None:
        self.adduser("alice", "pw1")
        code, _, err = self.adduser("alice", "pw2")
        self.assert_clean_error(code, err, "already exists")
        self.assertTrue(authenticates(self.users, "alice", "pw1"))

    def test_existing_user_not_asked_for_password(self) -> None:
        self.adduser("alice", "pw1")
        self.answers = ["x", "x"]
        code, _, err = self.run_cli(["adduser", "alice", "--users", self.users], TtyInput())
        self.assert_clean_error(code, err, "already exists")
        self.assertEqual(self.prompts, [])

    def test_insecure_file(self) -> None:
        self.adduser("alice", "pw1")
        os.chmod(self.users, 0o644)
        with open(self.users, "rb") as f:
            before = f.read()
        code, _, err = self.adduser("bob", "pw2")
        self.assert_clean_error(code, err, self.users, "0644", "chmod 600")
        with open(self.users, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(stat.S_IMODE(os.stat(self.users).st_mode), 0o644)

    def test_malformed_file(self) -> None:
        with open(self.users, "w") as f:
            f.write("junk line\n")
        os.chmod(self.users, 0o600)
        code, _, err = self.adduser("bob", "pw")
        self.assert_clean_error(code, err, f"{self.users}:1:")

    def test_creates_directory_and_leaves_no_temp(self) -> None:
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        self.users = os.path.join(self.dir, "state", "users")
        self.assertEqual(self.adduser("alice", "pw")[0], 0)
        self.assertEqual(self.adduser("bob", "pw")[0], 0)
        self.assertEqual(os.listdir(os.path.dirname(self.users)), ["users"])
        self.assertEqual(stat.S_IMODE(os.stat(self.users).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.users)).st_mode), 0o700)

    def test_no_password_option(self) -> None:
        """
        There is no way to pass a password on the command line.
        """
        code, _, err = self.run_cli(["adduser", "a", "--users", self.users, "--password", "p"])
        self.assertEqual(code, 2)
        self.assertNotIn("Traceback", err)
        self.assertFalse(os.path.exists(self.users))

    def test_password_not_read_from_environment(self) -> None:
        self.patch(os, "environ", {**os.environ, "NETGUARD_PASSWORD": "envpw", "PASSWORD": "x"})
        code, _, err = self.run_cli(["adduser", "a", "--users", self.users], io.StringIO(""))
        self.assert_clean_error(code, err, "empty password")

    def test_unwritable_directory(self) -> None:
        self.users = os.path.join(self.dir, "file", "users")
        with open(os.path.join(self.dir, "file"), "w"):
            pass
        code, _, err = self.adduser("alice", "pw")
        self.assert_clean_error(code, err)


class PasswdTests(CliTestBase):
    def test_passwd(self) -> None:
        self.adduser("alice", "old pw", "--groups", "ops")
        self.adduser("bob", "bob pw")
        code, out, err = self.run_cli(
            ["passwd", "alice", "--users", self.users], io.StringIO("new pw\n")
        )
        self.assertEqual((code, err), (0, ""))
        self.assertIn("alice", out)
        self.assertTrue(authenticates(self.users, "alice", "new pw"))
        self.assertFalse(authenticates(self.users, "alice", "old pw"))
        self.assertTrue(authenticates(self.users, "bob", "bob pw"))
        self.assertEqual(UserStore.load(self.users).groups_of("alice"), ("ops",))
        self.assertEqual(stat.S_IMODE(os.stat(self.users).st_mode), 0o600)

    def test_missing_user(self) -> None:
        self.adduser("alice", "pw")
        code, _, err = self.run_cli(["passwd", "bob", "--users", self.users], io.StringIO("x\n"))
        self.assert_clean_error(code, err, "no user bob")

    def test_missing_file(self) -> None:
        code, _, err = self.run_cli(["passwd", "bob", "--users", self.users], io.StringIO("x\n"))
        self.assert_clean_error(code, err, self.users)

    def test_insecure_file(self) -> None:
        self.adduser("alice", "pw")
        os.chmod(self.users, 0o644)
        code, _, err = self.run_cli(
            ["passwd", "alice", "--users", self.users], io.StringIO("new\n")
        )
        self.assert_clean_error(code, err, "chmod 600")
        os.chmod(self.users, 0o600)
        self.assertTrue(authenticates(self.users, "alice", "pw"))

    def test_mismatch(self) -> None:
        self.adduser("alice", "pw")
        self.answers = ["a", "b"]
        code, _, err = self.run_cli(["passwd", "alice", "--users", self.users], TtyInput())
        self.assert_clean_error(code, err, "do not match")
        self.assertTrue(authenticates(self.users, "alice", "pw"))

    def test_bad_name(self) -> None:
        code, _, err = self.run_cli(["passwd", "a b", "--users", self.users])
        self.assert_clean_error(code, err, "invalid name")


class DelUserTests(CliTestBase):
    def test_deluser(self) -> None:
        self.adduser("alice", "pw")
        self.adduser("bob", "pw")
        code, out, err = self.run_cli(["deluser", "alice", "--users", self.users])
        self.assertEqual((code, err), (0, ""))
        self.assertIn("alice", out)
        self.assertEqual(UserStore.load(self.users).names(), ["bob"])
        self.assertFalse(authenticates(self.users, "alice", "pw"))

    def test_missing_user(self) -> None:
        self.adduser("alice", "pw")
        code, _, err = self.run_cli(["deluser", "bob", "--users", self.users])
        self.assert_clean_error(code, err, "no user bob")

    def test_missing_file(self) -> None:
        code, _, err = self.run_cli(["deluser", "bob", "--users", self.users])
        self.assert_clean_error(code, err)

    def test_insecure_file(self) -> None:
        self.adduser("alice", "pw")
        os.chmod(self.users, 0o640)
        code, _, err = self.run_cli(["deluser", "alice", "--users", self.users])
        self.assert_clean_error(code, err, "chmod 600")


class DefaultUsersFileTests(CliTestBase):
    def test_default_users_file(self) -> None:
        if _config is None or not hasattr(_config, "default_users_file"):
            code, _, err = self.run_cli(["adduser", "alice"], io.StringIO("pw\n"))
            self.assert_clean_error(code, err, "--users")
            return
        self.patch(_config, "default_users_file", lambda: self.users)
        code, _, err = self.run_cli(["adduser", "alice"], io.StringIO("pw\n"))
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(authenticates(self.users, "alice", "pw"))

    def test_default_users_file_unknown(self) -> None:

        def no_home() -> str:
            raise _config.ConfigError("<defaults>", "state_dir", "no home directory")

        self.patch(_config, "default_users_file", no_home)
        code, _, err = self.run_cli(["passwd", "alice"], io.StringIO("pw\n"))
        self.assert_clean_error(code, err, "--users")


class ParserTests(CliTestBase):
    def test_help_lists_subcommands(self) -> None:
        code, out, err = self.run_cli(["--help"])
        self.assertEqual(code, 0)
        for name in ("adduser", "passwd", "deluser", "check-config", "tunnel", "ctl"):
            self.assertIn(name, out)
        self.assertIn("    cert ", out)

    def test_subcommand_help(self) -> None:
        code, out, _ = self.run_cli(["adduser", "--help"])
        self.assertEqual(code, 0)
        self.assertIn("--groups", out)
        self.assertIn("--iterations", out)

    def test_no_command(self) -> None:
        code, _, err = self.run_cli([])
        self.assertEqual(code, 2)
        self.assertIn("command is required", err)

    def test_events_lists_the_catalogue(self) -> None:
        """
        C{netguard events} prints every log event name with its meaning, one per line, and
        exits 0.
        """
        from netguard.events import EVENTS

        code, out, err = self.run_cli(["events"])
        self.assertEqual((code, err), (0, ""))
        self.assertEqual([line.split()[0] for line in out.splitlines()], list(EVENTS))
        self.assertIn("auth.fail", out)

    def test_version_prints_netguards_version(self) -> None:
        """
        C{netguard --version} prints netguard's version (and Twisted's) on standard output
        and exits 0, with no command needed.
        """
        from twisted.copyright import version as twisted_version

        from netguard import __version__

        code, out, err = self.run_cli(["--version"])
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, f"netguard {__version__} (Twisted {twisted_version})\n")

    def test_unknown_command(self) -> None:
        code, _, err = self.run_cli(["frobnicate"])
        self.assertEqual(code, 2)
        self.assertIn("usage:", err)
        self.assertNotIn("Traceback", err)

    def test_missing_name(self) -> None:
        code, _, err = self.run_cli(["adduser"])
        self.assertEqual(code, 2)
        self.assertNotIn("Traceback", err)

    def test_a_user_whose_iteration_count_stands_out_is_warned_about(self) -> None:
        # Found by a review: unknown names get the most common count, so a user with
        # another one can be told apart by any client.
        self.assertEqual(self.adduser("alice", "pw-a")[0], 0)
        code, _, err = self.adduser("bob", "pw-b")
        self.assertEqual((code, err), (0, ""))
        code, _, err = self.adduser("carol", "pw-c", "--iterations", "20000")
        self.assertEqual(code, 0)
        self.assertIn("carol has 20000 iterations and most users 4096", err)

    def test_iterations_not_a_number(self) -> None:
        code, _, err = self.run_cli(["adduser", "a", "--iterations", "many"])
        self.assertEqual(code, 2)
        self.assertNotIn("Traceback", err)

    def test_tunnel_requires_its_arguments(self) -> None:
        code, _, err = self.run_cli(["tunnel"])
        self.assertEqual(code, 2)
        self.assertIn("--gateway", err)
        self.assertNotIn("Traceback", err)

    def test_tunnel_has_no_password_option(self) -> None:
        code, _, err = self.run_cli(["tunnel", "--password", "x"])
        self.assertEqual(code, 2)
        self.assertNotIn("Traceback", err)

    def test_tunnel_unknown_port_name_is_a_clean_error(self) -> None:
        password_file = self.mktemp()
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"pw\n")
        os.close(fd)
        for gateway, listen, option in (
            (
                "tcp:host=127.0.0.1:port=no-such-service-here",
                "tcp:0:interface=127.0.0.1",
                "--gateway",
            ),
            (
                "tcp:host=127.0.0.1:port=7700",
                "tcp:no-such-service-here:interface=127.0.0.1",
                "--listen",
            ),
        ):
            code, _, err = self.run_cli(
                ["tunnel", "--gateway", gateway, "--service", "echo", "--listen", listen,
                 "--user", "alice", "--password-file", password_file]
            )  # fmt: skip
            self.assert_clean_error(
                code, err, f"bad {option} endpoint string", "unknown service name"
            )

    def test_tunnel_bad_endpoint_refused_before_the_password_prompt(self) -> None:
        """
        A typo in --gateway or --listen is reported before the password is asked for, so it
        costs no password entry.
        """
        code, _, err = self.run_cli(
            ["tunnel", "--gateway", "tcp:host=127.0.0.1:port=no-such-service-here",
             "--service", "echo", "--listen", "tcp:0:interface=127.0.0.1", "--user", "alice"]
        )  # fmt: skip
        self.assert_clean_error(code, err, "bad --gateway endpoint string")
        self.assertEqual(self.prompts, [])

    def test_cert_registered(self) -> None:
        # Its own tests are in tests.test_cli_cert.
        code, _, err = self.run_cli(["cert"])
        self.assertEqual(code, 2)
        self.assertNotIn("invalid choice", err)
        self.assertIn("selfsigned, pin or check", err)


class CheckConfigTests(CliTestBase):
    def setUp(self) -> None:
        super().setUp()

    def write_config(self, text: str) -> str:
        path = os.path.join(self.dir, "netguard.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_defaults(self) -> None:
        code, out, err = self.run_cli(["check-config", "--defaults"])
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, _config.describe_defaults())

    def test_config_file(self) -> None:
        path = self.write_config('server_name = "cli-test"\n')
        code, out, err = self.run_cli(["check-config", "--config", path])
        self.assertEqual((code, err), (0, ""))
        self.assertIn("cli-test", out)
        self.assertEqual(out, _config.describe(_config.load_config(path)))

    def test_bad_config(self) -> None:
        path = self.write_config("server_name = [\n")
        code, _, err = self.run_cli(["check-config", "--config", path])
        self.assert_clean_error(code, err, path)

    def test_missing_config(self) -> None:
        path = os.path.join(self.dir, "absent.toml")
        code, _, err = self.run_cli(["check-config", "--config", path])
        self.assert_clean_error(code, err, path)

    def test_config_and_defaults_exclusive(self) -> None:
        code, _, err = self.run_cli(["check-config", "--defaults", "--config", "x"])
        self.assertEqual(code, 2)
        self.assertNotIn("Traceback", err)


class CtlTimeoutOptionTests(CliTestBase):
    """
    C{netguard ctl --timeout} takes a finite number of seconds from 0.1 to 3600; anything
    else is an option error (exit 2), never a traceback or a connection attempt.
    """

    def ctl(self, timeout: str) -> tuple[int, str, str]:
        socket_path = os.path.join(self.dir, "none.sock")
        return self.run_cli(["ctl", "--socket", socket_path, "--timeout", timeout, "status"])

    def test_unusable_timeouts_are_option_errors(self) -> None:
        """
        C{inf}, C{1e308}, C{nan}, a negative value, 0 and values just outside the range
        end with exit 2 and argparse's one error line naming the range.
        """
        for text in ("inf", "1e308", "nan", "-1", "0", "0.0999", "3600.001", "soon"):
            code, out, err = self.ctl(text)
            self.assertEqual(code, 2, (text, err))
            self.assertNotIn("Traceback", err)
            self.assertIn("argument --timeout", err)
            self.assertIn("from 0.1 to 3600", err)
            self.assertEqual(out, "")

    def test_range_ends_are_accepted(self) -> None:
        """
        The two ends, 0.1 and 3600, are accepted: ctl goes on to connect (exit 3 here,
        since no daemon listens on the socket).
        """
        for text in ("0.1", "3600"):
            code, _, err = self.ctl(text)
            self.assertEqual(code, 3, (text, err))
            self.assertIn("cannot connect", err)

    def test_run_ctl_refuses_a_timeout_outside_the_range(self) -> None:
        """
        L{run_ctl} called directly refuses a non-finite or out-of-range timeout as a usage
        error (exit 2) before any socket is made.
        """
        from netguard.ops.ctl_client import EXIT_USAGE, run_ctl

        for timeout in (float("inf"), 1e308, float("nan"), -1.0, 0.0):
            code, text = run_ctl(os.path.join(self.dir, "none.sock"), ["status"], timeout)
            self.assertEqual(code, EXIT_USAGE, timeout)
            self.assertIn("from 0.1 to 3600", text)


class CtlConfigFileTests(CliTestBase):
    """
    C{netguard ctl --config FILE} reads FILE without blocking: a FIFO is refused at once
    with one error line, while a regular file that does not load still names its socket.
    """

    def test_fifo_config_refused_at_once(self) -> None:
        """
        A FIFO given as C{--config} ends at once with exit 2 and one line saying it is a
        FIFO (not blocked in C{open} waiting for a writer).
        """
        fifo = os.path.join(self.dir, "netguard.toml")
        os.mkfifo(fifo, 0o600)
        results: list[tuple[int, str, str]] = []

        def ctl() -> None:
            results.append(self.run_cli(["ctl", "--config", fifo, "status"]))

        self.assertEqual(outcome_or_blocked(fifo, ctl), "returned")
        [(code, out, err)] = results
        self.assert_clean_error(code, err, "is a FIFO")
        self.assertEqual(out, "")

    def test_regular_config_that_does_not_load_still_names_the_socket(self) -> None:
        """
        A regular file with an unknown key but a usable C{ops.control_socket}: ctl warns
        and goes on to that socket (exit 3 here: nothing listens on it).
        """
        path = os.path.join(self.dir, "netguard.toml")
        socket_path = os.path.join(self.dir, "none.sock")
        with open(path, "w") as handle:
            handle.write(f"colour = 1\n[ops]\ncontrol_socket = '{socket_path}'\n")
        code, _, err = self.run_cli(["ctl", "--config", path, "status"])
        self.assertEqual(code, 3, err)
        self.assertIn(f"using the control socket {socket_path}", err)

"""
The real C{twistd netguard} process and the real packaging, in subprocesses.

  - L{InstalledCopyTests}: C{pip install --no-deps --target TMP} builds and installs the
    project non-editable; a Python that sees TMP but not this source tree finds the plugin,
    C{twistd netguard --help} and the C{netguard} console script there.
  - L{TwistdProcessTests}: C{twistd -n netguard} as a subprocess with no terminal prints the
    generated password on standard error; the real NGP/1 client authenticates with it over
    loopback TCP and over the default unix socket and echoes 1 MiB; the password appears
    nowhere else; SIGTERM stops it and the users file stays.
  - L{TwistdConfigErrorTests}, L{CommandLineTests}: a bad option ends twistd with one line
    and no traceback; C{netguard --help} lists the subcommands.

Every child runs as C{python -S} with an explicit C{PYTHONPATH}: the code under test first
(this tree, or the installed copy), then a view of Twisted whose C{twisted/plugins} hides any
netguard plugin installed in the venv, then the venv's other directories. Without C{-S} the
venv's site processing would add whatever netguard the venv holds: an editable install's
C{.pth} puts this tree on C{sys.path}, and a regular install's copy of the plugin module in
Twisted's own C{twisted/plugins/} shadows every other copy.

Children are started with C{start_new_session=True} (no controlling terminal), their output
goes to files, every wait is bounded, and each is killed by its PID in a cleanup.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

import twisted
from netguard.client.protocol import Credentials
from tests.integration.util import EchoClient, free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Runs twistd the way its console script does (there is no C{python -m} entry for it).
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

#: The longest any single wait in these tests may take, in seconds.
WAIT = 15.0

#: The echo payload size.
PAYLOAD_BYTES = 1 << 20

#: What C{python -m pip install} may take (an isolated build fetches setuptools on CI).
PIP_TIMEOUT = 300.0

#: Files and directories that are not part of the source (not copied for the build).
NOT_SOURCE_PATTERNS = (
    ".venv",
    ".git",
    "_trial_temp*",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
    "dropin.cache",
)
_NOT_SOURCE = shutil.ignore_patterns(*NOT_SOURCE_PATTERNS)


def short_temp_dir(prefix: str) -> str:
    """
    A new directory directly under C{/tmp}: unix socket paths must stay under 108 bytes.
    """
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def _under(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root + os.sep)


def in_source_tree(path: str) -> bool:
    """
    Whether C{path} is this source tree or inside it (a venv kept inside it is not).
    """
    return _under(path, REPO) and not _under(path, sys.prefix)


def twisted_view(where: str) -> str:
    """
    Build, under C{where}, a directory holding a C{twisted} package made of links to the
    real one, except that its C{plugins} directory leaves out any C{netguard_*} module (and
    Twisted's plugin cache).

    @return: the directory to put on C{sys.path}.
    """
    real = os.path.dirname(os.path.abspath(twisted.__file__))
    view = os.path.join(where, "twisted-view")
    package = os.path.join(view, "twisted")
    os.makedirs(os.path.join(package, "plugins"))
    for entry in os.listdir(real):
        if entry != "plugins":
            os.symlink(os.path.join(real, entry), os.path.join(package, entry))
    for entry in os.listdir(os.path.join(real, "plugins")):
        if entry.startswith("netguard_") or entry in ("dropin.cache", "__pycache__"):
            continue
        os.symlink(os.path.join(real, "plugins", entry), os.path.join(package, "plugins", entry))
    return view


def python_env(code_root: str, where: str) -> tuple[list[str], dict[str, str]]:
    """
    How to run a Python that imports netguard from C{code_root} only.

    @param code_root: the directory holding C{netguard/} and C{twisted/plugins/}.
    @param where: a scratch directory for the Twisted view.
    @return: the interpreter's argument prefix and the environment.
    """
    dependencies = [
        entry for entry in sys.path if entry and os.path.isdir(entry) and not in_source_tree(entry)
    ]
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH")
    }
    env["PYTHONPATH"] = os.pathsep.join([code_root, twisted_view(where), *dependencies])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return [sys.executable, "-S"], env


def run(argv: list[str], env: dict[str, str], cwd: str) -> subprocess.CompletedProcess[str]:
    """
    Run a short-lived child to completion (at most L{WAIT} seconds), no terminal.
    """
    return subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
        start_new_session=True,
    )


def read(path: str) -> str:
    """
    @return: the text of C{path}, or C{""} if it does not exist yet.
    """
    try:
        with open(path, errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


class Twistd:
    """
    One C{twistd -n --pidfile= netguard ...} child: its output files and process.
    """

    def __init__(
        self,
        case: unittest.TestCase,
        state_dir: str,
        args: list[str],
        twistd_options: list[str] = (),  # type: ignore[assignment]
    ) -> None:
        self.case = case
        self.state_dir = state_dir
        self.work = short_temp_dir("ngw-")
        case.addCleanup(shutil.rmtree, self.work, True)
        self.prepare_work()
        self.stdout_path = os.path.join(self.work, "stdout")
        self.stderr_path = os.path.join(self.work, "stderr")
        prefix, env = python_env(REPO, self.work)
        argv = [*self.twistd(prefix), "-n", "--pidfile=", *twistd_options, "netguard"]
        argv += ["--state-dir", state_dir, *args]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                argv,
                cwd=self.work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        case.addCleanup(self.kill)

    def prepare_work(self) -> None:
        """
        Make the scratch directory ready before anything is started from it (nothing here).
        """

    def twistd(self, prefix: list[str]) -> list[str]:
        """
        @param prefix: the interpreter and its options (L{python_env}).
        @return: the command that runs twistd, before twistd's own options.
        """
        return [*prefix, "-c", TWISTD]

    def kill(self) -> None:
        """
        Kill the child by its PID if it still runs, and reap it.
        """
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)

    @property
    def stdout(self) -> str:
        """The log (twistd -n logs to standard output)."""
        return read(self.stdout_path)

    @property
    def stderr(self) -> str:
        """Standard error, where the password is shown when there is no terminal."""
        return read(self.stderr_path)

    def describe(self) -> str:
        """
        @return: the exit status and both outputs, for failure messages.
        """
        status = self.process.poll()
        return f"exit status {status}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    @inlineCallbacks
    def wait_for(self, predicate: Callable[[], bool], what: str) -> Any:
        """
        Let the reactor run until C{predicate()} holds, for at most L{WAIT} seconds.

        @raise AssertionError: on time-out, or if the child exits first.
        """
        deadline = time.monotonic() + WAIT
        while not predicate():
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited before {what}:\n{self.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {WAIT} s:\n{self.describe()}")
            yield deferLater(reactor, 0.05, lambda: None)

    @inlineCallbacks
    def started(self) -> Any:
        """
        Wait for the gateway's start event and the password on standard error.

        @return: (a Deferred firing with) the L{Credentials} shown.
        """
        yield self.wait_for(lambda: "netguard started" in self.stdout, "start event")
        yield self.wait_for(lambda: bool(re.search(r"password:\s+\S+", self.stderr)), "password")
        user = re.search(r"user:\s+(\S+)", self.stderr)
        password = re.search(r"password:\s+(\S+)", self.stderr)
        assert user is not None and password is not None
        return Credentials(user.group(1), password.group(1))

    @inlineCallbacks
    def exited(self) -> Any:
        """
        Wait for the child to exit.

        @return: (a Deferred firing with) its return code.
        """
        deadline = time.monotonic() + WAIT
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"twistd still running {WAIT} s later:\n{self.describe()}")
            yield deferLater(reactor, 0.05, lambda: None)
        return self.process.returncode


@inlineCallbacks
def echo_session(case: unittest.TestCase, endpoint: Any, credentials: Credentials) -> Any:
    """
    Authenticate, OPEN echo, send L{PAYLOAD_BYTES} random bytes, and check their SHA-256.
    """
    payload = os.urandom(PAYLOAD_BYTES)
    client = EchoClient(credentials, len(payload))
    yield connectProtocol(endpoint, client)
    yield client.opened
    for start in range(0, len(payload), 64 * 1024):
        client.transport.write(payload[start : start + 64 * 1024])
    received = yield client.done
    client.transport.loseConnection()
    case.assertEqual(len(received), len(payload))
    case.assertEqual(hashlib.sha256(received).hexdigest(), hashlib.sha256(payload).hexdigest())


class TwistdProcessTests(unittest.TestCase):
    """
    C{twistd -n --pidfile= netguard --state-dir D [...]}, the real process.
    """

    timeout = 60

    def setUp(self) -> None:
        self.base = short_temp_dir("ngt-")
        self.addCleanup(shutil.rmtree, self.base, True)
        # Not created yet: the service creates it (mode 0700).
        self.state = os.path.join(self.base, "s")
        self.users = os.path.join(self.state, "users")

    def start(self, *args: str) -> Twistd:
        return Twistd(self, self.state, list(args))

    def check_secrets(self, daemon: Twistd, credentials: Credentials) -> None:
        """
        The password was shown once on standard error and is nowhere else: not in the log,
        not in the users file (mode 0600), whose directory is mode 0700.
        """
        self.assertEqual(daemon.stderr.count(credentials.password), 1)
        self.assertNotIn(credentials.password, daemon.stdout)
        self.assertEqual(stat.S_IMODE(os.stat(self.users).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.state).st_mode), 0o700)
        with open(self.users) as handle:
            self.assertNotIn(credentials.password, handle.read())

    @inlineCallbacks
    def test_echo_over_tcp(self) -> Any:
        """
        With C{--listen tcp:PORT:interface=127.0.0.1}, the user and password shown on
        standard error authenticate over TCP, and echo returns 1 MiB intact.
        """
        port = free_port()
        daemon = self.start("--listen", f"tcp:{port}:interface=127.0.0.1")
        credentials = yield daemon.started()
        self.assertEqual(credentials.username, "admin")
        yield echo_session(self, TCP4ClientEndpoint(reactor, "127.0.0.1", port), credentials)
        self.check_secrets(daemon, credentials)
        self.assertIn(f"listening on tcp:{port}:interface=127.0.0.1", daemon.stdout)
        # Only the listener asked for: no default unix socket.
        self.assertFalse(os.path.exists(os.path.join(self.state, "netguard.sock")))

    @inlineCallbacks
    def test_echo_over_default_unix_socket(self) -> Any:
        """
        Without C{--listen}, the default listeners open, among them the unix socket
        C{<state-dir>/netguard.sock} (mode 0600), and echo works over it.
        """
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", 7700))
            except OSError as e:
                raise unittest.SkipTest(
                    f"127.0.0.1:7700 is in use ({e.strerror}); the default configuration "
                    "listens there"
                ) from None
        daemon = self.start()
        credentials = yield daemon.started()
        path = os.path.join(self.state, "netguard.sock")
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        yield echo_session(self, UNIXClientEndpoint(reactor, path), credentials)
        self.check_secrets(daemon, credentials)

    @inlineCallbacks
    def test_sigterm_stops_and_keeps_users_file(self) -> Any:
        """
        SIGTERM ends the process (exit status 0, or death by SIGTERM) within the bound; the
        users file stays as it was, and the whole log never held the password.
        """
        port = free_port()
        daemon = self.start("--listen", f"tcp:{port}:interface=127.0.0.1")
        credentials = yield daemon.started()
        with open(self.users, "rb") as handle:
            before = handle.read()
        os.kill(daemon.process.pid, signal.SIGTERM)
        code = yield daemon.exited()
        # Observed: 0 (netguard's own SIGTERM handler stops the reactor after draining).
        self.assertIn(code, (0, -signal.SIGTERM), daemon.describe())
        self.assertIn("Main loop terminated", daemon.stdout)
        with open(self.users, "rb") as handle:
            self.assertEqual(handle.read(), before)
        self.check_secrets(daemon, credentials)
        self.assertNotIn("Traceback", daemon.stdout + daemon.stderr)
        # The port is closed: nothing accepts there any more.
        with socket.socket() as probe:
            self.assertNotEqual(probe.connect_ex(("127.0.0.1", port)), 0)


class TwistdConfigErrorTests(unittest.TestCase):
    """
    A configuration error stops twistd before it starts, with one line and no traceback.
    """

    def test_unknown_listener_type(self) -> None:
        base = short_temp_dir("ngt-")
        self.addCleanup(shutil.rmtree, base, True)
        state = os.path.join(base, "s")
        prefix, env = python_env(REPO, base)
        argv = [*prefix, "-c", TWISTD, "-n", "--pidfile=", "netguard"]
        done = run([*argv, "--state-dir", state, "--listen", "bogus:xx"], env, base)
        output = done.stdout + done.stderr
        self.assertNotEqual(done.returncode, 0, output)
        self.assertNotIn("Traceback", done.stderr)
        self.assertNotIn("Traceback", done.stdout)
        # twistd prints the usage, then the error as its last line (on standard output).
        named = [line for line in output.splitlines() if "bogus" in line]
        self.assertEqual(len(named), 1, output)
        self.assertEqual(named[0], done.stdout.rstrip("\n").splitlines()[-1])
        self.assertIn("listen[0]", named[0])
        self.assertIn('unknown listener type "bogus"', named[0])
        # Nothing was created: the configuration is checked before anything is written.
        self.assertFalse(os.path.exists(state))

    def test_daemon_start_with_port_in_use_returns_with_one_line(self) -> None:
        # Without -n twistd forks into the background before listening; the address is
        # probed before that, so the operator's terminal gets the answer, not a hang.
        base = short_temp_dir("ngt-")
        self.addCleanup(shutil.rmtree, base, True)
        state = os.path.join(base, "s")
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        prefix, env = python_env(REPO, base)
        argv = [*prefix, "-c", TWISTD, "--pidfile", os.path.join(base, "t.pid")]
        argv += ["--logfile", os.path.join(base, "t.log"), "netguard", "--state-dir", state]
        done = run([*argv, "--listen", f"tcp:{port}:interface=127.0.0.1"], env, base)
        output = done.stdout + done.stderr
        self.assertEqual(done.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1", output)
        self.assertIn("already in use", output)
        # Nothing is left that a second try would trip over.
        self.assertFalse(os.path.exists(os.path.join(base, "t.pid")))
        self.assertFalse(os.path.exists(os.path.join(state, "netguard.lock")))
        self.assertFalse(os.path.exists(os.path.join(state, "users")))


class CommandLineTests(unittest.TestCase):
    """
    The C{netguard} command, from this tree.
    """

    def test_help_lists_subcommands(self) -> None:
        base = short_temp_dir("ngt-")
        self.addCleanup(shutil.rmtree, base, True)
        prefix, env = python_env(REPO, base)
        done = run([*prefix, "-m", "netguard.cli", "--help"], env, base)
        self.assertEqual(done.returncode, 0, done.stderr)
        for command in ("adduser", "passwd", "deluser", "check-config"):
            self.assertIn(command, done.stdout)
        self.assertEqual(done.stderr, "")


class InstalledCopyTests(unittest.TestCase):
    """
    The project installed non-editable with pip, used from outside the source tree.
    """

    timeout = 60

    def setUp(self) -> None:
        """
        Build and install a copy of this tree into a temporary target. The build runs in a
        copy, so its C{build/} and C{*.egg-info} never land in the tree the suite runs from,
        and nothing stale from an earlier build can leak into the wheel. (Trial has no
        C{setUpClass}, so each test installs its own copy.)
        """
        scratch = short_temp_dir("ngi-")
        self.addCleanup(shutil.rmtree, scratch, True)
        source = os.path.join(scratch, "src")
        shutil.copytree(REPO, source, ignore=_NOT_SOURCE, symlinks=True)
        self.target = os.path.join(scratch, "target")
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
        env.pop("PYTHONPATH", None)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--target", self.target, source],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT,
            cwd=scratch,
            env=env,
        )
        self.assertEqual(done.returncode, 0, f"pip install failed:\n{done.stdout}\n{done.stderr}")

    def run_installed(self, *args: str) -> subprocess.CompletedProcess[str]:
        """
        Run the venv's interpreter with C{args}, seeing the installed copy and not the tree,
        from a directory outside both.
        """
        where = short_temp_dir("ngc-")
        self.addCleanup(shutil.rmtree, where, True)
        prefix, env = python_env(self.target, where)
        return run([*prefix, *args], env, where)

    def test_layout(self) -> None:
        """
        The install holds both plugin modules in C{twisted/plugins/} with no C{__init__.py}
        there or in C{twisted/} (which would hide Twisted itself), the console script, and
        no tests.
        """
        plugins = os.path.join(self.target, "twisted", "plugins")
        for name in ("netguard_plugin.py", "netguard_endpoints.py"):
            self.assertTrue(os.path.isfile(os.path.join(plugins, name)), name)
        self.assertFalse(os.path.exists(os.path.join(plugins, "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(self.target, "twisted", "__init__.py")))
        cli = os.path.join(self.target, "netguard", "cli", "__init__.py")
        self.assertTrue(os.path.isfile(cli))
        self.assertTrue(os.access(os.path.join(self.target, "bin", "netguard"), os.X_OK))
        self.assertFalse(os.path.exists(os.path.join(self.target, "tests")))

    def test_plugin_found_in_installed_copy(self) -> None:
        """
        C{getPlugins(IServiceMaker)} finds C{netguard}, loaded from the target, in a process
        whose C{sys.path} does not hold the source tree.
        """
        code = (
            "import sys\n"
            "from twisted.application.service import IServiceMaker\n"
            "from twisted.plugin import getPlugins\n"
            "makers = [m for m in getPlugins(IServiceMaker) if m.tapname == 'netguard']\n"
            "print('count', len(makers))\n"
            "print('plugin', sys.modules['twisted.plugins.netguard_plugin'].__file__)\n"
            "import netguard.service\n"
            "print('package', netguard.service.__file__)\n"
            "for entry in sys.path:\n"
            "    print('path', entry)\n"
        )
        done = self.run_installed("-c", code)
        self.assertEqual(done.returncode, 0, done.stderr)
        lines = done.stdout.splitlines()
        self.assertIn("count 1", lines)
        values = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in lines}
        plugin = values["plugin"]
        self.assertTrue(_under(plugin, self.target), plugin)
        self.assertEqual(os.path.basename(plugin), "netguard_plugin.py")
        self.assertTrue(_under(values["package"], self.target), values["package"])
        for line in lines:
            if line.startswith("path "):
                entry = line[5:]
                self.assertFalse(entry and in_source_tree(entry), f"{entry} is in the tree")

    def test_twistd_help_from_installed_copy(self) -> None:
        """
        C{twistd netguard --help} from the installed copy documents the options.
        """
        done = self.run_installed("-c", TWISTD, "netguard", "--help")
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        for name in ("listen", "service", "config", "users", "state-dir", "server-name"):
            self.assertIn(f"--{name}=", done.stdout)
        self.assertIn("twistd [options] netguard", done.stdout)
        self.assertNotIn("Traceback", done.stderr)

    def test_console_script_help(self) -> None:
        """
        The installed C{netguard} console script lists the subcommands.
        """
        done = self.run_installed(os.path.join(self.target, "bin", "netguard"), "--help")
        self.assertEqual(done.returncode, 0, done.stderr)
        for command in ("adduser", "passwd", "deluser", "check-config"):
            self.assertIn(command, done.stdout)

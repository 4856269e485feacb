"""
Tests for C{twistd netguard}, in-process: discovery of the plugin
(C{twisted/plugins/netguard_plugin.py}) through Twisted's plugin system, and the options of
L{netguard.tap}: the configuration they produce, how bad values are reported, and the help
text.

The discovery tests load the plugin module from this source tree by its path: a venv that
holds a regular (non-editable) install of netguard also holds a copy of the module in
Twisted's own C{twisted/plugins/} directory, and that copy shadows the tree's when the module
is imported by name. L{PluginDiscoveryTests.test_discovered_plugin_is_this_trees} checks the
two agree.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import sys
import tempfile
from types import ModuleType, SimpleNamespace
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from netguard import tap
from netguard.config import (
    COMMAND_LINE_SOURCE,
    ORIGIN_COMMAND_LINE,
    ORIGIN_FILE,
    Config,
    load_config,
)
from netguard.tap import Options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_PLUGIN = os.path.join(REPO, "twisted", "plugins", "netguard_plugin.py")

#: Every option C{twistd netguard --help} must document.
DOCUMENTED_OPTIONS = (
    "listen",
    "service",
    "config",
    "users",
    "state-dir",
    "server-name",
    "log-format",
    "log-file",
)


def load_source_plugin() -> ModuleType:
    """
    Import this tree's C{twisted/plugins/netguard_plugin.py} by path, under a private name.

    @return: the freshly executed module.
    """
    spec = importlib.util.spec_from_file_location("_netguard_plugin_under_test", SOURCE_PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def short_temp_dir(case: unittest.TestCase) -> str:
    """
    A new directory under C{/tmp}, removed after the test: the default unix listener lives
    in the state directory, and a socket path must stay under 108 bytes (trial's own
    temporary directories are too deep).
    """
    path = tempfile.mkdtemp(prefix="ngp-", dir="/tmp")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def netguard_makers() -> list[Any]:
    """
    @return: every L{IServiceMaker} plugin Twisted finds whose tapname is C{netguard}.
    """
    return [maker for maker in getPlugins(IServiceMaker) if maker.tapname == "netguard"]


class PluginDiscoveryTests(unittest.TestCase):
    """
    Twisted's plugin system finds the C{netguard} service maker.
    """

    def test_found_exactly_once(self) -> None:
        """
        C{getPlugins(IServiceMaker)} yields one plugin with tapname C{netguard}.
        """
        self.assertEqual(len(netguard_makers()), 1)

    def test_provides_service_maker_and_plugin(self) -> None:
        """
        The plugin fully provides L{IServiceMaker} (tapname, description, options,
        makeService) and L{IPlugin}.
        """
        (maker,) = netguard_makers()
        self.assertTrue(verifyObject(IServiceMaker, maker))
        self.assertTrue(verifyObject(IPlugin, maker))
        self.assertTrue(issubclass(maker.options, usage.Options))
        self.assertTrue(maker.description)

    def test_discovered_plugin_is_this_trees(self) -> None:
        """
        The module Twisted loaded is this tree's file, or an installed copy with the same
        bytes; otherwise C{twistd netguard} in this venv runs stale code.
        """
        (maker,) = netguard_makers()
        module = sys.modules["twisted.plugins.netguard_plugin"]
        self.assertIs(module.service_maker, maker)
        found = os.path.realpath(module.__file__ or "")
        if found == os.path.realpath(SOURCE_PLUGIN):
            return
        with open(found, "rb") as installed, open(SOURCE_PLUGIN, "rb") as source:
            same = installed.read() == source.read()
        self.assertTrue(
            same,
            f"{found} shadows {SOURCE_PLUGIN} and differs from it: reinstall netguard into "
            "the venv (pip install --no-deps .)",
        )

    def test_source_module_exposes_the_maker(self) -> None:
        """
        The tree's module defines a module-level provider (what the plugin system collects)
        whose options and service come from L{netguard.tap}.
        """
        module = load_source_plugin()
        self.assertEqual(module.service_maker.tapname, "netguard")
        self.assertIs(module.service_maker.options, tap.Options)
        self.assertIs(module.service_maker.makeService, tap.makeService)
        self.assertTrue(verifyObject(IServiceMaker, module.service_maker))


class OptionsParsingTests(unittest.TestCase):
    """
    C{Options.parseOptions} turns the command line into overrides and a validated L{Config}.
    """

    def setUp(self) -> None:
        self.dir = short_temp_dir(self)
        self.state = os.path.join(self.dir, "state")
        self.users = os.path.join(self.dir, "people")

    def parse(self, *argv: str) -> Any:
        """
        @return: parsed options.
        """
        options = Options()
        options.parseOptions(list(argv))
        return options

    def write_config(self, text: str) -> str:
        """
        @return: the path of a new TOML file holding C{text}.
        """
        path = os.path.join(self.dir, "netguard.toml")
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def test_every_option_becomes_an_override(self) -> None:
        """
        C{--listen} twice, C{--service}, C{--users}, C{--state-dir} (and the others) produce
        exactly the matching overrides, in order.
        """
        options = self.parse(
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--listen",
            f"unix:{self.dir}/ng.sock:mode=600",
            "--service",
            "a=tcp:host=127.0.0.1:port=1",
            "--users",
            self.users,
            "--state-dir",
            self.state,
            "--server-name",
            "gw1",
            "--log-format",
            "json",
            "--log-file",
            os.path.join(self.dir, "log"),
        )
        self.assertEqual(
            options.overrides(),
            {
                "listen": ["tcp:0:interface=127.0.0.1", f"unix:{self.dir}/ng.sock:mode=600"],
                "services": ["a=tcp:host=127.0.0.1:port=1"],
                "users_file": self.users,
                "state_dir": self.state,
                "server_name": "gw1",
                "log_format": "json",
                "log_file": os.path.join(self.dir, "log"),
            },
        )

    def test_relative_paths_made_absolute_before_any_change_of_directory(self) -> None:
        """
        C{--config}, C{--users}, C{--state-dir} and C{--log-file} given relative are made
        absolute against the directory the command ran in, so a reload after twistd has
        changed to its C{--rundir} (where anyone may have planted a file of the same
        relative name) reads the files the gateway started with. C{--log-file -} stays
        standard output.
        """
        config = self.write_config("")
        here = os.getcwd()
        self.addCleanup(os.chdir, here)
        os.chdir(self.dir)
        options = self.parse(
            "--config", os.path.basename(config), "--users", "people", "--state-dir", "state"
        )
        elsewhere = short_temp_dir(self)
        os.chdir(elsewhere)
        self.assertEqual(options["config"], config)
        overrides = options.overrides()
        self.assertEqual(
            (overrides["users_file"], overrides["state_dir"]), (self.users, self.state)
        )
        reloaded = load_config(options["config"], overrides)
        self.assertEqual(reloaded.users_file, self.users)
        os.chdir(self.dir)
        self.assertEqual(
            self.parse("--log-file", "log").overrides()["log_file"], f"{self.dir}/log"
        )
        self.assertEqual(self.parse("--log-file", "-").overrides()["log_file"], "-")
        home = os.path.expanduser("~")
        self.assertEqual(
            self.parse("--users=~/people").overrides()["users_file"], f"{home}/people"
        )

    def test_no_options_no_overrides(self) -> None:
        """
        Options not given are not overrides (the file or the defaults decide).
        """
        options = Options()
        self.assertEqual(options.overrides(), {})

    def test_loaded_config_carries_the_options(self) -> None:
        """
        The validated L{Config} in C{options["loaded"]} has the listeners (only those), the
        added service next to the default echo, the users file and the state directory.
        """
        options = self.parse(
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--listen",
            f"unix:{self.dir}/ng.sock:mode=600",
            "--service",
            "a=tcp:host=127.0.0.1:port=1",
            "--users",
            self.users,
            "--state-dir",
            self.state,
        )
        config = options["loaded"]
        self.assertIsInstance(config, Config)
        self.assertEqual(
            config.listen, ("tcp:0:interface=127.0.0.1", f"unix:{self.dir}/ng.sock:mode=600")
        )
        self.assertEqual(sorted(config.services), ["a", "echo"])
        self.assertEqual(config.services["a"].backend, "tcp:host=127.0.0.1:port=1")
        self.assertEqual(config.services["a"].users, ("*",))
        self.assertEqual(config.users_file, self.users)
        self.assertEqual(config.state_dir, self.state)
        self.assertEqual(config.origins["listen"], ORIGIN_COMMAND_LINE)

    def test_short_options(self) -> None:
        """
        C{-l}, C{-s}, C{-u}, C{-d} are C{--listen}, C{--service}, C{--users}, C{--state-dir}.
        """
        options = self.parse(
            "-l",
            "tcp:0:interface=127.0.0.1",
            "-s",
            "a=tcp:host=127.0.0.1:port=1",
            "-u",
            self.users,
            "-d",
            self.state,
        )
        self.assertEqual(options["listen"], ["tcp:0:interface=127.0.0.1"])
        self.assertEqual(options["service"], ["a=tcp:host=127.0.0.1:port=1"])
        self.assertEqual(options["loaded"].users_file, self.users)
        self.assertEqual(options["loaded"].state_dir, self.state)

    def test_default_users_file_follows_state_dir(self) -> None:
        """
        Without C{--users}, the users file is C{<state-dir>/users}.
        """
        options = self.parse("--state-dir", self.state)
        self.assertEqual(options["loaded"].users_file, os.path.join(self.state, "users"))

    def test_config_file_read_and_options_override_it(self) -> None:
        """
        C{--config} reads the TOML file; an option overrides the same key of the file.
        """
        path = self.write_config(
            'server_name = "from-file"\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
            "[limits]\nmax_line_length = 2048\n"
        )
        options = self.parse("--config", path, "--server-name", "from-cli", "-d", self.state)
        config = options["loaded"]
        self.assertEqual(config.source, path)
        self.assertEqual(config.server_name, "from-cli")
        self.assertEqual(config.origins["server_name"], ORIGIN_COMMAND_LINE)
        self.assertEqual(config.limits.max_line_length, 2048)
        self.assertEqual(config.origins["limits.max_line_length"], ORIGIN_FILE)
        self.assertEqual(config.listen, ("tcp:0:interface=127.0.0.1",))

    def test_listen_option_replaces_files_listeners(self) -> None:
        """
        A C{--listen} given on the command line replaces the file's C{listen}.
        """
        path = self.write_config('listen = ["tcp:0:interface=127.0.0.1"]\n')
        options = self.parse("-c", path, "-d", self.state, "-l", r"tcp:1:interface=\:\:1")
        self.assertEqual(options["loaded"].listen, (r"tcp:1:interface=\:\:1",))


class OptionsErrorTests(unittest.TestCase):
    """
    Every bad value becomes a L{usage.UsageError} whose message names the problem in one
    line (twistd prints it after the usage); never another exception.
    """

    def setUp(self) -> None:
        self.dir = short_temp_dir(self)
        self.state = os.path.join(self.dir, "state")

    def refused(self, *argv: str) -> str:
        """
        Parse C{argv} (with a state directory) expecting a L{usage.UsageError}.

        @return: its message, checked to be one line with no traceback.
        """
        options = Options()
        error = self.assertRaises(
            usage.UsageError, options.parseOptions, ["--state-dir", self.state, *argv]
        )
        message = str(error)
        self.assertTrue(message)
        self.assertNotIn("\n", message)
        self.assertNotIn("Traceback", message)
        self.assertIsNone(error.__cause__)
        return message

    def write_config(self, text: str) -> str:
        path = os.path.join(self.dir, "bad.toml")
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def test_unknown_listener_type(self) -> None:
        message = self.refused("--listen", "bogus:xx")
        self.assertIn(COMMAND_LINE_SOURCE, message)
        self.assertIn("listen[0]", message)
        self.assertIn("bogus", message)

    def test_listener_port_out_of_range(self) -> None:
        message = self.refused("--listen", "tcp:70000:interface=127.0.0.1")
        self.assertIn("listen[0]", message)
        self.assertIn("70000", message)

    def test_second_listener_names_its_index(self) -> None:
        message = self.refused("-l", "tcp:0:interface=127.0.0.1", "-l", "bogus:xx")
        self.assertIn("listen[1]", message)

    def test_service_without_equals(self) -> None:
        message = self.refused("--service", "redis")
        self.assertIn("NAME=ENDPOINT", message)
        self.assertIn("redis", message)

    def test_service_with_bad_backend(self) -> None:
        message = self.refused("--service", "a=bogus:x")
        self.assertIn("a", message)
        self.assertIn("bogus", message)

    def test_service_with_bad_name(self) -> None:
        message = self.refused("--service", "bad name!=tcp:host=127.0.0.1:port=1")
        self.assertIn("service", message)

    def test_bad_log_format(self) -> None:
        message = self.refused("--log-format", "xml")
        self.assertIn("log_format", message)
        self.assertIn("json", message)

    def test_bad_server_name(self) -> None:
        message = self.refused("--server-name", "has space")
        self.assertIn("server_name", message)

    def test_unknown_option(self) -> None:
        message = self.refused("--bogus")
        self.assertIn("bogus", message)

    def test_missing_config_file(self) -> None:
        path = os.path.join(self.dir, "absent.toml")
        message = self.refused("--config", path)
        self.assertIn(path, message)

    def test_config_file_syntax_error(self) -> None:
        path = self.write_config("listen = [\n")
        message = self.refused("--config", path)
        self.assertIn(path, message)

    def test_config_file_unknown_key(self) -> None:
        path = self.write_config("colour = 1\n")
        message = self.refused("--config", path)
        self.assertIn(path, message)
        self.assertIn("colour", message)

    def test_config_file_value_out_of_range(self) -> None:
        path = self.write_config("[limits]\nmax_line_length = 1\n")
        message = self.refused("--config", path)
        self.assertIn(path, message)
        self.assertIn("limits.max_line_length", message)
        self.assertIn("from 64 to 65536", message)


class HelpTests(unittest.TestCase):
    """
    C{twistd netguard --help} (the options' usage text) documents every option.
    """

    def test_usage_lists_every_option(self) -> None:
        text = Options().getUsage(width=100)
        for name in DOCUMENTED_OPTIONS:
            self.assertIn(f"--{name}=", text)

    def test_str_is_synopsis_and_usage(self) -> None:
        options = Options()
        text = str(options)
        self.assertIn(options.synopsis, text)
        for name in DOCUMENTED_OPTIONS:
            self.assertIn(f"--{name}=", text)

    def test_every_option_has_help_text(self) -> None:
        docs = Options().docs
        for name in DOCUMENTED_OPTIONS:
            self.assertTrue(docs.get(name), f"--{name} has no help text")

    def test_option_help_has_no_stray_whitespace(self) -> None:
        """
        A multi-line docstring does not leave runs of spaces in the rendered help
        (C{"only these         listeners"}).
        """
        docs = Options().docs
        for name in DOCUMENTED_OPTIONS:
            self.assertEqual(docs[name], " ".join(docs[name].split()), f"--{name}")

    def test_log_file_help_says_what_dash_means(self) -> None:
        """
        C{--log-file -} means no file of netguard's own (events go only to twistd's log,
        a file when daemonized), not "standard output": the help says so.
        """
        docs = Options().docs
        self.assertIn("- (the default) for none", docs["log-file"])
        self.assertIn("only to twistd's log", docs["log-file"])
        self.assertIn("twistd.log", docs["log-file"])
        self.assertNotIn("- for standard output", docs["log-file"])
        self.assertIn("--log-file", docs["log-format"])

    def test_every_option_in_the_operating_guide(self) -> None:
        """
        Every option of C{twistd netguard} but C{--help}, C{--version} included, is named in
        docs/operating.md section 3.4 and in the README.
        """
        with open(os.path.join(REPO, "docs", "operating.md"), encoding="utf-8") as handle:
            guide = handle.read()
        start = guide.index("### 3.4 `twistd netguard` options")
        section = guide[start : guide.index("\n## ", start)]
        with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
            readme = handle.read()
        names = [name.rstrip("=") for name in Options().longOpt if name != "help"]
        self.assertIn("version", names)
        for name in names:
            self.assertIn(f"--{name}", section, f"--{name} is not in operating.md 3.4")
        self.assertIn("twistd netguard --version", readme)

    def test_usage_explains_the_defaults(self) -> None:
        text = " ".join(Options().getUsage(width=100).split())
        self.assertIn("127.0.0.1:7700", text)
        self.assertIn("echo", text)
        self.assertIn("repeatable", text)
        self.assertIn("NAME=ENDPOINT", text)


class CheckBeforeForkTests(unittest.TestCase):
    """
    What twistd or the workers would find wrong only after a daemonizing twistd forked is
    refused by C{makeService} first (L{tap._check_before_fork}).
    """

    def config(self, workers: int, password_file: str = "") -> Any:
        return SimpleNamespace(
            workers=workers, shared=SimpleNamespace(password_file=password_file)
        )

    def test_workers_password_file_of_another_user(self) -> None:
        """
        With workers under C{--uid}, a C{[shared]} password file the run-as user does not
        own is refused with one line naming it.
        """
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("pw\n")
        other = os.stat(path).st_uid + 1
        error = self.assertRaises(
            SystemExit, tap._check_before_fork, self.config(2, path), None, (other, other)
        )
        self.assertIn(f"password_file={path} belongs to uid", str(error.code))

    def test_single_process_or_no_drop_left_alone(self) -> None:
        """
        The other side: one process (it reads the file before dropping root), or no
        C{--uid}, is not refused.
        """
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("pw\n")
        other = os.stat(path).st_uid + 1
        tap._check_before_fork(self.config(1, path), None, (other, other))
        tap._check_before_fork(self.config(2, path), None, None)

    def test_uid_switch_only_root_could_make(self) -> None:
        """
        A C{--uid} of another user, not running as root: refused with one line.
        """
        self.patch(tap.os, "geteuid", lambda: 1000)
        self.patch(tap.os, "getuid", lambda: 1000)
        self.patch(tap.os, "getgid", lambda: 1000)
        error = self.assertRaises(
            SystemExit, tap._check_before_fork, self.config(1), {"uid": 0, "gid": 0}, None
        )
        self.assertIn("only root can switch to another user", str(error.code))


class VersionTests(unittest.TestCase):
    """
    C{twistd netguard --version} shows netguard's version, not only Twisted's.
    """

    def expected(self) -> str:
        from twisted.copyright import version as twisted_version

        from netguard import __version__

        return f"netguard {__version__} (Twisted {twisted_version})\n"

    def test_version_option_prints_netguards_version_and_exits_0(self) -> None:
        """
        The options' C{--version} prints C{netguard <version> (Twisted <version>)} and
        exits with status 0 before any configuration is read.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        error = self.assertRaises(
            SystemExit, Options().parseOptions, ["--version", "--config", "/nonexistent"]
        )
        self.assertEqual(error.code, 0)
        self.assertEqual(out.getvalue(), self.expected())

    def test_twistd_netguard_version_real_process(self) -> None:
        """
        A real C{twistd netguard --version}, finding this tree's plugin, prints netguard's
        version line and exits 0.
        """
        from tests.integration.test_twistd import TWISTD, python_env, run

        where = tempfile.mkdtemp(prefix="ngv-", dir="/tmp")
        self.addCleanup(shutil.rmtree, where, True)
        prefix, env = python_env(REPO, where)
        done = run([*prefix, "-c", TWISTD, "netguard", "--version"], env, where)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, self.expected())

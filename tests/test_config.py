"""
Tests for L{netguard.config}: defaults, the file, overrides, every kind of bad input, port
names, warnings, the describe texts and immutability.

The environment-dependent defaults are pinned by passing C{environ} and C{euid}, so the tests
behave the same as root and as a user. Nothing here listens or writes outside trial's temp.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile

import attrs
from twisted.internet import endpoints
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.trial import unittest

from netguard import config as config_module
from netguard.admission import AdmissionPolicy
from netguard.config import (
    COMMAND_LINE_SOURCE,
    DEFAULT_MAX_AUTH_ATTEMPTS,
    DEFAULTS_SOURCE,
    GATEWAY_LIMITS,
    ORIGIN_COMMAND_LINE,
    ORIGIN_DEFAULT,
    ORIGIN_FILE,
    Config,
    ConfigError,
    LogConfig,
    ServiceConfig,
    TLSListenConfig,
    default_listen,
    default_state_dir,
    default_users_file,
    describe,
    describe_defaults,
    load_config,
)
from netguard.config import text as config_text
from netguard.config.schema import LIMIT_KEYS
from netguard.config.table_schema import OVERLOAD_KEYS
from netguard.config.tls_schema import TLS_LISTEN_KEYS, TLS_SETTINGS_KEYS
from netguard.framing import FramingLimits
from netguard.ops.overload import OverloadSettings
from netguard.redaction import redact_description
from netguard.tls import ServerTLSSettings
from tests.test_endpoints import _port_of

#: A user environment: the default state directory becomes /xdg/netguard.
ENV = {"XDG_STATE_HOME": "/xdg", "HOME": "/home/u"}
UID = 1000
STATE = "/xdg/netguard"

LIMIT_NAMES = [spec.name for spec in LIMIT_KEYS]
SERVICE_KEYS = ["backend", "users", "groups", "connect_timeout", "idle_timeout", "socks5"]


class ConfigTestCase(unittest.TestCase):
    """
    Helpers: write a configuration file into trial's temp directory and load it with a pinned
    environment.
    """

    def write(self, text: str | bytes, name: str = "netguard.toml") -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        data = text.encode("utf-8") if isinstance(text, str) else text
        with open(path, "wb") as f:
            f.write(data)
        return path

    def load(self, text: str | None = None, overrides: dict[str, object] | None = None) -> Config:
        path = None if text is None else self.write(text)
        return load_config(path, overrides, environ=ENV, euid=UID)

    def assertFileError(self, text: str | bytes, key: str | None, *fragments: str) -> ConfigError:
        """
        Loading C{text} fails with a L{ConfigError} naming the file and C{key}, whose message
        contains every fragment.
        """
        path = self.write(text)
        error = self.assertRaises(ConfigError, load_config, path, None, environ=ENV, euid=UID)
        self.assertEqual(error.path, path)
        self.assertEqual(error.key, key)
        for fragment in fragments:
            self.assertIn(fragment, error.message)
        prefix = f"{path}: {key}: " if key else f"{path}: "
        self.assertTrue(str(error).startswith(prefix), str(error))
        return error

    def assertOverrideError(
        self, overrides: dict[str, object], key: str, *fragments: str
    ) -> ConfigError:
        error = self.assertRaises(ConfigError, load_config, None, overrides, environ=ENV, euid=UID)
        self.assertEqual(error.path, COMMAND_LINE_SOURCE)
        self.assertEqual(error.key, key)
        for fragment in fragments:
            self.assertIn(fragment, error.message)
        return error


class ConfigErrorTests(unittest.TestCase):
    """
    L{ConfigError} carries structured data and renders as C{path: key: message}.
    """

    def test_attributes(self) -> None:
        error = ConfigError("/etc/ng.toml", "limits.max_line_length", "must be small")
        self.assertEqual(
            (error.path, error.key, error.message),
            ("/etc/ng.toml", "limits.max_line_length", "must be small"),
        )

    def test_str_with_key(self) -> None:
        error = ConfigError("/etc/ng.toml", "limits.max_line_length", "must be small")
        self.assertEqual(str(error), "/etc/ng.toml: limits.max_line_length: must be small")

    def test_str_without_key(self) -> None:
        self.assertEqual(
            str(ConfigError("/etc/ng.toml", None, "no such file")), "/etc/ng.toml: no such file"
        )


class DefaultStateDirTests(unittest.TestCase):
    """
    L{default_state_dir} and L{default_users_file}.
    """

    def test_root(self) -> None:
        self.assertEqual(default_state_dir({"XDG_STATE_HOME": "/x"}, 0), "/var/lib/netguard")

    def test_xdg_state_home(self) -> None:
        self.assertEqual(
            default_state_dir({"XDG_STATE_HOME": "/x", "HOME": "/h"}, UID), "/x/netguard"
        )

    def test_relative_xdg_state_home_is_ignored(self) -> None:
        self.assertEqual(
            default_state_dir({"XDG_STATE_HOME": "rel", "HOME": "/h"}, UID),
            "/h/.local/state/netguard",
        )

    def test_home(self) -> None:
        self.assertEqual(default_state_dir({"HOME": "/h"}, UID), "/h/.local/state/netguard")

    def test_users_file_in_given_state_dir(self) -> None:
        self.assertEqual(default_users_file("/srv/ng"), "/srv/ng/users")

    def test_users_file_in_default_state_dir(self) -> None:
        self.assertEqual(default_users_file(environ=ENV, euid=UID), "/xdg/netguard/users")

    def test_users_file_is_what_the_gateway_uses(self) -> None:
        """
        C{netguard adduser} without C{--users} writes where a default gateway reads.
        """
        for environ, euid in ((ENV, UID), ({"HOME": "/h"}, UID), ({}, 0)):
            self.assertEqual(
                default_users_file(environ=environ, euid=euid),
                load_config(None, environ=environ, euid=euid).users_file,
            )

    def test_users_file_without_arguments_matches_load_config(self) -> None:
        self.assertEqual(default_users_file(), load_config().users_file)


class DefaultsTests(ConfigTestCase):
    """
    With no file and no overrides, the configuration is safe and complete.
    """

    def test_source(self) -> None:
        self.assertEqual(self.load().source, DEFAULTS_SOURCE)

    def test_server_name(self) -> None:
        self.assertEqual(self.load().server_name, "netguard")

    def test_state_dir(self) -> None:
        self.assertEqual(self.load().state_dir, STATE)

    def test_users_file(self) -> None:
        self.assertEqual(self.load().users_file, STATE + "/users")

    def test_loopback_listener(self) -> None:
        self.assertEqual(self.load().listen[0], "tcp:7700:interface=127.0.0.1")

    def test_unix_listener_under_state_dir(self) -> None:
        self.assertEqual(self.load().listen[1], f"unix:{STATE}/netguard.sock:mode=600:lockfile=1")

    def test_exactly_two_listeners(self) -> None:
        self.assertEqual(len(self.load().listen), 2)

    def test_default_listeners_parse_in_twisted(self) -> None:
        for description in self.load().listen:
            endpoints.serverFromString(MemoryReactor(), description)

    def test_unix_listener_escapes_colons_in_state_dir(self) -> None:
        config = self.load(overrides={"state_dir": "/srv/a:b"})
        self.assertEqual(config.listen[1], "unix:/srv/a\\:b/netguard.sock:mode=600:lockfile=1")
        reactor = MemoryReactor()
        endpoints.serverFromString(reactor, config.listen[1]).listen(Factory())
        [(address, _, _, mode, _)] = reactor.unixServers
        self.assertEqual((address, mode), ("/srv/a:b/netguard.sock", 0o600))

    def test_default_listen_helper(self) -> None:
        self.assertEqual(default_listen(STATE), self.load().listen)

    def test_echo_service_only(self) -> None:
        self.assertEqual(list(self.load().services), ["echo"])

    def test_echo_service_values(self) -> None:
        self.assertEqual(
            self.load().services["echo"], ServiceConfig("echo", "builtin:echo", ("*",))
        )

    def test_echo_service_open_to_every_user(self) -> None:
        self.assertTrue(self.load().services["echo"].allows("anyone", ()))

    def test_every_limit_default(self) -> None:
        limits = self.load().limits
        self.assertEqual(limits.max_line_length, 1024)
        self.assertEqual(limits.max_lines_before_auth, 16)
        self.assertEqual(limits.max_bytes_before_auth, 8192)
        self.assertEqual(limits.greeting_delay, 0.1)
        self.assertEqual(limits.handshake_timeout, 30.0)
        self.assertEqual(limits.idle_timeout, 120.0)
        self.assertEqual(limits.write_timeout, 30.0)
        self.assertEqual(self.load().max_auth_attempts, 3)
        self.assertEqual(limits.max_lines_after_auth, 32)
        self.assertEqual(limits.max_bytes_after_auth, 8192)
        self.assertEqual(limits.max_errors, 10)
        self.assertEqual(limits.open_timeout, 30.0)

    def test_limits_match_limits_class_defaults(self) -> None:
        loaded = self.load()
        self.assertEqual(loaded.limits, GATEWAY_LIMITS)
        self.assertEqual(loaded.max_auth_attempts, DEFAULT_MAX_AUTH_ATTEMPTS)

    def test_log_defaults(self) -> None:
        self.assertEqual(self.load().log, LogConfig(format="text", file="-"))

    def test_no_warnings(self) -> None:
        self.assertEqual(self.load().warnings, ())

    def test_every_origin_is_default(self) -> None:
        self.assertEqual(set(self.load().origins.values()), {ORIGIN_DEFAULT})

    def test_empty_file_is_the_defaults(self) -> None:
        from_file = self.load("")
        defaults = self.load()
        self.assertEqual(attrs.evolve(from_file, source=DEFAULTS_SOURCE), defaults)


class FileTests(ConfigTestCase):
    """
    The file overrides each key and table.
    """

    def test_top_level_keys(self) -> None:
        config = self.load(
            'server_name = "gw-1.example"\n'
            'state_dir = "/srv/ng"\n'
            'users_file = "/etc/ng/users"\n'
            'listen = ["tcp:7701:interface=127.0.0.1"]\n'
        )
        self.assertEqual(
            (config.server_name, config.state_dir, config.users_file, config.listen),
            ("gw-1.example", "/srv/ng", "/etc/ng/users", ("tcp:7701:interface=127.0.0.1",)),
        )

    def test_source_is_the_file(self) -> None:
        path = self.write("")
        self.assertEqual(load_config(path, environ=ENV, euid=UID).source, path)

    def test_state_dir_moves_default_users_file_and_socket(self) -> None:
        config = self.load('state_dir = "/srv/ng"\n')
        self.assertEqual(config.users_file, "/srv/ng/users")
        self.assertEqual(config.listen[1], "unix:/srv/ng/netguard.sock:mode=600:lockfile=1")

    def test_relative_paths_are_taken_from_the_file_directory(self) -> None:
        path = self.write(
            'state_dir = "state"\nusers_file = "../users"\nlisten = ["unix:/run/x.sock"]\n'
        )
        config = load_config(path, environ=ENV, euid=UID)
        base = os.path.dirname(os.path.abspath(path))
        self.assertEqual(config.state_dir, os.path.join(base, "state"))
        self.assertEqual(config.users_file, os.path.normpath(os.path.join(base, "..", "users")))

    def test_limits_table(self) -> None:
        config = self.load(
            "[limits]\n"
            "max_line_length = 2048\n"
            "max_lines_before_auth = 8\n"
            "max_bytes_before_auth = 4096\n"
            "greeting_delay = 0.5\n"
            "handshake_timeout = 10.0\n"
            "idle_timeout = 60\n"
            "write_timeout = 5.5\n"
            "max_auth_attempts = 1\n"
            "max_lines_after_auth = 4\n"
            "max_bytes_after_auth = 512\n"
            "max_errors = 2\n"
            "open_timeout = 7\n"
        )
        self.assertEqual(config.max_auth_attempts, 1)
        self.assertEqual(
            config.limits,
            FramingLimits(
                max_line_length=2048,
                max_lines_before_auth=8,
                max_bytes_before_auth=4096,
                greeting_delay=0.5,
                handshake_timeout=10.0,
                idle_timeout=60.0,
                write_timeout=5.5,
                max_lines_after_auth=4,
                max_bytes_after_auth=512,
                max_errors=2,
                open_timeout=7.0,
            ),
        )

    def test_after_login_limits_reach_the_framing(self) -> None:
        """
        The bounds of the line phase after login, set in C{[limits]}, are the ones the
        gateway's framing enforces.
        """
        framing = self.load(
            "[limits]\nmax_lines_after_auth = 4\nmax_bytes_after_auth = 512\n"
            "max_errors = 2\nopen_timeout = 7\n"
        ).limits
        self.assertIsInstance(framing, FramingLimits)
        self.assertEqual(
            (
                framing.max_lines_after_auth,
                framing.max_bytes_after_auth,
                framing.max_errors,
                framing.open_timeout,
            ),
            (4, 512, 2, 7.0),
        )

    def test_integer_for_a_time_becomes_float(self) -> None:
        limits = self.load("[limits]\nidle_timeout = 60\n").limits
        self.assertIsInstance(limits.idle_timeout, float)

    def test_partial_limits_keep_other_defaults(self) -> None:
        loaded = self.load("[limits]\nmax_auth_attempts = 5\n")
        self.assertEqual(loaded.limits, GATEWAY_LIMITS)
        self.assertEqual(loaded.max_auth_attempts, 5)

    def test_bounds_are_inclusive(self) -> None:
        limits = self.load(
            "[limits]\nmax_line_length = 64\nmax_bytes_before_auth = 1048576\n"
        ).limits
        self.assertEqual((limits.max_line_length, limits.max_bytes_before_auth), (64, 1048576))

    def test_log_table(self) -> None:
        log = self.load('[log]\nformat = "json"\nfile = "/var/log/ng.log"\n').log
        self.assertEqual(log, LogConfig(format="json", file="/var/log/ng.log"))

    def test_services_table_replaces_default_echo(self) -> None:
        config = self.load(
            '[services.redis]\nbackend = "tcp:host=127.0.0.1:port=6379"\nusers = ["alice"]\n'
        )
        self.assertEqual(list(config.services), ["redis"])

    def test_service_every_key(self) -> None:
        config = self.load(
            "[services.pg]\n"
            'backend = "unix:path=/run/postgresql/.s.PGSQL.5432"\n'
            'users = ["alice", "bob"]\n'
            'groups = ["dba"]\n'
            "connect_timeout = 2.5\n"
            "idle_timeout = 600\n"
        )
        self.assertEqual(
            config.services["pg"],
            ServiceConfig(
                "pg",
                "unix:path=/run/postgresql/.s.PGSQL.5432",
                ("alice", "bob"),
                ("dba",),
                2.5,
                600.0,
                None,
            ),
        )

    def test_service_socks5(self) -> None:
        config = self.load(
            '[services.r]\nbackend = "tcp:host=10.0.0.5:port=6379"\nusers = ["a"]\n'
            'socks5 = "tcp:host=127.0.0.1:port=1080"\n'
        )
        self.assertEqual(config.services["r"].socks5, "tcp:host=127.0.0.1:port=1080")

    def test_echo_kept_when_named_again(self) -> None:
        config = self.load('[services.echo]\nbackend = "builtin:echo"\nusers = ["*"]\n')
        self.assertEqual(config.services["echo"], ServiceConfig("echo", "builtin:echo", ("*",)))

    def test_empty_services_table_offers_none(self) -> None:
        config = self.load("[services]\n")
        self.assertEqual(dict(config.services), {})

    def test_empty_services_table_warns(self) -> None:
        config = self.load("[services]\n")
        self.assertTrue(any(w.startswith("services:") for w in config.warnings), config.warnings)

    def test_duplicate_user_names_collapse(self) -> None:
        config = self.load('[services.e]\nbackend = "builtin:echo"\nusers = ["a", "a", "b"]\n')
        self.assertEqual(config.services["e"].users, ("a", "b"))

    def test_quoted_service_name_with_dots(self) -> None:
        config = self.load('[services."db.main"]\nbackend = "builtin:echo"\nusers = ["a"]\n')
        self.assertEqual(list(config.services), ["db.main"])

    def test_origins_mark_file_values(self) -> None:
        config = self.load('server_name = "x"\n[limits]\nmax_auth_attempts = 5\n')
        self.assertEqual(config.origins["server_name"], ORIGIN_FILE)
        self.assertEqual(config.origins["limits.max_auth_attempts"], ORIGIN_FILE)
        self.assertEqual(config.origins["limits.max_line_length"], ORIGIN_DEFAULT)

    def test_backslash_escape_in_listener_kept(self) -> None:
        config = self.load("listen = ['unix:/srv/a\\:b.sock:mode=600']\n")
        self.assertEqual(config.listen, ("unix:/srv/a\\:b.sock:mode=600",))

    def test_ipv6_interface_with_escaped_colons(self) -> None:
        config = self.load("listen = ['tcp6:7700:interface=\\:\\:1']\n")
        self.assertEqual(config.warnings, ())

    def test_listener_types_accepted(self) -> None:
        listeners = [
            "tcp:7700:interface=127.0.0.1",
            "tcp6:7701:interface=\\:\\:1",
            "ssl:7702:privateKey=/etc/ng/key.pem:certKey=/etc/ng/cert.pem:interface=127.0.0.1",
            "tls:/etc/ng/certs:7703:interface=\\:\\:1",
            "unix:/run/ng.sock:mode=600:lockfile=1",
            "systemd:domain=INET:index=0",
            "haproxy:tcp:7704:interface=127.0.0.1",
        ]
        text = "listen = [" + ", ".join(f"'{item}'" for item in listeners) + "]\n"
        self.assertEqual(self.load(text).listen, tuple(listeners))

    def test_backend_types_accepted(self) -> None:
        backends = [
            "tcp:host=127.0.0.1:port=6379",
            "tcp:127.0.0.1:6379",
            "unix:path=/run/redis.sock",
            "tls:host=db.example:port=5432",
            "ssl:host=db.example:port=5432:hostname=db.example",
            "builtin:echo",
        ]
        text = "".join(
            f"[services.s{i}]\nbackend = '{backend}'\nusers = ['*']\n"
            for i, backend in enumerate(backends)
        )
        config = self.load(text)
        self.assertEqual([s.backend for s in config.services.values()], backends)


class OverrideTests(ConfigTestCase):
    """
    Command-line overrides beat the file; C{listen} replaces, C{services} adds.
    """

    FILE = (
        'server_name = "file"\n'
        'state_dir = "/srv/file"\n'
        'users_file = "/srv/file/u"\n'
        'listen = ["tcp:7001:interface=127.0.0.1"]\n'
        '[log]\nformat = "text"\nfile = "/var/log/file.log"\n'
        '[services.db]\nbackend = "tcp:host=127.0.0.1:port=5432"\nusers = ["alice"]\n'
        'groups = ["dba"]\nconnect_timeout = 3\n'
    )

    def test_server_name(self) -> None:
        self.assertEqual(self.load(self.FILE, {"server_name": "cli"}).server_name, "cli")

    def test_state_dir(self) -> None:
        self.assertEqual(self.load(self.FILE, {"state_dir": "/srv/cli"}).state_dir, "/srv/cli")

    def test_users_file(self) -> None:
        self.assertEqual(self.load(self.FILE, {"users_file": "/tmp/u"}).users_file, "/tmp/u")

    def test_log_format(self) -> None:
        self.assertEqual(self.load(self.FILE, {"log_format": "json"}).log.format, "json")

    def test_log_file(self) -> None:
        self.assertEqual(self.load(self.FILE, {"log_file": "-"}).log.file, "-")

    def test_origin_is_command_line(self) -> None:
        config = self.load(self.FILE, {"server_name": "cli"})
        self.assertEqual(config.origins["server_name"], ORIGIN_COMMAND_LINE)

    def test_state_dir_moves_default_users_file_and_socket(self) -> None:
        config = self.load(None, {"state_dir": "/srv/cli"})
        self.assertEqual(config.users_file, "/srv/cli/users")
        self.assertEqual(config.listen[1], "unix:/srv/cli/netguard.sock:mode=600:lockfile=1")

    def test_file_users_file_beats_derived_default(self) -> None:
        config = self.load(self.FILE, {"state_dir": "/srv/cli"})
        self.assertEqual(config.users_file, "/srv/file/u")

    def test_relative_override_path_uses_current_directory(self) -> None:
        config = self.load(None, {"users_file": "rel/users"})
        self.assertEqual(config.users_file, os.path.join(os.getcwd(), "rel", "users"))

    def test_listen_replaces_file_listeners(self) -> None:
        config = self.load(
            self.FILE, {"listen": ["tcp:7002:interface=127.0.0.1", "unix:/run/x.sock"]}
        )
        self.assertEqual(config.listen, ("tcp:7002:interface=127.0.0.1", "unix:/run/x.sock"))

    def test_listen_replaces_default_listeners(self) -> None:
        config = self.load(None, {"listen": ["tcp:7002:interface=127.0.0.1"]})
        self.assertEqual(config.listen, ("tcp:7002:interface=127.0.0.1",))

    def test_empty_listen_keeps_file_listeners(self) -> None:
        self.assertEqual(
            self.load(self.FILE, {"listen": []}).listen, ("tcp:7001:interface=127.0.0.1",)
        )

    def test_none_means_not_given(self) -> None:
        config = self.load(self.FILE, {"server_name": None, "listen": None, "services": None})
        self.assertEqual(config.server_name, "file")

    def test_service_adds(self) -> None:
        config = self.load(self.FILE, {"services": ["redis=tcp:host=127.0.0.1:port=6379"]})
        self.assertEqual(list(config.services), ["db", "redis"])
        self.assertEqual(
            config.services["redis"],
            ServiceConfig("redis", "tcp:host=127.0.0.1:port=6379", ("*",)),
        )

    def test_service_adds_to_default_echo(self) -> None:
        config = self.load(None, {"services": ["redis=unix:path=/run/redis.sock"]})
        self.assertEqual(list(config.services), ["echo", "redis"])

    def test_service_replaces_same_name(self) -> None:
        config = self.load(self.FILE, {"services": ["db=unix:path=/run/pg.sock"]})
        self.assertEqual(
            config.services["db"], ServiceConfig("db", "unix:path=/run/pg.sock", ("*",))
        )

    def test_service_replacing_resets_origins(self) -> None:
        config = self.load(self.FILE, {"services": ["db=unix:path=/run/pg.sock"]})
        self.assertEqual(config.origins["services.db.backend"], ORIGIN_COMMAND_LINE)
        self.assertEqual(config.origins["services.db.connect_timeout"], ORIGIN_DEFAULT)

    def test_service_replacing_drops_its_file_warnings(self) -> None:
        config = self.load(
            '[services.db]\nbackend = "ssl:host=db:port=5432"\nusers = ["a"]\n',
            {"services": ["db=tcp:host=127.0.0.1:port=5432"]},
        )
        self.assertEqual(config.warnings, ())

    def test_unknown_override_key(self) -> None:
        self.assertOverrideError({"colour": "red"}, "colour", "unknown override", "listen")

    def test_listen_must_be_a_list(self) -> None:
        self.assertOverrideError({"listen": "tcp:7000"}, "listen", "list of strings")

    def test_bad_listen_override(self) -> None:
        self.assertOverrideError({"listen": ["tcp:7000:nope=1"]}, "listen[0]", "unknown option")

    def test_service_without_equals(self) -> None:
        self.assertOverrideError({"services": ["redis"]}, "services[0]", "NAME=ENDPOINT")

    def test_service_bad_name(self) -> None:
        self.assertOverrideError({"services": ["-x=builtin:echo"]}, "services[0]", "service name")

    def test_service_bad_endpoint(self) -> None:
        self.assertOverrideError(
            {"services": ["redis=tcp:host=127.0.0.1"]}, "services.redis.backend", "needs port"
        )

    def test_bad_server_name(self) -> None:
        self.assertOverrideError({"server_name": "a b"}, "server_name", "1 to 64 characters")

    def test_bad_log_format(self) -> None:
        self.assertOverrideError({"log_format": "xml"}, "log_format", '"text", "json"')

    def test_state_dir_too_long_for_default_socket(self) -> None:
        self.assertOverrideError({"state_dir": "/" + "d" * 120}, "state_dir", "limit is 107")


class FileErrorTests(ConfigTestCase):
    """
    Each bad file is a L{ConfigError} naming the file, the dotted key and what is allowed.
    """

    def test_unknown_top_level_key(self) -> None:
        self.assertFileError("colour = 1\n", "colour", "unknown key", "server_name", "listen")

    def test_unknown_limits_key(self) -> None:
        self.assertFileError(
            "[limits]\nmax_line = 10\n", "limits.max_line", "unknown key", "max_line_length"
        )

    def test_unknown_log_key(self) -> None:
        self.assertFileError('[log]\nlevel = "debug"\n', "log.level", "unknown key", "format")

    def test_unknown_service_key(self) -> None:
        self.assertFileError(
            '[services.e]\nbackend = "builtin:echo"\nuser = ["a"]\n',
            "services.e.user",
            "unknown key",
            "users",
        )

    def test_string_for_integer(self) -> None:
        self.assertFileError(
            '[limits]\nmax_line_length = "big"\n',
            "limits.max_line_length",
            "an integer from 64 to 65536",
            'the string "big"',
        )

    def test_boolean_for_integer(self) -> None:
        self.assertFileError(
            "[limits]\nmax_auth_attempts = true\n",
            "limits.max_auth_attempts",
            "an integer from 1 to 20",
            "boolean",
        )

    def test_float_for_integer(self) -> None:
        self.assertFileError(
            "[limits]\nmax_line_length = 100.5\n", "limits.max_line_length", "an integer"
        )

    def test_huge_integer_for_number_of_seconds(self) -> None:
        """
        An integer too large for a float (C{1} and 400 zeros, or C{2**1024}) given for a
        number of seconds is a L{ConfigError} naming the key and its range, not an
        C{OverflowError}.
        """
        for huge in (10**400, 2**1024, -(10**400)):
            self.assertFileError(
                f"[limits]\nhandshake_timeout = {huge}\n",
                "limits.handshake_timeout",
                "a number of seconds from 1 to 3600",
                "the integer",
            )

    def test_admission_counts_bounded(self) -> None:
        """
        An integer count of C{[admission]} is taken up to 2**31 - 1 and refused one past it
        (and far past it), naming the key: a huge one crashed the start or every
        connection's admission.
        """
        for key in ("per_source_burst", "penalty_threshold", "per_source_max"):
            config = self.load(f"[admission]\n{key} = {2**31 - 1}\n")
            self.assertEqual(getattr(config.admission, key), 2**31 - 1)
            for huge in (2**31, 10**400):
                self.assertFileError(f"[admission]\n{key} = {huge}\n", f"admission.{key}")

    def test_huge_integer_for_admission_time(self) -> None:
        """
        In C{[admission]}, an integer too large for a float is a L{ConfigError} naming the
        key; the largest integer a float holds is taken as a number like any other.
        """
        for key in ("penalty_max", "penalty_decay"):
            for huge in (10**400, 2**1024):
                self.assertFileError(
                    f"[admission]\n{key} = {huge}\n", f"admission.{key}", "the integer"
                )
        biggest = int(sys.float_info.max)
        config = self.load(f"[admission]\npenalty_decay = {biggest}\n")
        self.assertEqual(config.admission.penalty_decay, float(biggest))
        self.assertFileError(
            f"[admission]\npenalty_max = {biggest}\n", "admission.penalty_max", "within"
        )

    def test_string_for_number_of_seconds(self) -> None:
        self.assertFileError(
            '[limits]\nidle_timeout = "2m"\n',
            "limits.idle_timeout",
            "a number of seconds from 1 to 86400",
        )

    def test_limits_not_a_table(self) -> None:
        self.assertFileError("limits = 5\n", "limits", "must be a table")

    def test_log_not_a_table(self) -> None:
        self.assertFileError('log = "x"\n', "log", "must be a table")

    def test_listen_not_an_array(self) -> None:
        self.assertFileError('listen = "tcp:7000"\n', "listen", "array of server endpoint")

    def test_listen_item_not_a_string(self) -> None:
        self.assertFileError("listen = [7000]\n", "listen[0]", "endpoint string")

    def test_server_name_wrong_type(self) -> None:
        self.assertFileError("server_name = 5\n", "server_name", "1 to 64 characters")

    def test_state_dir_wrong_type(self) -> None:
        self.assertFileError("state_dir = []\n", "state_dir", "a path")

    def test_empty_users_file(self) -> None:
        self.assertFileError('users_file = ""\n', "users_file", "a path")

    def test_below_range(self) -> None:
        self.assertFileError(
            "[limits]\nmax_line_length = 10\n",
            "limits.max_line_length",
            "an integer from 64 to 65536",
            "10",
        )

    def test_above_range(self) -> None:
        self.assertFileError(
            "[limits]\nmax_bytes_before_auth = 2000000\n",
            "limits.max_bytes_before_auth",
            "an integer from 256 to 1048576",
        )

    def test_after_login_limits_out_of_range(self) -> None:
        """
        Each bound of the line phase after login is range-checked, naming the key.
        """
        for text, key, allowed in (
            ("max_lines_after_auth = 0", "max_lines_after_auth", "an integer from 1 to 10000"),
            ("max_bytes_after_auth = 255", "max_bytes_after_auth", "from 256 to 1048576"),
            ("max_errors = 0", "max_errors", "an integer from 1 to 10000"),
            ("open_timeout = 0.5", "open_timeout", "a number of seconds from 1 to 3600"),
        ):
            self.assertFileError(f"[limits]\n{text}\n", f"limits.{key}", allowed)

    def test_time_below_range(self) -> None:
        self.assertFileError(
            "[limits]\nhandshake_timeout = 0.5\n",
            "limits.handshake_timeout",
            "a number of seconds from 1 to 3600",
        )

    def test_negative_time(self) -> None:
        self.assertFileError(
            "[limits]\ngreeting_delay = -1\n", "limits.greeting_delay", "from 0 to 30"
        )

    def test_nan(self) -> None:
        self.assertFileError("[limits]\nidle_timeout = nan\n", "limits.idle_timeout", "from 1 to")

    def test_infinity(self) -> None:
        self.assertFileError(
            "[limits]\nwrite_timeout = inf\n", "limits.write_timeout", "from 1 to"
        )

    def test_greeting_delay_not_below_handshake_timeout(self) -> None:
        self.assertFileError(
            "[limits]\ngreeting_delay = 10\nhandshake_timeout = 5\n",
            "limits.greeting_delay",
            "less than limits.handshake_timeout",
        )

    def test_service_timeout_out_of_range(self) -> None:
        self.assertFileError(
            '[services.e]\nbackend = "builtin:echo"\nconnect_timeout = 0\n',
            "services.e.connect_timeout",
            "from 0.1 to 300",
        )

    def test_bad_server_name(self) -> None:
        self.assertFileError(
            'server_name = "gw 1\\r\\nX"\n', "server_name", "1 to 64 characters of A-Z"
        )

    def test_bad_service_name(self) -> None:
        self.assertFileError(
            '[services."bad name"]\nbackend = "builtin:echo"\n',
            'services."bad name"',
            "service name",
        )

    def test_service_name_too_long(self) -> None:
        name = "s" * 65
        self.assertFileError(
            f'[services.{name}]\nbackend = "builtin:echo"\n', f"services.{name}", "1 to 64"
        )

    def test_service_not_a_table(self) -> None:
        self.assertFileError(
            '[services]\necho = "builtin:echo"\n', "services.echo", "must be a table"
        )

    def test_services_not_a_table(self) -> None:
        self.assertFileError("services = []\n", "services", "must be a table")

    def test_missing_backend(self) -> None:
        self.assertFileError(
            '[services.redis]\nusers = ["a"]\n', "services.redis.backend", "missing", "tcp:host="
        )

    def test_backend_wrong_type(self) -> None:
        self.assertFileError(
            "[services.r]\nbackend = 6379\n", "services.r.backend", "endpoint string"
        )

    def test_backend_unknown_type(self) -> None:
        self.assertFileError(
            '[services.r]\nbackend = "http://127.0.0.1:6379"\n',
            "services.r.backend",
            "unknown backend type",
        )

    def test_backend_missing_port(self) -> None:
        self.assertFileError(
            '[services.r]\nbackend = "tcp:host=127.0.0.1"\n', "services.r.backend", "needs port"
        )

    def test_backend_missing_host(self) -> None:
        self.assertFileError(
            '[services.r]\nbackend = "tcp:port=6379"\n', "services.r.backend", "needs host"
        )

    def test_backend_unknown_option(self) -> None:
        self.assertFileError(
            '[services.r]\nbackend = "tcp:host=a:port=1:colour=red"\n',
            "services.r.backend",
            'unknown option "colour"',
        )

    def test_backend_port_zero(self) -> None:
        self.assertFileError(
            '[services.r]\nbackend = "tcp:host=a:port=0"\n', "services.r.backend", "port 0"
        )

    def test_backend_port_out_of_range(self) -> None:
        self.assertFileError(
            '[services.r]\nbackend = "tcp:host=a:port=65536"\n',
            "services.r.backend",
            "out of range",
        )

    def test_backend_other_builtin(self) -> None:
        self.assertFileError(
            '[services.r]\nbackend = "builtin:chargen"\n', "services.r.backend", "builtin:echo"
        )

    def test_backend_unix_without_path(self) -> None:
        self.assertFileError(
            '[services.r]\nbackend = "unix:timeout=5"\n', "services.r.backend", "needs path"
        )

    def test_listener_unknown_type(self) -> None:
        self.assertFileError('listen = ["nope:7000"]\n', "listen[0]", "unknown listener type")

    def test_listener_unknown_option(self) -> None:
        self.assertFileError(
            'listen = ["tcp:7000:interfce=127.0.0.1"]\n', "listen[0]", 'unknown option "interfce"'
        )

    def test_listener_missing_port(self) -> None:
        self.assertFileError('listen = ["tcp:interface=127.0.0.1"]\n', "listen[0]", "needs port")

    def test_listener_interface_not_an_address(self) -> None:
        self.assertFileError(
            'listen = ["tcp:7000:interface=localhost"]\n', "listen[0]", "not an IP address"
        )

    def test_listener_unescaped_ipv6_interface(self) -> None:
        self.assertFileError(
            'listen = ["tcp6:7000:interface=::1"]\n', "listen[0]", "escape colons"
        )

    def test_listener_lone_backslash(self) -> None:
        self.assertFileError("listen = ['tcp:7000\\']\n", "listen[0]", "lone backslash")

    def test_listener_bad_mode(self) -> None:
        self.assertFileError('listen = ["unix:/run/x.sock:mode=rw"]\n', "listen[0]", "octal")

    def test_listener_unix_path_too_long(self) -> None:
        path = "/" + "d" * 120
        self.assertFileError(f'listen = ["unix:{path}"]\n', "listen[0]", "limit is 107")

    def test_default_listener_path_too_long_blames_state_dir(self) -> None:
        self.assertFileError(
            f'state_dir = "/{"d" * 120}"\n', "state_dir", "limit is 107", "shorter state_dir"
        )

    def test_listener_systemd_needs_index_or_name(self) -> None:
        self.assertFileError(
            'listen = ["systemd:domain=INET"]\n', "listen[0]", "exactly one of index and name"
        )

    def test_listener_stdio_refused(self) -> None:
        self.assertFileError('listen = ["stdio:"]\n', "listen[0]", "not a network listener")

    def test_listener_nested_haproxy_refused(self) -> None:
        self.assertFileError(
            'listen = ["haproxy:haproxy:tcp:7000:interface=127.0.0.1"]\n', "listen[0]", "haproxy"
        )

    def test_listener_listed_twice(self) -> None:
        self.assertFileError(
            'listen = ["tcp:7000:interface=127.0.0.1", "tcp:7000:interface=127.0.0.1"]\n',
            "listen[1]",
            "listed twice",
        )

    def test_listen_empty(self) -> None:
        self.assertFileError("listen = []\n", "listen", "no listener")

    def test_unknown_port_name_in_listener(self) -> None:
        self.assertFileError(
            'listen = ["tcp:netguard-no-such-service:interface=127.0.0.1"]\n',
            "listen[0]",
            "unknown service name",
            "/etc/services",
        )

    def test_unknown_port_name_in_backend(self) -> None:
        self.assertFileError(
            '[services.r]\nbackend = "tcp:host=127.0.0.1:port=netguard-no-such-service"\n',
            "services.r.backend",
            "unknown service name",
        )

    def test_bad_user_name(self) -> None:
        self.assertFileError(
            '[services.e]\nbackend = "builtin:echo"\nusers = ["alice", "bad:name"]\n',
            "services.e.users[1]",
            "user names",
        )

    def test_users_not_an_array(self) -> None:
        self.assertFileError(
            '[services.e]\nbackend = "builtin:echo"\nusers = "alice"\n',
            "services.e.users",
            "an array of user names",
        )

    def test_star_is_not_a_group(self) -> None:
        self.assertFileError(
            '[services.e]\nbackend = "builtin:echo"\ngroups = ["*"]\n',
            "services.e.groups[0]",
            "group names",
        )

    def test_bad_log_format(self) -> None:
        self.assertFileError('[log]\nformat = "xml"\n', "log.format", '"text", "json"')

    def test_socks5_empty(self) -> None:
        self.assertFileError(
            '[services.r]\nbackend = "tcp:host=a:port=1"\nsocks5 = ""\n',
            "services.r.socks5",
            "printable ASCII",
        )

    def test_socks5_control_character_not_echoed(self) -> None:
        error = self.assertFileError(
            '[services.r]\nbackend = "tcp:host=a:port=1"\nsocks5 = "pw=hunter2\\n"\n',
            "services.r.socks5",
            "printable ASCII",
        )
        self.assertNotIn("hunter2", str(error))

    def test_socks5_with_unix_backend(self) -> None:
        self.assertFileError(
            '[services.r]\nbackend = "unix:path=/run/r.sock"\nsocks5 = "tcp:host=p:port=1080"\n',
            "services.r.socks5",
            "tcp: or tls:",
        )

    def test_socks5_with_tls_backend_naming_its_own_endpoint(self) -> None:
        """
        A C{tls:} backend that names its own C{endpoint=} cannot be carried by the service's
        SOCKS5 proxy (opening it would fail every time): refused at load naming the
        service's C{socks5} key; the same backend without C{socks5}, and a C{tls:} backend
        without C{endpoint=} behind C{socks5}, load.
        """
        backend = "tls:host=b.test:port=443:endpoint=tcp\\:host\\=10.0.0.1\\:port\\=443"
        self.assertFileError(
            f"[services.r]\nbackend = '{backend}'\nsocks5 = 'tcp:host=p:port=1080'\n",
            "services.r.socks5",
            "socks5 cannot carry a tls: backend that names its own endpoint=",
        )
        alone = self.load(f"[services.r]\nbackend = '{backend}'\nusers = ['a']\n")
        self.assertIn("endpoint=", alone.services["r"].backend)
        proxied = self.load(
            '[services.r]\nbackend = "tls:host=b.test:port=443"\nusers = ["a"]\n'
            'socks5 = "tcp:host=p:port=1080"\n'
        )
        self.assertEqual(proxied.services["r"].socks5, "tcp:host=p:port=1080")

    def test_socks5_with_positional_host_and_port(self) -> None:
        """
        The SOCKS5 proxy is asked for the backend's C{host=} and C{port=} by name: a
        C{tcp:} backend giving them by position (which opening would refuse every time) is
        refused at load naming the service's C{socks5} key.
        """
        self.assertFileError(
            "[services.r]\nbackend = 'tcp:10.0.0.5:6379'\nsocks5 = 'tcp:host=p:port=1080'\n",
            "services.r.socks5",
            "socks5 needs a tcp:host=...:port=...",
        )

    def test_toml_syntax_error_names_file_and_line(self) -> None:
        error = self.assertFileError(
            'server_name = "a"\n\n[limits\n', "line 3", "TOML syntax error", "column"
        )
        self.assertNotIn("Traceback", str(error))

    def test_toml_syntax_error_at_end_of_file(self) -> None:
        self.assertFileError("listen = [", "end of file", "TOML syntax error")

    def test_toml_duplicate_key(self) -> None:
        self.assertFileError(
            "server_name = 'a'\nserver_name = 'b'\n", "line 2", "TOML syntax error"
        )

    def test_not_utf8(self) -> None:
        self.assertFileError(b'server_name = "a"\nx = "\xff"\n', "line 2", "UTF-8")

    def test_too_large(self) -> None:
        self.assertFileError(b"#" * (config_module.MAX_FILE_BYTES + 1), None, "larger than")

    def test_missing_file(self) -> None:
        path = os.path.join(self.mktemp(), "absent.toml")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual((error.path, error.key, error.message), (path, None, "no such file"))

    def test_directory(self) -> None:
        path = self.mktemp()
        os.makedirs(path)
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(error.path, path)
        self.assertIn("directory", error.message)


class TLSListenErrorTests(ConfigTestCase):
    """
    Each bad C{[[tls_listen]]} entry names the entry and the key, checked in the order of
    L{TLS_LISTEN_KEYS}.
    """

    ENTRY = '[[tls_listen]]\nendpoint = "tcp:7443"\ncert_file = "c.pem"\nkey_file = "k.pem"\n'

    def test_unknown_key(self) -> None:
        self.assertFileError(
            self.ENTRY + "bogus = 1\n",
            "tls_listen[0].bogus",
            "unknown key; allowed keys are: endpoint, cert_file, key_file, chain_file, "
            "client_ca_file, require_client_cert, min_version",
        )

    def test_required_keys_in_order(self) -> None:
        self.assertFileError(
            '[[tls_listen]]\ncert_file = "c"\n', "tls_listen[0].endpoint", "is required"
        )
        self.assertFileError(
            '[[tls_listen]]\nendpoint = "tcp:7443"\nkey_file = "k"\n',
            "tls_listen[0].cert_file",
            "is required",
        )
        self.assertFileError(
            '[[tls_listen]]\nendpoint = "tcp:7443"\ncert_file = "c"\n',
            "tls_listen[0].key_file",
            "is required",
        )

    def test_endpoint_already_tls(self) -> None:
        self.assertFileError(
            self.ENTRY.replace("tcp:7443", "ssl:7443:privateKey=k"),
            "tls_listen[0].endpoint",
            "is already TLS; give the plain endpoint (tcp:..., unix:...) and netguard adds "
            "its hardened TLS",
        )

    def test_endpoint_listed_twice(self) -> None:
        self.assertFileError(
            'listen = ["tcp:7443"]\n' + self.ENTRY, "tls_listen[0].endpoint", "is listed twice"
        )

    def test_file_not_a_path(self) -> None:
        self.assertFileError(
            self.ENTRY + "chain_file = 3\n",
            "tls_listen[0].chain_file",
            "must be a path (relative paths are taken from the configuration file's "
            "directory), got the integer 3",
        )

    def test_require_client_cert_not_a_boolean(self) -> None:
        self.assertFileError(
            self.ENTRY + 'require_client_cert = "yes"\n',
            "tls_listen[0].require_client_cert",
            'must be true or false, got the string "yes"',
        )

    def test_require_client_cert_needs_client_ca_file(self) -> None:
        """
        The relation is checked when C{require_client_cert} is, before C{min_version}.
        """
        error = self.assertFileError(
            self.ENTRY + 'require_client_cert = true\nmin_version = "1.1"\n',
            "tls_listen[0].require_client_cert",
        )
        self.assertEqual(error.message, "needs client_ca_file")

    def test_min_version(self) -> None:
        self.assertFileError(
            self.ENTRY + 'min_version = "1.1"\n',
            "tls_listen[0].min_version",
            'must be one of "1.2", "1.3", got the string "1.1"',
        )

    def test_empty_files_are_none(self) -> None:
        config = self.load(self.ENTRY + 'chain_file = ""\nclient_ca_file = ""\n')
        settings = config.tls_listen[0].settings
        self.assertEqual((settings.chain_file, settings.client_ca_file), (None, None))


class SettingsSchemaTests(unittest.TestCase):
    """
    The schema has one entry for each field of a mechanism's own settings value, so a new
    field is checked, printed and documented once its entry is added.
    """

    def test_every_tls_setting_has_a_key(self) -> None:
        self.assertEqual(
            [spec.name for spec in TLS_SETTINGS_KEYS],
            [field.name for field in attrs.fields(ServerTLSSettings)],
        )
        self.assertEqual(TLS_LISTEN_KEYS[1:], TLS_SETTINGS_KEYS)

    def test_every_overload_setting_has_a_key(self) -> None:
        self.assertEqual(
            [spec.name for spec in OVERLOAD_KEYS],
            [field.name for field in attrs.fields(OverloadSettings)],
        )

    def test_config_holds_the_overload_settings(self) -> None:
        """
        C{[overload]} becomes the monitor's own L{OverloadSettings}, MiB as configured.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[overload]\nmax_rss_mb = 512\nmax_lag = "off"\n')
        config = load_config(path, environ=ENV, euid=UID)
        self.assertEqual(config.overload, OverloadSettings(max_rss_mb=512.0, max_lag=None))
        self.assertEqual(load_config(None, environ=ENV, euid=UID).overload, OverloadSettings())


class PortTests(ConfigTestCase):
    """
    Ports are numbers or names from the services database (seed tip 1).
    """

    def test_listener_positional_port_name(self) -> None:
        port = _port_of("http")
        config = self.load("listen = ['tcp:http:interface=127.0.0.1']\n")
        self.assertEqual(config.listen, (f"tcp:{port}:interface=127.0.0.1",))

    def test_listener_keyword_port_name(self) -> None:
        port = _port_of("http")
        config = self.load("listen = ['tcp:port=http:interface=127.0.0.1']\n")
        self.assertEqual(config.listen, (f"tcp:port={port}:interface=127.0.0.1",))

    def test_tcp6_ssl_and_haproxy_port_names(self) -> None:
        port = _port_of("http")
        config = self.load(
            "listen = ['tcp6:http:interface=\\:\\:1', "
            "'ssl:http:privateKey=/k.pem:interface=127.0.0.1', "
            "'haproxy:tcp:http:interface=127.0.0.2']\n"
        )
        self.assertEqual(
            config.listen,
            (
                f"tcp6:{port}:interface=\\:\\:1",
                f"ssl:{port}:privateKey=/k.pem:interface=127.0.0.1",
                f"haproxy:tcp:{port}:interface=127.0.0.2",
            ),
        )

    def test_resolved_listener_parses_in_twisted(self) -> None:
        port = _port_of("http")
        config = self.load("listen = ['tcp:http:interface=127.0.0.1']\n")
        endpoint = endpoints.serverFromString(MemoryReactor(), config.listen[0])
        self.assertEqual(endpoint._port, port)

    def test_backend_port_name(self) -> None:
        name = "redis"
        try:
            port = socket.getservbyname(name, "tcp")
        except OSError:
            name = "http"
            port = _port_of(name)
        config = self.load(
            f"[services.r]\nbackend = 'tcp:host=127.0.0.1:port={name}'\nusers=['a']\n"
        )
        self.assertEqual(config.services["r"].backend, f"tcp:host=127.0.0.1:port={port}")

    def test_service_override_port_name(self) -> None:
        port = _port_of("http")
        config = self.load(None, {"services": ["web=tcp:host=127.0.0.1:port=http"]})
        self.assertEqual(config.services["web"].backend, f"tcp:host=127.0.0.1:port={port}")


class WarningTests(ConfigTestCase):
    """
    Things that work but deserve an operator's look are collected in L{Config.warnings}.
    """

    def test_tcp_without_interface(self) -> None:
        config = self.load("listen = ['tcp:7700']\n")
        self.assertEqual(len(config.warnings), 1)
        self.assertIn("listen[0]", config.warnings[0])
        self.assertIn("all IPv4 interfaces", config.warnings[0])

    def test_tcp6_without_interface(self) -> None:
        config = self.load("listen = ['tcp6:7700']\n")
        self.assertIn("all interfaces", config.warnings[0])

    def test_ssl_without_interface(self) -> None:
        config = self.load("listen = ['ssl:7700:privateKey=/k.pem']\n")
        self.assertIn("all IPv4 interfaces", config.warnings[0])

    def test_explicit_all_interfaces_is_not_warned(self) -> None:
        self.assertEqual(self.load("listen = ['tcp:7700:interface=0.0.0.0']\n").warnings, ())

    def test_loopback_is_not_warned(self) -> None:
        self.assertEqual(self.load("listen = ['tcp:7700:interface=127.0.0.1']\n").warnings, ())

    def test_nobody_allowed(self) -> None:
        config = self.load('[services.r]\nbackend = "builtin:echo"\n')
        self.assertEqual(
            config.warnings, ("services.r: lists no users and no groups, so nobody may open it",)
        )

    def test_group_only_service_is_not_warned(self) -> None:
        self.assertEqual(
            self.load('[services.r]\nbackend = "builtin:echo"\ngroups = ["ops"]\n').warnings, ()
        )

    def test_ssl_backend_without_hostname(self) -> None:
        config = self.load('[services.r]\nbackend = "ssl:host=db:port=5432"\nusers = ["a"]\n')
        self.assertIn("not verified", config.warnings[0])
        self.assertIn("services.r.backend", config.warnings[0])


class DescribeTests(ConfigTestCase):
    """
    L{describe} shows every effective key with its origin and marks network listeners.
    """

    def keys_of(self, config: Config) -> list[str]:
        keys = ["server_name", "state_dir", "users_file"]
        keys += [f"listen[{i}]" for i in range(len(config.listen))]
        keys += [f"limits.{name}" for name in LIMIT_NAMES]
        keys += ["log.format", "log.file"]
        keys += [f"services.{n}.{k}" for n in config.services for k in SERVICE_KEYS]
        return keys

    def test_tls_listen_keys_not_given_come_from_the_defaults(self) -> None:
        config = self.load(
            "[[tls_listen]]\n"
            'endpoint = "tcp:7701:interface=127.0.0.1"\n'
            'cert_file = "/etc/netguard/cert.pem"\nkey_file = "/etc/netguard/key.pem"\n'
        )
        self.assertEqual(config.origins["tls_listen[0].cert_file"], ORIGIN_FILE)
        self.assertEqual(config.origins["tls_listen[0].chain_file"], ORIGIN_DEFAULT)
        self.assertEqual(config.origins["tls_listen[0].min_version"], ORIGIN_DEFAULT)

    def test_tls_listen_holds_the_server_tls_settings(self) -> None:
        """
        Each C{[[tls_listen]]} entry is its endpoint and the L{ServerTLSSettings} the
        listener loads, empty file keys meaning none.
        """
        config = self.load(
            "[[tls_listen]]\n"
            'endpoint = "tcp:7701:interface=127.0.0.1"\n'
            'cert_file = "/etc/netguard/cert.pem"\nkey_file = "/etc/netguard/key.pem"\n'
            'min_version = "1.3"\n'
        )
        self.assertEqual(
            config.tls_listen,
            (
                TLSListenConfig(
                    endpoint="tcp:7701:interface=127.0.0.1",
                    settings=ServerTLSSettings(
                        "/etc/netguard/cert.pem", "/etc/netguard/key.pem", min_version="1.3"
                    ),
                ),
            ),
        )

    def test_every_key_of_the_defaults(self) -> None:
        config = self.load()
        text = describe(config)
        for key in self.keys_of(config):
            self.assertIn(f"\n{key} = ", text)

    def test_every_key_of_a_file(self) -> None:
        config = self.load(
            "listen = ['tcp:7700:interface=127.0.0.1', 'unix:/run/a.sock']\n"
            "[services.a]\nbackend = 'builtin:echo'\nusers = ['x']\n"
            "[services.b]\nbackend = 'tcp:host=h:port=1'\ngroups = ['g']\n"
        )
        text = describe(config)
        for key in self.keys_of(config):
            self.assertIn(f"\n{key} = ", text)

    def test_values_shown(self) -> None:
        text = describe(self.load())
        self.assertIn("\nlimits.max_line_length = 1024  # default\n", text)
        self.assertIn('\nservices.echo.users = ["*"]  # default\n', text)

    def test_origins_shown(self) -> None:
        config = self.load('server_name = "f"\n', {"log_format": "json"})
        text = describe(config)
        self.assertIn('\nserver_name = "f"  # set in file\n', text)
        self.assertIn('\nlog.format = "json"  # command line\n', text)
        self.assertIn("\nlimits.max_auth_attempts = 3  # default\n", text)

    def test_source_shown(self) -> None:
        path = self.write("")
        self.assertIn(path, describe(load_config(path, environ=ENV, euid=UID)))

    def test_loopback_listener_marked_local(self) -> None:
        self.assertIn("loopback only", describe(self.load()))

    def test_non_loopback_listener_marked(self) -> None:
        text = describe(self.load("listen = ['tcp:7700:interface=192.0.2.1']\n"))
        self.assertIn("NETWORK: interface 192.0.2.1", text)

    def test_explicit_all_interfaces_marked(self) -> None:
        text = describe(self.load("listen = ['tcp:7700:interface=0.0.0.0']\n"))
        self.assertIn("NETWORK: all interfaces", text)

    def test_warnings_shown(self) -> None:
        text = describe(self.load("listen = ['tcp:7700']\n"))
        self.assertIn("# warning: listen[0]", text)

    def test_unix_listener_without_mode_warned(self) -> None:
        """
        A unix listener without C{mode=} (Twisted creates it 666: every local user may
        connect) is warned about; with C{mode=} it is not.
        """
        loose = self.load("listen = ['unix:/run/ng/a.sock']\n")
        self.assertEqual(len(loose.warnings), 1)
        self.assertIn("listen[0]", loose.warnings[0])
        self.assertIn("mode 666", loose.warnings[0])
        self.assertIn("# warning: listen[0]", describe(loose))
        self.assertEqual(self.load("listen = ['unix:/run/ng/a.sock:mode=600']\n").warnings, ())

    def test_socks5_password_redacted(self) -> None:
        config = self.load(
            "[services.r]\nbackend = 'tcp:host=h:port=1'\nusers = ['a']\n"
            "socks5 = 'socks5:host=127.0.0.1:port=1080:username=u:password=hunter2'\n"
        )
        text = describe(config)
        self.assertNotIn("hunter2", text)
        self.assertIn("password=***", text)

    def test_password_nested_in_a_proxy_string_redacted(self) -> None:
        """
        A password inside an endpoint string nested in another's C{proxy=} (escaped once or
        twice) is hidden too; the rest of the string stays readable.
        """
        inner = r"socks5\:host\=p\:port\=2\:proxy_host\=127.0.0.1\:password\=hunter2SECRET"
        config = self.load(
            f"[services.a]\nusers = ['a']\nbackend = 'socks5:host=h:port=1:proxy={inner}'\n"
        )
        text = describe(config)
        self.assertNotIn("hunter2SECRET", text)
        self.assertIn("password=***", text)
        self.assertIn("proxy_host", text)
        twice = r"tls:h:1:endpoint=a\:b\:endpoint\=c\\\:token\\\=t0k"
        hidden = redact_description(twice)
        self.assertNotIn("t0k", hidden)
        self.assertTrue(hidden.endswith("token=***"), hidden)

    def test_url_password_redacted(self) -> None:
        config = self.load(
            "[services.r]\nbackend = 'tcp:host=h:port=1'\nusers = ['a']\n"
            "socks5 = 'socks5://u:hunter2@127.0.0.1:1080'\n"
        )
        self.assertNotIn("hunter2", describe(config))

    def test_secret_looking_key_redacted(self) -> None:
        """
        Even a hand-built Config with a password-like origin key never prints the value.
        """
        self.assertEqual(config_text._redacted("services.x.password", "hunter2"), "<redacted>")

    def test_ends_with_newline(self) -> None:
        self.assertTrue(describe(self.load()).endswith("\n"))


class DescribeDefaultsTests(unittest.TestCase):
    """
    L{describe_defaults} documents every key, like C{postconf -d}.
    """

    KEYS = (
        ["server_name", "state_dir", "users_file", "listen"]
        + [f"limits.{name}" for name in LIMIT_NAMES]
        + ["log.format", "log.file"]
        + [f"services.<name>.{key}" for key in SERVICE_KEYS]
        + [f"tls_listen[].{key.name}" for key in TLS_LISTEN_KEYS]
        + [f"admission.{field.name}" for field in attrs.fields(AdmissionPolicy)]
    )

    def test_admission_allowed_values_are_specific(self) -> None:
        lines = describe_defaults().splitlines()
        allowed = {
            line: lines[index + 1]
            for index, line in enumerate(lines)
            if line.startswith("admission.")
        }
        self.assertEqual(len(allowed), len(attrs.fields(AdmissionPolicy)))
        self.assertIn("admission.red_soft = 128", allowed)
        self.assertIn("at most red_hard", allowed["admission.red_soft = 128"])
        self.assertIn("from 0 to 128", allowed["admission.ipv6_prefix = 64"])
        self.assertIn('"reply" or "close"', allowed['admission.reject_mode = "reply"'])
        for line in allowed.values():
            self.assertNotIn("validation", line)

    def test_no_epytext_markup(self) -> None:
        self.assertNotRegex(describe_defaults(), r"[CLI]\{")

    def test_every_key(self) -> None:
        text = describe_defaults()
        for key in self.KEYS:
            self.assertIn(f"\n{key} = ", text)

    def test_every_key_has_allowed_and_defends(self) -> None:
        lines = describe_defaults().splitlines()
        for key in self.KEYS:
            index = next(i for i, line in enumerate(lines) if line.startswith(f"{key} = "))
            self.assertTrue(lines[index + 1].strip().startswith("# allowed: "), key)
            self.assertTrue(lines[index + 2].strip().startswith("# defends against: "), key)

    def test_limit_defaults_and_ranges(self) -> None:
        text = describe_defaults()
        self.assertIn(
            "limits.max_line_length = 1024\n    # allowed: an integer from 64 to 65536\n", text
        )
        self.assertIn(
            "limits.greeting_delay = 0.1\n    # allowed: a number of seconds from 0 to 30\n", text
        )

    def test_default_listeners_shown(self) -> None:
        self.assertIn("tcp:7700:interface=127.0.0.1", describe_defaults())

    def test_services_replacement_documented(self) -> None:
        self.assertIn("replaces the default", describe_defaults())

    def test_independent_of_environment(self) -> None:
        """
        The text is the same for every user, so the docs can copy it.
        """
        self.assertNotIn(os.path.expanduser("~"), describe_defaults())


class ImmutabilityTests(ConfigTestCase):
    """
    Configuration values cannot be changed after loading.
    """

    def test_config(self) -> None:
        config = self.load()
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            config.server_name = "x"  # type: ignore[misc]

    def test_limits(self) -> None:
        config = self.load()
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            config.limits.max_line_length = 10**9  # type: ignore[misc]

    def test_log(self) -> None:
        config = self.load()
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            config.log.file = "/tmp/x"  # type: ignore[misc]

    def test_service(self) -> None:
        config = self.load()
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            config.services["echo"].users = ("*",)  # type: ignore[misc]

    def test_services_mapping(self) -> None:
        config = self.load()
        with self.assertRaises(TypeError):
            config.services["evil"] = ServiceConfig("evil", "builtin:echo")  # type: ignore[index]

    def test_origins_mapping(self) -> None:
        config = self.load()
        with self.assertRaises(TypeError):
            config.origins["listen"] = "x"  # type: ignore[index]

    def test_listen_is_a_tuple(self) -> None:
        self.assertIsInstance(self.load().listen, tuple)

    def test_service_lists_are_tuples(self) -> None:
        service = ServiceConfig("s", "builtin:echo", ["a"], ["g"])
        self.assertEqual((service.users, service.groups), (("a",), ("g",)))

    def test_services_copied_from_caller(self) -> None:
        services = {"echo": ServiceConfig("echo", "builtin:echo", ("*",))}
        config = Config(state_dir="/s", users_file="/s/u", listen=["unix:/s/x"], services=services)
        services["evil"] = ServiceConfig("evil", "builtin:echo")
        self.assertEqual(list(config.services), ["echo"])


class AllowsTests(unittest.TestCase):
    """
    L{ServiceConfig.allows}.
    """

    def test_star(self) -> None:
        self.assertTrue(ServiceConfig("s", "builtin:echo", ("*",)).allows("anyone", ()))

    def test_named_user(self) -> None:
        self.assertTrue(ServiceConfig("s", "builtin:echo", ("alice",)).allows("alice", ()))

    def test_other_user(self) -> None:
        self.assertFalse(ServiceConfig("s", "builtin:echo", ("alice",)).allows("bob", ()))

    def test_group(self) -> None:
        service = ServiceConfig("s", "builtin:echo", (), ("dba",))
        self.assertTrue(service.allows("bob", ("staff", "dba")))

    def test_other_group(self) -> None:
        service = ServiceConfig("s", "builtin:echo", (), ("dba",))
        self.assertFalse(service.allows("bob", ("staff",)))

    def test_nobody(self) -> None:
        self.assertFalse(ServiceConfig("s", "builtin:echo").allows("alice", ("dba",)))

    def test_empty_user_never(self) -> None:
        self.assertFalse(ServiceConfig("s", "builtin:echo", ("*",)).allows("", ()))


class ReviewFixTests(unittest.TestCase):
    """
    Small behaviours found in review.
    """

    def load(self, text):
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(text)
        return config_module.load_config(path)

    def test_admission_error_is_one_readable_line(self):
        with self.assertRaises(config_module.ConfigError) as caught:
            self.load('[admission]\nreject_mode = "drop"\n')
        self.assertEqual(caught.exception.key, "admission.reject_mode")
        self.assertNotIn("Attribute(", str(caught.exception))

    def test_peer_check_bounds_reach_the_policy(self):
        loaded = self.load(
            '[peer_checks]\nfcrdns = "log"\nident = "log"\nident_port = 1113\n'
            "fcrdns_max_names = 2\nident_max_reply = 256\n"
        )
        policy = loaded.peer_checks
        self.assertEqual(
            (policy.ident_port, policy.fcrdns_max_names, policy.ident_max_reply), (1113, 2, 256)
        )

    def test_service_fcrdns_mode(self):
        loaded = self.load(
            '[services.vault]\nbackend = "builtin:echo"\nusers = ["*"]\nfcrdns = "require"\n'
        )
        self.assertEqual(loaded.services["vault"].fcrdns, "require")


class ListenerAddressClashTests(ConfigTestCase):
    """
    Two listeners that would bind the same address (across C{listen}, C{[[tls_listen]]},
    C{ops.metrics_listen} and the control socket) are refused at load, the later one named
    with the earlier, however each is spelt; distinct addresses load.
    """

    def test_same_tcp_address_spelt_two_ways(self) -> None:
        """
        The same port and interface with a different option (C{backlog=}) is refused.
        """
        self.assertFileError(
            'listen = ["tcp:27321:interface=127.0.0.1", '
            '"tcp:27321:interface=127.0.0.1:backlog=100"]\n',
            "listen[1]",
            "is listed twice",
            '127.0.0.1 port 27321 is also listen[0] "tcp:27321:interface=127.0.0.1"',
        )

    def test_tls_listener_clashes_on_its_port(self) -> None:
        """
        A C{tls:} listener (Twisted's: the IPv6 wildcard by default, dual-stack) takes its
        port on every address: a C{tcp:} listener on that port is refused, one on the next
        port loads.
        """
        certs = self.mktemp()
        os.mkdir(certs)
        self.assertFileError(
            f'listen = ["tcp:27331:interface=127.0.0.1", "tls:{certs}:27331"]\n',
            "listen[1]",
            "is listed twice",
        )
        loaded = self.load(f'listen = ["tcp:27331:interface=127.0.0.1", "tls:{certs}:27332"]\n')
        self.assertEqual(len(loaded.listen), 2)

    def test_ipv4_mapped_interface_is_its_ipv4_address(self) -> None:
        """
        C{tcp6} on C{::ffff:127.0.0.1} binds 127.0.0.1 itself: beside C{tcp} on 127.0.0.1
        and the same port it is refused.
        """
        self.assertFileError(
            'listen = ["tcp:27341:interface=127.0.0.1", '
            '"tcp6:27341:interface=\\\\:\\\\:ffff\\\\:127.0.0.1"]\n',
            "listen[1]",
            "is listed twice",
        )

    def test_next_port_or_other_interface_loads(self) -> None:
        """
        One port further, or another interface on the same port, is a distinct address.
        """
        loaded = self.load(
            'listen = ["tcp:27321:interface=127.0.0.1", "tcp:27322:interface=127.0.0.1", '
            '"tcp:27321:interface=127.0.0.2", "tcp6:27321:interface=\\\\:\\\\:1"]\n'
        )
        self.assertEqual(len(loaded.listen), 4)

    def test_wildcard_covers_an_address_on_its_port(self) -> None:
        """
        C{tcp:P} (every IPv4 address) clashes with C{tcp:P:interface=127.0.0.1}, and
        C{tcp6:P} (dual-stack C{::}) with an IPv4 one.
        """
        self.assertFileError(
            'listen = ["tcp:27321", "tcp:27321:interface=127.0.0.1"]\n',
            "listen[1]",
            '127.0.0.1 port 27321 is also listen[0] "tcp:27321"',
        )
        self.assertFileError(
            'listen = ["tcp6:27321", "tcp:27321:interface=127.0.0.1"]\n',
            "listen[1]",
            "is listed twice",
        )

    def test_port_zero_never_clashes(self) -> None:
        """
        Port 0 (any free port) twice on one interface, spelt differently, loads: each gets
        its own port. The same string twice is still a mistake, refused.
        """
        loaded = self.load(
            'listen = ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=9"]\n'
        )
        self.assertEqual(len(loaded.listen), 2)
        self.assertFileError(
            'listen = ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"]\n',
            "listen[1]",
            "is listed twice",
        )

    def test_port_zero_in_two_settings_loads(self) -> None:
        """
        The same port-0 string in C{listen} and C{ops.metrics_listen} loads (each gets a
        free port of its own); with a fixed port it is refused.
        """
        loaded = self.load(
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            '[ops]\nmetrics_listen = "tcp:0:interface=127.0.0.1"\n'
        )
        self.assertEqual(loaded.ops.metrics_listen, "tcp:0:interface=127.0.0.1")
        self.assertFileError(
            'listen = ["tcp:7700:interface=127.0.0.1"]\n'
            '[ops]\nmetrics_listen = "tcp:7700:interface=127.0.0.1"\n',
            "ops.metrics_listen",
            "is listed twice",
        )

    def test_one_unix_path_spelt_two_ways(self) -> None:
        """
        C{unix:x} and C{unix:./x} are one socket file; C{unix:y} beside them is another.
        """
        self.assertFileError(
            'listen = ["unix:x", "unix:./x"]\n', "listen[1]", "is listed twice", "the unix socket"
        )
        self.assertEqual(len(self.load('listen = ["unix:x", "unix:y"]\n').listen), 2)

    def test_metrics_listener_on_a_gateway_address(self) -> None:
        """
        C{ops.metrics_listen} on a listener's address is refused; one port further loads.
        """
        self.assertFileError(
            'listen = ["tcp:27321:interface=127.0.0.1"]\n'
            '[ops]\nmetrics_listen = "tcp:27321:interface=127.0.0.1"\n',
            "ops.metrics_listen",
            'is also listen[0] "tcp:27321:interface=127.0.0.1"',
        )
        loaded = self.load(
            'listen = ["tcp:27321:interface=127.0.0.1"]\n'
            '[ops]\nmetrics_listen = "tcp:27322:interface=127.0.0.1"\n'
        )
        self.assertEqual(loaded.ops.metrics_listen, "tcp:27322:interface=127.0.0.1")

    def test_control_socket_on_a_unix_listener(self) -> None:
        """
        A unix listener on the control socket's path is refused: the control socket named
        in the file is blamed; with the default control socket, the listener is.
        """
        here = tempfile.mkdtemp(prefix="ngc-")  # short: a socket path has a length bound
        self.addCleanup(os.rmdir, here)
        sock = os.path.join(here, "c.sock")
        self.assertFileError(
            f'listen = ["unix:{sock}"]\n[ops]\ncontrol_socket = "{sock}"\n',
            "ops.control_socket",
            f'is also listen[0] "unix:{sock}"',
        )
        default = os.path.join(self.load("").state_dir, "control.sock")
        self.assertFileError(
            f'listen = ["tcp:27321:interface=127.0.0.1", "unix:{default}"]\n',
            "listen[1]",
            "is also ops.control_socket",
        )

    def test_tls_listener_on_a_plain_listeners_address(self) -> None:
        """
        A C{[[tls_listen]]} endpoint on a C{listen} address, spelt differently, is refused.
        """
        self.assertFileError(
            'listen = ["tcp:7443:interface=127.0.0.1"]\n'
            '[[tls_listen]]\nendpoint = "tcp:port=7443:interface=127.0.0.1:backlog=9"\n'
            'cert_file = "c.pem"\nkey_file = "k.pem"\n',
            "tls_listen[0].endpoint",
            'is also listen[0] "tcp:7443:interface=127.0.0.1"',
        )

    def test_haproxy_listener_on_a_plain_listeners_address(self) -> None:
        """
        A C{haproxy:} listener binds the address of the listener it wraps.
        """
        self.assertFileError(
            'listen = ["tcp:27321:interface=127.0.0.1", '
            '"haproxy:tcp:27321:interface=127.0.0.1"]\n',
            "listen[1]",
            "127.0.0.1 port 27321",
        )

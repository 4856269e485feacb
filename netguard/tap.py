# -*- test-case-name: tests.test_plugin -*-
"""
C{twistd netguard}: the command-line options and the one place the gateway service is
assembled (configuration, service, privileges, reload and signal handlers). The plugin in
C{twisted/plugins/netguard_plugin.py} points here; docs/operating.md describes the options.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.copyright import version as twisted_version
from twisted.python import usage

from netguard import __version__
from netguard.auth.users import UsersFileError
from netguard.config import ConfigError, load_config
from netguard.log import stdout_log_problem
from netguard.log_file import LogFileError
from netguard.ops.control import UnsafeControlPath
from netguard.ops.drain import install_sigterm
from netguard.ops.heartbeat import install_sigusr1
from netguard.ops.lock import AlreadyRunning
from netguard.ops.privileges import run_as_identity, switch_refused
from netguard.ops.reload import Reloader, install_sighup
from netguard.service import ListenFailed, make_service
from netguard.tls import TLSConfigError
from netguard.workers.operate import SupervisorReloader
from netguard.workers.supervisor import Supervisor, check_readable_after_drop

#: The options that name files: made absolute when the options are parsed, before twistd
#: changes to its C{--rundir}, so that a reload (or a worker) reads the very files the
#: gateway started with, never ones a relative path finds under another directory.
_PATH_OPTIONS = ("config", "users", "state-dir", "log-file")


class Options(usage.Options):
    """
    Command-line options of C{twistd netguard}; each overrides the configuration file.
    """

    synopsis = "[--config FILE] [--listen ENDPOINT]... [--service NAME=ENDPOINT]... [options]"
    longdesc = (
        "netguard: a hardened single-port gateway. Clients connect to one listener, "
        "authenticate with SCRAM-SHA-256, name a service and are relayed to its backend. "
        "With no options it listens on 127.0.0.1:7700 and on a unix socket in the state "
        "directory, offers the built-in 'echo' service, and creates a users file with a "
        "generated password (shown once) when none exists. Every option overrides the "
        "matching key of the TOML configuration file; see docs/operating.md."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: none, built-in defaults)."],
        ["users", "u", None, "Users file (default: <state-dir>/users)."],
        [
            "state-dir",
            "d",
            None,
            "State directory (default: /var/lib/netguard for root, else ~/.local/state/netguard).",
        ],
        ["server-name", None, None, "Name shown in the greeting (default: netguard)."],
        [
            "log-format",
            None,
            None,
            "Format of the --log-file: text or json (default: text). For JSON in twistd's "
            "own log, use twistd --logger netguard.log.json_stdout_observer.",
        ],
        [
            "log-file",
            None,
            None,
            "netguard's own log file, written besides twistd's log; or - (the default) for "
            "none: events then go only to twistd's log (standard output with -n, twistd.log "
            "or --logfile when daemonized).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        # The help of --listen and --service is their docstring: fold it to one line, or
        # --help shows the docstring's indentation as runs of spaces mid-sentence.
        self.docs = {
            name: " ".join(doc.split()) if doc else doc for name, doc in self.docs.items()
        }
        self["listen"] = []
        self["service"] = []

    def opt_listen(self, endpoint: str) -> None:
        """
        A server endpoint string to listen on, e.g. tcp:7700:interface=127.0.0.1 or
        unix:/run/netguard/ng.sock:mode=600:lockfile=1 (repeatable; when given, only these
        listeners open).
        """
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_service(self, spec: str) -> None:
        """
        NAME=ENDPOINT: a service and its backend client endpoint string, e.g.
        redis=tcp:host=127.0.0.1:port=6379 (repeatable; every authenticated user may open it).
        """
        if "=" not in spec:
            raise usage.UsageError(f"--service wants NAME=ENDPOINT, got {spec!r}")
        self["service"].append(spec)

    opt_s = opt_service

    def opt_version(self) -> None:
        """
        Show netguard's version (and Twisted's) and exit.
        """
        print(f"netguard {__version__} (Twisted {twisted_version})")
        raise SystemExit(0)

    def overrides(self) -> dict[str, Any]:
        """
        The configuration overrides these options make.
        """
        given: dict[str, Any] = {}
        if self["listen"]:
            given["listen"] = list(self["listen"])
        if self["service"]:
            given["services"] = list(self["service"])
        for option, key in [
            ("users", "users_file"),
            ("state-dir", "state_dir"),
            ("server-name", "server_name"),
            ("log-format", "log_format"),
            ("log-file", "log_file"),
        ]:
            if self[option] is not None:
                given[key] = self[option]
        return given

    def postOptions(self) -> None:
        """
        Load and check the configuration with these overrides, into C{self["loaded"]}.

        @raise usage.UsageError: naming the problem in one line.
        """
        for option in _PATH_OPTIONS:
            value = self[option]
            if isinstance(value, str) and value and value != "-":
                # ~ first, as the configuration does for its own paths (--users=~/x leaves
                # it to us, not the shell).
                self[option] = os.path.abspath(os.path.expanduser(value))
        try:
            self["loaded"] = load_config(self["config"], self.overrides())
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None
        # log.format = "json" with log.file = "-" needs the runner's help (twistd --logger).
        problem = stdout_log_problem(self["loaded"].log, getattr(self, "parent", None))
        if problem is not None:
            raise usage.UsageError(problem)


def makeService(options: Options) -> Any:
    """
    Build the gateway service from parsed options, and arrange for SIGTERM to drain and
    SIGHUP to reload once the reactor runs.

    @param options: the parsed L{Options}, with the loaded configuration.
    @return: the gateway's L{twisted.application.service.MultiService}.
    @raise SystemExit: with one line for the operator when the gateway cannot start.
    """
    from twisted.internet import reactor

    runner = getattr(options, "parent", None)
    run_as = run_as_identity(runner, os.geteuid())
    _check_before_fork(options["loaded"], runner, run_as)
    try:
        service = make_service(
            options["loaded"], reactor, source=(options["config"], options.overrides())
        )
    except AlreadyRunning as error:
        # Before daemonizing: the operator sees this one line on the terminal, exit 1.
        raise SystemExit(str(error)) from None
    except (UnsafeControlPath, LogFileError) as error:
        raise SystemExit(f"netguard: {error}") from None  # as the start would say it
    except (UsersFileError, TLSConfigError, ListenFailed, OSError) as error:
        raise SystemExit(f"netguard: cannot start: {error}") from None
    # twistd --uid as root: what we create in the state directory goes to that user
    # before twistd drops privileges, so reload and clean-up at stop keep working (the
    # workers, started after the drop, read the users file and keys as that user).
    service.run_as = run_as
    if isinstance(service, Supervisor):
        # Workers: SIGTERM drains every worker (a second one closes what is left), SIGHUP
        # checks the configuration and reloads every worker, SIGUSR1 switches their heartbeat.
        service.reloader = SupervisorReloader(service, options["config"], options.overrides())
        reactor.callWhenRunning(install_sigterm, reactor, service.stop_requests)
        reactor.callWhenRunning(install_sighup, reactor, service.reloader)
        reactor.callWhenRunning(install_sigusr1, reactor, service)
        return service
    service.reloader = Reloader(service, options["config"], options.overrides())
    # After the reactor's own handlers are in place: SIGTERM drains, a second one cuts;
    # SIGHUP reloads the configuration, the users and the certificates.
    reactor.callWhenRunning(install_sigterm, reactor, service.stop_requests)
    reactor.callWhenRunning(install_sighup, reactor, service.reloader)
    return service


def _check_before_fork(config: Any, runner: Any, run_as: tuple[int, int] | None) -> None:
    """
    Check now, in the foreground, what would otherwise go wrong only after a daemonizing
    twistd forked: a C{--uid}/C{--gid} twistd cannot switch to (twistd's own failure there
    ends the daemon without telling its waiting parent), and with workers under C{--uid} a
    C{[shared]} password file they could not read.

    @param config: the loaded configuration.
    @param runner: twistd's options, or L{None}.
    @param run_as: C{(uid, gid)} of C{--uid} as root (L{run_as_identity}), or L{None}.
    @raise SystemExit: with one line naming the problem.
    """
    problem = switch_refused(runner, os.geteuid(), os.getuid(), os.getgid())
    if problem is not None:
        raise SystemExit(f"netguard: cannot start: {problem}")
    if config.workers > 1 and run_as is not None and config.shared.password_file:
        check_readable_after_drop(config.shared.password_file, run_as[0])

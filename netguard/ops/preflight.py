# -*- test-case-name: tests.test_preflight -*-
"""
Check, before twistd daemonizes, that every address the gateway will listen on is free, and
that the C{[log] file} can be opened.

twistd builds the service (C{makeService}) in the foreground, then forks into the background
and only then listens (C{privilegedStartService}). A listener that fails there cannot be
reported on the terminal any more: twistd passes only ordinary exceptions back to the
waiting parent, and the operator would see a start that never returns or a cryptic message.
So the gateway probes each TCP address (a bind with C{SO_REUSEADDR}, as Twisted binds,
closed at once) and each unix socket path (L{check_unix_socket_free}) while still in the
foreground: an address in use or a port that needs privileges stops the start with one line.

The probe is advisory: another process may take the address between the probe and the real
listen, which still fails cleanly in C{privilegedStartService}, only later (through twistd's
status pipe: L{netguard.ops.startup.StartFailed}). The log file is opened (created 0600 as
the start would) and closed again by L{check_log_file}.
"""

from __future__ import annotations

import errno
import socket

from netguard.endpoints import split_description
from netguard.log_file import LogFileError, open_log_file
from netguard.ops.lock import InstanceConflict, check_unix_socket_free
from netguard.proxy_listener import split_proxy_listener


class AddressBusy(Exception):
    """
    A listener's address cannot be used: in use, needing privileges, or not available.
    """


def _fields(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    An endpoint description's type, positional and keyword values, split as the
    configuration (and Twisted's parser) splits it.
    """
    fields = split_description(description)
    positional = [f.value for f in fields[1:] if f.key is None]
    keywords = {f.key: f.value for f in fields[1:] if f.key is not None}
    return fields[0].value, positional, keywords


def _probe_tcp(family: socket.AddressFamily, interface: str, port: int, what: str) -> None:
    if port == 0:
        return  # any free port: nothing to probe
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((interface, port))
    except OSError as error:
        reason = {
            errno.EADDRINUSE: "the address is already in use (another process listens there)",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
            errno.EADDRNOTAVAIL: "the address is not available on this host",
        }.get(error.errno or 0, error.strerror or str(error))
        raise AddressBusy(f"cannot listen on {what}: {reason}") from None
    finally:
        probe.close()


def check_listener_free(description: str, what: str | None = None) -> None:
    """
    Probe the address of one server endpoint description.

    C{tcp:}, C{tcp6:} and C{ssl:} addresses are bound and released; C{unix:} paths are
    checked with L{check_unix_socket_free} (a stale socket is removed, a live one refused);
    C{haproxy:} is probed through the listener it wraps. Other types (C{systemd:}, plugins)
    are left to the real listen.

    @param description: a normalized server endpoint description (ports are numbers).
    @param what: how to name the listener in a message (the description by default).
    @raise AddressBusy: naming the listener and the problem.
    """
    what = what or description
    kind, positional, keywords = _fields(description)
    if kind == "haproxy":
        check_listener_free(split_proxy_listener(description).inner, what)
        return
    if kind in ("tcp", "tcp6", "ssl"):
        port_text = keywords.get("port") or (positional[0] if positional else "")
        if not port_text.isdigit():
            return  # the real listen reports it
        default = "::" if kind == "tcp6" else "0.0.0.0"
        interface = keywords.get("interface", default)
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        _probe_tcp(family, interface, int(port_text), what)
    elif kind == "unix":
        path = keywords.get("address") or (positional[0] if positional else "")
        if not path or path.startswith("\0"):
            return
        try:
            check_unix_socket_free(path)
        except InstanceConflict as error:
            raise AddressBusy(f"cannot listen on {what}: {error}") from None


def check_log_file(path: str) -> None:
    """
    Open the C{[log] file} for appending, as the start will (creating it with mode 0600
    when it does not exist), and close it again: a missing directory or a file we may not
    write stops the start while twistd is still in the foreground.

    @param path: C{log.file}; C{"-"} (no file of netguard's own) is not probed.
    @raise LogFileError: naming the file and the reason, as the start would.
    """
    if path == "-":
        return
    try:
        open_log_file(path).close()
    except OSError as error:
        raise LogFileError(f"cannot open log file {path}: {error.strerror or error}") from None

# -*- test-case-name: tests.test_control -*-
"""
The client side of the control socket, for C{netguard ctl}: one command, one reply, with a
plain blocking socket (a command-line tool may block) bounded by one overall deadline, and
an exit status per outcome (L{EXIT_OK} ... L{EXIT_PROTOCOL}). Commands and exit statuses:
C{docs/operating.md} section 7.5.
"""

from __future__ import annotations

import json
import math
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Sequence

#: Exit status: the command succeeded.
EXIT_OK = 0

#: Exit status: the daemon refused or failed the command.
EXIT_REFUSED = 1

#: Exit status: the command words are not a valid command line.
EXIT_USAGE = 2

#: Exit status: the control socket cannot be reached.
EXIT_UNREACHABLE = 3

#: Exit status: no valid reply in time.
EXIT_PROTOCOL = 4

#: The longest command line sent (the daemon's bound).
MAX_COMMAND_BYTES = 256

#: The seconds C{--timeout} may give, both included: a finite bound a socket accepts.
TIMEOUT_RANGE = (0.1, 3600.0)

#: How long C{netguard ctl} waits for a reply unless told: longer than a supervisor waits
#: for its workers (5 s each step, a reload also loading the configuration), so that a
#: worker that does not answer is reported (C{RELOAD_INCOMPLETE}) rather than the command
#: given up on.
DEFAULT_TIMEOUT = 15.0

#: The longest reply read.
MAX_REPLY_BYTES = 1 << 20

#: What the client says of a longer reply: what was asked was too much, and how to ask for
#: less (only C{penalties} lists a table; its answer is bounded by C{--top}).
REPLY_TOO_LONG = (
    f"the daemon's reply is longer than the {MAX_REPLY_BYTES} bytes this client reads; ask "
    "for less: penalties --top N (at most 1000 sources) or penalties SOURCE for one address "
    "or network"
)


#: The name of a gateway's control socket and of the instance lock beside it.
CONTROL_SOCKET_NAME = "control.sock"
INSTANCE_LOCK_NAME = "netguard.lock"


def listening_control_sockets(
    proc_net_unix: str = "/proc/net/unix", uid: int | None = None
) -> list[str]:
    """
    The control sockets of running gateways that this user may use: every AF_UNIX path
    bound in this network namespace (from C{/proc/net/unix}) named C{control.sock} that
    L{_trusted_control_socket} accepts. Any user can bind a socket of that name, and the
    names in the table can be changed after the bind, so nothing in them is trusted.

    @param proc_net_unix: the kernel's table of unix sockets (Linux); absent elsewhere.
    @param uid: the owner to look for (default: the effective user).
    @return: the paths (their real paths), sorted, without duplicates; empty when the table
        cannot be read.
    """
    owner = os.geteuid() if uid is None else uid
    try:
        with open(proc_net_unix, encoding="utf-8", errors="replace") as handle:
            rows = handle.read(8 << 20).splitlines()[1:]
    except OSError:
        return []
    found = set()
    for row in rows:
        fields = row.split(None, 7)
        if len(fields) < 8 or not fields[7].startswith("/"):
            continue
        path = fields[7]
        if os.path.basename(path) != CONTROL_SOCKET_NAME:
            continue
        trusted = _trusted_control_socket(path, owner)
        if trusted is not None:
            found.add(trusted)
    return sorted(found)


def _trusted_control_socket(path: str, owner: int) -> str | None:
    """
    Whether C{path} is a control socket of C{owner}'s that no other user can have placed or
    can swap: the name itself a socket owned by C{owner}, not a symbolic link; its directory
    (by its real path) owned by C{owner} or root and not writable by group or others, as the
    daemon requires; every directory above it owned by C{owner} or root and, if others may
    write it, sticky (C{/tmp}); and a C{netguard.lock} beside it that is a regular file owned
    by C{owner}, not a link.

    @return: the socket's path under its directory's real path, or L{None}.
    """
    try:
        if not _owned(os.lstat(path), stat.S_ISSOCK, owner):
            return None
        directory = os.path.realpath(os.path.dirname(path))
        info = os.lstat(directory)
        if not _owned(info, stat.S_ISDIR, owner, 0) or info.st_mode & 0o022:
            return None
        above = directory
        while above != "/":
            above = os.path.dirname(above)
            info = os.lstat(above)
            if not _owned(info, stat.S_ISDIR, owner, 0):
                return None
            if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
                return None
        trusted = os.path.join(directory, CONTROL_SOCKET_NAME)
        lock = os.path.join(directory, INSTANCE_LOCK_NAME)
        if not _owned(os.lstat(trusted), stat.S_ISSOCK, owner):
            return None
        if not _owned(os.lstat(lock), stat.S_ISREG, owner):
            return None
    except OSError:
        return None
    return trusted


def _owned(info: os.stat_result, kind: Callable[[int], bool], *owners: int) -> bool:
    """
    Whether C{info} (from C{lstat}) is of C{kind} and owned by one of C{owners}.
    """
    return kind(info.st_mode) and info.st_uid in owners


def peer_refusal(sock: socket.socket, path: str, euid: int | None = None) -> str | None:
    """
    Check who serves the connected control socket C{sock} (C{SO_PEERCRED}, Linux): a user
    other than root is served only by a daemon of its own user or by root (a socket name
    that another user's process serves is not our gateway, whoever placed it); root may
    talk to a daemon of any user.

    @param euid: the user we act for (default: the effective user).
    @return: L{None} when the peer is acceptable (or the platform cannot tell), else why not.
    """
    ours = os.geteuid() if euid is None else euid
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None or ours == 0:
        return None
    try:
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, _UCRED))
    except (OSError, struct.error) as e:
        return f"cannot tell who serves the control socket {path}: {e}"
    if uid in (ours, 0):
        return None
    return (
        f"refusing the control socket {path}: it is served by uid {uid} (pid {pid}), not by "
        f"this user (uid {ours}) or root; is it really a netguard of this user?"
    )


#: The size of C{struct ucred} (pid, uid, gid).
_UCRED = struct.calcsize("3i")


def _printable(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _format_reply(reply: bytes) -> tuple[int, str]:
    """
    Turn one reply line into an exit status and the text to show.
    """
    try:
        text = reply.decode("ascii")
    except UnicodeDecodeError:
        return EXIT_PROTOCOL, "the daemon's reply is not ASCII"
    if text.startswith("OK "):
        try:
            payload = json.loads(text[3:])
        except ValueError:
            return EXIT_PROTOCOL, f"bad reply from the daemon: {_printable(text)[:200]}"
        return EXIT_OK, json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=True)
    if text == "OK":
        return EXIT_OK, ""
    if text.startswith("ERR "):
        return EXIT_REFUSED, _printable(text[4:])
    return EXIT_PROTOCOL, f"bad reply from the daemon: {_printable(text)[:200]}"


def run_ctl(path: str, words: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str]:
    """
    Send one command to the control socket C{path} and read its reply.

    @param path: the control socket.
    @param words: the command, e.g. C{["heartbeat", "on"]}.
    @param timeout: the most seconds spent in all (connect, send and read), within
        L{TIMEOUT_RANGE} (anything else, C{inf} and C{nan} too, is a usage error).
    @return: C{(exit status, text to show)}; the text has no final newline. With status 0 it
        is the reply's JSON payload (indented), to print on standard output; otherwise an
        explanation for standard error.
    """
    low, high = TIMEOUT_RANGE
    if not (math.isfinite(timeout) and low <= timeout <= high):
        return EXIT_USAGE, f"the timeout must be a number of seconds from {low:g} to {high:g}"
    line = " ".join(words)
    if (
        not words
        or not line
        or any(not w or not w.isascii() or not w.isprintable() for w in words)
    ):
        return EXIT_USAGE, "the command must be words of printable ASCII (try: help)"
    if any(" " in w for w in words):
        return EXIT_USAGE, "a command word cannot contain a space"
    data = line.encode("ascii") + b"\r\n"
    if len(data) - 2 > MAX_COMMAND_BYTES:
        return EXIT_USAGE, f"the command is longer than {MAX_COMMAND_BYTES} bytes"
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.settimeout(remaining())
            sock.connect(path)
        except TimeoutError:
            return EXIT_PROTOCOL, f"no answer from {path} within {timeout:g}s"
        except PermissionError as e:
            return (
                EXIT_UNREACHABLE,
                f"cannot connect to the control socket {path}: {e.strerror}: it is mode 0600, "
                "only the daemon's user (or root) may use it",
            )
        except OSError as e:
            reason = e.strerror or type(e).__name__
            return (
                EXIT_UNREACHABLE,
                f"cannot connect to the control socket {path}: {reason} (is netguard running?)",
            )
        refusal = peer_refusal(sock, path)
        if refusal is not None:
            return EXIT_UNREACHABLE, refusal
        buffer = b""
        try:
            sock.settimeout(remaining())
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                # The daemon may refuse at once (ERR NOT_AUTHORIZED, ERR BUSY) and close
                # before our command arrives: its reply is still there to read.
                pass
            while b"\n" not in buffer:
                if len(buffer) > MAX_REPLY_BYTES:
                    return EXIT_PROTOCOL, REPLY_TOO_LONG
                sock.settimeout(remaining())
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                buffer += chunk
        except TimeoutError:
            return EXIT_PROTOCOL, f"no reply from {path} within {timeout:g}s"
        except OSError as e:
            return EXIT_PROTOCOL, f"connection to {path} failed: {e.strerror or type(e).__name__}"
    finally:
        sock.close()
    if b"\n" not in buffer:
        return EXIT_PROTOCOL, "the daemon closed the connection without a reply"
    reply = buffer.split(b"\n", 1)[0]
    if reply.endswith(b"\r"):
        reply = reply[:-1]
    return _format_reply(reply)

# -*- test-case-name: tests.test_control -*-
"""
The client side of the control socket, for C{netguard ctl}: one command, one reply, with a
plain blocking socket (a command-line tool may block) bounded by one overall deadline, and
an exit status per outcome (L{EXIT_OK} ... L{EXIT_PROTOCOL}). Commands and exit statuses:
C{docs/operating.md} section 7.5.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import Sequence

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

#: The longest reply read.
MAX_REPLY_BYTES = 1 << 20


#: The name of a gateway's control socket and of the instance lock beside it.
CONTROL_SOCKET_NAME = "control.sock"
INSTANCE_LOCK_NAME = "netguard.lock"


def listening_control_sockets(
    proc_net_unix: str = "/proc/net/unix", uid: int | None = None
) -> list[str]:
    """
    The control sockets of running gateways that this user may use: every AF_UNIX path
    bound in this network namespace (from C{/proc/net/unix}) named C{control.sock}, owned by
    C{uid}, with a netguard instance lock beside it.

    @param proc_net_unix: the kernel's table of unix sockets (Linux); absent elsewhere.
    @param uid: the owner to look for (default: the effective user).
    @return: the paths, sorted, without duplicates; empty when the table cannot be read.
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
        try:
            info = os.stat(path)
        except OSError:
            continue
        lock = os.path.join(os.path.dirname(path), INSTANCE_LOCK_NAME)
        if stat.S_ISSOCK(info.st_mode) and info.st_uid == owner and os.path.isfile(lock):
            found.add(path)
    return sorted(found)


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


def run_ctl(path: str, words: Sequence[str], timeout: float = 5.0) -> tuple[int, str]:
    """
    Send one command to the control socket C{path} and read its reply.

    @param path: the control socket.
    @param words: the command, e.g. C{["heartbeat", "on"]}.
    @param timeout: the most seconds spent in all (connect, send and read).
    @return: C{(exit status, text to show)}; the text has no final newline. With status 0 it
        is the reply's JSON payload (indented), to print on standard output; otherwise an
        explanation for standard error.
    """
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
                    return EXIT_PROTOCOL, "the daemon's reply is too long"
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

# -*- test-case-name: tests.test_control -*-
"""
The control socket: the daemon's only administration interface, an AF_UNIX stream socket
(mode 0600, never on the network) with a small line protocol on L{GuardedLineReceiver}.

The daemon's side of each command is the L{ControlCommands} interface, implemented by the
service that owns the state; this module knows nothing of the gateway. Commands, replies,
who may connect and the bounds: C{docs/operating.md} section 7.5.
"""

from __future__ import annotations

import heapq
import ipaddress
import json
import os
import re
import socket
import stat
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from netguard.errors import ErrorCode
from netguard.framing import FramingLimits, GuardedLineReceiver
from netguard.log import escape
from netguard.ops.lock import check_unix_socket_free

#: The framing bounds of a control connection: short lines, greeted at once (there is no
#: greeting line), 30 s of silence allowed.
CONTROL_LIMITS = FramingLimits(
    max_line_length=256,
    max_lines_before_auth=16,
    max_bytes_before_auth=4096,
    greeting_delay=0.0,
    handshake_timeout=30.0,
    idle_timeout=30.0,
    write_timeout=10.0,
)

#: The longest a command may take (a reload, say) before the client is told C{ERR TIMEOUT};
#: the command itself goes on and its outcome is logged.
DEFAULT_COMMAND_TIMEOUT = 60.0

#: Commands a client may queue behind one that is still running.
MAX_QUEUED = 8

#: Simultaneous control connections.
MAX_CLIENTS = 8

#: The commands and their forms, as listed by C{help}.
COMMANDS = (
    "status",
    "heartbeat on|off",
    "reload",
    "drain",
    "penalties [list] [SOURCE] [--top N]",
    "penalties clear [SOURCE]",
    "help",
)

#: Sources C{penalties} lists when not told how many (C{--top N}).
DEFAULT_PENALTIES_TOP = 100

#: The most sources C{penalties --top N} lists: 1,000 rows of the longest source keys make a
#: reply of about 100 kB, far below what C{netguard ctl} reads (L{MAX_REPLY_BYTES
#: <netguard.ops.ctl_client.MAX_REPLY_BYTES>}) and what a worker's answer may hold.
MAX_PENALTIES_TOP = 1000

_PENALTIES_USAGE = (
    f"usage: penalties [list] [SOURCE] [--top N] (N 1..{MAX_PENALTIES_TOP}, "
    "SOURCE an IP address or network, unix or unknown) | penalties clear [SOURCE]"
)

#: Penalty keys that are not addresses (see L{netguard.admission.UNIX_SOURCE}).
_NAMED_SOURCES = frozenset({"unix", "unknown"})

_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,31}\Z")
_WORDS = re.compile(rb"[\x21-\x7e]+(?: [\x21-\x7e]+)*\Z")


class ControlError(Exception):
    """
    Raised by a L{ControlCommands} method to refuse a command with a precise code, sent as
    C{ERR <code> <text>} (for example a reload refused because the new configuration is
    invalid: C{ControlError("RELOAD_REFUSED", "config: limits.idle_timeout must be > 0")}).

    @ivar code: upper-case letters, digits and underscores, at most 32; anything else is
        sent as C{FAILED}.
    @ivar text: a short human text; non-printable characters are replaced on the wire.
    """

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code if _CODE.match(code) else "FAILED"
        self.text = text


class ControlCommands(Protocol):
    """
    What the daemon does for each control command. Implemented by the service that owns the
    state (the lead's gateway service); every method runs in the reactor thread.
    """

    def status(self) -> Mapping[str, Any] | Deferred[Mapping[str, Any]]:
        """
        @return: the current figures and states, JSON-serialisable (non-JSON values are sent
            as their C{str}), or a L{Deferred} firing with them.
        """

    def heartbeat(self, on: bool) -> bool:
        """
        Switch the heartbeat (logged as switched by C{"control"}).

        @return: the heartbeat's new state.
        """

    def reload(self) -> Deferred[str] | str:
        """
        Reload configuration, users, services and certificates.

        @return: a short summary, or a L{Deferred} firing with one.
        @raise ControlError: when the new configuration is refused (the old one stays).
        """

    def drain(self) -> str:
        """
        Stop accepting and let the open relays finish (as on SIGTERM).

        @return: a short summary.
        """

    def penalties(
        self, top: int, source: str | None
    ) -> Mapping[str, Any] | Deferred[Mapping[str, Any]]:
        """
        The sources with penalty points or a block, at most C{top} of them (see
        L{select_penalties}, which builds this answer from a table's rows).

        @param top: the most sources listed, 1 to L{MAX_PENALTIES_TOP}.
        @param source: list only the sources that overlap this address or network
            (normalised by L{normalise_source}), or every source (L{None}).
        @return: C{{"penalties": [rows], "total": int, "truncated": bool}} (or a
            L{Deferred} firing with it); each row C{{"source", "blocked_for", "offences"}}.
        """

    def clear_penalties(self, source: str | None) -> int | Deferred[int]:
        """
        Forget the penalty of C{source} (normalised address or network text), or of every
        source when L{None}.

        @return: how many entries were removed (or a L{Deferred} firing with it).
        """


def ok_line(payload: Mapping[str, Any]) -> bytes:
    """
    Render a success reply: C{OK} and a compact, ASCII-only JSON object on one line.

    @param payload: the reply's content; values JSON cannot hold are sent as their C{str}.
    @return: the line, without its terminator.
    @raise ValueError: if the payload holds a non-finite float.
    """
    body = json.dumps(
        payload,
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=True,
        allow_nan=False,
        default=str,
    )
    return b"OK " + body.encode("ascii")


def error_line(code: str, text: str) -> bytes:
    """
    Render a refusal C{ERR <CODE> <text>} with the same guarantees as
    L{netguard.errors.format_error}: printable ASCII only, text at most 200 characters.

    @param code: the code; anything that is not a valid code is sent as C{FAILED}.
    @param text: a short human text.
    @return: the line, without its terminator.
    """
    if not _CODE.match(code):
        code = "FAILED"
    safe = "".join(c if " " <= c <= "~" else "?" for c in text)[:200]
    return f"ERR {code} {safe}".encode("ascii")


def peer_uid_of(transport: Any) -> int | None:
    """
    The effective user id of the process at the other end of a unix socket connection
    (C{SO_PEERCRED}), or L{None} when it cannot be told (not a unix socket, not Linux).
    """
    sock = getattr(transport, "socket", None)
    peercred = getattr(socket, "SO_PEERCRED", None)
    if sock is None or peercred is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def normalise_source(text: str) -> str:
    """
    Validate a penalised source given by the operator: an IP address, an IP network, or one
    of the named keys admission uses for peers without an address (C{unix}, C{unknown}).

    @return: its normalised text (C{2001:DB8::1} becomes C{2001:db8::1}).
    @raise ValueError: if it is none of these.
    """
    if text in _NAMED_SOURCES:
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return str(ipaddress.ip_network(text, strict=False))


def penalty_order(row: Mapping[str, Any]) -> tuple[float, int, str]:
    """
    The order C{penalties} lists sources in: the longest block left first, then the most
    offences, then by source text (so equal rows always come in the same order).
    """
    return (-float(row["blocked_for"]), -int(row["offences"]), str(row["source"]))


def _span(text: str) -> tuple[int, int, int] | None:
    """
    The addresses a source key such as C{192.0.2.0/24} or C{2001:db8:1:2::/64} covers, as
    C{(address bits, first, last)}, or L{None} for a named key or bad text. Parsed with
    C{inet_pton}: a filtered listing reads every key of a table of up to
    C{max_tracked_sources}, and L{ipaddress} costs several times more per key.
    """
    address, _, prefix = text.partition("/")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        packed = socket.inet_pton(family, address)
    except (OSError, ValueError):
        return None
    bits = len(packed) * 8
    if not prefix:
        length = bits
    elif prefix.isdigit() and len(prefix) <= 3 and int(prefix) <= bits:
        length = int(prefix)
    else:
        return None
    host = (1 << (bits - length)) - 1
    first = int.from_bytes(packed, "big") & ~host
    return bits, first, first | host


def source_matcher(source: str | None) -> Callable[[str], bool]:
    """
    A test of a penalty's source key against the operator's filter: a named key matches
    only itself; an address or network matches every key that overlaps it (the key that
    holds an address, or every key inside a network); an IPv4-mapped IPv6 address is
    taken as IPv4, as admission counts it.

    @param source: a filter as L{normalise_source} gives it, or L{None} (everything).
    """
    if source is None:
        return lambda key: True
    wanted = _span(source)
    if wanted is None:
        return lambda key: key == source
    bits, low, high = wanted
    if bits == 128 and low == high and low >> 32 == 0xFFFF:
        bits, low, high = 32, low & 0xFFFFFFFF, low & 0xFFFFFFFF

    def matches(key: str) -> bool:
        span = _span(key)
        return span is not None and span[0] == bits and span[1] <= high and low <= span[2]

    return matches


def matching_sources(keys: Iterable[str], source: str) -> list[str]:
    """
    The penalty keys C{penalties clear SOURCE} forgets: exactly those the listing filter
    (L{source_matcher}) shows for C{source}, an address, a network or a named key (given
    as the operator typed it or normalised). Text that is none of these matches nothing.

    @param keys: the source keys of a table.
    @return: the matching keys, in the order given.
    """
    try:
        wanted = normalise_source(source)
    except ValueError:
        return []
    matches = source_matcher(wanted)
    return [key for key in keys if matches(key)]


def select_penalties(
    rows: Iterable[Mapping[str, Any]], top: int, source: str | None = None
) -> dict[str, Any]:
    """
    The C{penalties} answer from a table's rows: those matching C{source}
    (L{source_matcher}), counted, and the first C{top} in L{penalty_order}. Only C{top}
    rows are held besides the input, whatever its length.

    @param rows: C{{"source", "blocked_for", "offences"}} mappings.
    @param top: the most rows listed (at least 1).
    @param source: the filter, or L{None}.
    @return: C{{"penalties": [rows], "total": matching rows, "truncated": whether some
        matching rows are not listed}}.
    """
    matches = source_matcher(source)
    total = 0

    def matching() -> Iterable[Mapping[str, Any]]:
        nonlocal total
        for row in rows:
            if matches(str(row["source"])):
                total += 1
                yield row

    listed = [dict(row) for row in heapq.nsmallest(max(1, top), matching(), key=penalty_order)]
    return {"penalties": listed, "total": total, "truncated": total > len(listed)}


def parse_penalties_listing(args: list[str]) -> tuple[int, str | None]:
    """
    The arguments of C{penalties [list] [SOURCE] [--top N]}.

    @return: C{(top, source)}: C{top} L{DEFAULT_PENALTIES_TOP} unless given, C{source}
        normalised or L{None}.
    @raise _BadArguments: anything else (a repeated option, N out of 1 to
        L{MAX_PENALTIES_TOP}, a source that is not an address or network).
    """
    words = list(args)
    if words and words[0].lower() == "list":
        words.pop(0)
    top: int | None = None
    source: str | None = None
    while words:
        word = words.pop(0)
        if word.lower() == "--top":
            count = words.pop(0) if words else ""
            if (
                top is not None
                or not count.isdigit()
                or not (1 <= int(count) <= MAX_PENALTIES_TOP)
            ):
                raise _BadArguments(_PENALTIES_USAGE)
            top = int(count)
            continue
        if source is not None:
            raise _BadArguments(_PENALTIES_USAGE)
        try:
            source = normalise_source(word)
        except ValueError:
            raise _BadArguments(_PENALTIES_USAGE) from None
    return (DEFAULT_PENALTIES_TOP if top is None else top), source


class ControlProtocol(GuardedLineReceiver):
    """
    One control connection: one command per line (CRLF or LF; words separated by spaces; at
    most 256 bytes), each answered with exactly one line, C{OK} followed by one space and one
    compact JSON object (ASCII only, so the line can hold no control byte), or
    C{ERR <CODE> <text>}. Codes: C{BAD_SYNTAX}, C{UNKNOWN_COMMAND}, C{LINE_TOO_LONG},
    C{NOT_AUTHORIZED}, C{BUSY}, C{TIMEOUT}, C{INTERNAL}, and whatever code a command raises
    with L{ControlError} (for example C{RELOAD_REFUSED}). Commands on one connection are
    answered in order; a client may send one and close, or keep the connection for several.

    Every connecting process's credentials (C{SO_PEERCRED}) are checked besides the socket
    file's mode: only our own effective user and root are served. This also closes the short
    window between C{bind()} and C{chmod()} in which the socket file still has the umask's
    mode.
    """

    log = Logger()
    factory: ControlFactory

    def __init__(self, factory: ControlFactory) -> None:
        super().__init__(factory.limits, factory.clock)
        self.factory = factory
        self.peer_uid: int | None = None
        self._queue: list[bytes] = []
        self._current: object | None = None
        self._timer: Any = None

    def log_fields(self) -> dict[str, Any]:
        return {"peer": f"uid:{self.peer_uid}" if self.peer_uid is not None else "uid:-"}

    def greet(self) -> None:
        """
        No greeting line: check who connected, then accept commands.
        """
        self.peer_uid = self.factory.peer_uid(self.transport)
        if self.peer_uid is None or self.peer_uid not in self.factory.allowed_uids:
            self.log.warn(
                "control connection refused for uid {uid}",
                event="control.denied",
                uid=self.peer_uid,
            )
            self.refuse(ErrorCode.NOT_AUTHORIZED, "not allowed to control this daemon")
            return
        if len(self.factory.clients) >= self.factory.max_clients:
            self.refuse(ErrorCode.BUSY, "too many control connections")
            return
        self.factory.clients.add(self)
        self.end_handshake()

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        self.factory.clients.discard(self)
        self._queue = []
        self._current = None
        self._cancel_timer()

    def lineReceived(self, line: bytes) -> None:
        if self._current is not None:
            if len(self._queue) >= MAX_QUEUED:
                self.refuse(ErrorCode.BUSY, "too many queued commands", offending=line)
                return
            self._queue.append(line)
            return
        self._run(line)

    # -- running commands ----------------------------------------------------------------------

    def _run(self, line: bytes) -> None:
        """
        Parse and run one command. Its reply (now, or when its L{Deferred} fires, or at the
        command timeout) then runs the next queued line.
        """
        if not _WORDS.match(line):
            self.log.info(
                "bad control line {line}",
                event="control.bad_line",
                line=escape(line),
                **self.log_fields(),
            )
            self._reply(error_line("BAD_SYNTAX", "words of printable ASCII separated by a space"))
            return
        words = line.decode("ascii").split(" ")
        verb = words[0].lower()
        handler = _DISPATCH.get(verb)
        if handler is None:
            self._logged(verb, "UNKNOWN_COMMAND")
            self._reply(error_line("UNKNOWN_COMMAND", "unknown command; try help"))
            return
        command = " ".join(w.lower() for w in words[:2])
        self._current = token = object()
        self.setTimeout(None)
        result = maybeDeferred(handler, self, words[1:])
        if not result.called:
            self._timer = self.clock.callLater(
                self.factory.command_timeout, self._command_timed_out, token, command
            )
        result.addCallbacks(
            self._succeeded,
            self._failed,
            callbackArgs=(token, command),
            errbackArgs=(token, command),
        )

    def _succeeded(self, payload: Mapping[str, Any], token: object, command: str) -> None:
        if self._current is not token:
            self._logged(command, "ok", late=True)
            return
        try:
            line = ok_line(payload)
        except ValueError as e:
            self._failed(Failure(e), token, command)
            return
        self._logged(command, "ok")
        self._reply(line)

    def _failed(self, failure: Failure, token: object, command: str) -> None:
        if failure.check(ControlError):
            code, text = failure.value.code, failure.value.text
        elif failure.check(_BadArguments):
            code, text = "BAD_SYNTAX", str(failure.value)
        else:
            self.log.failure(
                "control command {command} failed", failure, event="control.error", command=command
            )
            code, text = "INTERNAL", f"{failure.type.__name__} (see the daemon's log)"
        if self._current is not token:
            self._logged(command, code, late=True)
            return
        self._logged(command, code)
        self._reply(error_line(code, text))

    def _command_timed_out(self, token: object, command: str) -> None:
        self._timer = None
        if self._current is not token:
            return
        self._logged(command, "TIMEOUT")
        self._reply(error_line("TIMEOUT", "the command is still running; see the daemon's log"))

    def _reply(self, line: bytes) -> None:
        """
        Send one reply line, then run the next queued command or wait for one.
        """
        self._current = None
        self._cancel_timer()
        if not self.factory.connected(self):
            return
        self.sendLine(line)
        self.setTimeout(self.limits.idle_timeout)
        if self._queue:
            self._run(self._queue.pop(0))

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _logged(self, command: str, outcome: str, late: bool = False) -> None:
        self.log.info(
            "control {command}: {outcome}",
            event="control.command",
            command=escape(command),
            outcome=outcome,
            late=late,
            **self.log_fields(),
        )

    # -- the commands ----------------------------------------------------------------------------

    def do_status(self, args: list[str]) -> Deferred[Mapping[str, Any]]:
        _no_arguments("status", args)
        figures: Deferred[Any] = maybeDeferred(self.factory.commands.status)
        return figures.addCallback(lambda value: dict(value))

    def do_heartbeat(self, args: list[str]) -> Mapping[str, Any]:
        if len(args) != 1 or args[0].lower() not in ("on", "off"):
            raise _BadArguments("usage: heartbeat on|off")
        return {"heartbeat": bool(self.factory.commands.heartbeat(args[0].lower() == "on"))}

    def do_reload(self, args: list[str]) -> Deferred[Mapping[str, Any]]:
        _no_arguments("reload", args)
        d = maybeDeferred(self.factory.commands.reload)
        return d.addCallback(lambda summary: {"reload": str(summary)})

    def do_drain(self, args: list[str]) -> Mapping[str, Any]:
        _no_arguments("drain", args)
        return {"drain": str(self.factory.commands.drain())}

    def do_penalties(self, args: list[str]) -> Deferred[Mapping[str, Any]]:
        sub = args[0].lower() if args else "list"
        if sub != "clear":
            top, source = parse_penalties_listing(args)
            listed: Deferred[Any] = maybeDeferred(self.factory.commands.penalties, top, source)
            return listed.addCallback(_bounded_listing, top)
        if len(args) <= 2:
            source = None
            if len(args) == 2:
                try:
                    source = normalise_source(args[1])
                except ValueError:
                    raise _BadArguments(
                        "SOURCE must be an IP address or network, unix or unknown"
                    ) from None
            cleared: Deferred[Any] = maybeDeferred(self.factory.commands.clear_penalties, source)
            return cleared.addCallback(lambda count: {"cleared": int(count)})
        raise _BadArguments(_PENALTIES_USAGE)

    def do_help(self, args: list[str]) -> Mapping[str, Any]:
        return {"commands": list(COMMANDS)}


class _BadArguments(Exception):
    """
    A known command with wrong arguments; the text is the usage.
    """


def _bounded_listing(answer: Mapping[str, Any], top: int) -> dict[str, Any]:
    """
    The C{penalties} reply from the daemon's answer, never more than C{top} rows whatever
    the answer holds (a C{total} or C{truncated} it lacks is made up from the rows); an
    C{approximate} flag (the supervisor's, L{merge_exact_penalties
    <netguard.workers.figures.merge_exact_penalties>}) is passed on.
    """
    rows = list(answer.get("penalties", []))
    listed = rows[:top]
    total = max(int(answer.get("total", len(rows))), len(rows))
    truncated = bool(answer.get("truncated", False)) or total > len(listed)
    reply: dict[str, Any] = {"penalties": listed, "total": total, "truncated": truncated}
    if "approximate" in answer:
        reply["approximate"] = bool(answer["approximate"])
    return reply


def _no_arguments(command: str, args: list[str]) -> None:
    if args:
        raise _BadArguments(f"usage: {command}")


_DISPATCH: dict[str, Callable[[ControlProtocol, list[str]], Any]] = {
    "status": ControlProtocol.do_status,
    "heartbeat": ControlProtocol.do_heartbeat,
    "reload": ControlProtocol.do_reload,
    "drain": ControlProtocol.do_drain,
    "penalties": ControlProtocol.do_penalties,
    "help": ControlProtocol.do_help,
}


class ControlFactory(Factory["ControlProtocol"]):
    """
    Builds L{ControlProtocol}s for one daemon.

    @ivar commands: the daemon's L{ControlCommands}.
    @ivar clock: the L{IReactorTime} every timer uses.
    @ivar limits: the framing bounds (L{CONTROL_LIMITS} by default).
    @ivar allowed_uids: the peer user ids served (ours and root by default).
    @ivar clients: the live, authorised control connections.
    """

    def __init__(
        self,
        commands: ControlCommands,
        clock: Any,
        limits: FramingLimits | None = None,
        *,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        max_clients: int = MAX_CLIENTS,
        allowed_uids: frozenset[int] | None = None,
        peer_uid: Callable[[Any], int | None] = peer_uid_of,
    ) -> None:
        """
        @param commands: what each command does.
        @param clock: the reactor (or a L{Clock} in tests).
        @param limits: framing bounds; L{CONTROL_LIMITS} when L{None}.
        @param command_timeout: seconds before a running command is answered C{ERR TIMEOUT}.
        @param max_clients: simultaneous connections served.
        @param allowed_uids: peer uids served; our effective uid and root when L{None}.
        @param peer_uid: how a connection's peer uid is found (injected in tests).
        """
        self.commands = commands
        self.clock = clock
        self.limits = limits if limits is not None else CONTROL_LIMITS
        self.command_timeout = command_timeout
        self.max_clients = max_clients
        self.allowed_uids = (
            allowed_uids if allowed_uids is not None else frozenset({os.geteuid(), 0})
        )
        self.peer_uid = peer_uid
        self.clients: set[ControlProtocol] = set()

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        protocol = ControlProtocol(self)
        protocol.factory = self
        return protocol

    def connected(self, protocol: ControlProtocol) -> bool:
        """
        Whether C{protocol} is still a live, authorised connection.
        """
        return protocol in self.clients


class UnsafeControlPath(ValueError):
    """
    The control socket path is not a safe place for an administration socket.
    """


def check_control_path(path: str) -> None:
    """
    Refuse a control socket path that is not a file system path inside a directory only we
    can write (an abstract name, a relative path, a too-long path, a directory others may
    write: there another user could replace our socket with theirs).

    @raise UnsafeControlPath: naming the problem.
    """
    if not path.startswith("/"):
        raise UnsafeControlPath(f"control socket {path!r}: must be an absolute path")
    if len(os.fsencode(path)) > 107:
        raise UnsafeControlPath(f"control socket {path!r}: longer than 107 bytes")
    parent = os.path.dirname(path)
    try:
        info = os.stat(parent)
    except OSError as e:
        raise UnsafeControlPath(f"control socket directory {parent}: {e.strerror}") from None
    if info.st_uid not in (os.geteuid(), 0):
        raise UnsafeControlPath(f"control socket directory {parent}: owned by another user")
    if stat.S_IMODE(info.st_mode) & 0o022:
        raise UnsafeControlPath(
            f"control socket directory {parent}: writable by group or others (use 0700)"
        )


def listen_control(reactor: Any, path: str, factory: ControlFactory) -> Deferred[Any]:
    """
    Listen on the control socket C{path}, mode 0600, with Twisted's PID lock file
    (C{<path>.lock}), after making sure no live process uses the path (a stale socket is
    removed; a live one is never taken over).

    @param reactor: an C{IReactorUNIX}.
    @param path: an absolute path in a directory only we may write (the state directory).
    @param factory: the L{ControlFactory}.
    @return: a L{Deferred} firing with the C{IListeningPort}, or failing with
        L{UnsafeControlPath}, L{netguard.ops.lock.SocketInUse}, L{netguard.ops.lock.NotASocket}
        or C{CannotListenError}.
    """

    def listen() -> Deferred[Any]:
        check_control_path(path)
        check_unix_socket_free(path)
        endpoint = UNIXServerEndpoint(reactor, path, mode=0o600, wantPID=True)
        return endpoint.listen(factory).addCallback(_check_mode, path)

    return maybeDeferred(listen)


def _check_mode(port: Any, path: str) -> Any:
    """
    Verify the socket file really is mode 0600; close it otherwise.
    """
    mode = stat.S_IMODE(os.lstat(path).st_mode)
    if mode != 0o600:
        port.stopListening()
        raise UnsafeControlPath(f"control socket {path}: mode {mode:o}, wanted 600")
    Logger().info("control socket on {path}", event="control.listen", path=path)
    return port


class ControlService(Service):
    """
    The control socket as a child service: listens when started, closes (the socket file and
    its lock file are removed by Twisted) when stopped.

    @ivar port: the listening port while running.
    """

    def __init__(self, reactor: Any, path: str, factory: ControlFactory) -> None:
        self.reactor = reactor
        self.path = path
        self.factory = factory
        self.port: Any = None

    def privilegedStartService(self) -> None:
        """
        Listen before C{twistd} drops privileges (C{--uid}), as the gateway's listeners do.
        """
        self.listen()
        super().privilegedStartService()

    def startService(self) -> None:
        """
        Listen (unless already done with privileges) and run.
        """
        self.listen()
        super().startService()

    def listen(self) -> None:
        """
        Open the control socket (once). A failure (unsafe path, socket in use) is raised at
        once, so the daemon's start fails with a message naming the path.

        @raise UnsafeControlPath: see L{check_control_path}.
        @raise netguard.ops.lock.InstanceConflict: a live process uses the path, or it is
            not a socket.
        @raise twisted.internet.error.CannotListenError: Twisted could not listen.
        """
        if self.port is not None:
            return
        failures: list[Failure] = []
        listen_control(self.reactor, self.path, self.factory).addCallbacks(
            self._listening, failures.append
        )
        if failures:
            failures[0].raiseException()

    def _listening(self, port: Any) -> None:
        self.port = port

    def stopService(self) -> Deferred[None] | None:
        """
        Stop listening; connections already open finish their command.
        """
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        return maybeDeferred(port.stopListening)

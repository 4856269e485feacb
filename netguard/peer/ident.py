# -*- test-case-name: tests.test_ident -*-
"""
An RFC 1413 ident client that survives any answer.

L{ident_query} asks the identd on a client's host who owns one TCP connection, reading one
reply line bounded in bytes and time; L{parse_ident_reply} is its strict, pure parser::

    peer, local = transport.getPeer(), transport.getHost()
    d = ident_query(reactor, peer.host, peer.port, local.port, local_host=local.host)

The answer is a claim the client may control completely: it is only ever recorded
(escaped), never used to grant anything. Bounds and log fields: C{docs/peer-checks.md}.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from netguard.log import escape

#: The well-known ident port.
IDENT_PORT = 113
#: Default bound on the whole query (connect, send, one reply line), in seconds.
DEFAULT_TIMEOUT = 10.0
#: Default bound on the reply line, terminator included, in bytes.
DEFAULT_MAX_REPLY = 1024
#: The longest user-id accepted (RFC 1413: a client must accept 512 octets; we accept no more).
MAX_USER_ID = 512
#: The longest token (operating system, charset, error type) accepted (RFC 1413).
MAX_TOKEN = 64
#: Error types defined by RFC 1413; others must start with C{X}.
STANDARD_ERRORS = frozenset({"INVALID-PORT", "NO-USER", "UNKNOWN-ERROR", "HIDDEN-USER"})

_EXCERPT = 80
_WS = rb"[ \t]*"
# Token characters: printable ASCII except ":" (RFC 1413); "," too, since it separates the
# operating system from the charset.
_TOKEN = rb"[!-+\--9;-~]{1,%d}" % MAX_TOKEN
_PORT_PAIR = re.compile(_WS + rb"([0-9]{1,5})" + _WS + rb"," + _WS + rb"([0-9]{1,5})" + _WS)
_KEYWORD = re.compile(_WS + rb"(USERID|ERROR)" + _WS)
_OPSYS = re.compile(
    _WS + rb"(" + _TOKEN + rb")" + _WS + rb"(?:," + _WS + rb"(" + _TOKEN + rb"))?" + _WS
)
_ERROR_TYPE = re.compile(_WS + rb"(" + _TOKEN + rb")" + _WS)

#: Charsets whose user-ids are decoded to text; any other is kept as octets (RFC 1413 note 6).
_CODECS = {
    "US-ASCII": "ascii",
    "ASCII": "ascii",
    "UTF-8": "utf-8",
    "ISO-8859-1": "latin-1",
    "ISO_8859-1": "latin-1",
    "LATIN1": "latin-1",
}


class IdentProtocolError(ValueError):
    """
    An ident reply that does not follow RFC 1413.

    @ivar problem: what is wrong, in a few words.
    @ivar excerpt: the start of the offending reply, escaped (safe to log).
    """

    def __init__(self, problem: str, line: bytes) -> None:
        """
        @param problem: what is wrong.
        @param line: the reply (only an escaped excerpt is kept).
        """
        self.problem = problem
        self.excerpt = escape(line, limit=_EXCERPT)
        super().__init__(f"{problem}: {self.excerpt}")


@attrs.frozen
class IdentReply:
    """
    A well-formed RFC 1413 reply. Every field is the remote host's untrusted claim.

    @ivar kind: C{"USERID"} or C{"ERROR"}.
    @ivar os: the operating system token of a USERID reply, else L{None}.
    @ivar charset: the charset token of a USERID reply, C{"US-ASCII"} when absent, else
        L{None}.
    @ivar user: the user-id decoded per C{charset}, or L{None} for an ERROR reply, an
        unknown charset, or octets that do not decode (then read C{user_octets}).
    @ivar user_octets: the user-id exactly as sent (1 to 512 octets, no NUL, CR or LF), or
        L{None} for an ERROR reply.
    @ivar error: the error type of an ERROR reply (C{"NO-USER"}, C{"HIDDEN-USER"}, ...), else
        L{None}.
    """

    kind: Literal["USERID", "ERROR"]
    os: str | None = None
    charset: str | None = None
    user: str | None = None
    user_octets: bytes | None = None
    error: str | None = None


#: The reason of an ident result when no query can name the connection (L{IdentResult}).
UNSUPPORTED_ADDRESS = "unsupported-address"


@attrs.frozen
class IdentResult:
    """
    The outcome of one ident query.

    @ivar ok: C{True} when a well-formed reply (USERID or ERROR) arrived.
    @ivar reply: the parsed reply, or L{None}.
    @ivar reason: C{"userid"} or C{"error"} (the reply's kind) when C{ok}; otherwise
        C{"timeout"}, C{"connect-failed"}, C{"closed"} (connection closed before any byte),
        C{"protocol-error: <problem>"} (including C{"protocol-error: reply too long"}), or
        L{UNSUPPORTED_ADDRESS} (no query can name the connection: a port 0 or an IPv4 peer
        of an IPv6 address of ours, as a PROXY header may give; nothing is sent).
    @ivar received: how many bytes were read from the ident server.
    """

    ok: bool
    reply: IdentReply | None
    reason: str
    received: int = 0


def _decode_user(octets: bytes, charset: str) -> str | None:
    codec = _CODECS.get(charset.upper())
    if codec is None:
        return None
    try:
        return octets.decode(codec)
    except UnicodeDecodeError:
        return None


def parse_ident_reply(line: bytes, server_port: int, client_port: int) -> IdentReply:
    """
    Parse one RFC 1413 reply line strictly.

    Accepted: C{<port-on-server> , <port-on-client> : USERID : <opsys>[,<charset>] :
    <user-id>} and C{<port-on-server> , <port-on-client> : ERROR : <error-type>}, with spaces
    and tabs allowed around tokens. The ports must be the ones asked about. The user-id is
    everything after the third colon (leading blanks skipped), 1 to 512 octets without NUL;
    the keywords are upper case; tokens are 1 to 64 printable characters; an error type is
    one of the four standard ones or starts with C{X}.

    @param line: the reply without its line terminator (a final CR is tolerated).
    @param server_port: the port on the ident server's host (the remote end of the
        connection asked about), i.e. the first number of the query.
    @param client_port: the port on the querying host (our end), the second number.
    @return: the reply.
    @raise IdentProtocolError: for anything else.
    """
    body = line[:-1] if line.endswith(b"\r") else line
    if b"\r" in body or b"\n" in body:
        raise IdentProtocolError("line break inside the reply", line)
    if b"\0" in body:
        raise IdentProtocolError("NUL byte in the reply", line)
    fields = body.split(b":", 3)
    if len(fields) < 3:
        raise IdentProtocolError("missing fields", line)
    ports = _PORT_PAIR.fullmatch(fields[0])
    if ports is None:
        raise IdentProtocolError("bad port pair", line)
    if (int(ports.group(1)), int(ports.group(2))) != (server_port, client_port):
        raise IdentProtocolError("reply is for other ports", line)
    keyword = _KEYWORD.fullmatch(fields[1])
    if keyword is None:
        raise IdentProtocolError("unknown reply type", line)
    if keyword.group(1) == b"ERROR":
        if len(fields) != 3:
            raise IdentProtocolError("extra field after the error type", line)
        error = _ERROR_TYPE.fullmatch(fields[2])
        if error is None:
            raise IdentProtocolError("bad error type", line)
        error_type = error.group(1).decode("ascii")
        if error_type not in STANDARD_ERRORS and not (
            error_type.startswith("X") and len(error_type) >= 2
        ):
            raise IdentProtocolError("unknown error type", line)
        return IdentReply(kind="ERROR", error=error_type)
    if len(fields) != 4:
        raise IdentProtocolError("missing user-id", line)
    opsys = _OPSYS.fullmatch(fields[2])
    if opsys is None:
        raise IdentProtocolError("bad operating system field", line)
    octets = fields[3].lstrip(b" \t")
    if not octets:
        raise IdentProtocolError("empty user-id", line)
    if len(octets) > MAX_USER_ID:
        raise IdentProtocolError("user-id longer than 512 octets", line)
    charset = (opsys.group(2) or b"US-ASCII").decode("ascii")
    return IdentReply(
        kind="USERID",
        os=opsys.group(1).decode("ascii"),
        charset=charset,
        user=_decode_user(octets, charset),
        user_octets=octets,
    )


def format_ident_query(server_port: int, client_port: int) -> bytes:
    """
    The query line for one connection.

    @param server_port: the port on the ident server's host (the client's end).
    @param client_port: the port on our host.
    @return: C{b"<server_port> , <client_port>\\r\\n"}.
    """
    return b"%d , %d\r\n" % (server_port, client_port)


class _IdentClientProtocol(Protocol):
    """
    Sends the query, keeps less than C{max_reply} bytes, and hands the first line (or the
    reason there is none) to its L{_IdentQuery}, which keeps only the first outcome.
    """

    def __init__(self, query: _IdentQuery) -> None:
        self._query = query
        self._buffer = b""
        self.received = 0

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(format_ident_query(self._query.server_port, self._query.client_port))
        self._query.connected(self)

    def dataReceived(self, data: bytes) -> None:
        if self._query.done:
            return
        self.received += len(data)
        end = data.find(b"\n")
        if end < 0:
            if len(self._buffer) + len(data) >= self._query.max_reply:
                self._query.problem("protocol-error: reply too long")
                return
            self._buffer += data
            return
        line = self._buffer + data[:end]
        self._buffer = b""
        if len(line) + 1 > self._query.max_reply:
            self._query.problem("protocol-error: reply too long")
            return
        self._query.line(line)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._buffer:
            self._query.problem("protocol-error: connection closed inside the reply line")
        else:
            self._query.problem("closed")


class _QueryFactory(Factory):
    """
    Connects the one protocol of a query, quietly: a factory per query must not log Twisted's
    "Starting factory" and "Stopping factory" lines (two per connecting client).
    """

    noisy = False

    def __init__(self, protocol: _IdentClientProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> _IdentClientProtocol:
        self._protocol.factory = self
        return self._protocol


class _IdentQuery:
    """
    One query: connection attempt, overall timer, exactly one result.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: Any,
        server_port: int,
        client_port: int,
        timeout: float,
        max_reply: int,
    ) -> None:
        self.server_port = server_port
        self.client_port = client_port
        self.max_reply = max_reply
        self.done = False
        self._protocol: _IdentClientProtocol | None = None
        self.result: Deferred[IdentResult] = Deferred(self._cancelled)
        self._timer = reactor.callLater(timeout, self.problem, "timeout")
        self._connecting: Deferred[Any] = endpoint.connect(
            _QueryFactory(_IdentClientProtocol(self))
        )
        self._connecting.addErrback(self._connect_failed)

    def connected(self, protocol: _IdentClientProtocol) -> None:
        self._protocol = protocol

    def _connect_failed(self, failure: Failure) -> None:
        if not self.done:
            self._finish(IdentResult(False, None, "connect-failed"))

    def _received(self) -> int:
        return self._protocol.received if self._protocol is not None else 0

    def line(self, line: bytes) -> None:
        try:
            reply = parse_ident_reply(line, self.server_port, self.client_port)
        except IdentProtocolError as e:
            self.problem(f"protocol-error: {e.problem}")
            return
        self._finish(IdentResult(True, reply, reply.kind.lower(), self._received()), polite=True)

    def problem(self, reason: str) -> None:
        self._finish(IdentResult(False, None, reason, self._received()))

    def _stop(self, polite: bool = False) -> None:
        self.done = True
        if self._timer.active():
            self._timer.cancel()
        transport: Any = self._protocol.transport if self._protocol is not None else None
        if transport is not None:
            if polite:
                transport.loseConnection()
            else:
                transport.abortConnection()
        elif not self._connecting.called:
            self._connecting.cancel()

    def _finish(self, result: IdentResult, polite: bool = False) -> None:
        if self.done:
            return
        self._stop(polite)
        self.result.callback(result)

    def _cancelled(self, _d: Deferred[IdentResult]) -> None:
        if not self.done:
            self._stop()


def _endpoint(
    reactor: Any, client_host: str, ident_port: int, local_host: str, timeout: float
) -> Any:
    peer = ipaddress.ip_address(client_host.split("%", 1)[0])
    local = ipaddress.ip_address(local_host.split("%", 1)[0])
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    if isinstance(local, ipaddress.IPv6Address) and local.ipv4_mapped is not None:
        local = local.ipv4_mapped
    if peer.version != local.version:
        raise ValueError("client_host and local_host are of different address families")
    if peer.version == 4:
        return TCP4ClientEndpoint(
            reactor, str(peer), ident_port, timeout=timeout, bindAddress=(str(local), 0)
        )
    return TCP6ClientEndpoint(
        reactor, client_host, ident_port, timeout=timeout, bindAddress=(local_host, 0)
    )


def ident_query(
    reactor: Any,
    client_host: str,
    server_port: int,
    client_port: int,
    *,
    local_host: str,
    ident_port: int = IDENT_PORT,
    timeout: float = DEFAULT_TIMEOUT,
    max_reply: int = DEFAULT_MAX_REPLY,
) -> Deferred[IdentResult]:
    """
    Ask the identd on C{client_host} who owns the TCP connection between C{client_host}'s
    port C{server_port} and our port C{client_port}.

    The query connects from C{local_host} (our address of that connection, so the identd can
    match it) to C{client_host:ident_port}, sends C{"<server_port> , <client_port>\\r\\n"},
    and reads one line of at most C{max_reply} bytes, terminator included: an endless or
    over-long reply is cut off at that bound (result C{"protocol-error: reply too long"}), and
    the connection is aborted. Everything ends within C{timeout} seconds (result
    C{"timeout"}). The reply is parsed by L{parse_ident_reply}.

    In RFC 1413's words the remote host is the ident I{server}: C{server_port} is the remote
    peer's port of the connection asked about, C{client_port} our own (listening) port.

    @param reactor: an L{IReactorTCP} and L{IReactorTime} provider.
    @param client_host: the remote peer's IP address.
    @param server_port: the remote peer's port of the connection asked about (1-65535).
    @param client_port: our port of that connection (1-65535).
    @param local_host: our IP address of that connection; the query is sent from it.
    @param ident_port: the identd's port (113; tests point it elsewhere).
    @param timeout: the bound on the whole query, in seconds (> 0).
    @param max_reply: the bound on the reply line, in bytes (>= 2).
    @return: a L{Deferred} firing with an L{IdentResult}; it never fails (cancelling it
        aborts the connection and errbacks it with L{twisted.internet.defer.CancelledError}).
    @raise ValueError: if a port, the timeout or the bound is out of range, or the addresses
        are not IP addresses of the same family.
    """
    for port in (server_port, client_port, ident_port):
        if not 1 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
    if not timeout > 0:
        raise ValueError("timeout must be positive")
    if max_reply < 2:
        raise ValueError("max_reply must be at least 2")
    endpoint = _endpoint(reactor, client_host, ident_port, local_host, timeout)
    return _IdentQuery(reactor, endpoint, server_port, client_port, timeout, max_reply).result


__all__ = [
    "UNSUPPORTED_ADDRESS",
    "IdentProtocolError",
    "IdentReply",
    "IdentResult",
    "format_ident_query",
    "ident_query",
    "parse_ident_reply",
]

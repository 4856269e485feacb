# -*- test-case-name: tests.test_shared_resp -*-
"""
A minimal RESP2 client protocol for the few Redis commands the shared state needs: commands
answered in order, or, on a subscriber connection, pushed messages. Replies are bounded in
size and depth, so a broken or hostile server costs at most L{MAX_REPLY_BYTES} of memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Final, Union

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

#: The longest status, error or integer line accepted (without its CRLF).
MAX_LINE: Final = 512
#: The largest bulk string accepted.
MAX_BULK: Final = 64 * 1024
#: The most elements of one array.
MAX_ARRAY: Final = 4096
#: Arrays nest at most this deep (a SCAN reply is an array holding an array).
MAX_DEPTH: Final = 2
#: The most bytes buffered for one unfinished reply.
MAX_REPLY_BYTES: Final = 256 * 1024
#: What each element an unfinished reply keeps is charged against L{MAX_REPLY_BYTES} on top
#: of its bytes: about what the smallest element costs as a Python object.
ELEMENT_CHARGE: Final = 128
#: The most commands waiting for their replies on one connection.
MAX_PENDING: Final = 1024

Reply = Union[bytes, int, None, "RedisError", list["Reply"]]


class RedisError(Exception):
    """
    An error reply (C{-ERR ...}); the message is the server's text, decoded leniently.
    """


class ProtocolError(Exception):
    """
    The server broke RESP or one of the bounds; the connection is closed.
    """


class Incomplete(Exception):
    """
    Not a whole reply yet.

    @ivar need: how long the buffer must be before parsing can get further (a bulk
        string's end; for a line, one byte more than now).
    """

    def __init__(self, need: int) -> None:
        super().__init__(need)
        self.need = need


def encode_command(*args: bytes | str | int) -> bytes:
    """
    A command as a RESP array of bulk strings.
    """
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, str):
            data = arg.encode("utf-8")
        else:
            data = bytes(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _line(buffer: bytes, start: int) -> tuple[bytes, int]:
    end = buffer.find(b"\r\n", start, start + MAX_LINE + 3)
    if end < 0:
        if len(buffer) - start > MAX_LINE + 2:
            raise ProtocolError("line too long")
        raise Incomplete(len(buffer) + 1)
    return buffer[start + 1 : end], end + 2


def _integer(text: bytes) -> int:
    digits = text[1:] if text.startswith(b"-") else text
    if len(text) > 20 or not digits.isdigit():
        raise ProtocolError("not an integer")
    return int(text)


class _ArrayHeader:
    """
    The first line of an array of C{count} elements (L{_element}).
    """

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


def _element(buffer: bytes, start: int) -> tuple[Reply | _ArrayHeader, int]:
    """
    One element at C{start}: a whole status, error, integer or bulk string, or the header of
    an array (its elements follow).

    @return: the element and the offset after it.
    @raise Incomplete: the buffer ends inside the element.
    @raise ProtocolError: the bytes are not RESP2 within the bounds.
    """
    if start >= len(buffer):
        raise Incomplete(start + 1)
    kind = buffer[start : start + 1]
    text, after = _line(buffer, start)
    if kind == b"+":
        return text, after
    if kind == b"-":
        return RedisError(text.decode("utf-8", "replace")), after
    if kind == b":":
        return _integer(text), after
    if kind == b"$":
        size = _integer(text)
        if size == -1:
            return None, after
        if not 0 <= size <= MAX_BULK:
            raise ProtocolError("bulk string out of bounds")
        if len(buffer) < after + size + 2:
            raise Incomplete(after + size + 2)
        if buffer[after + size : after + size + 2] != b"\r\n":
            raise ProtocolError("bulk string not terminated")
        return buffer[after : after + size], after + size + 2
    if kind == b"*":
        count = _integer(text)
        if count == -1:
            return None, after
        if not 0 <= count <= MAX_ARRAY:
            raise ProtocolError("array out of bounds")
        return _ArrayHeader(count), after
    raise ProtocolError("unknown reply type")


def parse_reply(buffer: bytes, start: int = 0, depth: int = 0) -> tuple[Reply, int]:
    """
    Parse one reply at C{start}.

    @return: the reply and the offset after it.
    @raise Incomplete: the buffer ends inside the reply.
    @raise ProtocolError: the bytes are not RESP2 within the bounds.
    """
    element, after = _element(buffer, start)
    if not isinstance(element, _ArrayHeader):
        return element, after
    if element.count and depth >= MAX_DEPTH:
        raise ProtocolError("array out of bounds")
    items: list[Reply] = []
    for _ in range(element.count):
        item, after = parse_reply(buffer, after, depth + 1)
        items.append(item)
    return items, after


class ReplyReader:
    """
    Replies from a stream of bytes, element by element: each element is parsed once, when
    it is whole, and an unfinished array keeps the elements it has; bytes arriving inside a
    long bulk string are only collected (in one growing buffer) until the string can be
    whole. So however the bytes are cut, parsing a reply costs time in proportion to its
    size. What an unfinished reply holds is bounded by L{MAX_REPLY_BYTES}, counting each
    element it keeps as its bytes plus L{ELEMENT_CHARGE} (the Python object an element
    becomes outweighs a short element's bytes).
    """

    __slots__ = ("_tail", "_need", "_held", "_open")

    def __init__(self) -> None:
        #: Bytes not yet parsed: at most one element's.
        self._tail = bytearray()
        self._need = 0
        #: What the unfinished reply's parsed elements are charged (L{ELEMENT_CHARGE}).
        self._held = 0
        #: The unfinished arrays, outermost first: elements still to come, elements so far.
        self._open: list[tuple[int, list[Reply]]] = []

    def feed(self, data: bytes) -> Iterator[Reply]:
        """
        Take C{data}; yield the replies it completes, in order, each as soon as it is
        parsed (a bad reply after good ones raises after they were taken). Nothing is
        taken until the result is iterated.

        @raise ProtocolError: the bytes are not RESP2 within the bounds (the reader is then
            unusable).
        """
        self._tail += data
        if len(self._tail) < self._need:
            self._check_held()
            return
        buffer = bytes(self._tail)
        start = 0
        try:
            while start < len(buffer):
                element, end = _element(buffer, start)
                if self._open or isinstance(element, _ArrayHeader):
                    self._held += end - start + ELEMENT_CHARGE
                start = end
                reply = self._complete(element)
                if reply is not _UNFINISHED:
                    yield reply  # type: ignore[misc]
        except Incomplete as incomplete:
            self._need = incomplete.need - start
        else:
            self._need = 0
        self._tail = bytearray(buffer[start:])
        self._check_held()

    def _check_held(self) -> None:
        if self._held + len(self._tail) > MAX_REPLY_BYTES:
            raise ProtocolError("reply too large")

    def _complete(self, element: Reply | _ArrayHeader) -> Reply | object:
        """
        Add C{element} to the unfinished arrays; return the reply it completes, or
        L{_UNFINISHED}.
        """
        value: Reply
        if isinstance(element, _ArrayHeader):
            if element.count == 0:
                value = []
            elif len(self._open) >= MAX_DEPTH:
                raise ProtocolError("array out of bounds")
            else:
                self._open.append((element.count, []))
                return _UNFINISHED
        else:
            value = element
        while self._open:
            left, items = self._open[-1]
            items.append(value)
            if left > 1:
                self._open[-1] = (left - 1, items)
                return _UNFINISHED
            self._open.pop()
            value = items
        self._held = 0
        return value


#: Returned by L{ReplyReader._complete} while the reply goes on.
_UNFINISHED = object()


class RespProtocol(Protocol):
    """
    One connection to Redis. L{command} sends a command and gives a L{Deferred} of its reply
    (an error reply fails it with L{RedisError}); on a subscriber connection (L{on_push}
    set) every reply goes to L{on_push} instead.

    @ivar on_push: for a subscriber connection: called with each pushed reply.
    @ivar on_lost: called once when the connection is lost.
    """

    log = Logger()

    def __init__(self) -> None:
        self._reader = ReplyReader()
        self._pending: deque[Deferred[Reply]] = deque()
        self.on_push: Callable[[Reply], object] | None = None
        self.on_lost: Callable[[], object] | None = None
        self.lost = False

    @property
    def pending(self) -> int:
        """
        Commands sent and not yet answered.
        """
        return len(self._pending)

    def command(self, *args: bytes | str | int) -> Deferred[Reply]:
        """
        Send one command.

        @return: a L{Deferred} of the reply; it fails with L{ProtocolError} at once when
            L{MAX_PENDING} commands already wait, or the connection is gone.
        """
        if self.lost or len(self._pending) >= MAX_PENDING:
            return fail(ProtocolError("connection lost" if self.lost else "too many pending"))
        waiting: Deferred[Reply] = Deferred()
        if self.on_push is None:
            self._pending.append(waiting)
        else:
            waiting.callback(None)  # a subscriber's replies are pushed
        transport: Any = self.transport
        transport.write(encode_command(*args))
        return waiting

    def dataReceived(self, data: bytes) -> None:
        if self.lost:
            return
        try:
            for reply in self._reader.feed(data):
                self._deliver(reply)
                if self.lost:
                    return
        except ProtocolError as error:
            self._broken(str(error))

    def _deliver(self, reply: Reply) -> None:
        if self.on_push is not None:
            self.on_push(reply)
            return
        if not self._pending:
            raise ProtocolError("a reply nobody asked for")
        waiting = self._pending.popleft()
        if waiting.called:
            return  # cancelled by its caller
        if isinstance(reply, RedisError):
            waiting.errback(reply)
        else:
            waiting.callback(reply)

    def _broken(self, reason: str) -> None:
        self.log.debug("redis protocol error: {reason}", reason=reason)
        self._reader = ReplyReader()
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]
        self._fail_all(ProtocolError(reason))

    def _fail_all(self, error: Exception) -> None:
        pending, self._pending = self._pending, deque()
        for waiting in pending:
            waiting.errback(Failure(error))

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.lost:
            return
        self.lost = True
        self._fail_all(ProtocolError("connection lost"))
        if self.on_lost is not None:
            self.on_lost()

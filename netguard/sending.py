# -*- test-case-name: tests.test_sending -*-
"""
Writing to Twisted's plain socket transports at once: a write that finds nothing waiting in
the transport's buffer is sent there and then, instead of waiting for a writable event (two
changes of the reactor's registration, one dispatch and the C{send}). The relays and the
line protocols use it for request/response traffic, a multiplexed session for its frames
(a reactor turn's small ones together, a bulk one alone); what it saves:
C{docs/multiplexing.md} sections 8.4 and 8.6.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport


def plain_socket(transport: object) -> bool:
    """
    Whether C{transport} is Twisted's own transport of a plain TCP or unix socket (not TLS,
    not a wrapper around one) that is still open for writing (not closing, aborted or gone).
    """
    return (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and not ISSLTransport.providedBy(transport)
        and getattr(transport, "socket", None) is not None
        and not transport.disconnecting
        and not transport.disconnected
        and not getattr(transport, "_aborting", False)
    )


def has_user_data(transport: Any) -> bool:
    """
    Whether Twisted's own write buffer of the plain-socket C{transport} holds bytes.
    """
    return bool(transport._tempDataLen or len(transport.dataBuffer) > transport.offset)


def write_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} to the plain-socket C{transport} (L{plain_socket}) as its C{write} would,
    but send at once what the kernel takes when nothing waits in Twisted's buffer: a relayed
    request then costs one C{send} instead of a writable event, the C{send} and two changes
    of the reactor's registration. What the kernel does not take (or any error, which the
    transport's own next write reports) goes to Twisted's buffer, behind nothing, so the
    order of the bytes and the transport's backpressure are Twisted's own.

    Everything else is the transport's own C{write}, as if this did not exist: a connection
    that is gone, closing, half-closed or aborted (Twisted's C{abortConnection} keeps
    C{connected} set until the loss is reported and writes nothing more), one that has
    started TLS since (C{startTLS} turns the same transport into a TLS one), descriptors
    queued to go with the next bytes of a unix socket, and anything but C{bytes} (which
    C{write} refuses).
    """
    if type(data) is bytes and _open_and_idle(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


#: The most chunks L{write_sequence_now} sends at once (a few large frames); more go through
#: the transport's buffer, as do small writes.
MAX_CHUNKS_AT_ONCE = 64


def write_sequence_now(transport: Any, chunks: list[bytes]) -> None:
    """
    Write C{chunks} in order as C{transport.writeSequence} would; to a plain socket
    (L{plain_socket}) with nothing waiting, send them at once with one C{sendmsg}, without
    first copying them into one buffer as Twisted's C{doWrite} does. For large writes (a
    multiplexed session's data frames: a header and a payload of up to 64 KiB each), where
    that copy is the cost; small ones are better left to Twisted's buffer, which joins every
    write of one reactor turn into one C{send}. The rest, and every case L{write_now} leaves
    to the transport, is the transport's own C{writeSequence}.
    """
    if (
        len(chunks) <= MAX_CHUNKS_AT_ONCE
        and plain_socket(transport)
        and _open_and_idle(transport)
        and all(type(chunk) is bytes for chunk in chunks)
    ):
        try:
            sent = transport.socket.sendmsg(chunks)
        except OSError:
            sent = 0
        first = 0
        while first < len(chunks) and sent >= len(chunks[first]):
            sent -= len(chunks[first])
            first += 1
        if first == len(chunks):
            return
        chunks = [chunks[first][sent:], *chunks[first + 1 :]] if sent else chunks[first:]
    transport.writeSequence(chunks)


def _open_and_idle(transport: Any) -> bool:
    """
    Whether bytes may go straight to the plain-socket C{transport}'s socket now: connected,
    not closing, half-closed, aborted or turned TLS, with no descriptors and no bytes
    waiting in Twisted's buffer (see L{write_now}).
    """
    return bool(
        transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
        and not getattr(transport, "_aborting", False)
        and not transport.TLS
        and not getattr(transport, "_sendmsgQueue", None)
        and not has_user_data(transport)
    )

# -*- test-case-name: tests.test_mux_endpoint -*-
"""
The client side of one multiplexed stream's opening: send C{OPEN <service>}, read the
gateway's answer (at most L{MAX_ANSWER} bytes), then hand the stream to the application's
protocol or fail the connect. docs/protocol.md section 5.1 is the exchange.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import NoProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from netguard.client.protocol import NGPError, NGPProtocolError
from netguard.log import escape
from netguard.mux.stream import MuxStream

#: The longest answer line to a stream's C{OPEN} we read (the gateway's C{MAXLINE} bound
#: of 1024 bytes, plus CRLF); longer is a protocol error and the stream is reset.
MAX_ANSWER = 1026


@implementer(IHalfCloseableProtocol)
class StreamOpener:
    """
    A stream's protocol until the gateway answers its C{OPEN} line: on C{OK OPEN} it
    connects the application's protocol to the stream (bytes behind the answer are the
    application's), on C{ERR} it fails the connect with L{NGPError} and closes the stream;
    afterwards it forwards to the application.
    """

    __slots__ = ("service", "factory", "result", "on_gone", "transport", "app", "_answer")

    def __init__(
        self,
        service: str,
        factory: Factory,
        result: Deferred[Any],
        on_gone: Callable[[], None],
    ) -> None:
        self.service = service
        self.factory: Factory | None = factory
        self.result = result
        self.on_gone = on_gone
        self.transport: MuxStream | None = None
        self.app: Any = None
        self._answer: bytearray | None = bytearray()

    def makeConnection(self, transport: MuxStream) -> None:
        self.transport = transport
        transport.write(b"OPEN " + self.service.encode("ascii") + b"\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self.app is not None:
            self.app.dataReceived(data)
            return
        if self.result.called or self._answer is None:
            return
        self._answer += data
        end = self._answer.find(b"\n")
        if end < 0:
            if len(self._answer) > MAX_ANSWER:
                self._refused(
                    NGPProtocolError(
                        f"answer to OPEN longer than {MAX_ANSWER} bytes", "line-too-long"
                    ),
                    reset=True,
                )
            return
        line = bytes(self._answer[:end]).rstrip(b"\r")
        rest = bytes(self._answer[end + 1 :])
        self._answer = bytearray()
        if line == b"OK OPEN " + self.service.encode("ascii"):
            self._opened(rest)
        elif line.startswith(b"ERR "):
            code, _, text = line[4:].partition(b" ")
            self._refused(NGPError(escape(code), escape(text)), reset=False)
        else:
            self._refused(
                NGPProtocolError(
                    f"unexpected reply {escape(line, 200)} to OPEN {escape(self.service)}"
                ),
                reset=True,
            )

    def _opened(self, rest: bytes) -> None:
        assert self.transport is not None and self.factory is not None
        app = self.factory.buildProtocol(self.transport.getPeer())
        if app is None:
            self._refused(NoProtocol(), reset=False)
            return
        self.app = app
        # What only the opening needed is not kept for the stream's life.
        self.factory = self._answer = None
        app.makeConnection(self.transport)  # type: ignore[arg-type]
        self.result.callback(app)
        if rest:
            app.dataReceived(rest)

    def _refused(self, error: Exception, *, reset: bool) -> None:
        assert self.transport is not None
        if not self.result.called:
            self.result.errback(error)
        if reset:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        if self.app is None:
            self._refused(
                NGPProtocolError(f"stream closed before OPEN {self.service} was answered"),
                reset=False,
            )
        elif IHalfCloseableProtocol.providedBy(self.app):
            self.app.readConnectionLost()
        elif self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        if self.app is not None and IHalfCloseableProtocol.providedBy(self.app):
            self.app.writeConnectionLost()

    def connectionLost(self, reason: Failure) -> None:
        if self.app is not None:
            self.app.connectionLost(reason)
        elif not self.result.called:
            self.result.errback(
                NGPProtocolError(
                    f"stream ended before OPEN {escape(self.service)} was answered: "
                    f"{escape(reason.getErrorMessage(), 200)}",
                    "closed",
                )
            )
        self.on_gone()

    def cancel(self) -> None:
        """
        The caller cancelled the connect: reset the stream.
        """
        if self.transport is not None and self.app is None:
            self.transport.abortConnection()

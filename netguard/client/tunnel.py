# -*- test-case-name: tests.integration.test_tunnel_real -*-
"""
C{netguard tunnel}: a local listener whose every connection is carried through a netguard
gateway to one service, so unmodified programs (C{redis-cli}, C{psql}) reach it.

    netguard tunnel --gateway tcp:host=gw.example:port=7700 --service redis \\
        --listen unix:/tmp/redis.sock:mode=600 --user alice --password-file ~/.ng-pass

Each local connection is paused until the gateway has authenticated us and opened the
service, then relayed by L{netguard.relay.Splice} (backpressure both ways, half-close, idle
and stalled-reader bounds). If the gateway refuses, the local connection is closed and the
refusal is logged. The password is read once at start (a 0600 file or the terminal) and kept
in memory only.
"""

from __future__ import annotations

import math
import random as _random
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netguard.client.endpoint import NGPClientEndpoint
from netguard.client.mux_endpoint import MuxClientEndpoint
from netguard.client.protocol import NGPError
from netguard.log import escape
from netguard.relay import A, B, Splice
from netguard.shared_keys import share_transport_keys

#: BUSY reasons that mean "not now" for this client host rather than "never": the gateway's
#: rate or caps for one source, its pools, random early drop or overload (protocol.md lists
#: every reason). A local program that opens a pool of connections at once (redis-benchmark,
#: a connection pool) would otherwise see some of them reset. Refusals about the client
#: itself (penalised, denied, not-allowed) are not retried.
RETRY_REASONS = frozenset(
    {
        "rate",
        "per-source-cap",
        "random-early-drop",
        "unauth-cap",
        "relay-cap",
        "global-cap",
        "overload-lag",
        "overload-load",
        "overload-memory",
    }
)
#: The pauses before each retry, in seconds (each scaled by a random factor from 0.5 to 1.5
#: so many waiting connections do not come back at once): about 4 s in all, then the local
#: connection is closed.
RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0)

#: The longest idle or write timeout of a tunnelled connection, in seconds (a week, as
#: for a service's C{idle_timeout}).
MAX_TIMEOUT = 604800.0

#: The relay's sides as the operator knows them: a is the local program, b the gateway.
_SIDES = {
    "a": "local",
    "b": "gateway",
    "stalled-a": "stalled-local",
    "stalled-b": "stalled-gateway",
}


@implementer(IHalfCloseableProtocol)
class _RemoteSide(Protocol):
    """
    The application protocol on the gateway connection (raw bytes of the service).
    """

    transport: Any

    def __init__(self, local: TunnelConnection):
        # Every name an instance takes, from the start: CPython's shared instance keys
        # (netguard.shared_keys) then hold them, and an idle stream no dict of its own.
        self.connected = 0
        self.transport = None
        self.local = local

    def dataReceived(self, data: bytes) -> None:
        if self.local.splice is not None:
            self.local.splice.data_from(B, data)

    def readConnectionLost(self) -> None:
        if self.local.splice is not None:
            self.local.splice.eof_from(B)

    def writeConnectionLost(self) -> None:
        """Our half-close reached the gateway."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.local.splice is not None:
            self.local.splice.lost(B)


@implementer(IHalfCloseableProtocol)
class TunnelConnection(Protocol):
    """
    One local connection, carried through the gateway.
    """

    log = Logger()
    transport: Any

    def __init__(self, tunnel: TunnelFactory):
        self.connected = 0
        self.transport = None
        self.factory = tunnel
        self.tunnel = tunnel
        self.splice: Splice | None = None
        self._pending: list[bytes] = []
        self._eof = False
        self._gone = False
        self._connecting: Any = None
        self._retries = 0

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        self._connect()

    def _connect(self) -> None:
        remote = _RemoteSide(self)
        self._connecting = self.tunnel.endpoint.connect(Factory.forProtocol(lambda: remote))
        self._connecting.addCallbacks(self._opened, self._failed)

    def dataReceived(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.data_from(A, data)
        else:
            self._pending.append(data)
            self.transport.pauseProducing()

    def readConnectionLost(self) -> None:
        if self.splice is not None:
            self.splice.eof_from(A)
        else:
            self._eof = True

    def writeConnectionLost(self) -> None:
        """Our half-close reached the local program."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._gone = True
        if self.splice is not None:
            self.splice.lost(A)
        else:
            self.tunnel.connections.discard(self)
            if self._connecting is not None:
                self._connecting.cancel()

    def _opened(self, remote: _RemoteSide) -> None:
        self._connecting = None
        if self._gone:
            remote.transport.loseConnection()
            return
        self.splice = Splice(
            self.transport,
            remote.transport,
            clock=self.tunnel.reactor,
            idle_timeout=self.tunnel.idle_timeout,
            write_timeout=self.tunnel.write_timeout,
        )
        self.splice.start()
        self.splice.done.addCallback(self._finished)
        pending, self._pending = self._pending, []
        for chunk in pending:
            self.splice.data_from(A, chunk)
        if self._eof:
            self.splice.eof_from(A)
        else:
            self.transport.resumeProducing()

    def _failed(self, failure: Failure) -> None:
        self._connecting = None
        error = failure.value
        if (
            not self._gone
            and isinstance(error, NGPError)
            and error.code == "BUSY"
            and error.text.split(" ", 1)[0] in RETRY_REASONS
            and self._retries < len(RETRY_DELAYS)
        ):
            delay = RETRY_DELAYS[self._retries] * (0.5 + self.tunnel.random())
            self._retries += 1
            self.log.info(
                "gateway busy for {service} ({reason}); retry {attempt} in {delay:.2f}s",
                event="tunnel.retry",
                service=escape(self.tunnel.endpoint.service),
                reason=escape(error.text),
                attempt=self._retries,
                delay=delay,
            )
            self._connecting = self.tunnel.reactor.callLater(delay, self._connect)
            return
        self.tunnel.connections.discard(self)
        if not self._gone:
            self.log.warn(
                "tunnel to {service} failed: {reason}",
                event="tunnel.failed",
                service=escape(self.tunnel.endpoint.service),
                reason=escape(str(failure.value), limit=300),
            )
            self.transport.loseConnection()

    def _finished(self, result: Any) -> None:
        self.tunnel.connections.discard(self)
        self.log.info(
            "tunnel connection closed: up={up} down={down} ended_by={ended}",
            event="tunnel.close",
            up=result.bytes_a_to_b,
            down=result.bytes_b_to_a,
            ended=_SIDES.get(result.ended_by, result.ended_by),
        )


class TunnelFactory(Factory):
    """
    Builds a L{TunnelConnection} for each local connection.

    @ivar connections: the live local connections.
    """

    noisy = False

    def __init__(
        self,
        reactor: Any,
        endpoint: NGPClientEndpoint | MuxClientEndpoint,
        idle_timeout: float = 3600.0,
        write_timeout: float = 30.0,
        random: Any = _random.random,
    ):
        """
        @param idle_timeout: seconds a tunnelled connection may stay silent both ways.
        @param write_timeout: seconds a side may leave relayed bytes unread.
        @raise ValueError: for a timeout that is not a finite number of seconds from 1 to
            L{MAX_TIMEOUT}.
        """
        for name, value in (("idle_timeout", idle_timeout), ("write_timeout", write_timeout)):
            if not (math.isfinite(value) and 1 <= value <= MAX_TIMEOUT):
                raise ValueError(
                    f"{name} must be a number of seconds from 1 to {MAX_TIMEOUT:g}, not {value!r}"
                )
        self.reactor = reactor
        self.random = random
        self.endpoint = endpoint
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.connections: set[TunnelConnection] = set()
        share_transport_keys()

    def buildProtocol(self, addr: Any) -> TunnelConnection:
        connection = TunnelConnection(self)
        connection.factory = self
        self.connections.add(connection)
        return connection

# -*- test-case-name: tests.test_workers,tests.integration.test_workers_real -*-
"""
Listening sockets shared by the workers: the supervisor opens each configured listener
with Twisted's own endpoint parser (interface, backlog, unix mode and lock file applied as
usual) but never accepts on it (L{open_shared}); each worker adopts an inherited copy
(L{InheritedEndpoint}) and wraps it as the single-process gateway would (C{haproxy:},
TLS). One socket, one accept queue: no other process can join the port, as it could with
C{SO_REUSEPORT}.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import attrs
from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from zope.interface import implementer

from netguard.endpoints import with_default_backlog
from netguard.proxy_header import ProxyHeaderEndpoint, Senders
from netguard.proxy_listener import split_proxy_listener

#: The prefix of a listener whose connections begin with a PROXY header; the worker reads
#: the header, the supervisor listens on what follows.
PROXY_PREFIX = "haproxy:"


class SharedListenFailed(Exception):
    """
    A listener could not be opened for the workers; the message names it.
    """


class _NeverAccepts(Factory):
    """
    The supervisor's factory for a shared socket it never reads from.
    """

    def buildProtocol(self, addr: Any) -> None:
        return None


@attrs.define
class SharedListener:
    """
    One listening socket the supervisor holds for its workers.

    @ivar description: the listener as configured (C{tls+<endpoint>} for a TLS one).
    @ivar kind: C{"listen"} (C{listen}) or C{"tls"} (C{[[tls_listen]]}).
    @ivar position: its index in C{listen} or C{tls_listen}.
    @ivar port: the Twisted listening port, not reading.
    """

    description: str
    kind: str
    position: int
    port: Any

    @property
    def fd(self) -> int:
        """
        The socket's descriptor in the supervisor.
        """
        return int(self.port.fileno())

    @property
    def family(self) -> int:
        """
        The socket's address family.
        """
        return int(self.port.socket.family)

    def close(self) -> Any:
        """
        Close the supervisor's copy (the unix socket file is removed); the socket closes
        once the last worker has closed its copy too.
        """
        return self.port.stopListening()


def plain_description(description: str) -> str:
    """
    The endpoint string the supervisor listens on: without the C{haproxy:} wrapper and its
    C{proxy_from=}, with the default backlog.
    """
    full = with_default_backlog(description)
    if full.startswith(PROXY_PREFIX):
        return split_proxy_listener(full).inner
    return full


def wrapped_endpoint(reactor: Any, description: str, inherited: Any) -> Any:
    """
    The worker's plain endpoint for a configured listener over its inherited socket:
    behind a L{ProxyHeaderEndpoint} with the listener's C{proxy_from=} senders for a
    C{haproxy:} listener, as the single-process gateway builds it. A TLS listener's TLS
    goes over this endpoint, so the PROXY header is read before the handshake.
    """
    full = with_default_backlog(description)
    if full.startswith(PROXY_PREFIX):
        proxy = split_proxy_listener(full)
        return ProxyHeaderEndpoint(inherited, reactor, Senders(proxy.networks()))
    return inherited


def open_shared(
    reactor: Any, description: str, plain: str, kind: str, position: int
) -> SharedListener:
    """
    Listen on C{plain} without accepting.

    @param description: the listener as configured, for messages.
    @param plain: the server endpoint string to listen on (L{plain_description}).
    @raise SharedListenFailed: naming the listener when it cannot open.
    """
    try:
        endpoint = serverFromString(reactor, plain)
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise SharedListenFailed(
            f"cannot use listener {description}: {type(error).__name__}: {error}"
        ) from None
    ports: list[Any] = []
    failures: list[Any] = []
    endpoint.listen(_NeverAccepts()).addCallbacks(ports.append, failures.append)
    if failures or not ports:
        why = failures[0].value if failures else "no port"
        raise SharedListenFailed(f"cannot listen on {description}: {why}")
    port = ports[0]
    port.stopReading()  # the workers accept; the supervisor only holds the socket
    return SharedListener(description, kind, position, port)


#: How many connections a worker accepts each time the shared socket is readable. Twisted's
#: ports take up to 100 at once (more under load), so one worker would take a whole burst
#: while the others were still waking up; taking one at a time lets every woken worker take
#: its turn, so a burst is spread and each worker's share of a limit applies to its part of
#: the burst (measured: bench/workers.py, docs/performance.md "Workers").
ACCEPT_BATCH: int | None = 1


class _TakesTurns:
    """
    Mixin for a port on a shared socket: accept L{ACCEPT_BATCH} connections per readiness
    (Twisted's adaptive batch when it is L{None}).
    """

    numberAccepts: int

    def doRead(self) -> Any:
        if ACCEPT_BATCH is not None:
            self.numberAccepts = ACCEPT_BATCH
        return super().doRead()  # type: ignore[misc]


class SharedTCPPort(_TakesTurns, tcp.Port):
    """
    A TCP listening socket adopted from the supervisor, accepting in turns with the other
    workers (L{ACCEPT_BATCH}). Like Twisted's adopted ports, it never shuts the shared
    socket down when it stops.
    """


class SharedUnixPort(_TakesTurns, unix.Port):
    """
    A unix listening socket adopted from the supervisor: unlike Twisted's adopted
    C{unix.Port}, it never changes the socket file's mode (the supervisor set it, 0600 by
    default) and never removes the file when it stops (the other workers still use it); it
    accepts in turns with the other workers (L{ACCEPT_BATCH}).
    """

    def startListening(self) -> None:
        tcp._reservedFD.reserve()  # type: ignore[attr-defined]
        factory: Any = self.factory
        factory.doStart()
        skt = self._preexistingSocket
        assert skt is not None, "adopt with _fromListeningDescriptor"
        self._preexistingSocket = None
        self._shouldShutdown = False
        self.connected = True
        self.socket = skt
        self.fileno = skt.fileno  # type: ignore[method-assign]
        self.numberAccepts = 100
        self.startReading()

    def connectionLost(self, reason: Any) -> None:
        tcp.Port.connectionLost(self, reason)


@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """
    A server endpoint over a listening socket inherited as descriptor C{fd}: C{listen}
    adopts it (once) and closes the inherited descriptor (the port holds its own copy).
    """

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family

    def listen(self, factory: Any) -> Deferred[Any]:
        try:
            if self.family == socket.AF_UNIX:
                port: Any = SharedUnixPort._fromListeningDescriptor(self.reactor, self.fd, factory)
                port.startListening()
            else:
                port = SharedTCPPort._fromListeningDescriptor(
                    self.reactor, self.fd, self.family, factory
                )
                port.startListening()
        except Exception as error:  # noqa: BLE001 - a listen failure is a failed Deferred
            return fail(error)
        finally:
            try:
                os.close(self.fd)
            except OSError:
                pass
        return succeed(port)

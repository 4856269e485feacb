# -*- test-case-name: tests.test_backends -*-
"""
Backends: what a service's bytes are relayed to once a client has opened it.

A backend leg is opened for one session by L{open_backend} and talks to the session through
the small L{BackendSink} contract, so this module knows nothing of the gateway. The built-in
C{builtin:echo} backend sends every byte straight back; it exists so an operator can check a
set-up end to end without any other server.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed

ECHO = "builtin:echo"


class BackendSink(Protocol):
    """
    What a backend leg calls on its session.
    """

    def backend_data(self, data: bytes) -> None:
        """Bytes from the backend, for the client."""

    def backend_closed(self, reason: str) -> None:
        """The backend side ended; C{reason} is for the operator's log."""


class BackendLeg(Protocol):
    """
    What a session calls on its backend leg.
    """

    def attach(self, client_transport: Any) -> None:
        """
        The session starts relaying: wire backpressure between C{client_transport} and the
        backend, so neither side's write queue grows without bound.
        """

    def write(self, data: bytes) -> None:
        """Bytes from the client, for the backend."""

    def close(self) -> None:
        """The client side is gone: end the backend side."""


class UnsupportedBackend(Exception):
    """
    The service names a backend this build cannot open.
    """


class EchoLeg:
    """
    The built-in echo backend: every byte written comes straight back.
    """

    def __init__(self, sink: BackendSink):
        self._sink: BackendSink | None = sink

    def attach(self, client_transport: Any) -> None:
        # What we write is what we read: while the client does not read, stop reading it.
        client_transport.registerProducer(client_transport, True)

    def write(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.backend_data(data)

    def close(self) -> None:
        self._sink = None


def open_backend(reactor: Any, service: Any, sink: BackendSink) -> Deferred[BackendLeg]:
    """
    Open the backend of C{service} for one session.

    @param reactor: the reactor used to connect.
    @param service: a L{netguard.config.ServiceConfig} (only C{backend} and the timeouts are
        read).
    @param sink: the session that receives the backend's bytes and its end.
    @return: a L{Deferred} firing with the L{BackendLeg} once connected, or failing with the
        precise cause.
    """
    if service.backend == ECHO:
        return succeed(EchoLeg(sink))
    return fail(UnsupportedBackend(f"backend {service.backend!r} is not supported yet"))

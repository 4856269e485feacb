# -*- test-case-name: tests.test_admitting -*-
"""
Admission control for any Twisted server, the gateway included: L{AdmittingFactory} wraps a
protocol factory so every new connection is admitted or refused by an
L{netguard.admission.Admission} before the application sees it, and gives the slot back
when the connection ends::

    admission = Admission(AdmissionPolicy(per_source_max=4, per_source_rate=2.0), reactor)
    endpoint.listen(AdmittingFactory(MyFactory(), admission))

The policy, the refusal reasons and how a refusal is answered: C{docs/operating.md}
section 8.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from netguard.admission import Admission, Refusal
from netguard.framing import FramingLimits, peer_label
from netguard.refusal_log import RefusalLog

_log = Logger()


class _Cancellable(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """
    The part of L{twisted.internet.interfaces.IReactorTime} a refusal needs.
    """

    def seconds(self) -> float:
        """
        The current time in seconds.
        """
        ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object
    ) -> _Cancellable:
        """
        Call C{callable(*args)} in C{delay} seconds.
        """
        ...


class Admitted:
    """
    One admitted connection's hold on its admission slot.

    @ivar address: the peer address it was admitted with.
    @ivar promoted: whether the connection is in the authenticated pool.
    """

    __slots__ = ("admission", "address", "promoted", "_released")  # one per connection

    def __init__(self, admission: Admission, address: object) -> None:
        self.admission = admission
        self.address = address
        self.promoted = False
        self._released = False

    def promote(self) -> Refusal | None:
        """
        The peer has authenticated: move this connection to the authenticated pool
        (L{Admission.authenticated}).

        @return: L{None}, or a L{Refusal} (C{relay-cap}) when that pool is full; the caller
            decides what to tell the peer and should then close.
        """
        if self.promoted:
            return None
        refusal = self.admission.authenticated(self.address)
        self.promoted = refusal is None
        return refusal

    def offence(self, kind: str) -> float | None:
        """
        Record an offence of this connection's source.

        @param kind: C{"auth_failure"}, C{"early_talker"}, C{"timeout"} or C{"format_error"}.
        @return: the seconds the source is now blocked for, or L{None}.
        @raise ValueError: for another kind.
        """
        return self.admission.offence(self.address, kind)

    def release(self) -> None:
        """
        The connection has ended: give its slot back (once).
        """
        if not self._released:
            self._released = True
            self.admission.released(self.address, self.promoted)


@runtime_checkable
class AdmissionAware(Protocol):
    """
    A factory that takes its connections' admission itself: L{AdmittingFactory} hands it each
    admitted connection's L{Admitted} and does not wrap its protocols, and asks it about
    each refusal.
    """

    def build_admitted(self, addr: IAddress | None, admitted: Admitted) -> TwistedProtocol | None:
        """
        Build the protocol of an admitted connection, which must call C{admitted.release()}
        when the connection ends.

        @return: the protocol, or L{None} to close the connection (its slot is given back).
        """
        ...

    def refused(self, addr: IAddress | None, refusal: Refusal) -> Mapping[str, object]:
        """
        A connection was refused (account for it).

        @return: fields the C{conn.reject} event carries besides C{peer} and C{reason}.
        """
        ...


class _Refusal(TwistedProtocol):
    """
    What a refused connection gets: one C{ERR BUSY <reason>} line, then a close.

    On a plain TCP or Unix-socket transport (the usual listener) the line goes straight to
    the new socket in one non-blocking C{send}, and the connection is closed at once, before
    the reactor turns again: no write buffer, no wait for writability, no timer. Nothing can
    hold it open. The socket is new and nothing else was written to it, so its send buffer is
    empty, and the kernel never makes one smaller than a few KiB: the short line always fits
    whole, whatever the peer's receive window (the kernel queues the bytes and sends them,
    then the FIN, on its own after we close). A peer that never reads therefore holds
    nothing of ours. If the send fails all the same (the peer is gone already, the kernel is
    out of socket memory), the connection is closed without the line.

    Any other transport (a TLS connection, a PROXY-header wrapper) is written to and closed
    once the line is out, and aborted if it is not within the write timeout: a TLS peer
    could hold the line back by never finishing its handshake.
    """

    transport: Any  # zope interfaces do not type-check as classes

    def __init__(self, line: bytes, clock: Scheduler, write_timeout: float):
        self.line = line + b"\r\n"
        self.clock = clock
        self.write_timeout = write_timeout
        self._abort: _Cancellable | None = None

    def connectionMade(self) -> None:
        transport = self.transport
        if isinstance(transport, tcp.Server) and not transport.TLS:
            try:
                transport.getHandle().send(self.line, socket.MSG_DONTWAIT)
            except OSError:
                pass  # gone already, or no memory for even this: closed without the line
            transport.connectionLost(Failure(ConnectionDone("refused")))
            return
        transport.write(self.line)
        transport.loseConnection()
        self._abort = self.clock.callLater(self.write_timeout, transport.abortConnection)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._abort is not None and self._abort.active():
            self._abort.cancel()


class AdmittedProtocol(ProtocolWrapper):
    """
    The transport the application's protocol sees: the connection, plus the admission
    policy's per-connection calls.
    """

    admitted: Admitted
    factory: AdmittingFactory

    @property
    def address(self) -> object:
        """The peer address the connection was admitted with."""
        return self.admitted.address

    @property
    def promoted(self) -> bool:
        """Whether the connection is in the authenticated pool."""
        return self.admitted.promoted

    def promote(self) -> Refusal | None:
        """
        The peer has authenticated: see L{Admitted.promote}.
        """
        return self.admitted.promote()

    def offence(self, kind: str) -> float | None:
        """
        Record an offence of this connection's source: see L{Admitted.offence}.
        """
        return self.admitted.offence(kind)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.admitted.release()
        super().connectionLost(reason)


class AdmittingFactory(WrappingFactory):
    """
    Wrap C{wrappedFactory} so every connection passes L{Admission.admit} first.

    A refused connection gets one line, C{ERR BUSY <reason>}, and is closed at once (on a TLS
    or PROXY-header listener once the line is out, aborted if the peer does not take it
    within C{write_timeout}), or is closed without a word, before any transport is built,
    with C{reject_mode="close"}; the refusal is logged (C{conn.reject}; during a flood only
    the first few per source and reason, then C{conn.reject.summary}: L{refusal_log}). The
    application's
    protocol reaches the rest of the policy through its transport, the wrapper:
    C{self.transport.promote()} moves the connection to the authenticated pool once the peer
    has proved who it is, and C{self.transport.offence(kind)} records an offence towards the
    source's penalties. A factory that provides L{AdmissionAware} (the gateway's) is handed
    each connection's L{Admitted} instead, and its protocols are not wrapped.

    @ivar admission: the L{Admission} consulted.
    @ivar write_timeout: how long a refused peer on a TLS or PROXY-header listener may leave
        the refusal line unread.
    @ivar refusal_log: the L{RefusalLog} deciding which refusals are logged one by one.
    """

    protocol = AdmittedProtocol
    noisy = False

    def __init__(
        self,
        wrappedFactory: Any,
        admission: Admission,
        *,
        clock: Scheduler | None = None,
        write_timeout: float | None = None,
        log: Logger | None = None,
    ) -> None:
        """
        @param wrappedFactory: the application's factory; when it provides
            L{AdmissionAware} its protocols are not wrapped.
        @param admission: the L{Admission} consulted.
        @param clock: the time source and timer of the refusals' log and abort
            (C{admission.clock} by default).
        @param write_timeout: seconds a refused peer may leave the refusal line unread (the
            default of L{FramingLimits.write_timeout} by default).
        @param log: the logger of C{conn.reject} (this module's by default).
        """
        super().__init__(wrappedFactory)
        self.admission = admission
        self.clock: Scheduler = clock if clock is not None else admission.clock  # type: ignore[assignment]
        self.write_timeout = (
            write_timeout if write_timeout is not None else FramingLimits().write_timeout
        )
        self.log = log if log is not None else _log
        self._aware = isinstance(wrappedFactory, AdmissionAware)
        #: Which refusals are logged one by one; the rest are counted and summarised.
        self.refusal_log = RefusalLog(self.log, self.clock)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """
        Admit or refuse a new connection before the application builds anything for it.
        """
        refusal = self.admission.admit(addr)
        if refusal is not None:
            return self._refuse(addr, refusal)
        admitted = Admitted(self.admission, addr)
        try:
            if self._aware:
                wrapped = self.wrappedFactory.build_admitted(addr, admitted)
            else:
                wrapped = self.wrappedFactory.buildProtocol(addr)
        except BaseException:
            admitted.release()  # a failing application must not keep the slot for ever
            raise
        if wrapped is None:
            admitted.release()
            return None
        if self._aware:
            return wrapped
        protocol = AdmittedProtocol(self, wrapped)  # type: ignore[arg-type]
        protocol.admitted = admitted
        return protocol

    def _refuse(self, addr: IAddress | None, refusal: Refusal) -> _Refusal | None:
        """
        Account for a refused connection, log it (one by one only for the first few of its
        source and reason in an interval: L{refusal_log}) and build its answer.

        @return: the protocol that answers C{ERR BUSY <reason>}, or L{None} to close the
            socket before any transport is built (C{reject_mode="close"}).
        """
        fields = self.wrappedFactory.refused(addr, refusal) if self._aware else {}
        if self.refusal_log.note(self.admission.source_key(addr), refusal.reason):
            self.log.info(
                "refused {peer}: {reason}",
                event="conn.reject",
                peer=peer_label(addr),
                reason=refusal.reason,
                **fields,
            )
        line = self.admission.reply_line(refusal)
        if line is None:
            return None  # silent close: the cheapest answer
        return _Refusal(line, self.clock, self.write_timeout)

    def stopFactory(self) -> None:
        """
        The last listener has stopped: log the refusals still only counted.
        """
        self.refusal_log.flush()

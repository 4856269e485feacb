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
from twisted.internet.interfaces import IAddress, ISSLTransport
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from netguard.admission import Admission, Refusal, Slot
from netguard.admission.eviction import LANE, RELAY
from netguard.clocks import Cancellable, Scheduler
from netguard.framing import FramingLimits, peer_label
from netguard.refusal_log import RefusalLog
from netguard.wrapped_interfaces import provide_what_it_wraps

_log = Logger()


class Admitted:
    """
    One admitted connection's hold on its admission slot (its L{Slot}).

    @ivar address: the peer address it was admitted with.
    """

    __slots__ = ("admission", "address", "slot", "_released")  # one per connection

    def __init__(self, admission: Admission, address: object, slot: Slot) -> None:
        """
        @param admission: the L{Admission} that gave the slot.
        @param address: the peer address it was admitted with.
        @param slot: the slot L{Admission.enter} gave.
        """
        self.admission = admission
        self.address = address
        self.slot = slot
        self._released = False

    @property
    def promoted(self) -> bool:
        """
        Whether the connection is in the authenticated pool.
        """
        return self.slot.pool == RELAY

    @property
    def lane(self) -> bool:
        """
        Whether the connection is in the returning-client lane.
        """
        return self.slot.pool == LANE

    @property
    def probation(self) -> Refusal | None:
        """
        The refusal this connection stands for while it is only on probation, else L{None}.

        A connection on probation is not greeted: it has C{probation_timeout} to present a
        valid returning-client ticket (then L{enter_lane}); when that time is up, or when the
        probation pool is full and it is the oldest, admission calls L{on_evict} with
        C{probation.reason}, and the connection is answered as that refusal and closed. No
        offence: it did nothing wrong, it came at a bad time.
        """
        return self.slot.probation

    @property
    def on_evict(self) -> Callable[[str], object] | None:
        """
        What admission calls, with the reason, when it ends this connection: C{evicted} to
        make room for a newcomer, or C{probation.reason} when its probation ends. The
        connection has already lost its slot, and admission has counted the end under that
        reason; the callee accounts for it the same way (L{AdmittingFactory.ended}), answers
        C{ERR BUSY <reason>} (or nothing, with C{reject_mode = "close"}) and closes it. No
        offence. Set it to L{None} once the connection starts closing for another reason:
        it is then no longer a candidate, and its counts stay consistent with admission's.

        Only a connection with a handler can be evicted. L{AdmittingFactory} sets a default
        for the protocols of an L{AdmissionAware} factory that leave it unset, which writes
        the reply line to the protocol's transport and closes it; set your own to do better.
        """
        return self.slot.on_evict

    @on_evict.setter
    def on_evict(self, callback: Callable[[str], object] | None) -> None:
        self.admission.set_evict_handler(self.slot, callback)

    def promote(self) -> Refusal | None:
        """
        The peer has authenticated: move this connection to the authenticated pool
        (L{Admission.promote}).

        @return: L{None}, or a L{Refusal} (C{relay-cap}) when that pool is full; the caller
            decides what to tell the peer and should then close.
        """
        return self.admission.promote(self.slot)

    def enter_lane(self, user: str | None = None) -> Refusal | None:
        """
        The peer presented a valid returning-client ticket: move this connection (from the
        unauthenticated pool, or from probation) into the returning-client lane, where it is
        never evicted, never refused by overload, and no longer on probation
        (L{Admission.enter_lane}).

        @param user: the user the ticket was issued to, counted against C{lane_per_user}
            until the connection leaves the lane.
        @return: L{None} when in the lane; else a L{Refusal} (C{lane-cap}, C{lane-cap-user},
            or C{global-cap} for a connection on probation) and nothing changed: the
            connection goes on as a first-time one (on probation still, if it was).
        """
        return self.admission.enter_lane(self.slot, user)

    def progress(self) -> None:
        """
        The connection made useful progress (it started C{AUTH}, or passed a SCRAM step):
        eviction takes those that made none first, then the least recently useful.
        """
        self.admission.progress(self.slot)

    def offence(self, kind: str) -> float | None:
        """
        Record an offence of this connection's source.

        @param kind: one of L{netguard.admission.OFFENCE_KINDS}.
        @return: the seconds the source is now blocked for, or L{None}.
        @raise ValueError: for another kind.
        """
        return self.admission.offence(self.address, kind)

    def release(self) -> None:
        """
        The connection has ended: give its slot back (once; after an eviction or the end
        of probation there is nothing left to give).
        """
        if not self._released:
            self._released = True
            self.admission.release(self.slot)


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

        When C{admitted.probation} is set the connection was let in only on probation: do
        not greet it; let it present a returning-client ticket (then call
        C{admitted.enter_lane(user)} with the ticket's user), and set C{admitted.on_evict}
        to answer and close it when admission ends its probation (a default that writes the
        reply line and closes the transport is set if the protocol leaves it unset). The
        same handler serves evictions. Call C{admitted.progress()} on useful progress.

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

    On a TLS listener the connection is closed silently before any handshake (aborted at
    once: no line, no timer, no TLS work): the line could only be delivered through a
    handshake the peer controls, and a refused peer must not get one.

    Any other transport (a PROXY-header wrapper) is written to and closed once the line is
    out, and aborted if it is not within the write timeout.
    """

    transport: Any  # zope interfaces do not type-check as classes

    def __init__(self, line: bytes, clock: Scheduler, write_timeout: float):
        self.line = line + b"\r\n"
        self.clock = clock
        self.write_timeout = write_timeout
        self._abort: Cancellable | None = None

    def connectionMade(self) -> None:
        transport = self.transport
        if isinstance(transport, tcp.Server) and not transport.TLS:
            try:
                transport.getHandle().send(self.line, socket.MSG_DONTWAIT)
            except OSError:
                pass  # gone already, or no memory for even this: closed without the line
            transport.connectionLost(Failure(ConnectionDone("refused")))
            return
        if ISSLTransport.providedBy(transport):
            transport.abortConnection()
            return
        transport.write(self.line)
        transport.loseConnection()
        self._abort = self.clock.callLater(self.write_timeout, transport.abortConnection)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._abort is not None and self._abort.active():
            self._abort.cancel()


class _Ending:
    """
    The default L{Admitted.on_evict} of an L{AdmissionAware} factory's protocol: account for
    the end as a refusal (L{AdmittingFactory.ended}), write the reply line and close (the
    protocol's own write bound applies). A TLS connection is aborted at once: its handshake
    may not be done, and no line may wait on it.
    """

    __slots__ = ("factory", "addr", "protocol")

    def __init__(
        self, factory: AdmittingFactory, addr: IAddress | None, protocol: TwistedProtocol
    ) -> None:
        self.factory = factory
        self.addr = addr
        self.protocol = protocol

    def __call__(self, reason: str) -> None:
        line = self.factory.ended(self.addr, reason)
        transport: Any = self.protocol.transport
        if transport is None:
            return
        if ISSLTransport.providedBy(transport):
            transport.abortConnection()
            return
        if line is not None:
            transport.write(line + b"\r\n")
        transport.loseConnection()


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

    def makeConnection(self, transport: Any) -> None:
        """
        Connect, then declare the application protocol's half-close, TLS handshake and
        descriptor-passing interfaces as this wrapper's own (Twisted's C{ProtocolWrapper}
        declares only the transport's): without them a TLS listener would never tell it the
        handshake is done and a peer's FIN would close both directions.
        """
        super().makeConnection(transport)
        provide_what_it_wraps(self, self.wrappedProtocol)

    def readConnectionLost(self) -> None:
        self.wrappedProtocol.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.wrappedProtocol.writeConnectionLost()

    def handshakeCompleted(self) -> None:
        self.wrappedProtocol.handshakeCompleted()

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self.wrappedProtocol.fileDescriptorReceived(descriptor)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.admitted.release()
        super().connectionLost(reason)


class AdmittingFactory(WrappingFactory):
    """
    Wrap C{wrappedFactory} so every connection passes L{Admission.admit} first.

    A refused connection gets one line, C{ERR BUSY <reason>}, and is closed at once (on a
    PROXY-header listener once the line is out, aborted if the peer does not take it within
    C{write_timeout}; on a TLS listener it is closed silently, before any handshake), or is
    closed without a word, before any transport is built, with C{reject_mode="close"}; the
    refusal is logged (C{conn.reject}; during a flood only the first few per source and
    reason, then C{conn.reject.summary}: L{refusal_log}). The application's protocol
    reaches the rest of the policy through its transport, the wrapper:
    C{self.transport.promote()} moves the connection to the authenticated pool once the peer
    has proved who it is, and C{self.transport.offence(kind)} records an offence towards the
    source's penalties. A factory that provides L{AdmissionAware} (the gateway's) is handed
    each connection's L{Admitted} instead, and its protocols are not wrapped.

    @ivar admission: the L{Admission} consulted.
    @ivar write_timeout: how long a refused peer on a PROXY-header listener may leave
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
        self.clock: Scheduler = clock if clock is not None else admission.clock  # type: ignore[assignment]
        self.write_timeout = (
            write_timeout if write_timeout is not None else FramingLimits().write_timeout
        )
        self.log = log if log is not None else _log
        self._aware = isinstance(wrappedFactory, AdmissionAware)
        #: Which refusals are logged one by one; the rest are counted and summarised.
        self.refusal_log = RefusalLog(self.log, self.clock)
        self.admission = admission

    @property
    def admission(self) -> Admission:
        """
        The L{Admission} consulted; its C{admission.block} events go through
        L{refusal_log} too.
        """
        return self._admission

    @admission.setter
    def admission(self, admission: Admission) -> None:
        self._admission = admission
        admission.log_blocks_in(self.refusal_log)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """
        Admit or refuse a new connection before the application builds anything for it.

        An L{AdmissionAware} factory may be handed a connection on probation; for any other
        factory probation is the refusal it stands for.
        """
        result = self.admission.enter(addr, probation=self._aware)
        if isinstance(result, Refusal):
            return self._refuse(addr, result)
        admitted = Admitted(self.admission, addr, result)
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
            if admitted.on_evict is None:
                admitted.on_evict = _Ending(self, addr, wrapped)
            return wrapped
        protocol = AdmittedProtocol(self, wrapped)  # type: ignore[arg-type]
        protocol.admitted = admitted
        return protocol

    def ended(self, addr: IAddress | None, reason: str) -> bytes | None:
        """
        Account for a connection that admission ended after letting it in (evicted, or at
        the end of its probation) as for a refusal of that reason: told to an
        L{AdmissionAware} factory, logged as C{conn.reject} with C{ended=True} (the first few
        per source and reason, the rest summarised, as refusals).

        @return: the line to send before closing, or L{None} for a silent close.
        """
        refusal = Refusal(reason)
        fields = self.wrappedFactory.refused(addr, refusal) if self._aware else {}
        if self.refusal_log.note(self.admission.source_key(addr), reason):
            self.log.info(
                "refused {peer}: {reason}",
                event="conn.reject",
                peer=peer_label(addr),
                reason=reason,
                ended=True,
                **fields,
            )
        return self.admission.reply_line(refusal)

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

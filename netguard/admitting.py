# -*- test-case-name: tests.test_admitting -*-
"""
Admission control for any Twisted server: L{AdmittingFactory} wraps a protocol factory so
every new connection is admitted or refused by an L{netguard.admission.Admission} before the
application sees it, and gives the slot back when the connection ends.

    from netguard.admission import Admission, AdmissionPolicy
    from netguard.admitting import AdmittingFactory

    admission = Admission(AdmissionPolicy(per_source_max=4, per_source_rate=2.0), reactor)
    endpoint.listen(AdmittingFactory(MyFactory(), admission))

A refused connection gets one line, C{ERR BUSY <reason>}, and is closed (or is closed
without a word with C{reject_mode="close"}); the refusal is logged (C{conn.reject}). The
application's protocol reaches the rest of the policy through its transport, the wrapper:
C{self.transport.promote()} moves the connection to the authenticated pool once the peer has
proved who it is (L{netguard.admission.Admission.authenticated}), and
C{self.transport.offence(kind)} records an offence (C{"auth_failure"}, C{"early_talker"},
C{"timeout"}, C{"format_error"}) towards the source's penalties.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from netguard.admission import Admission, Refusal
from netguard.framing import peer_label

log = Logger()


class _Refused(Protocol):
    """
    Says the refusal line, then closes.
    """

    transport: Any  # zope interfaces do not type-check as classes

    def __init__(self, line: bytes) -> None:
        self.line = line

    def connectionMade(self) -> None:
        self.transport.write(self.line + b"\r\n")
        self.transport.loseConnection()


class AdmittedProtocol(ProtocolWrapper):
    """
    The transport the application's protocol sees: the connection, plus the admission
    policy's per-connection calls.

    @ivar promoted: whether the connection is in the authenticated pool.
    """

    promoted = False
    address: Any = None
    factory: AdmittingFactory

    def promote(self) -> Refusal | None:
        """
        The peer has authenticated: move this connection to the authenticated pool.

        @return: L{None}, or a L{Refusal} (C{relay-cap}) when that pool is full; the caller
            decides what to tell the peer and should then close.
        """
        if self.promoted:
            return None
        refusal = self.factory.admission.authenticated(self.address)
        self.promoted = refusal is None
        return refusal

    def offence(self, kind: str) -> float | None:
        """
        Record an offence of this connection's source.

        @param kind: C{"auth_failure"}, C{"early_talker"}, C{"timeout"} or C{"format_error"}.
        @return: the seconds the source is now blocked for, or L{None}.
        @raise ValueError: for another kind.
        """
        return self.factory.admission.offence(self.address, kind)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.admission.released(self.address, self.promoted)
        super().connectionLost(reason)


class AdmittingFactory(WrappingFactory):
    """
    Wrap C{wrappedFactory} so every connection passes L{Admission.admit} first.

    @ivar admission: the L{Admission} consulted.
    """

    protocol = AdmittedProtocol
    noisy = False

    def __init__(self, wrappedFactory: Any, admission: Admission) -> None:
        super().__init__(wrappedFactory)
        self.admission = admission

    def buildProtocol(self, addr: Any) -> Any:
        """
        Admit or refuse a new connection before the application builds anything for it.
        """
        refusal = self.admission.admit(addr)
        if refusal is not None:
            log.info(
                "refused {peer}: {reason}",
                event="conn.reject",
                peer=peer_label(addr),
                reason=refusal.reason,
            )
            line = self.admission.reply_line(refusal)
            return None if line is None else _Refused(line)
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            self.admission.released(addr, False)
            return None
        protocol = AdmittedProtocol(self, wrapped)  # type: ignore[arg-type]
        protocol.address = addr
        return protocol

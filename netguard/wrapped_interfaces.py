"""
Keep a protocol's optional interfaces visible through Twisted's client-endpoint wrapper.

A protocol connected through a client endpoint (C{endpoint.connect}) is wrapped in Twisted's
C{_WrappingProtocol}, which copies C{IHalfCloseableProtocol}, C{IFileDescriptorReceiver} and
C{IHandshakeListener} from the protocol it wraps with one C{directlyProvides} call each: each
call replaces what the one before declared, so the wrapper keeps only the last interface it
found. A protocol that is both half-closeable and a handshake listener (a backend connection,
the NGP/1 client) thus loses its half-close, and the peer's FIN arrives as C{connectionLost}:
the relay closed both directions when the other side had only finished sending. Its protocols
call L{provide_through_wrapper} from C{makeConnection}. docs/operating.md section 5.4 says
what half-close a relay carries. L{provide_what_it_wraps} does the same for a wrapper of our
own (the admission wrapper), whose Twisted base class declares only its transport's
interfaces.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import (
    IFileDescriptorReceiver,
    IHalfCloseableProtocol,
    IHandshakeListener,
)
from zope.interface import alsoProvides, directlyProvidedBy, noLongerProvides

#: The interfaces Twisted's endpoint wrapper means to pass through.
_PASSED = (IHalfCloseableProtocol, IFileDescriptorReceiver, IHandshakeListener)


def provide_through_wrapper(protocol: object, transport: Any) -> None:
    """
    Make the endpoint wrapper around C{protocol}, if there is one, provide every interface of
    L{_PASSED} that C{protocol} provides. Twisted's transports ask the outermost protocol
    (C{transport.protocol} for a TCP or UNIX connection, C{wrappedProtocol} for its TLS
    layer) whether it is half-closeable when the peer's FIN comes.

    @param protocol: the protocol being connected.
    @param transport: the transport given to its C{makeConnection}.
    """
    outers = (getattr(transport, "protocol", None), getattr(transport, "wrappedProtocol", None))
    for outer in outers:
        if outer is None or outer is protocol:
            continue
        if getattr(outer, "_wrappedProtocol", None) is not protocol:
            continue
        missing = [i for i in _PASSED if i.providedBy(protocol) and not i.providedBy(outer)]
        if missing:
            alsoProvides(outer, *missing)


def provide_what_it_wraps(wrapper: object, protocol: object) -> None:
    """
    Make C{wrapper} provide exactly the interfaces of L{_PASSED} that the C{protocol} it
    wraps provides: those it lacks are added (the wrapper forwards their methods), and those
    the wrapper declared only because its transport provides them (Twisted's
    C{ProtocolWrapper.makeConnection} copies every interface of the transport, a half-close
    TLS transport's C{IHalfCloseableProtocol} included) are taken away, so a transport never
    calls a method the wrapped protocol does not have.

    @param wrapper: a wrapper that has just declared its own interfaces.
    @param protocol: the protocol it wraps.
    """
    missing = [i for i in _PASSED if i.providedBy(protocol) and not i.providedBy(wrapper)]
    if missing:
        alsoProvides(wrapper, *missing)
    for interface in _PASSED:
        if not interface.providedBy(protocol) and interface in directlyProvidedBy(wrapper):
            noLongerProvides(wrapper, interface)

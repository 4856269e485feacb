# -*- test-case-name: tests.test_log -*-
"""
Short-lived UDP ports (a DNS client opens one per query) that write no routine log lines
in netguard's logs: L{listen_udp_quietly} opens them, L{is_quiet_udp_port_line} tells
netguard's observers (L{netguard.log}) which two Twisted lines to leave out. See
C{docs/logging.md} ("Twisted's own lines").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import udp
from twisted.internet.posixbase import PosixReactorBase
from twisted.python import log as legacy_log

#: The legacy log context key that L{QuietUDPPort} sets while it opens and while it closes;
#: the two lines C{twisted.internet.udp.Port} writes then carry it in their events.
QUIET_UDP_CONTEXT_KEY = "netguard_quiet_udp_port"

#: The two lines C{twisted.internet.udp.Port} writes for itself, and nothing else.
_QUIET_UDP_LINE = re.compile(r".+ starting on [0-9]+|\(UDP Port [0-9]+ Closed\)")


class QuietUDPPort(udp.Port):
    """
    A C{twisted.internet.udp.Port} for a short-lived, routine port (a DNS client opens one
    per query), whose own two info lines are marked for netguard's observers to leave out.

    C{udp.Port} writes C{<prefix> starting on N} while it opens (C{startListening}) and
    C{(UDP Port N Closed)} while it closes (C{connectionLost}) with
    C{twisted.python.log.msg}, unconditionally, with no attribute or hook to turn them off.
    This port calls both inside a log context carrying L{QUIET_UDP_CONTEXT_KEY}, so the
    events of those lines, and only of lines logged while this port opens or closes, carry
    the key (L{is_quiet_udp_port_line}). Its protocol's own C{Starting protocol} /
    C{Stopping protocol} lines are switched off at the source (C{noisy = False}).
    """

    def __init__(
        self,
        port: int,
        proto: Any,
        interface: str = "",
        maxPacketSize: int = 8192,  # noqa: N803
        reactor: Any = None,
    ) -> None:
        """
        The arguments of C{udp.Port}; C{proto.noisy} is set to C{False}.
        """
        proto.noisy = False
        super().__init__(port, proto, interface, maxPacketSize, reactor)

    def startListening(self) -> None:  # noqa: N802
        """
        C{udp.Port.startListening}, its C{starting on} line marked quiet.
        """
        legacy_log.callWithContext({QUIET_UDP_CONTEXT_KEY: True}, super().startListening)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        """
        C{udp.Port.connectionLost}, its C{Closed} line marked quiet. The C{Deferred} that
        C{stopListening} returned fires after, outside the quiet context, so that nothing its
        callbacks log (another port opened there, say) is marked.
        """
        stopped = self.__dict__.pop("d", None)
        legacy_log.callWithContext({QUIET_UDP_CONTEXT_KEY: True}, super().connectionLost, reason)
        if stopped is not None:
            stopped.callback(None)


def listen_udp_quietly(
    reactor: Any,
    port: int,
    protocol: Any,
    interface: str = "",
    max_packet_size: int = 8192,
    port_type: type[QuietUDPPort] = QuietUDPPort,
) -> Any:
    """
    C{reactor.listenUDP} for a short-lived, routine port (a DNS client opens one per query),
    without its four info lines per port in netguard's logs.

    On a posix reactor (every reactor netguard runs on) the port is a L{QuietUDPPort}, opened
    the way the reactor's own C{listenUDP} opens a C{udp.Port}: its protocol logs nothing,
    and its two lines still reach C{globalLogPublisher}, where netguard's observers
    (L{safe_text_observer}, L{json_observer}, the standard output ones, the C{[log] file}
    sink) drop them, and only them, with L{is_quiet_udp_port_line}. Twisted's own default
    observer (twistd without C{--logger}) still shows those two lines. On any other reactor
    (a test's fake one) this is that reactor's C{listenUDP}, with the protocol's
    C{noisy = False}.

    @param reactor: an C{IReactorUDP} provider.
    @param port: the port number, 0 for any.
    @param protocol: a C{DatagramProtocol}; its C{noisy} is set to C{False}.
    @param interface: the address to bind.
    @param max_packet_size: the largest datagram read.
    @param port_type: the L{QuietUDPPort} (or subclass) opened on a posix reactor.
    @return: the listening port, as C{listenUDP} returns it.
    @raise twisted.internet.error.CannotListenError: as C{listenUDP}.
    """
    protocol.noisy = False
    if not isinstance(reactor, PosixReactorBase):
        return reactor.listenUDP(
            port, protocol, interface=interface, maxPacketSize=max_packet_size
        )
    listening = port_type(port, protocol, interface, max_packet_size, reactor)
    listening.startListening()
    return listening


def _legacy_text(event: Mapping[str, Any]) -> str | None:
    """
    The text of an info event from C{twisted.python.log.msg} with one string argument,
    else L{None}.
    """
    if event.get("log_namespace") != "log_legacy" or event.get("isError") != 0:
        return None
    if "failure" in event or "log_failure" in event:
        return None
    message = event.get("message")
    if not (isinstance(message, tuple) and len(message) == 1 and isinstance(message[0], str)):
        return None
    return message[0]


def is_quiet_udp_port_line(event: Mapping[str, Any]) -> bool:
    """
    Whether an event is one of the two lines C{twisted.internet.udp.Port} writes for a
    L{QuietUDPPort}: a plain legacy info message carrying L{QUIET_UDP_CONTEXT_KEY} (logged
    while a L{QuietUDPPort} opens or closes) whose whole text is C{<prefix> starting on N}
    or C{(UDP Port N Closed)}, C{N} ASCII digits.

    The answer depends on the event alone. Any other line, including the same text from
    another UDP port (whatever its number), is kept.

    @param event: a C{twisted.logger} event.
    @return: C{True} to leave the event out of the log.
    """
    if event.get(QUIET_UDP_CONTEXT_KEY) is not True:
        return False
    text = _legacy_text(event)
    return text is not None and _QUIET_UDP_LINE.fullmatch(text) is not None


def without_quiet_udp_lines(
    formatter: Callable[[Mapping[str, Any]], str | None],
) -> Callable[[Mapping[str, Any]], str | None]:
    """
    C{formatter}, writing nothing for the events L{is_quiet_udp_port_line} names.
    """

    def format_unless_quiet(event: Mapping[str, Any]) -> str | None:
        try:
            if is_quiet_udp_port_line(event):
                return None
        except Exception:  # an observer must never raise; when in doubt, write the line
            pass
        return formatter(event)

    return format_unless_quiet

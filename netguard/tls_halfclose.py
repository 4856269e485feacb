# -*- test-case-name: tests.test_tls_halfclose -*-
"""
TLS with half-close, for Twisted, whose own TLS transport has none.

L{HalfCloseTLSTransport} gives TLS the half-close TCP has: C{loseWriteConnection} sends
C{close_notify} and keeps reading, and a peer's C{close_notify} reaches an
L{IHalfCloseableProtocol} as C{readConnectionLost}. L{HalfCloseTLSFactory} and
L{wrap_client_tls} use it on the server and client side::

    endpoint = wrap_client_tls(optionsForClientTLS("gw.example.org"), tcp_endpoint)
    port = tcp_server_endpoint.listen(HalfCloseTLSFactory(server_options, False, factory))

The behaviour, and why it matters to a relay: C{docs/tls.md} ("Half-close over TLS").
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.endpoints import _WrapperEndpoint
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IHalfCloseableProtocol)
class HalfCloseTLSTransport(BufferingTLSTransport):
    """
    A Twisted TLS transport that passes half-closes through in both directions (as TLS 1.3
    defines it, and as OpenSSL allows for TLS 1.2 too):

      - C{loseWriteConnection} sends C{close_notify} and keeps reading; the TCP connection
        stays open until both sides are done (Twisted's own sends a FIN without
        C{close_notify}, which the peer must treat as a truncation);
      - a C{close_notify} from the peer is passed to the application as
        C{readConnectionLost} when the application provides L{IHalfCloseableProtocol}, and
        the application may go on writing until it calls C{loseConnection};
      - a TCP FIN that comes without a C{close_notify} first is still a truncation and
        closes the connection.

    (It provides L{IHalfCloseableProtocol} towards the TCP transport below it, so that a FIN
    after a C{close_notify} does not end the connection while we still write.)
    """

    _read_closed = False
    _write_closed = False
    # Typed loosely: zope interfaces do not type-check as classes.
    transport: Any
    wrappedProtocol: Any

    # -- our half-close -------------------------------------------------------------------

    def loseWriteConnection(self) -> None:
        """
        Send C{close_notify} and keep reading. Before the handshake has finished there is
        nothing to half-close: the connection is closed as by C{loseConnection}.
        """
        if self._write_closed or self.disconnecting or not self.connected:
            return
        self._aggregator.flush()
        if not self._handshakeDone or self._appSendBuffer:
            self.loseConnection()
            return
        self._write_closed = True
        try:
            self._tlsConnection.shutdown()
        except Error:
            self.loseConnection()
            return
        self._flushSendBIO()
        if self._read_closed:
            self.transport.loseConnection()

    def _write(self, bytes: bytes) -> None:
        if self._write_closed:
            return  # after our close_notify nothing more may be sent (as after a TCP FIN)
        super()._write(bytes)

    def _sending_done(self) -> bool:
        """
        Whether the application has finished sending: it half-closed, or it called
        C{loseConnection} with nothing left to send (no bytes waiting for the handshake, no
        producer still registered), so that our C{close_notify} is out. Once it is, the
        peer's C{close_notify} (still passed on as C{readConnectionLost}) or TCP EOF ends the
        connection: nothing else would, and it would stay, half-closed, until a timeout.
        """
        if self._write_closed:
            return True
        return bool(self.disconnecting) and self._producer is None and not self._appSendBuffer

    # -- the peer's half-close --------------------------------------------------------------

    def _flushReceiveBIO(self) -> None:
        # Twisted's loop, except for a close_notify (ZeroReturnError): a half-closing
        # application is told the peer has finished sending, and the connection stays.
        while not self._lostTLSConnection and not self._read_closed:
            try:
                data = self._tlsConnection.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:
                half_closing = IHalfCloseableProtocol.providedBy(self.wrappedProtocol)
                if half_closing:
                    self._read_closed = True
                    self._flushSendBIO()
                    self.wrappedProtocol.readConnectionLost()
                if self._sending_done() or not half_closing:
                    # Both directions are done (or the application cannot half-close):
                    # answer the close_notify and close, as Twisted's TLS does.
                    self._shutdownTLS()
                    self._tlsShutdownFinished(None)
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    self.wrappedProtocol.dataReceived(data)
        self._flushSendBIO()

    # -- IHalfCloseableProtocol, towards the TCP transport -------------------------------

    def readConnectionLost(self) -> None:
        """
        TCP EOF. After the peer's C{close_notify} it changes nothing; without one it is a
        truncation, which ends the connection as Twisted's TLS does.
        """
        if self._lostTLSConnection:
            return
        if not self._read_closed:
            self._tlsConnection.bio_shutdown()
            self._flushReceiveBIO()
        if not self._read_closed and not self._lostTLSConnection:
            self._tlsShutdownFinished(Failure(ConnectionLost()))
        elif self._sending_done():
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        The TCP transport cannot write any more (we never half-close TCP ourselves).
        """


class HalfCloseTLSFactory(TLSMemoryBIOFactory):
    """
    A L{TLSMemoryBIOFactory} whose connections are L{HalfCloseTLSTransport}s.

    When the application's factory builds no protocol for a connection (admission control
    refusing it silently), no TLS protocol is built either: the connection is closed before
    any TLS work, where Twisted's factory would wrap L{None} and fail.
    """

    protocol = HalfCloseTLSTransport

    def buildProtocol(self, addr: Any) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


def wrap_client_tls(creator: Any, endpoint: Any) -> Any:
    """
    Like L{twisted.internet.endpoints.wrapClientTLS}, with half-close passed through.

    @param creator: an L{IOpenSSLClientConnectionCreator}.
    @param endpoint: the L{IStreamClientEndpoint} to wrap.
    @return: a client endpoint whose connections speak TLS.
    """
    return _WrapperEndpoint(endpoint, lambda factory: HalfCloseTLSFactory(creator, True, factory))

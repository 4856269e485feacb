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
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover - depends on the installed pyOpenSSL
    _ffi = _lib = None


#: More than this many bytes entering a connection's memory BIOs at once (ciphertext from one
#: TCP read into the read BIO, or the records of one write taken out of the write BIO) has the
#: pair replaced by empty ones once the connection has been quiet for L{BIO_IDLE_SECONDS}:
#: OpenSSL's memory BIOs never give back the capacity they grew to (about 4/3 of the largest
#: amount they held), so an idle connection would keep that of its largest read or write
#: (about 87 KiB after one 64 KiB TCP read, 21 KiB after one 16 KiB record each way).
BIO_REFRESH_BYTES = 2**12

#: Seconds without a large read or write before the BIOs are replaced (replacing them
#: after every large read would cost a bulk stream an allocation and a wipe per read).
BIO_IDLE_SECONDS = 0.1

#: Most bytes a memory BIO may have pending for L{refresh_memory_bios} to copy them.
_MAX_CARRY = 2**30


def _copy_pending(source: Any, target: Any) -> None:
    """
    Copy every byte pending in memory BIO C{source} to the end of C{target}, in order,
    leaving C{source} as it was (so that a failure loses nothing).

    @raise MemoryError: if C{target} took less than was pending (it could not grow), or
        more than L{_MAX_CARRY} bytes were pending.
    """
    data = _ffi.new("char **")
    pending = _lib.BIO_get_mem_data(source, data)
    if pending <= 0:
        return
    if pending > _MAX_CARRY:
        raise MemoryError("too many bytes pending in a memory BIO")
    if _lib.BIO_write(target, data[0], pending) != pending:
        raise MemoryError("a new memory BIO took fewer bytes than were pending")


def refresh_memory_bios(connection: Any, input_ended: bool = False) -> bool:
    """
    Give a memory-BIO L{OpenSSL.SSL.Connection} a new, empty pair of memory BIOs, with a
    copy of any bytes still pending in the old ones (normally none: Twisted's TLS transport
    empties both before it returns to the reactor; a partial record OpenSSL has already
    taken in stays in its own record buffer, which is not touched); OpenSSL frees the old
    pair and the capacity it had grown to. Uses pyOpenSSL's private attributes (C{_ssl},
    C{_into_ssl}, C{_from_ssl}), which hold plain pointers that OpenSSL owns once given to
    C{SSL_set_bio}; where they or the bindings are missing, nothing is done.

    @param connection: the connection (created with C{socket=None}).
    @param input_ended: whether the end of input was marked on the read BIO
        (L{OpenSSL.SSL.Connection.bio_shutdown}): the new read BIO gets the same mark.
    @return: whether the BIOs were replaced.
    @raise MemoryError: if the new BIOs could not be made or filled; the connection then
        keeps its old BIOs, untouched, and may go on.
    """
    ssl = getattr(connection, "_ssl", None)
    old_in = getattr(connection, "_into_ssl", None)
    old_out = getattr(connection, "_from_ssl", None)
    if ssl is None or old_in is None or old_out is None or _lib is None:
        return False
    new_in = _lib.BIO_new(_lib.BIO_s_mem())
    new_out = _lib.BIO_new(_lib.BIO_s_mem())
    try:
        if new_in == _ffi.NULL or new_out == _ffi.NULL:
            raise MemoryError("no memory for a new memory BIO")
        _copy_pending(old_in, new_in)
        _copy_pending(old_out, new_out)
    except MemoryError:
        for bio in (new_in, new_out):
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
        raise
    if input_ended:
        _lib.BIO_set_mem_eof_return(new_in, 0)
    _lib.SSL_set_bio(ssl, new_in, new_out)
    connection._into_ssl, connection._from_ssl = new_in, new_out
    return True


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

    # -- the memory BIOs of an idle connection --------------------------------------------

    _bio_log = Logger()
    _last_large_io = 0.0
    _bio_timer: Any = None
    _bios_retired = False
    _input_ended = False

    #: How many times this connection's BIOs were replaced.
    bio_refreshes = 0

    def dataReceived(self, bytes: bytes) -> None:
        super().dataReceived(bytes)
        if len(bytes) > BIO_REFRESH_BYTES:
            self._large_io()

    def _flushSendBIO(self) -> None:
        # Twisted's, noting how much left the write BIO: as much went into it.
        try:
            data = self._tlsConnection.bio_read(2**15)
        except WantReadError:
            return
        self.transport.write(data)
        if len(data) > BIO_REFRESH_BYTES:
            self._large_io()

    def _large_io(self) -> None:
        """
        More than L{BIO_REFRESH_BYTES} went through the BIOs: note when, and make sure a
        timer will replace them once the connection has been quiet for L{BIO_IDLE_SECONDS}
        (one timer at most, only while there is something to give back, none once the
        connection is gone).
        """
        if self._bios_retired:
            return
        clock: Any = self.factory._clock
        self._last_large_io = clock.seconds()
        if self._bio_timer is None:
            self._bio_timer = clock.callLater(BIO_IDLE_SECONDS, self._bio_timer_fired)

    def _bio_timer_fired(self) -> None:
        clock: Any = self.factory._clock
        quiet = clock.seconds() - self._last_large_io
        if quiet < BIO_IDLE_SECONDS:  # busy since: look again when it will have been quiet
            self._bio_timer = clock.callLater(BIO_IDLE_SECONDS - quiet, self._bio_timer_fired)
            return
        self._bio_timer = None
        self._refresh_bios()

    def _refresh_bios(self) -> None:
        """
        Replace the memory BIOs so that an idle connection does not keep their grown
        capacity; on an established connection, half-closed or not, that is not closing.
        Should there be no memory for the new ones, the old ones stay and the connection
        goes on (nothing was taken out of them).
        """
        if self._handshakeDone and not self._lostTLSConnection and not self.disconnecting:
            try:
                refreshed = refresh_memory_bios(self._tlsConnection, self._input_ended)
            except MemoryError as error:
                self._bio_log.warn(
                    "TLS memory BIOs kept: {problem}",
                    event="tls.bio_refresh_failed",
                    problem=str(error),
                )
                return
            self.bio_refreshes += refreshed

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Retired first: Twisted's connectionLost still flushes buffered writes through
        # _write, which must not arm a timer for a connection that is gone.
        self._bios_retired = True
        timer, self._bio_timer = self._bio_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        super().connectionLost(reason)

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
            self._input_ended = True
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

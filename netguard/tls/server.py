# -*- test-case-name: tests.test_tls -*-
"""
TLS listeners: a listener's settings, its context loaded and checked from files
(L{load_server_context}), swapped on reload without touching live connections and dropped at
shutdown (L{ServerTLS}), and the endpoint wrapper that speaks TLS from the first byte
(L{TLSServerEndpoint}). docs/tls.md describes the checks, reload and shutdown.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from netguard.tls.binding import ServedBinding, server_end_point_binding
from netguard.tls.certificates import (
    CertificateInfo,
    chain_warnings,
    check_validity,
    load_certificates,
    load_private_key,
    utc_now,
)
from netguard.tls.context import (
    MIN_VERSIONS,
    TICKET_LIFETIME,
    base_context,
    use_identity,
)
from netguard.tls.errors import TLSConfigError
from netguard.tls_halfclose import HalfCloseTLSFactory


def _check_min_version(instance: Any, attribute: Any, value: str) -> None:
    if value not in MIN_VERSIONS:
        raise TLSConfigError("min_version", f"must be one of {', '.join(MIN_VERSIONS)}")


@attrs.frozen
class ServerTLSSettings:
    """
    Where a TLS listener's certificate and key are, and whom it asks for certificates.

    @ivar cert_file: PEM file with the server certificate first, optionally followed by its
        chain (a "fullchain" file).
    @ivar key_file: PEM file with the unencrypted private key (may be the same file).
    @ivar chain_file: optional PEM file with more chain certificates.
    @ivar client_ca_file: optional PEM file of the CA certificates that client certificates
        must chain to; when set, a client certificate that is presented is verified.
    @ivar require_client_cert: refuse clients without a valid certificate (needs
        C{client_ca_file}).
    @ivar min_version: C{"1.2"} (the default) or C{"1.3"}.
    @ivar session_resumption: TLS 1.3 session resumption with (EC)DHE (docs/tls.md,
        section 11); needs C{min_version = "1.3"}, since a TLS 1.2 resumption makes no new
        key exchange.
    """

    cert_file: str
    key_file: str
    chain_file: str | None = None
    client_ca_file: str | None = None
    require_client_cert: bool = False
    min_version: str = attrs.field(default="1.2", validator=_check_min_version)
    session_resumption: bool = False

    def __attrs_post_init__(self) -> None:
        if self.require_client_cert and not self.client_ca_file:
            raise TLSConfigError(
                "require_client_cert",
                "needs client_ca_file, the CA that client certificates must chain to",
            )
        if self.session_resumption and self.min_version != "1.3":
            raise TLSConfigError(
                "session_resumption",
                'needs min_version = "1.3": a TLS 1.2 resumption makes no new key exchange',
            )


@attrs.frozen
class _Identity:
    """
    What a context is built from, kept (in memory only, and only while session resumption
    is on) so that new ticket keys can be made without reading the files again.
    """

    key: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...]
    client_cas: tuple[x509.Certificate, ...]


@attrs.frozen
class _Loaded:
    context: SSL.Context
    certificate: x509.Certificate
    info: CertificateInfo
    binding: tuple[str, bytes]
    warnings: tuple[str, ...]
    #: What the context was built from, kept only where ticket keys are rotated.
    identity: _Identity | None = None
    #: When the context's ticket keys were made (L{None}: no resumption, nothing to rotate).
    keys_made: float | None = None


def _seconds(clock: IReactorTime | None) -> float:
    source: Any = clock
    return float(source.seconds()) if source is not None else time.time()


def _build_context(
    settings: ServerTLSSettings, identity: _Identity, binding: tuple[str, bytes]
) -> SSL.Context:
    """
    A hardened server context for C{identity}; with session resumption, it holds new ticket
    keys (OpenSSL makes them for each context, in memory).
    """
    lifetime = TICKET_LIFETIME if settings.session_resumption else None
    context = base_context(SSL.TLS_SERVER_METHOD, MIN_VERSIONS[settings.min_version], lifetime)
    use_identity(context, identity.key, identity.chain, settings.cert_file, settings.key_file)
    # Required by OpenSSL for client certificates and resumption.
    context.set_session_id(b"netguard")
    if settings.client_ca_file:
        store = context.get_cert_store()
        assert store is not None
        for ca in identity.client_cas:
            store.add_cert(crypto.X509.from_cryptography(ca))
            context.add_client_ca(ca)
        mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
        if settings.require_client_cert:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        context.set_verify(mode)
    else:
        context.set_verify(SSL.VERIFY_NONE)
    context.set_app_data(ServedBinding(binding))
    return context


def _load_server(settings: ServerTLSSettings, clock: IReactorTime | None) -> _Loaded:
    warnings: list[str] = []
    chain = load_certificates(settings.cert_file, "certificate file")
    key, key_warning = load_private_key(settings.key_file)
    if key_warning:
        warnings.append(key_warning)
    if settings.chain_file:
        chain = chain + load_certificates(settings.chain_file, "chain file")
    leaf = chain[0]
    expiring = check_validity(leaf, settings.cert_file, utc_now(clock))
    if expiring:
        warnings.append(expiring)
    warnings.extend(chain_warnings(chain, settings.chain_file or settings.cert_file))
    cas: list[x509.Certificate] = []
    if settings.client_ca_file:
        cas = load_certificates(settings.client_ca_file, "client CA file")
    identity = _Identity(key, tuple(chain), tuple(cas))
    binding = server_end_point_binding(leaf.public_bytes(serialization.Encoding.DER))
    return _Loaded(
        context=_build_context(settings, identity, binding),
        certificate=leaf,
        info=CertificateInfo.of(leaf),
        binding=binding,
        warnings=tuple(warnings),
        identity=identity if settings.session_resumption else None,
        keys_made=_seconds(clock) if settings.session_resumption else None,
    )


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS identity of one listener: hands each new connection the context in force, and
    swaps it on L{reload}.

    Pass it wherever Twisted wants a server connection creator (L{TLSServerEndpoint},
    C{SSL4ServerEndpoint}, C{listenSSL}, L{TLSMemoryBIOFactory}).

    @ivar settings: the settings in force.
    """

    log = Logger()

    def __init__(
        self,
        settings: ServerTLSSettings,
        loaded: _Loaded,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        Use L{load_server_context} rather than this.
        """
        self.settings = settings
        self._loaded: _Loaded | None = loaded
        self._clock = clock

    def _in_force(self) -> _Loaded:
        if self._loaded is None:
            raise TLSConfigError(self.settings.key_file, "the key was dropped at shutdown")
        return self._loaded

    @property
    def context(self) -> SSL.Context:
        """
        @return: the context new connections get.
        @raise TLSConfigError: after L{forget}.
        """
        return self._in_force().context

    @property
    def certificate(self) -> x509.Certificate:
        """
        @return: the certificate new connections are served.
        """
        return self._in_force().certificate

    @property
    def certificate_info(self) -> CertificateInfo:
        """
        @return: the description of L{certificate}.
        """
        return self._in_force().info

    @property
    def warnings(self) -> tuple[str, ...]:
        """
        @return: what the last successful load found questionable but accepted.
        """
        return self._in_force().warnings

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        A new server connection on the context in force now.

        @param tlsProtocol: the L{twisted.protocols.tls.TLSMemoryBIOProtocol}.
        @return: the connection.
        """
        loaded = self._in_force()
        if loaded.keys_made is not None and loaded.identity is not None:
            now = _seconds(self._clock)
            if not 0 <= now - loaded.keys_made < TICKET_LIFETIME:
                loaded = self._rotate_ticket_keys(loaded, now)
        return SSL.Connection(loaded.context, None)

    def _rotate_ticket_keys(self, loaded: _Loaded, now: float) -> _Loaded:
        """
        Serve new connections a fresh context of the same identity, and with it new ticket
        keys: tickets issued under the old keys no longer resume (a full handshake follows),
        so no ticket outlives L{TICKET_LIFETIME}. Live connections keep their context.
        """
        assert loaded.identity is not None
        rotated = attrs.evolve(
            loaded,
            context=_build_context(self.settings, loaded.identity, loaded.binding),
            keys_made=now,
        )
        self._loaded = rotated
        self.log.info(
            "TLS session ticket keys replaced for {subject}",
            event="tls.ticket_keys_rotated",
            subject=loaded.info.subject,
        )
        return rotated

    def channel_binding(self) -> tuple[str, bytes]:
        """
        The channel binding of the certificate served to new connections. A live connection
        must use L{channel_binding_for} instead: it may have been served an older one.

        @return: C{("tls-server-end-point", data)}.
        """
        return self._in_force().binding

    def reload(self, settings: ServerTLSSettings | None = None) -> CertificateInfo:
        """
        Read the files again (or those of new C{settings}) and, if all is well, serve the
        result to new connections; live connections keep what they have.

        @param settings: new settings, or L{None} to re-read the current ones.
        @return: the description of the certificate now served.
        @raise TLSConfigError: if something is wrong; the old context stays in force.
        """
        settings = settings if settings is not None else self.settings
        current = self._in_force()
        try:
            loaded = _load_server(settings, self._clock)
        except TLSConfigError as e:
            self.log.error(
                "TLS reload failed, keeping certificate {subject}: {problem}",
                event="tls.reload_failed",
                path=e.path,
                problem=e.problem,
                subject=current.info.subject,
            )
            raise
        self.settings = settings
        self._loaded = loaded
        self._log_loaded("tls.reloaded")
        return loaded.info

    def forget(self) -> bool:
        """
        Drop the context in force, and with it the private key, at shutdown. Once the last
        connection that uses the context is gone, OpenSSL frees the key, clearing its memory
        (C{EVP_PKEY_free} wipes private key material). Afterwards new connections, reloads and
        the properties raise L{TLSConfigError}; call it only once no listener uses this.

        @return: whether there was a key to drop (C{False} on a second call).
        """
        dropped, self._loaded = self._loaded is not None, None
        return dropped

    def _log_loaded(self, event: str) -> None:
        loaded = self._in_force()
        info = loaded.info
        self.log.info(
            "TLS certificate {subject} (pin-sha256 {pin}) valid until {not_after}",
            event=event,
            subject=info.subject,
            pin=info.pin_sha256,
            not_after=info.not_after.isoformat(),
            cert_file=self.settings.cert_file,
            client_certs=(
                "required"
                if self.settings.require_client_cert
                else "verified"
                if self.settings.client_ca_file
                else "off"
            ),
            session_resumption=self.settings.session_resumption,
        )
        for warning in loaded.warnings:
            self.log.warn("TLS: {detail}", event="tls.warning", detail=warning)


def load_server_context(
    settings: ServerTLSSettings, clock: IReactorTime | None = None
) -> ServerTLS:
    """
    Load and check a listener's certificate, key, chain and client CAs, and build its
    hardened context (L{netguard.tls.context}; docs/tls.md lists what it enforces).

    @param settings: the files and choices.
    @param clock: the clock validity is checked against (the system clock by default).
    @return: the L{ServerTLS} serving that context.
    @raise TLSConfigError: naming the file and the problem, for a missing, unreadable,
        unparsable or encrypted file, a key that does not match the certificate, a
        certificate that is expired or not valid yet, a weak or unsupported key, or a key
        file that any user can read.
    """
    server_tls = ServerTLS(settings, _load_server(settings, clock), clock)
    server_tls._log_loaded("tls.loaded")
    return server_tls


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    Wrap any stream server endpoint (C{tcp:}, C{tcp6:}, C{unix:}, C{systemd:},
    C{haproxy:}...) so its connections speak TLS from the first byte with a L{ServerTLS}.

    With C{haproxy:}, the PROXY header is read first and TLS starts after it, as HAProxy
    sends them.
    """

    def __init__(self, endpoint: Any, server_tls: ServerTLS, clock: Any = None) -> None:
        """
        @param endpoint: the L{IStreamServerEndpoint} to listen on.
        @param server_tls: the TLS identity.
        @param clock: the clock of Twisted's small-write aggregation (the reactor by default).
        """
        self.endpoint = endpoint
        self.server_tls = server_tls
        self._clock = clock

    def listen(self, protocolFactory: Any) -> Any:
        """
        Listen, wrapping C{protocolFactory}'s protocols in TLS.

        @param protocolFactory: the application's L{IProtocolFactory}.
        @return: the wrapped endpoint's L{Deferred} of an L{IListeningPort}.
        """
        creator: Any = self.server_tls
        return self.endpoint.listen(
            HalfCloseTLSFactory(creator, False, protocolFactory, self._clock)
        )

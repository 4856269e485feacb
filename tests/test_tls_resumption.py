"""
Tests for TLS 1.3 session resumption on netguard's server contexts
(L{netguard.tls.ServerTLSSettings.session_resumption}): off by default, TLS 1.3 only, a
resumed session accepted with its channel binding intact, tickets of other keys, rotated keys
and past their lifetime falling back to a full handshake, no early data, and a hostile client
offering resumption without (EC)DHE (C{psk_ke} only) getting a full handshake.

Handshakes run over memory BIOs with an injected clock: no sockets, no waiting.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from OpenSSL import SSL
from OpenSSL._util import ffi, lib
from twisted.logger import capturedLogs
from twisted.trial import unittest

from netguard import tls
from netguard.config import load_config
from netguard.config.model import ConfigError
from netguard.tls import ServerTLSSettings, TLSConfigError, channel_binding_for
from netguard.tls.context import TICKET_LIFETIME, base_context, use_identity
from tests.test_tls import TLSTestCase, client_context, clock_at, run_handshake
from tests.test_tls_binding import _Handle
from tests.tls_certs import NOW

#: TLS extension numbers (RFC 8446 section 4.2).
PRE_SHARED_KEY = 41
PSK_KEY_EXCHANGE_MODES = 45
KEY_SHARE = 51

#: The two PSK key exchange modes (RFC 8446 section 4.2.9).
PSK_KE = 0
PSK_DHE_KE = 1

#: OpenSSL's C{SSL_OP_ALLOW_NO_DHE_KEX} (pyOpenSSL names it not): accept C{psk_ke}.
OP_ALLOW_NO_DHE_KEX = 0x400


def reused(connection: SSL.Connection) -> bool:
    """
    @return: whether OpenSSL resumed a session on C{connection}.
    """
    return bool(lib.SSL_session_reused(connection._ssl))


class ResumptionCase(TLSTestCase):
    """
    A listener's L{tls.ServerTLS} on a fake clock, and a client that keeps its session.
    """

    def setUp(self) -> None:
        super().setUp()
        self.clock = clock_at(NOW)
        self.client_ctx = client_context()
        self.events: list[dict[str, Any]] = []

    def server_tls(self, **kwargs: Any) -> tls.ServerTLS:
        kwargs.setdefault("min_version", "1.3")
        with capturedLogs():
            return tls.load_server_context(self.settings(**kwargs), self.clock)

    def connect(
        self, server_tls: tls.ServerTLS, session: SSL.Session | None = None
    ) -> tuple[SSL.Connection, SSL.Connection]:
        """
        One in-memory handshake (with a byte each way, so the tickets reach the client),
        offering C{session} for resumption.
        """
        with capturedLogs() as events:
            server = server_tls.serverConnectionForTLS(None)
        self.events.extend(events)
        client = SSL.Connection(self.client_ctx, None)
        if session is not None:
            client.set_session(session)
        outcome = run_handshake(server, client)
        self.assertTrue(outcome.done, outcome)
        return server, client


class SettingsTests(unittest.TestCase):
    def test_off_by_default(self) -> None:
        """
        A listener resumes no session unless its configuration says so.
        """
        self.assertFalse(ServerTLSSettings("c.pem", "k.pem").session_resumption)

    def test_needs_tls13_only(self) -> None:
        """
        Resumption on a listener that accepts TLS 1.2 is refused, naming the key: TLS 1.2
        tickets would resume without a new key exchange.
        """
        error = self.assertRaises(
            TLSConfigError, ServerTLSSettings, "c.pem", "k.pem", session_resumption=True
        )
        self.assertEqual(error.path, "session_resumption")
        self.assertIn('min_version = "1.3"', error.problem)

    def test_tls13_listener_may_resume(self) -> None:
        """
        With C{min_version = "1.3"} resumption may be switched on.
        """
        settings = ServerTLSSettings("c.pem", "k.pem", min_version="1.3", session_resumption=True)
        self.assertTrue(settings.session_resumption)


class ConfigKeyTests(TLSTestCase):
    def load_config(self, extra: str) -> Any:
        path = self.path("netguard.toml")
        with open(path, "w") as f:
            f.write(
                "listen = []\n[[tls_listen]]\n"
                'endpoint = "tcp:0:interface=127.0.0.1"\n'
                f'cert_file = "{self.cert_file}"\nkey_file = "{self.key_file}"\n{extra}'
            )
        return load_config(path, {"state_dir": self.path("state")})

    def test_config_key_switches_it_on(self) -> None:
        """
        C{session_resumption = true} in a C{[[tls_listen]]} entry reaches its settings.
        """
        config = self.load_config('min_version = "1.3"\nsession_resumption = true\n')
        self.assertTrue(config.tls_listen[0].settings.session_resumption)

    def test_config_default_off(self) -> None:
        """
        An entry without the key does not resume.
        """
        self.assertFalse(self.load_config("").tls_listen[0].settings.session_resumption)

    def test_config_without_tls13_refused(self) -> None:
        """
        C{session_resumption = true} without C{min_version = "1.3"} stops the start with an
        error naming the key.
        """
        error = self.assertRaises(ConfigError, self.load_config, "session_resumption = true\n")
        self.assertIn("tls_listen[0].session_resumption", str(error))

    def test_config_not_a_bool_refused(self) -> None:
        """
        A value other than true or false is refused, naming the key.
        """
        error = self.assertRaises(
            ConfigError, self.load_config, 'min_version = "1.3"\nsession_resumption = "yes"\n'
        )
        self.assertIn("tls_listen[0].session_resumption", str(error))


class ResumptionOffTests(ResumptionCase):
    def test_ticket_never_resumes_when_off(self) -> None:
        """
        With resumption off, a client offering the session it was given gets a full
        handshake (OpenSSL still sends TLS 1.3 tickets, which nothing can redeem).
        """
        server_tls = self.server_tls()
        _, first = self.connect(server_tls)
        server, client = self.connect(server_tls, first.get_session())
        self.assertFalse(reused(server))
        self.assertFalse(reused(client))

    def test_tls12_listener_never_resumes(self) -> None:
        """
        The default listener (TLS 1.2 and 1.3) resumes neither version's sessions.
        """
        server_tls = self.server_tls(min_version="1.2")
        for version in (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION):
            self.client_ctx = client_context(max_version=version)
            _, first = self.connect(server_tls)
            server, _ = self.connect(server_tls, first.get_session())
            self.assertFalse(reused(server), version)

    def test_context_options_keep_no_ticket(self) -> None:
        """
        Without resumption the context keeps C{OP_NO_TICKET} and no session cache.
        """
        context = self.server_tls().context
        self.assertTrue(context.set_options(0) & SSL.OP_NO_TICKET)
        self.assertEqual(context.get_session_cache_mode(), SSL.SESS_CACHE_OFF)


class ResumptionOnTests(ResumptionCase):
    def test_resumed_session_accepted(self) -> None:
        """
        With resumption on, the session of an earlier connection resumes.
        """
        server_tls = self.server_tls(session_resumption=True)
        first_server, first = self.connect(server_tls)
        self.assertFalse(reused(first_server))
        server, client = self.connect(server_tls, first.get_session())
        self.assertTrue(reused(server))
        self.assertTrue(reused(client))

    def test_resumed_session_keeps_channel_binding(self) -> None:
        """
        On a resumed session both sides still compute the C{tls-server-end-point} binding of
        the certificate (the server from its context, the client from the session's peer
        certificate), so SCRAM-SHA-256-PLUS verifies as on a full handshake.
        """
        server_tls = self.server_tls(session_resumption=True)
        _, first = self.connect(server_tls)
        server, client = self.connect(server_tls, first.get_session())
        self.assertTrue(reused(server))
        expected = tls.server_end_point_binding(self.cert.public_bytes(serialization.Encoding.DER))
        self.assertEqual(channel_binding_for(_Handle(server), "server"), expected)
        self.assertEqual(channel_binding_for(_Handle(client), "client"), expected)

    def test_no_early_data(self) -> None:
        """
        The tickets allow no early data (0-RTT stays off: it could be replayed).
        """
        server_tls = self.server_tls(session_resumption=True)
        _, client = self.connect(server_tls)
        session = client.get_session()
        assert session is not None
        self.assertEqual(lib.SSL_SESSION_get_max_early_data(session._session), 0)

    def test_ticket_lifetime_announced(self) -> None:
        """
        The tickets carry the lifetime netguard accepts them for, not OpenSSL's two hours.
        """
        server_tls = self.server_tls(session_resumption=True)
        self.assertEqual(server_tls.context.get_timeout(), TICKET_LIFETIME)

    def test_ticket_from_other_listener_not_accepted(self) -> None:
        """
        A ticket issued by another listener (other keys, even for the same certificate)
        does not resume: the handshake is a full one, and succeeds.
        """
        _, first = self.connect(self.server_tls(session_resumption=True))
        other = self.server_tls(session_resumption=True)
        server, client = self.connect(other, first.get_session())
        self.assertFalse(reused(server))
        self.assertFalse(reused(client))

    def test_ticket_after_reload_not_accepted(self) -> None:
        """
        A reload makes a new context with new keys: earlier tickets no longer resume.
        """
        server_tls = self.server_tls(session_resumption=True)
        _, first = self.connect(server_tls)
        with capturedLogs():
            server_tls.reload()
        server, _ = self.connect(server_tls, first.get_session())
        self.assertFalse(reused(server))

    def test_keys_kept_within_lifetime(self) -> None:
        """
        One second before the keys' lifetime ends, the context (and its keys) stays and an
        earlier ticket resumes.
        """
        server_tls = self.server_tls(session_resumption=True)
        context = server_tls.context
        _, first = self.connect(server_tls)
        self.clock.advance(TICKET_LIFETIME - 1)
        server, _ = self.connect(server_tls, first.get_session())
        self.assertTrue(reused(server))
        self.assertIs(server_tls.context, context)
        self.assertFalse([e for e in self.events if e.get("event") == "tls.ticket_keys_rotated"])

    def test_ticket_past_lifetime_not_accepted(self) -> None:
        """
        Once the keys are L{TICKET_LIFETIME} old, the next connection gets a context with
        new keys (logged as C{tls.ticket_keys_rotated}): a ticket issued under the old keys,
        so at least that old too, gets a full handshake, which succeeds; tickets of the new
        keys resume.
        """
        server_tls = self.server_tls(session_resumption=True)
        old_context = server_tls.context
        _, first = self.connect(server_tls)
        self.clock.advance(TICKET_LIFETIME)
        server, client = self.connect(server_tls, first.get_session())
        self.assertFalse(reused(server))
        self.assertIsNot(server_tls.context, old_context)
        rotated = [e for e in self.events if e.get("event") == "tls.ticket_keys_rotated"]
        self.assertEqual(len(rotated), 1)
        again, _ = self.connect(server_tls, client.get_session())
        self.assertTrue(reused(again))

    def test_clock_going_back_rotates(self) -> None:
        """
        A clock set back (the keys' age negative) also makes new keys, rather than keeping
        the old ones for longer than their lifetime.
        """
        server_tls = self.server_tls(session_resumption=True)
        _, first = self.connect(server_tls)
        self.clock.rightNow -= 10
        server, _ = self.connect(server_tls, first.get_session())
        self.assertFalse(reused(server))

    def test_live_connection_keeps_its_context_across_rotation(self) -> None:
        """
        Rotation changes what new connections get; a live connection keeps its context.
        """
        server_tls = self.server_tls(session_resumption=True)
        live, _ = self.connect(server_tls)
        context = live.get_context()
        self.clock.advance(TICKET_LIFETIME)
        self.connect(server_tls)
        self.assertIs(live.get_context(), context)
        self.assertIsNot(server_tls.context, context)

    def test_no_rotation_when_off(self) -> None:
        """
        Without resumption there are no usable ticket keys to replace: the context stays.
        """
        server_tls = self.server_tls()
        context = server_tls.context
        self.clock.advance(10 * TICKET_LIFETIME)
        self.connect(server_tls)
        self.assertIs(server_tls.context, context)


# -- a client that offers resumption without (EC)DHE -------------------------------------------


def _extensions(body: bytes, offset: int) -> list[tuple[int, int, int]]:
    """
    @param body: a ClientHello or ServerHello handshake body.
    @param offset: where its extensions' 2-byte length is.
    @return: (type, start of data, length of data) for each extension.
    """
    end = offset + 2 + int.from_bytes(body[offset : offset + 2], "big")
    found = []
    position = offset + 2
    while position < end:
        kind = int.from_bytes(body[position : position + 2], "big")
        length = int.from_bytes(body[position + 2 : position + 4], "big")
        found.append((kind, position + 4, length))
        position += 4 + length
    return found


def client_hello_extensions(hello: bytes) -> list[tuple[int, int, int]]:
    """
    The extensions of a ClientHello handshake message (type and 3-byte length included),
    with offsets into C{hello}.
    """
    position = 4 + 2 + 32  # header, legacy_version, random
    position += 1 + hello[position]  # legacy_session_id
    position += 2 + int.from_bytes(hello[position : position + 2], "big")  # cipher_suites
    position += 1 + hello[position]  # legacy_compression_methods
    return _extensions(hello, position)


def server_hello_extensions(hello: bytes) -> set[int]:
    """
    The extension types of a ServerHello handshake message.
    """
    position = 4 + 2 + 32
    position += 1 + hello[position]  # legacy_session_id_echo
    position += 2 + 1  # cipher_suite, legacy_compression_method
    return {kind for kind, _, _ in _extensions(hello, position)}


def _expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def rebind(hello: bytes, psk: bytes) -> bytes:
    """
    Recompute the PSK binder of a ClientHello (one identity, SHA-256 suite) after its other
    bytes were changed, as a client holding the resumption secret would (RFC 8446 section
    4.2.11.2), so the server judges the offer itself, not a broken binder.
    """
    early = hmac.digest(b"\0" * 32, psk, "sha256")
    binder_key = _expand_label(early, b"res binder", hashlib.sha256(b"").digest(), 32)
    finished_key = _expand_label(binder_key, b"finished", b"", 32)
    kind, start, length = client_hello_extensions(hello)[-1]
    assert kind == PRE_SHARED_KEY
    identities = int.from_bytes(hello[start : start + 2], "big")
    binders = start + 2 + identities  # the binders list: 2-byte length, 1-byte length, binder
    truncated = hello[:binders]
    binder = hmac.digest(finished_key, hashlib.sha256(truncated).digest(), "sha256")
    return truncated + (len(binder) + 1).to_bytes(2, "big") + bytes([len(binder)]) + binder


def hostile_psk_ke_only(hello: bytes, psk: bytes) -> bytes:
    """
    A ClientHello that offers its ticket with C{psk_ke} only (resumption without any
    (EC)DHE): the modes rewritten, the binder made valid again.
    """
    for kind, start, length in client_hello_extensions(hello):
        if kind == PSK_KEY_EXCHANGE_MODES:
            assert hello[start : start + length] == bytes([1, PSK_DHE_KE])
            hello = hello[: start + 1] + bytes([PSK_KE]) + hello[start + 2 :]
    return rebind(hello, psk)


def _session_psk(session: SSL.Session) -> bytes:
    """
    The resumption PSK a TLS 1.3 client session holds (OpenSSL keeps it as the session's
    master key).
    """
    size = lib.SSL_SESSION_get_master_key(session._session, ffi.NULL, 0)
    buffer = ffi.new("unsigned char[]", size)
    lib.SSL_SESSION_get_master_key(session._session, buffer, size)
    return bytes(ffi.buffer(buffer, size))


class PskKeOnlyTests(ResumptionCase):
    """
    A hostile client that offers a valid ticket for resumption with C{psk_ke} only.
    """

    def setUp(self) -> None:
        super().setUp()
        self.client_ctx = client_context()
        self.client_ctx.set_tls13_ciphersuites(b"TLS_AES_128_GCM_SHA256")
        self.kept: list[SSL.Connection] = []

    def server_hello_for(
        self, server: SSL.Connection, session: SSL.Session, rewrite: bool
    ) -> set[int]:
        """
        Send the client's ClientHello offering C{session} (rewritten to C{psk_ke} only when
        C{rewrite}) and return the extensions of the server's ServerHello.
        """
        client = SSL.Connection(self.client_ctx, None)
        client.set_session(session)
        client.set_connect_state()
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        record = client.bio_read(65536)
        self.assertEqual(record[0], 22)  # handshake
        hello = record[5:]
        self.assertEqual(hello[0], 1)  # ClientHello
        self.assertIn(PRE_SHARED_KEY, [kind for kind, _, _ in client_hello_extensions(hello)])
        if rewrite:
            hello = hostile_psk_ke_only(hello, _session_psk(session))
        else:
            hello = rebind(hello, _session_psk(session))
        server.set_accept_state()
        server.bio_write(bytes([22]) + record[1:3] + len(hello).to_bytes(2, "big") + hello)
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        answer = server.bio_read(65536)
        self.assertEqual(answer[0], 22)
        self.assertEqual(answer[5], 2)  # ServerHello
        return server_hello_extensions(answer[5:])

    def first_session(self, server_tls: tls.ServerTLS | SSL.Context) -> SSL.Session:
        """
        The session of a full handshake with C{server_tls}. Its client connection is kept:
        OpenSSL marks the session of a connection freed without a shutdown not resumable.
        """
        if isinstance(server_tls, SSL.Context):
            server = SSL.Connection(server_tls, None)
            client = SSL.Connection(self.client_ctx, None)
            self.assertTrue(run_handshake(server, client).done)
        else:
            _, client = self.connect(server_tls)
        self.kept.append(client)
        session = client.get_session()
        assert session is not None
        return session

    def test_psk_dhe_ke_offer_resumes(self) -> None:
        """
        The unchanged offer (C{psk_dhe_ke}, binder recomputed by the test) resumes, with a
        new key share: the detector below sees a resumption when there is one.
        """
        server_tls = self.server_tls(session_resumption=True)
        session = self.first_session(server_tls)
        server = server_tls.serverConnectionForTLS(None)
        extensions = self.server_hello_for(server, session, rewrite=False)
        self.assertIn(PRE_SHARED_KEY, extensions)
        self.assertIn(KEY_SHARE, extensions)

    def test_psk_ke_only_offer_gets_full_handshake(self) -> None:
        """
        The same ticket offered with C{psk_ke} only is not used: the server answers with a
        full handshake (a key share and no pre-shared key).
        """
        server_tls = self.server_tls(session_resumption=True)
        session = self.first_session(server_tls)
        server = server_tls.serverConnectionForTLS(None)
        extensions = self.server_hello_for(server, session, rewrite=True)
        self.assertNotIn(PRE_SHARED_KEY, extensions)
        self.assertIn(KEY_SHARE, extensions)

    def test_detector_sees_psk_ke_where_allowed(self) -> None:
        """
        Against a context that allows C{psk_ke} (C{SSL_OP_ALLOW_NO_DHE_KEX}, which netguard
        never sets), the same hostile offer resumes without a key share: the test above
        would notice a server that accepted it.
        """
        context = base_context(SSL.TLS_SERVER_METHOD, SSL.TLS1_3_VERSION, TICKET_LIFETIME)
        use_identity(context, self.key, [self.cert], self.cert_file, self.key_file)
        context.set_session_id(b"netguard")
        context.set_options(OP_ALLOW_NO_DHE_KEX)
        session = self.first_session(context)
        server = SSL.Connection(context, None)
        extensions = self.server_hello_for(server, session, rewrite=True)
        self.assertIn(PRE_SHARED_KEY, extensions)
        self.assertNotIn(KEY_SHARE, extensions)

    def test_netguard_contexts_never_allow_psk_ke(self) -> None:
        """
        No context netguard builds, with or without resumption, allows C{psk_ke}.
        """
        for lifetime in (None, TICKET_LIFETIME):
            context = base_context(SSL.TLS_SERVER_METHOD, SSL.TLS1_3_VERSION, lifetime)
            self.assertFalse(context.set_options(0) & OP_ALLOW_NO_DHE_KEX)


class ObservabilityTests(ResumptionCase):
    def test_connection_info_says_whether_resumed(self) -> None:
        """
        L{tls.connection_info} (what C{tls.established} logs) says C{resumed} False after
        a full handshake and True on a resumed session.
        """
        server_tls = self.server_tls(session_resumption=True)
        first_server, first = self.connect(server_tls)
        info = tls.connection_info(_Handle(first_server))
        assert info is not None
        self.assertFalse(info.resumed)
        server, _ = self.connect(server_tls, first.get_session())
        info = tls.connection_info(_Handle(server))
        assert info is not None
        self.assertTrue(info.resumed)

    def test_loaded_log_says_whether_resumption_is_on(self) -> None:
        """
        The C{tls.loaded} line carries C{session_resumption}: True on a listener with
        resumption on, False by default.
        """
        for setting in (True, False):
            with capturedLogs() as events:
                tls.load_server_context(
                    self.settings(min_version="1.3", session_resumption=setting), self.clock
                )
            [loaded] = [e for e in events if e.get("event") == "tls.loaded"]
            self.assertIs(loaded["session_resumption"], setting)

    def test_resumed_session_keeps_the_client_certificate(self) -> None:
        """
        On a listener that requires a client certificate, a resumed session (the client
        sends no certificate again) still has the client's certificate, the one verified
        when the session was made: the identity the log and the gateway see is unchanged.
        """
        from tests import tls_certs

        ca = tls_certs.make_ca()
        ca_file = tls_certs.write(self.path("ca.pem"), tls_certs.cert_pem(ca[0]))
        identity = tls_certs.make_leaf("alice", issuer=ca, client=True)
        self.client_ctx = client_context(identity=identity)
        server_tls = self.server_tls(
            session_resumption=True, client_ca_file=ca_file, require_client_cert=True
        )
        first_server, first = self.connect(server_tls)
        full = tls.connection_info(_Handle(first_server))
        server, _ = self.connect(server_tls, first.get_session())
        resumed = tls.connection_info(_Handle(server))
        assert full is not None and resumed is not None
        self.assertTrue(resumed.resumed)
        self.assertEqual(server.get_peer_certificate(as_cryptography=True), identity[0])
        self.assertEqual(resumed.peer_subject, full.peer_subject)
        self.assertEqual(resumed.peer_pin, full.peer_pin)

    def test_resumption_does_not_skip_a_required_certificate(self) -> None:
        """
        A hostile client that resumes no session and sends no certificate is still refused
        by a listener requiring one, with resumption on.
        """
        from tests import tls_certs

        ca = tls_certs.make_ca()
        ca_file = tls_certs.write(self.path("ca.pem"), tls_certs.cert_pem(ca[0]))
        server_tls = self.server_tls(
            session_resumption=True, client_ca_file=ca_file, require_client_cert=True
        )
        server = server_tls.serverConnectionForTLS(None)
        outcome = run_handshake(server, SSL.Connection(client_context(), None))
        self.assertFalse(outcome.done)
        self.assertEqual(outcome.server_error, "peer did not return a certificate")

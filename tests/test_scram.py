"""
Tests for L{netguard.auth.scram}: SCRAM-SHA-256(-PLUS) exchanges, channel binding and wire
encoding.
"""

from __future__ import annotations

import base64
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from netguard.auth import scram
from netguard.auth.scram import (
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    THREAD_ITERATIONS,
    AuthFailed,
    ClientExchange,
    ClientKeys,
    ServerExchange,
)
from netguard.auth.users import UserStore, make_record

CB_NAME = "tls-server-end-point"
CB_DATA = hashlib.sha256(b"the server certificate").digest()
OTHER_CB_DATA = hashlib.sha256(b"a man in the middle's certificate").digest()


def make_store() -> UserStore:
    return UserStore.from_records(
        [make_record("alice", "correct horse", groups=("ops",)), make_record("bob", "pw2")]
    )


def fields(message: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in message.split(","))


def replace_field(message: str, key: str, value: str) -> str:
    out = []
    for part in message.split(","):
        out.append(f"{key}={value}" if part.startswith(key + "=") else part)
    return ",".join(out)


def flip_b64(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode("ascii")


class ExchangeTestBase(unittest.TestCase):
    store: UserStore

    def setUp(self) -> None:
        self.store = make_store()

    def exchange(
        self,
        username: str,
        password: str,
        mechanism: str = SCRAM_SHA_256,
        server_cb: tuple[str, bytes] | None = None,
        client_cb: tuple[str, bytes] | None = None,
    ) -> tuple[ServerExchange, ClientExchange, str]:
        """
        Run an exchange up to the client-final-message; return both sides and that message.
        """
        server = ServerExchange(self.store, mechanism, server_cb)
        client = ClientExchange(username, password, mechanism, client_cb)
        server_first = server.first(client.first())
        return server, client, client.final(server_first)


class RoundTripTests(ExchangeTestBase):
    def test_success_with_mutual_auth(self) -> None:
        server, client, client_final = self.exchange("alice", "correct horse")
        server_final = server.final(client_final)
        self.assertTrue(server_final.startswith("v="))
        client.verify(server_final)
        self.assertTrue(client.verified)
        self.assertTrue(server.authenticated)
        self.assertEqual(server.username, "alice")
        self.assertTrue(server.known_user)
        self.assertEqual(self.store.groups_of("alice"), ("ops",))

    def test_server_nonce_is_18_fresh_random_bytes(self) -> None:
        """
        The server's part of the nonce is 18 random bytes in base64 (24 characters, no comma),
        appended to the client's, and different in every exchange.
        """
        parts = set()
        for _ in range(20):
            server = ServerExchange(self.store)
            client_first = ClientExchange("alice", "correct horse").first()
            client_nonce = fields(client_first.split(",", 2)[2])["r"]
            nonce = fields(server.first(client_first))["r"]
            self.assertTrue(nonce.startswith(client_nonce))
            part = nonce[len(client_nonce) :]
            self.assertEqual(len(part), 24)
            self.assertNotIn(",", part)
            self.assertEqual(len(base64.b64decode(part, validate=True)), 18)
            parts.add(part)
        self.assertEqual(len(parts), 20)

    def test_over_the_wire_encoding(self) -> None:
        server = ServerExchange(self.store)
        client = ClientExchange("bob", "pw2")

        def wire(message: str) -> str:
            token = scram.encode_wire(message)
            self.assertNotIn(b"\n", token)
            return scram.decode_wire(token)

        server_first = wire(server.first(wire(client.first())))
        server_final = wire(server.final(wire(client.final(server_first))))
        client.verify(server_final)
        self.assertTrue(client.verified)

    def test_saslprep_name(self) -> None:
        """
        A name SASLprep maps to a known one (here with a soft hyphen) is that user.
        """
        server, client, client_final = self.exchange("ali\u00adce", "correct horse")
        client.verify(server.final(client_final))
        self.assertEqual(server.username, "alice")

    def test_mechanism_attribute(self) -> None:
        self.assertEqual(ServerExchange(self.store).mechanism, SCRAM_SHA_256)
        self.assertEqual(ClientExchange("a", "b").mechanism, SCRAM_SHA_256)

    def test_higher_iteration_count(self) -> None:
        self.store = UserStore.from_records([make_record("carol", "pw", iterations=5000)])
        server = ServerExchange(self.store)
        client = ClientExchange("carol", "pw")
        server_first = server.first(client.first())
        self.assertEqual(fields(server_first)["i"], "5000")
        client.verify(server.final(client.final(server_first)))


class FailureTests(ExchangeTestBase):
    def test_wrong_password(self) -> None:
        server, client, client_final = self.exchange("alice", "wrong horse")
        e = self.assertRaises(AuthFailed, server.final, client_final)
        self.assertEqual(e.reason, "wrong password")
        self.assertIs(e.known_user, True)
        self.assertFalse(server.authenticated)

    def test_unknown_user_fails_only_at_final(self) -> None:
        server, client, client_final = self.exchange("mallory", "whatever")
        self.assertEqual(server.username, "mallory")
        self.assertFalse(server.known_user)
        e = self.assertRaises(AuthFailed, server.final, client_final)
        self.assertEqual(e.reason, "unknown user")
        self.assertIs(e.known_user, False)
        self.assertFalse(server.authenticated)

    def test_unknown_user_looks_like_a_known_one(self) -> None:
        """
        The server-first-message for an unknown user has the same fields and sizes as for a
        known one, and its salt is the same at each attempt.
        """
        salts = []
        for _ in range(2):
            server = ServerExchange(self.store)
            message = server.first(ClientExchange("mallory", "x").first())
            f = fields(message)
            self.assertEqual(list(f), ["r", "s", "i"])
            self.assertEqual(f["i"], "4096")
            salts.append(base64.b64decode(f["s"], validate=True))
        self.assertEqual(salts[0], salts[1])
        self.assertEqual(len(salts[0]), 16)

        real = fields(ServerExchange(self.store).first(ClientExchange("alice", "x").first()))
        self.assertEqual(len(base64.b64decode(real["s"])), 16)
        self.assertEqual(len(real["r"]), len(f["r"]))

    def test_unknown_users_get_different_salts(self) -> None:
        a = fields(ServerExchange(self.store).first(ClientExchange("mallory", "x").first()))
        b = fields(ServerExchange(self.store).first(ClientExchange("eve", "x").first()))
        self.assertNotEqual(a["s"], b["s"])

    def test_tampered_server_signature(self) -> None:
        server, client, client_final = self.exchange("alice", "correct horse")
        server_final = server.final(client_final)
        forged = "v=" + flip_b64(server_final[2:])
        self.assertRaises(AuthFailed, client.verify, forged)
        self.assertFalse(client.verified)

    def test_server_final_from_another_exchange(self) -> None:
        """
        A server that does not hold the verifier cannot replay another session's signature.
        """
        server1, client1, final1 = self.exchange("alice", "correct horse")
        server2, client2, final2 = self.exchange("alice", "correct horse")
        replay = server1.final(final1)
        server2.final(final2)
        self.assertRaises(AuthFailed, client2.verify, replay)

    def test_server_error_message(self) -> None:
        server, client, client_final = self.exchange("alice", "correct horse")
        e = self.assertRaises(AuthFailed, client.verify, "e=invalid-proof")
        self.assertIn("invalid-proof", e.reason)

    def test_server_final_malformed(self) -> None:
        server, client, client_final = self.exchange("alice", "correct horse")
        self.assertRaises(AuthFailed, client.verify, "v=***")

    def test_tampered_nonce_in_client_final(self) -> None:
        server, client, client_final = self.exchange("alice", "correct horse")
        nonce = fields(client_final)["r"]
        tampered = replace_field(
            client_final, "r", nonce[:-1] + ("A" if nonce[-1] != "A" else "B")
        )
        e = self.assertRaises(AuthFailed, server.final, tampered)
        self.assertIn("nonce", e.reason)

    def test_tampered_proof(self) -> None:
        server, client, client_final = self.exchange("alice", "correct horse")
        tampered = replace_field(client_final, "p", flip_b64(fields(client_final)["p"]))
        self.assertRaises(AuthFailed, server.final, tampered)

    def test_server_nonce_not_extending_client_nonce(self) -> None:
        client = ClientExchange("alice", "correct horse")
        client.first()
        salt = base64.b64encode(b"s" * 16).decode()
        self.assertRaises(AuthFailed, client.final, f"r=someoneelsesnonce,s={salt},i=4096")

    def test_server_nonce_equal_to_client_nonce(self) -> None:
        client = ClientExchange("alice", "correct horse")
        c_nonce = fields(client.first().split(",", 2)[2])["r"]
        salt = base64.b64encode(b"s" * 16).decode()
        self.assertRaises(AuthFailed, client.final, f"r={c_nonce},s={salt},i=4096")

    def test_server_iterations_too_high(self) -> None:
        """
        A hostile server cannot make the client run PBKDF2 for hours.
        """
        client = ClientExchange("alice", "correct horse")
        c_nonce = fields(client.first().split(",", 2)[2])["r"]
        salt = base64.b64encode(b"s" * 16).decode()
        self.assertRaises(AuthFailed, client.final, f"r={c_nonce}xyz,s={salt},i=99999999")

    def test_server_first_error(self) -> None:
        client = ClientExchange("alice", "correct horse")
        client.first()
        self.assertRaises(AuthFailed, client.final, "e=other-error")


class MalformedClientFirstTests(ExchangeTestBase):
    def first(self, message: str) -> AuthFailed:
        server = ServerExchange(self.store)
        e = self.assertRaises(AuthFailed, server.first, message)
        self.assertFalse(server.authenticated)
        return e

    def test_garbage(self) -> None:
        e = self.first("hello")
        self.assertIsNone(e.known_user)

    def test_empty(self) -> None:
        self.first("")

    def test_missing_nonce(self) -> None:
        self.first("n,,n=alice")

    def test_bad_gs2_flag(self) -> None:
        self.first("x,,n=alice,r=abc")

    def test_authzid(self) -> None:
        self.first("n,a=bob,n=alice,r=abc")

    def test_extension(self) -> None:
        self.first("n,,m=ext,n=alice,r=abc")

    def test_bad_username_escape(self) -> None:
        self.first("n,,n=al=ice,r=abc")

    def test_empty_username(self) -> None:
        self.first("n,,n=,r=abc")

    def test_nul(self) -> None:
        self.first("n,,n=alice\x00,r=abc")

    def test_control_character_name(self) -> None:
        self.first("n,,n=ali\x07ce,r=abc")

    def test_bad_nonce_characters(self) -> None:
        self.first("n,,n=alice,r=a b")

    def test_too_long(self) -> None:
        e = self.first("n,,n=alice,r=" + "a" * 2000)
        self.assertIn("longer", e.reason)

    def test_not_text(self) -> None:
        server = ServerExchange(self.store)
        self.assertRaises(AuthFailed, server.first, b"n,,n=alice,r=abc")  # type: ignore[arg-type]

    def test_malformed_client_final(self) -> None:
        server = ServerExchange(self.store)
        server.first(ClientExchange("alice", "x").first())
        self.assertRaises(AuthFailed, server.final, "garbage")

    def test_client_final_bad_proof_encoding(self) -> None:
        server, client, client_final = self.exchange("alice", "correct horse")
        self.assertRaises(AuthFailed, server.final, replace_field(client_final, "p", "%%%"))

    def test_client_final_short_proof(self) -> None:
        server, client, client_final = self.exchange("alice", "correct horse")
        short = base64.b64encode(b"x" * 8).decode()
        self.assertRaises(AuthFailed, server.final, replace_field(client_final, "p", short))


class OrderTests(ExchangeTestBase):
    def test_server_final_before_first(self) -> None:
        server = ServerExchange(self.store)
        e = self.assertRaises(AuthFailed, server.final, "c=biws,r=abc,p=abc=")
        self.assertIn("out of order", e.reason)

    def test_server_first_twice(self) -> None:
        server = ServerExchange(self.store)
        message = ClientExchange("alice", "x").first()
        server.first(message)
        self.assertRaises(AuthFailed, server.first, message)

    def test_server_final_twice(self) -> None:
        server, client, client_final = self.exchange("alice", "correct horse")
        server.final(client_final)
        self.assertRaises(AuthFailed, server.final, client_final)

    def test_server_dead_after_failure(self) -> None:
        server = ServerExchange(self.store)
        self.assertRaises(AuthFailed, server.first, "junk")
        self.assertRaises(AuthFailed, server.first, ClientExchange("alice", "x").first())

    def test_server_dead_after_wrong_password(self) -> None:
        server, client, client_final = self.exchange("alice", "wrong")
        self.assertRaises(AuthFailed, server.final, client_final)
        self.assertRaises(AuthFailed, server.final, client_final)

    def test_client_final_before_first(self) -> None:
        client = ClientExchange("alice", "x")
        self.assertRaises(AuthFailed, client.final, "r=abc,s=c2FsdHNhbHRzYWx0,i=4096")

    def test_client_first_twice(self) -> None:
        client = ClientExchange("alice", "x")
        client.first()
        self.assertRaises(AuthFailed, client.first)

    def test_client_verify_before_final(self) -> None:
        client = ClientExchange("alice", "x")
        client.first()
        self.assertRaises(AuthFailed, client.verify, "v=abcd")

    def test_client_verify_twice(self) -> None:
        server, client, client_final = self.exchange("alice", "correct horse")
        server_final = server.final(client_final)
        client.verify(server_final)
        self.assertRaises(AuthFailed, client.verify, server_final)


class ChannelBindingTests(ExchangeTestBase):
    def test_match(self) -> None:
        server, client, client_final = self.exchange(
            "alice",
            "correct horse",
            SCRAM_SHA_256_PLUS,
            (CB_NAME, CB_DATA),
            (CB_NAME, CB_DATA),
        )
        client.verify(server.final(client_final))
        self.assertTrue(server.authenticated)

    def test_mismatch(self) -> None:
        """
        A handshake relayed through a man in the middle with another certificate fails.
        """
        server, client, client_final = self.exchange(
            "alice",
            "correct horse",
            SCRAM_SHA_256_PLUS,
            (CB_NAME, CB_DATA),
            (CB_NAME, OTHER_CB_DATA),
        )
        e = self.assertRaises(AuthFailed, server.final, client_final)
        self.assertIn("channel binding", e.reason)
        self.assertIs(e.known_user, True)

    def test_plus_client_on_plain_mechanism(self) -> None:
        """
        A client asking for channel binding under SCRAM-SHA-256 is refused at first.
        """
        server = ServerExchange(self.store, SCRAM_SHA_256, (CB_NAME, CB_DATA))
        client = ClientExchange("alice", "correct horse", SCRAM_SHA_256_PLUS, (CB_NAME, CB_DATA))
        e = self.assertRaises(AuthFailed, server.first, client.first())
        self.assertIn("channel binding", e.reason)

    def test_plus_client_on_plain_server_without_tls(self) -> None:
        server = ServerExchange(self.store, SCRAM_SHA_256)
        client = ClientExchange("alice", "correct horse", SCRAM_SHA_256_PLUS, (CB_NAME, CB_DATA))
        self.assertRaises(AuthFailed, server.first, client.first())

    def test_plain_client_on_plus_mechanism(self) -> None:
        server = ServerExchange(self.store, SCRAM_SHA_256_PLUS, (CB_NAME, CB_DATA))
        client = ClientExchange("alice", "correct horse", SCRAM_SHA_256)
        self.assertRaises(AuthFailed, server.first, client.first())

    def test_downgrade_detected(self) -> None:
        """
        A client that could bind but was shown no PLUS offer (gs2 flag y) is refused by a
        server that does offer PLUS: someone stripped the offer.
        """
        server = ServerExchange(self.store, SCRAM_SHA_256, (CB_NAME, CB_DATA))
        client = ClientExchange("alice", "correct horse", SCRAM_SHA_256, (CB_NAME, CB_DATA))
        client_first = client.first()
        self.assertTrue(client_first.startswith("y,,"))
        self.assertRaises(AuthFailed, server.first, client_first)

    def test_y_flag_without_tls_accepted(self) -> None:
        server, client, client_final = self.exchange(
            "alice", "correct horse", SCRAM_SHA_256, None, (CB_NAME, CB_DATA)
        )
        client.verify(server.final(client_final))

    def test_wrong_binding_type(self) -> None:
        server = ServerExchange(self.store, SCRAM_SHA_256_PLUS, (CB_NAME, CB_DATA))
        client = ClientExchange("alice", "x", SCRAM_SHA_256_PLUS, ("tls-unique", CB_DATA))
        self.assertRaises(AuthFailed, server.first, client.first())

    def test_tampered_binding_in_client_final(self) -> None:
        server, client, client_final = self.exchange(
            "alice", "correct horse", SCRAM_SHA_256_PLUS, (CB_NAME, CB_DATA), (CB_NAME, CB_DATA)
        )
        self.assertRaises(AuthFailed, server.final, replace_field(client_final, "c", "biws"))


class ConstructorTests(unittest.TestCase):
    def test_unknown_mechanism(self) -> None:
        self.assertRaises(ValueError, ServerExchange, make_store(), "SCRAM-SHA-1")
        self.assertRaises(ValueError, ClientExchange, "a", "b", "PLAIN")

    def test_plus_needs_binding(self) -> None:
        self.assertRaises(ValueError, ServerExchange, make_store(), SCRAM_SHA_256_PLUS)
        self.assertRaises(ValueError, ClientExchange, "a", "b", SCRAM_SHA_256_PLUS)

    def test_empty_binding_data(self) -> None:
        self.assertRaises(
            ValueError, ServerExchange, make_store(), SCRAM_SHA_256_PLUS, (CB_NAME, b"")
        )

    def test_unknown_binding_type(self) -> None:
        self.assertRaises(
            ValueError, ServerExchange, make_store(), SCRAM_SHA_256_PLUS, ("tls-exporter", b"x")
        )

    def test_client_bad_password(self) -> None:
        self.assertRaises(ValueError, ClientExchange, "alice", "pw\x00")

    def test_client_empty_username(self) -> None:
        self.assertRaises(ValueError, ClientExchange, "", "pw")


class WireTests(unittest.TestCase):
    def test_round_trip(self) -> None:
        message = "n,,n=alice,r=abc\u00e9"
        self.assertEqual(scram.decode_wire(scram.encode_wire(message)), message)

    def test_encode(self) -> None:
        self.assertEqual(scram.encode_wire("n,,n=a,r=b"), b"biwsbj1hLHI9Yg==")

    def test_invalid_character(self) -> None:
        self.assertRaises(ValueError, scram.decode_wire, b"biws*j1hLHI9Yg==")

    def test_missing_padding(self) -> None:
        self.assertRaises(ValueError, scram.decode_wire, b"biwsbj1hLHI9Yg")

    def test_data_after_padding(self) -> None:
        self.assertRaises(ValueError, scram.decode_wire, b"biwsbj1hLHI9Yg==biws")

    def test_non_canonical(self) -> None:
        self.assertRaises(ValueError, scram.decode_wire, b"QR==")

    def test_whitespace(self) -> None:
        self.assertRaises(ValueError, scram.decode_wire, b"biws bj1h")

    def test_trailing_newline(self) -> None:
        self.assertRaises(ValueError, scram.decode_wire, b"biwsbj1hLHI9Yg==\n")

    def test_empty(self) -> None:
        self.assertRaises(ValueError, scram.decode_wire, b"")

    def test_not_utf8(self) -> None:
        self.assertRaises(ValueError, scram.decode_wire, base64.b64encode(b"n,,n=\xff\xfe"))

    def test_over_long(self) -> None:
        token = base64.b64encode(b"a" * 1539)
        self.assertEqual(len(token), 2052)
        self.assertRaises(ValueError, scram.decode_wire, token)

    def test_longest_accepted(self) -> None:
        token = base64.b64encode(b"a" * 1536)
        self.assertEqual(len(token), scram.MAX_WIRE_TOKEN)
        self.assertEqual(scram.decode_wire(token), "a" * 1536)

    def test_not_bytes(self) -> None:
        self.assertRaises(ValueError, scram.decode_wire, "biws")  # type: ignore[arg-type]

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=3000))
    def test_arbitrary_bytes(self, token: bytes) -> None:
        try:
            scram.decode_wire(token)
        except ValueError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=1500))
    def test_arbitrary_base64(self, payload: bytes) -> None:
        token = base64.b64encode(payload)
        try:
            self.assertEqual(scram.decode_wire(token).encode(), payload)
        except ValueError:
            if payload:
                self.assertRaises(UnicodeDecodeError, payload.decode, "utf-8")


class ServerFuzzTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=300), st.text(max_size=300))
    def test_arbitrary_messages(self, first: str, final: str) -> None:
        server = ServerExchange(make_store())
        try:
            server.first(first)
            server.final(final)
        except AuthFailed:
            pass
        self.assertFalse(server.authenticated)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.sampled_from(["n", "y", "p=tls-server-end-point", ",", "n=", "r=", "a=", "=2C"])
            | st.text(max_size=8),
            max_size=10,
        )
    )
    def test_near_valid_client_first(self, pieces: list[str]) -> None:
        server = ServerExchange(make_store(), SCRAM_SHA_256_PLUS, (CB_NAME, CB_DATA))
        try:
            server.first("".join(pieces))
        except AuthFailed:
            pass


class ClientKeysTests(ExchangeTestBase):
    """
    The client derives its keys once per password, salt and iteration count.
    """

    def login(self, keys: scram.ClientKeys, username: str = "alice") -> None:
        server = ServerExchange(self.store)
        client = ClientExchange(username, "correct horse", keys=keys)
        client.verify(server.final(client.final(server.first(client.first()))))
        self.assertTrue(client.verified)

    def test_second_login_runs_no_pbkdf2(self) -> None:
        """
        Logins that share one L{ClientKeys} run PBKDF2 once for the same salt and count.
        """
        keys = scram.ClientKeys()
        for _ in range(3):
            self.login(keys)
        self.assertEqual(keys.derivations, 1)

    def test_each_verifier_has_its_own_keys_and_the_cache_is_bounded(self) -> None:
        """
        Another salt means another derivation (a changed verifier still logs in), and at
        most C{MAX_ENTRIES} salts are kept, the oldest dropped first.
        """
        keys = scram.ClientKeys()
        names = [f"user{i}" for i in range(scram.ClientKeys.MAX_ENTRIES + 1)]
        self.store = UserStore.from_records([make_record(n, "correct horse") for n in names])
        for name in names:
            self.login(keys, name)
        self.assertEqual(keys.derivations, len(names))
        self.assertEqual(len(keys._keys), scram.ClientKeys.MAX_ENTRIES)
        self.login(keys, names[-1])
        self.assertEqual(keys.derivations, len(names))
        self.login(keys, names[0])
        self.assertEqual(keys.derivations, len(names) + 1)

    def test_messages_match_scramp_computed_from_the_password(self) -> None:
        """
        The client-final-message is, byte for byte, what scramp's own client computes from
        the password for the same nonce and server-first-message, with and without channel
        binding, from a cold and from a warm cache.
        """
        from scramp import ScramClient

        keys = scram.ClientKeys()
        for mechanism, cb in (
            (SCRAM_SHA_256, None),
            (SCRAM_SHA_256, (CB_NAME, CB_DATA)),
            (SCRAM_SHA_256_PLUS, (CB_NAME, CB_DATA)),
        ):
            for _ in range(2):
                ours = ClientExchange("alice", "correct horse", mechanism, cb, keys=keys)
                first = ours.first()
                nonce = fields(first.split(",", 2)[2])["r"]
                theirs = ScramClient([mechanism], "alice", "correct horse", cb, c_nonce=nonce)
                self.assertEqual(first, theirs.get_client_first())
                server_cb = cb if mechanism == SCRAM_SHA_256_PLUS else None
                server_first = ServerExchange(self.store, mechanism, server_cb).first(first)
                theirs.set_server_first(server_first)
                self.assertEqual(ours.final(server_first), theirs.get_client_final())

    def client_final_for(self, server_first_fields: str) -> AuthFailed | str:
        client = ClientExchange("alice", "correct horse")
        nonce = fields(client.first().split(",", 2)[2])["r"]
        message = server_first_fields.format(nonce=nonce)
        try:
            return client.final(message)
        except AuthFailed as e:
            return e

    def test_salt_and_iteration_bounds_from_a_hostile_server(self) -> None:
        """
        A hostile server's salt of 11 bytes, an iteration count of 4095 or 10,000,001, a
        leading zero, an unknown mandatory extension or attributes out of order end the
        exchange before any PBKDF2; 12 bytes and 4096 are accepted.
        """
        salt11 = base64.b64encode(b"s" * 11).decode()
        salt12 = base64.b64encode(b"s" * 12).decode()
        refused = [
            "r={nonce}x,s=" + salt11 + ",i=4096",
            "r={nonce}x,s=" + salt12 + ",i=4095",
            "r={nonce}x,s=" + salt12 + ",i=10000001",
            "r={nonce}x,s=" + salt12 + ",i=04096",
            "r={nonce}x,s=" + salt12 + ",i=4096.0",
            "m=ext,r={nonce}x,s=" + salt12 + ",i=4096",
            "s=" + salt12 + ",r={nonce}x,i=4096",
            "r={nonce}x,s=not*base64,i=4096",
            "r={nonce}x\x7f,s=" + salt12 + ",i=4096",
        ]
        for message in refused:
            with self.subTest(message=message):
                self.assertIsInstance(self.client_final_for(message), AuthFailed)
        accepted = self.client_final_for("r={nonce}x,s=" + salt12 + ",i=4096,q=later")
        self.assertIsInstance(accepted, str)

    def test_server_final_error_and_malformed(self) -> None:
        """
        C{e=...}, a missing C{v=}, a non-base64 or a wrong signature all fail verification.
        """
        for bad in (
            "e=invalid-proof",
            "x=1",
            "v=!!!",
            "v=" + base64.b64encode(b"0" * 32).decode(),
        ):
            server, client, client_final = self.exchange("alice", "correct horse")
            server.final(client_final)
            with self.subTest(message=bad):
                self.assertRaises(AuthFailed, client.verify, bad)
                self.assertFalse(client.verified)


class SlowDerivationTests(unittest.TestCase):
    """
    L{ClientExchange.slow_derivation}: which server-first-messages need PBKDF2 in a thread,
    and the keys it derives kept in the cache for L{ClientExchange.final}.
    """

    SALT = b"s" * 16
    SLOW = "r={nonce}x,s=" + base64.b64encode(SALT).decode() + f",i={THREAD_ITERATIONS + 1}"

    def started(self, keys: ClientKeys) -> tuple[ClientExchange, str]:
        client = ClientExchange("alice", "correct horse", keys=keys)
        nonce = fields(client.first().split(",", 2)[2])["r"]
        return client, self.SLOW.format(nonce=nonce)

    def test_derived_keys_are_cached_for_final_and_the_next_login(self) -> None:
        """
        The function returned derives the keys PBKDF2 would (L{final} then runs no PBKDF2
        of its own), and the next exchange with the same cache needs no thread.
        """
        keys = ClientKeys()
        client, message = self.started(keys)
        pending = client.slow_derivation(message)
        assert pending is not None
        self.assertEqual((pending.salt, pending.iterations), (self.SALT, THREAD_ITERATIONS + 1))
        keys.keep(pending.salt, pending.iterations, pending.derive())
        self.assertTrue(keys.holds(self.SALT, THREAD_ITERATIONS + 1))
        self.assertEqual(keys.derivations, 1)
        client.final(message)
        self.assertEqual(keys.derivations, 1)
        self.assertEqual(
            keys.keys_for("correct horse", self.SALT, THREAD_ITERATIONS + 1),
            scram.derive_keys("correct horse", self.SALT, THREAD_ITERATIONS + 1),
        )
        again, message = self.started(keys)
        self.assertIsNone(again.slow_derivation(message))

    def test_what_final_refuses_is_left_to_final(self) -> None:
        """
        A malformed, over-long or out-of-order message needs no thread: L{final} refuses it.
        """
        client, message = self.started(ClientKeys())
        for bad in ("r=short,s=AAAA,i=99999999", message + "," + "q" * 5000):
            with self.subTest(message=bad[:40]):
                self.assertIsNone(client.slow_derivation(bad))
        fresh = ClientExchange("alice", "correct horse")
        self.assertIsNone(fresh.slow_derivation(message))  # before first()

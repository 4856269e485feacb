# -*- test-case-name: tests.test_scram -*-
"""
SCRAM-SHA-256 sessions (RFC 5802, RFC 7677): the server side over scramp, the client side
here, with a cache of the keys it derives from its password.

The gateway drives a L{ServerExchange} with the messages of the C{AUTH}/C{CONT} lines, the
client a L{ClientExchange}; both sides prove themselves and the password never crosses the
wire. L{decode_wire}/L{encode_wire} carry the messages as strict base64 in one line argument.
Channel binding data (C{SCRAM-SHA-256-PLUS}) comes from the TLS layer as opaque bytes
(L{netguard.tls.channel_binding_for}). The exchange on the wire: C{docs/protocol.md}.
"""

from __future__ import annotations

import base64
import binascii
import collections
import enum
import hashlib
import hmac
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
from scramp import ScramException, ScramMechanism
from scramp.utils import ServerError, saslprep

from netguard.auth.users import MAX_ITERATIONS, MIN_ITERATIONS, MIN_SALT_BYTES

if TYPE_CHECKING:
    from netguard.auth.users import UserStore

#: SCRAM-SHA-256 without channel binding.
SCRAM_SHA_256 = "SCRAM-SHA-256"

#: SCRAM-SHA-256 with channel binding (use with C{tls-server-end-point} data).
SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS"

#: The mechanisms this module speaks.
MECHANISMS = (SCRAM_SHA_256, SCRAM_SHA_256_PLUS)

#: The longest base64 token L{decode_wire} accepts, in bytes.
MAX_WIRE_TOKEN = 2048

#: The longest SCRAM message the exchanges accept, in characters (a decoded maximal token).
MAX_MESSAGE_CHARS = MAX_WIRE_TOKEN * 3 // 4

_CAUGHT = (ScramException, ValueError, UnicodeError)


class AuthFailed(Exception):
    """
    A SCRAM exchange failed. The peer is told only that authentication failed
    (C{AUTH_FAILED}); nothing else escapes the exchanges' methods. Unknown users are given the
    store's mock verifier (L{UserStore.auth_info}), so their exchange looks like any other and
    fails only at the proof, like a wrong password.

    @ivar reason: why, for the operator's log only (escape it: it may carry peer text).
    @ivar known_user: whether the name was a known user; L{None} when no name was read.
    """

    def __init__(self, reason: str, known_user: bool | None = None) -> None:
        """
        @param reason: why the exchange failed.
        @param known_user: whether the name was a known user, if known.
        """
        super().__init__(reason)
        self.reason = reason
        self.known_user = known_user


def decode_wire(token: bytes) -> str:
    """
    Decode the base64 argument of an C{AUTH} or C{CONT} line into a SCRAM message.

    @param token: the argument, as received.
    @return: the message text.
    @raise ValueError: if the token is empty, longer than L{MAX_WIRE_TOKEN} bytes, not
        canonical strict base64, or does not decode to UTF-8 text (the caller answers
        C{BAD_SYNTAX}).
    """
    if not isinstance(token, bytes):
        raise ValueError("the token must be bytes")
    if len(token) > MAX_WIRE_TOKEN:
        raise ValueError(f"token longer than {MAX_WIRE_TOKEN} bytes")
    if not token:
        raise ValueError("empty token")
    try:
        raw = binascii.a2b_base64(token, strict_mode=True)
    except binascii.Error:
        raise ValueError("token is not valid base64") from None
    if binascii.b2a_base64(raw, newline=False) != token:
        raise ValueError("token is not canonical base64")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("token is not UTF-8 text") from None


def encode_wire(message: str) -> bytes:
    """
    Encode a SCRAM message as the base64 argument of a line.

    @param message: the message text.
    @return: its UTF-8 bytes in base64, without a newline.
    """
    return binascii.b2a_base64(message.encode("utf-8"), newline=False)


#: Random bytes in each side's part of a nonce: 144 bits, as PostgreSQL's SCRAM uses
#: (C{SCRAM_RAW_NONCE_LEN}); a nonce only has to be fresh and unpredictable.
NONCE_BYTES = 18


def new_nonce() -> str:
    """
    One side's part of a SCRAM nonce: L{NONCE_BYTES} random bytes in base64, 24 printable
    characters without a comma (RFC 5802 section 5.1). scramp's default is 64 hex
    characters, which it checks character by character in three messages of every exchange;
    the shorter one carries more randomness per character.
    """
    return base64.b64encode(os.urandom(NONCE_BYTES)).decode("ascii")


def _check_mechanism(mechanism: str, channel_binding: tuple[str, bytes] | None) -> None:
    if mechanism not in MECHANISMS:
        raise ValueError(f"unsupported mechanism; use one of {', '.join(MECHANISMS)}")
    if mechanism == SCRAM_SHA_256_PLUS and channel_binding is None:
        raise ValueError(f"{SCRAM_SHA_256_PLUS} needs channel-binding data")
    if channel_binding is not None:
        name, data = channel_binding
        if not isinstance(name, str) or not isinstance(data, bytes) or not data:
            raise ValueError("channel binding must be (type name, non-empty bytes)")


class _Step(enum.Enum):
    FIRST = "first"
    FINAL = "final"
    VERIFY = "verify"
    DONE = "done"
    FAILED = "failed"


class _Exchange:
    """
    What both sides of an exchange share: the mechanism they run.
    """

    _mechanism: str
    _step: _Step

    def _fail(self, reason: str) -> AuthFailed:
        raise NotImplementedError

    def _enter(self, step: _Step, message: object = "") -> None:
        """
        Check that C{step} comes next and C{message} is bounded text; until the step
        succeeds the exchange counts as failed (a failure midway cannot be resumed).
        """
        if self._step is not step:
            raise self._fail(
                f"{step.value} called out of order (exchange is at {self._step.value})"
            )
        if not isinstance(message, str):
            raise self._fail("the message must be text")
        if len(message) > MAX_MESSAGE_CHARS:
            raise self._fail(f"message longer than {MAX_MESSAGE_CHARS} characters")
        self._step = _Step.FAILED

    @property
    def mechanism(self) -> str:
        """
        @return: the mechanism of this exchange.
        """
        return self._mechanism


class ServerExchange(_Exchange):
    """
    The server side of one SCRAM-SHA-256(-PLUS) exchange.

    Call L{first} with the client-first-message, send back what it returns, then call
    L{final} with the client-final-message and send back what it returns: the user is then
    authenticated as L{username}. Any failure, including a call out of order, raises
    L{AuthFailed}, after which the exchange is dead.

    @ivar username: the (SASLprep-normalised) name the client gave, once L{first} read it;
        peer-chosen text, so escape it before logging.
    @ivar known_user: whether that name is in the store.
    @ivar authenticated: true once L{final} has succeeded.
    """

    def __init__(
        self,
        store: UserStore,
        mechanism: str = SCRAM_SHA_256,
        channel_binding: tuple[str, bytes] | None = None,
    ) -> None:
        """
        @param store: the verifiers.
        @param mechanism: the mechanism the client chose (C{AUTH <mechanism>}).
        @param channel_binding: on a TLS connection, C{("tls-server-end-point", data)} from
            L{netguard.tls.channel_binding_for} on our side; required for
            C{SCRAM-SHA-256-PLUS}.
            Pass it for C{SCRAM-SHA-256} too whenever the connection is TLS (and PLUS is
            offered): a client that claims it could bind but saw no PLUS offer (gs2 flag
            C{y}) is then refused as a downgrade, as RFC 5802 asks.
        @raise ValueError: for an unsupported mechanism, or C{SCRAM-SHA-256-PLUS} without
            channel-binding data, or malformed channel-binding data (programming errors, not
            client errors: check the client's mechanism against the offer first).
        """
        _check_mechanism(mechanism, channel_binding)
        self._store = store
        self._mechanism = mechanism
        self.username: str | None = None
        self.known_user = False
        #: The verifier the exchange checks the proof against (a known user's), once read.
        self.verifier: tuple[bytes, bytes, bytes, int] | None = None
        self.authenticated = False
        self._step = _Step.FIRST
        try:
            self._server = ScramMechanism(mechanism).make_server(
                self._auth_fn, channel_binding=channel_binding, s_nonce=new_nonce()
            )
        except ScramException as e:
            raise ValueError(f"cannot start {mechanism}: {e.args[0]}") from None

    def _auth_fn(self, name: str) -> tuple[bytes, bytes, bytes, int]:
        self.username = name
        self.known_user = self._store.lookup(name) is not None
        info = self._store.auth_info(name)
        self.verifier = info if self.known_user else None
        return info

    def _fail(self, reason: str) -> AuthFailed:
        self._step = _Step.FAILED
        return AuthFailed(reason, self.known_user if self.username is not None else None)

    def first(self, client_first: str) -> str:
        """
        Read the client-first-message and answer with the server-first-message.

        @param client_first: the decoded client-first-message.
        @return: the server-first-message (nonce, salt, iteration count).
        @raise AuthFailed: if the message is malformed, asks for something this exchange
            does not do (channel binding on a mechanism without it, an authzid, extensions),
            or this is not the first call.
        """
        self._enter(_Step.FIRST, client_first)
        if self._mechanism == SCRAM_SHA_256 and client_first.startswith("p="):
            raise self._fail(f"client asked for channel binding with {SCRAM_SHA_256}")
        try:
            self._server.set_client_first(client_first)
            server_first: str = self._server.get_server_first()
        except _CAUGHT as e:
            raise self._fail(f"bad client-first-message: {e}") from None
        self._step = _Step.FINAL
        return server_first

    def final(self, client_final: str) -> str:
        """
        Check the client's proof and answer with the server-final-message.

        @param client_final: the decoded client-final-message.
        @return: the server-final-message C{v=<server signature>}.
        @raise AuthFailed: for a wrong proof (wrong password or unknown user), a nonce or
            channel-binding mismatch, a malformed message, or a call out of order.
        """
        self._enter(_Step.FINAL, client_final)
        try:
            self._server.set_client_final(client_final)
            server_final: str = self._server.get_server_final()
        except _CAUGHT as e:
            wrong_proof = (
                isinstance(e, ScramException) and e.server_error is ServerError.INVALID_PROOF
            )
            if not self.known_user:
                raise self._fail("unknown user" if wrong_proof else f"unknown user; {e}") from None
            raise self._fail("wrong password" if wrong_proof else str(e)) from None
        if not self.known_user:
            # Unreachable with a sound mock verifier; never let one through.
            raise self._fail("unknown user")
        self._step = _Step.DONE
        self.authenticated = True
        return server_final


#: Iteration counts above this are derived in a thread by the client (L{ClientExchange.
#: slow_derivation}): about 10 ms of PBKDF2 on a current core. The shipped count (4096)
#: is derived inline.
THREAD_ITERATIONS = 50_000


@attrs.frozen
class PendingKeys:
    """
    Keys a client must derive before it can answer: for C{salt} and C{iterations}, by
    calling C{derive} (pure, safe in a thread), then kept with L{ClientKeys.keep}.
    """

    salt: bytes
    iterations: int
    derive: Callable[[], tuple[bytes, bytes]] = attrs.field(repr=False)


class ClientKeys:
    """
    A client's cache of the keys it derives from its password: per salt and iteration count,
    the ClientKey and ServerKey (RFC 5802 section 3), so that PBKDF2 runs once per password,
    salt and count instead of once per login (RFC 5802 section 5.1 allows a client to cache
    them). A client that logs in often, such as the tunnel, keeps one for its credentials.

    The keys are as good as the password for this server (they let their holder log in
    and tell the real server from an impostor), so they live only in this object; at most
    L{MAX_ENTRIES} of them, the oldest dropped first (a gateway's verifier has one salt; a
    changed verifier brings a new one).
    """

    #: How many (salt, iteration count) pairs are kept.
    MAX_ENTRIES = 4

    def __init__(self) -> None:
        self._keys: collections.OrderedDict[tuple[bytes, int], tuple[bytes, bytes]] = (
            collections.OrderedDict()
        )
        #: How many times PBKDF2 ran (for tests and metrics).
        self.derivations = 0

    def keys_for(self, password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
        """
        @param password: the SASLprep-normalised password.
        @return: (ClientKey, ServerKey) for C{password} with C{salt} and C{iterations}.
        """
        key = (salt, iterations)
        found = self._keys.get(key)
        if found is not None:
            self._keys.move_to_end(key)
            return found
        found = derive_keys(password, salt, iterations)
        self.keep(salt, iterations, found)
        return found

    def holds(self, salt: bytes, iterations: int) -> bool:
        """
        @return: whether the keys for C{salt} and C{iterations} are cached.
        """
        return (salt, iterations) in self._keys

    def keep(self, salt: bytes, iterations: int, keys: tuple[bytes, bytes]) -> None:
        """
        Cache C{keys}, derived (L{derive_keys}) for C{salt} and C{iterations}, dropping the
        oldest beyond L{MAX_ENTRIES}.
        """
        self.derivations += 1
        self._keys[salt, iterations] = keys
        self._keys.move_to_end((salt, iterations))
        while len(self._keys) > self.MAX_ENTRIES:
            self._keys.popitem(last=False)


def derive_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """
    PBKDF2 (RFC 5802 C{Hi}) and the two keys of RFC 5802 section 3: a pure function, safe to
    run in a thread (C{hashlib} releases the GIL while it iterates).

    @param password: the SASLprep-normalised password.
    @return: (ClientKey, ServerKey).
    """
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return (
        hmac.new(salted, b"Client Key", hashlib.sha256).digest(),
        hmac.new(salted, b"Server Key", hashlib.sha256).digest(),
    )


def _escape_name(name: str) -> str:
    """
    A SASLprep-normalised user name as a C{saslname} (RFC 5802 section 5.1).
    """
    return name.replace("=", "=3D").replace(",", "=2C")


def _attributes(message: str, what: str) -> list[tuple[str, str]]:
    """
    Split a SCRAM message into its C{letter=value} attributes, in order.

    @raise ValueError: if an attribute is not a letter, C{=} and a value.
    """
    out = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=" or not ("a" <= part[0] <= "z" or "A" <= part[0] <= "Z"):
            raise ValueError(f"malformed {what}")
        out.append((part[0], part[2:]))
    return out


def _nonce_ok(nonce: str) -> bool:
    return bool(nonce) and all("\x21" <= c <= "\x7e" for c in nonce) and "," not in nonce


class ClientExchange(_Exchange):
    """
    The client side of one SCRAM-SHA-256(-PLUS) exchange, with mutual authentication.

    Send L{first}, feed the server's answer to L{final} and send its result, then check the
    server's last message with L{verify}: only then is the server proven to know the
    verifier. Any failure raises L{AuthFailed}, after which the exchange is dead.

    The messages are built and checked here (RFC 5802 section 7: the server's nonce must
    extend ours, the salt must be base64 of at least 12 bytes, the iteration count an integer
    within the range the gateway's users file allows, so a hostile server cannot make the
    client run PBKDF2 for hours; an unknown mandatory extension or an error ends the
    exchange); the keys come from a L{ClientKeys} cache when one is given, so PBKDF2 runs
    once per password, salt and count rather than once per login. The server side
    (L{ServerExchange}) is scramp's.

    @ivar verified: true once L{verify} has succeeded.
    """

    def __init__(
        self,
        username: str,
        password: str,
        mechanism: str = SCRAM_SHA_256,
        channel_binding: tuple[str, bytes] | None = None,
        keys: ClientKeys | None = None,
    ) -> None:
        """
        @param username: the user name.
        @param password: the password; it stays in memory only as long as this object.
        @param mechanism: C{SCRAM-SHA-256} or C{SCRAM-SHA-256-PLUS}.
        @param channel_binding: C{("tls-server-end-point", data)} computed from the server
            certificate the client saw; required for PLUS. With plain C{SCRAM-SHA-256} give
            it only when the connection is TLS but the server did not offer PLUS (the client
            then says it could have bound, and a server that did offer PLUS refuses).
        @param keys: the cache of derived keys to use (and fill); a fresh one when L{None}.
        @raise ValueError: for an unsupported mechanism, missing or malformed channel-binding
            data, or a user name or password that SASLprep refuses.
        """
        _check_mechanism(mechanism, channel_binding)
        self._mechanism = mechanism
        self.verified = False
        self._step = _Step.FIRST
        try:
            self._username = saslprep(username)
            self._password = saslprep(password)
        except ScramException as e:
            raise ValueError(f"cannot start {mechanism}: {e.args[0]}") from None
        if not self._username:
            raise ValueError(f"cannot start {mechanism}: empty user name")
        self._keys = keys if keys is not None else ClientKeys()
        if mechanism == SCRAM_SHA_256_PLUS:
            assert channel_binding is not None
            self._gs2_header = f"p={channel_binding[0]},,"
            self._cbind_data = channel_binding[1]
        else:
            self._gs2_header = "y,," if channel_binding is not None else "n,,"
            self._cbind_data = b""
        self._nonce = new_nonce()
        self._first_bare = f"n={_escape_name(self._username)},r={self._nonce}"
        self._server_signature = b""

    def _fail(self, reason: str) -> AuthFailed:
        self._step = _Step.FAILED
        return AuthFailed(reason)

    def first(self) -> str:
        """
        @return: the client-first-message.
        @raise AuthFailed: if this is not the first call.
        """
        self._enter(_Step.FIRST)
        self._step = _Step.FINAL
        return self._gs2_header + self._first_bare

    def slow_derivation(self, server_first: str) -> PendingKeys | None:
        """
        Whether L{final} for C{server_first} would run PBKDF2 long enough to stall the
        caller's reactor: more than L{THREAD_ITERATIONS} iterations, with keys not cached.
        The caller then has the keys derived off the reactor into this exchange's cache
        (L{PendingKeys}) before calling L{final}, which finds them there.

        @return: what to derive, or L{None} when L{final} is quick (nothing is checked here
            that L{final} does not check again).
        """
        if (
            self._step is not _Step.FINAL
            or not isinstance(server_first, str)
            or len(server_first) > MAX_MESSAGE_CHARS
        ):
            return None
        try:
            _, salt, iterations = self._read_server_first(server_first)
        except ValueError:
            return None
        if iterations <= THREAD_ITERATIONS or self._keys.holds(salt, iterations):
            return None
        password = self._password
        return PendingKeys(salt, iterations, lambda: derive_keys(password, salt, iterations))

    @property
    def keys(self) -> ClientKeys:
        """
        @return: the cache this exchange takes its keys from.
        """
        return self._keys

    def final(self, server_first: str) -> str:
        """
        Read the server-first-message and compute the proof.

        @param server_first: the decoded server-first-message.
        @return: the client-final-message.
        @raise AuthFailed: if the message is malformed, carries an error, does not extend our
            nonce, names an iteration count outside 4096..10,000,000, or the call is out of
            order.
        """
        self._enter(_Step.FINAL, server_first)
        try:
            nonce, salt, iterations = self._read_server_first(server_first)
        except ValueError as e:
            raise self._fail(f"bad server-first-message: {e}") from None
        client_key, server_key = self._keys.keys_for(self._password, salt, iterations)
        cbind = base64.b64encode(self._gs2_header.encode("utf-8") + self._cbind_data)
        without_proof = f"c={cbind.decode('ascii')},r={nonce}"
        auth_message = f"{self._first_bare},{server_first},{without_proof}".encode()
        stored_key = hashlib.sha256(client_key).digest()
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        self._step = _Step.VERIFY
        return f"{without_proof},p={base64.b64encode(proof).decode('ascii')}"

    def _read_server_first(self, message: str) -> tuple[str, bytes, int]:
        """
        @return: the combined nonce, the salt and the iteration count.
        @raise ValueError: for anything RFC 5802 or netguard's bounds do not allow.
        """
        attributes = _attributes(message, "server-first-message")
        if attributes[0][0] == "e":
            raise ValueError(f"the server answered with error {attributes[0][1][:64]!r}")
        if attributes[0][0] == "m":
            raise ValueError("the server asked for an extension this client does not know")
        if len(attributes) < 3 or [name for name, _ in attributes[:3]] != ["r", "s", "i"]:
            raise ValueError("expected r=, s= and i=, in that order")
        nonce, salt_text, count = (value for _, value in attributes[:3])
        if not _nonce_ok(nonce):
            raise ValueError("the nonce has characters SCRAM does not allow")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ValueError("the server's nonce does not extend ours")
        try:
            salt = base64.b64decode(salt_text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeError):
            raise ValueError("the salt is not base64") from None
        if len(salt) < MIN_SALT_BYTES:
            raise ValueError(f"a salt shorter than {MIN_SALT_BYTES} bytes")
        if not (count.isascii() and count.isdigit()) or count.startswith("0"):
            raise ValueError("the iteration count is not a positive integer")
        if len(count) > 9 or not MIN_ITERATIONS <= int(count) <= MAX_ITERATIONS:
            raise ValueError(f"an iteration count outside {MIN_ITERATIONS}..{MAX_ITERATIONS}")
        return nonce, salt, int(count)

    def verify(self, server_final: str) -> None:
        """
        Check the server's signature: the server proves it holds this user's verifier.

        @param server_final: the decoded server-final-message.
        @raise AuthFailed: if the signature is wrong, the server sent C{e=...}, the message
            is malformed, or the call is out of order.
        """
        self._enter(_Step.VERIFY, server_final)
        try:
            attributes = _attributes(server_final, "server-final-message")
        except ValueError as e:
            raise self._fail(f"server not verified: {e}") from None
        name, value = attributes[0]
        if name == "e":
            raise self._fail(f"server not verified: the server answered with error {value[:64]!r}")
        if name != "v":
            raise self._fail("server not verified: expected v=")
        try:
            signature = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeError):
            raise self._fail("server not verified: the signature is not base64") from None
        if not hmac.compare_digest(signature, self._server_signature):
            raise self._fail("server not verified: the server signature does not match")
        self._step = _Step.DONE
        self.verified = True

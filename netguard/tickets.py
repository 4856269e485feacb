# -*- test-case-name: tests.test_tickets -*-
"""
Returning-client tickets: opaque, single-use proofs of an earlier successful login that buy
a connection a place in admission's returning-client lane (never a login).

L{TicketBook} seals tickets with AES-256-GCM under a key kept in the state directory
(L{load_ticket_key}) and checks presented ones against the users store, the peer's address
block and a bounded table of spent ticket ids. The wire format and the reasoning:
C{docs/protocol.md} ("Returning-client tickets") and C{docs/operating.md}.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import heapq
import hmac
import ipaddress
import os
import re
import secrets
import struct
from typing import Any, Final, Protocol

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.defer import Deferred

from netguard.addresses import peer_ip
from netguard.secretfile import read_key_file, read_or_create_key, write_key_file

#: The key file in the state directory.
TICKET_KEY_FILE: Final = "ticket.key"
#: The keys a reload retired, newest first, beside it: tickets they sealed are revoked, not
#: forged, after a restart too.
RETIRED_KEY_FILE: Final = "ticket.key.old"
#: How many retired keys are kept (two rotations in a row still revoke, never forge).
MAX_RETIRED_KEYS: Final = 4
#: Seconds past a ticket's own lifetime during which presenting it is refused without an
#: offence (clocks of client and gateway differ; a wall-clock step).
EXPIRY_GRACE: Final = 60
#: AES-256: the key's length in bytes.
TICKET_KEY_BYTES: Final = 32
#: The first byte of every sealed ticket.
TICKET_VERSION: Final = 1
#: Bound to every ticket as associated data, so no other sealed blob of ours can pass.
TICKET_AAD: Final = b"netguard-ticket-v1"
#: A presented token longer than this (characters) is refused before any decoding.
MAX_TOKEN_LENGTH: Final = 512
#: Bounds of C{[tickets] lifetime} (seconds).
MIN_LIFETIME: Final = 60
MAX_LIFETIME: Final = 604800
#: The longest user name a ticket carries (UTF-8 bytes).
MAX_NAME_BYTES: Final = 255

_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_ID_BYTES: Final = 16
_FINGERPRINT_BYTES: Final = 8
#: issued (u64), lifetime (u32), id, verifier fingerprint.
_HEAD: Final = struct.Struct(f">QI{_ID_BYTES}s{_FINGERPRINT_BYTES}s")
_FAMILY_UNIX: Final = 0
_FAMILY_V4: Final = 4
_FAMILY_V6: Final = 6
_NETWORK_BYTES: Final = {_FAMILY_UNIX: 0, _FAMILY_V4: 4, _FAMILY_V6: 16}
_TOKEN_CHARS: Final = re.compile(rb"[A-Za-z0-9_-]+\Z")


def _in_range(low: int, high: int) -> Any:
    def check(_instance: object, attribute: Any, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{attribute.name} must be an integer from {low} to {high}")

    return check


def _in_seconds(low: float, high: float) -> Any:
    def check(_instance: object, attribute: Any, value: float) -> None:
        if not low <= value <= high:
            raise ValueError(f"{attribute.name} must be a number from {low:g} to {high:g}")

    return check


@attrs.frozen
class TicketSettings:
    """
    The C{[tickets]} table.

    @ivar enabled: issue and accept tickets (the greeting says C{TICKETS=1}).
    @ivar lifetime: seconds a ticket stays valid after it was issued.
    @ivar ipv4_prefix: the IPv4 prefix length of the address block a ticket is bound to.
    @ivar ipv6_prefix: the IPv6 prefix length of the address block a ticket is bound to.
    @ivar max_spent: spent ticket ids remembered until their tickets expire; when the table
        is full of unexpired ids, presented tickets buy no lane (fail closed).
    @ivar max_spent_per_user: at most this many of them per user: past it that user's
        tickets buy no lane until some expire (fail closed for that user alone).
    @ivar issue_rate: tickets issued per second per user, on average (a token bucket).
    @ivar issue_burst: tickets one user may be issued at once (the bucket's size); past the
        rate C{TICKET} is answered C{ERR BUSY ticket-rate}.
    @ivar lane_login_timeout: seconds a connection that entered the lane has to log in
        (else C{ERR TIMEOUT}); the handshake deadline still applies when nearer.
    """

    enabled: bool = True
    lifetime: int = attrs.field(default=3600, validator=_in_range(MIN_LIFETIME, MAX_LIFETIME))
    ipv4_prefix: int = attrs.field(default=24, validator=_in_range(8, 32))
    ipv6_prefix: int = attrs.field(default=48, validator=_in_range(16, 128))
    max_spent: int = attrs.field(default=65536, validator=_in_range(1, 16777216))
    max_spent_per_user: int = attrs.field(default=4096, validator=_in_range(1, 16777216))
    issue_rate: float = attrs.field(
        default=1.0, converter=float, validator=_in_seconds(0.001, 1000)
    )
    issue_burst: int = attrs.field(default=20, validator=_in_range(1, 10000))
    lane_login_timeout: float = attrs.field(
        default=10.0, converter=float, validator=_in_seconds(1, 3600)
    )


class Outcome(enum.Enum):
    """
    What a presented ticket is worth.
    """

    VALID = "valid"  # the lane may be entered
    SPENT_FULL = "spent-full"  # valid, but the spent table is full: no lane
    OTHER_BLOCK = "other-block"  # valid, presented from another address block: no lane
    FORGED = "forged"  # not one of ours (or sealed under a key no longer in force)
    UNREADABLE = "unreadable"  # too long, or not base64url
    EXPIRED = "expired"  # past its own lifetime and the grace
    LAPSED = "lapsed"  # past the lifetime now configured, or within the grace after its own
    REPLAYED = "replayed"  # its id was spent already
    REVOKED = "revoked"  # user gone, password changed, or key rotated by a reload


#: Outcomes that refuse the connection with C{ERR BAD_TICKET}.
REFUSED: Final = frozenset(
    {
        Outcome.FORGED,
        Outcome.UNREADABLE,
        Outcome.EXPIRED,
        Outcome.LAPSED,
        Outcome.REPLAYED,
        Outcome.REVOKED,
    }
)
#: Refused outcomes that are offences: only a forger or a replayer commits them (an honest
#: client drops a ticket once presented and once its own lifetime has passed, counted on a
#: clock that runs during suspend). A revoked or lapsed ticket is genuine: an honest client
#: holds one after a password change, a key rotation or a reload that lowered the lifetime.
OFFENCES: Final = frozenset(
    {Outcome.FORGED, Outcome.UNREADABLE, Outcome.EXPIRED, Outcome.REPLAYED}
)


@attrs.frozen
class TicketCheck:
    """
    The verdict on one presented ticket.

    @ivar outcome: the L{Outcome}.
    @ivar user: the user the ticket was issued to (when it opened), else L{None}.
    @ivar reason: a short printable reason, for C{ERR BAD_TICKET} and the log.
    @ivar ticket_id: a valid ticket's id (empty otherwise).
    @ivar expires: a valid ticket's expiry (0 otherwise).
    """

    outcome: Outcome
    user: str | None = None
    reason: str = ""
    ticket_id: bytes = b""
    expires: float = 0.0

    @property
    def refused(self) -> bool:
        """Whether the connection is refused with C{ERR BAD_TICKET}."""
        return self.outcome in REFUSED

    @property
    def offence(self) -> bool:
        """Whether presenting this ticket is an offence of its source."""
        return self.outcome in OFFENCES


class VerifierSource(Protocol):
    """
    What the book needs of the users store: the stored verifier of a name.
    """

    def lookup(self, name: str) -> Any:
        """
        @return: the user's record (with C{stored_key} and C{server_key}), or L{None}.
        """
        ...


class SpentClaims(Protocol):
    """
    Spent tickets shared with other processes (L{netguard.shared.state.SharedState}).
    """

    def claim_ticket(self, ticket_id: bytes, expires: float, now: float) -> Deferred[bool | None]:
        """
        Claim a ticket: C{True} first presentation, C{False} replay, L{None} unknown.
        """


class Clock(Protocol):
    """
    The part of L{twisted.internet.interfaces.IReactorTime} the book needs.
    """

    def seconds(self) -> float:
        """Wall-clock seconds."""
        ...


def load_ticket_key(state_dir: str) -> bytes:
    """
    The ticket key: C{<state_dir>/ticket.key}, 32 random bytes (mode 0600), created
    atomically when missing. Replacing or deleting it (then reloading) revokes every ticket.

    @raise ValueError: when it cannot be read or made, or is not a private 32-byte file.
    """
    return read_or_create_key(os.path.join(state_dir, TICKET_KEY_FILE), TICKET_KEY_BYTES)


def load_retired_keys(state_dir: str) -> tuple[bytes, ...]:
    """
    The ticket keys earlier reloads retired (C{<state_dir>/ticket.key.old}), newest first;
    none when the file is missing.

    @raise ValueError: when it cannot be read, is not ours and private, or is not a whole
        number of keys (at most L{MAX_RETIRED_KEYS}).
    """
    path = os.path.join(state_dir, RETIRED_KEY_FILE)
    data = read_key_file(path, TICKET_KEY_BYTES * MAX_RETIRED_KEYS)
    if data is None:
        return ()
    if not data or len(data) % TICKET_KEY_BYTES:
        raise ValueError(f"{path}: not a list of {TICKET_KEY_BYTES}-byte keys; delete it")
    return tuple(data[at : at + TICKET_KEY_BYTES] for at in range(0, len(data), TICKET_KEY_BYTES))


def save_retired_keys(state_dir: str, keys: tuple[bytes, ...]) -> None:
    """
    Keep the retired keys (newest first, at most L{MAX_RETIRED_KEYS}) in
    C{<state_dir>/ticket.key.old}: written whole under a temporary name (mode 0600), synced,
    renamed into place, and the directory synced.

    @raise ValueError: when it cannot be written.
    """
    kept = keys[:MAX_RETIRED_KEYS]
    write_key_file(os.path.join(state_dir, RETIRED_KEY_FILE), b"".join(kept))


def retire_key(old: bytes, retired: tuple[bytes, ...], new: bytes) -> tuple[bytes, ...]:
    """
    The retired keys after C{old} was replaced by C{new}: C{old} first, then the earlier
    ones, none equal to C{new}, at most L{MAX_RETIRED_KEYS}.
    """
    kept = [old, *(key for key in retired if key != old)]
    return tuple(key for key in kept if not hmac.compare_digest(key, new))[:MAX_RETIRED_KEYS]


def verifier_fingerprint(record: Any) -> bytes:
    """
    The first 8 bytes of SHA-256 over a user's stored key and server key: a password change
    changes it (and so revokes the user's tickets).
    """
    digest = hashlib.sha256(bytes(record.stored_key) + bytes(record.server_key)).digest()
    return digest[:_FINGERPRINT_BYTES]


def address_block(address: object, settings: TicketSettings) -> bytes | None:
    """
    The address block a peer address belongs to, encoded as a ticket holds it: the family
    (C{0} unix, C{4}, C{6}), the masked network bytes, the prefix length. An IPv4-mapped
    IPv6 address counts as the IPv4 address it maps.

    @param address: a Twisted address (C{IPv4Address}, C{IPv6Address}, C{UNIXAddress}).
    @return: the block, or L{None} for an address of another kind.
    """
    host = getattr(address, "host", None)
    if isinstance(host, str):
        ip = peer_ip(host)
        if ip is None:
            return None
        if isinstance(ip, ipaddress.IPv4Address):
            prefix, family = settings.ipv4_prefix, _FAMILY_V4
        else:
            prefix, family = settings.ipv6_prefix, _FAMILY_V6
        network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
        return bytes((family,)) + network.network_address.packed + bytes((prefix,))
    if type(address).__name__ == "UNIXAddress":
        return bytes((_FAMILY_UNIX, 0))
    return None


def _encode(blob: bytes) -> str:
    return base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii")


def _decode(token: bytes) -> bytes | None:
    """
    The bytes of a canonical unpadded base64url token, or L{None}.
    """
    if not _TOKEN_CHARS.match(token) or len(token) % 4 == 1:
        return None
    try:
        blob = base64.urlsafe_b64decode(token + b"=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if _encode(blob).encode("ascii") != token:
        return None  # unused low bits set: one ticket has one spelling
    return blob


@attrs.frozen
class _Plain:
    issued: int
    lifetime: int
    ticket_id: bytes
    fingerprint: bytes
    block: bytes
    user: str


def _pack(plain: _Plain) -> bytes:
    name = plain.user.encode("utf-8")
    head = _HEAD.pack(plain.issued, plain.lifetime, plain.ticket_id, plain.fingerprint)
    return head + plain.block + bytes((len(name),)) + name


def _unpack(data: bytes) -> _Plain | None:
    """
    Parse an opened ticket; L{None} when malformed (which only a bug of ours can make: the
    bytes were authenticated under our key).
    """
    if len(data) < _HEAD.size + 3:
        return None
    issued, lifetime, ticket_id, fingerprint = _HEAD.unpack_from(data)
    at = _HEAD.size
    family = data[at]
    width = _NETWORK_BYTES.get(family)
    if width is None or len(data) < at + width + 3:
        return None
    block = data[at : at + width + 2]
    at += width + 2
    size = data[at]
    name = data[at + 1 :]
    if len(name) != size or not name:
        return None
    try:
        user = name.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return _Plain(issued, lifetime, ticket_id, fingerprint, block, user)


class SpentTable:
    """
    The ids of tickets already presented, each kept until its ticket expires, at most
    C{limit} at once and C{per_user} of one user. Expired ids are forgotten oldest expiry
    first (a heap), so each presentation costs O(log n).
    """

    def __init__(self, limit: int, per_user: int | None = None) -> None:
        self.limit = limit
        self.per_user = per_user if per_user is not None else limit
        self._owner: dict[bytes, str] = {}
        self._held: dict[str, int] = {}
        self._heap: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, ticket_id: object) -> bool:
        return ticket_id in self._owner

    def held_by(self, user: str) -> int:
        """
        How many unexpired spent ids of C{user} the table holds.
        """
        return self._held.get(user, 0)

    def purge(self, now: float) -> None:
        """
        Forget the ids whose tickets have expired by C{now}.
        """
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, ticket_id = heapq.heappop(heap)
            user = self._owner.pop(ticket_id, None)
            if user is not None:
                left = self._held[user] - 1
                if left:
                    self._held[user] = left
                else:
                    del self._held[user]

    def spend(self, ticket_id: bytes, expires: float, now: float, user: str = "") -> bool:
        """
        Record a ticket of C{user} as spent until C{expires}.

        @return: C{False} when the table, or C{user}'s share of it, is full of unexpired ids
            (nothing recorded).
        """
        self.purge(now)
        held = self._held.get(user, 0)
        if len(self._owner) >= self.limit or held >= self.per_user:
            return False
        self._owner[ticket_id] = user
        self._held[user] = held + 1
        heapq.heappush(self._heap, (expires, ticket_id))
        return True


class IssueBuckets:
    """
    One token bucket per user for issuing tickets: C{burst} at once, then C{rate} per second.
    Only users who logged in hold a bucket, and buckets that refilled are forgotten when
    the table has doubled since it was last pruned, so it stays bounded by the users active
    within C{burst / rate} seconds.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._prune_at = 1024

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, user: str, now: float) -> bool:
        """
        Take one ticket from C{user}'s bucket.

        @return: C{False} when it is empty (nothing taken).
        """
        tokens, then = self._buckets.get(user, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[user] = (tokens, now)
            return False
        self._buckets[user] = (tokens - 1.0, now)
        if len(self._buckets) >= self._prune_at:
            self._prune(now)
        return True

    def _prune(self, now: float) -> None:
        full = float(self.burst)
        self._buckets = {
            user: (tokens, then)
            for user, (tokens, then) in self._buckets.items()
            if tokens + (now - then) * self.rate < full
        }
        self._prune_at = max(1024, 2 * len(self._buckets))


class TicketBook:
    """
    Issues and checks tickets under one key.

    @ivar settings: the L{TicketSettings} in force.
    @ivar clock: the wall clock tickets are dated by.
    @ivar spent: the L{SpentTable}.
    @ivar retired_keys: the keys earlier reloads replaced, newest first.
    """

    def __init__(
        self,
        settings: TicketSettings,
        key: bytes,
        clock: Clock,
        spent: SpentTable | None = None,
        retired_keys: tuple[bytes, ...] = (),
        issuing: IssueBuckets | None = None,
    ) -> None:
        """
        @param key: the 32-byte sealing key.
        @param spent: the spent table to keep (a reload with the same key keeps it);
            a new one by default.
        @param retired_keys: the keys in force before reloads replaced them, newest first:
            tickets they sealed are refused as revoked, not as forged.
        @param issuing: the per-user issuing buckets to keep (a reload keeps them).
        """
        if len(key) != TICKET_KEY_BYTES:
            raise ValueError(f"a ticket key has {TICKET_KEY_BYTES} bytes")
        self.settings = settings
        self.clock = clock
        self._key = key
        self._aead = AESGCM(key)
        self.retired_keys = tuple(
            old for old in retired_keys if len(old) == TICKET_KEY_BYTES and old != key
        )[:MAX_RETIRED_KEYS]
        self._retired = [AESGCM(old) for old in self.retired_keys]
        self.spent = spent if spent is not None else SpentTable(settings.max_spent)
        self.spent.limit = settings.max_spent
        self.spent.per_user = settings.max_spent_per_user
        self.issuing = issuing if issuing is not None else IssueBuckets(0.0, 0)
        self.issuing.rate = settings.issue_rate
        self.issuing.burst = settings.issue_burst
        #: Where valid tickets are also claimed once across processes (L{confirm}), or
        #: L{None}; kept by L{reloaded}.
        self.claims: SpentClaims | None = None

    def __repr__(self) -> str:
        return f"<TicketBook lifetime={self.settings.lifetime} spent={len(self.spent)}>"

    def reloaded(self, settings: TicketSettings, key: bytes) -> TicketBook:
        """
        The book after a reload: with the same key, the spent table is kept (a reload must
        not make a spent ticket good again); with a new key every earlier ticket is revoked
        (the old key joins L{retired_keys}).
        """
        if hmac.compare_digest(key, self._key):
            book = TicketBook(
                settings, key, self.clock, self.spent, self.retired_keys, self.issuing
            )
        else:
            retired = retire_key(self._key, self.retired_keys, key)
            book = TicketBook(settings, key, self.clock, None, retired, self.issuing)
        book.claims = self.claims
        return book

    def may_issue(self, user: str) -> bool:
        """
        Take one ticket from C{user}'s issuing bucket (C{issue_rate}, C{issue_burst}).

        @return: C{False} when it is empty: no ticket now (C{ERR BUSY ticket-rate}).
        """
        return self.issuing.take(user, self.clock.seconds())

    def issue(self, user: str, record: Any, address: object) -> tuple[str, int] | None:
        """
        Seal a ticket for C{user} (just logged in with C{record}'s verifier) at C{address}.

        @return: C{(token, lifetime)}, or L{None} when the address has no block (not IP,
            not a unix socket) or the name is too long to carry.
        """
        block = address_block(address, self.settings)
        name = user.encode("utf-8")
        if block is None or not name or len(name) > MAX_NAME_BYTES:
            return None
        lifetime = self.settings.lifetime
        plain = _Plain(
            int(self.clock.seconds()),
            lifetime,
            secrets.token_bytes(_ID_BYTES),
            verifier_fingerprint(record),
            block,
            user,
        )
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, _pack(plain), TICKET_AAD)
        return _encode(bytes((TICKET_VERSION,)) + nonce + sealed), lifetime

    def check(self, token: bytes, address: object, users: VerifierSource) -> TicketCheck:
        """
        Judge a presented token. A valid one from the peer's own block is spent (recorded, so
        a second presentation is a replay).

        A ticket past its own lifetime and L{EXPIRY_GRACE} is expired (an offence: an honest
        client drops it); one past the lifetime now configured (a reload lowered it) but
        within its own, or within the grace, has lapsed (refused, no offence).

        @param token: the C{RESUME} argument as received.
        @param address: the peer address (a PROXY header's, behind C{haproxy:}).
        @param users: the users store in force.
        """
        if len(token) > MAX_TOKEN_LENGTH:
            return TicketCheck(Outcome.UNREADABLE, reason="too long")
        blob = _decode(token)
        if blob is None:
            return TicketCheck(Outcome.UNREADABLE, reason="not base64url")
        if len(blob) < 1 + _NONCE_BYTES + _TAG_BYTES or blob[0] != TICKET_VERSION:
            return TicketCheck(Outcome.FORGED, reason="forged")
        nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        try:
            data = self._aead.decrypt(nonce, sealed, TICKET_AAD)
        except InvalidTag:
            return self._check_retired(nonce, sealed)
        plain = _unpack(data)
        if plain is None:
            return TicketCheck(Outcome.FORGED, reason="forged")
        now = self.clock.seconds()
        if now >= plain.issued + plain.lifetime + EXPIRY_GRACE:
            return TicketCheck(Outcome.EXPIRED, plain.user, "expired")
        if now >= plain.issued + min(plain.lifetime, self.settings.lifetime):
            return TicketCheck(Outcome.LAPSED, plain.user, "lapsed")
        record = users.lookup(plain.user)
        if record is None or not hmac.compare_digest(
            verifier_fingerprint(record), plain.fingerprint
        ):
            return TicketCheck(Outcome.REVOKED, plain.user, "revoked")
        if plain.ticket_id in self.spent:
            return TicketCheck(Outcome.REPLAYED, plain.user, "replayed")
        block = address_block(address, self.settings)
        if block is None or not hmac.compare_digest(block, plain.block):
            return TicketCheck(Outcome.OTHER_BLOCK, plain.user, "other address block")
        # Spent until its own expiry: a reload raising the lifetime again must not make it
        # good a second time.
        if not self.spent.spend(plain.ticket_id, plain.issued + plain.lifetime, now, plain.user):
            return TicketCheck(Outcome.SPENT_FULL, plain.user, "spent-full")
        expires = plain.issued + plain.lifetime
        return TicketCheck(Outcome.VALID, plain.user, "valid", plain.ticket_id, expires)

    def confirm(self, check: TicketCheck) -> Deferred[TicketCheck] | None:
        """
        Claim a valid ticket in the spent state shared with other processes (L{claims}).

        @return: L{None} when there is nothing to wait for (no shared claims, or not a valid
            ticket): act on C{check} as it is. Else a L{Deferred} of the verdict: C{check},
            or L{Outcome.REPLAYED} when another process had spent it. When the shared state
            does not answer (within its bound), C{check} stands: only this process's spent
            table judged the ticket.
        """
        claims = self.claims
        if claims is None or check.outcome is not Outcome.VALID:
            return None

        def verdict(fresh: bool | None) -> TicketCheck:
            if fresh is False:
                return TicketCheck(Outcome.REPLAYED, check.user, "replayed")
            return check

        claimed = claims.claim_ticket(check.ticket_id, check.expires, self.clock.seconds())
        return claimed.addCallback(verdict)

    def _check_retired(self, nonce: bytes, sealed: bytes) -> TicketCheck:
        """
        A token our key does not open: revoked when a retired key does (expired when its own
        lifetime and the grace are over, as under the key in force), else forged.
        """
        for aead in self._retired:
            try:
                data = aead.decrypt(nonce, sealed, TICKET_AAD)
            except InvalidTag:
                continue
            plain = _unpack(data)
            if plain is None:
                break
            if self.clock.seconds() >= plain.issued + plain.lifetime + EXPIRY_GRACE:
                return TicketCheck(Outcome.EXPIRED, plain.user, "expired")
            return TicketCheck(Outcome.REVOKED, plain.user, "revoked")
        return TicketCheck(Outcome.FORGED, reason="forged")

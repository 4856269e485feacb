"""
Tests for L{netguard.tickets}: sealing and opening returning-client tickets, every way a
ticket is refused (forged, unreadable, expired, replayed, revoked), the address blocks, the
bounded spent table, the key file, and L{netguard.secretfile.read_or_create_key}.
"""

from __future__ import annotations

import base64
import os
import stat

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.trial import unittest

from netguard import secretfile
from netguard.auth.users import UserStore, make_record
from netguard.secretfile import read_key_file, read_or_create_key
from netguard.tickets import (
    EXPIRY_GRACE,
    MAX_RETIRED_KEYS,
    MAX_TOKEN_LENGTH,
    RETIRED_KEY_FILE,
    TICKET_KEY_BYTES,
    TICKET_KEY_FILE,
    IssueBuckets,
    Outcome,
    SpentTable,
    TicketBook,
    TicketSettings,
    address_block,
    load_retired_keys,
    load_ticket_key,
    retire_key,
    save_retired_keys,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
T0 = 1_800_000_000.0


def v4(host: str) -> IPv4Address:
    return IPv4Address("TCP", host, 40000)


def v6(host: str) -> IPv6Address:
    return IPv6Address("TCP", host, 40000)


HOME = v4("192.0.2.10")


def unpad(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def encode(blob: bytes) -> bytes:
    return base64.urlsafe_b64encode(blob).rstrip(b"=")


class Fixture:
    """
    A ticket book on a clock, with a users store holding alice.
    """

    def __init__(self, settings: TicketSettings | None = None, key: bytes = KEY):
        self.clock = Clock()
        self.clock.advance(T0)
        self.settings = settings or TicketSettings()
        self.alice = make_record("alice", "pw-one")
        self.users = UserStore.from_records([self.alice, make_record("bob", "pw-two")])
        self.book = TicketBook(self.settings, key, self.clock)

    def issue(self, user: str = "alice", address: object = HOME) -> bytes:
        issued = self.book.issue(user, self.users.lookup(user), address)
        assert issued is not None
        return issued[0].encode("ascii")

    def check(self, token: bytes, address: object = HOME) -> Outcome:
        return self.book.check(token, address, self.users).outcome


class RoundTripTests(unittest.TestCase):
    def test_issued_ticket_is_valid_once_from_its_block(self):
        """
        A ticket issued to alice at an address is valid when presented from that address,
        names alice, and its lifetime is the configured one.
        """
        f = Fixture()
        issued = f.book.issue("alice", f.alice, HOME)
        assert issued is not None
        token, lifetime = issued
        self.assertEqual(lifetime, 3600)
        check = f.book.check(token.encode(), HOME, f.users)
        self.assertEqual((check.outcome, check.user), (Outcome.VALID, "alice"))
        self.assertFalse(check.refused)

    def test_token_is_opaque_and_bounded(self):
        """
        The token is unpadded base64url, starts with version byte 1, does not show the user
        name, and even with a 255-byte name stays within the 512-character bound.
        """
        f = Fixture()
        token = f.issue()
        self.assertRegex(token, rb"\A[A-Za-z0-9_-]+\Z")
        self.assertEqual(unpad(token.decode())[0], 1)
        self.assertNotIn(b"alice", unpad(token.decode()))
        issued = f.book.issue("é" * 127, f.alice, v6("2001:db8::1"))  # 254 bytes
        assert issued is not None
        self.assertLessEqual(len(issued[0]), MAX_TOKEN_LENGTH)

    def test_two_tickets_differ(self):
        """
        Two tickets for the same login are different tokens (random id and nonce).
        """
        f = Fixture()
        self.assertNotEqual(f.issue(), f.issue())

    def test_name_too_long_gets_no_ticket(self):
        """
        A name over 255 UTF-8 bytes gets no ticket (L{None}), never a truncated one.
        """
        f = Fixture()
        self.assertIsNone(f.book.issue("é" * 128, f.alice, HOME))

    def test_address_without_block_gets_no_ticket(self):
        """
        An address of no known kind gets no ticket.
        """
        f = Fixture()
        self.assertIsNone(f.book.issue("alice", f.alice, object()))


class ForgedTests(unittest.TestCase):
    def test_every_bit_flip_is_forged(self):
        """
        Flipping any single bit of the sealed bytes (version, nonce, ciphertext, tag) gives
        a refused ticket that is an offence: never valid, never another outcome.
        """
        f = Fixture()
        blob = unpad(f.issue().decode())
        for index in range(len(blob)):
            for bit in (0x01, 0x80):
                forged = bytearray(blob)
                forged[index] ^= bit
                check = f.book.check(encode(bytes(forged)), HOME, f.users)
                self.assertEqual(check.outcome, Outcome.FORGED, (index, bit))
                self.assertTrue(check.refused and check.offence)

    def test_wrong_key_is_forged(self):
        """
        A ticket sealed under another key (another gateway, or a forger's) is forged.
        """
        f = Fixture()
        other = TicketBook(f.settings, OTHER_KEY, f.clock)
        issued = other.issue("alice", f.alice, HOME)
        assert issued is not None
        self.assertEqual(f.check(issued[0].encode()), Outcome.FORGED)

    def test_truncated_is_forged(self):
        """
        Every truncation of the sealed bytes is refused (forged), down to the empty token.
        """
        f = Fixture()
        blob = unpad(f.issue().decode())
        for size in range(len(blob)):
            outcome = f.check(encode(blob[:size]))
            self.assertIn(outcome, (Outcome.FORGED, Outcome.UNREADABLE), size)

    def test_oversized_refused_before_decoding(self):
        """
        A token of 512 characters is judged; one of 513 is refused as too long, whatever it
        holds.
        """
        f = Fixture()
        at_bound = f.book.check(b"A" * MAX_TOKEN_LENGTH, HOME, f.users)
        self.assertEqual(at_bound.outcome, Outcome.FORGED)
        past = f.book.check(b"A" * (MAX_TOKEN_LENGTH + 1), HOME, f.users)
        self.assertEqual((past.outcome, past.reason), (Outcome.UNREADABLE, "too long"))
        self.assertTrue(past.offence)

    def test_non_base64_is_unreadable(self):
        """
        Padding, standard-alphabet characters, spaces, non-ASCII and an impossible length
        are unreadable.
        """
        f = Fixture()
        token = f.issue()
        for bad in (token + b"=", b"ab+/", b"a b", "é".encode(), b"A", b""):
            self.assertEqual(f.check(bad), Outcome.UNREADABLE, bad)

    def test_non_canonical_spelling_is_unreadable(self):
        """
        A token whose last character carries set unused bits (a second spelling of the same
        bytes) is refused: one ticket has one spelling.
        """
        f = Fixture()
        token = f.issue()
        self.assertNotEqual(len(token) % 4, 0)  # the last character has unused bits
        alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(token[-1:])
        twin = token[:-1] + alphabet[last ^ 1 : (last ^ 1) + 1]
        self.assertEqual(unpad(twin.decode()), unpad(token.decode()))
        self.assertEqual(f.check(twin), Outcome.UNREADABLE)
        self.assertEqual(f.check(token), Outcome.VALID)

    def test_wrong_version_is_forged(self):
        """
        A sealed blob with a version byte other than 1 is forged.
        """
        f = Fixture()
        blob = bytearray(unpad(f.issue().decode()))
        blob[0] = 2
        self.assertEqual(f.check(encode(bytes(blob))), Outcome.FORGED)


class ExpiryTests(unittest.TestCase):
    def test_valid_one_second_before_the_bound(self):
        """
        A ticket presented one second before its lifetime ends is valid.
        """
        f = Fixture()
        token = f.issue()
        f.clock.advance(3599)
        self.assertEqual(f.check(token), Outcome.VALID)

    def test_lapsed_at_the_exact_bound(self):
        """
        At exactly issued + lifetime the ticket is refused as lapsed, not an offence: the
        client's clock may differ from ours by a little (the grace).
        """
        f = Fixture()
        token = f.issue()
        f.clock.advance(3600)
        check = f.book.check(token, HOME, f.users)
        self.assertEqual(
            (check.outcome, check.refused, check.offence), (Outcome.LAPSED, True, False)
        )

    def test_expired_at_the_end_of_the_grace_and_one_before(self):
        """
        One second before issued + lifetime + L{EXPIRY_GRACE} the ticket is lapsed (no
        offence); at exactly that bound it is expired, an offence (an honest client dropped
        it a grace ago).
        """
        f = Fixture()
        token = f.issue()
        f.clock.advance(3600 + EXPIRY_GRACE - 1)
        self.assertEqual(f.check(token), Outcome.LAPSED)
        f.clock.advance(1)
        check = f.book.check(token, HOME, f.users)
        self.assertEqual((check.outcome, check.offence), (Outcome.EXPIRED, True))

    def test_lowered_lifetime_lapses_earlier_tickets_without_offence(self):
        """
        A reload that lowers the lifetime shortens the tickets already issued too, but a
        ticket older than the new lifetime and within its own is refused as lapsed, with no
        offence (its holder is honest); past its own lifetime and the grace it is expired.
        """
        f = Fixture()
        token = f.issue()
        f.book = f.book.reloaded(TicketSettings(lifetime=60), KEY)
        f.clock.advance(59)
        self.assertEqual(f.check(token), Outcome.VALID)
        token = f.issue()  # LIFETIME=60 from now on
        second = f.book.check(token, HOME, f.users)
        self.assertEqual(second.outcome, Outcome.VALID)
        old = Fixture()
        old_token = old.issue()
        old.book = old.book.reloaded(TicketSettings(lifetime=60), KEY)
        old.clock.advance(700)
        check = old.book.check(old_token, HOME, old.users)
        self.assertEqual((check.outcome, check.offence), (Outcome.LAPSED, False))
        old.clock.advance(3600 + EXPIRY_GRACE - 700)
        self.assertEqual(old.check(old_token), Outcome.EXPIRED)

    def test_spent_until_its_own_expiry_even_after_a_lowered_lifetime(self):
        """
        A ticket spent while the lifetime was lowered stays spent until its own expiry: a
        reload raising the lifetime again does not make it good a second time, even after
        the spent table purged what had expired by the lowered lifetime.
        """
        f = Fixture()
        token = f.issue()
        f.book = f.book.reloaded(TicketSettings(lifetime=120), KEY)
        self.assertEqual(f.check(token), Outcome.VALID)
        f.clock.advance(200)
        f.book = f.book.reloaded(TicketSettings(), KEY)
        self.assertEqual(f.check(f.issue()), Outcome.VALID)  # purges the table
        self.assertEqual(f.check(token), Outcome.REPLAYED)


class ReplayTests(unittest.TestCase):
    def test_second_use_is_replayed(self):
        """
        The second presentation of a valid ticket is a replay (an offence).
        """
        f = Fixture()
        token = f.issue()
        self.assertEqual(f.check(token), Outcome.VALID)
        check = f.book.check(token, HOME, f.users)
        self.assertEqual(check.outcome, Outcome.REPLAYED)
        self.assertTrue(check.offence)

    def test_replay_from_another_block_is_still_replayed(self):
        """
        A spent ticket presented from elsewhere is a replay, not a roaming client.
        """
        f = Fixture()
        token = f.issue()
        f.check(token)
        self.assertEqual(f.check(token, v4("198.51.100.1")), Outcome.REPLAYED)

    def test_reload_with_the_same_key_keeps_the_spent_table(self):
        """
        A reload that keeps the key keeps the spent ids: a spent ticket stays spent.
        """
        f = Fixture()
        token = f.issue()
        f.check(token)
        f.book = f.book.reloaded(TicketSettings(), KEY)
        self.assertEqual(f.check(token), Outcome.REPLAYED)


class BlockTests(unittest.TestCase):
    def test_v4_same_slash_24_is_valid(self):
        """
        The last address of the /24 a ticket was issued in is the same block.
        """
        f = Fixture()
        self.assertEqual(f.check(f.issue(), v4("192.0.2.255")), Outcome.VALID)

    def test_v4_next_slash_24_is_other_block(self):
        """
        The first address past the /24 is another block: no lane, no offence, not spent
        (the same ticket is still valid from its own block afterwards).
        """
        f = Fixture()
        token = f.issue()
        check = f.book.check(token, v4("192.0.3.0"), f.users)
        self.assertEqual(check.outcome, Outcome.OTHER_BLOCK)
        self.assertFalse(check.refused or check.offence)
        self.assertEqual(f.check(token), Outcome.VALID)

    def test_v4_mapped_v6_counts_as_v4(self):
        """
        A dual-stack listener's IPv4-mapped address is the IPv4 block.
        """
        f = Fixture()
        self.assertEqual(f.check(f.issue(), v6("::ffff:192.0.2.77")), Outcome.VALID)

    def test_v6_same_slash_48_is_valid(self):
        """
        Any address of the /48 a ticket was issued in is the same block.
        """
        f = Fixture()
        token = f.issue(address=v6("2001:db8:1:2::5"))
        self.assertEqual(f.check(token, v6("2001:db8:1:ffff:ffff::1")), Outcome.VALID)

    def test_v6_next_slash_48_is_other_block(self):
        """
        The next /48 is another block.
        """
        f = Fixture()
        token = f.issue(address=v6("2001:db8:1:2::5"))
        self.assertEqual(f.check(token, v6("2001:db8:2::1")), Outcome.OTHER_BLOCK)

    def test_v4_ticket_from_v6_is_other_block(self):
        """
        A ticket issued over IPv4 presented over IPv6 is another block.
        """
        f = Fixture()
        self.assertEqual(f.check(f.issue(), v6("2001:db8::1")), Outcome.OTHER_BLOCK)

    def test_unix_block(self):
        """
        Unix-socket peers share the block C{unix}: valid over unix, another block over IP.
        """
        f = Fixture()
        token = f.issue(address=UNIXAddress(None))
        self.assertEqual(f.check(token, v4("127.0.0.1")), Outcome.OTHER_BLOCK)
        self.assertEqual(f.check(token, UNIXAddress(b"/run/x.sock")), Outcome.VALID)

    def test_configured_prefix(self):
        """
        With C{ipv4_prefix = 32} the block is the address itself.
        """
        f = Fixture(TicketSettings(ipv4_prefix=32))
        self.assertEqual(f.check(f.issue(), v4("192.0.2.11")), Outcome.OTHER_BLOCK)

    def test_block_encoding(self):
        """
        A block is the family, the masked network bytes and the prefix length.
        """
        settings = TicketSettings()
        self.assertEqual(address_block(v4("192.0.2.200"), settings), b"\x04\xc0\x00\x02\x00\x18")
        self.assertIsNone(address_block(v4("not-an-ip"), settings))


class RevocationTests(unittest.TestCase):
    def test_key_replaced_and_reloaded_revokes(self):
        """
        After a reload with a new key, an earlier ticket is revoked (refused, not an offence:
        its holder is an honest returning client), and new tickets are valid.
        """
        f = Fixture()
        token = f.issue()
        f.book = f.book.reloaded(TicketSettings(), OTHER_KEY)
        check = f.book.check(token, HOME, f.users)
        self.assertEqual(check.outcome, Outcome.REVOKED)
        self.assertTrue(check.refused)
        self.assertFalse(check.offence)
        self.assertEqual(f.check(f.issue()), Outcome.VALID)

    def test_user_removed_revokes(self):
        """
        A ticket of a user no longer in the users store is revoked.
        """
        f = Fixture()
        token = f.issue()
        f.users = UserStore.from_records([make_record("bob", "pw-two")])
        self.assertEqual(f.check(token), Outcome.REVOKED)

    def test_password_changed_revokes(self):
        """
        A ticket issued before the user's password changed is revoked.
        """
        f = Fixture()
        token = f.issue()
        f.users = UserStore.from_records([make_record("alice", "pw-new")])
        self.assertEqual(f.check(token), Outcome.REVOKED)

    def test_same_password_new_salt_revokes(self):
        """
        Setting the same password again (a new salt, so a new verifier) revokes too.
        """
        f = Fixture()
        token = f.issue()
        f.users = UserStore.from_records([make_record("alice", "pw-one")])
        self.assertEqual(f.check(token), Outcome.REVOKED)


class SpentTableTests(unittest.TestCase):
    def test_full_table_fails_closed_for_the_lane(self):
        """
        With C{max_spent = 2} and two unexpired spent tickets, a third valid ticket buys no
        lane (C{spent-full}, not refused, not an offence) and is not recorded.
        """
        f = Fixture(TicketSettings(max_spent=2))
        self.assertEqual(f.check(f.issue()), Outcome.VALID)
        self.assertEqual(f.check(f.issue()), Outcome.VALID)
        third = f.issue()
        check = f.book.check(third, HOME, f.users)
        self.assertEqual(check.outcome, Outcome.SPENT_FULL)
        self.assertFalse(check.refused or check.offence)
        self.assertEqual(len(f.book.spent), 2)

    def test_expired_entries_make_room(self):
        """
        Once the spent tickets have expired their ids are forgotten and a new ticket is
        valid again.
        """
        f = Fixture(TicketSettings(max_spent=1, lifetime=60))
        f.check(f.issue())
        f.clock.advance(59)
        late = f.issue()
        self.assertEqual(f.check(late), Outcome.SPENT_FULL)
        f.clock.advance(1)
        fresh = f.issue()
        self.assertEqual(f.check(fresh), Outcome.VALID)
        self.assertEqual(len(f.book.spent), 1)

    def test_purge_forgets_only_the_expired(self):
        """
        L{SpentTable.purge} drops the ids expired by then, in expiry order, and no other.
        """
        table = SpentTable(10)
        table.spend(b"a", 10.0, 0.0)
        table.spend(b"b", 5.0, 0.0)
        table.spend(b"c", 20.0, 0.0)
        table.purge(10.0)
        self.assertEqual((b"a" in table, b"b" in table, b"c" in table), (False, False, True))


class SettingsTests(unittest.TestCase):
    def test_bounds(self):
        """
        The lifetime is bounded to 60..604800, prefixes to 8..32 and 16..128; each bound is
        accepted and one past it refused.
        """
        TicketSettings(lifetime=60)
        TicketSettings(lifetime=604800)
        for bad in (
            {"lifetime": 59},
            {"lifetime": 604801},
            {"ipv4_prefix": 33},
            {"ipv6_prefix": 15},
            {"max_spent": 0},
            {"lifetime": True},
        ):
            with self.assertRaises(ValueError, msg=bad):
                attrs.evolve(TicketSettings(), **bad)

    def test_book_refuses_a_short_key(self):
        """
        A key that is not 32 bytes is refused.
        """
        with self.assertRaises(ValueError):
            TicketBook(TicketSettings(), b"short", Clock())

    def test_repr_never_shows_the_key(self):
        """
        The book's repr (what a traceback or a debug log would show) holds no key bytes.
        """
        book = TicketBook(TicketSettings(), KEY, Clock())
        self.assertNotIn(KEY.hex(), repr(book))
        self.assertNotIn(repr(KEY), repr(book))


class KeyFileTests(unittest.TestCase):
    def state_dir(self) -> str:
        path = self.mktemp()
        os.mkdir(path, 0o700)
        return path

    def test_created_0600_and_stable(self):
        """
        The key file is made on first use, 32 bytes, mode 0600, and read back unchanged.
        """
        state = self.state_dir()
        key = load_ticket_key(state)
        path = os.path.join(state, TICKET_KEY_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(len(key), TICKET_KEY_BYTES)
        self.assertEqual(load_ticket_key(state), key)
        self.assertEqual([n for n in os.listdir(state) if n.endswith(".tmp")], [])

    def test_deleted_key_is_made_anew(self):
        """
        Deleting the key file gives a new key on the next load (every ticket revoked).
        """
        state = self.state_dir()
        first = load_ticket_key(state)
        os.unlink(os.path.join(state, TICKET_KEY_FILE))
        self.assertNotEqual(load_ticket_key(state), first)

    def test_group_readable_key_refused(self):
        """
        A key file group or others may read is refused, and the message shows no key.
        """
        state = self.state_dir()
        key = load_ticket_key(state)
        os.chmod(os.path.join(state, TICKET_KEY_FILE), 0o640)
        with self.assertRaises(ValueError) as caught:
            load_ticket_key(state)
        self.assertIn("0640", str(caught.exception))
        self.assertNotIn(key.hex(), str(caught.exception))

    def test_wrong_size_refused(self):
        """
        A key file of 31 or 33 bytes is refused.
        """
        for size in (31, 33):
            path = os.path.join(self.state_dir(), "k")
            with open(path, "wb") as handle:
                handle.write(b"k" * size)
            os.chmod(path, 0o600)
            with self.assertRaises(ValueError):
                read_or_create_key(path, 32)

    def test_symlink_not_followed(self):
        """
        A symbolic link in place of the key file is refused, never followed.
        """
        state = self.state_dir()
        target = os.path.join(state, "elsewhere")
        with open(target, "wb") as handle:
            handle.write(b"k" * 32)
        os.chmod(target, 0o600)
        os.symlink(target, os.path.join(state, TICKET_KEY_FILE))
        with self.assertRaises(ValueError):
            load_ticket_key(state)

    def test_missing_directory_is_a_value_error(self):
        """
        A state directory that does not exist gives a L{ValueError}, not a traceback.
        """
        with self.assertRaises(ValueError):
            load_ticket_key(os.path.join(self.mktemp(), "absent"))


class TicketsConfigTests(unittest.TestCase):
    """
    The C{[tickets]} table of the configuration file.
    """

    def load(self, text: str):
        from netguard.config import load_config

        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(f'state_dir = "/nonexistent-netguard-test"\n{text}')
        return load_config(path, {})

    def test_defaults(self):
        """
        Without a C{[tickets]} table tickets are on, 3600 s, /24 and /48, 65536 spent ids.
        """
        self.assertEqual(self.load("").tickets, TicketSettings())
        self.assertEqual(
            TicketSettings(), TicketSettings(True, 3600, 24, 48, 65536, 4096, 1.0, 20, 10.0)
        )

    def test_every_key(self):
        """
        Every key is read, and its origin is the file.
        """
        config = self.load(
            "[tickets]\nenabled = false\nlifetime = 60\nipv4_prefix = 32\n"
            "ipv6_prefix = 64\nmax_spent = 10\nmax_spent_per_user = 2\nissue_rate = 0.5\n"
            "issue_burst = 3\nlane_login_timeout = 4.5\n"
        )
        self.assertEqual(config.tickets, TicketSettings(False, 60, 32, 64, 10, 2, 0.5, 3, 4.5))
        self.assertEqual(config.origins["tickets.lifetime"], "file")

    def test_out_of_range_and_unknown_keys(self):
        """
        A lifetime one past either bound, a prefix past 32 and an unknown key are refused
        with the dotted key named.
        """
        from netguard.config import ConfigError

        for table, key in (
            ("lifetime = 59", "tickets.lifetime"),
            ("lifetime = 604801", "tickets.lifetime"),
            ("ipv4_prefix = 33", "tickets.ipv4_prefix"),
            ("issue_rate = 0", "tickets.issue_rate"),
            ("issue_burst = 0", "tickets.issue_burst"),
            ("lane_login_timeout = 0.5", "tickets.lane_login_timeout"),
            ("max_spent_per_user = 0", "tickets.max_spent_per_user"),
            ("enabled = 1", "tickets.enabled"),
            ("key = 1", "tickets.key"),
        ):
            with self.assertRaises(ConfigError, msg=table) as caught:
                self.load(f"[tickets]\n{table}\n")
            self.assertEqual(caught.exception.key, key)

    def test_described_with_defaults(self):
        """
        C{check-config --defaults} and the effective configuration list every key.
        """
        from netguard.config import load_config
        from netguard.config.text import describe, describe_defaults

        defaults = describe_defaults()
        effective = describe(load_config(None, {"state_dir": "/nonexistent-netguard-test"}))
        for key in ("enabled", "lifetime", "ipv4_prefix", "ipv6_prefix", "max_spent"):
            self.assertIn(f"tickets.{key} = ", defaults)
            self.assertIn(f"tickets.{key} = ", effective)


class PerUserSpentTests(unittest.TestCase):
    def test_per_user_share_at_the_bound_and_one_past(self):
        """
        With C{max_spent_per_user = 2} alice's first two tickets are valid, her third is
        C{spent-full} (no lane, no offence) while bob's is still valid; once hers expire
        (their own lifetime) she has her share again.
        """
        users = Fixture()
        f = Fixture(TicketSettings(max_spent_per_user=2))
        f.users = users.users
        tokens = [f.issue() for _ in range(3)]
        self.assertEqual([f.check(t) for t in tokens[:2]], [Outcome.VALID] * 2)
        third = f.book.check(tokens[2], HOME, f.users)
        self.assertEqual(
            (third.outcome, third.refused, third.offence), (Outcome.SPENT_FULL, False, False)
        )
        self.assertEqual(f.check(f.issue("bob")), Outcome.VALID)
        self.assertEqual(f.book.spent.held_by("alice"), 2)
        f.clock.advance(3600)
        self.assertEqual(f.check(f.issue()), Outcome.VALID)
        self.assertEqual(f.book.spent.held_by("alice"), 1)

    def test_table_forgets_users_whose_ids_expired(self):
        """
        The per-user counts are dropped with the last id of a user: no entry per user
        lingers once their tickets expired.
        """
        table = SpentTable(10, 5)
        table.spend(b"a" * 16, 100.0, 0.0, "alice")
        table.purge(100.0)
        self.assertEqual((len(table), table.held_by("alice"), table._held), (0, 0, {}))


class IssueBucketsTests(unittest.TestCase):
    def test_burst_at_the_bound_and_one_past_then_refill(self):
        """
        A bucket of 3 at 2 per second: 3 takes at once, the 4th refused; 0.499 s later still
        refused, at 0.5 s one more.
        """
        buckets = IssueBuckets(2.0, 3)
        self.assertEqual([buckets.take("alice", 0.0) for _ in range(4)], [True] * 3 + [False])
        self.assertFalse(buckets.take("alice", 0.499))
        self.assertTrue(buckets.take("alice", 0.5))
        self.assertTrue(buckets.take("bob", 0.5))

    def test_full_buckets_pruned(self):
        """
        Buckets that have refilled are forgotten once the table doubles: 5000 users each
        taking once, a burst/rate later, leave no more than the newest users' buckets.
        """
        buckets = IssueBuckets(1.0, 1)
        for index in range(5000):
            buckets.take(f"user{index}", float(index))
        self.assertLess(len(buckets), 1100)


class RetiredKeyTests(unittest.TestCase):
    def state_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path, 0o700)
        return path

    def test_saved_and_loaded_newest_first_bounded(self):
        """
        The retired keys are saved (mode 0600) and loaded back in order; at most
        L{MAX_RETIRED_KEYS} are kept.
        """
        state = self.state_dir()
        keys = tuple(bytes([n]) * 32 for n in range(MAX_RETIRED_KEYS + 2))
        save_retired_keys(state, keys)
        self.assertEqual(load_retired_keys(state), keys[:MAX_RETIRED_KEYS])
        mode = stat.S_IMODE(os.stat(os.path.join(state, RETIRED_KEY_FILE)).st_mode)
        self.assertEqual(mode, 0o600)
        self.assertEqual(load_retired_keys(self.state_dir()), ())

    def test_damaged_file_refused(self):
        """
        A C{ticket.key.old} that is not a whole number of keys is a L{ValueError}.
        """
        state = self.state_dir()
        path = os.path.join(state, RETIRED_KEY_FILE)
        with open(path, "wb") as handle:
            handle.write(b"k" * 33)
        os.chmod(path, 0o600)
        with self.assertRaises(ValueError):
            load_retired_keys(state)

    def test_retire_key_order_and_dedup(self):
        """
        The old key goes first, the new one is never among the retired, none twice.
        """
        a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
        self.assertEqual(retire_key(a, (), b), (a,))
        self.assertEqual(retire_key(b, (a,), c), (b, a))
        self.assertEqual(retire_key(c, (b, a), a), (c, b))

    def test_ticket_of_a_retired_key_revoked_or_expired(self):
        """
        A ticket sealed under a retired key is revoked (no offence) within its lifetime
        and grace, expired (an offence) past them; a ticket under no key we had is forged.
        """
        old = Fixture()
        token = old.issue()
        book = TicketBook(TicketSettings(), OTHER_KEY, old.clock, retired_keys=(b"z" * 32, KEY))
        check = book.check(token, HOME, old.users)
        self.assertEqual((check.outcome, check.offence), (Outcome.REVOKED, False))
        old.clock.advance(3600 + EXPIRY_GRACE)
        self.assertEqual(book.check(token, HOME, old.users).outcome, Outcome.EXPIRED)
        stranger = TicketBook(TicketSettings(), OTHER_KEY, old.clock)
        self.assertEqual(stranger.check(token, HOME, old.users).outcome, Outcome.FORGED)


class KeyFileSafetyTests(unittest.TestCase):
    def test_key_owned_by_another_user_refused(self):
        """
        A key file owned by another user (who could have chosen the key) is refused.
        """
        if os.geteuid() != 0:
            raise unittest.SkipTest("chown to another user needs root")
        path = os.path.join(self.mktemp())
        with open(path, "wb") as handle:
            handle.write(b"k" * 32)
        os.chmod(path, 0o600)
        os.chown(path, 65534, -1)
        with self.assertRaises(ValueError) as caught:
            read_key_file(path, 32)
        self.assertIn("owned by uid 65534", str(caught.exception))

    def test_root_trusts_the_owner_of_the_directory(self):
        """
        As root (C{twistd --uid} starts so, after handing the state directory to the user it
        runs as) a key owned by the directory's owner is read; one owned by a third user is
        not.
        """
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root")
        state = self.mktemp()
        os.makedirs(state)
        os.chown(state, 65534, -1)
        path = os.path.join(state, TICKET_KEY_FILE)
        with open(path, "wb") as handle:
            handle.write(b"k" * 32)
        os.chmod(path, 0o600)
        os.chown(path, 65534, -1)
        self.assertEqual(load_ticket_key(state), b"k" * 32)
        os.chown(path, 65533, -1)
        with self.assertRaises(ValueError):
            load_ticket_key(state)

    def test_new_key_syncs_its_directory(self):
        """
        Creating C{ticket.key} syncs the state directory after linking it into place, so
        a crash cannot lose the name of a key tickets were already sealed with.
        """
        synced: list[str] = []
        self.patch(secretfile, "_sync_directory", synced.append)
        state = self.mktemp()
        os.makedirs(state)
        load_ticket_key(state)
        self.assertEqual(synced, [os.path.join(state, TICKET_KEY_FILE)])

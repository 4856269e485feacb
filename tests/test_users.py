"""
Tests for L{netguard.auth.users}: the verifier line format, the store, and safe file writes.
"""

from __future__ import annotations

import base64
import os
import stat

from hypothesis import given, settings
from hypothesis import strategies as st
from scramp import ScramMechanism
from twisted.trial import unittest

from netguard.auth import users
from netguard.auth.users import (
    MOCK_KEY_FILE,
    InsecureUsersFile,
    NoSuchUser,
    UserExists,
    UserRecord,
    UsersFileError,
    UserStore,
    load_mock_key,
)

SALT = bytes(range(16))
STORED = bytes(range(32, 64))
SERVER = bytes(range(64, 96))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def line_for(
    name: str = "alice",
    iterations: str = "4096",
    salt: str | None = None,
    stored: str | None = None,
    server: str | None = None,
    groups: str | None = None,
    scheme: str = "SCRAM-SHA-256",
) -> str:
    salt = b64(SALT) if salt is None else salt
    stored = b64(STORED) if stored is None else stored
    server = b64(SERVER) if server is None else server
    line = f"{name}:{scheme}${iterations}:{salt}${stored}:{server}"
    if groups is not None:
        line += ":" + groups
    return line


def record(name: str = "alice", groups: tuple[str, ...] = ()) -> UserRecord:
    return UserRecord(
        name=name, iterations=4096, salt=SALT, stored_key=STORED, server_key=SERVER, groups=groups
    )


def password_matches(rec: UserRecord, password: str) -> bool:
    """
    Recompute the verifier from a password and the record's salt and iteration count.
    """
    info = ScramMechanism("SCRAM-SHA-256").make_auth_info(
        password, iteration_count=rec.iterations, salt=rec.salt
    )
    return info == rec.auth_info()


class TempDirMixin:
    def make_dir(self) -> str:
        path = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(path)
        return path

    def write_file(self, path: str, text: str, mode: int = 0o600) -> str:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, mode)
        return path


class ValidateNameTests(unittest.TestCase):
    def test_valid_names(self) -> None:
        for name in ["a", "alice", "Bob.Smith", "ops@site", "x-1_2", "0day", "a" * 64]:
            self.assertEqual(users.validate_name(name), name)

    def test_empty(self) -> None:
        self.assertRaises(ValueError, users.validate_name, "")

    def test_too_long(self) -> None:
        self.assertRaises(ValueError, users.validate_name, "a" * 65)

    def test_leading_punctuation(self) -> None:
        for name in [".a", "-a", "_a", "@a"]:
            self.assertRaises(ValueError, users.validate_name, name)

    def test_colon(self) -> None:
        self.assertRaises(ValueError, users.validate_name, "al:ice")

    def test_comma(self) -> None:
        self.assertRaises(ValueError, users.validate_name, "al,ice")

    def test_space(self) -> None:
        self.assertRaises(ValueError, users.validate_name, "al ice")

    def test_trailing_newline(self) -> None:
        self.assertRaises(ValueError, users.validate_name, "alice\n")

    def test_non_ascii(self) -> None:
        self.assertRaises(ValueError, users.validate_name, "alicé")
        self.assertRaises(ValueError, users.validate_name, "\uff41lice")

    def test_message_does_not_echo_name(self) -> None:
        e = self.assertRaises(ValueError, users.validate_name, "evil\x1b[2J")
        self.assertNotIn("evil", str(e))


class UserRecordTests(unittest.TestCase):
    def test_auth_info(self) -> None:
        self.assertEqual(record().auth_info(), (SALT, STORED, SERVER, 4096))

    def test_frozen(self) -> None:
        rec = record()
        self.assertRaises(AttributeError, setattr, rec, "name", "bob")

    def test_groups_become_tuple(self) -> None:
        rec = UserRecord("a", 4096, SALT, STORED, SERVER, ["x", "y"])  # type: ignore[arg-type]
        self.assertEqual(rec.groups, ("x", "y"))

    def test_groups_as_string_refused(self) -> None:
        self.assertRaises(ValueError, UserRecord, "a", 4096, SALT, STORED, SERVER, "ops")

    def test_short_key_refused(self) -> None:
        self.assertRaises(ValueError, UserRecord, "a", 4096, SALT, STORED[:31], SERVER)

    def test_repr_hides_secrets(self) -> None:
        text = repr(record())
        self.assertNotIn(repr(SALT), text)
        self.assertNotIn(repr(STORED), text)


class MakeRecordTests(unittest.TestCase):
    def test_verifier_matches_password(self) -> None:
        rec = users.make_record("alice", "correct horse", groups=("ops",))
        self.assertEqual(rec.name, "alice")
        self.assertEqual(rec.groups, ("ops",))
        self.assertEqual(rec.iterations, 4096)
        self.assertEqual(len(rec.salt), 16)
        self.assertTrue(password_matches(rec, "correct horse"))
        self.assertFalse(password_matches(rec, "correct horsE"))

    def test_fresh_salt_each_time(self) -> None:
        a = users.make_record("alice", "pw")
        b = users.make_record("alice", "pw")
        self.assertNotEqual(a.salt, b.salt)
        self.assertNotEqual(a.stored_key, b.stored_key)

    def test_more_iterations(self) -> None:
        rec = users.make_record("alice", "pw", iterations=5000)
        self.assertEqual(rec.iterations, 5000)
        self.assertTrue(password_matches(rec, "pw"))

    def test_too_few_iterations(self) -> None:
        self.assertRaises(ValueError, users.make_record, "alice", "pw", iterations=4095)

    def test_too_many_iterations(self) -> None:
        self.assertRaises(ValueError, users.make_record, "alice", "pw", iterations=10_000_001)

    def test_empty_password(self) -> None:
        self.assertRaises(ValueError, users.make_record, "alice", "")

    def test_control_character_password(self) -> None:
        e = self.assertRaises(ValueError, users.make_record, "alice", "pw\x07secret")
        self.assertNotIn("secret", str(e))

    def test_bad_name(self) -> None:
        self.assertRaises(ValueError, users.make_record, "a:b", "pw")

    def test_bad_group(self) -> None:
        self.assertRaises(ValueError, users.make_record, "alice", "pw", groups=("a,b",))


class ParseLineTests(unittest.TestCase):
    def test_round_trip(self) -> None:
        rec = record()
        self.assertEqual(users.parse_line(users.format_line(rec)), rec)
        self.assertEqual(users.format_line(users.parse_line(line_for())), line_for())

    def test_groups(self) -> None:
        rec = users.parse_line(line_for(groups="ops,db.admin"))
        self.assertEqual(rec.groups, ("ops", "db.admin"))
        self.assertEqual(users.format_line(rec), line_for(groups="ops,db.admin"))

    def test_trailing_newline(self) -> None:
        self.assertEqual(users.parse_line(line_for() + "\n"), record())

    def test_trailing_crlf(self) -> None:
        self.assertEqual(users.parse_line(line_for() + "\r\n"), record())

    def test_postgresql_verifier(self) -> None:
        """
        A verifier as PostgreSQL's pg_authid.rolpassword shows it is read as is.
        """
        made = users.make_record("pg", "secret")
        line = users.format_line(made)
        self.assertTrue(line.startswith("pg:SCRAM-SHA-256$4096:"))
        self.assertEqual(users.parse_line(line), made)

    def test_error_location(self) -> None:
        e = self.assertRaises(
            UsersFileError, users.parse_line, "junk", path="/etc/ng/users", lineno=7
        )
        self.assertEqual((e.path, e.lineno), ("/etc/ng/users", 7))
        self.assertTrue(str(e).startswith("/etc/ng/users:7: "))

    def test_too_few_fields(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, "alice:SCRAM-SHA-256$4096:x$y")

    def test_too_many_fields(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(groups="a") + ":b")

    def test_empty_line(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, "")

    def test_bad_name(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(name=".alice"))

    def test_wrong_scheme(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(scheme="SCRAM-SHA-1"))

    def test_missing_dollar(self) -> None:
        bad = line_for().replace("SCRAM-SHA-256$", "SCRAM-SHA-256")
        self.assertRaises(UsersFileError, users.parse_line, bad)

    def test_iterations_not_a_number(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(iterations="4k"))

    def test_iterations_leading_zero(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(iterations="04096"))

    def test_iterations_signed(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(iterations="+4096"))

    def test_iterations_too_low(self) -> None:
        """One below the floor is refused as out of range."""
        e = self.assertRaises(UsersFileError, users.parse_line, line_for(iterations="4095"))
        self.assertIn("iteration count 4095 is out of range (from 4096 to 10000000)", str(e))

    def test_iterations_too_high(self) -> None:
        """One past the ceiling is refused as out of range, not as 'not a number'."""
        e = self.assertRaises(UsersFileError, users.parse_line, line_for(iterations="10000001"))
        self.assertIn("iteration count 10000001 is out of range", str(e))

    def test_iterations_far_too_high_is_out_of_range(self) -> None:
        """Nine or a thousand digits: out of range, shown truncated, never a decimal error."""
        for text in ("999999999", "9" * 1000):
            e = self.assertRaises(UsersFileError, users.parse_line, line_for(iterations=text))
            self.assertIn("is out of range", str(e))
            self.assertNotIn("decimal number", str(e))
            self.assertLess(len(str(e)), 200)

    def test_iterations_non_ascii_digits(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(iterations="４０９６"))

    def test_iterations_bounds_accepted(self) -> None:
        self.assertEqual(users.parse_line(line_for(iterations="10000000")).iterations, 10**7)

    def test_missing_salt_separator(self) -> None:
        bad = line_for().replace(b64(SALT) + "$", b64(SALT))
        self.assertRaises(UsersFileError, users.parse_line, bad)

    def test_salt_not_base64(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(salt="!!!!" * 4))

    def test_salt_bad_padding(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(salt=b64(SALT).rstrip("=")))

    def test_salt_non_canonical(self) -> None:
        """
        Stray bits in the last base64 character are refused: one encoding per value.
        """
        canonical = b64(SALT)  # ends in "w=="
        self.assertTrue(canonical.endswith("w=="))
        self.assertRaises(UsersFileError, users.parse_line, line_for(salt=canonical[:-3] + "x=="))

    def test_salt_with_whitespace(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(salt=" " + b64(SALT)))

    def test_salt_non_ascii(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(salt="é" * 24))

    def test_salt_too_short(self) -> None:
        """
        scramp refuses salts under 12 bytes at login; the file is refused at load instead.
        """
        self.assertRaises(UsersFileError, users.parse_line, line_for(salt=b64(b"s" * 8)))
        self.assertRaises(UsersFileError, users.parse_line, line_for(salt=b64(b"s" * 11)))
        self.assertEqual(users.parse_line(line_for(salt=b64(b"s" * 12))).salt, b"s" * 12)

    def test_salt_too_long(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(salt=b64(b"s" * 65)))
        self.assertEqual(len(users.parse_line(line_for(salt=b64(b"s" * 64))).salt), 64)

    def test_stored_key_too_short(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(stored=b64(STORED[:31])))

    def test_stored_key_too_long(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(stored=b64(STORED + b"x")))

    def test_server_key_wrong_length(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(server=b64(SERVER[:16])))

    def test_server_key_empty(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(server=""))

    def test_empty_group_list(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(groups=""))

    def test_empty_group_name(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(groups="ops,,db"))

    def test_bad_group_name(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(groups="ops,-db"))

    def test_duplicate_group(self) -> None:
        self.assertRaises(UsersFileError, users.parse_line, line_for(groups="ops,ops"))

    def test_error_never_quotes_secrets(self) -> None:
        bad_cases = [
            line_for(stored=b64(STORED[:31])),
            line_for(server=b64(SERVER) + "A"),
            line_for(salt=b64(b"s" * 8)),
            line_for(iterations="1"),
            line_for(groups="-x"),
        ]
        for bad in bad_cases:
            e = self.assertRaises(UsersFileError, users.parse_line, bad)
            for secret in (b64(SALT), b64(STORED), b64(SERVER), b64(STORED[:31]), b64(b"s" * 8)):
                self.assertNotIn(secret, str(e))


class StoreLoadTests(TempDirMixin, unittest.TestCase):
    def test_load(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        text = "# comment\n\n" + line_for(groups="ops") + "\n   \n" + line_for(name="bob") + "\n"
        self.write_file(path, text)
        store = UserStore.load(path)
        self.assertEqual(store.names(), ["alice", "bob"])
        self.assertEqual(store.lookup("alice"), record(groups=("ops",)))
        self.assertIsNone(store.lookup("carol"))
        self.assertEqual(store.groups_of("alice"), ("ops",))
        self.assertEqual(store.groups_of("bob"), ())
        self.assertEqual(store.groups_of("carol"), ())
        self.assertEqual(len(store), 2)

    def test_crlf_file(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        self.write_file(path, "# c\r\n" + line_for() + "\r\n")
        self.assertEqual(UserStore.load(path).names(), ["alice"])

    def test_missing(self) -> None:
        path = os.path.join(self.make_dir(), "nope")
        self.assertRaises(FileNotFoundError, UserStore.load, path)

    def test_world_readable(self) -> None:
        path = self.write_file(os.path.join(self.make_dir(), "users"), line_for(), 0o644)
        e = self.assertRaises(InsecureUsersFile, UserStore.load, path)
        self.assertIn(path, str(e))
        self.assertIn("0644", str(e))
        self.assertIn("chmod 600", str(e))

    def test_group_readable(self) -> None:
        path = self.write_file(os.path.join(self.make_dir(), "users"), line_for(), 0o640)
        self.assertRaises(InsecureUsersFile, UserStore.load, path)

    def test_group_writable(self) -> None:
        path = self.write_file(os.path.join(self.make_dir(), "users"), line_for(), 0o620)
        self.assertRaises(InsecureUsersFile, UserStore.load, path)

    def test_world_writable(self) -> None:
        path = self.write_file(os.path.join(self.make_dir(), "users"), line_for(), 0o602)
        self.assertRaises(InsecureUsersFile, UserStore.load, path)

    def test_owner_read_only_accepted(self) -> None:
        path = self.write_file(os.path.join(self.make_dir(), "users"), line_for(), 0o400)
        self.assertEqual(UserStore.load(path).names(), ["alice"])

    def test_directory_refused(self) -> None:
        path = self.make_dir()
        os.chmod(path, 0o700)
        self.assertRaises(InsecureUsersFile, UserStore.load, path)

    def test_fifo_refused(self) -> None:
        path = os.path.join(self.make_dir(), "fifo")
        os.mkfifo(path, 0o600)
        self.assertRaises(InsecureUsersFile, UserStore.load, path)

    def test_duplicate_name(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        self.write_file(path, line_for() + "\n#\n" + line_for() + "\n")
        e = self.assertRaises(UsersFileError, UserStore.load, path)
        self.assertEqual(e.lineno, 3)
        self.assertIn("line 1", str(e))

    def test_bad_line_number(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        self.write_file(path, "# ok\n" + line_for() + "\nbroken\n")
        e = self.assertRaises(UsersFileError, UserStore.load, path)
        self.assertEqual((e.path, e.lineno), (path, 3))

    def test_not_utf8(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        with open(path, "wb") as f:
            f.write(b"# \xff\xfe\n")
        os.chmod(path, 0o600)
        self.assertRaises(UsersFileError, UserStore.load, path)

    def test_indented_comment_is_an_error(self) -> None:
        path = self.write_file(os.path.join(self.make_dir(), "users"), "  # x\n")
        self.assertRaises(UsersFileError, UserStore.load, path)

    def test_empty_file(self) -> None:
        path = self.write_file(os.path.join(self.make_dir(), "users"), "")
        store = UserStore.load(path)
        self.assertEqual(store.names(), [])
        self.assertEqual(len(store.auth_info("anyone")[0]), 16)


class MockVerifierTests(TempDirMixin, unittest.TestCase):
    def test_known_user(self) -> None:
        store = UserStore.from_records([record()])
        self.assertEqual(store.auth_info("alice"), (SALT, STORED, SERVER, 4096))

    def test_unknown_user_shape(self) -> None:
        salt, stored, server, iterations = UserStore.from_records([record()]).auth_info("mallory")
        self.assertEqual((len(salt), len(stored), len(server), iterations), (16, 32, 32, 4096))
        self.assertNotEqual(stored, server)

    def test_unknown_user_stable(self) -> None:
        store = UserStore.from_records([record()])
        self.assertEqual(store.auth_info("mallory"), store.auth_info("mallory"))

    def test_unknown_users_differ(self) -> None:
        store = UserStore.from_records([record()])
        self.assertNotEqual(store.auth_info("mallory")[0], store.auth_info("eve")[0])

    def test_stable_across_loads(self) -> None:
        path = self.write_file(os.path.join(self.make_dir(), "users"), line_for() + "\n")
        self.assertEqual(
            UserStore.load(path).auth_info("mallory"), UserStore.load(path).auth_info("mallory")
        )

    def test_changes_with_content(self) -> None:
        path = self.write_file(os.path.join(self.make_dir(), "users"), line_for() + "\n")
        before = UserStore.load(path).auth_info("mallory")
        self.write_file(path, line_for() + "\n" + line_for(name="bob") + "\n")
        self.assertNotEqual(UserStore.load(path).auth_info("mallory"), before)

    def test_from_records_stable(self) -> None:
        a = UserStore.from_records([record()])
        b = UserStore.from_records([record()])
        self.assertEqual(a.auth_info("mallory"), b.auth_info("mallory"))

    def test_empty_store_random_key(self) -> None:
        a = UserStore.from_records([])
        b = UserStore.from_records([])
        self.assertEqual(a.auth_info("mallory"), a.auth_info("mallory"))
        self.assertNotEqual(a.auth_info("mallory"), b.auth_info("mallory"))

    def test_odd_names(self) -> None:
        store = UserStore.from_records([record()])
        for name in ["", "a" * 5000, "\ud800", "x:y,z", "\x00"]:
            self.assertEqual(len(store.auth_info(name)), 4)

    def test_mock_iterations_follow_the_file(self) -> None:
        """
        An unknown name gets the most common iteration count, so it does not stand out.
        """
        recs = [
            UserRecord("a", 8192, SALT, STORED, SERVER),
            UserRecord("b", 8192, SALT, STORED, SERVER),
            UserRecord("c", 4096, SALT, STORED, SERVER),
        ]
        self.assertEqual(UserStore.from_records(recs).auth_info("z")[3], 8192)

    def test_duplicate_records_refused(self) -> None:
        self.assertRaises(ValueError, UserStore.from_records, [record(), record()])


class MockKeyTests(TempDirMixin, unittest.TestCase):
    """
    The gateway's mock-verifier key: an unknown name's salt must not change when the users
    file does, or comparing salts before and after an C{adduser} reveals the real users.
    """

    def test_unknown_salt_survives_users_file_changes(self) -> None:
        state = self.make_dir()
        path = self.write_file(os.path.join(state, "users"), line_for() + "\n")
        before = UserStore.load(path, mock_key=load_mock_key(state))
        self.write_file(path, line_for() + "\n" + line_for(name="bob") + "\n")
        after = UserStore.load(path, mock_key=load_mock_key(state))
        for name in ("mallory", "eve", "root"):
            self.assertEqual(after.auth_info(name), before.auth_info(name))
        self.assertNotEqual(after.auth_info("bob"), before.auth_info("bob"))  # now real

    def test_created_once_mode_0600(self) -> None:
        state = self.make_dir()
        key = load_mock_key(state)
        path = os.path.join(state, MOCK_KEY_FILE)
        self.assertEqual(len(key), 32)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(load_mock_key(state), key)
        self.assertEqual(os.listdir(state), [MOCK_KEY_FILE])  # no temporary file left

    def test_keys_differ_between_installations(self) -> None:
        self.assertNotEqual(load_mock_key(self.make_dir()), load_mock_key(self.make_dir()))

    def test_truncated_key_refused(self) -> None:
        state = self.make_dir()
        self.write_file(os.path.join(state, MOCK_KEY_FILE), "short")
        error = self.assertRaises(UsersFileError, load_mock_key, state)
        self.assertIn("delete it", str(error))

    def test_key_readable_by_others_refused(self) -> None:
        state = self.make_dir()
        load_mock_key(state)
        os.chmod(os.path.join(state, MOCK_KEY_FILE), 0o644)
        self.assertRaises(UsersFileError, load_mock_key, state)

    def test_link_refused(self) -> None:
        state = self.make_dir()
        target = os.path.join(self.make_dir(), "key")
        with open(target, "wb") as handle:
            handle.write(bytes(32))
        os.chmod(target, 0o600)
        os.symlink(target, os.path.join(state, MOCK_KEY_FILE))
        self.assertRaises(UsersFileError, load_mock_key, state)


class WriteUsersTests(TempDirMixin, unittest.TestCase):
    def set_umask(self, mask: int) -> None:
        old = os.umask(mask)
        self.addCleanup(os.umask, old)

    def test_round_trip(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        recs = [record(groups=("ops",)), record(name="bob")]
        users.write_users(path, recs)
        self.assertEqual(UserStore.load(path).records(), recs)

    def test_mode_0600_with_permissive_umask(self) -> None:
        self.set_umask(0)
        path = os.path.join(self.make_dir(), "users")
        users.write_users(path, [record()])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_mode_0600_with_strict_umask(self) -> None:
        self.set_umask(0o377)
        path = os.path.join(self.make_dir(), "users")
        users.write_users(path, [record()])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_replaces_insecure_file(self) -> None:
        path = self.write_file(os.path.join(self.make_dir(), "users"), "old\n", 0o644)
        users.write_users(path, [record()])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(UserStore.load(path).names(), ["alice"])

    def test_no_temp_file_left(self) -> None:
        directory = self.make_dir()
        path = os.path.join(directory, "users")
        users.write_users(path, [record()])
        users.write_users(path, [record(), record(name="bob")])
        self.assertEqual(os.listdir(directory), ["users"])

    def test_no_temp_file_left_on_failure(self) -> None:
        directory = self.make_dir()
        path = self.write_file(os.path.join(directory, "users"), line_for() + "\n")

        def failing_replace(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        self.patch(os, "replace", failing_replace)
        self.assertRaises(OSError, users.write_users, path, [record(name="bob")])
        self.assertEqual(os.listdir(directory), ["users"])
        self.assertEqual(UserStore.load(path).names(), ["alice"])

    def test_creates_parent_0700(self) -> None:
        self.set_umask(0)
        parent = os.path.join(self.make_dir(), "etc-netguard")
        path = os.path.join(parent, "users")
        users.write_users(path, [record()])
        self.assertEqual(stat.S_IMODE(os.stat(parent).st_mode), 0o700)
        self.assertEqual(UserStore.load(path).names(), ["alice"])

    def test_duplicate_names_refused(self) -> None:
        directory = self.make_dir()
        path = os.path.join(directory, "users")
        self.assertRaises(UsersFileError, users.write_users, path, [record(), record()])
        self.assertEqual(os.listdir(directory), [])

    def test_header_comment(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        users.write_users(path, [])
        with open(path, encoding="utf-8") as f:
            self.assertTrue(f.read().startswith("# netguard users file"))


class EditTests(TempDirMixin, unittest.TestCase):
    def test_add_user_creates_file(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        rec = users.add_user(path, "alice", "pw", groups=("ops",))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(UserStore.load(path).lookup("alice"), rec)
        self.assertTrue(password_matches(rec, "pw"))

    def test_add_user_appends(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        users.add_user(path, "alice", "pw")
        users.add_user(path, "bob", "pw2", iterations=4097)
        store = UserStore.load(path)
        self.assertEqual(store.names(), ["alice", "bob"])
        bob = store.lookup("bob")
        assert bob is not None
        self.assertEqual(bob.iterations, 4097)

    def test_add_existing(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        users.add_user(path, "alice", "pw")
        e = self.assertRaises(UserExists, users.add_user, path, "alice", "other")
        self.assertIn("alice", str(e))
        alice = UserStore.load(path).lookup("alice")
        assert alice is not None
        self.assertTrue(password_matches(alice, "pw"))

    def test_add_to_insecure_file(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        users.add_user(path, "alice", "pw")
        os.chmod(path, 0o644)
        self.assertRaises(InsecureUsersFile, users.add_user, path, "bob", "pw")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)

    def test_add_bad_name(self) -> None:
        directory = self.make_dir()
        self.assertRaises(ValueError, users.add_user, os.path.join(directory, "u"), "a b", "pw")
        self.assertEqual(os.listdir(directory), [])

    def test_set_password(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        old = users.add_user(path, "alice", "pw", groups=("ops",), iterations=4100)
        users.add_user(path, "bob", "pw")
        users.set_password(path, "alice", "new")
        store = UserStore.load(path)
        new = store.lookup("alice")
        assert new is not None
        self.assertEqual((new.groups, new.iterations), (("ops",), 4100))
        self.assertNotEqual(new.salt, old.salt)
        self.assertTrue(password_matches(new, "new"))
        self.assertFalse(password_matches(new, "pw"))
        self.assertEqual(store.names(), ["alice", "bob"])

    def test_set_password_missing_user(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        users.add_user(path, "alice", "pw")
        self.assertRaises(NoSuchUser, users.set_password, path, "bob", "pw")

    def test_set_password_missing_file(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        self.assertRaises(FileNotFoundError, users.set_password, path, "bob", "pw")

    def test_set_password_missing_directory(self) -> None:
        path = os.path.join(self.make_dir(), "no", "users")
        e = self.assertRaises(FileNotFoundError, users.set_password, path, "bob", "pw")
        self.assertEqual(e.filename, path)
        self.assertFalse(os.path.exists(os.path.dirname(path)))

    def test_delete_user(self) -> None:
        path = os.path.join(self.make_dir(), "users")
        users.add_user(path, "alice", "pw")
        users.add_user(path, "bob", "pw")
        users.delete_user(path, "alice")
        self.assertEqual(UserStore.load(path).names(), ["bob"])
        self.assertRaises(NoSuchUser, users.delete_user, path, "alice")


class EnsureUsersFileTests(TempDirMixin, unittest.TestCase):
    def test_creates_admin(self) -> None:
        path = os.path.join(self.make_dir(), "state", "users")
        result = users.ensure_users_file(path)
        assert result is not None
        name, password = result
        self.assertEqual(name, "admin")
        self.assertGreaterEqual(len(password), 24)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        admin = UserStore.load(path).lookup("admin")
        assert admin is not None
        self.assertTrue(password_matches(admin, password))

    def test_existing_left_alone(self) -> None:
        path = self.write_file(os.path.join(self.make_dir(), "users"), line_for() + "\n")
        self.assertIsNone(users.ensure_users_file(path))
        self.assertEqual(UserStore.load(path).names(), ["alice"])

    def test_passwords_differ(self) -> None:
        directory = self.make_dir()
        a = users.ensure_users_file(os.path.join(directory, "a"))
        b = users.ensure_users_file(os.path.join(directory, "b"))
        assert a is not None and b is not None
        self.assertNotEqual(a[1], b[1])


_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


class ParseLinePropertyTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.text())
    def test_arbitrary_text(self, text: str) -> None:
        try:
            users.parse_line(text)
        except UsersFileError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.sampled_from(
                    [":", "$", ",", "SCRAM-SHA-256", "4096", "alice", b64(SALT), b64(STORED)]
                ),
                st.text(alphabet=_B64_CHARS + ":$,\x00\n", max_size=50),
            ),
            max_size=12,
        )
    )
    def test_near_valid_text(self, pieces: list[str]) -> None:
        try:
            rec = users.parse_line("".join(pieces))
        except UsersFileError:
            return
        self.assertEqual(users.parse_line(users.format_line(rec)), rec)

    @settings(max_examples=200, deadline=None)
    @given(
        name=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z"),
        iterations=st.integers(4096, 10_000_000),
        salt=st.binary(min_size=12, max_size=64),
        stored=st.binary(min_size=32, max_size=32),
        server=st.binary(min_size=32, max_size=32),
        groups=st.lists(st.from_regex(r"\A[a-z0-9][a-z0-9._@-]{0,10}\Z"), unique=True, max_size=4),
    )
    def test_round_trip(
        self,
        name: str,
        iterations: int,
        salt: bytes,
        stored: bytes,
        server: bytes,
        groups: list[str],
    ) -> None:
        rec = UserRecord(name, iterations, salt, stored, server, tuple(groups))
        self.assertEqual(users.parse_line(users.format_line(rec)), rec)

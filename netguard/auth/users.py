# -*- test-case-name: tests.test_users -*-
"""
The users file: salted SCRAM-SHA-256 verifiers, one user per line, in PostgreSQL's format,
readable by its owner only (L{UserStore.load}, L{write_users}).

L{UserStore.auth_info} answers every name, known or not: an unknown name gets a stable mock
verifier (L{load_mock_key}), so a client cannot tell a missing user from a wrong password.
The format, its checks and the file's mode: C{docs/operating.md} section 2. This module is
a lower layer: it knows nothing of the gateway.
"""

from __future__ import annotations

import binascii
import collections
import contextlib
import errno
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
from scramp import ScramException, ScramMechanism

from netguard.secretfile import read_or_create_key

#: The only mechanism a verifier line may name.
VERIFIER_SCHEME = "SCRAM-SHA-256"

#: The iteration counts scramp accepts (its DoS guard and its floor).
MIN_ITERATIONS = 4096
MAX_ITERATIONS = 10_000_000

#: The default iteration count for new verifiers (RFC 7677's minimum, PostgreSQL's default).
DEFAULT_ITERATIONS = 4096

#: Salt length bounds. scramp refuses salts shorter than 12 bytes at authentication time,
#: so a shorter salt is refused here, when the file is read, rather than at every login.
MIN_SALT_BYTES = 12
MAX_SALT_BYTES = 64

#: The salt length of new verifiers and of mock verifiers (PostgreSQL's length too).
SALT_BYTES = 16

#: StoredKey and ServerKey are SHA-256 outputs.
KEY_BYTES = 32

#: The largest users file L{UserStore.load} reads.
MAX_FILE_BYTES = 16 * 1024 * 1024

#: The name of the first user L{ensure_users_file} creates.
DEFAULT_ADMIN = "admin"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_ITERATIONS_RE = re.compile(r"[1-9][0-9]*")
_MOCK_KEY_DOMAIN = b"netguard mock verifier key v1\x00"
_FILE_HEADER = "# netguard users file: written by `netguard adduser`/`passwd`; keep it mode 0600\n"


class UsersFileError(Exception):
    """
    A users file (or one line of it) is unusable.

    The message never quotes the secret parts of a line (salt, StoredKey, ServerKey).

    @ivar path: the file's path, or C{"<string>"}.
    @ivar lineno: the 1-based line number, or 0 when the problem is not one line's.
    @ivar message: what is wrong, in a few words.
    """

    def __init__(self, path: str, lineno: int, message: str) -> None:
        """
        @param path: the file's path.
        @param lineno: the 1-based line number, or 0.
        @param message: what is wrong.
        """
        self.path = path
        self.lineno = lineno
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        """
        @return: C{"path:line: message"}, or C{"path: message"} when the line number is 0.
        """
        where = f"{self.path}:{self.lineno}" if self.lineno else self.path
        return f"{where}: {self.message}"


class InsecureUsersFile(UsersFileError):
    """
    The users file may be read or written by others than its owner, or is not a regular file.
    """


class UserExists(UsersFileError):
    """
    L{add_user} was asked to add a name that the file already holds.
    """


class NoSuchUser(UsersFileError):
    """
    L{set_password} or L{delete_user} was asked about a name the file does not hold.
    """


def validate_name(name: str) -> str:
    """
    Check a user or group name: 1 to 64 characters, ASCII letters, digits and C{._@-}, not
    starting with a punctuation character (so never C{:} or C{,}).

    @param name: the candidate name.
    @return: C{name}, unchanged.
    @raise ValueError: if the name is not valid (the message does not repeat it).
    """
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ValueError(
            "invalid name: use 1 to 64 ASCII letters, digits and ._@- "
            "starting with a letter or digit"
        )
    return name


def _validate_name_attr(_instance: Any, _attribute: Any, value: str) -> None:
    validate_name(value)


def _validate_iterations(_instance: Any, _attribute: Any, value: int) -> None:
    if type(value) is not int or not MIN_ITERATIONS <= value <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be an int from {MIN_ITERATIONS} to {MAX_ITERATIONS}")


def _validate_salt(_instance: Any, _attribute: Any, value: bytes) -> None:
    if type(value) is not bytes or not MIN_SALT_BYTES <= len(value) <= MAX_SALT_BYTES:
        raise ValueError(f"salt must be {MIN_SALT_BYTES} to {MAX_SALT_BYTES} bytes")


def _validate_key(_instance: Any, attribute: Any, value: bytes) -> None:
    if type(value) is not bytes or len(value) != KEY_BYTES:
        raise ValueError(f"{attribute.name} must be exactly {KEY_BYTES} bytes")


def _validate_groups(_instance: Any, _attribute: Any, value: tuple[str, ...]) -> None:
    for group in value:
        try:
            validate_name(group)
        except ValueError:
            raise ValueError("invalid group name") from None
    if len(set(value)) != len(value):
        raise ValueError("a group is listed twice")


def _to_groups(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError("groups must be a sequence of names, not one string")
    return tuple(value)


@attrs.frozen
class UserRecord:
    """
    One user's SCRAM-SHA-256 verifier and groups. Every field is validated on construction.

    @ivar name: the user name (see L{validate_name}).
    @ivar iterations: the PBKDF2 iteration count, 4096 to 10,000,000.
    @ivar salt: the salt, 12 to 64 bytes.
    @ivar stored_key: H(ClientKey), 32 bytes.
    @ivar server_key: HMAC(SaltedPassword, "Server Key"), 32 bytes.
    @ivar groups: the user's groups, each a valid name, no repeats.
    """

    name: str = attrs.field(validator=_validate_name_attr)
    iterations: int = attrs.field(validator=_validate_iterations)
    salt: bytes = attrs.field(validator=_validate_salt, repr=False)
    stored_key: bytes = attrs.field(validator=_validate_key, repr=False)
    server_key: bytes = attrs.field(validator=_validate_key, repr=False)
    groups: tuple[str, ...] = attrs.field(
        default=(), converter=_to_groups, validator=_validate_groups
    )

    def auth_info(self) -> tuple[bytes, bytes, bytes, int]:
        """
        The verifier in the shape scramp's C{auth_fn} returns.

        @return: C{(salt, stored_key, server_key, iterations)}.
        """
        return (self.salt, self.stored_key, self.server_key, self.iterations)


def make_record(
    name: str,
    password: str,
    iterations: int = DEFAULT_ITERATIONS,
    groups: Iterable[str] = (),
) -> UserRecord:
    """
    Derive a new verifier from a password, with a fresh random 16-byte salt.

    @param name: the user name.
    @param password: the password (SASLprep-normalised by scramp, as clients do).
    @param iterations: the PBKDF2 iteration count, at least 4096.
    @param groups: the user's groups.
    @return: the new record.
    @raise ValueError: for a bad name, group or iteration count, or an empty password or one
        SASLprep forbids (control characters, for example).
    """
    validate_name(name)
    if not isinstance(password, str) or password == "":
        raise ValueError("the password must not be empty")
    if type(iterations) is not int or not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be from {MIN_ITERATIONS} to {MAX_ITERATIONS}")
    try:
        salt, stored_key, server_key, count = ScramMechanism(VERIFIER_SCHEME).make_auth_info(
            password, iteration_count=iterations, salt=secrets.token_bytes(SALT_BYTES)
        )
    except ScramException as e:
        # scramp's messages about a password name the SASLprep rule, never the password.
        raise ValueError(f"unusable password: {e.args[0]}") from None
    return UserRecord(
        name=name,
        iterations=count,
        salt=salt,
        stored_key=stored_key,
        server_key=server_key,
        groups=tuple(groups),
    )


def _b64_strict(text: str, what: str) -> bytes:
    """
    Decode canonical base64: strict alphabet and padding, and no stray bits.
    """
    if not text.isascii():
        raise ValueError(f"{what} is not base64")
    raw = text.encode("ascii")
    try:
        data = binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        raise ValueError(f"{what} is not valid base64") from None
    if binascii.b2a_base64(data, newline=False) != raw:
        raise ValueError(f"{what} is not canonical base64")
    return data


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def parse_line(line: str, *, path: str = "<string>", lineno: int = 0) -> UserRecord:
    """
    Parse one verifier line (a trailing C{\\n} or C{\\r\\n} is allowed).

    @param line: the line.
    @param path: the file name, for the error.
    @param lineno: the line number, for the error.
    @return: the record.
    @raise UsersFileError: for anything but one well-formed verifier line; the message never
        quotes the salt or the keys.
    """

    def fail(message: str) -> UsersFileError:
        return UsersFileError(path, lineno, message)

    if line.endswith("\r\n"):
        line = line[:-2]
    elif line.endswith("\n"):
        line = line[:-1]
    parts = line.split(":")
    if len(parts) not in (4, 5):
        raise fail(
            "expected name:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>[:groups]"
        )
    name, scheme_iter, salt_stored, server_b64 = parts[:4]
    try:
        validate_name(name)
    except ValueError as e:
        raise fail(str(e)) from None
    scheme, sep, iter_text = scheme_iter.partition("$")
    if not sep or scheme != VERIFIER_SCHEME:
        raise fail(f"user {name}: the scheme must be {VERIFIER_SCHEME}")
    if _ITERATIONS_RE.fullmatch(iter_text) is None:
        raise fail(f"user {name}: the iteration count must be a decimal number")
    # Compared as text first: a count of a thousand digits is out of range, not a big int.
    iterations = int(iter_text) if len(iter_text) <= len(str(MAX_ITERATIONS)) else 0
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        shown = iter_text if len(iter_text) <= 20 else iter_text[:20] + "..."
        raise fail(
            f"user {name}: the iteration count {shown} is out of range "
            f"(from {MIN_ITERATIONS} to {MAX_ITERATIONS})"
        )
    salt_b64, sep, stored_b64 = salt_stored.partition("$")
    if not sep:
        raise fail(f"user {name}: expected <salt>$<StoredKey>")
    groups: tuple[str, ...] = ()
    if len(parts) == 5:
        if parts[4] == "":
            raise fail(f"user {name}: empty group list (drop the last ':')")
        groups = tuple(parts[4].split(","))
    try:
        return UserRecord(
            name=name,
            iterations=iterations,
            salt=_b64_strict(salt_b64, "salt"),
            stored_key=_b64_strict(stored_b64, "StoredKey"),
            server_key=_b64_strict(server_b64, "ServerKey"),
            groups=groups,
        )
    except ValueError as e:
        raise fail(f"user {name}: {e}") from None


def format_line(rec: UserRecord) -> str:
    """
    Render a record as one verifier line, without the newline.

    @param rec: the record.
    @return: the line; L{parse_line} of it gives back an equal record.
    """
    line = (
        f"{rec.name}:{VERIFIER_SCHEME}${rec.iterations}:"
        f"{_b64(rec.salt)}${_b64(rec.stored_key)}:{_b64(rec.server_key)}"
    )
    if rec.groups:
        line += ":" + ",".join(rec.groups)
    return line


def _parse_content(text: str, path: str) -> list[UserRecord]:
    records: list[UserRecord] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), start=1):
        body = line[:-1] if line.endswith("\r") else line
        if body.strip() == "" or body.startswith("#"):
            continue
        rec = parse_line(body, path=path, lineno=lineno)
        if rec.name in seen:
            raise UsersFileError(
                path, lineno, f"user {rec.name} is already defined on line {seen[rec.name]}"
            )
        seen[rec.name] = lineno
        records.append(rec)
    return records


def _render(records: Iterable[UserRecord]) -> str:
    return _FILE_HEADER + "".join(format_line(r) + "\n" for r in records)


def _check_unique(records: list[UserRecord], path: str) -> None:
    seen: set[str] = set()
    for rec in records:
        if rec.name in seen:
            raise UsersFileError(path, 0, f"user {rec.name} is given twice")
        seen.add(rec.name)


class UserStore:
    """
    An immutable set of verifiers, looked up by name.

    Build one with L{UserStore.load} or L{UserStore.from_records}; reload by building a new one.
    """

    def __init__(self, records: Iterable[UserRecord], mock_key: bytes) -> None:
        """
        Prefer L{load} or L{from_records}.

        @param records: the records; names must be unique.
        @param mock_key: the secret that mock verifiers for unknown names are derived from.
        @raise ValueError: if a name is given twice or the key is shorter than 16 bytes.
        """
        by_name: dict[str, UserRecord] = {}
        for rec in records:
            if rec.name in by_name:
                raise ValueError(f"user {rec.name} is given twice")
            by_name[rec.name] = rec
        if len(mock_key) < 16:
            raise ValueError("the mock key must be at least 16 bytes")
        self._records = by_name
        self._mock_key = bytes(mock_key)
        counts = collections.Counter(r.iterations for r in by_name.values())
        # Mock verifiers use the most common iteration count of the real ones (the smallest
        # of equally common ones), so the count does not single out unknown names.
        self._mock_iterations = (
            min(counts, key=lambda i: (-counts[i], i)) if counts else DEFAULT_ITERATIONS
        )

    @classmethod
    def load(cls, path: str, mock_key: bytes | None = None) -> UserStore:
        """
        Read and check a users file.

        @param path: the file.
        @param mock_key: the key mock verifiers derive from (L{load_mock_key}); by default one
            derived from the file's whole content (stable only while the file is unchanged).
        @return: the store.
        @raise FileNotFoundError: if the file does not exist.
        @raise InsecureUsersFile: if the file is not a regular file, or its mode lets the
            group or others read or write it.
        @raise UsersFileError: if the file is too large, not UTF-8, or has a bad line or a
            name defined twice.
        """
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise InsecureUsersFile(path, 0, "not a regular file")
        with os.fdopen(fd, "rb") as f:
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise InsecureUsersFile(
                    path,
                    0,
                    f"mode {mode:04o} lets other users read or change it; run: chmod 600 {path}",
                )
            if st.st_size > MAX_FILE_BYTES:
                raise UsersFileError(path, 0, f"larger than {MAX_FILE_BYTES} bytes")
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise UsersFileError(path, 0, f"larger than {MAX_FILE_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsersFileError(path, 0, "not UTF-8 text") from None
        records = _parse_content(text, path)
        if mock_key is None:
            mock_key = _mock_key_for(raw) if records else secrets.token_bytes(32)
        return cls(records, mock_key)

    @classmethod
    def from_records(cls, records: Iterable[UserRecord]) -> UserStore:
        """
        Build a store from records in memory.

        @param records: the records; names must be unique.
        @return: the store; its mock key is derived from the records' rendered lines, or is
            32 random bytes when there are none.
        @raise ValueError: if a name is given twice.
        """
        recs = list(records)
        if not recs:
            return cls(recs, secrets.token_bytes(32))
        return cls(recs, _mock_key_for(_render(recs).encode("utf-8")))

    @property
    def mock_iterations(self) -> int:
        """
        The iteration count unknown names are answered with: the one most users have (a user
        with another count can be told from an unknown name; give every user the same).
        """
        return int(self._mock_iterations)

    def lookup(self, name: str) -> UserRecord | None:
        """
        @param name: a user name.
        @return: the user's record, or L{None}.
        """
        return self._records.get(name)

    def names(self) -> list[str]:
        """
        @return: every user name, sorted.
        """
        return sorted(self._records)

    def groups_of(self, name: str) -> tuple[str, ...]:
        """
        @param name: a user name.
        @return: the user's groups; C{()} for an unknown name.
        """
        rec = self._records.get(name)
        return rec.groups if rec is not None else ()

    def records(self) -> list[UserRecord]:
        """
        @return: every record, in file order.
        """
        return list(self._records.values())

    def __len__(self) -> int:
        """
        @return: the number of users.
        """
        return len(self._records)

    def auth_info(self, name: str) -> tuple[bytes, bytes, bytes, int]:
        """
        The verifier for C{name}, or a mock one for an unknown name.

        A mock verifier has a 16-byte salt, and StoredKey and ServerKey of 32 bytes, all
        derived by HMAC-SHA256 from this store's secret key and the name, so they are the
        same at every attempt while the file is unchanged; its StoredKey is no hash of any
        ClientKey anyone knows, so no proof ever matches it.

        @param name: the name a client gave (any text).
        @return: C{(salt, stored_key, server_key, iterations)}, always.
        """
        # The mock is computed for every name, known or not, so both take the same work.
        encoded = name.encode("utf-8", "surrogatepass")
        salt = hmac.digest(self._mock_key, encoded, "sha256")[:SALT_BYTES]
        stored = hmac.digest(self._mock_key, b"stored-key\x00" + encoded, "sha256")
        server = hmac.digest(self._mock_key, b"server-key\x00" + encoded, "sha256")
        rec = self._records.get(name)
        if rec is not None:
            return rec.auth_info()
        return (salt, stored, server, self._mock_iterations)


#: The file in the state directory that holds the mock-verifier key.
MOCK_KEY_FILE = "mock-verifier.key"
MOCK_KEY_BYTES = 32


def load_mock_key(state_dir: str) -> bytes:
    """
    The key unknown names' mock verifiers derive from: 32 random bytes in
    C{<state_dir>/mock-verifier.key} (mode 0600), created atomically on first use and the
    same ever after. So an unknown name keeps its salt across restarts and across changes to
    the users file: a client comparing salts before and after an C{adduser} learns nothing
    about the other names.

    @param state_dir: the gateway's state directory (it must exist).
    @return: the key.
    @raise UsersFileError: if the file is not a regular file of exactly 32 bytes, is another
        user's, or others may read it (delete it to have a new one made; unknown names then
        get new salts once): L{netguard.secretfile.read_or_create_key}.
    """
    path = os.path.join(state_dir, MOCK_KEY_FILE)
    try:
        return read_or_create_key(path, MOCK_KEY_BYTES)
    except ValueError as error:
        raise UsersFileError(path, 0, str(error)) from None


def _mock_key_for(content: bytes) -> bytes:
    return hashlib.sha256(_MOCK_KEY_DOMAIN + content).digest()


def _parent_dir(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _ensure_parent(path: str) -> str:
    parent = _parent_dir(path)
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
        os.chmod(parent, 0o700)
    return parent


def write_users(path: str, records: Iterable[UserRecord]) -> None:
    """
    Replace the users file atomically with the given records.

    The new content goes to a temporary file in the same directory, created with mode 0600
    (C{O_CREAT|O_EXCL}), flushed and fsynced, then renamed over C{path}, and the directory is
    fsynced. A missing parent directory is created with mode 0700. Readers see the old file
    or the new one, never a mix; the temporary file never outlives this call.

    @param path: the users file.
    @param records: the records, in the order to write them; names must be unique.
    @raise UsersFileError: if a name is given twice.
    @raise OSError: if the directory or file cannot be written.
    """
    recs = list(records)
    _check_unique(recs, path)
    data = _render(recs).encode("utf-8")
    parent = _ensure_parent(path)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@contextlib.contextmanager
def _dir_lock(path: str, create: bool = False) -> Iterator[None]:
    """
    Hold an exclusive C{flock} on the users file's directory, so that two writers (two
    C{netguard adduser} at once) do not lose each other's change. No lock file is left behind.
    The directory is created (mode 0700) only if C{create} is true.
    """
    parent = _ensure_parent(path) if create else _parent_dir(path)
    try:
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(dfd)


def _load_for_update(path: str) -> list[UserRecord]:
    try:
        return UserStore.load(path).records()
    except FileNotFoundError:
        return []


def add_user(
    path: str,
    name: str,
    password: str,
    groups: Iterable[str] = (),
    iterations: int = DEFAULT_ITERATIONS,
) -> UserRecord:
    """
    Add a user to the users file, creating the file if it does not exist.

    @param path: the users file.
    @param name: the new user's name.
    @param password: the new user's password.
    @param groups: the new user's groups.
    @param iterations: the PBKDF2 iteration count.
    @return: the new record.
    @raise UserExists: if the name is taken.
    @raise InsecureUsersFile: if the existing file's mode is too open.
    @raise UsersFileError: if the existing file is malformed.
    @raise ValueError: for a bad name, group, iteration count or password.
    """
    validate_name(name)
    with _dir_lock(path, create=True):
        records = _load_for_update(path)
        if any(r.name == name for r in records):
            raise UserExists(path, 0, f"user {name} already exists")
        rec = make_record(name, password, iterations=iterations, groups=groups)
        write_users(path, [*records, rec])
    return rec


def set_password(path: str, name: str, password: str) -> UserRecord:
    """
    Give an existing user a new password (new salt, same iteration count and groups).

    @param path: the users file.
    @param name: the user.
    @param password: the new password.
    @return: the new record.
    @raise FileNotFoundError: if the file does not exist.
    @raise NoSuchUser: if the user does not exist.
    @raise InsecureUsersFile: if the file's mode is too open.
    @raise UsersFileError: if the file is malformed.
    @raise ValueError: for an unusable password.
    """
    validate_name(name)
    with _dir_lock(path):
        records = UserStore.load(path).records()
        index = next((i for i, r in enumerate(records) if r.name == name), None)
        if index is None:
            raise NoSuchUser(path, 0, f"no user {name}")
        old = records[index]
        rec = make_record(name, password, iterations=old.iterations, groups=old.groups)
        records[index] = rec
        write_users(path, records)
    return rec


def delete_user(path: str, name: str) -> None:
    """
    Remove a user from the users file.

    @param path: the users file.
    @param name: the user.
    @raise FileNotFoundError: if the file does not exist.
    @raise NoSuchUser: if the user does not exist.
    @raise InsecureUsersFile: if the file's mode is too open.
    @raise UsersFileError: if the file is malformed.
    """
    validate_name(name)
    with _dir_lock(path):
        records = UserStore.load(path).records()
        kept = [r for r in records if r.name != name]
        if len(kept) == len(records):
            raise NoSuchUser(path, 0, f"no user {name}")
        write_users(path, kept)


def ensure_users_file(path: str) -> tuple[str, str] | None:
    """
    Create a users file with one user, C{admin}, and a generated password, if none exists.

    The password is returned so that the caller can show it once; it is never logged here.

    @param path: the users file.
    @return: C{("admin", password)} if the file was created, L{None} if it already existed.
    @raise OSError: if the file cannot be created.
    """
    if os.path.lexists(path):
        return None
    with _dir_lock(path, create=True):
        if os.path.lexists(path):
            return None
        password = secrets.token_urlsafe(18)
        write_users(path, [make_record(DEFAULT_ADMIN, password)])
    return (DEFAULT_ADMIN, password)

# -*- test-case-name: tests.test_secretfile -*-
"""
Reading secrets (passwords) from files that only their owner can read.

A secret never comes from the command line or the environment (both are visible to other
users of the machine through /proc); it comes from a terminal prompt or from a file with no
permission for group or others. Binary keys the gateway makes itself (L{read_or_create_key})
live in such files too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat

from netguard.log import escape
from netguard.operator_files import open_regular

#: A password file larger than this is not a password file.
MAX_PASSWORD_FILE_SIZE = 4096


def read_password_file(path: str) -> str:
    """
    Read a password from a file that only its owner can read.

    @param path: the file; it must be a regular file whose mode gives no permission to group
        or others (0600, 0400 or stricter). Its content minus one trailing newline is the
        password, in UTF-8.
    @return: the password.
    @raise ValueError: if the file is missing, too permissive, not regular, too large, empty
        or not UTF-8 (the message never shows the content).
    """
    try:
        fd, info = open_regular(path)
    except OSError as exc:
        raise ValueError(f"password_file={escape(path)}: {exc.strerror}") from None
    try:
        if info.st_mode & 0o077:
            raise ValueError(
                f"password_file={escape(path)}: mode {stat.S_IMODE(info.st_mode):04o} lets "
                "group or others access it; use 0600 or stricter"
            )
        if info.st_size > MAX_PASSWORD_FILE_SIZE:
            raise ValueError(f"password_file={escape(path)}: larger than a password can be")
        raw = os.read(fd, MAX_PASSWORD_FILE_SIZE + 1)
    finally:
        os.close(fd)
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    try:
        password = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"password_file={escape(path)}: not UTF-8") from None
    if not password:
        raise ValueError(f"password_file={escape(path)}: empty")
    return password


def read_or_create_key(path: str, size: int) -> bytes:
    """
    Read a binary key of C{size} bytes from a file only its owner can read, creating it
    atomically (mode 0600, C{size} random bytes) when it is missing. Two processes creating
    it at once end with the same key: the first link wins and the other reads it.

    @param path: the key file; never followed when it is a symbolic link.
    @param size: the key's length in bytes.
    @return: the key.
    @raise ValueError: if the file cannot be read or made, is not a regular file of exactly
        C{size} bytes, is owned by another user, or lets group or others access it (the
        message never shows the key).
    """
    key = read_key_file(path, size)
    if key is None:
        return _create_key(path, size)
    if len(key) != size:
        raise ValueError(
            f"key file {escape(path)}: not a {size}-byte key; delete it to have one made"
        )
    return key


def read_key_file(path: str, limit: int) -> bytes | None:
    """
    Read a binary secret of at most C{limit} bytes from a regular file that we own and that
    gives group and others no permission.

    @param path: the file; never followed when it is a symbolic link.
    @return: its content (at most C{limit} + 1 bytes are read, so a longer file shows as
        longer than C{limit}), or L{None} when it is missing.
    @raise ValueError: if it cannot be read, is not a regular file, is owned by another user
        (as root: other than root or its directory's owner) or is too permissive (the
        message never shows the content).
    """
    try:
        fd, info = open_regular(path, os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"key file {escape(path)}: {exc.strerror}") from None
    try:
        if not _trusted_owner(path, info.st_uid):
            raise ValueError(
                f"key file {escape(path)}: owned by uid {info.st_uid}, not by us "
                f"(uid {os.geteuid()}) nor by its directory's owner"
            )
        if info.st_mode & 0o077:
            raise ValueError(
                f"key file {escape(path)}: mode {stat.S_IMODE(info.st_mode):04o} lets group "
                "or others access it; use 0600"
            )
        return os.read(fd, limit + 1)
    finally:
        os.close(fd)


def _trusted_owner(path: str, uid: int) -> bool:
    """
    Whether a key file owned by C{uid} may be trusted: ours (or root's, which we can read
    only as root); as root, also its directory's owner's (C{twistd --uid} starts as root
    and hands the state directory to the user it runs as, who owns the keys from then on).
    """
    euid = os.geteuid()
    if uid in (euid, 0):
        return True
    if euid != 0:
        return False
    try:
        return os.stat(os.path.dirname(path) or ".").st_uid == uid
    except OSError:
        return False


def write_key_file(path: str, data: bytes) -> None:
    """
    Replace a binary secret file atomically: C{data} written in full under a temporary name
    (mode 0600) and synced, renamed over C{path}, then the directory synced, so a crash
    leaves the old file or the new one, never a part.

    @raise ValueError: when it cannot be written (the message never shows the content).
    """
    temporary = f"{path}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _sync_directory(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise ValueError(f"key file {escape(path)}: cannot write: {exc.strerror}") from None


def _sync_directory(path: str) -> None:
    """
    Sync the directory holding C{path}, so a new name in it survives a crash.
    """
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_key(path: str, size: int) -> bytes:
    """
    Make a new key file: written in full under a temporary name, then linked into place
    (never replacing a key another process made meanwhile: that one is read instead), and
    the directory synced.
    """
    key = secrets.token_bytes(size)
    temporary = f"{path}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except OSError as exc:
        raise ValueError(f"key file {escape(path)}: cannot create: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
            _sync_directory(path)
        except FileExistsError:
            return read_or_create_key(path, size)
        except OSError as exc:
            raise ValueError(f"key file {escape(path)}: cannot create: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return key

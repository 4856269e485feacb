# -*- test-case-name: tests.test_secretfile -*-
"""
Reading secrets (passwords) from files that only their owner can read.

A secret never comes from the command line or the environment (both are visible to other
users of the machine through /proc); it comes from a terminal prompt or from a file with no
permission for group or others.
"""

from __future__ import annotations

import os
import stat

from netguard.log import escape

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
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ValueError(f"password_file={escape(path)}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"password_file={escape(path)}: not a regular file")
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

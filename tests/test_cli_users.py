"""
Tests for L{netguard.cli.users}: the directories C{netguard adduser} creates for a users file
whose directory does not exist yet (docs/operating.md section 2).
"""

from __future__ import annotations

import io
import os
import stat

from twisted.trial import unittest

from netguard import cli


class MissingDirectoriesTests(unittest.TestCase):
    """
    A users file in directories that do not exist: the file's own directory is created
    0700, the missing ones above it with the usual mode (the umask), as documented.
    """

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.addCleanup(os.umask, os.umask(0o022))

    def adduser(self, path: str) -> int:
        out, err = io.StringIO(), io.StringIO()
        return cli.main(
            ["adduser", "gina", "--users", path],
            stdin=io.StringIO("pw\n"),
            stdout=out,
            stderr=err,
            getpass=lambda prompt: "",
        )

    def mode(self, *parts: str) -> int:
        return stat.S_IMODE(os.stat(os.path.join(self.base, *parts)).st_mode)

    def test_only_the_files_own_directory_is_private(self) -> None:
        """
        C{--users BASE/nonexist/dir/users}: C{dir} is 0700, C{nonexist} 0755 (umask 022),
        the file 0600.
        """
        path = os.path.join(self.base, "nonexist", "dir", "users")
        self.assertEqual(self.adduser(path), 0)
        self.assertEqual(self.mode("nonexist", "dir"), 0o700)
        self.assertEqual(self.mode("nonexist"), 0o755)
        self.assertEqual(self.mode("nonexist", "dir", "users"), 0o600)

    def test_one_missing_directory(self) -> None:
        """
        The boundary: only the file's own directory missing, created 0700 whatever the
        umask lets through.
        """
        os.umask(0)
        path = os.path.join(self.base, "etc", "users")
        self.assertEqual(self.adduser(path), 0)
        self.assertEqual(self.mode("etc"), 0o700)

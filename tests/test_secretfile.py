"""
Tests for L{netguard.secretfile}: passwords only from files their owner alone can read.
"""

from __future__ import annotations

import os

from twisted.trial import unittest

from netguard.secretfile import MAX_PASSWORD_FILE_SIZE, read_password_file


class ReadPasswordFileTests(unittest.TestCase):
    def write(self, data: bytes, mode: int = 0o600) -> str:
        path = self.mktemp()
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, mode)
        return path

    def test_reads_and_strips_one_newline(self):
        self.assertEqual(read_password_file(self.write(b"s3cret pass\n")), "s3cret pass")

    def test_crlf(self):
        self.assertEqual(read_password_file(self.write(b"pw\r\n")), "pw")

    def test_only_one_newline_stripped(self):
        self.assertEqual(read_password_file(self.write(b"pw\n\n")), "pw\n")

    def test_0400_accepted(self):
        self.assertEqual(read_password_file(self.write(b"pw", 0o400)), "pw")

    def test_group_readable_refused(self):
        with self.assertRaises(ValueError) as caught:
            read_password_file(self.write(b"pw", 0o640))
        self.assertIn("0640", str(caught.exception))

    def test_world_readable_refused(self):
        with self.assertRaises(ValueError):
            read_password_file(self.write(b"pw", 0o604))

    def test_missing(self):
        with self.assertRaises(ValueError):
            read_password_file(self.mktemp())

    def test_directory(self):
        path = self.mktemp()
        os.mkdir(path, 0o700)
        with self.assertRaises(ValueError):
            read_password_file(path)

    def test_empty(self):
        with self.assertRaises(ValueError):
            read_password_file(self.write(b"\n"))

    def test_not_utf8(self):
        with self.assertRaises(ValueError):
            read_password_file(self.write(b"\xff\xfe"))

    def test_too_large(self):
        with self.assertRaises(ValueError):
            read_password_file(self.write(b"x" * (MAX_PASSWORD_FILE_SIZE + 1)))

    def test_message_never_shows_the_content(self):
        with self.assertRaises(ValueError) as caught:
            read_password_file(self.write(b"\xffhunter2", 0o600))
        self.assertNotIn("hunter2", str(caught.exception))

"""
Tests for L{netguard.errors}: the stable codes and their one-line rendering.
"""

from __future__ import annotations

from twisted.trial import unittest

from netguard.errors import DEFAULT_TEXT, ErrorCode, format_error


class FormatErrorTests(unittest.TestCase):
    def test_every_code_has_default_text(self):
        self.assertEqual(set(DEFAULT_TEXT), set(ErrorCode))

    def test_default_text(self):
        self.assertEqual(format_error(ErrorCode.BUSY), b"ERR BUSY busy, try later")

    def test_given_text(self):
        self.assertEqual(format_error(ErrorCode.BUSY, "rate"), b"ERR BUSY rate")

    def test_control_bytes_cannot_break_the_line(self):
        line = format_error(ErrorCode.BAD_SYNTAX, "a\r\nERR FORGED x\x1b[31m")
        self.assertEqual(line, b"ERR BAD_SYNTAX a??ERR FORGED x?[31m")

    def test_non_ascii_replaced(self):
        self.assertEqual(format_error(ErrorCode.TIMEOUT, "é"), b"ERR TIMEOUT ?")

    def test_text_is_bounded(self):
        self.assertEqual(
            len(format_error(ErrorCode.TIMEOUT, "x" * 1000)), len(b"ERR TIMEOUT ") + 200
        )

    def test_codes_are_their_names(self):
        for code in ErrorCode:
            self.assertEqual(code.value, code.name)

"""
Tests for L{netguard.quoting}: how operator messages show the values they got.
"""

from __future__ import annotations

from twisted.trial import unittest

from netguard.quoting import describe_value, toml_string, truncate


class TomlStringTests(unittest.TestCase):
    """
    L{toml_string}: a TOML basic string of printable ASCII only.
    """

    def test_plain_text_quoted(self) -> None:
        """Printable ASCII is kept, between double quotes."""
        self.assertEqual(toml_string("tcp:7700"), '"tcp:7700"')

    def test_quote_and_backslash_escaped(self) -> None:
        """A double quote and a backslash are escaped with a backslash."""
        self.assertEqual(toml_string('a"b\\c'), '"a\\"b\\\\c"')

    def test_control_and_non_ascii_escaped(self) -> None:
        """Control characters and non-ASCII text become \\u or \\U escapes."""
        self.assertEqual(toml_string("\x1b[2J\u00e9\U0001f600"), '"\\u001b[2J\\u00e9\\U0001f600"')


class TruncateTests(unittest.TestCase):
    """
    L{truncate}: long text is cut and marked.
    """

    def test_short_text_kept(self) -> None:
        """Text within the limit is returned unchanged."""
        self.assertEqual(truncate("x" * 80), "x" * 80)

    def test_long_text_cut(self) -> None:
        """Text past the limit is cut to the limit and ends with an ellipsis."""
        self.assertEqual(truncate("abcdef", 3), "abc...")


class DescribeValueTests(unittest.TestCase):
    """
    L{describe_value}: a value named by its TOML type, and shown when short.
    """

    def test_each_type(self) -> None:
        """Booleans, numbers, strings, arrays, tables and nothing each get their words."""
        for value, expected in [
            (True, "the boolean true"),
            (3, "the integer 3"),
            (1.5, "the number 1.5"),
            ("a\nb", 'the string "a\\u000ab"'),
            ([1], "an array"),
            ({}, "a table"),
            (None, "nothing"),
            (b"x", "a bytes"),
        ]:
            self.assertEqual(describe_value(value), expected)

    def test_long_string_cut(self) -> None:
        """A long string is cut to 80 characters before it is shown."""
        self.assertEqual(describe_value("y" * 100), f'the string "{"y" * 80}..."')

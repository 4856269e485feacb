# -*- test-case-name: tests.test_quoting -*-
"""
How messages to the operator show a value they got: as a TOML basic string of printable
ASCII, cut to a length, or named by its TOML type. Used by the configuration and by
L{netguard.endpoints}, so that a bad value never reaches a terminal or a log unescaped.
"""

from __future__ import annotations

__all__ = ["describe_value", "toml_string", "truncate"]


def toml_string(text: str) -> str:
    """
    Render text as a TOML basic string made only of printable ASCII.
    """
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def truncate(text: str, limit: int = 80) -> str:
    """
    Cut text shown in an error message.
    """
    return text if len(text) <= limit else text[:limit] + "..."


def describe_value(value: object) -> str:
    """
    Name a TOML value's type, and show it if it is short, for an error message.
    """
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {toml_string(truncate(value))}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}"

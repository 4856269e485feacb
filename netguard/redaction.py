# -*- test-case-name: tests.test_config -*-
"""
Hiding secrets in endpoint strings before they are shown (C{netguard check-config}, errors,
log lines): the values of options whose name looks like a password or token, the password
of a URL's user part, also in endpoint strings nested in option values.
C{docs/operating.md} section 9.
"""

from __future__ import annotations

import re
from typing import Final

from netguard.endpoints import EndpointError, Field, join_fields, split_description

_SECRET_KEY_RE: Final = re.compile(r"pass|secret|token|credential|apikey", re.IGNORECASE)
_URL_USERINFO_RE: Final = re.compile(r"(//[^/@:\s]*:)[^/@\s]*@")


def looks_secret(name: str) -> bool:
    """
    Whether an option or key name looks like it holds a password or token.
    """
    return _SECRET_KEY_RE.search(name) is not None


def redact_description(description: str, depth: int = 0) -> str:
    """
    Hide secrets in an endpoint-like string: values of options whose name looks like a
    password or token, and the password part of C{scheme://user:password@host}, also in
    the endpoint strings nested in option values (C{proxy=}, C{endpoint=}, C{gateway=}),
    to any depth up to 8.
    """
    text = _URL_USERINFO_RE.sub(r"\1***@", description)
    try:
        fields = split_description(text)
    except EndpointError:
        return text
    redacted: list[Field] = []
    for f in fields:
        if f.key is not None and looks_secret(f.key):
            f = Field(f.key, "***")
        elif f.key is not None and ":" in f.value and depth < 8:
            f = Field(f.key, redact_description(f.value, depth + 1))
        redacted.append(f)
    if redacted == fields:
        return text
    return join_fields(redacted)

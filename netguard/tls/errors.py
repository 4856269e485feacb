# -*- test-case-name: tests.test_tls -*-
"""
The errors of netguard's TLS layer: a file or setting that cannot be used, and a server
certificate that failed a client's verification.
"""

from __future__ import annotations


class TLSConfigError(ValueError):
    """
    A TLS file or setting cannot be used.

    @ivar path: the file (or setting name) at fault, or L{None}.
    @ivar problem: what is wrong with it, in words an operator can act on.
    """

    def __init__(self, path: str | None, problem: str) -> None:
        """
        @param path: the file or setting at fault.
        @param problem: what is wrong.
        """
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


class TLSVerificationError(Exception):
    """
    The server's certificate failed our verification (name or pin); the connection is
    aborted during the handshake and this is the reason its protocol is given.

    @ivar reason: what failed, in words.
    """

    def __init__(self, reason: str) -> None:
        """
        @param reason: what failed.
        """
        super().__init__(reason)
        self.reason = reason

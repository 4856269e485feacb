# -*- test-case-name: tests.test_gateway_protocol -*-
"""
The NGP/1 session's state machine: its states, the command words and how many arguments
each takes, the commands each state accepts and the method that handles each, and the
syntax check every line passes before its command is looked at. C{docs/protocol.md}
sections 3 and 4.
"""

from __future__ import annotations

import enum
import re

from netguard.errors import ErrorCode

#: What a line of the line phase may hold.
_PRINTABLE = re.compile(rb"[\x20-\x7e]*\Z")


class SessionState(enum.Enum):
    """
    Where an NGP/1 session is. The framing's own phases (before the greeting, closing) come
    first and last; these are the states in between.
    """

    READY = "ready"  # greeted, not authenticated
    AUTH_CONTINUE = "auth-continue"  # AUTH accepted, waiting for CONT
    AUTHENTICATED = "authenticated"
    OPENING = "opening"  # OPEN accepted, backend connecting
    RELAYING = "relaying"
    MUX = "mux"  # MUX accepted: the connection carries a multiplexed session
    CLOSED = "closed"


#: Each command word and the exact number of arguments it takes.
ARITY: dict[bytes, int] = {
    b"AUTH": 2,
    b"CONT": 1,
    b"OPEN": 1,
    b"MUX": 1,
    b"SERVICES": 0,
    b"PING": 0,
    b"QUIT": 0,
    b"TICKET": 0,
    b"RESUME": 1,
}

#: The whole state machine: for each state, the commands accepted and their handlers.
TRANSITIONS: dict[SessionState, dict[bytes, str]] = {
    SessionState.READY: {b"AUTH": "do_auth", b"PING": "do_ping", b"QUIT": "do_quit"},
    SessionState.AUTH_CONTINUE: {b"CONT": "do_cont", b"QUIT": "do_quit"},
    SessionState.AUTHENTICATED: {
        b"OPEN": "do_open",
        b"MUX": "do_mux",
        b"SERVICES": "do_services",
        b"TICKET": "do_ticket",
        b"PING": "do_ping",
        b"QUIT": "do_quit",
    },
}


def syntax_problem(line: bytes) -> tuple[ErrorCode, str | None] | None:
    """
    What is wrong with a line of the line phase before its command is looked at, if
    anything: the code and text of the refusal.
    """
    if not line:
        return ErrorCode.BAD_SYNTAX, "empty line"
    if not _PRINTABLE.match(line):
        return ErrorCode.BAD_SYNTAX, "only printable ASCII is allowed in the line phase"
    parts = line.split(b" ")
    if b"" in parts:
        return ErrorCode.BAD_SYNTAX, "words are separated by one space"
    command, args = parts[0].upper(), parts[1:]
    if command not in ARITY:
        return ErrorCode.UNKNOWN_COMMAND, None
    if len(args) != ARITY[command]:
        return ErrorCode.BAD_SYNTAX, f"{command.decode()} takes {ARITY[command]} argument(s)"
    return None

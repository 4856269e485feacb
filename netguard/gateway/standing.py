# -*- test-case-name: tests.test_gateway_standing -*-
"""
Whether a gateway connection may still do what it asks: no password is tried from a source
that admission's penalties block, and nothing is opened for a user who is no longer in the
users file. Shared by the NGP/1 session and the streams of a multiplexed session.
"""

from __future__ import annotations

from typing import Final

from netguard.admission import PENALISED
from netguard.admitting import Admitted
from netguard.auth.users import UserStore
from netguard.errors import ErrorCode

#: The text of C{ERR NOT_AUTHORIZED} for a user removed from the users file since login.
USER_REMOVED: Final = "user removed"

#: The commands a user removed since login may still send.
_HARMLESS: Final = frozenset({b"PING", b"QUIT"})

__all__ = [
    "PENALISED",
    "USER_REMOVED",
    "offence_blocks",
    "source_blocked",
    "standing_refusal",
    "user_removed",
]


def standing_refusal(
    admitted: Admitted | None, users: UserStore, user: str | None, command: bytes
) -> tuple[ErrorCode, str] | None:
    """
    Whether a valid command of the line phase is refused (and the connection closed, with no
    new offence) because the connection lost its standing: C{AUTH} or C{CONT} from a source
    admission blocks is C{ERR BUSY penalised} (no password is tried from it, as a new
    connection from it is refused), and any command but C{PING} and C{QUIT} of a user
    removed from the users file since login is C{ERR NOT_AUTHORIZED user removed}.

    @param admitted: the connection's hold on its admission slot, if any.
    @param users: the user store in force.
    @param user: the authenticated user, or L{None} before login.
    @param command: the command word, upper case.
    @return: the code and text to refuse with, or L{None} to go on.
    """
    if command in (b"AUTH", b"CONT"):
        if source_blocked(admitted):
            return ErrorCode.BUSY, PENALISED
    elif command not in _HARMLESS and user_removed(users, user):
        return ErrorCode.NOT_AUTHORIZED, USER_REMOVED
    return None


def source_blocked(admitted: Admitted | None) -> bool:
    """
    Whether the source of a connection is blocked by admission's penalties now (read only:
    no point, slot or token is taken).

    @param admitted: the connection's hold on its admission slot, or L{None} when it is not
        under admission control (never blocked then).
    """
    if admitted is None or admitted.address is None:
        return False
    return admitted.admission.slot_blocked(admitted.slot, admitted.address)


def offence_blocks(admitted: Admitted | None, kind: str) -> bool:
    """
    Record an offence of C{kind} by the connection's source.

    @return: whether its source is blocked now (by this offence or an earlier one).
    """
    if admitted is None or admitted.address is None:
        return False
    return admitted.offence(kind) is not None


def user_removed(users: UserStore, user: str | None) -> bool:
    """
    Whether C{user}, authenticated on a connection, has been removed from the users file
    since (a reload took it out). An unauthenticated connection (L{None}) never has.
    """
    return user is not None and users.lookup(user) is None

# -*- test-case-name: tests.test_gateway_tickets -*-
"""
The part of an NGP/1 session that deals with admission's lanes: returning-client tickets
(C{TICKET} after login, C{RESUME} before the greeting), probation, progress and eviction,
and a log that stays bounded when a flood of connections never sends a command.

Wire format: C{docs/protocol.md} ("Returning-client tickets"); the lanes: C{docs/operating.md}
section 8.
"""

from __future__ import annotations

import re
from typing import Any, Final

from twisted.internet.interfaces import ISSLTransport

from netguard.admitting import Admitted
from netguard.errors import ErrorCode, format_error
from netguard.framing import FramingPhase, GuardedLineReceiver, peer_label
from netguard.gateway.standing import USER_REMOVED
from netguard.log import escape
from netguard.tickets import Outcome, TicketBook, TicketCheck

#: The offence kind of a forged, expired or replayed ticket, and of logging in as another
#: user than the ticket's.
BAD_TICKET_OFFENCE: Final = "bad_ticket"
#: Seconds a connection admission ended (evicted, or at the end of its probation) may take
#: to read its C{ERR BUSY} line before it is aborted: it holds no slot any more.
ENDED_LINGER: Final = 2.0
#: The refusal text of a ticket asked for by a session whose user's password has changed
#: since it logged in.
PASSWORD_CHANGED: Final = "password changed since login"
#: The C{closed_by} of a connection admission ended.
CLOSED_BY_ADMISSION: Final = "admission"
#: A C{RESUME} word (any case, anywhere on a line: a line may be cut or begin with junk) and
#: the rest of its line, where its ticket is (whole or cut short by an excerpt's end).
_RESUME_TICKET: Final = re.compile(rb"(?i)RESUME[^\n]*")
#: A C{CONT} word and the rest of its line, where a SCRAM client-final message is: its proof,
#: with the user's StoredKey from the users file, gives the ClientKey that logs in.
_SCRAM_FINAL: Final = re.compile(rb"(?i)CONT[^\n]*")


def _hidden(match: re.Match[bytes]) -> bytes:
    found = match.group()
    return found[:6] + (b" <ticket>\r" if found.endswith(b"\r") else b" <ticket>")


def _hidden_final(match: re.Match[bytes]) -> bytes:
    found = match.group()
    return found[:4] + (b" <scram>\r" if found.endswith(b"\r") else b" <scram>")


def hide_secrets(data: bytes) -> bytes:
    """
    C{data} as the log may show a client's bytes: tickets (L{hide_tickets}) and SCRAM
    client-final messages (L{hide_scram_finals}) hidden.
    """
    return hide_scram_finals(hide_tickets(data))


def hide_scram_finals(data: bytes) -> bytes:
    """
    C{data} with the rest of the line after every C{CONT} word (a SCRAM client-final
    message and its proof, whole or cut short) replaced by C{<scram>}; CR LF is kept.
    """
    return _SCRAM_FINAL.sub(_hidden_final, data)


def hide_tickets(data: bytes) -> bytes:
    """
    C{data} with the rest of the line after every C{RESUME} word (its ticket, whatever
    separates them) replaced by C{<ticket>}; a line's CR LF is kept.
    """
    return _RESUME_TICKET.sub(_hidden, data)


class LaneSession(GuardedLineReceiver):
    """
    A line receiver of the gateway that takes part in admission's lanes: it accepts one
    C{RESUME <ticket>} line before the greeting and judges it (a valid ticket enters the
    returning-client lane and is greeted at once; a bad one is C{ERR BAD_TICKET}), issues
    tickets (C{TICKET}), keeps a connection on probation ungreeted, tells admission of
    useful progress, and answers admission's eviction.

    The session proper (L{netguard.gateway.protocol.GatewaySession}) sets C{factory},
    C{admitted}, C{user}, C{closed_by}, C{_started}, C{_accepted}, C{_ticketed},
    C{_lane_user} and C{_tls_ready}.
    """

    #: A returning client's C{RESUME <ticket>} may come before the greeting.
    accepts_pre_greeting_line = True

    factory: Any
    admitted: Admitted | None
    user: str | None
    closed_by: str
    _started: float
    _accepted: bool
    _ticketed: bool
    _lane_user: str | None
    _tls_ready: bool
    _login_verifier: tuple[bytes, bytes, bytes, int] | None

    def ticket_book(self) -> TicketBook | None:
        """
        The gateway's L{TicketBook}, or L{None} when tickets are off.
        """
        book: TicketBook | None = getattr(self.factory, "tickets", None)
        return book

    def greeting_due(self) -> bool:
        """
        A connection on probation is never greeted by the delay: only a valid ticket (then
        L{greet_now}) or the end of its probation (L{_evicted}) ends its wait.
        """
        return self.admitted is None or self.admitted.probation is None

    def pre_greeting_line(self, line: bytes) -> bool:
        """
        C{RESUME <ticket>} before the greeting: judge the ticket. With tickets off (an
        operator turned them off since the client got its ticket) the line buys nothing and
        costs nothing: the client is greeted after the usual delay, without C{TICKETS=1},
        and drops its tickets; an honest returning client is never penalised for it. Any
        other line is early talk.
        """
        if line[:7].upper() != b"RESUME ":
            return False
        book = self.ticket_book()
        if book is not None:
            check = book.check(line[7:], self.transport.getPeer(), self.factory.users)
            shared = book.confirm(check)
            if shared is None:
                self._resume(book, check)
            else:
                # Claimed across processes too (bounded by [shared] timeout); anything the
                # client sends meanwhile is early talk, as before any greeting.
                shared.addCallback(self._resume_confirmed, book)
        return True

    def _resume_confirmed(self, check: TicketCheck, book: TicketBook) -> None:
        """
        Act on a ticket's verdict once the shared spent state answered (or did not in
        time), unless the connection ended meanwhile.
        """
        if self.phase is not FramingPhase.CLOSING:
            self._resume(book, check)

    def loggable_input(self, data: bytes) -> bytes:
        """
        A peer's bytes as the log may show them (early talk, a refusal's input excerpt):
        every C{RESUME} word's ticket, on any line, cut short or not, is C{<ticket>}, and
        every C{CONT} word's SCRAM client-final message (its proof) is C{<scram>}.
        """
        return hide_secrets(data)

    def do_ticket(self) -> None:
        """
        Issue a returning-client ticket (once per connection): C{OK TICKET <token>
        LIFETIME=<seconds>}.
        """
        book = self.ticket_book()
        if book is None:
            self.refuse(ErrorCode.UNKNOWN_COMMAND, offending=b"TICKET", close=False)
            return
        if self._ticketed:
            self.refuse(ErrorCode.BAD_SEQUENCE, "one ticket per connection", close=False)
            return
        self._ticketed = True
        user = self.user or ""
        record = self.factory.users.lookup(user)
        if record is None:  # removed since login (the session refuses this before it asks)
            self.refuse(ErrorCode.NOT_AUTHORIZED, USER_REMOVED)
            return
        if record.auth_info() != self._login_verifier:
            # The password changed since this session logged in: a ticket sealed now would
            # survive the change that revokes the others (and costs the user no issue).
            self.refuse(ErrorCode.NOT_AUTHORIZED, PASSWORD_CHANGED, close=False)
            return
        if not book.may_issue(user):
            # Past the user's issuing rate: no ticket now (the client goes on without one).
            self.refuse(ErrorCode.BUSY, "ticket-rate", close=False)
            return
        issued = book.issue(user, record, self.transport.getPeer())
        if issued is None:
            self.refuse(ErrorCode.NOT_AUTHORIZED, "no ticket for this connection", close=False)
            return
        token, lifetime = issued
        self.factory.stats.count("tickets_issued")
        self.log.info(
            "issued a ticket to {user} at {peer} for {lifetime}s",
            event="ticket.issued",
            lifetime=lifetime,
            **self.log_fields(),
        )
        self.sendLine(f"OK TICKET {token} LIFETIME={lifetime}".encode("ascii"))

    def _resume(self, book: TicketBook, check: TicketCheck) -> None:
        """
        Act on the verdict on a C{RESUME} ticket: refuse a bad one (an offence unless it is
        only revoked), go on as a first-time client from another block or with the spent
        table full, else enter the returning-client lane and greet at once.
        """
        fields = self.log_fields()
        if check.refused:
            self._ticket_refused(check)
            return
        if check.outcome is Outcome.OTHER_BLOCK:
            if not self.note_refusal("other-block", "ticket.other_block"):
                return
            self.log.info(
                "ticket of {ticket_user} presented from another address block by {peer}",
                event="ticket.other_block",
                ticket_user=escape(check.user),
                **fields,
            )
            return
        refusal_reason: str | None = check.outcome.value
        admitted = self.admitted
        if check.outcome is Outcome.VALID:
            on_probation = admitted is not None and admitted.probation is not None
            refusal = None if admitted is None else admitted.enter_lane(user=check.user)
            refusal_reason = None if refusal is None else refusal.reason
            if refusal is None:
                self._lane_user = check.user
                if on_probation:
                    self.factory.stats.count("connections")  # served from now on
        self.factory.stats.count("tickets_accepted")
        self.log.info(
            "ticket of {ticket_user} accepted from {peer}, lane: {lane_text}",
            event="ticket.accepted",
            ticket_user=escape(check.user),
            lane=refusal_reason is None,
            lane_text="entered" if refusal_reason is None else refusal_reason,
            **fields,
        )
        if refusal_reason is None:
            # The lane is for logging in: within lane_login_timeout, or the handshake
            # deadline if nearer (ERR TIMEOUT, a timeout offence, as for any handshake).
            self.limit_handshake(book.settings.lane_login_timeout)
            self.greet_now()

    def lane_login(self, user: str) -> None:
        """
        C{user} logged in: if the connection came through the lane on a ticket of another
        user, the login stands (it proved who it is) but using another's ticket is an
        offence (C{bad_ticket}); the login moves the connection out of the lane in any case.
        """
        ticket_user, self._lane_user = self._lane_user, None
        if ticket_user is None or ticket_user == user:
            return
        if self.admitted is not None and self.admitted.address is not None:
            self.admitted.offence(BAD_TICKET_OFFENCE)
        self.log.info(
            "{user} logged in at {peer} through the lane on a ticket of {ticket_user}",
            event="ticket.user_mismatch",
            ticket_user=escape(ticket_user),
            **self.log_fields(),
        )

    def _ticket_refused(self, check: TicketCheck) -> None:
        """
        Answer C{ERR BAD_TICKET <reason>} and close; record the offence; log
        C{ticket.refused} (the first few per source and reason in an interval, the rest
        summarised).
        """
        admitted = self.admitted
        if check.offence and admitted is not None and admitted.address is not None:
            admitted.offence(BAD_TICKET_OFFENCE)
        self.factory.stats.count("tickets_refused")
        if self.note_refusal(check.reason, "ticket.refused"):
            self.log.info(
                "refused the ticket of {peer}: {reason}",
                event="ticket.refused",
                reason=check.reason,
                offence=check.offence,
                **self.log_fields(),
            )
        self.sendLine(format_error(ErrorCode.BAD_TICKET, check.reason))
        self.close_gracefully()

    def log_accept(self) -> None:
        """
        Log C{conn.accept}, once: the connection sent its first valid command. Until then
        nothing is logged for it, so a flood of connections that never send one (evicted,
        ended on probation, silent) costs no line each (L{close_logged}).
        """
        self._accepted = True
        self.log.info(
            "accepted {peer} on {local}",
            event="conn.accept",
            local=peer_label(self.transport.getHost()),
            accepted_at=self._started,
            **self.log_fields(),
        )

    def close_logged(self) -> bool:
        """
        Whether C{conn.close} is logged for this connection: always once C{conn.accept} was;
        for one that never sent a valid command, never when admission ended it (its
        C{conn.reject} stands for it), else only for the first few of its source and ending
        in an interval, the rest summarised (L{note_refusal}).
        """
        if self._accepted:
            return True
        return self.closed_by != CLOSED_BY_ADMISSION and self.note_refusal(
            self.closed_by, "conn.close"
        )

    def note_refusal(self, reason: str, event: str) -> bool:
        """
        Count one ending of C{event} for C{reason} of this connection's source in the
        gateway's refusal log (the first few per source and reason in an interval are
        logged one by one, the rest summarised).

        @return: whether the caller logs this one.
        """
        refusal_log = getattr(self.factory, "refusal_log", None)
        if refusal_log is None:
            return True
        admitted = self.admitted
        if admitted is not None and admitted.address is not None:
            source = admitted.admission.source_key(admitted.address)
        else:
            source = self.log_fields()["peer"]
        return bool(refusal_log.note(source, reason, event))

    def _progress(self) -> None:
        if self.admitted is not None:
            self.admitted.progress()

    def _evicted(self, reason: str) -> None:
        """
        Admission ended this connection's slot (evicted for a newcomer, or its probation
        ended): count and log it as a refusal of that reason, answer C{ERR BUSY <reason>}
        (nothing with C{reject_mode = "close"}) and close within L{ENDED_LINGER}. Not an
        offence. The connection holds no slot any more, so nothing may keep it: on TLS
        before the handshake finished no line could reach the peer, and it is aborted at
        once.
        """
        admitting = getattr(self.factory, "admitting", None)
        address = None if self.admitted is None else self.admitted.address
        if admitting is not None:
            line = admitting.ended(address, reason)  # counted even when already closing
        else:
            line = format_error(ErrorCode.BUSY, reason)
        if self.phase is FramingPhase.CLOSING:
            return
        self.closed_by = CLOSED_BY_ADMISSION
        if ISSLTransport.providedBy(self.transport) and not self._tls_ready:
            self.close_gracefully(linger=0)
            return
        if line is not None:
            self.sendLine(line)
        self.close_gracefully(linger=ENDED_LINGER)

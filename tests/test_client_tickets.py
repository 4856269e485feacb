"""
Tests for the client side of returning-client tickets: L{netguard.client.tickets} (the strict
parser of C{OK TICKET} and the in-memory store), L{NGPClientProtocol} asking for a ticket
(C{TICKET} pipelined with C{OPEN}) and presenting one (C{RESUME} as the first line), and the
endpoints' one retry without a ticket after C{ERR BAD_TICKET}.

The gateway is scripted by each test on a L{StringTransport} (the real SCRAM server logic,
L{HostileServerScript}, cheating where the test says: a hostile gateway handing out oversized
or garbage tickets, refusing tickets, answering out of order).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.auth.scram import AuthFailed, ServerExchange, decode_wire, encode_wire
from netguard.client.endpoint import NGPClientEndpoint
from netguard.client.protocol import (
    OPEN_TIMEOUT,
    ClientState,
    NGPError,
    NGPProtocolError,
    TicketRefused,
)
from netguard.client.tickets import (
    MAX_LIFETIME,
    MAX_MARGIN,
    MAX_TOKEN,
    MalformedTicket,
    TicketOffer,
    TicketStore,
    parse_ticket_line,
)
from tests.test_client_protocol import (
    PASSWORD,
    PLAIN_GREETING,
    RECORD,
    ClientTestCase,
    HostileServerScript,
    _OneUserStore,
    flip_signature,
)

#: The greeting of a gateway that issues tickets.
TICKET_GREETING = PLAIN_GREETING + b" TICKETS=1"

#: A well-formed token (what the gateway's are: base64url without padding).
TOKEN = b"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLi8w"


def ticket_line(token: bytes = TOKEN, lifetime: int = 3600) -> bytes:
    """
    @return: an C{OK TICKET} line.
    """
    return b"OK TICKET " + token + b" LIFETIME=" + str(lifetime).encode()


class TicketLineTests(unittest.TestCase):
    """
    L{parse_ticket_line} takes exactly C{OK TICKET <token> LIFETIME=<seconds>}: a token of 1
    to 512 base64url characters and a lifetime from 1 to 604800 s, nothing else.
    """

    def test_well_formed(self) -> None:
        """
        The gateway's own form is read: token and lifetime.
        """
        self.assertEqual(parse_ticket_line(ticket_line()), TicketOffer(TOKEN, 3600))

    def test_token_at_the_bound(self) -> None:
        """
        A token of exactly 512 characters is taken.
        """
        token = b"A" * MAX_TOKEN
        self.assertEqual(parse_ticket_line(ticket_line(token)).token, token)

    def test_token_one_past_the_bound(self) -> None:
        """
        A token of 513 characters is refused, and the reason does not quote it.
        """
        with self.assertRaises(MalformedTicket) as caught:
            parse_ticket_line(ticket_line(b"A" * (MAX_TOKEN + 1)))
        self.assertIn("longer than 512", caught.exception.reason)
        self.assertNotIn("AAAA", str(caught.exception))

    def test_token_not_base64url(self) -> None:
        """
        Characters outside base64url (standard base64's C{+} and C{/}, padding, control
        bytes, non-ASCII) are refused.
        """
        for token in (b"ab+c", b"ab/c", b"abc=", b"ab\x00c", b"ab\xffc", b"ab\tc"):
            with self.assertRaises(MalformedTicket, msg=repr(token)):
                parse_ticket_line(ticket_line(token))

    def test_lifetime_bounds(self) -> None:
        """
        1 and 604800 s are taken; 0 and 604801 are not.
        """
        self.assertEqual(parse_ticket_line(ticket_line(lifetime=1)).lifetime, 1)
        self.assertEqual(
            parse_ticket_line(ticket_line(lifetime=MAX_LIFETIME)).lifetime, MAX_LIFETIME
        )
        for lifetime in (0, MAX_LIFETIME + 1):
            with self.assertRaises(MalformedTicket, msg=str(lifetime)):
                parse_ticket_line(ticket_line(lifetime=lifetime))

    def test_lifetime_not_a_plain_number(self) -> None:
        """
        Signs, leading zeros, fractions, exponents, huge digit strings and a missing value
        are refused.
        """
        for word in (b"-1", b"+60", b"060", b"60.0", b"1e3", b"9" * 40, b"", b"sixty"):
            with self.assertRaises(MalformedTicket, msg=repr(word)):
                parse_ticket_line(b"OK TICKET " + TOKEN + b" LIFETIME=" + word)

    def test_wrong_shape(self) -> None:
        """
        Missing or extra words, another order, doubled spaces: refused.
        """
        for line in (
            b"OK TICKET",
            b"OK TICKET " + TOKEN,
            b"OK TICKET " + TOKEN + b" LIFETIME=60 MORE",
            b"OK TICKET LIFETIME=60 " + TOKEN,
            b"OK TICKET  " + TOKEN + b" LIFETIME=60",
            b"OK TICKETS " + TOKEN + b" LIFETIME=60",
        ):
            with self.assertRaises(MalformedTicket, msg=repr(line)):
                parse_ticket_line(line)


class TicketStoreTests(unittest.TestCase):
    """
    L{TicketStore}: a few tickets, each taken once, dropped before their lifetime passes on
    the client's own clock; never shown.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = TicketStore(now=self.clock.seconds)

    def test_taken_once(self) -> None:
        """
        A kept ticket is taken once; the second take finds none.
        """
        self.store.keep(TicketOffer(TOKEN, 3600))
        self.assertEqual(self.store.take(), TOKEN)
        self.assertIsNone(self.store.take())

    def test_newest_first(self) -> None:
        """
        The newest ticket is taken first (the likeliest to be from our current address).
        """
        self.store.keep(TicketOffer(b"old", 3600))
        self.store.keep(TicketOffer(b"new", 3600))
        self.assertEqual(self.store.take(), b"new")
        self.assertEqual(self.store.take(), b"old")

    def test_dropped_at_lifetime_less_margin(self) -> None:
        """
        A 3600 s ticket is usable until 3570 s after it arrived (margin 30 s), not at 3570.
        """
        self.store.keep(TicketOffer(b"a", 3600))
        self.store.keep(TicketOffer(b"b", 3600))
        self.clock.advance(3600 - MAX_MARGIN - 0.001)
        self.assertEqual(self.store.take(), b"b")
        self.clock.advance(0.001)
        self.assertIsNone(self.store.take())
        self.assertEqual(len(self.store), 0)

    def test_short_lifetime_margin_is_a_tenth(self) -> None:
        """
        A 60 s ticket keeps a margin of 6 s: usable before 54 s, not at 54 s.
        """
        self.store.keep(TicketOffer(b"a", 60))
        self.store.keep(TicketOffer(b"b", 60))
        self.clock.advance(53.999)
        self.assertEqual(self.store.take(), b"b")
        self.clock.advance(0.001)
        self.assertIsNone(self.store.take())

    def test_expired_newest_does_not_hide_a_longer_older(self) -> None:
        """
        An older ticket with a longer lifetime (the gateway's lifetime changed) is still
        taken after a newer, shorter one expired.
        """
        self.store.keep(TicketOffer(b"long", 7200))
        self.store.keep(TicketOffer(b"short", 60))
        self.clock.advance(100)
        self.assertEqual(self.store.take(), b"long")

    def test_capacity_pushes_out_the_oldest(self) -> None:
        """
        One past the capacity drops the oldest ticket.
        """
        store = TicketStore(now=self.clock.seconds, capacity=2)
        for token in (b"1", b"2", b"3"):
            store.keep(TicketOffer(token, 3600))
        self.assertEqual(len(store), 2)
        self.assertEqual([store.take(), store.take(), store.take()], [b"3", b"2", None])

    def test_capacity_at_least_one(self) -> None:
        """
        A store that could hold nothing is a mistake: refused.
        """
        self.assertRaises(ValueError, TicketStore, capacity=0)

    def test_clear(self) -> None:
        """
        L{TicketStore.clear} drops every ticket.
        """
        self.store.keep(TicketOffer(b"a", 3600))
        self.store.keep(TicketOffer(b"b", 3600))
        self.store.clear()
        self.assertIsNone(self.store.take())

    def test_never_shown(self) -> None:
        """
        Neither the store's nor an offer's C{repr} shows a token.
        """
        offer = TicketOffer(TOKEN, 3600)
        self.store.keep(offer)
        self.assertNotIn(TOKEN.decode(), repr(self.store))
        self.assertNotIn(TOKEN.decode(), repr(offer))
        self.assertIn("holding 1", repr(self.store))


def ticket_script(
    test: unittest.TestCase, store: TicketStore | None = None, **options: Any
) -> HostileServerScript:
    """
    A scripted gateway session whose client keeps its tickets in C{store} (a new one on the
    script's clock by default).
    """
    clock = Clock()
    if store is None:
        store = TicketStore(now=clock.seconds)
    script = HostileServerScript(test, tickets=store, **options)
    script.store = store  # type: ignore[attr-defined]
    return script


def store_of(script: HostileServerScript) -> TicketStore:
    """
    The ticket store the script's client uses.
    """
    store = script.client.tickets
    assert store is not None
    return store


class WriteCounter:
    """
    Count the writes made to a L{StringTransport}.
    """

    def __init__(self, transport: StringTransport) -> None:
        self.writes: list[bytes] = []
        write = transport.write

        def counted(data: bytes) -> None:
            self.writes.append(data)
            write(data)

        transport.write = counted  # type: ignore[method-assign]


def log_texts(events: list[dict[str, Any]]) -> str:
    """
    Every value of every captured event, as one string (to look for a leaked token).
    """
    return " ".join(repr(value) for event in events for value in event.values())


class TicketRequestTests(ClientTestCase):
    """
    After a verified login to a gateway that offers C{TICKETS=1}, the client asks for a
    ticket in the same write as C{OPEN} and keeps a well-formed answer; anything else from
    the gateway is ignored (never stored, logged without its text) or fails closed as any
    other protocol error does.
    """

    def login_with_tickets(self, script: HostileServerScript) -> WriteCounter:
        """
        Run an honest login to a ticket-issuing gateway up to the client's pipelined
        C{TICKET} and C{OPEN}.
        """
        ok = script.answer_cont(TICKET_GREETING)
        counter = WriteCounter(script.transport)
        script.reply(ok)
        self.assertEqual(script.sent(), [b"TICKET", b"OPEN echo"])
        return counter

    def test_ticket_pipelined_with_open(self) -> None:
        """
        Once the server signature verified, C{TICKET} and C{OPEN} go in one write, in that
        order.
        """
        script = ticket_script(self)
        counter = self.login_with_tickets(script)
        self.assertEqual(counter.writes, [b"TICKET\r\nOPEN echo\r\n"])
        self.assertIs(script.client.state, ClientState.AWAIT_TICKET)

    def test_ticket_kept_and_service_opened(self) -> None:
        """
        C{OK TICKET} then C{OK OPEN} (in one read, with service bytes): the ticket is kept,
        the service opens, the bytes reach the application.
        """
        script = ticket_script(self)
        self.login_with_tickets(script)
        script.feed(ticket_line() + b"\r\nOK OPEN echo\r\nraw")
        self.assertIsNone(self.successResultOf(script.client.opened))
        self.assertEqual(script.client.app_events, ["opened", b"raw"])
        self.assertEqual(store_of(script).take(), TOKEN)

    def test_not_asked_without_the_offer(self) -> None:
        """
        A greeting without C{TICKETS=1}: no C{TICKET}; the tickets kept are dropped (the
        gateway no longer issues them, so it would refuse them).
        """
        script = ticket_script(self, present_ticket=False)
        store_of(script).keep(TicketOffer(TOKEN, 3600))
        script.login()
        self.assertEqual(len(store_of(script)), 0)

    def test_only_the_exact_offer_counts(self) -> None:
        """
        C{TICKETS=2}, C{TICKETS=1x}, C{tickets=1}: not an offer, no C{TICKET} sent.
        """
        for word in (b"TICKETS=2", b"TICKETS=1x", b"tickets=1", b"XTICKETS=1"):
            script = ticket_script(self)
            script.reply(script.answer_cont(PLAIN_GREETING + b" " + word))
            self.assertEqual(script.sent(), [b"OPEN echo"], word)

    def test_not_asked_without_a_store(self) -> None:
        """
        A client without a ticket store (C{tickets=no}) never asks, even when offered.
        """
        script = HostileServerScript(self)
        script.reply(script.answer_cont(TICKET_GREETING))
        self.assertEqual(script.sent(), [b"OPEN echo"])

    def test_forged_signature_gets_no_ticket_request(self) -> None:
        """
        A gateway that cannot prove it holds our verifier is never asked for a ticket (and
        cannot plant one): the client fails closed before C{TICKET}.
        """
        script = ticket_script(self)
        script.feed(
            flip_signature(script.answer_cont(TICKET_GREETING))
            + b"\r\n"
            + ticket_line()
            + b"\r\nOK OPEN echo\r\n"
        )
        self.assert_failed_closed(script, AuthFailed)
        self.assertEqual(len(store_of(script)), 0)

    def test_ticket_before_login_is_refused(self) -> None:
        """
        C{OK TICKET} while the client waits for C{CONT}: an unexpected reply, failed
        closed, nothing kept.
        """
        script = ticket_script(self)
        script.answer_auth(TICKET_GREETING)
        script.reply(ticket_line())
        self.assert_failed_closed(script, NGPProtocolError, "unexpected-reply")
        self.assertEqual(len(store_of(script)), 0)

    def test_ticket_after_open_is_service_data(self) -> None:
        """
        An C{OK TICKET} after C{OK OPEN} is the service's bytes, not a ticket.
        """
        script = ticket_script(self)
        self.login_with_tickets(script)
        script.feed(b"ERR UNKNOWN_COMMAND no\r\nOK OPEN echo\r\n" + ticket_line() + b"\r\n")
        self.assertEqual(script.client.app_events, ["opened", ticket_line() + b"\r\n"])
        self.assertEqual(len(store_of(script)), 0)

    def test_oversized_token_ignored_and_not_logged(self) -> None:
        """
        A hostile gateway's 513-character token: ignored with C{tunnel.ticket.ignored}
        (which does not hold the token), never stored; the session goes on and opens.
        """
        script = ticket_script(self)
        self.login_with_tickets(script)
        token = b"Z" * (MAX_TOKEN + 1)
        with capturedLogs() as events:
            script.reply(ticket_line(token))
        [event] = [e for e in events if e.get("event") == "tunnel.ticket.ignored"]
        self.assertIn("longer than 512", event["reason"])
        self.assertNotIn("ZZZZ", log_texts(events))
        self.assertEqual(len(store_of(script)), 0)
        script.reply(b"OK OPEN echo")
        self.assertIsNone(self.successResultOf(script.client.opened))

    def test_token_at_the_bound_is_kept(self) -> None:
        """
        A 512-character token is kept (the other side of the bound).
        """
        script = ticket_script(self)
        self.login_with_tickets(script)
        script.reply(ticket_line(b"Z" * MAX_TOKEN))
        self.assertEqual(store_of(script).take(), b"Z" * MAX_TOKEN)

    def test_garbage_tickets_ignored(self) -> None:
        """
        A hostile gateway's malformed answers (no token, bad characters, bad lifetimes,
        extra words, binary): each ignored with a log event, none kept, none crashes, and
        the service opens after it.
        """
        for line in (
            b"OK TICKET",
            b"OK TICKET " + TOKEN,
            b"OK TICKET a+b/c= LIFETIME=60",
            b"OK TICKET " + TOKEN + b" LIFETIME=0",
            b"OK TICKET " + TOKEN + b" LIFETIME=99999999999999999999",
            b"OK TICKET " + TOKEN + b" LIFETIME=60 EXTRA",
            b"OK TICKET \xff\x00\x1b[2J LIFETIME=60",
            b"OK TICKETTOKEN",
        ):
            script = ticket_script(self)
            self.login_with_tickets(script)
            with capturedLogs() as events:
                script.reply(line)
            self.assertEqual(
                [e["event"] for e in events if e.get("event") == "tunnel.ticket.ignored"],
                ["tunnel.ticket.ignored"],
                line,
            )
            self.assertEqual(len(store_of(script)), 0, line)
            script.reply(b"OK OPEN echo")
            self.assertIsNone(self.successResultOf(script.client.opened), line)

    def test_line_past_the_bound_fails_closed(self) -> None:
        """
        An answer line longer than the client's 1024-byte bound is a framing violation as
        anywhere else: failed closed (C{line-too-long}), nothing kept.
        """
        script = ticket_script(self)
        self.login_with_tickets(script)
        script.reply(ticket_line(b"A" * 2000))
        self.assert_failed_closed(script, NGPProtocolError, "line-too-long")
        self.assertEqual(len(store_of(script)), 0)

    def test_error_answer_goes_on_without_a_ticket(self) -> None:
        """
        C{ERR UNKNOWN_COMMAND} (tickets turned off since the greeting) in answer to
        C{TICKET}: logged, no ticket, and the answer to C{OPEN} that follows opens.
        """
        script = ticket_script(self)
        self.login_with_tickets(script)
        with capturedLogs() as events:
            script.reply(b"ERR UNKNOWN_COMMAND unknown command")
        self.assertEqual(
            [e["code"] for e in events if e.get("event") == "tunnel.ticket.ignored"],
            ["UNKNOWN_COMMAND"],
        )
        script.reply(b"OK OPEN echo")
        self.assertIsNone(self.successResultOf(script.client.opened))
        self.assertEqual(len(store_of(script)), 0)

    def test_error_answer_then_close_is_the_failure(self) -> None:
        """
        C{ERR SHUTTING_DOWN} in answer to C{TICKET}, then the connection closes: the connect
        fails with that refusal.
        """
        script = ticket_script(self)
        self.login_with_tickets(script)
        script.reply(b"ERR SHUTTING_DOWN going away")
        script.client.connectionLost(Failure(Exception("closed")))
        error = self.failureResultOf(script.client.opened, NGPError).value
        self.assertEqual(error.code, "SHUTTING_DOWN")

    def test_open_refusal_after_the_ticket_fails(self) -> None:
        """
        A ticket, then C{ERR NO_SUCH_SERVICE}: the connect fails with that refusal (the
        ticket is kept: the login was good).
        """
        script = ticket_script(self)
        self.login_with_tickets(script)
        script.feed(ticket_line() + b"\r\nERR NO_SUCH_SERVICE no such service\r\n")
        error = self.failureResultOf(script.client.opened, NGPError).value
        self.assertEqual(error.code, "NO_SUCH_SERVICE")
        self.assertEqual(len(store_of(script)), 1)

    def test_open_answer_instead_of_ticket_fails_closed(self) -> None:
        """
        A gateway that offered tickets but answers C{TICKET} with C{OK OPEN}: out of order,
        failed closed.
        """
        script = ticket_script(self)
        self.login_with_tickets(script)
        script.reply(b"OK OPEN echo")
        error = self.assert_failed_closed(script, NGPProtocolError, "unexpected-reply")
        self.assertIn("OK TICKET", str(error))

    def test_open_deadline_covers_the_ticket(self) -> None:
        """
        Silence after C{TICKET}: the open deadline ends the attempt (C{open-timeout}).
        """
        script = ticket_script(self)
        self.login_with_tickets(script)
        script.clock.advance(OPEN_TIMEOUT)
        self.assert_failed_closed(script, NGPProtocolError, "open-timeout")


class TicketPresentTests(ClientTestCase):
    """
    A client holding a ticket sends C{RESUME <token>} as its first bytes, then logs in
    exactly as without one; a refused ticket fails the attempt with L{TicketRefused} and
    drops every ticket kept.
    """

    def holding(self, *tokens: bytes, **options: Any) -> HostileServerScript:
        """
        A script whose client's store held C{tokens} (oldest first) before it connected.
        """
        clock = Clock()
        store = TicketStore(now=clock.seconds)
        for token in tokens:
            store.keep(TicketOffer(token, 3600))
        return ticket_script(self, store, **options)

    def test_resume_is_the_first_line(self) -> None:
        """
        On connecting, before any greeting, the client sends C{RESUME <token>}; the ticket
        is spent from the store.
        """
        script = self.holding(TOKEN)
        self.assertEqual(script.sent(), [b"RESUME " + TOKEN])
        self.assertTrue(script.client.presented)
        self.assertEqual(len(store_of(script)), 0)

    def test_login_after_resume_is_unchanged(self) -> None:
        """
        After C{RESUME} the greeting is answered with C{AUTH} as always, and the full SCRAM
        exchange runs; a new ticket is asked for.
        """
        script = self.holding(TOKEN)
        script.sent()
        ok = script.answer_cont(TICKET_GREETING)
        script.reply(ok)
        self.assertEqual(script.sent(), [b"TICKET", b"OPEN echo"])
        script.feed(ticket_line(b"next") + b"\r\nOK OPEN echo\r\n")
        self.assertIsNone(self.successResultOf(script.client.opened))
        self.assertEqual(store_of(script).take(), b"next")

    def test_ticket_does_not_replace_the_signature_check(self) -> None:
        """
        A gateway greeted with a valid ticket still has to prove it holds our verifier: a
        forged signature fails the login (L{AuthFailed}), no C{OPEN} is sent.
        """
        script = self.holding(TOKEN)
        script.sent()
        script.reply(flip_signature(script.answer_cont(TICKET_GREETING)))
        self.assert_failed_closed(script, AuthFailed)

    def test_not_presented_when_told_not_to(self) -> None:
        """
        C{present_ticket=False} (the retry after a refused ticket): nothing is sent on
        connecting and the store keeps its tickets.
        """
        script = self.holding(TOKEN, present_ticket=False)
        self.assertEqual(script.sent(), [])
        self.assertFalse(script.client.presented)
        self.assertEqual(len(store_of(script)), 1)

    def test_expired_ticket_not_presented(self) -> None:
        """
        A ticket past its lifetime less the margin is not presented.
        """
        clock = Clock()
        store = TicketStore(now=clock.seconds)
        store.keep(TicketOffer(TOKEN, 3600))
        clock.advance(3600 - MAX_MARGIN)
        script = ticket_script(self, store)
        self.assertEqual(script.sent(), [])

    def test_bad_ticket_is_a_ticket_refusal(self) -> None:
        """
        C{ERR BAD_TICKET} after C{RESUME}: L{TicketRefused} (code C{BAD_TICKET}), failed
        closed, and the other tickets kept are dropped too.
        """
        script = self.holding(b"older", TOKEN)
        script.sent()
        script.reply(b"ERR BAD_TICKET replayed")
        error = self.assert_failed_closed(script, TicketRefused)
        assert isinstance(error, TicketRefused)
        self.assertEqual((error.code, error.text), ("BAD_TICKET", "replayed"))
        self.assertEqual(len(store_of(script)), 0)

    def test_early_talker_after_resume_is_a_ticket_refusal(self) -> None:
        """
        C{ERR EARLY_TALKER} after C{RESUME} (a gateway that no longer reads it): also
        L{TicketRefused}, so the endpoint tries again without a ticket.
        """
        script = self.holding(TOKEN)
        script.reply(b"ERR EARLY_TALKER you spoke before the greeting")
        self.assertIsInstance(self.failureResultOf(script.client.opened).value, TicketRefused)

    def test_bad_ticket_without_resume_is_plain(self) -> None:
        """
        A hostile gateway answering C{ERR BAD_TICKET} to a client that presented nothing
        gets a plain L{NGPError}, never a L{TicketRefused} (which would be retried).
        """
        script = ticket_script(self)
        script.reply(b"ERR BAD_TICKET forged")
        error = self.failureResultOf(script.client.opened, NGPError).value
        self.assertNotIsInstance(error, TicketRefused)

    def test_bad_ticket_after_the_greeting_is_plain(self) -> None:
        """
        C{ERR BAD_TICKET} once the gateway has greeted (the ticket was taken): a plain
        L{NGPError}, not retried.
        """
        script = self.holding(TOKEN)
        script.sent()
        script.answer_auth(TICKET_GREETING)
        script.reply(b"ERR BAD_TICKET late")
        error = self.failureResultOf(script.client.opened, NGPError).value
        self.assertNotIsInstance(error, TicketRefused)

    def test_late_resume_answer_is_skipped(self) -> None:
        """
        The gateway greeted before our C{RESUME} reached it, so it answers that line with
        C{ERR BAD_SEQUENCE} after the greeting: the client skips that one line (logged as
        C{tunnel.ticket.ignored}) and the login goes on to the service.
        """
        script = self.holding(TOKEN)
        script.sent()
        cont = script.answer_auth(TICKET_GREETING)
        with capturedLogs() as events:
            script.reply(b"ERR BAD_SEQUENCE bad sequence")
        self.assertEqual(
            [e["reason"] for e in events if e.get("event") == "tunnel.ticket.ignored"],
            ["late: the gateway greeted first"],
        )
        self.assertNotIn(TOKEN.decode(), log_texts(events))
        script.reply(cont)
        [final] = script.sent()
        assert script.exchange is not None
        script.reply(b"OK " + encode_wire(script.exchange.final(decode_wire(final[5:]))))
        self.assertEqual(script.sent(), [b"TICKET", b"OPEN echo"])
        script.feed(ticket_line() + b"\r\nOK OPEN echo\r\n")
        self.assertIsNone(self.successResultOf(script.client.opened))

    def test_late_resume_to_a_gateway_without_tickets(self) -> None:
        """
        C{ERR UNKNOWN_COMMAND} as the first line after a greeting (a gateway whose tickets
        are off read our late C{RESUME}): skipped too; the login goes on.
        """
        script = self.holding(TOKEN)
        script.sent()
        cont = script.answer_auth(PLAIN_GREETING)
        script.reply(b"ERR UNKNOWN_COMMAND unknown command")
        script.reply(cont)
        self.assertIs(script.client.state, ClientState.AWAIT_AUTH_OK)

    def test_only_one_late_answer_is_skipped(self) -> None:
        """
        A second C{ERR BAD_SEQUENCE} is a refusal of the login as always: failed closed.
        """
        script = self.holding(TOKEN)
        script.sent()
        script.answer_auth(TICKET_GREETING)
        script.reply(b"ERR BAD_SEQUENCE bad sequence")
        script.reply(b"ERR BAD_SEQUENCE bad sequence")
        error = self.assert_failed_closed(script, NGPError)
        assert isinstance(error, NGPError)
        self.assertEqual(error.code, "BAD_SEQUENCE")

    def test_late_answer_only_after_resume(self) -> None:
        """
        Without a presented ticket, C{ERR BAD_SEQUENCE} after the greeting fails the login
        as before (nothing is skipped).
        """
        script = ticket_script(self)
        script.answer_auth(TICKET_GREETING)
        script.reply(b"ERR BAD_SEQUENCE bad sequence")
        self.assert_failed_closed(script, NGPError)

    def test_late_answer_only_first(self) -> None:
        """
        After the first line following the greeting (here C{CONT}), a C{BAD_SEQUENCE} is no
        longer taken for the answer to C{RESUME}.
        """
        script = self.holding(TOKEN)
        script.sent()
        script.reply(script.answer_auth(TICKET_GREETING))
        script.sent()
        script.reply(b"ERR BAD_SEQUENCE bad sequence")
        self.assert_failed_closed(script, NGPError)

    def test_busy_after_resume_is_plain_and_keeps_the_others(self) -> None:
        """
        C{ERR BUSY} after C{RESUME} is about the gateway, not the ticket: a plain
        L{NGPError}; the other tickets stay.
        """
        script = self.holding(b"older", TOKEN)
        script.reply(b"ERR BUSY unauth-cap")
        error = self.failureResultOf(script.client.opened, NGPError).value
        self.assertNotIsInstance(error, TicketRefused)
        self.assertEqual(store_of(script).take(), b"older")


_ADDR = IPv4Address("TCP", "127.0.0.1", 40000)


class ScriptedGateway:
    """
    A fake gateway endpoint for these tests: each C{connect} connects the client's protocol
    to a L{StringTransport}; the test answers as the gateway (the real SCRAM server logic
    for a login).

    @ivar clients: the client protocols, in order.
    """

    def __init__(self) -> None:
        self.clients: list[Any] = []

    def connect(self, factory: Factory) -> Deferred[Any]:
        client = factory.buildProtocol(_ADDR)
        client.makeConnection(StringTransport())
        self.clients.append(client)
        return succeed(client)

    def sent(self, index: int) -> bytes:
        """
        What client C{index} has sent (and clear it).
        """
        transport = self.clients[index].transport
        out: bytes = transport.value()
        transport.clear()
        return out

    def refuse_ticket(self, index: int) -> None:
        """
        Answer client C{index}'s C{RESUME} with C{ERR BAD_TICKET} and close.
        """
        client = self.clients[index]
        client.dataReceived(b"ERR BAD_TICKET expired\r\n")
        client.connectionLost(Failure(Exception("closed")))

    def login(self, index: int, greeting: bytes = TICKET_GREETING) -> None:
        """
        Run an honest login on client C{index}, up to its C{OPEN} (not answered).
        """
        client = self.clients[index]
        client.dataReceived(greeting + b"\r\n")
        verb, mechanism, token = self.sent(index).rstrip(b"\r\n").split(b" ")
        assert verb == b"AUTH"
        exchange = ServerExchange(_OneUserStore(RECORD), mechanism.decode())
        first = exchange.first(decode_wire(token))
        client.dataReceived(b"CONT " + encode_wire(first) + b"\r\n")
        cont = self.sent(index).rstrip(b"\r\n")
        final = exchange.final(decode_wire(cont[5:]))
        client.dataReceived(b"OK " + encode_wire(final) + b"\r\n")


class EndpointRetryTests(unittest.TestCase):
    """
    L{NGPClientEndpoint}: a refused ticket costs one immediate reconnection without a
    ticket, once; the tickets the gateway issues are kept for the next connect.
    """

    def setUp(self) -> None:
        from netguard.client.protocol import Credentials

        self.clock = Clock()
        self.gateway = ScriptedGateway()
        self.store = TicketStore(now=self.clock.seconds)
        self.endpoint = NGPClientEndpoint(
            self.clock, self.gateway, Credentials("alice", PASSWORD), "echo", tickets=self.store
        )

    def test_ticket_kept_then_presented(self) -> None:
        """
        The first connect asks for a ticket; the second presents it as its first line.
        """
        first = self.endpoint.connect(Factory.forProtocol(Protocol))
        self.assertEqual(self.gateway.sent(0), b"")
        self.gateway.login(0)
        self.assertEqual(self.gateway.sent(0), b"TICKET\r\nOPEN echo\r\n")
        self.gateway.clients[0].dataReceived(ticket_line() + b"\r\nOK OPEN echo\r\n")
        self.assertIsInstance(self.successResultOf(first), Protocol)
        self.endpoint.connect(Factory.forProtocol(Protocol))
        self.assertEqual(self.gateway.sent(1), b"RESUME " + TOKEN + b"\r\n")

    def test_refused_ticket_retried_at_once_without_one(self) -> None:
        """
        C{ERR BAD_TICKET}: a second connection is made at once (no clock advance), without
        C{RESUME}, logged as C{tunnel.ticket.refused}; it opens the service.
        """
        self.store.keep(TicketOffer(TOKEN, 3600))
        result = self.endpoint.connect(Factory.forProtocol(Protocol))
        self.assertEqual(self.gateway.sent(0), b"RESUME " + TOKEN + b"\r\n")
        with capturedLogs() as events:
            self.gateway.refuse_ticket(0)
        self.assertEqual(
            [e["event"] for e in events if e.get("event", "").startswith("tunnel.")],
            ["tunnel.ticket.refused"],
        )
        self.assertNotIn(TOKEN.decode(), log_texts(events))
        self.assertEqual(len(self.gateway.clients), 2)
        self.assertEqual(self.gateway.sent(1), b"")
        self.gateway.login(1)
        self.assertEqual(self.gateway.sent(1), b"TICKET\r\nOPEN echo\r\n")
        self.gateway.clients[1].dataReceived(ticket_line(b"new") + b"\r\nOK OPEN echo\r\n")
        self.assertIsInstance(self.successResultOf(result), Protocol)
        self.assertEqual(self.store.take(), b"new")

    def test_retried_only_once(self) -> None:
        """
        A hostile gateway that answers the retry with C{ERR BAD_TICKET} too (though no
        ticket was presented) fails the connect; no third connection.
        """
        self.store.keep(TicketOffer(TOKEN, 3600))
        result = self.endpoint.connect(Factory.forProtocol(Protocol))
        self.gateway.refuse_ticket(0)
        self.gateway.refuse_ticket(1)
        error = self.failureResultOf(result, NGPError).value
        self.assertEqual(error.code, "BAD_TICKET")
        self.assertEqual(len(self.gateway.clients), 2)

    def test_other_refusals_not_retried(self) -> None:
        """
        C{ERR BUSY} after C{RESUME} is not a ticket refusal: the connect fails, no retry
        here (the tunnel's own retry policy decides).
        """
        self.store.keep(TicketOffer(TOKEN, 3600))
        result = self.endpoint.connect(Factory.forProtocol(Protocol))
        self.gateway.clients[0].dataReceived(b"ERR BUSY per-source-cap\r\n")
        self.failureResultOf(result, NGPError)
        self.assertEqual(len(self.gateway.clients), 1)

    def test_cancel_during_the_retry(self) -> None:
        """
        Cancelling the connect while the retry logs in closes the retry's connection.
        """
        self.store.keep(TicketOffer(TOKEN, 3600))
        result = self.endpoint.connect(Factory.forProtocol(Protocol))
        self.gateway.refuse_ticket(0)
        result.cancel()
        self.failureResultOf(result)
        self.assertTrue(self.gateway.clients[1].transport.disconnecting)

    def test_no_tickets(self) -> None:
        """
        C{tickets=False}: never asked for, never presented.
        """
        from netguard.client.protocol import Credentials

        endpoint = NGPClientEndpoint(
            self.clock, self.gateway, Credentials("alice", PASSWORD), "echo", tickets=False
        )
        self.assertIsNone(endpoint.tickets)
        endpoint.connect(Factory.forProtocol(Protocol))
        self.gateway.login(0)
        self.assertEqual(self.gateway.sent(0), b"OPEN echo\r\n")


class MuxEndpointTicketTests(unittest.TestCase):
    """
    L{MuxClientEndpoint}: each login asks for a ticket in the same write as C{MUX}, and
    presents a kept one; a refused ticket costs one immediate login without one, not counted
    as a failed login; a gateway that does not multiplex gets the same store.
    """

    def setUp(self) -> None:
        from netguard.client.mux_endpoint import MuxClientEndpoint
        from netguard.client.protocol import Credentials

        self.clock = Clock()
        self.gateway = ScriptedGateway()
        self.store = TicketStore(now=self.clock.seconds)
        self.endpoint = MuxClientEndpoint(
            self.clock,
            self.gateway,
            Credentials("alice", PASSWORD),
            "echo",
            random=lambda: 0.5,
            tickets=self.store,
        )
        self.addCleanup(self.endpoint.close)

    def connect(self) -> Deferred[Any]:
        connecting = self.endpoint.connect(Factory.forProtocol(Protocol))
        connecting.addErrback(lambda failure: None)
        return connecting

    def test_ticket_pipelined_with_mux_and_kept(self) -> None:
        """
        After the verified login C{TICKET} and C{MUX yamux/1} go in one write; C{OK TICKET}
        and C{OK MUX} in one read bring the session up and the ticket is kept.
        """
        self.connect()
        self.gateway.login(0, TICKET_GREETING + b" MUX=yamux/1")
        self.assertEqual(self.gateway.sent(0), b"TICKET\r\nMUX yamux/1\r\n")
        self.gateway.clients[0].dataReceived(ticket_line() + b"\r\nOK MUX yamux/1 STREAMS=8\r\n")
        self.assertEqual(len(self.endpoint.sessions), 1)
        self.assertEqual(self.store.take(), TOKEN)

    def test_login_presents_a_kept_ticket(self) -> None:
        """
        A login with a ticket in the store sends C{RESUME <token>} first.
        """
        self.store.keep(TicketOffer(TOKEN, 3600))
        self.connect()
        self.assertEqual(self.gateway.sent(0), b"RESUME " + TOKEN + b"\r\n")

    def test_refused_ticket_logs_in_again_at_once(self) -> None:
        """
        C{ERR BAD_TICKET}: a second login starts at once (no backoff, no clock advance),
        without C{RESUME}; it is not a failed login (no C{tunnel.mux.login_failed}).
        """
        self.store.keep(TicketOffer(TOKEN, 3600))
        self.connect()
        self.gateway.sent(0)
        with capturedLogs() as events:
            self.gateway.refuse_ticket(0)
        self.assertEqual(
            [e["event"] for e in events if e.get("event", "").startswith("tunnel.")],
            ["tunnel.ticket.refused"],
        )
        self.assertEqual((self.endpoint.logins, len(self.gateway.clients)), (2, 2))
        self.assertEqual(self.gateway.sent(1), b"")
        self.gateway.login(1, TICKET_GREETING + b" MUX=yamux/1")
        self.gateway.clients[1].dataReceived(b"ERR UNKNOWN_COMMAND\r\nOK MUX yamux/1\r\n")
        self.assertEqual(len(self.endpoint.sessions), 1)

    def test_second_refusal_is_an_ordinary_failure(self) -> None:
        """
        A hostile gateway that answers the login without a ticket with C{ERR BAD_TICKET}
        too: an ordinary failed login (logged, backoff before the next), not a third login
        at once.
        """
        self.store.keep(TicketOffer(TOKEN, 3600))
        self.connect()
        self.gateway.refuse_ticket(0)
        with capturedLogs() as events:
            self.gateway.refuse_ticket(1)
        self.assertIn("tunnel.mux.login_failed", [e.get("event") for e in events])
        self.assertEqual(self.endpoint.logins, 2)
        self.clock.advance(0)
        self.assertEqual(self.endpoint.logins, 2)

    def test_fallback_shares_the_store(self) -> None:
        """
        A gateway without C{MUX=yamux/1}: the per-connection endpoint used from then on
        keeps its tickets in the same store.
        """
        self.connect()
        self.gateway.clients[0].dataReceived(TICKET_GREETING + b"\r\n")
        assert self.endpoint.fallback is not None
        self.assertIs(self.endpoint.fallback.tickets, self.store)

    def test_no_tickets(self) -> None:
        """
        C{tickets=False}: the login asks for none.
        """
        from netguard.client.mux_endpoint import MuxClientEndpoint
        from netguard.client.protocol import Credentials

        endpoint = MuxClientEndpoint(
            self.clock, self.gateway, Credentials("alice", PASSWORD), "echo", tickets=False
        )
        self.addCleanup(endpoint.close)
        endpoint.connect(Factory.forProtocol(Protocol)).addErrback(lambda failure: None)
        self.gateway.login(0, TICKET_GREETING + b" MUX=yamux/1")
        self.assertEqual(self.gateway.sent(0), b"MUX yamux/1\r\n")


class TunnelOptionTests(unittest.TestCase):
    """
    C{netguard tunnel} keeps tickets by default; C{--no-tickets} turns them off, with or
    without C{--mux}.
    """

    def endpoint(self, *extra: str) -> Any:
        from netguard.cli import build_parser
        from netguard.cli.tunnel import build_endpoint
        from netguard.client.protocol import Credentials

        args = build_parser().parse_args(
            ["tunnel", "--gateway", "tcp:127.0.0.1:1", "--service", "echo"]
            + ["--listen", "tcp:0", "--user", "alice", *extra]
        )
        return build_endpoint(Clock(), ScriptedGateway(), Credentials("alice", "pw"), args)

    def test_tickets_by_default(self) -> None:
        """
        Without an option, both kinds of endpoint keep a ticket store.
        """
        self.assertIsInstance(self.endpoint().tickets, TicketStore)
        self.assertIsInstance(self.endpoint("--no-mux").tickets, TicketStore)

    def test_multiplexed_by_default(self) -> None:
        """
        C{netguard tunnel} multiplexes unless told otherwise: without an option (and with
        C{--mux}) its endpoint is a L{MuxClientEndpoint}; C{--no-mux} gives the
        per-connection L{NGPClientEndpoint}.
        """
        from netguard.client.endpoint import NGPClientEndpoint
        from netguard.client.mux_endpoint import MuxClientEndpoint

        self.assertIsInstance(self.endpoint(), MuxClientEndpoint)
        self.assertIsInstance(self.endpoint("--mux"), MuxClientEndpoint)
        endpoint = self.endpoint("--no-mux")
        self.assertIsInstance(endpoint, NGPClientEndpoint)
        self.assertNotIsInstance(endpoint, MuxClientEndpoint)

    def test_no_tickets(self) -> None:
        """
        C{--no-tickets}: no store, with or without multiplexing.
        """
        self.assertIsNone(self.endpoint("--no-tickets").tickets)
        self.assertIsNone(self.endpoint("--no-tickets", "--no-mux").tickets)


class BootClockTests(unittest.TestCase):
    def test_store_counts_on_a_clock_that_runs_during_suspend(self) -> None:
        """
        By default the store counts lifetimes on C{CLOCK_BOOTTIME} (where the platform has
        it), which keeps running while the machine sleeps, not on C{time.monotonic}, which
        stops: a ticket kept across a suspend longer than its lifetime must be dropped, not
        presented (an expired ticket is an offence).
        """
        import time as _time

        from netguard.client import tickets as module

        self.assertIs(TicketStore()._now, module.boot_clock)
        if hasattr(_time, "CLOCK_BOOTTIME"):
            self.assertEqual(module._BOOT_CLOCK, _time.CLOCK_BOOTTIME)
        self.assertGreaterEqual(module.boot_clock(), 0.0)

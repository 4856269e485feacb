"""
A users file reloaded while a client is logging in or logged in: a proof made with a
verifier no longer in force does not log in, a session opened with a since-changed password
gets no ticket, and a client's SCRAM proof never reaches the log.
"""

from __future__ import annotations

import attrs
from twisted.trial import unittest

from netguard.auth.scram import ClientExchange
from netguard.auth.users import UserStore, make_record
from netguard.tickets import TicketSettings
from tests.test_gateway_tickets import PASSWORD, Conn, Gateway, b64, unb64


def first_step(conn: Conn, password: str = PASSWORD) -> tuple[ClientExchange, bytes]:
    """
    C{AUTH} as alice; return the client's exchange and the server-first message.
    """
    client = ClientExchange("alice", password)
    [reply] = conn.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()))
    assert reply.startswith(b"CONT "), reply
    return client, unb64(reply[5:])


def cont(conn: Conn, client: ClientExchange, server_first: bytes) -> list[bytes]:
    """
    The C{CONT} line answering C{server_first}, and the replies.
    """
    return conn.send(b"CONT " + b64(client.final(server_first)))


class ReloadDuringTheExchangeTests(unittest.TestCase):
    """
    Between C{AUTH} and C{CONT} the users file is reloaded.
    """

    def reloaded_between_the_steps(self, store: UserStore) -> tuple[Gateway, Conn]:
        """
        C{AUTH} as alice, the users file reloaded as C{store}, then the C{CONT} her old
        password makes: it is answered C{AUTH_FAILED} and nothing is authenticated.
        """
        g = Gateway(self)
        conn = g.connect(greet=True)
        client, server_first = first_step(conn)
        g.factory.users = store
        self.assertEqual(
            cont(conn, client, server_first), [b"ERR AUTH_FAILED authentication failed"]
        )
        self.assertEqual(g.named("auth.ok"), [])
        return g, conn

    def test_password_changed_fails_the_old_proof(self):
        """
        A proof made with the password the reload replaced is answered C{AUTH_FAILED}, and
        C{auth.fail} says why.
        """
        g, conn = self.reloaded_between_the_steps(
            UserStore.from_records([make_record("alice", "a new password")])
        )
        [failed] = g.named("auth.fail")
        self.assertIn("verifier changed", failed["reason"])
        self.assertEqual(conn.send(b"OPEN echo"), [b"ERR AUTH_REQUIRED authenticate first"])

    def test_user_removed_fails_the_proof(self):
        """
        A user removed by the reload does not complete its login.
        """
        self.reloaded_between_the_steps(
            UserStore.from_records([make_record("bob", "another password")])
        )

    def test_reload_that_keeps_the_verifier_logs_in(self):
        """
        The other side: a reload that changes only alice's groups keeps her exchange.
        """
        g = Gateway(self)
        conn = g.connect(greet=True)
        client, server_first = first_step(conn)
        record = g.factory.users.lookup("alice")
        g.factory.users = UserStore.from_records([attrs.evolve(record, groups=("ops",))])
        [reply] = cont(conn, client, server_first)
        self.assertTrue(reply.startswith(b"OK "), reply)
        self.assertEqual(len(g.named("auth.ok")), 1)


class TicketAfterPasswordChangeTests(unittest.TestCase):
    """
    A session logged in before its user's password changed asks for a ticket.
    """

    def test_refused(self):
        """
        No ticket: one sealed now would survive the change that revokes the others. The
        refusal costs the user nothing of its issuing rate (a burst of 1 here): a session
        with the new password still gets its ticket.
        """
        g = Gateway(self, tickets=TicketSettings(issue_burst=1))
        conn = g.connect(greet=True)
        conn.login()
        g.factory.users = UserStore.from_records([make_record("alice", "a new password")])
        self.assertEqual(
            conn.send(b"TICKET"), [b"ERR NOT_AUTHORIZED password changed since login"]
        )
        self.assertFalse(conn.transport.disconnecting)
        fresh = g.connect(greet=True)
        fresh.login(password="a new password")
        [reply] = fresh.send(b"TICKET")
        self.assertTrue(reply.startswith(b"OK TICKET "), reply)

    def test_same_verifier_gets_a_ticket(self):
        """
        The other side: a reload that keeps the verifier changes nothing.
        """
        g = Gateway(self)
        conn = g.connect(greet=True)
        conn.login()
        record = g.factory.users.lookup("alice")
        g.factory.users = UserStore.from_records([attrs.evolve(record, groups=("ops",))])
        [reply] = conn.send(b"TICKET")
        self.assertTrue(reply.startswith(b"OK TICKET "), reply)


class ProofNeverLoggedTests(unittest.TestCase):
    """
    A C{CONT} line refused (out of sequence, or past the error budget) is logged as
    C{CONT <scram>}: its proof, with the users file, would log in without the password.
    """

    def test_late_cont_refused_without_its_proof(self):
        """
        The reviewer's sequence: C{AUTH}, C{PING} (which abandons the exchange), then the
        C{CONT} with its proof: C{BAD_SEQUENCE}, and no event holds the proof.
        """
        g = Gateway(self)
        conn = g.connect(greet=True)
        client, server_first = first_step(conn)
        conn.send(b"PING")
        final = b64(client.final(server_first))
        self.assertEqual(
            conn.send(b"CONT " + final), [b"ERR BAD_SEQUENCE command not allowed now"]
        )
        logged = repr(g.events)
        self.assertNotIn(final[:24].decode("ascii"), logged)
        self.assertIn("CONT <scram>", logged)

    def test_proof_cut_short_by_the_excerpt_is_hidden_too(self):
        """
        A C{CONT} line whose excerpt ends inside the proof is hidden as well.
        """
        from netguard.gateway.returning import hide_scram_finals

        self.assertEqual(hide_scram_finals(b"CONT Yz1iaXdzLHI9"), b"CONT <scram>")
        self.assertEqual(hide_scram_finals(b"PING\r\ncont abc\r\n"), b"PING\r\ncont <scram>\r\n")
        self.assertEqual(hide_scram_finals(b"AUTH SCRAM-SHA-256 x"), b"AUTH SCRAM-SHA-256 x")

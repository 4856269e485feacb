"""
Tests for the limits that keep tickets from hurting honest clients or serving one account
against everyone: a reload lowering the lifetime and a key rotation (across a restart too,
through C{ticket.key.old}) refuse tickets without an offence; per-user issuing rate, lane
login deadline, the ticket's user against the login's, the per-user lane cap. The real
L{GatewayFactory} on Twisted fakes.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from typing import Any

import attrs
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from netguard.admission import AdmissionPolicy
from netguard.auth.users import UserStore, make_record
from netguard.tickets import RETIRED_KEY_FILE, TicketSettings
from tests.test_gateway_tickets import KEY, PASSWORD, Gateway

NEW_KEY = bytes(range(1, 33))
NEWER_KEY = bytes(range(2, 34))


class HonestClientsTests(unittest.TestCase):
    def test_lowered_lifetime_refuses_without_offence(self):
        """
        A reload lowering C{[tickets] lifetime} to 600 s: a ticket issued before it and
        presented 700 s later (within its own 3600 s) is C{ERR BAD_TICKET lapsed}, with no
        offence; the client's reconnect without a ticket is greeted as usual.
        """
        g = Gateway(self)
        token = g.ticket()
        config = g.factory.config
        g.factory.apply_config(attrs.evolve(config, tickets=TicketSettings(lifetime=600)), g.users)
        g.clock.advance(700)
        conn = g.connect()
        self.assertEqual(conn.send(b"RESUME " + token), [b"ERR BAD_TICKET lapsed"])
        self.assertEqual(g.penalties(), [])
        again = g.connect(greet=True)
        self.assertTrue(again.greeting.startswith(b"NETGUARD/1 "))

    def state_dir(self) -> str:
        directory = tempfile.mkdtemp(prefix="ngtl-", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        return directory

    def test_restart_after_rotation_revokes_through_the_old_key_file(self):
        """
        A reload with a new key keeps the old one in C{<state_dir>/ticket.key.old} (mode
        0600); a gateway restarted with the new key reads it, so an earlier ticket is
        C{ERR BAD_TICKET revoked}, no offence (without it: forged, an offence).
        """
        directory = self.state_dir()
        g = Gateway(self, state_dir=directory)
        token = g.ticket()
        g.factory.apply_config(g.factory.config, g.users, NEW_KEY)
        path = os.path.join(directory, RETIRED_KEY_FILE)
        info = os.stat(path)
        self.assertEqual(stat.S_IMODE(info.st_mode), 0o600)
        with open(path, "rb") as handle:
            self.assertEqual(handle.read(), KEY)
        restarted = Gateway(self, key=NEW_KEY, state_dir=directory)
        conn = restarted.connect()
        self.assertEqual(conn.send(b"RESUME " + token), [b"ERR BAD_TICKET revoked"])
        self.assertEqual(restarted.penalties(), [])

    def test_two_rotations_still_revoke(self):
        """
        After two rotations in a row (and a restart) a ticket of the first key is still
        revoked, not forged: the old keys are kept newest first.
        """
        directory = self.state_dir()
        g = Gateway(self, state_dir=directory)
        token = g.ticket()
        g.factory.apply_config(g.factory.config, g.users, NEW_KEY)
        g.factory.apply_config(g.factory.config, g.users, NEWER_KEY)
        with open(os.path.join(directory, RETIRED_KEY_FILE), "rb") as handle:
            self.assertEqual(handle.read(), NEW_KEY + KEY)
        restarted = Gateway(self, key=NEWER_KEY, state_dir=directory)
        conn = restarted.connect()
        self.assertEqual(conn.send(b"RESUME " + token), [b"ERR BAD_TICKET revoked"])
        self.assertEqual(restarted.penalties(), [])

    def test_unreadable_old_key_file_is_logged_and_ignored(self):
        """
        A C{ticket.key.old} that is not ours to trust (group-readable) is not used: logged
        as C{ticket.key_error}, and the gateway runs with the key in force.
        """
        directory = self.state_dir()
        path = os.path.join(directory, RETIRED_KEY_FILE)
        with open(path, "wb") as handle:
            handle.write(KEY)
        os.chmod(path, 0o640)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        g = Gateway(self, key=NEW_KEY, state_dir=directory)
        [error] = [e for e in events if e.get("event") == "ticket.key_error"]
        self.assertIn("mode 0640", error["why"])
        self.assertEqual(g.factory.tickets.retired_keys, ())  # type: ignore[union-attr]


class IssuingRateTests(unittest.TestCase):
    def test_burst_then_rate_per_user(self):
        """
        With C{issue_burst = 3} and C{issue_rate = 1}, a user's first 3 tickets are issued
        at once, the 4th is C{ERR BUSY ticket-rate} (the connection goes on: C{PING} is
        answered), and a second later one more is issued.
        """
        g = Gateway(self, TicketSettings(issue_burst=3, issue_rate=1.0))
        for _ in range(3):
            g.ticket()
        conn = g.connect(greet=True)
        conn.login()
        self.assertEqual(conn.send(b"TICKET"), [b"ERR BUSY ticket-rate"])
        self.assertEqual(conn.send(b"PING"), [b"PONG"])
        self.assertEqual(g.penalties(), [])
        g.clock.advance(0.9)
        g.ticket()  # 0.1 s of greeting delay makes the second

    def test_other_users_have_their_own_bucket(self):
        """
        One user past the rate does not stop another's tickets.
        """
        users = UserStore.from_records(
            [make_record("alice", PASSWORD), make_record("bob", PASSWORD)]
        )
        g = Gateway(self, TicketSettings(issue_burst=1, issue_rate=0.001), users=users)
        g.ticket()
        conn = g.connect(greet=True)
        conn.login()
        self.assertEqual(conn.send(b"TICKET"), [b"ERR BUSY ticket-rate"])
        bob = g.connect(greet=True)
        bob.login("bob")
        [reply] = bob.send(b"TICKET")
        self.assertTrue(reply.startswith(b"OK TICKET "), reply)


class LaneLoginTests(unittest.TestCase):
    def test_lane_connection_must_log_in_within_the_lane_deadline(self):
        """
        A connection that entered the lane and does not log in within
        C{lane_login_timeout} (3 s here) is C{ERR TIMEOUT} and a timeout offence; one tick
        before, nothing.
        """
        g = Gateway(self, TicketSettings(lane_login_timeout=3.0))
        token = g.ticket()
        conn = g.connect()
        [greeting] = conn.send(b"RESUME " + token)
        self.assertTrue(conn.admitted.lane)
        g.clock.advance(2.999)
        self.assertEqual(conn.take(), [])
        g.clock.advance(0.001)
        self.assertEqual(conn.take(), [b"ERR TIMEOUT handshake deadline"])
        [(_, _, offences)] = g.penalties()
        self.assertEqual(offences, 1)

    def test_login_within_the_lane_deadline_clears_it(self):
        """
        Logged in before the lane deadline, the connection is past it: no timeout later.
        """
        g = Gateway(self, TicketSettings(lane_login_timeout=3.0))
        token = g.ticket()
        conn = g.connect()
        conn.send(b"RESUME " + token)
        conn.login()
        g.clock.advance(5)
        self.assertEqual(conn.take(), [])
        self.assertFalse(conn.transport.disconnecting)

    def test_login_as_another_user_than_the_tickets_is_an_offence(self):
        """
        A lane connection on alice's ticket that logs in as bob: the login stands (bob
        proved who he is), the connection leaves the lane (promoted), C{ticket.user_mismatch}
        is logged and the source charged a C{bad_ticket} offence.
        """
        users = UserStore.from_records(
            [make_record("alice", PASSWORD), make_record("bob", PASSWORD)]
        )
        g = Gateway(self, users=users)
        token = g.ticket()
        conn = g.connect()
        conn.send(b"RESUME " + token)
        conn.login("bob")
        self.assertTrue(conn.admitted.promoted)
        self.assertFalse(conn.admitted.lane)
        [mismatch] = g.named("ticket.user_mismatch")
        self.assertEqual((mismatch["user"], mismatch["ticket_user"]), ("bob", "alice"))
        [(_, _, offences)] = g.penalties()
        self.assertEqual(offences, 1)

    def test_login_as_the_tickets_user_is_no_offence(self):
        """
        The ticket's own user logging in: no offence, no mismatch event.
        """
        g = Gateway(self)
        token = g.ticket()
        conn = g.connect()
        conn.send(b"RESUME " + token)
        conn.login()
        self.assertEqual(g.penalties(), [])
        self.assertEqual(g.named("ticket.user_mismatch"), [])

    def test_lane_capped_per_ticket_user(self):
        """
        With C{lane_per_user = 1}, alice's second ticket while her first lane connection
        has not logged in buys no lane (C{lane-cap-user}): it goes on as first-time.
        """
        g = Gateway(self, admission=AdmissionPolicy(lane_per_user=1))
        first, second = g.ticket(), g.ticket()
        one = g.connect()
        one.send(b"RESUME " + first)
        two = g.connect()
        self.assertEqual(two.send(b"RESUME " + second), [])
        self.assertTrue(one.admitted.lane)
        self.assertFalse(two.admitted.lane)
        accepted = g.named("ticket.accepted")
        self.assertEqual([e["lane_text"] for e in accepted], ["entered", "lane-cap-user"])

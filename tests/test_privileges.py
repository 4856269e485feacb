"""
Tests for L{netguard.ops.privileges}: who twistd will run as, and handing the state
directory over without following links or leaving it.
"""

from __future__ import annotations

import os
import pwd

from twisted.logger import capturedLogs
from twisted.trial import unittest

from netguard.ops import privileges
from netguard.ops.privileges import hand_over, run_as_identity, switch_refused

_real_lchown = os.lchown


class RunAsIdentityTests(unittest.TestCase):
    def test_not_root(self) -> None:
        self.assertIsNone(run_as_identity({"uid": 1000, "gid": 1000}, euid=1000))

    def test_outside_twistd(self) -> None:
        self.assertIsNone(run_as_identity(None, euid=0))

    def test_no_uid_or_root_uid(self) -> None:
        self.assertIsNone(run_as_identity({"uid": None, "gid": None}, euid=0))
        self.assertIsNone(run_as_identity({"uid": 0, "gid": 0}, euid=0))

    def test_uid_and_gid(self) -> None:
        self.assertEqual(run_as_identity({"uid": 1234, "gid": 99}, euid=0), (1234, 99))

    def test_gid_defaults_to_primary_group(self) -> None:
        entry = pwd.getpwuid(os.getuid())
        user = pwd.struct_passwd(("u", "x", 4321, 777, "", "/", "/bin/false"))
        self.patch(privileges.pwd, "getpwuid", lambda uid: user if uid == 4321 else entry)
        self.assertEqual(run_as_identity({"uid": 4321, "gid": None}, euid=0), (4321, 777))


class SwitchRefusedTests(unittest.TestCase):
    """
    A C{--uid}/C{--gid} twistd could not switch to is named before twistd forks.
    """

    def test_root_may_switch(self) -> None:
        """
        As root any user and group will do.
        """
        self.assertIsNone(switch_refused({"uid": 1000, "gid": 1000}, euid=0, uid=0, gid=0))

    def test_outside_twistd_or_nothing_asked(self) -> None:
        """
        No twistd options, or no C{--uid}/C{--gid}: nothing to refuse.
        """
        self.assertIsNone(switch_refused(None, euid=1000, uid=1000, gid=1000))
        self.assertIsNone(switch_refused({"uid": None, "gid": None}, 1000, 1000, 1000))

    def test_own_identity_allowed(self) -> None:
        """
        A user may name their own uid and gid (twistd only warns).
        """
        self.assertIsNone(switch_refused({"uid": 1000, "gid": 1000}, 1000, 1000, 1000))

    def test_another_user_refused(self) -> None:
        """
        Another uid, not root: refused with both identities named.
        """
        problem = switch_refused({"uid": 1001, "gid": 1000}, euid=1000, uid=1000, gid=1000)
        self.assertEqual(
            problem,
            "twistd --uid 1001 --gid 1000: only root can switch to another user or group "
            "(running as uid 1000 gid 1000)",
        )

    def test_another_group_refused(self) -> None:
        """
        Our uid but another gid: refused as well (twistd's setgid would fail).
        """
        self.assertIsNotNone(switch_refused({"uid": 1000, "gid": 1001}, 1000, 1000, 1000))
        self.assertIsNotNone(switch_refused({"uid": None, "gid": 1001}, 1000, 1000, 1000))

    def test_gid_defaults_to_the_users_primary_group(self) -> None:
        """
        C{--uid} alone means that user's primary group, as twistd does; a uid with no
        user is named.
        """
        user = pwd.struct_passwd(("u", "x", 1000, 1000, "", "/", "/bin/false"))
        other = pwd.struct_passwd(("o", "x", 1002, 2002, "", "/", "/bin/false"))
        table = {1000: user, 1002: other}

        def getpwuid(uid: int) -> pwd.struct_passwd:
            return table[uid]

        self.patch(privileges.pwd, "getpwuid", getpwuid)
        self.assertIsNone(switch_refused({"uid": 1000, "gid": None}, 1000, 1000, 1000))
        self.assertIn(
            "--gid 2002", str(switch_refused({"uid": 1002, "gid": None}, 1000, 1000, 1000))
        )
        self.assertEqual(
            switch_refused({"uid": 1003, "gid": None}, 1000, 1000, 1000),
            "twistd --uid 1003: no such user",
        )


class HandOverTests(unittest.TestCase):
    def setUp(self) -> None:
        self.state = self.mktemp()
        os.makedirs(self.state, mode=0o700)
        self.calls: list[tuple[str, int, int]] = []
        self.patch(privileges.os, "lchown", lambda p, u, g: self.calls.append((p, u, g)))

    def touch(self, name: str) -> str:
        path = os.path.join(self.state, name)
        with open(path, "w"):
            pass
        return path

    def test_state_dir_and_paths_inside(self) -> None:
        users, lock = self.touch("users"), self.touch("netguard.lock")
        with capturedLogs() as events:
            done = hand_over(self.state, [users, lock, users], 10, 20)
        self.assertEqual(done, [self.state, users, lock])
        self.assertEqual(self.calls, [(p, 10, 20) for p in done])
        [event] = [e for e in events if e.get("event") == "gateway.hand_over"]
        self.assertEqual((event["count"], event["uid"], event["gid"]), (3, 10, 20))

    def test_paths_outside_or_missing_skipped(self) -> None:
        elsewhere = self.mktemp()
        with open(elsewhere, "w"):
            pass
        sibling = self.state + "-other"  # shares the prefix, is not inside
        os.makedirs(sibling)
        with capturedLogs():
            done = hand_over(
                self.state, [elsewhere, sibling, os.path.join(self.state, "absent")], 1, 1
            )
        self.assertEqual(done, [self.state])

    def test_links_are_not_followed(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("giving a file to another user needs root")
        self.patch(privileges.os, "lchown", _real_lchown)
        target = self.mktemp()
        with open(target, "w"):
            pass
        link = os.path.join(self.state, "users")
        os.symlink(os.path.abspath(target), link)
        with capturedLogs():
            hand_over(self.state, [link], 65534, 65534)
        self.assertEqual(os.lstat(link).st_uid, 65534)  # the link itself changed hands
        self.assertEqual(os.stat(target).st_uid, 0)  # the file it points to did not

    def test_shared_directory_never_given_away(self) -> None:
        os.chmod(self.state, 0o755)
        users = self.touch("users")
        with capturedLogs() as events:
            self.assertEqual(hand_over(self.state, [users], 1, 1), [])
        self.assertEqual(self.calls, [])
        self.assertIn("gateway.hand_over_refused", [e.get("event") for e in events])

    def test_link_as_state_directory_never_given_away(self) -> None:
        link = self.state + "-link"
        os.symlink(self.state, link)
        with capturedLogs():
            self.assertEqual(hand_over(link, [], 1, 1), [])
        self.assertEqual(self.calls, [])

    def test_failure_raised(self) -> None:
        def refuse(path: str, uid: int, gid: int) -> None:
            raise PermissionError(1, "Operation not permitted", path)

        self.patch(privileges.os, "lchown", refuse)
        with capturedLogs():
            self.assertRaises(OSError, hand_over, self.state, [], 1, 1)

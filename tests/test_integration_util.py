"""
The integration tests' answer to a missing or failing real peer
(L{tests.integration.util.peer_unavailable}, L{tests.integration.util.need_peer}): a skip with
its reason on a developer's machine, an error in CI (C{CI=true}), so a broken install step
cannot give a green CI.
"""

from __future__ import annotations

import os
import stat
import sys

from twisted.trial import reporter, unittest

from tests.integration.util import PeerUnavailable, in_ci, need_peer, peer_unavailable

#: The reason a test gives for its missing peer.
REASON = "/nonexistent/redis-server not installed (Debian package redis-server)"


class InCITests(unittest.TestCase):
    """
    L{in_ci} reads the environment variable C{CI}.
    """

    def test_true_values(self) -> None:
        """
        C{CI=true} (what CI services and C{.ci/run} set), C{1} and C{yes}, in any case and
        with surrounding blanks, mean a CI run.
        """
        for value in ("true", "TRUE", "True", " true\n", "1", "yes"):
            self.assertTrue(in_ci({"CI": value}), value)

    def test_other_values(self) -> None:
        """
        No C{CI}, an empty one, C{false}, C{0} or anything else is a developer's machine.
        """
        self.assertFalse(in_ci({}))
        for value in ("", "false", "0", "no", "truee", "t"):
            self.assertFalse(in_ci({"CI": value}), value)

    def test_default_is_the_process_environment(self) -> None:
        """
        Without an explicit mapping, C{os.environ} decides.
        """
        self.patch(os, "environ", {"CI": "true"})
        self.assertTrue(in_ci())
        self.patch(os, "environ", {})
        self.assertFalse(in_ci())


class PeerUnavailableTests(unittest.TestCase):
    """
    L{peer_unavailable}: skip outside CI, error inside.
    """

    def test_developer_machine_skips_with_reason(self) -> None:
        """
        Outside CI the test is skipped, and the skip says exactly why.
        """
        with self.assertRaises(unittest.SkipTest) as caught:
            peer_unavailable(REASON, {})
        self.assertEqual(str(caught.exception), REASON)

    def test_ci_errors_with_reason(self) -> None:
        """
        With C{CI=true} the same call raises L{PeerUnavailable} (not a skip: trial counts it
        as an error, so the run fails), still naming the reason.
        """
        with self.assertRaises(PeerUnavailable) as caught:
            peer_unavailable(REASON, {"CI": "true"})
        self.assertNotIsInstance(caught.exception, unittest.SkipTest)
        self.assertIn(REASON, str(caught.exception))
        self.assertIn("CI=true", str(caught.exception))

    def test_ci_false_still_skips(self) -> None:
        """
        C{CI=false} is a developer's machine: skip.
        """
        self.assertRaises(unittest.SkipTest, peer_unavailable, REASON, {"CI": "false"})


class CITrialRunTests(unittest.TestCase):
    """
    Through trial itself: a test that calls L{peer_unavailable} is a skip on a developer's
    machine and an error (an unsuccessful run) in CI.
    """

    def run_case(self, environ: dict[str, str]) -> reporter.TestResult:
        class Case(unittest.SynchronousTestCase):
            def test_needs_peer(self) -> None:
                peer_unavailable(REASON, environ)

        result = reporter.TestResult()
        Case("test_needs_peer").run(result)
        return result

    def test_developer_machine_run_is_a_skip(self) -> None:
        """
        Outside CI: one skip with the reason, no error, the run is successful.
        """
        result = self.run_case({})
        self.assertEqual([reason for _, reason in result.skips], [REASON])
        self.assertEqual(result.errors, [])
        self.assertTrue(result.wasSuccessful())

    def test_ci_run_is_an_error(self) -> None:
        """
        In CI: no skip, one error, the run is not successful.
        """
        result = self.run_case({"CI": "true"})
        self.assertEqual(result.skips, [])
        self.assertEqual(len(result.errors), 1)
        self.assertFalse(result.wasSuccessful())


class NeedPeerTests(unittest.TestCase):
    """
    L{need_peer}: the executable's path, or L{peer_unavailable}.
    """

    def test_present_absolute_path(self) -> None:
        """
        An executable given by absolute path is returned as it is, in both modes.
        """
        for environ in ({}, {"CI": "true"}):
            self.assertEqual(need_peer(sys.executable, "python3", environ), sys.executable)

    def test_present_on_path(self) -> None:
        """
        A bare name is looked up on C{PATH}.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        program = os.path.join(directory, "fake-peer")
        with open(program, "w") as handle:
            handle.write("#!/bin/sh\n")
        os.chmod(program, stat.S_IRWXU)
        self.patch(os, "environ", {**os.environ, "PATH": directory})
        self.assertEqual(need_peer("fake-peer", "fake", {}), program)

    def test_missing_skips_outside_ci(self) -> None:
        """
        A missing program is a skip naming it and its Debian package.
        """
        with self.assertRaises(unittest.SkipTest) as caught:
            need_peer("/nonexistent/haproxy", "haproxy", {})
        self.assertIn("/nonexistent/haproxy is not installed", str(caught.exception))
        self.assertIn("Debian package haproxy", str(caught.exception))

    def test_missing_errors_in_ci(self) -> None:
        """
        A missing program in CI is L{PeerUnavailable}, for an absolute path and a name not on
        C{PATH} alike.
        """
        self.assertRaises(
            PeerUnavailable, need_peer, "/nonexistent/haproxy", "haproxy", {"CI": "true"}
        )
        self.patch(os, "environ", {**os.environ, "PATH": "/nonexistent"})
        self.assertRaises(PeerUnavailable, need_peer, "haproxy", "haproxy", {"CI": "true"})

    def test_not_executable_is_missing(self) -> None:
        """
        A file that is there but not executable (or a directory) is no peer.
        """
        program = self.mktemp()
        with open(program, "w") as handle:
            handle.write("#!/bin/sh\n")
        os.chmod(program, stat.S_IRUSR | stat.S_IWUSR)
        # No execute bit at all: not executable, even for root.
        self.assertRaises(unittest.SkipTest, need_peer, os.path.abspath(program), "x", {})
        self.assertRaises(PeerUnavailable, need_peer, "/tmp", "x", {"CI": "true"})

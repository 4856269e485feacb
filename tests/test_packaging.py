"""
The source distribution: built from a copy of this tree with setuptools' own build backend
(no network, no build isolation), it carries the license, the documentation and the systemd
units, and every file the test suite reads, so the suite also runs from an unpacked sdist.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

from twisted.trial import unittest

from tests.integration.test_twistd import NOT_SOURCE_PATTERNS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: What a source tree holds that is not source (the copy leaves it out, like a fresh clone).
NOT_SOURCE = shutil.ignore_patterns(*NOT_SOURCE_PATTERNS, "results")

#: Builds the sdist of the current directory into the directory given as the argument.
BUILD_SDIST = (
    "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
)

#: The tests that read C{docs/}: they failed from an sdist that lacked it.
DOC_READING_TESTS = (
    "tests.test_docs",
    "tests.test_events.CatalogueAgainstDocsTests",
    "tests.test_socks5.EndpointStringTests.test_docs_examples_parse",
)

#: The longest a build or the test run inside the sdist may take (a hang guard only).
WAIT = 300


class SdistTests(unittest.TestCase):
    """
    Build the sdist of a copy of the tree once per test and look inside.
    """

    def setUp(self) -> None:
        self.scratch = tempfile.mkdtemp(prefix="ngp-")
        self.addCleanup(shutil.rmtree, self.scratch, True)
        self.source = os.path.join(self.scratch, "src")
        shutil.copytree(ROOT, self.source, ignore=NOT_SOURCE, symlinks=True)

    def build(self) -> tuple[str, set[str]]:
        """
        Build the sdist of the copy.

        @return: the archive's path and its member files, relative to its top directory.
        """
        out = os.path.join(self.scratch, "dist")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run(
            [sys.executable, "-c", BUILD_SDIST, out],
            cwd=self.source,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        archive = os.path.join(out, done.stdout.strip().splitlines()[-1])
        with tarfile.open(archive) as tar:
            names = {
                member.name.split("/", 1)[1]
                for member in tar.getmembers()
                if member.isfile() and "/" in member.name
            }
        return archive, names

    def tree_files(self, *patterns: str) -> set[str]:
        """
        The files of the copied tree matching C{patterns}, relative to it.
        """
        found: set[str] = set()
        for pattern in patterns:
            for path in glob.glob(os.path.join(self.source, pattern), recursive=True):
                if os.path.isfile(path):
                    found.add(os.path.relpath(path, self.source))
        return found

    def test_license_docs_and_systemd_units_included(self) -> None:
        """
        LICENSE, README, every page of C{docs/} and both systemd units are in the sdist,
        and its metadata names the license file.
        """
        archive, names = self.build()
        expected = {"LICENSE", "README.md", "MANIFEST.in"} | self.tree_files("docs/**/*")
        self.assertIn("docs/systemd/netguard.service", expected)
        self.assertIn("docs/systemd/netguard.socket", expected)
        self.assertEqual(expected - names, set())
        with tarfile.open(archive) as tar:
            top = tar.getnames()[0].split("/")[0]
            member = tar.extractfile(f"{top}/PKG-INFO")
            assert member is not None
            info = member.read().decode("utf-8")
        self.assertIn("License: MIT", info)
        self.assertIn("License-File: LICENSE", info)

    def test_every_file_the_tests_read_included(self) -> None:
        """
        The tests, and every file the docs name (which C{tests.test_docs} checks exists),
        the scripts and the CI entry point are in the sdist.
        """
        _, names = self.build()
        expected = self.tree_files("tests/**/*.py", "scripts/*", ".ci/*", "bench/**/*")
        for doc in glob.glob(os.path.join(self.source, "docs", "*.md")):
            with open(doc, encoding="utf-8") as handle:
                text = handle.read()
            for path in re.findall(r"`((?:netguard|tests|bench|docs|scripts)/[\w/.\-]*\w)`", text):
                if os.path.isfile(os.path.join(self.source, path)):
                    expected.add(path)
        self.assertIn("scripts/setup-test-env", expected)
        self.assertEqual(expected - names, set())

    def test_build_debris_left_out(self) -> None:
        """
        Byte code, Twisted's plugin cache and benchmark results in the tree do not reach
        the sdist.
        """
        debris = [
            "tests/__pycache__/test_docs.cpython-311.pyc",
            "twisted/plugins/dropin.cache",
            "bench/results/latest.md",
        ]
        for path in debris:
            full = os.path.join(self.source, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as handle:
                handle.write("debris\n")
        _, names = self.build()
        self.assertEqual(names & set(debris), set())

    def test_doc_reading_tests_pass_from_the_unpacked_sdist(self) -> None:
        """
        The tests that read C{docs/} pass when run from the unpacked sdist, importing
        netguard and the tests from there.
        """
        archive, _ = self.build()
        unpacked = os.path.join(self.scratch, "unpacked")
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
        (top,) = os.listdir(unpacked)
        where = os.path.join(unpacked, top)
        env = dict(os.environ, PYTHONPATH=where)
        probe = "import netguard, tests; print(netguard.__file__); print(tests.__file__)"
        done = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=where,
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        for line in done.stdout.splitlines():
            self.assertTrue(line.startswith(where + os.sep), done.stdout)
        done = subprocess.run(
            [sys.executable, "-m", "twisted.trial", *DOC_READING_TESTS],
            cwd=where,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertEqual(done.returncode, 0, done.stdout[-4000:] + done.stderr[-2000:])
        self.assertIn("PASSED", done.stdout)


class TypedMarkerTests(unittest.TestCase):
    """
    The C{py.typed} marker (PEP 561): type checkers use netguard's annotations in programs
    that import its toolkit.
    """

    def test_marker_next_to_the_package(self) -> None:
        """
        The imported package holds C{py.typed}.
        """
        import netguard

        marker = os.path.join(os.path.dirname(netguard.__file__), "py.typed")
        self.assertTrue(os.path.isfile(marker))

    def test_marker_installed(self) -> None:
        """
        C{setup.cfg} installs it with the package.
        """
        import configparser

        parser = configparser.ConfigParser()
        parser.read(os.path.join(ROOT, "setup.cfg"))
        self.assertIn("py.typed", parser["options.package_data"]["netguard"].split())

"""
What the installed package gives its users: the C{py.typed} marker (PEP 561), so that
type checkers use netguard's annotations in programs that import its toolkit.
"""

from __future__ import annotations

import configparser
import os

from twisted.trial import unittest

import netguard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TypedMarkerTests(unittest.TestCase):
    def test_marker_next_to_the_package(self) -> None:
        """
        The imported package holds C{py.typed}.
        """
        self.assertTrue(
            os.path.isfile(os.path.join(os.path.dirname(netguard.__file__), "py.typed"))
        )

    def test_marker_installed(self) -> None:
        """
        C{setup.cfg} installs it with the package.
        """
        parser = configparser.ConfigParser()
        parser.read(os.path.join(ROOT, "setup.cfg"))
        self.assertIn("py.typed", parser["options.package_data"]["netguard"].split())

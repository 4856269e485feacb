"""
The documentation names real things: every test named in C{docs/} (as
C{tests.module.Class.test_name}) exists, and every source file named there
(C{netguard/...}, C{tests/...}, C{bench/...}) is in the tree. The security map in particular
cites the tests that prove each rule; a renamed or deleted test must not leave it pointing
at nothing.
"""

from __future__ import annotations

import glob
import importlib
import os
import re

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [os.path.join(ROOT, "README.md")]
#: Files a run writes, mentioned in the docs but not kept in the tree.
GENERATED = {"bench/results/latest.md", "bench/results/latest.png", "bench/ANALYSIS.md"}


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        return target
    raise ImportError(dotted)


class DocReferenceTests(unittest.TestCase):
    def references(self, pattern: str) -> list[tuple[str, str]]:
        found = []
        for doc in DOCS:
            with open(doc, encoding="utf-8") as handle:
                text = handle.read()
            for match in sorted(set(re.findall(pattern, text))):
                found.append((os.path.relpath(doc, ROOT), match))
        return found

    def test_named_tests_exist(self) -> None:
        named = self.references(r"`(tests(?:\.\w+)+)`")
        self.assertGreater(len(named), 100)  # the security map alone names far more
        missing = []
        for doc, dotted in named:
            try:
                _resolve(dotted)
            except (ImportError, AttributeError):
                missing.append(f"{doc}: {dotted}")
        self.assertEqual(missing, [])

    def test_named_files_exist(self) -> None:
        named = self.references(r"`((?:netguard|tests|bench|docs|scripts)/[\w/.\-]*\w)`")
        self.assertGreater(len(named), 20)
        missing = [
            f"{doc}: {path}"
            for doc, path in named
            if path not in GENERATED and not os.path.exists(os.path.join(ROOT, path))
        ]
        self.assertEqual(missing, [])

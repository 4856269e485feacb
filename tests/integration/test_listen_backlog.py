"""
The listen backlog a running gateway gives the kernel, read back with C{ss} (iproute2): the
documented default where the listener string sets none, and the string's own value where it
does.
"""

from __future__ import annotations

import subprocess

from twisted.trial import unittest

from netguard.config import DEFAULT_LISTEN_BACKLOG
from tests.integration.util import RunningGateway, need_peer


def kernel_backlog(ss: str, port: int) -> int:
    """
    The backlog of the TCP socket listening on 127.0.0.1:C{port} (C{ss} shows it as Send-Q
    of a listening socket).
    """
    out = subprocess.run(
        [ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.split()
    return int(out[2])


class ListenBacklogTests(unittest.TestCase):
    def test_default_and_explicit_backlog(self) -> None:
        """
        A listener with no C{backlog=} listens with L{DEFAULT_LISTEN_BACKLOG} (not Twisted's
        50); one with C{backlog=7} keeps 7.
        """
        ss = need_peer("ss", "iproute2")
        gateway = RunningGateway(
            self,
            overrides={
                "listen": ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=7"]
            },
        )
        self.assertEqual(kernel_backlog(ss, gateway.port(0)), DEFAULT_LISTEN_BACKLOG)
        self.assertEqual(kernel_backlog(ss, gateway.port(1)), 7)

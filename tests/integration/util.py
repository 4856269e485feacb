"""
Helpers shared by the integration tests: free loopback ports and bounded waiting.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@inlineCallbacks
def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.01):
    """
    Wait, letting the reactor run, until C{predicate()} is true; at most C{timeout} seconds.

    @raise AssertionError: if the condition is not reached in time.
    """
    for _ in range(int(timeout / step)):
        if predicate():
            return
        yield deferLater(reactor, step, lambda: None)
    raise AssertionError("condition not reached in time")

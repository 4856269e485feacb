"""
A user whose verifier has more iterations than the client derives inline
(C{THREAD_ITERATIONS}), against the real gateway over loopback TCP: the C{netguard:}
endpoint and the multiplexed endpoint derive the keys in a thread, not on the reactor, log
in and relay; the next login finds the keys cached.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from netguard.auth import scram
from netguard.auth.scram import THREAD_ITERATIONS
from netguard.auth.users import make_record, write_users
from netguard.client.endpoint import NGPClientEndpoint
from netguard.client.mux_endpoint import MuxClientEndpoint
from netguard.client.protocol import Credentials
from netguard.ops.reload import Reloader
from tests.integration.test_client_tickets_real import echo_through
from tests.integration.util import RunningGateway

#: Enough iterations to go to a thread, few enough to derive quickly.
ITERATIONS = 2 * THREAD_ITERATIONS


class SlowKeysTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.running = RunningGateway(self, 'listen = ["tcp:0:interface=127.0.0.1"]\n')
        self.addCleanup(self.running.idle)
        user = self.running.credentials.username
        password = self.running.credentials.password
        write_users(
            os.path.join(self.running.dir, "st", "users"),
            [make_record(user, password, iterations=ITERATIONS)],
        )
        Reloader(self.running.service, self.running.config_path, self.running.overrides).reload()
        self.credentials = Credentials(user, password)
        self.threads: list[int] = []
        self.names: list[str] = []
        real = scram.derive_keys

        def recording(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
            self.threads.append(threading.get_ident())
            self.names.append(threading.current_thread().name)
            return real(password, salt, iterations)

        self.patch(scram, "derive_keys", recording)

    def gateway(self) -> Any:
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.running.port())

    @inlineCallbacks
    def test_endpoint_derives_in_a_thread_then_from_the_cache(self) -> None:
        """
        C{netguard:} endpoint (a connection per connect): the first login derives the keys
        once, in the deriver's own thread; the second derives nothing.
        """
        endpoint = NGPClientEndpoint(reactor, self.gateway(), self.credentials, "echo")
        yield echo_through(self, endpoint)
        self.assertEqual(len(self.threads), 1)
        self.assertNotEqual(self.threads[0], threading.get_ident())
        # The deriver's own thread, not Twisted's shared pool (which resolves host names).
        self.assertIn("netguard-key-derivation", self.names[0])
        yield echo_through(self, endpoint, b"again")
        self.assertEqual(len(self.threads), 1)
        self.assertEqual(self.credentials.keys.derivations, 1)

    @inlineCallbacks
    def test_multiplexed_endpoint_derives_in_a_thread(self) -> None:
        """
        The multiplexed endpoint's login goes the same way, and its stream relays.
        """
        endpoint = MuxClientEndpoint(reactor, self.gateway(), self.credentials, "echo")
        self.addCleanup(endpoint.close)
        yield echo_through(self, endpoint)
        self.assertEqual(len(self.threads), 1)
        self.assertNotEqual(self.threads[0], threading.get_ident())

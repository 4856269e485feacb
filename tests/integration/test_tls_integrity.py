"""
No byte lost or reordered through the gateway's TLS path, over loopback: pseudo-random
payloads of sizes that cross TLS record (16 KiB) and read-buffer boundaries go through a
TLS listener to a backend that hashes what it receives and echoes it, with a slow reader on
each side; the SHA-256 of what was sent, of what the backend received and of what came back
must agree. The client is Python's own TLS stack (asyncio, one thread), independent of
Twisted's.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import ssl
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from netguard.tls_halfclose import BIO_IDLE_SECONDS, HalfCloseTLSTransport
from tests import tls_certs
from tests.integration.util import RunningGateway, wait_for

#: Sizes of the successive writes of one session: around one TLS record (16,384 bytes of
#: plaintext), around Twisted's and the relay's 64 KiB reads, and past a mebibyte.
SIZES = (1, 16_383, 16_384, 16_385, 65_535, 65_537, 262_147, 1_048_583)

#: Bound on the client's whole session, seconds (a hang guard, not a speed check).
SESSION_TIMEOUT = 60.0


class HashingEcho(Protocol):
    """
    The backend: hashes every byte it receives and echoes it; reads slowly (it pauses its
    transport after each chunk and resumes on the next reactor turn), so the gateway's
    upload direction meets backpressure.
    """

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        self.received += len(data)
        self.transport.write(data)
        self.transport.pauseProducing()
        reactor.callLater(0.001, self._resume)

    def _resume(self) -> None:
        if self.transport is not None and self.transport.connected:
            self.transport.resumeProducing()


async def _session(
    port: int, cafile: str, user: str, password: str, payload: bytes
) -> tuple[bytes, str]:
    """
    Log in over TLS, open C{hashecho}, write C{payload} in the pieces of L{SIZES} while
    reading the echo slowly (4 KiB at a time, a pause after each); after a quiet pause, the
    same again; return what came back and the gateway's login line.
    """
    import base64

    import scramp

    context = ssl.create_default_context(cafile=cafile)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost", limit=16_384
    )
    try:
        greeting = await reader.readline()
        assert greeting.startswith(b"NETGUARD/1 "), greeting
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        binding = ("tls-server-end-point", hashlib.sha256(der).digest())
        scram = scramp.ScramClient(["SCRAM-SHA-256-PLUS"], user, password, channel_binding=binding)
        first = base64.b64encode(scram.get_client_first().encode())
        writer.write(b"AUTH SCRAM-SHA-256-PLUS " + first + b"\r\n")
        cont = (await reader.readline()).rstrip(b"\r\n")
        scram.set_server_first(base64.b64decode(cont[5:]).decode())
        writer.write(b"CONT " + base64.b64encode(scram.get_client_final().encode()) + b"\r\n")
        ok = (await reader.readline()).rstrip(b"\r\n")
        scram.set_server_final(base64.b64decode(ok[3:]).decode())
        writer.write(b"OPEN hashecho\r\n")
        opened = await reader.readline()
        assert opened == b"OK OPEN hashecho\r\n", opened

        async def send() -> None:
            offset = 0
            for size in SIZES:
                writer.write(payload[offset : offset + size])
                offset += size
                await writer.drain()

        back = bytearray()
        for burst in range(2):
            if burst:
                # Quiet long enough for the gateway to replace its TLS memory BIOs.
                await asyncio.sleep(3 * BIO_IDLE_SECONDS)
            sender = asyncio.ensure_future(send())
            expected = len(payload) * (burst + 1)
            while len(back) < expected:
                chunk = await reader.read(min(4096, expected - len(back)))
                if not chunk:
                    break
                back += chunk
                await asyncio.sleep(0.0005)
            await sender
        return bytes(back), ok.decode()
    finally:
        writer.close()


class TLSRelayIntegrityTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.backends: list[HashingEcho] = []

        def build() -> HashingEcho:
            protocol = HashingEcho()
            self.backends.append(protocol)
            return protocol

        port = reactor.listenTCP(0, Factory.forProtocol(build), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.dir = tempfile.mkdtemp(prefix="ngint-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        cert, key = tls_certs.make_leaf("localhost")
        self.cert_file, key_file = tls_certs.write_identity(self.dir, "gateway", cert, key)
        self.running = RunningGateway(
            self,
            "listen = []\n"
            "[[tls_listen]]\n"
            'endpoint = "tcp:0:interface=127.0.0.1"\n'
            f'cert_file = "{self.cert_file}"\nkey_file = "{key_file}"\n'
            "[limits]\ngreeting_delay = 0\n"
            "[services.hashecho]\n"
            f'backend = "tcp:host=127.0.0.1:port={port.getHost().port}"\n'
            'users = ["*"]\n',
        )

    def run_session(self, payload: bytes) -> tuple[bytes, str]:
        credentials = self.running.credentials
        return asyncio.run(
            asyncio.wait_for(
                _session(
                    self.running.port(0),
                    self.cert_file,
                    credentials.username,
                    credentials.password,
                    payload,
                ),
                SESSION_TIMEOUT,
            )
        )

    @inlineCallbacks
    def test_every_byte_arrives_in_order_both_ways(self):
        """
        Through the TLS listener and the relay, with slow readers on both sides, in two
        bursts with a quiet pause between them (the gateway replaces the grown TLS memory
        BIOs of the connection then, which is checked), the backend receives exactly the
        bytes sent (same SHA-256 and count) and the client gets exactly those bytes back.
        """
        refreshes: list[tuple[bool, bool, int]] = []
        refresh = HalfCloseTLSTransport._refresh_bios

        def recording_refresh(transport: HalfCloseTLSTransport) -> None:
            connection = transport._tlsConnection
            before = (connection._into_ssl, connection._from_ssl)
            done = transport.bio_refreshes
            refresh(transport)
            replaced = (connection._into_ssl, connection._from_ssl) != before
            refreshes.append(
                (transport._last_large_io > 0, replaced, transport.bio_refreshes - done)
            )

        self.patch(HalfCloseTLSTransport, "_refresh_bios", recording_refresh)
        payload = random.Random(16).randbytes(sum(SIZES))
        sent = hashlib.sha256(payload * 2).hexdigest()
        back, login = yield deferToThread(self.run_session, payload)
        self.assertTrue(login.startswith("OK "), login)
        total = 2 * len(payload)
        yield wait_for(lambda: bool(self.backends) and self.backends[0].received >= total)
        [backend] = self.backends
        self.assertEqual(backend.received, total)
        self.assertEqual(backend.digest.hexdigest(), sent)
        self.assertEqual(len(back), total)
        self.assertEqual(hashlib.sha256(back).hexdigest(), sent)
        # The quiet pause did replace the BIOs of the client's connection, grown by the
        # first burst (large reads and writes went through them), mid-session.
        self.assertIn(
            True,
            [large and replaced and counted == 1 for large, replaced, counted in refreshes],
        )
        yield self.running.idle()

"""
The floor under the gateway's session cost: the NGP/1 exchange a session needs (greeting,
SCRAM-SHA-256 with netguard's own SCRAM code and users file, C{OPEN}, then a relay) written
as plainly as Twisted allows, with none of the gateway's checks: no admission, no framing
bounds or timers, no log line, no metrics, no service permissions. It is not a server
anyone should run; C{bench/profile_session.py --floor} measures it beside the gateway and
Twisted's C{portforward}, so that the gap between the three says what the protocol itself
costs on Twisted and what netguard's checks cost on top (C{docs/performance.md}).

    python bench/ngp_floor.py --port P --backend B --users FILE
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.protocols.portforward import ProxyClient, ProxyClientFactory

from netguard.auth.scram import AuthFailed, ServerExchange, decode_wire, encode_wire
from netguard.auth.users import UserStore


class FloorSession(LineReceiver):
    """
    Greeting, AUTH, CONT, OPEN, then raw relaying to the backend through Twisted's
    portforward client.
    """

    delimiter = b"\r\n"

    def __init__(self, store: UserStore, backend: int):
        self.store = store
        self.backend = backend
        self.exchange: ServerExchange | None = None
        self.peer: ProxyClient | None = None
        self.early: list[bytes] = []

    def connectionMade(self) -> None:
        self.sendLine(b"NETGUARD/1 floor AUTH=SCRAM-SHA-256 MAXLINE=4096")

    def lineReceived(self, line: bytes) -> None:
        command, _, rest = line.partition(b" ")
        try:
            if command == b"AUTH":
                self.exchange = ServerExchange(self.store)
                token = rest.split(b" ", 1)[1]
                self.sendLine(b"CONT " + encode_wire(self.exchange.first(decode_wire(token))))
            elif command == b"CONT" and self.exchange is not None:
                self.sendLine(b"OK " + encode_wire(self.exchange.final(decode_wire(rest))))
            elif command == b"OPEN" and self.exchange is not None and self.exchange.authenticated:
                self._open(rest)
            else:
                self.transport.loseConnection()
        except AuthFailed:
            self.transport.loseConnection()

    def _open(self, service: bytes) -> None:
        self.setRawMode()
        self.transport.pauseProducing()
        factory = ProxyClientFactory()
        factory.setServer(self)
        session = self

        class Connected(ProxyClient):
            def connectionMade(self) -> None:
                super().connectionMade()
                session.peer = self
                session.sendLine(b"OK OPEN " + service)
                for chunk in session.early:
                    self.transport.write(chunk)
                session.early = []

        factory.protocol = Connected
        reactor.connectTCP("127.0.0.1", self.backend, factory)  # type: ignore[attr-defined]

    # what ProxyClient calls on its "peer" (the server side of a portforward pair)
    def rawDataReceived(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            self.peer.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        if self.peer is not None:
            self.peer.transport.loseConnection()

    def setPeer(self, peer: ProxyClient) -> None:
        self.peer = peer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", type=int, required=True)
    parser.add_argument("--users", required=True)
    args = parser.parse_args(argv)
    store = UserStore.load(args.users)
    factory = Factory.forProtocol(lambda: FloorSession(store, args.backend))
    reactor.listenTCP(args.port, factory, backlog=511, interface="127.0.0.1")  # type: ignore[attr-defined]
    sys.stdout.write(f"ngp_floor listening on 127.0.0.1:{args.port}\n")
    sys.stdout.flush()
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

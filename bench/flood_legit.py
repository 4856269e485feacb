"""
The legitimate clients of C{bench/flood.py}: one Twisted process (pinned to CPU 0 by the
harness) running netguard's own client code from the checkout on C{PYTHONPATH}. A benchmark
role, not a test; every loop is bounded in count and time.

    PYTHONPATH=TREE python bench/flood_legit.py --port P --user bench \\
        --password-file F --work DIR --duration 45

Three clients, each doing its sessions one after the other (a pause of C{--pause} between
two) for C{--duration} seconds:

  - C{returning} (from 127.0.0.2): one C{netguard:} endpoint (C{mux=no}, so one gateway
    connection per session; everything else its default), kept for the whole run. It is
    used once before the attack (so that, with a gateway and client that issue tickets, it
    holds one from that login), and for every session after.
  - C{first-time} (from 127.0.0.3): a fresh C{netguard:} endpoint (C{mux=no}) for every
    attempt, so it never holds anything from an earlier login.
  - C{mux} (from 127.0.0.4): one C{netguard:} endpoint with C{mux=yes} (the default), whose
    multiplexed session is logged in before the attack; every session is a new stream on
    it (a new login only if the session was lost).

A session: connect through the endpoint (TCP connect, greeting, SCRAM-SHA-256 with the
server's signature checked, C{OPEN echo}; for C{mux} only the stream's C{OPEN echo}), send
64 KiB and check the echo, close. An attempt that fails (C{ERR BUSY}, another refusal, a
close, a broken echo) is retried after C{--retry-pause} until 10 s have passed since the
session's first attempt. Recorded per session: whether the first attempt served it, whether
it was served within 10 s, the time from the first attempt to the checked echo, and why the
failed attempts failed.

Coordination with the harness, through files in C{--work}: this process writes C{ready}
once the returning client's first login and the multiplexed session are done, waits (at
most 120 s) for C{go}, runs, and writes C{legit.json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from typing import Any

#: Bytes echoed per session.
ECHO_BYTES = 64 * 1024

#: A session is served "within" this many seconds of its first attempt, or fails.
SESSION_DEADLINE = 10.0

#: The clients and their source addresses.
SOURCES = {"returning": "127.0.0.2", "first-time": "127.0.0.3", "mux": "127.0.0.4"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--pause", type=float, default=0.5, help="between two sessions")
    parser.add_argument("--retry-pause", type=float, default=0.25, help="after a failure")
    args = parser.parse_args(argv)

    from twisted.internet import reactor as global_reactor
    from twisted.internet.defer import Deferred, inlineCallbacks
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.task import deferLater

    import netguard
    from netguard.client.endpoint import endpoint_from_string_args

    reactor: Any = global_reactor
    payload = os.urandom(ECHO_BYTES)
    gateway = f"tcp:host=127.0.0.1:port={args.port}:timeout=10:bindAddress={{}}"

    def endpoint(kind: str) -> Any:
        return endpoint_from_string_args(
            reactor,
            gateway=gateway.format(SOURCES[kind]),
            service="echo",
            user=args.user,
            password_file=args.password_file,
            mux="yes" if kind == "mux" else "no",
        )

    class Echo(Protocol):
        """Send the payload once connected; fire C{done} with the checked echo."""

        def __init__(self) -> None:
            self.buffer = bytearray()
            self.done: Deferred[None] = Deferred()

        def connectionMade(self) -> None:
            self.transport.write(payload)

        def dataReceived(self, data: bytes) -> None:
            self.buffer += data
            if len(self.buffer) >= ECHO_BYTES and not self.done.called:
                ok = bytes(self.buffer[:ECHO_BYTES]) == payload
                self.transport.loseConnection()
                if ok:
                    self.done.callback(None)
                else:
                    self.done.errback(ValueError("echo corrupted"))

        def connectionLost(self, reason: Any = None) -> None:
            if not self.done.called:
                self.done.errback(ConnectionError("closed during the echo"))

    def reason_of(error: BaseException) -> str:
        code = getattr(error, "code", None)
        if code is not None:
            text = str(getattr(error, "text", "")).split(" ")[0]
            return f"ERR {code} {text}".strip()
        return type(error).__name__

    @inlineCallbacks
    def attempt(client: Any, remaining: float) -> Any:
        """One attempt: None if served, else why not."""
        echo = Echo()
        connecting = client.connect(Factory.forProtocol(lambda: echo))
        connecting.addTimeout(remaining, reactor)
        try:
            yield connecting
        except Exception as error:
            return reason_of(error)
        began = reactor.seconds()
        echo.done.addTimeout(max(0.01, remaining - (reactor.seconds() - began)), reactor)
        try:
            yield echo.done
        except Exception as error:
            if echo.transport is not None:
                echo.transport.abortConnection()
            return "echo: " + reason_of(error)
        return None

    @inlineCallbacks
    def session(kind: str, kept: Any) -> Any:
        first = reactor.seconds()
        attempts = 0
        reasons: Counter[str] = Counter()
        while True:
            remaining = SESSION_DEADLINE - (reactor.seconds() - first)
            if remaining <= 0:
                return {"ok": False, "attempts": attempts, "reasons": dict(reasons)}
            attempts += 1
            client = kept if kept is not None else endpoint(kind)
            why = yield attempt(client, remaining)
            if why is None:
                return {
                    "ok": True,
                    "attempts": attempts,
                    "served_after": reactor.seconds() - first,
                    "reasons": dict(reasons),
                }
            reasons[why] += 1
            yield deferLater(reactor, args.retry_pause, lambda: None)

    results: dict[str, Any] = {"netguard": netguard.__file__, "clients": {}}
    kept = {"returning": endpoint("returning"), "mux": endpoint("mux")}

    @inlineCallbacks
    def loop(kind: str, until: float) -> Any:
        sessions = []
        while reactor.seconds() < until and len(sessions) < 10_000:
            result = yield session(kind, kept.get(kind))
            sessions.append(result)
            yield deferLater(reactor, args.pause, lambda: None)
        results["clients"][kind] = sessions

    @inlineCallbacks
    def run() -> Any:
        try:
            prepared = {}
            for kind in ("returning", "mux"):
                prepared[kind] = yield session(kind, kept[kind])
            results["prepared"] = prepared
            with open(os.path.join(args.work, "ready"), "w") as f:
                json.dump(prepared, f)
            go = os.path.join(args.work, "go")
            for _ in range(1200):
                if os.path.exists(go):
                    break
                yield deferLater(reactor, 0.1, lambda: None)
            else:
                raise RuntimeError("no go within 120 s")
            until = reactor.seconds() + args.duration
            from twisted.internet.defer import gatherResults

            yield gatherResults([loop(kind, until) for kind in SOURCES])
            results["mux_logins"] = getattr(kept["mux"], "logins", None)
        except Exception as error:
            results["error"] = repr(error)
        finally:
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()
    out = os.path.join(args.work, "legit.json")
    with open(out + ".tmp", "w") as f:
        json.dump(results, f)
    os.replace(out + ".tmp", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

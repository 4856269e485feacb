"""
The attackers of C{bench/flood.py}: one asyncio process (pinned to CPU 0 at a lower priority
by the harness) running any of the issue's three attacks at once against a gateway on
127.0.0.1, from loopback source addresses bound before connecting. A benchmark role, not a
test; every loop is bounded by C{--duration}.

    python bench/flood_attack.py --port P --attacks slowloris,connect,login \\
        --duration 50 --user bench --out FILE

Each attack is a fixed number of slots; a slot is one connection at a time, opened again
when it ends, but never sooner than the attack's C{cycle} after the previous one was
started, so a refused slot cannot spin (the attack's connection rate is bounded by
slots / cycle; C{--cycle-scale 0} lifts that bound: a slot connects again at once, and the
attacker's one CPU is the bound):

  - C{slowloris}: 1,000 slots from 50 sources (127.0.0.10 ... 127.0.0.59). A slot waits up
    to 5 s for the greeting (it never talks early), then sends one byte of an C{AUTH} line
    that never ends every 5 s, until the gateway closes. Cycle 5 s.
  - C{connect}: 1,500 slots from 254 sources (127.0.1.1 ... 127.0.1.254). A slot connects,
    says nothing, and closes 2 s after it began connecting (sooner if the gateway closes);
    then it connects again. Cycle 2 s. It never misbehaves: no early talk, no timeout.
  - C{login}: 200 slots from 50 sources (127.0.0.60 ... 127.0.0.109). A slot logs in with
    real SCRAM-SHA-256 as the benchmark's user with a wrong password (the salted password
    is cached per salt, so the attacker's CPU goes on the exchange, not on PBKDF2), tries
    again on the same connection while the gateway lets it, and connects again when it is
    closed. Cycle 1 s.

The output is a JSON object per attack: connections started, how each ended (refused with
C{ERR BUSY <reason>} or another error, closed without a word, greeted then closed by the
gateway, closed by us at the end of a hold, connect failed), failed logins, and the largest
number of connections open at once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from loadgen import ScramClient  # noqa: E402

#: Bound on one connect, seconds.
CONNECT_TIMEOUT = 5.0

#: The attacks: slots, sources, and a slot's cycle (the least time between two of its
#: connections), seconds.
ATTACKS: dict[str, dict[str, Any]] = {
    "slowloris": {
        "slots": 1000,
        "sources": [f"127.0.0.{n}" for n in range(10, 60)],
        "cycle": 5.0,
    },
    "connect": {
        "slots": 1500,
        "sources": [f"127.0.1.{n}" for n in range(1, 255)],
        "cycle": 2.0,
    },
    "login": {
        "slots": 200,
        "sources": [f"127.0.0.{n}" for n in range(60, 110)],
        "cycle": 1.0,
    },
}

#: The slowloris drip interval and the connect flood's hold, seconds.
DRIP = 5.0
HOLD = 2.0


class Tally:
    """
    What one attack's connections got.

    @ivar outcomes: how connections ended, by kind.
    @ivar started: connections started.
    @ivar failed_logins: C{ERR AUTH_FAILED} answers received.
    @ivar open: connections open now; C{peak}: the most at once.
    """

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.started = 0
        self.failed_logins = 0
        self.open = 0
        self.peak = 0

    def opened(self) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)

    def as_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "outcomes": dict(self.outcomes.most_common()),
            "failed_logins": self.failed_logins,
            "peak_open": self.peak,
        }


def _ended(first: bytes, greeted: bool) -> str:
    """
    @param first: the first line the gateway sent (empty: none).
    @param greeted: whether that line was the greeting.
    @return: how a connection the gateway closed ended, for the tally.
    """
    if first.startswith(b"ERR BUSY"):
        return "refused: BUSY " + first[9:].decode("ascii", "replace").split(" ")[0]
    if first.startswith(b"ERR "):
        return "ERR " + first[4:].decode("ascii", "replace").split(" ")[0]
    if not first:
        return "closed without a word"
    if greeted:
        return "greeted, then closed by the gateway"
    return "other: " + first[:40].decode("ascii", "replace")


def _after_greeting(data: bytes) -> str:
    """
    @param data: what the gateway sent after its greeting, before closing.
    @return: how the connection ended: C{greeted, then ERR ...} for an error line, else
        C{greeted, then closed by the gateway}.
    """
    for line in data.split(b"\r\n"):
        if line.startswith(b"ERR "):
            return "greeted, then " + _ended(line, False)
    return "greeted, then closed by the gateway"


async def _first_line(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """
    @return: the first line (without CRLF), or what came before the close or the timeout.
    """
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (TimeoutError, asyncio.LimitOverrunError, ValueError):
        return b""
    return line.rstrip(b"\r\n")


async def slowloris(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tally: Tally, end: float
) -> str:
    """
    Wait for the greeting, then drip one byte of a line that never ends every L{DRIP} s.
    """
    loop = asyncio.get_running_loop()
    first = await _first_line(reader, DRIP)
    greeted = first.startswith(b"NETGUARD/1 ")
    if first and not greeted:
        return _ended(first, False)
    drip = b"AUTH SCRAM-SHA-256 " + b"x" * 900
    for byte in drip:
        writer.write(bytes([byte]))
        try:
            data = await asyncio.wait_for(
                reader.read(4096), max(0.01, min(DRIP, end - loop.time()))
            )
        except TimeoutError:
            if loop.time() >= end:
                return "held until the end"
            continue
        if not data:
            return _ended(first, greeted)
        if greeted:
            return _after_greeting(data)
        return _ended(data.split(b"\r\n", 1)[0], False)
    return "dripped a whole line"


async def connect_hold(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tally: Tally, end: float
) -> str:
    """
    Say nothing; close after L{HOLD} s (from the connect) unless the gateway closes first.
    """
    loop = asyncio.get_running_loop()
    first = b""
    later = b""
    greeted = False
    until = min(end, loop.time() + HOLD)
    while loop.time() < until:
        try:
            data = await asyncio.wait_for(reader.read(4096), until - loop.time())
        except TimeoutError:
            break
        if not data:
            return _after_greeting(later) if greeted else _ended(first, greeted)
        if not first:
            first, _, data = data.partition(b"\r\n")
            greeted = first.startswith(b"NETGUARD/1 ")
            if not greeted:
                return _ended(first, False)
        later = (later + data)[-4096:]
    return "held, closed by us" if greeted else "held, never greeted"


def _login(user: str, password: str) -> Callable[..., Awaitable[str]]:
    scram = ScramClient(user, password)

    async def login(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tally: Tally, end: float
    ) -> str:
        """
        SCRAM-SHA-256 with a wrong password, again and again on one connection.
        """
        first = await _first_line(reader, CONNECT_TIMEOUT)
        if not first.startswith(b"NETGUARD/1 "):
            return _ended(first, False)
        loop = asyncio.get_running_loop()
        failed_here = 0
        while loop.time() < end:
            bare, message = scram.first()
            writer.write(b"AUTH SCRAM-SHA-256 " + base64.b64encode(message.encode()) + b"\r\n")
            cont = await _first_line(reader, CONNECT_TIMEOUT)
            if not cont.startswith(b"CONT "):
                if not cont and failed_here:
                    return "closed by the gateway after failed logins"
                return _ended(cont, True)
            server_first = base64.b64decode(cont[5:]).decode("utf-8")
            final, _ = scram.final(bare, server_first)
            writer.write(b"CONT " + base64.b64encode(final.encode()) + b"\r\n")
            answer = await _first_line(reader, CONNECT_TIMEOUT)
            if answer.startswith(b"ERR AUTH_FAILED"):
                tally.failed_logins += 1
                failed_here += 1
                continue
            if not answer and failed_here:
                return "closed by the gateway after failed logins"
            return _ended(answer, True)
        return "held until the end"

    return login


async def _slot(
    index: int,
    port: int,
    attack: dict[str, Any],
    behaviour: Callable[..., Awaitable[str]],
    tally: Tally,
    end: float,
    cycle_scale: float,
) -> None:
    loop = asyncio.get_running_loop()
    source = attack["sources"][index % len(attack["sources"])]
    # Spread the slots' first connections over one cycle, so the attack ramps up.
    await asyncio.sleep(random.random() * attack["cycle"])
    while loop.time() < end:
        began = loop.time()
        tally.started += 1
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)),
                CONNECT_TIMEOUT,
            )
        except (TimeoutError, OSError) as error:
            tally.outcomes[f"connect failed: {type(error).__name__}"] += 1
        else:
            tally.opened()
            try:
                outcome = await behaviour(reader, writer, tally, end)
            except (OSError, ValueError, UnicodeDecodeError, KeyError) as error:
                outcome = f"error: {type(error).__name__}"
            finally:
                tally.open -= 1
                writer.transport.abort()
            tally.outcomes[outcome] += 1
        cycle = attack["cycle"] * cycle_scale
        await asyncio.sleep(max(0.0, min(end, began + cycle) - loop.time()))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """
    Run the attacks named in C{args.attacks} for C{args.duration} seconds.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + args.duration
    behaviours: dict[str, Callable[..., Awaitable[str]]] = {
        "slowloris": slowloris,
        "connect": connect_hold,
        "login": _login(args.user, args.wrong_password),
    }
    tallies: dict[str, Tally] = {}
    tasks = []
    for name in args.attacks.split(","):
        attack = ATTACKS[name]
        tallies[name] = tally = Tally()
        slots = attack["slots"] if args.scale == 1.0 else max(1, int(attack["slots"] * args.scale))
        tasks += [
            asyncio.ensure_future(
                _slot(i, args.port, attack, behaviours[name], tally, end, args.cycle_scale)
            )
            for i in range(slots)
        ]
    started = time.monotonic()
    # SIGTERM (the harness, once its clients are done) ends the attack early; the tallies
    # are written all the same.
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stopped = asyncio.ensure_future(stop.wait())
    everything = asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.wait(
        [everything, stopped],
        timeout=args.duration + CONNECT_TIMEOUT + 5,
        return_when=asyncio.FIRST_COMPLETED,
    )
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    stopped.cancel()
    await asyncio.gather(everything, stopped, return_exceptions=True)
    errors = Counter(
        type(t.exception()).__name__
        for t in tasks
        if not t.cancelled() and t.exception() is not None
    )
    return {
        "attacks": {name: tally.as_dict() for name, tally in tallies.items()},
        "took_s": time.monotonic() - started,
        "slot_errors": dict(errors),
        "stopped_early": stop.is_set(),
        "cut": len(pending),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--attacks", required=True, help="slowloris,connect,login")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--wrong-password", default="not-the-password")
    parser.add_argument("--scale", type=float, default=1.0, help="scale every slot count")
    parser.add_argument(
        "--cycle-scale",
        type=float,
        default=1.0,
        help="scale every slot's cycle (0: a slot connects again as soon as it is closed)",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    unknown = set(args.attacks.split(",")) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(run(args))
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

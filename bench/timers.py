"""
What does a per-connection idle timer cost when 10,000 connections each see traffic all the
time? A measurement, not a test: it prints tables and asserts nothing. See C{bench/TIMERS.md}
for the figures and the decision they led to.

Strategies compared (each connection arms one idle timer, then resets it on every event):

  - C{reset}: one L{DelayedCall} per connection, C{dc.reset(idle)} on every event (what
    L{netguard.relay.Splice} and L{TimeoutMixin.resetTimeout} do today; guarded by
    C{dc.active()} as Splice does);
  - C{recreate}: C{dc.cancel()} then a new C{callLater} on every event (reference only: the
    naive form, to show what the reactor's heap does with it);
  - C{txaio}: C{txaio}'s batched timer (the class C{txaio.make_batched_timer} returns, built
    directly so that the clock can be injected), bucket C{--bucket} seconds: cancel the old
    call and C{call_later} a new one on every event;
  - C{sweep}: a last-activity timestamp per connection (C{conn.last = clock.seconds()}) and
    one periodic sweep every C{--bucket} seconds over all connections;
  - C{none}: the event does nothing (the loop and call overhead, subtracted from the others).

Three parts:

  1. primitives: C{timeit.repeat} of one event round-robin over N armed timers, best of 5;
  2. scenario: N connections, C{--rate} events per second each, for C{--traffic} seconds of
     traffic and then silence until every timer has expired, on a L{task.Clock} (simulated
     time) and on a fresh real reactor driven like C{mainLoop} (C{runUntilCurrent},
     C{timeout}, C{doIteration}; wall-clock time, paced to the rate; a strategy that cannot
     keep up shows a lower achieved rate); CPU from C{resource.getrusage};
  3. memory: C{tracemalloc} of N armed timers, and after one second of traffic.

Run: C{.venv/bin/python bench/timers.py} (about two minutes on 2 vCPUs), or
C{--connections 2000 --traffic 2} for a quick look.
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import socket
import timeit
import tracemalloc
from collections.abc import Callable
from functools import partial
from typing import Any

import txaio
from twisted.internet.base import ReactorBase
from twisted.internet.task import Clock
from txaio._common import _BatchedTimer

import twisted

#: Strategy names, in table order.
STRATEGIES = ("none", "reset", "recreate", "txaio", "sweep")


class Conn:
    """
    One simulated connection: its timer handle and when its idle timer fired.
    """

    __slots__ = ("timer", "last", "expired_at")

    def __init__(self) -> None:
        self.timer: Any = None
        self.last = 0.0
        self.expired_at: float | None = None


class Strategy:
    """
    The idle-timer policy under test. C{arm} once per connection, C{event} per read,
    C{pending} for the number of live timers.
    """

    name = "none"

    def __init__(self, clock: Any, idle: float, bucket: float, chunk: int) -> None:
        self.clock = clock
        self.idle = idle
        self.bucket = bucket
        self.chunk = chunk
        self.expired = 0

    def expire(self, conn: Conn) -> None:
        """
        A connection's idle timer fired.
        """
        conn.expired_at = self.clock.seconds()
        conn.timer = None
        self.expired += 1

    def arm(self, conn: Conn) -> None:
        """
        Start the connection's idle timer.
        """

    def event(self, conn: Conn) -> None:
        """
        The connection read something.
        """


class Reset(Strategy):
    """
    C{DelayedCall.reset} per event, as Splice does.
    """

    name = "reset"

    def arm(self, conn: Conn) -> None:
        conn.timer = self.clock.callLater(self.idle, self.expire, conn)

    def event(self, conn: Conn) -> None:
        timer = conn.timer
        if timer is not None and timer.active():
            timer.reset(self.idle)


class Recreate(Strategy):
    """
    C{cancel} + C{callLater} per event.
    """

    name = "recreate"

    def arm(self, conn: Conn) -> None:
        conn.timer = self.clock.callLater(self.idle, self.expire, conn)

    def event(self, conn: Conn) -> None:
        timer = conn.timer
        if timer is not None:
            timer.cancel()
            conn.timer = self.clock.callLater(self.idle, self.expire, conn)


class Batched(Strategy):
    """
    txaio's batched timer; cancel + C{call_later} per event.
    """

    name = "txaio"

    def __init__(self, clock: Any, idle: float, bucket: float, chunk: int) -> None:
        super().__init__(clock, idle, bucket, chunk)
        # txaio.make_batched_timer(bucket_seconds, chunk_size) builds exactly this, but on
        # the global reactor (txaio.config.loop): the class is the only way to inject a clock.
        self.timer = _BatchedTimer(
            bucket * 1000.0,
            chunk,
            seconds_provider=clock.seconds,
            delayed_call_creator=clock.callLater,
        )

    def arm(self, conn: Conn) -> None:
        conn.timer = self.timer.call_later(self.idle, self.expire, conn)

    def event(self, conn: Conn) -> None:
        timer = conn.timer
        if timer is not None:
            timer.cancel()
            conn.timer = self.timer.call_later(self.idle, self.expire, conn)


class Sweep(Strategy):
    """
    Last-activity timestamp per connection, one sweep every C{bucket} seconds.
    """

    name = "sweep"

    def __init__(self, clock: Any, idle: float, bucket: float, chunk: int) -> None:
        super().__init__(clock, idle, bucket, chunk)
        self.seconds = clock.seconds
        self.live: dict[Conn, None] = {}
        self.sweeper = clock.callLater(bucket, self.sweep)

    def arm(self, conn: Conn) -> None:
        conn.last = self.seconds()
        self.live[conn] = None

    def event(self, conn: Conn) -> None:
        conn.last = self.seconds()

    def sweep(self) -> None:
        """
        Expire every connection silent for C{idle} seconds; re-arm the sweep.
        """
        deadline = self.seconds() - self.idle
        late = [conn for conn in self.live if conn.last <= deadline]
        for conn in late:
            del self.live[conn]
            self.expire(conn)
        self.sweeper = self.clock.callLater(self.bucket, self.sweep)


_CLASSES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Strategy, Reset, Recreate, Batched, Sweep)
}


def fresh_reactor() -> ReactorBase:
    """
    A new, not installed, real reactor (epoll where there is one), so that its timer heap
    holds only this run's calls.
    """
    try:
        from twisted.internet.epollreactor import EPollReactor

        return EPollReactor()
    except ImportError:  # pragma: no cover - not Linux
        from twisted.internet.selectreactor import SelectReactor

        return SelectReactor()


def make_clock(kind: str) -> Any:
    """
    A L{Clock} or a fresh real reactor.
    """
    return Clock() if kind == "clock" else fresh_reactor()


def cpu_seconds() -> float:
    """
    User + system CPU seconds of this process so far.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- part 1: primitives --------------------------------------------------------------------


def primitives(n: int, idle: float, bucket: float, chunk: int, kind: str) -> dict[str, float]:
    """
    ns per event, best of 5 C{timeit} repeats, each a round-robin pass over N armed timers.
    """
    out: dict[str, float] = {}
    for name in STRATEGIES:
        if name == "recreate" and kind == "clock":
            continue  # Clock.callLater re-sorts every call: O(n) each, see TIMERS.md
        clock = make_clock(kind)
        strategy = _CLASSES[name](clock, idle, bucket, chunk)
        conns = [Conn() for _ in range(n)]
        for conn in conns:
            strategy.arm(conn)
        event = strategy.event

        def one_pass(conns: list[Conn] = conns, event: Callable[[Conn], None] = event) -> None:
            for conn in conns:
                event(conn)

        gc.collect()
        best = min(timeit.repeat(one_pass, number=3, repeat=5))
        out[name] = best / (3 * n) * 1e9
    return out


def chunk_context(size: int = 65536) -> float:
    """
    ns for one 64 KiB send + recv over a unix socketpair: the floor of what relaying one
    chunk costs, to put a timer reset in proportion.
    """
    left, right = socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * size)
    right.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * size)
    payload = b"x" * size
    view = bytearray(size)

    def once() -> None:
        left.sendall(payload)
        got = 0
        while got < size:
            got += right.recv_into(memoryview(view)[got:])

    try:
        best = min(timeit.repeat(once, number=200, repeat=5))
    finally:
        left.close()
        right.close()
    return best / 200 * 1e9


class _NullTransport:
    """
    The least a L{Splice} needs of a transport; C{write} drops the bytes, so what is timed
    is Splice's own Python work per chunk.
    """

    def registerProducer(self, producer: object, streaming: bool) -> None:
        """
        Accept the valve.
        """

    def write(self, data: bytes) -> None:
        """
        Drop the bytes.
        """


def splice_context(size: int = 65536) -> tuple[float, float]:
    """
    ns per C{Splice.data_from} of one 64 KiB chunk on a fresh real reactor: with the idle
    timer as shipped (a C{reset} per chunk), and with the timer taken away (the floor).
    """
    from netguard.relay import A, Splice

    chunk = b"x" * size
    out = []
    for keep_timer in (True, False):
        splice = Splice(_NullTransport(), _NullTransport(), clock=fresh_reactor())
        splice.start()
        if not keep_timer:
            splice._idle.cancel()
            splice._idle = None
        best = min(timeit.repeat(partial(splice.data_from, A, chunk), number=100_000, repeat=5))
        out.append(best / 100_000 * 1e9)
    return out[0], out[1]


# -- part 2: scenario ---------------------------------------------------------------------


def scenario(
    name: str,
    kind: str,
    n: int,
    rate: float,
    traffic: float,
    idle: float,
    bucket: float,
    chunk: int,
) -> dict[str, Any]:
    """
    N connections with C{rate} events/s each for C{traffic} seconds, then silence until
    every timer fired (or C{idle + 2 * bucket + 1} seconds passed).
    """
    clock = make_clock(kind)
    strategy = _CLASSES[name](clock, idle, bucket, chunk)
    conns = [Conn() for _ in range(n)]
    event = strategy.event
    tick = 1.0 / rate
    real = kind == "reactor"
    now = clock.seconds

    def check() -> None:
        if real:
            clock.runUntilCurrent()
            clock.timeout()
        else:
            clock.advance(tick)

    def wait(until: float) -> None:
        if real:
            # what mainLoop does between runUntilCurrent calls
            timeout = clock.timeout()
            delay = max(0.0, until - now())
            if timeout is not None:
                delay = min(delay, timeout)
            clock.doIteration(delay)

    for conn in conns:
        strategy.arm(conn)
    gc.collect()
    heap_max = new_max = cancellations_max = 0
    event_ns = check_ns = check_max_ns = 0.0
    events = ticks = 0
    start = now()
    end = start + traffic
    cpu0 = cpu_seconds()
    next_tick = start
    last_traffic = start
    while now() < end:
        t0 = timeit.default_timer()
        for conn in conns:
            event(conn)
        t1 = timeit.default_timer()
        events += n
        last_traffic = now()
        if real:
            new_max = max(new_max, len(clock._newTimedCalls))
        check()
        t2 = timeit.default_timer()
        ticks += 1
        event_ns += (t1 - t0) * 1e9
        check_ns += (t2 - t1) * 1e9
        check_max_ns = max(check_max_ns, (t2 - t1) * 1e9)
        if real:
            heap_max = max(heap_max, len(clock._pendingTimedCalls))
            cancellations_max = max(cancellations_max, clock._cancellations)
        else:
            heap_max = max(heap_max, len(clock.calls))
        next_tick += tick
        wait(next_tick)
    elapsed = now() - start
    cpu_traffic = cpu_seconds() - cpu0

    quiet_ns = 0.0
    give_up = now() + idle + 2 * bucket + 1.0
    while strategy.expired < n and now() < give_up:
        before = strategy.expired
        t0 = timeit.default_timer()
        check()
        spent = (timeit.default_timer() - t0) * 1e9
        if strategy.expired > before:
            quiet_ns += spent  # only the checks that fired something
        wait(now() + tick)
    lateness = [conn.expired_at - last_traffic for conn in conns if conn.expired_at is not None]
    early = [
        conn for conn in conns if conn.expired_at is not None and conn.expired_at < start + traffic
    ]
    return {
        "events": events,
        "achieved_rate": events / n / elapsed if elapsed else 0.0,
        "event_ns": event_ns / events if events else 0.0,
        "check_us_per_tick": check_ns / ticks / 1e3 if ticks else 0.0,
        "check_max_ms": check_max_ns / 1e6,
        "timer_cpu_share": (event_ns + check_ns) / 1e9 / elapsed if elapsed else 0.0,
        "process_cpu_share": cpu_traffic / elapsed if elapsed else 0.0,
        "expired": strategy.expired,
        "expired_during_traffic": len(early),
        "expiry_ns": quiet_ns / strategy.expired if strategy.expired else 0.0,
        "late_min": min(lateness) if lateness else float("nan"),
        "late_max": max(lateness) if lateness else float("nan"),
        "heap_max": heap_max,
        "new_max": new_max,
        "cancellations_max": cancellations_max,
    }


# -- part 3: memory -----------------------------------------------------------------------


def memory(
    name: str, kind: str, n: int, idle: float, bucket: float, chunk: int, rate: float
) -> tuple[int, int]:
    """
    Bytes allocated by N armed timers, and by the timers after one second of traffic (a
    pass over every connection per tick, C{check} after each pass).
    """
    clock = make_clock(kind)
    conns = [Conn() for _ in range(n)]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    strategy = _CLASSES[name](clock, idle, bucket, chunk)
    for conn in conns:
        strategy.arm(conn)
    gc.collect()
    armed = tracemalloc.get_traced_memory()[0] - base
    for _ in range(int(rate)):
        for conn in conns:
            strategy.event(conn)
        if kind == "reactor":
            clock.runUntilCurrent()
        else:
            clock.advance(1.0 / rate)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return armed, after


# -- driver -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """
    Run the three parts and print the tables.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100.0, help="events/s per connection")
    parser.add_argument("--traffic", type=float, default=4.0, help="seconds of traffic")
    parser.add_argument("--idle", type=float, default=2.0, help="idle timeout, seconds")
    parser.add_argument("--bucket", type=float, default=1.0, help="txaio bucket / sweep period")
    parser.add_argument("--chunk", type=int, default=100, help="txaio chunk_size")
    parser.add_argument("--skip-scenario-clock", action="store_true")
    args = parser.parse_args(argv)
    n, rate, idle, bucket, chunk = args.connections, args.rate, args.idle, args.bucket, args.chunk

    print(
        f"python {platform.python_version()}, twisted {twisted.__version__}, "
        f"txaio {txaio.__version__}, {platform.machine()}, {platform.processor() or '?'}"
    )
    print(
        f"N={n} connections, {rate:g} events/s each, traffic {args.traffic:g} s, "
        f"idle {idle:g} s, bucket/sweep {bucket:g} s, chunk {chunk}\n"
    )

    print("1. primitives: ns per event, round-robin over N armed timers (timeit, best of 5)")
    print(f"{'strategy':<10} {'Clock':>10} {'reactor':>10} {'reactor net':>12}")
    prim = {kind: primitives(n, idle, bucket, chunk, kind) for kind in ("clock", "reactor")}
    for name in STRATEGIES:
        c = prim["clock"].get(name)
        r = prim["reactor"][name]
        net = r - prim["reactor"]["none"]
        c_text = f"{c:10.0f}" if c is not None else f"{'n/a':>10}"
        print(f"{name:<10} {c_text} {r:10.0f} {net:12.0f}")
    ctx = chunk_context()
    print(f"context: one 64 KiB send+recv over a unix socketpair: {ctx:.0f} ns")
    with_timer, without_timer = splice_context()
    print(
        f"context: Splice.data_from(64 KiB) on a null transport: {with_timer:.0f} ns with the"
        f" idle reset, {without_timer:.0f} ns without\n"
    )

    print("2. scenario (ns/ev = the strategy's event call; chk = advance, or runUntilCurrent")
    print("   + timeout, incl. the sweep: mean per tick and worst tick; ns/expiry = time of the")
    print("   quiet-phase checks that fired something, per timer fired; late = when it fired")
    print("   minus the last event; early = fired while traffic still ran)")
    header = (
        f"{'clock':<8}{'strategy':<10}{'rate/s':>7}{'ns/ev':>7}{'chk µs/tick':>12}{'max ms':>7}"
        f"{'timer CPU':>10}{'proc CPU':>9}{'ns/expiry':>10}{'late min..max s':>17}{'early':>6}"
        f"{'heap max':>9}{'new max':>8}{'cancl max':>10}"
    )
    print(header)
    for kind in ("clock", "reactor"):
        if kind == "clock" and args.skip_scenario_clock:
            continue
        for name in STRATEGIES:
            if name == "recreate" and kind == "clock":
                print(f"{kind:<8}{name:<10}  n/a: Clock.callLater re-sorts all N calls per call")
                continue
            res = scenario(name, kind, n, rate, args.traffic, idle, bucket, chunk)
            print(
                f"{kind:<8}{name:<10}{res['achieved_rate']:7.0f}{res['event_ns']:7.0f}"
                f"{res['check_us_per_tick']:12.1f}{res['check_max_ms']:7.1f}"
                f"{res['timer_cpu_share']:9.1%} {res['process_cpu_share']:8.1%} "
                f"{res['expiry_ns']:10.0f}"
                f"{res['late_min']:8.2f}..{res['late_max']:<7.2f}"
                f"{res['expired_during_traffic']:6d}"
                f"{res['heap_max']:9d}{res['new_max']:8d}{res['cancellations_max']:10d}"
            )
    print("   (timer CPU: share of one core spent in events + checks, over traffic time;")
    print("    for Clock that time is simulated, so it reads 'cores needed at this rate';")
    print("    proc CPU: getrusage user+system over wall time, the whole process)\n")

    print("3. memory of N armed timers, and after 1 s of traffic (tracemalloc)")
    print(
        f"{'clock':<8}{'strategy':<10}{'armed KiB':>10}{'B/conn':>8}{'after KiB':>10}{'B/conn':>8}"
    )
    for kind in ("clock", "reactor"):
        for name in STRATEGIES[1:]:
            if name == "recreate" and kind == "clock":
                continue
            armed, after = memory(name, kind, n, idle, bucket, chunk, rate)
            print(
                f"{kind:<8}{name:<10}{armed / 1024:10.0f}{armed / n:8.0f}"
                f"{after / 1024:10.0f}{after / n:8.0f}"
            )


if __name__ == "__main__":
    main()

"""
The Python load generator of the benchmark. Every subcommand connects to one TCP port (a
path's front door) and prints one JSON object on standard output.

With C{--ngp SERVICE:USER:PASSWORD_FILE[:CAFILE]} it speaks NGP/1 itself first (over TLS
verified against CAFILE when given) (greeting, SCRAM-SHA-256
with the server's signature checked, C{OPEN SERVICE}), so the gateway can be measured without
the client-side tunnel. The SCRAM client caches the salted password (RFC 5802 section 5.1
allows it), so a connection costs the generator a few HMACs, not a PBKDF2: the generator is not
what a handshake-rate measurement measures.

Subcommands (the bulk ones talk to C{bench/backend.py}, the others to redis-server):

  bulk --direction up|down --bytes N   time N bytes one way (sink C{U} / source C{D})
  echo --bytes N                       N random bytes through the echo; SHA-256 both ways
  ping --conns C --seconds S           redis PING ping-pong on C connections: rps, p50, p99
  connrate --conns C --seconds S       new connection + one PING + close, C at a time
  hold --count N                       open N connections, PING once on each, print a
                                       line, keep them open until standard input has a line
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import selectors
import socket
import sys
import time
from typing import Any

import attrs

#: A redis PING in RESP and its answer.
PING = b"*1\r\n$4\r\nPING\r\n"
PONG = b"+PONG\r\n"

#: Bound on any single blocking socket operation.
IO_TIMEOUT = 30.0


class CpuWindow:
    """
    CPU seconds used during the timed window by the watched process groups (by kind: the
    path's relays, the backend) and by this generator, so CPU shares exclude start-up and
    handshakes.
    """

    def __init__(self, watch: list[str]):
        """
        @param watch: C{KIND:PGID} items (C{relay:1234}, C{backend:99}).
        """
        self.groups = [(item.split(":")[0], int(item.split(":")[1])) for item in watch]
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def _sample(self) -> dict[str, float]:
        from procs import group_cpu_seconds

        totals: dict[str, float] = {}
        for kind, pgid in self.groups:
            totals[kind] = totals.get(kind, 0.0) + group_cpu_seconds(pgid)
        return totals

    def start(self) -> None:
        """
        Open the window.
        """
        self._start = self._sample()
        self._t0 = time.perf_counter()

    def stop(self, generator_cpu: float) -> dict[str, Any]:
        """
        Close the window.

        @param generator_cpu: CPU seconds the generator used in the window.
        @return: the window's length and CPU shares in percent of one CPU.
        """
        wall = time.perf_counter() - self._t0
        end = self._sample()
        shares: dict[str, Any] = {"window_s": wall}
        for kind in end:
            shares[f"{kind}_cpu_pct"] = 100 * (end[kind] - self._start[kind]) / wall
        shares["gen_cpu_pct"] = 100 * generator_cpu / wall
        return shares


@attrs.frozen
class NGPTarget:
    """
    What to open behind a netguard gateway.

    @ivar service: the service name.
    @ivar user: the user name.
    @ivar password: the password (read from a 0600 file).
    """

    service: str
    user: str
    password: str
    cafile: str | None = None

    def tls_context(self) -> Any:
        """
        @return: an C{ssl.SSLContext} verifying the gateway against C{cafile}, or L{None}
            for a plain TCP gateway.
        """
        if self.cafile is None:
            return None
        import ssl

        return ssl.create_default_context(cafile=self.cafile)


def parse_ngp(spec: str | None) -> NGPTarget | None:
    """
    Parse C{SERVICE:USER:PASSWORD_FILE}.

    @return: the L{NGPTarget}, or L{None} for no spec.
    """
    if not spec:
        return None
    service, user, path, *cafile = spec.split(":", 3)
    with open(path) as f:
        password = f.read().rstrip("\r\n")
    return NGPTarget(service, user, password, cafile[0] if cafile else None)


class ScramClient:
    """
    SCRAM-SHA-256 client steps (RFC 5802, RFC 7677) with a salted-password cache.
    """

    def __init__(self, user: str, password: str):
        self.user = user
        self.password = password.encode("utf-8")
        self._salted: dict[tuple[bytes, int], bytes] = {}

    def first(self) -> tuple[str, str]:
        """
        @return: (client-first-message-bare, client-first-message).
        """
        nonce = base64.b64encode(os.urandom(18)).decode("ascii")
        bare = f"n={self.user},r={nonce}"
        return bare, "n,," + bare

    def final(
        self, bare: str, server_first: str, cbind_input: bytes = b"n,,"
    ) -> tuple[str, bytes]:
        """
        @param cbind_input: the GS2 header, followed by the channel-binding data for PLUS.
        @return: (client-final-message, the server signature we expect).
        """
        fields = dict(item.split("=", 1) for item in server_first.split(","))
        nonce, salt, iterations = fields["r"], base64.b64decode(fields["s"]), int(fields["i"])
        if not nonce.startswith(bare.split(",r=", 1)[1]):
            raise ValueError("server nonce does not extend ours")
        key = (salt, iterations)
        salted = self._salted.get(key)
        if salted is None:
            salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iterations)
            self._salted[key] = salted
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        binding = base64.b64encode(cbind_input).decode("ascii")
        without_proof = f"c={binding},r={nonce}"
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        expected = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode('ascii')}", expected


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode("utf-8"))


def _unb64(token: bytes) -> str:
    return base64.b64decode(token, validate=True).decode("utf-8")


class NGPRefused(Exception):
    """
    The gateway answered something other than what the handshake expects.
    """


class _NGPSteps:
    """
    The client side of the NGP/1 handshake as a sequence of line exchanges, shared by the
    blocking and the asyncio drivers.
    """

    def __init__(self, target: NGPTarget, scram: ScramClient):
        self.target = target
        self.scram = scram
        self._bare = ""
        self._expected = b""

    def on_greeting(self, line: bytes) -> bytes:
        if not line.startswith(b"NETGUARD/1 ") or b"SCRAM-SHA-256" not in line:
            raise NGPRefused(f"not a greeting: {line[:80]!r}")
        self._bare, first = self.scram.first()
        return b"AUTH SCRAM-SHA-256 " + _b64(first)

    def on_cont(self, line: bytes) -> bytes:
        if not line.startswith(b"CONT "):
            raise NGPRefused(f"expected CONT: {line[:80]!r}")
        final, self._expected = self.scram.final(self._bare, _unb64(line[5:]))
        return b"CONT " + _b64(final)

    def on_auth_ok(self, line: bytes) -> bytes:
        if not line.startswith(b"OK "):
            raise NGPRefused(f"expected OK: {line[:80]!r}")
        verifier = _unb64(line[3:])
        if not verifier.startswith("v=") or not hmac.compare_digest(
            base64.b64decode(verifier[2:]), self._expected
        ):
            raise NGPRefused("server signature does not verify")
        return b"OPEN " + self.target.service.encode("ascii")

    def on_open(self, line: bytes) -> None:
        if line != b"OK OPEN " + self.target.service.encode("ascii"):
            raise NGPRefused(f"expected OK OPEN: {line[:80]!r}")


def _strip(line: bytes) -> bytes:
    return line.rstrip(b"\n").rstrip(b"\r")


def connect(
    host: str,
    port: int,
    ngp: NGPTarget | None,
    scram: ScramClient | None,
    timeout: float = IO_TIMEOUT,
) -> tuple[socket.socket, bytes]:
    """
    Open a blocking connection, with the NGP/1 handshake when C{ngp} is given.

    @param timeout: bound on each socket operation.
    @return: the socket (TCP_NODELAY set) and any bytes read past the handshake.
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ngp is None:
        return sock, b""
    context = ngp.tls_context()
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="localhost")
    assert scram is not None
    steps = _NGPSteps(ngp, scram)
    buffer = b""

    def line() -> bytes:
        nonlocal buffer
        while b"\n" not in buffer:
            got = sock.recv(4096)
            if not got:
                raise NGPRefused("closed during the handshake")
            buffer += got
        first, _, buffer = buffer.partition(b"\n")
        return _strip(first)

    sock.sendall(steps.on_greeting(line()) + b"\r\n")
    sock.sendall(steps.on_cont(line()) + b"\r\n")
    sock.sendall(steps.on_auth_ok(line()) + b"\r\n")
    steps.on_open(line())
    return sock, buffer


async def connect_async(
    host: str, port: int, ngp: NGPTarget | None, scram: ScramClient | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """
    Open an asyncio connection, with the NGP/1 handshake when C{ngp} is given.
    """
    context = ngp.tls_context() if ngp is not None else None
    if context is not None:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname="localhost"
        )
    else:
        reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ngp is None:
        return reader, writer
    assert scram is not None
    steps = _NGPSteps(ngp, scram)
    writer.write(steps.on_greeting(_strip(await reader.readline())) + b"\r\n")
    writer.write(steps.on_cont(_strip(await reader.readline())) + b"\r\n")
    writer.write(steps.on_auth_ok(_strip(await reader.readline())) + b"\r\n")
    steps.on_open(_strip(await reader.readline()))
    return reader, writer


def _recv_exact(sock: socket.socket, count: int, buffer: bytes = b"") -> tuple[bytes, bytes]:
    while len(buffer) < count:
        got = sock.recv(max(65536, count - len(buffer)))
        if not got:
            raise ConnectionError("closed early")
        buffer += got
    return buffer[:count], buffer[count:]


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


# -- bulk and echo -----------------------------------------------------------------------------


def cmd_bulk(args: argparse.Namespace) -> dict[str, Any]:
    """
    Send (C{up}) or receive (C{down}) C{--bytes} through the path, timed from the command to
    its completion (the connection and handshake are made and checked before the clock runs).
    """
    ngp = parse_ngp(args.ngp)
    scram = ScramClient(ngp.user, ngp.password) if ngp else None
    sock, extra = connect(args.host, args.port, ngp, scram)
    size = args.bytes
    chunk = 256 * 1024
    block = memoryview(os.urandom(1 << 20))
    with sock:
        sock.sendall(b"P")
        pong, extra = _recv_exact(sock, 1, extra)
        assert pong == b"p", pong
        window = CpuWindow(args.watch)
        window.start()
        cpu0 = time.process_time()
        started = time.perf_counter()
        if args.direction == "up":
            sock.sendall(b"U" + size.to_bytes(8, "big"))
            left = size
            while left:
                step = min(left, chunk)
                offset = (size - left) % len(block)
                step = min(step, len(block) - offset)
                sock.sendall(block[offset : offset + step])
                left -= step
            reply, _ = _recv_exact(sock, 9, extra)
            if reply[:1] != b"K" or int.from_bytes(reply[1:], "big") != size:
                raise ValueError(f"sink answered {reply!r}")
            received = size
        else:
            sock.sendall(b"D" + size.to_bytes(8, "big"))
            received = len(extra)
            buffer = bytearray(1 << 20)
            view = memoryview(buffer)
            while received < size:
                got = sock.recv_into(view, min(len(buffer), size - received))
                if not got:
                    raise ConnectionError("closed early")
                received += got
        seconds = time.perf_counter() - started
        cpu = window.stop(time.process_time() - cpu0)
    return {"bytes": received, "seconds": seconds, "mb_per_s": received / seconds / 1e6, **cpu}


def cmd_echo(args: argparse.Namespace) -> dict[str, Any]:
    """
    Send C{--bytes} pseudo-random bytes through the echo backend while reading them back;
    compare SHA-256 digests: what we sent, what the backend received, what came back.

    One thread drives both directions (asyncio streams). A blocking C{ssl.SSLSocket} must not
    be written by one thread while another reads it: OpenSSL's C{SSL} object is not
    thread-safe and CPython does not lock it, so that client itself corrupts or ends the TLS
    stream (it failed this check against stunnel as well as against the gateway).
    """
    ngp = parse_ngp(args.ngp)
    scram = ScramClient(ngp.user, ngp.password) if ngp else None
    size = args.bytes
    data = random.Random(args.seed).randbytes(size)
    sent_digest = hashlib.sha256(data).hexdigest()

    async def run() -> tuple[int, str, bytes, list[str]]:
        reader, writer = await asyncio.wait_for(
            connect_async(args.host, args.port, ngp, scram), IO_TIMEOUT
        )
        errors: list[str] = []

        async def send() -> None:
            try:
                writer.write(b"E" + size.to_bytes(8, "big"))
                view = memoryview(data)
                for offset in range(0, size, 65536):
                    writer.write(view[offset : offset + 65536])
                    await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
            except (OSError, TimeoutError) as e:
                errors.append(f"send: {type(e).__name__}: {e}")

        sender = asyncio.create_task(send())
        back = hashlib.sha256()
        received = 0
        backend_digest = b""
        try:
            while received < size:
                got = await asyncio.wait_for(
                    reader.read(min(1 << 20, size - received)), IO_TIMEOUT
                )
                if not got:
                    errors.append(f"receive: closed after {received} bytes")
                    break
                back.update(got)
                received += len(got)
            if received == size:
                backend_digest = await asyncio.wait_for(reader.readexactly(32), IO_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            errors.append(f"receive: {type(e).__name__}: {e}")
        finally:
            if errors:
                sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            writer.close()
        return received, back.hexdigest(), backend_digest, errors

    started = time.perf_counter()
    received, back_digest, backend_digest, errors = asyncio.run(run())
    seconds = time.perf_counter() - started
    up_ok = backend_digest.hex() == sent_digest
    down_ok = back_digest == sent_digest and received == size
    return {
        "bytes": size,
        "received": received,
        "seconds": seconds,
        "up_ok": up_ok,
        "down_ok": down_ok,
        "ok": up_ok and down_ok and not errors,
        "errors": errors,
    }


# -- ping-pong ---------------------------------------------------------------------------------


def _ping_worker(args: argparse.Namespace, barrier: Any, queue: Any) -> None:
    """
    One worker process: C{--conns} connections, each with one PING in flight.
    """
    ngp = parse_ngp(args.ngp)
    scram = ScramClient(ngp.user, ngp.password) if ngp else None
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(args.conns, 64)) as pool:
        opened = list(
            pool.map(lambda _: connect(args.host, args.port, ngp, scram), range(args.conns))
        )
    socks = [sock for sock, _ in opened]
    latencies: list[float] = []
    errors = 0
    barrier.wait(IO_TIMEOUT)
    cpu0 = time.process_time()
    deadline = time.perf_counter() + args.seconds
    limit = args.max_requests
    if len(socks) == 1:
        sock = socks[0]
        while time.perf_counter() < deadline and len(latencies) < limit:
            t0 = time.perf_counter()
            sock.sendall(PING)
            got = sock.recv(64)
            while len(got) < len(PONG):
                more = sock.recv(64)
                if not more:
                    raise ConnectionError("closed")
                got += more
            latencies.append(time.perf_counter() - t0)
    else:
        selector = selectors.DefaultSelector()
        pending: dict[socket.socket, list[Any]] = {}
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            pending[sock] = [time.perf_counter(), b""]
            sock.send(PING)
        in_flight = len(socks)
        while in_flight:
            now = time.perf_counter()
            if now > deadline + IO_TIMEOUT:
                errors += in_flight
                break
            for key, _ in selector.select(timeout=1.0):
                sock = key.fileobj  # type: ignore[assignment]
                state = pending[sock]
                try:
                    got = sock.recv(4096)
                except BlockingIOError:
                    continue
                if not got:
                    selector.unregister(sock)
                    in_flight -= 1
                    errors += 1
                    continue
                state[1] += got
                if len(state[1]) < len(PONG):
                    continue
                now = time.perf_counter()
                latencies.append(now - state[0])
                state[1] = b""
                if now < deadline and len(latencies) < limit:
                    state[0] = now
                    sock.send(PING)
                else:
                    selector.unregister(sock)
                    in_flight -= 1
    elapsed = min(time.perf_counter(), deadline) - (deadline - args.seconds)
    for sock in socks:
        sock.close()
    cpu = time.process_time() - cpu0
    queue.put({"latencies": latencies, "seconds": elapsed, "errors": errors, "cpu_s": cpu})


def _guarded(target: Any, args: argparse.Namespace, barrier: Any, queue: Any) -> None:
    """
    Run a worker; a failure is reported through the queue (the barrier is broken so the other
    workers do not wait for this one).
    """
    try:
        target(args, barrier, queue)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        barrier.abort()
        queue.put({"failed": f"{type(e).__name__}: {e}"[:300]})


def _run_workers(target: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    import multiprocessing

    context = multiprocessing.get_context("fork")
    import threading as _threading

    barrier = context.Barrier(args.procs + 1)
    queue = context.Queue()
    workers = [
        context.Process(target=_guarded, args=(target, args, barrier, queue), daemon=True)
        for _ in range(args.procs)
    ]
    for worker in workers:
        worker.start()
    window = CpuWindow(args.watch)
    try:
        barrier.wait(4 * IO_TIMEOUT)
    except _threading.BrokenBarrierError:
        pass
    window.start()
    results = []
    for _ in workers:
        results.append(queue.get(timeout=args.seconds + 4 * IO_TIMEOUT))
    for worker in workers:
        worker.join(IO_TIMEOUT)
    failed = [r["failed"] for r in results if "failed" in r]
    if failed:
        raise SystemExit("worker failed: " + "; ".join(failed))
    cpu = window.stop(sum(r["cpu_s"] for r in results))
    return [{**r, "window": cpu} for r in results]


def _summary(results: list[dict[str, Any]]) -> tuple[int, float, float, dict[str, Any]]:
    """
    Merge the workers' results: how many round trips, over how long, per second, and the
    latency percentiles and error count.
    """
    latencies = sorted(x for r in results for x in r["latencies"])
    seconds = max(r["seconds"] for r in results)
    figures = {
        "p50_ms": (_percentile(latencies, 0.5) or 0.0) * 1e3,
        "p99_ms": (_percentile(latencies, 0.99) or 0.0) * 1e3,
        "errors": sum(r["errors"] for r in results),
    }
    return len(latencies), seconds, len(latencies) / seconds if seconds > 0 else 0.0, figures


def cmd_ping(args: argparse.Namespace) -> dict[str, Any]:
    """
    PING ping-pong on C{--conns} connections in each of C{--procs} processes.
    """
    results = _run_workers(_ping_worker, args)
    count, seconds, per_second, figures = _summary(results)
    return {
        "requests": count,
        "seconds": seconds,
        "rps": per_second,
        **figures,
        "conns": args.conns * args.procs,
        **results[0]["window"],
    }


# -- connection rate ---------------------------------------------------------------------------


def _connrate_worker(args: argparse.Namespace, barrier: Any, queue: Any) -> None:
    ngp = parse_ngp(args.ngp)
    scram = ScramClient(ngp.user, ngp.password) if ngp else None
    if scram is not None:
        # Fill the salted-password cache before the clock runs.
        sock, _ = connect(args.host, args.port, ngp, scram)
        sock.close()
    barrier.wait(IO_TIMEOUT)
    cpu0 = time.process_time()

    async def main() -> dict[str, Any]:
        deadline = time.perf_counter() + args.seconds
        latencies: list[float] = []
        errors: list[str] = []

        async def one_client() -> None:
            while time.perf_counter() < deadline and len(latencies) < args.max_conns:
                t0 = time.perf_counter()
                try:
                    reader, writer = await asyncio.wait_for(
                        connect_async(args.host, args.port, ngp, scram), IO_TIMEOUT
                    )
                    writer.write(PING)
                    got = await asyncio.wait_for(reader.readexactly(len(PONG)), IO_TIMEOUT)
                    if got != PONG:
                        raise ValueError(f"got {got!r}")
                    latencies.append(time.perf_counter() - t0)
                    writer.close()
                    await writer.wait_closed()
                except Exception as e:  # noqa: BLE001 - counted and reported, never fatal
                    errors.append(type(e).__name__ + ": " + str(e)[:100])
                    if len(errors) > 1000:
                        return
                    await asyncio.sleep(0.01)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(args.conns)))
        return {
            "latencies": latencies,
            "seconds": time.perf_counter() - started,
            "errors": len(errors),
            "error_sample": errors[:3],
        }

    result = asyncio.run(main())
    result["cpu_s"] = time.process_time() - cpu0
    queue.put(result)


def cmd_connrate(args: argparse.Namespace) -> dict[str, Any]:
    """
    New connections per second: each connects (and authenticates, with C{--ngp}), sends one
    PING, reads the answer and closes; C{--conns} at a time in each of C{--procs} processes.
    """
    results = _run_workers(_connrate_worker, args)
    count, seconds, per_second, figures = _summary(results)
    return {
        "connections": count,
        "seconds": seconds,
        "rate": per_second,
        **figures,
        "error_sample": [e for r in results for e in r["error_sample"]][:3],
        "concurrency": args.conns * args.procs,
        **results[0]["window"],
    }


# -- idle connections --------------------------------------------------------------------------


def cmd_hold(args: argparse.Namespace) -> dict[str, Any]:
    """
    Open C{--count} connections (C{--concurrency} at a time), PING once on each, print a
    C{ready} line, then hold them until a line arrives on standard input (or C{--timeout}).
    """
    ngp = parse_ngp(args.ngp)
    scram = ScramClient(ngp.user, ngp.password) if ngp else None

    async def main() -> dict[str, Any]:
        gate = asyncio.Semaphore(args.concurrency)
        held: list[asyncio.StreamWriter] = []
        errors: list[str] = []

        async def one() -> None:
            async with gate:
                try:
                    reader, writer = await asyncio.wait_for(
                        connect_async(args.host, args.port, ngp, scram), IO_TIMEOUT
                    )
                    writer.write(PING)
                    got = await asyncio.wait_for(reader.readexactly(len(PONG)), IO_TIMEOUT)
                    if got != PONG:
                        raise ValueError(f"got {got!r}")
                    held.append(writer)
                except Exception as e:  # noqa: BLE001 - counted and reported, never fatal
                    errors.append(type(e).__name__ + ": " + str(e)[:100])

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(args.count)))
        opened = time.perf_counter() - started
        sys.stdout.write(
            json.dumps({"ready": len(held), "errors": len(errors), "seconds": opened}) + "\n"
        )
        sys.stdout.flush()
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), args.timeout)
        except TimeoutError:
            pass
        for writer in held:
            writer.close()
        return {"held": len(held), "errors": len(errors), "error_sample": errors[:3]}

    return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    """
    Run one subcommand and print its JSON result.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--ngp", help="SERVICE:USER:PASSWORD_FILE[:CAFILE]: speak NGP/1 first (over TLS)"
    )
    parser.add_argument(
        "--watch",
        action="append",
        default=[],
        help="KIND:PGID (relay, backend or any other label): report its CPU share during the "
        "timed window as KIND_cpu_pct",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("bulk")
    p.add_argument("--direction", choices=["up", "down"], default="up")
    p.add_argument("--bytes", type=int, default=256 << 20)
    p = sub.add_parser("echo")
    p.add_argument("--bytes", type=int, default=32 << 20)
    p.add_argument("--seed", type=int, default=1)
    for name in ("ping", "connrate"):
        p = sub.add_parser(name)
        p.add_argument("--conns", type=int, default=1, help="connections per process")
        p.add_argument("--procs", type=int, default=1)
        p.add_argument("--seconds", type=float, default=3.0)
        p.add_argument("--max-requests", type=int, default=2_000_000)
        p.add_argument("--max-conns", type=int, default=100_000)
    p = sub.add_parser("hold")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    handler = {
        "bulk": cmd_bulk,
        "echo": cmd_echo,
        "ping": cmd_ping,
        "connrate": cmd_connrate,
        "hold": cmd_hold,
    }[args.command]
    result = handler(args)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""
The bulk backend of the benchmark: a small threaded TCP server whose protocol makes every
transfer self-delimiting, so no path needs to pass half-closes for a measurement to end.

Commands (one byte, then an 8-byte big-endian length where there is one), any number per
connection:

  - C{P}: answer C{p} (the client uses it to make sure the path is open before it times);
  - C{U} + N: read exactly N bytes and discard them (the sink), then answer C{K} + N;
  - C{D} + N: send N bytes (the source);
  - C{E} + N: send every byte of the next N back as it arrives (echo), then send the
    SHA-256 of the N bytes received, so the client can check both directions.

    python bench/backend.py --port 0 [--port-file F]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import socketserver
import sys

#: Size of one receive or send.
CHUNK = 256 * 1024

#: The source's block (sent repeatedly for C{D}).
BLOCK = os.urandom(1 << 20)


def _read_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        got = sock.recv(count - len(data))
        if not got:
            raise ConnectionError("closed")
        data += got
    return data


class Handler(socketserver.BaseRequestHandler):
    """
    One client connection: run its commands until it closes.
    """

    request: socket.socket

    def handle(self) -> None:
        sock = self.request
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        try:
            while True:
                command = sock.recv(1)
                if not command:
                    return
                if command == b"P":
                    sock.sendall(b"p")
                    continue
                size = int.from_bytes(_read_exact(sock, 8), "big")
                if command == b"U":
                    left = size
                    while left:
                        got = sock.recv_into(view, min(left, CHUNK))
                        if not got:
                            return
                        left -= got
                    sock.sendall(b"K" + size.to_bytes(8, "big"))
                elif command == b"D":
                    block = memoryview(BLOCK)
                    left = size
                    while left:
                        step = min(left, len(block))
                        sock.sendall(block[:step])
                        left -= step
                elif command == b"E":
                    digest = hashlib.sha256()
                    left = size
                    while left:
                        got = sock.recv_into(view, min(left, CHUNK))
                        if not got:
                            return
                        digest.update(view[:got])
                        sock.sendall(view[:got])
                        left -= got
                    sock.sendall(digest.digest())
                else:
                    return
        except OSError:
            return


class Server(socketserver.ThreadingTCPServer):
    """
    The threaded server (one thread per connection).
    """

    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024


def main(argv: list[str] | None = None) -> int:
    """
    Serve until killed.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server = Server(("127.0.0.1", args.port), Handler)
    sys.stdout.write(f"listening on 127.0.0.1:{server.server_address[1]}\n")
    sys.stdout.flush()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

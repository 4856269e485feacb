"""
The compiled session-rate client (C{bench/ngp_connrate.c}): built on demand, run like
C{loadgen.py connrate}, its one JSON line parsed.

The program is compiled with C{gcc -std=c11 -O2 -Wall -Wextra -Werror ... -lcrypto} into a
cache directory outside the repository (C{$XDG_CACHE_HOME/netguard-bench}, by default
C{~/.cache/netguard-bench}), under a name carrying the SHA-256 of its source, so an edited
source is rebuilt and an unchanged one is not. It needs a C compiler and OpenSSL 3's headers
and C{libcrypto} (Debian: C{build-essential}, C{libssl-dev}).

    .venv/bin/python bench/cclient.py                 # build (if needed), print the path
    .venv/bin/python bench/cclient.py -- --port 4000 --ngp redis:alice:pw.txt --seconds 2
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from procs import run_generator  # noqa: E402

#: The client's source.
SOURCE = os.path.join(HERE, "ngp_connrate.c")

#: The compiler flags; the source must build without a warning.
CFLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-Werror")


class BuildError(Exception):
    """
    The client cannot be built here (the message names the package to install).
    """


def cache_dir() -> str:
    """
    @return: the directory the built client is kept in (outside the repository).
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "netguard-bench")


def _hint(stderr: str) -> str:
    """
    @return: which Debian package a failed build most likely lacks, from the compiler's
        message.
    """
    if "openssl/" in stderr or "-lcrypto" in stderr:
        return "OpenSSL 3's headers or libcrypto are missing: apt-get install libssl-dev"
    if "stdio.h" in stderr or "crt1.o" in stderr or "cannot find -lc" in stderr:
        return "the C library's headers are missing: apt-get install build-essential"
    return "see the compiler's message above"


def build(source: str = SOURCE, compiler: str = "gcc") -> str:
    """
    Build the client unless a build of this exact source is cached.

    @param source: the C source.
    @param compiler: the C compiler's command.
    @return: the path of the executable.
    @raise BuildError: no compiler, or the build failed (with the package to install).
    """
    with open(source, "rb") as f:
        digest = hashlib.sha256(f.read() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    directory = cache_dir()
    target = os.path.join(directory, f"ngp_connrate-{digest}")
    if os.access(target, os.X_OK):
        return target
    if shutil.which(compiler) is None:
        raise BuildError(
            f"no C compiler ({compiler}) to build {source}: "
            "apt-get install build-essential libssl-dev"
        )
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # Build beside the target, then rename: a concurrent run never sees half a file.
    fd, partial = tempfile.mkstemp(prefix=".ngp_connrate-", dir=directory)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *CFLAGS, source, "-o", partial, "-lcrypto"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode:
            raise BuildError(
                f"building {source} failed:\n{done.stderr.strip()[-2000:]}\n{_hint(done.stderr)}"
            )
        os.chmod(partial, 0o755)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    for name in os.listdir(directory):  # builds of older sources
        if name.startswith("ngp_connrate-") and name != os.path.basename(target):
            os.unlink(os.path.join(directory, name))
    return target


def connrate_argv(
    port: int,
    ngp: str | None,
    conns: int = 16,
    seconds: float = 3.0,
    host: str = "127.0.0.1",
    echo: bool = False,
) -> list[str]:
    """
    @param ngp: C{SERVICE:USER:PASSWORD_FILE} (as C{loadgen.py --ngp}), or L{None} or an
        empty string for plain sessions (connect, PING, PONG, close).
    @param echo: the service echoes the PING back (the built-in C{echo}) instead of redis's
        C{+PONG}.
    @return: the command line of one run of the client (built if needed).
    """
    argv = [build(), "--host", host, "--port", str(port)]
    argv += ["--ngp", ngp] if ngp else ["--plain"]
    argv += ["--echo"] if echo else []
    return [*argv, "--conns", str(conns), "--seconds", str(seconds)]


def run_connrate(
    port: int,
    ngp: str | None,
    conns: int = 16,
    seconds: float = 3.0,
    *,
    host: str = "127.0.0.1",
    cpu: int | None = None,
    log: str | None = None,
    echo: bool = False,
) -> dict[str, Any]:
    """
    Run the client once (pinned to C{cpu}) and return its JSON result: the keys of
    C{loadgen.py connrate} (C{connections}, C{seconds}, C{rate}, C{p50_ms}, C{p99_ms},
    C{errors}, C{error_sample}, C{concurrency}, C{window_s}, C{gen_cpu_pct}) and
    C{error_kinds}, C{warmup}, C{cpu_s} (its CPU over the timed window) and C{process_cpu_s}
    (its whole process, warm-up and PBKDF2 included, from C{wait4}).

    @param log: where its standard error goes.
    @raise RuntimeError: it failed or did not end within its bound.
    """
    argv = connrate_argv(port, ngp, conns, seconds, host, echo)
    done = run_generator(argv, cpu, seconds + 60.0, log)
    if done.returncode or done.timed_out or not done.stdout.strip():
        raise RuntimeError(
            f"ngp_connrate failed (exit {done.returncode}, timed out {done.timed_out}): "
            f"{done.stdout[-500:]!r}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_cpu_s"] = done.cpu
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """
    Build the client and print its path; with arguments after C{--}, run it with them.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        path = build()
    except BuildError as e:
        sys.stderr.write(f"cclient: {e}\n")
        return 1
    if not args:
        sys.stdout.write(path + "\n")
        return 0
    return subprocess.call([path, *(a for a in args if a != "--")])


if __name__ == "__main__":
    raise SystemExit(main())

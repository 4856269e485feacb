# -*- test-case-name: tests.test_workers -*-
"""
The AMP commands between the supervisor and its workers, over the pipe pair each worker is
started with (the worker reads its standard input and writes its descriptor 3).

Supervisor to worker: L{Replay}, L{Serve}, L{Status}, L{MetricsFigures}, L{Reload}, L{Drain},
L{Heartbeat}, L{Penalties}, L{ClearPenalties}, L{ApplyBlock}, L{ApplySpent}. Worker to
supervisor: L{Ready}, L{Blocked}, L{BlockLearnt}, L{TicketSpent}.

A worker starts in two steps: built, it sends L{Ready} without listening yet; the supervisor
sends it the blocks in force and the spent tickets in batches (L{Replay}, each sent once
the one before is answered), then L{Serve}: the worker has applied them all before it
accepts its first connection.
"""

from __future__ import annotations

import json
from typing import Any, Final

from twisted.protocols import amp

#: The most AMP values one JSON argument may span (64 KiB each): 4 MiB.
MAX_CHUNKS: Final = 64


class JSONArgument(amp.Argument):
    """
    A JSON-serialisable value of any size up to L{MAX_CHUNKS} AMP values: the count under
    the argument's name, the chunks under C{<name>.0}, C{<name>.1}, ...
    """

    def toBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        value = self.retrieve(objects, name.decode("ascii"), proto)
        if value is None and self.optional:
            return
        data = json.dumps(value, separators=(",", ":"), default=str).encode("utf-8")
        size = amp.MAX_VALUE_LENGTH
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        if len(chunks) > MAX_CHUNKS:
            raise ValueError(f"a JSON argument of {len(data)} bytes is too large")
        strings[name] = str(len(chunks)).encode("ascii")
        for index, chunk in enumerate(chunks):
            strings[name + b"." + str(index).encode("ascii")] = chunk

    def fromBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        if name not in strings and self.optional:
            objects[name.decode("ascii")] = None
            return
        count_text = strings.pop(name)
        if not count_text.isdigit() or not 1 <= int(count_text) <= MAX_CHUNKS:
            raise ValueError("bad chunk count in a JSON argument")
        parts = [strings.pop(name + b"." + str(i).encode("ascii")) for i in range(int(count_text))]
        objects[name.decode("ascii")] = json.loads(b"".join(parts))


class Ready(amp.Command):
    """
    Worker to supervisor: the worker is built and waits for L{Serve}; it accepts no
    connection before.
    """

    arguments = [(b"index", amp.Integer()), (b"pid", amp.Integer())]
    response = []  # type: ignore[var-annotated]


class ServeRefusedError(Exception):
    """
    The worker could not start serving (a listener it could not adopt); it exits.
    """


class Serve(amp.Command):
    """
    Supervisor to worker: adopt every inherited listener and start accepting. Sent after
    the state in force (the last L{Replay} answered); answered once the worker serves.
    """

    arguments = []  # type: ignore[var-annotated]
    response = []  # type: ignore[var-annotated]
    errors = {ServeRefusedError: b"SERVE_REFUSED"}


#: A source's block: the source, its length, the penalty points behind it.
_BLOCK = [(b"source", amp.Unicode()), (b"seconds", amp.Float()), (b"points", amp.Float())]
#: A spent ticket: its id, when it would have expired, its user.
_SPENT = [(b"ticket_id", amp.String()), (b"expires", amp.Float()), (b"user", amp.Unicode())]


class Blocked(amp.Command):
    """
    Worker to supervisor: a source's offences blocked it here; tell the other workers.
    """

    arguments = _BLOCK
    requiresAnswer = False


class BlockLearnt(amp.Command):
    """
    Worker to supervisor: a block learnt from Redis was applied here; keep it for a worker
    that starts later (every worker hears Redis itself: not relayed).
    """

    arguments = _BLOCK
    requiresAnswer = False


class ApplyBlock(amp.Command):
    """
    Supervisor to worker: block a source another worker blocked.
    """

    arguments = _BLOCK
    requiresAnswer = False


class Replay(amp.Command):
    """
    Supervisor to worker, before L{Serve}: one batch of the blocks in force and of the
    spent tickets (each list within one AMP value); answered once applied, so the
    supervisor sends the next batch only then and counts each answer as the worker's
    progress.
    """

    arguments = [(b"blocks", amp.AmpList(_BLOCK)), (b"spent", amp.AmpList(_SPENT))]
    response = []  # type: ignore[var-annotated]


class TicketSpent(amp.Command):
    """
    Worker to supervisor: a returning-client ticket was spent here; tell the other workers.
    """

    arguments = _SPENT
    requiresAnswer = False


class ApplySpent(amp.Command):
    """
    Supervisor to worker: record a ticket another worker spent.
    """

    arguments = _SPENT
    requiresAnswer = False


class Status(amp.Command):
    """
    The worker's figures (as the control socket's C{status} shows one gateway's).
    """

    arguments = []  # type: ignore[var-annotated]
    response = [(b"figures", JSONArgument())]


class MetricsFigures(amp.Command):
    """
    The worker's figures for the metrics endpoint (with per-service figures and the
    session set-up histogram as a table).
    """

    arguments = []  # type: ignore[var-annotated]
    response = [(b"figures", JSONArgument())]


class ReloadRefusedError(Exception):
    """
    The worker refused the reload; its old configuration stays.
    """


class Reload(amp.Command):
    """
    Reload the configuration, users, ticket key and certificates.
    """

    arguments = []  # type: ignore[var-annotated]
    response = [(b"summary", amp.Unicode())]
    errors = {ReloadRefusedError: b"RELOAD_REFUSED"}


class Drain(amp.Command):
    """
    Stop accepting, drain within the grace period, and exit; with C{force}, close what is
    left at once (a second stop signal).
    """

    arguments = [(b"force", amp.Boolean())]
    response = []  # type: ignore[var-annotated]


class Heartbeat(amp.Command):
    """
    Switch the worker's heartbeat.
    """

    arguments = [(b"on", amp.Boolean())]
    response = [(b"on", amp.Boolean())]


class Penalties(amp.Command):
    """
    The worker's penalty listing: its first C{top} sources (of those overlapping C{source},
    if given), how many it has and whether some are left out, as
    L{netguard.ops.control.select_penalties} answers. With C{keys} (a list of source keys),
    the figures of exactly those of them the worker holds instead (C{total} their number,
    never C{truncated}): the supervisor's second round (L{Supervisor.penalties
    <netguard.workers.supervisor.Supervisor.penalties>}).
    """

    arguments = [
        (b"top", amp.Integer()),
        (b"source", amp.Unicode(optional=True)),
        (b"keys", JSONArgument(optional=True)),
    ]
    response = [
        (b"penalties", JSONArgument()),
        (b"total", amp.Integer()),
        (b"truncated", amp.Boolean()),
    ]


class ClearPenalties(amp.Command):
    """
    Forget penalties in the worker: one source's, or all (no source).
    """

    arguments = [(b"source", amp.Unicode(optional=True))]
    response = [(b"cleared", amp.Integer())]

# -*- test-case-name: tests.test_heartbeat -*-
"""
The heartbeat: a periodic log event with the process's cumulative figures, switched on and
off at run time without a restart (L{Heartbeat}; SIGUSR1 through L{install_sigusr1}). What
an operator sees: C{docs/operating.md} section 7.1.
"""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from netguard.log import escape

#: Who may switch the heartbeat, as logged in the C{by} field.
SWITCHERS = frozenset({"signal", "control", "config"})

#: How deep nested figures are flattened; deeper values are rendered as text.
_MAX_DEPTH = 4

#: The most figures one beat carries (the source is ours, but every loop is bounded).
MAX_FIELDS = 200

_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")

#: Event keys that Twisted's logger or its observers own; a figure never overwrites them.
_RESERVED = frozenset({"event", "format", "message", "system", "isError", "failure", "why"})


def _field_name(parts: tuple[str, ...]) -> str:
    """
    A safe event key for a figure: identifier characters only, never a reserved key.
    """
    name = "_".join(_NOT_IDENTIFIER.sub("_", part) for part in parts) or "_"
    if name in _RESERVED or name.startswith("log_") or name[0].isdigit():
        name = "stat_" + name
    return name


def _field_value(value: Any) -> int | float | bool | str | None:
    """
    A figure as a JSON-safe scalar: numbers and booleans as they are, text escaped.
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return escape(str(value))


def flatten_figures(figures: Mapping[str, Any]) -> dict[str, int | float | bool | str | None]:
    """
    Flatten nested figures into event fields: C{{"refusals": {"BUSY": 2}}} becomes
    C{{"refusals_BUSY": 2}}. Keys are reduced to identifier characters (so they are safe in a
    format string and in JSON), reserved logger keys are prefixed with C{stat_}, text values
    are escaped, and at most L{MAX_FIELDS} fields are kept (in key order).

    @param figures: the figures, possibly nested mappings.
    @return: a flat mapping of event fields.
    """
    flat: dict[str, int | float | bool | str | None] = {}
    stack: list[tuple[tuple[str, ...], Any]] = [((), figures)]
    while stack and len(flat) < MAX_FIELDS:
        prefix, value = stack.pop()
        if isinstance(value, Mapping) and len(prefix) < _MAX_DEPTH:
            items = sorted(value.items(), key=lambda item: str(item[0]), reverse=True)
            stack.extend((prefix + (str(key),), inner) for key, inner in items)
        else:
            flat[_field_name(prefix)] = _field_value(value)
    return flat


class Heartbeat(Service):
    """
    A periodic C{heartbeat} log event, switchable at run time.

    Its beats run only while the service runs I{and} it is enabled. Each beat is exactly one
    event, C{event="heartbeat"}, whose fields are the figures the C{stats_source} callable
    returns, flattened (a nested C{{"refusals": {"BUSY": 2}}} becomes the field
    C{refusals_BUSY=2}), plus C{uptime} (seconds since the heartbeat was created) when the
    source does not give one. Every switch logs C{heartbeat.on} or C{heartbeat.off} with who
    switched (C{by}: C{"signal"}, C{"control"} or C{"config"}).

    @ivar interval: seconds between two beats.
    @ivar beats: how many beats were logged so far.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        stats_source: Callable[[], Mapping[str, Any]],
        interval: float = 60.0,
        enabled: bool = False,
    ) -> None:
        """
        @param clock: the L{IReactorTime} the beats are scheduled on.
        @param stats_source: returns the cumulative figures for each beat.
        @param interval: seconds between two beats (positive).
        @param enabled: whether it beats from the start (the configuration's choice).
        @raise ValueError: if C{interval} is not a positive finite number.
        """
        if not (isinstance(interval, int | float) and math.isfinite(interval) and interval > 0):
            raise ValueError(f"heartbeat interval must be a positive number, not {interval!r}")
        self.clock = clock
        self.stats_source = stats_source
        self.interval = float(interval)
        self.beats = 0
        self._enabled = bool(enabled)
        self._created = clock.seconds()
        self._loop: LoopingCall | None = None

    @property
    def enabled(self) -> bool:
        """
        Whether the heartbeat is switched on (it beats while the service runs).
        """
        return self._enabled

    def set_enabled(self, on: bool, by: str = "config") -> bool:
        """
        Switch the heartbeat on or off, logging C{heartbeat.on}/C{heartbeat.off} when the
        state changes (switching to the current state logs nothing).

        @param on: the wanted state.
        @param by: who switched: C{"signal"}, C{"control"} or C{"config"}.
        @return: the new state.
        @raise ValueError: if C{by} is not one of L{SWITCHERS}.
        """
        if by not in SWITCHERS:
            raise ValueError(f"unknown heartbeat switcher {by!r}")
        on = bool(on)
        if on == self._enabled:
            return on
        self._enabled = on
        self.log.info(
            "heartbeat switched {state} by {by} (every {interval}s)",
            event="heartbeat.on" if on else "heartbeat.off",
            state="on" if on else "off",
            by=by,
            interval=self.interval,
        )
        self._sync()
        return on

    def enable(self, by: str = "config") -> bool:
        """
        Switch the heartbeat on. See L{set_enabled}.

        @return: C{True}.
        """
        return self.set_enabled(True, by)

    def disable(self, by: str = "config") -> bool:
        """
        Switch the heartbeat off. See L{set_enabled}.

        @return: C{False}.
        """
        return self.set_enabled(False, by)

    def toggle(self, by: str = "signal") -> bool:
        """
        Switch the heartbeat to the other state. See L{set_enabled}.

        @return: the new state.
        """
        return self.set_enabled(not self._enabled, by)

    def beat(self) -> None:
        """
        Log one C{heartbeat} event with the current figures.
        """
        figures = flatten_figures(self.stats_source())
        figures.setdefault("uptime", round(self.clock.seconds() - self._created, 3))
        self.beats += 1
        listed = " ".join(f"{name}={{{name}}}" for name in sorted(figures))
        self.log.info("heartbeat " + listed, event="heartbeat", **figures)

    def startService(self) -> None:
        """
        Start beating if enabled (the first beat comes at once).
        """
        super().startService()
        self._sync()

    def stopService(self) -> Any:
        """
        Stop beating; the enabled state is kept.
        """
        super().stopService()
        self._sync()
        return None

    def _sync(self) -> None:
        """
        Start or stop the loop so that it runs exactly when running and enabled.
        """
        want = bool(self.running) and self._enabled
        if want and self._loop is None:
            self._loop = LoopingCall(self.beat)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=True).addErrback(self._loop_failed)
        elif not want and self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()

    def _loop_failed(self, failure: Any) -> None:
        """
        A beat raised: log it and leave the heartbeat off rather than crash the daemon.
        """
        self._loop = None
        self._enabled = False
        self.log.failure(
            "heartbeat failed; switched off", failure, event="heartbeat.error", by="error"
        )


def install_sigusr1(reactor: Any, heartbeat: Heartbeat) -> Callable[[], None]:
    """
    Make SIGUSR1 toggle C{heartbeat} (logged with C{by="signal"}).

    The handler does nothing but C{reactor.callFromThread}; the toggle runs in the reactor.
    If SIGUSR1 already had a Python handler (C{twistd} installs one that rotates its own log
    file when it logs to a file), it is replaced, and a C{heartbeat.sigusr1_replaced} warning
    is logged; the returned function puts it back.

    Must be called from the main thread (a rule of L{signal.signal}).

    @param reactor: the running reactor.
    @param heartbeat: the heartbeat to toggle.
    @return: a function that restores the previous SIGUSR1 handler (idempotent).
    """

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(heartbeat.toggle, "signal")

    previous = signal.signal(signal.SIGUSR1, handler)
    if callable(previous):
        Heartbeat.log.warn(
            "SIGUSR1 now toggles the heartbeat; its previous handler {handler} is replaced",
            event="heartbeat.sigusr1_replaced",
            handler=escape(getattr(previous, "__qualname__", repr(previous))),
        )
    restored: list[bool] = []

    def uninstall() -> None:
        if restored:
            return
        restored.append(True)
        if signal.getsignal(signal.SIGUSR1) is handler:
            signal.signal(signal.SIGUSR1, previous if previous is not None else signal.SIG_DFL)

    return uninstall

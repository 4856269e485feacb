# -*- test-case-name: tests.test_events -*-
"""
The catalogue of netguard's log events: every stable C{event} name the code emits, with a
one-line description. It is what C{netguard events} prints, what C{tests/test_events.py}
checks against the code and C{docs/logging.md} section 6, and, with the optional C{txaio}
extra, the table of txaio log categories for code of your own that logs netguard-style
events (L{event_logger}). docs/logging.md section 7 says more.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol, cast

from twisted.logger import ILogObserver, Logger, LogLevel

#: Every event netguard emits: stable name -> one-line description (a plain sentence, no
#: C{{field}}: it is also the message txaio gives an event logged with that
#: C{log_category}). The levels and fields of each are in C{docs/logging.md} section 6.
EVENTS: Mapping[str, str] = MappingProxyType(
    {
        # Start, stop and the daemon
        "lock.acquired": "the instance lock of the state directory was taken",
        "lock.remove_failed": "the instance lock file could not be removed at shutdown",
        "socket.stale_removed": "a unix socket nobody listened on was removed before listening",
        "users.created": "the users file was created with a generated user",
        "log.file_open": "the log file was opened",
        "log.file_permissions": "the log file is open to its group or others",
        "log.write_failed": "records could not be written to the log file and were dropped "
        "(at most one report a minute)",
        "log.write_restored": "the log file is written again after records were dropped",
        "log.unformattable": "an observer could not render an event and wrote this instead",
        "gateway.listen": "a listener was opened",
        "gateway.hand_over": "what netguard created in the state directory was given to the "
        "twistd --uid user before dropping root",
        "gateway.hand_over_refused": "the state directory is not netguard's own (mode 0700), "
        "so nothing was handed to the twistd --uid user",
        "config.warning": "the configuration works but has something to look at",
        "gateway.start": "start-up finished",
        "gateway.start_failed": "the start failed while listening or handing the state "
        "directory over (after a daemonizing twistd forked); the process exits 1",
        "control.listen": "the control socket was opened",
        "metrics.listen": "the metrics endpoint was opened",
        "shutdown.drain": "stopped accepting; draining the open connections",
        "shutdown.force": "the connections still open were cut",
        "shutdown.done": "shutdown finished; final figures",
        "reload.done": "a new configuration was applied",
        "reload.refused": "a new configuration was refused; the old one stays in force",
        "worker.started": "a worker process adopted every listener and serves",
        "worker.exited": "a worker process exited unexpectedly; it is restarted after a delay",
        "worker.stopped": "a worker process exited during the supervisor's stop",
        "worker.killed": "a worker that had not exited after the drain's grace period was killed",
        "worker.spawn_failed": "a worker process could not be started; it is tried again later",
        "worker.penalty_shared": "a block decided by one worker was passed to the other workers",
        "worker.block_refused": "a block a worker reported was not a finite length; not passed on",
        "worker.reloaded": "every worker was asked to reload; the summary of their answers",
        "worker.reload_incomplete": "a reload that a worker did not answer in time or refused",
        "worker.share_failed": "a block or spent ticket could not be passed to the supervisor",
        "worker.start_timeout": "a starting worker was silent 60 s; it was killed",
        "worker.serve_failed": "a worker could not start serving (a listener it could not adopt)",
        "shared.connected": "state is shared through Redis (first connection)",
        "shared.degraded": "Redis left a reply missing past its grace (1 s), or the "
        "connection or the subscription dropped: local limits only until it is back",
        "shared.restored": "Redis answers again and has held for 10 s: the outage is over",
        "notify.failed": "the service manager could not be notified",
        "notify.unsupported": "NOTIFY_SOCKET names a kind of socket netguard does not speak",
        # Connections and the line phase
        "conn.accept": "a connection was admitted",
        "conn.reject": "a connection was refused: by admission before reading anything, or "
        "by a haproxy: listener (a sender not listed, a missing or bad PROXY header)",
        "conn.reject.summary": "how many more refusals of one source and reason an interval "
        "counted without logging them one by one",
        "admission.block": "a source is blocked by the penalty rules",
        "proto.early_talker": "the client spoke before the greeting",
        "proto.refuse": "an ERR line was sent to the client",
        "proto.errors": "how many error replies a connection got, logged once",
        "proto.internal": "an internal error while handling a client command; session ended",
        "conn.timeout": "a connection reached a time bound",
        "conn.close": "a connection ended",
        # Authentication and services
        "auth.ok": "authentication succeeded",
        "auth.fail": "authentication failed",
        "ticket.issued": "a returning-client ticket was issued after a login",
        "ticket.accepted": "a valid ticket was presented; whether its connection entered the lane",
        "ticket.refused": "a presented ticket was refused (ERR BAD_TICKET)",
        "ticket.other_block": "a valid ticket came from another address block: no lane",
        "ticket.user_mismatch": "a lane connection logged in as another user than its ticket's",
        "ticket.key_error": "the retired ticket keys (ticket.key.old) could not be read or saved",
        "session.denied": "the user may not open that service",
        "session.open": "relaying to a service started",
        "session.backend_failed": "the backend of a service could not be reached",
        "socks5.connected": "a SOCKS5 tunnel to a backend is up",
        "socks5.failed": "a SOCKS5 negotiation failed",
        "relay.unreported_close": "a relay side's socket closed without the relay being told",
        "relay.splice_error": "the kernel relay could no longer splice; the relay ended",
        # Multiplexed sessions
        "mux.start": "a connection was upgraded to a multiplexed session (MUX)",
        "mux.end": "a multiplexed session ended",
        "mux.stream.error": "a stream's protocol raised; that stream was reset",
        "mux.session.error": "a multiplexed session's owner raised when told the session ended",
        "mux.refusals_exceeded": "a multiplexed session earned too many refused streams",
        "stream.open": "a stream of a multiplexed session started relaying to a service",
        "stream.refused": "a stream of a multiplexed session was answered ERR and closed",
        "stream.close": "a relaying stream of a multiplexed session ended",
        # Peer checks
        "peer.fcrdns": "the forward-confirmed reverse DNS result of a client",
        "peer.ident": "the ident (RFC 1413) claim of a client, untrusted",
        "peer.refused": "the peer-check policy refused a client",
        "peer.check.error": "a peer check raised unexpectedly",
        "peer.fcrdns.error": "the FCrDNS check raised unexpectedly",
        # TLS
        "tls.loaded": "a TLS certificate was loaded at start",
        "tls.reloaded": "a TLS certificate was reloaded",
        "tls.established": "the TLS handshake of a connection finished",
        "tls.handshake_failed": "a connection on a TLS listener ended before its handshake did",
        "tls.reload_failed": "a TLS reload was refused; the old certificate stays",
        "tls.ticket_keys_rotated": "a listener's TLS session ticket keys were replaced",
        "tls.warning": "a weak or surprising TLS setting",
        "tls.verify_error": "verifying a server certificate raised unexpectedly",
        "tls.bio_refresh_failed": "an idle TLS connection kept its memory BIOs (no memory)",
        # Overload
        "overload.on": "overloaded: new connections are refused until it passes",
        "overload.off": "no longer overloaded",
        "overload.probe_error": "one overload measurement failed",
        "overload.monitor_error": "the overload monitor stopped on an unexpected error",
        # Heartbeat
        "heartbeat": "the periodic figures of the process",
        "heartbeat.on": "the heartbeat was switched on",
        "heartbeat.off": "the heartbeat was switched off",
        "heartbeat.error": "reading the figures raised; the heartbeat switched itself off",
        "heartbeat.sigusr1_replaced": "SIGUSR1 had a handler that now toggles the heartbeat",
        # Metrics
        "metrics.error": "rendering the metrics raised unexpectedly",
        # Control socket
        "control.command": "a control command was run",
        "control.bad_line": "the control socket received a line that is not printable words",
        "control.denied": "a process of another user connected to the control socket",
        "control.error": "a control command raised unexpectedly",
        # Client side (netguard tunnel)
        "tunnel.failed": "a tunnelled connection could not be opened",
        "tunnel.retry": "the gateway was busy for a tunnelled connection; it is retried",
        "tunnel.close": "a tunnelled connection ended",
        "tunnel.mux.up": "a multiplexed session to the gateway was established",
        "tunnel.mux.down": "a multiplexed session to the gateway ended; its streams ended",
        "tunnel.mux.login_failed": "the login for a multiplexed session failed",
        "tunnel.mux.fallback": "the gateway does not multiplex; one connection per connect",
        "tunnel.mux.openrate_ignored": "OK MUX had a malformed OPENRATE; the client's own is used",
        "tunnel.ticket.ignored": "the answer to TICKET was an error or malformed (no ticket "
        "kept), or our RESUME reached the gateway after its greeting (no lane)",
        "tunnel.ticket.refused": "the gateway refused our ticket; connecting again without one",
    }
)


class EventLogger(Protocol):
    """
    What L{event_logger} returns (a C{txaio} logger): the level methods take an optional
    message and the event's fields as keywords, C{log_category} among them.
    """

    def critical(self, format: str | None = None, **fields: Any) -> None:
        """
        Log at level critical.
        """

    def error(self, format: str | None = None, **fields: Any) -> None:
        """
        Log at level error.
        """

    def warn(self, format: str | None = None, **fields: Any) -> None:
        """
        Log at level warn.
        """

    def info(self, format: str | None = None, **fields: Any) -> None:
        """
        Log at level info.
        """

    def debug(self, format: str | None = None, **fields: Any) -> None:
        """
        Log at level debug.
        """

    def failure(self, format: str | None = None, **fields: Any) -> None:
        """
        Log the current exception (or C{failure=}) at level critical, with its traceback.
        """


def describe_events() -> str:
    """
    The catalogue as text for operators (C{netguard events}): one line per event, the name
    padded to a column, then its description, in the catalogue's order (by area).
    """
    width = max(len(name) for name in EVENTS)
    return "".join(f"{name:<{width}}  {text}\n" for name, text in EVENTS.items())


def _txaio() -> Any:
    """
    The C{txaio} module, which only the txaio bridge below needs (an optional extra).

    @raise ImportError: naming the extra to install, when txaio is missing.
    """
    try:
        import txaio
    except ImportError as e:
        raise ImportError(
            "netguard's txaio bridge needs txaio: pip install 'netguard[txaio]'"
        ) from e
    return txaio


def register_with_txaio() -> None:
    """
    Make L{EVENTS} txaio's log categories: afterwards a txaio logger call with
    C{log_category="conn.reject"} takes the description of C{conn.reject} as its message.

    This selects Twisted as txaio's framework (C{txaio.use_twisted()}) and adds the
    catalogue to txaio's process-wide table of categories; other categories already there
    stay. Calling it again adds the same content again: it is idempotent. Nothing calls it
    at import time.

    @raise RuntimeError: if this process already chose asyncio for txaio.
    @raise ImportError: if txaio is not installed (C{pip install 'netguard[txaio]'}).
    """
    txaio = _txaio()
    txaio.use_twisted()
    txaio.add_log_categories(dict(EVENTS))


class _EventFieldLogger(Logger):
    """
    A C{twisted.logger} logger that fills the C{event} field from C{log_category} when the
    caller did not give one, so netguard's observers show the name without it being written
    twice.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        """
        Emit the event, with C{event} defaulting to C{log_category}.

        @param level: the event's level.
        @param format: its message.
        @param kwargs: its fields.
        """
        category = kwargs.get("log_category")
        if isinstance(category, str):
            kwargs.setdefault("event", category)
        super().emit(level, format, **kwargs)


def event_logger(namespace: str, observer: ILogObserver | None = None) -> EventLogger:
    """
    A txaio logger for netguard-style events from code of your own::

        log = event_logger(__name__)
        log.info(log_category="conn.reject", peer=peer, reason="rate")

    A call with a C{log_category} of L{EVENTS} gets that name's description as its message
    (txaio's lookup; an unknown category keeps the call's own message) and, unless it gives
    one, an C{event} field equal to the category, so netguard's text and JSON observers
    show it like netguard's own events. Fields stay fields: the JSON record has them all;
    the text line shows the description. Text a peer chose must still go through
    L{netguard.log.escape} first. C{failure()} keeps its own message (txaio looks categories
    up only for the level methods).

    Calls L{register_with_txaio} (idempotent). The logger is made at level debug and keeps
    it (txaio's own default, info, would drop debug events at the source; netguard's logs
    have no level filter).

    @param namespace: the emitting module or class, e.g. C{__name__} (txaio's
        C{make_logger} would guess it from the caller's frame).
    @param observer: where events go; L{None} for C{twisted.logger}'s global publisher.
    @return: a txaio logger.
    @raise RuntimeError: if this process already chose asyncio for txaio.
    """
    register_with_txaio()
    txaio = _txaio()
    fixed_namespace = namespace

    def make(observer: ILogObserver | None = None, namespace: object = None) -> Logger:
        # txaio passes the namespace it guessed from the caller's frame; ours wins.
        return _EventFieldLogger(namespace=fixed_namespace, observer=observer)

    made = txaio.make_logger(level="debug", logger=make, observer=observer)
    return cast(EventLogger, made)

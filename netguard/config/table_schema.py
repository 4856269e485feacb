# -*- test-case-name: tests.test_config -*-
"""
The keys of the typed tables C{[peer_checks]}, C{[overload]}, C{[mux]}, C{[tickets]} and
C{[ops]}: each key's check, the allowed values in words and what it defends against (for
C{describe_defaults}). The ranges, L{TableKey} and the checks of single values are in
L{netguard.config.schema}; C{docs/operating.md} (section 3.2) describes the keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from netguard.config.schema import (
    Range,
    Source,
    TableKey,
    _number,
    optional_path,
    parse_bool,
    parse_choice,
)
from netguard.endpoints import Listener, check_listener
from netguard.peer.checks import DNS_PORT, split_host_port
from netguard.quoting import describe_value


def _string_list(what: str, item: Callable[[str], object]) -> Callable[..., Any]:
    def check(src: Source, key: str, value: object) -> Any:
        allowed = f"a list of {what}"
        if not isinstance(value, list) or len(value) > 256:
            raise src.error(key, f"must be {allowed} (at most 256), got {describe_value(value)}")
        for index, element in enumerate(value):
            problem = f"must be {allowed}; item {index} is {describe_value(element)}"
            if not isinstance(element, str) or not element or len(element) > 253:
                raise src.error(key, problem)
            try:
                item(element)
            except ValueError:
                raise src.error(key, problem) from None
        return tuple(value)

    return check


def _name_pattern(text: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9*?.\[\]!-]+", text):
        raise ValueError(text)


PEER_CHECK_KEYS: Final[tuple[TableKey, ...]] = (
    TableKey(
        "fcrdns",
        parse_choice("off", "log", "require"),
        '"off", "log" or "require"',
        "spoofed reverse DNS: a PTR name counts only once its forward lookup gives the "
        "client's address back (docs/security.md row 4)",
    ),
    TableKey(
        "fcrdns_deny",
        _string_list("host name patterns (fnmatch)", _name_pattern),
        'a list of patterns over the confirmed name, e.g. "*.dialup.example"',
        "known-bad networks by name; only narrows who may try to authenticate",
    ),
    TableKey(
        "fcrdns_allow",
        _string_list("host name patterns (fnmatch)", _name_pattern),
        "a list of patterns; when set only peers with a matching confirmed name may try",
        "access from anywhere but the expected hosts; only narrows, never grants",
    ),
    TableKey(
        "ident",
        parse_choice("off", "log"),
        '"off" or "log"',
        "nothing by itself: an RFC 1413 claim is logged as untrusted (docs/security.md "
        "row 10); off by default because it is the one connection made back toward a client",
    ),
    TableKey(
        "fcrdns_timeout",
        _number(Range(float, 0.1, 60, "seconds")),
        "a number of seconds from 0.1 to 60",
        "a DNS server that never answers holding a session (every lookup is bounded)",
    ),
    TableKey(
        "fcrdns_max_names",
        _number(Range(int, 1, 16)),
        "an integer from 1 to 16",
        "a PTR answer listing many names, each costing a forward lookup",
    ),
    TableKey(
        "ident_max_reply",
        _number(Range(int, 64, 4096, "bytes")),
        "an integer from 64 to 4096 (bytes)",
        "an identd that streams endless bytes (chargen): the reply line is cut here",
    ),
    TableKey(
        "ident_port",
        _number(Range(int, 1, 65535)),
        "a port from 1 to 65535 (RFC 1413: 113)",
        "nothing: for test set-ups whose identd does not listen on 113",
    ),
    TableKey(
        "ident_timeout",
        _number(Range(float, 0.1, 60, "seconds")),
        "a number of seconds from 0.1 to 60",
        "an identd that stays silent or drips (the reply is also bounded in bytes)",
    ),
    TableKey(
        "dns_servers",
        _string_list(
            'resolvers "IP", "IP:PORT" or "[IPv6]:PORT"', lambda t: split_host_port(t, DNS_PORT)
        ),
        "a list of resolvers; empty uses /etc/resolv.conf",
        "lookups sent to a resolver the operator did not choose",
    ),
)


def _optional_number(range_: Range) -> Callable[[Source, str, object], Any]:
    def check(src: Source, key: str, value: object) -> Any:
        if value is False or value == "off":
            return None
        return src.check(key, range_.check, value)

    return check


OVERLOAD_KEYS: Final[tuple[TableKey, ...]] = (
    TableKey(
        "max_load",
        _optional_number(Range(float, 0.1, 10000, "load")),
        'a load average from 0.1 to 10000, or "off" (default off)',
        "a machine already overloaded by others: stop taking work (docs/security.md row 5; "
        "xinetd max_load)",
    ),
    TableKey(
        "max_lag",
        _optional_number(Range(float, 0.01, 60, "seconds")),
        'a number of seconds from 0.01 to 60, or "off"',
        "a saturated event loop: refuse new work before every session slows down",
    ),
    TableKey(
        "max_rss_mb",
        _optional_number(Range(float, 16, 1048576, "MiB")),
        'a number of MiB from 16 to 1048576, or "off" (default off)',
        "memory exhaustion of the process under a flood",
    ),
    TableKey(
        "interval",
        _number(Range(float, 0.1, 60, "seconds")),
        "a number of seconds from 0.1 to 60",
        "slow reaction to overload (too long) or measurement cost (too short)",
    ),
)


MUX_KEYS: Final[tuple[TableKey, ...]] = (
    TableKey(
        "max_streams",
        _number(Range(int, 1, 65536, "streams")),
        "a whole number from 1 to 65536",
        "one multiplexed session holding unbounded stream state (a SYN flood on one connection)",
    ),
    TableKey(
        "max_per_user",
        _number(Range(int, 1, 1000000, "streams")),
        "a whole number from 1 to 1000000",
        "one user taking every backend connection through many streams and sessions",
    ),
    TableKey(
        "max_per_service",
        _number(Range(int, 1, 1000000, "streams")),
        "a whole number from 1 to 1000000",
        "one service's backend flooded with connections through streams",
    ),
    TableKey(
        "open_timeout",
        _number(Range(float, 0.1, 3600, "seconds")),
        "a number of seconds from 0.1 to 3600",
        "streams opened and left silent before their OPEN line, holding a slot",
    ),
    TableKey(
        "keepalive_interval",
        _number(Range(float, 1, 3600, "seconds")),
        "a number of seconds from 1 to 3600",
        "a dead path (or client) holding a session and its streams unnoticed",
    ),
    TableKey(
        "keepalive_timeout",
        _number(Range(float, 1, 600, "seconds")),
        "a number of seconds from 1 to 600",
        "a session whose client stopped answering pings held open",
    ),
    TableKey(
        "open_rate",
        _number(Range(float, 1, 100000, "stream openings per second")),
        "a number of stream openings per second from 1 to 100000",
        "a flood of stream openings on one session, each an authorisation and a backend"
        " connection",
    ),
    TableKey(
        "open_burst",
        _number(Range(int, 1, 100000, "streams")),
        "a whole number from 1 to 100000",
        "a burst of stream openings on one session at once",
    ),
)


TICKET_KEYS: Final[tuple[TableKey, ...]] = (
    TableKey(
        "enabled",
        parse_bool,
        "true or false",
        "a flood of unknown connections crowding out clients that logged in before: a "
        "ticket buys a returning client a place in admission's lane (never a login)",
    ),
    TableKey(
        "lifetime",
        _number(Range(int, 60, 604800, "seconds")),
        "a whole number of seconds from 60 to 604800",
        "a stolen or leaked ticket used long after its login",
    ),
    TableKey(
        "ipv4_prefix",
        _number(Range(int, 8, 32, "bits")),
        "a prefix length from 8 to 32",
        "a ticket used from far away: it is bound to the IPv4 block it was issued to",
    ),
    TableKey(
        "ipv6_prefix",
        _number(Range(int, 16, 128, "bits")),
        "a prefix length from 16 to 128",
        "a ticket used from far away: it is bound to the IPv6 block it was issued to",
    ),
    TableKey(
        "max_spent",
        _number(Range(int, 1, 16777216, "tickets")),
        "a whole number from 1 to 16777216",
        "replayed tickets (each is single use) without unbounded memory: when full, tickets "
        "buy no lane until spent ones expire",
    ),
    TableKey(
        "max_spent_per_user",
        _number(Range(int, 1, 16777216, "tickets")),
        "a whole number from 1 to 16777216",
        "one account filling the spent table: past its share only that user's tickets buy "
        "no lane until its spent ones expire",
    ),
    TableKey(
        "issue_rate",
        _number(Range(float, 0.001, 1000, "tickets per second")),
        "a number of tickets per second per user from 0.001 to 1000",
        "one account minting tickets by the thousand to take the lane: past the rate and "
        "burst, TICKET is answered ERR BUSY ticket-rate",
    ),
    TableKey(
        "issue_burst",
        _number(Range(int, 1, 10000, "tickets")),
        "a whole number from 1 to 10000",
        "one account minting tickets by the thousand (the rate's bucket size)",
    ),
    TableKey(
        "lane_login_timeout",
        _number(Range(float, 1, 3600, "seconds")),
        "a number of seconds from 1 to 3600",
        "a lane connection (a valid ticket) that never logs in, holding a lane slot",
    ),
)


def _metrics_listen(src: Source, key: str, value: object) -> str:
    """
    C{ops.metrics_listen}: C{""}, or a listener that L{check_listener} accepts and that is
    a C{tcp:} or C{tcp6:} listener on a loopback interface (so never all interfaces, never
    a socket whose exposure netguard cannot see: C{systemd:}, C{haproxy:}, plugins).

    @return: the normalized endpoint string, or C{""}.
    """
    if value == "":
        return ""
    listener: Listener = src.check(key, check_listener, value)
    kind = listener.description.split(":", 1)[0]
    if kind not in ("tcp", "tcp6") or listener.network:
        raise src.error(
            key,
            "the metrics listener must be loopback only: a tcp: or tcp6: listener with "
            "interface=127.0.0.1 (or another 127.x address) or interface=\\:\\:1, e.g. "
            f'"tcp:9108:interface=127.0.0.1"; got {describe_value(value)} ({listener.exposure})',
        )
    return listener.description


OPS_KEYS: Final[tuple[TableKey, ...]] = (
    TableKey(
        "heartbeat",
        parse_bool,
        "true or false",
        "a daemon that hangs silently: each beat proves the event loop runs "
        "(docs/security.md row 16)",
    ),
    TableKey(
        "heartbeat_interval",
        _number(Range(float, 1, 86400, "seconds")),
        "a number of seconds from 1 to 86400",
        "log floods from a too-frequent heartbeat",
    ),
    TableKey(
        "shutdown_grace",
        _number(Range(float, 0, 3600, "seconds")),
        "a number of seconds from 0 to 3600",
        "a stop that cuts transfers (too short) or never finishes (bounded)",
    ),
    TableKey(
        "control_socket",
        optional_path,
        '"" (none) or a path; default <state_dir>/control.sock',
        "remote administration: the only admin interface is this mode-0600 local socket",
    ),
    TableKey(
        "metrics_listen",
        _metrics_listen,
        '"" (off) or a tcp:/tcp6: listener on a loopback interface, e.g. '
        '"tcp:9108:interface=127.0.0.1"',
        "traffic figures leaking to the network: off by default, loopback only (never all "
        "interfaces), read-only GET /metrics",
    ),
)

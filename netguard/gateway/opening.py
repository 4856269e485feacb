# -*- test-case-name: tests.test_gateway_streams -*-
"""
Opening a service, the part shared by C{OPEN} on a connection and C{OPEN} on a stream of a
multiplexed session: which service a name means, whether the user may open it, and what a
refused opening logs and counts.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.python.failure import Failure

from netguard.errors import ErrorCode
from netguard.gateway.seams import Service, SessionHost
from netguard.log import escape
from netguard.outbound.backends import describe_failure
from netguard.peer.checks import Verdict
from netguard.stats import OPEN_BACKEND, OPEN_NOT_AUTHORIZED, OPEN_PEER_CHECKS

#: A service name as a client may send it.
SERVICE_NAME = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


@attrs.frozen
class OpenRefusal:
    """
    Why an opening is refused: the code and text of the C{ERR} line.
    """

    code: ErrorCode
    text: str | None = None


def choose_service(
    host: SessionHost, name: bytes, user: str, log: Logger, fields: dict[str, Any]
) -> Service | OpenRefusal:
    """
    The service C{user} asks for by C{name}, if it exists and C{user} may open it.

    A denial is logged (C{session.denied}) and counted for the service (C{not-authorized});
    an unknown or malformed name is neither (names a client sends never become keys).

    @param host: the gateway.
    @param name: the name as sent.
    @param user: the authenticated user.
    @param log: where the denial is logged.
    @param fields: the connection's (or stream's) log fields.
    @return: the service, or the refusal.
    """
    if not SERVICE_NAME.match(name):
        return OpenRefusal(ErrorCode.NO_SUCH_SERVICE)
    text = name.decode("ascii")
    service = host.service(text)
    if service is None:
        return OpenRefusal(ErrorCode.NO_SUCH_SERVICE)
    if not host.allowed(service, user):
        log.info(
            "{user} may not open {service}",
            event="session.denied",
            service=text,
            **fields,
        )
        host.stats.open_failed(text, OPEN_NOT_AUTHORIZED)
        return OpenRefusal(ErrorCode.NOT_AUTHORIZED)
    return service


def checks_refused(
    host: SessionHost, service: Service, verdict: Verdict, log: Logger, fields: dict[str, Any]
) -> OpenRefusal:
    """
    The peer checks a service requires refused the peer: log (C{peer.refused}), count
    (C{peer-checks}) and say how to refuse.
    """
    log.info(
        "peer checks refused {peer} for {service}: {reason}",
        event="peer.refused",
        service=service.name,
        reason=escape(verdict.reason),
        **fields,
    )
    host.stats.open_failed(service.name, OPEN_PEER_CHECKS)
    return OpenRefusal(ErrorCode.NOT_AUTHORIZED, "peer checks failed")


def backend_failed(
    host: SessionHost, service: str, failure: Failure, log: Logger, fields: dict[str, Any]
) -> OpenRefusal:
    """
    The backend of C{service} could not be reached: log (C{session.backend_failed}), count
    (C{backend}) and say how to refuse.
    """
    log.warn(
        "backend of {service} unavailable: {cause}",
        event="session.backend_failed",
        service=escape(service),
        cause=describe_failure(failure),
        error_type=failure.type.__name__ if failure.type is not None else "?",
        **fields,
    )
    host.stats.open_failed(service, OPEN_BACKEND)
    return OpenRefusal(ErrorCode.BACKEND_UNAVAILABLE)

# -*- test-case-name: tests.test_startup -*-
"""
The privileged part of starting a gateway, shared by the single process and the workers'
supervisor: the instance lock's pid, the log file and what must listen before twistd drops
privileges, one line instead of a traceback when any of it fails, and the state directory
handed to the user twistd runs as. See C{docs/operating.md} (privileges, workers).

Whatever can be checked is checked earlier, in C{makeService}, while twistd is still in the
foreground (L{netguard.ops.preflight}); what fails here anyway, after a daemonizing twistd
forked, must reach twistd's waiting parent: L{start_failure}.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from netguard.auth.users import MOCK_KEY_FILE
from netguard.log_file import LogFileError
from netguard.ops.control import UnsafeControlPath
from netguard.ops.lock import InstanceConflict
from netguard.ops.metrics import MetricsListenFailed
from netguard.ops.privileges import hand_over
from netguard.tickets import TICKET_KEY_FILE

log = Logger()

#: What ends a start with one line naming the cause rather than a traceback.
START_ERRORS: tuple[type[Exception], ...] = (
    InstanceConflict,
    UnsafeControlPath,
    CannotListenError,
    LogFileError,
    MetricsListenFailed,
)


class StartFailed(SystemExit, Exception):
    """
    A start that failed in C{privilegedStartService}: it ends the process with one line
    (C{netguard: <reason>}, exit status 1, no traceback) as a L{SystemExit} does, and it is
    also an L{Exception}, because that is what C{twistd}'s C{postApplication} catches: it
    then removes the pidfile and, when it daemonized, writes C{1 <reason>} to the status
    pipe its waiting parent reads (which prints it and exits 1). A bare L{SystemExit} passes
    that by and leaves the parent waiting for ever.

    @ivar reason: what failed, without the C{netguard:} prefix of the line shown.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"netguard: {reason}")
        self.reason = reason


def start_failure(service: Any, reason: str) -> StartFailed:
    """
    What ends a start that failed in C{privilegedStartService}: the reason is logged
    (C{gateway.start_failed}) and the instance lock released, so nothing is left for the
    next start to trip over.

    @param service: the gateway's or the supervisor's service.
    @param reason: what failed, for the operator.
    @return: the L{StartFailed} to raise.
    """
    log.error("start failed: {reason}", event="gateway.start_failed", reason=reason)
    if service.instance_lock is not None:
        service.instance_lock.release()
    return StartFailed(reason)


def start_privileged(
    service: Any,
    start: Callable[[], None],
    state_dir: str,
    also: tuple[type[Exception], ...] = (),
) -> None:
    """
    Write the instance lock's pid (we may be twistd's daemon child by now), start the log
    file (before privileges drop: /var/log may need root) and then C{start()}; a failure
    among L{START_ERRORS} or C{also} ends the start (L{start_failure}). Under C{twistd
    --uid} as root (C{service.run_as}), hand the state directory and what netguard made in
    it (C{service.created_paths()}) to that user.

    @param service: the gateway's or the supervisor's service (C{instance_lock},
        C{log_sink}, C{run_as}, C{created_paths}).
    @raise StartFailed: naming what failed.
    """
    if service.instance_lock is not None:
        service.instance_lock.write_pid()
    try:
        service.log_sink.start()
        start()
    except (*START_ERRORS, *also) as error:
        raise start_failure(service, str(error)) from None
    if service.run_as is not None:
        try:
            hand_over(state_dir, service.created_paths(), *service.run_as)
        except OSError as error:
            reason = f"cannot hand the state directory over: {error}"
            raise start_failure(service, reason) from None


def created_paths(config: Any, instance_lock: Any, sockets: Iterable[str]) -> list[str]:
    """
    What netguard creates in the state directory: the users file, the keys (mock
    verifiers, tickets), the instance lock, the unix sockets of the listeners (C{sockets})
    and the control socket.
    """
    paths = [
        config.users_file,
        os.path.join(config.state_dir, MOCK_KEY_FILE),
        os.path.join(config.state_dir, TICKET_KEY_FILE),
    ]
    if instance_lock is not None:
        paths.append(instance_lock.path)
    paths.extend(sockets)
    if config.ops.control_socket:
        paths.append(config.ops.control_socket)
    return paths

# -*- test-case-name: tests.test_privileges -*-
"""
Starting as root and running as another user (C{twistd --uid/--gid}): L{hand_over} gives
what netguard created in its state directory (the directory, a generated users file, the
instance lock, unix sockets) to the run-as user just before twistd drops privileges, so the
gateway can still re-read its users file on SIGHUP and remove its sockets and lock at stop.
Only paths inside the state directory change owner, with C{lchown} (a link is never
followed). What an operator sees: C{docs/operating.md} section 1 (C{--uid}).
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.logger import Logger

log = Logger()


def run_as_identity(twistd_options: Mapping[str, Any] | None, euid: int) -> tuple[int, int] | None:
    """
    The user and group twistd will switch to after C{privilegedStartService}.

    @param twistd_options: twistd's own options (the plugin options' C{parent}), or L{None}
        when the service is built outside twistd.
    @param euid: our effective uid now.
    @return: C{(uid, gid)} when we run as root and C{--uid} names another user (the gid is
        C{--gid}, else that user's primary group, as twistd does); otherwise L{None}.
    """
    if twistd_options is None or euid != 0:
        return None
    uid = twistd_options.get("uid")
    if uid is None or uid == 0:
        return None
    gid = twistd_options.get("gid")
    if gid is None:
        gid = pwd.getpwuid(uid).pw_gid
    return int(uid), int(gid)


def switch_refused(
    twistd_options: Mapping[str, Any] | None, euid: int, uid: int, gid: int
) -> str | None:
    """
    Why twistd could not switch to its C{--uid}/C{--gid}, or L{None}. Only root may switch
    to another user or group; twistd finds that out only after it forked into the
    background, and then exits without telling its waiting parent, so ask first.

    @param twistd_options: twistd's own options, or L{None} outside twistd.
    @param euid: our effective uid now.
    @param uid: our real uid now.
    @param gid: our real gid now.
    @return: a message for the operator, or L{None} if the switch can be made (or none
        is asked for).
    """
    if twistd_options is None or euid == 0:
        return None
    want_uid, want_gid = twistd_options.get("uid"), twistd_options.get("gid")
    if want_uid is not None and want_gid is None:
        try:
            want_gid = pwd.getpwuid(want_uid).pw_gid  # as twistd does
        except KeyError:
            return f"twistd --uid {want_uid}: no such user"
    if (want_uid is None or want_uid == uid) and (want_gid is None or want_gid == gid):
        return None
    return (
        f"twistd --uid {want_uid} --gid {want_gid}: only root can switch to another user "
        f"or group (running as uid {uid} gid {gid})"
    )


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.abspath(path), os.path.abspath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def hand_over(state_dir: str, paths: Iterable[str], uid: int, gid: int) -> list[str]:
    """
    Give the state directory and the given paths inside it to C{uid:gid}.

    @param state_dir: the state directory; handed over itself.
    @param paths: what netguard created in it (users file, lock, sockets); paths outside it
        and paths that do not exist are skipped.
    @param uid: the run-as user.
    @param gid: the run-as group.
    @return: the paths handed over, state directory first.
    @raise OSError: if a change of owner fails (the start must not go on half done).

    Nothing is handed over (a warning is logged) unless the state directory is a real
    directory of mode 0700, as netguard creates it: a shared directory named by mistake
    must not be given away.
    """
    info = os.lstat(state_dir)
    if (
        not stat.S_ISDIR(info.st_mode)
        or stat.S_IMODE(info.st_mode) & 0o077
        or os.path.abspath(state_dir) == os.sep
    ):
        # Not a directory of netguard's own (a shared /var/lib or /tmp by mistake): giving it
        # away would hand other programs' files to the run-as user. Leave everything as is.
        log.warn(
            "not handing {state_dir} to uid {uid}: the state directory must be a directory of "
            "its own with mode 0700; reload and clean-up at stop may fail after dropping root",
            event="gateway.hand_over_refused",
            state_dir=state_dir,
            uid=uid,
        )
        return []
    done = []
    for path in (state_dir, *paths):
        if not _inside(path, state_dir) or not os.path.lexists(path) or path in done:
            continue
        os.lchown(path, uid, gid)
        done.append(path)
    log.info(
        "handed {count} path(s) in {state_dir} to uid {uid} gid {gid} before dropping root",
        event="gateway.hand_over",
        count=len(done),
        state_dir=state_dir,
        uid=uid,
        gid=gid,
        paths=done,
    )
    return done

# -*- test-case-name: tests.test_backends -*-
"""
The files Twisted reads when it builds a C{tls:} or C{ssl:} client endpoint (certificate,
key, and every C{*.pem} of a trust-root directory), checked first without blocking: one
that is not a regular file (a FIFO, a device) fails the opening at once instead of
blocking the reactor in C{open}.
"""

from __future__ import annotations

import os
from typing import Final

from netguard.endpoints import client_params, split_description
from netguard.operator_files import NotRegularFile, open_regular

#: Per client type: the option whose file Twisted reads, the option whose file it reads
#: only alongside the first, and the option naming a directory whose C{*.pem} it reads.
_FILE_OPTIONS: Final = {
    "tls": ("certificate", "privateKey", "trustRoots"),
    "ssl": ("certKey", "privateKey", "caCertsDir"),
}

#: How deep C{endpoint=} strings nested in one another are followed.
_MAX_DEPTH: Final = 8


class BackendFileError(ValueError):
    """
    A file a backend's endpoint string names is not a regular file.

    @ivar option: the option naming it (C{trustRoots}, C{certificate}...).
    @ivar path: the file.
    """

    def __init__(self, option: str, path: str, kind: str) -> None:
        self.option = option
        self.path = path
        super().__init__(f"{option}= names {path}, which is {kind}, not a regular file")


def _check_file(option: str, path: str) -> None:
    """
    @raise BackendFileError: C{path} is there but not a regular file. A file that cannot be
        opened is left for Twisted to report, as it does.
    """
    try:
        fd, _ = open_regular(path)
    except NotRegularFile as error:
        raise BackendFileError(option, path, error.kind) from None
    except OSError:
        return
    os.close(fd)


def _check_directory(option: str, path: str) -> None:
    """
    Check each entry of C{path} that Twisted's C{tls:}/C{ssl:} parser reads: those whose
    name ends in C{.pem}, in any case. Entries it skips (a directory, one it cannot open)
    are skipped here too.

    @raise BackendFileError: such an entry is a FIFO, a device or a socket.
    """
    try:
        entries = [entry.path for entry in os.scandir(path)]
    except OSError:
        return  # not a directory, or unreadable: Twisted's to report
    for entry in entries:
        if os.path.basename(entry).split(".")[-1].lower() != "pem":
            continue
        try:
            fd, _ = open_regular(entry)
        except NotRegularFile as error:
            if error.kind != "a directory":
                raise BackendFileError(option, entry, error.kind) from None
            continue
        except OSError:
            continue
        os.close(fd)


def check_backend_files(description: str, depth: int = 0) -> None:
    """
    Check, without blocking, every file Twisted would read to build the client endpoint
    C{description}, in a C{tls:} string's nested C{endpoint=} too.

    @raise BackendFileError: naming the option and the file that is not a regular file.
    @raise netguard.endpoints.EndpointError: C{description} cannot be split.
    """
    kind = description.split(":", 1)[0].lower()
    options = _FILE_OPTIONS.get(kind)
    if options is None:
        return
    fields = split_description(description)[1:]
    named = {f.key: f.value for f in fields if f.key}
    if kind == "tls":
        # Twisted's tls: parser takes every parameter by position too (the files among
        # them); ssl: takes only host and port so, which the configuration checks.
        positional = [f.value for f in fields if f.key is None]
        for name, value in zip(client_params(kind), positional, strict=False):
            named.setdefault(name, value)
    certificate, key, directory = options
    if certificate in named:
        _check_file(certificate, named[certificate])
        if key in named:
            _check_file(key, named[key])
    if directory in named:
        _check_directory(directory, named[directory])
    nested = named.get("endpoint")
    if kind == "tls" and nested is not None and depth < _MAX_DEPTH:
        check_backend_files(nested, depth + 1)

# -*- test-case-name: tests.test_log -*-
"""
The C{[log] file} sink (L{FileLogSink}): netguard's own log file, mode 0600, appended to,
reopened on SIGHUP; a file that can no longer be written drops and counts records and says
so through the other observers, never with a traceback. C{docs/logging.md} section 1.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, cast

from twisted.logger import FileLogObserver, Logger, LogPublisher, globalLogPublisher

from netguard.log import LOG_FORMATS, LogSettings, escape, observer_for
from netguard.operator_files import NotRegularFile


class LogFileError(Exception):
    """
    The C{[log] file} could not be opened; the message names the path and the reason.
    """


class NotLogFile(NotRegularFile):
    """
    The log file's path names something other than a regular file, a character device or a
    FIFO with a reader (a FIFO without one, a socket, a directory, a block device).
    """

    def __init__(self, path: str, mode: int) -> None:
        super().__init__(path, mode)
        self.strerror = f"is {self.kind}, not a regular file or a character device"


def open_log_file(path: str) -> IO[str]:
    """
    Open a log file for appending, creating it with mode 0600 when it does not exist (an
    existing file keeps its mode). C{O_APPEND} makes every record land at the end even when
    another program truncates the file (C{logrotate}'s C{copytruncate}).

    The open never blocks (C{O_NONBLOCK}, cleared again for the writes): a FIFO without a
    reader (whose open would wait for one) is refused at once, as is anything that is
    neither a regular file, a character device (C{/dev/null}, C{/dev/full}, a terminal)
    nor a FIFO that has a reader (C{/dev/stdout} when standard output is a pipe, as under
    C{twistd ... | tee} or a supervisor that reads the output).

    @param path: the file.
    @return: a text stream, closed by the caller.
    @raise NotLogFile: it is neither a regular file nor a character device.
    @raise OSError: if it cannot be opened.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags | os.O_NONBLOCK, 0o600)
    except OSError as error:
        if error.errno == errno.ENXIO:  # a FIFO without a reader, or a unix socket
            _refuse_unsuitable(path)
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
            raise NotLogFile(path, mode)  # a FIFO got here only with a reader
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace", newline="")
    except BaseException:
        os.close(fd)
        raise


def _refuse_unsuitable(path: str) -> None:
    """
    Raise L{NotLogFile} if C{path} names something a log file cannot be.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
        raise NotLogFile(path, mode)


#: At most one C{log.write_failed} report per this many seconds while the log file cannot
#: be written.
WRITE_FAILURE_REPORT_INTERVAL = 60.0


class FileLogSink:
    """
    The C{[log] file} sink: while started, every event of C{publisher} is also written to
    a file in C{[log] format}. Inactive (start and stop do nothing) when the path is L{None}.

    A record that cannot be written (C{OSError}: disk full, I/O error) is dropped and
    counted, the file is closed (discarding any half-written buffer) and reopened for the
    next event. The failure is reported to the other observers (twistd's own log) as
    C{log.write_failed}, at most once per L{WRITE_FAILURE_REPORT_INTERVAL}; the first
    record written again is followed by one C{log.write_restored} with the count lost.

    @ivar path: the file, or L{None}.
    @ivar log_format: C{"text"} or C{"json"}.
    @ivar dropped: records not written since the last successful write.
    """

    def __init__(
        self,
        path: str | None,
        log_format: str = "text",
        publisher: LogPublisher | None = None,
        opener: Callable[[str], IO[str]] = open_log_file,
        seconds: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        @param path: the log file, or L{None} for an inactive sink.
        @param log_format: C{"text"} or C{"json"}.
        @param publisher: where events come from (default: C{globalLogPublisher}).
        @param opener: opens the file (injected for tests).
        @param seconds: the clock of the failure reports' rate limit.
        @raise ValueError: for an unknown format.
        """
        if log_format not in LOG_FORMATS:
            raise ValueError(f"unknown log format {log_format!r}")
        self.path = path
        self.log_format = log_format
        self._publisher = globalLogPublisher if publisher is None else publisher
        self._log = Logger(namespace=__name__, observer=cast(Any, self._publisher))
        self._opener = opener
        self._seconds = seconds
        self._file: IO[str] | None = None
        self._writer: FileLogObserver | None = None
        self._observer: Any = None
        self._reporting = False
        self.dropped = 0
        self._unreported = 0
        self._last_report: float | None = None

    @classmethod
    def from_config(
        cls, settings: LogSettings, publisher: LogPublisher | None = None
    ) -> FileLogSink:
        """
        The sink of a C{[log]} configuration: inactive for C{file = "-"}.

        @param settings: the L{LogSettings}.
        @param publisher: where events come from (default: C{globalLogPublisher}).
        @return: the sink, not started.
        """
        path = None if settings.file == "-" else settings.file
        return cls(path, settings.format, publisher)

    @property
    def started(self) -> bool:
        """
        @return: whether the sink is writing.
        """
        return self._observer is not None

    def start(self) -> None:
        """
        Open the file and add the observer; nothing if inactive or already started. Logs
        C{log.file_open} (into the file too), and C{log.file_permissions} if the file is
        readable or writable by its group or others.

        @raise LogFileError: if the file cannot be opened.
        """
        if self.path is None or self._observer is not None:
            return
        try:
            stream = self._opener(self.path)
        except OSError as error:
            raise LogFileError(
                f"cannot open log file {self.path}: {error.strerror or error}"
            ) from None
        self._use(stream)
        self._observer = self._write
        self._publisher.addObserver(self._observer)
        mode = _mode_of(stream)
        self._log.info(
            "logging to {path} ({file_format})",
            event="log.file_open",
            path=escape(self.path, limit=4096),
            file_format=self.log_format,
            mode="-" if mode is None else f"{mode:04o}",
        )
        if mode is not None and mode & 0o077:
            self._log.warn(
                "log file {path} is open to its group or others (mode {mode}); it holds user "
                "names and addresses",
                event="log.file_permissions",
                path=escape(self.path, limit=4096),
                mode=f"{mode:04o}",
            )

    def stop(self, result: Any = None) -> Any:
        """
        Remove the observer and close the file; nothing if not started.

        @param result: passed back, so this can be a callback in a Deferred chain.
        @return: C{result}.
        """
        observer, self._observer = self._observer, None
        if observer is not None:
            self._publisher.removeObserver(observer)
        self._close()
        return result

    def _use(self, stream: IO[str]) -> None:
        """
        Write to C{stream} from now on.
        """
        self._file = stream
        self._writer = observer_for(self.log_format, stream)

    def _close(self) -> None:
        """
        Close the file, dropping whatever it still buffers.
        """
        stream, self._file, self._writer = self._file, None, None
        if stream is not None:
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    def _write(self, event: Mapping[str, Any]) -> None:
        """
        The observer: write C{event} (reopening the file after a failure); on C{OSError}
        drop and count it.
        """
        if self._reporting or self.path is None:
            return
        try:
            if self._writer is None:
                self._use(self._opener(self.path))
            cast(FileLogObserver, self._writer)(cast(Any, event))
        except OSError as error:
            self._close()
            self._failed(error)
            return
        if self.dropped:
            lost, self.dropped, self._unreported = self.dropped, 0, 0
            self._last_report = None
            self._log.info(
                "log file {path} written again; records lost: {lost}",
                event="log.write_restored",
                path=escape(self.path, limit=4096),
                lost=lost,
            )

    def _failed(self, error: OSError) -> None:
        """
        Count a dropped record; tell the other observers, at most once per interval.
        """
        self.dropped += 1
        self._unreported += 1
        now = self._seconds()
        if self._last_report is not None and now - self._last_report < (
            WRITE_FAILURE_REPORT_INTERVAL
        ):
            return
        dropped, self._unreported = self._unreported, 0
        self._last_report = now
        self._reporting = True
        try:
            self._log.error(
                "cannot write log file {path}: {error}; records dropped since the last report: "
                "{dropped}",
                event="log.write_failed",
                path=escape(str(self.path), limit=4096),
                error=escape(error.strerror or str(error)),
                errno=errno.errorcode.get(error.errno, "-") if error.errno else "-",
                dropped=dropped,
            )
        finally:
            self._reporting = False


def _mode_of(stream: IO[str]) -> int | None:
    """
    The permission bits of a regular file behind C{stream}, else L{None}.
    """
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return stat.S_IMODE(info.st_mode)

# -*- test-case-name: tests.test_metrics -*-
"""
The standard Prometheus process collector's figures for this process (C{process_open_fds},
C{process_resident_memory_bytes}, ...), read without any dependency: C{os.times},
C{RLIMIT_NOFILE} and, on Linux, C{/proc}. Rendered by L{netguard.ops.metrics}.
"""

from __future__ import annotations

import os
import resource
from typing import Final

#: The process metrics, under the standard process collector's names and help texts.
PROCESS_METRICS: Final[tuple[tuple[str, str, str], ...]] = (
    ("cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."),
    ("open_fds", "gauge", "Number of open file descriptors."),
    ("max_fds", "gauge", "Maximum number of open file descriptors."),
    ("virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
    ("resident_memory_bytes", "gauge", "Resident memory size in bytes."),
    ("start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."),
)


def process_figures(proc: str = "/proc") -> dict[str, float]:
    """
    This process's figures for the standard C{process_*} metrics: CPU seconds
    (C{os.times}), the soft limit of open files (C{RLIMIT_NOFILE}, left out when unlimited),
    and from C{/proc} (Linux) the open descriptors, virtual and resident memory and the
    start time. What cannot be read is left out, never guessed.

    @param proc: where procfs is mounted.
    @return: figure name (a L{PROCESS_METRICS} name) to value.
    """
    figures: dict[str, float] = {}
    times = os.times()
    figures["cpu_seconds_total"] = times.user + times.system
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        figures["max_fds"] = soft
    try:
        figures["open_fds"] = len(os.listdir(os.path.join(proc, "self", "fd")))
    except OSError:
        pass
    try:
        with open(os.path.join(proc, "self", "stat"), "rb") as handle:
            stat = handle.read(4096)
        # Fields after the command name (which may hold spaces and parentheses): the
        # state is field 3, so field n is at index n - 3.
        fields = stat[stat.rindex(b")") + 2 :].split()
        figures["virtual_memory_bytes"] = int(fields[23 - 3])
        figures["resident_memory_bytes"] = int(fields[24 - 3]) * os.sysconf("SC_PAGE_SIZE")
        start_ticks = int(fields[22 - 3])
        with open(os.path.join(proc, "stat"), "rb") as handle:
            for line in handle.read(65536).splitlines():
                if line.startswith(b"btime "):
                    boot = int(line.split()[1])
                    figures["start_time_seconds"] = boot + start_ticks / os.sysconf("SC_CLK_TCK")
                    break
    except (OSError, ValueError, IndexError):
        pass
    return figures

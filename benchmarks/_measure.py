"""Measuring: wall and CPU time of a block, peak resident memory of this process or of a child.

Speed is reported as ratios of runs measured side by side in the same
process, because the machines are shared and absolute timings are noisy; CPU
time is recorded beside wall time for the same reason.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from dataclasses import dataclass
from typing import Sequence

__all__ = ["GIB", "ChildRun", "Stopwatch", "cpu_seconds", "read_vmhwm", "run_child_measuring_rss"]

GIB = 1 << 30


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Stopwatch:
    """Wall and CPU time of a block.

    CPU time (all threads of this process) is far less sensitive than wall time to
    other jobs running on a shared machine, so both are recorded.

    Example:
        >>> with Stopwatch() as watch:
        ...     work()
        >>> watch.wall, watch.cpu
    """

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> "Stopwatch":
        self._wall = time.perf_counter()
        self._cpu = cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = cpu_seconds() - self._cpu


def read_vmhwm(pid: int | str = "self") -> int | None:
    """Peak resident set size (VmHWM) of a live process in bytes, or None if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class ChildRun:
    """What `run_child_measuring_rss` saw of a child process.

    Attributes:
        returncode: Exit status.
        wall: Seconds from start to exit.
        peak_rss: Largest VmHWM read from /proc/<pid>/status while the child ran (bytes).
        ru_maxrss: `ru_maxrss` from `os.wait4` for this child only (bytes). Linux folds
            the parent's own peak at fork time into it when the child is started with
            vfork/exec, so it can over-state a small child of a big parent.
        output: The child's stdout and stderr.
    """

    returncode: int
    wall: float
    peak_rss: int | None
    ru_maxrss: int
    output: str


def run_child_measuring_rss(command: Sequence[str], *, poll_seconds: float = 0.2, env=None) -> ChildRun:
    """Run `command` in a fresh process and measure its peak resident memory.

    The child's VmHWM (a high-water mark, so polling cannot miss the peak except in
    the last `poll_seconds`) is read from /proc while it runs, and its own
    `ru_maxrss` is collected with `os.wait4`, which, unlike
    `getrusage(RUSAGE_CHILDREN)`, is not a maximum over every child reaped so far.
    """
    started = time.perf_counter()
    with open(os.devnull, "rb") as devnull:
        process = subprocess.Popen(
            list(command),
            stdin=devnull,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
    chunks: list[bytes] = []
    peak = None
    os.set_blocking(process.stdout.fileno(), False)
    while True:
        value = read_vmhwm(process.pid)
        if value is not None:
            peak = max(peak or 0, value)
        data = process.stdout.read()
        if data:
            chunks.append(data)
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(poll_seconds)
    os.set_blocking(process.stdout.fileno(), True)
    chunks.append(process.stdout.read() or b"")
    process.stdout.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(
        returncode=process.returncode,
        wall=time.perf_counter() - started,
        peak_rss=peak,
        ru_maxrss=usage.ru_maxrss * 1024,  # KiB on Linux
        output=b"".join(chunks).decode("utf-8", "replace"),
    )


"""The cores this process may use: its CPU affinity mask, lowered to its cgroup's CPU quota.

One answer for the decoding threads, the classifier rows and the BLAS/OpenMP
pools: on Slurm or in a container a process may use fewer cores than
`os.cpu_count()` reports.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["cgroup_cpu_quota", "usable_cores"]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota(text: str | None, period_text: str | None = None) -> float | None:
    """Cores granted by a cgroup v2 ``cpu.max`` line (``"200000 100000"``) or a v1 quota and period; None: no limit."""
    if text is None:
        return None
    parts = text.split() if period_text is None else [text, period_text]
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None  # v1 writes -1 for no limit


def _ancestors(base: Path, path: str) -> Iterator[Path]:
    """`base`/`path` and each folder above it up to `base` (those that exist)."""
    parts = [part for part in path.split("/") if part]
    for depth in range(len(parts), -1, -1):
        folder = base.joinpath(*parts[:depth])
        if folder.is_dir():
            yield folder


def cgroup_cpu_quota(
    *, proc_cgroup: str | os.PathLike = "/proc/self/cgroup", root: str | os.PathLike = "/sys/fs/cgroup"
) -> float | None:
    """The CPU quota of this process's cgroup, in cores: the smallest over its cgroup and the ones above it.

    Reads cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``),
    at the process's own cgroup path (from `proc_cgroup`) as well as at the
    mount's root (what a container with its own cgroup namespace sees).

    Args:
        proc_cgroup: The ``/proc/self/cgroup`` file.
        root: Where the cgroup hierarchy is mounted.

    Returns:
        The quota in cores (e.g. 1.5), or None when there is none or it cannot be read.
    """
    root = Path(root)
    lines = _read(Path(proc_cgroup))
    quotas = []
    for line in (lines or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and controllers == "":  # cgroup v2, the unified hierarchy
            quotas += [_quota(_read(folder / "cpu.max")) for folder in _ancestors(root, path)]
        elif "cpu" in controllers.split(","):  # cgroup v1, mounted as cpu,cpuacct or cpu
            for base in dict.fromkeys((root / controllers, root / "cpu")):
                quotas += [
                    _quota(_read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us"))
                    for folder in _ancestors(base, path)
                ]
    known = [quota for quota in quotas if quota is not None]
    return min(known) if known else None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity mask, lowered to a cgroup CPU quota (at least 1).

    A fractional quota is rounded down: a thread throttled for part of each
    period holds up the BLAS threads waiting for it.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS, Windows)
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.floor(quota))
    return max(1, cores)

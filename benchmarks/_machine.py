"""The machine and software a benchmark ran on, for its log, its JSON and RESULTS.md."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from typing import Any, Mapping

from _args import REPO_DIR
from _measure import GIB
from layerprobe.core.cores import usable_cores
from layerprobe.core.versions import installed_version
from layerprobe.features.backend import import_keras_quietly

__all__ = ["machine_description", "machine_info"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "features", "pipeline"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in features/ or pipeline/" if dirty else "")


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, load, library versions and Keras backend, as a flat dict."""
    keras = import_keras_quietly()
    versions = {
        package: installed_version(package) or "absent"
        for package in ("keras", "tensorflow", "numpy", "scikit-learn", "h5py", "pillow")
    }
    memory = _memory_total()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cores(),
        "memory_gib": round(memory / GIB, 1) if memory else None,
        "load_average": " ".join(f"{value:.2f}" for value in os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "keras_backend": keras.backend.backend(),
        **versions,
        "layerprobe_git": _git_revision(),
    }


def machine_description(info: Mapping[str, Any] | None = None) -> str:
    """One line describing the machine and software, for logs and RESULTS.md."""
    info = info or machine_info()
    return (
        f"{info['cpu']}, {info['cpus_usable']} of {info['cpu_count']} CPU cores usable, "
        f"{info['memory_gib']} GiB RAM, no GPU used; load average at start {info['load_average']}; "
        f"Python {info['python']}, Keras {info['keras']} ({info['keras_backend']} backend), "
        f"TensorFlow {info['tensorflow']}, NumPy {info['numpy']}, scikit-learn {info['scikit-learn']}, "
        f"h5py {info['h5py']}, Pillow {info['pillow']}; layerprobe {info['layerprobe_git']}; {info['date']}"
    )

"""Helpers shared by the benchmark scripts.

Every benchmark script:
  * takes its data paths as arguments, defaulting to ../shared beside the repo
    (``SHARED_DIR``), and stops with a clear message when they are absent;
  * writes its CSV, PNG and log under ``--out`` (default ``benchmarks/out/<script>``);
  * reports speed as ratios of runs measured side by side in the same process,
    because the machines are shared and absolute timings are noisy.

Nothing here imports TensorFlow or Keras at import time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "BENCHMARKS_DIR",
    "CIFAR10_DIR",
    "GIB",
    "REPO_DIR",
    "SHARED_DIR",
    "VGG16_WEIGHTS",
    "ChildRun",
    "RunLog",
    "Stopwatch",
    "bar_chart",
    "base_parser",
    "cifar_subset",
    "comma_list",
    "cpu_seconds",
    "format_table",
    "machine_description",
    "machine_info",
    "quiet_tensorflow",
    "read_results",
    "read_vmhwm",
    "require_path",
    "run_child_measuring_rss",
    "write_csv",
    "write_json",
]

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCHMARKS_DIR.parent
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
CIFAR10_DIR = SHARED_DIR / "datasets" / "cifar10"
VGG16_WEIGHTS = SHARED_DIR / "weights" / "vgg16_hed_bsds500_notop.weights.h5"

GIB = 1 << 30


# --------------------------------------------------------------------------- arguments


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter (set before TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def base_parser(script: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has.

    Args:
        script: The script's name without `.py`; the default output folder is
            `benchmarks/out/<script>`.
        description: First line of `--help`.
    """
    parser = argparse.ArgumentParser(
        prog=f"python benchmarks/{script}.py",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCHMARKS_DIR / "out" / script,
        help="folder for the CSV, PNG and JSON results (created if missing)",
    )
    return parser


def comma_list(text: str) -> list[str]:
    """An argparse type: "a, b,c" -> ["a", "b", "c"] (empty items dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def require_path(path: str | os.PathLike, what: str, option: str, *, kind: str = "any") -> Path:
    """Return `path` if it exists, else stop the script with a message saying how to fix it.

    Args:
        path: The path given (or defaulted).
        what: What the path should hold, e.g. "the CIFAR-10 image folder".
        option: The command-line option that sets it, e.g. "--cifar10".
        kind: "dir", "file" or "any".
    """
    path = Path(path)
    ok = {"dir": path.is_dir, "file": path.is_file, "any": path.exists}[kind]()
    if not ok:
        raise SystemExit(
            f"error: {what} was not found at {path}. The benchmarks read it from ../shared beside "
            f"the repository ({SHARED_DIR}); pass its location with {option} PATH. "
            f"Received: {option}={os.fspath(path)!r}"
        )
    return path


# --------------------------------------------------------------------------- data


def cifar_subset(root: str | os.PathLike, *, split: str = "train", n_per_class: int | None):
    """The first `n_per_class` images of each class of a CIFAR-10 split, in file-name order.

    `root` is laid out as `root/<split>/<class>/<image>.jpg`. The samples come from
    `layerprobe.features.inputs.from_directory` (sorted by class, then file name) and are picked
    with `ImageDataset.select`, so the same arguments always give the same dataset
    (and the same cache keys).

    Args:
        root: The CIFAR-10 folder.
        split: "train" or "test".
        n_per_class: Images per class; `None` for all of them.

    Returns:
        An `ImageDataset` of `n_per_class * 10` files (fewer if a class is smaller).

    Raises:
        SystemExit: If a class holds fewer than `n_per_class` images.
    """
    from layerprobe.features.inputs import from_directory

    dataset = from_directory(root).subset(split)
    if n_per_class is None:
        return dataset
    picked = []
    for label in range(len(dataset.class_names)):
        members = np.flatnonzero(dataset.labels == label)
        if len(members) < n_per_class:
            raise SystemExit(
                f"error: class {dataset.class_names[label]!r} of {root}/{split} holds {len(members)} "
                f"images, fewer than the {n_per_class} per class asked for. Ask for fewer images. "
                f"Received: n_per_class={n_per_class}"
            )
        picked.append(members[:n_per_class])
    return dataset.select(np.sort(np.concatenate(picked)))


# --------------------------------------------------------------------------- timing


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


# --------------------------------------------------------------------------- memory


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


# --------------------------------------------------------------------------- machine


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
    from importlib.metadata import PackageNotFoundError, version

    quiet_tensorflow()
    import keras

    versions = {}
    for package in ("keras", "tensorflow", "numpy", "scikit-learn", "h5py", "pillow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "absent"
    memory = _memory_total()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
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


# --------------------------------------------------------------------------- output


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write dict rows to a CSV file (columns: union of keys, in first-seen order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write `data` as JSON under a temporary name, then rename: a killed run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_results(path: str | os.PathLike) -> Any:
    """The JSON a benchmark wrote (for `--replot`); stops the script if there is none yet."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist. Run the benchmark first, then --replot.")
    return json.loads(path.read_text())


class RunLog:
    """Prints a benchmark's lines and keeps them for its log file.

    Starts with the command line and the machine description; `info` holds
    `machine_info()` for the results JSON.

    Example:
        >>> log = RunLog("depth_sweep", argv)
        >>> log("a line")
        >>> log.write(out / "log.txt")
    """

    def __init__(self, script: str, argv: Sequence[str] | None = None):
        self.lines: list[str] = []
        self.info = machine_info()
        arguments = sys.argv[1:] if argv is None else argv
        self.command = " ".join([f"python benchmarks/{script}.py", *arguments])
        self(f"command: {self.command}")
        self(f"machine: {machine_description(self.info)}")

    def __call__(self, message: str) -> None:
        print(message, flush=True)
        self.lines.append(message)

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n")
        return path


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, markdown: bool = False) -> str:
    """Rows as an aligned text table (or a Markdown table)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "-"
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return "-" if value is None else str(value)

    table = [[cell(row.get(column)) for column in columns] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(values) + " |" for values in table]
        return "\n".join(lines)
    widths = [max(len(column), *(len(values[i]) for values in table)) for i, column in enumerate(columns)]
    lines = ["  ".join(column.rjust(width) for column, width in zip(columns, widths))]
    lines += ["  ".join(value.rjust(width) for value, width in zip(values, widths)) for values in table]
    return "\n".join(lines)


def bar_chart(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    ylabel: str,
    title: str,
    log_y: bool = False,
    annotate: bool = True,
    footnote: str | None = None,
    reference_lines: Mapping[str, float] | None = None,
) -> Path:
    """A grouped bar chart: one group per entry of `groups`, one bar per series.

    Args:
        groups: Labels along the x axis.
        series: Series name -> one value per group (NaN for a missing bar).
        path: The PNG file to write.
        reference_lines: Label -> y value of a dashed horizontal line (e.g. a limit).
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_series = len(series)
    width = 0.8 / max(1, n_series)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.8 * len(groups) * max(1, n_series) + 2), 5.0))
    for k, (name, values) in enumerate(series.items()):
        values = np.asarray(values, dtype=float)
        bars = ax.bar(x + (k - (n_series - 1) / 2) * width, values, width, label=name)
        if annotate:
            for bar, value in zip(bars, values):
                if np.isfinite(value):
                    label = f"{value:.3g}" if value < 100 else f"{value:.0f}"
                    ax.annotate(
                        label,
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center",
                        va="bottom",
                        fontsize=8,
                        xytext=(0, 2),
                        textcoords="offset points",
                    )
    for k, (label, value) in enumerate((reference_lines or {}).items()):
        ax.axhline(value, color=f"C{n_series + k}", linestyle="--", linewidth=1, label=label)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.fill(line, 90) for line in title.splitlines()), fontsize=9)
    if log_y:
        ax.set_yscale("log")
    ax.margins(y=0.15)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if footnote:
        footnote = textwrap.fill(footnote, 140)
        fig.text(0.01, 0.01, footnote, fontsize=7, va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.03 * (footnote.count("\n") + 1) + 0.02 if footnote else 0, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

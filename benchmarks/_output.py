"""Benchmark output: CSV and JSON files (written atomically), the run log, bar charts.

Tables are laid out by `layerprobe.pipeline.tables.format_table`, the same function
as the command line's, in `TABLE_STYLE` (3 significant digits, "-" for no value).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from _machine import machine_description, machine_info
from layerprobe.core.atomic import atomic_path, write_atomically, write_text_atomically

__all__ = ["TABLE_STYLE", "RunLog", "bar_chart", "read_results", "significant", "write_csv", "write_json"]


def significant(value: float) -> str:
    """Three significant digits, or a whole number from 100 up (`0.0123`, `4.56`, `1234`)."""
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


TABLE_STYLE = {"float_format": significant, "missing": "-"}
"""`format_table` keyword arguments of every benchmark table."""


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write dict rows to a CSV file (columns: union of keys, in first-seen order), atomically."""
    path = Path(path)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write `data` as JSON, atomically: a killed run leaves no half file."""
    path = Path(path)
    write_text_atomically(path, json.dumps(data, indent=2, default=str) + "\n")
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
        write_text_atomically(path, "\n".join(self.lines) + "\n")
        return path


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
                    label = significant(value)
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
    write_atomically(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120))
    plt.close(fig)
    return path

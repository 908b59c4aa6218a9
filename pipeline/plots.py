"""Figures of a run's results table (matplotlib, drawn off-screen)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from layerprobe.features.atomic import write_atomically

__all__ = ["plot_depth"]


def plot_depth(results: pd.DataFrame, path: str | os.PathLike, *, title: str = "Test accuracy by layer depth") -> Path:
    """Test accuracy against relative layer depth: one line per backbone, weights, pooling and classifier.

    Finetune and scratch rows, which have no layer, are drawn as horizontal
    dashed lines. The figure is drawn on a private Agg canvas (no global
    backend change) and written as PNG, atomically.

    Args:
        results: The results table (see `layerprobe.pipeline.results`).
        path: Destination `.png` file.
        title: Figure title.

    Returns:
        The path written.

    Raises:
        ValueError: If the table has no rows to plot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frozen = results[results["mode"] == "frozen"].sort_values("depth")
    trained = results[results["mode"] != "frozen"]
    if frozen.empty and trained.empty:
        raise ValueError("There is nothing to plot: the results table has no rows. Received: an empty table")
    figure = Figure(figsize=(9, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    groups = frozen.groupby(["backbone", "weights", "pooling"], sort=False)
    markers = "osD^v<>p*h"
    for number, ((backbone, weights, pooling), rows) in enumerate(groups):
        for style, (classifier, line) in zip(("-", "--", ":", "-."), rows.groupby("classifier", sort=False)):
            axes.plot(
                line["depth"],
                line["test_accuracy"],
                linestyle=style,
                marker=markers[number % len(markers)],
                color=f"C{number}",
                label=f"{backbone} [{weights}] {pooling} / {classifier}",
            )
    layers = frozen.drop_duplicates(["layer", "depth"])
    if layers["depth"].is_unique and len(layers) <= 12:  # name the layers along the x axis
        axes.set_xticks(layers["depth"], layers["layer"], rotation=30, ha="right", fontsize=8)
    for number, (_, row) in enumerate(trained.iterrows(), start=groups.ngroups):
        axes.axhline(
            row["test_accuracy"], linestyle="--", color=f"C{number}",
            label=f"{row['mode']}: {row['backbone']} [{row['weights']}]",
        )
    axes.set_xlabel("relative layer depth (layer index / number of layers)")
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.set_title(title)
    axes.legend(fontsize=8, loc="lower left")
    path = Path(path)
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    return path

"""Figures of a run's results table (matplotlib, drawn off-screen)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..features.core.atomic import write_atomically
from .probes.multilayer import multi_layer_name

__all__ = ["depth_figure", "plot_depth"]

_MULTI_PREFIX = multi_layer_name([])  # "multi:"

_GROUP = ["backbone", "weights", "pooling"]


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column, all NaN when the table predates it."""
    if name not in frame:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce")


def _score_and_error(rows: pd.DataFrame) -> tuple[pd.Series, np.ndarray | None, str]:
    """(y, yerr, what): CV score ± its fold SE when the rows have CV scores, else test accuracy ± its Wilson interval."""
    cv = _column(rows, "cv_score")
    if cv.notna().any():
        se = _column(rows, "cv_se")
        return cv, (se.fillna(0).to_numpy() if se.notna().any() else None), "CV accuracy ± SE"
    test = _column(rows, "test_accuracy")
    low, high = _column(rows, "test_ci_low"), _column(rows, "test_ci_high")
    if low.notna().any():
        return test, np.vstack([(test - low).fillna(0).clip(lower=0), (high - test).fillna(0).clip(lower=0)]), \
            "test accuracy (95% interval)"
    return test, None, "test accuracy"


def _multi_layer_span(row: pd.Series, frozen: pd.DataFrame) -> tuple[float, float]:
    """The depths of the shallowest and deepest layers a multi-layer row combines (0, 1 when unknown)."""
    key = ["-" if pd.isna(value) else str(value) for value in row.reindex(_GROUP)]  # as `frozen[_GROUP]` holds it
    same = frozen[(frozen[_GROUP] == key).all(axis=1)]
    depth_of = dict(zip(same["layer"].astype(str), same["depth"]))
    depths = [depth_of.get(name, math.nan) for name in str(row["layer"]).removeprefix(_MULTI_PREFIX).split("+")]
    depths = [depth for depth in depths if math.isfinite(depth)]
    return (min(depths), max(depths)) if depths else (0.0, 1.0)


def plot_depth(
    results: pd.DataFrame,
    path: str | os.PathLike,
    *,
    title: str = "Accuracy by layer depth",
    recommended: pd.Series | None = None,
) -> Path:
    """Write :func:`depth_figure` of `results` as a PNG, atomically; returns the path.

    Raises:
        ValueError: If the table has no rows to plot.
    """
    figure = depth_figure(results, title=title, recommended=recommended)
    path = Path(path)
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    return path


def depth_figure(
    results: pd.DataFrame, *, title: str = "Accuracy by layer depth", recommended: pd.Series | None = None
):
    """Accuracy against relative layer depth, with error bars; LogME by depth in a second panel.

    Left panel: one line per backbone, weights, pooling and classifier of the
    final frozen rows, at their CV accuracy with error bars of ±1 fold SE
    (`cv_se`); tables without CV scores fall back to test accuracy and its Wilson
    interval. Screening rows (`row_kind == "screening"`, the fast probe on every
    layer) are drawn as a lighter line over the whole depth range. Finetune and
    scratch rows, which have no layer, are horizontal dashed lines at their test
    accuracy, with their 95 % interval shaded when known. A multi-layer row
    ("multi:a+b", no single depth) is a dash-dot segment at its CV accuracy from
    the shallowest to the deepest layer it combines, its ±SE shaded. `recommended`
    (for instance `Advice.row`) is marked with a star (a multi-layer row's at the
    middle of its segment). Right panel, when the table has a `logme` column with
    values: LogME per layer against depth. The figure is drawn on a private Agg
    canvas (no global backend change).

    Args:
        results: The results table (see `layerprobe.pipeline.results`); older
            tables without `cv_se`, `row_kind` or `logme` are drawn without them.
        title: Figure title.
        recommended: The results row to mark, or None.

    Returns:
        The matplotlib `Figure`.

    Raises:
        ValueError: If the table has no rows to plot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if results.empty or "mode" not in results:
        raise ValueError("There is nothing to plot: the results table has no rows. Received: an empty table")
    frozen = results[results["mode"] == "frozen"].copy()
    frozen["depth"] = _column(frozen, "depth")
    frozen[_GROUP] = frozen.reindex(columns=_GROUP).astype(object).fillna("-").astype(str)
    frozen = frozen.sort_values("depth", kind="stable")
    kind = frozen["row_kind"].fillna("final") if "row_kind" in frozen else pd.Series("final", index=frozen.index)
    is_multi = frozen["layer"].astype(str).str.startswith(_MULTI_PREFIX)
    screening, final = frozen[(kind == "screening") & ~is_multi], frozen[(kind != "screening") & ~is_multi]
    multi = frozen[is_multi]
    trained = results[results["mode"] != "frozen"]
    logme = _column(frozen, "logme")
    with_logme = bool(logme.notna().sum() >= 1)
    figure = Figure(figsize=(14 if with_logme else 9, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 2, 1) if with_logme else figure.add_subplot()
    markers = "osD^v<>p*h"
    groups = {key: number for number, key in enumerate(dict.fromkeys(
        tuple(row) for row in frozen[_GROUP].itertuples(index=False)))}
    what = "accuracy"
    for rows, light in ((screening, True), (final, False)):
        for key, group in rows.groupby(_GROUP, sort=False, dropna=False):
            number = groups[tuple(key)]
            for style, (classifier, line) in zip(("-", "--", ":", "-."), group.groupby("classifier", sort=False)):
                y, yerr, what = _score_and_error(line)
                axes.errorbar(
                    line["depth"], y, yerr=yerr, linestyle=style, marker=markers[number % len(markers)],
                    color=f"C{number}", alpha=0.35 if light else 1.0, capsize=3, markersize=4 if light else 6,
                    label=f"{key[0]} [{key[1]}] {key[2]} / {classifier}" + (" (screening)" if light else ""),
                )
    for _, row in multi.iterrows():
        number = groups[tuple(row[_GROUP])]
        (low_depth, high_depth), (y, yerr, _) = _multi_layer_span(row, frozen), _score_and_error(row.to_frame().T)
        y = float(y.iloc[0])
        axes.plot([low_depth, high_depth], [y, y], linestyle="-.", marker="|", markersize=12, color=f"C{number}",
                  linewidth=2, label=f"{row['layer']} / {row['classifier']} (cv chose the layers: optimistic)")
        if yerr is not None and yerr.ndim == 1 and yerr[0] > 0:
            axes.fill_between([low_depth, high_depth], y - yerr[0], y + yerr[0], color=f"C{number}", alpha=0.12)
    layers = frozen[~is_multi].drop_duplicates(["layer", "depth"])
    if layers["depth"].is_unique and 0 < len(layers) <= 12:  # name the layers along the x axis
        axes.set_xticks(layers["depth"], layers["layer"], rotation=30, ha="right", fontsize=8)
    for number, (_, row) in enumerate(trained.iterrows(), start=len(groups)):
        accuracy = row.get("test_accuracy")
        if not isinstance(accuracy, (int, float)) or not math.isfinite(accuracy):
            continue
        axes.axhline(accuracy, linestyle="--", color=f"C{number}",
                     label=f"{row['mode']}: {row['backbone']} [{row['weights']}] (test)")
        low, high = row.get("test_ci_low"), row.get("test_ci_high")
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)):
            axes.axhspan(low, high, color=f"C{number}", alpha=0.12)
    if recommended is not None and recommended.get("mode", "frozen") == "frozen":
        y = recommended.get("cv_score")
        if not isinstance(y, (int, float)) or not math.isfinite(y):
            y = recommended.get("test_accuracy")
        x = recommended.get("depth")
        if str(recommended.get("layer", "")).startswith(_MULTI_PREFIX):
            x = float(np.mean(_multi_layer_span(recommended, frozen)))
        axes.plot([x], [y], marker="*", markersize=18, color="gold", markeredgecolor="black",
                  linestyle="none", zorder=5,
                  label=f"recommended: {recommended.get('classifier', '')} on {recommended.get('layer', '')}")
    elif recommended is not None:
        axes.plot([], [], marker="*", markersize=14, color="gold", markeredgecolor="black", linestyle="none",
                  label=f"recommended: {recommended.get('mode')} (dashed line)")
    axes.set_xlabel("relative layer depth (layer index / number of layers)")
    axes.set_ylabel(f"{what} (frozen layers); test accuracy (dashed)")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.set_title(title)
    axes.legend(fontsize=7, loc="lower left")
    if with_logme:
        right = figure.add_subplot(1, 2, 2)
        per_layer = frozen.assign(logme=logme).dropna(subset=["logme"]).drop_duplicates(_GROUP + ["layer"])
        for key, group in per_layer.groupby(_GROUP, sort=False, dropna=False):
            number = groups[tuple(key)]
            right.plot(group["depth"], group["logme"], marker=markers[number % len(markers)], color=f"C{number}",
                       label=f"{key[0]} [{key[1]}] {key[2]}")
        right.set_xlabel("relative layer depth")
        right.set_ylabel("LogME (higher: features fit the labels better)")
        right.set_title("LogME by depth (training split, no fitting)")
        right.grid(alpha=0.3)
        right.legend(fontsize=7, loc="lower left")
    return figure

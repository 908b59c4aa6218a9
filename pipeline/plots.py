"""Figures of a run's results table and of predictions (matplotlib, drawn off-screen)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.atomic import write_atomically
from .probes.multilayer import multi_layer_name
from .tables import backbone_labels

__all__ = ["CV_SCORE", "LOGME_MIN_SPAN", "TEST_SCORE", "VAL_SCORE", "depth_figure", "plot_confusion", "plot_depth"]

_MULTI_PREFIX = multi_layer_name([])  # "multi:"
_GROUP = ["backbone", "weights", "pooling"]
_STYLES = ("-", "--", "-.", ":")
_MARKERS = "osD^v<>ph"

CV_SCORE = "CV ± SE"
"""What a frozen row's point shows: its cross-validation accuracy on the training split, ± its fold SE."""
VAL_SCORE = "val"
"""What a finetune or scratch row shows when it has one: its accuracy on the part of the training split it held out."""
TEST_SCORE = "test, 95% CI"
"""What a row without a CV score shows (finetune and scratch rows, old tables): test accuracy and its Wilson interval."""
LOGME_MIN_SPAN = 0.25
"""The LogME panel spans at least this much, so that differences of a few hundredths, which do not rank layers
on small training sets, look as small as they are."""


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column, all NaN when the table predates it."""
    if name not in frame:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce")


def _score_and_error(rows: pd.DataFrame) -> tuple[pd.Series, np.ndarray, str]:
    """(y, yerr as a 2 x n array, what): CV ± fold SE when the rows have CV scores, else test accuracy and its
    Wilson interval (zero-width where unknown)."""
    cv = _column(rows, "cv_score")
    if cv.notna().any():
        se = _column(rows, "cv_se").fillna(0).to_numpy()
        return cv, np.vstack([se, se]), CV_SCORE
    test = _column(rows, "test_accuracy")
    low, high = _column(rows, "test_ci_low"), _column(rows, "test_ci_high")
    return test, np.vstack([(test - low).fillna(0).clip(lower=0), (high - test).fillna(0).clip(lower=0)]), TEST_SCORE


def _multi_layer_span(row: pd.Series, frozen: pd.DataFrame) -> tuple[float, float]:
    """The depths of the shallowest and deepest layers a multi-layer row combines (0, 1 when unknown)."""
    key = ["-" if pd.isna(value) else str(value) for value in row.reindex(_GROUP)]  # as `frozen[_GROUP]` holds it
    same = frozen[(frozen[_GROUP] == key).all(axis=1)]
    depth_of = dict(zip(same["layer"].astype(str), same["depth"]))
    depths = [depth_of.get(name, math.nan) for name in str(row["layer"]).removeprefix(_MULTI_PREFIX).split("+")]
    depths = [depth for depth in depths if math.isfinite(depth)]
    return (min(depths), max(depths)) if depths else (0.0, 1.0)


def _group_labels(keys: list[tuple]) -> dict[tuple, str]:
    """Legend name of each (backbone, weights, pooling) group: `tables.backbone_labels`, the pooling when it varies."""
    names = backbone_labels([{"backbone": backbone, "weights": weights} for backbone, weights, _ in keys])
    several_poolings = len({pooling for *_, pooling in keys}) > 1
    return {key: f"{name} ({key[2]})" if several_poolings else name for key, name in zip(keys, names)}


def _limits(values: list[tuple[float, float]], chance: float | None) -> tuple[tuple[float, float], bool]:
    """The y range: the drawn values with their error bars, padded, inside [0, 1]; and whether `chance` is in it.

    The chance level joins the range when it lies less than the data's span below them (it is then a floor
    worth seeing); further below, it would squeeze the data into a thin band.
    """
    lows = [low for low, _ in values if math.isfinite(low)]
    highs = [high for _, high in values if math.isfinite(high)]
    if not lows:
        return (0.0, 1.02), chance is not None
    low, high = min(lows), max(highs)
    span = max(high - low, 0.02)
    shown = chance is not None and low - span <= chance <= high
    if shown:
        low = min(low, chance)
        span = max(high - low, 0.02)
    pad = 0.06 * span
    return (max(0.0, low - pad), min(1.02, high + pad)), shown


def _series(single: pd.DataFrame, kind: pd.Series):
    """(group key, classifier, rows, style number, screening?) of each line: one per group, classifier and row kind."""
    styles: dict[str, int] = {}
    for screening in (True, False):
        rows = single[(kind.reindex(single.index) == "screening") == screening]
        for (*key, classifier), line in rows.groupby([*_GROUP, "classifier"], sort=False, dropna=False):
            yield tuple(key), classifier, line, styles.setdefault(classifier, len(styles)), screening


def _mark(axes, recommended: pd.Series, frozen: pd.DataFrame) -> None:
    """The recommendation's star: on its curve, in the middle of a multi-layer segment, or at a trained row's line."""
    y, _, _ = _score_and_error(recommended.to_frame().T)
    y = float(y.iloc[0])
    layer = str(recommended.get("layer", ""))
    if recommended.get("mode", "frozen") != "frozen":
        x, what = 1.0, f"{recommended.get('mode')} {backbone_labels([recommended])[0]}"
    elif layer.startswith(_MULTI_PREFIX):
        x, what = float(np.mean(_multi_layer_span(recommended, frozen))), f"{recommended.get('classifier')} on " \
            f"layers {layer.removeprefix(_MULTI_PREFIX)}"
    else:
        x, what = float(recommended.get("depth")), f"{recommended.get('classifier')} on {layer}"
    axes.plot([x], [y], marker="*", markersize=18, color="gold", markeredgecolor="black", linestyle="none",
              zorder=5, label=f"recommended: {what}")


def _logme_panel(axes, frozen: pd.DataFrame, groups: dict) -> None:
    """LogME per layer by depth, one line per group, on a range at least `LOGME_MIN_SPAN` wide."""
    per_layer = frozen.dropna(subset=["logme"]).drop_duplicates([*_GROUP, "layer"])
    for key, group in per_layer.groupby(_GROUP, sort=False, dropna=False):
        number = groups[tuple(key)]
        axes.plot(group["depth"], group["logme"], marker=_MARKERS[number % len(_MARKERS)], color=f"C{number}")
    low, high = per_layer["logme"].min(), per_layer["logme"].max()
    middle, half = (low + high) / 2, max(high - low, LOGME_MIN_SPAN) / 2 * 1.1
    axes.set_ylim(middle - half, middle + half)
    axes.set_xlabel("relative layer depth")
    axes.set_ylabel("LogME (higher: features fit the labels better)")
    axes.set_title("LogME by depth (training split; colours as on the left)")
    axes.grid(alpha=0.3)


def plot_depth(
    results: pd.DataFrame,
    path: str | os.PathLike,
    *,
    title: str = "Accuracy by layer depth",
    recommended: pd.Series | None = None,
    chance: float | None = None,
) -> Path:
    """Write :func:`depth_figure` of `results` as a PNG, atomically; returns the path.

    Raises:
        ValueError: If the table has no rows to plot.
    """
    figure = depth_figure(results, title=title, recommended=recommended, chance=chance)
    path = Path(path)
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    return path


def depth_figure(
    results: pd.DataFrame,
    *,
    title: str = "Accuracy by layer depth",
    recommended: pd.Series | None = None,
    chance: float | None = None,
):
    """Accuracy against relative layer depth per backbone, the trained levels and the recommendation; LogME beside.

    Left panel: one colour per backbone and weights (and pooling, when the
    table has several; named as in the tables, `tables.backbone_labels`) and
    one line style per classifier: the frozen rows' CV accuracy with error
    bars of ±1 fold SE (`cv_se`) by depth; the legend lists the colours, then
    the styles. Screening rows (`row_kind == "screening"`, the fast probe on
    every layer) are the thinner line over the whole depth range. A
    multi-layer row ("multi:a+b", no single depth) is a wide pale band at its
    CV from the shallowest to the deepest layer it combines, named at its end,
    its ±SE shaded. Finetune and scratch rows, which have no layer, are dashed
    horizontal lines at their validation accuracy (the held-out part of the
    training split: evidence of the same kind as CV), or without one at their
    test accuracy with its 95 % interval hatched, so that no test interval
    reads as a CV band. Tables without CV scores fall back to test accuracy and
    its Wilson interval. The y label names the scores drawn. With layer names as
    ticks the x label says they are placed at their relative depth.
    `recommended` (for instance `Advice.row`) is marked with a star: on its
    curve, in the middle of a multi-layer band, or at the right end of a
    trained row's line. `chance` (the majority-class rate) is a dotted line.
    The y range fits the drawn values and their error bars (and the chance
    level when it is close below them). The legend sits below the panels.

    Right panel, when the table has LogME values: LogME per layer against depth
    (every row that has one, screening rows included), on a range at least
    `LOGME_MIN_SPAN` wide.

    The figure is drawn on a private Agg canvas (no global backend change).

    Args:
        results: The results table (see `layerprobe.pipeline.results`); older
            tables without `cv_se`, `row_kind` or `logme` are drawn without them.
        title: Figure title.
        recommended: The results row to mark, or None.
        chance: Accuracy of always answering the most frequent class, or None.

    Returns:
        The matplotlib `Figure`.

    Raises:
        ValueError: If the table has no rows to plot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if results.empty or "mode" not in results:
        raise ValueError("There is nothing to plot: the results table has no rows. Received: an empty table")
    frozen = results[results["mode"] == "frozen"].copy()
    frozen["depth"] = _column(frozen, "depth")
    frozen[_GROUP] = frozen.reindex(columns=_GROUP).astype(object).fillna("-").astype(str)
    frozen = frozen.sort_values("depth", kind="stable")
    kind = frozen["row_kind"].fillna("final") if "row_kind" in frozen else pd.Series("final", index=frozen.index)
    is_multi = frozen["layer"].astype(str).str.startswith(_MULTI_PREFIX)
    single, multi = frozen[~is_multi], frozen[is_multi]
    trained = results[results["mode"] != "frozen"]
    logme = _column(frozen, "logme")
    with_logme = bool(logme.notna().any())
    figure = Figure(figsize=(13 if with_logme else 8.5, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 2, 1) if with_logme else figure.add_subplot()
    groups = {key: number for number, key in enumerate(dict.fromkeys(
        tuple(row) for row in frozen[_GROUP].itertuples(index=False)))}
    labels = _group_labels(list(groups))
    styles: dict[str, str] = {}  # classifier -> line style
    any_screening = False
    drawn: list[tuple[float, float]] = []  # (low, high) of every value drawn: the y range
    kinds: dict[str, list[str]] = {}  # score kind -> what shows it: the y label

    def note(what: str, who: str, y, yerr) -> None:
        kinds.setdefault(what, [])
        if who not in kinds[what]:
            kinds[what].append(who)
        drawn.extend(zip(np.asarray(y, dtype=float) - yerr[0], np.asarray(y, dtype=float) + yerr[1]))

    for key, classifier, rows, style, screening in _series(single, kind):
        number, (y, yerr, what) = groups[key], _score_and_error(rows)
        note(what, "frozen layers", y, yerr)
        axes.errorbar(
            rows["depth"], y, yerr=yerr, linestyle=_STYLES[style % len(_STYLES)],
            marker=_MARKERS[number % len(_MARKERS)], color=f"C{number}", capsize=3,
            linewidth=1.0 if screening else 1.8, markersize=4 if screening else 6, alpha=0.6 if screening else 1.0,
            label=f"_{labels[key]} / {classifier}",  # "_": not in the legend, which shows colours and styles
        )
        styles[classifier] = _STYLES[style % len(_STYLES)]
        any_screening = any_screening or screening
    for _, row in multi.iterrows():
        number = groups[tuple(row[_GROUP])]
        (low_depth, high_depth), (y, yerr, what) = _multi_layer_span(row, frozen), _score_and_error(row.to_frame().T)
        if high_depth - low_depth < 0.02:  # one layer selected: a short segment, still visible
            low_depth, high_depth = low_depth - 0.01, high_depth + 0.01
        y, below, above = float(y.iloc[0]), float(yerr[0][0]), float(yerr[1][0])
        note(what, "layer combinations", [y], np.array([[below], [above]]))
        layers = str(row["layer"]).removeprefix(_MULTI_PREFIX)
        axes.plot([low_depth, high_depth], [y, y], marker="|", markersize=14, color=f"C{number}", linewidth=6,
                  alpha=0.35, solid_capstyle="butt", gid=str(row["layer"]))
        axes.annotate(layers, (high_depth, y), xytext=(4, 0), textcoords="offset points", fontsize=6,
                      color=f"C{number}", va="center")
        if below > 0 or above > 0:
            axes.fill_between([low_depth, high_depth], y - below, y + above, color=f"C{number}", alpha=0.12)
    names = single.drop_duplicates(["layer", "depth"])
    named = bool(names["depth"].is_unique and 0 < len(names) <= 12)
    if named:  # name the layers along the x axis
        axes.set_xticks(names["depth"], names["layer"], rotation=30, ha="right", fontsize=8)
    trained_handles = []
    for number, (_, row) in enumerate(trained.iterrows(), start=len(groups)):
        val = _column(row.to_frame().T, "val_accuracy")
        if val.notna().all():  # the training-split evidence the advice compares with the frozen rows' CV
            y, yerr, what = val, np.zeros((2, 1)), VAL_SCORE
        else:
            y, yerr, what = _score_and_error(row.to_frame().T)
        if not math.isfinite(float(y.iloc[0])):
            continue
        y, below, above = float(y.iloc[0]), float(yerr[0][0]), float(yerr[1][0])
        note(what, str(row["mode"]), [y], np.array([[below], [above]]))
        line = axes.axhline(y, linestyle=(0, (5, 2)), linewidth=2, color=f"C{number}")
        trained_handles.append((line, f"{row['mode']} {backbone_labels([row])[0]}, end to end ({what})"))
        if below > 0 or above > 0:  # a test interval: hatched, so it is not read as a CV band
            axes.axhspan(y - below, y + above, facecolor="none", edgecolor=f"C{number}", hatch="//", alpha=0.3)
    if recommended is not None:
        _mark(axes, recommended, frozen)
    (bottom, top), chance_shown = _limits(drawn, chance)
    if chance is not None:
        axes.axhline(chance, color="0.4", linestyle=":", linewidth=1.2,
                     label=f"majority class ({100 * chance:.1f}%)" + ("" if chance_shown else ", below the range shown"))
    legend = _legend(styles, screening=any_screening, multi=not multi.empty, trained=trained_handles)
    axes.set_ylim(bottom, top)
    axes.set_xlabel("layer, placed at its relative depth (index / number of layers)" if named else
                    "relative layer depth (layer index / number of layers)")
    axes.set_ylabel("accuracy: " + "\n".join(f"{what} ({', '.join(who)})" for what, who in kinds.items())
                    if kinds else "accuracy")
    axes.grid(alpha=0.3)
    axes.set_title(title)
    if with_logme:
        _logme_panel(figure.add_subplot(1, 2, 2), frozen.assign(logme=logme), groups)
    handles, texts = axes.get_legend_handles_labels()  # the recommendation's star, the majority class
    entries = [*((Line2D([], [], color=f"C{groups[key]}", marker=_MARKERS[groups[key] % len(_MARKERS)]), label)
                 for key, label in labels.items()), *legend, *zip(handles, texts)]
    figure.set_size_inches(figure.get_size_inches()[0], 5.5 + 0.08 * len(entries))  # room for the legend below
    figure.legend(*zip(*entries), loc="outside lower center", fontsize=8, frameon=False, ncols=2)
    return figure


def _legend(styles: dict[str, str], *, screening: bool, multi: bool, trained: list) -> list:
    """The legend's entries after the backbones' colours: a line style per classifier, then what else is drawn."""
    from matplotlib.lines import Line2D

    entries = [(Line2D([], [], color="0.3", linestyle=style), classifier) for classifier, style in styles.items()]
    if screening:
        entries.append((Line2D([], [], color="0.3", linewidth=1.0, alpha=0.6), "thin: screening (ridge, every layer)"))
    if multi:
        entries.append((Line2D([], [], color="0.3", marker="|", markersize=14, linewidth=6, alpha=0.35),
                        "band: layers combined (CV chose them: optimistic)"))
    return entries + trained


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: str | os.PathLike, *, title: str) -> Path:
    """Write a confusion matrix (rows: true class, columns: predicted) as a PNG, atomically; returns the path.

    Each cell shows its count, shaded by the share of its true class (its row),
    so a class with few images reads as clearly as a large one. Drawn on a
    private Agg canvas (no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    n = len(class_names)
    side = min(4 + 0.45 * n, 30)
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the true class")
    if n <= 40:  # counts stay legible
        for (i, j), count in np.ndenumerate(matrix):
            axes.text(j, i, str(count), ha="center", va="center", fontsize=8,
                      color="white" if shares[i, j] > 0.5 else "black")
    axes.set_xticks(range(n), class_names, rotation=90 if n > 6 else 0)
    axes.set_yticks(range(n), class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    path = Path(path)
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    return path

"""Which classifier rows a run fits on a backbone's layers: every classifier everywhere, or screening first.

Without screening every classifier is fitted on every layer ("final" rows),
and the ridge probe too ("screening" rows, the layer curve, where the config's
classifiers leave it out).
With screening (`[classifiers] screening`; "auto" for a backbone with more
than 3 layers) the ridge probe, which scores all its penalties by exact
leave-one-out from one eigendecomposition, makes a "screening" row on every
layer, and the other (grid-searched) classifiers are fitted only on the
`screening_top_k` best layers of each backbone by the ridge rows' `cv_score`
(ties: the higher LogME, then the shallower layer): "final" rows.

A backbone also gets a multi-layer row (`[classifiers] multi_layer`; "auto"
where screening is on; see `multi_layer`).

Rows come in one order, in-process and on a dask cluster: the first rows of
each backbone (its screening rows, or all its rows without screening) as it is
extracted, then the final rows of the screened backbones, then the multi-layer
rows. Every row finished by an earlier run is reused (its record), so the
screening decision of a rerun is the same and nothing is refitted. This module
decides which rows (their specs, `rows.LayerRowSpec`); `fitting.fit_rows` fits them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...core.errors import ConfigError
from ..classifiers import check_param_grid
from ..config import ClassifiersConfig, ExperimentConfig
from ..probes.multilayer import multi_layer_name
from ..results import ResultsTable
from .rows import LayerRowSpec, LayerToFit, layer_row_spec

__all__ = [
    "AUTO_SCREENING_MIN_LAYERS",
    "SCREENING_CLASSIFIER",
    "adds_multi_layer",
    "check_grid_values",
    "fill_layer_logme",
    "final_specs",
    "first_specs",
    "rank_layers",
    "screening_order",
    "screens",
]

SCREENING_CLASSIFIER = "ridge"
"""The fast probe of the screening rows (and of the multi-layer row, `multi_layer`)."""

AUTO_SCREENING_MIN_LAYERS = 4
"""`screening = "auto"` screens a backbone with at least this many layers."""

_MULTI_PREFIX = multi_layer_name([])  # "multi:"


def check_grid_values(config: ExperimentConfig) -> None:
    """Before any work: every `[classifiers.grids]` value checked as its estimator's `fit` would check it.

    Raises:
        ConfigError: Naming each grid and scikit-learn's message for its first bad value
            ("The 'C' parameter of LogisticRegression must be a float in the range (0.0, inf]. Got -1.0 instead.").
    """
    problems = []
    for name, grid in config.classifiers.grids.items():
        try:
            check_param_grid(name, dict(grid), preprocessing=config.classifiers.preprocessing,
                             pca_components=config.classifiers.pca_components)
        except ValueError as error:
            problems.append(f"[classifiers.grids] {name}: {error}")
    if problems:
        raise ConfigError(problems, config.source)


def screens(classifiers: ClassifiersConfig, n_layers: int) -> bool:
    """Whether a backbone (and pooling) with `n_layers` layers is screened."""
    option = classifiers.screening
    return n_layers >= AUTO_SCREENING_MIN_LAYERS if option == "auto" else bool(option)


def adds_multi_layer(classifiers: ClassifiersConfig, n_layers: int) -> bool:
    """Whether a backbone (and pooling) with `n_layers` layers gets a multi-layer row."""
    option = classifiers.multi_layer
    wanted = screens(classifiers, n_layers) if option == "auto" else bool(option)
    return wanted and n_layers >= 2


def first_specs(
    layers: Sequence[LayerToFit], classifiers: ClassifiersConfig, split: Mapping, models: Path
) -> list[LayerRowSpec]:
    """The rows fitted as a backbone is extracted: the screening rows, or every row without screening.

    Without screening, a backbone of two or more layers whose classifiers leave out the ridge probe still gets
    a ridge "screening" row on every layer: the layer curve the advice reads whatever else was fitted
    (`layerprobe.pipeline.advice`).
    """
    if screens(classifiers, len(layers)):
        return [layer_row_spec(layer, SCREENING_CLASSIFIER, classifiers, split, models, row_kind="screening")
                for layer in layers]
    names = classifiers.names
    curve = [] if SCREENING_CLASSIFIER in names or len(layers) < 2 else [SCREENING_CLASSIFIER]
    return [spec for layer in layers
            for spec in [layer_row_spec(layer, name, classifiers, split, models, row_kind="screening") for name in curve]
            + [layer_row_spec(layer, classifier, classifiers, split, models) for classifier in names]]


def screening_order(cv_scores: Sequence[float], logmes: Sequence[float]) -> list[int]:
    """The screening rule: positions best first by cv_score, then LogME, then position (non-finite values last)."""

    def order(position: int) -> tuple[float, float, int]:
        cv_score, logme = cv_scores[position], logmes[position]
        return (
            -cv_score if _finite(cv_score) else math.inf,
            -logme if _finite(logme) else math.inf,
            position,
        )

    return sorted(range(len(cv_scores)), key=order)


def rank_layers(layers: Sequence[LayerToFit], table: ResultsTable) -> list[LayerToFit]:
    """`layers`, best first by the `screening_order` of their screening rows in `table`."""
    screened = {}
    for row in table.rows:
        if row.get("classifier") == SCREENING_CLASSIFIER and row.get("row_kind") == "screening":
            screened[row.get("store_entry")] = row
    rows = [screened.get(layer.key.entry_name, {}) for layer in layers]
    order = screening_order([row.get("cv_score", math.nan) for row in rows], [row.get("logme", math.nan) for row in rows])
    return [layers[position] for position in order]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and math.isfinite(value)


def final_specs(
    layers: Sequence[LayerToFit], classifiers: ClassifiersConfig, split: Mapping, models: Path, table: ResultsTable,
    log: Callable[[str], None],
) -> list[LayerRowSpec]:
    """The other classifiers' rows on a screened backbone's best layers (in depth order); none without screening."""
    if not screens(classifiers, len(layers)):
        return []
    best = rank_layers(layers, table)[: classifiers.screening_top_k]
    others = [name for name in classifiers.names if name != SCREENING_CLASSIFIER]
    extraction = layers[0].extraction
    log(
        f"  screening {extraction.plan.architecture} (weights {extraction.backbone.weights_label}, "
        f"{layers[0].key.pooling}): best {len(best)} of {len(layers)} layers by {SCREENING_CLASSIFIER} "
        f"leave-one-out accuracy: {[layer.info.name for layer in best]}"
        + (f"; fitting {others} there" if others else "")
    )
    chosen = {id(layer) for layer in best}
    return [layer_row_spec(layer, classifier, classifiers, split, models)
            for layer in layers if id(layer) in chosen for classifier in others]


def fill_layer_logme(table: ResultsTable) -> None:
    """Give every row of a layer the same `logme` (the first known), rewriting the table if any changed.

    Rows reused from runs before LogME was recorded, or fitted on different dask
    workers (whose float32 products may differ in the last bits), get their
    layer's value.
    """
    single = [row for row in table.rows if not str(row.get("layer", "")).startswith(_MULTI_PREFIX)]
    known: dict[str, float] = {}
    for row in single:
        entry, value = row.get("store_entry"), row.get("logme")
        if isinstance(entry, str) and _finite(value):
            known.setdefault(entry, float(value))
    changed = False
    for row in single:
        value = known.get(row.get("store_entry"))
        if value is not None and row.get("logme") != value:
            row["logme"] = value
            changed = True
    if changed:
        table.rewrite()

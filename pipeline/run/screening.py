"""Which classifier rows a run fits on a backbone's layers: every classifier everywhere, or screening first.

Without screening every classifier is fitted on every layer ("final" rows).
With screening (`[classifiers] screening`; "auto" for a backbone with more
than 3 layers) the ridge probe, which scores all its penalties by exact
leave-one-out from one eigendecomposition, makes a "screening" row on every
layer, and the other (grid-searched) classifiers are fitted only on the
`screening_top_k` best layers of each backbone by the ridge rows' `cv_score`
(ties: the higher LogME, then the shallower layer): "final" rows.

The multi-layer row (`[classifiers] multi_layer`; "auto" where screening is
on) is a `MultiLayerProbe` on all of a backbone's layers: greedy selection of
whole layers by ridge leave-one-out accuracy, its layer named
"multi:block3_pool+block4_pool". Its `cv_score` is the LOO accuracy of the
selected concatenation, which chose the layers too, so it is optimistic;
`test_accuracy` is the fair comparison with the single-layer rows.

Rows come in one order, in-process and on a dask cluster: the first rows of
each backbone (its screening rows, or all its rows without screening) as it is
extracted, then the final rows of the screened backbones, then the multi-layer
rows. Every row finished by an earlier run is reused (its sidecar), so the
screening decision of a rerun is the same and nothing is refitted.
"""

from __future__ import annotations

import hashlib
import json
import math
from itertools import groupby
from typing import Any, Callable, Sequence

import numpy as np

from ...features.core.errors import InputError
from ..config import ExperimentConfig
from ..evaluate import evaluate
from ..persistence import save_classifier, write_predictions
from ..predict import extractor_record, flat_features
from ..probes.multilayer import MultiLayerProbe, multi_layer_name
from ..results import ResultsTable
from ..uncertainty import binomial_se
from .cluster_rows import fit_layers_on_cluster
from .rows import LayerToFit, RowJob, finished_row, fit_layer, jsonable, load_splits

__all__ = [
    "AUTO_SCREENING_MIN_LAYERS",
    "SCREENING_CLASSIFIER",
    "adds_multi_layer",
    "fill_layer_logme",
    "final_jobs",
    "first_jobs",
    "fit_jobs",
    "multi_layer_row",
    "rank_layers",
    "screens",
]

SCREENING_CLASSIFIER = "ridge"
"""The fast probe of the screening rows (and of the multi-layer row)."""

AUTO_SCREENING_MIN_LAYERS = 4
"""`screening = "auto"` screens a backbone with at least this many layers."""

_MULTI_PREFIX = multi_layer_name([])  # "multi:"

MULTI_LAYER_TOL = 0.002
"""A layer joins the multi-layer probe if it raises the LOO accuracy by at least this (0.2 points)."""


def screens(config: ExperimentConfig, n_layers: int) -> bool:
    """Whether a backbone (and pooling) with `n_layers` layers is screened."""
    option = config.classifiers.screening
    return n_layers >= AUTO_SCREENING_MIN_LAYERS if option == "auto" else bool(option)


def adds_multi_layer(config: ExperimentConfig, n_layers: int) -> bool:
    """Whether a backbone (and pooling) with `n_layers` layers gets a multi-layer row."""
    option = config.classifiers.multi_layer
    wanted = screens(config, n_layers) if option == "auto" else bool(option)
    return wanted and n_layers >= 2


def first_jobs(layers: Sequence[LayerToFit], config: ExperimentConfig) -> list[RowJob]:
    """The rows fitted as a backbone is extracted: the screening rows, or every row without screening."""
    if screens(config, len(layers)):
        return [RowJob(layer, SCREENING_CLASSIFIER, "screening") for layer in layers]
    return [RowJob(layer, classifier, "final") for layer in layers for classifier in config.classifiers.names]


def rank_layers(layers: Sequence[LayerToFit], table: ResultsTable) -> list[LayerToFit]:
    """`layers`, best first by the cv_score of their screening rows in `table` (then LogME, then depth order)."""
    screened = {}
    for row in table.rows:
        if row.get("classifier") == SCREENING_CLASSIFIER and row.get("row_kind") == "screening":
            screened[row.get("store_entry")] = row

    def order(position: int) -> tuple[float, float, int]:
        row = screened.get(layers[position].key.entry_name, {})
        cv_score, logme = row.get("cv_score", math.nan), row.get("logme", math.nan)
        return (
            -cv_score if _finite(cv_score) else math.inf,
            -logme if _finite(logme) else math.inf,
            position,
        )

    return [layers[position] for position in sorted(range(len(layers)), key=order)]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and math.isfinite(value)


def final_jobs(
    layers: Sequence[LayerToFit], config: ExperimentConfig, table: ResultsTable, log: Callable[[str], None]
) -> list[RowJob]:
    """The other classifiers' rows on a screened backbone's best layers (in depth order); none without screening."""
    if not screens(config, len(layers)):
        return []
    best = rank_layers(layers, table)[: config.classifiers.screening_top_k]
    classifiers = [name for name in config.classifiers.names if name != SCREENING_CLASSIFIER]
    extraction = layers[0].extraction
    log(
        f"  screening {extraction.plan.architecture} (weights {extraction.backbone.weights_label}, "
        f"{layers[0].key.pooling}): best {len(best)} of {len(layers)} layers by {SCREENING_CLASSIFIER} "
        f"leave-one-out accuracy: {[layer.info.name for layer in best]}"
        + (f"; fitting {classifiers} there" if classifiers else "")
    )
    chosen = {id(layer) for layer in best}
    return [RowJob(layer, classifier, "final") for layer in layers if id(layer) in chosen for classifier in classifiers]


def fit_jobs(
    jobs: Sequence[RowJob],
    config: ExperimentConfig,
    split: dict,
    table: ResultsTable,
    log: Callable[[str], None],
    *,
    client: Any = None,
) -> int:
    """Add the rows of `jobs` in order, reused or fitted (on the cluster of `client` if given); returns the fits."""
    if not jobs:
        return 0
    if client is not None:
        return fit_layers_on_cluster([], config, split, table, log, client, row_jobs=jobs)
    fitted = 0
    for _, group in groupby(jobs, key=lambda job: (id(job.layer), job.row_kind)):
        group = list(group)
        fitted += fit_layer(
            group[0].layer, config, split, table, log,
            classifiers=[job.classifier for job in group], row_kind=group[0].row_kind,
        )
    return fitted


def multi_layer_row(
    layers: Sequence[LayerToFit], config: ExperimentConfig, split: dict, table: ResultsTable, log: Callable[[str], None]
) -> int:
    """Add the multi-layer row of one backbone's layers, reused or fitted; returns 1 if fitted, else 0.

    Raises:
        InputError: Before the fit, if a layer's features hold NaN or inf, its
            classes are too small, or the layers do not hold the same samples.
    """
    extraction = layers[0].extraction
    alphas = config.classifiers.param_grid(SCREENING_CLASSIFIER).get("alphas")
    settings = jsonable({
        "store_keys": [layer.key.digest for layer in layers],
        "classifier": "multi_layer",
        "alphas": alphas,
        "tol": MULTI_LAYER_TOL,
        "split": split,
    })
    digest = hashlib.sha256(json.dumps(settings["store_keys"]).encode()).hexdigest()[:16]
    folder = f"{extraction.plan.architecture}.multi.{layers[0].key.pooling}.{digest}"
    stem = config.output.dir / "models" / folder / SCREENING_CLASSIFIER
    finished = finished_row(stem, settings)
    row = finished or _fit_multi_layer(layers, alphas, settings, stem, split)
    log(
        f"  {'fitted' if finished is None else 'reused'} {row['layer']} / {SCREENING_CLASSIFIER}: "
        f"cv {row['cv_score']:.3f}, test {row['test_accuracy']:.3f}"
    )
    table.add({**row, "row_kind": "final"})
    return int(finished is None)


def _fit_multi_layer(
    layers: Sequence[LayerToFit], alphas: Any, settings: dict, stem: Any, split: dict
) -> dict:
    """Select layers greedily on the training split, score once on the test split, save the probe."""
    extraction = layers[0].extraction
    splits = [load_splits(layer, split) for layer in layers]
    train, test = splits[0]
    for layer, (other_train, other_test) in zip(layers[1:], splits[1:]):
        if not (np.array_equal(other_train.sample_ids, train.sample_ids)
                and np.array_equal(other_test.sample_ids, test.sample_ids)):
            raise InputError(
                f"The layers of {extraction.plan.architecture} hold different samples ({layers[0].info.name} and "
                f"{layer.info.name}), so they cannot be concatenated; extract them together (one backbone entry) "
                f"or set [classifiers] multi_layer = false. Received: store entries {layers[0].key.entry_name}, "
                f"{layer.key.entry_name}"
            )
    names = [layer.info.name for layer in layers]
    kwargs = {} if alphas is None else {"alphas": tuple(alphas)}
    probe = MultiLayerProbe(**kwargs, tol=MULTI_LAYER_TOL).fit(
        {name: flat_features(part) for name, (part, _) in zip(names, splits)}, train.y
    )
    X_test = probe.transform({name: flat_features(part) for name, (_, part) in zip(names, splits)})
    scores = evaluate(probe.estimator_, X_test, test.y, test.class_names)
    selected = [layer for layer in layers if layer.info.name in probe.selected_layers_]
    n_train, n_test = len(train.y), len(test.y)
    row = {
        "mode": "frozen",
        "backbone": extraction.plan.architecture,
        "weights": extraction.backbone.weights_label,
        "layer": probe.name_,
        "stage": None,
        "depth": math.nan,
        "pooling": layers[0].key.pooling,
        "classifier": SCREENING_CLASSIFIER,
        "feature_dim": int(probe.n_features_in_),
        "n_train": n_train,
        "n_test": n_test,
        "cv_score": probe.cv_score_,
        "cv_se": binomial_se(probe.cv_score_, n_train),
        "n_folds": n_train,
        "test_accuracy": scores.accuracy,
        "test_balanced_accuracy": scores.balanced_accuracy,
        "test_macro_f1": scores.macro_f1,
        "logme": math.nan,
        "fit_seconds": round(probe.fit_seconds_, 3),
        "best_params": json.dumps({"alpha": probe.alpha_, "layers": probe.selected_layers_}, sort_keys=True),
        "store_entry": "+".join(layer.key.entry_name for layer in selected),
    }
    stem.with_suffix(".json").unlink(missing_ok=True)
    write_predictions(
        stem.with_name(f"{stem.name}.predictions.csv"), test.sample_ids, test.y, scores.y_pred, test.class_names
    )
    sidecar = {
        "fit_settings": settings,
        "row": row,
        "store_keys": [layer.key.to_dict() for layer in selected],
        "store_entries": [layer.key.entry_name for layer in selected],
        "store": str(layers[0].store.root),
        "extractors": [
            extractor_record(extraction.settings, layer.info.name, extraction.plan.input_size) for layer in selected
        ],
        "classifier": "multi_layer",
        "best_params": {"alpha": probe.alpha_, "layers": probe.selected_layers_},
        "cv_score": probe.cv_score_,
        "selection_path": probe.selection_path_,
        "scores": scores.as_dict(),
        "class_names": list(test.class_names),
    }
    model_path = save_classifier(stem, probe, sidecar)
    return {**row, "model_path": str(model_path)}


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

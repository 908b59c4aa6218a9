"""The multi-layer row of a backbone: a `MultiLayerProbe` on all its layers, fitted or reused.

The probe selects whole layers greedily by ridge leave-one-out accuracy; the
row's layer is named "multi:block3_pool+block4_pool". Its `cv_score` is nested
cross-validation (`nested_cv_scores`: `[classifiers] cv` outer folds, the whole
selection repeated inside each), so it is not optimistic and compares with the
single-layer rows' CV; `cv_se` is its SE over the outer folds. The probe's own
leave-one-out score of the layers it selected, which is optimistic, stays in
the model's sidecar (`selection_cv_score`). The row's record is keyed by its
layers' store keys, the penalties, the tolerance, the outer folds, the seed
and the split, like any row (`records.fit_or_reuse`).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.base import clone

from ...core.errors import InputError
from ...features.flops import gflops
from ...features.keys import safe_name
from ..classifiers import flat_features
from ..config import ExperimentConfig
from ..evaluate import evaluate
from ..persistence import features_record, save_classifier, write_predictions
from ..probes.multilayer import MultiLayerProbe, nested_cv_scores
from ..uncertainty import fold_se
from .records import RowRecord, RunRows, fit_or_reuse, jsonable
from .rows import LayerToFit, load_splits
from .screening import SCREENING_CLASSIFIER

__all__ = ["MULTI_LAYER_TOL", "multi_layer_record", "multi_layer_row"]

MULTI_LAYER_TOL = 0.002
"""A layer joins the multi-layer probe if it raises the LOO accuracy by at least this (0.2 points)."""


def multi_layer_record(layers: Sequence[LayerToFit], config: ExperimentConfig, split: dict) -> RowRecord:
    """The record of one backbone's multi-layer row: `models/<backbone>.multi.<pooling>.<digest>/ridge.row.json`."""
    settings = jsonable({
        "store_keys": [layer.key.digest for layer in layers],
        "classifier": "multi_layer",
        "alphas": config.classifiers.param_grid(SCREENING_CLASSIFIER).get("alphas"),
        "tol": MULTI_LAYER_TOL,
        "nested_cv": config.classifiers.cv,
        "seed": config.classifiers.seed,
        "split": split,
    })
    digest = hashlib.sha256(json.dumps(settings["store_keys"]).encode()).hexdigest()[:16]
    architecture, pooling = layers[0].extraction.plan.architecture, layers[0].key.pooling
    models = config.output.dir / "models"
    folder = models / f"{safe_name(architecture, 'multi', pooling)}.{digest}"
    # Older layerprobe versions named the folder unsanitized; such a folder is looked up only when its name is
    # one plain path component (no separator, not "..").
    legacy = f"{architecture}.multi.{pooling}.{digest}"
    plain = Path(legacy).name == legacy and "\\" not in legacy and legacy not in (".", "..")
    return RowRecord(
        folder / f"{SCREENING_CLASSIFIER}.row.json", settings,
        legacy_sidecar=models / legacy / f"{SCREENING_CLASSIFIER}.json" if plain else None,
    )


def multi_layer_row(layers: Sequence[LayerToFit], config: ExperimentConfig, split: dict, rows: RunRows) -> None:
    """Add the multi-layer row of one backbone's layers to `rows`, reused or fitted.

    Raises:
        InputError: Before the fit, if a layer's features hold NaN or inf, its
            classes are too small, or the layers do not hold the same samples.
    """
    record = multi_layer_record(layers, config, split)
    row, fitted = fit_or_reuse(record, lambda: _fit_multi_layer(layers, record, split))
    rows.add({**row, "row_kind": "final"}, fitted=fitted, what=f"{row['layer']} / {SCREENING_CLASSIFIER}")


def _fit_multi_layer(layers: Sequence[LayerToFit], record: RowRecord, split: dict) -> tuple[dict, Path]:
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
    X_train = np.hstack([flat_features(part) for part, _ in splits])
    X_test = np.hstack([flat_features(part) for _, part in splits])
    alphas = record.settings["alphas"]
    unfitted = MultiLayerProbe(
        [flat_features(part).shape[1] for part, _ in splits], [layer.info.name for layer in layers],
        **({} if alphas is None else {"alphas": tuple(alphas)}), tol=MULTI_LAYER_TOL,
    )
    fold_scores = nested_cv_scores(unfitted, X_train, train.y, cv=record.settings["nested_cv"],
                                   random_state=record.settings["seed"])
    probe = clone(unfitted).fit(X_train, train.y)
    scores = evaluate(test.y, probe.predict(X_test), test.class_names)
    selected = [layer for layer in layers if layer.info.name in probe.selected_layers_]
    n_train = len(train.y)
    row = {
        "mode": "frozen",
        "backbone": extraction.plan.architecture,
        "weights": extraction.backbone.weights_label,
        "layer": probe.name_,
        "stage": None,
        "depth": math.nan,
        "pooling": layers[0].key.pooling,
        "classifier": SCREENING_CLASSIFIER,
        "feature_dim": sum(probe.feature_dims_[name] for name in probe.selected_layers_),
        "forward_gflops": gflops(_deepest_flops(selected)),
        "n_train": n_train,
        "n_test": len(test.y),
        "cv_score": float(np.mean(fold_scores)),
        "cv_se": fold_se(fold_scores),
        "n_folds": len(fold_scores),
        "test_accuracy": scores.accuracy,
        "test_balanced_accuracy": scores.balanced_accuracy,
        "test_macro_f1": scores.macro_f1,
        "logme": math.nan,
        "fit_seconds": round(probe.fit_seconds_, 3),
        "best_params": json.dumps({"alpha": probe.alpha_, "layers": probe.selected_layers_}, sort_keys=True),
        "store_entry": "+".join(layer.key.entry_name for layer in selected),
    }
    stem = record.path.with_name(SCREENING_CLASSIFIER)
    write_predictions(
        stem.with_name(f"{stem.name}.predictions.csv"), test.sample_ids, test.y, scores.y_pred, test.class_names
    )
    sidecar = {
        # The probe reads every layer of the backbone (its columns side by side) and uses the selected ones.
        **features_record(extraction.get_config(), [layer.info.name for layer in layers], layers[0].store.root,
                          [layer.key for layer in layers]),
        "classifier": "multi_layer",
        "best_params": {"alpha": probe.alpha_, "layers": probe.selected_layers_},
        "cv_score": float(np.mean(fold_scores)),
        "selection_cv_score": probe.cv_score_,
        "selection_path": probe.selection_path_,
        "scores": scores.as_dict(),
        "class_names": list(test.class_names),
    }
    return row, save_classifier(stem, probe, sidecar)


def _deepest_flops(layers: Sequence[LayerToFit]) -> int | None:
    """Forward FLOPs to the deepest of `layers` (the pass a deployed multi-layer probe runs), None if unknown."""
    flops = [layer.info.forward_flops for layer in layers]
    return None if None in flops else max(flops)

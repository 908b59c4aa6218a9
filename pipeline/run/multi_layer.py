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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.base import clone

from ...core.errors import InputError
from ...features.flops import gflops
from ...features.keys import FeatureKey, safe_name
from ..classifiers import flat_features
from ..config import ClassifiersConfig
from ..evaluate import evaluate
from ..persistence import features_record
from ..probes.multilayer import MultiLayerProbe, nested_cv_scores
from ..results import Row
from ..uncertainty import fold_se
from .records import RowRecord, RowSpec, jsonable
from .rows import FittedRow, LayerFeatures, LayerToFit
from .screening import SCREENING_CLASSIFIER

__all__ = ["MULTI_LAYER_TOL", "MultiLayerSpec", "multi_layer_spec"]

MULTI_LAYER_TOL = 0.002
"""A layer joins the multi-layer probe if it raises the LOO accuracy by at least this (0.2 points)."""


@dataclass(frozen=True, eq=False)
class MultiLayerSpec(RowSpec):
    """One backbone's multi-layer row: the settings of its fit (the key), and where it goes.

    Attributes:
        keys: The store keys of the backbone's layers, in depth order.
        alphas: The ridge penalties searched (None: the probe's default).
        tol: The LOO accuracy a layer must add to join.
        nested_cv: Outer folds of the nested CV that scores the selection (`nested_cv_scores`).
        seed: Seed of those folds.
        split: The split definition, (name, value) pairs.
        layers: The layers' names (not part of the key: the store keys name them).
        layer_flops: Forward FLOPs to each layer, None where unknown (not part of the key).
        architecture, weights_label, pooling: For the row.
        store_root: The feature store (not part of the key).
        models: The run's `OUT/models` folder.
        extractor: The extractor's `get_config()`, recorded in the probe's sidecar.
    """

    keys: tuple[FeatureKey, ...]
    alphas: tuple[float, ...] | None
    tol: float
    nested_cv: int
    seed: int
    split: tuple[tuple[str, Any], ...]
    layers: tuple[str, ...]
    layer_flops: tuple[int | None, ...]
    architecture: str
    weights_label: str
    pooling: str
    store_root: str
    models: Path
    extractor: Mapping[str, Any]
    row_kind: str = "final"

    def settings(self) -> dict:
        return jsonable({
            "store_keys": [key.digest for key in self.keys],
            "classifier": "multi_layer",
            "alphas": None if self.alphas is None else list(self.alphas),
            "tol": self.tol,
            "nested_cv": self.nested_cv,
            "seed": self.seed,
            "split": dict(self.split),
        })

    def record(self) -> RowRecord:
        """`models/<backbone>.multi.<pooling>.<digest>/ridge.row.json`."""
        digest = hashlib.sha256(json.dumps([key.digest for key in self.keys]).encode()).hexdigest()[:16]
        folder = self.models / f"{safe_name(self.architecture, 'multi', self.pooling)}.{digest}"
        # Older layerprobe versions named the folder unsanitized; such a folder is looked up only when its name is
        # one plain path component (no separator, not "..").
        legacy = f"{self.architecture}.multi.{self.pooling}.{digest}"
        plain = Path(legacy).name == legacy and "\\" not in legacy and legacy not in (".", "..")
        return RowRecord(
            folder / f"{SCREENING_CLASSIFIER}.row.json", self.settings(),
            legacy_sidecar=self.models / legacy / f"{SCREENING_CLASSIFIER}.json" if plain else None,
        )

    def store_read(self) -> str:
        return self.store_root

    def layers_read(self) -> tuple[str, ...]:
        return tuple(key.entry_name for key in self.keys)

    def fit(self, features: LayerFeatures | None = None, *, rows_at_once: int = 1) -> FittedRow:
        """Select layers greedily on the training split, score once on the test split.

        Raises:
            InputError: Before the fit, if a layer's features hold NaN or inf, its
                classes are too small, or the layers do not hold the same samples.
        """
        features = LayerFeatures() if features is None else features
        split = dict(self.split)
        try:
            splits = [features.splits(self.store_root, key, split, layer=name) for key, name in zip(self.keys, self.layers)]
            return self._fit(splits)
        finally:
            for key in self.keys:
                features.done(key)

    def _fit(self, splits: Sequence[tuple[Any, Any]]) -> FittedRow:
        train, test = splits[0]
        for key, name, (other_train, other_test) in zip(self.keys[1:], self.layers[1:], splits[1:]):
            if not (np.array_equal(other_train.sample_ids, train.sample_ids)
                    and np.array_equal(other_test.sample_ids, test.sample_ids)):
                raise InputError(
                    f"The layers of {self.architecture} hold different samples ({self.layers[0]} and {name}), so "
                    f"they cannot be concatenated; extract them together (one backbone entry) or set "
                    f"[classifiers] multi_layer = false. Received: store entries {self.keys[0].entry_name}, "
                    f"{key.entry_name}"
                )
        X_train = np.hstack([flat_features(part) for part, _ in splits])
        X_test = np.hstack([flat_features(part) for _, part in splits])
        unfitted = MultiLayerProbe(
            [flat_features(part).shape[1] for part, _ in splits], list(self.layers),
            **({} if self.alphas is None else {"alphas": self.alphas}), tol=self.tol,
        )
        fold_scores = nested_cv_scores(unfitted, X_train, train.y, cv=self.nested_cv, random_state=self.seed)
        probe = clone(unfitted).fit(X_train, train.y)
        scores = evaluate(test.y, probe.predict(X_test), test.class_names)
        selected = [key for key, name in zip(self.keys, self.layers) if name in probe.selected_layers_]
        selected_flops = [flops for name, flops in zip(self.layers, self.layer_flops) if name in probe.selected_layers_]
        n_train = len(train.y)
        row = Row(
            mode="frozen",
            backbone=self.architecture,
            weights=self.weights_label,
            layer=probe.name_,
            stage=None,
            depth=math.nan,
            pooling=self.pooling,
            classifier=SCREENING_CLASSIFIER,
            row_kind=self.row_kind,
            feature_dim=sum(probe.feature_dims_[name] for name in probe.selected_layers_),
            # The forward pass a deployed multi-layer probe runs: to the deepest layer it reads.
            forward_gflops=gflops(None if None in selected_flops else max(selected_flops)),
            n_train=n_train,
            n_test=len(test.y),
            cv_score=float(np.mean(fold_scores)),
            cv_se=fold_se(fold_scores),
            n_folds=len(fold_scores),
            test_accuracy=scores.accuracy,
            test_balanced_accuracy=scores.balanced_accuracy,
            test_macro_f1=scores.macro_f1,
            logme=math.nan,
            fit_seconds=round(probe.fit_seconds_, 3),
            best_params=json.dumps({"alpha": probe.alpha_, "layers": probe.selected_layers_}, sort_keys=True),
            store_entry="+".join(key.entry_name for key in selected),
        )
        sidecar = {
            "classifier": "multi_layer",
            "best_params": {"alpha": probe.alpha_, "layers": probe.selected_layers_},
            "cv_score": float(np.mean(fold_scores)),
            "selection_cv_score": probe.cv_score_,
            "selection_path": probe.selection_path_,
            "scores": scores.as_dict(),
            "class_names": list(test.class_names),
        }
        return FittedRow(row, probe, sidecar, scores, None, test.sample_ids, test.y, tuple(test.class_names))

    def save(self, fitted: FittedRow) -> tuple[Row, Path]:
        # The probe reads every layer of the backbone (its columns side by side) and uses the selected ones.
        features = features_record(self.extractor, list(self.layers), self.store_root, list(self.keys))
        return fitted.save(self.record().path.with_name(SCREENING_CLASSIFIER), features)

    def describe(self, row: Row) -> str:
        return f"{row.layer} / {SCREENING_CLASSIFIER}"


def multi_layer_spec(
    layers: Sequence[LayerToFit], classifiers: ClassifiersConfig, split: Mapping, models: Path
) -> MultiLayerSpec:
    """The spec of the multi-layer row on one backbone's `layers`, its penalties those of `[classifiers]`'s ridge."""
    alphas = classifiers.param_grid(SCREENING_CLASSIFIER).get("alphas")
    extraction = layers[0].extraction
    return MultiLayerSpec(
        keys=tuple(layer.key for layer in layers),
        alphas=None if alphas is None else tuple(alphas),
        tol=MULTI_LAYER_TOL,
        nested_cv=classifiers.cv,
        seed=classifiers.seed,
        split=tuple(split.items()),
        layers=tuple(layer.info.name for layer in layers),
        layer_flops=tuple(layer.info.forward_flops for layer in layers),
        architecture=extraction.plan.architecture,
        weights_label=extraction.backbone.weights_label,
        pooling=layers[0].key.pooling,
        store_root=str(layers[0].store.root),
        models=models,
        extractor=extraction.get_config(),
    )

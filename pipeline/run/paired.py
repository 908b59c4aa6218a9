"""Finetune against frozen on equal terms: both scored on the same held-out images of the training split.

A finetune or scratch row's training holds out a stratified part of the
training split (`[finetune] val_fraction`) and writes its predictions on it
beside its model (`VAL_PREDICTIONS`). `paired_scores` refits the frozen
choice's classifier (`sklearn.base.clone`: the same hyperparameters) on the
training split without those images, predicts them, and counts the images
each got right: a `PairedScore`, which the advice compares by McNemar's exact
test (`layerprobe.pipeline.advice`). The classes absent from the held-out part
are recorded too: such a part decides nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Hashable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import clone

from ...features.store import FeatureStore
from ..advice import PairedScore
from ..classifiers import flat_features
from ..persistence import load_classifier

__all__ = ["VAL_PREDICTIONS", "paired_scores", "val_predictions_path"]

VAL_PREDICTIONS = "val.predictions.csv"
"""A trained row's predictions on the held-out part of the training split, beside its model file."""


def val_predictions_path(model_path: str | Path) -> Path:
    """Where a trained row's held-out predictions are, beside its model file."""
    return Path(model_path).with_name(VAL_PREDICTIONS)


def _frozen_predictions(row: pd.Series, held_out: Sequence[str], store: FeatureStore, train_split: str,
                        class_names: Sequence[str]) -> pd.Series:
    """The frozen row's classifier refitted without `held_out`: sample id -> predicted class name on them."""
    estimator, sidecar = load_classifier(row["model_path"])
    parts = [store.load(entry, split=train_split) for entry in sidecar["store_entries"]]
    X = np.hstack([flat_features(part) for part in parts])
    ids = np.asarray(parts[0].sample_ids).astype(str)
    held = np.isin(ids, np.asarray(held_out, dtype=str))
    refitted = clone(estimator).fit(X[~held], parts[0].y[~held])
    return pd.Series(np.asarray(class_names)[refitted.predict(X[held])], index=ids[held])


def paired_scores(frame: pd.DataFrame, frozen_choice: pd.Series | None, store: FeatureStore, train_split: str,
                  class_names: Sequence[str]) -> dict[Hashable, PairedScore]:
    """Each trained row with held-out predictions, scored against `frozen_choice` on the same images.

    Args:
        frame: The run's results table.
        frozen_choice: The frozen row the advice chose (`Advice.frozen_choice`), or None.
        store: The feature store its features are in.
        train_split: The name of the training split.
        class_names: The dataset's class names.

    Returns:
        Trained row's index label -> `PairedScore` (n = 0 when there is no frozen row to compare with).
    """
    scores: dict[Hashable, PairedScore] = {}
    trained = frame[frame["mode"].isin(["finetune", "scratch"])] if "mode" in frame else frame.iloc[:0]
    for index, row in trained.iterrows():
        path = val_predictions_path(row["model_path"]) if isinstance(row.get("model_path"), str) else None
        if path is None or not path.is_file():
            continue
        held = pd.read_csv(path, dtype={"sample_id": str, "true_label": str, "predicted_label": str})
        missing = tuple(name for name in class_names if name not in set(held["true_label"]))
        if frozen_choice is None or missing:
            scores[index] = PairedScore(0, 0, 0, 0, 0, missing_classes=missing)
            continue
        frozen = _frozen_predictions(frozen_choice, held["sample_id"], store, train_split, class_names)
        held = held[held["sample_id"].isin(frozen.index)]
        trained_right = (held["predicted_label"] == held["true_label"]).to_numpy()
        frozen_right = (frozen.loc[held["sample_id"]].to_numpy() == held["true_label"].to_numpy())
        scores[index] = PairedScore(
            n=len(held), trained_correct=int(trained_right.sum()), frozen_correct=int(frozen_right.sum()),
            trained_only=int((trained_right & ~frozen_right).sum()),
            frozen_only=int((frozen_right & ~trained_right).sum()), frozen_row=frozen_choice.name,
        )
    return scores

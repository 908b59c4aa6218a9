"""`evaluate_model`: scores a trained classifier on held-out images, as `evaluate` scores predictions."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...core.errors import InputError
from ...features.inputs import ImageDataset, iter_decoded_chunks
from ..evaluate import Scores, evaluate
from ..persistence import write_predictions
from .result import FinetuneResult

if TYPE_CHECKING:
    import keras

__all__ = ["evaluate_model"]


def evaluate_model(
    model: keras.Model | FinetuneResult,
    dataset: ImageDataset,
    class_names: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    n_workers: int | None = None,
    predictions: str | os.PathLike | None = None,
) -> Scores:
    """Scores a trained classifier on held-out images, decoded in chunks.

    Args:
        model: A classifier from `build_classifier_model` (or `load_model`), or a
            `FinetuneResult` (its `as_row()` gives the training's columns).
        dataset: The test samples, e.g. `ds.subset("test")`.
        class_names: Names of the model's outputs; `dataset.class_names` by default.
        batch_size: Images per forward pass.
        n_workers: Decoding threads (see `iter_decoded_chunks`).
        predictions: Also write one row per scored image to this CSV
            (`persistence.write_predictions`: sample_id, true and predicted label, probabilities).

    Returns:
        The `Scores` of the images that decode (`n_test` of them); `n_unreadable`
        counts the others, left out.

    Raises:
        InputError: (a `ValueError`) If no image decodes or the model's outputs
            do not match `class_names`.
    """
    keras_model = model.model if isinstance(model, FinetuneResult) else model
    class_names = dataset.class_names if class_names is None else class_names
    size = int(keras_model.input_shape[1])
    step = batch_size * 8
    n_samples = len(dataset)
    chunks = [range(start, min(start + step, n_samples)) for start in range(0, n_samples, step)]
    proba, y_true, scored, n_unreadable = [], [], [], 0
    for chunk in iter_decoded_chunks(dataset, chunks, size, n_workers=n_workers):
        n_unreadable += len(chunk.skipped)
        if len(chunk.sample_indices):
            proba.append(keras_model.predict(chunk.images, batch_size=batch_size, verbose=0))
            y_true.append(dataset.labels[chunk.sample_indices])
            scored.append(chunk.sample_indices)
    if not proba:
        raise InputError(
            f"None of the {n_samples} images could be decoded, so there is nothing to score. "
            f"Check the dataset's files. Received: {n_samples} samples, {n_unreadable} unreadable"
        )
    proba = np.concatenate(proba).astype("float64")
    if proba.shape[1] != len(class_names):
        raise InputError(
            f"The model predicts {proba.shape[1]} classes but {len(class_names)} class names were "
            f"given; pass the class names the model was trained with. "
            f"Received: class_names={list(class_names)}"
        )
    scores = evaluate(np.concatenate(y_true), np.argmax(proba, axis=1), class_names)
    if predictions is not None:
        write_predictions(predictions, [dataset.sample_ids[i] for i in np.concatenate(scored)], np.concatenate(y_true),
                          scores.y_pred, class_names, proba=proba)
    return dataclasses.replace(scores, n_unreadable=n_unreadable)

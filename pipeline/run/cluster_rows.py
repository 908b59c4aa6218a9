"""Classifier rows on a dask cluster: one task per row, the features read by the workers from the shared store.

A task gets the store path and key of its layer (never the feature arrays),
loads and checks the training and test splits there, runs the same grid search
as in-process (`score_row`: same folds, same seeds) and sends back the fitted
estimator with its test predictions, which the client saves (`save_row`), so
only the feature store must be shared with the workers, not the output folder.
Rows finished by an earlier run are reused without a task. Rows are added to
the results table in the in-process order, so the table is the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Sequence

from ...features.cluster_extraction import check_store_visible
from ..config import ExperimentConfig
from .records import RunRows, fit_or_reuse
from .rows import (
    LayerToFit,
    RowJob,
    ScoredRow,
    load_splits,
    row_record,
    save_row,
    score_row,
)

__all__ = ["fit_rows_on_cluster"]


def _score_on_worker(layer: LayerToFit, classifier: str, settings: dict, config: ExperimentConfig, split: dict) -> ScoredRow:
    """On a worker: read the layer's splits from the store, fit and score one classifier."""
    train, test = load_splits(layer, split, stream=True)
    return score_row(layer, classifier, settings, config, train, test)


def fit_rows_on_cluster(
    row_jobs: Sequence[RowJob], config: ExperimentConfig, split: dict, rows: RunRows, client: Any
) -> None:
    """Add the rows of `row_jobs` to `rows` in order, fitting the unfinished ones on the cluster of `client`.

    Raises:
        StoreError: Before any task, if some worker cannot see the feature store.
        InputError: If a layer's features hold NaN or inf, or unreadable images
            left a class with fewer than 2 training rows (raised by its task).
    """
    jobs = [(job, row_record(config, job.layer, job.classifier, split)) for job in row_jobs]
    futures: dict[int, Any] = {}
    to_fit = [(index, job, record) for index, (job, record) in enumerate(jobs) if record.saved() is None]
    if to_fit:
        for root in sorted({str(job.layer.store.root) for _, job, _ in to_fit}):
            check_store_visible(client, root)
        for index, job, record in to_fit:
            # The built extractor (a Keras model) stays here: a worker needs only the store path and key.
            layer = job.layer
            portable = dataclasses.replace(layer, extraction=dataclasses.replace(layer.extraction, extractor=None))
            name = hashlib.sha256(json.dumps([record.settings, str(layer.store.root)], sort_keys=True).encode()).hexdigest()
            futures[index] = client.submit(
                _score_on_worker, portable, job.classifier, record.settings, config, split,
                key=f"layerprobe-row-{name[:16]}",
            )
        rows.log(f"  submitted {len(to_fit)} classifier row(s) to the dask cluster at {client.scheduler.address}")
    try:
        for index, (job, record) in enumerate(jobs):
            future = futures.get(index)

            def fit() -> tuple[dict, Any]:
                return save_row(job.layer, record.path.with_name(job.classifier), future.result())

            row, fitted = fit_or_reuse(record, fit)
            if future is not None:
                future.release()
            rows.add({**row, "row_kind": job.row_kind}, fitted=fitted, what=f"{job.layer.info.name} / {job.classifier}")
    except BaseException:
        client.cancel([future for future in futures.values() if not future.done()])
        raise

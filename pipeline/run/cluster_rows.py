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
from typing import Any, Callable, Sequence

from ...features.cluster_extraction import check_store_visible
from ..config import ExperimentConfig
from ..results import ResultsTable
from .rows import (
    LayerToFit,
    RowJob,
    ScoredRow,
    finished_row,
    fit_settings,
    load_splits,
    save_row,
    score_row,
)

__all__ = ["fit_layers_on_cluster"]


def _score_on_worker(layer: LayerToFit, classifier: str, settings: dict, config: ExperimentConfig, split: dict) -> ScoredRow:
    """On a worker: read the layer's splits from the store, fit and score one classifier."""
    train, test = load_splits(layer, split)
    return score_row(layer, classifier, settings, config, train, test)


def fit_layers_on_cluster(
    layers: Sequence[LayerToFit],
    config: ExperimentConfig,
    split: dict,
    table: ResultsTable,
    log: Callable[[str], None],
    client: Any,
    *,
    row_jobs: Sequence[RowJob] | None = None,
) -> int:
    """Add one row per layer x classifier, fitting the unfinished ones on the cluster; returns how many were fitted.

    `row_jobs` replaces the layers x the config's classifiers by these rows (with
    their `row_kind`), e.g. the screening rows, then the rows on the selected layers.

    Raises:
        StoreError: Before any task, if some worker cannot see the feature store.
        InputError: If a layer's features hold NaN or inf, or unreadable images
            left a class with fewer than 2 training rows (raised by its task).
    """
    if row_jobs is None:
        row_jobs = [RowJob(layer, classifier) for layer in layers for classifier in config.classifiers.names]
    jobs = []
    for layer, classifier, row_kind in row_jobs:
        # The built extractor (a Keras model) stays here: a worker needs only the store path and key.
        portable = dataclasses.replace(layer, extraction=dataclasses.replace(layer.extraction, extractor=None))
        stem = config.output.dir / "models" / layer.key.entry_name / classifier
        settings = fit_settings(config, layer.key, classifier, split)
        jobs.append([layer, portable, classifier, stem, settings, finished_row(stem, settings), None, row_kind])
    to_fit = [job for job in jobs if job[5] is None]
    if to_fit:
        for root in sorted({str(job[1].store.root) for job in to_fit}):
            check_store_visible(client, root)
        for job in to_fit:
            _, portable, classifier, _, settings, _, _, _ = job
            name = hashlib.sha256(json.dumps([settings, str(portable.store.root)], sort_keys=True).encode()).hexdigest()
            job[6] = client.submit(
                _score_on_worker, portable, classifier, settings, config, split, key=f"layerprobe-row-{name[:16]}"
            )
        log(f"  submitted {len(to_fit)} classifier row(s) to the dask cluster at {client.scheduler.address}")
    try:
        for layer, _, classifier, stem, settings, finished, future, row_kind in jobs:
            row = {**(finished or save_row(layer, stem, settings, future.result())), "row_kind": row_kind}
            if future is not None:
                future.release()
            log(
                f"  {'fitted' if finished is None else 'reused'} {layer.info.name} / {classifier}: "
                f"cv {row['cv_score']:.3f}, test {row['test_accuracy']:.3f}"
            )
            table.add(row)
    except BaseException:
        client.cancel([job[6] for job in jobs if job[6] is not None and not job[6].done()])
        raise
    return len(to_fit)

"""Classifier rows fitted side by side on this machine's free cores, the table in the order of a serial run.

A row's fit spends its time in native code that releases the GIL (BLAS,
LAPACK, liblinear, scikit-learn's Cython losses), and the thread rule
(`layerprobe.pipeline.threads`) gives each row's pools its share of the cores,
so rows fitted in joblib threads use the cores side by side, share each layer's
features (loaded once, dropped after its last row) and start no process.
`row_workers` decides how many at once: the usable cores over the parallel jobs
of each row's own search (`[classifiers] n_jobs`).

The main thread saves and adds the rows in the order of the jobs as their
results come back, exactly as a serial run (`rows.fit_layer`) does: the same
table, a killed run keeps every row saved before, and an error of one row is
raised where the serial run would raise it, after the rows before it are saved.
"""

from __future__ import annotations

import threading
import warnings
from collections import Counter
from typing import Any, Sequence

from joblib import Parallel, delayed

from ...features.store import FeatureSet, FeatureStream
from ..config import ExperimentConfig
from ..threads import native_threads, parallel_jobs, usable_cores
from .records import RowRecord, RunRows, fit_or_reuse
from .rows import LayerToFit, RowJob, ScoredRow, layer_logme, load_splits, row_record, save_row, score_row

__all__ = ["fit_rows_in_parallel", "row_workers"]


def row_workers(config: ExperimentConfig, n_rows: int) -> int:
    """Rows fitted at once: the usable cores over each row's own parallel jobs (`[classifiers] n_jobs`), at most `n_rows`."""
    cores = usable_cores()
    return max(1, min(n_rows, cores // parallel_jobs(config.classifiers.n_jobs, cores)))


class _LayerSplits:
    """Each layer's training and test splits and LogME, loaded by the first of its rows, dropped after its last."""

    def __init__(self, split: dict, rows_per_layer: Counter):
        self._split = split
        self._remaining = dict(rows_per_layer)
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}

    def get(self, layer: LayerToFit) -> tuple[FeatureSet | FeatureStream, FeatureSet, float]:
        with self._lock:
            entry = self._entries.setdefault(layer.key.entry_name, {"lock": threading.Lock()})
        with entry["lock"]:  # the layer's other rows wait for the one loading it
            if "splits" not in entry:
                train, test = load_splits(layer, self._split, stream=True)
                entry["splits"] = train, test, layer_logme(train)
            return entry["splits"]

    def done(self, layer: LayerToFit) -> None:
        with self._lock:
            name = layer.key.entry_name
            self._remaining[name] = self._remaining.get(name, 1) - 1
            if self._remaining[name] <= 0:
                self._entries.pop(name, None)


def _score(
    job: RowJob, record: RowRecord, config: ExperimentConfig, splits: _LayerSplits, jobs_at_once: int
) -> tuple[ScoredRow | None, BaseException | None]:
    """One row, fitted and scored in a worker thread; an error is returned, to be raised in the jobs' order."""
    try:
        train, test, logme = splits.get(job.layer)
        with native_threads(train, n_jobs=jobs_at_once):  # the pools shared by every row fitted at once
            return score_row(job.layer, job.classifier, record.settings, config, train, test, logme=logme), None
    except BaseException as error:  # noqa: BLE001 (KeyboardInterrupt too: the main thread raises it in order)
        return None, error
    finally:
        splits.done(job.layer)


def fit_rows_in_parallel(
    row_jobs: Sequence[RowJob], config: ExperimentConfig, split: dict, rows: RunRows, workers: int
) -> None:
    """Add the rows of `row_jobs` to `rows` in order, fitting the unfinished ones `workers` at a time in threads.

    Raises:
        InputError: If a layer's features hold NaN or inf, or unreadable images
            left a class with fewer than 2 training rows (after the rows before it are saved).
    """
    jobs = [(job, row_record(config, job.layer, job.classifier, split)) for job in row_jobs]
    to_fit = {index for index, (_, record) in enumerate(jobs) if record.saved() is None}
    splits = _LayerSplits(split, Counter(jobs[index][0].layer.key.entry_name for index in to_fit))
    workers = max(1, min(workers, len(to_fit)))
    jobs_at_once = workers * parallel_jobs(config.classifiers.n_jobs, usable_cores())
    if len(to_fit) > 1:
        rows.log(f"  fitting {len(to_fit)} classifier rows, {workers} at a time")
    results: Any = Parallel(n_jobs=workers, backend="threading", return_as="generator")(
        delayed(_score)(jobs[index][0], jobs[index][1], config, splits, jobs_at_once) for index in sorted(to_fit)
    )
    try:
        for index, (job, record) in enumerate(jobs):
            # Every submitted row's result is taken in turn, even one a concurrent run has finished meanwhile.
            outcome = next(results) if index in to_fit else None

            def fit() -> tuple[dict, Any]:
                # A row found finished above but gone since (its model deleted) is fitted here, alone.
                scored, error = outcome or _score(job, record, config, splits, 1)
                if error is not None:
                    raise error
                return save_row(job.layer, record.path.with_name(job.classifier), scored)

            row, fitted = fit_or_reuse(record, fit)
            rows.add({**row, "row_kind": job.row_kind}, fitted=fitted, what=f"{job.layer.info.name} / {job.classifier}")
    finally:
        with warnings.catch_warnings():  # on an error the rows not started are dropped, which joblib warns of
            warnings.filterwarnings("ignore", message=".*tasks which were still being processed", category=UserWarning)
            results.close()

"""One loop fits a run's rows, whatever runs the fits: inline, threads side by side, or a dask cluster.

`fit_rows` takes row specs (`records.RowSpec`) and an executor with joblib's
backend idea: `submit` a spec's fit, take its `result`. The loop is the same
for every executor: it finds which rows an earlier run saved (those are reused
without a fit), submits the others, then saves and adds the rows in the order
of the specs as their results come (`records.fit_or_reuse`). So every executor
gives the same table, a killed run keeps every row saved before, and an error
of one row is raised where a serial run would raise it, after the rows before
it are saved. In this process, each layer's features are loaded once for all
its rows and dropped after the last (`rows.LayerFeatures`).

- `InlineExecutor`: each row fitted when its result is taken, one after another.
- `ThreadExecutor`: rows fitted side by side in threads. A row's fit spends
  its time in native code that releases the GIL (BLAS, LAPACK, liblinear,
  scikit-learn's Cython losses), and the thread rule
  (`layerprobe.pipeline.threads`) gives each row's pools its share of the
  cores, so the rows use the cores side by side and start no process.
- `DaskExecutor`: one task per row on a dask cluster. A task gets the spec
  (the store path and keys, never the feature arrays or the run's config),
  reads the features on the worker and sends back the fitted estimator with
  its test predictions, which this process saves: only the feature store must
  be shared with the workers, not the output folder.

`row_executor` picks one for a run: the dask client if there is one, else
threads where the cores allow several rows at once, else inline.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from ...features.cluster_extraction import check_store_visible
from ..results import Row
from ..threads import parallel_jobs, usable_cores
from .records import RowSpec, RunRows, fit_or_reuse
from .rows import LayerFeatures

__all__ = [
    "DaskExecutor",
    "Executor",
    "InlineExecutor",
    "ThreadExecutor",
    "fit_rows",
    "row_executor",
    "row_workers",
]


class Executor(Protocol):
    """Runs the fits of `fit_rows`: `submit` returns a future whose `result()` is the fit's result."""

    in_process: bool  # its fits share this process's memory (the layers' features, loaded once)

    def start(self, specs: Sequence[RowSpec], log: Callable[[str], None]) -> int:
        """Get ready to fit `specs` (the rows to fit); returns how many are fitted at once in this process."""

    def submit(self, spec: RowSpec, features: LayerFeatures | None, rows_at_once: int) -> Any:
        """Start (or schedule) `spec.fit`; returns a future."""

    def cancel(self, futures: Sequence[Any]) -> None:
        """Drop the futures not taken (after an error)."""


class _Deferred:
    """A fit run when its result is taken."""

    def __init__(self, call: Callable[[], Any]):
        self._call = call

    def result(self) -> Any:
        return self._call()


class InlineExecutor:
    """Each row fitted in this thread when its result is taken: one after another, in order."""

    in_process = True

    def start(self, specs: Sequence[RowSpec], log: Callable[[str], None]) -> int:
        return 1

    def submit(self, spec: RowSpec, features: LayerFeatures | None, rows_at_once: int) -> _Deferred:
        return _Deferred(lambda: spec.fit(features, rows_at_once=rows_at_once))

    def cancel(self, futures: Sequence[Any]) -> None:
        pass


class ThreadExecutor:
    """Rows fitted side by side in `workers` threads of this process."""

    in_process = True

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def start(self, specs: Sequence[RowSpec], log: Callable[[str], None]) -> int:
        workers = max(1, min(self.workers, len(specs)))
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="layerprobe-row")
        if len(specs) > 1:
            log(f"  fitting {len(specs)} classifier rows, {workers} at a time")
        return workers

    def submit(self, spec: RowSpec, features: LayerFeatures | None, rows_at_once: int) -> concurrent.futures.Future:
        return self._pool.submit(spec.fit, features, rows_at_once=rows_at_once)

    def cancel(self, futures: Sequence[Any]) -> None:
        for future in futures:
            future.cancel()
        concurrent.futures.wait(futures)  # the rows running finish; none is left behind

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class DaskExecutor:
    """One task per row on the dask cluster of `client`; the workers read the features from the shared store."""

    in_process = False

    def __init__(self, client: Any):
        self.client = client

    def start(self, specs: Sequence[RowSpec], log: Callable[[str], None]) -> int:
        for root in sorted({spec.store_read() for spec in specs} - {None}):
            check_store_visible(self.client, root)
        if specs:
            log(f"  submitted {len(specs)} classifier row(s) to the dask cluster at {self.client.scheduler.address}")
        return 1

    def submit(self, spec: RowSpec, features: LayerFeatures | None, rows_at_once: int) -> Any:
        # The task's key names the spec and its store: a row submitted again is the same task.
        name = hashlib.sha256(f"{spec.digest}:{spec.store_read()}".encode()).hexdigest()
        return self.client.submit(spec.fit, key=f"layerprobe-row-{name[:16]}")

    def cancel(self, futures: Sequence[Any]) -> None:
        self.client.cancel([future for future in futures if not future.done()])


def row_workers(n_jobs: int | None) -> int:
    """Rows fitted at once in this process: the usable cores over each row's own parallel jobs (`n_jobs`)."""
    cores = usable_cores()
    return max(1, cores // parallel_jobs(n_jobs, cores))


@contextlib.contextmanager
def row_executor(client: Any = None, *, n_jobs: int | None = None) -> Iterator[Executor]:
    """The executor of a run's rows: `client`'s cluster, else threads where cores are free, else inline."""
    if client is not None:
        yield DaskExecutor(client)
        return
    workers = row_workers(n_jobs)
    if workers == 1:
        yield InlineExecutor()
        return
    executor = ThreadExecutor(workers)
    try:
        yield executor
    finally:
        executor.close()


def _fit_and_save(spec: RowSpec, future: Any) -> tuple[Row, Path]:
    """The result of the row's future, saved; a row found saved before but gone since (its model deleted)
    is fitted here, alone."""
    return spec.save(future.result() if future is not None else spec.fit())


def fit_rows(specs: Sequence[RowSpec], rows: RunRows, executor: Executor) -> None:
    """Add the rows of `specs` to `rows` in order: reused where an earlier run saved them, else fitted by `executor`.

    Raises:
        Whatever a row's fit raises (e.g. `InputError` for features with NaN or
        inf, or a class left with fewer than 2 training rows), in the order of
        `specs`, after the rows before it are saved.
    """
    records = [spec.record() for spec in specs]
    to_fit = [index for index, record in enumerate(records) if record.saved() is None]
    features = None
    if executor.in_process:
        features = LayerFeatures(Counter(entry for index in to_fit for entry in specs[index].layers_read()))
    futures: dict[int, Any] = {}
    if to_fit:
        rows_at_once = executor.start([specs[index] for index in to_fit], rows.log)
        futures = {index: executor.submit(specs[index], features, rows_at_once) for index in to_fit}
    try:
        for index, (spec, record) in enumerate(zip(specs, records, strict=True)):
            future = futures.pop(index, None)
            with spec.claim(rows.log):
                row, fitted = fit_or_reuse(record, functools.partial(_fit_and_save, spec, future))
            row = dataclasses.replace(row, row_kind=spec.row_kind)  # the run's role for it, not in its record
            if future is not None and hasattr(future, "release"):
                future.release()
            rows.add(row, fitted=fitted, what=spec.describe(row))
    except BaseException:
        executor.cancel(list(futures.values()))
        raise

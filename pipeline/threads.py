"""BLAS and OpenMP threads sized to the cores this process may use and to the problem.

Native thread pools (OpenBLAS, MKL, OpenMP) start one thread per core they
see, which is every core of the machine, even on a Slurm or Kubernetes node
that lends this process two of them, and on small matrices several threads
only spin-wait: a logistic regression on a few thousand rows then takes many
times longer with two threads than with one. :func:`native_threads` limits
the pools (with ``threadpoolctl``) around the entry points that fit or apply
classifiers (the classifier rows, the ridge probe, LogME, the multi-layer probe,
`predict_images`) to :func:`threads_for` threads:

- the cores this process may use (:func:`usable_cores`: the CPU affinity mask
  and the cgroup CPU quota), shared among ``n_jobs`` parallel jobs;
- one thread below :data:`ONE_THREAD_BELOW` matrix elements (rows × features),
  where one was measured faster (benchmarks/RESULTS.md, "BLAS threads that fit
  the cores").

A user who sets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``
(or another variable of :data:`THREAD_VARIABLES`) keeps the libraries' own
reading of it: the rule then changes nothing. joblib's worker processes get
those variables from joblib (cores // n_jobs each), so the rule steps aside in
them too.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from ..core.cores import cgroup_cpu_quota, usable_cores

__all__ = [
    "ONE_THREAD_BELOW",
    "THREAD_VARIABLES",
    "cgroup_cpu_quota",
    "native_threads",
    "parallel_jobs",
    "threads_for",
    "usable_cores",
    "user_thread_variables",
    "with_native_threads",
]

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "GOTO_NUM_THREADS",
)
"""Environment variables by which a user (or joblib, in its workers) sets native thread counts."""

ONE_THREAD_BELOW = 32_000_000
"""Rows × features under which the pools get one thread (above, the cores per job): just above CIFAR-10's
50,000 × 512, where one thread was still the faster (measured in benchmarks/RESULTS.md, "BLAS threads that
fit the cores")."""

F = TypeVar("F", bound=Callable[..., Any])

# The outermost native_threads of the process sets the pools and the last one to leave restores them:
# the pools are process-wide (OpenBLAS's pthreads pool), so a nested or concurrent entry (the probes
# inside a classifier row, joblib threads) keeps the limit already set instead of racing to restore it.
_LOCK = threading.Lock()
_ACTIVE: dict[str, Any] = {"depth": 0, "threads": None}


def user_thread_variables(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The thread variables of :data:`THREAD_VARIABLES` set (non-empty) in `environ` (default: ``os.environ``)."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in THREAD_VARIABLES if environ.get(name, "").strip()}


def threads_for(n_samples: int, n_features: int, *, n_jobs: int | None = None, cores: int | None = None) -> int:
    """BLAS/OpenMP threads for one fit on ``n_samples × n_features``, with ``n_jobs`` such fits at once.

    Args:
        n_samples: Rows of the matrix.
        n_features: Its columns (all layers together for a multi-layer probe).
        n_jobs: Parallel jobs in joblib's sense (None or 1: one; -1: one per core;
            -2: all cores but one); each gets an equal share of the cores.
        cores: The cores to share; default :func:`usable_cores`.

    Returns:
        1 below :data:`ONE_THREAD_BELOW` elements, else the cores per job (at least 1).
    """
    cores = usable_cores() if cores is None else max(1, int(cores))
    if n_samples * n_features < ONE_THREAD_BELOW:
        return 1
    return max(1, cores // parallel_jobs(n_jobs, cores))


def parallel_jobs(n_jobs: int | None, cores: int) -> int:
    """The jobs joblib runs at once for ``n_jobs`` on `cores` cores: None is 1, -1 every core, -2 all but one."""
    if n_jobs is None:
        return 1
    return max(1, cores + 1 + n_jobs) if n_jobs < 0 else max(1, n_jobs)


def _shape(data: Any) -> tuple[int, int] | None:
    """(rows, columns) of an array-like, or of a mapping of them side by side (a multi-layer probe's layers)."""
    try:
        shapes = [np.shape(value) for value in (data.values() if isinstance(data, Mapping) else [data])]
    except (TypeError, ValueError):
        return None
    if not shapes or any(len(shape) < 2 for shape in shapes):
        return None
    return int(shapes[0][0]), sum(int(np.prod(shape[1:])) for shape in shapes)


@contextmanager
def native_threads(data: Any, *, n_jobs: int | None = None) -> Iterator[int | None]:
    """Limits the BLAS and OpenMP pools to :func:`threads_for` threads while fitting or predicting on `data`.

    Changes nothing when the user set a variable of :data:`THREAD_VARIABLES`, or
    when `data` has no 2-D shape (the function called inside then reports it).
    Inside another ``native_threads`` (of this thread or another), the limit
    already set stays: the outermost entry point decides.

    Args:
        data: The features: an array-like of shape (n_samples, ...), or a mapping
            of layer name -> such arrays (counted side by side).
        n_jobs: Parallel jobs sharing the cores (see :func:`threads_for`).

    Yields:
        The thread limit applied, or None when none was.

    Example:
        >>> with native_threads(X_train):
        ...     LogisticRegression().fit(X_train, y_train)
    """
    shape = _shape(data)
    if shape is None or user_thread_variables():
        yield None
        return
    threads = threads_for(*shape, n_jobs=n_jobs)
    with _LOCK:
        if _ACTIVE["depth"] == 0:
            _ACTIVE["threads"] = threads
            _ACTIVE["limits"] = [threadpool_limits(limits=threads, user_api=api) for api in ("blas", "openmp")]
        _ACTIVE["depth"] += 1
        threads = _ACTIVE["threads"]
    try:
        yield threads
    finally:
        with _LOCK:
            _ACTIVE["depth"] -= 1
            if _ACTIVE["depth"] == 0:
                for limits in reversed(_ACTIVE.pop("limits")):
                    limits.restore_original_limits()


def _lookup(arguments: Mapping[str, Any], dotted: str) -> Any:
    name, *attributes = dotted.split(".")
    value = arguments[name]
    for attribute in attributes:
        value = getattr(value, attribute)
    return value


def with_native_threads(data: str, *, n_jobs: str | None = None) -> Callable[[F], F]:
    """Decorator: the function runs under :func:`native_threads` for one of its arguments.

    Args:
        data: The argument holding the features, with attributes after dots
            (``"X"``, ``"train.X"``).
        n_jobs: The argument (with attributes) holding the parallel jobs, if any
            (``"config.classifiers.n_jobs"``).

    Example:
        >>> @with_native_threads("X")
        ... def fit(self, X, y): ...
    """

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                arguments = bound.arguments
                features = _lookup(arguments, data)
                jobs = None if n_jobs is None else _lookup(arguments, n_jobs)
            except (TypeError, KeyError, AttributeError):  # the call itself reports bad arguments
                return function(*args, **kwargs)
            with native_threads(features, n_jobs=jobs):
                return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate

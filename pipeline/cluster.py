"""The dask cluster of a run: the one module that opens and closes dask clients.

`open_client(settings)` connects to a running scheduler (`scheduler =
"tcp://host:8786"`: started by `dask scheduler` / `dask worker`, dask-jobqueue,
dask-kubernetes...) or starts a local cluster of worker processes for the run
(`workers = N`), prints the dashboard link, and closes what it opened on exit.
With no settings it yields None: everything runs in-process, as without dask.
`extract_features(extractor, dataset, store, client)` extracts in-process or,
given a client, on its workers (`layerprobe.features.cluster_extraction`).

GPUs: `gpus = [0, 1]` starts one local worker per GPU. Each worker process is
started with `CUDA_VISIBLE_DEVICES` set to its own device (before anything in
it can import Keras) and advertises the resource `GPU=1`; extraction tasks then
ask for one GPU each. On a cluster of your own, start one worker per GPU the
same way: `CUDA_VISIBLE_DEVICES=0 dask worker tcp://host:8786 --nthreads 1
--resources GPU=1`.

dask is imported only when a cluster is asked for (the `cluster` extra:
`pip install "layerprobe[cluster]"`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..core.errors import LayerprobeError

__all__ = ["ClusterConfig", "ClusterError", "extract_features", "open_client"]

_CONNECT_TIMEOUT = "30s"


class ClusterError(LayerprobeError, RuntimeError):
    """The dask cluster cannot be reached or started, or dask is not installed."""


@dataclass(frozen=True)
class ClusterConfig:
    """Where extraction and classifier rows run: a dask cluster (the section is optional).

    Attributes:
        scheduler: Address of a running dask scheduler, e.g. "tcp://host:8786"
            (from `dask scheduler`, dask-jobqueue or Kubernetes). Its workers
            must see the feature store at the same path. Leave out to start a
            local cluster with `workers`.
        workers: Start a local dask cluster of this many worker processes for
            the run. Without `scheduler`, `workers` or `gpus`, everything runs
            in this process.
        threads_per_worker: Tasks each local worker runs at once.
        memory_limit: Memory limit of each local worker, e.g. "4GB", or "auto"
            (the machine's memory shared between the workers).
        gpus: GPU device numbers, one local worker per GPU (e.g. [0, 1]); each
            worker sees only its own GPU and advertises the resource GPU=1.
    """

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    gpus: tuple[int, ...] = ()

    def __post_init__(self):
        if self.scheduler is not None and (self.workers is not None or self.gpus):
            raise ValueError(
                "[cluster] takes either scheduler (a running cluster) or workers/gpus (a local cluster "
                f"for this run), not both. Received: scheduler={self.scheduler!r}, workers={self.workers!r}, "
                f"gpus={list(self.gpus)!r}"
            )
        if self.gpus and self.workers is not None and self.workers != len(self.gpus):
            raise ValueError(
                f"[cluster] starts one worker per GPU: workers must be left out or equal the number of gpus "
                f"({len(self.gpus)}). Received: workers={self.workers!r}, gpus={list(self.gpus)!r}"
            )

    @property
    def is_local(self) -> bool:
        """Whether a local cluster is started for the run."""
        return self.scheduler is None

    @property
    def n_local_workers(self) -> int:
        return len(self.gpus) if self.gpus else (self.workers or 1)


def _import_distributed():
    try:
        import distributed
    except ImportError as error:
        raise ClusterError(
            f"A [cluster] (or --scheduler/--workers) needs dask.distributed, which is not installed ({error}). "
            f'Install it with `pip install "layerprobe[cluster]"`, or leave the cluster settings out to run '
            f"in-process."
        ) from error
    return distributed


def _thread_limits(n_workers: int) -> dict[str, str]:
    """OpenMP/BLAS threads of each local worker: the machine's cores shared between the workers.

    dask starts workers with these set to 1, which leaves a PyTorch-backend
    forward pass (and scikit-learn's BLAS) single-threaded in every worker.
    """
    from ..features.cluster_extraction import decoding_threads

    threads = str(decoding_threads(n_workers))
    return {name: threads for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def _local_cluster(settings: ClusterConfig):
    """A local cluster of worker processes; with `gpus`, one worker per GPU that sees only its own."""
    distributed = _import_distributed()
    if not settings.gpus:
        return distributed.LocalCluster(
            n_workers=settings.n_local_workers,
            threads_per_worker=settings.threads_per_worker,
            processes=True,
            memory_limit=settings.memory_limit,
            env=_thread_limits(settings.n_local_workers),
        )
    # One spec per worker, so that each worker process starts with its own CUDA_VISIBLE_DEVICES
    # (set before the process starts: nothing in it can have imported Keras yet).
    workers = {
        f"gpu{device}": {
            "cls": distributed.Nanny,
            "options": {
                "nthreads": settings.threads_per_worker,
                "memory_limit": settings.memory_limit,
                "resources": {"GPU": 1},
                "env": {"CUDA_VISIBLE_DEVICES": str(device), **_thread_limits(len(settings.gpus))},
            },
        }
        for device in settings.gpus
    }
    scheduler = {"cls": distributed.Scheduler, "options": {"dashboard_address": ":8787"}}
    return distributed.SpecCluster(workers=workers, scheduler=scheduler)


def _dashboard(client) -> str:
    with contextlib.suppress(Exception):
        if "dashboard" in client.scheduler_info().get("services", {}):
            return client.dashboard_link
    return "none (install bokeh for the dashboard)"


@contextlib.contextmanager
def open_client(settings: ClusterConfig | None, *, log: Callable[[str], None] = print) -> Iterator[Any]:
    """A dask client for `settings`, closed on exit (with the local cluster it started); None without settings.

    Args:
        settings: The `[cluster]` settings, or None for in-process work.
        log: Called with the cluster's description and dashboard link.

    Yields:
        A `distributed.Client`, or None.

    Raises:
        ClusterError: If dask is not installed, the scheduler cannot be reached,
            or the local cluster cannot be started.

    Example:
        >>> with open_client(ClusterConfig(workers=2)) as client:
        ...     extract_features(extractor, dataset, store, client)
    """
    if settings is None:
        yield None
        return
    distributed = _import_distributed()
    with contextlib.ExitStack() as stack:
        try:
            if settings.is_local:
                cluster = stack.enter_context(_local_cluster(settings))
                client = stack.enter_context(distributed.Client(cluster))
                where = (
                    f"local dask cluster of {settings.n_local_workers} worker process(es) x "
                    f"{settings.threads_per_worker} thread(s)"
                    + (f", one per GPU {list(settings.gpus)}" if settings.gpus else "")
                )
            else:
                client = stack.enter_context(distributed.Client(settings.scheduler, timeout=_CONNECT_TIMEOUT))
                where = f"dask cluster at {settings.scheduler} ({len(client.scheduler_info().get('workers', {}))} worker(s) now)"
        except (OSError, TimeoutError, ValueError) as error:
            target = settings.scheduler or f"a local cluster of {settings.n_local_workers} worker(s)"
            raise ClusterError(
                f"Cannot {'reach' if settings.scheduler else 'start'} {target}: {error}. Check the address "
                f"(and that `dask scheduler` runs there), or leave [cluster] out to run in-process. "
                f"Received: {settings}"
            ) from error
        log(f"{where}; dashboard: {_dashboard(client)}")
        yield client


def extract_features(extractor, dataset, store, client=None, *, n_workers: int | None = None, **options):
    """`extractor.extract(dataset, store, ...)`, or, with a dask `client`, the same on its workers.

    Args:
        extractor: A `FeatureExtractor`.
        dataset: The images.
        store: The feature store (with a client, on a file system every worker sees at the same path).
        client: A `distributed.Client` (`open_client`), or None to extract in this process.
        n_workers: Decoding threads: in this process, or per worker with a client
            (default: its host's cores // its workers).
        **options: `chunk_size`, `progress`, `log`, `dataset_digest` (see `FeatureExtractor.extract`).

    Returns:
        The `ExtractionReport`.
    """
    if client is None:
        return extractor.extract(dataset, store, n_workers=n_workers, **options)
    from ..features.cluster_extraction import extract_on_cluster

    return extract_on_cluster(extractor, dataset, store, client, n_threads=n_workers, **options)

"""Sharded extraction on a dask.distributed cluster: an entry's chunks are the unit of work.

`extract_on_cluster(extractor, dataset, store, client)` does what
`extractor.extract(dataset, store)` does, on a dask cluster. The client plans
the work exactly as an in-process extraction does (the same fixed,
batch-aligned chunks, the same work areas in the store) and submits one task
per chunk not yet committed. A worker:

* builds the truncated backbone once per process, from the extractor's
  `get_config()`, and keeps it (`FeatureExtractor.shared`), and checks that
  its feature keys (weights digest included) are the client's: a worker with
  other weights or code refuses;
* decodes the chunk's images itself (only the chunk's samples travel: file
  paths, or the rows of an in-memory array);
* runs `FeatureExtractor.iter_features`, the one forward path of a chunk, so
  the features are bit-identical to an in-process run with the same batch and
  chunk sizes;
* writes each layer's chunk file into the store under a temporary name and
  renames it into place (as in-process), skipping chunks already there.

When every chunk is there, the client assembles each entry (`store.commit`).

Faults and concurrency, without a lock across machines. `fcntl` locks do not
work on many network file systems, so correctness never depends on one:

* A worker killed mid-chunk leaves at most a temporary file, never a chunk;
  the scheduler runs the task again elsewhere (and `retries` covers errors
  such as a transient I/O failure). A chunk already committed is never
  computed again: a task first looks for it.
* Chunk tasks have deterministic names, so two clients extracting the same
  entry on one cluster share the tasks: each chunk is computed once and both
  clients wait for it. On two clusters sharing a store, the same chunk may be
  computed twice; that is harmless, both writes are bit-identical and the
  rename is atomic. The entry commit is an atomic rename of a complete file,
  and a client that finds the entry committed by another reuses it.
* The client still takes the store's per-key lock while it works, as an
  in-process extraction does: where the file system supports it, a second
  client waits and reuses the entry instead of repeating the work. The lock
  records its holder (host, pid) and waiting for it is bounded (see
  `layerprobe.features.store.locks`).

The store must be on a file system every worker sees at the same path. It is
checked up front (`check_store_visible`): the client writes a file with a
random token into the store, and every worker must read the token back and
write a file there; otherwise a `StoreError` names the workers that cannot.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .chunks import (
    ExtractionReport,
    commit_entries,
    reuse_or_compute,
    write_chunk,
)
from ..core.atomic import TMP_PREFIX, write_text_atomically
from ..core.cores import usable_cores
from ..core.errors import BackboneError, InputError, StoreError
from ..core.files import RECORD_MAX_BYTES, read_bounded_text
from .environment import environment_differences, numerics_environment
from .extract import FeatureExtractor
from .inputs import DecodedChunk, ImageDataset, iter_decoded_chunks
from .store import FeatureStore

__all__ = [
    "CHUNK_RETRIES",
    "ChunkOutcome",
    "check_store_visible",
    "decoding_threads",
    "extract_on_cluster",
    "gpu_resources",
    "workers_environment",
]

CHUNK_RETRIES = 2
"""Times a chunk task that raised is run again (a task on a worker that died is rescheduled regardless)."""

_PROBE_PREFIX = f"{TMP_PREFIX}dask-probe-"
_OPEN_TRIES = 3


# --------------------------------------------------------------------------- worker side


_forward_locks: dict[int, threading.Lock] = {}
_forward_locks_guard = threading.Lock()


def _forward_lock(extractor) -> threading.Lock:
    """One lock per shared extractor: a worker running several tasks in threads computes one chunk at a time."""
    with _forward_locks_guard:
        return _forward_locks.setdefault(id(extractor), threading.Lock())


def _worker_name() -> str:
    """"tcp://10.0.0.5:40123 (host node12, pid 4242)" for this worker, for messages."""
    try:
        from distributed import get_worker

        address = get_worker().address
    except (ImportError, ValueError):
        address = "a process outside any dask worker"
    return f"{address} (host {socket.gethostname()}, pid {os.getpid()})"


def decoding_threads(workers_on_host: int, *, cores: int | None = None) -> int:
    """Decoding threads per worker: the host's cores shared between its workers, at least 1."""
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, workers_on_host))


@dataclass(frozen=True)
class ChunkOutcome:
    """What one chunk task did.

    Attributes:
        index: Chunk number.
        n_forward: Images that went through the model (0 if the chunk was already committed).
        worker: The worker that ran it ("address (host, pid)").
        seconds: Wall time of the task on the worker.
    """

    index: int
    n_forward: int
    worker: str
    seconds: float


@dataclass(frozen=True)
class _ChunkTask:
    """Everything a worker needs for one chunk; small (only the chunk's samples travel)."""

    config: dict  # the extractor's `get_config()`: the worker rebuilds it (`FeatureExtractor.shared`)
    layer_names: tuple[str, ...]  # the layers computed together (the client's multi-output model)
    expected_keys: dict  # layer name -> key digest, as the client computed it
    dataset_digest: str
    index: int
    start: int
    samples: ImageDataset  # the chunk's samples, as dataset.select(range(start, stop))
    partials: dict  # layer name -> PartialEntry, opened (and tidied) by the client
    entries: dict  # layer name -> committed entry path: a committed entry needs no chunk
    n_threads: int | None
    workers_per_host: dict


def _check_worker_keys(extractor, task: _ChunkTask) -> None:
    keys = extractor.plan().keys(task.dataset_digest)
    differing = sorted(name for name, digest in task.expected_keys.items() if keys[name].digest != digest)
    if differing:
        key = keys[differing[0]]
        raise BackboneError(
            f"Dask worker {_worker_name()} builds the backbone with other feature keys than the client for "
            f"layers {differing} (worker: weights digest {key.weights}, key {key.digest}; client: key "
            f"{task.expected_keys[differing[0]]}). Its features would not be the client's: give every worker "
            f"the same weights file at the same path and the same layerprobe, Keras and backend versions."
        )


def _check_worker_environment(partials: Mapping[str, Any]) -> None:
    """A worker must compute in the numerics environment the work area was opened for, if it records one."""
    recorded = next((getattr(p, "fingerprint", {}) or {} for p in partials.values()), {}).get("environment")
    if not recorded:
        return
    differences = environment_differences(recorded, numerics_environment())
    if differences:
        changed = ", ".join(f"{name} {then!r} -> {now!r}" for name, (then, now) in differences.items())
        raise StoreError(
            f"Dask worker {_worker_name()} computes in another numerics environment than the one this "
            f"extraction's chunks are recorded under ({changed}); one entry must not mix them. Give every "
            f"worker the same software and devices, or run the extraction on a cluster of like workers."
        )


def _decode(task: _ChunkTask, extractor) -> DecodedChunk:
    """The chunk's images, decoded on this worker; sample indices are the dataset's, as in-process."""
    host = socket.gethostname()
    threads = task.n_threads or decoding_threads(task.workers_per_host.get(host, 1))
    chunks = iter_decoded_chunks(
        task.samples,
        [range(len(task.samples))],
        extractor.backbone.input_size,
        n_workers=threads,
        prefetch=1,
        max_pixels=extractor.max_pixels,
        dtype=task.samples.pixel_dtype,
        decoder=extractor.decoder,
    )
    with contextlib.closing(chunks):
        decoded = next(iter(chunks))
    return DecodedChunk(
        index=task.index,
        sample_indices=decoded.sample_indices + task.start,
        images=decoded.images,
        skipped=[(index + task.start, reason) for index, reason in decoded.skipped],
    )


def _run_chunk(task: _ChunkTask) -> ChunkOutcome:
    """One chunk on a worker: decode, forward, write each lacking layer's chunk file. Skips what is committed."""
    started = time.perf_counter()
    lacking = {
        name: partial
        for name, partial in task.partials.items()
        if not Path(task.entries[name]).is_file() and task.index not in partial.committed()
    }
    if not lacking:
        return ChunkOutcome(task.index, 0, _worker_name(), time.perf_counter() - started)
    for name, partial in lacking.items():
        if not partial.directory.is_dir():
            raise StoreError(
                f"Dask worker {_worker_name()} cannot see the work area {partial.directory} that the client "
                f"created in the feature store. The store must be on a file system every worker mounts at "
                f"the same path. Nothing was written by this worker."
            )
    _check_worker_environment(lacking)
    extractor = FeatureExtractor.shared(task.config)
    _check_worker_keys(extractor, task)
    chunk = _decode(task, extractor)
    layers = [info for info in extractor.layers if info.name in task.layer_names]
    with _forward_lock(extractor):
        _, features = next(extractor.iter_features([chunk], layers))
    write_chunk(layers, task.index, features, chunk.sample_indices, chunk.skipped, lacking)
    return ChunkOutcome(task.index, len(chunk.sample_indices), _worker_name(), time.perf_counter() - started)


def _read_probe(path: str, token: str) -> str | None:
    """On a worker: None if it reads `token` from `path` and can write beside it, else what went wrong."""
    try:
        seen = read_bounded_text(path, "probe file", RECORD_MAX_BYTES)
    except OSError as error:
        return f"cannot read the probe file {path}: {error.strerror or error}"
    if seen != token:
        return f"reads another probe file at {path} (another file system is mounted there)"
    reply = Path(f"{path}.{secrets.token_hex(4)}")
    try:
        reply.write_text(token, encoding="utf-8")
        reply.unlink()
    except OSError as error:
        return f"cannot write in the store: {error.strerror or error}"
    return None


# --------------------------------------------------------------------------- client side


def _workers(client) -> dict[str, dict]:
    """Address -> the scheduler's record of each worker (host, resources...)."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # dask < 2025: every worker, always
        info = client.scheduler_info()
    return dict(info.get("workers", {}))


def gpu_resources(client) -> dict[str, float] | None:
    """`{"GPU": 1}` if the cluster's workers advertise GPUs (`--resources GPU=1`), else None.

    Chunk tasks then ask for one GPU each, so that they run only on GPU workers,
    one at a time per GPU.
    """
    workers = _workers(client).values()
    return {"GPU": 1} if any((worker.get("resources") or {}).get("GPU") for worker in workers) else None


def check_store_visible(client, root: str | os.PathLike, *, timeout: float = 60.0) -> None:
    """Fail early unless every worker of `client` reads and writes the store at `root`.

    The client writes a probe file with a random token into the store; each
    worker must read that token back at the same path and write a file beside it.

    Raises:
        StoreError: If the cluster has no worker within `timeout` seconds, or
            some workers cannot see or write the store (they are named).
    """
    root = Path(root)
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError) as error:
        raise StoreError(
            f"The dask cluster at {client.scheduler.address} has no worker after {timeout:g} s ({error}). Start "
            f"workers (`dask worker {client.scheduler.address}`) or scale the cluster. Nothing was computed."
        ) from error
    token = secrets.token_hex(16)
    probe = root / f"{_PROBE_PREFIX}{token}"
    write_text_atomically(probe, token)
    try:
        problems = client.run(_read_probe, str(probe), token)
    finally:
        probe.unlink(missing_ok=True)
    failing = {address: problem for address, problem in sorted(problems.items()) if problem is not None}
    if failing:
        hosts = {address: worker.get("host", "?") for address, worker in _workers(client).items()}
        listed = "; ".join(f"worker {address} (host {hosts.get(address, '?')}) {problem}" for address, problem in failing.items())
        raise StoreError(
            f"The feature store {root} is not visible to every dask worker: {listed}. The store must be on a "
            f"file system that every worker mounts at the same path as this client (NFS, Lustre, GPFS, a "
            f"shared volume), not a disk local to each machine. Nothing was computed. Received: store={str(root)!r}, "
            f"{len(failing)} of {len(problems)} worker(s) failing"
        )


def _environment_on_worker() -> dict[str, Any]:
    """This worker's numerics environment, as a chunk task will compute in it (Keras and the backend imported)."""
    from .backend import import_keras_quietly

    import_keras_quietly()
    return numerics_environment(probe_device=True)


def workers_environment(client) -> dict[str, Any]:
    """The numerics environment of the cluster's workers, recorded with the chunks they compute.

    Raises:
        StoreError: If the workers do not all compute in the same environment (one
            entry must not mix two: its features would not be reproducible).
    """
    environments = client.run(_environment_on_worker)
    addresses = sorted(environments)
    first = environments[addresses[0]]
    for address in addresses[1:]:
        differences = environment_differences(first, environments[address])
        if differences:
            changed = ", ".join(f"{name} {a!r} vs {b!r}" for name, (a, b) in differences.items())
            raise StoreError(
                f"The dask workers do not compute in one numerics environment: {addresses[0]} and {address} "
                f"differ ({changed}). One entry must not mix chunks of two environments. Run the extraction on "
                f"like workers (same software, CPU model and devices), e.g. a cluster of one machine type. "
                f"Nothing was computed."
            )
    return first


def _workers_per_host(client) -> dict[str, int]:
    """Host name -> number of workers on it (tasks size their decoding threads by it)."""
    return dict(collections.Counter(client.run(socket.gethostname).values()))


def _task_prefix(store: FeatureStore, work, expected: Mapping[str, str]) -> str:
    """A name shared by every client that extracts the same entries into the same store with the same settings."""
    first = next(iter(work.partials.values()))
    fingerprint = getattr(first, "fingerprint", None) or {"chunks": [[c.start, c.stop] for c in work.chunks]}
    digest = hashlib.sha256(
        json.dumps([str(store.root), sorted(expected.items()), fingerprint], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    return f"layerprobe-chunk-{digest}"


def extract_on_cluster(
    extractor: FeatureExtractor,
    dataset: ImageDataset,
    store: FeatureStore,
    client,
    *,
    chunk_size: int | None = None,
    n_threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    dataset_digest: str | None = None,
) -> ExtractionReport:
    """`extractor.extract(dataset, store)` with the chunks computed on the cluster's workers.

    Args:
        extractor: The extractor (built on the client: it gives the keys and the
            settings every worker rebuilds it from).
        dataset: The images; file paths must be readable by the workers.
        store: The feature store, on a file system every worker sees at the same path.
        client: A connected `dask.distributed.Client`.
        chunk_size: Samples per chunk, i.e. per task (a multiple of the batch size).
        n_threads: Decoding threads per worker (default: its host's cores // its workers).
        progress: Show a progress bar.
        log: Called with one line per event.
        dataset_digest: As for `FeatureExtractor.extract`.

    Returns:
        An `ExtractionReport`, as in-process.

    Raises:
        StoreError: Before any work, if some worker cannot see or write the store.
        BackboneError: If a worker builds the backbone with other weights.
        InputError: If `dataset` has no samples.
    """
    if len(dataset) == 0:
        raise InputError("The dataset has no samples; there is nothing to extract. Received: 0 samples")
    log = log or (lambda message: None)
    started = time.perf_counter()
    # Workers use the path as the client spells it, made absolute but with its links kept
    # (a link may lead to the shared file system by another way on each machine).
    store = FeatureStore(os.path.abspath(store.root))
    keys = extractor.keys(dataset, dataset_digest)
    report = ExtractionReport(keys=keys, n_images=len(dataset))
    environment: dict = {}

    def check_workers() -> None:  # up front, before any wait or work
        check_store_visible(client, store.root)
        environment.update(workers_environment(client))

    def compute(missing: list[str]) -> None:
        work = _open_work(extractor, dataset, store, keys, missing, chunk_size, log, environment)
        _run_chunks(extractor, dataset, store, keys, work, client, n_threads, progress, report, log)
        _commit(extractor, dataset, store, keys, work, report, log)

    reuse_or_compute(store, keys, report, log, compute=compute, before_lock=check_workers)
    report.skipped = store.info(next(iter(keys.values())).entry_name, root=dataset.root)["skipped"]
    report.seconds = time.perf_counter() - started
    return report


def _open_work(extractor, dataset, store, keys, missing, chunk_size, log, environment):
    """The work areas, opened as in-process; tried again if a concurrent opener tidied our temporary file away.

    Opening a work area deletes stray temporary files: where locks do not work
    (some network file systems), two clients opening it at the same moment can
    delete each other's half-written `fingerprint.json`. The second try finds it.
    """
    for attempt in range(_OPEN_TRIES):
        try:
            return extractor.open_work(dataset, store, keys, missing, chunk_size=chunk_size, log=log, environment=environment)
        except StoreError:
            if attempt == _OPEN_TRIES - 1:
                raise
            time.sleep(0.2 + 0.3 * attempt)


def _run_chunks(extractor, dataset, store, keys, work, client, n_threads, progress, report, log) -> None:
    """Submit one task per chunk still to compute; wait for them all (the first error cancels the rest)."""
    from distributed import as_completed

    if not work.todo:
        return
    expected = {info.name: keys[info.name].digest for info in work.layers}
    prefix = _task_prefix(store, work, expected)
    resources = gpu_resources(client)
    common = dict(
        # the batch size the client planned the chunks with ("auto" resolved on the client)
        config={**extractor.get_config(), "batch_size": extractor.batch_size},
        layer_names=tuple(info.name for info in work.layers),
        expected_keys=expected,
        dataset_digest=next(iter(keys.values())).dataset,
        partials=dict(work.partials),
        entries={info.name: str(store.path_for(keys[info.name])) for info in work.layers},
        n_threads=n_threads,
        workers_per_host=_workers_per_host(client),
    )
    futures = []
    for index in work.todo:
        chunk = work.chunks[index]
        task = _ChunkTask(index=index, start=chunk.start, samples=dataset.select(slice(chunk.start, chunk.stop)), **common)
        futures.append(
            client.submit(_run_chunk, task, key=f"{prefix}-{index:06d}", retries=CHUNK_RETRIES, resources=resources)
        )
    n_workers = len(_workers(client))
    log(f"submitted {len(futures)} chunk task(s) to {n_workers} dask worker(s) at {client.scheduler.address}")
    by_worker: collections.Counter[str] = collections.Counter()
    from tqdm.auto import tqdm

    total = sum(len(work.chunks[i]) for i in work.todo)
    bar = tqdm(total=total, disable=not progress, desc="extracting on dask", unit="img", dynamic_ncols=True)
    pending = as_completed(futures)
    remaining = set(futures)
    futures.clear()  # a finished task's result is released as soon as it is read
    try:
        for future in pending:
            remaining.discard(future)
            outcome = future.result()
            future.release()
            report.n_forward += outcome.n_forward
            by_worker[outcome.worker.split(" ")[0]] += 1
            bar.update(len(work.chunks[outcome.index]))
    except BaseException:
        client.cancel(list(remaining))
        raise
    finally:
        bar.close()
    spread = ", ".join(f"{address}: {count}" for address, count in sorted(by_worker.items()))
    log(f"chunks by worker: {spread}")


def _commit(extractor, dataset, store, keys, work, report, log) -> None:
    """Commit each layer's entry, unless another client did (then reuse it)."""
    for info in work.layers:
        key = keys[info.name]
        if not store.has(key):
            try:
                metadata = {**extractor.entry_metadata(), "n_dataset_samples": len(dataset)}
                commit_entries(store, keys, work, dataset, metadata, report, log, layers=[info])
                continue
            except StoreError:
                # Another client (on a file system without working locks) committed it and removed the chunks.
                if not store.has(key):
                    raise
        work.partials[info.name].discard()
        report.cached.append(info.name)
        log(f"cached   {info.name} (committed by another client)")

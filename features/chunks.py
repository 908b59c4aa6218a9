"""The chunk protocol of an extraction, shared by the in-process and the cluster path.

An extraction's samples are cut into fixed, batch-aligned chunks
(`chunk_ranges`). Under the locks of the keys it computes (`reuse_or_compute`),
each key has a work area in the store (`open_work`: a `PartialEntry` whose
fingerprint records the batch size, chunk size and numerics environment).
A chunk counts once its file is renamed into place (`write_chunk`, or a
`ChunkWriter` thread that does it while the next chunks are computed); when
every chunk is there, each key's entry is assembled (`commit_entries`). A
killed run resumes at the first chunk without a file, with the same batches,
so the result is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import BackboneError
from .environment import numerics_environment
from .inputs.loader import decoded_bytes
from .keys import FeatureKey

__all__ = [
    "ChunkWork",
    "ChunkWriter",
    "ExtractionReport",
    "chunk_ranges",
    "commit_entries",
    "default_chunk_size",
    "open_work",
    "reuse_or_compute",
    "write_chunk",
]

_DEFAULT_CHUNK_SAMPLES = 256
_DEFAULT_CHUNK_BATCHES = 8
# Small images: chunks grow to this many bytes of decoded uint8 pixels, at most _MAX_DEFAULT_CHUNK_SAMPLES.
_DEFAULT_CHUNK_PIXEL_BYTES = 8 * 2**20
_MAX_DEFAULT_CHUNK_SAMPLES = 2048


@dataclass
class ExtractionReport:
    """What an extraction did.

    Attributes:
        keys: Layer name -> key of its stored features.
        cached: Layer names whose features were already stored (no forward pass).
        computed: Layer names computed by this call.
        n_images: Samples in the dataset.
        n_forward: Images that went through the model in this call.
        skipped: (sample id, reason) of every unreadable sample.
        seconds: Wall time of the call.
        timings: Seconds per phase of the computation (empty when all was cached):
            `decode_wait` (the loop waiting for decoded chunks), `dispatch` (host work
            starting batches on the device), `fetch` (waiting for their outputs),
            `write` (chunk files, in the writer thread), `write_wait` (the loop waiting
            for the writer), `commit` (assembling entries), `forward` (the forward
            passes, first dispatch to last fetch).
    """

    keys: dict[str, FeatureKey]
    cached: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)
    n_images: int = 0
    n_forward: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.n_forward / self.seconds if self.seconds else 0.0

    def add_time(self, phase: str, seconds: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + seconds

    def summary(self) -> str:
        parts = [f"{len(self.keys)} layer(s): {len(self.computed)} computed, {len(self.cached)} cached"]
        if self.n_forward:
            parts.append(f"{self.n_forward} images in {self.seconds:.1f} s ({self.images_per_second:.1f} img/s)")
        parts.append(f"{len(self.skipped)} unreadable image(s) skipped")
        return "; ".join(parts)


@dataclass
class ChunkWork:
    """An extraction's chunks (sample ranges), the work area of each layer to compute, and what is done.

    Attributes:
        layers: The `LayerInfo`s of the layers to compute.
        chunks: Sample range of every chunk.
        partials: Layer name -> its `PartialEntry` (work area).
        committed: Layer name -> chunks already committed for it.
        todo: Chunks some layer still lacks, in order.
    """

    layers: list
    chunks: list[range]
    partials: dict[str, Any]
    committed: dict[str, set[int]]
    todo: list[int]

    def lacking(self, index: int) -> dict[str, Any]:
        """Layer name -> work area, for the layers that lack chunk `index`."""
        return {name: partial for name, partial in self.partials.items() if index not in self.committed[name]}


def chunk_ranges(
    n_samples: int, batch_size: int, chunk_size: int | None = None, *, image_side: int | None = None
) -> list[range]:
    """Fixed chunks of `n_samples`: `chunk_size` samples each, batch-aligned.

    The default (`default_chunk_size`) keeps writing and committing chunk files a small
    part of the extraction's time, and a crash's loss small.

    Raises:
        BackboneError: If `chunk_size` is not a multiple of `batch_size` (a resumed run
            must see the same batches).
    """
    size = chunk_size or default_chunk_size(batch_size, image_side)
    if size % batch_size:
        raise BackboneError(
            f"chunk_size must be a multiple of batch_size={batch_size} so that a resumed run "
            f"sees the same batches. Received: chunk_size={chunk_size!r}"
        )
    return [range(start, min(start + size, n_samples)) for start in range(0, n_samples, size)]


def default_chunk_size(batch_size: int, image_side: int | None = None) -> int:
    """Samples per chunk: at least 256 and 8 batches; for small `image_side` x `image_side` inputs, more.

    Each chunk file has a fixed cost per layer, to write and to read back at the commit,
    whatever its size; for a cheap model on small images that cost is a visible share of
    the extraction (measured in benchmarks/RESULTS.md, vit_depth_sweep). So chunks of small
    images grow to 8 MiB of decoded pixels (2,048 samples at 32 px, about 680 at 64 px;
    unchanged from 128 px up), at most 2,048 samples: fewer files, while memory stays small
    and a crash still loses little work.
    """
    batches = max(_DEFAULT_CHUNK_BATCHES, _DEFAULT_CHUNK_SAMPLES // batch_size)
    if image_side:
        by_bytes = _DEFAULT_CHUNK_PIXEL_BYTES // decoded_bytes(1, image_side) // batch_size
        batches = max(batches, min(by_bytes, _MAX_DEFAULT_CHUNK_SAMPLES // batch_size))
    return batch_size * batches


def reuse_or_compute(store, keys: Mapping[str, FeatureKey], report: ExtractionReport, log, *, compute, before_lock=None) -> None:
    """Reuse the keys already stored; `compute(missing)` the others while holding their locks.

    Keys another process committed while we waited for their locks are reused,
    not recomputed. `before_lock()` runs once there is work, before waiting
    (e.g. up-front checks of a cluster).
    """
    missing = [name for name, key in keys.items() if not store.has(key)]
    report.cached = [name for name in keys if name not in missing]
    for name in report.cached:
        log(f"cached   {name} ({keys[name].entry_name})")
    store.clean_up(keys[name] for name in report.cached)
    if not missing:
        return
    store.check_writable()
    if before_lock is not None:
        before_lock()
    with store.lock(
        [keys[name] for name in missing],
        on_wait=lambda key: log(f"waiting  for another process extracting {key.entry_name} ({store.lock_holder(key)})"),
    ):
        done_meanwhile = [name for name in missing if store.has(keys[name])]
        for name in done_meanwhile:
            log(f"cached   {name} (extracted by another process)")
        report.cached += done_meanwhile
        missing = [name for name in missing if name not in done_meanwhile]
        if missing:
            compute(missing)


def open_work(
    store,
    keys: Mapping[str, FeatureKey],
    layers: Sequence,
    n_samples: int,
    *,
    batch_size: int,
    chunk_size: int | None,
    log: Callable[[str], None],
    environment: Mapping[str, Any] | None = None,
    image_side: int | None = None,
) -> ChunkWork:
    """The chunks and the work areas of `layers` (whose keys' locks the caller holds).

    `environment`: the numerics environment the chunks are computed in (default:
    this process's; a cluster extraction passes its workers'). `image_side`: the
    input size, which sets the default chunk size (`default_chunk_size`).
    """
    chunks = chunk_ranges(n_samples, batch_size, chunk_size, image_side=image_side)
    fingerprint = {
        "batch_size": batch_size,
        "chunk_size": len(chunks[0]) if chunks else 0,
        "n_samples": n_samples,
        # Preprocessing inside the compiled forward pass (not on the host, as before): the last
        # bit of some features can differ, so an entry never mixes chunks of the two.
        "preprocessing_on_device": True,
        # Chunks of another backend, device, oneDNN/XLA/TF32 setting... are never mixed in.
        "environment": numerics_environment() if environment is None else dict(environment),
    }
    names = [info.name for info in layers]
    partials = {name: store.partial(keys[name], fingerprint) for name in names}
    for name, partial in partials.items():
        for problem in partial.discarded:
            log(f"discarded {name} {problem}; recomputing")
        if partial.ignored:
            log(f"ignoring {name} foreign file(s) {partial.ignored} in {partial.directory}: not chunks")
    committed = {name: partial.committed() for name, partial in partials.items()}
    todo = sorted(set(range(len(chunks))) - set.intersection(*committed.values()))
    resumed = len(chunks) - len(todo)
    if resumed:
        log(f"resuming after {resumed} committed chunk(s) of {len(chunks)}")
    return ChunkWork(list(layers), chunks, partials, committed, todo)


def write_chunk(layers: Sequence, index: int, features: Sequence[np.ndarray], sample_indices, skipped, partials: Mapping) -> None:
    """Commit chunk `index` of each layer in `partials` (name -> `PartialEntry`); `features` follow `layers`."""
    for info, values in zip(layers, features):
        if info.name in partials:
            partials[info.name].write_chunk(index, values, sample_indices, skipped)


class ChunkWriter:
    """Writes chunk files in a background thread, in order, while the next chunks are computed.

    At most `depth` chunks wait to be written, so a crash loses at most the chunk
    being written and those waiting. An error in the thread (a full disk...) is
    raised in the caller at its next `put` or at `close`; nothing after it is written.

    Args:
        write: Called in the thread with each item given to `put`.
        depth: Chunks that may wait to be written.
        report: Receives the `write` (thread) and `write_wait` (caller blocked) timings.
    """

    _STOP = object()

    def __init__(self, write: Callable[..., None], *, depth: int = 2, report: ExtractionReport | None = None):
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._report = report or ExtractionReport(keys={})
        self._thread = threading.Thread(target=self._run, name="layerprobe-chunk-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._STOP:
            if self._error is not None:
                continue  # drain: nothing is written after a failure
            started = time.perf_counter()
            try:
                self._write(*item)
            except BaseException as error:  # raised in the caller
                self._error = error
            self._report.add_time("write", time.perf_counter() - started)

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, *item) -> None:
        """Queue one chunk to write (blocks while `depth` chunks wait)."""
        self._raise_error()
        started = time.perf_counter()
        self._queue.put(item)
        self._report.add_time("write_wait", time.perf_counter() - started)

    def close(self) -> None:
        """Write what is queued, stop the thread, and raise its error if it had one."""
        if self._thread.is_alive():
            started = time.perf_counter()
            self._queue.put(self._STOP)
            self._thread.join()
            self._report.add_time("write_wait", time.perf_counter() - started)
        self._raise_error()

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
            return
        # Leaving on an error: the chunks already computed are still written (they are
        # whole and correct), and the caller's error is the one raised.
        self._queue.put(self._STOP)
        self._thread.join()


def commit_entries(store, keys: Mapping[str, FeatureKey], work: ChunkWork, dataset, metadata: Mapping[str, Any], report: ExtractionReport, log, *, layers: Iterable | None = None) -> None:
    """Assemble each layer's committed chunks into its store entry (`layers`: default every layer of `work`)."""
    started = time.perf_counter()
    for info in work.layers if layers is None else layers:
        store.commit(
            keys[info.name],
            work.partials[info.name],
            len(work.chunks),
            sample_ids=dataset.sample_ids,
            labels=dataset.labels,
            splits=dataset.splits,
            class_names=dataset.class_names,
            metadata={**metadata, "layer_name": info.name},
            root=dataset.root,
        )
        report.computed.append(info.name)
        log(f"computed {info.name} ({keys[info.name].entry_name})")
    report.add_time("commit", time.perf_counter() - started)

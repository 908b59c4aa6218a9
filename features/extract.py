"""Extract features of several layers in one forward pass, into the store.

The work is cut into fixed chunks of samples. A background thread pool
decodes and resizes the images of the next chunks while the current one goes
through the model; each chunk's pooled features are committed to the store
as soon as they are computed. A killed run resumes at the first chunk not
committed, with the same batches, so the result is bit-identical to an
uninterrupted run. Keys already in the store cost no forward pass.

Above ~450 lines on purpose: `FeatureExtractor` is one object whose
steps (keys, work areas, chunks, forward pass, commit) share its state; split
apart they would pass that state around instead.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .backbone import Backbone, load_backbone
from .core.checks import check_positive_int
from .core.errors import BackboneError, InputError
from .environment import numerics_environment
from .inputs import DEFAULT_MAX_PIXELS, DecodedChunk, ImageDataset, iter_decoded_chunks
from .inputs.dataset import DIGEST_MODES, resolve_dataset_digest
from .inputs.loader import check_decoded_memory
from .keys import FeatureKey
from .layers import LayerInfo, resolve_layers
from .plans import ExtractionPlan, PlannedLayer
from .store import FeatureStore, library_versions
from .truncate import (
    DEFAULT_MAX_FLATTEN_DIM,
    build_extractor,
    per_layer_pooling,
    pooled_shape,
)

__all__ = ["FeatureExtractor", "ExtractionReport", "dtype_policy"]

STORAGE_DTYPES = ("float32", "float16")


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
    """

    keys: dict[str, FeatureKey]
    cached: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)
    n_images: int = 0
    n_forward: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.n_forward / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        parts = [f"{len(self.keys)} layer(s): {len(self.computed)} computed, {len(self.cached)} cached"]
        if self.n_forward:
            parts.append(f"{self.n_forward} images in {self.seconds:.1f} s ({self.images_per_second:.1f} img/s)")
        parts.append(f"{len(self.skipped)} unreadable image(s) skipped")
        return "; ".join(parts)


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Set Keras's global dtype policy inside the block only."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class FeatureExtractor:
    """A truncated backbone that extracts and caches pooled layer features.

    Args:
        model: Backbone name from the registry (e.g. `"VGG16"`), or the path of a
            Keras model saved with `model.save` (`"model.keras"`; see
            `layerprobe.features.model_files`).
        weights: `"imagenet"`, `None` (random init from `seed`) or a weights file;
            for a model file, its own weights (`"saved"`; the default means the same).
        layers: Layer names, aliases (`"stages"`, `"stage2"`, `"top"`) or
            relative depths in [0, 1].
        pooling: `"avg"`, `"max"`, `"flatten"` or `"none"`, or a layer -> pooling map.
        input_size: Square input side (default: the family's).
        batch_size: Images per forward pass.
        dtype: Storage dtype, `"float32"` or `"float16"`.
        mixed_precision: Run the forward pass in `mixed_float16` (for GPUs).
        model_kwargs: Extra constructor arguments, e.g. `{"alpha": 0.35}`.
        preprocessing: For a model file: `"none"`, `"caffe"`, `"tf"`, `"torch"` or
            a family name; None takes it from layerprobe's metadata or the graph.
        seed: Seed of the random initialisation when `weights=None`.
        max_flatten_dim: Refuse `flatten` pooling above this many values per image.
        max_pixels: Skip (and record) image files larger than this many pixels,
            checked from the header before decoding. It decides which samples
            are kept, so a value other than the default changes the keys.
        dataset_digest: How a dataset of files is identified in the keys:
            `"stat"` (paths, sizes and modification times: fast; new pixels
            written with the same size and a restored mtime go unnoticed, and a
            copy without `cp -p` is a cache miss) or `"content"` (the bytes of
            every file, hashed in parallel and cached per file; see
            `ImageDataset.digest`).

    Raises:
        BackboneError: For an unknown model, unusable weights, model_kwargs,
            input size, pooling, `dtype` or `batch_size`.
        UnknownLayerError: If a layer selector matches no layer.
        WeightsUnavailableError: If the weights cannot be obtained or loaded.
        InputError: If `max_pixels` is not a positive integer, or `dataset_digest`
            is not `"stat"` or `"content"`.

    Example:
        >>> extractor = FeatureExtractor("VGG16", weights=None, layers="stages", input_size=32)
        >>> report = extractor.extract(from_directory("images/"), FeatureStore("store/"))
        >>> train = FeatureStore("store/").load(report.keys["block3_pool"], split="train")
    """

    def __init__(
        self,
        model: str = "VGG16",
        *,
        weights: str | os.PathLike | None = "imagenet",
        layers: Sequence | str | float = ("top",),
        pooling: str | Mapping[str, str] = "avg",
        input_size: int | None = None,
        batch_size: int = 32,
        dtype: str = "float32",
        mixed_precision: bool = False,
        model_kwargs: Mapping[str, Any] | None = None,
        preprocessing: str | None = None,
        seed: int = 0,
        max_flatten_dim: int = DEFAULT_MAX_FLATTEN_DIM,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        dataset_digest: str = "stat",
    ):
        if dataset_digest not in DIGEST_MODES:
            raise InputError(f"dataset_digest must be one of {DIGEST_MODES}. Received: dataset_digest={dataset_digest!r}")
        self.dataset_digest = dataset_digest
        if dtype not in STORAGE_DTYPES:
            raise BackboneError(f"dtype must be one of {STORAGE_DTYPES}. Received: dtype={dtype!r}")
        # The constructor arguments, as given: `get_config()` rebuilds this extractor elsewhere (a dask worker).
        self._config = {
            "model": os.fspath(model) if isinstance(model, os.PathLike) else model,
            "weights": os.fspath(weights) if isinstance(weights, os.PathLike) else weights,
            "layers": layers if isinstance(layers, (str, float, int)) else list(layers),
            "pooling": pooling if isinstance(pooling, str) else dict(pooling),
            "input_size": input_size,
            "batch_size": batch_size,
            "dtype": dtype,
            "mixed_precision": mixed_precision,
            "model_kwargs": dict(model_kwargs or {}),
            "preprocessing": preprocessing,
            "seed": seed,
            "max_flatten_dim": max_flatten_dim,
            "max_pixels": max_pixels,
            "dataset_digest": dataset_digest,
        }
        self.batch_size = check_positive_int("batch_size", batch_size, error=BackboneError)
        self.dtype = dtype
        self.max_pixels = check_positive_int("max_pixels", max_pixels, error=InputError)
        self.compute_dtype = "mixed_float16" if mixed_precision else "float32"
        with dtype_policy(self.compute_dtype):
            self.backbone: Backbone = load_backbone(
                model, weights=weights, input_size=input_size, model_kwargs=model_kwargs,
                preprocessing=preprocessing, seed=seed,
            )
        self.layers: list[LayerInfo] = resolve_layers(self.backbone.model, self.backbone.spec, layers)
        self.pooling = per_layer_pooling(self.layers, pooling)
        self.feature_shapes = {
            info.name: pooled_shape(info, self.pooling[info.name], max_flatten_dim=max_flatten_dim)
            for info in self.layers
        }
        # (layer, pooling) tuple -> built multi-output model; Keras keeps each model's
        # traced predict function, so a later extract() on new data neither rebuilds nor retraces.
        self._extractors: dict[tuple[tuple[str, str], ...], Any] = {}

    @property
    def layer_names(self) -> list[str]:
        return [info.name for info in self.layers]

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments: `FeatureExtractor(**extractor.get_config())` builds the same extractor."""
        return copy.deepcopy(self._config)

    def plan(self) -> ExtractionPlan:
        """How this extractor's feature keys are made (see `layerprobe.features.plans`)."""
        last = len(self.backbone.model.layers) - 1
        return ExtractionPlan(
            architecture=self.backbone.architecture,
            weights_digest=self.backbone.weights_digest,
            input_size=self.backbone.input_size,
            preprocessing=self.backbone.spec.preprocessing,
            dtype=self.dtype,
            compute_dtype=self.compute_dtype,
            max_pixels=self.max_pixels,
            layers=tuple(
                PlannedLayer(info.name, info.stable_id, self.pooling[info.name], round(info.index / last, 4), info.stage)
                for info in self.layers
            ),
        )

    def keys(self, dataset: ImageDataset, dataset_digest: str | None = None) -> dict[str, FeatureKey]:
        """The store key of each selected layer's features for `dataset`.

        `dataset_digest`: `"stat"` or `"content"` (how to digest the dataset; default: this
        extractor's `dataset_digest`), or a digest already computed by `dataset.digest(...)`.
        """
        return self.plan().keys(resolve_dataset_digest(dataset, dataset_digest or self.dataset_digest))

    def extract(
        self,
        dataset: ImageDataset,
        store: FeatureStore,
        *,
        chunk_size: int | None = None,
        n_workers: int | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
        client: Any = None,
        dataset_digest: str | None = None,
    ) -> ExtractionReport:
        """Make sure the store holds every selected layer's features for `dataset`.

        Layers already stored are reused without a forward pass. The others
        are computed together, one forward pass per batch, under per-key locks
        (a concurrent extraction of the same key waits, then reuses it).
        With a dask `client`, the chunks are computed on the cluster's workers
        (see `layerprobe.features.cluster_extraction`), with bit-identical results.

        Args:
            dataset: Images to extract (see `layerprobe.features.inputs`).
            store: Where features are cached.
            chunk_size: Samples per committed chunk (a multiple of `batch_size`;
                default: about 256). Work lost to a crash is at most one chunk.
            n_workers: Decoding threads (default: min(8, CPUs)).
            progress: Show a tqdm progress bar with images/s.
            log: Called with one line per event (cached/computed/waiting).
            client: A `dask.distributed.Client`: compute the chunks on its workers,
                which must see the store at the same path (checked first). With a
                client, `n_workers` is the decoding threads per worker (default:
                the host's cores // its workers).
            dataset_digest: The dataset's digest if already computed (`dataset.digest(...)`),
                so that a caller that made its keys with it uses the same ones even if a
                file is touched meanwhile (one digest per run); or `"stat"`/`"content"`
                for this call. Default: computed with this extractor's `dataset_digest`.

        Returns:
            An `ExtractionReport`.

        Raises:
            InputError: If `dataset` has no samples, or (before any work) one chunk of
                decoded images cannot fit in the memory available.
            BackboneError: If `chunk_size` is not a multiple of `batch_size` (before any work).
            StoreError: If the store cannot be written (read-only, disk full);
                committed chunks are kept and the next call resumes from them.
            CorruptEntryError: If a stored entry of a selected layer is unreadable
                (the message says how to remove it).
        """
        if client is not None:
            from .cluster_extraction import extract_on_cluster

            return extract_on_cluster(
                self, dataset, store, client, chunk_size=chunk_size, n_threads=n_workers, progress=progress, log=log,
                dataset_digest=dataset_digest,
            )
        if len(dataset) == 0:
            raise InputError("The dataset has no samples; there is nothing to extract. Received: 0 samples")
        first_chunk = len(self._chunks(len(dataset), chunk_size)[0])  # a bad chunk_size fails before any lock
        log = log or (lambda message: None)
        started = time.perf_counter()
        keys = self.keys(dataset, dataset_digest)
        report = ExtractionReport(keys=keys, n_images=len(dataset))
        self._reuse_or_compute(
            store, keys, report, log,
            compute=lambda missing: self._compute(dataset, store, keys, missing, report, chunk_size, n_workers, progress, log),
            before_lock=lambda: check_decoded_memory(first_chunk, self.backbone.input_size, what="chunk_size"),
        )
        report.skipped = self._skipped(store, keys, dataset.root)
        report.seconds = time.perf_counter() - started
        return report

    @staticmethod
    def _reuse_or_compute(store, keys, report, log, *, compute, before_lock=None) -> None:
        """Reuse the keys already stored; `compute(missing)` the others while holding their locks.

        The one protocol of both the in-process and the cluster path: keys another
        process committed while we waited for their locks are reused, not recomputed.
        `before_lock()` runs once there is work, before waiting (e.g. up-front checks).
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

    @staticmethod
    def _skipped(store: FeatureStore, keys, root: str | None = None) -> list[tuple[str, str]]:
        first = next(iter(keys.values()))
        return store.info(first.entry_name, root=root)["skipped"]

    def _chunks(self, n_samples: int, chunk_size: int | None) -> list[range]:
        size = chunk_size or self.batch_size * max(1, 256 // self.batch_size)
        if size % self.batch_size:
            raise BackboneError(
                f"chunk_size must be a multiple of batch_size={self.batch_size} so that a resumed run "
                f"sees the same batches. Received: chunk_size={chunk_size!r}"
            )
        return [range(start, min(start + size, n_samples)) for start in range(0, n_samples, size)]

    def _extractor(self, layers: Sequence[LayerInfo]):
        """The multi-output model for `layers`, built on first use and kept for later calls."""
        key = tuple((info.name, self.pooling[info.name]) for info in layers)
        if key not in self._extractors:
            with dtype_policy(self.compute_dtype):
                self._extractors[key] = build_extractor(self.backbone.model, layers, self.pooling)
        return self._extractors[key]

    def _forward(self, model, layers: Sequence[LayerInfo], images: np.ndarray) -> list[np.ndarray]:
        """Pooled outputs for a chunk, in fixed-size batches (the last one zero-padded).

        Fixed shapes mean one compiled function and identical numerics for a batch
        wherever it falls, which makes resumed runs bit-identical.
        """
        outputs: list[list[np.ndarray]] = [[] for _ in layers]
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            n_real = len(batch)
            if n_real < self.batch_size:
                padding = np.zeros((self.batch_size - n_real, *batch.shape[1:]), dtype=batch.dtype)
                batch = np.concatenate([batch, padding])
            results = model.predict_on_batch(batch)
            if not isinstance(results, (list, tuple)):
                results = [results]
            for collected, result in zip(outputs, results):
                collected.append(np.asarray(result)[:n_real])
        return [
            np.concatenate(parts).astype(self.dtype, copy=False)
            if parts
            else np.zeros((0, *self.feature_shapes[info.name]), self.dtype)
            for parts, info in zip(outputs, layers)
        ]

    def _compute(self, dataset, store, keys, missing, report, chunk_size, n_workers, progress, log) -> None:
        """Compute the missing layers' chunks in-process, then commit their entries.

        Decoding and `preprocess_input` run in the loader's threads, overlapping the
        forward pass here (on a GPU, preprocessing in this thread took a quarter of
        the time: benchmarks/RESULTS.md). Each chunk is committed before the next
        one's forward pass, so a crash loses at most the chunk in flight.
        """
        work = self._open_work(dataset, store, keys, missing, chunk_size, log)
        bar = _progress_bar(total=sum(len(work.chunks[i]) for i in work.todo), enabled=progress, desc="extracting")
        try:
            decoded = iter_decoded_chunks(
                dataset,
                [work.chunks[i] for i in work.todo],
                self.backbone.input_size,
                n_workers=n_workers,
                max_pixels=self.max_pixels,
                transform=self.backbone.spec.preprocess_input,
            )
            with contextlib.closing(decoded):
                for chunk in decoded:
                    index = work.todo[chunk.index]
                    lacking = {name: partial for name, partial in work.partials.items() if index not in work.committed[name]}
                    features = self._chunk_features(work.layers, chunk.images)
                    self._write_chunk(work.layers, index, features, chunk.sample_indices, chunk.skipped, lacking)
                    report.n_forward += len(chunk.sample_indices)
                    bar.update(len(work.chunks[index]))
        finally:
            bar.close()
        self._commit_entries(dataset, store, keys, work, report, log)

    def _open_work(self, dataset, store, keys, missing, chunk_size, log, environment=None) -> "_Work":
        """The chunks of `dataset` and the work areas of the `missing` layers' keys (hold their locks).

        `environment`: the numerics environment the chunks are computed in (default:
        this process's; a distributed extraction passes its workers').
        """
        layers = [info for info in self.layers if info.name in missing]
        chunks = self._chunks(len(dataset), chunk_size)
        fingerprint = {
            "batch_size": self.batch_size,
            "chunk_size": len(chunks[0]) if chunks else 0,
            "n_samples": len(dataset),
            # Chunks of another backend, device, oneDNN/XLA/TF32 setting... are never mixed in.
            "environment": numerics_environment() if environment is None else dict(environment),
        }
        partials = {name: store.partial(keys[name], fingerprint) for name in missing}
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
        return _Work(layers, chunks, partials, committed, todo)

    def _compute_chunk(self, layers: Sequence[LayerInfo], index: int, chunk: DecodedChunk, partials: Mapping) -> None:
        """Preprocess, run and commit one decoded chunk, for each layer in `partials` (name -> `PartialEntry`).

        The one code path of a chunk, in-process and on a dask worker
        (`layerprobe.features.cluster_extraction`): the same batches, the same numbers.
        """
        features = self._chunk_features(layers, self.backbone.spec.preprocess_input(chunk.images))
        self._write_chunk(layers, index, features, chunk.sample_indices, chunk.skipped, partials)

    def _chunk_features(self, layers: Sequence[LayerInfo], images: np.ndarray) -> list[np.ndarray]:
        """Pooled features of `layers` for one chunk of preprocessed images."""
        return self._forward(self._extractor(layers), layers, images)

    @staticmethod
    def _write_chunk(layers, index: int, features, sample_indices, skipped, partials: Mapping) -> None:
        """Commit chunk `index` of each layer in `partials` (name -> `PartialEntry`)."""
        for info, values in zip(layers, features):
            if info.name in partials:
                partials[info.name].write_chunk(index, values, sample_indices, skipped)

    def _commit_entries(self, dataset, store, keys, work: "_Work", report, log) -> None:
        """Assemble each layer's committed chunks into its store entry."""
        metadata = {
            "backbone": self.backbone.architecture,
            "weights_source": self.backbone.weights or "random init",
            "batch_size": self.batch_size,
            "n_dataset_samples": len(dataset),
            "max_pixels": self.max_pixels,
            "compute_dtype": self.compute_dtype,
            "versions": library_versions(),
        }
        for info in work.layers:
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


@dataclass
class _Work:
    """An extraction's chunks (sample ranges), the work area of each layer to compute, and what is done."""

    layers: list[LayerInfo]
    chunks: list[range]
    partials: dict[str, Any]
    committed: dict[str, set[int]]
    todo: list[int]

def _progress_bar(*, total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", dynamic_ncols=True)


"""Extract features of several layers in one forward pass, into the store.

`FeatureExtractor` is a truncated backbone with its settings. Its `extract`
cuts the dataset into fixed chunks (`layerprobe.features.chunks`, the protocol
shared with the cluster path): background threads decode the next chunks
while the device computes the current ones, a few batches in flight
(`layerprobe.features.device`: raw uint8 pixels to the device, preprocessing
and pooling inside one compiled function), and a writer thread commits each
finished chunk. A killed run resumes at the first chunk not committed, with
the same batches, so the result is bit-identical to an uninterrupted run.
Keys already in the store cost no forward pass.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import inspect
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backbone import Backbone, load_backbone
from .backend import import_keras_quietly
from .chunks import (
    ChunkWork,
    ChunkWriter,
    ExtractionReport,
    chunk_ranges,
    commit_entries,
    open_work,
    reuse_or_compute,
    write_chunk,
)
from ..core.checks import check_positive_int
from ..core.errors import BackboneError, InputError
from .device import DeviceForward, accelerator_name, is_out_of_memory, pad_batch
from .inputs import DEFAULT_MAX_PIXELS, DecodedChunk, ImageDataset, iter_decoded_chunks
from .inputs.dataset import DIGEST_MODES, resolve_dataset_digest
from .inputs.decoding import resolve_decoder
from .inputs.loader import check_decoded_memory
from .inputs.pixel_cache import PixelCache, PixelKey
from .keys import DEFAULT_BATCH_SIZE, STORAGE_DTYPES, FeatureKey, decoded_pixels
from .flops import forward_flops
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


MAX_AUTO_BATCH_SIZE = 512
"""The largest batch `batch_size="auto"` tries on an accelerator (larger ones do not run faster)."""

_COMPUTE_POLICIES = {False: "float32", "float32": "float32", True: "mixed_float16", "float16": "mixed_float16",
                     "mixed_float16": "mixed_float16", "bfloat16": "mixed_bfloat16", "mixed_bfloat16": "mixed_bfloat16"}

SHARED_EXTRACTORS = 4
"""Extractors (built backbones) `FeatureExtractor.shared` keeps per process."""

IN_FLIGHT_BATCHES = 4
"""Batches dispatched to the device ahead of the one whose outputs are being fetched."""

WRITE_QUEUE_CHUNKS = 2
"""Computed chunks that may wait for the writer thread (lost, with the one being computed, if the process dies)."""


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Set Keras's global dtype policy inside the block only."""
    keras = import_keras_quietly()  # the first Keras import of a `FeatureExtractor(...)`: muted
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def compute_dtype_policy(mixed_precision: bool | str) -> str:
    """The Keras dtype policy of a `mixed_precision=` value (see `FeatureExtractor`).

    Raises:
        BackboneError: For another value.
    """
    key = mixed_precision.lower() if isinstance(mixed_precision, str) else mixed_precision
    if isinstance(key, (bool, str)) and key in _COMPUTE_POLICIES:
        return _COMPUTE_POLICIES[key]
    raise BackboneError(
        f"mixed_precision must be False (float32 compute), 'bfloat16', 'float16' or True (mixed_float16). "
        f"Received: mixed_precision={mixed_precision!r}"
    )


class FeatureExtractor:
    """A truncated backbone that extracts and caches pooled layer features.

    Args:
        model: Backbone name from the registry (e.g. `"VGG16"`), the path of a
            Keras model saved with `model.save` (`"model.keras"`; see
            `layerprobe.features.model_files`), or a keras-hub vision transformer
            (`"keras_hub:preset:dinov2_small"`, `"keras_hub:DINOV2Backbone"` with
            `model_kwargs`, a preset folder; see `layerprobe.features.hub`).
        weights: `"imagenet"`, `None` (random init from `seed`) or a weights file;
            for a model file, its own weights (`"saved"`; the default means the same).
        layers: Layer names, aliases (`"stages"`, `"stage2"`, `"top"`) or
            relative depths in [0, 1].
        pooling: `"avg"`, `"max"`, `"flatten"` or `"none"`, or a layer -> pooling map;
            for a transformer's (tokens, width) outputs also `"cls"`, `"mean"` and
            `"cls+mean"` (see `layerprobe.features.truncate`).
        input_size: Square input side (default: the family's).
        batch_size: Images per forward pass, or `"auto"`: 32 on a CPU; on an
            accelerator the largest power of two up to `MAX_AUTO_BATCH_SIZE` whose
            forward pass fits in its memory, found on the first extraction that
            computes (`resolve_batch_size`) and recorded in each entry's metadata.
        dtype: Storage dtype, `"float32"` or `"float16"` (the features on disk).
        mixed_precision: Compute precision of the forward pass: False (float32),
            `"bfloat16"` (mixed_bfloat16: float32 weights, bfloat16 compute; the fast
            choice on recent GPUs and TPUs), `"float16"` or True (mixed_float16).
            Part of the feature key (the numbers differ), independent of `dtype`.
        model_kwargs: Extra constructor arguments, e.g. `{"alpha": 0.35}`.
        preprocessing: For a model file or keras-hub model: `"none"`, `"caffe"`, `"tf"`,
            `"torch"` or a family name; None takes it from layerprobe's metadata or the
            graph (a keras-hub preset: its image converter).
        seed: Seed of the random initialisation when `weights=None`.
        max_flatten_dim: Refuse `flatten` pooling above this many values per image.
        max_pixels: Skip (and record) image files larger than this many pixels,
            checked from the header before decoding. It decides which samples
            are kept, so a value other than the default changes the keys.
        decoder: Decoder of image files: `"auto"` (nvImageCodec on the GPU where it is
            installed and Keras computes on a GPU, else simplejpeg where installed, else
            Pillow), `"pillow"`, `"simplejpeg"` or `"nvimgcodec"`. Pillow and simplejpeg
            give the same pixels and share keys; nvImageCodec's pixels differ slightly,
            so its features have other keys (see `layerprobe.features.inputs.decoding`).
        dataset_digest: How a dataset of files is identified in the keys:
            `"stat"` (paths, sizes and modification times: fast; new pixels
            written with the same size and a restored mtime go unnoticed, and a
            copy without `cp -p` is a cache miss) or `"content"` (the bytes of
            every file, hashed in parallel and cached per file; see
            `ImageDataset.digest`).
        pixel_cache: Keep the decoded pixels of image files in the store and read them
            back instead of decoding again: a later extraction at the same input size
            with the same decoder (another backbone, other layers) decodes nothing
            (`layerprobe.features.inputs.pixel_cache`). Costs 3 x input_size² bytes
            of disk per image.

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
        batch_size: int | str = "auto",
        dtype: str = "float32",
        mixed_precision: bool | str = False,
        model_kwargs: Mapping[str, Any] | None = None,
        preprocessing: str | None = None,
        seed: int = 0,
        max_flatten_dim: int = DEFAULT_MAX_FLATTEN_DIM,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        dataset_digest: str = "stat",
        decoder: str = "auto",
        pixel_cache: bool = False,
    ):
        if dataset_digest not in DIGEST_MODES:
            raise InputError(f"dataset_digest must be one of {DIGEST_MODES}. Received: dataset_digest={dataset_digest!r}")
        self.dataset_digest = dataset_digest
        if dtype not in STORAGE_DTYPES:
            raise BackboneError(f"dtype must be one of {STORAGE_DTYPES}. Received: dtype={dtype!r}")
        # The constructor arguments: `get_config()` rebuilds this extractor elsewhere (a dask worker).
        self._config = self.config_of(
            model=model, weights=weights, layers=layers, pooling=pooling, input_size=input_size,
            batch_size=batch_size, dtype=dtype, mixed_precision=mixed_precision, model_kwargs=model_kwargs,
            preprocessing=preprocessing, seed=seed, max_flatten_dim=max_flatten_dim, max_pixels=max_pixels,
            dataset_digest=dataset_digest, decoder=decoder, pixel_cache=pixel_cache,
        )
        self.pixel_cache = bool(pixel_cache)
        self.decoder = resolve_decoder(decoder)
        self._auto_batch = batch_size == "auto"
        self.batch_size = DEFAULT_BATCH_SIZE if self._auto_batch else check_positive_int(
            "batch_size", batch_size, error=BackboneError
        )
        self.dtype = dtype
        self.max_pixels = check_positive_int("max_pixels", max_pixels, error=InputError)
        self.compute_dtype = compute_dtype_policy(mixed_precision)
        with dtype_policy(self.compute_dtype):
            self.backbone: Backbone = load_backbone(
                model, weights=weights, input_size=input_size, model_kwargs=model_kwargs,
                preprocessing=preprocessing, seed=seed,
            )
        self.layers: list[LayerInfo] = resolve_layers(self.backbone.model, self.backbone.spec, layers)
        tokens = self.backbone.spec.tokens
        self.pooling = per_layer_pooling(self.layers, pooling, tokens)
        self.feature_shapes = {
            info.name: pooled_shape(info, self.pooling[info.name], tokens=tokens, max_flatten_dim=max_flatten_dim)
            for info in self.layers
        }
        # (layer, pooling) tuple -> compiled forward pass (see `device_forward`).
        self._forwards: dict[tuple[tuple[str, str], ...], DeviceForward] = {}

    @property
    def layer_names(self) -> list[str]:
        return [info.name for info in self.layers]

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments: `FeatureExtractor.from_config(extractor.get_config())` builds the same extractor."""
        return copy.deepcopy(self._config)

    @classmethod
    def config_of(cls, **arguments: Any) -> dict[str, Any]:
        """What `get_config()` of `FeatureExtractor(**arguments)` returns, without building it.

        Every constructor argument, defaults filled in, as JSON-ready values (paths as
        strings, lists and dicts for sequences and mappings): the one form in which
        sidecars, plans and dask tasks describe an extractor.

        Raises:
            TypeError: For an argument the constructor does not take.
        """
        bound = inspect.signature(cls.__init__).bind(None, **arguments)
        bound.apply_defaults()
        config = {name: value for name, value in bound.arguments.items() if name != "self"}
        for name in ("model", "weights"):
            if isinstance(config[name], os.PathLike):
                config[name] = os.fspath(config[name])
        if not isinstance(config["layers"], (str, float, int)):
            config["layers"] = list(config["layers"])
        if not isinstance(config["pooling"], str):
            config["pooling"] = dict(config["pooling"])
        config["model_kwargs"] = dict(config["model_kwargs"] or {})
        return copy.deepcopy(config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FeatureExtractor:
        """A new extractor from `get_config()`'s output (Keras is imported quietly first)."""
        import_keras_quietly()
        return cls(**config)

    @classmethod
    def shared(cls, config: Mapping[str, Any]) -> FeatureExtractor:
        """This process's extractor for `config`, built on first use and kept.

        A few are kept per process (`SHARED_EXTRACTORS`, least recently used dropped
        first), so scikit-learn clones of a `LayerFeatures` and the chunk tasks of a
        dask worker reuse one built (and compiled) backbone per settings.
        """
        config = cls.config_of(**config)
        token = json.dumps(config, sort_keys=True, default=str)
        with _shared_lock:
            if token in _shared:
                _shared.move_to_end(token)
            else:
                _shared[token] = cls.from_config(config)
                _shared_builds[0] += 1
                while len(_shared) > SHARED_EXTRACTORS:
                    _shared.popitem(last=False)
            return _shared[token]

    @staticmethod
    def shared_info() -> dict[str, int]:
        """This process's shared extractors: `builds` (so far), `kept` (now) and `pid`.

        On a dask cluster, `client.run(FeatureExtractor.shared_info)` shows that each
        worker built a backbone once per settings, however many chunks it computed.
        """
        with _shared_lock:
            return {"builds": _shared_builds[0], "kept": len(_shared), "pid": os.getpid()}

    @functools.cached_property
    def layer_flops(self) -> Mapping[str, int]:
        """Selected layer name -> forward FLOPs per image from the input (`layerprobe.features.flops`)."""
        return forward_flops(self.backbone.model, [info.name for info in self.layers])

    def plan(self) -> ExtractionPlan:
        """How this extractor's feature keys are made (see `layerprobe.features.plans`)."""
        flops = self.layer_flops
        return ExtractionPlan(
            architecture=self.backbone.architecture,
            weights_digest=self.backbone.weights_digest,
            input_size=self.backbone.input_size,
            preprocessing=self.backbone.spec.preprocessing,
            dtype=self.dtype,
            compute_dtype=self.compute_dtype,
            max_pixels=self.max_pixels,
            pixels=decoded_pixels(self.decoder),
            layers=tuple(
                PlannedLayer(info.name, info.stable_id, self.pooling[info.name], round(info.depth, 4), info.stage,
                             flops[info.name])
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
        dataset_digest: str | None = None,
    ) -> ExtractionReport:
        """Make sure the store holds every selected layer's features for `dataset`.

        Layers already stored are reused without a forward pass. The others
        are computed together, one forward pass per batch, under per-key locks
        (a concurrent extraction of the same key waits, then reuses it).
        `layerprobe.features.cluster_extraction.extract_on_cluster` does the same
        on a dask cluster's workers, with bit-identical results.

        Args:
            dataset: Images to extract (see `layerprobe.features.inputs`).
            store: Where features are cached.
            chunk_size: Samples per committed chunk (a multiple of `batch_size`;
                default: at least 256, up to 2,048 for small images: `default_chunk_size`).
                Work lost to a crash is at most one chunk.
            n_workers: Decoding threads (default: min(8, CPUs)).
            progress: Show a tqdm progress bar with images/s.
            log: Called with one line per event (cached/computed/waiting).
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
        if len(dataset) == 0:
            raise InputError("The dataset has no samples; there is nothing to extract. Received: 0 samples")
        # a bad chunk_size fails before any lock ("auto" batches are resolved to a divisor of chunk_size)
        first_chunk = len(chunk_ranges(len(dataset), DEFAULT_BATCH_SIZE if self._auto_batch else self.batch_size,
                                       chunk_size, image_side=self.backbone.input_size)[0])
        log = log or (lambda message: None)
        started = time.perf_counter()
        keys = self.keys(dataset, dataset_digest)
        report = ExtractionReport(keys=keys, n_images=len(dataset))
        reuse_or_compute(
            store, keys, report, log,
            compute=lambda missing: self._compute(dataset, store, keys, missing, report, chunk_size, n_workers, progress, log),
            before_lock=lambda: check_decoded_memory(
                first_chunk, self.backbone.input_size, what="chunk_size", dtype=dataset.pixel_dtype
            ),
        )
        report.skipped = store.info(next(iter(keys.values())).entry_name, root=dataset.root)["skipped"]
        report.seconds = time.perf_counter() - started
        return report

    def entry_metadata(self) -> dict[str, Any]:
        """What every entry this extractor commits records beside its features (not part of the key)."""
        return {
            "backbone": self.backbone.architecture,
            "weights_source": self.backbone.weights or "random init",
            "batch_size": self.batch_size,
            "max_pixels": self.max_pixels,
            "compute_dtype": self.compute_dtype,
            "decoder": self.decoder,
            "versions": library_versions(),
        }

    def resolve_batch_size(self, log: Callable[[str], None] | None = None, *, chunk_size: int | None = None) -> int:
        """The batch size, with `"auto"` resolved once (see the `batch_size` argument).

        On an accelerator, batches of `MAX_AUTO_BATCH_SIZE`, then half as many..., go
        through the forward pass until one fits in the device's memory (each size tried
        is compiled once), never more than divides `chunk_size` when one is given. On a
        CPU, `DEFAULT_BATCH_SIZE`.
        """
        if not self._auto_batch:
            return self.batch_size
        self._auto_batch = False
        device = accelerator_name()
        if device is None:
            return self.batch_size
        forward, size = self.device_forward(), MAX_AUTO_BATCH_SIZE
        while chunk_size and size > DEFAULT_BATCH_SIZE and chunk_size % size:
            size //= 2  # a chunk holds whole batches
        shape = (self.backbone.input_size, self.backbone.input_size, 3)
        while size > DEFAULT_BATCH_SIZE:
            try:
                forward(np.zeros((size, *shape), np.uint8))
                break
            except Exception as error:  # the backends' out-of-memory errors have no common type
                if not is_out_of_memory(error):
                    raise
                size //= 2
        self.batch_size = size
        (log or (lambda message: None))(f"batch size {size} (auto, the largest that fits on {device})")
        return size

    def open_work(self, dataset, store, keys, missing, *, chunk_size=None, log=None, environment=None) -> ChunkWork:
        """The chunks of `dataset` and the work areas of the `missing` layers' keys (whose locks the caller holds)."""
        self.resolve_batch_size(log, chunk_size=chunk_size)
        layers = [info for info in self.layers if info.name in missing]
        return open_work(
            store, keys, layers, len(dataset), batch_size=self.batch_size, chunk_size=chunk_size,
            log=log or (lambda message: None), environment=environment, image_side=self.backbone.input_size,
        )

    def device_forward(self, layers: Sequence[LayerInfo] | None = None) -> DeviceForward:
        """The compiled forward pass of `layers` (default: all selected) on raw pixels, built once and kept.

        Keeping it means a later `extract` on new data neither rebuilds nor recompiles.
        """
        layers = self.layers if layers is None else layers
        key = tuple((info.name, self.pooling[info.name]) for info in layers)
        if key not in self._forwards:
            with dtype_policy(self.compute_dtype):
                model = build_extractor(self.backbone.model, layers, self.pooling, tokens=self.backbone.spec.tokens)
            self._forwards[key] = DeviceForward(model, self.backbone.spec.preprocess_input)
        return self._forwards[key]

    def iter_features(
        self,
        chunks: Iterable[DecodedChunk],
        layers: Sequence[LayerInfo] | None = None,
        *,
        report: ExtractionReport | None = None,
        in_flight: int = IN_FLIGHT_BATCHES,
    ) -> Iterator[tuple[DecodedChunk, list[np.ndarray]]]:
        """Each decoded chunk with its pooled features of `layers` (default: all selected), in order.

        Batches of `batch_size` (the last one of a chunk zero-padded: one shape, one
        compilation, and the same numbers for a batch wherever it falls, which makes
        resumed runs bit-identical) are dispatched to the device up to `in_flight`
        ahead of the one whose outputs are fetched, across chunk boundaries, so the
        device never waits for the host between batches.

        Args:
            chunks: Decoded chunks (`iter_decoded_chunks`), raw pixels in 0-255.
            layers: Layers to compute, in the order of the returned features.
            report: Receives the `decode_wait`, `dispatch`, `fetch` and `forward` timings.
            in_flight: Batches dispatched ahead of the one being fetched.

        Yields:
            (chunk, features): one float array (n_decoded, *shape) per layer, in the
            storage dtype.
        """
        layers = self.layers if layers is None else list(layers)
        forward = self.device_forward(layers)
        before = dict(forward.timings)
        in_progress: collections.deque[_ChunkInFlight] = collections.deque()  # in order, until all fetched
        pending: collections.deque = collections.deque()  # (chunk in flight, real rows, handle), dispatch order
        first_dispatch = None

        def fetch_oldest() -> None:
            entry, rows, handle = pending.popleft()
            for parts, output in zip(entry.parts, forward.fetch(handle)):
                parts.append(output[:rows])
            entry.unfetched -= 1

        def finished_chunks() -> Iterator[tuple[DecodedChunk, list[np.ndarray]]]:
            while in_progress and not in_progress[0].unfetched:
                entry = in_progress.popleft()
                yield entry.chunk, self._assemble(entry.parts, layers)

        iterator = iter(chunks)
        while True:
            started = time.perf_counter()
            try:
                chunk = next(iterator, None)
            except BaseException:
                # The input failed (an unreadable disk...): the chunks already on the device are
                # finished and handed out first, so that they are committed.
                while pending:
                    fetch_oldest()
                yield from finished_chunks()
                raise
            if report is not None:
                report.add_time("decode_wait", time.perf_counter() - started)
            if chunk is None:
                break
            starts = range(0, len(chunk.images), self.batch_size)
            entry = _ChunkInFlight(chunk, [[] for _ in layers], len(starts))
            in_progress.append(entry)
            for start in starts:
                batch = chunk.images[start : start + self.batch_size]
                first_dispatch = first_dispatch or time.perf_counter()
                pending.append((entry, len(batch), forward.dispatch(pad_batch(batch, self.batch_size))))
                while len(pending) > in_flight:
                    fetch_oldest()
            yield from finished_chunks()
        while pending:
            fetch_oldest()
        yield from finished_chunks()
        if report is not None:
            for phase in ("dispatch", "fetch"):
                report.add_time(phase, forward.timings[phase] - before[phase])
            if first_dispatch is not None:
                report.add_time("forward", time.perf_counter() - first_dispatch)

    def features(self, images: np.ndarray, layers: Sequence[LayerInfo] | None = None) -> list[np.ndarray]:
        """Pooled features of `layers` (default: all selected) for a batch of raw pixels (n, size, size, 3) in 0-255."""
        chunk = DecodedChunk(0, np.arange(len(images)), images, [])
        return next(self.iter_features([chunk], layers))[1]

    def _assemble(self, parts: list[list[np.ndarray]], layers: Sequence[LayerInfo]) -> list[np.ndarray]:
        return [
            np.concatenate(layer_parts).astype(self.dtype, copy=False)
            if layer_parts
            else np.zeros((0, *self.feature_shapes[info.name]), self.dtype)
            for layer_parts, info in zip(parts, layers)
        ]

    def _compute(self, dataset, store, keys, missing, report, chunk_size, n_workers, progress, log) -> None:
        """Compute the missing layers' chunks in-process, then commit their entries.

        Decoding runs in the loader's threads, the forward passes on the device a few
        batches ahead, and chunk files are written by a writer thread: a crash loses at
        most the chunks in flight (being computed, or waiting to be written).
        """
        work = self.open_work(dataset, store, keys, missing, chunk_size=chunk_size, log=log)
        bar = _progress_bar(total=sum(len(work.chunks[i]) for i in work.todo), enabled=progress, desc="extracting")

        def write(chunk: DecodedChunk, features: list[np.ndarray]) -> None:
            index = work.todo[chunk.index]
            write_chunk(work.layers, index, features, chunk.sample_indices, chunk.skipped, work.lacking(index))
            bar.update(len(work.chunks[index]))

        decoded = iter_decoded_chunks(
            dataset,
            [work.chunks[i] for i in work.todo],
            self.backbone.input_size,
            n_workers=n_workers,
            max_pixels=self.max_pixels,
            dtype=dataset.pixel_dtype,
            decoder=self.decoder,
            pixel_cache=self._pixel_cache(store, keys),
        )
        try:
            with contextlib.closing(decoded), ChunkWriter(write, depth=WRITE_QUEUE_CHUNKS, report=report) as writer:
                # at most one chunk's batches ahead: a crash then loses at most the chunks in flight
                in_flight = min(IN_FLIGHT_BATCHES, max(1, len(work.chunks[0]) // self.batch_size))
                for chunk, features in self.iter_features(decoded, work.layers, report=report, in_flight=in_flight):
                    writer.put(chunk, features)
                    report.n_forward += len(chunk.sample_indices)
        finally:
            bar.close()
        commit_entries(store, keys, work, dataset, {**self.entry_metadata(), "n_dataset_samples": len(dataset)}, report, log)


    def _pixel_cache(self, store: FeatureStore, keys: Mapping[str, FeatureKey]) -> PixelCache | None:
        """The store's cache of this extraction's decoded pixels, where `pixel_cache` is on."""
        if not self.pixel_cache:
            return None
        key = PixelKey(next(iter(keys.values())).dataset, self.backbone.input_size, decoded_pixels(self.decoder))
        return PixelCache(store.root, key)


_shared: collections.OrderedDict[str, FeatureExtractor] = collections.OrderedDict()
_shared_lock = threading.Lock()
_shared_builds = [0]


@dataclass
class _ChunkInFlight:
    """A chunk whose batches are on the device: the outputs fetched so far, per layer."""

    chunk: DecodedChunk
    parts: list[list[np.ndarray]]
    unfetched: int


def _progress_bar(*, total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", dynamic_ncols=True)

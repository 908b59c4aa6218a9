"""Decode a dataset chunk by chunk in background threads: `iter_decoded_chunks` yields `DecodedChunk`s.

A producer thread decodes each chunk with a pool of worker threads and queues a
few decoded chunks ahead of the consumer (bounded memory); unreadable files are
recorded, not raised; an I/O error that persists after retries stops the
iteration (`ImageReadError`), so its chunk is never handed out, let alone
committed; closing the iterator stops the threads.

Memory: besides the `prefetch` + 2 chunks of output pixels (`size` x `size` x 3
values per sample, uint8 for files: `decoded_bytes`), the decoding threads together hold at
most max(`decode_budget`, one image's `decode_cost`) bytes of decoded pixels. A
size at which even one chunk (or one batch) cannot fit in the memory available
(`decoded_memory_problem`) is refused before any work, saying what fits.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ...core.checks import check_positive_int
from ...core.cores import usable_cores
from ...core.errors import ImageReadError, InputError, UnreadableImageError
from .dataset import ImageDataset
from .decoding import (
    DEFAULT_DECODE_BUDGET,
    DEFAULT_MAX_PIXELS,
    DecodeBudget,
    open_image_file,
    resolve_decoder,
    with_io_retries,
)
from .device_decoding import DeviceDecoder
from .pixel_cache import BLOCK_SAMPLES, PixelBlock, PixelCache

__all__ = [
    "DecodedChunk",
    "available_memory",
    "check_decoded_memory",
    "decoded_bytes",
    "decoded_memory_problem",
    "iter_decoded_chunks",
]

_QUEUE_POLL_SECONDS = 0.1
_DONE = object()


@dataclass
class DecodedChunk:
    """The decoded samples of one chunk.

    Attributes:
        index: Chunk number, counting from 0.
        sample_indices: int64 dataset indices of the samples that decoded, in order.
        images: Pixels (n_decoded, size, size, 3) in 0-255, of the dtype asked for
            (uint8 for files, float32 for float arrays: `ImageDataset.pixel_dtype`).
            Rows of an in-memory dataset already at the size and dtype are a read-only
            view of its array; otherwise the consumer owns them. Decoded on the GPU
            (`decoder="nvimgcodec"`), a uint8 backend tensor there.
        skipped: (sample index, reason) for each sample that could not be decoded.
    """

    index: int
    sample_indices: np.ndarray
    images: np.ndarray
    skipped: list[tuple[int, str]]


def decoded_bytes(n_images: int, size: int, dtype: str | np.dtype = "uint8") -> int:
    """Bytes of `n_images` decoded RGB images of `size` x `size` pixels of `dtype` (`DecodedChunk.images`)."""
    return n_images * size * size * 3 * np.dtype(dtype).itemsize


def available_memory() -> int | None:
    """Bytes of memory this process can still get: the kernel's MemAvailable, less where a cgroup
    (a container) allows less; None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as meminfo:
            found += [int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as limit, open("/sys/fs/cgroup/memory.current") as used:
            maximum = limit.read().strip()
            if maximum != "max":
                found.append(max(0, int(maximum) - int(used.read().strip())))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


# No registered backbone accepts a smaller input: an input_size below it is no way out of a memory problem.
_SMALLEST_INPUT_SIZE = 32


def decoded_memory_problem(
    n_images: int, size: int, *, what: str, dtype: str | np.dtype = "uint8"
) -> tuple[str, str] | None:
    """Why `n_images` decoded images of `size` pixels cannot be held at once, and what fits; None if they can.

    A lower bound: the `dtype` pixels of one `what` (`"batch_size"`, `"chunk_size"`) alone,
    against `available_memory()`; the model's own activations come on top.

    Returns:
        None, or the setting to change and the message: `what` when no usable input
        size would hold that many images (`batch_size = 10**12`), else "input_size".
    """
    available = available_memory()
    needed = decoded_bytes(n_images, size, dtype)
    if available is None or needed <= available:
        return None
    per_pixel = decoded_bytes(1, 1, dtype)
    fit_size = math.isqrt(available // (n_images * per_pixel))
    fit_images = available // decoded_bytes(1, size, dtype)
    problem = (
        f"decoding {n_images} images of {size}x{size} pixels at once ({what}) needs at least "
        f"{needed / 2**30:,.0f} GiB for their {np.dtype(dtype).name} pixels alone ({n_images} x {size} x {size} x 3 x "
        f"{per_pixel // 3} bytes), but {available / 2**30:,.1f} GiB of memory are available: at most "
    )
    if fit_size < _SMALLEST_INPUT_SIZE and fit_images:
        return what, f"{problem}{what}={fit_images} fits at input_size={size} (the model needs more on top)"
    fewer = (f", or {what}={fit_images} at this input_size" if fit_images
             else "; at this input_size not even one image fits")
    return "input_size", f"{problem}input_size={fit_size} fits {n_images} images{fewer} (the model needs more on top)"


def check_decoded_memory(n_images: int, size: int, *, what: str, dtype: str | np.dtype = "uint8") -> None:
    """Raise if `n_images` decoded images of `size` pixels cannot be held at once (`decoded_memory_problem`).

    Raises:
        InputError: Saying what was needed, what is available and what fits.
    """
    found = decoded_memory_problem(n_images, size, what=what, dtype=dtype)
    if found is not None:
        problem = found[1]
        raise InputError(
            f"{problem[:1].upper()}{problem[1:]}. Nothing was computed. Received: input_size={size}, {what}={n_images}"
        )


def iter_decoded_chunks(
    dataset: ImageDataset,
    chunks: Sequence[Sequence[int]],
    size: int,
    *,
    n_workers: int | None = None,
    prefetch: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode_budget: int = DEFAULT_DECODE_BUDGET,
    dtype: str | np.dtype = "float32",
    decoder: str = "auto",
    pixel_cache: PixelCache | None = None,
) -> Iterator[DecodedChunk]:
    """Decode chunks of samples in background threads, in order.

    A producer thread decodes the samples of each chunk with a pool of `n_workers`
    threads and queues at most `prefetch` decoded chunks, so decoding overlaps the
    consumer's work and memory stays bounded. Unreadable files are recorded in
    `DecodedChunk.skipped`; any other error (an `ImageReadError` after retries, a bug)
    is re-raised in the consumer, and the chunk it happened in is not yielded.
    Closing the iterator early stops the threads.

    Args:
        dataset: The samples.
        chunks: Dataset indices of each chunk, e.g. `[range(0, 256), range(256, 300)]`.
        size: Output height and width in pixels.
        n_workers: Decoding threads; defaults to min(8, CPU count).
        prefetch: Decoded chunks that may wait for the consumer.
        max_pixels: See `load_image`.
        decode_budget: Bytes of decoded pixels the threads may hold together (an image
            costing more is decoded alone); see `DecodeBudget`.
        dtype: The pixels' dtype: `"uint8"` (a quarter of the memory and of the bytes sent to
            a device; exact for files and integer arrays) or `"float32"`.
        decoder: Decoder of image files, `"auto"`, `"pillow"`, `"simplejpeg"` or `"nvimgcodec"`
            (see `layerprobe.features.inputs.decoding`). With `"nvimgcodec"`, each chunk's
            `images` are a uint8 backend tensor on the GPU (`device_decoding`).
        pixel_cache: Where decoded pixels of image files are kept and read back instead
            of decoded again (`layerprobe.features.inputs.pixel_cache`); its key must
            describe this dataset, `size` and `decoder`. Chunks then hold numpy pixels.

    Returns:
        An iterator of DecodedChunk, one per chunk.

    Raises:
        InputError: If `size`, `n_workers`, `prefetch`, `max_pixels` or `decode_budget` is
            not a positive integer, or (while iterating) a chunk index is out of range.
        ImageReadError: (While iterating) a file could not be read because of a
            persistent I/O error; the message names the file and the chunk's samples.
    """
    n_workers = min(8, usable_cores()) if n_workers is None else n_workers
    for name, value in (
        ("size", size),
        ("n_workers", n_workers),
        ("prefetch", prefetch),
        ("max_pixels", max_pixels),
        ("decode_budget", decode_budget),
    ):
        check_positive_int(name, value, error=InputError)
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.float32):
        raise InputError(f"dtype must be 'uint8' or 'float32'. Received: dtype={dtype.name!r}")
    decoder = resolve_decoder(decoder)
    on_device = DeviceDecoder(size, max_pixels) if decoder == "nvimgcodec" and dataset.images is None else None
    decode = _Decode(size, max_pixels, DecodeBudget(decode_budget), dtype, decoder, on_device, pixel_cache)
    return _consume_chunks(dataset, chunks, n_workers, prefetch, decode)


@dataclass(frozen=True)
class _Decode:
    """How every sample is decoded: output side and dtype, the size guard, the shared budget, the decoder
    (and the device decoder of files, for `"nvimgcodec"`)."""

    size: int
    max_pixels: int
    budget: DecodeBudget
    dtype: np.dtype
    decoder: str
    on_device: DeviceDecoder | None = None
    cache: PixelCache | None = None


def _consume_chunks(dataset, chunks, n_workers, prefetch, decode: _Decode) -> Iterator[DecodedChunk]:
    ready = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    producer = threading.Thread(
        target=_produce_chunks,
        args=(dataset, chunks, n_workers, decode, ready, stop),
        name="layerprobe-decode-producer",
        daemon=True,  # an abandoned, unclosed iterator must not block interpreter exit
    )
    producer.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join()


def _produce_chunks(dataset, chunks, n_workers, decode: _Decode, ready, stop) -> None:
    try:
        with ThreadPoolExecutor(n_workers, thread_name_prefix="layerprobe-decode") as executor:
            for number, chunk in enumerate(chunks):
                if stop.is_set():
                    return
                decoded = _decode_chunk(dataset, number, chunk, decode, executor, stop)
                _put_unless_stopped(ready, decoded, stop)
        item = _DONE
    except BaseException as exc:  # handed to the consumer, which re-raises it
        item = exc
    _put_unless_stopped(ready, item, stop)


def _put_unless_stopped(ready: queue.Queue, item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            ready.put(item, timeout=_QUEUE_POLL_SECONDS)
            return
        except queue.Full:
            pass


def _decode_chunk(dataset, number, chunk, decode: _Decode, executor, stop) -> DecodedChunk:
    indices = np.asarray(chunk, dtype=np.int64).reshape(-1)
    out_of_range = indices[(indices < 0) | (indices >= len(dataset))]
    if out_of_range.size:
        raise InputError(
            f"Chunk {number} holds sample indices outside [0, {len(dataset)}). "
            f"Received: indices {out_of_range[:5].tolist()}"
        )
    size = decode.size
    pixels = getattr(dataset, "images", None)
    if pixels is not None and pixels.shape[1:] == (size, size, 3):
        # In-memory pixels already at the input size: `load` would give the same values.
        return DecodedChunk(number, indices, _rows(pixels, indices, decode.dtype), [])
    if decode.cache is not None and pixels is None:
        return _cached_chunk(dataset, number, indices, decode, executor, stop)
    return _decode_samples(dataset, number, indices, decode, executor, stop)


def _decode_samples(dataset, number, indices, decode: _Decode, executor, stop) -> DecodedChunk:
    """Decode the samples at `indices` (on the device with a `DeviceDecoder`, else in the threads)."""
    if decode.on_device is not None:
        return _decode_chunk_on_device(dataset, number, indices, decode, executor)
    size = decode.size
    images = np.empty((len(indices), size, size, 3), dtype=decode.dtype)

    def decode_one(position: int) -> str | None:
        if stop.is_set():  # the consumer has gone; this chunk is discarded
            return None
        try:
            images[position] = dataset.load(
                int(indices[position]), size, max_pixels=decode.max_pixels, budget=decode.budget, decoder=decode.decoder
            )
        except UnreadableImageError as exc:
            return exc.reason
        return None

    with _chunk_read_errors(indices):
        reasons = list(executor.map(decode_one, range(len(indices))))
    decoded = np.array([reason is None for reason in reasons], dtype=bool)
    skipped = [
        (int(index), reason)
        for index, reason in zip(indices, reasons, strict=True)
        if reason is not None
    ]
    return DecodedChunk(
        number, indices[decoded], images if decoded.all() else images[decoded], skipped
    )


@contextlib.contextmanager
def _chunk_read_errors(indices: np.ndarray) -> Iterator[None]:
    """An `ImageReadError` inside says which samples' chunk was not committed."""
    try:
        yield
    except ImageReadError as exc:
        samples = f"samples {indices.min()}-{indices.max()}" if len(indices) else "no samples"
        raise ImageReadError(
            f"{exc} Nothing was committed for this chunk ({samples} of the dataset); chunks committed "
            f"before it are kept, and running again resumes from them.",
            exc.path,
            exc.errno,
            exc.attempts,
        ) from exc


def _cached_chunk(dataset, number, indices, decode: _Decode, executor, stop) -> DecodedChunk:
    """A chunk assembled from the pixel cache's blocks; each block not cached yet is decoded whole and saved.

    Blocks are aligned to the dataset, not to chunks: a block that a chunk covers only
    in part is decoded whole, saved, and read back by the next chunk instead of decoded again.
    """
    blocks = {}
    for block in decode.cache.blocks(indices, len(dataset)):
        cached = decode.cache.load(block)
        if cached is None:
            fresh = _decode_samples(dataset, number, np.arange(block.start, block.stop), decode, executor, stop)
            cached = PixelBlock(fresh.sample_indices, _on_host(fresh.images), fresh.skipped)
            if stop.is_set():  # the consumer has gone: the block may be part decoded, and is discarded
                return fresh
            decode.cache.save(block, cached)
        blocks[block.start] = cached
    rows, kept, skipped = [], [], []
    for index in indices.tolist():
        block = blocks[index - index % BLOCK_SAMPLES]
        position = int(np.searchsorted(block.indices, index))
        if position < len(block.indices) and block.indices[position] == index:
            rows.append(block.pixels[position])
            kept.append(index)
        else:
            skipped.append((index, dict(block.skipped)[index]))
    size = decode.size
    images = np.stack(rows).astype(decode.dtype, copy=False) if rows else np.empty((0, size, size, 3), decode.dtype)
    return DecodedChunk(number, np.asarray(kept, dtype=np.int64), images, skipped)


def _on_host(images) -> np.ndarray:
    """Decoded pixels as a numpy array (those decoded on the device are copied back)."""
    if isinstance(images, np.ndarray):
        return images
    import keras

    return keras.ops.convert_to_numpy(images)


def _decode_chunk_on_device(dataset, number, indices, decode: _Decode, executor) -> DecodedChunk:
    """A chunk of files decoded on the GPU (`DeviceDecoder`): its `images` are a uint8 backend tensor there.

    The files are read in the decoding threads (I/O errors retried, as for the CPU
    decoders); what nvImageCodec does not decode is decoded by Pillow, or recorded
    with Pillow's reason.
    """
    paths = [dataset.sample_ids[int(index)] for index in indices]
    reasons: dict[int, str] = {}

    def read_bytes(path: str) -> bytes:
        with open_image_file(path) as handle:  # never a FIFO or a device: refused unread
            return handle.read()

    def read(path: str) -> bytes | None:
        try:
            return with_io_retries(lambda: read_bytes(path), path)
        except (OSError, UnreadableImageError):  # missing, unreadable, not a regular file: the fallback says why
            return None

    def fallback(position: int) -> np.ndarray | None:
        try:
            return dataset.load(
                int(indices[position]), decode.size, max_pixels=decode.max_pixels, budget=decode.budget,
                decoder="pillow",
            )
        except UnreadableImageError as exc:
            reasons[position] = exc.reason
            return None

    with _chunk_read_errors(indices):
        encoded = list(executor.map(read, paths))
        decoded, images = decode.on_device.decode(encoded, fallback)
    skipped = [(int(indices[position]), reason) for position, reason in sorted(reasons.items())]
    return DecodedChunk(number, indices[decoded], images, skipped)


def _rows(images: np.ndarray, indices: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`images[indices]` as `dtype`: a read-only view for consecutive rows of that dtype, else a copy."""
    consecutive = len(indices) and indices[-1] - indices[0] == len(indices) - 1 and (np.diff(indices) == 1).all()
    if consecutive and images.dtype == dtype:
        view = images[indices[0] : indices[-1] + 1]
        view.flags.writeable = False
        return view
    return images[indices].astype(dtype, copy=False)

"""Decode once: decoded uint8 pixels at the input size, kept in the store for the next backbone.

A sweep over several backbones at one input size decodes every image once per
backbone; with a `PixelCache` (opt-in: `FeatureExtractor(pixel_cache=True)`,
`[features] pixel_cache = true`), the first extraction keeps the pixels it
decodes and the later ones read them back instead of decoding.

Keyed like features (`PixelKey`): the dataset digest (with the `max_pixels`
guard and the decoder's pixels folded in, as in feature keys), the input
size, the resize and the decoder's pixels, and the format version. So pixels
of another dataset, size or decoder are never handed out.

Layout: `<store>/pixels/<key digest>/block-<start>-<stop>.npz`, one file per
block of `BLOCK_SAMPLES` consecutive samples (aligned, so every extraction's
chunks map onto the same blocks, whatever its batch and chunk sizes), holding
the block's decoded sample indices, their pixels and the skipped samples with
their reasons. A block is written under a temporary name and renamed into
place (`layerprobe.core.atomic`): a killed run leaves whole blocks or none,
and a block that cannot be read back is decoded and written again. Two
processes writing one block write the same pixels; the last rename wins.

Cost: 3 x size x size bytes per image (150 KB at 224 px: 7.5 GB for 50,000
images), and reading a block back is faster than decoding it
(benchmarks/pixel_cache.py; benchmarks/RESULTS.md, "Decode once").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...core.atomic import atomic_path
from ..keys import FORMAT_VERSION

__all__ = ["BLOCK_SAMPLES", "PIXEL_CACHE_FOLDER", "RESIZE", "PixelBlock", "PixelCache", "PixelKey"]

PIXEL_CACHE_FOLDER = "pixels"
BLOCK_SAMPLES = 256
RESIZE = "bilinear"
"""How images are resized to the input size (`load_image`, `DeviceDecoder`): part of the key."""


@dataclass(frozen=True)
class PixelKey:
    """What one set of cached pixels is.

    Attributes:
        dataset: The dataset digest of the features decoded from them (`FeatureKey.dataset`:
            `max_pixels` and the decoder's pixels already folded in where they matter).
        input_size: Side of the square pixels.
        decoder: What decoded them (`layerprobe.features.keys.decoded_pixels`).
        resize: How they were resized to `input_size`.
        format_version: Version of the decoding (`FORMAT_VERSION`, shared with features).
    """

    dataset: str
    input_size: int
    decoder: str
    resize: str = RESIZE
    format_version: int = FORMAT_VERSION

    @property
    def digest(self) -> str:
        """sha256 hex of the canonical JSON of all fields."""
        canonical = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class PixelBlock:
    """The decoded samples of one block: their dataset indices and pixels, and the skipped ones with reasons."""

    indices: np.ndarray
    pixels: np.ndarray
    skipped: list[tuple[int, str]]


class PixelCache:
    """The cached pixels of one `PixelKey` in a store folder.

    Args:
        root: The feature store's folder.
        key: What the pixels are.
    """

    def __init__(self, root: str | os.PathLike, key: PixelKey):
        self.key = key
        self.folder = Path(root) / PIXEL_CACHE_FOLDER / key.digest

    def __repr__(self) -> str:
        return f"PixelCache({str(self.folder)!r})"

    @staticmethod
    def blocks(indices: np.ndarray, n_samples: int) -> list[range]:
        """The aligned blocks of a dataset of `n_samples` that hold `indices`, in order."""
        starts = np.unique(np.asarray(indices, dtype=np.int64) // BLOCK_SAMPLES) * BLOCK_SAMPLES
        return [range(int(start), int(min(start + BLOCK_SAMPLES, n_samples))) for start in starts]

    def _path(self, block: range) -> Path:
        return self.folder / f"block-{block.start:09d}-{block.stop:09d}.npz"

    def load(self, block: range) -> PixelBlock | None:
        """The block's pixels, or None where it is not cached (or its file cannot be read back)."""
        try:
            with np.load(self._path(block), allow_pickle=False) as stored:
                indices, pixels = stored["indices"], stored["pixels"]
                skipped = list(zip(stored["skipped_indices"].tolist(), stored["skipped_reasons"].tolist()))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
            return None
        if pixels.shape[1:] != (self.key.input_size, self.key.input_size, 3) or len(pixels) != len(indices):
            return None
        return PixelBlock(indices, pixels, skipped)

    def save(self, block: range, decoded: PixelBlock) -> None:
        """Commit the block's pixels (atomically). A store that cannot be written is left alone:
        the cache only saves decoding; the extraction reports a store it cannot write."""
        skipped_indices = np.array([index for index, _ in decoded.skipped], dtype=np.int64)
        skipped_reasons = np.array([reason for _, reason in decoded.skipped], dtype=str)
        try:
            with atomic_path(self._path(block), durable=False) as tmp, open(tmp, "wb") as handle:
                np.savez(
                    handle, indices=np.asarray(decoded.indices, dtype=np.int64),
                    pixels=np.asarray(decoded.pixels, dtype=np.uint8),
                    skipped_indices=skipped_indices, skipped_reasons=skipped_reasons,
                )
        except OSError:
            pass

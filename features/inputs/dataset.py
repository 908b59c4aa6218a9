"""`ImageDataset`: labelled samples (image files or rows of an array) and the digest that keys their features."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from layerprobe.features.errors import InputError
from layerprobe.features.inputs.decoding import DEFAULT_MAX_PIXELS, array_to_rgb, load_image

__all__ = ["ImageDataset"]


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Labelled samples: image files on disk, or rows of an in-memory array.

    Build one with `from_directory`, `from_csv`, `from_arrays` or `open_dataset`.

    Attributes:
        sample_ids: Absolute file paths, or "array:<i>" for rows of `images`.
        labels: int64 indices into `class_names`, shape (n_samples,), read-only.
        class_names: Class names; a label `k` means `class_names[k]`.
        splits: Split name per sample ("train", "val", "test", ... or "all").
        root: Folder that file paths are made relative to in `digest`, or None.
        images: For in-memory datasets, the pixels (n_samples, h, w[, 1 or 3]),
            uint8 or float in 0-255, not copied; None for files.
    """

    sample_ids: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    splits: tuple[str, ...]
    root: str | None = None
    images: np.ndarray | None = None

    def __post_init__(self):
        for name in ("sample_ids", "class_names", "splits"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        labels = np.array(self.labels, dtype=np.int64)
        labels.setflags(write=False)
        object.__setattr__(self, "labels", labels)
        n_samples = len(self.sample_ids)
        lengths = {"labels": len(labels), "splits": len(self.splits)}
        if self.images is not None:
            lengths["images"] = len(self.images)
        if labels.ndim != 1 or any(length != n_samples for length in lengths.values()):
            raise InputError(
                "`labels`, `splits` (and `images` if given) must have one entry per sample id. "
                f"Received: {n_samples} sample ids, lengths {lengths}, labels.shape={labels.shape}"
            )
        if n_samples and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise InputError(
                f"`labels` must be indices into `class_names` (0 to {len(self.class_names) - 1}). "
                f"Received: labels in [{labels.min()}, {labels.max()}], "
                f"class_names={self.class_names}"
            )

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def split_names(self) -> tuple[str, ...]:
        """Unique split names, in first-seen order."""
        return tuple(dict.fromkeys(self.splits))

    def select(self, indices) -> ImageDataset:
        """The samples at `indices` (ints, a boolean mask or a slice), keeping `class_names`.

        In-memory images of the selected rows are copied.
        """
        positions = np.arange(len(self))[indices]
        return dataclasses.replace(
            self,
            sample_ids=[self.sample_ids[i] for i in positions],
            labels=self.labels[positions],
            splits=[self.splits[i] for i in positions],
            images=None if self.images is None else self.images[positions],
        )

    def subset(self, split: str) -> ImageDataset:
        """The samples of one split.

        Raises:
            InputError: If no sample belongs to `split`.
        """
        if split not in self.split_names:
            raise InputError(
                f"Unknown split. Available splits: {list(self.split_names)}. "
                f"Received: split={split!r}"
            )
        return self.select(np.flatnonzero(np.asarray(self.splits) == split))

    def digest(self) -> str:
        """A sha256 hex digest of the samples, labels and splits.

        Files contribute their path relative to `root`, size and modification time
        (stat once; a missing file counts as size -1), so moving the dataset folder
        keeps the digest; arrays contribute the sha256 of their bytes, shape and dtype.
        """
        label_names = [self.class_names[label] for label in self.labels]
        if self.images is None:
            samples = [
                [self._relative_path(path), *_file_stamp(path), label, split]
                for path, label, split in zip(
                    self.sample_ids, label_names, self.splits, strict=True
                )
            ]
            manifest = {"kind": "files", "samples": samples}
        else:
            images = np.ascontiguousarray(self.images)
            manifest = {
                "kind": "arrays",
                "images_sha256": hashlib.sha256(images.data).hexdigest(),
                "shape": list(images.shape),
                "dtype": images.dtype.str,
                "samples": [list(pair) for pair in zip(label_names, self.splits, strict=True)],
            }
        manifest["class_names"] = list(self.class_names)
        canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def load(self, index: int, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Decode one sample to (size, size, 3).

        Returns:
            uint8 pixels for files and integer arrays; float32 pixels in 0-255 (not
            rounded) for float arrays. Grey images are repeated to three channels.

        Raises:
            UnreadableImageError: If the sample's file cannot be decoded.
        """
        if self.images is None:
            return load_image(self.sample_ids[index], size, max_pixels=max_pixels)
        return array_to_rgb(self.images[index], size)

    def _relative_path(self, path: str) -> str:
        return path if self.root is None else PurePath(os.path.relpath(path, self.root)).as_posix()


def _file_stamp(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns

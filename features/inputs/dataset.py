"""`ImageDataset`: labelled samples (image files or rows of an array) and the digest that keys their features."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from ...core.errors import InputError
from ..keys import DIGEST_MODES
from .decoding import DEFAULT_MAX_PIXELS, DecodeBudget, array_to_rgb, load_image

__all__ = ["DIGEST_MODES", "ImageDataset", "resolve_dataset_digest"]

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def resolve_dataset_digest(dataset: ImageDataset, dataset_digest: str) -> str:
    """`dataset.digest(mode)` for a mode (`"stat"`, `"content"`), or a digest already computed, checked.

    Raises:
        InputError: For anything else.
    """
    if dataset_digest in DIGEST_MODES:
        return dataset.digest(dataset_digest)
    if isinstance(dataset_digest, str) and _HEX_DIGEST.fullmatch(dataset_digest):
        return dataset_digest
    raise InputError(
        f"dataset_digest must be one of {DIGEST_MODES} or a digest computed by `ImageDataset.digest` "
        f"(64 hexadecimal digits). Received: dataset_digest={dataset_digest!r}"
    )


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Labelled samples: image files on disk, or rows of an in-memory array.

    Build one with `from_directory`, `from_csv`, `from_arrays` or `open_dataset`.

    Attributes:
        sample_ids: Absolute file paths, or "array:<i>" for rows of `images`.
        labels: int64 indices into `class_names`, shape (n_samples,), read-only.
        class_names: Class names; a label `k` means `class_names[k]`.
        splits: Split name per sample ("train", "val", "test", ... or "all").
        root: Folder that file paths are made relative to in `digest` and in the
            store's entries (so a moved dataset keeps its keys and its sample ids
            resolve against the new folder), or None.
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

    def __repr__(self) -> str:
        """A short summary (the sample ids can be thousands), e.g. in a scikit-learn estimator's repr."""
        splits = {name: self.splits.count(name) for name in self.split_names}
        source = f"root={self.root!r}" if self.root is not None else (
            "images in memory" if self.images is not None else "files")
        return (f"ImageDataset({len(self)} samples, {len(self.class_names)} classes {list(self.class_names)[:5]}"
                f"{'...' if len(self.class_names) > 5 else ''}, splits {splits}, {source})")

    @property
    def pixel_dtype(self) -> str:
        """The dtype `load` returns: `"uint8"` for files and integer arrays, `"float32"` for float arrays."""
        return "float32" if self.images is not None and self.images.dtype.kind == "f" else "uint8"

    @property
    def y(self) -> np.ndarray:
        """The class name of every sample: the `y` to give a scikit-learn classifier, so that its
        `classes_` and predictions are class names (`labels` holds their indices)."""
        return np.asarray(self.class_names, dtype=object)[self.labels]

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

    def digest(self, mode: str = "stat", *, n_workers: int | None = None, cache: bool = True) -> str:
        """A sha256 hex digest of the samples, labels and splits: the dataset part of feature keys.

        Files contribute their path relative to `root` (so moving the dataset folder keeps
        the digest) and, by `mode`:

        * `"stat"` (default): their size and modification time, from one `stat` each.
          Fast, but blind to new pixels written with the same size and the mtime set
          back, and a copy that does not keep mtimes (`cp -r` without `-p`, many sync
          tools) digests differently, so its features are extracted again.
        * `"content"`: the sha256 of their bytes, read in `n_workers` threads and cached
          per file (`layerprobe.features.inputs.file_digests`; a rerun reads only files
          whose size, mtime or ctime changed). Use it for data that is rewritten in place,
          copied between machines, or where a stale feature would be costly.

        A missing file counts as size -1 (`"stat"`) or no digest (`"content"`). Arrays
        contribute the sha256 of their bytes, shape and dtype, whatever the mode.

        Raises:
            InputError: For another `mode`.
            ImageReadError: (`"content"`) If an I/O error persists while reading a file.
        """
        if mode not in DIGEST_MODES:
            raise InputError(f"The digest mode must be one of {DIGEST_MODES}. Received: mode={mode!r}")
        label_names = (self.class_names[label] for label in self.labels)
        if self.images is None and mode == "content":
            from .file_digests import file_digests

            contents = file_digests(self.sample_ids, root=self.root, n_workers=n_workers, cache=cache)
            samples = (
                [self._relative_path(path), content, label, split]
                for path, content, label, split in zip(
                    self.sample_ids, contents, label_names, self.splits, strict=True
                )
            )
            head = {"kind": "file-contents"}
        elif self.images is None:
            samples = (
                [self._relative_path(path), *_file_stamp(path), label, split]
                for path, label, split in zip(
                    self.sample_ids, label_names, self.splits, strict=True
                )
            )
            head = {"kind": "files"}
        else:
            images = np.ascontiguousarray(self.images)
            head = {
                "kind": "arrays",
                "images_sha256": hashlib.sha256(images.data).hexdigest(),
                "shape": list(images.shape),
                "dtype": images.dtype.str,
            }
            samples = ([label, split] for label, split in zip(label_names, self.splits, strict=True))
        return manifest_digest({**head, "class_names": list(self.class_names)}, samples)

    def load(
        self,
        index: int,
        size: int,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        budget: DecodeBudget | None = None,
        decoder: str = "pillow",
    ) -> np.ndarray:
        """Decode one sample to (size, size, 3).

        Returns:
            uint8 pixels for files and integer arrays; float32 pixels in 0-255 (not
            rounded) for float arrays. Grey images are repeated to three channels.

        Raises:
            UnreadableImageError: If the sample's file cannot be decoded.
            ImageReadError: If an I/O error persists after retries (see `load_image`).
        """
        if self.images is None:
            return load_image(self.sample_ids[index], size, max_pixels=max_pixels, budget=budget, decoder=decoder)
        return array_to_rgb(self.images[index], size)

    def _relative_path(self, path: str) -> str:
        return path if self.root is None else PurePath(os.path.relpath(path, self.root)).as_posix()


MANIFEST_BLOCK = 4096  # samples serialised at a time (`manifest_digest`)


def manifest_digest(head: dict, samples: Iterable[list]) -> str:
    """The sha256 hex digest of `json.dumps({**head, "samples": [*samples]}, sort_keys=True,
    separators=(",", ":"))`, serialised a block of samples at a time: a million samples are
    never one list or one string, and the digest (the dataset part of every feature key) is
    the one the whole text gives."""
    sha = hashlib.sha256(b"{")
    for position, key in enumerate(sorted([*head, "samples"])):
        sha.update(("," if position else "").encode() + json.dumps(key).encode() + b":")
        if key != "samples":
            sha.update(json.dumps(head[key], sort_keys=True, separators=(",", ":")).encode("utf-8"))
            continue
        sha.update(b"[")
        samples, first = iter(samples), True
        while block := list(itertools.islice(samples, MANIFEST_BLOCK)):
            text = json.dumps(block, sort_keys=True, separators=(",", ":"))[1:-1]  # the items, comma-joined
            sha.update(("" if first else ",").encode() + text.encode("utf-8"))
            first = False
        sha.update(b"]")
    sha.update(b"}")
    return sha.hexdigest()


def _file_stamp(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns

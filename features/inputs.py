"""Image inputs: decode image files safely, describe labelled datasets, decode chunks in parallel.

A dataset is an :class:`ImageDataset`: image files on disk (from a folder of class
subfolders or a CSV file) or rows of an in-memory array. :func:`iter_decoded_chunks`
decodes it chunk by chunk in background threads, recording unreadable files instead
of failing on them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from layerprobe.features.errors import InputError, UnreadableImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "DecodedChunk",
    "ImageDataset",
    "UnreadableImageError",
    "from_arrays",
    "from_csv",
    "from_directory",
    "from_image_folder",
    "iter_decoded_chunks",
    "load_image",
    "open_dataset",
    "open_images",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
UNLABELLED = "<unlabelled>"
"""The one class name of `from_image_folder` datasets, which have no labels."""
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default for Image.MAX_IMAGE_PIXELS

# Split folder names recognised by `from_directory`, in the order their samples are listed.
_SPLIT_FOLDERS = ("train", "val", "validation", "valid", "test")
_LAYOUTS = "root/<class>/<image> or root/<split>/<class>/<image> with <split> one of " + ", ".join(
    _SPLIT_FOLDERS
)
# Full-scale values tried, smallest first, for high-depth grey modes ("I;16*" share one entry).
# Data outside every full scale (or negative) is stretched from its minimum to its maximum.
_FULL_SCALES = {"I;16": (65535.0,), "I": (65535.0,), "F": (1.0, 255.0)}
_QUEUE_POLL_SECONDS = 0.1
_DONE = object()




def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


# --------------------------------------------------------------------------- decoding


def load_image(
    path: str | os.PathLike, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode an image file to a square RGB array.

    The EXIF orientation is applied, every mode is converted to RGB (alpha is dropped,
    the first frame of an animation is used, 16-bit, 32-bit and float grey levels are
    scaled to 0-255) and the image is resized to `size` x `size` with bilinear
    interpolation, without keeping the aspect ratio (as
    `keras.utils.image_dataset_from_directory` does).

    Args:
        path: The image file.
        size: Output height and width in pixels.
        max_pixels: Largest width x height accepted, checked from the header before
            decoding (decompression-bomb guard). Pillow's own refusal above
            2 x `Image.MAX_IMAGE_PIXELS` still applies.

    Returns:
        A uint8 array of shape (size, size, 3).

    Raises:
        UnreadableImageError: If the file cannot be decoded; `reason` says why.
        ValueError: If `size` or `max_pixels` is not a positive integer.
    """
    _check_positive_int("size", size)
    _check_positive_int("max_pixels", max_pixels)
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise UnreadableImageError("empty file", path)
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UnreadableImageError(
                    f"too large: {width}x{height} pixels > max_pixels={max_pixels} "
                    "(decompression-bomb guard)",
                    path,
                )
            image = _to_rgb(ImageOps.exif_transpose(image))
        return np.array(image.resize((size, size), Image.BILINEAR), dtype=np.uint8)
    except UnreadableImageError:
        raise
    except FileNotFoundError:
        raise UnreadableImageError("file not found", path) from None
    except (PermissionError, IsADirectoryError) as exc:
        raise UnreadableImageError(f"cannot open file: {exc.strerror}", path) from None
    except Image.DecompressionBombError as exc:
        raise UnreadableImageError(f"too large: {exc}", path) from None
    except UnidentifiedImageError:
        raise UnreadableImageError(
            "not an image: no known image format matches the content", path
        ) from None
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, EOFError, ...
        raise UnreadableImageError(f"truncated or corrupt image: {exc}", path) from None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode_key = "I;16" if image.mode.startswith("I;16") else image.mode
    if mode_key in _FULL_SCALES:
        image = Image.fromarray(_grey_to_uint8(np.asarray(image), _FULL_SCALES[mode_key]))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow warns when such palettes go straight to RGB
    return image.convert("RGB")


def _grey_to_uint8(values: np.ndarray, full_scales: tuple[float, ...]) -> np.ndarray:
    """Scale high-depth grey levels to 0-255 (not clipped)."""
    values = values.astype(np.float64)
    values[~np.isfinite(values)] = 0.0
    low, high = values.min(), values.max()
    full_scale = next((scale for scale in full_scales if low >= 0 and high <= scale), None)
    if full_scale is None:
        full_scale = (high - low) or 1.0
    else:
        low = 0.0
    return np.rint((values - low) * (255.0 / full_scale)).astype(np.uint8)


def _array_to_rgb(pixels: np.ndarray, size: int) -> np.ndarray:
    """One in-memory image (h, w), (h, w, 1) or (h, w, 3) -> (size, size, 3), a fresh array."""
    _check_positive_int("size", size)
    pixels = pixels.astype(np.uint8 if pixels.dtype.kind in "iu" else np.float32, copy=False)
    if pixels.ndim == 2:
        pixels = pixels[..., np.newaxis]
    if pixels.shape[:2] != (size, size):
        channels = [
            Image.fromarray(pixels[..., c]).resize((size, size), Image.BILINEAR)
            for c in range(pixels.shape[-1])
        ]
        pixels = np.stack([np.asarray(channel) for channel in channels], axis=-1)
    return np.repeat(pixels, 3 // pixels.shape[-1], axis=-1)


# --------------------------------------------------------------------------- datasets


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
            raise ValueError(
                "`labels`, `splits` (and `images` if given) must have one entry per sample id. "
                f"Received: {n_samples} sample ids, lengths {lengths}, labels.shape={labels.shape}"
            )
        if n_samples and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(
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
            ValueError: If no sample belongs to `split`.
        """
        if split not in self.split_names:
            raise ValueError(
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
        return _array_to_rgb(self.images[index], size)

    def _relative_path(self, path: str) -> str:
        return path if self.root is None else PurePath(os.path.relpath(path, self.root)).as_posix()


def _file_stamp(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _encode_labels(
    names: Sequence[str], class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Label names -> (int64 indices, class names), class names defaulting to the sorted names."""
    class_names = tuple(sorted(set(names)) if class_names is None else class_names)
    lookup = {name: index for index, name in enumerate(class_names)}
    unknown = sorted(set(names) - lookup.keys())
    if unknown:
        raise ValueError(
            f"Labels {unknown[:5]} are not in `class_names`. Pass class names that include every "
            f"label, or leave class_names=None. Received: class_names={list(class_names)}"
        )
    return np.array([lookup[name] for name in names], dtype=np.int64), class_names


def _visible_subfolders(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _normalise_extensions(extensions: str | Sequence[str]) -> tuple[str, ...]:
    """Lower-case extensions with a leading dot: ".JPG", "png" -> (".jpg", ".png")."""
    extensions = [extensions] if isinstance(extensions, str) else extensions
    return tuple(ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions)


def from_directory(
    root: str | os.PathLike, *, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> ImageDataset:
    """List the images of a folder of class subfolders.

    Two layouts are recognised: `root/<class>/<image>` (split "all"), and
    `root/<split>/<class>/<image>` when every subfolder of `root` is a split folder
    (train, val, validation, valid, test; any case) holding subfolders. Samples are
    listed by split (train, val, validation, valid, test), then class, then file name.
    Hidden files and folders are skipped, as are files with other extensions.

    Args:
        root: The dataset folder.
        extensions: File name endings to include (case-insensitive).

    Returns:
        An ImageDataset of absolute file paths; `class_names` are the sorted class
        folder names.

    Raises:
        ValueError: If `root` is not a folder, holds no class subfolders, or a class
            folder holds no image in any split.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        problem = "is not a folder" if root_path.exists() else "does not exist"
        raise ValueError(
            f"The dataset root {problem}. Expected a folder laid out as {_LAYOUTS}. "
            f"Received: root={root!r}"
        )
    suffixes = _normalise_extensions(extensions)
    folders = _visible_subfolders(root_path)
    if folders and all(
        f.name.lower() in _SPLIT_FOLDERS and _visible_subfolders(f) for f in folders
    ):
        split_folders = sorted(folders, key=lambda f: _SPLIT_FOLDERS.index(f.name.lower()))
        splits = [(folder.name, folder) for folder in split_folders]
    else:
        splits = [("all", root_path)]

    paths, label_names, split_names = [], [], []
    image_counts: dict[str, int] = {}
    for split, split_folder in splits:
        for class_folder in _visible_subfolders(split_folder):
            files = _image_files(class_folder, suffixes)
            image_counts[class_folder.name] = image_counts.get(class_folder.name, 0) + len(files)
            paths.extend(os.path.abspath(class_folder / name) for name in files)
            label_names.extend([class_folder.name] * len(files))
            split_names.extend([split] * len(files))
    if not image_counts:
        raise ValueError(
            f"The dataset root holds no class subfolders. Expected {_LAYOUTS}; put the images of "
            f"each class in their own subfolder. Received: root={root!r}"
        )
    empty = sorted(name for name, count in image_counts.items() if count == 0)
    if empty:
        raise ValueError(
            f"Class folder(s) {empty} hold no image files (extensions {list(suffixes)}) in any "
            f"split. Remove these folders or add images to them. Received: root={root!r}"
        )
    labels, class_names = _encode_labels(label_names)
    return ImageDataset(paths, labels, class_names, split_names, root=os.path.abspath(root_path))


def _image_files(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Sorted names of the visible image files directly in `folder`."""
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_file() and not entry.name.startswith(".") and entry.name.lower().endswith(suffixes)
    )


def from_image_folder(
    root: str | os.PathLike, *, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> ImageDataset:
    """List the images directly in a folder, unlabelled: new images to predict.

    Every sample gets the single class `UNLABELLED` and split "all".

    Raises:
        ValueError: If `root` is not a folder or holds no image file.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise ValueError(f"Expected a folder of images. Received: root={root!r}")
    suffixes = _normalise_extensions(extensions)
    names = _image_files(root_path, suffixes)
    if not names:
        raise ValueError(
            f"The folder holds no image files (extensions {list(suffixes)}). Received: root={root!r}"
        )
    paths = [os.path.abspath(root_path / name) for name in names]
    return ImageDataset(paths, np.zeros(len(paths)), (UNLABELLED,), ["all"] * len(paths), root=os.path.abspath(root_path))


def _row_numbers(positions: Sequence[int], limit: int = 5) -> str:
    """0-based data row positions -> "rows 2, 5 (row 1 is the header)", listing the first few."""
    shown = ", ".join(str(position + 2) for position in positions[:limit])
    more = f" and {len(positions) - limit} more" if len(positions) > limit else ""
    return f"rows {shown}{more} (row 1 is the header)"


def from_csv(
    path: str | os.PathLike,
    *,
    path_column: str = "path",
    label_column: str = "label",
    split_column: str = "split",
) -> ImageDataset:
    """List the images named in a CSV file.

    Relative image paths are relative to the CSV file's folder. The split column is
    optional (every sample gets split "all" without it). Rows whose image file does not
    exist are kept; they are skipped when decoding.

    Args:
        path: The CSV file.
        path_column: Column of image paths.
        label_column: Column of class names.
        split_column: Column of split names, if present.

    Returns:
        An ImageDataset of absolute file paths; `class_names` are the sorted labels.

    Raises:
        ValueError: If the file is missing or empty, a column is missing, a cell is
            blank, or a path appears twice.
    """
    csv_path = Path(path)
    if not csv_path.is_file():
        raise ValueError(f"The CSV file does not exist. Check the path. Received: path={path!r}")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise ValueError(
            "The CSV file is empty. Expected a header row and one row per image. "
            f"Received: path={path!r}"
        ) from None
    missing = [column for column in (path_column, label_column) if column not in table.columns]
    if missing:
        raise ValueError(
            f"The CSV file has no column(s) {missing}; found columns {list(table.columns)}. "
            f"Rename the columns or pass `path_column` and `label_column`. Received: path={path!r}"
        )
    if table.empty:
        raise ValueError(
            f"The CSV file has a header but no rows. Add one row per image. Received: path={path!r}"
        )
    columns = [
        column for column in (path_column, label_column, split_column) if column in table.columns
    ]
    for column in columns:
        blank = np.flatnonzero(table[column].str.strip() == "")
        if blank.size:
            raise ValueError(
                f"The CSV column {column!r} has empty cells in {_row_numbers(blank)}. Fill them "
                f"in or remove those rows. Received: path={path!r}"
            )
    folder = os.path.abspath(csv_path.parent)
    paths = pd.Series([os.path.normpath(os.path.join(folder, p)) for p in table[path_column]])
    duplicated = np.flatnonzero(paths.duplicated(keep=False))
    if duplicated.size:
        examples = list(dict.fromkeys(table[path_column].iloc[duplicated]))[:3]
        raise ValueError(
            f"The CSV file lists the same image more than once: {examples} in "
            f"{_row_numbers(duplicated)}. Keep one row per image. Received: path={path!r}"
        )
    labels, class_names = _encode_labels(list(table[label_column]))
    splits = table[split_column] if split_column in table.columns else ["all"] * len(table)
    return ImageDataset(list(paths), labels, class_names, list(splits), root=folder)


def from_arrays(
    X, y, *, class_names: Sequence[str] | None = None, split: str | Sequence[str] = "train"
) -> ImageDataset:
    """Wrap in-memory images (not copied) as a dataset.

    Args:
        X: Images (n_samples, h, w, 3), (n_samples, h, w, 1) or (n_samples, h, w),
            integers or floats in 0-255.
        y: Class indices in [0, n_classes), shape (n_samples,) or (n_samples, 1), or
            class names (strings).
        class_names: Class names; by default "0", "1", ... for indices and the sorted
            unique names for strings.
        split: Split name of every sample, or one per sample.

    Returns:
        An ImageDataset with sample ids "array:<i>".

    Raises:
        ValueError: If shapes, values, labels, class names or splits are invalid.

    Example:
        >>> X = np.zeros((2, 8, 8, 3), dtype=np.uint8)
        >>> dataset = from_arrays(X, [0, 1], class_names=["cat", "dog"])
    """
    X = np.asarray(X)
    if (
        X.ndim not in (3, 4)
        or (X.ndim == 4 and X.shape[-1] not in (1, 3))
        or X.size == 0
        or X.dtype.kind not in "iuf"
    ):
        raise ValueError(
            "`X` must be a non-empty numeric array of images shaped (n_samples, h, w, 3), "
            "(n_samples, h, w, 1) or (n_samples, h, w). "
            f"Received: X.shape={X.shape}, X.dtype={X.dtype}"
        )
    low, high = X.min(), X.max()
    if not (np.isfinite(low) and np.isfinite(high) and low >= 0 and high <= 255):
        raise ValueError(
            "`X` must hold finite pixel values in [0, 255]; rescale it (e.g. X * 255 for images in "
            f"[0, 1]) and replace NaN/inf. Received: values in [{low}, {high}]"
        )
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(
            "`y` must hold one label per image, shaped (n_samples,) (use y.argmax(axis=1) for "
            f"one-hot labels). Received: y.shape={y.shape} for {len(X)} images"
        )
    if y.dtype.kind in "OSU":
        labels, class_names = _encode_labels([str(label) for label in y], class_names)
    elif y.dtype.kind in "iu":
        n_classes = int(y.max()) + 1 if class_names is None else len(class_names)
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(
                f"Integer labels in `y` must lie in [0, {n_classes}) (the number of class names). "
                f"Received: labels in [{y.min()}, {y.max()}], class_names={class_names}"
            )
        labels = y
        if class_names is None:
            class_names = tuple(str(k) for k in range(n_classes))
    else:
        raise ValueError(
            "`y` must hold integer class indices or class names; cast it with y.astype(int). "
            f"Received: y.dtype={y.dtype}"
        )
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"`class_names` must be unique. Received: class_names={list(class_names)}")
    splits = [split] * len(X) if isinstance(split, str) else list(split)
    if len(splits) != len(X):
        raise ValueError(
            "`split` must be a string or one split name per image. "
            f"Received: {len(splits)} split names for {len(X)} images"
        )
    return ImageDataset(
        [f"array:{i}" for i in range(len(X))], labels, class_names, splits, images=X
    )


def open_dataset(source: str | os.PathLike) -> ImageDataset:
    """Open a dataset folder (see `from_directory`) or CSV file (see `from_csv`).

    Raises:
        ValueError: If `source` is neither a folder nor a .csv file.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return from_directory(path)
        if path.is_file() and path.suffix.lower() == ".csv":
            return from_csv(path)
    raise ValueError(
        f"Cannot open a dataset from this source. Expected a folder laid out as {_LAYOUTS}, or "
        f"a .csv file with path and label columns. Received: source={source!r}"
    )


def open_images(source: str | os.PathLike) -> ImageDataset:
    """Like `open_dataset`, and a folder of images without class subfolders is read unlabelled.

    For prediction, where new images need no labels (see `from_image_folder`).
    """
    path = Path(source)
    if path.is_dir() and not _visible_subfolders(path) and _image_files(path, IMAGE_EXTENSIONS):
        return from_image_folder(path)
    return open_dataset(source)


# --------------------------------------------------------------------------- parallel decoding


@dataclass
class DecodedChunk:
    """The decoded samples of one chunk.

    Attributes:
        index: Chunk number, counting from 0.
        sample_indices: int64 dataset indices of the samples that decoded, in order.
        images: float32 pixels (n_decoded, size, size, 3) in 0-255; the consumer owns
            them and may modify them in place.
        skipped: (sample index, reason) for each sample that could not be decoded.
    """

    index: int
    sample_indices: np.ndarray
    images: np.ndarray
    skipped: list[tuple[int, str]]


def iter_decoded_chunks(
    dataset: ImageDataset,
    chunks: Sequence[Sequence[int]],
    size: int,
    *,
    n_workers: int | None = None,
    prefetch: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[DecodedChunk]:
    """Decode chunks of samples in background threads, in order.

    A producer thread decodes the samples of each chunk with a pool of `n_workers`
    threads and queues at most `prefetch` decoded chunks, so decoding overlaps the
    consumer's work and memory stays bounded. Unreadable files are recorded in
    `DecodedChunk.skipped`; any other error is re-raised in the consumer. Closing the
    iterator early stops the threads.

    Args:
        dataset: The samples.
        chunks: Dataset indices of each chunk, e.g. `[range(0, 256), range(256, 300)]`.
        size: Output height and width in pixels.
        n_workers: Decoding threads; defaults to min(8, CPU count).
        prefetch: Decoded chunks that may wait for the consumer.
        max_pixels: See `load_image`.

    Returns:
        An iterator of DecodedChunk, one per chunk.

    Raises:
        ValueError: If `size`, `n_workers`, `prefetch` or `max_pixels` is not a positive
            integer, or (while iterating) a chunk index is out of range.
    """
    n_workers = min(8, os.cpu_count() or 1) if n_workers is None else n_workers
    for name, value in (
        ("size", size),
        ("n_workers", n_workers),
        ("prefetch", prefetch),
        ("max_pixels", max_pixels),
    ):
        _check_positive_int(name, value)
    return _consume_chunks(dataset, chunks, size, n_workers, prefetch, max_pixels)


def _consume_chunks(
    dataset, chunks, size, n_workers, prefetch, max_pixels
) -> Iterator[DecodedChunk]:
    ready = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    producer = threading.Thread(
        target=_produce_chunks,
        args=(dataset, chunks, size, n_workers, max_pixels, ready, stop),
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


def _produce_chunks(dataset, chunks, size, n_workers, max_pixels, ready, stop) -> None:
    try:
        with ThreadPoolExecutor(n_workers, thread_name_prefix="layerprobe-decode") as executor:
            for number, chunk in enumerate(chunks):
                if stop.is_set():
                    return
                _put_unless_stopped(
                    ready,
                    _decode_chunk(dataset, number, chunk, size, max_pixels, executor, stop),
                    stop,
                )
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


def _decode_chunk(dataset, number, chunk, size, max_pixels, executor, stop) -> DecodedChunk:
    indices = np.asarray(chunk, dtype=np.int64).reshape(-1)
    out_of_range = indices[(indices < 0) | (indices >= len(dataset))]
    if out_of_range.size:
        raise ValueError(
            f"Chunk {number} holds sample indices outside [0, {len(dataset)}). "
            f"Received: indices {out_of_range[:5].tolist()}"
        )
    images = np.empty((len(indices), size, size, 3), dtype=np.float32)

    def decode(position: int) -> str | None:
        if stop.is_set():  # the consumer has gone; this chunk is discarded
            return None
        try:
            images[position] = dataset.load(int(indices[position]), size, max_pixels=max_pixels)
        except UnreadableImageError as exc:
            return exc.reason
        return None

    reasons = list(executor.map(decode, range(len(indices))))
    decoded = np.array([reason is None for reason in reasons], dtype=bool)
    skipped = [
        (int(index), reason)
        for index, reason in zip(indices, reasons, strict=True)
        if reason is not None
    ]
    return DecodedChunk(
        number, indices[decoded], images if decoded.all() else images[decoded], skipped
    )

"""Build an `ImageDataset` from where images live: a folder of class folders, a CSV manifest, arrays.

`from_directory`, `from_image_folder` (unlabelled), `from_csv` and `from_arrays`
list and check the samples (nothing is decoded here); `open_dataset` and
`open_images` pick the right one for a path.
"""

from __future__ import annotations

import codecs
import io
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ...core.errors import InputError
from ...core.files import TABLE_MAX_BYTES, read_bounded_bytes
from .dataset import ImageDataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "UNLABELLED",
    "check_encoding",
    "from_arrays",
    "from_csv",
    "from_directory",
    "from_image_folder",
    "open_dataset",
    "open_images",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
UNLABELLED = "<unlabelled>"
"""The one class name of `from_image_folder` datasets, which have no labels."""

# Split folder names recognised by `from_directory`, in the order their samples are listed.
_SPLIT_FOLDERS = ("train", "val", "validation", "valid", "test")
_LAYOUTS = "root/<class>/<image> or root/<split>/<class>/<image> with <split> one of " + ", ".join(
    _SPLIT_FOLDERS
)
# A scheme of two or more letters (so that "C:/x.png" is a path): http://, s3://, gs://, file://...
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def _same_files(paths: Sequence[str], candidates: Sequence[int] | None = None) -> dict[str, list[int]]:
    """Resolved path -> positions, for files listed more than once through symlinks or `..`.

    Only `candidates` (default: all) are resolved; the others are compared as they are.
    """
    positions: dict[str, list[int]] = {}
    candidates = set(range(len(paths))) if candidates is None else set(candidates)
    for position, path in enumerate(paths):
        resolved = os.path.realpath(path) if position in candidates else path
        positions.setdefault(resolved, []).append(position)
    return {resolved: found for resolved, found in positions.items() if len(found) > 1}


def _encode_labels(
    names: Sequence[str], class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Label names -> (int64 indices, class names), class names defaulting to the sorted names."""
    class_names = tuple(sorted(set(names)) if class_names is None else class_names)
    lookup = {name: index for index, name in enumerate(class_names)}
    unknown = sorted(set(names) - lookup.keys())
    if unknown:
        raise InputError(
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
        InputError: If `root` is not a folder, holds no class subfolders, or a class
            folder holds no image in any split.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        problem = "is not a folder" if root_path.exists() else "does not exist"
        raise InputError(
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

    paths, label_names, split_names, linked = [], [], [], []
    image_counts: dict[str, int] = {}
    for split, split_folder in splits:
        for class_folder in _visible_subfolders(split_folder):
            linked_names: list[str] = []
            files = _image_files(class_folder, suffixes, symlinks=linked_names, root=root)
            image_counts[class_folder.name] = image_counts.get(class_folder.name, 0) + len(files)
            linked.extend(len(paths) + files.index(name) for name in linked_names)
            paths.extend(os.path.abspath(class_folder / name) for name in files)
            label_names.extend([class_folder.name] * len(files))
            split_names.extend([split] * len(files))
    if not image_counts:
        raise InputError(
            f"The dataset root holds no class subfolders. Expected {_LAYOUTS}; put the images of "
            f"each class in their own subfolder. Received: root={root!r}"
        )
    empty = sorted(name for name, count in image_counts.items() if count == 0)
    if empty:
        raise InputError(
            f"Class folder(s) {empty} hold no image files (extensions {list(suffixes)}) in any "
            f"split. Remove these folders or add images to them. Received: root={root!r}"
        )
    if linked:
        # Symbolic links to a file listed elsewhere: one image in two classes or splits (a leak).
        doubles = _same_files(paths, linked)
        if doubles:
            examples = [" and ".join(paths[i] for i in found[:2]) for found in list(doubles.values())[:3]]
            raise InputError(
                f"The dataset lists the same image file more than once through symbolic links: {examples}. "
                f"An image in two classes or in both the train and test splits makes the evaluation "
                f"meaningless; keep one of them. Received: root={root!r}"
            )
    labels, class_names = _encode_labels(label_names)
    return ImageDataset(paths, labels, class_names, split_names, root=os.path.abspath(root_path))


def _image_files(
    folder: Path, suffixes: tuple[str, ...], *, symlinks: list[str] | None = None, root: str | os.PathLike = ""
) -> list[str]:
    """Sorted names of the visible image files directly in `folder`; names that are symbolic
    links to regular files are appended to `symlinks` when given.

    A name with an image extension that is neither a folder nor a regular file (a FIFO, a
    device, a socket, a link to one or to nothing) is listed too: decoding skips it with
    its reason ("not a regular file: ...", "file not found") without reading it, so the
    run reports it rather than dropping it unseen.

    Raises:
        InputError: If an image name cannot be looked at (a symbolic link loop), naming it.
    """
    names = []
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or not entry.name.lower().endswith(suffixes):
            continue
        try:
            is_file, is_dir = entry.is_file(), entry.is_dir()
        except OSError as error:  # ELOOP: a link that leads back to itself
            link = " (a symbolic link)" if entry.is_symlink() else ""
            raise InputError(
                f"Cannot read {entry.path}{link}: {error.strerror}. Point the link at an image file or remove it. "
                f"Received: root={os.fspath(root or folder)!r}"
            ) from None
        if not is_dir:
            names.append(entry.name)
            if symlinks is not None and is_file and entry.is_symlink():
                symlinks.append(entry.name)
    return sorted(names)


def from_image_folder(
    root: str | os.PathLike, *, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> ImageDataset:
    """List the images directly in a folder, unlabelled: new images to predict.

    Every sample gets the single class `UNLABELLED` and split "all".

    Raises:
        InputError: If `root` is not a folder or holds no image file.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise InputError(f"Expected a folder of images. Received: root={root!r}")
    suffixes = _normalise_extensions(extensions)
    names = _image_files(root_path, suffixes)
    if not names:
        raise InputError(
            f"The folder holds no image files (extensions {list(suffixes)}). Received: root={root!r}"
        )
    return _unlabelled([root_path / name for name in names], root_path)


def _unlabelled(paths: Sequence[Path], root: Path) -> ImageDataset:
    """`paths` as one unlabelled split "all" (class `UNLABELLED`), their ids relative to `root`."""
    paths = [os.path.abspath(path) for path in paths]
    return ImageDataset(paths, np.zeros(len(paths)), (UNLABELLED,), ["all"] * len(paths), root=os.path.abspath(root))


def _row_numbers(positions: Sequence[int], limit: int = 5) -> str:
    """0-based data row positions -> "rows 2, 5 (row 1 is the header)", listing the first few."""
    shown = ", ".join(str(position + 2) for position in positions[:limit])
    more = f" and {len(positions) - limit} more" if len(positions) > limit else ""
    return f"rows {shown}{more} (row 1 is the header)"


def check_encoding(encoding: str) -> str:
    """The codec name of a text encoding (`"latin-1"` -> `"iso8859-1"`).

    Raises:
        InputError: For a name Python does not know.
    """
    try:
        return codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise InputError(
            f"Unknown text encoding {encoding!r}: expected a Python codec name such as 'utf-8', 'latin-1' or "
            f"'cp1252'. Received: encoding={encoding!r}"
        ) from None


def _not_text(data: bytes, encoding: str, received: str) -> InputError:
    """The error for a CSV file (`data`) that is not text in `encoding`, naming the first bad byte and its line."""
    try:
        data.decode(encoding)
        where = ""
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        where = f": byte 0x{data[error.start]:02x} in line {line} ({error.reason})"
    return InputError(
        f"The CSV file is not {encoding} text{where}. Save it as UTF-8, or give its encoding: "
        f"`from_csv(..., encoding='latin-1')` (or 'cp1252', any Python codec name), `[data] encoding = "
        f"\"latin-1\"` in an experiment config, `--encoding latin-1` for `layerprobe extract`. Received: {received}"
    )


def from_csv(
    path: str | os.PathLike,
    *,
    path_column: str = "path",
    label_column: str = "label",
    split_column: str = "split",
    encoding: str = "utf-8",
) -> ImageDataset:
    """List the images named in a CSV file.

    Relative image paths are relative to the CSV file's folder; `~` is expanded. The
    split column is optional (every sample gets split "all" without it). Rows whose
    image file does not exist are kept; they are skipped when decoding. Spaces around
    labels and split names are removed (`"dog "` is `"dog"`, not another class), with a
    warning naming the rows.

    Args:
        path: The CSV file.
        path_column: Column of image paths.
        label_column: Column of class names.
        split_column: Column of split names, if present.
        encoding: The file's text encoding, a Python codec name (`"latin-1"`,
            `"cp1252"`...). UTF-8 by default, with or without a byte-order mark.

    Returns:
        An ImageDataset of absolute file paths; `class_names` are the sorted labels.

    Raises:
        UnusableFileError: If the file is not a regular file (a FIFO, a device) or holds
            more than `TABLE_MAX_BYTES` (1 GiB); nothing is read then.
        InputError: If the file is missing, empty or not text in `encoding`, a column
            is missing, a cell is blank or holds a NUL byte, a path is a URL (download
            the images first), or one image is listed twice (by the same path, or by
            two paths that resolve to the same file through `..` or symbolic links: a
            train/test leak).
    """
    csv_path = Path(path)
    received = f"path={os.fspath(path)!r}"
    if not csv_path.exists():
        raise InputError(f"The CSV file does not exist. Check the path. Received: {received}")
    codec = check_encoding(encoding)
    data = read_bounded_bytes(csv_path, "CSV file", TABLE_MAX_BYTES)
    try:
        table = pd.read_csv(
            io.BytesIO(data), dtype=str, keep_default_na=False, encoding="utf-8-sig" if codec == "utf-8" else encoding
        )
    except pd.errors.EmptyDataError:
        raise InputError(
            "The CSV file is empty. Expected a header row and one row per image. "
            f"Received: {received}"
        ) from None
    except UnicodeDecodeError:
        raise _not_text(data, encoding, f"{received}, encoding={encoding!r}") from None
    missing = [column for column in (path_column, label_column) if column not in table.columns]
    if missing:
        raise InputError(
            f"The CSV file has no column(s) {missing}; found columns {list(table.columns)}. Rename the column(s) "
            f"to {missing} (or, from Python, `from_csv(path_column=..., label_column=...)` names other columns). "
            f"Received: {received}"
        )
    if table.empty:
        raise InputError(
            f"The CSV file has a header but no rows. Add one row per image. Received: {received}"
        )
    columns = [
        column for column in (path_column, label_column, split_column) if column in table.columns
    ]
    for column in columns:
        blank = np.flatnonzero(table[column].str.strip() == "")
        if blank.size:
            raise InputError(
                f"The CSV column {column!r} has empty cells in {_row_numbers(blank)}. Fill them "
                f"in or remove those rows. Received: {received}"
            )
        nul = np.flatnonzero(table[column].str.contains("\0", regex=False).to_numpy())
        if nul.size:  # no file name holds one, and HDF5 would cut a label there
            raise InputError(
                f"The CSV column {column!r} holds a NUL byte (\\x00) in {_row_numbers(nul)}: no file name or "
                f"label may contain one. Is the file binary, or UTF-16 text (then save it as UTF-8)? "
                f"Received: {received}"
            )
    urls = np.flatnonzero(table[path_column].str.match(_URL).to_numpy())
    if urls.size:
        examples = list(table[path_column].iloc[urls[:3]])
        raise InputError(
            f"The CSV column {path_column!r} holds URLs, not file paths: {examples} in {_row_numbers(urls)}. "
            f"layerprobe reads local files only: download the images (e.g. `aws s3 sync`, `gsutil rsync`, "
            f"`wget`) and list their local paths. Received: {received}"
        )
    for column in columns[1:]:  # labels and splits: "dog " is not a new class
        padded = np.flatnonzero((table[column] != table[column].str.strip()).to_numpy())
        if padded.size:
            warnings.warn(
                f"The CSV column {column!r} has values with spaces around them in {_row_numbers(padded)} "
                f"(e.g. {table[column].iloc[padded[0]]!r}); they were removed, so that they do not make "
                f"new classes or splits. Received: {received}",
                UserWarning,
                stacklevel=2,
            )
            table[column] = table[column].str.strip()
    folder = os.path.abspath(csv_path.parent)
    paths = pd.Series(
        [os.path.normpath(os.path.join(folder, os.path.expanduser(p))) for p in table[path_column]]
    )
    duplicated = np.flatnonzero(paths.duplicated(keep=False))
    if duplicated.size:
        examples = list(dict.fromkeys(table[path_column].iloc[duplicated]))[:3]
        raise InputError(
            f"The CSV file lists the same image more than once: {examples} in "
            f"{_row_numbers(duplicated)}. Keep one row per image. Received: {received}"
        )
    doubles = _same_files(list(paths))
    if doubles:
        found = next(iter(doubles.values()))
        raise InputError(
            f"The CSV file lists the same image file twice through a symbolic link: "
            f"{[table[path_column].iloc[i] for i in found]} in {_row_numbers(found)} are both {next(iter(doubles))}. "
            f"One image in two rows (e.g. in both the train and test splits) makes the evaluation "
            f"meaningless; keep one row per image. Received: {received}"
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
        InputError: If shapes, values, labels, class names or splits are invalid.

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
        raise InputError(
            "`X` must be a non-empty numeric array of images shaped (n_samples, h, w, 3), "
            "(n_samples, h, w, 1) or (n_samples, h, w). "
            f"Received: X.shape={X.shape}, X.dtype={X.dtype}"
        )
    low, high = X.min(), X.max()
    if not (np.isfinite(low) and np.isfinite(high) and low >= 0 and high <= 255):
        raise InputError(
            "`X` must hold finite pixel values in [0, 255]; rescale it (e.g. X * 255 for images in "
            f"[0, 1]) and replace NaN/inf. Received: values in [{low}, {high}]"
        )
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != len(X):
        raise InputError(
            "`y` must hold one label per image, shaped (n_samples,) (use y.argmax(axis=1) for "
            f"one-hot labels). Received: y.shape={y.shape} for {len(X)} images"
        )
    if y.dtype.kind in "OSU":
        labels, class_names = _encode_labels([str(label) for label in y], class_names)
    elif y.dtype.kind in "iu":
        n_classes = int(y.max()) + 1 if class_names is None else len(class_names)
        if y.min() < 0 or y.max() >= n_classes:
            raise InputError(
                f"Integer labels in `y` must lie in [0, {n_classes}) (the number of class names). "
                f"Received: labels in [{y.min()}, {y.max()}], class_names={class_names}"
            )
        labels = y
        if class_names is None:
            class_names = tuple(str(k) for k in range(n_classes))
    else:
        raise InputError(
            "`y` must hold integer class indices or class names; cast it with y.astype(int). "
            f"Received: y.dtype={y.dtype}"
        )
    if len(set(class_names)) != len(class_names):
        raise InputError(f"`class_names` must be unique. Received: class_names={list(class_names)}")
    splits = [split] * len(X) if isinstance(split, str) else list(split)
    if len(splits) != len(X):
        raise InputError(
            "`split` must be a string or one split name per image. "
            f"Received: {len(splits)} split names for {len(X)} images"
        )
    return ImageDataset(
        [f"array:{i}" for i in range(len(X))], labels, class_names, splits, images=X
    )


def open_dataset(source: str | os.PathLike, *, encoding: str = "utf-8") -> ImageDataset:
    """Open a dataset folder (see `from_directory`) or CSV file (see `from_csv`, which reads it as `encoding`).

    Raises:
        InputError: If `source` does not exist, or is neither a folder nor a .csv file.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return from_directory(path)
        if path.exists() and path.suffix.lower() == ".csv":  # from_csv refuses a FIFO or a device, naming it
            return from_csv(path, encoding=encoding)
        if not path.exists():
            raise InputError(
                f"The dataset {os.fspath(source)} does not exist: give the folder of your images (or a .csv "
                f"file) by a path that exists from {os.getcwd()}. Received: source={os.fspath(source)!r}"
            )
    raise InputError(
        f"Cannot open a dataset from this source. Expected a folder laid out as {_LAYOUTS}, or "
        f"a .csv file with path and label columns. Received: source={source!r}"
    )


def open_images(source: str | os.PathLike) -> ImageDataset:
    """Like `open_dataset`; a folder of images without class subfolders, or one image file, is read unlabelled.

    For prediction, where new images need no labels (see `from_image_folder`).
    """
    path = Path(source)
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        return _unlabelled([path], path.parent)
    if path.is_dir() and not _visible_subfolders(path) and _image_files(path, IMAGE_EXTENSIONS):
        return from_image_folder(path)
    return open_dataset(source)


"""The config `layerprobe init DATA` writes: short, fitted to the data it reads, runnable as it is.

The data folder (or CSV) is opened once to find its classes and splits:
`train` beside `test` (or `val`, `validation`, `valid`) names the two splits;
a single split gets `test_size`, and a stratified train/test split is made at
run time. A model file gets `weights = "saved"` (its own), a registry name
`"imagenet"`. `layerprobe init --full` writes the annotated template of
`template.py` instead, with the same detected values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.atomic import write_text_atomically
from ...core.errors import InputError
from ...features.inputs import open_dataset
from ...features.model_files import SAVED_WEIGHTS, is_model_file
from .schema import DEFAULT_OUTPUT_DIR, DEFAULT_STORE, DataConfig
from .template import CONFIG_FILE_NAME, example_config, toml_value

__all__ = ["DEFAULT_MODEL", "DataLayout", "read_layout", "starter_config", "write_starter_config"]

DEFAULT_MODEL = "MobileNetV2"
_TEST_SPLITS = ("test", "val", "validation", "valid")  # the first one present is the held-out split


@dataclass(frozen=True)
class DataLayout:
    """What `init` found in the data: classes, splits and their sizes.

    Attributes:
        path: The folder or CSV file, as it goes into the config.
        class_names: The classes, sorted.
        split_sizes: Images per split, in the dataset's order.
        train_split: The split classifiers are fitted on.
        test_split: The held-out split; with a single split, the name of the one made.
        test_size: Set when the data has a single split (a stratified split is made).
    """

    path: str
    class_names: tuple[str, ...]
    split_sizes: dict[str, int]
    train_split: str
    test_split: str
    test_size: float | None

    def data_values(self) -> dict[str, Any]:
        """The [data] keys of the config."""
        values: dict[str, Any] = {"path": self.path, "train_split": self.train_split, "test_split": self.test_split}
        return {**values, "test_size": self.test_size} if self.test_size is not None else values

    def describe(self) -> str:
        """One line: the classes and splits, e.g. "2 classes (ants, bees); train 244 images, val 153"."""
        shown = ", ".join(self.class_names[:6]) + (", ..." if len(self.class_names) > 6 else "")
        splits = ", ".join(f"{name} {count}" for name, count in self.split_sizes.items())
        made = f" (a stratified {self.test_size:g} of it is held out as test)" if self.test_size is not None else ""
        return f"{len(self.class_names)} classes ({shown}); images per split: {splits}{made}"


def read_layout(data: str | os.PathLike, config_dir: str | os.PathLike, *, encoding: str = "utf-8") -> DataLayout:
    """Open `data` and find its classes and splits; its path is written relative to `config_dir` when inside it.

    Raises:
        InputError: If `data` does not exist or is not a dataset, or it has several
            splits and none named "train".
    """
    dataset = open_dataset(data, encoding=encoding)
    sizes = {name: int(sum(split == name for split in dataset.splits)) for name in dataset.split_names}
    shown = _config_path(data, config_dir)
    if len(sizes) == 1:
        return DataLayout(shown, tuple(dataset.class_names), sizes, DataConfig.train_split, DataConfig.test_split,
                          DataConfig.test_size)
    if "train" not in sizes:
        raise InputError(
            f"{data} has the splits {list(sizes)} and none named 'train': name the training split 'train' "
            f"(a folder train/ or the CSV's split column), or put every image in one split to have a test split "
            f"made. Received: splits={list(sizes)}"
        )
    test = next((name for name in _TEST_SPLITS if name in sizes), next(name for name in sizes if name != "train"))
    return DataLayout(shown, tuple(dataset.class_names), sizes, "train", test, None)


def _config_path(path: str | os.PathLike, config_dir: str | os.PathLike) -> str:
    """`path` as a config names it: relative to the config's folder when inside it, else absolute."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute, os.path.abspath(config_dir))
    return Path(absolute if relative.startswith("..") else relative).as_posix()


def _backbone_values(model: str, config_dir: str | os.PathLike) -> dict[str, Any]:
    if is_model_file(model):
        return {"model": _config_path(model, config_dir), "weights": SAVED_WEIGHTS, "layers": ["stages"]}
    return {"model": model, "weights": "imagenet", "layers": ["stages"]}


def starter_config(
    layout: DataLayout, *, model: str = DEFAULT_MODEL, config_path: str | os.PathLike = CONFIG_FILE_NAME
) -> str:
    """The short config for `layout`, to be written at `config_path`: the lines a first run needs, each explained."""
    backbone = _backbone_values(model, Path(config_path).parent)
    from_file = backbone["weights"] == SAVED_WEIGHTS
    weights_note = ("the file's own weights" if from_file else
                    'downloaded once into ~/.keras/models; "none": random, a baseline')
    data = layout.data_values()
    keys = [
        "[data]",
        (f"path = {toml_value(data['path'])}", ""),
        (f"train_split = {toml_value(data['train_split'])}", "classifiers are fitted here (CV inside it)"),
        (f"test_split = {toml_value(data['test_split'])}", "scored once, at the end"),
        *([(f"test_size = {data['test_size']!r}", "the share of each class held out as test_split")]
          if "test_size" in data else []),
        "",
        "[features]",
        (f"store = {toml_value(DEFAULT_STORE)}", "features are cached here, reused by later runs"),
        "",
        "[[backbones]]",
        (f"model = {toml_value(backbone['model'])}", "`layerprobe layers FILE` lists its stages" if from_file else
         "`layerprobe layers --list`: the others; or a .keras file"),
        (f"weights = {toml_value(backbone['weights'])}", weights_note),
        (f"layers = {toml_value(backbone['layers'])}", "every stage's output; `layerprobe layers MODEL` lists them"),
        "",
        "[classifiers]",
        ('names = ["logreg", "linear_svm"]', ""),
        "",
        "[output]",
        (f"dir = {toml_value(DEFAULT_OUTPUT_DIR)}", "results.csv, summary.md, depth.png, the recommended model"),
    ]
    width = min(30, max(len(key[0]) for key in keys if isinstance(key, tuple) and key[1]))  # long paths stick out
    lines = [
        f"# layerprobe config written by `layerprobe init` for {layout.path}:",
        f"# {layout.describe()}.",
        f"# Run it with:  layerprobe run {Path(config_path).as_posix()}",
        "# Every key left out takes its default; `layerprobe init --full` writes them all, explained.",
        "",
        *(key if isinstance(key, str) else f"{key[0]:<{width}}  # {key[1]}" if key[1] else key[0] for key in keys),
    ]
    return "\n".join(lines) + "\n"


def write_starter_config(
    data: str | os.PathLike | None,
    path: str | os.PathLike = CONFIG_FILE_NAME,
    *,
    model: str = DEFAULT_MODEL,
    full: bool = False,
    force: bool = False,
    encoding: str = "utf-8",
) -> tuple[Path, DataLayout | None]:
    """Write the config for `data` at `path` (atomically): `starter_config`, or with `full` the annotated template.

    Returns:
        The config's path and the layout found (None without `data`, for `full` only).

    Raises:
        InputError: If `path` exists and `force` is False, if `data` is None without
            `full`, or from `read_layout`.
    """
    path = Path(path).expanduser()
    if data is None and not full:
        raise InputError(
            "`layerprobe init` needs your images: a folder with one subfolder per class (optionally inside train/ "
            "and val/ or test/), or a CSV with path and label columns; or --full for the template with every key. "
            "Received: no DATA"
        )
    if path.exists() and not force:
        raise InputError(
            f"{path} exists already and was left as it is. Write another file with --config PATH, or overwrite it "
            f"with --force. Received: config={os.fspath(path)!r}"
        )
    layout = None if data is None else read_layout(data, path.parent, encoding=encoding)
    if full:
        values = {} if layout is None else {
            **{("data", key): value for key, value in layout.data_values().items()},
            **{("backbones", key): value for key, value in _backbone_values(model, path.parent).items()},
        }
        text = example_config(values)
    else:
        text = starter_config(layout, model=model, config_path=path)
    write_text_atomically(path, text)
    return path, layout

"""Benchmark data: reproducible CIFAR-10 subsets, and a generated stand-in for `--smoke` runs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["CIFAR10_CLASSES", "cifar_subset", "random_weights_file", "smoke_cifar10"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar_subset(root: str | os.PathLike, *, split: str = "train", n_per_class: int | None):
    """The first `n_per_class` images of each class of a CIFAR-10 split, in file-name order.

    `root` is laid out as `root/<split>/<class>/<image>.jpg`. The samples come from
    `layerprobe.features.inputs.from_directory` (sorted by class, then file name) and are picked
    with `ImageDataset.select`, so the same arguments always give the same dataset
    (and the same cache keys).

    Args:
        root: The CIFAR-10 folder.
        split: "train" or "test".
        n_per_class: Images per class; `None` for all of them.

    Returns:
        An `ImageDataset` of `n_per_class * 10` files (fewer if a class is smaller).

    Raises:
        SystemExit: If a class holds fewer than `n_per_class` images.
    """
    from layerprobe.features.inputs import from_directory

    dataset = from_directory(root).subset(split)
    if n_per_class is None:
        return dataset
    picked = []
    for label in range(len(dataset.class_names)):
        members = np.flatnonzero(dataset.labels == label)
        if len(members) < n_per_class:
            raise SystemExit(
                f"error: class {dataset.class_names[label]!r} of {root}/{split} holds {len(members)} "
                f"images, fewer than the {n_per_class} per class asked for. Ask for fewer images. "
                f"Received: n_per_class={n_per_class}"
            )
        picked.append(members[:n_per_class])
    return dataset.select(np.sort(np.concatenate(picked)))


def smoke_cifar10(
    folder: str | os.PathLike, *, n_train: int = 8, n_test: int = 4, size: int = 32, test_split: str = "test"
) -> Path:
    """A generated stand-in for the CIFAR-10 folder, for a benchmark's `--smoke` run.

    `folder/{train,<test_split>}/<class>/<n>.jpg` with CIFAR-10's ten class names: each class a
    colour of its own plus noise (so that probes learn something), `size` px JPEG files.
    Written once; a folder already holding the files is reused.

    Args:
        folder: Where to write the images.
        n_train: Training images per class.
        n_test: Test images per class.
        size: Side of the images.
        test_split: Name of the test split's folder ("test"; "val" as in hymenoptera).

    Returns:
        `folder`, as a `Path`.
    """
    from PIL import Image

    folder = Path(folder)
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(len(CIFAR10_CLASSES), 3))
    for split, n in (("train", n_train), (test_split, n_test)):
        for colour, name in zip(colours, CIFAR10_CLASSES):
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for number in range(n):
                path = folder / split / name / f"{number:04d}.jpg"
                if not path.is_file():
                    noise = rng.normal(0, 40, size=(size, size, 3))
                    Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(path, quality=90)
    return folder


def random_weights_file(model: str, path: str | os.PathLike, *, input_size: int, seed: int) -> Path:
    """A weights file of `model` (headless) at random initialisation from `seed`: "pretrained" weights for `--smoke`.

    Written once; an existing file is reused.
    """
    from layerprobe.features.backbone import load_backbone

    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        load_backbone(model, weights=None, input_size=input_size, seed=seed).model.save_weights(path)
    return path

"""Benchmark data: reproducible CIFAR-10 subsets."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["cifar_subset"]


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

"""The train and test splits of a run, and whether classifiers can be fitted on their classes."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from ...core.errors import ConfigError
from ...features.inputs import ImageDataset, open_dataset
from ..config import DataConfig, ExperimentConfig

__all__ = ["check_classes", "class_problems", "open_splits", "split_dataset"]


def split_dataset(dataset: ImageDataset, data: DataConfig, *, source: str = "<config>") -> tuple[ImageDataset, dict]:
    """Check the train and test splits, or make them from a single-split dataset.

    Returns:
        The dataset (with new split names when they were made) and the split
        definition recorded with every fitted classifier.

    Raises:
        ConfigError: If the dataset has several splits and not both named ones,
            or a single split that cannot be split stratified (a class with one image).
    """
    names = dataset.split_names
    definition = {"train_split": data.train_split, "test_split": data.test_split}
    if data.train_split in names and data.test_split in names:
        return dataset, {**definition, "made": False}
    if len(names) != 1:
        raise ConfigError(
            [
                f"[data] train_split/test_split: the data at {data.path} has the splits {list(names)}, not "
                f"both {data.train_split!r} and {data.test_split!r}. Name two of its splits, or use data "
                f"with a single split to have a stratified one made (test_size, seed). Received: "
                f"train_split={data.train_split!r}, test_split={data.test_split!r}"
            ],
            source,
        )
    counts = np.bincount(dataset.labels, minlength=len(dataset.class_names))
    few = {name: int(count) for name, count in zip(dataset.class_names, counts) if count < 2}
    problem = f"class(es) {sorted(few)} have fewer than 2 images, one for each split. Received: {few}" if few else None
    if problem is None:
        try:
            train, test = train_test_split(
                np.arange(len(dataset)), test_size=data.test_size, stratify=dataset.labels, random_state=data.seed
            )
        except ValueError as error:  # scikit-learn's word on a split it cannot make
            problem = f"{error} Received: test_size={data.test_size}"
    if problem is not None:
        raise ConfigError(
            [
                f"[data] test_size: the data at {data.path} has a single split, and no stratified train/test "
                f"split of it can be made. Add images, change test_size, or split the data yourself "
                f"(train/ and test/ folders): {problem}"
            ],
            source,
        )
    splits = np.empty(len(dataset), dtype=object)
    splits[train], splits[test] = data.train_split, data.test_split
    made = {**definition, "made": True, "test_size": data.test_size, "seed": data.seed}
    return dataclasses.replace(dataset, splits=list(splits)), made


def class_problems(
    class_names: Sequence[str], y_train: np.ndarray, y_test: np.ndarray, split: dict
) -> tuple[str | None, list[str]]:
    """Why classifiers cannot be fitted on these labels (None if they can), and the classes the test split lacks."""
    n_train = np.bincount(y_train, minlength=len(class_names))
    untested = [name for name, count in zip(class_names, np.bincount(y_test, minlength=len(class_names))) if not count]
    few = {name: int(count) for name, count in zip(class_names, n_train) if count < 2}
    if len(class_names) < 2:
        problem = (
            f"there is a single class {list(class_names)}; a classifier needs at least 2. Add a "
            f"class folder (or CSV label) per class"
        )
    elif few:
        problem = (
            f"class(es) {sorted(few)} have fewer than 2 images in the train split {split['train_split']!r}; "
            f"fitting and cross-validating a classifier needs at least 2 per class. Add training images of "
            f"them, or remove them from the data. Received: training images {few}"
        )
    else:
        problem = None
    return problem, untested


def check_classes(dataset: ImageDataset, split: dict, config: ExperimentConfig) -> list[str]:
    """The classes the test split lacks.

    Raises:
        ConfigError: If there is a single class, or a class with fewer than 2 training images.
    """
    splits = np.asarray(dataset.splits)
    problem, untested = class_problems(
        dataset.class_names,
        dataset.labels[splits == split["train_split"]],
        dataset.labels[splits == split["test_split"]],
        split,
    )
    if problem is not None:
        raise ConfigError([f"[data] path: in {config.data.path}, {problem}"], config.source)
    return untested


def open_splits(config: ExperimentConfig) -> tuple[ImageDataset, dict, list[str]]:
    """Open the config's images and check them before any work.

    Returns:
        The dataset with its train and test splits, the split definition
        (see `split_dataset`) and the classes the test split lacks.

    Raises:
        ConfigError: See `split_dataset` and `check_classes`.
        InputError: If the images cannot be opened as a dataset.
    """
    dataset, split = split_dataset(open_dataset(config.data.path, encoding=config.data.encoding), config.data, source=config.source)
    return dataset, split, check_classes(dataset, split, config)

"""Training data for `fit`: image batches decoded on the fly, and the validation split.

Images are decoded batch by batch from an `ImageDataset`, never all held in
memory; `ImageBatches` is a `keras.utils.PyDataset`, so it runs on every backend.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from sklearn.model_selection import train_test_split

from ...core.errors import InputError, UnreadableImageError
from ...features.inputs import ImageDataset

__all__ = ["ImageBatches", "validation_split"]


class ImageBatches(keras.utils.PyDataset):
    """`(images, labels)` batches decoded on the fly from an `ImageDataset`.

    Shuffled per epoch when `shuffle` is set: epoch `e` uses the permutation
    drawn from `(seed, e)`, so a resumed run sees the same batches. Unreadable
    images are left out of their batch and recorded in `skipped`.

    Args:
        dataset: The samples.
        size: Image side fed to the model.
        batch_size: Images per batch.
        shuffle: Reshuffle at every epoch.
        seed: Seed of the shuffling.
        workers: Threads decoding batches (see `keras.utils.PyDataset`).

    Raises:
        InputError: (a `ValueError`) From indexing, if no image of the batch decodes.
    """

    def __init__(self, dataset: ImageDataset, size: int, batch_size: int, *,
                 shuffle: bool = False, seed: int = 0, workers: int = 1):
        super().__init__(workers=workers)
        self.dataset = dataset
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.skipped: dict[str, str] = {}
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Selects the order of epoch `epoch` (a resumed fit starts past 0)."""
        self.epoch = epoch
        n_samples = len(self.dataset)
        self.order = (
            np.random.default_rng([self.seed, epoch]).permutation(n_samples)
            if self.shuffle else np.arange(n_samples)
        )

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        positions = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        images, labels = [], []
        for i in positions:
            try:
                images.append(self.dataset.load(int(i), self.size))
            except UnreadableImageError as error:
                self.skipped[self.dataset.sample_ids[i]] = error.reason
                continue
            labels.append(self.dataset.labels[i])
        if not images:
            raise InputError(
                f"No image of batch {index} could be decoded; remove the unreadable files from "
                f"the dataset. Received: {dict(list(self.skipped.items())[-3:])}"
            )
        return np.stack(images).astype("float32"), np.asarray(labels)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)


def validation_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) sample indices, fixed by `seed`.

    Raises:
        InputError: (a `ValueError`) If the classes are too small to split.
    """
    indices = np.arange(len(labels))
    if val_fraction == 0:
        return indices, indices[:0]
    try:
        train, val = train_test_split(
            indices, test_size=val_fraction, stratify=labels, random_state=seed
        )
    except ValueError as error:
        raise InputError(
            f"Cannot hold out a stratified validation split of val_fraction={val_fraction} from "
            f"{len(labels)} training images in {len(np.unique(labels))} classes: {error} "
            "Use more images per class, a larger val_fraction, or val_fraction=0 to train "
            f"without validation. Received: val_fraction={val_fraction}"
        ) from error
    return np.sort(train), np.sort(val)

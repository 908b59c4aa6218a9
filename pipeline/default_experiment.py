"""The experiment `layerprobe run` runs without a config: transfer between the halves of a digits set.

It needs no download (scikit-learn ships `load_digits`: 1,797 8x8 grey
digits) and costs about 3 minutes of CPU, source training included
(benchmarks/RESULTS.md, "The demo in two minutes"). The digits are split
in two halves (stratified, seeded):

1. **Source**: a `MobileNetV2(alpha=0.35)` is trained from scratch on half A
   (`layerprobe.pipeline.finetune.train_from_scratch`, 32x32 inputs, BatchNormalization
   momentum 0.9 so that a short training leaves usable moving averages) until
   its accuracy with `training=False` on held-out source digits reaches
   `SOURCE_TARGET_ACCURACY`, checked after every epoch, for at most
   `SOURCE_EPOCHS` epochs. A fixed number of epochs did not give the same
   source on every backend: the held-out accuracy swings by several points from
   epoch to epoch, so TensorFlow, JAX and PyTorch, whose random streams differ,
   stopped at sources of different quality, and the run's conclusion followed.
   A source below `MIN_SOURCE_ACCURACY` is refused. The headless weights are
   saved as `OUT/source/digits-A-<settings digest>.weights.h5`, reused by later
   runs, and copied to `OUT/source/digits-A.weights.h5`, the file the run names.
2. **Target**: half B, other people's digits, written once as PNG files under
   `OUT/data/`, with only `TRAIN_PER_CLASS` labelled images per class (a small
   dataset, the case transfer learning is for) and the rest as the test split.
3. The normal pipeline compares the same architecture with the source
   weights and with random weights, on every stage output, with logreg and
   a linear SVM: which layers transfer, and by how much do they beat random
   features? (A class-disjoint split, digits 0-4 to 5-9, was tried first: a
   source of 700 images in 5 classes learns features no better than random
   ones, because random convolutional features already separate digits well.)
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from ..features.backend import import_keras_quietly
from ..core.atomic import (
    temporary_path,
    write_atomically,
    write_text_atomically,
)
from ..core.files import RECORD_MAX_BYTES, read_bounded_text
from ..features.inputs import ImageDataset, from_arrays
from .config import ExperimentConfig, config_from_dict
from .run import RunResult, run_experiment

if TYPE_CHECKING:
    from .finetune import FinetuneConfig

__all__ = ["default_config", "pretrain_source", "run_default", "train_source_weights", "write_target_images"]

MODEL = "MobileNetV2"
MODEL_KWARGS = {"alpha": 0.35}
INPUT_SIZE = 32
CLASS_NAMES = [str(digit) for digit in range(10)]
TRAIN_PER_CLASS = 5
BATCHNORM_MOMENTUM = 0.9
SOURCE_EPOCHS = 40  # at most
SOURCE_LEARNING_RATE = 3e-3  # Adam; 1e-3 took 27-43 epochs to the target, 1e-2 diverged (benchmarks/RESULTS.md)
SOURCE_HOLDOUT = 0.2
SOURCE_TARGET_ACCURACY = 0.9  # training stops at the first epoch whose held-out accuracy reaches this
MIN_SOURCE_ACCURACY = 0.85  # ten classes: chance is 0.1
SEED = 0
SOURCE_NAME = "digits-A"


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 8x8 images in 0-255, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.rint(digits.images * (255 / 16)).astype(np.uint8), digits.target


def _halves(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of source half A and target half B, stratified by digit."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(labels)), test_size=0.5, stratify=labels, random_state=SEED)


def _split_names(labels: np.ndarray, n_train: int | float) -> np.ndarray:
    """"train" for a stratified `n_train` of the samples (a count or fraction), "test" for the rest."""
    from sklearn.model_selection import train_test_split

    train, _ = train_test_split(np.arange(len(labels)), train_size=n_train, stratify=labels, random_state=SEED)
    names = np.full(len(labels), "test", dtype=object)
    names[train] = "train"
    return names


def _source_dataset() -> ImageDataset:
    """Half A, split into "train" and a held-out "test" for the accuracy check."""
    images, labels = _digits()
    source, _ = _halves(labels)
    splits = _split_names(labels[source], 1 - SOURCE_HOLDOUT)
    return from_arrays(images[source], labels[source], class_names=CLASS_NAMES, split=list(splits))


def write_target_images(root: Path) -> Path:
    """Write half B as PNG files under `root/{train,test}/<digit>/`, once.

    The folder is written under a temporary name and renamed into place, so a
    killed run leaves no half-written dataset; existing files are reused (their
    modification times are part of the dataset digest, hence of feature keys).
    """
    from PIL import Image

    if root.is_dir():
        return root
    images, labels = _digits()
    _, target = _halves(labels)
    splits = _split_names(labels[target], TRAIN_PER_CLASS * len(CLASS_NAMES))
    tmp = temporary_path(root)  # a folder: written whole under this name, then renamed
    for index, split in zip(target, splits):
        folder = tmp / split / str(labels[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(folder / f"{index:04d}.png")
    try:
        os.rename(tmp, root)
    except OSError:  # another run wrote it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        if not root.is_dir():
            raise
    return root


def pretrain_source(
    model: str,
    source: ImageDataset,
    directory: Path,
    *,
    name: str,
    options: FinetuneConfig,
    input_size: int,
    model_kwargs: Mapping[str, Any] | None = None,
    min_accuracy: float = 0.0,
    target_accuracy: float | None = None,
    dataset_digest: str = "stat",
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Train a source network from scratch (or reuse it); return its headless weights file and facts.

    `train_from_scratch` trains on the "train" split of `source`; `evaluate_model`
    scores its "test" split in inference mode (`training=False`). The backbone
    without its head is saved as `directory/<name>-<settings digest>.weights.h5`
    beside a JSON of the facts (`accuracy`, `n_test`, `fit_seconds`, `settings`),
    and the same settings and data reuse them (the data identified by
    `source.digest(dataset_digest)`: `"content"` survives a copy of the images that
    does not keep their mtimes). A killed training resumes at its last finished epoch.
    With `target_accuracy` the held-out accuracy (inference mode) is checked after
    every epoch and training stops at the first epoch that reaches it; the "test"
    split then serves as the source's validation split. Every epoch logs a line
    (with the held-out accuracy when it is checked); `progress` adds a bar within epochs.

    Raises:
        RuntimeError: If the held-out accuracy is below `min_accuracy` (its
            features would be meaningless).
    """
    keras = import_keras_quietly()
    from .finetune import EpochLogger, evaluate_model, train_from_scratch

    model_kwargs = dict(model_kwargs or {})
    settings = {
        "model": model, "model_kwargs": model_kwargs, "input_size": input_size,
        "options": options.to_dict(), "data": source.digest(dataset_digest),
        **({"target_accuracy": target_accuracy} if target_accuracy is not None else {}),  # earlier keys stay valid
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    weights_path = directory / f"{name}-{digest}.weights.h5"
    facts_path = weights_path.with_name(f"{name}-{digest}.json")
    if weights_path.is_file() and facts_path.is_file():
        facts = json.loads(read_bounded_text(facts_path, "source network record", RECORD_MAX_BYTES))
        log(f"source network: reused {weights_path.name} (held-out accuracy {facts['accuracy']:.3f}, training=False)")
        return weights_path, facts
    train, test = source.subset("train"), source.subset("test")
    epochs = options.head_epochs + options.finetune_epochs
    kwargs = ", ".join(f"{key}={value}" for key, value in model_kwargs.items())
    until = "" if target_accuracy is None else f" at most, until {target_accuracy} held-out accuracy"
    log(f"source network: training {model}{f'({kwargs})' if kwargs else ''} from scratch on {name}, {len(train)} "
        f"images ({epochs} epochs{until})")

    class StopAtTarget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_accuracy"] = evaluate_model(self.model, test).accuracy  # for the epoch's line
            if logs["val_accuracy"] >= target_accuracy:
                self.model.stop_training = True

    result = train_from_scratch(
        model, train, output_dir=directory / f"run-{name}-{digest}", input_size=input_size,
        model_kwargs=model_kwargs, config=options, resume=True,
        callbacks=[*([StopAtTarget()] if target_accuracy is not None else []),
                   EpochLogger(lambda line: log(f"  {line}"), progress=progress)],
    )
    scores = evaluate_model(result, test)
    log(
        f"source network: held-out accuracy {scores.accuracy:.3f} on {scores.n_test} held-out source images "
        f"(inference mode, training=False) after {result.epochs_run} epochs, {result.fit_seconds:.0f} s"
    )
    if scores.accuracy < min_accuracy:
        raise RuntimeError(
            f"The source network scores {scores.accuracy:.3f} on held-out source images in inference mode, "
            f"below {min_accuracy}; its features would not mean anything. Its BatchNormalization statistics "
            f"or training did not converge; see {result.history_path}."
        )
    backbone = next(layer for layer in result.model.layers if isinstance(layer, keras.Model))

    def save_weights(tmp: Path) -> None:
        staged = tmp.with_name(f"{tmp.name}.weights.h5")  # Keras wants the suffix
        try:
            backbone.save_weights(staged)
            os.replace(staged, tmp)
        finally:
            staged.unlink(missing_ok=True)

    write_atomically(weights_path, save_weights)
    facts = {"accuracy": scores.accuracy, "n_test": scores.n_test,
             "fit_seconds": result.fit_seconds, "settings": settings}
    write_text_atomically(facts_path, json.dumps(facts, indent=2))
    return weights_path, facts


def train_source_weights(directory: Path, *, log: Callable[[str], None] = print, progress: bool = False) -> Path:
    """Train the source network on half A (or reuse it) and return its headless weights file.

    The file is `directory/digits-A.weights.h5`, a copy of the one `pretrain_source`
    keeps under its settings digest: a name a reader can use (the README's examples
    do), rewritten only when the trained weights change.

    Raises:
        RuntimeError: If its held-out accuracy in inference mode is below
            `MIN_SOURCE_ACCURACY` (its features would be meaningless).
    """
    import_keras_quietly()  # the finetune package imports Keras
    from .finetune import FinetuneConfig

    options = FinetuneConfig(
        head_epochs=SOURCE_EPOCHS, head_learning_rate=SOURCE_LEARNING_RATE, finetune_epochs=0, augmentation=None,
        dropout=0.0,
        val_fraction=0.0, early_stopping_patience=None, seed=SEED,
        scratch_batchnorm_momentum=BATCHNORM_MOMENTUM,
    )
    trained, _ = pretrain_source(
        MODEL, _source_dataset(), directory, name=SOURCE_NAME, options=options, input_size=INPUT_SIZE,
        model_kwargs=MODEL_KWARGS, min_accuracy=MIN_SOURCE_ACCURACY, target_accuracy=SOURCE_TARGET_ACCURACY,
        log=log, progress=progress,
    )
    published = directory / f"{SOURCE_NAME}.weights.h5"
    if not (published.is_file() and filecmp.cmp(published, trained, shallow=False)):  # a rewrite would change its mtime
        write_atomically(published, lambda tmp: shutil.copyfile(trained, tmp))
    return published


def default_config(
    output_dir: str | os.PathLike, store: str | os.PathLike, source_weights: str | os.PathLike
) -> ExperimentConfig:
    """The default experiment's config: source weights versus random weights on the target digits."""
    output_dir = Path(output_dir).resolve()
    backbone = {"model": MODEL, "layers": ["stages"], "model_kwargs": MODEL_KWARGS}
    raw: dict[str, Any] = {
        "data": {"path": str(output_dir / "data" / "digits-B"), "train_split": "train", "test_split": "test"},
        "features": {"store": str(Path(store).resolve()), "input_size": INPUT_SIZE, "pooling": "avg", "batch_size": 64},
        "backbones": [
            {**backbone, "weights": str(Path(source_weights).resolve())},
            {**backbone, "weights": "none"},
        ],
        "classifiers": {"names": ["logreg", "linear_svm"], "cv": 5, "seed": SEED},
        "output": {"dir": str(output_dir)},
    }
    return config_from_dict(raw, output_dir, source="embedded default (digits half A -> half B, 5 labels per class)")


def run_default(
    output_dir: str | os.PathLike,
    *,
    store: str | os.PathLike,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
) -> RunResult:
    """Run the default experiment (see the module docstring) into `output_dir`.

    `log` defaults to the logger "layerprobe.run" at INFO, as `run_experiment`'s.
    """
    log = log or logging.getLogger("layerprobe.run").info
    output_dir = Path(output_dir).resolve()
    write_target_images(output_dir / "data" / "digits-B")
    weights = train_source_weights(output_dir / "source", log=log, progress=progress)
    return run_experiment(default_config(output_dir, store, weights), log=log, progress=progress)

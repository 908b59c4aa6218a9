"""The experiment `layerprobe run` runs without a config: transfer between the halves of a digits set.

It needs no download (scikit-learn ships `load_digits`: 1,797 8x8 grey
digits) and takes a few minutes at most on two CPU cores:

1. **Source**: a `MobileNetV2(alpha=0.35)` is trained from scratch on the
   digits 0-4 (`pipeline.finetune.train_from_scratch`, 32x32 inputs). Its
   BatchNormalization momentum is lowered from the applications' 0.999 to 0.9:
   after a short training the slow moving averages are still near their
   initial values and the network scores at chance in inference mode. Its
   accuracy with `training=False` on held-out source digits is checked and
   logged before its features are used. The headless weights are saved as
   `OUT/source/<settings digest>.weights.h5` and reused by later runs.
2. **Target**: the digits 5-9, written once as PNG files under `OUT/data/`,
   with `TRAIN_PER_CLASS` training images per class (a small dataset) and
   the rest as the test split.
3. The normal pipeline compares the same architecture with the source
   weights and with random weights, on every stage output, with logreg and
   a linear SVM: which layers transfer, and do they beat random features?
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from features.inputs import ImageDataset, from_arrays
from pipeline.config import ExperimentConfig, config_from_dict
from pipeline.persistence import _write_atomically
from pipeline.run import RunResult, run_experiment

__all__ = ["default_config", "run_default", "train_source_weights", "write_target_images"]

MODEL = "MobileNetV2"
MODEL_KWARGS = {"alpha": 0.35}
INPUT_SIZE = 32
SOURCE_DIGITS = (0, 1, 2, 3, 4)
TARGET_DIGITS = (5, 6, 7, 8, 9)
TRAIN_PER_CLASS = 25
BATCHNORM_MOMENTUM = 0.9
SOURCE_EPOCHS = 15
SOURCE_HOLDOUT = 0.2
MIN_SOURCE_ACCURACY = 0.8
SEED = 0


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 8x8 images in 0-255, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.rint(digits.images * (255 / 16)).astype(np.uint8), digits.target


def _source_dataset() -> ImageDataset:
    """Digits 0-4, split into "train" and a held-out "test" for the accuracy check."""
    from sklearn.model_selection import train_test_split

    images, labels = _digits()
    keep = np.isin(labels, SOURCE_DIGITS)
    images, labels = images[keep], labels[keep]
    _, held_out = train_test_split(
        np.arange(len(labels)), test_size=SOURCE_HOLDOUT, stratify=labels, random_state=SEED
    )
    splits = np.full(len(labels), "train", dtype=object)
    splits[held_out] = "test"
    return from_arrays(images, labels, class_names=[str(d) for d in SOURCE_DIGITS], split=list(splits))


def write_target_images(root: Path) -> Path:
    """Write digits 5-9 as PNG files under `root/{train,test}/<digit>/`, once.

    The folder is written under a temporary name and renamed into place, so a
    killed run leaves no half-written dataset; existing files are reused (their
    modification times are part of the dataset digest, hence of feature keys).
    """
    from PIL import Image
    from sklearn.model_selection import train_test_split

    if root.is_dir():
        return root
    images, labels = _digits()
    indices = np.flatnonzero(np.isin(labels, TARGET_DIGITS))
    train, _ = train_test_split(
        indices, train_size=TRAIN_PER_CLASS * len(TARGET_DIGITS), stratify=labels[indices], random_state=SEED
    )
    train = set(train.tolist())
    tmp = root.with_name(f".{root.name}.{uuid.uuid4().hex}.tmp")
    for index in indices:
        folder = tmp / ("train" if index in train else "test") / str(labels[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(folder / f"{index:04d}.png")
    try:
        os.rename(tmp, root)
    except OSError:  # another run wrote it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        if not root.is_dir():
            raise
    return root


def train_source_weights(directory: Path, *, log: Callable[[str], None] = print) -> Path:
    """Train the source network on digits 0-4 (or reuse it) and return its headless weights file.

    Raises:
        RuntimeError: If its held-out accuracy in inference mode is below
            `MIN_SOURCE_ACCURACY` (its features would be meaningless).
    """
    import keras

    from pipeline.finetune import FinetuneConfig, evaluate_model, train_from_scratch

    source = _source_dataset()
    options = FinetuneConfig(
        head_epochs=SOURCE_EPOCHS, finetune_epochs=0, augmentation=None, dropout=0.0,
        val_fraction=0.0, early_stopping_patience=None, seed=SEED,
        scratch_batchnorm_momentum=BATCHNORM_MOMENTUM,
    )
    settings = {
        "model": MODEL, "model_kwargs": MODEL_KWARGS, "input_size": INPUT_SIZE,
        "options": options.to_dict(), "data": source.digest(),
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    weights_path = directory / f"digits0-4-{digest}.weights.h5"
    facts_path = weights_path.with_name(f"digits0-4-{digest}.json")
    if weights_path.is_file() and facts_path.is_file():
        facts = json.loads(facts_path.read_text(encoding="utf-8"))
        log(f"source network: reused {weights_path.name} (held-out accuracy {facts['accuracy']:.3f}, training=False)")
        return weights_path
    log(f"source network: training {MODEL}{MODEL_KWARGS} from scratch on digits 0-4 ({SOURCE_EPOCHS} epochs)")
    result = train_from_scratch(
        MODEL, source.subset("train"), output_dir=directory / f"run-{digest}",
        input_size=INPUT_SIZE, model_kwargs=MODEL_KWARGS, config=options, resume=True,
    )
    scores = evaluate_model(result, source.subset("test"))
    log(
        f"source network: held-out accuracy {scores['accuracy']:.3f} on {scores['n_test']} digits 0-4 "
        f"(inference mode, training=False) after {result.fit_seconds:.0f} s"
    )
    if scores["accuracy"] < MIN_SOURCE_ACCURACY:
        raise RuntimeError(
            f"The source network scores {scores['accuracy']:.3f} on held-out digits in inference mode, below "
            f"{MIN_SOURCE_ACCURACY}; its features would not mean anything. Its BatchNormalization statistics "
            f"or training did not converge; see {result.history_path}."
        )
    backbone = next(layer for layer in result.model.layers if isinstance(layer, keras.Model))
    tmp = weights_path.with_name(f".{uuid.uuid4().hex}.weights.h5")  # Keras wants the suffix
    try:
        backbone.save_weights(tmp)
        os.replace(tmp, weights_path)
    finally:
        tmp.unlink(missing_ok=True)
    facts = json.dumps({"accuracy": scores["accuracy"], "n_test": scores["n_test"], "settings": settings}, indent=2)
    _write_atomically(facts_path, lambda path: path.write_text(facts, encoding="utf-8"))
    return weights_path


def default_config(
    output_dir: str | os.PathLike, store: str | os.PathLike, source_weights: str | os.PathLike
) -> ExperimentConfig:
    """The default experiment's config: source weights versus random weights on the target digits."""
    output_dir = Path(output_dir).resolve()
    backbone = {"model": MODEL, "layers": ["stages"], "model_kwargs": MODEL_KWARGS}
    raw: dict[str, Any] = {
        "data": {"path": str(output_dir / "data" / "digits-5-9"), "train_split": "train", "test_split": "test"},
        "features": {"store": str(Path(store).resolve()), "input_size": INPUT_SIZE, "pooling": "avg", "batch_size": 64},
        "backbones": [
            {**backbone, "weights": str(Path(source_weights).resolve())},
            {**backbone, "weights": "none"},
        ],
        "classifiers": {"names": ["logreg", "linear_svm"], "cv": 5, "seed": SEED},
        "output": {"dir": str(output_dir)},
    }
    return config_from_dict(raw, output_dir, source="embedded default (digits 0-4 -> digits 5-9)")


def run_default(
    output_dir: str | os.PathLike,
    *,
    store: str | os.PathLike,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> RunResult:
    """Run the default experiment (see the module docstring) into `output_dir`."""
    output_dir = Path(output_dir).resolve()
    write_target_images(output_dir / "data" / "digits-5-9")
    weights = train_source_weights(output_dir / "source", log=log)
    return run_experiment(default_config(output_dir, store, weights), log=log, progress=progress)

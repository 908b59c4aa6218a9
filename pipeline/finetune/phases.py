"""The training loop: `finetune` (head, then top blocks) and `train_from_scratch`.

A run is a plan of phases, each a `fit` with its own trainable layers and
learning rate: finetuning trains the head on the frozen backbone, then unfreezes
the top blocks; training from scratch trains everything in one phase. Every
epoch is checkpointed (`checkpoints.py`), so `resume=True` skips finished
phases and continues the interrupted one at its next epoch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from ...features.backbone import load_backbone
from ...core.errors import InputError
from ...features.extract import dtype_policy
from ...features.inputs import ImageDataset
from ...features.registry import BackboneSpec
from ...features.seeding import keras_seed
from .batches import ImageBatches, validation_split
from .checkpoints import (
    Checkpoint,
    backbone_metadata,
    read_state,
    save_checkpoint,
    save_model,
    truncate_history,
)
from .classifier_model import (
    build_classifier_model,
    feature_map_backbone,
    fit_head_inputs,
    set_head,
)
from .optimizer import BlockwiseAdam
from .epoch_logs import PhaseLogs
from .freezing import (
    backbone_model,
    block_lr_scales,
    set_batchnorm_momentum,
    unfreeze_top,
)
from .result import FinetuneResult
from .settings import FinetuneConfig

__all__ = ["finetune", "train_from_scratch"]


@dataclass(frozen=True)
class _Phase:
    name: str
    epochs: int
    learning_rate: float
    set_trainable: Callable[[Any], Any]
    block_lr_decay: float = 1.0


def _plan(mode: str, config: FinetuneConfig, spec: BackboneSpec) -> list[_Phase]:
    if mode == "scratch":
        return [_Phase("scratch", config.head_epochs + config.finetune_epochs,
                       config.head_learning_rate, lambda m: setattr(m, "trainable", True))]
    return [
        _Phase("head", config.head_epochs, config.head_learning_rate,
               lambda m: setattr(backbone_model(m), "trainable", False)),
        _Phase("finetune", config.finetune_epochs, config.learning_rate,
               lambda m: unfreeze_top(m, spec, config.unfreeze_blocks), config.block_lr_decay),
    ]


def _start_over(checkpoints: Path, history_path: Path) -> None:
    shutil.rmtree(checkpoints, ignore_errors=True)
    history_path.unlink(missing_ok=True)


def _run_phases(
    mode: str,
    model: str | BackboneSpec,
    train_data: ImageDataset,
    *,
    weights: str | os.PathLike | None,
    input_size: int | None,
    model_kwargs: Mapping[str, Any] | None,
    preprocessing: str | None,
    config: FinetuneConfig,
    output_dir: str | os.PathLike,
    resume: bool | str,
    init_head_from: tuple[Any, Any] | None,
    callbacks: Sequence[keras.callbacks.Callback],
    verbose: int | str,
) -> FinetuneResult:
    n_classes = len(train_data.class_names)
    if not (n_classes >= 2 and len(train_data) > 0):
        raise InputError(
            "`train_data` must be a non-empty dataset with at least 2 classes. Received: "
            f"train_data={len(train_data)} samples, class_names={train_data.class_names}"
        )
    if init_head_from is not None and config.head_init == "logreg":
        raise InputError(
            "Pass either init_head_from (a logistic regression of your own) or a config with "
            "head_init='logreg' (one fitted here), not both. Received: both"
        )
    if resume not in (True, False, "auto"):
        raise InputError(f"resume must be True, False or 'auto'. Received: resume={resume!r}")
    output_dir = Path(output_dir)
    checkpoints, history_path = output_dir / "checkpoints", output_dir / "history.csv"
    if not resume:
        _start_over(checkpoints, history_path)
    checkpoints.mkdir(parents=True, exist_ok=True)
    train_idx, val_idx = validation_split(train_data.labels, config.val_fraction, config.seed)
    started = time.perf_counter()
    policy = dtype_policy("mixed_float16") if config.mixed_precision else contextlib.nullcontext()
    with keras_seed(config.seed), policy:
        backbone = feature_map_backbone(load_backbone(model, weights=weights, input_size=input_size,
                                                      model_kwargs=model_kwargs, preprocessing=preprocessing,
                                                      seed=config.seed))
        if mode == "scratch" and config.scratch_batchnorm_momentum is not None:
            set_batchnorm_momentum(backbone.model, config.scratch_batchnorm_momentum)
        classifier = build_classifier_model(
            backbone, n_classes, hidden_units=config.hidden_units, dropout=config.dropout,
            l2=config.l2, augmentation=config.augmentation, init_head_from=init_head_from,
            freeze_batchnorm=mode == "finetune", seed=config.seed,
        )
        run = {
            **config.to_dict(), "mode": mode, "backbone": backbone.architecture,
            "weights_digest": backbone.weights_digest, "input_size": backbone.input_size,
            "train_data": train_data.digest(),
            **({"preprocessing": preprocessing} if preprocessing is not None else {}),
        }
        state = read_state(checkpoints, run, strict=resume is True) if resume else None
        if state is None and resume == "auto":  # no checkpoint of this training: start over
            _start_over(checkpoints, history_path)
            checkpoints.mkdir(parents=True, exist_ok=True)
        if state is not None:
            classifier.load_weights(checkpoints / state["weights_file"])
            truncate_history(history_path, state["epoch"])
        earlier_seconds = state.get("seconds", 0.0) if state else 0.0

        def clock() -> float:
            return earlier_seconds + time.perf_counter() - started
        phases = _plan(mode, config, backbone.spec)
        names = [phase.name for phase in phases]
        train = ImageBatches(train_data.select(train_idx), backbone.input_size,
                             config.batch_size, shuffle=True, seed=config.seed,
                             workers=config.workers)
        val = ImageBatches(train_data.select(val_idx), backbone.input_size,
                           config.batch_size, workers=config.workers) if len(val_idx) else None
        # Scratch training keeps the identity: its features move with training, and
        # BatchNormalization in training mode gives them other statistics than inference.
        if state is None and mode == "finetune":  # a resumed run has these in its checkpoint
            in_order = ImageBatches(train.dataset, backbone.input_size, config.batch_size,
                                    workers=config.workers)
            fits_logreg = init_head_from is None and config.resolved_head_init == "logreg"
            logreg = fit_head_inputs(classifier, in_order, logreg_seed=config.seed if fits_logreg else None)
            if init_head_from is not None or logreg is not None:
                set_head(classifier, init_head_from or logreg)
        epoch = state["epoch"] if state else 0
        for phase in phases:
            earlier = state is not None and names.index(state["phase"]) > names.index(phase.name)
            if phase.epochs == 0 or earlier:
                continue
            resumed = state is not None and state["phase"] == phase.name
            phase_start = state["phase_start"] if resumed else epoch
            end = phase_start + phase.epochs
            phase.set_trainable(classifier)
            scales = block_lr_scales(classifier, backbone.spec, phase.block_lr_decay)
            classifier.compile(
                optimizer=BlockwiseAdam(phase.learning_rate, lr_scales=scales),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            if epoch >= end or (resumed and state["stopped_early"]):
                continue  # nothing left to train in this phase
            early_stopping = None if config.early_stopping_patience is None else (
                keras.callbacks.EarlyStopping(
                    monitor="val_loss" if val is not None else "loss",
                    patience=config.early_stopping_patience,
                    restore_best_weights=True,
                )
            )
            state_base = {"run": run, "phase": phase.name, "phase_start": phase_start,
                          "stopped_early": False, "phase_ended": False}
            train.set_epoch(epoch)
            history = classifier.fit(
                train,
                validation_data=val,
                epochs=end,
                initial_epoch=epoch,
                shuffle=False,  # ImageBatches shuffles, reproducibly
                verbose=verbose,
                callbacks=[
                    PhaseLogs(phase.name),
                    *([early_stopping] if early_stopping is not None else []),
                    Checkpoint(checkpoints, state_base, clock),
                    keras.callbacks.CSVLogger(history_path, append=True),
                    *callbacks,
                ],
            )
            epoch += len(history.epoch)
            save_checkpoint(classifier, checkpoints, {
                **state_base, "epoch": epoch, "phase_ended": True, "seconds": clock(),
                "stopped_early": early_stopping is not None and early_stopping.stopped_epoch > 0,
            })
        unfrozen = tuple(
            layer.name for layer in backbone_model(classifier).layers
            if layer.trainable and layer.trainable_weights
        )
        model_path = output_dir / "model.keras"
        save_model(classifier, model_path,
                   metadata=backbone_metadata(backbone, mode=mode, class_names=train_data.class_names))
    return FinetuneResult(
        mode=mode,
        backbone=backbone.architecture,
        weights=backbone.weights,
        model=classifier,
        config=config,
        unfrozen_layers=unfrozen,
        epochs_run=epoch,
        fit_seconds=clock(),
        model_path=model_path,
        history_path=history_path,
        skipped={**train.skipped, **(val.skipped if val is not None else {})},
    )


def finetune(
    model: str | BackboneSpec,
    train_data: ImageDataset,
    *,
    output_dir: str | os.PathLike,
    weights: str | os.PathLike | None = "imagenet",
    input_size: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    preprocessing: str | None = None,
    config: FinetuneConfig | None = None,
    init_head_from: tuple[Any, Any] | None = None,
    resume: bool | str = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = 0,
) -> FinetuneResult:
    """Trains a head on a frozen backbone, then finetunes the backbone's top blocks.

    First one pass over the training images sets the head's feature
    standardization and (`head_init` "auto" or "logreg", the default) starts the
    softmax from a logistic regression on them: linear probing, then finetuning
    (LP-FT, Kumar et al. 2022), so finetuning starts from the frozen probe's
    accuracy instead of a random head's. Phase 1 trains
    the head (`head_epochs`, Adam at `head_learning_rate`); phase 2 unfreezes
    `unfreeze_blocks` top blocks (`unfreeze_top`) and continues at `learning_rate`
    (lower for lower blocks with `block_lr_decay`). Each phase stops early on the
    validation loss and restores its best weights. A stratified `val_fraction` of
    `train_data` is held out.

    Args:
        model: Backbone name from the registry (e.g. `"MobileNetV2"`), a spec, a
            model file (`"path/model.keras"`, weights `"saved"`: its own; a
            whole classifier is cut at its last feature map, and its blocks end
            at the stages its graph defines, as on the features side) or a
            keras-hub model (see `load_backbone`).
        train_data: Training samples (all of them are used; pass `ds.subset("train")`).
        output_dir: Receives `history.csv`, `checkpoints/` and `model.keras`.
        weights: Initial backbone weights, as for `load_backbone`.
        input_size: Image side; defaults to the family's.
        model_kwargs: Extra constructor arguments, e.g. `{"alpha": 0.35}`.
        preprocessing: For a model file or keras-hub model, as for `load_backbone`
            (None: from its metadata or graph).
        config: Hyperparameters; `FinetuneConfig()` by default.
        init_head_from: `(coef, intercept)` to start the softmax from (see
            `build_classifier_model`), instead of the one `config.head_init`
            ("auto", "logreg") would fit; an explicit "logreg" with it is an error.
        resume: True continues from the checkpoint in `output_dir` if there is one
            (finished phases are skipped, the interrupted one goes on at its next
            epoch), and a checkpoint of other settings is an error; "auto" continues
            from a checkpoint of these settings and starts over otherwise (what
            `layerprobe run` does); False starts over and deletes it. Optimizer
            moments and early-stopping counters restart on resume.
        callbacks: Extra Keras callbacks, passed to every phase's `fit`.
        verbose: Keras `fit` verbosity.

    Returns:
        A `FinetuneResult`; score it with `evaluate_model`.

    Raises:
        InputError: (a `ValueError`) For bad data, an unusable validation split
            or an `init_head_from` that does not fit.
        BackboneError: (a `ValueError`) For unknown blocks.
        ConfigError: (a `ValueError`) For a checkpoint written by a different run.
        WeightsUnavailableError: If the backbone weights cannot be loaded.

    Example:
        >>> result = finetune("MobileNetV2", ds.subset("train"), output_dir="runs/ft",
        ...                   config=FinetuneConfig(unfreeze_blocks=2))
        >>> scores = evaluate_model(result, ds.subset("test"))  # scores.accuracy, scores.n_test
    """
    return _run_phases(
        "finetune", model, train_data, weights=weights, input_size=input_size,
        model_kwargs=model_kwargs, preprocessing=preprocessing, config=config or FinetuneConfig(), output_dir=output_dir,
        resume=resume, init_head_from=init_head_from, callbacks=callbacks, verbose=verbose,
    )


def train_from_scratch(
    model: str | BackboneSpec,
    train_data: ImageDataset,
    *,
    output_dir: str | os.PathLike,
    input_size: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    preprocessing: str | None = None,
    config: FinetuneConfig | None = None,
    resume: bool | str = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = 0,
) -> FinetuneResult:
    """Trains the same classifier from random weights: the no-transfer baseline.

    One phase trains every layer, BatchNormalization included (in training mode,
    as training from scratch needs), for `head_epochs + finetune_epochs` epochs
    at `head_learning_rate`, the rate for randomly initialised weights. The
    split, checkpoints, history and outputs are those of `finetune`.

    Args:
        See `finetune`; the backbone starts from `weights=None`.

    Returns:
        A `FinetuneResult` with `mode="scratch"`.
    """
    return _run_phases(
        "scratch", model, train_data, weights=None, input_size=input_size,
        model_kwargs=model_kwargs, preprocessing=preprocessing, config=config or FinetuneConfig(), output_dir=output_dir,
        resume=resume, init_head_from=None, callbacks=callbacks, verbose=verbose,
    )

"""The `[finetune]` stage of a run: finetune and scratch rows, trained end to end or reused.

Each row carries `val_accuracy` on `n_val` images, the trained network scored on
the validation part of the training split that training held out
(`val_fraction`): the training-split evidence on which the advice compares it
with frozen rows (their CV). Its test accuracy is reported, never compared.

"finetune" runs once per backbone that has weights (a model file's own ones
included: it is cut at its last feature map, its blocks the stages its graph
defines); "scratch" once per architecture. A finished training's row is recorded beside it (`row.json`) and
reused when its settings match, like every row (`records.fit_or_reuse`). An
unfinished (killed) training resumes from its checkpoint if its settings match
(`settings.json`, written when it starts), and starts over if not. One process
at a time owns a training's folder (a lock beside it, `.<folder>.lock`): another
run of the same config waits for it, then reuses its row.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ...features.backend import import_keras_quietly
from ...core.atomic import write_text_atomically
from ...core.errors import OutputError
from ...core.files import RECORD_MAX_BYTES, read_bounded_text
from ...core.lock_files import hold_lock_file
from ...features.inputs import ImageDataset
from ...features.keys import safe_name
from ...features.model_files import is_model_file
from ..config import BackboneConfig, ExperimentConfig
from .records import RowRecord, RunRows, fit_or_reuse, jsonable

__all__ = ["end_to_end_rows"]


def _slug(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _run_folder(parent: Path, mode: str, model: str, digest: str) -> Path:
    """`parent/<mode>-<model's name>-<digest[:8]>`: a model file by its name without folder or suffix,
    e.g. `finetune-efficientnet_lite0_imagenet-5b4cbb3f`. The folder an older layerprobe named
    (`<mode>-<model as written>-<digest>`) is kept where it exists, so its training is reused."""
    earlier = parent / safe_name(f"{mode}-{model}-{digest}")
    name = Path(model).stem if is_model_file(model) else model
    return earlier if earlier.is_dir() else parent / safe_name(f"{mode}-{name}-{digest[:8]}")


def _jobs(config: ExperimentConfig) -> dict[str, tuple[str, BackboneConfig]]:
    """Folder digest -> (mode, backbone) of every end-to-end training the stage asks for."""
    jobs: dict[str, tuple[str, BackboneConfig]] = {}
    for backbone in config.backbones:
        architecture = {"model": backbone.model, "model_kwargs": dict(backbone.model_kwargs)}
        if "finetune" in config.finetune.modes and backbone.weights is not None:
            jobs.setdefault(_slug("finetune", architecture, backbone.weights), ("finetune", backbone))
        if "scratch" in config.finetune.modes:
            jobs.setdefault(_slug("scratch", architecture), ("scratch", backbone))
    return jobs


def end_to_end_rows(
    config: ExperimentConfig, dataset: ImageDataset, split: dict, rows: RunRows, *, progress: bool = False
) -> None:
    """Train (or reuse) every end-to-end row of the config's `[finetune]` stage, scored once on the test split.

    Each epoch logs a line; `progress` adds a bar over its batches.
    """
    import_keras_quietly()
    from ..finetune import (
        EpochLogger,
        FinetuneConfig,
        evaluate_model,
        finetune,
        train_from_scratch,
    )
    from ..finetune.batches import validation_split
    from ..finetune.checkpoints import MODEL_FORMAT

    options = FinetuneConfig.from_dict(config.finetune.options)
    train, test = dataset.subset(split["train_split"]), dataset.subset(split["test_split"])
    log = rows.log
    _, val_idx = validation_split(train.labels, options.val_fraction, options.seed)  # the part training held out
    for digest, (mode, backbone) in _jobs(config).items():
        run_dir = _run_folder(config.output.dir / "finetune", mode, backbone.model, digest)
        record = RowRecord(run_dir / "row.json", jsonable(
            {
                "mode": mode,
                "model": backbone.model,
                "model_kwargs": dict(backbone.model_kwargs),
                "weights": backbone.weights if mode == "finetune" else None,
                "input_size": config.features.input_size,
                **({"preprocessing": backbone.preprocessing} if backbone.preprocessing is not None else {}),
                "options": options.to_dict(),
                "model_format": MODEL_FORMAT,  # a model saved in an older format is trained again
                "dataset": dataset.digest(),
                "split": split,
            }
        ))

        def train_row() -> tuple[dict, Any]:
            started = run_dir / "settings.json"
            resume = started.is_file() and json.loads(read_bounded_text(started, "training settings",
                                                                        RECORD_MAX_BYTES)) == record.settings
            log(f"  {'resuming' if resume else 'training'} {mode} {backbone.model} ({run_dir})")
            write_text_atomically(started, json.dumps(record.settings, indent=2))
            common = dict(
                output_dir=run_dir, input_size=config.features.input_size,
                model_kwargs=dict(backbone.model_kwargs), preprocessing=backbone.preprocessing, config=options,
                resume=resume,
                callbacks=[EpochLogger(lambda line: log(f"    {line}"), progress=progress)],
            )
            if mode == "finetune":
                result = finetune(backbone.model, train, weights=backbone.weights, **common)
            else:
                result = train_from_scratch(backbone.model, train, **common)
            scores = evaluate_model(result, test)
            val = evaluate_model(result, train.select(val_idx)) if len(val_idx) else {"accuracy": None, "n_test": 0}
            row = {
                "mode": mode,
                "backbone": result.backbone,
                "weights": backbone.weights_label if mode == "finetune" else "none",
                "layer": "(end to end)",
                "pooling": "avg",
                "classifier": "softmax head",
                "n_train": len(train),
                "n_test": scores["n_test"],
                "val_accuracy": val["accuracy"],
                "n_val": val["n_test"],
                "test_accuracy": scores["accuracy"],
                "test_balanced_accuracy": scores["balanced_accuracy"],
                "test_macro_f1": scores["macro_f1"],
                "fit_seconds": round(result.fit_seconds, 3),
                "best_params": json.dumps({name: scores[name] for name in (
                    "head_init", "unfreeze_blocks", "learning_rate", "block_lr_decay", "epochs")}),
            }
            return row, result.model_path

        # One process at a time owns a training's folder: another run of the config waits, then reuses its row.
        with hold_lock_file(
            run_dir.with_name(f".{run_dir.name}.lock"), doing=f"training {mode} {backbone.model} in {run_dir}",
            error=OutputError, on_wait=lambda: log(f"  waiting  for another process training {mode} {backbone.model}"),
        ):
            row, fitted = fit_or_reuse(record, train_row)
        rows.add(row, fitted=fitted, what=f"{mode} {row['backbone']} ({run_dir})")

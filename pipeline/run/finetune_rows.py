"""The `[finetune]` stage of a run: finetune and scratch rows, trained end to end or reused.

Each row carries `val_accuracy` on `n_val` images, the trained network scored on
the validation part of the training split that training held out
(`val_fraction`): the training-split evidence on which the advice compares it
with frozen rows (their CV). Its test accuracy is reported, never compared.

"finetune" runs once per backbone that has weights (a model file's own ones
included: it is cut at its last feature map, its blocks the stages its graph
defines); "scratch" once per architecture. A training's spec (`FinetuneSpec`)
holds what it depends on, the files too: a weights file or model file by the
sha256 of its bytes, as the feature store identifies weights, so a file
replaced at the same path is a new training in a new folder. A finished
training's row is recorded beside it (`row.json`) and reused when its settings
match, like every row (`records.fit_or_reuse`). An unfinished (killed) training
resumes from its checkpoint when the checkpoint was written with the same
settings (`layerprobe.pipeline.finetune.checkpoints.read_state`, the one resume
check), and starts over if not. One process at a time owns a training's folder
(a lock beside it, `.<folder>.lock`): another run of the same config waits for
it, then reuses its row.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

from ...core.digests import file_digest
from ...core.errors import OutputError
from ...core.lock_files import hold_lock_file
from ...features.backend import import_keras_quietly
from ...features.inputs import ImageDataset
from ...features.keys import safe_name
from ...features.model_files import is_model_file, metadata_path
from ..config import ExperimentConfig
from ..finetune.settings import FinetuneConfig
from ..results import Row
from .paired import val_predictions_path
from .records import RowRecord, RowSpec, jsonable

__all__ = ["FinetuneSpec", "finetune_specs", "source_files_digests"]


def source_files_digests(model: str, weights: str | None) -> dict[str, str]:
    """The sha256 of every file a training starts from: a weights file, a model file and its metadata.

    The keys name them ("weights_digest", "model_digest", "model_metadata_digest"); a
    backbone from the registry with ImageNet or random weights reads no file and gets none.
    """
    digests = {}
    if weights is not None and os.path.isfile(weights):
        digests["weights_digest"] = file_digest(weights)
    if os.path.isfile(model):
        digests["model_digest"] = file_digest(model)
        if metadata_path(model).is_file():
            digests["model_metadata_digest"] = file_digest(metadata_path(model))
    return digests


def _run_folder(parent: Path, mode: str, model: str, digest: str) -> Path:
    """`parent/<mode>-<model's name>-<digest[:8]>`: a model file by its name without folder or suffix,
    e.g. `finetune-efficientnet_lite0_imagenet-5b4cbb3f`. The folder an older layerprobe named
    (`<mode>-<model as written>-<digest>`) is kept where it exists, so its training is reused."""
    earlier = parent / safe_name(f"{mode}-{model}-{digest}")
    name = Path(model).stem if is_model_file(model) else model
    return earlier if earlier.is_dir() else parent / safe_name(f"{mode}-{name}-{digest[:8]}")


@dataclass(frozen=True, eq=False)
class FinetuneSpec(RowSpec):
    """One end-to-end training of the `[finetune]` stage: what it depends on (the key), and its data and folder.

    Attributes:
        mode: "finetune" or "scratch".
        model: The backbone (a registry name, a model file, a keras-hub model).
        model_kwargs: Its constructor arguments, (name, value) pairs.
        weights: The starting weights ("finetune"; None for "scratch").
        files: The sha256 of the files it starts from (`source_files_digests`), (name, digest) pairs.
        input_size: The image side (None: the family's).
        preprocessing: A model file's preprocessing, or None.
        training: The training's hyperparameters.
        model_format: The format of the model it saves (`finetune.checkpoints.MODEL_FORMAT`): a model
            saved in an older format is trained again.
        dataset_digest: The run's digest of the images.
        split: The split definition, (name, value) pairs.
        weights_label: The weights' short name, for the row (not part of the key).
        output_dir: The run's output folder (not part of the key).
        dataset: The images (not part of the key: `dataset_digest` identifies them).
        log: Where the training's lines go.
        progress: Show a bar over each epoch's batches.
    """

    mode: str
    model: str
    model_kwargs: tuple[tuple[str, Any], ...]
    weights: str | None
    files: tuple[tuple[str, str], ...]
    input_size: int | None
    preprocessing: str | None
    training: FinetuneConfig
    model_format: int
    dataset_digest: str
    split: tuple[tuple[str, Any], ...]
    weights_label: str
    output_dir: Path
    dataset: ImageDataset
    log: Callable[[str], None]
    progress: bool = False
    row_kind: str = "final"

    def settings(self) -> dict:
        return jsonable({
            "mode": self.mode,
            "model": self.model,
            "model_kwargs": dict(self.model_kwargs),
            "weights": self.weights,
            **dict(self.files),
            "input_size": self.input_size,
            **({"preprocessing": self.preprocessing} if self.preprocessing is not None else {}),
            "options": self.training.to_dict(),
            "model_format": self.model_format,
            "dataset": self.dataset_digest,
            "split": dict(self.split),
        })

    @property
    def folder(self) -> Path:
        """`OUT/finetune/<mode>-<model's name>-<digest[:8]>` (`_run_folder`), the digest of the architecture
        and the files it starts from."""
        architecture = {"model": self.model, "model_kwargs": dict(self.model_kwargs)}
        # A file's content digests are added where there are some: folders of other trainings keep their names.
        starts = [self.weights, *([dict(self.files)] if self.files else [])] if self.mode == "finetune" else []
        digest = hashlib.sha256(json.dumps([self.mode, architecture, *starts], sort_keys=True, default=str)
                                .encode()).hexdigest()[:12]
        return _run_folder(self.output_dir / "finetune", self.mode, self.model, digest)

    def record(self) -> RowRecord:
        return RowRecord(self.folder / "row.json", self.settings())

    def claim(self, log: Callable[[str], None]) -> ContextManager:
        """One process at a time owns a training's folder: another run of the config waits, then reuses its row."""
        folder = self.folder
        return hold_lock_file(
            folder.with_name(f".{folder.name}.lock"), doing=f"training {self.mode} {self.model} in {folder}",
            error=OutputError, on_wait=lambda: log(f"  waiting  for another process training {self.mode} {self.model}"),
        )

    def fit(self, features: Any = None, *, rows_at_once: int = 1) -> tuple[Row, Path]:
        """Train (resuming a checkpoint of these settings), then score on the held-out part and the test split."""
        import_keras_quietly()
        from ..finetune import EpochLogger, evaluate_model, finetune, train_from_scratch
        from ..finetune.batches import validation_split

        split = dict(self.split)
        train, test = self.dataset.subset(split["train_split"]), self.dataset.subset(split["test_split"])
        _, val_idx = validation_split(train.labels, self.training.val_fraction, self.training.seed)
        folder = self.folder
        self.log(f"  training {self.mode} {self.model} ({folder})")
        common = dict(
            output_dir=folder, input_size=self.input_size, model_kwargs=dict(self.model_kwargs),
            preprocessing=self.preprocessing, config=self.training, resume="auto",
            callbacks=[EpochLogger(lambda line: self.log(f"    {line}"), progress=self.progress)],
        )
        if self.mode == "finetune":
            result = finetune(self.model, train, weights=self.weights, **common)
        else:
            result = train_from_scratch(self.model, train, **common)
        scores = evaluate_model(result, test)
        # Its predictions on the held-out part are what a paired comparison with the frozen choice reads.
        val = (evaluate_model(result, train.select(val_idx), predictions=val_predictions_path(result.model_path))
               if len(val_idx) else None)
        run = result.as_row()
        row = Row(
            mode=self.mode,
            backbone=result.backbone,
            weights=self.weights_label,
            layer="(end to end)",
            pooling="avg",
            classifier="softmax head",
            n_train=len(train),
            n_test=scores.n_test,
            val_accuracy=None if val is None else val.accuracy,
            n_val=0 if val is None else val.n_test,
            test_accuracy=scores.accuracy,
            test_balanced_accuracy=scores.balanced_accuracy,
            test_macro_f1=scores.macro_f1,
            fit_seconds=round(result.fit_seconds, 3),
            best_params=json.dumps({name: run[name] for name in (
                "head_init", "unfreeze_blocks", "learning_rate", "block_lr_decay", "epochs")}),
        )
        return row, result.model_path

    def save(self, fitted: tuple[Row, Path]) -> tuple[Row, Path]:
        return fitted  # the training saved its model in its folder

    def describe(self, row: Row) -> str:
        return f"{self.mode} {row.backbone} ({self.folder})"


def finetune_specs(
    config: ExperimentConfig, dataset: ImageDataset, split: Mapping, dataset_digest: str, log: Callable[[str], None],
    *, progress: bool = False,
) -> list[FinetuneSpec]:
    """Every end-to-end training the config's `[finetune]` stage asks for, once each, in the backbones' order.

    Each epoch logs a line; `progress` adds a bar over its batches.
    """
    import_keras_quietly()  # the finetune package's checkpoints import Keras
    from ..finetune.checkpoints import MODEL_FORMAT

    stage = config.finetune
    specs: dict[Path, FinetuneSpec] = {}
    for backbone in config.backbones:
        for mode in ("finetune", "scratch"):
            if mode not in stage.modes or (mode == "finetune" and backbone.weights is None):
                continue
            weights = backbone.weights if mode == "finetune" else None
            spec = FinetuneSpec(
                mode=mode,
                model=backbone.model,
                model_kwargs=tuple(dict(backbone.model_kwargs).items()),
                weights=weights,
                files=tuple(source_files_digests(backbone.model, weights).items()),
                input_size=config.features.input_size,
                preprocessing=backbone.preprocessing,
                training=stage.training,
                model_format=MODEL_FORMAT,
                dataset_digest=dataset_digest,
                split=tuple(split.items()),
                weights_label=backbone.weights_label if mode == "finetune" else "none",
                output_dir=config.output.dir,
                dataset=dataset,
                log=log,
                progress=progress,
            )
            specs.setdefault(spec.folder, spec)
    return list(specs.values())

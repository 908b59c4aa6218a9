"""What a finetuning run keeps on disk to resume, and the final model file.

`checkpoints/` holds the weights after every epoch under a new name, plus
`state.json` (phase, epoch, elapsed seconds, the run's settings) naming them.
The state is committed atomically after its weights are complete, and only then
are older weights deleted, so a killed run leaves its previous checkpoint
intact. `read_state` refuses a checkpoint written by a run with other settings.
Files are committed with `layerprobe.core.atomic`. Beside the final model,
`model.layerprobe.json` (`backbone_metadata`) tells `layerprobe.features.model_files`
which nested model is the backbone, its family, preprocessing and input size, so
the saved file can be probed as a backbone (`model = "…/model.keras"`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import pandas as pd

from ...features.backbone import Backbone
from ...core.atomic import atomic_path, write_atomically, write_text_atomically
from ...core.errors import ConfigError
from ...core.files import RECORD_MAX_BYTES, TABLE_MAX_BYTES, read_bounded_bytes, read_bounded_text
from ...core.versions import layerprobe_version
from ...features.model_files import metadata_path, write_model_metadata
from ...features.registry import BACKBONES

__all__ = ["MODEL_FORMAT", "Checkpoint", "backbone_metadata", "read_state", "save_checkpoint", "save_model", "truncate_history"]

# May differ when resuming: they change how long a run trains, not what it trains.
_RESUMABLE_FIELDS = ("head_epochs", "finetune_epochs", "early_stopping_patience", "workers")
MODEL_FORMAT = 2  # of the saved classifier; 2: Keras's own layers only, loads without layerprobe
_STATE_FILE = "state.json"
_STATE_VERSION = 3  # 2: the head standardizes its input; 3: with Keras layers only (a Normalization)


def save_checkpoint(model: keras.Model, directory: Path, state: dict[str, Any]) -> None:
    """Writes the weights under a new name, commits `state.json` pointing to them,
    then deletes older weights: a crash leaves the previous checkpoint intact."""
    suffix = "-end" if state["phase_ended"] else ""
    name = f"{state['phase']}-{state['epoch']:04d}{suffix}.weights.h5"
    model.save_weights(directory / name)  # a new name: nothing points to it before the state does
    text = json.dumps({**state, "weights_file": name, "version": _STATE_VERSION}, indent=2)
    write_text_atomically(directory / _STATE_FILE, text)
    for old in directory.glob("*.weights.h5"):
        if old.name != name:
            old.unlink()


class Checkpoint(keras.callbacks.Callback):
    """Saves a checkpoint after every epoch: `state` plus the epoch count and `clock()` seconds."""

    def __init__(self, directory: Path, state: dict[str, Any], clock: Callable[[], float]):
        super().__init__()
        self.directory = directory
        self.state = state
        self.clock = clock

    def on_epoch_end(self, epoch, logs=None):
        save_checkpoint(self.model, self.directory,
                        {**self.state, "epoch": epoch + 1, "seconds": self.clock()})


def read_state(directory: Path, run: dict[str, Any], *, strict: bool = True) -> dict[str, Any] | None:
    """The checkpoint state in `directory`, None if there is none.

    This is the one check of whether a training can resume: the state records the
    settings `run` of the training that wrote it, and may differ from them only in
    `_RESUMABLE_FIELDS` (how long it trains, not what).

    Args:
        directory: The `checkpoints/` folder.
        run: The settings of the training that would resume.
        strict: Raise for a checkpoint of other settings (an explicit resume);
            False returns None for it, or for a state that cannot be read (start over).

    Raises:
        ConfigError: (a `ValueError`) If `strict` and the checkpoint was written by a
            run whose settings differ in anything but `_RESUMABLE_FIELDS`.
    """
    path = directory / _STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(read_bounded_text(path, "checkpoint state", RECORD_MAX_BYTES))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        if strict:
            raise
        return None
    written = state.get("run", {}) if isinstance(state, dict) else {}
    mismatched = sorted(key for key in run if key not in _RESUMABLE_FIELDS and written.get(key) != run[key])
    if isinstance(state, dict) and state.get("version") == _STATE_VERSION and not mismatched:
        return state
    if not strict:
        return None
    raise ConfigError([
        f"The checkpoint in {directory} was written by a different run (differing: "
        f"{mismatched or ['state version']}). Resume with the same backbone, data and "
        f"settings, or start over: pass resume=False or delete {directory}. "
        f"Received: {({key: run[key] for key in mismatched})}"
    ], f"of the run resumed in {directory.parent}")


def truncate_history(path: Path, epoch: int) -> None:
    """Drops history rows of epochs a resumed run will train again."""
    if path.is_file() and path.stat().st_size:
        history = pd.read_csv(io.BytesIO(read_bounded_bytes(path, "training history", TABLE_MAX_BYTES)))
        kept = history[history["epoch"] < epoch]
        write_atomically(path, lambda tmp: kept.to_csv(tmp, index=False))


def backbone_metadata(backbone: Backbone, *, mode: str, class_names: Sequence[str]) -> dict[str, Any]:
    """What a classifier built on `backbone` records beside its saved file (see `save_model`).

    `preprocessing` is the family name (or the spec's mode) that
    `layerprobe.features.registry.resolve_preprocessing` maps back to the same
    function; `backbone_layer` names the nested backbone model in the classifier;
    `class_names` and `outputs` (the softmax's probabilities) are what
    `layerprobe predict` reads.
    """
    spec = backbone.spec
    return {
        "saved_by": f"layerprobe {mode}",
        "layerprobe_version": layerprobe_version(),
        "model_format": MODEL_FORMAT,
        "mode": mode,
        "class_names": [str(name) for name in class_names],
        "outputs": "probabilities",
        "family": spec.name,
        "backbone": backbone.architecture,
        "initial_weights": backbone.weights if backbone.weights is not None else "random init",
        "preprocessing": spec.preprocess_mode or (spec.name if BACKBONES.get(spec.name) is spec else None),
        "preprocess_module": spec.preprocess_module,
        "input_size": backbone.input_size,
        "backbone_layer": backbone.model.name,
        "backbone_output": backbone.model.layers[-1].name,
        "head_input": "avg_pool" if spec.tokens is None else "token_pool",
        **({} if spec.rescaling is None else {"rescaling": [list(part) for part in spec.rescaling]}),
    }


def save_model(model: keras.Model, path: Path, *, metadata: Mapping[str, Any] | None = None) -> None:
    """Saves `model`'s graph and weights as `path` (a `.keras` file), committed atomically, and `metadata` beside it.

    The optimizer and compile settings are left out (an uncompiled model of the
    same layers is saved): the file is for inference and loads with plain
    `keras.saving.load_model`, which would otherwise need layerprobe's `BlockwiseAdam`.
    Keras writes only to names ending in `.keras`, so the model is saved beside
    the temporary file under such a name and moved onto it; `atomic_path` then
    commits it (and removes both if saving fails). The metadata
    (`backbone_metadata`) goes to `model.layerprobe.json` after the model; an
    older one is removed first, so it never describes another model.
    """
    metadata_path(path).unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        keras_tmp = tmp.with_name(f"{tmp.name}.keras")
        try:
            keras.Model(model.inputs, model.outputs, name=model.name).save(keras_tmp)
            keras_tmp.replace(tmp)
        finally:
            keras_tmp.unlink(missing_ok=True)
    if metadata is not None:
        write_model_metadata(path, metadata)

"""The Keras files layerprobe writes as models: read one safely, copy one, say whether a copy is current.

Three writers, one kind of file: `layerprobe export` (a probe folded into one
model, `layerprobe.pipeline.export`), `layerprobe finetune` (the finetuned
classifier, `layerprobe.pipeline.finetune`) and every run's `recommended.keras`
(`layerprobe.pipeline.run.recommended`). Each is built from Keras's own layers and
operations, so `keras.saving.load_model` loads it without layerprobe, and has
`NAME.layerprobe.json` beside it with the class names and what the output
holds (`layerprobe.features.model_files.write_model_metadata`).

`read_saved_model` is the one reader (`layerprobe predict` and `export` use
it): a damaged or foreign file is one `InputError` naming it, never a
traceback, and it is loaded in Keras's safe mode, so a file that carries code
(a `Lambda` layer) is refused rather than run. The input size is the model's
own (its input shape); the metadata's counts only for a model with a flexible
input.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.atomic import atomic_path
from ..core.checks import is_positive_int
from ..core.digests import file_digest, strings_digest
from ..core.errors import InputError
from ..features.model_files import metadata_path, read_model_metadata, write_model_metadata

__all__ = ["SavedModel", "copy_saved_model", "files_digest", "read_saved_model"]

_OUTPUTS = ("probabilities", "scores")


@dataclass(frozen=True, eq=False)
class SavedModel:
    """A model file layerprobe wrote, loaded.

    Attributes:
        path: The `.keras` file.
        model: The Keras model: pixels 0-255 in, one score per class out.
        metadata: The `.layerprobe.json` beside it.
        class_names: One per output column.
        input_size: Side of the square images it takes.
        outputs: `"probabilities"` or `"scores"` (decision values; the argmax is the prediction).
    """

    path: Path
    model: Any
    metadata: Mapping[str, Any]
    class_names: tuple[str, ...]
    input_size: int
    outputs: str


def _unusable(path: Path, why: str, fix: str) -> InputError:
    return InputError(f"{path} cannot be used as a model: {why}. {fix} Received: {str(path)!r}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_saved_model(path: str | os.PathLike) -> SavedModel:
    """Load a `.keras` model that layerprobe wrote (exported, finetuned or recommended), with its metadata.

    Raises:
        FileNotFoundError: If there is no file at `path`.
        InputError: (a ``ValueError``) If the file is not a Keras archive
            (truncated, damaged), holds code Keras's safe mode refuses to run (a
            `Lambda` layer) or layers Keras does not know, has no layerprobe
            metadata with class names beside it, or its input or output does
            not fit them (one RGB image in, one score per class out).
        BackboneError: If the metadata beside it is unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}. Check the path. Received: {str(path)!r}")
    metadata = read_model_metadata(path)
    if metadata is None or not isinstance(metadata.get("class_names"), list) or not metadata["class_names"]:
        raise _unusable(
            path, f"it has no layerprobe metadata with class names beside it ({metadata_path(path).name})",
            "Predict with a model that `layerprobe export`, `finetune` or `run` wrote (a finetuned model of an older "
            "layerprobe: run the finetune stage again), or with a row's .skops classifier.",
        )
    if not zipfile.is_zipfile(path):
        raise _unusable(path, "it is not a Keras archive (a .keras file is a zip archive; this one is truncated or "
                              "damaged)", "Write it again (`layerprobe export`, or rerun the run or finetune stage).")
    from ..features.backend import import_keras_quietly

    keras = import_keras_quietly()
    try:
        # safe_mode: a file that carries Python code (a Lambda layer's bytecode) is refused, not run.
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, TypeError, KeyError or bare Exception for a bad file
        raise _unusable(
            path, f"Keras cannot load it in safe mode ({_first_line(error)})",
            "layerprobe loads models built from Keras's own layers only, and never runs code a file carries; "
            "write it again with layerprobe.",
        ) from error
    return _checked(path, model, metadata)


def _checked(path: Path, model: Any, metadata: Mapping[str, Any]) -> SavedModel:
    """The `SavedModel` of a loaded `model`, its input and output checked against the metadata."""
    class_names = tuple(str(name) for name in metadata["class_names"])
    inputs, outputs = list(getattr(model, "inputs", None) or []), list(getattr(model, "outputs", None) or [])
    shape = tuple(inputs[0].shape) if len(inputs) == 1 else ()
    if len(inputs) != 1 or len(shape) != 4 or shape[-1] != 3:
        raise _unusable(path, f"it takes {[tuple(t.shape) for t in inputs]}, not one batch of RGB images "
                              f"(batch, height, width, 3)", "Write it again with layerprobe.")
    if len(outputs) != 1 or tuple(outputs[0].shape)[1:] != (len(class_names),):
        raise _unusable(path, f"it outputs {[tuple(t.shape) for t in outputs]}, not one score for each of its "
                              f"{len(class_names)} class names", "Write it again with layerprobe.")
    height, width = shape[1], shape[2]
    if height is not None or width is not None:  # the model's own input wins over the metadata
        if height != width:
            raise _unusable(path, f"it takes {height}x{width} images; layerprobe feeds square ones",
                            "Write it again with layerprobe.")
        size = int(height)
    else:
        size = metadata.get("input_size")
        if not is_positive_int(size):
            raise _unusable(path, f"its input is flexible and its metadata's input_size is {size!r}, not a "
                                  f"positive integer", f"Correct input_size in {metadata_path(path).name}.")
    outputs_kind = metadata.get("outputs", "scores")
    return SavedModel(path, model, metadata, class_names, int(size), outputs_kind if outputs_kind in _OUTPUTS else "scores")


def files_digest(paths: Sequence[str | os.PathLike]) -> str:
    """One digest of the bytes of `paths` (in order): what a copy of them was made from."""
    return strings_digest([file_digest(path) for path in paths])


def copy_saved_model(saved: SavedModel, out: str | os.PathLike, metadata: Mapping[str, Any]) -> Path:
    """Copy the model file of `saved` to `out` (a `.keras` file), committed atomically, with `metadata` beside it.

    An older metadata file at `out` is removed first and the new one written after
    the model, so a killed copy leaves no metadata describing another model (and
    never a half-written model: `atomic_path`).
    """
    out = Path(out)
    metadata_path(out).unlink(missing_ok=True)
    with atomic_path(out) as tmp:
        shutil.copyfile(saved.path, tmp)
    write_model_metadata(out, metadata)
    return out

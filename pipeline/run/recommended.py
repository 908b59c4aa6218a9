"""A run's answer as one model file: `OUT/recommended.keras`, and the commands that use it.

The recommended row's model is written as one Keras model, pixels in and class
scores out, with `recommended.layerprobe.json` (class names, input size, what
the output holds) beside it: a frozen row's probe exported
(`layerprobe.pipeline.export.export_model`), a finetuned row's model copied.
It loads with plain `keras.saving.load_model`, without layerprobe.

The metadata records the files it was made from and their digest
(`export.source_digest`): a rerun whose recommendation and files did not
change leaves the file as it is. The model is committed atomically after its
old metadata is removed, so a killed run leaves either the previous pair, or a
model without metadata that the next run writes again, never a half-written
file. A recommendation that cannot be one Keras model (a kernel SVM) removes an
older `recommended.keras`, which would describe another row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ...core.errors import LayerprobeError
from ...core.versions import layerprobe_version
from ...features.model_files import metadata_path, read_model_metadata
from ..export import export_model, source_digest

__all__ = ["RECOMMENDED", "write_recommended"]

RECOMMENDED = "recommended.keras"


def _is_current(target: Path, source: Path) -> bool:
    """Whether `target` was made from `source` as it is now, by this layerprobe version."""
    if not target.is_file():
        return False
    try:
        metadata = read_model_metadata(target)
        return (metadata is not None and metadata.get("source") == str(source.resolve())
                and metadata.get("layerprobe_version") == layerprobe_version()
                and metadata.get("source_digest") == source_digest(source))
    except (LayerprobeError, OSError):  # unreadable metadata or source: write it again (or say why not)
        return False


def _row_label(row: Any) -> str:
    return " ".join(str(row.get(name)) for name in ("mode", "backbone", "layer", "classifier") if row.get(name))


def write_recommended(out: Path, row: Any, *, log: Callable[[str], None]) -> str:
    """Write the recommended `row`'s model as `out/recommended.keras`; returns the next steps (markdown).

    Args:
        out: The run's output folder.
        row: The recommended results row (`Advice.row`), or None when nothing was recommended.
        log: Called with one line saying what was written.

    Returns:
        The text that ends the run's log and summary: the command that predicts
        with the model, and the two lines of Keras that load it.
    """
    target = out / RECOMMENDED
    model_path = None if row is None else row.get("model_path")
    if not isinstance(model_path, str) or not model_path:
        _remove(target)
        return "No row was recommended, so no model was written."
    source = Path(model_path)
    if _is_current(target, source):
        log(f"recommended model: {target} (unchanged: {_row_label(row)})")
        return _next_steps(target)
    try:
        export_model(source, target, log=lambda line: None)
    except (LayerprobeError, FileNotFoundError) as error:  # e.g. a kernel SVM is not one Keras model
        _remove(target)
        log(f"note: the recommended row ({_row_label(row)}) was not written as one Keras model: {error}")
        return (f"The recommended row ({_row_label(row)}) cannot be one Keras model ({error}). Predict with its "
                f"classifier:\n\n    layerprobe predict {model_path} --data NEW_IMAGES")
    log(f"recommended model: {target} ({_row_label(row)})")
    return _next_steps(target)


def _remove(target: Path) -> None:
    metadata_path(target).unlink(missing_ok=True)
    target.unlink(missing_ok=True)


def _next_steps(target: Path) -> str:
    return (
        f"The recommended model is `{target}` (class names and input size in `{metadata_path(target).name}`): "
        f"pixels 0-255 in, one score per class out. Predict new images (a folder, a CSV or one image):\n\n"
        f"    layerprobe predict {target} --data NEW_IMAGES\n\n"
        f"or load it in Python, without layerprobe:\n\n"
        f"    import keras\n"
        f"    model = keras.saving.load_model(\"{target}\")"
    )

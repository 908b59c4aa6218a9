"""One memo for every kind of row: a row is computed, or reused by its settings (joblib.Memory's idea).

Every row of a run (a classifier on one layer, the multi-layer probe, a
`[finetune]` training) is saved as a record, ``{"settings": ..., "row": ...,
"model": ...}``, written last and atomically, after the row's model and
predictions. The settings hold everything that determines the row (store keys,
classifier, grid, folds, seed, split definition, ...). A later run that asks for
equal settings reuses the row without loading features or fitting, so a killed
run keeps its rows and a rerun fits nothing. `RunRows` adds each row to the
results table, logs it and counts it as fitted or reused, in one place.

Rows saved by an older layerprobe, whose classifier sidecar (format 1) held the
settings and the row, are reused the same way; their models stay pickles
(`layerprobe predict --trust`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np

from ...core.atomic import write_text_atomically
from ...core.errors import InputError
from ...core.files import RECORD_MAX_BYTES, read_bounded_text
from ..persistence import read_sidecar
from ..results import MODES, ResultsTable, Row

__all__ = ["RowRecord", "RowSpec", "RunRows", "fit_or_reuse", "jsonable", "recorded_rows"]


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def jsonable(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), so that saved and new settings compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=_plain))


@dataclass(frozen=True)
class RowRecord:
    """Where one row is saved, and the settings that determine it.

    Attributes:
        path: The record file (JSON).
        settings: Everything that determines the row, JSON-ready (`jsonable`).
        legacy_sidecar: The format-1 classifier sidecar that held this row's
            settings and row before records existed, if any.
    """

    path: Path
    settings: dict
    legacy_sidecar: Path | None = None

    def saved(self) -> Row | None:
        """The row saved under equal settings, with its `model_path`; None if there is none or its model is gone."""
        try:
            record = json.loads(read_bounded_text(self.path, "row record", RECORD_MAX_BYTES))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return self._legacy()
        if not isinstance(record, dict) or record.get("settings") != self.settings or "row" not in record:
            return self._legacy()
        if "model" not in record:  # a [finetune] row of an older layerprobe: its row holds model_path
            return Row.from_dict(record["row"])
        model_path = os.path.normpath(self.path.parent / record["model"])
        if not os.path.exists(model_path):  # the model was deleted: fit again
            return None
        return Row.from_dict({**record["row"], "model_path": model_path})

    def _legacy(self) -> Row | None:
        if self.legacy_sidecar is None:
            return None
        try:
            sidecar = read_sidecar(self.legacy_sidecar)
        except (FileNotFoundError, InputError):
            return None
        if sidecar.get("format_version") != 1 or sidecar.get("fit_settings") != self.settings or "row" not in sidecar:
            return None
        return Row.from_dict({**sidecar["row"], "model_path": str(self.legacy_sidecar.with_suffix(".joblib"))})

    def save(self, row: Row, model_path: str | os.PathLike) -> Row:
        """Write the record of a finished row (last, atomically); returns the row with its `model_path`.

        The record holds the row's cells but its `model_path` (the model is named relative to the
        record) and `row_kind` (the run's role for the row, not part of what was fitted).
        """
        model = os.path.relpath(model_path, self.path.parent)
        cells = {name: value for name, value in row.as_dict().items()
                 if value is not None and name not in ("model_path", "row_kind")}
        record = {"settings": self.settings, "row": cells, "model": model}
        write_text_atomically(self.path, json.dumps(record, indent=2, sort_keys=True, default=_plain) + "\n")
        return dataclasses.replace(row, model_path=str(model_path))


class RowSpec:
    """What one row's fit depends on, and nothing else: the task a run fits or reuses (`run.fitting.fit_rows`).

    A spec is a small frozen dataclass (a classifier row, a multi-layer row, a `[finetune]`
    training). `settings()` are exactly the settings its fit depends on, JSON-ready; their
    canonical JSON's sha256 is the spec's `digest`, its hash and its equality, and they key its record
    (`record()`). A dask worker receives the spec, never the run's config.

    Attributes:
        row_kind: The row's `row_kind` in the table ("screening" or "final"); not part of the key.
    """

    row_kind: str

    def settings(self) -> dict:
        """Everything that determines the row, JSON-ready (`jsonable`): the record's key."""
        raise NotImplementedError

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON of `settings()`."""
        canonical = json.dumps(self.settings(), sort_keys=True, separators=(",", ":"), default=_plain)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.digest))

    def record(self) -> RowRecord:
        """Where the row is saved, keyed by `settings()`."""
        raise NotImplementedError

    def layers_read(self) -> tuple[str, ...]:
        """The store entries whose features `fit` loads (the run loads each once for all its rows)."""
        return ()

    def store_read(self) -> str | None:
        """The feature store `fit` reads (a dask worker must see it), or None."""
        return None

    def fit(self, features: Any = None, *, rows_at_once: int = 1) -> Any:
        """Compute the row (where the executor runs it): a result for `save`, small enough to send back.

        Args:
            features: The run's `rows.LayerFeatures` (each layer's features loaded once); None
                loads them here (a dask worker).
            rows_at_once: Rows fitted side by side in this process, sharing its cores.
        """
        raise NotImplementedError

    def save(self, fitted: Any) -> tuple[Row, Path]:
        """Save what `fit` returned (in the run's process): the row (with its `row_kind`) and its model's path."""
        raise NotImplementedError

    def describe(self, row: Row) -> str:
        """How the log names the row, e.g. "block3_pool / logreg"."""
        raise NotImplementedError

    def claim(self, log: Callable[[str], None]) -> ContextManager:
        """Held while the row is fitted or reused: nothing, or a lock where one process at a time may fit it."""
        return contextlib.nullcontext()


def recorded_rows(output_dir: Path) -> list[dict]:
    """The rows of every readable row record in a run's output folder, with their `model_path`
    (`models/**/*.row.json`, `finetune/*/row.json`): what rebuilds a damaged `results.csv`."""
    paths = sorted([*output_dir.glob("models/**/*.row.json"), *output_dir.glob("finetune/*/row.json")])
    rows = []
    for path in paths:
        try:
            record = json.loads(read_bounded_text(path, "row record", RECORD_MAX_BYTES))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        row = record.get("row") if isinstance(record, dict) else None
        if not isinstance(row, dict) or row.get("mode") not in MODES:
            continue
        model = record.get("model")
        rows.append({**row, "model_path": os.path.normpath(path.parent / model)} if isinstance(model, str) else row)
    return rows


def fit_or_reuse(record: RowRecord, fit: Callable[[], tuple[Row, Path]]) -> tuple[Row, bool]:
    """The row saved under `record`'s settings, or `fit()`'s (which saves the model and returns the row and
    its path), recorded; returns ``(row, fitted)``.

    The old record goes first: the files of a fit killed half-way are never
    paired with the row of an earlier one.
    """
    saved = record.saved()
    if saved is not None:
        return saved, False
    record.path.unlink(missing_ok=True)
    row, model_path = fit()
    return record.save(row, model_path), True


class RunRows:
    """The rows of a run as they come: each added to the results table, logged, and counted as fitted or reused.

    Attributes:
        table: The results table.
        fitted: Rows fitted (or trained) by this run.
        reused: Rows reused from an earlier run.
        not_converged: (row, count) of the rows whose fits warned that they did not converge.
    """

    def __init__(self, table: ResultsTable, log: Callable[[str], None]):
        self.table = table
        self.log = log
        self.fitted = 0
        self.reused = 0
        self.not_converged: list[tuple[str, int]] = []

    def add(self, row: Row, *, fitted: bool, what: str) -> None:
        """Add `row` (about `what`, e.g. "block3_pool / logreg") and log its scores."""
        cv_score = row.cv_score
        scores = f"cv {cv_score:.3f}, " if isinstance(cv_score, float) and math.isfinite(cv_score) else ""
        self.log(f"  {'fitted' if fitted else 'reused'} {what}: {scores}test {row.test_accuracy:.3f}")
        self.table.add({name: value for name, value in row.as_dict().items() if value is not None})  # empty cells
        self.fitted += fitted
        self.reused += not fitted
        count = row.convergence_warnings
        if isinstance(count, (int, float)) and math.isfinite(count) and count > 0:
            self.not_converged.append((what, int(count)))

    def log_convergence(self) -> None:
        """Say once which rows had fits that did not converge (counted in their `convergence_warnings`)."""
        if not self.not_converged:
            return
        total = sum(count for _, count in self.not_converged)
        listed = ", ".join(f"{what} ({count})" for what, count in self.not_converged[:5])
        more = f" and {len(self.not_converged) - 5} more" if len(self.not_converged) > 5 else ""
        self.log(f"note: {total} fit(s) stopped at their iteration limit before converging (ConvergenceWarning) in "
                 f"{len(self.not_converged)} row(s): {listed}{more}. Their scores are still measured; the "
                 f"`convergence_warnings` column counts them.")

    def count_kept(self, n_rows: int) -> None:
        """Count rows kept from the table of an earlier run (`layerprobe finetune`) as reused."""
        self.reused += n_rows

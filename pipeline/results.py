"""The tidy results table of a run: one row per backbone x layer x pooling x classifier.

Finetune and scratch rows (from the finetune stage) share the table, with
`mode` telling them apart. With screening, `row_kind` tells the fast probe's
rows on every layer ("screening") from the rows fitted on the selected layers
and the multi-layer rows ("final"). Every score carries its spread: `cv_se`
over `n_folds` folds (binomial for leave-one-out) and a Wilson 95 % interval
of the test accuracy (`test_ci_low`, `test_ci_high`); `logme` is the layer's
LogME transferability score. The table is written as `results.csv` and as a
markdown table inside `summary.md`, always under a temporary name first and
renamed into place, so a reader (or a run killed mid-write) never sees half a
file.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..features.core.atomic import write_atomically, write_text_atomically
from .tables import format_table
from .uncertainty import wilson_interval

__all__ = [
    "MODES",
    "RESULT_COLUMNS",
    "ROW_KINDS",
    "ResultsTable",
    "read_results",
    "results_frame",
    "write_results",
    "write_summary",
]

MODES = ("frozen", "finetune", "scratch")
ROW_KINDS = ("screening", "final")
"""`row_kind` values: the fast probe on every layer, or a row fitted on a selected layer (or without screening)."""

RESULT_COLUMNS = (
    "mode",
    "backbone",
    "weights",
    "layer",
    "stage",
    "depth",
    "pooling",
    "classifier",
    "row_kind",
    "feature_dim",
    "n_train",
    "n_test",
    "cv_score",
    "cv_se",
    "n_folds",
    "val_accuracy",
    "n_val",
    "test_accuracy",
    "test_ci_low",
    "test_ci_high",
    "test_balanced_accuracy",
    "test_macro_f1",
    "logme",
    "fit_seconds",
    "best_params",
    "store_entry",
    "model_path",
)
"""Columns of `results.csv`, in order. Rows may carry more; they come after these.

`cv_score` is the mean CV accuracy of the chosen hyperparameters (leave-one-out
accuracy for `ridge`), `cv_se` its standard error over the `n_folds` folds
(binomial over the training rows for leave-one-out, where `n_folds = n_train`),
`val_accuracy` a finetune or scratch row's accuracy on the `n_val` images of the
training split that its training held out (its training-split evidence; empty
for frozen rows and with `val_fraction = 0`), `test_ci_low`/`test_ci_high` the Wilson 95 % interval of `test_accuracy` on
`n_test` images, `logme` the LogME of the layer's training features (the same
on every row of a layer; empty for multi-layer and finetune rows) and
`row_kind` one of `ROW_KINDS`. Tables written before these columns existed
load with them empty, the intervals computed and `row_kind` "final".
"""

_INTEGER_COLUMNS = ("stage", "feature_dim", "n_train", "n_test", "n_folds", "n_val")

# Columns of the markdown table in summary.md (the CSV has them all but `flag`, which the run summary adds from the
# advice: rows at or below the majority-class rate).
_SUMMARY_COLUMNS = (
    "mode",
    "backbone",
    "weights",
    "layer",
    "depth",
    "pooling",
    "classifier",
    "row_kind",
    "feature_dim",
    "cv_score",
    "cv_se",
    "val_accuracy",
    "test_accuracy",
    "test_ci_low",
    "test_ci_high",
    "test_macro_f1",
    "logme",
    "best_params",
    "flag",
)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _complete(row: dict) -> None:
    """Fill what a row (of an older table, or a finetune row) may lack: the derived columns and `row_kind`."""
    if row.get("row_kind") is None or (isinstance(row.get("row_kind"), float) and math.isnan(row["row_kind"])):
        row["row_kind"] = "final"
    if not _is_number(row.get("test_ci_low")) or not _is_number(row.get("test_ci_high")):
        accuracy, n_test = row.get("test_accuracy"), row.get("n_test")
        if _is_number(accuracy) and _is_number(n_test) and n_test > 0:
            row["test_ci_low"], row["test_ci_high"] = wilson_interval(float(accuracy), int(n_test))


def results_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The results table from row dicts: `RESULT_COLUMNS` first, in that order.

    `best_params` given as a dict is stored as its JSON text. Missing test
    intervals are computed from `test_accuracy` and `n_test`, a missing
    `row_kind` is "final", other missing columns are left empty.

    Raises:
        ValueError: If a row's mode is not one of `MODES`, or its row_kind not one of `ROW_KINDS`.
    """
    rows = [dict(row) for row in rows]
    for row in rows:
        if row.get("mode") not in MODES:
            raise ValueError(f"A results row needs mode in {MODES}. Received: mode={row.get('mode')!r}")
        _complete(row)
        if row["row_kind"] not in ROW_KINDS:
            raise ValueError(f"A results row needs row_kind in {ROW_KINDS}. Received: row_kind={row['row_kind']!r}")
        if isinstance(row.get("best_params"), Mapping):
            row["best_params"] = json.dumps(row["best_params"], sort_keys=True, default=str)
    extra = [column for row in rows for column in row if column not in RESULT_COLUMNS]
    columns = list(RESULT_COLUMNS) + list(dict.fromkeys(extra))
    frame = pd.DataFrame(rows, columns=columns)
    # Nullable integers: finetune rows have no stage or feature_dim, and CSV must not show "3.0".
    return frame.astype({column: "Int64" for column in _INTEGER_COLUMNS})


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """A `results.csv` as a results table, older tables included (see `results_frame` for what is filled)."""
    return results_frame(pd.read_csv(path).to_dict("records"))


def write_results(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the table as CSV, atomically (a concurrent reader sees the old or the new file)."""
    path = Path(path)
    write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))
    return path


def _with_spread(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The summary's table: `cv_score` as "mean ± SE", `test_accuracy` as "acc [95% CI]" (plain when unknown)."""

    def number(value: Any) -> float | None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    shown = frame.copy()
    cv = [None if number(row.get("cv_score")) is None else f"{number(row.get('cv_score')):.3f}"
          + ("" if number(row.get("cv_se")) is None else f" ± {number(row.get('cv_se')):.3f}")
          for row in frame.to_dict("records")]
    test = [None if number(row.get("test_accuracy")) is None else f"{number(row.get('test_accuracy')):.3f}"
            + ("" if number(row.get("test_ci_low")) is None or number(row.get("test_ci_high")) is None else
               f" [{number(row.get('test_ci_low')):.3f}, {number(row.get('test_ci_high')):.3f}]")
            for row in frame.to_dict("records")]
    shown["cv (± SE)"] = pd.Series(cv, index=frame.index, dtype=object)
    shown["test (95% CI)"] = pd.Series(test, index=frame.index, dtype=object)
    rename = {"cv_score": "cv (± SE)", "test_accuracy": "test (95% CI)"}
    hidden = {"cv_se", "test_ci_low", "test_ci_high"}
    if pd.to_numeric(frame.get("val_accuracy", pd.Series(dtype=float)), errors="coerce").isna().all():
        hidden.add("val_accuracy")  # only finetune and scratch rows have one
    columns = [rename.get(column, column) for column in _SUMMARY_COLUMNS if column not in hidden]
    return shown, columns


def write_summary(
    path: str | os.PathLike,
    frame: pd.DataFrame,
    *,
    title: str,
    sections: Mapping[str, str],
) -> Path:
    """Write `summary.md`: a title, the results table, then one section per entry of `sections`.

    Args:
        path: Destination file.
        frame: The results table.
        title: First-level heading.
        sections: Heading -> markdown body (e.g. the recommendation, skipped images).
    """
    shown, columns = _with_spread(frame)
    parts = [f"# {title}", "", "## Results", "", format_table(shown, columns, markdown=True), ""]
    for heading, body in sections.items():
        parts += [f"## {heading}", "", body.rstrip(), ""]
    path = Path(path)
    write_text_atomically(path, "\n".join(parts))
    return path


class ResultsTable:
    """The rows of a run so far, rewritten to `path` (atomically) after every new row.

    Attributes:
        path: The `results.csv` file.
        rows: Row dicts, in the order they were added.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: list[dict] = []

    @property
    def frame(self) -> pd.DataFrame:
        """The rows as a results table (see `results_frame`)."""
        return results_frame(self.rows)

    def add(self, row: Mapping[str, Any]) -> None:
        """Append a row and rewrite the file."""
        self.rows.append(dict(row))
        write_results(self.frame, self.path)

    def rewrite(self) -> None:
        """Rewrite the file from `rows` (after they were changed in place)."""
        write_results(self.frame, self.path)

    def keep_earlier_rows(self, *, except_modes: Sequence[str]) -> int:
        """Start from the rows already in `path` whose mode is not in `except_modes`; returns how many.

        `layerprobe finetune` replaces the rows of its modes and keeps the others.
        """
        if self.path.is_file():
            self.rows = [row for row in pd.read_csv(self.path).to_dict("records") if row["mode"] not in except_modes]
        return len(self.rows)

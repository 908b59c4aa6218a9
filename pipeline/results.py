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
file. Processes that share an output folder (`layerprobe run` and
`layerprobe finetune` of one config at once) write `results.csv` under its
lock, each merging its rows into what the file holds (`ResultsTable`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import math
import numbers
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.atomic import TMP_PREFIX, write_atomically, write_text_atomically
from ..core.errors import OutputError, UnusableFileError
from ..core.files import TABLE_MAX_BYTES, read_bounded_bytes
from ..core.lock_files import hold_lock_file
from .tables import backbone_labels, format_table
from .uncertainty import wilson_interval

__all__ = [
    "MODES",
    "RESULT_COLUMNS",
    "ROW_KINDS",
    "ResultsTable",
    "Row",
    "check_output_folder",
    "compact_table",
    "output_errors",
    "read_results",
    "results_frame",
    "write_results",
    "write_summary",
]

MODES = ("frozen", "finetune", "scratch")
ROW_KINDS = ("screening", "final")
"""`row_kind` values: the fast probe on every layer, or a row fitted on a selected layer (or without screening)."""

@dataclass(frozen=True)
class Row:
    """One row of the results table; its fields are the columns of `results.csv`, in order.

    `cv_score` is the mean CV accuracy of the chosen hyperparameters (leave-one-out
    accuracy for `ridge`), `cv_se` its standard error over the `n_folds` folds
    (binomial over the training rows for leave-one-out, where `n_folds = n_train`),
    `val_accuracy` a finetune or scratch row's accuracy on the `n_val` images of the
    training split that its training held out (its training-split evidence; empty
    for frozen rows and with `val_fraction = 0`), `test_ci_low`/`test_ci_high` the
    Wilson 95 % interval of `test_accuracy` on `n_test` images (filled by
    `results_frame`), `logme` the LogME of the layer's training features (the same
    on every row of a layer; empty for multi-layer and finetune rows), `row_kind`
    one of `ROW_KINDS`, `forward_gflops` the forward pass a deployed frozen row runs
    per image, in GFLOPs, from the input to the deepest layer it reads
    (`layerprobe.features.flops`; what an earlier cut saves at inference), and
    `convergence_warnings` the fits of the row that stopped before converging. A value a row does not have is None (an empty cell). Tables
    written before some columns existed load with them empty, the intervals
    computed and `row_kind` "final".
    """

    mode: str
    backbone: str
    weights: str | None
    layer: str
    stage: int | None = None
    depth: float | None = None
    pooling: str | None = None
    classifier: str | None = None
    row_kind: str = "final"
    feature_dim: int | None = None
    forward_gflops: float | None = None
    n_train: int | None = None
    n_test: int | None = None
    cv_score: float | None = None
    cv_se: float | None = None
    n_folds: int | None = None
    val_accuracy: float | None = None
    n_val: int | None = None
    test_accuracy: float | None = None
    test_ci_low: float | None = None
    test_ci_high: float | None = None
    test_balanced_accuracy: float | None = None
    test_macro_f1: float | None = None
    logme: float | None = None
    fit_seconds: float | None = None
    best_params: str | None = None
    store_entry: str | None = None
    model_path: str | None = None
    convergence_warnings: int | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Row:
        """A row from its columns (e.g. a row record's JSON); columns it does not have are left out."""
        return cls(**{name: values[name] for name in RESULT_COLUMNS if name in values})

    def as_dict(self) -> dict[str, Any]:
        """The row's columns, in order."""
        return {name: getattr(self, name) for name in RESULT_COLUMNS}


RESULT_COLUMNS = tuple(column.name for column in dataclasses.fields(Row))
"""Columns of `results.csv`, in order: the fields of `Row`. Rows of older tables may carry more; they come after."""

_INTEGER_COLUMNS = ("stage", "feature_dim", "n_train", "n_test", "n_folds", "n_val")

_CHOOSE_ANOTHER = "choose another folder (`[output] dir` in the config, or --out)"
# OSErrors of writing a file or folder: the disk, its permissions or the path, which the user can fix.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                           errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG})


def check_output_folder(directory: str | os.PathLike) -> None:
    """Fail before any work if `directory` cannot become a run's output folder; creates nothing.

    Raises:
        OutputError: It (or a folder above it) is a file, or it cannot be written
            (read-only file system, permission).
    """
    directory = Path(directory)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == directory else f": {existing} is a file, so {directory} cannot be made"
        raise OutputError(
            f"The output folder {directory} is a file, not a folder{where}. Remove or rename it, or "
            f"{_CHOOSE_ANOTHER}. Nothing was run."
        )
    try:  # a real write, as the run will do (os.access cannot tell a read-only file system to root)
        os.rmdir(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}probe-", dir=existing))
    except OSError as error:
        raise OutputError(
            f"Cannot write the output folder {directory}: {error}. Make it writable, or {_CHOOSE_ANOTHER}. "
            f"Nothing was run."
        ) from error


@contextlib.contextmanager
def output_errors(directory: str | os.PathLike) -> Iterator[None]:
    """Turn an `OSError` of writing (disk full, read-only, permission, a path in the way) raised inside
    the block into an `OutputError` saying what to do; nothing written before it is lost.

    Every file of a run is written under a temporary name and renamed into place, so the
    rows, classifiers and features finished before the error are complete, and the rerun
    reuses them.
    """
    try:
        yield
    except OSError as error:
        if error.errno not in _WRITE_ERRNOS:
            raise
        resume = ("the rows, classifiers and features finished so far are kept, and running again resumes "
                  "from them")
        if error.errno == errno.EFBIG:
            raise OutputError(
                f"A file of the run's outputs in {directory} grew past this process's file-size limit (`ulimit -f`): "
                f"{error}. Raise the limit (`ulimit -f unlimited`) and run again: {resume}."
            ) from error
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(
                f"The disk is full while writing the run's outputs in {directory}: {error}. Free some space "
                f"(or {_CHOOSE_ANOTHER}) and run again: {resume}."
            ) from error
        raise OutputError(
            f"Could not write the run's outputs in {directory}: {error}. Fix the path or its permissions "
            f"(or {_CHOOSE_ANOTHER}) and run again: {resume}."
        ) from error


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
    """A `results.csv` as a results table, older tables included (see `results_frame` for what is filled).

    Raises:
        UnusableFileError: If it is not a regular file, or larger than `TABLE_MAX_BYTES`.
        ValueError: If it is not a results table (not CSV, foreign columns, unknown modes).
    """
    data = read_bounded_bytes(path, "results table", TABLE_MAX_BYTES)
    try:
        rows = pd.read_csv(io.BytesIO(data)).to_dict("records")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a CSV table: {str(error).strip().splitlines()[-1]}") from error
    return results_frame(rows)


def write_results(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the table as CSV, atomically (a concurrent reader sees the old or the new file)."""
    path = Path(path)
    write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))
    return path


def compact_table(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows as a short table fits them (at most 8 columns; results.csv has every column) and its columns.

    `backbone` names backbone and weights once (`tables.backbone_labels`); `mode`
    only when the rows have several; `layer` with its pooling in brackets when the
    rows have several poolings; `cv (± SE)` as "mean ± SE"; `val` only when a row
    has one (finetune and scratch rows); `test (95% CI)` as "acc [low, high]"; and
    `flag` when the frame has one (`run.summary.flagged`).
    """

    def number(value: Any) -> float | None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    records = frame.to_dict("records")
    shown = pd.DataFrame(index=frame.index)
    shown["backbone"] = backbone_labels(records)
    if frame.get("mode", pd.Series(dtype=object)).nunique() > 1:
        shown["mode"] = frame["mode"]
    poolings = frame.get("pooling", pd.Series(dtype=object))
    shown["layer"] = [f"{row.get('layer')} ({row.get('pooling')})" if poolings.nunique() > 1 else row.get("layer")
                      for row in records]
    shown["classifier"] = frame.get("classifier")
    shown["cv (± SE)"] = [None if number(row.get("cv_score")) is None else f"{number(row.get('cv_score')):.3f}"
                          + ("" if number(row.get("cv_se")) is None else f" ± {number(row.get('cv_se')):.3f}")
                          for row in records]
    if pd.to_numeric(frame.get("val_accuracy", pd.Series(dtype=float)), errors="coerce").notna().any():
        shown["val"] = pd.to_numeric(frame["val_accuracy"], errors="coerce")
    shown["test (95% CI)"] = [
        None if number(row.get("test_accuracy")) is None else f"{number(row.get('test_accuracy')):.3f}"
        + ("" if number(row.get("test_ci_low")) is None or number(row.get("test_ci_high")) is None else
           f" [{number(row.get('test_ci_low')):.3f}, {number(row.get('test_ci_high')):.3f}]")
        for row in records]
    if "flag" in frame:
        shown["flag"] = frame["flag"]
    return shown, list(shown.columns)


def write_summary(
    path: str | os.PathLike,
    frame: pd.DataFrame,
    *,
    title: str,
    sections: Mapping[str, str],
    plot: str | os.PathLike | None = None,
) -> Path:
    """Write `summary.md`: a title, the plot and the results table (`compact_table`), then `sections`.

    Args:
        path: Destination file.
        frame: The results table.
        title: First-level heading.
        sections: Heading -> markdown body (e.g. the recommendation, skipped images).
        plot: An image shown above the table (`![...](...)`, relative to `path`'s folder when inside it).
    """
    path = Path(path)
    shown, columns = compact_table(frame)
    parts = [f"# {title}", "", "## Results", ""]
    if plot is not None:
        relative = os.path.relpath(os.path.abspath(plot), os.path.abspath(path.parent))
        parts += [f"![{Path(plot).stem}]({Path(relative if not relative.startswith('..') else plot).as_posix()})", ""]
    parts += [format_table(shown, columns, markdown=True), ""]
    for heading, body in sections.items():
        parts += [f"## {heading}", "", body.rstrip(), ""]
    write_text_atomically(path, "\n".join(parts))
    return path


# What tells one row of the table from another: a new row replaces the earlier run's row with the same values.
_ROW_IDENTITY = ("mode", "backbone", "weights", "layer", "pooling", "classifier", "row_kind", "store_entry")


_MODE_ORDER = {mode: position for position, mode in enumerate(MODES)}


def _identity(row: Mapping[str, Any]) -> tuple:
    """The `_ROW_IDENTITY` values of a row as text (None for empty; row_kind "final" by default, as
    `results_frame` fills it), the same whether built or read back."""
    values = [None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
              for value in (row.get(column) for column in _ROW_IDENTITY)]
    values[_ROW_IDENTITY.index("row_kind")] = values[_ROW_IDENTITY.index("row_kind")] or "final"
    return tuple(values)


def _by_mode(rows: Iterable[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: _MODE_ORDER.get(row.get("mode"), len(_MODE_ORDER)))


class ResultsTable:
    """The rows of a run so far, merged into `path` (atomically, under its lock) after every new row.

    The table *owns* some modes: all of them for `layerprobe run`, whose table is its
    own rows; only its own for `layerprobe finetune` (`keep_earlier_rows`). Every
    write takes the table's lock (`.results.csv.lock` beside it), reads the file,
    keeps its rows of the modes this table does not own, replaces the others by this
    table's rows, and writes the result, so that rows another process added meanwhile
    are never lost, whichever process writes last.

    Until `commit`, the file also keeps the rows of earlier runs (of the modes owned)
    that no row of this table has replaced yet (same mode, backbone, weights, layer,
    pooling, classifier, row kind and store entry): a run killed half-way leaves every
    row it had not reached yet, not a table that lost finished results. `commit`
    drops those left over (rows of settings this run no longer has).

    A file that cannot be read as a results table (not CSV, foreign columns, not a
    regular file, too large) is rebuilt from `rebuild()`, the rows the run's row
    records hold, with one warning through `log`.

    Attributes:
        path: The `results.csv` file.
        rows: Row dicts: this table's, in the order they were added, with the rows of
            other modes found in the file at the last write (modes in `MODES` order).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        rebuild: Callable[[], list[dict]] | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.path = Path(path)
        self.rows: list[dict] = []
        self._modes: frozenset[str] = frozenset(MODES)
        self._committed = False
        self._rebuild = rebuild or list
        self._log = log or (lambda line: warnings.warn(line, UserWarning, stacklevel=4))

    @property
    def frame(self) -> pd.DataFrame:
        """The rows as a results table (see `results_frame`)."""
        return results_frame(self.rows)

    def add(self, row: Mapping[str, Any]) -> None:
        """Append a row and merge the table into the file."""
        self.rows.append(dict(row))
        self._merge(write=True)

    def rewrite(self) -> None:
        """Merge the table into the file again (after rows were changed in place)."""
        self._merge(write=True)

    def commit(self) -> None:
        """Write the table as the run's final one: the rows of earlier runs it did not replace are dropped."""
        self._committed = True
        self._merge(write=True)

    def keep_earlier_rows(self, *, except_modes: Sequence[str]) -> int:
        """Own only `except_modes`: start from the rows of the other modes in `path`; returns how many.

        `layerprobe finetune` replaces the rows of its modes and keeps the others, also
        those another process adds while it runs.
        """
        self._modes = frozenset(except_modes)
        self._merge(write=False)
        return len(self.rows)

    def _found(self) -> list[dict]:
        """The rows in the file, or those `rebuild()` gives if it is not a results table (said once)."""
        if not os.path.lexists(self.path):
            return []
        try:
            return read_results(self.path).to_dict("records")
        except (OSError, ValueError) as error:
            if isinstance(error, OSError) and not isinstance(error, UnusableFileError):
                raise
            rows = self._rebuild()
            self._log(f"warning: the results table {self.path} cannot be read ({error}); rebuilt it from the "
                      f"{len(rows)} row record(s) of the output folder")
            return rows

    def _merge(self, *, write: bool) -> None:
        """Under the table's lock: the file's rows of the modes not owned, then ours (by mode), and until
        `commit` the earlier rows of owned modes that ours did not replace; written if `write`."""
        lock = self.path.with_name(f".{self.path.name}.lock")
        with hold_lock_file(lock, doing=f"writing the results table {self.path}", error=OutputError):
            found = self._found()
            ours = [row for row in self.rows if row.get("mode") in self._modes]
            others = [row for row in found if row.get("mode") not in self._modes]
            self.rows = _by_mode(others + ours)
            replaced = {_identity(row) for row in ours}
            earlier = [] if self._committed else [
                row for row in found if row.get("mode") in self._modes and _identity(row) not in replaced]
            if write:
                write_results(results_frame(_by_mode(self.rows + earlier)), self.path)

"""`results.json`: a run's rows, its recommendation and the evidence behind it, for dashboards and scripts.

Written beside `results.csv` by every run (`layerprobe run --json` prints it):
the same rows as the CSV, the `Advice` field by field (its recommended row and
runner-up as objects; rows it names by their position in `rows`) with its
words (`summary`, `evidence` and `details`, `advice.advice_text`), what the
data were, and where the other files are. Missing numbers are `null`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ...core.atomic import write_text_atomically
from ...core.versions import layerprobe_version
from ..advice import Advice, advice_text

__all__ = ["ENCODING", "results_document", "write_results_json"]

ENCODING = {"encoding-type": "layerprobe-results", "encoding-version": 1}


def _plain(value: Any) -> Any:
    """`value` as JSON: a pandas row or a mapping as an object, tuples as lists, NaN and NA as null."""
    if isinstance(value, pd.Series):
        return json.loads(value.to_json(double_precision=15, default_handler=str))
    if isinstance(value, pd.DataFrame):
        return json.loads(value.to_json(orient="records", double_precision=15, default_handler=str))
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):  # e.g. the advice's flags, keyed by row label: JSON keys are strings
        return {str(_plain(key)): _plain(item) for key, item in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def results_document(
    frame: pd.DataFrame, advice: Advice, *, source: str, data: Mapping[str, Any], files: Mapping[str, Path]
) -> dict[str, Any]:
    """The content of `results.json` (see the module docstring)."""
    return {
        **ENCODING,
        "source": source,
        "layerprobe_version": layerprobe_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": dict(data),
        "rows": _plain(frame),
        "recommendation": _recommendation(advice),
        "files": {name: str(path) for name, path in files.items()},
    }


def _recommendation(advice: Advice) -> dict[str, Any]:
    """The advice's fields (the rows it read as their labels, not again) and its text."""
    fields = {field.name: getattr(advice, field.name) for field in dataclasses.fields(advice) if field.name != "table"}
    fields["tied_rows"] = list(advice.tied_rows.index)
    fields["failed"] = sorted(advice.failed, key=str)
    words = advice_text(advice)
    return {**{name: _plain(value) for name, value in fields.items()},
            "summary": words.summary, "evidence": list(words.evidence), "details": list(words.details)}


def write_results_json(path: Path, document: Mapping[str, Any]) -> Path:
    """Write `document` (`results_document`) to `path`, atomically."""
    write_text_atomically(path, json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")
    return path

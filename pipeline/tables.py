"""Text tables: the one function that lays out rows for a console, a log or a markdown file.

Used for `summary.md` and the table printed at the end of `layerprobe run`,
for `layerprobe layers` and `layerprobe store ls`, and by the benchmark scripts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["backbone_labels", "format_table"]


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN
    except (TypeError, ValueError):  # pandas.NA refuses bool()
        return True


def format_table(
    rows: Iterable[Mapping[str, Any]] | Any,
    columns: Sequence[str] | None = None,
    *,
    markdown: bool = False,
    float_format: str | Callable[[float], str] = "{:.3f}",
    missing: str = "",
) -> str:
    """Rows as an aligned text table, or as a GitHub markdown table.

    Args:
        rows: Mappings (one per row) or a pandas DataFrame.
        columns: Columns to show, in order; those no row has are left out
            (unless there are no rows). Default: every column, in first-seen order.
        markdown: A markdown table (`|` in cells escaped, newlines flattened)
            instead of right-aligned columns.
        float_format: A format string or a function for floats.
        missing: Text of empty cells (None, NaN, pandas.NA).

    Returns:
        The table, without a trailing newline; just its header when there are no rows.

    Example:
        >>> print(format_table([{"layer": "block1_pool", "accuracy": 0.8125}], markdown=True))
        | layer | accuracy |
        |---|---|
        | block1_pool | 0.812 |
    """
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a DataFrame
        names = [str(column) for column in rows.columns]
        rows = rows.to_dict("records")
    else:
        rows = [dict(row) for row in rows]
        names = list(dict.fromkeys(key for row in rows for key in row))
    if columns is None:
        columns = names
    elif rows:  # with no rows, every column asked for makes the header
        columns = [column for column in columns if column in names]
    to_text = float_format if callable(float_format) else float_format.format

    def cell(value: Any) -> str:
        if _is_missing(value):
            return missing
        text = to_text(value) if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ") if markdown else text

    table = [[cell(row.get(column)) for column in columns] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(values) + " |" for values in table]
        return "\n".join(lines)
    widths = [max([len(column), *(len(values[i]) for values in table)]) for i, column in enumerate(columns)]
    lines = ["  ".join(column.rjust(width) for column, width in zip(columns, widths))]
    lines += ["  ".join(value.rjust(width) for value, width in zip(values, widths)) for values in table]
    return "\n".join(lines)


def backbone_labels(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """One short name per row for its backbone and weights, as tables and plot legends show them.

    The family (its arguments kept, a model file's digest dropped) and the weights:
    `"MobileNetV2(alpha=0.35), digits-A.weights.h5"`, `"VGG16, imagenet"`,
    `"VGG16, random"` (weights "none"); a model file with its own weights is its file
    name alone (`"efficientnet_lite0_imagenet.keras"`). Only where two different
    backbones would get the same name does the architecture's digest follow it (`@e4eabc`).

    Args:
        rows: Mappings with `backbone` and `weights` (results-table rows), or a DataFrame.
    """
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a DataFrame
        rows = rows.to_dict("records")
    pairs = [(str(row.get("backbone", "")), str(row.get("weights", ""))) for row in rows]

    def short(backbone: str, weights: str) -> str:
        name = backbone.split("@")[0]
        if weights == "none":
            return f"{name}, random"
        own_weights = "@" in backbone and weights.endswith(".keras")  # a model file's digest, its own weights
        return weights if own_weights else f"{name}, {weights}"

    labels = {pair: short(*pair) for pair in dict.fromkeys(pairs)}
    taken: dict[str, list[tuple[str, str]]] = {}
    for pair, label in labels.items():
        taken.setdefault(label, []).append(pair)
    for label, owners in taken.items():
        if len(owners) > 1:
            for backbone, weights in owners:
                digest = backbone.partition("@")[2][:6]
                labels[backbone, weights] = f"{label} @{digest}" if digest else f"{label} ({backbone})"
    return [labels[pair] for pair in pairs]

"""Text tables: the one function that lays out rows for a console, a log or a markdown file.

Used for `summary.md` and the table printed at the end of `layerprobe run`,
for `layerprobe layers` and `layerprobe store ls`, and by the benchmark scripts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["format_table"]


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

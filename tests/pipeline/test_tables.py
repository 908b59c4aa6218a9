import numpy as np
import pandas as pd

from layerprobe.pipeline.results import results_frame
from layerprobe.pipeline.tables import format_table

ROWS = [
    {"layer": "block1_pool", "depth": 0.25, "n": 3, "note": "a|b"},
    {"layer": "block3_pool", "depth": float("nan"), "n": None},
]


def test_markdown_table_formats_floats_escapes_pipes_and_empties_missing_cells():
    assert format_table(ROWS, ["layer", "depth", "n", "note"], markdown=True).splitlines() == [
        "| layer | depth | n | note |",
        "|---|---|---|---|",
        "| block1_pool | 0.250 | 3 | a\\|b |",
        "| block3_pool |  |  |  |",
    ]


def test_text_table_is_right_aligned_and_keeps_only_known_columns():
    lines = format_table(ROWS, ["layer", "n", "absent"], missing="-").splitlines()
    assert lines == ["      layer  n", "block1_pool  3", "block3_pool  -"]


def test_dataframe_rows_with_nullable_integers_and_a_float_function():
    frame = results_frame([{"mode": "frozen", "layer": "top", "stage": None, "fit_seconds": 1234.5},
                           {"mode": "frozen", "layer": "mid", "stage": 2, "fit_seconds": 0.01234}])
    assert frame["stage"].dtype == "Int64"
    text = format_table(frame, ["layer", "stage", "fit_seconds"], float_format=lambda value: f"{value:.3g}", missing="-")
    assert text.splitlines()[1:] == ["  top      -     1.23e+03", "  mid      2       0.0123"]


def test_no_rows_gives_the_header_and_default_columns_are_first_seen_order():
    assert format_table([], ["a", "b"]) == "a  b"
    assert format_table(pd.DataFrame(columns=["a", "b"]), markdown=True) == "| a | b |\n|---|---|"
    assert format_table([{"b": np.float64(0.5)}, {"a": 1}]).splitlines()[0] == "    b  a"

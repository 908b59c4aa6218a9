import numpy as np
import pandas as pd

from layerprobe.pipeline.results import results_frame
from layerprobe.pipeline.tables import backbone_labels, format_table

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


def test_backbone_labels_name_backbone_and_weights_once_with_a_digest_only_where_two_collide():
    rows = [
        {"backbone": "MobileNetV2(alpha=0.35)", "weights": "digits-A.weights.h5"},
        {"backbone": "MobileNetV2(alpha=0.35)", "weights": "none"},
        {"backbone": "efficientnet_lite0@e4eabc440ae2", "weights": "efficientnet_lite0_imagenet.keras"},
        {"backbone": "functional@1111111111", "weights": "model.keras"},
        {"backbone": "functional@2222222222", "weights": "model.keras"},
        {"backbone": "VGG16", "weights": "imagenet"},
    ]
    assert backbone_labels(rows) == [
        "MobileNetV2(alpha=0.35), digits-A.weights.h5", "MobileNetV2(alpha=0.35), random",
        "efficientnet_lite0_imagenet.keras", "model.keras @111111", "model.keras @222222", "VGG16, imagenet",
    ]


def test_the_compact_table_has_at_most_8_columns_and_only_those_that_tell_rows_apart():
    import pandas as pd

    from layerprobe.pipeline.results import compact_table

    row = {"mode": "frozen", "backbone": "VGG16", "weights": "imagenet", "layer": "block5_pool", "depth": 1.0,
           "pooling": "avg", "classifier": "logreg", "row_kind": "final", "feature_dim": 512, "cv_score": 0.9,
           "cv_se": 0.02, "val_accuracy": None, "test_accuracy": 0.85, "test_ci_low": 0.8, "test_ci_high": 0.9,
           "best_params": "{}", "logme": 0.1}
    shown, columns = compact_table(pd.DataFrame([row, {**row, "classifier": "linear_svm"}]))
    assert columns == ["backbone", "layer", "classifier", "cv (± SE)", "test (95% CI)"]
    assert shown.iloc[0].tolist() == ["VGG16, imagenet", "block5_pool", "logreg", "0.900 ± 0.020",
                                      "0.850 [0.800, 0.900]"]
    finetuned = {**row, "mode": "finetune", "layer": "(end to end)", "classifier": "softmax head", "cv_score": None,
                 "val_accuracy": 0.8}
    frame = pd.DataFrame([row, {**row, "pooling": "max"}, finetuned]).assign(flag=["", "", "at chance"])
    shown, columns = compact_table(frame)
    assert columns == ["backbone", "mode", "layer", "classifier", "cv (± SE)", "val", "test (95% CI)", "flag"]
    assert shown["layer"].tolist() == ["block5_pool (avg)", "block5_pool (max)", "(end to end) (avg)"]

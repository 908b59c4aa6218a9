import pandas as pd
import pytest

from layerprobe.pipeline.advice import recommend
from layerprobe.pipeline.plots import depth_figure, plot_depth
from layerprobe.pipeline.results import results_frame

PNG = b"\x89PNG\r\n\x1a\n"


def _rows(scores, *, classifier="logreg", row_kind="final", new_columns=True):
    rows = []
    for i, score in enumerate(scores):
        row = {"mode": "frozen", "backbone": "VGG16", "weights": "imagenet", "layer": f"block{i + 1}_pool",
               "depth": (i + 1) / len(scores), "pooling": "avg", "classifier": classifier, "cv_score": score,
               "test_accuracy": score}
        if new_columns:
            row.update(cv_se=0.02, n_folds=5, n_test=200, test_ci_low=score - 0.05, test_ci_high=score + 0.05,
                       feature_dim=64 * 2 ** i, logme=-1 + 0.2 * i, row_kind=row_kind, n_train=100)
        rows.append(row)
    return rows


def _is_png(path, *, min_bytes=10_000):
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > min_bytes


def test_plot_with_the_new_columns_marks_the_recommendation_and_draws_logme(tmp_path):
    finetune = {"mode": "finetune", "backbone": "VGG16", "weights": "imagenet", "test_accuracy": 0.95,
                "test_ci_low": 0.92, "test_ci_high": 0.97, "n_test": 200}
    table = pd.DataFrame(_rows([0.55, 0.85, 0.8, 0.7], classifier="ridge", row_kind="screening")
                         + _rows([0.6, 0.9, 0.8, 0.7]) + [finetune])
    advice = recommend(table, n_train=100, n_classes=5, smallest_class=20)
    path = plot_depth(table, tmp_path / "depth.png", recommended=advice.row)
    assert _is_png(path)
    assert not [p for p in tmp_path.iterdir() if p.name != "depth.png"]  # written atomically, no leftovers


def test_plot_without_the_new_columns(tmp_path):
    table = pd.concat([pd.DataFrame(_rows([0.6, 0.9, 0.8, 0.7], new_columns=False)),
                       results_frame([{"mode": "finetune", "backbone": "VGG16", "test_accuracy": 0.95}])])
    path = plot_depth(table, tmp_path / "old.png")
    assert _is_png(path)
    bare = pd.DataFrame([{"mode": "frozen", "backbone": "VGG16", "weights": "imagenet", "layer": "top",
                          "depth": 1.0, "classifier": "logreg", "test_accuracy": 0.7}])
    assert _is_png(plot_depth(bare, tmp_path / "bare.png", recommended=bare.iloc[0]))


def test_plot_of_an_empty_table_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_depth(results_frame([]), tmp_path / "empty.png")


def test_a_multi_layer_row_spans_the_depths_of_its_layers_and_carries_the_star(tmp_path):
    multi = {**_rows([0.6])[0], "layer": "multi:block2_pool+block4_pool", "depth": float("nan"), "cv_score": 0.93,
             "cv_se": 0.01, "classifier": "ridge", "feature_dim": 640}
    table = pd.DataFrame(_rows([0.6, 0.9, 0.8, 0.7]) + [multi])
    figure = depth_figure(table, recommended=table.iloc[-1])
    axes = figure.axes[0]
    segment = next(line for line in axes.get_lines() if line.get_label().startswith("multi:block2_pool+block4_pool"))
    assert list(segment.get_xdata()) == [0.5, 1.0] and list(segment.get_ydata()) == [0.93, 0.93]
    star = next(line for line in axes.get_lines() if line.get_label().startswith("recommended"))
    assert list(star.get_xdata()) == [0.75] and list(star.get_ydata()) == [0.93]
    ticks = [tick.get_text() for tick in axes.get_xticklabels()]
    assert ticks == ["block1_pool", "block2_pool", "block3_pool", "block4_pool"]  # no tick for the multi row
    assert _is_png(plot_depth(table, tmp_path / "multi.png", recommended=table.iloc[-1]))

import pandas as pd
import pytest

from layerprobe.pipeline.advice import recommend
from layerprobe.pipeline.plots import CV_SCORE, LOGME_MIN_SPAN, TEST_SCORE, VAL_SCORE, depth_figure, plot_depth
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
    segment = next(line for line in axes.get_lines() if line.get_gid() == "multi:block2_pool+block4_pool")
    assert list(segment.get_xdata()) == [0.5, 1.0] and list(segment.get_ydata()) == [0.93, 0.93]
    star = next(line for line in axes.get_lines() if line.get_label().startswith("recommended"))
    assert list(star.get_xdata()) == [0.75] and list(star.get_ydata()) == [0.93]
    ticks = [tick.get_text() for tick in axes.get_xticklabels()]
    assert ticks == ["block1_pool", "block2_pool", "block3_pool", "block4_pool"]  # no tick for the multi row
    assert _is_png(plot_depth(table, tmp_path / "multi.png", recommended=table.iloc[-1]))


def _series_labels(figure):
    """The legend's entries (the figure legend, below the panels)."""
    return [text.get_text() for text in figure.legends[0].get_texts()]


def test_the_y_label_names_exactly_the_scores_drawn_and_each_series_says_which():
    frozen = pd.DataFrame(_rows([0.6, 0.9, 0.8, 0.7]) + _rows([0.55, 0.85, 0.8, 0.72], classifier="linear_svm"))
    only_cv = depth_figure(frozen)
    assert only_cv.axes[0].get_ylabel() == f"accuracy: {CV_SCORE} (frozen layers)"  # no test series, no "test"
    assert _series_labels(only_cv)[:3] == ["VGG16, imagenet", "logreg", "linear_svm"]  # a colour, then the styles
    finetune = {"mode": "finetune", "backbone": "VGG16", "weights": "imagenet", "test_accuracy": 0.95,
                "test_ci_low": 0.92, "test_ci_high": 0.97, "n_test": 200}
    both = depth_figure(pd.concat([frozen, pd.DataFrame([finetune])], ignore_index=True))
    assert both.axes[0].get_ylabel() == f"accuracy: {CV_SCORE} (frozen layers)\n{TEST_SCORE} (finetune)"
    assert f"finetune VGG16, imagenet, end to end ({TEST_SCORE})" in _series_labels(both)
    # With a validation score, a trained row shows it (training-split evidence, as CV is), without a test band.
    validated = depth_figure(pd.concat([frozen, pd.DataFrame([{**finetune, "val_accuracy": 0.9}])], ignore_index=True))
    assert validated.axes[0].get_ylabel() == f"accuracy: {CV_SCORE} (frozen layers)\n{VAL_SCORE} (finetune)"
    assert f"finetune VGG16, imagenet, end to end ({VAL_SCORE})" in _series_labels(validated)
    assert not validated.axes[0].patches


def test_with_screening_off_the_recommended_curve_is_drawn_through_its_star():
    rows = [{**row, "row_kind": "final"} for classifier in ("logreg", "linear_svm", "ridge", "sgd_svm", "mlp")
            for row in _rows([0.6, 0.7, 0.75, 0.72], classifier=classifier)]
    table = pd.DataFrame(rows)
    table.loc[(table["classifier"] == "mlp") & (table["layer"] == "block3_pool"), "cv_score"] = 0.8
    recommended = table[(table["classifier"] == "mlp") & (table["layer"] == "block3_pool")].iloc[0]
    figure = depth_figure(table, recommended=recommended)
    axes = figure.axes[0]
    mlp = next(container for container in axes.containers if container.get_label().endswith("/ mlp"))
    line = mlp.lines[0]
    assert list(line.get_xdata()) == [0.25, 0.5, 0.75, 1.0] and line.get_ydata()[2] == 0.8
    star = next(line for line in axes.get_lines() if line.get_label() == "recommended: mlp on block3_pool")
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (0.75, 0.8)


def test_the_y_range_fits_the_data_and_the_legend_is_outside_the_panels():
    table = pd.DataFrame(_rows([0.65, 0.76, 0.72, 0.70]))  # a 0.65-0.76 spread, SE 0.02
    figure = depth_figure(table, chance=0.54)
    bottom, top = figure.axes[0].get_ylim()
    assert 0.5 < bottom <= 0.54 and 0.78 <= top < 0.82  # the data and the chance level just below them
    far = depth_figure(table, chance=0.1)
    assert far.axes[0].get_ylim()[0] > 0.55  # a chance level far below would squeeze the data
    assert "majority class (10.0%), below the range shown" in _series_labels(far)
    figure.canvas.draw()
    legend = figure.legends[0].get_window_extent()
    for axes in figure.axes:
        assert not legend.overlaps(axes.get_window_extent())


def test_the_logme_panel_does_not_magnify_a_small_spread():
    rows = _rows([0.6, 0.7, 0.8, 0.9])
    for row, value in zip(rows, [-0.719, -0.695, -0.714, -0.693]):  # a 0.026 spread
        row["logme"] = value
    figure = depth_figure(pd.DataFrame(rows))
    bottom, top = figure.axes[1].get_ylim()
    assert top - bottom >= LOGME_MIN_SPAN and bottom < -0.719 and top > -0.693

import pandas as pd
import pytest

from layerprobe.pipeline.advice import recommend
from layerprobe.pipeline.plots import plot_depth
from layerprobe.pipeline.results import results_frame


def _table(scores, *, weights="imagenet", classifiers=("logreg", "linear_svm")):
    """Frozen rows over four layers; `scores[i]` is the cv and test accuracy of layer i."""
    return results_frame(
        {
            "mode": "frozen",
            "backbone": "VGG16",
            "weights": weights,
            "layer": f"block{i + 1}_pool",
            "depth": (i + 1) / len(scores),
            "pooling": "avg",
            "classifier": classifier,
            "cv_score": score - 0.01 * (classifier == "logreg"),
            "test_accuracy": score,
        }
        for i, score in enumerate(scores)
        for classifier in classifiers
    )


def test_small_and_similar_recommends_the_top_layer():
    advice = recommend(_table([0.6, 0.7, 0.85, 0.86]), n_train=200, n_classes=2, smallest_class=90)
    assert advice.mode == "frozen_top" and advice.small
    assert "Recommendation (a): linear_svm on the frozen top layer block4_pool" in advice.text
    assert "cv 86.0%" in advice.text and "within 0.0 points" in advice.text


def test_small_and_dissimilar_recommends_a_linear_svm_on_the_best_intermediate_layer():
    advice = recommend(_table([0.6, 0.9, 0.8, 0.7]), n_train=200, n_classes=2, smallest_class=90)
    assert advice.mode == "frozen_intermediate"
    assert "Recommendation (b): a linear SVM on the intermediate layer block2_pool" in advice.text
    assert "wins by 20.0 points" in advice.text and "versus cv 70.0% on the top layer block4_pool" in advice.text


def test_large_dataset_recommends_finetuning():
    advice = recommend(_table([0.6, 0.9, 0.8, 0.7]), n_train=30_000, n_classes=10, smallest_class=2_900)
    assert advice.mode == "finetune" and not advice.small
    assert "Recommendation (c): finetune the top blocks of VGG16" in advice.text


def test_random_weights_are_a_baseline_not_a_source():
    table = pd.concat([_table([0.6, 0.9, 0.8, 0.7]), _table([0.85, 0.89, 0.88, 0.8], weights="none")])
    advice = recommend(table, n_train=100, n_classes=2, smallest_class=50)
    assert "Recommendation (b)" in advice.text and "weights imagenet" in advice.text
    assert "Random-weight baseline VGG16 [weights none, avg pooling]" in advice.text
    assert "1.0 points above it: here the source features are no better than random ones" in advice.text


def test_recommend_rejects_an_empty_training_split():
    with pytest.raises(ValueError, match="`n_train` must be a positive integer. Received: n_train=0"):
        recommend(_table([0.5]), n_train=0, n_classes=2, smallest_class=0)
    with pytest.raises(ValueError, match="`n_classes` must be a positive integer"):
        recommend(_table([0.5]), n_train=4, n_classes=0, smallest_class=2)


def test_plot_depth_writes_a_png_with_finetune_lines(tmp_path):
    table = pd.concat(
        [_table([0.6, 0.9, 0.8, 0.7]), results_frame([{"mode": "finetune", "backbone": "VGG16", "test_accuracy": 0.95}])]
    )
    path = plot_depth(table, tmp_path / "depth.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "depth.png"]
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_depth(results_frame([]), tmp_path / "empty.png")

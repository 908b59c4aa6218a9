import warnings

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import balanced_accuracy_score, f1_score

from layerprobe.pipeline.classifiers import fit_classifier
from layerprobe.pipeline.evaluate import Scores, evaluate

CLASS_NAMES = ["cat", "dog", "fox"]


def test_scores_match_sklearn_on_known_predictions():
    y_test = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    scores = evaluate(y_test, y_pred, CLASS_NAMES)
    assert scores.accuracy == pytest.approx(4 / 6)
    assert scores.balanced_accuracy == pytest.approx(balanced_accuracy_score(y_test, y_pred))
    assert scores.macro_f1 == pytest.approx(f1_score(y_test, y_pred, average="macro"))
    assert scores.as_dict() == {
        "accuracy": scores.accuracy,
        "balanced_accuracy": scores.balanced_accuracy,
        "macro_f1": scores.macro_f1,
    }
    assert all(type(value) is float for value in scores.as_dict().values())
    np.testing.assert_array_equal(scores.y_pred, y_pred)
    assert scores.confusion.loc["fox", "cat"] == 1
    assert scores.confusion.loc["cat", "dog"] == 1
    assert np.trace(scores.confusion.to_numpy()) == 4
    assert scores.report.loc["dog", "recall"] == pytest.approx(1.0)
    assert scores.report.loc["cat", "support"] == 2


def test_class_missing_from_test_split_is_warning_free():
    y_test = np.array([0, 0, 1, 1])  # no "fox"
    y_pred = np.array([0, 2, 1, 1])  # one "fox" predicted anyway
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = evaluate(y_test, y_pred, CLASS_NAMES)
    assert list(scores.confusion.index) == CLASS_NAMES
    assert list(scores.confusion.columns) == CLASS_NAMES
    assert scores.confusion.loc["cat", "fox"] == 1
    assert scores.report.loc["fox", "support"] == 0
    assert {"cat", "dog", "fox", "macro avg", "weighted avg"} <= set(scores.report.index)
    # Mean recall over the classes that are in the test split, as sklearn defines it.
    assert scores.balanced_accuracy == pytest.approx((0.5 + 1.0) / 2)
    # F1 for cat (2/3), dog (1) and the wrongly predicted fox (0).
    assert scores.macro_f1 == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_class_neither_in_test_nor_predicted_does_not_lower_macro_f1():
    y_test = np.array([0, 0, 1, 1])
    scores = evaluate(y_test, y_test, CLASS_NAMES)
    assert scores.accuracy == scores.balanced_accuracy == scores.macro_f1 == 1.0
    assert scores.report.loc["fox", "support"] == 0


def test_evaluate_a_fitted_pipeline():
    X, y = make_blobs(n_samples=120, centers=3, n_features=4, random_state=0)
    result = fit_classifier(X[::2], y[::2], "logreg", param_grid={"C": [1.0]}, cv=3)
    scores = evaluate(y[1::2], result.estimator.predict(X[1::2]), CLASS_NAMES)
    assert isinstance(scores, Scores)
    assert scores.accuracy > 0.9
    assert scores.confusion.to_numpy().sum() == 60


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 1, 3], [0, 1, 1], "y_true holds labels outside 0..2"),
        ([0, 1, -1], [0, 1, 1], "y_true holds labels outside 0..2"),
        ([0, 1, 1], [0, 1, 5], "y_pred holds labels outside"),
        ([0.0, 1.0, 1.0], [0, 1, 1], "integer class indices"),
        ([0, 1], [0, 1, 1], "one label per label of y_true"),
    ],
)
def test_bad_labels_are_rejected(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        evaluate(y_true, y_pred, CLASS_NAMES)


def test_class_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        evaluate([0, 1], [0, 1], ["a", "a"])

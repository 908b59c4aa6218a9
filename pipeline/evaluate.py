"""Scores a fitted classifier on the held-out test split, once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    recall_score,
)

from ..features.core.errors import InputError
from .classifiers import check_features

__all__ = ["Scores", "check_labels", "evaluate"]


@dataclass(frozen=True)
class Scores:
    """Test-split scores of one classifier.

    Attributes:
        accuracy: Fraction of correct predictions.
        balanced_accuracy: Mean recall over the classes present in ``y_test``.
        macro_f1: Mean F1 over the classes present in ``y_test`` or predicted.
        report: ``classification_report`` as a DataFrame: one row per class name
            (absent classes have support 0), then the "macro avg" and "weighted avg"
            rows, which average over all ``class_names``.
        confusion: Counts, rows are true and columns predicted class names.
        y_pred: Predicted integer labels, shape ``(n_samples,)``.
    """

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    report: pd.DataFrame
    confusion: pd.DataFrame
    y_pred: np.ndarray

    def as_dict(self) -> dict[str, float]:
        """Returns the scalar metrics, e.g. for a JSON sidecar or a results table."""
        return {
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
        }


def check_labels(y: Any, class_names: Sequence[str], *, name: str = "y") -> np.ndarray:
    """Checks that labels are integer indices into ``class_names``.

    Args:
        y: Labels, shape ``(n_samples,)``.
        class_names: Names of the classes; label ``i`` means ``class_names[i]``.
        name: Argument name used in error messages.

    Returns:
        ``y`` as an integer numpy array.

    Raises:
        InputError: (a ``ValueError``) If ``y`` is not 1-D or holds anything but
            ``0 .. len(class_names) - 1``.
    """
    y = np.asarray(y)
    n_classes = len(class_names)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
        raise InputError(
            f"{name} must be a 1-D array of integer class indices. "
            f"Received: {name} with shape {y.shape} and dtype {y.dtype}"
        )
    outside = np.setdiff1d(y, np.arange(n_classes))
    if outside.size:
        raise InputError(
            f"{name} holds labels outside 0..{n_classes - 1}, the indices of class_names; "
            "encode labels as positions in class_names. "
            f"Received: {name} with unexpected labels {outside[:10].tolist()}"
        )
    return y.astype(np.int64, copy=False)


def evaluate(
    estimator: Any, X_test: Any, y_test: Any, class_names: Sequence[str]
) -> Scores:
    """Predicts the test split and scores the predictions.

    Call this once per classifier, after hyperparameters were chosen on the
    training split. Classes missing from ``y_test`` are handled without warnings.

    Args:
        estimator: A fitted estimator predicting integer class indices.
        X_test: Test features, shape ``(n_samples, n_features)``.
        y_test: True labels, integer indices into ``class_names``.
        class_names: Names of all classes, in label order.

    Returns:
        The :class:`Scores`.

    Raises:
        InputError: (a ``ValueError``) If the features are malformed or
            non-finite, the lengths differ, or a true or predicted label is not
            an index into ``class_names``.
    """
    class_names = [str(name) for name in class_names]
    if not class_names or len(set(class_names)) != len(class_names):
        raise InputError(
            f"class_names must be non-empty and unique. Received: class_names={class_names!r}"
        )
    X_test = check_features(X_test, name="X_test")
    y_test = check_labels(y_test, class_names, name="y_test")
    if y_test.shape[0] != X_test.shape[0]:
        raise InputError(
            "y_test must have one label per row of X_test. "
            f"Received: X_test with shape {X_test.shape}, y_test with shape {y_test.shape}"
        )
    y_pred = check_labels(estimator.predict(X_test), class_names, name="predicted labels")
    labels = np.arange(len(class_names))
    report = classification_report(
        y_test,
        y_pred,
        labels=labels,
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )
    return Scores(
        accuracy=float(accuracy_score(y_test, y_pred)),
        # Mean recall over the true classes: sklearn's balanced accuracy, minus its
        # warning when a class is predicted but absent from the test split.
        balanced_accuracy=float(
            recall_score(
                y_test, y_pred, labels=np.unique(y_test), average="macro", zero_division=0
            )
        ),
        macro_f1=float(f1_score(y_test, y_pred, average="macro", zero_division=0)),
        report=pd.DataFrame({k: v for k, v in report.items() if isinstance(v, dict)}).T,
        confusion=pd.DataFrame(
            confusion_matrix(y_test, y_pred, labels=labels),
            index=pd.Index(class_names, name="true"),
            columns=pd.Index(class_names, name="predicted"),
        ),
        y_pred=y_pred,
    )

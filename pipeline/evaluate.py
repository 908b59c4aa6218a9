"""Scores of the held-out test split, once per classifier: accuracy, balanced accuracy, macro F1, report, confusion."""

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

from ..core.errors import InputError

__all__ = ["Scores", "check_labels", "evaluate"]


@dataclass(frozen=True)
class Scores:
    """Test-split scores of one classifier.

    Attributes:
        accuracy: Fraction of correct predictions.
        balanced_accuracy: Mean recall over the classes present in ``y_true``.
        macro_f1: Mean F1 over the classes present in ``y_true`` or predicted.
        report: ``classification_report`` as a DataFrame: one row per class name
            (absent classes have support 0), then the "macro avg" and "weighted avg"
            rows, which average over all ``class_names``.
        confusion: Counts, rows are true and columns predicted class names.
        y_pred: Predicted integer labels, shape ``(n_samples,)``.
        n_unreadable: Test images that could not be decoded and were left out
            (`layerprobe.pipeline.finetune.evaluate_model`; 0 for features).
    """

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    report: pd.DataFrame
    confusion: pd.DataFrame
    y_pred: np.ndarray
    n_unreadable: int = 0

    @property
    def n_test(self) -> int:
        """The samples scored."""
        return len(self.y_pred)

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


def evaluate(y_true: Any, y_pred: Any, class_names: Sequence[str]) -> Scores:
    """Scores predictions of the held-out test split, as scikit-learn metrics do: ``(y_true, y_pred)``.

    Call this once per classifier, after hyperparameters were chosen on the
    training split. Classes missing from ``y_true`` are handled without warnings.

    Args:
        y_true: True labels, integer indices into ``class_names``.
        y_pred: Predicted labels, integer indices into ``class_names``.
        class_names: Names of all classes, in label order.

    Returns:
        The :class:`Scores`.

    Raises:
        InputError: (a ``ValueError``) If the lengths differ, or a true or
            predicted label is not an index into ``class_names``.

    Example:
        >>> evaluate([0, 1, 1], [0, 1, 0], ["cat", "dog"]).accuracy
        0.6666666666666666
    """
    class_names = [str(name) for name in class_names]
    if not class_names or len(set(class_names)) != len(class_names):
        raise InputError(
            f"class_names must be non-empty and unique. Received: class_names={class_names!r}"
        )
    y_true = check_labels(y_true, class_names, name="y_true")
    y_pred = check_labels(y_pred, class_names, name="y_pred")
    if y_true.shape != y_pred.shape:
        raise InputError(
            "y_pred must have one label per label of y_true. "
            f"Received: y_true with shape {y_true.shape}, y_pred with shape {y_pred.shape}"
        )
    labels = np.arange(len(class_names))
    report = classification_report(
        y_true,
        y_pred,
        labels=labels,
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )
    return Scores(
        accuracy=float(accuracy_score(y_true, y_pred)),
        # Mean recall over the true classes: sklearn's balanced accuracy, minus its
        # warning when a class is predicted but absent from the test split.
        balanced_accuracy=float(
            recall_score(
                y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0
            )
        ),
        macro_f1=float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        report=pd.DataFrame({k: v for k, v in report.items() if isinstance(v, dict)}).T,
        confusion=pd.DataFrame(
            confusion_matrix(y_true, y_pred, labels=labels),
            index=pd.Index(class_names, name="true"),
            columns=pd.Index(class_names, name="predicted"),
        ),
        y_pred=y_pred,
    )

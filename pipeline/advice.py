"""Which transfer mode to use, read off a run's results table.

Two facts decide it (the classic transfer-learning guidance):

* **Regime**: how many training samples each class has. Below
  `SMALL_DATASET_SAMPLES_PER_CLASS` (1000, a little under ImageNet's ~1,300
  images per class, the data the backbones were trained on) finetuning
  millions of weights overfits, so frozen features with a linear classifier
  are the safer choice; above it, finetuning the top blocks pays off.
* **Similarity** of the target to the source task, measured rather than
  guessed: if the top layer scores within `SIMILARITY_TOLERANCE` (2 points)
  of the best layer, the source's most specific features still fit, so the
  data are similar; if an intermediate layer wins by more, the top layer is
  too specific to the source and the data are dissimilar.

Layers are compared by their cross-validated accuracy on the training split,
so the test split plays no part in the choice; test accuracy is quoted for
reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from layerprobe.features.checks import check_positive_int

__all__ = ["Advice", "SIMILARITY_TOLERANCE", "SMALL_DATASET_SAMPLES_PER_CLASS", "SimilarityVerdict", "recommend"]

SMALL_DATASET_SAMPLES_PER_CLASS = 1000
SIMILARITY_TOLERANCE = 0.02

_GROUP = ["backbone", "weights", "pooling"]


@dataclass(frozen=True)
class SimilarityVerdict:
    """Best layer versus top layer for one backbone (with its weights and pooling).

    Attributes:
        best: Results row of the best layer (its best classifier by cv_score).
        top: Results row of the deepest layer probed (its best classifier).
        gap: `best.cv_score - top.cv_score`, in accuracy (0.05 is 5 points).
        similar: Whether the top layer is within the tolerance of the best, or
            None when only one layer was probed.
    """

    best: pd.Series
    top: pd.Series
    gap: float
    similar: bool | None

    @property
    def label(self) -> str:
        return f"{self.best['backbone']} [weights {self.best['weights']}, {self.best['pooling']} pooling]"

    def describe(self) -> str:
        best, top = self.best, self.top
        if self.similar is None:
            return f"{self.label}: only {top['layer']} was probed, so similarity cannot be measured."
        head = (
            f"{self.label}: best layer {best['layer']} (depth {best['depth']:.2f}, {best['classifier']}) "
            f"cv {_pct(best['cv_score'])}, test {_pct(best['test_accuracy'])}; top layer {top['layer']} "
            f"cv {_pct(top['cv_score'])}, test {_pct(top['test_accuracy'])}"
        )
        if self.similar:
            return (
                f"{head}: the top layer is within {_points(self.gap)} of the best, so the target looks "
                f"similar to the source."
            )
        return (
            f"{head}: an intermediate layer wins by {_points(self.gap)}, so the target looks dissimilar "
            f"to the source (its top features are too source-specific)."
        )


@dataclass(frozen=True)
class Advice:
    """The recommended mode and the numbers behind it.

    Attributes:
        mode: `"frozen_top"` (a), `"frozen_intermediate"` (b), `"finetune"` (c),
            or `"none"` when the table has no frozen rows.
        samples_per_class: Mean training samples per class.
        small: Whether that is below `SMALL_DATASET_SAMPLES_PER_CLASS`.
        verdicts: Similarity per backbone, best first (random-weight baselines included).
        text: The recommendation in markdown, citing the table.
    """

    mode: str
    samples_per_class: float
    small: bool
    verdicts: tuple[SimilarityVerdict, ...]
    text: str


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _points(value: float) -> str:
    return f"{100 * value:.1f} points"


def _best_row(rows: pd.DataFrame) -> pd.Series:
    return rows.sort_values(["cv_score", "test_accuracy"], ascending=False, kind="stable").iloc[0]


def _verdict(rows: pd.DataFrame) -> SimilarityVerdict:
    best = _best_row(rows)
    top = _best_row(rows[rows["depth"] == rows["depth"].max()])
    gap = float(best["cv_score"] - top["cv_score"])
    similar = None if rows["layer"].nunique() < 2 else gap <= SIMILARITY_TOLERANCE
    return SimilarityVerdict(best=best, top=top, gap=gap, similar=similar)


def _regime_text(n_train: int, n_classes: int, smallest_class: int) -> str:
    per_class = n_train / n_classes
    size = "small" if per_class < SMALL_DATASET_SAMPLES_PER_CLASS else "large"
    return (
        f"Training split: {n_train} samples in {n_classes} classes ({per_class:.0f} per class, smallest "
        f"class {smallest_class}): a **{size}** dataset (threshold {SMALL_DATASET_SAMPLES_PER_CLASS} per "
        f"class, about ImageNet's ~1,300; below it finetuning millions of weights tends to overfit)."
    )


def _classifier_on(rows: pd.DataFrame, verdict: SimilarityVerdict, classifier: str) -> pd.Series:
    """The row of `classifier` on the verdict's best layer, or the best layer's best row."""
    best = verdict.best
    same = rows[
        (rows[_GROUP + ["layer"]] == best[_GROUP + ["layer"]]).all(axis=1) & (rows["classifier"] == classifier)
    ]
    return same.iloc[0] if len(same) else best


def _baseline_text(baseline: SimilarityVerdict, transferred: list[SimilarityVerdict]) -> str:
    """Random-weight rows have no source: compare them with the transferred features instead."""
    best = baseline.best
    text = (
        f"Random-weight baseline {baseline.label}: best layer {best['layer']} ({best['classifier']}) "
        f"cv {_pct(best['cv_score'])}, test {_pct(best['test_accuracy'])}."
    )
    same = [v for v in transferred if (v.best[["backbone", "pooling"]] == best[["backbone", "pooling"]]).all()]
    for verdict in same:
        gain = verdict.best["cv_score"] - best["cv_score"]
        direction = "above" if gain >= 0 else "below"
        text += f" The {verdict.best['weights']} weights' best layer is {_points(abs(gain))} {direction} it"
        if gain <= SIMILARITY_TOLERANCE:
            text += (
                ": here the source features are no better than random ones, so the transfer gains little; "
                "a source closer to the target, or trained on more data, would help"
            )
        text += "."
    return text


def _recommendation(chosen: SimilarityVerdict, frozen: pd.DataFrame, *, small: bool) -> tuple[str, str]:
    """(mode, markdown) of the recommendation for the chosen backbone."""
    best = chosen.best
    if not small:
        mode = "finetune"
        advice = (
            f"**Recommendation (c): finetune the top blocks of {best['backbone']} (weights {best['weights']}).** "
            f"There is enough data per class to adapt the backbone; the best frozen result to beat is "
            f"{best['classifier']} on {best['layer']}: test {_pct(best['test_accuracy'])}."
        )
    elif chosen.similar is False:
        mode = "frozen_intermediate"
        row = _classifier_on(frozen, chosen, "linear_svm")
        advice = (
            f"**Recommendation (b): a linear SVM on the intermediate layer {best['layer']} of {best['backbone']} "
            f"(weights {best['weights']}).** {row['classifier']} there: cv {_pct(row['cv_score'])}, test "
            f"{_pct(row['test_accuracy'])}, versus cv {_pct(chosen.top['cv_score'])} on the top layer "
            f"{chosen.top['layer']}."
        )
        if row["classifier"] != "linear_svm":
            advice += " (linear_svm was not in this run; add it to [classifiers] names to compare.)"
    else:
        mode = "frozen_top"
        top = chosen.top
        advice = (
            f"**Recommendation (a): {top['classifier']} on the frozen top layer {top['layer']} of "
            f"{top['backbone']} (weights {top['weights']}).** cv {_pct(top['cv_score'])}, test "
            f"{_pct(top['test_accuracy'])}."
        )
        if chosen.similar is None:
            advice += " (Similarity is unmeasured: probe intermediate layers too, e.g. layers = [\"stages\"].)"
    return mode, advice


def recommend(results: pd.DataFrame, *, n_train: int, n_classes: int, smallest_class: int) -> Advice:
    """Recommend a transfer mode from a results table.

    Args:
        results: The run's table (see `layerprobe.pipeline.results`); frozen rows are used,
            finetune/scratch rows are cited when present.
        n_train: Samples in the training split.
        n_classes: Number of classes.
        smallest_class: Training samples of the smallest class.

    Returns:
        An :class:`Advice`; `text` is markdown that cites the table's numbers.

    Raises:
        ValueError: If `n_train` or `n_classes` is not a positive integer.
    """
    check_positive_int("n_train", n_train)
    check_positive_int("n_classes", n_classes)
    per_class = n_train / n_classes
    small = per_class < SMALL_DATASET_SAMPLES_PER_CLASS
    lines = [_regime_text(n_train, n_classes, smallest_class)]
    frozen = results[results["mode"] == "frozen"]
    if frozen.empty:
        lines.append("The table has no frozen-feature rows, so layer similarity cannot be measured.")
        return Advice("none", per_class, small, (), "\n\n".join(lines))
    verdicts = sorted(
        (_verdict(rows) for _, rows in frozen.groupby(_GROUP, sort=False)),
        key=lambda verdict: -verdict.best["cv_score"],
    )
    transferred = [verdict for verdict in verdicts if verdict.best["weights"] != "none"]
    baselines = [verdict for verdict in verdicts if verdict.best["weights"] == "none"]
    if transferred:
        lines += ["Similarity, from the table (layers compared by cross-validated accuracy on the training split):"]
        lines += [f"- {verdict.describe()}" for verdict in transferred]
    lines += [f"- {_baseline_text(baseline, transferred)}" for baseline in baselines]
    mode, advice = _recommendation((transferred or verdicts)[0], frozen, small=small)
    lines.append(advice)
    trained = results[results["mode"].isin(["finetune", "scratch"])]
    for _, row in trained.iterrows():
        lines.append(
            f"- {row['mode']} {row['backbone']} (weights {row['weights']}): test {_pct(row['test_accuracy'])}."
        )
    return Advice(mode, per_class, small, tuple(verdicts), "\n\n".join(lines))

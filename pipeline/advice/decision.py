"""Which transfer mode to use, decided from a run's results table: data in, a typed `Advice` out (no text).

The rules (`layerprobe.pipeline.advice.text` says them in words):

* **One curve per backbone.** Each layer's quality and its noise come from one
  estimator, used the same way whatever else was fitted: the ridge probe's
  exact leave-one-out accuracy (`cv_score`, binomial SE `cv_se`), which every
  run fits on every layer (as screening rows, or beside the other classifiers
  without screening). A table without ridge rows on every layer (an older run,
  the calibration benchmark) uses the classifier that covers the most layers.
  So the same data and layers give the same layer and mode with screening on
  or off.
* **The best reading, unless a cheaper one ties it.** The candidates are each
  layer (scored by its curve row) and each multi-layer row (its nested CV:
  the layer selection repeated inside each fold, so it is unbiased and sets
  the bar like any row). The best candidate is recommended unless another one
  scores at most `NOISE_SE` of the best's standard errors below it (the
  one-standard-error rule, `uncertainty.ties_with_best`) *and* costs less at
  inference: fewer forward FLOPs to the deepest layer it reads
  (`forward_gflops`; depth within one backbone where unknown). Feature
  dimensions and the classifier cost nothing worth a point of accuracy: a
  probe on cached features runs in milliseconds. On the chosen layer the
  classifier with the best CV is recommended (the curve's ridge row included).
* **Pretrained first.** Rows of random-initialisation backbones
  (`weights == "none"`) are candidates only when no pretrained backbone has
  rows; they are the baseline of `worth_transferring`.
* **Mode.** With finetune or scratch rows that have a validation score,
  measurement decides: the best trained row replaces the frozen choice only if
  it is better by more than noise. Where the run scored both on the same
  held-out images of the training split (the part the training held out, the
  frozen classifier refitted without them: a `PairedScore`), McNemar's exact
  test on the images they disagree on decides (`PAIRED_ALPHA`); else the
  trained row's validation score is compared with the frozen row's CV (the
  one-standard-error rule). A trained row whose validation part lacks a class
  decides nothing (it is reported with a warning). Test scores decide nothing. Without them the mode is predicted from the training
  set's size: from `FINETUNE_SAMPLES_PER_CLASS` images per class finetuning the
  top blocks is advised, provided the curve's top layer ties its best layer
  (finetuning starts from the top features) and the backbone has pretrained
  weights (the `[finetune]` stage finetunes those only). Otherwise the frozen
  choice: `frozen_top` when it reads the top layer alone, else
  `frozen_intermediate`.
* **Failed rows.** A row whose CV or validation score is at or below the
  training split's majority-class rate is flagged and never recommended; a
  test score at the test split's rate is flagged only (`majority_flags`).

`FINETUNE_SAMPLES_PER_CLASS` and `NOISE_SE` were set from
`benchmarks/transfer_matrix.py`: see its section in `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Mapping

import numpy as np
import pandas as pd

from ...core.checks import check_positive_int
from ..uncertainty import binomial_se, ties_with_best, wilson_interval

__all__ = [
    "Advice",
    "CURVE_CLASSIFIER",
    "FINETUNE_SAMPLES_PER_CLASS",
    "NOISE_SE",
    "PAIRED_ALPHA",
    "PairedScore",
    "cheapest_within_noise",
    "is_multi",
    "layers_of",
    "majority_flags",
    "recommend",
    "score_and_se",
]

# Training images per class from which finetuning the top blocks (LP-FT) is advised when no trained rows were
# measured: the smallest size of the calibration, where finetuning already won every cell (benchmarks/RESULTS.md).
FINETUNE_SAMPLES_PER_CLASS = 10
NOISE_SE = 1.0  # a row within this many of the best row's standard errors below it ties the best
CURVE_CLASSIFIER = "ridge"  # the estimator of the layer curve (the screening probe)
PAIRED_ALPHA = 0.05  # a trained row beats the frozen choice on paired images when McNemar's exact p is below this

_GROUP = ["backbone", "weights", "pooling"]
_MULTI_PREFIX = "multi:"
_MODE_COST = {"frozen": 0, "finetune": 1, "scratch": 2}
_NUMERIC = ["depth", "feature_dim", "forward_gflops", "cv_score", "cv_se", "n_folds", "val_accuracy", "n_val",
            "test_accuracy", "test_ci_low", "test_ci_high", "n_train", "n_test", "logme"]
_TEXT = {"mode": "frozen", "backbone": "?", "weights": "?", "pooling": "-", "layer": "-", "classifier": "-",
         "row_kind": "final", "stage": None}
_AT_CHANCE = 1e-9  # "at or below" the majority-class rate, allowing for float rounding


@dataclass(frozen=True)
class PairedScore:
    """A trained row and the frozen choice scored on the same held-out images of the training split.

    The frozen classifier is refitted without those images (the part the trained
    row's training held out), so both are scored on images neither trained on.
    McNemar's exact test reads only the images on which they disagree.

    Attributes:
        n: Images both were scored on.
        trained_correct: Of those, how many the trained row got right.
        frozen_correct: How many the refitted frozen classifier got right.
        trained_only: Right by the trained row only.
        frozen_only: Right by the frozen classifier only.
        frozen_row: Index label of the frozen row that was refitted.
        missing_classes: Classes with no image in the held-out part (then it decides nothing).
    """

    n: int
    trained_correct: int
    frozen_correct: int
    trained_only: int
    frozen_only: int
    frozen_row: Hashable = None
    missing_classes: tuple[str, ...] = ()

    @property
    def decided(self) -> int:
        """The images that tell the two apart: those only one of them got right."""
        return self.trained_only + self.frozen_only

    @property
    def p_value(self) -> float:
        """McNemar's exact test (two-sided binomial test of `trained_only` among `decided` at 1/2); 1 if none."""
        from scipy.stats import binomtest

        return float(binomtest(self.trained_only, self.decided, 0.5).pvalue) if self.decided else 1.0

    @property
    def difference(self) -> float:
        """Trained minus frozen accuracy on the shared images."""
        return (self.trained_correct - self.frozen_correct) / self.n if self.n else math.nan

    @property
    def difference_se(self) -> float:
        """The paired standard error of `difference`: sqrt(b + c - (b - c)^2 / n) / n."""
        if not self.n:
            return math.nan
        b, c = self.trained_only, self.frozen_only
        return math.sqrt(max(b + c - (b - c) ** 2 / self.n, 0.0)) / self.n

    def beats(self) -> bool:
        """Whether the trained row is better by more than noise: more wins than losses, McNemar p < `PAIRED_ALPHA`."""
        return self.trained_only > self.frozen_only and self.p_value < PAIRED_ALPHA


@dataclass(frozen=True)
class Advice:
    """The recommended mode and the rows behind it (`layerprobe.pipeline.advice.text` words it).

    Attributes:
        mode: `"frozen_top"`, `"frozen_intermediate"`, `"finetune"`, `"scratch"`,
            or `"none"` when the table has nothing to compare.
        rule: Which rule decided: `"measured"` (trained rows were compared),
            `"size"` (predicted from samples per class) or `"none"`.
        row: The results row recommended (for `"finetune"` predicted from size
            alone, the best frozen row, the result to beat), or None.
        runner_up: The best row not chosen, or None.
        tied: Whether the runner-up ties the recommended row (the cheaper won).
        best: The reading that set the bar (the best curve or multi-layer row), or None.
        tied_rows: Every candidate row within noise of `best`.
        curve: Index labels of the rows of the layer curve of `best`'s backbone.
        curve_classifier: The estimator of that curve (`"ridge"`: leave-one-out).
        top: The curve's row at the backbone's deepest layer, or None.
        best_single: The curve's best row, or None.
        top_competitive: Whether `top` ties `best_single` (a good start for finetuning).
        why_not_finetune: Why finetuning, predicted by size, is not advised:
            `"top_too_weak"`, `"no_pretrained"` or None.
        baseline: The best curve row of the same backbone with random weights, or None.
        worth_transferring: False when the pretrained features are not better
            than random ones by more than noise; None without a random baseline.
        best_trained: The best finetune or scratch row with a validation score, or None.
        trained_beats: Whether `best_trained` beat the frozen choice by more than noise.
        frozen_choice: The frozen row chosen (whatever the mode), or None: what a paired comparison refits.
        paired: The `PairedScore` that decided between `best_trained` and the frozen choice, or None
            (then their training-split scores were compared unpaired).
        not_deciding: Index labels of trained rows whose validation part lacks a class: reported, not compared.
        samples_per_class, small, n_train, n_classes, smallest_class: The training split.
        threshold: Images per class from which finetuning is advised.
        n_se: The tie width, in the best row's standard errors.
        flags: Index label -> note, for rows at or below the majority-class rate.
        failed: Index labels of the rows flagged on training-split evidence (left out).
        table: The table the advice read (`prepare`d: every column present).
    """

    mode: str
    rule: str
    row: pd.Series | None
    runner_up: pd.Series | None
    tied: bool
    best: pd.Series | None
    tied_rows: pd.DataFrame
    curve: tuple
    curve_classifier: str | None
    top: pd.Series | None
    best_single: pd.Series | None
    top_competitive: bool | None
    why_not_finetune: str | None
    baseline: pd.Series | None
    worth_transferring: bool | None
    best_trained: pd.Series | None
    trained_beats: bool | None
    frozen_choice: pd.Series | None
    paired: PairedScore | None
    samples_per_class: float
    small: bool
    n_train: int
    n_classes: int
    smallest_class: int
    threshold: float
    n_se: float
    flags: Mapping[Hashable, str] = field(default_factory=dict)
    failed: frozenset = frozenset()
    not_deciding: Mapping[Hashable, tuple[str, ...]] = field(default_factory=dict)
    table: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)


# --------------------------------------------------------------------------- rows


def finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def is_multi(row: pd.Series) -> bool:
    return str(row["layer"]).startswith(_MULTI_PREFIX)


def layers_of(row: pd.Series) -> list[str]:
    """The layers a row reads: one, or those a multi-layer row ("multi:a+b") combines."""
    return str(row["layer"]).removeprefix(_MULTI_PREFIX).split("+") if is_multi(row) else [str(row["layer"])]


def prepare(results: pd.DataFrame) -> pd.DataFrame:
    """A copy with every column the advice reads (missing ones NaN or a default), Wilson intervals filled in."""
    table = results.copy()
    for column, default in _TEXT.items():
        if column not in table:
            table[column] = default
        elif default is not None:
            table[column] = table[column].fillna(default)  # so that rows compare equal on every grouping column
    for column in _NUMERIC:
        table[column] = pd.to_numeric(table[column], errors="coerce") if column in table else np.nan
    for index, row in table.iterrows():
        if not finite(row["test_ci_low"]) and finite(row["test_accuracy"]) and finite(row["n_test"]):
            table.loc[index, ["test_ci_low", "test_ci_high"]] = wilson_interval(row["test_accuracy"], int(row["n_test"]))
    return table


def score_and_se(row: pd.Series, score: str = "cv_score") -> tuple[float, float]:
    """`score` of a row and its SE: `cv_se` for `cv_score`, else binomial over `n_val` or `n_test`."""
    if score == "cv_score":
        return float(row["cv_score"]), float(row["cv_se"]) if finite(row["cv_se"]) else math.nan
    value = float(row[score])
    n = row["n_val" if score == "val_accuracy" else "n_test"]
    return value, binomial_se(value, int(n)) if finite(n) and n > 0 else math.nan


def ties(best: pd.Series, other: pd.Series, n_se: float, score: str = "cv_score") -> bool:
    """Whether `other` ties `best` by the one-standard-error rule (`ties_with_best`)."""
    return ties_with_best(*score_and_se(best, score), score_and_se(other, score)[0], n_se=n_se)


def same_group(rows: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    """The rows of `row`'s backbone, weights and pooling (those of these columns the table has)."""
    columns = [column for column in _GROUP if column in rows and column in row]
    return rows[(rows[columns] == row[columns]).all(axis=1)] if columns else rows


def _inference_cost(row: pd.Series, table: pd.DataFrame, *, flops: bool) -> tuple:
    """What a deployed row costs per image: mode first, then forward FLOPs (or, unknown, the deepest depth read)."""
    if flops:
        return (_MODE_COST.get(row["mode"], 3), float(row["forward_gflops"]))
    depths = same_group(table, row)
    depth = max((depths.loc[depths["layer"] == layer, "depth"].max() for layer in layers_of(row)), default=math.nan)
    return (_MODE_COST.get(row["mode"], 3), float(depth) if finite(depth) else math.inf)


def cheapest_within_noise(rows: pd.DataFrame, *, score: str = "cv_score", n_se: float = NOISE_SE,
                          table: pd.DataFrame | None = None) -> tuple[pd.Series, pd.Series, pd.DataFrame]:
    """The best row by `score`, the row recommended, and all rows that tie the best.

    A row ties the best when it scores at most `n_se` of the best row's standard
    errors below it (`ties_with_best`; SE: `cv_se` for `"cv_score"`, binomial on
    `n_val` for `"val_accuracy"`; unknown: exact ties only); the row's own SE
    plays no part. The best row is recommended unless a tied row is cheaper at
    inference (frozen before finetune before scratch, then fewer
    `forward_gflops`, or where some are unknown an earlier deepest layer); the
    cheapest such row is then recommended (among equally cheap ones, the better
    score). `table`: where depths of multi-layer rows are looked up (default `rows`).

    Raises:
        ValueError: If no row has a finite `score`.
    """
    scored = rows[pd.to_numeric(rows[score], errors="coerce").notna()]
    if scored.empty:
        raise ValueError(f"No row has a {score}; cannot compare. Received: {len(rows)} row(s)")
    spread = [score_and_se(row, score)[1] for _, row in scored.iterrows()]
    ordered = (scored.assign(_spread=np.nan_to_num(spread, nan=np.inf))
               .sort_values([score, "_spread"], ascending=[False, True], kind="stable").drop(columns="_spread"))
    best = ordered.iloc[0]
    tied = ordered[[ties(best, row, n_se, score) for _, row in ordered.iterrows()]]
    flops = "forward_gflops" in tied and pd.to_numeric(tied["forward_gflops"], errors="coerce").notna().all()
    lookup = rows if table is None else table
    costs = [_inference_cost(row, lookup, flops=flops) for _, row in tied.iterrows()]
    # A "combination" that kept one layer is that layer's ridge row again: among equally cheap rows, not it.
    one_layer_combination = [is_multi(row) and len(layers_of(row)) == 1 for _, row in tied.iterrows()]
    chosen = tied.iloc[min(range(len(tied)), key=lambda i: (costs[i], one_layer_combination[i], i))]
    return best, chosen, tied


def majority_flags(results: pd.DataFrame, *, cv_majority_rate: float | None = None,
                   test_majority_rate: float | None = None) -> dict[Hashable, str]:
    """Rows no better than answering the most frequent class for every image, with a note for the table.

    A row is flagged when its `test_accuracy` is at or below `test_majority_rate`
    (the test split's largest class over its size) or its `cv_score` or
    `val_accuracy` at or below `cv_majority_rate` (the same on the training
    split, whose validation part is stratified). A finetune or scratch row so
    flagged failed to train.

    Returns:
        Index label -> note, only for flagged rows; empty when both rates are None.
    """
    flags = {}
    for index, row in prepare(results).iterrows():
        low = [f"{name} {100 * row[column]:.1f}% ≤ {100 * rate:.1f}%" for name, column, rate in
               (("test", "test_accuracy", test_majority_rate), ("CV", "cv_score", cv_majority_rate),
                ("validation", "val_accuracy", cv_majority_rate))
               if rate is not None and finite(row[column]) and row[column] <= rate + _AT_CHANCE]
        if low:
            failed = "failed training: " if row["mode"] in ("finetune", "scratch") else ""
            flags[index] = f"{failed}at or below the majority class ({', '.join(low)})"
    return flags


# --------------------------------------------------------------------------- the layer curve


def curve_rows(group: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """One backbone's layer curve: one row per single layer, all of one estimator, and that estimator's name.

    The ridge probe where it has a row on every single layer of the group (every run fits it), else the
    classifier with rows on the most layers (the first in the table among equals).
    """
    single = group[[not is_multi(row) for _, row in group.iterrows()]]
    if single.empty:
        return single, None
    layers = single["layer"].nunique()
    coverage = single.groupby("classifier", sort=False)["layer"].nunique()
    name = CURVE_CLASSIFIER if coverage.get(CURVE_CLASSIFIER, 0) == layers else coverage.idxmax()
    rows = single[single["classifier"] == name]
    best_first = rows.sort_values("cv_score", ascending=False, kind="stable")
    return rows.loc[best_first.drop_duplicates("layer").index].sort_index(), name


def _top_row(curve: pd.DataFrame) -> pd.Series:
    """The curve's row at its deepest layer."""
    deepest = curve[curve["depth"] == curve["depth"].max()] if curve["depth"].notna().any() else curve.iloc[[-1]]
    return deepest.iloc[0]


def _best_single(curve: pd.DataFrame) -> pd.Series:
    return curve.sort_values(["cv_score", "depth"], ascending=[False, True], kind="stable").iloc[0]


def _readings(pool: pd.DataFrame, measured: pd.DataFrame) -> tuple[pd.DataFrame, dict[Hashable, pd.DataFrame]]:
    """The candidates, one row per reading (a layer's curve row, a multi-layer row), and each group's curve.

    The curves come from `measured`, every frozen row with a CV score (a layer at the majority-class rate is
    still a point of its curve); the candidates are the curve and multi-layer rows that are also in `pool`.
    """
    candidates, curves = [], {}
    for _, group in pool.groupby(_GROUP, sort=False):
        curve, _ = curve_rows(same_group(measured, group.iloc[0]))
        curves[group.index[0]] = curve
        candidates.append(curve[curve.index.isin(group.index)])
        candidates.append(group[[is_multi(row) for _, row in group.iterrows()]])
    return pd.concat(candidates), curves


def _classifier_on(reading: pd.Series, pool: pd.DataFrame) -> pd.Series:
    """The row to use for a reading: the best-CV row on its layer (the curve row included: the classifier costs
    nothing at inference, so the better one is used)."""
    if is_multi(reading):
        return reading
    on_layer = same_group(pool, reading)
    on_layer = on_layer[on_layer["layer"] == reading["layer"]]
    return on_layer.sort_values("cv_score", ascending=False, kind="stable").iloc[0]


# --------------------------------------------------------------------------- recommend


def recommend(
    results: pd.DataFrame,
    *,
    n_train: int,
    n_classes: int,
    smallest_class: int,
    largest_class: int | None = None,
    test_majority_rate: float | None = None,
    finetune_samples_per_class: float = FINETUNE_SAMPLES_PER_CLASS,
    n_se: float = NOISE_SE,
    paired: Mapping[Hashable, PairedScore] | None = None,
) -> Advice:
    """Recommend a transfer mode from a results table (see the module docstring for the rules).

    Args:
        results: The run's table (see `layerprobe.pipeline.results`).
        n_train: Samples in the training split.
        n_classes: Number of classes.
        smallest_class: Training samples of the smallest class.
        largest_class: Training samples of the largest class: CV scores at or
            below `largest_class / n_train` are flagged. None: not checked.
        test_majority_rate: The test split's largest class over its size: test
            accuracies at or below it are flagged. None: not checked.
        finetune_samples_per_class: Images per class from which finetuning is
            advised when the table has no trained rows (`inf`: never).
        n_se: How many of the best row's standard errors below it make a tie.
        paired: Trained row's index label -> its `PairedScore` against the frozen
            choice (`Advice.frozen_choice` of an advice without them): a paired
            score against that row decides; a validation part that lacks a class
            keeps its row out of the comparison.

    Returns:
        An :class:`Advice` (`layerprobe.pipeline.advice.advice_text` words it).

    Raises:
        ValueError: If `n_train` or `n_classes` is not a positive integer.

    Example:
        >>> advice = recommend(table, n_train=500, n_classes=5, smallest_class=100)  # doctest: +SKIP
        >>> advice.mode, advice.row["layer"]  # doctest: +SKIP
        ('frozen_intermediate', 'block3_pool')
    """
    check_positive_int("n_train", n_train)
    check_positive_int("n_classes", n_classes)
    per_class = n_train / n_classes
    table = prepare(results)
    train_rate = None if largest_class is None else largest_class / n_train
    flags = majority_flags(table, cv_majority_rate=train_rate, test_majority_rate=test_majority_rate)
    failed = frozenset(majority_flags(table, cv_majority_rate=train_rate))  # training-split evidence: left out
    usable = table[~table.index.isin(list(failed))]
    frozen = usable[(usable["mode"] == "frozen") & usable["cv_score"].notna()]
    pool = frozen[frozen["weights"] != "none"]
    pool = pool if not pool.empty else frozen
    paired = dict(paired or {})
    not_deciding = {index: score.missing_classes for index, score in paired.items() if score.missing_classes}
    trained = usable[usable["mode"].isin(["finetune", "scratch"]) & usable["val_accuracy"].notna()
                     & ~usable.index.isin(list(not_deciding))]
    common = dict(samples_per_class=per_class, small=per_class < finetune_samples_per_class, n_train=n_train,
                  n_classes=n_classes, smallest_class=smallest_class, threshold=finetune_samples_per_class,
                  n_se=n_se, flags=flags, failed=failed, table=table, not_deciding=not_deciding)
    frozen_part = dict(row=None, runner_up=None, tied=False, best=None, tied_rows=table.iloc[:0], curve=(),
                       curve_classifier=None, top=None, best_single=None, top_competitive=None, baseline=None,
                       worth_transferring=None)
    if pool.empty and trained.empty:
        return Advice("none", "none", why_not_finetune=None, best_trained=None, trained_beats=None,
                      frozen_choice=None, paired=None, **{**frozen_part, **common})
    frozen_mode, chosen, why_not = None, None, None
    if not pool.empty:
        readings, curves = _readings(pool, table[(table["mode"] == "frozen") & table["cv_score"].notna()])
        best, chosen_reading, tied = cheapest_within_noise(readings, n_se=n_se, table=table)
        chosen = _classifier_on(chosen_reading, pool)
        curve = curves[same_group(pool, best).index[0]]
        top, single = _top_row(curve), _best_single(curve)
        competitive = ties(single, top, n_se)
        random_rows = frozen[(frozen["weights"] == "none") & (frozen["backbone"] == best["backbone"])
                             & (frozen["pooling"] == best["pooling"])]
        random_curve = curve_rows(random_rows)[0]
        baseline = _best_single(random_curve) if best["weights"] != "none" and len(random_curve) else None
        others = readings[readings.index != chosen_reading.name].sort_values("cv_score", ascending=False,
                                                                              kind="stable")
        runner_up = None if others.empty else _classifier_on(others.iloc[0], pool)
        frozen_mode = "frozen_top" if layers_of(chosen) == [str(top["layer"])] else "frozen_intermediate"
        frozen_part = dict(
            row=chosen, runner_up=runner_up, best=best, tied_rows=tied,
            tied=runner_up is not None and others.index[0] in tied.index, curve=tuple(curve.index),
            curve_classifier=str(curve["classifier"].iloc[0]), top=top, best_single=single,
            top_competitive=competitive, baseline=baseline,
            worth_transferring=None if baseline is None else not ties(best, baseline, n_se),
        )
        if per_class >= finetune_samples_per_class:
            why_not = ("top_too_weak" if not competitive else
                       "no_pretrained" if chosen["weights"] == "none" else None)
    predicted = "finetune" if per_class >= finetune_samples_per_class and why_not is None else "frozen"
    if trained.empty:
        mode = "finetune" if predicted == "finetune" else frozen_mode
        return Advice(mode, "size", why_not_finetune=why_not, best_trained=None, trained_beats=None,
                      frozen_choice=chosen, paired=None, **{**frozen_part, **common})
    best_trained = cheapest_within_noise(trained, score="val_accuracy", n_se=n_se)[0]
    pair = paired.get(best_trained.name)
    if pair is not None and (chosen is None or pair.frozen_row != chosen.name or not pair.n):
        pair = None  # scored against another frozen row (or on no image): not this comparison
    if chosen is None:
        beats = True
    elif pair is not None:
        beats = pair.beats()
    else:
        trained_score, trained_se = score_and_se(best_trained, "val_accuracy")
        beats = trained_score > chosen["cv_score"] and not ties_with_best(trained_score, trained_se,
                                                                          chosen["cv_score"], n_se=n_se)
    if beats:
        frozen_part = {**frozen_part, "row": best_trained, "runner_up": chosen, "tied": False}
        mode = str(best_trained["mode"])
    else:
        frozen_part = {**frozen_part, "runner_up": best_trained}
        mode = frozen_mode
    return Advice(mode, "measured", why_not_finetune=why_not, best_trained=best_trained, trained_beats=beats,
                  frozen_choice=chosen, paired=pair, **{**frozen_part, **common})

"""Which transfer mode to use, read off a run's results table, with the evidence and its uncertainty.

The advice recommends what the table measured best, not a fixed recipe:

* **Layer and classifier** come from cross-validation on the training split
  (`cv_score`, mean over folds, with `cv_se`, the standard error over folds);
  test accuracy never chooses anything and is quoted with its 95 % Wilson
  interval. Screening rows (`row_kind == "screening"`, the fast ridge probe over
  every layer) are the evidence curve; final rows, when present, decide.
* **Ties go to the cheaper option.** Every row whose score is within noise of
  the best (`within_noise`: at most `NOISE_SE` = 2 combined standard errors
  below it) counts as tied, and among the tied rows the cheapest wins, in this
  order: frozen before finetune before scratch; then fewer feature dimensions;
  then an earlier (shallower) layer; then a cheaper classifier (ridge, then
  logreg and linear_svm, then the rest).
* **Mode.** When the table has finetune or scratch rows, measured results
  decide: the best trained row replaces the frozen choice only if it beats it by
  more than noise. Those rows have no CV score, so modes are compared on test
  accuracy (binomial SEs) unless every compared row has a `cv_score`. Without
  trained rows the mode is predicted from the training set's size: at least
  `FINETUNE_SAMPLES_PER_CLASS` images per class advises finetuning the top
  blocks, provided the top layer is the best frozen layer or within noise of
  it (finetuning starts from the top features; when an intermediate layer beats
  them by more than noise, as for an ImageNet network read at 32x32 pixels, the
  frozen intermediate layer is advised); otherwise the frozen choice
  (`frozen_top` when it is the deepest layer, else `frozen_intermediate`).
* **Random features.** A pretrained backbone whose best layer does not beat the
  random-initialisation baseline (`weights == "none"`, same backbone) by more
  than noise is flagged as not worth transferring from (compared best row
  against best row). The flag does not change the mode by itself: in the
  calibration table finetuning still beat training from scratch in such cells.
* **LogME** per layer (the `logme` column) is cited as a second opinion on the
  best layer.

`FINETUNE_SAMPLES_PER_CLASS` was set from `benchmarks/transfer_matrix.py` (3
seeds x similar/dissimilar CIFAR-10 halves x 10/100/1,000 images per class, all
four modes): see the transfer-matrix section of `benchmarks/RESULTS.md` for the
table and the agreement rate. Older tables without `cv_se`, `n_test`,
`feature_dim`, `logme` or `row_kind` still work: missing spreads are reported
as unknown and only exact ties are then ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..features.core.checks import check_positive_int
from .uncertainty import binomial_se, wilson_interval, within_noise

__all__ = [
    "Advice",
    "FINETUNE_SAMPLES_PER_CLASS",
    "NOISE_SE",
    "SMALL_DATASET_SAMPLES_PER_CLASS",
    "cheapest_within_noise",
    "recommend",
]

# Training images per class from which finetuning the top blocks (LP-FT) is advised when no trained rows were
# measured: the smallest size of the calibration, where finetuning already won every cell (benchmarks/RESULTS.md).
FINETUNE_SAMPLES_PER_CLASS = 10
SMALL_DATASET_SAMPLES_PER_CLASS = FINETUNE_SAMPLES_PER_CLASS  # the former name, kept for imports
NOISE_SE = 2.0  # two scores within this many combined standard errors are a tie
LOGME_TIE = 1e-3  # LogME values this close (relative) do not rank layers

_GROUP = ["backbone", "weights", "pooling"]
_MODE_COST = {"frozen": 0, "finetune": 1, "scratch": 2}
_CLASSIFIER_COST = {"ridge": 0, "logreg": 1, "linear_svm": 1}
_NUMERIC = ["depth", "feature_dim", "cv_score", "cv_se", "n_folds", "test_accuracy", "test_ci_low", "test_ci_high",
            "n_train", "n_test", "logme"]
_TEXT = {"mode": "frozen", "backbone": "?", "weights": "?", "pooling": "-", "layer": "-", "classifier": "-",
         "row_kind": "final", "stage": None}


@dataclass(frozen=True)
class Advice:
    """The recommended mode and the numbers behind it.

    Attributes:
        mode: `"frozen_top"`, `"frozen_intermediate"`, `"finetune"`, `"scratch"`,
            or `"none"` when the table has nothing to compare.
        samples_per_class: Mean training samples per class.
        small: Whether that is below `FINETUNE_SAMPLES_PER_CLASS`.
        row: The results row recommended (for `"finetune"` predicted from size
            alone, the best frozen row, the result to beat), or None.
        runner_up: The best row not chosen, or None.
        tied: Whether the runner-up is within noise of the best (the cheaper won).
        worth_transferring: False when the pretrained features are not better
            than random ones by more than noise; None without a random baseline.
        rule: Which rule decided: `"measured"` (trained rows were compared) or
            `"size"` (predicted from samples per class).
        evidence: The evidence lines, in markdown.
        text: The recommendation in markdown: a short explanation, then the evidence.
    """

    mode: str
    samples_per_class: float
    small: bool
    row: pd.Series | None
    runner_up: pd.Series | None
    tied: bool
    worth_transferring: bool | None
    rule: str
    evidence: tuple[str, ...]
    text: str


# --------------------------------------------------------------------------- formatting


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _pct(value) -> str:
    return f"{100 * float(value):.1f}%" if _finite(value) else "n/a"


def _cv_text(row: pd.Series) -> str:
    """`cv 86.0% ± 1.2 (SE over 5 folds)`, or without the ± when the spread is unknown."""
    if not _finite(row.get("cv_score")):
        return "no CV score"
    if _finite(row.get("cv_se")):
        folds = f" over {int(row['n_folds'])} folds" if _finite(row.get("n_folds")) else ""
        return f"CV {_pct(row['cv_score'])} ± {100 * row['cv_se']:.1f} (SE{folds})"
    return f"CV {_pct(row['cv_score'])} (spread unknown)"


def _test_text(row: pd.Series) -> str:
    """`test 85.0% (95% CI 79.1–89.4%, n=150)`."""
    if not _finite(row.get("test_accuracy")):
        return "no test score"
    if _finite(row.get("test_ci_low")) and _finite(row.get("test_ci_high")):
        n = f", n={int(row['n_test'])}" if _finite(row.get("n_test")) else ""
        return (f"test {_pct(row['test_accuracy'])} (95% CI {100 * row['test_ci_low']:.1f}–"
                f"{100 * row['test_ci_high']:.1f}%{n})")
    return f"test {_pct(row['test_accuracy'])}"


def _depth_text(row, before: str = "", after: str = "") -> str:
    """"depth 0.77" for one layer; nothing for a multi-layer row, which has no single depth."""
    return f"{before}depth {float(row['depth']):.2f}{after}" if _finite(row.get("depth")) else ""


def _name(row: pd.Series) -> str:
    if row["mode"] != "frozen":
        return f"{row['mode']} {row['backbone']} (weights {row['weights']})"
    return f"{row['classifier']} on {row['layer']} of {row['backbone']} (weights {row['weights']}{_depth_text(row, ', ')})"


def _scores(row: pd.Series) -> str:
    return f"{_cv_text(row)}, {_test_text(row)}" if _finite(row.get("cv_score")) else _test_text(row)


# --------------------------------------------------------------------------- table handling


def _prepare(results: pd.DataFrame) -> pd.DataFrame:
    """A copy with every column the advice reads (missing ones NaN or a default), Wilson intervals filled in."""
    table = results.copy()
    for column, default in _TEXT.items():
        if column not in table:
            table[column] = default
    table["row_kind"] = table["row_kind"].fillna("final")
    for column in _NUMERIC:
        table[column] = pd.to_numeric(table[column], errors="coerce") if column in table else np.nan
    for index, row in table.iterrows():
        if not _finite(row["test_ci_low"]) and _finite(row["test_accuracy"]) and _finite(row["n_test"]):
            table.loc[index, ["test_ci_low", "test_ci_high"]] = wilson_interval(row["test_accuracy"], int(row["n_test"]))
    return table


def _score_and_se(row: pd.Series, score: str) -> tuple[float, float]:
    if score == "cv_score":
        return float(row["cv_score"]), float(row["cv_se"]) if _finite(row["cv_se"]) else math.nan
    value = float(row["test_accuracy"])
    return value, binomial_se(value, int(row["n_test"])) if _finite(row["n_test"]) else math.nan


def _cost(row: pd.Series) -> tuple:
    """The cheapness ordering: frozen < finetune < scratch, fewer dimensions, earlier layer, cheaper classifier."""
    return (
        _MODE_COST.get(row["mode"], 3),
        float(row["feature_dim"]) if _finite(row["feature_dim"]) else math.inf,
        float(row["depth"]) if _finite(row["depth"]) else math.inf,
        _CLASSIFIER_COST.get(row["classifier"], 2),
    )


def cheapest_within_noise(rows: pd.DataFrame, *, score: str = "cv_score",
                          n_se: float = NOISE_SE) -> tuple[pd.Series, pd.Series, pd.DataFrame]:
    """The best row by `score`, the cheapest row within noise of it, and all rows within noise.

    A row is within noise when `within_noise(best, best_se, row, row_se, n_se=n_se)`:
    its score is at most `n_se` combined standard errors below the best (SE: `cv_se`
    for `"cv_score"`, the binomial SE on `n_test` for `"test_accuracy"`; unknown
    SEs count as zero). The cheapest is the first in this order: frozen, then
    finetune, then scratch; fewer `feature_dim`; smaller `depth`; ridge before
    logreg and linear_svm before other classifiers; ties keep the better score.

    Raises:
        ValueError: If no row has a finite `score`.
    """
    scored = rows[pd.to_numeric(rows[score], errors="coerce").notna()]
    if scored.empty:
        raise ValueError(f"No row has a {score}; cannot compare. Received: {len(rows)} row(s)")
    ordered = scored.sort_values([score, "test_accuracy"], ascending=False, kind="stable")
    best = ordered.iloc[0]
    best_score, best_se = _score_and_se(best, score)
    tied = ordered[[within_noise(best_score, best_se, *_score_and_se(row, score), n_se=n_se)
                    for _, row in ordered.iterrows()]]
    chosen = min((row for _, row in tied.iterrows()), key=_cost)
    return best, chosen, tied


def _layers_of(row: pd.Series) -> list[str]:
    """The layers a row reads: one, or those a multi-layer row ("multi:a+b") combines."""
    layer = str(row["layer"])
    return layer.removeprefix("multi:").split("+") if layer.startswith("multi:") else [layer]


def _is_top(row: pd.Series, group: pd.DataFrame) -> bool:
    """Whether `row` reads the top layer alone (a multi-layer row that selected only it counts)."""
    return _layers_of(row) == [_top_row(group)["layer"]]


def _top_row(group: pd.DataFrame) -> pd.Series:
    """The best-scoring row (by CV) of the group's deepest single layer."""
    single = group[~group["layer"].astype(str).str.startswith("multi:")]
    single = single if not single.empty else group
    return single[single["depth"] == single["depth"].max()].sort_values("cv_score", ascending=False).iloc[0]


def _top_is_competitive(group: pd.DataFrame, best: pd.Series, n_se: float) -> bool:
    """Whether the top layer is the best frozen layer or within noise of it: a good start for finetuning."""
    top = _top_row(group)
    return _is_top(best, group) or within_noise(*_score_and_se(best, "cv_score"), *_score_and_se(top, "cv_score"),
                                                 n_se=n_se)


def _same_group(rows: pd.DataFrame, row: pd.Series, columns=_GROUP) -> pd.DataFrame:
    return rows[(rows[columns] == row[columns]).all(axis=1)]


# --------------------------------------------------------------------------- evidence


def _layer_evidence(group: pd.DataFrame, best: pd.Series, chosen: pd.Series, tied: pd.DataFrame,
                    n_se: float) -> list[str]:
    lines = []
    top = _top_row(group)
    gap = best["cv_score"] - top["cv_score"]
    if _is_top(best, group):
        lines.append(f"The top layer {top['layer']} scores best ({_cv_text(best)}): the source's most specific "
                     f"features fit the target, a sign that it is similar to the source.")
    else:
        noise = within_noise(*_score_and_se(best, "cv_score"), *_score_and_se(top, "cv_score"), n_se=n_se)
        lines.append(
            f"The best layer is {best['layer']} ({_depth_text(best, '', ', ')}{_cv_text(best)}); the top layer "
            f"{top['layer']} scores {_cv_text(top)}, {100 * gap:.1f} points lower"
            + (", within noise." if noise else
               ": the top features are too specific to the source, a sign that the target is dissimilar.")
        )
    others = tied[tied.index != chosen.name]
    if best.name != chosen.name:
        lines.append(f"{len(tied)} configurations are within {n_se:g} SE of the best ({_name(best)}); the "
                     f"cheapest of them is chosen: {_name(chosen)}.")
    elif len(others):
        lines.append(f"{len(others)} other configuration(s) are within noise of it; it is also the cheapest.")
    classifiers = group[group["layer"] == chosen["layer"]]
    if classifiers["classifier"].nunique() > 1:
        listed = ", ".join(f"{row['classifier']} {_cv_text(row)}"
                           for _, row in classifiers.sort_values("cv_score", ascending=False).iterrows())
        lines.append(f"Classifiers on {chosen['layer']}: {listed}.")
    if group["logme"].notna().sum() >= 2:
        per_layer = group.dropna(subset=["logme"]).drop_duplicates("layer").sort_values("depth")
        leader = per_layer.loc[per_layer["logme"].idxmax()]
        spread = per_layer["logme"].max() - per_layer["logme"].min()
        if spread <= LOGME_TIE * max(1.0, abs(leader["logme"])):
            lines.append(f"LogME is the same for every layer ({leader['logme']:.3f}): on this training set it does "
                         f"not tell the layers apart (the evidence is at its no-signal value), so it is no evidence "
                         f"either way.")
        else:
            agree = "agrees with" if leader["layer"] in _layers_of(best) else "differs from"
            lines.append(f"LogME (evidence of a linear model, higher is better) ranks {leader['layer']} first "
                         f"({leader['logme']:.3f}); that {agree} cross-validation's best layer {best['layer']}.")
    return lines


def _screening_evidence(screening: pd.DataFrame) -> list[str]:
    lines = []
    for _, group in screening.groupby(_GROUP, sort=False):
        if group["cv_score"].notna().sum() == 0:
            continue
        peak = group.loc[group["cv_score"].idxmax()]
        lines.append(f"Fast probe curve ({peak['classifier']}, {group['layer'].nunique()} layers of "
                     f"{peak['backbone']} [{peak['weights']}]): peaks at {peak['layer']} ({_depth_text(peak, '', ', ')}"
                     f"{_cv_text(peak)}).")
    return lines


def _baseline_evidence(chosen: pd.Series, random_rows: pd.DataFrame, n_se: float) -> tuple[bool | None, list[str]]:
    """The best transferred row (`chosen`) against the best random-features row of the same backbone."""
    same = random_rows[random_rows["backbone"] == chosen["backbone"]]
    if same.empty or chosen["weights"] == "none":
        return None, []
    baseline = same.sort_values("cv_score", ascending=False).iloc[0]
    worth = not within_noise(*_score_and_se(chosen, "cv_score"), *_score_and_se(baseline, "cv_score"), n_se=n_se)
    gain = chosen["cv_score"] - baseline["cv_score"]
    line = (f"Random-initialisation baseline (same backbone, weights none): best {baseline['layer']} "
            f"{_cv_text(baseline)}; the {chosen['weights']} features are {100 * gain:+.1f} points from it")
    if worth:
        return True, [line + ", more than noise: the pretrained weights help."]
    return False, [line + f", **not more than noise ({n_se:g} SE): this pretrained backbone is not worth "
                   f"transferring from** as frozen features (they are no better than random ones). A source closer "
                   f"to the target would serve better; with enough data, compare finetuning with training from "
                   f"scratch."]


# --------------------------------------------------------------------------- recommend


def _predicted(per_class: float, threshold: float) -> str:
    return "finetune" if per_class >= threshold else "frozen"


def recommend(
    results: pd.DataFrame,
    *,
    n_train: int,
    n_classes: int,
    smallest_class: int,
    finetune_samples_per_class: float = FINETUNE_SAMPLES_PER_CLASS,
    n_se: float = NOISE_SE,
) -> Advice:
    """Recommend a transfer mode from a results table (see the module docstring for the rules).

    Args:
        results: The run's table (see `layerprobe.pipeline.results`). Frozen rows
            choose the layer and classifier by `cv_score`; finetune and scratch
            rows, when present, decide the mode by measurement; `weights == "none"`
            rows are the random-features baseline.
        n_train: Samples in the training split.
        n_classes: Number of classes.
        smallest_class: Training samples of the smallest class.
        finetune_samples_per_class: Images per class from which finetuning is
            advised when the table has no trained rows (`inf`: never).
        n_se: How many combined standard errors make a tie.

    Returns:
        An :class:`Advice`; `text` explains it in a few sentences and lists the evidence.

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
    small = per_class < finetune_samples_per_class
    table = _prepare(results)
    regime = (f"Training split: {n_train} samples in {n_classes} classes ({per_class:.0f} per class, smallest class "
              f"{smallest_class}); from {finetune_samples_per_class:g} per class finetuning is advised "
              f"(threshold calibrated in benchmarks/RESULTS.md, transfer matrix).")
    frozen = table[(table["mode"] == "frozen") & table["cv_score"].notna()]
    screening = frozen[frozen["row_kind"] == "screening"]
    final = frozen[frozen["row_kind"] != "screening"]
    candidates = final if not final.empty else screening
    transferred = candidates[candidates["weights"] != "none"]
    random_rows = candidates[candidates["weights"] == "none"]
    pool = transferred if not transferred.empty else candidates
    trained = table[table["mode"].isin(["finetune", "scratch"]) & table["test_accuracy"].notna()]
    if pool.empty and trained.empty:
        text = regime + "\n\nThe table has no frozen rows with a CV score and no finetune or scratch rows: nothing to compare."
        return Advice("none", per_class, small, None, None, False, None, "none", (regime,), text)

    evidence = [regime]
    best = chosen = None
    tied = pd.DataFrame()
    worth = None
    if not pool.empty:
        best, chosen, tied = cheapest_within_noise(pool, n_se=n_se)
        group = _same_group(pool, best)
        evidence += _layer_evidence(group, best, chosen, tied, n_se)
        if len(screening) and not final.empty:
            evidence += _screening_evidence(screening)
        worth, lines = _baseline_evidence(best, random_rows, n_se)
        evidence += lines
    predicted = _predicted(per_class, finetune_samples_per_class)
    top_too_weak = best is not None and not _top_is_competitive(_same_group(pool, best), best, n_se)
    if predicted == "finetune" and top_too_weak:
        predicted = "frozen"  # finetuning starts from the top features, which lose to an intermediate layer
    frozen_mode = None if chosen is None else (
        "frozen_top" if _is_top(chosen, _same_group(pool, chosen)) else "frozen_intermediate")
    runner_up = None
    if trained.empty:
        rule = "size"
        if chosen is None:
            mode = "none"
        elif predicted == "finetune":
            mode = "finetune"
        else:
            mode = frozen_mode
        runner_up = _runner_up(tied, pool, chosen)
        sentences = _size_sentences(mode, chosen, runner_up, per_class, finetune_samples_per_class, worth, n_se,
                                    top_too_weak)
    else:
        rule = "measured"
        mode, chosen_row, runner_up, sentences = _measured(trained, chosen, frozen_mode, predicted, n_se)
        evidence += [f"{row['mode']} {row['backbone']} (weights {row['weights']}): {_scores(row)}."
                     for _, row in trained.iterrows()]
        chosen = chosen_row
    is_tied = runner_up is not None and bool(len(tied)) and runner_up.name in tied.index and mode.startswith("frozen")
    text = " ".join(sentences) + "\n\nEvidence:\n\n" + "\n".join(f"- {line}" for line in evidence)
    return Advice(mode, per_class, small, chosen, runner_up, is_tied, worth, rule, tuple(evidence), text)


def _runner_up(tied: pd.DataFrame, pool: pd.DataFrame, chosen: pd.Series) -> pd.Series | None:
    others = pool[pool.index != chosen.name].sort_values("cv_score", ascending=False)
    return None if others.empty else others.iloc[0]


def _size_sentences(mode, chosen, runner_up, per_class, threshold, worth, n_se, top_too_weak) -> list[str]:
    if mode == "none":
        return ["**No recommendation:** the table has no comparable rows."]
    if mode in ("finetune", "scratch"):
        verb = "finetune the top blocks of" if mode == "finetune" else "train from scratch (not transfer from)"
        sentences = [
            f"**Recommendation: {verb} {chosen['backbone']}.**",
            f"With {per_class:.0f} training images per class (at least {threshold:g}), finetuning (its head "
            f"started from the logistic regression on the frozen features) beat or tied frozen features in every "
            f"cell of the calibration benchmark; it costs a training run and on data similar to the source it may "
            f"only tie the frozen top layer. This run measured no finetune rows: run `layerprobe finetune` to "
            f"confirm.",
            f"The frozen result to beat is {_name(chosen)}: {_scores(chosen)}.",
        ]
        if worth is False:
            sentences.append("Caution: the pretrained features were no better than random ones here; training "
                             "from scratch is the alternative to measure (in the calibration benchmark finetuning "
                             "still won such cells).")
        return sentences
    where = "the top layer" if mode == "frozen_top" else "an intermediate layer"
    sentences = [
        f"**Recommendation: {chosen['classifier']} on the frozen features of {where}, {chosen['layer']} of "
        f"{chosen['backbone']} (weights {chosen['weights']}).**",
        f"It scores {_scores(chosen)}: the cross-validation score (± its standard error over folds) chose it on "
        f"the training split; the test interval says how far the true accuracy may lie from the measured one.",
    ]
    if runner_up is not None:
        close = within_noise(*_score_and_se(chosen, "cv_score"), *_score_and_se(runner_up, "cv_score"), n_se=n_se) \
            or runner_up["cv_score"] > chosen["cv_score"]
        if close:
            sentences.append(f"The runner-up, {_name(runner_up)} ({_cv_text(runner_up)}), is within noise, so the "
                             f"cheaper of the two (fewer dimensions, earlier layer) is recommended.")
        else:
            sentences.append(f"It beats the runner-up, {_name(runner_up)} ({_cv_text(runner_up)}), by more than noise.")
    if per_class >= threshold and top_too_weak:
        sentences.append(f"With {per_class:.0f} images per class (at least {threshold:g}) finetuning would be advised, "
                         f"but the top layer scores more than noise below {chosen['layer']}, and finetuning starts "
                         f"from the top features; finetuning a network cut at {chosen['layer']} is the alternative "
                         f"to measure.")
    else:
        sentences.append(f"With {per_class:.0f} images per class (under {threshold:g}, from which finetuning is "
                         f"advised), frozen features are recommended: they need no training run, and the "
                         f"calibration benchmark measured nothing smaller; `layerprobe finetune` measures whether "
                         f"finetuning does better here.")
    if worth is False:
        sentences.append("Caution: these pretrained features are no better than random ones (see the evidence).")
    return sentences


def _measured(trained, chosen, frozen_mode, predicted, n_se):
    """Measured trained rows against the frozen choice: (mode, row, runner-up, sentences)."""
    scored_cv = chosen is not None and trained["cv_score"].notna().all()
    score = "cv_score" if scored_cv else "test_accuracy"
    best_trained, cheapest_trained, _ = cheapest_within_noise(trained, score=score, n_se=n_se)
    basis = "cross-validation" if scored_cv else "test accuracy (trained rows have no CV score)"
    if chosen is None:
        mode, row, other = cheapest_trained["mode"], cheapest_trained, None
        beats = True
    else:
        frozen_score, frozen_se = _score_and_se(chosen, score)
        trained_score, trained_se = _score_and_se(best_trained, score)
        beats = trained_score > frozen_score and not within_noise(trained_score, trained_se, frozen_score, frozen_se,
                                                                 n_se=n_se)
        mode, row, other = ((best_trained["mode"], best_trained, chosen) if beats
                            else (frozen_mode, chosen, best_trained))
    rule_mode = "finetune" if predicted == "finetune" else "frozen"
    outcome = "confirms" if (rule_mode == "finetune") == (mode in ("finetune", "scratch")) else "overturns"
    verb = {"finetune": "finetune the top blocks of", "scratch": "train from scratch"}.get(mode, f"{row['classifier']} "
                                                                                               f"on the frozen layer {row['layer']} of")
    sentences = [f"**Recommendation: {verb} {row['backbone']} (measured in this run).**",
                 f"It scores {_scores(row)}."]
    if other is not None:
        relation = "beats" if beats else ("is within noise of" if mode.startswith("frozen") and
                                          _score_and_se(other, score)[0] >= _score_and_se(row, score)[0] else "beats")
        sentences.append(f"Compared by {basis}, it {relation} {_name(other)} ({_scores(other)})"
                         + ("; the cheaper frozen option is kept." if relation == "is within noise of" else "."))
    sentences.append(f"This {outcome} the size rule, which predicts "
                     f"{'finetuning' if rule_mode == 'finetune' else 'frozen features'} at this training-set size.")
    return mode, row, other, sentences

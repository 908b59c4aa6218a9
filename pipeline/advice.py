"""Which transfer mode to use, read off a run's results table, with the evidence and its uncertainty.

The advice recommends what the table measured best, not a fixed recipe:

* **Layer and classifier** come from cross-validation on the training split
  (`cv_score`, mean over folds, with `cv_se`, the standard error over folds);
  test accuracy never chooses anything and is quoted with its 95 % Wilson
  interval. Final rows, when present, are the candidates; screening rows
  (`row_kind == "screening"`, the fast ridge probe on every layer) are
  evidence: the curve by depth, the top layer, LogME.
* **Ties go to the cheaper option** (the one-standard-error rule,
  `uncertainty.ties_with_best`): every row scoring at most `NOISE_SE` of the
  best row's standard errors below it is tied. Only the best row's SE sets the
  width, so a noisier row is no likelier to tie than a steadier one with the
  same mean. Among the tied rows the cheapest wins, in this order: frozen
  before finetune before scratch; then fewer feature dimensions; then an
  earlier (shallower) layer; then a cheaper classifier (ridge, then logreg and
  linear_svm, then the rest).
* **The top layer** is the backbone's deepest layer in the table, screening
  rows included, whichever layers screening kept; its score is the best of its
  rows.
* **Mode.** When the table has finetune or scratch rows with a validation
  score, measured results decide: the best trained row replaces the frozen
  choice only if the frozen one does not tie it. Modes are compared on
  training-split evidence only: a frozen row's CV score, a trained row's
  accuracy on the validation part of the training split that its training held
  out (`val_accuracy` on `n_val` images, binomial SE). Test scores are
  reported, never compared; trained rows without a validation score
  (`val_fraction = 0`) are reported and do not decide. Without such trained
  rows the mode is predicted from the training set's size: at least
  `FINETUNE_SAMPLES_PER_CLASS` images per class advises finetuning the top
  blocks, provided the top layer ties the best single layer (finetuning starts
  from the top features; when an intermediate layer beats them by more than
  noise, as for an ImageNet network read at 32x32 pixels, the frozen
  intermediate layer is advised; nor when the best row has no pretrained
  weights, `weights == "none"`, which the `[finetune]` stage does not
  finetune: the advice never names a mode the config cannot run). Multi-layer
  rows do not take part in this check: their layers were chosen on the same
  leave-one-out scores, so their CV is optimistic. Otherwise the frozen choice
  (`frozen_top` when it reads the top layer alone, else
  `frozen_intermediate`).
* **Failed rows.** A row whose test accuracy is at or below the test split's
  majority-class rate, or whose CV or validation score is at or below the
  training split's, does no better than answering the most frequent class for
  every image (for a trained row: its training failed). It is flagged
  (`Advice.flags`) and named in the evidence; a row flagged on training-split
  evidence is never recommended (the test flag alone changes no decision).
* **Random features.** A pretrained backbone whose best row does not beat the
  random-initialisation baseline (`weights == "none"`, same backbone) by more
  than noise (the baseline ties it) is flagged as not worth transferring from.
  The flag does not change the mode by itself: in the calibration table
  finetuning still beat training from scratch in such cells.
* **LogME** per layer (the `logme` column, every row that has it) is cited as
  a second opinion on the best single layer.

`FINETUNE_SAMPLES_PER_CLASS` and `NOISE_SE` were set from
`benchmarks/transfer_matrix.py` (3 seeds x similar/dissimilar CIFAR-10 halves
x 10/100/1,000 images per class, all four modes): see the transfer-matrix
section of `benchmarks/RESULTS.md` for the table and the agreement rate.
Older tables without `cv_se`, `n_test`, `feature_dim`, `logme` or `row_kind`
still work: missing spreads are reported as unknown and only exact ties are
then ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Mapping

import numpy as np
import pandas as pd

from ..core.checks import check_positive_int
from .config.template import toml_value
from .uncertainty import binomial_se, ties_with_best, wilson_interval

__all__ = [
    "Advice",
    "FINETUNE_SAMPLES_PER_CLASS",
    "NOISE_SE",
    "SMALL_DATASET_SAMPLES_PER_CLASS",
    "cheapest_within_noise",
    "majority_flags",
    "recommend",
]

# Training images per class from which finetuning the top blocks (LP-FT) is advised when no trained rows were
# measured: the smallest size of the calibration, where finetuning already won every cell (benchmarks/RESULTS.md).
FINETUNE_SAMPLES_PER_CLASS = 10
SMALL_DATASET_SAMPLES_PER_CLASS = FINETUNE_SAMPLES_PER_CLASS  # the former name, kept for imports
NOISE_SE = 2.0  # a row within this many of the best row's standard errors below it ties the best
LOGME_TIE = 1e-3  # LogME values this close (relative) do not rank layers

_GROUP = ["backbone", "weights", "pooling"]
_MULTI_PREFIX = "multi:"
_MODE_COST = {"frozen": 0, "finetune": 1, "scratch": 2}
_CLASSIFIER_COST = {"ridge": 0, "logreg": 1, "linear_svm": 1}
_NUMERIC = ["depth", "feature_dim", "cv_score", "cv_se", "n_folds", "val_accuracy", "n_val", "test_accuracy",
            "test_ci_low", "test_ci_high", "n_train", "n_test", "logme"]
_TEXT = {"mode": "frozen", "backbone": "?", "weights": "?", "pooling": "-", "layer": "-", "classifier": "-",
         "row_kind": "final", "stage": None}
_AT_CHANCE = 1e-9  # "at or below" the majority-class rate, allowing for float rounding


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
        tied: Whether the runner-up ties the recommended row (the cheaper won).
        worth_transferring: False when the pretrained features are not better
            than random ones by more than noise; None without a random baseline.
        rule: Which rule decided: `"measured"` (trained rows were compared) or
            `"size"` (predicted from samples per class).
        evidence: The evidence lines, in markdown.
        text: The recommendation in markdown: a short explanation, then the evidence.
        flags: Index label of each results row at or below the majority-class
            rate -> a short note for the table (see `majority_flags`).
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
    flags: Mapping[Hashable, str] = field(default_factory=dict)


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


def _val_text(row: pd.Series) -> str:
    """`validation 85.0% ± 3.2 (binomial SE, n=40)`: a trained row's score on the held-out part of the training split."""
    value, se = _score_and_se(row, "val_accuracy")
    spread = f" ± {100 * se:.1f} (binomial SE, n={int(row['n_val'])})" if _finite(se) else ""
    return f"validation {_pct(value)}{spread}"


def _depth_text(row, before: str = "", after: str = "") -> str:
    """"depth 0.77" for one layer; nothing for a multi-layer row, which has no single depth."""
    return f"{before}depth {float(row['depth']):.2f}{after}" if _finite(row.get("depth")) else ""


def _is_multi(row: pd.Series) -> bool:
    return str(row["layer"]).startswith(_MULTI_PREFIX)


def _layers_of(row: pd.Series) -> list[str]:
    """The layers a row reads: one, or those a multi-layer row ("multi:a+b") combines."""
    return str(row["layer"]).removeprefix(_MULTI_PREFIX).split("+") if _is_multi(row) else [str(row["layer"])]


def _layer_text(row: pd.Series) -> str:
    """`block3_pool`, or `a combination of layers (block1_pool+block4_pool)` for a multi-layer row."""
    return f"a combination of layers ({'+'.join(_layers_of(row))})" if _is_multi(row) else str(row["layer"])


def _name(row: pd.Series) -> str:
    if row["mode"] != "frozen":
        return f"{row['mode']} {row['backbone']} (weights {row['weights']})"
    return (f"{row['classifier']} on {_layer_text(row)} of {row['backbone']} "
            f"(weights {row['weights']}{_depth_text(row, ', ')})")


def _scores(row: pd.Series) -> str:
    if _finite(row.get("cv_score")):
        return f"{_cv_text(row)}, {_test_text(row)}"
    return f"{_val_text(row)}, {_test_text(row)}" if _finite(row.get("val_accuracy")) else _test_text(row)


def _setting(key: str, value) -> str:
    """A config setting as it is written in the TOML file, e.g. `` `weights = "none"` ``."""
    return f"`{key} = {toml_value(value)}`"


# --------------------------------------------------------------------------- table handling


def _prepare(results: pd.DataFrame) -> pd.DataFrame:
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
        if not _finite(row["test_ci_low"]) and _finite(row["test_accuracy"]) and _finite(row["n_test"]):
            table.loc[index, ["test_ci_low", "test_ci_high"]] = wilson_interval(row["test_accuracy"], int(row["n_test"]))
    return table


def _score_and_se(row: pd.Series, score: str) -> tuple[float, float]:
    """`score` of a row and its SE: `cv_se` for `cv_score`, else binomial over `n_val` or `n_test`."""
    if score == "cv_score":
        return float(row["cv_score"]), float(row["cv_se"]) if _finite(row["cv_se"]) else math.nan
    value = float(row[score])
    n = row["n_val" if score == "val_accuracy" else "n_test"]
    return value, binomial_se(value, int(n)) if _finite(n) and n > 0 else math.nan


def _ties(best: pd.Series, other: pd.Series, n_se: float, score: str = "cv_score") -> bool:
    """Whether `other` ties `best` by the one-standard-error rule (`ties_with_best`)."""
    return ties_with_best(*_score_and_se(best, score), _score_and_se(other, score)[0], n_se=n_se)


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
    """The best row by `score`, the cheapest row that ties it, and all rows that tie it.

    The best row, which sets the bar, is the best that reads one layer when there
    is one: a multi-layer row's CV chose its layers, so it is optimistic; such a
    row ties (and may then be the cheapest) but does not raise the bar.
    A row ties the best when it scores at most `n_se` of the best row's standard
    errors below it (`ties_with_best`, the one-standard-error rule; SE: `cv_se`
    for `"cv_score"`, the binomial SE on `n_val` for `"val_accuracy"`, on
    `n_test` for `"test_accuracy"`; unknown: exact ties only). The row's own SE
    plays no part, so noise does not buy a place in the tie. The cheapest is the
    first in this order: frozen, then finetune, then scratch; fewer
    `feature_dim`; smaller `depth`; ridge before logreg and linear_svm before
    other classifiers; ties keep the better score (then the smaller SE: no
    other column, the test scores least of all, takes part).

    Raises:
        ValueError: If no row has a finite `score`.
    """
    scored = rows[pd.to_numeric(rows[score], errors="coerce").notna()]
    if scored.empty:
        raise ValueError(f"No row has a {score}; cannot compare. Received: {len(rows)} row(s)")
    spread = [_score_and_se(row, score)[1] for _, row in scored.iterrows()]
    ordered = (scored.assign(_spread=np.nan_to_num(spread, nan=np.inf))
               .sort_values([score, "_spread"], ascending=[False, True], kind="stable").drop(columns="_spread"))
    single = ordered[~ordered["layer"].astype(str).str.startswith(_MULTI_PREFIX)] if "layer" in ordered else ordered
    best = (single if not single.empty else ordered).iloc[0]
    tied = ordered[[_ties(best, row, n_se, score) for _, row in ordered.iterrows()]]
    chosen = min((row for _, row in tied.iterrows()), key=_cost)
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
    for index, row in _prepare(results).iterrows():
        low = [f"{name} {_pct(row[column])} ≤ {_pct(rate)}" for name, column, rate in
               (("test", "test_accuracy", test_majority_rate), ("CV", "cv_score", cv_majority_rate),
                ("validation", "val_accuracy", cv_majority_rate))
               if rate is not None and _finite(row[column]) and row[column] <= rate + _AT_CHANCE]
        if low:
            failed = "failed training: " if row["mode"] in ("finetune", "scratch") else ""
            flags[index] = f"{failed}at or below the majority class ({', '.join(low)})"
    return flags


def _single_layers(group: pd.DataFrame) -> pd.DataFrame:
    single = group[~group["layer"].astype(str).str.startswith(_MULTI_PREFIX)]
    return single if not single.empty else group


def _top_row(group: pd.DataFrame) -> pd.Series:
    """The best-scoring row (by CV, screening rows included) of the group's deepest single layer."""
    single = _single_layers(group)
    deepest = single[single["depth"] == single["depth"].max()] if single["depth"].notna().any() else single
    return deepest.sort_values("cv_score", ascending=False, kind="stable").iloc[0]


def _best_single(group: pd.DataFrame) -> pd.Series:
    """The best row (by CV, screening rows included) that reads one layer."""
    return _single_layers(group).sort_values(["cv_score", "depth"], ascending=[False, True], kind="stable").iloc[0]


def _is_top(row: pd.Series, group: pd.DataFrame) -> bool:
    """Whether `row` reads the top layer alone (a multi-layer row that selected only it counts)."""
    return _layers_of(row) == [str(_top_row(group)["layer"])]


def _top_is_competitive(group: pd.DataFrame, n_se: float) -> bool:
    """Whether the top layer ties the best single layer: a good start for finetuning."""
    return _ties(_best_single(group), _top_row(group), n_se)


def _same_group(rows: pd.DataFrame, row: pd.Series, columns=_GROUP) -> pd.DataFrame:
    return rows[(rows[columns] == row[columns]).all(axis=1)]


# --------------------------------------------------------------------------- evidence


def _layer_evidence(group: pd.DataFrame, logme_rows: pd.DataFrame, best: pd.Series, chosen: pd.Series,
                    tied: pd.DataFrame, n_se: float) -> list[str]:
    lines = []
    top, single = _top_row(group), _best_single(group)
    if single["layer"] == top["layer"]:
        lines.append(f"The top layer {top['layer']} scores best of the single layers ({_cv_text(top)}): the "
                     f"source's most specific features fit the target, a sign that it is similar to the source.")
    else:
        gap = single["cv_score"] - top["cv_score"]
        lines.append(
            f"The best single layer is {single['layer']} ({_depth_text(single, '', ', ')}{_cv_text(single)}); the "
            f"top layer {top['layer']} scores {_cv_text(top)}, {100 * gap:.1f} points lower"
            + (f", within noise ({n_se:g} SE of the best)." if _ties(single, top, n_se) else
               ": the top features are too specific to the source, a sign that the target is dissimilar.")
        )
    for _, multi in group[[_is_multi(row) for _, row in group.iterrows()]].iterrows():
        lines.append(f"{multi['classifier']} on {_layer_text(multi)} scores {_scores(multi)}; its layers were chosen "
                     f"on the same leave-one-out scores, so its CV is optimistic: it ties where it reaches the bar "
                     f"but does not set it, nor decide the mode.")
    others = tied[tied.index != chosen.name]
    if best.name != chosen.name:
        lines.append(f"{len(tied)} configurations are within {n_se:g} SE of the best's score ({_name(best)}); the "
                     f"cheapest of them is chosen: {_name(chosen)}.")
    elif len(others):
        lines.append(f"{len(others)} other configuration(s) are within {n_se:g} SE of its score; it is also the "
                     f"cheapest.")
    classifiers = group[group["layer"] == chosen["layer"]]
    if classifiers["classifier"].nunique() > 1:
        listed = ", ".join(f"{row['classifier']} {_cv_text(row)}"
                           for _, row in classifiers.sort_values("cv_score", ascending=False).iterrows())
        lines.append(f"Classifiers on {_layer_text(chosen)}: {listed}.")
    lines += _logme_evidence(logme_rows, single)
    return lines


def _logme_evidence(rows: pd.DataFrame, single: pd.Series) -> list[str]:
    """LogME's best layer among every row that has a LogME, against cross-validation's best single layer."""
    per_layer = rows.dropna(subset=["logme"]).drop_duplicates("layer")
    if len(per_layer) < 2:
        return []
    leader = per_layer.loc[per_layer["logme"].idxmax()]
    spread = per_layer["logme"].max() - per_layer["logme"].min()
    if spread <= LOGME_TIE * max(1.0, abs(leader["logme"])):
        return [f"LogME is the same for every layer ({leader['logme']:.3f}): on this training set it does not tell "
                f"the layers apart (the evidence is at its no-signal value), so it is no evidence either way."]
    agree = "agrees with" if leader["layer"] == single["layer"] else "differs from"
    return [f"LogME (evidence of a linear model, higher is better) ranks {leader['layer']} first "
            f"({leader['logme']:.3f}); that {agree} cross-validation's best single layer {single['layer']}."]


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


def _baseline_evidence(best: pd.Series, random_rows: pd.DataFrame, n_se: float) -> tuple[bool | None, list[str]]:
    """The best transferred row against the best random-features row of the same backbone."""
    same = random_rows[random_rows["backbone"] == best["backbone"]]
    if same.empty or best["weights"] == "none":
        return None, []
    baseline = same.sort_values("cv_score", ascending=False).iloc[0]
    worth = not _ties(best, baseline, n_se)
    gain = best["cv_score"] - baseline["cv_score"]
    line = (f"Random-initialisation baseline (same backbone, {_setting('weights', 'none')}): best "
            f"{_layer_text(baseline)} {_cv_text(baseline)}; the {best['weights']} features' best is "
            f"{100 * gain:+.1f} points from it")
    if worth:
        return True, [line + ", more than noise: the pretrained weights help."]
    return False, [line + f", **not more than noise ({n_se:g} SE): this pretrained backbone is not worth "
                   f"transferring from** as frozen features (they are no better than random ones). A source closer "
                   f"to the target would serve better; with enough data, compare finetuning with training from "
                   f"scratch ({_setting('modes', ['finetune', 'scratch'])} in `[finetune]`)."]


def _flag_evidence(table: pd.DataFrame, flags: Mapping[Hashable, str], failed: Mapping[Hashable, str]) -> list[str]:
    """A line per flagged row; only rows `failed` on training-split evidence are left out of the choice."""
    return [f"**{_name(table.loc[index])}**: {note}: no better than answering the most frequent class for every "
            + ("image, so it is not a result." if index in failed else
               "test image; the choice is made on training-split evidence, so this is a warning about the row.")
            for index, note in flags.items()]


# --------------------------------------------------------------------------- recommend


def _predicted(per_class: float, threshold: float) -> str:
    return "finetune" if per_class >= threshold else "frozen"


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
        largest_class: Training samples of the largest class: CV scores at or
            below `largest_class / n_train` are flagged. None: not checked.
        test_majority_rate: The test split's largest class over its size: test
            accuracies at or below it are flagged. None: not checked.
        finetune_samples_per_class: Images per class from which finetuning is
            advised when the table has no trained rows (`inf`: never).
        n_se: How many of the best row's standard errors below it make a tie.

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
    train_rate = None if largest_class is None else largest_class / n_train
    flags = majority_flags(table, cv_majority_rate=train_rate, test_majority_rate=test_majority_rate)
    failed = majority_flags(table, cv_majority_rate=train_rate)  # training-split evidence: these are left out
    regime = (f"Training split: {n_train} samples in {n_classes} classes ({per_class:.0f} per class, smallest class "
              f"{smallest_class}); from {finetune_samples_per_class:g} per class finetuning is advised "
              f"(threshold calibrated in benchmarks/RESULTS.md, transfer matrix).")
    usable = table[~table.index.isin(list(failed))]
    frozen = table[(table["mode"] == "frozen") & table["cv_score"].notna()]
    screening = frozen[frozen["row_kind"] == "screening"]
    final = usable[(usable["mode"] == "frozen") & usable["cv_score"].notna() & (usable["row_kind"] != "screening")]
    candidates = final if not final.empty else usable[usable.index.isin(screening.index)]
    pool = candidates[candidates["weights"] != "none"]
    pool = pool if not pool.empty else candidates
    all_trained = usable[usable["mode"].isin(["finetune", "scratch"])]
    trained = all_trained[all_trained["val_accuracy"].notna()]
    evidence = [regime] + _flag_evidence(table, flags, failed)
    evidence += [f"{_name(row)}: {_scores(row)}; it has no validation score (`val_fraction = 0` or an older "
                 f"layerprobe), so it is reported but not compared (test scores choose nothing). To compare it, "
                 f"set `val_fraction` above 0 in `[finetune]` and delete {row.get('model_path') or 'its folder'}."
                 for index, row in all_trained[all_trained["val_accuracy"].isna()].iterrows() if index not in flags]
    if pool.empty and trained.empty:
        evidence.append("The table has no usable frozen rows with a CV score and no finetune or scratch rows with "
                        "a validation score: nothing to compare.")
        text = "**No recommendation:** the table has no comparable rows.\n\nEvidence:\n\n" + "\n".join(
            f"- {line}" for line in evidence)
        return Advice("none", per_class, small, None, None, False, None, "none", tuple(evidence), text, flags)

    best = chosen = None
    tied = pd.DataFrame()
    worth = None
    top_too_weak = False
    frozen_mode = None
    if not pool.empty:
        best, chosen, tied = cheapest_within_noise(pool, n_se=n_se)
        group = _same_group(frozen, best)  # screening rows included: the top layer, the best single layer
        evidence += _layer_evidence(group, _same_group(table[table["mode"] == "frozen"], best), best, chosen, tied,
                                    n_se)
        if len(screening) and not final.empty:
            evidence += _screening_evidence(screening)
        worth, lines = _baseline_evidence(group.sort_values("cv_score", kind="stable").iloc[-1],
                                          frozen[frozen["weights"] == "none"], n_se)
        evidence += lines
        top_too_weak = not _top_is_competitive(group, n_se)
        frozen_mode = "frozen_top" if _is_top(chosen, group) else "frozen_intermediate"
    predicted = _predicted(per_class, finetune_samples_per_class)
    why_not = None  # why finetuning, predicted by size, is not advised: it would start badly, or cannot run
    if predicted == "finetune" and top_too_weak:
        why_not = ("the top layer scores more than noise below the best single layer, and finetuning starts from the "
                   "top features; finetuning a network cut at that layer is the alternative to measure")
    elif predicted == "finetune" and chosen is not None and chosen["weights"] == "none":
        why_not = (f"the table has no pretrained backbone to finetune (only {_setting('weights', 'none')}, which "
                   f"`[finetune]` does not finetune); training from scratch "
                   f"({_setting('modes', ['scratch'])} in `[finetune]`) is the alternative to measure")
    if why_not is not None:
        predicted = "frozen"
    runner_up = None
    if trained.empty:
        rule = "size"
        mode = "finetune" if predicted == "finetune" else frozen_mode
        runner_up = _runner_up(pool, chosen)
        sentences = _size_sentences(mode, chosen, runner_up, tied, per_class, finetune_samples_per_class, worth,
                                    why_not)
    else:
        rule = "measured"
        mode, chosen_row, runner_up, sentences = _measured(trained, chosen, frozen_mode, predicted, n_se)
        evidence += [f"{row['mode']} {row['backbone']} (weights {row['weights']}): {_scores(row)}."
                     for _, row in trained.iterrows()]
        chosen = chosen_row
    is_tied = runner_up is not None and bool(len(tied)) and runner_up.name in tied.index and mode.startswith("frozen")
    text = " ".join(sentences) + "\n\nEvidence:\n\n" + "\n".join(f"- {line}" for line in evidence)
    return Advice(mode, per_class, small, chosen, runner_up, is_tied, worth, rule, tuple(evidence), text, flags)


def _runner_up(pool: pd.DataFrame, chosen: pd.Series) -> pd.Series | None:
    others = pool[pool.index != chosen.name].sort_values("cv_score", ascending=False)
    return None if others.empty else others.iloc[0]


def _confirm_with_finetune(modes: list[str]) -> str:
    return f"add a `[finetune]` section with {_setting('modes', modes)} and run `layerprobe finetune CONFIG.toml`"


def _size_sentences(mode, chosen, runner_up, tied, per_class, threshold, worth, why_not) -> list[str]:
    if mode in ("finetune", "scratch"):
        verb = "finetune the top blocks of" if mode == "finetune" else "train from scratch (not transfer from)"
        sentences = [
            f"**Recommendation: {verb} {chosen['backbone']}.**",
            f"With {per_class:.0f} training images per class (at least {threshold:g}), finetuning (its head "
            f"started from the logistic regression on the frozen features) beat or tied frozen features in every "
            f"cell of the calibration benchmark; it costs a training run and on data similar to the source it may "
            f"only tie the frozen top layer. This run measured no finetune rows: to confirm, "
            f"{_confirm_with_finetune(['finetune'])}.",
            f"The frozen result to beat is {_name(chosen)}: {_scores(chosen)}.",
        ]
        if worth is False:
            sentences.append("Caution: the pretrained features were no better than random ones here; training "
                             "from scratch is the alternative to measure (in the calibration benchmark finetuning "
                             "still won such cells).")
        return sentences
    if _is_multi(chosen):
        where = _layer_text(chosen)
    else:
        where = f"{'the top layer' if mode == 'frozen_top' else 'an intermediate layer'}, {chosen['layer']}"
    sentences = [
        f"**Recommendation: {chosen['classifier']} on the frozen features of {where} of {chosen['backbone']} "
        f"(weights {chosen['weights']}).**",
        f"It scores {_scores(chosen)}: the cross-validation score (± its standard error over folds) chose it on "
        f"the training split; the test interval says how far the true accuracy may lie from the measured one.",
    ]
    if runner_up is not None:
        if runner_up.name in tied.index:
            sentences.append(f"The runner-up, {_name(runner_up)} ({_cv_text(runner_up)}), ties it (within noise "
                             f"of the best score), so the cheaper one (fewer dimensions, earlier layer) is "
                             f"recommended.")
        else:
            sentences.append(f"It beats the runner-up, {_name(runner_up)} ({_cv_text(runner_up)}), by more than noise.")
    if why_not is not None:
        sentences.append(f"With {per_class:.0f} images per class (at least {threshold:g}) finetuning would be advised, "
                         f"but {why_not}.")
    else:
        sentences.append(f"With {per_class:.0f} images per class (under {threshold:g}, from which finetuning is "
                         f"advised), frozen features are recommended: they need no training run, and the "
                         f"calibration benchmark measured nothing smaller; to measure whether finetuning does better "
                         f"here, {_confirm_with_finetune(['finetune'])}.")
    if worth is False:
        sentences.append("Caution: these pretrained features are no better than random ones (see the evidence).")
    return sentences


def _measured(trained, chosen, frozen_mode, predicted, n_se):
    """Trained rows (by `val_accuracy`) against the frozen choice (by `cv_score`): (mode, row, runner-up, sentences).

    Both scores come from the training split; the test split decides nothing.
    """
    best_trained, cheapest_trained, _ = cheapest_within_noise(trained, score="val_accuracy", n_se=n_se)
    basis = ("training-split evidence (the frozen row's cross-validation, the trained row's accuracy on the "
             "validation part of the training split)")
    if chosen is None:
        mode, row, other = cheapest_trained["mode"], cheapest_trained, None
        beats = True
    else:
        trained_score, trained_se = _score_and_se(best_trained, "val_accuracy")
        frozen_score = _score_and_se(chosen, "cv_score")[0]
        beats = trained_score > frozen_score and not ties_with_best(trained_score, trained_se, frozen_score,
                                                                     n_se=n_se)
        mode, row, other = ((best_trained["mode"], best_trained, chosen) if beats
                            else (frozen_mode, chosen, best_trained))
    rule_mode = "finetune" if predicted == "finetune" else "frozen"
    outcome = "confirms" if (rule_mode == "finetune") == (mode in ("finetune", "scratch")) else "overturns"
    verb = {"finetune": "finetune the top blocks of", "scratch": "train from scratch"}.get(
        mode, f"{row['classifier']} on the frozen features of {_layer_text(row)} of")
    sentences = [f"**Recommendation: {verb} {row['backbone']} (measured in this run).**",
                 f"It scores {_scores(row)}."]
    if other is not None:
        relation = "beats" if beats else ("is within noise of" if mode.startswith("frozen") and
                                          _score_and_se(other, "val_accuracy")[0] >= _score_and_se(row, "cv_score")[0]
                                          else "beats")
        sentences.append(f"Compared by {basis}, it {relation} {_name(other)} ({_scores(other)})"
                         + ("; the cheaper frozen option is kept." if relation == "is within noise of" else "."))
    sentences.append(f"This {outcome} the size rule, which predicts "
                     f"{'finetuning' if rule_mode == 'finetune' else 'frozen features'} at this training-set size.")
    return mode, row, other, sentences

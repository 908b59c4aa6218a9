"""The advice in words: three lines to act on, a short list of evidence, and the details behind them.

`advice_text` turns an `Advice` (the decision, `layerprobe.pipeline.advice.decision`)
into an `AdviceText`: `summary`, at most three short lines (what to use, its test
score with its 95 % interval, why); `evidence`, a few short bullets; `details`,
the longer reasoning and every piece of evidence, for summary.md's "Details"
section and results.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from .decision import PAIRED_ALPHA, Advice, PairedScore, finite, is_multi, layers_of, same_group, score_and_se, ties

__all__ = ["AdviceText", "advice_text"]

LOGME_TIE = 1e-3  # LogME values this close (relative) do not rank layers
_ESTIMATOR = {"ridge": "ridge leave-one-out accuracy"}


@dataclass(frozen=True)
class AdviceText:
    """An `Advice` in markdown.

    Attributes:
        summary: At most three short lines: what, its test score with its interval, why.
        evidence: Short bullets: the numbers the decision read.
        details: The longer reasoning and all the evidence, one paragraph or bullet each.
    """

    summary: str
    evidence: tuple[str, ...]
    details: tuple[str, ...]

    @property
    def text(self) -> str:
        """The summary, then the evidence as a list: what a run prints and summary.md leads with."""
        return self.summary + ("\n\nEvidence:\n\n" + "\n".join(f"- {line}" for line in self.evidence)
                               if self.evidence else "")

    @property
    def details_text(self) -> str:
        return "\n\n".join(self.details)


# --------------------------------------------------------------------------- numbers


def _pct(value) -> str:
    return f"{100 * float(value):.1f}%" if finite(value) else "n/a"


def _setting(key: str, value) -> str:
    """A config setting as written in the TOML file, e.g. `` `weights = "none"` `` (strings and their lists)."""
    return f"`{key} = {json.dumps(value)}`"


def _cv_text(row: pd.Series) -> str:
    """`CV 86.0% ± 1.2 (SE over 5 folds)`, or without the ± when the spread is unknown."""
    if not finite(row.get("cv_score")):
        return "no CV score"
    if finite(row.get("cv_se")):
        folds = f" over {int(row['n_folds'])} folds" if finite(row.get("n_folds")) else ""
        return f"CV {_pct(row['cv_score'])} ± {100 * row['cv_se']:.1f} (SE{folds})"
    return f"CV {_pct(row['cv_score'])} (spread unknown)"


def _test_text(row: pd.Series) -> str:
    """`test 85.0% (95% CI 79.1–89.4%, n=150)`."""
    if not finite(row.get("test_accuracy")):
        return "no test score"
    if finite(row.get("test_ci_low")) and finite(row.get("test_ci_high")):
        n = f", n={int(row['n_test'])}" if finite(row.get("n_test")) else ""
        return (f"test {_pct(row['test_accuracy'])} (95% CI {100 * row['test_ci_low']:.1f}–"
                f"{100 * row['test_ci_high']:.1f}%{n})")
    return f"test {_pct(row['test_accuracy'])}"


def _val_text(row: pd.Series) -> str:
    """`validation 85.0% ± 3.2 (binomial SE, n=40)`: a trained row's score on the held-out part of the training split."""
    value, se = score_and_se(row, "val_accuracy")
    spread = f" ± {100 * se:.1f} (binomial SE, n={int(row['n_val'])})" if finite(se) else ""
    return f"validation {_pct(value)}{spread}"


def _scores(row: pd.Series) -> str:
    if finite(row.get("cv_score")):
        return f"{_cv_text(row)}, {_test_text(row)}"
    return f"{_val_text(row)}, {_test_text(row)}" if finite(row.get("val_accuracy")) else _test_text(row)


def _cost_text(row: pd.Series) -> str:
    return f"{float(row['forward_gflops']):.3g} GFLOPs per image" if finite(row.get("forward_gflops")) else ""


def _depth_text(row, before: str = "", after: str = "") -> str:
    """"depth 0.77" for one layer; nothing for a multi-layer row, which has no single depth."""
    return f"{before}depth {float(row['depth']):.2f}{after}" if finite(row.get("depth")) else ""


def _layer_text(row: pd.Series) -> str:
    """`block3_pool`, or `a combination of layers (block1_pool+block4_pool)` for a multi-layer row."""
    return f"a combination of layers ({'+'.join(layers_of(row))})" if is_multi(row) else str(row["layer"])


def _name(row: pd.Series) -> str:
    if row["mode"] != "frozen":
        return f"{row['mode']} {row['backbone']} (weights {row['weights']})"
    return (f"{row['classifier']} on {_layer_text(row)} of {row['backbone']} "
            f"(weights {row['weights']}{_depth_text(row, ', ')})")


def _estimator(advice: Advice) -> str:
    name = advice.curve_classifier
    return _ESTIMATOR.get(name, f"{name} cross-validation accuracy")


# --------------------------------------------------------------------------- the three lines


def _short(row: pd.Series) -> str:
    """`72.2% ± 2.9`: a row's training-split score (CV, or a trained row's validation) and its SE in points."""
    column = "cv_score" if finite(row.get("cv_score")) else "val_accuracy"
    value, se = score_and_se(row, column)
    return f"{_pct(value)}" + (f" ± {100 * se:.1f}" if finite(se) else "")


def _paired_text(pair: PairedScore) -> str:
    """`+6.0 ± 2.1 points; 14 images decided, 12 to 2, McNemar p = 0.013`."""
    return (f"{100 * pair.difference:+.1f} ± {100 * pair.difference_se:.1f} points; {pair.decided} images decided, "
            f"{pair.trained_only} to {pair.frozen_only}, McNemar p = {pair.p_value:.2g}")


def _what(advice: Advice) -> str:
    row = advice.row
    if advice.mode in ("finetune", "scratch"):
        verb = "finetune the top blocks of" if advice.mode == "finetune" else "train from scratch"
        how = "measured in this run" if row["mode"] != "frozen" else "predicted from the training-set size"
        return f"**Recommendation: {verb} {row['backbone']}** ({how})."
    return (f"**Recommendation: {row['classifier']} on {_layer_text(row)} of {row['backbone']}** (frozen features, "
            f"weights {row['weights']}).")


def _score_line(advice: Advice) -> str:
    row = advice.row
    if row["mode"] == "frozen" and advice.mode in ("finetune", "scratch"):
        return f"The frozen result to beat: {row['classifier']} on {_layer_text(row)}, {_test_text(row)}."
    return _test_text(row)[0].upper() + _test_text(row)[1:] + "."


def _why(advice: Advice) -> str:
    row, best = advice.row, advice.best
    if advice.rule == "measured" and advice.paired is not None:
        pair, trained = advice.paired, advice.best_trained
        verdict = "better by more than noise" if advice.trained_beats else "not better by more than noise"
        return (f"Why: on the same {pair.n} held-out training images, {trained['mode']} is {verdict} than the "
                f"frozen choice ({_paired_text(pair)}).")
    if advice.rule == "measured" and advice.runner_up is not None:
        other = advice.runner_up
        if advice.trained_beats:
            return (f"Why: its validation {_short(row)} beats the frozen choice's CV {_short(other)} by more than noise "
                    f"(training-split evidence).")
        return (f"Why: the measured {other['mode']} row ({_short(other)}) is not better than the frozen CV "
                f"({_short(row)}) by more than noise; the cheaper frozen option is kept.")
    if advice.rule == "measured":
        return "Why: the only measured result."
    if advice.mode in ("finetune", "scratch"):
        return (f"Why: {advice.samples_per_class:.0f} images per class (finetuning won every calibration cell from "
                f"{advice.threshold:g}) and the top layer ties the best layer.")
    if layers_of(row) != layers_of(best):
        why = (f"Why: within noise of the best ({_layer_text(best)}, {_short(best)}) by {_estimator(advice)} and "
               f"cheaper at inference")
        why += f" ({_cost_text(row)} against {float(best['forward_gflops']):.3g})" if _cost_text(best) else ""
    else:
        why = f"Why: best by {_estimator(advice)} ({_short(advice.best)})"
    if advice.why_not_finetune == "top_too_weak":
        gap = advice.best_single["cv_score"] - advice.top["cv_score"]
        why += f"; finetuning would start from the top layer, {100 * gap:.1f} points lower (more than noise)"
    elif advice.why_not_finetune == "no_pretrained":
        why += "; no pretrained backbone to finetune"
    elif advice.small:
        why += f"; under {advice.threshold:g} images per class, frozen features"
    return why + "."


# --------------------------------------------------------------------------- evidence and details


def _curve_line(advice: Advice) -> str:
    """One bullet: the estimator of the layers, their best and the top layer."""
    top, single = advice.top, advice.best_single
    line = (f"Layers scored by {_estimator(advice)} ({len(advice.curve)} layers of {single['backbone']}, the same "
            f"with screening on or off): best {single['layer']} {_short(single)}")
    if single["layer"] == top["layer"]:
        return line + " (the top layer)."
    gap = 100 * (single["cv_score"] - top["cv_score"])
    noise = "within" if advice.top_competitive else "more than"
    return line + f"; top {top['layer']} {gap:.1f} points lower ({noise} noise)."


def _curve_lines(advice: Advice) -> list[str]:
    top, single = advice.top, advice.best_single
    lines = []
    if single["layer"] == top["layer"]:
        lines.append(f"The top layer {top['layer']} scores best of the single layers ({_cv_text(top)}): the "
                     f"source's most specific features fit the target, a sign that it is similar to the source.")
    else:
        gap = single["cv_score"] - top["cv_score"]
        lines.append(
            f"The best single layer is {single['layer']} ({_depth_text(single, '', ', ')}{_cv_text(single)}); the "
            f"top layer {top['layer']} scores {_cv_text(top)}, {100 * gap:.1f} points lower"
            + (f", within noise ({advice.n_se:g} SE of the best)." if advice.top_competitive else
               ": the top features are too specific to the source, a sign that the target is dissimilar.")
        )
    return lines


def _tie_lines(advice: Advice) -> list[str]:
    """One bullet: what ties the best reading, and whether a cheaper one was taken."""
    tied, best, chosen = advice.tied_rows, advice.best, advice.row
    if chosen["mode"] != "frozen":
        return []
    if layers_of(best) != layers_of(chosen):
        cost = f" ({_cost_text(chosen)} against {_cost_text(best)})" if _cost_text(best) else ""
        return [f"{len(tied)} readings are within {advice.n_se:g} SE of the best's score ({_layer_text(best)} "
                f"{_short(best)}); the cheapest at inference is used{cost}."]
    others = [_layer_text(row) for _, row in tied.iterrows() if layers_of(row) != layers_of(best)]
    if others:
        return [f"Within {advice.n_se:g} SE of it: {', '.join(others)}; none is cheaper at inference, so no "
                f"accuracy is given away."]
    other = advice.runner_up
    return [] if other is None else [f"The runner-up, {_name(other)} {_short(other)}, is more than noise below."]


def _multi_lines(table: pd.DataFrame, advice: Advice) -> list[str]:
    group = same_group(table[table["mode"] == "frozen"], advice.best)
    return [f"Multi-layer {multi['classifier']} on {'+'.join(layers_of(multi))}: nested CV {_short(multi)} (its "
            f"layers chosen inside each fold, so it compares with the single layers), {_test_text(multi)}."
            for _, multi in group.iterrows() if is_multi(multi)]


def _baseline_line(advice: Advice) -> list[str]:
    """One bullet: the pretrained features against random ones."""
    if advice.baseline is None:
        return []
    gain = 100 * (advice.best["cv_score"] - advice.baseline["cv_score"])
    verdict = ("more than noise: the pretrained weights help" if advice.worth_transferring else
               "**not more than noise: not worth transferring from** (see Details)")
    return [f"Random weights, same backbone: best {_short(advice.baseline)}; the pretrained features are "
            f"{gain:+.1f} points, {verdict}."]


def _classifier_lines(table: pd.DataFrame, chosen: pd.Series) -> list[str]:
    group = same_group(table[table["mode"] == "frozen"], chosen)
    classifiers = group[group["layer"] == chosen["layer"]]
    if classifiers["classifier"].nunique() < 2:
        return []
    listed = ", ".join(f"{row['classifier']} {_cv_text(row)}"
                       for _, row in classifiers.sort_values("cv_score", ascending=False).iterrows())
    return [f"Classifiers on {_layer_text(chosen)}: {listed}."]


def _logme_lines(table: pd.DataFrame, advice: Advice) -> list[str]:
    """LogME's best layer among every row of the backbone that has a LogME, against the curve's best layer."""
    rows = same_group(table[table["mode"] == "frozen"], advice.best_single)
    per_layer = rows.dropna(subset=["logme"]).drop_duplicates("layer")
    if len(per_layer) < 2:
        return []
    leader = per_layer.loc[per_layer["logme"].idxmax()]
    spread = per_layer["logme"].max() - per_layer["logme"].min()
    if spread <= LOGME_TIE * max(1.0, abs(leader["logme"])):
        return [f"LogME is the same for every layer ({leader['logme']:.3f}): on this training set it does not tell "
                f"the layers apart (the evidence is at its no-signal value), so it is no evidence either way."]
    agree = "agrees with" if leader["layer"] == advice.best_single["layer"] else "differs from"
    return [f"LogME (evidence of a linear model, higher is better) ranks {leader['layer']} first "
            f"({leader['logme']:.3f}); that {agree} the curve's best single layer {advice.best_single['layer']}."]


def _baseline_lines(advice: Advice) -> list[str]:
    if advice.baseline is None:
        return []
    baseline, best = advice.baseline, advice.best
    gain = best["cv_score"] - baseline["cv_score"]
    line = (f"Random-initialisation baseline (same backbone, {_setting('weights', 'none')}): best "
            f"{_layer_text(baseline)} {_cv_text(baseline)}; the {best['weights']} features' best is "
            f"{100 * gain:+.1f} points from it")
    if advice.worth_transferring:
        return [line + ", more than noise: the pretrained weights help."]
    return [line + f", **not more than noise ({advice.n_se:g} SE): this pretrained backbone is not worth "
            f"transferring from** as frozen features (they are no better than random ones). A source closer "
            f"to the target would serve better; with enough data, compare finetuning with training from "
            f"scratch ({_setting('modes', ['finetune', 'scratch'])} in `[finetune]`)."]


def _flag_lines(advice: Advice) -> list[str]:
    return [f"**{_name(advice.table.loc[index])}**: {note}: no better than answering the most frequent class for "
            "every " + ("image, so it is not a result." if index in advice.failed else
                        "test image; the choice is made on training-split evidence, so this is a warning about the "
                        "row.")
            for index, note in advice.flags.items()]


def _paired_lines(advice: Advice) -> list[str]:
    """The paired comparison that decided, and a warning per trained row whose validation part lacks a class."""
    lines = []
    if advice.paired is not None:
        pair, trained = advice.paired, advice.best_trained
        lines.append(f"Paired on the {pair.n} images of the training split that {trained['mode']}'s training held "
                     f"out (the frozen classifier refitted without them): {trained['mode']} "
                     f"{_pct(pair.trained_correct / pair.n)}, frozen {_pct(pair.frozen_correct / pair.n)}, "
                     f"{_paired_text(pair)}.")
    for index, missing in advice.not_deciding.items():
        row = advice.table.loc[index]
        lines.append(f"**Warning: {_name(row)}**: its validation part ({int(row['n_val']) if finite(row['n_val']) else 0}"
                     f" images) has no image of {', '.join(map(str, missing))}, so its {_val_text(row)} says nothing "
                     f"about that class; it is reported, not compared. Raise `val_fraction` in `[finetune]` (or "
                     f"add images of that class).")
    return lines


def _flag_summary(advice: Advice) -> list[str]:
    """One bullet for the rows at or below the majority-class rate (each is described in the details)."""
    if not advice.flags:
        return []
    failed = [index for index in advice.flags if index in advice.failed]
    names = ", ".join(_short_name(advice.table.loc[index]) for index in advice.flags)
    left_out = f"; {len(failed)} of them on training-split evidence, left out" if failed else ""
    return [f"At or below the majority-class rate (flagged in the table{left_out}): {names}."]


def _short_name(row: pd.Series) -> str:
    return f"{row['mode']} {row['backbone']}" if row["mode"] != "frozen" else f"{row['classifier']} on {row['layer']}"


def _unvalidated_lines(advice: Advice) -> list[str]:
    table = advice.table
    rows = table[table["mode"].isin(["finetune", "scratch"]) & table["val_accuracy"].isna()]
    return [f"{_name(row)}: {_scores(row)}; it has no validation score (`val_fraction = 0` or an older "
            f"layerprobe), so it is reported but not compared (test scores choose nothing). To compare it, "
            f"set `val_fraction` above 0 in `[finetune]` and delete {row.get('model_path') or 'its folder'}."
            for index, row in rows.iterrows() if index not in advice.flags]


def _confirm_with_finetune(modes: list[str]) -> str:
    return f"add a `[finetune]` section with {_setting('modes', modes)} and run `layerprobe finetune CONFIG.toml`"


def _reasoning(advice: Advice) -> list[str]:
    """The longer explanation of the mode: the size rule, its exceptions, or the measured comparison."""
    per_class, threshold = advice.samples_per_class, advice.threshold
    if advice.rule == "measured":
        rule_mode = "finetune" if per_class >= threshold and advice.why_not_finetune is None else "frozen"
        outcome = "confirms" if (rule_mode == "finetune") == (advice.mode in ("finetune", "scratch")) else "overturns"
        other = advice.runner_up
        lines = [f"It scores {_scores(advice.row)}."]
        if other is not None and advice.paired is not None:
            lines.append(f"Compared on the same held-out images of the training split (McNemar's exact test on the "
                         f"images only one of them got right, p < {PAIRED_ALPHA:g} to count), it "
                         + ("beats" if advice.trained_beats else "is within noise of")
                         + f" {_name(other)} ({_scores(other)})"
                         + ("." if advice.trained_beats else "; the cheaper frozen option is kept."))
        elif other is not None:
            relation = "beats" if advice.trained_beats else (
                "is within noise of" if score_and_se(other, "val_accuracy")[0] >= advice.row["cv_score"] else "beats")
            lines.append("Compared by training-split evidence (the frozen row's cross-validation, the trained row's "
                         f"accuracy on the validation part of the training split), it {relation} {_name(other)} "
                         f"({_scores(other)})" + ("; the cheaper frozen option is kept." if relation ==
                                                  "is within noise of" else "."))
        lines.append(f"This {outcome} the size rule, which predicts "
                     f"{'finetuning' if rule_mode == 'finetune' else 'frozen features'} at this training-set size.")
        return lines
    if advice.mode in ("finetune", "scratch"):
        lines = [f"With {per_class:.0f} training images per class (at least {threshold:g}), finetuning (its head "
                 f"started from the logistic regression on the frozen features) beat or tied frozen features in "
                 f"every cell of the calibration benchmark; it costs a training run and on data similar to the "
                 f"source it may only tie the frozen top layer. This run measured no finetune rows: to confirm, "
                 f"{_confirm_with_finetune(['finetune'])}.",
                 f"The frozen result to beat is {_name(advice.row)}: {_scores(advice.row)}."]
        if advice.worth_transferring is False:
            lines.append("Caution: the pretrained features were no better than random ones here; training "
                         "from scratch is the alternative to measure (in the calibration benchmark finetuning "
                         "still won such cells).")
        return lines
    lines = [f"It scores {_scores(advice.row)}: the cross-validation score (± its standard error) chose it on "
             f"the training split; the test interval says how far the true accuracy may lie from the measured one."]
    if advice.why_not_finetune == "top_too_weak":
        lines.append(f"With {per_class:.0f} images per class (at least {threshold:g}) finetuning would be advised, "
                     f"but the top layer scores more than noise below the best single layer, and finetuning starts "
                     f"from the top features; finetuning a network cut at that layer is the alternative to measure.")
    elif advice.why_not_finetune == "no_pretrained":
        lines.append(f"With {per_class:.0f} images per class (at least {threshold:g}) finetuning would be advised, "
                     f"but the table has no pretrained backbone to finetune (only {_setting('weights', 'none')}, "
                     f"which `[finetune]` does not finetune); training from scratch "
                     f"({_setting('modes', ['scratch'])} in `[finetune]`) is the alternative to measure.")
    else:
        lines.append(f"With {per_class:.0f} images per class (under {threshold:g}, from which finetuning is "
                     f"advised), frozen features are recommended: they need no training run, and the "
                     f"calibration benchmark measured nothing smaller; to measure whether finetuning does better "
                     f"here, {_confirm_with_finetune(['finetune'])}.")
    if advice.worth_transferring is False:
        lines.append("Caution: these pretrained features are no better than random ones (see the evidence).")
    return lines


def advice_text(advice: Advice) -> AdviceText:
    """`advice` in words (see `AdviceText`)."""
    regime = (f"Training split: {advice.n_train} samples in {advice.n_classes} classes ({advice.samples_per_class:.0f}"
              f" per class, smallest class {advice.smallest_class}); from {advice.threshold:g} per class finetuning "
              f"is advised (threshold calibrated in benchmarks/RESULTS.md, transfer matrix).")
    if advice.mode == "none":
        evidence = [regime, *_flag_lines(advice), *_paired_lines(advice), *_unvalidated_lines(advice),
                    "The table has no usable frozen rows with a CV score and no finetune or scratch rows with a "
                    "validation score: nothing to compare."]
        return AdviceText("**No recommendation:** the table has no comparable rows.", tuple(evidence), ())
    table = advice.table
    evidence = _flag_summary(advice)
    details = [regime, *_flag_lines(advice)]
    if advice.best_single is not None:
        evidence.append(_curve_line(advice))
        evidence += _tie_lines(advice)
        evidence += _multi_lines(table, advice)
        evidence += _baseline_line(advice)
        details += _curve_lines(advice)
        details += _baseline_lines(advice)
        details += _classifier_lines(table, advice.row if advice.row["mode"] == "frozen" else advice.best)
        details += _logme_lines(table, advice)
    if advice.best_trained is not None or advice.not_deciding:
        trained = table[table["mode"].isin(["finetune", "scratch"]) & table["val_accuracy"].notna()
                        & ~table.index.isin(list(advice.failed))]
        evidence += [f"{_name(row)}: {_scores(row)}." for index, row in trained.iterrows()
                     if index not in advice.not_deciding]
    evidence += _paired_lines(advice)
    evidence += _unvalidated_lines(advice)
    summary = "\n".join([_what(advice), _score_line(advice), _why(advice)])
    return AdviceText(summary, tuple(evidence), tuple(_reasoning(advice) + details))

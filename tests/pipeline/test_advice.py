import math

import pandas as pd
import pytest

from layerprobe.pipeline.advice import (
    FINETUNE_SAMPLES_PER_CLASS,
    PairedScore,
    advice_text,
    cheapest_within_noise,
    recommend,
)
from layerprobe.pipeline.uncertainty import wilson_interval


def _rows(scores, *, weights="imagenet", classifiers=("logreg", "linear_svm"), cv_se=0.005, n_test=400,
          dims=(64, 128, 256, 512), logme=None, row_kind="final"):
    """Frozen rows over four layers; `scores[i]` is the cv and test accuracy of layer i (logreg 1 point lower)."""
    rows = []
    for i, score in enumerate(scores):
        for classifier in classifiers:
            value = score - 0.01 * (classifier == "logreg")
            low, high = wilson_interval(score, n_test)
            rows.append({
                "mode": "frozen", "backbone": "VGG16", "weights": weights, "layer": f"block{i + 1}_pool",
                "depth": (i + 1) / len(scores), "pooling": "avg", "classifier": classifier,
                "feature_dim": dims[i], "cv_score": value, "cv_se": cv_se, "n_folds": 5,
                "test_accuracy": score, "test_ci_low": low, "test_ci_high": high, "n_train": 200,
                "n_test": n_test, "logme": None if logme is None else logme[i], "row_kind": row_kind,
            })
    return rows


def _words(advice):
    """Everything the advice says: the three lines, the evidence and the details."""
    words = advice_text(advice)
    return words.text + "\n\n" + words.details_text


def _table(*groups):
    return pd.DataFrame([row for group in groups for row in group])


def _small(table, **kwargs):
    """Advice for 5 images per class: below the finetuning threshold."""
    return recommend(table, n_train=25, n_classes=5, smallest_class=5, **kwargs)


def test_small_and_similar_recommends_the_top_layer_when_it_wins_by_more_than_noise():
    advice = _small(_table(_rows([0.6, 0.7, 0.8, 0.9], classifiers=("linear_svm",))))
    assert "under 10, from which finetuning is advised), frozen features are recommended" in _words(advice)
    assert advice.mode == "frozen_top" and advice.small and advice.rule == "size"
    assert advice.row["layer"] == "block4_pool" and advice.row["classifier"] == "linear_svm"
    assert "CV 90.0% ± 0.5 (SE over 5 folds)" in _words(advice)
    assert "The runner-up, linear_svm on block3_pool" in _words(advice) and "is more than noise below" in _words(advice)


def test_small_and_dissimilar_recommends_the_best_intermediate_layer():
    advice = _small(_table(_rows([0.6, 0.9, 0.8, 0.7])))
    assert advice.mode == "frozen_intermediate" and advice.row["layer"] == "block2_pool"
    assert "20.0 points lower" in _words(advice) and "dissimilar" in _words(advice)


def test_two_layers_tied_within_noise_get_the_cheaper_recommendation():
    # block3 (256-d) is 1 point under block4 (512-d) with SEs of 2 points: a tie, so the cheaper block3 wins.
    advice = _small(_table(_rows([0.5, 0.6, 0.89, 0.9], classifiers=("logreg",), cv_se=0.02)))
    assert advice.row["layer"] == "block3_pool" and advice.mode == "frozen_intermediate"
    assert advice.tied and advice.runner_up["layer"] == "block4_pool"
    assert "within noise" in _words(advice) and "cheaper" in _words(advice)
    # The same gap with tiny SEs is real: the better layer wins.
    sharp = _small(_table(_rows([0.5, 0.6, 0.89, 0.9], classifiers=("logreg",), cv_se=0.001)))
    assert sharp.row["layer"] == "block4_pool" and not sharp.tied


def test_cheapest_within_noise_gives_no_accuracy_away_for_what_inference_does_not_pay():
    """Issue 31.3: a tied row wins only when it is cheaper in forward FLOPs (depth where they are unknown); feature
    dimensions and the classifier cost nothing at inference, so among equally cheap rows the best score wins."""
    table = pd.DataFrame([
        {"mode": "frozen", "layer": "a", "depth": 0.9, "feature_dim": 100, "classifier": "logreg", "cv_score": 0.80,
         "cv_se": 0.02, "test_accuracy": 0.8},
        {"mode": "frozen", "layer": "b", "depth": 0.3, "feature_dim": 100, "classifier": "logreg", "cv_score": 0.79,
         "cv_se": 0.02, "test_accuracy": 0.8},
        {"mode": "frozen", "layer": "c", "depth": 0.6, "feature_dim": 400, "classifier": "logreg", "cv_score": 0.81,
         "cv_se": 0.02, "test_accuracy": 0.8},
    ])
    best, chosen, tied = cheapest_within_noise(table)
    assert best["layer"] == "c" and chosen["layer"] == "b" and len(tied) == 3  # b is the earliest cut
    flops = table.assign(forward_gflops=[1.0, 2.0, 1.5])  # b's cut is the dearest here, a the cheapest
    assert cheapest_within_noise(flops)[1]["layer"] == "a"
    same_cost = table.assign(forward_gflops=[1.0, 1.0, 1.0])
    assert cheapest_within_noise(same_cost)[1]["layer"] == "c"  # nothing saved: the best is kept


def test_logreg_beating_linear_svm_recommends_logreg():
    rows = _rows([0.6, 0.7, 0.8, 0.9])
    for row in rows:  # logreg now 3 points above the SVM everywhere, SE 0.5 point
        row["cv_score"] += 0.04 * (row["classifier"] == "logreg")
    advice = _small(pd.DataFrame(rows))
    assert advice.row["classifier"] == "logreg" and advice.row["layer"] == "block4_pool"
    assert "**Recommendation: logreg on block4_pool of VGG16** (frozen features" in _words(advice)
    assert "linear_svm" in _words(advice)  # cited as the runner-up classifier


def test_finetune_rows_that_beat_frozen_rows_flip_the_advice_to_finetuning():
    finetune = {"mode": "finetune", "backbone": "VGG16", "weights": "imagenet", "layer": "all", "depth": 1.0,
                "classifier": "softmax", "val_accuracy": 0.97, "n_val": 400, "test_accuracy": 0.97, "n_test": 400}
    advice = _small(_table(_rows([0.6, 0.7, 0.8, 0.9]), [finetune]))
    assert advice.mode == "finetune" and advice.rule == "measured"
    assert "overturns the size rule" in _words(advice) and "Compared by training-split evidence" in _words(advice)
    assert "validation 97.0% ± 0.9 (binomial SE, n=400)" in _words(advice)
    # A finetune row within noise of the frozen one (2 of its binomial SEs, 2.9 points) keeps the cheaper frozen mode.
    close = _small(_table(_rows([0.6, 0.7, 0.8, 0.9]), [{**finetune, "val_accuracy": 0.91}]))
    assert close.mode == "frozen_top" and "is within noise of" in _words(close)


def test_frozen_and_trained_rows_are_compared_on_training_split_evidence_never_on_test_scores():
    frozen = _rows([0.6, 0.7, 0.8, 0.9], cv_se=0.01)
    trained = [{"mode": mode, "backbone": "VGG16", "weights": weights, "layer": "(end to end)",
                "classifier": "softmax head", "val_accuracy": val, "n_val": 100, "test_accuracy": 0.8, "n_test": 400}
               for mode, weights, val in (("finetune", "imagenet", 0.97), ("scratch", "none", 0.6))]
    table = _table(frozen, trained)
    kwargs = dict(n_train=200, n_classes=5, smallest_class=40, largest_class=40, test_majority_rate=0.2)
    advice = recommend(table, **kwargs)
    assert advice.mode == "finetune" and advice.row["mode"] == "finetune"
    # Any test scores, even a finetune test score at the majority rate: the same decision, the same rows.
    for tests in ([0.99, 0.98, 0.97, 0.3, 0.95, 0.9, 0.5, 0.1, 0.1, 0.99], [0.1] * 8 + [0.15, 0.99]):
        shuffled = recommend(table.assign(test_accuracy=tests), **kwargs)
        assert (shuffled.mode, shuffled.row.name, shuffled.runner_up.name, shuffled.tied) == (
            advice.mode, advice.row.name, advice.runner_up.name, advice.tied)
        assert "by test accuracy" not in _words(shuffled)
    # Without a validation score a trained row is reported, not compared.
    blind = recommend(table.assign(val_accuracy=float("nan")), **kwargs)
    assert blind.rule == "size" and blind.row["mode"] == "frozen"
    assert "it has no validation score (`val_fraction = 0` or an older layerprobe)" in _words(blind)


def test_finetuning_is_not_predicted_when_an_intermediate_layer_beats_the_top_by_more_than_noise():
    weak_top = _table(_rows([0.6, 0.9, 0.8, 0.5], classifiers=("logreg",)))
    advice = recommend(weak_top, n_train=5_000, n_classes=5, smallest_class=1_000)
    assert advice.mode == "frozen_intermediate" and advice.row["layer"] == "block2_pool" and advice.rule == "size"
    assert "finetuning would be advised, but the top layer scores more than noise below the best single layer" \
        in _words(advice)
    close_top = _table(_rows([0.6, 0.9, 0.8, 0.895], classifiers=("logreg",)))  # top within noise of the best
    assert recommend(close_top, n_train=5_000, n_classes=5, smallest_class=1_000).mode == "finetune"


def test_large_dataset_without_trained_rows_predicts_finetuning():
    advice = recommend(_table(_rows([0.6, 0.8, 0.85, 0.9])), n_train=30_000, n_classes=10, smallest_class=2_900)
    assert advice.mode == "finetune" and not advice.small
    assert "finetune the top blocks of VGG16" in _words(advice)
    assert 'add a `[finetune]` section with `modes = ["finetune"]` and run `layerprobe finetune' in _words(advice)
    never = recommend(_table(_rows([0.6, 0.8, 0.85, 0.9])), n_train=30_000, n_classes=10, smallest_class=2_900,
                      finetune_samples_per_class=math.inf)
    assert never.mode == "frozen_top"


def test_intervals_in_the_text_are_the_wilson_interval_of_a_known_example():
    # 80% of 100 test images: Wilson 95% interval 71.1%-86.7% (Newcombe 1998's method 3).
    row = {"mode": "frozen", "backbone": "VGG16", "weights": "imagenet", "layer": "block1_pool", "depth": 1.0,
           "pooling": "avg", "classifier": "logreg", "cv_score": 0.8, "cv_se": 0.012, "n_folds": 5,
           "test_accuracy": 0.8, "n_test": 100}
    advice = _small(pd.DataFrame([row]))  # no test_ci columns: the advice computes them
    assert "test 80.0% (95% CI 71.1–86.7%, n=100)" in _words(advice)
    assert "CV 80.0% ± 1.2 (SE over 5 folds)" in _words(advice)


def test_a_pretrained_backbone_no_better_than_random_is_flagged():
    table = _table(_rows([0.6, 0.9, 0.8, 0.7], cv_se=0.02), _rows([0.85, 0.89, 0.88, 0.8], weights="none",
                                                                  cv_se=0.02))
    advice = _small(table)
    assert advice.worth_transferring is False and advice.row["weights"] == "imagenet"
    assert "not worth transferring from" in _words(advice) and "Random-initialisation baseline" in _words(advice)
    top_best = _table(_rows([0.6, 0.8, 0.85, 0.9], cv_se=0.02), _rows([0.85, 0.89, 0.88, 0.8], weights="none",
                                                                      cv_se=0.02))
    large = recommend(top_best, n_train=30_000, n_classes=10, smallest_class=2_900)
    assert large.mode == "finetune" and "training from scratch is the alternative to measure" in _words(large)
    clear = _small(_table(_rows([0.6, 0.9, 0.8, 0.7]), _rows([0.4, 0.5, 0.45, 0.4], weights="none")))
    assert clear.worth_transferring is True and "the pretrained weights help" in _words(clear)


def test_logme_and_screening_rows_are_cited_as_evidence():
    screening = _rows([0.55, 0.85, 0.8, 0.7], classifiers=("ridge",), row_kind="screening")
    final = _rows([0.6, 0.9, 0.8, 0.7], classifiers=("logreg",), logme=[-1.0, -0.2, -0.4, -0.6])
    advice = _small(_table(screening, final))
    assert advice.row["classifier"] == "logreg"  # final rows decide, screening rows are the curve
    assert "Layers scored by ridge leave-one-out accuracy (4 layers of VGG16" in _words(advice)
    assert "best block2_pool 85.0% ± 0.5" in _words(advice)
    assert "LogME (evidence of a linear model, higher is better) ranks block2_pool first" in _words(advice)


def test_logme_equal_on_every_layer_is_no_evidence_either_way():
    advice = _small(_table(_rows([0.6, 0.9, 0.8, 0.7], classifiers=("logreg",), logme=[-0.6267] * 4)))
    assert "LogME is the same for every layer (-0.627)" in _words(advice) and "ranks" not in _words(advice)


def test_the_tie_width_in_the_text_is_the_one_used():
    # block3 best by 1 point over block2 and over the random features' best: 1.4 combined SE.
    table = _table(_rows([0.6, 0.89, 0.9, 0.7], classifiers=("logreg",), cv_se=0.005),
                   _rows([0.6, 0.89, 0.8, 0.7], classifiers=("logreg",), weights="none"))
    wide, narrow = _small(table, n_se=2.0), _small(table, n_se=0.5)
    assert wide.row["layer"] == "block2_pool" and "2 readings are within 2 SE of the best" in _words(wide)
    assert narrow.row["layer"] == "block3_pool" and "within 2 SE" not in _words(narrow)
    assert wide.worth_transferring is False and "not more than noise (2 SE)" in _words(wide)
    assert narrow.worth_transferring is True and "not more than noise" not in _words(narrow)


def test_old_tables_without_the_new_columns_still_get_advice():
    table = pd.DataFrame([{"mode": "frozen", "backbone": "VGG16", "weights": "imagenet", "layer": f"b{i}",
                           "depth": i / 3, "pooling": "avg", "classifier": "logreg", "cv_score": s,
                           "test_accuracy": s} for i, s in enumerate([0.7, 0.8, 0.75], start=1)])
    advice = _small(table)
    assert advice.row["layer"] == "b2" and "spread unknown" in _words(advice)


def test_recommend_rejects_an_empty_training_split():
    with pytest.raises(ValueError, match="`n_train` must be a positive integer. Received: n_train=0"):
        recommend(_table(_rows([0.5])), n_train=0, n_classes=2, smallest_class=0)
    with pytest.raises(ValueError, match="`n_classes` must be a positive integer"):
        recommend(_table(_rows([0.5])), n_train=4, n_classes=0, smallest_class=2)


def test_threshold_is_a_number_of_images_per_class():
    assert FINETUNE_SAMPLES_PER_CLASS > 0


def test_a_multi_layer_row_has_no_depth_in_the_text():
    rows = _rows([0.6, 0.7, 0.8, 0.85], classifiers=("logreg",), cv_se=0.02)
    multi = {**rows[-1], "layer": "multi:block3_pool+block4_pool", "depth": float("nan"), "classifier": "ridge",
             "feature_dim": 768, "cv_score": 0.86}
    advice = _small(_table(rows, [multi]))
    assert "a combination of layers (block3_pool+block4_pool)" in _words(advice)
    assert "depth nan" not in _words(advice) and "intermediate layer" not in _words(advice)


def test_a_multi_layer_row_that_selected_only_the_top_layer_counts_as_the_top_layer():
    table = _table(_rows([0.6, 0.7, 0.8, 0.9], classifiers=("logreg",), logme=[-1.0, -0.8, -0.6, -0.2]))
    multi = {**table.iloc[-1].to_dict(), "layer": "multi:block4_pool", "depth": math.nan, "classifier": "ridge",
             "cv_score": 0.91, "logme": None}
    advice = _small(pd.concat([table, pd.DataFrame([multi])], ignore_index=True))
    assert advice.mode == "frozen_top"
    assert "The top layer block4_pool scores best" in _words(advice)
    assert "ranks block4_pool first (-0.200); that agrees with" in _words(advice)


def _hymenoptera_like(*, screening: bool):
    """Five layers, 122 images per class; the same scores with screening (ridge everywhere, logreg on the best 2)
    and without it (logreg everywhere)."""
    scores, logme = [0.722, 0.702, 0.714, 0.702, 0.678], [-0.718, -0.695, -0.714, -0.693, -0.719]
    rows = []
    for i, (score, value) in enumerate(zip(scores, logme)):
        base = {"mode": "frozen", "backbone": "VGG16", "weights": "hed", "layer": f"block{i + 1}_pool",
                "depth": (i + 1) / 5, "pooling": "avg", "feature_dim": 64 * 2 ** min(i, 3), "cv_score": score,
                "cv_se": 0.029, "n_folds": 5, "test_accuracy": score, "n_test": 153, "logme": value}
        if screening:
            rows.append({**base, "classifier": "ridge", "row_kind": "screening"})
            if i in (0, 2):  # the two best layers by the screening rows
                rows.append({**base, "classifier": "logreg", "row_kind": "final"})
        else:
            rows.append({**base, "classifier": "logreg", "row_kind": "final"})
    return pd.DataFrame(rows)


def test_the_top_layer_is_the_backbones_top_layer_whatever_screening_kept():
    on, off = (recommend(_hymenoptera_like(screening=flag), n_train=245, n_classes=2, smallest_class=121)
               for flag in (True, False))
    for advice in (on, off):
        assert "the top layer block5_pool scores CV 67.8%" in _words(advice)
        assert "block3_pool scores" not in _words(advice)
    assert on.mode == off.mode == "frozen_intermediate"  # 4.4 points > 1 SE (2.9): the top is too weak
    assert on.row["layer"] == off.row["layer"] == "block1_pool"
    wide_on, wide_off = (recommend(_hymenoptera_like(screening=flag), n_train=245, n_classes=2,
                                   smallest_class=121, n_se=2.0) for flag in (True, False))
    assert wide_on.mode == wide_off.mode == "finetune"  # block5 ties block1 (4.4 points < 2 SE of 2.9)


def test_logme_evidence_is_the_tables_maximum_screening_rows_included():
    table = _hymenoptera_like(screening=True)
    advice = recommend(table, n_train=245, n_classes=2, smallest_class=121)
    leader = table.loc[table["logme"].idxmax()]
    assert leader["layer"] == "block4_pool"  # a layer with screening rows only
    assert f"ranks block4_pool first ({leader['logme']:.3f})" in _words(advice)
    assert "differs from the curve's best single layer block1_pool" in _words(advice)


def test_a_noisier_row_cannot_enter_a_tie_that_a_steadier_row_at_the_same_mean_leaves():
    def row(layer, depth, cv_score, cv_se):
        return {"mode": "frozen", "layer": layer, "depth": depth, "feature_dim": 64, "classifier": "logreg",
                "cv_score": cv_score, "cv_se": cv_se, "test_accuracy": cv_score}

    table = pd.DataFrame([row("best", 1.0, 0.80, 0.01), row("steady", 0.2, 0.75, 0.01), row("noisy", 0.4, 0.75, 0.05)])
    best, chosen, tied = cheapest_within_noise(table, n_se=2.0)
    assert best["layer"] == chosen["layer"] == "best" and list(tied["layer"]) == ["best"]
    # Within the best's 2 SE (2 points), both enter, whatever their own spread.
    table.loc[[1, 2], "cv_score"] = 0.785
    assert sorted(cheapest_within_noise(table, n_se=2.0)[2]["layer"]) == ["best", "noisy", "steady"]


def test_rows_at_or_below_the_majority_class_rate_are_flagged_and_never_recommended():
    frozen = _rows([0.60, 0.70, 0.75, 0.80], classifiers=("logreg",), n_test=153)
    scratch = {"mode": "scratch", "backbone": "VGG16", "weights": "none", "layer": "(end to end)",
               "classifier": "softmax head", "val_accuracy": 0.48, "n_val": 25, "test_accuracy": 70 / 153,
               "n_test": 153}
    finetune = {**scratch, "mode": "finetune", "weights": "imagenet", "val_accuracy": 0.96, "test_accuracy": 0.86}
    table = _table(frozen, [scratch, finetune])
    advice = recommend(table, n_train=245, n_classes=2, smallest_class=121, largest_class=124,
                       test_majority_rate=83 / 153)
    scratch_index = table.index[table["mode"] == "scratch"][0]
    assert list(advice.flags) == [scratch_index]
    assert advice.flags[scratch_index] == ("failed training: at or below the majority class (test 45.8% ≤ 54.2%, "
                                           "validation 48.0% ≤ 50.6%)")
    assert "**scratch VGG16 (weights none)**: failed training" in _words(advice)
    assert advice.mode == "finetune" and advice.row["mode"] == "finetune"
    # A failed row is not a result even when it is the only trained row: the size rule decides, as without it.
    alone = recommend(_table(frozen, [scratch]), n_train=245, n_classes=2, smallest_class=121, largest_class=124,
                      test_majority_rate=83 / 153)
    assert alone.rule == "size" and alone.row["mode"] == "frozen"
    assert "scratch VGG16 (weights none): test" not in _words(alone)  # not quoted as a measured result
    # Without the rates nothing is flagged.
    assert recommend(table, n_train=245, n_classes=2, smallest_class=121).flags == {}


def test_a_recommended_multi_layer_row_is_a_combination_of_layers_and_settings_read_as_toml():
    rows = _rows([0.6, 0.7, 0.8, 0.85], classifiers=("logreg",), cv_se=0.01)
    multi = {**rows[-1], "layer": "multi:block1_pool+block3_pool", "depth": float("nan"), "classifier": "ridge",
             "feature_dim": 320, "cv_score": 0.93, "logme": None}
    random = _rows([0.5, 0.55, 0.6, 0.6], classifiers=("logreg",), weights="none")
    advice = _small(_table(rows, [multi], random))
    assert advice.row["layer"] == "multi:block1_pool+block3_pool" and advice.mode == "frozen_intermediate"
    assert ("**Recommendation: ridge on a combination of layers (block1_pool+block3_pool) of VGG16** (frozen "
            "features") in _words(advice)
    assert "intermediate layer" not in _words(advice)
    assert 'Random-initialisation baseline (same backbone, `weights = "none"`)' in _words(advice)
    assert "weights=None" not in _words(advice) and "hidden_units" not in _words(advice)


def test_the_run_summary_and_the_printed_table_flag_the_rows_at_the_majority_rate(tmp_path):
    from layerprobe.pipeline.results import results_frame
    from layerprobe.pipeline.run.summary import log_report, write_run_summary

    scratch = {"mode": "scratch", "backbone": "VGG16", "weights": "none", "layer": "(end to end)",
               "classifier": "softmax head", "test_accuracy": 70 / 153, "n_test": 153}
    table = results_frame(_rows([0.6, 0.7, 0.75, 0.8], classifiers=("logreg",), n_test=153) + [scratch])
    advice = recommend(table, n_train=245, n_classes=2, smallest_class=121, test_majority_rate=83 / 153)
    note = "failed training: at or below the majority class (test 45.8% ≤ 54.2%)"
    lines = []
    log_report(lines.append, table, advice, n_skipped=0, counts="", paths={"results": tmp_path}, next_steps="")
    printed = next(line for line in lines if "| flag |" in line).splitlines()
    assert printed[0].endswith("| flag |") and printed[-1].endswith(f"| {note} |")
    assert all(row.endswith("|  |") for row in printed[2:-1])  # the frozen rows carry no flag
    path = write_run_summary(tmp_path, table, source="test", advice=advice, data="", skipped=[],
                             results_path=tmp_path / "results.csv", plot_path=tmp_path / "depth.png", next_steps="")
    assert f"| {note} |" in path.read_text(encoding="utf-8")


def test_a_multi_layer_rows_nested_cv_sets_the_bar_and_wins_when_best():
    """Issue 31.2: the multi-layer row's CV is nested (its layers chosen inside each fold), so it is a row like any
    other: it sets the bar, and it is recommended when it is best and no cheaper reading ties it."""
    rows = _rows([0.6, 0.7, 0.82, 0.85], classifiers=("logreg",), cv_se=0.02)
    multi = {**rows[-1], "layer": "multi:block3_pool+block4_pool", "depth": float("nan"), "classifier": "ridge",
             "feature_dim": 768, "cv_score": 0.95, "cv_se": 0.01, "logme": None}
    advice = _small(_table(rows, [multi]))
    assert advice.row["layer"] == "multi:block3_pool+block4_pool" and advice.mode == "frozen_intermediate"
    assert "nested CV 95.0% ± 1.0 (its layers chosen inside each fold" in _words(advice)
    # Within the noise of a noisier combination, the cheapest reading at inference wins: block3 is cut earlier than
    # block4, which the combination reads; block4 ties too but costs the same as the combination.
    close = _small(_table(rows, [{**multi, "cv_score": 0.86, "cv_se": 0.05}]))
    assert close.row["layer"] == "block3_pool"
    assert _small(_table(rows, [{**multi, "cv_score": 0.86, "cv_se": 0.03}])).row["layer"] == multi["layer"]


def test_finetuning_is_never_advised_for_a_backbone_the_finetune_stage_cannot_finetune():
    # Only random-initialisation rows: [finetune] finetunes backbones with weights, so the size rule keeps frozen.
    random_only = _table(_rows([0.6, 0.8, 0.85, 0.9], weights="none"))
    advice = recommend(random_only, n_train=30_000, n_classes=10, smallest_class=2_900)
    assert advice.mode == "frozen_top" and advice.row["weights"] == "none"
    assert "the table has no pretrained backbone to finetune" in _words(advice)
    assert "finetune the top blocks" not in _words(advice)


def _with_finetune(val_accuracy, n_val):
    frozen = _rows([0.6, 0.7, 0.8, 0.9], classifiers=("logreg",), cv_se=0.01)
    finetune = {"mode": "finetune", "backbone": "VGG16", "weights": "imagenet", "layer": "(end to end)",
                "classifier": "softmax head", "val_accuracy": val_accuracy, "n_val": n_val, "test_accuracy": 0.9,
                "n_test": 400}
    return _table(frozen, [finetune])


def test_a_finetune_row_better_on_the_same_held_out_images_is_recommended():
    """Issue 31.4: unpaired, 92 % on 50 validation images is within noise of the frozen CV's 89 %; scored on the same
    50 images (the frozen classifier refitted without them), finetuning wins 8 of the 8 images they disagree on."""
    table = _with_finetune(0.92, 50)
    kwargs = dict(n_train=500, n_classes=5, smallest_class=100)
    unpaired = recommend(table, **kwargs)
    assert unpaired.mode == "frozen_top" and unpaired.frozen_choice["layer"] == "block4_pool"
    finetune_row = table.index[table["mode"] == "finetune"][0]
    pair = PairedScore(n=50, trained_correct=46, frozen_correct=38, trained_only=8, frozen_only=0,
                       frozen_row=unpaired.frozen_choice.name)
    advice = recommend(table, paired={finetune_row: pair}, **kwargs)
    assert advice.mode == "finetune" and advice.row["mode"] == "finetune" and advice.paired == pair
    assert pair.decided == 8 and pair.p_value == pytest.approx(2 * 0.5 ** 8)
    words = advice_text(advice)
    assert "on the same 50 held-out training images, finetune is better by more than noise" in words.summary
    assert "+16.0 ± 5.2 points; 8 images decided, 8 to 0, McNemar p = 0.0078" in words.text
    # Disagreeing on 8 images, 5 to 3: not more than noise; the frozen choice stays.
    close = recommend(table, paired={finetune_row: PairedScore(50, 40, 38, 5, 3, unpaired.frozen_choice.name)},
                      **kwargs)
    assert close.mode == "frozen_top" and "not better by more than noise" in advice_text(close).summary
    # A pair scored against another frozen row is not this comparison: the unpaired rule decides.
    other = recommend(table, paired={finetune_row: PairedScore(50, 46, 38, 8, 0, frozen_row=-1)}, **kwargs)
    assert other.mode == "frozen_top" and other.paired is None


def test_a_validation_part_without_a_class_warns_and_decides_nothing():
    """Issue 32.5: `val_fraction = 0.1` on 12 ants + 2 bees holds out 2 ants; 100 % on them says nothing of bees."""
    table = _with_finetune(1.0, 2)
    finetune_row = table.index[table["mode"] == "finetune"][0]
    pair = PairedScore(n=2, trained_correct=2, frozen_correct=2, trained_only=0, frozen_only=0,
                       missing_classes=("bees",))
    advice = recommend(table, n_train=14, n_classes=2, smallest_class=2, paired={finetune_row: pair})
    assert advice.rule == "size" and advice.row["mode"] == "frozen"
    assert advice.not_deciding == {finetune_row: ("bees",)}
    assert "**Warning: finetune VGG16 (weights imagenet)**: its validation part (2 images) has no image of bees" \
        in advice_text(advice).text


def test_a_combination_that_kept_one_layer_gives_way_to_that_layers_own_row():
    """The demo's case: the multi-layer ridge row selected only block_13 and scores as that layer's ridge row."""
    from layerprobe.pipeline.advice.decision import cheapest_within_noise

    rows = pd.DataFrame([
        {"mode": "frozen", "backbone": "b", "weights": "w", "pooling": "avg", "layer": "block_13", "depth": 0.7,
         "classifier": "ridge", "cv_score": 0.98, "cv_se": 0.02, "forward_gflops": 0.01},
        {"mode": "frozen", "backbone": "b", "weights": "w", "pooling": "avg", "layer": "multi:block_13",
         "depth": float("nan"), "classifier": "ridge", "cv_score": 0.98 + 1e-12, "cv_se": 0.02, "forward_gflops": 0.01},
    ])
    _, chosen, tied = cheapest_within_noise(rows)
    assert len(tied) == 2 and chosen["layer"] == "block_13"

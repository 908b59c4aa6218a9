import math

import pandas as pd
import pytest

from layerprobe.pipeline.advice import FINETUNE_SAMPLES_PER_CLASS, cheapest_within_noise, recommend
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


def _table(*groups):
    return pd.DataFrame([row for group in groups for row in group])


def _small(table, **kwargs):
    """Advice for 5 images per class: below the finetuning threshold."""
    return recommend(table, n_train=25, n_classes=5, smallest_class=5, **kwargs)


def test_small_and_similar_recommends_the_top_layer_when_it_wins_by_more_than_noise():
    advice = _small(_table(_rows([0.6, 0.7, 0.8, 0.9], classifiers=("linear_svm",))))
    assert "under 10, from which finetuning is advised), frozen features are recommended" in advice.text
    assert advice.mode == "frozen_top" and advice.small and advice.rule == "size"
    assert advice.row["layer"] == "block4_pool" and advice.row["classifier"] == "linear_svm"
    assert "CV 90.0% ± 0.5 (SE over 5 folds)" in advice.text
    assert "beats the runner-up, linear_svm on block3_pool" in advice.text


def test_small_and_dissimilar_recommends_the_best_intermediate_layer():
    advice = _small(_table(_rows([0.6, 0.9, 0.8, 0.7])))
    assert advice.mode == "frozen_intermediate" and advice.row["layer"] == "block2_pool"
    assert "20.0 points lower" in advice.text and "dissimilar" in advice.text


def test_two_layers_tied_within_noise_get_the_cheaper_recommendation():
    # block3 (256-d) is 1 point under block4 (512-d) with SEs of 2 points: a tie, so the cheaper block3 wins.
    advice = _small(_table(_rows([0.5, 0.6, 0.89, 0.9], classifiers=("logreg",), cv_se=0.02)))
    assert advice.row["layer"] == "block3_pool" and advice.mode == "frozen_intermediate"
    assert advice.tied and advice.runner_up["layer"] == "block4_pool"
    assert "within noise" in advice.text and "cheaper" in advice.text
    # The same gap with tiny SEs is real: the better layer wins.
    sharp = _small(_table(_rows([0.5, 0.6, 0.89, 0.9], classifiers=("logreg",), cv_se=0.001)))
    assert sharp.row["layer"] == "block4_pool" and not sharp.tied


def test_cheapest_within_noise_orders_by_mode_then_dimensions_then_depth():
    table = pd.DataFrame([
        {"mode": "frozen", "layer": "a", "depth": 0.9, "feature_dim": 100, "classifier": "logreg", "cv_score": 0.80,
         "cv_se": 0.02, "test_accuracy": 0.8},
        {"mode": "frozen", "layer": "b", "depth": 0.3, "feature_dim": 100, "classifier": "logreg", "cv_score": 0.79,
         "cv_se": 0.02, "test_accuracy": 0.8},
        {"mode": "frozen", "layer": "c", "depth": 0.1, "feature_dim": 400, "classifier": "logreg", "cv_score": 0.81,
         "cv_se": 0.02, "test_accuracy": 0.8},
    ])
    best, chosen, tied = cheapest_within_noise(table)
    assert best["layer"] == "c" and chosen["layer"] == "b" and len(tied) == 3


def test_logreg_beating_linear_svm_recommends_logreg():
    rows = _rows([0.6, 0.7, 0.8, 0.9])
    for row in rows:  # logreg now 3 points above the SVM everywhere, SE 0.5 point
        row["cv_score"] += 0.04 * (row["classifier"] == "logreg")
    advice = _small(pd.DataFrame(rows))
    assert advice.row["classifier"] == "logreg" and advice.row["layer"] == "block4_pool"
    assert "**Recommendation: logreg on the frozen features" in advice.text
    assert "linear_svm" in advice.text  # cited as the runner-up classifier


def test_finetune_rows_that_beat_frozen_rows_flip_the_advice_to_finetuning():
    finetune = {"mode": "finetune", "backbone": "VGG16", "weights": "imagenet", "layer": "all", "depth": 1.0,
                "classifier": "softmax", "val_accuracy": 0.97, "n_val": 400, "test_accuracy": 0.97, "n_test": 400}
    advice = _small(_table(_rows([0.6, 0.7, 0.8, 0.9]), [finetune]))
    assert advice.mode == "finetune" and advice.rule == "measured"
    assert "overturns the size rule" in advice.text and "Compared by training-split evidence" in advice.text
    assert "validation 97.0% ± 0.9 (binomial SE, n=400)" in advice.text
    # A finetune row within noise of the frozen one (2 of its binomial SEs, 2.9 points) keeps the cheaper frozen mode.
    close = _small(_table(_rows([0.6, 0.7, 0.8, 0.9]), [{**finetune, "val_accuracy": 0.91}]))
    assert close.mode == "frozen_top" and "is within noise of" in close.text


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
        assert "by test accuracy" not in shuffled.text
    # Without a validation score a trained row is reported, not compared.
    blind = recommend(table.assign(val_accuracy=float("nan")), **kwargs)
    assert blind.rule == "size" and blind.row["mode"] == "frozen"
    assert "it has no validation score (`val_fraction = 0` or an older layerprobe)" in blind.text


def test_finetuning_is_not_predicted_when_an_intermediate_layer_beats_the_top_by_more_than_noise():
    weak_top = _table(_rows([0.6, 0.9, 0.8, 0.5], classifiers=("logreg",)))
    advice = recommend(weak_top, n_train=5_000, n_classes=5, smallest_class=1_000)
    assert advice.mode == "frozen_intermediate" and advice.row["layer"] == "block2_pool" and advice.rule == "size"
    assert "finetuning would be advised, but the top layer scores more than noise below the best single layer" \
        in advice.text
    close_top = _table(_rows([0.6, 0.9, 0.8, 0.895], classifiers=("logreg",)))  # top within noise of the best
    assert recommend(close_top, n_train=5_000, n_classes=5, smallest_class=1_000).mode == "finetune"


def test_large_dataset_without_trained_rows_predicts_finetuning():
    advice = recommend(_table(_rows([0.6, 0.8, 0.85, 0.9])), n_train=30_000, n_classes=10, smallest_class=2_900)
    assert advice.mode == "finetune" and not advice.small
    assert "finetune the top blocks of VGG16" in advice.text
    assert 'add a `[finetune]` section with `modes = ["finetune"]` and run `layerprobe finetune' in advice.text
    never = recommend(_table(_rows([0.6, 0.8, 0.85, 0.9])), n_train=30_000, n_classes=10, smallest_class=2_900,
                      finetune_samples_per_class=math.inf)
    assert never.mode == "frozen_top"


def test_intervals_in_the_text_are_the_wilson_interval_of_a_known_example():
    # 80% of 100 test images: Wilson 95% interval 71.1%-86.7% (Newcombe 1998's method 3).
    row = {"mode": "frozen", "backbone": "VGG16", "weights": "imagenet", "layer": "block1_pool", "depth": 1.0,
           "pooling": "avg", "classifier": "logreg", "cv_score": 0.8, "cv_se": 0.012, "n_folds": 5,
           "test_accuracy": 0.8, "n_test": 100}
    advice = _small(pd.DataFrame([row]))  # no test_ci columns: the advice computes them
    assert "test 80.0% (95% CI 71.1–86.7%, n=100)" in advice.text
    assert "CV 80.0% ± 1.2 (SE over 5 folds)" in advice.text


def test_a_pretrained_backbone_no_better_than_random_is_flagged():
    table = _table(_rows([0.6, 0.9, 0.8, 0.7], cv_se=0.02), _rows([0.85, 0.89, 0.88, 0.8], weights="none",
                                                                  cv_se=0.02))
    advice = _small(table)
    assert advice.worth_transferring is False and advice.row["weights"] == "imagenet"
    assert "not worth transferring from" in advice.text and "Random-initialisation baseline" in advice.text
    top_best = _table(_rows([0.6, 0.8, 0.85, 0.9], cv_se=0.02), _rows([0.85, 0.89, 0.88, 0.8], weights="none",
                                                                      cv_se=0.02))
    large = recommend(top_best, n_train=30_000, n_classes=10, smallest_class=2_900)
    assert large.mode == "finetune" and "training from scratch is the alternative to measure" in large.text
    clear = _small(_table(_rows([0.6, 0.9, 0.8, 0.7]), _rows([0.4, 0.5, 0.45, 0.4], weights="none")))
    assert clear.worth_transferring is True and "the pretrained weights help" in clear.text


def test_logme_and_screening_rows_are_cited_as_evidence():
    screening = _rows([0.55, 0.85, 0.8, 0.7], classifiers=("ridge",), row_kind="screening")
    final = _rows([0.6, 0.9, 0.8, 0.7], classifiers=("logreg",), logme=[-1.0, -0.2, -0.4, -0.6])
    advice = _small(_table(screening, final))
    assert advice.row["classifier"] == "logreg"  # final rows decide, screening rows are the curve
    assert "Fast probe curve (ridge, 4 layers" in advice.text and "peaks at block2_pool" in advice.text
    assert "LogME (evidence of a linear model, higher is better) ranks block2_pool first" in advice.text


def test_logme_equal_on_every_layer_is_no_evidence_either_way():
    advice = _small(_table(_rows([0.6, 0.9, 0.8, 0.7], classifiers=("logreg",), logme=[-0.6267] * 4)))
    assert "LogME is the same for every layer (-0.627)" in advice.text and "ranks" not in advice.text


def test_the_tie_width_in_the_text_is_the_one_used():
    # block3 best by 1 point over block2 and over the random features' best: 1.4 combined SE.
    table = _table(_rows([0.6, 0.89, 0.9, 0.7], classifiers=("logreg",), cv_se=0.005),
                   _rows([0.6, 0.89, 0.8, 0.7], classifiers=("logreg",), weights="none"))
    wide, narrow = _small(table, n_se=2.0), _small(table, n_se=0.5)
    assert wide.row["layer"] == "block2_pool" and "2 configurations are within 2 SE of the best" in wide.text
    assert narrow.row["layer"] == "block3_pool" and "within 2 SE" not in narrow.text
    assert wide.worth_transferring is False and "not more than noise (2 SE)" in wide.text
    assert narrow.worth_transferring is True and "not more than noise" not in narrow.text


def test_old_tables_without_the_new_columns_still_get_advice():
    table = pd.DataFrame([{"mode": "frozen", "backbone": "VGG16", "weights": "imagenet", "layer": f"b{i}",
                           "depth": i / 3, "pooling": "avg", "classifier": "logreg", "cv_score": s,
                           "test_accuracy": s} for i, s in enumerate([0.7, 0.8, 0.75], start=1)])
    advice = _small(table)
    assert advice.row["layer"] == "b2" and "spread unknown" in advice.text


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
    assert "a combination of layers (block3_pool+block4_pool)" in advice.text
    assert "depth nan" not in advice.text and "intermediate layer" not in advice.text


def test_a_multi_layer_row_that_selected_only_the_top_layer_counts_as_the_top_layer():
    table = _table(_rows([0.6, 0.7, 0.8, 0.9], classifiers=("logreg",), logme=[-1.0, -0.8, -0.6, -0.2]))
    multi = {**table.iloc[-1].to_dict(), "layer": "multi:block4_pool", "depth": math.nan, "classifier": "ridge",
             "cv_score": 0.91, "logme": None}
    advice = _small(pd.concat([table, pd.DataFrame([multi])], ignore_index=True))
    assert advice.mode == "frozen_top"
    assert "The top layer block4_pool scores best" in advice.text
    assert "ranks block4_pool first (-0.200); that agrees with" in advice.text


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
        assert "the top layer block5_pool scores CV 67.8%" in advice.text
        assert "block3_pool scores" not in advice.text
    assert on.mode == off.mode == "finetune"  # block5 ties block1 (4.4 points < 2 SE of 2.9)
    narrow_on, narrow_off = (recommend(_hymenoptera_like(screening=flag), n_train=245, n_classes=2,
                                       smallest_class=121, n_se=1.0) for flag in (True, False))
    assert narrow_on.mode == narrow_off.mode == "frozen_intermediate"  # 4.4 points > 1 SE: the top is too weak


def test_logme_evidence_is_the_tables_maximum_screening_rows_included():
    table = _hymenoptera_like(screening=True)
    advice = recommend(table, n_train=245, n_classes=2, smallest_class=121)
    leader = table.loc[table["logme"].idxmax()]
    assert leader["layer"] == "block4_pool"  # a layer with screening rows only
    assert f"ranks block4_pool first ({leader['logme']:.3f})" in advice.text
    assert "differs from cross-validation's best single layer block1_pool" in advice.text


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
    assert "**scratch VGG16 (weights none)**: failed training" in advice.text
    assert advice.mode == "finetune" and advice.row["mode"] == "finetune"
    # A failed row is not a result even when it is the only trained row: the size rule decides, as without it.
    alone = recommend(_table(frozen, [scratch]), n_train=245, n_classes=2, smallest_class=121, largest_class=124,
                      test_majority_rate=83 / 153)
    assert alone.rule == "size" and alone.row["mode"] == "frozen"
    assert "scratch VGG16 (weights none): test" not in alone.text  # not quoted as a measured result
    # Without the rates nothing is flagged.
    assert recommend(table, n_train=245, n_classes=2, smallest_class=121).flags == {}


def test_a_recommended_multi_layer_row_is_a_combination_of_layers_and_settings_read_as_toml():
    rows = _rows([0.6, 0.7, 0.8, 0.85], classifiers=("logreg",), cv_se=0.01)
    multi = {**rows[-1], "layer": "multi:block1_pool+block3_pool", "depth": float("nan"), "classifier": "ridge",
             "feature_dim": 320, "cv_score": 0.93, "logme": None}
    random = _rows([0.5, 0.55, 0.6, 0.6], classifiers=("logreg",), weights="none")
    advice = _small(_table(rows, [multi], random))
    assert advice.row["layer"] == "multi:block1_pool+block3_pool" and advice.mode == "frozen_intermediate"
    assert ("**Recommendation: ridge on the frozen features of a combination of layers (block1_pool+block3_pool) "
            "of VGG16") in advice.text
    assert "intermediate layer" not in advice.text
    assert 'Random-initialisation baseline (same backbone, `weights = "none"`)' in advice.text
    assert "weights=None" not in advice.text and "hidden_units" not in advice.text


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


def test_a_multi_layer_rows_optimistic_cv_does_not_set_the_bar_for_ties():
    rows = _rows([0.6, 0.7, 0.82, 0.85], classifiers=("logreg",), cv_se=0.02)
    multi = {**rows[-1], "layer": "multi:block3_pool+block4_pool", "depth": float("nan"), "classifier": "ridge",
             "feature_dim": 768, "cv_score": 0.95, "cv_se": 0.01, "logme": None}
    advice = _small(_table(rows, [multi]))
    # The bar is block4's 85% - 2 x 2.0: block3 ties it and is cheaper; the combination's 95% does not raise it.
    assert advice.row["layer"] == "block3_pool" and advice.mode == "frozen_intermediate"
    assert "its CV is optimistic: it ties where it reaches the bar but does not set it" in advice.text


def test_finetuning_is_never_advised_for_a_backbone_the_finetune_stage_cannot_finetune():
    # Only random-initialisation rows: [finetune] finetunes backbones with weights, so the size rule keeps frozen.
    random_only = _table(_rows([0.6, 0.8, 0.85, 0.9], weights="none"))
    advice = recommend(random_only, n_train=30_000, n_classes=10, smallest_class=2_900)
    assert advice.mode == "frozen_top" and advice.row["weights"] == "none"
    assert "the table has no pretrained backbone to finetune" in advice.text
    assert "finetune the top blocks" not in advice.text

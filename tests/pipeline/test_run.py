import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

import layerprobe.pipeline.run.extractions as extractions_module
import layerprobe.pipeline.run.rows as rows_module
from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.store import FeatureStore
from layerprobe.pipeline.cli import main
from layerprobe.pipeline.config import ConfigError, config_from_dict
from layerprobe.pipeline.persistence import load_classifier
from layerprobe.pipeline.results import RESULT_COLUMNS
from layerprobe.pipeline.run import run_experiment

CLASSES = ("blue", "green", "red")
LAYERS = ["block1_pool", "block3_pool"]
N_TRAIN, N_TEST = 8, 4  # per class


def _images(per_split=(("train", N_TRAIN), ("test", N_TEST))) -> dict:
    """Image counts for `write_colour_images`: every class (red, green, blue) in every split."""
    return {split: {name: count for name in CLASSES[::-1]} for split, count in per_split}


def _raw(data, store, out, *, names=("logreg", "linear_svm"), layers=LAYERS, logreg_grid=(0.1, 1.0), **data_options):
    return {
        "data": {"path": str(data), "train_split": "train", "test_split": "test", **data_options},
        "features": {"store": str(store), "input_size": 32, "batch_size": 16},
        "backbones": [{"model": "VGG16", "weights": "none", "layers": list(layers)}],
        "classifiers": {
            "names": list(names),
            "cv": 2,
            "grids": {"logreg": {"C": list(logreg_grid)}, "linear_svm": {"C": [0.1]}},
        },
        "output": {"dir": str(out)},
    }


def _config(*args, **kwargs):
    return config_from_dict(_raw(*args, **kwargs), "/")


def _toml(path: Path, data, store, out) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            [data]
            path = "{data}"
            test_split = "test"
            [features]
            store = "{store}"
            input_size = 32
            batch_size = 16
            [[backbones]]
            model = "VGG16"
            weights = "none"
            layers = {json.dumps(LAYERS)}
            [classifiers]
            names = ["logreg", "linear_svm"]
            cv = 2
            [classifiers.grids]
            logreg = {{ C = [0.1, 1.0] }}
            linear_svm = {{ C = [0.1] }}
            [output]
            dir = "{out}"
            """
        ),
        encoding="utf-8",
    )
    return path


def _quiet(line):
    pass


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, write_colour_images):
    return write_colour_images(tmp_path_factory.mktemp("data") / "images", _images())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("first")
    config = _config(data_dir, root / "store", root / "out")
    return config, run_experiment(config, log=_quiet, progress=False)


@pytest.fixture
def forward_calls(monkeypatch):
    """Counts the forward passes of every extractor."""
    calls = []
    original = FeatureExtractor.iter_features

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FeatureExtractor, "iter_features", counting)
    return calls


def _forbid(monkeypatch, *, forward=True, fit=True):
    def fail(*args, **kwargs):
        raise AssertionError("this run must reuse its results, not compute them")

    if forward:
        monkeypatch.setattr(FeatureExtractor, "iter_features", fail)
    if fit:
        monkeypatch.setattr(rows_module, "fit_classifier", fail)


def test_results_table_has_one_row_per_layer_and_classifier(first_run):
    config, result = first_run
    table = pd.read_csv(result.results_path)
    assert list(table.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    # Per layer: the ridge curve (issue 31.1: every run scores each layer with it, screening or not), then the
    # config's classifiers.
    assert len(table) == 6 and result.n_fitted == 6 and result.n_reused == 0
    assert result.n_forward == 3 * (N_TRAIN + N_TEST)  # one extraction for both layers
    assert set(table["mode"]) == {"frozen"}
    assert list(table["layer"]) == ["block1_pool"] * 3 + ["block3_pool"] * 3
    assert list(table["classifier"]) == ["ridge", "logreg", "linear_svm"] * 2
    assert list(table["row_kind"]) == ["screening", "final", "final"] * 2
    assert list(table["stage"]) == [1, 1, 1, 3, 3, 3]
    assert table["depth"].between(0, 1).all() and table["depth"].is_monotonic_increasing
    assert list(table["feature_dim"]) == [64] * 3 + [256] * 3
    assert table["forward_gflops"].gt(0).all() and table["forward_gflops"].is_monotonic_increasing
    assert set(table["n_train"]) == {3 * N_TRAIN} and set(table["n_test"]) == {3 * N_TEST}
    assert table["test_accuracy"].between(0, 1).all()
    final = table[table["row_kind"] == "final"]
    assert all(json.loads(params).keys() == {"C"} for params in final["best_params"])
    assert all(Path(path).is_file() for path in table["model_path"])
    summary = result.summary_path.read_text()
    assert "| VGG16, random | block1_pool | logreg |" in summary and "![depth](depth.png)" in summary
    assert "## Recommendation" in summary and "**Recommendation" in summary
    assert "None: every image decoded." in summary
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.advice.small and result.advice.samples_per_class == N_TRAIN


def test_saved_classifiers_reload_and_predict_identically(first_run):
    config, result = first_run
    store = FeatureStore(config.features.store)
    for row in result.results.itertuples():
        estimator, sidecar = load_classifier(row.model_path)
        test = store.load(row.store_entry, split="test")
        predictions = pd.read_csv(Path(row.model_path).with_suffix(".predictions.csv"))
        predicted = np.asarray(test.class_names)[estimator.predict(test.X)]
        np.testing.assert_array_equal(predicted, predictions["predicted_label"])
        assert list(predictions["sample_id"]) == list(test.sample_ids)
        assert sidecar["store_entries"] == [row.store_entry] and sidecar["layers"] == [row.layer]
        assert sidecar["classifier"] == row.classifier
        assert sidecar["class_names"] == list(CLASSES)
        assert sidecar["scores"]["accuracy"] == pytest.approx(row.test_accuracy)
        assert json.dumps(sidecar["best_params"], sort_keys=True) == row.best_params


def test_cross_validation_only_sees_the_training_split(first_run, tmp_path, monkeypatch):
    config, _ = first_run
    seen = []
    original = rows_module.fit_classifier

    def recording(X_train, y_train, *args, **kwargs):
        seen.append((np.array(X_train), np.array(y_train)))
        return original(X_train, y_train, *args, **kwargs)

    monkeypatch.setattr(rows_module, "fit_classifier", recording)
    result = run_experiment(config.with_paths(output_dir=tmp_path / "out"), log=_quiet, progress=False)
    assert len(seen) == 6
    store = FeatureStore(config.features.store)
    for (X, y), row in zip(seen, result.results.itertuples()):
        train = store.load(row.store_entry, split="train")
        test = store.load(row.store_entry, split="test")
        np.testing.assert_array_equal(X, train.X)
        np.testing.assert_array_equal(y, train.y)
        assert not {x.tobytes() for x in X} & {x.tobytes() for x in test.X}


def test_rerun_of_the_same_config_does_no_forward_pass_and_no_fit(first_run, monkeypatch):
    config, first = first_run
    _forbid(monkeypatch)
    again = run_experiment(config, log=_quiet, progress=False)
    assert (again.n_forward, again.n_fitted, again.n_reused) == (0, 0, 6)
    pd.testing.assert_frame_equal(pd.read_csv(again.results_path), pd.read_csv(first.results_path))


def test_cli_rerun_reports_cached_features_and_reused_rows(first_run, tmp_path, monkeypatch, capsys):
    config, first = first_run
    path = _toml(tmp_path / "run.toml", config.data.path, config.features.store, config.output.dir)
    _forbid(monkeypatch)
    assert main(["run", str(path), "--no-progress"]) == 0
    output = capsys.readouterr().out
    assert output.count("cached   block") == 2 and output.count("reused block") == 6
    assert f"results: {first.results_path}" in output


def test_cached_rerun_builds_no_backbone_until_its_weights_file_changes(data_dir, tmp_path, monkeypatch):
    import keras

    weights = tmp_path / "vgg16.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    raw = _raw(data_dir, tmp_path / "store", tmp_path / "out", names=["logreg"])
    raw["backbones"][0]["weights"] = str(weights)
    first = run_experiment(config_from_dict(raw, tmp_path), log=_quiet, progress=False)
    assert first.n_fitted == 4 and list((tmp_path / "store" / ".plans").glob("*.json"))

    def no_build(*args, **kwargs):
        raise AssertionError("everything is cached: the backbone must not be built")

    monkeypatch.setattr(extractions_module.FeatureExtractor, "from_config", classmethod(no_build))
    again = run_experiment(config_from_dict(raw, tmp_path), log=_quiet, progress=False)
    assert (again.n_forward, again.n_fitted, again.n_reused) == (0, 0, 4)
    pd.testing.assert_frame_equal(again.results, first.results)

    os.utime(weights)  # the plan no longer applies: the backbone is built to recompute the keys
    with pytest.raises(AssertionError, match="must not be built"):
        run_experiment(config_from_dict(raw, tmp_path), log=_quiet, progress=False)


def test_classifier_only_change_reuses_every_feature(data_dir, tmp_path, forward_calls):
    logreg = _config(data_dir, tmp_path / "store", tmp_path / "out", names=["logreg"])
    run = run_experiment(logreg, log=_quiet, progress=False)
    assert run.n_fitted == 4 and forward_calls  # the ridge curve and logreg, on both layers
    forward_calls.clear()
    both = _config(data_dir, tmp_path / "store", tmp_path / "out", names=["logreg", "linear_svm"])
    run = run_experiment(both, log=_quiet, progress=False)
    assert (run.n_forward, len(forward_calls)) == (0, 0)
    assert (run.n_fitted, run.n_reused) == (2, 4)
    assert list(run.results["classifier"]) == ["ridge", "logreg", "linear_svm"] * 2


def test_changed_grid_refits_that_classifier_only(first_run, tmp_path, monkeypatch):
    config, _ = first_run
    shutil.copytree(config.output.dir, tmp_path / "out")  # a moved output folder is reused too
    changed = _config(config.data.path, config.features.store, tmp_path / "out", logreg_grid=(0.5,))
    _forbid(monkeypatch, fit=False)
    run = run_experiment(changed, log=_quiet, progress=False)
    assert (run.n_fitted, run.n_reused) == (2, 4)
    refit = run.results[run.results["classifier"] == "logreg"]
    assert all(json.loads(params) == {"C": 0.5} for params in refit["best_params"])


def test_killed_run_keeps_its_completed_rows(first_run, tmp_path, monkeypatch):
    config, _ = first_run
    config = config.with_paths(output_dir=tmp_path / "out")
    original = rows_module.fit_classifier
    calls = []

    def dies_on_third_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(rows_module, "fit_classifier", dies_on_third_fit)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, log=_quiet, progress=False)
    kept = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(kept["classifier"]) == ["ridge", "logreg"]
    assert not [p for p in (tmp_path / "out").rglob(".tmp-*")]  # no temporary files
    assert not [p for p in (tmp_path / "out").rglob("*.lock")]  # nor lock files: the table's went with its lock
    monkeypatch.setattr(rows_module, "fit_classifier", original)
    resumed = run_experiment(config, log=_quiet, progress=False)
    assert (resumed.n_fitted, resumed.n_reused) == (4, 2)
    pd.testing.assert_frame_equal(resumed.results.iloc[:2], kept, check_dtype=False)


def _cores(monkeypatch, cores):
    """This run's usable cores as `cores` (rows side by side from 2 on), whatever the machine has."""
    import layerprobe.pipeline.run.fitting as fitting

    monkeypatch.setattr(fitting, "usable_cores", lambda: cores)


def test_rows_in_parallel_give_the_serial_table(first_run, tmp_path, monkeypatch):
    config, _ = first_run
    _cores(monkeypatch, 1)
    serial = run_experiment(config.with_paths(output_dir=tmp_path / "serial"), log=_quiet, progress=False)
    _cores(monkeypatch, 2)
    original, both_started = rows_module.fit_classifier, threading.Barrier(2, timeout=120)
    calls = []

    def two_at_once(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            both_started.wait()  # the first two rows are fitted at the same time, or this fails
        return original(*args, **kwargs)

    monkeypatch.setattr(rows_module, "fit_classifier", two_at_once)
    lines = []
    parallel = run_experiment(config.with_paths(output_dir=tmp_path / "parallel"), log=lines.append, progress=False)
    assert "  fitting 6 classifier rows, 2 at a time" in lines and len(calls) == 6
    assert parallel.n_fitted == serial.n_fitted == 6
    same = [column for column in serial.results.columns if column not in ("fit_seconds", "model_path")]
    pd.testing.assert_frame_equal(parallel.results[same], serial.results[same])  # same numbers, same order
    assert [Path(path).parent.name for path in parallel.results["model_path"]] == [
        Path(path).parent.name for path in serial.results["model_path"]
    ]
    monkeypatch.setattr(rows_module, "fit_classifier", original)
    again = run_experiment(config.with_paths(output_dir=tmp_path / "parallel"), log=_quiet, progress=False)
    assert (again.n_fitted, again.n_reused) == (0, 6)  # the rows' records were written as before


def test_a_row_failing_in_parallel_keeps_the_rows_before_it(first_run, tmp_path, monkeypatch):
    config, _ = first_run
    config = config.with_paths(output_dir=tmp_path / "out")
    _cores(monkeypatch, 2)
    original = rows_module.fit_classifier

    def fails_on_the_second_layer(X, *args, **kwargs):
        if X.shape[1] == 256:  # block3_pool, rows 4 to 6
            raise KeyboardInterrupt
        return original(X, *args, **kwargs)

    monkeypatch.setattr(rows_module, "fit_classifier", fails_on_the_second_layer)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, log=_quiet, progress=False)
    kept = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(kept["layer"]) == ["block1_pool"] * 3  # saved before the error, as a serial run


def test_fit_killed_between_its_files_never_pairs_them_with_the_earlier_row(first_run, tmp_path, monkeypatch):
    config, _ = first_run
    shutil.copytree(config.output.dir, tmp_path / "out")
    config = config.with_paths(output_dir=tmp_path / "out")

    def save_estimator_then_die(stem, estimator, sidecar):
        joblib.dump(estimator, Path(stem).with_suffix(".joblib"))
        raise KeyboardInterrupt  # killed before the sidecar is written

    changed = _config(config.data.path, config.features.store, tmp_path / "out", logreg_grid=(0.5,))
    with monkeypatch.context() as patch:
        patch.setattr(rows_module, "save_classifier", save_estimator_then_die)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(changed, log=_quiet, progress=False)
    # Back to the first grid: the row whose estimator was replaced is fitted again, not reused.
    again = run_experiment(config, log=_quiet, progress=False)
    assert (again.n_fitted, again.n_reused) == (1, 5)
    for row in again.results[again.results["row_kind"] == "final"].itertuples():
        estimator, sidecar = load_classifier(row.model_path)
        assert estimator.named_steps["clf"].C == json.loads(row.best_params)["C"] == sidecar["best_params"]["C"]


def test_two_concurrent_runs_on_one_store_and_output_both_finish(data_dir, tmp_path):
    config_path = _toml(tmp_path / "run.toml", data_dir, tmp_path / "store", tmp_path / "out")
    script = "import logging, sys; from layerprobe.pipeline.config import load_config; " \
             "from layerprobe.pipeline.run import run_experiment; logging.basicConfig(level=logging.INFO); " \
             "run_experiment(load_config(sys.argv[1]), progress=False)"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(config_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300)[0].decode() for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert sum(output.count("computed block") for output in outputs) == 2  # each layer extracted once
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(table) == 6
    assert len(FeatureStore(tmp_path / "store").entries()) == 2
    for path in table["model_path"]:
        load_classifier(path)


def test_single_split_data_is_split_stratified_and_unreadable_images_are_reported(
        tmp_path, write_colour_images):
    data = write_colour_images(tmp_path / "images", _images((("", 8),)))
    (data / "red" / "broken.png").write_bytes(b"not a png")
    raw = _raw(data, tmp_path / "store", tmp_path / "out", names=["logreg"], layers=["block1_pool"], test_size=0.25)
    result = run_experiment(config_from_dict(raw, "/"), log=_quiet, progress=False)
    row = result.results.iloc[0]
    # 25 images: ceil(25 * 0.25) = 7 test and 18 train, less the unreadable one
    assert row["n_train"] + row["n_test"] == 24 and row["n_test"] in (6, 7)
    assert [Path(sample).name for sample, _ in result.skipped] == ["broken.png"]
    summary = result.summary_path.read_text()
    assert "broken.png" in summary and "made: stratified, test_size 0.25" in summary


def test_problems_found_before_any_work(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="no layer 'block9_pool'"):
        run_experiment(_config(data_dir, tmp_path / "store", tmp_path / "out", layers=["block9_pool"]), log=_quiet)
    with pytest.raises(ConfigError, match=r"has the splits \['train', 'test'\], not both 'train' and 'val'"):
        raw = _raw(data_dir, tmp_path / "store", tmp_path / "out")
        raw["data"]["test_split"] = "val"
        run_experiment(config_from_dict(raw, "/"), log=_quiet)
    assert not list((tmp_path / "store").glob("*.h5")) and not (tmp_path / "out").exists()


def test_predict_command_rebuilds_the_extractor_and_matches_the_run(first_run, tmp_path):
    config, result = first_run
    row = result.results.iloc[-1]
    out = tmp_path / "predictions.csv"
    argv = ["predict", row["model_path"], "--data", str(config.data.path), "--out", str(out)]
    assert main(argv + ["--store", str(tmp_path / "new-store"), "--no-progress"]) == 0  # recomputes features
    predicted = pd.read_csv(out).set_index("sample_id")
    from_run = pd.read_csv(Path(row["model_path"]).with_suffix(".predictions.csv")).set_index("sample_id")
    pd.testing.assert_series_equal(predicted.loc[from_run.index, "predicted_label"], from_run["predicted_label"])
    assert (predicted["true_label"].notna()).all()


@pytest.mark.slow  # trains VGG16 end to end three times
def test_finetune_stage_adds_rows_and_reuses_them(data_dir, tmp_path, monkeypatch):
    import layerprobe.pipeline.finetune as finetune_module
    from layerprobe.features.backbone import load_backbone

    weights = tmp_path / "start.weights.h5"
    load_backbone("VGG16", weights=None, input_size=32, seed=1).model.save_weights(weights)
    raw = _raw(data_dir, tmp_path / "store", tmp_path / "out", names=["logreg"], layers=["top"])
    raw["backbones"][0]["weights"] = str(weights)
    raw["finetune"] = {
        "modes": ["finetune", "scratch"], "head_epochs": 1, "finetune_epochs": 1, "val_fraction": 0,
        "augmentation": {}, "batch_size": 8,
    }
    config = config_from_dict(raw, "/")
    result = run_experiment(config, log=_quiet, progress=False)
    table = pd.read_csv(result.results_path)
    assert list(table["mode"]) == ["frozen", "finetune", "scratch"]
    assert list(table["weights"]) == ["start.weights.h5", "start.weights.h5", "none"]
    assert table["test_accuracy"].between(0, 1).all() and set(table["n_test"]) == {3 * N_TEST}
    assert all(Path(path).is_file() for path in table["model_path"])
    assert "scratch" in result.summary_path.read_text()

    _forbid(monkeypatch)
    monkeypatch.setattr(finetune_module, "finetune", rows_module.fit_classifier)  # raises if called
    monkeypatch.setattr(finetune_module, "train_from_scratch", rows_module.fit_classifier)
    again = run_experiment(config, log=_quiet, progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(again.results_path), table)

    monkeypatch.undo()
    # Settings its checkpoint cannot be resumed with: the scratch run starts over instead of failing.
    raw["finetune"] = {**raw["finetune"], "modes": ["scratch"], "head_learning_rate": 0.01, "finetune_epochs": 0}
    lines = []
    changed = run_experiment(config_from_dict(raw, "/"), log=lines.append, progress=False)
    assert list(changed.results["mode"]) == ["frozen", "scratch"]
    assert any(line.startswith("  training scratch VGG16") for line in lines)


@pytest.mark.slow
def test_default_experiment_end_to_end(tmp_path, monkeypatch):
    from layerprobe.pipeline.default_experiment import run_default

    lines = []
    result = run_default(tmp_path / "out", store=tmp_path / "store", log=lines.append, progress=False)
    assert any("held-out accuracy" in line for line in lines)
    # Per weights: the ridge curve on 5 stages, 2 classifiers on the 2 best, the multi-layer row.
    assert len(result.results) == 20 and set(result.results["weights"]) > {"none"}
    assert result.plot_path.is_file() and result.advice.mode in ("frozen_top", "frozen_intermediate")
    _forbid(monkeypatch)
    lines.clear()
    again = run_default(tmp_path / "out", store=tmp_path / "store", log=lines.append, progress=False)
    assert (again.n_forward, again.n_fitted) == (0, 0)
    assert any("source network: reused" in line for line in lines)


def test_sidecars_record_the_extractors_get_config(first_run):
    from layerprobe.pipeline.persistence import read_sidecar

    config, result = first_run
    extraction = extractions_module.plan_extractions(config)[0]
    assert extraction.extractor is None  # the plan is in the store: nothing built
    built = FeatureExtractor(**extraction.settings)
    assert extraction.get_config() == built.get_config()
    for path in result.results["model_path"]:
        sidecar = read_sidecar(path)
        assert sidecar["extractor"] == json.loads(json.dumps(built.get_config()))
        assert sidecar["layers"] == [sidecar["store_keys"][0]["layer"]]


def test_a_row_whose_model_was_deleted_is_fitted_again(first_run, tmp_path):
    config, _ = first_run
    shutil.copytree(config.output.dir, tmp_path / "out")
    config = config.with_paths(output_dir=tmp_path / "out")
    deleted = Path(pd.read_csv(tmp_path / "out" / "results.csv")["model_path"].iloc[0].replace(
        str(first_run[0].output.dir), str(tmp_path / "out")))
    deleted.unlink()
    again = run_experiment(config, log=_quiet, progress=False)
    assert (again.n_fitted, again.n_reused) == (1, 5) and deleted.is_file()


def test_a_finetune_row_is_trained_again_when_its_weights_file_is_replaced_in_place(data_dir, tmp_path):
    """Issue 32, item 1: the finetune row and its folder key on the weights file's content, not its path."""
    from layerprobe.features.backbone import load_backbone

    weights = tmp_path / "start.weights.h5"
    load_backbone("VGG16", weights=None, input_size=32, seed=1).model.save_weights(weights)
    raw = _raw(data_dir, tmp_path / "store", tmp_path / "out", names=["logreg"], layers=["top"])
    raw["backbones"][0]["weights"] = str(weights)
    raw["finetune"] = {"modes": ["finetune"], "head_epochs": 1, "finetune_epochs": 0, "val_fraction": 0,
                       "augmentation": {}, "batch_size": 8, "head_init": "glorot"}
    config = config_from_dict(raw, "/")
    first = run_experiment(config, log=_quiet, progress=False, finetune_only=True)
    assert first.n_fitted == 1
    assert run_experiment(config, log=_quiet, progress=False, finetune_only=True).n_fitted == 0
    before = weights.stat()
    load_backbone("VGG16", weights=None, input_size=32, seed=2).model.save_weights(weights)  # same path, new weights
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # even with its time set back
    replaced = run_experiment(config, log=_quiet, progress=False, finetune_only=True)
    assert replaced.n_fitted == 1  # before the fix: the row of the old weights, reused
    old, new = (Path(run.results["model_path"].iloc[0]).parent for run in (first, replaced))
    assert old != new and old.is_dir()  # a training of other weights gets its own folder

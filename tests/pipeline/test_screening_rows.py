"""Screening in a depth sweep: ridge rows on every layer, grid-searched rows on the best few, a multi-layer row."""

import hashlib
import json
from pathlib import Path

import layerprobe.pipeline.run.multi_layer as multi_layer_module
import layerprobe.pipeline.run.rows as rows_module
import layerprobe.pipeline.run.screening as screening_module
import numpy as np
import pandas as pd
import pytest
from layerprobe.core.errors import InputError
from layerprobe.features.extract import FeatureExtractor
from layerprobe.features.store import FeatureStore
from layerprobe.pipeline.cli import main
from layerprobe.pipeline.config import config_from_dict
from layerprobe.pipeline.persistence import load_classifier
from layerprobe.pipeline.predict import predict_images
from layerprobe.pipeline.results import RESULT_COLUMNS, read_results
from layerprobe.pipeline.run import run_experiment

CLASSES = ("blue", "green", "red")
LAYERS = ["block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool"]
DIMS = {"block1_pool": 64, "block2_pool": 128, "block3_pool": 256, "block4_pool": 512, "block5_pool": 512}
EXPENSIVE = ("logreg", "linear_svm")
N_TRAIN, N_TEST = 8, 4  # per class


def _config(data, store, out, **classifiers):
    return config_from_dict(
        {
            "data": {"path": str(data), "train_split": "train", "test_split": "test"},
            "features": {"store": str(store), "input_size": 32, "batch_size": 16},
            "backbones": [{"model": "VGG16", "weights": "none", "layers": LAYERS}],
            "classifiers": {
                "names": list(EXPENSIVE),
                "cv": 2,
                "grids": {"logreg": {"C": [0.1, 1.0]}, "linear_svm": {"C": [0.1]}},
                **classifiers,
            },
            "output": {"dir": str(out)},
        },
        "/",
    )


def _quiet(line):
    pass


def _digest(X) -> str:
    return hashlib.sha256(np.ascontiguousarray(X, dtype=np.float32).tobytes()).hexdigest()


def _recording_run(config, monkeypatch):
    """Runs `config`, recording (classifier, digest of X_train) of every fit_classifier call."""
    calls = []
    original = rows_module.fit_classifier

    def recording(X_train, y_train, classifier, **kwargs):
        calls.append((classifier, _digest(X_train)))
        return original(X_train, y_train, classifier, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(rows_module, "fit_classifier", recording)
        result = run_experiment(config, log=_quiet, progress=False)
    return result, calls


def _layer_of_digest(config, table):
    """Digest of each layer's training features -> layer name."""
    store = FeatureStore(config.features.store)
    single = table[~table["layer"].str.startswith("multi:")].drop_duplicates("layer")
    return {_digest(store.load(row.store_entry, split="train").X): row.layer for row in single.itertuples()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, write_colour_images):
    counts = {"train": N_TRAIN, "test": N_TEST}  # per class; classes red, green, blue brighten channels 0, 1, 2
    return write_colour_images(tmp_path_factory.mktemp("data") / "images",
                               {split: {name: n for name in CLASSES[::-1]} for split, n in counts.items()})


@pytest.fixture(scope="module")
def screened(data_dir, tmp_path_factory):
    """A run with screening on ("auto": 5 layers), top-2, and the fit_classifier calls it made."""
    root = tmp_path_factory.mktemp("screened")
    config = _config(data_dir, root / "store", root / "out")
    with pytest.MonkeyPatch.context() as monkeypatch:
        result, calls = _recording_run(config, monkeypatch)
    return config, result, calls


def test_screening_fits_the_expensive_classifiers_only_on_the_top_k_layers(screened):
    config, result, calls = screened
    table = result.results
    layer_of = _layer_of_digest(config, table)
    per_layer = {layer: sorted(c for c, digest in calls if layer_of[digest] == layer) for layer in LAYERS}
    ridge = table[table["classifier"].eq("ridge") & ~table["layer"].str.startswith("multi:")]
    assert list(ridge["layer"]) == LAYERS and set(ridge["row_kind"]) == {"screening"}
    # Best ridge leave-one-out accuracy first; ties by LogME, then depth order.
    ranked = ridge.assign(position=range(len(ridge))).sort_values(
        ["cv_score", "logme", "position"], ascending=[False, False, True]
    )
    top = set(ranked["layer"].iloc[:2])
    for layer in LAYERS:
        expected = sorted(["ridge", *EXPENSIVE]) if layer in top else ["ridge"]
        assert per_layer[layer] == expected, per_layer
    final = table[table["row_kind"].eq("final") & ~table["layer"].str.startswith("multi:")]
    assert set(final["layer"]) == top
    assert sorted(final["classifier"]) == sorted(EXPENSIVE * 2)
    assert len(table) == 5 + 2 * 2 + 1 and result.n_fitted == 10 and result.n_reused == 0


def test_every_layer_gets_a_logme_value_shared_by_its_rows(screened):
    _, result, _ = screened
    table = result.results
    single = table[~table["layer"].str.startswith("multi:")]
    assert np.isfinite(single["logme"]).all()
    assert (single.groupby("layer")["logme"].nunique() == 1).all()
    assert single.groupby("layer")["logme"].first().nunique() == len(LAYERS)
    assert table.loc[table["layer"].str.startswith("multi:"), "logme"].isna().all()


def test_multi_layer_row_names_its_selected_layers_and_sums_their_widths(screened):
    config, result, _ = screened
    table = result.results
    multi = table[table["layer"].str.startswith("multi:")]
    assert len(multi) == 1
    row = multi.iloc[0]
    selected = row["layer"].removeprefix("multi:").split("+")
    assert selected and set(selected) <= set(LAYERS) and selected == [name for name in LAYERS if name in selected]
    assert row["feature_dim"] == sum(DIMS[name] for name in selected)
    assert json.loads(row["best_params"])["layers"] == selected
    assert row["row_kind"] == "final" and row["classifier"] == "ridge"
    # Its CV is nested: the selection repeated inside each of the config's outer folds (issue 31.2).
    assert row["n_folds"] == config.classifiers.cv and 0 <= row["cv_score"] <= 1 and np.isfinite(row["cv_se"])
    # What a deployed multi-layer probe runs per image: the forward pass to its deepest layer.
    single = table[~table["layer"].str.startswith("multi:")].drop_duplicates("layer").set_index("layer")
    assert row["forward_gflops"] == single.loc[selected[-1], "forward_gflops"]
    assert single.loc[LAYERS, "forward_gflops"].is_monotonic_increasing and single["forward_gflops"].gt(0).all()
    # The saved probe reads every layer side by side and predicts what the predictions file says.
    probe, sidecar = load_classifier(row["model_path"])
    assert sidecar["selection_cv_score"] == probe.cv_score_  # the optimistic LOO score, kept for reference
    store = FeatureStore(config.features.store)
    entries = dict(zip(table["layer"], table["store_entry"]))
    assert sidecar["layers"] == LAYERS and sidecar["store_entries"] == [entries[name] for name in LAYERS]
    test = [store.load(entries[name], split="test") for name in LAYERS]
    predicted = np.asarray(test[0].class_names)[probe.predict(np.hstack([part.X for part in test]))]
    predictions = pd.read_csv(Path(row["model_path"]).with_name("ridge.predictions.csv"))
    np.testing.assert_array_equal(predicted, predictions["predicted_label"])
    assert row["store_entry"].split("+") == [entries[name] for name in selected]


def test_predict_command_applies_the_multi_layer_probe_to_new_images(screened, tmp_path):
    config, result, _ = screened
    row = result.results[result.results["layer"].str.startswith("multi:")].iloc[0]
    out = tmp_path / "predictions.csv"
    argv = ["predict", row["model_path"], "--data", str(config.data.path), "--out", str(out),
            "--store", str(tmp_path / "new-store"), "--no-progress"]  # a new store: every layer extracted again
    assert main(argv) == 0
    predicted = pd.read_csv(out).set_index("sample_id")
    from_run = pd.read_csv(Path(row["model_path"]).with_name("ridge.predictions.csv")).set_index("sample_id")
    assert len(predicted) == len(CLASSES) * (N_TRAIN + N_TEST)
    pd.testing.assert_series_equal(predicted.loc[from_run.index, "predicted_label"], from_run["predicted_label"])
    assert predicted["true_label"].notna().all()


def test_predict_refuses_a_multi_layer_probe_of_an_older_layerprobe(screened, tmp_path):
    config, result, _ = screened
    row = result.results[result.results["layer"].str.startswith("multi:")].iloc[0]
    sidecar = json.loads(Path(row["model_path"]).with_suffix(".json").read_text())
    record = {**sidecar["extractor"], "layer": LAYERS[0]}
    old = {"format_version": 1, "classifier": "multi_layer", "extractors": [record], "store_keys": sidecar["store_keys"][:1],
           "store": sidecar["store"], "class_names": sidecar["class_names"]}
    (tmp_path / "ridge.json").write_text(json.dumps(old))
    (tmp_path / "ridge.joblib").write_bytes(b"never unpickled")
    with pytest.raises(InputError, match="multi-layer probe saved by an older layerprobe.*rerun"):
        predict_images(tmp_path / "ridge.joblib", config.data.path, out=tmp_path / "p.csv", progress=False,
                       log=_quiet, trust=True)


def test_the_contract_columns_exist_and_intervals_hold_the_estimates(screened):
    config, result, _ = screened
    table = pd.read_csv(result.results_path)
    assert list(table.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    for column in ("cv_se", "n_folds", "test_ci_low", "test_ci_high", "logme", "row_kind"):
        assert column in table.columns
    assert (table["test_ci_low"] <= table["test_accuracy"]).all()
    assert (table["test_accuracy"] <= table["test_ci_high"]).all()
    assert table["test_ci_low"].between(0, 1).all() and table["test_ci_high"].between(0, 1).all()
    assert (table["cv_se"] >= 0).all()
    grid_rows = table[table["classifier"].isin(EXPENSIVE)]
    assert set(grid_rows["n_folds"]) == {config.classifiers.cv}
    ridge_rows = table[(table["classifier"] == "ridge") & ~table["layer"].str.startswith("multi:")]
    assert (ridge_rows["n_folds"] == ridge_rows["n_train"]).all()
    assert all(json.loads(params).keys() == {"alpha"} for params in table.loc[
        (table["classifier"] == "ridge") & ~table["layer"].str.startswith("multi:"), "best_params"])
    summary = result.summary_path.read_text()
    # summary.md's compact table (results.csv has every column): the screening rows are in it too.
    assert "| backbone | layer | classifier | cv (± SE) |" in summary and "| VGG16, random | block2_pool | ridge |" \
        in summary


def test_rerun_reuses_every_row_without_a_fit(screened, monkeypatch):
    config, first, _ = screened

    def fail(*args, **kwargs):
        raise AssertionError("this run must reuse its rows, not fit them")

    monkeypatch.setattr(rows_module, "fit_classifier", fail)
    monkeypatch.setattr(multi_layer_module.MultiLayerProbe, "fit", fail)
    monkeypatch.setattr(FeatureExtractor, "iter_features", fail)
    again = run_experiment(config, log=_quiet, progress=False)
    assert (again.n_forward, again.n_fitted, again.n_reused) == (0, 0, 10)
    pd.testing.assert_frame_equal(pd.read_csv(again.results_path), pd.read_csv(first.results_path))


def test_screening_off_fits_every_classifier_on_every_layer_and_the_ridge_curve(screened, tmp_path, monkeypatch):
    config, first, _ = screened
    off = _config(config.data.path, config.features.store, tmp_path / "out", screening=False)
    result, calls = _recording_run(off, monkeypatch)
    table = result.results
    layer_of = _layer_of_digest(off, table)
    for layer in LAYERS:
        assert sorted(c for c, digest in calls if layer_of[digest] == layer) == sorted(["ridge", *EXPENSIVE])
    assert len(table) == 15 and set(table["row_kind"]) == {"final", "screening"}
    # The ridge rows, the advice's layer curve, are the screened run's: one estimator with screening on or off.
    curve = table[table["row_kind"] == "screening"]
    assert list(curve["classifier"]) == ["ridge"] * 5 and list(curve["layer"]) == LAYERS
    screened_curve = first.results[first.results["row_kind"] == "screening"]
    np.testing.assert_array_equal(curve["cv_score"].to_numpy(), screened_curve["cv_score"].to_numpy())
    assert not table["layer"].str.startswith("multi:").any()  # multi_layer "auto" follows screening
    assert np.isfinite(table["logme"]).all()


def _band_images(root: Path, *, seed: int = 0, strength: int = 20) -> Path:
    """3 classes told apart by a faint bright band (its rows say the class) in noise: 10 train, 4 test images each.

    Hard enough at 32 px with random VGG16 weights that the layers score from chance to about 80 %.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", 10), ("test", 4)):
        for position, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256 - strength, (32, 32, 3))
                pixels[position * 10:(position + 1) * 10] += strength
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:02d}.png")
    return root


def test_screening_on_or_off_gives_the_same_mode_and_layer(tmp_path):
    """Issue 31.1: the layer and the mode come from one estimator (the ridge curve, which both runs fit on every
    layer), not from whichever classifiers screening let through. Before, the screened run took logreg on ridge's
    best layer (block3_pool) and the other the cheapest logreg row within noise of logreg's best (block2_pool)."""
    data = _band_images(tmp_path / "images")
    advice = {}
    for screening in (True, False):
        run = _config(data, tmp_path / "store", tmp_path / f"screening-{screening}", screening=screening,
                      screening_top_k=1, multi_layer=False, names=["logreg"])
        advice[screening] = run_experiment(run, log=_quiet, progress=False).advice
    assert advice[True].mode == advice[False].mode
    assert advice[True].row["layer"] == advice[False].row["layer"]
    assert advice[True].curve_classifier == advice[False].curve_classifier == "ridge"


def test_multi_layer_can_be_asked_for_without_screening(screened, tmp_path, monkeypatch):
    config, first, _ = screened
    both = _config(config.data.path, config.features.store, tmp_path / "out", screening=False, multi_layer=True,
                   names=["ridge"])
    result, calls = _recording_run(both, monkeypatch)
    table = result.results
    assert len(calls) == 5 and set(table["row_kind"]) == {"final"}
    assert list(table["layer"].iloc[:5]) == LAYERS and table["layer"].iloc[5].startswith("multi:")
    same = first.results.set_index("layer").loc[LAYERS]
    screened_ridge = same[same["classifier"] == "ridge"]["cv_score"].to_numpy()
    np.testing.assert_array_equal(table["cv_score"].iloc[:5].to_numpy(), screened_ridge)


def test_results_written_before_the_new_columns_still_load(tmp_path):
    old = tmp_path / "results.csv"
    old.write_text(
        "mode,backbone,weights,layer,stage,depth,pooling,classifier,feature_dim,n_train,n_test,cv_score,"
        "test_accuracy,test_balanced_accuracy,test_macro_f1,fit_seconds,best_params,store_entry,model_path\n"
        'frozen,VGG16,none,block1_pool,1,0.1,avg,logreg,64,24,12,0.5,0.75,0.75,0.7,0.1,"{""C"": 1}",e,m.joblib\n'
    )
    table = read_results(old)
    assert list(table.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    row = table.iloc[0]
    assert row["row_kind"] == "final" and np.isnan(row["logme"]) and np.isnan(row["cv_se"])
    assert row["test_ci_low"] < 0.75 < row["test_ci_high"]


def test_bad_screening_options_are_config_problems(data_dir, tmp_path):
    from layerprobe.pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=r"screening.*auto") as info:
        _config(data_dir, tmp_path / "store", tmp_path / "out", screening="yes", screening_top_k=0)
    assert "screening_top_k" in str(info.value)


def test_screening_on_a_dask_cluster_gives_the_in_process_table(screened, tmp_path):
    """The screening decision is made on the client between the two batches of tasks; the table is the same."""
    distributed = pytest.importorskip("distributed")
    config, local, _ = screened
    remote_config = config.with_paths(output_dir=tmp_path / "out")
    lines = []
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster) as client:
        remote = run_experiment(remote_config, log=lines.append, progress=False, client=client)
    submitted = [line for line in lines if "to the dask cluster" in line]
    assert len(submitted) == 2 and "submitted 5 classifier row(s)" in submitted[0], submitted  # ridge, then top-k
    assert "submitted 4 classifier row(s)" in submitted[1]
    compared = [column for column in local.results.columns if column not in ("fit_seconds", "model_path")]
    pd.testing.assert_frame_equal(local.results[compared], remote.results[compared])


def test_screening_order_ranks_by_cv_score_then_logme_then_position():
    cv_scores = [0.5, 0.8, 0.8, float("nan"), 0.8]
    logmes = [0.1, -0.2, 0.3, 0.9, 0.3]
    assert screening_module.screening_order(cv_scores, logmes) == [2, 4, 1, 0, 3]


def _quick_config(data, root, backbone):
    raw = {
        "data": {"path": str(data), "train_split": "train", "test_split": "test"},
        "features": {"store": str(root / "store"), "input_size": 32, "batch_size": 16},
        "backbones": [{"layers": ["block1_pool", "block2_pool"], **backbone}],
        "classifiers": {"names": ["ridge"], "multi_layer": True},
        "output": {"dir": str(root / "out")},
    }
    return config_from_dict(raw, "/")


def _outside(root):
    """Files and folders under `root` but outside its out/ and store/."""
    return [path for path in root.rglob("*") if path.parts[len(root.parts)] not in ("out", "store")]


def test_model_kwargs_that_keras_ignores_are_refused(data_dir, tmp_path):
    """The issue's config: `pooling` in model_kwargs with a path in it, and a multi-layer row."""
    from layerprobe.pipeline.config import ConfigError

    config = _quick_config(data_dir, tmp_path, {"model": "VGG16", "weights": "none",
                                                 "model_kwargs": {"pooling": "x/../../../ESCAPED"}})
    with pytest.raises(ConfigError, match=r"model_kwargs must not set \['pooling'\].*VGG16 takes no model_kwargs"):
        run_experiment(config, log=_quiet, progress=False)
    assert _outside(tmp_path) == []


def test_every_output_path_component_is_sanitized(data_dir, tmp_path):
    """A constructor argument with a path in it names the multi-layer folder without leaving out/."""
    import keras
    from layerprobe.features.registry import BACKBONES, BackboneSpec, register_backbone

    def tagged(tag=None, **kwargs):
        return keras.applications.VGG16(**kwargs)

    register_backbone(BackboneSpec("TaggedVGG16", tagged, "keras.applications.vgg16", stage_pattern=r"block\d+_pool$"))
    try:
        config = _quick_config(data_dir, tmp_path, {"model": "TaggedVGG16", "weights": "none",
                                                     "model_kwargs": {"tag": "x/../../../ESCAPED"}})
        result = run_experiment(config, log=_quiet, progress=False)
    finally:
        BACKBONES.pop("TaggedVGG16")
    assert _outside(tmp_path) == []
    models = tmp_path / "out" / "models"
    folders = sorted(path.name for path in models.iterdir())
    assert len(folders) == 3 and all("/" not in name for name in folders)
    multi = [name for name in folders if ".multi." in name]
    assert multi and multi[0].startswith("TaggedVGG16_tag_x_.._.._.._ESCAPED_.multi.avg.")
    assert all(Path(path).parent.parent == models for path in result.results["model_path"])

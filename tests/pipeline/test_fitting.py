"""Row specs and the one fitting loop: keys from settings, the same rows from every executor, no lost row.

A run killed between rows (inline and in threads) is tested through `run_experiment` in test_run.py.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layerprobe.core.errors import InputError
from layerprobe.features.keys import FeatureKey
from layerprobe.features.plans import PlannedLayer
from layerprobe.features.store import FeatureStore
from layerprobe.pipeline.results import RESULT_COLUMNS, ResultsTable, Row
from layerprobe.pipeline.run.fitting import DaskExecutor, InlineExecutor, ThreadExecutor, fit_rows
from layerprobe.pipeline.run.records import RunRows
from layerprobe.pipeline.run.rows import LayerRowSpec

GRIDS = {"logreg": (("C", (0.1, 1.0)),), "linear_svm": (("C", (0.1, 1.0)),), "ridge": (("alphas", (0.1, 1.0, 10.0)),)}
SPLIT = {"train_split": "train", "test_split": "test", "made": False}
N_TRAIN, N_TEST = 24, 12


def _key(layer):
    return FeatureKey("VGG16", "sha256:w", layer, "avg", 32, "caffe", "float32", "float32", "sha256:d")


def _commit(store, key, X, y, splits):
    partial = store.partial(key, {"batch_size": 8, "chunk_size": len(X), "n_samples": len(X)})
    partial.write_chunk(0, X, np.arange(len(X)), [])
    store.commit(key, partial, 1, sample_ids=[f"img{i}.png" for i in range(len(X))], labels=y, splits=splits,
                 class_names=["a", "b"], metadata={})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two layers of separable features, and a third whose training features hold a NaN."""
    store = FeatureStore(tmp_path_factory.mktemp("fitting") / "store")
    rng = np.random.default_rng(0)
    y = np.arange(N_TRAIN + N_TEST) % 2
    splits = ["train"] * N_TRAIN + ["test"] * N_TEST
    for layer, width in (("block1_pool", 6), ("block2_pool", 9), ("broken", 4)):
        X = (rng.normal(size=(len(y), width)) + y[:, None]).astype("float32")
        if layer == "broken":
            X[0, 0] = np.nan
        _commit(store, _key(layer), X, y, splits)
    return store


def _spec(store, out, layer="block1_pool", classifier="logreg", **changes):
    spec = LayerRowSpec(
        key=_key(layer), classifier=classifier, param_grid=GRIDS[classifier], preprocessing=("standardize",),
        pca_components=None, cv=2, seed=0, split=tuple(SPLIT.items()),
        layer=PlannedLayer(layer, layer, "avg", 0.5, 1), architecture="VGG16", weights_label="w.h5",
        store_root=str(store.root), folder=Path(out) / "models" / _key(layer).entry_name,
        extractor={"model": "VGG16", "layers": [layer]},
    )
    return dataclasses.replace(spec, **changes)


def _rows(out):
    return RunRows(ResultsTable(Path(out) / "results.csv"), lambda line: None)


def _specs(store, out):
    return [_spec(store, out, layer, classifier)
            for layer in ("block1_pool", "block2_pool") for classifier in ("logreg", "ridge")]


def test_a_specs_key_is_its_settings(store, tmp_path):
    spec = _spec(store, tmp_path)
    same = _spec(store, tmp_path)
    assert spec == same and hash(spec) == hash(same) and len({spec, same}) == 1 and spec.digest == same.digest
    # Where it is saved, how it is run and its role in the table are not what it fits.
    for other in (dict(row_kind="screening"), dict(n_jobs=4), dict(store_root="/elsewhere")):
        assert _spec(store, tmp_path, **other).digest == spec.digest
    for changed in (dict(param_grid=(("C", (0.1, 10.0)),)), dict(cv=3), dict(seed=1), dict(preprocessing=()),
                    dict(pca_components=2), dict(key=_key("block2_pool")), dict(classifier="linear_svm"),
                    dict(split=tuple({**SPLIT, "test_split": "val"}.items()))):
        assert _spec(store, tmp_path, **changed).digest != spec.digest, changed
    # The record's settings are those earlier runs saved, so their rows are reused.
    assert spec.record().settings == {
        "store_key": _key("block1_pool").digest, "classifier": "logreg", "param_grid": {"C": [0.1, 1.0]},
        "preprocessing": ["standardize"], "pca_components": None, "cv": 2, "seed": 0, "split": SPLIT,
        "search": "warm_path",  # logreg's grid is searched along its warm path
    }
    assert json.loads(json.dumps(spec.settings(), sort_keys=True)) == spec.settings()


def test_every_executor_gives_the_same_rows(store, tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    tables = {}
    loads = []
    original = FeatureStore.stream  # how a row reads its layer: in row blocks (issue 34)
    monkeypatch.setattr(FeatureStore, "stream", lambda self, key, **kw: loads.append(key.layer) or original(self, key, **kw))
    for name, executor in (("inline", InlineExecutor()), ("threads", ThreadExecutor(2))):
        rows = _rows(tmp_path / name)
        fit_rows(_specs(store, tmp_path / name), rows, executor)
        assert (rows.fitted, rows.reused) == (4, 0)
        tables[name] = pd.read_csv(tmp_path / name / "results.csv")
    assert sorted(loads) == ["block1_pool"] * 2 + ["block2_pool"] * 2  # each layer once per run, for both its rows
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster) as client:
        fit_rows(_specs(store, tmp_path / "dask"), _rows(tmp_path / "dask"), DaskExecutor(client))
    tables["dask"] = pd.read_csv(tmp_path / "dask" / "results.csv")
    same = [column for column in RESULT_COLUMNS if column not in ("fit_seconds", "model_path")]
    assert list(tables["inline"].columns) == list(RESULT_COLUMNS)
    assert list(tables["inline"]["layer"]) == ["block1_pool"] * 2 + ["block2_pool"] * 2
    for name in ("threads", "dask"):
        pd.testing.assert_frame_equal(tables[name][same], tables["inline"][same])
    rerun = _rows(tmp_path / "inline")
    fit_rows(_specs(store, tmp_path / "inline"), rerun, ThreadExecutor(2))
    assert (rerun.fitted, rerun.reused) == (0, 4)  # every row reused, whatever fitted it first


@pytest.mark.parametrize("executor", [InlineExecutor, lambda: ThreadExecutor(2)], ids=["inline", "threads"])
def test_an_erroring_row_is_raised_in_order_after_the_rows_before_it_are_saved(store, tmp_path, executor):
    specs = [_spec(store, tmp_path, "block1_pool"), _spec(store, tmp_path, "broken"),
             _spec(store, tmp_path, "block2_pool")]
    with pytest.raises(InputError, match="broken"):
        fit_rows(specs, _rows(tmp_path), executor())
    assert list(pd.read_csv(tmp_path / "results.csv")["layer"]) == ["block1_pool"]
    assert not (specs[2].folder / "logreg.row.json").exists()  # fitted in a thread perhaps, never saved
    rerun = _rows(tmp_path)
    fit_rows([specs[0], specs[2]], rerun, executor())
    assert (rerun.fitted, rerun.reused) == (1, 1)


def test_a_row_takes_its_row_kind_from_its_spec_not_its_record(store, tmp_path):
    fit_rows([_spec(store, tmp_path, classifier="ridge", row_kind="screening")], _rows(tmp_path), InlineExecutor())
    rows = _rows(tmp_path)
    fit_rows([_spec(store, tmp_path, classifier="ridge")], rows, InlineExecutor())
    rows.table.commit()  # the run is over: the earlier run's row it did not replace goes
    assert rows.reused == 1 and list(pd.read_csv(tmp_path / "results.csv")["row_kind"]) == ["final"]


def test_the_row_type_is_the_table_columns():
    assert RESULT_COLUMNS == tuple(field.name for field in dataclasses.fields(Row))
    row = Row(mode="frozen", backbone="VGG16", weights="none", layer="block1_pool", test_accuracy=0.5)
    assert list(row.as_dict()) == list(RESULT_COLUMNS) and Row.from_dict({**row.as_dict(), "old": 1}) == row

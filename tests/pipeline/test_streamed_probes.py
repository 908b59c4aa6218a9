"""Probes fitted on feature streams (`FeatureStore.stream`): the same models as in memory, in bounded memory."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from layerprobe.features.keys import FeatureKey
from layerprobe.features.store import FeatureStore
from layerprobe.pipeline.probes import LinearSVM, RidgeProbeCV, StreamedLinearClassifier


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _key(layer="top"):
    return FeatureKey("Tiny", "sha256:w", layer, "avg", 32, "p", "float32", "float32", "sha256:d")


def _stored(tmp_path, X, y, *, splits=None, chunk=64, n_classes=None):
    """`X`, `y` committed as one store entry; returns the store."""
    store = FeatureStore(tmp_path / "store")
    partial = store.partial(_key(), {"chunk_size": chunk, "n_samples": len(X)})
    starts = range(0, len(X), chunk)
    for index, start in enumerate(starts):
        rows = np.arange(start, min(start + chunk, len(X)))
        partial.write_chunk(index, X[rows], rows, [])
    store.commit(
        _key(), partial, len(starts), sample_ids=[f"array:{i}" for i in range(len(X))], labels=y,
        splits=splits or ["train"] * len(X), class_names=[str(c) for c in range(n_classes or int(y.max()) + 1)],
        metadata={},
    )
    return store


def _clustered(seed, n, d, n_classes, *, offset=0.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    centres = rng.normal(size=(n_classes, d))
    X = centres[y] + 1.5 * rng.normal(size=(n, d)) + offset  # a mean far from 0, as ReLU features have
    return X.astype(np.float32), y


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_classes", [2, 4])
def test_streamed_ridge_equals_the_in_memory_probe(tmp_path, seed, n_classes):
    X, y = _clustered(seed, 400, 24, n_classes, offset=5.0)
    store = _stored(tmp_path, X, y, splits=["train"] * 300 + ["test"] * 100)
    stream = store.stream(_key(), split="train")
    alphas = np.logspace(-4, 2, 13)
    in_memory = RidgeProbeCV(alphas, store_cv_results=True).fit(X[:300], y[:300])
    streamed = RidgeProbeCV(alphas, store_cv_results=True)
    streamed.fit(stream, stream.y)
    assert streamed.solver_ == "gram" and streamed.alpha_ == in_memory.alpha_
    np.testing.assert_allclose(streamed.cv_scores_, in_memory.cv_scores_, atol=1e-6)
    np.testing.assert_allclose(streamed.cv_results_, in_memory.cv_results_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(streamed.coef_, in_memory.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(streamed.intercept_, in_memory.intercept_, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(streamed.predict(X[300:]), in_memory.predict(X[300:]))


def test_streamed_ridge_in_small_blocks_equals_one_block_in_float64(tmp_path):
    X, y = _clustered(3, 200, 12, 3, offset=100.0)
    store = _stored(tmp_path, X.astype(np.float64), y)
    stream = store.stream(_key())
    one_block = RidgeProbeCV(dtype="float64").fit(X.astype(np.float64), y)
    blocks = type("Blocks", (), {"blocks": lambda self: stream.blocks(block_rows=7), "n_features": 12,
                                 "__len__": lambda self: 200})()
    streamed = RidgeProbeCV(dtype="float64").fit(blocks, y)
    np.testing.assert_allclose(streamed.cv_scores_, one_block.cv_scores_, atol=1e-12)
    np.testing.assert_allclose(streamed.coef_, one_block.coef_, rtol=1e-8)


def test_streamed_ridge_rejects_nan_features(tmp_path):
    X, y = _clustered(4, 60, 5, 2)
    X[30, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        RidgeProbeCV().fit(_stored(tmp_path, X, y).stream(_key()), y)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_streamed_logistic_regression_is_sklearns_model_on_standardized_features(tmp_path, n_classes):
    X, y = _clustered(5, 300, 8, n_classes, offset=3.0)
    stream = _stored(tmp_path, X, y).stream(_key())
    streamed = StreamedLinearClassifier(C=0.5, tol=1e-8).fit(stream, stream.y)
    scaler = StandardScaler().fit(X)
    reference = LogisticRegression(C=0.5, tol=1e-8, max_iter=5000).fit(scaler.transform(X), y)
    coef = reference.coef_ / scaler.scale_
    np.testing.assert_allclose(streamed.coef_, coef, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(streamed.intercept_, reference.intercept_ - coef @ scaler.mean_, atol=1e-3)
    assert streamed.coef_.dtype == np.float64 and (streamed.predict(X) == reference.predict(scaler.transform(X))).all()


def test_streamed_svm_is_the_linear_svms_model_on_standardized_features():
    X, y = _clustered(6, 300, 6, 3)
    streamed = StreamedLinearClassifier("squared_hinge", C=0.1, tol=1e-8).fit(X, y)
    scaler = StandardScaler().fit(X)
    reference = LinearSVM(C=0.1, tol=1e-8).fit(scaler.transform(X), y)
    coef = reference.coef_ / scaler.scale_
    np.testing.assert_allclose(streamed.coef_, coef, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(streamed.intercept_, reference.intercept_ - coef @ scaler.mean_, atol=1e-3)


def test_streamed_classifier_rejects_bad_parameters():
    X, y = _clustered(7, 20, 3, 2)
    for kwargs, match in [({"loss": "hinge"}, "loss"), ({"C": 0}, "'C'"), ({"max_iter": 0}, "max_iter")]:
        with pytest.raises(ValueError, match=match):
            StreamedLinearClassifier(**kwargs).fit(X, y)


_BUDGET_CHILD = textwrap.dedent(
    """
    import resource, sys, warnings
    import numpy as np
    from threadpoolctl import threadpool_limits
    from layerprobe.features.store import FeatureStore
    from layerprobe.pipeline.streamed_fit import fit_streamed

    store_dir, budget = sys.argv[1], int(sys.argv[2])
    threadpool_limits(1)
    stream = FeatureStore(store_dir).stream(FeatureStore(store_dir).entries()[0]["entry"], split="train")
    for dtype in ("float32", "float64"):  # BLAS allocates its work buffers at its first products
        np.ones((256, 256), dtype) @ np.ones((256, 256), dtype)
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + budget, resource.getrlimit(resource.RLIMIT_AS)[1]))
    try:
        stream.load()
        print("loaded whole")
    except MemoryError:
        print("too big to load")
    ridge = fit_streamed(stream, "ridge", max_rows=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logreg = fit_streamed(stream, "logreg", param_grid={"C": [0.1]}, max_rows=2000, cv=2)
    print("ridge", ridge.estimator.named_steps["clf"].solver_, round(ridge.cv_score, 3))
    print("logreg", type(logreg.estimator.named_steps["clf"]).__name__, logreg.best_params)
    """
)


@pytest.mark.slow
def test_a_row_on_a_store_bigger_than_the_memory_budget_finishes(tmp_path):
    n, d, budget = 240_000, 256, 160 << 20  # 246 MB of features (train: 184 MB) under a 160 MB address-space budget
    rng = np.random.default_rng(0)
    y = np.arange(n) % 4
    centres = rng.normal(size=(4, d)).astype(np.float32)
    store = FeatureStore(tmp_path / "store")
    partial = store.partial(_key(), {"chunk_size": 20_000, "n_samples": n})
    for index, start in enumerate(range(0, n, 20_000)):
        rows = np.arange(start, start + 20_000)
        X = centres[y[rows]] + rng.normal(size=(len(rows), d)).astype(np.float32) * 4
        partial.write_chunk(index, X, rows, [])
    store.commit(
        _key(), partial, n // 20_000, sample_ids=[f"array:{i}" for i in range(n)], labels=y,
        splits=["train"] * (3 * n // 4) + ["test"] * (n // 4), class_names=list("abcd"), metadata={},
    )
    child = subprocess.run(
        [sys.executable, "-c", _BUDGET_CHILD, str(store.root), str(budget)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )
    assert child.returncode == 0, child.stderr[-3000:]
    lines = child.stdout.splitlines()
    assert lines[0] == "too big to load"  # the budget binds: the training features do not fit in it
    assert lines[1].startswith("ridge gram") and float(lines[1].split()[2]) > 0.9
    assert lines[2] == "logreg StreamedLinearClassifier {'C': 0.1}"


def test_streamed_logme_equals_the_in_memory_score(tmp_path):
    from layerprobe.pipeline.probes import logme_score

    X, y = _clustered(8, 500, 16, 5, offset=2.0)
    stream = _stored(tmp_path, X, y).stream(_key())
    blocks = type("Blocks", (), {"blocks": lambda self: stream.blocks(block_rows=33), "n_features": 16,
                                 "__len__": lambda self: 500})()
    assert logme_score(blocks, y) == pytest.approx(logme_score(X, y), rel=1e-6)


def test_a_run_streams_the_training_split_that_does_not_fit_in_memory(tmp_path, write_colour_images, monkeypatch):
    import layerprobe.pipeline.run.rows as rows_module
    from layerprobe.pipeline.config import config_from_dict
    from layerprobe.pipeline.persistence import load_classifier
    from layerprobe.pipeline.run import run_experiment

    data = write_colour_images(tmp_path / "images", {split: {c: n for c in ("red", "green", "blue")}
                                                    for split, n in (("train", 8), ("test", 4))})

    def run(name):
        config = config_from_dict({
            "data": {"path": str(data), "train_split": "train", "test_split": "test"},
            "features": {"store": str(tmp_path / "store"), "input_size": 32, "batch_size": 16},
            "backbones": [{"model": "VGG16", "weights": "none", "layers": ["block1_pool", "block2_pool"]}],
            "classifiers": {"names": ["ridge", "logreg"], "cv": 2, "grids": {"logreg": {"C": [0.1, 1.0]}},
                            "screening": False},
            "output": {"dir": str(tmp_path / name)},
        }, "/")
        return run_experiment(config, log=lambda line: None, progress=False).results.set_index(["layer", "classifier"])

    in_memory = run("in-memory")
    streamed_rows = []
    original = rows_module.fit_streamed
    monkeypatch.setattr(rows_module, "rows_in_memory", lambda n_features, **kwargs: 5)  # 24 training rows: too many
    monkeypatch.setattr(rows_module, "fit_streamed", lambda train, *a, **k: streamed_rows.append(len(train)) or
                        original(train, *a, **{**k, "max_rows": 12}))
    streamed = run("streamed")
    assert streamed_rows == [24] * 4
    ridge = [(layer, "ridge") for layer in ("block1_pool", "block2_pool")]
    np.testing.assert_allclose(streamed.loc[ridge, "cv_score"], in_memory.loc[ridge, "cv_score"], atol=1e-6)
    assert (streamed.loc[ridge, "logme"] == in_memory.loc[ridge, "logme"]).all()
    logreg = streamed.xs("logreg", level="classifier")
    assert (logreg["n_train"] == 24).all() and (logreg["test_accuracy"] > 0.5).all()
    estimator, _ = load_classifier(logreg["model_path"].iloc[0])
    assert type(estimator.named_steps["clf"]).__name__ == "StreamedLinearClassifier"

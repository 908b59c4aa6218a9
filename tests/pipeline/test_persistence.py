import json
import os
import subprocess
import sys

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io
import sklearn
from sklearn.datasets import make_blobs

from layerprobe.core.errors import InputError
from layerprobe.pipeline.classifiers import fit_classifier
from layerprobe.pipeline.persistence import load_classifier, read_sidecar, save_classifier, write_predictions

CLASS_NAMES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def fitted():
    X, y = make_blobs(n_samples=90, centers=3, n_features=4, random_state=0)
    result = fit_classifier(X, y, "rbf_svm", param_grid={"C": [1.0]}, cv=3)
    return result, X


def _sidecar(result):
    return {
        "store_key": "abc123",
        "classifier": "rbf_svm",
        "best_params": result.best_params,
        "scores": {"accuracy": np.float64(0.97)},
        "class_names": CLASS_NAMES,
    }


@pytest.mark.parametrize("suffix", [".skops", ".json", ""])
def test_saved_classifier_reloads_and_predicts_identically(tmp_path, fitted, suffix):
    result, X = fitted
    model_path = save_classifier(tmp_path / "runs" / "clf", result.estimator, _sidecar(result))
    assert model_path == tmp_path / "runs" / "clf.skops"

    estimator, sidecar = load_classifier(tmp_path / "runs" / f"clf{suffix}")
    np.testing.assert_array_equal(estimator.predict(X), result.estimator.predict(X))
    assert sidecar["store_key"] == "abc123"
    assert sidecar["scores"] == {"accuracy": 0.97}
    assert sidecar["class_names"] == CLASS_NAMES
    assert sidecar["sklearn_version"] == sklearn.__version__
    assert sidecar["layerprobe_version"] and sidecar["created"]


def test_save_leaves_no_temporary_files(tmp_path, fitted):
    result, _ = fitted
    save_classifier(tmp_path / "clf.skops", result.estimator, _sidecar(result))
    save_classifier(tmp_path / "clf", result.estimator, _sidecar(result))  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.json", "clf.skops"]


def test_crash_while_writing_keeps_the_previous_save(tmp_path, fitted, monkeypatch):
    result, X = fitted
    save_classifier(tmp_path / "clf", result.estimator, {"store_key": "old"})

    def crashing_dump(value, filename):
        with open(filename, "wb") as f:
            f.write(b"half a pickle")
        raise OSError("disk full")

    monkeypatch.setattr(skops.io, "dump", crashing_dump)
    with pytest.raises(OSError, match="disk full"):
        save_classifier(tmp_path / "clf", result.estimator, {"store_key": "new"})
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.json", "clf.skops"]
    estimator, sidecar = load_classifier(tmp_path / "clf")
    assert sidecar["store_key"] == "old"
    np.testing.assert_array_equal(estimator.predict(X), result.estimator.predict(X))


def test_bad_sidecar_writes_nothing(tmp_path, fitted):
    result, _ = fitted
    with pytest.raises(ValueError, match="JSON-serializable"):
        save_classifier(tmp_path / "clf", result.estimator, {"when": object()})
    with pytest.raises(ValueError, match="'created'"):
        save_classifier(tmp_path / "clf", result.estimator, {"created": "yesterday"})
    assert list(tmp_path.iterdir()) == []


def test_missing_classifier(tmp_path):
    with pytest.raises(FileNotFoundError, match="No saved classifier.*save_classifier"):
        load_classifier(tmp_path / "nothing.skops")


def test_missing_sidecar_means_an_unfinished_save(tmp_path, fitted):
    result, _ = fitted
    save_classifier(tmp_path / "clf", result.estimator, {})
    (tmp_path / "clf.json").unlink()
    with pytest.raises(FileNotFoundError, match="did not finish.*save the classifier again"):
        load_classifier(tmp_path / "clf.skops")


@pytest.mark.parametrize(
    ("content", "match"),
    [("{not json", "is corrupt"), ('{"format_version": 99}', "format_version 99"), ("[]", "None")],
)
def test_corrupt_or_unknown_sidecar(tmp_path, fitted, content, match):
    result, _ = fitted
    save_classifier(tmp_path / "clf", result.estimator, {})
    (tmp_path / "clf.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        load_classifier(tmp_path / "clf")


class _WritesAFile:
    """Unpickling this calls os.system: what a crafted model file can do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _old_format(tmp_path, estimator):
    """A classifier as an older layerprobe saved it: a .joblib pickle and a format-1 sidecar."""
    joblib.dump(estimator, tmp_path / "clf.joblib")
    extractor = {"model": "VGG16", "weights": None, "model_kwargs": {}, "preprocessing": None, "seed": 0,
                 "layer": "block1_pool", "pooling": "avg", "input_size": 32, "batch_size": 8, "dtype": "float32",
                 "mixed_precision": False}
    sidecar = {"format_version": 1, "extractor": extractor, "store_key": {}, "store": str(tmp_path / "store"),
               "class_names": CLASS_NAMES}
    (tmp_path / "clf.json").write_text(json.dumps(sidecar))
    return tmp_path / "clf.joblib"


def test_old_pickles_load_only_when_trusted(tmp_path, fitted):
    result, X = fitted
    path = _old_format(tmp_path, result.estimator)
    with pytest.raises(InputError, match=r"pickle saved by an older layerprobe.*--trust"):
        load_classifier(path)
    estimator, sidecar = load_classifier(path, trust=True)
    np.testing.assert_array_equal(estimator.predict(X), result.estimator.predict(X))
    assert sidecar["class_names"] == CLASS_NAMES and read_sidecar(tmp_path / "clf")["format_version"] == 1


def test_a_crafted_pickle_runs_no_code_without_trust(tmp_path):
    marker = tmp_path / "pwned"
    path = _old_format(tmp_path, _WritesAFile(marker))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "layerprobe.pipeline.cli", "predict", str(path), "--data", str(tmp_path),
               "--out", str(tmp_path / "p.csv")]
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 2 and "--trust" in refused.stderr, refused.stderr
    assert not marker.exists()
    with pytest.raises(InputError, match="--trust"):
        load_classifier(path)
    assert not marker.exists()
    load_classifier(path, trust=True)  # the payload is real: trusting the file runs it
    assert marker.exists()


def test_a_skops_file_with_untrusted_types_is_refused(tmp_path, fitted):
    result, _ = fitted
    save_classifier(tmp_path / "clf", result.estimator, {})
    skops.io.dump({"payload": _WritesAFile(tmp_path / "pwned")}, tmp_path / "clf.skops")
    with pytest.raises(InputError, match="does not trust"):
        load_classifier(tmp_path / "clf")
    assert not (tmp_path / "pwned").exists()


def test_predictions_csv_round_trips(tmp_path):
    ids = ["a.png", "b.png", "c.png", "d.png"]
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]])
    path = write_predictions(
        tmp_path / "out" / "predictions.csv", ids, np.array([0, 1, 2, 0]), proba.argmax(1),
        CLASS_NAMES, proba=proba,
    )
    frame = pd.read_csv(path)
    assert list(frame.columns) == [
        "sample_id", "true_label", "predicted_label", "proba_cat", "proba_dog", "proba_fox"
    ]
    assert frame["sample_id"].tolist() == ids
    assert frame["true_label"].tolist() == ["cat", "dog", "fox", "cat"]
    assert frame["predicted_label"].tolist() == ["cat", "dog", "fox", "dog"]
    np.testing.assert_allclose(frame[["proba_cat", "proba_dog", "proba_fox"]], proba)
    assert [p.name for p in path.parent.iterdir()] == ["predictions.csv"]


def test_predictions_without_true_labels(tmp_path):
    path = write_predictions(tmp_path / "p.csv", [10, 11], None, [2, 1], CLASS_NAMES)
    frame = pd.read_csv(path)
    assert frame["true_label"].isna().all()
    assert frame["predicted_label"].tolist() == ["fox", "dog"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y_pred": [0, 1, 1]}, "same length"),
        ({"y_pred": [0, 3]}, "y_pred holds labels outside"),
        ({"y_true": [0, -1]}, "y_true holds labels outside"),
        ({"proba": np.ones((2, 2))}, "proba must have shape"),
    ],
)
def test_bad_predictions_are_rejected(tmp_path, kwargs, match):
    args = {"sample_ids": ["a", "b"], "y_true": [0, 1], "y_pred": [0, 1], **kwargs}
    with pytest.raises(ValueError, match=match):
        write_predictions(tmp_path / "p.csv", class_names=CLASS_NAMES, **args)
    assert list(tmp_path.iterdir()) == []

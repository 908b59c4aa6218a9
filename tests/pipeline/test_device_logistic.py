"""Logistic rows on the GPU: the JAX solver makes scikit-learn's choices (run here on JAX's CPU device)."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from layerprobe.core.errors import InputError
from layerprobe.pipeline import classifiers
from layerprobe.pipeline.classifiers import fit_classifier
from layerprobe.pipeline.probes import device_logistic
from layerprobe.pipeline.probes.device_logistic import DeviceLogisticRegression, resolve_probe_device

pytest.importorskip("jax")


def _problem(n_classes, seed=0, n=240, d=30):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.0, (n_classes, d))
    y = rng.integers(0, n_classes, n)
    X = centers[y] + rng.normal(0, 1.5, (n, d))
    return StandardScaler().fit_transform(X).astype(np.float32), y


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("C", [0.01, 1.0])
def test_the_same_model_as_scikit_learn(n_classes, C):
    X, y = _problem(n_classes)
    reference = LogisticRegression(C=C, max_iter=2000, tol=1e-6).fit(X, y)
    fitted = DeviceLogisticRegression(C=C, tol=1e-6).fit(X, y)
    scale = np.abs(reference.coef_).max()
    assert np.abs(fitted.coef_ - reference.coef_).max() < 1e-2 * scale
    assert np.abs(fitted.intercept_ - reference.intercept_).max() < 1e-2 * max(scale, 1)
    assert (fitted.predict(X) == reference.predict(X)).mean() >= 0.99
    np.testing.assert_allclose(fitted.predict_proba(X), reference.predict_proba(X), atol=1e-2)


def test_warm_start_continues_from_the_last_fit():
    X, y = _problem(3)
    cold = DeviceLogisticRegression(C=10.0).fit(X, y)
    warm = DeviceLogisticRegression(C=1.0, warm_start=True).fit(X, y).set_params(C=10.0).fit(X, y)
    assert warm.n_iter_[0] <= cold.n_iter_[0]
    assert (warm.predict(X) == cold.predict(X)).mean() >= 0.99


def test_fit_classifier_on_the_jax_path_picks_the_same_c_and_labels():
    X, y = _problem(3, seed=1, n=300)
    X_test, y_test = _problem(3, seed=1, n=300)  # another draw of the same centres
    grid = {"C": [0.001, 0.01, 0.1, 1.0]}
    cpu = fit_classifier(X, y, "logreg", param_grid=grid, device="cpu")
    gpu = fit_classifier(X, y, "logreg", param_grid=grid, device="jax")  # on JAX's CPU device here
    assert isinstance(gpu.estimator.named_steps["clf"], DeviceLogisticRegression)
    assert isinstance(cpu.estimator.named_steps["clf"], LogisticRegression)
    assert gpu.best_params == cpu.best_params
    np.testing.assert_allclose(gpu.cv_results["mean_test_score"], cpu.cv_results["mean_test_score"], atol=0.01)
    agree = (gpu.estimator.predict(X_test) == cpu.estimator.predict(X_test)).mean()
    assert agree >= 0.99
    accuracy = [(fit.estimator.predict(X_test) == y_test).mean() for fit in (cpu, gpu)]
    assert abs(accuracy[0] - accuracy[1]) <= 0.01


def test_the_device_choice(monkeypatch):
    monkeypatch.setattr(device_logistic, "jax_gpu", lambda: None)
    assert resolve_probe_device("auto") == "cpu" and resolve_probe_device("cpu") == "cpu"
    with pytest.raises(InputError, match="device='gpu' fits the logreg rows with JAX on a GPU, but JAX sees no GPU"):
        resolve_probe_device("gpu")
    with pytest.raises(InputError, match=r"device must be one of \('cpu', 'gpu', 'jax', 'auto'\)"):
        resolve_probe_device("tpu")
    assert resolve_probe_device("jax") == "jax"
    monkeypatch.setattr(device_logistic, "jax_gpu", lambda: "NVIDIA H200")
    assert resolve_probe_device("auto") == "jax" and resolve_probe_device("gpu") == "jax"
    # classifiers without a JAX estimator stay on the CPU
    pipe = classifiers.build_probe_pipeline("linear_svm", device="jax")
    assert type(pipe.named_steps["clf"]).__name__ == "LinearSVM"


def test_padding_rows_changes_nothing_and_shares_compilations():
    from layerprobe.pipeline.probes.device_logistic import padded_rows

    assert [padded_rows(n) for n in (1, 64, 65, 5333, 5334, 8000)] == [64, 64, 128, 6144, 6144, 8192]
    X, y = _problem(3, n=200)  # padded to 256 rows of zero weight
    reference = LogisticRegression(C=0.1, max_iter=2000, tol=1e-6).fit(X, y)
    fitted = DeviceLogisticRegression(C=0.1, tol=1e-6).fit(X, y)
    assert np.abs(fitted.coef_ - reference.coef_).max() < 1e-2 * np.abs(reference.coef_).max()

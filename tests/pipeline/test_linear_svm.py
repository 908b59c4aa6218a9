"""LinearSVM: LinearSVC's model solved by Newton steps on the Gram matrix (layerprobe.pipeline.probes.svm)."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import check_estimator

from layerprobe.pipeline.classifiers import fit_classifier, search_method
from layerprobe.pipeline.probes import LinearSVM, linear_svm_solver
from layerprobe.pipeline.probes import svm


def _data(n_classes, seed, n_samples=300, n_features=25):
    X, y = make_classification(n_samples=n_samples, n_features=n_features, n_informative=8, n_classes=n_classes,
                               n_clusters_per_class=1, flip_y=0.05, random_state=seed)
    return StandardScaler().fit_transform(X), y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_newton_solves_linearsvc_s_problem(seed, n_classes, C):
    X, y = _data(n_classes, seed)
    ours = LinearSVM(C=C, solver="newton", tol=1e-8).fit(X, y)
    reference = LinearSVC(C=C, dual=False, tol=1e-10, max_iter=100_000).fit(X, y)
    assert ours.coef_.shape == reference.coef_.shape and ours.intercept_.shape == reference.intercept_.shape
    scale = max(1.0, np.abs(reference.coef_).max())
    np.testing.assert_allclose(ours.coef_, reference.coef_, atol=1e-5 * scale)
    np.testing.assert_allclose(ours.intercept_, reference.intercept_, atol=1e-5 * scale)
    np.testing.assert_array_equal(ours.predict(X), reference.predict(X))
    assert ours.solver_ == "newton" and 1 <= ours.n_iter_ < 100


def test_warm_start_along_c_reaches_the_cold_solutions_in_fewer_steps():
    X, y = _data(3, 0, n_samples=400, n_features=40)
    warm = LinearSVM(solver="newton", warm_start=True)
    warm_steps = cold_steps = 0
    for C in (0.01, 0.1, 1.0, 10.0):
        warm.set_params(C=C).fit(X, y)
        cold = LinearSVM(C=C, solver="newton").fit(X, y)
        np.testing.assert_allclose(warm.coef_, cold.coef_, atol=1e-4 * max(1.0, np.abs(cold.coef_).max()))
        warm_steps, cold_steps = warm_steps + warm.n_iter_, cold_steps + cold.n_iter_
    assert warm_steps < cold_steps


def test_deterministic():
    X, y = _data(3, 4)
    first, second = LinearSVM(C=0.3).fit(X, y), LinearSVM(C=0.3).fit(X, y)
    np.testing.assert_array_equal(first.coef_, second.coef_)
    np.testing.assert_array_equal(first.intercept_, second.intercept_)


def test_sklearn_estimator_contract():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_estimator(LinearSVM())
        check_estimator(LinearSVM(solver="dual"))


@pytest.mark.parametrize(("params", "message"), [
    ({"C": 0}, r"The 'C' parameter of LinearSVM must be a float in the range \(0, inf\)\. Got 0 instead"),
    ({"C": -1.0}, r"'C' parameter.*Got -1.0 instead"),
    ({"tol": float("nan")}, r"'tol' parameter.*Got nan instead"),
    ({"solver": "lbfgs"}, r"'solver' parameter of LinearSVM must be one of .*'newton'.*Got 'lbfgs' instead"),
    ({"max_iter": 0}, r"'max_iter' parameter of LinearSVM must be a positive int or None\. Got 0 instead"),
])
def test_invalid_parameters_are_named(params, message):
    X, y = _data(2, 0)
    with pytest.raises(ValueError, match=message):
        LinearSVM(**params).fit(X, y)


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="at least 2 classes"):
        LinearSVM().fit(np.eye(4), np.zeros(4))


def test_non_convergence_warns():
    X, y = _data(3, 0)
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        LinearSVM(C=100.0, solver="newton", max_iter=1).fit(X, y)


def test_auto_solver_by_shape(monkeypatch):
    assert linear_svm_solver(3_000, 512) == linear_svm_solver(50_000, 2048) == "newton"
    assert linear_svm_solver(100, 25_088) == "dual"  # liblinear's choice below 10 samples per feature
    assert linear_svm_solver(300_000, 25_088) == "primal"
    monkeypatch.setattr(svm, "NEWTON_MAX_FEATURES", 10)
    X, y = _data(2, 0)
    assert LinearSVM().fit(X, y).solver_ == "primal"  # 300 x 25: 12 samples per feature


def test_the_row_chooses_what_the_liblinear_grid_search_chose():
    """The registry's linear_svm (Newton, warm C path) against the row as it was fitted before (GridSearchCV, LinearSVC)."""
    X, y = make_classification(n_samples=240, n_features=30, n_informative=10, n_classes=3, flip_y=0.1,
                               random_state=5)
    grid = {"C": [0.001, 0.01, 0.1, 1.0]}
    assert search_method("linear_svm", grid) == "warm_path"
    now = fit_classifier(X, y, "linear_svm", param_grid=grid, cv=3, random_state=0)
    before = GridSearchCV(
        Pipeline([("standardize", StandardScaler()), ("clf", LinearSVC(dual=False, tol=1e-8, max_iter=10_000))]),
        {"clf__C": grid["C"]}, cv=StratifiedKFold(3, shuffle=True, random_state=0),
    ).fit(X, y)
    np.testing.assert_allclose(now.cv_results["mean_test_score"], before.cv_results_["mean_test_score"], atol=1e-9)
    assert now.best_params == {"C": before.best_params_["clf__C"]}
    np.testing.assert_array_equal(now.estimator.predict(X), before.best_estimator_.predict(X))

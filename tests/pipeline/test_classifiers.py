import re

import numpy as np
import pytest
from sklearn.datasets import make_blobs, make_classification
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.preprocessing import Normalizer, StandardScaler

from layerprobe.core.errors import InputError
from layerprobe.pipeline.classifier_grids import CLASSIFIER_GRIDS, PREPROCESSING_GRIDS, RIDGE_ALPHAS, grid_keys
from layerprobe.pipeline.classifiers import (
    CLASSIFIERS,
    PREPROCESSING,
    build_probe_pipeline,
    fit_classifier,
    search_method,
)
from layerprobe.pipeline.probes import DEFAULT_ALPHAS, RidgeProbeCV
from layerprobe.pipeline.uncertainty import binomial_se, fold_se


@pytest.fixture
def blobs():
    """Separable 3-class data, split into train and test."""
    X, y = make_blobs(n_samples=150, centers=3, n_features=5, cluster_std=1.0, random_state=0)
    return train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)


def _n_splits(result):
    return sum(bool(re.fullmatch(r"split\d+_test_score", c)) for c in result.cv_results.columns)


def test_registry_names_and_default_grids_are_valid():
    assert set(CLASSIFIERS) == {"logreg", "linear_svm", "rbf_svm", "sgd", "ridge"}
    for name, spec in CLASSIFIERS.items():
        assert spec.name == name and spec.description
        estimator = spec.build(0)
        assert not hasattr(estimator, "classes_")
        assert set(spec.param_grid) <= set(estimator.get_params())


@pytest.mark.parametrize("classifier", sorted(CLASSIFIER_GRIDS))
def test_the_light_grid_lists_name_what_the_pipelines_build(classifier):
    """classifier_grids (what a config may name and search, without scikit-learn) matches the estimators:
    the same names, the same classes, and every searchable key is a parameter of the built pipeline."""
    assert list(CLASSIFIERS) == list(CLASSIFIER_GRIDS) and list(PREPROCESSING) == list(PREPROCESSING_GRIDS)
    pipeline = build_probe_pipeline(classifier, preprocessing=tuple(PREPROCESSING), pca_components=2)
    assert type(pipeline.named_steps["clf"]).__name__ == CLASSIFIER_GRIDS[classifier].estimator
    assert [type(pipeline.named_steps[name]).__name__ for name in PREPROCESSING] == [
        grid.estimator for grid in PREPROCESSING_GRIDS.values()
    ]
    assert CLASSIFIERS[classifier].param_grid == CLASSIFIER_GRIDS[classifier].default_grid
    searchable = grid_keys(classifier, tuple(PREPROCESSING), pca=True)
    assert searchable <= set(pipeline.get_params(deep=True))
    assert {f"clf__{key}" for key in CLASSIFIER_GRIDS[classifier].default_grid} <= searchable


def test_the_ridge_grid_is_the_probe_defaults_rounded_for_configs():
    assert RIDGE_ALPHAS == tuple(float(f"{alpha:.3g}") for alpha in DEFAULT_ALPHAS)


def test_build_probe_pipeline_steps_in_order():
    pipe = build_probe_pipeline("logreg", preprocessing=("standardize", "l2"), pca_components=3,
                         random_state=7)
    assert list(pipe.named_steps) == ["standardize", "l2", "pca", "clf"]
    assert isinstance(pipe.named_steps["standardize"], StandardScaler)
    assert isinstance(pipe.named_steps["l2"], Normalizer)
    assert isinstance(pipe.named_steps["pca"], PCA)
    assert pipe.named_steps["pca"].random_state == 7
    assert isinstance(pipe.named_steps["clf"], LogisticRegression)
    assert list(build_probe_pipeline("sgd", preprocessing=None).named_steps) == ["clf"]
    assert list(build_probe_pipeline("sgd", preprocessing="l2").named_steps) == ["l2", "clf"]


@pytest.mark.parametrize(
    ("kwargs", "closest", "valid"),
    [
        ({"classifier": "logrge"}, "logreg", CLASSIFIERS),
        ({"classifier": "rbf-svm"}, "rbf_svm", CLASSIFIERS),
        ({"classifier": "logreg", "preprocessing": ("standardise",)}, "standardize", PREPROCESSING),
    ],
)
def test_unknown_names_suggest_the_closest(kwargs, closest, valid):
    with pytest.raises(ValueError, match=f"Did you mean '{closest}'") as info:
        build_probe_pipeline(**kwargs)
    message = str(info.value)
    assert all(repr(name) in message for name in valid)
    assert "Received:" in message


def test_repeated_preprocessing_is_rejected():
    with pytest.raises(ValueError, match="only once"):
        build_probe_pipeline("logreg", preprocessing=("l2", "l2"))


def test_grid_keys_are_prefixed_and_best_params_unprefixed(blobs):
    X_train, _, y_train, _ = blobs
    result = fit_classifier(
        X_train, y_train, "logreg",
        param_grid={"C": [0.01, 1.0], "pca__n_components": [2, 3]},
        pca_components=2, cv=3,
    )
    assert {"param_clf__C", "param_pca__n_components"} <= set(result.cv_results.columns)
    assert len(result.cv_results) == 4
    assert set(result.best_params) == {"C", "pca__n_components"}
    assert result.estimator.named_steps["clf"].C == result.best_params["C"]
    assert (result.estimator.named_steps["pca"].n_components
            == result.best_params["pca__n_components"])


def test_list_of_grids_and_already_prefixed_keys(blobs):
    X_train, _, y_train, _ = blobs
    result = fit_classifier(
        X_train, y_train, "sgd",
        param_grid=[{"loss": ["hinge"], "clf__alpha": [1e-3]}, {"loss": ["log_loss"]}],
        cv=3,
    )
    assert len(result.cv_results) == 2


def test_unknown_grid_key_suggests_the_closest(blobs):
    X_train, _, y_train, _ = blobs
    with pytest.raises(ValueError, match="Did you mean 'gamma'"):
        fit_classifier(X_train, y_train, "rbf_svm", param_grid={"gama": [0.1]})
    with pytest.raises(ValueError, match="pca__n_components"):
        # No "pca" step without pca_components.
        fit_classifier(X_train, y_train, "logreg", param_grid={"pca__n_components": [2]})


@pytest.mark.parametrize("param_grid", [{"C": [1.0]}, {}])
def test_single_candidate_grid(blobs, param_grid):
    X_train, _, y_train, _ = blobs
    result = fit_classifier(X_train, y_train, "logreg", param_grid=param_grid, cv=3)
    assert len(result.cv_results) == 1
    assert result.cv_score == pytest.approx(result.cv_results["mean_test_score"].iloc[0])
    assert result.fit_seconds > 0


def test_cv_sees_only_the_training_split(blobs, monkeypatch):
    """Every fit sees training rows only; the refit equals a manual fit on train."""
    X_train, X_test, y_train, _ = blobs
    seen = []
    original_fit = LogisticRegression.fit

    def recording_fit(self, X, y, *args, **kwargs):
        seen.append(np.array(X, copy=True))
        return original_fit(self, X, y, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", recording_fit)
    result = fit_classifier(
        X_train, y_train, "logreg", param_grid={"C": [0.1, 1.0]}, preprocessing=(), cv=4
    )
    monkeypatch.undo()

    assert _n_splits(result) == 4
    assert len(seen) == 2 * 4 + 1  # candidates x folds, then the refit
    train_rows = {row.tobytes() for row in X_train}
    test_rows = {row.tobytes() for row in X_test}
    for X in seen:
        rows = {row.tobytes() for row in X}
        assert rows <= train_rows and not rows & test_rows
    assert len(seen[-1]) == len(X_train)

    manual = build_probe_pipeline("logreg", preprocessing=())
    manual.set_params(clf__C=result.best_params["C"]).fit(X_train, y_train)
    np.testing.assert_array_equal(manual.predict(X_test), result.estimator.predict(X_test))


def test_folds_shrink_to_the_smallest_class():
    X, y = make_classification(n_samples=40, n_features=4, n_informative=3, n_redundant=0,
                               random_state=0)
    y = y.copy()
    y[np.flatnonzero(y == 1)[3:]] = 0  # class 1 keeps 3 samples
    result = fit_classifier(X, y, "logreg", param_grid={"C": [1.0]}, cv=5)
    assert _n_splits(result) == 3


def test_non_finite_features_are_rejected(blobs):
    X_train, _, y_train, _ = blobs
    X_bad = X_train.copy()
    X_bad[4, 1] = np.nan
    X_bad[9, 1] = np.inf
    with pytest.raises(InputError, match=r"2 row\(s\) and 1 column\(s\).*re-extract"):
        fit_classifier(X_bad, y_train, "logreg")


def test_too_few_samples_per_class_names_the_class(blobs):
    X_train, _, y_train, _ = blobs
    y = y_train.copy()
    y[0] = 7
    with pytest.raises(ValueError, match="Class 7 has 1 training sample"):
        fit_classifier(X_train, y, "logreg")


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (np.zeros(10), np.arange(10) % 2, "2-D"),
        (np.zeros((10, 2)), np.arange(9) % 2, "one label per row"),
        (np.zeros((10, 2)), np.zeros(10, dtype=int), "at least 2 classes"),
        (np.full((10, 2), "a"), np.arange(10) % 2, "numbers"),
    ],
)
def test_malformed_training_data_is_rejected(X, y, match):
    with pytest.raises(InputError, match=match):  # a ValueError and a LayerprobeError: the CLI prints it
        fit_classifier(X, y, "logreg")


def test_cv_must_be_at_least_two(blobs):
    X_train, _, y_train, _ = blobs
    with pytest.raises(ValueError, match="Received: cv=1"):
        fit_classifier(X_train, y_train, "logreg", cv=1)


@pytest.mark.parametrize("classifier", sorted(CLASSIFIERS))
def test_each_classifier_separates_blobs(blobs, classifier):
    X_train, X_test, y_train, y_test = blobs
    result = fit_classifier(X_train, y_train, classifier, cv=3)
    assert result.cv_score > 0.9
    assert (result.estimator.predict(X_test) == y_test).mean() > 0.9


@pytest.mark.parametrize("classifier", sorted(CLASSIFIERS))
def test_same_data_and_seed_give_identical_predictions(classifier):
    X, y = make_classification(n_samples=90, n_features=8, n_informative=4, n_classes=3,
                               flip_y=0.1, random_state=1)
    first, second = (
        fit_classifier(X, y, classifier, pca_components=4, cv=3, random_state=3)
        for _ in range(2)
    )
    assert first.best_params == second.best_params
    np.testing.assert_array_equal(
        first.cv_results["mean_test_score"], second.cv_results["mean_test_score"]
    )
    np.testing.assert_array_equal(first.estimator.predict(X), second.estimator.predict(X))


def test_ridge_chooses_its_penalty_by_leave_one_out_without_a_grid_search(blobs, monkeypatch):
    X_train, X_test, y_train, y_test = blobs
    import layerprobe.pipeline.classifiers as classifiers_module

    def no_grid_search(*args, **kwargs):
        raise AssertionError("ridge validates its penalties itself")

    monkeypatch.setattr(classifiers_module, "GridSearchCV", no_grid_search)
    result = fit_classifier(X_train, y_train, "ridge", param_grid={"alphas": [1e-3, 1e-1, 10.0]}, cv=3)
    probe = result.estimator.named_steps["clf"]
    assert isinstance(probe, RidgeProbeCV) and probe.alphas == (1e-3, 1e-1, 10.0)
    assert result.best_params == {"alpha": probe.alpha_} and result.cv_score == probe.best_score_
    assert result.n_folds == len(X_train)  # leave-one-out
    assert result.cv_se == pytest.approx(binomial_se(result.cv_score, len(X_train)))
    assert list(result.cv_results["param_clf__alphas"]) == [1e-3, 1e-1, 10.0]
    np.testing.assert_array_equal(result.cv_results["mean_test_score"], probe.cv_scores_)
    assert (result.estimator.predict(X_test) == y_test).mean() > 0.9


def test_ridge_grid_must_be_one_table_searching_only_its_penalties(blobs):
    X_train, _, y_train, _ = blobs
    with pytest.raises(ValueError, match="give one grid"):
        fit_classifier(X_train, y_train, "ridge", param_grid=[{"alphas": [1.0]}, {"alphas": [0.1]}])
    with pytest.raises(ValueError, match="exactly one value"):
        fit_classifier(X_train, y_train, "ridge", param_grid={"pca__n_components": [2, 3]}, pca_components=2)
    result = fit_classifier(X_train, y_train, "ridge", param_grid={"pca__n_components": [3]}, pca_components=2)
    assert result.estimator.named_steps["pca"].n_components == 3


def test_search_methods():
    assert search_method("ridge", {"alphas": [1.0, 2.0]}) == "internal"
    assert search_method("logreg", {"C": [0.1, 1.0]}) == "warm_path"
    assert search_method("logreg", {"clf__C": [0.1, 1.0], "pca__n_components": [3]}) == "warm_path"
    assert search_method("logreg", {"C": [0.1, 1.0], "pca__n_components": [2, 3]}) == "grid"
    assert search_method("logreg", [{"C": [0.1]}, {"C": [1.0]}]) == "grid"
    assert search_method("logreg", {"C": [1.0]}) == "grid"
    assert search_method("linear_svm", {"C": [0.1, 1.0]}) == "warm_path"
    assert search_method("rbf_svm", {"C": [0.1, 1.0]}) == "grid"


def test_warm_started_path_scores_like_the_grid_search():
    X, y = make_classification(n_samples=120, n_features=10, n_informative=5, n_classes=3, random_state=2)
    Cs = [10.0, 0.01, 1.0]  # any order: fitted in increasing order, reported in the grid's
    path = fit_classifier(X, y, "logreg", param_grid={"C": Cs}, cv=3)
    grid = GridSearchCV(build_probe_pipeline("logreg"), {"clf__C": Cs},
                        cv=StratifiedKFold(3, shuffle=True, random_state=0)).fit(X, y)
    assert search_method("logreg", {"C": Cs}) == "warm_path"
    assert list(path.cv_results["param_clf__C"]) == Cs == list(grid.cv_results_["param_clf__C"])
    np.testing.assert_allclose(path.cv_results["mean_test_score"], grid.cv_results_["mean_test_score"], atol=0.02)
    assert _n_splits(path) == 3 == path.n_folds
    best = int(np.argmax(path.cv_results["mean_test_score"]))
    assert path.best_params == {"C": Cs[best]} and path.cv_score == path.cv_results["mean_test_score"][best]
    folds = [path.cv_results[f"split{i}_test_score"][best] for i in range(3)]
    assert path.cv_se == pytest.approx(fold_se(folds))
    assert path.estimator.named_steps["clf"].warm_start is False  # the refit is an ordinary fit
    again = fit_classifier(X, y, "logreg", param_grid={"C": Cs}, cv=3)
    np.testing.assert_array_equal(again.cv_results["mean_test_score"], path.cv_results["mean_test_score"])
    np.testing.assert_array_equal(again.estimator.predict(X), path.estimator.predict(X))


def test_grid_search_reports_the_fold_standard_error(blobs):
    X_train, _, y_train, _ = blobs
    result = fit_classifier(X_train, y_train, "rbf_svm", param_grid={"C": [0.01, 1.0], "gamma": ["scale"]}, cv=4)
    assert search_method("rbf_svm", {"C": [0.01, 1.0], "gamma": ["scale"]}) == "grid"
    best = int(np.argmax(result.cv_results["mean_test_score"]))
    folds = [result.cv_results[f"split{i}_test_score"][best] for i in range(4)]
    assert result.n_folds == 4 and result.cv_se == pytest.approx(fold_se(folds))


def test_linear_svm_solver_follows_the_shape(monkeypatch):
    from layerprobe.pipeline.probes import svm

    X, y = make_classification(n_samples=300, n_features=20, n_informative=5, n_classes=3, random_state=0)
    narrow = fit_classifier(X, y, "linear_svm", param_grid={"C": [0.1]}, cv=3)
    assert narrow.estimator.named_steps["clf"].solver_ == "newton"
    monkeypatch.setattr(svm, "NEWTON_MAX_FEATURES", 8)  # wider features go to liblinear
    many = fit_classifier(X, y, "linear_svm", param_grid={"C": [0.1]}, cv=3)  # 15 samples per feature
    few = fit_classifier(X[:, :10].repeat(4, axis=1)[:100], y[:100], "linear_svm", param_grid={"C": [0.1]}, cv=3)
    assert many.estimator.named_steps["clf"].solver_ == "primal"
    assert few.estimator.named_steps["clf"].solver_ == "dual"  # 100 samples, 40 features
    chosen = fit_classifier(X, y, "linear_svm", param_grid={"C": [0.1], "solver": ["dual"]}, cv=3)
    assert chosen.estimator.named_steps["clf"].solver_ == "dual"  # a grid's choice wins

"""Fast probes: closed-form ridge LOO, LogME, multi-layer selection, screening and the C path."""

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator
from threadpoolctl import threadpool_limits

from layerprobe.pipeline.probes import (
    COLUMNS,
    MultiLayerProbe,
    RidgeProbeCV,
    fit_logme,
    logme_score,
    logreg_path_search,
    recommended_linear_svm,
    recommended_sgd_svm,
    screen_layers,
    selected_layers,
)

SEEDS = [0, 1, 2]
ALPHAS = [1e-4, 1e-2, 0.3, 3.0]


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Tiny matrices: several BLAS threads only spin, and on a loaded machine make lbfgs fits 10-50x slower."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _clustered(rng, n, d, n_classes, separation=2.0, noise=1.0):
    """Class means plus Gaussian noise: informative features."""
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    centres = rng.normal(size=(n_classes, d)) * separation
    return centres[y] + noise * rng.normal(size=(n, d)), y


# --------------------------------------------------------------------------- ridge


def _brute_force_loo(X, y, probe, alphas, *, standardize, fit_intercept):
    """LOO decision values by refitting without each sample, with the probe's feature scaling and penalties."""
    n, d = X.shape
    mean = X.mean(axis=0) if fit_intercept else np.zeros(d)
    if standardize:
        scale = np.sqrt(((X - mean) ** 2).mean(axis=0))
    else:
        scale = np.ones(d)
    Xs = (X - mean) / scale
    classes = probe.classes_
    Y = np.where(y[:, None] == classes[None, :], 1.0, -1.0)
    if classes.size == 2:
        Y = Y[:, 1:]
    unit = probe.penalty_ / probe.alpha_
    design = np.c_[np.ones(n), Xs] if fit_intercept else Xs
    penalty = np.ones(design.shape[1])
    if fit_intercept:
        penalty[0] = 0.0  # the intercept is not penalised
    loo = np.empty((n, Y.shape[1], len(alphas)))
    for a, alpha in enumerate(alphas):
        for i in range(n):
            keep = np.arange(n) != i
            A = design[keep]
            w = np.linalg.solve(A.T @ A + np.diag(alpha * unit * penalty), A.T @ Y[keep])
            loo[i, :, a] = design[i] @ w
    return loo


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, d", [(30, 5), (12, 20)], ids=["gram", "kernel"])
@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("standardize, fit_intercept", [(True, True), (False, True), (False, False)])
def test_ridge_loo_equals_refitting_without_each_sample(seed, n, d, n_classes, standardize, fit_intercept):
    rng = np.random.default_rng(seed)
    X, y = _clustered(rng, n, d, n_classes, separation=0.7)
    X = X * rng.uniform(0.5, 3.0, d) + rng.normal(size=d) * 3  # unequal scales and offsets
    probe = RidgeProbeCV(
        alphas=ALPHAS, standardize=standardize, fit_intercept=fit_intercept, dtype="float64", store_cv_results=True
    ).fit(X, y)
    assert probe.solver_ == ("gram" if n >= d else "kernel")
    expected = _brute_force_loo(X, y, probe, ALPHAS, standardize=standardize, fit_intercept=fit_intercept)
    assert probe.cv_results_.shape == expected.shape
    np.testing.assert_allclose(probe.cv_results_, expected, rtol=1e-7, atol=1e-7)
    if n_classes == 2:
        predicted = (expected[:, 0, :] > 0).astype(int)
    else:
        predicted = expected.argmax(axis=1)
    np.testing.assert_allclose(probe.cv_scores_, (predicted == y[:, None]).mean(axis=0))
    assert probe.best_score_ == probe.cv_scores_.max()
    assert probe.cv_scores_[ALPHAS.index(probe.alpha_)] == probe.best_score_


@pytest.mark.parametrize("seed", SEEDS)
def test_ridge_float32_agrees_with_float64(seed):
    X, y = _clustered(np.random.default_rng(seed), 400, 16, 4, separation=0.5)
    kwargs = dict(alphas=ALPHAS, store_cv_results=True)
    p32 = RidgeProbeCV(dtype="float32", **kwargs).fit(X, y)
    p64 = RidgeProbeCV(dtype="float64", **kwargs).fit(X, y)
    np.testing.assert_allclose(p32.cv_results_, p64.cv_results_, atol=1e-3)
    np.testing.assert_allclose(p32.coef_, p64.coef_, rtol=1e-3, atol=1e-4)
    # A sample flips only when two classes' LOO values are within float32 rounding.
    assert np.abs(p32.cv_scores_ - p64.cv_scores_).max() <= 2 / 400


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, d", [(60, 6), (15, 40)], ids=["gram", "kernel"])
def test_ridge_model_matches_sklearn_ridge_classifier_at_the_chosen_penalty(seed, n, d):
    rng = np.random.default_rng(seed)
    X, y = _clustered(rng, n, d, 3)
    X = X * rng.uniform(0.5, 3.0, d)
    probe = RidgeProbeCV(alphas=ALPHAS, dtype="float64").fit(X, y)
    scaler = StandardScaler().fit(X)
    reference = RidgeClassifier(alpha=probe.penalty_).fit(scaler.transform(X), y)
    np.testing.assert_allclose(probe.decision_function(X), reference.decision_function(scaler.transform(X)), atol=1e-8)
    X_new = rng.normal(size=(7, d))
    np.testing.assert_array_equal(probe.predict(X_new), reference.predict(scaler.transform(X_new)))


def test_ridge_penalty_scale_is_relative():
    """Penalties are relative to the mean Gram eigenvalue: n * alpha for standardized features."""
    X, y = _clustered(np.random.default_rng(0), 50, 4, 2)
    probe = RidgeProbeCV(alphas=[0.5], dtype="float64").fit(X, y)
    assert probe.penalty_ == pytest.approx(0.5 * 50)
    scaled = RidgeProbeCV(alphas=ALPHAS, standardize=False, dtype="float64").fit(X, y)
    rescaled = RidgeProbeCV(alphas=ALPHAS, standardize=False, dtype="float64").fit(X * 1000.0, y)
    np.testing.assert_array_equal(scaled.cv_scores_, rescaled.cv_scores_)
    assert scaled.alpha_ == rescaled.alpha_


def test_ridge_estimator_contract_and_labels():
    X, y = _clustered(np.random.default_rng(3), 90, 5, 3, separation=4.0)
    names = np.array(["cat", "dog", "emu"])[y]
    probe = RidgeProbeCV(alphas=(0.1, 1.0))
    params = probe.get_params()
    assert params["alphas"] == (0.1, 1.0) and params["dtype"] == "float32"
    fitted = probe.fit(X, names)
    assert fitted is probe
    assert list(probe.classes_) == ["cat", "dog", "emu"]
    assert probe.coef_.shape == (3, 5) and probe.intercept_.shape == (3,)
    assert probe.cv_scores_.shape == (2,) and probe.n_features_in_ == 5
    assert probe.cv_se_ == pytest.approx(np.sqrt(probe.best_score_ * (1 - probe.best_score_) / 90))
    assert probe.score(X, names) > 0.9
    assert not hasattr(clone(probe), "coef_")
    binary = RidgeProbeCV().fit(X[y < 2], y[y < 2])
    assert binary.coef_.shape == (1, 5) and binary.decision_function(X).shape == (90,)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_ridge_passes_sklearn_estimator_checks():
    check_estimator(RidgeProbeCV())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alphas": [0.1, -1.0]}, "'alphas' parameter of RidgeProbeCV"),
        ({"alphas": []}, "'alphas' parameter of RidgeProbeCV"),
        ({"dtype": "float16"}, "'dtype' parameter of RidgeProbeCV"),
        ({"standardize": "yes"}, "'standardize' parameter of RidgeProbeCV"),
    ],
)
def test_ridge_rejects_invalid_parameters(kwargs, match):
    X, y = _clustered(np.random.default_rng(0), 20, 3, 2)
    with pytest.raises(ValueError, match=match):
        RidgeProbeCV(**kwargs).fit(X, y)


def test_ridge_rejects_a_single_class_and_nan():
    X, y = _clustered(np.random.default_rng(0), 20, 3, 2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        RidgeProbeCV().fit(X, np.zeros(20, dtype=int))
    X[3, 1] = np.nan
    with pytest.raises(ValueError):
        RidgeProbeCV().fit(X, y)


# --------------------------------------------------------------------------- LogME


def _textbook_logme(F, y, *, tol=1e-7, max_iter=100):
    """The paper's evidence with dense matrices: A = αI + βFᵀF, m = βA⁻¹Fᵀy, MacKay updates."""
    n, D = F.shape
    evidences = []
    for k in np.unique(y):
        t = (y == k).astype(float)
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            lam = alpha / beta
            A = alpha * np.eye(D) + beta * F.T @ F
            m = beta * np.linalg.solve(A, F.T @ t)
            gamma = np.trace(beta * F.T @ F @ np.linalg.inv(A))
            alpha = gamma / (m @ m)
            beta = (n - gamma) / np.sum((F @ m - t) ** 2)
            if abs(alpha / beta - lam) <= tol * lam:
                break
        evidences.append(_evidence(F, t, alpha, beta))
    return float(np.mean(evidences))


def _evidence(F, t, alpha, beta):
    n, D = F.shape
    A = alpha * np.eye(D) + beta * F.T @ F
    m = beta * np.linalg.solve(A, F.T @ t)
    return (
        n / 2 * np.log(beta) + D / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
        - beta / 2 * np.sum((F @ m - t) ** 2) - alpha / 2 * m @ m - np.linalg.slogdet(A)[1] / 2
    ) / n


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, d", [(80, 6), (20, 35)], ids=["n>d", "d>n"])
def test_logme_matches_the_textbook_formula(seed, n, d):
    rng = np.random.default_rng(seed)
    if n > d:
        F, y = _clustered(rng, n, d, 3, separation=1.5)
    else:
        # Rank 5 < n: the labels cannot be interpolated, so the maximum is interior (finite β).
        Z, y = _clustered(rng, n, 5, 3, separation=1.0)
        F = Z @ rng.normal(size=(5, d))
    result = fit_logme(F, y, dtype="float64")
    assert result.score == pytest.approx(_textbook_logme(F, y), rel=1e-6)
    # The returned precisions maximise each class's evidence.
    for k, (alpha, beta) in enumerate(zip(result.alpha, result.beta)):
        t = (y == k).astype(float)
        assert result.evidence[k] == pytest.approx(_evidence(F, t, alpha, beta), rel=1e-8)
        for factor in (0.9, 1.1):
            assert _evidence(F, t, alpha * factor, beta) <= result.evidence[k] + 1e-12
            assert _evidence(F, t, alpha, beta * factor) <= result.evidence[k] + 1e-12
    assert logme_score(F, y) == pytest.approx(result.score, rel=1e-4)  # float32 Gram


@pytest.mark.parametrize("seed", SEEDS)
def test_informative_features_score_above_random_ones(seed):
    rng = np.random.default_rng(seed)
    informative, y = _clustered(rng, 300, 20, 4, separation=1.0)
    random = rng.normal(size=informative.shape)
    assert logme_score(informative, y) > logme_score(random, y)
    assert RidgeProbeCV().fit(informative, y).best_score_ > RidgeProbeCV().fit(random, y).best_score_


@pytest.mark.parametrize("seed", SEEDS)
def test_logme_is_finite_on_the_boundaries(seed):
    """Features that can interpolate the labels (β → ∞) or that are all zero (α → ∞)."""
    rng = np.random.default_rng(seed)
    F, y = _clustered(rng, 20, 35, 3, separation=1.5)
    assert np.isfinite(logme_score(F, y)) and np.isfinite(logme_score(F, y, dtype="float64"))
    assert np.isfinite(logme_score(np.zeros((20, 3)), y))
    assert np.isfinite(logme_score(rng.normal(size=(60, 4)), rng.integers(0, 3, 60)))


def test_logme_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 classes"):
        logme_score(np.ones((5, 2)), np.zeros(5))
    with pytest.raises(ValueError, match="one label per row"):
        logme_score(np.ones((5, 2)), np.zeros(4))


# --------------------------------------------------------------------------- multi-layer


def _layers(seed, n=240):
    """One informative layer and two noise layers of different widths."""
    rng = np.random.default_rng(seed)
    informative, y = _clustered(rng, n, 8, 3, separation=3.0, noise=0.5)
    return {
        "noise_a": rng.normal(size=(n, 16)),
        "informative": informative,
        "noise_b": rng.normal(size=(n, 32)),
    }, y


@pytest.mark.parametrize("seed", SEEDS)
def test_multilayer_selects_the_informative_layer(seed):
    features, y = _layers(seed)
    probe = MultiLayerProbe(tol=0.02).fit(features, y)
    assert probe.selected_layers_ == ["informative"]
    assert probe.name_ == "multi:informative"
    assert set(probe.layer_scores_) == set(features)
    assert probe.layer_scores_["informative"] > max(probe.layer_scores_["noise_a"], probe.layer_scores_["noise_b"])
    assert probe.transform(features).shape == (240, 8) and probe.n_features_in_ == 8
    assert probe.score(features, y) > 0.9


@pytest.mark.parametrize("seed", SEEDS)
def test_multilayer_combines_complementary_layers(seed):
    """Layer a tells classes {0,1} from {2,3}, layer b {0,2} from {1,3}: only together are they enough."""
    rng = np.random.default_rng(seed)
    n = 200
    y = np.arange(n) % 4
    a = np.c_[np.where(y < 2, 2.0, -2.0)] + 0.3 * rng.normal(size=(n, 3))
    b = np.c_[np.where(y % 2 == 0, 2.0, -2.0)] + 0.3 * rng.normal(size=(n, 5))
    noise = rng.normal(size=(n, 4))
    features = {"block3_pool": a, "block4_pool": b, "block5_pool": noise}
    probe = MultiLayerProbe().fit(features, y)
    assert probe.selected_layers_ == ["block3_pool", "block4_pool"]
    assert probe.name_ == "multi:block3_pool+block4_pool"
    assert set(probe.selected_layers_) <= set(features)
    assert probe.n_features_in_ == 3 + 5 == probe.transform(features).shape[1]
    assert probe.cv_score_ > max(probe.layer_scores_.values()) + 0.3
    assert [step["added"] for step in probe.selection_path_][-1] in probe.selected_layers_
    # Prediction reads only the selected layers.
    only_selected = {name: features[name] for name in probe.selected_layers_}
    np.testing.assert_array_equal(probe.predict(only_selected), probe.predict(features))
    with pytest.raises(ValueError, match="lack selected layer"):
        probe.predict({"block3_pool": a})


def test_multilayer_limits_and_final_estimator():
    features, y = _layers(0)
    probe = MultiLayerProbe(max_layers=1, tol=0.0, estimator=LogisticRegression(C=1.0)).fit(features, y)
    assert len(probe.selected_layers_) == 1
    assert isinstance(probe.estimator_, LogisticRegression)
    assert probe.predict(features).shape == (240,)
    with pytest.raises(ValueError, match="'layers' parameter"):
        MultiLayerProbe(layers=["missing"]).fit(features, y)
    with pytest.raises(ValueError, match="one row per sample"):
        MultiLayerProbe().fit({"a": np.ones((5, 2)), "b": np.ones((6, 2))}, np.zeros(5))


# --------------------------------------------------------------------------- screening


def _backbone_layers(seed):
    rng = np.random.default_rng(seed)
    y = np.arange(150) % 3
    features = {}
    for backbone in ("VGG16", "ResNet50"):
        for layer, separation in (("early", 0.0), ("middle", 1.0), ("late", 3.0)):
            X = rng.normal(size=(3, 6))[y] * separation + rng.normal(size=(150, 6))
            features[(backbone, layer)] = (X, y)
    return features


@pytest.mark.parametrize("seed", SEEDS)
def test_screening_selects_top_k_per_backbone(seed):
    features = _backbone_layers(seed)
    table = screen_layers(features, top_k=2)
    assert tuple(table.columns) == COLUMNS
    assert len(table) == 6
    assert table.dtypes["selected"] == bool
    for backbone, group in table.groupby("backbone"):
        assert sorted(group["rank"]) == [1, 2, 3]
        assert group["selected"].sum() == 2
        assert set(group.loc[group.selected, "layer"]) == {"middle", "late"}
        assert group.loc[group["rank"] == 1, "layer"].item() == "late"
        assert (group.loc[group.selected, "cv_score"].min() >= group.loc[~group.selected, "cv_score"].max())
    np.testing.assert_allclose(table.cv_se, np.sqrt(table.cv_score * (1 - table.cv_score) / 150))
    assert (table.feature_dim == 6).all() and (table.n_samples == 150).all()
    assert table.logme.notna().all() and (table.fit_seconds > 0).all()
    assert selected_layers(table) == {"ResNet50": ["late", "middle"], "VGG16": ["late", "middle"]}


def test_screening_accepts_layer_keys_and_feature_sets():
    features = _backbone_layers(0)
    by_layer = {layer: SimpleNamespace(X=X, y=y) for (backbone, layer), (X, y) in features.items() if backbone == "VGG16"}
    table = screen_layers(by_layer, top_k=1, logme=False, n_jobs=2)
    assert list(table.layer) == ["early", "middle", "late"]
    assert (table.backbone == "").all()
    assert table.loc[table.selected, "layer"].tolist() == ["late"]
    assert table.logme.isna().all()
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        screen_layers(by_layer, top_k=0)
    with pytest.raises(ValueError, match="2-D"):
        screen_layers({"layer": (np.ones((4, 2, 2)), np.arange(4))})


# --------------------------------------------------------------------------- grids


@pytest.mark.parametrize("seed", SEEDS)
def test_cold_path_search_equals_grid_search(seed):
    X, y = _clustered(np.random.default_rng(seed), 120, 6, 3, separation=0.6)
    Cs = [0.01, 0.1, 1.0]
    result = logreg_path_search(X, y, Cs=Cs, cv=3, warm_start=False, dtype="float64", random_state=seed)
    grid = GridSearchCV(
        Pipeline([("standardize", StandardScaler()), ("clf", LogisticRegression(max_iter=2000, random_state=seed))]),
        {"clf__C": Cs},
        cv=StratifiedKFold(3, shuffle=True, random_state=seed),
    ).fit(X, y)
    np.testing.assert_allclose(result.cv_results["mean_test_score"], grid.cv_results_["mean_test_score"])
    assert result.best_C == grid.best_params_["clf__C"]
    assert result.best_params == {"C": result.best_C}


@pytest.mark.parametrize("seed", SEEDS)
def test_warm_path_search(seed):
    X, y = _clustered(np.random.default_rng(seed), 150, 6, 3, separation=0.6)
    cold = logreg_path_search(X, y, Cs=[10.0, 0.1, 1.0], cv=3, warm_start=False, random_state=seed)
    warm = logreg_path_search(X, y, Cs=[10.0, 0.1, 1.0], cv=3, warm_start=True, random_state=seed)
    assert list(warm.cv_results["C"]) == [0.1, 1.0, 10.0]
    # Both solve the same convex problems; they differ only within the lbfgs tolerance.
    assert np.abs(warm.cv_results["mean_test_score"] - cold.cv_results["mean_test_score"]).max() <= 2 / 150
    p = warm.cv_results["mean_test_score"]
    assert {"std_test_score", "se_test_score", "split0_test_score", "mean_fit_time"} <= set(warm.cv_results)
    assert (warm.cv_results["se_test_score"] > 0).all() and (warm.cv_results["se_test_score"] < 0.1).all()
    assert warm.best_score == p.max() and warm.best_C in (0.1, 1.0, 10.0)
    assert warm.estimator.named_steps["clf"].C == warm.best_C
    assert warm.estimator.score(X, y) > 0.5
    with pytest.raises(ValueError, match="Cs must be"):
        logreg_path_search(X, y, Cs=[0.0])


def test_recommended_linear_svm():
    assert recommended_linear_svm(50_000, 512, 0).dual is False
    assert recommended_linear_svm(3_000, 512, 0).dual is True
    assert recommended_linear_svm(100, 25_088, 7).dual is True
    assert recommended_linear_svm(100, 25_088, 7).random_state == 7
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        recommended_linear_svm(0, 5)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_recommended_sgd_svm_fits():
    X, y = _clustered(np.random.default_rng(0), 200, 5, 3, separation=3.0)
    model = recommended_sgd_svm(200, random_state=0)
    assert model.alpha == pytest.approx(1 / 200) and model.average is True
    assert model.fit(X, y).score(X, y) > 0.9
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        recommended_sgd_svm(0)

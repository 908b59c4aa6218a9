"""Fast probes: closed-form ridge LOO, LogME, multi-layer selection."""


import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import check_estimator, parametrize_with_checks
from threadpoolctl import threadpool_limits

from layerprobe.pipeline.probes import MultiLayerProbe, RidgeProbeCV, fit_logme, logme_score
from layerprobe.pipeline.probes.multilayer import nested_cv_scores

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
    """One informative layer and two noise layers of different widths, side by side: X, widths, names, y."""
    rng = np.random.default_rng(seed)
    informative, y = _clustered(rng, n, 8, 3, separation=3.0, noise=0.5)
    layers = {"noise_a": rng.normal(size=(n, 16)), "informative": informative, "noise_b": rng.normal(size=(n, 32))}
    return np.hstack(list(layers.values())), [16, 8, 32], list(layers), y


@pytest.mark.parametrize("seed", SEEDS)
def test_multilayer_selects_the_informative_layer(seed):
    X, widths, names, y = _layers(seed)
    probe = MultiLayerProbe(widths, names, tol=0.02).fit(X, y)
    assert probe.selected_layers_ == ["informative"]
    assert probe.name_ == "multi:informative"
    assert set(probe.layer_scores_) == set(names)
    assert probe.layer_scores_["informative"] > max(probe.layer_scores_["noise_a"], probe.layer_scores_["noise_b"])
    assert probe.selected_features(X).shape == (240, 8) and probe.n_features_in_ == 56
    assert probe.score(X, y) > 0.9


def test_nested_cv_of_the_multilayer_probe_is_not_optimistic_where_selection_is():
    """One weak informative layer among many noise layers: the probe's own LOO score of the layers it chose is the
    best of many and lies well above held-out accuracy; nested CV (the selection inside each fold) does not."""
    selected, nested, held_out = [], [], []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        widths = [8] * 16

        def data(n):
            y = rng.integers(0, 2, n)
            layers = [rng.normal(size=(n, 8)) for _ in widths]
            layers[0][:, 0] += 0.6 * (2 * y - 1)
            return np.hstack(layers), y

        X, y = data(60)
        X_test, y_test = data(2000)
        probe = MultiLayerProbe(widths).fit(X, y)
        selected.append(probe.cv_score_)
        held_out.append(probe.score(X_test, y_test))
        nested.append(nested_cv_scores(MultiLayerProbe(widths), X, y, cv=5, random_state=seed).mean())
    assert np.mean(selected) - np.mean(held_out) > 0.08  # measured: 0.78 against 0.66
    assert -0.08 < np.mean(nested) - np.mean(held_out) < 0.02  # measured: 0.63


def test_nested_cv_needs_two_samples_per_class():
    X, y = np.random.default_rng(0).normal(size=(5, 4)), np.array([0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="at least 2 samples per class"):
        nested_cv_scores(MultiLayerProbe([2, 2]), X, y)


@pytest.mark.parametrize("seed", SEEDS)
def test_multilayer_combines_complementary_layers(seed):
    """Layer a tells classes {0,1} from {2,3}, layer b {0,2} from {1,3}: only together are they enough."""
    rng = np.random.default_rng(seed)
    n = 200
    y = np.arange(n) % 4
    a = np.c_[np.where(y < 2, 2.0, -2.0)] + 0.3 * rng.normal(size=(n, 3))
    b = np.c_[np.where(y % 2 == 0, 2.0, -2.0)] + 0.3 * rng.normal(size=(n, 5))
    noise = rng.normal(size=(n, 4))
    X = np.hstack([a, b, noise])
    probe = MultiLayerProbe([3, 5, 4], ["block3_pool", "block4_pool", "block5_pool"]).fit(X, y)
    assert probe.selected_layers_ == ["block3_pool", "block4_pool"]
    assert probe.name_ == "multi:block3_pool+block4_pool"
    assert probe.selected_features(X).shape[1] == 3 + 5
    assert probe.cv_score_ > max(probe.layer_scores_.values()) + 0.3
    assert [step["added"] for step in probe.selection_path_][-1] in probe.selected_layers_
    # Prediction reads only the selected layers.
    scrambled = X.copy()
    scrambled[:, 8:] = rng.normal(size=(n, 4))
    np.testing.assert_array_equal(probe.predict(scrambled), probe.predict(X))
    with pytest.raises(ValueError, match="features"):
        probe.predict(X[:, :8])


def test_multilayer_limits_and_final_estimator():
    X, widths, names, y = _layers(0)
    probe = MultiLayerProbe(widths, names, max_layers=1, tol=0.0, estimator=LogisticRegression(C=1.0)).fit(X, y)
    assert len(probe.selected_layers_) == 1
    assert isinstance(probe.estimator_, LogisticRegression)
    assert probe.predict(X).shape == (240,)
    with pytest.raises(ValueError, match="'layer_widths' parameter"):
        MultiLayerProbe([16, 8]).fit(X, y)
    with pytest.raises(ValueError, match="'layer_names' parameter"):
        MultiLayerProbe(widths, ["a", "a", "b"]).fit(X, y)
    with pytest.raises(ValueError, match="'max_layers' parameter"):
        MultiLayerProbe(widths, max_layers=0).fit(X, y)


def test_multilayer_works_with_clone_cross_validation_and_pipelines():
    X, widths, names, y = _layers(1)
    probe = MultiLayerProbe(widths, names, tol=0.02)
    scores = cross_val_score(probe, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8
    assert clone(probe).get_params() == probe.get_params()
    pipeline = make_pipeline(StandardScaler(), clone(probe)).fit(X, y)
    assert pipeline[-1].selected_layers_ == ["informative"]


_FIXED_WIDTH_CHECKS = (
    "check_classifiers_one_label", "check_classifiers_regression_target", "check_dict_unchanged",
    "check_dont_overwrite_parameters", "check_dtype_object", "check_estimators_dtypes", "check_estimators_nan_inf",
    "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_fit2d_1feature", "check_fit2d_predict1d",
    "check_fit_score_takes_y", "check_methods_sample_order_invariance", "check_methods_subset_invariance",
    "check_n_features_in_after_fitting", "check_pipeline_consistency", "check_positive_only_tag_during_fit",
    "check_supervised_y_2d",
)


@parametrize_with_checks(
    [MultiLayerProbe(), MultiLayerProbe([1, 1], ["a", "b"])],
    expected_failed_checks=lambda estimator: {} if estimator.layer_widths is None else dict.fromkeys(
        _FIXED_WIDTH_CHECKS, "layer_widths fixes the width of X (2 layers of 1 feature); these checks fit other widths"
    ),
)
def test_multilayer_passes_sklearn_estimator_checks(estimator, check):
    check(estimator)

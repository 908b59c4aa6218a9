"""What a run can name and search of its classifier pipelines, without importing scikit-learn.

The one list of classifier names (`CLASSIFIER_GRIDS`: each one's estimator,
default grid and the parameters a config's grid may set) and of preprocessing
step names (`PREPROCESSING_GRIDS`), and the one check of grid keys
(`prefix_grid_keys`). `layerprobe.pipeline.classifiers` builds an estimator
for each of these names and checks `fit_classifier`'s grids with the same
function; an experiment config is checked against these lists
(`layerprobe.pipeline.config`), so that reading one imports no scikit-learn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..core.checks import did_you_mean

__all__ = [
    "CLASSIFIER_GRIDS",
    "PCA_GRID",
    "PREPROCESSING_GRIDS",
    "PROBE_DEVICES",
    "ParamGrid",
    "StepGrid",
    "grid_keys",
    "prefix_grid_keys",
]

ParamGrid = Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]]


@dataclass(frozen=True)
class StepGrid:
    """One step of a probe pipeline, as a grid sees it.

    Attributes:
        estimator: The class the step is built as, for messages (e.g. `"LogisticRegression"`).
        params: The parameters a config's grid may set: those that shape the fitted
            model, not those that only change how it runs (verbose, n_jobs, copy)
            or that the run sets itself (random_state).
        default_grid: The grid searched when none is given (empty for a step
            other than the classifier).
    """

    estimator: str
    params: tuple[str, ...]
    default_grid: Mapping[str, tuple[Any, ...]] = field(default_factory=lambda: MappingProxyType({}))


# RidgeProbeCV's default relative penalties (15 log-spaced, 1e-6 to 10:
# `probes.ridge.DEFAULT_ALPHAS`) to 3 significant digits, as a config shows them.
RIDGE_ALPHAS = tuple(float(f"{10 ** (exponent / 2):.3g}") for exponent in range(-12, 3))

_C = (0.01, 0.1, 1.0, 10.0)

CLASSIFIER_GRIDS: Mapping[str, StepGrid] = MappingProxyType(
    {
        "logreg": StepGrid(
            "LogisticRegression",
            ("C", "class_weight", "fit_intercept", "l1_ratio", "max_iter", "solver", "tol"),
            MappingProxyType({"C": _C}),
        ),
        "linear_svm": StepGrid(
            "LinearSVM",
            ("C", "max_iter", "solver", "tol"),
            MappingProxyType({"C": _C}),
        ),
        "rbf_svm": StepGrid(
            "SVC",
            ("C", "class_weight", "gamma", "max_iter", "shrinking", "tol"),
            MappingProxyType({"C": (0.1, 1.0, 10.0, 100.0), "gamma": ("scale", 1e-4, 1e-3, 1e-2)}),
        ),
        "sgd": StepGrid(
            "SGDClassifier",
            ("alpha", "average", "class_weight", "early_stopping", "epsilon", "eta0", "fit_intercept", "l1_ratio",
             "learning_rate", "loss", "max_iter", "n_iter_no_change", "penalty", "power_t", "tol",
             "validation_fraction"),
            MappingProxyType({"loss": ("hinge", "log_loss"), "alpha": (1e-5, 1e-4, 1e-3, 1e-2)}),
        ),
        "ridge": StepGrid(
            "RidgeProbeCV",
            ("alphas", "dtype", "fit_intercept", "standardize"),
            MappingProxyType({"alphas": RIDGE_ALPHAS}),
        ),
    }
)
"""Classifier name -> its grid; `layerprobe.pipeline.classifiers.CLASSIFIERS` builds each."""

PREPROCESSING_GRIDS: Mapping[str, StepGrid] = MappingProxyType(
    {"standardize": StepGrid("StandardScaler", ("with_mean", "with_std")), "l2": StepGrid("Normalizer", ("norm",))}
)
"""Preprocessing step name -> its grid; each becomes a pipeline step of that name."""

PROBE_DEVICES = ("cpu", "gpu", "jax", "auto")
"""Where logreg rows are fitted: scikit-learn on the CPU, or the JAX solver on a GPU, on whatever device JAX
computes on (a TPU...), or on the GPU where there is one (`layerprobe.pipeline.probes.device_logistic`)."""

PCA_GRID = StepGrid("PCA", ("n_components", "svd_solver", "whiten"))
"""The optional `"pca"` step."""


def grid_keys(classifier: str, preprocessing: Iterable[str] = (), *, pca: bool = False) -> set[str]:
    """The full keys (`"clf__C"`, `"pca__n_components"`) a config's grid may set for this pipeline."""
    steps = [("clf", CLASSIFIER_GRIDS[classifier])]
    steps += [(name, PREPROCESSING_GRIDS[name]) for name in preprocessing if name in PREPROCESSING_GRIDS]
    steps += [("pca", PCA_GRID)] if pca else []
    return {f"{step}__{param}" for step, grid in steps for param in grid.params}


def prefix_grid_keys(param_grid: ParamGrid, valid: Iterable[str], estimator: str) -> list[dict[str, Sequence[Any]]]:
    """The grid(s) with ``"clf__"`` added to bare keys, every key checked against `valid`.

    The one check of grid keys: `fit_classifier` checks against its pipeline's
    parameters, an experiment config against `grid_keys`.

    Args:
        param_grid: A grid or a list of grids. Classifier keys may omit the
            ``"clf__"`` prefix; other steps use scikit-learn's ``"pca__n_components"`` form.
        valid: The full keys the pipeline accepts.
        estimator: The classifier's class name, for the message.

    Returns:
        A list of grids with full keys.

    Raises:
        ValueError: Naming the unknown keys, the closest valid one and every valid key.
    """
    grids = [param_grid] if isinstance(param_grid, Mapping) else list(param_grid)
    valid = set(valid)
    names = sorted(key.removeprefix("clf__") for key in valid)
    prefixed, unknown = [], []
    for grid in grids:
        full = {}
        for key, values in grid.items():
            full_key = key if "__" in key else f"clf__{key}"
            if full_key not in valid:
                unknown.append(key)
            full[full_key] = values
        prefixed.append(full)
    if unknown:
        raise ValueError(
            f"Unknown param_grid key(s) {unknown} for {estimator}.{did_you_mean(unknown[0], names)} "
            f"Valid keys are: {', '.join(map(repr, names))} (steps other than the classifier need their "
            f"prefix, e.g. 'pca__n_components', and that step in the pipeline). Received: param_grid={param_grid!r}"
        )
    return prefixed

"""Classifier rows: one classifier fitted on one layer's features, or reused from an earlier run.

A row's spec (`LayerRowSpec`: store key, classifier, grid, preprocessing, PCA,
folds, seed, split definition, and the search method where it is not a plain
grid search) keys its record (`records.fit_or_reuse`): a matching row is reused
without loading features or fitting. Every row carries the LogME of its layer's
training features, computed once per layer when they are loaded
(`LayerFeatures`, which also loads each layer once for all its rows and drops
it after the last).
"""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sklearn.exceptions import ConvergenceWarning

from ...core.errors import IncompleteEntryError, InputError
from ...features.flops import gflops
from ...features.keys import FeatureKey
from ...features.plans import PlannedLayer
from ...features.store import FeatureSet, FeatureStore, FeatureStream
from ..classifiers import CLASSIFIERS, check_features, fit_classifier, flat_features, search_method
from ..config import ClassifiersConfig
from ..evaluate import Scores, evaluate
from ..persistence import features_record, save_classifier, write_predictions
from ..probes.logme import logme_score
from ..results import Row
from ..streamed_fit import fit_streamed, rows_in_memory
from ..threads import native_threads, parallel_jobs, usable_cores
from .extractions import Extraction
from .records import RowRecord, RowSpec, jsonable
from .splits import class_problems

__all__ = [
    "FittedRow",
    "LayerFeatures",
    "LayerRowSpec",
    "LayerToFit",
    "layer_logme",
    "layer_row_spec",
    "load_layer_splits",
]


@dataclass(frozen=True)
class LayerToFit:
    """One layer's features to fit classifiers on: where they are, and the extraction that made them."""

    extraction: Extraction
    info: PlannedLayer
    key: FeatureKey
    store: FeatureStore


def load_layer_splits(
    store_root: str, key: FeatureKey, split: Mapping, *, layer: str, stream: bool = False
) -> tuple[FeatureSet | FeatureStream, FeatureSet]:
    """A layer's train and test features from the store, checked before any classifier sees them.

    The entry is read in row blocks (`FeatureStore.stream`): only the test split, and the
    training split if it fits in memory (`rows_in_memory`), are held whole.

    Args:
        store_root: The feature store.
        key: The layer's store key.
        split: The split definition (`splits.split_dataset`).
        layer: The layer's name, for messages.
        stream: Keep a training split that does not fit in memory a `FeatureStream`, which
            a classifier row fits from (`fit_streamed`); without it, it is loaded (a
            multi-layer probe needs it whole).

    Raises:
        InputError: If a class has fewer than 2 training rows once unreadable
            images are left out, or the features hold NaN or inf.
        IncompleteEntryError: If the entry is gone: the run extracted it or found it
            cached, so it was removed while the run used it (`layerprobe store rm`).
    """
    where = f"layer {layer} (store entry {key.entry_name})"
    try:
        features = FeatureStore(store_root).stream(key)
    except IncompleteEntryError as error:  # this run extracted it or found it cached before any fit
        raise IncompleteEntryError(
            f"The features of {where} were removed from the store {store_root} while this run used them "
            f"(`layerprobe store rm`, or another process); the rows fitted so far are kept. Run again to extract "
            f"them again, and remove entries only when no run uses the store."
        ) from error
    train, test = (features.split(split[name]) for name in ("train_split", "test_split"))
    problem, _ = class_problems(features.class_names, train.y, test.y, split)
    if problem is not None:
        raise InputError(
            f"Unreadable images were left out of {where} (`layerprobe store info {store_root} "
            f"{key.entry_name}` lists them), and now {problem}"
        )
    test = test.load()  # this pass checks the entry's checksum
    fits = rows_in_memory(train.n_features, itemsize=train.dtype.itemsize)
    if not stream or fits is None or len(train) <= fits:
        train = train.load()
    for name, part in zip(("train_split", "test_split"), (train, test)):
        blocks = [flat_features(part)] if isinstance(part, FeatureSet) else part.blocks()
        start = 0
        for block in blocks:
            ids = part.sample_ids[start : start + len(block)]
            check_features(block, name=f"{where}, split {split[name]!r},", sample_ids=ids)
            start += len(block)
    return train, test


def layer_logme(train: FeatureSet | FeatureStream) -> float:
    """LogME of a layer's training features (`layerprobe.pipeline.probes.logme`): under a second per layer.

    Rounded to 6 significant digits, the precision of its float32 Gram matrix, so
    that machines (or dask workers) with other BLAS threads give the same value.
    """
    features = flat_features(train) if isinstance(train, FeatureSet) else train
    return float(f"{logme_score(features, train.y):.6g}")


class LayerFeatures:
    """Each layer's train and test splits (and LogME), loaded by the first row that needs them and
    dropped after the last, also when rows are fitted side by side in threads.

    Args:
        uses: Store entry -> the rows that will read it; an entry not counted is
            dropped after each use.
    """

    def __init__(self, uses: Mapping[str, int] | None = None):
        self._remaining = Counter(uses or {})
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}

    def splits(
        self, store_root: str, key: FeatureKey, split: Mapping, *, layer: str, stream: bool = False
    ) -> tuple[FeatureSet | FeatureStream, FeatureSet]:
        """The layer's checked splits (`load_layer_splits`), loaded once (once per `stream`)."""
        entry = self._entry(key)
        name = "streamed" if stream else "splits"
        with entry["lock"]:  # the layer's other rows wait for the one loading it
            if name not in entry:
                entry[name] = load_layer_splits(store_root, key, split, layer=layer, stream=stream)
            return entry[name]

    def logme(self, key: FeatureKey) -> float:
        """The LogME of the layer's training split (loaded by `splits` first), computed once."""
        entry = self._entry(key)
        with entry["lock"]:
            if "logme" not in entry:
                entry["logme"] = layer_logme((entry.get("splits") or entry["streamed"])[0])
            return entry["logme"]

    def done(self, key: FeatureKey) -> None:
        """One row that reads the layer is finished; its features go after the last one."""
        with self._lock:
            name = key.entry_name
            self._remaining[name] -= 1
            if self._remaining[name] <= 0:
                self._entries.pop(name, None)

    def _entry(self, key: FeatureKey) -> dict:
        with self._lock:
            return self._entries.setdefault(key.entry_name, {"lock": threading.Lock()})


@dataclass(frozen=True)
class FittedRow:
    """A row fitted and scored once on its test split, not saved yet (a dask worker sends it back).

    Attributes:
        row: The row (its `model_path` is set when it is saved).
        estimator: The fitted classifier or probe.
        sidecar: What its sidecar records beside the features record.
        scores: The test scores.
        proba: Test class probabilities, or None.
        test_sample_ids, test_y: The test split.
        class_names: The classes.
    """

    row: Row
    estimator: Any
    sidecar: dict
    scores: Scores
    proba: Any
    test_sample_ids: Any
    test_y: Any
    class_names: tuple

    def save(self, stem: Path, features: dict) -> tuple[Row, Path]:
        """Save the predictions and the classifier (its sidecar last); returns the row and the model's path."""
        write_predictions(
            stem.with_name(f"{stem.name}.predictions.csv"), self.test_sample_ids, self.test_y, self.scores.y_pred,
            self.class_names, proba=self.proba,
        )
        return self.row, save_classifier(stem, self.estimator, {**features, **self.sidecar})


_thread_rows = threading.local()
_recorder_lock = threading.Lock()
_recorder: dict[str, Any] = {"users": 0, "guard": None}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    caught = getattr(_thread_rows, "caught", None)
    if caught is not None and issubclass(category, ConvergenceWarning):
        caught.append(message)
    else:
        _recorder["show"](message, category, filename, lineno, file, line)


@contextlib.contextmanager
def convergence_warnings_of_this_thread():
    """Record the `ConvergenceWarning`s raised in this thread into a list; show every other warning.

    They are counted into the row and said once by the run (`RunRows.log_convergence`), not
    printed per fit. Rows are fitted side by side in threads and `warnings.catch_warnings` is
    process-wide, so one recorder is installed while any row fits and routes each warning to
    the list of the thread that raised it: each row counts its own.
    """
    with _recorder_lock:
        if _recorder["users"] == 0:
            guard = warnings.catch_warnings()
            guard.__enter__()
            warnings.simplefilter("always", ConvergenceWarning)
            # Another thread's catch_warnings (scikit-learn uses them inside fits) can restore ours
            # after we left: never keep ourselves as the function to show warnings with.
            if warnings.showwarning is not _show_warning:
                _recorder["show"] = warnings.showwarning
            _recorder["guard"] = guard
            warnings.showwarning = _show_warning
        _recorder["users"] += 1
    _thread_rows.caught = caught = []
    try:
        yield caught
    finally:
        _thread_rows.caught = None
        with _recorder_lock:
            _recorder["users"] -= 1
            if _recorder["users"] == 0:
                _recorder["guard"].__exit__(None, None, None)


@dataclass(frozen=True, eq=False)
class LayerRowSpec(RowSpec):
    """One classifier on one layer's features: the settings of its fit (the key), and where it goes.

    Attributes:
        key: The layer's store key.
        classifier: The classifier's name (`layerprobe.pipeline.classifiers.CLASSIFIERS`).
        param_grid: The searched grid, (parameter, values) pairs.
        preprocessing: Steps before the classifier.
        pca_components: PCA before it, or None.
        cv: Cross-validation folds.
        seed: Seed of the folds, PCA and classifier.
        split: The split definition, (name, value) pairs.
        layer: The layer's name, stage and depth (not part of the key: the store key names it).
        architecture: The backbone's architecture, for the row.
        weights_label: Its weights' short name, for the row.
        store_root: The feature store (not part of the key: the features are the same in any store).
        folder: The row's folder, `OUT/models/<store entry>`.
        extractor: The extractor's `get_config()`, recorded in the classifier's sidecar.
        n_jobs: Parallel fits of the grid search (not part of the key: the result is the same).
        device: Where the classifier is fitted (`[classifiers] device`); part of the key where it is not
            "cpu" and the classifier has a GPU solver.
        row_kind: "screening" or "final" (not part of the key).
    """

    key: FeatureKey
    classifier: str
    param_grid: tuple[tuple[str, tuple], ...]
    preprocessing: tuple[str, ...]
    pca_components: int | float | None
    cv: int
    seed: int
    split: tuple[tuple[str, Any], ...]
    layer: PlannedLayer
    architecture: str
    weights_label: str
    store_root: str
    folder: Path
    extractor: Mapping[str, Any]
    n_jobs: int | None = None
    device: str = "cpu"
    row_kind: str = "final"

    def settings(self) -> dict:
        grid = {name: list(values) for name, values in self.param_grid}
        fitted = {
            "store_key": self.key.digest,
            "classifier": self.classifier,
            "param_grid": grid,
            "preprocessing": list(self.preprocessing),
            "pca_components": self.pca_components,
            "cv": self.cv,
            "seed": self.seed,
            "split": dict(self.split),
        }
        # Recorded where they differ from the first registry's, so that older rows of the others stay reusable.
        method = search_method(self.classifier, grid)
        if method != "grid":
            fitted["search"] = method
        if CLASSIFIERS[self.classifier].revision:
            fitted["revision"] = CLASSIFIERS[self.classifier].revision
        if self.device != "cpu" and CLASSIFIERS[self.classifier].build_on_gpu is not None:
            fitted["device"] = self.device
        return jsonable(fitted)

    def record(self) -> RowRecord:
        """`models/<store entry>/<classifier>.row.json` (a format-1 `<classifier>.json` sidecar is read too)."""
        stem = self.folder / self.classifier
        return RowRecord(stem.with_name(f"{self.classifier}.row.json"), self.settings(),
                         legacy_sidecar=stem.with_suffix(".json"))

    def store_read(self) -> str:
        return self.store_root

    def layers_read(self) -> tuple[str, ...]:
        return (self.key.entry_name,)

    def fit(self, features: LayerFeatures | None = None, *, rows_at_once: int = 1) -> FittedRow:
        """Fit on the training split only (hyperparameters by CV inside it) and score once on the test split.

        Raises:
            InputError: Before the fit, if the layer's features hold NaN or inf, or
                unreadable images left a class with fewer than 2 training rows.
        """
        features = LayerFeatures() if features is None else features
        try:
            train, test = features.splits(self.store_root, self.key, dict(self.split), layer=self.layer.name, stream=True)
            logme = features.logme(self.key)
            # The pools of every row fitted at once share the cores (`layerprobe.pipeline.threads`).
            with native_threads(train, n_jobs=rows_at_once * parallel_jobs(self.n_jobs, usable_cores())):
                return self._score(train, test, logme)
        finally:
            features.done(self.key)

    def _score(self, train: FeatureSet | FeatureStream, test: FeatureSet, logme: float) -> FittedRow:
        X_test = flat_features(test)
        search = dict(
            param_grid={name: list(values) for name, values in self.param_grid}, preprocessing=self.preprocessing,
            pca_components=self.pca_components, cv=self.cv, n_jobs=self.n_jobs, random_state=self.seed,
            device=self.device,
        )
        with convergence_warnings_of_this_thread() as caught:
            if isinstance(train, FeatureSet):
                fit = fit_classifier(flat_features(train), train.y, self.classifier, **search)
            else:  # a training split too big to hold whole
                fit = fit_streamed(train, self.classifier, **search)
        scores = evaluate(test.y, fit.estimator.predict(X_test), test.class_names)
        row = Row(
            mode="frozen",
            backbone=self.architecture,
            weights=self.weights_label,
            layer=self.layer.name,
            stage=self.layer.stage,
            depth=self.layer.depth,
            pooling=self.key.pooling,
            classifier=self.classifier,
            row_kind=self.row_kind,
            feature_dim=X_test.shape[1],
            forward_gflops=gflops(self.layer.forward_flops),
            n_train=len(train.y),
            n_test=len(X_test),
            cv_score=fit.cv_score,
            cv_se=fit.cv_se,
            n_folds=fit.n_folds,
            test_accuracy=scores.accuracy,
            test_balanced_accuracy=scores.balanced_accuracy,
            test_macro_f1=scores.macro_f1,
            logme=logme,
            fit_seconds=round(fit.fit_seconds, 3),
            best_params=json.dumps(fit.best_params, sort_keys=True, default=str),
            store_entry=self.key.entry_name,
            convergence_warnings=len(caught),
        )
        sidecar = {
            "classifier": self.classifier,
            "best_params": fit.best_params,
            "cv_score": fit.cv_score,
            "scores": scores.as_dict(),
            "class_names": list(test.class_names),
        }
        proba = fit.estimator.predict_proba(X_test) if hasattr(fit.estimator, "predict_proba") else None
        return FittedRow(row, fit.estimator, sidecar, scores, proba, test.sample_ids, test.y, tuple(test.class_names))

    def save(self, fitted: FittedRow) -> tuple[Row, Path]:
        features = features_record(self.extractor, [self.layer.name], self.store_root, [self.key])
        return fitted.save(self.folder / self.classifier, features)

    def describe(self, row: Row) -> str:
        return f"{self.layer.name} / {self.classifier}"


def layer_row_spec(
    layer: LayerToFit, classifier: str, classifiers: ClassifiersConfig, split: Mapping, models: Path, *,
    row_kind: str = "final",
) -> LayerRowSpec:
    """The spec of `classifier` on `layer` with the settings of `[classifiers]`, saved under `models`."""
    return LayerRowSpec(
        key=layer.key,
        classifier=classifier,
        param_grid=tuple((name, tuple(values)) for name, values in classifiers.param_grid(classifier).items()),
        preprocessing=tuple(classifiers.preprocessing),
        pca_components=classifiers.pca_components,
        cv=classifiers.cv,
        seed=classifiers.seed,
        split=tuple(split.items()),
        layer=layer.info,
        architecture=layer.extraction.plan.architecture,
        weights_label=layer.extraction.backbone.weights_label,
        store_root=str(layer.store.root),
        folder=models / layer.key.entry_name,
        extractor=layer.extraction.get_config(),
        n_jobs=classifiers.n_jobs,
        device=classifiers.device,
        row_kind=row_kind,
    )

"""`LayerFeatures`: cached layer features as a scikit-learn transformer.

"Which layer?" becomes a hyperparameter scikit-learn can search:

    >>> search = GridSearchCV(
    ...     Pipeline([("features", LayerFeatures("VGG16", weights=None, input_size=32,
    ...                                          store="store/", dataset=data,
    ...                                          cache_layers="stages")),
    ...               ("clf", LogisticRegression(max_iter=1000))]),
    ...     param_grid={"features__layer": ["block3_pool", "block4_pool"]}, cv=3)
    >>> train, test = data.subset("train"), data.subset("val")
    >>> search.fit(train.sample_ids, train.y).score(test.sample_ids, test.y)  # y: class names
    >>> search.predict(["new/photo1.jpg", "new/photo2.jpg"])  # class names; extracted on the fly

The transformer's input is sample ids (the file paths of an `ImageDataset`, or
its `"array:<i>"` ids), image files outside it, or an `ImageDataset`. Features come from the feature
store: on a miss, the whole `dataset` is extracted once, with every layer of
`cache_layers` in the same forward pass, so a search over layers and folds costs
one forward pass per image, not one per candidate; every later call only reads
the store. Built extractors are shared per process (`FeatureExtractor.shared`: a few, least recently used
first out), so clones made by `GridSearchCV` do not rebuild the backbone.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..core.errors import InputError
from ..features.extract import FeatureExtractor
from ..features.inputs import UNLABELLED, ImageDataset
from ..features.store import FeatureStore

__all__ = ["LayerFeatures"]

_UNREADABLE = ("error", "nan")


def _as_list(layers: Any) -> list:
    if layers is None:
        return []
    if isinstance(layers, (str, int, float)):
        return [layers]
    return list(layers)


def _paths_dataset(paths: Sequence[str]) -> ImageDataset:
    """An unlabelled dataset of exactly these image files (absolute paths)."""
    return ImageDataset(
        sample_ids=paths, labels=np.zeros(len(paths), np.int64), class_names=(UNLABELLED,), splits=("all",) * len(paths)
    )


def _describe(X: Any) -> str:
    dtype = getattr(X, "dtype", None)
    try:
        shape = f" with shape {np.shape(X)}"
    except ValueError:  # ragged nested lists
        shape = ""
    return f"X of type {type(X).__name__}{f' and dtype {dtype}' if dtype is not None else ''}{shape}"


def _sample_ids(X: Any) -> list[str]:
    """`X` as a list of sample ids (strings), or an InputError saying what LayerFeatures takes."""
    ids = None
    try:
        array = None if isinstance(X, (str, bytes, os.PathLike)) else np.asarray(X, dtype=object)
    except ValueError:  # ragged nested lists
        array = None
    if array is not None and array.ndim in (1, 2):
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim == 1 and all(isinstance(value, (str, os.PathLike)) for value in array):
            ids = [os.fspath(value) for value in array]
    if ids is None:
        raise InputError(
            "LayerFeatures takes sample ids, one per row: image file paths, or ids of its `dataset` "
            "(\"array:<i>\" for in-memory images), or an ImageDataset. For pixel arrays, pass "
            f"layerprobe.from_arrays(images, labels) as `dataset` and its sample_ids as X. Received: {_describe(X)}"
        )
    return ids


class LayerFeatures(TransformerMixin, BaseEstimator):
    """Pooled features of one layer of a backbone, read from (and cached in) a feature store.

    Args:
        model: Backbone name from the registry, e.g. `"VGG16"`, or a saved `.keras` file.
        weights: `"imagenet"`, `None` (random init from `seed`) or a weights file.
        layer: The layer to return: an exact name, an alias (`"top"`, `"stage3"`)
            or a relative depth in [0, 1].
        pooling: `"avg"`, `"max"`, `"flatten"` or `"none"` (flattened on output).
        input_size: Square input side (default: the family's).
        store: Feature store directory.
        dataset: The `ImageDataset` the sample ids come from. Give it when the
            transformer sees subsets (cross-validation folds): the whole
            dataset is extracted once and each call selects its rows. Without
            it, the ids are taken as image file paths and exactly those files
            form the dataset.
        cache_layers: Layers to extract in the same forward pass as `layer`
            (names, aliases such as `"stages"`, depths), so that later
            candidates of a search are cache hits.
        batch_size: Images per forward pass.
        model_kwargs: Extra constructor arguments of the backbone.
        preprocessing: For a model file: `"none"`, `"caffe"`, `"tf"`, `"torch"` or a
            family name (default: from its metadata or graph).
        seed: Seed of the random initialisation when `weights=None`.
        progress: Show a progress bar while extracting (as `FeatureExtractor` and the CLI do).
        unreadable: What `transform` does with a sample whose image cannot be
            decoded: `"error"` (an `InputError` naming it and why) or `"nan"`
            (its row is NaN, for a downstream imputer or filter).

    Attributes:
        layer_name_: The resolved name of `layer`.
        n_features_in_: 1: the input is one column of sample ids.
        n_features_out_: Feature columns returned by `transform`.

    Sample ids that are not in `dataset` (or any, without it) are image files:
    they are extracted on the fly, with the same backbone, into the same
    store, keyed by their content, so predicting new images works as
    transforming the fitted ones does.
    """

    def __init__(
        self,
        model: str = "VGG16",
        *,
        weights: str | os.PathLike | None = "imagenet",
        layer: str | float = "top",
        pooling: str = "avg",
        input_size: int | None = None,
        store: str | os.PathLike = "layerprobe-store",
        dataset: ImageDataset | None = None,
        cache_layers: str | Sequence | None = None,
        batch_size: int = 32,
        model_kwargs: Mapping[str, Any] | None = None,
        preprocessing: str | None = None,
        seed: int = 0,
        progress: bool = True,
        unreadable: str = "error",
    ):
        self.model = model
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.input_size = input_size
        self.store = store
        self.dataset = dataset
        self.cache_layers = cache_layers
        self.batch_size = batch_size
        self.model_kwargs = model_kwargs
        self.preprocessing = preprocessing
        self.seed = seed
        self.progress = progress
        self.unreadable = unreadable

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # one column of sample ids
        tags.input_tags.one_d_array = True
        tags.input_tags.string = True
        return tags

    def _extractor(self) -> FeatureExtractor:
        layers = list(dict.fromkeys([self.layer, *_as_list(self.cache_layers)]))
        return FeatureExtractor.shared(
            dict(
                model=self.model, weights=self.weights, layers=layers, pooling=self.pooling,
                input_size=self.input_size, batch_size=self.batch_size,
                model_kwargs=dict(self.model_kwargs or {}), preprocessing=self.preprocessing, seed=self.seed,
            )
        )

    def _resolved_layer(self, extractor: FeatureExtractor) -> str:
        from ..features.layers import resolve_layers

        return resolve_layers(extractor.backbone.model, extractor.backbone.spec, [self.layer])[0].name

    def _check_params(self) -> None:
        if self.unreadable not in _UNREADABLE:
            raise ValueError(
                f"The 'unreadable' parameter of LayerFeatures must be one of {_UNREADABLE}. Got {self.unreadable!r} instead."
            )
        if self.dataset is not None and not isinstance(self.dataset, ImageDataset):
            raise InputError(
                "`dataset` must be an ImageDataset (from layerprobe.from_directory, from_csv or from_arrays). "
                f"Received: dataset of type {type(self.dataset).__name__}"
            )

    def _extracted(self, extractor: FeatureExtractor, layer: str, dataset: ImageDataset, **options: Any):
        """(features of `layer` for `dataset`, row of each sample id, skipped id -> reason), extracted if missing."""
        store = FeatureStore(self.store)
        report = extractor.extract(dataset, store, progress=self.progress, **options)
        features = store.load(report.keys[layer], root=dataset.root)
        values = features.X.reshape(len(features.X), int(np.prod(features.X.shape[1:])))
        return values, {sample_id: row for row, sample_id in enumerate(features.sample_ids)}, dict(report.skipped)

    def _features(self, X: Any) -> np.ndarray:
        """One row of features per sample of `X`, in order (see the class docstring for new images)."""
        self._check_params()
        extractor = self._extractor()
        layer = self._resolved_layer(extractor)
        if isinstance(X, ImageDataset):
            dataset, ids = X, list(X.sample_ids)
        else:
            dataset, ids = self.dataset, _sample_ids(X)
        known = set(dataset.sample_ids) if dataset is not None else set()
        resolved = [i if i in known else os.path.abspath(os.path.expanduser(i)) for i in ids]
        outside = {given: path for given, path in zip(ids, resolved) if path not in known}  # as given -> absolute
        ids, new = resolved, list(dict.fromkeys(outside.values()))
        parts = []  # (values, row of id, skipped)
        if any(i in known for i in ids):
            parts.append(self._extracted(extractor, layer, dataset))
        if new:
            self._check_files(outside, dataset)
            # keyed by the files' content: the same images under another name or in another call are cache hits
            parts.append(self._extracted(extractor, layer, _paths_dataset(new), dataset_digest="content"))
        width = int(np.prod(extractor.feature_shapes[layer]))
        out = np.full((len(ids), width), np.nan, dtype=extractor.dtype)
        unreadable = []
        for position, sample_id in enumerate(ids):
            found = next(((values, rows) for values, rows, _ in parts if sample_id in rows), None)
            if found is None:
                reason = next((skipped[sample_id] for _, _, skipped in parts if sample_id in skipped), "not decoded")
                unreadable.append(f"{sample_id} ({reason})")
            else:
                out[position] = found[0][found[1][sample_id]]
        if unreadable and self.unreadable == "error":
            raise InputError(
                f"{len(unreadable)} image(s) could not be read: {'; '.join(unreadable[:5])}"
                f"{' ...' if len(unreadable) > 5 else ''}. Remove or fix them, or pass unreadable='nan' to get NaN "
                f"rows for them. Received: {len(ids)} sample ids"
            )
        return out

    @staticmethod
    def _check_files(paths: Mapping[str, str], dataset: ImageDataset | None) -> None:
        """Raise if an id outside `dataset` (given -> absolute path) is not a file."""
        missing = [given for given, path in paths.items() if not os.path.isfile(path)]
        if missing:
            where = "neither ids of `dataset` nor image files" if dataset is not None else "not image files"
            raise InputError(
                f"{len(missing)} sample id(s) are {where}: {', '.join(map(repr, missing[:5]))}"
                f"{' ...' if len(missing) > 5 else ''}. Pass image file paths, or the sample_ids of `dataset`. "
                f"Received: {len(paths)} id(s) outside the dataset"
            )

    def _fitted(self, values: np.ndarray) -> np.ndarray:
        self.layer_name_ = self._resolved_layer(self._extractor())
        self.n_features_in_ = 1
        self.n_features_out_ = values.shape[1]
        return values

    def fit(self, X: Any, y: Any = None) -> "LayerFeatures":
        """Extract what is missing from the store and record the output width."""
        self._fitted(self._features(X))
        return self

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        """`fit` and `transform` with one read of the store."""
        return self._fitted(self._features(X))

    def transform(self, X: Any) -> np.ndarray:
        """The features of the samples in `X`, one row each, in order; new image files are extracted first."""
        check_is_fitted(self, "n_features_out_")
        return self._features(X)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "n_features_out_")
        return np.asarray([f"{self.layer_name_}_{i}" for i in range(self.n_features_out_)], dtype=object)

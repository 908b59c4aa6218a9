"""`LayerFeatures`: cached layer features as a scikit-learn transformer.

"Which layer?" becomes a hyperparameter scikit-learn can search:

    >>> search = GridSearchCV(
    ...     Pipeline([("features", LayerFeatures("VGG16", weights=None, input_size=32,
    ...                                          store="store/", dataset=data,
    ...                                          cache_layers="stages")),
    ...               ("clf", LogisticRegression(max_iter=1000))]),
    ...     param_grid={"features__layer": ["block3_pool", "block4_pool"]}, cv=3)
    >>> search.fit(data.sample_ids, data.labels)

The transformer's input is sample ids (the file paths of an `ImageDataset`, or
its `"array:<i>"` ids) or an `ImageDataset`. Features come from the feature
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

from ..features.core.errors import InputError
from ..features.extract import FeatureExtractor
from ..features.inputs import UNLABELLED, ImageDataset
from ..features.store import FeatureStore

__all__ = ["LayerFeatures"]

def _as_list(layers: Any) -> list:
    if layers is None:
        return []
    if isinstance(layers, (str, int, float)):
        return [layers]
    return list(layers)


def _paths_dataset(sample_ids: Sequence[str]) -> ImageDataset:
    """An unlabelled dataset of exactly these image files."""
    paths = [os.path.abspath(os.path.expanduser(str(path))) for path in sample_ids]
    return ImageDataset(
        sample_ids=paths, labels=np.zeros(len(paths), np.int64), class_names=(UNLABELLED,), splits=("all",) * len(paths)
    )


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
        progress: Show a progress bar while extracting.

    Attributes:
        layer_name_: The resolved name of `layer`.
        n_features_out_: Feature columns returned by `transform`.
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
        progress: bool = False,
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

    def _dataset_and_rows(self, X: Any) -> tuple[ImageDataset, np.ndarray | None]:
        """The dataset to extract, and the rows of its features that `X` asks for (None: all)."""
        if isinstance(X, ImageDataset):
            return X, None
        ids = np.asarray(X, dtype=object).reshape(-1)
        if self.dataset is None:
            return _paths_dataset([str(i) for i in ids]), None
        if not isinstance(self.dataset, ImageDataset):
            raise InputError(
                "`dataset` must be an ImageDataset (from layerprobe.from_directory, from_csv or from_arrays). "
                f"Received: dataset of type {type(self.dataset).__name__}"
            )
        return self.dataset, ids

    def _features(self, X: Any) -> np.ndarray:
        extractor = self._extractor()
        layer_name = self._resolved_layer(extractor)
        dataset, ids = self._dataset_and_rows(X)
        store = FeatureStore(self.store)
        report = extractor.extract(dataset, store, progress=self.progress)
        features = store.load(report.keys[layer_name], root=dataset.root)
        values = features.X.reshape(len(features.X), -1)
        if ids is None and len(values) == len(dataset):
            return values
        wanted = ids if ids is not None else np.asarray(dataset.sample_ids, dtype=object)
        row_of = {sample_id: row for row, sample_id in enumerate(features.sample_ids)}
        missing = [str(i) for i in wanted if i not in row_of]
        if missing:
            skipped = dict(report.skipped)
            reasons = [f"{i} ({skipped.get(i, 'not in the dataset')})" for i in missing[:5]]
            raise InputError(
                f"{len(missing)} sample(s) have no features: {'; '.join(reasons)}"
                f"{' ...' if len(missing) > 5 else ''}. Pass only ids of readable samples of `dataset` "
                f"(unreadable images are skipped at extraction; see `layerprobe store info`)."
            )
        return values[[row_of[i] for i in wanted]]

    def fit(self, X: Any, y: Any = None) -> "LayerFeatures":
        """Extract what is missing from the store and record the output width."""
        values = self._features(X)
        self.layer_name_ = self._resolved_layer(self._extractor())
        self.n_features_out_ = values.shape[1]
        return self

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        """`fit` and `transform` with one read of the store."""
        values = self._features(X)
        self.layer_name_ = self._resolved_layer(self._extractor())
        self.n_features_out_ = values.shape[1]
        return values

    def transform(self, X: Any) -> np.ndarray:
        """The cached features of the samples in `X`, one row each, in order."""
        check_is_fitted(self, "n_features_out_")
        return self._features(X)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "n_features_out_")
        return np.asarray([f"{self.layer_name_}_{i}" for i in range(self.n_features_out_)], dtype=object)

"""`FeatureSet`: the features of one layer for a dataset, as loaded from the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ...core.errors import InputError
from ..keys import FeatureKey

__all__ = ["FeatureSet"]


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Features of one layer for a dataset, as loaded from the store.

    Attributes:
        X: Features, shape `(n_samples, ...)`.
        y: Integer labels, indices into `class_names`.
        sample_ids: Absolute file path (or "array:<i>") of each sample. Entries store
            file paths relative to the dataset root; `FeatureStore.load` resolves them
            against its `root` argument, else against the root at extraction.
        splits: Split name of each sample.
        class_names: Label names.
        key: The feature key.
        metadata: Everything else recorded at extraction (library versions, the numerics
            `environment`, `compute_dtype`, `dataset_root`, skipped count...).
    """

    X: np.ndarray
    y: np.ndarray
    sample_ids: np.ndarray
    splits: np.ndarray
    class_names: tuple[str, ...]
    key: FeatureKey
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> "FeatureSet":
        """Only the samples of one split (e.g. `"train"`).

        Raises:
            InputError: For a split name the set does not have.
        """
        mask = self.splits == name
        if not mask.any():
            raise InputError(
                f"No samples in split {name!r}. Available splits: "
                f"{sorted(set(self.splits.tolist()))}. Received: split={name!r}"
            )
        return FeatureSet(
            X=self.X[mask],
            y=self.y[mask],
            sample_ids=self.sample_ids[mask],
            splits=self.splits[mask],
            class_names=self.class_names,
            key=self.key,
            metadata=self.metadata,
        )

    @property
    def samples(self):
        """A pandas DataFrame indexed like `X`: sample_id, label, class_name, split."""
        import pandas as pd

        return pd.DataFrame(
            {
                "sample_id": self.sample_ids,
                "label": self.y,
                "class_name": np.asarray(self.class_names, dtype=object)[self.y],
                "split": self.splits,
            }
        )

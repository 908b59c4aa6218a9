"""`FeatureSet`: the features of one layer for a dataset, as loaded from the store; `FeatureStream`: the
same, its features handed out in row blocks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ...core.errors import InputError
from ..keys import FeatureKey

__all__ = ["FeatureSet", "FeatureStream"]


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
        mask = _split_mask(self.splits, name)
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
    def n_features(self) -> int:
        """Feature columns per sample once flattened."""
        return int(np.prod(self.X.shape[1:], dtype=np.int64))

    @property
    def shape(self) -> tuple[int, int]:
        """(n_samples, n_features): the shape of `X` flattened to one row per sample."""
        return len(self.X), self.n_features

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


def _split_mask(splits: np.ndarray, name: str) -> np.ndarray:
    mask = splits == name
    if not mask.any():
        raise InputError(
            f"No samples in split {name!r}. Available splits: "
            f"{sorted(set(splits.tolist()))}. Received: split={name!r}"
        )
    return mask


class FeatureStream:
    """One layer's features for a dataset, handed out in row blocks (`FeatureStore.stream`).

    Everything but the features is in memory, as in a `FeatureSet`; the features are
    read from the store block by block at each pass (`blocks`), so a pass over a layer
    of any size holds one block. The first complete pass checks them against their
    checksum (a `CorruptEntryError` at its end); later passes read them unhashed.

    Attributes:
        y, sample_ids, splits, class_names, key, metadata: As `FeatureSet`, for the
            stream's rows only.
        dtype: The features' dtype.
        rows: The stream's rows in the entry (increasing).
    """

    def __init__(
        self,
        *,
        blocks: Callable[[int | None, bool], Iterator[tuple[int, np.ndarray]]],
        view: Callable[[], np.ndarray | None],
        n_rows: int,
        dtype: np.dtype,
        y: np.ndarray,
        sample_ids: np.ndarray,
        splits: np.ndarray,
        class_names: tuple[str, ...],
        key: FeatureKey,
        metadata: Mapping[str, Any],
        rows: np.ndarray | None = None,
        verified: bool | list = False,
    ):
        self._entry_blocks, self._view, self._n_rows = blocks, view, n_rows
        self.dtype = np.dtype(dtype)
        self.rows = np.arange(n_rows) if rows is None else rows
        self.y, self.sample_ids, self.splits = y, sample_ids, splits
        self.class_names, self.key, self.metadata = class_names, key, metadata
        # Shared with the streams `split` makes: the entry's features are checked once.
        self._verified = verified if isinstance(verified, list) else [verified]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The per-sample shape of the stored features."""
        return tuple(self.metadata.get("feature_shape", ()))

    @property
    def n_features(self) -> int:
        """Feature columns per sample once flattened."""
        return int(np.prod(self.feature_shape, dtype=np.int64))

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, n_features): the shape of the features the blocks hold, stacked."""
        return len(self.rows), self.n_features

    def split(self, name: str) -> "FeatureStream":
        """Only the samples of one split (e.g. `"train"`); the same entry, read the same way.

        Raises:
            InputError: For a split name the stream does not have.
        """
        return self.select(_split_mask(self.splits, name))

    def select(self, mask: np.ndarray) -> "FeatureStream":
        """Only the rows where the boolean `mask` (one per row of the stream) is true, in their order."""
        return FeatureStream(
            blocks=self._entry_blocks, view=self._view, n_rows=self._n_rows, dtype=self.dtype, y=self.y[mask],
            sample_ids=self.sample_ids[mask], splits=self.splits[mask], class_names=self.class_names,
            key=self.key, metadata=self.metadata, rows=self.rows[mask], verified=self._verified,
        )

    def blocks(self, block_rows: int | None = None) -> Iterator[np.ndarray]:
        """The stream's features, flattened to (rows, n_features), in consecutive blocks of its rows.

        Blocks are read-only; those of consecutive rows are memory maps of the file where its
        layout allows (no copy). Each pass reads the entry once, about 16 MB (or
        `block_rows` rows of the entry) at a time.

        Raises:
            CorruptEntryError: At the end of the first complete pass, if the features do not
                match their checksum.
        """
        check = not self._verified[0]
        every_row = len(self.rows) == self._n_rows
        for start, block in self._entry_blocks(block_rows, check):
            flat = block.reshape(len(block), -1)
            if not every_row:
                lo, hi = np.searchsorted(self.rows, (start, start + len(block)))
                wanted = self.rows[lo:hi] - start
                if not len(wanted):
                    continue
                consecutive = wanted[-1] - wanted[0] == len(wanted) - 1
                flat = flat[wanted[0] : wanted[-1] + 1] if consecutive else flat[wanted]
            flat.flags.writeable = False
            yield flat
        if check:
            self._verified[0] = True

    def view(self) -> np.ndarray | None:
        """All of the entry's features (every split) as a read-only memory map, no copy; None where
        the layout does not allow it. Not checked against the checksum (`blocks` is)."""
        return self._view()

    def load(self) -> FeatureSet:
        """The stream's rows as a `FeatureSet`: the features in memory, read (and checked) in one pass."""
        X = np.empty((len(self.rows), *self.feature_shape), dtype=self.dtype)
        flat = X.reshape(len(X), -1)
        filled = 0
        for block in self.blocks():
            flat[filled : filled + len(block)] = block
            filled += len(block)
        return FeatureSet(
            X=X, y=self.y, sample_ids=self.sample_ids, splits=self.splits, class_names=self.class_names,
            key=self.key, metadata=self.metadata,
        )

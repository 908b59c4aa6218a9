"""Passes over features in row blocks: an in-memory array's, or a feature stream's (`FeatureStore.stream`).

A probe that fits from row blocks takes either; its memory is then set by the block
and the model, not by the number of rows.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["column_moments", "row_blocks"]


def _array_blocks(X: np.ndarray, block_rows: int) -> Iterator[np.ndarray]:
    for start in range(0, len(X), block_rows):
        yield X[start : start + block_rows]


def row_blocks(X: Any, block_bytes: int = 1 << 24) -> Callable[[], Iterator[np.ndarray]]:
    """A function that starts a pass over `X`'s rows in blocks: `X.blocks()` for a stream
    (anything with ``blocks()``), else about `block_bytes` of rows of the array at a time (views, no copy)."""
    if hasattr(X, "blocks"):
        return X.blocks
    block_rows = max(1, block_bytes // max(1, X[:1].nbytes))
    return lambda: _array_blocks(X, block_rows)


def column_moments(blocks: Callable[[], Iterator[np.ndarray]], n_features: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Column means and population standard deviations (constant columns: 1, as `StandardScaler`) in
    float64, and the row count, from one pass; each block is shifted by the first block's mean first,
    so that float32 blocks lose no precision to a large mean."""
    shift = None
    sums, squares, n_rows = np.zeros(n_features), np.zeros(n_features), 0
    for block in blocks():
        if shift is None:
            shift = block.mean(axis=0, dtype=np.float64).astype(block.dtype)
        Z = block - shift
        sums += Z.sum(axis=0, dtype=np.float64)
        squares += np.einsum("ij,ij->j", Z, Z, dtype=np.float64)
        n_rows += len(block)
    residual = sums / max(n_rows, 1)
    mean = (0.0 if shift is None else shift.astype(np.float64)) + residual
    scale = np.sqrt(np.maximum(squares / max(n_rows, 1) - residual**2, 0.0))
    scale[scale <= 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean))] = 1.0
    return mean, scale, n_rows

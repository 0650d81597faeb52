"""The de-duplication level (unique paths for generation) and input checks for embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpr.core.errors import GprInputError


def path_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group rows of codes (n, L): returns (ids (n,) int64, counts (G,)); equal rows share an id.

    Rows are packed into one int64 key when the code ranges allow it (fast path for millions of
    rows); otherwise np.unique over rows.
    """
    codes = _codes2d(codes, "codes")
    if codes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    c = codes - codes.min(axis=0)
    bases = c.max(axis=0).astype(np.float64) + 1
    if np.prod(bases) < 2.0**62:
        key = np.zeros(c.shape[0], dtype=np.int64)
        for j in range(c.shape[1]):
            key = key * int(bases[j]) + c[:, j]
        _, ids, counts = np.unique(key, return_inverse=True, return_counts=True)
    else:
        _, ids, counts = np.unique(c, axis=0, return_inverse=True, return_counts=True)
    return ids.reshape(-1).astype(np.int64), counts.astype(np.int64)


def _rank_in_group(ids: np.ndarray) -> np.ndarray:
    """0 for the first row of each id in input order, 1 for the second, ..."""
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    rank = np.empty_like(ids)
    rank[order] = np.arange(s.size) - np.searchsorted(s, s, side="left")
    return rank


def dedup_index(codes: np.ndarray) -> np.ndarray:
    """Extra level (n,) int64 making (codes, dedup) unique: each item's rank within its path."""
    ids, _ = path_ids(codes)
    return _rank_in_group(ids)


def extend_dedup(
    existing_codes: np.ndarray, existing_dedup: np.ndarray, new_codes: np.ndarray
) -> np.ndarray:
    """Dedup indices for new items that continue after the largest index used on their path.

    Existing items keep theirs; new items on the same path get consecutive indices in input order.
    """
    old = _codes2d(existing_codes, "existing_codes")
    new = _codes2d(new_codes, "new_codes")
    dd = np.asarray(existing_dedup).astype(np.int64).reshape(-1)
    if dd.shape[0] != old.shape[0]:
        raise GprInputError(
            f"existing_dedup has {dd.shape[0]} rows, existing_codes {old.shape[0]}",
            field="existing_dedup",
        )
    if old.shape[0] and new.shape[0] and old.shape[1] != new.shape[1]:
        raise GprInputError(
            f"new_codes has {new.shape[1]} levels, existing_codes {old.shape[1]}", field="new_codes"
        )
    if new.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if old.shape[0] == 0:
        return dedup_index(new)
    ids, counts = path_ids(np.concatenate([old, new]))
    top = np.full(counts.shape[0], -1, dtype=np.int64)
    np.maximum.at(top, ids[: old.shape[0]], dd)
    new_ids = ids[old.shape[0] :]
    return top[new_ids] + 1 + _rank_in_group(new_ids)


def validate_embeddings(x: np.ndarray, n_codes: int, file: str | Path | None = None) -> np.ndarray:
    """Check an embedding matrix for tokenizer training; returns it as contiguous float32.

    Raises GprInputError when x is not 2-D, has no rows or columns, holds NaN/inf (naming the
    first bad row), or has fewer rows than `n_codes` (field 'codebook_size').
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise GprInputError(
            f"embeddings must be a 2-D array, got shape {arr.shape}", file=file, field="embedding"
        )
    if arr.shape[0] == 0:
        raise GprInputError("embeddings have zero rows", file=file, field="embedding")
    if arr.shape[1] == 0:
        raise GprInputError("embeddings have zero columns", file=file, field="embedding")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise GprInputError(f"embeddings must be real numbers, got {arr.dtype}", file=file)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise GprInputError("embedding holds NaN or inf", file=file, row=row, field="embedding")
    if arr.shape[0] < n_codes:
        raise GprInputError(
            f"{arr.shape[0]} items are fewer than codebook_size {n_codes}",
            file=file,
            field="codebook_size",
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _codes2d(codes: np.ndarray, name: str) -> np.ndarray:
    c = np.asarray(codes)
    if c.ndim != 2 or not (c.size == 0 or np.issubdtype(c.dtype, np.integer)):
        raise GprInputError(
            f"{name} must be a 2-D integer array, got {c.dtype} {c.shape}", field=name
        )
    return c.astype(np.int64, copy=False)

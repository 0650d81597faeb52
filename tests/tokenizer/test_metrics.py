"""Semantic-ID metrics, the de-duplication level and embedding validation on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpr.core.errors import GprInputError
from gpr.tokenizer import (
    collision_rate,
    cur,
    dedup_index,
    extend_dedup,
    nmi,
    pas,
    validate_embeddings,
)
from gpr.tokenizer.kmeans import balanced_assign, kmeans, residual_kmeans

CODES = np.array([[0, 0], [0, 0], [1, 2], [3, 4]])


def test_collision_rate_hand_made() -> None:
    assert collision_rate(CODES) == 0.5
    assert collision_rate(np.array([[0, 1], [1, 0], [2, 2]])) == 0.0
    assert collision_rate(np.array([[5, 5, 5]] * 3 + [[5, 5, 4]])) == 0.75


def test_collision_rate_wide_codes_fall_back_to_row_unique() -> None:
    big = np.array([[2**40, 2**40, 2**40], [2**40, 2**40, 2**40], [0, 0, 0]])
    assert collision_rate(big) == pytest.approx(2 / 3)


def test_cur_per_level() -> None:
    assert cur(CODES, 8) == [3 / 8, 3 / 8]
    assert cur(np.array([[0, 1], [1, 1]]), 2) == [1.0, 0.5]
    with pytest.raises(ValueError):
        cur(np.array([[0, 9]]), 4)


def test_pas_identical_orthogonal_and_nan() -> None:
    codes = np.array([[0, 0], [0, 0], [0, 0], [1, 1], [1, 1], [2, 2]])
    x = np.zeros((6, 4))
    x[0:3] = [1.0, 2.0, 0.0, 0.0]  # group 0: identical directions (different norms allowed)
    x[0] *= 3.0
    x[3] = [1.0, 0.0, 0.0, 0.0]  # group 1: orthogonal pair
    x[4] = [0.0, 1.0, 0.0, 0.0]
    x[5] = [0.0, 0.0, 1.0, 0.0]
    assert pas(codes[:3], x[:3]) == pytest.approx(1.0)
    assert pas(codes[3:5], x[3:5]) == pytest.approx(0.0)
    assert pas(codes, x) == pytest.approx(0.5)  # unweighted mean over the two groups
    assert math.isnan(pas(np.array([[0], [1], [2]]), np.eye(3)))


def test_pas_matches_bruteforce() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(60, 2))
    x = rng.normal(size=(60, 5))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    vals = []
    for path in np.unique(codes, axis=0):
        idx = np.flatnonzero((codes == path).all(1))
        if idx.size >= 2:
            sims = u[idx] @ u[idx].T
            vals.append(sims[np.triu_indices(idx.size, 1)].mean())
    assert pas(codes, x) == pytest.approx(float(np.mean(vals)))


def test_nmi() -> None:
    assert nmi(np.array([0, 0, 1, 1]), np.array([5, 5, 7, 7])) == pytest.approx(1.0)
    assert nmi(np.array([[0, 3], [0, 2], [1, 1], [1, 0]]), np.array([1, 1, 2, 2])) == pytest.approx(
        1.0
    )
    assert nmi(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])) == pytest.approx(0.0)


def test_dedup_index_makes_paths_unique() -> None:
    codes = np.array([[0, 0], [1, 2], [0, 0], [3, 4], [0, 0], [1, 2]])
    d = dedup_index(codes)
    assert d.tolist() == [0, 0, 1, 0, 2, 1]
    full = np.concatenate([codes, d[:, None]], axis=1)
    assert len(np.unique(full, axis=0)) == len(full)
    assert dedup_index(np.zeros((0, 3), dtype=np.int64)).shape == (0,)


def test_extend_dedup_continues_after_largest_index() -> None:
    old = np.array([[0, 0], [0, 0], [1, 1]])
    old_d = np.array([0, 5, 0])  # a gap: new items on [0,0] must start after 5
    new = np.array([[0, 0], [2, 2], [0, 0], [1, 1], [2, 2]])
    d = extend_dedup(old, old_d, new)
    assert d.tolist() == [6, 0, 7, 1, 1]
    assert extend_dedup(np.zeros((0, 2), np.int64), np.zeros(0), new).tolist() == [0, 0, 1, 0, 1]
    with pytest.raises(GprInputError):
        extend_dedup(old, old_d[:2], new)


def test_validate_embeddings_errors() -> None:
    ok = validate_embeddings(np.ones((4, 3), dtype=np.float64), 4)
    assert ok.dtype == np.float32 and ok.shape == (4, 3)
    with pytest.raises(GprInputError, match="2-D"):
        validate_embeddings(np.ones(5), 2)
    with pytest.raises(GprInputError, match="zero rows"):
        validate_embeddings(np.ones((0, 3)), 2)
    bad = np.ones((5, 3))
    bad[3, 1] = np.nan
    bad[4, 0] = np.inf
    with pytest.raises(GprInputError) as e:
        validate_embeddings(bad, 2, file="emb.parquet")
    assert e.value.row == 3 and e.value.file == "emb.parquet"
    with pytest.raises(GprInputError) as e:
        validate_embeddings(np.ones((3, 2)), 4)
    assert e.value.field == "codebook_size"


def _blobs(n: int = 600, d: int = 8, k: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 4
    return (centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_kmeans_seeded_and_residual_codes() -> None:
    x = _blobs()
    c1, a1 = kmeans(x, 8, 10, seed=3)
    c2, a2 = kmeans(x, 8, 10, seed=3)
    assert np.array_equal(c1, c2) and np.array_equal(a1, a2)
    cents, codes = residual_kmeans(x, 2, 8, 10, seed=3)
    assert codes.shape == (600, 2) and codes.dtype == np.int64
    assert np.array_equal(codes[:, 0], a1)  # level 1 is plain k-means with the same seed
    r1 = x - cents[0][codes[:, 0]]
    r2 = r1 - cents[1][codes[:, 1]]
    assert (r2**2).sum() < (r1**2).sum()


def test_balanced_assign_respects_capacity() -> None:
    x = _blobs(n=500)
    cent, _ = kmeans(x, 10, 10, seed=0)
    lab = balanced_assign(x, cent, 50)
    assert lab.min() >= 0 and np.bincount(lab, minlength=10).max() <= 50
    cb, ab = kmeans(x, 10, 10, seed=0, balanced=True)
    assert cb.shape == (10, 8) and ab.shape == (500,)

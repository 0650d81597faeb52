"""Semantic-ID quality (GPR Table 1): collision rate, CUR per level, PAS, and NMI to labels."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from gpr.tokenizer.dedup import path_ids


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full L-level path is shared with at least one other item."""
    ids, counts = path_ids(codes)
    if ids.size == 0:
        return 0.0
    return float((counts[ids] >= 2).mean())


def cur(codes: np.ndarray, codebook_size: int) -> list[float]:
    """Code utilisation rate per level: share of the K codes used by at least one item."""
    c = np.asarray(codes)
    if c.ndim != 2:
        raise ValueError(f"codes must be 2-D, got shape {c.shape}")
    if c.size and (c.min() < 0 or c.max() >= codebook_size):
        raise ValueError(f"codes outside [0, {codebook_size})")
    return [
        float(np.count_nonzero(np.bincount(c[:, j], minlength=codebook_size)) / codebook_size)
        for j in range(c.shape[1])
    ]


def pas(codes: np.ndarray, x: np.ndarray) -> float:
    """Path-average similarity: mean pairwise input cosine inside each collision group.

    For a group of n unit vectors u_i with sum s, the mean over pairs i<j of u_i.u_j is
    (||s||^2 - sum ||u_i||^2) / (n (n - 1)); groups are averaged unweighted. NaN if no collisions.
    Zero-norm rows count as zero vectors (cosine 0 with everything).
    """
    ids, counts = path_ids(codes)
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] != ids.shape[0]:
        raise ValueError(f"x shape {x.shape} does not match {ids.shape[0]} codes")
    member = counts[ids] >= 2
    if not member.any():
        return float("nan")
    g = ids[member]
    order = np.argsort(g, kind="stable")
    g = g[order]
    xm = x[np.flatnonzero(member)[order]].astype(np.float32)
    norm = np.sqrt(np.square(xm, dtype=np.float64).sum(1, keepdims=True))
    u = np.divide(xm, norm.astype(np.float32), out=np.zeros_like(xm), where=norm > 0)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    s = np.add.reduceat(u, starts, axis=0, dtype=np.float64)
    sq = np.add.reduceat(np.square(u, dtype=np.float64).sum(1), starts)
    n = np.diff(np.r_[starts, g.size]).astype(np.float64)
    per_group = ((s * s).sum(1) - sq) / (n * (n - 1))
    return float(per_group.mean())


def nmi(codes_level1: np.ndarray, labels: np.ndarray) -> float:
    """Normalised mutual information between level-1 codes and labels (e.g. categories).

    A 2-D codes array is accepted and its first column used.
    """
    c = np.asarray(codes_level1)
    if c.ndim == 2:
        c = c[:, 0]
    return float(normalized_mutual_info_score(np.asarray(labels).reshape(-1), c.reshape(-1)))

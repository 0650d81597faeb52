"""Metrics on arrays, shared by every layer above.

- Retrieval, ranked lists with one target each: Recall@K, NDCG@K, HitRate@K.
- Ranking quality: AUC (Mann-Whitney, ties count one half) and GAUC (per-user AUC, weighted by the
  user's number of samples, over users that have both classes).
"""

from __future__ import annotations

import numpy as np


def target_ranks(ranked: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N, K) ranked item ids (-1 pad), (N,) targets -> 0-based rank of the target, -1 if absent."""
    hit = ranked == target[:, None]
    found = hit.any(axis=1)
    return np.where(found, hit.argmax(axis=1), -1)


def recall_at(ranks: np.ndarray, k: int) -> float:
    return float(((ranks >= 0) & (ranks < k)).mean()) if len(ranks) else 0.0


def ndcg_at(ranks: np.ndarray, k: int) -> float:
    ok = (ranks >= 0) & (ranks < k)
    gain = np.where(ok, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    return float(gain.mean()) if len(ranks) else 0.0


def retrieval_metrics(
    ranked: np.ndarray, target: np.ndarray, valid_items: np.ndarray
) -> dict[str, float]:
    """The `gpr eval` keys; invalid_rate = share of generated ids that are not valid items."""
    ranks = target_ranks(ranked, target)
    gen = ranked[ranked >= 0]
    invalid = float((~np.isin(gen, valid_items)).mean()) if len(gen) else 0.0
    return {
        "recall@5": recall_at(ranks, 5),
        "ndcg@5": ndcg_at(ranks, 5),
        "recall@10": recall_at(ranks, 10),
        "ndcg@10": ndcg_at(ranks, 10),
        "hitrate@100": recall_at(ranks, 100),
        "invalid_rate": invalid,
        "n_predictions": len(target),
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    grp = np.cumsum(first) - 1
    starts = np.nonzero(first)[0]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    r = np.empty(len(x))
    r[order] = avg[grp]
    return r


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC: sum_g n_g AUC_g / sum_g n_g over groups with both classes; NaN if none."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(groups)
    order = np.argsort(g, kind="stable")
    y, s, g = y[order], s[order], g[order]
    bounds = np.r_[0, np.nonzero(g[1:] != g[:-1])[0] + 1, len(g)]
    num = den = 0.0
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        a = auc(y[lo:hi], s[lo:hi])
        if np.isfinite(a):
            num += (hi - lo) * a
            den += hi - lo
    return float(num / den) if den else float("nan")

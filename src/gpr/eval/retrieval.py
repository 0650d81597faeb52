"""Retrieval metrics on ranked lists with one target each: Recall@K, NDCG@K, HitRate@K."""

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

"""Beam generation at journey positions, and its retrieval metrics (Recall, NDCG, HitRate)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gpr.core.metrics import retrieval_metrics
from gpr.model.journey import (
    tail_windows,
)
from gpr.model.prepare import Prepared
from gpr.model.registry import Recommender


@torch.no_grad()
def generate_ranked(
    model: Recommender,
    prep: Prepared,
    positions: np.ndarray,
    beam: int,
    batch_size: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Beam search at each position: (N, beam) items, (N, beam) scores, (N,) labels, (N,) users."""
    model.eval()
    trie = prep.trie.to(device)
    max_len = model.cfg.max_len
    ranked, scores, target, users = [], [], [], []
    for lo in range(0, len(positions), batch_size):
        wins = tail_windows(prep.journeys, positions[lo : lo + batch_size], max_len)
        b = prep.batch(wins, (0, 1, 2), max_len, model.cfg.thought_tokens).to(device)
        items, sc = model.generate(b, trie, beam)
        ranked.append(items.cpu().numpy())
        scores.append(sc.float().cpu().numpy())
        target.append(b.targets[:, 0].cpu().numpy())
        users.append(np.array([w.user for w in wins], dtype=np.int64))
    if not ranked:
        return (
            np.zeros((0, beam), np.int64),
            np.zeros((0, beam)),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )
    return (
        np.concatenate(ranked),
        np.concatenate(scores),
        np.concatenate(target),
        np.concatenate(users),
    )


def evaluate(
    model: Recommender,
    prep: Prepared,
    positions: np.ndarray,
    beam: int,
    batch_size: int,
    device: torch.device,
) -> dict[str, Any]:
    r, _, t, users = generate_ranked(model, prep, positions, beam, batch_size, device)
    out: dict[str, Any] = retrieval_metrics(r, t, prep.trie.items.cpu().numpy())
    out["n_users"] = len(set(users.tolist()))
    return out

"""DPO (spec §4.3): preference pairs from the simulator, the policy against a frozen reference.

For each request and MTP head, of the candidates that head sampled inside the trie, the one of
highest simulator value is preferred to the one of lowest (ties give no pair). The loss is the
standard DPO objective on whole-path log-probabilities:
    -log σ(β [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]).
With `align.dpo_labels=soft` the pair's label is P(w ≻ l) = σ(log v_w - log v_l) instead of 1, so
the optimum is a finite tilt of the reference, π ∝ π_ref · v^(1/β), not a push to the extremes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def preference_pairs(value: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (winner, loser): per group the highest- vs the lowest-valued candidate."""
    value, group = np.asarray(value, dtype=np.float64), np.asarray(group)
    if not len(value):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((value, group))
    g = group[order]
    first = np.r_[True, g[1:] != g[:-1]]
    last = np.r_[g[1:] != g[:-1], True]
    lo, hi = order[first], order[last]
    keep = value[hi] > value[lo]
    return hi[keep], lo[keep]


def dpo_loss(
    pi_w: torch.Tensor,
    pi_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    beta: float,
    target: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean DPO loss over pairs and the preference accuracy (margin > 0).

    target: P(w ≻ l) per pair (soft labels); None = 1 (the standard loss). With soft labels the
    loss is the cross-entropy -[p log σ(m) + (1 - p) log σ(-m)], minimal at σ(m) = p.
    """
    margin = beta * ((pi_w - ref_w) - (pi_l - ref_l))
    if target is None:
        loss = -F.logsigmoid(margin)
    else:
        loss = -(target * F.logsigmoid(margin) + (1 - target) * F.logsigmoid(-margin))
    return loss.mean(), (margin > 0).float().mean()


def log_value(value: np.ndarray, floor: float = 1e-9) -> np.ndarray:
    """log final_value with a floor (a value of 0, e.g. outside the support, gives log floor)."""
    return np.log(np.maximum(np.asarray(value, dtype=np.float64), floor))


def soft_labels(value_w: np.ndarray, value_l: np.ndarray) -> np.ndarray:
    """P(w ≻ l) = σ(log v_w - log v_l) = v_w / (v_w + v_l): Bradley-Terry on the log value."""
    d = log_value(value_w) - log_value(value_l)
    return 1.0 / (1.0 + np.exp(-d))

"""DPO (spec §4.3): preference pairs from the simulator, the policy against a frozen reference.

For each request and MTP head, of the candidates that head sampled inside the trie, the one of
highest simulator value is preferred to the one of lowest (ties give no pair). The loss is the
standard DPO objective on whole-path log-probabilities:
    -log σ(β [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]).
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
    pi_w: torch.Tensor, pi_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean DPO loss over pairs and the preference accuracy (margin > 0)."""
    margin = beta * ((pi_w - ref_w) - (pi_l - ref_l))
    return -F.logsigmoid(margin).mean(), (margin > 0).float().mean()

"""HTE — Hierarchical Token-wise Evaluator (spec §3.3): values of every prefix, pCTR and pCVR.

All heads read the stop-gradient intent, so value learning never pulls the user representation.
`value` (per prefix), `ctr` and `cvr` are logits trained with BCE on logged impressions (MTP);
`critic` is HEPO's V(s, z_{1:l}) for l = 0..L in reward units (Eq. 10), trained only there.
"""

from __future__ import annotations

import torch
from torch import nn


def _mlp(d_in: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d), nn.GELU(), nn.Linear(d, 1))


class HTE(nn.Module):
    def __init__(self, d: int, levels: int) -> None:
        super().__init__()
        self.level = nn.Embedding(levels, d)
        self.value = _mlp(2 * d, d)
        self.ctr = _mlp(2 * d, d)
        self.cvr = _mlp(2 * d, d)
        self.critic_level = nn.Embedding(levels + 1, d)
        self.critic = _mlp(2 * d, d)

    def forward(self, h: torch.Tensor, prefixes: torch.Tensor) -> dict[str, torch.Tensor]:
        """h (N, d), prefixes (N, L, d) of z_1..z_l -> logits: value per level, ctr, cvr."""
        hs = h.detach()
        lv = self.level(torch.arange(prefixes.shape[1], device=h.device)).unsqueeze(0)
        hx = hs.unsqueeze(1).expand_as(prefixes)
        value = self.value(torch.cat([hx, prefixes + lv], dim=-1)).squeeze(-1)
        full = torch.cat([hs, prefixes[:, -1]], dim=-1)
        return {
            "value": value,
            "ctr": self.ctr(full).squeeze(-1),
            "cvr": self.cvr(full).squeeze(-1),
        }

    def critic_values(self, h: torch.Tensor, prefixes: torch.Tensor) -> torch.Tensor:
        """h (N, d), prefixes (N, L, d) -> (N, L + 1): V before each decision (empty first)."""
        n, n_lv, d = prefixes.shape
        states = torch.cat([prefixes.new_zeros(n, 1, d), prefixes], dim=1)
        lv = self.critic_level(torch.arange(n_lv + 1, device=h.device)).unsqueeze(0)
        hx = h.detach().unsqueeze(1).expand_as(states)
        return self.critic(torch.cat([hx, states + lv], dim=-1)).squeeze(-1)

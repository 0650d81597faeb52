"""HTE — Hierarchical Token-wise Evaluator (spec §3.3): values of every prefix, pCTR and pCVR.

All heads read the stop-gradient intent, so value learning never pulls the user representation.
`value` (per prefix), `ctr` and `cvr` are logits trained with BCE on logged impressions (MTP);
`critic` is HEPO's V(s, z_{1:l}) for l = 0..L in reward units (Eq. 10), trained only there.

With `side` > 0 (`model.hte_features: [side]`), pCTR and pCVR also get a wide linear part on the
candidate's side features (`policy.hte_features.hte_side_features`: its price, bid and age, the
user's logged price level): what the semantic ID does not carry. Added by `--stage hte`
(train/hte_distill.py).
"""

from __future__ import annotations

import torch
from torch import nn

# the candidate's side features, in order (computed by policy.hte_features.hte_side_features)
SIDE_FEATURES = (
    "log_price",  # log product price - LOG_PRICE_CENTRE (market.ads)
    "log_bid",  # log bid - LOG_BID_CENTRE
    "new_ad",  # 1 while the ad is at most NEW_AD_DAYS old
    "log_age",  # log(1 + days since creation)
    "user_log_price",  # mean centred log price of the ads in the user's history (0 if none)
    "user_has_ads",  # 1 if the history holds an ad impression
    "price_match",  # user_log_price x log_price
)
# with `model.hte_features: [side, session]`, appended after SIDE_FEATURES
# (policy.hte_features.session_side_features): what the cascade's session-topic features read
# (docs/results/log/stages_analysis.md §14)
SESSION_FEATURES = (
    "session_sub_share",  # share of the current session's organic views in the ad's subtopic
    "session_cat_share",  # ... in the ad's category
    "session_log_views",  # log(1 + organic views in the current session)
    "window_sub_share",  # share of all organic views in the model's window in the ad's subtopic
)


def side_width(hte_side: bool, hte_session: bool) -> int:
    """Number of side features an HTE takes (0: no wide part)."""
    return len(SIDE_FEATURES) * hte_side + len(SESSION_FEATURES) * (hte_side and hte_session)


def _mlp(d_in: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d), nn.GELU(), nn.Linear(d, 1))


class HTE(nn.Module):
    def __init__(self, d: int, levels: int, side: int = 0) -> None:
        super().__init__()
        self.side = 0
        self.level = nn.Embedding(levels, d)
        self.value = _mlp(2 * d, d)
        self.ctr = _mlp(2 * d, d)
        self.cvr = _mlp(2 * d, d)
        self.critic_level = nn.Embedding(levels + 1, d)
        self.critic = _mlp(2 * d, d)
        if side:
            self.add_side(side)

    def add_side(self, side: int) -> None:
        """Wide linear parts of pCTR / pCVR on `side` features, starting at 0 (same outputs)."""
        self.side = side
        self.side_ctr, self.side_cvr = nn.Linear(side, 1), nn.Linear(side, 1)
        for lin in (self.side_ctr, self.side_cvr):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(
        self, h: torch.Tensor, prefixes: torch.Tensor, side: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """h (N, d), prefixes (N, L, d) of z_1..z_l, side (N, S) -> logits: value per level,
        ctr, cvr. `side` is required exactly when the HTE was built with side features."""
        if (side is None) != (self.side == 0):
            given = "given" if side is not None else "not given"
            raise ValueError(f"this HTE takes {self.side} side features; they were {given}")
        hs = h.detach()
        lv = self.level(torch.arange(prefixes.shape[1], device=h.device)).unsqueeze(0)
        hx = hs.unsqueeze(1).expand_as(prefixes)
        value = self.value(torch.cat([hx, prefixes + lv], dim=-1)).squeeze(-1)
        full = torch.cat([hs, prefixes[:, -1]], dim=-1)
        ctr, cvr = self.ctr(full).squeeze(-1), self.cvr(full).squeeze(-1)
        if side is not None:
            ctr = ctr + self.side_ctr(side).squeeze(-1)
            cvr = cvr + self.side_cvr(side).squeeze(-1)
        return {"value": value, "ctr": ctr, "cvr": cvr}

    def prefix_value(self, h: torch.Tensor, prefixes: torch.Tensor, level: int) -> torch.Tensor:
        """h (P, d), prefixes (P, K, d) of K candidate z_1..z_level -> value logits (P, K)."""
        x = prefixes + self.level.weight[level]
        hx = h.detach().unsqueeze(1).expand_as(x)
        return self.value(torch.cat([hx, x], dim=-1)).squeeze(-1)

    def critic_values(self, h: torch.Tensor, prefixes: torch.Tensor) -> torch.Tensor:
        """h (N, d), prefixes (N, L, d) -> (N, L + 1): V before each decision (empty first)."""
        n, n_lv, d = prefixes.shape
        states = torch.cat([prefixes.new_zeros(n, 1, d), prefixes], dim=1)
        lv = self.critic_level(torch.arange(n_lv + 1, device=h.device)).unsqueeze(0)
        hx = h.detach().unsqueeze(1).expand_as(states)
        return self.critic(torch.cat([hx, states + lv], dim=-1)).squeeze(-1)

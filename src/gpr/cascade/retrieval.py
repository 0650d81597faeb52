"""The retrieval stage: a two-tower model, exact top-k over the eligible ads at serve time.

User tower: attention pooling (a learned query) over the organic history and over the shown-ads
history, the current-session mean, user and environment embeddings -> MLP -> unit vector.
Ad tower: content projection + topics + ad id (+ log bid / price) -> MLP -> unit vector.

Training: in-batch softmax (each positive's ad against the other positives' ads of the batch) with
the logQ correction for ad frequency (Yi et al. 2019) and same-ad collisions masked. Positives are
the clicked (or converted) impressions; when the train days hold fewer than `min_positives`
clicks, every impression joins them, clicks weighted `1 + click_weight`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpr.cascade.config import CascadeConfig
from gpr.cascade.features import Catalog, FeatureEmbedder
from gpr.cascade.ranking import TargetAttention, mlp


class RetrievalModel(nn.Module):
    def __init__(self, cat: Catalog, cfg: CascadeConfig) -> None:
        super().__init__()
        d, h, r = cfg.dim, cfg.hidden, cfg.retrieval_dim
        self.emb = FeatureEmbedder(cat, d, cfg.id_dropout)
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.1)
        self.att_o = TargetAttention(d, cfg.heads)
        self.att_i = TargetAttention(d, cfg.heads)
        self.user_tower = mlp([5 * d, h, r])
        self.ad_tower = mlp([d + 2, h, r])
        self.temperature = cfg.temperature

    def user_vec(self, r: dict[str, torch.Tensor]) -> torch.Tensor:
        e = self.emb
        b = r["user"].shape[0]
        q = self.query.expand(b, 1, -1)
        p_o = self.att_o(q, e.organic_history(r), r["o_item"] > 0)[:, 0]
        p_i = self.att_i(q, e.ad_history(r), r["i_item"] > 0)[:, 0]
        x = torch.cat([p_o, p_i, e.session(r), e.user(r), e.environment(r)], -1)
        return F.normalize(self.user_tower(x), dim=-1)

    def ad_vec(self, ads: torch.Tensor) -> torch.Tensor:
        """(N,) ad indices -> (N, r) unit vectors."""
        x = torch.cat([self.emb.ad(ads), self.emb.ad_numeric(ads, ads)], -1)
        return F.normalize(self.ad_tower(x), dim=-1)

    def loss(
        self,
        r: dict[str, torch.Tensor],
        ads: torch.Tensor,
        weight: torch.Tensor,
        log_q: torch.Tensor,
    ) -> torch.Tensor:
        """In-batch softmax; log_q (B,) = log sampling frequency of each positive's ad."""
        u, a = self.user_vec(r), self.ad_vec(ads)
        logits = u @ a.T / self.temperature - log_q[None, :]
        same = ads[:, None] == ads[None, :]
        eye = torch.eye(len(ads), dtype=torch.bool)
        logits = logits.masked_fill(same & ~eye, float("-inf"))
        ce = F.cross_entropy(logits, torch.arange(len(ads)), reduction="none")
        return (weight * ce).sum() / weight.sum()

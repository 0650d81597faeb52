"""The ranking stage: a DIN-style multi-task pCTR / pCVR model.

For a request and a candidate ad:
- target attention (DIN-style; scaled dot-product, multi-head, with a learned "no history" slot)
  of the candidate ad over the user's organic history and, separately, over the ads the user was
  shown (each with its action), keys carrying the age of each token;
- the current session's organic items, mean-pooled (what the user is into right now);
- the input of a shared MLP: ad, the two attention readouts, the session vector, their products
  with the ad, user (demographics + id), environment, ad age and the explicit match features
  (`features.match_features`: content dot products, subtopic / category shares, log price / bid);
- two heads on the shared trunk: pCTR and pCVR (click -> conversion), each plus a wide linear part
  on the match features (and, for pCTR, scalar slot / scene / device / hour biases): Wide & Deep.
  The wide part learns the strong, simple effects (price on pCVR, session match on pCTR) from few
  clicks; without it the deep part alone learnt a far too flat price slope (-0.2 vs -0.75 in the
  logs) and the auction's winner's curse picked expensive, rarely converting ads.

Training (`train.train_ranking`) is stage-wise: the wide part alone first (a GLM: it converges in
seconds), then everything, with the deep heads starting at zero; both stages are early-stopped on
the valid day's CTR AUC and the best state over both is kept, so the deep part is only used where
it helps on held-out data (on the small world it adds ~+0.005 valid AUC; alone, without the wide
part, it overfitted the ~4k clicks and lost 0.02).

Loss (ESMM, Ma et al. 2018): BCE(pCTR, click) + BCE(pCTR * pCVR, conversion) over all impressions,
so pCVR is learnt over the whole impression space, plus (`cvr_weight`) a direct BCE(pCVR,
conversion) on the clicked impressions: with a few hundred conversions the ESMM term alone learns
pCVR too slowly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gpr.cascade.config import CascadeConfig
from gpr.cascade.features import ENV_SIZES, N_MATCH, Catalog, FeatureEmbedder, match_features
from gpr.cascade.topics import N_TOPIC


class TargetAttention(nn.Module):
    """Queries (B, K, D) over keys (B, L, D) with a padding mask (B, L) -> (B, K, D)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.h = heads if dim % heads == 0 else 1
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.null = nn.Parameter(torch.zeros(1, 1, dim))
        self.out = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, k, d = query.shape
        keys = torch.cat([self.null.expand(b, 1, d), keys], 1)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool), mask], 1)
        dh = d // self.h
        q = self.q(query).view(b, k, self.h, dh)
        kk, v = self.kv(keys).view(b, -1, 2, self.h, dh).unbind(2)
        att = torch.einsum("bkhd,blhd->bhkl", q, kk) / math.sqrt(dh)
        att = att.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
        return self.out(torch.einsum("bhkl,blhd->bkhd", att, v).reshape(b, k, d))


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class RankingModel(nn.Module):
    def __init__(self, cat: Catalog, cfg: CascadeConfig) -> None:
        super().__init__()
        d, h = cfg.dim, cfg.hidden
        self.emb = FeatureEmbedder(cat, d, cfg.id_dropout)
        self.att_o = TargetAttention(d, cfg.heads)
        self.att_i = TargetAttention(d, cfg.heads)
        self.deep = cfg.deep
        # + the session-topic features (topics.py)
        n_match = N_MATCH + N_TOPIC * int(cfg.session_topics)
        self.trunk = nn.Sequential(mlp([11 * d + n_match, h, h], cfg.dropout), nn.ReLU())
        self.ctr = mlp([h, h // 2, 1])
        self.cvr = mlp([h, h // 2, 1])
        self.wide_ctr = nn.Linear(n_match, 1)
        self.wide_cvr = nn.Linear(n_match, 1)
        biases = [nn.Embedding(n, 1) for n in ENV_SIZES]
        for emb in biases:
            nn.init.zeros_(emb.weight)
        self.env_bias = nn.ModuleList(biases)

    def wide_parameters(self) -> list[nn.Parameter]:
        return [
            *self.wide_ctr.parameters(),
            *self.wide_cvr.parameters(),
            *self.env_bias.parameters(),
        ]

    @torch.no_grad()
    def zero_deep_output(self) -> None:
        """The deep heads start at 0, so the deep stage starts from the wide model exactly."""
        for head in (self.ctr, self.cvr):
            last = head[-1]
            assert isinstance(last, nn.Linear)
            last.weight.zero_()
            last.bias.zero_()

    @torch.no_grad()
    def init_bias(self, ctr_rate: float, cvr_rate: float) -> None:
        """Start the heads at the base rates (else the first epochs only learn the bias)."""
        for lin, p in ((self.wide_ctr, ctr_rate), (self.wide_cvr, cvr_rate)):
            p = min(max(p, 1e-4), 1 - 1e-4)
            lin.bias.fill_(math.log(p / (1 - p)))

    def request_state(self, r: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The candidate-independent part, computed once per request."""
        e = self.emb
        s = {
            "env_bias": sum(emb(r["env"][:, i]) for i, emb in enumerate(self.env_bias)),  # (B, 1)
            **{f"r_{k}": v for k, v in r.items()},
        }
        if self.deep:
            s.update(
                o=e.organic_history(r),
                o_mask=r["o_item"] > 0,
                i=e.ad_history(r),
                i_mask=r["i_item"] > 0,
                sess=e.session(r),
                user=e.user(r),
                env=e.environment(r),
                day=r["day"],
            )
        return s

    def forward(
        self, s: dict[str, torch.Tensor], ads: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of pCTR and pCVR for candidates `ads` (B, K) ad indices -> (B, K) each."""
        b, k = ads.shape
        r = {k[2:]: v for k, v in s.items() if k.startswith("r_")}
        m = match_features(self.emb, r, ads)
        ctr = self.wide_ctr(m).squeeze(-1) + s["env_bias"]
        cvr = self.wide_cvr(m).squeeze(-1)
        if not self.deep:
            return ctr, cvr
        a = self.emb.ad(ads)
        p_o = self.att_o(a, s["o"], s["o_mask"])
        p_i = self.att_i(a, s["i"], s["i_mask"])
        sess = s["sess"][:, None, :].expand(b, k, -1)
        user = s["user"][:, None, :].expand(b, k, -1)
        env = s["env"][:, None, :].expand(b, k, -1)
        x = torch.cat(
            [
                a,
                p_o,
                p_i,
                sess,
                a * p_o,
                a * p_i,
                a * sess,
                a * user,
                user,
                env,
                self.emb.ad_age(ads, s["day"]),
                m,
            ],
            -1,
        )
        z = self.trunk(x)
        return ctr + self.ctr(z).squeeze(-1), cvr + self.cvr(z).squeeze(-1)


def esmm_loss(
    ctr_logit: torch.Tensor,
    cvr_logit: torch.Tensor,
    click: torch.Tensor,
    conv: torch.Tensor,
    ctcvr_weight: float,
    cvr_weight: float = 0.0,
) -> torch.Tensor:
    """BCE(pCTR, click) + ctcvr_weight BCE(pCTR pCVR, conversion) [+ cvr_weight BCE(pCVR,
    conversion) over the clicked impressions, scaled by their share of the batch]."""
    l_ctr = F.binary_cross_entropy_with_logits(ctr_logit, click)
    log_p = F.logsigmoid(ctr_logit) + F.logsigmoid(cvr_logit)  # log pCTCVR
    log_q = torch.log1p(-log_p.exp().clamp(max=1 - 1e-6))
    l_ctcvr = -(conv * log_p + (1 - conv) * log_q).mean()
    loss = l_ctr + ctcvr_weight * l_ctcvr
    if cvr_weight > 0:
        l_cvr = F.binary_cross_entropy_with_logits(cvr_logit, conv, reduction="none")
        loss = loss + cvr_weight * (l_cvr * click).sum() / len(click)
    return loss
